"""The ``carecli`` command line: subcommands for people and for scripts."""

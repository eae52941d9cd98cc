"""Use cases between the ways in (TUI, CLI, SSH) and the data layer; no Textual, no click."""

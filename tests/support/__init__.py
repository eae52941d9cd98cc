"""Fixtures shared by test modules in more than one place, with the helpers that go with them.

Each module here is registered once through ``pytest_plugins`` in tests/conftest.py, so a test uses a
fixture by parameter name and never imports it; helper classes, functions and constants (``Site``,
``MASTER_KEY``, ``TmuxTerminal``...) are imported from these modules as usual.
"""

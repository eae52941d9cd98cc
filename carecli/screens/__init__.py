"""The specialist's app (Textual). Screens ask :class:`carecli.services.desk.Desk` for data in
thread workers and never build SQL; see :mod:`carecli.screens.base` for the conventions."""

"""Textual screens of the specialist's app (built on carecli.data through services)."""

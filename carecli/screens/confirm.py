"""A small yes/no question before a change made straight from a screen (no form)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Static

from carecli.screens.base import CareModal
from carecli.screens.widgets import CareFooter


class ConfirmDialog(CareModal):
    """Ask before doing something: y or Enter confirms, n or Esc cancels. Dismisses with True or False.

    The question holds no member data (a lock covers the dialog anyway).
    """

    DEFAULT_CSS = """
    ConfirmDialog { align: center middle; }
    ConfirmDialog #confirm { width: auto; max-width: 70; height: auto; padding: 1 2; background: $panel;
                             border: round $primary; }
    ConfirmDialog #confirm-question { width: auto; max-width: 64; }
    ConfirmDialog #confirm-buttons { height: auto; width: auto; padding: 1 0 0 0; }
    ConfirmDialog #confirm-buttons Button { margin: 0 2 0 0; }
    """

    BINDINGS = [
        Binding("y", "confirm", "Yes", id="confirm.yes", tooltip="Go ahead"),
        Binding("enter", "confirm", "Yes", show=False, id="confirm.enter",
                tooltip="Go ahead (the same as y)"),
        Binding("n", "cancel", "No", id="confirm.no", tooltip="Leave it as it is"),
        Binding("escape", "cancel", "Cancel", id="confirm.cancel", tooltip="Leave it as it is (the same as n)"),
    ]

    def __init__(self, question: str, *, yes: str = "Yes") -> None:
        super().__init__(classes="dialog-screen")
        self.question = question
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Static(self.question, id="confirm-question", markup=False)
            with Horizontal(id="confirm-buttons"):
                yield Button(f"{self.yes} (y)", variant="primary", id="confirm-yes", compact=True)
                yield Button("No (n)", id="confirm-no", compact=True)
        yield CareFooter()

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)

    @on(Button.Pressed, "#confirm-yes")
    def _yes(self) -> None:
        self.action_confirm()

    @on(Button.Pressed, "#confirm-no")
    def _no(self) -> None:
        self.action_cancel()

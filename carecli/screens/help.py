"""F1: the keys of the screen underneath (as currently mapped) and what the screen is for."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Markdown

GENERAL = """
## Everywhere

| Key | |
|---|---|
| F1 | this help |
| F2 / F3 / F4 | worklist / members / plans |
| F6 / F7 | audit log / users and roles (with the permission) |
| ctrl+p | command palette: type a member's name to jump to them, or a command |
| ctrl+l | lock the screen now |
| ctrl+q | quit |

Keys can be remapped in the config file (`carecli config path`), section
`[keymap]`, by binding id: for example `"member.reveal" = "ctrl+r"`. The ids are
listed above next to each key. The colour theme is `[tui] theme`.

carecli locks itself after the session's idle time without a key press; drafts
in open forms are kept for you behind the lock.
"""


class HelpScreen(ModalScreen[None]):
    """Context help for the screen it was opened from."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen VerticalScroll { width: 90%; max-width: 100; height: 90%; border: heavy $primary;
                                background: $surface; padding: 0 1; }
    """

    BINDINGS = [
        Binding("escape,f1,q", "dismiss", "Close", id="help.close", tooltip="Close the help"),
    ]

    def __init__(self, screen: Screen[Any]) -> None:
        super().__init__()
        self.for_screen = screen
        # The bindings as they are under the help (once it is shown, only the help's own are active).
        self.bindings_below = list(screen.app.active_bindings.values())

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(self.text())

    def text(self) -> str:
        parts = [getattr(self.for_screen, "HELP", "") or ""]
        rows = []
        for active in self.bindings_below:
            binding = active.binding
            if not binding.description or binding.system:
                continue
            keys = self.app.get_key_display(binding)
            rows.append(f"| {keys} | {binding.description} | `{binding.id or ''}` | {binding.tooltip or ''} |")
        if rows:
            parts.append("## Keys on this screen\n\n| Key | Action | Binding id | |\n|---|---|---|---|\n"
                         + "\n".join(dict.fromkeys(rows)))
        parts.append(GENERAL)
        return "\n\n".join(part.strip() for part in parts if part.strip())

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)

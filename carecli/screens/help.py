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
| F6 / F7 / F8 | audit log / users and roles / emergency accesses (with the permission) |
| ctrl+p | command palette: type a member's name to jump to them, or a command |
| ctrl+l | lock the screen now |
| ctrl+o | sign out (your session ends; sign in again as anyone) |
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
        parts.append(self.key_table())
        parts.append(GENERAL)
        return "\n\n".join(part.strip() for part in parts if part.strip())

    def key_rows(self) -> list[tuple[str, str, str, str]]:
        """(keys, action, binding id, what it does): one row per action, its keys together.

        carecli's own bindings only (those with an id, which the keymap can remap); the keys Textual's
        widgets handle themselves (arrows, Enter in a list) are not listed as if they were remappable.
        """
        rows: dict[tuple[str, str], list[str]] = {}
        about: dict[tuple[str, str], tuple[str, str]] = {}
        for active in self.bindings_below:
            binding = active.binding
            if not binding.description or binding.system or not binding.id:
                continue
            identity = (binding.id, binding.action)
            keys = rows.setdefault(identity, [])
            shown = self.app.get_key_display(binding)
            if shown not in keys:
                keys.append(shown)
            about.setdefault(identity, (binding.description, binding.tooltip or ""))
        return [(" / ".join(keys), about[identity][0], identity[0], about[identity][1])
                for identity, keys in rows.items()]

    def key_table(self) -> str:
        rows = self.key_rows()
        if not rows:
            return ""
        lines = [f"| {keys} | {action} | `{binding_id}` | {what} |" for keys, action, binding_id, what in rows]
        return "## Keys on this screen\n\n| Key | Action | Binding id | |\n|---|---|---|---|\n" + "\n".join(lines)

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)

"""Small widget adjustments shared by the screens."""

from __future__ import annotations

from typing import Any

from textual.binding import Binding
from textual.message import Message
from textual.widgets import Footer, Input


def prune_dead_watchers(obj: Any) -> None:
    """Forget reactive watchers registered by widgets that are no longer on screen.

    Textual keeps a watcher made with ``watch``/``data_bind`` until the watched
    value next changes (Textualize/textual#6666). The footer re-binds a fresh
    key widget on every focus change and each screen's header watches the
    app's title, so an all-day session would otherwise keep every one of them
    alive: thousands of widgets, and ever longer garbage collections. The
    watcher table is a private attribute; drop this once the upstream fix lands.
    """
    watchers: dict[str, list[tuple[Any, Any]]] | None = getattr(obj, "__watchers", None)
    if not watchers:
        return
    for entries in watchers.values():
        entries[:] = [(node, callback) for node, callback in entries
                      if getattr(node, "is_attached", True) and not getattr(node, "_closing", False)]


class CareFooter(Footer):
    """The footer, without keeping the key widgets of every earlier focus alive."""

    async def recompose(self) -> None:
        await super().recompose()
        prune_dead_watchers(self)


class SearchBox(Input):
    """A search or filter box above a list: down and page down go on to the list (it posts :class:`Leave`)."""

    BINDINGS = [
        Binding("down,pagedown", "leave", "To the list", show=False, id="search.to_list",
                tooltip="Go from the search box to the list below it"),
    ]

    class Leave(Message):
        """The user wants to go from the box down into the list."""

        def __init__(self, box: SearchBox) -> None:
            super().__init__()
            self.box = box

        @property
        def control(self) -> SearchBox:
            return self.box

    def __init__(self, value: str | None = None, **kwargs: Any) -> None:
        # Coming back to the box (up from the list, a letter typed on the list) goes on typing: no select-all.
        kwargs.setdefault("select_on_focus", False)
        super().__init__(value, **kwargs)

    def action_leave(self) -> None:
        self.post_message(self.Leave(self))

"""What every carecli screen shares: the desk, PHI clearing on lock, and how failures are shown.

Screens ask the :class:`~carecli.services.desk.Desk` for data inside thread
workers (``@work(thread=True)``); a worker posts a past-tense message back
and only message handlers touch widgets. Any failure becomes a
:class:`Problem`: one line saying what went wrong and one saying what to do,
built from carecli's own error messages (which never carry PHI), never from
a driver's ``str(exc)`` (which can carry SQL parameters).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from textual import events
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widget import Widget

from carecli.errors import AuthError, CarecliError, ConflictError, ValidationError
from carecli.screens.collector import collector

if TYPE_CHECKING:
    from carecli.screens.app import CareApp
    from carecli.services.desk import Desk


@dataclass(frozen=True)
class Problem:
    """A failure as shown to the user: what happened, what to do, and the form field at fault (if any)."""

    message: str
    hint: str | None = None
    field: str | None = None
    #: the session is no longer valid: the app locks and asks to sign in again
    auth: bool = False
    #: the database could not be reached: the input is kept and can be retried
    unavailable: bool = False
    #: the rule broken (a ValidationError's ``rule``), when there is one
    rule: str | None = None
    #: every (field, rule, message) a ValidationError found, ``field``'s own first (a form shows them all)
    problems: tuple[tuple[str, str, str], ...] = ()
    #: refused because someone else changed the record meanwhile (the message names who and when)
    conflict: bool = False

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


def describe(exc: BaseException) -> Problem:
    """The user-facing description of an exception from a desk call (no data values, no SQL)."""
    # Imported here: the app's first screen paints before SQLAlchemy is loaded (a worker loads it meanwhile).
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    from carecli.data.databases import describe_dbapi_error

    if isinstance(exc, ValidationError):
        return Problem(exc.message.removeprefix(f"{exc.field}: "), exc.hint, field=exc.field, rule=exc.rule,
                       problems=tuple(getattr(exc, "problems", None) or [(exc.field, exc.rule, exc.detail)]))
    if isinstance(exc, AuthError):
        return Problem(exc.message, exc.hint or "sign in again", auth=True)
    if isinstance(exc, ConflictError):
        return Problem(exc.message, exc.hint, conflict=True)
    if isinstance(exc, CarecliError):
        return Problem(exc.message, exc.hint)
    if isinstance(exc, (OperationalError, InterfaceError)):
        return Problem(f"the database is not reachable: {describe_dbapi_error(exc)}",
                       "nothing was lost: check the connection and try again", unavailable=True)
    if isinstance(exc, DBAPIError):
        return Problem(f"the database refused this: {describe_dbapi_error(exc)}", "try again, or tell support")
    return Problem(f"something went wrong inside carecli ({type(exc).__name__})",
                   "try again; if it keeps happening, tell support")


class ActionFailed(Message):
    """A desk call from a worker failed; ``action`` names what was being done."""

    def __init__(self, action: str, problem: Problem) -> None:
        super().__init__()
        self.action = action
        self.problem = problem


#: refreshes a new screen waits for a focused widget before keys typed ahead go to the screen itself
TYPEAHEAD_REFRESHES = 10
#: ... and at most this long, whatever happens
TYPEAHEAD_MAX_SECONDS = 1.0


class TypeAhead:
    """Keys typed before a new screen has its focus are kept, then handed to the focused widget in order.

    A key that opens a screen often arrives in one read of the terminal with what follows it ("/smith",
    "n" and a note, a paste): until the screen is mounted and its work widget focused, Textual gives
    those keys to the screen itself, which has no use for them, and they were lost. The screen keeps
    them instead and, once its focus is settled (after its first refresh as the current screen), posts
    them to the focused widget (or to itself) in the order they were typed. (The key that opened the
    screen ran its action before the next key was handed out: see ``CareApp``'s key line.)
    """

    app: Any

    def _typeahead_keys(self) -> list[events.Key] | None:
        """The keys waiting for this screen's focus; None once it is settled."""
        waiting: list[events.Key] | None = self.__dict__.setdefault("_typeahead", [])
        return waiting

    def holds_keys(self) -> bool:
        """Whether keys typed now wait for this screen's focus (it is opening)."""
        return self._typeahead_keys() is not None

    def hold_key(self, event: events.Key) -> None:
        """Keep a key the app would have given this screen before any widget of it has the focus.

        Should the screen never settle (no refresh came), the keys go on after TYPEAHEAD_MAX_SECONDS
        anyway: a keyboard that stops answering is worse than a key that lands on the screen itself.
        """
        waiting = self._typeahead_keys()
        if waiting is None:
            return
        waiting.append(event)
        since = self.__dict__.setdefault("_typeahead_since", time.monotonic())
        if time.monotonic() - since > TYPEAHEAD_MAX_SECONDS:
            self.settle_typeahead(TYPEAHEAD_REFRESHES)

    def on_mount(self) -> None:
        self.call_after_refresh(self.settle_typeahead)  # type: ignore[attr-defined]  # the Screen's

    def _on_screen_resume(self, event: events.ScreenResume) -> None:
        self.call_after_refresh(self.settle_typeahead)  # type: ignore[attr-defined]  # the Screen's

    def settle_typeahead(self, tries: int = 0) -> None:
        """Hand the keys typed ahead to the focused widget, once this is the current screen and has one
        (a widget may take the focus a refresh or two after the screen is shown: its data loading)."""
        waiting = self._typeahead_keys()
        if waiting is None or not self.is_current:  # type: ignore[attr-defined]  # the Screen's
            return
        if self.focused is None and tries < TYPEAHEAD_REFRESHES:  # type: ignore[attr-defined]
            self.call_after_refresh(self.settle_typeahead, tries + 1)  # type: ignore[attr-defined]
            return
        self.__dict__["_typeahead"] = None
        # Back into the app's key line, first in it: each goes where the focus is when its turn comes (a Tab
        # among them moves the focus for the keys after it).
        self.app.replay_keys([events.Key(typed.key, typed.character) for typed in waiting])


class PhiHolder:
    """Mixin for screens and dialogs: the desk, failure reporting, and the hooks the lock calls."""

    app: Any

    @property
    def care(self) -> CareApp:
        return self.app

    @property
    def desk(self) -> Desk:
        desk = self.care.desk
        assert desk is not None, "screens that need data are only shown when signed in"
        return desk

    def on_action_failed(self, message: ActionFailed) -> None:
        self.care.show_problem(message.action, message.problem)

    def catch_up(self) -> None:
        """Shown again (on top, or behind a dialog): read again what changed while covered. Override."""

    def fail(self, action: str, exc: BaseException) -> None:
        """From a worker thread: report a failed desk call to this screen."""
        message = ActionFailed(action, describe(exc))
        self.post_message(message)  # type: ignore[attr-defined]  # from the Screen this mixes into

    def on_unmount(self) -> None:
        # This screen's Header watched the app's title; let the app forget it once it is gone.
        from carecli.screens.widgets import prune_dead_watchers

        self.app.call_later(prune_dead_watchers, self.app)

    def clear_phi(self) -> None:
        """Remove every member value from the widgets (the lock calls this before anything else)."""

    def restore_after_unlock(self) -> None:
        """Load the screen's data again after the same user signed back in."""


def can_take_focus(widget: Widget) -> bool:
    """Whether keys sent to ``widget`` would reach something on screen: focusable, shown, not disabled or loading."""
    if not widget.is_attached or not widget.focusable:
        return False
    node: Any = widget
    while isinstance(node, Widget):
        if not node.display:
            return False
        node = node.parent
    return True


class CareScreen(TypeAhead, PhiHolder, Screen[Any]):
    """A full screen of the app.

    Focus: every screen names, in :attr:`WORK_FOCUS`, the widget where work
    starts (a CSS selector; the first match that can take focus wins). It gets
    the focus when the screen opens, and again whenever the screen is shown
    (F2..F8, a dialog closed, an unlock) while the focus is nowhere useful:
    on no widget, or on one that was hidden, disabled or is loading meanwhile.
    A focus the user moved to a working widget is left where it is.
    """

    #: Textual's own auto focus picks the first focusable widget (a tab bar, a filter): ours is WORK_FOCUS
    AUTO_FOCUS = ""
    #: where work starts on this screen (override)
    WORK_FOCUS: ClassVar[str] = "*"

    def work_widget(self) -> Widget | None:
        """The widget where work starts, if one can take the focus now."""
        for widget in self.query(self.WORK_FOCUS):
            if can_take_focus(widget):
                return widget
        return None

    def focus_work(self) -> None:
        """Put the focus where work starts on this screen."""
        widget = self.work_widget()
        if widget is not None:
            self.set_focus(widget)

    def ensure_focus(self) -> None:
        """Focus the work widget unless the focus is on a widget that takes keys now."""
        if not self.is_current or not self.is_mounted:
            return
        focused = self.focused
        if focused is None or not can_take_focus(focused):
            self.focus_work()
        self.settle_typeahead()

    def on_mount(self) -> None:
        # Subclasses' on_mount ran first (Textual calls each class's handler along the MRO).
        self.call_after_refresh(self.ensure_focus)

    #: shown at least once (its first showing comes right after its mount)
    _shown_before = False

    def _on_screen_resume(self, event: events.ScreenResume) -> None:
        # (Textual calls a class's _on_screen_resume instead of its on_screen_resume: both jobs are here.)
        if not self._shown_before:
            self._shown_before = True
            # Textual restyles every widget of a screen each time it is shown, in case the CSS changed
            # while it was covered. A screen shown for the first time was styled when it was mounted, a
            # moment ago: doing it again was a fifth of opening a member (benchmarks/tui_bench.py).
            event.refresh_styles = False
            # What the screen made for its first showing lives as long as the screen: frozen once it is
            # painted, not walked by the next full pass of the garbage collector (see collector.settle).
            self.call_after_refresh(collector.settle)
        self.call_after_refresh(self.ensure_focus)

    def reloads_own_writes(self) -> bool:
        """Whether this screen reloads after this app's own writes by itself: it is on top, or one of
        its forms is. A screen opened over it (a call over the member's file) writes without telling
        it, so then its change notices count, own or not."""
        stack = self.app.screen_stack
        if self not in stack:
            return True
        above = stack[stack.index(self) + 1:]
        return not above or isinstance(above[0], CareModal)


class CareModal(TypeAhead, PhiHolder, ModalScreen[Any]):
    """A dialog or form on top of a screen."""


def member_name(first: str | None, last: str | None) -> str:
    return f"{last or ''}, {first or ''}".strip(", ")

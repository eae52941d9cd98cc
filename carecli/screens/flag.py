"""One risk flag: what was found, on which call, who raised it, and whether it is open or resolved.

Pushed from the member screen's flags tab (Enter), the worklist and the call
screen. The flag is read in a thread worker (``Desk.flag_view``); resolving
(``v``) and re-opening (``o``) go through the forms in
:mod:`carecli.screens.flag_forms`, shown only to users with ``flags:write``
and only in the state they apply to. The screen dismisses with whether it
changed the flag, so the screen under it can reload.
"""

from __future__ import annotations

import uuid
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from carecli.data.permissions import Permission
from carecli.screens.base import Problem
from carecli.screens.flag_forms import ReopenFlagDialog, ResolveFlagDialog
from carecli.screens.formatting import show_time_zoned, words
from carecli.screens.live import DataChanged
from carecli.screens.record import RecordScreen
from carecli.screens.widgets import CareFooter, CareHeader
from carecli.services.desk import FlagView


class FlagScreen(RecordScreen):
    """A risk flag in full: description, severity, type, member, call, who raised it, its state."""

    HELP = """
## Risk flag

What was found on a call, in full (the arrows and **PageDown** scroll a long
description), with the member, the call it came from, who raised it and when, and
whether it is open or resolved (with the note, by whom and when).

**v** resolves an open flag with a note saying how; **o** opens a resolved flag
again with a reason (both need `flags:write`, and each is shown only when it
applies). **m** opens the member's file. Resolving and re-opening are audited.
"""

    DEFAULT_CSS = """
    FlagScreen #flag-body { height: 1fr; padding: 0 1; }
    FlagScreen #flag-heading { text-style: bold; padding: 0 0 1 0; }
    FlagScreen .flag-line { height: auto; }
    FlagScreen #flag-state { padding: 1 0 0 0; height: auto; }
    FlagScreen #flag-state.-open { color: $warning; }
    FlagScreen #flag-description-label { padding: 1 0 0 0; color: $text-muted; }
    FlagScreen #flag-description { height: auto; }
    """

    BINDINGS = [
        Binding("v", "resolve", "Resolve", id="flag.resolve", tooltip="Resolve this flag with a note (flags:write)"),
        Binding("o", "reopen", "Re-open", id="flag.reopen", tooltip="Open this resolved flag again (flags:write)"),
        Binding("m", "open_member", "Member", id="flag.member", tooltip="Open the member this flag is about"),
        Binding("ctrl+r", "refresh", "Refresh", id="flag.refresh", tooltip="Read the flag again"),
        Binding("escape", "back", "Back", id="flag.back", tooltip="Back to the previous screen"),
    ]

    RECORD = "flag"

    def __init__(self, flag_id: uuid.UUID | str) -> None:
        super().__init__()
        self.flag_id = flag_id if isinstance(flag_id, uuid.UUID) else uuid.UUID(str(flag_id))
        self.view: FlagView | None = None
        #: this screen resolved or re-opened the flag (the screen below reloads when told)
        self.changed = False

    def compose(self) -> ComposeResult:
        yield CareHeader()
        with VerticalScroll(id="flag-body"):
            yield Static("Reading the flag…", id="flag-heading", markup=False)
            yield Static("", id="flag-member", classes="flag-line", markup=False)
            yield Static("", id="flag-call", classes="flag-line", markup=False)
            yield Static("", id="flag-raised", classes="flag-line", markup=False)
            yield Static("", id="flag-state", classes="flag-line", markup=False)
            yield Static("What was found", id="flag-description-label", markup=False)
            yield Static("", id="flag-description", markup=False)
        yield CareFooter()

    def on_mount(self) -> None:
        self.title = "Risk flag"
        self.load()

    # -- reading ---------------------------------------------------------------------------

    def read(self) -> FlagView:
        return self.desk.flag_view(self.flag_id)

    def show_read_failure(self, problem: Problem) -> None:
        self.query_one("#flag-heading", Static).update(f"Could not read this flag: {problem.message}")

    def show_view(self, view: FlagView) -> None:
        """Fill the screen from a freshly read flag."""
        self.view = view
        flag, call, resolution = view.flag, view.call, view.resolution
        self.query_one("#flag-heading", Static).update(
            f"{words(flag.severity).upper()} · {words(flag.risk_type)} risk"
            + ("  (deleted)" if flag.deleted_at else ""))
        self.query_one("#flag-member", Static).update(f"Member:  {view.member_name}")
        if call is None:
            call_text = "Call:    no longer on file"
        else:
            call_text = (f"Call:    {words(call.call_type)}, {words(call.call_status)}, "
                         f"{show_time_zoned(call.started_at or call.scheduled_at)}")
        self.query_one("#flag-call", Static).update(call_text)
        self.query_one("#flag-raised", Static).update(
            f"Raised:  {show_time_zoned(flag.created_at)} by {view.raised_by or 'an unknown specialist'}")
        state = self.query_one("#flag-state", Static)
        if resolution is None:
            state.update("State:   OPEN")
        else:
            when = show_time_zoned(resolution.at) if resolution.at else "at an unknown time"
            state.update(f"State:   resolved {when} by {view.resolved_by or 'an unknown user'}\n"
                         f"Note:    {resolution.note}")
        state.set_class(resolution is None, "-open")
        self.query_one("#flag-description", Static).update(flag.description or "—")
        self.refresh_bindings()

    # -- live updates ---------------------------------------------------------------------------

    def on_data_changed(self, message: DataChanged) -> None:
        """Another session resolved, re-opened or edited this flag: read it again (now, or when shown)."""
        if self.care.locked or not message.changes.record_changed("risk_flag", self.flag_id,
                                                                  ignore=self.desk.source):
            return
        if self.is_current:
            self.load()
        else:
            self._stale = True

    # -- lock -----------------------------------------------------------------------------------

    def clear_phi(self) -> None:
        self.forget()
        for static in self.query("#flag-body Static").results(Static):
            if static.id != "flag-description-label":
                static.update("")
        self.refresh_bindings()

    def restore_after_unlock(self) -> None:
        self.query_one("#flag-heading", Static).update("Reading the flag…")
        self.load()

    # -- actions ----------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("resolve", "reopen"):
            desk = self.care.desk
            if desk is None or not desk.can(Permission.FLAGS_WRITE) or self.view is None:
                return False
            resolved = self.view.resolution is not None
            return resolved if action == "reopen" else not resolved
        if action == "open_member":
            return None if self.view is None else True
        return True

    def action_resolve(self) -> None:
        if self.check_action("resolve", ()) and self.view is not None:
            self.app.push_screen(ResolveFlagDialog(self.view), self._after_step("Flag resolved."))

    def action_reopen(self) -> None:
        if self.check_action("reopen", ()) and self.view is not None:
            self.app.push_screen(ReopenFlagDialog(self.view), self._after_step("Flag re-opened."))

    def _after_step(self, done: str) -> Any:
        def after(result: Any) -> None:
            if result is None:
                return
            self.changed = True
            self.notify(done)
            self.load()
        return after

    def action_open_member(self) -> None:
        if self.view is None:
            return
        from carecli.screens.member import MemberDetailScreen

        stack = self.app.screen_stack
        below = stack[-2] if len(stack) > 1 and stack[-1] is self else None
        if isinstance(below, MemberDetailScreen) and below.member_id == self.view.flag.member_id:
            self.dismiss(self.changed)  # opened from this member's file: go back to it
            return
        self.care.open_member(self.view.flag.member_id)

    def action_refresh(self) -> None:
        self.load()

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.dismiss(self.changed)

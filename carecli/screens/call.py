"""One call: every field, its full notes, its risk flags, and the steps of a scheduled call.

Opened with Enter on a call (the member screen's calls tab, the worklist).
Reading it goes to the primary (``Desk.call_view``) so a step just taken
shows at once. A scheduled call can be completed, rescheduled, cancelled or
marked unanswered (:mod:`carecli.screens.call_forms`); its specialist, or
whoever logged it, may edit its notes; a flag can be raised from a call that
was held or attempted. Keys a role cannot use are hidden, and so are the
steps that do not apply to the call as it is now.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Static

from carecli.data.permissions import Permission
from carecli.data.rules import FLAGGABLE_STATUSES
from carecli.screens.base import Problem
from carecli.screens.call_forms import (
    CallStepForm,
    CancelCallForm,
    CompleteCallForm,
    EditCallNotesForm,
    NoAnswerForm,
    RescheduleCallForm,
)
from carecli.screens.flag import FlagScreen
from carecli.screens.formatting import in_zone, show_date, show_time, show_time_zoned, words
from carecli.screens.forms import FlagFormScreen, describe_duration
from carecli.screens.live import DataChanged
from carecli.screens.record import RecordScreen
from carecli.screens.widgets import CareFooter, CareHeader, CareTable

if TYPE_CHECKING:
    from textual.app import App

    from carecli.services.desk import CallView

#: action -> the permission it needs; the screen hides what the role cannot do (the repository refuses it anyway)
ACTION_PERMISSIONS: dict[str, Permission] = {
    "complete": Permission.CALLS_WRITE,
    "reschedule": Permission.CALLS_WRITE,
    "cancel_call": Permission.CALLS_WRITE,
    "no_answer": Permission.CALLS_WRITE,
    "edit_notes": Permission.CALLS_WRITE,
    "raise_flag": Permission.FLAGS_WRITE,
}
#: action -> (its form, what it does to the call, what is said once it is done)
STEPS: dict[str, tuple[type[CallStepForm], str, str]] = {
    "complete": (CompleteCallForm, "completed", "Call completed."),
    "reschedule": (RescheduleCallForm, "rescheduled", "Call rescheduled."),
    "cancel_call": (CancelCallForm, "cancelled", "Call cancelled."),
    "no_answer": (NoAnswerForm, "marked unanswered", "Call marked unanswered."),
}
#: the kinds of record this screen shows
CALL_ENTITIES = frozenset({"call_record", "risk_flag", "member"})


def open_flag(app: App[Any], flag_id: uuid.UUID) -> None:
    """Open a risk flag's screen (the worklist and the call screen share this)."""
    app.push_screen(FlagScreen(flag_id))


class CallScreen(RecordScreen):
    """One call with its notes and flags; the keys take a scheduled call to its next step."""

    HELP = """
## Call

Everything about one call: its type and status, when it was scheduled, started
and ended (in your time zone, `[tui] timezone`), its outcome and follow-up, its full notes (scroll them
with the arrow keys; **Tab** goes on to the flags), who the specialist is, who
logged it and when, and the risk flags raised from it. **ctrl+r** reads it again.

While the call is **scheduled**: **c** completes it (started and ended default to
now; you can ask for a follow-up and schedule the next attempt in the same step),
**s** moves it to another time, **x** cancels it (say why), **n** records that the
member did not answer. **e** edits the notes of your own calls. **f** raises a
risk flag from a call that was completed or not answered. **Enter** on a flag
opens it; **m** opens the member. Keys your role cannot use are not shown.
"""

    DEFAULT_CSS = """
    CallScreen #call-header { height: auto; padding: 0 1; background: $boost; }
    CallScreen #call-title { text-style: bold; }
    CallScreen .section { padding: 0 1; color: $text-muted; text-style: bold; height: 1; }
    CallScreen #call-notes-box { height: 1fr; min-height: 3; padding: 0 1; }
    CallScreen #call-notes { width: 1fr; }
    CallScreen #call-flags { height: auto; max-height: 7; }
    """

    # The steps come first and the labels are short: at 80 columns the footer shows them all, with m and Esc.
    BINDINGS = [
        Binding("c", "complete", "Complete", id="call.complete",
                tooltip="The call took place: when, how it went, follow-up, the next attempt"),
        Binding("n", "no_answer", "No answer", id="call.no_answer",
                tooltip="The member did not answer (optionally schedule the next attempt)"),
        Binding("s", "reschedule", "Reschedule", id="call.reschedule", tooltip="Move this call to another time"),
        Binding("x", "cancel_call", "Cancel", id="call.cancel", tooltip="Cancel this call, saying why"),
        Binding("e", "edit_notes", "Notes", id="call.edit_notes", tooltip="Change the notes of your own call"),
        Binding("f", "raise_flag", "Flag", id="call.raise_flag", tooltip="Raise a risk flag found on this call"),
        Binding("m", "open_member", "Member", id="call.open_member", tooltip="Open the member's file"),
        Binding("escape", "back", "Back", id="call.back", tooltip="Back to the previous screen"),
        Binding("ctrl+r", "refresh", "Refresh", show=False, id="call.refresh", tooltip="Read the call again"),
    ]

    RECORD = "call"

    def __init__(self, call_id: uuid.UUID | str) -> None:
        super().__init__()
        self.call_id = call_id if isinstance(call_id, uuid.UUID) else uuid.UUID(str(call_id))
        self.view: CallView | None = None

    # -- layout -------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield CareHeader()
        with Vertical(id="call-header"):
            yield Static("Reading the call…", id="call-title", markup=False)
            yield Static("", id="call-fields", markup=False)
        yield Static("Notes", classes="section", id="call-notes-label")
        with VerticalScroll(id="call-notes-box"):
            yield Static("", id="call-notes", markup=False)
        yield Static("Risk flags raised from this call", classes="section", id="call-flags-label")
        yield CareTable(id="call-flags", cursor_type="row", zebra_stripes=True)
        yield CareFooter()

    def on_mount(self) -> None:
        self.title = "Call"
        table = self.query_one("#call-flags", DataTable)
        for name, width in ((in_zone("Raised"), 16), ("Severity", 8), ("Type", 10), ("State", 8),
                            ("Description", None)):
            table.add_column(name, width=width)
        self.query_one("#call-notes-box").focus()
        self.load()

    # -- reading --------------------------------------------------------------------------------

    def read(self) -> CallView:
        # From the primary: a step just taken shows at once.
        return self.desk.call_view(self.call_id)

    def show_read_failure(self, problem: Problem) -> None:
        self.query_one("#call-title", Static).update(f"Could not read this call: {problem.message}")
        self.query_one("#call-fields", Static).update(problem.hint or "")

    def show_view(self, view: CallView) -> None:
        """Fill the screen from a freshly read call."""
        self.view = view
        call = view.call
        deleted = " (deleted)" if call.deleted_at else ""
        self.query_one("#call-title", Static).update(
            f"{words(call.call_type).capitalize()} call with {view.member_name}  ·  {words(call.call_status)}"
            f"{deleted}")
        self.query_one("#call-fields", Static).update(self.fields_text(view))
        self.query_one("#call-notes", Static).update(call.call_notes or "No notes.")
        self._fill_flags(view)
        self.refresh_bindings()

    @staticmethod
    def fields_text(view: CallView) -> str:
        """The call's fields, two to a line (labels say which zone the times are in)."""
        call = view.call
        duration = describe_duration(call.duration_seconds) if call.duration_seconds is not None else "—"
        if call.follow_up_required:
            follow_up = f"required by {show_date(call.follow_up_date)}" if call.follow_up_date else "required"
        else:
            follow_up = "not required"
        logged = view.logged_by or "not recorded"
        if view.logged_at is not None:
            logged += f", {show_time_zoned(view.logged_at)}"
        pairs = [
            (("Type", words(call.call_type)), ("Status", words(call.call_status))),
            ((in_zone("Scheduled"), show_time(call.scheduled_at)), ("Duration", duration)),
            ((in_zone("Started"), show_time(call.started_at)), (in_zone("Ended"), show_time(call.ended_at))),
            (("Outcome", call.outcome or "—"), ("Follow-up", follow_up)),
        ]
        width = max(16, *(len(label) for pair in pairs for label, _value in pair))  # a long zone name widens it
        lines = [f"{left[0]:<{width}} {left[1]:<21} {right[0]:<{width}} {right[1]}" for left, right in pairs]
        lines.append(f"{'Specialist':<{width}} {view.specialist_name or 'none recorded'}")
        lines.append(f"{'Logged by':<{width}} {logged}")
        return "\n".join(lines)

    def _fill_flags(self, view: CallView) -> None:
        table = self.query_one("#call-flags", DataTable)
        selected = None
        if table.row_count:
            row = min(max(table.cursor_row, 0), table.row_count - 1)
            selected = table.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value
        table.clear()
        for flag_view in view.flags:
            flag = flag_view.flag
            state = "resolved" if flag_view.resolution is not None else "open"
            table.add_row(show_time(flag.created_at), words(flag.severity), words(flag.risk_type), state,
                          " ".join(flag.description.split()), key=str(flag.id))
        if selected is not None and selected in table.rows:
            table.move_cursor(row=table.get_row_index(selected))
        count = len(view.flags)
        self.query_one("#call-flags-label", Static).update(
            f"Risk flags raised from this call ({count})" if count else "No risk flags raised from this call")
        table.display = bool(count)
        # Flags are what there is to open here: Enter should reach them without a Tab first
        # (the notes stay a Tab away for scrolling long ones).
        if count and (self.focused is None or self.focused.id == "call-notes-box"):
            table.focus()

    # -- live updates ------------------------------------------------------------------------------

    def on_data_changed(self, message: DataChanged) -> None:
        """The call (or its flags, or its member) changed: read it again now if shown, else when back.

        Own writes are left out while this screen is on top, or one of its own
        forms is (a step reloads the call once it is saved); a change made from a
        screen opened over this one (the member, a flag) counts.
        """
        if self.care.locked:
            return
        ignore = self.desk.source if self.reloads_own_writes() else None
        if not self._concerned(message, ignore):
            return
        if self.is_current:
            self.load()
        else:
            self._stale = True

    def _concerned(self, message: DataChanged, ignore: str | None) -> bool:
        changes = message.changes
        if changes.full_refresh or changes.record_changed("call_record", self.call_id, ignore=ignore):
            return True
        view = self.view
        if view is None or view.call.member_id is None:
            return False
        if changes.concerns_member(view.call.member_id, CALL_ENTITIES, ignore=ignore):
            return True
        # A flag's resolution is kept in metadata about the flag, which names no member.
        return bool(view.flags) and any(change.entity == "metadata" and change.member_id is None
                                        for change in changes.by_others(ignore))

    # -- lock -----------------------------------------------------------------------------------------

    def clear_phi(self) -> None:
        self.forget()
        self.query_one("#call-title", Static).update("")
        self.query_one("#call-fields", Static).update("")
        self.query_one("#call-notes", Static).update("")
        self.query_one("#call-flags", DataTable).clear()
        self.refresh_bindings()

    def restore_after_unlock(self) -> None:
        self.query_one("#call-title", Static).update("Reading the call…")
        self.load()  # also catches up on whatever changed while locked

    # -- actions -----------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        permission = ACTION_PERMISSIONS.get(action)
        if permission is None:
            if action == "open_member":
                return None if self.view is None else True
            return True
        desk = self.care.desk
        if desk is None or not desk.can(permission) or self.view is None:
            return False  # hidden: the role cannot, or the call is not read yet
        return self._refusal(action, self.view) is None

    @staticmethod
    def _refusal(action: str, view: CallView) -> str | None:
        """Why ``action`` does not apply to the call as it is (None when it does)."""
        status = view.call.call_status
        if action in STEPS and status != "scheduled":
            return f"Only a scheduled call can be {STEPS[action][1]}; this call is {words(status)}."
        if action == "edit_notes" and not view.is_own:
            return "Only the specialist who logged a call can edit its notes."
        if action == "raise_flag" and status not in FLAGGABLE_STATUSES:
            return (f"A flag can only be raised from a completed or unanswered call (this call is "
                    f"{words(status)}).")
        return None

    def _ready(self, action: str) -> CallView | None:
        """The call, when ``action`` may be taken on it; else a polite refusal (e.g. from the palette)."""
        view = self.view
        if view is None:
            return None
        permission = ACTION_PERMISSIONS[action]
        if not self.desk.can(permission):
            role = self.desk.role or "your role"
            self.notify(f"The {role} role cannot do this (it needs '{permission}').", title="Not available",
                        severity="warning")
            return None
        refusal = self._refusal(action, view)
        if refusal is not None:
            self.notify(refusal, title="Not available", severity="warning")
            return None
        return view

    def _after(self, done: str) -> Callable[[Any], None]:
        def after(result: Any) -> None:
            if result is None:
                return
            self.notify(done)
            self.load()
        return after

    def _step(self, action: str) -> None:
        view = self._ready(action)
        if view is None:
            return
        form_class, _done, said = STEPS[action]
        self.app.push_screen(form_class(view.call, view.member_name), self._after(said))

    def action_complete(self) -> None:
        self._step("complete")

    def action_reschedule(self) -> None:
        self._step("reschedule")

    def action_cancel_call(self) -> None:
        self._step("cancel_call")

    def action_no_answer(self) -> None:
        self._step("no_answer")

    def action_edit_notes(self) -> None:
        view = self._ready("edit_notes")
        if view is not None:
            self.app.push_screen(EditCallNotesForm(view.call, view.member_name), self._after("Notes saved."))

    def action_raise_flag(self) -> None:
        view = self._ready("raise_flag")
        if view is not None:
            self.app.push_screen(FlagFormScreen(view.call, member_label=view.member_name,
                                                specialist_label=view.specialist_name or "none recorded"),
                                 self._after("Risk flag raised."))

    @on(DataTable.RowSelected, "#call-flags")
    def open_selected_flag(self, event: DataTable.RowSelected) -> None:
        """Enter on a flag opens it."""
        if event.row_key.value:
            open_flag(self.app, uuid.UUID(event.row_key.value))

    def action_open_member(self) -> None:
        view = self.view
        if view is None or view.call.member_id is None:
            return
        from carecli.screens.member import MemberDetailScreen

        stack = self.app.screen_stack
        below = stack[-2] if len(stack) > 1 and stack[-1] is self else None
        if isinstance(below, MemberDetailScreen) and below.member_id == view.call.member_id:
            self.app.pop_screen()  # opened from that member's file: go back to it
            return
        self.care.open_member(view.call.member_id)

    def action_refresh(self) -> None:
        self.load()

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()

"""Break the glass: the emergency-access dialog on a member, and the supervisors' review queue (F8).

A user without ``phi:reveal`` but with ``phi:emergency`` asks for time-boxed
access to one member's SSN/DOB with :class:`BreakGlassDialog` (a reason and a
typed confirmation). Reviewers (``emergency:review``; ``audit:read`` may look)
see :class:`EmergencyQueueScreen`: the grants nobody has reviewed yet with
the number of actions done under each; Enter lists those actions, ``v``
marks the grant reviewed with a note. Every call goes through the Desk in a
thread worker, like every other screen.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.widget import Widget
from textual.widgets import DataTable, Input, Static

from carecli.data.permissions import Permission
from carecli.data.repositories.emergency import CONFIRMATION_WORD, MIN_NOTE_LENGTH, MIN_REASON_LENGTH, EmergencyGrant
from carecli.errors import PermissionDenied
from carecli.screens.admin import AuditEntryScreen, summarize_values
from carecli.screens.base import CareModal, CareScreen, Problem, describe
from carecli.screens.formatting import in_zone, plural, show_time, show_time_zoned, words
from carecli.screens.forms import FormModal
from carecli.screens.widgets import CareFooter, CareHeader, CareTable
from carecli.services.desk import AccessEntry

if TYPE_CHECKING:
    from carecli.services.emergency import QueueEntry


def grant_state(grant: EmergencyGrant) -> str:
    if grant.reviewed:
        return "reviewed"
    return "live" if grant.live else "ended"


# -- asking for access ---------------------------------------------------------------------------


class BreakGlassDialog(FormModal):
    """Ask for emergency access to one member: a reason and a typed confirmation (audited, reviewed).

    Dismisses with the :class:`EmergencyGrant`, or ``None`` when cancelled.
    """

    HEADING = "Break the glass"
    ACTION = "get emergency access"
    SAVE_LABEL = "Break the glass"
    KEEP_RESULT_WHILE_COVERED = True

    def __init__(self, member_id: uuid.UUID, member_label: str = "", *, minutes: int = 60) -> None:
        super().__init__()
        self.member_id = member_id
        self.member_label = member_label
        self.minutes = minutes

    def heading(self) -> str:
        return f"Break the glass for {self.member_label}" if self.member_label else self.HEADING

    def compose_fields(self) -> Iterable[Widget]:
        yield Static(f"Emergency access lets you reveal this member's SSN and date of birth for {self.minutes} "
                     "minutes. Everything you do on this member meanwhile is marked in the audit log, and a "
                     "supervisor reviews it.", classes="muted")
        yield self.field("reason", f"What is the emergency? (at least {MIN_REASON_LENGTH} characters)",
                         Input(placeholder="e.g. member in crisis on the line, identity check needed",
                               max_length=500, compact=True))
        yield self.field("confirmation", f"Type {CONFIRMATION_WORD} to confirm",
                         Input(placeholder=CONFIRMATION_WORD, max_length=20, compact=True))

    def on_mount(self) -> None:
        self.query_one("#field-reason").focus()

    def collect(self) -> tuple[dict[str, Any], dict[str, str]]:
        errors: dict[str, str] = {}
        reason = " ".join(self.input_value("reason").split())
        if len(reason) < MIN_REASON_LENGTH:
            errors["reason"] = f"say what the emergency is (at least {MIN_REASON_LENGTH} characters)"
        confirmation = self.input_value("confirmation").strip()
        if confirmation.upper() != CONFIRMATION_WORD:
            errors["confirmation"] = f"type {CONFIRMATION_WORD} to confirm"
        return {"reason": reason, "confirmation": confirmation}, errors

    def perform(self, values: dict[str, Any]) -> Any:
        return self.desk.break_glass(self.member_id, values["reason"], values["confirmation"])


class ReviewDialog(FormModal):
    """Mark one emergency access reviewed, with a note (a live one ends now)."""

    HEADING = "Review emergency access"
    ACTION = "mark the emergency access reviewed"
    SAVE_LABEL = "Mark reviewed"
    SUBMIT_ON_ENTER = True

    def __init__(self, entry: QueueEntry, member_label: str = "") -> None:
        super().__init__()
        self.entry = entry
        self.member_label = member_label

    def _about(self) -> str:
        grant = self.entry.grant
        ends = " It is still live: reviewing ends it now." if grant.live else ""
        member = self.member_label or str(grant.member_id)[:8]
        return (f"{self.entry.who}, member {member}, {show_time(grant.granted_at)} to "
                f"{show_time_zoned(grant.expires_at)}, {plural(grant.actions or 0, 'action')}.{ends}")

    def refill_read_only(self) -> None:
        self.query_one("#review-about", Static).update(self._about())

    def compose_fields(self) -> Iterable[Widget]:
        yield Static(self._about(), id="review-about", classes="read-only", markup=False)
        yield self.field("note", f"Review note (at least {MIN_NOTE_LENGTH} characters)",
                         Input(placeholder="e.g. confirmed with the caller's case file", max_length=500,
                               compact=True))

    def on_mount(self) -> None:
        self.query_one("#field-note").focus()

    def collect(self) -> tuple[dict[str, Any], dict[str, str]]:
        note = " ".join(self.input_value("note").split())
        if len(note) < MIN_NOTE_LENGTH:
            return {}, {"note": f"say what you checked (at least {MIN_NOTE_LENGTH} characters)"}
        return {"note": note}, {}

    def perform(self, values: dict[str, Any]) -> Any:
        return self.desk.review_emergency(self.entry.grant.id, values["note"])


# -- the review queue ------------------------------------------------------------------------------


class QueueLoaded(Message):
    def __init__(self, generation: int, entries: Sequence[QueueEntry], problem: Problem | None = None,
                 refused: bool = False, names: dict[uuid.UUID, str] | None = None) -> None:
        super().__init__()
        self.generation = generation
        self.entries = list(entries)
        self.problem = problem
        self.refused = refused
        #: member id -> "Last, First" (empty without members:read: the ids are shown)
        self.names = names or {}


class GrantActionsLoaded(Message):
    def __init__(self, rows: Sequence[AccessEntry]) -> None:
        super().__init__()
        self.rows = list(rows)


class GrantActionsScreen(CareModal):
    """One grant: why, by whom, until when, and every audit row done under it (Enter shows one whole)."""

    DEFAULT_CSS = """
    GrantActionsScreen { align: center middle; }
    GrantActionsScreen #grant { width: 90%; max-width: 110; height: 80%; border: heavy $warning;
                                background: $surface; padding: 0 1; }
    GrantActionsScreen #grant-summary { height: auto; padding: 0 0 1 0; }
    GrantActionsScreen #grant-actions { height: 1fr; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close", id="emergency_grant.close", tooltip="Back to the review queue"),
        Binding("m", "open_member", "Open member", id="emergency_grant.open_member",
                tooltip="Open the member this access was for (the open is audited)"),
    ]

    def __init__(self, entry: QueueEntry, member_label: str = "") -> None:
        super().__init__()
        self.entry = entry
        self.member_label = member_label
        self.rows: list[AccessEntry] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="grant"):
            yield Static("", id="grant-summary", markup=False)
            yield CareTable(id="grant-actions", cursor_type="row", zebra_stripes=True)
        yield CareFooter()

    def on_mount(self) -> None:
        grant = self.entry.grant
        box = self.query_one("#grant")
        box.border_title = f"Emergency access · {grant_state(grant)}"
        box.border_subtitle = "Enter shows a row · Esc closes"
        self._summarize()
        table = self.query_one("#grant-actions", DataTable)
        for label in (in_zone("When"), "Action", "Entity", "Id", "Details"):
            table.add_column(label)
        table.focus()
        self.load()

    def _summarize(self) -> None:
        grant = self.entry.grant
        member = f"{self.member_label} ({grant.member_id})" if self.member_label else str(grant.member_id)
        lines = [f"{self.entry.who} on member {member}",
                 f"{show_time(grant.granted_at)} to {show_time_zoned(grant.expires_at)} ({grant.minutes} min)",
                 f"Reason: {grant.reason}"]
        if grant.reviewed:
            lines.append(f"Reviewed by {self.entry.reviewer} on {show_time_zoned(grant.reviewed_at)}: "
                         f"{grant.review_note}")
        self.query_one("#grant-summary", Static).update("\n".join(lines))

    @work(thread=True, exclusive=True, group="emergency-actions")
    def load(self) -> None:
        try:
            rows = self.desk.emergency_actions(self.entry.grant.id)
        except Exception as exc:
            self.fail("read the emergency access's actions", exc)
            return
        self.post_message(GrantActionsLoaded(rows))

    def on_grant_actions_loaded(self, message: GrantActionsLoaded) -> None:
        self.rows = message.rows
        table = self.query_one("#grant-actions", DataTable)
        table.clear()
        for index, access in enumerate(self.rows):
            entry = access.entry
            table.add_row(show_time(entry.created_at), words(entry.action), words(entry.entity_type),
                          str(entry.entity_id)[:8],
                          summarize_values(entry.old_values, entry.new_values), key=str(index))

    @on(DataTable.RowSelected, "#grant-actions")
    def show_row(self, event: DataTable.RowSelected) -> None:
        index = int(event.row_key.value or 0)
        if 0 <= index < len(self.rows):
            self.app.push_screen(AuditEntryScreen(self.rows[index]))

    def action_close(self) -> None:
        self.dismiss(None)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "open_member":
            desk = self.care.desk
            return desk is not None and desk.can(Permission.MEMBERS_READ)
        return True

    def action_open_member(self) -> None:
        self.care.open_member(self.entry.grant.member_id)

    def clear_phi(self) -> None:
        # The reason is free text (it may name the member's condition): gone while locked.
        self.query_one("#grant-summary", Static).update("")

    def restore_after_unlock(self) -> None:
        self._summarize()


class EmergencyQueueScreen(CareScreen):
    """Emergency accesses waiting for review, newest first."""

    DEFAULT_CSS = """
    EmergencyQueueScreen #emergency-refused { display: none; height: auto; padding: 1 2; border: round $warning;
                                              margin: 1 2; }
    EmergencyQueueScreen #emergency-table { height: 1fr; }
    """

    HELP = """
## Emergency accesses

Break-the-glass grants: a user without `phi:reveal` got time-boxed access to
one member's SSN and date of birth. Each row shows who, which member, when,
and how many audit rows they wrote on that member meanwhile. **Enter** opens
the member (an audited read); **d** shows the grant (reason included) and
every row done under it; **v** marks the grant reviewed with a note
(`emergency:review`; a live grant ends then); **a** shows reviewed grants too.
"""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("o", "open_member", "Open member", id="emergency.open_member",
                tooltip="Open the member of the selected grant (Enter does too; the open is audited)"),
        Binding("d", "details", "Details", id="emergency.details",
                tooltip="The grant (reason included) and every audit row done under it"),
        Binding("v", "review", "Mark reviewed", id="emergency.review",
                tooltip="Mark the selected grant reviewed, with a note (emergency:review)"),
        Binding("a", "toggle_all", "All / unreviewed", id="emergency.all", tooltip="Show reviewed grants too"),
        Binding("ctrl+r", "reload", "Refresh", id="emergency.refresh", tooltip="Read the queue again"),
        Binding("escape", "back", "Back", id="emergency.back", tooltip="Back to the previous screen"),
    ]

    WORK_FOCUS = "#emergency-table"

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[QueueEntry] = []
        #: member id -> "Last, First", from the last load
        self.names: dict[uuid.UUID, str] = {}
        self.include_reviewed = False
        self.generation = 0
        self.refused = False

    def compose(self) -> ComposeResult:
        yield CareHeader()
        yield Static(id="emergency-refused", markup=False)
        yield CareTable(id="emergency-table", cursor_type="row", zebra_stripes=True)
        yield Static("Loading the emergency accesses…", id="emergency-status", classes="status-line", markup=False)
        yield CareFooter()

    def on_mount(self) -> None:
        self.sub_title = "Emergency accesses"
        table = self.query_one("#emergency-table", DataTable)
        for label in (in_zone("Granted"), "Who", "Member", in_zone("Until"), "State", "Actions"):
            table.add_column(label)
        self.reload()

    def reload(self) -> None:
        self.generation += 1
        self.load_queue(self.generation, self.include_reviewed)

    @work(thread=True, exclusive=True, group="emergency-queue")
    def load_queue(self, generation: int, include_reviewed: bool) -> None:
        try:
            entries = self.desk.emergency_queue(include_reviewed=include_reviewed)
        except PermissionDenied as exc:
            self.post_message(QueueLoaded(generation, [], describe(exc), refused=True))
            return
        except Exception as exc:
            self.post_message(QueueLoaded(generation, [], describe(exc)))
            return
        try:
            names = self.desk.member_labels(entry.grant.member_id for entry in entries)
        except Exception:  # names are a help: ids are shown without them
            names = {}
        self.post_message(QueueLoaded(generation, entries, names=names))

    def on_queue_loaded(self, message: QueueLoaded) -> None:
        if message.generation != self.generation:
            return
        status = self.query_one("#emergency-status", Static)
        table = self.query_one("#emergency-table", DataTable)
        if message.refused:
            refused = self.query_one("#emergency-refused", Static)
            refused.update(f"The emergency accesses are not shown: {message.problem}.\nReviewing them needs the "
                           f"'{Permission.EMERGENCY_REVIEW}' permission (supervisors have it).")
            refused.display = True
            table.display = False
            self.refused = True
            self.refresh_bindings()
            status.update("Emergency accesses: not shown")
            self.ensure_focus()
            return
        if message.problem is not None:
            status.update(f"Could not read the emergency accesses: {message.problem}")
            return
        self.entries = message.entries
        self.names = message.names
        table.clear()
        for entry in self.entries:
            grant = entry.grant
            member = self.names.get(grant.member_id) or str(grant.member_id)[:8]
            table.add_row(show_time(grant.granted_at), entry.who[:24], member[:30],
                          show_time(grant.expires_at), grant_state(grant), str(grant.actions or 0),
                          key=str(grant.id))
        count = len(self.entries)
        if not self.entries:
            status.update("No emergency accesses." if self.include_reviewed
                          else "No emergency accesses waiting for review.")
        elif self.include_reviewed:
            status.update(plural(count, "emergency access"))
        else:
            status.update(f"{plural(count, 'emergency access')} waiting for review")
        self.refresh_bindings()

    def selected(self) -> QueueEntry | None:
        table = self.query_one("#emergency-table", DataTable)
        if not self.entries or table.row_count == 0:
            return None
        row = min(max(table.cursor_row, 0), len(self.entries) - 1)
        return self.entries[row]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("details", "review", "toggle_all", "open_member") and self.refused:
            return False
        if action == "open_member":
            desk = self.care.desk
            return desk is not None and desk.can(Permission.MEMBERS_READ)
        if action == "review":
            desk = self.care.desk
            return desk is not None and desk.can(Permission.EMERGENCY_REVIEW)
        return True

    def action_details(self) -> None:
        entry = self.selected()
        if entry is not None:
            self.app.push_screen(GrantActionsScreen(entry, self.names.get(entry.grant.member_id, "")))

    def action_open_member(self) -> None:
        entry = self.selected()
        if entry is not None:
            self.care.open_member(entry.grant.member_id)

    @on(DataTable.RowSelected, "#emergency-table")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter: the member (without members:read, the grant's details instead)."""
        event.stop()
        if self.check_action("open_member", ()):
            self.action_open_member()
        else:
            self.action_details()

    def action_review(self) -> None:
        entry = self.selected()
        if entry is None:
            self.notify("Nothing to review.")
            return
        if entry.grant.reviewed:
            self.notify("This emergency access was reviewed already.", severity="warning")
            return
        self.app.push_screen(ReviewDialog(entry, self.names.get(entry.grant.member_id, "")), self._after_review)

    def _after_review(self, grant: EmergencyGrant | None) -> None:
        if grant is None:
            return
        self.notify("Emergency access marked reviewed.")
        self.reload()

    def action_toggle_all(self) -> None:
        self.include_reviewed = not self.include_reviewed
        self.reload()

    def action_reload(self) -> None:
        self.reload()

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    def clear_phi(self) -> None:
        # Member ids and staff names only, but nothing stays on screen under the lock.
        self.query_one("#emergency-table", DataTable).clear()
        self.entries = []
        self.names = {}

    def restore_after_unlock(self) -> None:
        self.reload()

"""A member's file: contact details, masked SSN/DOB, and tabs of calls, flags, enrollments, notes and access.

Opening the screen is an audited PHI read (``Desk.open_member``). SSN and
date of birth stay masked until the user asks, gives a reason and holds
``phi:reveal``; a revealed value hides itself again after
``settings.reveal_seconds``, as soon as anything covers or replaces this
screen, and when the app locks. Every write goes through a form
(:mod:`carecli.screens.forms`) and reloads the file once it is saved, within
the same visit: not another audited read (other reloads are).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.coordinate import Coordinate
from textual.message import Message
from textual.timer import Timer
from textual.widgets import DataTable, Static, TabbedContent, TabPane

from carecli.data.permissions import Permission
from carecli.data.rules import FLAGGABLE_STATUSES, enrollment_state
from carecli.screens.base import ActionFailed, CareScreen, Problem, describe, member_name
from carecli.screens.call import CallScreen
from carecli.screens.call_forms import ScheduleCallForm
from carecli.screens.confirm import ConfirmDialog
from carecli.screens.emergency import BreakGlassDialog
from carecli.screens.flag import FlagScreen
from carecli.screens.formatting import in_zone, show_date, show_phone, show_time, show_time_zoned, words
from carecli.screens.forms import (
    CallFormScreen,
    EnrollFormScreen,
    FlagFormScreen,
    NoteDialog,
    RevealDialog,
    TerminateDialog,
)
from carecli.screens.live import MEMBER_FILE_ENTITIES, DataChanged
from carecli.screens.member_forms import MemberEditScreen
from carecli.screens.widgets import CareFooter, CareHeader, CareTabbedContent, CareTable, show_empty
from carecli.services.desk import NOTE_PREFIX, Desk, EnrollmentView, MemberFile, MemberVisit

if TYPE_CHECKING:
    from carecli.data.records import Call, Member, Plan
    from carecli.data.repositories.emergency import EmergencyGrant
    from carecli.data.repositories.members import RevealedPhi

#: shown instead of a value nobody has revealed (the layout of the real value, no digit of it)
MASKED_SSN = "•••-••-••••"
MASKED_DOB = "••••-••-••"

#: action -> the permission it needs; the screen hides what the role cannot do (the repository refuses it anyway)
ACTION_PERMISSIONS: dict[str, Permission] = {
    "log_call": Permission.CALLS_WRITE,
    "schedule_call": Permission.CALLS_WRITE,
    "raise_flag": Permission.FLAGS_WRITE,
    "enroll": Permission.ENROLLMENTS_WRITE,
    "terminate": Permission.ENROLLMENTS_WRITE,
    "set_primary": Permission.ENROLLMENTS_WRITE,
    "add_note": Permission.MEMBERS_WRITE,
    "edit_member": Permission.MEMBERS_WRITE,
}

#: tab pane id -> title (the access tab only exists for users who may read the audit log)
TABS = {"calls": "Calls", "flags": "Risk flags", "enrollments": "Enrollments", "notes": "Notes", "access": "Access"}
#: what an empty tab says
EMPTY = {"calls": "No calls with this member yet.", "flags": "No risk flags.", "enrollments": "No enrollments.",
         "notes": "No notes.", "access": "No one has opened this record."}


def _short(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def may_break_glass(desk: Desk) -> bool:
    """A user who cannot reveal, but may ask for emergency access."""
    return desk.can(Permission.PHI_EMERGENCY) and not desk.can(Permission.PHI_REVEAL)


def age_on(born: date, today: date) -> int:
    """Whole years from ``born`` to ``today``."""
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


class MemberOpened(Message):
    """The member's file was read (posted by the open worker)."""

    def __init__(self, file: MemberFile, my_specialist_id: uuid.UUID | None, generation: int) -> None:
        super().__init__()
        self.file = file
        self.my_specialist_id = my_specialist_id
        self.generation = generation


class MemberOpenFailed(Message):
    def __init__(self, problem: Problem, generation: int) -> None:
        super().__init__()
        self.problem = problem
        self.generation = generation


class EmergencyChecked(Message):
    """Whether the user holds a live break-the-glass grant on this member (users without phi:reveal only)."""

    def __init__(self, grant: EmergencyGrant | None, generation: int) -> None:
        super().__init__()
        self.grant = grant
        self.generation = generation


class PlansLoaded(Message):
    """The plan catalog, read to offer in the enrollment form."""

    def __init__(self, plans: list[Plan]) -> None:
        super().__init__()
        self.plans = plans


class MemberChanged(Message):
    """A change made straight from the screen (no form) was saved."""

    def __init__(self, note: str) -> None:
        super().__init__()
        self.note = note


#: the member of a spare screen that has none yet (no member has the nil id)
NO_MEMBER = uuid.UUID(int=0)


def as_member_id(value: uuid.UUID | str) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


class MemberDetailScreen(CareScreen):
    """One member's file; opened from the worklist, the member browser or the command palette."""

    #: the table of the tab shown
    WORK_FOCUS = "DataTable"

    HELP = """
## Member

The member's contact details, with SSN and date of birth masked (**r** reveals them
for a short time, with a reason, audited), and tabs of their calls, risk flags,
enrollments, notes and (for supervisors and auditors) who accessed the record:
**1**-**5** switch tabs.

**Enter** on a call opens it: there a scheduled call is completed, rescheduled,
cancelled or marked unanswered. **Enter** on a flag opens it, to resolve or re-open it.
**c** logs a call that already took place, **s** schedules one, **f** raises a risk
flag from a completed or unanswered call (you pick which), **u** corrects the member's
contact details or status, **n** adds a note; on the enrollments tab **e** enrolls,
**t** terminates (with a reason) and **p** makes a plan primary (asks first).
Keys your role cannot use are not shown.
"""

    DEFAULT_CSS = """
    MemberDetailScreen #member-header { height: auto; padding: 0 1; background: $boost; }
    MemberDetailScreen #member-header Static { text-wrap: nowrap; text-overflow: ellipsis; }
    MemberDetailScreen #member-name { text-style: bold; }
    MemberDetailScreen #member-phi { color: $text-muted; }
    MemberDetailScreen #member-phi.-revealed { color: $warning; text-style: bold; }
    MemberDetailScreen #member-tabs { height: 1fr; }
    MemberDetailScreen #member-tabs > ContentSwitcher { height: 1fr; }
    MemberDetailScreen #member-tabs TabPane { height: 1fr; padding: 0; }
    """

    BINDINGS = [
        Binding("r", "reveal", "Reveal", id="member.reveal",
                tooltip="Show SSN / date of birth for a short time (needs phi:reveal and a reason; audited)"),
        Binding("b", "break_glass", "Break the glass", id="member.break_glass",
                tooltip="Emergency: time-boxed access to this member's SSN / DOB (phi:emergency; audited, reviewed)"),
        Binding("c", "log_call", "Call", id="member.log_call", tooltip="Log a call with this member"),
        Binding("s", "schedule_call", "Schedule", id="member.schedule_call",
                tooltip="Schedule a call with this member"),
        Binding("f", "raise_flag", "Flag", id="member.raise_flag",
                tooltip="Raise a risk flag from one of the member's completed or unanswered calls"),
        Binding("e", "enroll", "Enroll", id="member.enroll", tooltip="Enroll this member in a plan"),
        Binding("t", "terminate", "Terminate", id="member.terminate", tooltip="End the selected enrollment"),
        Binding("p", "set_primary", "Primary", id="member.set_primary",
                tooltip="Make the selected enrollment the primary plan (asks first)"),
        Binding("n", "add_note", "Note", id="member.add_note", tooltip="Add a note to this member's file"),
        Binding("u", "edit_member", "Edit member", id="member.edit",
                tooltip="Correct the member's name, contact details, address or status (members:write)"),
        Binding("ctrl+r", "refresh", "Refresh", id="member.refresh", tooltip="Read the member's file again"),
        Binding("escape", "back", "Back", id="member.back", tooltip="Back to the previous screen"),
        Binding("1", "show_tab('calls')", "Calls", show=False, id="member.tab.calls", tooltip="Show the calls"),
        Binding("2", "show_tab('flags')", "Flags", show=False, id="member.tab.flags", tooltip="Show the risk flags"),
        Binding("3", "show_tab('enrollments')", "Enrollments", show=False, id="member.tab.enrollments",
                tooltip="Show the enrollments"),
        Binding("4", "show_tab('notes')", "Notes", show=False, id="member.tab.notes", tooltip="Show the notes"),
        Binding("5", "show_tab('access')", "Access", show=False, id="member.tab.access",
                tooltip="Show who accessed this record (audit:read)"),
    ]

    def __init__(self, member_id: uuid.UUID | str | None) -> None:
        super().__init__()
        #: None only for the app's spare screen (:meth:`CareApp.prepare_spare_member`), composed before it is
        #: needed and given its member when it is taken
        self.member_id: uuid.UUID = NO_MEMBER if member_id is None else as_member_id(member_id)
        self.file: MemberFile | None = None
        self.revealed: RevealedPhi | None = None
        self.reveal_left = 0
        self._reveal_timer: Timer | None = None
        self._my_specialist_id: uuid.UUID | None = None
        # Bumped by clear_phi: a read that finishes after a lock is dropped, not shown under the lock.
        self._generation = 0
        self._calls: dict[str, Call] = {}
        self._enrollments: dict[str, EnrollmentView] = {}
        #: another session changed this member while the screen was covered: reload when shown again
        self._stale = False
        #: ... and not only this app's own writes (then the reload is a new, audited read)
        self._stale_by_others = False
        #: the user's live break-the-glass grant on this member, as last read (users without phi:reveal)
        self.emergency: EmergencyGrant | None = None
        #: this visit's audited open: a reload after this screen's own save is not a new read
        self._visit: MemberVisit | None = None
        #: the app read the file before showing this screen (:meth:`CareApp.open_member`): what it read, shown
        #: at mount, or None while the read is still on its way (it is posted here when done)
        self.read_ahead: list[Message] | None = None
        self.read_by_app = False
        #: on_mount has run (the widgets exist); until then a spare dropped by the app is only marked
        #: (``drop_when_mounted``) and removes itself here once mounted
        self.mount_handled = False
        self.drop_when_mounted = False

    # -- layout -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield CareHeader()
        with Vertical(id="member-header"):
            yield Static("Opening the member's file…", id="member-name", markup=False)
            yield Static("", id="member-contact", markup=False)
            yield Static("", id="member-address", markup=False)
            yield Static("", id="member-phi", markup=False)
        with CareTabbedContent(id="member-tabs"):
            for pane_id, title in TABS.items():
                if pane_id == "access" and not self.desk.can(Permission.AUDIT_READ):
                    continue
                with TabPane(title, id=pane_id):
                    yield Static("", id=f"{pane_id}-empty", classes="empty-note", markup=False)
                    yield CareTable(id=f"{pane_id}-table", cursor_type="row", zebra_stripes=True)
        yield CareFooter()

    def on_mount(self) -> None:
        self.mount_handled = True
        if self.drop_when_mounted:
            self.remove()  # a spare the app dropped while it was composing (CareApp.drop_spare_member)
            return
        if not self.query("#calls-table"):
            return  # torn down while composing (a spare screen when the app ends): none of its widgets came
        self.title = "Member"
        # Fixed widths where the content has a fixed shape: a table refilled while covered by a form
        # otherwise keeps header-wide columns until its next idle (Textualize/textual#4470).
        columns: dict[str, tuple[tuple[str, int | None], ...]] = {
            "calls": ((in_zone("When"), 16), ("Type", 9), ("Status", 9), ("Length", 7), ("Outcome", 16),
                      ("Follow-up", 10)),
            "flags": ((in_zone("Raised"), 16), ("State", 8), ("Severity", 8), ("Type", 10), ("Description", None)),
            # The plan's name goes last: at 80 columns it is what gets cut, not the dates. The primary plan
            # has a column of its own (a suffix on the status was cut to "active · p" at 80 columns).
            "enrollments": (("Plan", 18), ("Status", 15), ("Primary", 7), ("From", 10), ("Until", 10),
                            ("Cover", 5), ("Name", None)),
            "notes": ((in_zone("Written"), 16), ("Note", None)),
            "access": ((in_zone("When"), 16), ("Who", 20), ("Action", 8), ("Details", None)),
        }
        for pane_id, specs in columns.items():
            for table in self.query(f"#{pane_id}-table").results(DataTable):
                for name, width in specs:
                    table.add_column(name, width=width)
        # The calls first: Enter opens the call under the cursor (1-5 switch tabs).
        self.query_one("#calls-table", DataTable).focus()
        if self.read_ahead is not None:
            # Read before the screen was pushed: its first frame shows the file (no "opening…" frames, which
            # cost the read half of its speed in the same process).
            messages, self.read_ahead = self.read_ahead, None
            self.take_read(messages)
        elif not self.read_by_app:
            self.load()
        # else: the app's read is still on its way; its messages are posted here when it is done

    # -- reading -------------------------------------------------------------------------

    def load(self, *, own_save: bool = False) -> None:
        """(Re)open the member's file in a worker: an audited read, unless it only catches up on this app's
        own save (``own_save``: the same visit, so not another access)."""
        self._stale = self._stale_by_others = False
        self._open_in_background(self._generation, self._visit if own_save else None)

    # -- live updates ----------------------------------------------------------------------

    def on_data_changed(self, message: DataChanged) -> None:
        """Another session changed this member's file: reload it if it is on screen, else on return.

        Changes made through this app's own desk are left out: its forms and
        actions reload the file themselves once they are saved.
        """
        # Own writes made from a screen opened over this one (a call) count: only this screen's own forms
        # reload it themselves.
        ignore = self.desk.source if self.reloads_own_writes() else None
        if self.care.locked or not message.changes.concerns_member(self.member_id, MEMBER_FILE_ENTITIES,
                                                                    ignore=ignore):
            return
        # Only this app's own writes (a call saved on a screen opened over this one): the same visit.
        own_save = not message.changes.concerns_member(self.member_id, MEMBER_FILE_ENTITIES, ignore=self.desk.source)
        if self.is_current:
            self.load(own_save=own_save)  # a form on top keeps what was typed: it is another screen
        else:
            self._stale = True
            self._stale_by_others = self._stale_by_others or not own_save

    def on_screen_resume(self, event: events.ScreenResume) -> None:
        self.catch_up()

    def catch_up(self) -> None:
        if self._stale and not self.care.locked:
            self.load(own_save=not self._stale_by_others)

    @work(thread=True, exclusive=True, group="member-open")
    def _open_in_background(self, generation: int, visit: MemberVisit | None) -> None:
        for message in self.read_file(self.desk, generation, visit):
            self.post_message(message)

    def read_file(self, desk: Desk, generation: int = 0, visit: MemberVisit | None = None) -> list[Message]:
        """From a worker thread: open the member's file (an audited read) and, for a user who may break the
        glass, check for a live grant. Returns the messages to handle; touches no widget (the app calls it
        before this screen is mounted)."""
        try:
            file = desk.open_member(self.member_id, visit=visit)
            specialist = desk.specialist()
        except Exception as exc:  # shown on the screen, never raised
            return [MemberOpenFailed(describe(exc), generation)]
        messages: list[Message] = [MemberOpened(file, specialist.id if specialist is not None else None, generation)]
        if may_break_glass(desk):
            try:
                messages.append(EmergencyChecked(desk.emergency_grant(self.member_id), generation))
            except Exception as exc:
                messages.append(ActionFailed("check for emergency access", describe(exc)))
        return messages

    def take_read(self, messages: Iterable[Message]) -> None:
        """Handle what :meth:`read_file` returned, now (in the order it was read)."""
        for message in messages:
            if isinstance(message, MemberOpened):
                self.on_member_opened(message)
            elif isinstance(message, MemberOpenFailed):
                self.on_member_open_failed(message)
            elif isinstance(message, EmergencyChecked):
                self.on_emergency_checked(message)
            elif isinstance(message, ActionFailed):
                self.on_action_failed(message)

    def on_member_opened(self, message: MemberOpened) -> None:
        if message.generation != self._generation or self.care.locked:
            return
        self._my_specialist_id = message.my_specialist_id
        self._visit = message.file.visit
        self.show_file(message.file)

    def on_emergency_checked(self, message: EmergencyChecked) -> None:
        if message.generation != self._generation or self.care.locked:
            return
        self.emergency = message.grant
        self.render_phi()
        self.refresh_bindings()

    def on_member_open_failed(self, message: MemberOpenFailed) -> None:
        if message.generation != self._generation:
            return
        if self.file is None:
            self.query_one("#member-name", Static).update(f"Could not open this member: {message.problem.message}")
            self.query_one("#member-contact", Static).update(message.problem.hint or "")
        self.care.show_problem("open the member", message.problem)

    def show_file(self, file: MemberFile) -> None:
        """Fill the header and the tables from a freshly read file."""
        self.file = file
        member = file.member
        self.query_one("#member-name", Static).update(self._name_line(file))
        self.query_one("#member-contact", Static).update(
            f"Phone {show_phone(member.phone) or '—'}   Email {member.email or '—'}")
        self.query_one("#member-address", Static).update(self._address(member))
        self.render_phi()

        self._calls = {str(call.id): call for call in file.calls}
        self._fill("calls", ((key, (
            show_time(call.started_at or call.scheduled_at), words(call.call_type), words(call.call_status),
            f"{call.duration_seconds // 60} min" if call.duration_seconds is not None else "",
            _short(call.outcome, 18),
            show_date(call.follow_up_date) if call.follow_up_required else "")) for key, call in self._calls.items()))
        self._fill("flags", self._flag_rows(file))
        self._enrollments = {str(view.enrollment.id): view for view in file.enrollments}
        self._fill("enrollments", ((key, (
            view.plan_code,
            enrollment_state(view.enrollment.status, view.enrollment.termination_date),
            "primary" if view.enrollment.is_primary else "",
            show_date(view.enrollment.enrollment_date),
            show_date(view.enrollment.termination_date) if view.enrollment.termination_date else "",
            f"{view.enrollment.coverage_percentage:.0f}%" if view.enrollment.coverage_percentage is not None
            else "", _short(view.plan_name, 40))) for key, view in self._enrollments.items()))
        self._fill("notes", ((str(entry.id), (show_time(entry.created_at), self._note_text(entry.metadata_key,
                                                                                            entry.metadata_value)))
                             for entry in reversed(file.notes)))
        if file.access is not None:
            self._fill("access", ((str(access.entry.id), (
                show_time(access.entry.created_at), _short(access.who, 20), words(access.entry.action),
                self._access_details(access.entry.action, access.entry.new_values))) for access in file.access))
        self.refresh_bindings()

    def _fill(self, pane_id: str, rows: Iterable[tuple[str, tuple[str, ...]]]) -> None:
        """Replace a table's rows, keeping the cursor on the same record when it is still there."""
        tables = self.query(f"#{pane_id}-table")
        if not tables:
            return
        table = tables.first(DataTable)
        selected = self._selected_key(table)
        table.clear()
        for key, cells in rows:
            # Text(): a DataTable parses str cells as markup, and notes, outcomes and descriptions are typed by
            # people (a note "[/b]" would crash the screen for everyone who opens this member).
            table.add_row(*(Text(cell, no_wrap=True, end="") if isinstance(cell, str) else cell for cell in cells),
                          key=key)
        if selected is not None and selected in table.rows:
            table.move_cursor(row=table.get_row_index(selected))
        show_empty(table, self.query_one(f"#{pane_id}-empty", Static), EMPTY[pane_id])
        tabbed = self.query_one("#member-tabs", TabbedContent)
        count = str(table.row_count)
        if pane_id == "flags" and self.file is not None and self.file.resolutions:
            # Open ones are the work; resolved ones are still there, listed after them.
            count = f"{len(self.file.open_flags())} open, {len(self.file.resolved_flags())} resolved"
        tabbed.get_tab(pane_id).label = f"{TABS[pane_id]} ({count})"

    def _name_line(self, file: MemberFile) -> str:
        """Name, status, member number and primary plan: the header's first line."""
        member = file.member
        parts = [member_name(member.first_name, member.last_name),
                 words(member.status) + (" (deleted)" if member.deleted_at else "")]
        if file.member_number:
            parts.append(f"No. {file.member_number}")
        primary = file.primary_plan
        parts.append(f"Primary plan {primary.plan_code}" if primary is not None else "No primary plan")
        return "  ·  ".join(parts)

    def _flag_rows(self, file: MemberFile) -> Iterable[tuple[str, tuple[Any, ...]]]:
        """Open flags first, newest first; then the resolved ones, dimmed."""
        def newest(flags: list[Any]) -> list[Any]:
            return sorted(flags, key=lambda flag: flag.created_at or datetime.min, reverse=True)

        for flag in newest(file.open_flags()):
            yield str(flag.id), (show_time(flag.created_at), "open", words(flag.severity), words(flag.risk_type),
                                 _short(flag.description, 60))
        for flag in newest(file.resolved_flags()):
            yield str(flag.id), tuple(Text(cell, style="dim") for cell in (
                show_time(flag.created_at), "resolved", words(flag.severity), words(flag.risk_type),
                _short(flag.description, 60)))

    @staticmethod
    def _selected_key(table: DataTable[Any]) -> str | None:
        if table.row_count == 0:
            return None
        row = min(max(table.cursor_row, 0), table.row_count - 1)
        return table.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value

    @staticmethod
    def _address(member: Member) -> str:
        street = ", ".join(part for part in (member.address_line1, member.address_line2) if part)
        place = " ".join(part for part in (member.city and f"{member.city},", member.state, member.zip_code) if part)
        return ", ".join(part for part in (street, place) if part) or "No address on file"

    @staticmethod
    def _note_text(key: str, value: Any) -> str:
        if isinstance(value, dict) and "text" in value:
            text = str(value["text"])
        else:
            text = str(value)
        if not key.startswith(f"{NOTE_PREFIX}:"):
            text = f"{key}: {text}"  # a system fact kept in metadata, not a person's note
        return _short(text, 200)

    @staticmethod
    def _access_details(action: str, values: Any) -> str:
        """What an audit row says, by field name only (audit rows never hold PHI, but keep it terse)."""
        if not isinstance(values, dict):
            return ""
        if action == "read":
            fields = values.get("fields") or []
            text = f"{values.get('purpose', 'read')} {', '.join(map(str, fields))}".strip()
            if values.get("reason"):
                text += f" — {values['reason']}"
            return _short(text, 60)
        if action == "deny":
            return _short(str(values.get("operation", "")), 60)
        return _short("fields: " + ", ".join(sorted(map(str, values))), 60)

    # -- PHI ---------------------------------------------------------------------------------

    def render_phi(self) -> None:
        """The SSN/DOB line: masked, or the revealed values with the time left before they hide again."""
        found = self.query("#member-phi")
        if not found:
            return  # the screen is being torn down (the app quit while values were shown): nothing to draw on
        phi = found.first(Static)
        file = self.file
        if file is None:
            phi.update("")
            phi.remove_class("-revealed")
            return
        member, revealed = file.member, self.revealed
        ssn = MASKED_SSN if member.has_ssn else "not on file"
        dob = MASKED_DOB if member.has_dob else "not on file"
        if revealed is not None:
            if revealed.ssn is not None:
                ssn = revealed.ssn.formatted()
            if revealed.dob is not None:
                born = revealed.dob.reveal()
                dob = f"{show_date(born)} (age {age_on(born, date.today())})"
            phi.update(f"SSN {ssn}   DOB {dob}   · hidden again in {self.reveal_left} s")
        else:
            emergency = ""
            if self.emergency is not None and self._under_emergency():
                emergency = f"   · emergency access until {show_time_zoned(self.emergency.expires_at)} (audited)"
            phi.update(f"SSN {ssn}   DOB {dob}{emergency}")
        phi.set_class(revealed is not None, "-revealed")

    def action_reveal(self) -> None:
        if self.file is None:
            return
        if self._may_break_glass() and not self._under_emergency():
            self.notify("Your role cannot reveal SSN or date of birth. In an emergency, press b to break the glass: "
                        "access is time-boxed, audited and reviewed.", title="Reveal not available",
                        severity="warning")
            return
        if not self.desk.can(Permission.PHI_REVEAL) and not self._under_emergency():
            role = self.desk.role or "your role"
            self.notify(f"Sorry: the {role} role cannot reveal SSN or date of birth. If you need them for this "
                        "member, please ask a specialist or a supervisor.", title="Reveal not available",
                        severity="warning")
            return
        member = self.file.member
        if not (member.has_ssn or member.has_dob):
            self.notify("No SSN or date of birth is on file for this member.", title="Nothing to reveal")
            return
        self.app.push_screen(RevealDialog(self.member_id, self._member_label(), has_ssn=member.has_ssn,
                                          has_dob=member.has_dob), self._show_revealed)

    # -- break the glass -------------------------------------------------------------------------

    def _may_break_glass(self) -> bool:
        """A user who cannot reveal, but may ask for emergency access."""
        desk = self.care.desk
        return desk is not None and may_break_glass(desk)

    def _under_emergency(self) -> bool:
        """A live grant as last read (display only: the repository checks it on the database clock)."""
        grant = self.emergency
        return grant is not None and grant.expires_at > datetime.now(timezone.utc).replace(tzinfo=None)

    def action_break_glass(self) -> None:
        if self.file is None or not self._may_break_glass():
            return
        if self._under_emergency():
            self.notify("You have emergency access to this member already: press r to reveal.")
            return
        self.app.push_screen(BreakGlassDialog(self.member_id, self._member_label(),
                                              minutes=self.care.settings.emergency_minutes), self._after_break_glass)

    def _after_break_glass(self, grant: EmergencyGrant | None) -> None:
        if grant is None or grant.member_id != self.member_id:
            return
        self.emergency = grant
        self.render_phi()
        self.refresh_bindings()
        self.notify(f"Emergency access until {show_time_zoned(grant.expires_at)}: press r to reveal. Everything you "
                    "do on this member is marked in the audit log and reviewed.", title="Glass broken",
                    severity="warning", timeout=10)

    def _show_revealed(self, revealed: RevealedPhi | None) -> None:
        if revealed is None or self.care.locked or self.file is None or revealed.member_id != self.member_id:
            return
        self.remask()
        self.revealed = revealed
        self.reveal_left = max(1, int(self.care.settings.reveal_seconds))
        self._reveal_timer = self.set_interval(1.0, self.tick_reveal)
        self.render_phi()

    def tick_reveal(self) -> None:
        """One second of the reveal countdown (the interval timer's callback)."""
        if self.revealed is None:
            return
        self.reveal_left -= 1
        if self.reveal_left <= 0:
            self.remask()
        else:
            self.render_phi()

    def remask(self) -> None:
        """Hide revealed SSN/DOB again and forget them."""
        if self._reveal_timer is not None:
            self._reveal_timer.stop()
            self._reveal_timer = None
        was_revealed = self.revealed is not None
        self.revealed = None
        self.reveal_left = 0
        if was_revealed and self.is_mounted:
            self.render_phi()

    def on_screen_suspend(self, event: events.ScreenSuspend) -> None:
        # Anything covering this screen (a form, help, the lock) hides the values first.
        self.remask()

    def on_unmount(self) -> None:
        self.remask()

    # -- lock -------------------------------------------------------------------------------------

    def clear_phi(self) -> None:
        self._generation += 1
        self._visit = None  # after a lock, showing the file again is a new access (audited)
        self.remask()
        self.file = None
        self.emergency = None
        self._calls, self._enrollments = {}, {}
        for static in self.query("#member-header Static").results(Static):
            static.update("")
        self.query_one("#member-phi", Static).remove_class("-revealed")
        tabbed = self.query_one("#member-tabs", TabbedContent)
        for table in self.query(DataTable).results(DataTable):
            table.clear()
            pane_id = (table.id or "").removesuffix("-table")
            if pane_id in TABS:
                tabbed.get_tab(pane_id).label = TABS[pane_id]
        self.refresh_bindings()

    def restore_after_unlock(self) -> None:
        self.query_one("#member-name", Static).update("Opening the member's file…")
        self.load()  # also catches up on whatever other sessions changed while locked

    # -- actions --------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "show_tab" and parameters == ("access",):
            return bool(self.query("#access"))
        if action == "break_glass":
            # Only for those who cannot reveal, and only until a grant is live (then r reveals; r before
            # that says to break the glass first).
            if not self._may_break_glass() or self._under_emergency():
                return False
            return None if self.file is None else True
        permission = ACTION_PERMISSIONS.get(action)
        if permission is None:
            return True
        desk = self.care.desk
        if desk is None or not desk.can(permission):
            return False  # hidden: this role cannot do it at all
        return None if self.file is None else True  # shown but dimmed until the file is open

    def _allowed(self, action: str) -> bool:
        """Refuse politely when called without the permission (e.g. from the palette or a test)."""
        permission = ACTION_PERMISSIONS[action]
        if self.file is None:
            return False
        if not self.desk.can(permission):
            role = self.desk.role or "your role"
            self.notify(f"The {role} role cannot do this (it needs '{permission}').", title="Not available",
                        severity="warning")
            return False
        return True

    def _member_label(self) -> str:
        if self.file is None:
            return ""
        return member_name(self.file.member.first_name, self.file.member.last_name)

    def _after_form(self, done: str) -> Callable[[Any], None]:
        def after(result: Any) -> None:
            if result is None:
                return
            self.notify(done)
            self.load(own_save=True)
        return after

    def _selected(self, pane_id: str, records: dict[str, Any], what: str) -> Any:
        """The record under the cursor on ``pane_id``, switching to that tab first if it is not shown."""
        tabbed = self.query_one("#member-tabs", TabbedContent)
        if not records:
            self.notify(f"This member has no {what}s.", severity="warning")
            return None
        if tabbed.active != pane_id:
            tabbed.active = pane_id
            self.query_one(f"#{pane_id}-table", DataTable).focus()
            self.notify(f"Choose the {what} here, then try again.")
            return None
        key = self._selected_key(self.query_one(f"#{pane_id}-table", DataTable))
        return records.get(key) if key is not None else None

    def action_log_call(self) -> None:
        if self._allowed("log_call"):
            self.app.push_screen(CallFormScreen(self.member_id, self._member_label()), self._after_form("Call logged."))

    def action_schedule_call(self) -> None:
        if self._allowed("schedule_call"):
            self.app.push_screen(ScheduleCallForm(self.member_id, self._member_label()),
                                 self._after_form("Call scheduled."))

    @on(DataTable.RowSelected, "#calls-table")
    def open_call(self, event: DataTable.RowSelected) -> None:
        """Enter on a call opens it (its steps, notes and flags)."""
        call = self._calls.get(event.row_key.value or "")
        if call is not None:
            self.app.push_screen(CallScreen(call.id))

    def _specialist_label(self, call: Call) -> str:
        if call.specialist_id is None:
            return "none recorded"
        if call.specialist_id == self._my_specialist_id:
            return "you"
        return f"another specialist ({str(call.specialist_id)[:8]})"

    def flaggable_calls(self) -> list[Call]:
        """The member's calls a flag can be raised from (completed or unanswered), newest first."""
        held = [call for call in self._calls.values() if call.call_status in FLAGGABLE_STATUSES]
        return sorted(held, key=lambda call: call.started_at or call.scheduled_at or datetime.min, reverse=True)

    def action_raise_flag(self) -> None:
        if not self._allowed("raise_flag"):
            return
        calls = self.flaggable_calls()
        if not calls:
            self.notify("A flag is raised from a completed or unanswered call, and this member has none yet. "
                        "Log the call first (c).", title="No call to raise a flag from", severity="warning")
            return
        chosen = next((call for call in calls if call.call_status == "completed"), calls[0])  # the latest held
        self.app.push_screen(FlagFormScreen(chosen, member_label=self._member_label(),
                                            specialist_label=self._specialist_label(chosen), calls=calls,
                                            specialist_of=self._specialist_label),
                             self._after_form("Risk flag raised."))

    @on(DataTable.RowSelected, "#flags-table")
    def open_flag(self, event: DataTable.RowSelected) -> None:
        """Enter on a flag opens it in full (resolve or re-open it there)."""
        key = event.row_key.value
        if key is None or self.file is None:
            return
        self.app.push_screen(FlagScreen(uuid.UUID(key)), self._after_flag)

    def _after_flag(self, changed: Any) -> None:
        if changed:
            self.load()

    def action_edit_member(self) -> None:
        if self._allowed("edit_member") and self.file is not None:
            self.app.push_screen(MemberEditScreen(self.file.member), self._after_form("Member saved."))

    def action_enroll(self) -> None:
        if self._allowed("enroll"):
            self._load_plans()

    @work(thread=True, exclusive=True, group="member-plans")
    def _load_plans(self) -> None:
        try:
            plans = self.desk.plans()
        except Exception as exc:
            self.fail("list the plans", exc)
            return
        self.post_message(PlansLoaded(plans))

    def on_plans_loaded(self, message: PlansLoaded) -> None:
        if self.file is None or not self.is_active:
            return  # locked or covered meanwhile: the user can ask again
        self.app.push_screen(EnrollFormScreen(self.member_id, message.plans, self._member_label()),
                             self._after_form("Enrolled."))

    def action_terminate(self) -> None:
        if not self._allowed("terminate"):
            return
        view = self._selected("enrollments", self._enrollments, "enrollment")
        if view is None:
            return
        if view.enrollment.status == "terminated":
            self.notify("This enrollment has already ended.", severity="warning")
            return
        self.app.push_screen(TerminateDialog(view), self._after_form("Enrollment terminated."))

    def action_set_primary(self) -> None:
        if not self._allowed("set_primary"):
            return
        view = self._selected("enrollments", self._enrollments, "enrollment")
        if view is None:
            return
        if view.enrollment.is_primary:
            self.notify(f"{view.plan_code} is already the primary plan.")
            return
        if view.enrollment.status != "active":
            self.notify("Only an active enrollment can be the primary plan.", severity="warning")
            return
        current = self.file.primary_plan if self.file is not None else None
        instead = f" instead of {current.plan_code}" if current is not None else ""

        def confirmed(yes: bool | None) -> None:
            if yes and self.file is not None:
                self._set_primary(view)

        self.app.push_screen(ConfirmDialog(f"Make {view.plan_code} the primary plan{instead}?",
                                           yes="Make primary"), confirmed)

    @work(thread=True, exclusive=True, group="member-write", description="set the primary plan")
    def _set_primary(self, view: EnrollmentView) -> None:
        try:
            self.desk.set_primary(view.enrollment.id, view.enrollment.updated_at)
        except Exception as exc:
            self.fail("make the plan primary", exc)
            return
        self.post_message(MemberChanged(f"{view.plan_code} is now the primary plan."))

    def on_member_changed(self, message: MemberChanged) -> None:
        self.notify(message.note)
        self.load(own_save=True)

    def action_add_note(self) -> None:
        if self._allowed("add_note"):
            self.app.push_screen(NoteDialog(self.member_id, self._member_label()), self._after_form("Note saved."))

    def action_refresh(self) -> None:
        self.load()

    def action_show_tab(self, pane_id: str) -> None:
        if self.query(f"#{pane_id}"):
            self.query_one("#member-tabs", TabbedContent).active = pane_id
            # At once, not through Widget.focus (a callback queued after keys already waiting): Enter typed
            # right after the tab's key must reach this tab's table.
            self.set_focus(self.query_one(f"#{pane_id}-table", DataTable))

    def action_back(self) -> None:
        self.remask()
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()

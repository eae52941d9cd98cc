"""Forms for the steps of a call's life: complete, reschedule, cancel, no answer, schedule, edit notes.

Each is a :class:`~carecli.screens.forms.FormModal`: it saves through one
:class:`~carecli.services.desk.Desk` step in a thread worker, with the
call's ``updated_at`` as read, so a call someone changed meanwhile is
refused as a conflict naming who (and what was typed stays). The data
layer's rules (a completed call cannot end in the future, a call is
scheduled for a time still to come, ...) come back as one
:class:`~carecli.errors.ValidationError` listing every problem; each is
shown next to its field. Times are typed as ``YYYY-MM-DD HH:MM`` in the user's
time zone (``[tui] timezone``; the labels name it) and stored in UTC.
A step that can schedule the next attempt in the same transaction has an
optional "next attempt" time; its rules are shown next to that field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import UUID

from textual import on
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widget import Widget
from textual.widgets import Input, Select, Static, TextArea

from carecli.data.models.enums import CALL_TYPES
from carecli.data.validation import SAY_WHY
from carecli.screens.base import Problem
from carecli.screens.formatting import in_zone, now_input, show_time_zoned, time_input, words
from carecli.screens.forms import FormModal, duration_text, parse_date, parse_datetime
from carecli.screens.widgets import CareCheckbox
from carecli.services.desk import NextAttempt

if TYPE_CHECKING:
    from carecli.data.records import Call

TIME_PLACEHOLDER = "YYYY-MM-DD HH:MM"


def now_text() -> str:
    """Now, in the user's zone, as the forms type times."""
    return now_input()


def time_text(value: datetime | None) -> str:
    """A stored time as the forms type it (in the user's zone)."""
    return time_input(value)


def read_time(form: FormModal, name: str, values: dict[str, Any], errors: dict[str, str], *,
              required: bool = False) -> None:
    """Parse the time typed in field ``name`` into ``values`` (or say what is wrong in ``errors``)."""
    try:
        values[name] = parse_datetime(form.input_value(name))
    except ValueError as exc:
        errors[name] = str(exc)
        return
    if required and values[name] is None:
        errors[name] = "is required"


class CallStepForm(FormModal):
    """A step on one call: the call, read-only, above the fields; saved against the call as read."""

    RECORD_WORD = "call"
    #: the next attempt is a scheduled call: its rules name ``scheduled_at``
    FIELD_ALIASES: ClassVar[Mapping[str, str]] = {"scheduled_at": "next_attempt"}

    def __init__(self, call: Call, member_label: str = "") -> None:
        super().__init__()
        self.call = call
        self.member_label = member_label

    def edited_record(self) -> tuple[str, UUID] | None:
        return ("call_record", self.call.id)

    def heading(self) -> str:
        return f"{self.HEADING} with {self.member_label}" if self.member_label else self.HEADING

    def about(self) -> str:
        call = self.call
        kind = f"{words(call.call_type).capitalize()} call"
        if call.call_status == "scheduled":
            return f"{kind} scheduled for {show_time_zoned(call.scheduled_at)}."
        when = call.started_at or call.scheduled_at
        return f"{kind}, {words(call.call_status)}" + (f", {show_time_zoned(when)}." if when else ".")

    def compose_about(self) -> Iterable[Widget]:
        yield Static(self.about(), id="step-about", classes="read-only", markup=False)

    def refill_read_only(self) -> None:
        self.query_one("#step-about", Static).update(self.about())

    def next_attempt_field(self) -> Widget:
        return self.field("next_attempt", f"{in_zone('Schedule the next attempt')} (optional)",
                          Input(placeholder=TIME_PLACEHOLDER, compact=True))

    def read_next_attempt(self, values: dict[str, Any], errors: dict[str, str]) -> None:
        read_time(self, "next_attempt", values, errors)

    @staticmethod
    def next_attempt(values: Mapping[str, Any]) -> NextAttempt | None:
        when = values.get("next_attempt")
        return NextAttempt(when) if when is not None else None


class CompleteCallForm(CallStepForm):
    """The scheduled call took place: when (now by default), how it went, and what follows."""

    HEADING = "Complete the call"
    ACTION = "complete the call"
    SAVE_LABEL = "Complete"

    def compose_fields(self) -> Iterable[Widget]:
        yield from self.compose_about()
        now = now_text()
        yield Horizontal(
            self.field("started_at", in_zone("Started"), Input(now, placeholder=TIME_PLACEHOLDER, compact=True)),
            self.field("ended_at", in_zone("Ended"), Input(now, placeholder=TIME_PLACEHOLDER, compact=True)),
            classes="row")
        yield Static("", id="call-duration", classes="computed")
        yield Horizontal(
            self.field("outcome", "Outcome", Input(max_length=50, placeholder="e.g. reached", compact=True)),
            self.field("follow_up_required", "Follow-up", CareCheckbox("required", False, compact=True)),
            self.field("follow_up_date", "Follow-up date", Input(placeholder="YYYY-MM-DD", compact=True)),
            classes="row")
        yield self.field("call_notes", "Notes", TextArea(self.call.call_notes or "", compact=True))
        yield self.next_attempt_field()

    def on_mount(self) -> None:
        self.show_duration()
        self.query_one("#field-outcome").focus()

    @on(Input.Changed, "#field-started_at, #field-ended_at")
    def show_duration(self) -> None:
        """The duration, worked out live from start and end (the database computes the stored one)."""
        self.query_one("#call-duration", Static).update(
            duration_text(self.input_value("started_at"), self.input_value("ended_at")))

    def collect(self) -> tuple[dict[str, Any], dict[str, str]]:
        values: dict[str, Any] = {}
        errors: dict[str, str] = {}
        read_time(self, "started_at", values, errors, required=True)
        read_time(self, "ended_at", values, errors)
        try:
            values["follow_up_date"] = parse_date(self.input_value("follow_up_date"))
        except ValueError as exc:
            errors["follow_up_date"] = str(exc)
        values["outcome"] = self.input_value("outcome").strip() or None
        values["call_notes"] = self.query_one("#field-call_notes", TextArea).text.strip() or None
        # A follow-up date means a follow-up is due: the box is ticked as the date is typed (see below).
        values["follow_up_required"] = (self.query_one("#field-follow_up_required", CareCheckbox).value
                                        or values.get("follow_up_date") is not None)
        self.read_next_attempt(values, errors)
        return values, errors

    @on(Input.Changed, "#field-follow_up_date")
    def _tick_follow_up(self, event: Input.Changed) -> None:
        if event.value.strip():
            self.query_one("#field-follow_up_required", CareCheckbox).value = True

    def perform(self, values: dict[str, Any]) -> Any:
        return self.desk.complete_call(
            self.call.id, self.call.updated_at, started_at=values["started_at"], ended_at=values["ended_at"],
            outcome=values["outcome"], notes=values["call_notes"], follow_up_required=values["follow_up_required"],
            follow_up_date=values["follow_up_date"], next_attempt=self.next_attempt(values))


class RescheduleCallForm(CallStepForm):
    """Move the scheduled call to another time, saying why if you like (kept in its notes)."""

    HEADING = "Reschedule the call"
    ACTION = "reschedule the call"
    SAVE_LABEL = "Reschedule"
    FIELD_ALIASES: ClassVar[Mapping[str, str]] = {}

    def compose_fields(self) -> Iterable[Widget]:
        yield from self.compose_about()
        yield self.field("scheduled_at", in_zone("New time"),
                         Input(time_text(self.call.scheduled_at), placeholder=TIME_PLACEHOLDER, compact=True))
        yield self.field("reason", "Reason (optional, added to the call's notes)",
                         Input(placeholder="e.g. member asked for the afternoon", compact=True))

    def on_mount(self) -> None:
        self.query_one("#field-scheduled_at").focus()

    def collect(self) -> tuple[dict[str, Any], dict[str, str]]:
        values: dict[str, Any] = {}
        errors: dict[str, str] = {}
        read_time(self, "scheduled_at", values, errors, required=True)
        values["reason"] = self.input_value("reason").strip() or None
        return values, errors

    def perform(self, values: dict[str, Any]) -> Any:
        return self.desk.reschedule_call(self.call.id, self.call.updated_at, values["scheduled_at"],
                                         values["reason"])


class CancelCallForm(CallStepForm):
    """Cancel the scheduled call with a reason; optionally schedule the next attempt at once."""

    HEADING = "Cancel the call"
    ACTION = "cancel the call"
    SAVE_LABEL = "Cancel the call"
    CLOSE_LABEL = "Keep it"
    BINDINGS = [
        Binding("ctrl+s", "save", "Cancel the call", id="form.save", tooltip="Cancel the call (the reason is kept)"),
        Binding("escape", "cancel", "Keep it", id="form.cancel",
                tooltip="Close without cancelling the call (with typed changes, press it twice)"),
    ]

    def compose_fields(self) -> Iterable[Widget]:
        yield from self.compose_about()
        yield self.field("reason", "Reason (required, added to the call's notes)",
                         Input(placeholder="e.g. member is in hospital this week", compact=True))
        yield self.next_attempt_field()

    def on_mount(self) -> None:
        self.query_one("#field-reason").focus()

    def collect(self) -> tuple[dict[str, Any], dict[str, str]]:
        values: dict[str, Any] = {"reason": self.input_value("reason").strip()}
        errors: dict[str, str] = {}
        if not values["reason"]:
            errors["reason"] = SAY_WHY
        self.read_next_attempt(values, errors)
        return values, errors

    def perform(self, values: dict[str, Any]) -> Any:
        return self.desk.cancel_call(self.call.id, self.call.updated_at, values["reason"],
                                     next_attempt=self.next_attempt(values))


class NoAnswerForm(CallStepForm):
    """The member did not answer: when it was tried (now by default), a note, and the next attempt."""

    HEADING = "No answer"
    ACTION = "mark the call unanswered"
    SAVE_LABEL = "Save"
    FIELD_ALIASES: ClassVar[Mapping[str, str]] = {"scheduled_at": "next_attempt", "attempted_at": "started_at"}

    def compose_fields(self) -> Iterable[Widget]:
        yield from self.compose_about()
        yield self.field("started_at", in_zone("Attempted at"),
                         Input(now_text(), placeholder=TIME_PLACEHOLDER, compact=True))
        yield self.field("call_notes", "Note (optional, added to the call's notes)", TextArea(compact=True))
        yield self.next_attempt_field()

    def on_mount(self) -> None:
        self.query_one("#field-started_at").focus()

    def collect(self) -> tuple[dict[str, Any], dict[str, str]]:
        values: dict[str, Any] = {}
        errors: dict[str, str] = {}
        read_time(self, "started_at", values, errors, required=True)
        values["call_notes"] = self.query_one("#field-call_notes", TextArea).text.strip() or None
        self.read_next_attempt(values, errors)
        return values, errors

    def perform(self, values: dict[str, Any]) -> Any:
        return self.desk.mark_no_answer(self.call.id, self.call.updated_at, values["started_at"],
                                        notes=values["call_notes"], next_attempt=self.next_attempt(values))


class EditCallNotesForm(CallStepForm):
    """Change the notes of one of your own calls (the data layer refuses anyone else's)."""

    HEADING = "Edit the call's notes"
    ACTION = "save the notes"

    def heading(self) -> str:
        return f"Notes of the call with {self.member_label}" if self.member_label else self.HEADING
    DEFAULT_CSS = """
    EditCallNotesForm TextArea { height: 8; }
    """
    FIELD_ALIASES: ClassVar[Mapping[str, str]] = {}

    def compose_fields(self) -> Iterable[Widget]:
        yield from self.compose_about()
        yield self.field("call_notes", "Notes", TextArea(self.call.call_notes or "", compact=True))

    def on_mount(self) -> None:
        self.query_one("#field-call_notes").focus()

    def collect(self) -> tuple[dict[str, Any], dict[str, str]]:
        return {"call_notes": self.query_one("#field-call_notes", TextArea).text.strip() or None}, {}

    def perform(self, values: dict[str, Any]) -> Any:
        return self.desk.edit_call_notes(self.call.id, self.call.updated_at, values["call_notes"])


class ScheduleCallForm(FormModal):
    """Schedule a call with a member, under your own specialist record."""

    HEADING = "Schedule a call"
    ACTION = "schedule the call"
    SAVE_LABEL = "Schedule"

    def __init__(self, member_id: UUID, member_label: str = "") -> None:
        super().__init__()
        self.member_id = member_id
        self.member_label = member_label

    def heading(self) -> str:
        return f"Schedule a call with {self.member_label}" if self.member_label else self.HEADING

    def compose_fields(self) -> Iterable[Widget]:
        yield Horizontal(
            self.field("call_type", "Type", Select([(words(v), v) for v in CALL_TYPES], value="follow_up",
                                                   compact=True, allow_blank=False)),
            self.field("scheduled_at", in_zone("When"), Input(placeholder=TIME_PLACEHOLDER, compact=True)),
            classes="row")
        yield self.field("call_notes", "Notes (optional)", TextArea(compact=True))

    def on_mount(self) -> None:
        self.query_one("#field-scheduled_at").focus()

    def collect(self) -> tuple[dict[str, Any], dict[str, str]]:
        values, errors = self.collect_choices(("call_type",))
        read_time(self, "scheduled_at", values, errors, required=True)
        values["call_notes"] = self.query_one("#field-call_notes", TextArea).text.strip() or None
        return values, errors

    def perform(self, values: dict[str, Any]) -> Any:
        return self.desk.schedule_call(self.member_id, values["scheduled_at"], call_type=values["call_type"],
                                       notes=values["call_notes"])

    def explain(self, problem: Problem) -> Problem:
        if problem.field == "specialist_id":
            return Problem("you have no active specialist record to schedule this call under",
                           "ask an administrator to set you up as a specialist")
        return super().explain(problem)

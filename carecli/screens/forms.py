"""Forms and dialogs over a member: log or edit a call, raise a flag, enroll, terminate, add a note, reveal.

Every form here is a :class:`FormModal`: fields with an inline error line
under each (``.field-error``), a status line, Save (``ctrl+s``) and Cancel
(``escape``). Saving runs the desk call in a thread worker; while it runs,
Save is disabled and the status says so. A failed save (a rule broken, a
conflict, the database down) never clears what was typed: the error is shown
next to its field (or in the status line with what to do) and Save can be
pressed again. Text that does not parse (a date typed wrong) is reported
inline without a round trip; the repository's own rules come back as
:class:`~carecli.errors.ValidationError` and land next to the field they name
(every problem it lists at once, each next to its own field). An error line
goes away as soon as its field is edited, and Esc on a form with typed
changes asks for a second Esc before it throws them away.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import UUID

from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Button, Input, Select, Static, TextArea

from carecli.data.models.enums import CALL_STATUSES, CALL_TYPES, RISK_TYPES, SEVERITIES
from carecli.screens.base import CareModal, Problem, describe
from carecli.screens.formatting import (
    in_zone,
    parse_time,
    show_date,
    show_time,
    show_time_zoned,
    time_input,
    words,
)
from carecli.screens.live import DataChanged
from carecli.screens.widgets import CareCheckbox, CareFooter

if TYPE_CHECKING:
    from carecli.data.records import Call, Enrollment, Plan
    from carecli.services.desk import EnrollmentView

DATE_HINT = "use YYYY-MM-DD, e.g. 2025-03-01"
MIN_REVEAL_REASON = 4  # the repository's rule too; checked here to answer without a round trip
#: column names that the repositories' messages mention, as the forms call them
FIELD_WORDS = {
    "scheduled_at": "the scheduled time", "started_at": "the start time", "ended_at": "the end time",
    "follow_up_date": "the follow-up date", "enrollment_date": "the enrollment date",
    "termination_date": "the termination date",
}


#: a message starting with one of these is the end of a sentence whose subject is the field ("is required")
_PREDICATES = frozenset({"is", "are", "must", "should", "cannot", "can", "may", "has", "have", "needs", "does",
                         "was", "were", "will"})


def as_sentence(subject: str, message: str) -> str:
    """A whole sentence for a field's message: ``("Started", "is required")`` -> ``"Started is required."``.

    Messages that already are sentences (or instructions: "choose one") only get a capital and a full stop.
    """
    message = message.strip()
    if not message:
        return message
    if message.split()[0] in _PREDICATES:
        message = f"{subject} {message}"
    message = message[0].upper() + message[1:]
    return message if message[-1] in ".!?" else message + "."


def _label(value: str) -> str:
    """An enum value as people read it: ``no_answer`` -> ``no answer``."""
    return value.replace("_", " ")


def parse_datetime(text: str) -> datetime | None:
    """A time typed in the user's zone as the naive UTC ``datetime`` the database keeps; ``None`` when blank."""
    return parse_time(text)


def parse_date(text: str) -> date | None:
    """A typed ``YYYY-MM-DD`` date; ``None`` when blank."""
    text = text.strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(DATE_HINT) from None


def describe_duration(seconds: int) -> str:
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s"


def duration_text(started: str, ended: str) -> str:
    """"Duration: 12 min 00 s" for a typed start and end, or "" while either does not parse."""
    try:
        start, end = parse_datetime(started), parse_datetime(ended)
    except ValueError:
        return ""
    if start is None or end is None:
        return ""
    seconds = int((end - start).total_seconds())
    return f"Duration: {describe_duration(seconds)}" if seconds >= 0 else "Duration: ends before it starts"


def today_utc() -> date:
    return datetime.now(timezone.utc).date()


#: A coverage percentage as typed: 0 to 100 with up to two decimals, ASCII digits.
_PERCENT = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,2})?", re.ASCII)

class FormSaved(Message):
    """The form's desk call succeeded (posted from the save worker)."""

    def __init__(self, result: Any) -> None:
        super().__init__()
        self.result = result


class FormSaveFailed(Message):
    """The form's desk call failed; the form stays as typed."""

    def __init__(self, problem: Problem) -> None:
        super().__init__()
        self.problem = problem


class FormModal(CareModal):
    """Base of carecli's forms: fields with inline errors, a status line, Save and Cancel.

    Subclasses yield their fields from :meth:`compose_fields` (built with
    :meth:`field`), turn the widgets into values in :meth:`collect` and make
    the blocking desk call in :meth:`perform` (run in a thread worker).
    """

    DEFAULT_CSS = """
    FormModal { align: center middle; }
    FormModal #form-body { height: auto; }
    FormModal .form-title { text-style: bold; padding: 0 0 1 0; }
    FormModal .field { height: auto; width: 1fr; padding: 0 1 0 0; }
    FormModal .row { height: auto; }
    FormModal .field-label { color: $text-muted; }
    FormModal .read-only { padding: 0 0 1 0; }
    FormModal .computed { color: $text-muted; height: 1; }
    FormModal .form-status { height: auto; padding: 1 0 0 0; }
    FormModal .form-status.-error { color: $error; }
    FormModal TextArea { height: 3; }
    FormModal Checkbox { margin: 0; }
    FormModal .buttons { height: auto; align-horizontal: right; padding: 1 0 0 0; }
    FormModal .buttons Button { margin: 0 0 0 2; }
    """

    BINDINGS = [
        Binding("ctrl+s", "save", "Save", id="form.save", tooltip="Save (nothing typed is lost if it fails)"),
        Binding("escape", "cancel", "Cancel", id="form.cancel",
                tooltip="Close without saving (with typed changes, press it twice)"),
    ]

    #: the form's title
    HEADING: ClassVar[str] = ""
    #: what saving does, for messages: "Could not <ACTION>"
    ACTION: ClassVar[str] = "save"
    SAVE_LABEL: ClassVar[str] = "Save"
    #: the button that closes the form without saving
    CLOSE_LABEL: ClassVar[str] = "Cancel"
    #: press enter in a one-line input to save (for short dialogs)
    SUBMIT_ON_ENTER: ClassVar[bool] = False
    #: a save that finishes while the form is covered (locked) is handed over after the unlock;
    #: False drops it instead (a reveal must never land behind the lock screen)
    KEEP_RESULT_WHILE_COVERED: ClassVar[bool] = True
    #: a repository field name -> the form's field that shows its errors
    FIELD_ALIASES: ClassVar[Mapping[str, str]] = {}

    def __init__(self) -> None:
        super().__init__(classes="dialog-screen")
        self.saving = False
        self._pending_result: Any = None
        self._has_pending = False
        self._conflict_said = False
        #: the fields' values as the form opened (to tell whether anything was typed)
        self._initial: dict[str, Any] | None = None
        #: Esc was pressed once over typed changes: the next Esc discards them
        self._discard_armed = False

    # -- building ---------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Vertical(classes="form", id="form"):
            yield Static(self.heading(), classes="form-title", id="form-title", markup=False)
            with VerticalScroll(id="form-body"):
                yield from self.compose_fields()
            yield Static("", id="form-status", classes="form-status", markup=False)
            with Horizontal(classes="buttons", id="form-buttons"):
                yield Button(self.SAVE_LABEL, variant="primary", id="form-save", compact=True)
                yield Button(self.CLOSE_LABEL, id="form-cancel", compact=True)
        yield CareFooter()  # the form's own keys (ctrl+s, esc), not those of the screen under it

    def heading(self) -> str:
        return self.HEADING

    def on_mount(self) -> None:
        # Subclasses' own on_mount runs first (Textual calls each class's handler along the MRO).
        self._initial = self.field_values()

    def compose_fields(self) -> Iterable[Widget]:
        """The form's fields (override)."""
        return ()

    @staticmethod
    def field(name: str, label: str, widget: Widget) -> Vertical:
        """A labelled field with its error line; the widget gets id ``field-<name>``."""
        widget.id = f"field-{name}"
        error = Static("", id=f"error-{name}", classes="field-error", markup=False)
        error.display = False
        return Vertical(Static(label, classes="field-label"), widget, error, classes="field", id=f"cell-{name}")

    # -- values and errors --------------------------------------------------------

    def collect_choices(self, names: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, str]]:
        """The values of the named Select fields, with "Choose the <label>." for those left empty."""
        values: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for name in names:
            value = self.query_one(f"#field-{name}", Select).value
            if value is Select.NULL:
                errors[name] = f"Choose the {self.field_label(name).lower()}."
            values[name] = value
        return values, errors

    def collect(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The values to save and the fields that do not parse (field -> message). Override."""
        return {}, {}

    def perform(self, values: dict[str, Any]) -> Any:
        """The blocking desk call (runs in a thread worker). Override."""
        raise NotImplementedError

    def field_values(self) -> dict[str, Any]:
        """Every field's current value (field name -> value), to compare with the values the form opened with."""
        values: dict[str, Any] = {}
        for widget in self.query("*"):
            name = (widget.id or "").removeprefix("field-")
            if not widget.id or name == widget.id:
                continue
            if isinstance(widget, TextArea):
                values[name] = widget.text
            else:
                values[name] = getattr(widget, "value", None)
        return values

    def has_changes(self) -> bool:
        """Whether anything was typed or chosen since the form opened."""
        return self._initial is not None and self.field_values() != self._initial

    @on(Input.Changed)
    @on(TextArea.Changed)
    @on(Select.Changed)
    @on(CareCheckbox.Changed)
    def _field_edited(self, event: Message) -> None:
        """Editing a field takes its error line away (and a pending "press Esc again" with it)."""
        control = getattr(event, "control", None)
        name = (getattr(control, "id", None) or "").removeprefix("field-")
        if not name or control is None or name == control.id:
            return
        error = self.error_widget(name)
        if error is not None and error.display:
            error.update("")
            error.display = False
            if not self.field_errors() and not self.saving:
                self.set_status("")  # "please correct the marked fields" is done with
        if self._discard_armed:
            self._discard_armed = False
            self.set_status("")

    def input_value(self, name: str) -> str:
        return self.query_one(f"#field-{name}", Input).value

    def error_widget(self, name: str) -> Static | None:
        matches = self.query(f"#error-{name}")
        return matches.first(Static) if matches else None

    def field_label(self, name: str) -> str:
        """The field's label as a sentence's subject: "Started (UTC)" -> "Started" (its name without one)."""
        labels = self.query(f"#cell-{name} > .field-label")
        text = str(labels.first(Static).content) if labels else ""
        text = re.sub(r"\s*\([^)]*\)", "", text).strip()
        return text or _label(name).capitalize()

    def show_field_error(self, name: str, message: str) -> bool:
        """Show ``message`` under field ``name`` as a whole sentence; False when the form has no such field."""
        name = self.FIELD_ALIASES.get(name, name)
        error = self.error_widget(name)
        if error is None:
            return False
        error.update(as_sentence(self.field_label(name), message))
        error.display = True
        return True

    def clear_errors(self) -> None:
        for error in self.query(".field-error").results(Static):
            error.update("")
            error.display = False
        self.set_status("")

    def set_status(self, text: str, *, error: bool = False) -> None:
        status = self.query_one("#form-status", Static)
        status.update(text)
        status.set_class(error, "-error")
        self.call_after_refresh(self._fit)  # a longer status leaves less room for the fields

    def on_resize(self, event: events.Resize) -> None:
        self._fit()

    def _fit(self) -> None:
        """Let the fields scroll so the status line and the buttons always stay on screen (80x24 too).

        CSS cannot say "the rest of an auto-height box", so the room left for
        the body is worked out from the other parts' heights.
        """
        if not self.is_mounted:
            return
        form = self.query_one("#form")
        chrome = form.styles.gutter.height + sum(
            widget.outer_size.height for widget in (self.query_one("#form-title"), self.query_one("#form-status"),
                                                    self.query_one("#form-buttons")))
        limit = int(self.size.height * 0.95)
        self.query_one("#form-body").styles.max_height = max(3, limit - chrome)

    def field_errors(self) -> dict[str, str]:
        """The field errors shown now (field -> message), for tests and help."""
        shown: dict[str, str] = {}
        for error in self.query(".field-error").results(Static):
            if error.display and error.id:
                shown[error.id.removeprefix("error-")] = str(error.content)
        return shown

    # -- saving ----------------------------------------------------------------------

    def action_save(self) -> None:
        if self.saving:
            return
        self.clear_errors()
        values, errors = self.collect()
        if errors:
            for name, message in errors.items():
                self.show_field_error(name, message)
            self.set_status("Please correct the marked fields.", error=True)
            self._focus_first_error()
            return
        self._set_saving(True)
        self._save_in_background(values)

    def action_cancel(self) -> None:
        # A save in flight still finishes in the database; closing only stops waiting for it.
        if not self.saving and not self._discard_armed and self.has_changes():
            self._discard_armed = True
            self.set_status("You have typed changes: press Esc again to throw them away, or ctrl+s to save them.",
                            error=True)
            return
        self.dismiss(None)

    @on(Button.Pressed, "#form-save")
    def _save_pressed(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#form-cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()

    @on(Input.Submitted)
    def _input_submitted(self, event: Input.Submitted) -> None:
        if self.SUBMIT_ON_ENTER:
            event.stop()
            self.action_save()

    def _set_saving(self, saving: bool) -> None:
        self.saving = saving
        if saving:
            self._conflict_said = False
        button = self.query_one("#form-save", Button)
        button.disabled = saving
        button.label = "Saving…" if saving else self.SAVE_LABEL
        if saving:
            self.set_status("Saving…")

    # A fixed description: by default a worker is described with its arguments' reprs (the typed values).
    @work(thread=True, exclusive=True, group="form-save", description="save a form")
    def _save_in_background(self, values: dict[str, Any]) -> None:
        try:
            result = self.perform(values)
        except Exception as exc:  # every failure is shown on the form, never raised
            self.post_message(FormSaveFailed(describe(exc)))
        else:
            self.post_message(FormSaved(result))

    def on_form_saved(self, message: FormSaved) -> None:
        message.stop()
        self._set_saving(False)
        if not self.is_active or self.care.locked:
            # Locked or covered meanwhile: dismissing now would pop whatever is on top (see on_screen_resume).
            if self.KEEP_RESULT_WHILE_COVERED:
                self._pending_result, self._has_pending = message.result, True
                self.set_status("Saved.")
            else:
                self.set_status(f"Not shown: the screen was covered meanwhile. Press {self.SAVE_LABEL} again.")
            return
        self.dismiss(message.result)

    def on_form_save_failed(self, message: FormSaveFailed) -> None:
        message.stop()
        self._set_saving(False)
        # The refusal names who changed the record and when; the change notice of that same change, which may
        # arrive a moment later, must not replace it with a vaguer warning (see on_data_changed).
        self._conflict_said = message.problem.conflict
        if message.problem.auth:
            self.care.show_problem(self.ACTION, self.explain(message.problem))
            return
        # Every problem a rule check found, each next to its field; the rest in the status line.
        parts = [self.explain(dataclasses.replace(message.problem, field=name, rule=rule, message=text, problems=()))
                 for name, rule, text in message.problem.problems] or [self.explain(message.problem)]
        by_field: dict[str, list[Problem]] = {}
        for part in parts:
            name = self.FIELD_ALIASES.get(part.field or "", part.field or "")
            if part.field is not None and self.error_widget(name) is not None:
                by_field.setdefault(name, []).append(part)
        shown: list[Problem] = []
        for group in by_field.values():  # two rules broken by one field: both sentences under it
            name = self.FIELD_ALIASES.get(group[0].field or "", group[0].field or "")
            self.show_field_error(name, " ".join(as_sentence(self.field_label(name), part.message) for part in group))
            shown.extend(group)
        rest = [part for part in parts if not any(part is done for done in shown)]
        if shown and not rest:
            plural = "s" if len({part.field for part in shown}) > 1 else ""
            self.set_status(f"Please correct the marked field{plural}, then try again.", error=True)
            self._focus_field(self.FIELD_ALIASES.get(shown[0].field or "", shown[0].field or ""))
            return
        texts = [f"{words(part.field)}: {part.message}" if part.field else part.message for part in rest]
        text = "; ".join(text.rstrip(".") for text in texts)
        hint = rest[0].hint or "correct it and save again"
        also = " (and see the marked fields)" if shown else ""
        self.set_status(f"Not saved: {text}{also}.\n{hint[:1].upper()}{hint[1:]}; what you typed is kept.",
                        error=True)

    def explain(self, problem: Problem) -> Problem:
        """Reword a failure for this form (override); the default names columns as the form does."""
        message = problem.message
        for column, said in FIELD_WORDS.items():
            message = re.sub(rf"\b{column}\b", said, message)
        return dataclasses.replace(problem, message=message)

    def _focus_first_error(self) -> None:
        """The cursor to the first marked field as the form shows them (top to bottom)."""
        shown = list(self.field_errors())
        if shown:
            self._focus_field(shown[0])

    def _focus_field(self, name: str) -> None:
        matches = self.query(f"#field-{name}")
        if matches:
            matches.first().focus()

    # -- lock --------------------------------------------------------------------------

    def clear_phi(self) -> None:
        # Drafts survive a lock (the lock screen covers them); the member's name does not.
        self.query_one("#form-title", Static).update(self.HEADING)
        for read_only in self.query(".read-only").results(Static):
            read_only.update("")

    def restore_after_unlock(self) -> None:
        self.query_one("#form-title", Static).update(self.heading())
        self.refill_read_only()

    def on_screen_resume(self, event: events.ScreenResume) -> None:
        # A save that finished while covered (lock, help, palette) is handed over once the form is back on top.
        if self._has_pending and not self.care.locked:
            self._has_pending = False
            self.dismiss(self._pending_result)

    def refill_read_only(self) -> None:
        """Put the read-only lines back after an unlock (override when the form has any)."""

    # -- live updates ------------------------------------------------------------------------

    #: what the edited record is called in the warning below
    RECORD_WORD: ClassVar[str] = "record"

    def edited_record(self) -> tuple[str, UUID] | None:
        """The (entity type, id) of the record this form edits, if it edits one (override)."""
        return None

    def on_data_changed(self, message: DataChanged) -> None:
        """Say so when another session changes the record being edited (what was typed stays)."""
        record = self.edited_record()
        if record is None or self.saving or self.care.locked or self._conflict_said:
            return
        if message.changes.record_changed(*record, ignore=self.desk.source):
            self.set_status(f"Another session has just changed this {self.RECORD_WORD}: saving now will be refused "
                            "as a conflict. Note what you typed, close this form (Esc; twice if you typed) and open "
                            f"the {self.RECORD_WORD} again to see the change.", error=True)


# -- calls -----------------------------------------------------------------------------------


class CallFormScreen(FormModal):
    """Log a call with a member (or edit one, given ``call``); times are typed in the user's zone."""

    HEADING = "Log a call"
    ACTION = "save the call"
    RECORD_WORD = "call"

    def __init__(self, member_id: UUID, member_label: str, call: Call | None = None) -> None:
        super().__init__()
        self.member_id = member_id
        self.member_label = member_label
        self.call = call

    def edited_record(self) -> tuple[str, UUID] | None:
        return ("call_record", self.call.id) if self.call is not None else None

    def heading(self) -> str:
        verb = "Edit a call with" if self.call is not None else "Log a call with"
        return f"{verb} {self.member_label}" if self.member_label else verb

    def compose_fields(self) -> Iterable[Widget]:
        call = self.call
        type_value = call.call_type if call is not None else "outreach"
        status_value = call.call_status if call is not None else "completed"

        def when(value: datetime | None) -> str:
            return time_input(value)

        yield Horizontal(
            self.field("call_type", "Type", Select([(words(v), v) for v in CALL_TYPES], value=type_value,
                                                   compact=True, allow_blank=False)),
            self.field("call_status", "Status", Select([(words(v), v) for v in CALL_STATUSES], value=status_value,
                                                       compact=True, allow_blank=False)),
            classes="row")
        placeholder = "YYYY-MM-DD HH:MM"
        yield Horizontal(
            self.field("scheduled_at", in_zone("Scheduled"),
                       Input(when(call.scheduled_at) if call else "", placeholder=placeholder, compact=True)),
            self.field("started_at", in_zone("Started"),
                       Input(when(call.started_at) if call else "", placeholder=placeholder, compact=True)),
            self.field("ended_at", in_zone("Ended"),
                       Input(when(call.ended_at) if call else "", placeholder=placeholder, compact=True)),
            classes="row")
        yield Static("", id="call-duration", classes="computed")
        yield self.field("call_notes", "Notes", TextArea((call.call_notes or "") if call else "", compact=True))
        yield Horizontal(
            self.field("outcome", "Outcome", Input((call.outcome or "") if call else "", max_length=50,
                                                   placeholder="e.g. reached, voicemail", compact=True)),
            self.field("follow_up_required", "Follow-up",
                       CareCheckbox("required", bool(call.follow_up_required) if call else False, compact=True)),
            self.field("follow_up_date", "Follow-up date",
                       Input(show_date(call.follow_up_date) if call and call.follow_up_date else "",
                             placeholder="YYYY-MM-DD", compact=True)),
            classes="row")

    def on_mount(self) -> None:
        self.show_duration()
        self.query_one("#field-call_type").focus()

    @on(Input.Changed, "#field-started_at, #field-ended_at")
    def show_duration(self) -> None:
        """The duration, worked out live from start and end (the database computes the stored one)."""
        self.query_one("#call-duration", Static).update(
            duration_text(self.input_value("started_at"), self.input_value("ended_at")))

    def collect(self) -> tuple[dict[str, Any], dict[str, str]]:
        values, errors = self.collect_choices(("call_type", "call_status"))
        for name in ("scheduled_at", "started_at", "ended_at"):
            try:
                values[name] = parse_datetime(self.input_value(name))
            except ValueError as exc:
                errors[name] = str(exc)
        try:
            values["follow_up_date"] = parse_date(self.input_value("follow_up_date"))
        except ValueError as exc:
            errors["follow_up_date"] = str(exc)
        notes = self.query_one("#field-call_notes", TextArea).text.strip()
        values["call_notes"] = notes or None
        values["outcome"] = self.input_value("outcome").strip() or None
        values["follow_up_required"] = self.query_one("#field-follow_up_required", CareCheckbox).value
        return values, errors

    def perform(self, values: dict[str, Any]) -> Any:
        if self.call is not None:
            return self.desk.update_call(self.call.id, self.call.updated_at, values)
        return self.desk.log_call({**values, "member_id": self.member_id})

    def explain(self, problem: Problem) -> Problem:
        if problem.field == "specialist_id":
            # The desk logs calls under the signed-in user's specialist record; say that plainly.
            return Problem("you have no active specialist record to log this call under",
                           "ask an administrator to set you up as a specialist")
        return super().explain(problem)


# -- risk flags ---------------------------------------------------------------------------------


class FlagFormScreen(FormModal):
    """Raise a risk flag found on a call; the member and specialist are the call's (read-only here).

    Given ``calls`` (the member's held calls, newest first), the form offers
    them in a "From the call" list, ``call`` chosen at first; ``specialist_of``
    names a call's specialist for the read-only lines.
    """

    HEADING = "Raise a risk flag"
    ACTION = "raise the flag"
    FIELD_ALIASES = {"call_record_id": "call"}

    def __init__(self, call: Call, *, member_label: str = "", specialist_label: str = "",
                 calls: Sequence[Call] = (), specialist_of: Callable[[Call], str] | None = None) -> None:
        super().__init__()
        self.call = call
        self.member_label = member_label
        self.specialist_label = specialist_label
        self.calls = {held.id: held for held in calls}
        self.specialist_of = specialist_of

    def _about(self) -> str:
        when = show_time_zoned(self.call.started_at or self.call.scheduled_at)
        member = self.member_label or "the call's member"
        specialist = self.specialist_label or "the call's specialist"
        return (f"Member: {member}\nSpecialist: {specialist}\n"
                f"Call: {words(self.call.call_type)}, {words(self.call.call_status)}, {when}")

    @staticmethod
    def call_choice(call: Call) -> str:
        """A call as the list offers it: when, type, status."""
        return (f"{show_time(call.started_at or call.scheduled_at)} · {words(call.call_type)} · "
                f"{words(call.call_status)}")

    def compose_fields(self) -> Iterable[Widget]:
        yield Static(self._about(), id="flag-about", classes="read-only", markup=False)
        yield Horizontal(
            self.field("risk_type", "Risk type", Select([(words(v), v) for v in RISK_TYPES], compact=True,
                                                        prompt="choose…")),
            self.field("severity", "Severity", Select([(words(v), v) for v in SEVERITIES], compact=True,
                                                      prompt="choose…")),
            classes="row")
        yield self.field("description", "What was found (required)", TextArea(compact=True))
        # The call list comes last (the read-only lines above name the chosen call): placed before the risk type,
        # text typed straight after tabbing from the severity into the description was sometimes lost in a real
        # terminal (tests/tui/test_e2e_tmux.py).
        if self.calls:
            yield self.field("call", "From the call", Select(
                [(self.call_choice(held), held.id) for held in self.calls.values()], value=self.call.id,
                allow_blank=False, compact=True))

    def on_mount(self) -> None:
        self.query_one("#field-risk_type").focus()

    @on(Select.Changed, "#field-call")
    def _call_chosen(self, event: Select.Changed) -> None:
        chosen = self.calls.get(event.value) if isinstance(event.value, uuid.UUID) else None
        if chosen is None or chosen is self.call:
            return
        self.call = chosen
        if self.specialist_of is not None:
            self.specialist_label = self.specialist_of(chosen)
        self.refill_read_only()

    def refill_read_only(self) -> None:
        self.query_one("#flag-about", Static).update(self._about())

    def collect(self) -> tuple[dict[str, Any], dict[str, str]]:
        values, errors = self.collect_choices(("risk_type", "severity"))
        values["call_id"] = self.call.id
        values["description"] = self.query_one("#field-description", TextArea).text.strip()
        if not values["description"]:
            errors["description"] = "say what was found"
        return values, errors

    def perform(self, values: dict[str, Any]) -> Any:
        return self.desk.raise_flag(values["call_id"], risk_type=values["risk_type"], severity=values["severity"],
                                    description=values["description"])


# -- enrollments ----------------------------------------------------------------------------------


def active_plans(plans: Iterable[Plan], on: date | None = None) -> list[Plan]:
    """Plans a member can be enrolled in today: live, active, not expired."""
    on = on or today_utc()
    return sorted((plan for plan in plans if plan.deleted_at is None and plan.is_active is not False
                   and (plan.expiration_date is None or plan.expiration_date >= on)),
                  key=lambda plan: plan.plan_code)


@dataclasses.dataclass(frozen=True)
class OverlapWarning:
    """Enrolling was held back: the member has active enrollments overlapping the new start date."""

    start: date
    enrollments: tuple[Enrollment, ...]


class EnrollFormScreen(FormModal):
    """Enroll a member in an active plan."""

    HEADING = "Enroll in a plan"
    ACTION = "enroll the member"
    FIELD_ALIASES = {"insurance_plan_id": "plan"}

    def __init__(self, member_id: UUID, plans: Iterable[Plan], member_label: str = "") -> None:
        super().__init__()
        self.member_id = member_id
        plans = list(plans)
        self.plans = active_plans(plans)
        self.plan_codes = {plan.id: plan.plan_code for plan in plans}
        self.member_label = member_label
        #: the start date the user was warned about (a save with the same date goes ahead)
        self._warned_for: date | None = None

    def heading(self) -> str:
        return f"Enroll {self.member_label} in a plan" if self.member_label else self.HEADING

    def compose_fields(self) -> Iterable[Widget]:
        options = [(f"{plan.plan_code} — {plan.plan_name}", plan.id) for plan in self.plans]
        yield self.field("plan", "Plan", Select(options, compact=True, prompt="choose a plan…"))
        yield Horizontal(
            self.field("enrollment_date", "Enrolled from",
                       Input(show_date(today_utc()), placeholder="YYYY-MM-DD", compact=True)),
            self.field("coverage_percentage", "Coverage %", Input("100", placeholder="0-100", compact=True)),
            self.field("is_primary", "Primary plan", CareCheckbox("primary", False, compact=True)),
            classes="row")
        yield self.field("notes", "Notes", Input(compact=True))

    def on_mount(self) -> None:
        self.query_one("#field-plan").focus()
        if not self.plans:
            self.set_status("There are no active plans to enroll in.", error=True)

    def collect(self) -> tuple[dict[str, Any], dict[str, str]]:
        values: dict[str, Any] = {}
        errors: dict[str, str] = {}
        plan = self.query_one("#field-plan", Select).value
        if plan is Select.NULL:
            errors["plan"] = "choose a plan"
        values["plan_id"] = plan
        try:
            values["enrollment_date"] = parse_date(self.input_value("enrollment_date"))
            if values["enrollment_date"] is None:
                errors["enrollment_date"] = "is required"
        except ValueError as exc:
            errors["enrollment_date"] = str(exc)
        coverage = self.input_value("coverage_percentage").strip()
        values["coverage_percentage"] = None
        if coverage:
            # ASCII digits only, at most two decimals: Decimal() also reads NaN, Infinity, 1e2 and other
            # scripts' digits (and NaN then fails the range check with an error instead of a message)
            typed = coverage.rstrip("%").strip()
            if not _PERCENT.fullmatch(typed):
                errors["coverage_percentage"] = "a number from 0 to 100"
            else:
                percent = Decimal(typed)
                if not 0 <= percent <= 100:
                    errors["coverage_percentage"] = "a number from 0 to 100"
                values["coverage_percentage"] = percent
        values["is_primary"] = self.query_one("#field-is_primary", CareCheckbox).value
        values["notes"] = self.input_value("notes").strip() or None
        return values, errors

    def perform(self, values: dict[str, Any]) -> Any:
        start = values["enrollment_date"]
        if start != self._warned_for:
            overlaps = self.desk.overlapping_enrollments(self.member_id, start)
            if overlaps:
                return OverlapWarning(start, tuple(overlaps))
        return self.desk.enroll(self.member_id, values["plan_id"], start,
                                is_primary=values["is_primary"], coverage_percentage=values["coverage_percentage"],
                                notes=values["notes"])

    def on_form_saved(self, message: FormSaved) -> None:
        warning = message.result
        if not isinstance(warning, OverlapWarning):
            return  # enrolled: FormModal's own handler (Textual calls it next, along the MRO) closes the form
        message.prevent_default()  # not enrolled yet: the form stays
        message.stop()
        self._set_saving(False)
        self._warned_for = warning.start
        plans = ", ".join(f"{self.plan_codes.get(e.insurance_plan_id, 'another plan')} (from "
                          f"{show_date(e.enrollment_date)}"
                          f"{f' to {show_date(e.termination_date)}' if e.termination_date else ''})"
                          for e in warning.enrollments)
        self.set_status(f"Warning: this member has another active enrollment on {warning.start}: {plans}.\n"
                        "Press ctrl+s again to enroll anyway, or Esc to cancel.", error=True)


class TerminateDialog(FormModal):
    """End an enrollment on a date (today by default), saying why.

    A date still to come keeps the plan active until then (the dialog says so).
    """

    HEADING = "Terminate an enrollment"
    ACTION = "terminate the enrollment"
    RECORD_WORD = "enrollment"
    SAVE_LABEL = "Terminate"
    SUBMIT_ON_ENTER = True

    def __init__(self, enrollment_view: EnrollmentView) -> None:
        super().__init__()
        self.view = enrollment_view

    def edited_record(self) -> tuple[str, UUID] | None:
        return ("member_insurance_plan", self.view.enrollment.id)

    def compose_fields(self) -> Iterable[Widget]:
        enrollment = self.view.enrollment
        yield Static(f"Plan: {self.view.plan_code} — {self.view.plan_name}\n"
                     f"Enrolled from {show_date(enrollment.enrollment_date)}"
                     f"{' (primary)' if enrollment.is_primary else ''}", classes="muted", markup=False)
        yield self.field("termination_date", "Last day of coverage",
                         Input(show_date(today_utc()), placeholder="YYYY-MM-DD", compact=True))
        yield Static("", id="terminate-effect", classes="computed", markup=False)
        yield self.field("reason", "Reason (required)",
                         Input(placeholder="e.g. moved out of the service area", max_length=2000, compact=True))

    def on_mount(self) -> None:
        self.show_effect()
        self.query_one("#field-termination_date").focus()

    @on(Input.Changed, "#field-termination_date")
    def show_effect(self) -> None:
        """What the date means: ends now, or stays active until a date still to come."""
        try:
            day = parse_date(self.input_value("termination_date"))
        except ValueError:
            day = None
        text = ""
        if day is not None and day > today_utc():
            text = f"The plan stays active until {day}, then ends."
        elif day is not None:
            text = "The plan ends now."
        self.query_one("#terminate-effect", Static).update(text)

    def collect(self) -> tuple[dict[str, Any], dict[str, str]]:
        errors: dict[str, str] = {}
        day = None
        try:
            day = parse_date(self.input_value("termination_date"))
            if day is None:
                errors["termination_date"] = "is required"
        except ValueError as exc:
            errors["termination_date"] = str(exc)
        reason = self.input_value("reason").strip()
        if not reason:
            errors["reason"] = "say why the enrollment ends"
        return {"termination_date": day, "reason": reason}, errors

    def perform(self, values: dict[str, Any]) -> Any:
        enrollment = self.view.enrollment
        return self.desk.terminate_enrollment(enrollment.id, enrollment.updated_at, values["termination_date"],
                                              values["reason"])


# -- notes ------------------------------------------------------------------------------------------


class NoteDialog(FormModal):
    """Add a free-text note to a member's file."""

    HEADING = "Add a note"
    ACTION = "save the note"
    FIELD_ALIASES = {"metadata_value": "text"}

    def __init__(self, member_id: UUID, member_label: str = "") -> None:
        super().__init__()
        self.member_id = member_id
        self.member_label = member_label

    def heading(self) -> str:
        return f"Add a note to {self.member_label}'s file" if self.member_label else self.HEADING

    def compose_fields(self) -> Iterable[Widget]:
        yield self.field("text", "Note", TextArea(compact=True))

    def on_mount(self) -> None:
        self.query_one("#field-text").focus()

    def collect(self) -> tuple[dict[str, Any], dict[str, str]]:
        text = self.query_one("#field-text", TextArea).text.strip()
        return {"text": text}, ({} if text else {"text": "write the note first"})

    def perform(self, values: dict[str, Any]) -> Any:
        return self.desk.add_note(self.member_id, values["text"])


# -- reveal ---------------------------------------------------------------------------------------------

REVEAL_CHOICES = {"both": ("ssn", "dob"), "ssn": ("ssn",), "dob": ("dob",)}


class RevealDialog(FormModal):
    """Ask which PHI to reveal and why; the reveal itself is audited with the reason.

    Dismisses with the :class:`~carecli.data.repositories.members.RevealedPhi`
    (values masked until ``.reveal()``), or ``None`` when cancelled.
    """

    HEADING = "Reveal SSN / date of birth"
    ACTION = "reveal"
    SAVE_LABEL = "Reveal"
    SUBMIT_ON_ENTER = True
    KEEP_RESULT_WHILE_COVERED = False
    BINDINGS = [Binding("ctrl+s", "save", "Reveal", id="form.save", tooltip="Reveal (audited with your reason)")]

    def __init__(self, member_id: UUID, member_label: str = "", *, has_ssn: bool = True,
                 has_dob: bool = True) -> None:
        super().__init__()
        self.member_id = member_id
        self.member_label = member_label
        self.has_ssn = has_ssn
        self.has_dob = has_dob

    def heading(self) -> str:
        return f"Reveal {self.member_label}'s SSN / date of birth" if self.member_label else self.HEADING

    def compose_fields(self) -> Iterable[Widget]:
        options: list[tuple[str, str]] = []
        if self.has_ssn and self.has_dob:
            options.append(("SSN and date of birth", "both"))
        if self.has_ssn:
            options.append(("SSN", "ssn"))
        if self.has_dob:
            options.append(("Date of birth", "dob"))
        yield Static("Your name, the time and your reason are recorded in the audit log.", classes="muted")
        yield self.field("fields", "Show", Select(options, value=options[0][1] if options else Select.NULL,
                                                   allow_blank=not options, compact=True))
        yield self.field("reason", f"Reason (at least {MIN_REVEAL_REASON} characters)",
                         Input(placeholder="e.g. verifying identity on a call", max_length=500, compact=True))

    def on_mount(self) -> None:
        self.query_one("#field-reason").focus()

    def collect(self) -> tuple[dict[str, Any], dict[str, str]]:
        errors: dict[str, str] = {}
        choice = self.query_one("#field-fields", Select).value
        if choice is Select.NULL:
            errors["fields"] = "choose what to show"
        reason = self.input_value("reason").strip()
        if len(reason) < MIN_REVEAL_REASON:
            errors["reason"] = f"say why (at least {MIN_REVEAL_REASON} characters)"
        fields = REVEAL_CHOICES.get(choice, ()) if isinstance(choice, str) else ()
        return {"fields": fields, "reason": reason}, errors

    def perform(self, values: dict[str, Any]) -> Any:
        return self.desk.reveal(self.member_id, values["fields"], values["reason"])


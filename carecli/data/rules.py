"""Rules that refuse impossible data, the same for every way in.

The repositories (the app, every subcommand) and ``carecli import`` call the
same functions here on the row *as it will be* (stored values merged with
the change), so a completed call dated next year or an enrollment starting in
1800 is refused alike wherever it comes from. Each function returns a list of
``(field, rule, message)`` problems, empty when the row is fine; messages are
full sentences built from field names and dates of the plan or the clock,
never from member data.

Rows that broke a rule before it existed are not rewritten: ``carecli check
data`` (:mod:`carecli.data.integrity`) counts them per rule, and the time
rules below only apply to the values a change touches, so fixing a note on
an old call is not refused because of its date.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from typing import Any

Problem = tuple[str, str, str]

#: the earliest date an enrollment (or its termination) may carry
EARLIEST_DATE = date(1900, 1, 1)
#: how far in the future a "happened" time may be, for clocks that disagree a little
DEFAULT_CLOCK_SKEW = timedelta(minutes=5)
#: call statuses that mean the call was attempted (it has a start time that is in the past)
HELD_STATUSES = ("completed", "no_answer")
#: what a flag may be raised from: a call that was held or at least attempted
FLAGGABLE_STATUSES = HELD_STATUSES

_clock_skew = DEFAULT_CLOCK_SKEW


def configure(*, clock_skew_seconds: int | None = None) -> None:
    """Set the clock-skew allowance (``[rules] clock_skew_seconds``); called once settings are read."""
    global _clock_skew
    if clock_skew_seconds is not None:
        _clock_skew = timedelta(seconds=max(0, int(clock_skew_seconds)))


def clock_skew() -> timedelta:
    return _clock_skew


def utc_now() -> datetime:
    """Now as the naive UTC the database keeps."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _fmt(moment: datetime | date) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if isinstance(moment, datetime) else moment.isoformat()


def _touched(name: str, changed: Mapping[str, Any] | None) -> bool:
    """On create (``changed`` None) every field counts; on update only the changed ones."""
    return changed is None or name in changed


# -- calls ----------------------------------------------------------------------------------------


def call_problems(call: Mapping[str, Any], *, changed: Mapping[str, Any] | None = None,
                  member_created_at: datetime | None = None, now: datetime | None = None) -> list[Problem]:
    """Everything wrong with a call as it will be.

    ``changed`` is None for a new call, else the fields the change sets; the
    time rules apply only to what it touches (the status counts as touching
    the times it makes meaningful). ``member_created_at`` is when the
    member's record was made, if known.
    """
    now = now or utc_now()
    skew = clock_skew()
    problems: list[Problem] = []
    status = call.get("call_status")
    scheduled, started, ended = call.get("scheduled_at"), call.get("started_at"), call.get("ended_at")
    status_touched = _touched("call_status", changed)

    if started is not None and ended is not None and ended < started:
        problems.append(("ended_at", "date_order", "The end time must not be before the start time."))
    if ended is not None and started is None:
        problems.append(("started_at", "required", "The start time is required when an end time is given."))
    follow_up, day = call.get("follow_up_date"), started or scheduled
    if follow_up is not None and day is not None and follow_up < day.date():
        problems.append(("follow_up_date", "date_order", "The follow-up date must not be before the call."))
    if call.get("follow_up_required") and follow_up is None:
        problems.append(("follow_up_date", "required", "A follow-up date is required when a follow-up is required."))
    if status == "scheduled" and scheduled is None:
        problems.append(("scheduled_at", "required", "The scheduled time is required for a scheduled call."))
    if status == "completed" and started is None:
        problems.append(("started_at", "required", "The start time is required for a completed call."))

    if status in HELD_STATUSES:
        word = "A completed" if status == "completed" else "An unanswered"
        for name, value in (("started_at", started), ("ended_at", ended)):
            if value is not None and value > now + skew and (status_touched or _touched(name, changed)):
                what = "start" if name == "started_at" else "end"
                problems.append((name, "not_future",
                                 f"{word} call cannot {what} in the future (it is {_fmt(now)} now)."))
        first = started or (scheduled if status == "no_answer" else None)
        if (member_created_at is not None and first is not None and first < member_created_at - skew
                and (status_touched or _touched("started_at", changed))):
            # The member's creation time is not said: it is a fact about the member (and so is the row's).
            problems.append(("started_at", "before_member",
                             "A call cannot have happened before the member's record existed."))
    if status == "scheduled" and scheduled is not None and scheduled < now - skew \
            and (status_touched or _touched("scheduled_at", changed)):
        problems.append(("scheduled_at", "scheduled_past",
                         f"A call can only be scheduled for a time still to come (it is {_fmt(now)} now)."))
    return problems


# -- enrollments ----------------------------------------------------------------------------------


def enrollment_problems(enrollment: Mapping[str, Any], plan: Mapping[str, Any] | None, *,
                        changed: Mapping[str, Any] | None = None, today: date | None = None) -> list[Problem]:
    """Everything wrong with an enrollment as it will be, against its plan's dates (when it has them)."""
    today = today or utc_now().date()
    problems: list[Problem] = []
    start, end, status = enrollment.get("enrollment_date"), enrollment.get("termination_date"), enrollment.get("status")
    effective = plan.get("effective_date") if plan is not None else None
    expires = plan.get("expiration_date") if plan is not None else None

    if start is not None and start < EARLIEST_DATE and _touched("enrollment_date", changed):
        problems.append(("enrollment_date", "too_early", f"The enrollment date must be {EARLIEST_DATE} or later."))
    if end is not None and end < EARLIEST_DATE and _touched("termination_date", changed):
        problems.append(("termination_date", "too_early", f"The termination date must be {EARLIEST_DATE} or later."))
    if start is not None and end is not None and end < start:
        problems.append(("termination_date", "date_order",
                         "The termination date must not be before the enrollment date."))
    if start is not None and _touched("enrollment_date", changed):
        if effective is not None and start < effective:
            problems.append(("enrollment_date", "plan_dates",
                             f"The enrollment cannot start before the plan takes effect ({effective})."))
        if expires is not None and start > expires:
            problems.append(("enrollment_date", "plan_dates",
                             f"The enrollment cannot start after the plan expires ({expires})."))
    if end is not None and expires is not None and end > expires and _touched("termination_date", changed):
        problems.append(("termination_date", "plan_dates",
                         f"The termination date cannot be after the plan expires ({expires})."))
    if status == "terminated" and end is None:
        problems.append(("termination_date", "required", "A termination date is required when the status is "
                                                         "terminated."))
    if status == "terminated" and end is not None and end > today and \
            (_touched("status", changed) or _touched("termination_date", changed)):
        problems.append(("status", "status_dates",
                         "An enrollment is terminated only once its termination date has passed (this one is "
                         "still to come): leave it active with that termination date."))
    return problems


def enrollment_state(status: str | None, termination_date: date | None, today: date | None = None) -> str:
    """What an enrollment is on ``today``, for display: its status, with an end still to come or passed."""
    today = today or utc_now().date()
    status = status or "active"
    if status == "active" and termination_date is not None:
        return f"ends {termination_date}" if termination_date >= today else "ended"
    return status


# -- risk flags -------------------------------------------------------------------------------------


def flag_call_problems(call: Mapping[Any, Any] | None, member_id: Any = None, *,
                       field: str = "call_record_id") -> list[Problem]:
    """A flag's call must exist, be held (completed or no answer) and belong to the flag's member."""
    if call is None:
        return [(field, "reference", "The call to raise the flag from does not exist or was deleted.")]
    problems: list[Problem] = []
    if call.get("call_status") not in FLAGGABLE_STATUSES:
        status = str(call.get("call_status") or "unknown").replace("_", " ")
        problems.append((field, "call_not_held",
                         f"A flag can only be raised from a completed or unanswered call (this call is {status})."))
    if member_id is not None and call.get("member_id") != member_id:
        problems.append((field, "call_mismatch", "The call belongs to another member than the flag."))
    return problems

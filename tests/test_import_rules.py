"""``carecli import`` refuses impossible data by the same rules as the app (:mod:`carecli.data.rules`).

One database per module, seeded once; the rule cases are dry runs (nothing
written). The property-based tests at the end check that the import path and
the repository path agree: a row is refused by one iff the other refuses it,
with the same rule names.
"""

from __future__ import annotations

import io
import itertools
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from carecli.config import load_settings
from carecli.data.bulk.loader import run_import
from carecli.data.bulk.readers import Columns, RecordProblem, read_records
from carecli.data.bulk.registry import kind_for
from carecli.data.databases import create_database_engine
from carecli.data.rules import utc_now
from carecli.errors import ValidationError
from tests.import_fixtures import Outcome, csv_text
from tests.platform_fixtures import Platform

NOW = utc_now().replace(second=0, microsecond=0)
TODAY = NOW.date()


def at(**delta: float) -> str:
    """A time relative to now (naive UTC, ISO), as a file would give it."""
    return (NOW + timedelta(**delta)).isoformat()


def on(days: int) -> str:
    return (TODAY + timedelta(days=days)).isoformat()


@dataclass
class World:
    """A platform database with members, plans, a specialist and calls of every status."""

    platform: Platform
    ids: dict[str, uuid.UUID] = field(default_factory=dict)

    def run(self, kind: str, data: str, *, dry_run: bool = True) -> Outcome:
        importer = kind_for(kind)
        records = read_records(io.BytesIO(data.encode()), "csv", Columns(importer.columns, {}),
                               required=importer.required_columns)
        problems: list[RecordProblem] = []
        summary = run_import(importer, records, engine=self.platform.engine, actor=self.platform.admin,
                             cipher=self.platform.cipher, blind_index=lambda: None, on_problem=problems.append,
                             dry_run=dry_run, batch_rows=100, identity=None)
        return Outcome(summary, problems)

    def check(self, kind: str, *rows: Mapping[str, Any], dry_run: bool = True) -> Outcome:
        header = list(dict.fromkeys(name for row in rows for name in row))
        filled = [[self.fill(row.get(name)) for name in header] for row in rows]
        return self.run(kind, csv_text(header, *filled), dry_run=dry_run)

    def fill(self, value: Any) -> Any:
        return value.format(**self.ids) if isinstance(value, str) else value

    def execute(self, statement: str, **params: Any) -> None:
        with self.platform.engine.begin() as connection:
            connection.execute(text(statement), params)


def seed(world: World) -> None:
    p = world.platform
    old, new, other = p.member(), p.member(first_name="Nia", created_at=NOW - timedelta(days=1)), \
        p.member(first_name="Oz")
    world.ids.update(OLD=old.id, NEW=new.id, OTHER=other.id)
    specialist = p.specialist()
    world.ids["S"] = specialist.id
    open_plan = p.plan("OPEN")
    year = p.plan("Y", effective_date=date(2020, 1, 1), expiration_date=TODAY + timedelta(days=365))
    world.ids.update(OPEN=open_plan.id, Y=year.id)
    held = p.call(old, specialist)
    scheduled = p.call(old, specialist, call_status="scheduled", started_at=None, ended_at=None,
                       scheduled_at=NOW + timedelta(days=3))
    cancelled = p.call(old, specialist, call_status="cancelled", started_at=None, ended_at=None,
                       scheduled_at=NOW + timedelta(days=4))
    world.ids.update(HELD=held.id, SCHEDULED=scheduled.id, CANCELLED=cancelled.id)
    with p.uow() as uow:
        enrollment = uow.enrollments.enroll(old.id, open_plan.id, date(2024, 1, 1))
        uow.commit()
    world.ids["E"] = enrollment.id
    # Legacy rows that break today's rules, written as an old version would have: updates that do not
    # touch the offending values still load.
    world.ids["LEGACY_CALL"] = uuid.uuid4()
    world.execute("INSERT INTO call_records (id, member_id, specialist_id, call_type, call_status, started_at) "
                  "VALUES (:id, :m, :s, 'outreach', 'completed', :when)", id=world.ids["LEGACY_CALL"],
                  m=new.id, s=specialist.id, when=NOW - timedelta(days=30))
    world.ids["LEGACY_SCHEDULED"] = uuid.uuid4()
    world.execute("INSERT INTO call_records (id, member_id, specialist_id, call_type, call_status, scheduled_at) "
                  "VALUES (:id, :m, :s, 'outreach', 'scheduled', :when)", id=world.ids["LEGACY_SCHEDULED"],
                  m=old.id, s=specialist.id, when=NOW - timedelta(days=30))
    world.ids["LEGACY_ENROLLMENT"] = uuid.uuid4()
    world.execute("INSERT INTO member_insurance_plans (id, member_id, insurance_plan_id, enrollment_date) "
                  "VALUES (:id, :m, :p, '2019-06-01')", id=world.ids["LEGACY_ENROLLMENT"], m=old.id, p=year.id)


@pytest.fixture(scope="module")
def world(pg_server: Any, template_pair: Any) -> Iterator[World]:
    name = pg_server.create_database("platform", template=template_pair.platform)
    engine = create_database_engine(pg_server.url(name), load_settings({}))
    try:
        built = World(Platform(engine))
        seed(built)
        yield built
    finally:
        engine.dispose()
        pg_server.drop_database(name)


def rules_of(outcome: Outcome) -> set[tuple[str, str]]:
    return {(problem.field, problem.rule) for problem in outcome.problems}


def assert_refused(outcome: Outcome, *expected: tuple[str, str], rows: Sequence[Mapping[str, Any]] = ()) -> None:
    """Every expected (field, rule) is reported, the row is refused, and no message holds a row value."""
    assert set(expected) <= rules_of(outcome), outcome.rules()
    assert outcome.summary.rejected == 1 and outcome.summary.created + outcome.summary.updated == 0
    for problem in outcome.problems:
        for row in rows:
            for value in row.values():
                for shown in _renderings(value):
                    assert shown not in problem.message, (problem.field, problem.rule)


def _renderings(value: Any) -> list[str]:
    """How a row's date or time could appear in a message (as given, or as the rules print times)."""
    if not isinstance(value, str) or not value[:1].isdigit():
        return []
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return [value]
    if len(value) == 10:
        return [value]
    return [value, moment.strftime("%Y-%m-%d %H:%M")]


CALL = {"external_id": "R-1", "member_id": "{OLD}", "specialist_id": "{S}", "call_type": "outreach"}


# -- calls ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("row", "expected"), [
    pytest.param({"call_status": "completed", "started_at": at(days=2), "ended_at": at(days=2, minutes=10)},
                 [("started_at", "not_future"), ("ended_at", "not_future")], id="completed-in-the-future"),
    pytest.param({"call_status": "completed", "started_at": at(minutes=-30), "ended_at": at(hours=3)},
                 [("ended_at", "not_future")], id="completed-ending-in-the-future"),
    pytest.param({"call_status": "no_answer", "started_at": at(days=1)}, [("started_at", "not_future")],
                 id="no-answer-in-the-future"),
    pytest.param({"member_id": "{NEW}", "call_status": "completed", "started_at": at(days=-30)},
                 [("started_at", "before_member")], id="before-the-member-existed"),
    pytest.param({"member_id": "{NEW}", "call_status": "no_answer", "scheduled_at": at(days=-30)},
                 [("started_at", "before_member")], id="no-answer-before-the-member-existed"),
    pytest.param({"call_status": "scheduled", "scheduled_at": at(days=-2)}, [("scheduled_at", "scheduled_past")],
                 id="scheduled-in-the-past"),
    pytest.param({"call_status": "completed", "started_at": at(days=-1), "ended_at": at(days=-1, minutes=-5)},
                 [("ended_at", "date_order")], id="ended-before-started"),
    pytest.param({"call_status": "completed", "started_at": at(days=3), "ended_at": at(days=2)},
                 [("ended_at", "date_order"), ("started_at", "not_future"), ("ended_at", "not_future")],
                 id="every-problem-of-a-row"),
])
def test_call_rules(world: World, row: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    full = {**CALL, **row}
    assert_refused(world.check("calls", full), *expected, rows=[full])


@pytest.mark.parametrize("row", [
    pytest.param({"call_status": "scheduled", "scheduled_at": at(days=2)}, id="scheduled-to-come"),
    pytest.param({"call_status": "completed", "started_at": at(minutes=2)}, id="within-the-clock-skew"),
    pytest.param({"member_id": "{NEW}", "call_status": "completed", "started_at": at(hours=-1)},
                 id="after-the-member-existed"),
    pytest.param({"call_status": "cancelled", "scheduled_at": at(days=-3)}, id="cancelled-in-the-past"),
])
def test_calls_that_keep_the_rules_load(world: World, row: dict[str, Any]) -> None:
    outcome = world.check("calls", {**CALL, **row})
    assert outcome.problems == [] and outcome.summary.created == 1


def test_call_updates_are_checked_on_what_they_touch(world: World) -> None:
    # A legacy call before its member's record: a new outcome loads, moving it (still too early) does not.
    assert world.check("calls", {"id": "{LEGACY_CALL}", "outcome": "reached"}).summary.updated == 1
    moved = world.check("calls", {"id": "{LEGACY_CALL}", "started_at": at(days=-20)})
    assert_refused(moved, ("started_at", "before_member"))
    # A legacy scheduled call in the past: notes load, a new time in the past does not, one to come does.
    assert world.check("calls", {"id": "{LEGACY_SCHEDULED}", "call_notes": "x"}).summary.updated == 1
    assert_refused(world.check("calls", {"id": "{LEGACY_SCHEDULED}", "scheduled_at": at(days=-1)}),
                   ("scheduled_at", "scheduled_past"))
    assert world.check("calls", {"id": "{LEGACY_SCHEDULED}", "scheduled_at": at(days=1)}).summary.updated == 1
    # Completing a scheduled call with a start still to come is refused (the status touches the times).
    assert_refused(world.check("calls", {"id": "{SCHEDULED}", "call_status": "completed",
                                         "started_at": at(days=3)}), ("started_at", "not_future"))


def test_a_refused_call_leaves_the_rest_of_the_file_loading_and_nothing_of_itself(world: World) -> None:
    before = world.platform.scalar("SELECT count(*) FROM call_records")
    outcome = world.check("calls", {**CALL, "external_id": "OK-1", "call_status": "completed",
                                    "started_at": at(days=-1)},
                          {**CALL, "external_id": "BAD-1", "call_status": "completed", "started_at": at(days=1)},
                          {**CALL, "external_id": "OK-2", "call_status": "scheduled", "scheduled_at": at(days=1)},
                          dry_run=False)
    assert (outcome.summary.created, outcome.summary.rejected) == (2, 1)
    assert outcome.rules() == [(2, "started_at", "not_future")]
    assert world.platform.scalar("SELECT count(*) FROM call_records") == before + 2
    assert world.platform.scalar("SELECT count(*) FROM metadata WHERE metadata_value = to_jsonb('BAD-1'::text)") \
        == 0


# -- enrollments ---------------------------------------------------------------------------------------------

ENROLL = {"member_id": "{OTHER}", "plan_code": "Y", "enrollment_date": "2024-01-01"}


@pytest.mark.parametrize(("row", "expected"), [
    pytest.param({"plan_code": "OPEN", "enrollment_date": "1899-12-31"}, [("enrollment_date", "too_early")],
                 id="too-early"),
    pytest.param({"plan_code": "OPEN", "termination_date": "1899-12-31"},
                 [("termination_date", "too_early"), ("termination_date", "date_order")], id="too-early-end"),
    pytest.param({"enrollment_date": "2019-12-31"}, [("enrollment_date", "plan_dates")],
                 id="start-before-the-plan-takes-effect"),
    pytest.param({"enrollment_date": on(400)}, [("enrollment_date", "plan_dates")],
                 id="start-after-the-plan-expires"),
    pytest.param({"termination_date": on(400)}, [("termination_date", "plan_dates")],
                 id="termination-after-the-plan-expires"),
    pytest.param({"plan_code": "OPEN", "status": "terminated", "termination_date": on(30)},
                 [("status", "status_dates")], id="terminated-before-its-date"),
    pytest.param({"plan_code": "OPEN", "termination_date": "2023-01-01"}, [("termination_date", "date_order")],
                 id="ends-before-it-starts"),
])
def test_enrollment_rules(world: World, row: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    full = {**ENROLL, **row}
    assert_refused(world.check("enrollments", full), *expected, rows=[full])


def test_enrollment_updates_are_checked_on_what_they_touch(world: World) -> None:
    # A legacy enrollment starting before its plan took effect: new notes load, terminating it too.
    assert world.check("enrollments", {"id": "{LEGACY_ENROLLMENT}", "notes": "x"}).summary.updated == 1
    assert world.check("enrollments", {"id": "{LEGACY_ENROLLMENT}", "termination_date": on(-1),
                                       "status": "terminated"}).summary.updated == 1
    # Terminating with a date still to come: refused as terminated, fine as active with that date.
    assert_refused(world.check("enrollments", {"id": "{E}", "status": "terminated", "termination_date": on(10)}),
                   ("status", "status_dates"))
    assert world.check("enrollments", {"id": "{E}", "termination_date": on(10)}).summary.updated == 1


def test_enrollment_rules_report_every_problem_and_the_rest_loads(world: World) -> None:
    outcome = world.check("enrollments", {**ENROLL, "member_id": "{NEW}", "enrollment_date": "1899-01-01",
                                          "termination_date": on(400), "status": "terminated"},
                          {**ENROLL, "member_id": "{NEW}", "enrollment_date": "2024-02-01"})
    assert (outcome.summary.created, outcome.summary.rejected) == (1, 1)
    assert rules_of(outcome) == {("enrollment_date", "too_early"), ("enrollment_date", "plan_dates"),
                                 ("termination_date", "plan_dates"), ("status", "status_dates")}


# -- flags ---------------------------------------------------------------------------------------------------

FLAG = {"external_id": "RF-1", "call_record_id": "{HELD}", "risk_type": "medical", "severity": "high",
        "description": "dizzy"}


@pytest.mark.parametrize(("row", "expected"), [
    pytest.param({"call_record_id": "{SCHEDULED}"}, [("call_record_id", "call_not_held")], id="scheduled-call"),
    pytest.param({"call_record_id": "{CANCELLED}"}, [("call_record_id", "call_not_held")], id="cancelled-call"),
    pytest.param({"member_id": "{OTHER}"}, [("member_id", "call_mismatch")], id="another-member"),
    pytest.param({"call_record_id": "{CANCELLED}", "member_id": "{OTHER}"},
                 [("call_record_id", "call_not_held"), ("member_id", "call_mismatch")], id="both"),
])
def test_flag_rules(world: World, row: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    full = {**FLAG, **row}
    assert_refused(world.check("flags", full), *expected, rows=[full])


def test_a_flag_on_a_held_call_loads(world: World) -> None:
    for row in ({**FLAG}, {**FLAG, "member_id": "{OLD}"}):
        outcome = world.check("flags", row)
        assert outcome.problems == [] and outcome.summary.created == 1


# -- the import and the repositories agree (property-based) ----------------------------------------------

_HOURS = st.one_of(st.none(), st.integers(min_value=-24 * 400, max_value=24 * 60).map(lambda h: h + 0.5))
_counter = itertools.count()


def repository_rules(action: Any) -> set[tuple[str, str]]:
    """The (field, rule) pairs the repository refuses a write with (empty when it accepts it)."""
    try:
        action()
    except ValidationError as error:
        return {(name, rule) for name, rule, _ in error.problems}
    return set()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(status=st.sampled_from(("scheduled", "completed", "no_answer", "cancelled")),
       scheduled=_HOURS, started=_HOURS, duration=st.one_of(st.none(), st.integers(-120, 240)),
       member=st.sampled_from(("OLD", "NEW")))
def test_calls_import_refuses_iff_the_repository_does(world: World, status: str, scheduled: float | None,
                                                      started: float | None, duration: int | None,
                                                      member: str) -> None:
    def moment(hours: float | None) -> datetime | None:
        return None if hours is None else (NOW + timedelta(hours=hours)).replace(microsecond=0)

    ended = None if started is None or duration is None else moment(started + duration / 60)
    values = {"member_id": world.ids[member], "specialist_id": world.ids["S"], "call_type": "outreach",
              "call_status": status, "scheduled_at": moment(scheduled), "started_at": moment(started),
              "ended_at": ended}
    with world.platform.uow() as uow:  # never committed
        expected = repository_rules(lambda: uow.calls.create(values))
    row = {"external_id": f"P-{next(_counter)}", **{name: value.isoformat() if isinstance(value, datetime)
                                                     else value for name, value in values.items()}}
    outcome = world.check("calls", row)
    assert rules_of(outcome) == expected
    assert outcome.summary.rejected == (1 if expected else 0)


_DATES = st.one_of(st.none(), st.dates(min_value=date(1890, 1, 1), max_value=date(2030, 12, 31)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(effective=_DATES, expires=_DATES, start=st.dates(min_value=date(1890, 1, 1), max_value=date(2030, 12, 31)),
       end=_DATES, status=st.sampled_from(("active", "terminated", "suspended")))
def test_enrollments_import_refuses_iff_the_repository_does(world: World, effective: date | None,
                                                            expires: date | None, start: date, end: date | None,
                                                            status: str) -> None:
    if effective is not None and expires is not None and expires < effective:
        effective, expires = expires, effective
    code = f"PP-{next(_counter)}"
    plan = world.platform.plan(code, effective_date=effective, expiration_date=expires)
    values = {"enrollment_date": start, "termination_date": end, "status": status}
    with world.platform.uow() as uow:  # never committed
        expected = repository_rules(lambda: uow.enrollments._insert(
            values, operation="enroll members",
            generated={"member_id": world.ids["OTHER"], "insurance_plan_id": plan.id, "is_primary": False}))
    row = {"member_id": str(world.ids["OTHER"]), "plan_code": code,
           **{name: value.isoformat() if isinstance(value, date) else value for name, value in values.items()}}
    outcome = world.check("enrollments", row)
    assert rules_of(outcome) == expected
    assert outcome.summary.rejected == (1 if expected else 0)


def test_rule_messages_never_name_the_member_s_or_the_row_s_dates() -> None:
    """Dates about a member (their record's creation, their enrollment's end) are not put in messages."""
    from carecli.data import rules

    created = datetime(2026, 5, 17, 9, 41)
    [(_, rule, message)] = rules.call_problems({"call_status": "completed", "started_at": datetime(2026, 5, 1)},
                                               member_created_at=created, now=datetime(2026, 6, 1))
    assert rule == "before_member" and "2026-05-17" not in message and "2026-05-01" not in message
    [(_, rule, message)] = rules.enrollment_problems(
        {"enrollment_date": date(2026, 1, 1), "termination_date": date(2026, 9, 30), "status": "terminated"}, None,
        today=date(2026, 6, 1))
    assert rule == "status_dates" and "2026-09-30" not in message


def test_a_call_too_long_for_its_duration_column_is_refused_not_an_error(world: World) -> None:
    """ended_at - started_at in seconds must fit duration_seconds (an INTEGER): a call of more than 68 years
    is a rejection naming ended_at, not an out-of-range error that aborts the batch."""
    row = {**CALL, "external_id": "LONG-1", "call_status": "cancelled", "scheduled_at": at(days=5),
           "started_at": "1900-01-01T00:00:00", "ended_at": "2000-01-01T00:00:00"}
    assert_refused(world.check("calls", row, dry_run=False), ("ended_at", "range"), rows=[row])

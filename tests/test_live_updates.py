"""Live updates, data side: what a commit announces, what a rollback does not, imports, and the listener.

Every test runs on a fresh migrated platform database. Notifications are
caught the way another process would: a LISTEN connection of its own.
Waiting is always on a condition with a deadline, never a fixed sleep; to
show that something was *not* sent, a committed marker write follows and
must be the first thing that arrives.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from carecli.data import notify
from carecli.data.notify import CHANNEL, Change, ChangeListener, Notice
from carecli.errors import ConflictError
from tests.import_fixtures import Importer, csv_text
from tests.platform_fixtures import Platform

#: values of the test's member that must never travel in a payload
PHI_VALUES = ("Ada", "Okafor", "ada.okafor@example.org", "555-0100", "Harbour", "97201", "123-45-6789",
              "123456789", "1961", "diabetes", "worried about insulin")


@pytest.fixture
def catcher(platform: Platform) -> Iterator[Callable[..., list[dict[str, Any]]]]:
    """A LISTEN connection of another 'process'; ``catch(n)`` returns the next ``n`` payloads (parsed)."""
    url = platform.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    connection = psycopg.connect(url, autocommit=True)
    connection.execute(f"LISTEN {CHANNEL}")

    def catch(count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            for item in connection.notifies(timeout=0.2, stop_after=count - len(got)):
                assert item.channel == CHANNEL
                got.append({"raw": item.payload, **json.loads(item.payload)})
        assert len(got) == count, f"expected {count} notifications, got {len(got)}"
        return got

    try:
        yield catch
    finally:
        connection.close()


def marker(platform: Platform) -> uuid.UUID:
    """A committed write whose notice marks "everything before this has arrived"."""
    return platform.plan(f"MARK-{uuid.uuid4().hex[:6]}").id


def ids(payload: dict[str, Any]) -> list[str]:
    return [item.get("id") for item in payload["c"]]


def test_a_commit_announces_every_written_row_by_ids_only(platform: Platform, catcher) -> None:
    member = platform.member()
    specialist = platform.specialist()
    plan = platform.plan()
    catcher(3)  # the three setup commits above
    with platform.uow() as uow:
        call = uow.calls.create({"member_id": member.id, "specialist_id": specialist.id, "call_type": "outreach",
                                 "call_status": "no_answer", "call_notes": "worried about insulin"})
        flag = uow.risk_flags.raise_from_call(call.id, risk_type="medical", severity="high",
                                              description="diabetes follow-up")
        enrollment = uow.enrollments.enroll(member.id, plan.id, date(2026, 1, 1), is_primary=True)
        note = uow.metadata.put("member", member.id, "note:1", {"text": "worried about insulin"})
        changed = uow.members.update(member.id, member.updated_at, {"phone": "(503) 555-0111"})
        uow.commit()
    (payload,) = catcher(1)
    assert payload["v"] == 1 and payload["src"] == notify.PROCESS_SOURCE
    by_entity = {item["e"]: item for item in payload["c"]}
    assert by_entity["call_record"] == {"e": "call_record", "id": str(call.id), "m": str(member.id),
                                        "s": str(specialist.id)}
    assert by_entity["risk_flag"]["id"] == str(flag.id) and by_entity["risk_flag"]["m"] == str(member.id)
    assert by_entity["member_insurance_plan"] == {"e": "member_insurance_plan", "id": str(enrollment.id),
                                                  "m": str(member.id), "p": str(plan.id)}
    assert by_entity["metadata"] == {"e": "metadata", "id": str(note.id), "m": str(member.id)}
    assert by_entity["member"] == {"e": "member", "id": str(changed.id), "m": str(member.id)}
    for value in PHI_VALUES:
        assert value not in payload["raw"]
    # Nothing but ids and entity names: every value is a UUID, a known key or the version.
    for item in payload["c"]:
        assert set(item) <= {"e", "id", "m", "s", "p"}
        for key in ("id", "m", "s", "p"):
            if key in item:
                uuid.UUID(item[key])


def test_a_rollback_sends_nothing(platform: Platform, catcher) -> None:
    member = platform.member()
    catcher(1)
    with platform.uow() as uow:
        uow.members.update(member.id, member.updated_at, {"city": "Salem"})
        # no commit: leaving the block rolls back
    assert member.updated_at is not None
    with platform.uow() as uow, pytest.raises(ConflictError):
        uow.members.update(member.id, member.updated_at.replace(year=2000), {"city": "Bend"})
        uow.commit()
    mark = marker(platform)
    (first,) = catcher(1)
    assert ids(first) == [str(mark)], "the rolled-back changes must not have been announced"


def test_reads_announce_nothing(platform: Platform, catcher) -> None:
    member = platform.member()
    catcher(1)
    with platform.uow() as uow:
        uow.members.open(member.id)  # an audited read commits its audit row, but changes no record
        uow.members.reveal(member.id, ["ssn"], "verify identity")
        uow.commit()
    mark = marker(platform)
    assert ids(catcher(1)[0]) == [str(mark)]


def test_a_transaction_of_many_rows_is_coarsened_under_the_payload_limit(platform: Platform, catcher) -> None:
    with platform.uow() as uow:
        for number in range(150):
            uow.plans.create({"plan_code": f"BULK-{number:03d}", "plan_name": "Bulk plan"})
        uow.commit()
    (payload,) = catcher(1)
    assert payload["c"] == [{"e": "insurance_plan", "many": True}]
    assert len(payload["raw"].encode()) < 8000


def test_encode_keeps_ids_while_they_fit_and_decode_round_trips() -> None:
    member = uuid.uuid4()
    changes = [Change("call_record", uuid.uuid4(), member, uuid.uuid4()) for _ in range(20)]
    notice = notify.decode(notify.encode(changes + changes[:3], "d-1"))
    assert notice == Notice(tuple(changes), "d-1")  # duplicates sent once
    many = [Change("call_record", uuid.uuid4(), member) for _ in range(500)]
    coarse = notify.decode(notify.encode(many, None))
    assert coarse is not None and coarse.coarse and coarse.changes == (Change("call_record"),)
    for garbage in ("", "null", "[]", '{"v": 99}', '{"v": 1, "c": [{"e": "x", "id": "not-a-uuid"}]}', "{"):
        assert notify.decode(garbage) is None


def test_an_import_sends_one_coarse_notice_per_committed_batch(importer: Importer, catcher) -> None:
    header = ("external_member_number", "first_name", "last_name", "email", "status")
    rows = [(f"EXT-{n}", f"First{n}", f"Last{n}", f"person{n}@example.org", "active") for n in range(250)]
    outcome = importer.run("members", csv_text(header, *rows), batch_rows=100)
    assert outcome.summary.created == 250 and outcome.summary.batches == 3
    payloads = catcher(3)
    assert [p["c"] for p in payloads] == [[{"e": "member", "many": True}]] * 3
    assert all("First" not in p["raw"] and "example.org" not in p["raw"] for p in payloads)
    mark = marker(importer.platform)
    assert ids(catcher(1)[0]) == [str(mark)], "one notice per batch, not one per row"


def test_an_all_or_nothing_import_sends_one_notice_and_a_dry_run_none(importer: Importer, catcher) -> None:
    header = ("external_member_number", "first_name", "last_name", "email", "status")
    rows = [(f"EXT-{n}", f"First{n}", f"Last{n}", f"person{n}@example.org", "active") for n in range(250)]
    importer.run("members", csv_text(header, *rows), batch_rows=100, dry_run=True)
    outcome = importer.run("members", csv_text(header, *rows), batch_rows=100, all_or_nothing=True)
    assert outcome.summary.committed and outcome.summary.created == 250
    (payload,) = catcher(1)
    assert payload["c"] == [{"e": "member", "many": True}]
    # A re-run that changes nothing announces nothing.
    importer.run("members", csv_text(header, *rows), batch_rows=100)
    mark = marker(importer.platform)
    assert ids(catcher(1)[0]) == [str(mark)]


# -- the listener ---------------------------------------------------------------------------------


class Inbox:
    """A subscriber that keeps what it gets, for waiting on."""

    def __init__(self) -> None:
        self.items: queue.Queue[Notice] = queue.Queue()

    def __call__(self, notice: Notice) -> None:
        self.items.put(notice)

    def next(self, condition: Callable[[Notice], bool] = lambda n: True, timeout: float = 15.0) -> Notice:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out waiting for a notice")
            try:
                notice = self.items.get(timeout=left)
            except queue.Empty:
                continue
            if condition(notice):
                return notice


def wait_until(condition: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)
    return result


def test_the_listener_delivers_changes_and_after_a_lost_connection_relistens_and_asks_for_a_full_refresh(
        platform: Platform) -> None:
    inbox = Inbox()
    listener = ChangeListener(platform.engine)
    listener.add(inbox)
    listener.start()
    try:
        assert listener.wait_listening()
        member = platform.member()
        notice = inbox.next()
        assert not notice.full_refresh and notice.changes == (Change("member", member.id, member.id),)
        first_pid = listener.stats.backend_pid
        assert platform.scalar("SELECT application_name FROM pg_stat_activity WHERE pid = :pid",
                               pid=first_pid) == notify.LISTENER_APPLICATION_NAME
        with platform.engine.connect() as connection:
            assert connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first_pid}).scalar()
        refresh = inbox.next(lambda n: n.full_refresh)
        assert refresh.changes == () and listener.stats.reconnects == 1
        assert listener.stats.backend_pid != first_pid and listener.listening
        call_member = platform.member(first_name="Bea")
        again = inbox.next(lambda n: not n.full_refresh)
        assert again.changes[0].entity_id == call_member.id
    finally:
        listener.stop()
    assert not listener.listening
    # Its connection is gone (closed, not handed back to the pool).
    assert wait_until(lambda: platform.scalar(
        # This database's only: the server is shared with the other workers' tests, whose apps listen too.
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name AND datname = current_database()",
        name=notify.LISTENER_APPLICATION_NAME) == 0)


def test_stop_ends_the_listeners_wait_at_once_not_at_the_end_of_its_poll(platform: Platform, monkeypatch,
                                                                        caplog) -> None:
    """An app's quit waited for the listener's poll to end (up to POLL_SECONDS). Its socket is shut down
    instead: with a poll of a minute, the thread has still ended, its connection closed, and no error kept
    or logged (closing it through the pool's proxy rolled back on the shut socket first, and the pool
    logged that failure with its traceback)."""
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(notify, "POLL_SECONDS", 60.0)
    listener = ChangeListener(platform.engine).start()
    assert listener.wait_listening()
    thread = listener._thread
    assert thread is not None
    wait_until(lambda: any(getattr(frame, "f_code", None) and frame.f_code.co_name == "notifies"
                           for frame in _frames_of(thread)))  # it is waiting in notifies(timeout=60)
    listener.stop(timeout=20)
    assert not thread.is_alive() and not listener.listening
    assert listener.stats.last_error is None
    assert [record.getMessage() for record in caplog.records] == []
    assert wait_until(lambda: platform.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name AND datname = current_database()",
        name=notify.LISTENER_APPLICATION_NAME) == 0)


def _frames_of(thread: threading.Thread) -> list[Any]:
    import sys

    frame = sys._current_frames().get(thread.ident or 0)
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    return frames


def test_a_listener_keeps_trying_while_the_database_is_unreachable(platform: Platform) -> None:
    from carecli.config import load_settings
    from carecli.data.databases import create_database_engine

    dead = create_database_engine(platform.engine.url.set(port=1, host="127.0.0.1"), load_settings({}))
    listener = ChangeListener(dead).start()
    try:
        wait_until(lambda: listener.stats.last_error is not None)
        assert not listener.listening and listener.stats.connects == 0
    finally:
        listener.stop()
        dead.dispose()


def test_an_invalidated_pooled_connection_is_a_failed_connect_that_is_retried(platform: Platform) -> None:
    # A pool proxy whose driver connection is None (invalidated) was used unchecked
    # (AttributeError on None.autocommit); it is now a connect failure, closed and retried.
    class Invalidated:
        dbapi_connection = None
        closed = False

        def detach(self) -> None:
            raise AssertionError("an invalidated proxy must not be detached")

        def close(self) -> None:
            self.closed = True

    handed: list[Invalidated] = []

    class FirstInvalidated:
        url = platform.engine.url

        def raw_connection(self) -> Any:
            if not handed:
                handed.append(Invalidated())
                return handed[0]
            return platform.engine.raw_connection()

    listener = ChangeListener(FirstInvalidated())  # type: ignore[arg-type]  # test double: raw_connection only
    listener.start()
    try:
        assert listener.wait_listening()
        assert listener.stats.last_error == "ConnectionError" and listener.stats.connects == 1
        assert handed[0].closed
    finally:
        listener.stop()


def test_one_listener_per_database_and_process_shared_by_subscribers(platform: Platform) -> None:
    first, second = Inbox(), Inbox()
    one = notify.subscribe(platform.engine, first)
    two = notify.subscribe(platform.engine, second)
    try:
        assert one.listener is two.listener
        assert one.listener.wait_listening()
        member = platform.member()
        for inbox in (first, second):
            assert inbox.next().changes[0].entity_id == member.id
        one.close()
        assert two.listener.listening  # the other subscriber still listens
        platform.member(first_name="Cy")
        assert second.next().changes[0].entity == "member"
    finally:
        one.close()
        two.close()
    assert not two.listener.listening
    three = notify.subscribe(platform.engine, Inbox())
    try:
        assert three.listener is not two.listener  # a new one after the last let go
    finally:
        three.close()


def test_a_failing_subscriber_does_not_silence_the_others(platform: Platform) -> None:
    inbox = Inbox()
    listener = ChangeListener(platform.engine)

    def broken(notice: Notice) -> None:
        raise RuntimeError("subscriber bug")

    listener.add(broken)
    listener.add(inbox)
    listener.start()
    try:
        assert listener.wait_listening()
        platform.plan("LIVE-1")
        assert inbox.next().changes[0].entity == "insurance_plan"
        assert threading.active_count() >= 1 and listener.listening
    finally:
        listener.stop()

"""Sealed audit history: seals verify clean, and every way of changing history is reported.

Against a real database. Tampering is done the way an attacker with the table
owner's (or a superuser's) rights would: append-only triggers switched off
for the session (``session_replication_role = replica``), then plain SQL.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, text

from carecli.data import audit, audit_seal
from carecli.data import retention as retention_sql
from carecli.data.actor import Actor
from carecli.data.crypto.master import LocalMasterKey, generate_master_key
from tests.platform_fixtures import Platform

pytestmark = pytest.mark.server


@pytest.fixture
def master() -> LocalMasterKey:
    return LocalMasterKey(generate_master_key(), "test-seal")


def write_rows(platform: Platform, count: int, *, entity: str = "probe", created_at: datetime | None = None) -> list:
    """``count`` audit rows through carecli's own writer (or dated ``created_at``, as an old row would be)."""
    actor = Actor.system("cli")
    with platform.engine.begin() as connection:
        if created_at is None:
            for _ in range(count):
                audit.write(connection, actor, entity, uuid.uuid4(), "read", None, {"purpose": "test"})
        else:
            for index in range(count):
                connection.execute(text(
                    "INSERT INTO audit_logs (id, entity_type, entity_id, action, new_values, created_at) "
                    "VALUES (:id, :entity, :entity_id, 'read', '{\"purpose\": \"old\"}', :at)"),
                    {"id": uuid.uuid4(), "entity": entity, "entity_id": uuid.uuid4(),
                     "at": created_at + timedelta(seconds=index)})
    return platform.sql("SELECT id, created_at FROM audit_logs WHERE entity_type = :e ORDER BY created_at, id",
                        e=entity)


def tamper(platform: Platform, statement: str, **params) -> None:
    """As the owner with the triggers off."""
    with platform.engine.begin() as connection:
        connection.execute(text("SET LOCAL session_replication_role = replica"))
        connection.execute(text(statement), params)


def findings(report: audit_seal.VerifyReport) -> set[tuple[str, str]]:
    return {(finding.what, finding.ref) for finding in report.findings}


def test_sealed_history_verifies_clean_and_a_second_seal_chains_on(platform: Platform, master) -> None:
    write_rows(platform, 30)
    first = audit_seal.seal(platform.engine, master)
    assert [s.seal_no for s in first.sealed] == [1] and first.rows == platform.scalar("SELECT count(*) FROM audit_logs")
    again = audit_seal.seal(platform.engine, master)
    assert again.sealed == []  # nothing new
    write_rows(platform, 5)
    second = audit_seal.seal(platform.engine, master)
    assert [s.seal_no for s in second.sealed] == [2] and second.rows == 5
    report = audit_seal.verify(platform.engine, master)
    assert report.intact, report.findings
    assert report.seals == 2 and report.rows_checked == platform.scalar("SELECT count(*) FROM audit_logs")
    assert report.unsealed == 0


def test_large_histories_are_cut_into_seals_of_at_most_max_rows(platform: Platform, master) -> None:
    write_rows(platform, 25)
    report = audit_seal.seal(platform.engine, master, max_rows=10)
    assert len(report.sealed) >= 3 and all(s.row_count <= 10 for s in report.sealed)
    assert audit_seal.verify(platform.engine, master).intact


def test_one_timestamp_holding_more_than_max_rows_goes_into_one_seal(platform: Platform, master) -> None:
    with platform.engine.begin() as connection:  # one transaction: every row gets the same now()
        for _ in range(12):
            connection.execute(text("INSERT INTO audit_logs (entity_type, entity_id, action) "
                                    "VALUES ('bulk', gen_random_uuid(), 'create')"))
    report = audit_seal.seal(platform.engine, master, max_rows=5)
    assert report.rows == platform.scalar("SELECT count(*) FROM audit_logs")
    assert audit_seal.verify(platform.engine, master).intact


def old_cuts(times: list[datetime], start: datetime | None, horizon: datetime,
             max_rows: int) -> list[tuple[datetime | None, datetime, int]]:
    """The seals' ranges as sealing cut them before it read the rows once per call: per seal, the time of
    the row past ``max_rows`` (an ``OFFSET``), then that range's rows; one time over ``max_rows`` rows
    whole, ending a microsecond after it. (range_start, range_end, rows) each."""
    seals: list[tuple[datetime | None, datetime, int]] = []
    while start is None or start < horizon:
        rows = sorted(t for t in times if (start is None or t >= start) and t < horizon)
        end = rows[max_rows] if len(rows) > max_rows else horizon
        taken = [t for t in rows if t < end]
        if not taken:
            if end == horizon:
                break
            end += timedelta(microseconds=1)
            taken = [t for t in rows if t < end]
        seals.append((start, end, len(taken)))
        start = end
        if end == horizon:
            break
    return seals


def _counts(times: list[datetime]) -> list[tuple[datetime, int]]:
    return sorted(Counter(times).items())


@settings(max_examples=300, deadline=None)
@given(offsets=st.lists(st.integers(0, 30), max_size=60), max_rows=st.integers(1, 8),
       start=st.one_of(st.none(), st.integers(-1, 5)), horizon=st.integers(25, 40))
def test_seals_are_cut_where_one_range_query_per_seal_cut_them(offsets: list[int], max_rows: int, start: int | None,
                                                               horizon: int) -> None:
    """The ranges worked out from the counts per time are those the per-seal OFFSET query gave: at most
    max_rows rows each, a time never split, one crowded time a seal of its own."""
    base = datetime(2026, 1, 1)
    begin = None if start is None else base + timedelta(seconds=start)
    end = base + timedelta(seconds=horizon)
    times = [base + timedelta(seconds=o) for o in offsets
             if (begin is None or base + timedelta(seconds=o) >= begin) and o < horizon]
    expected = old_cuts(times, begin, end, max_rows)
    assert audit_seal.cut(_counts(times), begin, end, max_rows) == [(s, e) for s, e, _ in expected]


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(groups=st.lists(st.integers(1, 7), min_size=1, max_size=8), max_rows=st.integers(1, 6))
def test_sealing_reads_the_rows_twice_however_many_seals_it_makes(platform: Platform, master, groups: list[int],
                                                                  max_rows: int) -> None:
    """Rows in groups sharing a time (as an import's batches write them), sealed in seals of max_rows:
    the seals are cut as before, each holds its range's rows, the history verifies, and audit_logs is
    read by two statements in all (a first load builds its time index only at the end: each read
    without it is a scan of the whole table)."""
    tamper(platform, "DELETE FROM audit_seals; DELETE FROM audit_logs")  # each example starts a chain of its own
    moment = datetime(2026, 1, 1)
    with platform.engine.begin() as connection:
        for group, size in enumerate(groups):
            connection.execute(text(
                "INSERT INTO audit_logs (entity_type, entity_id, action, created_at) "
                "SELECT 'probe', gen_random_uuid(), 'read', :at FROM generate_series(1, :n)"),
                {"at": moment + timedelta(seconds=group), "n": size})
    times = [row.created_at for row in platform.sql("SELECT created_at FROM audit_logs")]
    reads: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        if re.search(r"\bFROM audit_logs\b", statement):
            reads.append(statement)

    event.listen(platform.engine, "before_cursor_execute", count)
    try:
        report = audit_seal.seal(platform.engine, master, max_rows=max_rows)
    finally:
        event.remove(platform.engine, "before_cursor_execute", count)
    assert report.horizon is not None
    expected = old_cuts(times, None, report.horizon.at, max_rows)
    assert [(s.range_start, s.range_end, s.row_count) for s in report.sealed] == expected
    assert len(reads) == 2
    verified = audit_seal.verify(platform.engine, master)
    assert verified.intact, verified.findings
    assert verified.rows_checked == len(times)


def test_a_forged_backdated_insert_an_update_a_delete_and_a_swap_are_each_reported(platform: Platform,
                                                                                   master) -> None:
    rows = write_rows(platform, 8)
    audit_seal.seal(platform.engine, master)
    assert audit_seal.verify(platform.engine, master).intact

    forged = uuid.uuid4()
    # A row dated inside sealed time, inserted with the app's own rights (no trigger stops an INSERT).
    with platform.engine.begin() as connection:
        connection.execute(text("INSERT INTO audit_logs (id, entity_type, entity_id, action, created_at) "
                                "VALUES (:id, 'probe', gen_random_uuid(), 'read', :at)"),
                           {"id": forged, "at": rows[3].created_at + timedelta(microseconds=1)})
    tamper(platform, "UPDATE audit_logs SET new_values = '{\"purpose\": \"nothing to see\"}' WHERE id = :id",
           id=rows[1].id)
    tamper(platform, "DELETE FROM audit_logs WHERE id = :id", id=rows[5].id)
    # A swapped pair: each row takes the other's time (their order in the history is swapped).
    tamper(platform, "UPDATE audit_logs SET created_at = CASE WHEN id = :a THEN CAST(:tb AS timestamp) "
           "ELSE CAST(:ta AS timestamp) END WHERE id IN (:a, :b)",
           a=rows[6].id, b=rows[7].id, ta=rows[6].created_at, tb=rows[7].created_at)

    report = audit_seal.verify(platform.engine, master)
    assert not report.intact
    found = findings(report)
    assert ("inserted", str(forged)) in found
    assert ("altered", str(rows[1].id)) in found
    assert ("deleted", str(rows[5].id)) in found
    assert ("moved", str(rows[6].id)) in found and ("moved", str(rows[7].id)) in found
    untouched = {str(rows[i].id) for i in (0, 2, 3, 4)}
    assert not untouched & {ref for _, ref in found}
    # Findings name rows by id and time only.
    for finding in report.findings:
        assert "nothing to see" not in finding.detail


def test_a_changed_removed_or_forged_seal_breaks_the_chain(platform: Platform, master) -> None:
    for _ in range(3):
        write_rows(platform, 3)
        audit_seal.seal(platform.engine, master)
    assert platform.scalar("SELECT count(*) FROM audit_seals") == 3
    tamper(platform, "UPDATE audit_seals SET row_count = row_count + 1 WHERE seal_no = 2")
    assert ("seal altered", "seal 2") in findings(audit_seal.verify(platform.engine, master))

    # A seal rebuilt consistently (head recomputed) without the seal key does not carry a valid MAC.
    row = platform.sql("SELECT * FROM audit_seals WHERE seal_no = 2")[0]
    head = audit_seal.head_of(bytes(row.prev_head), 2, row.kind, row.range_start, row.range_end, row.bound_id,
                              row.row_count, platform.scalar("SELECT sha256(manifest) FROM audit_seals "
                                                             "WHERE seal_no = 2"))
    tamper(platform, "UPDATE audit_seals SET head = :head, mac = :mac WHERE seal_no = 2", head=head,
           mac=audit_seal.mac_of(b"\x00" * 32, head))
    found = findings(audit_seal.verify(platform.engine, master))
    assert ("seal forged", "seal 2") in found and ("chain broken", "seal 3") in found

    tamper(platform, "DELETE FROM audit_seals WHERE seal_no = 2")
    found = findings(audit_seal.verify(platform.engine, master))
    assert ("seal missing", "seal 2") in found


def test_the_seals_are_append_only_for_the_owner_too(platform: Platform, master) -> None:
    write_rows(platform, 2)
    audit_seal.seal(platform.engine, master)
    for statement in ("UPDATE audit_seals SET row_count = 0", "DELETE FROM audit_seals", "TRUNCATE audit_seals"):
        with pytest.raises(Exception, match="append-only"), platform.engine.begin() as connection:
            connection.execute(text(statement))


def test_a_transaction_that_commits_after_a_seal_is_sealed_later_without_a_false_alarm(platform: Platform,
                                                                                        master) -> None:
    write_rows(platform, 3)
    # A writer that began before the seal and commits after it, its row dated at its start (now()).
    late = platform.engine.connect()
    transaction = late.begin()
    late.execute(text("SELECT 1"))  # the transaction has started: now() is fixed
    time.sleep(0.05)
    write_rows(platform, 3)  # others commit meanwhile
    report = audit_seal.seal(platform.engine, master)
    late_id = uuid.uuid4()
    late.execute(text("INSERT INTO audit_logs (id, entity_type, entity_id, action) "
                      "VALUES (:id, 'late', gen_random_uuid(), 'update')"), {"id": late_id})
    transaction.commit()
    late.close()
    late_at = platform.scalar("SELECT created_at FROM audit_logs WHERE id = :id", id=late_id)
    # The seal stopped before the open transaction's start, so the late row is not in sealed time...
    assert report.horizon is not None and report.horizon.at <= late_at
    assert audit_seal.verify(platform.engine, master).intact
    # ... and the next seal takes it.
    audit_seal.seal(platform.engine, master)
    final = audit_seal.verify(platform.engine, master)
    assert final.intact and final.unsealed == 0


def test_sealing_under_concurrent_writers_and_sealers_verifies_clean(platform: Platform, master) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        actor = Actor.system("cli")
        try:
            while not stop.is_set():
                with platform.engine.begin() as connection:
                    connection.execute(text("SELECT 1"))
                    time.sleep(0.003)  # some work between the start and the row
                    for _ in range(3):
                        audit.write(connection, actor, "busy", uuid.uuid4(), "read", None, {"purpose": "load"})
                    connection.execute(text("INSERT INTO audit_logs (entity_type, entity_id, action) "
                                            "VALUES ('busy', gen_random_uuid(), 'create')"))  # dated now()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def sealer() -> None:
        try:
            while not stop.is_set():
                audit_seal.seal(platform.engine, master, max_rows=50)
                time.sleep(0.01)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(3)] + [threading.Thread(target=sealer)
                                                                     for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    audit_seal.seal(platform.engine, master)
    report = audit_seal.verify(platform.engine, master)
    assert report.intact, report.findings[:5]
    assert report.seals > 3 and report.unsealed == 0
    assert report.rows_checked == platform.scalar("SELECT count(*) FROM audit_logs")


def test_a_retention_purge_leaves_a_purge_seal_and_the_history_still_verifies(platform: Platform, master) -> None:
    old = write_rows(platform, 7, entity="old", created_at=datetime(2012, 3, 1))
    write_rows(platform, 4)
    audit_seal.seal(platform.engine, master)
    cutoff = datetime(2012, 3, 1, 0, 0, 5)  # the first five old rows
    removed_total = 0
    while True:  # as `carecli retention purge --audit` does, in batches of two
        with platform.engine.begin() as connection:
            batch, removed = retention_sql.purge_audit_batch(connection, cutoff, 2)
            audit_seal.record_purge(connection, master, removed)
        removed_total += batch.rows
        if batch.rows < 2:
            break
    assert removed_total == 5
    report = audit_seal.verify(platform.engine, master)
    assert report.intact, report.findings
    assert report.rows_purged == 5 and report.rows_checked == platform.scalar("SELECT count(*) FROM audit_logs")

    # A row deleted outside the purge (no purge seal) is still reported.
    tamper(platform, "DELETE FROM audit_logs WHERE id = :id", id=old[6].id)
    assert ("deleted", str(old[6].id)) in findings(audit_seal.verify(platform.engine, master))


def test_verify_since_checks_later_seals_rows_and_the_whole_chain(platform: Platform, master) -> None:
    early = write_rows(platform, 3, entity="early", created_at=datetime(2020, 1, 1))
    audit_seal.seal(platform.engine, master)
    since = platform.scalar("SELECT clock_timestamp() AT TIME ZONE 'UTC'")
    write_rows(platform, 3)
    audit_seal.seal(platform.engine, master)
    tamper(platform, "UPDATE audit_logs SET action = 'x' WHERE id = :id", id=early[0].id)
    assert audit_seal.verify(platform.engine, master, since=since).intact  # the altered row is before --since
    assert ("altered", str(early[0].id)) in findings(audit_seal.verify(platform.engine, master))


def test_the_seal_key_is_wrapped_by_the_master_key_and_follows_a_rewrap(platform: Platform, master) -> None:
    write_rows(platform, 2)
    audit_seal.seal(platform.engine, master)
    stored = platform.sql("SELECT id, wrapped_key FROM audit_seal_keys")
    assert len(stored) == 1
    other = LocalMasterKey(generate_master_key(), "other")
    with pytest.raises(Exception):
        audit_seal.verify(platform.engine, other)  # another master key cannot unwrap it
    with platform.engine.begin() as connection:
        assert audit_seal.rewrap_seal_keys(connection, master, other) == 1
    assert audit_seal.verify(platform.engine, other).intact


def timed_rows(platform: Platform, count: int) -> list:
    """``count`` rows, each with its own time (clock_timestamp), in one transaction."""
    with platform.engine.begin() as connection:
        return list(connection.execute(text(
            "INSERT INTO audit_logs (entity_type, entity_id, action, new_values, created_at) "
            "SELECT 'probe', gen_random_uuid(), 'read', jsonb_build_object('n', g), "
            "clock_timestamp() AT TIME ZONE 'UTC' FROM generate_series(1, :n) g "
            "RETURNING id, created_at"), {"n": count}).all())


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_mix_of_alterations_deletions_and_backdated_inserts_is_reported_exactly(platform: Platform, master,
                                                                                     data: st.DataObject) -> None:
    """Whatever is done to which rows, across seals of any size and with any number of verifying connections,
    verify reports exactly those rows, each as what happened to it, and nothing else of theirs."""
    rows = sorted(timed_rows(platform, data.draw(st.integers(1, 14), label="rows")), key=lambda r: (r.created_at, r.id))
    audit_seal.seal(platform.engine, master, max_rows=data.draw(st.integers(1, 6), label="max_rows"))
    ops = data.draw(st.lists(st.sampled_from(["keep", "alter", "delete", "insert after"]),
                             min_size=len(rows), max_size=len(rows)), label="ops")
    expected: set[tuple[str, str]] = set()
    mine = {str(row.id) for row in rows}
    for row, op in zip(rows, ops, strict=True):
        if op == "alter":
            tamper(platform, "UPDATE audit_logs SET new_values = '{\"n\": -1}' WHERE id = :id", id=row.id)
            expected.add(("altered", str(row.id)))
        elif op == "delete":
            tamper(platform, "DELETE FROM audit_logs WHERE id = :id", id=row.id)
            expected.add(("deleted", str(row.id)))
        elif op == "insert after":
            forged = uuid.uuid4()
            with platform.engine.begin() as connection:  # the app's rights are enough for an INSERT
                connection.execute(text("INSERT INTO audit_logs (id, entity_type, entity_id, action, created_at) "
                                        "VALUES (:id, 'probe', gen_random_uuid(), 'read', :at)"),
                                   {"id": forged, "at": row.created_at + timedelta(microseconds=1)})
            mine.add(str(forged))
            expected.add(("inserted", str(forged)))
    report = audit_seal.verify(platform.engine, master, workers=data.draw(st.integers(1, 3), label="workers"))
    assert {(f.what, f.ref) for f in report.findings if f.ref in mine} == expected


def test_purges_across_many_seals_verify_clean_with_several_connections(platform: Platform, master) -> None:
    old = write_rows(platform, 9, entity="old", created_at=datetime(2013, 5, 1))
    write_rows(platform, 3)
    audit_seal.seal(platform.engine, master, max_rows=2)
    while True:  # purged in batches of three: purge seals that straddle the seals' ranges
        with platform.engine.begin() as connection:
            batch, removed = retention_sql.purge_audit_batch(connection, datetime(2013, 5, 1, 0, 0, 7), 3)
            audit_seal.record_purge(connection, master, removed)
        if batch.rows < 3:
            break
    for workers in (1, 2, 4):
        report = audit_seal.verify(platform.engine, master, workers=workers)
        assert report.intact, report.findings
        assert report.rows_purged == 7
    tamper(platform, "DELETE FROM audit_logs WHERE id = :id", id=old[8].id)
    assert findings(audit_seal.verify(platform.engine, master, workers=3)) == {("deleted", str(old[8].id))}


def _wait_for_a_seal(sealer: audit_seal.Sealer) -> None:
    deadline = time.monotonic() + 30
    while sealer.seals == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sealer.seals >= 1


def test_a_sealer_seals_as_it_goes_and_once_more_when_stopped(platform: Platform, master) -> None:
    sealer = audit_seal.Sealer(platform.engine, lambda: master, every=0.05, name="test").start()
    try:
        timed_rows(platform, 3)
        _wait_for_a_seal(sealer)
        timed_rows(platform, 2)
    finally:
        sealer.stop()  # the final seal takes the last rows
    report = audit_seal.verify(platform.engine, master)
    assert report.intact and report.unsealed == 0 and report.rows_checked == platform.scalar(
        "SELECT count(*) FROM audit_logs")


def test_seal_soon_seals_in_the_thread_at_once_not_at_the_next_tick(platform: Platform, master) -> None:
    """An import asks for its seal once its rows are in, to run beside its index builds."""
    sealer = audit_seal.Sealer(platform.engine, lambda: master, every=3600, name="test").start()
    try:
        timed_rows(platform, 3)
        time.sleep(0.2)
        assert sealer.seals == 0  # an hour to the next tick
        sealer.seal_soon()
        _wait_for_a_seal(sealer)
        timed_rows(platform, 2)
    finally:
        started = time.monotonic()
        sealer.stop()  # wakes the thread (no hour's wait), and the final seal takes the last rows
        assert time.monotonic() - started < 30
    report = audit_seal.verify(platform.engine, master)
    assert report.intact and report.unsealed == 0


def test_a_sealer_whose_key_cannot_be_had_logs_and_goes_on(platform: Platform, caplog) -> None:
    def no_key() -> LocalMasterKey:
        raise RuntimeError("no key here")

    sealer = audit_seal.Sealer(platform.engine, no_key, every=3600, name="test")
    with caplog.at_level("WARNING", logger="carecli.audit"):
        assert sealer.seal_now() is None
        sealer.stop()
    assert sealer.failures == 2 and platform.scalar("SELECT count(*) FROM audit_seals") == 0
    assert [r.getMessage() for r in caplog.records] == ["audit seal failed", "audit seal failed"]
    assert all(getattr(r, "reason", None) == "RuntimeError" for r in caplog.records)

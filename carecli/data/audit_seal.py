"""Sealed audit history: alterations of ``audit_logs`` are detected, not only refused.

The append-only triggers stop the app's role from changing audit rows, but
the table's owner (or a superuser) can switch them off, and anyone with the
app's credentials can INSERT a row dated in the past. Seals make such
changes visible:

* Every audit row has an *entry*: its id, its ``created_at`` (microseconds)
  and the first 16 bytes of SHA-256 over all its columns, canonically
  quoted (computed by the server, so reading 10M rows streams).
* A *seal* covers the rows created in ``[range_start, range_end)``: it keeps
  their entries in ``(created_at, id)`` order (the manifest), the count, the
  previous seal's head, its own head (SHA-256 over all of that) and an HMAC
  of the head under a *seal key*: 256 random bits wrapped by the master key
  like the data keys (``audit_seal_keys``). Access to the database alone
  cannot make a seal verify.
* A *purge seal* records the entries a retention purge removed, in the
  order it removed them, so the purged rows are accounted for, not missing.

**Only what can no longer change is sealed.** A row is written with a
``created_at`` no earlier than its transaction's start (the column default
``now()``, or ``clock_timestamp()``). A seal's end (its horizon) is the
earlier of the clock, read first, and the start of every transaction still
open in the database: every row dated before it is committed (or never
will be). Transactions of other roles whose start this role may not see
(``pg_stat_activity`` hides it without ``pg_read_all_stats``) hold the
horizon back by :data:`HIDDEN_GRACE` instead.

``verify`` walks the chain (numbering, links, heads, MACs), then compares
each seal's manifest with the rows in its range, and reports each altered,
deleted, moved (a changed ``created_at``: reordered) or inserted-into-sealed-
time row by id and time, never by value. Sealers take an advisory lock, so
any number may run at once (cron, the SSH host, imports).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import re
import secrets
import struct
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, insert, select, text, update
from sqlalchemy.types import DateTime

from carecli.data.crypto.master import KEY_BYTES, MasterKey
from carecli.data.ids import new_id
from carecli.data.models.platform import AuditSeal, AuditSealKey
from carecli.errors import KeyUnavailable

log = logging.getLogger("carecli.audit")

SEALS = AuditSeal.__table__
SEAL_KEYS = AuditSealKey.__table__

#: the chain's first ``prev_head``
GENESIS = bytes(32)
ENTRY_BYTES = 40  # id 16, created_at 8 (microseconds since 1970, big-endian), digest 16
#: rows per seal at most (a seal's manifest is ENTRY_BYTES each: 4 MB), unless one timestamp holds more
SEAL_MAX_ROWS = 100_000
#: how far the horizon stays behind the clock while other roles' transactions are hidden from this role
HIDDEN_GRACE = timedelta(minutes=15)
#: pg_advisory_xact_lock key of the sealers (and of retention purges of audit rows)
SEAL_LOCK = 0x63617265_61756474  # "caread t"
_HEAD_PREFIX = b"carecli/audit-seal/v1\x00"
_MAC_PREFIX = b"carecli/audit-seal-mac/v1\x00"
_EPOCH = datetime(1970, 1, 1)
_NO_TIME = b"\xff" * 8

#: an audit row's entry, computed by the server (every column, each quoted, so the text is unambiguous)
ENTRY_SQL = (
    "uuid_send(a.id) || int8send(round(extract(epoch FROM a.created_at) * 1000000)::int8) || "
    "substring(sha256(convert_to(concat_ws(chr(31), a.id::text, quote_nullable(a.user_id::text), "
    "quote_nullable(a.entity_type), a.entity_id::text, quote_nullable(a.action), "
    "quote_nullable(a.old_values::text), quote_nullable(a.new_values::text), "
    "quote_nullable(a.ip_address::text), quote_nullable(a.user_agent), "
    "quote_nullable(to_char(a.created_at, 'YYYY-MM-DD\"T\"HH24:MI:SS.US'))), 'UTF8')) FROM 1 FOR 16)"
)
# (coalesce, not "IS NULL OR": the range must stay an index range scan of ix_audit_logs_created_at)
_RANGE = ("a.created_at >= coalesce(CAST(:start AS timestamp), '-infinity'::timestamp) "
          "AND a.created_at < CAST(:end AS timestamp)")


def micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _time_bytes(moment: datetime | None) -> bytes:
    return _NO_TIME if moment is None else struct.pack(">q", micros(moment))


def head_of(prev_head: bytes, seal_no: int, kind: str, range_start: datetime | None, range_end: datetime,
            bound_id: uuid.UUID | None, row_count: int, manifest_hash: bytes) -> bytes:
    """A seal's head: SHA-256 over the previous head and everything the seal says."""
    digest = hashlib.sha256(_HEAD_PREFIX)
    for part in (prev_head, struct.pack(">q", seal_no), kind.encode("ascii") + b"\x00", _time_bytes(range_start),
                 _time_bytes(range_end), bound_id.bytes if bound_id else bytes(16), struct.pack(">q", row_count),
                 manifest_hash):
        digest.update(part)
    return digest.digest()


def mac_of(key: bytes, head: bytes) -> bytes:
    return hmac.digest(key, _MAC_PREFIX + head, hashlib.sha256)


def entries_of(manifest: bytes) -> Iterator[bytes]:
    for offset in range(0, len(manifest), ENTRY_BYTES):
        yield manifest[offset:offset + ENTRY_BYTES]


def entry_id(entry: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=entry[:16])


def entry_time(entry: bytes) -> datetime:
    return _EPOCH + timedelta(microseconds=struct.unpack(">q", entry[16:24])[0])


# -- keys ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SealKey:
    id: uuid.UUID
    key: bytes = field(repr=False)


def seal_key(connection: Connection, master: MasterKey, *, create: bool) -> SealKey | None:
    """The newest seal key, unwrapped (made on first use when ``create``; callers hold SEAL_LOCK)."""
    row = connection.execute(select(SEAL_KEYS.c.id, SEAL_KEYS.c.wrapped_key)
                             .order_by(SEAL_KEYS.c.created_at.desc(), SEAL_KEYS.c.id).limit(1)).first()
    if row is not None:
        return SealKey(row.id, master.unwrap(bytes(row.wrapped_key), data_key_id=row.id))
    if not create:
        return None
    key_id, raw = new_id(), secrets.token_bytes(KEY_BYTES)
    connection.execute(insert(SEAL_KEYS).values(id=key_id, wrapped_key=master.wrap(raw, data_key_id=key_id),
                                                master_key_id=master.key_id))
    return SealKey(key_id, raw)


def seal_keys(connection: Connection, master: MasterKey) -> dict[uuid.UUID, bytes]:
    """Every seal key, unwrapped (verification)."""
    return {row.id: master.unwrap(bytes(row.wrapped_key), data_key_id=row.id)
            for row in connection.execute(select(SEAL_KEYS.c.id, SEAL_KEYS.c.wrapped_key))}


def rewrap_seal_keys(connection: Connection, old_master: MasterKey, new_master: MasterKey) -> int:
    """Re-wrap the seal keys under a new master key (with the data keys, in their transaction)."""
    rows = connection.execute(select(SEAL_KEYS.c.id, SEAL_KEYS.c.wrapped_key).with_for_update()).all()
    for row in rows:
        raw = old_master.unwrap(bytes(row.wrapped_key), data_key_id=row.id)
        connection.execute(update(SEAL_KEYS).where(SEAL_KEYS.c.id == row.id).values(
            wrapped_key=new_master.wrap(raw, data_key_id=row.id), master_key_id=new_master.key_id))
    return len(rows)


# -- sealing -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Horizon:
    """Up to when rows can no longer change: ``at``; ``hidden`` transactions of other roles held it back."""

    at: datetime
    hidden: int


def horizon(connection: Connection) -> Horizon:
    """The seal horizon (see the module's docstring): the clock first, then the open transactions."""
    clock = connection.execute(text("SELECT clock_timestamp() AT TIME ZONE 'UTC'")).scalar_one()
    row = connection.execute(text(
        "SELECT min(xact_start) FILTER (WHERE state IS NOT NULL) AT TIME ZONE 'UTC' AS oldest, "
        "count(*) FILTER (WHERE state IS NULL AND usename IS NOT NULL) AS hidden "
        "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")).one()
    at = clock if row.oldest is None else min(clock, row.oldest)
    if row.hidden:
        at = min(at, clock - HIDDEN_GRACE)
    return Horizon(at, int(row.hidden))


@dataclass(frozen=True)
class SealInfo:
    seal_no: int
    kind: str
    range_start: datetime | None
    range_end: datetime
    row_count: int
    head: bytes


@dataclass
class SealReport:
    sealed: list[SealInfo]
    horizon: Horizon | None
    last: SealInfo | None

    @property
    def rows(self) -> int:
        return sum(seal.row_count for seal in self.sealed)


def _last(connection: Connection) -> tuple[int, bytes, datetime | None]:
    """(last seal number, its head, the end of the last range sealed) of the chain."""
    row = connection.execute(select(SEALS.c.seal_no, SEALS.c.head).order_by(SEALS.c.seal_no.desc()).limit(1)).first()
    end = connection.execute(select(SEALS.c.range_end).where(SEALS.c.kind == "seal")
                             .order_by(SEALS.c.seal_no.desc()).limit(1)).scalar()
    return (row.seal_no, bytes(row.head), end) if row is not None else (0, GENESIS, None)


def _append(connection: Connection, key: SealKey, kind: str, range_start: datetime | None, range_end: datetime,
            bound_id: uuid.UUID | None, manifest: bytes) -> SealInfo:
    """Add a seal to the chain (the caller holds SEAL_LOCK)."""
    number, prev_head, _ = _last(connection)
    seal_no, count = number + 1, len(manifest) // ENTRY_BYTES
    head = head_of(prev_head, seal_no, kind, range_start, range_end, bound_id, count, hashlib.sha256(manifest).digest())
    connection.execute(insert(SEALS).values(
        seal_no=seal_no, kind=kind, range_start=range_start, range_end=range_end, bound_id=bound_id,
        row_count=count, manifest=manifest, prev_head=prev_head, head=head, mac=mac_of(key.key, head),
        key_id=key.id, sealed_at=text("clock_timestamp() AT TIME ZONE 'UTC'")))
    return SealInfo(seal_no, kind, range_start, range_end, count, head)


_ACTUAL = text(f"SELECT string_agg(entry, ''::bytea ORDER BY created_at, id) FROM "
               f"(SELECT {ENTRY_SQL} AS entry, a.created_at, a.id FROM audit_logs a WHERE {_RANGE}) s").bindparams(
    bindparam("start", type_=DateTime()), bindparam("end", type_=DateTime()))
#: how many rows each time holds in a range (in time order): where its seals end is worked out from these
_COUNTS = text(f"SELECT a.created_at, count(*) FROM audit_logs a WHERE {_RANGE} GROUP BY a.created_at "
               "ORDER BY a.created_at").bindparams(bindparam("start", type_=DateTime()),
                                                   bindparam("end", type_=DateTime()))
#: every seal's manifest of a range in one pass: a row goes to the seal whose end is the first above its time
_MANIFESTS = text(
    f"SELECT width_bucket(s.created_at, CAST(:ends AS timestamp[])) AS part, "
    f"string_agg(s.entry, ''::bytea ORDER BY s.created_at, s.id) AS manifest FROM "
    f"(SELECT {ENTRY_SQL} AS entry, a.created_at, a.id FROM audit_logs a WHERE {_RANGE}) s "
    f"GROUP BY 1 ORDER BY 1").bindparams(bindparam("start", type_=DateTime()), bindparam("end", type_=DateTime()))
_MICROSECOND = timedelta(microseconds=1)


def cut(counts: Iterable[tuple[datetime, int]], start: datetime | None, end: datetime,
        max_rows: int) -> list[tuple[datetime | None, datetime]]:
    """The seals' ranges over rows counted per time (``counts``, in time order, all in ``[start, end)``).

    Each seal takes at most ``max_rows`` rows and ends at the time of the first row it cannot take (rows of
    one time are never split between seals); one time holding more than ``max_rows`` rows is a seal of its
    own, ending a microsecond after it. The last seal ends at ``end``; no rows, no seal. ``counts`` is
    read once, in order: only the ranges are kept.
    """
    ranges: list[tuple[datetime | None, datetime]] = []
    begin, taken = start, 0
    for moment, count in counts:
        if taken and taken + count > max_rows:
            ranges.append((begin, moment))
            begin, taken = moment, 0
        if count > max_rows:  # more than a seal's rows share this time: one seal takes them all
            ranges.append((begin, moment + _MICROSECOND))
            begin = moment + _MICROSECOND
            continue
        taken += count
    if taken:
        ranges.append((begin, end))
    return ranges


def seal(engine: Engine, master: MasterKey, *, max_rows: int = SEAL_MAX_ROWS) -> SealReport:
    """Seal every audit row that can no longer change and is not sealed yet (one seal per ``max_rows``).

    The server computes and orders the entries (one bytea per seal): Python handles no row. The rows
    are read twice whatever their number (their count per time, then every seal's manifest in one
    pass), not twice per seal: during a first load the time index is built only after the data, and
    each read was then a scan of the whole table (3M rows: 22.0 s, now 16.3 s; `audit_seal_bench.py
    --no-time-index`). With the index the old per-seal reads ran in parallel and were quicker (12.8
    against 15.5 s at 3M rows), on two cores instead of one. One transaction holds the whole call.
    """
    report = SealReport([], None, None)
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": SEAL_LOCK})
        key = seal_key(connection, master, create=True)
        assert key is not None
        report.horizon = found = horizon(connection)
        _, _, start = _last(connection)
        if start is not None and found.at <= start:
            return report
        window = {"start": start, "end": found.at}
        counts = connection.execute(_COUNTS, window, execution_options={"stream_results": True, "yield_per": 10_000})
        ranges = cut(((row[0], row[1]) for row in counts), start, found.at, max_rows)
        counts.close()
        if not ranges:
            return report
        # A seal's manifest at a time (about 4 MB): the connection's own options stay as they are for the inserts.
        parts = connection.execute(_MANIFESTS, {**window, "ends": [range_end for _, range_end in ranges]},
                                   execution_options={"stream_results": True, "yield_per": 1})
        try:
            rows = iter(parts)
            for number, (range_start, range_end) in enumerate(ranges):
                row = next(rows, None)
                # Rows dated before the horizon cannot come or go meanwhile (it is the start of every open
                # transaction, and purges hold SEAL_LOCK); were one seal's rows missing all the same, the
                # chain stops before it rather than skip a range.
                if row is None or row.part != number or not row.manifest:
                    log.warning("audit seal stopped: a range's rows changed while it was sealed")
                    break
                info = _append(connection, key, "seal", range_start, range_end, None, bytes(row.manifest))
                report.sealed.append(info)
                report.last = info
        finally:
            parts.close()
    return report


#: how often a long-running process (the SSH host, an import) seals while it runs, in seconds
SEAL_EVERY_SECONDS = {"ssh": 300.0, "import": 60.0}


class Sealer:
    """Seals as a process goes: in a daemon thread every ``every`` seconds, and once more at :meth:`stop`.

    For the SSH host and long imports, so their audit rows do not wait for cron. A failed seal is
    logged (its kind only: nothing of a row) and tried again next time; it never stops the work.
    ``master`` is called for each seal, so a key that cannot be loaded now may be later.
    """

    def __init__(self, engine: Engine, master: Callable[[], MasterKey], *, every: float, name: str) -> None:
        self.engine, self.master, self.every, self.name = engine, master, every, name
        self._stopping = threading.Event()
        #: set to seal now rather than at the next tick (:meth:`seal_soon`), and by :meth:`stop`
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.seals = 0
        self.failures = 0

    def start(self) -> Sealer:
        self._thread = threading.Thread(target=self._run, name=f"carecli-sealer-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            self._wake.wait(self.every)
            if self._stopping.is_set():
                return
            self._wake.clear()
            self.seal_now()

    def seal_soon(self) -> None:
        """Seal in the thread now, not at the next tick: an import's rows are all in, and the database has
        its indexes to build and statistics to gather meanwhile (the seal, server work too, runs beside them
        instead of after them). Nothing without a running thread; :meth:`stop` still seals once more."""
        self._wake.set()

    def seal_now(self) -> SealReport | None:
        try:
            report = seal(self.engine, self.master())
        except Exception as exc:  # noqa: BLE001 - sealing is retried; the work it follows goes on
            self.failures += 1
            log.warning("audit seal failed", extra={"sealer": self.name, "reason": type(exc).__name__})
            return None
        self.seals += len(report.sealed)
        if report.sealed:
            log.info("audit sealed", extra={"sealer": self.name, "seals": len(report.sealed), "rows": report.rows})
        return report

    def stop(self, *, final: bool = True) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if final:
            self.seal_now()


def record_purge(connection: Connection, master: MasterKey, removed: list[bytes]) -> SealInfo | None:
    """In a purge's transaction: the purge seal of the entries it removed (in (created_at, id) order)."""
    if not removed:
        return None
    connection.execute(text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": SEAL_LOCK})
    key = seal_key(connection, master, create=True)
    assert key is not None
    last = removed[-1]
    return _append(connection, key, "purge", entry_time(removed[0]), entry_time(last), entry_id(last),
                   b"".join(removed))


def sealed_until(connection: Connection) -> datetime | None:
    """The end of the last range sealed (rows created before it are sealed), or None."""
    return _last(connection)[2]


def purge_batch_sql(limit_name: str = "limit") -> str:
    """The rows a purge removes next, with their entries: sealed ones only, oldest first."""
    return (f"SELECT a.id, a.created_at, {ENTRY_SQL} AS entry FROM audit_logs a "
            "WHERE a.created_at < CAST(:cutoff AS timestamp) ORDER BY a.created_at, a.id "
            f"LIMIT :{limit_name}")


# -- verifying -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One thing wrong: ``what`` happened to the row (or seal) ``ref`` created at ``at``; no values."""

    what: str
    ref: str
    at: datetime | None
    seal_no: int | None
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"what": self.what, "id": self.ref, "at": self.at.isoformat() if self.at else None,
                "seal": self.seal_no, "detail": self.detail}


@dataclass
class VerifyReport:
    seals: int = 0
    rows_checked: int = 0
    rows_purged: int = 0
    unsealed: int = 0
    sealed_until: datetime | None = None
    last_sealed_at: datetime | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.findings


_SEAL_ROWS = text(
    "SELECT seal_no, kind, range_start, range_end, bound_id, row_count, sha256(manifest) AS manifest_hash, "
    "prev_head, head, mac, key_id, sealed_at FROM audit_seals ORDER BY seal_no")
_MANIFEST = text("SELECT manifest FROM audit_seals WHERE seal_no = :n")

#: connections that compute seals' rows at once during ``verify`` (the server hashes; Python only compares)
VERIFY_WORKERS = 2
_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?")


def verify(engine: Engine, master: MasterKey, *, since: datetime | None = None,
           workers: int = VERIFY_WORKERS) -> VerifyReport:
    """Check the chain of seals and the rows each covers (rows sealed before ``since``: the chain only).

    Everything is read in one snapshot (exported to the worker connections, as pg_dump does), so a
    purge or a seal committed meanwhile cannot look like a deleted or inserted row. ``workers``
    connections compute the seals' rows ahead, at most one seal each in flight: memory stays a few
    manifests, whatever the table's size.
    """
    report = VerifyReport()
    with ExitStack() as stack:
        connection = stack.enter_context(engine.connect().execution_options(isolation_level="REPEATABLE READ"))
        stack.enter_context(connection.begin())
        snapshot = str(connection.execute(text("SELECT pg_export_snapshot()")).scalar_one())
        if not _SNAPSHOT_ID.fullmatch(snapshot):  # it is spliced into SET TRANSACTION SNAPSHOT below
            raise RuntimeError(f"unexpected snapshot id {snapshot!r}")
        keys = seal_keys(connection, master)
        seals = list(connection.execute(_SEAL_ROWS).all())
        _check_chain(seals, keys, report)
        idle: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        for _ in range(max(1, workers)):
            worker = stack.enter_context(engine.connect().execution_options(isolation_level="REPEATABLE READ"))
            stack.enter_context(worker.begin())
            worker.execute(text(f"SET TRANSACTION SNAPSHOT '{snapshot}'"))
            idle.put(worker)
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=max(1, workers),
                                                      thread_name_prefix="carecli-verify"))

        def rows_of(seal_no: int, start: datetime | None, end: datetime) -> tuple[bytes, bytes]:
            """(the seal's manifest, the rows now in its range): computed by a worker connection."""
            worker = idle.get()
            try:
                manifest = bytes(worker.execute(_MANIFEST, {"n": seal_no}).scalar_one())
                actual = worker.execute(_ACTUAL, {"start": start, "end": end}).scalar()
                return manifest, bytes(actual or b"")
            finally:
                idle.put(worker)

        purges = (row for row in seals if row.kind == "purge")
        pending: deque[bytes] = deque()  # purged entries not yet matched to their seal, oldest first

        def purged_before(end: datetime) -> dict[bytes, bytes]:
            """The purged entries dated before ``end``, by id (the purge stream is in (created_at, id) order)."""
            taken: dict[bytes, bytes] = {}
            while True:
                while pending and entry_time(pending[0]) < end:
                    entry = pending.popleft()
                    taken[entry[:16]] = entry
                if pending:
                    return taken
                purge = next(purges, None)
                if purge is None:
                    return taken
                pending.extend(entries_of(bytes(connection.execute(_MANIFEST, {"n": purge.seal_no}).scalar_one())))

        ahead: deque[tuple[int, dict[bytes, bytes], Future[tuple[bytes, bytes]]]] = deque()
        for row in seals:
            if row.kind != "seal":
                continue
            purged = purged_before(row.range_end)
            report.rows_purged += len(purged)
            if since is not None and row.range_end <= since:
                continue
            ahead.append((row.seal_no, purged, pool.submit(rows_of, row.seal_no, row.range_start, row.range_end)))
            while len(ahead) > max(1, workers):
                seal_no, purged, fetched = ahead.popleft()
                _compare(seal_no, *fetched.result(), purged, report)
        while ahead:
            seal_no, purged, fetched = ahead.popleft()
            _compare(seal_no, *fetched.result(), purged, report)
        for entry in [*pending] + [e for purge in purges for e in entries_of(bytes(
                connection.execute(_MANIFEST, {"n": purge.seal_no}).scalar_one()))]:
            report.findings.append(Finding("purge of an unsealed row", str(entry_id(entry)), entry_time(entry), None,
                                           "a purge seal names a row no seal holds"))
        end = report.sealed_until
        report.unsealed = int(connection.execute(text(
            "SELECT count(*) FROM audit_logs WHERE created_at >= coalesce(CAST(:end AS timestamp), "
            "'-infinity'::timestamp)").bindparams(bindparam("end", type_=DateTime())), {"end": end}).scalar_one())
        undated = connection.execute(text("SELECT count(*) FROM audit_logs WHERE created_at IS NULL")).scalar_one()
        if undated:
            for row in connection.execute(text("SELECT id FROM audit_logs WHERE created_at IS NULL "
                                                   "ORDER BY id LIMIT 1000")):
                report.findings.append(Finding("undated", str(row.id), None, None,
                                               "no created_at: it cannot be sealed"))
    return report


def _check_chain(seals: list[Any], keys: dict[uuid.UUID, bytes], report: VerifyReport) -> None:
    prev, expected_no, range_end = GENESIS, 1, None
    for row in seals:
        report.seals += 1
        ref = f"seal {row.seal_no}"
        if row.seal_no != expected_no:
            report.findings.append(Finding("seal missing", f"seal {expected_no}", None, row.seal_no,
                                           f"the chain jumps from seal {expected_no - 1} to {row.seal_no}"))
        if bytes(row.prev_head) != prev:
            report.findings.append(Finding("chain broken", ref, row.range_end, row.seal_no,
                                           "it does not follow the seal before it"))
        head = head_of(bytes(row.prev_head), row.seal_no, row.kind, row.range_start, row.range_end, row.bound_id,
                       row.row_count, bytes(row.manifest_hash))
        if head != bytes(row.head):
            report.findings.append(Finding("seal altered", ref, row.range_end, row.seal_no,
                                           "its contents do not give its head"))
        key = keys.get(row.key_id)
        if key is None or not hmac.compare_digest(mac_of(key, bytes(row.head)), bytes(row.mac)):
            report.findings.append(Finding("seal forged", ref, row.range_end, row.seal_no,
                                           "its MAC does not verify under the seal key"))
        if row.kind == "seal":
            if row.range_start != range_end:
                report.findings.append(Finding("seal range gap", ref, row.range_start, row.seal_no,
                                               "it does not start where the previous seal ended"))
            range_end = row.range_end
            report.sealed_until = row.range_end
        report.last_sealed_at = row.sealed_at
        prev, expected_no = bytes(row.head), row.seal_no + 1


def _compare(seal_no: int, manifest: bytes, actual: bytes, purged: dict[bytes, bytes],
             report: VerifyReport) -> None:
    """The rows of one seal's range against its manifest, less what purges removed (``purged``: by id bytes)."""
    report.rows_checked += len(actual) // ENTRY_BYTES
    if not purged:
        if actual == manifest:  # the common case: bytes compared, no entry looked at
            return
        expected = list(entries_of(manifest))
    else:
        sealed = {entry[:16]: entry for entry in entries_of(manifest)}
        for ident, entry in purged.items():
            if sealed.get(ident) != entry:
                report.findings.append(Finding("purge of an unsealed row", str(uuid.UUID(bytes=ident)),
                                               entry_time(entry), seal_no,
                                               "a purge seal names a row this seal does not hold"))
        expected = [entry for entry in entries_of(manifest) if purged.get(entry[:16]) != entry]
        if actual == b"".join(expected):
            return
    found = len(report.findings)
    by_id = {entry[:16]: entry for entry in expected}
    seen: set[bytes] = set()
    for entry in entries_of(actual):
        ident = entry[:16]
        known = by_id.get(ident)
        if known is None:
            what = "purged row back" if ident in purged else "inserted"
            report.findings.append(Finding(what, str(entry_id(entry)), entry_time(entry), seal_no,
                                           "a row in sealed time that the seal does not hold"))
            continue
        seen.add(ident)
        if known == entry:
            continue
        if known[16:24] != entry[16:24]:
            report.findings.append(Finding("moved", str(entry_id(entry)), entry_time(known), seal_no,
                                           f"created_at changed to {entry_time(entry).isoformat()}: reordered"))
        else:
            report.findings.append(Finding("altered", str(entry_id(entry)), entry_time(known), seal_no,
                                           "its values differ from when it was sealed"))
    for entry in expected:
        if entry[:16] not in seen:
            report.findings.append(Finding("deleted", str(entry_id(entry)), entry_time(entry), seal_no,
                                           "sealed, and no longer there (nor purged)"))
    if len(report.findings) == found:
        # Same rows and values in another order: only the server's order of equal keys differs.
        report.findings.append(Finding("reordered", f"seal {seal_no}", None, seal_no,
                                       "the rows are those sealed, in another order"))


def require_key(connection: Connection, master: MasterKey) -> SealKey:
    key = seal_key(connection, master, create=False)
    if key is None:
        raise KeyUnavailable("no seal key: nothing has been sealed yet", hint="run `carecli audit seal`")
    return key

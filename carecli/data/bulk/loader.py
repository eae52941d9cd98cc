"""Running an import: read, parse, plan and write a file in committed batches.

Pipeline (one batch of rows at a time):

1. the reader yields numbered records; each is parsed and validated;
2. the kind *plans* the batch on a read-only connection: matches rows to
   existing records by natural key, refuses in-file duplicates, encrypts
   PHI, and builds the rows to insert, the updates and the audit rows;
3. a writer thread *applies* the plan on its own connection: binary-safe
   ``COPY`` straight into the tables for new rows (their ids are new, so
   nothing can conflict), ``COPY`` into a staging table and one set-based
   ``UPDATE ... FROM`` per batch for changed rows (guarded by ``updated_at``
   so an edit made meanwhile in the app is never overwritten), and the
   batch's audit rows, all in the batch's one transaction.

Planning batch *n+1* overlaps writing batch *n*: Python work runs on one
core while the server works on the other.

Safety: each batch commits whole or not at all (records and their audit
rows together). After a crash or ``kill -9``, re-running the file matches
the rows already loaded (unchanged) and loads the rest: natural keys make it
idempotent. With ``all_or_nothing`` every batch goes into one transaction
that commits only if no row was refused; with ``dry_run`` nothing is
written at all. One import of a kind runs at a time (an advisory lock).

Indexes: a load large relative to a table (members, metadata, audit_logs)
drops that table's secondary indexes before its first batch, each recorded
in the drop's transaction, and builds them after its last batch, before the
tables are analyzed, however the run ends; after a ``kill -9`` the next run
takes the records over or builds them (:mod:`carecli.data.deferred_indexes`).

A run ends in one of two ways, whatever is raised on the way: it finishes
(bad rows refused and reported, the rest loaded), or it aborts with
:class:`ImportAborted` carrying the summary of what is committed (which
batches, through which row of the file). An exception while one row is
parsed, a bug in a field parser included, is that row's problem (rule
``internal_error``) and the run goes on. A usage error before anything is
committed (a bad header) is raised as it is: nothing was written.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import Engine, text
from sqlalchemy.pool import QueuePool

from carecli.data import deferred_indexes, notify
from carecli.data.actor import Actor
from carecli.data.bulk import copytext
from carecli.data.bulk.blind_index import BlindIndex
from carecli.data.bulk.digests import RECORD_GIVEN, RECORD_GIVEN_FIRST, RowDigester, recorded_any, text_list
from carecli.data.bulk.kinds import (
    XID,
    BatchContext,
    BatchPlan,
    Kind,
    Parsed,
    PrepareTools,
    SeenKeys,
    Update,
    actor_fields,
    driver_connection,
)
from carecli.data.bulk.prepare import Preparer, worker_keys
from carecli.data.bulk.readers import Record, RecordProblem
from carecli.data.crypto.fields import FieldCipher
from carecli.data.permissions import Permission
from carecli.errors import EXIT_USAGE, CarecliError, PermissionDenied

log = logging.getLogger(__name__)

#: rows per batch (one transaction each, unless all-or-nothing)
BATCH_ROWS = 5_000
#: chunks whose digests are being looked up at a time (see _batches): the lookups of the next two chunks run
#: while this one is planned and the one after it is read and digested
SIFTED_AHEAD = 2
#: The planner's settings (the planning connection's for the run, the lookup thread's per transaction):
#: - no statement timeout: a batch's lookups are the import's own, however long the file;
#: - custom plans: psycopg prepares a statement after five runs and PostgreSQL then may switch to a generic
#:   plan, which cannot use the partial natural-key indexes for `= ANY($1)`: a scan per batch;
#: - no sequential scans: every lookup of a batch has an index to probe by key. During a first load the tables
#:   grow without statistics, and the planner priced a parallel scan of all of metadata below 5,000 probes of
#:   the blind-index key (300 ms a batch at 1M members, and growing). Off, PostgreSQL still scans where no
#:   index serves (the first batch's backfill); the statistics themselves come from _Growth;
#: - no JIT: probes by key never gain from compiling; a lookup priced high on a table without statistics yet
#:   (a first re-run's digests) spent 180 ms a batch compiling for a 50 ms query.
_PLANNING = (("statement_timeout", "0"), ("plan_cache_mode", "force_custom_plan"), ("enable_seqscan", "off"),
             ("jit", "off"))
#: an import that wrote at least this many records, and a tenth of its tables, refreshes their statistics
ANALYZE_MIN_RECORDS = 10_000
_INSERT_TARGET = re.compile(r"\bINSERT\s+INTO\s+([a-z_]+)", re.IGNORECASE)


@dataclass
class ImportSummary:
    kind: str
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    #: of the unchanged rows, those known by the digest of their source record, never parsed
    known_unchanged: int = 0
    rejected: int = 0
    dry_run: bool = False
    all_or_nothing: bool = False
    committed: bool = True
    seconds: float = 0.0
    #: batches written (committed, unless all-or-nothing refused them); on an abort, the batches committed
    batches: int = 0
    #: the run stopped part-way (ImportAborted); the counts are then those of the committed batches
    aborted: bool = False
    #: every row of the file up to this one is done (loaded or refused), committed; None when no batch is
    committed_through_row: int | None = None
    #: secondary indexes dropped for the load and built after it (see carecli.data.deferred_indexes)
    indexes_deferred: int = 0
    #: of those, the ones not built again yet (``carecli db rebuild-indexes`` builds them)
    indexes_pending: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def loaded(self) -> int:
        return self.created + self.updated + self.unchanged

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("errors")
        data["rows_per_second"] = round(self.rows / self.seconds) if self.seconds else None
        return data


class BatchConflict(Exception):
    """Records of a batch changed between planning and writing; the batch was not written."""

    def __init__(self, rows: list[int]) -> None:
        shown = ", ".join(str(row) for row in rows[:5]) + (" ..." if len(rows) > 5 else "")
        super().__init__(f"the records of row(s) {shown} changed while the import ran (an edit in the app); "
                         "their batch was not written")
        self.rows = rows


class ImportAborted(Exception):
    """The run stopped part-way; batches before the failing one are committed (unless all-or-nothing).

    ``__cause__`` is what went wrong; ``summary`` (set by :func:`run_import`) says what is committed.
    """

    def __init__(self, reason: str, summary: ImportSummary | None = None) -> None:
        super().__init__(reason)
        self.summary = summary


def check_permission(kind: Kind, actor: Actor, audit_denial: Callable[[str], None]) -> None:
    """``import:run`` (an API token needs the scope) and the role's write permission for the kind.

    The token's ``import:run`` scope covers what the import writes, so the
    kind's write permission is checked against the role only.
    """
    if not actor.can(Permission.IMPORT_RUN):
        audit_denial(str(Permission.IMPORT_RUN))
        via = "this token lacks the 'import:run' scope" if actor.scopes is not None and \
            str(Permission.IMPORT_RUN) in actor.permissions else "it needs the 'import:run' permission"
        raise PermissionDenied(f"{actor.role or 'this user'} may not run imports: {via}")
    if str(kind.permission) not in actor.permissions:
        audit_denial(str(kind.permission))
        raise PermissionDenied(f"{actor.role or 'this user'} may not import {kind.name}: it needs the "
                               f"'{kind.permission}' permission")


class _Sift:
    """Rows of a chunk known unchanged by the digests of their source records (:mod:`carecli.data.bulk.digests`).

    Such a row becomes a :class:`Parsed` at once, with the kind's :meth:`~Kind.unchanged_prep`, and is never
    parsed nor prepared; every other record's digest waits in ``digests`` (by file row) for the planner,
    which records it with the row's outcome.

    :meth:`send` digests a chunk and starts its lookup; :meth:`receive` takes the answer. With ``lookups``
    (what opens a connection of their own) the lookup runs in a thread of its own, which mostly waits on the
    server: a re-run's chunk is looked up while this thread plans the chunk before it (the lookups were a
    third of a re-run's time, waited for in turn). Without, it runs at once on the planning connection.
    """

    def __init__(self, kind: Kind, connection: Any, tools: PrepareTools, digests: dict[int, Any],
                 lookups: Callable[[], Any] | None = None) -> None:
        self.kind = kind
        self.connection = connection
        self.tools = tools
        self.digester: RowDigester | None = None
        self.digests = digests
        self.known = 0
        #: whether any digest of this kind was recorded before this run (asked once, under the import's lock)
        self.recorded_before = True
        self._open_lookups = lookups
        self._lookups: Any = None
        self._thread: ThreadPoolExecutor | None = None

    def send(self, chunk: list[Record | RecordProblem]) -> _Sifting:
        if self.digester is None:  # once the file proved readable: the key may be made now
            blind = self.tools.blind_index()
            if blind is None:
                return _Sifting(chunk, None, None)
            self.digester = RowDigester(blind, self.kind.name)
            self.recorded_before = recorded_any(self.connection, self.kind.entity_type)
            self.connection.commit()
        digest = self.digester.digest
        mine: dict[int, Any] = {}
        for item in chunk:
            if isinstance(item, Record):
                value = digest(item.values)
                if value is not None:
                    mine[item.row] = value
        # With no digest of this kind before the run (a first load), only this run's own rows could be known:
        # a record repeating an earlier one of this file, which the full path refuses as the duplicate it is,
        # exactly as a known row claiming the same member would be. The lookup is skipped (a probe a row).
        if not (mine and self.recorded_before):
            return _Sifting(chunk, mine, None)
        wanted = set(mine.values())
        if self._open_lookups is None:
            answer: Future[dict[Any, Any]] = Future()
            answer.set_result(self._look_up(self.connection, wanted))
        else:
            if self._thread is None:
                self._thread = ThreadPoolExecutor(1, thread_name_prefix="carecli-import-lookups")
            answer = self._thread.submit(self._look_up_aside, wanted)
        return _Sifting(chunk, mine, answer)

    def receive(self, sifting: _Sifting) -> list[Record | RecordProblem | Parsed]:
        chunk, mine = sifting.chunk, sifting.digests
        if mine is None:
            return list(chunk)
        found = sifting.answer.result() if sifting.answer is not None else {}
        if not found:
            self.digests.update(mine)
            return list(chunk)
        sifted: list[Record | RecordProblem | Parsed] = []
        for item in chunk:
            value = mine.get(item.row) if isinstance(item, Record) else None
            known = found.get(value) if value is not None else None
            if known is None:
                sifted.append(item)
                if value is not None:
                    self.digests[item.row] = value
            else:
                assert isinstance(item, Record)
                sifted.append(Parsed(item.row, {}, self.kind.unchanged_prep(known, item)))
                self.known += 1
        return sifted

    def _look_up(self, connection: Any, digests: set[Any]) -> dict[Any, Any]:
        try:
            found = self.kind.known_unchanged(connection, digests)
        except BaseException:
            connection.rollback()
            raise
        connection.commit()
        return found

    def _look_up_aside(self, digests: set[Any]) -> dict[Any, Any]:
        """The lookup on the connection of the lookup thread (opened there on first use), planned as the
        planner's own lookups are (_PLANNING), for its transaction only."""
        if self._lookups is None:
            assert self._open_lookups is not None
            self._lookups = self._open_lookups()
        self._lookups.exec_driver_sql("; ".join(f"SET LOCAL {name} = {value}" for name, value in _PLANNING))
        return self._look_up(self._lookups, digests)

    def close(self) -> None:
        """Stop the lookup thread (after the lookup it runs, if any) and close its connection."""
        if self._thread is not None:
            self._thread.shutdown(wait=True, cancel_futures=True)
            self._thread = None
        if self._lookups is not None:
            with suppress(Exception):
                self._lookups.close()
            self._lookups = None


@dataclass(slots=True)
class _Sifting:
    """A chunk sent to :meth:`_Sift.send`: its records, their digests (None: the import keeps none) and the
    answer of their lookup (None: nothing to look up)."""

    chunk: list[Record | RecordProblem]
    digests: dict[int, Any] | None
    answer: Future[dict[Any, Any]] | None


def _batches(records: Iterable[Record | RecordProblem], size: int, on_problem: Callable[[RecordProblem], None],
             counter: list[int], preparer: Preparer, sift: _Sift | None = None) -> Iterator[list[Parsed]]:
    """Batches of ``size`` prepared rows, in file order; refused rows go to ``on_problem`` in file order.

    Records are read in chunks of ``size`` and handed to ``preparer`` a few chunks ahead (after
    ``sift``, which may turn records into rows that need no preparing: the newest chunk read is sifted
    while the ones before it are prepared and planned, see :class:`_Sift`). When the
    reader fails part-way (a broken file), the chunks before the failure are still planned and
    written in whole batches, the rows of the unfinished batch are not, and the failure is raised.
    """
    source = iter(records)
    pending: deque[Any] = deque()
    state: dict[str, Any] = {"failure": None, "ended": False}

    def hand_over(sifting: _Sifting) -> tuple[Any, list[Any] | None]:
        """A sifted chunk's answer taken, and the rows that need preparing handed to the preparer."""
        assert sift is not None
        sifted = sift.receive(sifting)
        rest = [item for item in sifted if not isinstance(item, Parsed)]
        return preparer.submit(rest), sifted if len(rest) < len(sifted) else None

    def fill() -> None:
        # With a sift, one chunk more is read ahead: its lookup runs while the chunk before it is planned.
        while not state["ended"] and len(pending) < preparer.depth + (1 if sift is not None else 0):
            chunk: list[Record | RecordProblem] = []
            try:
                for item in source:
                    counter[0] += 1
                    chunk.append(item)
                    if len(chunk) >= size:
                        break
            except Exception as exc:  # noqa: BLE001 - raised once the chunks before it are written
                state["failure"] = exc
            if chunk:
                if sift is None:
                    pending.append((preparer.submit(chunk), None))
                else:
                    pending.append(sift.send(chunk))
                    waiting = [index for index, entry in enumerate(pending) if isinstance(entry, _Sifting)]
                    if len(waiting) > SIFTED_AHEAD:  # the oldest one's rows go on to the preparer (its workers)
                        pending[waiting[0]] = hand_over(pending[waiting[0]])
            if state["failure"] is not None or len(chunk) < size:
                state["ended"] = True

    batch: list[Parsed] = []
    fill()
    while pending:
        entry = pending.popleft()
        work, sifted = hand_over(entry) if isinstance(entry, _Sifting) else entry
        outcomes, failures = work.result()
        fill()
        if sifted is not None:  # the rows known unchanged back among the prepared ones, in file order
            prepared = iter(outcomes)
            outcomes = [item if isinstance(item, Parsed) else next(prepared) for item in sifted]
        for name in failures:
            log.error("parsing a row of a %s import raised %s; the row was refused", preparer.kind.name, name)
        for outcome in outcomes:
            if isinstance(outcome, RecordProblem):
                on_problem(outcome)
            elif isinstance(outcome, list):
                for problem in outcome:
                    on_problem(problem)
            else:
                batch.append(outcome)
                if len(batch) >= size:
                    yield batch
                    batch = []
    if state["failure"] is not None:
        raise state["failure"]
    if batch:
        yield batch


@dataclass
class Committed:
    """What a run has committed so far (for the summary of a run that aborts)."""

    batches: int = 0
    through_row: int | None = None
    created: int = 0
    updated: int = 0
    unchanged: int = 0

    def add(self, last_row: int, plan: BatchPlan) -> None:
        self.batches += 1
        self.through_row = last_row
        self.created += plan.created
        self.updated += plan.updated
        self.unchanged += plan.unchanged


class _Writer:
    """Applies batch plans on its own connection, in a thread (or inline)."""

    def __init__(self, engine: Engine, actor: Actor, *, single_transaction: bool, threaded: bool = True,
                 entity_type: str | None = None) -> None:
        self.actor_params = {"user_id": actor.user_id, "ip_address": actor.ip_address,
                             "user_agent": actor.user_agent}
        # The raw psycopg connection: COPY needs it, and its transactions are then ours to end.
        self._pooled = engine.raw_connection()
        self.connection = driver_connection(self._pooled)
        self.connection.execute("SET statement_timeout = 0")
        self.connection.execute("SET jit = off")  # (see run_import)
        self.connection.commit()
        self.single = single_transaction
        #: announced once per committed batch as "many rows of this kind" (never one notice per row)
        self.entity_type = entity_type
        self._unannounced = False
        self.error: BaseException | None = None
        self.batches = 0
        #: what is committed: batches, the last row of the last one, and (created, updated, unchanged)
        self.committed = Committed()
        self._pending: list[tuple[int, BatchPlan]] = []  # written in the open transaction (all-or-nothing)
        self._finished = False
        self._staged: set[str] = set()
        #: the tables written to, and records written since their statistics were last refreshed
        self._tables: set[str] = set()
        self._since_analyze = 0
        self._queue: queue.Queue[tuple[BatchPlan, int] | None] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name="carecli-import-writer", daemon=True) \
            if threaded else None
        if self._thread:
            self._thread.start()

    def submit(self, plan: BatchPlan, last_row: int) -> None:
        """Write ``plan`` (a batch ending at file row ``last_row``), here or in the thread."""
        if self.error is not None:
            raise ImportAborted(type(self.error).__name__) from self.error
        if self._thread is None:
            try:
                self._apply(plan, last_row)
            except Exception as exc:  # as the thread would hand it over
                self.error = exc
                self.connection.rollback()
                raise ImportAborted(type(exc).__name__) from exc
        else:
            self._queue.put((plan, last_row))

    def finish(self, *, commit: bool, after_commit: Callable[[], None] | None = None) -> None:
        """Wait for the batches handed over, then commit (all-or-nothing) or roll back what is open.

        ``after_commit`` runs once everything is committed, before the statistics are refreshed
        (the deferred indexes are built there: ANALYZE gathers their expressions' statistics).
        Once only; a second call (the clean-up after a failure) does nothing.
        """
        if self._finished:
            return
        self._finished = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        try:
            if self.error is not None:
                self.connection.rollback()
                raise ImportAborted(type(self.error).__name__) from self.error
            if commit:
                self._announce()
                self.connection.commit()
                for last_row, plan in self._pending:
                    self.committed.add(last_row, plan)
                self._pending.clear()
                if after_commit is not None:
                    after_commit()
                self._refresh_statistics()
            else:
                self.connection.rollback()
        finally:
            with suppress(Exception):  # back to the pool without this import's settings
                self.connection.rollback()
                self.connection.execute("RESET statement_timeout")
                self.connection.execute("RESET jit")
                self.connection.commit()
            self._pooled.close()

    def abandon(self) -> None:
        """:meth:`finish` without committing, after a failure: nothing it raises hides the failure."""
        try:
            self.finish(commit=False)
        except Exception as exc:  # noqa: BLE001 - the run is aborting already; its first error is the one to tell
            log.warning("while stopping an aborted import: %s", type(exc).__name__)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.error is not None:
                continue
            plan, last_row = item
            try:
                self._apply(plan, last_row)
            except BaseException as exc:  # handed to the planning thread
                self.error = exc
                try:
                    self.connection.rollback()
                except Exception:  # noqa: BLE001 - the connection may be gone; the error above is what counts
                    pass

    def _apply(self, plan: BatchPlan, last_row: int) -> None:
        connection = self.connection
        self._updates(plan.updates)
        with connection.cursor() as cursor:
            for staged, rows in plan.staged.items():
                if staged.table not in self._staged:
                    cursor.execute(staged.create)
                    self._staged.add(staged.table)
                cursor.execute(f"TRUNCATE {staged.table}")
                _copy_text(cursor, staged.table, staged.columns, "".join(rows))
                for statement in staged.statements:
                    cursor.execute(statement, self.actor_params)
            for (table, names), lines in plan.copies.items():
                _copy_text(cursor, table, names, "".join(lines))
            for table, inserts in plan.inserts.items():
                _copy(cursor, table, inserts)
            if plan.metadata_upserts:
                cursor.executemany(
                    "INSERT INTO metadata (id, entity_type, entity_id, metadata_key, metadata_value) "
                    "VALUES (%(id)s, %(entity_type)s, %(entity_id)s, %(metadata_key)s, %(metadata_value)s) "
                    "ON CONFLICT (entity_type, entity_id, metadata_key) DO UPDATE SET "
                    "metadata_value = EXCLUDED.metadata_value, deleted_at = NULL, updated_at = now()",
                    [{**row, "metadata_value": Jsonb(row["metadata_value"])} for row in plan.metadata_upserts])
            _copy(cursor, "audit_logs", plan.audit)
            # Digests, after the rows they describe are written: those of new records with the transaction's
            # id, which is then every new row's xmin; the others as read back from the rows.
            if plan.new_digests and self.entity_type is not None:
                cursor.execute("SELECT pg_current_xact_id()::text")
                (current,) = cursor.fetchone() or ("",)
                xid = str(int(current) & 0xFFFFFFFF)  # xmin is the transaction id without its epoch
                cursor.execute(RECORD_GIVEN_FIRST if plan.digests_first else RECORD_GIVEN, [
                    self.entity_type, text_list(plan.new_digests),
                    text_list(digest for digest, _ in plan.new_digests.values()),
                    text_list(state for _, state in plan.new_digests.values()).replace(XID, xid)])
            if plan.digests and plan.digest_sql is not None:
                cursor.execute(plan.digest_sql, [text_list(plan.digests), text_list(plan.digests.values())])
        if plan.inserts or plan.updates or plan.staged or plan.metadata_upserts or plan.copies:
            self._unannounced = True
        self._note_tables(plan)
        if not self.single:
            self._announce()
            connection.commit()
            self.committed.add(last_row, plan)
        else:
            self._pending.append((last_row, plan))
        self.batches += 1

    def _note_tables(self, plan: BatchPlan) -> None:
        written = plan.created + plan.updated
        if not written:
            return
        self._since_analyze += written
        self._tables.update(plan.inserts)
        self._tables.update(table for table, _ in plan.copies)
        if plan.metadata_upserts:
            self._tables.add("metadata")
        if plan.audit:
            self._tables.add("audit_logs")
        for staged in plan.staged:
            self._tables.update(match.lower() for statement in staged.statements
                                for match in _INSERT_TARGET.findall(statement))

    def _refresh_statistics(self) -> None:
        """ANALYZE the tables this import grew by a tenth or more, as autovacuum would, without waiting.

        A bulk load outpaces autovacuum (and some servers run without it): with statistics from
        before the load, the planner takes a million-row table for an empty one, and the lookups of
        a re-run of the file pick plans that scan it (2.4 s a batch instead of milliseconds on 1M
        members). Runs after the last commit. A role that does not own the tables gets a warning
        from the server and nothing happens; autovacuum then catches up on its own.
        """
        if not self._tables or self._since_analyze < ANALYZE_MIN_RECORDS:
            return
        if self._since_analyze < max(self._reltuples(), 0.0) / 10:
            return
        try:
            with self.connection.cursor() as cursor:
                cursor.execute("ANALYZE " + ", ".join(sorted(self._tables)))  # our own table names, never input
            self.connection.commit()
        except psycopg.Error as exc:  # the import is committed: stale statistics are no reason to fail it
            log.warning("could not refresh the statistics of %s after the import: %s", ", ".join(sorted(self._tables)),
                        type(exc).__name__)
            self.connection.rollback()

    def _reltuples(self) -> float:
        """The smallest row estimate among the tables written (-1 when one was never analyzed)."""
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT coalesce(min(reltuples), -1) FROM pg_class WHERE relname = ANY(%s) "
                           "AND relkind = 'r'", [sorted(self._tables)])
            row = cursor.fetchone()
        self.connection.commit()
        return float(row[0]) if row else -1.0

    def _announce(self) -> None:
        """NOTIFY the batch's kind, coarse, in the transaction about to commit."""
        if self._unannounced and self.entity_type is not None:
            with self.connection.cursor() as cursor:
                notify.send_raw(cursor, [notify.Change(self.entity_type)], notify.PROCESS_SOURCE)
        self._unannounced = False

    def _updates(self, updates: list[Update]) -> None:
        """Apply updates grouped by the columns they change, each guarded by the updated_at it was planned on.

        A record changed by someone else since the batch was planned (an edit in the app) is never
        overwritten: the whole batch is rolled back and the import stops (:class:`BatchConflict`);
        running it again re-plans those rows against what is there now.
        """
        if not updates:
            return
        groups: dict[tuple[str, tuple[str, ...]], list[Update]] = {}
        for item in updates:
            groups.setdefault((item.table, tuple(sorted(item.changes))), []).append(item)
        with self.connection.cursor() as cursor:
            for (table, columns), items in groups.items():
                stage = f"carecli_stage_{table}"
                if stage not in self._staged:
                    cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} AS SELECT * FROM {table} WITH NO DATA")
                    cursor.execute(f"ALTER TABLE {stage} ADD COLUMN IF NOT EXISTS carecli_expected timestamp")
                    self._staged.add(stage)
                cursor.execute(f"TRUNCATE {stage}")
                names = ("id", "carecli_expected", *columns)
                _copy_lines(cursor, stage, names, ((item.id, item.expected_updated_at,
                                                    *(item.changes[name] for name in columns)) for item in items))
                assignments = ", ".join(f"{name} = s.{name}" for name in columns)
                cursor.execute(
                    f"UPDATE {table} t SET {assignments}, updated_at = clock_timestamp() AT TIME ZONE 'UTC' "
                    f"FROM {stage} s WHERE t.id = s.id "
                    "AND t.updated_at IS NOT DISTINCT FROM s.carecli_expected RETURNING t.id")
                done = {row[0] for row in cursor.fetchall()}
                changed = sorted(item.row for item in items if item.id not in done)
                if changed:
                    raise BatchConflict(changed)


def _copy(cursor: Any, table: str, rows: list[dict[str, Any]]) -> None:
    """COPY rows (dicts, possibly with different keys) into ``table``, as preformatted text."""
    if not rows:
        return
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    for names, items in groups.items():
        _copy_lines(cursor, table, names, (item.values() for item in items))


def _copy_lines(cursor: Any, table: str, names: tuple[str, ...], rows: Iterable[Iterable[Any]]) -> None:
    _copy_text(cursor, table, names, copytext.lines(names, rows))


def _copy_text(cursor: Any, table: str, names: tuple[str, ...], data: str) -> None:
    with cursor.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy:
        copy.write(data.encode("utf-8"))


class _Growth:
    """Statistics for the planner's lookups while a load grows the tables it reads, as they double.

    A first load starts on empty tables, and autovacuum does not keep up with it (some servers run
    without it): the planner, taking metadata for a tiny table, answered the blind-index lookup of each
    batch by reading all of metadata's (entity_type, entity_id, metadata_key) index instead of probing
    the blind-index key: 450 ms a batch at 600,000 members, and growing. ANALYZE of a table samples a
    fixed number of rows (tens of ms); run at each doubling of the records created, from 10,000, it costs
    a few runs per load. The table: metadata. A role that does not own it gets a warning from the server,
    and nothing.
    """

    def __init__(self, planner: Any) -> None:
        self.planner = planner
        # Every kind's lookups read natural keys in metadata (a calls import adds their external ids there).
        # Not the kind's own table: its lookups are by primary key, and members keep detailed statistics
        # (target 1,000: ANALYZE reads 300,000 rows), which cost 200,000 members 7 s over five runs.
        self.tables = ["metadata"]
        self.next_at = ANALYZE_MIN_RECORDS

    def after_batch(self, created: int) -> None:
        if created < self.next_at:
            return
        self.next_at = 2 * created
        try:
            # Not worth a wait: a conflicting VACUUM holds the tables for as long as it takes.
            self.planner.exec_driver_sql("SET LOCAL lock_timeout = '1s'")
            self.planner.exec_driver_sql("ANALYZE " + ", ".join(self.tables))  # our own table names
            self.planner.commit()
        except Exception as exc:  # noqa: BLE001 - stale statistics are no reason to stop a load
            log.warning("could not refresh the statistics of %s during the import: %s", ", ".join(self.tables),
                        type(exc).__name__)
            self.planner.rollback()


class _Deferral:
    """The secondary indexes one import drops before its first batch and builds after its last.

    See :mod:`carecli.data.deferred_indexes`. ``expected`` is the number of records the file is
    estimated to hold (None: unknown, e.g. standard input: ``auto`` then defers nothing).
    """

    def __init__(self, engine: Engine, actor: Actor, kind: Kind, *, mode: str, expected: int | None) -> None:
        if mode not in deferred_indexes.MODES:
            raise ValueError(f"unknown --defer-indexes mode {mode!r}")
        self.engine = engine
        self.actor = actor
        self.kind = kind
        self.mode = mode
        self.expected = expected
        self.run_id = deferred_indexes.run_id()
        self.deferred: list[deferred_indexes.IndexInfo] = []
        self.pending: list[str] = []
        self._finished = False

    def start(self, planner: Any, *, new_share: float) -> None:
        """Decide, take over the records of a killed load, build any other such, drop.

        ``new_share`` is the share of the first batch's rows that create records: the file's
        estimated size times it is what the load will add (a re-run of a file already loaded adds
        nothing and defers nothing). Tables the kind writes on which a load that is gone left
        indexes dropped are taken over whatever the sizes: their indexes are missing already, and
        built once at the end costs less than built now and kept up during this load. On the
        planner's connection: its session owns the records while the import runs. The caller's
        transaction must be clear.
        """
        with planner.begin():
            if not deferred_indexes.available(planner):
                return
            per_record = self.kind.rows_per_record
            known = self.expected if self.expected is not None else (1 if self.mode == "always" else 0)
            share = 1.0 if self.mode == "always" else max(0.0, min(1.0, new_share))
            incoming = {table: int(count * known * share) for table, count in per_record.items()}
            chosen = deferred_indexes.choose_tables(planner, incoming, self.mode) if known else {}
            if self.mode != "never":
                for record in deferred_indexes.orphans(planner):
                    if record.table in per_record and record.table not in chosen:
                        chosen[record.table] = deferred_indexes.existing_rows(planner, record.table,
                                                                              incoming[record.table] + 1)
        if chosen:
            self.deferred = deferred_indexes.defer(planner, chosen, run_id=self.run_id, actor=self.actor,
                                                   reason=f"import {self.kind.name}", incoming=incoming)
        # Indexes a killed load left unbuilt on the other tables (or these, if nothing was deferred): now,
        # before this load, so whatever happens to it they are back.
        leftovers = deferred_indexes.rebuild(self.engine, self.actor)
        if leftovers.built:
            log.info("built %d index(es) a stopped load had deferred", len(leftovers.built))

    def finish(self) -> None:
        """Build this import's deferred indexes (and those it took over); once."""
        if self._finished or not self.deferred:
            return
        result = deferred_indexes.rebuild(self.engine, self.actor, run_id=self.run_id)
        with self.engine.connect() as connection:
            self.pending = [record.name for record in deferred_indexes.recorded(connection)
                            if record.by_run == self.run_id]
        self._finished = True
        if result.built:
            log.info("built %d deferred index(es) after the load", len(result.built))
        if self.pending:
            log.warning("%d deferred index(es) were not built; `carecli db rebuild-indexes` builds them",
                        len(self.pending))

    def finish_quietly(self) -> None:
        """:meth:`finish` after a failure: a database that is gone leaves the records for the next run."""
        try:
            self.finish()
        except Exception as exc:  # noqa: BLE001 - the records stay; the next import or `db upgrade` builds them
            self._finished = True
            self.pending = [index.name for index in self.deferred]
            log.warning("could not build the deferred indexes (%s); `carecli db rebuild-indexes` builds them",
                        type(exc).__name__)

    def report(self, summary: ImportSummary) -> None:
        summary.indexes_deferred = len(self.deferred)
        summary.indexes_pending = len(self.pending)


def run_import(kind: Kind, records: Iterable[Record | RecordProblem], *, engine: Engine, actor: Actor,
               cipher: Callable[[], FieldCipher], blind_index: Callable[[], BlindIndex | None],
               on_problem: Callable[[RecordProblem], None], progress: Callable[[int], None] | None = None,
               dry_run: bool = False, all_or_nothing: bool = False, batch_rows: int = BATCH_ROWS,
               threaded: bool = True, identity: Engine | None = None, workers: int = 0,
               defer_indexes: str = "auto", expected_records: int | None = None,
               on_loaded: Callable[[], None] | None = None, digests: bool = True) -> ImportSummary:
    """Import ``records`` as ``kind``; bad rows go to ``on_problem``; returns the counts.

    Raises :class:`ImportAborted`, with the summary of what is committed, when the run stops
    part-way for any reason (a broken file, the database, a conflicting edit, a bug); a usage
    error (a :class:`~carecli.errors.CarecliError` with exit code 2, such as a bad header) before
    anything is committed is raised as it is. The caller checks permissions first
    (:func:`check_permission`). With ``workers``, parsing, validation and the kind's per-row
    preparation (encryption, hashing, COPY lines) run in that many worker processes
    (:mod:`carecli.data.bulk.prepare`); 0 does it all in this process. ``defer_indexes`` (auto, always,
    never) with ``expected_records`` (the file's estimated record count) decides whether the secondary
    indexes of the tables the kind fills are dropped before the first batch and built after the last
    (:mod:`carecli.data.deferred_indexes`); they are built again however the run ends, short of a kill.
    ``on_loaded`` is called once every batch is committed, before those indexes are built and the
    statistics refreshed (the CLI seals the audit rows meanwhile). With ``digests`` (kinds that keep them),
    rows of a re-run whose source records were loaded before into rows nobody changed since are known
    unchanged without being parsed (:mod:`carecli.data.bulk.digests`), and the rows loaded or found
    unchanged record their digests.
    """
    started = time.perf_counter()
    summary = ImportSummary(kind.name, dry_run=dry_run, all_or_nothing=all_or_nothing)
    # Rows refused so far: problems of one row arrive together, so counting row changes counts rows.
    rejected = {"rows": 0, "last": -1}

    def problem(item: RecordProblem) -> None:
        if item.row != rejected["last"]:
            rejected["rows"] += 1
            rejected["last"] = item.row
        on_problem(item)

    counter = [0]
    planner = engine.connect()
    identity_connection: Any = None
    writer: _Writer | None = None
    sift: _Sift | None = None
    seen: SeenKeys | None = None
    held: list[RecordProblem] = []
    tools = PrepareTools(cipher, blind_index, actor_fields(actor))
    preparer = Preparer(kind, tools, workers=workers, keys=worker_keys(tools))
    deferral = _Deferral(engine, actor, kind, mode="never" if dry_run else defer_indexes, expected=expected_records)
    try:
        identity_connection = identity.connect() if identity is not None else None
        planner.exec_driver_sql("; ".join(f"SET {name} = {value}" for name, value in _PLANNING))
        # One import of a kind at a time: two would each miss the other's uncommitted rows.
        planner.execute(text("SELECT pg_advisory_lock(hashtext(:name))"), {"name": f"carecli-import-{kind.name}"})
        planner.commit()
        seen = SeenKeys(planner, aside=threaded)
        context = BatchContext(planner, actor, seen, cipher, blind_index, identity_connection)
        lookups = engine.connect if threaded and _pool_allows(engine, 4) else None
        sift = _Sift(kind, planner, tools, context.digests, lookups) if digests and kind.keeps_digests else None
        growth = _Growth(planner)
        if not dry_run:
            writer = _Writer(engine, actor, single_transaction=all_or_nothing, threaded=threaded,
                             entity_type=kind.entity_type)
        prepared = dry_run
        def refused(item: RecordProblem) -> None:
            """Refusals of reading and parsing wait for those of planning the batch their rows fall in, to be
            reported together in file order (the error file listed a batch's parse refusals before its
            duplicates). Memory stays flat: past a batch's worth of them (rows refused one after another,
            no batch to plan yet), those held go out at once."""
            held.append(item)
            if len(held) > batch_rows:
                for waiting in held:
                    problem(waiting)
                held.clear()

        for batch in _batches(records, batch_rows, refused, counter, preparer, sift):
            first = not prepared
            if not prepared:  # only once the file has proved readable: a bad header writes nothing
                kind.before_first_batch(context)
                planner.commit()
                prepared = True
            plan = kind.plan(context, batch)
            plan.digests_first = sift is not None and not sift.recorded_before
            planner.commit()
            for parsed in batch:
                context.digests.pop(parsed.row, None)
            if first and not dry_run:  # before the first batch is written, knowing how much of it is new
                deferral.start(planner, new_share=plan.created / len(batch) if batch else 0.0)
            last = batch[-1].row  # (_batches yields no empty batch)
            due = [item for item in held if item.row <= last]
            held[:] = [item for item in held if item.row > last]
            for item in sorted([*due, *plan.problems], key=_by_row):  # (stable: a row's problems stay in order)
                problem(item)
            summary.created += plan.created
            summary.updated += plan.updated
            summary.unchanged += plan.unchanged
            if writer is not None and not (all_or_nothing and rejected["rows"]):
                writer.submit(plan, batch[-1].row)
                growth.after_batch(summary.created)
            if progress is not None:
                progress(counter[0])
        for item in held:  # rows refused after the last row planned
            problem(item)
        held.clear()
        summary.rows = counter[0]
        summary.known_unchanged = sift.known if sift is not None else 0
        if sift is not None:
            sift.close()  # its connection goes back before the index builds want one
        preparer.close()
        if writer is not None:
            commit = not (all_or_nothing and rejected["rows"])
            def loaded() -> None:
                if on_loaded is not None:
                    on_loaded()
                deferral.finish()

            writer.finish(commit=commit, after_commit=loaded)
            deferral.finish()  # when nothing was committed
            summary.batches = writer.batches
            summary.committed = commit
            summary.committed_through_row = writer.committed.through_row
        else:
            summary.committed = False
        summary.rejected = rejected["rows"]
        if all_or_nothing and rejected["rows"]:
            summary.created = summary.updated = summary.unchanged = 0
    except (Exception, KeyboardInterrupt) as exc:
        waiting, held[:] = list(held), []
        with suppress(Exception):  # (what stopped the run may be the report itself: it is what is raised)
            for item in waiting:  # refused rows read before the run stopped are reported and counted
                problem(item)
        preparer.close()
        # Whatever it was, the run ends in one of the two documented ways: nothing written (a usage
        # error before any commit: exit 2), or aborted with the summary of what is committed (exit 3).
        if writer is not None:
            writer.abandon()  # waits for the batches handed over, so the summary counts what is committed
        with suppress(Exception):
            planner.rollback()  # whatever it holds must not keep the index builds waiting
        deferral.finish_quietly()
        deferral.report(summary)
        committed = writer.committed if writer is not None else Committed()
        if isinstance(exc, CarecliError) and exc.exit_code == EXIT_USAGE and not committed.batches:
            raise
        cause = exc.__cause__ if isinstance(exc, ImportAborted) and exc.__cause__ is not None else exc
        _aborted(summary, committed, rows=counter[0], rejected=rejected["rows"])
        summary.seconds = time.perf_counter() - started
        log.warning("import of %s aborted (%s) after %d committed batch(es)", kind.name, type(cause).__name__,
                    committed.batches)
        raise ImportAborted(type(cause).__name__, summary) from cause
    finally:
        if seen is not None:
            seen.close()
        preparer.close()
        if sift is not None:
            sift.close()
        if writer is not None:
            writer.abandon()  # nothing more is committed (a no-op once finished)
        deferral.finish_quietly()  # a no-op once finished
        try:
            planner.rollback()
            planner.execute(text("SELECT pg_advisory_unlock_all()"))
            # The connection goes back to the pool: the planning settings must not follow it to its next use.
            planner.exec_driver_sql("; ".join(f"RESET {name}" for name, _ in _PLANNING))
            planner.commit()
        except Exception as exc:  # noqa: BLE001 - closing the connection ends the lock too; the outcome stands
            log.warning("could not release the import lock of %s cleanly: %s", kind.name, type(exc).__name__)
        finally:
            planner.close()
            if identity_connection is not None:
                identity_connection.close()
    deferral.report(summary)
    summary.seconds = time.perf_counter() - started
    return summary


def _by_row(item: RecordProblem) -> int:
    return item.row


def _pool_allows(engine: Engine, connections: int) -> bool:
    """Whether ``engine``'s pool can lend ``connections`` at once: the planner's, the writer's and the digest
    lookups', with one more for a moment (the keys, loaded on first use). In a pool configured smaller
    (``[database] pool_size`` and ``max_overflow``) the last would wait for a connection that does not come
    back while the import runs; the lookups then run on the planner's connection instead."""
    pool = engine.pool
    if not isinstance(pool, QueuePool):  # NullPool: a connection per checkout
        return True
    overflow = pool._max_overflow  # (no public accessor) -1: no limit
    return overflow < 0 or pool.size() + overflow >= connections


def _aborted(summary: ImportSummary, committed: Committed, *, rows: int, rejected: int) -> None:
    """The summary of a run that stopped: the rows read and refused, and what is committed of the rest."""
    summary.rows = rows
    summary.rejected = rejected
    summary.aborted = True
    summary.committed = bool(committed.batches)
    summary.batches = committed.batches
    summary.committed_through_row = committed.through_row
    summary.created, summary.updated, summary.unchanged = committed.created, committed.updated, committed.unchanged

"""``carecli import KIND FILE``: load a CSV or JSON Lines file, in committed batches.

Exit codes: 0 every row loaded, 1 some rows refused (see --errors), 2 usage
or configuration error (nothing read), 3 aborted (a broken file, a database
failure or any other error part-way: committed batches stay, the summary says
which, a re-run completes the load), 4 not signed in. The summary (a line on
stderr, or the --json object) is printed in every case but 2 and 4.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import logging
import os
import stat
import sys
import threading
import uuid
from collections.abc import Callable
from typing import IO, Any

import click

from carecli.config import load_settings
from carecli.data import audit, audit_seal, deferred_indexes
from carecli.data.bulk.blind_index import BlindIndex, load_blind_index
from carecli.data.bulk.loader import BatchConflict, ImportAborted, ImportSummary, check_permission, run_import
from carecli.data.bulk.prepare import default_workers
from carecli.data.bulk.readers import (
    FORMATS,
    Columns,
    RecordProblem,
    detect_format,
    load_mapping,
    open_source,
    read_records,
)
from carecli.data.bulk.registry import kind_for
from carecli.data.crypto.runtime import cipher_provider, master_key
from carecli.data.databases import open_databases, require_head
from carecli.errors import EXIT_ABORTED, EXIT_FAILURE, CarecliError, ConfigError
from carecli.services.auth.current import resolve_actor

NIL = uuid.UUID(int=0)
log = logging.getLogger("carecli.import")
#: problems shown on stderr when there is no --errors file
SHOWN_PROBLEMS = 20


class _ErrorReport:
    """Refused rows: into the --errors CSV (row, field, rule, message), else the first few on stderr."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.count = 0
        self._closed = False
        self._handle: IO[str] | None = None
        self._writer: Any = None
        if path:
            try:
                self._handle = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
            except OSError as exc:
                raise ConfigError(f"cannot write the error report {path}: {exc.strerror}") from None
            self._writer = csv.writer(self._handle)
            self._writer.writerow(("row", "field", "rule", "message"))

    def __call__(self, problem: RecordProblem) -> None:
        self.count += 1
        if self._writer is not None:
            self._writer.writerow((problem.row, problem.field, problem.rule, problem.message))
        elif self.count <= SHOWN_PROBLEMS:
            click.echo(f"row {problem.row}: {problem.field}: {problem.message} [{problem.rule}]", err=True)

    def close(self) -> None:
        """Close the report (or say how many problems were not shown); once, however often called."""
        if self._closed:
            return
        self._closed = True
        if self._handle is not None:
            self._handle.close()
        elif self.count > SHOWN_PROBLEMS:
            click.echo(f"... and {self.count - SHOWN_PROBLEMS:,} more problems (write them all with --errors FILE)",
                       err=True)


class _Progress:
    """A progress bar with rows/s and ETA on a terminal (by bytes read); nothing otherwise."""

    def __init__(self, source: IO[bytes], total_bytes: int | None, enabled: bool) -> None:
        self.source = source
        self.bar: Any = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.fields[rows]:>12,} rows  {task.fields[rate]:>8,} rows/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(stderr=True), transient=True)
        self.task = self.bar.add_task("importing", total=total_bytes, rows=0, rate=0)
        self.bar.start()

    def __call__(self, rows: int) -> None:
        if self.bar is None:
            return
        try:
            position = self.source.tell()
        except (OSError, ValueError):
            position = None
        elapsed = self.bar.tasks[0].elapsed or 0
        rate = int(rows / elapsed) if elapsed else 0
        self.bar.update(self.task, completed=position, rows=rows, rate=rate)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _describe(summary: ImportSummary, source: str) -> str:
    rate = f", {summary.rows / summary.seconds:,.0f} rows/s" if summary.seconds else ""
    line = (f"{summary.kind} from {source}: {summary.rows:,} rows, {summary.created:,} created, "
            f"{summary.updated:,} updated, {summary.unchanged:,} unchanged, {summary.rejected:,} rejected "
            f"in {summary.seconds:.1f}s{rate}")
    if summary.aborted:
        line += (f" (aborted: {summary.batches:,} batch{'es' if summary.batches != 1 else ''} committed, through "
                 f"row {summary.committed_through_row:,})" if summary.batches else " (aborted: nothing committed)")
    elif summary.dry_run:
        line += " (dry run: nothing written)"
    elif summary.all_or_nothing and summary.rejected:
        line += " (all-or-nothing: nothing written)"
    if summary.indexes_deferred:
        built = summary.indexes_deferred - summary.indexes_pending
        line += f" ({built} of {summary.indexes_deferred} secondary indexes built after the data)"
    if summary.known_unchanged:
        line += f" ({summary.known_unchanged:,} known unchanged by the digest of their record)"
    return line


def _estimate_records(source: IO[bytes]) -> int | None:
    """The records of a regular file, estimated from its size and the lines of its first MiB (None: not a
    regular file, such as standard input or a pipe). Decides only whether indexes are built after the data."""
    try:
        descriptor = source.fileno()
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            return None
        sample = os.pread(descriptor, 1 << 20, 0)
    except (OSError, ValueError, io.UnsupportedOperation):
        return None
    if not sample:
        return 0
    lines = sample.count(b"\n") + (0 if sample.endswith(b"\n") else 1)
    if len(sample) >= status.st_size:
        return lines
    return int(lines * status.st_size / len(sample))


@click.command("import")
@click.argument("kind")
@click.argument("file")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="csv or jsonl (default: from the file's extension).")
@click.option("--encoding", default="utf-8", show_default=True, help="The file's text encoding.")
@click.option("--map", "pairs", multiple=True, metavar="SOURCE=COLUMN",
              help="Rename a column of the file (repeatable); SOURCE= drops it.")
@click.option("--mapping", "mapping_file", type=click.Path(dir_okay=False), default=None,
              help="A TOML file with a [columns] table of \"Source\" = \"column\" pairs.")
@click.option("--errors", "errors_path", type=click.Path(dir_okay=False), default=None,
              help="Write refused rows to this CSV (row, field, rule, message; never values).")
@click.option("--all-or-nothing", is_flag=True, help="Load nothing if any row is refused.")
@click.option("--dry-run", is_flag=True, help="Validate and count what would change; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.option("--batch-rows", type=click.IntRange(100, 100_000), default=5_000, show_default=True,
              help="Rows per committed batch.")
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Processes that parse, validate and encrypt rows while the database loads the previous "
                   "batch (default: cores - 2, at most 2, so none on a 2-core machine; 0: all in this process).")
@click.option("--defer-indexes", "defer_indexes", type=click.Choice(deferred_indexes.MODES), default="auto",
              show_default=True,
              help="Drop the secondary indexes of members, metadata and audit_logs before the load and build them "
                   "after it, as pg_restore does: auto for a table the file adds at least as many rows to as it "
                   f"holds (and at least {deferred_indexes.MIN_ROWS:,}); always; never.")
@click.option("--recheck", is_flag=True,
              help="Match and compare every row, even rows a re-run knows unchanged by the digest of their source "
                   "record (members); the digests are recorded again.")
def import_command(kind: str, file: str, fmt: str | None, encoding: str, pairs: tuple[str, ...],
                   mapping_file: str | None, errors_path: str | None, all_or_nothing: bool, dry_run: bool,
                   as_json: bool, batch_rows: int, workers: int | None, defer_indexes: str, recheck: bool) -> int:
    """Import KIND (members, plans, enrollments, specialists, calls, flags)
    from FILE (CSV with a header, or JSON Lines; - reads standard input).

    Rows are matched to existing records by natural key, so re-running a file
    changes nothing. Refused rows are reported by row number, field and rule;
    the rest load (unless --all-or-nothing). Runs as the user of CARECLI_TOKEN
    (a token with the import:run scope) or the signed-in user."""
    importer = kind_for(kind)
    fmt = detect_format(file, fmt)
    try:
        "".encode(encoding)
    except LookupError:
        raise ConfigError(f"unknown encoding {encoding!r}") from None
    columns = Columns(importer.columns, load_mapping(pairs, mapping_file))
    settings = load_settings()
    databases = open_databases(settings)
    require_head(databases)
    actor = resolve_actor(settings, databases, channel="cli").actor

    def deny(permission: str) -> None:
        audit.write_committed(databases.platform, actor, "import", NIL, "deny",
                              {"operation": f"import {importer.name}", "permission": permission})

    check_permission(importer, actor, deny)
    source = open_source(file, sys.stdin.buffer)
    blind: list[BlindIndex] = []
    lock = threading.Lock()

    def blind_index() -> BlindIndex:
        with lock:
            if not blind:
                blind.append(load_blind_index(databases.platform, master_key(settings, databases),
                                              create=not dry_run, actor=actor))
            return blind[0]

    total = None
    if file != "-":
        try:
            total = os.fstat(source.fileno()).st_size
        except OSError:
            total = None
    report = _ErrorReport(errors_path)
    progress = _Progress(source, total, enabled=sys.stderr.isatty() and not as_json)
    records = read_records(source, fmt, columns, encoding=encoding, required=importer.required_columns)
    # The import's audit rows are sealed as it goes and once more at its end (committed batches of an
    # aborted run too); a dry run writes nothing, seals included.
    sealer = None if dry_run else audit_seal.Sealer(databases.platform, lambda: master_key(settings, databases),
                                                    every=audit_seal.SEAL_EVERY_SECONDS["import"],
                                                    name="import").start()
    restore_collector = _collect_for_a_load()
    try:
        summary = run_import(importer, records, engine=databases.platform, identity=databases.identity,
                             actor=actor, cipher=cipher_provider(settings, databases), blind_index=blind_index,
                             on_problem=report, progress=progress, dry_run=dry_run,
                             all_or_nothing=all_or_nothing, batch_rows=batch_rows,
                             workers=default_workers() if workers is None else workers,
                             defer_indexes=defer_indexes, expected_records=_estimate_records(source),
                             on_loaded=sealer.seal_soon if sealer is not None else None, digests=not recheck)
    except ImportAborted as exc:
        progress.stop()
        report.close()
        cause = exc.__cause__ or exc
        log.warning("import aborted", extra={"kind": importer.name, "reason": type(cause).__name__})
        if exc.summary is not None and exc.summary.all_or_nothing:
            kept = "nothing was committed (all-or-nothing), and running the same import again loads the file"
        elif isinstance(cause, CarecliError):  # the file: a record the reader cannot get past
            kept = ("batches committed before it stay: fix the file and run the same import again (rows already "
                    "loaded are matched, not added twice)")
        else:
            kept = "batches committed before it stay, and running the same import again completes it"
        click.echo(f"carecli: import aborted: {_cause(exc)}; {kept}", err=True)
        if exc.summary is not None:
            _report(exc.summary, file, errors_path, as_json, actor_id=str(actor.user_id), error=_cause(exc))
        return EXIT_ABORTED
    finally:
        restore_collector()
        progress.stop()
        report.close()
        if sealer is not None:
            sealer.stop()
        if source is not sys.stdin.buffer:
            source.close()
    _report(summary, file, errors_path, as_json, actor_id=str(actor.user_id))
    return EXIT_FAILURE if summary.rejected else 0


#: the collector's first threshold during a load: a young-generation pass every this many allocations, not 700
LOAD_GC_THRESHOLD = 10_000


def _collect_for_a_load() -> Callable[[], None]:
    """Set the garbage collector for a load; returns what puts it back.

    A load allocates a few objects per field of every row, and CPython's default thresholds then run a
    young pass every 700 allocations and, every 100 of them or so, a full pass over everything the
    process holds: the modules, SQLAlchemy, psycopg and the batches in flight (200,000 members: 28 full
    passes, 0.8-0.9 s of 1.3-1.5 s of collecting in a 19 s import; the longest 40 ms). What start-up made
    is frozen out of the collector's reach (it lives as long as the process), and young passes come every
    10,000 allocations: 0.5 s of collecting, the longest pass 16 ms. Collection stays on: a load does
    leave cyclic garbage behind (with it off, 200,000 members peaked 15 MiB higher, and more with a
    larger file)."""
    thresholds = gc.get_threshold()
    frozen = gc.get_freeze_count() == 0  # (only what this call froze is unfrozen after)
    if frozen:
        gc.freeze()
    gc.set_threshold(LOAD_GC_THRESHOLD, *thresholds[1:])

    def restore() -> None:
        gc.set_threshold(*thresholds)
        if frozen:
            gc.unfreeze()

    return restore


def _pending_indexes(summary: ImportSummary) -> None:
    if summary.indexes_pending:
        click.echo(f"carecli: {summary.indexes_pending} secondary index(es) dropped for the load are not built yet "
                   "(searches are slower until they are): run `carecli db rebuild-indexes`", err=True)


def _report(summary: ImportSummary, file: str, errors_path: str | None, as_json: bool, *, actor_id: str,
            error: str | None = None) -> None:
    """The summary: logged (counts only), and printed as a line on stderr or JSON on stdout.

    An aborted run prints it too: its counts are those of the committed batches, and
    ``batches``/``committed_through_row`` say how far the file is loaded.
    """
    shown = "standard input" if file == "-" else file
    # Counts only: the file's rows (and its name, which may name a person) stay out of the log.
    # Nested: "created" and friends would clash with LogRecord's own attributes.
    log.info("import aborted" if summary.aborted else "import finished",
             extra={"user_id": actor_id, "kind": summary.kind, "summary": summary.as_json()})
    if as_json:
        extra = {"error": error} if error is not None else {}
        click.echo(json.dumps({**summary.as_json(), "file": shown, "errors_file": errors_path, **extra}))
    else:
        click.echo(_describe(summary, shown), err=True)
    _pending_indexes(summary)


def _cause(exc: BaseException) -> str:
    """What went wrong, without values.

    A database error's text can quote row contents: its detail always may, and so does the
    primary message of a data exception (class 22: ``invalid input syntax for type uuid: "..."``),
    so those are named by their condition only. Any other exception is named by its type: its
    text is not ours to show (a bug's message could hold a value).
    """
    from sqlalchemy.exc import DBAPIError

    from carecli.data.databases import describe_dbapi_error

    cause = exc.__cause__ or exc
    if isinstance(cause, BatchConflict):
        return str(cause)
    if isinstance(cause, CarecliError):  # ours, written from names and rules, never from values
        return cause.message
    driver = cause.orig if isinstance(cause, DBAPIError) and cause.orig is not None else cause
    diag = getattr(driver, "diag", None)
    if diag is not None and diag.sqlstate:
        if diag.sqlstate.startswith("22"):
            primary = f"the database refused a value (SQLSTATE {diag.sqlstate})"
        else:
            primary = diag.message_primary or "database error"
        return f"{type(driver).__name__}: {primary}" + (
            f" (column {diag.column_name})" if diag.column_name else "") + (
            f" (constraint {diag.constraint_name})" if diag.constraint_name else "")
    if isinstance(cause, DBAPIError):
        return describe_dbapi_error(cause)
    return type(cause).__name__



"""``carecli export KIND``: stream a kind to a file or standard output, as CSV or JSON Lines.

The file has the columns ``carecli import KIND FILE`` reads, so an export
imports into another installation unchanged. A file is written beside its
final name and renamed into place only once the export (and its audit
summary) succeeded: a file under the name asked for is always complete.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TextIO

import click

from carecli.config import load_settings
from carecli.data.bulk.catalog import kind_named
from carecli.data.bulk.export import FORMATS, format_for, parse_where, run_export
from carecli.data.crypto.runtime import cipher_provider
from carecli.data.databases import open_databases, require_head
from carecli.data.replica import ReadUnitOfWork
from carecli.errors import ConfigError
from carecli.services.auth.current import resolve_actor

STDOUT = "-"
log = logging.getLogger("carecli.export")


@contextmanager
def _standard_output() -> Iterator[TextIO]:
    """UTF-8 text on standard output whatever the locale, without closing it afterwards."""
    # sys.stdout.buffer: click.get_binary_stream is deprecated (a warning in Click 8.5, gone in 9).
    stream = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="")
    try:
        yield stream
    finally:
        stream.detach()  # flushes, and leaves standard output open


@contextmanager
def _file_output(path: str) -> Iterator[TextIO]:
    """A private (0600) temporary file beside ``path``, renamed to it only if the block succeeds."""
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"--out {path} is a directory", hint="give a file name")
    folder = target.parent
    if not folder.is_dir():
        raise ConfigError(f"--out {path}: the folder {folder} does not exist")
    try:
        descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".part")
    except OSError as exc:
        raise ConfigError(f"cannot write in {folder}: {exc.strerror}") from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as stream:
            yield stream
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _output(path: str) -> AbstractContextManager[TextIO]:
    return _standard_output() if path == STDOUT else _file_output(path)


@click.command("export")
@click.argument("kind", metavar="KIND")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="csv or jsonl (default: from the --out file's extension, else csv).")
@click.option("--out", "out_path", default=STDOUT, show_default=True, metavar="FILE",
              help="Where to write ('-' is standard output); a file is created readable by you only.")
@click.option("--where", "where", multiple=True, metavar="EXPR",
              help="Only rows where 'column OP value' (OP: = != < <= > >=, or ~ for 'starts with'); "
                   "repeat to combine. Not SQL: the value is read by the column's type.")
@click.option("--include-phi", is_flag=True,
              help="Members: add the decrypted ssn and dob columns (needs phi:reveal; audited per member).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on standard error.")
def export_command(kind: str, fmt: str | None, out_path: str, where: tuple[str, ...], include_phi: bool,
                   as_json: bool) -> None:
    """Write every live row of KIND (members, plans, enrollments, specialists, calls, flags) in the
    columns `carecli import` reads.

    Streams in batches: memory stays flat however many rows there are.
    Every exported member is an audited read; SSN and date of birth only
    with --include-phi. Needs the export:run permission.
    """
    kind = kind_named(kind)
    conditions = parse_where(kind, where)
    fmt = format_for(out_path, fmt)
    settings = load_settings()
    databases = open_databases(settings)
    require_head(databases)
    actor = resolve_actor(settings, databases, channel="cli").actor
    cipher = cipher_provider(settings, databases) if include_phi else None
    started = time.perf_counter()
    try:
        # A long streamed read: the replica when one is configured; its audit rows go to the primary.
        with _output(out_path) as out, ReadUnitOfWork(databases.routing, actor, cipher=cipher) as uow:
            result = run_export(uow, kind, out, fmt, conditions=conditions, include_phi=include_phi,
                                identity=databases.identity)
    except BrokenPipeError:
        # Whoever read standard output went away (`| head`): stop quietly, and keep Python from
        # complaining again when it flushes standard output on exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.buffer.fileno())
        raise click.Abort() from None
    seconds = time.perf_counter() - started
    log.info("export finished", extra={"user_id": str(actor.user_id), "kind": kind, "rows": result.rows,
                                       "format": fmt, "include_phi": include_phi, "seconds": round(seconds, 3)})
    where_to = "standard output" if out_path == STDOUT else out_path
    if as_json:
        click.echo(json.dumps({"kind": kind, "rows": result.rows, "format": fmt, "include_phi": include_phi,
                               "seconds": round(seconds, 3), "out": out_path}), err=True)
    else:
        noun = kind if result.rows != 1 else kind[:-1]
        click.echo(f"exported {result.rows:,} {noun} to {where_to} in {seconds:.1f}s", err=True)

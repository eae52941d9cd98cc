"""``carecli export KIND``: stream a kind to a file or standard output, as CSV or JSON Lines.

The file has the columns ``carecli import KIND FILE`` reads, so an export
imports into another installation unchanged (a CSV holding text that starts
like a formula only with ``--raw``: by default such a cell gets a leading
``'`` against formula injection; JSON Lines is always as stored). A file is written beside its
final name and renamed into place only once the export (and its audit
summary) succeeded: a file under the name asked for is always complete.
That rename replaces whatever has the name, so ``--out`` may name only a
regular file or a new one (:func:`out_target`), checked before anything is
read.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import stat
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


#: what ``--out`` may name, said in every refusal
OUT_RULE = "--out writes only a regular file (replaced whole) or a new file in an existing folder"
_OUT_HINT = "give a file name, or '-' for standard output"
_FILE_TYPES = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a pipe (FIFO)"), (stat.S_ISSOCK, "a socket"))
#: what mkstemp adds to the temporary file's prefix: 8 random characters and the suffix
_TEMPORARY_SUFFIX = ".part"
_TEMPORARY_EXTRA = 8 + len(_TEMPORARY_SUFFIX)


def _limit(folder: str | Path, name: str, default: int) -> int:
    """A pathconf limit (``PC_NAME_MAX``, ``PC_PATH_MAX``) of the file system holding ``folder``."""
    for where in (folder, "."):
        try:
            return os.pathconf(where, name)
        except (OSError, ValueError):
            continue
    return default


def _file_type(mode: int) -> str:
    return next((what for test, what in _FILE_TYPES if test(mode)), "not a regular file")


def _refuse(path: str, what: str) -> ConfigError:
    return ConfigError(f"--out {path} is {what}: {OUT_RULE}", hint=_OUT_HINT)


def out_target(path: str) -> Path:
    """The file ``--out PATH`` is to become, checked before anything is read or written.

    The export is renamed over it, and a rename replaces whatever has the
    name: ``--out /dev/null`` run as root used to leave a 0600 regular file
    where the machine's /dev/null was. So only a regular file (replaced
    whole) or a new path in an existing folder; a device, pipe, socket or
    directory is a usage error. A symbolic link is followed: to a regular
    file, that file is replaced and the link stays; to anything else, or to
    nothing, it is refused like what it leads to. Lengths over the system's
    limits are usage errors too, named without echoing the path.
    """
    if path == "":
        raise ConfigError(f"--out needs a file name: {OUT_RULE}", hint=_OUT_HINT)
    folder = os.path.dirname(path) or "."
    name_max, path_max = _limit(folder, "PC_NAME_MAX", 255), _limit(folder, "PC_PATH_MAX", 4096)
    too_long = f"names may have at most {name_max} bytes and a path at most {path_max - 1}"
    if len(os.fsencode(path)) >= path_max:
        raise ConfigError(f"--out: the path is {len(os.fsencode(path))} bytes long; {too_long}")
    longest = max(len(os.fsencode(part)) for part in Path(path).parts)
    if longest > name_max:
        raise ConfigError(f"--out: a name in the path is {longest} bytes long; {too_long}")
    try:
        info: os.stat_result | None = os.stat(path)  # through symbolic links
    except FileNotFoundError:
        info = None
    except NotADirectoryError:
        raise ConfigError(f"--out {path}: a part of the path before the file name is not a folder",
                          hint=_OUT_HINT) from None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise ConfigError(f"--out: the path is too long; {too_long}") from None
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"--out {path}: too many symbolic links (a loop?)", hint=_OUT_HINT) from None
        raise ConfigError(f"--out {path}: cannot look at it: {exc.strerror}") from None
    if info is None:
        if os.path.islink(path):
            raise _refuse(path, "a symbolic link to nothing")
        if not os.path.isdir(folder):
            raise ConfigError(f"--out {path}: the folder {folder} does not exist")
        return Path(path)
    if not stat.S_ISREG(info.st_mode):
        linked = " (through a symbolic link)" if os.path.islink(path) else ""
        raise _refuse(path, _file_type(info.st_mode) + linked)
    resolved = os.path.realpath(path)
    try:
        same = os.path.samestat(os.stat(resolved), info)
    except OSError:
        same = False
    if not same:  # /proc/self/fd/N to a deleted file: no name to put the export under
        raise _refuse(path, "a link to a file with no name of its own")
    return Path(resolved)


def _temporary_prefix(target: Path) -> str:
    """``.NAME.``, NAME cut short where the temporary file's name or path would pass the system's limits."""
    folder = os.fsencode(str(target.parent))
    room = min(_limit(target.parent, "PC_NAME_MAX", 255),
               _limit(target.parent, "PC_PATH_MAX", 4096) - 1 - len(folder) - 1) - len("..") - _TEMPORARY_EXTRA
    name = target.name
    while name and len(os.fsencode(name)) > room:
        name = name[:-1]
    return f".{name}."


def _still_replaceable(target: Path) -> None:
    """Refuse to rename over ``target`` if it became anything but a regular file while the export ran."""
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise ConfigError(f"--out {target} became {_file_type(mode)} while the export ran: {OUT_RULE}; "
                          "nothing was written there")


@contextmanager
def _file_output(target: Path) -> Iterator[TextIO]:
    """A private (0600) temporary file beside ``target`` (from :func:`out_target`), renamed to it only if the
    block succeeds."""
    folder = target.parent
    try:
        descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=_temporary_prefix(target),
                                                 suffix=_TEMPORARY_SUFFIX)
    except OSError as exc:
        raise ConfigError(f"cannot write in {folder}: {exc.strerror}") from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as stream:
            yield stream
        _still_replaceable(target)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _output(target: Path | None) -> AbstractContextManager[TextIO]:
    return _standard_output() if target is None else _file_output(target)


@click.command("export")
@click.argument("kind", metavar="KIND")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="csv or jsonl (default: from the --out file's extension, else csv).")
@click.option("--out", "out_path", default=STDOUT, show_default=True, metavar="FILE",
              help="Where to write ('-' is standard output): a new file or a regular file, replaced whole when "
                   "the export is complete and readable by you only; never a device, pipe or directory.")
@click.option("--where", "where", multiple=True, metavar="EXPR",
              help="Only rows where 'column OP value' (OP: = != < <= > >=, or ~ for 'starts with'); "
                   "repeat to combine. Not SQL: the value is read by the column's type.")
@click.option("--include-phi", is_flag=True,
              help="Members: add the decrypted ssn and dob columns (needs phi:reveal; audited per member).")
@click.option("--raw", is_flag=True,
              help="CSV: write every cell as stored. By default a cell starting with = + - @, a tab or a line "
                   "break gets a leading ' so a spreadsheet shows it as text instead of running it as a formula "
                   "(plain signed numbers such as -12.50 or +15035550100 excepted). JSON Lines is always as stored.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on standard error.")
def export_command(kind: str, fmt: str | None, out_path: str, where: tuple[str, ...], include_phi: bool,
                   raw: bool, as_json: bool) -> None:
    """Write every live row of KIND (members, plans, enrollments, specialists, calls, flags) in the
    columns `carecli import` reads.

    Streams in batches: memory stays flat however many rows there are.
    Every exported member is an audited read; SSN and date of birth only
    with --include-phi. Needs the export:run permission.
    """
    kind = kind_named(kind)
    conditions = parse_where(kind, where)
    fmt = format_for(out_path, fmt)
    target = None if out_path == STDOUT else out_target(out_path)  # before anything is read or written
    settings = load_settings()
    databases = open_databases(settings)
    require_head(databases)
    actor = resolve_actor(settings, databases, channel="cli").actor
    cipher = cipher_provider(settings, databases) if include_phi else None
    started = time.perf_counter()
    try:
        # A long streamed read: the replica when one is configured; its audit rows go to the primary.
        with _output(target) as out, ReadUnitOfWork(databases.routing, actor, cipher=cipher) as uow:
            result = run_export(uow, kind, out, fmt, conditions=conditions, include_phi=include_phi,
                                identity=databases.identity, raw=raw)
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

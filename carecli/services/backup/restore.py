"""``restore_backup``: a verified backup into two empty databases, each in one transaction."""

from __future__ import annotations

import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from carecli.config import Settings
from carecli.data import audit, migrate
from carecli.data.actor import Actor
from carecli.data.crypto.backup_key import BackupKey
from carecli.data.crypto.stream import StreamStats
from carecli.data.databases import check_connection, create_database_engine, display_url
from carecli.errors import CarecliError, ConfigError
from carecli.services.backup.create import ENTITY_TYPE, BackupFailed
from carecli.services.backup.pgtools import (
    describe_failure,
    find_tool,
    libpq_target,
    server_major,
    tool_environment,
)
from carecli.services.backup.verify import open_backup

_USER_RELATIONS = text(
    """
    SELECT n.nspname || '.' || c.relname
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
    ORDER BY 1
    LIMIT 4
    """
)


class TargetNotEmpty(CarecliError):
    """A restore target already holds tables: restoring only ever goes into an empty database."""


@dataclass(frozen=True)
class RestoreResult:
    """What was restored where."""

    backup_id: str
    streams: list[StreamStats]
    revisions: dict[str, str | None]
    seconds: float
    pg_restore: str


def _check_revision_known(database: str, revision: str | None) -> None:
    """Refuse a backup whose schema this carecli does not know (made by a newer one)."""
    if revision is None:
        return
    script = ScriptDirectory.from_config(migrate.alembic_config(database))
    try:
        found = script.get_revision(revision)
    except CommandError:
        found = None
    if found is None:
        raise ConfigError(f"the backup's {database} database is at revision {revision}, "
                          "which this carecli does not know (the backup was made by a newer carecli)",
                          hint="restore it with the carecli version that made it, or a newer one")


def _check_target(engine: Engine, database: str, source_major: int) -> int:
    """The target's server major version, after checking it is reachable, new enough and empty."""
    check_connection(engine, database)
    with engine.connect() as connection:
        major = server_major(int(connection.execute(text("SHOW server_version_num")).scalar_one()))
        tables = connection.execute(_USER_RELATIONS).scalars().all()
    where = display_url(engine.url)
    if major < source_major:
        raise ConfigError(f"the {database} target at {where} runs PostgreSQL {major}, older than the backup's "
                          f"source ({source_major}); dumps do not load into older major versions",
                          hint=f"restore into PostgreSQL {source_major} or newer")
    if tables:
        shown = ", ".join(tables[:3]) + (", …" if len(tables) > 3 else "")
        raise TargetNotEmpty(f"the {database} target at {where} is not empty (it has {shown}); "
                             "restore only goes into an empty database",
                             hint="create a new, empty database (CREATE DATABASE …) and give its URL")
    return major


def restore_backup(path: Path, settings: Settings, targets: dict[str, URL], *,
                   key: BackupKey | None = None, pg_bin: Path | None = None) -> RestoreResult:
    """Restore every database of the backup at ``path`` into the empty databases ``targets`` names.

    Order of checks, all before anything is written: the header (key and MAC),
    that this carecli knows the backup's schema revisions, that every target
    is reachable, new enough and empty, and a full pass over the file checking
    every chunk. Then each database is restored by ``pg_restore
    --single-transaction`` from the decrypted stream: a chunk that fails now
    (the file changed since the check) kills pg_restore, and its transaction
    leaves the target empty. Afterwards each target is migrated to head (a
    no-op for a backup of this version) and the restore is audited in the
    restored platform database.
    """
    started = time.perf_counter()
    with open_backup(path, settings, key) as (reader, chosen):
        header = reader.header.fields
        streams = {stream["name"]: stream for stream in header.get("streams", [])}
        missing = [name for name in streams if name not in targets]
        if missing:
            raise ConfigError(f"no target given for the backup's {', '.join(missing)} database",
                              hint="give --identity-url and --platform-url")
        for name, stream in streams.items():
            _check_revision_known(name, stream.get("revision"))
        reader.verify()
    engines = {name: create_database_engine(targets[name], settings) for name in streams}
    try:
        target_majors = {name: _check_target(engines[name], name, server_major(int(stream["server_version_num"])))
                         for name, stream in streams.items()}
        dump_major = max(int(str(stream["pg_dump"]).split(".")[0]) for stream in streams.values())
        pg_restore = find_tool("pg_restore", max(dump_major, *target_majors.values()), pg_bin)
        restored: list[str] = []
        try:
            with open_backup(path, settings, chosen) as (reader, _key):
                for name, chunks in reader.streams():
                    _restore_stream(name, chunks, engines[name].url, pg_restore.path)
                    restored.append(name)
                stats = reader.stats
        except CarecliError as exc:
            if not restored:
                raise
            # Two databases cannot share one transaction: say what is already in place.
            raise BackupFailed(f"{exc.message}; the {' and '.join(restored)} database was already restored",
                               hint="drop and re-create all the target databases before trying again") from None
        revisions = {}
        for name, engine in engines.items():
            migrate.upgrade(engine, name)
            with engine.connect() as connection:
                revisions[name] = migrate.current_revision(connection, name)
        if "platform" in engines:
            audit.write_committed(engines["platform"], Actor.system("cli"), ENTITY_TYPE,
                                  _uuid(header.get("backup_id")), "restore", {
                                      "file": str(path), "file_bytes": path.stat().st_size,
                                      "databases": list(streams), "backup_created_at": header.get("created_at"),
                                      "dump_bytes": {s.name: s.plaintext_bytes for s in stats},
                                      "key_id": chosen.key_id, "pg_restore": pg_restore.version})
    finally:
        for engine in engines.values():
            engine.dispose()
    return RestoreResult(str(header.get("backup_id")), stats, revisions, time.perf_counter() - started,
                         pg_restore.version)


def _uuid(value: object) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return uuid.UUID(int=0)


def _restore_stream(name: str, chunks: Iterator[bytes], url: URL, pg_restore: Path) -> None:
    """Feed one decrypted stream to pg_restore; any failure kills it, so its transaction rolls back."""
    uri, env = libpq_target(url)
    command = [str(pg_restore), "--single-transaction", "--exit-on-error", "--no-owner", "--no-acl",
               "--no-password", f"--dbname={uri}"]
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors,
                                   env=tool_environment(env))
        assert process.stdin is not None
        try:
            for chunk in chunks:
                process.stdin.write(chunk)
            process.stdin.close()
        except BrokenPipeError:
            pass  # pg_restore stopped reading: its exit code and message say why
        except BaseException:
            # A chunk failed (the file changed since it was checked) or Ctrl-C: killing pg_restore
            # drops its connection, and the server rolls its single transaction back.
            process.kill()
            process.wait()
            raise
        code = process.wait()
        if code != 0:
            errors.seek(0)
            reason = describe_failure("pg_restore", code, errors.read())
            raise BackupFailed(f"the {name} database could not be restored ({reason}); it was left empty",
                               hint="check the target database's URL and that its user may create tables")

"""``create_backup``: pg_dump each database through the chunked encryptor into one file."""

from __future__ import annotations

import io
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from carecli import __version__
from carecli.data import audit, migrate
from carecli.data.actor import Actor
from carecli.data.crypto.backup_key import BackupKey
from carecli.data.crypto.stream import CHUNK_SIZE, BackupWriter, StreamStats
from carecli.data.databases import Databases
from carecli.data.ids import new_id
from carecli.data.permissions import Permission
from carecli.errors import CarecliError, PermissionDenied
from carecli.services.backup.files import private_output
from carecli.services.backup.pgtools import (
    describe_failure,
    find_tool,
    libpq_target,
    server_major,
    tool_environment,
)

ENTITY_TYPE = "backup"
#: a backup holds every member's PHI and every wrapped key: only someone who administers both may take one
REQUIRED = (Permission.USERS_ADMIN, Permission.KEYS_ADMIN)


class BackupFailed(CarecliError):
    """pg_dump or pg_restore failed; nothing was left under the file name or in the target."""


@dataclass(frozen=True)
class BackupResult:
    """What a finished backup holds."""

    backup_id: uuid.UUID
    path: Path
    file_bytes: int
    streams: list[StreamStats]
    seconds: float
    key_id: str
    pg_dump: str


def require_backup_permission(databases: Databases, actor: Actor) -> None:
    """Refuse (and audit the refusal) unless ``actor`` holds users:admin and keys:admin."""
    missing = [str(permission) for permission in REQUIRED if not actor.can(permission)]
    if not missing:
        return
    audit.write_committed(databases.platform, actor, ENTITY_TYPE, uuid.UUID(int=0), "deny",
                          {"operation": "create a backup", "permission": ",".join(missing)})
    role = actor.role or "this user"
    raise PermissionDenied(f"{role} may not create a backup: it needs the {' and '.join(repr(m) for m in missing)} "
                           "permission" + ("s" if len(missing) > 1 else ""),
                           hint="ask an administrator (a backup holds every member's data)")


def _describe_database(databases: Databases, name: str) -> dict[str, Any]:
    with databases.engine(name).connect() as connection:
        version_num = int(connection.execute(text("SHOW server_version_num")).scalar_one())
        version = str(connection.execute(text("SHOW server_version")).scalar_one()).split()[0]
        revision = migrate.current_revision(connection, name)
    return {"name": name, "server_version": version, "server_version_num": version_num, "revision": revision}


def create_backup(databases: Databases, actor: Actor, key: BackupKey, out: Path, *,
                  pg_bin: Path | None = None, chunk_size: int = CHUNK_SIZE) -> BackupResult:
    """Dump both databases into one encrypted backup file at ``out``.

    Audited twice in the platform database: a ``backup`` row committed before
    anything is dumped (if it cannot be written, no backup is taken: a backup
    is a read of every member), and one with the sizes once the file is
    complete. Raises :class:`BackupFailed` when pg_dump fails; then no file is
    left under ``out``.
    """
    require_backup_permission(databases, actor)
    described = [_describe_database(databases, name) for name, _engine in databases.items()]
    pg_dump = find_tool("pg_dump", max(server_major(d["server_version_num"]) for d in described), pg_bin)
    for stream in described:
        stream["pg_dump"] = pg_dump.version
    backup_id = new_id()
    created_at = datetime.now(UTC)
    fields = {
        "backup_id": str(backup_id),
        "created_at": created_at.isoformat(timespec="seconds"),
        "carecli_version": __version__,
        "key": key.describe(),
    }
    names = [stream["name"] for stream in described]
    audit.write_committed(databases.platform, actor, ENTITY_TYPE, backup_id, "backup", {
        "state": "started", "file": str(out), "databases": names, "key_id": key.key_id})
    started = time.perf_counter()
    try:
        with private_output(out) as handle:
            writer = BackupWriter(handle, key.key, fields, described, chunk_size=chunk_size)
            stats = [_dump_into(writer, databases, name, pg_dump.path) for name in names]
            writer.finish()
            file_bytes = writer.bytes_written
    except BaseException as exc:
        _audit_failure(databases, actor, backup_id, out, exc)
        raise
    seconds = time.perf_counter() - started
    audit.write_committed(databases.platform, actor, ENTITY_TYPE, backup_id, "backup", {
        "state": "completed", "file": str(out), "file_bytes": file_bytes, "databases": names,
        "dump_bytes": {s.name: s.plaintext_bytes for s in stats}, "chunks": sum(s.chunks for s in stats),
        "key_id": key.key_id, "pg_dump": pg_dump.version})
    return BackupResult(backup_id, out, file_bytes, stats, seconds, key.key_id, pg_dump.version)


def _audit_failure(databases: Databases, actor: Actor, backup_id: uuid.UUID, out: Path, exc: BaseException) -> None:
    """Close the 'started' row's story; best effort, the original error is what the user must see."""
    try:
        audit.write_committed(databases.platform, actor, ENTITY_TYPE, backup_id, "backup", {
            "state": "failed", "file": str(out), "error": type(exc).__name__})
    except Exception:  # noqa: BLE001 - the database may be the very thing that failed
        pass


def _dump_into(writer: BackupWriter, databases: Databases, name: str, pg_dump: Path) -> StreamStats:
    """Run pg_dump on one database and encrypt its stdout as the stream ``name``."""
    uri, env = libpq_target(databases.engine(name).url)
    command = [str(pg_dump), "--format=custom", "--no-password", f"--dbname={uri}"]
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
                                   env=tool_environment(env))
        assert isinstance(process.stdout, io.BufferedReader)  # stdout=PIPE with the default buffering
        try:
            stats = writer.write_stream(name, process.stdout)
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            process.stdout.close()
        code = process.wait()
        if code != 0:
            errors.seek(0)
            raise BackupFailed(f"the {name} database could not be dumped: "
                               f"{describe_failure('pg_dump', code, errors.read())}",
                               hint="check the database URL and that its user may read every table")
    return stats

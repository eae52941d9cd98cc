"""Data keys in the platform database: create, load, count, rotate, re-wrap."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from carecli.data import audit
from carecli.data.actor import Actor
from carecli.data.audit_seal import rewrap_seal_keys
from carecli.data.bulk.blind_index import rewrap_blind_index_key
from carecli.data.crypto.fields import FieldCipher, WrappedDataKey
from carecli.data.crypto.master import KEY_BYTES, MasterKey
from carecli.data.ids import new_id
from carecli.data.models.platform import DataKey
from carecli.errors import KeyUnavailable

DATA_KEYS = DataKey.__table__
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class DataKeyStatus:
    id: uuid.UUID
    status: str
    master_key_id: str
    created_at: datetime
    retired_at: datetime | None
    ssn_values: int
    dob_values: int

    @property
    def protects(self) -> int:
        return self.ssn_values + self.dob_values


def load_keys(connection: Connection) -> list[WrappedDataKey]:
    rows = connection.execute(select(DATA_KEYS.c.id, DATA_KEYS.c.wrapped_key, DATA_KEYS.c.status)).all()
    return [WrappedDataKey(row.id, bytes(row.wrapped_key), row.status) for row in rows]


def new_data_key(connection: Connection, master: MasterKey, *, status: str) -> uuid.UUID:
    """Generate a random 256-bit data key and store it wrapped by ``master``."""
    key_id = new_id()
    wrapped = master.wrap(secrets.token_bytes(KEY_BYTES), data_key_id=key_id)
    connection.execute(insert(DATA_KEYS).values(id=key_id, wrapped_key=wrapped, master_key_id=master.key_id,
                                                status=status))
    return key_id


def _audit_key(connection: Connection, actor: Actor | None, key_id: uuid.UUID, action: str,
               values: dict[str, object]) -> None:
    """A key operation's audit row, in the operation's own transaction (ids only, never key material)."""
    audit.write(connection, actor or Actor.system("cli"), "data_key", key_id, action, None, values)


def ensure_primary_key(engine: Engine, master: MasterKey, actor: Actor | None = None) -> None:
    """Create the first data key if there is none (safe when several processes race)."""
    with engine.connect() as connection:
        if connection.execute(select(DATA_KEYS.c.id).where(DATA_KEYS.c.status == "primary")).first():
            return
    try:
        with engine.begin() as connection:
            key_id = new_data_key(connection, master, status="primary")
            _audit_key(connection, actor, key_id, "create", {"status": "primary", "master_key_id": master.key_id})
    except IntegrityError as exc:
        # Another process made it; the one-primary index kept us from making two.
        # Anything else (the audit insert failing, say) is a real error.
        if getattr(getattr(exc.orig, "diag", None), "constraint_name", None) != "uq_data_keys_one_primary":
            raise


def open_cipher(engine: Engine, master: MasterKey) -> FieldCipher:
    """A cipher over the database's data keys, creating the first key on first use."""
    ensure_primary_key(engine, master)

    def loader() -> list[WrappedDataKey]:
        with engine.connect() as connection:
            return load_keys(connection)

    return FieldCipher(master, loader(), loader)


_COUNT_BY_KEY = text(
    """
    SELECT k.id, k.status, k.master_key_id, k.created_at, k.retired_at,
           coalesce(s.n, 0) AS ssn_values, coalesce(d.n, 0) AS dob_values
    FROM data_keys k
    LEFT JOIN (SELECT substring(encrypted_ssn FROM 2 FOR 16) AS kid, count(*) AS n
               FROM members WHERE encrypted_ssn IS NOT NULL GROUP BY 1) s ON s.kid = uuid_send(k.id)
    LEFT JOIN (SELECT substring(encrypted_dob FROM 2 FOR 16) AS kid, count(*) AS n
               FROM members WHERE encrypted_dob IS NOT NULL GROUP BY 1) d ON d.kid = uuid_send(k.id)
    ORDER BY k.created_at, k.id
    """
)


def key_status(engine: Engine) -> list[DataKeyStatus]:
    """Every data key with how many SSN and DOB values it protects."""
    with engine.connect() as connection:
        return [DataKeyStatus(**row._mapping) for row in connection.execute(_COUNT_BY_KEY)]


@dataclass(frozen=True)
class RotationResult:
    primary_id: uuid.UUID
    created_new_key: bool
    reencrypted_rows: int
    retired: list[uuid.UUID]


_CANDIDATES = text(
    """
    SELECT id, encrypted_ssn, encrypted_dob FROM members
    WHERE id > :after
      AND ((encrypted_ssn IS NOT NULL AND substring(encrypted_ssn FROM 2 FOR 16) <> :primary)
        OR (encrypted_dob IS NOT NULL AND substring(encrypted_dob FROM 2 FOR 16) <> :primary))
    ORDER BY id
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
    """
)
_REMAINING = text(
    """
    SELECT count(*) FROM members
    WHERE (encrypted_ssn IS NOT NULL AND substring(encrypted_ssn FROM 2 FOR 16) <> :primary)
       OR (encrypted_dob IS NOT NULL AND substring(encrypted_dob FROM 2 FOR 16) <> :primary)
    """
)


def rotate(engine: Engine, master: MasterKey, *, batch_size: int = 2000, new_key: bool = True,
           progress: ProgressCallback | None = None, max_passes: int = 50,
           actor: Actor | None = None) -> RotationResult:
    """Make a new primary data key and re-encrypt every value under it, online.

    Each batch is its own short transaction that locks its rows with
    ``FOR UPDATE SKIP LOCKED``: rows a user is editing right now are skipped
    and picked up by a later pass, so the app keeps running. The work is
    resumable by construction (a row already under the primary key is not a
    candidate): when a previous rotation was interrupted, or ``new_key`` is
    false, no new key is made and the re-encryption simply continues. Old keys
    are retired only once no value uses them. ``updated_at`` is not touched:
    re-encryption changes no content and must not make users' edits conflict.
    """
    created = False
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        # One rotation at a time.
        connection.execute(text("SELECT pg_advisory_xact_lock(7263110101)"))
        keys = load_keys(connection)
        for key in keys:
            # A wrong master key must fail here, before a new primary wrapped by
            # it is committed and every process with the right key loses writes.
            if key.status != "retired":
                master.unwrap(key.wrapped_key, data_key_id=key.id)
        previous = _primary(keys)
        if previous is None and not new_key:
            raise KeyUnavailable("there is no primary data key to resume a rotation to",
                                 hint="run `carecli keys rotate` without --resume-only to make one")
        unfinished = _remaining(connection, previous) if previous is not None else 0
        if new_key and not unfinished:
            connection.execute(update(DATA_KEYS).where(DATA_KEYS.c.status == "primary").values(status="active"))
            key_id = new_data_key(connection, master, status="primary")
            _audit_key(connection, actor, key_id, "create", {
                "status": "primary", "replaces": str(previous) if previous else None,
                "master_key_id": master.key_id})
            created = True
    with engine.connect() as connection:
        cipher = FieldCipher(master, load_keys(connection))
    primary = cipher.primary_id
    assert primary is not None
    done = 0
    total = _count_remaining(engine, primary)
    for _ in range(max_passes):
        after = uuid.UUID(int=0)
        while True:
            with engine.begin() as connection:
                connection.execute(text("SET LOCAL statement_timeout = 0"))
                rows = connection.execute(_CANDIDATES, {"after": after, "primary": primary.bytes,
                                                        "batch": batch_size}).all()
                if not rows:
                    break
                updates = [_reencrypt(cipher, row) for row in rows]
                connection.execute(text("UPDATE members SET encrypted_ssn = :ssn, encrypted_dob = :dob "
                                        "WHERE id = :id"), updates)
            done += len(rows)
            after = rows[-1].id
            if progress:
                progress(done, total)
        if _count_remaining(engine, primary) == 0:
            break
    retired = _retire_unused(engine, actor)
    return RotationResult(primary, created, done, retired)


def _primary(keys: list[WrappedDataKey]) -> uuid.UUID | None:
    return next((key.id for key in keys if key.status == "primary"), None)


def _remaining(connection: Connection, primary: uuid.UUID) -> int:
    return int(connection.execute(_REMAINING, {"primary": primary.bytes}).scalar_one())


def _count_remaining(engine: Engine, primary: uuid.UUID) -> int:
    with engine.connect() as connection:
        connection.execute(text("SET statement_timeout = 0"))
        return _remaining(connection, primary)


def _reencrypt(cipher: FieldCipher, row) -> dict:  # noqa: ANN001 - a result row
    values = {"id": row.id, "ssn": row.encrypted_ssn, "dob": row.encrypted_dob}
    for column, name in (("encrypted_ssn", "ssn"), ("encrypted_dob", "dob")):
        blob = getattr(row, column)
        if blob is None:
            continue
        plaintext = cipher.decrypt(bytes(blob), table="members", column=column, row_id=row.id)
        values[name] = cipher.encrypt(plaintext, table="members", column=column, row_id=row.id)
    return values


def _retire_unused(engine: Engine, actor: Actor | None) -> list[uuid.UUID]:
    retired = []
    for key in key_status(engine):
        if key.status == "active" and key.protects == 0:
            with engine.begin() as connection:
                changed = connection.execute(
                    update(DATA_KEYS).where(DATA_KEYS.c.id == key.id, DATA_KEYS.c.status == "active")
                    .values(status="retired", retired_at=text("now()"))).rowcount
                if changed:
                    _audit_key(connection, actor, key.id, "retire", {"status": "retired"})
            if changed:
                retired.append(key.id)
    return retired


def rewrap(engine: Engine, old_master: MasterKey, new_master: MasterKey, actor: Actor | None = None) -> int:
    """Re-wrap every data key under ``new_master`` in one transaction (audited in it); returns how many."""
    with engine.begin() as connection:
        rows = connection.execute(select(DATA_KEYS.c.id, DATA_KEYS.c.wrapped_key, DATA_KEYS.c.status)
                                  .order_by(DATA_KEYS.c.created_at).with_for_update()).all()
        for row in rows:
            raw = old_master.unwrap(bytes(row.wrapped_key), data_key_id=row.id)
            connection.execute(update(DATA_KEYS).where(DATA_KEYS.c.id == row.id).values(
                wrapped_key=new_master.wrap(raw, data_key_id=row.id), master_key_id=new_master.key_id))
        blind_index_key = rewrap_blind_index_key(connection, old_master, new_master)
        seal_keys = rewrap_seal_keys(connection, old_master, new_master)
        primary = next((row.id for row in rows if row.status == "primary"), None)
        if primary is not None:
            _audit_key(connection, actor, primary, "rewrap", {
                "rewrapped_keys": len(rows), "data_key_ids": [str(row.id) for row in rows],
                "blind_index_key": blind_index_key, "seal_keys": seal_keys,
                "old_master_key_id": old_master.key_id, "new_master_key_id": new_master.key_id})
        return len(rows)

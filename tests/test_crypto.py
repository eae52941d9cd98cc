"""PHI encryption on real PostgreSQL: no plaintext at rest, authenticated ciphertexts,
master keys, online key rotation, re-wrap, and the ``carecli keys`` commands."""

from __future__ import annotations

import base64
import copy
import os
import pickle
import threading
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql
from sqlalchemy import Engine, event, insert, text

from carecli.data.actor import Actor
from carecli.data.crypto import keystore
from carecli.data.crypto.fields import key_id_of
from carecli.data.crypto.master import (
    LocalMasterKey,
    encode_key,
    generate_master_key,
    keyring_account,
    resolve_master_key,
)
from carecli.data.crypto.phi import DateOfBirth, Ssn
from carecli.data.models.platform import Member as MemberTable
from carecli.data.permissions import ALL_PERMISSIONS
from carecli.data.repositories.members import RevealedPhi
from carecli.data.unit_of_work import PlatformUnitOfWork
from carecli.errors import EXIT_USAGE, ConfigError, DecryptionError, KeyUnavailable
from tests.cli import run_carecli

MEMBERS = MemberTable.__table__
# Hermetic subprocesses: a developer's real keyring must neither answer nor prompt.
FAIL_KEYRING = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}


# -- helpers -------------------------------------------------------------------


def _master(label: str = "test") -> LocalMasterKey:
    return LocalMasterKey(generate_master_key(), label)


def _actor() -> Actor:
    return Actor.create(uuid.uuid4(), ALL_PERMISSIONS, channel="cli", role="admin")


def _uow(engine: Engine, master: LocalMasterKey, actor: Actor | None = None) -> PlatformUnitOfWork:
    return PlatformUnitOfWork(engine, actor or _actor(), cipher=lambda: keystore.open_cipher(engine, master))


def _ssn(n: int) -> str:
    # Nine digits that cannot collide with timestamps, counts or UUID groups in a dump.
    return f"{517_240_000 + n:09d}"


def _dob(n: int) -> date:
    return date(1941 + n % 50, 1 + n % 12, 1 + n % 28)


def _create(engine: Engine, master: LocalMasterKey, ssn: str | None, dob: date | None,
            actor: Actor | None = None) -> uuid.UUID:
    with _uow(engine, master, actor) as uow:
        member = uow.members.create({"first_name": "Test", "last_name": "Member"},
                                    ssn=Ssn(ssn) if ssn else None, dob=DateOfBirth(dob) if dob else None)
        uow.commit()
    return member.id


def _reveal(engine: Engine, master: LocalMasterKey, member_id: uuid.UUID) -> RevealedPhi:
    with _uow(engine, master) as uow:
        return uow.members.reveal(member_id, ["ssn", "dob"], "test of decryption")


def _bulk_members(engine: Engine, master: LocalMasterKey, count: int) -> dict[uuid.UUID, tuple[str, date]]:
    """Many members fast: encrypted here and inserted in one statement (rotation tests need volume)."""
    cipher = keystore.open_cipher(engine, master)
    expected: dict[uuid.UUID, tuple[str, date]] = {}
    rows = []
    for n in range(count):
        member_id = uuid.uuid4()
        expected[member_id] = (_ssn(n), _dob(n))
        rows.append({"id": member_id, "first_name": "Bulk", "last_name": f"Member{n}",
                     "encrypted_ssn": cipher.encrypt_ssn(Ssn(_ssn(n)), member_id),
                     "encrypted_dob": cipher.encrypt_dob(DateOfBirth(_dob(n)), member_id)})
    with engine.begin() as connection:
        connection.execute(insert(MEMBERS), rows)
    return expected


def _decrypt_all(engine: Engine, master: LocalMasterKey) -> dict[uuid.UUID, tuple[str | None, date | None]]:
    """Every member's SSN and DOB, decrypted with a freshly loaded cipher."""
    cipher = keystore.open_cipher(engine, master)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, encrypted_ssn, encrypted_dob FROM members")).all()
    return {
        row.id: (cipher.decrypt_ssn(bytes(row.encrypted_ssn), row.id).reveal() if row.encrypted_ssn else None,
                 cipher.decrypt_dob(bytes(row.encrypted_dob), row.id).reveal() if row.encrypted_dob else None)
        for row in rows
    }


def _libpq(engines: Any, database: str = "platform") -> str:
    return engines.pair.url(database).set(drivername="postgresql").render_as_string(hide_password=False)


def _sql(engines: Any, statement: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(_libpq(engines), autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def _database_text(engines: Any) -> str:
    """Every row of every table of both databases, as PostgreSQL renders it (bytea as hex)."""
    parts: list[str] = []
    for database in ("identity", "platform"):
        with psycopg.connect(_libpq(engines, database)) as conn:
            tables = [row[0] for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
            for table in tables:
                query = sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier(table))
                parts.extend(row[0] for row in conn.execute(query))
    return "\n".join(parts)


def _keys(engine: Engine) -> dict[uuid.UUID, keystore.DataKeyStatus]:
    return {key.id: key for key in keystore.key_status(engine)}


# -- no plaintext at rest --------------------------------------------------------


def test_no_plaintext_ssn_or_dob_anywhere_in_the_databases(migrated_engines):
    engine, master = migrated_engines.platform, _master()
    known = [(_ssn(n), _dob(n)) for n in range(6)]
    ids = [_create(engine, master, ssn, dob) for ssn, dob in known]
    # An update with new PHI, an audited reveal and a soft delete leave audit rows too.
    changed_ssn, changed_dob = _ssn(99), date(1944, 7, 23)
    with _uow(engine, master) as uow:
        uow.members.update(ids[0], None, {"city": "Springfield"}, ssn=Ssn(changed_ssn), dob=DateOfBirth(changed_dob))
        uow.members.delete(ids[1], None)
        uow.commit()
    assert _reveal(engine, master, ids[0]).ssn == Ssn(changed_ssn)
    known.append((changed_ssn, changed_dob))

    # The stored values are carecli ciphertexts under the primary key, not the plaintext.
    primary = keystore.open_cipher(engine, master).primary_id
    for member_id, blob_ssn, blob_dob in _sql(migrated_engines,
                                              "SELECT id, encrypted_ssn, encrypted_dob FROM members"):
        for blob in (blob_ssn, blob_dob):
            assert blob[0] == 1 and key_id_of(blob) == primary
            for ssn, dob in known:
                assert ssn.encode() not in blob and dob.isoformat().encode() not in blob

    dump = _database_text(migrated_engines)
    assert str(ids[0]) in dump and "Springfield" in dump
    for ssn, dob in known:
        dashed = f"{ssn[:3]}-{ssn[3:5]}-{ssn[5:]}"
        for needle in (ssn, dashed, dob.isoformat(), ssn.encode().hex(), dob.isoformat().encode().hex()):
            assert needle not in dump
    # Audit rows name the PHI fields that changed, never their values.
    audit = "\n".join(row[0] for row in _sql(migrated_engines, "SELECT t::text FROM audit_logs t"))
    assert "encrypted_ssn" in audit and "[redacted]" in audit


# -- authenticated ciphertexts ------------------------------------------------------


@pytest.mark.parametrize("position", [20, 33, -1], ids=["nonce", "ciphertext", "tag"])
def test_a_tampered_ciphertext_fails_authentication(migrated_engines, position):
    engine, master = migrated_engines.platform, _master()
    member_id = _create(engine, master, _ssn(1), _dob(1))
    (blob,) = _sql(migrated_engines, "SELECT encrypted_ssn FROM members WHERE id = %s", (member_id,))[0]
    tampered = bytearray(blob)
    tampered[position] ^= 0x01
    _sql(migrated_engines, "UPDATE members SET encrypted_ssn = %s WHERE id = %s", (bytes(tampered), member_id))

    with pytest.raises(DecryptionError) as caught:
        _reveal(engine, master, member_id)
    message = str(caught.value)
    assert f"members.encrypted_ssn of row {member_id} failed authentication" in message
    assert "altered" in message and "hint:" in message
    assert _ssn(1) not in message


def test_a_damaged_header_is_reported_without_decrypting(migrated_engines):
    engine, master = migrated_engines.platform, _master()
    member_id = _create(engine, master, _ssn(1), _dob(1))
    cipher = keystore.open_cipher(engine, master)
    (blob,) = _sql(migrated_engines, "SELECT encrypted_dob FROM members WHERE id = %s", (member_id,))[0]
    with pytest.raises(DecryptionError, match="not a carecli ciphertext"):
        cipher.decrypt_dob(b"\x02" + blob[1:], member_id)
    with pytest.raises(DecryptionError, match="not a carecli ciphertext"):
        cipher.decrypt_dob(blob[:20], member_id)
    unknown_key = blob[:1] + uuid.uuid4().bytes + blob[17:]
    with pytest.raises(KeyUnavailable, match="not in this database's data_keys table"):
        cipher.decrypt_dob(unknown_key, member_id)


def test_a_ciphertext_moved_to_another_member_fails(migrated_engines):
    engine, master = migrated_engines.platform, _master()
    alice = _create(engine, master, _ssn(1), _dob(1))
    bob = _create(engine, master, _ssn(2), _dob(2))
    _sql(migrated_engines,
         "UPDATE members SET encrypted_ssn = (SELECT encrypted_ssn FROM members WHERE id = %s) WHERE id = %s",
         (alice, bob))
    with pytest.raises(DecryptionError, match=f"members.encrypted_ssn of row {bob}"):
        _reveal(engine, master, bob)
    assert _reveal(engine, master, alice).ssn == Ssn(_ssn(1))


def test_an_ssn_ciphertext_moved_into_the_dob_column_fails(migrated_engines):
    engine, master = migrated_engines.platform, _master()
    member_id = _create(engine, master, _ssn(3), _dob(3))
    _sql(migrated_engines, "UPDATE members SET encrypted_dob = encrypted_ssn WHERE id = %s", (member_id,))
    with pytest.raises(DecryptionError, match="members.encrypted_dob"):
        _reveal(engine, master, member_id)


def test_a_wrong_master_key_cannot_unwrap(migrated_engines):
    engine, master = migrated_engines.platform, _master()
    member_id = _create(engine, master, _ssn(4), _dob(4))
    impostor = _master("the impostor's file")
    with pytest.raises(KeyUnavailable) as caught:
        _reveal(engine, impostor, member_id)
    assert "the master key from the impostor's file cannot unwrap data key" in str(caught.value)
    with pytest.raises(KeyUnavailable, match="cannot unwrap"):
        _create(engine, impostor, _ssn(5), None)
    # Nothing was written with the wrong key.
    assert _sql(migrated_engines, "SELECT count(*) FROM members")[0][0] == 1


# -- the PHI wrappers ----------------------------------------------------------------


def test_phi_wrappers_are_masked_and_refuse_pickling():
    ssn, dob = Ssn("517-24-0001"), DateOfBirth(date(1950, 4, 30))
    for value, name in ((ssn, "Ssn"), (dob, "DateOfBirth")):
        assert repr(value) == f"{name}([PHI])"
        assert str(value) == "[PHI]" and f"{value}" == "[PHI]" and f"{value:>20}" == "[PHI]"
        assert "%s %r" % (value, value) == f"[PHI] {name}([PHI])"
        assert repr([value]) == f"[{name}([PHI])]"
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(value)
        with pytest.raises(TypeError, match="cannot be pickled"):
            copy.deepcopy(value)
    revealed = RevealedPhi(uuid.UUID("aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"), ssn, dob)  # a random id may hold "517"
    assert "517" not in repr(revealed) and "1950" not in repr(revealed)
    assert ssn.reveal() == "517240001" and ssn.formatted() == "517-24-0001" and ssn.masked() == "***-**-0001"
    assert dob.reveal() == date(1950, 4, 30)
    assert Ssn("517240001") == ssn and hash(Ssn("517240001")) == hash(ssn)
    with pytest.raises(ValueError, match="nine digits") as caught:
        Ssn("51724000")
    assert "51724000" not in str(caught.value)


# -- rotation -----------------------------------------------------------------------------


def test_rotation_while_another_thread_writes_loses_nothing(migrated_engines):
    engine, master = migrated_engines.platform, _master()
    batch = 100
    expected: dict[uuid.UUID, tuple[str, date]] = _bulk_members(engine, master, 1500)
    old_primary = keystore.open_cipher(engine, master).primary_id
    assert old_primary is not None
    # The rotation works through members in id order; the writer aims its updates
    # at the batch being re-encrypted right now, where a lost update would happen.
    in_id_order = sorted(expected)
    position = [0]
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []
    ops = [0]
    actor = _actor()

    def writer() -> None:
        n = 10_000
        try:
            while not stop.is_set():
                n += 1
                new_id = _create(engine, master, _ssn(n), _dob(n), actor)
                target = in_id_order[min(position[0] + n % batch, len(in_id_order) - 1)]
                with _uow(engine, master, actor) as uow:
                    uow.members.update(target, None, {}, ssn=Ssn(_ssn(n + 500_000)))
                    uow.commit()
                with lock:
                    expected[new_id] = (_ssn(n), _dob(n))
                    expected[target] = (_ssn(n + 500_000), expected[target][1])
                    ops[0] += 2
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def track(done: int, total: int) -> None:
        position[0] = done
        time.sleep(0.005)

    def widen_the_race(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # Between reading a batch and writing it back: a writer that is not kept
        # out by the rotation's row locks would commit here and be overwritten.
        if statement.startswith("UPDATE members SET encrypted_ssn = %(ssn)s"):
            time.sleep(0.02)

    event.listen(engine, "before_cursor_execute", widen_the_race)
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        while ops[0] < 4 and thread.is_alive():
            time.sleep(0.01)
        ops_before = ops[0]
        result = keystore.rotate(engine, master, batch_size=batch, progress=track)
        ops_during = ops[0] - ops_before
    finally:
        stop.set()
        thread.join(timeout=60)
        event.remove(engine, "before_cursor_execute", widen_the_race)
    assert not thread.is_alive()
    assert not errors, errors
    assert ops_during >= 10, "the writer should have kept writing during the rotation"

    assert result.created_new_key and result.primary_id != old_primary
    assert result.reencrypted_rows >= 1500 - ops_during
    assert result.retired == [old_primary]
    assert _decrypt_all(engine, master) == expected
    keys = _keys(engine)
    assert keys[old_primary].status == "retired" and keys[old_primary].protects == 0
    assert keys[old_primary].retired_at is not None
    assert keys[result.primary_id].status == "primary"
    assert keys[result.primary_id].ssn_values == len(expected) == keys[result.primary_id].dob_values


def test_a_key_still_in_use_is_not_retired_and_busy_rows_are_skipped(migrated_engines):
    engine, master = migrated_engines.platform, _master()
    expected = _bulk_members(engine, master, 30)
    old_primary = keystore.open_cipher(engine, master).primary_id
    assert old_primary is not None
    busy = next(iter(expected))
    # Someone is editing one member for the whole rotation: its row is locked.
    with psycopg.connect(_libpq(migrated_engines)) as editor:
        editor.execute("SELECT 1 FROM members WHERE id = %s FOR UPDATE", (busy,))
        result = keystore.rotate(engine, master, batch_size=7, max_passes=2)
        assert result.reencrypted_rows == 29
        assert result.retired == []
        keys = _keys(engine)
        assert keys[old_primary].status == "active" and keys[old_primary].protects == 2
        editor.rollback()
    resumed = keystore.rotate(engine, master, batch_size=7)
    assert not resumed.created_new_key and resumed.primary_id == result.primary_id
    assert resumed.reencrypted_rows == 1 and resumed.retired == [old_primary]
    assert _decrypt_all(engine, master) == expected


class _Interrupted(Exception):
    pass


def test_an_interrupted_rotation_resumes_without_another_key(migrated_engines):
    engine, master = migrated_engines.platform, _master()
    expected = _bulk_members(engine, master, 250)
    old_primary = keystore.open_cipher(engine, master).primary_id
    assert old_primary is not None

    def crash_after_first_batch(done: int, total: int) -> None:
        raise _Interrupted

    with pytest.raises(_Interrupted):
        keystore.rotate(engine, master, batch_size=100, progress=crash_after_first_batch)
    keys = _keys(engine)
    assert len(keys) == 2
    new_primary = next(key.id for key in keys.values() if key.status == "primary")
    assert keys[new_primary].protects == 200 and keys[old_primary].protects == 300
    assert keys[old_primary].status == "active"
    # Values under either key stay readable mid-rotation, and new writes use the new key.
    assert _decrypt_all(engine, master) == expected

    calls: list[tuple[int, int]] = []
    result = keystore.rotate(engine, master, batch_size=100, progress=lambda done, total: calls.append((done, total)))
    assert not result.created_new_key and result.primary_id == new_primary
    assert result.reencrypted_rows == 150 and calls[-1] == (150, 150)
    assert result.retired == [old_primary]
    assert set(_keys(engine)) == {old_primary, new_primary}
    assert _decrypt_all(engine, master) == expected


def test_resuming_a_rotation_with_no_primary_key_is_a_clear_error(migrated_engines):
    # `keys rotate --resume-only` before any data key exists used to end on a bare
    # AssertionError (the primary id was None); it is a KeyUnavailable and writes nothing.
    engine, master = migrated_engines.platform, _master()
    assert _keys(engine) == {}
    with pytest.raises(KeyUnavailable, match="no primary data key to resume"):
        keystore.rotate(engine, master, new_key=False)
    assert _keys(engine) == {}
    result = keystore.rotate(engine, master)  # without --resume-only it makes the first key
    assert result.created_new_key and set(_keys(engine)) == {result.primary_id}


def test_rotation_with_a_wrong_master_key_changes_nothing(migrated_engines):
    engine, master = migrated_engines.platform, _master()
    _bulk_members(engine, master, 5)
    before = keystore.key_status(engine)
    with pytest.raises(KeyUnavailable, match="cannot unwrap"):
        keystore.rotate(engine, _master("wrong"))
    assert keystore.key_status(engine) == before


def test_a_write_in_flight_holds_off_the_key_switch(migrated_engines):
    engine, master = migrated_engines.platform, _master()
    _bulk_members(engine, master, 3)
    old_primary = keystore.open_cipher(engine, master).primary_id
    results: list[keystore.RotationResult] = []
    with _uow(engine, master) as uow:
        member = uow.members.create({"first_name": "Late", "last_name": "Writer"}, ssn=Ssn(_ssn(7)))
        rotation = threading.Thread(target=lambda: results.append(keystore.rotate(engine, master)))
        rotation.start()
        rotation.join(timeout=0.5)
        # The primary key row is share-locked by this transaction: the rotation waits for it.
        assert rotation.is_alive()
        uow.commit()
    rotation.join(timeout=30)
    assert results and results[0].retired == [old_primary]
    assert _decrypt_all(engine, master)[member.id] == (_ssn(7), None)


# -- re-wrap -------------------------------------------------------------------------------


def test_rewrap_moves_the_data_keys_to_the_new_master(migrated_engines):
    engine, old, new = migrated_engines.platform, _master("old"), _master("new")
    expected = _bulk_members(engine, old, 20)
    keystore.rotate(engine, old)  # two keys: one primary, one retired; both are re-wrapped
    assert keystore.rewrap(engine, old, new) == 2
    assert {key.master_key_id for key in keystore.key_status(engine)} == {new.key_id}
    assert _decrypt_all(engine, new) == expected
    with pytest.raises(KeyUnavailable, match="the master key from old cannot unwrap"):
        _decrypt_all(engine, old)
    with pytest.raises(KeyUnavailable):
        keystore.rewrap(engine, old, _master())  # the old key can no longer open them


# -- master key sources ------------------------------------------------------------------


@pytest.fixture
def failing_keyring():
    """The keyring backend a server without a desktop session has: every call fails."""
    import keyring
    from keyring.backends.fail import Keyring as FailKeyring

    previous = keyring.get_keyring()
    keyring.set_keyring(FailKeyring())
    yield
    keyring.set_keyring(previous)


def test_no_master_key_source_says_exactly_what_to_configure(failing_keyring):
    with pytest.raises(ConfigError) as caught:
        resolve_master_key(env_key=None, key_file=None, keyring_scope="db.internal:5432/platform", embedded_dir=None)
    error = caught.value
    assert error.exit_code == EXIT_USAGE
    assert "no master key is configured" in error.message
    account = keyring_account("db.internal:5432/platform")
    for needle in ("CARECLI_MASTER_KEY_FILE", "0600", "CARECLI_MASTER_KEY", "carecli keys generate-master",
                   "service 'carecli'", f"user '{account}'"):
        assert needle in str(error)


def test_a_keyring_backend_that_raises_falls_through_to_the_error(monkeypatch):
    import keyring

    def broken(*args: object) -> None:
        raise RuntimeError("D-Bus is gone")

    monkeypatch.setattr(keyring, "get_password", broken)
    with pytest.raises(ConfigError, match="no master key is configured"):
        resolve_master_key(env_key=None, key_file=None, keyring_scope="x", embedded_dir=None)


def test_master_key_from_env_and_file(tmp_path, failing_keyring):
    key = generate_master_key()
    from_env = resolve_master_key(env_key=encode_key(key), key_file=None, keyring_scope="x", embedded_dir=None)
    assert from_env.key == key and from_env.source == "CARECLI_MASTER_KEY"
    assert encode_key(key) not in repr(from_env) and from_env.key_id.startswith("local:")

    path = tmp_path / "master.key"
    path.write_text(encode_key(key) + "\n")
    path.chmod(0o600)
    from_file = resolve_master_key(env_key=None, key_file=path, keyring_scope="x", embedded_dir=None)
    assert from_file.key_id == from_env.key_id

    with pytest.raises(ConfigError, match="not valid base64") as caught:
        resolve_master_key(env_key="not base64!", key_file=None, keyring_scope="x", embedded_dir=None)
    assert "generate-master" in str(caught.value)
    with pytest.raises(ConfigError, match="not 256 bits"):
        resolve_master_key(env_key=encode_key(b"short"), key_file=None, keyring_scope="x", embedded_dir=None)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_master_key(env_key=None, key_file=tmp_path / "missing", keyring_scope="x", embedded_dir=None)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_file_readable_by_others_is_refused(tmp_path, mode):
    path = tmp_path / "master.key"
    path.write_text(encode_key(generate_master_key()))
    path.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        resolve_master_key(env_key=None, key_file=path, keyring_scope="x", embedded_dir=None)
    assert "readable by other users" in str(caught.value) and f"chmod 600 {path}" in str(caught.value)


def test_the_embedded_setup_creates_a_private_master_key_once(tmp_path, failing_keyring):
    first = resolve_master_key(env_key=None, key_file=None, keyring_scope="x", embedded_dir=tmp_path / "data")
    path = tmp_path / "data" / "master.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert first.source == f"master key file {path}"
    again = resolve_master_key(env_key=None, key_file=None, keyring_scope="x", embedded_dir=tmp_path / "data")
    assert again.key_id == first.key_id


# -- the CLI ---------------------------------------------------------------------------------


def _cli_env(pair: Any, key: bytes | None) -> dict[str, str]:
    env = {**pair.env, **FAIL_KEYRING}
    if key is not None:
        env["CARECLI_MASTER_KEY"] = encode_key(key)
    return env


def _write_key_file(path: Path, key: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(encode_key(key) + "\n")
    return path


def test_cli_generate_master_prints_only_a_key():
    first, second = run_carecli("keys", "generate-master"), run_carecli("keys", "generate-master")
    assert first.code == 0 and first.err == ""
    lines = first.out.splitlines()
    assert len(lines) == 1 and len(base64.b64decode(lines[0], validate=True)) == 32
    assert first.out != second.out


def test_cli_status_rotate_and_rewrap(migrated_engines, tmp_path):
    pair, engine = migrated_engines.pair, migrated_engines.platform
    old_key = generate_master_key()
    old = LocalMasterKey(old_key, "test")
    env = _cli_env(pair, old_key)

    empty = run_carecli("keys", "status", env=env)
    assert empty.code == 0, empty.err
    assert f"master key: CARECLI_MASTER_KEY ({old.key_id})" in empty.out
    assert "no data keys yet" in empty.out

    expected = _bulk_members(engine, old, 40)
    first_key = keystore.open_cipher(engine, old).primary_id
    assert first_key is not None
    status = run_carecli("keys", "status", env=env)
    assert status.code == 0, status.err
    (row,) = [line for line in status.out.splitlines() if str(first_key) in line]
    assert row.split()[1:3] == ["primary", old.key_id] and row.split()[-2:] == ["40", "40"]

    rotated = run_carecli("keys", "rotate", "--batch-size", "15", env=env)
    assert rotated.code == 0, rotated.err
    assert rotated.err == ""  # progress only on a terminal
    assert "new primary data key:" in rotated.out and "members re-encrypted: 40" in rotated.out
    assert f"retired keys (no value uses them): {first_key}" in rotated.out
    keys = _keys(engine)
    new_key_id = next(key.id for key in keys.values() if key.status == "primary")
    assert keys[first_key].status == "retired"

    resumed = run_carecli("keys", "rotate", "--resume-only", env=env)
    assert resumed.code == 0, resumed.err
    assert "nothing to resume" in resumed.out and len(_keys(engine)) == 2

    new_key = generate_master_key()
    new = LocalMasterKey(new_key, "test")
    new_file = _write_key_file(tmp_path / "new.key", new_key)
    rewrapped = run_carecli("keys", "rewrap", "--new-key-file", str(new_file), env=env)
    assert rewrapped.code == 0, rewrapped.err
    assert f"re-wrapped 2 data keys under master key {new.key_id} (was {old.key_id})" in rewrapped.out
    assert "set CARECLI_MASTER_KEY to the new key" in rewrapped.out
    assert _decrypt_all(engine, new) == expected

    # The old key still runs `status` (marking the keys it cannot open) but can no longer rotate.
    stale = run_carecli("keys", "status", env=env)
    assert stale.code == 0 and "wrapped by a different master key" in stale.out
    refused = run_carecli("keys", "rotate", env=env)
    assert refused.code == EXIT_USAGE
    assert "cannot unwrap data key" in refused.err and "Traceback" not in refused.err
    assert len(_keys(engine)) == 2

    fresh = run_carecli("keys", "status", env=_cli_env(pair, new_key))
    assert fresh.code == 0 and "different master key" not in fresh.out
    assert f"master key: CARECLI_MASTER_KEY ({new.key_id})" in fresh.out

    # Audit: each key change in its own transaction (the first key, the new key, the retired one,
    # the re-wrap) plus a summary per rotate run, by the system actor, with ids but no key material.
    rows = _sql(migrated_engines, "SELECT action, entity_id, user_id, user_agent, new_values::text FROM audit_logs "
                "WHERE entity_type = 'data_key' ORDER BY created_at")
    assert [row[0] for row in rows] == ["create", "create", "retire", "rotate", "rotate", "rewrap"]
    assert rows[0][1] == first_key and rows[1][1] == new_key_id and rows[2][1] == first_key
    assert f'"replaces": "{first_key}"' in rows[1][4]
    assert rows[3][1] == new_key_id and '"reencrypted_rows": 40' in rows[3][4]
    assert rows[5][1] == new_key_id and '"rewrapped_keys": 2' in rows[5][4]
    assert all(row[2] is None and "(cli; os-user=" in row[3] for row in rows)
    audit = "\n".join(row[4] for row in rows)
    assert new.key_id in audit and old.key_id in audit
    for secret in (old_key, new_key):
        assert encode_key(secret) not in audit and secret.hex() not in audit


def test_cli_rewrap_refuses_bad_input(migrated_pair, tmp_path):
    key = generate_master_key()
    env = _cli_env(migrated_pair, key)
    loose = tmp_path / "loose.key"
    loose.write_text(encode_key(generate_master_key()))
    loose.chmod(0o644)
    cases = [
        ((), "give exactly one of --new-key-file PATH or --new-key-env VAR"),
        (("--new-key-file", str(loose)), f"chmod 600 {loose}"),
        (("--new-key-env", "CARECLI_NO_SUCH_VAR"), "CARECLI_NO_SUCH_VAR is not set"),
        (("--new-key-env", "CARECLI_MASTER_KEY"), "the new master key is the one already in use"),
        (("--new-key-file", str(_write_key_file(tmp_path / "ok.key", generate_master_key())), "--store"),
         "--store can only replace a master key kept in the OS keyring or carecli's own key file"),
    ]
    for args, message in cases:
        result = run_carecli("keys", "rewrap", *args, env=env)
        assert result.code == EXIT_USAGE, (args, result.err)
        assert message in result.err and "Traceback" not in result.err


def test_cli_without_a_master_key_says_what_to_configure(migrated_pair):
    result = run_carecli("keys", "rotate", env=_cli_env(migrated_pair, None))
    assert result.code == EXIT_USAGE
    assert "no master key is configured" in result.err
    assert "CARECLI_MASTER_KEY_FILE" in result.err and "CARECLI_MASTER_KEY" in result.err
    status = run_carecli("keys", "status", env=_cli_env(migrated_pair, None))
    assert status.code == EXIT_USAGE and "master key: none found" in status.out


@pytest.mark.slow
def test_cli_embedded_first_run_creates_the_master_key_and_rewrap_store_replaces_it(tmp_path):
    data_dir = tmp_path / "carecli-data"
    env = {"CARECLI_DATA_DIR": str(data_dir), **FAIL_KEYRING}
    first = run_carecli("keys", "status", env=env)
    assert first.code == 0, first.err
    key_file = data_dir / "master.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    old = resolve_master_key(env_key=None, key_file=key_file, keyring_scope="", embedded_dir=None)
    assert f"master key: master key file {key_file} ({old.key_id})" in first.out

    assert run_carecli("keys", "rotate", env=env).code == 0
    new_key = generate_master_key()
    new_file = _write_key_file(tmp_path / "new.key", new_key)
    stored = run_carecli("keys", "rewrap", "--new-key-file", str(new_file), "--store", env=env)
    assert stored.code == 0, stored.err
    assert f"stored the new master key in {key_file}" in stored.out
    assert key_file.read_text().strip() == encode_key(new_key)
    assert key_file.stat().st_mode & 0o777 == 0o600
    previous = data_dir / f"master.key.previous-{old.key_id.removeprefix('local:')}"
    assert previous.exists() and previous.stat().st_mode & 0o777 == 0o600

    after = run_carecli("keys", "status", env=env)
    assert after.code == 0, after.err
    assert LocalMasterKey(new_key, "x").key_id in after.out and "different master key" not in after.out


class _MemoryKeyring:
    """A working OS keyring stand-in (the test machines have none)."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.entries[(service, username)] = password


def test_cli_rewrap_store_replaces_a_keyring_master_key(migrated_engines, tmp_path, monkeypatch):
    import keyring
    from click.testing import CliRunner

    from carecli.cli.main import cli

    memory = _MemoryKeyring()
    monkeypatch.setattr(keyring, "get_password", memory.get_password)
    monkeypatch.setattr(keyring, "set_password", memory.set_password)
    old_key, new_key = generate_master_key(), generate_master_key()
    account = keyring_account("keyring-test")
    memory.set_password("carecli", account, encode_key(old_key))
    expected = _bulk_members(migrated_engines.platform, LocalMasterKey(old_key, "x"), 5)
    env = {**migrated_engines.pair.env, "CARECLI_KEYRING_NAME": "keyring-test"}

    new_file = _write_key_file(tmp_path / "new.key", new_key)
    result = CliRunner().invoke(cli, ["keys", "rewrap", "--new-key-file", str(new_file), "--store"], env=env)
    assert result.exit_code == 0, result.output
    old_id = LocalMasterKey(old_key, "x").key_id
    assert f"stored the new master key in the OS keyring (carecli/{account})" in result.output
    assert memory.entries[("carecli", account)] == encode_key(new_key)
    assert memory.entries[("carecli", f"{account}:previous:{old_id.removeprefix('local:')}")] == encode_key(old_key)
    assert _decrypt_all(migrated_engines.platform, LocalMasterKey(new_key, "x")) == expected

    status = CliRunner().invoke(cli, ["keys", "status"], env=env)
    assert status.exit_code == 0, status.output
    assert f"the OS keyring (carecli/{account}) ({LocalMasterKey(new_key, 'x').key_id})" in status.output


# -- the per-value primitives an import calls millions of times ----------------------------------------------


@given(key=st.binary(min_size=1, max_size=100), message=st.binary(max_size=3000))
@settings(max_examples=200, deadline=None)
def test_a_keyed_mac_is_the_hmac_of_the_standard_library(key: bytes, message: bytes) -> None:
    import hashlib
    import hmac

    from carecli.data.bulk.blind_index import KeyedMac

    mac = KeyedMac(key)
    assert mac(message) == hmac.digest(key, message, hashlib.sha256)
    assert mac(message) == mac(message)  # the keyed state is copied, never fed the message itself
    assert repr(mac) == "KeyedMac([key])"
    with pytest.raises(TypeError):
        pickle.dumps(mac)


def test_nonces_are_read_in_batches_never_repeat_and_a_forked_child_reads_its_own(monkeypatch) -> None:
    from carecli.data.crypto import fields

    reads: list[int] = []
    real = os.urandom

    def counting(size: int) -> bytes:
        reads.append(size)
        return real(size)

    monkeypatch.setattr(fields.os, "urandom", counting)
    nonces = fields._Nonces()
    taken = [nonces.take() for _ in range(3 * nonces.BATCH)]
    assert all(len(nonce) == fields.NONCE_BYTES for nonce in taken)
    assert len(set(taken)) == len(taken)
    assert reads == [fields.NONCE_BYTES * nonces.BATCH] * 3
    # Half a batch left in this process: a forked child must not take those, nor share what it reads after.
    for _ in range(nonces.BATCH // 2):
        taken.append(nonces.take())
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            with os.fdopen(write_end, "wb") as out:
                out.write(b"".join(nonces.take() for _ in range(nonces.BATCH)))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    theirs = [child[at:at + fields.NONCE_BYTES] for at in range(0, len(child), fields.NONCE_BYTES)]
    ours = taken + [nonces.take() for _ in range(nonces.BATCH)]
    assert len(theirs) == nonces.BATCH
    assert not set(theirs) & set(ours)
    assert len(set(ours)) == len(ours)

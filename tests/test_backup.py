"""``carecli backup`` end to end: real pg_dump / pg_restore, real databases, the real CLI in a subprocess.

One seeded source installation per module (200 members with encrypted SSN
and DOB, an admin with an API token holding users:admin and keys:admin, a
specialist with a token), and one backup of it made by ``carecli backup
create``. Tests damage copies of that file and restore into brand-new empty
databases (``empty_pair``).
"""

from __future__ import annotations

import base64
import os
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from carecli.config import load_settings
from carecli.data.actor import Actor
from carecli.data.crypto.backup_key import BackupKey, generate_backup_key
from carecli.data.crypto.keystore import open_cipher
from carecli.data.crypto.master import decode_key, encode_key, generate_master_key
from carecli.data.crypto.stream import MAGIC, BackupCorrupt
from carecli.data.databases import Databases, create_database_engine
from carecli.data.permissions import ALL_PERMISSIONS
from carecli.data.seeding import seed_demo_data
from carecli.errors import EXIT_AUTH, EXIT_FAILURE, EXIT_USAGE, CarecliError, ConfigError
from carecli.services.auth.tokens import create_api_token
from carecli.services.backup import restore
from carecli.services.backup.pgtools import find_tool
from carecli.services.backup.verify import open_backup, verify_backup
from tests.cli import Result, run_carecli
from tests.test_backup_stream import check_header_flip, chunk_offsets, damaged_part, flip, header_end

MEMBERS = 200
MASTER_KEY = encode_key(generate_master_key())
BACKUP_KEY = generate_backup_key()
BASE_ENV = {"CARECLI_MASTER_KEY": MASTER_KEY, "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}


@dataclass
class Source:
    """The seeded installation backups are taken of."""

    identity: Engine
    platform: Engine
    env: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str, token: str | None = "admin", **env: str) -> Result:
        full = {**self.env, **env}
        if token is not None:
            full["CARECLI_TOKEN"] = self.tokens[token]
        return run_carecli(*args, env=full)


def snapshot(engine: Engine) -> dict[str, tuple[int, str]]:
    """Per table: row count and an md5 over every row's text (rows in a fixed order).

    Audit rows about backups are left out: the one written when a backup
    completes (or is refused) is by nature not inside that backup.
    """
    result = {}
    with engine.connect() as connection:
        tables = connection.execute(text(
            "SELECT quote_ident(table_name) FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1")).scalars().all()
        for table in tables:
            where = "WHERE entity_type <> 'backup'" if table == "audit_logs" else ""
            row = connection.execute(text(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "
                f"FROM {table} t {where}")).one()
            result[table] = (row[0], row[1])
        result["(indexes)"] = (connection.execute(text(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'")).scalar_one(), "")
        result["(triggers)"] = (connection.execute(text(
            "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal")).scalar_one(), "")
    return result


def user_tables(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(text(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")).scalars())


@pytest.fixture(scope="module")
def source(pg_server: Any, template_pair: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    names = (pg_server.create_database("identity", template=template_pair.identity),
             pg_server.create_database("platform", template=template_pair.platform))
    settings = load_settings({})
    identity = create_database_engine(pg_server.url(names[0]), settings)
    platform = create_database_engine(pg_server.url(names[1]), settings)
    master = decode_key(MASTER_KEY, source="test")
    seed_demo_data(identity, platform, members=MEMBERS, seed=11, cipher=open_cipher(platform, master))
    env = {**pg_server.env_for(*names), **BASE_ENV,
           "XDG_STATE_HOME": str(tmp_path_factory.mktemp("backup-state"))}
    src = Source(identity, platform, env)
    databases = Databases(identity=identity, platform=platform)
    with identity.connect() as connection:
        ids: dict[str, uuid.UUID] = dict(connection.execute(text(
            "SELECT DISTINCT ON (r.name) r.name, u.id FROM users u JOIN roles r ON r.id = u.role_id "
            "WHERE r.name IN ('admin', 'specialist') ORDER BY r.name, u.email")).all())
    admin = Actor.create(ids["admin"], ALL_PERMISSIONS, channel="cli", role="admin")
    specialist = Actor.create(ids["specialist"], ["members:read"], channel="cli", role="specialist")
    src.tokens = {
        "admin": create_api_token(databases, admin, name="backup admin",
                                  scopes=["users:admin", "keys:admin"]).secret,
        "keys-only": create_api_token(databases, admin, name="keys only", scopes=["keys:admin"]).secret,
        "specialist": create_api_token(databases, specialist, name="reader", scopes=["members:read"]).secret,
    }
    try:
        yield src
    finally:
        identity.dispose()
        platform.dispose()
        for name in names:
            pg_server.drop_database(name)


@dataclass
class Made:
    path: Path
    snapshots: dict[str, dict[str, tuple[int, str]]]
    result: Result


@pytest.fixture(scope="module")
def backup(source: Source, tmp_path_factory: pytest.TempPathFactory) -> Made:
    """One backup of the source, made by the CLI, and the source's contents right after."""
    path = tmp_path_factory.mktemp("backups") / "source.ccbak"
    result = source.cli("backup", "create", "--out", str(path), CARECLI_BACKUP_KEY=BACKUP_KEY)
    assert result.code == 0, result.err
    return Made(path, {"identity": snapshot(source.identity), "platform": snapshot(source.platform)}, result)


@pytest.fixture(scope="module")
def derived(source: Source, tmp_path_factory: pytest.TempPathFactory) -> Made:
    """One backup made with no backup key configured: its key is derived from the master key."""
    path = tmp_path_factory.mktemp("derived") / "derived.ccbak"
    result = source.cli("backup", "create", "--out", str(path))
    assert result.code == 0, result.err
    return Made(path, {}, result)


@pytest.fixture
def targets(empty_pair: Any) -> Iterator[dict[str, Any]]:
    """Two brand-new empty databases, with engines and their URLs as CLI options."""
    settings = load_settings({})
    engines = {name: create_database_engine(empty_pair.url(name), settings) for name in ("identity", "platform")}
    options = [f"--identity-url={empty_pair.url('identity').render_as_string(hide_password=False)}",
               f"--platform-url={empty_pair.url('platform').render_as_string(hide_password=False)}"]
    yield {"engines": engines, "options": options, "pair": empty_pair}
    for engine in engines.values():
        engine.dispose()


def cli(*args: str, **env: str) -> Result:
    """carecli with no database configured and no one signed in (verify and restore need neither)."""
    return run_carecli(*args, env={**BASE_ENV, **env})


def damaged(made: Made, tmp_path: Path, how: str) -> Path:
    data = made.path.read_bytes()
    offsets = chunk_offsets(data)
    variants = {
        "header": lambda: flip(data, header_end(data) - 40),
        "middle-chunk": lambda: flip(data, offsets[len(offsets) // 2][0] + 100),
        "last-chunk": lambda: flip(data, len(data) - 5),
        "truncated-at-boundary": lambda: data[:offsets[-1][0]],
        "truncated-mid-chunk": lambda: data[:offsets[-1][0] + offsets[-1][1] // 2],
        "appended": lambda: data + b"junk",
    }
    path = tmp_path / f"{how}.ccbak"
    path.write_bytes(variants[how]())
    return path


# -- create ---------------------------------------------------------------------------------------


def test_create_writes_a_private_encrypted_file_and_audits_it(source: Source, backup: Made) -> None:
    assert "backup written to" in backup.result.out
    assert stat.S_IMODE(backup.path.stat().st_mode) == 0o600
    assert not [p for p in backup.path.parent.iterdir() if p.name.endswith(".part")]
    data = backup.path.read_bytes()
    # No plain dump: neither pg_dump's own markers nor any member's name or e-mail appear in the file.
    with source.platform.connect() as connection:
        people = connection.execute(text("SELECT last_name, email FROM members WHERE email IS NOT NULL "
                                         "LIMIT 20")).all()
    # Values of 8 bytes and more: a short name ("Kim", 3 bytes) turns up by chance in a few hundred KB of
    # ciphertext about once in a few hundred runs (it did in CI); an e-mail address never does.
    values = [v.encode() for row in people for v in row if len(v.encode()) >= 8]
    assert len(values) >= 20  # every e-mail at least
    for needle in [b"PGDMP", b"CREATE TABLE", b"audit_logs"] + values:
        assert needle not in data, needle
    with source.platform.connect() as connection:
        rows = connection.execute(text("SELECT action, entity_id, new_values, user_id FROM audit_logs "
                                       "WHERE entity_type = 'backup' ORDER BY created_at")).all()
    states = [row.new_values["state"] for row in rows if row.action == "backup"]
    assert states[-2:] == ["started", "completed"]
    completed = rows[-1].new_values
    assert completed["file"] == str(backup.path)
    assert completed["file_bytes"] == len(data)
    assert set(completed["dump_bytes"]) == {"identity", "platform"}
    assert rows[-1].user_id is not None  # the admin behind the token, not the system


def test_create_refused_without_both_admin_permissions_and_audited(source: Source, tmp_path: Path) -> None:
    for token in ("specialist", "keys-only"):
        out = tmp_path / f"{token}.ccbak"
        result = source.cli("backup", "create", "--out", str(out), token=token, CARECLI_BACKUP_KEY=BACKUP_KEY)
        assert result.code == EXIT_FAILURE, result.err
        assert "may not create a backup" in result.err and "users:admin" in result.err
        assert not out.exists() and not list(tmp_path.iterdir())
    with source.platform.connect() as connection:
        denials = connection.execute(text("SELECT count(*) FROM audit_logs WHERE entity_type = 'backup' "
                                          "AND action = 'deny'")).scalar_one()
    assert denials >= 2


def test_create_needs_a_signed_in_user(source: Source, tmp_path: Path) -> None:
    result = source.cli("backup", "create", "--out", str(tmp_path / "x.ccbak"), token=None)
    assert result.code == EXIT_AUTH
    assert "not signed in" in result.err


def test_create_refuses_bad_output_paths(source: Source, backup: Made, tmp_path: Path) -> None:
    existing = source.cli("backup", "create", "--out", str(backup.path), CARECLI_BACKUP_KEY=BACKUP_KEY)
    assert existing.code == EXIT_USAGE and "already exists" in existing.err
    missing = source.cli("backup", "create", "--out", str(tmp_path / "nope" / "x.ccbak"),
                         CARECLI_BACKUP_KEY=BACKUP_KEY)
    assert missing.code == EXIT_USAGE and "does not exist" in missing.err
    folder = source.cli("backup", "create", "--out", str(tmp_path), CARECLI_BACKUP_KEY=BACKUP_KEY)
    assert folder.code == EXIT_USAGE


def test_create_refuses_a_malformed_backup_key_and_a_pg_bin_without_pg_dump(source: Source, tmp_path: Path) -> None:
    bad = source.cli("backup", "create", "--out", str(tmp_path / "x.ccbak"), CARECLI_BACKUP_KEY="not-base64!")
    assert bad.code == EXIT_USAGE and "CARECLI_BACKUP_KEY is not valid base64" in bad.err
    no_tools = source.cli("backup", "create", "--out", str(tmp_path / "y.ccbak"), CARECLI_BACKUP_KEY=BACKUP_KEY,
                          CARECLI_PG_BIN=str(tmp_path))
    assert no_tools.code == EXIT_USAGE and "no pg_dump of PostgreSQL" in no_tools.err
    assert "CARECLI_PG_BIN" in no_tools.err
    assert not list(tmp_path.iterdir())


def test_a_key_file_readable_by_others_is_refused(source: Source, tmp_path: Path) -> None:
    key_file = tmp_path / "backup.key"
    key_file.write_text(BACKUP_KEY)
    key_file.chmod(0o644)
    result = source.cli("backup", "create", "--out", str(tmp_path / "x.ccbak"), CARECLI_BACKUP_KEY_FILE=str(key_file))
    assert result.code == EXIT_USAGE and "readable by other users" in result.err


# -- verify ---------------------------------------------------------------------------------------


def test_verify_an_intact_backup(backup: Made) -> None:
    result = cli("backup", "verify", str(backup.path), CARECLI_BACKUP_KEY=BACKUP_KEY)
    assert result.code == 0, result.err
    assert "intact" in result.out and "identity:" in result.out and "platform:" in result.out


@pytest.mark.parametrize("how", ["header", "middle-chunk", "last-chunk", "truncated-at-boundary",
                                 "truncated-mid-chunk", "appended"])
def test_verify_refuses_damage(backup: Made, tmp_path: Path, how: str) -> None:
    result = cli("backup", "verify", str(damaged(backup, tmp_path, how)), CARECLI_BACKUP_KEY=BACKUP_KEY)
    assert result.code == EXIT_FAILURE, (how, result.err)
    assert result.err.startswith("carecli: error:") and len(result.err.strip().splitlines()) <= 2


def test_verify_key_problems(backup: Made, tmp_path: Path) -> None:
    wrong = cli("backup", "verify", str(backup.path), CARECLI_BACKUP_KEY=generate_backup_key())
    assert wrong.code == EXIT_FAILURE and "made with backup key" in wrong.err
    none = cli("backup", "verify", str(backup.path))
    assert none.code == EXIT_USAGE and "no backup key is configured" in none.err
    missing = cli("backup", "verify", str(tmp_path / "missing.ccbak"), CARECLI_BACKUP_KEY=BACKUP_KEY)
    assert missing.code == EXIT_USAGE and "does not exist" in missing.err
    other = tmp_path / "not-a-backup"
    other.write_bytes(b"PGDMP" + os.urandom(100))
    foreign = cli("backup", "verify", str(other), CARECLI_BACKUP_KEY=BACKUP_KEY)
    assert foreign.code == EXIT_FAILURE and "not a carecli backup" in foreign.err


def test_a_backup_without_a_backup_key_uses_one_derived_from_the_master_key(derived: Made, tmp_path: Path) -> None:
    path = derived.path
    assert "derived from the master key" in derived.result.err
    assert cli("backup", "verify", str(path)).code == 0
    other_master = cli("backup", "verify", str(path), CARECLI_MASTER_KEY=encode_key(generate_master_key()))
    assert other_master.code == EXIT_FAILURE and "derived from master key" in other_master.err
    no_master = run_carecli("backup", "verify", str(path),
                            env={"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
                                 "XDG_DATA_HOME": str(tmp_path / "empty-data")})
    assert no_master.code == EXIT_USAGE and "no master key is configured" in no_master.err


# -- a damaged header ------------------------------------------------------------------------------

#: what each kind of backup needs to be opened, as settings (no backup key at all for the derived one)
OPENED_WITH = {"backup-key": {"CARECLI_BACKUP_KEY": BACKUP_KEY}, "master-derived": {"CARECLI_MASTER_KEY": MASTER_KEY}}


def _made(kind: str, backup: Made, derived: Made) -> Made:
    return backup if kind == "backup-key" else derived


@pytest.mark.parametrize("kind", list(OPENED_WITH))
def test_every_flipped_header_byte_of_a_real_backup_is_a_clean_error(backup: Made, derived: Made, tmp_path: Path,
                                                                     kind: str) -> None:
    """Each byte of the header of a backup `carecli backup create` made, flipped in turn and verified as the CLI
    does: always exit 1 with the damaged part named (or, a key id flipped into another well-formed one under a
    backup key, the key named); never an internal error, never "no backup key is configured"."""
    made = _made(kind, backup, derived)
    settings = load_settings(OPENED_WITH[kind])
    data = made.path.read_bytes()
    copy = tmp_path / "flipped.ccbak"
    copy.write_bytes(data)
    with copy.open("r+b", buffering=0) as handle:
        for at in range(header_end(data)):
            handle.seek(at)
            handle.write(bytes([data[at] ^ 0x01]))
            with pytest.raises(CarecliError) as caught:
                verify_backup(copy, settings)
            handle.seek(at)
            handle.write(data[at:at + 1])
            assert caught.value.exit_code == EXIT_FAILURE, (at, str(caught.value))
            check_header_flip(data, at, caught.value)
            if kind == "master-derived":  # the master key here is the one it names: nothing is a key mismatch
                assert isinstance(caught.value, BackupCorrupt), (at, str(caught.value))
    assert verify_backup(copy, settings).file_bytes == len(data)  # every byte was put back


@pytest.mark.parametrize("kind", list(OPENED_WITH))
def test_a_real_backup_cut_inside_its_header_is_a_clean_error(backup: Made, derived: Made, tmp_path: Path,
                                                              kind: str) -> None:
    data = _made(kind, backup, derived).path.read_bytes()
    settings = load_settings(OPENED_WITH[kind])
    copy = tmp_path / "cut.ccbak"
    for cut in range(header_end(data)):
        copy.write_bytes(data[:cut])
        with pytest.raises(BackupCorrupt) as caught:
            verify_backup(copy, settings)
        assert damaged_part(caught.value) in {"magic", "header length", "header", "header MAC"}
        assert ("empty" if cut == 0 else f"ends after {cut:,} bytes") in str(caught.value)


def test_verify_names_the_damaged_part_of_the_header(backup: Made, derived: Made, tmp_path: Path) -> None:
    """The CLI's exit code and message for each part, including the three flips of the key's description in a
    derived backup that used to say "no backup key is configured" and the salt's name that gave a KeyError."""
    data, derived_data = backup.path.read_bytes(), derived.path.read_bytes()
    end = header_end(data)
    cases = [
        (data, 0, "magic", OPENED_WITH["backup-key"]),
        (data, len(MAGIC) - 1, "version", OPENED_WITH["backup-key"]),
        (data, len(MAGIC), "header length", OPENED_WITH["backup-key"]),
        (data, data.index(b'"salt":') + 2, "salt", OPENED_WITH["backup-key"]),
        (data, data.index(b'"id":"backup:') + 2, "key id", OPENED_WITH["backup-key"]),
        (data, end - 1, "header MAC", OPENED_WITH["backup-key"]),
        (derived_data, derived_data.index(b'"key":') + 2, "key id", OPENED_WITH["master-derived"]),
        (derived_data, derived_data.index(b'"kind":') + 2, "key kind", OPENED_WITH["master-derived"]),
        (derived_data, derived_data.index(b'"kind":"master-derived"') + 10, "key kind",
         OPENED_WITH["master-derived"]),
        (derived_data, derived_data.index(b'"master_key_id":') + 2, "master key id", OPENED_WITH["master-derived"]),
    ]
    for source, at, part, env in cases:
        path = tmp_path / f"flipped-{at}.ccbak"
        path.write_bytes(flip(source, at))
        result = cli("backup", "verify", str(path), **env)
        assert result.code == EXIT_FAILURE, (part, result.err)
        assert f"damaged or not a carecli backup ({part}:" in result.err, (part, result.err)
        assert "internal error" not in result.err and "no backup key is configured" not in result.err
    cut = tmp_path / "cut.ccbak"
    cut.write_bytes(data[:end - 10])
    result = cli("backup", "verify", str(cut), **OPENED_WITH["backup-key"])
    assert result.code == EXIT_FAILURE and f"(header MAC: the file ends after {end - 10:,} bytes" in result.err


# -- restore --------------------------------------------------------------------------------------


def test_restore_into_fresh_databases_equals_the_source(backup: Made, targets: dict[str, Any]) -> None:
    result = cli("backup", "restore", str(backup.path), *targets["options"], CARECLI_BACKUP_KEY=BACKUP_KEY)
    assert result.code == 0, result.err
    assert "restored identity" in result.out and "restored platform" in result.out
    for name, engine in targets["engines"].items():
        assert snapshot(engine) == backup.snapshots[name], name
    restored = targets["engines"]["platform"]
    with restored.connect() as connection:
        members = connection.execute(text("SELECT count(*) FROM members WHERE encrypted_ssn IS NOT NULL")).scalar()
        row = connection.execute(text("SELECT new_values FROM audit_logs WHERE entity_type = 'backup' "
                                      "AND action = 'restore'")).one()
    assert members == MEMBERS
    assert row.new_values["file"] == str(backup.path) and row.new_values["databases"] == ["identity", "platform"]
    # A carecli pointed at the restored pair finds it at head and opens its data keys with the same master key.
    env = targets["pair"].env
    assert cli("db", "check", **env).code == 0
    keys = cli("keys", "status", **env)
    assert keys.code == 0, keys.err
    assert f"{MEMBERS:,}" in keys.out


@pytest.mark.parametrize("how", ["middle-chunk", "truncated-at-boundary"])
def test_restore_refuses_a_damaged_backup_and_writes_nothing(backup: Made, targets: dict[str, Any], tmp_path: Path,
                                                             how: str) -> None:
    result = cli("backup", "restore", str(damaged(backup, tmp_path, how)), *targets["options"],
                 CARECLI_BACKUP_KEY=BACKUP_KEY)
    assert result.code == EXIT_FAILURE, result.err
    for engine in targets["engines"].values():
        assert user_tables(engine) == []


def test_restore_refuses_a_database_that_is_not_empty(backup: Made, migrated_pair: Any,
                                                      targets: dict[str, Any]) -> None:
    options = [targets["options"][0],
               f"--platform-url={migrated_pair.url('platform').render_as_string(hide_password=False)}"]
    result = cli("backup", "restore", str(backup.path), *options, CARECLI_BACKUP_KEY=BACKUP_KEY)
    assert result.code == EXIT_FAILURE, result.err
    assert "platform target" in result.err and "is not empty" in result.err
    # checked before anything is written: the empty identity target stayed empty
    assert user_tables(targets["engines"]["identity"]) == []


def test_restore_usage_errors(backup: Made, targets: dict[str, Any]) -> None:
    same = targets["options"][0].replace("--identity-url", "--platform-url")
    twice = cli("backup", "restore", str(backup.path), targets["options"][0], same, CARECLI_BACKUP_KEY=BACKUP_KEY)
    assert twice.code == EXIT_USAGE and "same database" in twice.err
    bad_url = cli("backup", "restore", str(backup.path), targets["options"][0], "--platform-url=mysql://x/y",
                  CARECLI_BACKUP_KEY=BACKUP_KEY)
    assert bad_url.code == EXIT_USAGE and "--platform-url" in bad_url.err
    missing = cli("backup", "restore", str(backup.path), targets["options"][0], CARECLI_BACKUP_KEY=BACKUP_KEY)
    assert missing.code == EXIT_USAGE
    wrong_key = cli("backup", "restore", str(backup.path), *targets["options"],
                    CARECLI_BACKUP_KEY=generate_backup_key())
    assert wrong_key.code == EXIT_FAILURE
    for engine in targets["engines"].values():
        assert user_tables(engine) == []


def test_a_chunk_failing_during_restore_rolls_the_database_back(backup: Made, targets: dict[str, Any]) -> None:
    """The file changing between the check and the restore: pg_restore is stopped part-way, nothing stays."""
    settings = load_settings({"CARECLI_BACKUP_KEY": BACKUP_KEY})
    key = BackupKey(base64.b64decode(BACKUP_KEY), "test", "backup-key")
    engine = targets["engines"]["platform"]
    with engine.connect() as connection:
        major = int(connection.execute(text("SHOW server_version_num")).scalar_one()) // 10000
    pg_restore = find_tool("pg_restore", major, None).path
    with open_backup(backup.path, settings, key) as (reader, _key):
        streams = reader.streams()
        for name, chunks in streams:
            if name != "platform":
                for _chunk in chunks:
                    pass
                continue

            def broken() -> Iterator[bytes]:
                # Most of the first chunk (the archive's table of contents and the first tables' data),
                # then a chunk that fails: pg_restore has been creating tables by then.
                first = next(chunks)
                yield first[:len(first) * 3 // 4]
                raise BackupCorrupt("chunk 1 failed authentication (test)")

            with pytest.raises(BackupCorrupt):
                restore._restore_stream(name, broken(), engine.url, pg_restore)
            break
    assert user_tables(engine) == []


def test_pg_bin_override_must_be_new_enough(tmp_path: Path) -> None:
    folder = tmp_path / "bin"
    folder.mkdir()
    found = find_tool("pg_dump", 13, None)
    (folder / "pg_dump").symlink_to(found.path)
    assert find_tool("pg_dump", found.major, folder).major == found.major
    with pytest.raises(ConfigError, match=f"found: {found.major} at"):
        find_tool("pg_dump", found.major + 1, folder)

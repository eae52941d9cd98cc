"""The master key in an HSM, against SoftHSM2 through its PKCS#11 module.

The module makes its own token directory (``SOFTHSM2_CONF`` pointing at a
softhsm2.conf in a temporary directory) and token before the PKCS#11 library
is first loaded in this process, and unloads the library afterwards. It is
skipped only where the SoftHSM2 module is not installed (Debian package
``softhsm2``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from carecli.config import load_settings
from carecli.data import audit_seal
from carecli.data.actor import Actor
from carecli.data.bulk.blind_index import load_blind_index
from carecli.data.crypto import hsm, keystore
from carecli.data.crypto.hsm import HsmConfig, Pkcs11MasterKey, generate_master_key_in_token, open_master_key
from carecli.data.crypto.master import LocalMasterKey, MasterKey, encode_key, generate_master_key
from carecli.data.crypto.phi import Ssn
from carecli.data.databases import create_database_engine
from carecli.errors import EXIT_USAGE, ConfigError, KeyUnavailable
from tests.cli import run_carecli
from tests.conftest import DatabasePair
from tests.support.seeded import MASTER_KEY_BYTES, SEED_MEMBERS

SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")  # Debian package softhsm2
TOKEN = "carecli-test"
PIN = "4711-user"
SO_PIN = "0815-so"
WRONG_PIN = "9999-wrong-pin"

pytestmark = pytest.mark.skipif(
    not SOFTHSM_MODULE.exists(),
    reason=f"SoftHSM2's PKCS#11 module {SOFTHSM_MODULE} is not installed (Debian package softhsm2; "
           ".ci/run installs it)",
)
# Hermetic: a developer's real keyring must neither answer nor prompt.
FAIL_KEYRING = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}


@dataclass
class SoftHsm:
    module: Path
    token: str
    pin: str
    pin_file: Path

    def config(self, label: str, *, pin: str | None = None) -> HsmConfig:
        return HsmConfig(self.module, self.token, label, self.pin if pin is None else pin, "the test's PIN")

    def env(self, label: str) -> dict[str, str]:
        """carecli's environment for this token and key label (the PIN from its 0600 file)."""
        return {"CARECLI_HSM_MODULE": str(self.module), "CARECLI_HSM_TOKEN": self.token,
                "CARECLI_HSM_KEY_LABEL": label, "CARECLI_HSM_PIN_FILE": str(self.pin_file)}


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """A SoftHSM2 token of this module's own, in a temporary token directory."""
    util = shutil.which("softhsm2-util")
    assert util, "softhsm2-util is missing although the SoftHSM2 module is installed: install package softhsm2"
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)  # read by the module when it is initialised, below: after this
    subprocess.run([util, "--init-token", "--free", "--label", TOKEN, "--so-pin", SO_PIN, "--pin", PIN],
                   check=True, capture_output=True, text=True)
    pin_file = root / "pin"
    fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(PIN + "\n")
    try:
        yield SoftHsm(SOFTHSM_MODULE, TOKEN, PIN, pin_file)
    finally:
        hsm.close_sessions()
        import pkcs11

        pkcs11.unload(str(SOFTHSM_MODULE))
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


def _label() -> str:
    return f"k-{uuid.uuid4().hex[:8]}"


# -- the key in the token ------------------------------------------------------------------------------------


def test_the_key_is_generated_in_the_token_sensitive_and_never_extractable(softhsm: SoftHsm) -> None:
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    label = _label()
    key = generate_master_key_in_token(softhsm.config(label))
    assert key.key_id.startswith(f"pkcs11:{TOKEN}/{label}:") and len(key.key_id) <= 64
    assert "HSM" in key.source and PIN not in repr(key) and PIN not in key.source

    token = pkcs11.lib(str(softhsm.module)).get_token(token_label=TOKEN)
    with token.open() as session:  # logged in already: this process holds the token's login
        stored = session.get_key(object_class=ObjectClass.SECRET_KEY, label=label)
        attributes = stored.get_attributes([
            Attribute.TOKEN, Attribute.PRIVATE, Attribute.SENSITIVE, Attribute.ALWAYS_SENSITIVE,
            Attribute.EXTRACTABLE, Attribute.NEVER_EXTRACTABLE, Attribute.LOCAL, Attribute.VALUE_LEN,
            Attribute.WRAP, Attribute.UNWRAP, Attribute.ENCRYPT, Attribute.DECRYPT])
        assert attributes == {
            Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
            Attribute.ALWAYS_SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.NEVER_EXTRACTABLE: True,
            Attribute.LOCAL: True,  # generated by the token, not imported
            Attribute.VALUE_LEN: 32, Attribute.WRAP: False, Attribute.UNWRAP: False,
            Attribute.ENCRYPT: True, Attribute.DECRYPT: True}
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            stored[Attribute.VALUE]
        with pytest.raises(pkcs11.exceptions.PKCS11Error):
            stored[Attribute.EXTRACTABLE] = True

    # Never replaced; the same key opened again has the same id; another key has another.
    with pytest.raises(ConfigError, match="already holds a key labelled"):
        generate_master_key_in_token(softhsm.config(label))
    assert open_master_key(softhsm.config(label)).key_id == key.key_id
    other = generate_master_key_in_token(softhsm.config(_label()))
    assert other.key_id.rsplit(":", 1)[1] != key.key_id.rsplit(":", 1)[1]


def test_wrap_unwrap_round_trip_binds_the_data_key_id(softhsm: SoftHsm) -> None:
    key = generate_master_key_in_token(softhsm.config(_label()))
    data_key, key_id = generate_master_key(), uuid.uuid4()
    wrapped = key.wrap(data_key, data_key_id=key_id)
    assert len(wrapped) == 12 + 32 + 16 and data_key not in wrapped
    assert key.wrap(data_key, data_key_id=key_id) != wrapped  # a random IV each time
    assert key.unwrap(wrapped, data_key_id=key_id) == data_key
    assert open_master_key(key.config).unwrap(wrapped, data_key_id=key_id) == data_key

    with pytest.raises(KeyUnavailable, match=f"cannot unwrap data key {uuid.UUID(int=7)}") as swapped:
        key.unwrap(wrapped, data_key_id=uuid.UUID(int=7))  # pasted under another row's id
    assert "not the master key" in (swapped.value.hint or "")
    tampered = bytearray(wrapped)
    tampered[20] ^= 1
    for bad in (bytes(tampered), wrapped[:-1], wrapped[:10]):
        with pytest.raises(KeyUnavailable):
            key.unwrap(bad, data_key_id=key_id)
    other = generate_master_key_in_token(softhsm.config(_label()))
    with pytest.raises(KeyUnavailable):
        other.unwrap(wrapped, data_key_id=key_id)
    assert key.unwrap(wrapped, data_key_id=key_id) == data_key  # the session survives the failures


def test_threads_share_the_token_session_safely(softhsm: SoftHsm) -> None:
    keys = [generate_master_key_in_token(softhsm.config(_label())) for _ in range(2)]
    failures: list[BaseException] = []

    def work(key: Pkcs11MasterKey) -> None:
        try:
            for _ in range(40):
                data_key, key_id = generate_master_key(), uuid.uuid4()
                assert key.unwrap(key.wrap(data_key, data_key_id=key_id), data_key_id=key_id) == data_key
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(keys[n % 2],)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures


def test_configuration_errors_are_clear_and_never_show_the_pin(softhsm: SoftHsm, tmp_path: Path) -> None:
    label = _label()
    good = generate_master_key_in_token(softhsm.config(label))

    with pytest.raises(ConfigError) as wrong:
        open_master_key(softhsm.config(label, pin=WRONG_PIN))
    message = f"{wrong.value.message} {wrong.value.hint}"
    assert "is not the user PIN of token 'carecli-test'" in message and "the test's PIN" in message
    assert WRONG_PIN not in message and PIN not in message
    # A wrong PIN is found wrong although this process is logged in with the right one, which still works.
    data_key, key_id = generate_master_key(), uuid.uuid4()
    assert good.unwrap(good.wrap(data_key, data_key_id=key_id), data_key_id=key_id) == data_key

    with pytest.raises(ConfigError, match="no token labelled 'nope'") as no_token:
        open_master_key(HsmConfig(softhsm.module, "nope", label, PIN))
    assert f"'{TOKEN}'" in (no_token.value.hint or "")  # the tokens there are listed
    with pytest.raises(ConfigError, match="no key labelled 'absent'") as no_key:
        open_master_key(softhsm.config("absent"))
    assert "carecli keys hsm-init" in (no_key.value.hint or "")
    with pytest.raises(ConfigError, match="does not exist"):
        open_master_key(HsmConfig(tmp_path / "missing.so", TOKEN, label, PIN))

    # The settings: a PIN file readable by others is refused; no token label or PIN is an error.
    loose = tmp_path / "pin"
    loose.write_text(PIN)
    loose.chmod(0o644)
    base = softhsm.env(label)
    for env, expected in (({**base, "CARECLI_HSM_PIN_FILE": str(loose)}, "readable by other users"),
                          ({**base, "CARECLI_HSM_TOKEN": ""}, "no token label"),
                          ({**base, "CARECLI_HSM_PIN_FILE": ""}, "no PIN is configured")):
        with pytest.raises(ConfigError, match=expected) as refused:
            hsm.hsm_config(load_settings(env))
        assert PIN not in f"{refused.value.message} {refused.value.hint}"
    settings = load_settings(softhsm.env(label))
    config = hsm.hsm_config(settings)
    assert config.pin == PIN and PIN not in repr(settings) and PIN not in repr(config)
    assert hsm.hsm_config(load_settings({**softhsm.env(label), "CARECLI_HSM_PIN": "env-pin"})).pin == "env-pin"


# -- a seeded installation moves to the HSM and back ---------------------------------------------------------------


@pytest.fixture
def seeded(pg_server, seeded_template) -> Iterator[DatabasePair]:
    """A copy of the suite's seeded installation (300 members, SSN and DOB under MASTER_KEY_BYTES)."""
    pair = DatabasePair(pg_server.create_database("identity", template=seeded_template.identity),
                        pg_server.create_database("platform", template=seeded_template.platform), pg_server)
    yield pair
    pg_server.drop_database(pair.identity)
    pg_server.drop_database(pair.platform)


@pytest.fixture
def platform_engine(seeded: DatabasePair) -> Iterator[Engine]:
    engine = create_database_engine(seeded.url("platform"), load_settings({}))
    yield engine
    engine.dispose()


def _decrypt_all(engine: Engine, master: MasterKey) -> dict[uuid.UUID, tuple[str | None, date | None]]:
    cipher = keystore.open_cipher(engine, master)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, encrypted_ssn, encrypted_dob FROM members")).all()
    return {row.id: (cipher.decrypt_ssn(bytes(row.encrypted_ssn), row.id).reveal() if row.encrypted_ssn else None,
                     cipher.decrypt_dob(bytes(row.encrypted_dob), row.id).reveal() if row.encrypted_dob else None)
            for row in rows}


def _wrapping_ids(engine: Engine) -> set[str]:
    """The master key id every wrapped key in the database names."""
    with engine.connect() as connection:
        return {*connection.execute(text("SELECT master_key_id FROM data_keys")).scalars(),
                *connection.execute(text("SELECT master_key_id FROM audit_seal_keys")).scalars(),
                *connection.execute(text("SELECT metadata_value->>'master_key_id' FROM metadata "
                                         "WHERE entity_type = 'blind_index_key'")).scalars()}


def test_a_seeded_installation_rewraps_to_the_hsm_and_back(softhsm: SoftHsm, platform_engine: Engine) -> None:
    engine = platform_engine
    local = LocalMasterKey(MASTER_KEY_BYTES, "test")
    blind_before = load_blind_index(engine, local)  # the blind-index key, wrapped by the master key too
    assert audit_seal.seal(engine, local).sealed  # and a seal key
    expected = _decrypt_all(engine, local)
    assert len(expected) == SEED_MEMBERS and sum(1 for ssn, _ in expected.values() if ssn) > 0

    in_token = generate_master_key_in_token(softhsm.config(_label()))
    moved = keystore.rewrap(engine, local, in_token, actor=Actor.system("cli"))
    assert moved == len(keystore.key_status(engine)) >= 1
    assert _wrapping_ids(engine) == {in_token.key_id}
    assert _decrypt_all(engine, open_master_key(in_token.config)) == expected
    probe = Ssn("123-45-6789")
    assert load_blind_index(engine, in_token, create=False).ssn(probe) == blind_before.ssn(probe)
    report = audit_seal.verify(engine, in_token)
    assert report.intact and report.seals >= 1, report.findings
    with pytest.raises(KeyUnavailable):
        _decrypt_all(engine, local)  # the old key opens nothing any more
    audit_seal.seal(engine, in_token)  # sealing goes on under the HSM key

    back = LocalMasterKey(generate_master_key(), "test-back")
    keystore.rewrap(engine, in_token, back, actor=Actor.system("cli"))
    assert _wrapping_ids(engine) == {back.key_id}
    assert _decrypt_all(engine, back) == expected
    assert audit_seal.verify(engine, back).intact
    with pytest.raises(KeyUnavailable):
        keystore.rewrap(engine, in_token, local)  # the HSM key no longer opens them: nothing changes
    assert _wrapping_ids(engine) == {back.key_id}


def test_cli_hsm_init_and_rewrap_to_and_from_the_hsm(softhsm: SoftHsm, seeded: DatabasePair,
                                                      platform_engine: Engine, tmp_path: Path) -> None:
    label = _label()
    local_env = {**seeded.env, **FAIL_KEYRING, "CARECLI_MASTER_KEY": encode_key(MASTER_KEY_BYTES)}
    hsm_env = {**local_env, **softhsm.env(label)}
    expected = _decrypt_all(platform_engine, LocalMasterKey(MASTER_KEY_BYTES, "test"))

    missing = run_carecli("keys", "rewrap", "--to-hsm", env=hsm_env)
    assert missing.code == EXIT_USAGE and f"no key labelled '{label}'" in missing.err
    assert "carecli keys hsm-init" in missing.err

    created = run_carecli("keys", "hsm-init", env=hsm_env)
    assert created.code == 0, created.err
    key_id = created.out.strip()
    assert key_id.startswith(f"pkcs11:{TOKEN}/{label}:")
    again = run_carecli("keys", "hsm-init", env=hsm_env)
    assert again.code == EXIT_USAGE and "already holds a key labelled" in again.err
    assert open_master_key(softhsm.config(label)).key_id == key_id  # not replaced

    no_hsm = run_carecli("keys", "rewrap", "--to-hsm", env=local_env)
    assert no_hsm.code == EXIT_USAGE and "needs an HSM" in no_hsm.err
    both = run_carecli("keys", "rewrap", "--to-hsm", "--new-key-env", "X", env=hsm_env)
    assert both.code == EXIT_USAGE

    to_hsm = run_carecli("keys", "rewrap", "--to-hsm", env=hsm_env)
    assert to_hsm.code == 0, to_hsm.err
    assert f"under master key {key_id} (was local:" in to_hsm.out
    assert "backup key of their own" in to_hsm.err
    assert _wrapping_ids(platform_engine) == {key_id}
    assert _decrypt_all(platform_engine, open_master_key(softhsm.config(label))) == expected
    status = run_carecli("keys", "status", env=hsm_env)
    assert status.code == 0 and f"master key: the HSM (key '{label}'" in status.out and key_id in status.out
    assert "different master key" not in status.out
    twice = run_carecli("keys", "rewrap", "--to-hsm", env=hsm_env)
    assert twice.code == EXIT_USAGE and "already wrapped by master key" in twice.err

    new_key = generate_master_key()
    new_file = tmp_path / "new.key"
    fd = os.open(new_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(encode_key(new_key) + "\n")
    from_hsm = run_carecli("keys", "rewrap", "--from-hsm", "--new-key-file", str(new_file), env=hsm_env)
    assert from_hsm.code == 0, from_hsm.err
    back = LocalMasterKey(new_key, "test")
    assert f"under master key {back.key_id} (was {key_id})" in from_hsm.out
    assert "unset CARECLI_HSM_MODULE" in from_hsm.out
    assert _wrapping_ids(platform_engine) == {back.key_id}
    assert _decrypt_all(platform_engine, back) == expected

    for result in (missing, created, again, no_hsm, both, to_hsm, status, twice, from_hsm):
        assert PIN not in result.out + result.err and "Traceback" not in result.err
    # The audit trail names the keys, never the PIN or key material.
    with platform_engine.connect() as connection:
        rows = connection.execute(text("SELECT new_values::text FROM audit_logs WHERE entity_type = 'data_key' "
                                       "AND action = 'rewrap' ORDER BY created_at")).scalars().all()
    assert len(rows) == 2 and key_id in rows[0] and key_id in rows[1]
    assert all(PIN not in row and encode_key(new_key) not in row for row in rows)


def test_doctor_reports_the_hsm_master_key(softhsm: SoftHsm, seeded: DatabasePair) -> None:
    label = _label()
    in_token = generate_master_key_in_token(softhsm.config(label))
    engine = create_engine(seeded.url("platform"))
    try:
        keystore.rewrap(engine, LocalMasterKey(MASTER_KEY_BYTES, "test"), in_token)
    finally:
        engine.dispose()
    env = {**seeded.env, **FAIL_KEYRING, **softhsm.env(label)}
    result = run_carecli("doctor", env=env)
    (line,) = [line for line in result.out.splitlines() if "master key" in line]
    assert "the HSM" in line and "unwraps all" in line, result.out
    assert "backup key" in result.out  # warned: none can be derived from an HSM key

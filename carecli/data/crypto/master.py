"""Master keys: where they come from and how they wrap data keys.

A master key never encrypts PHI itself; it only wraps (encrypts) the data keys
stored in the platform database's ``data_keys`` table. Sources, in order:

1. ``CARECLI_MASTER_KEY``: the key itself, base64 (servers, CI).
2. ``CARECLI_MASTER_KEY_FILE``: a file holding it (a mounted secret).
3. The OS keyring (``keyring``): for a person at a terminal.
4. On the embedded server only, a key carecli creates on first run: in the
   keyring when one works, else in a 0600 file in the data dir.

``MasterKey`` is a small protocol: a KMS implementation wraps and unwraps by
calling its service and never hands the key out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from carecli.errors import ConfigError, KeyUnavailable

KEY_BYTES = 32
NONCE_BYTES = 12
KEYRING_SERVICE = "carecli"
MASTER_KEY_FILE_NAME = "master.key"


class MasterKey(Protocol):
    """Wraps and unwraps data keys; ``key_id`` names the key without revealing it."""

    @property
    def key_id(self) -> str: ...

    @property
    def source(self) -> str: ...

    def wrap(self, data_key: bytes, *, data_key_id: uuid.UUID) -> bytes: ...

    def unwrap(self, wrapped: bytes, *, data_key_id: uuid.UUID) -> bytes: ...


def _wrap_aad(data_key_id: uuid.UUID) -> bytes:
    # Binds a wrapped key to its row: a wrapped key pasted under another id will not unwrap.
    return b"carecli/data-key/" + data_key_id.bytes


@dataclass(frozen=True)
class LocalMasterKey:
    """A 256-bit master key held in memory (from env, file or keyring)."""

    key: bytes
    source: str

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise ConfigError(f"the master key from {self.source} is not 256 bits (32 bytes)")

    def __repr__(self) -> str:
        return f"LocalMasterKey(key_id={self.key_id!r}, source={self.source!r})"

    @property
    def key_id(self) -> str:
        """A fingerprint: an HMAC of a fixed label, so it identifies the key without exposing it."""
        return "local:" + hmac.new(self.key, b"carecli master key id", hashlib.sha256).hexdigest()[:16]

    def wrap(self, data_key: bytes, *, data_key_id: uuid.UUID) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + AESGCM(self.key).encrypt(nonce, data_key, _wrap_aad(data_key_id))

    def unwrap(self, wrapped: bytes, *, data_key_id: uuid.UUID) -> bytes:
        try:
            return AESGCM(self.key).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _wrap_aad(data_key_id))
        except InvalidTag:
            raise KeyUnavailable(
                f"the master key from {self.source} cannot unwrap data key {data_key_id}",
                hint="this is not the master key these data keys were wrapped with; "
                "check CARECLI_MASTER_KEY / CARECLI_MASTER_KEY_FILE or the keyring entry",
            ) from None


def generate_master_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str, *, source: str) -> LocalMasterKey:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"the master key from {source} is not valid base64",
            hint="generate one with `carecli keys generate-master`",
        ) from None
    return LocalMasterKey(raw, source)


def read_private_file(path: Path, *, source: str, missing_hint: str | None = None) -> str:
    """The text of a secret file (a key, a PIN) that only its owner may read; ConfigError naming ``source`` if
    it is missing, unreadable, or readable by the group or others."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{source} does not exist", hint=missing_hint) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror}") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{source} is readable by other users",
            hint=f"chmod 600 {path}",
        )
    return text


def _read_key_file(path: Path, *, source: str) -> LocalMasterKey:
    return decode_key(read_private_file(path, source=source), source=source)


def _keyring_get(account: str) -> str | None:
    """The keyring entry, or None when absent or when no keyring backend works."""
    try:
        import keyring
        from keyring.errors import KeyringError

        try:
            return keyring.get_password(KEYRING_SERVICE, account)
        except (KeyringError, RuntimeError):
            return None
    except Exception:  # a broken backend (D-Bus gone, locked) must not crash start-up
        return None


def _keyring_set(account: str, secret: str) -> bool:
    try:
        import keyring
        from keyring.backends.fail import Keyring as FailKeyring

        if isinstance(keyring.get_keyring(), FailKeyring):
            return False
        keyring.set_password(KEYRING_SERVICE, account, secret)
        return keyring.get_password(KEYRING_SERVICE, account) == secret
    except Exception:
        return False


def keyring_account(scope: str) -> str:
    return f"master-key:{scope}"


def resolve_master_key(
    *,
    env_key: str | None,
    key_file: Path | None,
    keyring_scope: str,
    embedded_dir: Path | None,
) -> LocalMasterKey:
    """Find the master key; on the embedded server create one on first use.

    Raises :class:`ConfigError` naming exactly what to configure.
    """
    if env_key:
        return decode_key(env_key, source="CARECLI_MASTER_KEY")
    if key_file is not None:
        return _read_key_file(key_file, source=f"master key file {key_file}")
    account = keyring_account(keyring_scope)
    stored = _keyring_get(account)
    if stored:
        return decode_key(stored, source=f"the OS keyring ({KEYRING_SERVICE}/{account})")
    if embedded_dir is not None:
        path = embedded_dir / MASTER_KEY_FILE_NAME
        if path.exists():
            return _read_key_file(path, source=f"master key file {path}")
        key = generate_master_key()
        if _keyring_set(account, encode_key(key)):
            return LocalMasterKey(key, f"the OS keyring ({KEYRING_SERVICE}/{account})")
        _write_private_file(path, encode_key(key) + "\n")
        return LocalMasterKey(key, f"master key file {path}")
    raise ConfigError(
        "no master key is configured, so member SSN and date of birth cannot be encrypted or read",
        hint="set CARECLI_MASTER_KEY_FILE to a 0600 file holding a base64 256-bit key "
        "(`(umask 077; carecli keys generate-master > FILE)`), or CARECLI_MASTER_KEY, "
        f"or store it in the OS keyring as service '{KEYRING_SERVICE}', user '{account}'",
    )


def _write_private_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)

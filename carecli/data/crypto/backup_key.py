"""The backup key: what encrypts backup files (never PHI fields, never data keys).

Sources, in order:

1. ``CARECLI_BACKUP_KEY``: the key itself, base64 (environment only).
2. ``CARECLI_BACKUP_KEY_FILE``: a 0600 file holding it (a mounted secret).
3. Neither: a key derived with HKDF-SHA256 from the master key, so a demo or
   a small install gets encrypted backups with nothing more to configure.

A separate key is what production should use: a backup made under it stays
restorable after the master key is re-wrapped or rotated, and it can be
handed to the recovery site without handing over the master key (which opens
every SSN and date of birth in the live database). The header of every backup
names the key's fingerprint and, for a derived key, the master key's id, so a
restore says exactly which key it needs.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from carecli.data.crypto.master import LocalMasterKey, MasterKey, read_private_file
from carecli.data.crypto.stream import KEY_BYTES, key_fingerprint
from carecli.errors import ConfigError

BACKUP_KEY_ENV = "CARECLI_BACKUP_KEY"
BACKUP_KEY_FILE_ENV = "CARECLI_BACKUP_KEY_FILE"
SOURCE_BACKUP_KEY = "backup-key"
SOURCE_MASTER = "master-derived"


@dataclass(frozen=True)
class BackupKey:
    """A 256-bit backup key and where it came from."""

    key: bytes
    source: str
    #: "backup-key" or "master-derived"
    kind: str
    #: for a derived key, the id of the master key it came from
    master_key_id: str | None = None

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise ConfigError(f"the backup key from {self.source} is not 256 bits (32 bytes)",
                              hint="generate one with `carecli backup generate-key`")

    def __repr__(self) -> str:
        return f"BackupKey(key_id={self.key_id!r}, source={self.source!r})"

    @property
    def key_id(self) -> str:
        return key_fingerprint(self.key)

    def describe(self) -> dict[str, str]:
        """What the backup header records about the key (never the key)."""
        described = {"kind": self.kind}
        if self.master_key_id:
            described["master_key_id"] = self.master_key_id
        return described


def generate_backup_key() -> str:
    """A new random backup key, base64."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def derive_from_master(master: MasterKey) -> BackupKey:
    """The backup key derived from ``master`` (used only when no backup key is configured).

    A master key in an HSM never leaves it, so nothing can be derived from it: backups then need a backup
    key of their own.
    """
    if not isinstance(master, LocalMasterKey):
        raise ConfigError(
            f"no backup key is configured, and the master key is in {master.source}, which never hands it out "
            "to derive one from",
            hint=f"set {BACKUP_KEY_FILE_ENV} to a 0600 file holding a backup key "
                 "(`(umask 077; carecli backup generate-key > FILE)`)",
        )
    key = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
               info=b"carecli backup key from master key v1").derive(master.key)
    return BackupKey(key, f"derived from the master key ({master.source})", SOURCE_MASTER, master.key_id)


def _decode(text: str, source: str) -> BackupKey:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"the backup key from {source} is not valid base64",
                          hint="generate one with `carecli backup generate-key`") from None
    return BackupKey(raw, source, SOURCE_BACKUP_KEY)


def _read_file(path: Path) -> BackupKey:
    source = f"backup key file {path}"
    return _decode(read_private_file(path, source=source, missing_hint=f"check {BACKUP_KEY_FILE_ENV}"), source)


def configured_backup_key(env_key: str | None, key_file: Path | None) -> BackupKey | None:
    """The configured backup key, or None when neither the variable nor the file is set."""
    if env_key:
        return _decode(env_key, BACKUP_KEY_ENV)
    if key_file is not None:
        return _read_file(key_file)
    return None


def resolve_backup_key(env_key: str | None, key_file: Path | None,
                       master: Callable[[], MasterKey]) -> BackupKey:
    """The configured backup key, else one derived from the master key (``master`` is called only then)."""
    return configured_backup_key(env_key, key_file) or derive_from_master(master())

"""Which backup key to use: for a new backup, and for the backup file at hand."""

from __future__ import annotations

from carecli.config import Settings
from carecli.data.crypto.backup_key import (
    BACKUP_KEY_FILE_ENV,
    SOURCE_BACKUP_KEY,
    SOURCE_MASTER,
    BackupKey,
    configured_backup_key,
    derive_from_master,
    resolve_backup_key,
)
from carecli.data.crypto.master import MASTER_KEY_FILE_NAME, LocalMasterKey, resolve_master_key
from carecli.data.crypto.runtime import master_key
from carecli.data.crypto.stream import BackupHeader, damaged
from carecli.data.databases import Databases
from carecli.errors import ConfigError


def key_for_create(settings: Settings, databases: Databases) -> BackupKey:
    """The configured backup key, else the one derived from this installation's master key."""
    return resolve_backup_key(settings.backup_key, settings.backup_key_file,
                              lambda: master_key(settings, databases))


def _keyring_scope(settings: Settings) -> str:
    # runtime.keyring_scope without opening the databases: a restore's source may be gone.
    if settings.keyring_name:
        return settings.keyring_name
    if settings.embedded:
        return f"embedded:{settings.data_dir}"
    url = settings.platform_url
    assert url is not None
    return f"{url.host or 'local'}:{url.port or 5432}/{url.database}"


def _master_without_databases(settings: Settings) -> LocalMasterKey:
    """The master key from the secret sources, never creating one (verify and restore only read)."""
    key_file = settings.master_key_file
    embedded_file = settings.data_dir / MASTER_KEY_FILE_NAME
    if key_file is None and settings.embedded and embedded_file.exists():
        key_file = embedded_file
    return resolve_master_key(env_key=settings.master_key, key_file=key_file,
                              keyring_scope=_keyring_scope(settings), embedded_dir=None)


def key_for_backup(settings: Settings, header: BackupHeader) -> BackupKey:
    """The key a backup file needs, by what its header says it was made with.

    A kind this carecli never writes, or a derived key without its master
    key's id, is a damaged header (exit 1), not a missing key: a flipped
    byte there must not send anyone looking for a key that does not exist.
    """
    described = header.fields["key"]  # read_header checked it is an object with an id
    kind = described.get("kind")
    if kind not in (SOURCE_BACKUP_KEY, SOURCE_MASTER):
        raise damaged("key kind", f"the header says the key is neither a {SOURCE_BACKUP_KEY} "
                                  f"nor {SOURCE_MASTER} one")
    if kind == SOURCE_MASTER and not (isinstance(described.get("master_key_id"), str)
                                      and described["master_key_id"]):
        raise damaged("master key id", "the header does not name the master key its key is derived from")
    if kind == SOURCE_MASTER:
        try:
            master = _master_without_databases(settings)
        except ConfigError as exc:
            raise ConfigError(
                f"this backup's key is derived from master key {described['master_key_id']}, "
                f"and no master key is configured here ({exc.message})",
                hint="set CARECLI_MASTER_KEY_FILE (or CARECLI_MASTER_KEY) to that master key",
            ) from None
        return derive_from_master(master)
    configured = configured_backup_key(settings.backup_key, settings.backup_key_file)
    if configured is None:
        raise ConfigError(
            f"this backup was made with backup key {header.key_id}, and no backup key is configured",
            hint=f"set {BACKUP_KEY_FILE_ENV} to a 0600 file holding it (or CARECLI_BACKUP_KEY)",
        )
    return configured

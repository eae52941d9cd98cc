"""Wiring: the master key and field cipher for the configured databases."""

from __future__ import annotations

from collections.abc import Callable

from carecli.config import Settings
from carecli.data.crypto.fields import FieldCipher
from carecli.data.crypto.keystore import open_cipher
from carecli.data.crypto.master import LocalMasterKey, resolve_master_key
from carecli.data.databases import Databases


def keyring_scope(settings: Settings, databases: Databases) -> str:
    """Which keyring entry holds this installation's master key."""
    if settings.keyring_name:
        return settings.keyring_name
    if databases.embedded is not None:
        return f"embedded:{databases.embedded.data_dir}"
    url = databases.platform.url
    return f"{url.host or 'local'}:{url.port or 5432}/{url.database}"


def master_key(settings: Settings, databases: Databases) -> LocalMasterKey:
    """The master key from the configured secret source (created once on the embedded server)."""
    return resolve_master_key(
        env_key=settings.master_key,
        key_file=settings.master_key_file,
        keyring_scope=keyring_scope(settings, databases),
        embedded_dir=databases.embedded.data_dir if databases.embedded is not None else None,
    )


def cipher_provider(settings: Settings, databases: Databases) -> Callable[[], FieldCipher]:
    """A loader for units of work: resolves the master key once, reloads data keys on demand."""
    key: list[LocalMasterKey] = []

    def load() -> FieldCipher:
        if not key:
            key.append(master_key(settings, databases))
        return open_cipher(databases.platform, key[0])

    return load

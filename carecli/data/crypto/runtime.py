"""Wiring: the master key and field cipher for the configured databases."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from carecli.config import Settings
from carecli.data.databases import Databases

if TYPE_CHECKING:  # loaded when a key is first needed: they bring cryptography (see cipher_provider)
    from carecli.data.crypto.fields import FieldCipher
    from carecli.data.crypto.master import LocalMasterKey, MasterKey


def keyring_scope(settings: Settings, databases: Databases) -> str:
    """Which keyring entry holds this installation's master key."""
    if settings.keyring_name:
        return settings.keyring_name
    if databases.embedded is not None:
        return f"embedded:{databases.embedded.data_dir}"
    url = databases.platform.url
    return f"{url.host or 'local'}:{url.port or 5432}/{url.database}"


def master_key(settings: Settings, databases: Databases) -> MasterKey:
    """The master key: in the HSM when one is configured (it takes precedence), else from the configured
    secret source (created once on the embedded server)."""
    if settings.hsm_module is not None:
        from carecli.data.crypto.hsm import hsm_config, open_master_key

        return open_master_key(hsm_config(settings))
    return local_master_key(settings, databases)


def local_master_key(settings: Settings, databases: Databases) -> LocalMasterKey:
    """The master key from CARECLI_MASTER_KEY, its file, the keyring or the embedded file, HSM or not."""
    from carecli.data.crypto.master import resolve_master_key

    return resolve_master_key(
        env_key=settings.master_key,
        key_file=settings.master_key_file,
        keyring_scope=keyring_scope(settings, databases),
        embedded_dir=databases.embedded.data_dir if databases.embedded is not None else None,
    )


def cipher_provider(settings: Settings, databases: Databases) -> Callable[[], FieldCipher]:
    """A loader for units of work: one cipher per process, made on first use.

    Unwrapped data keys stay cached across units of work (a reveal then costs
    one decryption, not an unwrap); the cipher re-reads the key table itself
    when a unit of work finds its primary key demoted or meets a key id it
    has not seen.
    """
    cache: list[FieldCipher] = []
    lock = threading.Lock()

    def load() -> FieldCipher:
        # Imported here: the key store, the master key and the cipher bring cryptography, which a process
        # that has not encrypted or decrypted anything yet (the app until a reveal or an edit) does without.
        from carecli.data.crypto.keystore import open_cipher

        with lock:
            if not cache:
                cache.append(open_cipher(databases.platform, master_key(settings, databases)))
            return cache[0]

    return load

"""Encrypted backups of both databases: create, verify, restore (see README, "Backups and recovery").

``pg_dump`` (custom format) streams through the chunked AES-256-GCM encryptor
(:mod:`carecli.data.crypto.stream`) straight into the backup file; a restore
streams the decrypted chunks into ``pg_restore --single-transaction``. No
plain dump is ever written to disk, and memory stays at a few chunks.
"""

from carecli.services.backup.create import BackupResult, create_backup
from carecli.services.backup.keys import key_for_backup, key_for_create
from carecli.services.backup.restore import RestoreResult, restore_backup
from carecli.services.backup.verify import VerifyResult, verify_backup

__all__ = [
    "BackupResult",
    "RestoreResult",
    "VerifyResult",
    "create_backup",
    "key_for_backup",
    "key_for_create",
    "restore_backup",
    "verify_backup",
]

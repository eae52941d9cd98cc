"""``verify_backup``: authenticate every chunk of a backup file without writing anything."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from carecli.config import Settings
from carecli.data.crypto.backup_key import SOURCE_MASTER, BackupKey
from carecli.data.crypto.stream import BackupReader, StreamStats, WrongBackupKey, damaged, read_header
from carecli.errors import ConfigError
from carecli.services.backup.keys import key_for_backup


@dataclass(frozen=True)
class VerifyResult:
    """A backup that passed every check: what it holds."""

    path: Path
    header: dict
    streams: list[StreamStats]
    file_bytes: int
    seconds: float
    key_source: str


@contextmanager
def open_backup(path: Path, settings: Settings,
                key: BackupKey | None = None) -> Iterator[tuple[BackupReader, BackupKey]]:
    """A reader over ``path`` whose header is authenticated under the right key (found from the header)."""
    if not path.is_file():
        raise ConfigError(f"backup file {path} does not exist or is not a file")
    try:
        handle = path.open("rb", buffering=1024 * 1024)
    except OSError as exc:
        raise ConfigError(f"cannot read backup file {path}: {exc.strerror}") from None
    with handle:
        header = read_header(handle)
        chosen = key or key_for_backup(settings, header)
        try:
            reader = BackupReader(handle, header, chosen.key)
        except WrongBackupKey as exc:
            if chosen.kind == SOURCE_MASTER:
                named = header.fields["key"].get("master_key_id")
                if named == chosen.master_key_id:
                    # The master key the header names is the one here, yet the key derived from it is
                    # not the one the header names: the header's key id was altered, not a missing key.
                    raise damaged("key id", f"the header names key {header.key_id}, which is not the key "
                                            f"derived from master key {named} it also names") from None
                raise WrongBackupKey(
                    f"this backup was made with a key derived from master key "
                    f"{named}; the master key here "
                    f"({chosen.master_key_id}) does not open it",
                    hint="set CARECLI_MASTER_KEY_FILE to the master key the backup was made under",
                ) from None
            raise exc from None
        yield reader, chosen


def verify_backup(path: Path, settings: Settings, key: BackupKey | None = None) -> VerifyResult:
    """Check the header MAC, every chunk, each stream's final chunk and the end of the file.

    Raises :class:`~carecli.data.crypto.stream.BackupCorrupt` (exit 1) at the
    first failure, or :class:`~carecli.data.crypto.stream.WrongBackupKey`.
    """
    started = time.perf_counter()
    with open_backup(path, settings, key) as (reader, chosen):
        source = chosen.source
        streams = reader.verify()
        header = reader.header.fields
    return VerifyResult(path, header, streams, path.stat().st_size, time.perf_counter() - started, source)

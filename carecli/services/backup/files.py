"""The backup file on disk: written privately beside its name, renamed into place only when complete."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from carecli.errors import ConfigError

SUFFIX = ".ccbak"


def default_name(now: datetime | None = None) -> Path:
    """``carecli-backup-YYYYMMDDTHHMMSSZ.ccbak`` in the current folder."""
    moment = now or datetime.now(UTC)
    return Path(f"carecli-backup-{moment.strftime('%Y%m%dT%H%M%SZ')}{SUFFIX}")


def check_target(path: Path) -> None:
    """Refuse, before any work, an output that is a folder, exists already, or sits in a missing folder."""
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder", hint="give a file name")
    if path.exists():
        raise ConfigError(f"--out {path} already exists", hint="give a new file name: backups are never overwritten")
    if not path.parent.is_dir():
        raise ConfigError(f"--out {path}: the folder {path.parent} does not exist")


@contextmanager
def private_output(path: Path) -> Iterator[BinaryIO]:
    """A 0600 temporary file in ``path``'s folder, synced and renamed to ``path`` if the block succeeds.

    Whatever stops the block (an error, Ctrl-C) removes the temporary file:
    a file under the name asked for is always a whole backup.
    """
    check_target(path)
    try:
        # mkstemp creates the file 0600 whatever the umask.
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        raise ConfigError(f"cannot write in {path.parent}: {exc.strerror}") from None
    try:
        with os.fdopen(descriptor, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        if path.exists():  # appeared while we worked: never overwrite
            raise ConfigError(f"--out {path} appeared while the backup ran", hint="give a new file name")
        os.replace(temporary, path)
        _sync_folder(path.parent)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _sync_folder(folder: Path) -> None:
    # The rename is durable only once the folder entry is on disk.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)

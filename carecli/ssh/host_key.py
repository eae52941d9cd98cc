"""The SSH host's own key: generated once (Ed25519), kept private (0600), reused on every start.

Clients pin it on first connection (``known_hosts``), so it must not change
between restarts; a key file that other users can read is refused, because
whoever reads it can impersonate the host.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import platformdirs

from carecli.config import APP_NAME
from carecli.errors import ConfigError

HOST_KEY_NAME = "ssh_host_ed25519_key"


def default_host_key_path() -> Path:
    """``<user data dir>/ssh_host_ed25519_key`` (``~/.local/share/carecli/…`` on Linux)."""
    return platformdirs.user_data_path(APP_NAME) / HOST_KEY_NAME


def load_or_create_host_key(path: Path):  # noqa: ANN201 - asyncssh.SSHKey
    """The host key at ``path``, created there first if there is none."""
    import asyncssh

    if path.exists():
        mode = path.stat().st_mode
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"the SSH host key {path} is readable by other users",
                              hint=f"run `chmod 600 {path}` (or remove it to make a new one; clients will then "
                              "warn that the host key changed)")
        try:
            return asyncssh.read_private_key(str(path))
        except (OSError, asyncssh.KeyImportError) as exc:
            raise ConfigError(f"cannot read the SSH host key {path}: {exc}") from None
    key = asyncssh.generate_private_key("ssh-ed25519", comment="carecli host key")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temporary = tempfile.mkstemp(prefix=".host-key-", dir=path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(key.export_private_key("openssh"))
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        path.with_name(path.name + ".pub").write_bytes(key.export_public_key("openssh"))
    except OSError as exc:
        raise ConfigError(f"cannot write the SSH host key {path}: {exc.strerror}",
                          hint="give --host-key a path in a directory you can write") from None
    return key

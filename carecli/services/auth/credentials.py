"""Where this machine keeps the session token between commands.

The OS keyring (service ``carecli``, account ``session:<scope>``) when a real
backend works; otherwise a ``0600`` file in the user state directory
(``~/.local/state/carecli/session-<hash of scope>`` on Linux). ``scope``
names the installation the session belongs to (the embedded data directory,
or the identity database's host, port and name), so sessions for two
deployments never overwrite each other.

Only the raw session token is kept here; the database holds its SHA-256.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from carecli.config import APP_NAME, Settings
from carecli.errors import AuthError, ConfigError

KEYRING_SERVICE = "carecli"


def session_scope(settings: Settings) -> str:
    """What installation a stored session belongs to (no user name, no password)."""
    if settings.embedded:
        return f"embedded:{Path(settings.data_dir).expanduser().resolve()}"
    url = settings.identity_url
    assert url is not None
    host = url.host or url.query.get("host") or "local"
    return f"{host}:{url.port or 5432}/{url.database}"


def keyring_account(scope: str) -> str:
    return f"session:{scope}"


def session_file_path(scope: str) -> Path:
    """The fallback file for ``scope`` in the user state directory."""
    digest = hashlib.sha256(scope.encode("utf-8")).hexdigest()[:16]
    return platformdirs.user_state_path(APP_NAME) / f"session-{digest}"


def _working_keyring() -> object | None:
    """The keyring backend, or None when only keyring's 'fail' backend (or nothing) is available."""
    try:
        import keyring
        from keyring.backends.fail import Keyring as FailKeyring

        backend = keyring.get_keyring()
        if isinstance(backend, FailKeyring):
            return None
        # A chainer with no working backends behind it is a fail backend in disguise.
        if getattr(backend, "backends", None) == []:
            return None
        return backend
    except Exception:  # a broken backend (D-Bus gone, locked) must not crash a command
        return None


@dataclass(frozen=True)
class CredentialStore:
    """The local home of one installation's session token: keyring entry or private file."""

    scope: str
    #: whether the OS keyring is used; None (``for_settings``): ask keyring the first time it matters
    use_keyring: bool | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> CredentialStore:
        return cls(scope=session_scope(settings))

    @functools.cached_property
    def keyring_works(self) -> bool:
        """Whether tokens go to the OS keyring (a real backend works), found out once, when first needed:
        importing keyring (it brings urllib.request, http.client, email and ssl) and picking its backend
        cost a launch tens of milliseconds, and a session kept in the file is read without either."""
        if self.use_keyring is not None:
            return self.use_keyring
        return _working_keyring() is not None

    @property
    def account(self) -> str:
        return keyring_account(self.scope)

    @property
    def path(self) -> Path:
        return session_file_path(self.scope)

    def describe(self) -> str:
        """Where the session token is kept, for ``carecli whoami``."""
        if not self.path.exists() and self.keyring_works:
            return f"the OS keyring (service '{KEYRING_SERVICE}', account '{self.account}')"
        return f"the file {self.path} (mode 0600)"

    # -- reading --------------------------------------------------------------------

    def load(self, *, strict: bool = True) -> str | None:
        """The stored session token, or None.

        The file first: it exists only while the last save went to it (a save to the keyring removes
        it, or fails), so it is never older than what the keyring holds; a keyring that stopped working
        and came back may still hold the token before it. With ``strict`` a session file that other
        users can read is refused: the session may have leaked, so it should be ended, not used.
        """
        secret = self._file_get(strict=strict)
        if secret is None and self.keyring_works:
            secret = self._keyring_get() or None
        return secret

    def _keyring_get(self) -> str | None:
        try:
            import keyring

            return keyring.get_password(KEYRING_SERVICE, self.account)
        except Exception:
            return None

    def _file_get(self, *, strict: bool) -> str | None:
        path = self.path
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read the session file {path}: {exc.strerror}") from None
        if strict and os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuthError(f"the session file {path} is readable by other users, so this session may have leaked",
                            hint="run `carecli logout` (it ends the session on the server) and `carecli login` again")
        return text or None

    # -- writing --------------------------------------------------------------------

    def save(self, token: str) -> None:
        """Keep ``token`` for the next commands (replacing any earlier one)."""
        if self.keyring_works and self._keyring_set(token):
            self._file_remove()  # a file left from a keyring-less time would shadow nothing but leaks
            return
        self._file_set(token)

    def _keyring_set(self, token: str) -> bool:
        try:
            import keyring

            keyring.set_password(KEYRING_SERVICE, self.account, token)
            return keyring.get_password(KEYRING_SERVICE, self.account) == token
        except Exception:
            return False

    def _file_set(self, token: str) -> None:
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Written to a private temporary file and renamed over: the token is never
            # in a file with wider permissions, not even for a moment.
            fd, temporary = tempfile.mkstemp(prefix=".session-", dir=path.parent)
            try:
                os.fchmod(fd, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(token + "\n")
                os.replace(temporary, path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise ConfigError(f"cannot save the session in {path}: {exc.strerror}",
                              hint="check that the directory is writable by you") from None

    def forget(self) -> None:
        """Remove the stored token from the keyring and the file (whichever hold it)."""
        if self.keyring_works:
            try:
                import keyring

                keyring.delete_password(KEYRING_SERVICE, self.account)
            except Exception:
                pass  # nothing stored, or the backend went away: nothing to forget there
        self._file_remove()

    def _file_remove(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot remove the session file {self.path}: {exc.strerror}") from None


@dataclass(frozen=True)
class HeldCredential(CredentialStore):
    """A session token held in memory only: the SSH host hands it to the app process it starts.

    Nothing is read from or written to the keyring or a file, so an SSH-hosted app
    can never pick up (or overwrite) the host account's own stored session.
    """

    token: str = ""

    @classmethod
    def holding(cls, token: str) -> HeldCredential:
        return cls(scope="ssh-host", use_keyring=False, token=token)

    def __repr__(self) -> str:  # the token must never reach a log through repr
        return "HeldCredential(token='***')"

    def describe(self) -> str:
        return "memory only (given to this app by the SSH host)"

    def load(self, *, strict: bool = True) -> str | None:
        return self.token or None

    def save(self, token: str) -> None:
        raise AuthError("this session was opened by the SSH host and cannot be replaced here",
                        hint="disconnect and connect again")

    def forget(self) -> None:
        """Nothing is stored, so there is nothing to forget."""

"""Errors that carry a user-facing message and the process exit code to use.

Every error a person or a script may see is one of these: it says what was
wrong and what to do, and it never embeds data values (PHI stays out of error
text by construction: messages are written from field names and settings,
never from row contents).
"""

from __future__ import annotations

# Exit codes shared by every subcommand (batch scripts rely on them).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # usage or configuration error, unreachable database
EXIT_ABORTED = 3
EXIT_AUTH = 4  # not signed in, session or token expired/revoked, sign-in refused
EXIT_IDLE = 5  # the app ended itself after the idle timeout (an SSH-hosted app cannot lock, so it ends)


class CarecliError(Exception):
    """Base class for errors that end a command with a clear message."""

    exit_code: int = EXIT_FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(CarecliError):
    """The configuration (environment, config file, command line) is invalid."""

    exit_code = EXIT_USAGE


class AuthError(CarecliError):
    """Authentication failed: not signed in, an expired or revoked session or token, a refused sign-in."""

    exit_code = EXIT_AUTH


class DatabaseUnavailable(CarecliError):
    """A database server could not be reached or refused the connection."""

    exit_code = EXIT_USAGE


class SchemaOutOfDate(CarecliError):
    """A database is not migrated to the revision this carecli expects."""

    exit_code = EXIT_USAGE


class KeyUnavailable(CarecliError):
    """A key is missing, wrong or cannot unwrap."""

    exit_code = EXIT_USAGE


class DecryptionError(CarecliError):
    """A ciphertext failed authentication: altered, moved to another row, or the wrong key."""


class PermissionDenied(CarecliError):
    """The actor's role lacks the permission an operation needs."""


class ConflictError(CarecliError):
    """The row changed since it was read (optimistic concurrency).

    ``changed_by`` (a staff user's id, from the row's last audit entry) and
    ``changed_at`` (the row's ``updated_at``, naive UTC) say who won the race
    and when, so the app can name them; neither is member data.
    """

    def __init__(self, message: str, *, hint: str | None = None, changed_by: object = None,
                 changed_at: object = None) -> None:
        super().__init__(message, hint=hint)
        self.changed_by = changed_by
        self.changed_at = changed_at


class ValidationError(CarecliError):
    """A value breaks a rule; ``field`` and ``rule`` say which."""

    exit_code = EXIT_FAILURE

    def __init__(self, field: str, rule: str, message: str, *,
                 problems: list[tuple[str, str, str]] | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.rule = rule
        self.detail = message
        #: every problem found, (field, rule, message), the first one being this error's own
        self.problems: list[tuple[str, str, str]] = problems or [(field, rule, message)]

    @classmethod
    def of(cls, problems: list[tuple[str, str, str]]) -> ValidationError:
        """One error carrying all of ``problems`` (a form shows each next to its field)."""
        field, rule, message = problems[0]
        return cls(field, rule, message, problems=list(problems))


class NotFound(CarecliError):
    """The record does not exist (or is soft-deleted and not asked for)."""

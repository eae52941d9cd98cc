"""Structured logs for operations people: JSON lines in a file, never PHI.

One line per event: ``ts`` (UTC, ISO 8601), ``level``, ``logger``,
``message`` and any ``extra={...}`` fields. The file is
``<user state dir>/carecli.log`` (``CARECLI_LOG_FILE`` / ``[logging] file``),
created ``0600`` and rotated at 10 MB (5 kept); the level is
``CARECLI_LOG_LEVEL`` / ``[logging] level`` (INFO by default).

What keeps PHI out, in order:

1. Callers log ids, counts, names of things and exit codes, never values.
2. :class:`RedactingFilter` on the handler rewrites anything that still looks
   like an SSN, an e-mail address, a phone number or a date of birth.
3. Third-party loggers stay at WARNING whatever carecli's level: SQLAlchemy
   logs statements *with their parameters* at INFO, which would put member
   data in the file.

Nothing is written to stderr: the app owns the terminal, and error text for
people is the CLI's job.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import platformdirs

APP_LOGGER = "carecli"
LOG_FILE_NAME = "carecli.log"
MAX_BYTES = 10 * 1024 * 1024
BACKUP_COUNT = 5
LOG_LEVEL_ENV = "CARECLI_LOG_LEVEL"
LOG_FILE_ENV = "CARECLI_LOG_FILE"
# Loggers of libraries we use that are noisy or dangerous (statement parameters) below WARNING.
QUIET_LOGGERS = ("sqlalchemy", "alembic", "psycopg", "urllib3", "requests", "authlib", "asyncio", "keyring",
                 "markdown_it", "asyncssh")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime",
                                                                                  "taskName"}

REDACTED = "[redacted]"
# The domain ends in letters and the local part does not follow "//": "postgres@127.0.0.1" and the user
# in "postgresql://carecli@db.internal/x" are not e-mail addresses (masked URLs stay readable).
_EMAIL = re.compile(r"(?<![\w.+/-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
_SSN = re.compile(r"(?<![\w-])\d{3}-?\d{2}-?\d{4}(?![\w-])")
# North American numbers with or without area code: (503) 555-0100, 503.555.0100, +1 503 555 0100, 555-0100.
_PHONE = re.compile(r"(?<![\w-])(?:\+?1[ .-]?)?(?:\(?\d{3}\)?[ .-]?)?\d{3}[ .-]\d{4}(?![\w-])")
# A date within a few characters after a word naming a birth date: "dob=1961-04-02", "birth date: 04/02/1961".
_DOB = re.compile(r"(?i)((?:dob|birth)[^\d\n]{0,20}?)(\d{4}-\d{1,2}-\d{1,2}|\d{1,2}/\d{1,2}/\d{2,4})")


def redact(text: str) -> str:
    """``text`` with anything that looks like an SSN, e-mail, phone number or birth date replaced."""
    text = _DOB.sub(lambda match: match.group(1) + REDACTED, text)
    text = _EMAIL.sub(REDACTED, text)
    text = _SSN.sub(REDACTED, text)
    return _PHONE.sub(REDACTED, text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: _redact_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(item) for item in value]
    return value


class RedactingFilter(logging.Filter):
    """The second line of defence: rewrites PHI-looking text in a record's message and extra fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the event
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        for name, value in list(vars(record).items()):
            if name not in _STANDARD_ATTRS:
                setattr(record, name, _redact_value(value))
        return True


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, then the record's extra fields.

    An exception is reduced to its type: a traceback's locals and messages can carry data values.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRS and name not in entry:
                entry[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
            entry["exc_where"] = _where(record.exc_info[2])
        return json.dumps(entry, default=str, ensure_ascii=False)


def _where(tb: Any) -> str | None:
    """``file:line`` of the innermost frame: enough to find the bug, no values."""
    frames = traceback.extract_tb(tb) if tb is not None else []
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else None


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating file handler whose files are created 0600 in a 0700 folder."""

    def _open(self):  # noqa: ANN202 - the stdlib's signature
        path = Path(self.baseFilename)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(fd, "a", encoding=self.encoding or "utf-8", errors=self.errors)


def default_log_file() -> Path:
    """``carecli.log`` in the platform's user state dir (``~/.local/state/carecli`` on Linux)."""
    return platformdirs.user_state_path("carecli") / LOG_FILE_NAME


_handler: PrivateRotatingFileHandler | None = None
_NULL = logging.NullHandler()


def configure_logging(level: str = "INFO", file: Path | None = None) -> Path | None:
    """Send carecli's log to the JSON-lines file; idempotent (a second call replaces the handler).

    Returns the file, or None when it cannot be opened (logging then stays off:
    a read-only home must not stop the app).
    """
    global _handler
    path = Path(file).expanduser() if file is not None else default_log_file()
    root = logging.getLogger()
    logging.getLogger(APP_LOGGER).removeHandler(_NULL)
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
        _handler = None
    try:
        handler = PrivateRotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUP_COUNT, encoding="utf-8")
    except OSError:
        # Without any handler Python's last-resort handler would print warnings on the terminal (over the app).
        logging.getLogger(APP_LOGGER).addHandler(_NULL)
        return None
    handler.setFormatter(JsonLinesFormatter())
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    # Root at WARNING keeps libraries quiet; our own logger gets the configured level.
    root.setLevel(logging.WARNING)
    logging.getLogger(APP_LOGGER).setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    _handler = handler
    return path


def configure_from_settings(environ: Mapping[str, str] | None = None) -> Path | None:
    """Configure logging from the settings; with a broken config, from the environment alone.

    A configuration error is the command's to report (with its exit code); the
    log should still record that the command ran and failed.
    """
    from carecli.config import load_logging_settings
    from carecli.errors import ConfigError

    env = os.environ if environ is None else environ
    try:
        level, file = load_logging_settings(env)  # not load_settings: no database URL is parsed to start up
        return configure_logging(level, file)
    except ConfigError:
        level = env.get(LOG_LEVEL_ENV, "INFO").upper()
        named = env.get(LOG_FILE_ENV) or None
        return configure_logging(level if level in logging.getLevelNamesMapping() else "INFO",
                                 Path(named) if named else None)


def shutdown_logging() -> None:
    """Remove carecli's file handler (tests, and an embedding program that configures its own logging)."""
    global _handler
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
        _handler.close()
        _handler = None
    logging.getLogger(APP_LOGGER).removeHandler(_NULL)

"""Structured logs: JSON lines in a 0600 file, the configured level, redaction, and what commands log.

In-process tests configure carecli's logging on a file of their own and put
the logging state back afterwards (the suite's own log file and its PHI scan
are set up in tests/conftest.py).
"""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from carecli import logs
from carecli.config import load_settings
from carecli.data.databases import create_database_engine
from carecli.errors import EXIT_USAGE, ConfigError
from tests.cli import run_carecli


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    """carecli logging configured on a private file for one test; the previous state restored after."""
    app_logger = logging.getLogger(logs.APP_LOGGER)
    saved = (logging.getLogger().level, app_logger.level,
             {name: logging.getLogger(name).level for name in logs.QUIET_LOGGERS})
    path = tmp_path / "private" / "carecli.log"
    yield path
    logs.shutdown_logging()
    logging.getLogger().setLevel(saved[0])
    app_logger.setLevel(saved[1])
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize(("raw", "kept"), [
    ("ssn 123-45-6789", "ssn [redacted]"),
    ("undashed 123456789 too", "undashed [redacted] too"),
    ("write to ada.okafor@example.org now", "write to [redacted] now"),
    ("call (503) 555-0100 or 503.555.0100 or +1 503 555 0100 or 555-0100",
     "call [redacted] or [redacted] or [redacted] or [redacted]"),
    ("dob=1961-04-02, date of birth: 04/02/1961", "dob=[redacted], date of birth: [redacted]"),
    # Not PHI, kept as they are: ids, timestamps, addresses of servers, counts, masked URLs.
    ("member 0a1b2c3d-1234-5678-9abc-def012345678 at 2026-12-02T03:30:23+00:00",
     "member 0a1b2c3d-1234-5678-9abc-def012345678 at 2026-12-02T03:30:23+00:00"),
    ("postgresql+psycopg://carecli:***@db.internal:5432/platform from 203.0.113.7, 1,000,000 rows",
     "postgresql+psycopg://carecli:***@db.internal:5432/platform from 203.0.113.7, 1,000,000 rows"),
    ("postgresql+psycopg://postgres@127.0.0.1:5432/x", "postgresql+psycopg://postgres@127.0.0.1:5432/x"),
])
def test_redact(raw: str, kept: str) -> None:
    assert logs.redact(raw) == kept


def test_a_json_line_per_event_with_extra_fields_redacted_in_a_private_file(log_file: Path) -> None:
    assert logs.configure_logging("INFO", log_file) == log_file
    # Outside the "carecli" logger tree: the suite's scan of in-process records would (rightly) flag this PHI.
    log = logging.getLogger("redaction_test")
    log.setLevel(logging.INFO)
    log.info("imported %s rows for %s", 3, "ada@example.org", extra={"kind": "members", "contact": "555-0100",
                                                                      "nested": {"ssn": "123-45-6789"}})
    log.debug("not at INFO")
    try:
        raise ValueError("value 123-45-6789 inside")
    except ValueError:
        log.error("it broke", exc_info=True)
    first, second = read_lines(log_file)
    assert set(first) == {"ts", "level", "logger", "message", "kind", "contact", "nested"}
    assert first["level"] == "INFO" and first["logger"] == "redaction_test"
    assert first["message"] == "imported 3 rows for [redacted]"
    assert first["contact"] == "[redacted]" and first["nested"] == {"ssn": "[redacted]"}
    assert first["ts"].endswith("+00:00")
    # An exception is its type and where, never its message or the traceback's values.
    assert second["exc_type"] == "ValueError" and second["exc_where"].startswith("test_logs.py:")
    assert "123-45" not in log_file.read_text()
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(log_file.parent.stat().st_mode) == 0o700


def test_configuring_twice_replaces_the_handler_and_level(log_file: Path, tmp_path: Path) -> None:
    logs.configure_logging("INFO", log_file)
    other = tmp_path / "other.log"
    logs.configure_logging("DEBUG", other)
    logging.getLogger("carecli.test").debug("debug now")
    assert not log_file.read_text()
    assert [line["message"] for line in read_lines(other)] == ["debug now"]


def test_library_loggers_stay_quiet_at_debug_so_statement_parameters_never_reach_the_file(
        log_file: Path, migrated_pair) -> None:
    logs.configure_logging("DEBUG", log_file)
    engine = create_database_engine(migrated_pair.url("platform"), load_settings({}))
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT :value"), {"value": "Okafor 123-45-6789"})
    finally:
        engine.dispose()
    written = log_file.read_text()
    assert "SELECT" not in written and "Okafor" not in written


def test_a_log_file_that_cannot_be_opened_turns_logging_off_quietly(log_file: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert logs.configure_logging("INFO", blocker / "carecli.log") is None
    # A command that logs a warning (an unreachable database) prints only its own one-line error.
    env = {"CARECLI_LOG_FILE": str(blocker / "carecli.log"),
           "CARECLI_IDENTITY_URL": "postgresql+psycopg://carecli@127.0.0.1:1/identity",
           "CARECLI_PLATFORM_URL": "postgresql+psycopg://carecli@127.0.0.1:1/platform"}
    outcome = run_carecli("db", "current", env=env)
    assert outcome.code == EXIT_USAGE
    assert outcome.err.startswith("carecli: error: cannot connect") and "database unreachable" not in outcome.err


def test_a_bad_level_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="CARECLI_LOG_LEVEL must be one of DEBUG"):
        load_settings({"CARECLI_LOG_LEVEL": "chatty"})
    assert load_settings({"CARECLI_LOG_LEVEL": "warning"}).log_level == "WARNING"


def test_level_and_file_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[logging]\nlevel = "error"\nfile = "{tmp_path / "ops.log"}"\n')
    settings = load_settings({"CARECLI_CONFIG": str(config)})
    assert settings.log_level == "ERROR" and settings.log_file == tmp_path / "ops.log"
    assert settings.sources["log_level"] == "file"


def test_commands_log_start_and_end_with_exit_code_never_their_arguments(tmp_path: Path) -> None:
    path = tmp_path / "cli.log"
    env = {"CARECLI_LOG_FILE": str(path), "CARECLI_LOG_LEVEL": "INFO"}
    ok = run_carecli("config", "path", env=env)
    assert ok.code == 0
    bad = run_carecli("users", "show", "ada.okafor@example.org", "--bogus", env=env)
    assert bad.code == EXIT_USAGE
    entries = read_lines(path)
    assert [(e["message"], e["command"]) for e in entries] == [
        ("command started", "config path"), ("command finished", "config path"),
        ("command started", "users show"), ("command finished", "users show")]
    assert entries[1]["exit_code"] == 0 and isinstance(entries[1]["duration_ms"], int)
    assert entries[3]["exit_code"] == EXIT_USAGE
    assert "okafor" not in path.read_text()


def test_a_broken_config_still_logs_the_command_and_its_exit_code(tmp_path: Path) -> None:
    path = tmp_path / "cli.log"
    outcome = run_carecli("config", "show", env={"CARECLI_LOG_FILE": str(path), "CARECLI_DB_POOL_SIZE": "lots"})
    assert outcome.code == EXIT_USAGE and "CARECLI_DB_POOL_SIZE" in outcome.err
    entries = read_lines(path)
    assert entries[-1]["message"] == "command finished" and entries[-1]["exit_code"] == EXIT_USAGE
    assert any(e["message"] == "command refused" and e["error"] == "ConfigError" for e in entries)


def test_an_unreachable_database_is_logged_with_the_password_masked(tmp_path: Path) -> None:
    path = tmp_path / "cli.log"
    env = {"CARECLI_LOG_FILE": str(path),
           "CARECLI_IDENTITY_URL": "postgresql+psycopg://carecli:hunter2@127.0.0.1:1/identity",
           "CARECLI_PLATFORM_URL": "postgresql+psycopg://carecli:hunter2@127.0.0.1:1/platform"}
    outcome = run_carecli("db", "current", env=env)
    assert outcome.code == EXIT_USAGE
    unreachable = [e for e in read_lines(path) if e["message"] == "database unreachable"]
    assert unreachable and unreachable[0]["database"] == "identity"
    assert "***" in unreachable[0]["url"] and "hunter2" not in path.read_text()


def test_the_default_file_is_in_the_user_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert logs.default_log_file() == tmp_path / "carecli" / "carecli.log"
    outcome = run_carecli("config", "path", env={"XDG_STATE_HOME": str(tmp_path), "CARECLI_LOG_FILE": ""})
    assert outcome.code == 0
    assert read_lines(tmp_path / "carecli" / "carecli.log")[0]["message"] == "command started"


def test_the_scan_finds_what_it_is_meant_to_find(tmp_path: Path) -> None:
    from tests import log_scan

    leaky = tmp_path / "leaky.log"
    leaky.write_text('{"message": "member Quenby12 at 12 Quillfeather Lane"}\n'
                     '{"message": "ssn 101-10-1000"}\n{"message": "mail quenby.1@mail.example.org"}\n'
                     '{"message": "dob 1931-03-07"}\n{"message": "phone (415) 555-0001"}\n'
                     '{"message": "a [redacted] value"}\n{"message": "command finished", "exit_code": 0}\n')
    lines, findings = log_scan.scan([leaky], log_scan.RawCapture())
    assert lines == 7
    assert {f.kind for f in findings} == {"a fixture member's name or address", "SSN", "e-mail", "date of birth",
                                          "phone", "a value carecli's filter had to redact"}
    assert not any(f.where.endswith(":7") for f in findings)

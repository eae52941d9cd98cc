"""Run the real ``carecli`` entry point as a user or a script would: in this process or in a new one.

:func:`run_carecli` runs ``carecli.cli.main.main`` **in process** by default: the same function the console
script calls, with its own stdin, stdout, stderr and environment (click's ``CliRunner`` isolation), its
exit code taken from ``SystemExit``. That is the same code path as a real process minus the interpreter
start and the imports, which cost about a second of CPU per command on these machines and were most of
the suite's time. ``process=True`` starts a real ``python -m carecli`` instead, for what only a process
shows: signals, a kill, a terminal, file descriptors, the embedded server's lifetime, import-time
behaviour, or a second program running at the same time.

An in-process command must leave nothing behind: no database connection still open (every engine it
made disposed), logging handed back as it was. :func:`run_carecli` checks the first after each command
(a leak fails the test: a real process would have hidden it by exiting) and restores the second.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from click.testing import CliRunner
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_carecli(*args: str, env: Mapping[str, str | None] | None = None, timeout: float = 120,
                input: str | bytes | None = None, process: bool = False) -> Result:
    """``carecli ARGS`` with the test environment plus ``env`` (a ``None`` value unsets a variable).

    ``input`` is the command's standard input (empty when not given, like ``/dev/null``)."""
    env = env or {}
    if not process and tuple(args[:2]) in NO_DATABASE_COMMANDS and not _names_a_server(env):
        # Pointed at a server that is not there: a command that tried to reach carecli's databases would fail
        # the test here, where with no URL it would have started an embedded server inside this process.
        env = {**env, **{name: NOWHERE.format(name.lower()) for name in URL_VARIABLES}}
    if process or not _names_a_server(env):
        return _in_a_process(args, env, timeout, input)
    return _in_this_process(args, env, input)


#: commands that never open carecli's databases (they read a file, or write to the URLs their options name), so
#: they run in this process even when no database URL is configured
NO_DATABASE_COMMANDS = {("backup", "verify"), ("backup", "restore"), ("backup", "generate-key")}
#: a database URL nothing answers on (port 9, discard: closed on these machines)
NOWHERE = "postgresql+psycopg://carecli@127.0.0.1:9/{}"


URL_VARIABLES = ("CARECLI_IDENTITY_URL", "CARECLI_PLATFORM_URL")


def _variable(env: Mapping[str, str | None], name: str) -> str | None:
    """``name`` as the command sees it: ``env``'s value (``None``: unset) over the test process's."""
    return env[name] if name in env else os.environ.get(name)


def _names_a_server(env: Mapping[str, str | None]) -> bool:
    """Whether the command is pointed at database URLs; without them it starts (or joins) the embedded
    server, whose lifetime is the process's: that needs a process of its own."""
    return all(_variable(env, name) for name in URL_VARIABLES)


def _in_a_process(args: tuple[str, ...], env: Mapping[str, str | None], timeout: float,
                  input: str | bytes | None) -> Result:
    full_env = dict(os.environ)
    for name, value in env.items():
        if value is None:
            full_env.pop(name, None)
        else:
            full_env[name] = value
    proc = subprocess.run(
        [sys.executable, "-m", "carecli", *args],
        env=full_env,
        capture_output=True,
        timeout=timeout,
        input=input.encode() if isinstance(input, str) else input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    return Result(proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace"))


def _in_this_process(args: tuple[str, ...], env: Mapping[str, str | None], input: str | bytes | None) -> Result:
    from carecli.cli.main import main
    from carecli.logs import shutdown_logging

    carecli_log = logging.getLogger("carecli")
    handlers, level = list(carecli_log.handlers), carecli_log.level
    root_level = logging.getLogger().level
    before = _carecli_connections(env)
    runner = CliRunner()
    with runner.isolation(input=input if input is not None else b"", env=dict(env)) as (out, err, _):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            shutdown_logging()
            carecli_log.handlers[:] = handlers
            carecli_log.setLevel(level)
            logging.getLogger().setLevel(root_level)
        result = Result(code, out.getvalue().decode("utf-8", "replace"), err.getvalue().decode("utf-8", "replace"))
    # A closed connection's server process ends a moment after the client hangs up: wait for it a little.
    deadline = time.monotonic() + 3
    while (leaked := _carecli_connections(env) - before) > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leaked <= 0, (f"`carecli {' '.join(args[:2])}` left {leaked} database connection(s) open; "
                         f"last statements: {_last_statements(env)}")
    return result


#: carecli's connections to the databases the command was pointed at (the one parameter), not this query's own
_CARECLI_BACKENDS = ("FROM pg_stat_activity WHERE datname = ANY(%s) AND application_name = 'carecli'"
                     " AND pid <> pg_backend_pid()")


def _last_statements(env: Mapping[str, str | None]) -> list[str]:
    return [row[0][:120] for row in _query(env, f"SELECT query {_CARECLI_BACKENDS}")]


def _carecli_connections(env: Mapping[str, str | None]) -> int:
    """Open connections that carecli's engines made to the databases ``env`` names (0 when it names none)."""
    rows = _query(env, f"SELECT count(*) {_CARECLI_BACKENDS}")
    return int(rows[0][0]) if rows else 0


def _query(env: Mapping[str, str | None], statement: str) -> list[tuple[Any, ...]]:
    """``statement`` (one parameter: the names of the databases ``env`` points carecli at) on that server."""
    urls = [_variable(env, name) for name in URL_VARIABLES]
    try:
        parsed = [make_url(url) for url in urls if url]
    except ArgumentError:  # a test of what carecli says about a URL that is not one
        return []
    if not parsed:
        return []
    admin = parsed[0].set(drivername="postgresql", database="postgres")
    try:
        with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True,
                             connect_timeout=5) as connection:
            return connection.execute(statement, ([url.database for url in parsed],)).fetchall()
    except psycopg.OperationalError:  # a test that points carecli at a server that is not there
        return []

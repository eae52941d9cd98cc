"""Fixtures for the SSH host's tests: a seeded pair, the real host on loopback, SSH clients with a screen.

Every test gets a fresh copy of the seeded databases of the app's tests
(tests/support/seeded.py: 300 members, seed 42). ``ssh_host(...)`` runs the real
``serve()`` (carecli/ssh/server.py) on its own event loop in a background
thread, on a free port of 127.0.0.1 with a throwaway host key; the app
processes it starts are real ``carecli app`` processes on ptys, pointed at the
test's databases by a small 0600 launcher script (the ``app_command`` hook),
so no database URL or master key is on any command line. Clients are
``asyncssh`` connections whose output feeds a ``pyte`` terminal emulator; tests
poll that screen with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncssh
import pyte
import pytest
from sqlalchemy import text

from carecli.config import Settings, load_settings
from carecli.data.actor import Actor
from carecli.data.databases import Databases, open_databases
from carecli.data.records import User
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.services.auth.current import load_user, role_of
from carecli.services.auth.ssh_keys import SshKeyInfo, add_ssh_key
from carecli.services.auth.tokens import create_api_token
from carecli.ssh.server import HostOptions, serve
from tests.cli import Result, run_carecli
from tests.support.seeded import MASTER_KEY, THEME

#: generous: the machine is shared, and an app process imports Textual and opens both pools
START_TIMEOUT = 60.0
STEP_TIMEOUT = 30.0
POLL_SECONDS = 0.05
SIZE = (100, 30)
WORKLIST = re.compile(r"Today \(\d+\+?\)")
GOODBYE_QUIT = "Signed out of carecli. Goodbye."


def free_port() -> int:
    """A TCP port nobody listens on at the moment (the host binds it right after)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- the installation: seeded databases, users, the app's launcher ----------------------------------


@dataclass
class SshWorld:
    """One test's seeded databases, the environment that points carecli at them, and helpers."""

    settings: Settings
    databases: Databases
    env: dict[str, str]
    directory: Path
    launcher: Path
    tokens: dict[uuid.UUID, str] = field(default_factory=dict)

    def user(self, role: str, index: int = 0) -> User:
        """The ``index``-th seeded user (by e-mail) holding ``role``; tests of a module each take their own.

        Deactivated users keep their place, so a test deactivating one does not shift the others.
        """
        row = self.rows("identity", "SELECT u.id FROM users u JOIN roles r ON r.id = u.role_id WHERE r.name = :r "
                        "AND u.deleted_at IS NULL ORDER BY u.email", r=role)[index]
        with IdentityUnitOfWork(self.databases.identity, self.databases.platform, Actor.system("cli")) as uow:
            user = load_user(uow, row.id)
        assert user is not None
        return user

    def actor(self, user: User) -> Actor:
        """``user`` as a CLI actor with their role's permissions."""
        with IdentityUnitOfWork(self.databases.identity, self.databases.platform, Actor.system("cli")) as uow:
            role, permissions = role_of(uow, user)
        return Actor.create(user.id, permissions, channel="cli", role=role)

    def token_for(self, user: User) -> str:
        """An API token of ``user`` with every permission of their role (made once per user)."""
        if user.id not in self.tokens:
            actor = self.actor(user)
            self.tokens[user.id] = create_api_token(self.databases, actor, name="ssh tests",
                                                    scopes=sorted(actor.permissions)).secret
        return self.tokens[user.id]

    def add_key(self, user: User, key: asyncssh.SSHKey, **kwargs: Any) -> SshKeyInfo:
        """Register ``key`` for ``user`` through the service (an admin adds it)."""
        admin = self.actor(self.user("admin"))
        return add_ssh_key(self.databases, admin, user, key.export_public_key("openssh").decode(), **kwargs)

    def cli(self, *args: str, as_user: User | None = None, stdin: str | None = None, timeout: float = 120,
            **env: str) -> Result:
        """The real ``carecli ARGS`` in a subprocess, as ``as_user`` (through their API token)."""
        full: dict[str, str | None] = {**self.env, **env}
        full["CARECLI_TOKEN"] = self.token_for(as_user) if as_user is not None else None
        return run_carecli(*args, env=full, input=stdin, timeout=timeout)

    def rows(self, database: str, statement: str, **params: Any) -> list[Any]:
        with self.databases.engine(database).begin() as connection:
            result = connection.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    def scalar(self, database: str, statement: str, **params: Any) -> Any:
        rows = self.rows(database, statement, **params)
        return rows[0][0] if rows else None

    def audit(self, action: str, *, user: User | None = None, **where: Any) -> list[Any]:
        """Audit rows with ``action`` (by ``user``; ``new_values->>key = value`` for each keyword), oldest first."""
        clauses = "".join(f" AND new_values->>'{key}' = :{key}" for key in where)
        if user is not None:
            clauses += " AND (user_id::text = :user_id OR new_values->>'user_id' = :user_id)"
            where = {**where, "user_id": user.id}
        return self.rows("platform", f"SELECT * FROM audit_logs WHERE action = :action{clauses} "
                         "ORDER BY created_at, id", action=action, **{k: str(v) for k, v in where.items()})

    def wait_for_audit(self, action: str, timeout: float = STEP_TIMEOUT, **where: Any) -> list[Any]:
        """Poll until an audit row with ``action`` (and these values) is committed."""
        deadline = time.monotonic() + timeout
        while not (found := self.audit(action, **where)):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {action} audit row with {where} after {timeout:.0f} s")
            time.sleep(POLL_SECONDS)
        return found


def write_launcher(path: Path, env: dict[str, str], command: list[str]) -> Path:
    """A 0600 shell script exporting ``env`` and exec-ing ``command`` with its arguments."""
    lines = ["#!/bin/sh"] + [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    lines.append("exec " + " ".join(shlex.quote(part) for part in command) + ' "$@"')
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def world(pg_server, seeded_template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshWorld]:
    """A fresh copy of the seeded databases for one test module, their environment, and the app launcher.

    Per module, not per test: creating and dropping a database pair costs seconds (checkpoints), and
    an SSH test's rows are easy to tell apart (each test uses its own users and keys).
    """
    tmp_path = tmp_path_factory.mktemp("ssh")
    identity = pg_server.create_database("identity", template=seeded_template.identity)
    platform = pg_server.create_database("platform", template=seeded_template.platform)
    home = tmp_path / "home"
    for name in ("config", "data", "state", "cache"):
        (home / name).mkdir(parents=True)
    (tmp_path / "config.toml").write_text("")
    env = {**pg_server.env_for(identity, platform), "CARECLI_MASTER_KEY": MASTER_KEY,
           "CARECLI_CONFIG": str(tmp_path / "config.toml"), "CARECLI_THEME": THEME,
           "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"), "XDG_DATA_HOME": str(home / "data"),
           "XDG_STATE_HOME": str(home / "state"), "XDG_CACHE_HOME": str(home / "cache"),
           "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    launcher = write_launcher(tmp_path / "app.sh", env, [sys.executable, "-m", "carecli", "app"])
    settings = load_settings(env)
    databases = open_databases(settings)
    try:
        yield SshWorld(settings, databases, env, tmp_path, launcher)
    finally:
        databases.dispose()
        pg_server.drop_database(identity)
        pg_server.drop_database(platform)


# -- the host -----------------------------------------------------------------------------------


@dataclass
class RunningHost:
    """The real host serving on a loopback port from a background thread."""

    options: HostOptions
    fingerprint: str
    loop: asyncio.AbstractEventLoop
    stop_event: asyncio.Event
    thread: threading.Thread
    errors: list[BaseException]

    @property
    def port(self) -> int:
        return self.options.port

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_event.set)
            self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the SSH host did not stop within 30 s"


def start_host(world: SshWorld, **overrides: Any) -> RunningHost:
    """Start ``serve()`` on a free port with a fresh host key; returns once it listens."""
    options = HostOptions(host="127.0.0.1", port=free_port(),
                          host_key=world.directory / f"host-key-{uuid.uuid4().hex[:6]}",
                          app_command=["sh", str(world.launcher)], login_timeout=20, keepalive_seconds=30)
    options = replace(options, **overrides)
    started = threading.Event()
    holder: dict[str, Any] = {}
    errors: list[BaseException] = []

    def ready(acceptor: Any, key: Any) -> None:
        holder["fingerprint"] = key.get_fingerprint("sha256")
        started.set()

    def run() -> None:
        loop = asyncio.new_event_loop()
        holder["loop"] = loop
        stop = asyncio.Event()
        holder["stop"] = stop
        try:
            loop.run_until_complete(serve(world.settings, world.databases, options, ready=ready, stop=stop))
        except BaseException as exc:  # reported by the fixture, and unblocks the wait below
            errors.append(exc)
            started.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="carecli-ssh-host", daemon=True)
    thread.start()
    assert started.wait(30), "the SSH host did not start listening within 30 s"
    if errors:
        raise errors[0]
    return RunningHost(options, holder["fingerprint"], holder["loop"], holder["stop"], thread, errors)


@pytest.fixture
def ssh_host(world: SshWorld) -> Iterator[Callable[..., RunningHost]]:
    """``ssh_host(**HostOptions overrides)``: a running host, stopped (sessions ended) after the test."""
    hosts: list[RunningHost] = []

    def make(**overrides: Any) -> RunningHost:
        host = start_host(world, **overrides)
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        host.stop()
    for host in hosts:
        assert not host.errors, f"the SSH host failed: {host.errors!r}"


# -- the client: asyncssh + pyte -----------------------------------------------------------------


class ScreenClient:
    """One interactive SSH session: keystrokes in, output into a pyte screen (and kept raw)."""

    def __init__(self, conn: asyncssh.SSHClientConnection, process: asyncssh.SSHClientProcess[bytes],
                 size: tuple[int, int]) -> None:
        self.conn = conn
        self.process = process
        self.screen = pyte.Screen(*size)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = bytearray()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            data = await self.process.stdout.read(65536)
            if not data:
                return
            self.raw += data
            self.stream.feed(data)

    @property
    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    @property
    def output(self) -> str:
        """Everything received so far, escape sequences removed."""
        plain = re.sub(rb"\x1b\[[0-9;:?<>=$ ]*[A-Za-z~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[()=>78A-Z]", b"",
                       bytes(self.raw))
        return plain.decode("utf-8", "replace")

    async def wait_for(self, pattern: str | re.Pattern[str], timeout: float = STEP_TIMEOUT,
                       *, in_output: bool = False) -> re.Match[str]:
        """Poll the screen (or the whole output) until ``pattern`` shows."""
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.output if in_output else self.text)
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {regex.pattern!r}; the screen "
                                     f"was:\n{self.text}\n-- output tail:\n{self.output[-600:]}")
            if self.reader.done() and not in_output:
                raise AssertionError(f"the session ended while waiting for {regex.pattern!r}; output tail:\n"
                                     f"{self.output[-600:]}")
            await asyncio.sleep(POLL_SECONDS)

    def keys(self, data: bytes) -> None:
        self.process.stdin.write(data)

    def resize(self, columns: int, rows: int) -> None:
        self.screen.resize(rows, columns)
        self.process.change_terminal_size(columns, rows)

    async def finished(self, timeout: float = STEP_TIMEOUT) -> int | None:
        """Wait for the session to end; its exit status."""
        await asyncio.wait_for(self.process.wait_closed(), timeout)
        await asyncio.wait_for(self.reader, timeout)
        return self.process.exit_status

    async def close(self) -> None:
        self.conn.close()
        try:
            await asyncio.wait_for(self.conn.wait_closed(), 10)
        except (asyncio.TimeoutError, OSError):
            pass
        self.reader.cancel()


async def connect(host: RunningHost, key: asyncssh.SSHKey, *, username: str = "specialist",
                  **kwargs: Any) -> asyncssh.SSHClientConnection:
    """An SSH connection to the host signed in with ``key`` (host key not pinned: a throwaway one)."""
    return await asyncssh.connect("127.0.0.1", host.port, username=username, client_keys=[key], known_hosts=None,
                                  agent_path=None, preferred_auth="publickey", **kwargs)


async def open_screen(host: RunningHost, key: asyncssh.SSHKey, *, size: tuple[int, int] = SIZE,
                      term: str = "xterm-256color") -> ScreenClient:
    """Connect with ``key`` and start an interactive session on a pty of ``size`` (columns, rows)."""
    conn = await connect(host, key)
    process = await conn.create_process(term_type=term, term_size=size, encoding=None)
    return ScreenClient(conn, process, size)


def new_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519", comment="tester@laptop")

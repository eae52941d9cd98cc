"""``carecli serve-ssh``: carecli as its own SSH app server (asyncssh).

One SSH login = one carecli app process on its own pty, signed in as the
owner of the SSH key with a fresh ``sessions`` row (client IP, SSH user
agent). What the host allows and refuses:

* public-key authentication only, against the users' registered keys
  (``carecli ssh-keys``); unknown, revoked, expired and inactive users' keys
  are refused, each refusal audited with the client IP; a connection that
  offers too many refused keys is dropped;
* an interactive shell on a pty, nothing else: no exec, no subsystems (sftp),
  no port, agent or X11 forwarding;
* a login timeout, keepalives (a dead client is noticed), an input-based
  idle timeout, caps on sessions in total and per user;
* a key revoked or a user deactivated while connected ends the session
  within ``revocation_check_seconds``.

Each session's app is a process of its own (its own session and process
group on its pty): forked from the host's zygote (carecli/ssh/zygote.py), a
process that imported the app once and holds no database connection,
listener or thread, or, with ``app_command`` set, after ``--no-prefork`` or
when the zygote fails, exec'd as a new Python. Either way it holds nothing of
the host's but its terminal and the pipe its session token comes through,
which then carries the host's live-update notices (carecli/ssh/relay.py: one
LISTEN connection for every session).

Every session start and end is audited (``ssh_session_start`` /
``ssh_session_end`` with the reason: quit, idle, disconnect, revoked,
lifetime, shutdown, error), and the client's terminal is reset on every
exit path the client is still there for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncssh

from carecli.config import Settings
from carecli.data import audit
from carecli.data.actor import Actor
from carecli.data.databases import Databases
from carecli.services.auth.current import NIL
from carecli.services.auth.ssh_keys import KeyHolder, authenticate_key, still_allowed
from carecli.services.ssh_sessions import (
    EndReason,
    SshSession,
    close_ssh_session,
    open_ssh_session,
    reason_for_exit,
)
from carecli.ssh.relay import NoticeRelay
from carecli.ssh.terminal import TERMINAL_RESET, AppProcess, app_environment, clean_term, goodbye
from carecli.ssh.zygote import AppLauncher

log = logging.getLogger("carecli.ssh")
T = TypeVar("T")

MAX_REFUSED_KEYS = 6  # like OpenSSH's MaxAuthTries

@dataclass(frozen=True)
class HostOptions:
    """What the host listens on and allows."""

    host: str = "127.0.0.1"
    port: int = 2222
    host_key: Path | None = None
    max_sessions: int = 50
    max_sessions_per_user: int = 3
    idle_seconds: float = 15 * 60
    login_timeout: float = 30.0
    keepalive_seconds: float = 30.0
    keepalive_count_max: int = 3
    revocation_check_seconds: float = 15.0
    #: how the host starts an app process (tests may point it elsewhere); None = this carecli
    app_command: list[str] | None = None
    #: with no ``app_command``: fork each session's app from one pre-imported launcher process (the
    #: zygote, carecli/ssh/zygote.py) instead of starting a new Python for it
    prefork: bool = True
    #: relay live updates to every session's app from one listener (carecli/ssh/relay.py) instead of
    #: each app listening on a connection of its own
    relay_notices: bool = True
    #: pooled platform connections in each app process (0: none kept idle; None: 1 with the relay, else 0;
    #: the identity database, used for session checks only, gets none; see app_environment)
    app_pool_size: int | None = None

    @property
    def app_pool(self) -> int:
        if self.app_pool_size is not None:
            return self.app_pool_size
        return 1 if self.relay_notices else 0


@dataclass
class _Registry:
    """The sessions this host is serving: for the caps, revocation checks and shutdown."""

    options: HostOptions
    sessions: set[CareSession] = field(default_factory=set)
    per_user: Counter[uuid.UUID] = field(default_factory=Counter)

    def admit(self, session: CareSession, user_id: uuid.UUID) -> str | None:
        """Register a starting session; why it is refused ('host_full', 'user_limit') or None."""
        if len(self.sessions) >= self.options.max_sessions:
            return "host_full"
        if self.per_user[user_id] >= self.options.max_sessions_per_user:
            return "user_limit"
        self.sessions.add(session)
        self.per_user[user_id] += 1
        return None

    def leave(self, session: CareSession, user_id: uuid.UUID) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.per_user[user_id] -= 1
            if self.per_user[user_id] <= 0:
                del self.per_user[user_id]


class CareHost:
    """The state one ``serve-ssh`` process shares between its connections."""

    def __init__(self, settings: Settings, databases: Databases, options: HostOptions,
                 launcher: AppLauncher | None = None, relay: NoticeRelay | None = None) -> None:
        self.settings = settings
        self.databases = databases
        self.options = options
        self.launcher = launcher
        #: the one listener whose notices go to every session's app (None: each app listens itself)
        self.relay = relay
        self.registry = _Registry(options)
        # Database calls block: they run here, never on the event loop (which serves every session).
        self.executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="carecli-ssh-db")
        self.closing = False

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: function(*args, **kwargs))

    def audit_host_event(self, environ: dict[str, str], action: str, values: dict[str, Any],
                         entity_id: uuid.UUID | None = None) -> None:
        """An audit row about a connection no user is signed in on yet (blocking: call through ``call``)."""
        audit.write_committed(self.databases.platform, Actor.system("ssh", environ=environ), "ssh_session",
                              entity_id or NIL, action, values)


def _ssh_connection(conn: asyncssh.SSHServerConnection) -> str:
    """``SSH_CONNECTION`` for this connection: client address and port, server address and port."""
    peer = conn.get_extra_info("peername") or ("0.0.0.0", 0)
    local = conn.get_extra_info("sockname") or ("0.0.0.0", 0)
    return f"{peer[0]} {peer[1]} {local[0]} {local[1]}"


class CareServer(asyncssh.SSHServer):
    """One client connection: public-key authentication against carecli's users."""

    def __init__(self, host: CareHost) -> None:
        self.host = host
        self.conn: asyncssh.SSHServerConnection | None = None
        self.environ: dict[str, str] = {}
        self.holder: KeyHolder | None = None
        self.refused = 0

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.environ = {"SSH_CONNECTION": _ssh_connection(conn)}

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn = None

    def begin_auth(self, username: str) -> bool:
        return True  # always authenticate; the SSH user name itself is not what identifies the person

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """Accept the key when it is a live key of an active user (asyncssh then checks the signature)."""
        fingerprint = key.get_fingerprint("sha256")
        try:
            holder = await self.host.call(authenticate_key, self.host.databases, fingerprint,
                                          environ=self.environ, username=username)
        except Exception:
            log.exception("cannot check an SSH key: the identity or platform database failed")
            holder = None  # fail closed: no audit row, no entry
        self.holder = holder
        if holder is None:
            self.refused += 1
            if self.refused >= MAX_REFUSED_KEYS and self.conn is not None:
                self.conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                                     "too many refused keys")
            return False
        return True

    def session_requested(self) -> asyncssh.SSHServerSession[bytes]:
        assert self.holder is not None  # only called after authentication succeeded
        assert self.conn is not None
        return CareSession(self.host, self.holder, dict(self.environ),
                           self.conn.get_extra_info("client_version"))

    # Everything but a session is refused: no port forwarding of any kind.
    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        return False

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        return False


class CareSession(asyncssh.SSHServerSession[bytes]):
    """One SSH session channel: a pty, a shell request, and the app process behind it."""

    def __init__(self, host: CareHost, holder: KeyHolder, environ: dict[str, str], client_version: str | None) -> None:
        self.host = host
        self.holder = holder
        self.environ = environ
        self.client_version = client_version
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.term: str | None = None
        self.size = (80, 24)
        self.app: AppProcess | None = None
        self.ssh_session: SshSession | None = None
        self.last_input = time.monotonic()
        self.started = time.monotonic()
        self.reason: EndReason | None = None
        self.ended = asyncio.Event()
        self.client_gone = False
        self.task: asyncio.Task[None] | None = None

    # -- what the client asks for ------------------------------------------------------

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any) -> bool:
        self.term = clean_term(term_type)
        if term_size[0] and term_size[1]:
            self.size = (term_size[0], term_size[1])
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        return False  # carecli runs no commands over SSH: only the app

    def subsystem_requested(self, subsystem: str) -> bool:
        return False  # no sftp, no other subsystems

    def session_started(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.last_input = time.monotonic()
        if self.app is not None:
            self.app.write(data)

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if width and height:
            self.size = (width, height)
            if self.app is not None:
                self.app.resize(width, height)

    def break_received(self, msec: int) -> bool:
        return False

    def eof_received(self) -> bool:
        # The client closed its input (``ssh ... < /dev/null``): keep the channel open for what we still
        # have to say; the session ends when the app does or the connection goes.
        return True

    def pause_writing(self) -> None:
        if self.app is not None:
            self.app.pause_output()

    def resume_writing(self) -> None:
        if self.app is not None:
            self.app.resume_output()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client_gone = True
        self.end("disconnect")

    # -- the session's life ----------------------------------------------------------------

    def end(self, reason: EndReason) -> None:
        """End the session (the first reason given is the one recorded)."""
        if self.reason is None:
            self.reason = reason
        self.ended.set()

    def _write(self, data: bytes) -> None:
        if self.chan is not None and not self.client_gone:
            try:
                self.chan.write(data)
            except (asyncssh.Error, OSError):
                pass  # the channel is closing; connection_lost says when the client is gone

    def _say(self, text: str) -> None:
        self._write(text.replace("\n", "\r\n").encode("utf-8") + b"\r\n")

    def _finish(self, status: int) -> None:
        if self.chan is not None and not self.client_gone:
            try:
                self.chan.exit(status)
            except (asyncssh.Error, OSError):
                pass

    async def _run(self) -> None:
        user_id = self.holder.user.id
        if self.term is None:
            self._say("carecli needs a terminal: connect with `ssh -t` (this session asked for none).")
            await self.host.call(self.host.audit_host_event, self.environ, "ssh_session_refused",
                                 {"reason": "no_pty", "user_id": str(user_id)})
            self._finish(2)
            return
        refusal = "shutdown" if self.host.closing else self.host.registry.admit(self, user_id)
        if refusal is not None:
            await self._refuse(refusal)
            return
        try:
            await self._serve()
        except Exception:
            log.exception("an SSH session failed")
            self.end("error")
        finally:
            self.host.registry.leave(self, user_id)
            await self._close()

    async def _refuse(self, refusal: str) -> None:
        options = self.host.options
        messages = {
            "host_full": f"carecli: this host is serving its maximum of {options.max_sessions} sessions; "
                         "please try again in a few minutes.",
            "user_limit": ("carecli: you already have 1 carecli session open on this host (the limit); close it "
                           "first." if options.max_sessions_per_user == 1 else
                           f"carecli: you already have {options.max_sessions_per_user} carecli sessions open on "
                           "this host (the limit); close one of them first."),
            "shutdown": goodbye("shutdown"),
        }
        self._say(messages[refusal])
        await self.host.call(self.host.audit_host_event, self.environ, "ssh_session_refused",
                             {"reason": refusal, "user_id": str(self.holder.user.id)})
        self._finish(1)

    async def _serve(self) -> None:
        columns, rows = self.size
        self.ssh_session = await self.host.call(
            open_ssh_session, self.host.settings, self.host.databases, self.holder, environ=self.environ,
            client_version=self.client_version,
            terminal={"term": self.term, "columns": columns, "rows": rows})
        assert self.chan is not None
        env = app_environment(os.environ, term=self.term or "xterm-256color",
                              client_colorterm=self.chan.get_environment().get("COLORTERM"),
                              ssh_connection=self.environ["SSH_CONNECTION"],
                              pool_size=self.host.options.app_pool, identity_pool_size=0)
        self.app = await AppProcess.start(self.ssh_session.token, env=env, columns=columns, rows=rows,
                                          command=self.host.options.app_command, launcher=self.host.launcher,
                                          relay=self.host.relay)
        self.app.attach(self._write, lambda: None)
        watchers = [asyncio.create_task(self._wait_app()), asyncio.create_task(self._watch_idle()),
                    asyncio.create_task(self._watch_access())]
        try:
            await self.ended.wait()
        finally:
            for watcher in watchers:
                watcher.cancel()

    async def _wait_app(self) -> None:
        assert self.app is not None
        code = await self.app.process.wait()
        self.end(reason_for_exit(code))

    async def _watch_idle(self) -> None:
        options = self.host.options
        lifetime = self.host.settings.session_max_hours * 3600
        step = max(0.2, min(5.0, options.idle_seconds / 4))
        while True:
            await asyncio.sleep(step)
            now = time.monotonic()
            if now - self.last_input >= options.idle_seconds:
                self.end("idle")
                return
            if now - self.started >= lifetime:
                self.end("lifetime")
                return

    async def _watch_access(self) -> None:
        while True:
            await asyncio.sleep(self.host.options.revocation_check_seconds)
            try:
                problem = await self.host.call(still_allowed, self.host.databases, self.holder)
            except Exception:
                log.warning("cannot re-check an SSH session's key (database unavailable); will retry")
                continue
            if problem is not None:
                self.end("revoked")
                return

    async def _close(self) -> None:
        """Stop the app, reset the client's terminal, say why, audit the end, close the channel."""
        reason = self.reason or "error"
        if self.app is not None:
            await self.app.stop()
            self.app.close()
        if not self.client_gone:
            self._write(TERMINAL_RESET)
            text = goodbye(reason, idle_minutes=self.host.options.idle_seconds / 60,
                           max_hours=self.host.settings.session_max_hours)
            if text:
                self._say(text)
        if self.ssh_session is not None:
            try:
                await self.host.call(close_ssh_session, self.host.databases, self.ssh_session, reason,
                                     seconds=time.monotonic() - self.started)
            except Exception:
                log.exception("cannot record the end of an SSH session (the session row expires on its own)")
        self._finish(0 if reason == "quit" else 1)
        if self.chan is not None and not self.client_gone:
            self.chan.close()


async def serve(settings: Settings, databases: Databases, options: HostOptions, *,
                ready: Callable[[asyncssh.SSHAcceptor, Any], None] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Run the host until ``stop`` is set or SIGTERM/SIGINT arrives; then end every session (reason shutdown)."""
    from carecli.ssh.host_key import default_host_key_path, load_or_create_host_key

    host_key = load_or_create_host_key(options.host_key or default_host_key_path())
    launcher: AppLauncher | None = None
    if options.prefork and options.app_command is None:
        # Started now, importing the app while the host starts listening; sessions that come before it is
        # ready wait for it (or, after READY_TIMEOUT, start the app the old way).
        launcher = AppLauncher()
        await launcher.start()
    relay = NoticeRelay(databases.platform, asyncio.get_running_loop()).start() if options.relay_notices else None
    host = CareHost(settings, databases, options, launcher, relay)
    # The sessions' audit rows are sealed as the host runs (and once more when it stops), not only by cron.
    from carecli.data import audit_seal
    from carecli.data.crypto.runtime import master_key

    sealer = audit_seal.Sealer(databases.platform, lambda: master_key(settings, databases),
                               every=audit_seal.SEAL_EVERY_SECONDS["ssh"], name="ssh").start()
    try:
        await _serve(host, host_key, ready=ready, stop=stop)
    finally:
        if launcher is not None:
            await launcher.close()
        if relay is not None:
            await asyncio.get_running_loop().run_in_executor(None, relay.stop)
        await asyncio.get_running_loop().run_in_executor(None, sealer.stop)


async def _serve(host: CareHost, host_key: asyncssh.SSHKey, *,
                 ready: Callable[[asyncssh.SSHAcceptor, Any], None] | None,
                 stop: asyncio.Event | None) -> None:
    options = host.options
    acceptor = await asyncssh.create_server(
        lambda: CareServer(host), options.host, options.port,
        server_host_keys=[host_key], encoding=None, line_editor=False, allow_pty=True,
        public_key_auth=True, password_auth=False, kbdint_auth=False, host_based_auth=False, gss_host=None,
        agent_forwarding=False, x11_forwarding=False, allow_scp=False, sftp_factory=None,
        login_timeout=options.login_timeout, keepalive_interval=options.keepalive_seconds,
        keepalive_count_max=options.keepalive_count_max)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    # Signal handlers can only be installed from the main thread; a host embedded in another
    # thread's loop (tests, a supervisor) is stopped through ``stop`` instead.
    signals = (signal.SIGTERM, signal.SIGINT) if threading.current_thread() is threading.main_thread() else ()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready(acceptor, host_key)
    try:
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        host.closing = True
        acceptor.close()
        sessions = list(host.registry.sessions)
        for session in sessions:
            session.end("shutdown")
        tasks = [s.task for s in sessions if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        await acceptor.wait_closed()
        host.executor.shutdown(wait=True)

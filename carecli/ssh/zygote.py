"""The SSH host's app launcher (a "zygote"): one process that imported the app once, forking a copy per session.

Starting ``python -m carecli app`` for every SSH session costs seconds of CPU
(importing Textual, SQLAlchemy, psycopg and carecli) and tens of MiB of
private memory per session. Instead the host starts this module once
(``python -m carecli.ssh.zygote --fd N``): it imports everything a session
needs, freezes those objects out of the garbage collector's reach
(``gc.freeze``: their pages then stay shared copy-on-write with every fork)
and waits on a Unix socket pair inherited from the host. It holds no
database connection, no listening socket, no thread and nothing of the
host's but that socket.

For each session the host sends, over that socket (``SOCK_SEQPACKET``: one
message each way per event, descriptors passed with ``SCM_RIGHTS``)::

    {"id": 7, "env": {...}}  + [the pty's slave side, the token pipe's read end]

The zygote forks; the child does what the exec'd ``carecli app`` process did:
becomes a session leader with the pty as its controlling terminal and its
standard streams, closes every other descriptor it inherited (the zygote's
socket, anything of other sessions) but the token pipe, takes the session's
environment, and runs ``carecli app --session-fd N`` (``carecli.cli.main``),
exiting with its exit code without ever returning to the zygote's loop. The
zygote answers ``{"id": 7, "pid": 1234}`` once the child has its terminal,
reaps its children and reports each end as ``{"pid": 1234, "exit": 0}``
(negative: the signal that ended it, as ``asyncio`` reports it).

The host side (:class:`AppLauncher`) restarts a zygote that died (at most a
few times a minute), gives up on one that does not answer in time, and in
either case lets the session start the old way (an exec'd process): a session
start never waits on it for ever. The zygote ends when the host closes its
end of the socket (or dies).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import contextlib
import fcntl
import gc
import importlib
import json
import logging
import os
import pkgutil
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from carecli.errors import EXIT_FAILURE
from carecli.ssh.terminal import take_controlling_terminal

log = logging.getLogger("carecli.ssh")

#: the most one message may be (a session's environment is a few KiB)
MAX_MESSAGE = 1 << 20
#: how long a session waits for a (re)started zygote to have imported the app (a loaded machine is slow)
READY_TIMEOUT = 60.0
#: how long a session waits for the zygote to answer with the forked child's pid (it is milliseconds)
SPAWN_TIMEOUT = 10.0
#: zygote starts allowed within RESTART_WINDOW seconds before the host stops restarting it (and execs instead)
MAX_RESTARTS = 3
RESTART_WINDOW = 60.0
#: the exit code reported for a session whose exit status was lost with its zygote (an "error" end)
LOST_EXIT_STATUS = EXIT_FAILURE

#: what a session needs, imported once in the zygote (found by listing what a session imported after the fork)
PRELOAD = (
    "carecli.cli.main",
    "carecli.cli.app_cmd",
    "carecli.config",
    "carecli.logs",
    "carecli.screens.app",
    "carecli.services.auth.credentials",
    "carecli.services.desk",
    "carecli.data.databases",
    "carecli.data.notify",
    "carecli.data.crypto.keystore",  # the cipher and cryptography: loaded at a session's first reveal or edit
    "sqlalchemy",
    "sqlalchemy.dialects.postgresql.psycopg",
    "psycopg",
    "psycopg.pq",
    "textual.app",
    "textual.drivers.linux_driver",
    "textual.drivers.headless_driver",
    "textual.pilot",
    "rich._emoji_codes",
    "concurrent.futures.thread",
    "pwd",
)
#: packages whose every module is imported too (screens, repositories, layouts are imported on first use)
PRELOAD_PACKAGES = ("carecli.screens", "carecli.data.repositories", "textual.layouts")


# -- the zygote process ---------------------------------------------------------------------------


def preload() -> None:
    """Import everything a session's app imports (the work every session would otherwise repeat)."""
    for name in PRELOAD:
        importlib.import_module(name)
    for name in PRELOAD_PACKAGES:
        package = importlib.import_module(name)
        for module in pkgutil.iter_modules(package.__path__, f"{name}."):
            importlib.import_module(module.name)
    from rich._unicode_data import load

    load()  # the character-width table (cached; chosen by UNICODE_VERSION, which sessions share with us)
    with contextlib.suppress(ImportError):  # the C implementation when installed: psycopg picks it itself
        importlib.import_module("psycopg_binary.pq")


def _threads() -> int:
    """The number of threads of this process (the kernel's count: native threads too)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def unfit_to_fork(own_socket: int) -> str | None:
    """Why this process must not fork sessions (what a child would share with the others), or None.

    A thread (its locks would be copied held, by a thread that does not exist in the child), a
    SQLAlchemy engine (its pool's connections would be shared by every session), a socket other than
    the host's (a database connection, a listener).
    """
    if _threads() != 1:
        return "importing the app started a thread"
    from sqlalchemy.engine import Engine

    if any(isinstance(thing, Engine) for thing in gc.get_objects()):
        return "importing the app created a database engine"
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if int(name) != own_socket and os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                return "importing the app opened a socket"
    return None


def _send(sock: socket.socket, message: Mapping[str, Any]) -> None:
    sock.send(json.dumps(message).encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    """The zygote: import the app, then fork a session's app for each request until the host hangs up."""
    parser = argparse.ArgumentParser(prog="python -m carecli.ssh.zygote")
    parser.add_argument("--fd", type=int, required=True, help="the host's end of the socket pair")
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    # The host's Ctrl-C is the host's: it ends its sessions, then us (by closing the socket).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    preload()
    problem = unfit_to_fork(sock.fileno())
    if problem is not None:
        print(f"carecli zygote: {problem}; sessions start the app themselves", file=sys.stderr)
        return EXIT_FAILURE
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # a handler, so the wakeup fd is written
    gc.collect()
    gc.freeze()
    _send(sock, {"ready": os.getpid()})
    return _serve(sock, wake_read)


def _serve(sock: socket.socket, wake_read: int) -> int:
    children: set[int] = set()
    try:
        while True:
            readable, _, _ = select.select([sock.fileno(), wake_read], [], [], 1.0)
            if wake_read in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_read, 512):
                        pass
            _reap(sock, children)
            if sock.fileno() in readable:
                message, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE, 2)
                if not message and not fds:
                    return 0  # the host closed its end (or died): nothing more to start
                _handle(sock, message, fds, flags, children)
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the host is gone
    finally:
        signal.set_wakeup_fd(-1)


def _reap(sock: socket.socket, children: set[int]) -> None:
    """Report every child that ended (its exit code, or minus the signal that ended it)."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)
        _send(sock, {"pid": pid, "exit": os.waitstatus_to_exitcode(status)})


def _handle(sock: socket.socket, message: bytes, fds: list[int], flags: int, children: set[int]) -> None:
    """Fork a session's app for one request; answer with its pid (or why not)."""
    request_id: Any = None
    try:
        try:
            request = json.loads(message)
            request_id = request["id"]
            env = request["env"]
            if (flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) != 2 or not isinstance(env, dict)
                    or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
                raise ValueError("malformed request")
        except (ValueError, KeyError, TypeError):
            _send(sock, {"id": request_id, "error": "malformed request"})
            return
        slave, token_fd = fds
        started_read, started_write = os.pipe()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(started_read)
            os.close(started_write)
            _send(sock, {"id": request_id, "error": f"cannot fork: {exc.strerror}"})
            return
        if pid == 0:
            os.close(started_read)
            _child(slave, token_fd, env, started_write)  # never returns
        os.close(started_write)
        children.add(pid)
        # Wait until the child has its own session and terminal (or failed to): the host may signal its
        # process group as soon as it knows the pid.
        said = b""
        while chunk := os.read(started_read, 512):
            said += chunk
        os.close(started_read)
        if said == b"ok":
            _send(sock, {"id": request_id, "pid": pid})
        else:
            _send(sock, {"id": request_id, "pid": pid,
                         "error": said.decode("utf-8", "replace")[:200] or "the child failed to start"})
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


# -- the child: becomes ``carecli app --session-fd N`` ----------------------------------------------

#: the zygote's standard streams (files on descriptors 0-2): kept referenced in the child, where new ones
#: replace them, so that collecting them never closes the pty's descriptors
_REPLACED_STREAMS: list[Any] = []


def _child(slave: int, token_fd: int, env: dict[str, str], started: int) -> NoReturn:  # pragma: no cover - forked
    def run() -> int:
        try:
            session_fd = _take_terminal(slave, token_fd, started)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(started, f"{type(exc).__name__}: {exc}".encode("utf-8", "replace"))
            raise
        return _run_app(session_fd, env)

    exit_forked(run)


def exit_forked(run: Callable[[], int]) -> NoReturn:  # pragma: no cover - forked
    """End a forked child with what ``run`` returns, or the code its SystemExit carries (1 for anything else,
    whose traceback goes to the child's stderr), after what the interpreter does when a program ends; the
    child never returns into its parent's code (the zygote's or the local launcher's loop)."""
    code = EXIT_FAILURE
    try:
        code = run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_FAILURE)
    except BaseException:  # noqa: BLE001 - the child must end here, whatever happened
        import traceback

        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            interpreter_exit()
        os._exit(code)


def reset_signals() -> None:  # pragma: no cover - forked
    """A forked child's signals as in any Python process: the parent's handlers and wakeup descriptor gone."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def close_descriptors_except(keep: set[int]) -> None:  # pragma: no cover - forked
    """Close every descriptor of this process but ``keep`` (what a forked child inherited of its parent)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _take_terminal(slave: int, token_fd: int, started: int) -> int:  # pragma: no cover - forked
    """The session's process: own session, the pty as terminal and standard streams, no other descriptor."""
    reset_signals()
    os.setsid()
    if token_fd <= 2:
        token_fd = fcntl.fcntl(token_fd, fcntl.F_DUPFD, 3)
    for target in (0, 1, 2):
        os.dup2(slave, target)
    take_controlling_terminal()
    os.write(started, b"ok")
    close_descriptors_except({0, 1, 2, token_fd})  # the zygote's socket and pipes, the slave's original, ...
    return token_fd


def _run_app(token_fd: int, env: dict[str, str]) -> int:  # pragma: no cover - forked
    """``carecli app --session-fd N`` in this process, with the session's environment; its exit code."""
    return run_main_here(["app", "--session-fd", str(token_fd)], env)


def run_main_here(args: list[str], env: dict[str, str]) -> int:  # pragma: no cover - forked
    """``carecli ARGS`` in this forked process, with ``env`` as its environment, on descriptors 0-2.

    What a Python started afresh would have: the environment, the locale's character type, fresh random
    state, standard streams on 0-2. Returns only when ``main`` does not exit (it always does).
    """
    import locale
    import random

    os.environ.clear()
    os.environ.update(env)
    with contextlib.suppress(locale.Error):
        locale.setlocale(locale.LC_CTYPE, "")
    random.seed()  # (os.fork reseeds it too) nothing random is shared with other sessions
    # Standard streams as a Python started on this terminal would have them (line-buffered, UTF-8).
    _REPLACED_STREAMS.extend((sys.stdin, sys.stdout, sys.stderr))
    # (Textual's driver writes to sys.__stderr__ and reads sys.__stdin__: those are replaced too)
    streams = {"stdin": open(0, encoding="utf-8", errors="surrogateescape", closefd=False),  # noqa: SIM115
               "stdout": open(1, "w", buffering=1, encoding="utf-8", closefd=False),  # noqa: SIM115
               "stderr": open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace",  # noqa: SIM115
                              closefd=False)}
    for name, stream in streams.items():
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    from carecli.cli.main import main

    sys.argv = [os.path.join(os.path.dirname(os.path.dirname(__file__)), "__main__.py"), *args]
    main(args)  # exits (SystemExit) with the command's code
    return 0


def interpreter_exit() -> None:  # pragma: no cover - forked
    """What the interpreter does when a program ends: join its threads, run atexit, flush the streams."""
    shutdown = getattr(threading, "_shutdown", None)  # private, but what Py_Finalize calls first
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


# -- the host's side ---------------------------------------------------------------------------------


class LaunchError(Exception):
    """The zygote could not start a session's app (the host then starts it the old way)."""


class ForkedChild:
    """A session's app forked by the zygote: like ``asyncio.subprocess.Process``, ``pid``, ``returncode``, ``wait``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pidfd = -1

    async def wait(self) -> int:
        return await asyncio.shield(self._done)

    def exited(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._done.set_result(code)
        if self._pidfd >= 0:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    def orphaned(self) -> None:
        """Its zygote died: the exit status is lost; notice the end itself through a pidfd."""
        if self.returncode is not None:
            return
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except OSError:  # already gone (and reaped by init)
            self.exited(LOST_EXIT_STATUS)
            return
        asyncio.get_running_loop().add_reader(self._pidfd, self.exited, LOST_EXIT_STATUS)


def zygote_environment(base: Mapping[str, str]) -> dict[str, str]:
    """The zygote's own environment: what every session's is, less the session's own variables.

    Modules read some variables when imported (Textual's ``TEXTUAL_*`` and ``ESCDELAY``); the zygote
    imports them for every session, so it sees the host's environment filtered as a session's is.
    """
    from carecli.ssh.terminal import DEFAULT_TERM, app_environment

    env = app_environment(base, term=DEFAULT_TERM, client_colorterm=None, ssh_connection="", pool_size=None)
    del env["SSH_CONNECTION"]
    return env


class Zygote:
    """One zygote process and the host's end of its socket."""

    def __init__(self, process: asyncio.subprocess.Process, sock: socket.socket) -> None:
        self.process = process
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "never retrieved"
        self.alive = True
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[tuple[dict[str, Any], ForkedChild | None]]] = {}
        self.children: dict[int, ForkedChild] = {}
        self.on_lost: list[Any] = []
        self.loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    async def start(cls, env: Mapping[str, str] | None = None) -> Zygote:
        """Start a zygote (it then imports the app: ``ready`` is done once it can fork sessions)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "carecli.ssh.zygote", "--fd", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                env=zygote_environment(os.environ if env is None else env), start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(process, ours)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _readable(self) -> None:
        while self.alive:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._lost()
                return
            try:
                message = json.loads(data)
            except ValueError:
                log.warning("the app launcher (zygote) said something unreadable; stopping it")
                self.kill()
                return
            self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "ready" in message:
            if not self.ready.done():
                self.ready.set_result(None)
        elif "exit" in message:
            child = self.children.pop(message["pid"], None)
            if child is not None:
                child.exited(int(message["exit"]))
        elif "id" in message:
            child = None
            if "pid" in message:
                # Registered now: its exit may be the very next message, before the session's task resumes.
                child = ForkedChild(int(message["pid"]))
                self.children[child.pid] = child
            future = self._pending.pop(message["id"], None)
            if future is not None and not future.done():
                future.set_result((message, child))
            elif child is not None:  # a session that gave up waiting: its app has no client; end it
                with contextlib.suppress(OSError):
                    os.killpg(child.pid, signal.SIGKILL)

    def _lost(self) -> None:
        """The zygote died (or closed its end): fail what waits on it; its children live on as orphans."""
        if not self.alive:
            return
        self.alive = False
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        if not self.ready.done():
            self.ready.set_exception(LaunchError("the app launcher ended before it was ready"))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(LaunchError("the app launcher ended"))
        self._pending.clear()
        for child in self.children.values():
            child.orphaned()
        self.children.clear()
        for callback in self.on_lost:
            callback(self)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self._lost()

    async def spawn(self, slave: int, token_fd: int, env: Mapping[str, str]) -> ForkedChild:
        """Fork a session's app on the pty ``slave``, reading its token from ``token_fd``; it is started."""
        if not self.alive:
            raise LaunchError("the app launcher is not running")
        try:
            await asyncio.wait_for(asyncio.shield(self.ready), READY_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("the app launcher (zygote) was not ready after %.0f s; stopping it", READY_TIMEOUT)
            self.kill()
            raise LaunchError(f"the app launcher was not ready after {READY_TIMEOUT:.0f} s") from None
        if not self.alive:
            raise LaunchError("the app launcher is not running")
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[tuple[dict[str, Any], ForkedChild | None]] = self.loop.create_future()
        self._pending[request_id] = future
        try:
            socket.send_fds(self.sock, [json.dumps({"id": request_id, "env": dict(env)}).encode("utf-8")],
                            [slave, token_fd])
        except OSError as exc:  # a full socket (a stuck zygote), a message too large, a dead zygote
            self._pending.pop(request_id, None)
            raise LaunchError(f"cannot reach the app launcher: {exc}") from None
        try:
            answer, child = await asyncio.wait_for(asyncio.shield(future), SPAWN_TIMEOUT)
        except asyncio.TimeoutError:
            self._pending.pop(request_id, None)
            log.warning("the app launcher (zygote) did not answer within %.0f s; stopping it", SPAWN_TIMEOUT)
            self.kill()
            raise LaunchError("the app launcher did not answer") from None
        if child is None:
            raise LaunchError(f"the app launcher could not start the app: {answer.get('error')}")
        if "error" in answer:  # it forked, but the child could not take its terminal: it is ending
            raise LaunchError(f"the app could not take its terminal: {answer['error']}")
        return child

    async def close(self, timeout: float = 10.0) -> None:
        """Hang up: the zygote ends (its children, if any are left, go on as orphans)."""
        self._lost()
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


class AppLauncher:
    """The host's zygote, restarted when it dies, unless it keeps dying (then sessions are exec'd)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = env
        self.zygote: Zygote | None = None
        self.closing = False
        self._starts: collections.deque[float] = collections.deque(maxlen=MAX_RESTARTS)
        self._starting: asyncio.Task[Zygote | None] | None = None

    async def start(self) -> None:
        await self._start()

    async def _start(self) -> Zygote | None:
        now = time.monotonic()
        if len(self._starts) == MAX_RESTARTS and now - self._starts[0] < RESTART_WINDOW:
            log.warning("the app launcher (zygote) was started %d times within %.0f s; sessions start the app "
                        "themselves for now", MAX_RESTARTS, RESTART_WINDOW)
            return None
        self._starts.append(now)
        try:
            zygote = await Zygote.start(self.env)
        except OSError as exc:
            log.warning("cannot start the app launcher (zygote): %s; sessions start the app themselves", exc)
            return None
        zygote.on_lost.append(self._lost)
        self.zygote = zygote
        return zygote

    def _lost(self, zygote: Zygote) -> None:
        if self.closing or zygote is not self.zygote:
            return
        self.zygote = None
        log.warning("the app launcher (zygote, pid %d) ended; starting a new one", zygote.pid)
        self._starting = asyncio.get_running_loop().create_task(self._start())

    async def _current(self) -> Zygote | None:
        if self.zygote is None or not self.zygote.alive:
            if self._starting is None or self._starting.done():
                self._starting = asyncio.get_running_loop().create_task(self._start())
            await asyncio.shield(self._starting)
        return self.zygote if self.zygote is not None and self.zygote.alive else None

    async def spawn(self, slave: int, token_fd: int, env: Mapping[str, str]) -> ForkedChild:
        """A session's app forked from the zygote; :class:`LaunchError` when there is no working zygote."""
        if self.closing:
            raise LaunchError("the host is closing")
        zygote = await self._current()
        if zygote is None:
            raise LaunchError("the app launcher keeps failing")
        return await zygote.spawn(slave, token_fd, env)

    async def close(self) -> None:
        self.closing = True
        if self._starting is not None and not self._starting.done():
            with contextlib.suppress(Exception):
                await self._starting
        if self.zygote is not None:
            await self.zygote.close()
            self.zygote = None


if __name__ == "__main__":
    sys.exit(main())

"""The resident launcher: ``carecli app`` starts in a fraction of a second instead of a second or more.

Most of a launch is Python importing Textual, SQLAlchemy, psycopg and the app (0.6 to 1 s of CPU on
these 2-core machines) before the first query is even sent. The SSH host already pays that once for
all its sessions (carecli/ssh/zygote.py); this does the same for a person at a terminal:

- The first ``carecli app`` on a terminal runs the ordinary way, and starts in the background a
  launcher process for the user: it waits a few seconds (not to compete with that launch), imports
  everything the app needs, freezes it out of the collector's reach (``gc.freeze``) and listens on a
  Unix socket in a private directory (``$XDG_RUNTIME_DIR/carecli``, else ``$TMPDIR/carecli-UID``;
  mode 0700, checked to be the user's own, the socket 0600, and the peer's uid checked again).
- A later ``carecli app`` (this module is the ``carecli`` entry point, and imports only what it needs
  to ask) sends the launcher its arguments, environment, working directory and umask, and its
  standard streams (``SCM_RIGHTS``). The launcher forks; the child takes those streams, environment,
  directory and umask, and runs ``carecli app`` as a fresh process would (the SSH zygote's code),
  opening its own database connections. The client stays as the terminal's foreground process: it
  passes on the signals the terminal sends it (a resize, a hang-up, Ctrl-C before the app takes the
  keyboard), and exits with the app's exit code, which the launcher reports once it has reaped it.
- A client that dies takes its app with it (the launcher sees its socket close and hangs the app up).

The launcher holds no database connection, no session token, no key and no data: only imported code.
It is keyed by what decides the code it would run and how (the Python, its module path, the environment
variables read when modules are imported, where the user's files are, the user and groups), so a launch
in another environment does not use it; it re-checks carecli's files and the installed distributions
before every launch and ends, sending the launch the ordinary way, when they changed (an upgrade, an
edit). It ends by itself
after IDLE_SECONDS without a launch and with no app running. ``CARECLI_LAUNCHER=off`` turns it off
(neither used nor started); ``carecli launcher status|start|stop`` shows, starts or stops it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import stat
import sys
import time

TYPE_CHECKING = False  # (not typing's: the launch would import it, for annotations only)
if TYPE_CHECKING:
    from typing import NoReturn

PROTOCOL = 1
#: every message is NUL-separated fields (nothing in an argument, a path or the environment can hold a NUL),
#: UTF-8 with surrogate escapes; a request starts with this, an answer is name, value, name, value...
MAGIC = f"carecli-launcher/{PROTOCOL}"
#: an idle launcher (no launch, no app running) ends after this long
IDLE_SECONDS = 30 * 60
#: a launcher started by an ordinary launch waits this long before importing the app beside it
START_DELAY_SECONDS = 3.0
#: how long a launch waits for the launcher to answer with its app's pid before going the ordinary way
ANSWER_TIMEOUT = 10.0
#: a hung-up app still running after this long is killed
HANGUP_GRACE_SECONDS = 5.0
#: the most one request may be (an environment is a few KiB)
MAX_MESSAGE = 1 << 20
#: environment variables that decide how Python and the modules it imports behave (``PYTHON*``, Textual's
#: ``TEXTUAL_*`` and ``ESCDELAY``, read on import), and where the user's files are: a launcher serves only
#: launches that agree on them. carecli's own settings (``CARECLI_*``: database URLs, key material) are read
#: when the app runs, in the forked app, from the launch's environment; they are not part of the key.
_KEY_PREFIXES = ("TEXTUAL_", "PYTHON", "XDG_", "LC_")
_KEY_NAMES = ("HOME", "LANG", "ESCDELAY")
_OFF = ("off", "0", "no", "false")


# -- where, and for which environment -------------------------------------------------------------


def enabled(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    return env.get("CARECLI_LAUNCHER", "on").strip().lower() not in _OFF


def private_directory() -> str | None:
    """The user's own 0700 directory for the socket (made when missing), or None when there is no safe one."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        directory = os.path.join(runtime, "carecli")
    else:
        directory = os.path.join(os.environ.get("TMPDIR") or "/tmp", f"carecli-{os.getuid()}")  # noqa: S108
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        info = os.lstat(directory)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None  # a symlink, someone else's, or open to others: never trust it
    return directory


def environment_key(env: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """What decides the code a launcher runs and how it was imported: launches that differ in it differ in key."""
    chosen = {name: value for name, value in env.items()
              if name.startswith(_KEY_PREFIXES) or name in _KEY_NAMES}
    described = _fields([MAGIC, sys.executable, *sys.path, "", *(f"{k}={v}" for k, v in sorted(chosen.items())), "",
                         str(os.getuid()), str(os.getgid()), *map(str, sorted(os.getgroups()))])
    return hashlib.sha256(described).hexdigest()[:20]


def socket_path(env: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    directory = private_directory()
    if directory is None:
        return None
    path = os.path.join(directory, f"launcher-{environment_key(env)}.sock")
    return path if len(path.encode()) < 100 else None  # sun_path holds 108 bytes


def code_stamp() -> str:
    """A digest of the code a launcher imported: carecli's files (name, size, mtime) and the installed distributions.

    An upgrade renames a distribution's ``.dist-info``; an edit of a checkout changes a file's mtime.
    """
    from contextlib import suppress

    import carecli

    digest = hashlib.sha256()
    package = os.path.dirname(os.path.abspath(carecli.__file__))
    for root, directories, files in os.walk(package):
        directories[:] = sorted(d for d in directories if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                with suppress(OSError):
                    info = os.stat(os.path.join(root, name))
                    digest.update(f"{root}/{name}:{info.st_size}:{info.st_mtime_ns}\n".encode())
    for entry in sys.path:
        if os.path.basename(entry) in ("site-packages", "dist-packages") and os.path.isdir(entry):
            with suppress(OSError):
                digest.update("\n".join(sorted(n for n in os.listdir(entry) if n.endswith(".dist-info"))).encode())
    return digest.hexdigest()


# -- the launch (the client) -------------------------------------------------------------------------


def wants_launcher(argv: list[str]) -> bool:
    """``carecli`` or ``carecli app``, on a terminal, with the launcher on."""
    if argv not in ([], ["app"]) or not enabled():
        return False
    try:
        return os.isatty(0) and os.isatty(1)
    except OSError:
        return False


def main() -> None:
    """The ``carecli`` command: through the launcher when it can, else the ordinary way."""
    argv = sys.argv[1:]
    if wants_launcher(argv):
        code = launch(argv)
        if code is not None:
            sys.exit(code)
    from carecli.cli.main import main as ordinary

    ordinary(argv)


def launch(argv: list[str]) -> int | None:
    """Run ``carecli ARGV`` through the launcher; its exit code, or None to run it here (after starting one)."""
    path = socket_path()
    if path is None:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        start_in_background(path, START_DELAY_SECONDS)
        return None
    stand_in = _StandIn()  # from before the app exists: a resize meanwhile is not lost
    answer: dict[str, str] = {}
    pid = None
    try:
        sock.settimeout(ANSWER_TIMEOUT)
        socket.send_fds(sock, [run_message(argv, os.getcwd(), _umask(), os.environ)], [0, 1, 2])
        answer = _receive(sock)
        pid = int(answer["pid"]) if "pid" in answer else None
    except (OSError, ValueError):
        pass
    if pid is None:
        sock.close()
        stand_in.give_up()
        if "stale" in answer:
            start_in_background(path, START_DELAY_SECONDS)  # the old one has gone (its code changed)
        return None
    stand_in.app_is(pid)
    return _follow(sock, pid)


def run_message(argv: list[str], cwd: str, umask: int, env: dict[str, str] | os._Environ[str]) -> bytes:
    """The request to run ``carecli ARGV`` (read back by :func:`run_request`)."""
    return _fields([MAGIC, "run", cwd, str(umask), str(len(argv)), *argv,
                    *(f"{name}={value}" for name, value in env.items())])


def _umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _fields(fields: list[str]) -> bytes:
    return "\0".join(fields).encode("utf-8", "surrogateescape")


def _unfields(data: bytes) -> list[str]:
    return data.decode("utf-8", "surrogateescape").split("\0")


def _answer_of(data: bytes) -> dict[str, str]:
    fields = _unfields(data) if data else []
    if len(fields) % 2:
        raise ValueError("not an answer")
    return dict(zip(fields[::2], fields[1::2]))


def _receive(sock: socket.socket) -> dict[str, str]:
    """The launcher's answer (``{}`` when it hung up)."""
    return _answer_of(sock.recv(MAX_MESSAGE))


#: the signals a terminal sends its foreground process (this one) that belong to the app
_FORWARDED = (signal.SIGWINCH, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP, signal.SIGCONT)


#: what stops a process: ignored by the stand-in, whose stop would strand the app
_STOPPING = (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)


class _StandIn:
    """This process's signals while it stands in for the app: passed on to the app once it has a pid (those that
    came before then too: a hang-up while the launcher forks is not lost), or, when the launch goes the
    ordinary way, handled as if never caught. (A resize before the app's Textual watches for one needs
    nothing: Textual reads the size when it starts watching.)"""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.pending: list[int] = []
        self.previous = {signum: signal.getsignal(signum) for signum in (*_FORWARDED, *_STOPPING)}
        for signum in _FORWARDED:
            signal.signal(signum, self._caught)
        for signum in _STOPPING:
            signal.signal(signum, signal.SIG_IGN)

    def _caught(self, signum: int, frame: object) -> None:
        if self.pid is None:
            self.pending.append(signum)
        else:
            self._send(signum)

    def _send(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)  # type: ignore[arg-type]
        except OSError:
            pass

    def app_is(self, pid: int) -> None:
        self.pid = pid
        for pending in dict.fromkeys(self.pending):
            self._send(pending)
        self.pending.clear()

    def give_up(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for pending in dict.fromkeys(self.pending):
            if pending not in (signal.SIGWINCH, signal.SIGCONT):
                signal.raise_signal(pending)  # as it would have been had it come a moment later


def _follow(sock: socket.socket, pid: int) -> int:
    """Be the app's stand-in on the terminal until the launcher reports its end; its exit code."""
    sock.settimeout(None)
    try:
        code = int(_receive(sock)["exit"])
    except (OSError, ValueError, KeyError):
        return _outlive(pid)
    finally:
        sock.close()
    return code if code >= 0 else 128 - code


def _outlive(pid: int) -> int:
    """The launcher went away before its app: wait for the app to end (its exit status is lost with it)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return 1
    import select

    try:
        select.select([pidfd], [], [])
    finally:
        os.close(pidfd)
    return 1


def start_in_background(path: str, delay: float) -> None:
    """Start a launcher for this environment, detached (its own session, no terminal), and do not wait for it."""
    try:
        child = os.fork()
    except OSError:
        return
    if child:
        try:
            os.waitpid(child, 0)  # the middle process exits at once
        except ChildProcessError:
            pass
        return
    try:  # pragma: no cover - the forked middle and the launcher's exec
        os.setsid()
        if os.fork():
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        os.closerange(3, 65536)
        import json

        # -P: not the working directory's modules; the launch's own module path is passed instead
        os.execv(sys.executable, [sys.executable, "-P", "-m", "carecli.launcher", "serve", "--socket", path,
                                  "--delay", str(delay), "--path", json.dumps(sys.path)])
    finally:
        os._exit(1)


def ask(path: str, op: str, timeout: float = ANSWER_TIMEOUT) -> dict[str, str] | None:
    """A launcher's answer to ``status`` or ``stop`` (names and values), or None when none answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            sock.send(_fields([MAGIC, op]))
            answer = _receive(sock)
        except (OSError, ValueError):
            return None
    return answer or None


def wait_ready(path: str, timeout: float) -> dict[str, str] | None:
    """The launcher's status once it answers (it has imported the app), or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        answer = ask(path, "status")
        if answer is not None or time.monotonic() >= deadline:
            return answer
        time.sleep(0.05)


# -- the launcher ------------------------------------------------------------------------------------


def serve(path: str, delay: float, idle_seconds: float = IDLE_SECONDS) -> int:
    """The launcher: import the app, then fork a launch's app per request, until idle or stopped."""
    import fcntl
    import gc

    directory = os.path.dirname(path)
    if private_directory() != directory:
        return 1
    lock = os.open(path + ".lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held for its life, from before it waits
    except OSError:
        return 0  # another launcher for this environment is starting or running
    time.sleep(delay)
    stamp = code_stamp()
    from carecli.ssh import zygote

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    zygote.preload()
    from carecli.data import embedded

    try:  # the embedded server's package (and psutil): a local launch with no URLs configured starts or joins it
        embedded._pgserver()
    except ImportError:
        pass
    problem = zygote.unfit_to_fork(-1)
    if problem is not None:
        return 1
    try:
        os.unlink(path)  # a dead launcher's (we hold the lock)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old_mask = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old_mask)
    listener.listen(16)
    inode = os.stat(path).st_ino
    gc.collect()
    gc.freeze()
    return _Launcher(listener, lock, path, inode, stamp, idle_seconds).run()


class _Launcher:
    def __init__(self, listener: socket.socket, lock: int, path: str, inode: int, stamp: str,
                 idle_seconds: float) -> None:
        self.listener = listener
        self.lock = lock
        self.path = path
        self.inode = inode
        self.stamp = stamp
        self.idle_seconds = idle_seconds
        self.started = time.time()
        self.last_activity = time.monotonic()
        self.launches = 0
        #: app pid -> the connection of the launch it belongs to
        self.apps: dict[int, socket.socket] = {}
        #: app pid -> when it was hung up (its launch went away)
        self.hung_up: dict[int, float] = {}
        self.closing = False
        self.stop_requested = False

    def _stop_requested(self, signum: int, frame: object) -> None:
        self.stop_requested = True  # acted on by the loop (the handler may run inside its select)

    def run(self) -> int:
        import select

        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.signal(signal.SIGTERM, self._stop_requested)
        try:
            while True:
                if self.stop_requested:
                    self._close()
                # (a hung-up app's connection stays readable, at its end: no longer watched)
                watched = [wake_read, *(conn.fileno() for pid, conn in self.apps.items() if pid not in self.hung_up)]
                if not self.closing:
                    watched.append(self.listener.fileno())
                readable, _, _ = select.select(watched, [], [], 1.0)
                if wake_read in readable:
                    try:
                        while os.read(wake_read, 512):
                            pass
                    except BlockingIOError:
                        pass
                self._reap()
                for pid, conn in list(self.apps.items()):
                    if conn.fileno() in readable and pid not in self.hung_up:
                        self._hang_up(pid)  # the launch closed its end (it died): the app goes with it
                self._kill_the_stubborn()
                if not self.closing and self.listener.fileno() in readable:
                    self._accept()
                if not self.closing and (not self._still_ours() or (
                        not self.apps and time.monotonic() - self.last_activity > self.idle_seconds)):
                    self._close()
                if self.closing and not self.apps:
                    return 0
        finally:
            signal.set_wakeup_fd(-1)

    def _still_ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def _close(self) -> None:
        """Take no more launches (the socket goes); end once the apps running have."""
        if self.closing:
            return
        self.closing = True
        if self._still_ours():
            try:
                os.unlink(self.path)
            except OSError:
                pass
        self.listener.close()
        os.close(self.lock)  # a new launcher may start while the apps this one forked run on (after an upgrade)

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            uid = int.from_bytes(creds[4:8], sys.byteorder)
            if uid != os.getuid():
                conn.close()
                return
            conn.settimeout(ANSWER_TIMEOUT)
            message, fds, flags, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
        except OSError:
            conn.close()
            return
        try:
            self._answer(conn, message, fds, flags)
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _answer(self, conn: socket.socket, message: bytes, fds: list[int], flags: int) -> None:
        fields = _unfields(message)
        op = fields[1] if len(fields) >= 2 and fields[0] == MAGIC else None
        if op == "status" and len(fields) == 2:
            self._say(conn, {"pid": os.getpid(), "started": self.started, "launches": self.launches,
                             "running": len(self.apps), "idle_seconds": self.idle_seconds})
            conn.close()
        elif op == "stop" and len(fields) == 2:
            self._say(conn, {"pid": os.getpid(), "stopping": 1, "running": len(self.apps)})
            conn.close()
            self._close()
        elif op == "run" and (request := run_request(fields, fds, flags)) is not None:
            if code_stamp() != self.stamp:
                self._say(conn, {"stale": 1})
                conn.close()
                self._close()
                return
            self._run(conn, request, fds)
        else:
            self._say(conn, {"error": "malformed request"})
            conn.close()

    @staticmethod
    def _say(conn: socket.socket, message: dict[str, object]) -> bool:
        try:
            conn.send(_fields([str(item) for pair in message.items() for item in pair]))
            return True
        except OSError:
            return False

    def _run(self, conn: socket.socket, request: RunRequest, fds: list[int]) -> None:
        try:
            pid = os.fork()
        except OSError:
            self._say(conn, {"error": "cannot fork"})
            conn.close()
            return
        if pid == 0:  # pragma: no cover - the forked app
            _app(fds, request)
        self.launches += 1
        self.last_activity = time.monotonic()
        self.apps[pid] = conn
        if not self._say(conn, {"pid": pid}):
            self._hang_up(pid)

    def _reap(self) -> None:
        while self.apps:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.apps.pop(pid, None)
            self.hung_up.pop(pid, None)
            self.last_activity = time.monotonic()
            if conn is not None:
                self._say(conn, {"exit": os.waitstatus_to_exitcode(status)})
                conn.close()

    def _hang_up(self, pid: int) -> None:
        self.hung_up[pid] = time.monotonic()
        try:
            os.killpg(pid, signal.SIGHUP)
        except OSError:
            pass

    def _kill_the_stubborn(self) -> None:
        now = time.monotonic()
        for pid, since in self.hung_up.items():
            if now - since > HANGUP_GRACE_SECONDS:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass


class RunRequest:
    """A launch's request: run ``carecli ARGV`` in ``cwd`` with ``umask`` and ``env`` on its three descriptors."""

    __slots__ = ("argv", "cwd", "env", "umask")

    def __init__(self, argv: list[str], cwd: str, umask: int, env: dict[str, str]) -> None:
        self.argv, self.cwd, self.umask, self.env = argv, cwd, umask, env

    def __repr__(self) -> str:  # never the environment: it may hold a database password or key material
        return f"RunRequest(argv={self.argv!r}, {len(self.env)} environment variables)"


def run_request(fields: list[str], fds: list[int], flags: int) -> RunRequest | None:
    """``MAGIC, "run", cwd, umask, argc, *argv, *"NAME=value"`` with the launch's stdin, stdout and stderr;
    None unless it is exactly that, for the app (the launcher runs nothing else)."""
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) != 3 or len(fields) < 5:
        return None
    cwd, umask, argc = fields[2], fields[3], fields[4]
    if not (umask.isdigit() and argc.isdigit() and int(umask) <= 0o777 and os.path.isabs(cwd)):
        return None
    argv, environment = fields[5:5 + int(argc)], fields[5 + int(argc):]
    if len(argv) != int(argc) or argv not in ([], ["app"]) or not all(entry.find("=") > 0 for entry in environment):
        return None
    env = dict(entry.split("=", 1) for entry in environment)  # (a name is never empty nor holds "=")
    return RunRequest(argv, cwd, int(umask), env)


def _app(fds: list[int], request: RunRequest) -> NoReturn:  # pragma: no cover - forked
    """The forked app: the launch's streams, environment, directory and umask; ``carecli ARGV``; never returns."""
    from carecli.ssh.zygote import close_descriptors_except, exit_forked, reset_signals, run_main_here

    def run() -> int:
        reset_signals()
        os.setsid()  # its own process group: hung up as one, apart from the launcher
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        close_descriptors_except({0, 1, 2})  # the launcher's socket, lock and pipes; other launches'
        os.chdir(request.cwd)
        os.umask(request.umask)
        return run_main_here(list(request.argv), request.env)

    exit_forked(run)


def _serve_main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m carecli.launcher")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--idle-seconds", type=float, default=IDLE_SECONDS)
    parser.add_argument("--path", help="the module path of the launches it serves (JSON list)")
    args = parser.parse_args(argv)
    if args.path:
        import json

        sys.path[:] = [entry for entry in json.loads(args.path) if isinstance(entry, str)]
    return serve(args.socket, args.delay, args.idle_seconds)


if __name__ == "__main__":
    sys.exit(_serve_main(sys.argv[1:]))

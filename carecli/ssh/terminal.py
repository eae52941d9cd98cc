"""One app process on a pseudo-terminal the SSH host controls.

The host starts ``carecli app`` with the pty's slave side as its terminal
(its controlling terminal, so window-size changes reach it as SIGWINCH) and
pumps bytes between the pty's master side and the SSH channel. The session
token reaches the app through a pipe (``--session-fd``), never through the
command line or the environment, where other local users could read it.
The process is forked from the host's zygote (carecli/ssh/zygote.py) when the
host has one, else exec'd (``app_command``, ``--no-prefork``, a failed zygote).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import pty
import re
import signal
import struct
import sys
import termios
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from carecli.ssh.relay import NoticeRelay, Outlet
    from carecli.ssh.zygote import AppLauncher

log = logging.getLogger("carecli.ssh")

#: restores the client's terminal whatever the app left behind (alternate screen, mouse reporting,
#: bracketed paste, focus events, the kitty keyboard protocol, a hidden cursor, colours)
TERMINAL_RESET = (
    "\x1b[?1049l"  # leave the alternate screen
    "\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?1015l"  # mouse reporting off
    "\x1b[?2004l"  # bracketed paste off
    "\x1b[?1004l"  # focus events off
    "\x1b[<u"  # pop the kitty keyboard protocol flags
    "\x1b[?25h"  # show the cursor
    "\x1b[0m"  # default colours
    "\r\n"
).encode("ascii")

_GOODBYE = {
    "quit": "Signed out of carecli. Goodbye.",
    "idle": "carecli closed this session after {idle} without input. Connect again to go on.",
    "disconnect": "",
    "revoked": "Your access ended (the SSH key was revoked or expired, or the account was deactivated).",
    "lifetime": "This session reached its maximum length of {hours} hours. Connect again to go on.",
    "shutdown": "The carecli host is shutting down. Please connect again in a few minutes.",
    "error": "carecli stopped unexpectedly; nothing you saved is lost. Please connect again.",
}


#: the most of an app's output the host reads before sending it on (one SSH message per frame, not one per read)
OUTPUT_GATHER_BYTES = 256 * 1024


def goodbye(reason: str, *, idle_minutes: float = 15, max_hours: int = 12) -> str:
    """What the client's terminal shows after the app ended, for each end reason."""
    idle = f"{round(idle_minutes)} minutes" if idle_minutes >= 1 else f"{round(idle_minutes * 60)} seconds"
    return _GOODBYE.get(reason, _GOODBYE["error"]).format(idle=idle, hours=max_hours)


_TERM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,40}$")
_TRUECOLOR_TERMS = ("256color", "kitty", "alacritty", "wezterm", "foot", "ghostty", "iterm", "direct")
DEFAULT_TERM = "xterm-256color"
#: variables of the host's own environment an app process must not inherit. COLUMNS and LINES: the size is the
#: client's pseudo-terminal's (a host started from a shell that exports them would pin every session to that
#: size, resizes ignored).
_DROPPED = ("CARECLI_TOKEN", "SSH_AUTH_SOCK", "SSH_CLIENT", "SSH_TTY", "SSH_ORIGINAL_COMMAND", "TERM", "COLORTERM",
            "LANG", "LANGUAGE", "DISPLAY", "TMUX", "TMUX_PANE", "STY", "COLUMNS", "LINES")
#: prefixes of the same: the locale's parts, and Textual's developer switches (a key log, timed screenshots,
#: the devtools connection) that have no place in a clinical session
_DROPPED_PREFIXES = ("LC_", "TEXTUAL")


def clean_term(term_type: str | None) -> str:
    """The client's TERM when it is a plausible terminal name, else xterm-256color."""
    return term_type if term_type and _TERM_RE.match(term_type) else DEFAULT_TERM


def app_environment(base: Mapping[str, str], *, term: str, client_colorterm: str | None,
                    ssh_connection: str, pool_size: int | None = 0,
                    identity_pool_size: int | None = None) -> dict[str, str]:
    """The app process's environment: the host's settings, the client's terminal, a UTF-8 locale.

    COLORTERM=truecolor is passed when the client said so or its TERM is one of the
    24-bit-colour families; LANG is always a UTF-8 locale (the app draws box characters).
    ``pool_size`` (default 0: no idle connections) keeps fifty sessions' pools from holding a
    server's ``max_connections`` between them; None leaves the host's own setting.
    ``identity_pool_size`` likewise for the identity database alone (the host gives 0: an app uses
    it for its session checks, a few a minute).
    """
    env = {key: value for key, value in base.items() if key not in _DROPPED and not key.startswith(_DROPPED_PREFIXES)}
    if pool_size is not None:
        env["CARECLI_DB_POOL_SIZE"] = str(pool_size)
    if identity_pool_size is not None:
        env["CARECLI_DB_IDENTITY_POOL_SIZE"] = str(identity_pool_size)
    env["TERM"] = term
    if client_colorterm in ("truecolor", "24bit") or any(part in term for part in _TRUECOLOR_TERMS):
        env["COLORTERM"] = "truecolor"
    env["LANG"] = "C.UTF-8"
    env["SSH_CONNECTION"] = ssh_connection
    return env


def set_window_size(fd: int, columns: int, rows: int) -> None:
    """Tell the pty its size (the kernel signals the app with SIGWINCH)."""
    columns = max(1, min(columns, 1000))
    rows = max(1, min(rows, 1000))
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def take_controlling_terminal() -> None:  # pragma: no cover - runs in a forked child
    """In a new session leader (start_new_session, or the zygote's child after setsid), make its stdin (the
    pty) its controlling terminal: between fork and exec, or before the zygote's child runs the app."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def app_command() -> list[str]:
    """How the host starts an app process: this Python, this carecli."""
    return [sys.executable, "-m", "carecli", "app"]


class ChildProcess(Protocol):
    """What the host needs of an app process: an exec'd ``asyncio.subprocess.Process`` or a zygote's fork."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...


class AppProcess:
    """A running app on its pty: write input, resize, read output through ``on_output``, stop it."""

    def __init__(self, process: ChildProcess, master: int, outlet: Outlet | None = None) -> None:
        self.process = process
        self.master = master
        #: the session pipe's write end, relaying live updates to the app (None: the app listens itself)
        self.outlet = outlet
        self._pending = bytearray()
        self._reading = False
        self._on_output: Callable[[bytes], None] | None = None
        self._on_eof: Callable[[], None] | None = None
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def start(cls, token: str, *, env: Mapping[str, str], columns: int, rows: int,
                    command: list[str] | None = None, launcher: AppLauncher | None = None,
                    relay: NoticeRelay | None = None) -> AppProcess:
        """Start the app signed in with ``token`` on a new pty of ``columns`` x ``rows``.

        With a ``launcher`` (and no ``command``) the app is forked from the host's zygote; when that
        fails, and with a ``command``, it is exec'd as a new process (``command`` or ``carecli app``).
        With a ``relay``, the token pipe stays open after the token (ended by a newline) and carries the
        host's live-update notices to the app; without one it is closed after the token.
        """
        if launcher is not None and command is None:
            from carecli.ssh.zygote import LaunchError

            try:
                return await cls._start(token, env=env, columns=columns, rows=rows, launcher=launcher, relay=relay)
            except LaunchError as exc:
                log.warning("cannot fork the app from the launcher (%s); starting it as a new process", exc)
        return await cls._start(token, env=env, columns=columns, rows=rows, command=command or app_command(),
                                relay=relay)

    @classmethod
    async def _start(cls, token: str, *, env: Mapping[str, str], columns: int, rows: int,
                     command: list[str] | None = None, launcher: AppLauncher | None = None,
                     relay: NoticeRelay | None = None) -> AppProcess:
        master, slave = pty.openpty()
        read_end, write_end = os.pipe()
        outlet: Outlet | None = None
        try:
            set_window_size(slave, columns, rows)
            # 43 bytes (and the newline): far below a pipe's buffer
            os.write(write_end, token.encode("ascii") + (b"\n" if relay is not None else b""))
            if relay is not None:
                # Attached before the app starts: a change committed while it starts is waiting in the pipe.
                outlet = relay.attach(write_end)
            else:
                os.close(write_end)
            write_end = -1
            process: ChildProcess
            if launcher is not None:
                process = await launcher.spawn(slave, read_end, env)
            else:
                assert command is not None
                process = await asyncio.create_subprocess_exec(
                    *command, "--session-fd", str(read_end),
                    stdin=slave, stdout=slave, stderr=slave, env=dict(env), pass_fds=(read_end,),
                    start_new_session=True, preexec_fn=take_controlling_terminal)
        except BaseException:
            os.close(master)  # (a forked app that could not take this terminal ends on its hang-up)
            if outlet is not None:
                outlet.close()
            raise
        finally:
            os.close(slave)
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)
        os.set_blocking(master, False)
        return cls(process, master, outlet)

    # -- output: pty -> client ---------------------------------------------------------

    def attach(self, on_output: Callable[[bytes], None], on_eof: Callable[[], None]) -> None:
        self._on_output, self._on_eof = on_output, on_eof
        self.resume_output()

    def pause_output(self) -> None:
        """The client is slow: stop reading, so the app blocks on its writes (back-pressure)."""
        if self._reading:
            self._loop.remove_reader(self.master)
            self._reading = False

    def resume_output(self) -> None:
        if not self._reading and self.master >= 0:
            self._loop.add_reader(self.master, self._readable)
            self._reading = True

    def _readable(self) -> None:
        """Read everything the app has written so far, then hand it on at once.

        A pty gives at most 4 KiB per read, and the host used to send each read as it came: a 17 KiB
        frame went out as several SSH messages (each encrypted and framed by the host, decrypted and
        parsed by the client). By the time the host runs, the app has usually written the whole frame:
        reading on until the pty is empty sends it as one message, without waiting for anything.
        """
        output = bytearray()
        eof = False
        while len(output) < OUTPUT_GATHER_BYTES:
            try:
                data = os.read(self.master, 65536)
            except BlockingIOError:
                break
            except OSError as exc:  # EIO: every slave side is closed, the app is gone
                if exc.errno != errno.EIO:
                    raise
                data = b""
            if not data:
                eof = True
                break
            output += data
        if output:
            assert self._on_output is not None
            self._on_output(bytes(output))
        if eof:
            self.pause_output()
            if self._on_eof is not None:
                self._on_eof()

    # -- input: client -> pty ----------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue the client's keystrokes for the app (never blocks the host's event loop)."""
        if self.master < 0:
            return
        if self._pending:
            self._pending += data
            return
        try:
            written = os.write(self.master, data)
        except BlockingIOError:
            written = 0
        except OSError:
            return  # the app is gone; its exit is handled elsewhere
        if written < len(data):
            self._pending += data[written:]
            self._loop.add_writer(self.master, self._writable)

    def _writable(self) -> None:
        try:
            written = os.write(self.master, self._pending)
        except BlockingIOError:
            return
        except OSError:
            written = len(self._pending)
        del self._pending[:written]
        if not self._pending:
            self._loop.remove_writer(self.master)

    def resize(self, columns: int, rows: int) -> None:
        if self.master >= 0:
            set_window_size(self.master, columns, rows)

    # -- ending -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    async def stop(self, grace: float = 3.0) -> int | None:
        """Hang up the app's terminal (SIGHUP, as a closed terminal would), then SIGTERM, then SIGKILL."""
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGKILL):
            if not self.running:
                break
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except asyncio.TimeoutError:
                continue
        return self.process.returncode

    def close(self) -> None:
        """Release the pty and the session pipe (after the app has ended)."""
        if self.outlet is not None:
            self.outlet.close()
            self.outlet = None
        if self.master < 0:
            return
        self.pause_output()
        if self._pending:
            self._loop.remove_writer(self.master)
            self._pending.clear()
        os.close(self.master)
        self.master = -1

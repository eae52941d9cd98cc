"""``carecli app`` (and bare ``carecli`` on a terminal): the specialist's full-screen app."""

from __future__ import annotations

import os
import sys

import click

from carecli.config import load_settings
from carecli.errors import ConfigError

#: the most a session token read from the SSH host's pipe may be (it is 43 characters)
_MAX_TOKEN_BYTES = 512
#: how long the app waits for the opening thread to load what it needs before loading the app itself
#: (Opening.wait_loaded: it then waits on the server while the app loads); a bound, not a delay
LOAD_HEAD_START_SECONDS = 1.0
#: cursor to the start of the line above (CPL), then erase that whole line (EL 2)
ERASE_LINE_ABOVE = "\x1b[1F\x1b[2K"


def read_session_fd(fd: int) -> tuple[str, bytes | None]:
    """The session token the SSH host wrote into the pipe ``fd``, and whether the pipe goes on.

    A token ended by a newline: the host relays its live-update notices through the same pipe after
    it (see carecli/ssh/relay.py); the fd is left open and the bytes already read past the newline
    are returned with it (``b""`` when none). A token ended by the pipe's end: nothing follows, the fd
    is closed and None is returned (the app then listens on the database itself).
    """
    data = bytearray()
    relayed = False
    try:
        while len(data) <= _MAX_TOKEN_BYTES:
            chunk = os.read(fd, 256)
            if not chunk:
                break
            data += chunk
            if b"\n" in data:
                relayed = True
                break
    except OSError as exc:
        _close_quietly(fd)
        raise ConfigError(f"cannot read the session from file descriptor {fd}: {exc.strerror}") from None
    token_bytes, _, rest = bytes(data).partition(b"\n")
    token = token_bytes.decode("ascii", "replace").strip()
    if not token or len(token) > _MAX_TOKEN_BYTES:
        _close_quietly(fd)
        raise ConfigError(f"file descriptor {fd} did not carry a session token")
    if not relayed:
        _close_quietly(fd)
        return token, None
    return token, rest


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def steady_cursors() -> None:
    """Text cursors that do not blink (for a session over SSH).

    A blinking cursor redraws its widget twice a second: over SSH each blink is a frame, rendered by the
    app, encrypted by the host, sent and drawn by the client, for as long as a search box or a note has
    the focus, typing or not (about 11 ms of the app's CPU per second per idle session; 50 sessions
    spend a quarter of a 2-core host on it). A terminal over SSH shows a steady cursor instead. Changes
    the default of Textual's ``cursor_blink`` of ``Input`` and ``TextArea`` in this process (a widget
    may still set its own).
    """
    from textual.reactive import Reactive
    from textual.widgets import Input, TextArea

    for widget in (Input, TextArea):
        descriptor = widget.__dict__.get("cursor_blink")
        if isinstance(descriptor, Reactive) and hasattr(descriptor, "_default"):
            descriptor._default = False


def draw_on_the_terminal() -> None:
    """Textual draws the screen on stderr. With stderr sent elsewhere and stdout the terminal
    (``carecli app 2>err.log``, ``2>/dev/null``), the screen would go into the file and the terminal stay
    blank while the app read the keys. The screen then goes to the terminal (file descriptor 2 becomes a
    copy of stdout's), and Python's own stderr (warnings, a crash report after the app has ended) still
    goes where it was sent. Nothing changes when stderr is the terminal, or when stdout is not one."""
    try:
        if os.isatty(2) or not os.isatty(1):
            return
    except OSError:
        return
    sent_to = os.dup(2)
    os.dup2(1, 2)
    sys.stderr.flush()
    sys.stderr = open(sent_to, "w", encoding=sys.stderr.encoding or "utf-8", errors="backslashreplace",  # noqa: SIM115
                      buffering=1, closefd=True)


def run_app(*, session_fd: int | None = None) -> int:
    """Start the app; the databases are opened by the app itself, with a progress screen.

    With ``session_fd`` (the SSH host's way in) the app runs signed in with the session token read
    from that pipe, on the ``ssh`` channel, and never offers a sign-in. Returns the app's exit code.
    """
    from carecli.screens.collector import hold_start_up, release_start_up

    hold_start_up()  # until the first screen is shown (see there)
    draw_on_the_terminal()
    settings = load_settings()
    from carecli.services.opening import Opening

    if session_fd is None:
        opening = Opening(settings)
    else:
        from carecli.services.auth.credentials import HeldCredential

        token, relayed = read_session_fd(session_fd)
        if relayed is not None:  # the host's live updates come through the same pipe
            from carecli.data import notify

            notify.listen_through(session_fd, relayed)
        opening = Opening(settings, store=HeldCredential.holding(token), channel="ssh")
    # Started before Textual and the screens are imported: the embedded server's start, the connections, the
    # session check and the worklist's first read wait on the server while this thread loads the app.
    opening.start()
    opening.wait_loaded(LOAD_HEAD_START_SECONDS)
    said = opening.starting_server and sys.stdout.isatty()
    if said:
        # Said at once, before the app has loaded (a second or so on a busy machine); the app's start screen
        # then says it again until the server is up.
        click.echo(opening.text)
    # Imported here: the subcommands must not pay for loading Textual.
    from carecli.screens.app import CareApp

    if session_fd is None:
        app = CareApp(settings, opening=opening)
    else:
        steady_cursors()
        app = CareApp(settings, store=opening.store, channel="ssh", single_session=True, opening=opening)
    try:
        app.run()
    finally:
        if said:
            # The app drew on the alternate screen; back on the terminal's own, that line would still say the
            # database is starting above the prompt: it is wiped (to the start of the line above, erase it).
            sys.stdout.write(ERASE_LINE_ABOVE)
            sys.stdout.flush()
        release_start_up()  # an app that ended before its first screen
        # The app's databases, or the ones opened for it if it ended before taking them.
        databases = app.databases or (opening.databases if opening.done else None)
        if databases is not None:
            databases.dispose()
    return app.return_code or 0


@click.command("app")
@click.option("--session-fd", type=int, default=None, hidden=True,
              help="(the SSH host) read the session token from this file descriptor")
def app_command(session_fd: int | None) -> None:
    """Open the specialist's app (the default when carecli runs on a terminal)."""
    code = run_app(session_fd=session_fd)
    if code:
        raise SystemExit(code)

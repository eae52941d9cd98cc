"""A real terminal for end-to-end tests: a private tmux server, driven by keys, read by ``capture-pane``.

The ``terminal`` fixture (registered for the whole suite in tests/conftest.py; skips where tmux is
missing) gives a test a ``TmuxTerminal``: ``start(command)`` runs the command in a detached session of
WIDTH x HEIGHT on its own socket (no other tmux is touched), ``keys``/``type`` send keystrokes, and the
``wait_for_*`` methods poll the screen with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

WIDTH, HEIGHT = 100, 30
POLL_SECONDS = 0.1
STEP_TIMEOUT = 30.0


_ESCAPE = re.compile(r"\x1b\[([0-9;:?]*)([A-Za-z])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")


def _background(params: str, background: str | None) -> str | None:
    """The background colour after one SGR sequence (``48;5;235`` -> ``5;235``; None is the default)."""
    codes = [code or "0" for code in re.split("[;:]", params)] if params else ["0"]
    index = 0
    while index < len(codes):
        code = codes[index]
        if code in ("38", "48", "58"):  # extended colour: 5;N or 2;R;G;B
            size = 2 if codes[index + 1:index + 2] == ["5"] else 4
            if code == "48":
                background = ";".join(codes[index + 1:index + 1 + size])
            index += 1 + size
            continue
        if code in ("0", "49"):
            background = None
        elif code.isdigit() and (40 <= int(code) <= 47 or 100 <= int(code) <= 107):
            background = code
        index += 1
    return background


class Screen:
    """One capture of the pane: its text, and the background colour of every cell."""

    def __init__(self, escaped: str) -> None:
        rows: list[str] = []
        backgrounds: list[list[str | None]] = []
        text: list[str] = []
        colours: list[str | None] = []
        background: str | None = None
        position = 0
        for match in [*_ESCAPE.finditer(escaped), None]:
            chunk = escaped[position:match.start() if match else len(escaped)]
            for character in chunk:
                if character == "\n":
                    rows.append("".join(text))
                    backgrounds.append(colours)
                    text, colours = [], []
                else:
                    text.append(character)
                    colours.append(background)
            if match is None:
                break
            if match.group(2) == "m":
                background = _background(match.group(1), background)
            position = match.end()
        if text:
            rows.append("".join(text))
            backgrounds.append(colours)
        self.rows = rows
        self.backgrounds = backgrounds
        self.text = "\n".join(row.rstrip() for row in rows)

    def find(self, text: str) -> tuple[int, int] | None:
        """(row, column) of the first place ``text`` is shown."""
        for row, line in enumerate(self.rows):
            column = line.find(text)
            if column >= 0:
                return row, column
        return None

    def background(self, row: int, column: int) -> str | None:
        try:
            return self.backgrounds[row][column]
        except IndexError:
            return None

    def highlighted_below(self, label: str) -> bool:
        """Whether the widget under ``label`` stands out from the form around it (a focused Select does)."""
        where = self.find(label)
        if where is None:
            return False
        row, column = where
        return self.background(row + 1, column) != self.background(row + 1, column - 1)


class TmuxTerminal:
    """One detached tmux session on a private server, running one command.

    Keys reach carecli in order, but Textual hands a key to the focused
    widget's own queue: a key that moves focus (Tab, Enter on a search box)
    has not taken effect when the next key is routed. So after such a key the
    driver waits for the screen to show where focus went (the terminal
    cursor in a text field, the highlight on a select) before typing on.
    """

    def __init__(self, directory: Path) -> None:
        self.socket = directory / "tmux.sock"
        self.session = f"carecli-e2e-{uuid.uuid4().hex[:8]}"
        #: every distinct screen seen, in order (to check nothing secret was ever shown)
        self.screens: list[str] = []
        self.last = ""

    def tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # -u: the screen holds box drawing and bullets; -S: our own server, never the user's.
        return subprocess.run(["tmux", "-u", "-S", str(self.socket), *args], capture_output=True, text=True,
                              check=check, timeout=30, env={**os.environ, "LANG": "C.UTF-8"})

    def start(self, command: str) -> None:
        self.tmux("new-session", "-d", "-s", self.session, "-x", str(WIDTH), "-y", str(HEIGHT), command)

    def alive(self) -> bool:
        return self.tmux("has-session", "-t", self.session, check=False).returncode == 0

    def capture(self) -> Screen:
        result = self.tmux("capture-pane", "-p", "-e", "-t", self.session, check=False)
        screen = Screen(result.stdout if result.returncode == 0 else "")
        if result.returncode == 0:
            self.last = screen.text
            if not self.screens or self.screens[-1] != self.last:
                self.screens.append(self.last)
        return screen

    def cursor(self) -> tuple[int, int]:
        """Where the terminal cursor is (Textual puts it in the focused text field), as (row, column)."""
        x, y = self.tmux("display-message", "-p", "-t", self.session, "#{cursor_x} #{cursor_y}").stdout.split()
        return int(y), int(x)

    def keys(self, *keys: str) -> None:
        """Press keys by tmux name (``Enter``, ``Tab``, ``F3``, ``C-s``...)."""
        self.tmux("send-keys", "-t", self.session, *keys)

    def type(self, text: str) -> None:
        """Type text literally."""
        self.tmux("send-keys", "-t", self.session, "-l", "--", text)

    def wait_until(self, condition: Callable[[Screen], Any], what: str, timeout: float = STEP_TIMEOUT) -> Any:
        """Poll the screen every POLL_SECONDS until ``condition(screen)`` is truthy; return what it returned."""
        deadline = time.monotonic() + timeout
        while True:
            result = condition(self.capture())
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; the last screen "
                                     f"was:\n{self.last}")
            if not self.alive():
                raise AssertionError(f"carecli exited while waiting for {what}; the last screen was:\n{self.last}")
            time.sleep(POLL_SECONDS)

    def wait_for_text(self, pattern: str | re.Pattern[str], timeout: float = STEP_TIMEOUT) -> re.Match[str]:
        """Wait until ``pattern`` (a literal string or a regex) is on the screen."""
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        return self.wait_until(lambda screen: regex.search(screen.text), repr(regex.pattern), timeout)

    def wait_for_no_text(self, text: str, timeout: float = STEP_TIMEOUT) -> None:
        """Wait until ``text`` is gone from the screen (a list closed, a dialog dismissed)."""
        self.wait_until(lambda screen: text not in screen.text, f"{text!r} to go away", timeout)

    def wait_for_cursor_at(self, text: str, *, rows: tuple[int, int] = (1, 1), width: int = 25) -> None:
        """Wait until the cursor is in the text field ``rows`` lines under ``text`` (0: on its line),
        within ``width`` columns of where ``text`` starts: that field has the focus."""
        def there(screen: Screen) -> bool:
            where = screen.find(text)
            if where is None:
                return False
            row, column = self.cursor()
            return where[0] + rows[0] <= row <= where[0] + rows[1] and where[1] <= column < where[1] + width
        try:
            self.wait_until(there, f"the cursor in the field at {text!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n(the cursor is at row, column {self.cursor()}; {text!r} at "
                                 f"{self.capture().find(text)})") from None

    def wait_for_highlight_below(self, label: str) -> None:
        """Wait until the select under ``label`` is highlighted: it has the focus."""
        self.wait_until(lambda screen: screen.highlighted_below(label), f"the focus on {label!r}")

    def wait_for_restyle(self, text: str, before: str | None) -> None:
        """Wait until the cell where ``text`` starts changes background from ``before`` (a table gained focus)."""
        def changed(screen: Screen) -> bool:
            where = screen.find(text)
            return where is not None and screen.background(*where) != before
        self.wait_until(changed, f"{text!r} to change style")

    def wait_for_exit(self, timeout: float = STEP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                self.capture()
                raise AssertionError(f"carecli did not exit within {timeout:.0f} s; the last screen was:\n"
                                     f"{self.last}")
            self.capture()
            time.sleep(POLL_SECONDS)

    def close(self) -> None:
        self.tmux("kill-session", "-t", self.session, check=False)
        self.tmux("kill-server", check=False)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[TmuxTerminal]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    # A short path: a Unix socket path must fit in ~100 bytes, and pytest's tmp paths can be long.
    directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"carecli-e2e-{uuid.uuid4().hex[:8]}"
    directory.mkdir(mode=0o700)
    terminal = TmuxTerminal(directory)
    try:
        yield terminal
    finally:
        terminal.close()
        shutil.rmtree(directory, ignore_errors=True)

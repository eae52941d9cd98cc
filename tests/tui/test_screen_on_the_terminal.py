"""``carecli app 2>err.log``: the screen goes to the terminal, Python's stderr to where it was sent.

Textual draws on stderr. Each case runs a small Python in a real pseudo-terminal (stdout and, unless
redirected, stderr), calls ``draw_on_the_terminal`` as ``carecli app`` does, then writes "SCREEN" the way
Textual does (``sys.__stderr__``) and "WARNING" the way Python reports a warning (``sys.stderr``).
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

CHILD = """
import sys
from carecli.cli.app_cmd import draw_on_the_terminal
draw_on_the_terminal()
sys.__stderr__.write("SCREEN\\n"); sys.__stderr__.flush()
sys.stderr.write("WARNING\\n"); sys.stderr.flush()
"""


def _run(stderr_file: Path | None) -> str:
    """What the terminal showed; the child's stderr goes to ``stderr_file`` when given."""
    controller, terminal = pty.openpty()
    try:
        with open(stderr_file, "wb") if stderr_file else open(os.devnull, "rb") as sink:  # noqa: SIM115
            process = subprocess.Popen([sys.executable, "-c", CHILD], stdin=terminal, stdout=terminal,
                                       stderr=sink if stderr_file else terminal, close_fds=True)
            os.close(terminal)
            terminal = -1
            shown = b""
            while True:
                ready, _, _ = select.select([controller], [], [], 30)
                if not ready:
                    break
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # EIO: the child has gone and the terminal is closed
                    break
                if not chunk:
                    break
                shown += chunk
            assert process.wait(timeout=30) == 0
    finally:
        os.close(controller)
        if terminal != -1:
            os.close(terminal)
    return shown.decode()


def test_stderr_sent_to_a_file_the_screen_still_goes_to_the_terminal(tmp_path) -> None:
    log = tmp_path / "err.log"
    shown = _run(log)
    assert "SCREEN" in shown
    assert "WARNING" not in shown
    assert log.read_text() == "WARNING\n"


def test_stderr_on_the_terminal_nothing_changes() -> None:
    shown = _run(None)
    assert "SCREEN" in shown and "WARNING" in shown


def test_stdout_not_a_terminal_nothing_changes(tmp_path) -> None:
    """``carecli app > out.txt``: the screen stays on stderr (the terminal), as Textual draws it."""
    out = tmp_path / "out.txt"
    with open(out, "wb") as sink:
        completed = subprocess.run([sys.executable, "-c", CHILD], stdout=sink, stderr=subprocess.PIPE,
                                   timeout=30, check=True)
    assert completed.stderr.decode() == "SCREEN\nWARNING\n"
    assert out.read_text() == ""

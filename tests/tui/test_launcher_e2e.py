"""The resident launcher end to end: ``carecli app`` in a real terminal (tmux), forked by a real launcher.

Each test starts a launcher for its own environment (``carecli launcher start``, a private runtime
directory), launches the real ``carecli`` console script in tmux as a signed-in specialist, and reads the
screen. The app that draws must be the launcher's child, not the launch, and the launch must behave as
the app would: its exit code, a resize, a hang-up.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from carecli import launcher
from carecli.services.auth.credentials import CredentialStore, session_scope
from tests.support.tmux import WIDTH, Screen, TmuxTerminal

CARECLI = Path(sys.executable).with_name("carecli")
START_TIMEOUT = 90.0
WORKLIST = "Today ("


class Launches:
    """A test's environment for launches, its launcher, and helpers to run and inspect both."""

    def __init__(self, tui: Any, tmp_path: Path, runtime: str) -> None:
        self.tmp_path = tmp_path
        self._path: str | None = None
        state = tmp_path / "state"
        self.env = {**tui.env, "XDG_STATE_HOME": str(state), "XDG_RUNTIME_DIR": runtime, "CARECLI_LAUNCHER": "on",
                    "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring", "LANG": "C.UTF-8",
                    "TERM": "tmux-256color"}
        # A signed-in specialist: the launched app resumes the session from the file in XDG_STATE_HOME.
        store = CredentialStore(scope=session_scope(tui.settings), use_keyring=False)
        previous = os.environ.get("XDG_STATE_HOME")
        os.environ["XDG_STATE_HOME"] = str(state)  # where the store writes (platformdirs reads it per call)
        try:
            tui.store = store
            tui.sign_in("specialist")
        finally:
            if previous is not None:
                os.environ["XDG_STATE_HOME"] = previous
        # What the tmux pane's process sees: the tmux server's environment (ours, LANG) and the script's.
        self.full_env = {**os.environ, "LANG": "C.UTF-8", **self.env}

    def carecli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(CARECLI), *args], env=env or self.full_env, capture_output=True, text=True,
                              timeout=120)

    def socket_path(self) -> str:
        """The launcher's socket for the console script's launches (its key holds that process's module path)."""
        if self._path is None:
            shown = self.carecli("launcher", "status").stdout
            self._path = shown.rsplit("; socket ", 1)[1].strip()
        return self._path

    def status(self) -> dict[str, Any] | None:
        return launcher.ask(self.socket_path(), "status")

    def script(self, rc_file: Path, extra: dict[str, str] | None = None) -> str:
        """A 0600 script that runs ``carecli app`` as a person would and records its exit status."""
        lines = ["#!/bin/sh", "unset COLUMNS LINES"]  # (pytest-xdist's workers set 80x24; the terminal's size wins)
        lines += [f"export {k}={shlex.quote(v)}" for k, v in {**self.env, **(extra or {})}.items()]
        lines += [f"{shlex.quote(str(CARECLI))} app", f"echo $? > {shlex.quote(str(rc_file))}"]
        script = self.tmp_path / f"run-{rc_file.stem}.sh"
        script.write_text("\n".join(lines) + "\n")
        script.chmod(0o600)
        return f"sh {shlex.quote(str(script))}"


@pytest.fixture
def launches(tui, tmp_path) -> Iterator[Launches]:
    runtime = tempfile.mkdtemp(prefix="cl-", dir="/tmp")  # noqa: S108 - a socket's path must fit in 108 bytes
    world = Launches(tui, tmp_path, runtime)
    try:
        yield world
    finally:
        _stop_every_launcher(world.socket_path())
        shutil.rmtree(runtime, ignore_errors=True)


def _stop_every_launcher(path: str) -> None:
    """Nothing outlives the test: a launcher holds its lock from its start (a launch may have started one in
    the background, still waiting or importing); ask it to stop until none holds the lock."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lock = os.open(path + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            launcher.ask(path, "stop", timeout=1.0)
            time.sleep(0.2)
        finally:
            os.close(lock)
    pytest.fail("a launcher did not stop")


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def _width(screen: Screen) -> int:
    """How wide the app drew: its widest row (the rule under the worklist's tabs spans the screen)."""
    return max((len(row.rstrip()) for row in screen.rows), default=0)


def _apps_of(launcher_pid: int) -> list[psutil.Process]:
    return [child for child in psutil.Process(launcher_pid).children() if child.status() != psutil.STATUS_ZOMBIE]


def _start_launcher(launches: Launches) -> int:
    started = launches.carecli("launcher", "start")
    assert started.returncode == 0, started.stderr
    status = launches.status()
    assert status is not None and status["launches"] == "0"
    return int(status["pid"])


def test_carecli_app_is_forked_by_the_launcher_and_behaves_as_the_app(launches, terminal: TmuxTerminal) -> None:
    pid = _start_launcher(launches)
    for run in (1, 2):
        rc_file = launches.tmp_path / f"rc{run}"
        terminal.start(launches.script(rc_file))
        terminal.wait_for_text(WORKLIST, START_TIMEOUT)
        [app] = _apps_of(pid)  # the app drawing is the launcher's child ...
        pane_pid = int(terminal.tmux("display-message", "-p", "-t", terminal.session, "#{pane_pid}").stdout)
        launch = psutil.Process(pane_pid).children()[0]  # ... and the launch (sh's child) waits for it
        assert launch.cmdline()[-1] == "app" and app.pid != launch.pid
        assert Path(f"/proc/{app.pid}/fd/0").resolve() == Path(f"/proc/{launch.pid}/fd/0").resolve()
        assert app.cwd() == os.getcwd()
        if run == 2:
            # A resize reaches the app through the launch (the terminal signals its foreground process): the
            # footer's last key, drawn against the right edge, moves from column 100 to column 80.
            terminal.wait_until(lambda screen: _width(screen) == WIDTH, f"the app at {WIDTH} columns")
            terminal.tmux("resize-window", "-t", terminal.session, "-x", "80", "-y", "24")
            terminal.wait_until(lambda screen: _width(screen) == 80, "the app redrawn at 80 columns")
            terminal.wait_for_text(WORKLIST)
        terminal.keys("C-q")
        _wait(rc_file.exists, 30, "the launch's exit status")
        assert rc_file.read_text().strip() == "0"
        _wait(lambda: not _apps_of(pid), 10, "the app's end")
    status = launches.status()
    assert status is not None and status["launches"] == "2" and status["running"] == "0"


def test_a_launch_killed_takes_its_app_with_it(launches, terminal: TmuxTerminal) -> None:
    pid = _start_launcher(launches)
    terminal.start(launches.script(launches.tmp_path / "rc"))
    terminal.wait_for_text(WORKLIST, START_TIMEOUT)
    [app] = _apps_of(pid)
    pane_pid = int(terminal.tmux("display-message", "-p", "-t", terminal.session, "#{pane_pid}").stdout)
    psutil.Process(pane_pid).children()[0].send_signal(signal.SIGKILL)
    _wait(lambda: not psutil.pid_exists(app.pid) or _zombie(app.pid), 15, "the orphaned app's end")
    _wait(lambda: (launches.status() or {}).get("running") == "0", 15, "the launcher to reap it")


def test_the_launcher_runs_nothing_but_the_app_and_only_for_its_user(launches) -> None:
    _start_launcher(launches)
    path = launches.socket_path()
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    def run(fields: list[str], fds: list[int]) -> dict[str, str]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(10)
            sock.connect(path)
            socket.send_fds(sock, ["\0".join(fields).encode()], fds)
            return launcher._answer_of(sock.recv(4096))

    refused = {"error": "malformed request"}
    for argv in (["users", "list"], ["app", "--session-fd", "0"], ["db", "upgrade"], ["app", "app"]):
        assert run([launcher.MAGIC, "run", "/", "18", str(len(argv)), *argv, "HOME=/"], [0, 1, 2]) == refused
    assert run([launcher.MAGIC, "run", "/", "18", "1", "app", "HOME=/"], [0, 1]) == refused  # no stderr
    assert run([launcher.MAGIC, "run", "/", "18", "2", "app"], [0, 1, 2]) == refused  # argv cut short
    assert run([launcher.MAGIC, "run", "relative", "18", "0", "HOME=/"], [0, 1, 2]) == refused
    assert run([launcher.MAGIC, "run", "/", "18", "0", "=x"], [0, 1, 2]) == refused
    assert run(["carecli-launcher/0", "run", "/", "18", "0"], [0, 1, 2]) == refused  # another protocol
    assert launches.status()["launches"] == "0"


def test_a_launcher_whose_code_changed_sends_the_launch_the_ordinary_way(launches, terminal: TmuxTerminal) -> None:
    """An upgrade or an edit of the code it imported: the launch runs by itself, that launcher takes no more
    launches and ends once the app it forked earlier has, and a new launcher can start meanwhile."""
    source = launches.tmp_path / "src"
    shutil.copytree(Path(launcher.__file__).parent, source / "carecli",
                    ignore=shutil.ignore_patterns("__pycache__"))
    launches.env["PYTHONPATH"] = str(source)
    launches.full_env["PYTHONPATH"] = str(source)
    launches._path = None  # another module path: another launcher
    pid = _start_launcher(launches)
    terminal.start(launches.script(launches.tmp_path / "rc-old"))  # an app of the old code, running on
    terminal.wait_for_text(WORKLIST, START_TIMEOUT)
    [old_app] = _apps_of(pid)

    edited = source / "carecli" / "cli" / "launcher_cmd.py"
    os.utime(edited, ns=(time.time_ns(), time.time_ns() + 10**9))
    rc_file = launches.tmp_path / "rc"
    terminal.tmux("new-window", "-t", terminal.session, launches.script(rc_file))
    terminal.wait_for_text(WORKLIST, START_TIMEOUT)
    pane_pid = int(terminal.tmux("display-message", "-p", "-t", terminal.session, "#{pane_pid}").stdout)
    [launch] = psutil.Process(pane_pid).children()
    assert launch.children() == []
    assert launch.cpu_times().user > 0.2  # it imported and ran the app itself
    assert _apps_of(pid) == [old_app]  # the old launcher forked nothing more, and waits for its app
    assert not os.path.exists(launches.socket_path())

    started = launches.carecli("launcher", "start")  # (the launch also started one, after a delay)
    assert started.returncode == 0, started.stderr
    assert int(launches.status()["pid"]) != pid

    terminal.keys("C-q")
    _wait(rc_file.exists, 30, "the launch's exit status")
    assert rc_file.read_text().strip() == "0"
    terminal.keys("C-q")  # the old app, in the first window
    _wait(lambda: not psutil.pid_exists(pid) or _zombie(pid), 30, "the old launcher's end after its app's")
    assert (launches.tmp_path / "rc-old").read_text().strip() == "0"

"""The resident launcher's rules that need no app: which launches it serves, its key, its directory.

The launches themselves, in a real terminal on real databases, are in tests/tui/test_launcher_e2e.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import string
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carecli import launcher

SECRET_NAMES = ("CARECLI_MASTER_KEY", "CARECLI_HSM_PIN", "CARECLI_BACKUP_KEY", "CARECLI_IDENTITY_URL",
                "CARECLI_PLATFORM_URL")
BASE = {"HOME": "/home/pat", "LANG": "C.UTF-8", "XDG_STATE_HOME": "/home/pat/.local/state", "PATH": "/usr/bin"}


@settings(max_examples=50, deadline=None)
@given(values=st.dictionaries(st.sampled_from(SECRET_NAMES), st.text(string.printable, max_size=60)))
def test_carecli_settings_and_secrets_never_enter_the_key(values) -> None:
    """The key names the socket: the database URLs and key material must not be derivable from it, and a
    launcher serves every configuration (the forked app reads the launch's settings itself)."""
    assert launcher.environment_key({**BASE, **values}) == launcher.environment_key(BASE)


@pytest.mark.parametrize("name, value", [
    ("TEXTUAL_FPS", "60"),  # read by Textual when imported: a launcher imported with another value
    ("ESCDELAY", "10"),
    ("PYTHONPATH", "/elsewhere"),  # other code
    ("PYTHONHASHSEED", "1"),
    ("HOME", "/home/sam"),  # another user's files
    ("XDG_DATA_HOME", "/data"),
    ("LC_ALL", "de_DE.UTF-8"),
])
def test_what_decides_the_code_or_the_user_changes_the_key(name, value) -> None:
    assert launcher.environment_key({**BASE, name: value}) != launcher.environment_key(BASE)


def test_the_terminal_and_other_variables_do_not(monkeypatch) -> None:
    for name, value in (("TERM", "xterm-256color"), ("COLORTERM", "truecolor"), ("TMUX", "/tmp/x,1,0"),
                        ("CARECLI_LAUNCHER", "on"), ("PATH", "/bin")):
        assert launcher.environment_key({**BASE, name: value}) == launcher.environment_key(BASE)


def test_the_launcher_is_only_for_the_app_on_a_terminal(monkeypatch) -> None:
    monkeypatch.setenv("CARECLI_LAUNCHER", "on")
    monkeypatch.setattr(os, "isatty", lambda fd: True)
    assert launcher.wants_launcher([]) and launcher.wants_launcher(["app"])
    for argv in (["app", "--session-fd", "5"], ["whoami"], ["import", "members", "f.csv"], ["--version"],
                 ["app", "--help"]):
        assert not launcher.wants_launcher(argv)
    for off in ("off", "0", "no", "false", "OFF "):
        monkeypatch.setenv("CARECLI_LAUNCHER", off)
        assert not launcher.wants_launcher(["app"])
    monkeypatch.setenv("CARECLI_LAUNCHER", "on")
    monkeypatch.setattr(os, "isatty", lambda fd: fd != 1)  # carecli app > out.txt
    assert not launcher.wants_launcher(["app"])


def test_the_socket_directory_is_private_or_not_used(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    made = launcher.private_directory()
    assert made == str(tmp_path / f"carecli-{os.getuid()}")
    assert os.stat(made).st_mode & 0o777 == 0o700
    os.chmod(made, 0o755)  # opened to others (by hand, or made so by someone else)
    assert launcher.private_directory() is None
    os.rmdir(made)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    os.symlink(elsewhere, made)  # a symlink planted where the directory goes
    assert launcher.private_directory() is None
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert launcher.private_directory() == str(runtime / "carecli")


@pytest.fixture
def runtime(monkeypatch) -> Iterator[str]:
    """A short private XDG_RUNTIME_DIR (a socket's path must fit in 108 bytes; tmp_path's may not)."""
    directory = tempfile.mkdtemp(prefix="cl-", dir="/tmp")  # noqa: S108
    monkeypatch.setenv("XDG_RUNTIME_DIR", directory)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_a_socket_path_too_long_for_unix_sockets_means_no_launcher(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / ("x" * 100)))
    (tmp_path / ("x" * 100)).mkdir()
    assert launcher.socket_path() is None
    assert launcher.launch(["app"]) is None


def test_a_launch_with_no_launcher_runs_here_and_starts_one(runtime, monkeypatch) -> None:
    started: list[tuple[str, float]] = []
    monkeypatch.setattr(launcher, "start_in_background", lambda path, delay: started.append((path, delay)))
    assert launcher.launch(["app"]) is None
    assert started == [(launcher.socket_path(), launcher.START_DELAY_SECONDS)]


def test_a_launcher_that_does_not_answer_is_passed_by(runtime, monkeypatch) -> None:
    """A socket that accepts but never answers (a stuck launcher): the launch runs here after the timeout."""
    monkeypatch.setattr(launcher, "ANSWER_TIMEOUT", 0.3)
    monkeypatch.setattr(launcher, "start_in_background", lambda path, delay: pytest.fail("it is running"))
    path = launcher.socket_path()
    assert path is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as stuck:
        stuck.bind(path)
        stuck.listen(1)
        assert launcher.launch(["app"]) is None


# What a POSIX environment, argument or path can hold: any bytes but NUL, as Python decodes them
# (UTF-8, and surrogate escapes for what is not UTF-8).
_VALUE = st.one_of(st.text(st.characters(blacklist_characters="\0", blacklist_categories=["Cs"]), max_size=40),
                   st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"").decode("utf-8", "surrogateescape")))
_NAME = _VALUE.map(lambda v: v.replace("=", "")).filter(bool)


@settings(max_examples=200, deadline=None)
@given(argv=st.sampled_from([[], ["app"]]), cwd=_VALUE.map(lambda v: "/" + v), umask=st.integers(0, 0o777),
       env=st.dictionaries(_NAME, _VALUE, max_size=20))
def test_a_run_request_reads_back_as_sent(argv, cwd, umask, env) -> None:
    """Every environment a launch can have (values with '=', newlines, any Unicode, escaped bytes) arrives whole."""
    fields = launcher._unfields(launcher.run_message(argv, cwd, umask, env))
    request = launcher.run_request(fields, [3, 4, 5], 0)
    assert request is not None
    def as_bytes(text: str) -> bytes:  # what the process's environment holds (str keys may alias: b"\xc2\x80")
        return text.encode("utf-8", "surrogateescape")

    assert (request.argv, request.cwd, request.umask) == (argv, cwd, umask)
    assert {as_bytes(k): as_bytes(v) for k, v in request.env.items()} == {as_bytes(k): as_bytes(v)
                                                                           for k, v in env.items()}
    assert str(env) not in repr(request) or not env


@settings(max_examples=300, deadline=None)
@given(fields=st.lists(_VALUE, max_size=12), fds=st.lists(st.integers(3, 50), max_size=4),
       flags=st.sampled_from([0, socket.MSG_TRUNC, socket.MSG_CTRUNC]))
def test_any_other_message_is_refused_without_an_error(fields, fds, flags) -> None:
    """Whatever arrives on the socket: a request for the app, exactly, or None (never an exception)."""
    request = launcher.run_request([launcher.MAGIC, "run", *fields], fds, flags)
    if request is not None:
        assert request.argv in ([], ["app"]) and len(fds) == 3 and not flags and request.cwd.startswith("/")


def test_a_request_for_anything_but_the_app_is_refused() -> None:
    for argv in (["users", "list"], ["app", "--session-fd", "3"], ["app", "app"], ["--version"]):
        fields = launcher._unfields(launcher.run_message(argv, "/", 0o22, {"HOME": "/"}))
        assert launcher.run_request(fields, [3, 4, 5], 0) is None
    fields = launcher._unfields(launcher.run_message(["app"], "/", 0o22, {"HOME": "/"}))
    assert launcher.run_request(fields, [3, 4], 0) is None  # its three streams, or nothing
    assert launcher.run_request(fields, [3, 4, 5], socket.MSG_CTRUNC) is None


def test_signals_before_the_app_has_a_pid_reach_it(tmp_path) -> None:
    """The terminal may signal the launch while the launcher forks: nothing is lost."""
    import signal
    import subprocess
    import sys
    import time

    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys, time, pathlib\n"
        "seen = []\n"
        "for s in (signal.SIGWINCH, signal.SIGINT, signal.SIGHUP):\n"
        "    signal.signal(s, lambda n, f: seen.append(n))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "deadline = time.monotonic() + 20\n"
        "while len(seen) < 2 and time.monotonic() < deadline: time.sleep(0.01)\n"
        "print(sorted(seen))\n")], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        before = signal.getsignal(signal.SIGINT)
        stand_in = launcher._StandIn()
        try:
            signal.raise_signal(signal.SIGINT)  # before the app's pid is known: held
            signal.raise_signal(signal.SIGWINCH)
            assert stand_in.pending == [signal.SIGINT, signal.SIGWINCH]
            stand_in.app_is(child.pid)
        finally:
            stand_in.give_up()  # (nothing pending: only puts the handlers back)
        assert signal.getsignal(signal.SIGINT) is before
        out, _ = child.communicate(timeout=30)
        assert out.strip() == str(sorted([int(signal.SIGINT), int(signal.SIGWINCH)]))
    finally:
        child.kill()


def test_a_launch_that_goes_the_ordinary_way_puts_the_handlers_back() -> None:
    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGWINCH, signal.SIGTSTP)}
    stand_in = launcher._StandIn()
    assert signal.getsignal(signal.SIGTSTP) == signal.SIG_IGN
    signal.raise_signal(signal.SIGWINCH)  # a resize meanwhile: the ordinary app reads the size itself
    stand_in.give_up()
    assert {s: signal.getsignal(s) for s in before} == before

"""The SSH host's app launcher (carecli/ssh/zygote.py): sessions' apps forked from one pre-imported process.

* At the launcher's level (no SSH, no database): a forked app is a child of the
  zygote, not an exec'd Python; it is its own session and process group with
  the pty as its controlling terminal, has the session's environment, and holds
  no descriptor but its terminal, its token pipe (and the log file it opens);
  the zygote reports its exit and ends when the host hangs up.
* Through the real host over SSH (no ``app_command``: the default way): two
  sessions' apps are two children of the zygote; killing the zygote keeps
  the open sessions going and a new session still starts (a new zygote);
  stopping the host stops the zygote.
"""

from __future__ import annotations

import asyncio
import os
import pty
import re
import signal
import time
from pathlib import Path

import psutil
import pytest

from carecli.ssh.zygote import Zygote
from tests.ssh.conftest import START_TIMEOUT, WORKLIST, new_key, open_screen

CTRL_Q = b"\x11"
F2 = b"\x1bOQ"


def _fds(pid: int) -> dict[int, str]:
    found = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            continue
    return found


def _stat(pid: int) -> tuple[int, int, int, int]:
    """ppid, process group, session, controlling terminal of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[2]), int(fields[3]), int(fields[4])


def _read_all(master: int) -> bytes:
    os.set_blocking(master, False)
    out = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except (BlockingIOError, OSError):
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


@pytest.fixture
def session_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A session's environment without databases (the apps here stop at reading their token)."""
    for name in ("state", "config"):
        (tmp_path / name).mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "TERM": "xterm-256color",
           "LANG": "C.UTF-8", "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "CARECLI_LOG_FILE": str(tmp_path / "carecli.log"), "CARECLI_CONFIG": str(tmp_path / "none.toml"),
           "SSH_CONNECTION": "127.0.0.1 50000 127.0.0.1 2222", "CARECLI_DB_POOL_SIZE": "0"}
    (tmp_path / "none.toml").write_text("")
    monkeypatch.delenv("CARECLI_LOG_FILE", raising=False)  # (the zygote's environment is this process's)
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


async def test_a_forked_app_has_its_own_session_terminal_environment_and_no_other_descriptor(
        session_env: dict[str, str]) -> None:
    zygote = await Zygote.start()
    opened: list[int] = []
    try:
        await asyncio.wait_for(zygote.ready, START_TIMEOUT)
        # The zygote itself: one thread; its standard streams, its end of the socket pair, the pipe its
        # SIGCHLD handler wakes it through; nothing else (no database connection, no listener).
        assert os.listdir(f"/proc/{zygote.pid}/task") == [str(zygote.pid)]
        held = _fds(zygote.pid)
        assert [target for fd, target in held.items() if target.startswith("socket:")] != []
        assert len([fd for fd, target in held.items() if target.startswith("socket:")]) == 1
        assert len(held) == 6, held  # 0, 1, 2, the socket, the wake-up pipe's two ends
        children = []
        for _ in range(2):
            master, slave = pty.openpty()
            read_end, write_end = os.pipe()  # the token's writer stays open: the app waits on its read
            opened += [master, write_end]
            started = time.monotonic()
            child = await zygote.spawn(slave, read_end, session_env)
            assert time.monotonic() - started < 5  # a fork, not a new Python importing Textual
            os.close(slave)
            os.close(read_end)
            children.append((child, master, write_end))

        pids = [child.pid for child, _, _ in children]
        assert len(set(pids)) == 2
        for child, _master, _ in children:
            ppid, group, session, tty = _stat(child.pid)
            assert ppid == zygote.pid  # forked from the zygote ...
            cmdline = Path(f"/proc/{child.pid}/cmdline").read_bytes().split(b"\0")
            assert b"carecli.ssh.zygote" in cmdline and b"app" not in cmdline  # ... not an exec of carecli app
            assert group == session == child.pid  # its own session and process group (killpg reaches it alone)
            assert tty != 0  # with a controlling terminal: the pty

        deadline = time.monotonic() + START_TIMEOUT
        for child, _master, _ in children:
            # Once it waits on its token, look at what it holds. It opened its log file first, where the
            # session's environment says (CARECLI_LOG_FILE: the zygote's own environment has none).
            while True:
                fds = _fds(child.pid)
                if any(target.endswith("carecli.log") for target in fds.values()):
                    break
                assert time.monotonic() < deadline, fds
                await asyncio.sleep(0.05)
            ttys = {fd for fd, target in fds.items() if target.startswith("/dev/pts/")}
            pipes = {fd for fd, target in fds.items() if target.startswith("pipe:")}
            logs = {fd for fd, target in fds.items() if target.endswith("carecli.log")}
            assert ttys == {0, 1, 2}
            assert len(pipes) == 1  # the token pipe, and no other session's
            assert set(fds) == ttys | pipes | logs, fds  # no socket (the zygote's), nothing else inherited

        # The token pipe closes empty: the app refuses to run, says why on its terminal, and its exit is reported.
        for child, master, write_end in children:
            os.close(write_end)
            opened.remove(write_end)
            code = await asyncio.wait_for(child.wait(), START_TIMEOUT)
            assert code != 0 and child.returncode == code
            assert b"did not carry a session token" in _read_all(master)
    finally:
        for fd in opened:
            os.close(fd)
        await zygote.close()
    assert zygote.process.returncode == 0  # it ended when the host hung up


async def test_a_signal_to_the_process_group_ends_the_forked_app_and_is_reported(
        session_env: dict[str, str]) -> None:
    zygote = await Zygote.start()
    master, slave = pty.openpty()
    read_end, write_end = os.pipe()
    try:
        child = await zygote.spawn(slave, read_end, session_env)
        os.close(slave)
        os.close(read_end)
        os.killpg(child.pid, signal.SIGTERM)
        assert await asyncio.wait_for(child.wait(), START_TIMEOUT) == -signal.SIGTERM
    finally:
        os.close(write_end)
        os.close(master)
        await zygote.close()


# -- through the real host -----------------------------------------------------------------------


def _zygotes() -> list[psutil.Process]:
    me = psutil.Process()
    return [child for child in me.children() if "carecli.ssh.zygote" in child.cmdline()]


async def _until(predicate, timeout: float = START_TIMEOUT):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)
    return value


async def test_sessions_are_forked_from_the_zygote_which_can_die_and_stops_with_the_host(
        world, monkeypatch, ssh_host) -> None:
    for name, value in world.env.items():  # the host (in this process) passes its environment to the apps
        monkeypatch.setenv(name, value)
    first, second = world.user("specialist", 0), world.user("specialist", 1)
    keys = {first.id: new_key(), second.id: new_key()}
    for user in (first, second):
        world.add_key(user, keys[user.id])
    host = ssh_host(app_command=None)
    clients = []
    try:
        clients = [await open_screen(host, keys[first.id]), await open_screen(host, keys[second.id])]
        for client in clients:
            await client.wait_for(WORKLIST, START_TIMEOUT)
        [zygote] = _zygotes()
        apps = zygote.children()
        assert len(apps) == 2
        assert len({app.pid for app in apps}) == 2 and len({os.getpgid(app.pid) for app in apps}) == 2
        assert all(os.getpgid(app.pid) == app.pid for app in apps)

        # The zygote dies: the open sessions go on (their apps are their own processes) ...
        zygote.kill()  # (the host's event loop reaps it, as its child)
        clients[0].keys(F2)
        clients[0].resize(120, 32)
        await clients[0].wait_for(re.compile(r"^.{100,120}$", re.MULTILINE))
        # ... and a new session starts: the host started another zygote.
        clients.append(await open_screen(host, keys[first.id]))
        await clients[2].wait_for(WORKLIST, START_TIMEOUT)
        [replacement] = await _until(lambda: [z for z in _zygotes() if z.pid != zygote.pid])
        assert [app.pid for app in replacement.children()] != []

        clients[2].keys(CTRL_Q)
        assert await clients[2].finished() == 0  # its exit status came from the new zygote: "quit"
        for client in clients[:2]:
            client.keys(CTRL_Q)
            await client.finished()  # (their exit status was lost with the first zygote)
    finally:
        for client in clients:
            await client.close()
    await asyncio.get_running_loop().run_in_executor(None, host.stop)
    assert _zygotes() == []  # stopping the host stopped (and reaped) its zygote
    ends = [row.new_values["reason"] for row in world.audit("ssh_session_end", user=first)]
    assert "quit" in ends and len(ends) == 2


async def test_an_exit_reported_right_after_the_pid_is_not_lost() -> None:
    # The zygote's answer (the pid) and the child's exit can arrive in one read, before the session's
    # task resumes from its wait: the child must be known from the answer on.
    zygote = await Zygote.start()
    try:
        future = asyncio.get_running_loop().create_future()
        zygote._pending[99] = future
        pid = 4_000_000  # above pid_max: no such process
        zygote._dispatch({"id": 99, "pid": pid})
        zygote._dispatch({"pid": pid, "exit": 3})
        _answer, child = await future
        assert child is not None and child.pid == pid
        assert await asyncio.wait_for(child.wait(), 1) == 3
    finally:
        await zygote.close()


async def test_a_zygote_that_does_not_answer_is_replaced_and_the_session_starts_the_old_way(
        session_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from carecli.ssh import zygote as zygote_module
    from carecli.ssh.terminal import AppProcess
    from carecli.ssh.zygote import AppLauncher

    monkeypatch.setattr(zygote_module, "SPAWN_TIMEOUT", 1.0)
    launcher = AppLauncher()
    await launcher.start()
    try:
        stuck = launcher.zygote
        assert stuck is not None
        await asyncio.wait_for(stuck.ready, START_TIMEOUT)
        os.kill(stuck.pid, signal.SIGSTOP)  # alive, but answers nothing
        started = time.monotonic()
        app = await AppProcess.start("cc_not_a_real_token", env=session_env, columns=80, rows=24, launcher=launcher)
        try:
            assert time.monotonic() - started < START_TIMEOUT
            assert isinstance(app.process, asyncio.subprocess.Process)  # exec'd: `python -m carecli app`
            assert b"app" in Path(f"/proc/{app.process.pid}/cmdline").read_bytes().split(b"\0")
        finally:
            await app.stop(grace=5)
            app.close()
        assert not stuck.alive  # the host gave up on it ...
        replacement = await _until(lambda: launcher.zygote)
        assert replacement.pid != stuck.pid  # ... and started another one
        await asyncio.wait_for(replacement.ready, START_TIMEOUT)
    finally:
        await launcher.close()

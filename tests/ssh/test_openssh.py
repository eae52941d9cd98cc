"""The SSH host with the OpenSSH client, and ``carecli ssh-session`` (the OpenSSH ForceCommand way in).

* ``carecli serve-ssh`` runs as a real subprocess; the OpenSSH ``ssh`` client,
  typed into a shell in tmux, signs in by key, shows the worklist, and ctrl+q
  brings the shell prompt back under the goodbye text. Without a pty, and with
  an unknown key, plain ``ssh`` runs get the host's refusals.
* ``carecli ssh-session --key ID`` runs in tmux the way sshd would start it
  (there is no sshd here: the test sets ``SSH_CONNECTION``), and is refused
  with a command, without a terminal, and for unknown or revoked key ids.

Skipped where tmux or ssh is missing.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from carecli.errors import EXIT_AUTH, EXIT_USAGE
from carecli.services.auth.ssh_keys import revoke_ssh_key
from tests.ssh.conftest import GOODBYE_QUIT, START_TIMEOUT, WORKLIST, free_port, new_key, write_launcher

SSH = shutil.which("ssh")
needs_ssh = pytest.mark.skipif(SSH is None, reason="the OpenSSH client (ssh) is not installed")
CLIENT = "198.51.100.23"
SSH_CONNECTION = f"{CLIENT} 40022 10.0.0.5 22"
PROMPT = "host-shell$ "


@pytest.fixture(scope="module")
def serve_ssh(world, tmp_path_factory) -> Iterator[int]:
    """``carecli serve-ssh`` as a subprocess on a free port; its port."""
    if SSH is None:
        pytest.skip("the OpenSSH client (ssh) is not installed")
    directory = tmp_path_factory.mktemp("serve-ssh")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "carecli", "serve-ssh", "--port", str(port), "--host-key", str(directory / "hk"),
         "--max-per-user", "2"],
        env={**os.environ, **world.env}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        said: list[str] = []
        assert process.stderr is not None
        deadline = time.monotonic() + START_TIMEOUT
        while not any("carecli SSH host listening on 127.0.0.1:" in line for line in said):
            ready, _, _ = select.select([process.stderr], [], [], max(0.0, deadline - time.monotonic()))
            line = process.stderr.readline() if ready else ""
            if not line:  # silent too long, or it exited
                process.kill()
                pytest.fail(f"carecli serve-ssh did not start listening: {said} {process.communicate()}")
            said.append(line)  # (as root it warns first: run the host as an unprivileged account)
        assert (directory / "hk").stat().st_mode & 0o777 == 0o600
        yield port
    finally:
        process.terminate()  # SIGTERM: the host ends its sessions and stops
        assert process.wait(timeout=30) == 0


def _private_key_file(directory: Path, key) -> Path:
    path = directory / f"id_{key.get_fingerprint('md5')[4:12].replace(':', '')}"
    path.write_bytes(key.export_private_key("openssh"))
    path.chmod(0o600)
    return path


def _ssh_command(port: int, key_file: Path, *extra: str) -> list[str]:
    return [SSH or "ssh", "-F", "/dev/null", "-p", str(port), "-i", str(key_file), "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "BatchMode=yes", *extra, "specialist@127.0.0.1"]


@needs_ssh
def test_the_openssh_client_signs_in_sees_the_worklist_and_quits_to_the_shell(
        world, serve_ssh, terminal, tmp_path) -> None:
    user = world.user("specialist", 0)
    key = new_key()
    world.add_key(user, key)
    command = " ".join(shlex.quote(part) for part in _ssh_command(serve_ssh, _private_key_file(tmp_path, key), "-t"))
    terminal.start(f"env PS1={shlex.quote(PROMPT)} HOME={shlex.quote(str(tmp_path))} sh -i")
    terminal.wait_for_text(PROMPT.strip())
    terminal.type(f'{command}; echo "ssh-exit=$?"')
    terminal.keys("Enter")
    terminal.wait_for_text(WORKLIST, START_TIMEOUT)
    terminal.wait_for_text("plans:")
    terminal.keys("C-q")
    terminal.wait_for_text("ssh-exit=0")
    screen = terminal.capture().text
    assert GOODBYE_QUIT in screen
    after = screen[screen.index(GOODBYE_QUIT):]
    assert re.search(rf"ssh-exit=0\n{re.escape(PROMPT.strip())}", after), after  # the prompt is back
    assert "Today (" not in after  # the app's screen is gone: the alternate screen was left

    [end] = world.wait_for_audit("ssh_session_end", user=user)
    assert end.new_values["reason"] == "quit"
    [session] = world.rows("identity", "SELECT * FROM sessions WHERE user_id = :u", u=user.id)
    assert "OpenSSH" in session.user_agent and session.user_agent.startswith("carecli/")
    assert session.deleted_at is not None


@needs_ssh
def test_openssh_without_a_terminal_or_with_an_unknown_key_is_refused(world, serve_ssh, tmp_path) -> None:
    user = world.user("specialist", 1)
    key = new_key()
    world.add_key(user, key)
    no_pty = subprocess.run(_ssh_command(serve_ssh, _private_key_file(tmp_path, key), "-T"), capture_output=True,
                            text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert no_pty.returncode == EXIT_USAGE
    assert "carecli needs a terminal" in no_pty.stdout
    command = subprocess.run([*_ssh_command(serve_ssh, _private_key_file(tmp_path, key)), "cat", "/etc/passwd"],
                             capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert command.returncode != 0 and "root:" not in command.stdout

    stranger = new_key()
    unknown = subprocess.run(_ssh_command(serve_ssh, _private_key_file(tmp_path, stranger), "-T"),
                             capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert unknown.returncode == 255
    assert "Permission denied (publickey)" in unknown.stderr
    [refused] = world.audit("auth_refused", fingerprint=stranger.get_fingerprint("sha256"))
    assert refused.new_values["reason"] == "unknown_key" and str(refused.ip_address) == "127.0.0.1"


# -- carecli ssh-session: the OpenSSH ForceCommand -------------------------------------------------


def test_ssh_session_runs_the_app_for_the_keys_user(world, terminal, tmp_path) -> None:
    user = world.user("specialist", 2)
    info = world.add_key(user, new_key())
    rc_file = tmp_path / "rc"
    launcher = write_launcher(tmp_path / "ssh-session.sh", {**world.env, "SSH_CONNECTION": SSH_CONNECTION},
                              [sys.executable, "-m", "carecli", "ssh-session", "--key", str(info.id)])
    terminal.start(f"sh {shlex.quote(str(launcher))}; echo $? > {shlex.quote(str(rc_file))}; sleep 30")
    terminal.wait_for_text(WORKLIST, START_TIMEOUT)
    terminal.keys("C-q")
    terminal.wait_for_text(GOODBYE_QUIT)
    deadline = time.monotonic() + 30
    while not rc_file.exists() or not rc_file.read_text().strip():
        assert time.monotonic() < deadline, "ssh-session did not exit"
        time.sleep(0.1)
    assert rc_file.read_text().strip() == "0"

    [start] = world.audit("ssh_session_start", user=user)
    assert str(start.ip_address) == CLIENT
    assert start.new_values["via"] == "openssh" and start.new_values["key_id"] == str(info.id)
    [end] = world.audit("ssh_session_end", user=user)
    assert end.new_values["reason"] == "quit" and str(end.ip_address) == CLIENT
    [session] = world.rows("identity", "SELECT * FROM sessions WHERE user_id = :u", u=user.id)
    assert str(session.ip_address) == CLIENT and "(ssh" in session.user_agent
    assert session.deleted_at is not None


def test_ssh_session_refuses_a_command_and_a_missing_terminal(world) -> None:
    user = world.user("specialist", 3)
    info = world.add_key(user, new_key())
    command = world.cli("ssh-session", "--key", str(info.id), SSH_CONNECTION=SSH_CONNECTION,
                        SSH_ORIGINAL_COMMAND="scp -f /etc/passwd")
    assert command.code == EXIT_USAGE and "runs no commands over SSH" in command.err
    no_tty = world.cli("ssh-session", "--key", str(info.id), SSH_CONNECTION=SSH_CONNECTION)
    assert no_tty.code == EXIT_USAGE and "needs a terminal" in no_tty.err
    outside = world.cli("ssh-session", "--key", str(info.id))
    assert outside.code == EXIT_USAGE and "SSH_CONNECTION is not set" in outside.err
    assert world.audit("ssh_session_start", user=user) == []


def _on_a_pty(world, *args: str, timeout: float = 60) -> tuple[int, str]:
    """``carecli ARGS`` with a pty as its terminal (as sshd gives it); exit code and everything it printed."""
    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "carecli", *args], stdin=slave, stdout=slave, stderr=slave,
                               env={**os.environ, **world.env, "SSH_CONNECTION": SSH_CONNECTION}, close_fds=True)
    os.close(slave)
    output = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(master)
    try:
        return process.wait(timeout=10), output.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        process.kill()  # it did not refuse: it went on to run the app
        process.wait()
        raise AssertionError(f"carecli {' '.join(args)} kept running; it printed:\n{output[-400:]!r}") from None


def test_ssh_session_refuses_unknown_and_revoked_key_ids_even_when_the_key_was_added_again(world) -> None:
    first, second = world.user("specialist", 4), world.user("specialist", 5)
    unknown_id = "00000000-0000-4000-8000-00000000abcd"
    code, output = _on_a_pty(world, "ssh-session", "--key", unknown_id)
    assert code == EXIT_AUTH and "not (or no longer) allowed in" in output
    [refused] = world.audit("auth_refused", reason="unknown_key", via="openssh")
    assert str(refused.entity_id) == unknown_id and str(refused.ip_address) == CLIENT

    # The key was first the first user's, revoked, then registered for the second user: a stale
    # authorized_keys line naming the old key id must not sign anyone in.
    key = new_key()
    old = world.add_key(first, key)
    revoke_ssh_key(world.databases, world.actor(world.user("admin")), old.id)
    world.add_key(second, key)
    code, output = _on_a_pty(world, "ssh-session", "--key", str(old.id))
    assert code == EXIT_AUTH and "not (or no longer) allowed in" in output
    [refused] = world.audit("auth_refused", reason="key_revoked", via="openssh")
    assert refused.new_values["fingerprint"] == key.get_fingerprint("sha256")
    assert world.audit("ssh_session_start", user=first) == [] and world.audit("ssh_session_start", user=second) == []


def test_serve_ssh_refuses_a_busy_port_and_a_host_key_others_can_read(world, tmp_path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = world.cli("serve-ssh", "--port", str(busy.getsockname()[1]), "--host-key", str(tmp_path / "hk"),
                          timeout=60)
    assert taken.code == EXIT_USAGE and "cannot listen on 127.0.0.1:" in taken.err and "Traceback" not in taken.err
    shared = tmp_path / "shared-key"
    shared.write_bytes(new_key().export_private_key("openssh"))
    shared.chmod(0o644)
    readable = world.cli("serve-ssh", "--port", str(free_port()), "--host-key", str(shared), timeout=60)
    assert readable.code == EXIT_USAGE and "readable by other users" in readable.err and "chmod 600" in readable.err
    bad = world.cli("serve-ssh", "--port", "0")
    assert bad.code == EXIT_USAGE and "--port" in bad.err

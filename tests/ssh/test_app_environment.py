"""What a session's app process inherits from the SSH host's own environment (no host or database needed)."""

from __future__ import annotations

from carecli.ssh.terminal import app_environment


def test_the_clients_terminal_not_the_hosts_decides_size_and_developer_switches_stay_off() -> None:
    host = {"CARECLI_IDENTITY_URL": "postgresql+psycopg://db/identity", "PATH": "/usr/bin",
            # a host started from a shell that exports its size: every session would be pinned to 80x24
            "COLUMNS": "80", "LINES": "24",
            # Textual's developer switches: a log of every key, timed screenshots, a devtools connection
            "TEXTUAL": "devtools,debug", "TEXTUAL_LOG": "/tmp/keys.log", "TEXTUAL_SCREENSHOT": "2",
            "LC_ALL": "C", "CARECLI_TOKEN": "cc_secret"}
    env = app_environment(host, term="xterm-256color", client_colorterm=None, ssh_connection="127.0.0.1 5 127.0.0.1 22")
    assert env["CARECLI_IDENTITY_URL"] == host["CARECLI_IDENTITY_URL"] and env["PATH"] == "/usr/bin"
    dropped = {"COLUMNS", "LINES", "TEXTUAL", "TEXTUAL_LOG", "TEXTUAL_SCREENSHOT", "LC_ALL", "CARECLI_TOKEN"}
    assert not dropped & set(env)
    assert env["TERM"] == "xterm-256color" and env["LANG"] == "C.UTF-8"


def test_an_ssh_sessions_text_cursors_do_not_blink() -> None:
    """Each blink is a frame to render, encrypt, send and draw: over SSH the cursor stays lit instead."""
    import subprocess
    import sys

    probe = ("from textual.widgets import Input, TextArea\n"
             "assert Input().cursor_blink and TextArea().cursor_blink\n"
             "from carecli.cli.app_cmd import steady_cursors\n"
             "steady_cursors()\n"
             "assert not Input().cursor_blink and not TextArea().cursor_blink\n")
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)

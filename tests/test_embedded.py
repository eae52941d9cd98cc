"""With no URL configured, carecli runs (and shares) its own PostgreSQL in the data dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carecli.data.migrate import head_revision
from tests.cli import run_carecli

pytestmark = pytest.mark.slow


def _server_running(pgdata: Path) -> bool:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().splitlines()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_stopped(pgdata: Path, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _server_running(pgdata):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "carecli-data"


def test_embedded_server_is_created_migrated_shared_and_stopped(data_dir):
    env = {"CARECLI_DATA_DIR": str(data_dir)}
    pgdata = data_dir / "postgres"

    first = run_carecli("db", "upgrade", env=env)
    assert first.code == 0, first.err
    assert f"identity: empty -> {head_revision('identity')}" in first.out
    assert (pgdata / "PG_VERSION").read_text().strip() == "18"
    # The last process to leave stops the server.
    assert _wait_stopped(pgdata)

    # Several processes at once join one server and all see the migrated schema.
    full_env = dict(os.environ, **env)
    procs = [subprocess.Popen([sys.executable, "-m", "carecli", "db", "check"], env=full_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(proc.communicate(timeout=120), proc.returncode) for proc in procs]
    for (out, err), code in results:
        assert code == 0, err
        assert "identity: up to date" in out and "platform: up to date" in out
    assert _wait_stopped(pgdata)


def test_a_killed_holder_does_not_keep_the_server_alive(data_dir):
    env = {"CARECLI_DATA_DIR": str(data_dir)}
    assert run_carecli("db", "upgrade", env=env).code == 0
    pgdata = data_dir / "postgres"
    # A carecli that died with kill -9 leaves its pid in pgserver's holder list.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (pgdata / ".handle_pids.json").write_text(json.dumps([dead.pid]))
    result = run_carecli("db", "check", env=env)
    assert result.code == 0, result.err
    assert _wait_stopped(pgdata)


def test_first_use_migrates_the_embedded_databases(data_dir):
    """Any command that works with data brings a new embedded server to head by itself."""
    env = {"CARECLI_DATA_DIR": str(data_dir)}
    result = run_carecli("seed", "--members", "50", "--seed", "1", env=env)
    assert result.code == 0, result.err
    assert "members" in result.out
    check = run_carecli("db", "check", env=env)
    assert check.code == 0, check.err
    again = run_carecli("seed", "--members", "50", "--if-empty", env=env)
    assert again.code == 0, again.err
    assert "nothing seeded" in again.out


def test_db_psql_stops_the_embedded_server_it_started(data_dir):
    """psql runs as a child: when it ends, carecli ends like any command and the server it started stops."""
    env = {"CARECLI_DATA_DIR": str(data_dir)}
    pgdata = data_dir / "postgres"
    full_env = dict(os.environ, **env)
    proc = subprocess.run([sys.executable, "-m", "carecli", "db", "psql", "--db", "identity"], env=full_env,
                          input="SELECT 'ran:' || current_database();\n", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ran:carecli_identity" in proc.stdout
    assert _wait_stopped(pgdata, seconds=15)
    assert json.loads((pgdata / ".handle_pids.json").read_text() or "[]") == []

    # psql's own failure is carecli's exit code (and the server still stops).
    failed = subprocess.run([sys.executable, "-m", "carecli", "db", "psql"], env=full_env,
                            input="\\set ON_ERROR_STOP on\nSELECT * FROM no_such_table;\n", capture_output=True,
                            text=True, timeout=120)
    assert failed.returncode == 3, failed.stderr
    assert _wait_stopped(pgdata, seconds=15)


def test_a_start_that_pg_ctl_gave_up_on_joins_the_server_once_it_is_ready(data_dir, monkeypatch):
    """pgserver gives `pg_ctl -w start` 10 s; on a loaded machine the server is ready a moment later. The
    first attempt is made to give up as pg_ctl did (its server left starting), the second joins it."""
    from carecli.data import embedded

    pgserver = embedded._pgserver()
    real_get_server = pgserver.get_server
    calls = []

    def slow_first(pgdata, **kwargs):
        calls.append(pgdata)
        server = real_get_server(pgdata, **kwargs)
        if len(calls) == 1:  # the server runs, but this start "timed out"
            raise subprocess.TimeoutExpired("pg_ctl", 10)
        return server

    monkeypatch.setattr(pgserver, "get_server", slow_first)
    server = embedded.EmbeddedServer(data_dir).start()
    try:
        assert len(calls) == 2 and _server_running(data_dir / "postgres")
    finally:
        server._server.cleanup()  # what the process's exit does: the last holder stops it
    assert _wait_stopped(data_dir / "postgres")


_HOLDER = ("import sys\n"
           "from pathlib import Path\n"
           "from carecli.data.embedded import EmbeddedServer\n"
           "EmbeddedServer(Path(sys.argv[1])).start()\n"
           "print('up', flush=True)\n"
           "sys.stdin.read()\n")
_WHOAMI = ("import io, json, sys, contextlib\n"
           "import carecli.cli.main as m\n"
           "out = io.StringIO()\n"
           "with contextlib.redirect_stdout(out):\n"
           "    try:\n"
           "        m.main(['whoami'])\n"
           "    except SystemExit as exc:\n"
           "        code = exc.code\n"
           "print(json.dumps([code, 'sqlalchemy' in sys.modules, out.getvalue()]))\n")


def test_whoami_on_a_running_embedded_server_answers_without_loading_sqlalchemy(data_dir, tmp_path):
    """The quick path: a server someone else keeps running, a live session: psycopg alone answers, as the full
    check would; with the server stopped, the full check starts it and answers the same."""
    env = {"CARECLI_DATA_DIR": str(data_dir), "XDG_STATE_HOME": str(tmp_path / "state"),
           "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    assert run_carecli("seed", "--members", "5", "--seed", "42", env=env).code == 0
    signed = run_carecli("login", "--user", "jeremy.rossi@example.org", env=env)
    assert signed.code == 0, signed.err
    full_env = {key: value for key, value in os.environ.items()
                if key not in ("CARECLI_IDENTITY_URL", "CARECLI_PLATFORM_URL")} | env
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(data_dir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=full_env)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        done = subprocess.run([sys.executable, "-c", _WHOAMI], capture_output=True, text=True, env=full_env,
                              timeout=60, check=True)
        code, loaded, quick = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
    assert code == 0, done.stderr
    assert not loaded
    assert "user:         jeremy.rossi@example.org (Jeremy Rossi)\n" in quick and "role:         admin\n" in quick
    assert _wait_stopped(data_dir / "postgres")  # the quick path held nothing
    full = run_carecli("whoami", env=env)  # no server running: the full check starts it
    assert full.code == 0, full.err

    def shown(text: str) -> list[str]:  # the idle deadline moved on between the two
        return [line.split(", idle deadline")[0] for line in text.splitlines()]

    assert shown(full.out) == shown(quick)

"""``carecli login`` end to end, as a person runs it.

* The local demo sign-in on the embedded database (``--user EMAIL``), after
  ``carecli seed`` has created users.
* The OIDC device flow on real database URLs: the CLI runs in a subprocess
  and polls the test provider, while this test (the "person with a browser")
  reads the code the CLI shows and approves or denies it at the provider.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from carecli.data.embedded import EmbeddedServer
from carecli.errors import EXIT_AUTH, EXIT_USAGE
from tests.cli import Result, run_carecli
from tests.support.sites import Site

# -- local demo sign-in on the embedded server -------------------------------------------------


def _psql(env: dict[str, str], database: str, statement: str) -> list[list[str]]:
    """Rows from the embedded server through `carecli db psql` (unaligned, no headers)."""
    proc = subprocess.run([sys.executable, "-m", "carecli", "db", "psql", "--db", database],
                          input=f"\\pset format unaligned\n\\pset tuples_only on\n{statement};\n",
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line and not line.startswith(("Output format", "Tuples"))]
    return [line.split("|") for line in lines]


@pytest.mark.slow
def test_demo_sign_in_on_the_embedded_database(tmp_path: Path) -> None:
    env = {"CARECLI_DATA_DIR": str(tmp_path / "data"), "XDG_STATE_HOME": str(tmp_path / "state"),
           "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}

    def cli(*args: str) -> Result:
        return run_carecli(*args, env=env)

    seeded = cli("seed", "--members", "20", "--seed", "7")  # the first command creates the server
    assert seeded.code == 0, seeded.err
    # From here on this test holds the server too, as a second carecli process would: each command below
    # joins it instead of starting and stopping it (its own lifetime is tests/test_embedded.py's subject).
    held = EmbeddedServer(tmp_path / "data").start()
    try:
        _signs_in_and_out(cli, env, tmp_path)
    finally:
        held._server.cleanup()


def _signs_in_and_out(cli: Callable[..., Result], env: dict[str, str], tmp_path: Path) -> None:
    users = _psql(env, "identity", "SELECT u.email, r.name FROM users u JOIN roles r ON r.id = u.role_id "
                  "WHERE u.is_active ORDER BY u.email")
    admin = next(email for email, role in users if role == "admin")
    specialist = next(email for email, role in users if role == "specialist")

    assert cli("whoami").code == EXIT_AUTH
    no_choice = cli("login")  # stdin is not a terminal: no list to pick from
    assert no_choice.code == EXIT_USAGE and "--user EMAIL" in no_choice.err

    signed = cli("login", "--user", admin.upper())  # e-mail matched case-insensitively
    assert signed.code == 0, signed.err
    assert f"signed in as {admin}" in signed.out and " as admin" in signed.out
    match = re.search(r"session kept in the file (\S+) \(mode 0600\)", signed.out)
    assert match, signed.out
    session_file = Path(match.group(1))
    assert session_file.is_relative_to(tmp_path / "state")
    assert stat.S_IMODE(session_file.stat().st_mode) == 0o600

    me = cli("whoami")
    assert me.code == 0, me.err
    assert admin in me.out and "role:         admin" in me.out and "users:admin" in me.out
    assert f"session kept in the file {session_file} (mode 0600)" in me.out

    raw = session_file.read_text().strip()
    stored = _psql(env, "identity", "SELECT session_token, host(ip_address), user_agent FROM sessions "
                   "WHERE deleted_at IS NULL")
    assert stored == [[hashlib.sha256(raw.encode()).hexdigest(), "", stored[0][2]]]
    assert stored[0][2].endswith("(cli)")
    scans = {"identity": "SELECT t::text FROM sessions t UNION ALL SELECT t::text FROM users t "
                         "UNION ALL SELECT t::text FROM tokens t",
             "platform": "SELECT t::text FROM audit_logs t UNION ALL SELECT t::text FROM metadata t"}
    everything = "\n".join("|".join(row) for db, query in scans.items() for row in _psql(env, db, query))
    assert stored[0][0] in everything  # the scan does reach the sessions table
    assert raw not in everything
    logins = _psql(env, "platform", "SELECT count(*) FROM audit_logs WHERE action = 'login'")
    assert logins == [["1"]]

    out = cli("logout")
    assert out.code == 0 and "session was ended" in out.out
    assert not session_file.exists()
    assert cli("whoami").code == EXIT_AUTH

    unknown = cli("login", "--user", "nobody@example.org")
    assert unknown.code == EXIT_AUTH and "no user with the e-mail address nobody@example.org" in unknown.err
    _psql(env, "identity", f"UPDATE users SET is_active = false WHERE email = '{specialist}'")
    inactive = cli("login", "--user", specialist)
    assert inactive.code == EXIT_AUTH and "deactivated, so it cannot sign in" in inactive.err
    reasons = _psql(env, "platform", "SELECT new_values->>'reason' FROM audit_logs WHERE action = 'login_refused' "
                    "ORDER BY created_at")
    assert reasons == [["unknown_user"], ["user_inactive"]]
    assert cli("whoami").code == EXIT_AUTH


# -- OIDC device flow, CLI in a subprocess ------------------------------------------------------


def _start_login(site: Site, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Start `carecli login` and read the user code it shows (on stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "carecli", "login", *args], env={**os.environ, **site.env},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    shown: list[str] = []
    while True:
        line = proc.stderr.readline()
        if not line:
            out, err = proc.communicate(timeout=30)
            pytest.fail(f"carecli login ended before showing a code: {''.join(shown)}{err}")
        shown.append(line)
        match = re.search(r"confirm the code (\S+)", line)
        if match:
            assert any(site.provider.issuer + "/activate" in seen for seen in shown)
            return proc, match.group(1)


def _finish(proc: subprocess.Popen[str]) -> Result:
    out, err = proc.communicate(timeout=60)
    return Result(proc.returncode, out, err)


def test_oidc_device_login_end_to_end(site: Site) -> None:
    user = site.user("supervisor")
    proc, code = _start_login(site)
    site.provider.approve(code, user.external_user_id, email=user.email, name="Sam Rivera")
    result = _finish(proc)
    assert result.code == 0, result.err
    assert f"signed in as {user.email} (Sam Rivera) as supervisor" in result.out
    assert "Traceback" not in result.err

    # The provider saw the device flow with our client and audience, and its keys were fetched.
    form = site.provider.device_requests[-1]
    assert form["client_id"] == site.provider.client_id and form["audience"] == site.provider.audience
    assert "/jwks" in site.provider.requests

    me = site.cli("whoami")
    assert me.code == 0, me.err
    assert user.email in me.out and "role:         supervisor" in me.out
    session = site.sql("identity", "SELECT user_id, user_agent FROM sessions WHERE deleted_at IS NULL")
    assert [(s.user_id, s.user_agent.endswith("(cli)")) for s in session] == [(user.id, True)]
    assert site.audit("login")[0].user_id == user.id
    raw = site.store().load()
    assert raw is not None and raw not in site.all_text()


def test_oidc_login_against_an_rfc8707_provider(site: Site) -> None:
    """A provider that reads RFC 8707 ``resource`` and ignores Auth0's ``audience``: sign-in works, and an
    audience it does not know exits 4 with a hint naming CARECLI_OIDC_AUDIENCE."""
    site.provider.resource_indicators = True
    user = site.user()
    proc, code = _start_login(site)
    site.provider.approve(code, user.external_user_id, email=user.email)
    result = _finish(proc)
    assert result.code == 0, result.err
    assert f"signed in as {user.email}" in result.out
    assert site.provider.device_requests[-1]["resource"] == site.provider.audience

    unknown = site.cli("login", CARECLI_OIDC_AUDIENCE="https://other-api.example.test")
    assert unknown.code == EXIT_AUTH, unknown.err
    assert "invalid_target" in unknown.err and "hint:" in unknown.err and "CARECLI_OIDC_AUDIENCE" in unknown.err
    assert "CARECLI_OIDC_CLIENT_ID" not in unknown.err and "Traceback" not in unknown.err


def test_oidc_login_denied_or_unknown_exits_4(site: Site) -> None:
    user = site.user()
    proc, code = _start_login(site)
    site.provider.deny(code)
    denied = _finish(proc)
    assert denied.code == EXIT_AUTH and "declined" in denied.err

    proc, code = _start_login(site)
    site.provider.approve(code, "auth0|stranger", email="stranger@example.org")
    stranger = _finish(proc)
    assert stranger.code == EXIT_AUTH
    assert "(stranger@example.org), but no carecli user has that identity" in stranger.err

    site.sql("identity", "UPDATE users SET deleted_at = now() WHERE id = :id", id=user.id)
    proc, code = _start_login(site)
    site.provider.approve(code, user.external_user_id, email=user.email)
    removed = _finish(proc)
    assert removed.code == EXIT_AUTH and "was removed" in removed.err

    reasons = [r.new_values["reason"] for r in site.audit("login_refused")]
    assert reasons == ["LoginDenied", "unknown_user", "user_deleted"]
    assert site.sql("identity", "SELECT count(*) FROM sessions")[0][0] == 0
    assert site.cli("whoami").code == EXIT_AUTH


def test_oidc_installation_refuses_the_demo_picker(site: Site) -> None:
    out = site.cli("login", "--user", "someone@example.org")
    assert out.code == EXIT_USAGE and "--user is for the local demo sign-in" in out.err


def test_issuer_without_client_id_is_a_configuration_error(site: Site) -> None:
    out = site.cli("login", CARECLI_OIDC_CLIENT_ID="")
    assert out.code == EXIT_USAGE and "CARECLI_OIDC_CLIENT_ID" in out.err

"""Sessions: OIDC sign-in on real database URLs, idle and absolute limits, logout, deactivation, storage.

Everything talks to real PostgreSQL (fresh migrated databases per test) and
signs in through the real device flow against the test OpenID provider
(tests/oidc_provider.py); time is simulated by moving ``sessions.created_at``
and ``expires_at`` in the database.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.backends.fail import Keyring as FailKeyring

from carecli.config import load_settings
from carecli.data.permissions import DEFAULT_ROLES
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.errors import EXIT_AUTH, EXIT_USAGE, AuthError, ConfigError
from carecli.services.auth.credentials import CredentialStore
from carecli.services.auth.current import resolve_actor
from carecli.services.auth.login import login
from carecli.services.auth.tokens import hash_secret
from tests.cli import run_carecli
from tests.support.sites import Site

SSH_ENV = {"SSH_CONNECTION": "198.51.100.23 40022 10.0.0.5 22"}


# -- a keyring that keeps entries in this process (the installation itself: tests/support/sites.py) ----


class MemoryKeyring(KeyringBackend):
    """A real keyring backend (keyring's plugin API) that keeps entries in this process."""

    priority = 1

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.entries.pop((service, username), None)


def session_row(site: Site, session_id: uuid.UUID) -> Any:
    return site.sql("identity", "SELECT * FROM sessions WHERE id = :id", id=session_id)[0]


# -- sign-in ----------------------------------------------------------------------------


def test_oidc_login_creates_hashed_session_with_ip_and_agent_and_audits(site: Site) -> None:
    user = site.user("supervisor")
    result = site.login(user, environ=SSH_ENV)
    assert result.method == "oidc" and result.user.id == user.id and result.role == "supervisor"

    raw = site.store().load()
    assert raw is not None and len(raw) >= 43  # token_urlsafe(32)
    row = session_row(site, result.session.id)
    assert row.session_token == hash_secret(raw)
    assert str(row.ip_address) == "198.51.100.23"
    assert row.user_agent.startswith("carecli/") and row.user_agent.endswith("(cli)")
    assert row.deleted_at is None
    # Idle deadline 15 minutes on; the absolute end 12 hours after creation.
    assert abs((row.expires_at - row.created_at).total_seconds() - 15 * 60) < 5
    assert result.session.ends_at == row.created_at + timedelta(hours=12)

    last_login = site.sql("identity", "SELECT last_login_at FROM users WHERE id = :id", id=user.id)[0][0]
    assert last_login is not None
    logins = site.audit("login")
    assert [(r.entity_type, r.entity_id, r.user_id, r.ip) for r in logins] == [
        ("user", user.id, user.id, "198.51.100.23")]

    me = site.resolve()
    assert me.via == "session" and me.user.id == user.id
    assert me.actor.permissions == frozenset(DEFAULT_ROLES["supervisor"][1]) and me.actor.scopes is None


def test_login_again_ends_the_previous_session(site: Site) -> None:
    user = site.user()
    first = site.login(user)
    second = site.login(user)
    assert session_row(site, first.session.id).deleted_at is not None
    assert session_row(site, second.session.id).deleted_at is None
    resolved = site.resolve().session
    assert resolved is not None and resolved.id == second.session.id


@pytest.mark.parametrize("state", ["unknown", "inactive", "deleted"])
def test_login_refused_for_unknown_inactive_or_removed_user(site: Site, state: str) -> None:
    if state == "unknown":
        user, subject = None, "auth0|nobody-here"
    else:
        user = site.user()
        subject = user.external_user_id
        column = "is_active = false" if state == "inactive" else "deleted_at = now()"
        site.sql("identity", f"UPDATE users SET {column} WHERE id = :id", id=user.id)
    with pytest.raises(AuthError) as caught:
        site.login(user, subject=subject)
    message = str(caught.value)
    expected = {"unknown": "no carecli user has that identity", "inactive": "deactivated", "deleted": "removed"}
    assert expected[state] in message
    assert caught.value.exit_code == EXIT_AUTH
    refusals = site.audit("login_refused")
    reason = {"unknown": "unknown_user", "inactive": "user_inactive", "deleted": "user_deleted"}[state]
    assert [r.new_values["reason"] for r in refusals] == [reason]
    assert refusals[0].new_values["subject"] == subject and refusals[0].new_values["method"] == "oidc"
    assert refusals[0].entity_id == (user.id if user else uuid.UUID(int=0))
    assert site.sql("identity", "SELECT count(*) FROM sessions")[0][0] == 0
    assert site.store().load() is None


def test_denied_at_the_provider_is_refused_and_audited(site: Site) -> None:
    user = site.user()

    def deny(authorization: Any) -> None:
        site.provider.deny(authorization.user_code)

    with pytest.raises(AuthError) as caught:
        login(site.settings, site.databases, channel="cli", show=deny)
    assert "declined" in str(caught.value)
    assert [r.new_values["reason"] for r in site.audit("login_refused")] == ["LoginDenied"]
    assert site.sql("identity", "SELECT count(*) FROM sessions WHERE user_id = :id", id=user.id)[0][0] == 0


def test_local_sign_in_impossible_on_real_database_urls_without_issuer(site: Site) -> None:
    env = {name: value for name, value in site.env.items() if not name.startswith("CARECLI_OIDC_")}
    with pytest.raises(ConfigError) as caught:
        login(load_settings(env), site.databases, channel="cli", demo_email="x@example.org")
    assert "CARECLI_OIDC_ISSUER" in str(caught.value)
    for args in (("login",), ("login", "--user", "someone@example.org")):
        # CARECLI_OIDC_* set to "" count as unset.
        result = run_carecli(*args, env={**site.env, "CARECLI_OIDC_ISSUER": "", "CARECLI_OIDC_CLIENT_ID": "",
                                         "CARECLI_OIDC_AUDIENCE": ""})
        assert result.code == EXIT_USAGE, result.err
        assert "local sign-in is only for the embedded demo database" in result.err
        assert "CARECLI_OIDC_ISSUER" in result.err and "Traceback" not in result.err


# -- idle timeout and absolute lifetime ---------------------------------------------------


def test_activity_slides_the_idle_deadline(site: Site) -> None:
    result = site.login(site.user())
    site.sql("identity", "UPDATE sessions SET expires_at = (now() AT TIME ZONE 'UTC') + interval '1 minute' "
             "WHERE id = :id", id=result.session.id)
    site.resolve()
    row = session_row(site, result.session.id)
    now = site.sql("identity", "SELECT clock_timestamp() AT TIME ZONE 'UTC'")[0][0]
    assert abs((row.expires_at - now).total_seconds() - 15 * 60) < 5


def test_sliding_never_passes_the_absolute_end(site: Site) -> None:
    result = site.login(site.user())
    # Signed in 11h55m ago: activity now may only extend the session to 12h after sign-in.
    site.sql("identity", "UPDATE sessions SET created_at = (now() AT TIME ZONE 'UTC') - interval '11 hours 55 minutes' "
             "WHERE id = :id", id=result.session.id)
    me = site.resolve()
    row = session_row(site, result.session.id)
    assert row.expires_at == row.created_at + timedelta(hours=12)
    assert me.session is not None
    assert me.session.idle_deadline == row.expires_at


def test_idle_session_is_refused_forgotten_and_audited(site: Site) -> None:
    user = site.user()
    result = site.login(user)
    site.sql("identity", "UPDATE sessions SET expires_at = (now() AT TIME ZONE 'UTC') - interval '1 second' "
             "WHERE id = :id", id=result.session.id)
    with pytest.raises(AuthError) as caught:
        site.resolve()
    assert "expired after 15 minutes without activity" in str(caught.value)
    refusal = site.audit("auth_refused")
    assert [(r.entity_type, r.entity_id, r.new_values["reason"], r.new_values["user_id"]) for r in refusal] == [
        ("session", result.session.id, "idle", str(user.id))]
    assert site.store().load() is None  # forgotten on this machine
    cli = site.cli("whoami")
    assert cli.code == EXIT_AUTH and "not signed in" in cli.err


def test_idle_timeout_follows_the_setting(site: Site) -> None:
    site.env["CARECLI_SESSION_IDLE_MINUTES"] = "5"
    result = site.login(site.user())
    row = session_row(site, result.session.id)
    assert abs((row.expires_at - row.created_at).total_seconds() - 5 * 60) < 5
    site.sql("identity", "UPDATE sessions SET expires_at = (now() AT TIME ZONE 'UTC') - interval '1 second' "
             "WHERE id = :id", id=result.session.id)
    with pytest.raises(AuthError, match="after 5 minutes without activity"):
        site.resolve()


def test_absolute_lifetime_ends_an_active_session(site: Site) -> None:
    result = site.login(site.user())
    # Active a moment ago (idle deadline in the future) but signed in 12h01m ago.
    site.sql("identity", "UPDATE sessions SET created_at = (now() AT TIME ZONE 'UTC') - interval '12 hours 1 minute', "
             "expires_at = (now() AT TIME ZONE 'UTC') + interval '10 minutes' WHERE id = :id", id=result.session.id)
    cli = site.cli("whoami")
    assert cli.code == EXIT_AUTH
    assert "maximum length of 12 hours" in cli.err and "carecli login" in cli.err
    assert [r.new_values["reason"] for r in site.audit("auth_refused")] == ["lifetime"]


# -- deactivation, removal, logout ----------------------------------------------------------


def test_deactivated_user_is_signed_out_at_the_next_command(site: Site) -> None:
    user = site.user()
    site.login(user)
    first = site.cli("whoami")
    assert first.code == 0, first.err
    assert user.email in first.out

    with IdentityUnitOfWork(site.engines.identity, site.engines.platform, site.admin()) as uow:
        uow.users.deactivate(user.id, None)
        uow.commit()

    second = site.cli("whoami")
    assert second.code == EXIT_AUTH, second.err
    assert "session was ended" in second.err and "Traceback" not in second.err
    assert site.store().load() is None
    assert site.audit("auth_refused")[0].new_values["reason"] == "ended"


def test_soft_deleted_or_inactive_user_with_a_live_session_is_refused(site: Site) -> None:
    user = site.user()
    site.login(user)
    # Changed behind carecli's back (another service sharing the database): no revocation happened.
    site.sql("identity", "UPDATE users SET deleted_at = now() AT TIME ZONE 'UTC' WHERE id = :id", id=user.id)
    with pytest.raises(AuthError, match="was removed; you have been signed out"):
        site.resolve()
    assert site.audit("auth_refused")[0].new_values["reason"] == "user_deleted"

    other = site.user()
    site.login(other)
    site.sql("identity", "UPDATE users SET is_active = false WHERE id = :id", id=other.id)
    with pytest.raises(AuthError, match="is deactivated"):
        site.resolve()


def test_logout_ends_the_session_on_the_server(site: Site) -> None:
    user = site.user()
    result = site.login(user)
    raw = site.store().load()
    assert raw is not None

    out = site.cli("logout")
    assert out.code == 0, out.err
    assert "signed out: the session was ended" in out.out
    assert session_row(site, result.session.id).deleted_at is not None
    assert not site.store().path.exists()
    revokes = site.sql("platform", "SELECT user_id FROM audit_logs WHERE entity_type = 'session' "
                       "AND action = 'revoke' AND entity_id = :id", id=result.session.id)
    assert [r.user_id for r in revokes] == [user.id]

    # A copy of the token kept somewhere is worthless now.
    site.store().save(raw)
    again = site.cli("whoami")
    assert again.code == EXIT_AUTH and "session was ended" in again.err
    assert site.cli("logout").out.startswith("not signed in")


def test_logout_works_for_an_expired_session(site: Site) -> None:
    result = site.login(site.user())
    site.sql("identity", "UPDATE sessions SET expires_at = (now() AT TIME ZONE 'UTC') - interval '1 hour' "
             "WHERE id = :id", id=result.session.id)
    out = site.cli("logout")
    assert out.code == 0, out.err
    assert session_row(site, result.session.id).deleted_at is not None


# -- storage ------------------------------------------------------------------------------


def test_whoami_names_the_0600_session_file(site: Site) -> None:
    user = site.user("auditor")
    site.login(user)
    out = site.cli("whoami")
    assert out.code == 0, out.err
    path = site.store().path
    assert path.is_relative_to(site.state_dir / "carecli")
    assert f"session kept in the file {path} (mode 0600)" in out.out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert "role:         auditor" in out.out
    assert "permissions:  audit:read, members:read" in out.out


def test_session_file_readable_by_others_is_refused(site: Site) -> None:
    site.login(site.user())
    os.chmod(site.store().path, 0o644)
    out = site.cli("whoami")
    assert out.code == EXIT_AUTH and "readable by other users" in out.err
    assert site.cli("logout").code == 0  # the way out still works


def test_session_tokens_never_stored_in_plaintext(site: Site) -> None:
    result = site.login(site.user(), environ=SSH_ENV)
    raw = site.store().load()
    assert raw is not None
    dump = site.all_text()
    assert raw not in dump
    assert hash_secret(raw) in dump  # the scan does see the sessions table
    assert str(result.session.id) in dump


def test_keyring_is_used_when_one_works(site: Site) -> None:
    memory = MemoryKeyring()
    keyring.set_keyring(memory)
    site.login(site.user())
    store = site.store()
    assert store.keyring_works and not store.path.exists()
    assert list(memory.entries) == [("carecli", store.account)]
    me = site.resolve()
    assert me.store == f"the OS keyring (service 'carecli', account '{store.account}')"
    store.forget()
    assert memory.entries == {}


def test_a_session_kept_in_the_file_is_read_without_asking_the_keyring(site: Site) -> None:
    """The file exists only while the last save went to it: it is read first, and the keyring (its import and
    its backend's choice, tens of milliseconds of a launch) is not asked at all."""
    site.login(site.user())
    store = site.store()
    assert store.path.exists() and store.load() is not None
    assert "keyring_works" not in vars(store)  # the cached property was never computed
    me = resolve_actor(site.settings, site.databases, channel="cli", store=store)
    assert me.store == f"the file {store.path} (mode 0600)"
    assert "keyring_works" not in vars(store)  # nor for saying where the session is kept
    # In a fresh process, as at a launch: keyring is not even imported.
    probe = ("import sys\n"
             "from carecli.config import load_settings\n"
             "from carecli.services.auth.credentials import CredentialStore\n"
             "store = CredentialStore.for_settings(load_settings())\n"
             "assert store.load() and 'mode 0600' in store.describe()\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'keyring'))")
    env = {key: value for key, value in os.environ.items() if not key.startswith("CARECLI_")}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          env={**env, **site.env})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_the_file_wins_over_an_older_token_left_in_a_keyring_that_came_back(site: Site) -> None:
    """A keyring that failed at a sign-in (so the token went to the file) and works again still holds the
    token before it: the file's, the newer one, is the session."""
    memory = MemoryKeyring()
    keyring.set_keyring(memory)
    site.login(site.user())
    older = site.store().load()
    keyring.set_keyring(FailKeyring())
    site.login(site.user())  # no keyring this time: the file
    newer = site.store().load()
    assert newer is not None and newer != older and site.store().path.exists()
    keyring.set_keyring(memory)  # back, still holding the older token
    store = site.store()
    assert store.keyring_works and memory.entries[("carecli", store.account)] == older
    assert store.load() == newer
    assert site.resolve().store == f"the file {store.path} (mode 0600)"
    site.login(site.user())  # a sign-in with the keyring back: the keyring, and the file is gone
    assert not site.store().path.exists() and site.store().load() == memory.entries[("carecli", store.account)]


def test_sessions_of_two_installations_do_not_collide(site: Site, tmp_path: Path) -> None:
    embedded = load_settings({"CARECLI_DATA_DIR": str(tmp_path / "elsewhere")})
    assert CredentialStore.for_settings(embedded).path != site.store().path
    scope = CredentialStore.for_settings(site.settings).scope
    assert "@" not in scope and scope.endswith(f"/{site.engines.pair.identity}")  # no user name, no password


# -- sessions list / revoke ------------------------------------------------------------------


def test_sessions_list_and_revoke_own_and_others(site: Site) -> None:
    admin = site.user("admin")
    specialist = site.user("specialist")
    theirs = site.login(specialist)
    their_token = site.store().load()
    site.store().forget()  # as if on another machine: the admin's sign-in must not end it
    mine = site.login(admin)

    own = site.cli("sessions", "list")
    assert own.code == 0, own.err
    assert own.out.startswith(f"* {mine.session.id}  active")
    assert str(theirs.session.id) not in own.out

    others = site.cli("sessions", "list", "--user", specialist.email)
    assert others.code == 0 and str(theirs.session.id) in others.out

    revoked = site.cli("sessions", "revoke", str(theirs.session.id))
    assert revoked.code == 0, revoked.err
    assert session_row(site, theirs.session.id).deleted_at is not None

    # The specialist may not look at or end the admin's sessions.
    assert their_token is not None
    site.store().save(their_token)
    assert site.cli("whoami").code == EXIT_AUTH
    site.login(specialist)
    denied = site.cli("sessions", "revoke", str(mine.session.id))
    assert denied.code == 1 and "users:admin" in denied.err
    listed = site.cli("sessions", "list", "--user", admin.email)
    assert listed.code == 1 and "users:admin" in listed.err

    # Ending your own current session signs you out here too.
    me = site.resolve()
    assert me.session is not None
    own_end = site.cli("sessions", "revoke", str(me.session.id))
    assert own_end.code == 0 and "you are signed out" in own_end.out
    assert site.store().load() is None


def test_not_signed_in(site: Site) -> None:
    out = site.cli("whoami")
    assert out.code == EXIT_AUTH
    assert out.err.strip() == "carecli: error: not signed in\n  hint: run `carecli login`"
    assert site.cli("sessions", "revoke", "not-a-uuid").code == EXIT_USAGE


# -- the quick whoami ------------------------------------------------------------------------------------------


def _connect_to(site: Site) -> Any:
    """What carecli.services.auth.quick.check opens: psycopg connections to the site's databases, by name."""
    import psycopg

    def connect(database: str) -> Any:
        engine = site.engines.identity if database == "identity" else site.engines.platform
        return psycopg.connect(engine.url.set(drivername="postgresql").render_as_string(hide_password=False))

    return connect


def _quick(site: Site) -> Any:
    from carecli.services.auth import quick

    store = site.store()
    raw = store.load()
    assert raw is not None
    return quick.check(site.settings, store, raw, _connect_to(site))


@pytest.mark.parametrize("role_state", ["live", "deleted", "none"])
def test_the_quick_whoami_answers_as_the_full_check_and_slides_the_session_as_it_does(site: Site,
                                                                                      role_state: str) -> None:
    user = site.user()
    if role_state == "none":
        site.sql("identity", "UPDATE users SET role_id = NULL WHERE id = :id", id=user.id)
    result = site.login(user)
    if role_state == "deleted":
        site.sql("identity", "UPDATE roles SET deleted_at = now() AT TIME ZONE 'UTC' WHERE id = :id",
                 id=site.roles["specialist"])
    site.sql("identity", "UPDATE sessions SET expires_at = (now() AT TIME ZONE 'UTC') + interval '1 minute' "
             "WHERE id = :id", id=result.session.id)
    quick = _quick(site)
    assert quick is not None
    assert session_row(site, result.session.id).expires_at == quick.idle_deadline  # slid, as every check does
    full = site.resolve()
    assert full.session is not None
    assert (quick.user, quick.role, quick.permissions) == (full.user, full.role, full.actor.permissions)
    assert (quick.session_id, quick.ends_at, quick.store) == (full.session.id, full.session.ends_at, full.store)
    assert abs(full.session.idle_deadline - quick.idle_deadline) < timedelta(seconds=30)
    assert quick.idle_deadline > result.session.idle_deadline - timedelta(minutes=1)
    assert (quick.role is None) == (role_state != "live") and bool(quick.permissions) == (role_state == "live")


REFUSALS = {
    "idle": "UPDATE sessions SET expires_at = (now() AT TIME ZONE 'UTC') - interval '1 second' WHERE id = :session",
    "lifetime": "UPDATE sessions SET created_at = (now() AT TIME ZONE 'UTC') - interval '12 hours 1 minute' "
                "WHERE id = :session",
    "ended": "UPDATE sessions SET deleted_at = now() AT TIME ZONE 'UTC' WHERE id = :session",
    "unknown": "UPDATE sessions SET session_token = 'another' WHERE id = :session",
    "user inactive": "UPDATE users SET is_active = false WHERE id = :user",
    "user removed": "UPDATE users SET deleted_at = now() AT TIME ZONE 'UTC' WHERE id = :user",
    "user missing": "UPDATE sessions SET user_id = NULL WHERE id = :session",
    "identity not at head": "UPDATE alembic_version_identity SET version_num = 'identity_0001'",
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_the_quick_whoami_gives_way_to_the_full_check_on_anything_else_and_writes_nothing(site: Site,
                                                                                          case: str) -> None:
    """Refusals are the full check's to decide, audit and explain: the quick one only says "not me"."""
    user = site.user()
    result = site.login(user)
    site.sql("identity", REFUSALS[case], session=result.session.id, user=user.id)
    before = site.sql("identity", "SELECT id, expires_at FROM sessions ORDER BY id")
    audited = site.sql("platform", "SELECT count(*) FROM audit_logs")
    assert _quick(site) is None
    assert site.sql("identity", "SELECT id, expires_at FROM sessions ORDER BY id") == before
    assert site.sql("platform", "SELECT count(*) FROM audit_logs") == audited


def test_the_quick_whoami_gives_way_when_the_platform_database_is_not_at_head(site: Site) -> None:
    site.login(site.user())
    site.sql("platform", "UPDATE alembic_version_platform SET version_num = 'platform_0001'")
    assert _quick(site) is None


def test_configured_servers_and_api_tokens_always_take_the_full_check(site: Site) -> None:
    from carecli.services.auth.quick import quick_whoami

    site.login(site.user())
    assert not site.settings.embedded
    assert quick_whoami(site.settings) is None  # TLS, pools and roles of configured servers: the full path's
    assert quick_whoami(load_settings({**site.env, "CARECLI_TOKEN": "x"})) is None

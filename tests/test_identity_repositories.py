"""Identity repositories: changes in the identity database, their audit rows in platform's audit_logs."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from carecli.data.actor import Actor
from carecli.data.permissions import ALL_PERMISSIONS, DEFAULT_ROLES
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.errors import PermissionDenied, ValidationError


def _admin() -> Actor:
    return Actor.create(uuid.uuid4(), ALL_PERMISSIONS, channel="cli", role="admin",
                        environ={"SSH_CONNECTION": "203.0.113.9 50000 10.0.0.1 22"})


def _audit(engines, entity_type):
    with engines.platform.connect() as conn:
        return conn.execute(text("SELECT action, user_id, old_values, new_values, host(ip_address) AS ip, user_agent "
                                 "FROM audit_logs WHERE entity_type = :t ORDER BY created_at, id"),
                            {"t": entity_type}).all()


def _make_user(engines, actor, role_name="specialist"):
    with IdentityUnitOfWork(engines.identity, engines.platform, actor) as uow:
        description, permissions = DEFAULT_ROLES[role_name]
        role = uow.roles.create(role_name, permissions, description)
        user = uow.users.create({"external_user_id": f"auth0|{uuid.uuid4().hex}",
                                 "email": f"{uuid.uuid4().hex}@example.org",
                                 "first_name": "Sam", "last_name": "Rivera", "role_id": role.id})
        uow.commit()
    return role, user


def test_create_role_and_user_audited_in_platform(migrated_engines):
    actor = _admin()
    role, user = _make_user(migrated_engines, actor)
    with IdentityUnitOfWork(migrated_engines.identity, migrated_engines.platform, actor) as uow:
        assert uow.users.permissions_of(user) == frozenset(DEFAULT_ROLES["specialist"][1])
        assert uow.roles.by_name("specialist").id == role.id
    role_rows = _audit(migrated_engines, "role")
    user_rows = _audit(migrated_engines, "user")
    assert [r.action for r in role_rows] == ["create"] and [r.action for r in user_rows] == ["create"]
    assert user_rows[0].user_id == actor.user_id
    assert user_rows[0].ip == "203.0.113.9"
    assert user_rows[0].user_agent.startswith("carecli/") and user_rows[0].user_agent.endswith("(cli)")
    assert user_rows[0].new_values["email"] == user.email  # staff e-mail is not member PHI


def test_unknown_permission_is_refused(migrated_engines):
    with IdentityUnitOfWork(migrated_engines.identity, migrated_engines.platform, _admin()) as uow:
        with pytest.raises(ValidationError) as caught:
            uow.roles.create("odd", ["members:read", "members:fly"])
    assert caught.value.field == "permissions" and caught.value.rule == "enum"


def test_duplicate_email_names_the_field(migrated_engines):
    actor = _admin()
    _, user = _make_user(migrated_engines, actor)
    with IdentityUnitOfWork(migrated_engines.identity, migrated_engines.platform, actor) as uow:
        with pytest.raises(ValidationError) as caught:
            uow.users.create({"external_user_id": "auth0|other", "email": user.email})
    assert (caught.value.field, caught.value.rule) == ("email", "unique")


def test_deactivate_revokes_sessions_and_tokens(migrated_engines):
    actor = _admin()
    _, user = _make_user(migrated_engines, actor)
    expires = datetime.utcnow() + timedelta(hours=1)
    with IdentityUnitOfWork(migrated_engines.identity, migrated_engines.platform, actor) as uow:
        session = uow.sessions.create(user.id, "a" * 64, expires, "198.51.100.7", "carecli/0.1.0 (tui)")
        uow.tokens.create(user.id, "api", "b" * 64, expires, ["members:read"])
        uow.commit()
    assert session.ip_address == "198.51.100.7"
    with IdentityUnitOfWork(migrated_engines.identity, migrated_engines.platform, actor) as uow:
        uow.users.deactivate(user.id, user.updated_at)
        uow.commit()
    with IdentityUnitOfWork(migrated_engines.identity, migrated_engines.platform, actor) as uow:
        assert uow.sessions.by_token_hash("a" * 64) is None
        token = uow.tokens.by_hash("b" * 64)
        assert token is not None and token.is_revoked is True
        assert uow.users.get(user.id).is_active is False
    assert [r.action for r in _audit(migrated_engines, "session")] == ["create", "revoke"]
    assert [r.action for r in _audit(migrated_engines, "token")] == ["create", "revoke"]
    # Secrets are reduced to the fact that they were set.
    assert _audit(migrated_engines, "token")[0].new_values["token_hash"] == "[redacted]"
    assert _audit(migrated_engines, "session")[0].new_values["session_token"] == "[redacted]"


def test_non_admin_cannot_manage_users_and_the_denial_is_audited(migrated_engines):
    _, user = _make_user(migrated_engines, _admin())
    specialist = Actor.create(user.id, DEFAULT_ROLES["specialist"][1], channel="tui", role="specialist")
    with IdentityUnitOfWork(migrated_engines.identity, migrated_engines.platform, specialist) as uow:
        with pytest.raises(PermissionDenied, match="specialist may not add users: it needs the 'users:admin'"):
            uow.users.create({"external_user_id": "auth0|x", "email": "x@example.org"})
        # Their own record and their own sessions are fine.
        assert uow.users.get(user.id).email == user.email
        assert uow.sessions.for_user(user.id) == []
        with pytest.raises(PermissionDenied):
            uow.sessions.for_user(uuid.uuid4())
    denials = [r for r in _audit(migrated_engines, "user") if r.action == "deny"]
    assert len(denials) == 1 and denials[0].user_id == user.id
    assert denials[0].new_values == {"operation": "add users", "permission": "users:admin"}


def test_rollback_leaves_neither_change_nor_audit(migrated_engines):
    actor = _admin()
    with IdentityUnitOfWork(migrated_engines.identity, migrated_engines.platform, actor) as uow:
        uow.roles.create("temp", ["members:read"])
        # no commit
    with IdentityUnitOfWork(migrated_engines.identity, migrated_engines.platform, actor) as uow:
        assert [r.name for r in uow.roles.list()] == []
    assert _audit(migrated_engines, "role") == []

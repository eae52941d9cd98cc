"""``carecli users`` and ``carecli roles`` through the real entry point, on real databases."""

from __future__ import annotations

import json
import re
import uuid

from sqlalchemy import text

from carecli.data.permissions import DEFAULT_ROLES
from tests.cli import run_carecli
from tests.support.deployment import (
    ADMIN_EMAIL,
    add_session,
    add_specialist,
    add_user,
    audit_rows,
    issue_token,
    specialist_active,
    user_row,
)


def test_bootstrap_admin_makes_the_default_roles_and_only_works_once(deployment):
    engines = deployment.engines
    with engines.identity.connect() as conn:
        roles = {row.name: sorted(row.permissions) for row in conn.execute(text("SELECT name, permissions FROM roles"))}
    assert roles == {name: sorted(permissions) for name, (_, permissions) in DEFAULT_ROLES.items()}
    admin = user_row(engines, ADMIN_EMAIL)
    assert (admin.first_name, admin.last_name, admin.is_active) == ("Ada", "Admin", True)
    # Audited as carecli itself: no user id, the OS account in the user agent.
    created = [row for row in audit_rows(engines) if row.entity_type in ("role", "user")]
    assert len(created) == len(DEFAULT_ROLES) + 1
    assert all(row.action == "create" and row.user_id is None and "os-user=" in row.user_agent for row in created)

    again = run_carecli("users", "bootstrap-admin", "--email", "second@example.org", "--external-id", "auth0|2",
                        env=deployment.engines.pair.env)
    assert again.code == 1
    assert "an active administrator already exists" in again.err
    assert "Traceback" not in again.err
    with engines.identity.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users")).scalar_one() == 1


def test_add_list_show_and_set_role(deployment):
    user_id = add_user(deployment, "Sam.Rivera@Example.org")
    listed = deployment.run("users", "list")
    assert listed.code == 0, listed.err
    assert "sam.rivera@example.org" in listed.out and "Sam Rivera" in listed.out and "specialist" in listed.out
    assert listed.out.splitlines()[0].split() == ["email", "name", "role", "active", "last", "login", "(UTC)", "id"]

    as_json = json.loads(deployment.run("users", "list", "--json").out)
    assert {u["email"]: u["role"] for u in as_json} == {ADMIN_EMAIL: "admin", "sam.rivera@example.org": "specialist"}

    shown = json.loads(deployment.run("users", "show", "SAM.RIVERA@example.org", "--json").out)
    assert shown["id"] == str(user_id) and shown["role"] == "specialist" and shown["is_active"] is True
    assert shown["permissions"] == sorted(DEFAULT_ROLES["specialist"][1])
    assert shown["specialist"] is None and shown["pending_platform_changes"] == 0
    text_show = deployment.run("users", "show", str(user_id))
    assert text_show.code == 0, text_show.err
    assert "phi:reveal" in text_show.out and re.search(r"^specialist +none$", text_show.out, re.M)

    moved = deployment.run("users", "set-role", "sam.rivera@example.org", "supervisor")
    assert moved.code == 0, moved.err
    assert "now has role supervisor" in moved.out
    same = deployment.run("users", "set-role", "sam.rivera@example.org", "supervisor")
    assert "nothing changed" in same.out

    user_audit = [row for row in audit_rows(deployment.engines, "user") if row.entity_id == user_id]
    assert [row.action for row in user_audit] == ["create", "update"]
    assert all(row.user_id == deployment.admin_id for row in user_audit)
    assert user_audit[0].user_agent.endswith("(cli)")
    assert set(user_audit[1].new_values) == {"role_id"}


def test_roles_create_show_update(deployment):
    created = deployment.run("roles", "create", "reviewer", "--permissions", "members:read, audit:read",
                             "--description", "Reads things")
    assert created.code == 0, created.err
    shown = json.loads(deployment.run("roles", "show", "reviewer", "--json").out)
    assert shown["permissions"] == ["audit:read", "members:read"] and shown["description"] == "Reads things"

    updated = deployment.run("roles", "update", "reviewer", "--permissions", "members:read")
    assert updated.code == 0, updated.err
    described = deployment.run("roles", "update", "reviewer", "--description", "Reads members")
    assert described.code == 0, described.err
    unchanged = deployment.run("roles", "update", "reviewer", "--description", "Reads members")
    assert "nothing changed" in unchanged.out

    listing = deployment.run("roles", "list")
    assert listing.code == 0, listing.err
    line = next(line for line in listing.out.splitlines() if line.startswith("reviewer"))
    assert "members:read" in line and "audit:read" not in line and "Reads members" in line
    role_audit = [row for row in audit_rows(deployment.engines, "role") if row.user_id == deployment.admin_id]
    assert [row.action for row in role_audit] == ["create", "update", "update"]
    assert role_audit[1].new_values == {"permissions": ["members:read"]}


def test_bad_input_is_refused_with_a_clear_message(deployment):
    add_user(deployment, "taken@example.org")
    cases = [
        (("users", "add", "--email", "new@example.org", "--external-id", "x", "--role", "wizard"),
         "there is no role named 'wizard'"),
        (("users", "add", "--email", "TAKEN@example.org", "--external-id", "y", "--role", "specialist"),
         "email: another user already has this e-mail address"),
        (("users", "add", "--email", "not-an-address", "--external-id", "z", "--role", "specialist"), "email"),
        (("roles", "create", "odd", "--permissions", "members:read,members:fly"),
         "permissions: unknown permissions: members:fly"),
        (("roles", "create", "admin", "--permissions", "members:read"), "name: another role"),
        (("roles", "update", "specialist", "--permissions", "calls:write,teleport"), "unknown permissions: teleport"),
        (("users", "show", "nobody@example.org"), "there is no user with the e-mail address nobody@example.org"),
        (("users", "set-role", "taken@example.org", "nope"), "there is no role named 'nope'"),
        (("users", "deactivate", str(uuid.uuid4())), "does not exist"),
    ]
    for args, message in cases:
        result = deployment.run(*args)
        assert result.code == 1, (args, result.out, result.err)
        assert message in result.err, (args, result.err)
        assert "Traceback" not in result.err
    usage = deployment.run("roles", "update", "specialist")
    assert usage.code == 2 and "--permissions and/or --description" in usage.err
    with deployment.engines.identity.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users")).scalar_one() == 2
        assert conn.execute(text("SELECT count(*) FROM roles WHERE name = 'odd'")).scalar_one() == 0


def test_non_admin_is_refused_and_the_refusal_audited(deployment):
    user_id = add_user(deployment, "spec@example.org")
    token = issue_token(deployment.engines, user_id, DEFAULT_ROLES["specialist"][1])
    for args in (("users", "add", "--email", "x@example.org", "--external-id", "x", "--role", "admin"),
                 ("users", "list"),
                 ("users", "deactivate", ADMIN_EMAIL),
                 ("roles", "create", "mine", "--permissions", "users:admin"),
                 ("sync",)):
        result = deployment.run(*args, CARECLI_TOKEN=token)
        assert result.code == 1, (args, result.err)
        assert "specialist may not" in result.err and "'users:admin'" in result.err
    # Reading roles needs no users:admin.
    assert deployment.run("roles", "list", CARECLI_TOKEN=token).code == 0
    denials = [row for row in audit_rows(deployment.engines) if row.action == "deny"]
    assert len(denials) == 5 and all(row.user_id == user_id for row in denials)
    assert {row.new_values["operation"] for row in denials} == {
        "add users", "list users", "deactivate users", "create roles", "read pending platform changes"}
    with deployment.engines.identity.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users")).scalar_one() == 2


def test_not_signed_in_is_an_auth_error(deployment):
    result = run_carecli("users", "list", env=deployment.engines.pair.env)
    assert result.code == 4
    assert "not signed in" in result.err


def test_the_last_admin_cannot_be_removed(deployment):
    for args in (("users", "deactivate", ADMIN_EMAIL),
                 ("users", "set-role", ADMIN_EMAIL, "specialist"),
                 ("roles", "update", "admin", "--permissions", "members:read")):
        result = deployment.run(*args)
        assert result.code == 1, (args, result.err)
        assert "would leave no active user with the 'users:admin' permission" in result.err
    assert user_row(deployment.engines, ADMIN_EMAIL).is_active is True
    # With a second admin, the first may go.
    add_user(deployment, "second.admin@example.org", role="admin")
    result = deployment.run("users", "set-role", ADMIN_EMAIL, "auditor")
    assert result.code == 0, result.err


def test_deactivate_and_reactivate_apply_both_databases_at_once(deployment):
    engines = deployment.engines
    user_id = add_user(deployment, "leaver@example.org")
    specialist_id = add_specialist(engines, user_id)
    session_hash = add_session(engines, user_id)
    their_token = issue_token(engines, user_id, ["members:read"])
    assert deployment.run("roles", "list", CARECLI_TOKEN=their_token).code == 0
    before = len(audit_rows(engines))

    result = deployment.run("users", "deactivate", "leaver@example.org")
    assert result.code == 0, result.err
    assert "revoked 1 session and 1 API token" in result.out
    assert "warning" not in result.err
    assert user_row(engines, "leaver@example.org").is_active is False
    with engines.identity.connect() as conn:
        assert conn.execute(text("SELECT deleted_at FROM sessions WHERE session_token = :h"),
                            {"h": session_hash}).scalar_one() is not None
        assert conn.execute(text("SELECT bool_and(is_revoked) FROM tokens WHERE user_id = :u"),
                            {"u": user_id}).scalar_one() is True
        pending = conn.execute(text("SELECT kind, done_at FROM pending_platform_changes")).all()
    assert specialist_active(engines, specialist_id) is False
    assert [(row.kind, row.done_at is not None) for row in pending] == [("deactivate_specialist", True)]
    new_rows = audit_rows(engines)[before:]
    assert [(row.entity_type, row.action) for row in new_rows] == [
        ("user", "deactivate"), ("session", "revoke"), ("token", "revoke"), ("specialist", "update")]
    assert all(row.user_id == deployment.admin_id for row in new_rows)
    assert new_rows[-1].new_values == {"is_active": False}

    # Their token stops working at once.
    refused = deployment.run("roles", "list", CARECLI_TOKEN=their_token)
    assert refused.code == 4
    again = deployment.run("users", "deactivate", "leaver@example.org")
    assert again.code == 0 and "already inactive" in again.out

    back = deployment.run("users", "reactivate", str(user_id))
    assert back.code == 0, back.err
    assert "reactivated leaver@example.org" in back.out
    assert user_row(engines, "leaver@example.org").is_active is True
    assert specialist_active(engines, specialist_id) is True
    last = audit_rows(engines)[-2:]
    assert [(row.entity_type, row.action, row.new_values) for row in last] == [
        ("user", "update", {"is_active": True}), ("specialist", "update", {"is_active": True})]
    shown = json.loads(deployment.run("users", "show", "leaver@example.org", "--json").out)
    assert shown["specialist"] == {"id": str(specialist_id), "is_active": True}
    assert shown["live_sessions"] == 0 and shown["live_tokens"] == 0

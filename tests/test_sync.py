"""Deactivation while the platform database is unreachable, completed later by ``carecli sync``.

"Unreachable" is real: the platform URL points at a closed port while the
identity database is the real one.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from carecli.config import load_settings
from carecli.data import migrate
from carecli.data.actor import Actor
from carecli.data.databases import Databases, create_database_engine
from carecli.data.permissions import ALL_PERMISSIONS, DEFAULT_ROLES
from carecli.services import users as service
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

CLOSED_PORT_URL = "postgresql+psycopg://postgres@127.0.0.1:1/x"


def _pending(engines):
    with engines.identity.connect() as conn:
        return conn.execute(text("SELECT * FROM pending_platform_changes ORDER BY created_at, id")).all()


@pytest.fixture
def unreachable_platform():
    engine = create_database_engine(make_url(CLOSED_PORT_URL), load_settings({}))
    yield engine
    engine.dispose()


def _admin_actor(deployment) -> Actor:
    return Actor.create(deployment.admin_id, ALL_PERMISSIONS, channel="cli", role="admin",
                        environ={"SSH_CONNECTION": "203.0.113.9 50000 10.0.0.1 22"})


def test_cli_deactivation_deferred_then_completed_by_sync(deployment):
    engines = deployment.engines
    user_id = add_user(deployment, "leaver@example.org")
    specialist_id = add_specialist(engines, user_id)
    add_session(engines, user_id)
    issue_token(engines, user_id, ["members:read"])
    before = len(audit_rows(engines))

    result = deployment.run("users", "deactivate", "leaver@example.org", CARECLI_PLATFORM_URL=CLOSED_PORT_URL)
    assert result.code == 0, result.err
    assert "revoked 1 session and 1 API token" in result.out
    assert "warning: the platform database could not be updated" in result.err
    assert "carecli sync" in result.err and "4 changes (specialist record, audit rows) pending" in result.err
    # The identity side is done: access is cut off now.
    assert user_row(engines, "leaver@example.org").is_active is False
    with engines.identity.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sessions WHERE user_id = :u AND deleted_at IS NULL"),
                            {"u": user_id}).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM tokens WHERE user_id = :u AND is_revoked IS NOT TRUE"),
                            {"u": user_id}).scalar_one() == 0
    # The platform side waits, and says so.
    assert specialist_active(engines, specialist_id) is True
    assert len(audit_rows(engines)) == before
    pending = _pending(engines)
    assert [(row.kind, row.user_id, row.done_at) for row in pending] == [
        ("audit", user_id, None), ("audit", user_id, None), ("audit", user_id, None),
        ("deactivate_specialist", user_id, None)]
    assert [(row.payload["entity_type"], row.payload["action"]) for row in pending[:3]] == [
        ("user", "deactivate"), ("session", "revoke"), ("token", "revoke")]
    shown = deployment.run("users", "show", "leaver@example.org")
    assert "4 platform changes not applied yet" in shown.out

    synced = deployment.run("sync")
    assert synced.code == 0, synced.err
    assert "applied 4 pending platform changes" in synced.out
    assert specialist_active(engines, specialist_id) is False
    rows = audit_rows(engines)[before:]
    assert [(row.entity_type, row.action) for row in rows] == [
        ("user", "deactivate"), ("session", "revoke"), ("token", "revoke"),
        ("specialist", "update"), ("pending_platform_change", "sync")]
    # The deferred rows keep their ids, times and actor from the moment of the change.
    by_id = {row.id: row for row in rows}
    for change in pending[:3]:
        replayed = by_id[uuid.UUID(change.payload["id"])]
        assert replayed.created_at == change.created_at
        assert replayed.user_id == deployment.admin_id and replayed.user_agent.endswith("(cli)")
    assert rows[3].user_id == deployment.admin_id and rows[3].new_values == {"is_active": False}
    assert rows[4].new_values == {"applied": 4, "failed": 0, "remaining": 0}
    assert all(row.done_at is not None for row in _pending(engines))

    again = deployment.run("sync")
    assert again.code == 0 and "nothing to sync" in again.out


def test_sync_while_the_platform_is_still_down_is_a_usage_error(deployment):
    result = deployment.run("sync", CARECLI_PLATFORM_URL=CLOSED_PORT_URL)
    assert result.code == 2
    assert "cannot connect to the platform database" in result.err and "Traceback" not in result.err


def test_a_refusal_while_the_platform_is_down_is_audited_later(deployment):
    engines = deployment.engines
    user_id = add_user(deployment, "spec@example.org")
    token = issue_token(engines, user_id, DEFAULT_ROLES["specialist"][1])
    result = deployment.run("users", "deactivate", ADMIN_EMAIL, CARECLI_PLATFORM_URL=CLOSED_PORT_URL,
                            CARECLI_TOKEN=token)
    assert result.code == 1
    assert "specialist may not deactivate users" in result.err
    assert user_row(engines, ADMIN_EMAIL).is_active is True
    [denial] = _pending(engines)
    assert denial.kind == "audit" and denial.payload["action"] == "deny"
    assert deployment.run("sync").code == 0
    [row] = [row for row in audit_rows(engines) if row.action == "deny"]
    assert row.user_id == user_id and row.new_values == {"operation": "deactivate users", "permission": "users:admin"}


def test_order_is_kept_across_deferred_and_immediate_changes(deployment, unreachable_platform):
    engines = deployment.engines
    actor = _admin_actor(deployment)
    down = Databases(identity=engines.identity, platform=unreachable_platform)
    up = deployment.databases
    user_id = add_user(deployment, "back@example.org")
    specialist_id = add_specialist(engines, user_id)

    deferred = service.deactivate_user(down, actor, "back@example.org")
    assert deferred.deferred and deferred.pending == 2 and deferred.deferral_reason
    # The platform is back: reactivating applies the older deactivation first, then itself.
    back = service.reactivate_user(up, actor, "back@example.org")
    assert back.changed and not back.deferred and back.sync is not None and back.sync.applied == 3
    assert specialist_active(engines, specialist_id) is True

    # Two deferred changes in a row replay in order too.
    service.deactivate_user(down, actor, str(user_id))
    service.reactivate_user(down, actor, str(user_id))
    service.deactivate_user(down, actor, str(user_id))
    result = service.sync_pending(up, actor)
    assert (result.applied, result.failed, result.remaining) == (6, 0, 0)
    assert specialist_active(engines, specialist_id) is False
    assert user_row(engines, "back@example.org").is_active is False
    specialist_updates = [row.new_values for row in audit_rows(engines, "specialist") if row.action == "update"]
    assert specialist_updates == [{"is_active": False}, {"is_active": True}, {"is_active": False},
                                  {"is_active": True}, {"is_active": False}]
    assert all(row.ip_address is not None for row in audit_rows(engines, "user") if row.action != "create")


def test_applying_again_after_a_lost_stamp_changes_nothing(deployment, unreachable_platform):
    engines = deployment.engines
    actor = _admin_actor(deployment)
    user_id = add_user(deployment, "once@example.org")
    add_specialist(engines, user_id)
    add_session(engines, user_id)
    service.deactivate_user(Databases(identity=engines.identity, platform=unreachable_platform), actor, str(user_id))
    first = service.sync_pending(deployment.databases, actor)
    assert first.applied == 3
    after_first = audit_rows(engines)
    # As if each change was applied but the identity commit that stamps it was lost.
    with engines.identity.begin() as conn:
        conn.execute(text("UPDATE pending_platform_changes SET done_at = NULL"))
    second = service.sync_pending(deployment.databases, actor, summarise=False)
    assert (second.applied, second.remaining) == (3, 0)
    assert audit_rows(engines) == after_first


def test_sync_records_failures_and_holds_back_that_users_later_changes(deployment):
    engines = deployment.engines
    stuck = add_user(deployment, "broken@example.org")
    other = add_user(deployment, "fine@example.org")
    specialist_id = add_specialist(engines, other)
    with engines.identity.begin() as conn:
        insert = text("INSERT INTO pending_platform_changes (kind, user_id, payload, created_at) "
                      "VALUES (:k, :u, CAST(:p AS jsonb), now() + make_interval(secs => :s))")
        conn.execute(insert, {"k": "audit", "u": stuck, "p": '{"entity_type": "user"}', "s": 0})  # no entity_id
        conn.execute(insert, {"k": "deactivate_specialist", "u": stuck, "p": '{"actor": {}}', "s": 1})
        conn.execute(insert, {"k": "deactivate_specialist", "u": other, "p": '{"actor": {}}', "s": 2})
    result = deployment.run("sync")
    assert result.code == 1
    assert "applied 1 pending platform change" in result.out
    assert "could not apply" in result.err and "(audit)" in result.err and "2 changes still pending" in result.err
    assert "Traceback" not in result.err
    broken, held, fine = _pending(engines)
    assert (broken.attempts, broken.done_at is None, bool(broken.last_error)) == (1, True, True)
    assert (held.attempts, held.done_at) == (0, None)  # waits: it must not overtake the failed one
    assert fine.done_at is not None and specialist_active(engines, specialist_id) is False


def test_downgrade_is_refused_while_changes_are_owed(deployment, unreachable_platform):
    engines = deployment.engines
    user_id = add_user(deployment, "owed@example.org")
    service.deactivate_user(Databases(identity=engines.identity, platform=unreachable_platform),
                            _admin_actor(deployment), str(user_id))
    with pytest.raises(RuntimeError, match="still pending; run `carecli sync` first"):
        migrate.downgrade(engines.identity, "identity", "identity_0001")
    service.sync_pending(deployment.databases, _admin_actor(deployment))
    migrate.downgrade(engines.identity, "identity", "identity_0001")
    with engines.identity.connect() as conn:
        assert conn.execute(text("SELECT to_regclass('pending_platform_changes')")).scalar_one() is None
    migrate.upgrade(engines.identity, "identity")

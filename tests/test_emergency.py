"""Break the glass: emergency access expires, and its actions carry the marker.

Repository and service behaviour on a real platform database (``platform``),
then ``carecli audit emergencies / emergency / review`` as a real subprocess
signed in through the test identity provider (``site``).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from carecli.data.actor import Actor
from carecli.data.permissions import DEFAULT_ROLES, Permission
from carecli.data.records import Member
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.data.unit_of_work import PlatformUnitOfWork
from carecli.errors import (
    EXIT_AUTH,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CarecliError,
    ConflictError,
    NotFound,
    PermissionDenied,
    ValidationError,
)
from carecli.services.emergency import EmergencyAccess
from tests.platform_fixtures import MEMBER_VALUES, Platform
from tests.support.sites import Site

REASON = "member in crisis on the line, identity check"
# Free text that happens to hold PHI: it must stay in the grant and out of every audit value.
PHI_REASON = f"caller {MEMBER_VALUES['email']} gave SSN 123-45-6789, confirm"
MINUTES = 60


def role_actor(platform: Platform, role: str) -> Actor:
    return platform.actor(*DEFAULT_ROLES[role][1], role=role)


def request(platform: Platform, actor: Actor, member: Member, reason: str = REASON,
            confirmation: str = "emergency", minutes: int = MINUTES) -> Any:
    with platform.uow(actor) as uow:
        grant = uow.emergency.request(member.id, reason, confirmation, minutes=minutes)
        uow.commit()
    return grant


def expire(platform: Platform, grant_id: uuid.UUID) -> None:
    """Move a grant's end into the past, as the database clock sees it."""
    with platform.engine.begin() as connection:
        from sqlalchemy import text

        connection.execute(text(
            "UPDATE metadata SET metadata_value = jsonb_set(metadata_value, '{expires_at}', "
            "to_jsonb(to_char((clock_timestamp() AT TIME ZONE 'UTC') - interval '1 minute', "
            "'YYYY-MM-DD\"T\"HH24:MI:SS.US'))) WHERE id = :id"), {"id": grant_id})


def marked(platform: Platform, grant_id: uuid.UUID) -> list[Any]:
    return platform.sql("SELECT entity_type, entity_id, action, new_values FROM audit_logs "
                        "WHERE new_values ->> 'emergency_access' = :g ORDER BY created_at, id", g=str(grant_id))


def all_audit_text(platform: Platform) -> str:
    return "\n".join(row[0] for row in platform.sql("SELECT a::text FROM audit_logs a"))


def reveal(platform: Platform, actor: Actor, member: Member) -> Any:
    with platform.uow(actor) as uow:
        return uow.members.reveal(member.id, ["ssn", "dob"], "identity check")


def counts(platform: Platform) -> tuple[int, int]:
    return (platform.scalar("SELECT count(*) FROM metadata WHERE starts_with(metadata_key, 'emergency_access:')"),
            platform.audit_count())


# -- asking -----------------------------------------------------------------------------------------


def test_without_phi_reveal_reveal_is_refused_and_the_denial_audited(platform: Platform) -> None:
    member = platform.member()
    auditor = role_actor(platform, "auditor")
    assert auditor.can(Permission.PHI_EMERGENCY) and not auditor.can(Permission.PHI_REVEAL)
    with pytest.raises(PermissionDenied, match="phi:reveal"):
        reveal(platform, auditor, member)
    [deny] = platform.audit(member.id, action="deny")
    assert deny.user_id == auditor.user_id and "emergency_access" not in deny.new_values


@pytest.mark.parametrize("reason, confirmation, field", [
    ("", "EMERGENCY", "reason"), ("too short", "EMERGENCY", "reason"), ("   " + "x" * 5 + "   ", "EMERGENCY", "reason"),
    ("x" * 501, "EMERGENCY", "reason"), (REASON, "", "confirmation"), (REASON, "yes", "confirmation"),
])
def test_a_reason_and_the_typed_confirmation_are_required_and_nothing_is_written(
        platform: Platform, reason: str, confirmation: str, field: str) -> None:
    member = platform.member()
    before = counts(platform)
    with pytest.raises(ValidationError) as caught:
        request(platform, role_actor(platform, "auditor"), member, reason, confirmation)
    assert caught.value.field == field
    assert counts(platform) == before


def test_who_may_break_the_glass(platform: Platform) -> None:
    member = platform.member()
    before = counts(platform)
    # Holding phi:reveal already: no grant needed, refused without writing anything.
    with pytest.raises(CarecliError, match="no emergency access is needed"):
        request(platform, role_actor(platform, "specialist"), member)
    # An API token is not a person in an emergency.
    token = platform.actor(*DEFAULT_ROLES["auditor"][1], role="auditor", scopes=["members:read", "phi:emergency"])
    with pytest.raises(CarecliError, match="not an API token"):
        request(platform, token, member)
    assert counts(platform) == before
    # Without phi:emergency: refused, and the refusal is audited.
    reader = platform.actor(Permission.MEMBERS_READ, role="reader")
    with pytest.raises(PermissionDenied, match="phi:emergency"):
        request(platform, reader, member)
    [deny] = platform.audit(member.id, action="deny")
    assert deny.new_values == {"operation": "break the glass", "permission": "phi:emergency"}
    # A member that does not exist.
    with pytest.raises(NotFound):
        with platform.uow(role_actor(platform, "auditor")) as uow:
            uow.emergency.request(uuid.uuid4(), REASON, "EMERGENCY", minutes=MINUTES)


# -- using ------------------------------------------------------------------------------------------


def test_a_grant_reveals_that_member_only_and_every_action_on_them_carries_the_marker(platform: Platform) -> None:
    member, other = platform.member(), platform.member(email="other@example.org")
    specialist = platform.specialist()
    # The importer role writes calls and notes but has no phi:reveal: a good test of "every action".
    operator = role_actor(platform, "importer")
    grant = request(platform, operator, member, PHI_REASON)
    assert grant.live and grant.member_id == member.id and grant.user_id == operator.user_id
    assert (grant.expires_at - grant.granted_at).total_seconds() == MINUTES * 60
    with pytest.raises(ConflictError, match="already have emergency access"):
        request(platform, operator, member)

    revealed = reveal(platform, operator, member)
    assert revealed.ssn.reveal() == "123456789" and revealed.dob.reveal().isoformat() == "1961-04-02"
    with pytest.raises(PermissionDenied, match="phi:reveal"):
        reveal(platform, operator, other)

    with platform.uow(operator) as uow:
        uow.members.open(member.id)
        call = uow.calls.create({"member_id": member.id, "specialist_id": specialist.id, "call_type": "support",
                                 "call_status": "no_answer", "call_notes": "crisis call"})
        uow.calls.update(call.id, call.updated_at, {"outcome": "referred"})
        uow.metadata.put("member", member.id, "language", "fr")
        uow.members.update(member.id, None, {"city": "Salem"})
        other_call = uow.calls.create({"member_id": other.id, "specialist_id": specialist.id,
                                       "call_type": "support", "call_status": "no_answer"})
        uow.members.open(other.id)
        uow.commit()

    rows = marked(platform, grant.id)
    assert [(r.entity_type, r.action) for r in rows] == [
        ("member", "read"),  # the reveal
        ("member", "read"),  # the open
        ("call_record", "create"), ("call_record", "update"), ("metadata", "create"), ("member", "update")]
    assert all(r.new_values["emergency_access"] == str(grant.id) for r in rows)
    assert rows[0].new_values["purpose"] == "reveal"
    # Nothing about the other member is marked, nor the refused reveal of them.
    assert other_call.id not in {r.entity_id for r in rows} and other.id not in {r.entity_id for r in rows}
    [refused] = platform.audit(other.id, action="deny")
    assert "emergency_access" not in refused.new_values
    # The grant's own row: who, which member, until when; the reason only as "[redacted]".
    [created] = platform.audit(grant.id, entity_type="emergency_access")
    assert created.action == "create" and created.user_id == operator.user_id
    assert created.new_values["member_id"] == str(member.id) and created.new_values["reason"] == "[redacted]"
    assert "emergency_access" not in created.new_values
    # The grant is a metadata row of the member (the Desk leaves it out of the notes it shows).
    with platform.uow() as uow:
        keys = [entry.metadata_key for entry in uow.metadata.for_entity("member", member.id)]
    assert f"emergency_access:{grant.id}" in keys


def test_after_expiry_reveal_is_refused_again_and_nothing_is_marked(platform: Platform) -> None:
    member = platform.member()
    auditor = role_actor(platform, "auditor")
    grant = request(platform, auditor, member)
    reveal(platform, auditor, member)
    assert len(marked(platform, grant.id)) == 1
    expire(platform, grant.id)
    with pytest.raises(PermissionDenied, match="phi:reveal"):
        reveal(platform, auditor, member)
    with platform.uow(auditor) as uow:
        assert uow.emergency.live_grant(member.id) is None
        uow.members.open(member.id)
    assert len(marked(platform, grant.id)) == 1
    deny = platform.audit(member.id, action="deny")[-1]
    assert deny.user_id == auditor.user_id and "emergency_access" not in deny.new_values
    # A new emergency needs a new grant (and a new reason).
    second = request(platform, auditor, member)
    assert second.id != grant.id and reveal(platform, auditor, member).ssn is not None


def test_a_reveal_holder_writes_no_marker(platform: Platform) -> None:
    member = platform.member()
    auditor = role_actor(platform, "auditor")
    grant = request(platform, auditor, member)
    reveal(platform, role_actor(platform, "specialist"), member)
    assert len(marked(platform, grant.id)) == 0


# -- reviewing --------------------------------------------------------------------------------------


def test_the_queue_lists_grants_with_their_action_count_until_reviewed(platform: Platform) -> None:
    member = platform.member()
    auditor, supervisor = role_actor(platform, "auditor"), role_actor(platform, "supervisor")
    grant = request(platform, auditor, member, PHI_REASON)
    reveal(platform, auditor, member)
    with platform.uow(auditor) as uow:
        uow.members.open(member.id)
    expire(platform, grant.id)

    with platform.uow(supervisor) as uow:
        [queued] = uow.emergency.queue()
        assert (queued.id, queued.actions, queued.live, queued.reviewed) == (grant.id, 2, False, False)
        assert queued.reason == PHI_REASON and PHI_REASON not in repr(queued)
        assert [a.action for a in uow.emergency.actions(grant.id)] == ["read", "read"]
    # The auditor may look (audit:read) but not review; nobody reviews their own grant.
    with platform.uow(auditor) as uow:
        assert [g.id for g in uow.emergency.queue()] == [grant.id]
        with pytest.raises(PermissionDenied, match="emergency:review"):
            uow.emergency.review(grant.id, "looks fine to me")
    denials = platform.audit(grant.id, action="deny")
    assert [d.new_values["operation"] for d in denials] == ["review emergency accesses"]
    self_grant = request(platform, platform.actor(Permission.MEMBERS_READ, Permission.PHI_EMERGENCY,
                                                   Permission.EMERGENCY_REVIEW, user_id=supervisor.user_id), member)
    reviewer_self = platform.actor(Permission.EMERGENCY_REVIEW, user_id=supervisor.user_id)
    with platform.uow(reviewer_self) as uow, pytest.raises(PermissionDenied, match="their own"):
        uow.emergency.review(self_grant.id, "all good here")
    # Bad input: a short note, an unknown grant.
    with platform.uow(supervisor) as uow:
        with pytest.raises(ValidationError, match="note"):
            uow.emergency.review(grant.id, "ok")
        with pytest.raises(NotFound):
            uow.emergency.review(uuid.uuid4(), "checked it")

    with platform.uow(supervisor) as uow:
        done = uow.emergency.review(grant.id, f"checked with {MEMBER_VALUES['email']}")
        uow.commit()
    assert done.reviewed and done.reviewed_by == supervisor.user_id and not done.live
    with platform.uow(supervisor) as uow:
        assert grant.id not in [g.id for g in uow.emergency.queue()]
        assert grant.id in [g.id for g in uow.emergency.queue(include_reviewed=True)]
        with pytest.raises(ConflictError, match="already reviewed"):
            uow.emergency.review(grant.id, "twice over")
    [review] = platform.audit(grant.id, action="review")
    assert review.user_id == supervisor.user_id and review.new_values["review_note"] == "[redacted]"
    assert review.new_values["ended_early"] is False


def test_reviewing_a_live_grant_ends_it(platform: Platform) -> None:
    member = platform.member()
    auditor, supervisor = role_actor(platform, "auditor"), role_actor(platform, "supervisor")
    grant = request(platform, auditor, member)
    with platform.uow(supervisor) as uow:
        done = uow.emergency.review(grant.id, "stopping this one")
        uow.commit()
    assert done.reviewed and not done.live
    with pytest.raises(PermissionDenied):
        reveal(platform, auditor, member)


def test_no_phi_in_any_audit_value(platform: Platform) -> None:
    member = platform.member()
    auditor, supervisor = role_actor(platform, "auditor"), role_actor(platform, "supervisor")
    grant = request(platform, auditor, member, PHI_REASON)
    reveal(platform, auditor, member)
    with platform.uow(supervisor) as uow:
        uow.emergency.review(grant.id, f"called back on {MEMBER_VALUES['phone']}, dob 1961-04-02")
        uow.commit()
    text = all_audit_text(platform)
    for needle in ("123-45-6789", "123456789", "1961-04-02", MEMBER_VALUES["email"], MEMBER_VALUES["phone"],
                   MEMBER_VALUES["last_name"], "caller", "called back"):
        assert needle not in text, needle


# -- the command line -------------------------------------------------------------------------------


def _site_grant(site: Site) -> tuple[Any, Any, Actor]:
    """A member and a live grant by a signed-up auditor (through the service, as the app does)."""
    auditor = site.user("auditor")
    actor = Actor.create(auditor.id, DEFAULT_ROLES["auditor"][1], channel="tui", role="auditor")
    with PlatformUnitOfWork(site.engines.platform, site.admin()) as uow:
        member = uow.members.create(dict(MEMBER_VALUES))
        uow.commit()
    service = EmergencyAccess(site.databases, actor, minutes=30)
    grant = service.request(member.id, REASON, "EMERGENCY")
    with PlatformUnitOfWork(site.engines.platform, actor) as uow:
        uow.members.open(member.id)
    return member, grant, actor


def test_cli_lists_shows_and_reviews_emergencies(site: Site) -> None:
    member, grant, _ = _site_grant(site)
    supervisor = site.user("supervisor")
    site.login(supervisor)

    out = site.cli("audit", "emergencies", "--json")
    assert out.code == EXIT_OK, out.err
    [row] = json.loads(out.out)
    assert (row["id"], row["member_id"], row["state"], row["actions"], row["minutes"]) == (
        str(grant.id), str(member.id), "live", 1, 30)
    table = site.cli("audit", "emergencies")
    assert table.code == EXIT_OK and str(grant.id) in table.out and "live" in table.out and "Sam Rivera" in table.out
    shown = site.cli("audit", "emergency", str(grant.id))
    assert shown.code == EXIT_OK and "read" in shown.out and REASON in shown.out

    reviewed = site.cli("audit", "review", str(grant.id), "--note", "confirmed with the case file")
    assert reviewed.code == EXIT_OK, reviewed.err
    assert "reviewed (it was still live: it has ended now)" in reviewed.out
    assert site.cli("audit", "emergencies").out.strip() == "no emergency accesses waiting for review"
    [again] = json.loads(site.cli("audit", "emergencies", "--all", "--json").out)
    assert again["state"] == "reviewed" and again["reviewer"] == "Sam Rivera"
    assert again["review_note"] == "confirmed with the case file"
    [audit_row] = site.sql("platform", "SELECT user_id, new_values FROM audit_logs WHERE action = 'review'")
    assert audit_row.user_id == supervisor.id and audit_row.new_values["review_note"] == "[redacted]"


def test_cli_bad_input_and_refusals(site: Site) -> None:
    _, grant, _ = _site_grant(site)
    assert site.cli("audit", "emergencies").code == EXIT_AUTH  # nobody signed in
    site.login(site.user("supervisor"))
    missing = site.cli("audit", "review", str(uuid.uuid4()), "--note", "checked it")
    assert missing.code == EXIT_FAILURE and "does not exist" in missing.err
    assert site.cli("audit", "review", str(grant.id)).code == EXIT_USAGE  # no --note
    bad_id = site.cli("audit", "review", "not-a-uuid", "--note", "checked it")
    assert bad_id.code == EXIT_USAGE and "is not an emergency access id" in bad_id.err
    short = site.cli("audit", "review", str(grant.id), "--note", "ok")
    assert short.code == EXIT_FAILURE and "note:" in short.err
    assert site.cli("audit", "emergency", "nope").code == EXIT_USAGE
    # An auditor reads the queue (audit:read) but may not review.
    site.login(site.user("auditor"))
    assert site.cli("audit", "emergencies").code == EXIT_OK
    refused = site.cli("audit", "review", str(grant.id), "--note", "checked it")
    assert refused.code == EXIT_FAILURE and "emergency:review" in refused.err
    # A specialist neither.
    site.login(site.user("specialist"))
    denied = site.cli("audit", "emergencies")
    assert denied.code == EXIT_FAILURE and "emergency:review" in denied.err
    assert site.sql("platform", "SELECT count(*) FROM audit_logs WHERE action = 'review'")[0][0] == 0


def test_emergency_minutes_setting() -> None:
    from carecli.config import load_settings
    from carecli.errors import ConfigError

    assert load_settings({}).emergency_minutes == 60
    assert load_settings({"CARECLI_EMERGENCY_MINUTES": "15"}).emergency_minutes == 15
    for bad in ("0", "1441", "soon"):
        with pytest.raises(ConfigError, match="CARECLI_EMERGENCY_MINUTES"):
            load_settings({"CARECLI_EMERGENCY_MINUTES": bad})


def test_identity_uow_never_marks(site: Site) -> None:
    with IdentityUnitOfWork(site.engines.identity, site.engines.platform, site.admin()) as uow:
        assert uow.audit_actor("user", uuid.uuid4()).emergency_grant is None

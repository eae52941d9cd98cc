"""API tokens: format and offline checksum, hashing, scopes, expiry and revocation, on real PostgreSQL."""

from __future__ import annotations

import string
import uuid
from datetime import timedelta
from typing import Any

import pytest

from carecli.data.unit_of_work import PlatformUnitOfWork
from carecli.errors import EXIT_AUTH, EXIT_USAGE, AuthError, ConfigError, PermissionDenied
from carecli.services.auth.tokens import (
    CHECKSUM_LENGTH,
    RANDOM_LENGTH,
    TOKEN_PREFIX,
    check_token_format,
    create_api_token,
    generate_api_token,
    hash_secret,
    looks_like_carecli_token,
    parse_lifetime,
    parse_scopes,
)
from tests.support.sites import Site

MEMBER = {"first_name": "Ada", "last_name": "Okafor", "email": "ada.okafor@example.org", "state": "OR",
          "zip_code": "97201"}


def _create(site: Site, *args: str) -> tuple[str, str]:
    """``carecli tokens create ARGS`` as the signed-in user: (token, stderr)."""
    out = site.cli("tokens", "create", *args)
    assert out.code == 0, out.err
    return out.out.strip(), out.err


def _token_id(site: Site, token: str) -> uuid.UUID:
    return site.sql("identity", "SELECT id FROM tokens WHERE token_hash = :h", h=hash_secret(token))[0][0]


# -- format (no database) -----------------------------------------------------------------


def test_token_format_and_entropy() -> None:
    tokens = {generate_api_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert token.startswith(TOKEN_PREFIX)
        assert len(token) == len(TOKEN_PREFIX) + RANDOM_LENGTH + 1 + CHECKSUM_LENGTH
        assert looks_like_carecli_token(token)
        assert check_token_format(f"  {token}\n") == token


def test_checksum_catches_every_single_character_typo_and_swap_offline() -> None:
    alphabet = string.ascii_letters + string.digits
    for _ in range(5):
        token = generate_api_token()
        body_start = len(TOKEN_PREFIX)
        for position in range(body_start, len(token)):
            if token[position] == "_":
                continue
            for replacement in alphabet:
                if replacement == token[position]:
                    continue
                typo = token[:position] + replacement + token[position + 1:]
                assert not looks_like_carecli_token(typo), "a one-character typo went unnoticed"
        for position in range(body_start, len(token) - 1):
            swapped = token[:position] + token[position + 1] + token[position] + token[position + 2:]
            if swapped != token and "_" not in token[position:position + 2]:
                assert not looks_like_carecli_token(swapped)
    token = generate_api_token()
    typo = token[:10] + ("x" if token[10] != "x" else "y") + token[11:]
    with pytest.raises(AuthError) as caught:
        check_token_format(typo)
    assert "checksum" in str(caught.value) and typo not in str(caught.value)
    with pytest.raises(AuthError, match="truncated"):
        check_token_format(token[:-1])
    with pytest.raises(AuthError, match="not a carecli API token"):
        check_token_format("ghp_" + token[5:])


def test_lifetime_and_scope_parsing() -> None:
    assert parse_lifetime("30d") == timedelta(days=30)
    assert parse_lifetime("12h") == timedelta(hours=12)
    assert parse_lifetime("4w") == timedelta(weeks=4)
    assert parse_lifetime("365d") == timedelta(days=365)
    for bad in ("366d", "53w", "0h", "forever", "-1d", "1y"):
        with pytest.raises(ConfigError):
            parse_lifetime(bad)
    assert parse_scopes("members:read, calls:write members:read") == ["calls:write", "members:read"]
    with pytest.raises(ConfigError, match="unknown scope"):
        parse_scopes("members:read,members:fly")
    with pytest.raises(ConfigError, match="at least one scope"):
        parse_scopes(" , ")


# -- creating and using tokens ----------------------------------------------------------------


def test_create_prints_the_token_once_and_stores_only_its_hash(site: Site) -> None:
    user = site.user("specialist")
    site.login(user)
    token, err = _create(site, "--name", "nightly report", "--scopes", "members:read", "--expires", "12h")
    assert looks_like_carecli_token(token) and "\n" not in token
    assert "shown only this once" in err and token not in err

    row = site.sql("identity", "SELECT * FROM tokens")[0]
    assert row.token_hash == hash_secret(token) and row.token_type == "api" and row.user_id == user.id
    assert row.scopes == ["members:read"] and row.is_revoked is False
    assert abs((row.expires_at - row.created_at).total_seconds() - 12 * 3600) < 5
    name = site.sql("platform", "SELECT metadata_value FROM metadata WHERE entity_type = 'token' "
                    "AND entity_id = :id AND metadata_key = 'name'", id=row.id)
    assert [n[0] for n in name] == ["nightly report"]
    actions = site.sql("platform", "SELECT action, user_id, new_values FROM audit_logs WHERE entity_type = 'token' "
                       "ORDER BY created_at")
    assert [(a.action, a.user_id) for a in actions] == [("create", user.id), ("name", user.id)]
    assert actions[0].new_values["token_hash"] == "[redacted]"

    dump = site.all_text()
    assert token not in dump and token[len(TOKEN_PREFIX):] not in dump
    stored = site.store().load()
    assert stored is not None and stored not in dump

    listed = site.cli("tokens", "list")
    assert listed.code == 0 and f"{row.id}  active   nightly report  scopes members:read" in listed.out
    assert token not in listed.out and row.token_hash not in listed.out


def test_token_signs_in_scripts_with_narrowed_permissions(site: Site) -> None:
    user = site.user("specialist")
    site.login(user)
    token, _ = _create(site, "--name", "ci", "--scopes", "members:read,calls:write")
    site.cli("logout")

    out = site.cli("whoami", CARECLI_TOKEN=token)
    assert out.code == 0, out.err
    assert "permissions:  calls:write, members:read" in out.out
    token_id = _token_id(site, token)
    assert f"signed in via CARECLI_TOKEN: token {token_id} 'ci', scopes calls:write, members:read" in out.out
    assert token not in out.out + out.err

    me = site.resolve(CARECLI_TOKEN=token)
    assert me.via == "token" and me.store is None and me.user.id == user.id
    assert me.actor.scopes == frozenset({"members:read", "calls:write"})


def test_token_scope_is_enforced_by_the_repositories(site: Site) -> None:
    user = site.user("specialist")
    site.login(user)
    token, _ = _create(site, "--name", "read only", "--scopes", "members:read")
    with PlatformUnitOfWork(site.engines.platform, site.admin()) as uow:
        member = uow.members.create(MEMBER)
        uow.commit()

    actor = site.resolve(CARECLI_TOKEN=token).actor
    assert "members:write" in actor.permissions  # the role has it, the token does not
    with PlatformUnitOfWork(site.engines.platform, actor) as uow:
        assert uow.members.open(member.id).id == member.id
        with pytest.raises(PermissionDenied, match="members:write"):
            uow.members.create({**MEMBER, "email": "other@example.org"})
        with pytest.raises(PermissionDenied):
            uow.members.update(member.id, member.updated_at, {"city": "Salem"})
    denials = site.sql("platform", "SELECT user_id, new_values FROM audit_logs WHERE action = 'deny'")
    assert [d.user_id for d in denials] == [user.id, user.id]
    assert site.sql("platform", "SELECT count(*) FROM members")[0][0] == 1


def test_scopes_beyond_your_own_permissions_are_refused(site: Site) -> None:
    site.login(site.user("auditor"))
    out = site.cli("tokens", "create", "--name", "x", "--scopes", "members:read,members:write")
    assert out.code == EXIT_USAGE and "scopes you do not have yourself: members:write" in out.err
    # A token cannot mint a broader token either.
    token, _ = _create(site, "--name", "narrow", "--scopes", "members:read")
    wider = site.cli("tokens", "create", "--name", "y", "--scopes", "audit:read", CARECLI_TOKEN=token)
    assert wider.code == EXIT_USAGE and "audit:read" in wider.err
    for args in (("--scopes", "members:fly"), ("--scopes", "members:read", "--expires", "400d")):
        bad = site.cli("tokens", "create", "--name", "x", *args)
        assert bad.code == EXIT_USAGE, bad.err
    assert site.sql("identity", "SELECT count(*) FROM tokens")[0][0] == 1


def test_expired_token_is_refused_and_audited(site: Site) -> None:
    user = site.user()
    site.login(user)
    token, _ = _create(site, "--name", "short", "--scopes", "members:read", "--expires", "1h")
    token_id = _token_id(site, token)
    site.sql("identity", "UPDATE tokens SET expires_at = (now() AT TIME ZONE 'UTC') - interval '1 second' "
             "WHERE id = :id", id=token_id)
    out = site.cli("whoami", CARECLI_TOKEN=token)
    assert out.code == EXIT_AUTH
    assert f"token {token_id}) was expired" in out.err and token not in out.err
    refusal = site.audit("auth_refused")
    assert [(r.entity_type, r.entity_id, r.new_values) for r in refusal] == [
        ("token", token_id, {"reason": "expired", "user_id": str(user.id)})]
    assert refusal[0].user_id is None  # refused, so nobody acted


def test_revoked_token_is_refused(site: Site) -> None:
    site.login(site.user())
    token, _ = _create(site, "--name", "to revoke", "--scopes", "members:read")
    token_id = _token_id(site, token)
    assert site.cli("whoami", CARECLI_TOKEN=token).code == 0
    revoked = site.cli("tokens", "revoke", str(token_id))
    assert revoked.code == 0, revoked.err
    out = site.cli("whoami", CARECLI_TOKEN=token)
    assert out.code == EXIT_AUTH and "was revoked" in out.err
    assert site.audit("auth_refused")[0].new_values["reason"] == "revoked"
    assert "to revoke" not in site.cli("tokens", "list").out
    assert "revoked" in site.cli("tokens", "list", "--all").out


def test_token_of_a_deactivated_user_is_refused(site: Site) -> None:
    user = site.user()
    site.login(user)
    token, _ = _create(site, "--name", "ci", "--scopes", "members:read")
    site.sql("identity", "UPDATE users SET is_active = false WHERE id = :id", id=user.id)
    out = site.cli("whoami", CARECLI_TOKEN=token)
    assert out.code == EXIT_AUTH and "deactivated" in out.err
    assert site.audit("auth_refused")[0].new_values["reason"] == "user_inactive"


def test_mistyped_token_is_caught_by_its_checksum(site: Site) -> None:
    site.login(site.user())
    token, _ = _create(site, "--name", "ci", "--scopes", "members:read")
    typo = token[:12] + ("Q" if token[12] != "Q" else "R") + token[13:]
    out = site.cli("whoami", CARECLI_TOKEN=typo)
    assert out.code == EXIT_AUTH and "fails its checksum" in out.err and typo not in out.err
    assert site.audit("auth_refused")[0].new_values == {"reason": "malformed", "via": "CARECLI_TOKEN"}
    unknown = site.cli("whoami", CARECLI_TOKEN=generate_api_token())
    assert unknown.code == EXIT_AUTH and "not a token of this installation" in unknown.err


def test_only_admins_manage_other_users_tokens(site: Site) -> None:
    admin = site.user("admin")
    specialist = site.user("specialist")
    site.login(specialist)
    theirs, _ = _create(site, "--name", "theirs", "--scopes", "members:read")
    their_id = _token_id(site, theirs)
    site.login(admin)
    mine, _ = _create(site, "--name", "mine", "--scopes", "users:admin")
    my_id = _token_id(site, mine)

    listed = site.cli("tokens", "list", "--user", specialist.email)
    assert listed.code == 0 and "theirs" in listed.out
    site.login(specialist)
    denied = site.cli("tokens", "revoke", str(my_id))
    assert denied.code == 1 and "users:admin" in denied.err
    assert site.cli("tokens", "list", "--user", admin.email).code == 1
    site.login(admin)
    assert site.cli("tokens", "revoke", str(their_id)).code == 0
    assert site.cli("whoami", CARECLI_TOKEN=theirs).code == EXIT_AUTH


def test_create_api_token_needs_a_user(site: Site) -> None:
    from carecli.data.actor import Actor

    with pytest.raises(AuthError, match="belong to a user"):
        create_api_token(site.databases, Actor.system("cli"), name="x", scopes=["members:read"])


def test_created_token_repr_hides_the_secret(site: Site) -> None:
    user = site.user()
    me: Any = site.login(user)
    assert me is not None
    actor = site.resolve().actor
    created = create_api_token(site.databases, actor, name="repr", scopes=["members:read"])
    assert created.secret not in repr(created)

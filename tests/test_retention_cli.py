"""``carecli retention`` as scripts run it: real subprocesses on real database URLs, signed in by API tokens.

One installation per module: an ``admin`` (may purge audit rows), an
``operator`` holding ``retention:admin`` under another role, and a
specialist without it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from carecli.config import load_settings
from carecli.data.actor import Actor
from carecli.data.crypto.master import encode_key, generate_master_key
from carecli.data.databases import Databases, create_database_engine
from carecli.data.permissions import ALL_PERMISSIONS, DEFAULT_ROLES
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.errors import EXIT_AUTH, EXIT_FAILURE, EXIT_USAGE
from carecli.services.auth.tokens import create_api_token
from tests.cli import Result, run_carecli

ROLES = {"admin": sorted(ALL_PERMISSIONS), "operator": sorted(ALL_PERMISSIONS),
         "specialist": DEFAULT_ROLES["specialist"][1]}
SCOPES = {"admin": ["retention:admin"], "operator": ["retention:admin"], "specialist": ["members:read"]}


@dataclass
class Install:
    identity: Engine
    platform: Engine
    env: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str, token: str | None = "admin", **env: str) -> Result:
        full: dict[str, str | None] = {**self.env, **env}
        full["CARECLI_TOKEN"] = self.tokens[token] if token is not None else None
        return run_carecli(*args, env=full)

    def scalar(self, statement: str, **params: Any) -> Any:
        with self.platform.begin() as connection:
            return connection.execute(text(statement), params).scalar()

    def old_deleted_member(self, years: int = 7) -> uuid.UUID:
        return self.scalar(
            "INSERT INTO members (first_name, last_name, deleted_at) VALUES ('Ada', 'Okafor', "
            "(now() AT TIME ZONE 'UTC') - make_interval(years => :years)) RETURNING id", years=years)


@pytest.fixture(scope="module")
def inst(pg_server: Any, template_pair: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    names = (pg_server.create_database("identity", template=template_pair.identity),
             pg_server.create_database("platform", template=template_pair.platform))
    settings = load_settings({})
    identity = create_database_engine(pg_server.url(names[0]), settings)
    platform = create_database_engine(pg_server.url(names[1]), settings)
    env = {**pg_server.env_for(*names), "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
           "XDG_STATE_HOME": str(tmp_path_factory.mktemp("retention-cli-state"))}
    install = Install(identity, platform, env)
    databases = Databases(identity=identity, platform=platform)
    bootstrap = Actor.create(uuid.uuid4(), ALL_PERMISSIONS, channel="cli", role="admin")
    users = {}
    with IdentityUnitOfWork(identity, platform, bootstrap) as uow:
        for name, permissions in ROLES.items():
            role = uow.roles.create(name, list(permissions), f"{name} (retention tests)")
            users[name] = uow.users.create({"external_user_id": f"auth0|{name}", "email": f"{name}@example.org",
                                            "role_id": role.id})
        uow.commit()
    for name in ROLES:
        actor = Actor.create(users[name].id, ROLES[name], channel="cli", role=name)
        install.tokens[name] = create_api_token(databases, actor, name=f"{name} retention",
                                                scopes=SCOPES[name]).secret
    try:
        yield install
    finally:
        identity.dispose()
        platform.dispose()
        for name in names:
            pg_server.drop_database(name)


def test_dry_run_json_then_purge(inst: Install) -> None:
    member = inst.old_deleted_member()
    out = inst.cli("retention", "purge", "--dry-run", "--json")
    assert out.code == 0, out.err
    report = json.loads(out.out)
    assert report["dry_run"] is True and len(report["tables"]) == 12
    members = next(t for t in report["tables"] if t["table"] == "members")
    assert members["purged"] == 1 and members["years"] == 6
    assert inst.scalar("SELECT count(*) FROM members WHERE id = :id", id=member) == 1

    out = inst.cli("retention", "purge")
    assert out.code == 0, out.err
    assert "members" in out.out and "total: 1 purged, 0 held, 0 blocked" in out.out
    assert inst.scalar("SELECT count(*) FROM members WHERE id = :id", id=member) == 0
    assert inst.scalar("SELECT new_values->>'table' FROM audit_logs WHERE action = 'purge' AND entity_id = :id",
                       id=member) == "members"


def test_holds_through_the_cli(inst: Install) -> None:
    member = inst.old_deleted_member()
    out = inst.cli("retention", "hold", str(member), "--reason", "Matter 2026-7", token="operator")
    assert out.code == 0, out.err
    assert f"member {member} is under legal hold" in out.out
    listed = json.loads(inst.cli("retention", "holds", "--json").out)
    assert [(h["member_id"], h["reason"], h["member_deleted"]) for h in listed] == [
        (str(member), "Matter 2026-7", True)]
    purge = json.loads(inst.cli("retention", "purge", "--json").out)
    assert next(t for t in purge["tables"] if t["table"] == "members")["held"] == 1
    again = inst.cli("retention", "hold", str(member), "--reason", "x")
    assert again.code == EXIT_FAILURE and "already under legal hold" in again.err
    assert inst.cli("retention", "release", str(member)).code == 0
    assert inst.cli("retention", "holds").out.strip() == "no legal holds"
    released = inst.cli("retention", "release", str(member))
    assert released.code == EXIT_FAILURE and "not under legal hold" in released.err
    assert inst.cli("retention", "purge").code == 0
    assert inst.scalar("SELECT count(*) FROM members WHERE id = :id", id=member) == 0


@pytest.mark.parametrize(("args", "message"), [
    (("purge", "--before", "31/01/2019"), "--before '31/01/2019' is not a date"),
    (("purge", "--batch-size", "0"), "--batch-size must be a positive"),
    (("hold", "not-a-uuid", "--reason", "x"), "'not-a-uuid' is not a member id"),
    (("release", "42"), "'42' is not a member id"),
    (("hold", str(uuid.uuid4())), "Missing option '--reason'"),
])
def test_bad_input_is_a_usage_error(inst: Install, args: tuple[str, ...], message: str) -> None:
    out = inst.cli("retention", *args)
    assert out.code == EXIT_USAGE, out.err
    assert message in out.err
    assert "Traceback" not in out.err


def test_an_unknown_table_in_the_config_file_is_a_usage_error(inst: Install, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[retention.tables]\npatients = 10\n")
    out = inst.cli("retention", "purge", "--dry-run", CARECLI_CONFIG=str(config))
    assert out.code == EXIT_USAGE
    assert "unknown table 'patients'" in out.err and "call_records" in out.err


def test_unknown_member_is_refused(inst: Install) -> None:
    out = inst.cli("retention", "hold", str(uuid.uuid4()), "--reason", "Matter 1")
    assert out.code == EXIT_FAILURE and "does not exist" in out.err


def test_refusals_exit_1_and_are_audited(inst: Install) -> None:
    member = inst.old_deleted_member()
    out = inst.cli("retention", "purge", token="specialist")
    assert out.code == EXIT_FAILURE and "retention:admin" in out.err
    out = inst.cli("retention", "purge", "--audit", token="operator")
    assert out.code == EXIT_FAILURE and "role:admin" in out.err
    assert inst.scalar("SELECT count(*) FROM audit_logs WHERE action = 'deny' AND entity_type = 'retention' "
                       "AND new_values->>'operation' IN ('purge deleted records', 'purge audit rows')") == 2
    assert inst.scalar("SELECT count(*) FROM members WHERE id = :id", id=member) == 1
    inst.cli("retention", "purge")


def test_audit_purge_by_the_admin(inst: Install) -> None:
    inst.scalar("INSERT INTO audit_logs (entity_type, entity_id, action, created_at) VALUES "
                "('member', gen_random_uuid(), 'read', (now() AT TIME ZONE 'UTC') - interval '9 years') RETURNING 1")
    dry = json.loads(inst.cli("retention", "purge", "--audit", "--dry-run", "--json").out)
    assert dry["purged"] >= 1 and dry["years"] == 7
    master = encode_key(generate_master_key())
    out = inst.cli("retention", "purge", "--audit")
    assert out.code != 0 and "no master key" in out.err  # the purge seals what it removes: no key, no purge
    out = inst.cli("retention", "purge", "--audit", CARECLI_MASTER_KEY=master)
    assert out.code == 0, out.err
    assert "audit_logs: purged" in out.out
    verify = inst.cli("audit", "verify", "--json", CARECLI_MASTER_KEY=master)
    assert verify.code == 0, verify.out + verify.err
    report = json.loads(verify.out)
    assert report["intact"] and report["rows_purged"] >= 1 and report["seals"] >= 2
    assert inst.scalar("SELECT count(*) FROM audit_logs WHERE created_at < (now() AT TIME ZONE 'UTC') "
                       "- interval '7 years'") == 0


def test_not_signed_in_exits_4(inst: Install) -> None:
    out = inst.cli("retention", "purge", token=None)
    assert out.code == EXIT_AUTH

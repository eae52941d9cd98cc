"""Shared fixtures for the audited repositories: actors, units of work and small helpers.

Everything runs on a real, freshly migrated platform database per test. The
fixtures are registered for the whole suite (``pytest_plugins`` in
tests/conftest.py): a test asks for ``platform`` by parameter name, and imports
only the helpers (``Platform``, ``make_actor``, ``MEMBER_VALUES``...) from here.

``platform.uow(...)`` opens a :class:`PlatformUnitOfWork` for an actor with
exactly the permissions given (all of them by default); ``platform.audit(...)``
reads ``audit_logs`` on a connection of its own, so it only ever sees
committed rows.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, text

from carecli.config import load_settings
from carecli.data.actor import Actor
from carecli.data.crypto.keystore import ensure_primary_key, open_cipher
from carecli.data.crypto.master import LocalMasterKey, generate_master_key
from carecli.data.databases import create_database_engine
from carecli.data.permissions import ALL_PERMISSIONS
from carecli.data.records import Call, Member, Plan, Specialist
from carecli.data.unit_of_work import PlatformUnitOfWork

#: when the fixtures' members joined (before every call date the tests use)
MEMBER_SINCE = datetime(2020, 1, 1)
SSH_ENV = {"SSH_CONNECTION": "203.0.113.7 52311 10.0.0.5 22"}
CLIENT_IP = "203.0.113.7"
KEY_ROWS_EXCLUDED = "entity_type <> 'data_key'"

MEMBER_VALUES: dict[str, Any] = {
    "first_name": "Ada",
    "last_name": "Okafor",
    "email": "ada.okafor@example.org",
    "phone": "(503) 555-0100",
    "address_line1": "12 Harbour Road",
    "city": "Portland",
    "state": "OR",
    "zip_code": "97201",
}


def backdate_member(connection: Any, member_id: uuid.UUID, since: datetime = MEMBER_SINCE) -> None:
    """Put a member made by a test on file since ``since``: a call cannot predate its member's record,
    and the tests log calls on fixed past dates."""
    connection.execute(text("UPDATE members SET created_at = :since WHERE id = :id"), {"since": since, "id": member_id})


def make_actor(permissions: Iterable[str] = ALL_PERMISSIONS, *, role: str | None = "tester",
               scopes: Iterable[str] | None = None, environ: Mapping[str, str] | None = None,
               user_id: uuid.UUID | None = None) -> Actor:
    """An actor with exactly ``permissions``, talking over SSH from ``CLIENT_IP`` by default."""
    return Actor.create(user_id or uuid.uuid4(), permissions, channel="ssh", role=role, scopes=scopes,
                        environ=SSH_ENV if environ is None else environ)


@dataclass
class Platform:
    """The platform database of one test, with helpers to act on it."""

    engine: Engine
    known_users: set[uuid.UUID] = field(default_factory=set)

    def __post_init__(self) -> None:
        master = LocalMasterKey(generate_master_key(), "test")
        # The first data key (and its own 'data_key' audit row) is made here, so the
        # tests see only the audit rows of the repository operations they run.
        ensure_primary_key(self.engine, master)
        self.cipher: Callable[[], Any] = lambda: open_cipher(self.engine, master)
        self.admin = make_actor(role="admin")
        assert self.admin.user_id is not None
        self.known_users.add(self.admin.user_id)

    def actor(self, *permissions: str, **kwargs: Any) -> Actor:
        actor = make_actor(permissions, **kwargs)
        assert actor.user_id is not None
        self.known_users.add(actor.user_id)
        return actor

    def uow(self, actor: Actor | None = None) -> PlatformUnitOfWork:
        """A unit of work for ``actor`` (default: an actor holding every permission)."""
        return PlatformUnitOfWork(self.engine, actor or self.admin, cipher=self.cipher,
                                  user_exists=lambda user_id: user_id in self.known_users)

    # -- reading the database on a separate connection -----------------------

    def sql(self, statement: str, **params: Any) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(text(statement), params))

    def scalar(self, statement: str, **params: Any) -> Any:
        with self.engine.connect() as connection:
            return connection.execute(text(statement), params).scalar()

    def audit(self, entity_id: uuid.UUID | None = None, **filters: Any) -> list[Any]:
        """Committed audit rows of repository operations (optionally of one entity), oldest first.

        Data-key rows (written by the key store, not by repositories) are left out.
        """
        where = [KEY_ROWS_EXCLUDED]
        params: dict[str, Any] = {}
        if entity_id is not None:
            where.append("entity_id = :entity_id")
            params["entity_id"] = entity_id
        for name, value in filters.items():
            where.append(f"{name} = :{name}")
            params[name] = value
        return self.sql(f"SELECT * FROM audit_logs WHERE {' AND '.join(where)} "
                        "ORDER BY created_at, (action = 'create') DESC, id", **params)

    def audit_count(self) -> int:
        return int(self.scalar(f"SELECT count(*) FROM audit_logs WHERE {KEY_ROWS_EXCLUDED}"))

    def block_audit_inserts(self) -> None:
        """Make every further audit insert fail for real (existing rows are not checked)."""
        with self.engine.begin() as connection:
            connection.execute(text("ALTER TABLE audit_logs ADD CONSTRAINT test_block CHECK (false) NOT VALID"))

    # -- building data (committed, as the admin) -------------------------------

    def member(self, **overrides: Any) -> Member:
        from carecli.data.crypto.phi import DateOfBirth, Ssn

        ssn = overrides.pop("ssn", Ssn("123-45-6789"))
        dob = overrides.pop("dob", DateOfBirth(date(1961, 4, 2)))
        since = overrides.pop("created_at", MEMBER_SINCE)
        with self.uow() as uow:
            member = uow.members.create({**MEMBER_VALUES, **overrides}, ssn=ssn, dob=dob)
            # On file for years, as members with call history are: a call cannot predate its member's record.
            backdate_member(uow.connection, member.id, since)
            uow.commit()
        return dataclasses.replace(member, created_at=since)

    def plan(self, code: str = "PPO-1", **overrides: Any) -> Plan:
        with self.uow() as uow:
            plan = uow.plans.create({"plan_code": code, "plan_name": f"Plan {code}", **overrides})
            uow.commit()
        return plan

    def specialist(self, **overrides: Any) -> Specialist:
        user_id = overrides.pop("user_id", None) or uuid.uuid4()
        self.known_users.add(user_id)
        with self.uow() as uow:
            specialist = uow.specialists.create({"user_id": user_id, "license_number": "LIC-1",
                                                 "phone": "(503) 555-0199", **overrides})
            uow.commit()
        return specialist

    def call(self, member: Member, specialist: Specialist, **overrides: Any) -> Call:
        values = {"member_id": member.id, "specialist_id": specialist.id, "call_type": "outreach",
                  "call_status": "completed", "started_at": datetime(2026, 3, 2, 14, 0),
                  "ended_at": datetime(2026, 3, 2, 14, 12), "call_notes": "talked about diabetes care",
                  **overrides}
        with self.uow() as uow:
            call = uow.calls.create(values)
            uow.commit()
        return call


@pytest.fixture
def platform(pg_server, template_pair) -> Iterator[Platform]:
    """A fresh migrated platform database (a copy of the session's template), with actors and helpers.

    Like ``migrated_engines`` but without the identity database these tests never touch:
    copying and dropping one database instead of two halves the cost of each test.
    """
    name = pg_server.create_database("platform", template=template_pair.platform)
    engine = create_database_engine(pg_server.url(name), load_settings({}))
    try:
        yield Platform(engine)
    finally:
        engine.dispose()
        pg_server.drop_database(name)

"""A deployment under test: migrated databases with a bootstrapped administrator who holds an API token.

The ``deployment`` fixture (registered for the whole suite in tests/conftest.py) is shared by the
``carecli users``/``roles`` tests and the sync tests; the helpers make and read users, sessions,
specialists and audit rows directly.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text

from carecli.data.actor import Actor
from carecli.data.databases import Databases
from carecli.data.permissions import ALL_PERMISSIONS
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.data.unit_of_work import PlatformUnitOfWork
from carecli.services.auth.tokens import generate_api_token, hash_secret
from tests.cli import run_carecli

if TYPE_CHECKING:  # tests.conftest registers this module as a plugin: no import at run time
    from tests.conftest import Engines

ADMIN_EMAIL = "admin@example.org"


@dataclass
class Deployment:
    """Migrated databases with a bootstrapped admin who holds an API token."""

    engines: Engines
    env: dict[str, str]  # the CARECLI_* URLs plus the admin's CARECLI_TOKEN
    admin_id: uuid.UUID

    @property
    def databases(self) -> Databases:
        return Databases(identity=self.engines.identity, platform=self.engines.platform)

    def run(self, *args: str, **env: str):
        return run_carecli(*args, env={**self.env, **env})


def issue_token(engines, user_id: uuid.UUID, scopes) -> str:
    """An API token for ``user_id``, made like `carecli tokens create` makes one."""
    secret = generate_api_token()
    owner = Actor.create(user_id, ALL_PERMISSIONS, channel="cli")
    with IdentityUnitOfWork(engines.identity, engines.platform, owner) as uow:
        uow.tokens.create(user_id, "api", hash_secret(secret), datetime.utcnow() + timedelta(days=1), sorted(scopes))
        uow.commit()
    return secret


def add_session(engines, user_id: uuid.UUID) -> str:
    """A live session row for ``user_id``; returns the stored hash."""
    digest = hash_secret(uuid.uuid4().hex)
    owner = Actor.create(user_id, ALL_PERMISSIONS, channel="cli")
    with IdentityUnitOfWork(engines.identity, engines.platform, owner) as uow:
        uow.sessions.create(user_id, digest, datetime.utcnow() + timedelta(hours=1), "198.51.100.7",
                            "carecli/test (tui)")
        uow.commit()
    return digest


def add_specialist(engines, user_id: uuid.UUID) -> uuid.UUID:
    """A platform specialist record for ``user_id``."""
    actor = Actor.create(uuid.uuid4(), ALL_PERMISSIONS, channel="cli")
    with PlatformUnitOfWork(engines.platform, actor, user_exists=lambda _id: True) as uow:
        specialist = uow.specialists.create({"user_id": user_id, "license_number": f"LIC-{uuid.uuid4().hex[:8]}"})
        uow.commit()
    return specialist.id


def user_row(engines, email: str):
    with engines.identity.connect() as conn:
        return conn.execute(text("SELECT * FROM users WHERE email = :e"), {"e": email}).one()


def specialist_active(engines, specialist_id: uuid.UUID) -> bool:
    with engines.platform.connect() as conn:
        return conn.execute(text("SELECT is_active FROM specialists WHERE id = :i"), {"i": specialist_id}).scalar_one()


def audit_rows(engines, entity_type: str | None = None):
    query = "SELECT * FROM audit_logs"
    if entity_type:
        query += " WHERE entity_type = :t"
    with engines.platform.connect() as conn:
        return conn.execute(text(query + " ORDER BY created_at, id"), {"t": entity_type}).all()


def add_user(deployment: Deployment, email: str, role: str = "specialist") -> uuid.UUID:
    result = deployment.run("users", "add", "--email", email, "--external-id", f"auth0|{uuid.uuid4().hex}",
                            "--role", role, "--first", "Sam", "--last", "Rivera")
    assert result.code == 0, result.err
    return user_row(deployment.engines, email.lower()).id


@pytest.fixture
def deployment(migrated_engines) -> Deployment:
    env = migrated_engines.pair.env
    result = run_carecli("users", "bootstrap-admin", "--email", ADMIN_EMAIL, "--external-id", "auth0|admin",
                         "--first", "Ada", "--last", "Admin", env=env)
    assert result.code == 0, result.err
    admin_id = user_row(migrated_engines, ADMIN_EMAIL).id
    token = issue_token(migrated_engines, admin_id, ALL_PERMISSIONS)
    return Deployment(migrated_engines, {**env, "CARECLI_TOKEN": token}, admin_id)

"""Fixtures for the app's Pilot tests: seeded databases, real sessions, and the app itself.

One pair of databases is migrated and seeded once per test session (300
synthetic members, seed 42, SSN/DOB encrypted: ``seeded_template`` of
tests/support/seeded.py, shared with the SSH tests); every test gets its own copy
(``CREATE DATABASE ... TEMPLATE``), so a test may write freely. Sessions are
real ``sessions`` rows, kept in a private credential file under the test's
own state directory.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from carecli.config import Settings, load_settings
from carecli.data.actor import Actor
from carecli.data.databases import Databases, open_databases
from carecli.data.models.identity import Role as RoleTable
from carecli.data.models.identity import User as UserTable
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.screens.app import CareApp
from carecli.services.auth.credentials import CredentialStore
from carecli.services.auth.current import role_of
from carecli.services.auth.sessions import start_session
from carecli.services.desk import Desk
from tests.support.seeded import MASTER_KEY, THEME

#: a fixed size for Pilot and snapshot tests (the theme: THEME of tests/support/seeded.py)
SIZE = (100, 30)


@dataclass
class TuiWorld:
    """One test's databases, settings and helpers to sign people in."""

    settings: Settings
    databases: Databases
    store: CredentialStore
    env: dict[str, str]

    def user(self, role: str, index: int = 0, *, email: str | None = None) -> Any:
        """The ``index``-th active user (by e-mail) holding ``role`` (or the user with ``email``)."""
        users, roles = UserTable.__table__, RoleTable.__table__
        with self.databases.identity.connect() as connection:
            statement = (select(users).join(roles, roles.c.id == users.c.role_id)
                         .where(roles.c.name == role, users.c.is_active.is_not(False), users.c.deleted_at.is_(None))
                         .order_by(users.c.email))
            if email is not None:
                statement = statement.where(users.c.email == email)
            rows = connection.execute(statement).all()
        return rows[index]

    def sign_in(self, role: str = "specialist", index: int = 0, *, email: str | None = None) -> Desk:
        """A real session for a user of ``role``, stored in this test's credential store."""
        row = self.user(role, index, email=email)
        with IdentityUnitOfWork(self.databases.identity, self.databases.platform, Actor.system("tui")) as uow:
            user = uow.users.to_record(row)
            role_name, permissions = role_of(uow, user)
        actor = Actor.create(user.id, permissions, channel="tui", role=role_name)
        with IdentityUnitOfWork(self.databases.identity, self.databases.platform, actor) as uow:
            token, _session = start_session(uow, user, self.settings)
            uow.commit()
        self.store.save(token)
        return Desk.resume(self.settings, self.databases, store=self.store)

    def app(self, desk: Desk | None = None, **kwargs: Any) -> CareApp:
        return CareApp(self.settings, databases=self.databases, desk=desk, store=self.store, **kwargs)

    def scalar(self, database: str, statement: str, **params: Any) -> Any:
        with self.databases.engine(database).connect() as connection:
            return connection.execute(text(statement), params).scalar()

    def rows(self, database: str, statement: str, **params: Any) -> list[Any]:
        with self.databases.engine(database).connect() as connection:
            return list(connection.execute(text(statement), params))

    def execute(self, database: str, statement: str, **params: Any) -> None:
        """A change made behind the app's back (a state the app's own rules would not let a test reach now)."""
        with self.databases.engine(database).begin() as connection:
            connection.execute(text(statement), params)


@pytest.fixture
def tui(pg_server, seeded_template, tmp_path: Path, monkeypatch) -> Iterator[TuiWorld]:
    """A fresh copy of the seeded databases, with settings, a credential store and the app factory."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    identity = pg_server.create_database("identity", template=seeded_template.identity)
    platform = pg_server.create_database("platform", template=seeded_template.platform)
    env = {**pg_server.env_for(identity, platform), "CARECLI_MASTER_KEY": MASTER_KEY,
           "CARECLI_CONFIG": str(tmp_path / "config.toml"), "CARECLI_THEME": THEME,
           # times shown and typed in UTC whatever the machine's zone (tests of other zones set their own)
           "CARECLI_TIMEZONE": "UTC"}
    (tmp_path / "config.toml").write_text("")
    settings = load_settings(env)
    databases = open_databases(settings)
    store = CredentialStore(scope=f"test:{uuid.uuid4()}", use_keyring=False)
    try:
        yield TuiWorld(settings, databases, store, env)
    finally:
        databases.dispose()
        pg_server.drop_database(identity)
        pg_server.drop_database(platform)

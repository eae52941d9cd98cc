"""A small installation under test: migrated databases on real URLs, the test OpenID provider, a session file.

The ``site`` fixture (registered for the whole suite in tests/conftest.py) is what the session, API token,
login, import and emergency-access tests sign in against; ``Site`` is its type, for annotations.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keyring
import pytest
from keyring.backends.fail import Keyring as FailKeyring
from sqlalchemy import Engine, text

from carecli.config import Settings, load_settings
from carecli.data.actor import Actor
from carecli.data.databases import Databases
from carecli.data.permissions import ALL_PERMISSIONS, DEFAULT_ROLES
from carecli.data.records import User
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.services.auth.credentials import CredentialStore
from carecli.services.auth.current import SignedIn, resolve_actor
from carecli.services.auth.login import LoginResult, login
from tests.cli import Result, run_carecli
from tests.db_scan import all_rows_text
from tests.oidc_provider import OidcProvider


@dataclass
class Site:
    """Migrated databases on real URLs, an OIDC provider, and a private state dir for the session file."""

    engines: Any
    provider: OidcProvider
    state_dir: Path
    env: dict[str, str]
    roles: dict[str, uuid.UUID] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return load_settings(self.env)

    @property
    def databases(self) -> Databases:
        return Databases(identity=self.engines.identity, platform=self.engines.platform)

    def admin(self) -> Actor:
        return Actor.create(uuid.uuid4(), ALL_PERMISSIONS, channel="cli", role="admin")

    def user(self, role: str = "specialist", **values: Any) -> User:
        """A new user with a default role (created on first use)."""
        with IdentityUnitOfWork(self.engines.identity, self.engines.platform, self.admin()) as uow:
            if role not in self.roles:
                description, permissions = DEFAULT_ROLES[role]
                self.roles[role] = uow.roles.create(role, permissions, description).id
            tag = uuid.uuid4().hex[:10]
            user = uow.users.create({"external_user_id": f"auth0|{tag}", "email": f"{role}.{tag}@example.org",
                                     "first_name": "Sam", "last_name": "Rivera", "role_id": self.roles[role],
                                     **values})
            uow.commit()
        return user

    def login(self, user: User | None, *, subject: str | None = None,
              environ: Mapping[str, str] | None = None) -> LoginResult:
        """The real device flow, approved by 'the person' as soon as the code is shown."""

        def approve(authorization: Any) -> None:
            self.provider.approve(authorization.user_code, subject or (user.external_user_id if user else "x"),
                                  email=user.email if user else None)

        return login(self.settings, self.databases, channel="cli", show=approve, environ=environ)

    def resolve(self, **env: str) -> SignedIn:
        settings = load_settings({**self.env, **env})
        return resolve_actor(settings, self.databases, channel="cli")

    def store(self) -> CredentialStore:
        return CredentialStore.for_settings(self.settings)

    def cli(self, *args: str, **env: str) -> Result:
        return run_carecli(*args, env={**self.env, **env})

    def sql(self, database: str, statement: str, **params: Any) -> list[Any]:
        engine: Engine = self.engines.identity if database == "identity" else self.engines.platform
        with engine.begin() as connection:
            result = connection.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    def audit(self, action: str) -> list[Any]:
        return self.sql("platform", "SELECT entity_type, entity_id, user_id, new_values, host(ip_address) AS ip, "
                        "user_agent FROM audit_logs WHERE action = :a ORDER BY created_at, id", a=action)

    def all_text(self) -> str:
        """Every row of every table of both databases, as text (for plaintext scans)."""
        return all_rows_text(self.engines.identity, self.engines.platform)


@pytest.fixture
def site(migrated_engines: Any, oidc_provider: OidcProvider, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    """One installation on real database URLs with an identity provider; the session file in tmp_path."""
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    # Never touch a developer's real keyring: the fail backend, in this process and in subprocesses.
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    previous = keyring.get_keyring()
    keyring.set_keyring(FailKeyring())
    env = {
        **migrated_engines.pair.env,
        "CARECLI_OIDC_ISSUER": oidc_provider.issuer,
        "CARECLI_OIDC_CLIENT_ID": oidc_provider.client_id,
        "CARECLI_OIDC_AUDIENCE": oidc_provider.audience or "",
    }
    yield Site(migrated_engines, oidc_provider, state, env)
    keyring.set_keyring(previous)

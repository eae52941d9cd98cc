"""Signing in: through the OpenID Connect device flow, or the local demo picker.

* With ``CARECLI_OIDC_ISSUER`` set, carecli runs the device authorization
  flow: it shows a code and a URL, the person approves on any browser, and
  the ID token's subject (``sub``) is matched to ``users.external_user_id``.
* Without an issuer, and only on the **embedded** server (a demo on one's
  own machine), a person picks one of the active users. With real database
  URLs and no issuer, signing in is impossible: configuration error.

Either way the user must exist, be active and not be removed; a refusal is
audited (``login_refused``) and explained. Success creates a session row
(hash of the token, client IP, user agent), stamps ``users.last_login_at``,
audits the login and keeps the session token on this machine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import func, select

from carecli.config import Settings
from carecli.data import audit
from carecli.data.actor import Actor, Channel
from carecli.data.databases import Databases
from carecli.data.models.identity import User as UserTable
from carecli.data.records import User
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.errors import AuthError, ConfigError
from carecli.services.auth.credentials import CredentialStore
from carecli.services.auth.current import NIL, load_user, role_of, user_problem
from carecli.services.auth.sessions import SessionInfo, end_session, session_info, start_session
from carecli.services.auth.tokens import database_now

if TYPE_CHECKING:
    from carecli.services.auth.oidc import DeviceAuthorization, OidcClient

log = logging.getLogger("carecli.auth")
LoginMethod = Literal["oidc", "demo"]
DemoPicker = Callable[[Sequence[User]], User]

OIDC_HINT = ("set CARECLI_OIDC_ISSUER, CARECLI_OIDC_CLIENT_ID and CARECLI_OIDC_AUDIENCE "
             "(or [oidc] issuer, client_id, audience in the config file)")


@dataclass(frozen=True)
class LoginResult:
    """Who signed in, how, and where the session is kept."""

    user: User
    role: str | None
    method: LoginMethod
    session: SessionInfo
    store: str


def login_method(settings: Settings, databases: Databases) -> LoginMethod:
    """``oidc`` with an issuer configured; ``demo`` on the embedded server; otherwise a :class:`ConfigError`."""
    if settings.oidc_issuer:
        if not settings.oidc_client_id:
            raise ConfigError("CARECLI_OIDC_ISSUER is set but CARECLI_OIDC_CLIENT_ID is not", hint=OIDC_HINT)
        return "oidc"
    if databases.embedded is not None:
        return "demo"
    raise ConfigError("no identity provider is configured, and the local sign-in is only for the embedded "
                      "demo database", hint=OIDC_HINT)


def login(settings: Settings, databases: Databases, *, channel: Channel,
          show: Callable[[DeviceAuthorization], object] | None = None,
          pick_demo_user: DemoPicker | None = None, demo_email: str | None = None,
          on_poll: Callable[[str], None] | None = None, oidc_client: OidcClient | None = None,
          environ: Mapping[str, str] | None = None, store: CredentialStore | None = None) -> LoginResult:
    """Sign in and keep the new session on this machine; :class:`AuthError` (exit 4) when refused.

    ``show`` displays the device code (OIDC); ``demo_email`` or ``pick_demo_user``
    choose the user of the local demo sign-in.
    """
    method = login_method(settings, databases)
    store = store or CredentialStore.for_settings(settings)
    if method == "oidc":
        if demo_email is not None:
            raise ConfigError("--user is for the local demo sign-in; this installation signs in through "
                              f"{settings.oidc_issuer}", hint="run `carecli login` without --user")
        user, subject = _oidc_user(settings, databases, channel=channel, show=show, on_poll=on_poll,
                                   client=oidc_client, environ=environ)
    else:
        user, subject = _demo_user(databases, channel=channel, pick=pick_demo_user, email=demo_email,
                                   environ=environ)
    return _admit(settings, databases, user, subject=subject, method=method, channel=channel, environ=environ,
                  store=store)


def _refuse(databases: Databases, channel: Channel, user: User | None, values: Mapping[str, Any],
            environ: Mapping[str, str] | None) -> None:
    # The reason only: the values may hold the e-mail or subject someone typed.
    log.warning("sign-in refused", extra={"reason": values.get("reason"), "method": values.get("method"),
                                          "channel": channel, "user_id": str(user.id) if user else None})
    audit.write_committed(databases.platform, Actor.system(channel, environ=environ), "user",
                          user.id if user else NIL, "login_refused", dict(values))


def _oidc_user(settings: Settings, databases: Databases, *, channel: Channel,
               show: Callable[[DeviceAuthorization], object] | None, on_poll: Callable[[str], None] | None,
               client: OidcClient | None, environ: Mapping[str, str] | None) -> tuple[User | None, str]:
    # Imported here: the local demo sign-in needs none of the HTTP and JOSE machinery.
    from carecli.services.auth.oidc import OidcClient, OidcSettings

    if client is None:
        client = OidcClient(OidcSettings.from_settings(settings))
    try:
        # Device code, approval, then the ID token (audience: our client id) and, with an
        # audience configured, the access token (same subject) validated against the JWKS.
        claims = client.login(show or (lambda _authorization: None), on_poll=on_poll)
    except AuthError as exc:
        _refuse(databases, channel, None, {"reason": type(exc).__name__, "method": "oidc"}, environ)
        raise
    with IdentityUnitOfWork(databases.identity, databases.platform, Actor.system(channel, environ=environ)) as uow:
        user = uow.users.by_external_id(claims.subject)
    if user is None:
        _refuse(databases, channel, None, {"reason": "unknown_user", "method": "oidc", "subject": claims.subject},
                environ)
        who = f" ({claims.email})" if claims.email else ""
        raise AuthError(f"you signed in at the identity provider{who}, but no carecli user has that identity",
                        hint="ask an administrator to add you (`carecli users add`)")
    return user, claims.subject


def _demo_user(databases: Databases, *, channel: Channel, pick: DemoPicker | None, email: str | None,
               environ: Mapping[str, str] | None) -> tuple[User | None, str]:
    table = UserTable.__table__
    with IdentityUnitOfWork(databases.identity, databases.platform, Actor.system(channel, environ=environ)) as uow:
        if email is not None:
            row = uow.connection.execute(
                select(table).where(func.lower(table.c.email) == email.strip().lower())).first()
            if row is None:
                _refuse(databases, channel, None, {"reason": "unknown_user", "method": "demo", "email": email},
                        environ)
                raise AuthError(f"there is no user with the e-mail address {email}",
                                hint="run `carecli login` without --user to pick from the list")
            user = uow.users.to_record(row)
            return user, user.external_user_id
    users = demo_candidates(databases, channel=channel, environ=environ)
    if not users:
        raise ConfigError("there are no active users to sign in as",
                          hint="load demo data with `carecli seed --members 100`")
    if pick is None:
        raise ConfigError("choose the user to sign in as", hint="`carecli login --user EMAIL`")
    chosen = pick(users)
    return chosen, chosen.external_user_id


def demo_candidates(databases: Databases, *, channel: Channel = "tui",
                    environ: Mapping[str, str] | None = None) -> list[User]:
    """The users one may pick in the local demo sign-in: active and not removed, by name."""
    table = UserTable.__table__
    with IdentityUnitOfWork(databases.identity, databases.platform, Actor.system(channel, environ=environ)) as uow:
        rows = uow.connection.execute(select(table).where(
            table.c.deleted_at.is_(None), table.c.is_active.is_not(False))
            .order_by(table.c.last_name, table.c.first_name, table.c.email)).all()
        return [uow.users.to_record(row) for row in rows]


def role_names(databases: Databases) -> dict[Any, str]:
    """Role id -> name of the live roles (shown next to each user in the demo picker)."""
    with IdentityUnitOfWork(databases.identity, databases.platform, Actor.system("tui")) as uow:
        return {role.id: role.name for role in uow.roles.list()}


def _admit(settings: Settings, databases: Databases, candidate: User | None, *, subject: str,
           method: LoginMethod, channel: Channel, environ: Mapping[str, str] | None,
           store: CredentialStore) -> LoginResult:
    """Check the user, start the session, keep it locally; end the session this machine held before."""
    with IdentityUnitOfWork(databases.identity, databases.platform, Actor.system(channel, environ=environ)) as uow:
        # Read again: the picker or the provider may have taken minutes.
        user = load_user(uow, candidate.id) if candidate is not None else None
        problem = user_problem(user)
        role, permissions = role_of(uow, user) if user is not None else (None, frozenset())
    if problem is not None:
        _refuse(databases, channel, user, {"reason": problem, "method": method, "subject": subject}, environ)
        raise AuthError(_REFUSALS[problem], hint="ask an administrator")
    assert user is not None
    previous = store.load(strict=False)
    actor = Actor.create(user.id, permissions, channel=channel, role=role, environ=environ)
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        token, session = start_session(uow, user, settings)
        uow.users.record_login(user.id)
        now = database_now(uow.connection)
        uow.commit()
    try:
        store.save(token)
    except Exception:
        end_session(databases, token, channel=channel)  # a session nobody holds must not stay open
        raise
    if previous is not None and previous != token:
        end_session(databases, previous, channel=channel)
    log.info("signed in", extra={"user_id": str(user.id), "method": method, "channel": channel,
                                 "session_id": str(session.id)})
    return LoginResult(user=user, role=role, method=method, session=session_info(session, now, settings,
                                                                                   current_id=session.id),
                       store=store.describe())


_REFUSALS = {
    "user_missing": "this user does not exist",
    "user_deleted": "this carecli account was removed, so it cannot sign in",
    "user_inactive": "this carecli account is deactivated, so it cannot sign in",
}

"""``carecli login | logout | whoami | sessions | tokens``: signing in and the credentials it creates.

Exit codes: authentication failures (not signed in, expired or revoked
session or token, refused sign-in) end with 4; usage and configuration
errors with 2. Nothing here prints a session token or a token hash; an API
token is printed once, by ``tokens create``, alone on its stdout line.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Sequence

import click

from carecli.cli.whoami_cmd import echo_identity, echo_session
from carecli.cli.whoami_cmd import name_of as _name
from carecli.cli.whoami_cmd import when as _when
from carecli.config import TOKEN_ENV, Settings, load_settings
from carecli.data.actor import Channel
from carecli.data.databases import Databases, open_databases, require_head
from carecli.data.records import User
from carecli.errors import ConfigError
from carecli.services.auth.credentials import CredentialStore
from carecli.services.auth.current import SignedIn, resolve_actor, user_by_email
from carecli.services.auth.login import login as sign_in
from carecli.services.auth.sessions import SessionInfo, end_session, list_sessions, revoke_session
from carecli.services.auth.tokens import (
    ApiTokenInfo,
    create_api_token,
    list_api_tokens,
    parse_lifetime,
    parse_scopes,
    revoke_api_token,
)

CHANNEL: Channel = "cli"


def _open() -> tuple[Settings, Databases]:
    settings = load_settings()
    databases = open_databases(settings)
    require_head(databases)
    return settings, databases


def _signed_in() -> tuple[Settings, Databases, SignedIn]:
    settings, databases = _open()
    return settings, databases, resolve_actor(settings, databases, channel=CHANNEL)


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a {what} id (a UUID)") from None


# -- login / logout / whoami -------------------------------------------------------------


def _show_device_code(authorization: object) -> None:
    uri = getattr(authorization, "verification_uri", "")
    complete = getattr(authorization, "verification_uri_complete", None)
    code = getattr(authorization, "user_code", "")
    click.echo("To sign in, open this address in a browser on any device:", err=True)
    click.echo(f"  {complete or uri}", err=True)
    click.echo(f"and confirm the code {code}", err=True)
    click.echo("Waiting for you to approve...", err=True)


def _pick_interactively(users: Sequence[User]) -> User:
    if not sys.stdin.isatty():
        raise ConfigError("choose the user to sign in as", hint="`carecli login --user EMAIL`")
    click.echo("Local demo sign-in (embedded database). Sign in as:", err=True)
    for number, user in enumerate(users, start=1):
        click.echo(f"  {number:>3}. {_name(user)}", err=True)
    choice = click.prompt("number", type=click.IntRange(1, len(users)), err=True)
    return users[choice - 1]


@click.command("login")
@click.option("--user", "email", metavar="EMAIL",
              help="Local demo sign-in only (embedded database): the user to sign in as.")
def login_command(email: str | None) -> None:
    """Sign in: through your identity provider (device code), or on the embedded
    demo database by picking a user. The session is kept on this machine."""
    settings, databases = _open()
    result = sign_in(settings, databases, channel=CHANNEL, show=_show_device_code,
                     pick_demo_user=_pick_interactively, demo_email=email)
    role = f" as {result.role}" if result.role else ""
    click.echo(f"signed in as {_name(result.user)}{role}")
    click.echo(f"session ends after {settings.session_idle_minutes} minutes without activity, "
               f"at the latest {_when(result.session.ends_at)}")
    click.echo(f"session kept in {result.store}")
    if settings.api_token:
        click.echo(f"note: {TOKEN_ENV} is set and takes precedence over this session", err=True)


@click.command("logout")
def logout_command() -> None:
    """Sign out: end the session on the server and forget it on this machine."""
    settings, databases = _open()
    store = CredentialStore.for_settings(settings)
    raw = store.load(strict=False)
    if raw is None:
        click.echo("not signed in on this machine; nothing to do")
    else:
        ended = end_session(databases, raw, channel=CHANNEL)
        store.forget()
        click.echo("signed out: the session was ended" if ended else
                   "signed out: the session had already ended; forgotten on this machine")
    if settings.api_token:
        click.echo(f"note: {TOKEN_ENV} is still set; logout does not revoke API tokens "
                   "(`carecli tokens revoke ID`)", err=True)


def whoami_full() -> None:
    """``carecli whoami`` through the full sign-in check (see :mod:`carecli.cli.whoami_cmd`)."""
    _, _, me = _signed_in()
    effective = me.actor.permissions if me.actor.scopes is None else me.actor.permissions & me.actor.scopes
    echo_identity(me.user, me.role, effective)
    if me.via == "token" and me.token is not None:
        name = f" '{me.token.name}'" if me.token.name else ""
        click.echo(f"signed in via {TOKEN_ENV}: token {me.token.id}{name}, scopes {', '.join(me.token.scopes)}, "
                   f"expires {_when(me.token.expires_at)}")
    elif me.session is not None:
        echo_session(me.session.id, me.session.idle_deadline, me.session.ends_at, str(me.store))


# -- sessions --------------------------------------------------------------------


@click.group("sessions")
def sessions_group() -> None:
    """Your sign-in sessions (administrators: anyone's)."""


def _session_line(info: SessionInfo) -> str:
    mark = "*" if info.current else " "
    return (f"{mark} {info.id}  {info.status:<7}  started {_when(info.created_at)}  "
            f"idle deadline {_when(info.idle_deadline)}  ends {_when(info.ends_at)}  "
            f"from {info.ip_address or 'local'}  {info.user_agent or ''}").rstrip()


@sessions_group.command("list")
@click.option("--user", "email", metavar="EMAIL", help="Another user's sessions (needs users:admin).")
@click.option("--all", "include_over", is_flag=True, help="Include expired and ended sessions.")
def sessions_list(email: str | None, include_over: bool) -> None:
    """List sessions, newest first (* marks this one)."""
    settings, databases, me = _signed_in()
    user_id = user_by_email(databases, me.actor, email).id if email else None
    current = me.session.id if me.session else None
    infos = list_sessions(databases, settings, me.actor, user_id=user_id, include_over=include_over,
                          current_id=current)
    if not infos:
        click.echo("no sessions")
    for info in infos:
        click.echo(_session_line(info))


@sessions_group.command("revoke")
@click.argument("session_id")
def sessions_revoke(session_id: str) -> None:
    """End a session by id (yours, or anyone's with users:admin)."""
    target = _uuid(session_id, "session")
    settings, databases, me = _signed_in()
    revoke_session(databases, settings, me.actor, target)
    if me.session is not None and me.session.id == target:
        CredentialStore.for_settings(settings).forget()
        click.echo(f"session {target} ended; that was this machine's session, so you are signed out")
    else:
        click.echo(f"session {target} ended")


# -- tokens -----------------------------------------------------------------------


@click.group("tokens")
def tokens_group() -> None:
    """API tokens for scripts (set CARECLI_TOKEN): limited scopes, limited lifetime."""


def _token_line(info: ApiTokenInfo) -> str:
    return (f"{info.id}  {info.status:<7}  {info.name or '-'}  scopes {','.join(info.scopes)}  "
            f"created {_when(info.created_at)}  expires {_when(info.expires_at)}")


@tokens_group.command("create")
@click.option("--name", required=True, help="What or who uses the token (shown in lists).")
@click.option("--scopes", required=True, metavar="A,B",
              help="Permissions the token gets, comma-separated (a subset of yours), e.g. members:read.")
@click.option("--expires", "lifetime", default="30d", show_default=True, metavar="30d|12h|4w",
              help="Lifetime, at most 365d.")
def tokens_create(name: str, scopes: str, lifetime: str) -> None:
    """Create an API token. It is printed once, alone on stdout; only its hash is stored."""
    try:
        parsed_lifetime = parse_lifetime(lifetime)
        parsed_scopes = parse_scopes(scopes)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None
    _, databases, me = _signed_in()
    created = create_api_token(databases, me.actor, name=name, scopes=parsed_scopes, lifetime=parsed_lifetime)
    click.echo(f"token {created.info.id} '{created.info.name}' with scopes {', '.join(created.info.scopes)}, "
               f"expires {_when(created.info.expires_at)}.", err=True)
    click.echo("It is shown only this once: store it now (for scripts: CARECLI_TOKEN).", err=True)
    click.echo(created.secret)


@tokens_group.command("list")
@click.option("--user", "email", metavar="EMAIL", help="Another user's tokens (needs users:admin).")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked tokens.")
def tokens_list(email: str | None, include_revoked: bool) -> None:
    """List API tokens (never the tokens themselves)."""
    _, databases, me = _signed_in()
    user_id = user_by_email(databases, me.actor, email).id if email else None
    infos = list_api_tokens(databases, me.actor, user_id=user_id, include_revoked=include_revoked)
    if not infos:
        click.echo("no tokens")
    for info in infos:
        click.echo(_token_line(info))


@tokens_group.command("revoke")
@click.argument("token_id")
def tokens_revoke(token_id: str) -> None:
    """Revoke an API token by id (yours, or anyone's with users:admin)."""
    target = _uuid(token_id, "token")
    _, databases, me = _signed_in()
    info = revoke_api_token(databases, me.actor, target)
    click.echo(f"token {info.id} revoked")

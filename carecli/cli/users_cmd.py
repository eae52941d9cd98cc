"""``carecli users``, ``carecli roles`` and ``carecli sync``: who may use carecli, with which permissions.

Every command acts as the signed-in user (``carecli login``, or an API token
in ``CARECLI_TOKEN``) and every change is audited. ``users bootstrap-admin``
is the exception that makes the first administrator of a fresh installation.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click

from carecli.config import Settings, load_settings
from carecli.data import migrate
from carecli.data.actor import Actor
from carecli.data.databases import Databases, check_connection, open_databases, require_head
from carecli.data.records import Role
from carecli.errors import EXIT_FAILURE, DatabaseUnavailable, SchemaOutOfDate
from carecli.services import users as service
from carecli.services.auth.current import resolve_actor

SYNC_HINT = "run `carecli sync` once the platform database is reachable again"


# -- opening --------------------------------------------------------------------------


def _signed_in() -> tuple[Databases, Actor]:
    """Both databases (reachable, at head) and the signed-in actor."""
    settings = load_settings()
    databases = open_databases(settings)
    require_head(databases)
    return databases, resolve_actor(settings, databases, channel="cli").actor


def _signed_in_identity_first() -> tuple[Databases, Actor]:
    """Like :func:`_signed_in`, but only the identity database must be reachable.

    For deactivation and reactivation: cutting off a user's access must not
    wait for the platform database, whose side of the change can follow later.
    """
    settings: Settings = load_settings()
    databases = open_databases(settings, check=False)
    check_connection(databases.identity, "identity")
    _require_head_of(databases, "identity")
    try:
        check_connection(databases.platform, "platform")
    except DatabaseUnavailable:
        pass  # the unit of work notices too and defers the platform side
    else:
        _require_head_of(databases, "platform")
    return databases, resolve_actor(settings, databases, channel="cli").actor


def _require_head_of(databases: Databases, name: str) -> None:
    with databases.engine(name).connect() as connection:
        current = migrate.current_revision(connection, name)
    head = migrate.head_revision(name)
    if current != head:
        state = "not migrated" if current is None else f"at revision {current}"
        raise SchemaOutOfDate(f"the {name} database is {state}; this carecli needs revision {head}",
                              hint="run `carecli db upgrade`")


# -- output ---------------------------------------------------------------------------


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=_json_default))


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(header[i]), *(len(row[i]) for row in rows)]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(cells)).rstrip()

    click.echo(line(header))
    click.echo("  ".join("-" * width for width in widths))
    for row in rows:
        click.echo(line(row))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _name(first: str | None, last: str | None) -> str:
    return " ".join(part for part in (first, last) if part) or "-"


def _user_json(summary: service.UserSummary) -> dict[str, Any]:
    user = summary.user
    return {"id": user.id, "email": user.email, "external_user_id": user.external_user_id,
            "first_name": user.first_name, "last_name": user.last_name, "role": summary.role,
            "is_active": user.is_active is not False, "last_login_at": user.last_login_at,
            "created_at": user.created_at, "updated_at": user.updated_at}


def _role_json(role: Role) -> dict[str, Any]:
    return {"id": role.id, "name": role.name, "description": role.description,
            "permissions": list(role.permissions or []), "created_at": role.created_at,
            "updated_at": role.updated_at}


# -- users ----------------------------------------------------------------------------


@click.group("users")
def users_group() -> None:
    """Add, list and (de)activate users and change their roles (needs users:admin).

    Users sign in through the identity provider; --external-id is their
    subject there. USER arguments take an e-mail address or a user id.
    """


@users_group.command("add")
@click.option("--email", required=True, help="The user's e-mail address (stored lower-case, unique).")
@click.option("--external-id", required=True, help="The user's subject at the identity provider (OIDC 'sub').")
@click.option("--role", "role", required=True, metavar="NAME", help="The role to give (see `carecli roles list`).")
@click.option("--first", "first_name", help="First name.")
@click.option("--last", "last_name", help="Last name.")
def users_add(email: str, external_id: str, role: str, first_name: str | None, last_name: str | None) -> None:
    """Add a user with a role."""
    databases, actor = _signed_in()
    summary = service.add_user(databases, actor, email=email, external_id=external_id, role=role,
                               first_name=first_name, last_name=last_name)
    click.echo(f"added {summary.user.email} ({summary.user.id}) with role {summary.role}")


@users_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def users_list(as_json: bool) -> None:
    """List users (soft-deleted ones are left out)."""
    databases, actor = _signed_in()
    users = service.list_users(databases, actor)
    if as_json:
        _echo_json([_user_json(summary) for summary in users])
        return
    if not users:
        click.echo("no users yet: add one with `carecli users add`")
        return
    _print_table(("email", "name", "role", "active", "last login (UTC)", "id"), [
        (s.user.email, _name(s.user.first_name, s.user.last_name), s.role or "-",
         "yes" if s.user.is_active is not False else "no", _when(s.user.last_login_at), str(s.user.id))
        for s in users
    ])


@users_group.command("show")
@click.argument("user")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def users_show(user: str, as_json: bool) -> None:
    """Show one USER: role, permissions, sessions, tokens, specialist record."""
    databases, actor = _signed_in()
    details = service.show_user(databases, actor, user)
    specialist = details.specialist
    if as_json:
        data = _user_json(service.UserSummary(details.user, details.role))
        data.update({
            "permissions": sorted(details.permissions),
            "live_sessions": details.live_sessions,
            "live_tokens": details.live_tokens,
            "specialist": None if specialist is None else {"id": specialist.id,
                                                           "is_active": specialist.is_active is not False},
            "pending_platform_changes": details.pending_changes,
        })
        _echo_json(data)
        return
    u = details.user
    if specialist is not None:
        specialist_text = f"{specialist.id} ({'active' if specialist.is_active is not False else 'inactive'})"
    else:
        specialist_text = details.specialist_note or "none"
    rows = [
        ("id", str(u.id)),
        ("email", u.email),
        ("external id", u.external_user_id),
        ("name", _name(u.first_name, u.last_name)),
        ("role", details.role or "-"),
        ("active", "yes" if u.is_active is not False else "no"),
        ("last login", f"{_when(u.last_login_at)} UTC" if u.last_login_at else "never"),
        ("created", f"{_when(u.created_at)} UTC"),
        ("sessions", f"{details.live_sessions} not ended"),
        ("API tokens", f"{details.live_tokens} not revoked"),
        ("specialist", specialist_text),
        ("permissions", ", ".join(sorted(details.permissions)) or "none"),
    ]
    if details.pending_changes:
        rows.append(("pending", f"{_count(details.pending_changes, 'platform change')} not applied yet; {SYNC_HINT}"))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        click.echo(f"{label.ljust(width)}  {value}")


@users_group.command("set-role")
@click.argument("user")
@click.argument("role")
def users_set_role(user: str, role: str) -> None:
    """Give USER the role ROLE."""
    databases, actor = _signed_in()
    summary, changed = service.set_role(databases, actor, user, role)
    if changed:
        click.echo(f"{summary.user.email} now has role {summary.role}")
    else:
        click.echo(f"{summary.user.email} already has role {summary.role}: nothing changed")


def _report_status(change: service.StatusChange, verb: str) -> None:
    user = change.user
    if not change.changed:
        click.echo(f"{user.email} is already {verb}: nothing changed")
    elif verb == "inactive":
        click.echo(f"deactivated {user.email}: revoked {_count(change.revoked_sessions, 'session')} and "
                   f"{_count(change.revoked_tokens, 'API token')}")
    else:
        click.echo(f"reactivated {user.email} (they sign in again; old sessions and tokens stay revoked)")
    if change.deferred:
        why = f" ({change.deferral_reason})" if change.deferral_reason else ""
        click.echo(f"warning: the platform database could not be updated{why}; "
                   f"{_count(change.pending, 'change')} (specialist record, audit rows) pending: {SYNC_HINT}",
                   err=True)
    elif change.changed:
        click.echo(f"specialist record (if any) set {verb}")


@users_group.command("deactivate")
@click.argument("user")
def users_deactivate(user: str) -> None:
    """Deactivate USER: their sessions and API tokens are revoked at once, their specialist record made inactive.

    If the platform database is unreachable, the user is still cut off; the
    specialist record and the audit rows follow with `carecli sync`.
    """
    databases, actor = _signed_in_identity_first()
    _report_status(service.deactivate_user(databases, actor, user), "inactive")


@users_group.command("reactivate")
@click.argument("user")
def users_reactivate(user: str) -> None:
    """Reactivate USER and their specialist record (same deferral as deactivate)."""
    databases, actor = _signed_in_identity_first()
    _report_status(service.reactivate_user(databases, actor, user), "active")


@users_group.command("bootstrap-admin")
@click.option("--email", required=True, help="The administrator's e-mail address.")
@click.option("--external-id", required=True, help="Their subject at the identity provider (OIDC 'sub').")
@click.option("--first", "first_name", help="First name.")
@click.option("--last", "last_name", help="Last name.")
def users_bootstrap_admin(email: str, external_id: str, first_name: str | None, last_name: str | None) -> None:
    """Make the first administrator of a fresh installation (no sign-in needed).

    Also creates the default roles that are missing. Refused once any active
    user holds users:admin. Audited as carecli itself, naming the OS account.
    """
    settings = load_settings()
    databases = open_databases(settings)
    require_head(databases)
    user = service.bootstrap_admin(databases, email=email, external_id=external_id, first_name=first_name,
                                   last_name=last_name)
    click.echo(f"created administrator {user.email} ({user.id}); they can now run `carecli login`")


# -- roles ----------------------------------------------------------------------------


@click.group("roles")
def roles_group() -> None:
    """List, show, create and update roles and their permissions.

    Permissions come from a fixed vocabulary (see README, "Permissions");
    creating and updating roles needs users:admin.
    """


@roles_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def roles_list(as_json: bool) -> None:
    """List roles and their permissions."""
    databases, actor = _signed_in()
    roles = service.list_roles(databases, actor)
    if as_json:
        _echo_json([_role_json(role) for role in roles])
        return
    if not roles:
        click.echo("no roles yet: `carecli users bootstrap-admin` creates the default ones")
        return
    _print_table(("name", "permissions", "description"), [
        (role.name, ", ".join(role.permissions or []) or "-", role.description or "") for role in roles
    ])


@roles_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def roles_show(name: str, as_json: bool) -> None:
    """Show the role NAME."""
    databases, actor = _signed_in()
    role = service.show_role(databases, actor, name)
    if as_json:
        _echo_json(_role_json(role))
        return
    click.echo(f"name         {role.name}")
    click.echo(f"id           {role.id}")
    click.echo(f"description  {role.description or '-'}")
    click.echo("permissions  " + (", ".join(role.permissions or []) or "none"))


@roles_group.command("create")
@click.argument("name")
@click.option("--permissions", required=True, metavar="A,B", help="Comma-separated permissions.")
@click.option("--description", help="What the role is for.")
def roles_create(name: str, permissions: str, description: str | None) -> None:
    """Create the role NAME."""
    databases, actor = _signed_in()
    role = service.create_role(databases, actor, name, permissions, description)
    click.echo(f"created role {role.name} ({role.id}): {', '.join(role.permissions or []) or 'no permissions'}")


@roles_group.command("update")
@click.argument("name")
@click.option("--permissions", metavar="A,B", help="Replace the permissions (comma-separated).")
@click.option("--description", help="Replace the description.")
def roles_update(name: str, permissions: str | None, description: str | None) -> None:
    """Change the permissions and/or description of the role NAME."""
    if permissions is None and description is None:
        raise click.UsageError("give --permissions and/or --description")
    databases, actor = _signed_in()
    role, changed = service.update_role(databases, actor, name, permissions=permissions, description=description)
    if changed:
        click.echo(f"updated role {role.name}: {', '.join(role.permissions or []) or 'no permissions'}")
    else:
        click.echo(f"role {role.name} already looks like that: nothing changed")


# -- sync -----------------------------------------------------------------------------


@click.command("sync")
def sync_command() -> None:
    """Apply platform changes that user (de)activations still owe (needs users:admin).

    When the platform database was unreachable during `carecli users
    deactivate` or `reactivate`, the specialist record and the audit rows wait
    in the identity database; this applies them, oldest first. Exit code 1
    when some could not be applied.
    """
    databases, actor = _signed_in()
    result = service.sync_pending(databases, actor)
    if not result.applied and not result.errors:
        click.echo("nothing to sync: the platform database is up to date")
        return
    click.echo(f"applied {_count(result.applied, 'pending platform change')}")
    for line in result.errors:
        click.echo(f"could not apply {line}", err=True)
    if result.remaining:
        click.echo(f"{_count(result.remaining, 'change')} still pending; run `carecli sync` again "
                   "once the cause is fixed", err=True)
        sys.exit(EXIT_FAILURE)

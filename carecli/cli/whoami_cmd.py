"""``carecli whoami``: who you are signed in as. Quick where it can be (:mod:`carecli.services.auth.quick`).

Imports only what the quick path needs; the full check (:mod:`carecli.cli.auth_cmd`) is imported when the
quick one gives way, and decides, audits and explains exactly as every other command's sign-in check.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import click

from carecli.config import load_settings
from carecli.data.records import User


def when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def name_of(user: User) -> str:
    full = " ".join(part for part in (user.first_name, user.last_name) if part)
    return f"{user.email} ({full})" if full else user.email


def echo_identity(user: User, role: str | None, permissions: Iterable[str]) -> None:
    click.echo(f"user:         {name_of(user)}")
    click.echo(f"user id:      {user.id}")
    click.echo(f"role:         {role or '(none)'}")
    click.echo(f"permissions:  {', '.join(sorted(permissions)) or '(none)'}")


def echo_session(session_id: object, idle_deadline: datetime | None, ends_at: datetime | None, store: str) -> None:
    click.echo(f"session:      {session_id}, idle deadline {when(idle_deadline)}, "
               f"ends at the latest {when(ends_at)}")
    click.echo(f"session kept in {store}")


@click.command("whoami")
def whoami_command() -> None:
    """Who you are signed in as, what you may do, and where the session is kept."""
    from carecli.services.auth.quick import quick_whoami

    quick = quick_whoami(load_settings())
    if quick is None:
        from carecli.cli.auth_cmd import whoami_full

        whoami_full()
        return
    echo_identity(quick.user, quick.role, quick.permissions)
    echo_session(quick.session_id, quick.idle_deadline, quick.ends_at, quick.store)


__all__ = ["echo_identity", "echo_session", "name_of", "when", "whoami_command"]

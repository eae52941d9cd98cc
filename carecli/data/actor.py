"""Who is acting: the user, what their role allows, and where they are.

Every unit of work carries an ``Actor``; there is no ambient current user.
The audit log records the actor's id, client IP and user agent.
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from carecli import __version__
from carecli.data.permissions import Permission

Channel = Literal["tui", "cli", "ssh"]


def user_agent(channel: Channel) -> str:
    """``carecli/<version> (<tui|cli|ssh>)``."""
    return f"carecli/{__version__} ({channel})"


def client_ip(environ: Mapping[str, str] | None = None) -> str | None:
    """The SSH client's address from ``SSH_CONNECTION`` ("client port server port"), if any."""
    env = os.environ if environ is None else environ
    parts = env.get("SSH_CONNECTION", "").split()
    if not parts:
        return None
    try:
        return str(ipaddress.ip_address(parts[0]))
    except ValueError:
        return None


@dataclass(frozen=True)
class Actor:
    """The user behind a unit of work and what they may do.

    ``user_id`` is None only for :meth:`system`: key-custody operations
    (``carecli keys ...``) authorised by possession of the master key, not by
    a signed-in user.
    """

    user_id: uuid.UUID | None
    permissions: frozenset[str]
    user_agent: str
    ip_address: str | None = None
    role: str | None = None
    # API-token scopes narrow the role's permissions; None means a signed-in session.
    scopes: frozenset[str] | None = field(default=None)
    #: the break-the-glass grant this actor works under for the row being audited (see
    #: ``PlatformUnitOfWork.audit_actor``): every audit row it writes carries the grant's id
    emergency_grant: uuid.UUID | None = field(default=None)

    @classmethod
    def create(cls, user_id: uuid.UUID, permissions: Iterable[str], *, channel: Channel,
               role: str | None = None, scopes: Iterable[str] | None = None,
               environ: Mapping[str, str] | None = None) -> Actor:
        return cls(
            user_id=user_id,
            permissions=frozenset(permissions),
            user_agent=user_agent(channel),
            ip_address=client_ip(environ),
            role=role,
            scopes=frozenset(scopes) if scopes is not None else None,
        )

    @classmethod
    def system(cls, channel: Channel = "cli", *, environ: Mapping[str, str] | None = None) -> Actor:
        """carecli itself acting for whoever holds the master key: no user, no permissions.

        The audit row's user agent names the OS account that ran the command,
        the only identity there is until sign-in exists.
        """
        try:
            os_user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (containers)
            os_user = f"uid-{os.getuid()}" if hasattr(os, "getuid") else "unknown"
        return cls(
            user_id=None,
            permissions=frozenset(),
            user_agent=f"{user_agent(channel)[:-1]}; os-user={os_user})",
            ip_address=client_ip(environ),
            role="system",
        )

    def under_emergency(self, grant_id: uuid.UUID | None) -> Actor:
        """This actor, with its audit rows marked as done under emergency grant ``grant_id`` (None: unmarked)."""
        return self if grant_id == self.emergency_grant else replace(self, emergency_grant=grant_id)

    def can(self, permission: Permission | str) -> bool:
        name = str(permission)
        if name not in self.permissions:
            return False
        return self.scopes is None or name in self.scopes

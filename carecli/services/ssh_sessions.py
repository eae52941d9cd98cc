"""The sessions of the SSH host: one fresh ``sessions`` row per SSH login, audited start and end.

Both ways in use it: ``carecli serve-ssh`` (our own asyncssh server) and
``carecli ssh-session`` under OpenSSH's ``ForceCommand``. The SSH key has
already said who the user is (:mod:`carecli.services.auth.ssh_keys`); this
module opens the carecli session that the app then runs in, signed in as
that user, and closes it with the reason the SSH session ended.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from carecli.config import Settings
from carecli.data import audit
from carecli.data.actor import Actor
from carecli.data.databases import Databases
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.errors import EXIT_AUTH, EXIT_IDLE, EXIT_OK, NotFound
from carecli.services.auth.sessions import start_session
from carecli.services.auth.ssh_keys import KeyHolder

#: why an SSH session ended (audited with its end)
EndReason = Literal["quit", "idle", "disconnect", "revoked", "error", "shutdown", "lifetime"]
MAX_CLIENT_VERSION = 80
#: how the app process ended itself -> the session's end reason (any other exit is an error)
_EXIT_REASONS: Mapping[int, EndReason] = {EXIT_OK: "quit", EXIT_IDLE: "idle", EXIT_AUTH: "revoked"}


def reason_for_exit(code: int) -> EndReason:
    """The end reason of an SSH session whose app process exited with ``code``."""
    return _EXIT_REASONS.get(code, "error")


def clean_client_version(text: str | None) -> str | None:
    """The client's SSH version string, printable and short (it is attacker-chosen text)."""
    if not text:
        return None
    printable = "".join(ch for ch in text if ch.isprintable() and ch not in "()")
    return printable[:MAX_CLIENT_VERSION] or None


def ssh_actor(holder: KeyHolder, *, environ: Mapping[str, str], client_version: str | None) -> Actor:
    """The key holder as an actor of the ``ssh`` channel, the client IP from ``SSH_CONNECTION``."""
    actor = Actor.create(holder.user.id, holder.permissions, channel="ssh", role=holder.role, environ=environ)
    client = clean_client_version(client_version)
    if client:
        actor = replace(actor, user_agent=f"{actor.user_agent[:-1]}; {client})")
    return actor


@dataclass(frozen=True)
class SshSession:
    """An open carecli session behind one SSH session. ``token`` goes to the app process only."""

    session_id: uuid.UUID
    token: str
    holder: KeyHolder
    actor: Actor

    def __repr__(self) -> str:  # the token must never reach a log through repr
        return f"SshSession(session_id={self.session_id}, user={self.holder.user.id}, token='***')"


def open_ssh_session(settings: Settings, databases: Databases, holder: KeyHolder, *,
                     environ: Mapping[str, str], client_version: str | None,
                     terminal: Mapping[str, Any] | None = None) -> SshSession:
    """Start a fresh session for the key's user (client IP, SSH user agent), audited as ``ssh_session_start``."""
    actor = ssh_actor(holder, environ=environ, client_version=client_version)
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        token, session = start_session(uow, holder.user, settings)
        uow.users.record_login(holder.user.id)
        audit.write(uow.audit_connection, actor, "session", session.id, "ssh_session_start", None,
                    {"key_id": str(holder.key_id), "fingerprint": holder.fingerprint, **(terminal or {})})
        uow.commit()
    return SshSession(session_id=session.id, token=token, holder=holder, actor=actor)


def close_ssh_session(databases: Databases, session: SshSession, reason: EndReason, *,
                      seconds: float | None = None) -> None:
    """Audit ``ssh_session_end`` with the reason, then end the carecli session (its revoke is audited too)."""
    values: dict[str, Any] = {"reason": reason}
    if seconds is not None:
        values["seconds"] = round(seconds, 1)
    audit.write_committed(databases.platform, session.actor, "session", session.session_id, "ssh_session_end",
                          values)
    with IdentityUnitOfWork(databases.identity, databases.platform, session.actor) as uow:
        try:
            uow.sessions.revoke(session.session_id)
        except NotFound:
            return  # already ended (revoked by an administrator, the user deactivated)
        uow.commit()

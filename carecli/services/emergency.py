"""Break the glass: emergency access to one member's PHI, and the supervisors' review of it.

The use cases behind ``carecli audit emergencies``/``audit review`` and the
app's break-the-glass dialog and review queue. Each opens its own short unit
of work for the actor; the rules (who may, how long, what is audited) live in
:class:`~carecli.data.repositories.emergency.EmergencyAccessRepository`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from carecli.data.actor import Actor
from carecli.data.databases import Databases
from carecli.data.records import AuditEntry
from carecli.data.repositories.emergency import EmergencyGrant
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.data.unit_of_work import PlatformUnitOfWork


@dataclass(frozen=True)
class QueueEntry:
    """A grant with the names of its holder and reviewer, for the queue."""

    grant: EmergencyGrant
    who: str
    reviewer: str | None


class EmergencyAccess:
    """Emergency access for one actor on the two databases."""

    def __init__(self, databases: Databases, actor: Actor, *, minutes: int,
                 cipher: Callable[[], Any] | None = None) -> None:
        self.databases = databases
        self.actor = actor
        self.minutes = minutes
        self._cipher = cipher

    def _uow(self) -> PlatformUnitOfWork:
        return PlatformUnitOfWork(self.databases.platform, self.actor, cipher=self._cipher)

    def request(self, member_id: uuid.UUID, reason: str, confirmation: str) -> EmergencyGrant:
        """Break the glass for ``member_id``: a grant for the configured minutes (audited)."""
        with self._uow() as uow:
            grant = uow.emergency.request(member_id, reason, confirmation, minutes=self.minutes)
            uow.commit()
        return grant

    def live_grant(self, member_id: uuid.UUID) -> EmergencyGrant | None:
        """The actor's live grant on this member, if any (for the app to show until when)."""
        with self._uow() as uow:
            return uow.emergency.live_grant(member_id)

    def queue(self, *, include_reviewed: bool = False) -> list[QueueEntry]:
        """Unreviewed grants (or all), newest first, with action counts and names."""
        with self._uow() as uow:
            grants = uow.emergency.queue(include_reviewed=include_reviewed)
        names = self._names([g.user_id for g in grants] + [g.reviewed_by for g in grants if g.reviewed_by])
        return [QueueEntry(g, names.get(g.user_id, str(g.user_id)[:8]),
                           names.get(g.reviewed_by, str(g.reviewed_by)[:8]) if g.reviewed_by else None)
                for g in grants]

    def get(self, grant_id: uuid.UUID) -> QueueEntry:
        with self._uow() as uow:
            grant = uow.emergency.get(grant_id)
        names = self._names([grant.user_id, grant.reviewed_by])
        return QueueEntry(grant, names.get(grant.user_id, str(grant.user_id)[:8]),
                          names.get(grant.reviewed_by, str(grant.reviewed_by)[:8]) if grant.reviewed_by else None)

    def actions(self, grant_id: uuid.UUID) -> list[AuditEntry]:
        """The audit rows marked with the grant, oldest first."""
        with self._uow() as uow:
            return uow.emergency.actions(grant_id)

    def review(self, grant_id: uuid.UUID, note: str) -> EmergencyGrant:
        """Mark a grant reviewed (ends it if still live); audited."""
        with self._uow() as uow:
            grant = uow.emergency.review(grant_id, note)
            uow.commit()
        return grant

    def _names(self, user_ids: Iterable[uuid.UUID | None]) -> dict[uuid.UUID, str]:
        with IdentityUnitOfWork(self.databases.identity, self.databases.platform, self.actor) as uow:
            return uow.users.display_names(user_id for user_id in user_ids if user_id is not None)

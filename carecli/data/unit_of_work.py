"""The one way to open a platform transaction: a unit of work that carries the actor.

    with PlatformUnitOfWork(engine, actor, keys=key_provider) as uow:
        member = uow.members.create(...)
        uow.commit()

Leaving the block without ``commit()`` rolls everything back, audit rows
included. Repositories are created on first use and share the transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from functools import cached_property
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, select

from carecli.data import audit, notify
from carecli.data.actor import Actor
from carecli.data.models.platform import DataKey
from carecli.errors import CarecliError, KeyUnavailable

if TYPE_CHECKING:
    # Only for types: the cipher (and cryptography with it) loads when a unit of work first needs one,
    # not with every process that opens the databases (the app's launch shows the worklist without it).
    from carecli.data.crypto.fields import FieldCipher
    from carecli.data.repositories.audit_log import AuditLogRepository
    from carecli.data.repositories.calls import CallRepository
    from carecli.data.repositories.emergency import EmergencyAccessRepository
    from carecli.data.repositories.enrollments import EnrollmentRepository
    from carecli.data.repositories.member_search import MemberSearchRepository
    from carecli.data.repositories.members import MemberRepository
    from carecli.data.repositories.metadata import MetadataRepository
    from carecli.data.repositories.plans import PlanRepository
    from carecli.data.repositories.risk_flags import RiskFlagRepository
    from carecli.data.repositories.specialists import SpecialistPlanRepository, SpecialistRepository
    from carecli.data.repositories.worklist import WorklistRepository

CipherProvider = Callable[[], "FieldCipher"]
UserLookup = Callable[[uuid.UUID], bool]
NIL = uuid.UUID(int=0)
_PRIMARY_RELOADS = 3


def member_of(entity_type: str, entity_id: uuid.UUID | None, values: Mapping[str, Any] | None) -> uuid.UUID | None:
    """The member an audit row is about: the member itself, a member's metadata, or a row with a member_id."""
    if entity_type == "member":
        return entity_id
    if values is None:
        return None
    if entity_type == "metadata":
        owner = values.get("entity_id") if values.get("entity_type") == "member" else None
    else:
        owner = values.get("member_id")
    return owner if isinstance(owner, uuid.UUID) else None


class PlatformUnitOfWork:
    """A transaction on the platform database on behalf of ``actor``."""

    def __init__(self, engine: Engine, actor: Actor, *, cipher: CipherProvider | None = None,
                 user_exists: UserLookup | None = None, audit_engine: Engine | None = None,
                 source: str | None = None) -> None:
        if actor is None:
            raise CarecliError("no actor: every read and write needs a signed-in user or an API token")
        self.engine = engine
        #: where committed audit rows (PHI reads, denials) go: the primary, also when ``engine`` is a replica
        self.audit_engine = audit_engine or engine
        self.actor = actor
        self._cipher_provider = cipher
        self._cipher: FieldCipher | None = None
        self._locked_primary: uuid.UUID | None = None
        #: checks identity.users for the cross-database reference specialists.user_id
        self.user_exists = user_exists
        self._connection: Connection | None = None
        self._committed = False
        #: who this unit of work speaks for in change notices (a session of the app, else this process)
        self.source = source or notify.PROCESS_SOURCE
        #: rows written so far, announced to other sessions when (and only if) the transaction commits
        self.changes: list[notify.Change] = []
        #: member id -> the actor's live emergency grant on them (None: none), looked up once per unit of work
        self._emergency_grants: dict[uuid.UUID, uuid.UUID | None] = {}

    def __enter__(self) -> PlatformUnitOfWork:
        self._connection = self.engine.connect()
        self._connection.begin()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._connection is not None
        try:
            if not self._committed:
                self._connection.rollback()
        finally:
            self._connection.close()
            self._connection = None

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            raise CarecliError("the unit of work is not open: use it in a `with` block")
        return self._connection

    @property
    def audit_connection(self) -> Connection:
        """Where this unit of work's change audit rows go: its own transaction."""
        return self.connection

    def commit(self) -> None:
        # NOTIFY inside the transaction: delivered with the commit, never for a rollback.
        if self.changes:
            notify.send(self.connection, self.changes, self.source)
            self.changes = []
        self.connection.commit()
        self._committed = True

    def record_change(self, entity_type: str, row: Mapping[str, Any]) -> None:
        """Note a written row (ids only) for the change notice sent at commit."""
        self.changes.append(notify.change_for(entity_type, row))

    # -- keys -----------------------------------------------------------------

    def cipher(self) -> FieldCipher:
        """The field cipher, with a primary key that is still primary.

        The primary key's row is share-locked for the rest of the transaction,
        so a concurrent ``keys rotate`` cannot demote it under us; if a
        rotation already did, the cipher is reloaded and the new key used.
        """
        if self._cipher_provider is None:
            raise CarecliError("this unit of work was opened without access to the encryption keys")
        if self._cipher is None:
            self._cipher = self._cipher_provider()
        if self._locked_primary is not None and self._cipher.primary_id == self._locked_primary:
            return self._cipher  # already share-locked in this transaction
        # Check (and lock) again after a reload too: the reloaded primary must be
        # locked as well, or a second rotation could demote it before we commit.
        for _ in range(_PRIMARY_RELOADS):
            status = self.connection.execute(
                select(DataKey.status).where(DataKey.id == self._cipher.primary_id)
                .with_for_update(read=True)
            ).scalar_one_or_none()
            if status == "primary":
                self._locked_primary = self._cipher.primary_id
                return self._cipher
            self._cipher.reload()
        raise KeyUnavailable("the primary data key kept changing while this change was being saved",
                             hint="key rotations are running back to back; try again")

    def reader_cipher(self) -> FieldCipher:
        """The cipher for decrypting only (no primary-key lock needed)."""
        if self._cipher_provider is None:
            raise CarecliError("this unit of work was opened without access to the encryption keys")
        if self._cipher is None:
            self._cipher = self._cipher_provider()
        return self._cipher

    # -- audit ----------------------------------------------------------------

    def audit_denial(self, entity_type: str, entity_id: uuid.UUID | None, operation: str, permission: str) -> None:
        """A refused operation is audited in its own committed transaction."""
        audit.write_committed(self.audit_engine, self.audit_actor(entity_type, entity_id), entity_type,
                              entity_id or NIL, "deny", {"operation": operation, "permission": str(permission)})

    def audit_read(self, entity_type: str, entity_id: uuid.UUID, details: dict) -> None:
        """A PHI read, committed before the value is returned (fail closed)."""
        audit.write_committed(self.audit_engine, self.audit_actor(entity_type, entity_id), entity_type, entity_id,
                              "read", details)

    # -- emergency access ("break the glass") -----------------------------------------

    def emergency_grant(self, member_id: uuid.UUID) -> uuid.UUID | None:
        """The id of the actor's live emergency grant on this member (database clock), or None."""
        if member_id not in self._emergency_grants:
            grant = self.emergency.live_grant(member_id)
            self._emergency_grants[member_id] = grant.id if grant is not None else None
        return self._emergency_grants[member_id]

    def forget_emergency_grants(self) -> None:
        """Look the grants up again (after one was made or ended in this unit of work)."""
        self._emergency_grants.clear()

    def audit_actor(self, entity_type: str, entity_id: uuid.UUID | None,
                    values: Mapping[str, Any] | None = None) -> Actor:
        """Who an audit row names: the actor, marked with their emergency grant when the row is about a member
        they hold a live grant on (the one place every repository's audit rows pass through)."""
        if not self.emergency.may_hold_grants():
            return self.actor
        member_id = member_of(entity_type, entity_id, values)
        return self.actor.under_emergency(self.emergency_grant(member_id) if member_id is not None else None)

    # -- repositories -----------------------------------------------------------

    @cached_property
    def members(self) -> MemberRepository:
        from carecli.data.repositories.members import MemberRepository

        return MemberRepository(self)

    @cached_property
    def member_search(self) -> MemberSearchRepository:
        from carecli.data.repositories.member_search import MemberSearchRepository

        return MemberSearchRepository(self)

    @cached_property
    def specialists(self) -> SpecialistRepository:
        from carecli.data.repositories.specialists import SpecialistRepository

        return SpecialistRepository(self)

    @cached_property
    def specialist_plans(self) -> SpecialistPlanRepository:
        from carecli.data.repositories.specialists import SpecialistPlanRepository

        return SpecialistPlanRepository(self)

    @cached_property
    def calls(self) -> CallRepository:
        from carecli.data.repositories.calls import CallRepository

        return CallRepository(self)

    @cached_property
    def plans(self) -> PlanRepository:
        from carecli.data.repositories.plans import PlanRepository

        return PlanRepository(self)

    @cached_property
    def enrollments(self) -> EnrollmentRepository:
        from carecli.data.repositories.enrollments import EnrollmentRepository

        return EnrollmentRepository(self)

    @cached_property
    def risk_flags(self) -> RiskFlagRepository:
        from carecli.data.repositories.risk_flags import RiskFlagRepository

        return RiskFlagRepository(self)

    @cached_property
    def metadata(self) -> MetadataRepository:
        from carecli.data.repositories.metadata import MetadataRepository

        return MetadataRepository(self)

    @cached_property
    def emergency(self) -> EmergencyAccessRepository:
        from carecli.data.repositories.emergency import EmergencyAccessRepository

        return EmergencyAccessRepository(self)

    @cached_property
    def audit_log(self) -> AuditLogRepository:
        from carecli.data.repositories.audit_log import AuditLogRepository

        return AuditLogRepository(self)

    @cached_property
    def worklist(self) -> WorklistRepository:
        from carecli.data.repositories.worklist import WorklistRepository

        return WorklistRepository(self)

"""The specialist's desk: every question the app asks of the databases, as plain blocking calls.

Screens never build SQL and never touch a unit of work: they call a
:class:`Desk` method inside a thread worker and post the result back as a
message. Each method opens its own short unit of work for the signed-in
actor, so every read and write is permission-checked and audited by the
repositories underneath, exactly as for the CLI.
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo

from carecli.config import Settings
from carecli.data import notify
from carecli.data.actor import Channel
from carecli.data.bulk.catalog import EXTERNAL_MEMBER_NUMBER
from carecli.data.crypto.runtime import cipher_provider
from carecli.data.databases import Databases
from carecli.data.permissions import Permission
from carecli.data.records import AuditEntry, Call, Enrollment, MetadataEntry, Plan, RiskFlag, Role, Specialist
from carecli.data.replica import ReadUnitOfWork, WriteUnitOfWork
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.data.repositories.metadata import NOTE_KEY_PREFIX, note_key
from carecli.data.repositories.worklist import Worklist
from carecli.data.unit_of_work import PlatformUnitOfWork
from carecli.errors import ConflictError, NotFound
from carecli.services.auth.credentials import CredentialStore
from carecli.services.auth.current import SignedIn, resolve_actor
from carecli.services.auth.sessions import end_session

if TYPE_CHECKING:
    from carecli.data.records import Member
    from carecli.data.repositories.emergency import EmergencyGrant
    from carecli.data.repositories.member_search import CountEstimate, MemberPage, MemberQuery, MemberSummary
    from carecli.data.repositories.members import RevealedPhi
    from carecli.data.repositories.risk_flags import FlagResolution
    from carecli.services.emergency import EmergencyAccess, QueueEntry
    from carecli.services.users import StatusChange, UserSummary

#: metadata keys shown as a member's notes are ``note:<time>`` (everything else in metadata is a system fact)
NOTE_PREFIX = NOTE_KEY_PREFIX.removesuffix(":")

_K = TypeVar("_K")
_V = TypeVar("_V")


def _get(mapping: Mapping[_K, _V], key: _K | None) -> _V | None:
    """``mapping.get(key)``, where a missing key (None: no specialist, no user) finds nothing."""
    return mapping.get(key) if key is not None else None


@dataclass(frozen=True)
class EnrollmentView:
    """An enrollment with its plan's code and name, for display."""

    enrollment: Enrollment
    plan_code: str
    plan_name: str


@dataclass(frozen=True)
class AccessEntry:
    """One line of "who accessed this record": an audit row with the user's name."""

    entry: AuditEntry
    who: str


@dataclass(frozen=True, eq=False)
class MemberVisit:
    """One audited opening of a member's file by one desk (one visit, one read).

    The member screen hands it back only to reload after its own save, which is
    not a new access. Compared by identity; the desk remembers the visits it handed
    out only while someone holds them (a screen showing the file), so a visit
    cannot be forged, used by another desk or outlive its screen.
    """

    member_id: uuid.UUID

    def __repr__(self) -> str:
        return f"MemberVisit(member_id={self.member_id})"


@dataclass(frozen=True)
class MemberFile:
    """Everything the member detail screen shows, read in one audited open."""

    member: Member
    enrollments: list[EnrollmentView]
    calls: list[Call]
    flags: list[RiskFlag]
    notes: list[MetadataEntry]
    #: None when the user may not read the audit log (only supervisors and auditors see it)
    access: list[AccessEntry] | None
    #: flag id -> its resolution, for the resolved flags among ``flags``
    resolutions: dict[uuid.UUID, FlagResolution] = field(default_factory=dict)
    #: the source system's member number (import's ``external_member_number``), when there is one
    member_number: str | None = None
    #: the visit this file was read in: hand it back to :meth:`Desk.open_member` to reload without a new read
    visit: MemberVisit | None = None

    def __repr__(self) -> str:
        return f"MemberFile(member_id={self.member.id})"

    @property
    def primary_plan(self) -> EnrollmentView | None:
        """The live primary enrollment, if any."""
        return next((view for view in self.enrollments if view.enrollment.is_primary
                     and view.enrollment.status == "active" and view.enrollment.deleted_at is None), None)

    def open_flags(self) -> list[RiskFlag]:
        return [flag for flag in self.flags if flag.id not in self.resolutions]

    def resolved_flags(self) -> list[RiskFlag]:
        return [flag for flag in self.flags if flag.id in self.resolutions]


@dataclass(frozen=True)
class FlagView:
    """One risk flag with what the flag screen shows around it."""

    flag: RiskFlag
    resolution: FlagResolution | None
    member_name: str
    call: Call | None
    #: the name of the user behind the flag's specialist
    raised_by: str | None
    #: the name of whoever resolved it
    resolved_by: str | None

    def __repr__(self) -> str:
        return f"FlagView(flag_id={self.flag.id})"


@dataclass(frozen=True)
class CallView:
    """One call with what the call screen shows around it."""

    call: Call
    member_name: str
    #: the name of the user behind the call's specialist
    specialist_name: str | None
    #: who logged (created) the call and when, from its audit row
    logged_by: str | None
    logged_at: datetime | None
    flags: list[FlagView]
    #: the signed-in user is the call's specialist or logged it (may edit its notes)
    is_own: bool

    def __repr__(self) -> str:
        return f"CallView(call_id={self.call.id})"


@dataclass(frozen=True)
class NextAttempt:
    """A call to schedule in the same step as completing, cancelling or missing one."""

    when: datetime
    call_type: str = "follow_up"


@dataclass(frozen=True)
class AuditFilter:
    entity_type: str | None = None
    entity_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def local_day_bounds(now: datetime | None = None, zone: str | None = None) -> tuple[date, datetime, datetime]:
    """Today in the IANA zone ``zone`` (None: the system's local zone), and its start and end as naive UTC
    (how the database keeps time)."""
    tz = ZoneInfo(zone) if zone else None
    local = (now or datetime.now(timezone.utc)).astimezone(tz)
    start = datetime.combine(local.date(), time.min, tzinfo=local.tzinfo if tz is None else tz)
    end = datetime.combine(local.date() + timedelta(days=1), time.min, tzinfo=start.tzinfo)

    def to_utc(moment: datetime) -> datetime:
        return moment.astimezone(timezone.utc).replace(tzinfo=None)

    return local.date(), to_utc(start), to_utc(end)


class Desk:
    """The signed-in user's access to carecli's data, for the app."""

    def __init__(self, settings: Settings, databases: Databases, signed_in: SignedIn, *,
                 channel: Channel = "tui", cipher: Callable[[], Any] | None = None,
                 store: CredentialStore | None = None) -> None:
        self.settings = settings
        self.databases = databases
        self.signed_in = signed_in
        self.channel = channel
        self._cipher = cipher or cipher_provider(settings, databases)
        self._store = store
        self._specialist: Specialist | None = None
        self._specialist_loaded = False
        #: this desk's id in change notices, so its screens can tell their own writes from others'
        self.source = f"d-{uuid.uuid4().hex[:12]}"
        #: the member visits this desk audited and that a screen still holds (see MemberVisit)
        self._visits: weakref.WeakSet[MemberVisit] = weakref.WeakSet()

    @classmethod
    def resume(cls, settings: Settings, databases: Databases, *, channel: Channel = "tui",
               store: CredentialStore | None = None, cipher: Callable[[], Any] | None = None) -> Desk:
        """The desk of the session stored on this machine (or ``CARECLI_TOKEN``); :class:`AuthError` if none."""
        signed_in = resolve_actor(settings, databases, channel=channel, store=store)
        return cls(settings, databases, signed_in, channel=channel, cipher=cipher, store=store)

    # -- who ----------------------------------------------------------------------

    @property
    def actor(self):  # noqa: ANN201 - Actor
        return self.signed_in.actor

    @property
    def user_id(self) -> uuid.UUID:
        return self.signed_in.user.id

    @property
    def display_name(self) -> str:
        user = self.signed_in.user
        return " ".join(p for p in (user.first_name, user.last_name) if p) or user.email

    @property
    def role(self) -> str | None:
        return self.signed_in.role

    def can(self, permission: Permission | str) -> bool:
        return self.actor.can(permission)

    def check_session(self) -> None:
        """Check the session is still good (not revoked, user active) and slide its idle deadline."""
        if self.signed_in.via == "session":
            self.signed_in = resolve_actor(self.settings, self.databases, channel=self.channel, store=self._store)

    def sign_out(self) -> None:
        """End this session in the database and forget it on this machine."""
        if self.signed_in.via != "session":
            return
        store = self._store or CredentialStore.for_settings(self.settings)
        raw = store.load(strict=False)
        if raw is not None:
            end_session(self.databases, raw, channel=self.channel)
            store.forget()

    # -- units of work ---------------------------------------------------------------

    def _uow(self) -> PlatformUnitOfWork:
        """The primary: writes, and reads that must see them (open a member, reveal, edit a call)."""
        return WriteUnitOfWork(self.databases.routing, self.actor, cipher=self._cipher, source=self.source)

    def _read_uow(self) -> PlatformUnitOfWork:
        """Lists, searches and reports: the read replica when it may serve (see carecli.data.replica)."""
        return ReadUnitOfWork(self.databases.routing, self.actor, cipher=self._cipher)

    # -- live updates ---------------------------------------------------------------------

    def watch_changes(self, callback: Callable[[notify.Notice], None]) -> notify.Subscription:
        """Call ``callback`` (on the listener's thread) for every change committed by anyone.

        The process shares one listener connection; ``close()`` the returned
        subscription to stop.
        """
        routing = self.databases.routing

        def on_notice(notice: notify.Notice) -> None:
            # Someone committed on the primary: the replica may not have replayed it yet, so the reloads
            # this notice causes read from the primary for the read-your-writes window.
            routing.note_write()
            callback(notice)

        return notify.subscribe(self.databases.platform, on_notice)

    @contextmanager
    def _named_conflicts(self, what: str) -> Iterator[None]:
        """A conflict names who changed the record and when (staff names, never member data)."""
        try:
            yield
        except ConflictError as exc:
            who: str | None = None
            if exc.changed_by == self.user_id:
                who = "you (in another session)"
            elif isinstance(exc.changed_by, uuid.UUID):
                who = self._names_of([exc.changed_by]).get(exc.changed_by)  # identity down: no name, still a conflict
            when = f" at {exc.changed_at:%Y-%m-%d %H:%M:%S} UTC" if exc.changed_at is not None else ""
            detail = f": {who} changed it{when}" if who else (f" (changed{when})" if when else "")
            raise ConflictError(f"this {what} was changed by someone else since you read it{detail}",
                                hint="reload it and apply your change again",
                                changed_by=exc.changed_by, changed_at=exc.changed_at) from None

    def _identity(self) -> IdentityUnitOfWork:
        return IdentityUnitOfWork(self.databases.identity, self.databases.platform, self.actor)

    def specialist(self) -> Specialist | None:
        """The signed-in user's specialist record (cached; None for non-specialists)."""
        if not self._specialist_loaded:
            with self._read_uow() as uow:
                self._specialist = uow.worklist.specialist_for_user(self.user_id)
            self._specialist_loaded = True
        return self._specialist

    # -- reads --------------------------------------------------------------------------

    def worklist(self, now: datetime | None = None) -> Worklist:
        today, start, end = local_day_bounds(now, self.settings.timezone)
        with self._read_uow() as uow:
            worklist = uow.worklist.build(today, start, end)
        self._specialist, self._specialist_loaded = worklist.specialist, True
        return worklist

    def search_members(self, query: MemberQuery, *, after: Any = None, limit: int = 50) -> MemberPage:
        with self._read_uow() as uow:
            return uow.member_search.search(query, after=after, limit=limit)

    def count_members(self, query: MemberQuery) -> CountEstimate:
        with self._read_uow() as uow:
            return uow.member_search.count(query)

    def member_names(self, text: str, *, limit: int = 8) -> list[MemberSummary]:
        with self._read_uow() as uow:
            return uow.member_search.names(text, limit=limit)

    def open_member(self, member_id: uuid.UUID, *, visit: MemberVisit | None = None) -> MemberFile:
        """Open a member's file: an audited PHI read, then their enrollments, calls, flags and notes.

        With the ``visit`` of a file this desk opened earlier (a screen reloading what it shows, after a
        save or someone else's change), the file is read again without a new ``read`` audit row: one
        visit, one read. A visit this desk did not hand out, or of another member, opens anew (audited).
        """
        same_visit = visit is not None and visit.member_id == member_id and visit in self._visits
        current = visit if visit is not None and same_visit else MemberVisit(member_id)
        with self._uow() as uow:
            member = uow.members.reread(member_id) if same_visit else uow.members.open(member_id)
            plans = {plan.id: plan for plan in uow.plans.list(include_deleted=True)}
            enrollments = [
                EnrollmentView(e, plans[e.insurance_plan_id].plan_code if e.insurance_plan_id in plans else "?",
                               plans[e.insurance_plan_id].plan_name if e.insurance_plan_id in plans else "?")
                for e in uow.enrollments.for_member(member_id)]
            calls = uow.calls.for_member(member_id)
            flags = uow.risk_flags.for_member(member_id)
            resolutions = uow.risk_flags.resolutions(flag.id for flag in flags)
            notes = uow.metadata.notes("member", member_id)  # people's notes only, never a system fact
            number_value = uow.metadata.value("member", member_id, EXTERNAL_MEMBER_NUMBER)
            number = str(number_value) if number_value else None
            audit = uow.audit_log.for_entity("member", member_id, limit=50) if self.can(Permission.AUDIT_READ) \
                else None
        access = self._named(audit) if audit is not None else None
        self._visits.add(current)
        return MemberFile(member, enrollments, calls, flags, notes, access, resolutions, number, current)

    def reveal(self, member_id: uuid.UUID, fields: Iterable[str], reason: str) -> RevealedPhi:
        """Decrypt SSN and/or DOB after auditing who, which and why (needs phi:reveal)."""
        with self._uow() as uow:
            return uow.members.reveal(member_id, fields, reason)

    def call(self, call_id: uuid.UUID) -> Call:
        with self._uow() as uow:
            return uow.calls.get(call_id)

    def call_view(self, call_id: uuid.UUID) -> CallView:
        """A call with its member's name, who logged it and when, and its flags (read from the primary)."""
        with self._uow() as uow:
            call = uow.calls.get(call_id)
            member_name = uow.members.display_name(call.member_id) if call.member_id else "—"
            logged_by, logged_at = uow.calls.logged_by(call_id)
            flags = uow.risk_flags.for_call(call_id)
            resolutions = uow.risk_flags.resolutions(flag.id for flag in flags)
            specialist_users = uow.specialists.user_ids({call.specialist_id, *(f.specialist_id for f in flags)})
            own = uow.calls.is_own(call)
        names = self._names_of([logged_by, *specialist_users.values(),
                                *(r.by for r in resolutions.values())])
        specialist_name = _get(names, _get(specialist_users, call.specialist_id))
        views = [FlagView(flag, resolutions.get(flag.id), member_name, call,
                          _get(names, _get(specialist_users, flag.specialist_id)),
                          _get(names, resolutions[flag.id].by) if flag.id in resolutions else None)
                 for flag in flags]
        return CallView(call, member_name, specialist_name, _get(names, logged_by), logged_at, views, own)

    def flag_view(self, flag_id: uuid.UUID) -> FlagView:
        """A risk flag with its member's name, its call, who raised it and its resolution."""
        with self._uow() as uow:
            flag = uow.risk_flags.get(flag_id)
            resolution = uow.risk_flags.resolution(flag_id)
            member_name = uow.members.display_name(flag.member_id)
            try:
                call = uow.calls.get(flag.call_record_id)
            except NotFound:
                call = None  # deleted since: the flag still says what was found
            users = uow.specialists.user_ids({flag.specialist_id})
        names = self._names_of([users.get(flag.specialist_id), resolution.by if resolution else None])
        return FlagView(flag, resolution, member_name, call,
                        _get(names, _get(users, flag.specialist_id)),
                        names.get(resolution.by) if resolution and resolution.by else None)

    def _names_of(self, user_ids: Iterable[uuid.UUID | None]) -> dict[uuid.UUID, str]:
        """Staff names for display; an identity outage leaves them out rather than failing the read."""
        try:
            return self.staff_names(user_ids)
        except Exception:  # noqa: BLE001 - names are a courtesy; ids stay in the audit log
            return {}

    def overlapping_enrollments(self, member_id: uuid.UUID, start: date, *,
                                exclude: uuid.UUID | None = None) -> list[Enrollment]:
        """The member's active enrollments that would overlap one starting on ``start`` (to warn before saving)."""
        with self._uow() as uow:
            return uow.enrollments.overlapping(member_id, start, exclude=exclude)

    def plans(self) -> list[Plan]:
        with self._read_uow() as uow:
            return uow.plans.list()

    def staff_names(self, user_ids: Iterable[uuid.UUID | None]) -> dict[uuid.UUID, str]:
        with self._identity() as uow:
            return uow.users.display_names(user_id for user_id in user_ids if user_id is not None)

    def user_id_by_email(self, email: str) -> uuid.UUID | None:
        """The id of the user with this e-mail address (case-insensitive), to filter the audit log by.

        A deleted user is found too: their past actions stay in the audit log.
        Only for those who read the audit log or manage users.
        """
        if not (self.can(Permission.AUDIT_READ) or self.can(Permission.USERS_ADMIN)):
            from carecli.errors import PermissionDenied

            raise PermissionDenied(f"{self.role or 'this user'} may not look up users by e-mail address: "
                                   f"it needs the '{Permission.AUDIT_READ}' permission")
        with self._identity() as uow:
            found = uow.users.id_by_email(email)
            return found if found is not None else uow.users.id_by_email(email, include_deleted=True)

    def users(self) -> list[UserSummary]:
        from carecli.services.users import list_users

        return list_users(self.databases, self.actor)

    def roles(self) -> list[Role]:
        from carecli.services.users import list_roles

        return list_roles(self.databases, self.actor)

    # The users:admin steps of `carecli users`, through the same service (permission check and audit there).

    def add_user(self, *, email: str, external_id: str, role: str, first_name: str | None = None,
                 last_name: str | None = None) -> UserSummary:
        from carecli.services.users import add_user

        return add_user(self.databases, self.actor, email=email, external_id=external_id, role=role,
                        first_name=first_name, last_name=last_name)

    def set_user_role(self, user_id: uuid.UUID, role: str) -> tuple[UserSummary, bool]:
        from carecli.services.users import set_role

        return set_role(self.databases, self.actor, str(user_id), role)

    def set_user_active(self, user_id: uuid.UUID, active: bool) -> StatusChange:
        """Reactivate, or deactivate (sessions and tokens revoked at once), as ``carecli users`` does."""
        from carecli.services.users import deactivate_user, reactivate_user

        change = reactivate_user if active else deactivate_user
        return change(self.databases, self.actor, str(user_id))

    def audit(self, filters: AuditFilter, *, before: tuple[datetime, uuid.UUID] | None = None,
              limit: int = 100) -> list[AccessEntry]:
        """Audit rows newest first (needs audit:read), each with the acting user's name."""
        with self._read_uow() as uow:
            rows = uow.audit_log.search(entity_type=filters.entity_type, entity_id=filters.entity_id,
                                        user_id=filters.user_id, action=filters.action, since=filters.since,
                                        until=filters.until, before_id=before, limit=limit)
        return self._named(rows)

    def _named(self, entries: list[AuditEntry]) -> list[AccessEntry]:
        """Audit rows with the acting user's name ("carecli" for its own rows, a short id for unknown users)."""
        names = self.staff_names(entry.user_id for entry in entries)
        return [AccessEntry(entry, "carecli" if entry.user_id is None
                            else names.get(entry.user_id, str(entry.user_id)[:8])) for entry in entries]

    # -- writes -------------------------------------------------------------------------

    def log_call(self, values: Mapping[str, Any]) -> Call:
        """Log a call; the specialist defaults to the signed-in user's specialist record."""
        values = dict(values)
        if values.get("specialist_id") is None:
            specialist = self.specialist()
            values["specialist_id"] = specialist.id if specialist is not None else None
        with self._uow() as uow:
            call = uow.calls.create(values)
            uow.commit()
        return call

    def update_call(self, call_id: uuid.UUID, expected_updated_at: datetime | None,
                    changes: Mapping[str, Any]) -> Call:
        with self._named_conflicts("call"), self._uow() as uow:
            call = uow.calls.update(call_id, expected_updated_at, changes)
            uow.commit()
        return call

    def _schedule_next(self, uow: PlatformUnitOfWork, call: Call, attempt: NextAttempt | None) -> None:
        if attempt is None or call.member_id is None:
            return
        specialist = call.specialist_id
        if specialist is None:
            mine = self.specialist()
            specialist = mine.id if mine is not None else None
        uow.calls.schedule(call.member_id, specialist, when=attempt.when, call_type=attempt.call_type)

    def schedule_call(self, member_id: uuid.UUID, when: datetime, *, call_type: str = "follow_up",
                      notes: str | None = None) -> Call:
        """Schedule a call with a member under the signed-in user's specialist record."""
        specialist = self.specialist()
        with self._uow() as uow:
            call = uow.calls.schedule(member_id, specialist.id if specialist is not None else None, when=when,
                                      call_type=call_type, notes=notes)
            uow.commit()
        return call

    def complete_call(self, call_id: uuid.UUID, expected_updated_at: datetime | None, *, started_at: datetime,
                      ended_at: datetime | None = None, outcome: str | None = None, notes: str | None = None,
                      follow_up_required: bool = False, follow_up_date: date | None = None,
                      next_attempt: NextAttempt | None = None) -> Call:
        """A scheduled call took place (and, optionally, the next one is scheduled in the same step)."""
        with self._named_conflicts("call"), self._uow() as uow:
            call = uow.calls.complete(call_id, expected_updated_at, started_at=started_at, ended_at=ended_at,
                                      outcome=outcome, notes=notes, follow_up_required=follow_up_required,
                                      follow_up_date=follow_up_date)
            self._schedule_next(uow, call, next_attempt)
            uow.commit()
        return call

    def reschedule_call(self, call_id: uuid.UUID, expected_updated_at: datetime | None, when: datetime,
                        reason: str | None = None) -> Call:
        with self._named_conflicts("call"), self._uow() as uow:
            call = uow.calls.reschedule(call_id, expected_updated_at, when=when, reason=reason)
            uow.commit()
        return call

    def cancel_call(self, call_id: uuid.UUID, expected_updated_at: datetime | None, reason: str, *,
                    next_attempt: NextAttempt | None = None) -> Call:
        with self._named_conflicts("call"), self._uow() as uow:
            call = uow.calls.cancel(call_id, expected_updated_at, reason=reason)
            self._schedule_next(uow, call, next_attempt)
            uow.commit()
        return call

    def mark_no_answer(self, call_id: uuid.UUID, expected_updated_at: datetime | None, attempted_at: datetime, *,
                       notes: str | None = None, next_attempt: NextAttempt | None = None) -> Call:
        with self._named_conflicts("call"), self._uow() as uow:
            call = uow.calls.mark_no_answer(call_id, expected_updated_at, attempted_at=attempted_at, notes=notes)
            self._schedule_next(uow, call, next_attempt)
            uow.commit()
        return call

    def edit_call_notes(self, call_id: uuid.UUID, expected_updated_at: datetime | None, notes: str | None) -> Call:
        with self._named_conflicts("call"), self._uow() as uow:
            call = uow.calls.edit_notes(call_id, expected_updated_at, notes)
            uow.commit()
        return call

    def resolve_flag(self, flag_id: uuid.UUID, expected_updated_at: datetime | None, note: str) -> RiskFlag:
        with self._named_conflicts("risk flag"), self._uow() as uow:
            flag = uow.risk_flags.resolve(flag_id, expected_updated_at, note)
            uow.commit()
        return flag

    def reopen_flag(self, flag_id: uuid.UUID, expected_updated_at: datetime | None, reason: str) -> RiskFlag:
        with self._named_conflicts("risk flag"), self._uow() as uow:
            flag = uow.risk_flags.reopen(flag_id, expected_updated_at, reason)
            uow.commit()
        return flag

    def update_member(self, member_id: uuid.UUID, expected_updated_at: datetime | None,
                      changes: Mapping[str, Any]) -> Member:
        """Correct a member's contact details or status (members:write; audited without the values)."""
        with self._named_conflicts("member"), self._uow() as uow:
            member = uow.members.update(member_id, expected_updated_at, changes)
            uow.commit()
        return member

    def raise_flag(self, call_id: uuid.UUID, *, risk_type: str, severity: str, description: str) -> RiskFlag:
        with self._uow() as uow:
            flag = uow.risk_flags.raise_from_call(call_id, risk_type=risk_type, severity=severity,
                                                  description=description)
            uow.commit()
        return flag

    def enroll(self, member_id: uuid.UUID, plan_id: uuid.UUID, enrollment_date: date, *,
               is_primary: bool = False, coverage_percentage: Any = None, notes: str | None = None) -> Enrollment:
        with self._uow() as uow:
            enrollment = uow.enrollments.enroll(member_id, plan_id, enrollment_date, is_primary=is_primary,
                                                coverage_percentage=coverage_percentage, notes=notes)
            uow.commit()
        return enrollment

    def terminate_enrollment(self, enrollment_id: uuid.UUID, expected_updated_at: datetime | None,
                             termination_date: date, reason: str | None = None) -> Enrollment:
        with self._named_conflicts("enrollment"), self._uow() as uow:
            enrollment = uow.enrollments.terminate(enrollment_id, expected_updated_at, termination_date, reason)
            uow.commit()
        return enrollment

    def set_primary(self, enrollment_id: uuid.UUID, expected_updated_at: datetime | None) -> Enrollment:
        with self._named_conflicts("enrollment"), self._uow() as uow:
            enrollment = uow.enrollments.set_primary(enrollment_id, expected_updated_at)
            uow.commit()
        return enrollment

    def add_note(self, member_id: uuid.UUID, text: str) -> MetadataEntry:
        """Add a free-text note to a member (kept in metadata under a timestamped key)."""
        key = note_key(datetime.now(timezone.utc))
        with self._uow() as uow:
            entry = uow.metadata.put("member", member_id, key, {"text": text, "by": str(self.user_id)})
            uow.commit()
        return entry

    # -- emergency access ("break the glass", carecli.services.emergency) ----------------

    def _emergency(self) -> EmergencyAccess:
        from carecli.services.emergency import EmergencyAccess

        return EmergencyAccess(self.databases, self.actor, minutes=self.settings.emergency_minutes,
                               cipher=self._cipher)

    def break_glass(self, member_id: uuid.UUID, reason: str, confirmation: str) -> EmergencyGrant:
        """Time-boxed access to this member's SSN/DOB for a user without phi:reveal (audited, reviewed)."""
        return self._emergency().request(member_id, reason, confirmation)

    def emergency_grant(self, member_id: uuid.UUID) -> EmergencyGrant | None:
        """The signed-in user's live emergency grant on this member, if any."""
        return self._emergency().live_grant(member_id)

    def emergency_queue(self, *, include_reviewed: bool = False) -> list[QueueEntry]:
        """Emergency accesses waiting for review (emergency:review or audit:read)."""
        return self._emergency().queue(include_reviewed=include_reviewed)

    def member_labels(self, member_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str]:
        """"Last, First" of each member (names only, as lists show them: not an audited open); {} without
        ``members:read`` (a caller then shows ids)."""
        if not self.can(Permission.MEMBERS_READ):
            return {}
        with self._read_uow() as uow:
            return {member_id: uow.members.display_name(member_id) for member_id in dict.fromkeys(member_ids)}

    def emergency_actions(self, grant_id: uuid.UUID) -> list[AccessEntry]:
        """The audit rows done under an emergency grant, oldest first, with names."""
        return self._named(self._emergency().actions(grant_id))

    def review_emergency(self, grant_id: uuid.UUID, note: str) -> EmergencyGrant:
        """Mark an emergency access reviewed (emergency:review); a live one ends now."""
        return self._emergency().review(grant_id, note)

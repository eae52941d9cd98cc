"""Importing call records, matched by ``id`` or ``external_id`` (the source system's call id).

``external_id`` is kept in ``metadata`` (entity type ``call_record``, key
``external_id``, a JSON string, unique among live call records); a row with
neither it nor an ``id`` could never be matched again, so it is refused
(``identity_required``). The member is named by ``member_id`` and/or
``external_member_number``, the specialist by ``specialist_id`` and/or
``specialist_email`` (their user's e-mail address in the identity database);
both must be live to log a call, as in the app.

The repository's rules (:func:`carecli.data.rules.call_problems`) hold on
the call as it will be (the file's columns over the stored ones), with the
file's changes as what an update touches: the order of the times, the
required ones, a held call neither in the future (``not_future``) nor before
its member's record was created (``before_member``), a scheduled call in
the future (``scheduled_past``). Every problem of a row is reported.
``duration_seconds``
is computed from ``started_at`` and ``ended_at`` when both are known (a
given value must agree with them to the second); without them the file's
value is kept.

Calls and flags share their matching and writing (:class:`ExternalIdKind`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from carecli.data import rules
from carecli.data.bulk import fields as f
from carecli.data.bulk.catalog import EXTERNAL_ID
from carecli.data.bulk.kinds import (
    BatchContext,
    BatchPlan,
    Kind,
    Parsed,
    Ref,
    fetch_by,
    member_refs,
    metadata_of,
    metadata_owners,
    rows_by_id,
    specialist_refs,
)
from carecli.data.ids import new_id
from carecli.data.models.enums import CALL_STATUSES, CALL_TYPES
from carecli.data.models.platform import CallRecord, Member
from carecli.data.permissions import Permission

MEMBERS = Member.__table__
REDACTED = "[redacted]"
#: how far a given duration_seconds may be from ended_at - started_at (rounding in the source system)
DURATION_SLACK_SECONDS = 1
#: the most duration_seconds (an INTEGER) holds: ended_at - started_at past it is refused, not left to the COPY
MAX_DURATION_SECONDS = 2_147_483_647


def reference_problems(ref: Ref, current_id: uuid.UUID | None, *, field: str, what: str,
                       creating: bool) -> list[tuple[str, str, str]]:
    """A member or specialist reference as a new or changed value must be given (on create) and live."""
    if ref.problem is not None:
        return [ref.problem]
    if ref.blanked or (creating and not ref.given):
        return [(field, "required", f"a {what} is required")]
    if ref.given and ref.deleted and (creating or ref.id != current_id):
        return [(ref.field or field, "reference", f"names a deleted {what}")]
    return []


class ExternalIdKind(Kind):
    """A kind matched by ``id`` or ``external_id`` (kept in metadata): calls and flags.

    Subclasses resolve their references for the batch (:meth:`references`) and
    check one row against what it matched (:meth:`prepare`).
    """

    #: what one record is called in messages
    noun: ClassVar[str]

    def references(self, ctx: BatchContext, rows: list[Parsed]) -> list[dict[int, Ref]]:
        raise NotImplementedError

    def batch_facts(self, ctx: BatchContext, rows: list[Parsed], existing: Mapping[uuid.UUID, dict[str, Any]],
                    references: list[dict[int, Ref]]) -> Any:
        """What the rules need beyond the rows and their references, fetched once for the batch."""
        return None

    def prepare(self, plan: BatchPlan, parsed: Parsed, current: dict[str, Any] | None,
                refs: list[Ref], facts: Any = None) -> dict[str, Any] | None:
        """New values (``current`` None) or changes for one row; None when the row is refused."""
        raise NotImplementedError

    def plan(self, ctx: BatchContext, rows: list[Parsed]) -> BatchPlan:
        plan = BatchPlan()
        connection = ctx.connection
        owners = metadata_owners(connection, self.entity_type, EXTERNAL_ID,
                                 (p.values.get("external_id") for p in rows))
        wanted = [p.values.get("id") for p in rows] + list(owners.values())
        existing = {key[0]: row for key, row in
                    fetch_by(connection, self.table, ("id",), ((i,) for i in wanted)).items()}
        external_ids = metadata_of(connection, self.entity_type, EXTERNAL_ID, existing)
        references = self.references(ctx, rows)
        facts = self.batch_facts(ctx, rows, existing, references)

        staged: list[tuple[Parsed, dict[str, Any] | None, dict[str, Any]]] = []
        candidates: list[tuple[int, list[str]]] = []
        for parsed in rows:
            matched, current = self._match(plan, parsed, owners, existing)
            if not matched:
                continue
            values = self.prepare(plan, parsed, current, [refs[parsed.row] for refs in references], facts)
            if values is None:
                continue
            staged.append((parsed, current, values))
            target = current["id"] if current is not None else parsed.values.get("id")
            claim = [f"{self.noun}:{target}"] if target is not None else []
            if parsed.values.get("external_id") is not None:
                claim.append(f"external:{parsed.values['external_id']}")
            candidates.append((parsed.row, claim))
        duplicates = ctx.seen.claim(candidates)

        for parsed, current, values in staged:
            if parsed.row in duplicates:
                key, earlier = duplicates[parsed.row]
                self.reject(plan, parsed, "external_id" if key.startswith("external:") else "id",
                            "duplicate_in_file", f"the same {self.noun} as row {earlier}; "
                            f"a {self.noun} may appear once per file")
                continue
            external = parsed.values.get("external_id")
            if current is None:
                entity_id = parsed.values.get("id") or new_id()
                self.create(plan, ctx, entity_id, values, {EXTERNAL_ID: REDACTED} if external is not None else {})
                if external is not None:
                    self.metadata(plan, ctx, entity_id, EXTERNAL_ID, external, new=True)
                continue
            stored = external_ids.get(current["id"])
            new_external = external is not None and external != stored
            if not values and not new_external:
                plan.unchanged += 1
                continue
            extras: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
            if new_external:
                self.metadata(plan, ctx, current["id"], EXTERNAL_ID, external, new=False)
                extras = ({EXTERNAL_ID: REDACTED if stored is not None else None}, {EXTERNAL_ID: REDACTED})
            self.update(plan, ctx, parsed, current, values, extras)
        return plan

    def _match(self, plan: BatchPlan, parsed: Parsed, owners: Mapping[Any, uuid.UUID],
               existing: Mapping[uuid.UUID, dict[str, Any]]) -> tuple[bool, dict[str, Any] | None]:
        """(False, None) when the row is refused, else (True, the record it matches or None)."""
        values = parsed.values
        matches: list[tuple[str, uuid.UUID]] = []
        if values.get("id") is not None and values["id"] in existing:
            matches.append(("id", values["id"]))
        owner = owners.get(values.get("external_id")) if values.get("external_id") is not None else None
        if owner is not None and owner in existing:
            matches.append(("external_id", owner))
        if len({entity_id for _, entity_id in matches}) > 1:
            self.reject(plan, parsed, "external_id", "identity_conflict",
                        f"id and external_id belong to different {self.noun}s")
            return False, None
        current = existing[matches[0][1]] if matches else None
        if current is not None and current["deleted_at"] is not None:
            self.reject(plan, parsed, matches[0][0], "deleted",
                        f"matches a deleted {self.noun}; restore it before importing it again")
            return False, None
        return True, current


@dataclass(frozen=True)
class CallFacts:
    """What the call rules need for a batch: when each member's record was made, and now."""

    member_created: Mapping[uuid.UUID, datetime | None]
    now: datetime


class CallsKind(ExternalIdKind):
    name = "calls"
    noun = "call"
    table = CallRecord.__table__
    permission = Permission.CALLS_WRITE
    required_on_create = ("call_type", "call_status")
    defaults = {"follow_up_required": False}
    special_parsers = {
        "call_type": f.enum(CALL_TYPES), "call_status": f.enum(CALL_STATUSES), "external_id": f.code(100),
        "external_member_number": f.code(64), "specialist_email": f.parse_email,
    }

    def check(self, values: Mapping[str, Any]) -> Iterable[tuple[str, str, str]]:
        if values.get("id") is None and values.get("external_id") is None:
            yield ("external_id", "identity_required",
                   "a call needs an external_id or an id, or a re-run could not find it")
        for name in ("call_type", "call_status"):
            if name in values and values[name] is None:
                yield name, "required", "is required"

    def references(self, ctx: BatchContext, rows: list[Parsed]) -> list[dict[int, Ref]]:
        return [member_refs(ctx.connection, rows), specialist_refs(ctx, rows, "specialist_id", "specialist_email")]

    def batch_facts(self, ctx: BatchContext, rows: list[Parsed], existing: Mapping[uuid.UUID, dict[str, Any]],
                    references: list[dict[int, Ref]]) -> CallFacts:
        """The ``created_at`` of every member the batch's calls are (or will be) with, in one query."""
        member_ids = [ref.id for ref in references[0].values() if ref.id is not None]
        member_ids += [row["member_id"] for row in existing.values()]
        found = rows_by_id(ctx.connection, MEMBERS, member_ids, ("id", "created_at"))
        return CallFacts({member_id: row["created_at"] for member_id, row in found.items()}, rules.utc_now())

    def prepare(self, plan: BatchPlan, parsed: Parsed, current: dict[str, Any] | None,
                refs: list[Ref], facts: CallFacts | None = None) -> dict[str, Any] | None:
        values = parsed.values
        member, specialist = refs
        creating = current is None
        problems = reference_problems(member, current["member_id"] if current else None, field="member_id",
                                      what="member", creating=creating)
        problems += reference_problems(specialist, current["specialist_id"] if current else None,
                                       field="specialist_id", what="specialist", creating=creating)
        if problems:
            for problem in problems:
                self.reject(plan, parsed, *problem)
            return None
        extra: dict[str, Any] = {}
        if member.given:
            extra["member_id"] = member.id
        if specialist.given:
            extra["specialist_id"] = specialist.id
        if current is None:
            merged = self.new_values(parsed, extra)
            required = self.required_problems(parsed, merged)
            if required:
                plan.problems.extend(required)
                return None
        else:
            merged = {**current, **{name: values[name] for name in self.table_columns if name in values}, **extra}
        duration, duration_problem = self._duration(merged, current, values)
        problems = [duration_problem] if duration_problem is not None else []
        extra["duration_seconds"] = merged["duration_seconds"] = duration
        changes = None if current is None else self.changes(parsed, current, extra)
        member_id = merged.get("member_id")
        member_created = facts.member_created.get(member_id) if facts is not None and member_id is not None else None
        problems += rules.call_problems(merged, changed=changes, member_created_at=member_created,
                                        now=facts.now if facts is not None else None)
        for problem in problems:
            self.reject(plan, parsed, *problem)
        if problems:
            return None
        return merged if changes is None else changes

    @staticmethod
    def _duration(merged: Mapping[str, Any], current: Mapping[str, Any] | None,
                  values: Mapping[str, Any]) -> tuple[int | None, tuple[str, str, str] | None]:
        started, ended = merged.get("started_at"), merged.get("ended_at")
        given = values.get("duration_seconds")
        if started is not None and ended is not None and ended >= started:
            computed = int((ended - started).total_seconds())
            if computed > MAX_DURATION_SECONDS:
                return None, ("ended_at", "range", "must be within 68 years of started_at "
                              "(the call's duration in seconds must fit its column)")
            if given is not None and abs(given - computed) > DURATION_SLACK_SECONDS:
                return None, ("duration_seconds", "duration_mismatch", "must be the time from started_at to ended_at "
                              "(leave it empty to have it computed)")
            return computed, None
        if "duration_seconds" in values:
            return given, None
        if current is None or "started_at" in values or "ended_at" in values:
            return None, None
        return current.get("duration_seconds"), None

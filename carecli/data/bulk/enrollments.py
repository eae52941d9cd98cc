"""Importing enrollments (``member_insurance_plans``): a member in a plan from a date.

A row names its member by ``member_id`` and/or ``external_member_number``
(both given must agree) and its plan by ``plan_code``. It matches an existing
enrollment by ``id``, else by the table's natural key (member, plan,
enrollment_date). An enrollment's member and plan never change (as in the
app, where they are set when the member is enrolled); its dates, status,
primary flag, coverage and notes do.

One primary plan per member: a row that would give a member a second live
primary enrollment (active, not deleted) is refused (``one_primary``),
whether the other one is in the database or on an earlier row of the file,
so a batch never fails on ``uq_member_insurance_plans_one_primary``. To move
the primary flag, clear it on the old enrollment first (an earlier import),
then set it on the new one. As in the app, only an active enrollment can be
primary, and ending one (status terminated or suspended) clears its flag.

The app's rules (:func:`carecli.data.rules.enrollment_problems`) hold on the
enrollment as it will be, against its plan's dates, with the file's changes
as what an update touches: no date before 1900 (``too_early``), the
termination not before the start (``date_order``), the start within the
plan's effective and expiration dates and the termination not after the
latter (``plan_dates``), status terminated only once the termination date has
passed (``status_dates``). Every problem of a row is reported.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from carecli.data import rules
from carecli.data.bulk import fields as f
from carecli.data.bulk.kinds import BatchContext, BatchPlan, Kind, Parsed, fetch_by, member_refs, rows_by_id
from carecli.data.ids import new_id
from carecli.data.models.enums import ENROLLMENT_STATUSES
from carecli.data.models.platform import InsurancePlan, MemberInsurancePlan
from carecli.data.permissions import Permission

PLANS = InsurancePlan.__table__
NATURAL_KEY = ("member_id", "insurance_plan_id", "enrollment_date")


class EnrollmentsKind(Kind):
    name = "enrollments"
    table = MemberInsurancePlan.__table__
    permission = Permission.ENROLLMENTS_WRITE
    required_on_create = ("enrollment_date",)
    defaults = {"status": "active", "is_primary": False, "coverage_percentage": Decimal("100.00")}
    special_parsers = {
        "status": f.enum(ENROLLMENT_STATUSES),
        "coverage_percentage": f.decimal(5, 2, Decimal(0), Decimal(100)),
        "external_member_number": f.code(64),
        "plan_code": f.code(50),
    }

    def check(self, values: Mapping[str, Any]) -> Iterable[tuple[str, str, str]]:
        if "enrollment_date" in values and values["enrollment_date"] is None:
            yield "enrollment_date", "required", "is required"
        if "plan_code" in values and values["plan_code"] is None:
            yield "plan_code", "required", "is required (the plan the member is enrolled in)"
        member_columns = [name for name in ("member_id", "external_member_number") if name in values]
        if member_columns and all(values[name] is None for name in member_columns):
            yield member_columns[0], "required", "a member_id or external_member_number is required"

    def plan(self, ctx: BatchContext, rows: list[Parsed]) -> BatchPlan:
        plan = BatchPlan()
        connection = ctx.connection
        members = member_refs(connection, rows)
        plans = fetch_by(connection, PLANS, ("plan_code",), ((p.values.get("plan_code"),) for p in rows))
        by_id = {key[0]: row for key, row in
                 fetch_by(connection, self.table, ("id",), ((p.values.get("id"),) for p in rows)).items()}

        # The natural key each row ends up with: the file's values, else the matched enrollment's.
        keys: dict[int, tuple[Any, Any, Any]] = {}
        for parsed in rows:
            current = by_id.get(parsed.values.get("id"))
            ref = members[parsed.row]
            code = parsed.values.get("plan_code")
            plan_row = plans.get((code,)) if code is not None else None
            member_id = ref.id if ref.given else (current["member_id"] if current else None)
            plan_id = plan_row["id"] if plan_row is not None else (
                current["insurance_plan_id"] if current and code is None else None)
            when = parsed.values["enrollment_date"] if "enrollment_date" in parsed.values else (
                current["enrollment_date"] if current else None)
            keys[parsed.row] = (member_id, plan_id, when)
        by_key = fetch_by(connection, self.table, NATURAL_KEY, keys.values())
        # Every plan's dates for the rules: by plan_code above, by id for rows that name none (one query).
        plan_dates = {row["id"]: row for row in plans.values()}
        plan_dates.update(rows_by_id(connection, PLANS, [key[1] for key in keys.values() if key[1] not in plan_dates],
                                     ("id", "effective_date", "expiration_date")))
        today = rules.utc_now().date()
        member_ids = {key[0] for key in keys.values() if key[0] is not None}
        primaries: dict[uuid.UUID, uuid.UUID] = {}
        if member_ids:
            t = self.table
            primaries = {row.member_id: row.id for row in connection.execute(
                select(t.c.member_id, t.c.id).where(t.c.member_id.in_(member_ids), t.c.is_primary.is_(True),
                                                    t.c.status == "active", t.c.deleted_at.is_(None)))}

        staged: list[tuple[Parsed, dict[str, Any] | None, dict[str, Any]]] = []
        candidates: list[tuple[int, list[str]]] = []
        for parsed in rows:
            outcome = self._prepare(plan, parsed, members[parsed.row], plans, by_id, by_key, keys[parsed.row],
                                    primaries, plan_dates, today)
            if outcome is None:
                continue
            current, values, claim = outcome
            staged.append((parsed, current, values))
            candidates.append((parsed.row, claim))
        duplicates = ctx.seen.claim(candidates)

        for parsed, current, values in staged:
            if parsed.row in duplicates:
                key, earlier = duplicates[parsed.row]
                if key.startswith("primary:"):
                    self.reject(plan, parsed, "is_primary", "one_primary",
                                f"row {earlier} already makes another enrollment this member's primary plan; "
                                "a member has one primary plan")
                else:
                    self.reject(plan, parsed, "id" if key.startswith("enrollment:") else "enrollment_date",
                                "duplicate_in_file", f"the same enrollment as row {earlier}; an enrollment may "
                                "appear once per file")
                continue
            if current is None:
                self.create(plan, ctx, parsed.values.get("id") or new_id(), values, {})
            elif not values:
                plan.unchanged += 1
            else:
                self.update(plan, ctx, parsed, current, values)
        return plan

    def _prepare(self, plan: BatchPlan, parsed: Parsed, ref: Any, plans: Mapping[tuple, dict[str, Any]],
                 by_id: Mapping[uuid.UUID, dict[str, Any]], by_key: Mapping[tuple, dict[str, Any]],
                 key: tuple[Any, Any, Any], primaries: Mapping[uuid.UUID, uuid.UUID],
                 plan_dates: Mapping[uuid.UUID, Mapping[str, Any]], today: date,
                 ) -> tuple[dict[str, Any] | None, dict[str, Any], list[str]] | None:
        """Match and validate one row: (matched enrollment or None, new values or changes, keys to claim).

        Returns None when the row is refused (the problems are in ``plan``).
        """
        values = parsed.values
        if ref.problem is not None:
            self.reject(plan, parsed, *ref.problem)
            return None
        code = values.get("plan_code")
        plan_row = plans.get((code,)) if code is not None else None
        if code is not None and plan_row is None:
            self.reject(plan, parsed, "plan_code", "reference", "no insurance plan has this plan_code")
            return None
        member_id, plan_id, when = key
        row_id = values.get("id")
        current = by_id.get(row_id) if row_id is not None else None
        match = by_key.get(key) if None not in key else None
        if current is not None:
            if match is not None and match["id"] != current["id"]:
                self.reject(plan, parsed, "id", "identity_conflict",
                            "the member, plan and enrollment_date belong to another enrollment than the row's id")
                return None
            if ref.given and ref.id != current["member_id"]:
                self.reject(plan, parsed, ref.field, "read_only",
                            "an enrollment's member cannot change; enroll the other member instead")
                return None
            if plan_row is not None and plan_row["id"] != current["insurance_plan_id"]:
                self.reject(plan, parsed, "plan_code", "read_only",
                            "an enrollment's plan cannot change; enroll the member in the other plan instead")
                return None
        else:
            current = match
        if current is not None and current["deleted_at"] is not None:
            self.reject(plan, parsed, "id" if values.get("id") == current["id"] else "enrollment_date", "deleted",
                        "matches a deleted enrollment; restore it before importing it again")
            return None

        if current is None:
            problems = []
            if member_id is None:
                problems.append(("member_id", "required", "a member_id or external_member_number is required"))
            elif ref.deleted:
                problems.append((ref.field, "reference", "names a deleted member"))
            if plan_id is None:
                problems.append(("plan_code", "required", "is required (the plan the member is enrolled in)"))
            elif plan_row is not None and plan_row["deleted_at"] is not None:
                problems.append(("plan_code", "reference", "names a deleted insurance plan"))
            for field, rule, message in problems:
                self.reject(plan, parsed, field, rule, message)
            if problems:
                return None
            new = self.new_values(parsed, {"member_id": member_id, "insurance_plan_id": plan_id})
            required = self.required_problems(parsed, new)
            if required:
                plan.problems.extend(required)
                return None
            merged, changes = new, new
        else:
            changes = self.changes(parsed, current, {"member_id": current["member_id"]})
            if "status" in changes and changes["status"] != "active" and "is_primary" not in values \
                    and current["is_primary"]:
                changes["is_primary"] = False  # ending an enrollment ends it being primary, as in the app
            merged = {**current, **changes}

        problems = rules.enrollment_problems(merged, plan_dates.get(merged["insurance_plan_id"]),
                                             changed=None if current is None else changes, today=today)
        problems += self._primary_rule(merged, current, changes, values)
        for field, rule, message in problems:
            self.reject(plan, parsed, field, rule, message)
        if problems:
            return None
        target = current["id"] if current is not None else values.get("id")
        claim = [f"enrollment:{target}"] if target is not None else []
        claim.append(f"key:{merged['member_id']}:{merged['insurance_plan_id']}:{merged['enrollment_date']}")
        if merged.get("is_primary") and merged.get("status") == "active":
            other = primaries.get(merged["member_id"])
            if other is not None and other != target:
                self.reject(plan, parsed, "is_primary", "one_primary",
                            "the member already has another primary plan; clear is_primary on that enrollment "
                            "first (an earlier import), then set it on this one")
                return None
            claim.append(f"primary:{merged['member_id']}")
        return current, changes, claim

    @staticmethod
    def _primary_rule(merged: Mapping[str, Any], current: Mapping[str, Any] | None, changes: Mapping[str, Any],
                      values: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        """Only an active enrollment can be primary (the app's set_primary refuses the others)."""
        if merged.get("is_primary") and merged.get("status") != "active" and values.get("is_primary") and \
                (current is None or "is_primary" in changes or "status" in changes):
            return [("is_primary", "active_only", "only an active enrollment can be primary")]
        return []

"""Importing insurance plans, matched by ``plan_code`` (or by ``id``, from an export)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from carecli.data.bulk import fields as f
from carecli.data.bulk.kinds import BatchContext, BatchPlan, Kind, Parsed, fetch_by
from carecli.data.ids import new_id
from carecli.data.models.platform import InsurancePlan
from carecli.data.permissions import Permission


class PlansKind(Kind):
    name = "plans"
    table = InsurancePlan.__table__
    permission = Permission.PLANS_WRITE
    required_columns = ("plan_code",)
    required_on_create = ("plan_code", "plan_name")
    defaults = {"is_active": True}
    special_parsers = {"plan_code": f.code(50)}

    def check(self, values: Mapping[str, Any]) -> Iterable[tuple[str, str, str]]:
        if "plan_code" in values and values["plan_code"] is None:
            yield "plan_code", "required", "is required (plans are matched on it)"
        if "plan_name" in values and values["plan_name"] is None:
            yield "plan_name", "required", "is required"
        for name in ("premium_amount", "deductible_amount", "copay_amount"):
            if values.get(name) is not None and values[name] < 0:
                yield name, "range", "must not be negative"
        yield from self.date_order(values, "expiration_date", "effective_date")

    def plan(self, ctx: BatchContext, rows: list[Parsed]) -> BatchPlan:
        plan = BatchPlan()
        by_code = fetch_by(ctx.connection, self.table, ("plan_code",), ((p.values.get("plan_code"),) for p in rows))
        by_id = fetch_by(ctx.connection, self.table, ("id",), ((p.values.get("id"),) for p in rows))
        candidates: list[tuple[int, list[str]]] = []
        targets: dict[int, dict[str, Any] | None] = {}
        live: list[Parsed] = []
        for parsed in rows:
            code = parsed.values.get("plan_code")
            current = by_code.get((code,))
            given = parsed.values.get("id")
            if given is not None and (given,) in by_id:
                if current is not None and current["id"] != given:
                    self.reject(plan, parsed, "plan_code", "identity_conflict",
                                "belongs to another plan than the row's id")
                    continue
                current = by_id[(given,)]
            if current is not None and current["deleted_at"] is not None:
                self.reject(plan, parsed, "plan_code", "deleted",
                            "matches a deleted plan; restore it before importing it again")
                continue
            targets[parsed.row] = current
            candidates.append((parsed.row, [f"plan:{code}"]))
            live.append(parsed)
        duplicates = ctx.seen.claim(candidates)
        for parsed in live:
            if parsed.row in duplicates:
                self.reject(plan, parsed, "plan_code", "duplicate_in_file",
                            f"the same plan_code as row {duplicates[parsed.row][1]}; a plan may appear once per file")
                continue
            current = targets[parsed.row]
            if current is None:
                values = self.new_values(parsed)
                problems = self.required_problems(parsed, values)
                if problems:
                    plan.problems.extend(problems)
                    continue
                self.create(plan, ctx, parsed.values.get("id") or new_id(), values)
                continue
            merged = {**current, **{k: v for k, v in parsed.values.items() if k in self.table.c}}
            if merged.get("expiration_date") and merged.get("effective_date") and \
                    merged["expiration_date"] < merged["effective_date"]:
                self.reject(plan, parsed, "expiration_date", "date_order", "must not be before effective_date")
                continue
            changes = self.changes(parsed, current)
            if not changes:
                plan.unchanged += 1
            else:
                self.update(plan, ctx, parsed, current, changes)
        return plan

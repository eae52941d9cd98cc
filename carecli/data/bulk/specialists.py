"""Importing specialists, matched by ``id`` or by their user (``user_email``), with the plans they cover.

``user_email`` names a live user of the identity database (case-insensitive);
a specialist is matched by it through ``specialists.user_id`` (one live
specialist per user). As in the app, a new specialist, or one moved to
another user, needs an *active* user; a specialist whose user has since been
deactivated still matches, so re-importing an export changes nothing.

``plan_codes`` (``A;B`` or a JSON array), when the column is given, makes
the specialist's live plan links exactly that set: missing links are
inserted (or restored, when a soft-deleted one exists: the table allows one
row per specialist and plan), links not listed are soft-deleted, each with
its own audit row (``specialist_insurance_plan``). Links to plans that are
themselves deleted are left alone: a file cannot name them. A change of
links counts as an update of the specialist, whose audit row lists the codes
before and after.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select

from carecli.data import audit
from carecli.data.bulk import fields as f
from carecli.data.bulk.kinds import (
    IDENTITY_UNAVAILABLE,
    BatchContext,
    BatchPlan,
    Kind,
    Parsed,
    Update,
    database_now,
    fetch_by,
    users_by_email,
)
from carecli.data.ids import new_id
from carecli.data.models.platform import InsurancePlan, SpecialistInsurancePlan
from carecli.data.models.platform import Specialist as SpecialistTable
from carecli.data.permissions import Permission

PLANS = InsurancePlan.__table__
LINKS = SpecialistInsurancePlan.__table__
LINK_ENTITY = "specialist_insurance_plan"


def _codes(codes: Iterable[str]) -> str:
    return ";".join(sorted(codes))


class SpecialistsKind(Kind):
    name = "specialists"
    table = SpecialistTable.__table__
    permission = Permission.SPECIALISTS_WRITE
    defaults = {"is_active": True}
    special_parsers = {"user_email": f.parse_email, "phone": f.parse_phone, "plan_codes": f.parse_list,
                       "license_number": f.code(50)}

    def check(self, values: Mapping[str, Any]) -> Iterable[tuple[str, str, str]]:
        if values.get("id") is None and values.get("user_email") is None:
            yield ("user_email", "identity_required",
                   "a specialist needs a user_email or an id, or a re-run could not find them")

    def plan(self, ctx: BatchContext, rows: list[Parsed]) -> BatchPlan:
        plan = BatchPlan()
        plan.inserts[self.table.name] = []  # specialists before their links (the links' foreign key)
        connection = ctx.connection
        emails = {p.values["user_email"] for p in rows if p.values.get("user_email") is not None}
        users = users_by_email(ctx.identity, emails) if emails and ctx.identity is not None else {}
        user_ids = [user["id"] for found in users.values() for user in found]
        by_user: dict[uuid.UUID, list[dict[str, Any]]] = {}
        if user_ids:
            for row in connection.execute(select(self.table).where(self.table.c.user_id.in_(user_ids))):
                by_user.setdefault(row.user_id, []).append(dict(row._mapping))
        by_id = {key[0]: row for key, row in
                 fetch_by(connection, self.table, ("id",), ((p.values.get("id"),) for p in rows)).items()}
        codes = {code for p in rows for code in (p.values.get("plan_codes") or ())}
        plans = {key[0]: row for key, row in fetch_by(connection, PLANS, ("plan_code",), ((c,) for c in codes)).items()}

        staged: list[tuple[Parsed, dict[str, Any] | None, dict[str, Any], set[uuid.UUID] | None]] = []
        candidates: list[tuple[int, list[str]]] = []
        for parsed in rows:
            outcome = self._prepare(plan, ctx, parsed, users, by_user, by_id, plans)
            if outcome is None:
                continue
            current, extra, wanted = outcome
            staged.append((parsed, current, extra, wanted))
            target = current["id"] if current is not None else parsed.values.get("id")
            claim = [f"specialist:{target}"] if target is not None else []
            if extra.get("user_id") is not None:
                claim.append(f"user:{extra['user_id']}")
            candidates.append((parsed.row, claim))
        duplicates = ctx.seen.claim(candidates)

        # The live and deleted links of the matched specialists, with their plans' codes (one query).
        matched = [current["id"] for _, current, _, wanted in staged if current is not None and wanted is not None]
        links: dict[uuid.UUID, list[dict[str, Any]]] = {}
        if matched:
            statement = select(LINKS, PLANS.c.plan_code, PLANS.c.deleted_at.label("plan_deleted_at")).select_from(
                LINKS.join(PLANS, PLANS.c.id == LINKS.c.insurance_plan_id)).where(LINKS.c.specialist_id.in_(matched))
            for row in connection.execute(statement):
                links.setdefault(row.specialist_id, []).append(dict(row._mapping))
        now: list[datetime] = []

        def clock() -> datetime:
            if not now:
                now.append(database_now(connection))
            return now[0]

        for parsed, current, extra, wanted in staged:
            if parsed.row in duplicates:
                key, earlier = duplicates[parsed.row]
                field = "id" if key.startswith("specialist:") else "user_email"
                self.reject(plan, parsed, field, "duplicate_in_file",
                            f"the same specialist as row {earlier}; a specialist may appear once per file")
                continue
            if current is None:
                specialist_id = parsed.values.get("id") or new_id()
                values = self.new_values(parsed, extra)
                self.create(plan, ctx, specialist_id, values,
                            {"plan_codes": _codes(self._code_list(parsed))} if wanted is not None else {})
                for plan_id in sorted(wanted or ()):
                    self._link(plan, ctx, specialist_id, plan_id)
                continue
            changes = self.changes(parsed, current, extra)
            old_codes = new_codes = None
            operations: list[Any] = []
            if wanted is not None:
                have = [link for link in links.get(current["id"], []) if link["plan_deleted_at"] is None]
                live = {link["insurance_plan_id"]: link for link in have if link["deleted_at"] is None}
                gone = {link["insurance_plan_id"]: link for link in have if link["deleted_at"] is not None}
                for plan_id in sorted(wanted - set(live)):
                    operations.append(("restore", gone[plan_id]) if plan_id in gone else ("create", plan_id))
                for plan_id in sorted(set(live) - wanted):
                    operations.append(("delete", live[plan_id]))
                if operations:
                    old_codes = _codes(link["plan_code"] for link in live.values())
                    new_codes = _codes(self._code_list(parsed))
            if not changes and not operations:
                plan.unchanged += 1
                continue
            extras: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
            if operations:
                extras = ({"plan_codes": old_codes}, {"plan_codes": new_codes})
            self.update(plan, ctx, parsed, current, changes, extras)
            for action, item in operations:
                if action == "create":
                    self._link(plan, ctx, current["id"], item)
                else:
                    self._relink(plan, ctx, parsed, item, clock() if action == "delete" else None, action)
        return plan

    @staticmethod
    def _code_list(parsed: Parsed) -> tuple[str, ...]:
        return parsed.values.get("plan_codes") or ()

    def _prepare(self, plan: BatchPlan, ctx: BatchContext, parsed: Parsed, users: Mapping[str, list[dict[str, Any]]],
                 by_user: Mapping[uuid.UUID, list[dict[str, Any]]], by_id: Mapping[uuid.UUID, dict[str, Any]],
                 plans: Mapping[str, dict[str, Any]],
                 ) -> tuple[dict[str, Any] | None, dict[str, Any], set[uuid.UUID] | None] | None:
        """Match and check one row: (matched specialist or None, user_id to set, plan ids wanted or None)."""
        values = parsed.values
        email = values.get("user_email")
        user: dict[str, Any] | None = None
        if email is not None:
            if ctx.identity is None:
                self.reject(plan, parsed, "user_email", *IDENTITY_UNAVAILABLE)
                return None
            found = users.get(email.strip().lower(), [])
            if not found:
                self.reject(plan, parsed, "user_email", "reference", "no user has this e-mail address")
                return None
            if len(found) > 1:
                self.reject(plan, parsed, "user_email", "ambiguous",
                            "more than one user has this e-mail address; give the specialist's id")
                return None
            user = found[0]
        row_id = values.get("id")
        current = by_id.get(row_id) if row_id is not None else None
        of_user = by_user.get(user["id"], []) if user is not None else []
        live_of_user = [row for row in of_user if row["deleted_at"] is None]
        if current is not None:
            if live_of_user and current["id"] not in {row["id"] for row in live_of_user}:
                self.reject(plan, parsed, "user_email", "identity_conflict",
                            "belongs to another specialist than the row's id")
                return None
        elif len(live_of_user) > 1:
            self.reject(plan, parsed, "user_email", "ambiguous",
                        "more than one specialist belongs to this user; give the specialist's id")
            return None
        elif live_of_user:
            current = live_of_user[0]
        elif of_user:
            self.reject(plan, parsed, "user_email", "deleted",
                        "matches a deleted specialist; restore it before importing it again")
            return None
        if current is not None and current["deleted_at"] is not None:
            self.reject(plan, parsed, "id", "deleted",
                        "matches a deleted specialist; restore it before importing it again")
            return None
        extra: dict[str, Any] = {}
        if "user_email" in values:
            extra["user_id"] = user["id"] if user is not None else None
            moving = user is not None and (current is None or current["user_id"] != user["id"])
            if moving and user is not None and not user["is_active"]:
                self.reject(plan, parsed, "user_email", "reference", "the user with this e-mail address is not active")
                return None
        wanted: set[uuid.UUID] | None = None
        if "plan_codes" in values:
            listed = self._code_list(parsed)
            unknown = [code for code in listed if code not in plans or plans[code]["deleted_at"] is not None]
            if unknown:
                self.reject(plan, parsed, "plan_codes", "reference",
                            f"names {len(unknown)} plan code(s) that are not live insurance plans")
                return None
            wanted = {plans[code]["id"] for code in listed}
        return current, extra, wanted

    def _link(self, plan: BatchPlan, ctx: BatchContext, specialist_id: uuid.UUID, plan_id: uuid.UUID) -> None:
        link_id = new_id()
        values = {"specialist_id": specialist_id, "insurance_plan_id": plan_id}
        plan.insert(LINKS.name, {"id": link_id, **values})
        plan.audit.append(audit.audit_row(ctx.actor, LINK_ENTITY, link_id, "create", None, values))

    def _relink(self, plan: BatchPlan, ctx: BatchContext, parsed: Parsed, link: Mapping[str, Any],
                deleted_at: datetime | None, action: str) -> None:
        """Soft-delete (``deleted_at`` a time) or restore (None) a link, guarded by its ``updated_at``."""
        plan.updates.append(Update(LINKS.name, parsed.row, link["id"], link["updated_at"], {"deleted_at": deleted_at}))
        plan.audit.append(audit.audit_row(ctx.actor, LINK_ENTITY, link["id"], action,
                                          {"deleted_at": link["deleted_at"]}, {"deleted_at": deleted_at}))

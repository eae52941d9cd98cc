"""Importing risk flags, matched by ``id`` or ``external_id`` (the source system's flag id).

A flag is raised from a call, named by ``call_record_id`` and/or
``call_external_id`` (the call's ``external_id``); the call must be live to
raise a flag on it. As in the app, the flag's member and specialist are the
call's: the file may name them (``member_id`` / ``external_member_number``,
``specialist_id`` / ``specialist_email``) but they must then be the call's
(``call_mismatch``), and a flag never moves to another call (``read_only``).
A new flag is raised only from a call that was held (completed or no
answer: ``call_not_held``), by the rule the app uses
(:func:`carecli.data.rules.flag_call_problems`); flags already on a call
keep loading whatever became of it. The columns ``resolved``,
``resolved_at`` and ``resolution_note`` (written by export) are read and
ignored: a flag is resolved or re-opened in the app, each step audited, so a
round trip changes nothing and a file cannot resolve a flag.
``external_id`` is kept in ``metadata`` (entity type ``risk_flag``); a row
with neither it nor an ``id`` is refused (``identity_required``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from carecli.data import rules
from carecli.data.bulk import fields as f
from carecli.data.bulk.calls import ExternalIdKind
from carecli.data.bulk.catalog import EXTERNAL_ID
from carecli.data.bulk.kinds import (
    BatchContext,
    BatchPlan,
    Parsed,
    Ref,
    member_refs,
    metadata_owners,
    resolve_refs,
    rows_by_id,
    specialist_refs,
)
from carecli.data.models.enums import RISK_TYPES, SEVERITIES
from carecli.data.models.platform import CallRecord
from carecli.data.models.platform import RiskFlag as RiskFlagTable
from carecli.data.permissions import Permission

CALLS = CallRecord.__table__


class FlagsKind(ExternalIdKind):
    name = "flags"
    noun = "flag"
    table = RiskFlagTable.__table__
    permission = Permission.FLAGS_WRITE
    required_on_create = ("risk_type", "severity", "description")
    special_parsers = {
        "risk_type": f.enum(RISK_TYPES), "severity": f.enum(SEVERITIES), "external_id": f.code(100),
        "call_external_id": f.code(100), "external_member_number": f.code(64), "specialist_email": f.parse_email,
        # Written by export, read and ignored here (READ_ONLY_COLUMNS): resolving is a step in the app.
        "resolved": f.parse_bool, "resolved_at": f.parse_timestamp, "resolution_note": f.text(None),
    }

    def check(self, values: Mapping[str, Any]) -> Iterable[tuple[str, str, str]]:
        if values.get("id") is None and values.get("external_id") is None:
            yield ("external_id", "identity_required",
                   "a flag needs an external_id or an id, or a re-run could not find it")
        for name in ("risk_type", "severity", "description"):
            if name in values and values[name] is None:
                yield name, "required", "is required"
        call_columns = [name for name in ("call_record_id", "call_external_id") if name in values]
        if call_columns and all(values[name] is None for name in call_columns):
            yield call_columns[0], "required", "a call_record_id or call_external_id is required"

    def references(self, ctx: BatchContext, rows: list[Parsed]) -> list[dict[int, Ref]]:
        connection = ctx.connection
        call_owners = metadata_owners(connection, "call_record", EXTERNAL_ID,
                                      (p.values.get("call_external_id") for p in rows))
        calls_found = rows_by_id(connection, CALLS, [p.values.get("call_record_id") for p in rows]
                                 + list(call_owners.values()),
                                 ("id", "member_id", "specialist_id", "call_status", "deleted_at"))
        return [resolve_refs(rows, "call_record_id", "call_external_id", calls_found, call_owners, "call"),
                member_refs(connection, rows), specialist_refs(ctx, rows, "specialist_id", "specialist_email")]

    def prepare(self, plan: BatchPlan, parsed: Parsed, current: dict[str, Any] | None,
                refs: list[Ref], facts: Any = None) -> dict[str, Any] | None:
        call, member, specialist = refs
        problems = [ref.problem for ref in refs if ref.problem is not None]
        for problem in problems:
            self.reject(plan, parsed, *problem)
        if problems:
            return None
        # The call the flag is (or will be) on, and so its member and specialist.
        if current is not None:
            if call.given and call.id != current["call_record_id"]:
                self.reject(plan, parsed, call.field or "call_record_id", "read_only",
                            "a flag stays on the call it was raised from")
                return None
            expected = {name: current[name] for name in ("call_record_id", "member_id", "specialist_id")}
        elif not call.given:
            self.reject(plan, parsed, "call_record_id", "required",
                        "a call_record_id or call_external_id is required")
            return None
        elif call.deleted:
            self.reject(plan, parsed, call.field or "call_record_id", "reference", "names a deleted call")
            return None
        else:
            assert call.row is not None  # a given, usable, live reference always found its row
            expected = {"call_record_id": call.id, "member_id": call.row["member_id"],
                        "specialist_id": call.row["specialist_id"]}
            # The app's rules for raising a flag from this call; a member the file names must be the call's.
            for field, rule, message in rules.flag_call_problems(call.row, member.id if member.given else None,
                                                                  field=call.field or "call_record_id"):
                problems.append((member.field or field if rule == "call_mismatch" else field, rule, message))
        for ref, name, what in ((member, "member_id", "member"), (specialist, "specialist_id", "specialist")):
            if expected[name] is None:
                problems.append((name, "required", f"the call has no {what}, so no flag can be raised on it"))
            elif ref.given and ref.id != expected[name] and (current is not None or name != "member_id"):
                # (a new flag's member was checked by the shared rule above)
                problems.append((ref.field or name, "call_mismatch",
                                 f"must be the call's {what} (a flag's {what} is the call's)"))
        for problem in problems:
            self.reject(plan, parsed, *problem)
        if problems:
            return None
        if current is not None:
            return self.changes(parsed, current, expected)
        new = self.new_values(parsed, expected)
        required = self.required_problems(parsed, new)
        if required:
            plan.problems.extend(required)
            return None
        return new

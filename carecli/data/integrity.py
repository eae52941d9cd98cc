"""Counting the stored rows that break a rule of :mod:`carecli.data.rules`.

Rows written before a rule existed (or by hand, or by an old version) are
not rewritten: nobody but a person can say what the right value is. They are
counted, one SQL ``count(*)`` per rule over live rows (``deleted_at IS NULL``),
for ``carecli check data`` and ``carecli doctor``. Only counts leave the
database: no ids, no values, so the result holds no member data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, text

from carecli.data import rules

_HELD = "('completed', 'no_answer')"


@dataclass(frozen=True)
class IntegrityRule:
    """One rule counted over stored rows: its name (``table.rule``), what it means, and the count's SQL.

    The SQL may use ``:now`` (naive UTC), ``:latest`` (now plus the clock-skew allowance),
    ``:skew`` (the allowance, an interval), ``:today`` and ``:earliest`` (the earliest date allowed).
    """

    name: str
    description: str
    sql: str


RULES: tuple[IntegrityRule, ...] = (
    IntegrityRule("calls.not_future", "completed or unanswered calls starting or ending in the future",
                  "SELECT count(*) FROM call_records c WHERE c.deleted_at IS NULL "
                  f"AND c.call_status IN {_HELD} AND (c.started_at > :latest OR c.ended_at > :latest)"),
    IntegrityRule("calls.date_order", "calls that ended before they started",
                  "SELECT count(*) FROM call_records c WHERE c.deleted_at IS NULL AND c.ended_at < c.started_at"),
    IntegrityRule("calls.before_member", "held calls dated before their member's record was created",
                  "SELECT count(*) FROM call_records c JOIN members m ON m.id = c.member_id "
                  f"WHERE c.deleted_at IS NULL AND c.call_status IN {_HELD} "
                  "AND coalesce(c.started_at, CASE WHEN c.call_status = 'no_answer' THEN c.scheduled_at END) "
                  "< m.created_at - :skew"),
    IntegrityRule("flags.call_not_held", "risk flags on a call that was not completed or unanswered",
                  "SELECT count(*) FROM risk_flags f JOIN call_records c ON c.id = f.call_record_id "
                  f"WHERE f.deleted_at IS NULL AND coalesce(c.call_status, '') NOT IN {_HELD}"),
    IntegrityRule("flags.call_mismatch", "risk flags whose member is not their call's member",
                  "SELECT count(*) FROM risk_flags f JOIN call_records c ON c.id = f.call_record_id "
                  "WHERE f.deleted_at IS NULL AND f.member_id IS DISTINCT FROM c.member_id"),
    IntegrityRule("enrollments.too_early", f"enrollments starting or ending before {rules.EARLIEST_DATE}",
                  "SELECT count(*) FROM member_insurance_plans e WHERE e.deleted_at IS NULL "
                  "AND (e.enrollment_date < :earliest OR e.termination_date < :earliest)"),
    IntegrityRule("enrollments.plan_dates", "enrollments starting outside their plan's effective and "
                  "expiration dates",
                  "SELECT count(*) FROM member_insurance_plans e JOIN insurance_plans p ON p.id = e.insurance_plan_id "
                  "WHERE e.deleted_at IS NULL "
                  "AND (e.enrollment_date < p.effective_date OR e.enrollment_date > p.expiration_date)"),
    IntegrityRule("enrollments.plan_dates_termination", "enrollments terminated after their plan expires",
                  "SELECT count(*) FROM member_insurance_plans e JOIN insurance_plans p ON p.id = e.insurance_plan_id "
                  "WHERE e.deleted_at IS NULL AND e.termination_date > p.expiration_date"),
    IntegrityRule("enrollments.status_dates", "enrollments terminated although their termination date is to come",
                  "SELECT count(*) FROM member_insurance_plans e WHERE e.deleted_at IS NULL "
                  "AND e.status = 'terminated' AND e.termination_date > :today"),
    # The pattern of carecli.data.validation.PHONE_PATTERN (what the repository stores), in SQL.
    IntegrityRule("members.phone_format", "member phone numbers not stored as E.164 (+1 and 10 digits)",
                  "SELECT count(*) FROM members m WHERE m.deleted_at IS NULL AND m.phone IS NOT NULL "
                  "AND m.phone !~ '^\\+1[0-9]{10}$'"),
    # Kept by triggers (platform_0010); out of step only if they were switched off while members changed.
    IntegrityRule("member_name_prefixes.stale", "members whose search words (member_name_prefixes) are of "
                  "another name, or who are deleted or gone",
                  "SELECT count(DISTINCT p.member_id) FROM member_name_prefixes p WHERE NOT EXISTS "
                  "(SELECT 1 FROM members m WHERE m.id = p.member_id AND m.deleted_at IS NULL "
                  "AND carecli_fold(m.last_name) = p.last_key AND carecli_fold(m.first_name) = p.first_key)"),
)


@dataclass(frozen=True)
class RuleCount:
    """How many live rows break one rule."""

    name: str
    description: str
    count: int

    def as_json(self) -> dict[str, object]:
        return {"rule": self.name, "description": self.description, "count": self.count}


def count_violations(connection: Connection, now: datetime | None = None) -> list[RuleCount]:
    """One count per rule, in :data:`RULES` order, as of ``now`` (naive UTC; default: the clock)."""
    now = now or rules.utc_now()
    skew: timedelta = rules.clock_skew()
    params = {"now": now, "latest": now + skew, "skew": skew, "today": now.date(), "earliest": rules.EARLIEST_DATE}
    counts = []
    for rule in RULES:
        statement = text(rule.sql)
        used = {name: value for name, value in params.items() if f":{name}" in rule.sql}
        counts.append(RuleCount(rule.name, rule.description, int(connection.execute(statement, used).scalar_one())))
    return counts


def total(counts: list[RuleCount]) -> int:
    return sum(count.count for count in counts)

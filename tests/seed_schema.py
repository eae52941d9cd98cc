"""The seed's CREATE TABLE statements, and catalog snapshots to compare schemas by.

``tests/fixtures/datastores.md`` is a verbatim copy of the spec
(``shared/seed/datastores.md``; a test checks the copy is current when the
spec is beside the repository).
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg

FIXTURE = Path(__file__).parent / "fixtures" / "datastores.md"
SPEC = Path(__file__).resolve().parents[2] / "shared" / "seed" / "datastores.md"

IDENTITY_TABLES = ("roles", "users", "tokens", "sessions")
PLATFORM_TABLES = (
    "members", "specialists", "call_records", "insurance_plans", "member_insurance_plans",
    "specialist_insurance_plans", "metadata", "risk_flags", "audit_logs",
)
# Tables of ours that the seed leaves room for (documented in the README).
OWN_TABLES = {"identity": {"pending_platform_changes"},
              "platform": {"data_keys", "member_name_prefixes", "audit_seal_keys", "audit_seals", "deferred_indexes",
                           "import_digests"}}
CROSS_DATABASE_FK = ("specialists", "f", "FOREIGN KEY (user_id) REFERENCES users(id)")


def seed_create_statements() -> dict[str, str]:
    """Table name -> the seed's CREATE TABLE statement, in dependency order."""
    text = FIXTURE.read_text()
    statements = {}
    for block in re.findall(r"```sql\n(.*?)```", text, flags=re.S):
        match = re.search(r"CREATE TABLE (\w+)", block)
        assert match, block
        statements[match.group(1)] = block.strip()
    # The seed lists users before roles, which users references.
    order = IDENTITY_TABLES + PLATFORM_TABLES
    assert set(statements) == set(order), sorted(statements)
    return {name: statements[name] for name in order}


def snapshot(conn: psycopg.Connection, *, seed_only: bool = False) -> dict[str, set[tuple]]:
    """Columns and constraints of the public schema, as comparable tuples.

    ``seed_only`` keeps the seed's thirteen tables and leaves out ours.
    """
    columns = conn.execute(
        """
        SELECT c.relname, a.attname,
               row_number() OVER (PARTITION BY c.relname ORDER BY a.attnum),
               format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
          AND c.relname NOT LIKE 'alembic_version%'
        """
    ).fetchall()
    constraints = conn.execute(
        """
        SELECT cl.relname, co.contype::text, pg_get_constraintdef(co.oid)
        FROM pg_constraint co
        JOIN pg_class cl ON cl.oid = co.conrelid
        JOIN pg_namespace n ON n.oid = cl.relnamespace
        WHERE n.nspname = 'public' AND cl.relname NOT LIKE 'alembic_version%'
        """
    ).fetchall()
    tables = conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    ).fetchall()
    if seed_only:
        seed = set(IDENTITY_TABLES + PLATFORM_TABLES)
        columns = [row for row in columns if row[0] in seed]
        constraints = [row for row in constraints if row[0] in seed]
        tables = [row for row in tables if row[0] in seed]
    return {
        "tables": {row for row in tables},
        "columns": set(columns),
        "keys": {row for row in constraints if row[1] in ("p", "u", "f")},
        "checks": {row for row in constraints if row[1] == "c"},
    }

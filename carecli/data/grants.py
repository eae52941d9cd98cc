"""Least-privilege database roles, per service database.

For each database three roles:

* ``<prefix>_<db>_owner`` owns the tables and runs migrations;
* ``<prefix>_<db>_app`` is what carecli connects as day to day: it reads and
  writes, but never DELETEs (carecli soft-deletes) and may only INSERT and
  SELECT on ``audit_logs``;
* ``<prefix>_<db>_auditor`` reads, and on the platform database cannot read
  the wrapped data keys.

Roles are created without passwords: set them with ``\\password`` or your
secret manager. The SQL is idempotent, so it can be re-applied after a
migration adds tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from carecli.data.migrate import VERSION_TABLES

APPEND_ONLY = {"platform": ("audit_logs", "audit_seals")}
HIDDEN_FROM_AUDITOR = {"platform": ("data_keys", "audit_seal_keys")}
#: Written only by triggers (SECURITY DEFINER functions owned by the owner role): the app reads them.
TRIGGER_WRITTEN = {"platform": ("member_name_prefixes",)}
#: Written only by the owner role (bulk loads' dropped indexes, run as SQL by the owner when built): the app
#: reads them. An app role that could write a definition there could have the owner run any statement.
OWNER_WRITTEN = {"platform": ("deferred_indexes",)}
#: Those trigger functions (platform_0010).
TRIGGER_FUNCTIONS = {"platform": tuple(f"carecli_member_prefixes_{event}()"
                                       for event in ("insert", "update", "delete", "truncate"))}


@dataclass(frozen=True)
class RoleNames:
    owner: str
    app: str
    auditor: str


def role_names(prefix: str, database: str) -> RoleNames:
    base = f"{prefix}_{database}"
    return RoleNames(f"{base}_owner", f"{base}_app", f"{base}_auditor")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _create_role(name: str, login: bool) -> str:
    option = "LOGIN" if login else "NOLOGIN"
    literal = name.replace("'", "''")
    return (f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{literal}') "
            f"THEN CREATE ROLE {_quote(name)} {option}; END IF; END $$;")


def grants_sql(connection: Connection, database: str, prefix: str = "carecli") -> list[str]:
    """The statements that set up least-privilege roles on one database."""
    roles = role_names(prefix, database)
    owner, app, auditor = (_quote(roles.owner), _quote(roles.app), _quote(roles.auditor))
    tables = [row[0] for row in connection.execute(text(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"))]
    version_table = VERSION_TABLES[database]
    statements = [
        _create_role(roles.owner, login=True),
        _create_role(roles.app, login=True),
        _create_role(roles.auditor, login=True),
        "REVOKE ALL ON SCHEMA public FROM PUBLIC;",
        f"GRANT USAGE, CREATE ON SCHEMA public TO {owner};",
        f"GRANT USAGE ON SCHEMA public TO {app}, {auditor};",
    ]
    for table in tables:
        quoted = _quote(table)
        statements.append(f"ALTER TABLE {quoted} OWNER TO {owner};")
        statements.append(f"REVOKE ALL ON {quoted} FROM PUBLIC, {app}, {auditor};")
        if table == version_table:
            statements.append(f"GRANT SELECT ON {quoted} TO {app}, {auditor};")
            continue
        if table in APPEND_ONLY.get(database, ()):
            statements.append(f"GRANT SELECT, INSERT ON {quoted} TO {app};")
        elif table in TRIGGER_WRITTEN.get(database, ()) or table in OWNER_WRITTEN.get(database, ()):
            statements.append(f"GRANT SELECT ON {quoted} TO {app};")
        else:
            statements.append(f"GRANT SELECT, INSERT, UPDATE ON {quoted} TO {app};")
        if table not in HIDDEN_FROM_AUDITOR.get(database, ()):
            statements.append(f"GRANT SELECT ON {quoted} TO {auditor};")
    if database == "platform":
        statements.append(f"ALTER FUNCTION carecli_audit_logs_append_only() OWNER TO {owner};")
        statements.append(f"ALTER FUNCTION carecli_audit_seals_append_only() OWNER TO {owner};")
        statements += [f"ALTER FUNCTION {function} OWNER TO {owner};" for function in TRIGGER_FUNCTIONS[database]]
    return statements

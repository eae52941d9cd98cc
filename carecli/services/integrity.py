"""``carecli check data``: count the stored rows that break a rule (admins and auditors).

Reading counts needs ``audit:read`` (the admin, auditor and supervisor
roles): the counts hold no member data, but say where the data is weak. A
refusal is audited like every other one.
"""

from __future__ import annotations

from carecli.data import audit
from carecli.data.actor import Actor
from carecli.data.databases import Databases
from carecli.data.integrity import RuleCount, count_violations
from carecli.data.permissions import Permission
from carecli.data.unit_of_work import NIL
from carecli.errors import PermissionDenied

ENTITY = "data_check"
OPERATION = "check stored data against the rules"


def check_data(databases: Databases, actor: Actor) -> list[RuleCount]:
    """One count per rule over the platform's live rows; refused (audited) without ``audit:read``."""
    if not actor.can(Permission.AUDIT_READ):
        audit.write_committed(databases.platform, actor, ENTITY, NIL, "deny",
                              {"operation": OPERATION, "permission": str(Permission.AUDIT_READ)})
        role = actor.role or "this user"
        raise PermissionDenied(f"{role} may not {OPERATION}: it needs the '{Permission.AUDIT_READ}' permission",
                               hint="ask an administrator or auditor to run it")
    with databases.platform.connect() as connection:
        return count_violations(connection)

"""The permission vocabulary and the default roles.

``roles.permissions`` (JSONB) holds a list of these strings. Repositories
check them (screens only hide what a user cannot do; the check that counts
is here). An API token's scopes narrow its user's permissions further.
"""

from __future__ import annotations

from enum import StrEnum


class Permission(StrEnum):
    MEMBERS_READ = "members:read"          # search, list and open member records (opening is audited)
    MEMBERS_WRITE = "members:write"        # create, edit and soft-delete members and their notes
    PHI_REVEAL = "phi:reveal"              # decrypt SSN / date of birth, with a reason (audited)
    CALLS_WRITE = "calls:write"            # log, edit and cancel calls
    FLAGS_WRITE = "flags:write"            # raise and edit risk flags
    ENROLLMENTS_WRITE = "enrollments:write"  # enroll, terminate, set the primary plan
    PLANS_WRITE = "plans:write"            # maintain the insurance plan catalog
    SPECIALISTS_WRITE = "specialists:write"  # maintain specialists and the plans they cover
    RECORDS_RESTORE = "records:restore"    # bring back soft-deleted records
    AUDIT_READ = "audit:read"              # read the audit log
    USERS_ADMIN = "users:admin"            # manage users, roles, sessions and other users' tokens
    KEYS_ADMIN = "keys:admin"              # rotate data keys and re-wrap them under a new master key
    IMPORT_RUN = "import:run"              # run batch imports
    EXPORT_RUN = "export:run"              # run batch exports (with phi:reveal for PHI columns)
    RETENTION_ADMIN = "retention:admin"    # legal holds and the retention purge (deletes rows for good)
    PHI_EMERGENCY = "phi:emergency"        # break the glass: time-boxed reveal for one member (audited, reviewed)
    EMERGENCY_REVIEW = "emergency:review"  # review (and end) other users' emergency accesses


ALL_PERMISSIONS: frozenset[str] = frozenset(p.value for p in Permission)

_SPECIALIST = {
    Permission.MEMBERS_READ, Permission.MEMBERS_WRITE, Permission.PHI_REVEAL,
    Permission.CALLS_WRITE, Permission.FLAGS_WRITE,
}

def _names(permissions: set[Permission] | frozenset[str]) -> list[str]:
    return sorted(str(p) for p in permissions)


#: name -> (description, permissions)
DEFAULT_ROLES: dict[str, tuple[str, list[str]]] = {
    "specialist": (
        "Outreach specialist: works members, logs calls, raises risk flags, reveals PHI with a reason.",
        _names(_SPECIALIST),
    ),
    "supervisor": (
        "Leads specialists: everything a specialist does, plus enrollments, specialists, the audit log and "
        "reviewing emergency accesses.",
        _names(_SPECIALIST | {Permission.ENROLLMENTS_WRITE, Permission.SPECIALISTS_WRITE, Permission.AUDIT_READ,
                              Permission.EMERGENCY_REVIEW}),
    ),
    "admin": (
        "Full access: users, roles, keys, plans and restoring deleted records.",
        _names(ALL_PERMISSIONS),
    ),
    "auditor": (
        "Compliance review: reads member records and the audit log; changes nothing, reveals PHI only by "
        "breaking the glass (time-boxed, audited, reviewed).",
        _names({Permission.MEMBERS_READ, Permission.AUDIT_READ, Permission.PHI_EMERGENCY}),
    ),
    "importer": (
        "Batch jobs: imports and exports eligibility and roster files; an operator signed in may break the glass.",
        _names({
            Permission.IMPORT_RUN, Permission.EXPORT_RUN, Permission.MEMBERS_READ, Permission.MEMBERS_WRITE,
            Permission.CALLS_WRITE, Permission.FLAGS_WRITE, Permission.ENROLLMENTS_WRITE,
            Permission.PLANS_WRITE, Permission.SPECIALISTS_WRITE, Permission.PHI_EMERGENCY,
        }),
    ),
}

"""The enumerated values the seed lists in its column comments.

They are enforced by CHECK constraints in the migrations; code validates
against the same tuples so a bad value is reported before it reaches the
server.
"""

TOKEN_TYPES = ("access", "refresh", "api", "ssh_key")
MEMBER_STATUSES = ("active", "inactive", "suspended")
CALL_TYPES = ("outreach", "follow_up", "support")
CALL_STATUSES = ("scheduled", "completed", "cancelled", "no_answer")
RISK_TYPES = ("medical", "financial", "compliance", "safety", "other")
SEVERITIES = ("low", "medium", "high", "critical")
ENROLLMENT_STATUSES = ("active", "terminated", "suspended")
DATA_KEY_STATUSES = ("primary", "active", "retired")

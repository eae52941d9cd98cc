"""Platform: the name-words triggers of ``members`` never compile their query (``jit = off``).

The statement-level trigger of ``platform_0010`` runs one ``INSERT .. SELECT``
over the statement's new rows. The planner prices it for far more rows than it
makes (``generate_series`` over a word's length is estimated at 1,000 rows, so
200,000 members look like 24M prefix rows), which puts a large COPY into
``members`` above PostgreSQL's JIT thresholds: a binary COPY of 200,000 members
spent 0.45 s compiling (inlining and optimising) a query that then ran in
0.23 s (PG 15, 2 cores; EXPLAIN ANALYZE of the trigger's query). Every bulk
writer of ``members`` paid it once per statement: ``carecli seed``, a restore,
anyone's COPY. (``carecli import`` already loads with ``jit = off``.) The
functions now carry ``SET jit = off``, beside their ``search_path``; a server
without JIT ignores it.

The downgrade takes the setting off again.

Revision ID: platform_0017
Revises: platform_0016
Create Date: 2026-12-07
"""
from collections.abc import Sequence

from alembic import op

revision: str = "platform_0017"
down_revision: str | Sequence[str] | None = "platform_0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTIONS = ("carecli_member_prefixes_insert", "carecli_member_prefixes_update", "carecli_member_prefixes_delete")


def upgrade() -> None:
    """``SET jit = off`` on the three trigger functions that run a query."""
    for name in _FUNCTIONS:
        op.execute(f"ALTER FUNCTION {name}() SET jit = off")


def downgrade() -> None:
    """Back to platform_0016: the functions take the session's jit."""
    for name in _FUNCTIONS:
        op.execute(f"ALTER FUNCTION {name}() RESET jit")

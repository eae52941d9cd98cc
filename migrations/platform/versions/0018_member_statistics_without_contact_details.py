"""Platform: ``ANALYZE members`` leaves out the ciphertext and contact-detail columns.

``platform_0011`` gave the folded names a statistics target of 1,000, and
ANALYZE draws one sample for the whole table, sized by its largest target:
300,000 rows, not 30,000. Each analysed column is then sorted and counted over
all of them. Nine columns of ``members`` pay for that and give the planner
nothing:

* ``encrypted_ssn`` and ``encrypted_dob`` are ciphertext: random bytes,
  compared by nothing;
* ``email``, ``phone``, ``address_line1``, ``address_line2``, ``city``,
  ``state`` and ``zip_code`` are shown, never filtered on: search reads
  ``lower(email)`` and the phone's digits from their indexes' own statistics,
  which stay.

Their statistics target is now 0, so ANALYZE skips them. ``ANALYZE members`` at
200,000 members went from 3.0 s to 1.6 s (PG 15, 2 cores). An import and the
seed run it in the foreground after a large load, and autovacuum after each
tenth of the table changes. A second gain: the server no longer copies samples
of members' contact details into ``pg_statistic``, as most-common values and
histogram bounds. ANALYZE does not remove what it wrote of them before: the
upgrade deletes those rows of ``pg_statistic`` when it runs as a superuser (the
embedded server's role), the only role allowed to; otherwise they stay, unread
by any query of ours, until a superuser removes them.

What the planner loses: these columns' average width and null fraction, which
it then takes from the column types. No query filters, joins or groups on
them. The downgrade puts the server's default target back and analyses the
table.

Revision ID: platform_0018
Revises: platform_0017
Create Date: 2026-12-07
"""
from collections.abc import Sequence

from alembic import op

revision: str = "platform_0018"
down_revision: str | Sequence[str] | None = "platform_0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: members' columns that ANALYZE skips
UNANALYSED = ("encrypted_ssn", "encrypted_dob", "email", "phone", "address_line1", "address_line2", "city", "state",
              "zip_code")


def _set(target: int) -> None:
    op.execute("ALTER TABLE members " + ", ".join(f"ALTER COLUMN {name} SET STATISTICS {target}"
                                                  for name in UNANALYSED))


def upgrade() -> None:
    _set(0)
    names = ", ".join(f"'{name}'" for name in UNANALYSED)
    op.execute(f"""
        DO $$ BEGIN
            IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                DELETE FROM pg_statistic WHERE starelid = 'members'::regclass AND staattnum IN (
                    SELECT attnum FROM pg_attribute WHERE attrelid = 'members'::regclass AND attname IN ({names}));
            END IF;
        END $$""")


def downgrade() -> None:
    """Back to the server's default statistics target for these columns, and their statistics."""
    _set(-1)
    op.execute("ANALYZE members")

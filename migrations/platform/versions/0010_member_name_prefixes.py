"""Platform: the words inside names as a side table, read in name order.

platform_0009 looked the words inside names (``lane`` of Murphy-Lane) up in a
GIN index over ``carecli_name_words``; a GIN index cannot return rows in name
order, so ``lane`` or ``l`` read and sorted every member with such a word
(~4,000 on 1M members, 40-50 ms). ``member_name_prefixes`` holds, for every
live member with words inside a name, one row per *prefix* of each such word
(``lane`` gives ``l``, ``la``, ``lan``, ``lane``) with the member's folded
last and first name and id. Its primary key ``(prefix, last_key, first_key,
member_id)`` makes "a word inside a name starts with ``la``, in name order"
one range scan of an index, limited like the other name branches. Only ~1% of
members have such words (≈40K rows on 1M members).

Statement-level triggers on ``members`` keep it up to date, for every way rows
get in (repositories, the COPY of ``carecli/data/bulk``, the seed): they see
the statement's rows as transition tables, so a COPY of 50,000 members runs
one INSERT .. SELECT, not 50,000 trigger calls. Names without a space or a
hyphen (almost all) are skipped by a regular-expression test. A soft-deleted
member's rows go (and come back on restore); a purged member's rows go with
the DELETE; TRUNCATE empties the table. The trigger functions are SECURITY
DEFINER (owned, once grants are applied, by the owner role) so the app role
only reads the table.

``ix_members_name_words`` (the GIN index) is no longer read and is dropped;
``carecli_name_words`` stays (the prefixes are computed from it).
``ix_members_first_name_folded`` becomes ``ix_members_first_name_keys``: the
folded first name, then last name and id, the raw names included, so that a
first-name prefix (``jam``: ~4,000 members) is sorted into name order from an
index-only scan instead of 4,000 rows fetched and folded (20 ms to 2 ms).

Revision ID: platform_0010
Revises: platform_0009
Create Date: 2026-12-03
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "platform_0010"
down_revision: str | Sequence[str] | None = "platform_0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _statements(schema: str) -> tuple[str, ...]:
    """Functions and triggers; calls name ``schema`` (SECURITY DEFINER functions get an empty search_path)."""
    s = schema
    # The rows of one member: its folded names, every prefix of every word inside them. Names
    # without a space or a hyphen have no such words (carecli_name_words splits at those only).
    rows = f"""
        SELECT DISTINCT x.prefix, {s}.carecli_fold(r.last_name), {s}.carecli_fold(r.first_name), r.id,
            r.created_at
        FROM {{source}} r
        CROSS JOIN LATERAL pg_catalog.unnest(pg_catalog.tsvector_to_array(
            {s}.carecli_name_words(r.last_name, r.first_name))) AS w(word)
        CROSS JOIN LATERAL (SELECT pg_catalog."left"(w.word, n) AS prefix
                            FROM pg_catalog.generate_series(1, pg_catalog.length(w.word)) AS n) x
        WHERE r.deleted_at IS NULL
          AND (r.last_name OPERATOR(pg_catalog.~) '[ -]' OR r.first_name OPERATOR(pg_catalog.~) '[ -]')"""
    delete = f"""
        DELETE FROM {s}.member_name_prefixes p
        USING ({rows.format(source="{source}")}) AS d(prefix, last_key, first_key, member_id, created_at)
        WHERE p.prefix OPERATOR(pg_catalog.=) d.prefix AND p.last_key OPERATOR(pg_catalog.=) d.last_key
          AND p.first_key OPERATOR(pg_catalog.=) d.first_key AND p.member_id OPERATOR(pg_catalog.=) d.member_id"""
    insert = f"""
        INSERT INTO {s}.member_name_prefixes (prefix, last_key, first_key, member_id, created_at) {rows}"""
    # An UPDATE touches the words only if a name or deleted_at changed.
    changed = ("(SELECT {side}.* FROM old_rows o JOIN new_rows n ON n.id OPERATOR(pg_catalog.=) o.id "
               "WHERE o.last_name IS DISTINCT FROM n.last_name OR o.first_name IS DISTINCT FROM n.first_name "
               "OR (o.deleted_at IS NULL) IS DISTINCT FROM (n.deleted_at IS NULL) "
               "OR o.created_at IS DISTINCT FROM n.created_at)")
    function = """
    CREATE FUNCTION {name}() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $body$
    BEGIN
    {body};
    RETURN NULL;
    END
    $body$"""
    return (
        f"""
    CREATE TABLE {s}.member_name_prefixes (
        prefix text COLLATE "C" NOT NULL,
        last_key text COLLATE "C" NOT NULL,
        first_key text COLLATE "C" NOT NULL,
        member_id uuid NOT NULL,
        created_at timestamp without time zone,
        CONSTRAINT member_name_prefixes_pkey PRIMARY KEY (prefix, last_key, first_key, member_id)
            INCLUDE (created_at)
    )""",
        function.format(name="carecli_member_prefixes_insert", body=insert.format(source="new_rows")),
        function.format(name="carecli_member_prefixes_update", body=(
            delete.format(source=changed.format(side="o")) + ";\n"
            + insert.format(source=changed.format(side="n")))),
        # A deleted member's rows go whether or not it was live (deleted_at taken as NULL): words a
        # soft delete left behind (triggers off, say) go with the purge.
        function.format(name="carecli_member_prefixes_delete", body=delete.format(
            source="(SELECT id, last_name, first_name, created_at, NULL::timestamp AS deleted_at FROM old_rows)")),
        function.format(name="carecli_member_prefixes_truncate",
                        body=f"TRUNCATE {s}.member_name_prefixes"),
        "CREATE TRIGGER member_name_prefixes_insert AFTER INSERT ON members REFERENCING NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION carecli_member_prefixes_insert()",
        "CREATE TRIGGER member_name_prefixes_update AFTER UPDATE ON members "
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION carecli_member_prefixes_update()",
        "CREATE TRIGGER member_name_prefixes_delete AFTER DELETE ON members REFERENCING OLD TABLE AS old_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION carecli_member_prefixes_delete()",
        "CREATE TRIGGER member_name_prefixes_truncate AFTER TRUNCATE ON members "
        "FOR EACH STATEMENT EXECUTE FUNCTION carecli_member_prefixes_truncate()",
        # The rows of the members already there.
        insert.format(source=f"{s}.members"),
        "ANALYZE member_name_prefixes",
    )


def upgrade() -> None:
    """Create the side table, fill it, add the triggers; drop the GIN index it replaces."""
    bind = op.get_bind()
    schema = bind.execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
    for statement in _statements(schema):
        bind.exec_driver_sql(statement)
    op.drop_index("ix_members_name_words", table_name="members")
    # First names in name order, with the raw names: "first name starts with jam" sorted by an
    # index-only scan (the planner considers one on an expression index only when the columns
    # under the expressions are in the index too).
    op.drop_index("ix_members_first_name_folded", table_name="members")
    op.create_index(
        "ix_members_first_name_keys", "members",
        [sa.literal_column('carecli_fold(first_name::text) COLLATE "C"'),
         sa.literal_column('carecli_fold(last_name::text) COLLATE "C"'), "id"],
        unique=False, postgresql_where=sa.text("deleted_at IS NULL"),
        postgresql_include=["first_name", "last_name"],
    )
    op.execute("ANALYZE members")


def downgrade() -> None:
    """Back to platform_0009: the GIN index over the inner words; no side table."""
    op.drop_index("ix_members_first_name_keys", table_name="members")
    op.create_index(
        "ix_members_first_name_folded", "members",
        [sa.literal_column('carecli_fold(first_name::text) COLLATE "C"')],
        unique=False, postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_index(
        "ix_members_name_words", "members",
        [sa.literal_column("carecli_name_words(last_name::text, first_name::text)")],
        unique=False, postgresql_using="gin",
    )
    for event in ("insert", "update", "delete", "truncate"):
        op.execute(f"DROP TRIGGER member_name_prefixes_{event} ON members")
        op.execute(f"DROP FUNCTION carecli_member_prefixes_{event}()")
    op.drop_table("member_name_prefixes")
    op.execute("ANALYZE members")

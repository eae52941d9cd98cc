"""Every row of every table as text: for scans proving a secret or PHI value was never stored in the clear."""

from __future__ import annotations

from sqlalchemy import Engine, text


def all_rows_text(*engines: Engine) -> str:
    chunks: list[str] = []
    for engine in engines:
        with engine.connect() as connection:
            tables = connection.execute(text(
                "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) FROM information_schema.tables "
                "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'"
            )).scalars().all()
            for table in tables:
                chunks.extend(row[0] for row in connection.execute(text(f"SELECT t::text FROM {table} t")))
    return "\n".join(chunks)

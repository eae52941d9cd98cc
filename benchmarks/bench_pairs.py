"""The database pair the search and app benchmarks share: created once, migrated, seeded when empty."""

from __future__ import annotations

import sys
import time

import psycopg
from psycopg import sql
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from carecli.config import load_settings
from carecli.data import migrate, seeding
from carecli.data.databases import create_database_engine


def database_url(admin_url: str, name: str) -> str:
    """The SQLAlchemy URL of database ``name`` on the server of ``admin_url``."""
    return make_url(admin_url).set(drivername="postgresql+psycopg", database=name).render_as_string(
        hide_password=False)


def bench_engine(url: str) -> Engine:
    return create_database_engine(make_url(url), load_settings({}))


def libpq_url(url: str) -> str:
    """The same database as a plain libpq URL (for psycopg.connect)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def prepare_pair(admin_url: str, names: dict[str, str], members: int) -> tuple[dict[str, str], bool]:
    """Create (or reuse) and migrate the pair ``names`` (identity/platform -> database name), seed it if empty.

    Returns the SQLAlchemy URLs and whether this call seeded it.
    """
    with psycopg.connect(admin_url, autocommit=True) as admin:
        existing = {row[0] for row in admin.execute("SELECT datname FROM pg_database")}
        for name in names.values():
            if name not in existing:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                print(f"created database {name}", file=sys.stderr)
    urls = {db: database_url(admin_url, name) for db, name in names.items()}
    for db, url in urls.items():
        engine = bench_engine(url)
        try:
            before, after = migrate.upgrade(engine, db)
            if before != after:
                print(f"migrated {names[db]} from {before} to {after}", file=sys.stderr)
        finally:
            engine.dispose()
    identity, platform = bench_engine(urls["identity"]), bench_engine(urls["platform"])
    try:
        with platform.connect() as conn:
            present = conn.execute(text("SELECT count(*) FROM members")).scalar_one()
        if present:
            return urls, False
        print(f"seeding {members:,} members...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        seeding.seed_demo_data(identity, platform, members=members, seed=1)
        print(f"seeded in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        return urls, True
    finally:
        identity.dispose()
        platform.dispose()


def fresh_pair(admin_url: str, prefix: str) -> dict[str, str]:
    """New, migrated databases ``<prefix>_identity`` and ``<prefix>_platform`` (dropped first if they exist)."""
    names = {"identity": f"{prefix}_identity", "platform": f"{prefix}_platform"}
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for name in names.values():
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    urls = {db: database_url(admin_url, name) for db, name in names.items()}
    for db, url in urls.items():
        engine = bench_engine(url)
        try:
            migrate.upgrade(engine, db)
        finally:
            engine.dispose()
    return urls


def drop_pair(admin_url: str, prefix: str) -> None:
    """Drop the pair made by :func:`fresh_pair`."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for db in ("identity", "platform"):
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(f"{prefix}_{db}")))

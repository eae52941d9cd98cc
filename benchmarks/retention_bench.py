"""Benchmark ``carecli retention purge``: seeded scratch databases, a share of members deleted long ago.

    .venv/bin/python benchmarks/retention_bench.py --members 100000 --deleted 0.5 \\
        --admin-url postgresql://postgres@127.0.0.1:5432/postgres

Seeds two scratch databases (without PHI), soft-deletes a share of the
members with all their calls, flags, enrollments and facts seven years ago,
then times a dry run and the real purge (the service the CLI calls, as an
admin) and prints rows and rows/s per table. Drops the databases afterwards.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_pairs import bench_engine, database_url  # noqa: E402
from carecli.config import load_settings  # noqa: E402
from carecli.data import migrate, seeding  # noqa: E402
from carecli.data.actor import Actor  # noqa: E402
from carecli.data.databases import Databases  # noqa: E402
from carecli.data.permissions import ALL_PERMISSIONS  # noqa: E402
from carecli.services import retention  # noqa: E402

_AGO = "(now() AT TIME ZONE 'UTC') - interval '7 years'"
_DELETE = [
    f"UPDATE members SET deleted_at = {_AGO} WHERE id IN (SELECT id FROM members ORDER BY id LIMIT :n)",
    f"UPDATE risk_flags SET deleted_at = {_AGO} "
    "WHERE member_id IN (SELECT id FROM members WHERE deleted_at IS NOT NULL)",
    f"UPDATE call_records SET deleted_at = {_AGO} "
    "WHERE member_id IN (SELECT id FROM members WHERE deleted_at IS NOT NULL)",
    f"UPDATE member_insurance_plans SET deleted_at = {_AGO} "
    "WHERE member_id IN (SELECT id FROM members WHERE deleted_at IS NOT NULL)",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--deleted", type=float, default=0.5, help="share of members deleted seven years ago")
    parser.add_argument("--batch-size", type=int, default=retention.DEFAULT_BATCH)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    tag = secrets.token_hex(4)
    names = {"identity": f"carecli_bench_retention_{tag}_identity",
             "platform": f"carecli_bench_retention_{tag}_platform"}
    with psycopg.connect(args.admin_url, autocommit=True) as admin:
        for name in names.values():
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    engines = {db: bench_engine(database_url(args.admin_url, name)) for db, name in names.items()}
    try:
        for db, engine in engines.items():
            migrate.upgrade(engine, db)
        print(f"seeding {args.members:,} members...", file=sys.stderr, flush=True)
        seeding.seed_demo_data(engines["identity"], engines["platform"], members=args.members, seed=1)
        with engines["platform"].begin() as connection:
            for statement in _DELETE:
                connection.execute(text(statement), {"n": int(args.members * args.deleted)})
            connection.execute(text("ANALYZE"))
        databases = Databases(identity=engines["identity"], platform=engines["platform"])
        actor = Actor.create(uuid.uuid4(), ALL_PERMISSIONS, channel="cli", role="admin")
        settings = load_settings({})
        started = time.perf_counter()
        dry = retention.purge(databases, actor, settings, dry_run=True, batch_size=args.batch_size)
        dry_seconds = time.perf_counter() - started
        started = time.perf_counter()
        real = retention.purge(databases, actor, settings, batch_size=args.batch_size)
        seconds = time.perf_counter() - started
        print(f"members {args.members:,}, deleted share {args.deleted}, batch {args.batch_size}")
        print(f"{'table':<28} {'purged':>10} {'blocked':>8}")
        for table in real.tables:
            if table.purged or table.blocked:
                print(f"{table.table:<28} {table.purged:>10,} {table.blocked:>8,}")
        print(f"{'total':<28} {real.purged:>10,}   (dry run counted {dry.purged:,})")
        print(f"dry run {dry_seconds:.1f}s; purge {seconds:.1f}s = {real.purged / seconds:,.0f} rows/s "
              "(with one audit row each)")
    finally:
        for engine in engines.values():
            engine.dispose()
        with psycopg.connect(args.admin_url, autocommit=True) as admin:
            for name in names.values():
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()

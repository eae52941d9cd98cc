"""Benchmark ``carecli seed``: throwaway databases, real schema, one timed seed run.

    .venv/bin/python benchmarks/seed_bench.py --members 100000 \\
        --admin-url postgresql://postgres@127.0.0.1:5432/postgres

Creates two scratch databases on the server behind ``--admin-url``, builds
the schema in them (:func:`create_schema`), runs
:func:`carecli.data.seeding.seed_demo_data`, prints rows per table and the
rates, and drops the databases again (also on failure or Ctrl-C).

``--keep-indexes`` / ``--keep-foreign-keys`` switch off the seeder's
drop-and-rebuild of secondary indexes and foreign keys, to measure what it
buys. Prints counts and timings only, never row contents.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url

# Runnable as a plain script from a checkout: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carecli.config import load_settings  # noqa: E402
from carecli.data import migrate, seeding  # noqa: E402
from carecli.data.databases import create_database_engine  # noqa: E402


def _engine(url: str) -> Engine:
    # carecli's own engine settings (statement timeout, UTC): the seeder must
    # cope with them exactly as under `carecli seed`. Settings from the
    # environment or a config file do not apply to scratch databases.
    return create_database_engine(make_url(url), load_settings({}))


def create_schema(identity_url: str, platform_url: str) -> None:
    """Build carecli's schema in two empty databases: the real Alembic migrations, to head."""
    for database, url in (("identity", identity_url), ("platform", platform_url)):
        engine = _engine(url)
        try:
            migrate.upgrade(engine, database)
        finally:
            engine.dispose()


def _database_url(admin_url: str, name: str) -> str:
    url: URL = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False)


def _progress_printer(enabled: bool) -> seeding.ProgressCallback:
    last: dict[str, Any] = {"table": "", "at": 0.0}
    start = time.perf_counter()

    def report(table: str, done: int, total: int) -> None:
        if not enabled:
            return
        now = time.perf_counter()
        if table != last["table"] or done == total or now - last["at"] > 2:
            print(f"  {now - start:6.1f}s {table:<28} {done:>10,} / {total:,}", file=sys.stderr, flush=True)
            last["table"], last["at"] = table, now

    return report


def run(members: int, admin_url: str, seed: int | None, *, keep_indexes: bool, keep_foreign_keys: bool,
        show_progress: bool) -> seeding.SeedSummary:
    """Create scratch databases, seed them, print the table, drop them."""
    prefix = f"carecli_bench_{os.getpid()}_{secrets.token_hex(3)}"
    names = {"identity": f"{prefix}_identity", "platform": f"{prefix}_platform"}
    created: list[str] = []
    with psycopg.connect(admin_url, autocommit=True) as admin:
        try:
            for name in names.values():
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                created.append(name)
            urls = {db: _database_url(admin_url, name) for db, name in names.items()}
            started = time.perf_counter()
            create_schema(urls["identity"], urls["platform"])
            print(f"schema created in {time.perf_counter() - started:.1f}s", file=sys.stderr)

            if keep_indexes:
                seeding.DEFER_INDEXES_MIN_MEMBERS = sys.maxsize
            if keep_foreign_keys:
                seeding.DEFER_FOREIGN_KEYS = False
            identity, platform = _engine(urls["identity"]), _engine(urls["platform"])
            try:
                summary = seeding.seed_demo_data(identity, platform, members=members, seed=seed,
                                                 progress=_progress_printer(show_progress))
            finally:
                identity.dispose()
                platform.dispose()
        finally:
            for name in created:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    if members < seeding.DEFER_INDEXES_MIN_MEMBERS:
        strategy = ["indexes and foreign keys kept during the load"]
    else:
        strategy = ["secondary indexes rebuilt after the load",
                    "foreign keys re-added after the load" if seeding.DEFER_FOREIGN_KEYS else "foreign keys kept"]
    total_rows = sum(summary.counts.values())
    width = max(len(table) for table in summary.counts)
    print(f"members={members:,} seed={seed} ({'; '.join(strategy)})")
    print(f"{'table':<{width}} | {'rows':>10}")
    print(f"{'-' * width}-+-{'-' * 10}")
    for table, count in summary.counts.items():
        print(f"{table:<{width}} | {count:>10,}")
    print(f"{'-' * width}-+-{'-' * 10}")
    print(f"{'total':<{width}} | {total_rows:>10,}")
    print(f"seconds: {summary.seconds:.1f}   members/s: {members / summary.seconds:,.0f}   "
          f"rows/s: {total_rows / summary.seconds:,.0f}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--admin-url", default=os.environ.get("CARECLI_TEST_PG",
                                                              "postgresql://postgres@127.0.0.1:5432/postgres"),
                        help="libpq URL of a role that may create databases (default: $CARECLI_TEST_PG)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep-indexes", action="store_true",
                        help="load with all indexes and foreign keys in place")
    parser.add_argument("--keep-foreign-keys", action="store_true",
                        help="rebuild indexes but keep the foreign keys during the load")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    run(args.members, args.admin_url, args.seed, keep_indexes=args.keep_indexes,
        keep_foreign_keys=args.keep_foreign_keys, show_progress=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())

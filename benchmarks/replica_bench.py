"""Benchmark read routing: the app's reads with no replica, with a replica, and with the replica down,
and the connections one app process opens.

    .venv/bin/python benchmarks/replica_bench.py --members 20000 \\
        --admin-url postgresql://postgres@127.0.0.1:5432/postgres

Creates throwaway databases on the server behind ``--admin-url`` (an identity and a platform
database, seeded, and a copy of the platform database standing in as the replica, on the same
server: this measures carecli's routing cost, not network or replication), drives the
specialist's Desk as the app does (worklist, search, count, plans, open a member, add a note
then search again), and prints p50/p95 per call and scenario, then the connections each pool
opened and what ``pg_stat_activity`` saw. Dropped at the end. Prints timings only, never values.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import select
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_pairs import database_url  # noqa: E402
from carecli.config import load_settings  # noqa: E402
from carecli.data import migrate, seeding  # noqa: E402
from carecli.data.actor import Actor  # noqa: E402
from carecli.data.crypto.keystore import ensure_primary_key, open_cipher  # noqa: E402
from carecli.data.crypto.master import LocalMasterKey, encode_key, generate_master_key  # noqa: E402
from carecli.data.databases import create_database_engine, open_databases  # noqa: E402
from carecli.data.models.identity import Role as RoleTable  # noqa: E402
from carecli.data.models.identity import User as UserTable  # noqa: E402
from carecli.data.repositories.identity import IdentityUnitOfWork  # noqa: E402
from carecli.data.repositories.member_search import MemberQuery  # noqa: E402
from carecli.services.auth.current import SignedIn, role_of  # noqa: E402
from carecli.services.desk import Desk  # noqa: E402

UNREACHABLE = "postgresql+psycopg://carecli@127.0.0.1:9/replica"


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _create(admin_url: str, names: list[str], template: str | None = None) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for name in names:
            statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            admin.execute(statement)


def _drop(admin_url: str, names: list[str]) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for name in names:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _desk(env: dict[str, str], master: LocalMasterKey) -> Desk:
    databases = open_databases(load_settings(env))
    users, roles = UserTable.__table__, RoleTable.__table__
    with databases.identity.connect() as connection:
        row = connection.execute(select(users).join(roles, roles.c.id == users.c.role_id)
                                 .where(roles.c.name == "specialist").order_by(users.c.email).limit(1)).one()
    with IdentityUnitOfWork(databases.identity, databases.platform, Actor.system("tui")) as uow:
        user = uow.users.to_record(row)
        role, permissions = role_of(uow, user)
    actor = Actor.create(user.id, permissions, channel="tui", role=role)
    cipher = open_cipher(databases.platform, master)
    return Desk(load_settings(env), databases, SignedIn(actor, user, "token", None, role), cipher=lambda: cipher)


def _flow(desk: Desk, rounds: int) -> dict[str, list[float]]:
    """The app's reads ``rounds`` times each, then a tenth as many saves each followed by a search."""
    timings: dict[str, list[float]] = {}

    def timed(name: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = call()
        timings.setdefault(name, []).append(time.perf_counter() - started)
        return result

    first = desk.search_members(MemberQuery()).rows[0].id
    for _ in range(rounds):
        timed("worklist", desk.worklist)
        timed("search 'smi'", lambda: desk.search_members(MemberQuery(text="smi")))
        timed("count (all)", lambda: desk.count_members(MemberQuery()))
        timed("plans", desk.plans)
        timed("open member (primary)", lambda: desk.open_member(first))
    # Saves last: each sends the reads of the next read_your_writes_seconds to the primary.
    for _ in range(max(1, rounds // 10)):
        timed("add note (primary)", lambda: desk.add_note(first, "bench note"))
        timed("search right after a save", lambda: desk.search_members(MemberQuery(text="smi")))
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()

    prefix = f"carecli_bench_replica_{os.getpid()}"
    names = {"identity": f"{prefix}_identity", "platform": f"{prefix}_platform"}
    replica = f"{prefix}_replica"
    created: list[str] = []
    try:
        _create(args.admin_url, list(names.values()))
        created += names.values()
        urls = {db: database_url(args.admin_url, name) for db, name in names.items()}
        settings = load_settings({})
        engines = {db: create_database_engine(make_url(url), settings) for db, url in urls.items()}
        for db, engine in engines.items():
            migrate.upgrade(engine, db)
        master_bytes = generate_master_key()
        master = LocalMasterKey(master_bytes, "bench")
        ensure_primary_key(engines["platform"], master)
        started = time.perf_counter()
        seeding.seed_demo_data(engines["identity"], engines["platform"], members=args.members, seed=7,
                               cipher=open_cipher(engines["platform"], master))
        print(f"seeded {args.members:,} members in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        for engine in engines.values():
            engine.dispose()
        _create(args.admin_url, [replica], template=names["platform"])
        created.append(replica)

        base_env = {"CARECLI_IDENTITY_URL": urls["identity"], "CARECLI_PLATFORM_URL": urls["platform"],
                    "CARECLI_MASTER_KEY": encode_key(master_bytes)}
        scenarios = {
            "no replica": base_env,
            "replica": {**base_env, "CARECLI_PLATFORM_READ_URL": database_url(args.admin_url, replica)},
            "replica down": {**base_env, "CARECLI_PLATFORM_READ_URL": UNREACHABLE},
        }
        logging.getLogger("carecli.data.replica").setLevel(logging.ERROR)  # "replica down" warns, as meant
        results: dict[str, dict[str, list[float]]] = {}
        connections: list[tuple[str, str, int, int]] = []
        for scenario, env in scenarios.items():
            desk = _desk(env, master)
            results[scenario] = _flow(desk, args.rounds)
            health = desk.databases.replica_health()
            with psycopg.connect(args.admin_url, autocommit=True) as admin:
                seen: dict[str, int]
                seen = dict(admin.execute("SELECT datname, count(*) FROM pg_stat_activity "
                                          "WHERE datname LIKE %s AND application_name = 'carecli' GROUP BY 1",
                                          (f"{prefix}%",)).fetchall())
            for pool in desk.databases.pools():
                database = {"identity": names["identity"], "platform": names["platform"],
                            "platform_read": replica}[pool.name]
                connections.append((scenario, pool.name, pool.checked_in + pool.checked_out,
                                    int(seen.get(database, 0)) if pool.name != "platform_read" or
                                    scenario == "replica" else 0))
            print(f"{scenario}: replica reads {health.replica_reads}, read-your-writes {health.read_your_writes}, "
                  f"fallbacks {health.fallbacks}", file=sys.stderr)
            desk.databases.dispose()

        calls = list(results["no replica"])
        print(f"\n{'call':<28}" + "".join(f"{s + ' p50/p95 ms':>26}" for s in scenarios))
        for call in calls:
            cells = []
            for scenario in scenarios:
                values = results[scenario][call]
                cells.append(f"{_p(values, 0.5):>11.2f} / {_p(values, 0.95):<8.2f}")
            print(f"{call:<28}" + "".join(f"{cell:>26}" for cell in cells))
        print(f"\n{'scenario':<14}{'pool':<15}{'opened by the pool':>20}{'pg_stat_activity':>18}")
        for scenario, pool_name, opened, seen_count in connections:
            print(f"{scenario:<14}{pool_name:<15}{opened:>20}{seen_count:>18}")
    finally:
        _drop(args.admin_url, created)


if __name__ == "__main__":
    main()

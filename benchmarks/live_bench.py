"""Benchmark live updates: commit in one process -> subscriber callback in another, p50/p95.

    .venv/bin/python benchmarks/live_bench.py --changes 100 \\
        --admin-url postgresql://postgres@127.0.0.1:5432/postgres

Makes a scratch platform database with the real migrations, starts a second
process that subscribes with :func:`carecli.data.notify.subscribe` (the
listener the app uses) and prints when each notice reached its callback,
then commits ``--changes`` writes (a plan each, through the unit of work) one
after another and pairs them up. Times are ``CLOCK_MONOTONIC``, which is one
clock for every process on a Linux machine. Also compares the cost of a
commit with and without its NOTIFY. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy.engine import make_url  # noqa: E402

from benchmarks.bench_pairs import database_url  # noqa: E402
from carecli.config import load_settings  # noqa: E402
from carecli.data import migrate, notify  # noqa: E402
from carecli.data.actor import Actor  # noqa: E402
from carecli.data.databases import create_database_engine  # noqa: E402
from carecli.data.permissions import ALL_PERMISSIONS  # noqa: E402
from carecli.data.unit_of_work import PlatformUnitOfWork  # noqa: E402


def listen(url: str) -> None:
    """The other process: print "<monotonic ns> <entity id>" for each notice, "ready" once listening."""
    engine = create_database_engine(make_url(url), load_settings({}))

    def callback(notice: notify.Notice) -> None:
        now = time.monotonic_ns()
        for change in notice.changes:
            print(f"{now} {change.entity_id}", flush=True)

    subscription = notify.subscribe(engine, callback)
    subscription.listener.wait_listening()
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    subscription.close()
    engine.dispose()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--listen", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.listen:
        listen(args.listen)
        return

    name = f"carecli_bench_live_{os.getpid()}"
    with psycopg.connect(args.admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = database_url(args.admin_url, name)
    engine = create_database_engine(make_url(url), load_settings({}))
    child = None
    try:
        migrate.upgrade(engine, "platform")
        actor = Actor.create(uuid.uuid4(), ALL_PERMISSIONS, channel="cli", role="admin")
        child = subprocess.Popen([sys.executable, __file__, "--listen", url], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdin is not None
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("the listening process did not start")

        sent: dict[str, tuple[int, int]] = {}
        with_notify: list[float] = []
        for number in range(args.changes):
            with PlatformUnitOfWork(engine, actor) as uow:
                plan = uow.plans.create({"plan_code": f"LIVE-{number:04d}", "plan_name": "bench"})
                before = time.monotonic_ns()
                uow.commit()
                after = time.monotonic_ns()
            sent[str(plan.id)] = (before, after)
            with_notify.append((after - before) / 1e6)
            line = child.stdout.readline().split()  # one at a time: each change is measured alone
            received, entity_id = int(line[0]), line[1]
            sent[entity_id] = (*sent[entity_id], received)  # type: ignore[assignment]

        without_notify: list[float] = []
        for number in range(args.changes):
            with PlatformUnitOfWork(engine, actor) as uow:
                uow.plans.create({"plan_code": f"QUIET-{number:04d}", "plan_name": "bench"})
                uow.changes.clear()  # the same commit, minus its NOTIFY
                before = time.monotonic_ns()
                uow.commit()
                without_notify.append((time.monotonic_ns() - before) / 1e6)

        from_call = [(times[2] - times[0]) / 1e6 for times in sent.values()]  # type: ignore[misc]
        from_return = [(times[2] - times[1]) / 1e6 for times in sent.values()]  # type: ignore[misc]
        print(f"live updates, {args.changes} changes, one at a time (ms)")
        print(f"{'measure':<44} {'p50':>8} {'p95':>8} {'max':>8}")
        for label, values in (("commit() called -> other process's callback", from_call),
                              ("commit() returned -> other process's callback", from_return),
                              ("commit() with its NOTIFY", with_notify),
                              ("commit() without a NOTIFY", without_notify)):
            print(f"{label:<44} {statistics.median(values):>8.2f} {percentile(values, 0.95):>8.2f} "
                  f"{max(values):>8.2f}")
    finally:
        if child is not None:
            if child.stdin is not None:
                child.stdin.close()
            child.wait(timeout=10)
        engine.dispose()
        with psycopg.connect(args.admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()

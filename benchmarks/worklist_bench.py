"""The worklist as each specialist sees it: build time p50/p95 over every specialist, and the case-loop steps.

Creates (or reuses) a seeded pair ``carecli_bench_worklist_*`` on the server of
``--admin-url``, then times ``WorklistRepository.build`` for every live
specialist (``--rounds`` times each), and the steps of issue 14 on scheduled
calls of the seed: complete, resolve a flag raised from it, read the call view.
Each step is a real audited write; they run on a copy of one scheduled call per
round, so the seed's calls stay as they were.

    .venv/bin/python benchmarks/worklist_bench.py --members 200000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_pairs import bench_engine, prepare_pair  # noqa: E402 (after the path is set)
from benchmarks.table import print_table  # noqa: E402
from carecli.data.actor import Actor  # noqa: E402
from carecli.data.permissions import DEFAULT_ROLES  # noqa: E402
from carecli.data.rules import utc_now  # noqa: E402
from carecli.data.unit_of_work import PlatformUnitOfWork  # noqa: E402
from carecli.services.desk import local_day_bounds  # noqa: E402


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"p50 {statistics.median(ordered):7.1f} ms   p95 {p95:7.1f} ms   (n={len(ordered)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--members", type=int, default=200_000, help="members to seed into an empty pair")
    parser.add_argument("--rounds", type=int, default=5, help="worklist builds per specialist")
    parser.add_argument("--steps", type=int, default=200, help="complete/flag/resolve rounds")
    args = parser.parse_args()

    prefix = f"carecli_bench_worklist_{args.members}"
    urls, _seeded = prepare_pair(args.admin_url, {"identity": f"{prefix}_identity", "platform": f"{prefix}_platform"},
                                 args.members)
    engine = bench_engine(urls["platform"])
    with engine.connect() as connection:
        users = [row[0] for row in connection.execute(text(
            "SELECT user_id FROM specialists WHERE deleted_at IS NULL AND user_id IS NOT NULL"))]
    permissions = DEFAULT_ROLES["specialist"][1]
    actors = [Actor.create(user, permissions, channel="cli", role="specialist") for user in users]
    today, start, end = local_day_bounds()

    builds: list[float] = []
    for _ in range(args.rounds):
        for actor in actors:
            with PlatformUnitOfWork(engine, actor) as uow:
                began = time.perf_counter()
                uow.worklist.build(today, start, end)
                builds.append((time.perf_counter() - began) * 1000)

    complete, raise_flag, resolve, view = [], [], [], []
    with engine.connect() as connection:
        template = connection.execute(text(
            "SELECT c.member_id, c.specialist_id, s.user_id FROM call_records c JOIN specialists s "
            "ON s.id = c.specialist_id WHERE c.call_status = 'completed' AND c.deleted_at IS NULL "
            "ORDER BY c.started_at DESC LIMIT 1")).one()
    actor = Actor.create(template.user_id, permissions, channel="cli", role="specialist")
    for _ in range(args.steps):
        with PlatformUnitOfWork(engine, actor) as uow:
            call = uow.calls.schedule(template.member_id, template.specialist_id,
                                      when=utc_now().replace(microsecond=0) + timedelta(hours=1), call_type="follow_up")
            uow.commit()
        began = time.perf_counter()
        with PlatformUnitOfWork(engine, actor) as uow:
            done = uow.calls.complete(call.id, call.updated_at, started_at=utc_now(), ended_at=None,
                                      outcome="reached", notes="benchmark", follow_up_required=False)
            uow.commit()
        complete.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        with PlatformUnitOfWork(engine, actor) as uow:
            flag = uow.risk_flags.raise_from_call(done.id, risk_type="other", severity="low",
                                                  description="benchmark")
            uow.commit()
        raise_flag.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        with PlatformUnitOfWork(engine, actor) as uow:
            uow.risk_flags.resolve(flag.id, flag.updated_at, "benchmark")
            uow.commit()
        resolve.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        with PlatformUnitOfWork(engine, actor) as uow:
            uow.calls.get(done.id)
            uow.risk_flags.for_call(done.id)
            uow.risk_flags.resolutions([flag.id])
            uow.calls.logged_by(done.id)
        view.append((time.perf_counter() - began) * 1000)
    # Leave the seed as it was: the benchmark's own rows go (audit rows stay; they are append-only).
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM metadata WHERE entity_type = 'risk_flag' AND metadata_value->>'note' = "
                                "'benchmark'"))
        connection.execute(text("DELETE FROM risk_flags WHERE description = 'benchmark'"))
        connection.execute(text("DELETE FROM call_records WHERE call_notes = 'benchmark'"))
    engine.dispose()

    print_table([
        ("members", f"{args.members:,}"),
        ("worklist build, every specialist", percentiles(builds)),
        ("complete a scheduled call (audited)", percentiles(complete)),
        ("raise a flag from it (audited)", percentiles(raise_flag)),
        ("resolve the flag (audited, metadata)", percentiles(resolve)),
        ("read the call, its flags and resolutions", percentiles(view)),
    ], value_width=52)


if __name__ == "__main__":
    main()

"""Benchmark the member browser's search on a million members: p50/p95 latency per typical request.

    .venv/bin/python benchmarks/search_bench.py \\
        --admin-url postgresql://postgres@127.0.0.1:5432/postgres --database carecli_bench_search

Uses the databases ``<database>_identity`` and ``<database>_platform`` on the
server behind ``--admin-url``: creates them if they do not exist, migrates
them to head (so an older copy gets the search indexes), seeds ``--members``
members with ``carecli seed``'s loader if ``members`` is empty, adds a few
members with a rare name and a few hundred with accented, hyphenated and two-part names (for
the accent, word-inside-a-name and e-mail-before-the-@ cases), and VACUUM ANALYZEs ``members``. They are kept for
the next run (a million members take ~25 s to seed) unless ``--drop`` is given.

Every request runs as the app runs it: its own unit of work on a pooled
connection (BEGIN, the search, ROLLBACK), through
:class:`MemberSearchRepository`. Each case is warmed up, then timed
``--repeat`` times. A second table shows why every search forces custom plans:
a rotation of terms, common and rare, with generic plans allowed and not.
``--explain`` prints EXPLAIN ANALYZE of each case's statements. Prints
counts, timings and plans; the plans show the search terms (synthetic names),
never row contents.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine, event, text

# Runnable as a plain script from a checkout: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_pairs import bench_engine as _engine  # noqa: E402
from benchmarks.bench_pairs import libpq_url, prepare_pair  # noqa: E402
from carecli.data.actor import Actor  # noqa: E402
from carecli.data.permissions import ALL_PERMISSIONS  # noqa: E402
from carecli.data.repositories import member_search  # noqa: E402
from carecli.data.repositories.member_search import MemberQuery, MemberSearchRepository  # noqa: E402
from carecli.data.unit_of_work import PlatformUnitOfWork  # noqa: E402

RARE_LAST_NAME = "Quenneville"  # not in the seed's name lists
RARE_MEMBERS = 20
#: Accented and two-part names for the folding and inner-word cases (a pair seeded
#: before the seed's lists had them gets them here): (first name, last name, how many).
NAME_VARIANTS = (("José", "Ybarra-Núñez", 200), ("Joaquín", "De la Cruz", 200), ("Zoë", "Müller-Lane", 200))


# --------------------------------------------------------------------------
# The databases
# --------------------------------------------------------------------------


def prepare(admin_url: str, database: str, members: int) -> dict[str, str]:
    """Create (or reuse), migrate and seed the pair; return their URLs."""
    urls, _seeded = prepare_pair(admin_url, {"identity": f"{database}_identity",
                                             "platform": f"{database}_platform"}, members)
    platform = _engine(urls["platform"])
    try:
        _add_rare_members(platform)
    finally:
        platform.dispose()
    with psycopg.connect(libpq_url(urls["platform"]), autocommit=True) as conn:
        # The steady state autovacuum keeps a live table in (visibility map, statistics).
        conn.execute("VACUUM (ANALYZE) members, member_insurance_plans")
        if conn.execute("SELECT to_regclass('member_name_prefixes')").fetchone() != (None,):  # platform_0010
            conn.execute("VACUUM (ANALYZE) member_name_prefixes")
    return urls


def _add_rare_members(platform: Engine) -> None:
    with platform.begin() as conn:
        have = conn.execute(text("SELECT count(*) FROM members WHERE last_name = :n"),
                            {"n": RARE_LAST_NAME}).scalar_one()
        variants = conn.execute(text("SELECT count(*) FROM members WHERE last_name = :n"),
                                {"n": NAME_VARIANTS[0][1]}).scalar_one()
    with PlatformUnitOfWork(platform, _actor()) as uow:
        if not have:
            for i in range(RARE_MEMBERS):
                uow.members.create({"first_name": f"Zephyr{i}", "last_name": RARE_LAST_NAME,
                                    "email": f"zephyr{i}.quenneville@example.org", "phone": f"+1555999{i:04d}"})
        if not variants:
            for first, last, count in NAME_VARIANTS:
                for _ in range(count):
                    uow.members.create({"first_name": first, "last_name": last})
        uow.commit()


def _actor() -> Actor:
    return Actor.create(uuid.uuid4(), ALL_PERMISSIONS, channel="cli", role="admin")


def drop(admin_url: str, database: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for suffix in ("identity", "platform"):
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(f"{database}_{suffix}")))


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

Request = Callable[[MemberSearchRepository], str]


@dataclass
class Case:
    label: str
    request: Request


def _page(query: MemberQuery, after: Any = None, limit: int = 50) -> Request:
    def run(repo: MemberSearchRepository) -> str:
        page = repo.search(query, after=after, limit=limit)
        return f"{len(page.rows)} rows" + (", more" if page.next_cursor else "")
    return run


def _count(query: MemberQuery) -> Request:
    def run(repo: MemberSearchRepository) -> str:
        return repo.count(query).describe()
    return run


def _names(word: str) -> Request:
    def run(repo: MemberSearchRepository) -> str:
        return f"{len(repo.names(word))} rows"
    return run


def build_cases(platform: Engine) -> list[Case]:
    with platform.connect() as conn:
        plans = conn.execute(text(
            "SELECT insurance_plan_id, count(*) FROM member_insurance_plans "
            "WHERE status = 'active' AND deleted_at IS NULL GROUP BY 1 ORDER BY 2 DESC")).all()
    big_plan, small_plan = plans[0][0], plans[-1][0]
    with PlatformUnitOfWork(platform, _actor()) as uow:
        cursor = None
        for _ in range(99):
            cursor = uow.member_search.search(MemberQuery(), after=cursor).next_cursor
        newest_cursor = None
        for _ in range(99):
            newest_cursor = uow.member_search.search(MemberQuery(sort="newest"), after=newest_cursor).next_cursor
    q = MemberQuery
    return [
        Case("browse by name, first page", _page(q())),
        Case("browse by name, page 100 (keyset)", _page(q(), cursor)),
        Case("browse newest first, page 100", _page(q(sort="newest"), newest_cursor)),
        Case("browse by name descending", _page(q(sort="name_desc"))),
        Case("one letter 's'", _page(q("s"))),
        Case("common last-name prefix 'smi'", _page(q("smi"))),
        Case("common first-name prefix 'jam'", _page(q("jam"))),
        Case("rare prefix 'quenn' (20 members)", _page(q("quenn"))),
        Case("no match 'xq'", _page(q("xq"))),
        Case("two words 'mar smi'", _page(q("mar smi"))),
        Case("two words 'j s'", _page(q("j s"))),
        Case("three words 'mary ann smith'", _page(q("mary ann smith"))),
        Case("e-mail prefix 'mary.jones@exa'", _page(q("mary.jones@exa"))),
        Case("e-mail before the @ 'joshua.a'", _page(q("joshua.a"))),
        Case("e-mail before the @ 'mary.jones1'", _page(q("mary.jones1"))),
        Case("accent typed 'josé' (Jose, José)", _page(q("josé"))),
        Case("accent not typed 'nunez'", _page(q("nunez"))),
        Case("word inside a name 'lane'", _page(q("lane"))),
        Case("word inside a name 'cruz'", _page(q("cruz"))),
        Case("inner words, one letter 'l'", _page(q("l"))),
        Case("two words 'jo lane'", _page(q("jo lane"))),
        Case("'lane', newest first", _page(q("lane", sort="newest"))),
        Case("'la', name descending", _page(q("la", sort="name_desc"))),
        Case("'lane' + status suspended", _page(q("lane", status="suspended"))),
        Case("count: 'lane' (exact)", _count(q("lane"))),
        Case("count: 'joshua.a'", _count(q("joshua.a"))),
        Case("phone prefix '555 012' (~1,000)", _page(q("555 012"))),
        Case("phone prefix '(555) 012-34' (~10)", _page(q("(555) 012-34"))),
        Case("phone prefix '555' (everyone)", _page(q("555"))),
        Case("status suspended (3%)", _page(q(status="suspended"))),
        Case("status suspended, newest first", _page(q(status="suspended", sort="newest"))),
        Case("largest plan", _page(q(plan_id=big_plan))),
        Case("smallest plan", _page(q(plan_id=small_plan))),
        Case("'smi' + largest plan", _page(q("smi", plan_id=big_plan))),
        Case("'smi', newest first", _page(q("smi", sort="newest"))),
        Case("palette names('smi')", _names("smi")),
        Case("count: everyone", _count(q())),
        Case("count: 's'", _count(q("s"))),
        Case("count: 'smi' (exact)", _count(q("smi"))),
        Case("count: 'mar smi' (exact)", _count(q("mar smi"))),
        Case("count: status suspended", _count(q(status="suspended"))),
        Case("count: largest plan", _count(q(plan_id=big_plan))),
        Case("count: phone '555'", _count(q("555"))),
    ]


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------


def _once(platform: Engine, actor: Actor, request: Request) -> tuple[float, str]:
    started = time.perf_counter()
    with PlatformUnitOfWork(platform, actor) as uow:
        outcome = request(uow.member_search)
    return (time.perf_counter() - started) * 1000, outcome


def _percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=20, method="inclusive")
    return statistics.median(samples), cuts[18]


def time_cases(platform: Engine, cases: list[Case], repeat: int,
               warmup: int = 3) -> list[tuple[str, str, float, float]]:
    actor = _actor()
    results = []
    for case in cases:
        for _ in range(warmup):
            _once(platform, actor, case.request)
        samples, outcome = [], ""
        for _ in range(repeat):
            elapsed, outcome = _once(platform, actor, case.request)
            samples.append(elapsed)
        p50, p95 = _percentiles(samples)
        results.append((case.label, outcome, p50, p95))
    return results


@contextmanager
def generic_plans_allowed():
    """Run searches without forcing custom plans (what the repository would do without it)."""
    original = MemberSearchRepository._custom_plans
    MemberSearchRepository._custom_plans = lambda self: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        MemberSearchRepository._custom_plans = original  # type: ignore[method-assign]


ROTATION = ("smi", "quenn", "s", "jo", "xq", "mar")


def time_rotation(platform: Engine, rounds: int) -> dict[str, list[float]]:
    """Each term in turn, ``rounds`` times, on one pooled connection (psycopg prepares after 5 runs)."""
    actor = _actor()
    samples: dict[str, list[float]] = {term: [] for term in ROTATION}
    for _ in range(rounds):
        for term in ROTATION:
            for sort in ("name", "newest"):
                elapsed, _ = _once(platform, actor, _page(MemberQuery(term, sort=sort)))
                samples[term].append(elapsed)
    return samples


def explain(platform: Engine, cases: list[Case]) -> None:
    captured: list[tuple[str, Any]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            captured.append((statement, parameters))

    actor = _actor()
    for case in cases:
        event.listen(platform, "before_cursor_execute", capture)
        try:
            with PlatformUnitOfWork(platform, actor) as uow:
                case.request(uow.member_search)
        finally:
            event.remove(platform, "before_cursor_execute", capture)
        with PlatformUnitOfWork(platform, actor) as uow:
            uow.connection.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
            for statement, parameters in captured:
                plan = uow.connection.exec_driver_sql(
                    "EXPLAIN (ANALYZE, COSTS OFF) " + statement, parameters).scalars().all()
                print(f"\n## {case.label}\n" + "\n".join(plan))
        captured.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", default=os.environ.get("CARECLI_TEST_PG",
                                                              "postgresql://postgres@127.0.0.1:5432/postgres"),
                        help="libpq URL of a role that may create databases (default: $CARECLI_TEST_PG)")
    parser.add_argument("--database", default="carecli_bench_search",
                        help="name prefix of the database pair (kept between runs)")
    parser.add_argument("--members", type=int, default=1_000_000, help="members to seed into an empty pair")
    parser.add_argument("--repeat", type=int, default=40, help="timed runs per case")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of the plan-cache rotation")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of every case")
    parser.add_argument("--drop", action="store_true", help="drop the databases at the end")
    args = parser.parse_args(argv)

    try:
        urls = prepare(args.admin_url, args.database, args.members)
        platform = _engine(urls["platform"])
        try:
            with platform.connect() as conn:
                live = conn.execute(text("SELECT count(*) FROM members WHERE deleted_at IS NULL")).scalar_one()
                version = conn.execute(text("SHOW server_version")).scalar_one()
            cases = build_cases(platform)
            if args.explain:
                explain(platform, cases)
            results = time_cases(platform, cases, args.repeat)
            width = max(len(label) for label, *_ in results)
            print(f"\nPostgreSQL {version}, {live:,} live members, {args.repeat} runs per case "
                  f"(unit of work included), limit 50, exact counts up to {member_search.EXACT_COUNT_LIMIT:,}")
            print(f"{'case':<{width}} | {'result':<16} | {'p50 ms':>7} | {'p95 ms':>7}")
            print(f"{'-' * width}-+-{'-' * 16}-+-{'-' * 7}-+-{'-' * 7}")
            for label, outcome, p50, p95 in results:
                print(f"{label:<{width}} | {outcome:<16} | {p50:7.2f} | {p95:7.2f}")

            custom = time_rotation(platform, args.rounds)
            with generic_plans_allowed():
                generic = time_rotation(platform, args.rounds)
            print(f"\nplan cache: terms in rotation, name and newest order, {args.rounds} rounds on a pooled "
                  "connection (psycopg prepares after 5 runs)")
            print(f"{'term':<8} | {'custom p50':>10} | {'custom p95':>10} | {'generic p50':>11} | {'generic p95':>11}")
            print(f"{'-' * 8}-+-{'-' * 10}-+-{'-' * 10}-+-{'-' * 11}-+-{'-' * 11}")
            for term in ROTATION:
                c50, c95 = _percentiles(custom[term])
                g50, g95 = _percentiles(generic[term])
                print(f"{term:<8} | {c50:10.2f} | {c95:10.2f} | {g50:11.2f} | {g95:11.2f}")
        finally:
            platform.dispose()
    finally:
        if args.drop:
            drop(args.admin_url, args.database)
    return 0


if __name__ == "__main__":
    sys.exit(main())

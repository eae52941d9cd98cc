"""Sealing and verifying the audit history: rows per second, and memory that does not grow with the table.

Run: .venv/bin/python benchmarks/audit_seal_bench.py --admin-url postgresql://postgres@127.0.0.1:5432/postgres \\
         --rows 1000000

On a fresh migrated platform database: writes ``--rows`` audit rows (as
carecli writes them: values with a field list, times a millisecond apart,
in one INSERT ... SELECT), then times

* ``seal``: every row sealed (seals of SEAL_MAX_ROWS rows); with ``--no-time-index``, without the
  index on ``created_at`` (a first load builds it after the data, and its audit rows are sealed
  meanwhile);
* ``verify``: the whole chain and every sealed row checked (the server
  computes each row's entry; Python compares each seal's manifest);
* ``verify --since`` the last tenth;

and prints rows per second and this process's peak resident memory after
each step (bounded by one seal's manifest, SEAL_MAX_ROWS entries, whatever
the table's size: compare two --rows). The database is dropped at the end
unless --keep.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text  # noqa: E402

from benchmarks.bench_pairs import bench_engine, drop_pair, fresh_pair  # noqa: E402
from benchmarks.table import print_table  # noqa: E402
from carecli.data import audit_seal  # noqa: E402
from carecli.data.crypto.master import LocalMasterKey, generate_master_key  # noqa: E402

FILL = text(
    "INSERT INTO audit_logs (id, user_id, entity_type, entity_id, action, new_values, ip_address, user_agent, "
    "created_at) SELECT gen_random_uuid(), gen_random_uuid(), 'member', gen_random_uuid(), 'read', "
    "jsonb_build_object('purpose', 'open', 'fields', jsonb_build_array('first_name', 'last_name', 'phone')), "
    "'10.0.0.7'::inet, 'carecli/0.1 (tui)', "
    "TIMESTAMP '2026-01-01' + make_interval(secs => (:offset + g) / 1000.0) FROM generate_series(1, :n) g")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the database pair")
    parser.add_argument("--no-time-index", action="store_true",
                        help="seal without ix_audit_logs_created_at, as during a first load that builds it after "
                             "the data (built again before verifying)")
    parser.add_argument("--profile", action="store_true",
                        help="print cProfile's top entries (cumulative) of the whole verify (this process only)")
    args = parser.parse_args(argv)
    prefix = "carecli_bench_seal"
    urls = fresh_pair(args.admin_url, prefix)
    engine = bench_engine(urls["platform"])
    master = LocalMasterKey(generate_master_key(), "bench")
    results: list[tuple[str, str]] = []
    try:
        def fill(rows: int, offset: int) -> None:
            started = time.perf_counter()
            for start in range(0, rows, 500_000):
                with engine.begin() as connection:
                    connection.execute(FILL, {"n": min(500_000, rows - start), "offset": offset + start})
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.execute(text("VACUUM ANALYZE audit_logs"))
            results.append((f"write {rows:,} audit rows (INSERT ... SELECT)", f"{time.perf_counter() - started:.1f} s"))

        def timed(label: str, rows: int, call) -> Any:  # noqa: ANN001
            started = time.perf_counter()
            report = call()
            seconds = time.perf_counter() - started
            results.append((label, f"{seconds:.1f} s, {rows / seconds:,.0f} rows/s, peak RSS {peak_mib():.0f} MiB"))
            return report

        results.append(("peak RSS before sealing", f"{peak_mib():.0f} MiB"))
        fill(args.rows, 0)
        if args.no_time_index:
            with engine.begin() as connection:
                definition = connection.execute(text("SELECT pg_get_indexdef('ix_audit_logs_created_at'::regclass)")
                                                ).scalar_one()
                connection.execute(text("DROP INDEX ix_audit_logs_created_at"))
        label = " (no time index)" if args.no_time_index else ""
        timed(f"seal {args.rows:,} rows{label}", args.rows, lambda: audit_seal.seal(engine, master))
        if args.no_time_index:
            with engine.begin() as connection:
                connection.execute(text(definition))
        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            profiler.enable()
        report = timed(f"verify all {args.rows:,} rows", args.rows, lambda: audit_seal.verify(engine, master))
        if profiler is not None:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
        assert report.intact and report.rows_checked == args.rows, report.findings[:3]
        with engine.connect() as connection:
            since = connection.execute(text("SELECT range_end FROM audit_seals ORDER BY seal_no DESC "
                                            "OFFSET :k LIMIT 1"), {"k": max(0, report.seals // 10 - 1)}).scalar()
        tenth = timed("verify --since (the last seals, about a tenth)", max(1, args.rows // 10),
                      lambda: audit_seal.verify(engine, master, since=since))
        assert tenth.intact
        results.append(("seals", f"{report.seals:,} of at most {audit_seal.SEAL_MAX_ROWS:,} rows"))
    finally:
        engine.dispose()
        if not args.keep:
            drop_pair(args.admin_url, prefix)
    print_table(results, value_width=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())

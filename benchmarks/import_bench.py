"""Import speed: `carecli import members` end to end from a CSV file, against a plain COPY.

Run: .venv/bin/python benchmarks/import_bench.py --admin-url postgresql://postgres@127.0.0.1:5432/postgres

1. writes a CSV of N synthetic members (external member number, name, SSN,
   date of birth, contact details; fictional by construction);
2. on a fresh, migrated database pair, runs the real `carecli import members
   FILE --json` as the API token of an administrator with the import:run
   scope: parse, validate, encrypt SSN and DOB, blind index, match, COPY
   members, their metadata rows and audit rows;
3. baseline, in the same run: the rows that import wrote (members, their
   metadata rows, their audit rows; already encrypted) are dumped with
   binary COPY TO and timed going back in with binary COPY FROM into bare
   copies of those tables (`CREATE TABLE ... (LIKE ...)`: no indexes, no
   constraints beyond NOT NULL): the least work the database can do for
   that data; and the same COPY into the real tables of a second, empty
   migrated database (10, 8 and 5 indexes, keys and checks): the least
   work any loader can make the database do on this schema;
4. re-runs the same file (every row unchanged);
5. peak resident memory of the import process (alone, and with its worker
   processes, summed) at two file sizes (N/10 and
   N), each into fresh databases: it must not grow with the file.

Prints a table; keeps nothing (the databases are dropped at the end unless --keep).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_pairs import bench_engine, database_url, drop_pair, fresh_pair, libpq_url  # noqa: E402
from benchmarks.table import machine_speed, print_table  # noqa: E402
from carecli.config import load_settings  # noqa: E402
from carecli.data import deferred_indexes  # noqa: E402
from carecli.data.actor import Actor  # noqa: E402
from carecli.data.crypto.master import encode_key, generate_master_key  # noqa: E402
from carecli.data.databases import open_databases  # noqa: E402
from carecli.data.permissions import ALL_PERMISSIONS  # noqa: E402
from carecli.data.seeding import FIRST_NAMES, LAST_NAMES  # noqa: E402
from carecli.services.auth.tokens import create_api_token  # noqa: E402
from carecli.services.users import bootstrap_admin  # noqa: E402

T = TypeVar("T")
HEADER = ("external_member_number", "first_name", "last_name", "ssn", "dob", "email", "phone", "address_line1",
          "city", "state", "zip_code", "status")
STATES = ("OR", "WA", "CA", "NY", "TX", "FL", "IL", "OH", "GA", "NC")
CITIES = ("Portland", "Seattle", "Oakland", "Albany", "Austin", "Tampa", "Chicago", "Dayton", "Macon", "Durham")


def _local(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def write_csv(path: Path, members: int, seed: int = 7) -> None:
    """N members with unique numbers and unique valid SSNs (area 001-665, group 01-99, serial 0001-9999)."""
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for i in range(members):
            area, rest = divmod(i, 99 * 9999)
            group, serial = divmod(rest, 9999)
            ssn = f"{area + 1:03d}-{group + 1:02d}-{serial + 1:04d}"
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            state = rng.randrange(len(STATES))
            writer.writerow((
                f"EMN{i:09d}", first, last, ssn,
                f"{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}/{rng.randint(1930, 2015)}",
                f"{_local(first)}.{_local(last)}{i}@example.org", f"(555) {rng.randint(200, 999)}-{i % 10000:04d}",
                f"{rng.randint(1, 9999)} Main St", CITIES[state], STATES[state], f"{rng.randint(10000, 99999)}",
                "active",
            ))


def environment(urls: dict[str, str], master: str) -> dict[str, str]:
    env = {**os.environ, "CARECLI_IDENTITY_URL": urls["identity"], "CARECLI_PLATFORM_URL": urls["platform"],
           "CARECLI_MASTER_KEY": master}
    settings = load_settings(env)
    databases = open_databases(settings)
    try:
        admin = bootstrap_admin(databases, email="bench.admin@example.org", external_id="bench|admin")
        actor = Actor.create(admin.id, ALL_PERMISSIONS, channel="cli", role="admin")
        token = create_api_token(databases, actor, name="import bench", scopes=["import:run"])
    finally:
        databases.identity.dispose()
        databases.platform.dispose()
    env["CARECLI_TOKEN"] = token.secret
    return env


def _processes() -> Iterator[tuple[int, list[str]]]:
    """Each process's pid and the fields of its /proc/PID/stat after the command name (field 3 on: the
    state first). A process that exits while this runs is left out."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                yield int(entry), handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue


def _tree_rss_kib(root: int) -> int:
    """Resident memory of ``root`` and all its descendants (the import's worker processes), in KiB."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for pid, fields in _processes():
        ppid = int(fields[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields[21]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def _cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime + stime, cutime + cstime) of a process, in clock ticks: its own CPU and that of its children
    it has waited for (a PostgreSQL backend's, once it exited)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


class ServerCpu:
    """CPU seconds the local PostgreSQL server spent, read from /proc: the postmaster's own, that of its
    live children (backends, background processes) and that of its children that exited (added to its
    cutime/cstime when it reaps them). A server on another host, or one this user may not read, gives None."""

    def __init__(self, admin_url: str) -> None:
        self.postmaster: int | None = None
        try:
            with psycopg.connect(admin_url) as conn:
                row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            with open(f"/proc/{row[0]}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{parent}/comm") as handle:  # (a server elsewhere: that pid is nobody's here)
                if not handle.read().strip().startswith(("postgres", "postmaster")):
                    return
            self.postmaster = parent
            self.seconds()
        except (OSError, psycopg.Error):
            self.postmaster = None

    def seconds(self) -> float | None:
        if self.postmaster is None:
            return None
        own, reaped = _cpu_ticks(self.postmaster)
        ticks = own + reaped
        # (a child that exits between the two reads is missed by this one: its time moves to the reaped share)
        for _, fields in _processes():
            if int(fields[1]) == self.postmaster:
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def around(self, work: Callable[[], T]) -> tuple[T, float | None]:
        """``work()``'s result and the server CPU seconds spent meanwhile (its backends given time to exit)."""
        before = self.seconds()
        result = work()
        time.sleep(0.5)  # a backend whose client disconnected exits and is reaped
        after = self.seconds()
        return result, (after - before) if before is not None and after is not None else None


class TreeMemory:
    """The peak of the summed RSS of a process tree, sampled every 50 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.05):
            self.peak = max(self.peak, _tree_rss_kib(self.pid))

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


def run_import(env: dict[str, str], path: Path, *args: str,
               py_spy: str | None = None) -> tuple[dict, float, int, int, float]:
    """The real CLI: (its --json summary, wall seconds, peak RSS of the process in KiB, peak RSS of the
    process and its worker processes together in KiB, CPU seconds of the process and its workers). With
    ``py_spy`` it runs under ``py-spy record`` (raw stacks of every thread, 250 a second, into that file),
    which slows it; the memory and CPU figures are then py-spy's process tree's."""
    spy_binary = Path(sys.executable).with_name("py-spy")
    if py_spy and not spy_binary.exists():
        raise SystemExit(f"--py-spy needs py-spy beside this Python: {spy_binary.parent}/pip install py-spy")
    spy = [str(spy_binary), "record", "--threads", "--subprocesses", "-r", "250", "-f", "raw", "-o", py_spy,
           "--"] if py_spy else []
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        # (cwd: `-m` puts the working directory first on the module path, ahead of a tree's PYTHONPATH)
        proc = subprocess.Popen([*spy, sys.executable, "-m", "carecli", "import", "members", str(path), "--json",
                                 *args], env=env, stdout=out, stderr=err, text=True, cwd=path.parent)
        memory = TreeMemory(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        tree = memory.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"import failed ({proc.returncode}): {err.read().strip()[-2000:]}")
        text = out.read()
        # (py-spy prints its own lines around the import's one JSON summary)
        summary = next(line for line in text.splitlines() if line.startswith("{"))
        return (json.loads(summary), seconds, usage.ru_maxrss, max(tree, usage.ru_maxrss),
                usage.ru_utime + usage.ru_stime)


def spy_top(path: str, top: int = 25) -> list[tuple[str, str]]:
    """The functions the samples of a raw py-spy file were in, by their own samples (and with their callees),
    per thread: where the import's CPU went (py-spy records busy threads only)."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        if frames and frames[0].startswith("process "):  # (--subprocesses) "process PID:\"command\""
            frames = frames[1:]
        thread = ""
        if frames and frames[0].startswith("thread "):  # (--threads) "thread (ID): NAME"
            thread, frames = frames[0].rpartition(": ")[2], frames[1:]
        names = [f"{thread}: {frame.split(' (')[0]} ({frame.rsplit('/', 1)[-1].split(':')[0]})" for frame in frames]
        if names:
            own[names[-1]] = own.get(names[-1], 0) + n
        for name in set(names):
            total[name] = total.get(name, 0) + n
    ranked = sorted(own.items(), key=lambda item: -item[1])[:top]
    return [(name[:120], f"{count / samples:6.1%} own ({total[name] / samples:6.1%} with callees)")
            for name, count in ranked]


def timed_copy_in(conn: psycopg.Connection, dumps: dict[str, Path], prefix: str = "") -> float:
    """Seconds to COPY each binary dump into table ``prefix + name``, in one transaction."""
    started = time.perf_counter()
    with conn.transaction():
        for table, path in dumps.items():
            with path.open("rb") as handle, \
                    conn.cursor().copy(f"COPY {prefix}{table} FROM STDIN (FORMAT binary)") as copy:
                while chunk := handle.read(1 << 20):
                    copy.write(chunk)
    return time.perf_counter() - started


def deferred_copy_in(platform_url: str, dumps: dict[str, Path]) -> float:
    """Seconds to drop the deferrable secondary indexes (carecli.data.deferred_indexes), COPY each dump
    into the real tables and build the indexes again: the floor of an import that defers them."""
    engine = bench_engine(platform_url)
    try:
        started = time.perf_counter()
        run = deferred_indexes.run_id()
        with engine.connect() as connection:
            tables = {table: 0 for table in dumps}
            deferred_indexes.defer(connection, tables, run_id=run, actor=Actor.system(), reason="import bench",
                                   incoming={})
        with psycopg.connect(libpq_url(platform_url)) as conn:
            timed_copy_in(conn, dumps)
        result = deferred_indexes.rebuild(engine, Actor.system(), run_id=run)
        assert not result.failed and not result.skipped, result
        return time.perf_counter() - started
    finally:
        engine.dispose()


def baseline(platform_url: str, empty_platform_url: str,
             deferred_platform_url: str | None = None) -> tuple[float, float, float | None, dict[str, int],
                                                                float | None]:
    """Seconds to COPY the import's final rows (binary) into bare copies of their tables, into the
    real tables (their indexes, keys and checks) of another, empty migrated database, and (given a
    third) into the real tables with their deferrable indexes dropped before and built after; the
    row counts; the server's CPU seconds during the COPY into the real tables."""
    selects = {
        "members": "SELECT * FROM members",
        "metadata": "SELECT * FROM metadata WHERE entity_type = 'member'",
        "audit_logs": "SELECT * FROM audit_logs WHERE entity_type IN ('member', 'metadata')",
    }
    dumps: dict[str, Path] = {}
    counts: dict[str, int] = {}
    workdir = Path(tempfile.mkdtemp(prefix="carecli-bench-copy-"))
    with psycopg.connect(libpq_url(platform_url)) as conn:
        for table, query in selects.items():
            path = workdir / f"{table}.bin"
            with path.open("wb") as handle, conn.cursor().copy(f"COPY ({query}) TO STDOUT (FORMAT binary)") as copy:
                for chunk in copy:
                    handle.write(chunk)
            dumps[table] = path
            row = conn.execute(f"SELECT count(*) FROM ({query}) q").fetchone()
            assert row is not None
            counts[table] = row[0]
            conn.execute(f"DROP TABLE IF EXISTS bare_{table}")
            conn.execute(f"CREATE TABLE bare_{table} (LIKE {table})")
        conn.commit()
        conn.execute("CHECKPOINT")
        seconds = timed_copy_in(conn, dumps, "bare_")
        for table in dumps:
            conn.execute(f"DROP TABLE bare_{table}")
        conn.commit()
    with psycopg.connect(libpq_url(empty_platform_url)) as conn:
        conn.execute("CHECKPOINT")
        conn.commit()
        indexed_seconds, indexed_cpu = ServerCpu(libpq_url(empty_platform_url)).around(
            lambda: timed_copy_in(conn, dumps))
    deferred_seconds = None
    if deferred_platform_url is not None:
        with psycopg.connect(libpq_url(deferred_platform_url), autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        deferred_seconds = deferred_copy_in(deferred_platform_url, dumps)
    for path in dumps.values():
        path.unlink()
    workdir.rmdir()
    return seconds, indexed_seconds, deferred_seconds, counts, indexed_cpu


def compare_reruns(args: argparse.Namespace, machine: str) -> None:
    """Re-runs of one loaded file by two source trees, alternated (ABBA), each tree on its own copy."""
    master = encode_key(generate_master_key())
    prefix = args.prefix
    trees = [str(Path(tree).resolve()) for tree in args.compare_trees]
    times: dict[str, list[float]] = {tree: [] for tree in trees}
    with tempfile.TemporaryDirectory(prefix="carecli-import-bench-") as tmp:
        full = Path(tmp) / "full.csv"
        write_csv(full, args.members)
        urls = fresh_pair(args.admin_url, prefix)
        env = environment(urls, master)
        summary, seconds, *_ = run_import(env, full)
        assert summary["created"] == args.members, summary
        print(f"loaded {args.members:,} members in {seconds:.1f} s", file=sys.stderr)
        envs: dict[str, dict[str, str]] = {}
        with psycopg.connect(args.admin_url, autocommit=True) as admin:
            for index, tree in enumerate(trees):
                name = f"{prefix}_platform_{index}"
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(f"{prefix}_platform")))
                envs[tree] = {**env, "CARECLI_PLATFORM_URL": database_url(args.admin_url, name), "PYTHONPATH": tree}
        try:
            for tree in trees:  # each tree records its own digests once (the full path)
                run_import(envs[tree], full)
            for run in range(args.reruns):
                for tree in (trees if run % 2 == 0 else trees[::-1]):
                    rerun, seconds, *_ = run_import(envs[tree], full)
                    assert rerun["unchanged"] == args.members, rerun
                    times[tree].append(seconds)
                    print(f"re-run {run + 1}, {tree}: {seconds:.1f} s (known by digest: "
                          f"{rerun.get('known_unchanged')})", file=sys.stderr)
        finally:
            with psycopg.connect(args.admin_url, autocommit=True) as admin:
                for index in range(len(trees)):
                    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(f"{prefix}_platform_{index}")))
            drop_pair(args.admin_url, prefix)
    rows = [("machine (before the run)", machine), ("members in the file", f"{args.members:,}")]
    for tree in trees:
        rows.append((f"re-run by {tree}, p50 (min-max) of {args.reruns}",
                     f"{statistics.median(times[tree]):.1f} s ({min(times[tree]):.1f}-{max(times[tree]):.1f})"))
    print_table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the databases of the full-size run")
    parser.add_argument("--workers", type=int, default=None, help="carecli import --workers (default: its own)")
    parser.add_argument("--defer-indexes", choices=deferred_indexes.MODES, default=None,
                        help="carecli import --defer-indexes (default: its own, auto)")
    parser.add_argument("--compare-trees", nargs=2, metavar="DIR",
                        help="only re-runs: load the file once, then time --reruns re-runs of it by each of two source "
                             "trees (their PYTHONPATH), alternated one by one, each on its own copy of the loaded "
                             "database (a tree's first re-run records its own digests, untimed)")
    parser.add_argument("--reruns", type=int, default=4, help="timed re-runs per tree with --compare-trees")
    parser.add_argument("--py-spy", metavar="PATH",
                        help="run the full-size first import under py-spy (`.venv/bin/pip install py-spy`; raw stacks "
                             "into PATH; that import's time and memory are then py-spy's too) and print where its "
                             "samples were")
    parser.add_argument("--prefix", default="carecli_bench_import",
                        help="name prefix of the throwaway databases (another run on the same server: another prefix)")
    args = parser.parse_args()
    machine = machine_speed()  # before the run loads the machine
    if args.compare_trees:
        compare_reruns(args, machine)
        return
    master = encode_key(generate_master_key())
    prefix = args.prefix
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="carecli-import-bench-") as tmp:
        small_n = max(args.members // 10, 1)
        small, full = Path(tmp) / "small.csv", Path(tmp) / "full.csv"
        started = time.perf_counter()
        write_csv(small, small_n)
        write_csv(full, args.members)
        print(f"wrote the files in {time.perf_counter() - started:.1f}s ({full.stat().st_size / 1e6:.0f} MB)",
              file=sys.stderr)

        urls = fresh_pair(args.admin_url, prefix)
        env = environment(urls, master)
        extra: tuple[str, ...] = () if args.workers is None else ("--workers", str(args.workers))
        if args.defer_indexes is not None:
            extra += ("--defer-indexes", args.defer_indexes)
        summary_small, seconds_small, rss_small, tree_small, _ = run_import(env, small, *extra)
        drop_pair(args.admin_url, prefix)

        urls = fresh_pair(args.admin_url, prefix)
        env = environment(urls, master)
        server = ServerCpu(args.admin_url)
        (summary, seconds, rss_full, tree_full, client_cpu), server_cpu = server.around(
            lambda: run_import(env, full, *extra, py_spy=args.py_spy))
        assert summary["created"] == args.members, summary
        empty = fresh_pair(args.admin_url, prefix + "_floor")
        empty_deferred = fresh_pair(args.admin_url, prefix + "_floor_deferred")
        copy_seconds, indexed_seconds, deferred_seconds, counts, indexed_cpu = baseline(
            urls["platform"], empty["platform"], empty_deferred["platform"])
        drop_pair(args.admin_url, prefix + "_floor")
        drop_pair(args.admin_url, prefix + "_floor_deferred")
        rerun, rerun_seconds, *_ = run_import(env, full, *extra)
        assert rerun["unchanged"] == args.members, rerun
        if not args.keep:
            drop_pair(args.admin_url, prefix)

    n = args.members
    import_rate = n / seconds
    copy_rate = n / copy_seconds
    rows = [
        ("machine (before the run)", machine),
        ("members in the file", f"{n:,}"),
        ("rows written per member",
         f"{sum(counts.values()) / n:.1f} ({', '.join(f'{t} {c:,}' for t, c in counts.items())})"),
        ("carecli import, end to end (process start to exit)", f"{seconds:.1f} s = {import_rate:,.0f} members/s"),
        ("  of which the loader (its own clock)", f"{summary['seconds']:.1f} s"),
        ("plain binary COPY of the same final rows into bare tables",
         f"{copy_seconds:.1f} s = {copy_rate:,.0f} members/s"),
        ("import rate / COPY rate", f"{import_rate / copy_rate:.2f}"),
        ("plain binary COPY of the same rows into the real, empty tables (their indexes)",
         f"{indexed_seconds:.1f} s = {n / indexed_seconds:,.0f} members/s"),
        ("  that COPY's rate / the bare COPY's rate (the ceiling of any loader)",
         f"{copy_seconds / indexed_seconds:.2f}"),
        ("import rate / that COPY's rate (target >= 0.80)", f"{import_rate * indexed_seconds / n:.2f}"),
        ("CPU of the import: its process (with workers); the server meanwhile",
         f"{client_cpu:.1f} s; {server_cpu:.1f} s" if server_cpu is not None else f"{client_cpu:.1f} s; -"),
        ("CPU of the server during that COPY into the real tables",
         f"{indexed_cpu:.1f} s" if indexed_cpu is not None else "-"),
        (f"  the import's CPU over this machine's {os.cpu_count()} cores (a floor on its time); that COPY / it",
         f"{(client_cpu + server_cpu) / (os.cpu_count() or 1):.1f} s; "
         f"{indexed_seconds * (os.cpu_count() or 1) / (client_cpu + server_cpu):.2f}"
         if server_cpu is not None else "-"),
        ("the same COPY into the real tables, deferrable indexes dropped before and built after",
         f"{deferred_seconds:.1f} s = {n / deferred_seconds:,.0f} members/s" if deferred_seconds else "-"),
        ("  that COPY's rate / the bare COPY's rate",
         f"{copy_seconds / deferred_seconds:.2f}" if deferred_seconds else "-"),
        ("secondary indexes the import built after the data (of them not built)",
         f"{summary.get('indexes_deferred', 0)} ({summary.get('indexes_pending', 0)})"),
        ("re-run of the same file (all unchanged)", f"{rerun_seconds:.1f} s = {n / rerun_seconds:,.0f} members/s"),
        (f"peak RSS importing {small_n:,} members (the process; with its workers)",
         f"{rss_small / 1024:.0f} MiB; {tree_small / 1024:.0f} MiB"),
        (f"peak RSS importing {n:,} members (the process; with its workers)",
         f"{rss_full / 1024:.0f} MiB; {tree_full / 1024:.0f} MiB"),
    ]
    print_table(rows)
    if args.py_spy:
        print(f"\nthe first import under py-spy ({args.py_spy}): where its samples were, by thread and function")
        print_table(spy_top(args.py_spy))


if __name__ == "__main__":
    main()

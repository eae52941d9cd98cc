"""Benchmark PHI encryption: writes through the repository, bulk COPY, audited reveals, key rotation.

    .venv/bin/python benchmarks/phi_bench.py --members 100000 \\
        --admin-url postgresql://postgres@127.0.0.1:5432/postgres

Creates a scratch platform database on the server behind ``--admin-url``,
builds the schema with the real migrations, then measures:

* ``members.create`` with SSN and DOB through :class:`PlatformUnitOfWork`
  (encryption, insert, same-transaction audit row), ``--batch`` members per
  transaction, for ``--repo-members`` members;
* COPY of the remaining members with ``encrypted_ssn``/``encrypted_dob`` made
  by :class:`FieldCipher` in the loop (and the encryption alone);
* ``members.reveal`` latency (the committed audit row included), one unit of
  work per reveal as the app does, with data keys re-read per unit of work and
  with one cipher cached across them (what ``crypto.runtime.cipher_provider``
  gives the app);
* :func:`keystore.rotate` over every member.

The secondary indexes on ``members`` stay in place: this is a live table, not a
seed load. The database is dropped at the end (also on failure or Ctrl-C).
Prints counts and timings only, never values.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

# Runnable as a plain script from a checkout: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carecli.config import load_settings  # noqa: E402
from carecli.data import migrate  # noqa: E402
from carecli.data.actor import Actor  # noqa: E402
from carecli.data.crypto import keystore  # noqa: E402
from carecli.data.crypto.fields import FieldCipher  # noqa: E402
from carecli.data.crypto.master import LocalMasterKey, generate_master_key  # noqa: E402
from carecli.data.crypto.phi import DateOfBirth, Ssn  # noqa: E402
from carecli.data.databases import create_database_engine  # noqa: E402
from carecli.data.permissions import ALL_PERMISSIONS  # noqa: E402
from carecli.data.unit_of_work import PlatformUnitOfWork  # noqa: E402

FIRST_NAMES = ("Ada", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jo", "Kai", "Lena")
LAST_NAMES = ("Abbott", "Baker", "Chen", "Diaz", "Evans", "Fox", "Garcia", "Hughes", "Ito", "Jones")
COPY_CHUNK = 10_000


@dataclass
class Row:
    measure: str
    count: int
    seconds: float
    note: str = ""

    unit: str = "rows/s"

    @property
    def rate(self) -> str:
        return f"{self.count / self.seconds:,.0f} {self.unit}" if self.seconds else "-"


def _synthetic(rng: random.Random) -> tuple[str, str, Ssn, DateOfBirth]:
    ssn = Ssn(f"{rng.randrange(100, 900):03d}{rng.randrange(1, 100):02d}{rng.randrange(1, 10_000):04d}")
    dob = DateOfBirth(date(1940, 1, 1) + timedelta(days=rng.randrange(0, 365 * 60)))
    return rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES), ssn, dob


def bench_repository(engine: Engine, master: LocalMasterKey, count: int, batch: int, rng: random.Random) -> Row:
    """members.create with SSN+DOB, ``batch`` per unit of work, as an importer would."""
    actor = Actor.create(uuid.uuid4(), ALL_PERMISSIONS, channel="cli", role="admin")
    started = time.perf_counter()
    done = 0
    while done < count:
        size = min(batch, count - done)
        with PlatformUnitOfWork(engine, actor, cipher=lambda: keystore.open_cipher(engine, master)) as uow:
            for _ in range(size):
                first, last, ssn, dob = _synthetic(rng)
                uow.members.create({"first_name": first, "last_name": last}, ssn=ssn, dob=dob)
            uow.commit()
        done += size
    return Row(f"repository members.create (ssn+dob, {batch}/txn, audited)", count, time.perf_counter() - started)


def bench_copy(engine: Engine, libpq_url: str, master: LocalMasterKey, count: int,
               rng: random.Random) -> tuple[Row, Row]:
    """COPY members whose ciphertexts FieldCipher makes in the loop; also the encryption alone."""
    cipher = keystore.open_cipher(engine, master)
    encrypt_seconds = generate_seconds = 0.0
    started = time.perf_counter()
    with psycopg.connect(libpq_url) as conn:
        with conn.cursor().copy(
            "COPY members (id, first_name, last_name, encrypted_ssn, encrypted_dob) FROM STDIN"
        ) as copy:
            done = 0
            while done < count:
                size = min(COPY_CHUNK, count - done)
                # Synthetic plaintext is made off the clock: only encryption and COPY count.
                t0 = time.perf_counter()
                plain = [(uuid.uuid4(), *_synthetic(rng)) for _ in range(size)]
                t1 = time.perf_counter()
                rows = [(member_id, first, last, cipher.encrypt_ssn(ssn, member_id),
                         cipher.encrypt_dob(dob, member_id)) for member_id, first, last, ssn, dob in plain]
                generate_seconds += t1 - t0
                encrypt_seconds += time.perf_counter() - t1
                for row in rows:
                    copy.write_row(row)
                done += size
        conn.commit()
    total = time.perf_counter() - started - generate_seconds
    return (Row("COPY with encryption (FieldCipher in the loop)", count, total),
            Row("  of which encryption only (2 values/row)", count, encrypt_seconds))


def bench_reveal(engine: Engine, provider: Callable[[], FieldCipher], ids: list[uuid.UUID], label: str) -> Row:
    """One unit of work per reveal, as a screen would; latency of each."""
    actor = Actor.create(uuid.uuid4(), ALL_PERMISSIONS, channel="tui", role="specialist")
    timings = []
    for member_id in ids:
        t0 = time.perf_counter()
        with PlatformUnitOfWork(engine, actor, cipher=provider) as uow:
            revealed = uow.members.reveal(member_id, ["ssn", "dob"], "benchmark of audited reveal")
        timings.append(time.perf_counter() - t0)
        assert revealed.ssn is not None and revealed.dob is not None
    timings.sort()
    p50 = statistics.median(timings) * 1000
    p95 = timings[int(len(timings) * 0.95) - 1] * 1000
    return Row(label, len(ids), sum(timings), f"p50 {p50:.2f} ms  p95 {p95:.2f} ms", unit="reveals/s")


def bench_rotate(engine: Engine, master: LocalMasterKey, batch: int) -> Row:
    """keystore.rotate (what `carecli keys rotate` runs) over every member."""
    started = time.perf_counter()
    result = keystore.rotate(engine, master, batch_size=batch)
    seconds = time.perf_counter() - started
    assert result.created_new_key and len(result.retired) == 1
    return Row(f"keys rotate ({batch}/batch, 2 values/row)", result.reencrypted_rows, seconds)


def run(members: int, repo_members: int, batch: int, reveals: int, rotate_batch: int, admin_url: str,
        seed: int) -> list[Row]:
    """Create the scratch database, run every measurement, drop it; return the table's rows."""
    rng = random.Random(seed)
    name = f"carecli_bench_phi_{os.getpid()}_{secrets.token_hex(3)}"
    url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
    libpq_url = url.set(drivername="postgresql").render_as_string(hide_password=False)
    master = LocalMasterKey(generate_master_key(), "benchmark")
    table: list[Row] = []
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            engine = create_database_engine(url, load_settings({}))
            try:
                migrate.upgrade(engine, "platform")
                print(f"repository: {repo_members:,} members ...", file=sys.stderr)
                table.append(bench_repository(engine, master, repo_members, batch, rng))
                print(f"COPY: {members - repo_members:,} members ...", file=sys.stderr)
                table.extend(bench_copy(engine, libpq_url, master, members - repo_members, rng))
                with engine.begin() as connection:
                    connection.execute(text("ANALYZE members"))
                    ids = [row[0] for row in connection.execute(
                        text("SELECT id FROM members ORDER BY random() LIMIT :n"), {"n": reveals})]
                print(f"reveal: {len(ids)} x 2 ...", file=sys.stderr)
                table.append(bench_reveal(engine, lambda: keystore.open_cipher(engine, master), ids,
                                          "reveal ssn+dob (keys re-read per unit of work)"))
                cached = keystore.open_cipher(engine, master)
                table.append(bench_reveal(engine, lambda: cached, ids, "reveal ssn+dob (cipher cached, as the app)"))
                print("rotate ...", file=sys.stderr)
                table.append(bench_rotate(engine, master, rotate_batch))
            finally:
                engine.dispose()
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    return table


def print_table(rows: list[Row], members: int) -> None:
    """The results as a fixed-width table on stdout."""
    print(f"members={members:,}")
    header = ("measure", "rows", "seconds", "rate", "latency")
    cells = [(row.measure, f"{row.count:,}", f"{row.seconds:.2f}", row.rate, row.note) for row in rows]
    widths = [max(len(header[i]), *(len(c[i]) for c in cells)) for i in range(len(header))]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    print("-+-".join("-" * w for w in widths))
    for c in cells:
        print(" | ".join([c[0].ljust(widths[0]), *(c[i].rjust(widths[i]) for i in (1, 2, 3)),
                          c[4].ljust(widths[4])]).rstrip())


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=100_000, help="members in the table in total")
    parser.add_argument("--repo-members", type=int, default=10_000,
                        help="how many of them go through members.create (the rest by COPY)")
    parser.add_argument("--batch", type=int, default=500, help="members.create calls per transaction")
    parser.add_argument("--reveals", type=int, default=500, help="reveals to time")
    parser.add_argument("--rotate-batch", type=int, default=2000, help="rows per rotation transaction")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="libpq URL of a role that may CREATE DATABASE")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    repo_members = min(args.repo_members, args.members)
    rows = run(args.members, repo_members, args.batch, args.reveals, args.rotate_batch, args.admin_url, args.seed)
    print_table(rows, args.members)
    return 0


if __name__ == "__main__":
    sys.exit(main())

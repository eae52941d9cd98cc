"""Benchmark encrypted backups: create, verify and restore against plain pg_dump / pg_restore.

    .venv/bin/python benchmarks/backup_bench.py --members 100000 \\
        --admin-url postgresql://postgres@127.0.0.1:5432/postgres

Makes a scratch pair on the server behind ``--admin-url``, migrates and seeds
it (SSN and DOB encrypted), then times on the same data:

* plain ``pg_dump --format=custom`` of both databases into a file (what an
  unencrypted backup costs), and ``carecli backup create`` (the service);
* ``carecli backup verify`` (the real CLI in a subprocess, with its peak RSS);
* plain ``pg_restore --single-transaction`` of the plain dumps into a fresh
  pair, and ``carecli backup restore`` (the service) into another.

MB/s are of the backup file's size. Every scratch database is dropped at the
end (also on failure or Ctrl-C). Prints sizes and timings only, never values.
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carecli.config import load_settings  # noqa: E402
from carecli.data import migrate  # noqa: E402
from carecli.data.actor import Actor  # noqa: E402
from carecli.data.crypto.backup_key import BackupKey  # noqa: E402
from carecli.data.crypto.keystore import open_cipher  # noqa: E402
from carecli.data.crypto.master import LocalMasterKey, generate_master_key  # noqa: E402
from carecli.data.databases import Databases, create_database_engine  # noqa: E402
from carecli.data.permissions import ALL_PERMISSIONS  # noqa: E402
from carecli.data.seeding import seed_demo_data  # noqa: E402
from carecli.services.backup import create_backup, restore_backup  # noqa: E402
from carecli.services.backup.pgtools import find_tool, libpq_target, server_major  # noqa: E402

MB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    tag = f"carecli_bench_backup_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    names = {f"{role}_{db}": f"{tag}_{role}_{db}"
             for role in ("src", "plain", "enc") for db in ("identity", "platform")}
    admin = psycopg.connect(args.admin_url, autocommit=True)
    settings = load_settings({})
    url = {key: make_url(args.admin_url).set(drivername="postgresql+psycopg", database=name)
           for key, name in names.items()}
    try:
        for name in names.values():
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        engines = {key: create_database_engine(url[key], settings) for key in names}
        for db in ("identity", "platform"):
            migrate.upgrade(engines[f"src_{db}"], db)
        master = LocalMasterKey(generate_master_key(), "bench")
        print(f"seeding {args.members:,} members...", file=sys.stderr, flush=True)
        seed_demo_data(engines["src_identity"], engines["src_platform"], members=args.members, seed=1,
                       cipher=open_cipher(engines["src_platform"], master))
        databases = Databases(identity=engines["src_identity"], platform=engines["src_platform"])
        with engines["src_platform"].connect() as connection:
            major = server_major(int(connection.exec_driver_sql("SHOW server_version_num").scalar_one()))
        pg_dump = find_tool("pg_dump", major, None).path
        pg_restore = find_tool("pg_restore", major, None).path
        rows: list[tuple[str, float, int]] = []
        with tempfile.TemporaryDirectory(prefix="carecli-backup-bench-") as folder:
            work = Path(folder)
            plain_bytes = 0
            started = time.perf_counter()
            for db in ("identity", "platform"):
                uri, env = libpq_target(url[f"src_{db}"])
                subprocess.run([str(pg_dump), "-Fc", "-w", f"--dbname={uri}", f"--file={work / db}.dump"],
                               check=True, env={**os.environ, **env})
                plain_bytes += (work / f"{db}.dump").stat().st_size
            rows.append(("pg_dump -Fc (plain, both)", time.perf_counter() - started, plain_bytes))

            key = BackupKey(os.urandom(32), "bench", "backup-key")
            actor = Actor.create(uuid.uuid4(), ALL_PERMISSIONS, channel="cli", role="admin")
            out = work / "bench.ccbak"
            result = create_backup(databases, actor, key, out)
            rows.append(("carecli backup create", result.seconds, result.file_bytes))

            env = {**os.environ, "CARECLI_BACKUP_KEY": base64.b64encode(key.key).decode()}
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "carecli", "backup", "verify", str(out)], check=True, env=env,
                           stdout=subprocess.DEVNULL)
            verify_seconds = time.perf_counter() - started
            verify_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            rows.append(("carecli backup verify (CLI)", verify_seconds, result.file_bytes))

            started = time.perf_counter()
            for db in ("identity", "platform"):
                uri, env_pw = libpq_target(url[f"plain_{db}"])
                subprocess.run([str(pg_restore), "--single-transaction", "--no-owner", "--no-acl", "-w",
                                f"--dbname={uri}", str(work / f"{db}.dump")], check=True,
                               env={**os.environ, **env_pw})
            rows.append(("pg_restore --single-transaction (plain)", time.perf_counter() - started, plain_bytes))

            restored = restore_backup(out, settings, {"identity": url["enc_identity"],
                                                      "platform": url["enc_platform"]}, key=key)
            rows.append(("carecli backup restore (verify + restore)", restored.seconds, result.file_bytes))
        for engine in engines.values():
            engine.dispose()
        print(f"\n{args.members:,} members; backup file {result.file_bytes / MB:,.1f} MiB, "
              f"plain dumps {plain_bytes / MB:,.1f} MiB; pg_dump {result.pg_dump}")
        print(f"{'step':<44}{'seconds':>9}{'MiB/s':>9}")
        for label, seconds, size in rows:
            print(f"{label:<44}{seconds:>9.2f}{size / MB / seconds:>9.1f}")
        print(f"peak RSS of the verify process (largest child so far): {verify_rss / 1024:,.0f} MiB")
    finally:
        for name in names.values():
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


if __name__ == "__main__":
    main()

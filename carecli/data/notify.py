"""Live updates between sessions: PostgreSQL NOTIFY on commit, one LISTEN connection per process.

Emitting: a :class:`~carecli.data.unit_of_work.PlatformUnitOfWork` collects a
:class:`Change` for every row its repositories write and, just before it
commits, sends them with ``pg_notify`` on :data:`CHANNEL` in the same
transaction (NOTIFY is transactional: a rollback sends nothing). Payloads
carry ids only, never a value of the row: PHI cannot leak through them.
Batch imports send one coarse change per committed batch instead.

Listening: :class:`ChangeListener` holds one autocommit connection that
``LISTEN``\\ s, reads notifications in a daemon thread and hands each
:class:`Notice` to its subscribers. After a lost connection it reconnects
with backoff and then sends a ``full_refresh`` notice, since whatever was
sent meanwhile is gone. :func:`subscribe` shares one listener per database
among every subscriber of the process.

Relayed: the SSH host runs one listener for all its sessions and writes each
notice, one line (:func:`notice_line`), into every session's pipe; a session's
app reads them with a :class:`PipeListener` (:func:`listen_through`) instead
of holding a LISTEN connection of its own. Fifty sessions then hold one
listening connection between them, not fifty.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, Engine, text

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

#: the one channel every carecli change goes to
CHANNEL = "carecli_changes"
PAYLOAD_VERSION = 1
#: PostgreSQL refuses payloads of 8000 bytes or more; stay well below it
MAX_PAYLOAD_BYTES = 7900
#: this process, for payloads sent without a session of their own (CLI commands, imports)
PROCESS_SOURCE = f"p{os.getpid()}-{uuid.uuid4().hex[:8]}"
LISTENER_APPLICATION_NAME = "carecli-listener"

#: payload key -> Change attribute (short keys keep a transaction of many changes under the limit)
_KEYS = {"id": "entity_id", "m": "member_id", "s": "specialist_id", "p": "plan_id"}


@dataclass(frozen=True)
class Change:
    """One changed row, by ids only; ``entity_id`` None means "many rows of this kind"."""

    entity: str
    entity_id: uuid.UUID | None = None
    member_id: uuid.UUID | None = None
    specialist_id: uuid.UUID | None = None
    plan_id: uuid.UUID | None = None

    @property
    def many(self) -> bool:
        return self.entity_id is None


@dataclass(frozen=True)
class Notice:
    """What one notification (or a reconnect) tells a subscriber."""

    changes: tuple[Change, ...] = ()
    #: who sent it (a session's or a process's source id); None when unknown
    source: str | None = None
    #: the connection was lost and is back: anything may have changed meanwhile
    full_refresh: bool = False

    @property
    def coarse(self) -> bool:
        """Reload everything of these kinds: the exact rows are not named."""
        return self.full_refresh or any(change.many for change in self.changes)


def change_for(entity_type: str, row: Mapping[str, Any]) -> Change:
    """The change a written row makes, with the member (and specialist, plan) it concerns."""
    member_id = row.get("member_id")
    if entity_type == "member":
        member_id = row.get("id")
    elif entity_type == "metadata" and row.get("entity_type") == "member":
        member_id = row.get("entity_id")
    plan_id = row.get("insurance_plan_id") if entity_type != "insurance_plan" else row.get("id")
    return Change(entity_type, row.get("id"), member_id, row.get("specialist_id"), plan_id)


def encode(changes: Iterable[Change], source: str | None) -> str:
    """The JSON payload for ``changes``; coarsened to kinds only when the ids would not fit."""
    unique = list(dict.fromkeys(changes))
    payload: dict[str, Any] = {"v": PAYLOAD_VERSION, "src": source, "c": [_change_json(c) for c in unique]}
    data = json.dumps(payload, separators=(",", ":"))
    if len(data.encode()) <= MAX_PAYLOAD_BYTES:
        return data
    kinds = sorted({change.entity for change in unique})
    payload["c"] = [{"e": kind, "many": True} for kind in kinds]
    return json.dumps(payload, separators=(",", ":"))


def _change_json(change: Change) -> dict[str, Any]:
    if change.many:
        return {"e": change.entity, "many": True}
    item: dict[str, Any] = {"e": change.entity}
    for key, attribute in _KEYS.items():
        value = getattr(change, attribute)
        if value is not None:
            item[key] = str(value)
    return item


def decode(payload: str) -> Notice | None:
    """A received payload as a :class:`Notice`; None for one that is not ours or is malformed."""
    try:
        data = json.loads(payload)
        if not isinstance(data, dict) or data.get("v") != PAYLOAD_VERSION:
            return None
        changes = []
        for item in data.get("c") or []:
            if item.get("many"):
                changes.append(Change(str(item["e"])))
                continue
            ids = {attribute: uuid.UUID(item[key]) for key, attribute in _KEYS.items() if item.get(key)}
            changes.append(Change(str(item["e"]), **ids))
        source = data.get("src")
        return Notice(tuple(changes), source if isinstance(source, str) else None)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def notice_line(notice: Notice) -> bytes:
    """``notice`` as one line of a relay pipe (the SSH host to a session's app): the NOTIFY payload, or a
    full-refresh marker; ids only, like the payloads themselves."""
    if notice.full_refresh:
        return json.dumps({"v": PAYLOAD_VERSION, "full": True}, separators=(",", ":")).encode() + b"\n"
    return encode(notice.changes, notice.source).encode() + b"\n"


def notice_from_line(line: bytes) -> Notice | None:
    """A relayed line as a :class:`Notice`; None for a malformed one."""
    try:
        text_line = line.decode("utf-8")
        data = json.loads(text_line)
    except ValueError:
        return None
    if isinstance(data, dict) and data.get("v") == PAYLOAD_VERSION and data.get("full") is True:
        return Notice(full_refresh=True)
    return decode(text_line)


def send(connection: Connection, changes: Iterable[Change], source: str | None) -> None:
    """Queue a notification in ``connection``'s transaction (delivered only if it commits)."""
    changes = list(changes)
    if changes:
        connection.execute(text("SELECT pg_notify(:channel, :payload)"),
                           {"channel": CHANNEL, "payload": encode(changes, source)})


def send_raw(cursor: Any, changes: Iterable[Change], source: str | None) -> None:
    """:func:`send` on a raw psycopg cursor (the bulk loader's writer works below SQLAlchemy)."""
    changes = list(changes)
    if changes:
        cursor.execute("SELECT pg_notify(%s, %s)", (CHANNEL, encode(changes, source)))


# -- listening --------------------------------------------------------------------------------

Subscriber = Callable[[Notice], None]
#: seconds between reconnect attempts: doubles from the first to the last
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0
#: how long one wait for notifications lasts (also how fast stop() is noticed)
POLL_SECONDS = 0.5
#: a quiet connection is checked this often, so a dead one is noticed without a notification
HEARTBEAT_SECONDS = 15.0


@dataclass
class ListenerStats:
    """What the listener has done, for tests and diagnostics."""

    connects: int = 0
    reconnects: int = 0
    notices: int = 0
    backend_pid: int | None = None
    last_error: str | None = None


class _Fanout:
    """Subscribers of a listener, and the notices handed to them (on the listener's thread)."""

    def __init__(self) -> None:
        self.stats = ListenerStats()
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listening = threading.Event()

    def add(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.append(subscriber)

    def remove(self, subscriber: Subscriber) -> int:
        """Forget ``subscriber``; returns how many are left."""
        with self._lock:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)
            return len(self._subscribers)

    def _dispatch(self, notice: Notice) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            try:
                subscriber(notice)
            except Exception:  # noqa: BLE001 - one broken subscriber must not silence the others
                log.exception("a live-update subscriber failed")

    def wait_listening(self, timeout: float = 10.0) -> bool:
        """Block until the listener is listening (for callers that must not miss the first change)."""
        return self._listening.wait(timeout)

    @property
    def listening(self) -> bool:
        return self._listening.is_set()


class ChangeListener(_Fanout):
    """One LISTEN connection on the platform database, read in a daemon thread.

    The connection comes from the engine (so it has the engine's URL,
    credentials, embedded server and session settings) and is detached from
    its pool: it is ours until :meth:`stop`.
    """

    def __init__(self, engine: Engine, *, channel: str = CHANNEL) -> None:
        super().__init__()
        self.engine = engine
        self.channel = channel
        self._thread: threading.Thread | None = None
        self._connection: psycopg.Connection[Any] | None = None
        #: held while the connection is closed, and while :meth:`_wake` shuts its socket down
        self._closing = threading.Lock()

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> ChangeListener:
        """Start the thread (it connects, LISTENs, and keeps doing so until stopped)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="carecli-listener", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close the connection."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _wake(self) -> None:
        """End the thread's wait for notifications now rather than at the end of its poll (up to POLL_SECONDS,
        which an app's quit waited for): the connection's socket is shut down, so the wait reads its end, and
        the thread, seeing the stop, closes the connection. Under the lock :meth:`_close` closes it with: the
        descriptor shut down is the connection's, never one the process reused after it was closed."""
        with self._closing:
            connection = self._connection
            if connection is None:
                return
            try:
                fd = connection.pgconn.socket
                wakeful = socket.socket(fileno=os.dup(fd))
            except Exception:  # noqa: BLE001 - already closed or broken: its wait ends by itself
                return
            try:
                wakeful.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            finally:
                wakeful.close()

    def _run(self) -> None:
        delay = BACKOFF_FIRST
        first = True
        while not self._stop.is_set():
            try:
                self._connect()
            except Exception as exc:  # noqa: BLE001 - any failure to connect is retried
                self.stats.last_error = type(exc).__name__
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            delay = BACKOFF_FIRST
            if not first:
                # Notifications sent while we were away are lost: subscribers read everything again.
                self.stats.reconnects += 1
                self._dispatch(Notice(full_refresh=True))
            first = False
            try:
                self._read()
            except Exception as exc:  # noqa: BLE001 - a lost connection: reconnect
                if not self._stop.is_set():  # (not the end :meth:`stop` made)
                    self.stats.last_error = type(exc).__name__
            finally:
                self._listening.clear()
                self._close()

    def _connect(self) -> None:
        pooled = self.engine.raw_connection()
        try:
            if pooled.dbapi_connection is None:
                # An invalidated proxy has no driver connection: a failed connect, retried.
                raise ConnectionError("the pool handed out an invalidated connection")
            connection = cast("psycopg.Connection[Any]", pooled.dbapi_connection)
            pooled.detach()  # ours for good: never handed back to the pool, closed by us
            connection.autocommit = True
            connection.execute(f"SET application_name = '{LISTENER_APPLICATION_NAME}'")
            # No statement of ours runs long; a server default must not cut the heartbeat either.
            connection.execute("SET statement_timeout = 0")
            connection.execute(f"LISTEN {self.channel}")
            self.stats.backend_pid = connection.info.backend_pid
        except BaseException:
            pooled.close()
            raise
        self._connection = connection
        self.stats.connects += 1
        self._listening.set()

    def _read(self) -> None:
        connection = self._connection
        if connection is None:
            raise ConnectionError("the listener is not connected")
        quiet = 0.0
        while not self._stop.is_set():
            received = False
            for notify in connection.notifies(timeout=POLL_SECONDS):
                received = True
                notice = decode(notify.payload)
                if notice is not None:
                    self.stats.notices += 1
                    self._dispatch(notice)
            quiet = 0.0 if received else quiet + POLL_SECONDS
            if connection.closed:
                raise ConnectionError("the listener connection closed")
            if quiet >= HEARTBEAT_SECONDS:
                connection.execute("SELECT 1")  # raises on a dead connection
                quiet = 0.0

    def _close(self) -> None:
        with self._closing:
            connection, self._connection = self._connection, None
            if connection is not None:
                # Detached from its pool, it is closed as the driver's connection. Closing the pool's proxy
                # would first roll back on it, and on a socket :meth:`_wake` shut down the pool logs that
                # failed rollback as an error with its traceback.
                try:
                    connection.close()
                except Exception:  # noqa: BLE001 - closing a dead connection
                    pass


class PipeListener(_Fanout):
    """Notices relayed by the SSH host through a pipe (one :func:`notice_line` each), read in a daemon thread.

    The same subscribers, dispatch and stats as :class:`ChangeListener`, without a database connection.
    It listens until the pipe ends (the host closed it: the session is over) or :meth:`stop`. Lines
    longer than :data:`MAX_LINE_BYTES` cannot be ours: they are dropped and a full refresh is sent in
    their place, as after a lost connection.
    """

    def __init__(self, fd: int, buffered: bytes = b"") -> None:
        super().__init__()
        self.fd = fd
        self._buffer = bytearray(buffered)
        #: an overlong line is being skipped up to its newline
        self._skipping = False
        self._thread: threading.Thread | None = None

    def start(self) -> PipeListener:
        if self._thread is None and not self._stop.is_set():
            self._listening.set()
            self.stats.connects += 1
            self._thread = threading.Thread(target=self._run, name="carecli-relay", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        try:
            self._drain()
            while not self._stop.is_set():
                readable, _, _ = select.select([self.fd], [], [], POLL_SECONDS)
                if not readable:
                    continue
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break  # the host closed the pipe: no more notices for this session
                self._buffer += chunk
                self._drain()
        except OSError as exc:
            self.stats.last_error = type(exc).__name__
        finally:
            self._listening.clear()
            try:
                os.close(self.fd)
            except OSError:
                pass

    def _drain(self) -> None:
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE_BYTES:  # not a line of ours: skip to the next newline
                    self._buffer.clear()
                    self._skipping = True
                return
            line = bytes(self._buffer[:end])
            del self._buffer[:end + 1]
            if self._skipping or len(line) > MAX_LINE_BYTES:
                self._skipping = False
                notice: Notice | None = Notice(full_refresh=True)
            else:
                notice = notice_from_line(line)
            if notice is not None:
                self.stats.notices += 1
                self._dispatch(notice)


#: the longest relayed line read (a payload is under MAX_PAYLOAD_BYTES; the marker is shorter)
MAX_LINE_BYTES = 16384

#: database URL -> the process's listener on it
_SHARED: dict[str, ChangeListener] = {}
_SHARED_LOCK = threading.Lock()
#: set by listen_through: every subscription of this process reads the host's relay instead
_RELAY: PipeListener | None = None


def listen_through(fd: int, buffered: bytes = b"") -> PipeListener:
    """From now on, :func:`subscribe` hands out the notices relayed through the pipe ``fd`` (an SSH session's
    app, whose host listens for all its sessions); ``buffered`` is what was already read past the token."""
    global _RELAY
    with _SHARED_LOCK:
        if _RELAY is not None:
            raise RuntimeError("live updates already come through a relay")
        _RELAY = PipeListener(fd, buffered)
        return _RELAY


def stop_relay() -> None:
    """Stop reading the relay and go back to listening on the database (tests; the app's exit)."""
    global _RELAY
    with _SHARED_LOCK:
        relay, _RELAY = _RELAY, None
    if relay is not None:
        relay.stop()


class Subscription:
    """A subscriber's hold on the process's shared listener; :meth:`close` lets go of it."""

    def __init__(self, key: str, listener: ChangeListener | PipeListener, subscriber: Subscriber) -> None:
        self._key = key
        self.listener = listener
        self._subscriber = subscriber
        self._closed = False

    def close(self) -> None:
        """Stop receiving; the last subscriber of a database stops its listener."""
        if self._closed:
            return
        self._closed = True
        if isinstance(self.listener, PipeListener):  # the relay lasts as long as the session: kept for the next
            self.listener.remove(self._subscriber)
            return
        with _SHARED_LOCK:
            left = self.listener.remove(self._subscriber)
            if left == 0 and _SHARED.get(self._key) is self.listener:
                del _SHARED[self._key]
            else:
                return
        self.listener.stop()


def subscribe(engine: Engine, subscriber: Subscriber) -> Subscription:
    """Receive every change notice for ``engine``'s database (one listener per database and process).

    ``subscriber`` is called on the listener's thread: it must hand work over
    to its own thread or event loop (a Textual app posts a message).
    """
    with _SHARED_LOCK:
        relay = _RELAY
    if relay is not None:
        relay.add(subscriber)
        relay.start()
        return Subscription("relay", relay, subscriber)
    key = engine.url.render_as_string(hide_password=False)
    with _SHARED_LOCK:
        listener = _SHARED.get(key)
        if listener is None:
            listener = _SHARED[key] = ChangeListener(engine)
            listener.add(subscriber)
            listener.start()
        else:
            listener.add(subscriber)
    return Subscription(key, listener, subscriber)

"""Opening the databases and the stored session while the app loads: :class:`Opening`.

``carecli app`` starts one before it imports Textual and its screens, so the
slow parts of a start overlap: the embedded server starting (seconds), the
connections, the session check and the first read of the worklist wait on
the network or a child process while the main thread loads the app and
paints its first screen. The app waits for the outcome in a worker and shows
it; nothing here knows of Textual.

This module imports nothing heavy: SQLAlchemy and psycopg are imported by
the thread, after the embedded server (when there is one) was asked to start.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from carecli.config import Settings
from carecli.data.actor import Channel

if TYPE_CHECKING:
    from carecli.data.databases import Databases
    from carecli.data.repositories.worklist import Worklist
    from carecli.services.auth.credentials import CredentialStore
    from carecli.services.desk import Desk

log = logging.getLogger("carecli.services.opening")

STARTING_TEXT = "Starting the database…"
CONNECTING_TEXT = "Connecting to the databases…"


class Opening:
    """Open both databases, check they are at head, resume the stored session and read its worklist (a thread).

    Outcomes, once :meth:`wait` returns: ``failure`` (the databases could not be opened or are not at
    head: nothing else was tried); else ``databases`` and either ``desk`` (signed in, with ``worklist``
    read for it unless that read failed: the screen then reads it itself and reports) or ``refusal``
    (the stored session was refused, or there is none: the app asks to sign in).
    """

    def __init__(self, settings: Settings, *, databases: Databases | None = None,
                 store: CredentialStore | None = None, channel: Channel = "tui", prefetch: bool = True) -> None:
        self.settings = settings
        self.store = store
        self.channel: Channel = channel
        self.prefetch = prefetch
        self._given = databases
        #: whether the embedded server has to be started (not merely joined): the app says so while it waits
        self.starting_server = databases is None and settings.embedded and not _embedded_running(settings)
        self.databases: Databases | None = None
        self.desk: Desk | None = None
        self.worklist: Worklist | None = None
        self.failure: BaseException | None = None
        self.refusal: BaseException | None = None
        self._done = threading.Event()
        self._loaded = threading.Event()
        self._lock = threading.Lock()
        self._started = False
        self._thread = threading.Thread(target=self._run, name="carecli-opening", daemon=True)

    @property
    def text(self) -> str:
        """What the start screen says meanwhile."""
        return STARTING_TEXT if self.starting_server else CONNECTING_TEXT

    def start(self) -> Opening:
        """Start the thread (once: a second call does nothing)."""
        with self._lock:
            if not self._started:
                self._started = True
                self._thread.start()
        return self

    def wait_loaded(self, timeout: float) -> bool:
        """Give the thread a head start: wait until it has imported what it needs and is about to wait on
        the server, at most ``timeout`` seconds (not at all when the embedded server has to start first:
        seconds of waiting, which the app's loading overlaps anyway).

        The two threads share one interpreter lock, so loading the app meanwhile only slowed the
        thread's own imports, and the connections, the session check and the worklist's read then
        waited on the server with the app already loaded and nothing left to overlap them with
        (``benchmarks/tui_bench.py``: the main thread stood idle ~120 ms before the worklist). Loaded
        first, the thread waits on the server while the main thread loads the app.
        """
        if self.starting_server or not self._started:
            return self._loaded.is_set()  # a server to start first: nothing to wait for
        return self._loaded.wait(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the outcome; False when ``timeout`` passed first."""
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def take_worklist(self) -> Worklist | None:
        """The worklist read for the desk, once (a later load reads it again)."""
        worklist, self.worklist = self.worklist, None
        return worklist

    def _run(self) -> None:
        try:
            self._open()
        finally:
            self._loaded.set()
            self._done.set()

    def _load(self) -> None:
        """Import what the opening runs (SQLAlchemy, the models, psycopg, the desk), then let the main
        thread go on (:meth:`wait_loaded`). An import that fails is left to fail where it is used. Not
        keyring: the session is read from its file when there is one, and only otherwise from the keyring,
        imported then (a backend's check may wait on D-Bus, and the app must not wait with it)."""
        try:
            import psycopg  # noqa: F401  (imported by SQLAlchemy at the first engine otherwise)

            import carecli.data.databases  # noqa: F401
            import carecli.services.desk  # noqa: F401
        except Exception:  # noqa: S110
            pass
        finally:
            self._loaded.set()

    def _open(self) -> None:
        try:
            server = None
            if self._given is None and self.settings.embedded:
                # First, before SQLAlchemy is even imported: the server takes longest, and mostly waits.
                from carecli.data.embedded import EmbeddedServer

                server = EmbeddedServer(self.settings.data_dir).start()
            self._load()
            from carecli.data.databases import open_databases, require_head

            databases = self._given or open_databases(self.settings, server=server)
            self.databases = databases
            require_head(databases)
        except BaseException as exc:  # shown on the start screen by the app, never raised there
            self.failure = exc
            return
        try:
            from carecli.services.desk import Desk

            desk = Desk.resume(self.settings, databases, channel=self.channel, store=self.store)
        except Exception as exc:  # not signed in, or refused: the app asks to sign in
            self.refusal = exc
            return
        self.desk = desk
        if self.prefetch:
            try:
                self.worklist = desk.worklist()
            except Exception as exc:  # the worklist screen reads it again and says what went wrong
                log.info("worklist not read ahead", extra={"error": type(exc).__name__})


def _embedded_running(settings: Settings) -> bool:
    from carecli.data.embedded import server_running

    return server_running(settings.data_dir)

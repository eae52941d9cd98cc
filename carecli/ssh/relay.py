"""Live updates for every session of an SSH host through one LISTEN connection: :class:`NoticeRelay`.

Each session's app used to hold a listening connection of its own: fifty sessions, fifty connections
doing nothing but wait, which is half a stock ``max_connections`` and what kept the apps from pooling
a connection for their searches. The host now listens once (a :class:`~carecli.data.notify.ChangeListener`
on its own platform engine) and writes each notice as one line (:func:`~carecli.data.notify.notice_line`:
ids only, never a value) into the pipe its session token came through. The app reads them with a
:class:`~carecli.data.notify.PipeListener` and its screens see the same notices as before.

Writes never block the host's event loop: a pipe is non-blocking, and what does not fit waits in a
bounded buffer sent when the pipe is writable again. An app that stops reading long enough for that
buffer to fill loses the notices in it for a single full refresh (what a lost listener connection
gives). A session whose app has gone (EPIPE) is forgotten.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os

from sqlalchemy import Engine

from carecli.data import notify

log = logging.getLogger("carecli.ssh")

#: bytes of notices kept for one session's app while its pipe is full (then: one full refresh instead)
MAX_PENDING_BYTES = 256 * 1024


class Outlet:
    """One session's pipe (the write end; the app holds the read end)."""

    def __init__(self, relay: NoticeRelay, fd: int) -> None:
        self.relay = relay
        self.fd = fd
        self.pending = bytearray()
        self.waiting = False  # a writer callback is registered
        self.closed = False

    def send(self, line: bytes) -> None:
        if self.closed:
            return
        if self.pending:
            if len(self.pending) + len(line) > MAX_PENDING_BYTES:
                # Too far behind: everything queued is replaced by "read everything again". The head of the
                # queue may be the rest of a line partly written already: it is kept, so the marker starts a line.
                end = self.pending.find(b"\n")
                self.pending = self.pending[:end + 1] + notify.notice_line(notify.Notice(full_refresh=True))
                self.relay.overflows += 1
            else:
                self.pending += line
            return
        self.pending += line
        self._flush()

    def _flush(self) -> None:
        try:
            written = os.write(self.fd, self.pending)
        except BlockingIOError:
            written = 0
        except OSError as exc:  # EPIPE: the app is gone (its end is handled by the session)
            if exc.errno not in (errno.EPIPE, errno.EBADF):
                log.warning("cannot relay live updates to a session (%s)", type(exc).__name__)
            self.close()
            return
        del self.pending[:written]
        loop = self.relay.loop
        if self.pending and not self.waiting:
            loop.add_writer(self.fd, self._flush)
            self.waiting = True
        elif not self.pending and self.waiting:
            loop.remove_writer(self.fd)
            self.waiting = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.waiting:
            self.relay.loop.remove_writer(self.fd)
            self.waiting = False
        self.pending.clear()
        self.relay.outlets.discard(self)
        try:
            os.close(self.fd)
        except OSError:
            pass


class NoticeRelay:
    """The host's one listener, and the pipes of the sessions it relays to (on the host's event loop)."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.outlets: set[Outlet] = set()
        #: counts for tests and diagnostics
        self.relayed = 0
        self.overflows = 0
        self.listener = notify.ChangeListener(engine)
        self.listener.add(self._heard)

    def start(self) -> NoticeRelay:
        self.listener.start()
        return self

    def stop(self) -> None:
        """Stop listening (blocks up to a few seconds: call it off the event loop); the pipes close with
        their sessions."""
        self.listener.stop()

    def attach(self, fd: int) -> Outlet:
        """Relay every notice from now on into ``fd`` (a pipe's write end, made non-blocking here; the outlet
        owns it and closes it on :meth:`Outlet.close`)."""
        os.set_blocking(fd, False)
        outlet = Outlet(self, fd)
        self.outlets.add(outlet)
        return outlet

    def _heard(self, notice: notify.Notice) -> None:  # the listener's thread
        line = notify.notice_line(notice)
        try:
            self.loop.call_soon_threadsafe(self._fan_out, line)
        except RuntimeError:  # the loop is closed: the host is stopping
            pass

    def _fan_out(self, line: bytes) -> None:
        self.relayed += 1
        for outlet in list(self.outlets):
            outlet.send(line)

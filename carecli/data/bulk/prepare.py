"""Parsing, validating and preparing an import's records, in worker processes.

The per-row Python of an import (parse and validate every field, then the
kind's :meth:`~carecli.data.bulk.kinds.Kind.prepare_row`: the SSN's blind index,
AES-GCM encryption of SSN and date of birth, the new row's COPY line) needs
no database, so it runs in worker processes while the planning process
matches batches against the database and its writer thread loads the
previous batch: the import is no longer one process's Python (one core,
one GIL) in series with the server.

Chunks of records go to the workers in file order and come back in file
order, at most a few chunks in flight (memory stays flat in the file's
size). The first chunk is done here, and the workers start only when a
second one follows (a small file never starts a process). Workers are
forked from a ``forkserver`` (a clean process started for them: no
inherited database connections, threads or locks), and end when this
process does, even after a ``kill -9``.

Keys: the workers get the primary data key and the blind-index key, raw,
through their pipe with each chunk (never logged: their reprs hide them);
they can encrypt but hold no master key. What comes back holds no plaintext
PHI: SSN and date of birth arrive as ciphertexts (``Ssn``/``DateOfBirth``
refuse to be pickled, so nothing can send them by mistake).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

from carecli.data.bulk.blind_index import BlindIndex
from carecli.data.bulk.kinds import Kind, Parsed, PrepareTools
from carecli.data.bulk.readers import Record, RecordProblem
from carecli.data.crypto.fields import SealingCipher, SealingKey
from carecli.data.embedded import pid_alive
from carecli.errors import KeyUnavailable

log = logging.getLogger("carecli.data.bulk.loader")

#: one record's outcome: prepared, refused by parsing (its problems), or a reader's problem passed through
Outcome = Parsed | list[RecordProblem] | RecordProblem
#: outcomes of a chunk, and the exception type names of parsers that raised (logged by the planning process)
ChunkResult = tuple[list[Outcome], list[str]]


def default_workers() -> int:
    """Worker processes when ``--workers`` is not given: up to two, leaving two cores to this process and the
    database. On two cores none: there the workers' CPU is the same CPU the database loads with (50,000
    members: 5.9 s with no worker, 6.0 with one, 7.4 with two), and each worker is memory of its own."""
    return max(0, min(2, (os.cpu_count() or 1) - 2))


@dataclass(frozen=True)
class WorkerKeys:
    """The keys a worker's :class:`PrepareTools` hands out (None: the import has none)."""

    sealing: SealingKey | None
    blind: BlindIndex | None
    #: the import's actor as COPY fields (:func:`carecli.data.bulk.kinds.actor_fields`)
    actor_fields: tuple[str, str, str] = ("\\N", "\\N", "\\N")

    def __repr__(self) -> str:
        return "WorkerKeys([keys])"


def prepare_records(kind: Kind, items: Sequence[Record | RecordProblem], tools: PrepareTools) -> ChunkResult:
    """Parse and prepare ``items`` in order.

    An exception from a parser (a bug) refuses that row (rule ``internal_error``), not the run:
    neither its text nor its traceback is kept, either could quote the value. An exception from
    :meth:`Kind.prepare_row` (a missing key) ends the run.
    """
    outcomes: list[Outcome] = []
    failures: list[str] = []
    for item in items:
        if isinstance(item, RecordProblem):
            outcomes.append(item)
            continue
        try:
            parsed = kind.parse(item)
        except Exception as exc:  # noqa: BLE001 - any bug in any parser; the row is refused, the rest load
            failures.append(type(exc).__name__)
            outcomes.append([RecordProblem(item.row, "(row)", "internal_error",
                                           f"could not be checked: carecli failed on it ({type(exc).__name__}), a "
                                           "bug to report; the row was not loaded")])
            continue
        if isinstance(parsed, Parsed):
            kind.prepare_row(parsed, tools)
        outcomes.append(parsed)
    return outcomes, failures


# -- the worker side ---------------------------------------------------------------------------------

_KINDS: dict[type[Kind], Kind] = {}


def _started(pid: int) -> str | None:
    """When process ``pid`` started (Linux: /proc), to tell it from a later process given the same pid."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    if started is not None:
        return _started(pid) == started
    return pid_alive(pid)


def _watch_parent(pid: int, started: str | None) -> None:
    """End this worker once the importing process ``pid`` is gone: killed (``kill -9``), it shuts
    nobody down, and a worker blocked handing back a chunk (its pipe full, nobody reading) would
    stay forever. The forkserver is not that process: it outlives it while workers remain."""

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if not _alive(pid, started):
                os._exit(0)

    threading.Thread(target=watch, name="carecli-import-worker-watch", daemon=True).start()


def _no_key() -> SealingCipher:
    raise KeyUnavailable("there is no primary data key", hint="run `carecli keys status` to set one up")


def _worker_chunk(kind_class: type[Kind], items: list[Record | RecordProblem], keys: WorkerKeys) -> ChunkResult:
    kind = _KINDS.get(kind_class)
    if kind is None:
        kind = _KINDS[kind_class] = kind_class()
    sealing = keys.sealing
    tools = PrepareTools((lambda: SealingCipher(sealing)) if sealing is not None else _no_key, lambda: keys.blind,
                         keys.actor_fields, in_worker=True)
    return prepare_records(kind, items, tools)


# -- the planning side -------------------------------------------------------------------------------


class _Here:
    """A chunk prepared in this process, when its result is asked for (in order, like a worker's)."""

    def __init__(self, work: Callable[[], ChunkResult]) -> None:
        self._work = work

    def result(self) -> ChunkResult:
        return self._work()


class Preparer:
    """Hands chunks of records to worker processes (or prepares them here) and gives results in order.

    ``keys`` is asked once, when the workers are first needed (kinds without ``uses_keys`` never ask).
    """

    def __init__(self, kind: Kind, tools: PrepareTools, *, workers: int = 0,
                 keys: Callable[[], WorkerKeys] | None = None) -> None:
        self.kind = kind
        self.tools = tools
        self.workers = max(0, workers)
        self._keys = keys
        self._worker_keys = WorkerKeys(None, None)
        self._pool: ProcessPoolExecutor | None = None
        self._chunks = 0

    @property
    def depth(self) -> int:
        """Chunks to keep in flight: one being prepared by each worker and one more waiting."""
        return self.workers + 1 if self.workers else 1

    def submit(self, items: list[Record | RecordProblem]) -> Future[ChunkResult] | _Here:
        self._chunks += 1
        if not self.workers or self._chunks == 1:
            return _Here(lambda: prepare_records(self.kind, items, self.tools))
        if self._pool is None:
            self._worker_keys = self._load_keys()
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["carecli.data.bulk.registry"])
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_watch_parent,
                                             initargs=(os.getpid(), _started(os.getpid())))
        return self._pool.submit(_worker_chunk, type(self.kind), items, self._worker_keys)

    def _load_keys(self) -> WorkerKeys:
        if not self.kind.uses_keys or self._keys is None:
            return WorkerKeys(None, None, self.tools.actor_fields)
        return self._keys()

    @property
    def started(self) -> bool:
        return self._pool is not None

    def close(self) -> None:
        """Stop the workers (chunks not yet started are dropped); once, however often called."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def worker_keys(tools: PrepareTools) -> Callable[[], WorkerKeys]:
    """The keys for the workers, from the import's cipher and blind index (a cipher without a primary
    key gives none: a worker then refuses to encrypt, as the cipher would)."""

    def load() -> WorkerKeys:
        blind = tools.blind_index()
        try:
            sealing = tools.cipher().sealing_key()
        except KeyUnavailable:
            sealing = None
        return WorkerKeys(sealing, blind, tools.actor_fields)

    return load

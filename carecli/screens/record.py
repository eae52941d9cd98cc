"""A screen that shows one record read in a worker: the call screen and the risk flag screen.

The read goes through the desk in a thread worker and comes back as a
message; a read that finishes after a lock (``clear_phi`` bumps the
generation) is dropped instead of being shown under the lock screen. A
record changed while the screen was covered is read again when it is shown.
"""

from __future__ import annotations

from typing import Any, ClassVar

from textual import events, work
from textual.message import Message

from carecli.screens.base import CareScreen, Problem, describe


class RecordRead(Message):
    """The record was read (posted by the read worker)."""

    def __init__(self, view: Any, generation: int) -> None:
        super().__init__()
        self.view = view
        self.generation = generation


class RecordReadFailed(Message):
    def __init__(self, problem: Problem, generation: int) -> None:
        super().__init__()
        self.problem = problem
        self.generation = generation


class RecordScreen(CareScreen):
    """Base of the screens that show one record; subclasses read it (:meth:`read`) and show it."""

    #: what the record is called in messages ("call", "flag")
    RECORD: ClassVar[str] = "record"

    def __init__(self) -> None:
        super().__init__()
        self.view: Any = None
        #: bumped by clear_phi: a read that finishes after a lock is dropped, not shown under the lock
        self._generation = 0
        #: changed while covered: read again when shown
        self._stale = False

    def read(self) -> Any:
        """The blocking desk call that reads the record (runs in a thread worker). Override."""
        raise NotImplementedError

    def show_view(self, view: Any) -> None:
        """Fill the screen from a freshly read record. Override."""

    def show_read_failure(self, problem: Problem) -> None:
        """Say on the screen that the record could not be read (only while nothing is shown). Override."""

    def load(self) -> None:
        """Read the record again (in a worker)."""
        self._stale = False
        self._read_in_background(self._generation)

    # A fixed description: by default a worker is described with its arguments' reprs.
    @work(thread=True, exclusive=True, group="record-read", description="read a record")
    def _read_in_background(self, generation: int) -> None:
        try:
            view = self.read()
        except Exception as exc:  # shown on the screen, never raised
            self.post_message(RecordReadFailed(describe(exc), generation))
            return
        self.post_message(RecordRead(view, generation))

    def on_record_read(self, message: RecordRead) -> None:
        if message.generation != self._generation or self.care.locked:
            return
        self.show_view(message.view)

    def on_record_read_failed(self, message: RecordReadFailed) -> None:
        if message.generation != self._generation:
            return
        if self.view is None:
            self.show_read_failure(message.problem)
        self.care.show_problem(f"read the {self.RECORD}", message.problem)

    def on_screen_resume(self, event: events.ScreenResume) -> None:
        self.catch_up()

    def catch_up(self) -> None:
        if self._stale and not self.care.locked:
            self.load()

    def forget(self) -> None:
        """Drop what was read (for ``clear_phi``): a read still under way is not shown either."""
        self._generation += 1
        self.view = None

"""Live updates in the app: change notices, coalesced, handed to the screens as a Textual message.

The app subscribes (through its :class:`~carecli.services.desk.Desk`) to the
process's one listener; notices arrive on the listener's thread and are
posted to the app, which hands the first after a quiet spell on at once and
gathers the rest of a burst for what is left of :data:`COALESCE_SECONDS`,
posting one :class:`DataChanged` to every screen in the stack per hand-out. Each screen
decides whether what it shows is concerned: a screen the user can see
reloads at once, one that is covered notes that it is stale and reloads
when it is shown again; a locked app reloads nothing (the unlock reloads
every screen anyway).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:  # carecli.data.notify loads SQLAlchemy, which the first screen does not wait for
    from carecli.data.notify import Change, Notice

#: at most one hand-out of notices to the screens this often (a burst within it makes one refresh)
COALESCE_SECONDS = 0.25


@dataclass(frozen=True)
class LiveChanges:
    """What changed in one coalescing window: (change, source) pairs, or "everything" after a reconnect."""

    changes: tuple[tuple[Change, str | None], ...] = ()
    #: the listener lost its connection and is back: anything may have changed meanwhile
    full_refresh: bool = False

    @classmethod
    def gather(cls, notices: Iterable[Notice]) -> LiveChanges:
        pairs: list[tuple[Change, str | None]] = []
        full = False
        for notice in notices:
            full = full or notice.full_refresh
            pairs.extend((change, notice.source) for change in notice.changes)
        return cls(tuple(dict.fromkeys(pairs)), full)

    def by_others(self, source: str | None) -> list[Change]:
        """The changes not made through the desk with this ``source`` (its own writes)."""
        return [change for change, sender in self.changes if source is None or sender != source]

    def all(self) -> list[Change]:
        return [change for change, _sender in self.changes]

    def concerns_member(self, member_id: uuid.UUID, entities: frozenset[str], *, ignore: str | None = None) -> bool:
        """Whether a member's record (any of ``entities`` about them) may have changed."""
        if self.full_refresh:
            return True
        return any(change.entity in entities and (change.many or change.member_id == member_id)
                   for change in self.by_others(ignore))

    def record_changed(self, entity: str, entity_id: uuid.UUID, *, ignore: str | None = None) -> bool:
        """Whether one record may have been changed by someone else (a coarse notice counts)."""
        return any(change.entity == entity and (change.many or change.entity_id == entity_id)
                   for change in self.by_others(ignore))


class DataChanged(Message):
    """Records changed in the database (posted by the app to each screen; does not bubble)."""

    bubble = False

    def __init__(self, changes: LiveChanges) -> None:
        super().__init__()
        self.changes = changes


class NoticeArrived(Message):
    """A notice from the listener thread, for the app to coalesce."""

    def __init__(self, notice: Notice) -> None:
        super().__init__()
        self.notice = notice


#: the kinds of record a member's file shows
MEMBER_FILE_ENTITIES = frozenset({"member", "call_record", "risk_flag", "member_insurance_plan", "metadata"})

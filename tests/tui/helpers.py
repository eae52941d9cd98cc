"""Waiting in Pilot tests: for a condition the app reaches through its workers (never a fixed sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from textual.widgets import DataTable, Static


async def wait_for(pilot: Any, condition: Callable[[], Any], *, timeout: float = 15.0, what: str = "") -> Any:
    """Let the app run until ``condition()`` is truthy (workers finish, messages are handled).

    It does not wait for *all* workers: a sign-in worker polling the identity
    provider only finishes after the test has approved the code.
    """
    deadline = time.monotonic() + timeout
    while True:
        await pilot.pause()
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await pilot.pause(0.02)


def screen_text(screen: Any) -> str:
    """Everything the screen's Statics and DataTables hold, as text (to look for values that must not be there)."""
    parts: list[str] = []
    for widget in screen.query("*"):
        if isinstance(widget, Static):
            parts.append(str(widget.render()))
        if isinstance(widget, DataTable):
            for row_key in widget.rows:
                parts.extend(str(cell) for cell in widget.get_row(row_key))
    return "\n".join(parts)


def schedule_today(tui, desk, member_id) -> None:  # noqa: ANN001
    """A call scheduled for today (UTC, the tests' display zone) whatever the time of day the test runs.

    The rules refuse scheduling a call in the past, so it is scheduled an hour ahead and then, as if the
    morning had passed without it being made, moved to the first minute of today (a still-scheduled call
    earlier today is on the Today tab as much as a later one)."""
    call = desk.log_call({"member_id": member_id, "call_type": "outreach", "call_status": "scheduled",
                          "scheduled_at": datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(hours=1)})
    start_of_today = datetime.combine(datetime.now(timezone.utc).date(), datetime.min.time()) + timedelta(minutes=1)
    tui.execute("platform", "UPDATE call_records SET scheduled_at = :at WHERE id = :c", at=start_of_today, c=call.id)


#: glyphs of Textual's tall borders and partial scrollbar ends, which read as stray half blocks
HALF_BLOCKS = set("▀▄▌▐▊▎▁▂▃▅▆▇█▉▋▍")

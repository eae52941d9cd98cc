"""Break the glass in the app: an auditor asks for emergency access, reveals, and a supervisor reviews it (F8)."""

from __future__ import annotations

from textual.widgets import DataTable

from carecli.screens.emergency import BreakGlassDialog, EmergencyQueueScreen, GrantActionsScreen, ReviewDialog
from carecli.screens.forms import RevealDialog
from carecli.screens.member import MemberDetailScreen
from tests.tui.conftest import SIZE
from tests.tui.helpers import screen_text, wait_for
from tests.tui.test_member_screens import DOB, SSN_SHOWN, app_for, header, make_member, open_member, set_input


async def test_break_the_glass_then_reveal_then_a_supervisor_reviews_it(tui) -> None:
    known = make_member(tui)
    auditor = tui.sign_in("auditor")
    app = app_for(tui, auditor)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        # r explains that this role breaks the glass first; b does it.
        assert screen.check_action("break_glass", ()) is True
        await pilot.press("r")
        await pilot.pause()
        assert app.screen is screen and any("press b to break the glass" in str(n.message)
                                            for n in app._notifications)
        await pilot.press("b")
        dialog = await wait_for(pilot, lambda: isinstance(app.screen, BreakGlassDialog) and app.screen)
        set_input(dialog, "reason", "short")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert set(dialog.field_errors()) == {"reason", "confirmation"}
        assert tui.scalar("platform", "SELECT count(*) FROM audit_logs WHERE entity_type = 'emergency_access'") == 0
        set_input(dialog, "reason", "member in crisis on the line")
        set_input(dialog, "confirmation", "emergency")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen and screen.emergency is not None, what="the grant")
        assert "emergency access until" in header(screen)
        assert screen.check_action("break_glass", ()) is False

        await pilot.press("r")
        reveal = await wait_for(pilot, lambda: isinstance(app.screen, RevealDialog) and app.screen)
        set_input(reveal, "reason", "identity check in the emergency")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen and screen.revealed is not None, what="the reveal")
        assert f"SSN {SSN_SHOWN}" in header(screen) and f"DOB {DOB.isoformat()}" in header(screen)
    assert screen.emergency is not None
    grant_id = screen.emergency.id
    marked = tui.rows("platform", "SELECT action, new_values->>'purpose' AS purpose FROM audit_logs "
                      "WHERE new_values->>'emergency_access' = :g ORDER BY created_at", g=str(grant_id))
    assert [(row.action, row.purpose) for row in marked] == [("read", "reveal")]

    supervisor = tui.sign_in("supervisor")
    app = app_for(tui, supervisor)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "WorklistScreen", what="the worklist")
        await pilot.press("f8")
        queue = await wait_for(pilot, lambda: isinstance(app.screen, EmergencyQueueScreen) and app.screen.entries
                               and app.screen, what="the queue")
        assert isinstance(queue, EmergencyQueueScreen)
        assert [entry.grant.id for entry in queue.entries] == [grant_id]
        table = queue.query_one("#emergency-table", DataTable)
        assert [str(cell) for cell in table.get_row_at(0)][-2:] == ["live", "1"]
        assert str(queue.query_one("#emergency-status").render()) == "1 emergency access waiting for review"
        # The member by name, not by a bare id.
        name = tui.rows("platform", "SELECT first_name, last_name FROM members WHERE id = :m",
                        m=queue.entries[0].grant.member_id)[0]
        assert str(table.get_row_at(0)[2]) == f"{name.last_name}, {name.first_name}"
        assert SSN_SHOWN not in screen_text(queue)

        await pilot.press("d")
        details = await wait_for(pilot, lambda: isinstance(app.screen, GrantActionsScreen) and app.screen.rows
                                 and app.screen, what="the grant's actions")
        assert [row.entry.action for row in details.rows] == ["read"]
        assert "member in crisis on the line" in screen_text(details)
        assert f"{name.last_name}, {name.first_name}" in screen_text(details)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is queue)
        assert table.has_focus

        # Enter opens the member; Esc comes back to the queue with the cursor where it was.
        await pilot.press("enter")
        member = await wait_for(pilot, lambda: isinstance(app.screen, MemberDetailScreen) and app.screen)
        assert member.member_id == queue.entries[0].grant.member_id
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is queue)
        assert table.has_focus

        await pilot.press("v")
        review = await wait_for(pilot, lambda: isinstance(app.screen, ReviewDialog) and app.screen)
        assert f"member {name.last_name}, {name.first_name}" in screen_text(review)
        set_input(review, "note", "confirmed with the crisis line log")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is queue and not queue.entries and queue.generation >= 2,
                       what="the queue without the reviewed grant")
        await pilot.press("a")
        await wait_for(pilot, lambda: queue.entries and queue.entries[0].grant.reviewed, what="--all")
    reviewed = tui.rows("platform", "SELECT user_id, new_values FROM audit_logs WHERE action = 'review'")
    assert [row.user_id for row in reviewed] == [supervisor.user_id]
    assert reviewed[0].new_values["review_note"] == "[redacted]"


async def test_the_queue_explains_a_refusal(tui) -> None:
    desk = tui.sign_in("specialist")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "WorklistScreen", what="the worklist")
        await pilot.press("f8")
        queue = await wait_for(pilot, lambda: isinstance(app.screen, EmergencyQueueScreen) and app.screen.refused
                               and app.screen, what="the refusal")
        assert "emergency:review" in screen_text(queue)
        assert queue.check_action("review", ()) is False

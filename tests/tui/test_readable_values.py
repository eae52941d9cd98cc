"""Readable values on every screen: local times under ``[tui] timezone``, phones, enum words, empty tabs, counts.

The app runs with a configured zone (``America/New_York``, ``Asia/Kolkata``) and
the tests look at what the screens show for records with known UTC times, and at
what a form typed in that zone stores.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from textual.widgets import DataTable, Static

from carecli.screens.call import CallScreen
from carecli.screens.call_forms import ScheduleCallForm
from carecli.screens.formatting import zone_name
from carecli.screens.forms import EnrollFormScreen
from carecli.screens.members import MemberBrowserScreen
from carecli.screens.plans import PlansScreen
from carecli.screens.widgets import CareCheckbox
from carecli.screens.worklist import EMPTY, SECTIONS, WorklistScreen
from tests.tui.conftest import SIZE
from tests.tui.helpers import HALF_BLOCKS, wait_for
from tests.tui.test_member_screens import PHONE, PHONE_SHOWN, app_for, header, make_member, open_member, set_input

#: 2025-03-01 14:00 UTC: 19:30 in Kolkata (IST), 09:00 in New York (EST)
STARTED = datetime(2025, 3, 1, 14, 0)
#: glyphs that borders, tall inputs, checkboxes and scrollbars leave on screen (the footer's ▏ is Textual's own)


def _column_labels(table: DataTable) -> list[str]:
    return [str(column.label) for column in table.ordered_columns]


def _half_blocks(app) -> set[str]:
    return HALF_BLOCKS & set(app.export_screenshot())


async def test_times_show_in_the_configured_zone_with_the_zone_named(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    call = desk.log_call({"member_id": known.id, "call_type": "follow_up", "call_status": "completed",
                          "scheduled_at": STARTED, "started_at": STARTED, "ended_at": STARTED + timedelta(minutes=12),
                          "outcome": "reached"})
    app = app_for(tui, desk, timezone="Asia/Kolkata")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        table = screen.query_one("#calls-table", DataTable)
        assert _column_labels(table)[0] == "When (IST)"
        assert [str(cell) for cell in table.get_row_at(0)][:3] == ["2025-03-01 19:30", "follow up", "completed"]
        assert PHONE_SHOWN in header(screen) and PHONE not in header(screen)
        await pilot.press("enter")
        call_screen = await wait_for(pilot, lambda: isinstance(app.screen, CallScreen) and app.screen.view
                                     and app.screen)
        fields = str(call_screen.query_one("#call-fields", Static).render())
        assert "Scheduled (IST)  2025-03-01 19:30" in fields
        assert "Started (IST)    2025-03-01 19:30" in fields and "Ended (IST)      2025-03-01 19:42" in fields
        assert str(call_screen.query_one("#call-title", Static).render()).startswith("Follow up call with")
    assert call.started_at == STARTED  # stored in UTC, as ever


async def test_a_time_typed_in_the_configured_zone_is_stored_in_utc(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    app = app_for(tui, desk, timezone="America/New_York")
    when = (datetime.now(timezone.utc) + timedelta(days=30)).replace(hour=14, minute=0, second=0, microsecond=0)
    local = when.astimezone(ZoneInfo("America/New_York"))
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await pilot.press("s")
        form = await wait_for(pilot, lambda: isinstance(app.screen, ScheduleCallForm) and app.screen)
        label = str(form.query_one("#cell-scheduled_at .field-label", Static).render())
        assert label == f"When ({zone_name(zone=ZoneInfo('America/New_York'))})" and label in ("When (EST)",
                                                                                                "When (EDT)")
        set_input(form, "scheduled_at", local.strftime("%Y-%m-%d %H:%M"))
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen and screen.file and screen.file.calls, what="the call")
        shown = [str(cell) for cell in screen.query_one("#calls-table", DataTable).get_row_at(0)]
        assert shown[0] == local.strftime("%Y-%m-%d %H:%M") and shown[2] == "scheduled"
    stored = tui.scalar("platform", "SELECT scheduled_at FROM call_records WHERE member_id = :m", m=known.id)
    assert stored == when.replace(tzinfo=None)  # 14:00 UTC, typed as 09:00 (EST) or 10:00 (EDT)


async def test_empty_tabs_say_so(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        for pane, said in (("calls", "No calls with this member yet."), ("flags", "No risk flags."),
                           ("enrollments", "No enrollments."), ("notes", "No notes.")):
            note = screen.query_one(f"#{pane}-empty", Static)
            assert note.display and str(note.render()) == said, pane
            assert not screen.query_one(f"#{pane}-table", DataTable).show_header
        desk.log_call({"member_id": known.id, "call_type": "outreach", "call_status": "completed",
                       "started_at": STARTED, "ended_at": STARTED + timedelta(minutes=5)})
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: screen.file and screen.file.calls, what="the call")
        assert not screen.query_one("#calls-empty", Static).display
        assert screen.query_one("#calls-table", DataTable).show_header


async def test_a_worklist_with_nothing_in_it_says_so_on_every_tab(tui) -> None:
    app = app_for(tui, tui.sign_in("admin"))  # no specialist record: nothing on any tab
    async with app.run_test(size=SIZE) as pilot:
        screen = await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen) and app.screen)
        await wait_for(pilot, lambda: len(screen.items) == len(SECTIONS), what="the worklist")
        for tab_id, _title, _attribute in SECTIONS:
            note = screen.query_one(f"#empty-{tab_id}", Static)
            assert note.display and str(note.render()) == EMPTY[tab_id]


async def test_the_worklist_header_is_cut_with_an_ellipsis(tui) -> None:
    app = app_for(tui, tui.sign_in("specialist"))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen) and app.screen.items
                                and app.screen)
        summary = screen.query_one("#worklist-summary", Static)
        summary.update("Your plans: " + ", ".join(f"PLAN-NUMBER-{n:02d}" for n in range(12)))
        await pilot.pause()
        line = summary.render_line(0).text.rstrip()
        assert line.endswith("…") and not line.rstrip("…").endswith(",")
        assert summary.size.height == 1


async def test_the_member_browser_shows_words_and_national_phones_and_keeps_its_search_box(tui) -> None:
    app = app_for(tui, tui.sign_in("specialist"))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
        await pilot.press("f3")
        screen = await wait_for(pilot, lambda: isinstance(app.screen, MemberBrowserScreen) and app.screen.rows
                                and app.screen)
        table = screen.query_one("#member-results", DataTable)
        phones = [str(table.get_row_at(row)[2]) for row in range(table.row_count)]
        assert all(phone == "" or (phone.startswith("(") and "+" not in phone) for phone in phones)
        assert screen.query_one("#member-search").size.width >= 24
        assert screen.query_one("#member-plan").size.width >= len("HDHP-PLATINUM-2026") + 2
        sort = screen.query_one("#member-sort")
        assert "Newest added" in [str(prompt) for prompt, _value in sort._options]
        assert not _half_blocks(app)


async def test_checkboxes_read_without_colour_and_no_half_blocks_are_left(tui) -> None:
    known = make_member(tui)
    app = app_for(tui, tui.sign_in("supervisor"))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_member(pilot, known.id)
        assert not _half_blocks(app)
        await pilot.press("e")
        form = await wait_for(pilot, lambda: isinstance(app.screen, EnrollFormScreen) and app.screen)
        box = form.query_one("#field-is_primary", CareCheckbox)
        assert str(box.render()).startswith("[ ] primary")
        box.value = True
        await pilot.pause()
        assert str(box.render()).startswith("[x] primary")
        box.focus()
        await pilot.pause()
        assert not _half_blocks(app)
        await pilot.press("escape", "escape")
        await wait_for(pilot, lambda: app.screen is screen)
        await pilot.press("f4")
        plans = await wait_for(pilot, lambda: isinstance(app.screen, PlansScreen) and app.screen.plans
                               and app.screen)
        assert str(plans.query_one("#plans-inactive", CareCheckbox).render()).strip() == "[ ] Show inactive"
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert str(plans.query_one("#plans-inactive", CareCheckbox).render()).strip() == "[x] Show inactive"
        assert not _half_blocks(app)

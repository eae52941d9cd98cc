"""Live updates between app sessions: two headless apps (Pilot) on one seeded database pair.

Session B shows something; session A (another app, or another person's
desk) changes it; B's screen follows without a key press. Every wait is on
a condition with a deadline, never a fixed sleep. Both apps run in this one
process, so they share its one listener connection, as sessions of the SSH
host do.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import text
from textual.widgets import DataTable, Input, Static, TabbedContent

from carecli.data.crypto.runtime import cipher_provider
from carecli.data.unit_of_work import PlatformUnitOfWork
from carecli.screens.call import CallScreen
from carecli.screens.call_forms import RescheduleCallForm
from carecli.screens.forms import CallFormScreen
from carecli.screens.member import MemberDetailScreen
from carecli.screens.members import MemberBrowserScreen, ResultsTable
from carecli.screens.worklist import WorklistScreen
from tests.tui.conftest import SIZE
from tests.tui.helpers import wait_for
from tests.tui.test_member_screens import make_member, reads, set_input, table_rows


def now_utc() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None, second=0, microsecond=0)


def in_app(app: Any, callback: Any, *args: Any) -> None:
    """Run ``callback`` in ``app``'s own task: with two apps running, a direct call from the test
    would resolve Textual's "active app" to whichever app the test entered last."""
    app.call_later(callback, *args)


async def open_member(pilot: Any, member_id: Any) -> MemberDetailScreen:
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen), what="the worklist")
    in_app(app, app.open_member, member_id)
    return await wait_for(pilot, lambda: isinstance(app.screen, MemberDetailScreen) and app.screen.file is not None
                          and app.screen, what="the member's file")


async def listening(pilot: Any) -> None:
    """A change made before the listener LISTENs is not seen: wait for it first."""
    await wait_for(pilot, lambda: pilot.app.live_listening, what="the live-update listener")


async def test_a_second_session_sees_the_first_ones_new_call_without_a_key_press(tui) -> None:
    known = make_member(tui)
    desk_b = tui.sign_in("specialist", 0)
    desk_a = tui.sign_in("specialist", 1)
    app_a, app_b = tui.app(desk_a), tui.app(desk_b)
    async with app_b.run_test(size=SIZE) as pilot_b, app_a.run_test(size=SIZE) as pilot_a:
        screen_b = await open_member(pilot_b, known.id)
        await listening(pilot_b)
        assert table_rows(screen_b, "calls-table") == []
        opened_before = len(reads(tui, known.id, "open"))
        # Session A logs a call through its own form.
        screen_a = await open_member(pilot_a, known.id)
        await pilot_a.press("c")
        form = await wait_for(pilot_a, lambda: isinstance(app_a.screen, CallFormScreen) and app_a.screen)
        set_input(form, "started_at", "2025-05-02 10:00")
        set_input(form, "ended_at", "2025-05-02 10:20")
        set_input(form, "outcome", "reached by A")
        await pilot_a.press("ctrl+s")
        await wait_for(pilot_a, lambda: app_a.screen is screen_a and table_rows(screen_a, "calls-table"),
                       what="A's own reload")
        # B pressed nothing: its calls table follows.
        rows = await wait_for(pilot_b, lambda: table_rows(screen_b, "calls-table"), what="B's live reload")
        assert rows[0][0] == "2025-05-02 10:00" and rows[0][4] == "reached by A"
        assert str(screen_b.query_one("#member-tabs", TabbedContent).get_tab("calls").label) == "Calls (1)"
        # B's refresh was a real, audited open of the file, by B.
        opened = reads(tui, known.id, "open")
        assert desk_b.user_id in [row.user_id for row in opened[opened_before:]]


async def test_an_edit_of_a_call_open_in_another_session_is_flagged_in_the_form_and_refused_with_who_and_when(
        tui) -> None:
    known = make_member(tui)
    desk_b = tui.sign_in("specialist", 0)
    desk_a = tui.sign_in("specialist", 1)
    call = desk_b.schedule_call(known.id, now_utc() + timedelta(days=1))
    app_a, app_b = tui.app(desk_a), tui.app(desk_b)
    async with app_b.run_test(size=SIZE) as pilot_b, app_a.run_test(size=SIZE) as pilot_a:
        forms = []
        for app, pilot in ((app_b, pilot_b), (app_a, pilot_a)):
            screen = await open_member(pilot, known.id)
            in_app(app, screen.query_one("#calls-table", DataTable).focus)
            await wait_for(pilot, lambda: screen.focused is screen.query_one("#calls-table"))
            await pilot.press("enter")  # opens the call
            await wait_for(pilot, lambda: isinstance(app.screen, CallScreen) and app.screen.view is not None)
            await pilot.press("s")  # reschedule it
            forms.append(await wait_for(pilot, lambda: isinstance(app.screen, RescheduleCallForm)
                                        and app.screen))
        form_b, form_a = forms
        await listening(pilot_b)
        set_input(form_b, "reason", "B's words")
        # A saves first.
        set_input(form_a, "scheduled_at", (now_utc() + timedelta(days=2)).strftime("%Y-%m-%d %H:%M"))
        set_input(form_a, "reason", "A's words")
        await pilot_a.press("ctrl+s")
        await wait_for(pilot_a, lambda: not isinstance(app_a.screen, RescheduleCallForm), what="A's save")
        status_b = form_b.query_one("#form-status", Static)
        await wait_for(pilot_b, lambda: "Another session has just changed this call" in str(status_b.render()),
                       what="B's form to say the call changed")
        assert form_b.query_one("#field-reason", Input).value == "B's words"  # nothing typed is lost
        await pilot_b.press("ctrl+s")
        await wait_for(pilot_b, lambda: "Not saved" in str(status_b.render()), what="the conflict")
        shown = str(status_b.render())
        changed_at = tui.scalar("platform", "SELECT updated_at FROM call_records WHERE id = :id", id=call.id)
        assert desk_a.display_name in shown and f"{changed_at:%Y-%m-%d %H:%M:%S} UTC" in shown
        assert "reload it and apply your change again" in shown.lower()
        assert app_b.screen is form_b and form_b.query_one("#field-reason", Input).value == "B's words"
        notes = tui.scalar("platform", "SELECT call_notes FROM call_records WHERE id = :id", id=call.id)
        assert "A's words" in notes and "B's words" not in notes


async def test_the_worklist_follows_a_call_scheduled_for_me_elsewhere_and_keeps_the_cursor(tui) -> None:
    desk_b = tui.sign_in("specialist", 0)
    specialist = desk_b.specialist()
    assert specialist is not None
    members = [row.id for row in tui.rows("platform", "SELECT id FROM members ORDER BY id LIMIT 3")]
    for member_id in members[:2]:
        desk_b.log_call({"member_id": member_id, "call_type": "outreach", "call_status": "scheduled",
                         "scheduled_at": now_utc()})
    supervisor = tui.sign_in("supervisor")
    app_b = tui.app(desk_b)
    async with app_b.run_test(size=SIZE) as pilot:
        worklist = await wait_for(pilot, lambda: isinstance(app_b.screen, WorklistScreen) and app_b.screen)
        table = worklist.query_one("#table-today", DataTable)
        before = await wait_for(pilot, lambda: table.row_count, what="today's calls")
        await listening(pilot)
        table.move_cursor(row=before - 1)
        selected = worklist.items["today"][before - 1]
        supervisor.log_call({"member_id": members[2], "specialist_id": specialist.id, "call_type": "follow_up",
                             "call_status": "scheduled", "scheduled_at": now_utc()})
        await wait_for(pilot, lambda: table.row_count == before + 1, what="the new call on B's worklist")
        assert members[2] in {item.member_id for item in worklist.items["today"]}
        assert worklist.items["today"][table.cursor_row] == selected  # the cursor stayed on its row


async def listening_browser(pilot: Any) -> MemberBrowserScreen:
    """From the worklist, F3: the member browser with its first page, the app listening for changes."""
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
    await pilot.press("f3")
    browser = await wait_for(pilot, lambda: isinstance(app.screen, MemberBrowserScreen) and app.screen)
    await wait_for(pilot, lambda: browser.settled and browser.rows, what="the first page")
    await listening(pilot)
    return browser


async def test_the_member_browser_reloads_its_page_and_keeps_the_cursor_and_the_search_text(tui) -> None:
    admin = tui.sign_in("admin")
    app_b = tui.app(tui.sign_in("specialist"))
    async with app_b.run_test(size=SIZE) as pilot:
        browser = await listening_browser(pilot)
        table = browser.query_one(ResultsTable)
        table.move_cursor(row=3)
        cursor_member = browser.rows[3]
        target = browser.rows[5]
        with PlatformUnitOfWork(tui.databases.platform, admin.actor,
                                cipher=cipher_provider(tui.settings, tui.databases)) as uow:
            member = uow.members.get(target)
            uow.members.update(target, member.updated_at, {"phone": "+15550199999"})
            uow.commit()
        data = table._data  # DataTable.clear() replaces it
        await wait_for(pilot, lambda: str(table.get_row(str(target))[2]) == "(555) 019-9999",
                       what="the new phone on B's page")
        assert browser.rows[table.cursor_row] == cursor_member
        assert browser.query_one("#member-search", Input).value == ""
        # The same members in the same order: the changed cell was updated in place, the table not rebuilt.
        assert table._data is data
        # A longer name that moves the member to the top: the page is rebuilt, the cursor follows its member.
        with PlatformUnitOfWork(tui.databases.platform, admin.actor,
                                cipher=cipher_provider(tui.settings, tui.databases)) as uow:
            member = uow.members.get(target)
            uow.members.update(target, member.updated_at, {"last_name": "Aaaaron-Abercrombie-Longname"})
            uow.commit()
        await wait_for(pilot, lambda: browser.rows and browser.rows[0] == target, what="the renamed member first")
        assert "Aaaaron-Abercrombie-Longname" in str(table.get_row(str(target))[0])
        assert browser.rows[table.cursor_row] == cursor_member


async def test_a_locked_app_reads_nothing_until_unlocked_then_catches_up(tui) -> None:
    known = make_member(tui)
    desk_b = tui.sign_in("specialist", 0)
    desk_a = tui.sign_in("specialist", 1)
    app_b = tui.app(desk_b)
    async with app_b.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await listening(pilot)
        in_app(app_b, app_b.lock, "Locked.")
        await wait_for(pilot, lambda: app_b.locked)
        opened = len(reads(tui, known.id, "open"))
        received = app_b.live_received
        desk_a.log_call({"member_id": known.id, "call_type": "support", "call_status": "completed",
                         "started_at": datetime(2025, 5, 3, 8, 0), "ended_at": datetime(2025, 5, 3, 8, 5)})
        await wait_for(pilot, lambda: app_b.live_received > received and app_b.live_idle, what="the notice")
        assert len(reads(tui, known.id, "open")) == opened, "nothing is read for a locked screen"
        assert table_rows(screen, "calls-table") == []
        in_app(app_b, app_b.signed_in, desk_b)  # what the sign-in screen does when the same user signs back in
        await wait_for(pilot, lambda: table_rows(screen, "calls-table"), what="the reload after the unlock")


async def test_after_the_listener_loses_its_connection_the_screen_reloads_in_full(tui) -> None:
    known = make_member(tui)
    app_b = tui.app(tui.sign_in("specialist"))
    async with app_b.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await listening(pilot)
        pid = app_b._live.listener.stats.backend_pid
        opened = len(reads(tui, known.id, "open"))
        with tui.databases.platform.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await wait_for(pilot, lambda: len(reads(tui, known.id, "open")) > opened, what="a full reload")
        await wait_for(pilot, lambda: app_b.live_listening and app_b._live.listener.stats.backend_pid != pid)
        assert screen.file is not None


async def test_a_live_reload_counts_again_only_when_the_number_of_matches_can_have_changed(tui) -> None:
    """A change to members who stay on the page shown cannot change how many match: the page is read again,
    the count is not (on the SSH host that was a second query per session per change). A new member can."""
    admin = tui.sign_in("admin")
    app_b = tui.app(tui.sign_in("specialist"))
    async with app_b.run_test(size=SIZE) as pilot:
        browser = await listening_browser(pilot)
        desk = browser.desk
        counted: list[Any] = []
        count_members = desk.count_members

        def counting(query: Any) -> Any:
            counted.append(query)
            return count_members(query)

        desk.count_members = counting  # type: ignore[method-assign]
        status = browser.query_one("#member-status-line", Static)
        before = str(status.render())
        assert browser.count is not None
        total = browser.count.describe()
        assert f" of {total}" in before
        table = browser.query_one(ResultsTable)
        target = browser.rows[5]
        cipher = cipher_provider(tui.settings, tui.databases)
        with PlatformUnitOfWork(tui.databases.platform, admin.actor, cipher=cipher) as uow:
            member = uow.members.get(target)
            uow.members.update(target, member.updated_at, {"phone": "+15550198888", "first_name": "Renamed"})
            uow.commit()
        await wait_for(pilot, lambda: str(table.get_row(str(target))[2]) == "(555) 019-8888",
                       what="the new phone on B's page")
        await app_b.workers.wait_for_complete()
        await pilot.pause()
        assert counted == []
        assert str(status.render()) == before
        # A member who was not on the page (here: a new one) may change the count: it is asked again.
        with PlatformUnitOfWork(tui.databases.platform, admin.actor, cipher=cipher) as uow:
            uow.members.create({"first_name": "Nova", "last_name": "Zzyzx-Newcomer", "status": "active"})
            uow.commit()
        await wait_for(pilot, lambda: counted, what="the count asked again")
        await wait_for(pilot, lambda: browser.count is not None and browser.count.describe() != total,
                       what="the new count")
        assert f" of {browser.count.describe()}" in str(status.render())
        # A member renamed into the results (on the page now, not before) is one more match: counted again.
        browser.query_one("#member-search", Input).value = "Zzyzx"
        await wait_for(pilot, lambda: browser.settled and browser.query_state.text == "Zzyzx" and len(browser.rows) == 1
                       and browser.count is not None and browser.count.describe() == "1", what="the newcomer alone")
        counted.clear()
        with PlatformUnitOfWork(tui.databases.platform, admin.actor, cipher=cipher) as uow:
            member = uow.members.get(target)
            uow.members.update(target, member.updated_at, {"last_name": "Zzyzx-Second"})
            uow.commit()
        await wait_for(pilot, lambda: len(browser.rows) == 2 and browser.count is not None
                       and browser.count.describe() == "2", what="the renamed member counted")
        assert len(counted) == 1


async def test_a_change_after_a_quiet_spell_is_handed_on_at_once_and_a_burst_waits_out_one_window(tui) -> None:
    import uuid

    from carecli.data.notify import Change, Notice
    from carecli.screens.live import NoticeArrived

    app = tui.app(tui.sign_in("specialist"))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
        app.live_coalesce_seconds = 600.0  # a window no test waits out: what is handed on before it is at once

        def notice() -> Notice:
            return Notice(changes=(Change("member", uuid.uuid4(), uuid.uuid4()),), source=None)

        in_app(app, app.post_message, NoticeArrived(notice()))
        await wait_for(pilot, lambda: app.live_handed == 1 and app.live_idle, what="the first notice, at once")
        # A burst right after it: gathered, and handed on together when the window ends.
        for _ in range(3):
            in_app(app, app.post_message, NoticeArrived(notice()))
        await wait_for(pilot, lambda: app.live_received == 4, what="the burst received")
        await pilot.pause()
        assert app.live_handed == 1
        assert not app.live_idle
        in_app(app, app.flush_live_updates)  # the window's end
        await wait_for(pilot, lambda: app.live_handed == 2 and app.live_idle, what="the burst, in one hand-out")

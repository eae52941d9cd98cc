"""The app shell: sign-in (OIDC device flow against a real provider), worklist, lock, keys, size, help."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from textual.widgets import DataTable, Static

from carecli.config import load_settings
from carecli.screens.app import CareApp, TooSmallScreen
from carecli.screens.signin import SignInScreen
from carecli.screens.worklist import WorklistScreen
from tests.tui.conftest import SIZE
from tests.tui.helpers import schedule_today, screen_text, wait_for


class FakeClock:
    """The app's idle clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _oidc_settings(tui, provider):
    return load_settings({**tui.env, "CARECLI_OIDC_ISSUER": provider.issuer,
                          "CARECLI_OIDC_CLIENT_ID": provider.client_id,
                          "CARECLI_OIDC_AUDIENCE": provider.audience or ""})


def _user_code(screen) -> str | None:
    text = str(screen.query_one("#signin-text", Static).render())
    marker = "enter the code"
    if marker not in text:
        return None
    return text.split(marker, 1)[1].split()[0]


async def test_oidc_sign_in_from_the_app_opens_the_worklist(tui, oidc_provider) -> None:
    settings = _oidc_settings(tui, oidc_provider)
    user = tui.user("specialist")
    app = CareApp(settings, databases=tui.databases, store=tui.store)
    async with app.run_test(size=SIZE) as pilot:
        signin = await wait_for(pilot, lambda: isinstance(app.screen, SignInScreen) and app.screen, what="sign-in")
        code = await wait_for(pilot, lambda: _user_code(signin), what="the device code")
        assert oidc_provider.issuer in str(signin.query_one("#signin-text", Static).render())
        # A QR code of the verification link fits at this size.
        box = signin.query_one("#signin-qr-box")
        await wait_for(pilot, lambda: box.display and box.region.height >= 15, what="the whole QR code on screen")
        oidc_provider.approve(code, user.external_user_id, email=user.email)
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen), what="the worklist")
        assert app.desk is not None and app.desk.user_id == user.id
    sessions = tui.rows("identity", "SELECT user_agent FROM sessions WHERE user_id = :u AND deleted_at IS NULL",
                        u=user.id)
    assert [row.user_agent.endswith("(tui)") for row in sessions] == [True]
    assert tui.scalar("platform", "SELECT count(*) FROM audit_logs WHERE action = 'login' AND user_id = :u",
                      u=user.id) == 1


async def test_stored_session_goes_straight_to_the_worklist_with_todays_items(tui) -> None:
    desk = tui.sign_in("specialist")
    specialist = desk.specialist()
    assert specialist is not None
    member_id = tui.scalar("platform", "SELECT id FROM members WHERE deleted_at IS NULL ORDER BY id LIMIT 1")
    name = tui.rows("platform", "SELECT first_name, last_name FROM members WHERE id = :m", m=member_id)[0]
    schedule_today(tui, desk, member_id)
    overdue = date.today() - timedelta(days=3)
    started = datetime.combine(overdue - timedelta(days=2), datetime.min.time()).replace(hour=15)
    handled = desk.log_call({"member_id": member_id, "call_type": "support", "call_status": "completed",
                             "started_at": started, "ended_at": started + timedelta(minutes=5),
                             "follow_up_required": True, "follow_up_date": overdue, "outcome": "send forms"})
    app = CareApp(tui.settings, databases=tui.databases, store=tui.store)  # resumes the stored session
    async with app.run_test(size=SIZE) as pilot:
        screen = await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen) and app.screen)
        today = await wait_for(pilot, lambda: screen.query_one("#table-today", DataTable).row_count and
                               screen.query_one("#table-today", DataTable))
        rows = [[str(cell) for cell in today.get_row(key)] for key in today.rows]
        assert [row[1:] for row in rows] == [[f"{name.last_name}, {name.first_name}", "outreach · scheduled"]]
        assert str(screen.query_one("#worklist-tabs").get_tab("tab-today").label) == "Today (1)"
        # The completed call's follow-up is not overdue: today's scheduled call, later, takes care of it.
        assert handled.id not in {item.call_id for item in screen.items["overdue"]}
        assert screen.query_one("#table-overdue", DataTable).row_count == len(screen.items["overdue"])


async def test_the_tabs_the_first_paint_does_not_show_are_filled_just_after_it(tui) -> None:
    """The first load fills the tab it opens on before the first paint, the others right after it: each ends
    with its rows (or its empty note), and a tab taken at once shows its rows with the cursor on the first."""
    desk = tui.sign_in("specialist")
    member_id = tui.scalar("platform", "SELECT id FROM members WHERE deleted_at IS NULL ORDER BY id LIMIT 1")
    schedule_today(tui, desk, member_id)
    overdue = date.today() - timedelta(days=4)
    started = datetime.combine(overdue - timedelta(days=1), datetime.min.time()).replace(hour=10)
    desk.log_call({"member_id": member_id, "call_type": "support", "call_status": "completed",
                   "started_at": started, "ended_at": started + timedelta(minutes=5),
                   "follow_up_required": True, "follow_up_date": overdue, "outcome": "call back"})
    app = CareApp(tui.settings, databases=tui.databases, store=tui.store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen) and app.screen)
        await wait_for(pilot, lambda: screen.query_one("#table-today", DataTable).row_count)
        tabs = screen.query_one("#worklist-tabs")
        tabs.active = "tab-overdue"
        await pilot.pause()
        table = screen.query_one("#table-overdue", DataTable)
        assert screen.items["overdue"] and table.row_count == len(screen.items["overdue"])
        assert table.cursor_row == 0 and not screen.query_one("#empty-overdue", Static).display
        for tab_id, items in screen.items.items():
            assert screen.query_one(f"#table-{tab_id}", DataTable).row_count == len(items), tab_id
            assert screen.query_one(f"#empty-{tab_id}", Static).display == (not items), tab_id


async def test_the_follow_up_without_a_later_call_is_overdue(tui) -> None:
    desk = tui.sign_in("specialist")
    member_id = tui.scalar("platform", "SELECT id FROM members WHERE deleted_at IS NULL ORDER BY id DESC LIMIT 1")
    overdue = date.today() - timedelta(days=2)
    started = datetime.combine(overdue - timedelta(days=1), datetime.min.time()).replace(hour=15)
    call = desk.log_call({"member_id": member_id, "call_type": "support", "call_status": "completed",
                          "started_at": started, "ended_at": started + timedelta(minutes=5),
                          "follow_up_required": True, "follow_up_date": overdue})
    worklist = desk.worklist()
    assert call.id in {item.call_id for item in worklist.overdue}
    # A later completed call with the member takes care of it.
    desk.log_call({"member_id": member_id, "call_type": "follow_up", "call_status": "completed",
                   "started_at": started + timedelta(days=1), "ended_at": started + timedelta(days=1, minutes=3)})
    assert call.id not in {item.call_id for item in desk.worklist().overdue}


async def test_idle_lock_clears_member_values_and_the_same_user_gets_the_screen_back(tui, oidc_provider) -> None:
    settings = _oidc_settings(tui, oidc_provider)
    user = tui.user("specialist")
    desk = tui.sign_in("specialist")
    schedule_today(tui, desk, tui.scalar("platform", "SELECT id FROM members ORDER BY id LIMIT 1"))
    clock = FakeClock()
    app = CareApp(settings, databases=tui.databases, store=tui.store, clock=clock)
    async with app.run_test(size=SIZE) as pilot:
        worklist = await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen) and app.screen)
        await wait_for(pilot, lambda: worklist.query_one("#table-today", DataTable).row_count)
        clock.now += settings.session_idle_minutes * 60 - 1
        app.check_inactivity()
        assert not app.locked
        clock.now += 2
        app.check_inactivity()
        assert app.locked and isinstance(app.screen, SignInScreen)
        await wait_for(pilot, lambda: "without activity" in screen_text(app.screen))
        assert all(worklist.query_one(f"#table-{t}", DataTable).row_count == 0
                   for t in ("today", "overdue", "upcoming", "flags", "plans"))
        # Navigation is refused while locked.
        await pilot.press("f3")
        assert isinstance(app.screen, SignInScreen)
        code = await wait_for(pilot, lambda: _user_code(app.screen))
        oidc_provider.approve(code, user.external_user_id, email=user.email)
        await wait_for(pilot, lambda: not app.locked and app.screen is worklist, what="unlock")
        await wait_for(pilot, lambda: worklist.query_one("#table-today", DataTable).row_count)


async def test_a_revoked_session_locks_the_app(tui) -> None:
    desk = tui.sign_in("specialist")
    app = tui.app(desk)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
        tui.rows("identity", "SELECT 1")  # warm
        with tui.databases.identity.begin() as connection:
            from sqlalchemy import text
            connection.execute(text("UPDATE sessions SET deleted_at = now() AT TIME ZONE 'UTC'"))
        app.touch_session()
        await wait_for(pilot, lambda: app.locked, what="the lock")
        assert isinstance(app.screen, SignInScreen)
        assert "session ended" in screen_text(app.screen)


async def test_below_80x24_the_app_says_so_and_recovers(tui) -> None:
    app = tui.app(tui.sign_in("specialist"))
    async with app.run_test(size=(70, 20)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, TooSmallScreen))
        assert "at least 80×24" in screen_text(app.screen) and "70×20" in screen_text(app.screen)
        await pilot.resize_terminal(80, 24)
        await wait_for(pilot, lambda: not isinstance(app.screen, TooSmallScreen))


async def test_keys_can_be_remapped_in_the_config_file(tui, tmp_path) -> None:
    config = tmp_path / "keys.toml"
    config.write_text('[keymap]\n"app.members" = "f9"\n')
    settings = load_settings({**tui.env, "CARECLI_CONFIG": str(config)})
    assert settings.keymap == {"app.members": "f9"}
    app = CareApp(settings, databases=tui.databases, desk=tui.sign_in("specialist"), store=tui.store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
        await pilot.press("f3")  # no longer bound
        await pilot.pause()
        assert isinstance(app.screen, WorklistScreen)
        await pilot.press("f9")
        from carecli.screens.members import MemberBrowserScreen

        await wait_for(pilot, lambda: isinstance(app.screen, MemberBrowserScreen))


async def test_f1_help_lists_the_screens_keys_with_their_binding_ids(tui) -> None:
    app = tui.app(tui.sign_in("specialist"))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
        await pilot.press("f1")
        from carecli.screens.help import HelpScreen

        help_screen = await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen) and app.screen)
        text = help_screen.text()
        assert "worklist.refresh" in text and "## Worklist" in text and "[keymap]" in text
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))


async def test_a_user_without_a_specialist_record_is_told_so(tui) -> None:
    app = tui.app(tui.sign_in("auditor"))
    async with app.run_test(size=SIZE) as pilot:
        screen = await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen) and app.screen)
        await wait_for(pilot, lambda: "no specialist record" in screen_text(screen))


def test_bad_keymap_and_reveal_time_are_configuration_errors(tmp_path) -> None:
    import pytest

    from carecli.errors import ConfigError

    bad = tmp_path / "bad.toml"
    bad.write_text('[keymap]\n"app.members" = 3\n')
    with pytest.raises(ConfigError, match=r"\[keymap\] app.members must be a string"):
        load_settings({"CARECLI_CONFIG": str(bad)})
    settings = load_settings({"CARECLI_THEME": "nord", "CARECLI_REVEAL_SECONDS": "5"})
    assert (settings.theme, settings.reveal_seconds) == ("nord", 5)
    with pytest.raises(ConfigError, match="CARECLI_REVEAL_SECONDS must be a positive whole number"):
        load_settings({"CARECLI_REVEAL_SECONDS": "0"})


def test_members_in_my_plans_are_the_newest_live_enrollments_of_my_plans(tui) -> None:
    desk = tui.sign_in("specialist")
    specialist = desk.specialist()
    expected = tui.rows(
        "platform",
        "SELECT e.member_id FROM member_insurance_plans e JOIN members m ON m.id = e.member_id "
        "WHERE e.insurance_plan_id IN (SELECT insurance_plan_id FROM specialist_insurance_plans "
        "  WHERE specialist_id = :s AND deleted_at IS NULL) "
        "AND e.status = 'active' AND e.deleted_at IS NULL AND m.deleted_at IS NULL "
        "ORDER BY e.enrollment_date DESC, e.id LIMIT 100", s=specialist.id)
    assert expected, "the seed gives every specialist members in their plans"
    assert [item.member_id for item in desk.worklist().plan_members] == [row.member_id for row in expected]


async def test_screens_and_footers_left_behind_are_not_kept_alive(tui) -> None:
    """Textual keeps watchers of removed widgets (textual#6666); carecli prunes them."""
    import gc

    from textual.widgets import Header
    from textual.widgets._footer import FooterKey

    app = tui.app(tui.sign_in("specialist"))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
        member_id = tui.scalar("platform", "SELECT id FROM members ORDER BY id LIMIT 1")
        for _ in range(5):
            app.open_member(member_id)
            await wait_for(pilot, lambda: getattr(app.screen, "file", None) is not None)
            await pilot.press("tab", "tab", "escape")
            await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
        await pilot.pause()
        gc.collect()
        stray_headers = [o for o in gc.get_objects() if isinstance(o, Header) and not o.is_attached]
        stray_keys = [o for o in gc.get_objects() if isinstance(o, FooterKey) and not o.is_attached]
        # At most the last member screen's footer keys (about a dozen, twice over) linger; five visits leaking
        # would leave five times as many.
        assert len(stray_headers) <= 1 and len(stray_keys) <= 26, (len(stray_headers), len(stray_keys))


async def test_garbage_collection_passes_wait_for_a_pause_in_the_typing(tui, monkeypatch) -> None:
    """One collector pass per pause of GC_IDLE_SECONDS without a key; none while keys come, unless frozen
    garbage is overdue; the collector runs while signed in and stops with the app."""
    from carecli.screens import app as app_module
    from carecli.screens.collector import collector

    passes: list[bool] = []  # the app's state "paused" at each pass
    overdue = False

    def pause_pass() -> bool:
        passes.append(app_module.collecting_while_idle)
        return False

    monkeypatch.setattr(collector, "pause_pass", pause_pass)
    monkeypatch.setattr(collector, "overdue", lambda: overdue)
    monkeypatch.setattr(app_module, "GC_IDLE_SECONDS", 3600.0)  # only the test's calls below
    clock = FakeClock()
    app = CareApp(tui.settings, databases=tui.databases, desk=tui.sign_in("specialist"), store=tui.store,
                  clock=clock)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
        assert collector.running
        await pilot.press("down")
        clock.now += 1  # a key, then less than a pause: nothing
        monkeypatch.setattr(app_module, "GC_IDLE_SECONDS", 2.0)
        app.collect_when_idle()
        assert passes == []
        clock.now += 2  # a pause: one pass, and only one however long it lasts
        app.collect_when_idle()
        clock.now += 60
        app.collect_when_idle()
        assert passes == [True]
        await pilot.press("down")  # typing again: the next pause collects again
        clock.now += 3
        app.collect_when_idle()
        assert passes == [True, True]
        await pilot.press("down")
        overdue = True  # frozen garbage past its bound: a pass while typing, not counted as a pause
        app.collect_when_idle()
        assert passes == [True, True, False]
        assert app_module.collecting_while_idle is False
    assert not collector.running

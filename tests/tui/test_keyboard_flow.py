"""A day at the keyboard: focus after every navigation key, search to results and back, sign out, the users
screen's admin steps, help and the sign-in keys, Esc over a draft and whole-sentence messages in every form."""

from __future__ import annotations

from typing import Any

import pytest
from textual.widgets import DataTable, Input, Select

from carecli.screens.admin import AddUserForm, AuditScreen, RoleForm, UsersScreen
from carecli.screens.confirm import ConfirmDialog
from carecli.screens.emergency import EmergencyQueueScreen
from carecli.screens.forms import FormModal
from carecli.screens.help import HelpScreen
from carecli.screens.member import MemberDetailScreen
from carecli.screens.members import MemberBrowserScreen
from carecli.screens.plans import PlansScreen
from carecli.screens.signin import SignInScreen
from carecli.screens.worklist import WorklistScreen
from tests.tui.conftest import SIZE
from tests.tui.helpers import screen_text, wait_for


async def _worklist(pilot: Any) -> WorklistScreen:
    app = pilot.app
    return await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen) and app.screen.items
                          and app.screen, what="the worklist")


async def _settled(pilot: Any, screen_class: type) -> Any:
    app = pilot.app
    screen = await wait_for(pilot, lambda: isinstance(app.screen, screen_class) and app.screen,
                            what=screen_class.__name__)
    await pilot.pause(0.05)  # the focus is placed after the first refresh
    return screen


# -- users and roles: the admin's steps -----------------------------------------------------------


async def test_an_admin_adds_a_user_changes_the_role_deactivates_and_reactivates_from_f7(tui) -> None:
    desk = tui.sign_in("admin")
    app = tui.app(desk)
    async with app.run_test(size=SIZE) as pilot:
        await _worklist(pilot)
        await pilot.press("f7")
        screen = await _settled(pilot, UsersScreen)
        users = screen.query_one("#users-table", DataTable)
        await wait_for(pilot, lambda: users.row_count and screen.roles, what="users and roles")
        assert users.has_focus

        await pilot.press("a")
        form = await wait_for(pilot, lambda: isinstance(app.screen, AddUserForm) and app.screen)
        await pilot.press("ctrl+s")  # nothing typed: every problem at once, as sentences
        await pilot.pause()
        assert form.field_errors() == {
            "email": "The e-mail address is required.",
            "external_id": "The subject at the identity provider is required: the user signs in with it.",
            "role": "Choose the user's role.",
        }
        await pilot.press(*"new.nurse@example.org")
        await pilot.pause()
        assert "email" not in form.field_errors()  # fixed: its message is gone, the others stay
        assert set(form.field_errors()) == {"external_id", "role"}
        form.query_one("#field-external_id", Input).value = "oidc|new-nurse"
        form.query_one("#field-role", Select).value = "specialist"
        form.query_one("#field-first_name", Input).value = "Nell"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen and "new.nurse@example.org" in
                       [str(c) for c in (users.get_row_at(i)[0] for i in range(users.row_count))],
                       what="the new user listed")
        new_id = tui.scalar("identity", "SELECT id FROM users WHERE email = 'new.nurse@example.org'")
        assert users.has_focus  # back on the list after the form

        users.move_cursor(row=users.get_row_index(str(new_id)))
        await pilot.press("c")
        role_form = await wait_for(pilot, lambda: isinstance(app.screen, RoleForm) and app.screen)
        role_form.query_one("#field-role", Select).value = "supervisor"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen and str(users.get_row(str(new_id))[2]) == "supervisor",
                       what="the new role")

        await pilot.press("d")
        confirm = await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog) and app.screen)
        assert "new.nurse@example.org" in confirm.question
        await pilot.press("n")  # asked first: no changes nothing
        await wait_for(pilot, lambda: app.screen is screen)
        assert tui.scalar("identity", "SELECT is_active FROM users WHERE id = :u", u=new_id) is not False
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("y")
        await wait_for(pilot, lambda: str(users.get_row(str(new_id))[3]) == "no", what="deactivated")
        await pilot.press("d")  # an inactive user: reactivated straight away
        await wait_for(pilot, lambda: str(users.get_row(str(new_id))[3]) == "yes", what="reactivated")
    audit = tui.rows("platform", "SELECT action, new_values FROM audit_logs WHERE entity_type = 'user' "
                     "AND entity_id = :u AND user_id = :a ORDER BY created_at", u=new_id, a=desk.user_id)
    actions = [row.action for row in audit]
    assert actions[0] == "create" and "deactivate" in actions
    assert actions.count("update") >= 2  # the role, the reactivation


async def test_the_admin_keys_are_not_offered_without_users_admin(tui) -> None:
    app = tui.app(tui.sign_in("supervisor"))
    async with app.run_test(size=SIZE) as pilot:
        await _worklist(pilot)
        await pilot.press("f7")
        screen = await _settled(pilot, UsersScreen)
        await wait_for(pilot, lambda: screen.query_one("#users-refused").display, what="the refusal")
        for action in ("add_user", "change_role", "toggle_active"):
            assert screen.check_action(action, ()) is False
        await pilot.press("a")
        await pilot.pause()
        assert app.screen is screen


# -- focus after every navigation key -------------------------------------------------------------

#: what each F-key opens, and the widget where work starts there
WORK_WIDGETS: dict[str, tuple[type, str]] = {
    "f2": (WorklistScreen, "#table-today"),  # an admin has no worklist: the first tab, empty
    "f3": (MemberBrowserScreen, "#member-search"),
    "f4": (PlansScreen, "#plans-filter"),
    "f6": (AuditScreen, "#audit-table"),
    "f7": (UsersScreen, "#users-table"),
    "f8": (EmergencyQueueScreen, "#emergency-table"),
}


@pytest.mark.parametrize("keys", [
    ("f3", "f2"), ("f4", "f2"), ("f6", "f2"), ("f7", "f2"), ("f8", "f2"),
    ("f3", "f4", "f6", "f7", "f8", "f3", "f2"),
    ("f8", "f7", "f6", "f4", "f3", "f4", "f6", "f2"),
], ids="-".join)
async def test_every_navigation_key_lands_the_focus_where_work_starts(tui, keys: tuple[str, ...]) -> None:
    app = tui.app(tui.sign_in("admin"))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen), what="the worklist")
        for key in keys:
            await pilot.press(key)
            screen_class, selector = WORK_WIDGETS[key]
            screen = await _settled(pilot, screen_class)
            work = screen.query_one(selector)
            await wait_for(pilot, lambda: app.focused is work, what=f"{key}: the focus on {selector}")


async def test_down_and_enter_act_at_once_after_f3_then_f2(tui) -> None:
    import uuid
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import text

    desk = tui.sign_in("specialist")
    # Two calls today (UTC, the tests' zone) whatever the seed gave this specialist: room for the cursor to move.
    specialist = tui.scalar("platform", "SELECT id FROM specialists WHERE user_id = :u AND deleted_at IS NULL",
                            u=desk.user_id)
    member = tui.scalar("platform", "SELECT id FROM members WHERE deleted_at IS NULL ORDER BY id LIMIT 1")
    start = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    with tui.databases.platform.begin() as connection:
        for minutes in (1, 2):
            connection.execute(text(
                "INSERT INTO call_records (id, member_id, specialist_id, call_type, call_status, scheduled_at) "
                "VALUES (:id, :m, :s, 'outreach', 'scheduled', :at)"),
                {"id": uuid.uuid4(), "m": member, "s": specialist, "at": start + timedelta(minutes=minutes)})
    app = tui.app(desk)
    async with app.run_test(size=SIZE) as pilot:
        worklist = await _worklist(pilot)
        table = await wait_for(pilot, lambda: isinstance(app.focused, DataTable) and app.focused.row_count > 1
                               and app.focused, what="a worklist table with rows, focused")
        await pilot.press("f3")
        await _settled(pilot, MemberBrowserScreen)
        await pilot.press("f2")
        await wait_for(pilot, lambda: app.screen is worklist and app.focused is table, what="the table again")
        row = table.cursor_row
        await pilot.press("down")
        assert table.cursor_row == row + 1  # no Tab needed
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is not worklist, what="Enter opened the row")


async def test_the_worklist_table_has_the_keys_even_before_or_without_its_data(tui, monkeypatch) -> None:
    """Textual's own auto focus took the first focusable widget, the tab bar, where up/down/Enter do nothing
    until the data came (and never, when it did not): the table has the focus from the start."""
    from sqlalchemy.exc import OperationalError

    desk = tui.sign_in("specialist")

    def database_down(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("SELECT ...", {}, Exception("connection refused"))

    monkeypatch.setattr(desk, "worklist", database_down)
    app = tui.app(desk)
    async with app.run_test(size=SIZE) as pilot:
        worklist = await _settled(pilot, WorklistScreen)
        await wait_for(pilot, lambda: app._notifications, what="the failure reported")
        assert app.focused is worklist.query_one("#table-today", DataTable)


async def test_a_refused_screen_leaves_the_focus_on_something_that_works(tui) -> None:
    app = tui.app(tui.sign_in("supervisor"))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen), what="the worklist")
        await pilot.press("f7")
        screen = await _settled(pilot, UsersScreen)
        roles = screen.query_one("#roles-table", DataTable)
        await wait_for(pilot, lambda: app.focused is roles and roles.row_count > 1, what="the roles, focused")
        await pilot.press("down")
        assert roles.cursor_row == 1


async def test_the_focus_comes_back_to_work_after_a_form_and_after_an_unlock(tui) -> None:
    desk = tui.sign_in("specialist")
    app = tui.app(desk)
    async with app.run_test(size=SIZE) as pilot:
        await _worklist(pilot)
        await pilot.press("f3")
        browser = await _settled(pilot, MemberBrowserScreen)
        await wait_for(pilot, lambda: browser.rows, what="results")
        await pilot.press("down")
        results = browser.query_one("#member-results", DataTable)
        assert app.focused is results
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is browser and app.focused is results, what="back on the results")
        app.lock("Locked.")
        signin = await wait_for(pilot, lambda: isinstance(app.screen, SignInScreen) and app.screen)
        await signin.workers.wait_for_complete()
        app.signed_in(tui.sign_in("specialist"))
        await wait_for(pilot, lambda: app.screen is browser and browser.rows, what="unlocked")
        await pilot.pause(0.05)
        assert app.focused is results


# -- member search: down into the results, up back to the box ------------------------------------


async def test_down_from_the_search_box_goes_into_the_results_and_up_comes_back(tui) -> None:
    app = tui.app(tui.sign_in("specialist"))
    async with app.run_test(size=SIZE) as pilot:
        await _worklist(pilot)
        await pilot.press("f3")
        browser = await _settled(pilot, MemberBrowserScreen)
        box = browser.query_one("#member-search", Input)
        results = browser.query_one("#member-results", DataTable)
        assert app.focused is box
        await pilot.press(*"a")
        await wait_for(pilot, lambda: browser.query_state.text == "a" and browser.rows, what="results for 'a'")
        await pilot.press("down")
        assert app.focused is results and results.cursor_row == 0
        await pilot.press("down")
        assert results.cursor_row == 1
        await pilot.press("up", "up")
        assert app.focused is box and box.value == "a"
        await pilot.press("pagedown")
        assert app.focused is results
        await pilot.press("enter")
        member = await wait_for(pilot, lambda: isinstance(app.screen, MemberDetailScreen) and app.screen)
        assert member.member_id == browser.rows[0]

        # Tab goes box -> results -> the filters, on purpose.
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is browser)
        box.focus()
        await pilot.press("tab")
        assert app.focused is results
        await pilot.press("tab")
        assert app.focused is browser.query_one("#member-status")

        # Esc with a search typed asks for a second Esc before leaving.
        box.focus()
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is browser and "Esc again" in screen_text(browser)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))


# -- Esc over a draft, in every form ----------------------------------------------------------------


def _form_classes() -> list[type[FormModal]]:
    import carecli.screens.admin
    import carecli.screens.call_forms
    import carecli.screens.emergency
    import carecli.screens.flag_forms
    import carecli.screens.member_forms  # noqa: F401 - every module that defines forms

    found, todo = [], [FormModal]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.append(sub)
            todo.append(sub)
    return found


def test_no_form_has_its_own_esc() -> None:
    """Every form closes through FormModal's action_cancel: with typed changes, only at the second Esc."""
    forms = _form_classes()
    assert len(forms) >= 15
    for form in forms:
        assert form.action_cancel is FormModal.action_cancel, form
        escapes = [b for b in form.BINDINGS if not isinstance(b, tuple) and "escape" in b.key.split(",")]
        assert all(b.action == "cancel" for b in escapes), form


@pytest.mark.parametrize("key", ["c", "s", "e", "n", "u", "r"])
async def test_esc_on_a_member_form_with_a_draft_asks_first(tui, key: str) -> None:
    from tests.tui.test_member_screens import make_member, open_member

    known = make_member(tui)
    app = tui.app(tui.sign_in("supervisor"))
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await pilot.press(key)
        form = await wait_for(pilot, lambda: isinstance(app.screen, FormModal) and app.screen, what=key)
        await pilot.pause(0.05)
        await pilot.press("escape")  # nothing typed: closes at once
        await wait_for(pilot, lambda: app.screen is screen, what="closed without a draft")
        await pilot.press(key)
        form = await wait_for(pilot, lambda: isinstance(app.screen, FormModal) and app.screen, what=key)
        await pilot.pause(0.05)
        box = next(widget for widget in form.query("Input, TextArea") if widget.id and widget.id.startswith("field-"))
        box.focus()
        await pilot.press(*"xyz")
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is form and "press Esc again" in screen_text(form)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, what="dropped at the second Esc")
        assert app.focused is not None and app.focused.screen is screen


# -- sign out, help, sign-in keys --------------------------------------------------------------------


async def test_sign_out_ends_the_session_clears_the_screens_and_shows_the_sign_in(tui) -> None:
    desk = tui.sign_in("specialist")
    session_id = tui.scalar("identity", "SELECT id FROM sessions WHERE user_id = :u AND deleted_at IS NULL",
                            u=desk.user_id)
    app = tui.app(desk)
    async with app.run_test(size=SIZE) as pilot:
        worklist = await _worklist(pilot)
        await pilot.press("f3")
        browser = await _settled(pilot, MemberBrowserScreen)
        await wait_for(pilot, lambda: browser.rows, what="results")
        shown = screen_text(browser)
        await pilot.press("ctrl+o")
        confirm = await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog) and app.screen)
        assert "Sign out" in confirm.question
        await pilot.press("n")
        await wait_for(pilot, lambda: app.screen is browser)
        assert app.desk is desk
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("y")
        signin = await wait_for(pilot, lambda: isinstance(app.screen, SignInScreen) and app.screen, what="sign-in")
        assert app.desk is None and not app.locked
        assert browser.rows == [] and not worklist.items  # cleared before they went
        assert [s for s in app.screen_stack if isinstance(s, (WorklistScreen, MemberBrowserScreen))] == []
        assert "Signed out." in screen_text(signin)
        assert not any(name in screen_text(signin) for name in shown.splitlines()[:3] if name.strip())
        await pilot.press("f2")  # navigation needs someone signed in
        await pilot.pause()
        assert app.screen is signin
    assert tui.store.load(strict=False) is None  # forgotten on this machine
    assert tui.scalar("identity", "SELECT deleted_at IS NOT NULL FROM sessions WHERE id = :s", s=session_id)
    assert tui.scalar("platform", "SELECT count(*) FROM audit_logs WHERE entity_type = 'session' "
                      "AND action = 'revoke' AND entity_id = :s", s=session_id) == 1


async def test_help_lists_every_key_once_with_its_id_and_the_member_tabs(tui) -> None:
    from tests.tui.test_member_screens import make_member, open_member

    known = make_member(tui)
    app = tui.app(tui.sign_in("supervisor"))
    async with app.run_test(size=SIZE) as pilot:
        await open_member(pilot, known.id)
        await pilot.press("f1")
        help_screen = await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen) and app.screen)
        text = help_screen.text()
        rows = [line for line in text.splitlines() if line.startswith("| ")]
        assert "``" not in text
        assert len(rows) == len(set(rows))
        ids = [row.split("|")[3].strip() for row in help_screen.key_table().splitlines()[4:]]
        assert len(ids) == len(set(ids))
        for number, tab in (("1", "Calls"), ("2", "Flags"), ("3", "Enrollments"), ("4", "Notes")):
            assert f"| {number} | {tab} |" in text
        assert "F8" in text and "emergency accesses" in text
        assert "ctrl+o" in text and "sign out" in text


async def test_sign_in_offers_retry_only_after_a_failure(tui) -> None:
    from carecli.data.actor import Actor
    from carecli.data.repositories.identity import IdentityUnitOfWork
    from carecli.screens.signin import UsersListed

    def offered() -> bool:
        return "Retry" in [active.binding.description for active in app.active_bindings.values()]

    app = tui.app()  # no identity provider configured, and not the embedded demo database: sign-in fails
    async with app.run_test(size=SIZE) as pilot:
        signin = await wait_for(pilot, lambda: isinstance(app.screen, SignInScreen) and app.screen)
        assert isinstance(signin, SignInScreen)
        await wait_for(pilot, lambda: signin.failed and not signin.busy, what="the failure")
        assert signin.check_action("retry", ()) is True and offered()
        # A list of people to pick from (the demo picker): nothing to retry, so no "f5 Retry" in the footer.
        with IdentityUnitOfWork(tui.databases.identity, tui.databases.platform, Actor.system("tui")) as uow:
            user = uow.users.to_record(tui.user("specialist"))
        signin.start = lambda: None  # type: ignore[method-assign]  # keep this screen's state for the check
        signin.failed = False
        signin.post_message(UsersListed([user], {}))
        await wait_for(pilot, lambda: signin.query_one("#signin-users").display, what="the list")
        app.refresh_bindings()
        await pilot.pause()
        assert signin.check_action("retry", ()) is False and not offered()

"""A day at the keyboard: focus after every navigation key, search to results and back, sign out, the users
screen's admin steps, help and the sign-in keys, Esc over a draft and whole-sentence messages in every form."""

from __future__ import annotations

from typing import Any

import pytest
from textual.widgets import DataTable, Input, Select

from carecli.screens.admin import AddUserForm, AuditScreen, RoleForm, UsersScreen
from carecli.screens.app import CareApp
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
    screen = await wait_for(pilot, lambda: isinstance(app.screen, screen_class) and app.screen, what=screen_class)
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

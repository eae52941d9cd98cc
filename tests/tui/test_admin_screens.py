"""The plans catalog, users and roles, and the audit log viewer, driven by Pilot against real databases."""

from __future__ import annotations

import io
import json
import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Any

from rich.console import Console
from sqlalchemy import text
from textual.widgets import Checkbox, DataTable, Input, Select, Static, TabbedContent

from carecli.screens.admin import PAGE_SIZE, AuditEntryScreen, AuditScreen, UsersScreen, local_midnight_utc
from carecli.screens.plans import PlansScreen
from carecli.screens.worklist import WorklistScreen
from tests.tui.conftest import SIZE
from tests.tui.helpers import screen_text, wait_for

SMALL = (80, 24)


async def _open(pilot: Any, key: str, screen_class: type) -> Any:
    """From the worklist, press an F-key and wait for ``screen_class`` to be on top."""
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen), what="the worklist")
    await pilot.press(key)
    return await wait_for(pilot, lambda: isinstance(app.screen, screen_class) and app.screen, what=key)


def _keys(table: DataTable) -> list[str | None]:
    return [row_key.value for row_key in table.rows]


def _column(table: DataTable, index: int) -> list[str]:
    return [str(table.get_row(row_key)[index]) for row_key in table.rows]


def _text(static: Static, width: int = 100) -> str:
    """What a Static shows, as plain text (its content may be a Rich renderable)."""
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(static.content)
    return " ".join(console.export_text().split())  # one space between words: layouts pad with more


def _inside(widget: Any, size: tuple[int, int]) -> bool:
    region = widget.region
    return region.width > 0 and region.height > 0 and region.right <= size[0] and region.bottom <= size[1]


# -- plans -------------------------------------------------------------------------------------


async def test_plans_catalog_filters_and_shows_coverage(tui) -> None:
    app = tui.app(tui.sign_in("specialist"))
    active = [r.plan_code for r in tui.rows("platform", "SELECT plan_code FROM insurance_plans WHERE deleted_at IS "
                                            "NULL AND is_active IS NOT FALSE ORDER BY plan_code")]
    every = [r.plan_code for r in tui.rows("platform", "SELECT plan_code FROM insurance_plans WHERE deleted_at IS "
                                           "NULL ORDER BY plan_code")]
    assert len(every) > len(active) > 0
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open(pilot, "f4", PlansScreen)
        table = screen.query_one("#plans-table", DataTable)
        await wait_for(pilot, lambda: table.row_count, what="the plans")
        assert _column(table, 0) == active  # inactive plans are hidden at first

        # The highlighted plan's coverage details, as labelled values (not JSON).
        first = tui.rows("platform", "SELECT plan_name, coverage_details FROM insurance_plans WHERE plan_code = :c",
                         c=active[0])[0]
        coverage = _text(screen.query_one("#plan-coverage", Static))
        assert first.plan_name in coverage
        assert f"Out of pocket max: ${first.coverage_details['out_of_pocket_max']:,}" in coverage
        assert first.coverage_details["network"] in coverage
        assert "{" not in coverage and "out_of_pocket_max" not in coverage
        # The filter box has the focus on arrival; down goes on to the list, whose cursor moves at once.
        box = screen.query_one("#plans-filter", Input)
        assert box.has_focus
        await pilot.press("down")
        assert table.has_focus and table.cursor_row == 0
        await pilot.press("down")
        await pilot.pause()
        assert table.cursor_row == 1
        second = tui.scalar("platform", "SELECT plan_name FROM insurance_plans WHERE plan_code = :c", c=active[1])
        assert second in _text(screen.query_one("#plan-coverage", Static))

        await pilot.press("ctrl+t")  # show inactive
        await wait_for(pilot, lambda: table.row_count == len(every))
        assert _column(table, 0) == every
        assert screen.query_one("#plans-inactive", Checkbox).value

        # Letters typed on the list go to the filter box ("i" is a letter, not a key of the screen).
        assert table.has_focus
        await pilot.press(*"gold")
        assert box.has_focus and box.value == "gold"
        expected = [r.plan_code for r in tui.rows(
            "platform", "SELECT plan_code FROM insurance_plans WHERE deleted_at IS NULL AND "
            "(plan_code ILIKE '%gold%' OR plan_name ILIKE '%gold%') ORDER BY plan_code")]
        await wait_for(pilot, lambda: _column(table, 0) == expected, what="the filtered plans")
        assert 0 < len(expected) < len(every)
        assert "GOLD" in _text(screen.query_one("#plan-coverage", Static))

        await pilot.press("escape")  # empties the filter, back to the list
        await wait_for(pilot, lambda: table.row_count == len(every))
        assert table.has_focus
        await pilot.press("escape")  # back to the worklist
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))


async def test_plans_fit_80x24(tui) -> None:
    app = tui.app(tui.sign_in("specialist"))
    async with app.run_test(size=SMALL) as pilot:
        screen = await _open(pilot, "f4", PlansScreen)
        table = screen.query_one("#plans-table", DataTable)
        await wait_for(pilot, lambda: table.row_count)
        assert table.region.height >= 5
        for selector in ("#plans-filter", "#plans-inactive", "#plan-detail", "#plans-status"):
            assert _inside(screen.query_one(selector), SMALL), selector
        # Every coverage line fits the pane (nothing hidden off to the right).
        detail = screen.query_one("#plan-detail")
        assert screen.query_one("#plan-coverage").virtual_size.width <= detail.content_region.width


# -- users and roles --------------------------------------------------------------------------


async def test_users_and_roles_for_an_admin(tui) -> None:
    app = tui.app(tui.sign_in("admin"))
    emails = [r.email for r in tui.rows("identity", "SELECT email FROM users WHERE deleted_at IS NULL ORDER BY email")]
    roles = tui.rows("identity", "SELECT name, permissions FROM roles WHERE deleted_at IS NULL ORDER BY name")
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open(pilot, "f7", UsersScreen)
        users = screen.query_one("#users-table", DataTable)
        await wait_for(pilot, lambda: users.row_count, what="the users")
        assert _column(users, 0) == emails
        assert not screen.query_one("#users-refused").display
        admin_row = users.get_row(str(app.desk.user_id))
        assert str(admin_row[2]) == "admin" and str(admin_row[3]) == "yes"

        await pilot.press("r")
        assert screen.query_one(TabbedContent).active == "roles-tab"
        table = screen.query_one("#roles-table", DataTable)
        await wait_for(pilot, lambda: table.row_count == len(roles))
        assert sorted(_column(table, 0)) == sorted(r.name for r in roles)
        # The highlighted role's permissions, every one of them.
        highlighted = next(r for r in roles if r.name == _column(table, 0)[table.cursor_row])
        detail = _text(screen.query_one("#role-text", Static))
        assert all(permission in detail for permission in highlighted.permissions)


async def test_users_are_refused_to_a_specialist_in_the_screen_and_audited(tui) -> None:
    desk = tui.sign_in("specialist")
    app = tui.app(desk)
    role_names = sorted(r.name for r in tui.rows("identity", "SELECT name FROM roles WHERE deleted_at IS NULL"))
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open(pilot, "f7", UsersScreen)
        refused = screen.query_one("#users-refused", Static)
        await wait_for(pilot, lambda: refused.display, what="the refusal")
        message = _text(refused)
        assert "You cannot see the user list" in message and "users:admin" in message
        assert not screen.query_one("#users-table", DataTable).display
        # Roles are readable by everyone signed in.
        await pilot.press("r")
        roles = screen.query_one("#roles-table", DataTable)
        await wait_for(pilot, lambda: roles.row_count)
        assert sorted(_column(roles, 0)) == role_names
    assert tui.scalar("platform", "SELECT count(*) FROM audit_logs WHERE action = 'deny' AND entity_type = 'user' "
                      "AND user_id = :u AND new_values->>'permission' = 'users:admin'", u=desk.user_id) == 1


async def test_users_and_roles_fit_80x24(tui) -> None:
    app = tui.app(tui.sign_in("admin"))
    async with app.run_test(size=SMALL) as pilot:
        screen = await _open(pilot, "f7", UsersScreen)
        users = screen.query_one("#users-table", DataTable)
        await wait_for(pilot, lambda: users.row_count)
        assert users.region.height >= 5 and _inside(users, SMALL)
        await pilot.press("r")
        roles = screen.query_one("#roles-table", DataTable)
        await wait_for(pilot, lambda: roles.row_count)
        await pilot.pause()
        assert _inside(roles, SMALL) and _inside(screen.query_one("#role-detail"), SMALL)
        assert screen.query_one("#role-detail").region.height >= 4


# -- the audit log ------------------------------------------------------------------------------

#: a record id used by a few synthetic rows, to filter by
TARGET = uuid.UUID("6f1d2b3c-0000-4000-8000-00000000a0d1")


def _seed_audit(tui, user_ids: list[uuid.UUID], count: int = 260) -> None:
    """Synthetic audit rows over the last 20 days: several types, actions and users; some share a timestamp."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    entity_types = ("member", "call_record", "insurance_plan", "user")
    actions = ("read", "update", "create", "deny", "delete")
    rows = []
    for index in range(count):
        # Every 7 consecutive rows share one created_at: paging must break ties by id.
        created = now - timedelta(hours=2 + (index // 7) * 13)
        old = {"status": "active"} if actions[index % 5] == "update" else None
        new = {"status": "inactive", "first_name": "[redacted]"} if actions[index % 5] != "read" else \
            {"purpose": "open", "fields": ["contact"]}
        rows.append({
            "id": uuid.uuid4(), "user_id": user_ids[index % len(user_ids)],
            "entity_type": entity_types[index % 4], "entity_id": TARGET if index % 50 == 3 else uuid.uuid4(),
            "action": actions[index % 5], "old_values": json.dumps(old) if old else None,
            "new_values": json.dumps(new), "ip_address": f"10.0.{index % 3}.{index % 250 + 1}",
            "user_agent": "carecli-test", "created_at": created,
        })
    with tui.databases.platform.begin() as connection:
        connection.execute(text(
            "INSERT INTO audit_logs (id, user_id, entity_type, entity_id, action, old_values, new_values, "
            "ip_address, user_agent, created_at) VALUES (:id, :user_id, :entity_type, :entity_id, :action, "
            "CAST(:old_values AS jsonb), CAST(:new_values AS jsonb), CAST(:ip_address AS inet), :user_agent, "
            ":created_at)"), rows)


def _ids(tui, where: str = "TRUE", limit: int = 10_000, **params: Any) -> list[str]:
    return [str(r.id) for r in tui.rows("platform", f"SELECT id FROM audit_logs WHERE {where} "
                                        "ORDER BY created_at DESC, id DESC LIMIT :limit", limit=limit, **params)]


async def _apply(pilot: Any, screen: AuditScreen, action: Any) -> None:
    """Change a filter and wait for the query it starts to land."""
    generation = screen.generation
    action()
    await pilot.pause()
    await wait_for(pilot, lambda: screen.generation > generation and not screen.loading, what="the filtered rows")


async def _type_into(pilot: Any, screen: AuditScreen, selector: str, value: str) -> None:
    field = screen.query_one(selector, Input)
    field.value = value
    field.focus()
    generation = screen.generation
    await pilot.press("enter")
    await wait_for(pilot, lambda: screen.generation > generation and not screen.loading, what=selector)


async def test_audit_log_pages_newest_first_without_repeats(tui) -> None:
    desk = tui.sign_in("auditor")
    admin = tui.user("admin")
    _seed_audit(tui, [desk.user_id, admin.id])
    app = tui.app(desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open(pilot, "f6", AuditScreen)
        table = screen.query_one("#audit-table", DataTable)
        await wait_for(pilot, lambda: table.row_count, what="the audit rows")
        everything = _ids(tui)
        assert len(everything) > 2 * PAGE_SIZE
        assert _keys(table) == everything[:PAGE_SIZE]  # newest first, one page
        shown = [e.entry.created_at for e in screen.entries]
        assert shown == sorted(shown, reverse=True)

        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: table.row_count == 2 * PAGE_SIZE, what="the second page")
        assert _keys(table) == everything[:2 * PAGE_SIZE]
        assert len(set(_keys(table))) == 2 * PAGE_SIZE

        # Moving past the last row loads the rest, the same way.
        await pilot.press("ctrl+end")
        await wait_for(pilot, lambda: table.row_count == len(everything), what="the last page")
        assert _keys(table) == everything
        assert not screen.has_more
        assert "that is all" in _text(screen.query_one("#audit-status", Static))

        # The lock (ctrl+l) clears the table before covering it; unlocking reads the first page again.
        shown_ids = set(_column(table, 4))
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: app.locked, what="the lock")
        assert table.row_count == 0 and screen.entries == []
        assert not any(short in screen_text(screen) for short in shown_ids)
        screen.restore_after_unlock()  # what the app does after the same user signs back in
        await wait_for(pilot, lambda: table.row_count == PAGE_SIZE, what="the reload")
        assert _keys(table) == _ids(tui, limit=PAGE_SIZE)


async def test_each_audit_filter_narrows_like_sql(tui) -> None:
    desk = tui.sign_in("auditor")
    admin = tui.user("admin")
    _seed_audit(tui, [desk.user_id, admin.id])
    app = tui.app(desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open(pilot, "f6", AuditScreen)
        table = screen.query_one("#audit-table", DataTable)
        await wait_for(pilot, lambda: table.row_count)
        entity = screen.query_one("#audit-entity", Select)
        action = screen.query_one("#audit-action", Select)

        await _apply(pilot, screen, lambda: setattr(entity, "value", "insurance_plan"))
        expected = _ids(tui, "entity_type = 'insurance_plan'", limit=PAGE_SIZE)
        assert _keys(table) == expected and 0 < len(expected)
        assert set(_column(table, 3)) == {"insurance plan"}  # entity types read as words

        await _apply(pilot, screen, lambda: setattr(action, "value", "update"))
        expected = _ids(tui, "entity_type = 'insurance_plan' AND action = 'update'")
        assert _keys(table) == expected and 0 < len(expected) < PAGE_SIZE

        await _apply(pilot, screen, lambda: entity.clear())
        expected = _ids(tui, "action = 'update'", limit=PAGE_SIZE)
        assert _keys(table) == expected

        # The user, by e-mail (any case), with the action still applied.
        await _type_into(pilot, screen, "#audit-user", admin.email.upper())
        expected = _ids(tui, "action = 'update' AND user_id = :u", u=admin.id)
        assert _keys(table) == expected and 0 < len(expected)
        assert set(_column(table, 1)) == {" ".join(p for p in (admin.first_name, admin.last_name) if p)
                                          or admin.email}

        await _type_into(pilot, screen, "#audit-user", "nobody@example.invalid")
        assert table.row_count == 0
        assert "no user has that e-mail address" in _text(screen.query_one("#audit-status", Static))

        await pilot.press("escape", "x")  # from the field back to the rows; clear every filter
        assert screen.query_one("#audit-user", Input).value == ""
        await wait_for(pilot, lambda: not screen.loading and table.row_count == PAGE_SIZE)
        assert _keys(table) == _ids(tui, limit=PAGE_SIZE)

        day = date.today() - timedelta(days=3)
        await _type_into(pilot, screen, "#audit-since", day.isoformat())
        expected = _ids(tui, "created_at >= :since", since=local_midnight_utc(day))
        assert _keys(table) == expected[:PAGE_SIZE] and 0 < len(expected)
        await _type_into(pilot, screen, "#audit-since", "")

        await _type_into(pilot, screen, "#audit-entity-id", str(TARGET))
        expected = _ids(tui, "entity_id = :e", e=TARGET)
        assert _keys(table) == expected and len(expected) == 6
        assert set(_column(table, 4)) == {str(TARGET)[:8]}

        # A malformed filter is explained, not sent.
        generation = screen.generation
        field = screen.query_one("#audit-since", Input)
        field.value = "last week"
        field.focus()
        await pilot.press("enter")
        await pilot.pause()
        assert screen.generation == generation
        assert "YYYY-MM-DD" in _text(screen.query_one("#audit-status", Static))


async def test_audit_row_details_show_old_and_new_values(tui) -> None:
    desk = tui.sign_in("auditor")
    _seed_audit(tui, [desk.user_id], count=20)
    app = tui.app(desk)
    async with app.run_test(size=SMALL) as pilot:
        screen = await _open(pilot, "f6", AuditScreen)
        table = screen.query_one("#audit-table", DataTable)
        await wait_for(pilot, lambda: table.row_count)
        assert table.region.height >= 8 and _inside(table, SMALL)
        for selector in ("#audit-entity", "#audit-action", "#audit-since", "#audit-user", "#audit-entity-id",
                         "#audit-status"):
            assert _inside(screen.query_one(selector), SMALL), selector
        await _apply(pilot, screen, lambda: setattr(screen.query_one("#audit-action", Select), "value", "update"))
        row = screen.entries[0].entry
        assert "status: active→inactive" in str(table.get_row_at(0)[5])
        assert "[redacted]" in str(table.get_row_at(0)[5])  # shown as stored, not eaten as markup
        table.focus()
        await pilot.press("enter")
        modal = await wait_for(pilot, lambda: isinstance(app.screen, AuditEntryScreen) and app.screen)
        body = _text(modal.query_one("#audit-entry-text", Static))
        for value in (str(row.entity_id), str(row.id), "Before", "After", "status", "active", "inactive",
                      "first_name", "[redacted]", row.ip_address):
            assert value in body, value
        assert _inside(modal.query_one("#audit-entry"), SMALL)
        modal.clear_phi()
        assert _text(modal.query_one("#audit-entry-text", Static)) == ""
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen)


async def test_audit_log_is_refused_to_a_specialist_in_the_screen(tui) -> None:
    desk = tui.sign_in("specialist")
    app = tui.app(desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _open(pilot, "f6", AuditScreen)
        refused = screen.query_one("#audit-refused", Static)
        await wait_for(pilot, lambda: refused.display, what="the refusal")
        message = _text(refused)
        assert "You cannot see the audit log" in message and "audit:read" in message
        assert not screen.query_one("#audit-table", DataTable).display
        assert not screen.query_one("#audit-filters").display
        assert "[redacted]" not in screen_text(screen)
    assert tui.scalar("platform", "SELECT count(*) FROM audit_logs WHERE action = 'deny' AND "
                      "entity_type = 'audit_log' AND user_id = :u", u=desk.user_id) == 1


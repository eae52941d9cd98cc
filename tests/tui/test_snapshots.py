"""Snapshot tests of the main screens at a fixed size (100x30) and theme (textual-dark).

The seeded data moves with the calendar, so these screens show records made
here with fixed values: a specialist "Sam Snapshot", members named Zyxwell,
plans coded SNAP-*, a call on 2026-03-02. Update after a deliberate change
with ``pytest tests/tui/test_snapshots.py --snapshot-update`` and review the
SVGs in ``tests/tui/__snapshots__``.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from textual.widgets import Input

from carecli.data.actor import Actor
from carecli.data.crypto.phi import DateOfBirth, Ssn
from carecli.data.crypto.runtime import cipher_provider
from carecli.data.permissions import ALL_PERMISSIONS
from carecli.data.unit_of_work import PlatformUnitOfWork
from carecli.services.users import add_user
from tests.platform_fixtures import backdate_member
from tests.tui.conftest import SIZE
from tests.tui.helpers import wait_for

SAM = "sam.snapshot@example.org"
MEMBERS = (
    ("Ada", "Zyxwell", "ada.zyxwell@example.org", "503-555-0101", "Portland", "OR", "active", "123-45-6789"),
    ("Ben", "Zyxwell", "ben.zyxwell@example.org", "503-555-0102", "Salem", "OR", "suspended", "234-56-7890"),
    ("Cy", "Zyxwell", None, "503-555-0103", "Eugene", "OR", "inactive", "345-67-8901"),
)


@pytest.fixture
def fixed(tui) -> dict[str, Any]:
    """Records with fixed values, and a signed-in specialist who works plan SNAP-GOLD."""
    admin_row = tui.user("admin")
    admin = Actor.create(admin_row.id, ALL_PERMISSIONS, channel="cli", role="admin")
    sam = add_user(tui.databases, admin, email=SAM, external_id="snapshot|sam", role="specialist",
                   first_name="Sam", last_name="Snapshot").user
    cipher = cipher_provider(tui.settings, tui.databases)
    with PlatformUnitOfWork(tui.databases.platform, admin, cipher=cipher, user_exists=lambda _id: True) as uow:
        specialist = uow.specialists.create({"user_id": sam.id, "license_number": "LIC-SNAP-1", "phone": "555-0142"})
        gold = uow.plans.create({
            "plan_code": "SNAP-GOLD", "plan_name": "Snapshot Gold PPO", "plan_type": "PPO",
            "premium_amount": Decimal("512.40"), "deductible_amount": Decimal("1500.00"),
            "copay_amount": Decimal("25.00"), "is_active": True, "effective_date": date(2026, 1, 1),
            "expiration_date": date(2026, 12, 31),
            "coverage_details": {"network": "national", "out_of_pocket_max": 6500, "telehealth": True}})
        uow.plans.create({
            "plan_code": "SNAP-BRONZE", "plan_name": "Snapshot Bronze HMO", "plan_type": "HMO",
            "premium_amount": Decimal("230.00"), "deductible_amount": Decimal("6000.00"),
            "copay_amount": Decimal("60.00"), "is_active": True, "effective_date": date(2026, 1, 1),
            "expiration_date": date(2026, 12, 31), "coverage_details": {"network": "regional"}})
        uow.specialist_plans.link(specialist.id, gold.id)
        members = []
        for first, last, email, phone, city, state, status, ssn in MEMBERS:
            members.append(uow.members.create(
                {"first_name": first, "last_name": last, "email": email, "phone": phone,
                 "address_line1": "1 Snapshot Way", "city": city, "state": state, "zip_code": "97201",
                 "status": status}, ssn=Ssn(ssn), dob=DateOfBirth(date(1960, 5, 17))))
            backdate_member(uow.connection, members[-1].id)
        uow.enrollments.enroll(members[0].id, gold.id, date(2026, 1, 1), is_primary=True,
                               coverage_percentage=Decimal("80.00"))
        uow.commit()
    # The records are older than the call below (a call cannot predate its member's record).
    with tui.databases.platform.begin() as connection:
        connection.execute(text("UPDATE members SET created_at = :at WHERE id = ANY(:ids)"),
                           {"at": datetime(2020, 1, 1), "ids": [member.id for member in members]})
    with PlatformUnitOfWork(tui.databases.platform, admin, cipher=cipher, user_exists=lambda _id: True) as uow:
        uow.calls.create({"member_id": members[0].id, "specialist_id": specialist.id, "call_type": "outreach",
                          "call_status": "completed", "scheduled_at": datetime(2026, 3, 2, 14, 0),
                          "started_at": datetime(2026, 3, 2, 14, 0), "ended_at": datetime(2026, 3, 2, 14, 12),
                          "call_notes": "Talked about the annual check-up.", "outcome": "booked visit"})
        uow.commit()
    desk = tui.sign_in("specialist", email=SAM)
    return {"desk": desk, "member": members[0], "members": members, "gold": gold}


def _shot(snap_compare, app, run_before) -> bool:
    return snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_worklist(tui, fixed, snap_compare) -> None:
    app = tui.app(fixed["desk"])

    async def run_before(pilot) -> None:
        from carecli.screens.worklist import WorklistScreen

        screen = await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen) and app.screen)
        await wait_for(pilot, lambda: screen.items.get("plans"))
        screen.query_one("#worklist-tabs").active = "tab-plans"
        await pilot.pause()

    assert _shot(snap_compare, app, run_before)


async def _browse_zyxw(pilot, app):  # noqa: ANN001, ANN202
    """F3 from the worklist, then the search "zyxw" until its three members and their count are shown."""
    from carecli.screens.members import MemberBrowserScreen
    from carecli.screens.worklist import WorklistScreen

    await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
    await pilot.press("f3")
    screen = await wait_for(pilot, lambda: isinstance(app.screen, MemberBrowserScreen) and app.screen)
    # The search box's cursor blinks on a timer: on a loaded machine the picture was taken in either phase.
    screen.query_one("#member-search", Input).cursor_blink = False
    await pilot.press(*"zyxw")
    # Settled: a slow pilot may let "zyx" be searched first; its three rows must not pass for "zyxw"'s.
    await wait_for(pilot, lambda: screen.query_state.text == "zyxw" and screen.settled and len(screen.rows) == 3)
    return screen


def test_member_browser(tui, fixed, snap_compare) -> None:
    app = tui.app(fixed["desk"])

    async def run_before(pilot) -> None:
        await _browse_zyxw(pilot, app)

    assert _shot(snap_compare, app, run_before)


def test_member_detail_masked(tui, fixed, snap_compare) -> None:
    app = tui.app(fixed["desk"])

    async def run_before(pilot) -> None:
        from carecli.screens.worklist import WorklistScreen

        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
        app.open_member(fixed["member"].id)
        await wait_for(pilot, lambda: getattr(app.screen, "file", None) is not None, what="the member file")
        await pilot.pause()

    assert _shot(snap_compare, app, run_before)


def test_call_form(tui, fixed, snap_compare) -> None:
    app = tui.app(fixed["desk"])

    async def run_before(pilot) -> None:
        from carecli.screens.forms import CallFormScreen
        from carecli.screens.worklist import WorklistScreen

        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
        app.open_member(fixed["member"].id)
        await wait_for(pilot, lambda: getattr(app.screen, "file", None) is not None)
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, CallFormScreen))
        await pilot.pause()

    assert _shot(snap_compare, app, run_before)


def test_plans_catalog(tui, fixed, snap_compare) -> None:
    app = tui.app(fixed["desk"])

    async def run_before(pilot) -> None:
        from textual.widgets import DataTable, Input

        from carecli.screens.plans import PlansScreen
        from carecli.screens.worklist import WorklistScreen

        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
        await pilot.press("f4")
        screen = await wait_for(pilot, lambda: isinstance(app.screen, PlansScreen) and app.screen)
        await wait_for(pilot, lambda: screen.plans, what="the catalog")
        screen.query_one(Input).value = "SNAP"
        table = screen.query_one("#plans-table", DataTable)
        await wait_for(pilot, lambda: 0 < table.row_count == len(screen.visible_plans()) < len(screen.plans),
                       what="the catalog filtered")
        await pilot.pause()

    assert _shot(snap_compare, app, run_before)


def test_too_small_terminal(tui, fixed, snap_compare) -> None:
    app = tui.app(fixed["desk"])
    assert snap_compare(app, terminal_size=(60, 16))


def test_member_browser_plan_list_open_at_80x24(tui, fixed, snap_compare) -> None:
    """The compact filters at 80 columns: the search box keeps its width, the plan list fits the plan codes."""
    app = tui.app(fixed["desk"])

    async def run_before(pilot) -> None:
        screen = await _browse_zyxw(pilot, app)
        plan = screen.query_one("#member-plan")
        await wait_for(pilot, lambda: len(plan._options) > 1, what="the plans in the list")
        plan.focus()
        await pilot.press("enter")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


def test_worklist_header_cut_at_80x24(tui, fixed, snap_compare) -> None:
    """A specialist of many plans: the header line ends with an ellipsis where it is cut."""
    admin_row = tui.user("admin")
    admin = Actor.create(admin_row.id, ALL_PERMISSIONS, channel="cli", role="admin")
    cipher = cipher_provider(tui.settings, tui.databases)
    with PlatformUnitOfWork(tui.databases.platform, admin, cipher=cipher, user_exists=lambda _id: True) as uow:
        specialist_id = uow.connection.execute(
            text("SELECT id FROM specialists WHERE license_number = 'LIC-SNAP-1'")).scalar_one()
        for tier in ("PLATINUM", "SILVER", "COPPER", "IRON", "TIN"):
            plan = uow.plans.create({
                "plan_code": f"SNAP-{tier}", "plan_name": f"Snapshot {tier.title()}", "plan_type": "PPO",
                "premium_amount": Decimal("100.00"), "deductible_amount": Decimal("1000.00"),
                "copay_amount": Decimal("20.00"), "is_active": True, "effective_date": date(2026, 1, 1),
                "expiration_date": date(2026, 12, 31), "coverage_details": {}})
            uow.specialist_plans.link(specialist_id, plan.id)
        uow.commit()
    app = tui.app(fixed["desk"])

    async def run_before(pilot) -> None:
        from carecli.screens.worklist import WorklistScreen

        screen = await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen) and app.screen)
        await wait_for(pilot, lambda: screen.items.get("plans"))
        screen.query_one("#worklist-tabs").active = "tab-today"
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)

"""The member detail screen and its forms, driven with Pilot against real databases.

Each test gets its own copy of the seeded databases (see ``conftest.py``);
a member with known contact details, SSN and date of birth is created
through the repositories, so the tests can look for those exact values in
the widgets (and make sure they are not there when they must not be).
"""

from __future__ import annotations

import dataclasses
import re
import threading
import uuid
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy.exc import OperationalError
from textual.screen import Screen
from textual.widgets import Button, Checkbox, DataTable, Input, Select, Static, TabbedContent, TextArea

from carecli.data.crypto.phi import DateOfBirth, Ssn
from carecli.data.crypto.runtime import cipher_provider
from carecli.data.unit_of_work import PlatformUnitOfWork
from carecli.screens import app as app_module
from carecli.screens.app import CareApp
from carecli.screens.confirm import ConfirmDialog
from carecli.screens.forms import (
    CallFormScreen,
    EnrollFormScreen,
    FlagFormScreen,
    FormSaved,
    NoteDialog,
    RevealDialog,
    TerminateDialog,
)
from carecli.screens.member import MASKED_DOB, MASKED_SSN, MemberDetailScreen
from carecli.screens.worklist import WorklistScreen
from carecli.services.desk import Desk
from tests.platform_fixtures import backdate_member
from tests.tui.conftest import SIZE
from tests.tui.helpers import screen_text, wait_for

SSN = "287654321"
SSN_SHOWN = "287-65-4321"
DOB = date(1961, 7, 23)
LAST_NAME = "Zybrowski"
EMAIL = "q.zybrowski@example.org"
PHONE = "+15550142771"
PHONE_SHOWN = "(555) 014-2771"


@dataclasses.dataclass
class KnownMember:
    id: uuid.UUID
    label: str


def make_member(tui: Any) -> KnownMember:
    """A member whose every value the test knows (created through the repository, SSN/DOB encrypted)."""
    admin = tui.sign_in("admin")
    with PlatformUnitOfWork(tui.databases.platform, admin.actor,
                            cipher=cipher_provider(tui.settings, tui.databases)) as uow:
        member = uow.members.create(
            {"first_name": "Quentin", "last_name": LAST_NAME, "email": EMAIL, "phone": PHONE,
             "address_line1": "12 Alder St", "city": "Portland", "state": "OR", "zip_code": "97201",
             "status": "active"},
            ssn=Ssn(SSN), dob=DateOfBirth(DOB))
        backdate_member(uow.connection, member.id)  # older than the calls the tests log for it
        uow.commit()
    return KnownMember(member.id, f"{LAST_NAME}, Quentin")


def app_for(tui: Any, desk: Desk, **settings: Any) -> CareApp:
    app = tui.app(desk)
    if settings:
        app.settings = dataclasses.replace(app.settings, **settings)
    return app


async def open_member(pilot: Any, member_id: uuid.UUID) -> MemberDetailScreen:
    """From the worklist, open the member and wait until the file is on screen."""
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen), what="the worklist")
    app.open_member(member_id)
    return await wait_for(pilot, lambda: isinstance(app.screen, MemberDetailScreen) and app.screen.file is not None
                          and app.screen, what="the member's file")


def header(screen: MemberDetailScreen) -> str:
    return "\n".join(str(widget.render()) for widget in screen.query("#member-header Static").results(Static))


def table_rows(screen: Any, table_id: str) -> list[list[str]]:
    table = screen.query_one(f"#{table_id}", DataTable)
    return [[str(cell) for cell in table.get_row(key)] for key in table.rows]


def reads(tui: Any, member_id: uuid.UUID, purpose: str) -> list[Any]:
    return tui.rows("platform", "SELECT user_id, new_values FROM audit_logs WHERE entity_type = 'member' "
                    "AND entity_id = :m AND action = 'read' AND new_values->>'purpose' = :p ORDER BY created_at",
                    m=member_id, p=purpose)


def set_input(form: Any, name: str, value: str) -> None:
    form.query_one(f"#field-{name}", Input).value = value


def input_values(form: Any) -> dict[str, str]:
    return {(widget.id or "").removeprefix("field-"): widget.value for widget in form.query(Input).results(Input)}


# -- opening and PHI -------------------------------------------------------------------------------------


async def test_opening_a_member_is_an_audited_read_and_ssn_and_dob_stay_masked(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    call = desk.log_call({"member_id": known.id, "call_type": "support", "call_status": "completed",
                          "started_at": datetime(2025, 3, 1, 14, 0), "ended_at": datetime(2025, 3, 1, 14, 12),
                          "outcome": "reached"})
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        opened = reads(tui, known.id, "open")
        assert [row.user_id for row in opened] == [desk.user_id]
        text = header(screen)
        assert known.label in text and EMAIL in text and PHONE_SHOWN in text and "Portland, OR 97201" in text
        assert f"SSN {MASKED_SSN}" in text and f"DOB {MASKED_DOB}" in text
        everything = screen_text(screen)
        assert SSN not in everything and SSN_SHOWN not in everything and DOB.isoformat() not in everything
        assert SSN[-4:] not in everything  # not even the last four: they need a decryption
        assert table_rows(screen, "calls-table") == [["2025-03-01 14:00", "support", "completed", "12 min",
                                                      "reached", ""]]
        assert str(screen.query_one("#member-tabs", TabbedContent).get_tab("calls").label) == "Calls (1)"
        # A specialist does not read the audit log: no access tab.
        assert not screen.query("#access") and not screen.query("#access-table")
    assert call.member_id == known.id


async def test_reveal_needs_a_reason_shows_the_values_audits_why_and_hides_them_after_the_countdown(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    app = app_for(tui, desk, reveal_seconds=3)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await pilot.press("r")
        dialog = await wait_for(pilot, lambda: isinstance(app.screen, RevealDialog) and app.screen)
        await pilot.press("o", "k")
        await pilot.press("enter")
        await pilot.pause()
        # Refused on the form without a round trip: no reveal was audited.
        assert dialog.field_errors() == {"reason": "Say why (at least 4 characters)."}
        assert app.screen is dialog and reads(tui, known.id, "reveal") == []
        set_input(dialog, "reason", "verifying identity on a call")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen and screen.revealed is not None, what="the reveal")
        text = header(screen)
        # counting down from 3 s (a busy machine may already have ticked once)
        assert f"SSN {SSN_SHOWN}" in text and f"DOB {DOB.isoformat()}" in text
        assert re.search(r"hidden again in [123] s", text), text
        [audit] = reads(tui, known.id, "reveal")
        assert audit.user_id == desk.user_id
        assert audit.new_values["fields"] == ["dob", "ssn"]
        assert audit.new_values["reason"] == "verifying identity on a call"
        assert SSN not in str(audit.new_values) and DOB.isoformat() not in str(audit.new_values)
        # The countdown is a real interval timer; drive its callback instead of waiting for the clock.
        assert screen._reveal_timer is not None
        screen.tick_reveal()
        assert "hidden again in 2 s" in header(screen)
        screen.tick_reveal()
        screen.tick_reveal()
        assert screen.revealed is None and screen._reveal_timer is None
        text = header(screen)
        assert f"SSN {MASKED_SSN}" in text and SSN_SHOWN not in text and DOB.isoformat() not in text


async def test_revealed_values_hide_when_a_form_covers_the_screen_or_the_user_leaves(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    app = app_for(tui, desk)

    async def reveal(screen: MemberDetailScreen, pilot: Any) -> None:
        await pilot.press("r")
        dialog = await wait_for(pilot, lambda: isinstance(app.screen, RevealDialog) and app.screen)
        set_input(dialog, "reason", "checking the file")
        dialog.query_one("#field-fields", Select).value = "ssn"
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.revealed is not None and app.screen is screen, what="the reveal")
        assert SSN_SHOWN in header(screen) and f"DOB {MASKED_DOB}" in header(screen)

    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await reveal(screen, pilot)
        await pilot.press("c")  # the call form covers the screen
        await wait_for(pilot, lambda: isinstance(app.screen, CallFormScreen))
        assert screen.revealed is None and SSN_SHOWN not in header(screen)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen)
        assert SSN_SHOWN not in screen_text(screen)

        await reveal(screen, pilot)
        await pilot.press("escape")  # back to the worklist
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
        assert screen.revealed is None and screen._reveal_timer is None
        assert SSN_SHOWN not in header(screen)
    assert [row.new_values["fields"] for row in reads(tui, known.id, "reveal")] == [["ssn"], ["ssn"]]


async def test_an_auditor_cannot_reveal_or_change_anything_but_sees_who_accessed_the_record(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("auditor")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await pilot.press("r")
        await pilot.pause()
        assert app.screen is screen  # no reveal dialog
        assert any("cannot reveal" in str(n.message) for n in app._notifications)
        for key in ("c", "f", "e", "t", "p", "n"):
            await pilot.press(key)
            await pilot.pause()
            assert app.screen is screen, key
        assert screen.check_action("log_call", ()) is False and screen.check_action("add_note", ()) is False
        access = table_rows(screen, "access-table")
        assert access and access[0][1:3] == [desk.display_name[:20], "read"]
        assert "open contact" in access[0][3]
    assert reads(tui, known.id, "reveal") == []
    assert tui.scalar("platform", "SELECT count(*) FROM audit_logs WHERE entity_id = :m AND action = 'deny'",
                      m=known.id) == 0  # hidden actions never even reached the repository


# -- calls ---------------------------------------------------------------------------------------------------


async def test_a_call_with_broken_rules_shows_each_error_by_its_field_keeps_the_input_and_saves_when_fixed(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await pilot.press("c")
        form = await wait_for(pilot, lambda: isinstance(app.screen, CallFormScreen) and app.screen)
        assert isinstance(form, CallFormScreen)
        form.query_one("#field-call_type", Select).value = "follow_up"
        set_input(form, "started_at", "2025-13-01 14:30")  # no 13th month: caught on the form
        set_input(form, "ended_at", "2025-03-01 14:00")
        form.query_one("#field-call_notes", TextArea).text = "Discussed the new inhaler."
        set_input(form, "outcome", "reached")
        form.query_one("#field-follow_up_required", Checkbox).value = True
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert form.field_errors() == {"started_at": "Use YYYY-MM-DD HH:MM (UTC), e.g. 2025-03-01 14:30."}
        assert not form.saving

        set_input(form, "started_at", "2025-03-01 14:30")
        await pilot.pause()
        assert "ends before it starts" in str(form.query_one("#call-duration", Static).render())
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: form.field_errors(), what="the repository's error")
        # Every rule the repository found, each next to the field it names; the form is still there, as typed.
        assert form.field_errors() == {
            "ended_at": "The end time must not be before the start time.",
            "follow_up_date": "A follow-up date is required when a follow-up is required."}
        assert app.screen is form
        assert input_values(form) == {"scheduled_at": "", "started_at": "2025-03-01 14:30",
                                      "ended_at": "2025-03-01 14:00", "outcome": "reached", "follow_up_date": ""}
        assert form.query_one("#field-call_notes", TextArea).text == "Discussed the new inhaler."
        assert form.query_one("#field-call_type", Select).value == "follow_up"
        assert form.query_one("#field-follow_up_required", Checkbox).value is True

        set_input(form, "ended_at", "2025-03-01 14:45")
        await pilot.pause()
        assert "Duration: 15 min 00 s" in str(form.query_one("#call-duration", Static).render())
        # Editing a field takes its own error away; the other stays until its field is edited.
        assert form.field_errors() == {
            "follow_up_date": "A follow-up date is required when a follow-up is required."}

        set_input(form, "follow_up_date", "2025-03-08")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen and len(screen._calls) == 1, what="the saved call")
        assert table_rows(screen, "calls-table")[0][:5] == ["2025-03-01 14:30", "follow up", "completed", "15 min",
                                                            "reached"]
    [row] = tui.rows("platform", "SELECT * FROM call_records WHERE member_id = :m", m=known.id)
    assert (row.call_type, row.duration_seconds, row.follow_up_date, row.call_notes) == (
        "follow_up", 900, date(2025, 3, 8), "Discussed the new inhaler.")
    assert row.specialist_id == desk.specialist().id
    assert tui.scalar("platform", "SELECT count(*) FROM audit_logs WHERE entity_type = 'call_record' "
                      "AND entity_id = :c AND action = 'create' AND user_id = :u", c=row.id, u=desk.user_id) == 1


async def test_a_call_form_survives_the_database_being_down_and_saves_on_retry(tui, monkeypatch) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    real_log_call = desk.log_call

    def database_down(values: Any) -> Any:
        raise OperationalError("INSERT INTO call_records ...", {}, Exception("connection refused"))

    monkeypatch.setattr(desk, "log_call", database_down)
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await pilot.press("c")
        form = await wait_for(pilot, lambda: isinstance(app.screen, CallFormScreen) and app.screen)
        assert isinstance(form, CallFormScreen)
        set_input(form, "started_at", "2025-04-02 09:00")
        set_input(form, "ended_at", "2025-04-02 09:07")
        form.query_one("#field-call_notes", TextArea).text = "Left a message about refills."
        await pilot.press("ctrl+s")
        status = form.query_one("#form-status", Static)
        await wait_for(pilot, lambda: "Not saved" in str(status.render()), what="the failure")
        text = str(status.render())
        assert "database is not reachable" in text and "nothing was lost" in text.lower()
        assert app.screen is form and not form.saving
        assert not form.query_one("#form-save", Button).disabled
        assert input_values(form)["started_at"] == "2025-04-02 09:00"
        assert form.query_one("#field-call_notes", TextArea).text == "Left a message about refills."
        assert tui.scalar("platform", "SELECT count(*) FROM call_records WHERE member_id = :m", m=known.id) == 0

        monkeypatch.setattr(desk, "log_call", real_log_call)  # the database is back
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen and len(screen._calls) == 1, what="the saved call")
    assert tui.scalar("platform", "SELECT call_notes FROM call_records WHERE member_id = :m",
                      m=known.id) == "Left a message about refills."


async def test_a_flag_raised_from_a_call_takes_member_and_specialist_from_the_call(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    call = desk.log_call({"member_id": known.id, "call_type": "outreach", "call_status": "completed",
                          "started_at": datetime(2025, 5, 5, 10, 0), "ended_at": datetime(2025, 5, 5, 10, 20)})
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await pilot.press("f")
        form = await wait_for(pilot, lambda: isinstance(app.screen, FlagFormScreen) and app.screen)
        assert form.call.id == call.id
        about = str(form.query_one("#flag-about", Static).render())
        assert f"Member: {known.label}" in about and "Specialist: you" in about
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert form.field_errors() == {"risk_type": "Choose the risk type.", "severity": "Choose the severity.",
                                       "description": "Say what was found."}
        form.query_one("#field-risk_type", Select).value = "safety"
        form.query_one("#field-severity", Select).value = "high"
        form.query_one("#field-description", TextArea).text = "Lives alone, fell twice this month."
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen and table_rows(screen, "flags-table"), what="the flag")
        assert table_rows(screen, "flags-table")[0][1:] == ["open", "high", "safety",
                                                            "Lives alone, fell twice this month."]
    [flag] = tui.rows("platform", "SELECT * FROM risk_flags WHERE call_record_id = :c", c=call.id)
    assert (flag.member_id, flag.specialist_id) == (known.id, desk.specialist().id)
    assert tui.scalar("platform", "SELECT count(*) FROM audit_logs WHERE entity_type = 'risk_flag' "
                      "AND entity_id = :f AND action = 'create'", f=flag.id) == 1


# -- enrollments ---------------------------------------------------------------------------------------------


async def test_a_supervisor_enrolls_makes_a_plan_primary_and_terminates_one(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("supervisor")
    first, second = [row.id for row in tui.rows(
        "platform", "SELECT id FROM insurance_plans WHERE deleted_at IS NULL AND is_active "
        "AND (expiration_date IS NULL OR expiration_date >= current_date) ORDER BY plan_code LIMIT 2")]
    app = app_for(tui, desk)

    async def enroll(pilot: Any, screen: MemberDetailScreen, plan_id: uuid.UUID, primary: bool) -> None:
        count = len(screen._enrollments)
        await pilot.press("e")
        form = await wait_for(pilot, lambda: isinstance(app.screen, EnrollFormScreen) and app.screen)
        form.query_one("#field-plan", Select).value = plan_id
        form.query_one("#field-is_primary", Checkbox).value = primary
        set_input(form, "coverage_percentage", "80")
        await pilot.press("ctrl+s")
        if count:  # another active enrollment overlaps: the first save warns, the second one enrolls
            await wait_for(pilot, lambda: "Warning" in str(form.query_one("#form-status", Static).render()))
            await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen and len(screen._enrollments) == count + 1)

    def primary_of() -> list[uuid.UUID]:
        return [row.insurance_plan_id for row in tui.rows(
            "platform", "SELECT insurance_plan_id FROM member_insurance_plans WHERE member_id = :m AND is_primary",
            m=known.id)]

    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await enroll(pilot, screen, first, True)
        await enroll(pilot, screen, second, False)
        assert primary_of() == [first]

        # Set the second plan primary: the key first brings up the enrollments tab to choose from.
        await pilot.press("p")
        await pilot.pause()
        table = screen.query_one("#enrollments-table", DataTable)
        assert screen.query_one("#member-tabs", TabbedContent).active == "enrollments" and app.focused is table
        keys = {view.enrollment.insurance_plan_id: key for key, view in screen._enrollments.items()}
        second_key, first_key = keys[second], keys[first]
        table.move_cursor(row=table.get_row_index(second_key))
        await pilot.press("p")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog), what="the confirmation")
        await pilot.press("y")
        await wait_for(pilot, lambda: primary_of() == [second], what="the new primary plan")
        await wait_for(pilot, lambda: screen._enrollments[second_key].enrollment.is_primary, what="the reload")

        table.move_cursor(row=table.get_row_index(first_key))
        await pilot.press("t")
        dialog = await wait_for(pilot, lambda: isinstance(app.screen, TerminateDialog) and app.screen)
        assert dialog.view.enrollment.insurance_plan_id == first
        set_input(dialog, "reason", "Moved to another state")
        set_input(dialog, "termination_date", "2001-01-01")  # before the enrollment: the repository says no
        await pilot.press("enter")
        await wait_for(pilot, lambda: dialog.field_errors(), what="the date rule")
        assert "termination_date" in dialog.field_errors() and app.screen is dialog
        set_input(dialog, "termination_date", datetime.now(timezone.utc).date().isoformat())
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is screen
                       and screen._enrollments[first_key].enrollment.status == "terminated")
        today = datetime.now(timezone.utc).date().isoformat()
        assert sorted(row[1:6] for row in table_rows(screen, "enrollments-table")) == [
            ["active", "primary", today, "", "80%"], ["terminated", "", today, today, "80%"]]
    rows = {row.insurance_plan_id: row for row in tui.rows(
        "platform", "SELECT * FROM member_insurance_plans WHERE member_id = :m", m=known.id)}
    assert rows[first].status == "terminated" and rows[first].termination_date is not None
    assert rows[second].is_primary and rows[second].coverage_percentage == 80


async def test_a_specialist_cannot_change_enrollments(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        for action in ("enroll", "terminate", "set_primary"):
            assert screen.check_action(action, ()) is False  # hidden from the footer and the keys
        assert "member.enroll" not in {binding.binding.id for binding in screen.active_bindings.values()}
        await pilot.press("e")
        await pilot.pause()
        assert app.screen is screen
        screen.action_enroll()  # even when asked directly (e.g. from a script), it is refused politely
        await pilot.pause()
        assert app.screen is screen
        assert any("enrollments:write" in str(n.message) for n in app._notifications)


# -- notes, access, lock, layout ---------------------------------------------------------------------------------


async def test_a_note_is_saved_and_listed(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await pilot.press("n")
        dialog = await wait_for(pilot, lambda: isinstance(app.screen, NoteDialog) and app.screen)
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert dialog.field_errors() == {"text": "Write the note first."}
        await pilot.press(*"Prefers calls after 5pm")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen and table_rows(screen, "notes-table"), what="the note")
        assert table_rows(screen, "notes-table")[0][1] == "Prefers calls after 5pm"
        assert str(screen.query_one("#member-tabs", TabbedContent).get_tab("notes").label) == "Notes (1)"
    [value] = [row.metadata_value for row in tui.rows(
        "platform", "SELECT metadata_value FROM metadata WHERE entity_type = 'member' AND entity_id = :m", m=known.id)]
    assert value == {"text": "Prefers calls after 5pm", "by": str(desk.user_id)}


async def test_a_supervisor_sees_who_accessed_the_record(tui) -> None:
    known = make_member(tui)
    specialist = tui.sign_in("specialist")
    specialist.open_member(known.id)
    specialist.reveal(known.id, ["dob"], "confirming the birthday")
    desk = tui.sign_in("supervisor")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        assert screen.query("#access")
        access = table_rows(screen, "access-table")
        # Newest first: the supervisor's own open, the specialist's reveal with its reason, their open.
        assert [row[1:3] for row in access[:3]] == [[desk.display_name[:20], "read"],
                                                    [specialist.display_name[:20], "read"],
                                                    [specialist.display_name[:20], "read"]]
        assert access[1][3] == "reveal dob — confirming the birthday"
        await pilot.press("5")
        assert screen.query_one("#member-tabs", TabbedContent).active == "access"


async def test_the_lock_leaves_no_member_value_on_screen_and_unlock_reads_the_file_again(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("supervisor")
    desk.add_note(known.id, "Daughter Zelda helps with forms")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        screen._show_revealed(desk.reveal(known.id, ["ssn", "dob"], "testing the lock"))
        before = screen_text(screen)
        for value in (LAST_NAME, EMAIL, PHONE_SHOWN, SSN_SHOWN, "Alder", "Zelda"):
            assert value in before, value
        screen.clear_phi()  # what the lock calls first, on every screen
        after = screen_text(screen)
        for value in (LAST_NAME, "Quentin", EMAIL, PHONE_SHOWN, SSN_SHOWN, DOB.isoformat(), "Alder", "97201",
                      "Zelda", MASKED_SSN):
            assert value not in after, value
        assert all(table.row_count == 0 for table in screen.query(DataTable).results(DataTable))
        assert screen.revealed is None and screen.file is None
        screen.restore_after_unlock()
        await wait_for(pilot, lambda: screen.file is not None, what="the file again")

        # Now the real lock, with a draft note open over the member.
        await pilot.press("n")
        dialog = await wait_for(pilot, lambda: isinstance(app.screen, NoteDialog) and app.screen)
        dialog.query_one("#field-text", TextArea).text = "Draft: call back on Monday"
        app.lock("Locked.")
        await pilot.pause()
        for holder in (screen, dialog):
            text = screen_text(holder)
            for value in (LAST_NAME, "Quentin", EMAIL, PHONE_SHOWN, "Alder", "Zelda"):
                assert value not in text, (holder, value)
        opened = len(reads(tui, known.id, "open"))
        app.signed_in(desk)  # the same user signs back in: the draft is still there, the file is read again
        await wait_for(pilot, lambda: app.screen is dialog and screen.file is not None, what="the file again")
        assert dialog.query_one("#field-text", TextArea).text == "Draft: call back on Monday"
        assert known.label in screen_text(dialog)
        assert LAST_NAME in header(screen) and MASKED_SSN in header(screen) and SSN_SHOWN not in header(screen)
        assert len(reads(tui, known.id, "open")) == opened + 1


async def test_a_reveal_that_finishes_behind_the_lock_is_dropped(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await pilot.press("r")
        dialog = await wait_for(pilot, lambda: isinstance(app.screen, RevealDialog) and app.screen)
        app.lock("Locked.")
        await pilot.pause()
        # The worker's answer arrives while the lock screen is on top: nothing is handed to the member screen.
        dialog.post_message(FormSaved(desk.reveal(known.id, ["ssn"], "arrives late")))
        await pilot.pause()
        assert dialog in app.screen_stack and app.locked
        assert screen.revealed is None and SSN_SHOWN not in screen_text(screen) + screen_text(dialog)
        assert "Press Reveal again" in str(dialog.query_one("#form-status", Static).render())


async def test_a_save_that_finishes_while_the_form_is_covered_is_handed_over_when_it_is_back(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await pilot.press("n")
        dialog = await wait_for(pilot, lambda: isinstance(app.screen, NoteDialog) and app.screen)
        cover: Screen[None] = Screen()
        app.push_screen(cover)  # e.g. help or the command palette, opened while saving
        await pilot.pause()
        dialog.post_message(FormSaved(desk.add_note(known.id, "Saved while covered")))
        await pilot.pause()
        assert app.screen is cover and dialog in app.screen_stack  # dismissing now would have popped the cover
        app.pop_screen()
        await wait_for(pilot, lambda: app.screen is screen and table_rows(screen, "notes-table"), what="the hand-over")
        assert table_rows(screen, "notes-table")[0][1] == "Saved while covered"


async def test_a_stale_edit_of_a_call_is_a_conflict_that_keeps_the_form_and_esc_asks_before_dropping_it(
        tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    call = desk.log_call({"member_id": known.id, "call_type": "outreach", "call_status": "no_answer",
                          "scheduled_at": datetime(2025, 6, 1, 9, 0)})
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        # Enter on a call opens the call screen now; the edit-everything form is still there for corrections.
        app.push_screen(CallFormScreen(known.id, known.label, screen._calls[str(call.id)]),
                        screen._after_form("Call saved."))
        form = await wait_for(pilot, lambda: isinstance(app.screen, CallFormScreen) and app.screen)
        assert form.call is not None and form.call.id == call.id
        assert input_values(form)["scheduled_at"] == "2025-06-01 09:00"
        assert form.query_one("#field-call_status", Select).value == "no_answer"
        # Someone else edits the call meanwhile.
        desk.update_call(call.id, call.updated_at, {"outcome": "left voicemail"})
        set_input(form, "outcome", "no voicemail box")
        await pilot.press("ctrl+s")
        status = form.query_one("#form-status", Static)
        await wait_for(pilot, lambda: "Not saved" in str(status.render()), what="the conflict")
        assert "changed by someone else" in str(status.render()) and "reload it" in str(status.render()).lower()
        assert app.screen is form and input_values(form)["outcome"] == "no voicemail box"
        await pilot.press("escape")  # what was typed is not thrown away on one Esc
        await pilot.pause()
        assert app.screen is form and "press Esc again" in str(status.render())
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: screen._calls[str(call.id)].outcome == "left voicemail", what="the reload")
        app.push_screen(CallFormScreen(known.id, known.label, screen._calls[str(call.id)]),
                        screen._after_form("Call saved."))
        form = await wait_for(pilot, lambda: isinstance(app.screen, CallFormScreen) and app.screen)
        set_input(form, "outcome", "no voicemail box")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen
                       and screen._calls[str(call.id)].outcome == "no voicemail box", what="the edit")
    assert tui.scalar("platform", "SELECT count(*) FROM audit_logs WHERE entity_type = 'call_record' "
                      "AND entity_id = :c AND action = 'update' AND user_id = :u", c=call.id, u=desk.user_id) == 2


async def test_the_screen_and_its_forms_fit_80x24(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("supervisor")
    app = app_for(tui, desk)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_member(pilot, known.id)
        for widget_id in ("#member-name", "#member-contact", "#member-address", "#member-phi"):
            region = screen.query_one(widget_id).region
            assert region.height == 1 and region.right <= 80, widget_id
        table = screen.query_one("#calls-table", DataTable)
        assert table.region.height >= 10 and table.region.bottom <= 23  # the footer keeps the last line
        for form in (CallFormScreen(known.id, known.label), RevealDialog(known.id, known.label),
                     EnrollFormScreen(known.id, desk.plans(), known.label), NoteDialog(known.id, known.label)):
            app.push_screen(form)
            await wait_for(pilot, lambda: app.screen is form)
            for button in form.query(Button).results(Button):
                assert button.region.bottom <= 24 and button.region.right <= 80 and button.region.height
            assert form.query_one("#form-title").region.y >= 0
            app.pop_screen()
            await wait_for(pilot, lambda: app.screen is screen)


async def test_a_coverage_that_is_not_a_plain_percentage_is_a_message_not_an_error(tui) -> None:
    """NaN, Infinity, 1e2 and other scripts' digits: Decimal reads them all (and NaN then fails the range
    check with an exception). The form says what it wants and enrolls nobody."""
    known = make_member(tui)
    desk = tui.sign_in("supervisor")
    (plan,) = [row.id for row in tui.rows(
        "platform", "SELECT id FROM insurance_plans WHERE deleted_at IS NULL AND is_active "
        "AND (expiration_date IS NULL OR expiration_date >= current_date) ORDER BY plan_code LIMIT 1")]
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await pilot.press("e")
        form = await wait_for(pilot, lambda: isinstance(app.screen, EnrollFormScreen) and app.screen)
        form.query_one("#field-plan", Select).value = plan
        for typed in ("NaN", "Infinity", "-Infinity", "1e2", "\u0661\u0660\u0660", "\uff18\uff10", "100.001", "101"):
            set_input(form, "coverage_percentage", typed)
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: form.field_errors(), what=f"the message for {typed!r}")
            assert form.field_errors() == {"coverage_percentage": "A number from 0 to 100."}, typed
            assert app.screen is form
        set_input(form, "coverage_percentage", "99.5%")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen and len(screen._enrollments) == 1)
    assert [row.coverage_percentage for row in tui.rows(
        "platform", "SELECT coverage_percentage FROM member_insurance_plans WHERE member_id = :m", m=known.id)] \
        == [Decimal("99.50")]


# -- opening: the file is read before the screen is shown ------------------------------------------------------


class HeldReads:
    """Holds ``Desk.open_member`` (the real read, against the real databases) until released: a slow
    database, without a fake one."""

    def __init__(self, monkeypatch: Any) -> None:
        self.release = threading.Event()
        self.started: list[uuid.UUID] = []
        real = Desk.open_member

        def held(desk: Desk, member_id: uuid.UUID, **kwargs: Any) -> Any:
            self.started.append(member_id)
            assert self.release.wait(30), "the test never released the read"
            return real(desk, member_id, **kwargs)

        monkeypatch.setattr(Desk, "open_member", held)


async def test_the_member_screen_is_first_shown_with_the_file_already_in_it(tui, monkeypatch) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    monkeypatch.setattr(app_module, "OPEN_PATIENCE_SECONDS", 30.0)  # however slow this machine: read, then show
    held = HeldReads(monkeypatch)
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen), what="the worklist")
        worklist = app.screen
        app.open_member(known.id)
        await wait_for(pilot, lambda: held.started, what="the read")
        await pilot.pause(0.2)
        assert app.screen is worklist  # nothing shown while the file is being read
        first_seen: list[Any] = []
        real_display = app._display

        def display(screen: Any, renderable: Any) -> None:
            if isinstance(screen, MemberDetailScreen) and renderable is not None and not first_seen:
                first_seen.append(header(screen))
            real_display(screen, renderable)

        monkeypatch.setattr(app, "_display", display)
        held.release.set()
        screen = await wait_for(pilot, lambda: isinstance(app.screen, MemberDetailScreen) and app.screen.file
                                is not None and app.screen, what="the member's file")
        await wait_for(pilot, lambda: first_seen, what="the first frame of the member's screen")
        assert known.label in first_seen[0] and "Opening" not in first_seen[0]
        assert table_rows(screen, "calls-table") == []
        assert len(reads(tui, known.id, "open")) == 1  # one open, one audited read
        assert screen.query_one("#calls-table", DataTable).has_focus


async def test_a_slow_read_shows_the_screen_saying_it_is_opening_then_fills_it(tui, monkeypatch) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    monkeypatch.setattr(app_module, "OPEN_PATIENCE_SECONDS", 0.05)
    held = HeldReads(monkeypatch)
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen), what="the worklist")
        app.open_member(known.id)
        screen = await wait_for(pilot, lambda: isinstance(app.screen, MemberDetailScreen) and app.screen,
                                what="the member's screen before its file")
        await pilot.pause()
        assert "Opening the member's file" in header(screen) and screen.file is None
        held.release.set()
        await wait_for(pilot, lambda: screen.file is not None, what="the member's file")
        await pilot.pause()
        assert known.label in header(screen) and EMAIL in header(screen)
        assert len(reads(tui, known.id, "open")) == 1 and held.started == [known.id]


async def test_an_open_overtaken_by_another_a_lock_or_leaving_shows_nothing(tui, monkeypatch) -> None:
    known = make_member(tui)
    other = make_member(tui)
    desk = tui.sign_in("specialist")
    monkeypatch.setattr(app_module, "OPEN_PATIENCE_SECONDS", 30.0)
    held = HeldReads(monkeypatch)
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen), what="the worklist")
        worklist = app.screen

        # Enter on one member, then on another before the first file is read: only the second is shown.
        app.open_member(known.id)
        app.open_member(other.id)
        await wait_for(pilot, lambda: len(held.started) == 2, what="both reads")
        held.release.set()
        screen = await wait_for(pilot, lambda: isinstance(app.screen, MemberDetailScreen) and app.screen.file
                                is not None and app.screen, what="the second member's file")
        await pilot.pause(0.3)
        assert screen.member_id == other.id and app.screen is screen
        assert sum(isinstance(s, MemberDetailScreen) for s in app.screen_stack) == 1
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is worklist, what="the worklist again")

        # Leaving for another screen (F3) before the read is done: the file is not shown over it.
        held.release.clear()
        app.open_member(known.id)
        await wait_for(pilot, lambda: len(held.started) == 3, what="the third read")
        await pilot.press("f3")
        await wait_for(pilot, lambda: app.screen is not worklist, what="the member browser")
        browser = app.screen
        held.release.set()
        await pilot.pause(0.5)
        assert app.screen is browser and not any(isinstance(s, MemberDetailScreen) for s in app.screen_stack)

        # A lock while the read is on its way: the file is dropped, not shown under (or over) the lock.
        held.release.clear()
        app.open_member(other.id)
        await wait_for(pilot, lambda: len(held.started) == 4, what="the fourth read")
        app.lock("Locked.")
        held.release.set()
        await pilot.pause(0.5)
        assert app.locked and not any(isinstance(s, MemberDetailScreen) for s in app.screen_stack)
        for text in map(screen_text, app.screen_stack):
            assert LAST_NAME not in text and EMAIL not in text


async def test_the_next_open_takes_a_screen_composed_while_the_user_read_and_a_lock_drops_it(tui, monkeypatch) -> None:
    from carecli.screens.member import NO_MEMBER

    known = make_member(tui)
    other = make_member(tui)
    desk = tui.sign_in("specialist")
    for name in ("SPARE_AFTER_SECONDS", "SPARE_IDLE_SECONDS", "SPARE_AFTER_SIGN_IN_SECONDS"):
        monkeypatch.setattr(app_module, name, 0.05)
    app = app_for(tui, desk)
    def spare_screen() -> MemberDetailScreen:
        assert app._spare_member is not None
        return app._spare_member[0]

    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen), what="the worklist")
        worklist = app.screen
        await wait_for(pilot, lambda: app._spare_member is not None, what="the spare screen")
        spare = spare_screen()
        # Composed and mounted off the screen stack, for no member: nobody's values in it.
        assert spare.is_mounted and spare not in app.screen_stack and spare.member_id == NO_MEMBER
        assert "Opening the member's file" in header(spare) and spare.file is None

        screen = await open_member(pilot, known.id)
        assert screen is spare and app.spare_members_taken == 1
        assert known.label in header(screen) and EMAIL in header(screen)
        assert len(reads(tui, known.id, "open")) == 1
        await wait_for(pilot, lambda: screen.query_one("#calls-table", DataTable).has_focus, what="the focus")

        # While this file is read, the next spare is made: a new screen, never one that showed a member.
        await wait_for(pilot, lambda: app._spare_member is not None, what="the next spare")
        following = spare_screen()
        assert following is not screen and LAST_NAME not in screen_text(following)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is worklist, what="the worklist again")
        assert not screen.is_attached  # the shown one went as any screen does
        second = await open_member(pilot, other.id)
        assert second is following and second.member_id == other.id and app.spare_members_taken == 2
        assert len(reads(tui, other.id, "open")) == 1 and len(reads(tui, known.id, "open")) == 1
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is worklist and app._spare_member is not None, what="a third spare")
        third = spare_screen()

        # A lock drops the spare (made for this desk); none is made while locked.
        app.lock("Locked.")
        await pilot.pause(0.3)
        assert app._spare_member is None and not third.is_attached


async def test_an_open_while_the_spare_is_still_composing_drops_it_without_harm(tui, monkeypatch) -> None:
    """An open that finds the spare screen not yet mounted drops it; removing it mid-compose crashed the app
    (its on_mount found none of its widgets: CI, under load)."""
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    monkeypatch.setattr(app_module, "SPARE_IDLE_SECONDS", 0.0)
    monkeypatch.setattr(app_module, "SPARE_AFTER_SIGN_IN_SECONDS", 3600.0)
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        worklist = await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen) and app.screen)
        await pilot.pause(0.1)
        app.last_input = app.clock() - 10
        app.prepare_spare_member()
        assert app._spare_member is not None
        spare = app._spare_member[0]
        assert not spare.is_mounted  # composing: its widgets are on their way
        app.open_member(known.id)
        screen = await wait_for(pilot, lambda: isinstance(app.screen, MemberDetailScreen) and app.screen,
                                what="the member")
        assert screen is not spare and app.spare_members_taken == 0
        await wait_for(pilot, lambda: not spare.is_attached, what="the dropped spare removed once mounted")
        assert known.label in header(screen)
        await wait_for(pilot, lambda: screen.query_one("#calls-table", DataTable).has_focus, what="the focus")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is worklist, what="the worklist again")


async def test_a_tab_key_and_enter_typed_at_once_open_the_row_of_that_tab(tui) -> None:
    """Keys that arrive in one read of the terminal ("1" then Enter): Enter goes to the tab just shown."""
    from textual import events
    from textual.keys import _character_to_key

    from carecli.screens.call import CallScreen

    known = make_member(tui)
    desk = tui.sign_in("specialist")
    desk.log_call({"member_id": known.id, "call_type": "support", "call_status": "completed",
                   "started_at": datetime(2025, 3, 1, 14, 0), "ended_at": datetime(2025, 3, 1, 14, 12),
                   "outcome": "reached"})
    app = app_for(tui, desk)

    def typed_at_once(*characters: str) -> None:
        for character in characters:
            key = "enter" if character == "\r" else _character_to_key(character)
            event = events.Key(key, None if character == "\r" else character)
            event.set_sender(app)
            app.post_message(event)

    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await pilot.press("3")
        await wait_for(pilot, lambda: screen.query_one("#enrollments-table", DataTable).has_focus, what="tab 3")
        typed_at_once("1", "\r")
        await wait_for(pilot, lambda: isinstance(app.screen, CallScreen), what="the call opened by Enter")



async def test_keys_typed_with_the_key_that_opens_a_screen_are_not_lost(tui) -> None:
    """"/smith" in one read opens the member search with "smith" in it; "n" and a note's text opens the note
    with the text in it."""
    from textual import events
    from textual.keys import _character_to_key

    from carecli.screens.members import MemberBrowserScreen

    known = make_member(tui)
    desk = tui.sign_in("specialist")
    app = app_for(tui, desk)

    def typed_at_once(text: str) -> None:
        for character in text:
            key = character if character.isalnum() else _character_to_key(character)
            event = events.Key(key, character)
            event.set_sender(app)
            app.post_message(event)

    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen), what="the worklist")
        typed_at_once("/zybrow")
        browser = await wait_for(pilot, lambda: isinstance(app.screen, MemberBrowserScreen) and app.screen,
                                 what="the member search")
        box = browser.query_one("#member-search", Input)
        await wait_for(pilot, lambda: box.value == "zybrow", what=f"the typed search (have {box.value!r})")
        assert box.has_focus
        await pilot.press("escape", "escape", "escape")
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen), what="the worklist again")

        screen = await open_member(pilot, known.id)
        typed_at_once("nCalled back")
        note = await wait_for(pilot, lambda: isinstance(app.screen, NoteDialog) and app.screen, what="the note")
        area = note.query_one("#field-text", TextArea)
        await wait_for(pilot, lambda: area.text == "Called back", what=f"the typed note (have {area.text!r})")
        assert screen is not app.screen


async def test_down_and_enter_typed_at_once_in_the_search_open_the_first_result(tui) -> None:
    """↓ moves on to the results as the key comes: Enter typed right after it opens the first member."""
    from textual import events

    from carecli.screens.members import MemberBrowserScreen

    known = make_member(tui)
    desk = tui.sign_in("specialist")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen), what="the worklist")
        await pilot.press("f3")
        browser = await wait_for(pilot, lambda: isinstance(app.screen, MemberBrowserScreen) and app.screen,
                                 what="the member search")
        await pilot.press(*"zybrowski")
        await wait_for(pilot, lambda: browser.settled and browser.rows == [known.id], what="the one result")
        for key, character in (("down", None), ("enter", "\r")):
            event = events.Key(key, character)
            event.set_sender(app)
            app.post_message(event)
        screen = await wait_for(pilot, lambda: isinstance(app.screen, MemberDetailScreen) and app.screen.file
                                is not None and app.screen, what="the member opened by Enter")
        assert screen.member_id == known.id


async def test_keys_typed_at_once_keep_their_order(tui) -> None:
    """"↓ ↓ Enter" in one read in the member search opens the second result (each key is handled before the
    next is handed out: the first ↓ moves into the results, the second moves the cursor, Enter opens), and
    "a x ⌫ ↓" edits the search, then goes down."""
    from textual import events

    from carecli.screens.members import MemberBrowserScreen

    desk = tui.sign_in("specialist")
    app = app_for(tui, desk)

    def typed_at_once(*keys: tuple[str, str | None]) -> None:
        for key, character in keys:
            event = events.Key(key, character)
            event.set_sender(app)
            app.post_message(event)

    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen), what="the worklist")
        await pilot.press("f3")
        browser = await wait_for(pilot, lambda: isinstance(app.screen, MemberBrowserScreen) and app.screen,
                                 what="the member search")
        await wait_for(pilot, lambda: browser.settled and len(browser.rows) >= 2, what="a page of members")
        second = browser.rows[1]
        typed_at_once(("down", None), ("down", None), ("enter", "\r"))
        screen = await wait_for(pilot, lambda: isinstance(app.screen, MemberDetailScreen) and app.screen.file
                                is not None and app.screen, what="a member's file")
        assert screen.member_id == second
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is browser, what="the search again")
        await pilot.press("up", "up")
        box = browser.query_one("#member-search", Input)
        await wait_for(pilot, lambda: box.has_focus, what="the search box")
        typed_at_once(("a", "a"), ("x", "x"), ("backspace", "\x7f"), ("down", None))
        await wait_for(pilot, lambda: box.value == "a" and not box.has_focus, what=f"a, then down ({box.value!r})")


async def test_an_app_that_ends_while_the_spare_is_still_composing_ends_cleanly(tui, monkeypatch) -> None:
    """The spare screen, made just before the app ends (a test's end, ctrl+q), is torn down mid-compose: its
    on_mount found none of its widgets and the app ended with NoMatches (CI, under load)."""
    desk = tui.sign_in("specialist")
    monkeypatch.setattr(app_module, "SPARE_IDLE_SECONDS", 0.0)
    monkeypatch.setattr(app_module, "SPARE_AFTER_SIGN_IN_SECONDS", 3600.0)
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen) and app.screen)
        await pilot.pause(0.1)
        app.last_input = app.clock() - 10
        app.prepare_spare_member()
        assert app._spare_member is not None and not app._spare_member[0].is_mounted
    assert app.return_code in (0, None)


async def test_a_focus_in_a_pane_whose_tab_is_already_torn_down_does_not_end_the_app(tui) -> None:
    """A screen is torn down deepest widgets first, so its tabs go before its panes: a focus then on its way
    into a pane (the member screen focuses its calls as it is mounted) made Textual's TabbedContent raise
    "No Tab with id '--content-tab-calls'" and end the app (CI: the spare member screen at the app's end)."""
    from textual.widgets import TabPane
    from textual.widgets._tabbed_content import ContentTab

    known = make_member(tui)
    app = app_for(tui, tui.sign_in("specialist"))
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        tabbed = screen.query_one("#member-tabs", TabbedContent)
        # While the tabs are there, a focus in a pane still shows that pane's tab.
        screen.set_focus(screen.query_one("#flags-table", DataTable))
        await wait_for(pilot, lambda: tabbed.active == "flags", what="the flags tab shown by the focus")
        await screen.query(ContentTab).remove()
        pane = screen.query_one("#calls", TabPane)
        pane.post_message(TabPane.Focused(pane))
        await pilot.pause(0.2)
        assert app.is_running and app._exception is None
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen), what="the worklist")
    assert app.return_code in (0, None)

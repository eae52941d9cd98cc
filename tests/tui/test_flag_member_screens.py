"""Risk flags, member edits and enrollments on the member screen, driven with Pilot against real databases.

The flag screen (open, resolve, re-open), the flags tab (open and resolved
apart), raising a flag from a chosen call, the member edit form (the import's
field rules, every problem at once, phones in E.164, audit by field name,
conflicts), the header (member number, primary plan, age once revealed),
terminating with a reason, the make-primary confirmation, the overlap
warning when enrolling, and Esc on a form with typed changes.
"""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Any

from rich.protocol import rich_cast
from rich.text import Text
from textual.widgets import DataTable, Select, Static, TabbedContent, TextArea

from carecli.data.bulk import fields as f
from carecli.data.crypto.runtime import cipher_provider
from carecli.data.unit_of_work import PlatformUnitOfWork
from carecli.screens.confirm import ConfirmDialog
from carecli.screens.flag import FlagScreen
from carecli.screens.flag_forms import ReopenFlagDialog, ResolveFlagDialog
from carecli.screens.forms import EnrollFormScreen, FlagFormScreen, NoteDialog, TerminateDialog, as_sentence
from carecli.screens.member import MemberDetailScreen
from carecli.screens.member_forms import MemberEditScreen
from tests.tui.conftest import SIZE
from tests.tui.helpers import screen_text, wait_for
from tests.tui.test_member_screens import (
    DOB,
    EMAIL,
    app_for,
    header,
    input_values,
    make_member,
    open_member,
    set_input,
    table_rows,
)

PHONE_SHOWN = "(555) 014-2771"


def held_call(desk: Any, member_id: uuid.UUID, when: datetime, status: str = "completed", **values: Any) -> Any:
    times = {"started_at": when, "ended_at": when + timedelta(minutes=10)} if status == "completed" \
        else {"scheduled_at": when}
    return desk.log_call({"member_id": member_id, "call_type": "outreach", "call_status": status, **times, **values})


def flag_on(desk: Any, call: Any, description: str, severity: str = "high") -> Any:
    return desk.raise_flag(call.id, risk_type="safety", severity=severity, description=description)


def status_text(form: Any) -> str:
    return str(form.query_one("#form-status", Static).render())


def flag_text(screen: FlagScreen) -> str:
    return "\n".join(str(widget.render()) for widget in screen.query("#flag-body Static").results(Static))


def plans_open_today(tui: Any, count: int = 2) -> list[Any]:
    """Active plans in effect today and for two days more at least (the seed's plans end with the year)."""
    return tui.rows("platform", "SELECT id, plan_code, expiration_date FROM insurance_plans "
                    "WHERE deleted_at IS NULL AND is_active "
                    "AND (effective_date IS NULL OR effective_date <= current_date) "
                    "AND (expiration_date IS NULL OR expiration_date >= current_date + 2) ORDER BY plan_code LIMIT :n",
                    n=count)


def today() -> date:
    return datetime.now(timezone.utc).date()


# -- flags -------------------------------------------------------------------------------------------------


async def test_a_flag_opened_from_the_member_screen_is_resolved_and_re_opened(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    call = held_call(desk, known.id, datetime(2025, 5, 5, 10, 0))
    flag = flag_on(desk, call, "Lives alone, fell twice this month. " * 6)
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await pilot.press("2")
        assert app.focused is screen.query_one("#flags-table", DataTable)
        await pilot.press("enter")
        flag_screen = await wait_for(pilot, lambda: isinstance(app.screen, FlagScreen) and app.screen.view
                                     and app.screen, what="the flag screen")
        assert isinstance(flag_screen, FlagScreen)
        text = flag_text(flag_screen)
        assert "HIGH · safety risk" in text and f"Member:  {known.label}" in text
        assert "Call:    outreach, completed, 2025-05-05 10:00 UTC" in text
        assert f"by {desk.display_name}" in text and "State:   OPEN" in text
        assert "Lives alone, fell twice this month. Lives alone" in text  # the whole description, wrapped
        assert flag_screen.check_action("resolve", ()) is True and flag_screen.check_action("reopen", ()) is False

        await pilot.press("v")
        form = await wait_for(pilot, lambda: isinstance(app.screen, ResolveFlagDialog) and app.screen)
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert form.field_errors() == {"note": "Say how the flag was resolved."} and app.screen is form
        form.query_one("#field-note", TextArea).text = "Daughter moved in; home safety visit booked."
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is flag_screen and flag_screen.view is not None
                       and flag_screen.view.resolution is not None,
                       what="the resolution")
        text = flag_text(flag_screen)
        assert "State:   resolved" in text and f"by {desk.display_name}" in text
        assert "Note:    Daughter moved in; home safety visit booked." in text
        assert flag_screen.check_action("resolve", ()) is False and flag_screen.check_action("reopen", ()) is True
        [entry] = tui.rows("platform", "SELECT * FROM metadata WHERE entity_type = 'risk_flag' AND entity_id = :f "
                           "AND metadata_key = 'resolution'", f=flag.id)
        assert entry.deleted_at is None and entry.metadata_value["note"].startswith("Daughter moved in")
        assert entry.metadata_value["by"] == str(desk.user_id)
        changes = tui.rows("platform", "SELECT old_values, new_values FROM audit_logs WHERE entity_type = "
                           "'risk_flag' AND entity_id = :f AND action = 'update' ORDER BY created_at", f=flag.id)
        assert [(row.old_values["resolution"], row.new_values["resolution"]) for row in changes] == [
            ("open", "resolved")]
        assert tui.scalar("platform", "SELECT count(*) FROM audit_logs WHERE entity_type = 'metadata' "
                          "AND entity_id = :e AND action = 'create'", e=entry.id) == 1

        await pilot.press("o")
        form = await wait_for(pilot, lambda: isinstance(app.screen, ReopenFlagDialog) and app.screen)
        form.query_one("#field-reason", TextArea).text = "Fell again after the visit."
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is flag_screen and flag_screen.view is not None
                       and flag_screen.view.resolution is None,
                       what="the flag open again")
        assert "State:   OPEN" in flag_text(flag_screen)
        assert tui.scalar("platform", "SELECT deleted_at IS NOT NULL FROM metadata WHERE entity_type = 'risk_flag' "
                          "AND entity_id = :f AND metadata_key = 'resolution'", f=flag.id) is True
        changes = tui.rows("platform", "SELECT new_values FROM audit_logs WHERE entity_type = 'risk_flag' "
                           "AND entity_id = :f AND action = 'update' ORDER BY created_at", f=flag.id)
        assert [row.new_values["resolution"] for row in changes] == ["resolved", "open"]

        await pilot.press("m")  # opened from this member's file: back to it
        await wait_for(pilot, lambda: app.screen is screen and table_rows(screen, "flags-table")[0][1] == "open")


async def test_the_flags_tab_lists_open_flags_first_and_resolved_ones_after_them_dimmed(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    call = held_call(desk, known.id, datetime(2025, 5, 5, 10, 0))
    older = flag_on(desk, call, "Older open flag", severity="low")
    resolved = flag_on(desk, call, "Resolved flag", severity="critical")
    newer = flag_on(desk, call, "Newer open flag", severity="medium")
    desk.resolve_flag(resolved.id, resolved.updated_at, "Sorted out on the phone.")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        rows = table_rows(screen, "flags-table")
        assert [row[1:4] for row in rows] == [["open", "medium", "safety"], ["open", "low", "safety"],
                                              ["resolved", "critical", "safety"]]
        assert list(screen.query_one("#flags-table", DataTable).rows)[0].value == str(newer.id)
        tabs = screen.query_one("#member-tabs", TabbedContent)
        assert str(tabs.get_tab("flags").label) == "Risk flags (2 open, 1 resolved)"
        table = screen.query_one("#flags-table", DataTable)
        last = table.get_row(str(resolved.id))
        # as drawn (a table keeps its cells as PlainCell, drawn as a fresh Text each time)
        assert all(isinstance(shown := rich_cast(cell), Text) and shown.style == "dim" for cell in last)
        assert not any(isinstance(shown := rich_cast(cell), Text) and shown.style == "dim"
                       for cell in table.get_row(str(older.id)))


async def test_raising_a_flag_offers_the_held_calls_newest_first_and_saves_on_the_chosen_one(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    oldest = held_call(desk, known.id, datetime(2025, 4, 1, 9, 0))
    latest_completed = held_call(desk, known.id, datetime(2025, 5, 1, 9, 0))
    unanswered = held_call(desk, known.id, datetime(2025, 6, 1, 9, 0), status="no_answer")
    desk.schedule_call(known.id, datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(days=3))
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await pilot.press("f")
        form = await wait_for(pilot, lambda: isinstance(app.screen, FlagFormScreen) and app.screen)
        choice = form.query_one("#field-call", Select)
        assert [value for _label, value in choice._options] == [unanswered.id, latest_completed.id, oldest.id]
        assert choice.value == latest_completed.id and form.call.id == latest_completed.id
        assert "2025-05-01 09:00" in str(form.query_one("#flag-about", Static).render())
        choice.value = oldest.id
        await pilot.pause()
        assert "2025-04-01 09:00" in str(form.query_one("#flag-about", Static).render())
        assert "Specialist: you" in str(form.query_one("#flag-about", Static).render())
        form.query_one("#field-risk_type", Select).value = "medical"
        form.query_one("#field-severity", Select).value = "medium"
        form.query_one("#field-description", TextArea).text = "Stopped the blood thinner."
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen and table_rows(screen, "flags-table"), what="the flag")
    assert tui.scalar("platform", "SELECT call_record_id FROM risk_flags WHERE member_id = :m", m=known.id) == oldest.id


async def test_with_only_scheduled_or_cancelled_calls_no_flag_form_opens(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    desk.schedule_call(known.id, datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(days=3))
    held_call(desk, known.id, datetime(2025, 2, 1, 9, 0), status="cancelled")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        assert len(screen._calls) == 2
        await pilot.press("f")
        await pilot.pause()
        assert app.screen is screen
        assert any("completed or unanswered call" in str(n.message) for n in app._notifications)
    assert tui.scalar("platform", "SELECT count(*) FROM risk_flags WHERE member_id = :m", m=known.id) == 0


# -- member edit --------------------------------------------------------------------------------------------


async def open_edit(pilot: Any, screen: MemberDetailScreen) -> MemberEditScreen:
    await pilot.press("u")
    return await wait_for(pilot, lambda: isinstance(pilot.app.screen, MemberEditScreen) and pilot.app.screen)


async def test_a_member_edit_stores_the_phone_in_e164_and_audits_field_names_not_values(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        form = await open_edit(pilot, screen)
        assert input_values(form)["phone"] == PHONE_SHOWN and input_values(form)["email"] == EMAIL
        assert form.query_one("#field-status", Select).value == "active"
        set_input(form, "phone", "555.324.8436")
        set_input(form, "city", "Salem")
        set_input(form, "state", " oregon ")  # a state's name is its code, as import reads it: unchanged, not sent
        form.query_one("#field-status", Select).value = "inactive"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen and screen.file is not None
                       and screen.file.member.city == "Salem", what="the edit")
        text = header(screen)
        assert "(555) 324-8436" in text and "inactive" in text and "Salem, OR 97201" in text
    [row] = tui.rows("platform", "SELECT phone, city, status FROM members WHERE id = :m", m=known.id)
    assert tuple(row) == ("+15553248436", "Salem", "inactive")
    [audit] = tui.rows("platform", "SELECT old_values, new_values FROM audit_logs WHERE entity_type = 'member' "
                       "AND entity_id = :m AND action = 'update'", m=known.id)
    assert set(audit.new_values) == {"phone", "city", "status"}  # only what changed was sent
    assert audit.new_values["phone"] == audit.new_values["city"] == "[redacted]"
    assert audit.old_values["phone"] == audit.old_values["city"] == "[redacted]"
    assert (audit.old_values["status"], audit.new_values["status"]) == ("active", "inactive")
    stored = json.dumps([audit.old_values, audit.new_values])
    assert "3248436" not in stored and "Salem" not in stored and "Portland" not in stored


async def test_a_member_edit_shows_every_bad_field_at_once_next_to_it_with_the_import_rules(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        form = await open_edit(pilot, screen)
        set_input(form, "zip_code", "9720")
        set_input(form, "phone", "555-0142")
        set_input(form, "state", "Cascadia")  # a name import knows (Oregon) is taken
        set_input(form, "email", "quentin at example.org")
        set_input(form, "last_name", "  ")
        await pilot.pause()
        await pilot.press("ctrl+s")
        await pilot.pause()

        def import_message(parser: Any, value: str) -> str:
            try:
                parser(value)
            except f.FieldProblem as problem:
                return problem.message
            raise AssertionError("import accepts it")

        # import's own messages, each made a sentence with the field's label ("Last name is required.")
        assert form.field_errors() == {name: as_sentence(form.field_label(name), message) for name, message in {
            "zip_code": import_message(f.parse_zip, "9720"), "phone": import_message(f.parse_phone, "555-0142"),
            "state": import_message(f.parse_state, "Cascadia"),
            "email": import_message(f.parse_email, "quentin at example.org"), "last_name": "is required"}.items()}
        assert form.field_errors()["last_name"] == "Last name is required."
        assert app.screen is form and "marked fields" in status_text(form)
        # Editing a field takes its own error away; the others stay.
        set_input(form, "zip_code", "97201-1234")
        await pilot.pause()
        assert set(form.field_errors()) == {"phone", "state", "email", "last_name"}
    assert tui.scalar("platform", "SELECT count(*) FROM audit_logs WHERE entity_type = 'member' AND entity_id = :m "
                      "AND action = 'update'", m=known.id) == 0


async def test_a_member_edit_after_someone_else_saved_is_a_conflict_naming_them_and_keeping_the_typing(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    other = tui.sign_in("supervisor")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        form = await open_edit(pilot, screen)
        set_input(form, "city", "Salem")
        set_input(form, "address_line2", "Apt 4")
        await pilot.pause()
        assert screen.file is not None
        member = screen.file.member
        other.update_member(known.id, member.updated_at, {"city": "Eugene"})
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "Not saved" in status_text(form), what="the conflict")
        assert "changed by someone else" in status_text(form) and other.display_name in status_text(form)
        assert app.screen is form
        assert input_values(form)["city"] == "Salem" and input_values(form)["address_line2"] == "Apt 4"
    assert tui.scalar("platform", "SELECT city FROM members WHERE id = :m", m=known.id) == "Eugene"


# -- header -------------------------------------------------------------------------------------------------


async def test_the_header_shows_member_number_primary_plan_and_the_age_only_while_the_dob_is_revealed(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("supervisor")
    [plan] = plans_open_today(tui, 1)
    desk.enroll(known.id, plan.id, today(), is_primary=True)
    admin = tui.sign_in("admin")
    with PlatformUnitOfWork(tui.databases.platform, admin.actor,
                            cipher=cipher_provider(tui.settings, tui.databases)) as uow:
        uow.metadata.put("member", known.id, "external_member_number", "M-004417")
        uow.commit()
    app = app_for(tui, desk, reveal_seconds=60)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        text = header(screen)
        assert "No. M-004417" in text and f"Primary plan {plan.plan_code}" in text and "active" in text
        assert "age" not in text and DOB.isoformat() not in screen_text(screen)
        screen._show_revealed(desk.reveal(known.id, ["dob"], "checking the age"))
        t = today()
        age = t.year - DOB.year - ((t.month, t.day) < (DOB.month, DOB.day))
        assert f"DOB {DOB.isoformat()} (age {age})" in header(screen)
        screen.remask()
        assert "age" not in header(screen) and DOB.isoformat() not in header(screen)


# -- enrollments ------------------------------------------------------------------------------------------------


async def test_terminating_asks_for_a_reason_and_a_future_date_keeps_the_plan_active_until_then(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("supervisor")
    [plan] = plans_open_today(tui, 1)
    enrollment = desk.enroll(known.id, plan.id, today(), is_primary=True)
    end = min(today() + timedelta(days=14), plan.expiration_date or date.max)  # a plan ends the year
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await pilot.press("3")
        await pilot.press("t")
        dialog = await wait_for(pilot, lambda: isinstance(app.screen, TerminateDialog) and app.screen)
        assert "ends now" in str(dialog.query_one("#terminate-effect", Static).render())
        set_input(dialog, "termination_date", end.isoformat())
        await pilot.pause()
        assert f"stays active until {end}" in str(dialog.query_one("#terminate-effect", Static).render())
        await pilot.press("enter")
        await pilot.pause()
        assert dialog.field_errors() == {"reason": "Say why the enrollment ends."} and app.screen is dialog
        set_input(dialog, "reason", "Moving out of state at the end of the month")
        await pilot.pause()
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is screen
                       and screen._enrollments[str(enrollment.id)].enrollment.termination_date == end)
        assert table_rows(screen, "enrollments-table")[0][1:3] == [f"ends {end}", "primary"]
    [row] = tui.rows("platform", "SELECT status, termination_date, notes FROM member_insurance_plans "
                     "WHERE id = :e", e=enrollment.id)
    assert (row.status, row.termination_date) == ("active", end)
    assert "Moving out of state" in row.notes


async def test_make_primary_asks_first_and_no_leaves_it_as_it_was(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("supervisor")
    first, second = plans_open_today(tui, 2)
    desk.enroll(known.id, first.id, today(), is_primary=True)
    other = desk.enroll(known.id, second.id, today())
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await pilot.press("3")
        table = screen.query_one("#enrollments-table", DataTable)
        table.move_cursor(row=table.get_row_index(str(other.id)))
        await pilot.press("p")
        dialog = await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog) and app.screen)
        question = str(dialog.query_one("#confirm-question", Static).render())
        assert f"Make {second.plan_code} the primary plan instead of {first.plan_code}?" == question
        await pilot.press("n")
        await wait_for(pilot, lambda: app.screen is screen)
        await pilot.press("p")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen)
        await pilot.pause(0.2)
        assert tui.scalar("platform", "SELECT is_primary FROM member_insurance_plans WHERE id = :e",
                          e=other.id) is False
        await pilot.press("p")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog))
        await pilot.press("enter")
        await wait_for(pilot, lambda: tui.scalar("platform", "SELECT is_primary FROM member_insurance_plans "
                                                 "WHERE id = :e", e=other.id), what="the new primary plan")


async def test_enrolling_over_an_active_enrollment_warns_first_and_a_second_save_enrolls(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("supervisor")
    first, second = plans_open_today(tui, 2)
    desk.enroll(known.id, first.id, today(), is_primary=True)
    app = app_for(tui, desk)

    def enrollments() -> int:
        return tui.scalar("platform", "SELECT count(*) FROM member_insurance_plans WHERE member_id = :m", m=known.id)

    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await pilot.press("e")
        form = await wait_for(pilot, lambda: isinstance(app.screen, EnrollFormScreen) and app.screen)
        form.query_one("#field-plan", Select).value = second.id
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "Warning" in status_text(form), what="the overlap warning")
        assert first.plan_code in status_text(form) and "ctrl+s again" in status_text(form)
        assert app.screen is form and enrollments() == 1
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen and len(screen._enrollments) == 2, what="the enrollment")
    assert enrollments() == 2


# -- forms ------------------------------------------------------------------------------------------------------


async def test_esc_on_a_form_with_typed_changes_asks_before_dropping_them(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await pilot.press("n")
        dialog = await wait_for(pilot, lambda: isinstance(app.screen, NoteDialog) and app.screen)
        await pilot.press("escape")  # nothing typed: closes at once
        await wait_for(pilot, lambda: app.screen is screen)

        form = await open_edit(pilot, screen)
        set_input(form, "city", "Salem")
        await pilot.pause()
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is form and "press Esc again" in status_text(form)
        assert input_values(form)["city"] == "Salem"
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen)
    assert dialog is not None
    assert tui.scalar("platform", "SELECT city FROM members WHERE id = :m", m=known.id) == "Portland"


async def test_the_flag_screen_and_the_new_forms_fit_80x24(tui) -> None:
    known = make_member(tui)
    specialist = tui.sign_in("specialist")
    call = held_call(specialist, known.id, datetime(2025, 5, 5, 10, 0))
    flag = flag_on(specialist, call, "Lives alone, fell twice this month. " * 50)
    desk = tui.sign_in("supervisor")
    [plan] = plans_open_today(tui, 1)
    desk.enroll(known.id, plan.id, today(), is_primary=True)
    app = app_for(tui, desk)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_member(pilot, known.id)
        view = desk.flag_view(flag.id)
        [enrollment] = screen._enrollments.values()
        assert screen.file is not None
        for form in (MemberEditScreen(screen.file.member), TerminateDialog(enrollment), ResolveFlagDialog(view),
                     FlagFormScreen(call, calls=[call]), ConfirmDialog("Make it the primary plan?")):
            app.push_screen(form)
            await wait_for(pilot, lambda: app.screen is form)
            await pilot.pause()
            for button in form.query("Button"):
                assert button.region.bottom <= 24 and button.region.right <= 80 and button.region.height, form
            app.pop_screen()
            await wait_for(pilot, lambda: app.screen is screen)
        app.push_screen(FlagScreen(flag.id))
        flag_screen = await wait_for(pilot, lambda: isinstance(app.screen, FlagScreen) and app.screen.view
                                     and app.screen)
        body = flag_screen.query_one("#flag-body")
        assert body.region.bottom <= 23 and body.max_scroll_y > 0  # a long description scrolls
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen)


async def test_the_lock_clears_the_flag_screen_and_unlock_reads_the_flag_again(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    call = held_call(desk, known.id, datetime(2025, 5, 5, 10, 0))
    flag = flag_on(desk, call, "Keeps insulin in a broken fridge.")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        await open_member(pilot, known.id)
        app.push_screen(FlagScreen(flag.id))
        flag_screen = await wait_for(pilot, lambda: isinstance(app.screen, FlagScreen) and app.screen.view
                                     and app.screen)
        assert "broken fridge" in screen_text(flag_screen) and known.label in screen_text(flag_screen)
        flag_screen.clear_phi()  # what the lock calls first, on every screen
        assert "broken fridge" not in screen_text(flag_screen) and "Zybrowski" not in screen_text(flag_screen)
        assert flag_screen.check_action("resolve", ()) is False
        flag_screen.restore_after_unlock()
        await wait_for(pilot, lambda: flag_screen.view is not None and "broken fridge" in screen_text(flag_screen),
                       what="the flag again")

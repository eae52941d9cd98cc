"""The call screen and the forms of a call's steps, driven with Pilot against real databases.

A call is opened from the worklist and from the member screen; each step
(complete, reschedule, cancel, no answer, schedule, edit notes) is saved
through the desk and checked in the database and the audit log; the rules
of :mod:`carecli.data.rules` come back next to the fields they name; a
change made by someone else between opening and saving is a conflict that
names them and keeps what was typed.
"""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Any

from textual.widgets import Button, Checkbox, DataTable, Select, Static, TextArea

from carecli.screens.call import CallScreen
from carecli.screens.call_forms import (
    CancelCallForm,
    CompleteCallForm,
    EditCallNotesForm,
    NoAnswerForm,
    RescheduleCallForm,
    ScheduleCallForm,
)
from carecli.screens.forms import FlagFormScreen
from carecli.screens.member import MemberDetailScreen
from carecli.screens.worklist import WorklistScreen
from tests.tui.conftest import SIZE
from tests.tui.helpers import screen_text, wait_for
from tests.tui.test_member_screens import app_for, make_member, open_member, set_input, table_rows

LONG_NOTES = ("Member asked about the new inhaler and how often to use it. " * 30
              + "\nSecond paragraph: daughter helps with the forms; call after 5pm.\nLAST LINE OF THE NOTES")


def now_utc() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None, second=0, microsecond=0)


def typed(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")


def show(moment: datetime | None) -> str:
    return typed(moment) if moment else "—"


def call_row(tui: Any, call_id: uuid.UUID) -> Any:
    [row] = tui.rows("platform", "SELECT * FROM call_records WHERE id = :c", c=call_id)
    return row


def audit_actions(tui: Any, call_id: uuid.UUID, user_id: uuid.UUID) -> list[str]:
    return [row.action for row in tui.rows(
        "platform", "SELECT action FROM audit_logs WHERE entity_type = 'call_record' AND entity_id = :c "
        "AND user_id = :u ORDER BY created_at", c=call_id, u=user_id)]


def shown_keys(screen: Any) -> set[str]:
    """The actions whose keys the footer shows on ``screen``."""
    return {name for name in ("complete", "reschedule", "cancel_call", "no_answer", "edit_notes", "raise_flag",
                              "open_member") if screen.check_action(name, ())}


async def open_call(pilot: Any, call_id: uuid.UUID) -> CallScreen:
    """Open a call screen over whatever is shown and wait until the call is read."""
    app = pilot.app
    app.push_screen(CallScreen(call_id))
    return await wait_for(pilot, lambda: isinstance(app.screen, CallScreen) and app.screen.view is not None
                          and app.screen, what="the call")


async def loaded(pilot: Any, screen: CallScreen, condition: Any, what: str) -> None:
    await wait_for(pilot, lambda: pilot.app.screen is screen and screen.view is not None and condition(screen.view),
                   what=what)


def status_of(form: Any) -> str:
    return str(form.query_one("#form-status", Static).render())


# -- opening -------------------------------------------------------------------------------------------


async def test_enter_on_a_call_in_the_member_screen_shows_every_field_the_full_notes_and_its_flags(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    call = desk.log_call({"member_id": known.id, "call_type": "support", "call_status": "completed",
                          "started_at": datetime(2025, 3, 1, 14, 0), "ended_at": datetime(2025, 3, 1, 14, 12),
                          "outcome": "reached", "call_notes": LONG_NOTES, "follow_up_required": True,
                          "follow_up_date": date(2025, 3, 8)})
    flag = desk.raise_flag(call.id, risk_type="medical", severity="high", description="Ran out of insulin")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        member_screen = await open_member(pilot, known.id)
        member_screen.query_one("#calls-table", DataTable).focus()
        await pilot.press("enter")
        screen = await wait_for(pilot, lambda: isinstance(app.screen, CallScreen) and app.screen.view is not None
                                and app.screen, what="the call screen")
        assert screen.call_id == call.id
        title = str(screen.query_one("#call-title", Static).render())
        assert title == f"Support call with {known.label}  ·  completed"
        fields = str(screen.query_one("#call-fields", Static).render())
        for label, value in (("Scheduled (UTC)", "—"), ("Started (UTC)", "2025-03-01 14:00"),
                             ("Ended (UTC)", "2025-03-01 14:12"), ("Duration", "12 min 00 s"),
                             ("Outcome", "reached"), ("Follow-up", "required by 2025-03-08"),
                             ("Specialist", desk.display_name), ("Logged by", f"{desk.display_name}, 20")):
            assert re.search(rf"{re.escape(label)}\s+{re.escape(value)}", fields), (label, fields)
        # The full notes, wrapped in a box that scrolls (not cut to a table cell).
        notes = str(screen.query_one("#call-notes", Static).render())
        assert notes == LONG_NOTES
        box = screen.query_one("#call-notes-box")
        # The call has a flag: its table has the focus, so Enter opens it at once; the notes are a Tab away.
        assert app.focused is screen.query_one("#call-flags", DataTable)
        await wait_for(pilot, lambda: box.max_scroll_y > 0, what="the notes to scroll")
        assert table_rows(screen, "call-flags") == [[
            show(flag.created_at), "high", "medical", "open", "Ran out of insulin"]]
        # A completed call of one's own: no steps, but its notes can be edited and a flag raised.
        assert shown_keys(screen) == {"edit_notes", "raise_flag", "open_member"}

        # Enter on the flag opens it.
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "FlagScreen", what="the flag screen")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen)

        # m goes back to the member the call was opened from (not a second copy of their file).
        await pilot.press("m")
        await wait_for(pilot, lambda: app.screen is member_screen)
        assert not any(isinstance(s, CallScreen) for s in app.screen_stack)


async def test_a_call_from_the_worklist_is_completed_with_a_follow_up_and_the_next_attempt_and_leaves_today(
        tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    specialist = desk.specialist()
    call = desk.schedule_call(known.id, now_utc() + timedelta(minutes=3), call_type="follow_up",
                              notes="Ask about the inhaler.")
    # On today's list whatever the hour the test runs (3 minutes ahead was tomorrow's at 23:57 UTC): moved,
    # as if the morning had passed without it, to the first minute of today.
    start_of_today = datetime.combine(now_utc().date(), datetime.min.time()) + timedelta(minutes=1)
    tui.execute("platform", "UPDATE call_records SET scheduled_at = :at WHERE id = :c", at=start_of_today, c=call.id)
    follow_up = (now_utc() + timedelta(days=7)).date()
    next_attempt = now_utc().replace(hour=10, minute=30) + timedelta(days=14)
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        worklist = await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen) and app.screen)
        await wait_for(pilot, lambda: call.id in {item.call_id for item in worklist.items.get("today", [])},
                       what="the call on today's list")
        await wait_for(pilot, lambda: app.live_listening, what="the live-update listener")
        table = worklist.query_one("#table-today", DataTable)
        table.focus()
        table.move_cursor(row=[item.call_id for item in worklist.items["today"]].index(call.id))
        # o opens the member behind the row; Enter the call itself.
        await pilot.press("o")
        member_screen = await wait_for(pilot, lambda: isinstance(app.screen, MemberDetailScreen) and app.screen,
                                       what="the member")
        assert member_screen.member_id == known.id
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is worklist)
        await pilot.press("enter")
        screen = await wait_for(pilot, lambda: isinstance(app.screen, CallScreen) and app.screen.view is not None
                                and app.screen, what="the call screen")
        assert screen.call_id == call.id
        assert shown_keys(screen) == {"complete", "reschedule", "cancel_call", "no_answer", "edit_notes",
                                      "open_member"}
        await pilot.press("c")
        form = await wait_for(pilot, lambda: isinstance(app.screen, CompleteCallForm) and app.screen)
        assert form.query_one("#field-call_notes", TextArea).text == "Ask about the inhaler."
        started = datetime.strptime(form.input_value("started_at"), "%Y-%m-%d %H:%M")
        assert abs(started - now_utc()) <= timedelta(minutes=1) and form.input_value("ended_at")
        set_input(form, "started_at", typed(now_utc() - timedelta(minutes=20)))
        set_input(form, "ended_at", typed(now_utc() - timedelta(minutes=5)))
        set_input(form, "outcome", "reached")
        form.query_one("#field-follow_up_required", Checkbox).value = True
        set_input(form, "follow_up_date", follow_up.isoformat())
        form.query_one("#field-call_notes", TextArea).text = "Ask about the inhaler.\nUses it twice a day."
        set_input(form, "next_attempt", typed(next_attempt))
        await pilot.pause()
        assert "Duration: 15 min 00 s" in str(form.query_one("#call-duration", Static).render())
        await pilot.press("ctrl+s")
        await loaded(pilot, screen, lambda view: view.call.call_status == "completed", "the completed call")
        assert shown_keys(screen) == {"edit_notes", "raise_flag", "open_member"}
        assert re.search(r"Duration\s+15 min 00 s", str(screen.query_one("#call-fields", Static).render()))
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is worklist)
        # Done: off today's list at once (the repository lists only scheduled calls there).
        await wait_for(pilot, lambda: call.id not in {item.call_id for item in worklist.items.get("today", [])},
                       what="the call to leave today's list")

    row = call_row(tui, call.id)
    assert (row.call_status, row.outcome, row.follow_up_required, row.follow_up_date, row.duration_seconds) == (
        "completed", "reached", True, follow_up, 900)
    assert row.call_notes == "Ask about the inhaler.\nUses it twice a day."
    [nxt] = tui.rows("platform", "SELECT * FROM call_records WHERE member_id = :m AND id <> :c", m=known.id,
                     c=call.id)
    assert (nxt.call_status, nxt.call_type, nxt.scheduled_at, nxt.specialist_id) == (
        "scheduled", "follow_up", next_attempt, specialist.id)
    assert audit_actions(tui, call.id, desk.user_id) == ["create", "update"]
    assert audit_actions(tui, nxt.id, desk.user_id) == ["create"]


# -- the other steps ------------------------------------------------------------------------------------


async def test_reschedule_cancel_and_no_answer_each_save_and_refuse_what_the_rules_refuse(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    base = now_utc() + timedelta(days=2)
    moved, cancelled, missed = (desk.schedule_call(known.id, base + timedelta(hours=hours)) for hours in (1, 2, 3))
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))

        # Reschedule: into the past is refused next to the field; then moved, with a reason.
        screen = await open_call(pilot, moved.id)
        await pilot.press("s")
        form = await wait_for(pilot, lambda: isinstance(app.screen, RescheduleCallForm) and app.screen)
        assert form.input_value("scheduled_at") == typed(moved.scheduled_at)
        set_input(form, "scheduled_at", "2020-01-01 10:00")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: form.field_errors(), what="the scheduled_past rule")
        assert list(form.field_errors()) == ["scheduled_at"]
        assert form.field_errors()["scheduled_at"].startswith("A call can only be scheduled for a time still to come")
        new_time = base + timedelta(days=1)
        set_input(form, "scheduled_at", typed(new_time))
        set_input(form, "reason", "member asked for the afternoon")
        await pilot.press("ctrl+s")
        await loaded(pilot, screen, lambda view: view.call.scheduled_at == new_time, "the rescheduled call")
        assert "member asked for the afternoon" in str(screen.query_one("#call-notes", Static).render())
        await pilot.press("escape")

        # Cancel: a reason is required; a next attempt in the past is refused next to that field.
        screen = await open_call(pilot, cancelled.id)
        await pilot.press("x")
        form = await wait_for(pilot, lambda: isinstance(app.screen, CancelCallForm) and app.screen)
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert form.field_errors() == {"reason": "Say why (a few words are enough)."}
        set_input(form, "reason", "member is in hospital this week")
        set_input(form, "next_attempt", "2020-01-01 10:00")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "next_attempt" in form.field_errors(), what="the next attempt's rule")
        assert form.field_errors()["next_attempt"].startswith("A call can only be scheduled for a time still to come")
        assert call_row(tui, cancelled.id).call_status == "scheduled"  # one transaction: nothing was saved
        set_input(form, "next_attempt", typed(base + timedelta(days=7)))
        await pilot.press("ctrl+s")
        await loaded(pilot, screen, lambda view: view.call.call_status == "cancelled", "the cancelled call")
        await pilot.press("escape")

        # No answer: an attempt in the future is refused (not_future) next to its field.
        screen = await open_call(pilot, missed.id)
        await pilot.press("n")
        form = await wait_for(pilot, lambda: isinstance(app.screen, NoAnswerForm) and app.screen)
        set_input(form, "started_at", "2099-01-01 10:00")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: form.field_errors(), what="the not_future rule")
        assert list(form.field_errors()) == ["started_at"]
        assert "unanswered call cannot start in the future" in form.field_errors()["started_at"]
        set_input(form, "started_at", typed(now_utc()))
        form.query_one("#field-call_notes", TextArea).text = "Left a voicemail."
        await pilot.press("ctrl+s")
        await loaded(pilot, screen, lambda view: view.call.call_status == "no_answer", "the unanswered call")
        assert shown_keys(screen) == {"edit_notes", "raise_flag", "open_member"}

    row = call_row(tui, moved.id)
    assert (row.call_status, row.scheduled_at, row.outcome) == ("scheduled", new_time, "rescheduled")
    assert "member asked for the afternoon" in row.call_notes
    row = call_row(tui, cancelled.id)
    assert (row.call_status, row.outcome) == ("cancelled", "cancelled")
    assert "Cancelled: member is in hospital this week" in row.call_notes
    row = call_row(tui, missed.id)
    assert (row.call_status, row.outcome) == ("no_answer", "no answer") and row.started_at is not None
    assert row.call_notes.endswith("Left a voicemail.")
    assert tui.scalar("platform", "SELECT count(*) FROM call_records WHERE member_id = :m AND scheduled_at = :t "
                      "AND call_status = 'scheduled'", m=known.id, t=base + timedelta(days=7)) == 1
    for call in (moved, cancelled, missed):
        assert audit_actions(tui, call.id, desk.user_id) == ["create", "update"]


async def test_completing_in_the_future_shows_every_problem_at_once_and_each_goes_when_its_field_is_edited(
        tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    call = desk.schedule_call(known.id, now_utc() + timedelta(hours=1))
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
        screen = await open_call(pilot, call.id)
        await pilot.press("c")
        form = await wait_for(pilot, lambda: isinstance(app.screen, CompleteCallForm) and app.screen)
        assert isinstance(form, CompleteCallForm)
        set_input(form, "started_at", "2099-01-01 10:00")
        set_input(form, "ended_at", "2099-01-01 10:30")
        form.query_one("#field-follow_up_required", Checkbox).value = True
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: len(form.field_errors()) == 3, what="every problem")
        errors = form.field_errors()
        assert errors["started_at"].startswith("A completed call cannot start in the future")
        assert errors["ended_at"].startswith("A completed call cannot end in the future")
        assert errors["follow_up_date"] == "A follow-up date is required when a follow-up is required."
        assert "marked fields" in status_of(form) and app.screen is form
        set_input(form, "ended_at", typed(now_utc()))
        await pilot.pause()
        assert set(form.field_errors()) == {"started_at", "follow_up_date"}
        set_input(form, "started_at", typed(now_utc() - timedelta(minutes=10)))
        form.query_one("#field-follow_up_required", Checkbox).value = False
        await pilot.pause()
        assert form.field_errors() == {"follow_up_date": "A follow-up date is required when a follow-up is required."}
        await pilot.press("ctrl+s")
        await loaded(pilot, screen, lambda view: view.call.call_status == "completed", "the completed call")
    assert call_row(tui, call.id).duration_seconds == 600


async def test_schedule_a_call_from_the_member_screen(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    when = now_utc() + timedelta(days=3)
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await pilot.press("s")
        form = await wait_for(pilot, lambda: isinstance(app.screen, ScheduleCallForm) and app.screen)
        set_input(form, "scheduled_at", "2021-05-05 09:00")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: form.field_errors(), what="the scheduled_past rule")
        assert form.field_errors()["scheduled_at"].startswith("A call can only be scheduled for a time still to come")
        set_input(form, "scheduled_at", typed(when))
        form.query_one("#field-call_notes", TextArea).text = "Check the refill went through."
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen and table_rows(screen, "calls-table"), what="the call")
        assert table_rows(screen, "calls-table")[0][:3] == [typed(when), "follow up", "scheduled"]
    [row] = tui.rows("platform", "SELECT * FROM call_records WHERE member_id = :m", m=known.id)
    assert (row.call_status, row.scheduled_at, row.specialist_id, row.call_notes) == (
        "scheduled", when, desk.specialist().id, "Check the refill went through.")
    assert audit_actions(tui, row.id, desk.user_id) == ["create"]


async def test_own_notes_are_edited_and_another_specialists_are_refused(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist", 0)
    other = tui.sign_in("specialist", 1)
    mine = desk.log_call({"member_id": known.id, "call_type": "support", "call_status": "completed",
                          "started_at": datetime(2025, 3, 1, 14, 0), "call_notes": "First words."})
    theirs = other.log_call({"member_id": known.id, "call_type": "support", "call_status": "completed",
                             "started_at": datetime(2025, 3, 2, 14, 0), "call_notes": "Their words."})
    desk = tui.sign_in("specialist", 0)  # the stored session is the last one started
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
        screen = await open_call(pilot, mine.id)
        await pilot.press("e")
        form = await wait_for(pilot, lambda: isinstance(app.screen, EditCallNotesForm) and app.screen)
        form.query_one("#field-call_notes", TextArea).text = "First words, corrected."
        await pilot.press("ctrl+s")
        await loaded(pilot, screen, lambda view: view.call.call_notes == "First words, corrected.", "the notes")
        await pilot.press("escape")

        screen = await open_call(pilot, theirs.id)
        assert "edit_notes" not in shown_keys(screen) and screen.view is not None and not screen.view.is_own
        await pilot.press("e")
        await pilot.pause()
        assert app.screen is screen
        screen.action_edit_notes()  # asked directly (the palette, a script): refused politely
        await pilot.pause()
        assert any("Only the specialist who logged a call" in str(n.message) for n in app._notifications)
        # Even past the screen (a stale screen, a script), the data layer refuses, and audits the attempt.
        app.push_screen(EditCallNotesForm(screen.view.call, screen.view.member_name))
        form = await wait_for(pilot, lambda: isinstance(app.screen, EditCallNotesForm) and app.screen)
        form.query_one("#field-call_notes", TextArea).text = "Not my words."
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "Not saved" in status_of(form), what="the refusal")
        assert "only the specialist who logged a call can edit its notes" in status_of(form)
        assert form.query_one("#field-call_notes", TextArea).text == "Not my words."
    assert call_row(tui, mine.id).call_notes == "First words, corrected."
    assert call_row(tui, theirs.id).call_notes == "Their words."
    assert audit_actions(tui, theirs.id, desk.user_id) == ["deny"]


async def test_steps_are_hidden_on_a_call_that_is_not_scheduled_and_refused_if_asked_anyway(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    done = desk.log_call({"member_id": known.id, "call_type": "outreach", "call_status": "completed",
                          "started_at": datetime(2025, 3, 1, 14, 0)})
    planned = desk.schedule_call(known.id, now_utc() + timedelta(days=1))
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
        screen = await open_call(pilot, done.id)
        for key in ("c", "s", "x", "n"):
            await pilot.press(key)
            await pilot.pause()
            assert app.screen is screen, key
        screen.action_complete()  # asked directly (the palette, a script): refused politely
        await pilot.pause()
        assert any("Only a scheduled call can be completed" in str(n.message) for n in app._notifications)
        # And the data layer refuses a form opened on a call that was scheduled when read.
        app.push_screen(CompleteCallForm(done, known.label))
        form = await wait_for(pilot, lambda: isinstance(app.screen, CompleteCallForm) and app.screen)
        set_input(form, "started_at", typed(now_utc() - timedelta(minutes=2)))
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "Not saved" in status_of(form), what="the refusal")
        assert "Only a scheduled call can be completed; this call is completed already" in status_of(form)
        await pilot.press("escape", "escape")  # typed changes: the second Esc throws them away
        await wait_for(pilot, lambda: app.screen is screen)
        await pilot.press("escape")

        # No flag from a call that has not taken place.
        screen = await open_call(pilot, planned.id)
        assert "raise_flag" not in shown_keys(screen)
        await pilot.press("f")
        await pilot.pause()
        assert app.screen is screen
    assert audit_actions(tui, done.id, desk.user_id) == ["create"]


async def test_an_auditor_sees_the_call_but_no_step(tui) -> None:
    known = make_member(tui)
    specialist = tui.sign_in("specialist")
    call = specialist.schedule_call(known.id, now_utc() + timedelta(days=1), notes="Planned by a specialist.")
    desk = tui.sign_in("auditor")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
        screen = await open_call(pilot, call.id)
        assert shown_keys(screen) == {"open_member"}
        assert "call.complete" not in {binding.binding.id for binding in screen.active_bindings.values()}
        assert "Planned by a specialist." in screen_text(screen)


# -- concurrency, live updates, lock, layout ------------------------------------------------------------


async def test_a_change_made_elsewhere_between_open_and_save_is_a_conflict_naming_who_and_keeps_the_form(
        tui) -> None:
    known = make_member(tui)
    supervisor = tui.sign_in("supervisor")
    desk = tui.sign_in("specialist")
    call = desk.schedule_call(known.id, now_utc() + timedelta(days=1))
    moved_to = now_utc() + timedelta(days=2)
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
        await wait_for(pilot, lambda: app.live_listening, what="the live-update listener")
        screen = await open_call(pilot, call.id)
        await pilot.press("c")
        form = await wait_for(pilot, lambda: isinstance(app.screen, CompleteCallForm) and app.screen)
        assert isinstance(form, CompleteCallForm)
        set_input(form, "outcome", "reached")
        form.query_one("#field-call_notes", TextArea).text = "What I typed."
        supervisor.reschedule_call(call.id, call.updated_at, moved_to, "covering for a colleague")
        await wait_for(pilot, lambda: "Another session has just changed this call" in status_of(form),
                       what="the form to say the call changed")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "Not saved" in status_of(form), what="the conflict")
        changed_at = call_row(tui, call.id).updated_at
        assert supervisor.display_name in status_of(form)
        assert f"{changed_at:%Y-%m-%d %H:%M:%S} UTC" in status_of(form)
        assert app.screen is form and form.input_value("outcome") == "reached"
        assert form.query_one("#field-call_notes", TextArea).text == "What I typed."
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is form  # typed changes: a second Esc is needed
        await pilot.press("escape")
        # The call screen underneath read the change meanwhile (or on the way back).
        await loaded(pilot, screen, lambda view: view.call.scheduled_at == moved_to, "the change")
    row = call_row(tui, call.id)
    assert (row.call_status, row.scheduled_at) == ("scheduled", moved_to)
    assert audit_actions(tui, call.id, desk.user_id) == ["create"]


async def test_the_lock_clears_the_call_and_the_unlock_reads_it_again(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    call = desk.schedule_call(known.id, now_utc() + timedelta(days=1), notes="Private words")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
        screen = await open_call(pilot, call.id)
        assert "Private words" in screen_text(screen) and "Zybrowski" in screen_text(screen)
        app.lock("Locked.")
        await pilot.pause()
        assert "Private words" not in screen_text(screen) and "Zybrowski" not in screen_text(screen)
        assert screen.view is None
        app.signed_in(desk)
        await loaded(pilot, screen, lambda view: True, "the call again")
        assert "Private words" in screen_text(screen)


async def test_the_call_screen_and_its_forms_fit_80x24(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    call = desk.schedule_call(known.id, now_utc() + timedelta(days=1), notes=LONG_NOTES)
    app = app_for(tui, desk)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen))
        screen = await open_call(pilot, call.id)
        for widget_id in ("#call-title", "#call-fields", "#call-notes-box"):
            region = screen.query_one(widget_id).region
            assert region.right <= 80 and region.bottom <= 23 and region.height, widget_id
        assert screen.query_one("#call-notes-box").region.height >= 5
        view = screen.view
        assert view is not None
        for form in (CompleteCallForm(view.call, known.label), RescheduleCallForm(view.call, known.label),
                     CancelCallForm(view.call, known.label), NoAnswerForm(view.call, known.label),
                     EditCallNotesForm(view.call, known.label), ScheduleCallForm(known.id, known.label)):
            app.push_screen(form)
            await wait_for(pilot, lambda: app.screen is form)
            for button in form.query(Button).results(Button):
                assert button.region.bottom <= 24 and button.region.right <= 80 and button.region.height
            app.pop_screen()
            await wait_for(pilot, lambda: app.screen is screen)


async def test_the_member_screen_under_a_call_follows_a_step_taken_on_it(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    call = desk.schedule_call(known.id, now_utc() + timedelta(days=1))
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        member_screen = await open_member(pilot, known.id)
        await wait_for(pilot, lambda: app.live_listening, what="the live-update listener")
        assert table_rows(member_screen, "calls-table")[0][2] == "scheduled"
        member_screen.query_one("#calls-table", DataTable).focus()
        await pilot.press("enter")
        screen = await wait_for(pilot, lambda: isinstance(app.screen, CallScreen) and app.screen.view is not None
                                and app.screen, what="the call screen")
        await pilot.press("n")
        form = await wait_for(pilot, lambda: isinstance(app.screen, NoAnswerForm) and app.screen)
        set_input(form, "next_attempt", typed(now_utc() + timedelta(days=2)))
        await pilot.press("ctrl+s")
        await loaded(pilot, screen, lambda view: view.call.call_status == "no_answer", "the unanswered call")
        # The step was this app's own write, made from a screen over the member's: the file follows it
        # (read at once, or when shown again).
        await wait_for(pilot, lambda: member_screen.file is not None and member_screen.file.calls
                       and {c.call_status for c in member_screen.file.calls} == {"no_answer", "scheduled"},
                       what="the member screen to read the change")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is member_screen and len(member_screen._calls) == 2
                       and member_screen._calls[str(call.id)].call_status == "no_answer", what="the reload")
        assert sorted(row[2] for row in table_rows(member_screen, "calls-table")) == ["no answer", "scheduled"]


async def test_enter_on_an_urgent_flag_in_the_worklist_opens_the_flag_and_a_flag_is_raised_from_a_call(
        tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    call = desk.log_call({"member_id": known.id, "call_type": "outreach", "call_status": "completed",
                          "started_at": datetime(2025, 3, 1, 14, 0)})
    flag = desk.raise_flag(call.id, risk_type="safety", severity="critical", description="Lives alone, fell twice")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        worklist = await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen) and app.screen)
        await wait_for(pilot, lambda: flag.id in {item.flag_id for item in worklist.items.get("flags", [])},
                       what="the urgent flag")
        worklist.query_one("#worklist-tabs").active = "tab-flags"
        table = worklist.query_one("#table-flags", DataTable)
        table.focus()
        table.move_cursor(row=[item.flag_id for item in worklist.items["flags"]].index(flag.id))
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "FlagScreen", what="the flag screen")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is worklist)

        # f on the call raises another flag from it; the call's flags follow.
        screen = await open_call(pilot, call.id)
        await pilot.press("f")
        form = await wait_for(pilot, lambda: isinstance(app.screen, FlagFormScreen) and app.screen)
        assert form.call.id == call.id
        form.query_one("#field-risk_type", Select).value = "medical"
        form.query_one("#field-severity", Select).value = "low"
        form.query_one("#field-description", TextArea).text = "Needs a new glucose meter"
        await pilot.press("ctrl+s")
        await loaded(pilot, screen, lambda view: len(view.flags) == 2, "the new flag")
        assert sorted(row[1] for row in table_rows(screen, "call-flags")) == ["critical", "low"]


async def test_a_member_file_changed_under_a_form_catches_up_when_the_form_closes_over_the_call(tui) -> None:
    """Member file → call → a form over both: a change to the member made elsewhere meanwhile leaves the file
    stale (covered). Closing the form shows the file again behind the call; Textual resumes only the call, and
    the file used to stay as it was until the call was closed too."""
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    call = desk.schedule_call(known.id, now_utc() + timedelta(days=1))
    elsewhere = tui.sign_in("specialist")  # another session of the same specialist
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        member_screen = await open_member(pilot, known.id)
        await wait_for(pilot, lambda: app.live_listening, what="the live-update listener")
        member_screen.query_one("#calls-table", DataTable).focus()
        await pilot.press("enter")
        call_screen = await wait_for(pilot, lambda: isinstance(app.screen, CallScreen) and app.screen.view is not None
                                     and app.screen, what="the call screen")
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, NoAnswerForm), what="the form")
        handed = app.live_handed
        other = elsewhere.schedule_call(known.id, now_utc() + timedelta(days=3))
        await wait_for(pilot, lambda: app.live_handed > handed and app.live_idle, what="the notice handed out")
        assert member_screen._stale  # covered by the form: not read yet
        await pilot.press("escape")  # nothing typed: the form closes at once
        await wait_for(pilot, lambda: app.screen is call_screen, what="the call screen again")
        await wait_for(pilot, lambda: member_screen.file is not None
                       and {c.id for c in member_screen.file.calls} == {call.id, other.id},
                       what="the member's file behind the call to read the new call")
        assert app.screen is call_screen

"""No PHI side doors: what the app shows leaves it only through audited paths.

Textual's screenshot command and action, its event log file, timed
screenshot and devtools, a crash report's local variables; system facts shown
as a member's notes; and a reload after one's own save counted as another
access of the record.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime
from pathlib import Path

import pytest
from rich.console import Console
from textual import constants
from textual.command import CommandList
from textual.system_commands import SystemCommandsProvider
from textual.widgets import TabbedContent, TextArea

from carecli.data.unit_of_work import PlatformUnitOfWork
from carecli.screens.app import TEXTUAL_COMMANDS_KEPT
from carecli.screens.call import CallScreen
from carecli.screens.call_forms import EditCallNotesForm
from carecli.screens.forms import NoteDialog
from carecli.screens.worklist import WorklistScreen
from carecli.services.desk import MemberVisit
from tests.tui.conftest import SIZE
from tests.tui.helpers import screen_text, wait_for
from tests.tui.test_live_updates import listening
from tests.tui.test_member_screens import (
    EMAIL,
    LAST_NAME,
    PHONE_SHOWN,
    app_for,
    make_member,
    open_member,
    reads,
    table_rows,
)

CARECLI_COMMANDS = {"Worklist", "Members", "Plans", "Audit log", "Users and roles", "Emergency accesses", "Lock",
                    "Sign out"}
BLIND_INDEX = "11055bd0c4f0e7a9b2d3c1e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8"


def files_under(*folders: Path) -> list[Path]:
    return [path for folder in folders if folder.exists() for path in folder.rglob("*") if path.is_file()]


# -- the command palette and the screenshot ---------------------------------------------------------------


async def test_the_palette_offers_no_screenshot_only_harmless_textual_commands(tui) -> None:
    app = tui.app(tui.sign_in("specialist"))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen), what="the worklist")
        titles = {command.title for command in app.get_system_commands(app.screen)}
        assert "Screenshot" not in titles
        assert titles - CARECLI_COMMANDS <= TEXTUAL_COMMANDS_KEPT and {"Theme", "Quit", "Keys"} <= titles

        provider = SystemCommandsProvider(app.screen)
        assert [hit async for hit in provider.search("Screenshot") if "Screenshot" in str(hit.text)] == []
        # The palette itself, as the user sees it: the commands it lists with nothing typed, then a search.
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: app.screen.query(CommandList) and
                       app.screen.query_one(CommandList).option_count > 0, what="the palette's commands")
        listed = [str(option.prompt) for option in app.screen.query_one(CommandList).options]
        assert any("Theme" in prompt for prompt in listed) and not any("Screenshot" in p for p in listed)
        await pilot.press(*"screensh")
        await pilot.pause(0.5)
        found = [str(option.prompt) for option in app.screen.query_one(CommandList).options]
        assert not any("Screenshot" in prompt for prompt in found)


async def test_the_screenshot_action_cannot_write_a_file(tui, tmp_path: Path, monkeypatch) -> None:
    work, home = tmp_path / "cwd", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DOWNLOAD_DIR", str(home / "Downloads"))
    known = make_member(tui)
    desk = tui.sign_in("supervisor")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        screen._show_revealed(desk.reveal(known.id, ["ssn", "dob"], "testing screenshots"))
        assert app.check_action("screenshot", ()) is False
        await app.run_action("screenshot")
        await app.run_action("app.screenshot('shot.svg', '.')")
        app.action_screenshot("shot.svg", str(work))
        assert app.deliver_screenshot("shot.svg", str(work)) is None
        with pytest.raises(PermissionError, match="Screenshots are turned off"):
            app.save_screenshot("shot.svg", str(work))
        await pilot.pause(0.3)
        assert any("Screenshots are turned off" in str(n.message) for n in app._notifications)
    assert files_under(work, home) == []


async def test_textual_event_log_timed_screenshot_and_devtools_are_off(tui, tmp_path: Path, monkeypatch) -> None:
    """TEXTUAL_LOG would append every event, each key typed included; TEXTUAL_SCREENSHOT writes the screen."""
    log_file, shots = tmp_path / "textual.log", tmp_path / "shots"
    shots.mkdir()
    # What Textual read from TEXTUAL_LOG=..., TEXTUAL_SCREENSHOT=0 and friends when it was imported.
    monkeypatch.setattr(constants, "LOG_FILE", str(log_file))
    monkeypatch.setattr(constants, "SCREENSHOT_DELAY", 0)
    monkeypatch.setattr(constants, "SCREENSHOT_LOCATION", str(shots))
    monkeypatch.setattr(constants, "SCREENSHOT_FILENAME", "screen.svg")
    monkeypatch.setenv("TEXTUAL", "devtools,debug")
    app = tui.app(tui.sign_in("specialist"))
    assert "devtools" not in app.features and app.devtools is None
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen), what="the worklist")
        await pilot.press("f3", *"zybrowski")
        await pilot.pause(0.3)
        assert app.is_running  # a timed screenshot would have ended the app
    assert not log_file.exists() and files_under(shots) == []


async def test_a_crash_report_shows_no_local_values(tui) -> None:
    app = tui.app(tui.sign_in("specialist"))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen), what="the worklist")

        def save_contact() -> None:
            member_email = EMAIL  # noqa: F841 - the kind of local a traceback with locals would print
            raise RuntimeError("the save failed")

        try:
            save_contact()
        except RuntimeError:
            app._fatal_error()  # what Textual calls for an unhandled exception
        console = Console(record=True, width=120)
        for renderable in app._exit_renderables:
            console.print(renderable)
        report = console.export_text()
        app._exit_renderables.clear()
    assert "RuntimeError" in report and "the save failed" in report
    assert EMAIL not in report and "member_email" not in report.split("RuntimeError")[-1]


# -- notes ---------------------------------------------------------------------------------------------------


async def test_the_notes_tab_shows_people_s_notes_never_system_facts(tui) -> None:
    known = make_member(tui)
    admin = tui.sign_in("admin")
    with PlatformUnitOfWork(tui.databases.platform, admin.actor) as uow:
        for key, value in (("ssn_blind_index", BLIND_INDEX), ("external_member_number", "EXT-000042"),
                           ("legal_hold", {"reason": "litigation Zanzibar-17"}),
                           (f"emergency_access:{uuid.uuid4()}", {"reason": "unconscious at the ER"}),
                           ("some_future_fact", "Quokka")):
            uow.metadata.put("member", known.id, key, value)
        uow.commit()
    tui.sign_in("specialist").add_note(known.id, "Prefers calls after 5pm")
    desk = tui.sign_in("auditor")  # no phi:reveal: the blind index (an SSN stand-in) was shown to them too
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await pilot.press("4")
        assert table_rows(screen, "notes-table") == [[table_rows(screen, "notes-table")[0][0],
                                                      "Prefers calls after 5pm"]]
        assert str(screen.query_one("#member-tabs", TabbedContent).get_tab("notes").label) == "Notes (1)"
        text = screen_text(screen)
        for fact in ("ssn_blind_index", BLIND_INDEX[:8], "legal_hold", "Zanzibar", "emergency_access",
                     "unconscious", "some_future_fact", "Quokka"):
            assert fact not in text, fact
        assert "No. EXT-000042" in text  # the member number is still in the header


# -- one visit, one read ----------------------------------------------------------------------------------


async def test_a_reload_after_a_save_is_not_another_read_but_a_new_visit_is(tui) -> None:
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        assert len(reads(tui, known.id, "open")) == 1
        for text in ("First note", "Second note"):
            await pilot.press("n")
            dialog = await wait_for(pilot, lambda: isinstance(app.screen, NoteDialog) and app.screen)
            dialog.query_one("#field-text", TextArea).text = text
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: app.screen is screen and any(
                row[1] == text for row in table_rows(screen, "notes-table")), what="the reloaded file")
        assert LAST_NAME in screen_text(screen) and PHONE_SHOWN in screen_text(screen)
        assert len(reads(tui, known.id, "open")) == 1

        # A call of this member, edited on the call screen opened over the file: back on the file, the
        # reload (prompted by the change notice of that own save) is the same visit too.
        await listening(pilot)
        call = desk.log_call({"member_id": known.id, "call_type": "support", "call_status": "completed",
                              "started_at": datetime(2025, 3, 1, 14, 0), "ended_at": datetime(2025, 3, 1, 14, 12)})
        await pilot.press("ctrl+r")  # asked for: a read that may show others' changes, so audited
        await wait_for(pilot, lambda: table_rows(screen, "calls-table"), what="the call")
        assert len(reads(tui, known.id, "open")) == 2
        screen.query_one("#calls-table").focus()
        await pilot.press("enter")
        call_screen = await wait_for(pilot, lambda: isinstance(app.screen, CallScreen) and app.screen.view
                                     and app.screen)
        assert isinstance(call_screen, CallScreen)
        await pilot.press("e")
        form = await wait_for(pilot, lambda: isinstance(app.screen, EditCallNotesForm) and app.screen)
        form.query_one("#field-call_notes", TextArea).text = "Reached, all good."
        shown = screen.file
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is call_screen and call_screen.view is not None
                       and call_screen.view.call.call_notes
                       == "Reached, all good.", what="the saved notes")
        await wait_for(pilot, lambda: screen.file is not shown and screen.file is not None,
                       what="the file's reload after the change notice")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, what="the file again")
        await pilot.pause(0.3)
        assert call.id and len(reads(tui, known.id, "open")) == 2

        await pilot.press("escape")  # leave, then come back: a new visit
        await wait_for(pilot, lambda: isinstance(app.screen, WorklistScreen), what="the worklist")
        await open_member(pilot, known.id)
        assert len(reads(tui, known.id, "open")) == 3
    assert tui.scalar("platform", "SELECT count(*) FROM audit_logs WHERE entity_id = :m AND action = 'read'",
                      m=known.id) == 3


def test_only_a_visit_this_desk_opened_for_this_member_skips_the_read(tui) -> None:
    known, other = make_member(tui), make_member(tui)
    desk, someone = tui.sign_in("specialist"), tui.sign_in("specialist", 1)

    def opened() -> int:
        return len(reads(tui, known.id, "open"))

    file = desk.open_member(known.id)
    assert opened() == 1 and file.visit is not None and file.visit.member_id == known.id
    again = desk.open_member(known.id, visit=file.visit)
    assert opened() == 1 and again.visit is file.visit
    someone.open_member(known.id, visit=file.visit)  # another desk: its own, audited, visit
    assert opened() == 2
    desk.open_member(known.id, visit=MemberVisit(known.id))  # not handed out by this desk
    assert opened() == 3
    other_file = desk.open_member(other.id, visit=file.visit)  # another member
    assert other_file.visit is not file.visit and len(reads(tui, other.id, "open")) == 1
    assert dataclasses.is_dataclass(file.visit) and repr(file.visit) == f"MemberVisit(member_id={known.id})"


async def test_text_people_typed_is_shown_as_typed_never_as_markup(tui) -> None:
    """A note or an outcome with brackets is data: it neither crashes the screen nor becomes a style or a link."""
    known = make_member(tui)
    desk = tui.sign_in("specialist")
    desk.add_note(known.id, "call back [/b] monday [@click=app.quit]here[/]")
    desk.log_call({"member_id": known.id, "call_type": "support", "call_status": "completed",
                   "started_at": datetime(2025, 3, 1, 14, 0), "ended_at": datetime(2025, 3, 1, 14, 12),
                   "outcome": "[red]reached[/red]"})
    app = app_for(tui, desk)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_member(pilot, known.id)
        await pilot.press("4")
        await pilot.pause(0.3)
        assert app.is_running and app.screen is screen
        assert table_rows(screen, "notes-table")[0][1] == "call back [/b] monday [@click=app.quit]here[/]"
        assert table_rows(screen, "calls-table")[0][4] == "[red]reached[/red]"

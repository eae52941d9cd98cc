"""End to end: the real ``carecli`` in a real terminal (tmux), driven by keystrokes like a person.

The app runs as its own process in a private tmux server (its own socket, so
no other tmux is touched), on a copy of the seeded databases, signing in with
the OpenID Connect device flow against the loopback test provider. The test
only types keys (``send-keys``) and reads the screen (``capture-pane``); before
every batch of keys it waits for specific text, or for the screen to show
where the focus is, never for a fixed time. Afterwards the rows the app
wrote, and their audit entries, are checked in the databases.
"""

from __future__ import annotations

import re
import shlex
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.support.tmux import WIDTH, Screen, TmuxTerminal

#: generous: the machine is shared, and the first start imports Textual and opens both pools
START_TIMEOUT = 60.0
SSN_PATTERN = re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])")

#: the console script of the environment running the tests
CARECLI = Path(sys.executable).with_name("carecli")


def _launcher(tmp_path: Path, env: dict[str, str], rc_file: Path) -> str:
    """A 0600 script that runs carecli as a person would, then records its exit status.

    The environment goes in the file rather than on the command line, so the
    master key is not in any process's arguments.
    """
    lines = ["#!/bin/sh"] + [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    lines.append(f"{shlex.quote(str(CARECLI))}")
    lines.append(f"echo $? > {shlex.quote(str(rc_file))}")
    script = tmp_path / "run-carecli.sh"
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o600)
    return f"sh {shlex.quote(str(script))}"


def _child_env(tui: Any, provider: Any, home: Path) -> dict[str, str]:
    """carecli's environment: the test's databases and provider, and a private home for the session file."""
    for name in ("config", "data", "state", "cache"):
        (home / name).mkdir(parents=True, exist_ok=True)
    return {
        **tui.env,
        "CARECLI_OIDC_ISSUER": provider.issuer,
        "CARECLI_OIDC_CLIENT_ID": provider.client_id,
        "CARECLI_OIDC_AUDIENCE": provider.audience or "",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_STATE_HOME": str(home / "state"),
        "XDG_CACHE_HOME": str(home / "cache"),
        # No OS keyring: the session token goes to a 0600 file under XDG_STATE_HOME, private to this test.
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        "LANG": "C.UTF-8",
        "TERM": "tmux-256color",
    }


def _fill_flag_form(terminal: TmuxTerminal, risk_type: str, severity: str, description: str) -> None:
    """Fill the open flag form by keys: a select's list opens on Enter and typing jumps to a match."""
    terminal.wait_for_highlight_below("Risk type")
    terminal.keys("Enter")
    terminal.wait_for_text("compliance")
    terminal.type(risk_type)
    terminal.keys("Enter")
    terminal.wait_for_no_text("compliance")
    terminal.keys("Tab")
    terminal.wait_for_highlight_below("Severity")
    terminal.keys("Enter")
    terminal.wait_for_text("critical")
    terminal.type(severity)
    terminal.keys("Enter")
    terminal.wait_for_no_text("critical")
    terminal.keys("Tab")
    terminal.wait_for_cursor_at("What was found", rows=(1, 3), width=WIDTH)
    terminal.type(description)
    terminal.wait_for_text(description[:30])


def _member_to_find(tui: Any) -> tuple[Any, str]:
    """A member with no calls or flags yet, and a prefix of their last name that finds only them."""
    candidates = tui.rows(
        "platform",
        "SELECT m.id, m.first_name, m.last_name FROM members m WHERE m.deleted_at IS NULL "
        "AND m.encrypted_ssn IS NOT NULL AND m.last_name ~ '^[A-Za-z]{4,}$' "
        "AND NOT EXISTS (SELECT 1 FROM call_records c WHERE c.member_id = m.id) "
        "AND NOT EXISTS (SELECT 1 FROM risk_flags f WHERE f.member_id = m.id) ORDER BY m.last_name, m.id")
    for member in candidates:
        for length in range(4, len(member.last_name) + 1):
            prefix = member.last_name[:length].lower()
            matches = tui.scalar(
                "platform", "SELECT count(*) FROM members WHERE deleted_at IS NULL "
                "AND (lower(first_name) LIKE :p OR lower(last_name) LIKE :p)", p=prefix + "%")
            if matches == 1:
                return member, prefix
    pytest.fail("the seed has no member whose last name prefix is unique")


def test_a_specialist_signs_in_finds_a_member_logs_a_call_and_raises_a_flag_in_a_real_terminal(
        terminal, tui, oidc_provider, tmp_path) -> None:
    user = tui.user("specialist")
    specialist_id = tui.scalar("platform", "SELECT id FROM specialists WHERE user_id = :u AND deleted_at IS NULL",
                               u=user.id)
    assert specialist_id is not None, "the seeded specialist user has no specialist record"
    member, prefix = _member_to_find(tui)
    listed = f"{member.last_name}, {member.first_name}"
    # Yesterday afternoon (UTC), 12 minutes: completed calls lie in the past.
    started = (datetime.now(timezone.utc) - timedelta(days=1)).replace(hour=14, minute=30, second=0,
                                                                         microsecond=0, tzinfo=None)
    ended = started + timedelta(minutes=12)
    notes = "Reviewed the care plan; member asked about transport."
    description = "Lives alone and missed two pharmacy pick-ups."

    assert CARECLI.exists(), f"no carecli console script next to {sys.executable}"
    rc_file = tmp_path / "carecli.rc"
    home = tmp_path / "home"
    terminal.start(_launcher(tmp_path, _child_env(tui, oidc_provider, home), rc_file))

    # Sign in: the device code on screen, approved at the provider as the specialist.
    code = terminal.wait_for_text(re.compile(r"enter the code\s+([B-Z]{4}-[B-Z]{4})"), START_TIMEOUT).group(1)
    assert oidc_provider.issuer in terminal.last
    oidc_provider.approve(code, user.external_user_id, email=user.email)
    terminal.wait_for_text(re.compile(r"Today \(\d+\+?\)"))
    terminal.wait_for_text("plans:")

    # Find the member: F3 puts the cursor in the search box.
    terminal.keys("F3")
    terminal.wait_for_text(re.compile(r"1–\d+ of (about )?\d"))  # the first page: the browser is mounted
    terminal.type(prefix)
    terminal.wait_for_text(re.compile(r"1–1 of 1\b"))
    [unfocused] = terminal.wait_until(lambda screen: (where := screen.find(listed)) and [screen.background(*where)],
                                      f"{listed!r} in the results")
    terminal.keys("Enter")  # from the search box to the results
    terminal.wait_for_restyle(listed, unfocused)
    terminal.keys("Enter")  # open the member
    terminal.wait_for_text(re.compile(rf"{re.escape(listed)}\s+·"))
    terminal.wait_for_text("Calls (0)")
    assert "SSN •••-••-••••" in terminal.last

    # Log a call: type and status default to outreach / completed; the focus starts on the type,
    # and Tab goes on to status, scheduled, started, ended, notes, outcome.
    terminal.keys("c")
    terminal.wait_for_text(f"Log a call with {listed}")
    terminal.wait_for_highlight_below("Type")
    terminal.keys("Tab", "Tab", "Tab")
    terminal.wait_for_cursor_at("Started (UTC)")
    terminal.type(started.strftime("%Y-%m-%d %H:%M"))
    terminal.keys("Tab")
    terminal.wait_for_cursor_at("Ended (UTC)")
    terminal.type(ended.strftime("%Y-%m-%d %H:%M"))
    terminal.wait_for_text("Duration: 12 min 00 s")
    terminal.keys("Tab")
    terminal.wait_for_cursor_at("Notes", rows=(1, 3), width=WIDTH)
    terminal.type(notes)
    terminal.keys("Tab")
    terminal.wait_for_cursor_at("Outcome")
    terminal.type("reached")
    terminal.wait_for_text(re.compile(r"reached(?!, voicemail)"))  # the value, not the placeholder
    terminal.keys("C-s")
    terminal.wait_for_text("Calls (1)")
    terminal.wait_for_no_text("Log a call with")
    # The new row. Its columns are sometimes left at the headers' widths ("2026-11-24  outr  comple")
    # until the next key press: Textual computes DataTable column widths when the table goes idle
    # (Textualize/textual#4470), so the row is matched either way.
    terminal.wait_for_text(re.compile(
        rf"{started:%Y-%m-%d}( {started:%H:%M})?\s+outr\w*\s+comple\w*\s+12 min\s+reached"))

    # Raise a flag from the selected (only) call. Enter opens a select's list; typing jumps to a match.
    terminal.keys("f")
    terminal.wait_for_text("Raise a risk flag")
    terminal.wait_for_text("Specialist: you")
    _fill_flag_form(terminal, "saf", "high", description)
    terminal.wait_for_text("safety")
    terminal.keys("C-s")
    terminal.wait_for_text("Risk flags (1)")
    terminal.wait_for_no_text("Raise a risk flag")

    terminal.keys("C-q")
    terminal.wait_for_exit()
    assert rc_file.read_text().strip() == "0", f"carecli exited with {rc_file.read_text().strip()}"

    # Quitting is not signing out: the session stays, in a 0600 file in the test's own state directory.
    [session_file] = (home / "state" / "carecli").glob("session-*")
    assert session_file.stat().st_mode & 0o777 == 0o600
    sessions = tui.rows("identity", "SELECT user_agent FROM sessions WHERE user_id = :u AND deleted_at IS NULL",
                        u=user.id)
    assert [row.user_agent.endswith("(tui)") for row in sessions] == [True]

    # The rows the app wrote.
    [call] = tui.rows("platform", "SELECT * FROM call_records WHERE member_id = :m", m=member.id)
    assert (call.specialist_id, call.call_type, call.call_status) == (specialist_id, "outreach", "completed")
    assert (call.started_at, call.ended_at, call.duration_seconds) == (started, ended, 12 * 60)
    assert (call.call_notes, call.outcome, call.scheduled_at) == (notes, "reached", None)
    [flag] = tui.rows("platform", "SELECT * FROM risk_flags WHERE call_record_id = :c", c=call.id)
    assert (flag.member_id, flag.specialist_id) == (member.id, specialist_id)
    assert (flag.risk_type, flag.severity, flag.description) == ("safety", "high", description)

    # Their audit entries, written by the signed-in user from the terminal app.
    audit = tui.rows("platform", "SELECT entity_type, entity_id, action, new_values->>'purpose' AS purpose, "
                     "user_agent FROM audit_logs WHERE user_id = :u ORDER BY created_at", u=user.id)
    done = [(row.entity_type, row.entity_id, row.action) for row in audit]
    assert done.count(("user", user.id, "login")) == 1
    assert done.count(("call_record", call.id, "create")) == 1
    assert done.count(("risk_flag", flag.id, "create")) == 1
    # Opening the member is an audited read (the file is read again after each save).
    assert {row.purpose for row in audit if (row.entity_type, row.entity_id, row.action) ==
            ("member", member.id, "read")} == {"open"}
    mine = [row for row in audit if (row.entity_id in (call.id, flag.id, member.id)) or row.action == "login"]
    assert all((row.user_agent or "").endswith("(tui)") for row in mine), [row.user_agent for row in mine]

    # SSN and date of birth were never revealed: neither the member's SSN nor anything like one reached the screen.
    assert tui.scalar("platform", "SELECT count(*) FROM audit_logs WHERE entity_type = 'member' AND "
                      "entity_id = :m AND action = 'read' AND new_values->>'purpose' = 'reveal'", m=member.id) == 0
    assert not [screen for screen in terminal.screens if SSN_PATTERN.search(screen)]
    ssn = tui.sign_in("specialist").reveal(member.id, ("ssn",), "checking the e2e test's screens").ssn
    assert ssn is not None
    digits = ssn.reveal().replace("-", "")
    assert not [screen for screen in terminal.screens
                if digits in screen or ssn.formatted() in screen]


def _start_of_local_today_utc() -> datetime:
    """The first moment of today in this machine's zone, as the naive UTC the database keeps."""
    local = datetime.now().astimezone()
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return start.astimezone(timezone.utc).replace(tzinfo=None)


def test_a_specialists_day_completes_a_call_raises_and_resolves_a_flag_and_corrects_the_member(
        terminal, tui, oidc_provider, tmp_path) -> None:
    """Today's first scheduled call, opened from the worklist, completed with a follow-up; a flag raised
    from it and resolved; the member's phone corrected; then the rows and their audit entries."""
    user = tui.user("specialist")
    specialist_id = tui.scalar("platform", "SELECT id FROM specialists WHERE user_id = :u AND deleted_at IS NULL",
                               u=user.id)
    member, _prefix = _member_to_find(tui)
    listed = f"{member.last_name}, {member.first_name}"
    # Scheduled for the first moment of today, as the importer of the day's schedule left it (written as
    # legacy data: the rules only refuse a *new* call scheduled in the past), so it is the first row of Today.
    call_id = uuid.uuid4()
    scheduled = _start_of_local_today_utc()
    with tui.databases.platform.begin() as connection:
        connection.execute(text("UPDATE members SET created_at = :since WHERE id = :m"),
                           {"since": datetime(2020, 1, 1), "m": member.id})
        connection.execute(text(
            "INSERT INTO call_records (id, member_id, specialist_id, call_type, call_status, scheduled_at) "
            "VALUES (:id, :m, :s, 'outreach', 'scheduled', :at)"), {"id": call_id, "m": member.id,
                                                                    "s": specialist_id, "at": scheduled})
    follow_up = (datetime.now(timezone.utc) + timedelta(days=7)).date()
    notes = "Went through the new inhaler schedule."
    description = "Cannot afford the inhaler co-pay this month."
    resolution = "Enrolled in the co-pay assistance programme."

    rc_file = tmp_path / "carecli.rc"
    home = tmp_path / "home"
    terminal.start(_launcher(tmp_path, _child_env(tui, oidc_provider, home), rc_file))
    code = terminal.wait_for_text(re.compile(r"enter the code\s+([B-Z]{4}-[B-Z]{4})"), START_TIMEOUT).group(1)
    oidc_provider.approve(code, user.external_user_id, email=user.email)

    # The worklist opens on Today, its table focused: Enter on the first row opens that call.
    terminal.wait_for_text(re.compile(r"Today \(\d+\+?\)"))
    terminal.wait_until(lambda screen: (where := screen.find(listed)) is not None and where[0] <= 6,
                        f"{listed!r} on the first row of Today")
    terminal.keys("Enter")
    terminal.wait_for_text(f"Outreach call with {listed}")
    terminal.wait_for_text("c Complete")

    # Complete it: started/ended default to now; the focus starts on the outcome.
    terminal.keys("c")
    terminal.wait_for_text(f"Complete the call with {listed}")
    terminal.wait_for_cursor_at("Outcome")
    terminal.type("reached")
    terminal.keys("Tab", "Tab")
    terminal.wait_for_cursor_at("Follow-up date")
    terminal.type(follow_up.isoformat())
    terminal.keys("Tab")
    terminal.wait_for_cursor_at("Notes", rows=(1, 3), width=WIDTH)
    terminal.type(notes)
    terminal.wait_for_text(notes[:30])
    terminal.keys("C-s")
    terminal.wait_for_no_text("Complete the call with")
    terminal.wait_for_text(re.compile(rf"{re.escape(listed)}\s+·\s+completed"))
    terminal.wait_for_text(follow_up.isoformat())

    # Raise a flag from it, on the call screen.
    terminal.keys("f")
    terminal.wait_for_text("Raise a risk flag")
    _fill_flag_form(terminal, "fin", "high", description)
    terminal.keys("C-s")
    terminal.wait_for_no_text("Raise a risk flag")
    terminal.wait_for_text("Risk flags raised from this call (1)")

    # Open the flag (Enter on its row) and resolve it with a note.
    terminal.wait_for_text(re.compile(r"high\s+financial\s+open"))
    terminal.keys("Enter")
    terminal.wait_for_text("State:   OPEN")
    terminal.keys("v")
    terminal.wait_for_text("Resolve")
    terminal.wait_for_cursor_at("How was it resolved", rows=(1, 3), width=WIDTH)
    terminal.type(resolution)
    terminal.wait_for_text(resolution[:30])
    terminal.keys("C-s")
    terminal.wait_for_text(re.compile(r"State:\s+resolved"))

    # Correct the member's phone: m opens the member, u the edit form (first name first, phone fourth).
    terminal.keys("m")
    terminal.wait_for_text(re.compile(rf"{re.escape(listed)}\s+·"))
    terminal.keys("u")
    terminal.wait_for_text(f"Edit {listed}")
    terminal.wait_for_cursor_at("First name")
    terminal.keys("Tab", "Tab", "Tab")

    def in_phone_field(screen: Screen) -> bool:
        # The form's "Phone" label shares its line with "E-mail" (the header above says "Phone" too).
        labels = next((row for row, line in enumerate(screen.rows) if "E-mail" in line and "Phone" in line), None)
        if labels is None:
            return False
        row, column = terminal.cursor()
        return row == labels + 1 and column >= screen.rows[labels].index("Phone")
    terminal.wait_until(in_phone_field, "the cursor in the phone field")
    terminal.keys("End", "C-u")  # the cursor to the end, then everything before it deleted
    terminal.wait_until(lambda screen: "(555) 123-4567" in screen.rows[terminal.cursor()[0]],
                        "the phone field emptied (its placeholder shown)")
    terminal.type("503.555.0177")
    terminal.wait_for_text("503.555.0177")  # typed into the field before ctrl+s is pressed
    terminal.keys("C-s")
    terminal.wait_for_no_text(f"Edit {listed}")
    terminal.wait_for_text("Phone (503) 555-0177")

    terminal.keys("C-q")
    terminal.wait_for_exit()
    assert rc_file.read_text().strip() == "0", f"carecli exited with {rc_file.read_text().strip()}"

    # The rows as the day left them.
    [call] = tui.rows("platform", "SELECT * FROM call_records WHERE id = :c", c=call_id)
    assert (call.call_status, call.outcome, call.call_notes) == ("completed", "reached", notes)
    assert call.follow_up_required is True and call.follow_up_date == follow_up
    assert call.started_at is not None and call.started_at <= datetime.now(timezone.utc).replace(tzinfo=None)
    [flag] = tui.rows("platform", "SELECT * FROM risk_flags WHERE call_record_id = :c", c=call_id)
    assert (flag.member_id, flag.specialist_id, flag.risk_type, flag.severity, flag.description) == (
        member.id, specialist_id, "financial", "high", description)
    [resolved] = tui.rows("platform", "SELECT metadata_value FROM metadata WHERE entity_type = 'risk_flag' AND "
                          "entity_id = :f AND metadata_key = 'resolution' AND deleted_at IS NULL", f=flag.id)
    assert resolved.metadata_value["note"] == resolution and resolved.metadata_value["by"] == str(user.id)
    assert tui.scalar("platform", "SELECT phone FROM members WHERE id = :m", m=member.id) == "+15035550177"

    # Each step's audit row, by the specialist from the terminal app, with no PHI value in it.
    audit = tui.rows("platform", "SELECT entity_type, entity_id, action, old_values, new_values, user_agent "
                     "FROM audit_logs WHERE user_id = :u AND action <> 'read' ORDER BY created_at", u=user.id)
    steps = [(row.entity_type, row.entity_id, row.action) for row in audit]
    assert ("call_record", call_id, "update") in steps
    assert ("risk_flag", flag.id, "create") in steps
    assert ("risk_flag", flag.id, "update") in steps
    assert ("member", member.id, "update") in steps
    by_step = {(row.entity_type, row.entity_id, row.action): row for row in audit}
    completed = by_step[("call_record", call_id, "update")]
    assert completed.old_values["call_status"] == "scheduled" and completed.new_values["call_status"] == "completed"
    assert completed.new_values["call_notes"] == "[redacted]"
    assert by_step[("risk_flag", flag.id, "update")].new_values == {"resolution": "resolved"}
    corrected = by_step[("member", member.id, "update")]
    assert corrected.old_values == {"phone": "[redacted]"} and corrected.new_values == {"phone": "[redacted]"}
    assert all((row.user_agent or "").endswith("(tui)") for row in audit)
    assert not [screen for screen in terminal.screens if SSN_PATTERN.search(screen)]


def _style(screen: Screen, text: str) -> str | None:
    """The background of the cell where ``text`` starts (a table's cursor row has its own)."""
    where = screen.find(text)
    return screen.background(*where) if where is not None else "absent"


def _row_style(screen: Screen, below: str, offset: int) -> str | None:
    """The background of the table row ``offset`` lines under the header that holds ``below``.

    By position, not by text: a DataTable's columns are sometimes drawn at the headers' widths until
    the next key press (Textualize/textual#4470), which cuts its cells short.
    """
    where = screen.find(below)
    if where is None or where[0] + offset >= len(screen.rows):
        return "absent"
    return screen.background(where[0] + offset, 2)


def test_a_keyboard_only_walk_from_sign_in_to_a_member_and_back_without_a_tab(
        terminal, tui, oidc_provider, tmp_path) -> None:
    """F-keys, arrows, Enter and Esc only: every screen takes the keys where its work starts."""
    user = tui.user("specialist")
    specialist_id = tui.scalar("platform", "SELECT id FROM specialists WHERE user_id = :u AND deleted_at IS NULL",
                               u=user.id)
    member, prefix = _member_to_find(tui)
    listed = f"{member.last_name}, {member.first_name}"
    start = _start_of_local_today_utc()
    with tui.databases.platform.begin() as connection:  # two calls today: the worklist's cursor has room to move
        for minutes in (1, 2):
            connection.execute(text(
                "INSERT INTO call_records (id, member_id, specialist_id, call_type, call_status, scheduled_at) "
                "VALUES (:id, :m, :s, 'outreach', 'scheduled', :at)"),
                {"id": uuid.uuid4(), "m": member.id, "s": specialist_id, "at": start + timedelta(minutes=minutes)})
    sent: list[str] = []
    keys = terminal.keys

    def press(*names: str) -> None:
        sent.extend(names)
        keys(*names)

    rc_file = tmp_path / "carecli.rc"
    home = tmp_path / "home"
    terminal.start(_launcher(tmp_path, _child_env(tui, oidc_provider, home), rc_file))
    code = terminal.wait_for_text(re.compile(r"enter the code\s+([B-Z]{4}-[B-Z]{4})"), START_TIMEOUT).group(1)
    assert "Retry" not in terminal.last  # nothing failed: nothing to retry
    oidc_provider.approve(code, user.external_user_id, email=user.email)
    terminal.wait_for_text(re.compile(r"Today \(\d+\+?\)"))
    terminal.wait_until(lambda screen: screen.rows[screen.find("When (UTC)")[0] + 2].strip()
                        if screen.find("When (UTC)") else None, "today's two calls")

    def first(screen: Screen) -> str | None:
        return _row_style(screen, "When (UTC)", 1)

    def second(screen: Screen) -> str | None:
        return _row_style(screen, "When (UTC)", 2)

    plain = second(terminal.capture())  # a row without the cursor (zebra stripes do not depend on the focus)

    # Members: the search box takes the typing, down goes into the results, Enter opens the member.
    press("F3")
    terminal.wait_for_text(re.compile(r"1–\d+ of (about )?\d"))
    terminal.type(prefix)
    terminal.wait_for_text(re.compile(r"1–1 of 1\b"))
    unfocused = _style(terminal.capture(), listed)
    press("Down")
    terminal.wait_for_restyle(listed, unfocused)
    focused = _style(terminal.capture(), listed)
    press("Enter")
    terminal.wait_for_text(re.compile(rf"{re.escape(listed)}\s+·"))
    terminal.wait_for_text("Calls (2)")
    press("Escape")  # back to the results, focused, the cursor where it was
    terminal.wait_until(lambda screen: _style(screen, listed) == focused, "the results focused again")
    press("Up")  # up on the first result: back to the search box
    terminal.wait_until(lambda screen: _style(screen, listed) != focused, "the focus back in the search box")
    press("Escape")
    terminal.wait_for_text("Press Esc again")
    press("Escape")

    # The worklist: its table has the keys at once.
    screen = terminal.wait_until(lambda screen: first(screen) not in (plain, "absent") and screen,
                                 "the worklist, its cursor on the first call")
    cursor = first(screen)
    press("Down")
    terminal.wait_until(lambda screen: second(screen) == cursor and first(screen) != cursor,
                        "the cursor one row down")

    # Plans: typing filters at once, down goes to the list.
    press("F4")
    terminal.wait_for_text(re.compile(r"\d+ of \d+ plans"))
    terminal.type("gold")
    terminal.wait_for_text("gold")
    screen = terminal.wait_until(lambda screen: re.search(r"\b\w+-GOLD-\d+", "\n".join(screen.rows[3:6]))
                                 and screen, "the gold plans")
    found = re.search(r"\b\w+-GOLD-\d+", "\n".join(screen.rows[3:6]))
    assert found is not None
    plan = found.group(0)
    before = _style(screen, plan)
    press("Down")
    terminal.wait_for_restyle(plan, before)

    # Sign out: asked, then the sign-in screen.
    press("C-o")
    terminal.wait_for_text("Sign out")
    press("y")
    terminal.wait_for_text("Signed out.")
    terminal.wait_for_no_text(listed)
    press("C-q")
    terminal.wait_for_exit()
    assert rc_file.read_text().strip() == "0"
    assert "Tab" not in sent and "BTab" not in sent
    assert tui.scalar("identity", "SELECT count(*) FROM sessions WHERE user_id = :u AND deleted_at IS NULL",
                      u=user.id) == 0


def test_keys_typed_faster_than_the_screens_open_are_neither_lost_nor_reordered(
        terminal, tui, oidc_provider, tmp_path) -> None:
    """Keys sent in one write, as a fast typist or a paste gives them: "/" and a name open the search with the
    name in it, "↓ Enter" opens the one result, "n" and a note's text open the note with the text."""
    user = tui.user("specialist")
    member, prefix = _member_to_find(tui)
    listed = f"{member.last_name}, {member.first_name}"
    rc_file = tmp_path / "carecli.rc"
    terminal.start(_launcher(tmp_path, _child_env(tui, oidc_provider, tmp_path / "home"), rc_file))
    code = terminal.wait_for_text(re.compile(r"enter the code\s+([B-Z]{4}-[B-Z]{4})"), START_TIMEOUT).group(1)
    oidc_provider.approve(code, user.external_user_id, email=user.email)
    terminal.wait_for_text(re.compile(r"Today \(\d+\+?\)"))
    terminal.wait_for_text("plans:")

    terminal.type("/" + prefix)  # one write: the search opens, and the name is in its box
    terminal.wait_for_text(re.compile(r"1–1 of 1\b"))
    assert prefix in terminal.last
    terminal.keys("Down", "Enter")  # one write: into the results, then open
    terminal.wait_for_text(re.compile(rf"{re.escape(listed)}\s+·"))
    terminal.type("nLeft a voicemail")  # one write: the note opens with the text in it
    terminal.wait_for_text("Left a voicemail")
    assert "Add a note" in terminal.last

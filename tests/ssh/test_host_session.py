"""The SSH host end to end over real SSH on 127.0.0.1: an asyncssh client reading a pyte screen.

A specialist's key is registered with the real ``carecli ssh-keys add``; the
client signs in with it, sees the worklist drawn by a real app process, resizes
its terminal and sees the app redraw at the new width, quits with ctrl+q and
gets the goodbye text and exit status 0. The databases then hold the session
(client IP, SSH user agent, ended) and its audit rows.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime, timedelta, timezone

import pytest

from carecli import __version__
from carecli.data.notify import LISTENER_APPLICATION_NAME
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.services.auth.credentials import HeldCredential
from carecli.services.auth.sessions import start_session
from carecli.services.desk import Desk, local_day_bounds
from tests.ssh.conftest import GOODBYE_QUIT, START_TIMEOUT, STEP_TIMEOUT, WORKLIST, new_key, open_screen

CTRL_Q = b"\x11"


def _widest_line(text: str) -> int:
    return max(len(line.rstrip()) for line in text.splitlines())


async def test_sign_in_by_key_see_the_worklist_resize_and_quit(world, ssh_host, tmp_path) -> None:
    specialist = world.user("specialist")
    admin = world.user("admin")
    key = new_key()
    public = tmp_path / "id_ed25519.pub"
    public.write_bytes(key.export_public_key("openssh"))
    added = world.cli("ssh-keys", "add", specialist.email, str(public), as_user=admin)
    assert added.code == 0, added.err
    found = re.search(r"key id ([0-9a-f-]{36})", added.out)
    assert found is not None, added.out
    key_id = found.group(1)
    host = ssh_host()

    client = await open_screen(host, key, size=(100, 30))
    try:
        await client.wait_for(WORKLIST, START_TIMEOUT)
        await client.wait_for("plans:")
        assert _widest_line(client.text) <= 100

        # A wider terminal: the app redraws to the new width (its header and footer span the screen).
        client.resize(130, 34)
        await client.wait_for(re.compile(r"^.{110,130}$", re.MULTILINE))
        await client.wait_for(WORKLIST)

        client.keys(CTRL_Q)
        status = await client.finished()
    finally:
        await client.close()
    assert status == 0
    assert GOODBYE_QUIT in client.output
    assert GOODBYE_QUIT in client.text  # on the (reset) screen, not only somewhere in the stream

    [session] = world.rows("identity", "SELECT * FROM sessions WHERE user_id = :u", u=specialist.id)
    assert str(session.ip_address) == "127.0.0.1"
    assert session.user_agent.startswith(f"carecli/{__version__} (ssh; ")
    assert "AsyncSSH" in session.user_agent
    assert session.deleted_at is not None  # ended, not left open

    [start] = world.audit("ssh_session_start")
    assert (start.user_id, start.entity_id, str(start.ip_address)) == (specialist.id, session.id, "127.0.0.1")
    assert start.new_values["key_id"] == key_id
    assert (start.new_values["columns"], start.new_values["rows"]) == (100, 30)
    [end] = world.audit("ssh_session_end")
    assert (end.user_id, end.entity_id, end.new_values["reason"]) == (specialist.id, session.id, "quit")
    assert str(end.ip_address) == "127.0.0.1"


def _listeners(world) -> int:
    """LISTEN connections on the test's platform database (the host's relay's and the apps' own)."""
    return world.scalar("platform", "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                    "AND application_name = :name", name=LISTENER_APPLICATION_NAME)


@pytest.mark.parametrize("relay", [True, False], ids=["relayed by the host", "each app listening"])
async def test_a_second_session_sees_the_first_ones_new_call_without_a_key_press(world, ssh_host, relay) -> None:
    specialist = world.user("specialist", 1)
    keys = [new_key(), new_key()]
    for key in keys:
        world.add_key(specialist, key)
    host = ssh_host(relay_notices=relay)
    first, second = await open_screen(host, keys[0]), await open_screen(host, keys[1])
    try:
        for client in (first, second):
            await client.wait_for(WORKLIST, START_TIMEOUT)
        # Relayed: the host's one listening connection for both sessions; else one per app (started at sign-in).
        expected = 1 if relay else 2
        deadline = time.monotonic() + STEP_TIMEOUT
        while _listeners(world) != expected and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert _listeners(world) == expected
        shown = re.search(r"Today \((\d+)", second.text)
        assert shown is not None, second.text
        today = int(shown.group(1))
        # The first session's user logs a call scheduled for today (through the same service the app calls).
        with IdentityUnitOfWork(world.databases.identity, world.databases.platform, world.actor(specialist)) as uow:
            token, _ = start_session(uow, specialist, world.settings)
            uow.commit()
        desk = Desk.resume(world.settings, world.databases, channel="ssh", store=HeldCredential.holding(token))
        member_id = world.scalar("platform", "SELECT id FROM members WHERE deleted_at IS NULL ORDER BY id LIMIT 1")
        _day, start, end = local_day_bounds()  # the worklist's "today", in UTC
        # Later today (a scheduled call must be still to come), whatever the hour the test runs at.
        soon = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(minutes=1)
        at = min(max(soon, start + (end - start) / 2), end - timedelta(seconds=1))
        desk.log_call({"member_id": member_id, "call_type": "outreach", "call_status": "scheduled",
                       "scheduled_at": at})
        # No key is pressed in the second session: the new call arrives by itself.
        await second.wait_for(f"Today ({today + 1}")
        for client in (first, second):
            client.keys(CTRL_Q)
            assert await client.finished() == 0
    finally:
        for client in (first, second):
            await client.close()


def test_an_app_exit_code_gives_one_of_the_audited_end_reasons() -> None:
    # Both hosts (serve-ssh and ssh-session) map the app's exit the same way, typed as EndReason.
    from typing import get_args

    from carecli.errors import EXIT_AUTH, EXIT_FAILURE, EXIT_IDLE, EXIT_OK
    from carecli.services.ssh_sessions import EndReason, reason_for_exit

    assert [reason_for_exit(code) for code in (EXIT_OK, EXIT_IDLE, EXIT_AUTH, EXIT_FAILURE, -15)] == [
        "quit", "idle", "revoked", "error", "error"]
    assert {reason_for_exit(code) for code in range(-20, 256)} <= set(get_args(EndReason))

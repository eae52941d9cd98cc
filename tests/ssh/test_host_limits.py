"""The SSH host's limits over real SSH: the idle timeout, the session caps, revocation while connected, shutdown.

Short limits come from ``HostOptions`` (the host runs in this process): an
idle time of a few seconds, a revocation check every half second.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from tests.ssh.conftest import START_TIMEOUT, WORKLIST, new_key, open_screen

F2 = b"\x1bOQ"  # the worklist's own key: harmless while the worklist is what is shown


async def _worklist_while_typing(client) -> None:
    """Wait for the worklist, pressing F2 now and then so a short idle limit does not end the start-up."""
    deadline = time.monotonic() + START_TIMEOUT
    while not WORKLIST.search(client.text):
        assert time.monotonic() < deadline, f"no worklist after {START_TIMEOUT:.0f} s:\n{client.text}"
        assert not client.reader.done(), f"the session ended during start-up:\n{client.output[-600:]}"
        client.keys(F2)
        await asyncio.sleep(0.5)


def _session_end(world, user) -> tuple[Any, Any]:
    [session] = world.rows("identity", "SELECT * FROM sessions WHERE user_id = :u", u=user.id)
    [end] = world.audit("ssh_session_end", user=user)
    return session, end


async def test_no_input_for_the_idle_time_ends_the_session(world, ssh_host) -> None:
    user = world.user("specialist", 0)
    key = new_key()
    world.add_key(user, key)
    host = ssh_host(idle_seconds=5)
    client = await open_screen(host, key)
    try:
        await _worklist_while_typing(client)
        await client.wait_for("carecli closed this session after 5 seconds without input", in_output=True)
        status = await client.finished()
    finally:
        await client.close()
    assert status == 1
    session, end = _session_end(world, user)
    assert end.new_values["reason"] == "idle"
    assert session.deleted_at is not None


async def test_session_caps_per_user_and_for_the_host(world, ssh_host) -> None:
    first, second, third = (world.user("specialist", index) for index in (1, 2, 3))
    keys = {user.id: new_key() for user in (first, second, third)}
    for user in (first, second, third):
        world.add_key(user, keys[user.id])
    host = ssh_host(max_sessions=2, max_sessions_per_user=1)
    clients = []
    try:
        clients.append(await open_screen(host, keys[first.id]))
        world.wait_for_audit("ssh_session_start", user=first)

        again = await open_screen(host, keys[first.id])
        assert await again.finished() == 1
        assert "you already have 1 carecli session open on this host (the limit); close it first" in again.output
        await again.close()

        clients.append(await open_screen(host, keys[second.id]))
        world.wait_for_audit("ssh_session_start", user=second)

        full = await open_screen(host, keys[third.id])
        assert await full.finished() == 1
        assert "this host is serving its maximum of 2 sessions; please try again in a few minutes" in full.output
        await full.close()

        # Stopping the host ends the sessions it serves, telling each client why.
        await asyncio.get_running_loop().run_in_executor(None, host.stop)
        for client in clients:
            assert await client.finished() == 1
            assert "The carecli host is shutting down" in client.output
    finally:
        for client in clients:
            await client.close()

    [per_user] = world.audit("ssh_session_refused", user=first)
    assert per_user.new_values["reason"] == "user_limit"
    assert str(per_user.ip_address) == "127.0.0.1"
    [host_full] = world.audit("ssh_session_refused", user=third)
    assert host_full.new_values["reason"] == "host_full"
    assert world.audit("ssh_session_start", user=third) == []
    for user in (first, second):
        assert [row.new_values["reason"] for row in world.audit("ssh_session_end", user=user)] == ["shutdown"]


async def test_revoking_the_key_or_deactivating_the_user_ends_an_open_session(world, ssh_host) -> None:
    holder, colleague = world.user("specialist", 4), world.user("specialist", 5)
    admin = world.user("admin")
    keys = {holder.id: new_key(), colleague.id: new_key()}
    info = world.add_key(holder, keys[holder.id])
    world.add_key(colleague, keys[colleague.id])
    host = ssh_host(revocation_check_seconds=0.5)
    clients = [await open_screen(host, keys[holder.id]), await open_screen(host, keys[colleague.id])]
    try:
        for client in clients:
            await client.wait_for(WORKLIST, START_TIMEOUT)
        # The key's owner revokes it themselves (from another terminal); an admin deactivates the colleague.
        revoked = world.cli("ssh-keys", "revoke", str(info.id), as_user=holder)
        assert revoked.code == 0, revoked.err
        deactivated = world.cli("users", "deactivate", colleague.email, as_user=admin)
        assert deactivated.code == 0, deactivated.err
        for client in clients:
            await client.wait_for("Your access ended", in_output=True)
            assert await client.finished() == 1
    finally:
        for client in clients:
            await client.close()
    for user in (holder, colleague):
        session, end = _session_end(world, user)
        assert end.new_values["reason"] == "revoked"
        assert session.deleted_at is not None
    assert re.search(r"revoked; open sessions with it end", revoked.out)

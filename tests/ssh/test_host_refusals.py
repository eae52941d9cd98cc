"""What the SSH host refuses, over real SSH on 127.0.0.1, and the audit rows each refusal leaves.

Keys: unknown, revoked, expired, a deactivated user's, a user another service
made inactive. Channels: a session without a pty (a message, exit status 2),
exec, the sftp subsystem, local and remote port forwarding. None of these
starts an app process or a carecli session.
"""

from __future__ import annotations

import asyncssh
import pytest

from carecli.services.auth.ssh_keys import revoke_ssh_key
from carecli.services.users import deactivate_user
from tests.ssh.conftest import connect, new_key


async def _refused(host, key) -> None:
    with pytest.raises(asyncssh.PermissionDenied):
        conn = await connect(host, key)
        conn.close()


def _no_sessions(world, user) -> None:
    assert world.scalar("identity", "SELECT count(*) FROM sessions WHERE user_id = :u", u=user.id) == 0
    assert world.audit("ssh_session_start", user=user) == []


async def test_an_unknown_key_is_refused_and_audited_with_the_client_ip_and_fingerprint(world, ssh_host) -> None:
    host = ssh_host()
    key = new_key()
    await _refused(host, key)
    [row] = world.audit("auth_refused", reason="unknown_key", fingerprint=key.get_fingerprint("sha256"))
    assert row.new_values["fingerprint"] == key.get_fingerprint("sha256")
    assert row.new_values["via"] == "ssh"
    assert row.new_values["ssh_username"] == "specialist"
    assert str(row.ip_address) == "127.0.0.1"
    assert row.user_id is None and row.entity_type == "ssh_key"


async def test_revoked_expired_and_deactivated_users_keys_are_refused(world, ssh_host) -> None:
    specialists = [world.user("specialist", index) for index in range(1, 5)]
    keys = [new_key() for _ in specialists]
    infos = [world.add_key(user, key) for user, key in zip(specialists, keys)]
    admin = world.actor(world.user("admin"))
    revoke_ssh_key(world.databases, admin, infos[0].id)
    world.rows("identity", "UPDATE tokens SET expires_at = now() - interval '1 minute' WHERE id = :k", k=infos[1].id)
    deactivate_user(world.databases, admin, specialists[2].email)  # revokes their keys with their tokens
    # Another service sharing the identity database deactivates a user without touching their keys.
    world.rows("identity", "UPDATE users SET is_active = false WHERE id = :u", u=specialists[3].id)
    host = ssh_host()

    for key in keys:
        await _refused(host, key)
    fingerprints = {key.get_fingerprint("sha256") for key in keys}
    refused = [row for row in world.audit("auth_refused") if row.new_values["fingerprint"] in fingerprints]
    reasons = {row.new_values["fingerprint"]: row.new_values["reason"] for row in refused}
    assert reasons == {keys[0].get_fingerprint("sha256"): "key_revoked",
                       keys[1].get_fingerprint("sha256"): "key_expired",
                       keys[2].get_fingerprint("sha256"): "key_revoked",
                       keys[3].get_fingerprint("sha256"): "user_inactive"}
    assert len(refused) == 4
    for row in refused:
        assert str(row.ip_address) == "127.0.0.1"
    for user in specialists:
        _no_sessions(world, user)


async def test_too_many_refused_keys_drop_the_connection(world, ssh_host) -> None:
    host = ssh_host()
    keys = [new_key() for _ in range(8)]
    with pytest.raises((asyncssh.PermissionDenied, asyncssh.DisconnectError)):
        conn = await asyncssh.connect("127.0.0.1", host.port, username="x", client_keys=keys, known_hosts=None,
                                      agent_path=None)
        conn.close()
    fingerprints = {key.get_fingerprint("sha256") for key in keys}
    refused = [row for row in world.audit("auth_refused") if row.new_values["fingerprint"] in fingerprints]
    assert len(refused) == 6  # then the host hung up: the last two were never checked


async def test_a_session_without_a_pty_gets_a_message_exit_status_2_and_is_audited(world, ssh_host) -> None:
    user = world.user("specialist", 5)
    key = new_key()
    world.add_key(user, key)
    host = ssh_host()
    async with await connect(host, key) as conn:
        process = await conn.create_process(encoding="utf-8")  # like `ssh -T host`
        output = await process.stdout.read()
        await process.wait_closed()
    assert "carecli needs a terminal" in output
    assert process.exit_status == 2
    [row] = world.audit("ssh_session_refused", reason="no_pty", user=user)
    assert row.new_values["user_id"] == str(user.id)
    assert str(row.ip_address) == "127.0.0.1"
    _no_sessions(world, user)


async def test_exec_sftp_and_port_forwarding_are_refused(world, ssh_host) -> None:
    user = world.user("specialist", 6)
    key = new_key()
    world.add_key(user, key)
    host = ssh_host()
    async with await connect(host, key) as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.run("id", check=False)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.start_sftp_client()
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_connection(asyncssh.SSHTCPSession, "127.0.0.1", world.databases.identity.url.port
                                         or 5432)
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 22)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_unix_connection("/var/run/postgresql/.s.PGSQL.5432")
    _no_sessions(world, user)

"""``carecli ssh-keys add|list|revoke|authorized-keys`` as people run them: the real CLI, signed in by API tokens.

Good input is stored as a ``tokens`` row of type ``ssh_key`` (fingerprint in
``token_hash``) with its audit rows; bad input (a private key, garbage, a weak
RSA key, a duplicate, someone else's key without users:admin, a bad UUID, a
missing file, a lifetime over a year) is refused with one line and the README's
exit code, and writes nothing.
"""

from __future__ import annotations

import re

import asyncssh
import pytest

from carecli.errors import EXIT_FAILURE, EXIT_USAGE, ValidationError
from carecli.services.auth.ssh_keys import parse_public_key
from tests.ssh.conftest import new_key

KEY_ID = re.compile(r"key id ([0-9a-f-]{36})")


def _one_line_error(result) -> str:
    assert result.out == "", result.out
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].lstrip().lower().startswith(("hint", "try", "→"))), \
        result.err
    assert "Traceback" not in result.err
    return result.err


def _key_rows(world, user) -> list:
    return world.rows("identity", "SELECT * FROM tokens WHERE user_id = :u AND token_type = 'ssh_key' "
                      "ORDER BY created_at", u=user.id)


def test_a_user_adds_lists_and_revokes_their_own_key(world, tmp_path) -> None:
    user = world.user("specialist", 0)
    key = new_key()
    public = tmp_path / "own.pub"
    public.write_bytes(key.export_public_key("openssh"))
    fingerprint = key.get_fingerprint("sha256")

    added = world.cli("ssh-keys", "add", user.email, str(public), as_user=user)
    assert added.code == 0, added.err
    found = KEY_ID.search(added.out)
    assert found is not None, added.out
    key_id = found.group(1)
    assert f"SSH key {fingerprint} added for {user.email}" in added.out
    [row] = _key_rows(world, user)
    assert (str(row.id), row.token_hash, row.is_revoked) == (key_id, fingerprint, False)
    actions = {r.action for r in world.rows("platform", "SELECT action FROM audit_logs WHERE entity_id = :k",
                                             k=row.id)}
    assert {"create", "name", "public_key"} <= actions

    listed = world.cli("ssh-keys", "list", as_user=user)
    assert listed.code == 0, listed.err
    assert re.search(rf"^{key_id}\s+active\s+{re.escape(fingerprint)}\s+tester@laptop", listed.out, re.MULTILINE)

    revoked = world.cli("ssh-keys", "revoke", key_id, as_user=user)
    assert revoked.code == 0, revoked.err
    assert f"SSH key {key_id} ({fingerprint}) revoked" in revoked.out
    assert _key_rows(world, user)[0].is_revoked is True
    assert world.rows("platform", "SELECT 1 FROM audit_logs WHERE entity_id = :k AND action = 'revoke'", k=row.id)
    assert world.cli("ssh-keys", "list", as_user=user).out.strip() == "no SSH keys"
    shown = world.cli("ssh-keys", "list", "--all", as_user=user)
    assert re.search(rf"^{key_id}\s+revoked\s+", shown.out, re.MULTILINE), shown.out

    # A key read from standard input, with a label; then the same key again is a duplicate.
    other = new_key().export_public_key("openssh").decode()
    piped = world.cli("ssh-keys", "add", user.email, "-", "--name", "work laptop", "--expires", "30d",
                      as_user=user, stdin=other)
    assert piped.code == 0, piped.err
    again = world.cli("ssh-keys", "add", user.email, "-", as_user=user, stdin=other)
    assert again.code == EXIT_FAILURE
    assert "already registered for this user" in _one_line_error(again)
    assert len(_key_rows(world, user)) == 2


def test_adding_someone_elses_key_needs_users_admin(world, tmp_path) -> None:
    specialist, colleague, admin = world.user("specialist", 1), world.user("specialist", 2), world.user("admin")
    public = tmp_path / "colleague.pub"
    public.write_bytes(new_key().export_public_key("openssh"))

    refused = world.cli("ssh-keys", "add", colleague.email, str(public), as_user=specialist)
    assert refused.code == EXIT_FAILURE
    assert "users:admin" in _one_line_error(refused)
    assert _key_rows(world, colleague) == []
    [denial] = world.rows("platform", "SELECT * FROM audit_logs WHERE action = 'deny' AND user_id = :u",
                          u=specialist.id)
    assert denial.new_values["permission"] == "users:admin"

    added = world.cli("ssh-keys", "add", colleague.email, str(public), as_user=admin)
    assert added.code == 0, added.err
    assert len(_key_rows(world, colleague)) == 1
    # Without users:admin the permission is checked first: no hint which keys a colleague has.
    probe = world.cli("ssh-keys", "add", colleague.email, str(public), as_user=specialist)
    assert probe.code == EXIT_FAILURE
    assert "users:admin" in probe.err and "already registered" not in probe.err
    # The same key for a second person is refused, whoever asks.
    twice = world.cli("ssh-keys", "add", specialist.email, str(public), as_user=specialist)
    assert twice.code == EXIT_FAILURE
    assert "already registered" in _one_line_error(twice)
    assert _key_rows(world, specialist) == []

    others = world.cli("ssh-keys", "list", "--user", colleague.email, as_user=specialist)
    assert others.code == EXIT_FAILURE and "users:admin" in _one_line_error(others)
    theirs = world.cli("ssh-keys", "list", "--user", colleague.email, as_user=admin)
    assert theirs.code == 0 and "active" in theirs.out


def test_bad_keys_are_refused_with_one_line_and_nothing_written(world, tmp_path) -> None:
    user = world.user("specialist", 3)
    private = tmp_path / "id_ed25519"
    private.write_bytes(new_key().export_private_key("openssh"))
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("ssh-ed25519 this-is-not-base64 me@host\n")
    weak = tmp_path / "weak.pub"
    weak.write_bytes(asyncssh.generate_private_key("ssh-rsa", key_size=1024).export_public_key("openssh"))
    cases = {private: "PRIVATE key", garbage: "not an SSH public key", weak: "at least 2048 bits"}
    for path, message in cases.items():
        result = world.cli("ssh-keys", "add", user.email, str(path), as_user=user)
        assert result.code == EXIT_FAILURE, (path.name, result)
        error = _one_line_error(result)
        assert message in error, (path.name, error)
        assert "PRIVATE KEY-----" not in error and "AAAA" not in error  # no key material echoed
    missing = world.cli("ssh-keys", "add", user.email, str(tmp_path / "nope.pub"), as_user=user)
    assert missing.code == EXIT_USAGE and "does not exist" in missing.err  # click's usage error
    public = tmp_path / "fine.pub"
    public.write_bytes(new_key().export_public_key("openssh"))
    too_long = world.cli("ssh-keys", "add", user.email, str(public), "--expires", "400d", as_user=user)
    assert too_long.code == EXIT_USAGE and "--expires" in too_long.err
    assert _key_rows(world, user) == []


@pytest.mark.parametrize(("text", "rule"), [
    ("", "required"),
    ("ssh-ed25519 AAAA\nssh-ed25519 BBBB\n", "one_key"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n", "private_key"),
    ("ssh-ed25519 AAAAB3NzaC1kc3MAAACBAP== me@host", "format"),
    ("hello world", "format"),
])
def test_what_is_not_one_acceptable_public_key(text: str, rule: str) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_public_key(text)
    assert refused.value.rule == rule


def test_dsa_keys_are_refused_as_openssh_does() -> None:
    dsa = asyncssh.generate_private_key("ssh-dss").export_public_key("openssh").decode()
    with pytest.raises(ValidationError) as refused:
        parse_public_key(dsa)
    assert refused.value.rule == "algorithm"
    assert "ssh-keygen -t ed25519" in str(refused.value)


def test_modern_keys_are_accepted_with_their_comment_and_fingerprint() -> None:
    for algorithm, size in (("ssh-ed25519", None), ("ecdsa-sha2-nistp256", None), ("ssh-rsa", 2048)):
        key = asyncssh.generate_private_key(algorithm, comment="me@host", **({"key_size": size} if size else {}))
        parsed = parse_public_key(key.export_public_key("openssh").decode())
        assert (parsed.algorithm, parsed.comment) == (algorithm, "me@host")
        assert parsed.fingerprint == key.get_fingerprint("sha256")
        rfc4716 = parse_public_key(key.export_public_key("rfc4716").decode())
        assert rfc4716.fingerprint == parsed.fingerprint


def test_bad_key_ids_and_unknown_keys(world) -> None:
    user = world.user("specialist", 4)
    bad = world.cli("ssh-keys", "revoke", "not-a-uuid", as_user=user)
    assert bad.code == EXIT_USAGE and "not a SSH key id" in bad.err
    bad_session = world.cli("ssh-session", "--key", "12345", SSH_CONNECTION="198.51.100.9 40000 10.0.0.1 22")
    assert bad_session.code == EXIT_USAGE and "(a UUID)" in bad_session.err
    unknown = world.cli("ssh-keys", "revoke", "00000000-0000-4000-8000-000000000001", as_user=user)
    assert unknown.code == EXIT_FAILURE
    assert "00000000-0000-4000-8000-000000000001" in _one_line_error(unknown)
    nobody = world.cli("ssh-keys", "list")
    assert nobody.code == 4  # not signed in


def test_authorized_keys_lines_force_the_ssh_session_command(world, tmp_path) -> None:
    holder, admin = world.user("specialist", 5), world.user("admin")
    key = new_key()
    info = world.add_key(holder, key)
    revoked = world.add_key(holder, new_key())
    world.cli("ssh-keys", "revoke", str(revoked.id), as_user=holder)

    result = world.cli("ssh-keys", "authorized-keys", "--carecli", "/opt/carecli/bin/carecli", as_user=admin)
    assert result.code == 0, result.err
    mine = [line for line in result.out.splitlines() if str(info.id) in line]
    openssh = key.export_public_key("openssh").decode().strip()
    assert mine == [f'command="/opt/carecli/bin/carecli ssh-session --key {info.id}",restrict,pty {openssh}']
    assert str(revoked.id) not in result.out
    # Each line parses as an authorized_keys entry with those options.
    entry = asyncssh.import_authorized_keys(mine[0]).validate(key.convert_to_public(), "localhost", "127.0.0.1")
    assert entry == {"command": f"/opt/carecli/bin/carecli ssh-session --key {info.id}", "restrict": True,
                     "pty": True}

    one = world.cli("ssh-keys", "authorized-keys", "--fingerprint", key.get_fingerprint("sha256"), as_user=admin)
    assert one.code == 0 and len(one.out.splitlines()) == 1 and str(info.id) in one.out

    refused = world.cli("ssh-keys", "authorized-keys", as_user=holder)
    assert refused.code == EXIT_FAILURE and "users:admin" in _one_line_error(refused)

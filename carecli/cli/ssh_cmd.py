"""``carecli serve-ssh``, ``carecli ssh-keys …`` and ``carecli ssh-session``: the SSH host.

* ``serve-ssh`` runs carecli's own SSH server (asyncssh): specialists connect
  with ``ssh -p 2222 host`` and get the app, signed in by their key.
* ``ssh-keys`` registers, lists and revokes users' public keys, and prints
  ``authorized_keys`` lines for running under OpenSSH instead.
* ``ssh-session`` is the forced command of those lines (OpenSSH's
  ``ForceCommand`` / ``command=``): it learns the client from
  ``SSH_CONNECTION`` and the user from the key id it is given.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from carecli.cli.auth_cmd import _signed_in, _uuid, _when
from carecli.config import load_settings
from carecli.data.databases import open_databases, require_head
from carecli.errors import EXIT_AUTH, EXIT_FAILURE, EXIT_USAGE, ConfigError
from carecli.services.auth.current import user_by_email
from carecli.services.auth.ssh_keys import (
    DEFAULT_KEY_LIFETIME,
    SshKeyInfo,
    add_ssh_key,
    key_holder_by_id,
    list_ssh_keys,
    live_keys,
    revoke_ssh_key,
    still_allowed,
)
from carecli.services.auth.tokens import parse_lifetime
from carecli.ssh.terminal import TERMINAL_RESET, goodbye

if TYPE_CHECKING:
    import asyncssh

    from carecli.services.ssh_sessions import EndReason

# -- ssh-keys -----------------------------------------------------------------------------


@click.group("ssh-keys")
def ssh_keys_group() -> None:
    """Users' SSH public keys: how specialists sign in to the SSH host."""


def _key_line(info: SshKeyInfo, owner: str | None = None) -> str:
    who = f"  {owner}" if owner else ""
    return (f"{info.id}  {info.status:<7}  {info.fingerprint}  {info.name or '-'}{who}  "
            f"added {_when(info.created_at)}  expires {_when(info.expires_at)}")


@ssh_keys_group.command("add")
@click.argument("user")
@click.argument("keyfile")
@click.option("--name", help="A label for the key (default: the key's comment).")
@click.option("--expires", "lifetime", default="365d", show_default=True, metavar="365d|12w",
              help="How long the key is accepted, at most 365d.")
def ssh_keys_add(user: str, keyfile: str, name: str | None, lifetime: str) -> None:
    """Register KEYFILE (a .pub file, or - for standard input) as USER's key (an e-mail address)."""
    try:
        parsed_lifetime = parse_lifetime(lifetime) if lifetime != "365d" else DEFAULT_KEY_LIFETIME
    except ConfigError as exc:
        raise click.BadParameter(exc.message.replace("token", "key"), param_hint="--expires") from None
    text = _read_key(keyfile)
    _, databases, me = _signed_in()
    owner = user_by_email(databases, me.actor, user)
    info = add_ssh_key(databases, me.actor, owner, text, name=name, lifetime=parsed_lifetime)
    click.echo(f"SSH key {info.fingerprint} added for {owner.email} (key id {info.id}, "
               f"expires {_when(info.expires_at)})")


def _read_key(keyfile: str) -> str:
    if keyfile == "-":
        return sys.stdin.read(64 * 1024)
    path = Path(keyfile)
    try:
        if path.stat().st_size > 64 * 1024:
            raise click.BadParameter(f"{keyfile} is too large to be a public key", param_hint="KEYFILE")
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise click.BadParameter(f"{keyfile} does not exist", param_hint="KEYFILE") from None
    except OSError as exc:
        raise click.BadParameter(f"cannot read {keyfile}: {exc.strerror}", param_hint="KEYFILE") from None


@ssh_keys_group.command("list")
@click.option("--user", "email", metavar="EMAIL", help="Another user's keys (needs users:admin).")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
def ssh_keys_list(email: str | None, include_revoked: bool) -> None:
    """List SSH keys: id, state, fingerprint, label, dates."""
    _, databases, me = _signed_in()
    user_id = user_by_email(databases, me.actor, email).id if email else None
    infos = list_ssh_keys(databases, me.actor, user_id=user_id, include_revoked=include_revoked)
    if not infos:
        click.echo("no SSH keys")
    for info in infos:
        click.echo(_key_line(info))


@ssh_keys_group.command("revoke")
@click.argument("key_id")
def ssh_keys_revoke(key_id: str) -> None:
    """Revoke an SSH key (yours, or anyone's with users:admin); its open SSH sessions end."""
    target = _uuid(key_id, "SSH key")
    _, databases, me = _signed_in()
    info = revoke_ssh_key(databases, me.actor, target)
    click.echo(f"SSH key {info.id} ({info.fingerprint}) revoked; open sessions with it end within seconds")


@ssh_keys_group.command("authorized-keys")
@click.option("--fingerprint", metavar="SHA256:…", help="Only this key (sshd's AuthorizedKeysCommand %f).")
@click.option("--carecli", "carecli_path", default=None, metavar="PATH",
              help="The carecli executable sshd should run (default: this one).")
def ssh_keys_authorized(fingerprint: str | None, carecli_path: str | None) -> None:
    """Print authorized_keys lines for OpenSSH: each live key with a forced `carecli ssh-session`."""
    _, databases, me = _signed_in()
    program = carecli_path or _this_carecli()
    for key in live_keys(databases, me.actor, fingerprint=fingerprint):
        command = f"{program} ssh-session --key {key.key_id}"
        click.echo(f'command="{command}",restrict,pty {key.openssh}')


def _this_carecli() -> str:
    found = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if found is not None and found.name == "carecli" and found.exists():
        return shlex.quote(str(found))
    return f"{shlex.quote(sys.executable)} -m carecli"


# -- serve-ssh --------------------------------------------------------------------------------


@click.command("serve-ssh")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=2222, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--host-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The host's private key (created there once when missing). "
                   "Default: ssh_host_ed25519_key in the user data directory.")
@click.option("--max-sessions", default=50, show_default=True, type=click.IntRange(1, 10000),
              help="Sessions this host serves at once, in total.")
@click.option("--max-per-user", default=3, show_default=True, type=click.IntRange(1, 100),
              help="Sessions one user may have open at once.")
@click.option("--idle-minutes", type=click.FloatRange(min=0.05), default=None,
              help="End a session after this long without input (default: the session idle timeout).")
@click.option("--login-timeout", default=30.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds a client has to authenticate.")
@click.option("--keepalive", default=30.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds between keepalives; three unanswered ones drop a dead client.")
@click.option("--app-pool-size", default=None, type=click.IntRange(0, 100),
              help="Platform connections each session's app keeps open (default 1 with --relay, 0 without: "
                   "either way one per session, so many sessions fit in max_connections; raise it behind "
                   "PgBouncer).")
@click.option("--relay/--no-relay", default=True, show_default=True,
              help="Listen for live updates once for every session and relay them to the apps; --no-relay "
                   "has each app listen on a connection of its own.")
@click.option("--prefork/--no-prefork", default=True, show_default=True,
              help="Fork each session's app from one process that imported the app once (fast, shared "
                   "memory); --no-prefork starts a new Python for every session.")
def serve_ssh_command(host: str, port: int, host_key: Path | None, max_sessions: int, max_per_user: int,
                      idle_minutes: float | None, login_timeout: float, keepalive: float,
                      app_pool_size: int | None, relay: bool, prefork: bool) -> None:
    """Serve the app over SSH: public-key sign-in, one app process per session."""
    from carecli.ssh.server import HostOptions, serve

    settings = load_settings()
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        click.echo("carecli: warning: serving SSH as root; run the host as an unprivileged account "
                   "(ports above 1024 need no privileges)", err=True)
    databases = open_databases(settings)
    require_head(databases)
    options = HostOptions(host=host, port=port, host_key=host_key, max_sessions=max_sessions,
                          max_sessions_per_user=max_per_user,
                          idle_seconds=(idle_minutes or settings.session_idle_minutes) * 60,
                          login_timeout=login_timeout, keepalive_seconds=keepalive, app_pool_size=app_pool_size,
                          relay_notices=relay, prefork=prefork)

    def ready(acceptor: object, key: asyncssh.SSHKey) -> None:
        sockets = getattr(acceptor, "sockets", None) or []
        where = ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in sockets) or f"{host}:{port}"
        fingerprint = key.get_fingerprint("sha256")
        click.echo(f"carecli SSH host listening on {where} (host key {fingerprint}); Ctrl-C stops it",
                   err=True)

    try:
        asyncio.run(serve(settings, databases, options, ready=ready))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                          hint="choose another --port, or stop what is using it") from None
    finally:
        databases.dispose()


# -- ssh-session (under OpenSSH) -----------------------------------------------------------------


@click.command("ssh-session")
@click.option("--key", "key_id", required=True, metavar="KEY_ID", help="The SSH key the user connected with.")
def ssh_session_command(key_id: str) -> None:
    """(OpenSSH forced command) Run the app for the owner of KEY_ID; see README "SSH host"."""
    from carecli.services.ssh_sessions import close_ssh_session, open_ssh_session

    target = _uuid(key_id, "SSH key")
    environ = dict(os.environ)
    if not environ.get("SSH_CONNECTION"):
        raise ConfigError("carecli ssh-session runs under sshd (SSH_CONNECTION is not set)",
                          hint="put it in authorized_keys with `carecli ssh-keys authorized-keys`")
    if environ.get("SSH_ORIGINAL_COMMAND"):
        click.echo("carecli runs no commands over SSH: connect without a command to use the app.", err=True)
        raise SystemExit(EXIT_USAGE)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        click.echo("carecli needs a terminal: connect with `ssh -t`.", err=True)
        raise SystemExit(EXIT_USAGE)
    settings = load_settings()
    databases = open_databases(settings)
    try:
        require_head(databases)
        holder = key_holder_by_id(databases, target, environ=environ)
        if holder is None:
            click.echo("carecli: this SSH key is not (or no longer) allowed in; ask an administrator.", err=True)
            raise SystemExit(EXIT_AUTH)
        session = open_ssh_session(settings, databases, holder, environ=environ,
                                   client_version=environ.get("SSH_CLIENT_VERSION"),
                                   terminal={"term": environ.get("TERM"), "via": "openssh"})
        started = time.monotonic()
        reason = _run_app_process(databases, holder, session.token)
        if reason != "disconnect":  # the client is still there: give its terminal back as it was
            sys.stdout.buffer.write(TERMINAL_RESET)
            sys.stdout.buffer.write(goodbye(reason, idle_minutes=settings.session_idle_minutes,
                                            max_hours=settings.session_max_hours).encode("utf-8") + b"\r\n")
            sys.stdout.flush()
        close_ssh_session(databases, session, reason, seconds=time.monotonic() - started)
    finally:
        databases.dispose()
    if reason != "quit":
        raise SystemExit(EXIT_FAILURE)


def _run_app_process(databases, holder, token: str) -> EndReason:  # noqa: ANN001 - Databases, KeyHolder
    """Run ``carecli app`` on this terminal with the session; the reason it ended."""
    from carecli.services.ssh_sessions import reason_for_exit

    read_end, write_end = os.pipe()
    os.write(write_end, token.encode("ascii"))
    os.close(write_end)
    hung_up = False

    def on_hangup(signum: int, frame: object) -> None:
        nonlocal hung_up
        hung_up = True

    previous = signal.signal(signal.SIGHUP, on_hangup)
    env = {k: v for k, v in os.environ.items() if k != "CARECLI_TOKEN"}
    process = subprocess.Popen([sys.executable, "-m", "carecli", "app", "--session-fd", str(read_end)],
                               pass_fds=(read_end,), env=env)
    os.close(read_end)
    reason: EndReason | None = None
    try:
        while reason is None:
            try:
                code = process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                if hung_up:
                    reason = "disconnect"
                elif still_allowed(databases, holder) is not None:
                    reason = "revoked"
                continue
            reason = "disconnect" if hung_up else reason_for_exit(code)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
        signal.signal(signal.SIGHUP, previous)
    return reason

"""Entry point: the ``carecli`` command group and its error handling.

Every failure a user can cause ends in one line on stderr saying what was
wrong and what to do, and a documented exit code; no traceback (tracebacks
can carry data values). ``CARECLI_DEBUG=1`` shows the traceback of an
unexpected error for a developer.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback

import click
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from carecli import __version__
from carecli.cli.app_cmd import app_command, run_app
from carecli.cli.audit_cmd import audit_group
from carecli.cli.auth_cmd import (
    login_command,
    logout_command,
    sessions_group,
    tokens_group,
    whoami_command,
)
from carecli.cli.backup_cmd import backup_group
from carecli.cli.check_cmd import check_group
from carecli.cli.config_cmd import config_group
from carecli.cli.db_cmd import db_group
from carecli.cli.doctor_cmd import doctor_command
from carecli.cli.export_cmd import export_command
from carecli.cli.import_cmd import import_command
from carecli.cli.keys_cmd import keys_group
from carecli.cli.retention_cmd import retention_group
from carecli.cli.seed_cmd import seed_command
from carecli.cli.ssh_cmd import serve_ssh_command, ssh_keys_group, ssh_session_command
from carecli.cli.users_cmd import roles_group, sync_command, users_group
from carecli.data.databases import describe_dbapi_error
from carecli.errors import EXIT_ABORTED, EXIT_FAILURE, EXIT_USAGE, CarecliError
from carecli.logs import configure_from_settings

log = logging.getLogger("carecli.cli")


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.version_option(__version__, prog_name="carecli")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """carecli: case management for health-plan outreach specialists.

    With no database configured, carecli runs an embedded PostgreSQL in your
    data directory; set CARECLI_IDENTITY_URL and CARECLI_PLATFORM_URL to use
    your own servers.
    """
    if ctx.invoked_subcommand is None:
        if sys.stdin.isatty() and sys.stdout.isatty():
            run_app()
        else:  # a script or a pipe: the app needs a terminal, so say what there is
            click.echo(ctx.get_help())


cli.add_command(app_command)
cli.add_command(db_group)
cli.add_command(seed_command)
cli.add_command(config_group)
cli.add_command(keys_group)
cli.add_command(users_group)
cli.add_command(roles_group)
cli.add_command(sync_command)
cli.add_command(login_command)
cli.add_command(logout_command)
cli.add_command(whoami_command)
cli.add_command(sessions_group)
cli.add_command(tokens_group)
cli.add_command(export_command)
cli.add_command(import_command)
cli.add_command(ssh_keys_group)
cli.add_command(serve_ssh_command)
cli.add_command(ssh_session_command)
cli.add_command(backup_group)
cli.add_command(retention_group)
cli.add_command(audit_group)
cli.add_command(doctor_command)
cli.add_command(check_group)


def main(argv: list[str] | None = None) -> None:
    """Run carecli and exit with its documented exit code (logged with the command's name and duration)."""
    args = sys.argv[1:] if argv is None else argv
    configure_from_settings()
    command = command_path(cli, args)
    started = time.monotonic()
    log.info("command started", extra={"command": command})
    code = EXIT_FAILURE
    try:
        code = _run(args)
    except SystemExit as exc:  # a command that exits by itself
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_FAILURE)
        raise
    finally:
        log.info("command finished", extra={"command": command, "exit_code": code,
                                             "duration_ms": round((time.monotonic() - started) * 1000)})
    sys.exit(code)


def _run(argv: list[str]) -> int:
    """The command's exit code; every failure is one line on stderr."""
    try:
        result = cli.main(args=argv, prog_name="carecli", standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        return EXIT_USAGE
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("carecli: aborted", err=True)
        return EXIT_ABORTED
    except CarecliError as exc:
        # The type only: messages are PHI-free by construction, but may name a person's e-mail.
        log.warning("command refused", extra={"error": type(exc).__name__, "exit_code": exc.exit_code})
        click.echo(f"carecli: error: {exc}", err=True)
        return exc.exit_code
    except DBAPIError as exc:
        # Never str(exc): SQLAlchemy embeds the statement and its parameters.
        log.error("database error", extra={"error": type(exc.orig).__name__,
                                           "sqlstate": getattr(exc.orig, "sqlstate", None)})
        click.echo(f"carecli: database error: {describe_dbapi_error(exc)}", err=True)
        return EXIT_USAGE if isinstance(exc, (OperationalError, InterfaceError)) else EXIT_FAILURE
    except Exception as exc:  # the last line of defence: say what, never dump values
        log.error("internal error", exc_info=True)
        if os.environ.get("CARECLI_DEBUG") == "1":
            traceback.print_exc()
        click.echo(
            f"carecli: internal error ({type(exc).__name__}); set CARECLI_DEBUG=1 to see the traceback",
            err=True,
        )
        return EXIT_FAILURE
    return result if isinstance(result, int) else 0


def command_path(group: click.Group, argv: list[str]) -> str:
    """The subcommand names in ``argv`` (``"db upgrade"``), never argument values: those may be e-mails."""
    names: list[str] = []
    current: click.Command = group
    for token in argv:
        if token.startswith("-"):
            continue
        if not isinstance(current, click.Group) or token not in current.commands:
            break
        names.append(token)
        current = current.commands[token]
    return " ".join(names) or "carecli"

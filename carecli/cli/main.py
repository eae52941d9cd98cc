"""Entry point: the ``carecli`` command group and its error handling.

Every failure a user can cause ends in one line on stderr saying what was
wrong and what to do, and a documented exit code; no traceback (tracebacks
can carry data values). ``CARECLI_DEBUG=1`` shows the traceback of an
unexpected error for a developer.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
import traceback

import click

from carecli import __version__
from carecli.errors import EXIT_ABORTED, EXIT_FAILURE, EXIT_USAGE, CarecliError
from carecli.logs import configure_from_settings

log = logging.getLogger("carecli.cli")


#: subcommand -> "module:attribute"; a module is imported only when its command runs (or help lists it),
#: so `carecli --version` or `carecli whoami` does not pay for Alembic, asyncssh and every other command.
SUBCOMMANDS: dict[str, str] = {
    "app": "app_cmd:app_command",
    "db": "db_cmd:db_group",
    "seed": "seed_cmd:seed_command",
    "config": "config_cmd:config_group",
    "keys": "keys_cmd:keys_group",
    "users": "users_cmd:users_group",
    "roles": "users_cmd:roles_group",
    "sync": "users_cmd:sync_command",
    "login": "auth_cmd:login_command",
    "logout": "auth_cmd:logout_command",
    "whoami": "whoami_cmd:whoami_command",
    "sessions": "auth_cmd:sessions_group",
    "tokens": "auth_cmd:tokens_group",
    "export": "export_cmd:export_command",
    "import": "import_cmd:import_command",
    "ssh-keys": "ssh_cmd:ssh_keys_group",
    "serve-ssh": "ssh_cmd:serve_ssh_command",
    "ssh-session": "ssh_cmd:ssh_session_command",
    "backup": "backup_cmd:backup_group",
    "retention": "retention_cmd:retention_group",
    "audit": "audit_cmd:audit_group",
    "doctor": "doctor_cmd:doctor_command",
    "check": "check_cmd:check_group",
    "launcher": "launcher_cmd:launcher_group",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use (the pattern of click's docs)."""

    def __init__(self, *args: object, lazy: dict[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context | None, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            module, attribute = self.lazy[cmd_name].split(":")
            command = getattr(importlib.import_module(f"carecli.cli.{module}"), attribute)
            if command.name != cmd_name:
                raise RuntimeError(f"carecli.cli.{module}.{attribute} is '{command.name}', listed as '{cmd_name}'")
            self.add_command(command)
        return self.commands.get(cmd_name)


@click.group(cls=LazyGroup, lazy=SUBCOMMANDS, context_settings={"help_option_names": ["-h", "--help"]},
             invoke_without_command=True)
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
            from carecli.cli.app_cmd import run_app

            run_app()
        else:  # a script or a pipe: the app needs a terminal, so say what there is
            click.echo(ctx.get_help())




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
    except Exception as exc:
        code = _database_error(exc)  # SQLAlchemy is imported by the commands that use it, not to start up
        if code is not None:
            return code
        # The last line of defence: say what, never dump values.
        log.error("internal error", exc_info=True)
        if os.environ.get("CARECLI_DEBUG") == "1":
            traceback.print_exc()
        click.echo(
            f"carecli: internal error ({type(exc).__name__}); set CARECLI_DEBUG=1 to see the traceback",
            err=True,
        )
        return EXIT_FAILURE
    return result if isinstance(result, int) else 0


def _database_error(exc: Exception) -> int | None:
    """The exit code for a database error (said in one line), or None when ``exc`` is not one."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if not isinstance(exc, DBAPIError):
        return None
    from carecli.data.databases import describe_dbapi_error

    # Never str(exc): SQLAlchemy embeds the statement and its parameters.
    log.error("database error", extra={"error": type(exc.orig).__name__,
                                       "sqlstate": getattr(exc.orig, "sqlstate", None)})
    click.echo(f"carecli: database error: {describe_dbapi_error(exc)}", err=True)
    return EXIT_USAGE if isinstance(exc, (OperationalError, InterfaceError)) else EXIT_FAILURE


def command_path(group: click.Group, argv: list[str]) -> str:
    """The subcommand names in ``argv`` (``"db upgrade"``), never argument values: those may be e-mails."""
    names: list[str] = []
    current: click.Command = group
    for token in argv:
        if token.startswith("-"):
            continue
        found = current.get_command(click.Context(current), token) if isinstance(current, click.Group) else None
        if found is None:
            break
        names.append(token)
        current = found
    return " ".join(names) or "carecli"

"""``carecli db``: migrate, inspect and open the two databases."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator

import click
from alembic.util.exc import CommandError
from sqlalchemy import Engine

from carecli.data import migrate
from carecli.data.databases import Databases, check_connection, display_url, open_databases
from carecli.errors import EXIT_FAILURE, ConfigError

DB_CHOICE = click.Choice(["identity", "platform"])


def _selected(databases: Databases, only: str | None) -> Iterator[tuple[str, Engine]]:
    for name, engine in databases.items():
        if only is None or only == name:
            check_connection(engine, name)
            yield name, engine


def _current(engine: Engine, name: str) -> str | None:
    with engine.connect() as connection:
        return migrate.current_revision(connection, name)


def _run_alembic(action: str, engine: Engine, name: str, revision: str) -> tuple[str | None, str | None]:
    try:
        if action == "upgrade":
            return migrate.upgrade(engine, name, revision)
        return migrate.downgrade(engine, name, revision)
    except CommandError as exc:
        raise ConfigError(
            f"cannot {action} the {name} database to '{revision}': {exc}",
            hint="revisions are per database: use --db, `head`, `base` or a relative step like -1",
        ) from None


@click.group("db")
def db_group() -> None:
    """Migrate and inspect the identity and platform databases."""


@db_group.command("upgrade")
@click.argument("revision", default="head")
@click.option("--db", "only", type=DB_CHOICE, help="Only this database (default: both).")
def db_upgrade(revision: str, only: str | None) -> None:
    """Migrate the databases up to REVISION (default: head)."""
    databases = open_databases(migrate_embedded=False, check=False)
    for name, engine in _selected(databases, only):
        before, after = _run_alembic("upgrade", engine, name, revision)
        click.echo(f"{name}: {before or 'empty'} -> {after or 'empty'}")


@db_group.command("downgrade")
@click.argument("revision")
@click.option("--db", "only", type=DB_CHOICE, help="Only this database (default: both).")
def db_downgrade(revision: str, only: str | None) -> None:
    """Migrate the databases down to REVISION (`base` removes carecli's schema)."""
    databases = open_databases(migrate_embedded=False, check=False)
    # Platform first: nothing in identity depends on it, and it goes up last.
    for name, engine in sorted(_selected(databases, only), key=lambda item: item[0] != "platform"):
        before, after = _run_alembic("downgrade", engine, name, revision)
        click.echo(f"{name}: {before or 'empty'} -> {after or 'empty'}")


def _state(engine: Engine, name: str) -> tuple[str | None, str, bool]:
    current = _current(engine, name)
    head = migrate.head_revision(name)
    return current, head, current == head


@db_group.command("current")
@click.option("--db", "only", type=DB_CHOICE, help="Only this database (default: both).")
def db_current(only: str | None) -> None:
    """Show each database's revision and whether it is at head."""
    databases = open_databases(migrate_embedded=False, check=False)
    for name, engine in _selected(databases, only):
        current, head, at_head = _state(engine, name)
        mark = "(head)" if at_head else f"(head is {head})"
        click.echo(f"{name:<9} {current or 'empty'} {mark}  {display_url(engine.url)}")


@db_group.command("check")
@click.option("--db", "only", type=DB_CHOICE, help="Only this database (default: both).")
@click.pass_context
def db_check(ctx: click.Context, only: str | None) -> None:
    """Exit 1 when a database is not at head (for deploy scripts and health checks)."""
    databases = open_databases(migrate_embedded=False, check=False)
    behind = False
    for name, engine in _selected(databases, only):
        current, head, at_head = _state(engine, name)
        if at_head:
            click.echo(f"{name}: up to date ({head})")
        else:
            behind = True
            click.echo(f"{name}: at {current or 'empty'}, head is {head}; run `carecli db upgrade`")
    if behind:
        ctx.exit(EXIT_FAILURE)


@db_group.command("grants")
@click.option("--db", "only", type=DB_CHOICE, help="Only this database (default: both).")
@click.option("--prefix", default="carecli", show_default=True, help="Role name prefix.")
@click.option("--apply", "apply_", is_flag=True, help="Run the SQL instead of printing it (needs CREATEROLE).")
def db_grants(only: str | None, prefix: str, apply_: bool) -> None:
    """Print (or apply) SQL for least-privilege roles: owner, app (no DELETE, audit_logs
    insert-only) and read-only auditor, per database."""
    from carecli.data.grants import grants_sql

    if not prefix.replace("_", "").isalnum():
        raise ConfigError("--prefix may contain only letters, digits and underscores")
    databases = open_databases(check=False)
    for name, engine in _selected(databases, only):
        with engine.connect() as connection:
            statements = grants_sql(connection, name, prefix)
            if apply_:
                for statement in statements:
                    connection.exec_driver_sql(statement)
                connection.commit()
                click.echo(f"{name}: applied {len(statements)} statements")
            else:
                click.echo(f"-- {name} database ({display_url(engine.url)})")
                click.echo("\n".join(statements))
                click.echo()


@db_group.command("psql")
@click.option("--db", "only", type=DB_CHOICE, default="platform", show_default=True,
              help="Which database to open.")
def db_psql(only: str) -> None:
    """Open psql on a database (the embedded server's own psql when it is in use)."""
    databases = open_databases(check=False)
    engine = databases.engine(only)
    check_connection(engine, only)
    psql = None
    if databases.embedded is not None:
        psql = databases.embedded.psql_path
    psql = psql or shutil.which("psql")
    if psql is None:
        raise ConfigError("psql is not installed",
                          hint="install the PostgreSQL client (e.g. apt install postgresql-client)")
    url = engine.url
    env = dict(os.environ)
    if url.password:
        # Keep the password out of the process list.
        env["PGPASSWORD"] = str(url.password)
    libpq_url = url.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    databases.dispose()  # psql makes its own connection; ours would sit idle meanwhile
    # psql runs as a child, not in place of this process (exec): when it ends, carecli ends as every command
    # does, so an embedded server this process started is stopped if no other carecli still uses it.
    code = run_interactive([psql, libpq_url], env)
    if code:
        raise SystemExit(code)


def run_interactive(argv: list[str], env: dict[str, str]) -> int:
    """Run an interactive program in the foreground and return its exit code.

    Ctrl-C belongs to the program (psql cancels the running query with it), so this
    process ignores SIGINT until the program ends, instead of dying and leaving it behind.
    The program is started first, so it keeps the default handling of SIGINT.
    """
    process = subprocess.Popen(argv, env=env)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)

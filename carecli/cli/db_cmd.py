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
    """Migrate the databases up to REVISION (default: head); then build the secondary indexes a
    stopped bulk load left dropped."""
    databases = open_databases(migrate_embedded=False, check=False)
    for name, engine in _selected(databases, only):
        before, after = _run_alembic("upgrade", engine, name, revision)
        click.echo(f"{name}: {before or 'empty'} -> {after or 'empty'}")
        if name == "platform":
            _build_leftover_indexes(engine)


def _build_leftover_indexes(engine: Engine) -> None:
    """Build the indexes of loads that are gone (none usually: one query)."""
    from carecli.data import deferred_indexes
    from carecli.data.actor import Actor

    with engine.connect() as connection:
        left = deferred_indexes.orphans(connection) if deferred_indexes.available(connection) else []
    if not left:
        return
    result = deferred_indexes.rebuild(engine, Actor.system("cli"))
    click.echo(f"platform: built {len(result.built)} secondary index(es) a stopped bulk load had dropped"
               + (f"; {len(result.failed)} could not be built (see `carecli doctor`)" if result.failed else ""))


@db_group.command("rebuild-indexes")
@click.pass_context
def db_rebuild_indexes(ctx: click.Context) -> None:
    """Build the secondary indexes a bulk load dropped and did not build again (it was killed or lost
    its connection), and REINDEX any INVALID index. Exit 1 when one could not be built."""
    from carecli.data import deferred_indexes
    from carecli.data.actor import Actor

    databases = open_databases(check=False)
    engine = databases.platform
    check_connection(engine, "platform")
    with engine.connect() as connection:
        if not deferred_indexes.available(connection):
            raise ConfigError("the platform database has no deferred_indexes table (revision platform_0014)",
                              hint="run `carecli db upgrade`")
        running = [record for record in deferred_indexes.recorded(connection) if record.alive]
    actor = Actor.system("cli")
    result = deferred_indexes.rebuild(engine, actor, progress=lambda name: click.echo(f"built {name}"))
    reindexed = deferred_indexes.reindex_invalid(engine, actor)
    for name in reindexed:
        click.echo(f"reindexed {name} (it was INVALID)")
    if running:
        click.echo(f"{len(running)} index(es) belong to a load still running ({deferred_indexes.describe(running)}): "
                   "it builds them when it ends")
    with engine.connect() as connection:
        left = deferred_indexes.orphans(connection)
        invalid = deferred_indexes.invalid_indexes(connection)
    if left or invalid:
        names = [record.name for record in left] + [name for _, name in invalid]
        click.echo(f"could not build {', '.join(names)}: see the log; the tables may be busy, or this role may not "
                   "own them (run as the owner role)", err=True)
        ctx.exit(EXIT_FAILURE)
    if not (result.built or reindexed or running):
        click.echo("platform: no deferred or invalid index")


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
    """Exit 1 when a database is not at head, or secondary indexes a stopped bulk load dropped are
    missing or INVALID (for deploy scripts and health checks)."""
    databases = open_databases(migrate_embedded=False, check=False)
    behind = False
    for name, engine in _selected(databases, only):
        current, head, at_head = _state(engine, name)
        if at_head:
            click.echo(f"{name}: up to date ({head})")
        else:
            behind = True
            click.echo(f"{name}: at {current or 'empty'}, head is {head}; run `carecli db upgrade`")
        if name == "platform" and _indexes_missing(engine):
            behind = True
    if behind:
        ctx.exit(EXIT_FAILURE)


def _indexes_missing(engine: Engine) -> bool:
    """Report secondary indexes a stopped bulk load left dropped, and INVALID ones; whether there are any."""
    from carecli.data import deferred_indexes

    with engine.connect() as connection:
        if not deferred_indexes.available(connection):
            return False
        records = deferred_indexes.recorded(connection)
        invalid = deferred_indexes.invalid_indexes(connection)
    left = [record for record in records if not record.alive]
    running = [record for record in records if record.alive]
    if running:
        click.echo(f"platform: {len(running)} index(es) dropped by a bulk load still running; it builds them when "
                   "it ends")
    if left:
        click.echo(f"platform: {len(left)} secondary index(es) dropped by a bulk load that stopped are missing "
                   f"({deferred_indexes.describe(left)}); run `carecli db rebuild-indexes`")
    if invalid:
        click.echo(f"platform: INVALID index(es) {', '.join(name for _, name in invalid)}; "
                   "run `carecli db rebuild-indexes`")
    return bool(left or invalid)


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

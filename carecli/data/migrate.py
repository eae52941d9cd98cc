"""Run the Alembic histories: one per database, each in its own folder.

``migrations/identity`` and ``migrations/platform`` are independent
histories with their own version tables, so the two databases can live on
different servers (or, for a small install, in one database). Every run takes
a transaction-scoped advisory lock first, so several carecli processes that
start at once (the embedded server's first run, a fleet of SSH sessions)
migrate one after the other instead of racing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, MetaData, text

import carecli
from carecli.data.models import IDENTITY_METADATA, PLATFORM_METADATA
from carecli.data.revisions import DATABASES as DATABASES
from carecli.data.revisions import HEADS as HEADS
from carecli.data.revisions import VERSION_TABLES as VERSION_TABLES

if TYPE_CHECKING:
    from alembic.config import Config

TARGET_METADATA: dict[str, MetaData] = {"identity": IDENTITY_METADATA, "platform": PLATFORM_METADATA}
# Arbitrary but fixed keys for pg_advisory_xact_lock, one per history.
_LOCK_KEYS = {"identity": 7_263_110_001, "platform": 7_263_110_002}


def migrations_root() -> Path:
    """Where the migration folders are: inside an installed wheel, or the repo."""
    package_dir = Path(carecli.__file__).resolve().parent
    for candidate in (package_dir / "_migrations", package_dir.parent / "migrations"):
        if (candidate / "identity" / "env.py").exists():
            return candidate
    raise FileNotFoundError("carecli's migrations folder is missing from this installation")


def alembic_config(database: str, connection: Connection | None = None) -> Config:
    """An Alembic config for one database's history, optionally bound to a connection."""
    from alembic.config import Config

    if database not in DATABASES:
        raise ValueError(f"unknown database {database!r}")
    config = Config()
    config.set_main_option("script_location", str(migrations_root() / database))
    config.attributes["carecli_database"] = database
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision(database: str) -> str:
    """This carecli's newest revision of ``database``'s history."""
    if database not in DATABASES:
        raise ValueError(f"unknown database {database!r}")
    return HEADS[database]


def script_head_revision(database: str) -> str:
    """The newest revision as the migration scripts say (reads them all with Alembic: for checks and tests)."""
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(alembic_config(database)).get_heads()
    return heads[0]


def current_revision(connection: Connection, database: str) -> str | None:
    """The revision ``database`` is at (None: never migrated), read from its version table as Alembic keeps it."""
    table = VERSION_TABLES[database]
    if connection.execute(text("SELECT to_regclass(:table)"), {"table": table}).scalar() is None:
        return None
    return connection.execute(text(f'SELECT version_num FROM "{table}" LIMIT 1')).scalar()


def upgrade(engine: Engine, database: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate ``database`` up to ``revision`` (idempotent); returns (before, after).

    Both revisions are read under the migration lock, so when several
    processes race, exactly one reports the change.
    """
    from alembic import command

    with engine.connect() as connection:
        config = alembic_config(database, connection)
        command.upgrade(config, revision)
        connection.commit()
    return config.attributes.get("revision_before"), config.attributes.get("revision_after")


def upgrade_if_behind(engine: Engine, database: str) -> None:
    """:func:`upgrade` to head unless ``database`` is there already (one query; no Alembic at all then)."""
    with engine.connect() as connection:
        current = current_revision(connection, database)
    if current != head_revision(database):
        upgrade(engine, database)


def downgrade(engine: Engine, database: str, revision: str) -> tuple[str | None, str | None]:
    """Migrate ``database`` down to ``revision``; at ``base`` the version table goes too."""
    from alembic import command

    with engine.connect() as connection:
        config = alembic_config(database, connection)
        command.downgrade(config, revision)
        if revision == "base":
            connection.execute(text(f'DROP TABLE IF EXISTS "{VERSION_TABLES[database]}"'))
        connection.commit()
    return config.attributes.get("revision_before"), config.attributes.get("revision_after")


def run_env(database: str) -> None:
    """Body of ``migrations/<database>/env.py``.

    Carecli passes an open connection; run standalone (``alembic -c ...``) it
    connects with carecli's own settings.
    """
    from alembic import context

    config = context.config
    options: dict[str, Any] = {
        "target_metadata": TARGET_METADATA[database],
        "version_table": VERSION_TABLES[database],
        "compare_type": True,
        "compare_server_default": True,
    }
    if context.is_offline_mode():
        from carecli.data.databases import configured_url

        context.configure(url=configured_url(database), literal_binds=True, **options)
        with context.begin_transaction():
            context.run_migrations()
        return

    connection = config.attributes.get("connection")
    if connection is None:
        from carecli.data.databases import open_engine

        engine = open_engine(database, migrate=False)
        with engine.connect() as own_connection:
            _run_online(own_connection, database, options)
            own_connection.commit()
        engine.dispose()
        return
    _run_online(connection, database, options)


def _run_online(connection: Connection, database: str, options: dict[str, Any]) -> None:
    from alembic import context

    context.configure(connection=connection, transaction_per_migration=False, **options)
    with context.begin_transaction():
        # Big tables make index builds slow; the app's statement timeout must not cut a migration short.
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEYS[database]})
        attributes = context.config.attributes
        attributes["revision_before"] = current_revision(connection, database)
        context.run_migrations()
        attributes["revision_after"] = current_revision(connection, database)


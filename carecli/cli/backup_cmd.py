"""``carecli backup``: encrypted backups of both databases (create, verify, restore, generate-key).

``create`` needs a signed-in administrator (users:admin and keys:admin) and
is audited in the platform database. ``verify`` and ``restore`` are
authorised by possession of the backup key (and, for restore, the target
databases' credentials): at a recovery site there may be no live database to
sign in against. A restore is audited in the platform database it restores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from carecli.config import load_settings, parse_database_url
from carecli.data.crypto.backup_key import SOURCE_MASTER, generate_backup_key
from carecli.data.databases import open_databases, require_head
from carecli.services.auth.current import resolve_actor
from carecli.services.backup import create_backup, key_for_create, restore_backup, verify_backup
from carecli.services.backup.files import default_name

MB = 1024 * 1024


def _size(count: int) -> str:
    return f"{count / MB:,.1f} MiB" if count >= MB / 10 else f"{count:,} bytes"


def _rate(count: int, seconds: float) -> str:
    return f"{count / MB / seconds:,.1f} MiB/s" if seconds > 0 else "-"


@click.group("backup")
def backup_group() -> None:
    """Encrypted backups of the identity and platform databases.

    pg_dump's output is encrypted (AES-256-GCM, in authenticated 1 MiB
    chunks) on its way to the file; no plain dump touches the disk. The key is
    CARECLI_BACKUP_KEY / CARECLI_BACKUP_KEY_FILE, or one derived from the
    master key when neither is set.
    """


@backup_group.command("create")
@click.option("--out", "out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="The backup file to write (default: carecli-backup-<UTC time>.ccbak here); never overwritten.")
def backup_create(out: Path | None) -> None:
    """Dump both databases into one encrypted backup file (admins only; audited)."""
    settings = load_settings()
    databases = open_databases(settings)
    require_head(databases)
    actor = resolve_actor(settings, databases, channel="cli").actor
    key = key_for_create(settings, databases)
    result = create_backup(databases, actor, key, out or default_name(), pg_bin=settings.pg_bin)
    dumps = ", ".join(f"{s.name} {_size(s.plaintext_bytes)}" for s in result.streams)
    click.echo(f"backup written to {result.path}: {_size(result.file_bytes)} ({dumps} of pg_dump output) "
               f"in {result.seconds:.1f}s, {_rate(result.file_bytes, result.seconds)}")
    click.echo(f"backup id {result.backup_id}, key {result.key_id} ({key.source}), pg_dump {result.pg_dump}")
    if key.kind == SOURCE_MASTER:
        click.echo("note: no backup key is configured, so this backup's key is derived from the master key; "
                   "restoring it needs that master key. Set CARECLI_BACKUP_KEY_FILE for backups that a "
                   "recovery site can restore without it (`carecli backup generate-key`).", err=True)


@backup_group.command("verify")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def backup_verify(file: Path) -> None:
    """Check every chunk of a backup file (and that nothing is missing or added); writes nothing.

    Exit 0 when the backup is intact, 1 when it is altered, truncated or the
    key does not open it, 2 when no key is configured or the file is missing.
    """
    settings = load_settings()
    result = verify_backup(file, settings)
    header = result.header
    click.echo(f"{file}: intact, {_size(result.file_bytes)}, backup {header.get('backup_id')} made "
               f"{header.get('created_at')} by carecli {header.get('carecli_version')}")
    for stream, described in zip(result.streams, header.get("streams", []), strict=False):
        click.echo(f"  {stream.name}: {stream.chunks:,} chunks, {_size(stream.plaintext_bytes)} of pg_dump output, "
                   f"PostgreSQL {described.get('server_version')}, revision {described.get('revision')}")
    click.echo(f"  key {header.get('key', {}).get('id')} ({result.key_source}); "
               f"checked in {result.seconds:.1f}s, {_rate(result.file_bytes, result.seconds)}")


@backup_group.command("restore")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--identity-url", required=True, metavar="URL", help="An empty database for the identity data.")
@click.option("--platform-url", required=True, metavar="URL", help="An empty database for the platform data.")
def backup_restore(file: Path, identity_url: str, platform_url: str) -> None:
    """Restore a backup into two EMPTY databases (refuses any that hold tables).

    The whole file is checked first; each database is then restored in a
    single transaction, so a failure leaves it empty. Afterwards both are
    migrated to this carecli's head revision.
    """
    settings = load_settings()
    targets = {"identity": parse_database_url(identity_url, origin="--identity-url"),
               "platform": parse_database_url(platform_url, origin="--platform-url")}
    if targets["identity"] == targets["platform"]:
        raise click.UsageError("--identity-url and --platform-url name the same database; give two")
    result = restore_backup(file, settings, targets, pg_bin=settings.pg_bin)
    for stream in result.streams:
        click.echo(f"restored {stream.name} ({_size(stream.plaintext_bytes)} of pg_dump output) "
                   f"at revision {result.revisions.get(stream.name)}")
    click.echo(f"backup {result.backup_id} restored in {result.seconds:.1f}s with pg_restore {result.pg_restore}")
    click.echo("privileges were not restored: run `carecli db grants --apply` against the new databases",
               err=True)


@backup_group.command("generate-key")
def backup_generate_key() -> None:
    """Print a new random 256-bit backup key, base64, and nothing else.

    \b
    (umask 077; carecli backup generate-key > backup.key)
    """
    click.echo(generate_backup_key())
    if sys.stdout.isatty():
        click.echo("store it in a file only you can read (chmod 600) and a copy at the recovery site", err=True)

"""``carecli keys``: the data keys that encrypt member SSN and date of birth.

These are key-custody operations: until sign-in exists they are authorised by
possession of the master key (whoever can run them can already decrypt every
value) and audited under the system actor, whose user agent names the OS
account. Nothing here ever prints a key, a wrapped key or a decrypted value;
``generate-master`` prints a *new* master key, and only to stdout.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import click

from carecli.config import MASTER_KEY_ENV, Settings, load_settings
from carecli.data import audit
from carecli.data.actor import Actor
from carecli.data.crypto import keystore
from carecli.data.crypto.master import (
    KEYRING_SERVICE,
    MASTER_KEY_FILE_NAME,
    LocalMasterKey,
    MasterKey,
    decode_key,
    encode_key,
    generate_master_key,
    keyring_account,
    resolve_master_key,
)
from carecli.data.crypto.runtime import keyring_scope, local_master_key, master_key
from carecli.data.databases import Databases, open_databases, require_head
from carecli.errors import EXIT_FAILURE, ConfigError, KeyUnavailable

NIL = uuid.UUID(int=0)
log = logging.getLogger("carecli.keys")
ENTITY_TYPE = "data_key"

SourceKind = Literal["env", "file", "keyring", "embedded-file", "hsm"]


@dataclass(frozen=True)
class _MasterSource:
    """Where the current master key came from, so we can say where a new one goes."""

    kind: SourceKind
    location: str  # the env variable, file path or keyring "service/user"


def _master_source(settings: Settings, databases: Databases, master: MasterKey) -> _MasterSource:
    # Mirrors runtime.master_key's order: the HSM, then resolve_master_key's env, file, keyring, embedded file.
    if not isinstance(master, LocalMasterKey):
        return _MasterSource("hsm", master.key_id)
    if settings.master_key:
        return _MasterSource("env", MASTER_KEY_ENV)
    if settings.master_key_file is not None:
        return _MasterSource("file", str(settings.master_key_file))
    account = keyring_account(keyring_scope(settings, databases))
    if master.source.startswith("the OS keyring"):
        return _MasterSource("keyring", f"{KEYRING_SERVICE}/{account}")
    assert databases.embedded is not None  # resolve_master_key raised otherwise
    return _MasterSource("embedded-file", str(databases.embedded.data_dir / MASTER_KEY_FILE_NAME))


def _open() -> tuple[Settings, Databases]:
    settings = load_settings()
    databases = open_databases(settings)
    require_head(databases)
    return settings, databases


def _audit(databases: Databases, entity_id: uuid.UUID, action: str, values: dict[str, Any]) -> None:
    """One committed audit row for a key operation: ids and counts, never key material."""
    audit.write_committed(databases.platform, Actor.system("cli"), ENTITY_TYPE, entity_id, action, values)


class _Progress:
    """One self-rewriting line on a terminal; silent when stderr is not one."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if self.enabled:
            # A later pass may re-encrypt rows written during the first one.
            total = max(total, done)
            click.echo(f"\r  re-encrypting members {done:>10,} / {total:,}", err=True, nl=False)
            self.shown = True

    def finish(self) -> None:
        if self.shown:
            click.echo("\r" + " " * 60 + "\r", err=True, nl=False)
            self.shown = False


@click.group("keys")
def keys_group() -> None:
    """Data keys for member SSN and date of birth: status, rotation, re-wrap.

    Values are encrypted with data keys kept in the platform database, each
    wrapped (encrypted) by the master key: in an HSM when CARECLI_HSM_MODULE
    is set, else from CARECLI_MASTER_KEY, CARECLI_MASTER_KEY_FILE or the OS
    keyring.
    """


@keys_group.command("status")
def keys_status() -> None:
    """List the data keys, which one is primary and how many values each protects."""
    settings, databases = _open()
    keys = keystore.key_status(databases.platform)
    master: MasterKey | None = None
    problem: ConfigError | None = None
    try:
        master = master_key(settings, databases)
    except ConfigError as exc:
        problem = exc  # still show the keys: the table needs no master key
    if master is not None:
        click.echo(f"master key: {master.source} ({master.key_id})")
    else:
        click.echo("master key: none found")
    if not keys:
        click.echo("no data keys yet: the first is made when an SSN or date of birth is first stored "
                   "(or by `carecli keys rotate`)")
    else:
        click.echo()
        _print_key_table(keys, master)
    if problem is not None:
        raise problem


def _print_key_table(keys: list[keystore.DataKeyStatus], master: MasterKey | None) -> None:
    header = ("data key", "status", "master key", "created (UTC)", "SSN values", "DOB values")
    rows = []
    foreign = False
    for key in keys:
        mark = ""
        if master is not None and key.master_key_id != master.key_id:
            mark, foreign = " *", True
        rows.append((str(key.id), key.status, key.master_key_id + mark, key.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                     f"{key.ssn_values:,}", f"{key.dob_values:,}"))
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]
    numeric = {4, 5}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
                         for i, cell in enumerate(cells)).rstrip()

    click.echo(line(header))
    click.echo("  ".join("-" * width for width in widths))
    for row in rows:
        click.echo(line(row))
    if foreign:
        click.echo("\n* wrapped by a different master key than the one configured: this master key cannot open it")


@keys_group.command("rotate")
@click.option("--batch-size", type=click.IntRange(min=1, max=100_000), default=2000, show_default=True,
              help="Members re-encrypted per transaction (each batch locks only its own rows).")
@click.option("--resume-only", is_flag=True,
              help="Do not make a new key: only finish moving values to the current primary key.")
def keys_rotate(batch_size: int, resume_only: bool) -> None:
    """Make a new primary data key and re-encrypt every SSN and DOB under it.

    Runs while carecli is in use: rows being edited are skipped and retried.
    If it is interrupted, run it again: it resumes without making another key.
    Old keys are retired once no value uses them.
    """
    settings, databases = _open()
    master = master_key(settings, databases)
    before = keystore.key_status(databases.platform)
    progress = _Progress()
    try:
        result = keystore.rotate(databases.platform, master, batch_size=batch_size, new_key=not resume_only,
                                 progress=progress, actor=Actor.system("cli"))
    except (KeyboardInterrupt, click.Abort):
        progress.finish()
        _audit_interrupted(databases, before)
        log.warning("key rotation interrupted")
        click.echo("rotation interrupted; run `carecli keys rotate` again to resume it (no new key is made)",
                   err=True)
        raise
    finally:
        progress.finish()
    remaining = _values_not_under(databases, result.primary_id)
    # Summary of the whole run; the key's creation and retirements were audited in their own transactions.
    _audit(databases, result.primary_id, "rotate", {
        "created_new_key": result.created_new_key,
        "reencrypted_rows": result.reencrypted_rows,
        "retired_keys": [str(key_id) for key_id in result.retired],
        "rows_left_on_old_keys": remaining,
        "master_key_id": master.key_id,
    })
    log.info("key rotation finished", extra={
        "primary_key_id": str(result.primary_id), "created_new_key": result.created_new_key,
        "reencrypted_rows": result.reencrypted_rows, "retired_keys": len(result.retired),
        "rows_left_on_old_keys": remaining})
    if result.created_new_key:
        click.echo(f"new primary data key: {result.primary_id}")
    elif not result.reencrypted_rows and not remaining:
        click.echo(f"nothing to resume: every value is already under primary data key {result.primary_id}")
    else:
        click.echo(f"resumed the rotation to primary data key {result.primary_id} (no new key made)")
    click.echo(f"members re-encrypted: {result.reencrypted_rows:,}")
    if result.retired:
        click.echo("retired keys (no value uses them): " + ", ".join(str(key_id) for key_id in result.retired))
    else:
        click.echo("retired keys: none")
    if remaining:
        click.echo(f"{remaining:,} values are still under an older key (their rows stayed busy); "
                   "run `carecli keys rotate --resume-only` to finish", err=True)
        sys.exit(EXIT_FAILURE)


def _values_not_under(databases: Databases, primary: uuid.UUID) -> int:
    return sum(key.protects for key in keystore.key_status(databases.platform) if key.id != primary)


def _audit_interrupted(databases: Databases, before: list[keystore.DataKeyStatus]) -> None:
    """An interrupted rotation may already have made a key: leave a trace of it."""
    try:
        after = keystore.key_status(databases.platform)
        primary = next((key.id for key in after if key.status == "primary"), NIL)
        made = primary not in {key.id for key in before}
        _audit(databases, primary, "rotate", {"interrupted": True, "created_new_key": made})
    except Exception:  # noqa: BLE001 - best effort on the way out; the interrupt itself must propagate
        pass


@keys_group.command("rewrap")
@click.option("--new-key-file", type=click.Path(path_type=Path, dir_okay=False),
              help="A 0600 file holding the new base64 master key.")
@click.option("--new-key-env", metavar="VAR", help="An environment variable holding the new base64 master key.")
@click.option("--store", is_flag=True,
              help="Also put the new master key where the current one is kept "
                   "(the OS keyring or carecli's own key file only).")
@click.option("--to-hsm", is_flag=True,
              help="Move from the local master key (CARECLI_MASTER_KEY, its file or the keyring) to the key in "
                   "the configured HSM (CARECLI_HSM_*; `carecli keys hsm-init` makes it).")
@click.option("--from-hsm", is_flag=True,
              help="Move from the configured HSM key back to a local master key: --new-key-file/--new-key-env, "
                   "else CARECLI_MASTER_KEY or CARECLI_MASTER_KEY_FILE.")
def keys_rewrap(new_key_file: Path | None, new_key_env: str | None, store: bool, to_hsm: bool,
                from_hsm: bool) -> None:
    """Re-wrap every data key under a new master key (the values are not touched).

    Data keys, the blind-index key and the audit seal keys are re-wrapped in
    one transaction. Afterwards carecli must be given the new master key:
    every process still holding the old one fails to open the keys until it
    is restarted with it.

    \b
    carecli keys rewrap --new-key-file NEW.key     local key -> another local key
    carecli keys rewrap --to-hsm                   local key -> the HSM key
    carecli keys rewrap --from-hsm [--new-key-file F | --new-key-env V]
                                                   the HSM key -> a local key
    """
    if to_hsm and from_hsm:
        raise click.UsageError("give --to-hsm or --from-hsm, not both")
    if (to_hsm or from_hsm) and store:
        raise click.UsageError("--store does not go with --to-hsm or --from-hsm: the HSM key stays in the HSM, "
                               "and a local key to move to is already where you keep it")
    if to_hsm:
        if new_key_file is not None or new_key_env is not None:
            raise click.UsageError("--to-hsm moves to the HSM key: leave out --new-key-file and --new-key-env")
    elif not from_hsm and (new_key_file is None) == (new_key_env is None):
        raise click.UsageError("give exactly one of --new-key-file PATH or --new-key-env VAR "
                               "(or --to-hsm / --from-hsm)")
    elif new_key_file is not None and new_key_env is not None:
        raise click.UsageError("give at most one of --new-key-file PATH or --new-key-env VAR")
    settings, databases = _open()
    if to_hsm:
        _require_hsm(settings, "--to-hsm")
        old_master: MasterKey = local_master_key(settings, databases)
        new_master: MasterKey = master_key(settings, databases)
    elif from_hsm:
        _require_hsm(settings, "--from-hsm")
        old_master = master_key(settings, databases)
        new_master = (_read_new_master(new_key_file, new_key_env)
                      if new_key_file is not None or new_key_env is not None
                      else _configured_local_master(settings))
    else:
        new_master = _read_new_master(new_key_file, new_key_env)
        old_master = master_key(settings, databases)
    source = _master_source(settings, databases, old_master)
    if new_master.key_id == old_master.key_id:
        raise ConfigError("the new master key is the one already in use",
                          hint="generate a new one with `carecli keys generate-master`")
    if _already_under(databases, new_master):
        raise ConfigError(f"every data key is already wrapped by master key {new_master.key_id}",
                          hint="nothing to re-wrap: carecli just needs to be given that master key")
    if store and source.kind not in ("keyring", "embedded-file"):
        raise ConfigError(
            f"--store can only replace a master key kept in the OS keyring or carecli's own key file; "
            f"the current one comes from {old_master.source}",
            hint="leave out --store and update that setting yourself after the re-wrap",
        )
    # The rewrap writes its audit row in its own transaction.
    count = keystore.rewrap(databases.platform, old_master, new_master, actor=Actor.system("cli"))
    _verify(databases, new_master)
    log.info("master key rewrap finished", extra={"data_keys": count, "old_master_key_id": old_master.key_id,
                                                  "new_master_key_id": new_master.key_id})
    click.echo(f"re-wrapped {count} data key{'' if count == 1 else 's'} under master key {new_master.key_id} "
               f"(was {old_master.key_id})")
    if to_hsm:
        click.echo(f"carecli now opens the data keys through {new_master.source}: keep CARECLI_HSM_MODULE, "
                   "CARECLI_HSM_TOKEN, the key label and the PIN set everywhere carecli runs, and restart "
                   "running processes")
        if settings.backup_key is None and settings.backup_key_file is None:
            click.echo("backups need a backup key of their own now (none can be derived from a key in an HSM): "
                       "set CARECLI_BACKUP_KEY_FILE (`carecli backup generate-key`)", err=True)
    elif from_hsm or source.kind == "hsm":
        click.echo("now unset CARECLI_HSM_MODULE (and the [hsm] settings) everywhere carecli runs, give it the "
                   "new master key and restart running processes:")
        click.echo(f"  {_local_instructions(settings, new_key_file, new_key_env)}")
    elif isinstance(new_master, LocalMasterKey) and store:
        assert isinstance(old_master, LocalMasterKey)
        _store(source, new_master, old_master)
    else:
        click.echo("now give carecli the new master key, everywhere it runs, and restart running processes:")
        click.echo(f"  {_switch_instructions(source, new_key_file, new_key_env)}")
    click.echo(f"keep the old master key ({old_master.key_id}) until database backups taken before now "
               "have expired: only it opens their data keys")


def _require_hsm(settings: Settings, option: str) -> None:
    if settings.hsm_module is None:
        raise ConfigError(f"{option} needs an HSM, and none is configured",
                          hint="set CARECLI_HSM_MODULE, CARECLI_HSM_TOKEN and CARECLI_HSM_PIN_FILE "
                               "(or the [hsm] section of the config file)")


def _configured_local_master(settings: Settings) -> LocalMasterKey:
    """The local key to move back to when no --new-key-* option names one: CARECLI_MASTER_KEY or its file."""
    if not settings.master_key and settings.master_key_file is None:
        raise ConfigError("--from-hsm needs the local master key to move to",
                          hint="give --new-key-file PATH or --new-key-env VAR, or set CARECLI_MASTER_KEY_FILE "
                               "(`(umask 077; carecli keys generate-master > FILE)`)")
    return resolve_master_key(env_key=settings.master_key, key_file=settings.master_key_file, keyring_scope="",
                              embedded_dir=None)


def _already_under(databases: Databases, master: MasterKey) -> bool:
    keys = keystore.key_status(databases.platform)
    return bool(keys) and all(key.master_key_id == master.key_id for key in keys)


def _local_instructions(settings: Settings, new_key_file: Path | None, new_key_env: str | None) -> str:
    if new_key_file is not None:
        return f"set CARECLI_MASTER_KEY_FILE={new_key_file.resolve()}"
    if new_key_env is not None:
        return f"set {MASTER_KEY_ENV} to the new key (from ${new_key_env}), or CARECLI_MASTER_KEY_FILE to a " \
               "0600 file holding it"
    if settings.master_key:
        return f"keep {MASTER_KEY_ENV} as it is"
    return f"keep CARECLI_MASTER_KEY_FILE={settings.master_key_file} as it is"


def _read_new_master(path: Path | None, env_name: str | None) -> LocalMasterKey:
    if path is not None:
        # With only a key file given, resolve_master_key reads it under the same
        # rules as CARECLI_MASTER_KEY_FILE (0600, base64, 256 bits).
        return resolve_master_key(env_key=None, key_file=path, keyring_scope="", embedded_dir=None)
    assert env_name is not None
    value = os.environ.get(env_name, "")
    if not value.strip():
        raise ConfigError(f"the environment variable {env_name} is not set or empty",
                          hint="export it with the new base64 master key (`carecli keys generate-master`)")
    return decode_key(value, source=env_name)


def _verify(databases: Databases, new_master: MasterKey) -> None:
    """Unwrap every data key with the new master: proof before we tell anyone to switch."""
    with databases.platform.connect() as connection:
        for key in keystore.load_keys(connection):
            new_master.unwrap(key.wrapped_key, data_key_id=key.id)


def _switch_instructions(source: _MasterSource, new_key_file: Path | None, new_key_env: str | None) -> str:
    given = f"the file {new_key_file}" if new_key_file is not None else f"${new_key_env}"
    if source.kind == "env":
        return f"set {MASTER_KEY_ENV} to the new key (from {given})"
    if source.kind == "file":
        if new_key_file is not None:
            return f"set CARECLI_MASTER_KEY_FILE={new_key_file.resolve()} (or copy it over {source.location})"
        return f"write the new key (from {given}) into {source.location}, mode 0600"
    if source.kind == "keyring":
        service, _, account = source.location.partition("/")
        return (f"store the new key (from {given}) in the OS keyring as service '{service}', user '{account}' "
                "(or set CARECLI_MASTER_KEY_FILE to a 0600 file holding it)")
    return (f"write the new key (from {given}) into {source.location}, mode 0600 "
            "(or set CARECLI_MASTER_KEY_FILE to a 0600 file holding it)")


def _store(source: _MasterSource, new_master: LocalMasterKey, old_master: LocalMasterKey) -> None:
    """Put the new master key where the old one was; the old one is kept beside it for backups."""
    suffix = old_master.key_id.removeprefix("local:")
    try:
        if source.kind == "keyring":
            import keyring

            service, _, account = source.location.partition("/")
            keyring.set_password(service, f"{account}:previous:{suffix}", encode_key(old_master.key))
            keyring.set_password(service, account, encode_key(new_master.key))
            if keyring.get_password(service, account) != encode_key(new_master.key):
                raise OSError("the keyring did not keep the new entry")
            click.echo(f"stored the new master key in the OS keyring ({source.location}); "
                       f"the old one is kept as {account}:previous:{suffix}")
        else:
            path = Path(source.location)
            previous = path.with_name(f"{path.name}.previous-{suffix}")
            os.replace(path, previous)
            _write_private(path, encode_key(new_master.key) + "\n")
            click.echo(f"stored the new master key in {path}; the old one is kept as {previous}")
    except Exception as exc:  # noqa: BLE001 - any failure here needs the same instruction
        raise KeyUnavailable(
            f"the data keys are now wrapped by master key {new_master.key_id}, but storing it in "
            f"{source.location} failed ({type(exc).__name__})",
            hint="put the new key there yourself, or set CARECLI_MASTER_KEY_FILE to a 0600 file holding it; "
            "the old master key no longer opens the data keys",
        ) from None


def _write_private(path: Path, text: str) -> None:
    # Written under a temporary name first: a crash leaves either no file or a whole one.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


@keys_group.command("hsm-init")
def keys_hsm_init() -> None:
    """Generate the master key in the configured HSM token (once) and print its id.

    The key is an AES-256 key made by the token itself: sensitive, never
    extractable, for encryption and decryption only. An existing key under the
    label is never replaced. Then move the data keys to it with
    `carecli keys rewrap --to-hsm`.
    """
    from carecli.data.crypto.hsm import generate_master_key_in_token, hsm_config

    settings = load_settings()
    _require_hsm(settings, "hsm-init")
    config = hsm_config(settings)
    key = generate_master_key_in_token(config)
    log.info("hsm master key generated", extra={"master_key_id": key.key_id, "token": config.token,
                                                "key_label": config.key_label})
    click.echo(key.key_id)
    if sys.stdout.isatty():
        click.echo(f"generated in {config.where}; move the data keys to it with `carecli keys rewrap --to-hsm`",
                   err=True)


@keys_group.command("generate-master")
def keys_generate_master() -> None:
    """Print a new random 256-bit master key, base64, and nothing else.

    \b
    (umask 077; carecli keys generate-master > master.key)
    """
    click.echo(encode_key(generate_master_key()))
    if sys.stdout.isatty():
        click.echo("store it in a file only you can read (chmod 600), a secret manager or the OS keyring",
                   err=True)

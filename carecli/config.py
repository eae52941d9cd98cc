"""Settings: environment variables over a TOML config file over defaults.

The config file lives in the platform's config dir (``carecli config path``
prints it) or wherever ``CARECLI_CONFIG`` points. Every setting has one
environment variable and one ``[section] key`` in the file; the environment
wins. Unknown keys in the file are an error, because a misspelt
``platform_ur1`` silently falling back to the embedded server would be worse.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs

from carecli.errors import ConfigError

if TYPE_CHECKING:
    # SQLAlchemy is imported when a URL is parsed: `carecli --version`, `config path` and the logging set-up
    # of every command do not pay ~0.2 s for it.
    from sqlalchemy.engine import URL

APP_NAME = "carecli"
CONFIG_ENV = "CARECLI_CONFIG"
DATABASES = ("identity", "platform")
#: break-the-glass grants last at most a day, however the setting is spelled
MAX_EMERGENCY_MINUTES = 1440

#: Tables the retention purge removes soft-deleted rows from (``[retention.tables]`` names them).
RETENTION_TABLES: dict[str, str] = {
    "risk_flags": "platform", "call_records": "platform", "member_insurance_plans": "platform",
    "specialist_insurance_plans": "platform", "metadata": "platform", "members": "platform",
    "specialists": "platform", "insurance_plans": "platform",
    "sessions": "identity", "tokens": "identity", "users": "identity", "roles": "identity",
}
#: Audit rows are never purged younger than this (migration platform_0007 enforces it too).
AUDIT_FLOOR_YEARS = 6
RETENTION_SECTION = "retention"
RETENTION_TABLES_KEY = "tables"


def _positive_int(value: Any) -> int:
    number = _int(value)
    if number <= 0:
        raise ValueError("must be a positive whole number")
    return number


def _non_negative_int(value: Any) -> int:
    number = _int(value)
    if number < 0:
        raise ValueError("must be zero or a positive whole number")
    return number


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not true/false")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise ValueError("must be a whole number")


def _audit_years(value: Any) -> int:
    number = _positive_int(value)
    if number < AUDIT_FLOOR_YEARS:
        raise ValueError(f"must be at least {AUDIT_FLOOR_YEARS} (audit rows are kept at least that long; "
                         "the database refuses to purge younger ones)")
    return number


def _emergency_minutes(value: Any) -> int:
    number = _positive_int(value)
    if number > MAX_EMERGENCY_MINUTES:
        raise ValueError(f"must be at most {MAX_EMERGENCY_MINUTES} (a day): emergency access is time-boxed")
    return number


def _timezone(value: Any) -> str:
    """An IANA time zone name (``Europe/Paris``) that this machine's zone database knows."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = _text(value).strip()
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"must be an IANA time zone name such as Europe/Paris, America/New_York or UTC "
                         f"(got {name!r})") from None
    return name


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _path(value: Any) -> Path:
    return Path(_text(value)).expanduser()


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(value: Any) -> str:
    level = _text(value).strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return level


@dataclass(frozen=True)
class SettingSpec:
    """One setting: where it is read from and how it is checked."""

    name: str
    section: str
    key: str
    env: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    secret: bool = False


SPECS: tuple[SettingSpec, ...] = (
    SettingSpec("identity_url", "database", "identity_url", "CARECLI_IDENTITY_URL", _text, None,
                "SQLAlchemy URL of the identity database (postgresql+psycopg://...)", secret=True),
    SettingSpec("platform_url", "database", "platform_url", "CARECLI_PLATFORM_URL", _text, None,
                "SQLAlchemy URL of the platform database (postgresql+psycopg://...)", secret=True),
    SettingSpec("platform_read_url", "database", "platform_read_url", "CARECLI_PLATFORM_READ_URL", _text, None,
                "optional read replica of the platform database: lists, searches and reports read there",
                secret=True),
    SettingSpec("pool_size", "database", "pool_size", "CARECLI_DB_POOL_SIZE", _non_negative_int, 5,
                "connections kept open per database (0: none, each unit of work opens its own)"),
    SettingSpec("max_overflow", "database", "max_overflow", "CARECLI_DB_MAX_OVERFLOW", _non_negative_int, 5,
                "extra connections allowed under load, per database"),
    SettingSpec("pool_timeout", "database", "pool_timeout", "CARECLI_DB_POOL_TIMEOUT", _positive_int, 10,
                "seconds to wait for a free pooled connection"),
    SettingSpec("connect_timeout", "database", "connect_timeout", "CARECLI_DB_CONNECT_TIMEOUT", _positive_int, 10,
                "seconds to wait for a server to answer a new connection"),
    SettingSpec("statement_timeout_ms", "database", "statement_timeout_ms", "CARECLI_DB_STATEMENT_TIMEOUT_MS",
                _non_negative_int, 30_000, "server-side statement timeout in ms (0 = none)"),
    SettingSpec("read_pool_size", "database", "read_pool_size", "CARECLI_DB_READ_POOL_SIZE", _positive_int, None,
                "connections kept open to the read replica (default: pool_size)"),
    SettingSpec("identity_pool_size", "database", "identity_pool_size", "CARECLI_DB_IDENTITY_POOL_SIZE",
                _non_negative_int, None, "connections kept open to the identity database (default: pool_size)"),
    SettingSpec("read_your_writes_seconds", "database", "read_your_writes_seconds",
                "CARECLI_DB_READ_YOUR_WRITES_SECONDS", _non_negative_int, 5,
                "after this process saves, reads go to the primary for this long (a replica not in recovery)"),
    SettingSpec("data_dir", "embedded", "data_dir", "CARECLI_DATA_DIR", _path, None,
                "where the embedded PostgreSQL keeps its data (default: the platform's user data dir)"),
    SettingSpec("master_key_file", "keys", "master_key_file", "CARECLI_MASTER_KEY_FILE", _path, None,
                "a 0600 file holding the base64 master key (servers)"),
    SettingSpec("keyring_name", "keys", "keyring_name", "CARECLI_KEYRING_NAME", _text, None,
                "the OS keyring entry's name (default: derived from the platform database)"),
    SettingSpec("hsm_module", "hsm", "module", "CARECLI_HSM_MODULE", _path, None,
                "the PKCS#11 module (.so) of the HSM holding the master key; when set, the HSM key is used"),
    SettingSpec("hsm_token", "hsm", "token", "CARECLI_HSM_TOKEN", _text, None,
                "the label of the HSM token holding the master key"),
    SettingSpec("hsm_key_label", "hsm", "key_label", "CARECLI_HSM_KEY_LABEL", _text, "carecli-master",
                "the label of the AES wrapping key in the token (`carecli keys hsm-init` makes it)"),
    SettingSpec("hsm_pin_file", "hsm", "pin_file", "CARECLI_HSM_PIN_FILE", _path, None,
                "a 0600 file holding the token's user PIN (or CARECLI_HSM_PIN, environment only)"),
    SettingSpec("oidc_issuer", "oidc", "issuer", "CARECLI_OIDC_ISSUER", _text, None,
                "the OpenID Connect issuer URL (e.g. https://TENANT.auth0.com/)"),
    SettingSpec("oidc_client_id", "oidc", "client_id", "CARECLI_OIDC_CLIENT_ID", _text, None,
                "the OAuth client id of carecli (a native app with the device code grant)"),
    SettingSpec("oidc_audience", "oidc", "audience", "CARECLI_OIDC_AUDIENCE", _text, None,
                "the API audience carecli asks tokens for"),
    SettingSpec("session_idle_minutes", "session", "idle_minutes", "CARECLI_SESSION_IDLE_MINUTES",
                _positive_int, 15, "a session with no activity for this long ends"),
    SettingSpec("session_max_hours", "session", "max_hours", "CARECLI_SESSION_MAX_HOURS", _positive_int, 12,
                "a session ends this long after sign-in, active or not"),
    SettingSpec("theme", "tui", "theme", "CARECLI_THEME", _text, "textual-dark",
                "the app's Textual theme (ctrl+p, 'Change theme' lists them)"),
    SettingSpec("reveal_seconds", "tui", "reveal_seconds", "CARECLI_REVEAL_SECONDS", _positive_int, 30,
                "a revealed SSN or date of birth is masked again after this many seconds"),
    SettingSpec("timezone", "tui", "timezone", "CARECLI_TIMEZONE", _timezone, None,
                "the IANA time zone the app shows and reads times in (default: the system's local zone)"),
    SettingSpec("backup_key_file", "backup", "key_file", "CARECLI_BACKUP_KEY_FILE", _path, None,
                "a 0600 file holding the base64 backup key (default: derived from the master key)"),
    SettingSpec("pg_bin", "backup", "pg_bin", "CARECLI_PG_BIN", _path, None,
                "the folder holding the pg_dump and pg_restore to use (default: the best fit found)"),
    SettingSpec("retention_years", RETENTION_SECTION, "years", "CARECLI_RETENTION_YEARS", _positive_int, 6,
                "soft-deleted rows are purged this many years after deletion ([retention.tables] overrides)"),
    SettingSpec("retention_audit_years", RETENTION_SECTION, "audit_years", "CARECLI_RETENTION_AUDIT_YEARS",
                _audit_years, 7, "audit rows older than this may be purged (`retention purge --audit`; at least 6)"),
    SettingSpec("emergency_minutes", "security", "emergency_minutes", "CARECLI_EMERGENCY_MINUTES",
                _emergency_minutes, 60, "how long a break-the-glass emergency access grant lasts"),
    SettingSpec("clock_skew_seconds", "rules", "clock_skew_seconds", "CARECLI_CLOCK_SKEW_SECONDS",
                _non_negative_int, 300, "how far in the future a completed call's time may be (clocks that disagree)"),
    SettingSpec("log_level", "logging", "level", "CARECLI_LOG_LEVEL", _log_level, "INFO",
                "the level of carecli's JSON-lines log (DEBUG, INFO, WARNING, ERROR)"),
    SettingSpec("log_file", "logging", "file", "CARECLI_LOG_FILE", _path, None,
                "carecli's JSON-lines log file (default: carecli.log in the user state dir)"),
)

#: ``[keymap]`` in the config file: binding id = "keys" (e.g. ``"member.reveal" = "ctrl+r"``).
KEYMAP_SECTION = "keymap"

# The master key itself is read from the environment only, never from the
# config file, which tends to be copied around.
MASTER_KEY_ENV = "CARECLI_MASTER_KEY"
HSM_PIN_ENV = "CARECLI_HSM_PIN"
BACKUP_KEY_ENV = "CARECLI_BACKUP_KEY"
TOKEN_ENV = "CARECLI_TOKEN"


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """The config file carecli reads: ``$CARECLI_CONFIG`` or the platform default."""
    env = os.environ if environ is None else environ
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser()
    return platformdirs.user_config_path(APP_NAME) / "config.toml"


def default_data_dir() -> Path:
    return platformdirs.user_data_path(APP_NAME)


@dataclass(frozen=True)
class Settings:
    """Effective settings, with where each value came from."""

    identity_url: URL | None
    platform_url: URL | None
    #: an optional read replica of the platform database (None: every read goes to the primary)
    platform_read_url: URL | None
    pool_size: int
    max_overflow: int
    pool_timeout: int
    connect_timeout: int
    statement_timeout_ms: int
    #: pooled connections to the read replica (None: the same as pool_size)
    read_pool_size: int | None
    #: pooled connections to the identity database (None: the same as pool_size)
    identity_pool_size: int | None
    read_your_writes_seconds: int
    data_dir: Path
    master_key_file: Path | None
    keyring_name: str | None
    master_key: str | None
    oidc_issuer: str | None
    oidc_client_id: str | None
    oidc_audience: str | None
    session_idle_minutes: int
    session_max_hours: int
    theme: str
    reveal_seconds: int
    #: an API token from CARECLI_TOKEN (environment only: it is a secret)
    api_token: str | None
    config_file: Path
    config_file_found: bool
    sources: dict[str, str] = field(default_factory=dict)
    #: key remapping for the app: binding id -> keys (``[keymap]`` in the config file)
    keymap: dict[str, str] = field(default_factory=dict)
    #: ``[logging]``: the level and file of the JSON-lines operations log (carecli/logs.py)
    log_level: str = "INFO"
    log_file: Path | None = None
    #: backups: the key file, the key itself (environment only) and where pg_dump/pg_restore are
    backup_key_file: Path | None = None
    backup_key: str | None = None
    pg_bin: Path | None = None
    #: years after deletion before the retention purge removes a row, unless the table has its own
    retention_years: int = 6
    #: audit rows older than this many years may be purged (``retention purge --audit``)
    retention_audit_years: int = 7
    #: per-table retention periods in years (``[retention.tables]`` in the config file)
    retention_tables: dict[str, int] = field(default_factory=dict)

    def retention_years_for(self, table: str) -> int:
        """The retention period of ``table``: its own from ``[retention.tables]``, else the default."""
        return self.retention_tables.get(table, self.retention_years)
    #: minutes a break-the-glass grant lasts (``[security] emergency_minutes``)
    emergency_minutes: int = 60
    #: seconds a "happened" time may lie in the future (``[rules] clock_skew_seconds``)
    clock_skew_seconds: int = 300
    #: the IANA zone the app shows and reads times in (``[tui] timezone``); None: the system's local zone
    timezone: str | None = None
    #: ``[hsm]``: the PKCS#11 module, token and key label of a master key kept in an HSM (None: no HSM)
    hsm_module: Path | None = None
    hsm_token: str | None = None
    hsm_key_label: str = "carecli-master"
    hsm_pin_file: Path | None = None
    #: the token's user PIN from CARECLI_HSM_PIN (environment only: it is a secret)
    hsm_pin: str | None = field(default=None, repr=False)

    @property
    def embedded(self) -> bool:
        """True when no database URL is configured: carecli runs its own server."""
        return self.identity_url is None and self.platform_url is None

    def url_for(self, database: str) -> URL | None:
        return self.identity_url if database == "identity" else self.platform_url


def _read_config_file(path: Path, explicit: bool) -> dict[str, Any]:
    if not path.exists():
        if explicit:
            raise ConfigError(
                f"config file {path} (from {CONFIG_ENV}) does not exist",
                hint=f"create it, or unset {CONFIG_ENV} to use the default location",
            )
        return {}
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


def _check_known_keys(data: dict[str, Any], path: Path) -> None:
    known: dict[str, set[str]] = {}
    for spec in SPECS:
        known.setdefault(spec.section, set()).add(spec.key)
    for section, values in data.items():
        if section == KEYMAP_SECTION:
            _check_keymap(values, path)
            continue
        if section == RETENTION_SECTION and isinstance(values, dict) and RETENTION_TABLES_KEY in values:
            _check_retention_tables(values[RETENTION_TABLES_KEY], path)
            values = {key: value for key, value in values.items() if key != RETENTION_TABLES_KEY}
        if section not in known:
            raise ConfigError(
                f"config file {path}: unknown section [{section}]",
                hint=f"known sections: {', '.join(sorted(known))}",
            )
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path}: [{section}] must be a table of settings")
        for key in values:
            if key not in known[section]:
                raise ConfigError(
                    f"config file {path}: unknown setting '{key}' in [{section}]",
                    hint=f"known settings in [{section}]: {', '.join(sorted(known[section]))}",
                )


def _check_keymap(values: Any, path: Path) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path}: [{KEYMAP_SECTION}] must be a table of binding id = \"keys\"")
    for binding_id, keys in values.items():
        if not isinstance(keys, str) or not keys.strip():
            raise ConfigError(f"config file {path}: [{KEYMAP_SECTION}] {binding_id} must be a string of keys, "
                              "e.g. \"ctrl+r\" or \"f5,ctrl+r\"")


def _check_retention_tables(values: Any, path: Path) -> None:
    where = f"config file {path}: [{RETENTION_SECTION}.{RETENTION_TABLES_KEY}]"
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a table of table name = years, e.g. call_records = 10")
    for table, years in values.items():
        if table not in RETENTION_TABLES:
            raise ConfigError(f"{where}: unknown table '{table}'",
                              hint=f"tables with a retention period: {', '.join(sorted(RETENTION_TABLES))}")
        try:
            _positive_int(years)
        except ValueError as exc:
            raise ConfigError(f"{where} {table} {exc}") from None


def parse_database_url(raw: str, *, origin: str) -> URL:
    """Parse and check a database URL; ``origin`` names where it came from.

    Accepts ``postgresql://``, ``postgres://`` and ``postgresql+psycopg://`` and
    always returns a psycopg 3 URL. Query parameters (``sslmode``,
    ``sslrootcert``, ``host`` for a socket dir, ...) pass through to libpq.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    text = raw.strip()
    if not text:
        raise ConfigError(f"{origin} is empty", hint="give a URL like postgresql+psycopg://user@host:5432/dbname")
    try:
        url = make_url(text)
    except ArgumentError:
        raise ConfigError(
            f"{origin} is not a database URL",
            hint="expected postgresql+psycopg://user:password@host:5432/dbname",
        ) from None
    backend, _, driver = url.drivername.partition("+")
    if backend not in ("postgresql", "postgres"):
        raise ConfigError(
            f"{origin} uses '{url.drivername}', but carecli needs PostgreSQL",
            hint="use a postgresql+psycopg://... URL",
        )
    if driver not in ("", "psycopg"):
        raise ConfigError(
            f"{origin} uses the '{driver}' driver; carecli talks to PostgreSQL through psycopg 3",
            hint="use a postgresql+psycopg://... URL",
        )
    if not url.database:
        raise ConfigError(f"{origin} names no database", hint="add the database name after the host: .../dbname")
    return url.set(drivername="postgresql+psycopg")


def _read_replica_url(raw: str | None, origin: str, platform: URL | None) -> URL | None:
    """The read replica's URL, checked like the others; only beside a configured platform URL.

    The embedded server has no replica, and a replica of an unnamed primary
    would be a guess: both are configuration errors, not a silent fallback.
    """
    if raw is None:
        return None
    url = parse_database_url(raw, origin=origin)
    if platform is None:
        raise ConfigError(
            f"{origin} is set, but no platform database URL is configured (the embedded server has no replica)",
            hint="set CARECLI_IDENTITY_URL and CARECLI_PLATFORM_URL to the primary servers too, "
                 "or unset CARECLI_PLATFORM_READ_URL",
        )
    return url


def _resolve(specs: Iterable[SettingSpec], env: Mapping[str, str], file_data: dict[str, Any],
             config_path: Path) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """Each spec's value (environment over the file over its default), where it came from ("env", "file",
    "default") and, for the first two, the variable or file key it was read from."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    origins: dict[str, str] = {}
    for spec in specs:
        raw: Any = None
        origin = ""
        section = file_data.get(spec.section, {})
        if env.get(spec.env, "") != "":
            raw, origin, source = env[spec.env], spec.env, "env"
        elif isinstance(section, dict) and spec.key in section:
            raw = section[spec.key]
            origin, source = f"{config_path} [{spec.section}] {spec.key}", "file"
        if raw is None:
            values[spec.name], sources[spec.name] = spec.default, "default"
            continue
        try:
            values[spec.name] = spec.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{origin} {exc}") from None
        sources[spec.name], origins[spec.name] = source, origin
    return values, sources, origins


def load_logging_settings(environ: Mapping[str, str] | None = None) -> tuple[str, Path | None]:
    """The log level and file alone (environment over ``[logging]`` in the file over defaults).

    Every command configures its log before anything else; this reads only what that needs, so a
    command that never touches a database does not parse (and import the parser of) database URLs.
    Raises :class:`ConfigError` when the file or one of these two settings is unreadable.
    """
    env = os.environ if environ is None else environ
    config_path = default_config_path(env)
    file_data = _read_config_file(config_path, explicit=bool(env.get(CONFIG_ENV)))
    values, _sources, _origins = _resolve([spec for spec in SPECS if spec.section == "logging"], env, file_data,
                                          config_path)
    return values["log_level"], values["log_file"]


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from the environment and the config file.

    Raises :class:`ConfigError` with the variable or file key at fault.
    """
    env = os.environ if environ is None else environ
    config_path = default_config_path(env)
    file_data = _read_config_file(config_path, explicit=bool(env.get(CONFIG_ENV)))
    _check_known_keys(file_data, config_path)

    values, sources, origins = _resolve(SPECS, env, file_data, config_path)

    urls: dict[str, URL | None] = {}
    for database in DATABASES:
        raw_url = values[f"{database}_url"]
        if raw_url is not None:
            urls[database] = parse_database_url(raw_url, origin=origins[f"{database}_url"])
        else:
            urls[database] = None
    if (urls["identity"] is None) != (urls["platform"] is None):
        missing = "identity" if urls["identity"] is None else "platform"
        raise ConfigError(
            f"only one database URL is configured; the {missing} URL is missing",
            hint="set both CARECLI_IDENTITY_URL and CARECLI_PLATFORM_URL, or neither to use the embedded server",
        )
    read_url = _read_replica_url(values["platform_read_url"], origins.get("platform_read_url", ""),
                                 urls["platform"])

    return Settings(
        identity_url=urls["identity"],
        platform_url=urls["platform"],
        platform_read_url=read_url,
        pool_size=values["pool_size"],
        max_overflow=values["max_overflow"],
        pool_timeout=values["pool_timeout"],
        connect_timeout=values["connect_timeout"],
        statement_timeout_ms=values["statement_timeout_ms"],
        read_pool_size=values["read_pool_size"],
        identity_pool_size=values["identity_pool_size"],
        read_your_writes_seconds=values["read_your_writes_seconds"],
        data_dir=values["data_dir"] or default_data_dir(),
        master_key_file=values["master_key_file"],
        keyring_name=values["keyring_name"],
        master_key=env.get(MASTER_KEY_ENV) or None,
        oidc_issuer=values["oidc_issuer"],
        oidc_client_id=values["oidc_client_id"],
        oidc_audience=values["oidc_audience"],
        session_idle_minutes=values["session_idle_minutes"],
        session_max_hours=values["session_max_hours"],
        theme=values["theme"],
        reveal_seconds=values["reveal_seconds"],
        api_token=env.get(TOKEN_ENV) or None,
        config_file=config_path,
        config_file_found=config_path.exists(),
        sources=sources,
        keymap={str(k): str(v) for k, v in file_data.get(KEYMAP_SECTION, {}).items()},
        backup_key_file=values["backup_key_file"],
        backup_key=env.get(BACKUP_KEY_ENV) or None,
        pg_bin=values["pg_bin"],
        retention_years=values["retention_years"],
        retention_audit_years=values["retention_audit_years"],
        retention_tables={str(table): _positive_int(years) for table, years
                          in file_data.get(RETENTION_SECTION, {}).get(RETENTION_TABLES_KEY, {}).items()},
        emergency_minutes=values["emergency_minutes"],
        clock_skew_seconds=values["clock_skew_seconds"],
        timezone=values["timezone"],
        log_level=values["log_level"],
        log_file=values["log_file"],
        hsm_module=values["hsm_module"],
        hsm_token=values["hsm_token"],
        hsm_key_label=values["hsm_key_label"],
        hsm_pin_file=values["hsm_pin_file"],
        hsm_pin=env.get(HSM_PIN_ENV) or None,
    )


"""Settings come from the environment, then the config file, then defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from carecli.config import load_settings, parse_database_url
from carecli.errors import ConfigError

IDENTITY = "postgresql+psycopg://app@db.example:5432/identity"
PLATFORM = "postgresql+psycopg://app@db.example:5432/platform"


def write_config(tmp_path: Path, body: str) -> dict[str, str]:
    path = tmp_path / "carecli.toml"
    path.write_text(body)
    return {"CARECLI_CONFIG": str(path)}


def test_defaults_mean_embedded(tmp_path):
    settings = load_settings({})
    assert settings.embedded
    assert settings.pool_size == 5 and settings.statement_timeout_ms == 30_000
    assert settings.sources["pool_size"] == "default"
    assert settings.config_file.name == "config.toml" and not settings.config_file_found


def test_default_config_file_is_read_from_the_platform_config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "carecli").mkdir()
    (tmp_path / "carecli" / "config.toml").write_text("[database]\npool_size = 9\n")
    settings = load_settings({})
    assert settings.pool_size == 9 and settings.sources["pool_size"] == "file"


def test_file_values_are_used(tmp_path):
    env = write_config(tmp_path, f"""
[database]
identity_url = "{IDENTITY}"
platform_url = "{PLATFORM}"
pool_size = 12
statement_timeout_ms = 5000

[embedded]
data_dir = "{tmp_path}/pg"
""")
    settings = load_settings(env)
    assert not settings.embedded
    assert settings.identity_url is not None and settings.platform_url is not None
    assert settings.identity_url.database == "identity"
    assert settings.platform_url.drivername == "postgresql+psycopg"
    assert settings.pool_size == 12 and settings.statement_timeout_ms == 5000
    assert settings.data_dir == tmp_path / "pg"
    assert settings.sources["identity_url"] == "file"


def test_environment_wins_over_the_file(tmp_path):
    env = write_config(tmp_path, f"""
[database]
identity_url = "{IDENTITY}"
platform_url = "{PLATFORM}"
pool_size = 12
""")
    env.update({
        "CARECLI_PLATFORM_URL": "postgresql://other@elsewhere/platform2",
        "CARECLI_DB_POOL_SIZE": "3",
    })
    settings = load_settings(env)
    assert settings.identity_url is not None and settings.platform_url is not None
    assert settings.platform_url.host == "elsewhere" and settings.platform_url.database == "platform2"
    assert settings.identity_url.host == "db.example"
    assert settings.pool_size == 3
    assert settings.sources["pool_size"] == "env" and settings.sources["identity_url"] == "file"


def test_empty_environment_variable_does_not_override(tmp_path):
    env = write_config(tmp_path, "[database]\npool_size = 7\n")
    env["CARECLI_DB_POOL_SIZE"] = ""
    assert load_settings(env).pool_size == 7


def test_ssl_parameters_pass_through():
    url = parse_database_url(
        "postgresql://u:p@h:6432/db?sslmode=verify-full&sslrootcert=/etc/ca.pem", origin="CARECLI_PLATFORM_URL")
    assert url.drivername == "postgresql+psycopg"
    assert url.query == {"sslmode": "verify-full", "sslrootcert": "/etc/ca.pem"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not a url", "CARECLI_PLATFORM_URL is not a database URL"),
        ("mysql://u@h/db", "uses 'mysql', but carecli needs PostgreSQL"),
        ("postgresql+asyncpg://u@h/db", "uses the 'asyncpg' driver"),
        ("postgresql://u@h", "names no database"),
        ("   ", "CARECLI_PLATFORM_URL is empty"),
    ],
)
def test_bad_urls_are_named(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_database_url(raw, origin="CARECLI_PLATFORM_URL")


def test_only_one_url_is_an_error():
    with pytest.raises(ConfigError, match="the platform URL is missing"):
        load_settings({"CARECLI_IDENTITY_URL": IDENTITY})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[database]\nplatform_ur1 = 'x'\n", "unknown setting 'platform_ur1' in \\[database\\]"),
        ("[datbase]\n", "unknown section \\[datbase\\]"),
        ("[database]\npool_size = 'many'\n", "\\[database\\] pool_size must be a whole number"),
        ("[database]\npool_size = -1\n", "pool_size must be zero or a positive whole number"),
        ("[database]\nconnect_timeout = 0\n", "connect_timeout must be a positive whole number"),
        ("[database\n", "is not valid TOML"),
    ],
)
def test_bad_config_files_are_named(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(write_config(tmp_path, body))


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match="CARECLI_DB_STATEMENT_TIMEOUT_MS must be zero or a positive"):
        load_settings({"CARECLI_DB_STATEMENT_TIMEOUT_MS": "-5"})


def test_missing_explicit_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({"CARECLI_CONFIG": str(tmp_path / "nope.toml")})


def test_the_time_zone_is_an_iana_name_and_defaults_to_the_system_zone(tmp_path):
    assert load_settings({}).timezone is None  # None: the system's local zone
    env = write_config(tmp_path, '[tui]\ntimezone = "Asia/Kolkata"\n')
    assert load_settings(env).timezone == "Asia/Kolkata"
    assert load_settings({**env, "CARECLI_TIMEZONE": "America/New_York"}).timezone == "America/New_York"
    with pytest.raises(ConfigError, match=r"CARECLI_TIMEZONE must be an IANA time zone name .*'Mars/Olympus'"):
        load_settings({"CARECLI_TIMEZONE": "Mars/Olympus"})
    bad = write_config(tmp_path, '[tui]\ntimezone = "EST5EDT/../x"\n')
    with pytest.raises(ConfigError, match=r"\[tui\] timezone must be an IANA time zone name"):
        load_settings(bad)

"""The seeded installation the app's and the SSH host's tests copy: migrated, 300 members, seed 42.

``seeded_template`` (registered for the whole suite in tests/conftest.py) migrates and seeds one pair
of databases once per test session, SSN and date of birth encrypted under ``MASTER_KEY``; the ``tui``
fixture (tests/tui/conftest.py) and the SSH ``world`` (tests/ssh/conftest.py) give each test or module
its own copy (``CREATE DATABASE ... TEMPLATE``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from carecli.config import load_settings
from carecli.data.crypto.keystore import ensure_primary_key, open_cipher
from carecli.data.crypto.master import LocalMasterKey, encode_key, generate_master_key
from carecli.data.databases import create_database_engine
from carecli.data.seeding import seed_demo_data

SEED_MEMBERS = 300
THEME = "textual-dark"
MASTER_KEY_BYTES = generate_master_key()
MASTER_KEY = encode_key(MASTER_KEY_BYTES)


@dataclass
class SeededPair:
    identity: str
    platform: str


@pytest.fixture(scope="session")
def seeded_template(pg_server, template_pair) -> SeededPair:
    """Migrated and seeded databases, used as the template of every TUI and SSH test's databases."""
    pair = SeededPair(pg_server.create_database("tui_identity", template=template_pair.identity),
                      pg_server.create_database("tui_platform", template=template_pair.platform))
    settings = load_settings({})
    identity = create_database_engine(pg_server.url(pair.identity), settings)
    platform = create_database_engine(pg_server.url(pair.platform), settings)
    try:
        master = LocalMasterKey(MASTER_KEY_BYTES, "test")
        ensure_primary_key(platform, master)
        seed_demo_data(identity, platform, members=SEED_MEMBERS, seed=42, cipher=open_cipher(platform, master))
    finally:
        identity.dispose()
        platform.dispose()
    return pair

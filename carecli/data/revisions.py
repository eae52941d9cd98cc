"""The two migration histories' names, version tables and newest revisions, and the oldest server they run on:
no import of SQLAlchemy.

:mod:`carecli.data.migrate` (which needs SQLAlchemy and the models) re-exports them; a check that only
compares a database's version with this carecli's (``carecli whoami``'s quick path) reads them here.
"""

from __future__ import annotations

DATABASES = ("identity", "platform")
VERSION_TABLES = {"identity": "alembic_version_identity", "platform": "alembic_version_platform"}
#: Each history's newest revision. Every start checks the databases against these; knowing them here costs
#: no import of Alembic and no reading of the migration scripts (~100 ms a process). tests/test_migrations.py
#: checks them against the scripts, so a new migration that forgets to move its head here fails there.
HEADS = {"identity": "identity_0003", "platform": "platform_0019"}
#: the oldest PostgreSQL the schema runs on (``gen_random_uuid()`` is built in from 13), as server_version_num
MINIMUM_SERVER_VERSION = 130000

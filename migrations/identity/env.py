"""Alembic environment of the identity database (see carecli.data.migrate)."""

from carecli.data.migrate import run_env

run_env("identity")

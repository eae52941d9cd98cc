"""Alembic environment of the platform database (see carecli.data.migrate)."""

from carecli.data.migrate import run_env

run_env("platform")

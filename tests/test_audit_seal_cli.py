"""``carecli audit seal`` and ``carecli audit verify`` as cron and an auditor run them: real subprocesses.

Exit codes: 0 when the history is intact, 1 with each finding listed by id
and time (never a value), 2 for a malformed ``--since``; no master key, no
seal and no verdict.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from carecli.cli.audit_cmd import _since
from carecli.config import load_settings
from carecli.data.crypto.master import encode_key, generate_master_key
from carecli.data.databases import create_database_engine
from carecli.errors import EXIT_FAILURE, EXIT_USAGE
from tests.cli import Result, run_carecli

pytestmark = pytest.mark.server


class Install:
    def __init__(self, platform: Engine, env: dict[str, str]) -> None:
        self.platform, self.env = platform, env

    def cli(self, *args: str, **env: str | None) -> Result:
        return run_carecli(*args, env={**self.env, **env})

    def execute(self, statement: str, **params: Any) -> Any:
        with self.platform.begin() as connection:
            connection.execute(text("SET LOCAL session_replication_role = replica"))  # as the owner, triggers off
            return connection.execute(text(statement), params)


@pytest.fixture(scope="module")
def inst(pg_server: Any, template_pair: Any) -> Iterator[Install]:
    names = (pg_server.create_database("identity", template=template_pair.identity),
             pg_server.create_database("platform", template=template_pair.platform))
    platform = create_database_engine(pg_server.url(names[1]), load_settings({}))
    env = {**pg_server.env_for(*names), "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
           "CARECLI_MASTER_KEY": encode_key(generate_master_key())}
    try:
        yield Install(platform, env)
    finally:
        platform.dispose()
        pg_server.drop_database(names[0])
        pg_server.drop_database(names[1])


def test_seal_then_verify_exit_0_and_a_tampered_row_exits_1_naming_it_without_values(inst: Install) -> None:
    rows = [inst.execute("INSERT INTO audit_logs (entity_type, entity_id, action, new_values, created_at) VALUES "
                         "('member', gen_random_uuid(), 'read', '{\"purpose\": \"call\"}', "
                         "clock_timestamp() AT TIME ZONE 'UTC') RETURNING id").scalar_one() for _ in range(5)]
    sealed = inst.cli("audit", "seal")
    assert sealed.code == 0, sealed.err
    assert "seal 1:" in sealed.out and "head " in sealed.out
    assert "Nothing new to seal" in inst.cli("audit", "seal").out  # again: nothing new

    clean = inst.cli("audit", "verify")
    assert clean.code == 0 and "intact" in clean.out, clean.out + clean.err
    as_json = json.loads(inst.cli("audit", "verify", "--json").out)
    assert as_json["intact"] and as_json["rows_checked"] >= 5 and as_json["findings"] == []

    inst.execute("UPDATE audit_logs SET new_values = '{\"purpose\": \"MARKER-VALUE\"}' WHERE id = :id", id=rows[2])
    broken = inst.cli("audit", "verify")
    assert broken.code == EXIT_FAILURE
    assert "altered" in broken.out and str(rows[2]) in broken.out
    assert "MARKER-VALUE" not in broken.out + broken.err
    report = json.loads(inst.cli("audit", "verify", "--json").out)
    assert not report["intact"] and [(f["what"], f["id"]) for f in report["findings"]] == [("altered", str(rows[2]))]
    # --since after that row's seal checks only later seals (the chain always): clean again
    later = (datetime.utcnow() + timedelta(minutes=1)).isoformat(timespec="minutes")
    assert inst.cli("audit", "verify", "--since", later).code == 0
    assert inst.cli("audit", "verify", "--since", "2000-01-01").code == EXIT_FAILURE
    # put it back as it was sealed: intact again
    inst.execute("UPDATE audit_logs SET new_values = '{\"purpose\": \"call\"}' WHERE id = :id", id=rows[2])
    assert inst.cli("audit", "verify").code == 0


def test_without_the_master_key_nothing_is_sealed_or_verified(inst: Install) -> None:
    before = inst.execute("SELECT count(*) FROM audit_seals").scalar_one()
    for command in ("seal", "verify"):
        out = inst.cli("audit", command, CARECLI_MASTER_KEY=None)
        assert out.code != 0 and "master key" in out.err.lower(), out.out + out.err
    other = inst.cli("audit", "verify", CARECLI_MASTER_KEY=encode_key(generate_master_key()))
    assert other.code != 0 and "cannot unwrap" in other.err
    assert inst.execute("SELECT count(*) FROM audit_seals").scalar_one() == before


@pytest.mark.parametrize("since", ["yesterday", "2026-13-01", "2026-02-30", "", "2026-01-01T25:00",
                                   "0001-01-01T00:00+01:00", "\x1b[31m2026"])
def test_a_malformed_since_exits_2_with_the_rule(inst: Install, since: str) -> None:
    out = inst.cli("audit", "verify", "--since", since)
    assert out.code == EXIT_USAGE, out.out + out.err
    assert "--since" in out.err and "YYYY-MM-DD" in out.err and "\x1b" not in out.err


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=40))
def test_since_parses_any_text_into_a_naive_utc_time_or_a_usage_error(value: str) -> None:
    import click
    try:
        moment = _since(value)
    except click.BadParameter:
        return
    assert moment is not None and moment.tzinfo is None


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)),
       st.integers(min_value=-23 * 60, max_value=23 * 60))
def test_since_with_an_offset_is_the_same_instant_in_utc(moment: datetime, offset_minutes: int) -> None:
    sign = "+" if offset_minutes >= 0 else "-"
    text_value = f"{moment.isoformat()}{sign}{abs(offset_minutes) // 60:02d}:{abs(offset_minutes) % 60:02d}"
    assert _since(text_value) == moment - timedelta(minutes=offset_minutes)


def test_an_id_is_never_a_value(inst: Install) -> None:
    """Findings list ids: a forged row's id is printed, its values are not."""
    inst.cli("audit", "seal")
    forged = uuid.uuid4()
    inst.execute("INSERT INTO audit_logs (id, entity_type, entity_id, action, new_values, created_at) VALUES "
                 "(:id, 'member', gen_random_uuid(), 'read', '{\"ssn\": \"123-45-6789\"}', '2001-01-01')", id=forged)
    out = inst.cli("audit", "verify")
    assert out.code == EXIT_FAILURE and str(forged) in out.out
    assert "123-45-6789" not in out.out + out.err
    inst.execute("DELETE FROM audit_logs WHERE id = :id", id=forged)
    assert inst.cli("audit", "verify").code == 0

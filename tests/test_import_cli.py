"""``carecli import`` as scripts run it: a real subprocess on real database URLs, signed in by an API token.

One installation per module (migrated databases, an importer user with a
token holding the ``import:run`` scope, a token without it, a user whose role
may import plans but not members), emptied after each test. Signing in with a
session goes through the test OpenID provider (``site`` from
tests/test_sessions.py). The last test kills an import with SIGKILL part-way
and checks that a re-run ends with exactly the rows of the file.
"""

from __future__ import annotations

import csv
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from carecli.config import load_settings
from carecli.data.actor import Actor
from carecli.data.crypto.master import encode_key, generate_master_key
from carecli.data.databases import Databases, create_database_engine
from carecli.data.permissions import ALL_PERMISSIONS, DEFAULT_ROLES
from carecli.data.records import User
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.errors import EXIT_ABORTED, EXIT_FAILURE, EXIT_USAGE
from carecli.services.auth.tokens import create_api_token
from tests.cli import Result, run_carecli
from tests.db_scan import all_rows_text
from tests.support.sites import Site
from tests.test_import import MEMBER_HEADER, members_csv, person, ssn_for

MASTER_KEY = encode_key(generate_master_key())
BASE_ENV = {"CARECLI_MASTER_KEY": MASTER_KEY, "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
PLANNER_PERMISSIONS = ["import:run", "plans:write", "members:read"]
SUMMARY_LINE = re.compile(r"^members from (?P<file>.+): (?P<rows>[\d,]+) rows, (?P<created>[\d,]+) created, "
                          r"(?P<updated>[\d,]+) updated, (?P<unchanged>[\d,]+) unchanged, (?P<rejected>[\d,]+) "
                          r"rejected in [\d.]+s(, [\d,]+ rows/s)?(?P<note> \(.*\))?$")


@dataclass
class Install:
    """Two migrated databases on real URLs, users with API tokens, and the environment to run carecli."""

    identity: Engine
    platform: Engine
    env: dict[str, str]
    users: dict[str, User] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str, token: str | None = "import", stdin: bytes | None = None,
            timeout: float = 120, **env: str) -> Result:
        """``carecli ARGS`` as the holder of one of the tokens (None: nobody signed in)."""
        full: dict[str, str | None] = {**self.env, **env}
        full["CARECLI_TOKEN"] = self.tokens[token] if token is not None else None
        return run_carecli(*args, env=full, input=stdin, timeout=timeout)

    def sql(self, statement: str, **params: Any) -> list[Any]:
        with self.platform.begin() as connection:
            result = connection.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    def scalar(self, statement: str, **params: Any) -> Any:
        return self.sql(statement, **params)[0][0]

    def counts(self) -> dict[str, int]:
        return {
            "members": self.scalar("SELECT count(*) FROM members"),
            "plans": self.scalar("SELECT count(*) FROM insurance_plans"),
            "metadata": self.scalar("SELECT count(*) FROM metadata WHERE entity_type IN "
                                    "('member', 'insurance_plan', 'blind_index_key')"),
            "audit": self.scalar("SELECT count(*) FROM audit_logs WHERE entity_type IN "
                                 "('member', 'insurance_plan', 'metadata', 'import')"),
        }

    def all_text(self) -> str:
        """Every row of every table of both databases, as text (for plaintext scans)."""
        return all_rows_text(self.identity, self.platform)


def _admin() -> Actor:
    return Actor.create(uuid.uuid4(), ALL_PERMISSIONS, channel="cli", role="admin")


@pytest.fixture(scope="module")
def install(pg_server: Any, template_pair: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    names = (pg_server.create_database("identity", template=template_pair.identity),
             pg_server.create_database("platform", template=template_pair.platform))
    settings = load_settings({})
    identity = create_database_engine(pg_server.url(names[0]), settings)
    platform = create_database_engine(pg_server.url(names[1]), settings)
    env = {**pg_server.env_for(*names), **BASE_ENV,
           "XDG_STATE_HOME": str(tmp_path_factory.mktemp("import-cli-state"))}
    inst = Install(identity, platform, env)
    databases = Databases(identity=identity, platform=platform)
    roles = {"importer": DEFAULT_ROLES["importer"][1], "planner": PLANNER_PERMISSIONS}
    with IdentityUnitOfWork(identity, platform, _admin()) as uow:
        role_ids = {name: uow.roles.create(name, list(permissions), f"{name} (import tests)").id
                    for name, permissions in roles.items()}
        for name in roles:
            tag = uuid.uuid4().hex[:8]
            inst.users[name] = uow.users.create({
                "external_user_id": f"auth0|{tag}", "email": f"{name}.{tag}@example.org", "first_name": "Sam",
                "last_name": "Rivera", "role_id": role_ids[name]})
        uow.commit()

    def token(user: str, scopes: list[str]) -> str:
        actor = Actor.create(inst.users[user].id, roles[user], channel="cli", role=user)
        return create_api_token(databases, actor, name=f"{user} {' '.join(scopes)}", scopes=scopes).secret

    inst.tokens = {"import": token("importer", ["import:run"]),
                   "no-scope": token("importer", ["members:read", "members:write"]),
                   "planner": token("planner", ["import:run"])}
    try:
        yield inst
    finally:
        identity.dispose()
        platform.dispose()
        for name in names:
            pg_server.drop_database(name)


@pytest.fixture
def inst(install: Install) -> Iterator[Install]:
    """The module's installation, emptied of imported records (and their audit rows) after the test."""
    yield install
    with install.platform.begin() as connection:
        for statement in (
            "SET LOCAL session_replication_role = replica",  # audit_logs is append-only by trigger
            "DELETE FROM members", "DELETE FROM insurance_plans",
            "DELETE FROM metadata WHERE entity_type IN ('member', 'insurance_plan', 'blind_index_key')",
            "DELETE FROM audit_logs WHERE entity_type IN ('member', 'insurance_plan', 'metadata', 'import', "
            "'database_index')",
            "DELETE FROM audit_seals",  # the imports sealed the rows just deleted: a new chain for the next test
        ):
            connection.execute(text(statement))


def write(path: Path, data: str | bytes) -> str:
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return str(path)


def phi_needles(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every value of the rows that is PHI or contact detail, in the spellings it could leak in."""
    needles: list[str] = []
    for row in rows:
        for name in ("ssn", "dob", "first_name", "last_name", "email", "phone", "address_line1"):
            value = row.get(name)
            if value:
                needles.append(str(value))
        if row.get("ssn"):
            needles.append(str(row["ssn"]).replace("-", ""))
        if row.get("phone"):
            needles.append(re.sub(r"\D", "", str(row["phone"])))
    return [needle for needle in needles if len(needle) >= 5]


# -- success, re-runs, audit ----------------------------------------------------------------------


def test_import_with_a_token_exits_0_with_a_json_summary_and_audits_as_the_token_user(
        inst: Install, tmp_path: Path) -> None:
    path = write(tmp_path / "members.csv", members_csv(*(person(n) for n in (1, 2, 3))))
    out = inst.cli("import", "members", path, "--json")
    assert out.code == 0, out.err
    assert out.err == ""  # no terminal: no progress bar, and the summary is the JSON
    summary = json.loads(out.out)
    assert {k: summary[k] for k in ("kind", "rows", "created", "updated", "unchanged", "rejected", "dry_run",
                                    "all_or_nothing", "committed", "file", "errors_file")} == {
        "kind": "members", "rows": 3, "created": 3, "updated": 0, "unchanged": 0, "rejected": 0, "dry_run": False,
        "all_or_nothing": False, "committed": True, "file": path, "errors_file": None}
    assert summary["batches"] == 1 and summary["seconds"] > 0
    # The import sealed its audit rows at its end: the history verifies, nothing left unsealed.
    verify = inst.cli("audit", "verify", "--json")
    assert verify.code == 0, verify.out + verify.err
    assert json.loads(verify.out)["rows_not_sealed_yet"] == 0
    assert inst.scalar("SELECT count(*) FROM audit_seals WHERE kind = 'seal'") >= 1

    importer = inst.users["importer"].id
    members = [r.id for r in inst.sql("SELECT id FROM members")]
    metadata = [r.id for r in inst.sql("SELECT id FROM metadata WHERE entity_type = 'member'")]
    assert len(members) == 3 and len(metadata) == 6  # an external number and a blind index each
    creates = inst.sql("SELECT entity_type, entity_id, user_id, user_agent FROM audit_logs WHERE action = 'create' "
                       "AND entity_type IN ('member', 'metadata')")
    by_entity = {(r.entity_type, r.entity_id): r for r in creates}
    for member_id in members:
        assert by_entity[("member", member_id)].user_id == importer
    for metadata_id in metadata:
        assert by_entity[("metadata", metadata_id)].user_id == importer
    assert all(r.user_agent.startswith("carecli/") for r in creates)

    # Again, without --json: one summary line on stderr, everything unchanged, no new audit rows.
    before = inst.counts()
    again = inst.cli("import", "members", path)
    assert again.code == 0, again.err
    assert again.out == ""
    (line,) = again.err.splitlines()
    match = SUMMARY_LINE.match(line)
    assert match, line
    assert (match["rows"], match["created"], match["updated"], match["unchanged"], match["rejected"]) == (
        "3", "0", "0", "3", "0")
    assert inst.counts() == before


def test_refused_rows_exit_1_and_the_error_report_holds_no_phi(inst: Install, tmp_path: Path) -> None:
    rows = [
        person(1),
        person(2, ssn="666-12-3456"),
        person(3, dob="2999-01-01"),
        person(4, email="quenby.4 at mail.example.org"),
        person(5, phone="(415) 555-000"),
        person(6, first_name="Quenby6" * 20),
        person(7, ssn=ssn_for(1).replace("-", "")),  # the SSN of row 1
        person(8, state="QQ", zip_code="9721"),
        person(9),
    ]
    path = write(tmp_path / "members.csv", members_csv(*rows))
    report = tmp_path / "errors.csv"
    out = inst.cli("import", "members", path, "--errors", str(report), "--json")
    assert out.code == EXIT_FAILURE, out.err
    summary = json.loads(out.out)
    assert (summary["rows"], summary["created"], summary["rejected"], summary["errors_file"]) == (9, 2, 7, str(report))
    with report.open(newline="", encoding="utf-8") as handle:
        lines = list(csv.reader(handle))
    assert lines[0] == ["row", "field", "rule", "message"]
    assert sorted((int(r[0]), r[1], r[2]) for r in lines[1:]) == [
        (2, "ssn", "ssn_area"), (3, "dob", "dob_future"), (4, "email", "email_format"), (5, "phone", "phone_format"),
        (6, "first_name", "max_length"), (7, "ssn", "duplicate_in_file"), (8, "state", "us_state"),
        (8, "zip_code", "zip_format")]
    assert all(r[3] for r in lines[1:])

    # Without --errors the problems go to stderr, still without values.
    shown = inst.cli("import", "members", path)
    assert shown.code == EXIT_FAILURE
    assert "row 2: ssn: has an area number that is never issued (000, 666, 900-999) [ssn_area]" in shown.err
    assert re.search(r"^row 7: \w+: the same \w+ as row 1; a member may appear once per file \[duplicate_in_file\]$",
                     shown.err, re.M)
    assert SUMMARY_LINE.match(shown.err.splitlines()[-1])

    exposed = report.read_text(encoding="utf-8") + out.out + out.err + shown.out + shown.err
    for needle in phi_needles(rows):
        assert needle not in exposed, needle
    # Nor is any SSN or date of birth stored in plaintext anywhere in either database.
    dump = inst.all_text()
    for row in rows:
        for needle in (row["ssn"], row["ssn"].replace("-", ""), row["dob"]):
            assert needle not in dump and needle.encode().hex() not in dump, needle


def test_more_problems_than_shown_point_to_errors(inst: Install, tmp_path: Path) -> None:
    rows = [person(n, status="deceased") for n in range(1, 26)]
    out = inst.cli("import", "members", write(tmp_path / "m.csv", members_csv(*rows)))
    assert out.code == EXIT_FAILURE
    lines = out.err.splitlines()
    assert len(lines) == 22 and lines[-2] == "... and 5 more problems (write them all with --errors FILE)"


def test_dry_run_and_all_or_nothing(inst: Install, tmp_path: Path) -> None:
    rows = [person(n) for n in range(1, 6)]
    good = write(tmp_path / "good.csv", members_csv(*rows, person(6, city="Salem")))
    dry = inst.cli("import", "members", good, "--dry-run", "--json")
    assert dry.code == 0, dry.err
    summary = json.loads(dry.out)
    assert (summary["created"], summary["dry_run"], summary["committed"]) == (6, True, False)
    assert inst.counts() == {"members": 0, "plans": 0, "metadata": 0, "audit": 0}  # not even the blind-index key

    bad = write(tmp_path / "bad.csv", members_csv(*rows, person(6, zip_code="x")))
    out = inst.cli("import", "members", bad, "--all-or-nothing", "--batch-rows", "100")
    assert out.code == EXIT_FAILURE
    assert out.err.splitlines()[-1].endswith("(all-or-nothing: nothing written)")
    # Nothing but the installation's blind-index key (made, with its audit row, the first time SSNs are hashed).
    assert inst.counts() == {"members": 0, "plans": 0, "metadata": 1, "audit": 1}

    # A dry run on a fresh installation still finds the file's own SSN duplicates.
    twice = write(tmp_path / "twice.csv", members_csv(*rows, person(6, ssn=ssn_for(2).replace("-", ""))))
    dup = inst.cli("import", "members", twice, "--dry-run", "--json")
    assert dup.code == EXIT_FAILURE and json.loads(dup.out)["rejected"] == 1
    assert "row 6: ssn: the same ssn as row 2" in dup.err

    assert inst.cli("import", "members", good, "--all-or-nothing").code == 0
    assert inst.counts()["members"] == 6
    changed = write(tmp_path / "changed.csv", members_csv(*rows, person(6, city="Bend"), person(7)))
    dry = inst.cli("import", "members", changed, "--dry-run")
    assert dry.code == 0
    summary = SUMMARY_LINE.match(dry.err.strip())
    assert summary is not None, dry.err
    # (the rows the first import loaded are known by digest; the changed one is not)
    assert summary["note"] == " (dry run: nothing written) (5 known unchanged by the digest of their record)"
    assert ": 7 rows, 1 created, 1 updated, 5 unchanged, 0 rejected in " in dry.err
    assert inst.scalar("SELECT count(*) FROM members WHERE city = 'Bend'") == 0


def test_standard_input_csv_and_jsonl(inst: Install) -> None:
    data = members_csv(person(1), person(2)).encode("utf-8")
    out = inst.cli("import", "members", "-", "--format", "csv", "--json", stdin=data)
    assert out.code == 0, out.err
    assert json.loads(out.out)["created"] == 2 and json.loads(out.out)["file"] == "standard input"
    lines = b'{"external_member_number": "EXT-000002", "city": "Salem"}\n{"external_member_number": "J3", ' \
            b'"first_name": "Ann", "last_name": "Lee"}\n'
    jsonl = inst.cli("import", "members", "-", "--format", "jsonl", stdin=lines)
    assert jsonl.code == 0, jsonl.err
    assert "from standard input: 2 rows, 1 created, 1 updated, 0 unchanged" in jsonl.err
    header_only = inst.cli("import", "members", "-", "--format", "csv", stdin=",".join(MEMBER_HEADER).encode())
    assert header_only.code == 0 and "from standard input: 0 rows, 0 created" in header_only.err
    refused = inst.cli("import", "members", "-", stdin=data)
    assert refused.code == EXIT_USAGE and "cannot tell the format of standard input" in refused.err


def test_map_mapping_file_and_encoding(inst: Install, tmp_path: Path) -> None:
    rows = ["Member ID,Given Name,Family Name,Ward,Town", "M-1,Zo\u00eb,Lee,3,Bogot\u00e1", "M-2,Ann,Lee,4,Salem"]
    latin = write(tmp_path / "theirs.csv", ("\n".join(rows) + "\n").encode("latin-1"))
    mapping = write(tmp_path / "mapping.toml", '[columns]\n"Member ID" = "external_member_number"\n'
                    '"Given Name" = "first_name"\n"Family Name" = "last_name"\n"Ward" = ""\n')
    out = inst.cli("import", "members", latin, "--mapping", mapping, "--map", "Town=city", "--errors",
                   str(tmp_path / "e.csv"))
    assert out.code == EXIT_FAILURE
    assert (tmp_path / "e.csv").read_text().splitlines()[1:] == [
        "1,first_name,encoding,holds bytes that are not valid utf-8 (give the file's --encoding)"]
    ok = inst.cli("import", "members", latin, "--mapping", mapping, "--map", "Town=city", "--encoding", "latin-1")
    assert ok.code == 0, ok.err
    assert "2 rows, 1 created, 0 updated, 1 unchanged" in ok.err
    assert inst.sql("SELECT first_name, city FROM members ORDER BY first_name") == [("Ann", "Salem"),
                                                                                    ("Zo\u00eb", "Bogot\u00e1")]


# -- usage errors and aborts ---------------------------------------------------------------------------


@pytest.mark.parametrize("args, content, message", [
    (("members", "{file}"), "external_member_number,first_name,Shoe Size\nX1,Ann,9\n",
     "unknown column(s) in the header: column 3"),
    (("members", "{file}"), "", "the file is empty"),
    (("members", "{file}"), b"external_member_number,first_n\xe4me\n", "the header line is not valid utf-8"),
    (("plans", "{file}"), "plan_name\nGold\n", "the header lacks required column(s): plan_code"),
    (("widgets", "{file}"), "x\n", "unknown kind 'widgets'"),
    (("members", "{dir}/missing.csv"), None, "cannot open"),
    (("members", "{dir}/members.dat"), "x\n", "cannot tell the format"),
    (("members", "{file}", "--map", "junk"), "x\n", "must look like 'Source column=carecli_column'"),
    (("members", "{file}", "--encoding", "klingon"), "x\n", "unknown encoding 'klingon'"),
    (("members", "{file}", "--format", "xml"), "x\n", "'xml' is not one of 'csv', 'jsonl'"),
    (("members", "{file}", "--batch-rows", "5"), "x\n", "5 is not in the range 100<=x<=100000"),
    (("members", "{file}", "--workers", "-1"), "x\n", "-1 is not in the range 0<=x<=64"),
], ids=["unknown-column", "empty", "header-encoding", "missing-column", "kind", "missing-file", "format",
        "map", "encoding", "format-option", "batch-rows", "workers"])
def test_usage_errors_exit_2_and_write_nothing(inst: Install, tmp_path: Path, args: tuple[str, ...],
                                               content: str | bytes | None, message: str) -> None:
    path = tmp_path / "members.csv"
    if content is not None:
        write(tmp_path / ("members.dat" if "{dir}/members.dat" in args else "members.csv"), content)
    out = inst.cli("import", *(a.format(file=path, dir=tmp_path) for a in args))
    assert out.code == EXIT_USAGE, (out.code, out.err)
    assert message in out.err and "Traceback" not in out.err
    assert inst.counts() == {"members": 0, "plans": 0, "metadata": 0, "audit": 0}


def test_a_broken_file_aborts_with_exit_3_and_keeps_whole_batches(inst: Install, tmp_path: Path) -> None:
    good = members_csv(*(person(n) for n in range(1, 251)))
    broken = good + 'EXT-999999,"' + "y" * (20 * 1024 * 1024) + "\n"
    out = inst.cli("import", "members", write(tmp_path / "m.csv", broken), "--batch-rows", "100", "--json")
    assert out.code == EXIT_ABORTED, out.err
    assert out.err.startswith("carecli: import aborted: record 251 (line 252) cannot be read as CSV: field larger "
                              "than field limit")
    assert "batches committed before it stay" in out.err and "yyyy" not in out.err
    # The summary says which batches are committed: the first two, rows 1 to 200.
    summary = json.loads(out.out)
    assert (summary["aborted"], summary["batches"], summary["committed_through_row"], summary["created"]) == (
        True, 2, 200, 200)
    assert inst.counts()["members"] == 200
    fixed = inst.cli("import", "members", write(tmp_path / "m.csv", good), "--batch-rows", "100")
    assert fixed.code == 0 and "250 rows, 50 created, 0 updated, 200 unchanged" in fixed.err


def test_a_file_without_its_header_line_is_a_usage_error_that_quotes_none_of_its_first_record(
        inst: Install, tmp_path: Path) -> None:
    rows = [person(1), person(2)]
    path = write(tmp_path / "m.csv", members_csv(*rows).split("\n", 1)[1])
    out = inst.cli("import", "members", path)
    assert out.code == EXIT_USAGE, out.err
    assert "unknown column(s) in the header: column 1, column 2, column 3" in out.err
    for needle in phi_needles(rows[:1]):
        assert needle not in out.err, needle
    assert inst.counts() == {"members": 0, "plans": 0, "metadata": 0, "audit": 0}


def test_a_database_failure_aborts_with_exit_3_and_a_rerun_completes(inst: Install, tmp_path: Path) -> None:
    rows = [person(n) for n in range(1, 251)]
    rows[229]["first_name"] = "Boomfield"
    path = write(tmp_path / "m.csv", members_csv(*rows))
    inst.sql("ALTER TABLE members ADD CONSTRAINT test_block CHECK (first_name <> 'Boomfield') NOT VALID")
    try:
        out = inst.cli("import", "members", path, "--batch-rows", "100")
    finally:
        inst.sql("ALTER TABLE members DROP CONSTRAINT test_block")
    assert out.code == EXIT_ABORTED, out.err
    assert "carecli: import aborted: CheckViolation" in out.err and "test_block" in out.err
    assert "running the same import again completes it" in out.err
    assert SUMMARY_LINE.match(out.err.splitlines()[-1]), out.err
    assert "aborted: 2 batches committed, through row 200" in out.err.splitlines()[-1]
    for needle in phi_needles(rows[200:]):
        assert needle not in out.err
    assert inst.counts()["members"] == 200
    assert inst.scalar("SELECT count(*) FROM audit_logs WHERE entity_type = 'member'") == 200

    again = inst.cli("import", "members", path, "--batch-rows", "100", "--json")
    assert again.code == 0, again.err
    assert (json.loads(again.out)["created"], json.loads(again.out)["unchanged"]) == (50, 200)
    assert inst.counts()["members"] == 250


# -- who may import ----------------------------------------------------------------------------------


def test_a_token_without_the_import_scope_is_refused_and_audited(inst: Install, tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", members_csv(person(1)))
    out = inst.cli("import", "members", path, token="no-scope")
    assert out.code == EXIT_FAILURE
    assert "may not run imports: this token lacks the 'import:run' scope" in out.err
    denials = inst.sql("SELECT entity_type, entity_id, user_id, new_values FROM audit_logs WHERE action = 'deny'")
    assert [(d.entity_type, d.entity_id, d.user_id, d.new_values) for d in denials] == [
        ("import", uuid.UUID(int=0), inst.users["importer"].id,
         {"operation": "import members", "permission": "import:run"})]
    assert inst.counts()["members"] == 0

    nobody = inst.cli("import", "members", path, token=None)
    assert nobody.code == 4 and "not signed in" in nobody.err


def test_a_role_without_members_write_may_not_import_members(inst: Install, tmp_path: Path) -> None:
    out = inst.cli("import", "members", write(tmp_path / "m.csv", members_csv(person(1))), token="planner")
    assert out.code == EXIT_FAILURE
    assert "may not import members: it needs the 'members:write' permission" in out.err
    (denial,) = inst.sql("SELECT user_id, new_values FROM audit_logs WHERE action = 'deny'")
    assert denial.user_id == inst.users["planner"].id and denial.new_values["permission"] == "members:write"
    assert inst.counts()["members"] == 0


def test_a_role_with_plans_write_imports_plans(inst: Install, tmp_path: Path) -> None:
    path = write(tmp_path / "plans.csv", "plan_code,plan_name,premium_amount\nGOLD,Gold,250\nSILVER,Silver,99\n")
    out = inst.cli("import", "plans", path, "--json", token="planner")
    assert out.code == 0, out.err
    assert json.loads(out.out)["created"] == 2
    creates = inst.sql("SELECT user_id FROM audit_logs WHERE entity_type = 'insurance_plan' AND action = 'create'")
    assert [c.user_id for c in creates] == [inst.users["planner"].id] * 2


def test_the_signed_in_user_runs_the_import(site: Site, tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", members_csv(person(1), person(2)))
    specialist = site.user("specialist")
    site.login(specialist)
    refused = site.cli("import", "members", path, **BASE_ENV)
    assert refused.code == EXIT_FAILURE and "it needs the 'import:run' permission" in refused.err
    assert [r.user_id for r in site.audit("deny")] == [specialist.id]

    importer = site.user("importer")
    site.login(importer)
    out = site.cli("import", "members", path, **BASE_ENV)
    assert out.code == 0, out.err
    users = site.sql("platform", "SELECT DISTINCT user_id FROM audit_logs WHERE entity_type IN ('member', 'metadata') "
                     "AND action = 'create' AND new_values->>'entity_type' IS DISTINCT FROM 'blind_index_key'")
    assert [u.user_id for u in users] == [importer.id]
    assert site.sql("platform", "SELECT count(*) FROM members")[0][0] == 2


# -- a terminal ----------------------------------------------------------------------------------------


def test_a_progress_bar_on_a_terminal(inst: Install, tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", members_csv(*(person(n) for n in range(1, 1201))))
    leader, follower = pty.openpty()
    env = {**os.environ, **inst.env, "CARECLI_TOKEN": inst.tokens["import"], "COLUMNS": "120", "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "carecli", "import", "members", path, "--batch-rows", "100"],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=60) == 0
    os.close(leader)
    shown = b"".join(chunks).decode("utf-8", "replace")
    assert "importing" in shown and "rows/s" in shown
    assert "1,200 rows, 1,200 created" in shown


# -- kill -9 -----------------------------------------------------------------------------------------------


def _settled(inst: Install) -> int:
    """The member count once the killed import's server sessions are gone and nothing more commits."""
    deadline = time.monotonic() + 30
    last = -1
    while time.monotonic() < deadline:
        locks = inst.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                            "(SELECT oid FROM pg_database WHERE datname = current_database())")
        count = inst.scalar("SELECT count(*) FROM members")
        if locks == 0 and count == last:
            return count
        last = count
        time.sleep(0.2)
    raise AssertionError("the killed import's session did not go away")


def _started(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def _descendants(root: int) -> dict[int, str]:
    """pid -> start time of every live descendant of ``root`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry))
    found: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        started = _started(pid)
        if started is not None:
            found[pid] = started
        todo.extend(children.get(pid, []))
    return found


def _member_file(path: Path, numbers: range) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(MEMBER_HEADER)
        for n in numbers:
            row = person(n)
            writer.writerow(["" if row[name] is None else row[name] for name in MEMBER_HEADER])
    return path


def _index_state(inst: Install) -> dict[str, tuple[str, bool]]:
    """Every index of members, metadata and audit_logs: its definition and whether it is valid."""
    return {name: (definition, valid) for name, definition, valid in inst.sql(
        "SELECT ic.relname, pg_get_indexdef(i.indexrelid), i.indisvalid FROM pg_index i "
        "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_class ic ON ic.oid = i.indexrelid "
        "WHERE t.relname IN ('members', 'metadata', 'audit_logs')")}


# -- indexes built after the data ---------------------------------------------------------------------------


def test_a_large_first_import_builds_the_secondary_indexes_after_the_data(inst: Install, tmp_path: Path) -> None:
    before = _index_state(inst)
    assert all(valid for _, valid in before.values())
    path = _member_file(tmp_path / "first.csv", range(12_000))
    result = inst.cli("import", "members", str(path), "--json", timeout=300)
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert (summary["created"], summary["indexes_pending"]) == (12_000, 0)
    assert summary["indexes_deferred"] >= 11  # members' and audit_logs' (and metadata's two partial ones)
    # Every index back, valid, with the very definition it had; nothing left recorded.
    assert _index_state(inst) == before
    assert inst.scalar("SELECT count(*) FROM deferred_indexes") == 0
    importer = inst.users["importer"].id
    actions = inst.sql("SELECT action, new_values->>'table', user_id FROM audit_logs "
                       "WHERE entity_type = 'database_index' ORDER BY created_at")
    assert {table for action, table, _ in actions if action == "defer_indexes"} >= {"members", "audit_logs"}
    assert sum(action == "rebuild_indexes" for action, _, _ in actions) == summary["indexes_deferred"]
    assert {user for _, _, user in actions} == {importer}

    # A small file into the table that is now large keeps the indexes in place; --defer-indexes overrides.
    # (The summary line says how many were built after the data.)
    count = summary["indexes_deferred"]
    assert f"{count} of {count} secondary indexes built after the data" in inst.cli(
        "import", "members", str(path), "--defer-indexes", "always").err
    more = _member_file(tmp_path / "more.csv", range(12_000, 12_300))
    kept = inst.cli("import", "members", str(more), "--json")
    assert kept.code == 0, kept.err
    assert json.loads(kept.out)["indexes_deferred"] == 0
    forced = inst.cli("import", "members", str(more), "--json", "--defer-indexes", "always")
    assert forced.code == 0, forced.err
    assert json.loads(forced.out)["indexes_deferred"] == summary["indexes_deferred"]
    assert json.loads(forced.out)["unchanged"] == 300
    line = inst.cli("import", "members", str(more), "--defer-indexes", "never")
    assert line.code == 0, line.err
    assert "secondary indexes" not in line.err
    # A re-run of the large file adds nothing (its first batch creates nothing): it keeps the indexes.
    rerun = json.loads(inst.cli("import", "members", str(path), "--json", timeout=300).out)
    assert (rerun["unchanged"], rerun["indexes_deferred"]) == (12_000, 0)
    assert _index_state(inst) == before


def test_an_import_killed_mid_file_and_run_again_ends_with_exactly_the_file(inst: Install, tmp_path: Path) -> None:
    total = 30_000
    indexes = _index_state(inst)
    path = _member_file(tmp_path / "big.csv", range(total))
    env = {**os.environ, **inst.env, "CARECLI_TOKEN": inst.tokens["import"]}
    proc = subprocess.Popen([sys.executable, "-m", "carecli", "import", "members", str(path), "--batch-rows", "1000",
                             "--workers", "2"],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while inst.scalar("SELECT count(*) FROM members") < 2000:  # a few batches in
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no batch was committed"
            time.sleep(0.02)
        helpers = _descendants(proc.pid)  # its worker processes (and their forkserver)
        # A first load this large builds its secondary indexes after the data: they are dropped now.
        deferred = inst.scalar("SELECT count(*) FROM deferred_indexes")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert helpers, "the import ran without worker processes"
    # Nobody shuts the workers down after a kill -9: they notice on their own and end.
    deadline = time.monotonic() + 20
    while (left := [pid for pid, started in helpers.items() if _started(pid) == started]) and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, "worker processes outlived the killed import"

    partial = _settled(inst)
    assert 0 < partial < total
    # Batches commit whole: members with their metadata and audit rows, in thousands.
    assert partial % 1000 == 0
    assert inst.scalar("SELECT count(*) FROM metadata WHERE entity_type = 'member'") == 2 * partial
    assert inst.scalar("SELECT count(*) FROM audit_logs WHERE entity_type = 'member'") == partial

    # The dropped indexes are recorded, and what checks the installation says so and how to fix it.
    assert deferred >= 11
    assert inst.scalar("SELECT count(*) FROM deferred_indexes") == deferred
    assert len(_index_state(inst)) == len(indexes) - deferred
    doctor = inst.cli("doctor", "--json", token=None)
    checks = [json.loads(line) for line in doctor.out.splitlines()]
    found = [check for check in checks if check["name"] == "deferred indexes"]
    assert [check["status"] for check in found] == ["fail"], doctor.out
    assert "carecli db rebuild-indexes" in found[0]["action"] and "import members" in found[0]["detail"]
    assert doctor.code == EXIT_FAILURE
    check = inst.cli("db", "check", token=None)
    assert check.code == EXIT_FAILURE and "carecli db rebuild-indexes" in check.out

    rerun = inst.cli("import", "members", str(path), "--batch-rows", "1000", "--json", timeout=300)
    assert rerun.code == 0, rerun.err
    summary = json.loads(rerun.out)
    assert (summary["rows"], summary["created"], summary["unchanged"], summary["rejected"]) == (
        total, total - partial, partial, 0)

    assert inst.scalar("SELECT count(*) FROM members") == total
    assert inst.scalar("SELECT count(DISTINCT metadata_value) FROM metadata WHERE entity_type = 'member' "
                       "AND metadata_key = 'external_member_number'") == total
    assert inst.scalar("SELECT count(*) FROM metadata WHERE entity_type = 'member' "
                       "AND metadata_key = 'external_member_number'") == total
    assert inst.scalar("SELECT count(DISTINCT metadata_value) FROM metadata WHERE entity_type = 'member' "
                       "AND metadata_key = 'ssn_blind_index'") == total
    # Each member exactly one 'create' audit row.
    assert inst.scalar("SELECT count(*) FROM members m LEFT JOIN (SELECT entity_id, count(*) AS n FROM audit_logs "
                       "WHERE entity_type = 'member' AND action = 'create' GROUP BY entity_id) a "
                       "ON a.entity_id = m.id WHERE a.n IS DISTINCT FROM 1") == 0
    assert inst.scalar("SELECT count(*) FROM audit_logs WHERE entity_type = 'member'") == total
    sample = inst.sql("SELECT m.first_name, md.metadata_value FROM members m JOIN metadata md ON md.entity_id = m.id "
                      "AND md.metadata_key = 'external_member_number' WHERE md.metadata_value IN "
                      "('\"EXT-000000\"', '\"EXT-029999\"') ORDER BY 2")
    assert sample == [("Quenby0", "EXT-000000"), ("Quenby29999", "EXT-029999")]
    # The re-run took the killed load's records over and built every index: valid, exactly as before.
    assert summary["indexes_deferred"] >= deferred and summary["indexes_pending"] == 0
    assert _index_state(inst) == indexes
    assert inst.scalar("SELECT count(*) FROM deferred_indexes") == 0
    assert inst.cli("db", "check", token=None).code == 0

    before = inst.counts()
    again = inst.cli("import", "members", str(path), "--batch-rows", "1000", "--json", timeout=300)
    assert again.code == 0, again.err
    assert (json.loads(again.out)["unchanged"], json.loads(again.out)["created"]) == (total, 0)
    assert inst.counts() == before


def test_a_load_collects_less_often_and_puts_the_collector_back() -> None:
    """`carecli import` freezes what start-up made and runs young passes every LOAD_GC_THRESHOLD allocations
    (the default's full passes walked the whole process 28 times in a 200,000-member import); the thresholds
    and what was frozen are as before once it ends, for a caller in the same process (these tests)."""
    import gc

    from carecli.cli.import_cmd import LOAD_GC_THRESHOLD, _collect_for_a_load

    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    restore = _collect_for_a_load()
    try:
        assert gc.get_threshold() == (LOAD_GC_THRESHOLD, *before[1:])
        assert gc.isenabled()  # a load leaves cyclic garbage: collecting stays on
        assert gc.get_freeze_count() >= frozen
    finally:
        restore()
    assert gc.get_threshold() == before and gc.get_freeze_count() == frozen

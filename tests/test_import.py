"""Import, in-process: the readers, every field rule, and the members and plans kinds on real PostgreSQL.

Reading and field rules need no database: they run the real reader and the
kind's parser over a small file. Everything that matches, writes or audits
runs through :class:`tests.import_fixtures.Importer` (the reader, parser and
loader of ``carecli import``) on one migrated platform database per module,
emptied after each test. The real command in a subprocess is tested in
tests/test_import_cli.py.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.pool import QueuePool

from carecli.config import load_settings
from carecli.data import audit
from carecli.data.actor import Actor
from carecli.data.bulk import copytext
from carecli.data.bulk import fields as f
from carecli.data.bulk import members as members_module
from carecli.data.bulk.catalog import COLUMNS
from carecli.data.bulk.digests import text_list
from carecli.data.bulk.loader import BatchConflict, ImportAborted, check_permission
from carecli.data.bulk.members import MembersKind
from carecli.data.bulk.readers import (
    Columns,
    FileProblem,
    Record,
    RecordProblem,
    detect_format,
    load_mapping,
    read_records,
)
from carecli.data.bulk.registry import kind_for
from carecli.data.crypto.master import LocalMasterKey, generate_master_key
from carecli.data.crypto.phi import DateOfBirth, Ssn
from carecli.data.databases import create_database_engine
from carecli.data.permissions import DEFAULT_ROLES
from carecli.errors import EXIT_ABORTED, ConfigError, PermissionDenied
from tests.import_fixtures import Importer, Outcome
from tests.platform_fixtures import Platform, make_actor

MEMBER_HEADER = COLUMNS["members"][1:]  # every file column but id
PLAN_HEADER = tuple(name for name in COLUMNS["plans"][1:] if name != "coverage_details")
BLIND_MASTER = LocalMasterKey(generate_master_key(), "test-blind")


# -- building files ----------------------------------------------------------------------------


def ssn_for(n: int) -> str:
    """A valid, distinct SSN for each n (area 101.., group 10..98, serial 1000..1099)."""
    rest = n % 8900
    return f"{101 + n // 8900:03d}-{10 + rest // 100:02d}-{1000 + rest % 100:04d}"


def dob_for(n: int) -> date:
    return date(1931, 3, 7) + timedelta(days=(n * 379) % 30000)


def person(n: int, **overrides: Any) -> dict[str, Any]:
    """A member row with values distinctive enough to grep for."""
    values: dict[str, Any] = {
        "external_member_number": f"EXT-{n:06d}", "first_name": f"Quenby{n}", "last_name": f"Marrowfield{n}",
        "ssn": ssn_for(n), "dob": dob_for(n).isoformat(), "email": f"quenby.{n}@mail.example.org",
        "phone": f"(415) 555-{n % 10000:04d}", "address_line1": f"{n} Quillfeather Lane", "address_line2": None,
        "city": "Zephyrton", "state": "OR", "zip_code": f"97{n % 1000:03d}", "status": "active",
    }
    values.update(overrides)
    return values


def plan_row(code: str, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "plan_code": code, "plan_name": f"Plan {code}", "plan_type": "PPO",
        "premium_amount": "250.00", "deductible_amount": "1000", "copay_amount": "$25", "is_active": "yes",
        "effective_date": "2026-01-01", "expiration_date": "2026-12-31",
    }
    values.update(overrides)
    return values


def to_csv(rows: Sequence[Mapping[str, Any]], header: Sequence[str] | None = None) -> str:
    header = list(header or rows[0].keys())
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if row.get(name) is None else row[name] for name in header])
    return out.getvalue()


def members_csv(*rows: Mapping[str, Any], header: Sequence[str] = MEMBER_HEADER) -> str:
    return to_csv(rows, header)


def read(kind: str, data: str | bytes, *, fmt: str = "csv", mapping: Mapping[str, str | None] | None = None,
         encoding: str = "utf-8") -> list[Record | RecordProblem]:
    importer = kind_for(kind)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return list(read_records(io.BytesIO(raw), fmt, Columns(importer.columns, mapping or {}), encoding=encoding,
                             required=importer.required_columns))


def parse(kind: str, data: str | bytes, **options: Any) -> tuple[list[Any], list[tuple[int, str, str]]]:
    """(parsed rows, (row, field, rule) of every problem) of reading and parsing a file, no database."""
    importer = kind_for(kind)
    parsed: list[Any] = []
    problems: list[RecordProblem] = []
    for item in read(kind, data, **options):
        if isinstance(item, RecordProblem):
            problems.append(item)
            continue
        result = importer.parse(item)
        if isinstance(result, list):
            problems.extend(result)
        else:
            parsed.append(result)
    return parsed, [(p.row, p.field, p.rule) for p in problems]


def one_member_value(name: str, raw: Any) -> tuple[list[Any], list[RecordProblem]]:
    importer = kind_for("members")
    records = read("members", members_csv(person(1, **{name: raw})))
    assert len(records) == 1 and isinstance(records[0], Record)
    result = importer.parse(records[0])
    return ([], result) if isinstance(result, list) else ([result], [])


# -- the database --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_platform(pg_server: Any, template_pair: Any) -> Iterator[Platform]:
    """One migrated platform database for the module; its cipher is opened once, as the CLI does."""
    name = pg_server.create_database("platform", template=template_pair.platform)
    engine = create_database_engine(pg_server.url(name), load_settings({}))
    platform = Platform(engine)
    cipher = platform.cipher()
    platform.cipher = lambda: cipher
    try:
        yield platform
    finally:
        engine.dispose()
        pg_server.drop_database(name)


@pytest.fixture
def imp(shared_platform: Platform) -> Iterator[Importer]:
    """An importer on the module's database, emptied again after the test."""
    yield Importer(shared_platform, BLIND_MASTER)
    empty(shared_platform)


def empty(platform: Platform) -> None:
    """Every row the import tests write, gone (the data keys stay)."""
    with platform.engine.begin() as connection:
        # audit_logs is append-only by trigger; the test server's superuser may switch triggers off.
        for statement in ("SET LOCAL session_replication_role = replica", "DELETE FROM members",
                          "DELETE FROM member_name_prefixes",  # its triggers are off too
                          "DELETE FROM insurance_plans", "DELETE FROM metadata", "DELETE FROM import_digests",
                          "DELETE FROM audit_logs WHERE entity_type <> 'data_key'"):
            connection.execute(text(statement))


def counts(platform: Platform) -> dict[str, int]:
    return {table: int(platform.scalar(f"SELECT count(*) FROM {table}"))
            for table in ("members", "insurance_plans", "metadata", "audit_logs")}


def member_ids_by_number(platform: Platform) -> dict[str, uuid.UUID]:
    rows = platform.sql("SELECT metadata_value, entity_id FROM metadata WHERE entity_type = 'member' "
                        "AND metadata_key = 'external_member_number'")
    return {value: entity_id for value, entity_id in rows}


def member(platform: Platform, member_id: uuid.UUID) -> Any:
    return platform.sql("SELECT * FROM members WHERE id = :id", id=member_id)[0]


def table_text(platform: Platform, *tables: str) -> str:
    chunks: list[str] = []
    for table in tables:
        chunks.extend(row[0] for row in platform.sql(f"SELECT t::text FROM {table} t"))
    return "\n".join(chunks)


def assert_loaded(outcome: Outcome, created: int = 0, updated: int = 0, unchanged: int = 0,
                  rejected: int = 0) -> None:
    summary = outcome.summary
    assert (summary.created, summary.updated, summary.unchanged, summary.rejected) == (
        created, updated, unchanged, rejected), outcome.rules()


# == reading files =================================================================================


def test_imported_rows_carry_time_ordered_ids(imp: Importer) -> None:
    """Members, their metadata and the audit rows an import writes get UUIDv7 ids (carecli.data.ids)."""
    before = time.time_ns() // 1_000_000
    assert_loaded(imp.run("members", members_csv(*(person(n) for n in range(1, 41))), batch_rows=16), created=40)
    after = time.time_ns() // 1_000_000
    for table, where in (("members", "TRUE"), ("metadata", "entity_type = 'member'"),
                         ("audit_logs", "entity_type IN ('member', 'metadata')")):
        ids = [row[0] for row in imp.platform.sql(f"SELECT id FROM {table} WHERE {where}")]
        assert len(ids) >= 40, table
        assert {value.version for value in ids} == {7}, table
        assert all(before <= value.int >> 80 <= after for value in ids), table
    members = [row[0] for row in imp.platform.sql(
        "SELECT m.id FROM members m JOIN metadata k ON k.entity_id = m.id "
        "AND k.metadata_key = 'external_member_number' ORDER BY k.metadata_value")]
    assert members == sorted(members, key=lambda value: value.int)  # in file order


def test_utf8_bom_before_the_header_is_dropped(imp: Importer) -> None:
    data = "\ufeff" + members_csv(person(1), person(2))
    records = read("members", data.encode("utf-8"))
    assert [type(r) for r in records] == [Record, Record]
    assert isinstance(records[0], Record)
    assert records[0].values["external_member_number"] == "EXT-000001"
    assert_loaded(imp.run("members", data.encode("utf-8")), created=2)
    # A BOM on a JSON Lines file too.
    (record,) = read("members", b'\xef\xbb\xbf{"external_member_number": "X1", "first_name": "A", "last_name": "B"}\n',
                     fmt="jsonl")
    assert isinstance(record, Record) and record.values["external_member_number"] == "X1"


def test_latin1_bytes_reject_their_row_naming_the_field_and_load_with_the_encoding(imp: Importer) -> None:
    rows = [person(1), person(2, first_name="Zo\u00eb", city="Bogot\u00e1"), person(3)]
    data = members_csv(*rows).encode("latin-1")
    outcome = imp.run("members", data)
    assert outcome.rules() == [(2, "first_name", "encoding")]
    assert "latin" not in outcome.problems[0].message and "--encoding" in outcome.problems[0].message
    assert_loaded(outcome, created=2, rejected=1)
    assert set(member_ids_by_number(imp.platform)) == {"EXT-000001", "EXT-000003"}

    again = imp.run("members", data, encoding="latin-1")
    assert_loaded(again, created=1, unchanged=2)
    zoe = member(imp.platform, member_ids_by_number(imp.platform)["EXT-000002"])
    assert (zoe.first_name, zoe.city) == ("Zo\u00eb", "Bogot\u00e1")


def test_bad_bytes_in_a_dropped_column_do_not_matter() -> None:
    data = "Notes,external_member_number,first_name,last_name\nna\xefve,X1,Ann,Lee\n".encode("latin-1")
    parsed, problems = parse("members", data, mapping={"Notes": None})
    assert problems == [] and parsed[0].values["first_name"] == "Ann"


def test_a_header_that_is_not_valid_in_the_encoding_is_a_usage_error() -> None:
    data = "external_member_number,first_n\xe4me,last_name\nX1,Ann,Lee\n".encode("latin-1")
    with pytest.raises(ConfigError, match="header line is not valid utf-8") as caught:
        read("members", data)
    assert caught.value.exit_code == 2 and "--encoding" in str(caught.value)
    # UTF-16 read as UTF-8 is the same mistake.
    with pytest.raises(ConfigError, match="header line is not valid"):
        read("members", members_csv(person(1)).encode("utf-16"))
    assert len(read("members", members_csv(person(1)).encode("utf-16"), encoding="utf-16")) == 1


def test_unknown_doubled_and_missing_columns_stop_the_file_before_anything_is_written(imp: Importer) -> None:
    before = counts(imp.platform)
    with pytest.raises(ConfigError) as unknown:
        imp.run("members", "external_member_number,first_name,last_name,Shoe Size\nX1,Ann,Lee,9\n")
    assert "unknown column(s) in the header: column 4" in str(unknown.value)
    assert "Shoe" not in str(unknown.value)
    assert "--map 'Their name='" in str(unknown.value) and unknown.value.exit_code == 2

    with pytest.raises(ConfigError, match="given more than once in the header: first_name"):
        imp.run("members", "external_member_number,first_name, FIRST_NAME ,last_name\nX1,Ann,Ann,Lee\n")
    with pytest.raises(ConfigError, match="lacks required column.*plan_code"):
        imp.run("plans", "plan_name,plan_type\nGold,PPO\n")
    assert counts(imp.platform) == before


def test_header_names_match_ignoring_case_and_spaces() -> None:
    parsed, problems = parse("members", " External_Member_Number ,FIRST_NAME,last_name\nX1,Ann,Lee\n")
    assert problems == [] and parsed[0].values == {"external_member_number": "X1", "first_name": "Ann",
                                                   "last_name": "Lee"}


def test_map_renames_and_drops_columns(imp: Importer) -> None:
    data = "Member ID,Given Name,Family Name,Junk\nM-1,Ann,Lee,whatever\n"
    mapping = load_mapping(["Member ID=external_member_number", "given name=first_name",
                            "Family  Name=last_name", "Junk="], None)
    assert mapping == {"member_id": "external_member_number", "given_name": "first_name",
                       "family_name": "last_name", "junk": None}
    assert_loaded(imp.run("members", data, mapping=mapping), created=1)
    row = member(imp.platform, member_ids_by_number(imp.platform)["M-1"])
    assert (row.first_name, row.last_name) == ("Ann", "Lee")


def test_mapping_file_in_toml_and_map_options_over_it(tmp_path: Any) -> None:
    path = tmp_path / "mapping.toml"
    path.write_text('[columns]\n"Member ID" = "external_member_number"\n"Given" = "first_name"\n'
                    '"Surname" = "last_name"\n"Internal Notes" = ""\n', encoding="utf-8")
    mapping = load_mapping(["Given=last_name", "Surname=first_name"], str(path))
    assert mapping == {"member_id": "external_member_number", "given": "last_name", "surname": "first_name",
                       "internal_notes": None}
    parsed, problems = parse("members", "Member ID,Given,Surname,Internal Notes\nM-1,Ann,Lee,x\n", mapping=mapping)
    assert problems == [] and parsed[0].values == {"external_member_number": "M-1", "last_name": "Ann",
                                                   "first_name": "Lee"}
    # A table without [columns] works too.
    flat = tmp_path / "flat.toml"
    flat.write_text('"Member ID" = "external_member_number"\n', encoding="utf-8")
    assert load_mapping([], str(flat)) == {"member_id": "external_member_number"}


@pytest.mark.parametrize("pairs, content, message", [
    (["no equals sign"], None, "must look like 'Source column=carecli_column'"),
    (["=first_name"], None, "must look like"),
    (["Given=shoe_size"], None, "the mapping names unknown column(s): shoe_size"),
    ([], "not = [valid", "is not valid TOML"),
    ([], "[columns]\nGiven = 3\n", "must have a [columns] table"),
])
def test_bad_mappings_are_usage_errors(tmp_path: Any, pairs: list[str], content: str | None, message: str) -> None:
    path = None
    if content is not None:
        path = tmp_path / "mapping.toml"
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        Columns(COLUMNS["members"], load_mapping(pairs, str(path) if path else None))
    assert message in str(caught.value) and caught.value.exit_code == 2
    with pytest.raises(ConfigError, match="cannot read the mapping file"):
        load_mapping([], str(tmp_path / "missing.toml"))


def test_quoted_newlines_commas_and_quotes_inside_fields(imp: Importer) -> None:
    rows = [person(1, address_line1="12 Harbour Road\nFlat 4, \"Rear\"", last_name='O"Brien, Jr.'),
            person(2)]
    data = members_csv(*rows).replace("\n", "\r\n")
    parsed, problems = parse("members", data)
    assert problems == [] and [p.row for p in parsed] == [1, 2]
    assert parsed[0].values["address_line1"] == "12 Harbour Road\r\nFlat 4, \"Rear\""
    assert_loaded(imp.run("members", members_csv(*rows)), created=2)
    stored = member(imp.platform, member_ids_by_number(imp.platform)["EXT-000001"])
    assert stored.address_line1 == "12 Harbour Road\nFlat 4, \"Rear\"" and stored.last_name == 'O"Brien, Jr.'


def test_a_huge_field_is_refused_by_its_length_and_the_rest_load(imp: Importer) -> None:
    outcome = imp.run("members", members_csv(person(1), person(2, first_name="x" * 200_000), person(3)))
    assert outcome.rules() == [(2, "first_name", "max_length")]
    assert outcome.problems[0].message == "must be at most 100 characters (has 200,000)"
    assert_loaded(outcome, created=2, rejected=1)


def test_an_unterminated_quote_aborts_with_the_batches_before_it_committed(imp: Importer) -> None:
    good = members_csv(*(person(n) for n in range(1, 251)))
    data = good + 'EXT-999999,"' + "y" * (20 * 1024 * 1024) + "\n" + members_csv(person(300)).split("\n", 1)[1]
    with pytest.raises(ImportAborted) as caught:
        imp.run("members", data, batch_rows=100)
    cause = caught.value.__cause__
    assert isinstance(cause, FileProblem) and cause.exit_code == EXIT_ABORTED
    assert "record 251" in str(cause) and "field larger than field limit" in str(cause)
    # Two whole batches were written before the reader gave up; the half batch after them was not,
    # and the summary says so.
    summary = caught.value.summary
    assert summary is not None
    assert (summary.aborted, summary.batches, summary.committed_through_row, summary.created) == (True, 2, 200, 200)
    assert imp.platform.scalar("SELECT count(*) FROM members") == 200
    assert imp.platform.scalar("SELECT count(*) FROM audit_logs WHERE entity_type = 'member'") == 200
    # An unterminated quote at the very end of a small file.
    with pytest.raises(FileProblem, match="record 2 .*unexpected end of data"):
        read("members", members_csv(person(1)) + 'EXT-2,"Ann,Lee\n')


def test_a_broken_header_is_a_usage_error() -> None:
    with pytest.raises(ConfigError, match="the header line cannot be read as CSV") as caught:
        read("members", '"external_member_number,first_name\nX1,Ann\n')
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("data", [b"", b"\n\n", b"\xef\xbb\xbf", b" , \n"])
def test_an_empty_file_is_a_usage_error(imp: Importer, data: bytes) -> None:
    with pytest.raises(ConfigError, match="the file is empty") as caught:
        imp.run("members", data)
    assert caught.value.exit_code == 2


def test_a_header_only_file_loads_nothing(imp: Importer) -> None:
    outcome = imp.run("members", ",".join(MEMBER_HEADER) + "\n")
    assert outcome.problems == [] and outcome.summary.rows == 0
    assert_loaded(outcome)
    assert outcome.summary.committed and counts(imp.platform)["members"] == 0


def test_rows_with_too_many_or_too_few_values(imp: Importer) -> None:
    data = ("external_member_number,first_name,last_name\n"
            "X1,Ann,Lee\nX2,Bob,Lee,extra\nX3,Cy\nX4,Di,Lee\n")
    outcome = imp.run("members", data)
    assert outcome.rules() == [(2, "(row)", "extra_values"), (3, "(row)", "missing_values")]
    assert outcome.problems[0].message == "has 4 values where the header has 3 columns"
    assert_loaded(outcome, created=2, rejected=2)


def test_blank_lines_and_rows_of_empty_cells_are_skipped() -> None:
    data = "external_member_number,first_name,last_name\n\nX1,Ann,Lee\n   \n,,\n , ,\nX2,Bob,\n\n"
    parsed, problems = parse("members", data)
    assert [p.values["external_member_number"] for p in parsed] == ["X1"]
    assert problems == [(2, "last_name", "required")]  # blank lines are not records


def test_jsonl_typed_values_and_broken_lines() -> None:
    lines = [
        '{"external_member_number": 4711, "first_name": "Ann", "last_name": "Lee", "zip_code": 2134, '
        '"phone": 4155550123, "ssn": "123-45-6789", "status": null, "address_line2": ""}',
        "",
        '{"external_member_number": "X2", "first_name": "Bob", "last_name": "Lee",}',
        "[1, 2, 3]",
        '{"external_member_number": "X4", "first_name": "Cy", "last_name": "Lee", "shoe_size": 9}',
        '{"external_member_number": "X5", "first_name": true, "last_name": "Lee"}',
        '{"external_member_number": "X6", "first_name": {"a": 1}, "last_name": "Lee"}',
        '{"external_member_number": "X7", "first_name": "Di", "FIRST_NAME": "Di", "last_name": "Lee"}',
        '"just a string"',
    ]
    parsed, problems = parse("members", "\n".join(lines) + "\n", fmt="jsonl")
    assert len(parsed) == 1
    assert parsed[0].row == 1 and parsed[0].values == {
        "external_member_number": "4711", "first_name": "Ann", "last_name": "Lee", "zip_code": "02134",
        "phone": "+14155550123", "ssn": Ssn("123456789"), "status": None, "address_line2": None}
    # JSON Lines rows are line numbers (blank lines count).
    # An unknown key is named by its position, never by the key (it could be anything, PHI too).
    assert problems == [(3, "(row)", "json"), (4, "(row)", "json"), (5, "(row)", "unknown_field"),
                        (6, "first_name", "type"), (7, "first_name", "type"), (8, "first_name", "duplicate_field"),
                        (9, "(row)", "json")]


def test_jsonl_integer_too_long_to_convert_is_a_row_rejection(imp: Importer) -> None:
    # json.loads raises a plain ValueError (no .msg/.colno) for an integer past
    # Python's int-string conversion limit; the line is rejected, the file goes on.
    lines = ['{"plan_code": "GOLD", "plan_name": "Gold"}',
             '{"plan_code": "HUGE", "plan_name": "Huge", "premium_amount": ' + "9" * 5000 + "}",
             '{"plan_code": "SILVER", "plan_name": "Silver"}']
    outcome = imp.run("plans", "\n".join(lines), fmt="jsonl")
    assert outcome.rules() == [(2, "(row)", "json")]
    assert "cannot be read as JSON" in outcome.problems[0].message
    assert_loaded(outcome, created=2, rejected=1)
    assert sorted(imp.platform.sql("SELECT plan_code FROM insurance_plans")) == [("GOLD",), ("SILVER",)]


def test_jsonl_plans_with_numbers_and_booleans(imp: Importer) -> None:
    lines = ['{"plan_code": "GOLD", "plan_name": "Gold", "premium_amount": 125.5, "copay_amount": 20, '
             '"is_active": false, "effective_date": "20260101"}',
             '{"plan_name": "No code"}']
    outcome = imp.run("plans", "\n".join(lines), fmt="jsonl")
    assert outcome.rules() == [(2, "plan_code", "required")]
    assert_loaded(outcome, created=1, rejected=1)
    (row,) = imp.platform.sql("SELECT * FROM insurance_plans")
    assert (row.premium_amount, row.copay_amount, row.is_active, row.effective_date) == (
        Decimal("125.50"), Decimal("20.00"), False, date(2026, 1, 1))


def test_format_from_the_extension_or_given() -> None:
    assert detect_format("members.csv", None) == "csv"
    assert detect_format("/data/Members.CSV", None) == "csv"
    assert detect_format("members.txt", None) == "csv"
    assert detect_format("members.jsonl", None) == "jsonl"
    assert detect_format("members.ndjson", None) == "jsonl"
    assert detect_format("members.json", None) == "jsonl"
    assert detect_format("members.dat", "csv") == "csv"
    assert detect_format("members.csv", "jsonl") == "jsonl"
    assert detect_format("-", "csv") == "csv"
    for name in ("members.dat", "members.csv.gz", "members"):
        with pytest.raises(ConfigError, match="cannot tell the format"):
            detect_format(name, None)
    with pytest.raises(ConfigError, match="standard input") as caught:
        detect_format("-", None)
    assert "--format" in str(caught.value)
    with pytest.raises(ConfigError, match="unknown format"):
        read_records(io.BytesIO(b""), "xml", Columns(COLUMNS["members"], {}))


# -- hostile JSON: every way in (a JSON Lines line, a JSON cell of a CSV file) ----------------------

DEEP = "[" * 100_000 + "]" * 100_000


def plans_jsonl(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def test_json_nested_too_deep_is_a_row_rejection_by_line_and_by_cell(imp: Importer) -> None:
    lines = ['{"plan_code": "GOLD", "plan_name": "Gold"}',
             '{"plan_code": "DEEP", "plan_name": "Deep", "coverage_details": {"x": ' + DEEP + "}}",
             DEEP,
             '{"plan_code": "OK", "plan_name": "Fine", "coverage_details": ' + '{"a": ' * 10 + "1" + "}" * 11]
    outcome = imp.run("plans", plans_jsonl(*lines), fmt="jsonl")
    assert outcome.rules() == [(2, "(row)", "nesting"), (3, "(row)", "nesting")]
    assert "nested" in outcome.problems[0].message
    assert_loaded(outcome, created=2, rejected=2)
    # The same JSON in a coverage_details cell of a CSV file.
    cells = to_csv([plan_row("CSV1"), plan_row("CSV2", coverage_details='{"x": ' + DEEP + "}"),
                    plan_row("CSV3", coverage_details=DEEP)], header=(*PLAN_HEADER, "coverage_details"))
    outcome = imp.run("plans", cells)
    assert outcome.rules() == [(2, "coverage_details", "nesting"), (3, "coverage_details", "nesting")]
    assert_loaded(outcome, created=1, rejected=2)
    # The parser on its own survives it too.
    for raw in (DEEP, '{"x": ' + DEEP + "}", "{" * 100_000):
        with pytest.raises(f.FieldProblem):
            f.parse_json_object(raw)


def test_numbers_json_cannot_hold_are_row_rejections(imp: Importer) -> None:
    huge = "9" * 5000
    lines = ['{"plan_code": "GOLD", "plan_name": "Gold"}',
             '{"plan_code": "H1", "plan_name": "Huge", "coverage_details": {"x": ' + huge + "}}",
             '{"plan_code": "H2", "plan_name": "Inf", "coverage_details": {"x": 1e999}}',
             '{"plan_code": "H3", "plan_name": "Big", "coverage_details": {"x": ' + "9" * 4000 + "}}"]
    outcome = imp.run("plans", plans_jsonl(*lines), fmt="jsonl")
    # 4,000 digits is JSON Python reads, but no amount: the cell's own check refuses it
    assert outcome.rules() == [(2, "(row)", "json"), (3, "(row)", "json"), (4, "coverage_details", "json")]
    assert all(huge[:8] not in p.message for p in outcome.problems)
    assert_loaded(outcome, created=1, rejected=3)
    cells = to_csv([plan_row("C1", coverage_details='{"x": ' + huge + "}"),
                    plan_row("C2", coverage_details='{"x": -1e999}'), plan_row("C3")],
                   header=(*PLAN_HEADER, "coverage_details"))
    outcome = imp.run("plans", cells)
    assert outcome.rules() == [(1, "coverage_details", "json"), (2, "coverage_details", "json")]
    assert_loaded(outcome, created=1, rejected=2)


def test_a_lone_surrogate_escape_rejects_its_row_and_the_file_goes_on(imp: Importer) -> None:
    lines = ['{"plan_code": "GOLD", "plan_name": "Gold"}',
             '{"plan_code": "S1", "plan_name": "Bad \\ud800 name"}',
             '{"plan_code": "S2", "plan_name": "Nested", "coverage_details": {"tiers": ["\\udfff"]}}',
             '{"plan_code": "S3", "plan_name": "Key", "coverage_details": {"\\ud83d": 1}}',
             '{"plan_code": "S4", "plan_name": "A pair is fine \\ud83d\\ude00"}']
    outcome = imp.run("plans", plans_jsonl(*lines), fmt="jsonl")
    assert outcome.rules() == [(2, "plan_name", "encoding"), (3, "coverage_details", "encoding"),
                               (4, "coverage_details", "encoding")]
    assert_loaded(outcome, created=2, rejected=3)
    assert not outcome.summary.aborted
    cells = to_csv([plan_row("C1", coverage_details='{"a": "\\ud800"}'), plan_row("C2")],
                   header=(*PLAN_HEADER, "coverage_details"))
    outcome = imp.run("plans", cells)
    assert outcome.rules() == [(1, "coverage_details", "encoding")]
    assert_loaded(outcome, created=1, rejected=1)
    # A member's name too (it is encrypted and indexed before anything is written).
    records = read("members", '{"external_member_number": "X1", "first_name": "\\udc80", "last_name": "L"}\n',
                   fmt="jsonl")
    assert [(p.row, p.field, p.rule) for p in records if isinstance(p, RecordProblem)] == [
        (1, "first_name", "encoding")]


def test_nan_and_infinity_tokens_and_duplicate_keys_are_refused(imp: Importer) -> None:
    lines = ['{"plan_code": "GOLD", "plan_name": "Gold"}',
             '{"plan_code": "N1", "plan_name": "NaN", "premium_amount": NaN}',
             '{"plan_code": "N2", "plan_name": "Inf", "coverage_details": {"x": Infinity}}',
             '{"plan_code": "N3", "plan_name": "-Inf", "coverage_details": {"x": [-Infinity]}}',
             '{"plan_code": "D1", "plan_name": "Dup", "plan_name": "Dup again"}',
             '{"plan_code": "D2", "plan_name": "Nested dup", "coverage_details": {"a": 1, "a": 2}}']
    outcome = imp.run("plans", plans_jsonl(*lines), fmt="jsonl")
    assert outcome.rules() == [(2, "(row)", "json"), (3, "(row)", "json"), (4, "(row)", "json"),
                               (5, "(row)", "duplicate_key"), (6, "(row)", "duplicate_key")]
    assert_loaded(outcome, created=1, rejected=5)
    cells = to_csv([plan_row("C1", coverage_details='{"x": NaN}'), plan_row("C2", coverage_details='{"a":1,"a":1}'),
                    plan_row("C3")], header=(*PLAN_HEADER, "coverage_details"))
    outcome = imp.run("plans", cells)
    assert outcome.rules() == [(1, "coverage_details", "json"), (2, "coverage_details", "duplicate_key")]
    assert_loaded(outcome, created=1, rejected=2)


def test_a_file_without_its_header_line_names_positions_not_the_first_record() -> None:
    first = person(1)
    data = members_csv(first, person(2)).split("\n", 1)[1]  # the header line left off
    with pytest.raises(ConfigError) as caught:
        read("members", data)
    message = str(caught.value)
    assert "unknown column(s) in the header: column 1, column 2" in message and caught.value.exit_code == 2
    for value in first.values():
        if value and len(str(value)) >= 4:
            assert str(value) not in message, value


def test_an_unknown_json_key_is_reported_by_its_position_not_its_name() -> None:
    records = read("members", '{"external_member_number": "X1", "first_name": "A", "last_name": "B", '
                   '"123-45-6789": "Quenby Marrowfield"}\n', fmt="jsonl")
    [problem] = records
    assert isinstance(problem, RecordProblem)
    assert (problem.row, problem.field, problem.rule) == (1, "(row)", "unknown_field")
    assert "key 4" in problem.message
    assert "123-45-6789" not in problem.message + problem.field and "Quenby" not in problem.message


# == field rules ====================================================================================

# (field, value, rule): each breaks exactly one rule, in an otherwise good member row.
MEMBER_RULES = [
    ("ssn", "000-12-3456", "ssn_area"),
    ("ssn", "666-12-3456", "ssn_area"),
    ("ssn", "900-12-3456", "ssn_area"),
    ("ssn", "999121234", "ssn_area"),
    ("ssn", "123-00-4567", "ssn_group"),
    ("ssn", "123-45-0000", "ssn_serial"),
    ("ssn", "12-345-6789", "ssn_format"),
    ("ssn", "1234567890", "ssn_format"),
    ("ssn", "87654321", "ssn_format"),
    ("ssn", "123-45-678O", "ssn_format"),
    ("ssn", "123.45.6789", "ssn_format"),
    ("dob", (date.today() + timedelta(days=1)).isoformat(), "dob_future"),
    ("dob", "1890-06-01", "dob_too_old"),
    ("dob", "02/30/1990", "date"),
    ("dob", "1990-13-01", "date"),
    ("dob", "1990/01/02", "date_format"),
    ("dob", "2 January 1990", "date_format"),
    ("state", "XX", "us_state"),
    ("state", "Cascadia", "us_state"),  # full names are read (Oregon is OR); unknown ones are not
    ("zip_code", "9720", "zip_format"),
    ("zip_code", "97201-12", "zip_format"),
    ("zip_code", "9720112345", "zip_format"),
    ("zip_code", "ABCDE", "zip_format"),
    ("phone", "555-0100", "phone_format"),
    ("phone", "(415) 555-01234", "phone_format"),
    ("phone", "2-415-555-0123", "phone_format"),
    ("phone", "+44 20 7946 0958", "phone_format"),
    ("phone", "415-555-CALL", "phone_format"),
    ("email", "quenby.example.org", "email_format"),
    ("email", "quenby@example", "email_format"),
    ("email", "que nby@example.org", "email_format"),
    ("email", "q@" + "e" * 250 + ".org", "email_format"),
    ("first_name", "F" * 101, "max_length"),
    ("last_name", "L" * 101, "max_length"),
    ("address_line1", "A" * 256, "max_length"),
    ("address_line2", "B" * 256, "max_length"),
    ("city", "C" * 101, "max_length"),
    ("external_member_number", "N" * 65, "max_length"),
    ("first_name", "Ann\x00", "control_character"),
    ("status", "deceased", "enum"),
    ("first_name", "   ", "required"),
    ("last_name", "", "required"),
]


@pytest.mark.parametrize("name, value, rule", MEMBER_RULES, ids=[f"{n}-{r}-{i}" for i, (n, _, r) in
                                                                 enumerate(MEMBER_RULES)])
def test_member_field_rule(name: str, value: str, rule: str) -> None:
    _, problems = one_member_value(name, value)
    assert [(p.row, p.field, p.rule) for p in problems] == [(1, name, rule)]
    # The message says what is expected, never what was found.
    if value.strip() and len(value) > 2:
        assert value not in problems[0].message and value.strip("\x00") not in problems[0].message


def test_a_row_may_break_several_rules_and_all_are_reported() -> None:
    _, problems = parse("members", members_csv(person(1, ssn="000-00-0000", email="nope", state="ZZ"),
                                               person(2), person(3, zip_code="1")))
    assert problems == [(1, "ssn", "ssn_area"), (1, "email", "email_format"), (1, "state", "us_state"),
                        (3, "zip_code", "zip_format")]


def test_a_member_needs_some_identity() -> None:
    row = person(1, external_member_number=None, ssn=None)
    _, problems = parse("members", members_csv(row))
    assert problems == [(1, "external_member_number", "identity_required")]
    _, problems = parse("members", members_csv(row, header=[n for n in MEMBER_HEADER
                                                            if n not in ("external_member_number", "ssn")]))
    assert problems == [(1, "external_member_number", "identity_required")]
    # Any one of id, number or SSN is enough.
    for keep in ("external_member_number", "ssn"):
        assert parse("members", members_csv(person(1, **{
            other: None for other in ("external_member_number", "ssn") if other != keep})))[1] == []
    assert parse("members", to_csv([{"id": str(uuid.uuid4()), "first_name": "A", "last_name": "B"}]))[1] == []
    assert parse("members", to_csv([{"id": "not-a-uuid", "first_name": "A", "last_name": "B"}]))[1] == [
        (1, "id", "uuid")]


@pytest.mark.parametrize("raw", ["123-45-6789", "123456789", "123 45 6789", " 123-45-6789 ", "123-456789"])
def test_ssn_spellings_are_accepted_and_equal(raw: str) -> None:
    parsed, problems = one_member_value("ssn", raw)
    assert problems == [] and parsed[0].values["ssn"] == Ssn("123456789")
    assert "123" not in repr(parsed[0].values["ssn"])  # held masked


@pytest.mark.parametrize("raw", ["1990-01-02", "01/02/1990", "1/2/1990", "19900102", " 1990-01-02 "])
def test_date_of_birth_formats(raw: str) -> None:
    parsed, problems = one_member_value("dob", raw)
    assert problems == [] and parsed[0].values["dob"] == DateOfBirth(date(1990, 1, 2))


def test_date_of_birth_limits_are_exact() -> None:
    parse_dob = f.dob_parser(today=lambda: date(2026, 6, 15))
    assert parse_dob("2026-06-15") == DateOfBirth(date(2026, 6, 15))
    assert parse_dob("1896-01-01") == DateOfBirth(date(1896, 1, 1))
    for raw, rule in (("2026-06-16", "dob_future"), ("1895-12-31", "dob_too_old")):
        with pytest.raises(f.FieldProblem) as caught:
            parse_dob(raw)
        assert caught.value.rule == rule


@pytest.mark.parametrize("name, raw, stored", [
    ("state", "or", "OR"), ("state", " pr ", "PR"), ("state", "Dc", "DC"),
    ("zip_code", "97201", "97201"), ("zip_code", "972011234", "97201-1234"), ("zip_code", "97201-1234", "97201-1234"),
    ("zip_code", "97201 1234", "97201-1234"), ("zip_code", "02134", "02134"),
    ("phone", "(415) 555-0123", "+14155550123"), ("phone", "415.555.0123", "+14155550123"),
    ("phone", "415-555-0123", "+14155550123"), ("phone", "4155550123", "+14155550123"),
    ("phone", "+1 415 555 0123", "+14155550123"), ("phone", "1-415-555-0123", "+14155550123"),
    ("phone", "+1 (415) 555-0123", "+14155550123"),
    ("status", "Active", "active"), ("status", "SUSPENDED", "suspended"),
    ("email", "Ann.Lee+x@Example.org", "Ann.Lee+x@Example.org"),
    ("first_name", "  Ann  ", "Ann"), ("first_name", "F" * 100, "F" * 100),
    ("external_member_number", "N" * 64, "N" * 64),
])
def test_accepted_spellings_are_normalised(name: str, raw: str, stored: str) -> None:
    parsed, problems = one_member_value(name, raw)
    assert problems == [] and parsed[0].values[name] == stored


PLAN_RULES = [
    ("expiration_date", "2025-12-31", "date_order"),
    ("premium_amount", "-1", "range"),
    ("deductible_amount", "-0.01", "range"),
    ("copay_amount", "$-5", "range"),
    ("premium_amount", "12.345", "scale"),
    ("premium_amount", "100000000", "range"),
    ("premium_amount", "twelve", "number"),
    ("premium_amount", "NaN", "number"),
    ("is_active", "maybe", "boolean"),
    ("effective_date", "2026-02-30", "date"),
    ("effective_date", "next week", "date_format"),
    ("plan_code", "P" * 51, "max_length"),
    ("plan_name", "N" * 256, "max_length"),
    ("plan_type", "T" * 51, "max_length"),
    ("plan_code", "", "required"),
    ("plan_name", " ", "required"),
    ("id", "12345", "uuid"),
]


@pytest.mark.parametrize("name, value, rule", PLAN_RULES, ids=[f"{n}-{r}" for n, _, r in PLAN_RULES])
def test_plan_field_rule(name: str, value: str, rule: str) -> None:
    row = {"id": None, **plan_row("GOLD", **{name: value})}
    _, problems = parse("plans", to_csv([row]))
    assert problems == [(1, name, rule)]


@pytest.mark.parametrize("raw, value", [("yes", True), ("Y", True), ("TRUE", True), ("t", True), ("1", True),
                                        ("no", False), ("N", False), ("false", False), ("F", False), ("0", False)])
def test_boolean_spellings(raw: str, value: bool) -> None:
    parsed, problems = parse("plans", to_csv([plan_row("GOLD", is_active=raw)]))
    assert problems == [] and parsed[0].values["is_active"] is value


def test_plan_amounts_and_dates_are_normalised() -> None:
    parsed, problems = parse("plans", to_csv([plan_row("GOLD", premium_amount="$1,234.5", deductible_amount="0",
                                                       effective_date="01/15/2026", expiration_date="20260115")]))
    assert problems == []
    values = parsed[0].values
    assert values["premium_amount"] == Decimal("1234.50") and str(values["premium_amount"]) == "1234.50"
    assert values["deductible_amount"] == Decimal("0.00") and values["copay_amount"] == Decimal("25.00")
    assert values["effective_date"] == values["expiration_date"] == date(2026, 1, 15)  # the same day is in order


def test_coverage_details_must_be_a_json_object() -> None:
    parsed, problems = parse("plans", to_csv([plan_row("GOLD", coverage_details='{"dental": true}'),
                                              plan_row("SILVER", coverage_details="not json"),
                                              plan_row("BRONZE", coverage_details="[1, 2]")]))
    assert problems == [(2, "coverage_details", "json"), (3, "coverage_details", "json")]
    assert parsed[0].values["coverage_details"] == {"dental": True}
    parsed, problems = parse("plans", '{"plan_code": "GOLD", "plan_name": "Gold", '
                             '"coverage_details": {"dental": true, "tiers": [1, 2]}}\n', fmt="jsonl")
    assert problems == [] and parsed[0].values["coverage_details"] == {"dental": True, "tiers": [1, 2]}


# == hostile values: each a rejection of its row naming the field and rule, never an error or a stored value ====

FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")

# (field, value, rule) in an otherwise good member row (CSV). Formats are ASCII: \d and str.isdigit take
# any script's digits, which the blind index cannot hash and the database would store as they are.
HOSTILE_MEMBER_VALUES = [
    ("ssn", "999-12-3456".translate(FULLWIDTH), "ssn_format"),
    ("ssn", "９９９-12-3456", "ssn_format"),  # a never-issued area, in fullwidth digits
    ("ssn", "123-45-6789".translate(ARABIC_INDIC), "ssn_format"),
    ("zip_code", "97201".translate(FULLWIDTH), "zip_format"),
    ("zip_code", "97201-1234".translate(ARABIC_INDIC), "zip_format"),
    ("phone", "5551234567".translate(ARABIC_INDIC), "phone_format"),
    ("phone", "(415) 555-0123".translate(FULLWIDTH), "phone_format"),
    ("dob", "1990-01-02".translate(FULLWIDTH), "date_format"),
    ("dob", "01/02/1990".translate(ARABIC_INDIC), "date_format"),
    ("dob", "0000-01-01", "date"),
    ("state", "ＭＡ", "us_state"),
    ("state", "m\u017f", "us_state"),  # the long s: "mſ".upper() == "MS"
    ("state", "Massachusets", "us_state"),
    ("state", "New  Yorkshire", "us_state"),
    ("email", "\t=cmd@example.org", "email_format"),
    ("email", "ann\x00@example.org", "control_character"),
]


@pytest.mark.parametrize("name, value, rule", HOSTILE_MEMBER_VALUES,
                         ids=[f"{n}-{r}-{i}" for i, (n, _, r) in enumerate(HOSTILE_MEMBER_VALUES)])
def test_hostile_member_value_is_a_rule(name: str, value: str, rule: str) -> None:
    _, problems = one_member_value(name, value)
    assert [(p.row, p.field, p.rule) for p in problems] == [(1, name, rule)]
    assert value.strip() not in problems[0].message


def test_the_ssn_wrapper_holds_ascii_digits_only() -> None:
    """Ssn is what the blind index hashes (as ASCII) and the cipher encrypts: other scripts' digits never get in,
    whichever way a value is made (the import's parser, the app's forms)."""
    for raw in ("123-45-6789".translate(FULLWIDTH), "123456789".translate(ARABIC_INDIC), "123456789\n"):
        with pytest.raises(ValueError, match="nine digits"):
            Ssn(raw)
    assert Ssn("123-45-6789").reveal() == "123456789"


def short_id(value: Any) -> str | None:
    """A readable test id for a value that may be thousands of digits long."""
    if isinstance(value, int) and abs(value) > 10 ** 20:
        return f"{'-' if value < 0 else ''}10^{len(str(abs(value))) - 1}"
    if isinstance(value, str) and len(value) > 24:
        return f"{value[:12]}...({len(value)} chars)"
    return None


def field_rules(kind: str, name: str, raw: Any) -> list[tuple[str, str]]:
    """(field, rule) of each problem of a record holding only ``raw`` in column ``name`` (as JSON Lines gives it)."""
    result = kind_for(kind).parse(Record(1, {name: raw}))
    assert isinstance(result, list), "the value was accepted"
    problems = [(p.field, p.rule) for p in result if p.field == name]
    for problem in result:
        if isinstance(raw, str) and len(raw.strip()) >= 4:
            assert raw.strip() not in problem.message
    return problems


@pytest.mark.parametrize("kind, name, raw, rule", [
    ("members", "id", "3f2c9a5e-8b1d-4c7a-9e2f-0a1b2c3d4e5f".translate(ARABIC_INDIC), "uuid"),
    ("members", "id", "3f2c9a5e_8b1d_4c7a_9e2f_0a1b2c3d4e5f", "uuid"),
    ("calls", "member_id", "{3f2c9a5e-8b1d-4c7a-9e2f-0a1b2c3d4e5f", "uuid"),
    ("plans", "premium_amount", "1e999999999", "range"),
    ("plans", "premium_amount", "1" * 40, "range"),
    ("plans", "premium_amount", "1e308", "range"),
    ("plans", "premium_amount", "-1e308", "range"),
    ("plans", "premium_amount", "9" * 5000, "range"),
    ("plans", "premium_amount", 10 ** 4000, "range"),
    ("plans", "premium_amount", "NaN", "number"),
    ("plans", "premium_amount", "sNaN", "number"),
    ("plans", "premium_amount", "Infinity", "number"),
    ("plans", "premium_amount", "-Infinity", "number"),
    ("plans", "premium_amount", float("nan"), "number"),
    ("plans", "premium_amount", float("-inf"), "number"),
    ("plans", "premium_amount", "1_000", "number"),
    ("plans", "premium_amount", "١٢٣", "number"),
    ("plans", "premium_amount", "1e-999999999", "scale"),
    ("enrollments", "coverage_percentage", "１００", "number"),
    ("enrollments", "coverage_percentage", "1e999999999", "range"),
    ("calls", "duration_seconds", "9" * 5000, "integer"),
    ("calls", "duration_seconds", 10 ** 4000, "range"),
    ("calls", "duration_seconds", -(10 ** 4000), "range"),
    ("calls", "duration_seconds", float("nan"), "integer"),
    ("calls", "duration_seconds", "١٢", "integer"),
], ids=short_id)
def test_hostile_numbers_and_ids_are_rules(kind: str, name: str, raw: Any, rule: str) -> None:
    assert field_rules(kind, name, raw) == [(name, rule)]


def test_negative_zero_is_zero() -> None:
    for raw in ("-0", "-0.00", "$-0", -0.0):
        assert kind_for("plans").parsers["premium_amount"](raw) == Decimal("0.00")
        assert str(kind_for("plans").parsers["premium_amount"](raw)) == "0.00"
    assert kind_for("calls").parsers["duration_seconds"]("-0") == 0


@pytest.mark.parametrize("kind, name, raw, rule", [
    ("calls", "started_at", "0001-01-01T00:00:00+05:00", "datetime_range"),
    ("calls", "ended_at", "9999-12-31T23:59:59-05:00", "datetime_range"),
    ("flags", "resolved_at", "0001-01-01T04:59:59+05:00", "datetime_range"),
    ("calls", "scheduled_at", "2026-01-01T10:00".translate(FULLWIDTH), "datetime_format"),
    ("calls", "scheduled_at", "2026-01-01T10:00".translate(ARABIC_INDIC), "datetime_format"),
    ("calls", "scheduled_at", "2026-W01-1", "datetime_format"),
    ("calls", "scheduled_at", "1" * 40, "datetime_format"),
    ("calls", "scheduled_at", 10 ** 4000, "max_length"),
    ("calls", "scheduled_at", float("inf"), "number"),
    ("calls", "scheduled_at", "2026-02-30T10:00", "datetime"),
    ("calls", "scheduled_at", "2026-01-01T25:00", "datetime"),
    ("calls", "scheduled_at", "2026-02-30", "date"),
    ("calls", "follow_up_date", "0000-12-31", "date"),
    ("calls", "follow_up_date", "10000-01-01", "date_format"),
    ("plans", "effective_date", "2026-01-01".translate(ARABIC_INDIC), "date_format"),
], ids=short_id)
def test_hostile_times_are_rules(kind: str, name: str, raw: Any, rule: str) -> None:
    assert field_rules(kind, name, raw) == [(name, rule)]


def test_times_at_the_edges_of_what_python_holds_load() -> None:
    parse = kind_for("calls").parsers["started_at"]
    assert parse("0001-01-01T05:00:00+05:00") == datetime(1, 1, 1)
    assert parse("9999-12-31T18:59:59-05:00") == datetime(9999, 12, 31, 23, 59, 59)
    assert parse("2026-03-01T10:00:00Z") == parse("2026-03-01T05:00:00-05:00") == datetime(2026, 3, 1, 10)
    assert parse("2026-03-01 10:00:00.123456+0100") == datetime(2026, 3, 1, 9, 0, 0, 123456)


def test_json_nan_and_infinity_are_neither_names_nor_numbers() -> None:
    # NaN and Infinity are not JSON: the reader refuses their rows whole (rule json); a JSON number in a
    # name is a type problem of that field.
    lines = ['{"external_member_number": "X1", "first_name": NaN, "last_name": Infinity}',
             '{"external_member_number": "X2", "first_name": 12, "last_name": -Infinity}',
             '{"external_member_number": 4711, "first_name": "Nan", "last_name": "Infinity"}',
             '{"external_member_number": NaN, "first_name": "Ann", "last_name": "Lee"}',
             '{"external_member_number": "X5", "first_name": 12, "last_name": 1.5e3}']
    parsed, problems = parse("members", "\n".join(lines) + "\n", fmt="jsonl")
    assert problems == [(1, "(row)", "json"), (2, "(row)", "json"), (4, "(row)", "json"),
                        (5, "first_name", "type"), (5, "last_name", "type")]
    # Text that spells them is text (people are called Nan), and a member number may be a JSON number.
    assert [(p.values["external_member_number"], p.values["first_name"]) for p in parsed] == [("4711", "Nan")]
    parsed, problems = parse("plans", '{"plan_code": "G", "plan_name": "Gold", "premium_amount": NaN, '
                             '"copay_amount": Infinity, "coverage_details": {"x": [1, NaN]}}\n', fmt="jsonl")
    assert problems == [(1, "(row)", "json")]
    # and the parsers refuse float NaN and infinities however they come (a value decoded elsewhere)
    for column in ("premium_amount", "copay_amount"):
        with pytest.raises(f.FieldProblem) as refused:
            kind_for("plans").parsers[column](float("nan"))
        assert refused.value.rule == "number"


@pytest.mark.parametrize("raw, stored", [
    ("Massachusetts", "MA"), ("massachusetts", "MA"), ("  MASSACHUSETTS  ", "MA"), ("New  Hampshire", "NH"),
    ("new\thampshire", "NH"), ("District of Columbia", "DC"), ("Washington, D.C.", "DC"), ("D.C.", "DC"),
    ("Washington", "WA"), ("Puerto Rico", "PR"), ("guam", "GU"), ("U.S. Virgin Islands", "VI"),
    ("American Samoa", "AS"), ("Northern Mariana Islands", "MP"), ("ma", "MA"),
])
def test_state_names_become_their_codes(raw: str, stored: str) -> None:
    parsed, problems = one_member_value("state", raw)
    assert problems == [] and parsed[0].values["state"] == stored


def test_every_state_code_has_a_name_and_every_name_a_code() -> None:
    from carecli.data.validation import US_STATE_CODES, US_STATE_NAMES

    assert set(US_STATE_NAMES.values()) == US_STATE_CODES


@pytest.mark.parametrize("kind, name, raw, stored", [
    ("members", "first_name", "\t=1+1", "\t=1+1"),
    ("members", "last_name", "  +SUM(A1:A9)  ", "  +SUM(A1:A9)"),
    ("members", "address_line1", "\n@cmd", "\n@cmd"),
    ("members", "city", " -2+3", " -2+3"),
    ("enrollments", "notes", "   - call back Monday\n", "   - call back Monday"),
    ("members", "first_name", "=1+1", "=1+1"),  # no whitespace to strip: stored as given
    ("members", "first_name", "\t Ann \t", "Ann"),  # other values are stripped as before
    ("members", "phone", "\t+1 415 555 0123", "+14155550123"),  # normalised, so no formula
    ("members", "phone", "+1 (415) 555-0123", "+14155550123"),
    ("members", "external_member_number", "\t-17", "\t-17"),
])
def test_stripping_whitespace_never_makes_a_formula(kind: str, name: str, raw: str, stored: str) -> None:
    assert kind_for(kind).parsers[name](raw) == stored


@pytest.mark.parametrize("kind, name", [("members", "first_name"), ("members", "email"), ("members", "ssn"),
                                        ("members", "state"), ("members", "external_member_number"),
                                        ("calls", "call_notes"), ("calls", "call_type"), ("plans", "plan_code"),
                                        ("plans", "coverage_details"), ("plans", "premium_amount"),
                                        ("specialists", "plan_codes")])
def test_lone_surrogates_are_an_encoding_problem(kind: str, name: str) -> None:
    raw: Any = "ab\ud800cd"
    if name == "coverage_details":
        raw = {"tiers": ["gold", "\udc00"]}
    elif name == "plan_codes":
        raw = ["A", "B\ud800"]
    assert field_rules(kind, name, raw) == [(name, "encoding")]


def test_hostile_rows_are_rejected_and_the_rest_of_the_file_loads(imp: Importer) -> None:
    """A JSON Lines file of every kind of hostile value, through the real loader, blind index and database:
    each bad row is refused (the row, not the file), nothing of it is stored, the good rows load."""
    good = person(1, state="Massachusetts", first_name="\t=1+1")
    rows = [
        person(2, ssn="９９９-12-3456"), person(3, ssn="123-45-6789".translate(FULLWIDTH)),
        person(4, zip_code="97201".translate(FULLWIDTH)), person(5, phone="5551234567".translate(ARABIC_INDIC)),
        person(6, first_name="ab\ud800"), person(7, state="Atlantis"), person(8, dob="0001-01-01"),
    ]
    lines = [json.dumps(row) for row in (good, *rows)]
    lines.append(json.dumps(person(9)).replace('"Quenby9"', "NaN"))
    lines.append(json.dumps(person(10)).replace('"Marrowfield10"', "Infinity"))
    outcome = imp.run("members", "\n".join(lines) + "\n", fmt="jsonl")
    assert outcome.rules() == [(2, "ssn", "ssn_format"), (3, "ssn", "ssn_format"), (4, "zip_code", "zip_format"),
                               (5, "phone", "phone_format"), (6, "first_name", "encoding"), (7, "state", "us_state"),
                               (8, "dob", "dob_too_old"), (9, "(row)", "json"), (10, "(row)", "json")]
    assert_loaded(outcome, created=1, rejected=9)
    (stored,) = imp.platform.sql("SELECT first_name, state, phone, zip_code FROM members")
    assert tuple(stored) == ("\t=1+1", "MA", "+14155550001", "97001")
    plans = ['{"plan_code": "OK", "plan_name": "Fine", "premium_amount": "-0", "coverage_details": {"a": 1.5}}',
             '{"plan_code": "P1", "plan_name": "Huge", "premium_amount": "1e999999999"}',
             '{"plan_code": "P2", "plan_name": "Long", "deductible_amount": "' + "1" * 40 + '"}',
             '{"plan_code": "P3", "plan_name": "NaN", "copay_amount": NaN}',
             '{"plan_code": "P4", "plan_name": "Inf", "coverage_details": {"cap": Infinity}}',
             '{"plan_code": "P5", "plan_name": "Nul", "coverage_details": {"note": "a\\u0000b"}}',
             '{"plan_code": "P6", "plan_name": "Deep", "coverage_details": ' + '{"a": ' * 200 + "1" + "}" * 200 + "}",
             '{"plan_code": "P7", "plan_name": "Old", "effective_date": "0000-01-01"}']
    outcome = imp.run("plans", "\n".join(plans) + "\n", fmt="jsonl")
    # NaN and Infinity are not JSON, and 200 levels are past the reader's limit: those rows are refused whole
    assert outcome.rules() == [(2, "premium_amount", "range"), (3, "deductible_amount", "range"),
                               (4, "(row)", "json"), (5, "(row)", "json"),
                               (6, "coverage_details", "control_character"), (7, "(row)", "nesting"),
                               (8, "effective_date", "date")]
    assert_loaded(outcome, created=1, rejected=7)
    assert imp.platform.sql("SELECT plan_code, premium_amount::text FROM insurance_plans") == [("OK", "0.00")]


# == members: creating, matching, updating ==========================================================


def test_created_members_are_encrypted_indexed_and_audited_without_plaintext(
        imp: Importer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rows = [person(n) for n in (1, 2, 3)]
    rows[1]["ssn"] = rows[1]["ssn"].replace("-", "")  # spelled without dashes
    rows[2]["dob"] = dob_for(3).strftime("%m/%d/%Y")
    outcome = imp.run("members", members_csv(*rows))
    assert_loaded(outcome, created=3)
    assert outcome.summary.committed and outcome.summary.batches == 1

    platform = imp.platform
    ids = member_ids_by_number(platform)
    assert sorted(ids) == ["EXT-000001", "EXT-000002", "EXT-000003"]
    cipher = platform.cipher()
    blind = imp.blind_index()
    hashes = {entity_id: value for entity_id, value in platform.sql(
        "SELECT entity_id, metadata_value FROM metadata WHERE entity_type = 'member' "
        "AND metadata_key = 'ssn_blind_index'")}
    for n in (1, 2, 3):
        member_id = ids[f"EXT-{n:06d}"]
        row = member(platform, member_id)
        assert cipher.decrypt_ssn(bytes(row.encrypted_ssn), member_id) == Ssn(ssn_for(n))
        assert cipher.decrypt_dob(bytes(row.encrypted_dob), member_id) == DateOfBirth(dob_for(n))
        assert hashes[member_id] == blind.ssn(Ssn(ssn_for(n)))
        assert (row.first_name, row.phone, row.zip_code, row.status) == (
            f"Quenby{n}", f"+1415555{n:04d}", f"97{n:03d}", "active")

    # Every member and every metadata row has its 'create' audit row, by the importing user, values redacted.
    audit = platform.audit()
    creates = [(a.entity_type, a.entity_id) for a in audit if a.action == "create"]
    metadata_ids = [r.id for r in platform.sql("SELECT id FROM metadata WHERE entity_type = 'member'")]
    key_row = platform.sql("SELECT id FROM metadata WHERE entity_type = 'blind_index_key'")[0].id
    assert sorted(map(str, creates)) == sorted(map(str, [("member", i) for i in ids.values()]
                                                   + [("metadata", i) for i in metadata_ids + [key_row]]))
    assert {a.action for a in audit} == {"create"}
    for row in audit:
        if row.entity_type == "member":
            assert row.user_id == platform.admin.user_id and str(row.ip_address) == "203.0.113.7"
            for name in ("first_name", "last_name", "email", "phone", "address_line1", "city", "state", "zip_code",
                         "encrypted_ssn", "encrypted_dob", "external_member_number"):
                assert row.new_values[name] == "[redacted]", name
            assert row.new_values["status"] == "active"
        if row.entity_type == "metadata":
            assert row.new_values["metadata_value"] == "[redacted]"

    # No plaintext SSN or date of birth anywhere: not as text, not as bytes (bytea shows as hex).
    everything = table_text(platform, "members", "metadata", "audit_logs")
    audit_text = table_text(platform, "audit_logs")
    for n in (1, 2, 3):
        dob = dob_for(n)
        needles = [ssn_for(n), ssn_for(n).replace("-", ""), dob.isoformat(), dob.strftime("%m/%d/%Y"),
                   dob.strftime("%Y%m%d")]
        for needle in needles:
            assert needle not in everything and needle.encode().hex() not in everything, needle
            assert needle not in caplog.text
        for needle in (f"Quenby{n}", f"Marrowfield{n}", f"quenby.{n}@", f"{n} Quillfeather", "Zephyrton",
                       f"555{n:04d}", f"EXT-{n:06d}"):
            assert needle not in audit_text, needle


def test_rerun_changes_nothing_and_writes_no_audit_rows(imp: Importer) -> None:
    data = members_csv(*(person(n) for n in range(1, 8)))
    assert_loaded(imp.run("members", data, batch_rows=3), created=7)
    before = counts(imp.platform)
    stamps = imp.platform.sql("SELECT id, updated_at FROM members ORDER BY id")
    again = imp.run("members", data, batch_rows=3)
    assert_loaded(again, unchanged=7)
    assert counts(imp.platform) == before
    assert imp.platform.sql("SELECT id, updated_at FROM members ORDER BY id") == stamps


def test_a_changed_address_updates_one_member_and_audits_only_changed_fields(imp: Importer) -> None:
    rows = [person(n) for n in (1, 2, 3)]
    assert_loaded(imp.run("members", members_csv(*rows)), created=3)
    before = counts(imp.platform)
    member_id = member_ids_by_number(imp.platform)["EXT-000002"]
    old = member(imp.platform, member_id)

    rows[1] = {**rows[1], "address_line1": "99 Other Street", "zip_code": "97299"}
    outcome = imp.run("members", members_csv(*rows))
    assert_loaded(outcome, updated=1, unchanged=2)
    new = member(imp.platform, member_id)
    assert (new.address_line1, new.zip_code) == ("99 Other Street", "97299")
    assert new.updated_at > old.updated_at and new.encrypted_ssn == old.encrypted_ssn
    (update,) = imp.platform.audit(member_id, action="update")
    assert update.old_values == {"address_line1": "[redacted]", "zip_code": "[redacted]"}
    assert update.new_values == {"address_line1": "[redacted]", "zip_code": "[redacted]"}
    assert update.user_id == imp.platform.admin.user_id
    after = counts(imp.platform)
    assert after == {**before, "audit_logs": before["audit_logs"] + 1}


def test_changed_ssn_and_dob_are_re_encrypted_and_the_blind_index_follows(imp: Importer) -> None:
    assert_loaded(imp.run("members", members_csv(person(1))), created=1)
    member_id = member_ids_by_number(imp.platform)["EXT-000001"]
    changed = person(1, ssn="234-56-7890", dob="1970-07-07")
    assert_loaded(imp.run("members", members_csv(changed)), updated=1)
    row = member(imp.platform, member_id)
    cipher = imp.platform.cipher()
    assert cipher.decrypt_ssn(bytes(row.encrypted_ssn), member_id) == Ssn("234567890")
    assert cipher.decrypt_dob(bytes(row.encrypted_dob), member_id) == DateOfBirth(date(1970, 7, 7))
    (blind,) = imp.platform.sql("SELECT metadata_value FROM metadata WHERE entity_id = :id "
                                "AND metadata_key = 'ssn_blind_index'", id=member_id)
    assert blind[0] == imp.blind_index().ssn(Ssn("234567890"))
    (update,) = imp.platform.audit(member_id, action="update")
    assert set(update.new_values) == {"encrypted_ssn", "encrypted_dob"}
    assert set(update.new_values.values()) == {"[redacted]"}
    # The new SSN in another spelling is the same SSN: nothing changes.
    assert_loaded(imp.run("members", members_csv({**changed, "ssn": "234567890", "dob": "07/07/1970"})),
                  unchanged=1)


def test_columns_left_out_of_the_file_stay_as_they_are(imp: Importer) -> None:
    assert_loaded(imp.run("members", members_csv(person(1))), created=1)
    outcome = imp.run("members", to_csv([{"external_member_number": "EXT-000001", "city": "Salem"}]))
    assert_loaded(outcome, updated=1)
    row = member(imp.platform, member_ids_by_number(imp.platform)["EXT-000001"])
    assert (row.city, row.first_name, row.email) == ("Salem", "Quenby1", "quenby.1@mail.example.org")
    assert row.encrypted_ssn is not None and row.encrypted_dob is not None


def test_blank_cells_take_the_schema_defaults(imp: Importer) -> None:
    assert_loaded(imp.run("members", members_csv(person(1, status=None), person(2, status="suspended"))), created=2)
    ids = member_ids_by_number(imp.platform)
    assert member(imp.platform, ids["EXT-000001"]).status == "active"
    assert_loaded(imp.run("members", members_csv(person(1, status=None), person(2, status="suspended"))),
                  unchanged=2)
    assert_loaded(imp.run("members", members_csv(person(2, status=None))), updated=1)
    assert member(imp.platform, ids["EXT-000002"]).status == "active"
    assert_loaded(imp.run("plans", to_csv([plan_row("GOLD", is_active=None)])), created=1)
    assert imp.platform.scalar("SELECT is_active FROM insurance_plans") is True


def test_a_member_without_a_number_is_matched_by_ssn_and_gets_one_later(imp: Importer) -> None:
    first = person(1, external_member_number=None, ssn="123-45-6789")
    assert_loaded(imp.run("members", members_csv(first)), created=1)
    (member_id,) = [r.id for r in imp.platform.sql("SELECT id FROM members")]
    assert member_ids_by_number(imp.platform) == {}

    # The same person, SSN spelled otherwise: matched, not created twice.
    assert_loaded(imp.run("members", members_csv({**first, "ssn": "123456789"})), unchanged=1)
    # Now with a number: attached to the same member.
    outcome = imp.run("members", members_csv({**first, "ssn": "123 45 6789", "external_member_number": "EXT-77"}))
    assert_loaded(outcome, updated=1)
    assert member_ids_by_number(imp.platform) == {"EXT-77": member_id}
    (update,) = imp.platform.audit(member_id, action="update")
    assert update.new_values == {"external_member_number": "[redacted]"}
    assert update.old_values == {"external_member_number": None}
    number_rows = imp.platform.sql("SELECT id FROM metadata WHERE metadata_key = 'external_member_number'")
    assert [a.action for a in imp.platform.audit(number_rows[0].id)] == ["update"]  # an upsert, audited
    # And by the number alone from now on.
    assert_loaded(imp.run("members", to_csv([{"external_member_number": "EXT-77", "city": "Salem"}])), updated=1)
    assert imp.platform.scalar("SELECT count(*) FROM members") == 1


def test_number_of_one_member_with_the_ssn_of_another_is_an_identity_conflict(imp: Importer) -> None:
    assert_loaded(imp.run("members", members_csv(person(1), person(2))), created=2)
    before = counts(imp.platform)
    outcome = imp.run("members", members_csv(person(1, ssn=ssn_for(2)), person(3)))
    assert outcome.rules() == [(1, "ssn", "identity_conflict")]
    assert "different existing members" in outcome.problems[0].message
    assert_loaded(outcome, created=1, rejected=1)
    assert counts(imp.platform)["members"] == before["members"] + 1


def test_a_row_with_a_known_id_and_another_members_number_is_an_identity_conflict(imp: Importer) -> None:
    assert_loaded(imp.run("members", members_csv(person(1), person(2))), created=2)
    ids = member_ids_by_number(imp.platform)
    row = {"id": str(ids["EXT-000001"]), "external_member_number": "EXT-000002", "first_name": "A", "last_name": "B"}
    outcome = imp.run("members", to_csv([row]))
    assert outcome.rules() == [(1, "external_member_number", "identity_conflict")]


def test_a_new_member_keeps_the_id_given_in_the_file(imp: Importer) -> None:
    given = uuid.uuid4()
    row = {"id": str(given), "first_name": "Ann", "last_name": "Lee", "city": "Salem"}
    assert_loaded(imp.run("members", to_csv([row])), created=1)
    assert member(imp.platform, given).city == "Salem"
    assert_loaded(imp.run("members", to_csv([row])), unchanged=1)
    assert_loaded(imp.run("members", to_csv([{**row, "city": "Bend"}])), updated=1)


def test_duplicates_in_one_file_by_number_and_by_ssn_in_one_batch(imp: Importer) -> None:
    rows = [person(1), person(2), person(1, first_name="Again"),
            person(4, ssn=ssn_for(2).replace("-", "")), person(5)]
    outcome = imp.run("members", members_csv(*rows), batch_rows=100)
    assert outcome.rules() == [(3, "external_member_number", "duplicate_in_file"), (4, "ssn", "duplicate_in_file")]
    assert "row 1" in outcome.problems[0].message and "row 2" in outcome.problems[1].message
    assert_loaded(outcome, created=3, rejected=2)
    assert member(imp.platform, member_ids_by_number(imp.platform)["EXT-000001"]).first_name == "Quenby1"


@pytest.mark.parametrize("threaded", [True, False])
def test_duplicates_across_batches(imp: Importer, threaded: bool) -> None:
    rows = [person(n) for n in range(1, 7)] + [person(3, city="Later"), person(9, ssn=ssn_for(5))]
    outcome = imp.run("members", members_csv(*rows), batch_rows=2, threaded=threaded)
    assert outcome.rules() == [(7, "external_member_number", "duplicate_in_file"), (8, "ssn", "duplicate_in_file")]
    assert_loaded(outcome, created=6, rejected=2)
    assert imp.platform.scalar("SELECT count(*) FROM members") == 6
    # The same file again: the duplicates are still refused, the rest unchanged.
    again = imp.run("members", members_csv(*rows), batch_rows=2, threaded=threaded)
    assert [(row, rule) for row, _, rule in again.rules()] == [(7, "duplicate_in_file"), (8, "duplicate_in_file")]
    assert_loaded(again, unchanged=6, rejected=2)


@pytest.mark.parametrize("threaded", [True, False])
def test_refused_rows_are_reported_in_file_order(imp: Importer, threaded: bool) -> None:
    """A batch's refusals of parsing (a date that does not exist) and of planning (in-file duplicates) come out
    together in file order; the error file listed the parse refusals of a batch before its duplicates."""
    rows = [person(n) for n in range(1, 13)]
    rows[3] = person(2)  # row 4: a duplicate of row 2
    rows[5] = person(6, dob="2023-02-30")  # row 6: no such day
    rows[6] = person(7, ssn=ssn_for(1))  # row 7: row 1's SSN
    rows[10] = person(11, dob="1800-01-01")  # row 11: too old
    outcome = imp.run("members", members_csv(*rows), batch_rows=5, threaded=threaded)
    assert [row for row, _, _ in outcome.rules()] == [4, 6, 7, 11]
    assert_loaded(outcome, created=8, rejected=4)
    # A file of refusals only (no batch to plan): reported all the same, and counted.
    bad = [person(n, dob="2023-02-30") for n in range(20, 32)]
    refused = imp.run("members", members_csv(*bad), batch_rows=5, threaded=threaded)
    assert [row for row, _, _ in refused.rules()] == list(range(1, 13))
    assert_loaded(refused, rejected=12)


def test_a_repeated_existing_member_is_reported_on_the_column_the_file_gave(imp: Importer) -> None:
    assert_loaded(imp.run("members", members_csv(person(1))), created=1)
    outcome = imp.run("members", members_csv(person(1), person(1, city="Again")))
    assert outcome.rules() == [(2, "external_member_number", "duplicate_in_file")]


@pytest.mark.parametrize("digests", [True, False])
def test_two_rows_found_to_be_one_member_by_different_keys_are_the_same_member_not_the_same_number(
        imp: Importer, digests: bool) -> None:
    """Row 2 gives a number nobody has and row 1's SSN: both resolve to the member loaded before. The refusal
    says so; "the same external_member_number as row 1" was false (the numbers differ)."""
    assert_loaded(imp.run("members", members_csv(person(1))), created=1)
    outcome = imp.run("members", members_csv(person(1), person(2, ssn=ssn_for(1))), digests=digests)
    assert outcome.rules() == [(2, "external_member_number", "duplicate_in_file")]
    assert outcome.problems[0].message == "the same member as row 1; a member may appear once per file"


def test_a_deleted_member_is_not_imported_again(imp: Importer) -> None:
    assert_loaded(imp.run("members", members_csv(person(1), person(2))), created=2)
    member_id = member_ids_by_number(imp.platform)["EXT-000001"]
    with imp.platform.uow() as uow:
        uow.members.delete(member_id, member(imp.platform, member_id).updated_at)
        uow.commit()
    outcome = imp.run("members", members_csv(person(1), person(2)))
    assert outcome.rules() == [(1, "external_member_number", "deleted")]
    assert "restore" in outcome.problems[0].message
    assert_loaded(outcome, unchanged=1, rejected=1)
    # Matched by SSN alone, the same.
    alone = imp.run("members", members_csv(person(1, external_member_number=None)))
    assert alone.rules() == [(1, "ssn", "deleted")]
    assert imp.platform.scalar("SELECT count(*) FROM members") == 2


def test_required_names_for_a_new_member_but_not_for_an_update(imp: Importer) -> None:
    outcome = imp.run("members", to_csv([{"external_member_number": "EXT-1", "city": "Salem"}]))
    assert outcome.rules() == [(1, "first_name", "required"), (1, "last_name", "required")]
    assert_loaded(outcome, rejected=1)
    assert_loaded(imp.run("members", members_csv(person(1))), created=1)
    assert_loaded(imp.run("members", to_csv([{"external_member_number": "EXT-000001", "city": "Salem"}])),
                  updated=1)


def test_a_member_created_in_the_app_is_matched_by_ssn(imp: Importer) -> None:
    imp.platform.member(ssn=Ssn("123-45-6789"))
    outcome = imp.run("members", members_csv(person(1, external_member_number=None, ssn="123-45-6789")))
    assert imp.platform.scalar("SELECT count(*) FROM members") == 1
    assert outcome.summary.created == 0


# == dry run, all-or-nothing, concurrent edits =====================================================


def test_dry_run_counts_and_writes_nothing(imp: Importer) -> None:
    assert_loaded(imp.run("members", members_csv(person(1), person(2))), created=2)
    before = counts(imp.platform)
    stamps = imp.platform.sql("SELECT id, updated_at, city FROM members ORDER BY id")
    rows = [person(1), person(2, city="Salem"), person(3), person(4), person(5, ssn="000-11-2222")]
    outcome = imp.run("members", members_csv(*rows), dry_run=True)
    assert outcome.rules() == [(5, "ssn", "ssn_area")]
    assert_loaded(outcome, created=2, updated=1, unchanged=1, rejected=1)
    assert outcome.summary.dry_run and not outcome.summary.committed and outcome.summary.batches == 0
    assert counts(imp.platform) == before
    assert imp.platform.sql("SELECT id, updated_at, city FROM members ORDER BY id") == stamps


def test_dry_run_on_a_fresh_database_does_not_make_the_blind_index_key(imp: Importer) -> None:
    outcome = imp.run("members", members_csv(person(1), person(2)), dry_run=True)
    assert_loaded(outcome, created=2)
    after = counts(imp.platform)
    assert (after["members"], after["metadata"], imp.platform.audit_count()) == (0, 0, 0)


def test_dry_run_on_a_fresh_database_finds_in_file_ssn_duplicates(imp: Importer) -> None:
    rows = [person(1), person(2, ssn=ssn_for(1).replace("-", ""))]
    dry = imp.run("members", members_csv(*rows), dry_run=True)
    real = imp.run("members", members_csv(*rows))
    assert dry.rules() == real.rules() == [(2, "ssn", "duplicate_in_file")]


def test_all_or_nothing_writes_nothing_when_a_later_row_is_refused(imp: Importer) -> None:
    rows = [person(n) for n in range(1, 8)] + [person(8, dob="1800-01-01")]
    outcome = imp.run("members", members_csv(*rows), all_or_nothing=True, batch_rows=2)
    assert outcome.rules() == [(8, "dob", "dob_too_old")]
    assert_loaded(outcome, rejected=1)
    assert not outcome.summary.committed
    assert imp.platform.scalar("SELECT count(*) FROM members") == 0
    assert imp.platform.scalar("SELECT count(*) FROM metadata WHERE entity_type = 'member'") == 0
    assert imp.platform.scalar("SELECT count(*) FROM audit_logs WHERE entity_type = 'member' OR "
                               "(entity_type = 'metadata' AND new_values->>'entity_type' = 'member')") == 0
    # A refusal found while planning (an in-file duplicate in the last batch) is the same.
    duplicate = imp.run("members", members_csv(*rows[:7], person(2)), all_or_nothing=True, batch_rows=2)
    assert duplicate.rules() == [(8, "external_member_number", "duplicate_in_file")]
    assert imp.platform.scalar("SELECT count(*) FROM members") == 0
    # Without the bad row everything loads, in one transaction.
    good = imp.run("members", members_csv(*rows[:7]), all_or_nothing=True, batch_rows=2)
    assert_loaded(good, created=7)
    assert good.summary.committed and imp.platform.scalar("SELECT count(*) FROM members") == 7


def _edit_in_the_app_after_planning(imp: Importer, monkeypatch: pytest.MonkeyPatch, member_id: uuid.UUID,
                                    row: int) -> None:
    """Edit the member in the app (once) right after the batch holding ``row`` is planned."""
    original = MembersKind.plan
    done: list[bool] = []

    def plan_then_edit(self: MembersKind, ctx: Any, rows: list[Any]) -> Any:
        plan = original(self, ctx, rows)
        if not done and any(parsed.row == row for parsed in rows):
            done.append(True)
            with imp.platform.uow() as uow:
                current = uow.members.get(member_id)
                uow.members.update(member_id, current.updated_at, {"city": "Edited In The App"})
                uow.commit()
        return plan

    monkeypatch.setattr(MembersKind, "plan", plan_then_edit)


@pytest.mark.parametrize("threaded", [True, False])
def test_a_member_edited_in_the_app_while_importing_is_not_overwritten(
        imp: Importer, monkeypatch: pytest.MonkeyPatch, threaded: bool) -> None:
    assert_loaded(imp.run("members", members_csv(person(1), person(2), person(3))), created=3)
    ids = member_ids_by_number(imp.platform)
    audit_rows = imp.platform.audit_count()
    _edit_in_the_app_after_planning(imp, monkeypatch, ids["EXT-000002"], row=2)
    data = members_csv(*(person(n, city="From The File") for n in (1, 2, 3)))
    with pytest.raises(ImportAborted) as caught:
        imp.run("members", data, batch_rows=1, threaded=threaded)
    conflict = caught.value.__cause__
    assert isinstance(conflict, BatchConflict) and conflict.rows == [2]
    assert "row(s) 2 changed while the import ran" in str(conflict)
    # The batch before it is written; the edited member's batch is rolled back whole, and the import stops.
    cities = {n: member(imp.platform, ids[f"EXT-{n:06d}"]).city for n in (1, 2, 3)}
    assert cities == {1: "From The File", 2: "Edited In The App", 3: "Zephyrton"}
    updates = imp.platform.audit(ids["EXT-000002"], action="update")
    assert len(updates) == 1 and updates[0].new_values == {"city": "[redacted]"}  # the app's, not the import's
    # Since the first import: member 1's update by the import, and the app opening and updating member 2.
    added = sorted((str(a.entity_id), a.action) for a in imp.platform.audit()[audit_rows:])
    assert added == sorted([(str(ids["EXT-000001"]), "update"), (str(ids["EXT-000002"]), "read"),
                            (str(ids["EXT-000002"]), "update")])
    # Running it again plans against what is there now.
    assert_loaded(imp.run("members", data, batch_rows=1, threaded=threaded), updated=2, unchanged=1)


def test_all_or_nothing_writes_nothing_when_a_row_conflicts(imp: Importer, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_loaded(imp.run("members", members_csv(person(1), person(2))), created=2)
    ids = member_ids_by_number(imp.platform)
    _edit_in_the_app_after_planning(imp, monkeypatch, ids["EXT-000002"], row=2)
    with pytest.raises(ImportAborted):
        imp.run("members", members_csv(person(1, city="From The File"), person(2, city="From The File"),
                                       person(3)), all_or_nothing=True, batch_rows=1)
    assert member(imp.platform, ids["EXT-000001"]).city == "Zephyrton"
    assert imp.platform.scalar("SELECT count(*) FROM members") == 2


def _plan_nodes(plan: Any) -> Iterator[tuple[str, str | None]]:
    """(node type, relation or index) of every node of an EXPLAIN (FORMAT JSON) plan."""
    stack = [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        yield node["Node Type"], node.get("Relation Name")
        if "Index Name" in node:
            yield node["Node Type"], node["Index Name"]
        stack.extend(node.get("Plans", []))


def test_a_load_and_its_rerun_plan_each_batch_with_probes_never_a_scan_of_the_tables(
        imp: Importer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every lookup a batch makes probes by key, so planning a batch costs the same at any table size.

    Scans that were found at scale: a re-run at 200,000 members hashed all of metadata for every batch
    (``entity_id = ANY(...)`` and joins), and a first load of 1M members scanned all of metadata for the
    blind-index lookup of every batch (tables growing without statistics; 227 s instead of ~120). Here,
    with parallel scans priced as on such tables, no statement of the load's or the re-run's batches scans
    (without the planner's settings the blind-index lookup does), nor the reads by id in any session; and
    the load analyzes the tables as its records double."""
    from sqlalchemy import event

    from carecli.data.bulk import loader as loader_module
    from carecli.data.bulk import members as members_kind
    from carecli.data.bulk.kinds import _METADATA_OF, metadata_owners

    rows = [person(n) for n in range(6000)]
    engine = imp.platform.engine
    scans = {(node, table) for node in ("Seq Scan", "Parallel Seq Scan")
             for table in ("members", "metadata", "carecli_import_seen", "import_digests")}

    def large_tables(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; "
                           "SET min_parallel_table_scan_size = 0")
        dbapi_connection.commit()

    def nodes(connection: Any, statement: str, parameters: Any) -> set[tuple[str, str | None]]:
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
            return set(_plan_nodes(cursor.fetchone()[0]))

    # Every statement the batches' planning runs, explained where it runs (temporary tables are the session's).
    planning, explained = [False], []
    original = MembersKind.plan

    def plan(self: MembersKind, ctx: Any, batch: list[Any]) -> Any:
        planning[0] = True
        try:
            return original(self, ctx, batch)
        finally:
            planning[0] = False

    analyzed: list[str] = []

    def explain(connection: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.startswith("ANALYZE"):
            analyzed.append(statement)
        if planning[0] and not many and statement.lstrip().upper().startswith("SELECT"):
            cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
            explained.append((statement, set(_plan_nodes(cursor.fetchone()[0]))))

    original_sift = loader_module._Sift.send

    def sift(self: Any, chunk: list[Any]) -> Any:
        planning[0] = True
        try:
            return original_sift(self, chunk)
        finally:
            planning[0] = False

    monkeypatch.setattr(MembersKind, "plan", plan)
    monkeypatch.setattr(loader_module._Sift, "send", sift)
    monkeypatch.setattr(loader_module, "ANALYZE_MIN_RECORDS", 1000)  # statistics as the tables double
    engine.dispose()  # every connection from now on is checked out with the settings
    event.listen(engine, "checkout", large_tables)
    try:
        with engine.connect() as connection:  # as a connection of the pool is before the import
            jit = connection.exec_driver_sql("SHOW jit").scalar()
            timeout = connection.exec_driver_sql("SHOW statement_timeout").scalar()
        assert timeout != "0"
        event.listen(engine, "before_cursor_execute", explain)
        try:
            # The first load, into tables growing from empty without statistics.
            assert_loaded(imp.run("members", members_csv(*rows), batch_rows=500), created=6000)
            assert len(explained) >= 12  # the seen keys of every batch
            # No number or blind-index owners were looked up: the table held none (kinds.absent_keys). One
            # looked up now, on the tables as the load left them and with the planner's settings, probes too.
            assert not [statement for statement, _ in explained if "#>>" in statement]
            with engine.connect() as connection:
                connection.exec_driver_sql("; ".join(f"SET {name} = {value}"
                                                     for name, value in loader_module._PLANNING))
                hashes = [row[0] for row in connection.exec_driver_sql(
                    "SELECT metadata_value #>> '{}' FROM metadata WHERE metadata_key = 'ssn_blind_index' LIMIT 500")]
                planning[0] = True
                try:
                    assert len(metadata_owners(connection, "member", "ssn_blind_index", hashes)) == 500
                finally:
                    planning[0] = False
                connection.rollback()
            assert [statement for statement, _ in explained if "#>>" in statement]
            first = len(explained)
            for _ in range(3):  # the planner's connection went back to the pool without its settings
                with engine.connect() as connection:
                    assert connection.exec_driver_sql("SHOW enable_seqscan").scalar() == "on"
                    assert connection.exec_driver_sql("SHOW plan_cache_mode").scalar() == "auto"
                    assert connection.exec_driver_sql("SHOW jit").scalar() == jit
                    assert connection.exec_driver_sql("SHOW statement_timeout").scalar() == timeout
            # Statistics as the tables grew (1,000, 2,000 and 4,000 members created): without them the planner
            # read all of a metadata index for the blind-index lookup of every batch at 1M members.
            assert analyzed == ["ANALYZE metadata"] * 3, analyzed
            with engine.begin() as connection:
                connection.execute(text("ANALYZE members, metadata"))
            # A re-run that matches every row (no digests recorded), then one that knows them by digest.
            with engine.begin() as connection:
                connection.execute(text("TRUNCATE import_digests"))
            assert_loaded(imp.run("members", members_csv(*rows), batch_rows=500, digests=False), unchanged=6000)
            assert len(explained) - first >= 12 * 3
            assert_loaded(imp.run("members", members_csv(*rows), batch_rows=500), unchanged=6000)
            with engine.begin() as connection:
                connection.execute(text("ANALYZE import_digests"))
            known = imp.run("members", members_csv(*rows), batch_rows=500)
            assert_loaded(known, unchanged=6000)
            assert known.summary.known_unchanged == 6000
        finally:
            event.remove(engine, "before_cursor_execute", explain)
        for statement, found in explained:
            assert not found & scans, (statement[:200], found)

        ids = [row[0] for row in imp.platform.sql("SELECT id FROM members ORDER BY random() LIMIT 500")]
        with engine.connect() as connection:
            raw = connection.connection.driver_connection
            assert raw is not None
            # Outside the import's session too (its planner turns sequential scans off).
            assert not nodes(raw, members_kind._EXISTING, [ids]) & scans
            digests = [row[0] for row in imp.platform.sql("SELECT digest FROM import_digests LIMIT 500")]
            # Recording a batch's digests, on the writer's connection (which leaves sequential scans on).
            assert not nodes(raw, members_kind.RECORD_DIGESTS, [text_list(ids), text_list(digests)]) & scans
            raw.execute("SET enable_seqscan = off")  # as the import's planner, where it runs
            assert not nodes(raw, members_kind._KNOWN_UNCHANGED, [",".join(map(str, digests))]) & scans
            raw.execute("RESET enable_seqscan")
            assert not nodes(raw, str(_METADATA_OF.compile(dialect=engine.dialect)).replace(
                "%(entity_type)s", "'member'").replace("%(key)s", "'external_member_number'").replace(
                "%(entity_ids)s", "%s"), [ids]) & scans
    finally:
        event.remove(engine, "checkout", large_tables)
        engine.dispose()


def _a_parser_bug_on(monkeypatch: pytest.MonkeyPatch, phone: str) -> None:
    """Make the real phone parser raise an unexpected exception (a bug) on one value, quoting it."""
    real = f.parse_phone

    def buggy(raw: Any) -> Any:
        if raw == phone:
            raise RuntimeError(f"a bug on {raw!r}")
        return real(raw)

    monkeypatch.setitem(MembersKind.special_parsers, "phone", buggy)


@pytest.mark.parametrize("threaded", [True, False])
def test_a_bug_in_a_parser_rejects_that_row_and_the_rest_load(imp: Importer, monkeypatch: pytest.MonkeyPatch,
                                                              threaded: bool) -> None:
    rows = [person(n) for n in range(1, 251)]
    _a_parser_bug_on(monkeypatch, rows[229]["phone"])  # row 230: in the third batch of 100
    outcome = imp.run("members", members_csv(*rows), batch_rows=100, threaded=threaded)
    assert outcome.rules() == [(230, "(row)", "internal_error")]
    assert "5550230" not in outcome.problems[0].message and "555-0230" not in outcome.problems[0].message
    assert_loaded(outcome, created=249, rejected=1)
    assert not outcome.summary.aborted and outcome.summary.batches == 3
    assert imp.platform.scalar("SELECT count(*) FROM members") == 249


@pytest.mark.parametrize("threaded", [True, False])
def test_an_unexpected_failure_after_committed_batches_aborts_with_a_summary(
        imp: Importer, monkeypatch: pytest.MonkeyPatch, threaded: bool) -> None:
    original = MembersKind.plan

    def plan_or_fail(self: MembersKind, ctx: Any, rows: list[Any]) -> Any:
        if any(parsed.row == 230 for parsed in rows):
            raise RuntimeError("planning bug on Quenby230")
        return original(self, ctx, rows)

    monkeypatch.setattr(MembersKind, "plan", plan_or_fail)
    rows = [person(n) for n in range(1, 251)]
    with pytest.raises(ImportAborted) as caught:
        imp.run("members", members_csv(*rows[:5], person(6, ssn="000-12-3456"), *rows[6:]), batch_rows=100,
                threaded=threaded)
    assert isinstance(caught.value.__cause__, RuntimeError)
    summary = caught.value.summary
    assert summary is not None
    assert summary.aborted and not summary.dry_run
    # Batches 1 and 2 (100 rows each: rows 1-201, row 6 refused) are committed, and the summary says so.
    assert (summary.batches, summary.committed_through_row) == (2, 201)
    assert (summary.created, summary.updated, summary.unchanged, summary.rejected) == (200, 0, 0, 1)
    assert summary.as_json()["aborted"] is True and summary.as_json()["batches"] == 2
    assert imp.platform.scalar("SELECT count(*) FROM members") == 200
    # All or nothing: the same failure commits nothing, and says so.
    with pytest.raises(ImportAborted) as caught:
        imp.run("members", members_csv(*(person(n) for n in range(300, 550))), batch_rows=100,
                threaded=threaded, all_or_nothing=True)
    summary = caught.value.summary
    assert summary is not None
    assert (summary.aborted, summary.batches, summary.committed_through_row, summary.created) == (True, 0, None, 0)
    assert imp.platform.scalar("SELECT count(*) FROM members") == 200


# == plans ==========================================================================================


def test_plans_are_created_matched_by_code_and_updated(imp: Importer) -> None:
    plans = [plan_row("GOLD"), plan_row("SILVER", premium_amount="99.5", is_active="no", expiration_date=None)]
    outcome = imp.run("plans", to_csv(plans, PLAN_HEADER))
    assert_loaded(outcome, created=2)
    rows = {r.plan_code: r for r in imp.platform.sql("SELECT * FROM insurance_plans")}
    assert rows["SILVER"].premium_amount == Decimal("99.50") and rows["SILVER"].is_active is False
    assert rows["GOLD"].copay_amount == Decimal("25.00") and rows["GOLD"].plan_type == "PPO"
    (create,) = imp.platform.audit(rows["GOLD"].id)
    assert create.action == "create" and create.new_values["plan_name"] == "Plan GOLD"
    assert create.new_values["premium_amount"] == "250.00" and create.user_id == imp.platform.admin.user_id

    assert_loaded(imp.run("plans", to_csv(plans, PLAN_HEADER)), unchanged=2)
    plans[0] = {**plans[0], "premium_amount": "260", "is_active": "false"}
    assert_loaded(imp.run("plans", to_csv(plans, PLAN_HEADER)), updated=1, unchanged=1)
    (update,) = imp.platform.audit(rows["GOLD"].id, action="update")
    assert update.old_values == {"premium_amount": "250.00", "is_active": True}
    assert update.new_values == {"premium_amount": "260.00", "is_active": False}
    # Without a plan_name column an existing plan still updates; a new one cannot be made.
    partial = imp.run("plans", to_csv([{"plan_code": "GOLD", "plan_type": "HMO"},
                                       {"plan_code": "BRONZE", "plan_type": "HMO"}]))
    assert partial.rules() == [(2, "plan_name", "required")]
    assert_loaded(partial, updated=1, rejected=1)


def test_plan_duplicates_deleted_plans_and_identity_conflicts(imp: Importer) -> None:
    assert_loaded(imp.run("plans", to_csv([plan_row("GOLD"), plan_row("OLD")])), created=2)
    ids = {r.plan_code: r.id for r in imp.platform.sql("SELECT plan_code, id FROM insurance_plans")}
    with imp.platform.uow() as uow:
        uow.plans.delete(ids["OLD"], imp.platform.scalar("SELECT updated_at FROM insurance_plans WHERE id = :id",
                                                         id=ids["OLD"]))
        uow.commit()
    rows = [{"id": None, **plan_row("NEW")}, {"id": None, **plan_row("NEW", plan_name="Again")},
            {"id": None, **plan_row("OLD")}, {"id": str(ids["OLD"]), **plan_row("GOLD")},
            {"id": str(ids["GOLD"]), **plan_row("GOLD")}]
    outcome = imp.run("plans", to_csv(rows))
    # In file order (a batch's refusals were reported by kind: the duplicates last).
    assert outcome.rules() == [(2, "plan_code", "duplicate_in_file"), (3, "plan_code", "deleted"),
                               (4, "plan_code", "identity_conflict")]
    assert_loaded(outcome, created=1, unchanged=1, rejected=3)


def test_plan_dates_out_of_order_with_what_is_stored(imp: Importer) -> None:
    assert_loaded(imp.run("plans", to_csv([plan_row("GOLD")])), created=1)
    outcome = imp.run("plans", to_csv([{"plan_code": "GOLD", "expiration_date": "2025-06-30"}]))
    assert outcome.rules() == [(1, "expiration_date", "date_order")]
    assert imp.platform.scalar("SELECT expiration_date FROM insurance_plans") == date(2026, 12, 31)


# == who may import =================================================================================


def test_permission_checks_role_and_token_scope() -> None:
    members, plans = kind_for("members"), kind_for("plans")
    importer_role = DEFAULT_ROLES["importer"][1]
    denied: list[str] = []

    def allowed(kind: Any, actor: Actor) -> bool:
        try:
            check_permission(kind, actor, denied.append)
        except PermissionDenied:
            return False
        return True

    assert allowed(members, make_actor(importer_role, role="importer"))
    assert allowed(plans, make_actor(importer_role, role="importer", scopes=["import:run"]))
    assert denied == []

    with pytest.raises(PermissionDenied, match="it needs the 'import:run' permission"):
        check_permission(members, make_actor(DEFAULT_ROLES["specialist"][1], role="specialist"), denied.append)
    with pytest.raises(PermissionDenied, match="this token lacks the 'import:run' scope"):
        check_permission(members, make_actor(importer_role, role="importer", scopes=["members:write"]),
                         denied.append)
    with pytest.raises(PermissionDenied, match="may not import members: it needs the 'members:write' permission"):
        check_permission(members, make_actor(["import:run", "plans:write"], role="planner"), denied.append)
    assert allowed(plans, make_actor(["import:run", "plans:write"], role="planner"))
    with pytest.raises(PermissionDenied, match="plans:write"):
        check_permission(plans, make_actor([p for p in importer_role if p != "plans:write"]), denied.append)
    assert denied == ["import:run", "import:run", "members:write", "plans:write"]


def test_a_large_import_refreshes_the_statistics_of_the_tables_it_grew(imp: Importer, monkeypatch: Any) -> None:
    # A bulk load outpaces autovacuum (which this CI server even runs without): stale statistics made a
    # re-run's lookups scan a million-row metadata table per batch. 7 records stand in for a large import.
    from carecli.data.bulk import loader

    monkeypatch.setattr(loader, "ANALYZE_MIN_RECORDS", 5)
    data = members_csv(*(person(n) for n in range(1, 8)))
    assert_loaded(imp.run("members", data, batch_rows=3), created=7)
    analyzed = dict(imp.platform.sql(
        "SELECT relname, coalesce(last_analyze, last_autoanalyze) IS NOT NULL FROM pg_stat_user_tables "
        "WHERE relname IN ('members', 'metadata', 'audit_logs')"))
    assert analyzed == {"members": True, "metadata": True, "audit_logs": True}
    assert_loaded(imp.run("members", data, batch_rows=3), unchanged=7)  # nothing written: nothing to refresh



# -- prepared where the row is read, or in a worker: the same rows either way ----------------------


def _member_file(n_rows: int, *, dob_shift: int = 0) -> str:
    rows = [person(n, first_name=f"Quen\\by{n}", last_name=f'Mar"row\tfield{n}', address_line1=f"{n} Lane\nUnit 2",
                   dob=(dob_for(n) + timedelta(days=dob_shift if n % 3 == 0 else 0)).isoformat())
            for n in range(1, n_rows + 1)]
    return members_csv(*rows)


def _member_state(imp: Importer) -> dict[str, tuple[Any, ...]]:
    """Every member by number: its columns (PHI decrypted) and its create audit row's values."""
    cipher = imp.platform.cipher()
    audits = {row.entity_id: row.new_values for row in imp.platform.sql(
        "SELECT entity_id, new_values FROM audit_logs WHERE entity_type = 'member' AND action = 'create'")}
    state = {}
    for number, member_id in member_ids_by_number(imp.platform).items():
        row = member(imp.platform, member_id)
        state[number] = (cipher.decrypt_ssn(bytes(row.encrypted_ssn), member_id),
                         cipher.decrypt_dob(bytes(row.encrypted_dob), member_id), row.first_name, row.last_name,
                         row.address_line1, row.status, audits[member_id])
    return state


def test_rows_prepared_in_workers_or_in_process_load_the_same_and_rerun_unchanged(imp: Importer) -> None:
    """In-process rows are encrypted and formatted only once known to be new (a re-run's rows never are);
    worker rows at once. Either way the same members, PHI, audit values, and unchanged re-runs."""
    first = _member_file(14)
    assert_loaded(imp.run("members", first, batch_rows=4, workers=1), created=14)  # chunks 2+ in the worker
    state = _member_state(imp)
    assert state["EXT-000003"][2:5] == ("Quen\\by3", 'Mar"row\tfield3', "3 Lane\nUnit 2")
    assert state["EXT-000003"][:2] == (Ssn(ssn_for(3)), DateOfBirth(dob_for(3)))
    assert state["EXT-000003"][6] == {
        "encrypted_ssn": "[redacted]", "encrypted_dob": "[redacted]", "first_name": "[redacted]",
        "last_name": "[redacted]", "email": "[redacted]", "phone": "[redacted]", "address_line1": "[redacted]",
        "address_line2": None, "city": "[redacted]", "state": "[redacted]", "zip_code": "[redacted]",
        "status": "active", "external_member_number": "[redacted]"}
    for workers in (0, 1):
        assert_loaded(imp.run("members", first, batch_rows=4, workers=workers), unchanged=14)
    assert _member_state(imp) == state
    # A changed date of birth is seen, and re-encrypted for the member, whichever way the row was prepared.
    for workers, shift in ((0, 1), (1, 2)):
        assert_loaded(imp.run("members", _member_file(14, dob_shift=shift), batch_rows=4, workers=workers),
                      updated=4, unchanged=10)
        after = _member_state(imp)
        assert after["EXT-000003"][1] == DateOfBirth(dob_for(3) + timedelta(days=shift))
        assert after["EXT-000004"] == state["EXT-000004"]
    # New rows after matched ones, in process: each sealed bound to its own new id.
    assert_loaded(imp.run("members", _member_file(18, dob_shift=2), batch_rows=5), created=4, unchanged=14)
    assert _member_state(imp)["EXT-000017"][:2] == (Ssn(ssn_for(17)), DateOfBirth(dob_for(17)))


_AUDIT_TEXT = st.one_of(st.none(), st.text(st.characters(codec="utf-8"), max_size=12),
                        st.sampled_from(["\\", "\t", "\n", "\r", '"', "\x00", "\x1f", "é", "\u2028"]))


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({name: _AUDIT_TEXT for name in members_module._AUDITED}), _AUDIT_TEXT)
def test_the_member_audit_and_metadata_texts_are_what_the_json_encoder_writes(values, value) -> None:
    """The hand-built COPY texts of a new member's rows equal the general path's (json.dumps, then COPY's
    escapes), whatever the values hold."""
    expected = {name: (None if values[name] is None else audit.REDACTED) if name in members_module._SENSITIVE
                else values[name] for name in members_module._AUDITED}
    assert members_module._audited_json(values) == members_module._json(expected)
    if value is not None:
        assert members_module._json_string(value) == members_module._json(value)
        assert copytext.field(value) == value.translate(copytext.ESCAPES)


# -- re-runs that know rows by the digest of their source record ----------------------------------


def _digest_rows(platform: Platform) -> list[Any]:
    return platform.sql("SELECT entity_id, digest, state, xmin::text FROM import_digests ORDER BY entity_id")


def test_a_rerun_knows_its_unchanged_rows_by_digest_and_neither_parses_nor_writes_them(
        imp: Importer, monkeypatch: pytest.MonkeyPatch) -> None:
    data = members_csv(*[person(n) for n in range(12)])
    first = imp.run("members", data, batch_rows=5)
    assert_loaded(first, created=12)
    assert first.summary.known_unchanged == 0
    digests = _digest_rows(imp.platform)
    assert len(digests) == 12
    before = (counts(imp.platform), imp.platform.sql("SELECT id, xmin::text FROM members ORDER BY id"),
              imp.platform.sql("SELECT id, xmin::text FROM metadata ORDER BY id"))
    parsed: list[int] = []
    original = MembersKind.parse
    def parse(self: MembersKind, record: Any) -> Any:
        parsed.append(record.row)
        return original(self, record)

    monkeypatch.setattr(MembersKind, "parse", parse)
    for threaded in (True, False):
        again = imp.run("members", data, batch_rows=5, threaded=threaded)
        assert_loaded(again, unchanged=12)
        assert again.summary.known_unchanged == 12
    assert parsed == []
    # Not a row written: members, metadata, audit rows and the digests themselves are as they were.
    assert (counts(imp.platform), imp.platform.sql("SELECT id, xmin::text FROM members ORDER BY id"),
            imp.platform.sql("SELECT id, xmin::text FROM metadata ORDER BY id")) == before
    assert _digest_rows(imp.platform) == digests
    # A dry run knows them too; a file in another column order, or renamed by a mapping, is the same record.
    assert imp.run("members", data, dry_run=True).summary.known_unchanged == 12
    reordered = members_csv(*[person(n) for n in range(12)], header=tuple(reversed(MEMBER_HEADER)))
    assert imp.run("members", reordered).summary.known_unchanged == 12
    renamed = reordered.replace("first_name", "Given Name", 1)
    assert imp.run("members", renamed, mapping={"Given Name": "first_name"}).summary.known_unchanged == 12
    # Another spelling of the same values is another record: matched the full way, unchanged, recorded.
    spelled = members_csv(*[person(n, ssn=ssn_for(n).replace("-", "")) for n in range(12)])
    assert_loaded(outcome := imp.run("members", spelled), unchanged=12)
    assert outcome.summary.known_unchanged == 0
    assert parsed == list(range(1, 13))
    assert imp.run("members", spelled).summary.known_unchanged == 12


def test_a_member_changed_since_by_any_path_is_matched_the_full_way(imp: Importer) -> None:
    """Any write of a member's row or of its number or blind-index row since the digest was recorded (by
    carecli or by hand, even one that changes nothing) sends the row the full way, which then records it again."""
    data = members_csv(*[person(n) for n in range(7)])
    assert_loaded(imp.run("members", data), created=7)
    ids = member_ids_by_number(imp.platform)
    phone = member(imp.platform, ids["EXT-000001"]).phone
    with imp.platform.engine.begin() as connection:
        connection.execute(text("UPDATE members SET phone = '(503) 555-0000' WHERE id = :id"),
                           {"id": ids["EXT-000001"]})
        connection.execute(text("UPDATE members SET first_name = first_name WHERE id = :id"), {"id": ids["EXT-000002"]})
        connection.execute(text("UPDATE metadata SET metadata_value = '\"EXT-X\"' WHERE entity_id = :id "
                                "AND metadata_key = 'external_member_number'"), {"id": ids["EXT-000003"]})
        connection.execute(text("UPDATE metadata SET updated_at = updated_at WHERE entity_id = :id "
                                "AND metadata_key = 'ssn_blind_index'"), {"id": ids["EXT-000004"]})
        connection.execute(text("UPDATE members SET deleted_at = now() WHERE id = :id"), {"id": ids["EXT-000005"]})
    again = imp.run("members", data)
    assert_loaded(again, updated=2, unchanged=4, rejected=1)
    assert again.rules() == [(6, "external_member_number", "deleted")]
    assert again.summary.known_unchanged == 2  # rows 1 and 7
    assert member(imp.platform, ids["EXT-000001"]).phone == phone  # the file's again
    third = imp.run("members", data)
    assert_loaded(third, unchanged=6, rejected=1)
    assert third.summary.known_unchanged == 6


def test_an_in_file_duplicate_of_a_known_row_is_refused_as_the_full_way_refuses_it(imp: Importer) -> None:
    rows = [person(n) for n in range(4)]
    assert_loaded(imp.run("members", members_csv(*rows)), created=4)
    # Row 2 changes member 2 before the known copy of member 2's row (4); row 6 repeats row 1 exactly.
    data = members_csv(rows[0], person(2, phone="(415) 555-9999"), rows[1], rows[2], rows[3], rows[0])
    expected = imp.run("members", data, dry_run=True, digests=False)
    outcome = imp.run("members", data)
    assert outcome.rules() == expected.rules() == [(4, "external_member_number", "duplicate_in_file"),
                                                   (6, "external_member_number", "duplicate_in_file")]
    assert [p.message for p in outcome.problems] == [p.message for p in expected.problems]
    assert_loaded(outcome, updated=1, unchanged=3, rejected=2)
    assert outcome.summary.known_unchanged == 5  # all but row 2; rows 4 and 6 are then refused as duplicates


def test_a_first_load_looks_up_no_digests_and_refuses_its_repeated_rows_as_the_full_way_does(imp: Importer) -> None:
    """With no digest recorded before the run, only the run's own earlier rows could be known: the lookup is
    skipped, and a row repeating an earlier one across batches is refused as the duplicate it is."""
    rows = [person(n) for n in range(6)]
    data = members_csv(*rows, rows[1], rows[4])
    expected = imp.run("members", data, dry_run=True, digests=False, batch_rows=2)
    outcome = imp.run("members", data, batch_rows=2)
    assert outcome.rules() == expected.rules() == [(7, "external_member_number", "duplicate_in_file"),
                                                   (8, "external_member_number", "duplicate_in_file")]
    assert_loaded(outcome, created=6, rejected=2)
    assert outcome.summary.known_unchanged == 0
    # The next run has digests to look up, and knows every row but the refused repeats.
    again = imp.run("members", data, batch_rows=2)
    assert again.rules() == expected.rules()
    assert again.summary.known_unchanged == 8 and again.summary.unchanged == 6


def test_a_lookup_failing_in_its_thread_aborts_with_the_batches_before_it_and_leaves_no_connection(
        imp: Importer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-run's digests are looked up in a thread of their own, a chunk or two ahead of the planning: a failure
    there (the database, a bug) ends the run like any other, with what is committed, and nothing left open."""
    rows = [person(n) for n in range(1, 251)]
    assert_loaded(imp.run("members", members_csv(*rows), batch_rows=50), created=250)
    edited = members_csv(*rows[:240], *(person(n, phone="(971) 555-0199") for n in range(241, 251)))
    original = MembersKind.known_unchanged
    threads: list[str] = []

    def known_or_fail(self: MembersKind, connection: Any, digests: Any) -> Any:
        threads.append(threading.current_thread().name)
        if len(threads) == 4:
            raise RuntimeError("lookup bug")
        return original(self, connection, digests)

    monkeypatch.setattr(MembersKind, "known_unchanged", known_or_fail)
    engine = imp.platform.engine
    with pytest.raises(ImportAborted) as caught:
        imp.run("members", edited, batch_rows=50)
    assert isinstance(caught.value.__cause__, RuntimeError)
    summary = caught.value.summary
    assert summary is not None and summary.aborted
    assert summary.batches < 4 and summary.unchanged == 50 * summary.batches
    assert all(name.startswith("carecli-import-lookups") for name in threads)
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    assert pool.checkedout() == 0  # the planner's, the writer's and the lookups' connections are back
    # The same run without the failure: every batch, the edited rows updated.
    monkeypatch.setattr(MembersKind, "known_unchanged", original)
    outcome = imp.run("members", edited, batch_rows=50)
    assert_loaded(outcome, updated=10, unchanged=240)
    assert outcome.summary.known_unchanged == 240


def test_a_pool_too_small_for_a_lookup_connection_runs_the_lookups_on_the_planners(
        imp: Importer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digest lookups take a connection of their own only where the pool can lend it beside the planner's,
    the writer's and a moment's key load: in a smaller one they run on the planner's, as before."""
    from sqlalchemy import create_engine

    from carecli.data.bulk import loader as loader_module

    rows = [person(n) for n in range(1, 121)]
    assert_loaded(imp.run("members", members_csv(*rows), batch_rows=50), created=120)
    small = create_engine(imp.platform.engine.url, pool_size=3, max_overflow=0, pool_timeout=5)
    assert loader_module._pool_allows(imp.platform.engine, 4) and not loader_module._pool_allows(small, 4)
    threads: list[str] = []
    original = MembersKind.known_unchanged

    def noting(self: MembersKind, connection: Any, digests: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(self, connection, digests)

    monkeypatch.setattr(MembersKind, "known_unchanged", noting)
    monkeypatch.setattr(imp.platform, "engine", small)
    try:
        outcome = imp.run("members", members_csv(*rows), batch_rows=50)
    finally:
        small.dispose()
    assert_loaded(outcome, unchanged=120)
    assert outcome.summary.known_unchanged == 120
    assert threads and set(threads) == {threading.current_thread().name}


def test_the_retention_purge_takes_a_members_digest_with_them(imp: Importer) -> None:
    from carecli.data import retention

    assert_loaded(imp.run("members", members_csv(*[person(n) for n in range(3)])), created=3)
    ids = member_ids_by_number(imp.platform)
    with imp.platform.engine.begin() as connection:
        connection.execute(text("UPDATE members SET deleted_at = now() - interval '10 years' WHERE id = :id"),
                           {"id": ids["EXT-000001"]})
    spec = next(table for table in retention.PLATFORM_TABLES if table.name == "members")
    with imp.platform.engine.begin() as connection:
        done = retention.purge_platform_batch(connection, spec, imp.platform.admin,
                                              datetime.utcnow() - timedelta(days=365), 100)
    assert done.rows == 1
    assert {row.entity_id for row in _digest_rows(imp.platform)} == {ids["EXT-000000"], ids["EXT-000002"]}


_EDITS = ("phone", "noop", "delete", "number")


@st.composite
def _steps(draw: Any) -> list[tuple[list[tuple[str, int]], list[tuple[int, int]], bool]]:
    """Steps of (edits made outside the import, the file's rows as (person, variant), whether email is a column)."""
    steps = []
    for _ in range(draw(st.integers(1, 3))):
        edits = draw(st.lists(st.tuples(st.sampled_from(_EDITS), st.integers(0, 5)), max_size=2))
        rows = draw(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 3)), min_size=1, max_size=9))
        steps.append((edits, rows, draw(st.booleans())))
    return steps


def _variant(n: int, variant: int) -> dict[str, Any]:
    return [person(n), person(n, phone="(971) 555-0101"), person(n, first_name="Renamed"),
            person(n, external_member_number=None)][variant]


def _comparable(imp: Importer) -> tuple[list[tuple[Any, ...]], list[tuple[str, str, int]]]:
    """The members as values (PHI decrypted, ids left out) and the audit rows counted by kind and action."""
    cipher = imp.platform.cipher()
    numbers = {entity_id: value for value, entity_id in member_ids_by_number(imp.platform).items()}
    members = sorted(
        (repr(cipher.decrypt_ssn(bytes(row.encrypted_ssn), row.id)) if row.encrypted_ssn else None,
         repr(cipher.decrypt_dob(bytes(row.encrypted_dob), row.id)) if row.encrypted_dob else None,
         row.first_name, row.last_name, row.email, row.phone, row.status, row.deleted_at is None, numbers.get(row.id))
        for row in imp.platform.sql("SELECT * FROM members"))
    audits = [tuple(row) for row in imp.platform.sql(
        "SELECT entity_type, action, count(*) FROM audit_logs WHERE entity_type <> 'data_key' "
        "GROUP BY 1, 2 ORDER BY 1, 2")]
    return members, audits


def _edit(imp: Importer, what: str, n: int) -> None:
    member_id = member_ids_by_number(imp.platform).get(f"EXT-{n:06d}")
    if member_id is None:
        return
    statement = {
        "phone": "UPDATE members SET phone = '(458) 555-0199' WHERE id = :id",
        "noop": "UPDATE members SET first_name = first_name WHERE id = :id",
        "delete": "UPDATE members SET deleted_at = now() WHERE id = :id",
        "number": "UPDATE metadata SET metadata_value = to_jsonb(CAST('EXT-Z' || (metadata_value #>> '{}') AS text)) "
                  "WHERE entity_id = :id AND metadata_key = 'external_member_number'",
    }[what]
    with imp.platform.engine.begin() as connection:
        connection.execute(text(statement), {"id": member_id})


def _step_file(imp: Importer, edits: list[tuple[str, int]], rows: list[tuple[int, int]], with_email: bool) -> str:
    """A step of _steps: its outside edits made, its file's text."""
    for what, n in edits:
        _edit(imp, what, n)
    header = MEMBER_HEADER if with_email else tuple(name for name in MEMBER_HEADER if name != "email")
    return members_csv(*[_variant(n, v) for n, v in rows], header=header)


def _outcome_of(outcome: Outcome) -> tuple[Any, ...]:
    """A run's counts and refusals (row, field, rule, message), to compare runs by."""
    summary = outcome.summary
    return (summary.created, summary.updated, summary.unchanged, summary.rejected,
            [(p.row, p.field, p.rule, p.message) for p in outcome.problems])


@given(steps=_steps(), threaded=st.booleans())
@example(  # rows matching members created earlier in the same run, written before the next batch is planned
    steps=[([("phone", 5), ("number", 3)], [(2, 0), (2, 3), (7, 0)], False),
           ([("number", 0)], [(1, 1), (4, 3), (6, 0), (7, 0), (4, 1), (0, 3), (6, 2), (6, 0), (0, 2)], False)],
    threaded=False)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_knowing_rows_by_digest_loads_exactly_what_matching_every_row_loads(
        imp: Importer, steps: list[tuple[list[tuple[str, int]], list[tuple[int, int]], bool]], threaded: bool) -> None:
    """The same files and outside edits, once with digests and once matching every row: the same counts,
    the same refusals, the same members and audit rows, step by step; both with the writer and lookup threads
    or both without (``threaded``: each batch written before the next is planned)."""
    seen = []
    for digests in (True, False):
        empty(imp.platform)
        outcomes = []
        for edits, rows, with_email in steps:
            data = _step_file(imp, edits, rows, with_email)
            for again in (False, True):  # the file, then the same file again
                outcome = imp.run("members", data, batch_rows=4, digests=digests, threaded=threaded)
                summary = outcome.summary
                if again and digests:  # every row the first run loaded, the second knows
                    assert (summary.created, summary.updated) == (0, 0)
                    assert summary.known_unchanged >= summary.unchanged
                outcomes.append(_outcome_of(outcome))
        seen.append((outcomes, _comparable(imp)))
    assert seen[0] == seen[1]


@given(steps=_steps(), threaded=st.booleans())
@example(  # a number and an SSN repeated across batches of a first load, each batch written before the next
    steps=[([], [(1, 0), (2, 0), (3, 0), (4, 0), (1, 2), (5, 0), (2, 3), (1, 1)], True)], threaded=False)
@example(  # row 6 repeats row 1, which gives the member its number: a lookup may or may not see it (threads)
    steps=[([], [(7, 0), (6, 3), (2, 0), (4, 3), (1, 0)], False),
           ([], [(6, 2), (6, 1), (3, 1), (0, 0), (1, 3), (6, 1), (3, 3), (6, 0), (0, 2)], True)], threaded=True)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_skipping_the_lookups_of_keys_nobody_held_loads_exactly_what_looking_them_up_loads(
        imp: Importer, monkeypatch: pytest.MonkeyPatch,
        steps: list[tuple[list[tuple[str, int]], list[tuple[int, int]], bool]], threaded: bool) -> None:
    """A run whose natural keys no live row held when it began (a first load) does not look them up
    (``kinds.absent_keys``): the same files and outside edits, once so and once looking every key up, give the
    same counts, refusals (row, field, rule, message), members and audit rows, step by step; with the writer
    thread, and without it (each batch committed before the next is planned, so a lookup would find it)."""
    from carecli.data.bulk import members as members_module

    computed = members_module.absent_keys
    seen = []
    for skipping in (True, False):
        monkeypatch.setattr(members_module, "absent_keys",
                            computed if skipping else (lambda *args: frozenset()))
        empty(imp.platform)
        outcomes = []
        for edits, rows, with_email in steps:
            outcome = imp.run("members", _step_file(imp, edits, rows, with_email), batch_rows=2, digests=False,
                              threaded=threaded)
            outcomes.append(_outcome_of(outcome))
        seen.append((outcomes, _comparable(imp)))
    assert seen[0] == seen[1]


def test_a_first_load_finds_no_natural_key_it_need_look_up_and_a_later_one_finds_them(imp: Importer) -> None:
    from carecli.data.bulk.catalog import EXTERNAL_MEMBER_NUMBER, SSN_BLIND_INDEX
    from carecli.data.bulk.kinds import absent_keys

    keys = (EXTERNAL_MEMBER_NUMBER, SSN_BLIND_INDEX)
    with imp.platform.engine.connect() as connection:
        assert absent_keys(connection, "member", keys) == frozenset(keys)
    assert_loaded(imp.run("members", members_csv(person(1, ssn=""), person(2, external_member_number=None))),
                  created=2)
    with imp.platform.engine.connect() as connection:
        assert absent_keys(connection, "member", keys) == frozenset()
        with pytest.raises(ValueError):
            absent_keys(connection, "member", ["x' OR '1"])


def _claimed_by_the_rule(batches: list[list[tuple[int, list[str]]]]) -> list[dict[int, tuple[str, int]]]:
    """What SeenKeys.claim answers, by its rule: a row repeating a key claimed earlier (by an earlier batch or
    row) is a duplicate of that row, on its first such key, and claims none of its keys."""
    earlier: dict[str, int] = {}
    answers: list[dict[int, tuple[str, int]]] = []
    for candidates in batches:
        answers.append({})
        for row, keys in candidates:
            repeated = [key for key in keys if key in earlier]
            if repeated:
                answers[-1][row] = (repeated[0], earlier[repeated[0]])
            else:
                earlier.update(dict.fromkeys(keys, row))
    return answers


@given(st.lists(st.lists(st.lists(st.sampled_from(["number:1", "ssn:ab", "a\tb", "a\\tb", "x\ny", "x\r",
                                                   "member:\\N", "k\u00e9y"]) | st.text(min_size=1, max_size=6),
                                  max_size=3), max_size=6), min_size=1, max_size=4),
       st.booleans())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_claiming_keys_answers_by_its_rule_for_any_key_text(imp: Importer, shape: list[list[list[str]]],
                                                           aside: bool) -> None:
    """Keys of any text (tabs, newlines, backslashes: COPY's escapes), in or out of the claims thread."""
    from carecli.data.bulk.kinds import SeenKeys

    # (a row's keys are distinct: each kind makes at most one of each prefix)
    keys_of = [list(dict.fromkeys(key.replace("\x00", "") or "k" for key in keys))
               for keys in (k for batch in shape for k in batch)]
    batches, row, place = [], 0, 0
    for batch in shape:
        candidates = []
        for _ in batch:
            row += 1
            candidates.append((row, keys_of[place]))
            place += 1
        batches.append(candidates)
    with imp.platform.engine.connect() as connection:
        seen = SeenKeys(connection, aside=aside)
        try:
            answers = [seen.claim_soon(candidates).result() for candidates in batches]
        finally:
            seen.close()
    assert answers == _claimed_by_the_rule(batches)


# (keys as the import can hold them: never NUL, never a lone surrogate; the readers refuse both)
_KEY_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)


@given(st.lists(_KEY_TEXT, min_size=1, max_size=6, unique=True), st.lists(_KEY_TEXT, max_size=4))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_natural_keys_of_any_text_are_found_by_their_text_and_nothing_else(imp: Importer, stored: list[str],
                                                                          others: list[str]) -> None:
    """The lookup by the text the unique index holds (platform_0016), for keys as the import stores them (a JSON
    string of the text): quotes, backslashes, newlines, accents, case and spaces all count."""
    from sqlalchemy import text

    from carecli.data.bulk.kinds import metadata_owners

    with imp.platform.engine.connect() as connection:
        owners = {}
        for value in stored:
            owners[value] = connection.execute(text(
                "INSERT INTO metadata (entity_type, entity_id, metadata_key, metadata_value) VALUES ('member', "
                "gen_random_uuid(), 'external_member_number', to_jsonb(CAST(:v AS text))) RETURNING entity_id"),
                {"v": value}).scalar_one()
        found = metadata_owners(connection, "member", "external_member_number", [*stored, *others, None])
        connection.rollback()
    assert found == owners


def test_claims_take_larger_temporary_buffers_when_the_session_can_and_work_the_same_when_it_cannot(
        imp: Importer) -> None:
    """PostgreSQL refuses a change of temp_buffers once a session has used a temporary table: claims then keep
    the session's buffers, and still answer by the rule (a hash index over the keys, probed per batch)."""
    from sqlalchemy import text

    from carecli.data.bulk.kinds import CLAIM_TEMP_BUFFERS, SeenKeys

    batches = [[(1, ["number:1", "ssn:a"]), (2, ["number:2"])], [(3, ["ssn:a"]), (4, ["number:4", "number:2"])]]
    for used_temp_before in (False, True):
        with imp.platform.engine.connect() as connection:
            connection.invalidate()  # a session of its own, not one that claimed before
        with imp.platform.engine.connect() as connection:
            if used_temp_before:
                connection.exec_driver_sql("CREATE TEMP TABLE other_work (x int); INSERT INTO other_work VALUES (1)")
            buffers = connection.exec_driver_sql("SHOW temp_buffers").scalar_one()
            seen = SeenKeys(connection)
            answers = [seen.claim(candidates) for candidates in batches]
            after = connection.exec_driver_sql("SHOW temp_buffers").scalar_one()
            plan = "\n".join(connection.execute(text(
                "EXPLAIN SELECT key, row FROM carecli_import_seen WHERE key = ANY(ARRAY['number:1'])")).scalars())
            connection.exec_driver_sql("DISCARD TEMP")
            connection.commit()
        assert answers == [{}, {3: ("ssn:a", 1), 4: ("number:2", 2)}] == _claimed_by_the_rule(batches)
        assert after == (buffers if used_temp_before else CLAIM_TEMP_BUFFERS)
        assert "carecli_import_seen_key" in plan


def test_a_records_digest_depends_on_its_values_kind_key_and_year_never_on_column_order() -> None:
    """The year: ``dob_too_old`` counts calendar years, so a row known in December is matched the full way on
    1 January. The digest's key is derived from the blind-index key, and neither key shows in a repr."""
    from carecli.data.bulk.blind_index import BlindIndex
    from carecli.data.bulk.digests import RowDigester

    key = BlindIndex(b"k" * 32)
    december, january = date(2026, 12, 31), date(2027, 1, 1)
    digest = RowDigester(key, "members", today=december).digest
    values = {"first_name": "Ann", "ssn": "123-45-6789", "email": None}
    assert re.fullmatch("[0-9a-f]{32}", digest(values) or "")  # 128 bits as text, which PostgreSQL reads as a uuid
    assert digest(values) == digest(dict(reversed(list(values.items()))))
    assert digest(values) == RowDigester(key, "members", today=date(2026, 1, 1)).digest(values)
    assert digest(values) != RowDigester(key, "members", today=january).digest(values)
    assert digest(values) != RowDigester(key, "plans", today=december).digest(values)
    assert digest(values) != RowDigester(BlindIndex(b"j" * 32), "members", today=december).digest(values)
    assert digest(values) != digest({**values, "email": ""})  # as read: a blank JSON string is not a null
    assert digest(values) != digest({"first_name": "Ann", "ssn": "123-45-6789"})  # another column set
    assert digest({"n": 1}) != digest({"n": "1"})
    assert digest({"n": object()}) is None  # no stable text: the full path
    assert "k" * 8 not in repr(RowDigester(key, "members")) and "123" not in repr(digest(values))
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(RowDigester(key, "members"))

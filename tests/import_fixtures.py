"""Running imports in-process against a real platform database, for the import tests.

``importer.run(kind, text)`` feeds a CSV (or JSON Lines) text through the
same reader, parser and loader as ``carecli import`` and returns the summary
and the refused rows; the blind-index key is made under a test master key.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from carecli.data.actor import Actor
from carecli.data.bulk.blind_index import load_blind_index
from carecli.data.bulk.loader import ImportSummary, run_import
from carecli.data.bulk.readers import Columns, RecordProblem, read_records
from carecli.data.bulk.registry import kind_for
from carecli.data.crypto.master import LocalMasterKey, generate_master_key
from tests.platform_fixtures import Platform


@dataclass
class Outcome:
    summary: ImportSummary
    problems: list[RecordProblem]

    def rules(self) -> list[tuple[int, str, str]]:
        return [(p.row, p.field, p.rule) for p in self.problems]


@dataclass
class Importer:
    platform: Platform
    master: LocalMasterKey

    def blind_index(self, create: bool = True) -> Any:
        return load_blind_index(self.platform.engine, self.master, create=create)

    def run(self, kind: str, data: str | bytes, *, fmt: str = "csv", actor: Actor | None = None,
            mapping: Mapping[str, str | None] | None = None, encoding: str = "utf-8", dry_run: bool = False,
            all_or_nothing: bool = False, batch_rows: int = 100, threaded: bool = True, workers: int = 0,
            digests: bool = True) -> Outcome:
        importer = kind_for(kind)
        raw = data.encode("utf-8") if isinstance(data, str) else data
        records = read_records(io.BytesIO(raw), fmt, Columns(importer.columns, mapping or {}), encoding=encoding,
                               required=importer.required_columns)
        problems: list[RecordProblem] = []
        summary = run_import(importer, records, engine=self.platform.engine, actor=actor or self.platform.admin,
                             cipher=self.platform.cipher, blind_index=lambda: self.blind_index(not dry_run),
                             on_problem=problems.append, dry_run=dry_run, all_or_nothing=all_or_nothing,
                             batch_rows=batch_rows, threaded=threaded, workers=workers, digests=digests)
        return Outcome(summary, problems)


@pytest.fixture
def importer(platform: Platform) -> Iterator[Importer]:
    yield Importer(platform, LocalMasterKey(generate_master_key(), "test-blind"))


def csv_text(header: Sequence[str], *rows: Sequence[Any]) -> str:
    import csv

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if value is None else value for value in row])
    return out.getvalue()

"""Reading import files: CSV with a header, or JSON Lines, as numbered records.

Bytes that are not valid in the file's encoding do not stop the file: they
are carried through as lone surrogates (``surrogateescape``) and the record
holding them is rejected with the ``encoding`` rule, naming the field. A
leading byte-order mark is dropped. Column names are matched ignoring case
and surrounding spaces, after renaming with the mapping.

JSON Lines are read strictly (:mod:`carecli.data.bulk.jsontext`): a line
nested too deep (``nesting``), with ``NaN``/``Infinity``, a number Python
will not convert (``json``), a key twice in one object (``duplicate_key``)
or a ``\ud800`` escape (``encoding``) is one rejected record, never a crash.

Nothing here quotes the file: a file without its header line would otherwise
show its first record (SSN, date of birth, name) as "unknown columns", and a
JSON key can be anything. Unknown header cells and keys are named by their
position ("column 3", "key 5"), rejected records by row, field and rule.

Problems with the header (none, unreadable, unknown or missing columns) raise
:class:`ConfigError` before any row is read (exit code 2); a record the CSV
parser cannot resync after raises :class:`FileProblem` (exit code 3: batches
before it stay committed); problems with one record are yielded as
:class:`RecordProblem` so the rest can load. Blank lines, and CSV rows whose
cells are all empty (a spreadsheet's blank rows), are not records.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from carecli.data.bulk import jsontext
from carecli.errors import EXIT_ABORTED, CarecliError, ConfigError

#: The largest cell the CSV parser accepts; anything near it is a broken file (an unclosed quote).
MAX_CELL_BYTES = 16 * 1024 * 1024
#: Undecodable bytes (``surrogateescape`` makes them U+DC80..U+DCFF), or any other lone surrogate a codec let through.
_SURROGATE = re.compile("[\ud800-\udfff]")
FORMATS = ("csv", "jsonl")


class FileProblem(CarecliError):
    """The file cannot be read past a record (exit code 3: the batches before it stay committed)."""

    exit_code = EXIT_ABORTED


@dataclass(frozen=True)
class RecordProblem:
    row: int
    field: str
    rule: str
    message: str


@dataclass(frozen=True)
class Record:
    row: int
    values: dict[str, Any]


def normalise_name(name: str) -> str:
    """Case, spaces, hyphens and underscores do not matter: "First Name" is first_name."""
    return "_".join(str(name).replace("-", " ").replace("_", " ").split()).lower()


def detect_format(path: str, given: str | None) -> str:
    if given:
        return given
    lowered = path.lower()
    # (no compressed suffixes: files are read as they are, so a .csv.gz would read as binary garbage)
    for suffix, name in ((".csv", "csv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "jsonl"),
                         (".txt", "csv")):
        if lowered.endswith(suffix):
            return name
    raise ConfigError(f"cannot tell the format of {'standard input' if path == '-' else repr(path)} from its name",
                      hint="say --format csv or --format jsonl")


def load_mapping(pairs: Sequence[str], mapping_file: str | None) -> dict[str, str | None]:
    """``SOURCE=column`` pairs (later wins) over a TOML file's ``[columns]`` table.

    An empty target (``--map Notes=``) drops that source column.
    """
    mapping: dict[str, str | None] = {}
    if mapping_file:
        try:
            with open(mapping_file, "rb") as handle:
                document = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read the mapping file {mapping_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"the mapping file {mapping_file} is not valid TOML: {exc}") from None
        table = document.get("columns", document)
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise ConfigError(f"the mapping file {mapping_file} must have a [columns] table of "
                              '"Source column" = "carecli_column" pairs')
        for source, target in table.items():
            mapping[normalise_name(source)] = target.strip() or None
    for pair in pairs:
        source, sep, target = pair.partition("=")
        if not sep or not source.strip():
            raise ConfigError(f"--map {pair!r} must look like 'Source column=carecli_column'")
        mapping[normalise_name(source)] = target.strip() or None
    return mapping


class Columns:
    """Header (or JSON key) names resolved to carecli column names."""

    def __init__(self, known: Sequence[str], mapping: Mapping[str, str | None]) -> None:
        self.known = tuple(known)
        self._known = {normalise_name(name): name for name in known}
        self.mapping = {normalise_name(source): target for source, target in mapping.items()}
        unknown_targets = sorted({t for t in mapping.values() if t is not None and t not in self.known})
        if unknown_targets:
            raise ConfigError(f"the mapping names unknown column(s): {', '.join(unknown_targets)}",
                              hint=f"columns of this kind: {', '.join(self.known)}")

    def resolve(self, name: str) -> str | Literal[False] | None:
        """The carecli column for a source name; None when dropped; False when unknown."""
        key = normalise_name(name)
        if key in self.mapping:
            return self.mapping[key]
        return self._known.get(key, False)


def _open_text(source: IO[bytes], encoding: str) -> io.TextIOWrapper:
    codec = codecs.lookup(encoding).name
    if codec == "utf-8":
        codec = "utf-8-sig"  # drop a byte-order mark if there is one
    return io.TextIOWrapper(source, encoding=codec, errors="surrogateescape", newline="")


def _bad_encoding(values: Mapping[str, Any], row: int, encoding: str) -> RecordProblem | None:
    for name, value in values.items():
        if isinstance(value, str) and _SURROGATE.search(value):
            return RecordProblem(row, name, "encoding",
                                 f"holds bytes that are not valid {encoding} (give the file's --encoding)")
    return None


def read_csv(source: IO[bytes], columns: Columns, *, encoding: str = "utf-8",
             required: Iterable[str] = ()) -> Iterator[Record | RecordProblem]:
    text = _open_text(source, encoding)
    csv.field_size_limit(MAX_CELL_BYTES)
    reader = csv.reader(text, strict=True)
    try:
        header = next(reader, None)
    except (csv.Error, UnicodeError) as exc:
        # Nothing was read yet: a usage error (exit code 2), like a bad header.
        raise ConfigError(f"the header line cannot be read as CSV: {exc}",
                          hint="check the file's quoting, or give its --format") from None
    if header is None or not any(cell.strip() for cell in header):
        raise ConfigError("the file is empty: a CSV import needs a header line naming its columns",
                          hint=f"columns of this kind: {', '.join(columns.known)}")
    if any(_SURROGATE.search(cell) for cell in header):
        raise ConfigError(f"the header line is not valid {encoding}", hint="give the file's --encoding")
    targets: list[str | None] = []
    unknown: list[int] = []
    for position, cell in enumerate(header, start=1):
        target = columns.resolve(cell)
        if target is False:
            unknown.append(position)
            targets.append(None)
        else:
            targets.append(target)
    if unknown:
        # By position only: a file whose header line was left off has its first record here.
        raise ConfigError(f"unknown column(s) in the header: {', '.join(f'column {n}' for n in unknown[:20])}"
                          + (f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""),
                          hint=f"is the first line the header? Rename a column with --map 'Their name=column', "
                               f"drop it with --map 'Their name='; columns of this kind: {', '.join(columns.known)}")
    seen = [t for t in targets if t is not None]
    doubled = sorted({t for t in seen if seen.count(t) > 1})
    if doubled:
        raise ConfigError(f"column(s) given more than once in the header: {', '.join(doubled)}")
    missing = [name for name in required if name not in seen]
    if missing:
        raise ConfigError(f"the header lacks required column(s): {', '.join(missing)}",
                          hint="rename a column of the file with --map 'Their name=column'")
    width = len(targets)
    row = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # the csv module's reasons are fixed phrases, never the cell
            raise FileProblem(f"record {row + 1} (line {reader.line_num}) cannot be read as CSV: {exc}; "
                              "nothing after it was read") from None
        except UnicodeError:  # undecodable bytes are carried through; only a codec with no way to do that
            raise FileProblem(f"record {row + 1} (line {reader.line_num}) cannot be decoded as {encoding}; "
                              "nothing after it was read", hint="give the file's --encoding") from None
        row += 1
        joined = "".join(cells)
        if not joined.strip():
            row -= 1  # a blank line, or a row of empty cells (",,,"), is not a record
            continue
        if len(cells) != width:
            rule = "extra_values" if len(cells) > width else "missing_values"
            yield RecordProblem(row, "(row)", rule,
                                f"has {len(cells)} values where the header has {width} columns")
            continue
        values = {target: (cell if cell != "" else None) for target, cell in zip(targets, cells) if target}
        # One search of the whole record; only a record with undecodable bytes is searched cell by cell.
        problem = _bad_encoding(values, row, encoding) if _SURROGATE.search(joined) else None
        yield problem if problem is not None else Record(row, values)


def read_jsonl(source: IO[bytes], columns: Columns, *, encoding: str = "utf-8",
               required: Iterable[str] = ()) -> Iterator[Record | RecordProblem]:
    text = _open_text(source, encoding)
    required = tuple(required)
    row = 0
    for line in text:
        row += 1
        if not line.strip():
            continue
        if _SURROGATE.search(line):
            yield RecordProblem(row, "(row)", "encoding",
                                f"holds bytes that are not valid {encoding} (give the file's --encoding)")
            continue
        try:
            document = jsontext.decode(line)
        except jsontext.JsonProblem as refused:
            yield RecordProblem(row, "(row)", refused.rule, refused.message)
            continue
        if not isinstance(document, dict):
            yield RecordProblem(row, "(row)", "json", "must be a JSON object")
            continue
        escapes = jsontext.may_hold_surrogates(line)
        values: dict[str, Any] = {}
        problem: RecordProblem | None = None
        for position, (key, value) in enumerate(document.items(), start=1):
            target = columns.resolve(key)
            if target is False:
                # By position: the key is the file's, and could be anything (an SSN, a name).
                problem = RecordProblem(row, "(row)", "unknown_field",
                                        f"has a key that is not a column of this kind (key {position} of the "
                                        "object; rename or drop it with --map)")
                break
            if target is not None:
                if target in values:
                    problem = RecordProblem(row, target, "duplicate_field", "is given more than once")
                    break
                if escapes:
                    try:
                        jsontext.check_value(value)
                    except jsontext.JsonProblem as refused:
                        problem = RecordProblem(row, target, refused.rule, refused.message)
                        break
                values[target] = None if isinstance(value, str) and value == "" else value
        if problem is None:
            missing = next((name for name in required if name not in values), None)
            if missing:
                problem = RecordProblem(row, missing, "required", "is required")
        yield problem if problem is not None else Record(row, values)


def open_source(path: str, stdin: IO[bytes]) -> IO[bytes]:
    if path == "-":
        return stdin
    try:
        return Path(path).open("rb")
    except OSError as exc:
        raise ConfigError(f"cannot open {path}: {exc.strerror}") from None


def read_records(source: IO[bytes], fmt: str, columns: Columns, *, encoding: str = "utf-8",
                 required: Iterable[str] = ()) -> Iterator[Record | RecordProblem]:
    if fmt == "csv":
        return read_csv(source, columns, encoding=encoding, required=required)
    if fmt == "jsonl":
        return read_jsonl(source, columns, encoding=encoding, required=required)
    raise ConfigError(f"unknown format {fmt!r}", hint="use csv or jsonl")

"""The import readers on hostile input: whatever the bytes, a clean refusal that quotes nothing.

``read_records`` (CSV and JSON Lines) is fed arbitrary bytes and lines built
to break it: random JSON values, JSON nested 100,000 deep, integers longer
than Python converts, lone surrogate escapes, ``NaN``/``Infinity`` tokens,
duplicate keys, binary garbage, rows with missing or extra cells, files
without a header. The properties:

* reading never raises anything but a refusal of the whole file: a
  :class:`FileProblem` (a record the CSV parser cannot get past, exit 3) or
  a :class:`ConfigError` (the header, before any row is read, exit 2), and
  its message quotes no piece of the file (no run of 4+ characters of a
  line, column names of the kind apart);
* every refused row is a :class:`RecordProblem` whose field is a column of
  the kind or ``(row)`` and whose message quotes no piece of the file;
* every record holds only text that can be encoded (no lone surrogates) and
  JSON no deeper than the readers' limit, so nothing downstream can crash on it.

An echo is told from a message's own words by those words' source: a run of
the file found in a message counts unless it is part of the readers' string
literals (the messages' fixed text; Hypothesis mines those very literals into
its examples), the csv module's error phrases or the kind's column names.
Runs with a digit in them count only as four digits in a row (row, line and
column numbers are the messages' own). No database: the readers are pure;
``derandomize`` keeps the examples the same from run to run.
"""

from __future__ import annotations

import ast
import csv
import inspect
import io
import json
import re
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carecli.data.bulk import jsontext, readers
from carecli.data.bulk.catalog import COLUMNS
from carecli.data.bulk.jsontext import MAX_DEPTH
from carecli.data.bulk.readers import Columns, FileProblem, Record, RecordProblem, read_records
from carecli.data.bulk.registry import kind_for
from carecli.errors import ConfigError

KINDS = ("members", "plans")
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _literals(*modules: ModuleType) -> str:
    """The string literals of ``modules`` but their docstrings: the fixed text of their messages."""
    found: list[str] = []
    for module in modules:
        tree = ast.parse(inspect.getsource(module))
        documented = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        docstrings = {id(node.body[0].value) for node in ast.walk(tree) if isinstance(node, documented)
                      and node.body and isinstance(node.body[0], ast.Expr)}
        found.extend(node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                     and isinstance(node.value, str) and id(node) not in docstrings)
    return "\n".join(found)


#: What a message may share with the file: its own fixed text, the csv module's reasons, the column names.
VOCABULARY = "\n".join([
    _literals(readers, jsontext),
    "field larger than field limit", str(readers.MAX_CELL_BYTES), "unexpected end of data",
    "new-line character seen in unquoted field - do you need to open the file with newline=''?",
    "',' expected after '\"'", "line contains NUL",
    ", ".join(name for kind in KINDS for name in COLUMNS[kind]),
])

# -- building hostile lines ------------------------------------------------------------------------------

_surrogate = st.integers(0xD800, 0xDFFF).map(chr)
_phi_like = st.sampled_from(["123-45-6789", "Quenby Marrowfield", "quenby@mail.example.org", "(415) 555-0123",
                             "1931-03-07", "12 Quillfeather Lane", "Zephyrton"])
_texts = st.one_of(st.text(max_size=12), _phi_like,
                   st.lists(st.one_of(st.characters(), _surrogate), max_size=6).map("".join))
_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _texts)
_json_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_texts, inner, max_size=4)), max_leaves=10)


def _keys(kind: str) -> st.SearchStrategy[str]:
    known = st.sampled_from(COLUMNS[kind])
    return st.one_of(known, known.map(str.upper), known.map(lambda name: f" {name.replace('_', ' ')} "), _texts)


def _dumps(value: Any, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)


def _deep(depth: int, opener: str) -> str:
    closer = "]" if opener == "[" else "}"
    inner = "[" * depth + "]" * depth if opener == "[" else '{"a": ' * depth + "1" + closer * depth
    return inner


@st.composite
def json_lines(draw: st.DrawFn, kind: str) -> bytes:
    """One line of a JSON Lines file (without its newline), well-formed or not."""
    choice = draw(st.integers(0, 7))
    known = COLUMNS[kind]
    if choice == 0:  # a random JSON value, object or not
        text = _dumps(draw(_json_values), draw(st.booleans()))
    elif choice == 1:  # an object of (mostly) the kind's columns
        document = draw(st.dictionaries(_keys(kind), _json_values, max_size=6))
        text = _dumps(document, draw(st.booleans()))
    elif choice == 2:  # nested deep, as a line or as a value
        nested = _deep(draw(st.one_of(st.integers(1, 2 * MAX_DEPTH), st.just(100_000))), draw(st.sampled_from("[{")))
        text = nested if draw(st.booleans()) else '{"%s": %s}' % (draw(st.sampled_from(known)), nested)
    elif choice == 3:  # an integer longer than Python converts (or just under), or past a float
        number = draw(st.one_of(st.integers(4200, 6000).map(lambda n: "9" * n), st.sampled_from(
            ["1e999", "-1e999", "9" * 4000, "1" + "0" * 400 + ".5"])))
        text = '{"%s": %s}' % (draw(st.sampled_from(known)), number)
    elif choice == 4:  # tokens Python's json reads and JSON does not have
        token = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
        text = '{"%s": [%s]}' % (draw(st.sampled_from(known)), token)
    elif choice == 5:  # the same key twice, at the top or nested
        key = draw(st.one_of(st.sampled_from(known), _texts.map(lambda t: json.dumps(t)[1:-1])))
        pair = f'"{key}": {_dumps(draw(_scalars), True)}'
        text = "{%s, %s}" % (pair, pair) if draw(st.booleans()) else '{"x": {%s, %s}}' % (pair, pair)
    elif choice == 6:  # a lone surrogate escape in a key or a value
        escape = "\\u%04x" % draw(st.integers(0xD800, 0xDFFF))
        text = '{"%s": "a%sb"}' % (draw(st.sampled_from(known)), escape) if draw(st.booleans()) else \
            '{"%s": 1}' % escape
    else:  # binary garbage
        return draw(st.binary(max_size=40)).replace(b"\n", b" ")
    return text.encode("utf-8", "surrogatepass")


@st.composite
def jsonl_files(draw: st.DrawFn, kind: str) -> bytes:
    lines = draw(st.lists(json_lines(kind), min_size=1, max_size=6))
    return b"\n".join(lines) + draw(st.sampled_from([b"", b"\n", b"\r\n"]))


_cells = st.one_of(_texts, _phi_like, _json_values.map(lambda value: _dumps(value, True)),
                   st.sampled_from(['{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", '{"a": NaN}', '{"a": 1, "a": 2}',
                                    '{"a": "\\ud800"}', "9" * 5000]))


@st.composite
def csv_files(draw: st.DrawFn, kind: str) -> bytes:
    """A CSV file with a header (of the kind's columns, maybe with strangers, maybe none) and ragged rows."""
    known = list(COLUMNS[kind])
    header = draw(st.lists(st.sampled_from(known), unique=True, min_size=1, max_size=len(known)))
    header += draw(st.lists(_texts, max_size=1 if draw(st.integers(0, 4)) == 0 else 0))
    width = len(header)
    rows = draw(st.lists(st.lists(_cells, min_size=max(width - 2, 0), max_size=width + 2), max_size=5))
    out = io.StringIO()
    writer = csv.writer(out)
    if draw(st.integers(0, 5)):  # else: the header line left off
        writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8", "surrogatepass")


# -- the properties ----------------------------------------------------------------------------------


def _windows(text: str) -> set[str]:
    return {text[i:i + 4] for i in range(len(text) - 3)}


def _echoes(message: str, data: bytes) -> set[str]:
    """Runs of 4 characters of ``message`` that are also in the file and are not the message's own."""
    text = data.decode("utf-8", "surrogateescape")
    return {window for window in _windows(message) if window in text and window not in VOCABULARY
            and (not re.search(r"[0-9]", window) or window.isdigit())}


def check(kind: str, fmt: str, data: bytes) -> None:
    importer = kind_for(kind)
    columns = Columns(importer.columns, {})
    items: list[Record | RecordProblem] = []
    try:
        for item in read_records(io.BytesIO(data), fmt, columns, required=importer.required_columns):
            items.append(item)
    except (FileProblem, ConfigError) as refused:  # the whole file (or the rest of it); anything else fails
        assert not _echoes(str(refused), data), (str(refused), _echoes(str(refused), data))
    for item in items:
        if isinstance(item, RecordProblem):
            assert item.field == "(row)" or item.field in importer.columns, item
            assert item.rule and item.message
            assert not _echoes(item.message, data), (item, _echoes(item.message, data))
        else:
            assert set(item.values) <= set(importer.columns)
            for value in item.values.values():
                _assert_safe(value)


def _assert_safe(value: Any) -> None:
    """Text that encodes, numbers JSON can write back, nesting within the limit (checked without recursion)."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        current, depth = pending.pop()
        assert depth <= MAX_DEPTH
        if isinstance(current, str):
            current.encode("utf-8")  # no lone surrogate: raises otherwise
        elif isinstance(current, float):
            assert current == current and current not in (float("inf"), float("-inf"))
        elif isinstance(current, dict):
            pending.extend((item, depth + 1) for pair in current.items() for item in pair)
        elif isinstance(current, list):
            pending.extend((item, depth + 1) for item in current)


def _each(kinds: Iterable[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(tuple(kinds))


@SETTINGS
@given(kind=_each(KINDS), fmt=st.sampled_from(("csv", "jsonl")), data=st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_cleanly(kind: str, fmt: str, data: bytes) -> None:
    check(kind, fmt, data)


@SETTINGS
@given(kind=_each(KINDS), fmt=st.sampled_from(("csv", "jsonl")), data=st.binary(max_size=300))
def test_arbitrary_bytes_after_a_good_header_are_refused_cleanly(kind: str, fmt: str, data: bytes) -> None:
    header = ",".join(kind_for(kind).required_columns or COLUMNS[kind][1:3]).encode() + b"\n" if fmt == "csv" else b""
    check(kind, fmt, header + data)


@SETTINGS
@given(data=st.data(), kind=_each(KINDS))
def test_hostile_json_lines_are_refused_row_by_row(data: st.DataObject, kind: str) -> None:
    check(kind, "jsonl", data.draw(jsonl_files(kind)))


@SETTINGS
@given(data=st.data(), kind=_each(KINDS))
def test_hostile_csv_files_are_refused_row_by_row(data: st.DataObject, kind: str) -> None:
    check(kind, "csv", data.draw(csv_files(kind)))

"""Every import parser, fed anything a file can hold, either returns a value or raises ``FieldProblem``.

The parsers are taken from the kinds' own column definitions (``kind_for(name).parsers`` for every
kind of :data:`~carecli.data.bulk.catalog.COLUMNS`), so a column added later is covered without
listing it here. Values are arbitrary text (with other scripts' digits, lone surrogates, huge
numbers, NaN and formula-looking strings mixed in) and arbitrary JSON values (integers of any
size, floats with NaN and infinities, booleans, null, lists, objects). A parser must never raise
anything but ``FieldProblem`` (an import turns that into a rejection of the row; anything else
aborts the file), and its message must never repeat the value: import files are full of PHI.

No database: parsing is pure. Hypothesis runs a bounded number of examples (the file takes a few
seconds).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carecli.data.bulk import fields as f
from carecli.data.bulk.catalog import COLUMNS
from carecli.data.bulk.readers import Record
from carecli.data.bulk.registry import kind_for

#: (kind, column, parser) for every column of every kind
PARSERS: list[tuple[str, str, Callable[[Any], Any]]] = [
    (kind, column, parser) for kind in COLUMNS for column, parser in kind_for(kind).parsers.items()]
IMPORTERS = {kind: kind_for(kind) for kind in COLUMNS}

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_OTHER_DIGITS = "０１２３４５６７８９٠١٢٣٤٥٦٧٨٩۰۱۲۳۴۵۶۷۸۹०१२३४५६७८९𝟎𝟗"
#: values known to have broken parsers, or close to them
_HOSTILE = [
    "NaN", "nan", "-NaN", "sNaN", "Infinity", "-Infinity", "inf", "-0", "+0", "-0.00", "$-0", "1e999999999",
    "-1e999999999", "1e-999999999", "1e308", "1E+99999999999999999999", "1" * 40, "9" * 5000, "1_000",
    "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "0000-01-01", "9999-12-31", "10000-01-01",
    "2026-W01-1", "2026-02-30T10:00", "2026-01-01T24:00", "2026-01-01T10:00+24:00", "12/31/9999", "00000000",
    "９９９-12-3456", "123-45-６７８９", "١٢٣-٤٥-٦٧٨٩", "９７２０１", "٥٥٥١٢٣٤٥٦٧", "(４１５) ５５５-０１２３",
    "\t=1+1", " +1 415 555 0123", "\n@SUM(A1)", "-5", "=HYPERLINK(\"x\")", "\ud800", "a\udfffb", "\x00", "Ann\x00",
    "Massachusetts", "  new   york ", "m\u017f", "ＭＡ", "{}", "[]", "null", "true", '{"a": NaN}', '{"a": "\\u0000"}',
    '{"a": "\\ud800"}', "[" * 3000, '{"a":' * 100 + "1" + "}" * 100, "urn:uuid:" + "1" * 32, "{" + "a" * 32 + "}",
    "1" * 32, "١" * 32, "12345" + "\u200b", "\u00a0123-45-6789\u00a0", "123-45-6789\n",
]
_TEXT = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec=None, exclude_categories=())),  # surrogates and all
    st.text(alphabet="0123456789-/ .:T+()$,eE" + _OTHER_DIGITS, max_size=30),
    st.sampled_from(_HOSTILE),
    st.builds(lambda a, b, c: a + b + c, st.text(max_size=3), st.sampled_from(_HOSTILE), st.text(max_size=3)),
    st.from_regex(r"[0-9]{1,5}(\.[0-9]{0,4})?([eE][+-]?[0-9]{1,12})?", fullmatch=True),
    st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2})?([+-][0-9]{2}:[0-9]{2}|Z)?",
                  fullmatch=True),
)
_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(),
    # integers of any size up to 5,000 digits (past the 4,300 that int-to-text conversion allows); built by
    # a function because Hypothesis's own repr of such a constant would hit that limit itself
    st.builds(lambda digits, sign, offset: sign * (10 ** digits + offset), st.integers(0, 5000),
              st.sampled_from([1, -1]), st.integers(-2, 2)),
    st.sampled_from([2 ** 63, 2 ** 63 - 1, 2 ** 31, 2 ** 31 - 1, -(2 ** 31) - 1, 0]),
    st.floats(), st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 1e308, 5e-324]),
    _TEXT,
)
_JSON = st.recursive(_SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(_TEXT, inner, max_size=3)), max_leaves=6)


def _vocabulary() -> str:
    """Every message the parsers give for harmless bad values: text a value may share with a message
    by coincidence (a 4-character input "must" or "1234" is in the wording, not taken from the value)."""
    messages: list[str] = []
    probes: tuple[Any, ...] = ("?", "x", "", 1.5, True, None, [], "9" * 80, "x" * 70_000, "2026-02-30",
                               "2026-02-30T10:00", "0001-01-01T00:00:00+05:00", "1890-01-01", "2999-01-01", "-1",
                               "1.001", "99999999999", "000-12-3456", "123-00-4567", "123-45-0000", 10 ** 200, "NaN")
    for _, _, parser in PARSERS:
        for probe in probes:
            try:
                parser(probe)
            except f.FieldProblem as problem:
                messages.append(problem.message)
            except Exception:  # noqa: BLE001 - not this helper's to judge: the tests below fail on it
                pass
    return "\n".join(messages)


VOCABULARY = _vocabulary()


def assert_not_echoed(raw: Any, message: str) -> None:
    """The message does not hold the value (when it is at least 4 characters and not part of the wording)."""
    shown = raw.strip() if isinstance(raw, str) else None
    if shown is None or len(shown) < 4 or shown in VOCABULARY:
        return
    assert shown not in message, "the message repeats the value"


def parse_or_problem(parser: Callable[[Any], Any], raw: Any) -> f.FieldProblem | None:
    """The FieldProblem a parser raises for ``raw`` (None when it accepts it); any other exception fails the test."""
    try:
        parser(raw)
    except f.FieldProblem as problem:
        assert problem.rule and re.fullmatch(r"[a-z_]+", problem.rule)
        assert problem.message and problem.message == str(problem)
        return problem
    return None


def test_every_kind_and_column_is_covered() -> None:
    assert {kind for kind, _, _ in PARSERS} == set(COLUMNS)
    assert len(PARSERS) == sum(len(columns) for columns in COLUMNS.values())


def check_every_parser(raw: Any) -> None:
    """Feed ``raw`` to every parser of every kind; a failure names the column."""
    for kind, column, parser in PARSERS:
        try:
            problem = parse_or_problem(parser, raw)
            if problem is not None:
                assert_not_echoed(raw, problem.message)
        except Exception as error:
            raise AssertionError(f"{kind}.{column}: {type(error).__name__}") from error


@SETTINGS
@given(raw=_TEXT)
def test_text_gives_a_value_or_a_field_problem(raw: str) -> None:
    check_every_parser(raw)


@SETTINGS
@given(raw=_JSON)
def test_json_values_give_a_value_or_a_field_problem(raw: Any) -> None:
    check_every_parser(raw)


@settings(max_examples=150, deadline=None)
@given(target=st.sampled_from(PARSERS), raw=st.sampled_from([float("nan"), float("inf"), float("-inf")]))
def test_nan_and_infinity_are_never_accepted(target: tuple[str, str, Callable[[Any], Any]], raw: float) -> None:
    _, _, parser = target
    assert parse_or_problem(parser, raw) is not None


@settings(max_examples=150, deadline=None)
@given(target=st.sampled_from(PARSERS),
       raw=st.builds(lambda text, at: text[:at] + "\ud800" + text[at:], st.text(max_size=10), st.integers(0, 10)))
def test_lone_surrogates_are_an_encoding_problem(target: tuple[str, str, Callable[[Any], Any]], raw: str) -> None:
    _, _, parser = target
    problem = parse_or_problem(parser, raw)
    assert problem is not None and problem.rule == "encoding"


@settings(max_examples=150, deadline=None)
@given(target=st.sampled_from(PARSERS), digits=st.text(alphabet=_OTHER_DIGITS, min_size=1, max_size=12),
       shape=st.sampled_from(["{}", "{}-12-3456", "123-45-{}", "{}-01-01", "2026-01-01T{}:00", "$ {}", "+1 {}"]))
def test_other_scripts_digits_are_never_accepted_as_digits(target: tuple[str, str, Callable[[Any], Any]],
                                                           digits: str, shape: str) -> None:
    """No parser's *result* holds a non-ASCII digit unless it stores text as given (names, notes, codes)."""
    kind, column, parser = target
    raw = shape.format(digits)
    try:
        value = parser(raw)
    except f.FieldProblem:
        return
    # Only text parsers accept them (names, notes, identifiers, a list of plan codes), and keep them as text.
    if isinstance(value, tuple):
        assert all(isinstance(item, str) for item in value) and "".join(value) in raw, (kind, column)
    else:
        assert isinstance(value, str) and value == raw.strip(), (kind, column)


_SSN = st.builds(lambda a, g, s, sep: f"{a:03d}{sep}{g:02d}{sep}{s:04d}", st.integers(0, 999), st.integers(0, 99),
                 st.integers(0, 9999), st.sampled_from(["-", "", " "]))


@settings(max_examples=300, deadline=None)
@given(target=st.sampled_from(PARSERS), ssn=_SSN, before=st.sampled_from(["", " ", "x", "SSN ", "\t", "１"]),
       after=st.sampled_from(["", " ", "x", "!", "\ud800", "٠", "\x00"]))
def test_an_ssn_shaped_value_never_appears_in_a_message(target: tuple[str, str, Callable[[Any], Any]], ssn: str,
                                                        before: str, after: str) -> None:
    kind, column, parser = target
    problem = parse_or_problem(parser, before + ssn + after)
    if problem is None:
        return
    digits = re.sub(r"[^0-9]", "", ssn)
    for shown in (ssn, digits, f"{digits[:3]}-{digits[3:5]}-{digits[5:]}", f"{digits[:3]} {digits[3:5]} {digits[5:]}"):
        assert shown not in problem.message, (kind, column)


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(sorted(COLUMNS)), data=st.data())
def test_whole_records_of_anything_are_parsed_or_rejected_by_field(kind: str, data: st.DataObject) -> None:
    """A record of arbitrary values through ``Kind.parse`` (blank checks, parsers, rules across fields)."""
    importer = IMPORTERS[kind]
    columns = data.draw(st.lists(st.sampled_from(importer.columns), unique=True, min_size=1, max_size=6))
    values = {column: data.draw(st.one_of(_TEXT, _JSON)) for column in columns}
    result = importer.parse(Record(7, values))
    if isinstance(result, list):
        assert result, "a rejected record names at least one problem"
        for problem in result:
            assert problem.row == 7 and problem.field in importer.columns and problem.rule
            for raw in values.values():
                assert_not_echoed(raw, problem.message)
    else:
        assert set(result.values) == set(values)


@pytest.mark.parametrize("kind, column, parser", PARSERS, ids=[f"{kind}.{column}" for kind, column, _ in PARSERS])
def test_each_parser_refuses_the_known_hostile_values_cleanly(kind: str, column: str,
                                                              parser: Callable[[Any], Any]) -> None:
    """Every column against every known-bad value, so a failure names the column (not only a Hypothesis draw)."""
    for raw in [*_HOSTILE, 10 ** 5000, -(10 ** 5000), float("nan"), float("inf"), [float("nan")],
                {"a": float("inf")}, {"a": "\ud800"}, ["\ud800"], [[[]]], {"": None}]:
        problem = parse_or_problem(parser, raw)
        if problem is not None:
            assert_not_echoed(raw, problem.message)


@pytest.mark.parametrize(("document", "rule"), [
    ({"a": {"b": ["x\x00y"]}}, "control_character"),
    ({"a": {"k\x00": 1}}, "control_character"),
    ({"a": [1, {"n": 10 ** 100}]}, "json"),
    ({"a": -(10 ** 100)}, "json"),
    ({"a": [[["\ud800"]]]}, "encoding"),
    ({"a": float("nan")}, "json"),
])
def test_a_json_object_is_checked_in_one_walk_for_json_and_the_database(document: dict[str, Any], rule: str) -> None:
    """parse_json_object walks a document once (jsontext.check_value) for JSON's rules and the database's:
    the same rule whether the object comes decoded (a JSON Lines cell) or as text (a CSV cell)."""
    from carecli.data.bulk import fields
    from carecli.data.bulk.fields import FieldProblem

    with pytest.raises(FieldProblem) as decoded:
        fields.parse_json_object(document)
    assert decoded.value.rule == rule
    if rule != "json" or "nan" not in repr(document):  # NaN has no JSON text to read it back from
        text = json.dumps(document, ensure_ascii=True)
        with pytest.raises(FieldProblem) as read:
            fields.parse_json_object(text)
        assert read.value.rule == rule
    assert fields.parse_json_object({"a": {"b": [1, 2.5, None, True, "ok", 10 ** 99]}})


def test_a_dict_not_decoded_from_json_is_refused_as_json() -> None:
    from datetime import date

    from carecli.data.bulk import fields
    from carecli.data.bulk.fields import FieldProblem

    for document in ({"a": date(2026, 1, 1)}, {"a": {1: "x"}}, {"a": (1, 2)}):
        with pytest.raises(FieldProblem) as caught:
            fields.parse_json_object(document)
        assert caught.value.rule == "json"


_JSONABLE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(values=st.dictionaries(st.text(max_size=12), _JSONABLE, max_size=15))
def test_the_digest_text_is_the_json_encoders(values) -> None:
    """The record digest's encoder (its C encoder made once) writes exactly what json.dumps writes with its
    settings, NaN and non-ASCII included, and refuses what json.dumps refuses."""
    from carecli.data.bulk.digests import _encode

    expected = json.dumps(values, ensure_ascii=False, sort_keys=True, separators=(",", ":"), check_circular=False,
                          allow_nan=True)
    assert _encode(values) == expected


def test_the_digest_text_refuses_what_json_refuses() -> None:
    from carecli.data.bulk.digests import _encode

    with pytest.raises(TypeError):
        _encode({"n": object()})
    with pytest.raises(TypeError):
        _encode({"n": 1, 2: "mixed keys cannot be sorted"})

"""Values as fields of ``COPY ... FROM STDIN`` in its text format (psycopg's per-row adaptation
costs several times more). Used by the loader's writer and by the kinds that preformat the
lines of new rows (in a worker process, see :mod:`carecli.data.bulk.prepare`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb

#: columns holding JSON: a JSON column's strings are JSON strings ("A1" -> "\"A1\""), not the column's text
JSON_COLUMNS = frozenset({"old_values", "new_values", "metadata_value", "coverage_details"})
ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_JSON_MEMO: dict[tuple, str] = {}
_JSON_MEMO_LIMIT = 4096


def json_text(value: Any) -> str:
    """JSON for a COPY field; audit values of one shape repeat, so their text is memoised."""
    if type(value) is dict:
        try:
            key = tuple(value.items())
            cached = _JSON_MEMO.get(key)
        except TypeError:  # unhashable values: nothing to memoise
            key, cached = None, None
        if cached is not None:
            return cached
        text_value = json.dumps(value, separators=(",", ":"), ensure_ascii=False).translate(ESCAPES)
        if key is not None:
            if len(_JSON_MEMO) >= _JSON_MEMO_LIMIT:
                _JSON_MEMO.clear()
            _JSON_MEMO[key] = text_value
        return text_value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).translate(ESCAPES)


def field(value: Any) -> str:
    """One value in COPY's text format."""
    kind = type(value)
    if value is None:
        return "\\N"
    if kind is str:
        # Most values hold none of the four: four scans in C cost a tenth of translating them.
        if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
            return value.translate(ESCAPES)
        return value
    if kind is uuid.UUID or kind is int or kind is Decimal:
        return str(value)
    if kind is bool:
        return "t" if value else "f"
    if kind is datetime or kind is date:
        return value.isoformat()
    if kind is bytes:
        return "\\\\x" + value.hex()
    if kind is dict or kind is list:
        return json_text(value)
    if isinstance(value, Jsonb):
        return json_text(value.obj)
    if isinstance(value, uuid.UUID):  # a subclass (uuid_utils' compat ids are plain UUIDs, but be safe)
        return str(value)
    return str(value).translate(ESCAPES)


def json_field(value: Any) -> str:
    return "\\N" if value is None else json_text(value)


Formatter = Callable[[Any], str]


def formatters(names: Sequence[str]) -> list[Formatter]:
    """The formatter of each column."""
    return [json_field if name in JSON_COLUMNS else field for name in names]


def line(formats: Sequence[Formatter], values: Iterable[Any]) -> str:
    """One row as a COPY text line (with its newline)."""
    return "\t".join([format_(value) for format_, value in zip(formats, values)]) + "\n"


def lines(names: Sequence[str], rows: Iterable[Iterable[Any]]) -> str:
    formats = formatters(names)
    return "".join("\t".join([format_(value) for format_, value in zip(formats, row)]) + "\n" for row in rows)

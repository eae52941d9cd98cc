"""Strict JSON for import files: what JSON says, and nothing that can crash what comes after.

Python's :func:`json.loads` is lenient where an import must not be, and
fails in ways callers do not expect:

* it accepts ``NaN``, ``Infinity`` and ``-Infinity``, which are not JSON (and
  which PostgreSQL's ``jsonb`` refuses, aborting the batch), and reads
  ``1e999`` as infinity;
* it lets the last of two equal keys in one object win, silently;
* it raises :class:`RecursionError` (not a :class:`ValueError`) on JSON
  nested some thousands deep, and a plain :class:`ValueError` with no
  ``msg``/``colno`` on an integer longer than Python converts;
* it decodes ``"\\ud800"`` to a lone surrogate, text that cannot be encoded
  (the COPY to the server, encryption and the blind index all fail on it).

:func:`decode` and :func:`check_value` refuse all of these with a
:class:`JsonProblem` naming the rule (``json``, ``nesting``, ``duplicate_key``,
``encoding``); their messages never quote the text. :func:`check_value` walks
a decoded value (lone surrogates, nesting, and whatever string and number rules
its caller adds), without recursion.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

#: The deepest nesting accepted (a JSON Lines record is 1, a JSON object in one of its cells 2).
MAX_DEPTH = 32

_SURROGATE = re.compile("[\ud800-\udfff]")
#: A \u escape in the surrogate range: only then can decoding make a lone surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
#: JSON strings (their brackets are not nesting) and brackets.
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class JsonProblem(ValueError):
    """JSON an import refuses; ``rule`` says why, ``message`` what is expected (never the text)."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


def _refuse_constant(name: str) -> Any:
    raise JsonProblem("json", "is not valid JSON (it has a number JSON does not have: NaN, or one without bound)")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JsonProblem("json", "holds a number too large to store")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise JsonProblem("duplicate_key", "has a key given twice in one JSON object (which one counts?)")
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_refuse_constant, parse_float=_finite_float)
_TOO_DEEP = JsonProblem("nesting", f"is nested deeper than {MAX_DEPTH} levels of JSON arrays and objects")
_SURROGATE_TEXT = "holds a \\u escape of half a character (a lone surrogate), which is not text"


def _too_deep(text: str, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than ``limit`` (a scan, not a recursive parse)."""
    if text.count("[") + text.count("{") <= limit:
        return False  # the common case: too few brackets to nest that deep
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                return True
        elif token in "]}":
            depth -= 1
    return False


def may_hold_surrogates(text: str) -> bool:
    """Whether decoding ``text`` can have made a lone surrogate (it has a \\u escape in their range)."""
    return _SURROGATE_ESCAPE.search(text) is not None


def decode(text: str, *, max_depth: int = MAX_DEPTH) -> Any:
    """``text`` as JSON, strictly, but for lone surrogates from ``\\u`` escapes: the caller checks (and names)
    the values (with :func:`check_value`, when :func:`may_hold_surrogates` says so)."""
    if _SURROGATE.search(text):
        raise JsonProblem("encoding", "holds bytes that are not valid in the file's encoding")
    if _too_deep(text, max_depth):
        raise JsonProblem(_TOO_DEEP.rule, _TOO_DEEP.message)
    try:
        value = _DECODER.decode(text)
    except JsonProblem:
        raise
    except json.JSONDecodeError as exc:
        # The decoder's reasons are fixed phrases ("Expecting value"); anything after a colon could quote.
        reason = exc.msg.split(":", 1)[0]
        raise JsonProblem("json", f"is not valid JSON ({reason} at column {exc.colno})") from None
    except RecursionError:  # the scan above should make this unreachable; a crash it must never be
        raise JsonProblem(_TOO_DEEP.rule, _TOO_DEEP.message) from None
    except ValueError:
        # Well-formed JSON Python still refuses: an integer longer than it converts
        # (sys.get_int_max_str_digits()); the exception has no position, and its text is not ours.
        raise JsonProblem("json", "cannot be read as JSON (a number has too many digits)") from None
    return value


def check_value(value: Any, *, max_depth: int = MAX_DEPTH, check_string: Callable[[str], Any] | None = None,
                max_int_digits: int | None = None) -> None:
    """Refuse a decoded value nested too deep or holding a lone surrogate (keys included); with
    ``check_string``, also call it on every string and key (it raises what it refuses), and with
    ``max_int_digits`` refuse longer integers. One walk, no recursion."""
    int_limit = 10 ** max_int_digits if max_int_digits is not None else None
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        current, depth = pending.pop()
        if isinstance(current, str):
            if _SURROGATE.search(current):
                raise JsonProblem("encoding", _SURROGATE_TEXT)
            if check_string is not None:
                check_string(current)
        elif isinstance(current, (dict, list)):
            if depth > max_depth:
                raise JsonProblem(_TOO_DEEP.rule, _TOO_DEEP.message)
            if isinstance(current, dict):
                if not all(isinstance(key, str) for key in current):
                    raise JsonProblem("json", "has a key that is not text")
                pending.extend((key, depth) for key in current)
                pending.extend((item, depth + 1) for item in current.values())
            else:
                pending.extend((item, depth + 1) for item in current)
        elif isinstance(current, float) and not math.isfinite(current):
            raise JsonProblem("json", "holds a number JSON cannot store (NaN or infinity)")
        elif (int_limit is not None and isinstance(current, int) and not isinstance(current, bool)
              and abs(current) >= int_limit):
            raise JsonProblem("json", f"holds a number of more than {max_int_digits} digits")
        elif current is not None and not isinstance(current, (bool, int, float)):
            raise JsonProblem("json", "holds a value JSON does not have")  # a dict not decoded from JSON

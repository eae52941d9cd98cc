"""Parsing and normalising one value of an import file.

Every parser takes what the file held (a string from CSV; a string, number,
boolean, null, list or object from JSON Lines) and returns the typed,
normalised value, or raises :class:`FieldProblem` naming the rule it broke,
and nothing else: whatever a file holds, a bad value is a rejection of its
row, never an error of the import. Messages never repeat the value: an import
file is full of PHI, and error reports and logs must not be.

Formats are checked on ASCII only (``[0-9]``, never ``\\d`` or
``str.isdigit``, which take any script's digits): a fullwidth or
Arabic-Indic digit is not a digit of an SSN, ZIP, phone, amount or date.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from carecli.data.bulk import jsontext
from carecli.data.crypto.phi import DateOfBirth, Ssn
from carecli.data.validation import EMAIL_PATTERN, state_code

#: The oldest date of birth we accept, in years before today.
OLDEST_PLAUSIBLE_AGE_YEARS = 130
#: TEXT columns have no declared size; a cell bigger than this is a broken file, not a note.
MAX_TEXT_CHARS = 65_536
#: A JSON whole number given for a text value (a member number, a ZIP) has at most this many digits;
#: past Python's int-to-text limit (4,300 digits) ``str()`` itself would fail.
MAX_NUMBER_DIGITS = 100
#: What a spreadsheet reads as the start of a formula.
FORMULA_STARTS = ("=", "+", "-", "@")


class FieldProblem(ValueError):
    """A value broke ``rule``; ``message`` says what is expected, never what was found."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


Parser = Callable[[Any], Any]


def blank(raw: Any) -> bool:
    return raw is None or (isinstance(raw, str) and not raw.strip())


def _check_string(value: str) -> str:
    """``value`` when the database can hold it: UTF-8 encodable and without NUL."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (\ud800 in JSON): text no encoding can write
            raise FieldProblem("encoding", "must be valid Unicode text (it holds an unpaired surrogate "
                                           "code point)") from None
    if "\x00" in value:
        raise FieldProblem("control_character", "must not contain NUL characters")
    return value


def _number_text(raw: int | float) -> str:
    """A JSON number given where text is read (a ZIP, a member number, a date as 20260115), as its digits."""
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise FieldProblem("number", "must not be NaN or Infinity")
        return repr(raw)
    if abs(raw) >= 10 ** MAX_NUMBER_DIGITS:
        raise FieldProblem("max_length", f"must be at most {MAX_NUMBER_DIGITS} digits")
    return str(raw)


def _text_of(raw: Any) -> str:
    """The value as stripped text, for values parsed into a normalised form (codes, numbers, dates)."""
    if isinstance(raw, str):
        return _check_string(raw).strip()
    if isinstance(raw, bool):
        raise FieldProblem("type", "must be text, not true/false")
    if isinstance(raw, (int, float)):
        return _number_text(raw)
    raise FieldProblem("type", "must be text")


def _kept_text(raw: str) -> str:
    """Text stored as the file gave it: surrounding whitespace stripped, unless stripping would make a formula.

    A value such as ``"\\t=1+1"`` or ``" -5"`` keeps its leading whitespace (only the end is
    stripped): stripping it would turn text that no spreadsheet runs into one that starts with
    ``=``, ``+``, ``-`` or ``@`` and does run when the data is exported and opened. Keeping it,
    rather than refusing the row, was chosen because such values are also how careful exporters
    defuse a formula and how people indent a note ("  - call back Monday"): the stored text is
    then exactly what the file held, so nothing is lost and nothing becomes live that was not.
    A value that already starts with one of them is stored as given (export's concern).
    """
    stripped = raw.strip()
    if stripped.startswith(FORMULA_STARTS) and not raw.startswith(FORMULA_STARTS):
        return raw.rstrip()
    return stripped


def text(max_length: int | None, *, numbers: bool = False) -> Parser:
    """Free text of at most ``max_length`` characters (a TEXT column's sanity limit when None).

    With ``numbers`` (identifiers: member numbers, external ids, plan codes, licence numbers), a
    JSON whole number is taken as its digits; otherwise a JSON number, true/false, NaN or
    Infinity is a type problem: ``{"first_name": 12}`` or ``NaN`` is not a name.
    """
    limit = max_length or MAX_TEXT_CHARS

    def parse(raw: Any) -> str:
        if isinstance(raw, str):
            value = _kept_text(_check_string(raw))
        elif numbers and isinstance(raw, int) and not isinstance(raw, bool):
            value = _number_text(raw)
        elif isinstance(raw, bool):
            raise FieldProblem("type", "must be text, not true/false")
        elif isinstance(raw, float) and not math.isfinite(raw):
            raise FieldProblem("type", "must be text, not NaN or Infinity")
        elif isinstance(raw, (int, float)):
            raise FieldProblem("type", "must be text or a whole number" if numbers else "must be text, not a number")
        else:
            raise FieldProblem("type", "must be text")
        if len(value) > limit:
            raise FieldProblem("max_length", f"must be at most {limit:,} characters (has {len(value):,})")
        return value

    return parse


def code(max_length: int) -> Parser:
    """An identifier from another system (a member number, an external id, a plan code): text, or a JSON
    whole number taken as its digits."""
    return text(max_length, numbers=True)


def enum(choices: tuple[str, ...]) -> Parser:
    def parse(raw: Any) -> str:
        value = _text_of(raw).lower()
        if value not in choices:
            raise FieldProblem("enum", f"must be one of {', '.join(choices)}")
        return value

    return parse


#: an SSN as written: dashes or spaces between the groups, or none
_SSN_SHAPES = re.compile(r"[0-9]{3}-?[0-9]{2}-?[0-9]{4}|[0-9]{3} [0-9]{2} [0-9]{4}")
_NINE_DIGITS = re.compile(r"[0-9]{9}")
_ZIP_DIGITS = re.compile(r"[0-9]{5}|[0-9]{9}")
_ZIP_SHAPES = re.compile(r"[0-9]{5}(?:[- ]?[0-9]{4})?")
_PHONE_CHARACTERS = re.compile(r"[0-9 \t().+\-]+")
_NOT_DIGITS = re.compile(r"[^0-9]")
_US_DATE = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})\Z")
_COMPACT_DATE = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})\Z")
_ISO_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})\Z")
DATE_FORMATS = "YYYY-MM-DD, MM/DD/YYYY or YYYYMMDD"
#: an ISO 8601 date and time as datetime.fromisoformat reads it, in ASCII digits: the shapes
#: fromisoformat also takes (week dates, a bare 40-digit number) are not times anyone writes in a file
_ISO_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}(?::[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]{1,6})?)?)?"
    r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2}(?::?[0-9]{2}(?:\.[0-9]{1,6})?)?)?)?\Z")
TIMESTAMP_FORMAT = "YYYY-MM-DDTHH:MM[:SS][+HH:MM]"


def parse_date(raw: Any) -> date:
    """A calendar date in one of :data:`DATE_FORMATS`, years 1 to 9999 (Python's range; PostgreSQL's is wider)."""
    value = _text_of(raw)
    for pattern, order in ((_ISO_DATE, (0, 1, 2)), (_US_DATE, (2, 0, 1)), (_COMPACT_DATE, (0, 1, 2))):
        match = pattern.match(value)
        if match:
            parts = match.groups()
            try:
                return date(int(parts[order[0]]), int(parts[order[1]]), int(parts[order[2]]))
            except ValueError:  # a month 13, a 30 February, the year 0
                raise FieldProblem("date", "is not a real calendar date") from None
    raise FieldProblem("date_format", f"must be a date as {DATE_FORMATS}")


def parse_timestamp(raw: Any) -> datetime:
    """ISO 8601 date-time; with an offset it is converted to UTC, without one it is taken as UTC.

    A time whose UTC equivalent falls outside the years 1 to 9999 (``0001-01-01T00:00:00+05:00``)
    cannot be held by Python, so it is refused (``datetime_range``) instead of failing the import.
    """
    value = _text_of(raw)
    if not _ISO_TIMESTAMP.match(value):
        try:
            return datetime.combine(parse_date(value), datetime.min.time())
        except FieldProblem as problem:
            if problem.rule == "date":
                raise
            raise FieldProblem("datetime_format", f"must be a date and time as {TIMESTAMP_FORMAT}") from None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:  # the right shape, impossible values: hour 25, 30 February, offset +25:00
        raise FieldProblem("datetime", "is not a real date and time") from None
    if moment.tzinfo is not None:
        try:
            moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
        except OverflowError:
            raise FieldProblem("datetime_range", "must be between the years 1 and 9999 in UTC") from None
    return moment


_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


def parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    value = _text_of(raw).lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise FieldProblem("boolean", "must be true or false (also yes/no, 1/0)")


#: the largest value an integer column can hold when the caller gives no bound (PostgreSQL's bigint)
_BIGINT = 2**63 - 1


def integer(low: int | None = None, high: int | None = None) -> Parser:
    """A whole number: a JSON integer, or up to 12 ASCII digits with an optional sign."""
    def parse(raw: Any) -> int:
        if isinstance(raw, bool) or isinstance(raw, float):
            raise FieldProblem("integer", "must be a whole number")
        if isinstance(raw, int):
            value = raw  # any size: the range check below says what fits
        else:
            text_value = _text_of(raw)
            if not re.fullmatch(r"[+-]?[0-9]{1,12}", text_value):
                raise FieldProblem("integer", "must be a whole number")
            value = int(text_value)
        _check_range(value, low, high)
        if abs(value) > _BIGINT:
            raise FieldProblem("range", f"must be at most {_BIGINT:,} in size")
        return value

    return parse


#: a plain decimal in ASCII digits (what is left once '$' and thousands commas are taken off); Decimal()
#: itself also takes NaN, Infinity, underscores and any script's digits
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")


def decimal(precision: int, scale: int, low: Decimal | None = None, high: Decimal | None = None) -> Parser:
    """A NUMERIC(precision, scale) value; a leading '$' and thousands commas are accepted.

    The size is checked before the value is rounded to ``scale`` places: rounding a value such as
    ``1e999999999`` would raise ``decimal.InvalidOperation`` instead of the ``range`` rule.
    """
    limit = Decimal(10) ** (precision - scale)
    quantum = Decimal(1).scaleb(-scale)

    def parse(raw: Any) -> Decimal:
        if isinstance(raw, bool):
            raise FieldProblem("number", "must be a number")
        if isinstance(raw, int):
            value = Decimal(raw)  # exact at any size, without int-to-text conversion
        elif isinstance(raw, float):
            if not math.isfinite(raw):
                raise FieldProblem("number", "must be a number, not NaN or Infinity")
            value = Decimal(repr(raw))  # 19.99 as written, not its binary expansion
        else:
            text_value = _text_of(raw).replace(",", "").removeprefix("$")
            if not _DECIMAL.match(text_value):
                raise FieldProblem("number", "must be a number")
            try:
                value = Decimal(text_value)
            except InvalidOperation:  # an exponent past what Decimal holds
                raise FieldProblem("range", f"must be less than {limit:,} in size") from None
        if value.copy_abs() >= limit:  # copy_abs, not abs(): abs() rounds in the context and can overflow
            raise FieldProblem("range", f"must be less than {limit:,} in size")
        try:
            rounded = value.quantize(quantum)
        except InvalidOperation:  # cannot happen below the limit; kept a rejection if it ever does
            raise FieldProblem("range", f"must be less than {limit:,} in size") from None
        if value != rounded:
            raise FieldProblem("scale", f"must have at most {scale} decimal places")
        _check_range(rounded, low, high)
        return rounded.copy_abs() if rounded.is_zero() else rounded  # -0 is 0

    return parse


def _check_range(value: Any, low: Any, high: Any) -> None:
    if low is not None and value < low:
        raise FieldProblem("range", f"must be at least {low}")
    if high is not None and value > high:
        raise FieldProblem("range", f"must be at most {high}")


#: what uuid.UUID reads, in ASCII hex (it would also take int()'s other digits and underscores)
_UUID = re.compile(r"(?:urn:uuid:)?(\{)?[0-9a-fA-F]{8}(-?)[0-9a-fA-F]{4}\2[0-9a-fA-F]{4}\2[0-9a-fA-F]{4}\2"
                   r"[0-9a-fA-F]{12}(?(1)\})\Z")


def parse_uuid(raw: Any) -> uuid.UUID:
    value = _text_of(raw)
    if not _UUID.match(value):
        raise FieldProblem("uuid", "must be an id like 3f2c9a5e-8b1d-4c7a-9e2f-0a1b2c3d4e5f")
    return uuid.UUID(value)


def parse_json_object(raw: Any) -> dict[str, Any]:
    """A JSON object, strictly (:mod:`~carecli.data.bulk.jsontext`): a cell nested 100,000 deep, with
    NaN, a duplicate key or a lone surrogate is this row's problem, not a crash or a failed batch."""
    try:
        # From a JSON Lines file the value is decoded already; either way one walk checks it: JSON's own
        # rules (nesting, lone surrogates, NaN) and what the database cannot hold (NUL, 100+ digit numbers).
        value: Any = raw if isinstance(raw, dict) else jsontext.decode(_text_of(raw))
        if not isinstance(value, dict):
            raise FieldProblem("json", "must be a JSON object")
        jsontext.check_value(value, check_string=_check_string, max_int_digits=MAX_NUMBER_DIGITS)
    except jsontext.JsonProblem as problem:
        if problem.rule == "json":
            raise FieldProblem("json", f"must be a JSON object: it {problem.message}") from None
        raise FieldProblem(problem.rule, problem.message) from None
    return value


def parse_list(raw: Any) -> tuple[str, ...]:
    """A list of codes: a JSON array, or one string separated by ';' (or ',')."""
    if isinstance(raw, list):
        items = [_text_of(item) for item in raw]
    else:
        value = _text_of(raw)
        items = re.split(r"[;,]", value)
    return tuple(sorted({item.strip() for item in items if item.strip()}))


# -- PHI and contact details -------------------------------------------------------


def parse_ssn(raw: Any) -> Ssn:
    """Nine digits, with or without dashes or spaces; the Social Security Administration's never-issued
    ranges are refused: area 000, 666 or 900-999, group 00, serial 0000."""
    value = _text_of(raw)
    digits = value.replace("-", "").replace(" ", "")
    if not _NINE_DIGITS.fullmatch(digits) or not _SSN_SHAPES.fullmatch(value):
        raise FieldProblem("ssn_format", "must be nine digits (123-45-6789 or 123456789)")
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area == "000" or area == "666" or area[0] == "9":
        raise FieldProblem("ssn_area", "has an area number that is never issued (000, 666, 900-999)")
    if group == "00":
        raise FieldProblem("ssn_group", "has the group number 00, which is never issued")
    if serial == "0000":
        raise FieldProblem("ssn_serial", "has the serial number 0000, which is never issued")
    return Ssn(digits)


def dob_parser(today: Callable[[], date] = date.today) -> Parser:
    def parse(raw: Any) -> DateOfBirth:
        value = parse_date(raw)
        now = today()
        if value > now:
            raise FieldProblem("dob_future", "must not be in the future")
        if value.year < now.year - OLDEST_PLAUSIBLE_AGE_YEARS:
            raise FieldProblem("dob_too_old", f"must be within the last {OLDEST_PLAUSIBLE_AGE_YEARS} years")
        return DateOfBirth(value)

    return parse


def parse_state(raw: Any) -> str:
    """A state or territory as its two-letter code: the code in any case, or the full name as Synthea and
    other exports write it (``Massachusetts``, ``district of columbia``), any case and spacing."""
    code = state_code(_text_of(raw))
    if code is None:
        raise FieldProblem("us_state", "must be a US state or territory: its two-letter code or its name")
    return code


def parse_zip(raw: Any) -> str:
    if isinstance(raw, int) and not isinstance(raw, bool):  # a JSON number lost its leading zeros
        if not 0 <= raw < 1_000_000_000:
            raise FieldProblem("zip_format", "must be a 5-digit ZIP or ZIP+4 (12345 or 12345-6789)")
        value = f"{raw:05d}" if raw < 100_000 else f"{raw:09d}"
    else:
        value = _text_of(raw)
    digits = value.replace("-", "").replace(" ", "")
    if not _ZIP_DIGITS.fullmatch(digits) or not _ZIP_SHAPES.fullmatch(value):
        raise FieldProblem("zip_format", "must be a 5-digit ZIP or ZIP+4 (12345 or 12345-6789)")
    return digits if len(digits) == 5 else f"{digits[:5]}-{digits[5:]}"


def parse_phone(raw: Any) -> str:
    """A North American number in any common spelling, normalised to E.164: +1 and its ten digits.

    Area and exchange codes are not checked against the numbering plan: the fictional 555 numbers of
    test and demo data (+1555 0XX XXXX) must survive an export and re-import."""
    value = _text_of(raw)
    if not _PHONE_CHARACTERS.fullmatch(value):
        raise FieldProblem("phone_format", "must be a 10-digit US phone number, e.g. (555) 123-4567")
    digits = _NOT_DIGITS.sub("", value)
    if len(digits) == 11 and digits[0] == "1":
        digits = digits[1:]
    if len(digits) != 10:
        raise FieldProblem("phone_format", "must be a 10-digit US phone number, e.g. (555) 123-4567")
    return f"+1{digits}"


def parse_email(raw: Any) -> str:
    """An e-mail address, stored as given; leading whitespace before a formula character is kept
    (see :func:`_kept_text`), and so refused: an address holds no whitespace."""
    value = _kept_text(_check_string(raw)) if isinstance(raw, str) else _text_of(raw)
    if len(value) > 255 or not EMAIL_PATTERN.match(value):
        raise FieldProblem("email_format", "must look like name@example.org")
    return value

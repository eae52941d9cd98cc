"""Parsing and normalising one value of an import file.

Every parser takes what the file held (a string from CSV; a string, number,
boolean or null from JSON Lines) and returns the typed, normalised value, or
raises :class:`FieldProblem` naming the rule it broke. Messages never repeat
the value: an import file is full of PHI, and error reports and logs must
not be.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from carecli.data.bulk import jsontext
from carecli.data.crypto.phi import DateOfBirth, Ssn
from carecli.data.validation import EMAIL_PATTERN, US_STATE_CODES

#: The oldest date of birth we accept, in years before today.
OLDEST_PLAUSIBLE_AGE_YEARS = 130
#: TEXT columns have no declared size; a cell bigger than this is a broken file, not a note.
MAX_TEXT_CHARS = 65_536


class FieldProblem(ValueError):
    """A value broke ``rule``; ``message`` says what is expected, never what was found."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


Parser = Callable[[Any], Any]


def blank(raw: Any) -> bool:
    return raw is None or (isinstance(raw, str) and not raw.strip())


def _text_of(raw: Any) -> str:
    if isinstance(raw, str):
        return raw.strip()
    if isinstance(raw, bool):
        raise FieldProblem("type", "must be text, not true/false")
    if isinstance(raw, (int, float)):
        return str(raw)
    raise FieldProblem("type", "must be text")


def text(max_length: int | None) -> Parser:
    limit = max_length or MAX_TEXT_CHARS

    def parse(raw: Any) -> str:
        value = _text_of(raw)
        if "\x00" in value:
            raise FieldProblem("control_character", "must not contain NUL characters")
        if len(value) > limit:
            raise FieldProblem("max_length", f"must be at most {limit:,} characters (has {len(value):,})")
        return value

    return parse


def enum(choices: tuple[str, ...]) -> Parser:
    def parse(raw: Any) -> str:
        value = _text_of(raw).lower()
        if value not in choices:
            raise FieldProblem("enum", f"must be one of {', '.join(choices)}")
        return value

    return parse


#: an SSN as written: dashes or spaces between the groups, or none
_SSN_SHAPES = re.compile(r"[0-9]{3}-?[0-9]{2}-?[0-9]{4}|[0-9]{3} [0-9]{2} [0-9]{4}")
_US_DATE = re.compile(r"^([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})$")
_COMPACT_DATE = re.compile(r"^([0-9]{4})([0-9]{2})([0-9]{2})$")
_ISO_DATE = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})$")
DATE_FORMATS = "YYYY-MM-DD, MM/DD/YYYY or YYYYMMDD"


def parse_date(raw: Any) -> date:
    value = _text_of(raw)
    for pattern, order in ((_ISO_DATE, (0, 1, 2)), (_US_DATE, (2, 0, 1)), (_COMPACT_DATE, (0, 1, 2))):
        match = pattern.match(value)
        if match:
            parts = match.groups()
            try:
                return date(int(parts[order[0]]), int(parts[order[1]]), int(parts[order[2]]))
            except ValueError:
                raise FieldProblem("date", "is not a real calendar date") from None
    raise FieldProblem("date_format", f"must be a date as {DATE_FORMATS}")


def parse_timestamp(raw: Any) -> datetime:
    """ISO 8601 date-time; with an offset it is converted to UTC, without one it is taken as UTC."""
    value = _text_of(raw)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        try:
            return datetime.combine(parse_date(value), datetime.min.time())
        except FieldProblem:
            raise FieldProblem("datetime_format", "must be a date and time as YYYY-MM-DDTHH:MM[:SS][+HH:MM]") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
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


def integer(low: int | None = None, high: int | None = None) -> Parser:
    def parse(raw: Any) -> int:
        if isinstance(raw, bool):
            raise FieldProblem("integer", "must be a whole number")
        if isinstance(raw, int):
            value = raw
        else:
            text_value = _text_of(raw)
            if not re.fullmatch(r"[+-]?[0-9]{1,12}", text_value):
                raise FieldProblem("integer", "must be a whole number")
            value = int(text_value)
        _check_range(value, low, high)
        return value

    return parse


def decimal(precision: int, scale: int, low: Decimal | None = None, high: Decimal | None = None) -> Parser:
    """A NUMERIC(precision, scale) value; a leading '$' and thousands commas are accepted."""
    limit = Decimal(10) ** (precision - scale)

    def parse(raw: Any) -> Decimal:
        if isinstance(raw, bool):
            raise FieldProblem("number", "must be a number")
        text_value = _text_of(raw).replace(",", "").removeprefix("$")
        try:
            value = Decimal(text_value)
        except InvalidOperation:
            raise FieldProblem("number", "must be a number") from None
        if not value.is_finite():
            raise FieldProblem("number", "must be a number")
        if value != value.quantize(Decimal(1).scaleb(-scale)):
            raise FieldProblem("scale", f"must have at most {scale} decimal places")
        if abs(value) >= limit:
            raise FieldProblem("range", f"must be less than {limit:,} in size")
        _check_range(value, low, high)
        return value.quantize(Decimal(1).scaleb(-scale))

    return parse


def _check_range(value: Any, low: Any, high: Any) -> None:
    if low is not None and value < low:
        raise FieldProblem("range", f"must be at least {low}")
    if high is not None and value > high:
        raise FieldProblem("range", f"must be at most {high}")


def parse_uuid(raw: Any) -> uuid.UUID:
    try:
        return uuid.UUID(_text_of(raw))
    except ValueError:
        raise FieldProblem("uuid", "must be an id like 3f2c9a5e-8b1d-4c7a-9e2f-0a1b2c3d4e5f") from None


def parse_json_object(raw: Any) -> dict[str, Any]:
    """A JSON object, strictly (:mod:`~carecli.data.bulk.jsontext`): a cell nested 100,000 deep, with
    NaN, a duplicate key or a lone surrogate is this row's problem, not a crash or a failed batch."""
    try:
        if isinstance(raw, dict):  # from a JSON Lines file: decoded already, checked again here
            jsontext.check_value(raw)
            return raw
        value = jsontext.loads(_text_of(raw))
    except jsontext.JsonProblem as problem:
        if problem.rule == "json":
            raise FieldProblem("json", f"must be a JSON object: it {problem.message}") from None
        raise FieldProblem(problem.rule, problem.message) from None
    if not isinstance(value, dict):
        raise FieldProblem("json", "must be a JSON object")
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
    if not re.fullmatch(r"[0-9]{9}", digits) or not re.fullmatch(_SSN_SHAPES, value):
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
    value = _text_of(raw).upper()
    if value not in US_STATE_CODES:
        raise FieldProblem("us_state", "must be a two-letter US state or territory code")
    return value


def parse_zip(raw: Any) -> str:
    value = _text_of(raw)
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = f"{raw:05d}" if raw < 100_000 else f"{raw:09d}"
    digits = value.replace("-", "").replace(" ", "")
    if not re.fullmatch(r"[0-9]{5}|[0-9]{9}", digits) or not re.fullmatch(r"[0-9]{5}(?:[- ]?[0-9]{4})?", value):
        raise FieldProblem("zip_format", "must be a 5-digit ZIP or ZIP+4 (12345 or 12345-6789)")
    return digits if len(digits) == 5 else f"{digits[:5]}-{digits[5:]}"


def parse_phone(raw: Any) -> str:
    """A North American number in any common spelling, normalised to E.164: +1 and its ten digits.

    Area and exchange codes are not checked against the numbering plan: the fictional 555 numbers of
    test and demo data (+1555 0XX XXXX) must survive an export and re-import."""
    value = _text_of(raw)
    if not re.fullmatch(r"[0-9 \t().+\-]+", value):
        raise FieldProblem("phone_format", "must be a 10-digit US phone number, e.g. (555) 123-4567")
    digits = re.sub(r"\D", "", value)
    if len(digits) == 11 and digits[0] == "1":
        digits = digits[1:]
    if len(digits) != 10:
        raise FieldProblem("phone_format", "must be a 10-digit US phone number, e.g. (555) 123-4567")
    return f"+1{digits}"


def parse_email(raw: Any) -> str:
    value = _text_of(raw)
    if len(value) > 255 or not EMAIL_PATTERN.match(value):
        raise FieldProblem("email_format", "must look like name@example.org")
    return value

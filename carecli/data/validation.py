"""Validation before the database: every error names the field and the rule.

Column rules (required, VARCHAR length, enumerations) are read from the
mapped tables, so they cannot drift from the schema; entity rules (date
order, ranges, state codes, ZIP formats) are small functions the
repositories call.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, overload

from sqlalchemy import Boolean, Date, DateTime, Integer, Numeric, String, Table, Text, Uuid

from carecli.data.models import enums
from carecli.errors import ValidationError

ENUMERATIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("members", "status"): enums.MEMBER_STATUSES,
    ("call_records", "call_type"): enums.CALL_TYPES,
    ("call_records", "call_status"): enums.CALL_STATUSES,
    ("risk_flags", "risk_type"): enums.RISK_TYPES,
    ("risk_flags", "severity"): enums.SEVERITIES,
    ("member_insurance_plans", "status"): enums.ENROLLMENT_STATUSES,
    ("tokens", "token_type"): enums.TOKEN_TYPES,
}

US_STATE_CODES = frozenset(
    "AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND "
    "OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC PR GU VI AS MP".split()
)
#: full names of the states, DC and the territories of US_STATE_CODES, by their code (lower case, single spaces)
US_STATE_NAMES: dict[str, str] = {
    "alabama": "AL", "alaska": "AK", "arizona": "AZ", "arkansas": "AR", "california": "CA", "colorado": "CO",
    "connecticut": "CT", "delaware": "DE", "florida": "FL", "georgia": "GA", "hawaii": "HI", "idaho": "ID",
    "illinois": "IL", "indiana": "IN", "iowa": "IA", "kansas": "KS", "kentucky": "KY", "louisiana": "LA",
    "maine": "ME", "maryland": "MD", "massachusetts": "MA", "michigan": "MI", "minnesota": "MN",
    "mississippi": "MS", "missouri": "MO", "montana": "MT", "nebraska": "NE", "nevada": "NV",
    "new hampshire": "NH", "new jersey": "NJ", "new mexico": "NM", "new york": "NY", "north carolina": "NC",
    "north dakota": "ND", "ohio": "OH", "oklahoma": "OK", "oregon": "OR", "pennsylvania": "PA",
    "rhode island": "RI", "south carolina": "SC", "south dakota": "SD", "tennessee": "TN", "texas": "TX",
    "utah": "UT", "vermont": "VT", "virginia": "VA", "washington": "WA", "west virginia": "WV",
    "wisconsin": "WI", "wyoming": "WY",
    "district of columbia": "DC", "d c": "DC", "washington dc": "DC", "washington d c": "DC",
    "puerto rico": "PR", "guam": "GU", "american samoa": "AS",
    "virgin islands": "VI", "us virgin islands": "VI", "u s virgin islands": "VI",
    "united states virgin islands": "VI", "virgin islands of the united states": "VI",
    "northern mariana islands": "MP", "commonwealth of the northern mariana islands": "MP",
}
_NAME_NOISE = re.compile(r"[\s.,]+")


def state_code(value: str) -> str | None:
    """The two-letter code for a state or territory written as its code (any case) or its full name
    (any case, extra spaces, ``D.C.``-style dots), or None. ASCII only: ``str.upper`` would turn
    non-ASCII letters (the long s, ``ſ``) into ASCII ones."""
    if not value.isascii():
        return None
    code = value.strip().upper()
    if code in US_STATE_CODES:
        return code
    return US_STATE_NAMES.get(_NAME_NOISE.sub(" ", value).strip().lower())


# ASCII digits only ([0-9], not \d, which takes any script's digits) and \Z, not $ (which allows a final newline).
ZIP_PATTERN = re.compile(r"^[0-9]{5}(-[0-9]{4})?\Z")
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+\Z")
#: how carecli stores a phone number: E.164 for the North American plan (+1 and ten digits)
PHONE_PATTERN = re.compile(r"^\+1[0-9]{10}\Z")


def _type_ok(column_type: Any, value: Any) -> str | None:
    """None when ``value`` fits the column's Python type, else the expected kind."""
    if isinstance(column_type, Boolean):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(column_type, Integer):
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if isinstance(column_type, DateTime):
        return None if isinstance(value, datetime) else "a date and time"
    if isinstance(column_type, Date):
        return None if isinstance(value, date) and not isinstance(value, datetime) else "a date"
    if isinstance(column_type, (String, Text)):
        return None if isinstance(value, str) else "text"
    if isinstance(column_type, Numeric):
        return None if _finite_number(value) is not None else "a number"
    if isinstance(column_type, Uuid):
        import uuid

        return None if isinstance(value, uuid.UUID) else "an id"
    return None


#: a number as the app's forms may pass it as text: ASCII digits (Decimal() takes any script's, and NaN)
_NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z")


def _finite_number(value: Any) -> Decimal | None:
    """``value`` as a finite Decimal (an int, a finite float or Decimal, or plain ASCII decimal text), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else None
    if isinstance(value, str) and _NUMBER_TEXT.match(value.strip()):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            return None
    return None


def check_columns(table: Table, values: Mapping[str, Any], *, creating: bool,
                  generated: frozenset[str] = frozenset()) -> None:
    """Required fields, types, VARCHAR lengths and enumerations for ``values``.

    ``generated`` names columns the repository fills itself.
    """
    for name, value in values.items():
        if name not in table.c:
            raise ValidationError(name, "unknown_field", f"{table.name} has no field '{name}'")
        column = table.c[name]
        if value is None:
            if not column.nullable:
                raise ValidationError(name, "required", "is required")
            continue
        if isinstance(value, str) and not value.strip() and not column.nullable:
            raise ValidationError(name, "required", "must not be blank")
        expected = _type_ok(column.type, value)
        if expected:
            raise ValidationError(name, "type", f"must be {expected}")
        length = getattr(column.type, "length", None)
        if length and isinstance(value, str) and len(value) > length:
            raise ValidationError(name, "max_length", f"must be at most {length} characters (got {len(value)})")
        allowed = ENUMERATIONS.get((table.name, name))
        if allowed and value not in allowed:
            raise ValidationError(name, "enum", f"must be one of {', '.join(allowed)}")
    if creating:
        for column in table.columns:
            if column.name in generated or column.nullable or column.server_default is not None:
                continue
            if values.get(column.name) is None:
                raise ValidationError(column.name, "required", "is required")


def check_not_before(later_field: str, later: date | None, earlier_field: str, earlier: date | None) -> None:
    if later is not None and earlier is not None and later < earlier:
        raise ValidationError(later_field, "date_order", f"must not be before {earlier_field}")


def check_range(field: str, value: Any, low: Decimal | int | None, high: Decimal | int | None) -> None:
    if value is None:
        return
    number = _finite_number(value)
    if number is None:  # NaN, Infinity, or not a number: Decimal would raise on comparing it
        raise ValidationError(field, "number", "must be a number")
    if low is not None and number < low:
        raise ValidationError(field, "range", f"must be at least {low}")
    if high is not None and number > high:
        raise ValidationError(field, "range", f"must be at most {high}")


def check_state(value: str | None) -> None:
    if value is not None and value not in US_STATE_CODES:
        raise ValidationError("state", "us_state", "must be a two-letter US state or territory code")


def check_zip(value: str | None) -> None:
    if value is not None and not ZIP_PATTERN.match(value):
        raise ValidationError("zip_code", "zip_format", "must be 5 digits or ZIP+4 (12345-6789)")


def check_phone(value: str | None, field: str = "phone") -> None:
    if value is not None and not PHONE_PATTERN.match(value):
        raise ValidationError(field, "phone_format", "must be a 10-digit US phone number stored as +1XXXXXXXXXX "
                              "(type it as (555) 123-4567 in the app)")


def check_email(value: str | None) -> None:
    if value is not None and not EMAIL_PATTERN.match(value):
        raise ValidationError("email", "email_format", "must look like name@example.org")


#: a reason or note given with a step (cancelling a call, resolving a flag, ending an enrollment)
MAX_REASON_CHARS = 2000
SAY_WHY = "Say why (a few words are enough)."


@overload
def check_reason(text: str | None, *, field: str = ..., required: Literal[True] = ..., missing: str = ...) -> str: ...
@overload
def check_reason(text: str | None, *, field: str = ..., required: bool, missing: str = ...) -> str | None: ...


def check_reason(text: str | None, *, field: str = "reason", required: bool = True,
                 missing: str = SAY_WHY) -> str | None:
    """A typed reason, stripped: ``missing`` when blank and required (None when not), at most MAX_REASON_CHARS."""
    text = (text or "").strip()
    if not text:
        if required:
            raise ValidationError(field, "required", missing)
        return None
    if len(text) > MAX_REASON_CHARS:
        raise ValidationError(field, "max_length", f"Keep it to {MAX_REASON_CHARS:,} characters.")
    return text


def append_line(notes: str | None, line: str) -> str:
    """``notes`` with ``line`` added on a line of its own (a step's record in a call's or enrollment's notes)."""
    return f"{notes.rstrip()}\n{line}" if notes and notes.strip() else line

"""How the screens write values: phones, enum values, times in the user's zone, counts.

One place for it, so every screen says the same thing the same way:

* phones are stored in E.164 (``+15553248436``) and shown in national format for
  +1 numbers (``(555) 324-8436``), in international format otherwise;
* enum values are words (``information_provided`` -> ``information provided``);
* times are stored as naive UTC and shown in the display zone, ``[tui] timezone``
  (an IANA name; by default the system's local zone), with labels naming the zone
  (``Scheduled (EST)``); times typed in forms are read in that zone and stored in UTC;
* counts read naturally (``1 emergency access``, ``2 emergency accesses``).

The display zone is set once per app process (:func:`set_display_zone`, from the
settings, by the app at start): the functions below read it unless given a zone.
"""

from __future__ import annotations

from datetime import date, datetime, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

#: how forms read and show times (the first is how they are shown)
TIME_FORMATS = ("%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S")
SHOWN_TIME = TIME_FORMATS[0]
EMPTY = "—"

#: the zone times are shown and typed in; None: the system's local zone
_display_zone: tzinfo | None = None


def set_display_zone(name: str | None) -> None:
    """Show and read times in the IANA zone ``name`` (None: the system's local zone)."""
    global _display_zone
    _display_zone = ZoneInfo(name) if name else None


def display_zone() -> tzinfo | None:
    return _display_zone


def _zone(zone: tzinfo | None | str) -> tzinfo | None:
    """``"display"``: the display zone; another string: that IANA zone; a tzinfo (or None, the system's) as is."""
    if zone == "display":
        return _display_zone
    return ZoneInfo(zone) if isinstance(zone, str) else zone


# -- times -------------------------------------------------------------------------------------


def to_local(value: datetime, zone: tzinfo | None | str = "display") -> datetime:
    """A stored time (naive UTC, or aware) as an aware time in ``zone`` (None: the system's zone)."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    return aware.astimezone(_zone(zone))


def zone_name(at: datetime | None = None, zone: tzinfo | None | str = "display") -> str:
    """The zone as a label says it at the (UTC) moment ``at`` (now by default): ``CET``, ``EDT``, ``UTC+5:30``.

    The zone's own abbreviation when it has a proper one (letters), else its offset from UTC.
    """
    local = to_local(at or datetime.now(timezone.utc), zone)
    abbreviation = local.tzname() or ""
    if abbreviation.isalpha():
        return abbreviation
    offset = local.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    if minutes == 0:
        return "UTC"
    sign = "+" if minutes > 0 else "\u2212"  # a real minus sign, as people write it
    hours, rest = divmod(abs(minutes), 60)
    return f"UTC{sign}{hours}" + (f":{rest:02d}" if rest else "")


def in_zone(label: str, zone: tzinfo | None | str = "display") -> str:
    """A label naming the zone its times are in: ``Scheduled (CET)``."""
    return f"{label} ({zone_name(zone=zone)})"


def show_time(value: datetime | None, zone: tzinfo | None | str = "display") -> str:
    """A stored time in the display zone: ``2026-03-02 09:00`` (``—`` when there is none)."""
    if value is None:
        return EMPTY
    return to_local(value, zone).strftime(SHOWN_TIME)


def show_time_zoned(value: datetime | None, zone: tzinfo | None | str = "display") -> str:
    """A time with its zone, for sentences: ``2026-03-02 09:00 EST``."""
    if value is None:
        return EMPTY
    return f"{show_time(value, zone)} {zone_name(value, zone)}"


def show_date(value: date | None) -> str:
    """A date as stored (dates have no zone): ``2026-03-02``."""
    return EMPTY if value is None else value.isoformat()


def show_when(value: Any, zone: tzinfo | None | str = "display") -> str:
    """A date or a time, whichever ``value`` is (``—`` for none)."""
    if value is None:
        return EMPTY
    if isinstance(value, datetime):
        return show_time(value, zone)
    if isinstance(value, date):
        return show_date(value)
    return str(value)


def time_input(value: datetime | None, zone: tzinfo | None | str = "display") -> str:
    """A stored time as a form field shows it (in the display zone); empty when there is none."""
    return "" if value is None else show_time(value, zone)


def now_input(zone: tzinfo | None | str = "display") -> str:
    """Now, as a form field shows a time."""
    return show_time(datetime.now(timezone.utc), zone)


def time_hint(zone: tzinfo | None | str = "display") -> str:
    return f"use YYYY-MM-DD HH:MM ({zone_name(zone=zone)}), e.g. 2025-03-01 14:30"


def parse_time(text: str, zone: tzinfo | None | str = "display") -> datetime | None:
    """A time typed in the display zone as the naive UTC ``datetime`` the database keeps; None when blank.

    Raises ValueError (saying the format) when the text is not a time.
    """
    text = text.strip()
    if not text:
        return None
    for pattern in TIME_FORMATS:
        try:
            typed = datetime.strptime(text, pattern)
        except ValueError:
            continue
        local = typed.replace(tzinfo=tz) if (tz := _zone(zone)) is not None else typed.astimezone()
        return local.astimezone(timezone.utc).replace(tzinfo=None)
    raise ValueError(time_hint(zone))


# -- words, phones, counts ------------------------------------------------------------------------


def words(value: str | None) -> str:
    """An enum value as words: ``information_provided`` -> ``information provided`` (``—`` for none)."""
    return EMPTY if value is None or value == "" else str(value).replace("_", " ")


def show_phone(value: str | None) -> str:
    """A stored phone number as people read it: ``+15553248436`` -> ``(555) 324-8436``.

    carecli stores North American numbers only (``+1`` and ten digits); anything else
    (an older row) is shown as stored, which for E.164 is the international format.
    Never raises.
    """
    if not value:
        return ""
    text = str(value).strip()
    national = text.removeprefix("+1")
    if text.startswith("+1") and len(national) == 10 and national.isascii() and national.isdigit():
        return f"({national[:3]}) {national[3:6]}-{national[6:]}"
    return text


def plural(count: int, singular: str, many: str | None = None) -> str:
    """``1 call``, ``2 calls``, ``2 emergency accesses`` (``many`` for irregular plurals)."""
    if count == 1:
        return f"1 {singular}"
    if many is None:
        many = singular + ("es" if singular.endswith(("s", "sh", "ch", "x", "z")) else "s")
    return f"{count:,} {many}"

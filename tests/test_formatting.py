"""The screens' formatters (carecli/screens/formatting.py): phones, enum words, times in a zone, counts."""

from __future__ import annotations

from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carecli.screens import formatting as fmt
from carecli.services.desk import local_day_bounds

NEW_YORK = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")
#: 2026-03-02 14:00 UTC: 09:00 in New York (EST), 19:30 in Kolkata (IST)
WINTER = datetime(2026, 3, 2, 14, 0)
#: 2026-07-01 14:00 UTC: 10:00 in New York (EDT)
SUMMER = datetime(2026, 7, 1, 14, 0)


@pytest.fixture(autouse=True)
def _display_zone_back():
    yield
    fmt.set_display_zone(None)


# -- phones ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("stored", "shown"), [
    ("+15553248436", "(555) 324-8436"),
    ("+15035550101", "(503) 555-0101"),
    (None, ""),
    ("", ""),
    ("+442079460958", "+442079460958"),  # not North American: as stored (E.164, the international format)
    ("555-0142", "555-0142"),  # an old free-form value: as stored
    ("+1555324843", "+1555324843"),  # nine digits: not a number this formatter can vouch for
    ("+1555３２４8436", "+1555３２４8436"),  # other scripts' digits are not ASCII digits
])
def test_phones_read_in_national_format(stored, shown) -> None:
    assert fmt.show_phone(stored) == shown


@given(st.from_regex(r"\A\+1[0-9]{10}\Z"))
def test_every_stored_north_american_phone_renders_nationally(stored: str) -> None:
    shown = fmt.show_phone(stored)
    assert shown == f"({stored[2:5]}) {stored[5:8]}-{stored[8:]}"


@given(st.one_of(st.none(), st.text(), st.from_regex(r"\A\+[0-9]{1,15}\Z")))
def test_the_phone_formatter_never_raises(value: str | None) -> None:
    assert isinstance(fmt.show_phone(value), str)


# -- words and counts -------------------------------------------------------------------------------


def test_enum_values_read_as_words() -> None:
    assert fmt.words("information_provided") == "information provided"
    assert fmt.words("no_answer") == "no answer"
    assert fmt.words("active") == "active"
    assert fmt.words(None) == "—"


@pytest.mark.parametrize(("count", "noun", "many", "said"), [
    (0, "emergency access", None, "0 emergency accesses"),
    (1, "emergency access", None, "1 emergency access"),
    (2, "emergency access", None, "2 emergency accesses"),
    (1, "call", None, "1 call"),
    (3, "call", None, "3 calls"),
    (1234, "row", None, "1,234 rows"),
    (2, "person", "people", "2 people"),
])
def test_counts_read_naturally(count, noun, many, said) -> None:
    assert fmt.plural(count, noun, many) == said


# -- times -------------------------------------------------------------------------------------------


def test_a_stored_utc_time_shows_in_the_zone_asked_for() -> None:
    assert fmt.show_time(WINTER, NEW_YORK) == "2026-03-02 09:00"
    assert fmt.show_time(WINTER, KOLKATA) == "2026-03-02 19:30"
    assert fmt.show_time(SUMMER, NEW_YORK) == "2026-07-01 10:00"  # daylight saving time
    assert fmt.show_time(WINTER, timezone.utc) == "2026-03-02 14:00"
    assert fmt.show_time(None, NEW_YORK) == "—"


def test_zone_names_say_which_zone_and_offsets_when_there_is_no_name() -> None:
    assert fmt.zone_name(WINTER, NEW_YORK) == "EST"
    assert fmt.zone_name(SUMMER, NEW_YORK) == "EDT"
    assert fmt.zone_name(WINTER, KOLKATA) == "IST"
    assert fmt.zone_name(WINTER, ZoneInfo("UTC")) == "UTC"
    assert fmt.zone_name(WINTER, ZoneInfo("America/Sao_Paulo")) == "UTC\u22123"  # tzdata's name is "-03"
    assert fmt.zone_name(WINTER, ZoneInfo("Asia/Kathmandu")) == "UTC+5:45"
    assert fmt.show_time_zoned(WINTER, KOLKATA) == "2026-03-02 19:30 IST"
    assert fmt.show_time_zoned(SUMMER, NEW_YORK) == "2026-07-01 10:00 EDT"


def test_the_display_zone_is_the_default_of_every_formatter() -> None:
    fmt.set_display_zone("Asia/Kolkata")
    assert fmt.show_time(WINTER) == "2026-03-02 19:30"
    assert fmt.show_when(WINTER) == "2026-03-02 19:30"
    assert fmt.show_when(date(2026, 3, 2)) == "2026-03-02"  # a date has no zone
    assert fmt.in_zone("Scheduled") == "Scheduled (IST)"
    assert fmt.time_input(WINTER) == "2026-03-02 19:30"
    assert fmt.parse_time("2026-03-02 19:30") == WINTER


def test_times_typed_in_the_zone_are_stored_in_utc() -> None:
    assert fmt.parse_time("2026-03-02 09:00", NEW_YORK) == WINTER
    assert fmt.parse_time("2026-07-01T10:00", NEW_YORK) == SUMMER
    assert fmt.parse_time("2026-03-02 19:30:00", KOLKATA) == WINTER
    assert fmt.parse_time("   ", NEW_YORK) is None
    with pytest.raises(ValueError, match=r"use YYYY-MM-DD HH:MM \(EST\)"):
        fmt.parse_time("2 March", NEW_YORK)


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1)))
def test_a_time_shown_in_a_zone_reads_back_as_the_same_minute(stored: datetime) -> None:
    stored = stored.replace(second=0, microsecond=0)
    for zone in (KOLKATA, ZoneInfo("UTC")):  # no daylight saving time: every local minute is one instant
        assert fmt.parse_time(fmt.time_input(stored, zone), zone) == stored


def test_today_follows_the_zone() -> None:
    # 02:00 UTC on March 2nd is still March 1st in New York; the day's bounds are its local midnights, in UTC.
    now = datetime(2026, 3, 2, 2, 0, tzinfo=timezone.utc)
    assert local_day_bounds(now, "America/New_York") == (date(2026, 3, 1), datetime(2026, 3, 1, 5, 0),
                                                         datetime(2026, 3, 2, 5, 0))
    assert local_day_bounds(now, "Asia/Kolkata") == (date(2026, 3, 2), datetime(2026, 3, 1, 18, 30),
                                                     datetime(2026, 3, 2, 18, 30))
    # The day daylight saving time starts in New York has 23 hours.
    spring = datetime(2026, 3, 8, 12, 0, tzinfo=timezone.utc)
    assert local_day_bounds(spring, "America/New_York")[1:] == (datetime(2026, 3, 8, 5, 0),
                                                                datetime(2026, 3, 9, 4, 0))

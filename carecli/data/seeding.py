"""Synthetic demo data for both databases, bulk-loaded with COPY.

``carecli seed --members N`` calls :func:`seed_demo_data`. It fills empty,
migrated databases with roles and users (identity) and insurance plans,
specialists, members, enrollments, calls and risk flags (platform), fast
enough that a million members is practical:

* rows go to the server with binary ``COPY ... FROM STDIN`` through
  psycopg 3, never through the ORM, and no Faker: names, streets and places
  come from the small lists below;
* generation works in plain integers (epoch seconds, epoch days, 128-bit
  ids) and three tiny binary dumpers turn those into PostgreSQL's wire
  format, so no ``datetime`` or ``uuid.UUID`` object is built per row;
* ids are generated up front and sorted, and children are written in
  member order, so primary keys and member_id indexes grow at their right
  edge instead of on random pages;
* for a large load the other secondary indexes and the foreign keys of the
  platform tables are dropped first and re-created at the end of the same
  transaction (a bulk build and one validating join are much cheaper than
  maintaining them row by row), with the statistics targets of their
  columns; a failure rolls all of it back. Unlike an import
  (:mod:`carecli.data.deferred_indexes`), which commits batch by batch and
  so records each dropped index durably, the seed needs no record: its drops
  commit with its rows or not at all, and a ``kill -9`` leaves the tables
  empty with every index in place.

Measured on a 2-core machine with PostgreSQL 15 (``benchmarks/seed_bench.py``),
a million members (3.4 million rows in all): ~27 s. With every index and
foreign key in place during the load ~70 s, with only the indexes deferred
~50 s; with ids in random instead of sorted order ~38 s. Binary COPY took
~4.8 s for the million members where text COPY of preformatted lines took
~7.8 s.

Everything is drawn from ``random.Random(seed)``, ids included: version-7
UUIDs (see :mod:`carecli.data.ids`) whose leading 48 bits are the run's
start in milliseconds and whose random part comes from the generator, so
the same seed gives the same names, relationships and id random parts (the
ids differ only in their timestamp); ``seed=None`` gives fresh data each run. Dates are
relative to the current UTC day so that worklists (overdue, today, next two
weeks) always have content; timestamps are naive UTC like every timestamp in
the schema.

Given a field cipher, every member gets a synthetic SSN and date of birth,
encrypted exactly as the repositories would (AES-256-GCM under the primary
data key, bound to the member's id); the plaintext exists only in memory for
the moment of encryption. Without one, ``encrypted_ssn`` and
``encrypted_dob`` stay NULL. All contact data is fictional by construction: phone numbers
are ``+1555xxxxxxx``, e-mail addresses use the reserved ``example.com`` /
``example.org`` domains. Nothing here prints row contents.
"""

from __future__ import annotations

import functools
import random
import struct
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.types.json import Jsonb
from sqlalchemy import Engine

from carecli.data.ids import v7_int
from carecli.data.models.enums import CALL_STATUSES, CALL_TYPES, RISK_TYPES, SEVERITIES
from carecli.data.permissions import DEFAULT_ROLES as _ROLE_CATALOG
from carecli.errors import CarecliError

if TYPE_CHECKING:
    from carecli.data.crypto.fields import FieldCipher

__all__ = ["DEFAULT_ROLES", "SeedSummary", "SeedTargetNotEmpty", "seed_demo_data"]

ProgressCallback = Callable[[str, int, int], None]

# --------------------------------------------------------------------------
# Role catalog
# --------------------------------------------------------------------------

#: name -> (description, permissions). The one catalog lives with the
#: permission vocabulary the repositories check (carecli.data.permissions);
#: seeding inserts the roles that do not exist yet and leaves existing ones
#: (and their permissions) alone.
DEFAULT_ROLES: dict[str, tuple[str, list[str]]] = _ROLE_CATALOG
# Staff the seed creates: supervisors and specialists in numbers, and one
# user for every other role in the catalog (admin, auditor, batch jobs...).
_SCALED_ROLES = ("supervisor", "specialist")
_SINGLE_USER_ROLES = tuple(name for name in DEFAULT_ROLES if name not in _SCALED_ROLES)
assert {"admin", *_SCALED_ROLES} <= set(DEFAULT_ROLES), "the seed needs admin, supervisor and specialist roles"

# --------------------------------------------------------------------------
# Public result types
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedSummary:
    """What a seed run inserted: rows per table (every table touched) and wall time."""

    counts: dict[str, int]
    seconds: float


class SeedTargetNotEmpty(Exception):
    """A table that seeding fills already holds rows; nothing was written."""

    def __init__(self, database: str, table: str, rows: int) -> None:
        self.database = database
        self.table = table
        self.rows = rows
        super().__init__(
            f"{database}.{table} already has {rows:,} row{'s' if rows != 1 else ''}; "
            "seeding only fills empty databases, so nothing was written. To start over, "
            "empty both databases (`carecli db downgrade base` then `carecli db upgrade`, "
            "or drop and re-create them) and seed again."
        )


# --------------------------------------------------------------------------
# Tunables (module constants so the benchmark can compare strategies)
# --------------------------------------------------------------------------

#: Rows per generated batch; also how often ``progress`` is called.
CHUNK_ROWS = 50_000
#: From this many members on, the platform tables' secondary indexes and
#: foreign keys are dropped before the load and re-created after it. Measured:
#: 2,000 members take 0.15 s either way, 10,000 take 0.43 s deferred against
#: 0.61 s kept; below the threshold, small runs skip the DDL altogether.
DEFER_INDEXES_MIN_MEMBERS = 5_000
#: Whether the deferred set includes foreign keys (re-adding one validates
#: the whole table with a single join instead of one lookup per row).
DEFER_FOREIGN_KEYS = True

IDENTITY_TABLES = ("users",)
#: In load order: parents before children.
PLATFORM_TABLES = (
    "insurance_plans",
    "specialists",
    "specialist_insurance_plans",
    "members",
    "member_insurance_plans",
    "call_records",
    "risk_flags",
)

# --------------------------------------------------------------------------
# Name, street and place lists (fictional combinations of common names)
# --------------------------------------------------------------------------

FIRST_NAMES: tuple[str, ...] = (
    "James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David", "Elizabeth",
    "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Charles", "Karen",
    "Christopher", "Lisa", "Daniel", "Nancy", "Matthew", "Betty", "Anthony", "Margaret", "Mark", "Sandra",
    "Donald", "Ashley", "Steven", "Kimberly", "Paul", "Emily", "Andrew", "Donna", "Joshua", "Michelle",
    "Kenneth", "Carol", "Kevin", "Amanda", "Brian", "Dorothy", "George", "Melissa", "Timothy", "Deborah",
    "Ronald", "Stephanie", "Edward", "Rebecca", "Jason", "Sharon", "Jeffrey", "Laura", "Ryan", "Cynthia",
    "Jacob", "Kathleen", "Gary", "Amy", "Nicholas", "Angela", "Eric", "Shirley", "Jonathan", "Anna",
    "Stephen", "Brenda", "Larry", "Pamela", "Justin", "Emma", "Scott", "Nicole", "Brandon", "Helen",
    "Benjamin", "Samantha", "Samuel", "Katherine", "Gregory", "Christine", "Alexander", "Debra", "Frank",
    "Rachel", "Patrick", "Carolyn", "Raymond", "Janet", "Jack", "Catherine", "Dennis", "Maria", "Jerry",
    "Heather", "Tyler", "Diane", "Aaron", "Ruth", "José", "Julie", "Adam", "Olivia", "Nathan", "Joyce",
    "Henry", "Virginia", "Douglas", "Victoria", "Zachary", "Kelly", "Peter", "Lauren", "Kyle", "Christina",
    "Ethan", "Joan", "Walter", "Evelyn", "Noah", "Judith", "Jeremy", "Megan", "Christian", "Andrea",
    "Keith", "Cheryl", "Roger", "Hannah", "Terry", "Jacqueline", "Gerald", "Martha", "Harold", "Gloria",
    "Sean", "Teresa", "Austin", "Ann", "Carl", "Sara", "Arthur", "Madison", "Lawrence", "Frances",
    "Dylan", "Kathryn", "Jesse", "Janice", "Jordan", "Jean", "Bryan", "Abigail", "Billy", "Alice",
    "Joe", "Julia", "Bruce", "Judy", "Gabriel", "Sophia", "Logan", "Grace", "Albert", "Denise",
    "Willie", "Amber", "Alan", "Doris", "Juan", "Marilyn", "Wayne", "Danielle", "Elijah", "Beverly",
    "Randy", "Isabella", "Roy", "Theresa", "Vincent", "Diana", "Ralph", "Natalie", "Eugene", "Brittany",
    "Russell", "Charlotte", "Bobby", "Marie", "Mason", "Kayla", "Philip", "Alexis", "Louis", "Lori",
    "Luis", "Ana", "Carlos", "Rosa", "Miguel", "Sofía", "Diego", "Camila", "Mateo", "Lucia",
    "Wei", "Mei", "Hiroshi", "Yuki", "Arjun", "Priya", "Rahul", "Ananya", "Minh", "Linh",
    "Omar", "Fatima", "Ahmed", "Aisha", "Kwame", "Amara", "Tariq", "Leila", "Dmitri", "Olga",
    "Liam", "Ava", "Lucas", "Mia", "Oliver", "Harper", "Elias", "Aria", "Caleb", "Nora",
    "Isaac", "Hazel", "Owen", "Violet", "Levi", "Aurora", "Hunter", "Stella", "Connor", "Lucy",
)

LAST_NAMES: tuple[str, ...] = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
    "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin",
    "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson",
    "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores",
    "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts",
    "Gomez", "Phillips", "Evans", "Turner", "Diaz", "Parker", "Cruz", "Edwards", "Collins", "Reyes",
    "Stewart", "Morris", "Morales", "Murphy", "Cook", "Rogers", "Gutierrez", "Ortiz", "Morgan", "Cooper",
    "Peterson", "Bailey", "Reed", "Kelly", "Howard", "Ramos", "Kim", "Cox", "Ward", "Richardson",
    "Watson", "Brooks", "Chavez", "Wood", "James", "Bennett", "Gray", "Mendoza", "Ruiz", "Hughes",
    "Price", "Alvarez", "Castillo", "Sanders", "Patel", "Myers", "Long", "Ross", "Foster", "Jimenez",
    "Powell", "Jenkins", "Perry", "Russell", "Sullivan", "Bell", "Coleman", "Butler", "Henderson", "Barnes",
    "Gonzales", "Fisher", "Vasquez", "Simmons", "Romero", "Jordan", "Patterson", "Alexander", "Hamilton",
    "Graham", "Reynolds", "Griffin", "Wallace", "Moreno", "West", "Cole", "Hayes", "Bryant", "Herrera",
    "Gibson", "Ellis", "Tran", "Medina", "Aguilar", "Stevens", "Murray", "Ford", "Castro", "Marshall",
    "Owens", "Harrison", "Fernandez", "McDonald", "Woods", "Washington", "Kennedy", "Wells", "Vargas",
    "Henry", "Chen", "Freeman", "Webb", "Tucker", "Guzman", "Burns", "Crawford", "Olson", "Simpson",
    "Porter", "Hunter", "Gordon", "Mendez", "Silva", "Shaw", "Snyder", "Mason", "Dixon", "Muñoz",
    "Hunt", "Hicks", "Holmes", "Palmer", "Wagner", "Black", "Robertson", "Boyd", "Rose", "Stone",
    "Salazar", "Fox", "Warren", "Mills", "Meyer", "Rice", "Schmidt", "Garza", "Daniels", "Ferguson",
    "Nichols", "Stephens", "Soto", "Weaver", "Ryan", "Gardner", "Payne", "Grant", "Dunn", "Kelley",
    "Spencer", "Hawkins", "Arnold", "Pierce", "Vazquez", "Hansen", "Peters", "Santos", "Hart", "Bradley",
    "Knight", "Elliott", "Cunningham", "Duncan", "Armstrong", "Hudson", "Carroll", "Lane", "Riley", "Andrews",
    "Alvarado", "Ray", "Delgado", "Berry", "Perkins", "Hoffman", "Johnston", "Matthews", "Peña", "Richards",
    "Wang", "Li", "Zhang", "Liu", "Huang", "Yamamoto", "Tanaka", "Sato", "Shah", "Singh",
    "Kumar", "Gupta", "Pham", "Le", "Hoang", "Park", "Choi", "Cohen", "Novak", "Kowalski",
    "O'Brien", "O'Connor", "Murphy-Lane", "St. James", "De la Cruz", "Rossi", "Ivanov", "Okafor", "Mensah",
    "Haddad",
)

STREET_NAMES: tuple[str, ...] = (
    "Main St", "Oak St", "Maple Ave", "Cedar Ln", "Pine St", "Elm St", "Washington Ave", "Lake Dr",
    "Hill Rd", "Park Ave", "Sunset Blvd", "River Rd", "Church St", "Highland Ave", "Jefferson St",
    "Lincoln Ave", "Franklin St", "Madison Ave", "Chestnut St", "Walnut St", "Spruce St", "Willow Way",
    "Birch Ct", "Dogwood Dr", "Magnolia Blvd", "Cherry Ln", "Aspen Ct", "Sycamore St", "Hickory Ln",
    "Laurel Ave", "Poplar St", "Juniper Dr", "Meadow Ln", "Valley Rd", "Forest Ave", "Ridge Rd",
    "Spring St", "Mill Rd", "Center St", "Market St", "Broad St", "High St", "School St", "Union St",
    "Prospect Ave", "Grove St", "Summit Ave", "Orchard Rd", "Bridge St", "Water St", "Front St",
    "Liberty St", "Pleasant St", "Railroad Ave", "College Ave", "Academy St", "Harbor Dr", "Bay St",
    "Ocean Ave", "Beach Rd", "Canyon Rd", "Mesa Dr", "Desert View Dr", "Prairie Ln", "Ranch Rd",
    "Meadowbrook Dr", "Brookside Dr", "Fairview Ave", "Greenwood Ave", "Woodland Dr", "Lakeview Dr",
    "Hillcrest Dr", "Crestview Rd", "Riverside Dr", "Parkway Dr", "Kingston Rd", "Windsor Ave",
    "Hampton Ct", "Cambridge Dr", "Oxford St", "Devon Rd", "Sherwood Dr", "Heritage Ln", "Colonial Dr",
    "Victoria St", "Adams St", "Monroe St", "Jackson Ave", "Hamilton Ave", "Grant St", "Sheridan Rd",
    "Roosevelt Blvd", "Kennedy Dr", "Wilson Ave", "Harrison St", "Cleveland Ave", "Taylor St",
    "Pierce St", "Tyler Ave", "Polk St", "Fillmore St", "Buchanan Dr", "Garfield Ave", "Arthur Ave",
    "Mckinley Ave", "Clay St", "Calhoun St", "Webster Ave", "Ash St", "Beech St", "Linden Ave",
    "Locust St", "Mulberry Ln", "Peach Tree Ln", "Pecan St", "Redwood Dr", "Sequoia Ct", "Cypress Ave",
    "Palm Dr", "Olive St", "Vine St", "Rose Ln", "Lilac Ln", "Ivy Ct", "Fern St", "Clover Ln",
    "Sage Ct", "Heather Ln", "Tulip Dr", "Daisy Ln", "Iris Ct", "Orchid Way", "Jasmine Ct",
    "Cardinal Dr", "Bluebird Ln", "Robin Rd", "Sparrow Ct", "Falcon Dr", "Eagle Way", "Hawk Ridge Rd",
    "Quail Run", "Fox Run", "Deer Path", "Bear Creek Rd", "Mill Creek Rd", "Stony Brook Rd",
)

#: Real US (city, state, 3-digit ZIP prefix) tuples; the last two ZIP digits
#: (and the +4 part) are random, so addresses are plausible but not real.
PLACES: tuple[tuple[str, str, str], ...] = (
    ("New York", "NY", "100"), ("Los Angeles", "CA", "900"), ("Chicago", "IL", "606"),
    ("Houston", "TX", "770"), ("Phoenix", "AZ", "850"), ("Philadelphia", "PA", "191"),
    ("San Antonio", "TX", "782"), ("San Diego", "CA", "921"), ("Dallas", "TX", "752"),
    ("San Jose", "CA", "951"), ("Austin", "TX", "787"), ("Jacksonville", "FL", "322"),
    ("Fort Worth", "TX", "761"), ("Columbus", "OH", "432"), ("Charlotte", "NC", "282"),
    ("Indianapolis", "IN", "462"), ("San Francisco", "CA", "941"), ("Seattle", "WA", "981"),
    ("Denver", "CO", "802"), ("Washington", "DC", "200"), ("Boston", "MA", "021"),
    ("El Paso", "TX", "799"), ("Nashville", "TN", "372"), ("Detroit", "MI", "482"),
    ("Oklahoma City", "OK", "731"), ("Portland", "OR", "972"), ("Las Vegas", "NV", "891"),
    ("Memphis", "TN", "381"), ("Louisville", "KY", "402"), ("Baltimore", "MD", "212"),
    ("Milwaukee", "WI", "532"), ("Albuquerque", "NM", "871"), ("Tucson", "AZ", "857"),
    ("Fresno", "CA", "937"), ("Sacramento", "CA", "958"), ("Kansas City", "MO", "641"),
    ("Mesa", "AZ", "852"), ("Atlanta", "GA", "303"), ("Omaha", "NE", "681"),
    ("Colorado Springs", "CO", "809"), ("Raleigh", "NC", "276"), ("Miami", "FL", "331"),
    ("Minneapolis", "MN", "554"), ("Tulsa", "OK", "741"), ("Cleveland", "OH", "441"),
    ("Wichita", "KS", "672"), ("New Orleans", "LA", "701"), ("Tampa", "FL", "336"),
    ("Honolulu", "HI", "968"), ("Pittsburgh", "PA", "152"), ("Cincinnati", "OH", "452"),
    ("St. Louis", "MO", "631"), ("Orlando", "FL", "328"), ("Salt Lake City", "UT", "841"),
    ("Richmond", "VA", "232"), ("Boise", "ID", "837"), ("Des Moines", "IA", "503"),
    ("Birmingham", "AL", "352"), ("Providence", "RI", "029"), ("Hartford", "CT", "061"),
    ("Buffalo", "NY", "142"), ("Madison", "WI", "537"), ("Little Rock", "AR", "722"),
    ("Anchorage", "AK", "995"), ("Burlington", "VT", "054"), ("Portland", "ME", "041"),
    ("Charleston", "SC", "294"), ("Jackson", "MS", "392"), ("Billings", "MT", "591"),
    ("Fargo", "ND", "581"), ("Sioux Falls", "SD", "571"), ("Cheyenne", "WY", "820"),
    ("Manchester", "NH", "031"), ("Wilmington", "DE", "198"), ("Newark", "NJ", "071"),
)

_UNIT_PREFIXES = ("Apt", "Apt", "Unit", "Suite", "#")

# --------------------------------------------------------------------------
# Templates (short, generic, no member specifics)
# --------------------------------------------------------------------------

_COMPLETED_OUTCOMES: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("successful", 45, (
        "Reviewed care plan and confirmed upcoming appointments.",
        "Completed wellness outreach; member engaged and had no concerns.",
        "Discussed medication adherence; member is following the plan.",
        "Confirmed preventive screening is scheduled.",
    )),
    ("information_provided", 20, (
        "Explained plan benefits and in-network options.",
        "Provided information on preventive care coverage.",
        "Walked through how to find an in-network specialist.",
    )),
    ("resolved", 15, (
        "Resolved a question about a recent claim.",
        "Updated contact preferences at the member's request.",
        "Clarified prior authorization status.",
    )),
    ("referred", 10, (
        "Referred to care coordination for follow-up.",
        "Referred to behavioral health resources.",
        "Referred to the pharmacy team about a refill.",
    )),
    ("declined", 5, (
        "Member declined program enrollment at this time.",
        "Member prefers no further outreach calls this quarter.",
    )),
    ("rescheduled", 5, (
        "Member asked to continue the conversation later.",
        "Call cut short; member asked for another time.",
    )),
)
_NO_ANSWER = (
    ("no_answer", "No answer; no voicemail available."),
    ("voicemail_left", "No answer; left a voicemail with the callback number."),
    ("voicemail_left", "No answer; left a brief voicemail."),
)
_CANCELLED_NOTES = (
    "Cancelled at the member's request.",
    "Cancelled: specialist unavailable.",
    "Cancelled: duplicate appointment.",
    "Cancelled: member reached through another channel.",
)
_SCHEDULED_NOTES = (
    "Scheduled from the outreach campaign list.",
    "Member asked for a call back at this time.",
    "Follow-up to a previous conversation.",
)
_RISK_DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "medical": (
        "Reports difficulty obtaining a prescribed medication.",
        "Missed several recent specialist appointments.",
        "Recent emergency visit; care follow-up needed.",
        "Reports symptoms that warrant a clinical review.",
    ),
    "financial": (
        "Concerned about out-of-pocket costs for ongoing treatment.",
        "Reports trouble paying premiums.",
        "Skipping care because of cost.",
    ),
    "compliance": (
        "Consent on file is out of date.",
        "Coverage documents need verification.",
        "Contact preferences conflict with the outreach schedule.",
    ),
    "safety": (
        "Lives alone and reports a recent fall.",
        "Expressed concern about safety at home.",
        "Needs help arranging in-home support.",
    ),
    "other": (
        "Transportation barriers to appointments.",
        "Requests language assistance for future calls.",
        "Asked for written materials by mail.",
    ),
}
_ENROLLMENT_NOTES = (
    "Enrolled during open enrollment.",
    "Employer group plan.",
    "Transferred from a previous carrier.",
    "Secondary coverage through a spouse.",
    "Special enrollment period after a qualifying event.",
)

# --------------------------------------------------------------------------
# Integer time and ids, and their binary COPY dumpers
# --------------------------------------------------------------------------

_DAY = 86_400
_UNIX_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_UNIX_DAY_2000 = 10_957  # days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch
_UNIX_SECONDS_2000 = _UNIX_DAY_2000 * _DAY
_DAY_2019 = date(2019, 1, 1).toordinal() - date(1970, 1, 1).toordinal()
# Version 7 (RFC 9562): 48-bit Unix milliseconds, then version, random, variant 10xx, random.
_UUID_RANDOM = (1 << 80) - 1
_UUID_CLEAR = ~((0xF << 76) | (0x3 << 62)) & _UUID_RANDOM
_pack_int8 = struct.Struct(">q").pack
_pack_int4 = struct.Struct(">i").pack


class _UuidIntDumper(Dumper):
    """uuid column <- a 128-bit int (building ``uuid.UUID`` objects would cost ~1 us a row)."""

    oid = psycopg.postgres.types["uuid"].oid
    format = Format.BINARY

    def dump(self, obj: int) -> bytes:
        return obj.to_bytes(16, "big")


class _EpochTimestampDumper(Dumper):
    """timestamp (without time zone) column <- whole seconds since 1970-01-01 UTC."""

    oid = psycopg.postgres.types["timestamp"].oid
    format = Format.BINARY

    def dump(self, obj: int) -> bytes:
        return _pack_int8((obj - _UNIX_SECONDS_2000) * 1_000_000)


class _EpochDateDumper(Dumper):
    """date column <- days since 1970-01-01."""

    oid = psycopg.postgres.types["date"].oid
    format = Format.BINARY

    def dump(self, obj: int) -> bytes:
        return _pack_int4(obj - _UNIX_DAY_2000)


def _new_id(rng: random.Random, clock: _Clock) -> int:
    """A version-7 UUID (as an int): the run's millisecond, then bits drawn from ``rng`` (reproducible)."""
    return clock.id_prefix | (rng.getrandbits(128) & _UUID_CLEAR)


def _sorted_ids(rng: random.Random, count: int, clock: _Clock) -> list[int]:
    """``count`` new ids, in ascending order.

    Rows are written in this order, so every primary key (and the member_id
    columns of child tables, which follow the member order) is appended at
    the right edge of its b-tree instead of landing on a random page: the
    server's index maintenance during COPY gets several times cheaper. Ids
    are version-7 UUIDs (see :mod:`carecli.data.ids`) stamped with the run's
    millisecond, so ids the app makes later sort after them; the random part
    is drawn from ``rng`` (128 bits, of which the low 74 are kept), so the
    same seed gives the same random parts and the same names as ever.
    """
    getrandbits = rng.getrandbits
    prefix = clock.id_prefix
    ids = [prefix | (getrandbits(128) & _UUID_CLEAR) for _ in range(count)]
    ids.sort()
    return ids


def _uuid_text(value: int) -> str:
    """Canonical text form of an int UUID (for the few statements that bind ids)."""
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class _Clock:
    """The one "now" a seed run is relative to (UTC, whole seconds)."""

    now: int
    #: The run's start in Unix milliseconds: the timestamp of every id the run makes.
    unix_ms: int

    @classmethod
    def start(cls) -> _Clock:
        unix_ns = time.time_ns()
        return cls(now=unix_ns // 1_000_000_000, unix_ms=unix_ns // 1_000_000)

    @property
    def today(self) -> int:
        return self.now // _DAY

    @property
    def id_prefix(self) -> int:
        """The bits every id of this run shares (see :func:`carecli.data.ids.v7_int`)."""
        return v7_int(self.unix_ms, 0)


def _slug(name: str) -> str:
    """E-mail-safe lower-case form of a name: ASCII letters and digits, accents dropped (josé: jose)."""
    return "".join(ch for ch in unicodedata.normalize("NFKD", name.lower()) if ch.isascii() and ch.isalnum())


# (name, slug) pairs, so a row gets both with one draw.
_FIRSTS = tuple((name, _slug(name)) for name in FIRST_NAMES)
_LASTS = tuple((name, _slug(name)) for name in LAST_NAMES)

# --------------------------------------------------------------------------
# Identity data (small: built in memory)
# --------------------------------------------------------------------------


@dataclass
class _IdentityData:
    """Users (and the role each gets by name) plus the specialists built on them."""

    users: list[tuple[Any, ...]]  # rows for COPY, role name in the role_id slot
    specialists: list[tuple[Any, ...]]  # rows for COPY into platform.specialists
    active_specialist_ids: list[int]
    all_specialist_ids: list[int]


_USER_COLUMNS = (
    ("id", "uuid"), ("external_user_id", "text"), ("email", "text"), ("first_name", "text"),
    ("last_name", "text"), ("role_id", "uuid"), ("is_active", "bool"), ("last_login_at", "timestamp"),
    ("created_at", "timestamp"), ("updated_at", "timestamp"),
)
_SPECIALIST_COLUMNS = (
    ("id", "uuid"), ("user_id", "uuid"), ("phone", "text"), ("license_number", "text"),
    ("is_active", "bool"), ("created_at", "timestamp"), ("updated_at", "timestamp"),
)


def _specialist_count(members: int) -> int:
    return max(8, members // 2000)


def _build_identity(rng: random.Random, members: int, clock: _Clock) -> _IdentityData:
    now = clock.now
    n_specialists = _specialist_count(members)
    # A supervisor per ~50 specialists, within reason.
    n_supervisors = max(2, min(10, n_specialists // 50))
    roles = list(_SINGLE_USER_ROLES) + ["supervisor"] * n_supervisors + ["specialist"] * n_specialists
    emails: set[str] = set()
    external_ids: set[str] = set()
    users: list[tuple[Any, ...]] = []
    specialists: list[tuple[Any, ...]] = []
    active_ids: list[int] = []
    all_ids: list[int] = []
    random_ = rng.random
    for role in roles:
        user_id = _new_id(rng, clock)
        (first, first_slug), (last, last_slug) = rng.choice(_FIRSTS), rng.choice(_LASTS)
        email = f"{first_slug}.{last_slug}@example.org"
        suffix = 1
        while email in emails:  # staff e-mails are UNIQUE
            suffix += 1
            email = f"{first_slug}.{last_slug}{suffix}@example.org"
        emails.add(email)
        external = f"auth0|demo-{rng.getrandbits(96):024x}"
        while external in external_ids:
            external = f"auth0|demo-{rng.getrandbits(96):024x}"
        external_ids.add(external)
        # Staff accounts are 3 months to 4 years old; a few specialists have left.
        created = now - (90 * _DAY + int(random_() * 1370 * _DAY))
        active = role != "specialist" or random_() >= 0.06
        if active:
            last_login = None if random_() < 0.08 else now - int(random_() * 21 * _DAY)
        else:
            last_login = None if random_() < 0.3 else now - (60 * _DAY + int(random_() * 300 * _DAY))
        if last_login is not None and last_login < created:
            last_login = created
        updated = created + int(random_() * (now - created))
        users.append((user_id, external, email, first, last, role, active, last_login, created, updated))
        if role == "specialist":
            specialist_id = _new_id(rng, clock)
            state = rng.choice(PLACES)[1]
            specialists.append((
                specialist_id, user_id, f"+1555{int(random_() * 10_000_000):07d}",
                f"LIC-{state}-{int(random_() * 1_000_000):06d}", active, created, updated,
            ))
            all_ids.append(specialist_id)
            if active:
                active_ids.append(specialist_id)
    if not active_ids:  # tiny populations: someone must take the scheduled calls
        active_ids.append(all_ids[0])
    return _IdentityData(users, specialists, active_ids, all_ids)


# --------------------------------------------------------------------------
# Insurance plans
# --------------------------------------------------------------------------

_PLAN_TYPES: dict[str, tuple[float, str, bool]] = {
    # type: (premium factor, network description, referral required)
    "HMO": (0.90, "Regional HMO network; in-network care only", True),
    "PPO": (1.15, "National PPO network; out-of-network at higher cost", False),
    "EPO": (0.95, "Exclusive provider network; no out-of-network coverage", False),
    "POS": (1.00, "Point-of-service network; out-of-network with referral", True),
    "HDHP": (0.75, "National PPO network; HSA-eligible high deductible", False),
}
_PLAN_TIERS: dict[str, tuple[int, int, int, int, str]] = {
    # tier: (monthly premium base, deductible, copay, out-of-pocket max, coinsurance)
    "BRONZE": (320, 6500, 60, 9200, "40%"),
    "SILVER": (410, 4500, 45, 8000, "30%"),
    "GOLD": (520, 1500, 30, 6500, "20%"),
    "PLATINUM": (640, 250, 15, 4000, "10%"),
}
# Last year's plans kept for history (expired, inactive): terminated enrollments may point at them.
_PRIOR_YEAR_PLANS = (("HMO", "SILVER"), ("PPO", "GOLD"), ("EPO", "BRONZE"), ("HDHP", "SILVER"))
_PLAN_COLUMNS = (
    ("id", "uuid"), ("plan_code", "text"), ("plan_name", "text"), ("plan_type", "text"),
    ("coverage_details", "jsonb"), ("premium_amount", "numeric"), ("deductible_amount", "numeric"),
    ("copay_amount", "numeric"), ("is_active", "bool"), ("effective_date", "date"),
    ("expiration_date", "date"), ("created_at", "timestamp"), ("updated_at", "timestamp"),
)


def _money(value: float) -> Decimal:
    return Decimal(f"{value:.2f}")


def _build_plans(rng: random.Random, clock: _Clock) -> tuple[list[tuple[Any, ...]], list[int], list[int]]:
    """24 plans: 20 for the current year (every type x tier) and 4 expired ones.

    Returns the COPY rows, the current plans' ids and all ids.
    """
    year = date.fromordinal(date(1970, 1, 1).toordinal() + clock.today).year
    epoch = date(1970, 1, 1).toordinal()
    rows: list[tuple[Any, ...]] = []
    current: list[int] = []
    every: list[int] = []
    offerings = [(t, tier, year, True) for t in _PLAN_TYPES for tier in _PLAN_TIERS]
    offerings += [(t, tier, year - 1, False) for t, tier in _PRIOR_YEAR_PLANS]
    for plan_type, tier, plan_year, active in offerings:
        factor, network, referral = _PLAN_TYPES[plan_type]
        premium_base, deductible, copay, oop_max, coinsurance = _PLAN_TIERS[tier]
        hdhp = plan_type == "HDHP"
        if hdhp:
            deductible, copay = max(deductible, 3300), 0  # copay applies only after the deductible
        premium = premium_base * factor * (1 + (rng.random() - 0.5) * 0.1)
        details = {
            "network": network,
            "out_of_pocket_max": oop_max,
            "preventive_care": "100%",
            "coinsurance": coinsurance,
            "specialist_copay": 0 if hdhp else copay * 2,
            "emergency_room_copay": 0 if hdhp else 150 + copay * 5,
            "referral_required": referral,
            "hsa_eligible": hdhp,
            "prescription_drug_tiers": 4,
        }
        effective = date(plan_year, 1, 1).toordinal() - epoch
        expiration = date(plan_year, 12, 31).toordinal() - epoch
        created = (effective - 90) * _DAY + 9 * 3600
        plan_id = _new_id(rng, clock)
        rows.append((
            plan_id, f"{plan_type}-{tier}-{plan_year}", f"Demo Health {plan_type} {tier.title()} {plan_year}",
            plan_type, Jsonb(details), _money(premium), _money(deductible), _money(copay), active,
            effective, expiration, min(created, clock.now), min(created, clock.now),
        ))
        every.append(plan_id)
        if active:
            current.append(plan_id)
    return rows, current, every


_SPECIALIST_PLAN_COLUMNS = (
    ("id", "uuid"), ("specialist_id", "uuid"), ("insurance_plan_id", "uuid"), ("notes", "text"),
    ("created_at", "timestamp"), ("updated_at", "timestamp"),
)


def _build_specialist_plans(rng: random.Random, identity: _IdentityData, current_plans: list[int],
                            clock: _Clock) -> list[tuple[Any, ...]]:
    """Each specialist works 2-4 distinct current plans."""
    rows: list[tuple[Any, ...]] = []
    for specialist in identity.specialists:
        specialist_id, created = specialist[0], specialist[5]
        for plan_id in rng.sample(current_plans, rng.randint(2, 4)):
            notes = "Certified for this plan's benefit questions." if rng.random() < 0.1 else None
            stamp = created + int(rng.random() * (clock.now - created))
            rows.append((_new_id(rng, clock), specialist_id, plan_id, notes, stamp, stamp))
    return rows


# --------------------------------------------------------------------------
# Members, enrollments, calls, flags (large: generated in chunks)
# --------------------------------------------------------------------------

_MEMBER_COLUMNS = (
    ("id", "uuid"), ("first_name", "text"), ("last_name", "text"), ("email", "text"), ("phone", "text"),
    ("address_line1", "text"), ("address_line2", "text"), ("city", "text"), ("state", "text"),
    ("zip_code", "text"), ("status", "text"), ("deleted_at", "timestamp"), ("created_at", "timestamp"),
    ("updated_at", "timestamp"),
)
_PHI_COLUMNS = (("encrypted_ssn", "bytea"), ("encrypted_dob", "bytea"))
_MEMBER_HISTORY_SECONDS = 6 * 365 * _DAY  # members joined over the past six years


@dataclass
class _MemberIndex:
    """What later tables need to know about each member, kept compact."""

    ids: list[int]
    created: list[int]  # epoch seconds
    inactive_or_deleted: bytearray  # 1 = status inactive, 2 = soft-deleted (bit flags)


PhiEncryptor = Callable[[int, str, str], tuple[bytes, bytes]]


_DOB_DAYS = 95 * 365 + 1


@functools.lru_cache(maxsize=2)
def _birth_dates(today: date) -> tuple[str, ...]:
    """Every ISO date from ``today`` back 95 years (a member's date of birth is one of them)."""
    last = today.toordinal()
    return tuple(date.fromordinal(last - days).isoformat() for days in range(_DOB_DAYS))


def synthetic_phi(rng: random.Random, today: date) -> tuple[str, str]:
    """A nine-digit SSN that passes the validity rules (no 000/666/9xx area, 00 group, 0000 serial)
    and an ISO date of birth between 0 and 95 years ago. (``rng.random`` scaled, not ``randint``, and
    the dates made once: 5.8 µs a member before, 3.0 now.)"""
    random_ = rng.random
    area = int(random_() * 898) + 1  # 1-898: 1-665, then 667-899 (666 skipped)
    if area >= 666:
        area += 1
    ssn = f"{area:03d}{int(random_() * 99) + 1:02d}{int(random_() * 9999) + 1:04d}"
    return ssn, _birth_dates(today)[int(random_() * _DOB_DAYS)]


def _member_chunks(rng: random.Random, count: int, clock: _Clock, index: _MemberIndex,
                   phi: PhiEncryptor | None = None, phi_rng: random.Random | None = None) -> Iterator[list[tuple]]:
    now = clock.now
    today = date.fromordinal(_UNIX_EPOCH_ORDINAL + clock.today)
    random_, getrandbits, choices = rng.random, rng.getrandbits, rng.choices
    statuses = ("active", "inactive", "suspended")
    all_ids = _sorted_ids(rng, count, clock)
    for start in range(0, count, CHUNK_ROWS):
        n = min(CHUNK_ROWS, count - start)
        ids = all_ids[start:start + n]
        # Column-wise draws: one choices() call per column is several times
        # cheaper than a choice() per row.
        firsts = choices(_FIRSTS, k=n)
        lasts = choices(_LASTS, k=n)
        streets = choices(STREET_NAMES, k=n)
        places = choices(PLACES, k=n)
        status_col = choices(statuses, cum_weights=(92, 97, 100), k=n)
        rows: list[tuple[Any, ...]] = []
        append = rows.append
        for i in range(n):
            first, first_slug = firsts[i]
            last, last_slug = lasts[i]
            u = random_()
            if u < 0.12:
                email = None
            elif u < 0.55:
                email = f"{first_slug}.{last_slug}@example.com"
            else:
                email = f"{first_slug}.{last_slug}{int(random_() * 999) + 1}@example.com"
            phone = None if random_() < 0.03 else f"+1555{getrandbits(23) % 10_000_000:07d}"
            line2 = (f"{_UNIT_PREFIXES[getrandbits(3) % 5]} {int(random_() * 400) + 1}"
                     if random_() < 0.15 else None)
            city, state, zip3 = places[i]
            zip_code = f"{zip3}{int(random_() * 100):02d}"
            if random_() < 0.1:
                zip_code = f"{zip_code}-{int(random_() * 10_000):04d}"
            created = now - int(random_() * _MEMBER_HISTORY_SECONDS)
            status = status_col[i]
            if random_() < 0.01:
                deleted = created + int(random_() * (now - created))
                updated = deleted
            else:
                deleted = None
                updated = created if random_() < 0.4 else created + int(random_() * (now - created))
            row: tuple[Any, ...] = (ids[i], first, last, email, phone,
                                    f"{int(random_() * 9899) + 100} {streets[i]}", line2,
                                    city, state, zip_code, status, deleted, created, updated)
            if phi is not None and phi_rng is not None:
                row += phi(ids[i], *synthetic_phi(phi_rng, today))
            append(row)
            index.created.append(created)
            index.inactive_or_deleted.append((status == "inactive") | ((deleted is not None) << 1))
        index.ids.extend(ids)
        yield rows


_ENROLLMENT_COLUMNS = (
    ("id", "uuid"), ("member_id", "uuid"), ("insurance_plan_id", "uuid"), ("enrollment_date", "date"),
    ("termination_date", "date"), ("status", "text"), ("is_primary", "bool"),
    ("coverage_percentage", "numeric"), ("notes", "text"), ("created_at", "timestamp"),
    ("updated_at", "timestamp"),
)
_COVERAGE = (Decimal("80.00"), Decimal("90.00"), Decimal("100.00"))


def _enrollment_counts(rng: random.Random, members: int) -> list[int]:
    """Plans per member: ~5% none, ~80% one, ~15% two."""
    return rng.choices((0, 1, 2), cum_weights=(5, 85, 100), k=members)


def _enrollment_chunks(rng: random.Random, members: _MemberIndex, counts: list[int], current_plans: list[int],
                       all_plans: list[int], clock: _Clock) -> Iterator[list[tuple]]:
    now, today = clock.now, clock.today
    random_ = rng.random
    n_current, n_all = len(current_plans), len(all_plans)
    # The plans run for a calendar year (this year's and last year's, see _build_plans): an enrollment
    # starts and ends within its plan's dates, as carecli's rules ask (carecli.data.rules).
    epoch = date(1970, 1, 1).toordinal()
    year = date.fromordinal(epoch + today).year
    this_year_start = date(year, 1, 1).toordinal() - epoch
    last_year_start, last_year_end = date(year - 1, 1, 1).toordinal() - epoch, this_year_start - 1
    next_id = iter(_sorted_ids(rng, sum(counts), clock)).__next__
    rows: list[tuple] = []
    append = rows.append
    for m, count in enumerate(counts):
        if not count:
            continue
        member_id, member_created = members.ids[m], members.created[m]
        inactive = members.inactive_or_deleted[m] & 1
        first_day = max(_DAY_2019, member_created // _DAY)
        first_plan = -1
        for k in range(count):
            primary = k == 0
            u = random_()
            if primary:
                # Inactive members mostly lost their coverage.
                status = ("terminated" if (inactive and u < 0.7) or u < 0.07
                          else "suspended" if u < 0.09 else "active")
            else:
                status = "terminated" if u < 0.25 else "suspended" if u < 0.28 else "active"
            # Live enrollments are in this year's plans; ended ones may be in last year's (if the
            # member was on file then).
            plan_index = int(random_() * (n_all if status == "terminated" else n_current))
            if plan_index >= n_current and first_day <= last_year_end:
                pool, lo, hi = all_plans, max(first_day, last_year_start), last_year_end
            else:
                plan_index %= n_current
                pool, lo, hi = current_plans, max(first_day, this_year_start), today
            plan_id = pool[plan_index]
            if plan_id == first_plan:  # two enrollments of one member are in different plans
                plan_id = pool[(plan_index + 1) % len(pool)] if pool is current_plans \
                    else current_plans[plan_index % n_current]
                if plan_id in current_plans:
                    lo, hi = max(first_day, this_year_start), today
            first_plan = plan_id
            lo = min(lo, hi)
            enrolled = lo + int(random_() * (hi - lo + 1))
            terminated = (enrolled + int(random_() * (hi - enrolled + 1))
                          if status == "terminated" else None)
            u = random_()
            coverage = _COVERAGE[0] if u < 0.35 else _COVERAGE[1] if u < 0.7 else _COVERAGE[2]
            notes = _ENROLLMENT_NOTES[int(random_() * 5)] if random_() < 0.06 else None
            created = min(now, max(member_created, enrolled * _DAY + 32_400 + int(random_() * 28_800)))
            updated = created if terminated is None else min(now, max(created, terminated * _DAY + 50_400))
            append((next_id(), member_id, plan_id, enrolled, terminated, status, primary, coverage, notes,
                    created, updated))
        if len(rows) >= CHUNK_ROWS:
            yield rows
            rows = []
            append = rows.append
    if rows:
        yield rows


_CALL_COLUMNS = (
    ("id", "uuid"), ("member_id", "uuid"), ("specialist_id", "uuid"), ("call_type", "text"),
    ("call_status", "text"), ("scheduled_at", "timestamp"), ("started_at", "timestamp"),
    ("ended_at", "timestamp"), ("duration_seconds", "int4"), ("call_notes", "text"), ("outcome", "text"),
    ("follow_up_required", "bool"), ("follow_up_date", "date"), ("created_at", "timestamp"),
    ("updated_at", "timestamp"),
)
_FLAG_COLUMNS = (
    ("id", "uuid"), ("call_record_id", "uuid"), ("member_id", "uuid"), ("specialist_id", "uuid"),
    ("risk_type", "text"), ("severity", "text"), ("description", "text"), ("created_at", "timestamp"),
    ("updated_at", "timestamp"),
)
_BUSINESS_START = 13 * 3600  # 13:00 UTC, morning on the US east coast
_SLOTS = 40  # quarter-hour slots: 13:00 .. 22:45 UTC

# Cumulative weights, checked against the enum tuples at import time.
_CALL_TYPE_CUM = ((0.45, "outreach"), (0.80, "follow_up"), (1.0, "support"))
_CALL_STATUS_CUM = ((0.60, "completed"), (0.75, "no_answer"), (0.80, "cancelled"), (1.0, "scheduled"))
_RISK_TYPE_CUM = ((0.40, "medical"), (0.60, "financial"), (0.70, "compliance"), (0.85, "safety"), (1.0, "other"))
_SEVERITY_CUM = ((0.40, "low"), (0.75, "medium"), (0.93, "high"), (1.0, "critical"))
assert {name for _, name in _CALL_TYPE_CUM} == set(CALL_TYPES)
assert {name for _, name in _CALL_STATUS_CUM} == set(CALL_STATUSES)
assert {name for _, name in _RISK_TYPE_CUM} == set(RISK_TYPES) == set(_RISK_DESCRIPTIONS)
assert {name for _, name in _SEVERITY_CUM} == set(SEVERITIES)
_OUTCOME_CUM = tuple(
    (sum(w for _, w, _ in _COMPLETED_OUTCOMES[: i + 1]) / sum(w for _, w, _ in _COMPLETED_OUTCOMES), name, notes)
    for i, (name, _, notes) in enumerate(_COMPLETED_OUTCOMES)
)


def _pick(cumulative: Sequence[tuple[float, str]], u: float) -> str:
    for bound, name in cumulative:
        if u < bound:
            return name
    return cumulative[-1][1]


def _call_counts(rng: random.Random, members: int) -> list[int]:
    """Calls per member: 0-4, about 1.2 on average."""
    return rng.choices((0, 1, 2, 3, 4), cum_weights=(27, 67, 87, 97, 100), k=members)


def _call_chunks(rng: random.Random, members: _MemberIndex, counts: list[int], identity: _IdentityData,
                 clock: _Clock, flags: list[tuple]) -> Iterator[list[tuple]]:
    """Call records; risk flags raised on completed calls are appended to ``flags``."""
    now, today = clock.now, clock.today
    random_ = rng.random
    active_ids, all_ids = identity.active_specialist_ids, identity.all_specialist_ids
    active_set = set(active_ids)
    n_active, n_all = len(active_ids), len(all_ids)
    next_id = iter(_sorted_ids(rng, sum(counts), clock)).__next__
    rows: list[tuple] = []
    append = rows.append
    for m, count in enumerate(counts):
        if not count:
            continue
        member_id, member_created = members.ids[m], members.created[m]
        deleted = members.inactive_or_deleted[m] & 2
        # Continuity of care: most of a member's calls are with one specialist.
        own_specialist = active_ids[int(random_() * n_active)]
        first_past_day = member_created // _DAY + 1
        for _ in range(count):
            call_type = _pick(_CALL_TYPE_CUM, random_())
            status = _pick(_CALL_STATUS_CUM, random_())
            if status == "cancelled" and random_() < 0.3:
                past = False  # a future appointment that was called off
            else:
                past = status != "scheduled"
            if past and first_past_day > today - 1:
                status, past = "scheduled", False  # joined today: nothing has happened yet
            if not past and deleted:
                status = "cancelled"  # nobody calls a removed member
            specialist_id = own_specialist if random_() < 0.8 else all_ids[int(random_() * n_all)]
            slot = _BUSINESS_START + 900 * int(random_() * _SLOTS)
            started = ended = duration = notes = outcome = follow_up_date = None
            follow_up = False
            if past:
                day = first_past_day + int(random_() * (today - first_past_day))
                scheduled = day * _DAY + slot
            else:
                u = random_()
                if u < 0.15:  # overdue: should have happened during the last week
                    day = today - 1 - int(random_() * 7)
                elif u < 0.30:  # today (some slots already passed)
                    day = today
                else:  # the next two weeks
                    day = today + 1 + int(random_() * 14)
                scheduled = max(day * _DAY + slot, member_created + 3600)
                if status == "scheduled" and specialist_id not in active_set:
                    specialist_id = own_specialist
            created = max(member_created, min(scheduled, now) - 3600 - int(random_() * 14 * _DAY))
            updated = created
            if status == "completed":
                started = scheduled + int(random_() * 600)
                duration = 120 + int(random_() * 1680)
                ended = started + duration
                u = random_()
                for bound, outcome, templates in _OUTCOME_CUM:
                    if u < bound:
                        break
                notes = templates[int(random_() * len(templates))]
                if random_() < 0.25:
                    follow_up = True
                    follow_up_date = ended // _DAY + 3 + int(random_() * 25)
                updated = ended
            elif status == "no_answer":
                started = scheduled + int(random_() * 300)
                duration = 15 + int(random_() * 45)
                ended = started + duration
                outcome, notes = _NO_ANSWER[int(random_() * 3)]
                updated = ended
            elif status == "cancelled":
                outcome = "cancelled"
                notes = _CANCELLED_NOTES[int(random_() * 4)]
                updated = min(now, created + int(random_() * max(0, scheduled - created)))
            elif random_() < 0.2:
                notes = _SCHEDULED_NOTES[int(random_() * 3)]
            call_id = next_id()
            append((call_id, member_id, specialist_id, call_type, status, scheduled, started, ended, duration,
                    notes, outcome, follow_up, follow_up_date, created, updated))
            if status == "completed" and random_() < 0.06:
                risk_type = _pick(_RISK_TYPE_CUM, random_())
                severity = _pick(_SEVERITY_CUM, random_())
                texts = _RISK_DESCRIPTIONS[risk_type]
                assert ended is not None  # set by every completed call above
                raised = min(now, ended + int(random_() * 600))
                flags.append((_new_id(rng, clock), call_id, member_id, specialist_id, risk_type, severity,
                              texts[int(random_() * len(texts))], raised, raised))
        if len(rows) >= CHUNK_ROWS:
            yield rows
            rows = []
            append = rows.append
    if rows:
        yield rows


# --------------------------------------------------------------------------
# Database plumbing
# --------------------------------------------------------------------------


@contextmanager
def _psycopg_connection(engine: Engine) -> Iterator[psycopg.Connection]:
    """A pooled connection's psycopg 3 connection, in transaction mode.

    Whatever is not committed when the block ends (normally or by an
    exception) is rolled back, and the connection goes back to the pool as
    it came (an engine may run in autocommit mode).
    """
    raw = engine.raw_connection()
    try:
        conn = getattr(raw, "driver_connection", raw)
        if not isinstance(conn, psycopg.Connection):
            raise TypeError("seeding needs engines on the psycopg 3 driver (postgresql+psycopg://...)")
        autocommit = conn.autocommit
        if autocommit:
            conn.autocommit = False
        try:
            yield conn
        finally:
            _rollback_quietly(conn)
            if autocommit and not conn.closed:
                with suppress(psycopg.Error):
                    conn.autocommit = True
    finally:
        raw.close()


def _begin(cur: psycopg.Cursor, *, long_idle: bool = False) -> None:
    """Session settings for this transaction only (the pool's connections keep theirs)."""
    # The app's connections carry a statement timeout; a million-row COPY or
    # index build legitimately runs longer.
    cur.execute("SET LOCAL statement_timeout = 0")
    if long_idle:
        # The identity transaction waits, idle, while platform loads.
        cur.execute("SET LOCAL idle_in_transaction_session_timeout = 0")


def _require_empty(cur: psycopg.Cursor, database: str, tables: Iterable[str]) -> None:
    for table in tables:
        ident = sql.Identifier(table)
        has_rows = cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(ident)).fetchone()
        if has_rows and has_rows[0]:
            count = cur.execute(sql.SQL("SELECT count(*) FROM {}").format(ident)).fetchone()
            raise SeedTargetNotEmpty(database, table, int(count[0]) if count else 1)


def _register_dumpers(cur: psycopg.Cursor) -> None:
    # On this cursor's adapters only: a copy-on-write map, so the pooled
    # connection goes back to the pool with psycopg's normal adapters.
    for dumper in (_UuidIntDumper, _EpochTimestampDumper, _EpochDateDumper):
        cur.adapters.register_dumper(None, dumper)


def _copy(cur: psycopg.Cursor, table: str, columns: Sequence[tuple[str, str]], chunks: Iterable[list[tuple]],
          total: int, progress: ProgressCallback) -> int:
    """Binary COPY of every row in ``chunks`` into ``table``; returns the row count."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(name) for name, _ in columns))
    done = 0
    with cur.copy(statement) as copy:
        copy.set_types([type_name for _, type_name in columns])
        write_row = copy.write_row
        for rows in chunks:
            for row in rows:
                write_row(row)
            done += len(rows)
            progress(table, done, max(total, done))
    if done == 0:
        progress(table, 0, 0)
    return done


#: Tables whose rows are generated member by member, i.e. in member_id order
#: (member ids are sorted, see _sorted_ids).
_MEMBER_ORDERED_TABLES = ("member_insurance_plans", "call_records")


@dataclass(frozen=True)
class _Deferred:
    """A secondary index or foreign key dropped for the load, re-created after it."""

    kind: str  # "index" | "foreign key"
    table: str
    name: str
    definition: str
    #: an index's column number -> statistics target, for the columns that had one (platform_0011's folded
    #: names): CREATE INDEX starts from the default, so they are set again after it
    statistics: tuple[tuple[int, int], ...] = ()


def _drop_secondary_structures(cur: psycopg.Cursor, tables: Sequence[str]) -> list[_Deferred]:
    """Drop the tables' non-constraint indexes (and foreign keys); return how to re-create them.

    Only called on tables verified empty and locked by this transaction. The
    primary keys and UNIQUE constraints stay: they guard the data while it
    goes in. So do indexes led by ``member_id`` on the tables written in
    member order (:data:`_MEMBER_ORDERED_TABLES`): their inserts are appends,
    cheap for the server while the client is the bottleneck. Everything
    returned is re-created before commit; on any error the rollback brings
    the originals back untouched.
    """
    regclasses = list(tables)
    deferred: list[_Deferred] = []
    # pg_indexes would give the same definitions; pg_index also tells which
    # indexes back a constraint (primary key, UNIQUE, EXCLUDE) and must stay.
    for table, schema, name, quoted_name, definition, leading, statistics in cur.execute(
        """
        SELECT t.relname, n.nspname, i.indexrelid::regclass::text, quote_ident(ic.relname),
               pg_get_indexdef(i.indexrelid), pg_get_indexdef(i.indexrelid, 1, true),
               ARRAY(SELECT ARRAY[a.attnum::int, a.attstattarget::int] FROM pg_attribute a
                     WHERE a.attrelid = i.indexrelid AND a.attnum > 0 AND a.attstattarget >= 0 ORDER BY a.attnum)
        FROM pg_index i
        JOIN pg_class t ON t.oid = i.indrelid
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = ic.relnamespace
        WHERE i.indrelid = ANY (%s::regclass[])
          AND NOT i.indisprimary
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
        ORDER BY t.relname, 2
        """,
        (regclasses,),
    ).fetchall():
        if table in _MEMBER_ORDERED_TABLES and leading == "member_id":
            continue
        if not _rebuilds_identically(cur, schema, quoted_name, definition):
            continue
        deferred.append(_Deferred("index", table, name, definition,
                                  tuple((int(column), int(target)) for column, target in statistics or ())))
    if DEFER_FOREIGN_KEYS:
        for table, name, definition in cur.execute(
            """
            SELECT t.relname, c.conname, pg_get_constraintdef(c.oid)
            FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
            WHERE c.contype = 'f' AND c.conrelid = ANY (%s::regclass[])
            ORDER BY t.relname, c.conname
            """,
            (regclasses,),
        ).fetchall():
            deferred.append(_Deferred("foreign key", table, name, definition))
    for item in deferred:
        if item.kind == "index":
            # regclass text is already quoted and schema-qualified as needed.
            cur.execute(sql.SQL("DROP INDEX {}").format(sql.SQL(item.name)))
        else:
            cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(item.table), sql.Identifier(item.name)))
    return deferred


def _rebuilds_identically(cur: psycopg.Cursor, schema: str, quoted_name: str, definition: str) -> bool:
    """Whether running ``definition`` gives back an index with the very same definition.

    Usually it does, but not always: PostgreSQL re-parses some expressions
    into an equivalent but differently written form (``col IN ('a', 'b')``
    on a varchar column comes back with its casts moved), and the rebuilt
    schema must not drift from what the migrations made. So the definition
    is tried on a probe index first (the table is empty: a millisecond) and
    an index that would drift simply stays in place during the load.
    """
    probe = "carecli_seed_probe_index"
    marker = f" INDEX {quoted_name} ON "
    if marker not in definition:
        return False
    probe_definition = definition.replace(marker, f" INDEX {probe} ON ", 1)
    cur.execute(sql.SQL(probe_definition))
    probe_ref = sql.Identifier(schema, probe).as_string(cur)
    row = cur.execute("SELECT pg_get_indexdef(%s::regclass)", (probe_ref,)).fetchone()
    cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, probe)))
    return row is not None and row[0] == probe_definition


def _restore_secondary_structures(cur: psycopg.Cursor, deferred: Sequence[_Deferred],
                                  progress: ProgressCallback) -> None:
    """Re-create what :func:`_drop_secondary_structures` dropped (indexes first, then FKs)."""
    if not deferred:
        return
    # maintenance_work_mem is left as configured: 256MB and 1GB (sorting a
    # million-row index in memory) measured no faster than the 64MB default.
    ordered = [d for d in deferred if d.kind == "index"] + [d for d in deferred if d.kind != "index"]
    for done, item in enumerate(ordered, start=1):
        if item.kind == "index":
            cur.execute(sql.SQL(item.definition))
            for column, target in item.statistics:
                cur.execute(sql.SQL("ALTER INDEX {} ALTER COLUMN {} SET STATISTICS {}").format(
                    sql.SQL(item.name), sql.Literal(column), sql.Literal(target)))
        else:
            # Validated here with one join per key, against this transaction's rows.
            cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                sql.Identifier(item.table), sql.Identifier(item.name), sql.SQL(item.definition)))
        progress("indexes", done, len(ordered))


def _load_identity(conn: psycopg.Connection, data: _IdentityData, progress: ProgressCallback) -> dict[str, int]:
    """Insert roles (missing ones only) and users; leaves the transaction open."""
    with conn.cursor() as cur:
        _begin(cur, long_idle=True)
        # Blocks a concurrent seed (or sign-up) until this transaction ends;
        # readers are not blocked.
        cur.execute("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
        _require_empty(cur, "identity", IDENTITY_TABLES)
        inserted_roles = 0
        for name, (description, permissions) in DEFAULT_ROLES.items():
            # Roles may already exist (created by an admin or an earlier
            # migration): keep theirs, add ours alongside.
            cur.execute(
                "INSERT INTO roles (name, description, permissions) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (name, description, Jsonb(permissions)),
            )
            inserted_roles += cur.rowcount
        role_ids = {
            name: role_id.int for role_id, name in cur.execute(
                "SELECT id, name FROM roles WHERE name = ANY (%s)", (list(DEFAULT_ROLES),)).fetchall()
        }
        progress("roles", len(DEFAULT_ROLES), len(DEFAULT_ROLES))
        _register_dumpers(cur)
        users = [row[:5] + (role_ids[row[5]],) + row[6:] for row in data.users]
        n_users = _copy(cur, "users", _USER_COLUMNS, [users], len(users), progress)
    return {"roles": inserted_roles, "users": n_users}


def _identity_present(conn: psycopg.Connection, data: _IdentityData) -> bool:
    """Whether this run's users are committed (a lost COMMIT reply leaves that unknown)."""
    ids = [_uuid_text(row[0]) for row in data.users]
    found = conn.execute("SELECT count(*) FROM users WHERE id = ANY (%s::uuid[])", (ids,)).fetchone()
    conn.rollback()
    return found is not None and found[0] == len(ids)


def _phi_encryptor(cipher: FieldCipher | None) -> PhiEncryptor | None:
    if cipher is None:
        return None

    def encrypt(member_id: int, ssn: str, dob: str) -> tuple[bytes, bytes]:
        row_id = uuid.UUID(int=member_id)
        return (cipher.encrypt(ssn.encode("ascii"), table="members", column="encrypted_ssn", row_id=row_id),
                cipher.encrypt(dob.encode("ascii"), table="members", column="encrypted_dob", row_id=row_id))

    return encrypt


def _load_platform(conn: psycopg.Connection, rng_seeds: dict[str, int], members: int, identity: _IdentityData,
                   clock: _Clock, progress: ProgressCallback, phi: PhiEncryptor | None = None) -> dict[str, int]:
    """Everything in platform, in one transaction left open for the caller to commit."""
    counts: dict[str, int] = {}
    with conn.cursor() as cur:
        _begin(cur)
        # Nobody else may write (or see half of) these tables until we commit;
        # dropping indexes needs this lock anyway.
        cur.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
            sql.SQL(", ").join(sql.Identifier(t) for t in PLATFORM_TABLES)))
        _require_empty(cur, "platform", ("members",) + tuple(t for t in PLATFORM_TABLES if t != "members"))
        deferred: list[_Deferred] = []
        if members >= DEFER_INDEXES_MIN_MEMBERS:
            cur.execute("SAVEPOINT seed_defer")
            try:
                deferred = _drop_secondary_structures(cur, PLATFORM_TABLES)
            except psycopg.errors.InsufficientPrivilege:
                # Not the tables' owner: load with the indexes in place (slower, same result).
                cur.execute("ROLLBACK TO SAVEPOINT seed_defer")
                deferred = []
            cur.execute("RELEASE SAVEPOINT seed_defer")
        _register_dumpers(cur)

        plan_rows, current_plans, all_plans = _build_plans(random.Random(rng_seeds["plans"]), clock)
        counts["insurance_plans"] = _copy(cur, "insurance_plans", _PLAN_COLUMNS, [plan_rows], len(plan_rows),
                                          progress)
        counts["specialists"] = _copy(cur, "specialists", _SPECIALIST_COLUMNS, [identity.specialists],
                                      len(identity.specialists), progress)
        specialist_plans = _build_specialist_plans(random.Random(rng_seeds["specialist_plans"]), identity,
                                                   current_plans, clock)
        counts["specialist_insurance_plans"] = _copy(cur, "specialist_insurance_plans", _SPECIALIST_PLAN_COLUMNS,
                                                     [specialist_plans], len(specialist_plans), progress)

        index = _MemberIndex(ids=[], created=[], inactive_or_deleted=bytearray())
        member_columns = _MEMBER_COLUMNS + (_PHI_COLUMNS if phi else ())
        counts["members"] = _copy(cur, "members", member_columns,
                                  _member_chunks(random.Random(rng_seeds["members"]), members, clock, index,
                                                 phi, random.Random(rng_seeds["phi"])),
                                  members, progress)

        enrollment_rng = random.Random(rng_seeds["enrollments"])
        enrollment_counts = _enrollment_counts(enrollment_rng, members)
        counts["member_insurance_plans"] = _copy(
            cur, "member_insurance_plans", _ENROLLMENT_COLUMNS,
            _enrollment_chunks(enrollment_rng, index, enrollment_counts, current_plans, all_plans, clock),
            sum(enrollment_counts), progress)
        del enrollment_counts

        call_rng = random.Random(rng_seeds["calls"])
        call_counts = _call_counts(call_rng, members)
        flags: list[tuple] = []
        counts["call_records"] = _copy(cur, "call_records", _CALL_COLUMNS,
                                       _call_chunks(call_rng, index, call_counts, identity, clock, flags),
                                       sum(call_counts), progress)
        del call_counts, index
        flags.sort()  # by id, like every other table (see _sorted_ids)
        counts["risk_flags"] = _copy(cur, "risk_flags", _FLAG_COLUMNS,
                                     (flags[i:i + CHUNK_ROWS] for i in range(0, len(flags), CHUNK_ROWS)),
                                     len(flags), progress)
        del flags

        _restore_secondary_structures(cur, deferred, progress)
        # Fresh statistics, so the app's first queries on a million rows get
        # sane plans instead of waiting for autovacuum to notice the load.
        cur.execute(sql.SQL("ANALYZE {}").format(
            sql.SQL(", ").join(sql.Identifier(t) for t in PLATFORM_TABLES)))
    return counts


def _rollback_quietly(conn: psycopg.Connection) -> None:
    # A broken connection raises here; the server has rolled back already.
    with suppress(psycopg.Error):
        conn.rollback()


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def seed_demo_data(
    identity: Engine,
    platform: Engine,
    *,
    members: int,
    seed: int | None = None,
    progress: ProgressCallback | None = None,
    cipher: FieldCipher | None = None,
) -> SeedSummary:
    """Fill empty identity and platform databases with synthetic demo data.

    Creates the default roles (those missing), one user for each role other
    than supervisor and specialist (admin, auditor, ...), a few supervisors
    and ``max(8, members // 2000)`` specialists (identity
    users plus platform ``specialists`` rows), 24 insurance plans, ``members``
    members with their plan enrollments, about 1.2 calls each and risk flags
    on some completed calls. The same ``seed`` gives the same names and
    relationships, and ids that differ only in their leading timestamp (UUIDv7,
    the run's start); dates follow the current UTC day.

    ``progress(table, done, total)`` is called after every batch of rows
    (``CHUNK_ROWS``) and when a table is done; while the deferred indexes and
    foreign keys are rebuilt after a large load it is called with the pseudo
    table ``"indexes"``.

    With a ``cipher``, every member gets a synthetic SSN and date of birth,
    encrypted like any other (bound to the member's id); without one those
    columns stay NULL.

    Raises :class:`SeedTargetNotEmpty` (and writes nothing) if ``users`` or
    any platform table it fills already has rows. Any failure leaves both
    databases as they were (see the comment on commit order below).
    """
    if isinstance(members, bool) or not isinstance(members, int) or members < 0:
        raise ValueError("members must be a whole number >= 0")
    started = time.perf_counter()
    report: ProgressCallback = progress or (lambda table, done, total: None)
    clock = _Clock.start()
    master = random.Random(seed)
    # One independent stream per concern, drawn in a fixed order: member ids
    # and names do not shift when, say, the call logic changes.
    rng_seeds = {name: master.getrandbits(64) for name in
                 ("identity", "plans", "specialist_plans", "members", "enrollments", "calls", "phi")}
    identity_data = _build_identity(random.Random(rng_seeds["identity"]), members, clock)

    # Commit order. Nothing can commit both databases atomically (two-phase
    # commit needs max_prepared_transactions, off by default), so:
    #   1. identity rows are inserted, transaction left open;
    #   2. platform is loaded and committed;
    #   3. identity is committed.
    # A failure or kill before 3 leaves both databases untouched: identity was
    # never committed, platform rolled back or never committed. (Committing
    # identity first instead would leave committed users behind whenever the
    # long platform load dies, blocking the next attempt until someone cleans
    # up.) Only losing the connection during the final tiny identity COMMIT
    # can split the two; then the identity rows, all still in memory, are
    # written again on a fresh connection.
    counts: dict[str, int] = {}
    # Leaving either block by an exception rolls that connection back.
    with _psycopg_connection(identity) as id_conn:
        with _psycopg_connection(platform) as pf_conn:
            counts.update(_load_identity(id_conn, identity_data, report))
            counts.update(_load_platform(pf_conn, rng_seeds, members, identity_data, clock, report,
                                         _phi_encryptor(cipher)))
            pf_conn.commit()
        try:
            id_conn.commit()
        except psycopg.Error:
            _finish_identity_after_platform(identity, identity_data)
    ordered = {table: counts[table] for table in ("roles", "users") + PLATFORM_TABLES}
    return SeedSummary(counts=ordered, seconds=time.perf_counter() - started)


def _finish_identity_after_platform(identity: Engine, data: _IdentityData) -> None:
    """Platform is committed but identity's COMMIT failed: write identity again."""
    try:
        with _psycopg_connection(identity) as conn:
            if _identity_present(conn, data):
                return  # the COMMIT went through; only its reply was lost
            _load_identity(conn, data, lambda table, done, total: None)
            conn.commit()
    except (psycopg.Error, SeedTargetNotEmpty) as exc:
        raise CarecliError(
            "the platform database was seeded but the identity database could not be: "
            "specialists refer to users that do not exist",
            hint="empty both databases (`carecli db downgrade base`, `carecli db upgrade`) and seed again",
        ) from exc

"""Member search for the member browser and the command palette, fast on a million members.

One text box finds members by name, e-mail or phone; status and plan filter;
four sort orders. Results come a page at a time by keyset (the last row's
sort key, never OFFSET) and the count is exact only when that is cheap.

How the text is read (:func:`parse_text`):

* contains ``@``: an e-mail prefix (``ann.sm@`` or ``ann.smith@exa``);
* mostly digits: a phone prefix, punctuation ignored (``(555) 010`` finds
  ``555-0100`` and ``+1 555 010 2030``: the country code 1 is optional on
  either side);
* otherwise name words: every word must be the start of a word of the first
  or the last name (``ada oka`` finds Ada Okafor, ``lane`` Murphy-Lane,
  ``cruz`` De la Cruz, ``ann`` Mary Ann; words are split at spaces and
  hyphens), or all the words together the start of one of them (``st. james``,
  ``mary ann``). Case- and accent-insensitive (``jose`` finds José and
  ``José`` Jose, see below); ``%``, ``_`` and ``\\`` are literal;
* one word with a ``.``, ``_``, ``+`` or a digit is also an e-mail prefix
  (``joshua.a`` finds joshua.alvarado@example.com): what comes before the
  ``@`` seldom looks like a name, and a plain word is left to the names so
  that ``s`` does not read every address starting with s.

Why the queries look the way they do (measured on 1M members, see
``benchmarks/search_bench.py``):

* The name order is ``carecli_fold(last_name), carecli_fold(first_name), id``
  compared byte-wise (``COLLATE "C"``), the expression of
  ``ix_members_name_folded``; ``carecli_fold`` is our own IMMUTABLE SQL
  function (migration platform_0009): lower case with the accents of the
  Latin letters taken off, no contrib extension needed.
  In that order every last-name prefix is one contiguous range of the index,
  so "last name starts with smi" reads exactly one page of the index, in
  order, however many Smiths there are.
* Name words are matched by one branch per way of assigning each word to the
  first or the last name (branches no row can satisfy, a last name starting
  with both "j" and "s", are left out), each branch ordered and limited on
  its own, then merged (``UNION`` removes members found twice). A branch with
  a last-name word is a range scan of the sort index with the other words as
  index conditions: one page read, in order. The first-name-only branch is
  left to the planner, which has statistics for both expressions (the sort
  index is not partial for that reason) and whose independence assumption
  holds there (first names are spread evenly along the last-name order). One
  query with ``first LIKE .. OR last LIKE ..`` and ``ORDER BY .. LIMIT``
  instead fetches and sorts every match (every Smith: 10-60 ms at 1M rows
  against 0.2 ms), or, when the planner misjudges how the matches cluster
  along the order, walks the name index from the start (DESIGN.md's
  "planner trap").
* A word inside a name (``lane`` of Murphy-Lane: not the start of either
  name) is looked up in ``member_name_prefixes`` (migration platform_0010):
  one row per prefix of each word after the first of each name, keyed by
  (prefix, folded last name, folded first name, id), kept by triggers. In
  name order a word's branch is one range of that key, limited, the other
  words tested on its folded names, the members fetched by id for the rows
  kept; in creation order (it holds created_at) or for a count, the rows of
  that prefix alone are sorted or counted (~4,000 for ``lane``, index-only).
* The first-name-only branches (``jam``) read the keys of the page from
  ``ix_members_first_name_keys`` (folded first, last name, id; the names
  included so that the planner may scan it index-only), sorted, then fetch
  those members: fetching and folding ~4,000 James took 20 ms.
* Building the statements costs Python time (a few ms for three words):
  the expressions that do not depend on the text are built once.
* Name words in creation order (``smi``, newest first): when the planner
  expects few matches (:data:`FEW_MATCHES`), they are read through the name
  indexes into a ``MATERIALIZED`` CTE and sorted; otherwise the creation
  order is walked, each row's names tested. Left to itself the planner walks
  for "smi" too, because it rates folding two names per row far too cheap:
  15,000 rows read for one page, 30 ms against 7. Its estimates hold because
  the folded names have detailed statistics (platform_0011).
* E-mail matches are isolated in a ``MATERIALIZED`` CTE, then sorted: an
  e-mail prefix correlates with the name order just as badly and, once
  it holds an ``@`` (or a ``.``), matches a handful of rows.
* Phone, status and plan filters are independent of every sort order, so the
  planner's own choice (walk an ordered index and filter, or fetch the
  matches and sort them) is a good one.
* Every statement runs with ``plan_cache_mode = force_custom_plan`` (for the
  rest of the transaction): psycopg prepares a statement after five runs and
  a generic plan cannot see the search term, which turned a rare prefix from
  1.3 ms into 285 ms.

Counting (:meth:`MemberSearchRepository.count`) is exact up to 10,000 when
the bounded count is cheap by the planner's estimate or the planner expects
at most 5,000 matches; otherwise it is the planner's row estimate (``about
46K``), never a count of the whole table. Those estimates hold because the
folded names' statistics are detailed (platform_0011).

Searching is not audited (opening a member is, in MemberRepository.open), but
it needs ``members:read``. Records, queries and cursors never show names,
contact details or search text in their ``repr``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from itertools import product
from typing import Any, ClassVar, Literal, cast, get_args

from sqlalchemy import (
    DateTime,
    Select,
    String,
    Uuid,
    and_,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    tuple_,
    union,
)
from sqlalchemy.sql.elements import ColumnElement, TextClause

from carecli.data.models.enums import MEMBER_STATUSES
from carecli.data.models.platform import Member as MemberTable
from carecli.data.models.platform import MemberInsurancePlan, MemberNamePrefix
from carecli.data.permissions import Permission
from carecli.data.repositories.base import Repository
from carecli.errors import ValidationError

__all__ = [
    "CountEstimate", "Cursor", "MemberPage", "MemberQuery", "MemberSearchRepository", "MemberSummary",
    "SortKey", "parse_text",
]

SortKey = Literal["name", "name_desc", "newest", "oldest"]
SORT_KEYS: tuple[SortKey, ...] = get_args(SortKey)

#: Up to this many matches :meth:`MemberSearchRepository.count` counts exactly...
EXACT_COUNT_LIMIT = 10_000
#: ...if the planner expects the bounded count to cost at most this (its units;
#: measured on 1M members: 5,000 is roughly 10-25 ms, 30,000 about 150 ms).
COUNT_COST_BUDGET = 5_000.0
#: ...or if it expects at most this many matches, whatever it thinks they cost to read: it rates reading a
#: few thousand members through the name indexes (3,836 for "smi": cost 10,100, counted in 9-11 ms) dearer
#: than stopping at the limit in a far larger set ("mar": cost 7,900, 86 ms to count to 10,001).
EXACT_COUNT_ROWS = 5_000
#: A name search in creation order expected to match at most this many members reads all its matches and
#: sorts them; more, and it walks the creation order testing each row (measured on 1M members: the
#: matches of "smi", 3,836, read and sorted in 7 ms; the walk for them 30 ms; 10,000 read and sorted ~18 ms).
FEW_MATCHES = 10_000
MAX_PAGE_SIZE = 500
MAX_TEXT_LENGTH = 200
#: Name words that get a branch per first/last assignment (2**n branches);
#: further words only filter.
MAX_ASSIGNED_WORDS = 3
MAX_WORDS = 8
#: Share of digits among letters and digits from which the text is a phone number.
PHONE_DIGIT_SHARE = 0.75

_members = MemberTable.__table__
_enrollments = MemberInsurancePlan.__table__
_c = _members.c
_prefixes = MemberNamePrefix.__table__
_p = _prefixes.c

# These expressions are the indexes' (migrations platform_0004, platform_0009): keep them identical.
LAST_KEY: ColumnElement[str] = func.carecli_fold(_c.last_name).collate("C")
FIRST_KEY: ColumnElement[str] = func.carecli_fold(_c.first_name).collate("C")
NAME_WORDS: ColumnElement[Any] = func.carecli_name_words(_c.last_name, _c.first_name)
PHONE_DIGITS: ColumnElement[str] = func.regexp_replace(_c.phone, text(r"'\D'"), text("''"), text("'g'"))
CREATED_KEY: ColumnElement[datetime] = func.coalesce(_c.created_at, text("'-infinity'::timestamp"))
EMAIL_KEY: ColumnElement[str] = func.lower(_c.email)


# --------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberSummary:
    """One result row: what the browser lists. No SSN or date of birth."""

    id: uuid.UUID
    first_name: str
    last_name: str
    email: str | None
    phone: str | None
    city: str | None
    state: str | None
    status: str | None
    updated_at: datetime | None
    #: what "newest" / "oldest" sort by
    created_at: datetime | None = None

    def __repr__(self) -> str:
        # Names and contact details are PHI: a row that ends up in a log shows only this.
        return f"MemberSummary(id={self.id}, status={self.status!r})"


@dataclass(frozen=True)
class MemberQuery:
    """What the browser asks for; the empty query browses every live member."""

    text: str = ""
    status: str | None = None
    plan_id: uuid.UUID | None = None
    sort: SortKey = "name"

    def __repr__(self) -> str:
        # Search text is often a name or a phone number: only its length is shown.
        return (f"MemberQuery(text=<{len(self.text)} chars>, status={self.status!r}, plan_id={self.plan_id}, "
                f"sort={self.sort!r})")


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: the sort key of the last row shown. Opaque to callers."""

    sort: SortKey
    key: tuple[Any, ...]

    def __repr__(self) -> str:
        return f"Cursor(sort={self.sort!r})"  # the key holds a (lower-cased) name


@dataclass(frozen=True)
class CountEstimate:
    """How many members match: exact when small, otherwise the planner's estimate."""

    value: int
    exact: bool

    def describe(self) -> str:
        """``1,234`` when exact; ``about 1.2M`` / ``about 45K`` / ``about 3,400`` when estimated."""
        if self.exact:
            return f"{self.value:,}"
        return f"about {_approximately(self.value)}"


@dataclass(frozen=True)
class MemberPage:
    rows: list[MemberSummary]
    #: None on the last page
    next_cursor: Cursor | None


# --------------------------------------------------------------------------
# Reading the search text
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchTerms:
    """The search text, classified (see the module docstring)."""

    kind: Literal["all", "name", "email", "phone"]
    words: tuple[str, ...] = ()   # name words (kind "name") or the one e-mail prefix (kind "email")
    digits: str = ""              # kind "phone"
    #: kind "name": the one word, when it may also be the start of an e-mail address
    email: str = ""

    def __repr__(self) -> str:
        return f"SearchTerms(kind={self.kind!r}, words={len(self.words)}, email={bool(self.email)})"


_WORD_SPLIT = re.compile(r"[\s,;]+")
#: A word holding one of these may be the part of an e-mail address before the "@".
_EMAIL_LIKE = re.compile(r"[._+0-9]")


def parse_text(value: str, *, names_only: bool = False) -> SearchTerms:
    """Classify free text as name words, an e-mail prefix or a phone prefix."""
    value = (value or "").strip()[:MAX_TEXT_LENGTH]
    if not value:
        return SearchTerms("all")
    if not names_only:
        if "@" in value:
            return SearchTerms("email", ("".join(value.split()),))
        digits = "".join(ch for ch in value if ch.isdecimal() and ch.isascii())
        letters = sum(ch.isalpha() for ch in value)
        if digits and len(digits) >= PHONE_DIGIT_SHARE * (len(digits) + letters):
            return SearchTerms("phone", digits=digits)
    words: list[str] = []
    seen: set[str] = set()
    for word in _WORD_SPLIT.split(value):
        if word and word.casefold() not in seen:
            seen.add(word.casefold())
            words.append(word)
    if not words:
        return SearchTerms("all")
    email = words[0] if not names_only and len(words) == 1 and _EMAIL_LIKE.search(words[0]) else ""
    return SearchTerms("name", tuple(words[:MAX_WORDS]), email=email)


def _escaped(word: str) -> str:
    """``word%`` for LIKE, wildcards in the word escaped (backslash: LIKE's default escape)."""
    return word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _like_prefix(word: str) -> ColumnElement[str]:
    """The LIKE pattern ``carecli_fold('<word>%')``: a name prefix, folded by the server exactly as the indexes were.

    Under a custom plan the whole pattern folds to a constant, so the index
    range is derived.
    """
    return func.carecli_fold(literal(_escaped(word), String))


def _email_prefix(word: str) -> ColumnElement[bool]:
    """The e-mail address starts with ``word`` (any case): ``ix_members_email_lower``."""
    return EMAIL_KEY.like(func.lower(literal(_escaped(word), String)))


def _inside_a_name(word: str) -> ColumnElement[bool]:
    """A word inside the first or last name (after the first word of either) starts with ``word``.

    Over ``member_name_prefixes`` (joined to the member): its rows are the prefixes of those words.
    """
    return _p.prefix == func.carecli_fold(literal(word, String)).collate("C")


def _word_filter(word: str, first: Any = _c.first_name, last: Any = _c.last_name) -> ColumnElement[bool]:
    """``word`` starts a word of the first or the last name (of these columns): a filter, no index reads it.

    One LIKE over `` <first> <last>`` (folded, hyphens as spaces):
    ``% <word>%`` (a hyphen in the word as a space too). Cheaper per row
    than the prefixes and the inner words apart (it tests the rows a branch
    already found).
    """
    return _words_of(first, last).like(literal("% ", String) + _like_prefix(word.replace("-", " ")))


@lru_cache(maxsize=64)
def _words_of(first: Any, last: Any) -> ColumnElement[str]:
    """`` <first> <last>`` folded, hyphens as spaces (built once per pair of columns: building is not free)."""
    if first is _p.first_key and last is _p.last_key:  # folded already
        names = first + literal(" ", String) + last
    else:
        names = func.carecli_fold(first) + literal(" ", String) + func.carecli_fold(last)
    return (literal(" ", String) + func.translate(names, "-", " ")).collate("C")


def _plain_match(words: Sequence[str]) -> ColumnElement[bool]:
    """Every word the start of the first or the last name, or all of them together the start of one.

    Words past :data:`MAX_ASSIGNED_WORDS` may be words inside a name as well
    (they get no branch of their own).
    """
    each_word = and_(*(or_(FIRST_KEY.like(_like_prefix(w)), LAST_KEY.like(_like_prefix(w)))
                       for w in words[:MAX_ASSIGNED_WORDS]),
                     *(_word_filter(w) for w in words[MAX_ASSIGNED_WORDS:]))
    phrase = _phrase_match(words)
    return each_word if phrase is None else or_(each_word, phrase)


def _assignments(words: Sequence[str], assigned: Sequence[str]) -> list[tuple[list[ColumnElement[bool]], bool]]:
    """One match per way of giving each assigned word to the first or the last name, then the phrase.

    Assignments no row can satisfy (a last name starting with both "j" and
    "s") are left out. Each match comes with whether it is on the first name only.
    """
    alternatives: list[tuple[list[ColumnElement[bool]], bool]] = []
    for fields in product(("last", "first"), repeat=len(assigned)):
        match: list[ColumnElement[bool]] = []
        for field, key in (("last", LAST_KEY), ("first", FIRST_KEY)):
            needed = _narrowed([w for f, w in zip(fields, assigned, strict=True) if f == field])
            if needed is None:
                break
            match += [key.like(_like_prefix(word)) for word in needed]
        else:
            alternatives.append((match, "last" not in fields))
    if len(words) > 1:
        phrase = " ".join(words)
        alternatives += [([LAST_KEY.like(_like_prefix(phrase))], False), ([FIRST_KEY.like(_like_prefix(phrase))], True)]
    return alternatives


# --------------------------------------------------------------------------
# Sort orders
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Order:
    keys: tuple[ColumnElement[Any], ...]   # the ORDER BY expressions, id last
    selected: tuple[ColumnElement[Any], ...]  # what the cursor is made of (selected as k0, k1, ...)
    descending: bool

    def key_of(self, row: Any) -> tuple[Any, ...]:
        mapping = row._mapping
        return tuple(mapping[f"k{i}"] for i in range(len(self.selected)))


_ORDERS: dict[str, _Order] = {
    "name": _Order((LAST_KEY, FIRST_KEY, _c.id), (LAST_KEY, FIRST_KEY, _c.id), False),
    "name_desc": _Order((LAST_KEY, FIRST_KEY, _c.id), (LAST_KEY, FIRST_KEY, _c.id), True),
    # created_at itself is selected (psycopg cannot return -infinity); None stands for it.
    "newest": _Order((CREATED_KEY, _c.id), (_c.created_at, _c.id), True),
    "oldest": _Order((CREATED_KEY, _c.id), (_c.created_at, _c.id), False),
}

_SUMMARY_COLUMNS = (_c.id, _c.first_name, _c.last_name, _c.email, _c.phone, _c.city, _c.state, _c.status,
                    _c.updated_at, _c.created_at)


def _key_values(sort: str, key: tuple[Any, ...]) -> list[ColumnElement[Any] | TextClause]:
    if sort in ("name", "name_desc"):
        last, first, member_id = key
        return [literal(last, String), literal(first, String), literal(member_id, Uuid)]
    created, member_id = key
    created_value = (text("'-infinity'::timestamp") if created is None
                     else literal(created, DateTime))
    return [created_value, literal(member_id, Uuid)]


def _after(order: _Order, sort: str, cursor: Cursor | None) -> list[ColumnElement[bool]]:
    """The keyset condition: rows strictly after the cursor in this order."""
    if cursor is None:
        return []
    if not isinstance(cursor, Cursor) or cursor.sort != sort:
        raise ValidationError("after", "cursor", "this cursor belongs to another sort order; start from the first page")
    keys, values = tuple_(*order.keys), tuple_(*_key_values(sort, cursor.key))
    return [keys < values if order.descending else keys > values]


def _ordered(statement: Select[Any], order: _Order, columns: Any = None) -> Select[Any]:
    keys = order.keys if columns is None else columns
    return statement.order_by(*(key.desc() if order.descending else key.asc() for key in keys))


# --------------------------------------------------------------------------
# The repository
# --------------------------------------------------------------------------


class MemberSearchRepository(Repository[MemberSummary]):
    """Search, page through and count live members (read-only)."""

    table = _members
    record_type = MemberSummary
    entity_type = "member"
    read_permission: ClassVar[Permission] = Permission.MEMBERS_READ

    # -- public API ---------------------------------------------------------------

    def search(self, query: MemberQuery, *, after: Cursor | None = None, limit: int = 50) -> MemberPage:
        """One page of members matching ``query`` in its sort order, after ``after``."""
        self.require(Permission.MEMBERS_READ, "search members")
        _check_query(query)
        _check_limit(limit)
        terms = parse_text(query.text)
        return self._page(terms, query, after, limit)

    def names(self, text: str, *, limit: int = 8) -> list[MemberSummary]:
        """Members whose first/last name starts with the words of ``text`` (the command palette).

        The text is always read as name words; blank text finds nobody.
        """
        self.require(Permission.MEMBERS_READ, "search members")
        _check_limit(limit)
        terms = parse_text(text, names_only=True)
        if terms.kind == "all":
            return []
        return self._page(terms, MemberQuery(), None, limit).rows

    def count(self, query: MemberQuery) -> CountEstimate:
        """How many live members match: exact when that is cheap and at most :data:`EXACT_COUNT_LIMIT`.

        Never counts a million rows. The count stops at the limit; past it,
        or when even that bounded count would be expensive by the planner's
        reckoning (a filter combination no index narrows, such as a plan and
        the letter "s": it would read most of the table), the answer is the
        planner's row estimate, from table statistics.
        """
        self.require(Permission.MEMBERS_READ, "search members")
        _check_query(query)
        self._custom_plans()
        terms = parse_text(query.text)
        bound = EXACT_COUNT_LIMIT + 1
        matching = select(_c.id).where(*self._conditions(terms, query))
        statement: Select[Any] = select(func.count()).select_from(matching.limit(bound).subquery())
        bounded = statement
        if terms.kind == "name":
            # The same branches as a page, as sets of ids: "smi" stays a range of the name index. The
            # planner knows the first-and-last-name part (its cost and estimate decide, as for any
            # count); the words inside names and the e-mail prefix have no statistics it could use, so
            # their CTEs are read up to the bound and, when one reaches it, the count is an estimate.
            isolated = [*self._inside(terms, query, limit=bound),
                        *self._isolated(terms, query, (_c.id, _c.status), limit=bound)]
            union_ids = union(matching, *(select(hits.c.id).where(*match) for hits, match in isolated))
            bounded = select(func.count()).select_from(union_ids.limit(bound).subquery())
            statement = select(bounded.scalar_subquery(),
                               *(select(func.count()).select_from(hits).scalar_subquery() for hits, _ in isolated))
        estimate = None
        # An e-mail prefix (it holds an "@") matches a handful of rows through its
        # index, but that index is partial, so the planner has no statistics to know.
        if terms.kind != "email":
            estimate, cost = self._explain_count(select(func.count()).select_from(matching.limit(bound).subquery()))
            if cost > COUNT_COST_BUDGET and estimate > EXACT_COUNT_ROWS:
                return CountEstimate(estimate, exact=False)
        found, *isolated_rows = self.connection.execute(statement).one()
        if found <= EXACT_COUNT_LIMIT and all(rows < bound for rows in isolated_rows):
            return CountEstimate(found, exact=True)
        if estimate is None:
            estimate, _ = self._explain_count(bounded)
        # More than the limit for sure (or possibly, when a CTE reached the bound): an estimate,
        # never below what was seen.
        return CountEstimate(max(estimate, found), exact=False)

    # -- opening and writing go elsewhere ----------------------------------------------

    def get(self, entity_id: uuid.UUID, *, include_deleted: bool = False) -> MemberSummary:
        # Opening one member is an audited PHI read: MemberRepository.open.
        raise TypeError("member search does not open members: use uow.members.open (audited)")

    def delete(self, entity_id: uuid.UUID, expected_updated_at: datetime | None) -> MemberSummary:
        raise TypeError("member search is read-only: delete members with uow.members")

    def restore(self, entity_id: uuid.UUID) -> MemberSummary:
        raise TypeError("member search is read-only: restore members with uow.members")

    # -- building the queries -------------------------------------------------------

    def _custom_plans(self) -> None:
        # Generic plans cannot see the search term (see the module docstring).
        self.connection.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))

    def _filters(self, query: MemberQuery, columns: Any = _c, *, live: bool = True) -> list[ColumnElement[bool]]:
        """Live members, status and plan, on ``columns`` (the table's or a CTE's of the same names)."""
        conditions: list[ColumnElement[bool]] = [_c.deleted_at.is_(None)] if live else []
        if query.status is not None:
            conditions.append(columns.status == query.status)
        if query.plan_id is not None:
            e = _enrollments.c
            conditions.append(exists().where(
                e.member_id == columns.id, e.insurance_plan_id == query.plan_id,
                e.status == "active", e.deleted_at.is_(None)))
        return conditions

    def _conditions(self, terms: SearchTerms, query: MemberQuery) -> list[ColumnElement[bool]]:
        """The match as one predicate: all of it for e-mail and phone, the first/last-name part for names."""
        conditions = self._filters(query)
        if terms.kind == "email":
            conditions.append(_email_prefix(terms.words[0]))
        elif terms.kind == "phone":
            conditions.append(_phone_match(terms.digits))
        elif terms.kind == "name":
            # Only the first and last names (the rest: _isolated, merged by the callers).
            conditions.append(_plain_match(terms.words))
        return conditions

    def _page(self, terms: SearchTerms, query: MemberQuery, after: Cursor | None, limit: int) -> MemberPage:
        order = _ORDERS[query.sort]
        keyset = _after(order, query.sort, after)
        columns = (*_SUMMARY_COLUMNS, *(expr.label(f"k{i}") for i, expr in enumerate(order.selected)))
        fetch = limit + 1  # one more than shown tells whether there is a next page
        self._custom_plans()
        if terms.kind == "name":
            statement = self._name_branches(terms, query, order, after, columns, fetch)
        elif terms.kind == "email":
            hits = (select(*columns).where(*self._conditions(terms, query))
                    .cte("email_hits").prefix_with("MATERIALIZED"))
            statement = _ordered(select(hits).where(*_after_in(hits, order, query.sort, after)), order,
                                 _cte_keys(hits, order)).limit(fetch)
        else:
            statement = _ordered(select(*columns).where(*self._conditions(terms, query), *keyset),
                                 order).limit(fetch)
        rows = self.connection.execute(statement).all()
        summaries = [_summary(row) for row in rows[:limit]]
        next_cursor = Cursor(query.sort, order.key_of(rows[limit - 1])) if len(rows) > limit else None
        return MemberPage(summaries, next_cursor)

    def _name_branches(self, terms: SearchTerms, query: MemberQuery, order: _Order, after: Cursor | None,
                       columns: Any, fetch: int) -> Select[Any]:
        """Name words: ordered, limited branches, merged (see the module docstring).

        In name order, one branch per first/last assignment of the words (in
        another order, one branch with every word the start of the first or
        the last name); then, isolated in MATERIALIZED CTEs, a branch per word
        for the words inside names (``lane`` of Murphy-Lane) and one for an
        e-mail prefix.
        """
        words = terms.words
        assigned, extra = words[:MAX_ASSIGNED_WORDS], words[MAX_ASSIGNED_WORDS:]
        filters = self._filters(query)
        keyset = _after(order, query.sort, after)
        branches: list[Select[Any]] = []
        by_name = query.sort in ("name", "name_desc")
        if by_name:
            common = [*filters, *keyset, *(_word_filter(w) for w in extra)]
            for match, first_only in _assignments(words, assigned):
                if not first_only:
                    branches.append(_ordered(select(*columns).where(*common, *match), order).limit(fetch))
                    continue
                # First names only: the page's keys from ix_members_first_name_keys alone (an
                # index-only scan of the matches, sorted), then those members' rows.
                first_keys = (_ordered(select(_c.id.label("member_id"), *(key.label(f"k{n}")
                                                                     for n, key in enumerate(order.selected)))
                                 .where(*common, *match), order).limit(fetch).subquery())
                branches.append(_ordered(
                    select(*_SUMMARY_COLUMNS, first_keys.c.k0, first_keys.c.k1, first_keys.c.k2)
                    .select_from(first_keys.join(_members, _c.id == first_keys.c.member_id)), order,
                    _cte_keys(first_keys, order)).limit(fetch))
            # A word inside a name: a range of member_name_prefixes' primary key, which is in name
            # order, the other words tested on its folded names before the member is fetched.
            side_keys = (_p.last_key, _p.first_key, _p.member_id)
            side_order = _Order(side_keys, side_keys, order.descending)
            for i, word in enumerate(assigned):
                others = [_word_filter(w, _p.first_key, _p.last_key) for j, w in enumerate(words) if j != i]
                after_key = ([] if after is None else
                             [tuple_(*side_keys) < tuple_(*_key_values(query.sort, after.key)) if order.descending
                              else tuple_(*side_keys) > tuple_(*_key_values(query.sort, after.key))])
                branches.append(_ordered(
                    select(*_SUMMARY_COLUMNS, *(key.label(f"k{n}") for n, key in enumerate(side_keys)))
                    .select_from(_prefixes.join(_members, _c.id == _p.member_id))
                    .where(_inside_a_name(word), *filters, *others, *after_key), side_order).limit(fetch))
        else:
            plain = [*filters, *keyset, _plain_match(words)]
            if self._estimated_rows(select(_c.id).where(*plain)) <= FEW_MATCHES:
                # Few matches: all of them (through the name indexes), then sorted. Left to itself the
                # planner walks the creation order and tests each row's names, which it rates far too
                # cheap (folding two names per row): 15,000 rows read for a page of "smi", 30 ms against 7.
                hits = select(*columns).where(*plain).cte("plain_hits").prefix_with("MATERIALIZED")
                branches.append(_ordered(select(hits), order, _cte_keys(hits, order)).limit(fetch))
            else:
                branches.append(_ordered(select(*columns).where(*plain), order).limit(fetch))
            # A word inside a name, in creation order: the side table's rows sorted (it holds
            # created_at), the members fetched for the page only.
            for hits, match in self._inside(terms, query):
                created_keys = (func.coalesce(hits.c.created_at, text("'-infinity'::timestamp")), hits.c.id)
                after_key = ([] if after is None else
                             [tuple_(*created_keys) < tuple_(*_key_values(query.sort, after.key)) if order.descending
                              else tuple_(*created_keys) > tuple_(*_key_values(query.sort, after.key))])
                page = _ordered(select(hits.c.id).where(*match, *after_key),
                                _Order(created_keys, created_keys, order.descending)).limit(fetch).subquery()
                branches.append(_ordered(select(*columns).select_from(page.join(_members, _c.id == page.c.id)),
                                         order).limit(fetch))
        for hits, match in self._isolated(terms, query, columns):
            branches.append(_ordered(select(hits).where(*_after_in(hits, order, query.sort, after), *match), order,
                                     _cte_keys(hits, order)).limit(fetch))
        merged = union(*branches).subquery("matches")
        keys = [merged.c[f"k{i}"] for i in range(len(order.selected))]
        return _ordered(select(*(merged.c[col.name] for col in _SUMMARY_COLUMNS), *keys), order,
                        _cte_keys(merged, order)).limit(fetch)

    def _inside(self, terms: SearchTerms, query: MemberQuery,
                limit: int | None = None) -> list[tuple[Any, list[ColumnElement[bool]]]]:
        """Per name word, the MATERIALIZED CTE of the members with a word inside a name starting with it.

        Read from ``member_name_prefixes`` alone (live members only; it holds
        the folded names and created_at): columns ``id``, ``first_name``,
        ``last_name`` (folded), ``created_at``, and ``status`` when the query
        filters on it (then the members are joined). The other words, the
        status and the plan filter the CTE's rows.
        """
        words = terms.words
        inside: list[tuple[Any, list[ColumnElement[bool]]]] = []
        for i, word in enumerate(words[:MAX_ASSIGNED_WORDS]):
            columns = [_p.member_id.label("id"), _p.first_key.label("first_name"), _p.last_key.label("last_name"),
                       _p.created_at]
            source: Any = _prefixes
            if query.status is not None:
                columns.append(_c.status)
                source = _prefixes.join(_members, _c.id == _p.member_id)
            hits = (select(*columns).select_from(source).where(_inside_a_name(word)).limit(limit)
                    .cte(f"inside_{i}").prefix_with("MATERIALIZED"))
            inside.append((hits, [*self._filters(query, hits.c, live=False),
                                  *(_word_filter(w, hits.c.first_name, hits.c.last_name)
                                    for j, w in enumerate(words) if j != i)]))
        return inside

    def _isolated(self, terms: SearchTerms, query: MemberQuery, columns: Any,
                  limit: int | None = None) -> list[tuple[Any, list[ColumnElement[bool]]]]:
        """The MATERIALIZED CTE of the e-mail prefix a one-word name search may also be, with its filters.

        ``ix_members_email_lower``. The CTE holds only that lookup (live
        members): the keyset condition, the status and the plan filter its
        rows (the keyset or a plan could otherwise lead the planner to walk
        the name order or the plan's members and test every row).
        """
        isolated: list[tuple[Any, list[ColumnElement[bool]]]] = []
        if terms.email:
            hits = (select(*columns).where(_c.deleted_at.is_(None), _email_prefix(terms.email)).limit(limit)
                    .cte("email_hits").prefix_with("MATERIALIZED"))
            isolated.append((hits, self._filters(query, hits.c, live=False)))
        return isolated

    def _plan(self, statement: Select[Any]) -> dict[str, Any]:
        """The root node of ``statement``'s plan (EXPLAIN only plans: nothing is read)."""
        compiled = statement.compile(dialect=self.connection.dialect)
        plan = self.connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}", compiled.params).scalar_one()
        if isinstance(plan, str):
            plan = json.loads(plan)
        return cast(dict[str, Any], plan[0]["Plan"])

    def _estimated_rows(self, statement: Select[Any]) -> int:
        """The planner's estimate of the rows ``statement`` returns."""
        return int(self._plan(statement)["Plan Rows"])

    def _explain_count(self, bounded: Select[Any]) -> tuple[int, float]:
        """The planner's estimate of the matching rows (under the LIMIT) and the bounded count's cost.

        EXPLAIN only plans: nothing is counted.
        """
        root = self._plan(bounded)
        node: dict[str, Any] | None = root
        rows = None
        while node is not None:
            if node.get("Node Type") == "Limit":
                rows = node["Plans"][0]["Plan Rows"]
                break
            # The CTEs of a name search come first, as init plans: the count is below the outer plan.
            outer = [child for child in node.get("Plans") or () if child.get("Parent Relationship") != "InitPlan"]
            node = outer[0] if outer else None
        return int(rows if rows is not None else root["Plan Rows"]), float(root["Total Cost"])


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _phone_match(digits: str) -> ColumnElement[bool]:
    """Digits prefix; the North American country code 1 may be missing on either side."""
    patterns = [digits + "%"]
    if not digits.startswith("1"):
        patterns.append("1" + digits + "%")
    elif len(digits) >= 4:  # "1555..." also finds "555..." (but "1" alone is not everyone)
        patterns.append(digits[1:] + "%")
    return or_(*(PHONE_DIGITS.like(literal(p, String)) for p in patterns))


def _narrowed(words: Sequence[str]) -> list[str] | None:
    """The prefixes one field must start with, reduced: None if no value can start with all.

    "smi" and "smith" together mean "smith"; "j" and "s" mean nobody, and the
    branch is not built. Only decided for ASCII words, whose lower-casing is
    the same here and on the server; other words are all kept.
    """
    if len(words) < 2 or not all(w.isascii() for w in words):
        return list(words)
    longest = max(words, key=len)
    if not all(longest.lower().startswith(w.lower()) for w in words):
        return None
    return [longest]


def _phrase_match(words: Sequence[str]) -> ColumnElement[bool] | None:
    """All the words as one prefix of the first or the last name (``st. james``)."""
    if len(words) < 2:
        return None
    phrase = _like_prefix(" ".join(words))
    return or_(LAST_KEY.like(phrase), FIRST_KEY.like(phrase))


def _cte_keys(hits: Any, order: _Order) -> list[ColumnElement[Any]]:
    if len(order.selected) == 3:
        return [hits.c.k0.collate("C"), hits.c.k1.collate("C"), hits.c.k2]
    return [func.coalesce(hits.c.k0, text("'-infinity'::timestamp")), hits.c.k1]


def _after_in(hits: Any, order: _Order, sort: str, cursor: Cursor | None) -> list[ColumnElement[bool]]:
    """The keyset condition over the CTE's columns."""
    if cursor is None:
        return []
    _after(order, sort, cursor)  # validates
    keys, values = tuple_(*_cte_keys(hits, order)), tuple_(*_key_values(sort, cursor.key))
    return [keys < values if order.descending else keys > values]


def _summary(row: Any) -> MemberSummary:
    m = row._mapping
    return MemberSummary(id=m["id"], first_name=m["first_name"], last_name=m["last_name"], email=m["email"],
                         phone=m["phone"], city=m["city"], state=m["state"], status=m["status"],
                         updated_at=m["updated_at"], created_at=m["created_at"])


def _check_query(query: MemberQuery) -> None:
    if query.status is not None and query.status not in MEMBER_STATUSES:
        raise ValidationError("status", "enum", f"choose one of {', '.join(MEMBER_STATUSES)}")
    if query.sort not in SORT_KEYS:
        raise ValidationError("sort", "enum", f"choose one of {', '.join(SORT_KEYS)}")


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValidationError("limit", "range", f"must be a whole number from 1 to {MAX_PAGE_SIZE}")


def _approximately(value: int) -> str:
    """Two significant figures: 1.2M, 45K, 3,400, 870."""
    if value < 100:
        return str(value)
    rounded = round(value, 2 - len(str(value)))
    for size, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (10_000, "K")):
        if rounded >= size:
            divisor = 1000 if suffix == "K" else size
            figure = f"{rounded / divisor:.1f}".removesuffix(".0")
            return f"{figure}{suffix}"
    return f"{rounded:,}"

"""Member search: matching, filters, sort orders, keyset paging, counts and PHI-safe reprs."""

from __future__ import annotations

import unicodedata
import uuid
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from carecli.data.permissions import Permission
from carecli.data.repositories import member_search
from carecli.data.repositories.member_search import (
    CountEstimate,
    Cursor,
    MemberPage,
    MemberQuery,
    MemberSearchRepository,
    MemberSummary,
    parse_text,
)
from carecli.errors import PermissionDenied, ValidationError

T0 = datetime(2025, 1, 1, 12, 0)


def add_members(platform, *rows: dict[str, Any]) -> list[uuid.UUID]:
    """Insert members directly (fast, exact created_at); returns their ids in order."""
    ids = []
    with platform.engine.begin() as conn:
        for i, row in enumerate(rows):
            member_id = row.get("id") or uuid.uuid4()
            values = {"id": member_id, "first_name": "Pat", "last_name": "Doe", "email": None, "phone": None,
                      "status": "active", "created_at": T0 + timedelta(minutes=i), "deleted_at": None, **row}
            conn.execute(text(
                "INSERT INTO members (id, first_name, last_name, email, phone, status, created_at, updated_at, "
                "deleted_at) VALUES (:id, :first_name, :last_name, :email, :phone, :status, :created_at, "
                ":created_at, :deleted_at)"), values)
            ids.append(member_id)
    return ids


def search(platform, query: MemberQuery | str = "", **kwargs: Any) -> MemberPage:
    query = MemberQuery(text=query) if isinstance(query, str) else query
    with platform.uow() as uow:
        return uow.member_search.search(query, **kwargs)


def names_of(page: MemberPage) -> list[str]:
    return [f"{row.first_name} {row.last_name}" for row in page.rows]


def walk(platform, query: MemberQuery, limit: int) -> list[MemberSummary]:
    """Every row of ``query``, page by page, in one unit of work (as the browser scrolls)."""
    rows: list[MemberSummary] = []
    with platform.uow() as uow:
        cursor = None
        for _ in range(1000):
            page = uow.member_search.search(query, after=cursor, limit=limit)
            assert len(page.rows) <= limit
            rows += page.rows
            if page.next_cursor is None:
                return rows
            assert len(page.rows) == limit  # only the last page may be short
            cursor = page.next_cursor
    raise AssertionError("paging did not end")


# -- reading the text ----------------------------------------------------------------


@pytest.mark.parametrize(("value", "kind", "words", "digits"), [
    ("", "all", (), ""),
    ("   ", "all", (), ""),
    ("ada", "name", ("ada",), ""),
    ("  Ada   Oka ", "name", ("Ada", "Oka"), ""),
    ("okafor, ada", "name", ("okafor", "ada"), ""),
    ("ada ADA", "name", ("ada",), ""),
    ("ada.ok@", "email", ("ada.ok@",), ""),
    ("(555) 010-0", "phone", (), "5550100"),
    ("+1 555 0100", "phone", (), "15550100"),
    ("555-0100 x2", "phone", (), "55501002"),
    ("o'brien", "name", ("o'brien",), ""),
    ("r2d2", "name", ("r2d2",), ""),
])
def test_text_is_read_as_name_words_email_or_phone(value, kind, words, digits):
    terms = parse_text(value)
    assert (terms.kind, terms.words, terms.digits) == (kind, words, digits)


def test_palette_text_is_always_names():
    assert parse_text("555", names_only=True).kind == "name"
    assert parse_text("a@b", names_only=True).kind == "name"


# -- matching ---------------------------------------------------------------------------


def test_a_word_matches_the_start_of_first_or_last_name_in_any_case(platform):
    add_members(platform, {"first_name": "Ada", "last_name": "Okafor"}, {"first_name": "Adam", "last_name": "Smith"},
                {"first_name": "Grace", "last_name": "Adams"}, {"first_name": "Ida", "last_name": "Kada"})
    assert names_of(search(platform, "ada")) == ["Grace Adams", "Ada Okafor", "Adam Smith"]
    assert names_of(search(platform, "ADAM")) == ["Grace Adams", "Adam Smith"]
    assert names_of(search(platform, "oKaF")) == ["Ada Okafor"]
    assert names_of(search(platform, "dam")) == []  # a prefix, not a substring


def test_every_word_must_match_first_or_last_name(platform):
    add_members(platform, {"first_name": "Ada", "last_name": "Okafor"}, {"first_name": "Ada", "last_name": "Smith"},
                {"first_name": "Okafor", "last_name": "Adamu"}, {"first_name": "Obi", "last_name": "Okafor"})
    assert names_of(search(platform, "ada oka")) == ["Okafor Adamu", "Ada Okafor"]
    assert names_of(search(platform, "oka ada")) == ["Okafor Adamu", "Ada Okafor"]
    assert names_of(search(platform, "okafor, ada")) == ["Okafor Adamu", "Ada Okafor"]
    assert names_of(search(platform, "ada oka smi")) == []
    # Four words: the fourth only filters.
    add_members(platform, {"first_name": "Ana", "last_name": "Bea"})
    assert names_of(search(platform, "a b an be")) == ["Ana Bea"]


def test_several_words_can_be_one_name(platform):
    add_members(platform, {"first_name": "Mary", "last_name": "St. James"},
                {"first_name": "Mary Ann", "last_name": "Lee"}, {"first_name": "James", "last_name": "Stone"})
    assert names_of(search(platform, "st. james")) == ["Mary St. James"]
    assert names_of(search(platform, "mary ann")) == ["Mary Ann Lee"]
    # Each word the start of a word of the names: "jam" starts the "James" inside "St. James".
    assert names_of(search(platform, "st jam")) == ["Mary St. James", "James Stone"]


def test_email_prefix_is_case_insensitive(platform):
    add_members(platform, {"first_name": "Ada", "email": "Ada.Okafor@Example.org"},
                {"first_name": "Adam", "email": "ada.okafor2@example.org"}, {"first_name": "Bo", "email": None})
    assert [r.first_name for r in search(platform, "ada.okafor@").rows] == ["Ada"]
    assert [r.first_name for r in search(platform, "ADA.OKAFOR2@EX").rows] == ["Adam"]
    assert search(platform, "@example.org").rows == []  # a prefix of the address


def test_phone_digits_match_whatever_the_punctuation(platform):
    add_members(platform, {"first_name": "A", "phone": "555-0100"}, {"first_name": "B", "phone": "+15550123456"},
                {"first_name": "C", "phone": "(555) 012-9999"}, {"first_name": "D", "phone": None})

    def firsts(text_: str) -> list[str]:
        return sorted(r.first_name for r in search(platform, text_).rows)

    assert firsts("555-01") == ["A", "B", "C"]
    assert firsts("(555) 012") == ["B", "C"]
    assert firsts("555.0100") == ["A"]
    assert firsts("+1 555 012 34") == ["B"]
    assert firsts("1555012") == ["B", "C"]  # with or without the country code, either side
    assert firsts("1") == ["B"]
    assert firsts("999") == []


def test_like_wildcards_in_the_text_are_literal(platform):
    add_members(platform, {"first_name": "Ann", "last_name": "Smith", "email": "a_b@example.org"},
                {"first_name": "Ann", "last_name": "S%mith", "email": "axb@example.org"},
                {"first_name": "Ann", "last_name": "Back\\slash"})
    assert names_of(search(platform, "s%")) == ["Ann S%mith"]
    assert names_of(search(platform, "%")) == []
    assert names_of(search(platform, "_")) == []
    assert [r.email for r in search(platform, "a_b@").rows] == ["a_b@example.org"]
    assert names_of(search(platform, "back\\s")) == ["Ann Back\\slash"]


def test_deleted_members_are_never_found(platform):
    add_members(platform, {"first_name": "Live", "last_name": "Okafor", "email": "live@example.org",
                           "phone": "555-0100"},
                {"first_name": "Gone", "last_name": "Okafor", "email": "gone@example.org", "phone": "555-0101",
                 "deleted_at": T0})
    for query in ("", "okafor", "gone", "gone@", "555-010"):
        found = {r.first_name for r in search(platform, query).rows}
        assert "Gone" not in found, query
    for sort in member_search.SORT_KEYS:
        assert names_of(search(platform, MemberQuery(sort=sort))) == ["Live Okafor"]
    with platform.uow() as uow:
        assert uow.member_search.count(MemberQuery("okafor")) == CountEstimate(1, exact=True)


# -- filters --------------------------------------------------------------------------


def test_status_filter(platform):
    add_members(platform, {"first_name": "A", "status": "active"}, {"first_name": "S", "status": "suspended"},
                {"first_name": "I", "status": "inactive"}, {"first_name": "S2", "status": "suspended"})
    page = search(platform, MemberQuery(status="suspended"))
    assert sorted(r.first_name for r in page.rows) == ["S", "S2"]
    assert [r.first_name for r in search(platform, MemberQuery(text="s", status="inactive")).rows] == []
    with pytest.raises(ValidationError, match="status"):
        search(platform, MemberQuery(status="gone"))
    with pytest.raises(ValidationError, match="sort"):
        search(platform, MemberQuery(sort="random"))  # type: ignore[arg-type]


def test_plan_filter_keeps_members_with_a_live_active_enrollment(platform):
    gold, silver = platform.plan("GOLD"), platform.plan("SILVER")
    active, terminated, deleted, other, both = (platform.member(first_name=name) for name in
                                                ("Active", "Terminated", "Deleted", "Other", "Both"))
    with platform.uow() as uow:
        enroll = uow.enrollments.enroll
        enroll(active.id, gold.id, date(2025, 1, 1))
        gone = enroll(terminated.id, gold.id, date(2025, 1, 1))
        uow.enrollments.terminate(gone.id, None, date(2025, 6, 1))
        removed = enroll(deleted.id, gold.id, date(2025, 1, 1))
        uow.enrollments.delete(removed.id, None)
        enroll(other.id, silver.id, date(2025, 1, 1))
        enroll(both.id, gold.id, date(2025, 1, 1))
        enroll(both.id, silver.id, date(2025, 1, 1))
        enroll(both.id, gold.id, date(2024, 1, 1))  # two live enrollments in one plan: still one row
        uow.commit()
    page = search(platform, MemberQuery(plan_id=gold.id))
    assert sorted(r.first_name for r in page.rows) == ["Active", "Both"]
    assert [r.first_name for r in search(platform, MemberQuery(text="oth", plan_id=silver.id)).rows] == ["Other"]
    assert search(platform, MemberQuery(plan_id=uuid.uuid4())).rows == []
    with platform.uow() as uow:
        assert uow.member_search.count(MemberQuery(plan_id=gold.id)) == CountEstimate(2, exact=True)


# -- sort orders and keyset paging -------------------------------------------------------


def _expected_order(rows: list[dict[str, Any]], ids: list[uuid.UUID], sort: str) -> list[uuid.UUID]:
    keyed = [(row["last_name"].lower(), row["first_name"].lower(), T0 + timedelta(minutes=i) if
              "created_at" not in row else row["created_at"], member_id)
             for i, (row, member_id) in enumerate(zip(rows, ids, strict=True))]
    if sort in ("name", "name_desc"):
        ordered = sorted(keyed, key=lambda k: (k[0].encode(), k[1].encode(), k[3]), reverse=sort == "name_desc")
    else:
        ordered = sorted(keyed, key=lambda k: (k[2] or datetime.min, k[3]), reverse=sort == "newest")
    return [k[3] for k in ordered]


TIES: list[dict[str, Any]] = (
    # Many exact ties on the name (and on created_at), differing case, a NULL created_at.
    [{"first_name": "Ann", "last_name": "Smith", "created_at": T0} for _ in range(7)]
    + [{"first_name": "ann", "last_name": "SMITH", "created_at": T0} for _ in range(3)]
    + [{"first_name": "Bob", "last_name": "Smithers"}, {"first_name": "Smita", "last_name": "Rao"},
       {"first_name": "Zed", "last_name": "Adams", "created_at": None},
       {"first_name": "Amy", "last_name": "smith", "created_at": T0 + timedelta(days=1)},
       {"first_name": "Émile", "last_name": "Zola"}, {"first_name": "Al", "last_name": "de la Cruz"}]
)


@pytest.mark.parametrize("sort", member_search.SORT_KEYS)
def test_each_sort_order(platform, sort):
    ids = add_members(platform, *TIES)
    rows = search(platform, MemberQuery(sort=sort), limit=100).rows
    assert [r.id for r in rows] == _expected_order(TIES, ids, sort)


@pytest.mark.parametrize("sort", member_search.SORT_KEYS)
@pytest.mark.parametrize("limit", [1, 3, 4])
def test_keyset_paging_returns_every_row_exactly_once(platform, sort, limit):
    ids = add_members(platform, *TIES)
    walked = walk(platform, MemberQuery(sort=sort), limit)
    assert [r.id for r in walked] == _expected_order(TIES, ids, sort)
    assert len({r.id for r in walked}) == len(TIES)


@pytest.mark.parametrize("sort", member_search.SORT_KEYS)
@pytest.mark.parametrize(("text_", "expected"), [
    ("smi", 13), ("ann smi", 10), ("a", 13), ("555", 16), ("sm@", 8),
])
def test_keyset_paging_of_filtered_results(platform, sort, text_, expected):
    rows = [{**row, "phone": f"555-01{i:02d}", "email": "sm@example.org" if i % 2 else None}
            for i, row in enumerate(TIES)]
    ids = add_members(platform, *rows)
    full = search(platform, MemberQuery(text=text_, sort=sort), limit=100).rows
    walked = walk(platform, MemberQuery(text=text_, sort=sort), 3)
    assert [r.id for r in walked] == [r.id for r in full]
    assert len({r.id for r in walked}) == len(walked) == expected
    in_order = [member_id for member_id in _expected_order(rows, ids, sort) if member_id in {r.id for r in full}]
    assert [r.id for r in walked] == in_order


def test_next_cursor_is_none_exactly_on_the_last_page(platform):
    add_members(platform, *({"first_name": f"N{i}"} for i in range(4)))
    with platform.uow() as uow:
        first = uow.member_search.search(MemberQuery(), limit=2)
        second = uow.member_search.search(MemberQuery(), after=first.next_cursor, limit=2)
        assert first.next_cursor is not None and len(second.rows) == 2
        assert second.next_cursor is None
        assert uow.member_search.search(MemberQuery(), limit=4).next_cursor is None


def test_a_cursor_only_continues_its_own_sort_order(platform):
    add_members(platform, {"first_name": "A"}, {"first_name": "B"})
    with platform.uow() as uow:
        cursor = uow.member_search.search(MemberQuery(), limit=1).next_cursor
        with pytest.raises(ValidationError, match="another sort order"):
            uow.member_search.search(MemberQuery(sort="newest"), after=cursor)


def test_page_size_is_checked(platform):
    with platform.uow() as uow:
        for limit in (0, -1, member_search.MAX_PAGE_SIZE + 1):
            with pytest.raises(ValidationError, match="limit"):
                uow.member_search.search(MemberQuery(), limit=limit)


def test_repeated_searches_stay_right_after_the_driver_prepares_them(platform):
    """psycopg prepares a statement after five runs; results must not depend on which run this is."""
    add_members(platform, {"first_name": "Ada", "last_name": "Okafor"}, {"first_name": "Ben", "last_name": "Smith"})
    with platform.uow() as uow:
        for i in range(12):
            word, expected = (("oka", ["Ada"]) if i % 2 else ("smi", ["Ben"]))
            assert [r.first_name for r in uow.member_search.search(MemberQuery(word)).rows] == expected
            assert uow.member_search.count(MemberQuery(word)).value == 1


# -- the command palette ------------------------------------------------------------------


def test_names_for_the_command_palette(platform):
    add_members(platform, *({"first_name": "Ada", "last_name": f"Okafor{i}"} for i in range(10)),
                {"first_name": "Bo", "last_name": "Smith", "phone": "555-0100"})
    with platform.uow() as uow:
        found = uow.member_search.names("ada")
        assert [r.last_name for r in found] == [f"Okafor{i}" for i in range(8)]
        assert len(uow.member_search.names("oka", limit=3)) == 3
        assert uow.member_search.names("   ") == []
        assert uow.member_search.names("555") == []  # names only: not a phone search


# -- counting ---------------------------------------------------------------------------


def test_count_is_exact_when_small(platform):
    add_members(platform, *({"first_name": "Ann", "last_name": "Smith"} for _ in range(3)),
                {"first_name": "Bo", "last_name": "Jones"})
    with platform.uow() as uow:
        assert uow.member_search.count(MemberQuery()) == CountEstimate(4, exact=True)
        assert uow.member_search.count(MemberQuery("smi")) == CountEstimate(3, exact=True)
        assert uow.member_search.count(MemberQuery("nobody")) == CountEstimate(0, exact=True)


def test_count_is_estimated_past_the_exact_limit(platform, monkeypatch):
    monkeypatch.setattr(member_search, "EXACT_COUNT_LIMIT", 3)
    add_members(platform, *({"first_name": "Ann", "last_name": "Smith"} for _ in range(6)),
                {"first_name": "Bo", "last_name": "Jones"})
    with platform.engine.begin() as conn:
        conn.execute(text("ANALYZE members"))
    with platform.uow() as uow:
        for query in (MemberQuery(), MemberQuery("smi"), MemberQuery(status="active")):
            estimate = uow.member_search.count(query)
            assert not estimate.exact
            assert estimate.value >= 4  # never less than the rows already seen
        assert uow.member_search.count(MemberQuery("jo")) == CountEstimate(1, exact=True)


def test_count_is_estimated_when_even_the_bounded_count_would_be_expensive(platform, monkeypatch):
    add_members(platform, *({"first_name": "Ann", "last_name": "Smith", "email": "ann@example.org"}
                            for _ in range(3)))
    monkeypatch.setattr(member_search, "COUNT_COST_BUDGET", 0.0)
    monkeypatch.setattr(member_search, "EXACT_COUNT_ROWS", 0)
    with platform.uow() as uow:
        estimate = uow.member_search.count(MemberQuery("smi"))
        assert not estimate.exact and estimate.value >= 1
        assert estimate.describe().startswith("about ")
        # An e-mail prefix is always counted: its index has no statistics to estimate from.
        assert uow.member_search.count(MemberQuery("ann@")) == CountEstimate(3, exact=True)


@pytest.mark.parametrize(("value", "exact", "shown"), [
    (0, True, "0"), (1234, True, "1,234"), (1_234_567, True, "1,234,567"),
    (10_001, False, "about 10K"), (45_321, False, "about 45K"), (123_456, False, "about 120K"),
    (999_999, False, "about 1M"), (1_234_567, False, "about 1.2M"), (12_600_000, False, "about 13M"),
    (3_412, False, "about 3,400"), (870, False, "about 870"), (42, False, "about 42"),
])
def test_count_describe(value, exact, shown):
    assert CountEstimate(value, exact).describe() == shown


def test_count_is_exact_when_few_members_are_expected_however_dear_the_planner_rates_them(platform, monkeypatch):
    add_members(platform, *({"first_name": "Ann", "last_name": "Smith", "email": "ann@example.org"}
                            for _ in range(3)))
    monkeypatch.setattr(member_search, "COUNT_COST_BUDGET", 0.0)
    with platform.uow() as uow:
        assert uow.member_search.count(MemberQuery("smi")) == CountEstimate(3, exact=True)
    monkeypatch.setattr(member_search, "EXACT_COUNT_ROWS", 0)
    with platform.uow() as uow:
        assert not uow.member_search.count(MemberQuery("smi")).exact


# -- permissions, audit, PHI ---------------------------------------------------------------


def test_searching_needs_members_read_and_is_not_audited(platform):
    add_members(platform, {"first_name": "Ada"})
    before = platform.audit_count()
    with platform.uow() as uow:
        uow.member_search.search(MemberQuery("ada"))
        uow.member_search.count(MemberQuery("ada"))
        uow.member_search.names("ada")
        uow.commit()
    assert platform.audit_count() == before

    outsider = platform.actor(Permission.CALLS_WRITE)
    with platform.uow(outsider) as uow:
        for call in (lambda: uow.member_search.search(MemberQuery("ada")),
                     lambda: uow.member_search.count(MemberQuery()),
                     lambda: uow.member_search.names("ada")):
            with pytest.raises(PermissionDenied, match="members:read"):
                call()
    assert [row.action for row in platform.audit(user_id=outsider.user_id)] == ["deny"] * 3


def test_the_repository_only_searches(platform):
    member = platform.member()
    with platform.uow() as uow:
        assert isinstance(uow.member_search, MemberSearchRepository)
        with pytest.raises(TypeError, match="read-only"):
            uow.member_search.delete(member.id, None)
        with pytest.raises(TypeError, match="audited"):
            uow.member_search.get(member.id)


def test_reprs_show_no_names_contact_details_or_search_text(platform):
    # Fixed ids, so no random hex digits can spell a name or a number by chance.
    add_members(platform, {"id": uuid.UUID(int=1), "first_name": "Ada", "last_name": "Okafor",
                           "email": "ada.okafor@example.org", "phone": "555-0100"},
                {"id": uuid.UUID(int=2), "first_name": "Ada", "last_name": "Okafor"})
    query = MemberQuery(text="okafor 555")
    page = search(platform, MemberQuery("okafor"), limit=1)
    shown = " ".join(repr(x) for x in (page, page.rows[0], page.next_cursor, query, parse_text("okafor"),
                                       parse_text("555-0100")))
    for secret in ("Ada", "ada", "Okafor", "okafor", "555", "example.org"):
        assert secret not in shown
    assert str(page.rows[0].id) in shown and "'active'" in shown
    assert isinstance(page.next_cursor, Cursor)


# -- what people type: accents, words inside names, e-mail before the @ --------------------------
#
# Each search through the repository must find exactly the rows a plain SQL
# reference query finds: every word the start of the (folded) first name, last
# name or a word of either (split at spaces and hyphens), or all the words
# together the start of one name, or (one word with . _ + or a digit) the start
# of the e-mail address; in the sort order, page by page.

_REFERENCE = text(r"""
    SELECT m.id FROM members m
    WHERE m.deleted_at IS NULL AND (CAST(:status AS text) IS NULL OR m.status = :status) AND (
        (SELECT bool_and(starts_with(carecli_fold(m.first_name), carecli_fold(w))
                         OR starts_with(carecli_fold(m.last_name), carecli_fold(w))
                         OR EXISTS (SELECT 1 FROM regexp_split_to_table(
                                        carecli_fold(m.first_name) || ' ' || carecli_fold(m.last_name), '[\s-]+') part
                                    WHERE starts_with(part, carecli_fold(w))))
         FROM unnest(CAST(:words AS text[])) w)
        OR starts_with(carecli_fold(m.first_name), carecli_fold(:phrase))
        OR starts_with(carecli_fold(m.last_name), carecli_fold(:phrase))
        OR (:email <> '' AND starts_with(lower(m.email), lower(:email))))
    ORDER BY CASE WHEN :sort = 'name' THEN carecli_fold(m.last_name) END COLLATE "C",
             CASE WHEN :sort = 'name' THEN carecli_fold(m.first_name) END COLLATE "C",
             CASE WHEN :sort = 'name' THEN m.id END,
             CASE WHEN :sort = 'newest' THEN coalesce(m.created_at, '-infinity') END DESC,
             CASE WHEN :sort = 'newest' THEN m.id END DESC
""")

PEOPLE: list[dict[str, Any]] = [
    {"first_name": "José", "last_name": "García", "email": "jose.garcia@example.com"},
    {"first_name": "Jose", "last_name": "Garcia", "email": "jose.garcia7@example.com"},
    {"first_name": "JOSÉ", "last_name": "Núñez-Ybarra"},
    {"first_name": "Josefina", "last_name": "De la Cruz", "email": "jdelacruz@example.com"},
    {"first_name": "Joshua", "last_name": "Alvarado", "email": "joshua.alvarado@example.com"},
    {"first_name": "Joshua", "last_name": "Lane", "email": "josh_lane+care@example.com"},
    {"first_name": "Mary Ann", "last_name": "Murphy-Lane", "email": "maryann.ml@example.com", "status": "suspended"},
    {"first_name": "Anne-Marie", "last_name": "Cruz", "email": "am.cruz@example.com"},
    {"first_name": "Zoë", "last_name": "Müller-Lüdenscheidt"},
    {"first_name": "Łukasz", "last_name": "Wałęsa"},
    {"first_name": "Søren", "last_name": "Ærø"},
    {"first_name": "Nguyễn", "last_name": "Thị Minh"},
    {"first_name": "Björn", "last_name": "Straße"},
    {"first_name": "Ada", "last_name": "St. James", "email": "ada.stjames@example.com"},
    {"first_name": "Lane", "last_name": "Okafor"},
    {"first_name": "Ines", "last_name": "van der Berg"},
    {"first_name": "Old", "last_name": "De la Cruz", "deleted_at": T0},  # never found
    {"first_name": "Seán", "last_name": "O'Brien-Lane", "email": "sean.obl@example.com", "status": "suspended"},
    {"first_name": "Ann Lee", "last_name": "Jo-Marie De la Cruz"},
]

QUERIES = ["José", "jose", "JOSE", "jos", "garcía", "garcia", "nunez", "núñez", "ybarra", "lane", "LANE", "cruz",
           "la cruz", "de la", "de la cruz", "la", "marie", "ann", "mary ann", "murphy-l", "murphy lane",
           "joshua.a", "joshua.alvarado", "JOSH_L", "josh_lane+", "jose.garcia7", "am.", "maryann",
           "zoe", "muller", "ludenscheidt", "lukasz", "walesa", "soren", "aero", "nguyen", "minh", "thi",
           "strasse", "ada james", "jam", "st jam", "der", "berg", "van", "l", "j", "o'brien", "brien",
           "sean lane", "jo la cr", "a b c d e", "x", "jos gar", "gar jos", "lee cruz de ann", "de la cruz jo",
           "ann lee jo-marie", "ann lee jo marie", "jo-m"]


def reference(platform, text_: str, sort: str, status: str | None = None) -> list[uuid.UUID]:
    terms = parse_text(text_)
    assert terms.kind == "name", text_
    with platform.engine.begin() as conn:
        return list(conn.execute(_REFERENCE, {"words": list(terms.words), "phrase": " ".join(terms.words),
                                              "email": terms.email, "status": status,
                                              "sort": "newest" if sort == "newest" else "name"}).scalars())


@pytest.mark.parametrize(("sort", "few_matches"), [("name", member_search.FEW_MATCHES),
                                                    ("newest", member_search.FEW_MATCHES), ("newest", -1)],
                         ids=["name", "newest-read-and-sorted", "newest-walked"])
@pytest.mark.parametrize("status", [None, "suspended"])
def test_search_finds_exactly_what_the_sql_reference_finds(platform, monkeypatch, sort, few_matches, status):
    # In creation order the matches are read then sorted when few are expected, else the order is walked.
    monkeypatch.setattr(member_search, "FEW_MATCHES", few_matches)
    add_members(platform, *PEOPLE, *({"first_name": f"Filler{i}", "last_name": "Smith"} for i in range(5)))
    for query in QUERIES:
        expected = reference(platform, query, sort, status)
        walked = walk(platform, MemberQuery(text=query, sort=sort, status=status), 2)
        assert [r.id for r in walked] == expected, query
        with platform.uow() as uow:
            count = uow.member_search.count(MemberQuery(query, status=status))
            assert count == CountEstimate(len(expected), exact=True), query


def test_what_people_type_finds_whom_they_mean(platform):
    add_members(platform, *PEOPLE)

    def found(text_: str) -> list[str]:
        return names_of(search(platform, text_))

    assert found("jose")[0] == "Josefina De la Cruz"  # de la cruz < garcia: the two Garcías tie, then by id
    assert sorted(found("jose")[1:3]) == ["Jose Garcia", "José García"]
    assert found("jose")[3:] == ["JOSÉ Núñez-Ybarra"]
    assert found("José") == found("jose") == found("JOSE")
    assert found("nunez") == ["JOSÉ Núñez-Ybarra"]
    assert found("lane") == ["Joshua Lane", "Mary Ann Murphy-Lane", "Seán O'Brien-Lane", "Lane Okafor"]
    assert found("cruz") == ["Anne-Marie Cruz", "Josefina De la Cruz", "Ann Lee Jo-Marie De la Cruz"]
    assert found("joshua.a") == ["Joshua Alvarado"]
    assert found("josh_lane+") == ["Joshua Lane"]
    assert found("strasse") == ["Björn Straße"]
    assert found("aero") == ["Søren Ærø"]
    # Accents count for nothing in the name order either: Ærø sorts as aero.
    assert found("s")[:1] == ["Søren Ærø"]
    with platform.uow() as uow:
        assert [r.last_name for r in uow.member_search.names("cruz")] == ["Cruz", "De la Cruz", "Jo-Marie De la Cruz"]
        assert [r.first_name for r in uow.member_search.names("joshua.a")] == []  # the palette: names only


@pytest.mark.parametrize(("value", "email"), [
    ("joshua.a", "joshua.a"), ("josh_l", "josh_l"), ("j+x", "j+x"), ("jose7", "jose7"), ("r2d2", "r2d2"),
    ("joshua", ""), ("st. james", ""), ("o'brien", ""), ("joshua.a@", ""),
])
def test_one_word_that_looks_like_an_address_is_also_an_email_prefix(value, email):
    assert parse_text(value).email == email
    assert parse_text(value, names_only=True).email == ""


# The accented letters carecli_fold knows, by the ASCII letter(s) each stands for.
_SPECIAL_FOLDS = {"ß": "ss", "ẞ": "ss", "æ": "ae", "œ": "oe", "þ": "th", "ĳ": "ij", "ø": "o", "đ": "d", "ð": "d",
                  "ħ": "h", "ı": "i", "ł": "l", "ŀ": "l", "ŋ": "n", "ŧ": "t", "ĸ": "k", "ſ": "s"}


def python_fold(value: str) -> str:
    """An independent fold: Unicode's decomposition without its combining marks, the rest by hand."""
    out = []
    for ch in value.lower():
        if ch in _SPECIAL_FOLDS:
            out.append(_SPECIAL_FOLDS[ch])
            continue
        decomposed = unicodedata.normalize("NFKD", ch)
        out.append("".join(c for c in decomposed if not unicodedata.combining(c)))
    return "".join(out)


# Latin-1, Latin Extended-A and Latin Extended Additional letters that stand for an ASCII letter.
_ACCENTED = [ch for ch in map(chr, [*range(0xC0, 0x180), *range(0x1E00, 0x1F00)])
             if ch.isalpha() and python_fold(ch).isascii() and python_fold(ch).isalpha() and ch != "×"
             and python_fold(ch) != ch.lower()]
_VARIANTS: dict[str, list[str]] = {}
for _ch in _ACCENTED:
    if len(python_fold(_ch)) == 1:
        _VARIANTS.setdefault(python_fold(_ch), []).append(_ch)


def test_carecli_fold_agrees_with_unicode_on_every_accented_letter(platform):
    with platform.engine.begin() as conn:
        folded = conn.execute(text("SELECT array_agg(carecli_fold(c) ORDER BY n) FROM unnest(CAST(:c AS text[])) "
                                   "WITH ORDINALITY AS t(c, n)"), {"c": _ACCENTED}).scalar_one()
    assert len(_ACCENTED) > 300
    mismatches = {ch: (got, python_fold(ch)) for ch, got in zip(_ACCENTED, folded, strict=True)
                  if got != python_fold(ch)}
    assert mismatches == {}


def _accented(draw: st.DrawFn, word: str) -> str:
    """``word`` with some letters replaced by accented forms of themselves, in any case."""
    out = []
    for ch in word:
        choices = _VARIANTS.get(ch, [])
        letter = draw(st.sampled_from([ch, *choices])) if choices else ch
        out.append(letter.upper() if len(letter.upper()) == 1 and draw(st.booleans()) else letter)
    return "".join(out)


@st.composite
def _spellings(draw: st.DrawFn) -> tuple[str, str, str, str]:
    first = draw(st.text("abcdeilnorsuyz", min_size=2, max_size=7))
    part1 = draw(st.text("abcdeilnorsuyz", min_size=2, max_size=7))
    part2 = draw(st.text("abcdeilnorsuyz", min_size=2, max_size=7))
    separator = draw(st.sampled_from(["-", " "]))
    stored_last = f"{_accented(draw, part1)}{separator}{_accented(draw, part2)}"
    typed_word = draw(st.sampled_from([part1, part2]))
    typed = _accented(draw, typed_word[:draw(st.integers(1, len(typed_word)))])
    return _accented(draw, first), stored_last, typed, _accented(draw, first)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spelling=_spellings())
def test_any_accented_spelling_of_a_word_of_the_name_finds_the_member(platform, spelling):
    stored_first, stored_last, typed_last, typed_first = spelling
    (member_id,) = add_members(platform, {"first_name": stored_first, "last_name": stored_last})
    try:
        for typed in (typed_last, typed_first, f"{typed_first} {typed_last}"):
            rows = walk(platform, MemberQuery(text=typed), 50)
            assert member_id in {r.id for r in rows}, (stored_first, stored_last, typed)
    finally:
        with platform.engine.begin() as conn:
            conn.execute(text("DELETE FROM members WHERE id = :id"), {"id": member_id})


def test_count_of_words_inside_names_is_an_estimate_past_the_limit(platform, monkeypatch):
    monkeypatch.setattr(member_search, "EXACT_COUNT_LIMIT", 3)
    add_members(platform, *({"first_name": "Pat", "last_name": "Murphy-Lane"} for _ in range(5)),
                {"first_name": "Lee", "last_name": "Okafor"})
    with platform.uow() as uow:
        estimate = uow.member_search.count(MemberQuery("lane"))
        assert not estimate.exact and estimate.value >= 4
        assert uow.member_search.count(MemberQuery("lee")) == CountEstimate(1, exact=True)

"""member_name_prefixes (platform_0010) follows members whichever way they change.

The side table is written only by statement-level triggers on ``members``: each
test changes members one way (repository, SQL, the bulk import's COPY, the
retention purge) and checks the table against what ``carecli_name_words`` says
the live members' inner words are — the same SQL the search's reference test uses.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text

from carecli.data.bulk.catalog import COLUMNS
from carecli.data.repositories.member_search import MemberQuery
from tests.import_fixtures import Importer
from tests.test_member_search import add_members, search

EXPECTED = """
    SELECT DISTINCT left(w, n), carecli_fold(m.last_name), carecli_fold(m.first_name), m.id, m.created_at
    FROM members m
    CROSS JOIN LATERAL unnest(tsvector_to_array(carecli_name_words(m.last_name, m.first_name))) w
    CROSS JOIN LATERAL generate_series(1, length(w)) n
    WHERE m.deleted_at IS NULL
"""


def rows(platform: Any) -> set[tuple[Any, ...]]:
    return {tuple(row) for row in platform.sql(
        "SELECT prefix, last_key, first_key, member_id, created_at FROM member_name_prefixes")}


def assert_in_step(platform: Any) -> None:
    assert rows(platform) == {tuple(row) for row in platform.sql(EXPECTED)}


def prefixes_of(platform: Any, member_id: uuid.UUID) -> set[str]:
    return {row[0] for row in platform.sql(
        "SELECT prefix FROM member_name_prefixes WHERE member_id = :id", id=member_id)}


def test_inserted_members_get_every_prefix_of_their_inner_words(platform):
    lane, cruz, plain = add_members(platform, {"first_name": "Zoë Ann", "last_name": "Müller-Lane"},
                                    {"first_name": "Joaquín", "last_name": "De la Cruz"},
                                    {"first_name": "Pat", "last_name": "Doe"})
    assert prefixes_of(platform, lane) == {"l", "la", "lan", "lane", "a", "an", "ann"}
    assert prefixes_of(platform, cruz) == {"l", "la", "c", "cr", "cru", "cruz"}
    assert prefixes_of(platform, plain) == set()
    key = platform.sql("SELECT last_key, first_key FROM member_name_prefixes WHERE member_id = :id LIMIT 1", id=lane)
    assert tuple(key[0]) == ("muller-lane", "zoe ann")
    assert_in_step(platform)


def test_name_updates_soft_deletes_restores_and_hard_deletes_follow(platform):
    member = platform.member(first_name="Ann", last_name="Murphy-Lane")
    assert prefixes_of(platform, member.id) == {"l", "la", "lan", "lane"}
    with platform.uow() as uow:
        current = uow.members.update(member.id, member.updated_at, {"last_name": "Murphy-Cruz"})
        uow.commit()
    assert prefixes_of(platform, member.id) == {"c", "cr", "cru", "cruz"}
    assert [r.id for r in search(platform, "cruz").rows] == [member.id] and search(platform, "lane").rows == []
    with platform.uow() as uow:  # a change that is not a name leaves the rows alone
        current = uow.members.update(member.id, current.updated_at, {"city": "Salem"})
        uow.commit()
    assert prefixes_of(platform, member.id) == {"c", "cr", "cru", "cruz"}
    with platform.uow() as uow:
        uow.members.delete(member.id, current.updated_at)
        uow.commit()
    assert prefixes_of(platform, member.id) == set()
    assert_in_step(platform)
    with platform.uow() as uow:
        uow.members.restore(member.id)
        uow.commit()
    assert prefixes_of(platform, member.id) == {"c", "cr", "cru", "cruz"}
    assert_in_step(platform)
    with platform.engine.begin() as conn:  # several rows in one statement, some of them changed
        conn.execute(text("UPDATE members SET first_name = CASE WHEN last_name = 'Murphy-Cruz' "
                          "THEN 'Mary Jo' ELSE first_name END"))
    assert prefixes_of(platform, member.id) == {"c", "cr", "cru", "cruz", "j", "jo"}
    with platform.engine.begin() as conn:
        conn.execute(text("DELETE FROM members WHERE id = :id"), {"id": member.id})
    assert prefixes_of(platform, member.id) == set()
    assert_in_step(platform)


def test_truncate_empties_the_side_table(platform):
    add_members(platform, {"first_name": "Ann", "last_name": "Murphy-Lane"})
    with platform.engine.begin() as conn:
        conn.execute(text("TRUNCATE members CASCADE"))
    assert rows(platform) == set()


def test_the_bulk_import_fills_it(importer: Importer):
    header = COLUMNS["members"][1:]
    people = [{"external_member_number": f"EXT-{n}", "first_name": first, "last_name": last,
               "ssn": f"123-45-{6700 + n}", "dob": "1970-01-0" + str(n), "status": "active"}
              for n, (first, last) in enumerate((("Ann", "Murphy-Lane"), ("Joaquín", "De la Cruz"),
                                                 ("Pat", "Doe")), start=1)]
    lines = [",".join(header)] + [",".join(str(p.get(column, "")) for column in header) for p in people]
    outcome = importer.run("members", "\n".join(lines) + "\n")
    assert outcome.problems == [] and outcome.summary.committed
    platform = importer.platform
    assert_in_step(platform)
    assert len(rows(platform)) == 4 + 6
    found = search(platform, MemberQuery(text="la", sort="newest")).rows
    assert sorted(r.last_name for r in found) == ["De la Cruz", "Murphy-Lane"]

"""A member's notes are people's notes only: no system fact kept in ``metadata`` is ever listed as one.

The SSN's blind index, external numbers, break-the-glass grants, legal holds and
any key carecli adds later are facts of the system; ``MetadataRepository.notes``
lists only ``note:`` keys (an allow-list), so none of them reaches the Notes tab.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from carecli.data.bulk.catalog import COLUMNS
from carecli.data.repositories.metadata import NOTE_KEY_PREFIX, note_key
from tests.import_fixtures import Importer, csv_text
from tests.platform_fixtures import Platform

BLIND_INDEX = "11055bd0c4f0e7a9b2d3c1e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8"


def test_notes_are_only_note_keys_never_a_system_fact(platform: Platform) -> None:
    member = platform.member()
    written = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    with platform.uow() as uow:
        for key, value in (("ssn_blind_index", BLIND_INDEX), ("external_member_number", "EXT-000042"),
                           (f"emergency_access:{uuid.uuid4()}", {"reason": "unconscious at the ER"}),
                           ("legal_hold", {"reason": "litigation 2026-17"}), ("resolution", {"note": "x"}),
                           ("some_future_fact", "not a note either"), ("notes", "no prefix: not a note"),
                           (note_key(written), {"text": "Prefers calls after 5pm", "by": "u"}),
                           (note_key(written.replace(day=3)), {"text": "Daughter helps with forms", "by": "u"}),
                           (note_key(written.replace(day=4)), {"text": "withdrawn", "by": "u"})):
            uow.metadata.put("member", member.id, key, value)
        uow.metadata.remove("member", member.id, note_key(written.replace(day=4)))
        uow.commit()

    with platform.uow() as uow:
        notes = uow.metadata.notes("member", member.id)
        everything = uow.metadata.for_entity("member", member.id)
        number = uow.metadata.value("member", member.id, "external_member_number")
        absent = uow.metadata.value("member", member.id, "no_such_key")
    assert [note.metadata_key for note in notes] == [note_key(written), note_key(written.replace(day=3))]
    assert all(note.metadata_key.startswith(NOTE_KEY_PREFIX) for note in notes)
    assert [note.metadata_value["text"] for note in notes] == ["Prefers calls after 5pm", "Daughter helps with forms"]
    assert len(everything) == 9  # the facts are all there, just not among the notes
    assert (number, absent) == ("EXT-000042", None)
    assert note_key(written) == "note:20260102T030405.000006"


def test_an_imported_member_has_a_blind_index_and_no_notes(importer: Importer) -> None:
    """The issue's case: a member imported with an ``ssn`` column showed its blind index as a note."""
    header = ("external_member_number", "first_name", "last_name", "ssn", "status")
    outcome = importer.run("members", csv_text(header, ("EXT-000007", "Quenby", "Marrowfield", "287-65-4321",
                                                         "active")))
    assert outcome.problems == [] and "ssn" in COLUMNS["members"]
    platform = importer.platform
    [member_id] = [row.entity_id for row in platform.sql(
        "SELECT entity_id FROM metadata WHERE entity_type = 'member' AND metadata_key = 'ssn_blind_index'")]
    with platform.uow() as uow:
        assert {fact.metadata_key for fact in uow.metadata.for_entity("member", member_id)} == {
            "ssn_blind_index", "external_member_number"}
        assert uow.metadata.notes("member", member_id) == []

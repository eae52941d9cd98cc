"""Time-ordered ids (carecli.data.ids): UUIDv7 from one function, in order, and on the rows carecli writes."""

from __future__ import annotations

import time
import uuid

from carecli.data.ids import new_id, v7_int


def test_new_id_is_a_version_7_rfc_uuid() -> None:
    value = new_id()
    assert isinstance(value, uuid.UUID)
    assert value.version == 7
    assert value.variant == uuid.RFC_4122


def test_new_ids_strictly_increase_within_a_process() -> None:
    ids = [new_id() for _ in range(200_000)]  # many per millisecond
    assert all(a.int < b.int for a, b in zip(ids, ids[1:]))
    assert all(value.version == 7 for value in ids[:: 997])


def test_the_timestamp_is_the_creation_millisecond_and_never_runs_ahead() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(100_000)]
    after = time.time_ns() // 1_000_000
    stamps = [value.int >> 80 for value in (ids[0], ids[-1])]
    assert before <= stamps[0] <= stamps[1] <= after


def test_v7_int_keeps_the_timestamp_and_sets_version_and_variant() -> None:
    value = uuid.UUID(int=v7_int(1_700_000_000_123, (1 << 80) - 1))
    assert value.version == 7 and value.variant == uuid.RFC_4122
    assert value.int >> 80 == 1_700_000_000_123
    assert uuid.UUID(int=v7_int(5, 0)).int >> 80 == 5
    assert v7_int(5, 0) < v7_int(5, (1 << 80) - 1) < v7_int(6, 0)

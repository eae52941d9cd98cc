"""The one place carecli makes new row ids: time-ordered UUIDs (version 7, RFC 9562).

Every id carecli generates itself (members, calls, flags, enrollments,
metadata, audit rows, data keys, import and seed rows, ...) comes from
:func:`new_id`. A version-7 UUID starts with the Unix time in milliseconds,
so rows created one after another get increasing ids and every b-tree that
leads with an id (the primary keys, ``ix_audit_logs_entity``'s entity ids)
grows at its right edge instead of dirtying random pages of a large table.

The generator is ``uuid_utils`` (Rust, BSD-3): a 42-bit counter after the
millisecond keeps ids from one process strictly increasing even when many
are made within a millisecond, and its clock never runs ahead of the wall
clock (``uuid6``'s ``uuid7()`` advances the timestamp by a millisecond per
id instead, so a bulk load of a million rows would stamp ids ~17 minutes in
the future). Python 3.14's ``uuid.uuid7`` is used where it exists.

What it means: an id reveals when its row was created, to the millisecond;
it holds nothing else (no host, no PHI, 32+ random bits). Nothing may
depend on an id's version: rows made by the database's own
``DEFAULT gen_random_uuid()``, and every version-4 id written before, stay
valid ids.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

__all__ = ["new_id", "new_id_text", "v7_int"]

_UUID_RANDOM_CLEAR = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID_V7_SET = (0x7 << 76) | (0x2 << 62)
_RANDOM_BITS = (1 << 80) - 1


def _generator() -> Callable[[], uuid.UUID]:
    stdlib: Callable[[], uuid.UUID] | None = getattr(uuid, "uuid7", None)  # Python 3.14+
    if stdlib is not None:
        return stdlib
    from uuid_utils.compat import uuid7

    return uuid7


#: A new, time-ordered id (UUIDv7): strictly increasing within this process.
new_id: Callable[[], uuid.UUID] = _generator()


def _text_generator() -> Callable[[], str]:
    stdlib: Callable[[], uuid.UUID] | None = getattr(uuid, "uuid7", None)
    if stdlib is not None:
        return lambda: str(stdlib())
    from uuid_utils import uuid7  # the same generator as the compat one, without the stdlib object

    return lambda: str(uuid7())


#: :func:`new_id` as its canonical text (a bulk load writing COPY lines makes millions: an eighth of the cost)
new_id_text: Callable[[], str] = _text_generator()


def v7_int(unix_ms: int, random_bits: int) -> int:
    """A version-7 UUID as a 128-bit int, from a millisecond timestamp and 80 bits of randomness.

    For bulk generators (the seeder) that build ids as plain ints and draw
    the random part from a seeded generator so that a seed is reproducible;
    the version and variant bits overwrite 6 of the 80 random bits.
    """
    value = ((unix_ms & 0xFFFF_FFFF_FFFF) << 80) | (random_bits & _RANDOM_BITS)
    return (value & _UUID_RANDOM_CLEAR) | _UUID_V7_SET

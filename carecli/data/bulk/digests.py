"""A re-run's unchanged rows, known before they are parsed: keyed digests of the source records.

Re-running a file that is already loaded (after a crash, or the nightly file
that changed in a few rows) used to parse, validate, match and compare every
row again: about 40 µs of Python a row before the database did anything, and
the stored dates of birth decrypted to compare. Now, for the kinds that keep
them (members), each row an import loads or finds unchanged leaves a row in
``import_digests`` (migration ``platform_0015``):

* ``digest``: keyed BLAKE2b-128 of the source record (the columns the file
  gave, after renaming with the mapping, with their values as read, sorted by
  name), the kind, carecli's version and rules and the current
  year (the one rule that depends on the day is by calendar year), under a key
  of its own derived from the blind-index key (:meth:`BlindIndex.derived_key`);
  held as the 32 hex digits PostgreSQL reads as a ``uuid``;
* ``state``: the transaction ids (``xmin``) of the rows the record then left:
  for a member, its own row and its external-member-number and blind-index
  metadata rows.

A record whose digest is found, for a record whose rows still have those
transaction ids, would be found unchanged by the full path: the same values,
matched to the same member, who nobody changed since (any write of a row, by
carecli or by hand, gives it a new ``xmin``). Such a row skips parsing,
matching and comparing; its natural keys are still claimed in file order, so
an in-file duplicate is refused as before. Every other row takes the full
path, which records its digest again. Rows are never *written* on the strength
of a digest, only left alone.

What can make a digest miss (and the row take the full path, which is always
right): a new carecli version or rules (:data:`RULES`), a new year, a dump and restore
(new transaction ids), a member edited since, a different column set or
spelling in the file. What a stored digest reveals: nothing without the key
(like the blind index); it is deleted with its member by the retention purge.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from typing import Any, NoReturn

from sqlalchemy import Connection

from carecli import __version__
from carecli.data.bulk.blind_index import BlindIndex

__all__ = ["RECORD_GIVEN", "RECORD_GIVEN_FIRST", "RULES", "RowDigester", "recorded_any", "text_list"]

#: Part of every digest: change it with any change to parsing or validation that could load the same record
#: differently (carecli's version is part of it too), and every stored digest stops matching.
RULES = b"members-2"
_PURPOSE = b"import-row-digest"
_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), check_circular=False,
                            allow_nan=True)


def _refuse(value: object) -> NoReturn:
    raise TypeError(f"{type(value).__name__} has no JSON text")


def _one_encoder() -> Callable[[Any], str]:
    """``_ENCODER.encode``, its C encoder made once: ``JSONEncoder.encode`` makes a new one for every record
    (2-4 µs of a re-run's row). The same text (a Hypothesis test compares them); Python's way where the
    interpreter has no C encoder."""
    make = getattr(json.encoder, "c_make_encoder", None)  # (undocumented: what JSONEncoder.iterencode calls)
    if make is None:  # pragma: no cover - CPython has it
        return _ENCODER.encode
    # markers (None: no circular check), default, string encoder (not ASCII-only), indent, separators,
    # sort_keys, skipkeys, allow_nan: _ENCODER's settings
    made = make(None, _refuse, json.encoder.encode_basestring, None, ":", ",", True, False, True)

    def encode(values: Any) -> str:
        return "".join(made(values, 0))

    return encode


_encode = _one_encoder()


#: record digests with their states as given: (entity type, entity ids, digests, states)
#: The lists travel as one text parameter each, comma-separated (uuids, and states of digits, '/', '-' and
#: :data:`~carecli.data.bulk.kinds.XID`): a Python list is dumped element by element, in the writer thread,
#: under the GIL the planning thread needs (5 s of a 1M-member import, by py-spy).
RECORD_GIVEN_FIRST = (
    "INSERT INTO import_digests (entity_type, entity_id, digest, state) "
    "SELECT %s, v.* FROM unnest(string_to_array(%s, ',')::uuid[], string_to_array(%s, ',')::uuid[], "
    "string_to_array(%s, ',')) AS v")
#: the same, replacing a digest recorded before. RECORD_GIVEN_FIRST serves a run that found no digest of its
#: kind recorded (asked under the import's lock): its new records' ids are its own and each is recorded once,
#: so nothing can conflict, and a plain insert costs the server a third less than ON CONFLICT's speculative one
RECORD_GIVEN = (RECORD_GIVEN_FIRST + " ON CONFLICT (entity_type, entity_id) DO UPDATE SET digest = EXCLUDED.digest, "
                "state = EXCLUDED.state")


def text_list(values: Iterable[object]) -> str:
    """``values`` as the one text parameter the digest statements split on commas (uuids, states)."""
    return ",".join(map(str, values))


class RowDigester:
    """The digest of a source record of one kind: 32 hex digits (128 bits), which PostgreSQL reads as a uuid.

    Keyed BLAKE2b with a 16-byte digest: a MAC as HMAC-SHA-256 is, in one pass instead of two (a re-run
    digests every row before anything else: 1.3 against 3.2 µs a row here, and no ``uuid.UUID`` to build,
    another 2.6 µs). The keyed state, with the kind, version, rules and year already fed to it, is copied
    for each record (a copy keeps the GIL, as ``KeyedMac`` explains for the blind index).
    """

    __slots__ = ("_mac",)

    def __init__(self, blind: BlindIndex, kind: str, *, today: date | None = None) -> None:
        # The year too: the one rule that depends on the day, a date of birth no more than 130 years back
        # (``dob_too_old``, by calendar year), may refuse on 1 January a row it took before. A row known
        # in one year is matched the full way once in the next.
        year = str((today or date.today()).year).encode("ascii")
        self._mac = hashlib.blake2b(key=blind.derived_key(_PURPOSE), digest_size=16, person=b"carecli-digest")
        self._mac.update(b"\0".join((kind.encode("ascii"), __version__.encode("ascii"), RULES, year)) + b"\0")

    def __repr__(self) -> str:
        return "RowDigester([key])"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a RowDigester holds a key: it is not pickled")

    def digest(self, values: Mapping[str, Any]) -> str | None:
        """The record's digest; None for values that have no stable text (never from a reader)."""
        try:
            text = _encode(values)
        except (TypeError, ValueError):
            return None
        mac = self._mac.copy()
        mac.update(text.encode("utf-8", "surrogatepass"))
        return mac.hexdigest()


def recorded_any(connection: Connection, entity_type: str | None) -> bool:
    """Whether ``import_digests`` holds any digest of ``entity_type``."""
    return bool(connection.exec_driver_sql(
        "SELECT EXISTS (SELECT 1 FROM import_digests WHERE entity_type = %(entity_type)s)",
        {"entity_type": entity_type}).scalar())

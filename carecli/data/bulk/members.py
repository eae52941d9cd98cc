"""Importing members: matched by id, external member number or SSN; PHI encrypted on the way in.

A row is matched to an existing member by, in this order, its ``id``, its
``external_member_number`` (metadata) and the blind index of its SSN
(metadata). When these point at different members the row is refused
(``identity_conflict``); a row with none of them could never be matched
again, so it is refused too (``identity_required``): a re-run would create
the person twice.

SSN and date of birth are parsed into the masked :class:`Ssn` /
:class:`DateOfBirth` wrappers and encrypted bound to the member's id before
anything is written; the plaintext never leaves this process's memory.
Whether an existing member's SSN changed is told by the blind index; their
date of birth is decrypted to compare.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Iterable, Mapping
from concurrent.futures import wait
from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row
from sqlalchemy import Connection

from carecli.data import audit
from carecli.data.bulk import copytext
from carecli.data.bulk import fields as f
from carecli.data.bulk.blind_index import backfill
from carecli.data.bulk.catalog import EXTERNAL_MEMBER_NUMBER, SSN_BLIND_INDEX
from carecli.data.bulk.kinds import (
    XID,
    BatchContext,
    BatchPlan,
    Kind,
    Parsed,
    PrepareTools,
    absent_keys,
    driver_connection,
    metadata_owners,
)
from carecli.data.bulk.readers import Record, RecordProblem
from carecli.data.crypto.phi import DateOfBirth, Ssn
from carecli.data.ids import new_id, new_id_text
from carecli.data.models.enums import MEMBER_STATUSES
from carecli.data.models.platform import Member
from carecli.data.permissions import Permission

REDACTED = audit.REDACTED
_MEMBER_COLUMNS = ("id", "encrypted_ssn", "encrypted_dob", "first_name", "last_name", "email", "phone",
                   "address_line1", "address_line2", "city", "state", "zip_code", "status")


_SENSITIVE = audit.SENSITIVE_FIELDS["member"] | {EXTERNAL_MEMBER_NUMBER}
#: the member's values its create audit row holds (PHI and contact details reduced to a marker)
_AUDITED = (*_MEMBER_COLUMNS[1:], EXTERNAL_MEMBER_NUMBER)
_METADATA_COLUMNS = ("id", "entity_type", "entity_id", "metadata_key", "metadata_value")
_AUDIT_COLUMNS = ("id", "user_id", "entity_type", "entity_id", "action", "old_values", "new_values", "ip_address",
                  "user_agent")
#: New members go in as a binary-safe text COPY per table and batch, of lines made per row by
#: :meth:`MembersKind.prepare_row` (in a worker process): the member, its metadata rows (external
#: member number, blind index) and the audit rows of all three, each table's rows in the order of
#: their ids (time-ordered: right-edge appends to the primary keys).
NEW_ROWS = (("members", _MEMBER_COLUMNS), ("metadata", _METADATA_COLUMNS), ("audit_logs", _AUDIT_COLUMNS))


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).translate(copytext.ESCAPES)


def _json_string(value: str) -> str:
    """``_json(value)`` for a string, as COPY text: JSON escapes every control character, so only a
    backslash is left for COPY to double (a tenth of the general path's cost)."""
    text = _JSON_STRING(value)
    return text.replace("\\", "\\\\") if "\\" in text else text


#: a string as JSON text, as ``json.dumps(..., ensure_ascii=False)`` writes it (the C encoder)
_JSON_STRING = json.encoder.encode_basestring
_REDACTED_JSON = _json_string(REDACTED)
#: the member audit row's new values: each column's '"name":' and whether its value is only ever
#: shown as redacted (PHI and contact details) or as itself
_AUDIT_SHAPE = tuple((_json_string(name) + ":", name in _SENSITIVE) for name in _AUDITED)


def _audited_json(new: Mapping[str, Any]) -> str:
    """``_json`` of the member create audit row's values (``audit.safe_values``' rule: PHI and contact
    details only as redacted or null), built directly: made per new member, it was a fifth of an import."""
    parts = []
    for (key, sensitive), name in zip(_AUDIT_SHAPE, _AUDITED):
        value = new.get(name)
        if value is None:
            parts.append(key + "null")
        elif sensitive:
            parts.append(key + _REDACTED_JSON)
        elif type(value) is str:
            parts.append(key + _json_string(value))
        else:
            parts.append(key + _json(value))
    return "{" + ",".join(parts) + "}"


class _Sealed:
    """Stands in a prepared row's values for its SSN or date of birth: the value is given (not
    blank), and only its ciphertext (``MemberPrep``) travels; the plaintext stays where it was parsed."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "[sealed]"

    def __reduce__(self) -> str:
        return "SEALED"


SEALED = _Sealed()


@dataclass(slots=True, repr=False)
class _Held:
    """A row prepared in the planning process itself (no worker): its plaintext SSN and date of birth
    and the new member's values, kept until the planner knows whether the row creates a member. A
    row that matches an existing one (every row of a re-run) is then never encrypted nor formatted
    for nothing. Never pickled: :class:`Ssn` and :class:`DateOfBirth` refuse to be."""

    ssn: Ssn | None
    dob: DateOfBirth | None
    new: dict[str, Any] | None
    tools: PrepareTools

    def __repr__(self) -> str:  # the new member's contact details: never in a log or a traceback
        return "_Held([held])"


@dataclass(slots=True, repr=False)
class MemberPrep:
    """What :meth:`MembersKind.prepare_row` made of a row: everything per row that needs no database.

    ``id`` is the member's id if the row creates one (the file's ``id``, else a new one); SSN and
    date of birth are encrypted bound to it. In a worker process that is done at once (only
    ciphertext goes back); in the planning process it waits in ``held`` until the row is known to
    create a member (:meth:`seal`). A row that turns out to match an existing member is compared
    through ``ssn``/``dob`` (decrypted, or the held plaintext) and re-encrypted for that member only
    if it changed. ``lines`` are the new member's COPY lines (None when a required column is
    missing: ``problems``).
    """

    id: uuid.UUID
    blind_hash: str | None
    encrypted_ssn: bytes | None
    encrypted_dob: bytes | None
    #: COPY lines of the new rows of ``NEW_ROWS``' tables (members, metadata, audit_logs)
    lines: tuple[str, str, str] | None
    problems: list[RecordProblem]
    held: _Held | None = None

    def __repr__(self) -> str:  # its lines and held values hold contact details
        return f"MemberPrep(id={self.id}, [prepared])"

    @property
    def has_ssn(self) -> bool:
        return self.encrypted_ssn is not None or (self.held is not None and self.held.ssn is not None)

    def ssn(self, ctx: BatchContext) -> Ssn | None:
        if self.held is not None:
            return self.held.ssn
        if self.encrypted_ssn is None:
            return None
        return ctx.cipher().decrypt_ssn(self.encrypted_ssn, self.id)

    def dob(self, ctx: BatchContext) -> DateOfBirth | None:
        if self.held is not None:
            return self.held.dob
        if self.encrypted_dob is None:
            return None
        return ctx.cipher().decrypt_dob(self.encrypted_dob, self.id)

    def seal(self) -> None:
        """Encrypt the held SSN and date of birth (bound to ``id``) and make the new rows' lines."""
        held, self.held = self.held, None
        if held is None:
            return
        if held.ssn is not None or held.dob is not None:
            cipher = held.tools.cipher()
            if held.ssn is not None:
                self.encrypted_ssn = cipher.encrypt_ssn(held.ssn, self.id)
            if held.dob is not None:
                self.encrypted_dob = cipher.encrypt_dob(held.dob, self.id)
        if held.new is not None:
            self.lines = MembersKind.new_rows(self, held.new, held.tools.actor_fields)


def _metadata_text(key: str) -> str:
    return (f"(SELECT k.metadata_value #>> '{{}}' FROM metadata k WHERE k.entity_type = 'member' "
            f"AND k.entity_id = m.id AND k.metadata_key = '{key}' AND k.deleted_at IS NULL)")


#: existing members (soft-deleted included) by id, each with its live external member number and blind index
#: as text: one statement and no ORM rows. Each member's metadata is a probe of the metadata's unique key
#: (a subquery per member): as joins, the planner hashed all of metadata for every batch (228 ms a batch at
#: 200,000 members, growing with the table; 58 ms so; a re-run reads every member of the file).
_EXISTING = (f"SELECT m.*, {_metadata_text(EXTERNAL_MEMBER_NUMBER)} AS carecli_number, "
             f"{_metadata_text(SSN_BLIND_INDEX)} AS carecli_blind FROM members m WHERE m.id = ANY(%s)")


def _existing_members(connection: Connection, ids: set[uuid.UUID]) -> tuple[
        dict[uuid.UUID, dict[str, Any]], dict[uuid.UUID, str], dict[uuid.UUID, str]]:
    """Members with ``ids`` (their columns), and the external member number and blind index of those that
    have them."""
    if not ids:
        return {}, {}, {}
    existing: dict[uuid.UUID, dict[str, Any]] = {}
    numbers: dict[uuid.UUID, str] = {}
    blinds: dict[uuid.UUID, str] = {}
    with driver_connection(connection.connection).cursor(row_factory=dict_row) as cursor:
        cursor.execute(_EXISTING, [list(ids)])
        for row in cursor.fetchall():
            number, blind = row.pop("carecli_number"), row.pop("carecli_blind")
            member_id = row["id"]
            existing[member_id] = row
            if number is not None:
                numbers[member_id] = number
            if blind is not None:
                blinds[member_id] = blind
    return existing, numbers, blinds


def _fact(alias: str, key: str, member: str) -> str:
    """A member's live metadata row of ``key`` (its xmin), probed by the unique key."""
    return (f"LEFT JOIN LATERAL (SELECT k.xmin FROM metadata k "
            f"WHERE k.entity_type = 'member' AND k.entity_id = {member} AND k.metadata_key = '{key}' "
            f"AND k.deleted_at IS NULL OFFSET 0) {alias} ON true")


#: what a member's rows are now, as :mod:`carecli.data.bulk.digests` records it: the transaction ids of the
#: member's row and of its number and blind-index metadata rows (any write gives a row a new one)
_STATE = "m.xmin::text || '/' || coalesce(n.xmin::text, '-') || '/' || coalesce(b.xmin::text, '-')"
#: (OFFSET 0 keeps each lateral subquery a probe per row: flattened into joins, the planner may hash tables)
_DIGEST_ROWS = (f"{_fact('n', EXTERNAL_MEMBER_NUMBER, 'm.id')} {_fact('b', SSN_BLIND_INDEX, 'm.id')}")
#: the live members whose recorded digest is one of these and whose rows are as they were then
#: (the digests travel as one text parameter, and each comes back as its place in it with the member's id as
#: text: binding and reading 5,000 uuid values a batch took psycopg's Python-level array dumper and uuid objects)
_KNOWN_UNCHANGED = (
    "SELECT v.place, m.id::text FROM unnest(string_to_array(%s, ',')::uuid[]) WITH ORDINALITY AS v(digest, place) "
    # (by digest alone: a digest is of one kind's record, and the kind's rows are joined by id after)
    "JOIN LATERAL (SELECT y.digest, y.entity_id, y.state FROM import_digests y WHERE y.digest = v.digest "
    "OFFSET 0) d ON true "
    "JOIN LATERAL (SELECT x.id, x.xmin FROM members x WHERE x.id = d.entity_id AND x.deleted_at IS NULL "
    f"OFFSET 0) m ON true {_DIGEST_ROWS} WHERE d.state = {_STATE}")
#: record the digests of a written batch (member ids, digests): inserted, or updated where they differ
RECORD_DIGESTS = (
    f"INSERT INTO import_digests (entity_type, entity_id, digest, state) SELECT 'member', m.id, v.digest, {_STATE} "
    "FROM unnest(string_to_array(%s, ',')::uuid[], string_to_array(%s, ',')::uuid[]) AS v(entity_id, digest) "
    "JOIN LATERAL (SELECT x.id, x.xmin FROM members x WHERE x.id = v.entity_id OFFSET 0) m ON true "
    f"{_DIGEST_ROWS} "
    "ON CONFLICT (entity_type, entity_id) DO UPDATE SET digest = EXCLUDED.digest, state = EXCLUDED.state "
    "WHERE (import_digests.digest, import_digests.state) IS DISTINCT FROM (EXCLUDED.digest, EXCLUDED.state)")


#: the columns a member row is matched on, in the order a refusal names the one the row gave
_IDENTITY = ("id", "external_member_number", "ssn")


@dataclass(slots=True, repr=False)
class KnownUnchanged:
    """A row known unchanged by its source record's digest: the member it was loaded into.

    It claims the member's key in the file (``member:<id>``), in file order, so an in-file duplicate of it,
    before or after, is refused as the full way refuses it. Its number and SSN keys need no claim: any
    other row with either is matched to this member (their unique indexes) and repeats the member key,
    which is checked first, or is an identity conflict before it claims anything.
    """

    #: the member's id as text (all a known row needs of it: its key in the file)
    member_id: str
    #: the file row's first identity column given (id, external_member_number, ssn), named in a refusal
    named: str = "id"

    def __repr__(self) -> str:
        return f"KnownUnchanged(member_id={self.member_id})"


class MembersKind(Kind):
    name = "members"
    table = Member.__table__
    permission = Permission.MEMBERS_WRITE
    required_on_create = ("first_name", "last_name")
    defaults = {"status": "active"}
    special_parsers = {
        "ssn": f.parse_ssn, "dob": f.dob_parser(), "email": f.parse_email, "phone": f.parse_phone,
        "state": f.parse_state, "zip_code": f.parse_zip, "status": f.enum(MEMBER_STATUSES),
        "external_member_number": f.code(64),
    }

    def check(self, values: Mapping[str, Any]) -> Iterable[tuple[str, str, str]]:
        if values.get("id") is None and values.get("external_member_number") is None and values.get("ssn") is None:
            yield ("external_member_number", "identity_required",
                   "a member needs an external_member_number, an ssn or an id, or a re-run could not find them")
        for name in ("first_name", "last_name"):
            if name in values and values[name] is None:
                yield name, "required", "is required"

    uses_keys = True
    #: a member, its external member number and blind index (metadata), and their three audit rows
    rows_per_record = {"members": 1, "metadata": 2, "audit_logs": 3}

    def prepare_row(self, parsed: Parsed, tools: PrepareTools) -> None:
        """Blind index, then (in a worker at once, else once the row is known to be new: :meth:`MemberPrep.seal`)
        encryption bound to the new member's id and the new rows' COPY lines; SSN and date of birth in
        ``values`` become :data:`SEALED` (or stay None when blank)."""
        values = parsed.values
        ssn: Ssn | None = values.get("ssn")
        dob: DateOfBirth | None = values.get("dob")
        member_id = values.get("id") or new_id()
        blind = tools.blind_index() if ssn is not None else None
        blind_hash = blind.ssn(ssn) if (ssn is not None and blind is not None) else None
        if ssn is not None:
            values["ssn"] = SEALED
        if dob is not None:
            values["dob"] = SEALED
        new = self.new_values(parsed)
        problems = self.required_problems(parsed, new)
        if not problems:
            new["id"] = member_id
            new[EXTERNAL_MEMBER_NUMBER] = values.get("external_member_number")
            new[SSN_BLIND_INDEX] = blind_hash
        prep = MemberPrep(member_id, blind_hash, None, None, None, problems,
                          _Held(ssn, dob, None if problems else new, tools))
        if tools.in_worker:
            prep.seal()  # only ciphertext goes back to the planning process
        parsed.prep = prep

    @staticmethod
    def new_rows(prep: MemberPrep, new: dict[str, Any], actor: tuple[str, str, str]) -> tuple[str, str, str]:
        """The COPY lines of a new member, its metadata rows and the audit rows of all three."""
        field = copytext.field
        member_text = str(prep.id)
        member = "\t".join([member_text, field(prep.encrypted_ssn), field(prep.encrypted_dob),
                            *[field(new.get(name)) for name in _MEMBER_COLUMNS[3:]]]) + "\n"
        user_id, ip_address, user_agent = actor
        tail = f"\t{ip_address}\t{user_agent}\n"
        metadata = []
        audits = []
        for key, value in ((EXTERNAL_MEMBER_NUMBER, new.get(EXTERNAL_MEMBER_NUMBER)),
                           (SSN_BLIND_INDEX, new.get(SSN_BLIND_INDEX))):
            if value is None:
                continue
            meta_id = new_id_text()
            text = _json_string(value) if type(value) is str else _json(value)
            metadata.append(f"{meta_id}\tmember\t{member_text}\t{key}\t{text}\n")
            audits.append(f"{new_id_text()}\t{user_id}\tmetadata\t{meta_id}\tcreate\t\\N\t"
                          f'{{"entity_type":"member","entity_id":"{member_text}","metadata_key":"{key}",'
                          f'"metadata_value":{_REDACTED_JSON}}}{tail}')
        new["encrypted_ssn"], new["encrypted_dob"] = prep.encrypted_ssn, prep.encrypted_dob  # for the audit row
        audited = _audited_json(new)
        audits.append(f"{new_id_text()}\t{user_id}\tmember\t{member_text}\tcreate\t\\N\t{audited}{tail}")
        return member, "".join(metadata), "".join(audits)

    def before_first_batch(self, ctx: BatchContext) -> None:
        """Members made outside imports (the app, the seed) get their blind index first, so the
        file's rows find them by SSN instead of creating the person again."""
        blind = ctx.blind_index()
        if blind is not None:  # without a blind index (kinds' tests) there is nothing to backfill
            backfill(ctx.connection, ctx.cipher(), blind, ctx.actor)
        # After the backfill: the blind indexes it wrote are to be found.
        ctx.absent_keys = absent_keys(ctx.connection, "member", (EXTERNAL_MEMBER_NUMBER, SSN_BLIND_INDEX))

    keeps_digests = True

    def known_unchanged(self, connection: Connection, digests: Collection[str]) -> dict[str, Any]:
        if not digests:
            return {}
        wanted = list(digests)
        with driver_connection(connection.connection).cursor() as cursor:
            cursor.execute(_KNOWN_UNCHANGED, [",".join(map(str, wanted))])
            return {wanted[place - 1]: member_id for place, member_id in cursor.fetchall()}

    def unchanged_prep(self, found: Any, record: Record) -> Any:
        values = record.values
        for name in _IDENTITY:  # (a loop, not next() over a generator: this runs for every row of a re-run)
            value = values.get(name)
            # (a blank-looking value stands for nothing: the parsers strip, and the row then gave no value)
            if value is not None and (type(value) is not str or value.strip()):
                return KnownUnchanged(found, name)
        return KnownUnchanged(found, "id")

    def plan(self, ctx: BatchContext, rows: list[Parsed]) -> BatchPlan:
        plan = BatchPlan(digest_sql=RECORD_DIGESTS)
        full = [parsed for parsed in rows if not isinstance(parsed.prep, KnownUnchanged)]
        hashes: dict[int, str | None] = {parsed.row: parsed.prep.blind_hash for parsed in full}
        connection = ctx.connection
        absent = ctx.absent_keys  # (nothing to find: see kinds.absent_keys)
        by_number = {} if EXTERNAL_MEMBER_NUMBER in absent else metadata_owners(
            connection, "member", EXTERNAL_MEMBER_NUMBER, (p.values.get("external_member_number") for p in full))
        by_hash = {} if SSN_BLIND_INDEX in absent else metadata_owners(connection, "member", SSN_BLIND_INDEX,
                                                                       hashes.values())
        given_ids = {p.values["id"] for p in full if p.values.get("id") is not None}
        existing, numbers, blinds = _existing_members(
            connection, given_ids | set(by_number.values()) | set(by_hash.values()))

        # Which member each row is about, and the keys that make it unique in the file.
        targets: dict[int, uuid.UUID | None] = {}
        candidates: list[tuple[int, list[str]]] = []
        live: list[Parsed] = []
        for parsed in rows:
            if isinstance(parsed.prep, KnownUnchanged):  # its key is claimed in file order like any row's
                candidates.append((parsed.row, [f"member:{parsed.prep.member_id}"]))
                live.append(parsed)
                continue
            number = parsed.values.get("external_member_number")
            ssn_hash = hashes[parsed.row]
            matches = []
            if parsed.values.get("id") is not None and parsed.values["id"] in existing:
                matches.append(("id", parsed.values["id"]))
            if number is not None and number in by_number:
                matches.append(("external_member_number", by_number[number]))
            if ssn_hash is not None and ssn_hash in by_hash:
                matches.append(("ssn", by_hash[ssn_hash]))
            found = {member_id for _, member_id in matches}
            if len(found) > 1:
                names = " and ".join(name for name, _ in matches)
                self.reject(plan, parsed, matches[1][0], "identity_conflict",
                            f"{names} belong to different existing members")
                continue
            target = found.pop() if found else None
            if target is None and parsed.values.get("id") is not None:
                target = None  # a new member keeping the file's id (an export of another installation)
            if target is not None and existing[target]["deleted_at"] is not None:
                self.reject(plan, parsed, matches[0][0], "deleted",
                            "matches a deleted member; restore the member before importing them again")
                continue
            targets[parsed.row] = target
            # A new member's own new id cannot repeat; a given or matched one can.
            keys = [f"member:{target or parsed.values['id']}"] if (target or parsed.values.get("id")) else []
            if number is not None:
                keys.append(f"number:{number}")
            if ssn_hash is not None:
                keys.append(f"ssn:{ssn_hash[:32]}")
            candidates.append((parsed.row, keys))
            live.append(parsed)
        claimed = ctx.seen.claim_soon(candidates)
        try:
            # While the keys are claimed: the new members' encryption and COPY lines, which _create makes
            # anyway (a row the claim refuses made them for nothing: its lines are dropped, nothing else).
            for parsed in live:
                if targets.get(parsed.row, False) is None:
                    parsed.prep.seal()
        except BaseException:
            wait([claimed])  # the planner's connection is the claim's until it ends
            raise
        duplicates = claimed.result()

        for parsed in live:
            known = parsed.prep if isinstance(parsed.prep, KnownUnchanged) else None
            if parsed.row in duplicates:
                key, earlier = duplicates[parsed.row]
                what = {"member": "member", "number": "external_member_number", "ssn": "ssn"}[key.split(":", 1)[0]]
                field = what
                if what == "member":
                    # Two rows that resolve to one member (an id given, or found by a key) may give different
                    # keys: say "the same member", and name a column the row has (the id, else the key it
                    # was known by, else its first identity column).
                    field = known.named if known is not None else next(
                        name for name in _IDENTITY if parsed.values.get(name) is not None)
                self.reject(plan, parsed, field, "duplicate_in_file",
                            f"the same {what} as row {earlier}; a member may appear once per file")
                continue
            if known is not None:
                plan.unchanged += 1
                continue
            target = targets[parsed.row]
            if target is None:
                self._create(plan, ctx, parsed, hashes[parsed.row])
            else:
                self._update(plan, ctx, parsed, existing[target], numbers.get(target), blinds.get(target),
                             hashes[parsed.row])
        return plan

    def _create(self, plan: BatchPlan, ctx: BatchContext, parsed: Parsed, blind_hash: str | None) -> None:
        prep: MemberPrep = parsed.prep
        prep.seal()
        if prep.lines is None:
            plan.problems.extend(prep.problems)
            return
        for (table, columns), line in zip(NEW_ROWS, prep.lines):
            if line:
                plan.copy_line(table, columns, line)
        plan.created += 1
        digest = ctx.digests.get(parsed.row)
        if digest is not None:  # the member's row and its metadata rows, all written by the batch (_STATE)
            has_number = parsed.values.get("external_member_number") is not None
            plan.new_digests[prep.id] = (digest, f"{XID}/{XID if has_number else '-'}/"
                                                 f"{XID if prep.blind_hash is not None else '-'}")

    @staticmethod
    def _keep_digest(plan: BatchPlan, ctx: BatchContext, parsed: Parsed, member_id: uuid.UUID) -> None:
        """Record the row's digest with the member's rows as the batch leaves them (read back once written)."""
        digest = ctx.digests.get(parsed.row)
        if digest is not None:
            plan.digests[member_id] = digest

    def _update(self, plan: BatchPlan, ctx: BatchContext, parsed: Parsed, current: Mapping[str, Any],
                number: str | None, blind_hash_now: str | None, blind_hash: str | None) -> None:
        member_id = current["id"]
        changes = self.changes(parsed, current)
        extra_old: dict[str, Any] = {}
        extra_new: dict[str, Any] = {}
        prep: MemberPrep = parsed.prep
        if "ssn" in parsed.values:
            if self._ssn_changed(ctx, current, prep, blind_hash_now, blind_hash):
                ssn = prep.ssn(ctx)
                changes["encrypted_ssn"] = ctx.cipher().encrypt_ssn(ssn, member_id) if ssn is not None else None
            if blind_hash is not None and blind_hash != blind_hash_now:
                self.metadata(plan, ctx, member_id, SSN_BLIND_INDEX, blind_hash, new=False)
        if "dob" in parsed.values:
            dob = prep.dob(ctx)
            stored = current.get("encrypted_dob")
            old = ctx.cipher().decrypt_dob(bytes(stored), member_id) if stored is not None else None
            if old != dob:
                changes["encrypted_dob"] = ctx.cipher().encrypt_dob(dob, member_id) if dob is not None else None
        wanted_number = parsed.values.get("external_member_number")
        if wanted_number is not None and wanted_number != number:
            self.metadata(plan, ctx, member_id, EXTERNAL_MEMBER_NUMBER, wanted_number, new=False)
            extra_old[EXTERNAL_MEMBER_NUMBER] = REDACTED if number is not None else None
            extra_new[EXTERNAL_MEMBER_NUMBER] = REDACTED
        self._keep_digest(plan, ctx, parsed, member_id)
        if not changes and not extra_new:
            # (or only the blind index was missing, a member made before it existed: no change to the member)
            plan.unchanged += 1
            return
        self.update(plan, ctx, parsed, current, changes, (extra_old, extra_new))

    @staticmethod
    def _ssn_changed(ctx: BatchContext, current: Mapping[str, Any], prep: MemberPrep, blind_hash_now: str | None,
                     blind_hash: str | None) -> bool:
        stored = current.get("encrypted_ssn")
        if not prep.has_ssn or stored is None:
            return (not prep.has_ssn) != (stored is None)
        if blind_hash_now is not None and blind_hash is not None:
            return blind_hash_now != blind_hash
        return ctx.cipher().decrypt_ssn(bytes(stored), current["id"]) != prep.ssn(ctx)

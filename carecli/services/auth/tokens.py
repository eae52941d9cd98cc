"""API tokens: a recognisable format with an offline checksum, stored only as a hash.

A token looks like ``ccli_<40 base62 chars>_<6 base62 chars>``: the prefix
makes it recognisable (secret scanners, people reading a log), the 40 random
characters carry about 238 bits, and the last six are the CRC32 of the random
part, so a mistyped or truncated token is caught before any database lookup.
Only the SHA-256 of the whole token is stored (``tokens.token_hash``); the
token itself is shown once, when it is created.

A token's name lives in the platform ``metadata`` table (the seed's extension
point; ``tokens`` has no name column), written in the same platform
transaction as the token's audit rows.
"""

from __future__ import annotations

import re
import secrets
import string
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import Connection, insert, select

from carecli.data import audit
from carecli.data.actor import Actor
from carecli.data.databases import Databases
from carecli.data.ids import new_id
from carecli.data.models.platform import Metadata
from carecli.data.permissions import ALL_PERMISSIONS
from carecli.data.records import Token
from carecli.data.repositories.base import CLOCK_NOW
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.errors import AuthError, ConfigError, ValidationError
from carecli.services.auth.session_rules import hash_secret as hash_secret

TOKEN_PREFIX = "ccli_"
API_TOKEN_TYPE = "api"
_ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase  # base62
RANDOM_LENGTH = 40  # 40 * log2(62) ≈ 238 bits
CHECKSUM_LENGTH = 6  # 62**6 > 2**32: room for any CRC32
_TOKEN_RE = re.compile(rf"^{TOKEN_PREFIX}([0-9A-Za-z]{{{RANDOM_LENGTH}}})_([0-9A-Za-z]{{{CHECKSUM_LENGTH}}})$")

DEFAULT_LIFETIME = timedelta(days=30)
MAX_LIFETIME = timedelta(days=365)
_LIFETIME_RE = re.compile(r"^\s*(\d{1,6})\s*([hdw])\s*$", re.IGNORECASE)
_UNIT_HOURS = {"h": 1, "d": 24, "w": 24 * 7}

NAME_KEY = "name"
MAX_NAME_LENGTH = 100

TokenStatus = Literal["active", "expired", "revoked"]


# -- secrets and the clock ---------------------------------------------------------


def database_now(connection: Connection) -> datetime:
    """The database server's clock, naive UTC (the same clock that stamps ``created_at``).

    Expiry is judged by one clock, the server's, so a client machine with a
    wrong clock cannot stretch a session or a token.
    """
    return connection.execute(select(CLOCK_NOW)).scalar_one()


# -- the token format ------------------------------------------------------------------


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, remainder = divmod(number, 62)
        digits.append(_ALPHABET[remainder])
    return "".join(reversed(digits))


def _checksum(random_part: str) -> str:
    return _base62(zlib.crc32(random_part.encode("ascii")), CHECKSUM_LENGTH)


def generate_api_token() -> str:
    """A new API token (the only time it exists in clear outside the user's hands)."""
    random_part = "".join(secrets.choice(_ALPHABET) for _ in range(RANDOM_LENGTH))
    return f"{TOKEN_PREFIX}{random_part}_{_checksum(random_part)}"


def looks_like_carecli_token(text: str) -> bool:
    """True when ``text`` has the carecli token shape and its checksum matches (no database needed)."""
    match = _TOKEN_RE.match(text.strip())
    if match is None:
        return False
    return secrets.compare_digest(_checksum(match.group(1)), match.group(2))


def check_token_format(text: str, *, source: str = "CARECLI_TOKEN") -> str:
    """The token stripped of surrounding blanks, or :class:`AuthError` saying what is wrong with it.

    The message never repeats the token.
    """
    token = text.strip()
    if not token.startswith(TOKEN_PREFIX):
        raise AuthError(f"{source} is not a carecli API token (they start with '{TOKEN_PREFIX}')",
                        hint="create one with `carecli tokens create`")
    if not _TOKEN_RE.match(token):
        raise AuthError(f"{source} does not have the shape of a carecli API token (truncated or extra characters?)",
                        hint="copy the whole token again; it is printed once by `carecli tokens create`")
    if not looks_like_carecli_token(token):
        raise AuthError(f"{source} fails its checksum: the token was mistyped or altered",
                        hint="copy the token again; it is printed once by `carecli tokens create`")
    return token


# -- lifetimes and scopes -----------------------------------------------------------


def parse_lifetime(text: str) -> timedelta:
    """``12h``, ``30d``, ``4w`` -> a timedelta between one hour and 365 days (:class:`ConfigError` otherwise)."""
    match = _LIFETIME_RE.match(text)
    if not match:
        raise ConfigError(f"token lifetime {text!r} is not understood",
                          hint="give a number of hours, days or weeks: 12h, 30d, 4w (at most 365d)")
    hours = int(match.group(1)) * _UNIT_HOURS[match.group(2).lower()]
    lifetime = timedelta(hours=hours)
    if lifetime <= timedelta(0):
        raise ConfigError("a token lifetime must be at least 1h")
    if lifetime > MAX_LIFETIME:
        raise ConfigError(f"token lifetime {text.strip()} is longer than the maximum of 365 days",
                          hint="use 365d or less, and create a new token when it runs out")
    return lifetime


def parse_scopes(text: str | Iterable[str]) -> list[str]:
    """Comma- or space-separated permission names, checked against the vocabulary, sorted, unique."""
    parts = re.split(r"[,\s]+", text) if isinstance(text, str) else list(text)
    scopes = sorted({part.strip() for part in parts if part and part.strip()})
    if not scopes:
        raise ConfigError("a token needs at least one scope", hint="for example --scopes members:read")
    unknown = [scope for scope in scopes if scope not in ALL_PERMISSIONS]
    if unknown:
        raise ConfigError(f"unknown scope(s): {', '.join(unknown)}",
                          hint=f"scopes are permission names: {', '.join(sorted(ALL_PERMISSIONS))}")
    return scopes


def _effective_permissions(actor: Actor) -> frozenset[str]:
    return actor.permissions if actor.scopes is None else actor.permissions & actor.scopes


def check_token_name(name: str) -> str:
    cleaned = name.strip()
    if not cleaned:
        raise ValidationError("name", "required", "a token needs a name (what or who will use it)")
    if len(cleaned) > MAX_NAME_LENGTH:
        raise ValidationError("name", "length", f"at most {MAX_NAME_LENGTH} characters")
    if any(not ch.isprintable() for ch in cleaned):
        raise ValidationError("name", "printable", "must be printable text on one line")
    return cleaned


# -- use cases ------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiTokenInfo:
    """A token's metadata as shown to people: never the token or its hash."""

    id: uuid.UUID
    user_id: uuid.UUID | None
    name: str | None
    scopes: list[str]
    created_at: datetime | None
    expires_at: datetime
    status: TokenStatus


@dataclass(frozen=True)
class CreatedToken:
    """A new token: ``secret`` is shown once and then forgotten."""

    secret: str
    info: ApiTokenInfo

    def __repr__(self) -> str:  # never let the secret reach a log through repr
        return f"CreatedToken(info={self.info!r}, secret='***')"


def token_status(token: Token, now: datetime) -> TokenStatus:
    """``revoked`` (or deleted), ``expired`` or ``active`` at ``now``."""
    if token.is_revoked or token.deleted_at is not None:
        return "revoked"
    if token.expires_at <= now:
        return "expired"
    return "active"


def _info(token: Token, name: str | None, now: datetime) -> ApiTokenInfo:
    return ApiTokenInfo(id=token.id, user_id=token.user_id, name=name, scopes=list(token.scopes or []),
                        created_at=token.created_at, expires_at=token.expires_at, status=token_status(token, now))


def token_names(connection: Connection, token_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The names of these tokens, from platform ``metadata`` (``connection`` is on the platform database)."""
    return token_facts(connection, token_ids, NAME_KEY)


def store_token_name(uow: IdentityUnitOfWork, token_id: uuid.UUID, name: str) -> None:
    """The token's name in platform ``metadata``, in the same platform transaction as its audit rows."""
    store_token_fact(uow, token_id, NAME_KEY, name)


def store_token_fact(uow: IdentityUnitOfWork, token_id: uuid.UUID, key: str, value: str) -> None:
    """A fact about a token (its name, an SSH key's public key) in platform ``metadata``, audited.

    Not through MetadataRepository: that one guards member notes (members:write),
    and describing your own token needs no permission beyond owning it.
    """
    table = Metadata.__table__
    uow.audit_connection.execute(insert(table).values(
        id=new_id(), entity_type="token", entity_id=token_id, metadata_key=key, metadata_value=value))
    audit.write(uow.audit_connection, uow.actor, "token", token_id, key, None, {key: value})


def token_facts(connection: Connection, token_ids: list[uuid.UUID], key: str) -> dict[uuid.UUID, str]:
    """One fact (``key``) of these tokens, from platform ``metadata`` (``connection`` is on the platform database)."""
    if not token_ids:
        return {}
    table = Metadata.__table__
    rows = connection.execute(select(table.c.entity_id, table.c.metadata_value).where(
        table.c.entity_type == "token", table.c.metadata_key == key, table.c.entity_id.in_(token_ids),
        table.c.deleted_at.is_(None))).all()
    return {row.entity_id: row.metadata_value for row in rows if isinstance(row.metadata_value, str)}


def create_api_token(databases: Databases, actor: Actor, *, name: str, scopes: Iterable[str],
                     lifetime: timedelta = DEFAULT_LIFETIME) -> CreatedToken:
    """Create an API token for the actor, limited to ``scopes`` (a subset of what the actor may do).

    Returns the token once; only its hash is stored.
    """
    if actor.user_id is None:
        raise AuthError("API tokens belong to a user: sign in with `carecli login` first")
    clean_name = check_token_name(name)
    clean_scopes = parse_scopes(list(scopes))
    beyond = sorted(set(clean_scopes) - _effective_permissions(actor))
    if beyond:
        raise ConfigError(f"you cannot give a token scopes you do not have yourself: {', '.join(beyond)}",
                          hint="`carecli whoami` lists your permissions")
    if lifetime > MAX_LIFETIME or lifetime <= timedelta(0):
        raise ConfigError("a token lifetime must be between 1h and 365d")
    secret = generate_api_token()
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        now = database_now(uow.connection)
        token = uow.tokens.create(actor.user_id, API_TOKEN_TYPE, hash_secret(secret), now + lifetime,
                                  clean_scopes)
        store_token_name(uow, token.id, clean_name)
        uow.commit()
    return CreatedToken(secret=secret, info=_info(token, clean_name, now))


def owned_tokens(uow: IdentityUnitOfWork, user_id: uuid.UUID | None, token_type: str, *,
                 include_revoked: bool, what: str = "tokens") -> list[Token]:
    """A user's tokens of ``token_type`` (the actor's own by default; others' need users:admin), newest first."""
    owner = user_id or uow.actor.user_id
    if owner is None:
        raise AuthError(f"sign in with `carecli login` to list {what}")
    return [t for t in uow.tokens.for_user(owner, include_deleted=include_revoked)
            if t.token_type == token_type and (include_revoked or not t.is_revoked)]


def list_api_tokens(databases: Databases, actor: Actor, *, user_id: uuid.UUID | None = None,
                    include_revoked: bool = False) -> list[ApiTokenInfo]:
    """A user's API tokens (the actor's own by default; others' need users:admin), newest first."""
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        now = database_now(uow.connection)
        tokens = owned_tokens(uow, user_id, API_TOKEN_TYPE, include_revoked=include_revoked)
        names = token_names(uow.audit_connection, [t.id for t in tokens])
    return [_info(t, names.get(t.id), now) for t in tokens]


def revoke_api_token(databases: Databases, actor: Actor, token_id: uuid.UUID) -> ApiTokenInfo:
    """Revoke a token (one's own, or anyone's with users:admin); audited."""
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        token = uow.tokens.revoke(token_id)
        now = database_now(uow.connection)
        names = token_names(uow.audit_connection, [token.id])
        uow.commit()
    return _info(token, names.get(token.id), now)

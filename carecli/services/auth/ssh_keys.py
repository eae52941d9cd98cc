"""SSH public keys of users: the credentials of the SSH host (``carecli serve-ssh``).

A key is a row of the seed's ``tokens`` table with ``token_type = 'ssh_key'``:
``token_hash`` holds the key's SHA-256 fingerprint (``SHA256:…``, as
``ssh-keygen -l`` prints it; a public key is no secret, so its fingerprint is
the natural "hash" to look it up by), ``expires_at`` when it stops being
accepted and ``is_revoked`` a revocation. The key's comment or a given name is
kept in platform ``metadata`` like an API token's name. Adding and revoking
are audited; so is every refused key at the SSH host.

Only modern keys are accepted: Ed25519, ECDSA, RSA of 2048 bits or more, and
their FIDO security-key variants. DSA is refused, as OpenSSH itself does.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from carecli.data import audit
from carecli.data.actor import Actor, Channel
from carecli.data.databases import Databases
from carecli.data.permissions import Permission
from carecli.data.records import Token, User
from carecli.data.repositories.identity import IdentityUnitOfWork
from carecli.errors import NotFound, ValidationError
from carecli.services.auth.current import NIL, load_user, role_of, user_problem
from carecli.services.auth.tokens import (
    TokenStatus,
    check_token_name,
    database_now,
    owned_tokens,
    store_token_fact,
    store_token_name,
    token_facts,
    token_names,
    token_status,
)

SSH_KEY_TYPE = "ssh_key"
PUBLIC_KEY_FACT = "public_key"  # the OpenSSH text of the key, for `ssh-keys authorized-keys`
DEFAULT_KEY_LIFETIME = timedelta(days=365)
MIN_RSA_BITS = 2048
_ALLOWED_ALGORITHMS = (
    "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
)


@dataclass(frozen=True)
class PublicKey:
    """A parsed, acceptable public key: its algorithm, fingerprint, comment and OpenSSH text."""

    algorithm: str
    fingerprint: str
    comment: str | None
    openssh: str


def parse_public_key(text: str) -> PublicKey:
    """One public key in OpenSSH (``authorized_keys``) or RFC 4716 form; :class:`ValidationError` otherwise."""
    import asyncssh  # the SSH machinery is only loaded by the commands that need it
    from cryptography.hazmat.primitives.asymmetric import rsa

    cleaned = text.strip()
    if not cleaned:
        raise ValidationError("key", "required", "the key file is empty")
    if "PRIVATE KEY" in cleaned:
        raise ValidationError("key", "private_key", "this is a PRIVATE key: give the public one (the .pub file), "
                              "and keep the private key to yourself")
    if len([line for line in cleaned.splitlines() if line.strip() and not line.startswith("#")]) > 1 \
            and not cleaned.startswith("---- BEGIN"):
        raise ValidationError("key", "one_key", "give exactly one public key (one line of the .pub file)")
    try:
        key = asyncssh.import_public_key(cleaned)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ValidationError("key", "format", f"not an SSH public key ({exc})") from None
    algorithm = key.get_algorithm()
    if algorithm not in _ALLOWED_ALGORITHMS:
        raise ValidationError("key", "algorithm", f"{algorithm} keys are not accepted; use an Ed25519 key "
                              "(`ssh-keygen -t ed25519`)")
    if algorithm == "ssh-rsa":
        pyca = getattr(key, "pyca_key", None)
        bits = pyca.key_size if isinstance(pyca, (rsa.RSAPublicKey, rsa.RSAPrivateKey)) else 0
        if bits < MIN_RSA_BITS:
            raise ValidationError("key", "key_size", f"RSA keys need at least {MIN_RSA_BITS} bits (this one has "
                                  f"{bits}); better, use an Ed25519 key")
    comment = key.get_comment()
    return PublicKey(algorithm=algorithm, fingerprint=key.get_fingerprint("sha256"),
                     comment=comment.strip() if comment else None,
                     openssh=key.export_public_key("openssh").decode("ascii").strip())


@dataclass(frozen=True)
class SshKeyInfo:
    """An SSH key as shown to people."""

    id: uuid.UUID
    user_id: uuid.UUID | None
    name: str | None
    fingerprint: str
    created_at: datetime | None
    expires_at: datetime
    status: TokenStatus


def _info(token: Token, name: str | None, fingerprint: str, now: datetime) -> SshKeyInfo:
    return SshKeyInfo(id=token.id, user_id=token.user_id, name=name, fingerprint=fingerprint,
                      created_at=token.created_at, expires_at=token.expires_at, status=token_status(token, now))


def add_ssh_key(databases: Databases, actor: Actor, user: User, key_text: str, *, name: str | None = None,
                lifetime: timedelta = DEFAULT_KEY_LIFETIME) -> SshKeyInfo:
    """Register ``key_text`` as ``user``'s SSH key (one's own, or anyone's with users:admin); audited."""
    key = parse_public_key(key_text)
    label = check_token_name(name or key.comment or key.algorithm)
    problem = user_problem(user)
    if problem is not None:
        raise ValidationError("user", problem.removeprefix("user_"), f"{user.email} is not an active user")
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        if user.id != actor.user_id:
            # Before the duplicate check: without users:admin, nobody learns which keys others registered.
            uow.tokens.require(Permission.USERS_ADMIN, "create tokens for other users")
        now = database_now(uow.connection)
        holder = _live_key(uow, key.fingerprint)
        if holder is not None:
            whose = "this user" if holder.user_id == user.id else "another user"
            raise ValidationError("key", "duplicate", f"the key {key.fingerprint} is already registered for {whose} "
                                  f"(key id {holder.id})")
        token = uow.tokens.create(user.id, SSH_KEY_TYPE, key.fingerprint, now + lifetime, None)
        store_token_name(uow, token.id, label)
        store_token_fact(uow, token.id, PUBLIC_KEY_FACT, key.openssh)
        uow.commit()
    return _info(token, label, key.fingerprint, now)


def _live_key(uow: IdentityUnitOfWork, fingerprint: str) -> Token | None:
    token = uow.tokens.of_type(SSH_KEY_TYPE, fingerprint)
    return token if token is not None and not token.is_revoked and token.deleted_at is None else None


def list_ssh_keys(databases: Databases, actor: Actor, *, user_id: uuid.UUID | None = None,
                  include_revoked: bool = False) -> list[SshKeyInfo]:
    """A user's SSH keys (the actor's own by default; others' need users:admin), newest first."""
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        now = database_now(uow.connection)
        keys = owned_tokens(uow, user_id, SSH_KEY_TYPE, include_revoked=include_revoked, what="SSH keys")
        names = token_names(uow.audit_connection, [t.id for t in keys])
        fingerprints = uow.tokens.ssh_fingerprints(t.id for t in keys)
    return [_info(t, names.get(t.id), fingerprints[t.id], now) for t in keys]


def revoke_ssh_key(databases: Databases, actor: Actor, key_id: uuid.UUID) -> SshKeyInfo:
    """Revoke an SSH key (one's own, or anyone's with users:admin); audited. Open SSH sessions with it end."""
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        token = uow.tokens.get(key_id, include_deleted=True)
        if token.token_type != SSH_KEY_TYPE:
            raise NotFound(f"there is no SSH key with id {key_id}")
        token = uow.tokens.revoke(key_id)
        now = database_now(uow.connection)
        names = token_names(uow.audit_connection, [token.id])
        fingerprint = uow.tokens.ssh_fingerprints([token.id])[token.id]
        uow.commit()
    return _info(token, names.get(token.id), fingerprint, now)


# -- the SSH host's side ------------------------------------------------------------------


@dataclass(frozen=True)
class KeyHolder:
    """Whom an accepted SSH key signs in: the user, their role and permissions, and the key row."""

    key_id: uuid.UUID
    fingerprint: str
    user: User
    role: str | None
    permissions: frozenset[str]


def key_problem(token: Token | None, user: User | None, now: datetime) -> str | None:
    """Why a presented key is refused (None when it is accepted)."""
    if token is None:
        return "unknown_key"
    status = token_status(token, now)
    if status != "active":
        return f"key_{status}"
    return user_problem(user)


def authenticate_key(databases: Databases, fingerprint: str, *, environ: Mapping[str, str],
                     username: str | None = None, audit_refusal: bool = True,
                     key_id: uuid.UUID | None = None, via: str = "ssh") -> KeyHolder | None:
    """The holder of the key with ``fingerprint``, or None (refusal audited with the client IP in ``environ``).

    With ``key_id`` only that key row counts (OpenSSH's forced command names it): a revoked row
    stays refused even when the same key was registered again since, perhaps for someone else.
    """
    system = Actor.system("ssh", environ=environ)
    with IdentityUnitOfWork(databases.identity, databases.platform, system, defer_platform=True) as uow:
        now = database_now(uow.connection)
        if key_id is None:
            token = uow.tokens.of_type(SSH_KEY_TYPE, fingerprint)
        else:
            token = uow.tokens.get(key_id, include_deleted=True)
        user = load_user(uow, token.user_id) if token is not None else None
        problem = key_problem(token, user, now)
        role, permissions = role_of(uow, user) if problem is None and user is not None else (None, frozenset())
    if problem is not None:
        if audit_refusal:
            values: dict[str, Any] = {"reason": problem, "fingerprint": fingerprint, "via": via}
            if username:
                values["ssh_username"] = username[:64]
            if token is not None:
                values["user_id"] = str(token.user_id)
            audit.write_committed(databases.platform, system, "ssh_key", token.id if token else NIL,
                                  "auth_refused", values)
        return None
    assert token is not None and user is not None
    return KeyHolder(key_id=token.id, fingerprint=fingerprint, user=user, role=role, permissions=permissions)


def still_allowed(databases: Databases, holder: KeyHolder, *, channel: Channel = "ssh") -> str | None:
    """Why an open SSH session of ``holder`` must end now (key revoked or expired, user deactivated), or None."""
    with IdentityUnitOfWork(databases.identity, databases.platform, Actor.system(channel),
                            defer_platform=True) as uow:
        now = database_now(uow.connection)
        token = uow.tokens.get(holder.key_id, include_deleted=True)
        user = load_user(uow, holder.user.id)
    return key_problem(token, user, now)


def key_holder_by_id(databases: Databases, key_id: uuid.UUID, *, environ: Mapping[str, str]) -> KeyHolder | None:
    """The holder of the key with this id (the OpenSSH ``ForceCommand`` way in), or None (audited refusal)."""
    system = Actor.system("ssh", environ=environ)
    with IdentityUnitOfWork(databases.identity, databases.platform, system, defer_platform=True) as uow:
        fingerprint = uow.tokens.ssh_fingerprints([key_id]).get(key_id)
    if fingerprint is None:
        audit.write_committed(databases.platform, system, "ssh_key", key_id, "auth_refused",
                              {"reason": "unknown_key", "via": "openssh"})
        return None
    return authenticate_key(databases, fingerprint, environ=environ, key_id=key_id, via="openssh")


@dataclass(frozen=True)
class AuthorizedKey:
    """A live key as OpenSSH's ``authorized_keys`` needs it."""

    key_id: uuid.UUID
    user_id: uuid.UUID | None
    fingerprint: str
    openssh: str


def live_keys(databases: Databases, actor: Actor, *, fingerprint: str | None = None) -> list[AuthorizedKey]:
    """Every live SSH key of an active user (or just the one with ``fingerprint``); needs users:admin.

    For running under OpenSSH: ``carecli ssh-keys authorized-keys`` turns them
    into ``authorized_keys`` lines with a forced command naming the key.
    """
    with IdentityUnitOfWork(databases.identity, databases.platform, actor) as uow:
        uow.tokens.require(Permission.USERS_ADMIN, "list every user's SSH keys")
        now = database_now(uow.connection)
        tokens = uow.tokens.live_of_type(SSH_KEY_TYPE, now, fingerprint)
        users = {t.user_id: load_user(uow, t.user_id) for t in tokens}
        texts = token_facts(uow.audit_connection, [t.id for t in tokens], PUBLIC_KEY_FACT)
        fingerprints = uow.tokens.ssh_fingerprints(t.id for t in tokens)
    return [AuthorizedKey(key_id=t.id, user_id=t.user_id, fingerprint=fingerprints[t.id], openssh=texts[t.id])
            for t in tokens if t.id in texts and user_problem(users[t.user_id]) is None]

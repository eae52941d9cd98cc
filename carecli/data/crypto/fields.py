"""AES-256-GCM field encryption with envelope data keys.

Ciphertext layout (all in one BYTEA value)::

    version (1 byte, 0x01) | data key id (16 bytes, UUID) | nonce (12 bytes) | ciphertext + tag (16 bytes)

The associated data binds a value to ``table``, ``column`` and the row's id,
so a ciphertext copied to another member, or from the SSN column to the DOB
column, fails authentication instead of decrypting to someone else's value.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from carecli.data.crypto.master import MasterKey
from carecli.data.crypto.phi import DateOfBirth, Ssn
from carecli.errors import DecryptionError, KeyUnavailable

VERSION = 1
_HEADER = 1 + 16 + 12


def key_id_of(blob: bytes) -> uuid.UUID:
    """The data key a ciphertext was made with (readable without any key)."""
    if len(blob) < _HEADER + 16 or blob[0] != VERSION:
        raise DecryptionError("not a carecli ciphertext (unknown version or truncated)")
    return uuid.UUID(bytes=bytes(blob[1:17]))


def _aad(table: str, column: str, row_id: uuid.UUID) -> bytes:
    return f"carecli/v{VERSION}/{table}/{column}/".encode() + row_id.bytes


@dataclass(frozen=True)
class SealingKey:
    """The primary data key, unwrapped, for an import's worker processes (it goes to them through
    a pipe, never to a log: its repr hides it)."""

    key_id: uuid.UUID
    key: bytes = field(repr=False)


class SealingCipher:
    """Encryption only, under one raw data key: :class:`FieldCipher`'s output, in a process that
    has no master key (an import worker). The parent decrypts with its own :class:`FieldCipher`."""

    def __init__(self, key: SealingKey) -> None:
        self.key_id = key.key_id
        self._aead = AESGCM(key.key)

    def __repr__(self) -> str:
        return f"SealingCipher({self.key_id})"

    def encrypt(self, plaintext: bytes, *, table: str, column: str, row_id: uuid.UUID) -> bytes:
        return _seal(self._aead, self.key_id, plaintext, table, column, row_id)

    def encrypt_ssn(self, ssn: Ssn, member_id: uuid.UUID) -> bytes:
        return self.encrypt(ssn.reveal().encode("ascii"), table="members", column="encrypted_ssn", row_id=member_id)

    def encrypt_dob(self, dob: DateOfBirth, member_id: uuid.UUID) -> bytes:
        return self.encrypt(dob.isoformat().encode("ascii"), table="members", column="encrypted_dob",
                            row_id=member_id)


NONCE_BYTES = 12


class _Nonces:
    """96-bit GCM nonces from the operating system's CSPRNG (``os.urandom``), read 1,024 at a time.

    ``os.urandom`` lets go of the GIL for each call: with another thread ready to run (an import's writer
    and audit sealer), each of a member's two seals handed it the interpreter for up to a switch interval
    (a call took 0.46 µs alone, 221 µs beside one busy thread). The nonces are the same CSPRNG's bytes, each
    taken once. A forked child drops what its parent had read (``os.register_at_fork``): two processes never
    take the same nonces.
    """

    BATCH = 1024

    def __init__(self) -> None:
        self._drop()
        os.register_at_fork(after_in_child=self._drop)

    def _drop(self) -> None:
        self._lock = threading.Lock()  # (a new one: a fork may have copied it held by another thread)
        self._buffer = b""
        self._at = 0

    def take(self) -> bytes:
        with self._lock:
            at = self._at
            if at + NONCE_BYTES > len(self._buffer):
                self._buffer, at = os.urandom(NONCE_BYTES * self.BATCH), 0
            self._at = at + NONCE_BYTES
            return self._buffer[at:at + NONCE_BYTES]


_NONCES = _Nonces()


def _seal(aead: AESGCM, key_id: uuid.UUID, plaintext: bytes, table: str, column: str, row_id: uuid.UUID) -> bytes:
    nonce = _NONCES.take()
    return bytes([VERSION]) + key_id.bytes + nonce + aead.encrypt(nonce, plaintext, _aad(table, column, row_id))


@dataclass(frozen=True)
class WrappedDataKey:
    id: uuid.UUID
    wrapped_key: bytes
    status: str


class FieldCipher:
    """Encrypts new values with the primary data key; decrypts with whichever key made them.

    Data keys are unwrapped lazily, once, and their ``AESGCM`` objects cached
    (a new object per value costs about a third of the throughput).
    """

    def __init__(self, master: MasterKey, keys: list[WrappedDataKey],
                 loader: Callable[[], list[WrappedDataKey]] | None = None) -> None:
        self.master = master
        self._loader = loader
        self._lock = threading.Lock()
        self._ciphers: dict[uuid.UUID, AESGCM] = {}
        self._set_keys(keys)

    def _set_keys(self, keys: list[WrappedDataKey]) -> None:
        self._wrapped = {key.id: key for key in keys}
        primaries = [key.id for key in keys if key.status == "primary"]
        self.primary_id: uuid.UUID | None = primaries[0] if primaries else None

    def reload(self) -> None:
        """Re-read the data keys (after a rotation elsewhere); unwrapped keys stay cached."""
        if self._loader is None:
            return
        keys = self._loader()
        with self._lock:
            self._set_keys(keys)

    def _cipher(self, key_id: uuid.UUID) -> AESGCM:
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            if key_id not in self._wrapped:
                self.reload()  # a key made by a rotation in another process since we loaded
            wrapped = self._wrapped.get(key_id)
            if wrapped is None:
                raise KeyUnavailable(
                    f"data key {key_id} is not in this database's data_keys table",
                    hint="the value was encrypted elsewhere, or its key was deleted; restore the key from backup",
                )
            cipher = AESGCM(self.master.unwrap(wrapped.wrapped_key, data_key_id=key_id))
            self._ciphers[key_id] = cipher
        return cipher

    def encrypt(self, plaintext: bytes, *, table: str, column: str, row_id: uuid.UUID) -> bytes:
        if self.primary_id is None:
            raise KeyUnavailable("there is no primary data key", hint="run `carecli keys status` to set one up")
        return self.encrypt_with(self.primary_id, plaintext, table=table, column=column, row_id=row_id)

    def encrypt_with(self, key_id: uuid.UUID, plaintext: bytes, *, table: str, column: str,
                     row_id: uuid.UUID) -> bytes:
        return _seal(self._cipher(key_id), key_id, plaintext, table, column, row_id)

    def sealing_key(self) -> SealingKey:
        """The primary data key, unwrapped, for :class:`SealingCipher` in an import's worker processes."""
        if self.primary_id is None:
            raise KeyUnavailable("there is no primary data key", hint="run `carecli keys status` to set one up")
        self._cipher(self.primary_id)  # unwraps it (and re-reads the key table if needed)
        wrapped = self._wrapped[self.primary_id]
        return SealingKey(self.primary_id, self.master.unwrap(wrapped.wrapped_key, data_key_id=self.primary_id))

    def decrypt(self, blob: bytes, *, table: str, column: str, row_id: uuid.UUID) -> bytes:
        key_id = key_id_of(blob)
        blob = bytes(blob)
        try:
            return self._cipher(key_id).decrypt(blob[17:_HEADER], blob[_HEADER:], _aad(table, column, row_id))
        except InvalidTag:
            raise DecryptionError(
                f"{table}.{column} of row {row_id} failed authentication: the value was altered, "
                "copied from another row or column, or encrypted under a different key",
                hint="restore the value from a backup; report it to security",
            ) from None

    # The two PHI columns of members, typed.

    def encrypt_ssn(self, ssn: Ssn, member_id: uuid.UUID) -> bytes:
        return self.encrypt(ssn.reveal().encode("ascii"), table="members", column="encrypted_ssn", row_id=member_id)

    def decrypt_ssn(self, blob: bytes, member_id: uuid.UUID) -> Ssn:
        return Ssn(self.decrypt(blob, table="members", column="encrypted_ssn", row_id=member_id).decode("ascii"))

    def encrypt_dob(self, dob: DateOfBirth, member_id: uuid.UUID) -> bytes:
        return self.encrypt(dob.isoformat().encode("ascii"), table="members", column="encrypted_dob",
                            row_id=member_id)

    def decrypt_dob(self, blob: bytes, member_id: uuid.UUID) -> DateOfBirth:
        text = self.decrypt(blob, table="members", column="encrypted_dob", row_id=member_id).decode("ascii")
        return DateOfBirth(date.fromisoformat(text))

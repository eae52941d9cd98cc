"""Encrypted backup files: a header and AES-256-GCM chunk streams (the STREAM construction).

Layout of a file::

    MAGIC (8: "CCLIBAK" and the format version, 1) | header length (u32) | header (JSON) | header MAC (32)
    then, for each stream the header names, in order:
        chunk: ciphertext length (u32) | ciphertext + tag
        ...    (the last chunk of a stream carries the final flag)
    end of file

Keys: every file has a random salt; HKDF-SHA256 derives from the backup key
and that salt one MAC key for the header and one AES-256-GCM key per stream,
so no (key, nonce) pair ever repeats across files or streams. A chunk's nonce
is ``prefix (7) || chunk index (u32) || final flag (u8)``, and its associated
data binds the header's hash, the stream's index and name, the chunk index and
the final flag. So a flipped bit, a reordered, dropped or spliced chunk, a
chunk moved between streams or files, a stream cut short at a chunk boundary
(no final chunk) and bytes appended after the end are all refused.

Memory is constant: one chunk of plaintext (``CHUNK_SIZE``) and its
ciphertext at a time, whatever the size of the stream. Nothing here touches
a database or the file system beyond the binary streams it is given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from carecli.errors import DecryptionError

MAGIC = b"CCLIBAK\x01"
FORMAT_VERSION = 1
CHUNK_SIZE = 1024 * 1024
TAG_BYTES = 16
KEY_BYTES = 32
SALT_BYTES = 32
PREFIX_BYTES = 7
MAC_BYTES = 32
MAX_HEADER_BYTES = 64 * 1024
MAX_CHUNKS = 2**32 - 1
_LENGTH = struct.Struct(">I")


class BackupCorrupt(DecryptionError):
    """A backup file failed a check: altered, truncated, extended, or not a carecli backup."""


class WrongBackupKey(DecryptionError):
    """The backup was made under another backup key than the one given."""


class ChunkSource(Protocol):
    """What a stream is encrypted from: anything with ``readinto`` (binary files, pipes, ``io.BytesIO``)."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...


class BackupSink(Protocol):
    """What a backup is written to: ``write`` and ``flush`` (a binary file, ``io.BytesIO``)."""

    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> None: ...


def key_fingerprint(key: bytes) -> str:
    """Names a backup key without revealing it (an HMAC of a fixed label)."""
    return "backup:" + hmac.new(key, b"carecli backup key id", hashlib.sha256).hexdigest()[:16]


def _derive(key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=b"carecli backup v1/" + info).derive(key)


def _stream_info(index: int, name: str) -> bytes:
    encoded = name.encode("utf-8")
    return struct.pack(">IH", index, len(encoded)) + encoded


@dataclass(frozen=True)
class BackupHeader:
    """The parsed header. ``fields`` is everything the writer put in; ``raw`` the exact bytes."""

    fields: dict[str, Any]
    raw: bytes
    mac: bytes

    @property
    def streams(self) -> list[str]:
        return [str(stream["name"]) for stream in self.fields.get("streams", [])]

    @property
    def key_id(self) -> str:
        return str(self.fields.get("key", {}).get("id", ""))

    @property
    def chunk_size(self) -> int:
        return int(self.fields["chunk_size"])

    @property
    def digest(self) -> bytes:
        """What every chunk's associated data binds: the header and its MAC, hashed."""
        return hashlib.sha256(MAGIC + _LENGTH.pack(len(self.raw)) + self.raw + self.mac).digest()

    def salt(self) -> bytes:
        return _b64(self.fields["salt"], "salt", SALT_BYTES)

    def prefix(self) -> bytes:
        return _b64(self.fields["nonce_prefix"], "nonce prefix", PREFIX_BYTES)


def _b64(value: Any, what: str, size: int) -> bytes:
    if not isinstance(value, str):
        raise damaged(what, "it is missing from the header")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise damaged(what, "it is not valid base64") from None
    if len(raw) != size:
        raise damaged(what, f"it is {len(raw)} bytes, not {size}")
    return raw


def _read_exactly(source: BinaryIO, size: int) -> bytes:
    """``size`` bytes, or fewer only at the end of the file."""
    parts = []
    remaining = size
    while remaining:
        part = source.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def _fill(source: ChunkSource, buffer: bytearray) -> int:
    """Fill ``buffer`` from a pipe or file (short reads are normal on pipes); returns how many bytes."""
    view = memoryview(buffer)
    filled = 0
    while filled < len(buffer):
        count = source.readinto(view[filled:])
        if not count:
            break
        filled += count
    return filled


def damaged(part: str, detail: str) -> BackupCorrupt:
    """The one error for a header that cannot be what carecli wrote: names the part, never guesses a key."""
    return BackupCorrupt(f"this backup file is damaged or not a carecli backup ({part}: {detail})",
                         hint="use another copy of the backup; `carecli backup verify FILE` checks one")


def _read_part(source: BinaryIO, size: int, part: str, read_so_far: int) -> bytes:
    """``size`` bytes of the header's ``part``; a file that ends first is reported as truncated there."""
    data = _read_exactly(source, size)
    if len(data) < size:
        raise damaged(part, f"the file ends after {read_so_far + len(data):,} bytes, inside the header "
                            "(the file is truncated or the header's length was altered)")
    return data


def read_header(source: BinaryIO) -> BackupHeader:
    """Parse and check the shape of the header (its MAC needs the key, see :class:`BackupReader`).

    Every way a header can be damaged (any byte flipped, the file cut inside
    it) is a :class:`BackupCorrupt` naming the part: magic, version, header
    length, header, format version, key id, chunk size, salt, nonce prefix,
    streams (the key's kind is checked where the key is found) or, once the
    key is known, the header MAC. So which key a backup needs is only ever
    read from a header of the right shape: a damaged one never sends anyone
    looking for a key that does not exist, nor fails inside carecli.
    """
    magic = _read_exactly(source, len(MAGIC))
    if not magic:
        raise damaged("magic", "the file is empty")
    if not MAGIC[:-1].startswith(magic[:len(MAGIC) - 1]):
        raise damaged("magic", "the file does not start with a carecli backup's first bytes")
    if len(magic) < len(MAGIC):
        raise damaged("magic", f"the file ends after {len(magic)} bytes, inside the header (it is truncated)")
    if magic[-1] != MAGIC[-1]:
        raise damaged("version", f"the file format version is {magic[-1]}; this carecli reads version {MAGIC[-1]} "
                                 "(altered, or made by another carecli)")
    (length,) = _LENGTH.unpack(_read_part(source, _LENGTH.size, "header length", len(MAGIC)))
    if not 0 < length <= MAX_HEADER_BYTES:
        raise damaged("header length", f"{length:,} bytes is not a length a header can have "
                                       f"(1 to {MAX_HEADER_BYTES:,})")
    raw = _read_part(source, length, "header", len(MAGIC) + _LENGTH.size)
    mac = _read_part(source, MAC_BYTES, "header MAC", len(MAGIC) + _LENGTH.size + length)
    try:
        fields = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise damaged("header", "it is not the JSON a backup header is (the header or its length was altered)"
                      ) from None
    if not isinstance(fields, dict):
        raise damaged("header", "it is not a JSON object")
    _check_fields(fields)
    return BackupHeader(fields, raw, mac)


_KEY_ID = re.compile(r"backup:[0-9a-f]{16}")


def _check_fields(fields: dict[str, Any]) -> None:
    """Refuse a header whose fields are not the shape the writer gives them (before any key is looked for)."""
    if fields.get("format") != FORMAT_VERSION:
        raise damaged("format version", f"the header is not format {FORMAT_VERSION} "
                                        "(altered, or made by another carecli)")
    key = fields.get("key")
    if not isinstance(key, dict) or not isinstance(key.get("id"), str) or not _KEY_ID.fullmatch(key["id"]):
        raise damaged("key id", "the header does not name its key the way carecli does")
    size = fields.get("chunk_size")
    if type(size) is not int or not 0 < size <= 64 * CHUNK_SIZE:
        raise damaged("chunk size", "the header's chunk size is missing or not plausible")
    _b64(fields.get("salt"), "salt", SALT_BYTES)
    _b64(fields.get("nonce_prefix"), "nonce prefix", PREFIX_BYTES)
    streams = fields.get("streams")
    if (not isinstance(streams, list)
            or not all(isinstance(stream, dict) and isinstance(stream.get("name"), str) for stream in streams)
            or len({stream["name"] for stream in streams}) != len(streams)):
        raise damaged("streams", "the header's list of databases is missing or malformed")


@dataclass
class StreamStats:
    """What one stream held: plaintext bytes and chunks."""

    name: str
    plaintext_bytes: int = 0
    chunks: int = 0


class _ChunkCipher:
    """Seals or opens one stream's chunks."""

    def __init__(self, key: bytes, header: BackupHeader, index: int, name: str) -> None:
        self.aead = AESGCM(_derive(key, header.salt(), b"stream/" + _stream_info(index, name)))
        self.prefix = header.prefix()
        self.bound = header.digest + _stream_info(index, name)

    def _nonce_and_ad(self, counter: int, final: bool) -> tuple[bytes, bytes]:
        if counter > MAX_CHUNKS:
            raise BackupCorrupt("a backup stream has more chunks than the format allows")
        flag = b"\x01" if final else b"\x00"
        return (self.prefix + struct.pack(">I", counter) + flag,
                self.bound + struct.pack(">Q", counter) + flag)

    def seal(self, counter: int, final: bool, plaintext: bytes | memoryview) -> bytes:
        nonce, ad = self._nonce_and_ad(counter, final)
        return self.aead.encrypt(nonce, bytes(plaintext), ad)

    def open(self, counter: int, final: bool, ciphertext: bytes) -> bytes:
        nonce, ad = self._nonce_and_ad(counter, final)
        return self.aead.decrypt(nonce, ciphertext, ad)


def _header_mac(key: bytes, salt: bytes, raw: bytes) -> bytes:
    mac_key = _derive(key, salt, b"header-mac")
    return hmac.new(mac_key, MAGIC + _LENGTH.pack(len(raw)) + raw, hashlib.sha256).digest()


class BackupWriter:
    """Writes a backup: the header first, then each named stream, in the header's order."""

    def __init__(self, out: BackupSink, key: bytes, fields: dict[str, Any], streams: list[dict[str, Any]],
                 *, chunk_size: int = CHUNK_SIZE) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("a backup key is 256 bits")
        self.out = out
        self.key = key
        self.chunk_size = chunk_size
        header_fields = {
            **fields,
            "format": FORMAT_VERSION,
            "chunk_size": chunk_size,
            "salt": base64.b64encode(os.urandom(SALT_BYTES)).decode(),
            "nonce_prefix": base64.b64encode(os.urandom(PREFIX_BYTES)).decode(),
            "key": {**fields.get("key", {}), "id": key_fingerprint(key)},
            "streams": streams,
        }
        raw = json.dumps(header_fields, sort_keys=True, separators=(",", ":")).encode("utf-8")
        if len(raw) > MAX_HEADER_BYTES:
            raise ValueError("backup header too large")
        salt = base64.b64decode(header_fields["salt"])
        self.header = BackupHeader(header_fields, raw, _header_mac(key, salt, raw))
        self._pending = list(self.header.streams)
        self._index = 0
        self.bytes_written = 0
        self._write(MAGIC + _LENGTH.pack(len(raw)) + raw + self.header.mac)

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.bytes_written += len(data)

    def write_stream(self, name: str, source: ChunkSource) -> StreamStats:
        """Encrypt everything ``source`` yields, one chunk at a time, as the stream ``name``.

        Reads ahead by one chunk so the last one can carry the final flag; an
        empty source still writes one (empty) final chunk.
        """
        if not self._pending or self._pending[0] != name:
            raise ValueError(f"stream {name!r} is not the next one the header names")
        self._pending.pop(0)
        cipher = _ChunkCipher(self.key, self.header, self._index, name)
        self._index += 1
        stats = StreamStats(name)
        current, spare = bytearray(self.chunk_size), bytearray(self.chunk_size)
        size = _fill(source, current)
        counter = 0
        while True:
            next_size = _fill(source, spare) if size == self.chunk_size else 0
            final = next_size == 0
            sealed = cipher.seal(counter, final, memoryview(current)[:size])
            self._write(_LENGTH.pack(len(sealed)) + sealed)
            stats.plaintext_bytes += size
            stats.chunks += 1
            if final:
                return stats
            counter += 1
            current, spare, size = spare, current, next_size

    def finish(self) -> None:
        """Check every stream the header promised was written."""
        if self._pending:
            raise ValueError(f"streams not written: {', '.join(self._pending)}")
        self.out.flush()


class BackupReader:
    """Authenticates a backup's header, then opens its streams chunk by chunk, in order."""

    def __init__(self, source: BinaryIO, header: BackupHeader, key: bytes) -> None:
        if header.key_id != key_fingerprint(key):
            raise WrongBackupKey(
                f"this backup was made with backup key {header.key_id}, "
                f"not with the configured one ({key_fingerprint(key)})",
                hint="give the backup key it was made with (CARECLI_BACKUP_KEY or CARECLI_BACKUP_KEY_FILE)",
            )
        if not hmac.compare_digest(header.mac, _header_mac(key, header.salt(), header.raw)):
            raise damaged("header MAC", "the header was altered (its MAC does not match under the right key)")
        self.source = source
        self.header = header
        self.key = key
        self._index = 0
        self.stats: list[StreamStats] = []

    def streams(self) -> Iterator[tuple[str, Iterator[bytes]]]:
        """Each stream's name and an iterator of its plaintext chunks.

        Consume each chunk iterator fully before moving on. Raises
        :class:`BackupCorrupt` at the first chunk that fails, when a stream
        ends without its final chunk, or when bytes follow the last stream.
        """
        for name in self.header.streams:
            yield name, self._chunks(name)
        if self.source.read(1):
            raise BackupCorrupt("the backup file has data after its end (bytes were appended)")

    def _chunks(self, name: str) -> Iterator[bytes]:
        cipher = _ChunkCipher(self.key, self.header, self._index, name)
        self._index += 1
        stats = StreamStats(name)
        self.stats.append(stats)
        limit = self.header.chunk_size + TAG_BYTES
        counter = 0
        while True:
            length_bytes = _read_exactly(self.source, _LENGTH.size)
            if len(length_bytes) < _LENGTH.size:
                raise BackupCorrupt(f"the backup is truncated: the {name} stream ends without its final chunk "
                                    f"(after chunk {counter})")
            (length,) = _LENGTH.unpack(length_bytes)
            if not TAG_BYTES <= length <= limit:
                raise BackupCorrupt(f"chunk {counter} of the {name} stream has an impossible length "
                                    "(the file was altered)")
            sealed = _read_exactly(self.source, length)
            if len(sealed) < length:
                raise BackupCorrupt(f"the backup is truncated inside chunk {counter} of the {name} stream")
            plaintext, final = self._open(cipher, counter, sealed, name)
            stats.plaintext_bytes += len(plaintext)
            stats.chunks += 1
            yield plaintext
            if final:
                return
            counter += 1

    @staticmethod
    def _open(cipher: _ChunkCipher, counter: int, sealed: bytes, name: str) -> tuple[bytes, bool]:
        # A chunk is either the final one or not: try both flags, so a cut-off
        # stream (no chunk opens as final) is told apart from an altered chunk.
        for final in (False, True):
            try:
                return cipher.open(counter, final, sealed), final
            except InvalidTag:
                continue
        raise BackupCorrupt(f"chunk {counter} of the {name} stream failed authentication "
                            "(the file was altered or damaged)")

    def verify(self) -> list[StreamStats]:
        """Check every chunk of every stream and the end of the file; nothing is written anywhere."""
        for _name, chunks in self.streams():
            for _chunk in chunks:
                pass
        return self.stats

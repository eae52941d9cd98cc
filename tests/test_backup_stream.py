"""The chunked AES-256-GCM backup format (carecli/data/crypto/stream.py), without a database.

Small chunks (1 KiB) keep the files tiny while exercising many chunks per
stream. Every kind of damage the format promises to catch is made for real
on the bytes of a file and must be refused.
"""

from __future__ import annotations

import io
import os
import re
import struct
import tracemalloc

import pytest

from carecli.data.crypto.stream import (
    MAC_BYTES,
    MAGIC,
    TAG_BYTES,
    BackupCorrupt,
    BackupReader,
    BackupWriter,
    WrongBackupKey,
    key_fingerprint,
    read_header,
)

KEY = os.urandom(32)
CHUNK = 1024
STREAMS = [{"name": "identity", "server_version": "15.20"}, {"name": "platform", "server_version": "15.20"}]
# identity: 3.5 chunks; platform: exactly 4 chunks (the fourth, full, is the final one)
PAYLOADS = {"identity": os.urandom(CHUNK * 3 + CHUNK // 2), "platform": os.urandom(CHUNK * 4)}


def make_backup(payloads: dict[str, bytes] = PAYLOADS, key: bytes = KEY) -> bytes:
    out = io.BytesIO()
    writer = BackupWriter(out, key, {"backup_id": "test"}, [{"name": n} for n in payloads], chunk_size=CHUNK)
    for name, data in payloads.items():
        writer.write_stream(name, io.BytesIO(data))
    writer.finish()
    return out.getvalue()


def read_all(data: bytes, key: bytes = KEY) -> dict[str, bytes]:
    source = io.BytesIO(data)
    reader = BackupReader(source, read_header(source), key)
    return {name: b"".join(chunks) for name, chunks in reader.streams()}


def header_end(data: bytes) -> int:
    (length,) = struct.unpack(">I", data[len(MAGIC):len(MAGIC) + 4])
    return len(MAGIC) + 4 + length + MAC_BYTES


def chunk_offsets(data: bytes) -> list[tuple[int, int]]:
    """(offset, total size including the length prefix) of every chunk, in file order."""
    offsets, position = [], header_end(data)
    while position < len(data):
        (length,) = struct.unpack(">I", data[position:position + 4])
        offsets.append((position, 4 + length))
        position += 4 + length
    return offsets


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def test_round_trip_of_several_streams_including_empty_and_exact_multiples() -> None:
    payloads = {"a": b"", "b": os.urandom(CHUNK), "c": os.urandom(CHUNK * 2 + 1), "d": b"x"}
    assert read_all(make_backup(payloads)) == payloads


def test_round_trip_and_layout() -> None:
    data = make_backup()
    assert read_all(data) == PAYLOADS
    # 4 chunks for identity (the last one half full), 4 full ones for platform
    sizes = [size for _, size in chunk_offsets(data)]
    assert sizes == [4 + CHUNK + TAG_BYTES] * 3 + [4 + CHUNK // 2 + TAG_BYTES] + [4 + CHUNK + TAG_BYTES] * 4
    # an empty stream is one empty final chunk
    empty = make_backup({"identity": b""})
    assert [size for _, size in chunk_offsets(empty)] == [4 + TAG_BYTES]
    header = read_header(io.BytesIO(data))
    assert header.key_id == key_fingerprint(KEY)
    assert header.streams == ["identity", "platform"]


def test_two_backups_of_the_same_data_share_no_ciphertext() -> None:
    first, second = make_backup(), make_backup()
    assert first[header_end(first):header_end(first) + 64] != second[header_end(second):header_end(second) + 64]


def test_a_wrong_key_is_refused_before_any_chunk() -> None:
    with pytest.raises(WrongBackupKey, match="made with backup key"):
        read_all(make_backup(), key=os.urandom(32))


HEADER_PARTS = {"magic", "version", "header length", "header", "header MAC", "format version", "key id",
                "key kind", "master key id", "chunk size", "salt", "nonce prefix", "streams"}
DAMAGED = re.compile(r"^this backup file is damaged or not a carecli backup \((?P<part>[a-z ]+[A-Z]*): ")


def damaged_part(error: BaseException) -> str:
    """The header part a ``BackupCorrupt`` names (failing the test when the message is not the header's)."""
    assert isinstance(error, BackupCorrupt), repr(error)
    match = DAMAGED.match(str(error))
    assert match and match["part"] in HEADER_PARTS, str(error)
    return match["part"]


def key_id_span(data: bytes) -> range:
    """Where the key id's value sits in the file."""
    key_id = read_header(io.BytesIO(data)).key_id.encode()
    start = data.index(b'"id":"' + key_id + b'"') + len(b'"id":"')
    return range(start, start + len(key_id))


def expected_part(data: bytes, at: int) -> str | None:
    """The part a flip at ``at`` must be reported as, where only one is right (None: one of several)."""
    end = header_end(data)
    if at < len(MAGIC) - 1:
        return "magic"
    if at == len(MAGIC) - 1:
        return "version"
    if at >= end - MAC_BYTES:
        return "header MAC"
    return None


def check_header_flip(data: bytes, at: int, error: BaseException) -> None:
    """A flip at ``at`` gave ``error``: the header part it belongs to, or for a key id that still looks like one,
    the key this installation does not have, named."""
    if isinstance(error, WrongBackupKey):
        assert at in key_id_span(data), (at, str(error))
        flipped = read_header(io.BytesIO(flip(data, at))).key_id
        assert f"made with backup key {flipped}" in str(error)
        return
    part = damaged_part(error)
    if expected_part(data, at) is not None:
        assert part == expected_part(data, at), (at, str(error))
    elif at in key_id_span(data):
        assert part in {"key id", "header MAC"}, (at, str(error))


def test_every_flipped_byte_of_the_header_is_refused_naming_the_part() -> None:
    """Each of the header's bytes in turn: the magic, the version byte, the length, every byte of the JSON
    and of the MAC. Each is a BackupCorrupt naming its part, or (a key id flipped into another well-formed
    one) a WrongBackupKey naming that key id; never an internal error."""
    data = make_backup()
    parts = set()
    for at in range(header_end(data)):
        try:
            read_all(flip(data, at))
        except (BackupCorrupt, WrongBackupKey) as error:
            check_header_flip(data, at, error)
            if isinstance(error, BackupCorrupt):
                parts.add(damaged_part(error))
        else:
            pytest.fail(f"a flip at byte {at} of the header was not noticed")
    assert {"magic", "version", "header length", "header", "header MAC", "format version", "key id",
            "chunk size", "salt", "nonce prefix", "streams"} <= parts


def test_a_header_cut_at_every_length_is_refused_as_truncated() -> None:
    data = make_backup()
    for cut in range(header_end(data)):
        with pytest.raises(BackupCorrupt) as caught:
            read_all(data[:cut])
        part = damaged_part(caught.value)
        assert part == "magic" if cut < len(MAGIC) else part in {"header length", "header", "header MAC"}
        assert ("empty" if cut == 0 else f"ends after {cut:,} bytes") in str(caught.value), cut


def test_an_unknown_version_and_a_foreign_file_are_told_apart() -> None:
    data = make_backup()
    newer = data[:len(MAGIC) - 1] + b"\x02" + data[len(MAGIC):]
    with pytest.raises(BackupCorrupt, match=r"\(version: the file format version is 2; this carecli reads version 1"):
        read_all(newer)
    with pytest.raises(BackupCorrupt, match=r"\(magic: the file does not start with a carecli backup's"):
        read_all(b"PGDMP" + data[5:])


def test_a_header_rewritten_with_a_valid_shape_is_refused_by_its_mac() -> None:
    data = make_backup()
    header = read_header(io.BytesIO(data))
    forged_raw = header.raw.replace(b'"backup_id":"test"', b'"backup_id":"tesT"')
    assert forged_raw != header.raw
    forged = data[:len(MAGIC) + 4] + forged_raw + data[len(MAGIC) + 4 + len(header.raw):]
    with pytest.raises(BackupCorrupt, match=r"\(header MAC: the header was altered"):
        read_all(forged)


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_a_flipped_byte_in_a_chunk_is_refused(which: str) -> None:
    data = make_backup()
    offsets = chunk_offsets(data)
    offset, size = {"first": offsets[0], "middle": offsets[4], "last": offsets[-1]}[which]
    with pytest.raises(BackupCorrupt, match="failed authentication"):
        read_all(flip(data, offset + size - 3))


def test_a_flipped_length_prefix_is_refused() -> None:
    data = make_backup()
    offset, _ = chunk_offsets(data)[2]
    with pytest.raises(BackupCorrupt):
        read_all(flip(data, offset + 3))


@pytest.mark.parametrize("boundary", [1, 4, 7])
def test_truncated_at_a_chunk_boundary_is_refused(boundary: int) -> None:
    data = make_backup()
    offset, _ = chunk_offsets(data)[boundary]
    with pytest.raises(BackupCorrupt, match="truncated"):
        read_all(data[:offset])


def test_truncated_inside_a_chunk_or_its_length_is_refused() -> None:
    data = make_backup()
    offset, size = chunk_offsets(data)[5]
    for cut in (offset + 2, offset + size // 2, len(data) - 1):
        with pytest.raises(BackupCorrupt, match="truncated"):
            read_all(data[:cut])


def test_truncated_inside_the_header_is_refused() -> None:
    data = make_backup()
    for cut in (3, len(MAGIC) + 2, header_end(data) - 1):
        with pytest.raises(BackupCorrupt):
            read_all(data[:cut])


def test_appended_bytes_are_refused() -> None:
    data = make_backup()
    with pytest.raises(BackupCorrupt, match="appended"):
        read_all(data + b"\x00")
    # even a whole valid-looking chunk copied onto the end
    offset, size = chunk_offsets(data)[-1]
    with pytest.raises(BackupCorrupt, match="appended"):
        read_all(data + data[offset:offset + size])


def test_reordered_dropped_and_spliced_chunks_are_refused() -> None:
    data = make_backup()
    offsets = chunk_offsets(data)
    pieces = [data[o:o + s] for o, s in offsets]
    head = data[:header_end(data)]
    swapped = pieces[:1] + [pieces[2], pieces[1]] + pieces[3:]
    dropped = pieces[:1] + pieces[2:]
    other = make_backup()
    other_pieces = [other[o:o + s] for o, s in chunk_offsets(other)]
    spliced = pieces[:2] + other_pieces[2:3] + pieces[3:]
    # the identity stream's chunks presented as the platform stream's
    cross = pieces[:4] + pieces[:4] + pieces[8:]
    for variant in (swapped, dropped, spliced, cross):
        with pytest.raises(BackupCorrupt):
            read_all(head + b"".join(variant))


def test_a_stream_cut_to_its_non_final_chunks_then_followed_by_the_next_is_refused() -> None:
    data = make_backup()
    offsets = chunk_offsets(data)
    pieces = [data[o:o + s] for o, s in offsets]
    # drop identity's final chunk: platform's first chunk cannot pass as identity's next one
    with pytest.raises(BackupCorrupt):
        read_all(data[:header_end(data)] + b"".join(pieces[:3] + pieces[4:]))


class RecordingSource(io.RawIOBase):
    """A pipe-like source of ``total`` bytes that hands out at most 700 bytes per call.

    It keeps only the largest request (a list of every request would itself grow with the stream).
    """

    def __init__(self, total: int) -> None:
        self.left = total
        self.largest_request = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001 - a writable buffer
        self.largest_request = max(self.largest_request, len(buffer))
        count = min(len(buffer), self.left, 700)
        buffer[:count] = b"\xab" * count
        self.left -= count
        return count


class RecordingSink(io.RawIOBase):
    def __init__(self) -> None:
        self.sizes: set[int] = set()
        self.total = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # noqa: ANN001 - bytes-like
        self.sizes.add(len(data))
        self.total += len(data)
        return len(data)


def test_the_encryptor_reads_and_writes_in_bounded_chunks_with_flat_memory() -> None:
    """32 MiB through 64 KiB chunks: no read asks for more than a chunk, no write exceeds one sealed chunk,
    and the memory peak stays at a few chunks (not the stream's size)."""
    chunk = 64 * 1024
    total = 32 * 1024 * 1024
    make_backup({"warm-up": b"x"})  # first use loads cryptography's backends: not the stream's memory
    source, sink = RecordingSource(total), RecordingSink()
    tracemalloc.start()
    try:
        writer = BackupWriter(sink, KEY, {}, [{"name": "platform"}], chunk_size=chunk)
        stats = writer.write_stream("platform", source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stats.plaintext_bytes == total
    assert stats.chunks == total // chunk
    assert source.largest_request <= chunk
    header_bytes = writer.header.raw
    assert max(sink.sizes - {len(MAGIC) + 4 + len(header_bytes) + MAC_BYTES}) <= 4 + chunk + TAG_BYTES
    assert peak < 8 * chunk, peak


def test_the_decryptor_yields_one_chunk_at_a_time() -> None:
    data = make_backup({"platform": os.urandom(CHUNK * 20)})
    source = io.BytesIO(data)
    reader = BackupReader(source, read_header(source), KEY)
    for _name, chunks in reader.streams():
        sizes = [len(chunk) for chunk in chunks]
    assert max(sizes) == CHUNK
    assert sum(sizes) == CHUNK * 20

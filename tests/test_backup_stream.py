"""The chunked AES-256-GCM backup format (carecli/data/crypto/stream.py), without a database.

Small chunks (1 KiB) keep the files tiny while exercising many chunks per
stream. Every kind of damage the format promises to catch is made for real
on the bytes of a file and must be refused.
"""

from __future__ import annotations

import io
import os
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


@pytest.mark.parametrize("where", ["magic", "length", "json", "mac"])
def test_a_flipped_byte_in_the_header_is_refused(where: str) -> None:
    data = make_backup()
    end = header_end(data)
    at = {"magic": 2, "length": len(MAGIC) + 3, "json": len(MAGIC) + 4 + 20, "mac": end - 5}[where]
    with pytest.raises(BackupCorrupt):
        read_all(flip(data, at))


def test_a_header_rewritten_with_a_valid_shape_is_refused_by_its_mac() -> None:
    data = make_backup()
    header = read_header(io.BytesIO(data))
    forged_raw = header.raw.replace(b'"backup_id":"test"', b'"backup_id":"tesT"')
    assert forged_raw != header.raw
    forged = data[:len(MAGIC) + 4] + forged_raw + data[len(MAGIC) + 4 + len(header.raw):]
    with pytest.raises(BackupCorrupt, match="header was altered"):
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

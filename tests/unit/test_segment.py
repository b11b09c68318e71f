"""storage/segment.py: one .log + .index pair."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from tidelog.storage.io import BufferedIO, DirectIO, FileIO, MemIO
from tidelog.storage.segment import Segment, index_name, log_name, parse_segment_name
from tidelog.wire.batch import INDEX_DTYPE, Batch, parse_send_batch, scan_messages, stamp, storage_index

HEADER = struct.Struct("<Q16sQQQIIQ")


def encode(payloads: list[bytes]) -> tuple[bytes, bytearray]:
    """Client-side SendMessages index table and messages area (protocol 3.9, 4.1)."""
    index, area = bytearray(), bytearray()
    for payload in payloads:
        area += HEADER.pack(0, bytes(16), 0, 0, 0, 0, len(payload), 0) + payload
        index += struct.pack("<IIQ", 0, len(area), 0)
    return bytes(index), area


def stamped(payloads: list[bytes], base: int, timestamp_us: int) -> Batch:
    index, area = encode(payloads)
    batch = parse_send_batch(index, area, len(payloads))
    stamp(batch, base, timestamp_us, os.urandom)
    return batch


def append(segment: Segment, payloads: list[bytes], timestamp_us: int) -> Batch:
    batch = stamped(payloads, segment.next_offset, timestamp_us)
    entries = storage_index(batch, segment.messages_count, segment.size_bytes, timestamp_us)
    segment.append([batch.buf], entries)
    return batch


@pytest.fixture(params=["buffered", "direct", "mem"])
def io(request: pytest.FixtureRequest, tmp_path: Path) -> FileIO:
    backend: FileIO
    if request.param == "direct":
        if not DirectIO.supported(tmp_path):
            pytest.skip("the test directory's filesystem refuses O_DIRECT")
        backend = DirectIO()
    else:
        backend = BufferedIO() if request.param == "buffered" else MemIO()
    backend.makedirs(tmp_path)
    return backend


def test_names_given_start_offset_when_formatted_should_be_zero_padded_and_parse_back() -> None:
    assert log_name(42) == "00000000000000000042.log"
    assert index_name(42) == "00000000000000000042.index"
    assert parse_segment_name(log_name(12345), ".log") == 12345
    assert parse_segment_name("123.log", ".log") is None
    assert parse_segment_name(log_name(1) + ".torn-0", ".log") is None
    assert parse_segment_name(index_name(1), ".log") is None


def test_segment_given_new_when_created_should_be_empty_with_files(io: FileIO, tmp_path: Path) -> None:
    seg = Segment.create(io, tmp_path, 100)
    assert seg.is_empty and seg.messages_count == 0 and seg.size_bytes == 0
    assert seg.next_offset == 100 and seg.end_offset == 99 and seg.end_timestamp == 0
    assert io.exists(tmp_path / log_name(100)) and io.exists(tmp_path / index_name(100))


def test_segment_given_appends_when_written_should_store_log_and_index_on_disk(
    io: FileIO, tmp_path: Path
) -> None:
    seg = Segment.create(io, tmp_path, 100)
    first = append(seg, [b"a", b"bb"], 10)
    second = append(seg, [b"ccc"], 20)
    assert seg.messages_count == 3 and seg.end_offset == 102 and seg.next_offset == 103
    assert seg.size_bytes == first.size_bytes + second.size_bytes
    assert seg.end_timestamp == 20
    seg.close()  # a live DirectIO file is padded to a page; closing cuts the padding
    log = io.read_file(tmp_path / log_name(100))
    assert log == bytes(first.buf) + bytes(second.buf)
    index = np.frombuffer(io.read_file(tmp_path / index_name(100)), dtype=INDEX_DTYPE)
    assert index["offset"].tolist() == [0, 1, 2]
    assert index["position"].tolist() == [65, 131, 198]
    assert index["timestamp"].tolist() == [10, 10, 20]
    ends, valid = scan_messages(log, True, 100)
    assert ends.tolist() == index["position"].tolist() and valid == len(log)


def test_segment_given_messages_when_reading_ranges_should_return_exact_bytes(
    io: FileIO, tmp_path: Path
) -> None:
    seg = Segment.create(io, tmp_path, 50)
    payloads = [bytes([65 + i]) * (i + 1) for i in range(6)]
    append(seg, payloads[:4], 1)
    append(seg, payloads[4:], 2)
    for lo in range(50, 56):
        for hi in range(lo + 1, 57):
            data = seg.read_messages(lo, hi)
            ends, valid = scan_messages(data, True, lo)
            assert len(ends) == hi - lo and valid == len(data)
    assert seg.byte_range(50, 51) == (0, 65)
    assert seg.byte_range(51, 53) == (65, 66 + 67)


def test_segment_given_timestamps_when_searched_should_find_first_at_or_after(
    io: FileIO, tmp_path: Path
) -> None:
    seg = Segment.create(io, tmp_path, 10)
    append(seg, [b"a", b"b"], 100)
    append(seg, [b"c"], 200)
    append(seg, [b"d", b"e"], 300)
    assert seg.offset_for_timestamp(0) == 10
    assert seg.offset_for_timestamp(100) == 10
    assert seg.offset_for_timestamp(101) == 12
    assert seg.offset_for_timestamp(300) == 13
    assert seg.offset_for_timestamp(301) is None


def test_segment_given_many_appends_when_index_grows_should_keep_every_entry(
    io: FileIO, tmp_path: Path
) -> None:
    seg = Segment.create(io, tmp_path, 0)
    for i in range(30):
        append(seg, [b"x"] * 100, i)
    assert seg.messages_count == 3000
    assert seg.ends.tolist() == [65 * (i + 1) for i in range(3000)]
    assert seg.offset_for_timestamp(29) == 2900
    assert seg.read_messages(2999, 3000)[24:32] == struct.pack("<Q", 2999)


def test_segment_given_clock_gone_back_when_appended_should_keep_search_column_sorted(
    io: FileIO, tmp_path: Path
) -> None:
    seg = Segment.create(io, tmp_path, 0)
    append(seg, [b"a"], 500)
    append(seg, [b"b"], 400)
    assert seg.timestamps.tolist() == [500, 500]
    assert seg.offset_for_timestamp(450) == 0


def test_segment_given_wrong_relative_offsets_when_appended_should_assert(io: FileIO, tmp_path: Path) -> None:
    seg = Segment.create(io, tmp_path, 0)
    batch = stamped([b"a"], 0, 1)
    with pytest.raises(AssertionError):
        seg.append([batch.buf], storage_index(batch, 5, 0, 1))


def test_segment_given_sealed_when_appending_should_refuse(io: FileIO, tmp_path: Path) -> None:
    seg = Segment.create(io, tmp_path, 0)
    append(seg, [b"a"], 1)
    seg.seal()
    with pytest.raises(AssertionError):
        append(seg, [b"b"], 2)


def test_segment_given_delete_when_done_should_remove_both_files(io: FileIO, tmp_path: Path) -> None:
    seg = Segment.create(io, tmp_path, 7)
    append(seg, [b"a"], 1)
    seg.delete()
    assert not io.exists(tmp_path / log_name(7)) and not io.exists(tmp_path / index_name(7))


def test_segment_given_advance_when_not_yet_written_should_move_only_the_logical_state(
    io: FileIO, tmp_path: Path
) -> None:
    seg = Segment.create(io, tmp_path, 10)
    first = stamped([b"a", b"bb"], 10, 5)
    rows = storage_index(first, 0, 0, 5)
    assert seg.advance(rows, first.size_bytes) == (0, 0)
    assert (seg.messages_count, seg.size_bytes, seg.next_offset) == (2, first.size_bytes, 12)
    assert seg.offset_for_timestamp(5) == 10
    assert io.read_file(tmp_path / log_name(10)) == b""  # the caller writes, later
    second = stamped([b"ccc"], 12, 6)
    rows2 = storage_index(second, 2, first.size_bytes, 6)
    assert seg.advance(rows2, second.size_bytes) == (first.size_bytes, 2 * 16)
    # Written out of band, in the order the caller chose, they read back as append's would.
    seg.log.pwritev([first.buf, second.buf], 0)
    seg.index.pwrite(np.concatenate([rows, rows2]).data, 0)
    assert seg.read_messages(10, 13) == bytes(first.buf) + bytes(second.buf)
    seg.close()
    index = np.frombuffer(io.read_file(tmp_path / index_name(10)), dtype=INDEX_DTYPE)
    assert index["position"].tolist() == seg.ends.tolist()


def test_segment_given_advance_with_wrong_size_when_called_should_assert(io: FileIO, tmp_path: Path) -> None:
    seg = Segment.create(io, tmp_path, 0)
    batch = stamped([b"a"], 0, 1)
    with pytest.raises(AssertionError):
        seg.advance(storage_index(batch, 0, 0, 1), batch.size_bytes + 1)
    assert seg.is_empty

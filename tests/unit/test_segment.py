"""storage/segment.py: one .log + .index pair."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from tidelog.storage.index_cache import IndexCache
from tidelog.storage.integrity import QUARANTINE_DIR
from tidelog.storage.io import BufferedIO, DirectIO, FileIO, FileRange, MemIO
from tidelog.storage.segment import Segment, index_name, log_name, parse_segment_name
from tidelog.wire.batch import (
    INDEX_DTYPE,
    INDEX_ENTRY,
    MESSAGE_HEADER,
    Batch,
    parse_send_batch,
    scan_messages,
    stamp,
    storage_index,
)
from tidelog.wire.codes import IggyError, Status


def encode(payloads: list[bytes]) -> tuple[bytes, bytearray]:
    """Client-side SendMessages index table and messages area (protocol 3.9, 4.1)."""
    index, area = bytearray(), bytearray()
    for payload in payloads:
        area += MESSAGE_HEADER.pack(0, 0, 0, 0, 0, 0, 0, len(payload), 0) + payload
        index += INDEX_ENTRY.pack(0, len(area), 0)
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


# ---- sealed segments: the index stays on disk -------------------------------------------------


def sealed_segment(
    io: FileIO, tmp_path: Path, cache: IndexCache, batches: int = 10, per_batch: int = 5
) -> tuple[Segment, list[bytes]]:
    """A sealed segment of `batches` batches (timestamps 100, 200, ...) released to `cache`."""
    seg = Segment.create(io, tmp_path, 1000)
    payloads = [b"p%03d-" % i + b"z" * (i % 7) for i in range(batches * per_batch)]
    for b in range(batches):
        append(seg, payloads[b * per_batch : (b + 1) * per_batch], 100 * (b + 1))
    seg.seal()
    seg.release_index(cache)
    return seg, payloads


def payloads_of(data: bytes | FileRange | None, first_offset: int) -> list[bytes]:
    raw = data.read() if isinstance(data, FileRange) else (data or b"")
    ends, valid = scan_messages(raw, True, first_offset)
    assert valid == len(raw)
    out, start = [], 0
    for end in ends.tolist():
        *_, length, _ = MESSAGE_HEADER.unpack_from(raw, start)
        out.append(raw[start + 64 : start + 64 + length])
        start = end
    return out


def index_entries(seg: Segment) -> np.ndarray:
    # A live DirectIO file may be padded past its entries.
    raw = seg.io.read_file(seg.index_path)[: seg.messages_count * 16]
    return np.frombuffer(raw, dtype=INDEX_DTYPE).copy()


@pytest.mark.parametrize("cache_bytes", [0, 1 << 20], ids=["reads-by-range", "cached"])
def test_segment_given_sealed_and_released_when_read_should_serve_from_the_index_file(
    io: FileIO, tmp_path: Path, cache_bytes: int
) -> None:
    cache = IndexCache(cache_bytes)
    seg, payloads = sealed_segment(io, tmp_path, cache)
    assert not seg.holds_index and seg.index_bytes_held == 0
    assert (seg.messages_count, seg.first_timestamp, seg.end_timestamp) == (50, 100, 1000)
    for lo in (0, 1, 17, 49):
        span = seg.read_span(1000 + lo, 1050, None, True, False)
        assert not span.damaged and span.count == 50 - lo
        assert payloads_of(span.pieces[0], 1000 + lo) == payloads[lo:]
    assert seg.read_span(1003, 1050, 3 * 75, True, False).count == 3  # byte budget
    assert seg.read_span(1003, 1050, 10, False, False).count == 0
    assert seg.read_span(1003, 1050, 10, True, False).count == 1
    assert [seg.offset_for_timestamp(t) for t in (0, 100, 101, 550, 1000, 1001)] == [
        1000,
        1000,
        1005,
        1025,
        1045,
        None,
    ]
    assert seg.ends.tolist() == index_entries(seg)["position"].tolist()
    assert cache.held_bytes == (50 * 16 if cache_bytes else 0)
    seg.close()
    assert cache.held_bytes == 0


def test_segment_given_range_verified_once_when_read_again_should_go_out_as_file_range(
    tmp_path: Path,
) -> None:
    io = BufferedIO()
    # Recovered sealed segment: nothing is known good until a poll verified it.
    seg, payloads = sealed_segment(io, tmp_path, IndexCache(1 << 20))
    seg._trusted_from = seg.messages_count
    first = seg.read_span(1010, 1020, None, True, True)
    assert isinstance(first.pieces[0], bytes)  # read and verified
    again = seg.read_span(1010, 1020, None, True, True)
    assert isinstance(again.pieces[0], FileRange) and payloads_of(again.pieces[0], 1010) == payloads[10:20]


def test_segment_given_flipped_payload_byte_when_read_should_serve_the_valid_prefix_and_quarantine(
    io: FileIO, tmp_path: Path
) -> None:
    seg, payloads = sealed_segment(io, tmp_path, IndexCache(1 << 20))
    seg._trusted_from = seg.messages_count  # as after a restart
    ends = seg.ends.tolist()
    seg.log.pwrite(b"\xff", ends[12] - 1)  # last payload byte of message 12
    span = seg.read_span(1010, 1050, None, True, False)
    assert span.damaged and span.count == 2 and payloads_of(span.pieces[0], 1010) == payloads[10:12]
    refused = seg.read_span(1012, 1050, None, True, False)
    assert refused.damaged and refused.count == 0 and refused.pieces == []
    after = seg.read_span(1013, 1050, None, True, False)
    assert not after.damaged and payloads_of(after.pieces[0], 1013) == payloads[13:]
    folder = tmp_path / QUARANTINE_DIR
    kept = [n for n in io.listdir(folder)]
    assert len(kept) == 1  # reported once however often it is polled
    assert io.read_file(folder / kept[0]) == seg.log.pread(ends[12] - ends[11], ends[11])


@pytest.mark.parametrize("cache_bytes", [0, 1 << 20], ids=["reads-by-range", "cached"])
def test_segment_given_shifted_index_position_when_read_should_rebuild_the_index_from_the_log(
    io: FileIO, tmp_path: Path, cache_bytes: int
) -> None:
    cache = IndexCache(cache_bytes)
    seg, payloads = sealed_segment(io, tmp_path, cache)
    original = index_entries(seg)
    cache.discard(seg)
    damaged = original.copy()
    damaged["position"][21] += 8  # still rising and inside the log
    seg.index.pwrite(damaged.tobytes(), 0)
    seg._trusted_from = seg.messages_count
    for lo in (20, 21, 22):
        span = seg.read_span(1000 + lo, 1050, None, True, False)
        assert not span.damaged and payloads_of(span.pieces[0], 1000 + lo) == payloads[lo:]
    assert seg.index_repairs == 1
    assert index_entries(seg).tobytes() == original.tobytes()


def test_segment_given_index_timestamp_lowered_when_searched_should_answer_from_the_log(
    io: FileIO, tmp_path: Path
) -> None:
    seg, _ = sealed_segment(io, tmp_path, IndexCache(0))  # binary search over preads
    original = index_entries(seg)
    damaged = original.copy()
    damaged["timestamp"][25] = 500  # message 25 is at 600, like the rest of its batch
    seg.index.pwrite(damaged.tobytes(), 0)
    assert seg.offset_for_timestamp(600) == 1025
    assert seg.offset_for_timestamp(501) == 1025
    assert index_entries(seg).tobytes() == original.tobytes()


def test_segment_given_damaged_index_and_log_when_read_should_refuse_never_serve_wrong_bytes(
    io: FileIO, tmp_path: Path
) -> None:
    seg, payloads = sealed_segment(io, tmp_path, IndexCache(0))
    seg._trusted_from = seg.messages_count
    damaged = index_entries(seg)
    ends = damaged["position"].astype(int).tolist()
    damaged["position"][30] += 8
    seg.index.pwrite(damaged.tobytes(), 0)
    seg.log.pwrite(b"\xff", ends[40] - 1)  # and a payload byte of message 40
    span = seg.read_span(1029, 1050, None, True, False)
    assert span.damaged and payloads_of(span.pieces[0], 1029) == payloads[29 : 29 + span.count]
    with pytest.raises(IggyError) as refused:
        seg.offset_for_timestamp(700)
    assert refused.value.status == Status.INVALID_MESSAGE_CHECKSUM
    assert seg.read_span(1045, 1050, None, True, False).damaged


def test_index_cache_given_capacity_when_many_segments_loaded_should_keep_the_newest_within_it(
    io: FileIO, tmp_path: Path
) -> None:
    cache = IndexCache(4 * 50 * 16)  # a quarter of it per segment: four segments
    segments = []
    for s in range(10):
        io.makedirs(tmp_path / str(s))
        seg, _ = sealed_segment(io, tmp_path / str(s), cache)
        segments.append(seg)
        assert cache.held_bytes <= cache.capacity_bytes
    for seg in segments:
        seg.offset_for_timestamp(300)  # loads the whole index
        assert cache.held_bytes <= cache.capacity_bytes
    assert len(cache) == 4 and all(cache.get(s) is not None for s in segments[-4:])
    big = IndexCache(50 * 16 * 4 - 1)  # a whole index would take over a quarter: never kept
    seg, _ = sealed_segment(io, tmp_path, big)
    assert seg.offset_for_timestamp(300) == 1010 and big.held_bytes == 0

"""The stored record log primitives of src/tidelog/wire/v09/batch.py: stamped 0.9 records
back to back (shared/protocol/iggy-0.9-vsr.md 4.1, 4.2, 4.5) as a segment's log holds them.
Scanning and verifying a log, the record header, slicing a record for a poll reply, and the
conversions between it and 0.8 messages."""

from __future__ import annotations

import os
import random
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_v09_batch import (
    ORIGIN_US,
    STAMPED_US,
    _assemble,
    _both_kernels,
    _build,
    _log,
    _messages,
    _rechecksum,
)
from tests.unit.test_v09_batch import kernel as kernel  # the fixture: both kernel paths
from tidelog.storage.integrity import RECORD_LOG
from tidelog.wire import batch as batch08
from tidelog.wire.codes import MAX_PAYLOAD_BYTES, MAX_USER_HEADERS_BYTES
from tidelog.wire.v09 import batch as batch_module
from tidelog.wire.v09.batch import (
    BATCH_HEADER_SIZE,
    FRAME_HEADER_SIZE,
    BatchError,
    RecordHead,
    build_batch,
    file_records_to_v08,
    parse_batch,
    parse_records,
    poll_slice,
    record_from_v08,
    record_head,
    records_to_v08,
    scan_records,
    slice_record_head,
    stamp_batch,
    v09_to_v08,
    verify_records,
)
from tidelog.wire.v09.codes import Status09

_FIXTURE_OK = settings(
    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def _expected(sizes: list[int]) -> np.ndarray:
    """Per-message timestamps of `_log(sizes, ...)`: record b is stamped STAMPED_US + b."""
    return np.repeat(STAMPED_US + np.arange(len(sizes), dtype=np.uint64), sizes)


def _boundaries(positions: np.ndarray, log: bytes) -> list[int]:
    return [*positions.tolist(), len(log)]


def _stamped_log(
    batches: list[list[tuple[int, bytes, bytes, int]]], first_offset: int
) -> tuple[bytes, list[int], np.ndarray]:
    """Stamped records of arbitrary messages; record boundaries (and the end), message ends."""
    log = bytearray()
    bounds = [0]
    ends: list[np.ndarray] = []
    offset = first_offset
    for b, messages in enumerate(batches):
        buf = _build(messages, partition_id=4, base_offset=offset, base_timestamp=STAMPED_US + 7 * b)
        ends.append(parse_batch(buf).ends + len(log))
        log += buf
        bounds.append(len(log))
        offset += len(messages)
    return bytes(log), bounds, np.concatenate(ends)


def _restamped(record: bytes | bytearray, base_offset: int, base_timestamp: int) -> bytes:
    """`record` stamped again: a record valid in itself, with other header fields."""
    batch = parse_batch(bytearray(record), dense_offsets=True, allow_empty_payload=True)
    stamp_batch(batch, batch.partition_id, base_offset, base_timestamp)
    return bytes(batch.buf)


# --- parse_batch / parse_records: allow_empty_payload ---------------------------------------


def test_parse_batch_given_empty_payload_when_allowed_should_pass_and_by_default_fail_with_4024() -> None:
    buf = build_batch([1, 2], [b"", b"x"], [b"", b"h"], [ORIGIN_US, ORIGIN_US])

    with pytest.raises(BatchError) as caught:
        parse_batch(buf)
    batch = parse_batch(buf, allow_empty_payload=True)

    assert caught.value.code == Status09.EMPTY_MESSAGE_PAYLOAD == 4024
    assert [batch.payload(i) for i in range(2)] == [b"", b"x"]


def test_parse_records_given_empty_payload_when_allowed_should_pass_it_through(kernel: str) -> None:
    log = bytes(build_batch([1], [b""], [b""], [ORIGIN_US], base_timestamp=STAMPED_US))

    with pytest.raises(BatchError):
        parse_records(log)
    (record,) = parse_records(log, allow_empty_payload=True)

    assert record.payload(0) == b""


def test_parse_batch_given_readonly_buffer_without_copy_when_parsed_should_not_copy() -> None:
    data = bytes(build_batch([1], [b"abc"], [b""], [ORIGIN_US]))

    batch = parse_batch(data, copy_readonly=False)

    assert batch.buf.readonly and batch.buf.obj is data


# --- record_head -------------------------------------------------------------------------------


def test_record_head_given_stamped_records_when_read_should_give_their_fields() -> None:
    log, positions, _ = _log([2, 3], 40)

    first, second = (record_head(log, int(at)) for at in positions)

    assert first == RecordHead(
        base_offset=40, base_timestamp=STAMPED_US, length_bytes=int(positions[1]), messages=2
    )
    assert second is not None and (second.base_offset, second.messages) == (42, 3)
    assert second.length_bytes == len(log) - int(positions[1])
    assert record_head(memoryview(log)[int(positions[1]) :]) == second


def _header(count: int, length: int) -> bytearray:
    header = bytearray(BATCH_HEADER_SIZE)
    struct.pack_into("<QQQQQQI", header, 0, 1, 2, 3, 4, length, 5, count)
    return header


@pytest.mark.parametrize(
    ("count", "length", "reserved_byte", "plausible"),
    [
        (1, BATCH_HEADER_SIZE + FRAME_HEADER_SIZE, 0, True),
        (1, BATCH_HEADER_SIZE + FRAME_HEADER_SIZE - 1, 0, False),  # no room for a frame header
        (0, BATCH_HEADER_SIZE, 0, False),  # message_count 0
        (1, BATCH_HEADER_SIZE + FRAME_HEADER_SIZE, 1, False),  # reserved byte set
        (
            3,
            BATCH_HEADER_SIZE + 3 * (FRAME_HEADER_SIZE + MAX_PAYLOAD_BYTES + MAX_USER_HEADERS_BYTES),
            0,
            True,
        ),
        (
            3,
            BATCH_HEADER_SIZE + 3 * (FRAME_HEADER_SIZE + MAX_PAYLOAD_BYTES + MAX_USER_HEADERS_BYTES) + 1,
            0,
            False,
        ),
    ],
)
def test_record_head_given_header_fields_when_read_should_say_whether_plausible(
    count: int, length: int, reserved_byte: int, plausible: bool
) -> None:
    header = _header(count, length)
    header[BATCH_HEADER_SIZE - 1] = reserved_byte

    got = record_head(bytes(header))

    assert (got is not None) == plausible
    if got is not None:
        assert got == RecordHead(2, 3, length, count)


def test_record_head_given_fewer_than_256_bytes_when_read_should_give_none() -> None:
    header = _header(1, BATCH_HEADER_SIZE + FRAME_HEADER_SIZE)

    assert record_head(bytes(header[:-1])) is None
    assert record_head(b"\x00" + bytes(header), at=2) is None
    assert record_head(b"\x00" + bytes(header), at=1) is not None


# --- scan_records ------------------------------------------------------------------------------


@_FIXTURE_OK
@given(
    st.lists(_messages, min_size=1, max_size=5), st.integers(min_value=0, max_value=1 << 40), st.booleans()
)
def test_scan_records_given_stamped_records_when_scanned_should_give_every_message(
    kernel: str, batches: list[list[tuple[int, bytes, bytes, int]]], first_offset: int, verify: bool
) -> None:
    log, bounds, ends = _stamped_log(batches, first_offset)

    for first in (first_offset, None):
        got_ends, got_stamps, valid = scan_records(log, verify, first)

        assert got_ends.dtype == np.int64 and got_stamps.dtype == np.uint64
        assert got_ends.tolist() == ends.tolist()
        assert got_stamps.tolist() == [STAMPED_US + 7 * b for b, m in enumerate(batches) for _ in m]
        assert valid == len(log) == bounds[-1]


def test_scan_records_given_first_message_when_scanned_should_span_the_record_header() -> None:
    log, _, frame_ends = _log([3], 0)

    ends, _, _ = scan_records(log, True, 0)

    assert int(ends[0]) == BATCH_HEADER_SIZE + FRAME_HEADER_SIZE + 2  # b"m0", no user headers
    assert ends.tolist() == frame_ends.tolist()


def test_scan_records_given_nothing_valid_when_scanned_should_give_empty_arrays() -> None:
    for data in (b"", bytes(1000), b"\xff" * 300):
        ends, stamps, valid = scan_records(data, True, None)

        assert (ends.dtype, stamps.dtype, len(ends), len(stamps), valid) == (np.int64, np.uint64, 0, 0, 0)


def test_scan_records_given_every_truncation_when_scanned_should_stop_at_the_last_whole_record(
    kernel: str,
) -> None:
    log, positions, frame_ends = _log([2, 1, 3], 5)
    bounds = _boundaries(positions, log)
    stamps = _expected([2, 1, 3])

    for cut in range(len(log) + 1):
        for verify in (True, False):
            ends, got_stamps, valid = scan_records(log[:cut], verify, 5)

            whole = max(b for b in bounds if b <= cut)
            assert valid == whole
            assert ends.tolist() == frame_ends[frame_ends <= whole].tolist()
            assert got_stamps.tolist() == stamps[: len(ends)].tolist()


@_FIXTURE_OK
@given(st.lists(_messages, min_size=1, max_size=4), st.data())
def test_scan_records_given_a_changed_byte_in_record_k_when_verified_should_stop_at_record_k(
    kernel: str, batches: list[list[tuple[int, bytes, bytes, int]]], data: st.DataObject
) -> None:
    log, bounds, ends = _stamped_log(batches, 1000)
    at = data.draw(st.integers(min_value=0, max_value=len(log) - 1))
    damaged = bytearray(log)
    damaged[at] ^= data.draw(st.integers(min_value=1, max_value=255))
    k = max(i for i, b in enumerate(bounds) if b <= at)

    got_ends, got_stamps, valid = scan_records(bytes(damaged), True, 1000)

    assert valid == bounds[k]
    assert got_ends.tolist() == ends[ends <= bounds[k]].tolist()
    assert len(got_stamps) == len(got_ends)


def test_scan_records_given_a_wrong_base_offset_when_scanned_should_stop_at_that_record(kernel: str) -> None:
    log, positions, _ = _log([2, 2, 2], 10)
    p1, p2 = int(positions[1]), int(positions[2])
    # Record 1 valid in itself (checksums re-derived) but at offset 13 where 12 is expected.
    damaged = log[:p1] + _restamped(log[p1:p2], 13, STAMPED_US + 1) + log[p2:]

    for verify in (True, False):
        assert scan_records(damaged, verify, 10)[2] == p1
        assert scan_records(damaged, verify, None)[2] == p1
        assert scan_records(log, verify, 11)[2] == 0  # the first record is not at 11
    assert scan_records(log, True, None)[2] == len(log)


@pytest.mark.parametrize("stamp_delta_us", [0, -1])
def test_scan_records_given_a_timestamp_not_above_the_previous_when_scanned_should_stop_there(
    stamp_delta_us: int,
) -> None:
    log, positions, _ = _log([1, 2, 1], 0)
    p1, p2 = int(positions[1]), int(positions[2])
    # Record 1 stamped at (or before) record 0's time: each record is valid in itself.
    damaged = log[:p1] + _restamped(log[p1:p2], 1, STAMPED_US + stamp_delta_us) + log[p2:]

    assert scan_records(damaged, True, 0)[2] == p1
    assert scan_records(log, True, 0, after_timestamp=STAMPED_US - 1)[2] == len(log)
    assert scan_records(log, True, 0, after_timestamp=STAMPED_US)[2] == 0


def test_scan_records_given_a_payload_byte_flip_when_not_verified_should_pass_it() -> None:
    log, _, _ = _log([2, 2], 0)
    damaged = bytearray(log)
    damaged[BATCH_HEADER_SIZE + FRAME_HEADER_SIZE] ^= 1  # first payload byte of record 0

    assert scan_records(bytes(damaged), False, 0)[2] == len(log)
    assert scan_records(bytes(damaged), True, 0)[2] == 0


def test_scan_records_given_empty_payloads_when_scanned_should_accept_them() -> None:
    log = bytes(build_batch([1, 2], [b"", b""], [b"", b"k"], [ORIGIN_US] * 2, base_timestamp=STAMPED_US))

    ends, _, valid = scan_records(log, True, 0)

    assert valid == len(log) and len(ends) == 2


def _check_scan_shape(data: bytes) -> None:
    for verify in (True, False):
        ends, stamps, valid = scan_records(data, verify, None)
        assert len(ends) == len(stamps) and 0 <= valid <= len(data)
        assert (len(ends) == 0) == (valid == 0)
        if len(ends):
            assert int(ends[-1]) == valid and bool((np.diff(ends) >= FRAME_HEADER_SIZE).all())


@_FIXTURE_OK
@given(st.binary(max_size=1500), st.integers(min_value=1, max_value=4), st.booleans())
def test_scan_records_given_garbage_when_scanned_should_never_raise(
    kernel: str, data: bytes, count: int, plausible: bool
) -> None:
    buf = bytearray(data)
    if plausible and len(buf) >= BATCH_HEADER_SIZE:
        # A header claiming the whole buffer (plausible when it holds `count` frame headers),
        # so that the frames behind it get parsed.
        buf[:BATCH_HEADER_SIZE] = _header(count, len(buf))
    _check_scan_shape(bytes(buf))


@_FIXTURE_OK
@given(
    st.lists(_messages, min_size=1, max_size=3),
    st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), min_size=1, max_size=6
    ),
    st.sampled_from(["set", "truncate", "extend"]),
)
def test_scan_records_given_mutated_log_when_scanned_should_never_raise_and_stop_at_a_boundary(
    kernel: str,
    batches: list[list[tuple[int, bytes, bytes, int]]],
    edits: list[tuple[int, int]],
    how: str,
) -> None:
    log, bounds, _ = _stamped_log(batches, 0)
    buf = bytearray(log)
    if how == "set":
        for at, value in edits:
            buf[at % len(buf)] = value
    elif how == "truncate":
        del buf[edits[0][0] % len(buf) :]
    else:
        buf += bytes(value for _, value in edits)

    _check_scan_shape(bytes(buf))
    assert scan_records(bytes(buf), True, 0)[2] in bounds


def test_scan_records_given_a_large_readonly_log_when_scanned_should_not_copy_it(kernel: str) -> None:
    record = build_batch([1, 2], [b"p" * 100_000, b"q" * 150_000], [b"", b""], [ORIGIN_US] * 2)
    log = b"".join(_restamped(record, 2 * r, STAMPED_US + r) for r in range(24))  # 6 MB
    for view in (log, memoryview(log)):
        tracemalloc.start()
        try:
            _, _, valid = scan_records(view, True, 0)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

        assert valid == len(log)
        assert peak < len(record)  # not even one record copied


# --- verify_records ---------------------------------------------------------------------------


def test_verify_records_given_log_matching_its_index_when_verified_should_give_minus_one(kernel: str) -> None:
    log, _, frame_ends = _log([2, 3, 1], 10)

    assert verify_records(log, frame_ends, 10) == -1
    assert verify_records(memoryview(log), frame_ends, 10, _expected([2, 3, 1])) == -1
    assert verify_records(b"", np.empty(0, dtype=np.int64), 10) == -1


def _damage(log: bytes, at: int) -> bytes:
    damaged = bytearray(log)
    damaged[at] ^= 0x40
    return bytes(damaged)


def test_verify_records_given_each_kind_of_disagreement_when_verified_should_name_its_first_message(
    kernel: str,
) -> None:
    # Records of 2, 3 and 1 messages: first messages 0, 2 and 5.
    log, positions, ends = _log([2, 3, 1], 10)
    stamps = _expected([2, 3, 1])
    p1, p2 = int(positions[1]), int(positions[2])
    shifted = ends.copy()
    shifted[3] += 1
    late = stamps.copy()
    late[5] += 1

    assert verify_records(log, shifted, 10) == 2  # an end inside record 1 differs
    assert verify_records(log, ends, 10, late) == 5  # a timestamp of record 2 differs
    assert verify_records(_damage(log, p1 + 300), ends, 10) == 2  # record 1 fails its checksums
    assert verify_records(_damage(log, 5), ends, 10) == 0
    assert verify_records(log[: p2 + 100], ends, 10) == 5  # record 2 incomplete
    assert verify_records(log[:p2], ends, 10) == 5  # the index says more than the data holds
    assert verify_records(log, ends[:5], 10) == 5  # the data holds a record the index lacks
    assert verify_records(log, ends[:4], 10) == 2  # the index stops inside record 1
    assert verify_records(log, ends, 11) == 0  # the log does not start at the offset given
    assert verify_records(log, np.empty(0, dtype=np.int64), 10) == 0
    assert verify_records(log + b"\x00", ends, 10) == 6  # trailing bytes after the last record


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=6), st.data())
def test_verify_records_given_one_wrong_end_when_verified_should_give_the_first_message_of_its_record(
    sizes: list[int], data: st.DataObject
) -> None:
    log, _, ends = _log(sizes, 0)
    m = data.draw(st.integers(min_value=0, max_value=len(ends) - 1))
    wrong = ends.copy()
    wrong[m] += data.draw(st.sampled_from([-1, 1, 48]))
    firsts = np.cumsum(sizes) - np.array(sizes)

    assert verify_records(log, wrong, 0) == int(firsts[firsts <= m][-1])


# --- slice_record_head and poll_slice (4.5) ------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.lists(_messages, min_size=1, max_size=3), st.data())
def test_slice_record_head_given_a_cut_of_a_record_when_rewritten_should_be_what_poll_slice_sends(
    batches: list[list[tuple[int, bytes, bytes, int]]], data: st.DataObject
) -> None:
    log, bounds, ends = _stamped_log(batches, 50)
    b = data.draw(st.integers(min_value=0, max_value=len(batches) - 1))
    first = sum(len(m) for m in batches[:b])
    lo_msg = data.draw(st.integers(min_value=first, max_value=first + len(batches[b]) - 1))
    hi_msg = data.draw(st.integers(min_value=lo_msg, max_value=first + len(batches[b]) - 1))
    lo = bounds[b] + BATCH_HEADER_SIZE if lo_msg == first else int(ends[lo_msg - 1])
    hi = int(ends[hi_msg])

    head = slice_record_head(
        log[bounds[b] : bounds[b] + BATCH_HEADER_SIZE], log[lo:hi], ends[lo_msg : hi_msg + 1] - lo
    )
    got = poll_slice(log, np.array(bounds[:-1]), ends, 50, 50 + lo_msg, 50 + hi_msg + 1)

    sliced = head + log[lo:hi]
    # A cut is [new header, stored range]; a whole record one stored range, whose header a
    # rewrite for all its frames must leave as it is.
    assert _assemble(log, got.pieces) == sliced
    # Independently of the module: recomputing every checksum from scratch changes nothing.
    assert bytes(_rechecksum(bytearray(sliced))) == sliced
    record = parse_batch(sliced, dense_offsets=False)
    assert record.offsets().tolist() == list(range(50 + lo_msg, 50 + hi_msg + 1))
    assert (record.base_offset, record.base_timestamp, record.partition_id) == (
        50 + first,
        STAMPED_US + 7 * b,
        4,
    )
    assert record.origin_timestamp == struct.unpack_from("<Q", log, bounds[b] + 24)[0]


def test_slice_record_head_given_ends_not_filling_the_frames_when_rewritten_should_raise() -> None:
    log, _, ends = _log([3], 0)
    head, frames = log[:BATCH_HEADER_SIZE], log[BATCH_HEADER_SIZE:]
    rel = ends - BATCH_HEADER_SIZE

    for bad_head, bad_ends in ((head, rel[:-1]), (head, np.empty(0, dtype=np.int64)), (head[:-1], rel)):
        with pytest.raises(ValueError):
            slice_record_head(bad_head, frames, bad_ends)
    with pytest.raises(ValueError):
        slice_record_head(head, frames, np.array([10, int(rel[-1])]))  # a 10-byte frame
    assert slice_record_head(head, frames, rel) == head  # the whole record: the same header


# --- records_to_v08 ---------------------------------------------------------------------------


@_FIXTURE_OK
@given(st.lists(_messages, min_size=1, max_size=4), st.integers(min_value=0, max_value=1 << 40))
def test_records_to_v08_given_stored_records_when_converted_should_give_checksummed_08_messages(
    kernel: str, batches: list[list[tuple[int, bytes, bytes, int]]], first_offset: int
) -> None:
    log, _, _ = _stamped_log(batches, first_offset)

    stored, ends = records_to_v08(log)

    want, want_ends = v09_to_v08(parse_records(log), checksums=True)
    assert bytes(stored) == bytes(want) and ends.tolist() == want_ends.tolist()
    assert batch08.verify_stored(stored, ends, first_offset) == -1
    offsets = batch08.header_u64(stored, ends, batch08.OFFSET_AT)
    assert offsets.tolist() == list(range(first_offset, first_offset + len(ends)))


def test_records_to_v08_given_slices_and_empty_payloads_when_converted_should_keep_them() -> None:
    log = bytes(build_batch([1, 2, 3], [b"", b"ab", b""], [b"", b"", b"h"], [ORIGIN_US] * 3, base_offset=7))
    (record,) = parse_records(log, allow_empty_payload=True)
    rel = record.ends - BATCH_HEADER_SIZE
    frames = log[int(record.ends[0]) :]  # messages 1 and 2
    cut = slice_record_head(log[:BATCH_HEADER_SIZE], frames, rel[1:] - rel[0]) + frames

    stored, ends = records_to_v08(cut)

    assert batch08.header_u64(stored, ends, batch08.OFFSET_AT).tolist() == [8, 9]
    assert bytes(stored[64 : int(ends[0])]) == b"ab" and bytes(stored[int(ends[0]) + 64 :]) == b"h"
    assert batch08.verify_checksums(stored, ends) == -1


def test_records_to_v08_given_nothing_when_converted_should_give_empty_results() -> None:
    stored, ends = records_to_v08(b"")

    assert stored == bytearray() and isinstance(stored, bytearray)
    assert ends.dtype == np.int64 and len(ends) == 0


# --- record_from_v08 --------------------------------------------------------------------------


def _send08(messages: list[tuple[int, bytes, bytes, int]]) -> batch08.Batch:
    """A 0.8 SendMessages batch as the server parses it; the headers carry offsets and
    timestamps a client might send (the partition overwrites them)."""
    index, area = bytearray(), bytearray()
    for i, (message_id, payload, headers, origin) in enumerate(messages):
        area += struct.pack(
            "<Q16sQQQIIQ",
            0,
            message_id.to_bytes(16, "little"),
            3 * i + 1,  # offset, not 0, 1, ...
            (i * 7919) % 5,  # timestamp, not one for all
            ORIGIN_US + origin,
            len(headers),
            len(payload),
            0,
        )
        area += payload + headers
        index += struct.pack("<IIQ", 0, len(area), 0)
    return batch08.parse_send_batch(index, area, len(messages))


class _Random:
    """Deterministic random bytes that remember what was asked."""

    def __init__(self) -> None:
        self.asked: list[int] = []
        self.given = b""

    def __call__(self, n: int) -> bytes:
        self.asked.append(n)
        self.given = random.Random(n).randbytes(n)
        return self.given


def _uuid4(raw: bytes) -> int:
    block = bytearray(raw)
    block[6] = (block[6] & 0x0F) | 0x40
    block[8] = (block[8] & 0x3F) | 0x80
    return int.from_bytes(block, "little")


_messages08 = st.lists(
    st.tuples(
        st.one_of(st.just(0), st.integers(min_value=1, max_value=(1 << 128) - 1)),  # 0.8 may send 0
        st.binary(max_size=90),  # 0.8 accepts empty payloads
        st.binary(max_size=40),
        st.integers(min_value=0, max_value=1 << 20),
    ),
    min_size=1,
    max_size=12,
)


@_FIXTURE_OK
@given(_messages08, st.integers(min_value=0, max_value=1 << 40), st.booleans())
def test_record_from_v08_given_send_batch_when_converted_should_keep_every_message(
    kernel: str, messages: list[tuple[int, bytes, bytes, int]], base_offset: int, skip_c_stamp: bool
) -> None:
    parsed = _send08(messages)
    rng = _Random()

    batch_module._C_STAMP_08 = not skip_c_stamp  # the numpy branch also with C
    try:
        [record] = record_from_v08(parsed.buf, parsed.ends, rng, partition_id=6)
    finally:
        batch_module._C_STAMP_08 = True

    zeros = sum(1 for m in messages if m[0] == 0)
    assert rng.asked == ([16 * zeros] if zeros else [])
    fresh = iter(_uuid4(rng.given[16 * k : 16 * k + 16]) for k in range(zeros))
    frames = record.frames()
    ids = [int(lo) | int(hi) << 64 for lo, hi in zip(frames["id_lo"], frames["id_hi"], strict=True)]
    assert ids == [m[0] or next(fresh) for m in messages]
    assert (record.count, record.base_offset, record.base_timestamp, record.partition_id) == (
        len(messages),
        0,
        0,
        6,
    )
    assert [record.payload(i) for i in range(record.count)] == [m[1] for m in messages]
    assert [record.user_headers(i) for i in range(record.count)] == [m[2] for m in messages]
    assert record.origin_timestamps().tolist() == [ORIGIN_US + m[3] for m in messages]

    stamp_batch(record, 6, base_offset, STAMPED_US)
    again = parse_batch(bytes(record.buf), verify_checksums=True, allow_empty_payload=True)
    assert again.offsets().tolist() == list(range(base_offset, base_offset + len(messages)))


@pytest.mark.parametrize(
    "sizes",
    [
        (1, 0, 1),  # small: the C stamp where built
        (100_000, 0, 100_000),  # large, mixed sizes: gathered ids in the numpy path
        (60_000, 59_999, 60_000),  # one size (message 1 has a 1-byte header): strided
    ],
)
def test_record_from_v08_given_zero_ids_when_converted_should_give_the_ids_stamp_gives(
    sizes: tuple[int, int, int],
) -> None:
    messages = [(0, b"a" * sizes[0], b"", 0), (5, b"b" * sizes[1], b"h", 1), (0, b"c" * sizes[2], b"", 2)]
    by_stamp = _send08(messages)
    batch08.stamp(by_stamp, 0, 0, _Random())

    def convert() -> bytes:
        parsed = _send08(messages)
        [record] = record_from_v08(parsed.buf, parsed.ends, _Random(), partition_id=1)
        return bytes(record.buf)

    native, reference = _both_kernels(convert)
    assert native == reference and isinstance(native, bytes)
    (record,) = parse_records(native, allow_empty_payload=True)
    for half, at in (("id_lo", batch08.ID_AT), ("id_hi", batch08.ID_AT + 8)):
        assert record.frames()[half].tolist() == batch08.header_u64(by_stamp.buf, by_stamp.ends, at).tolist()


def test_record_from_v08_given_origins_spread_over_u32_when_converted_should_cut_records_within_it(
    kernel: str,
) -> None:
    # 0.8 accepts any origin timestamps; a frame's delta reaches u32 us only.
    far = 1 << 33
    parsed = _send08([(1, b"a", b"", 0), (2, b"b", b"", 5), (3, b"c", b"", far), (4, b"d", b"", far + 1)])

    records = record_from_v08(parsed.buf, parsed.ends, _Random(), partition_id=0)

    assert [r.count for r in records] == [2, 2]
    base = records[0].origin_timestamp  # _send08 adds its origins to a fixed instant
    assert [r.origin_timestamp - base for r in records] == [0, far]
    assert [int(o) - base for r in records for o in r.origin_timestamps()] == [0, 5, far, far + 1]
    assert [int(o) for r in records for o in r.offsets()] == [0, 1, 2, 3]
    assert [r.payload(i) for r in records for i in range(r.count)] == [b"a", b"b", b"c", b"d"]


def test_records_to_v08_given_bytes_that_do_not_tile_when_converted_should_raise_batch_error(
    kernel: str,
) -> None:
    log = bytes(build_batch([1, 2], [b"a", b"bc"], [b"", b""], [ORIGIN_US] * 2, base_offset=3))
    for broken in (log[:-1], log + b"\0" * 10, log[:200]):
        with pytest.raises(BatchError):
            records_to_v08(broken)


# Long enough payloads that checksums take xxHash's long-input loop (over 240 bytes).
_long_messages = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=(1 << 128) - 1),
        st.binary(min_size=1, max_size=700),
        st.binary(max_size=40),
        st.integers(min_value=0, max_value=1 << 20),
    ),
    min_size=1,
    max_size=6,
)


@_FIXTURE_OK
@given(
    st.lists(st.one_of(_messages, _long_messages), min_size=1, max_size=4),
    st.integers(min_value=0, max_value=5000),
    st.booleans(),
)
def test_file_records_to_v08_given_records_in_a_file_when_converted_should_equal_records_to_v08(
    kernel: str,
    tmp_path_factory: pytest.TempPathFactory,
    batches: list[list[tuple[int, bytes, bytes, int]]],
    at: int,
    count_too_low: bool,
) -> None:
    log, _, ends = _stamped_log(batches, 11)
    path = tmp_path_factory.mktemp("f") / "log"
    path.write_bytes(os.urandom(at) + log + os.urandom(100))
    # The caller's count only sizes the room to convert in place: one too few needs a copy.
    count = len(ends) - 1 if count_too_low and len(ends) > 1 else len(ends)

    fd = os.open(path, os.O_RDONLY)
    try:
        data, got_ends, size = file_records_to_v08(fd, at, len(log), count)
    finally:
        os.close(fd)

    want, want_ends = records_to_v08(log)
    assert bytes(memoryview(data)[:size]) == bytes(want) and got_ends.tolist() == want_ends.tolist()
    assert batch08.verify_stored(bytes(want), want_ends, 11) == -1


def test_file_records_to_v08_given_a_range_not_whole_records_when_converted_should_raise(
    kernel: str, tmp_path: Path
) -> None:
    log = bytes(build_batch([1, 2], [b"a", b"bc"], [b"", b""], [ORIGIN_US] * 2, base_offset=3))
    path = tmp_path / "log"
    path.write_bytes(log + log)
    fd = os.open(path, os.O_RDONLY)
    try:
        for at, length in ((0, len(log) - 1), (1, len(log)), (0, len(log) + 10), (len(log), len(log) + 1)):
            with pytest.raises(BatchError):
                file_records_to_v08(fd, at, length, 2)
    finally:
        os.close(fd)


def test_file_records_to_v08_given_a_closed_descriptor_when_converted_should_raise_os_error(
    kernel: str, tmp_path: Path
) -> None:
    path = tmp_path / "log"
    path.write_bytes(bytes(build_batch([1], [b"a"], [b""], [ORIGIN_US], base_offset=3)))
    fd = os.open(path, os.O_RDONLY)
    os.close(fd)

    with pytest.raises(OSError):
        file_records_to_v08(fd, 0, 100, 1)


@given(_messages08, st.integers(min_value=256, max_value=400))
def test_record_in_place_given_send_batch_with_room_when_converted_should_equal_the_copying_conversion(
    messages: list[tuple[int, bytes, bytes, int]], room_bytes: int
) -> None:
    if batch_module._native is None:
        pytest.skip("C kernel tidelog._stamp not built")
    copy = _send08(messages)
    [want] = record_from_v08(copy.buf, copy.ends, _Random(), partition_id=9)
    parsed = _send08(messages)
    room = bytearray(b"\xee" * room_bytes) + bytes(parsed.buf)

    record = batch_module.record_in_place(memoryview(room), room_bytes, parsed.ends, _Random(), 9)

    assert record is not None and bytes(record.buf) == bytes(want.buf)
    assert record.ends.tolist() == want.ends.tolist() and record.starts.tolist() == want.starts.tolist()
    assert parse_batch(bytes(record.buf), allow_empty_payload=True).count == len(messages)


def test_record_in_place_given_wide_origins_or_no_room_when_converted_should_change_nothing() -> None:
    if batch_module._native is None:
        pytest.skip("C kernel tidelog._stamp not built")
    for messages, room_bytes in (
        ([(1, b"a", b"", 0), (2, b"b", b"", 1 << 33)], 300),  # spread: several records needed
        ([(1, b"a", b"", 0)], 255),  # no room for the record header
    ):
        parsed = _send08(messages)
        room = bytearray(room_bytes) + bytes(parsed.buf)
        before = bytes(room)
        assert batch_module.record_in_place(memoryview(room), room_bytes, parsed.ends, _Random(), 0) is None
        assert bytes(room) == before


@given(st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=30), st.data())
def test_unit_bounds_given_runs_of_timestamps_when_asked_for_any_message_should_give_its_run(
    runs: list[int], data: st.DataObject
) -> None:
    timestamps = np.repeat(np.arange(len(runs), dtype=np.uint64) * 3 + 10, runs)
    i = data.draw(st.integers(min_value=0, max_value=len(timestamps) - 1))

    first, end = RECORD_LOG.unit_bounds(timestamps, i)

    run = int(np.searchsorted(np.cumsum(runs), i, side="right"))
    assert (first, end) == (sum(runs[:run]), sum(runs[: run + 1]))

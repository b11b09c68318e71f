"""0.9 batches (src/tidelog/wire/v09/batch.py) against shared/protocol/iggy-0.9-vsr.md 4.1-4.7,
the vectors of 9.5 and 9.6, and the stored 0.8 format of tidelog.wire.batch."""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidelog.wire import batch as batch08
from tidelog.wire.codes import Status
from tidelog.wire.v09 import batch as batch_module
from tidelog.wire.v09.batch import (
    BATCH_HEADER_SIZE,
    FRAME_HEADER_SIZE,
    Batch09,
    BatchError,
    build_batch,
    check_user_headers,
    parse_batch,
    parse_records,
    poll_slice,
    stamp_batch,
    v08_to_v09,
    v09_to_v08,
)
from tidelog.wire.v09.codes import Status09

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "protocol" / "iggy-0.9-vsr.md"
ORIGIN_US = 1_767_225_600_000_000  # section 9, "message origin timestamps"
STAMPED_US = 1_767_225_600_001_234  # section 9, "server base_timestamp in the poll reply"
SEND_METADATA_BYTES = 4 + 31  # metadata_length u32 + the 31 bytes it counts (vector 9.5)
POLL_HEAD_BYTES = 16  # partition_id u32, current_offset u64, count u32 (4.5)


def _hexdump(after: str) -> bytes:
    """The first `0000: ..` body dump following the heading `after` in the reference."""
    doc = REFERENCE.read_text()
    at = doc.index(after)
    lo = doc.index("```text", at) + len("```text")
    hi = doc.index("```", lo)
    return bytes.fromhex("".join(line.split(":", 1)[1] for line in doc[lo:hi].strip().splitlines()))


@pytest.fixture(scope="module")
def send_body() -> bytes:
    if not REFERENCE.exists():
        pytest.skip("shared/protocol/iggy-0.9-vsr.md not present")
    return _hexdump("### 9.5 SendMessages")


@pytest.fixture(scope="module")
def poll_reply_body() -> bytes:
    if not REFERENCE.exists():
        pytest.skip("shared/protocol/iggy-0.9-vsr.md not present")
    return _hexdump("#### Reply to 9.6")


@pytest.fixture(params=["native", "reference"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test on both frame-checksum paths (the C kernel where built)."""
    if request.param == "native":
        if batch_module._native is None:
            pytest.skip("C kernel tidelog._stamp not built")
    else:
        monkeypatch.setattr(batch_module, "_native", None)
    return str(request.param)


_KERNEL = batch_module._native  # as imported: the C kernel where built


def _both_kernels(convert: Callable[[], object]) -> list[object]:
    """What `convert()` returns (or the BatchError code it raises) on the C kernel, then on
    the reference path."""
    results: list[object] = []
    try:
        for native in (_KERNEL, None):
            batch_module._native = native
            try:
                results.append(convert())
            except BatchError as error:
                results.append(("error", error.code))
    finally:
        batch_module._native = _KERNEL
    return results


def _code(buf: bytes | bytearray, expected_count: int | None = None) -> int:
    with pytest.raises(BatchError) as caught:
        parse_batch(buf, expected_count)
    return caught.value.code


def _rechecksum(buf: bytearray) -> bytearray:
    """Recompute every frame checksum and the batch checksum (as a producer would, walking
    the frames independently of the module), so a test can reach the checks after them."""
    out = bytearray(buf)
    pos, sums = BATCH_HEADER_SIZE, b""
    while pos < len(out):
        user_headers, payload = struct.unpack_from("<II", out, pos + 32)
        end = pos + FRAME_HEADER_SIZE + user_headers + payload
        struct.pack_into("<Q", out, pos, xxhash.xxh3_64_intdigest(bytes(out[pos + 8 : end])))
        sums += bytes(out[pos : pos + 8])
        pos = end
    struct.pack_into("<Q", out, 40, xxhash.xxh3_64_intdigest(bytes(out[:40]) + bytes(out[48:52]) + sums))
    return out


def _two_messages() -> bytearray:
    return build_batch([1, 2], [b"hello", b"world"], [b"", b""], [ORIGIN_US, ORIGIN_US + 3])


# --- vectors 9.5 and 9.6 ---------------------------------------------------------------


def test_parse_batch_given_vector_9_5_when_parsed_should_expose_its_fields(send_body: bytes) -> None:
    batch = parse_batch(send_body[SEND_METADATA_BYTES:], expected_count=2)

    assert (batch.count, batch.partition_id, batch.base_offset, batch.base_timestamp) == (2, 0, 0, 0)
    assert batch.origin_timestamp == ORIGIN_US
    assert batch.batch_checksum == 0x65C7B9A78E9868C6
    assert batch.frames()["checksum"].tolist() == [0xB9BFBDDB9EA55C8E, 0x7E1DC30FE8157784]
    assert batch.offsets().tolist() == [0, 1]
    assert batch.origin_timestamps().tolist() == [ORIGIN_US, ORIGIN_US + 3]
    assert [batch.payload(i) for i in range(2)] == [b"hello", b"world"]
    assert batch.starts.tolist() == [256, 309] and batch.ends.tolist() == [309, 362]


def test_build_batch_given_vector_9_5_fields_when_encoded_should_match_byte_for_byte(
    send_body: bytes,
) -> None:
    assert bytes(_two_messages()) == send_body[SEND_METADATA_BYTES:]


def test_stamp_batch_given_vector_9_5_when_stamped_should_give_the_record_of_9_6(
    send_body: bytes, poll_reply_body: bytes, kernel: str
) -> None:
    batch = parse_batch(send_body[SEND_METADATA_BYTES:], expected_count=2)

    stamp_batch(batch, partition_id=0, base_offset=0, base_timestamp_us=STAMPED_US)

    assert batch.batch_checksum == 0xD55456A0435D0F4A
    assert bytes(batch.buf) == poll_reply_body[POLL_HEAD_BYTES:]


def test_parse_records_given_vector_9_6_reply_when_parsed_should_reencode_byte_for_byte(
    poll_reply_body: bytes,
) -> None:
    partition_id, current_offset, count = struct.unpack_from("<IQI", poll_reply_body)
    records = parse_records(poll_reply_body[POLL_HEAD_BYTES:])

    assert (partition_id, current_offset, count) == (0, 1, 2)
    assert len(records) == 1 and records[0].base_timestamp == STAMPED_US
    rebuilt = build_batch(
        [1, 2], [b"hello", b"world"], [b"", b""], [ORIGIN_US, ORIGIN_US + 3], base_timestamp=STAMPED_US
    )
    assert bytes(rebuilt) == poll_reply_body[POLL_HEAD_BYTES:]


def test_parse_batch_given_readonly_bytes_when_parsed_should_give_writable_buffer(send_body: bytes) -> None:
    batch = parse_batch(send_body[SEND_METADATA_BYTES:])

    assert not batch.buf.readonly


# --- validation failures, each with its code (sections 4.1-4.3, 6) ----------------------


def test_parse_batch_given_flipped_payload_byte_when_parsed_should_fail_with_4027(kernel: str) -> None:
    buf = _two_messages()
    buf[309 + FRAME_HEADER_SIZE] ^= 0x01  # first payload byte of frame 1

    assert _code(buf) == Status.INVALID_MESSAGE_CHECKSUM == 4027


def test_parse_batch_given_flipped_id_byte_in_large_frames_when_parsed_should_fail_with_4027(
    kernel: str,
) -> None:
    # Frames of 64 bytes or more: the C kernel's path when it is built.
    buf = build_batch([7, 8, 9], [b"x" * 40] * 3, [b""] * 3, [ORIGIN_US] * 3)
    buf[BATCH_HEADER_SIZE + 2 * 88 + 8] ^= 0x80

    assert _code(buf) == 4027


def test_parse_batch_given_wrong_batch_checksum_when_parsed_should_fail_with_4039() -> None:
    buf = _two_messages()
    buf[40] ^= 0xFF

    assert _code(buf) == Status09.INVALID_BATCH_CHECKSUM == 4039


def test_parse_batch_given_stamped_header_without_new_checksum_when_parsed_should_fail_with_4039() -> None:
    buf = _two_messages()
    struct.pack_into("<Q", buf, 8, 100)  # base_offset changed, batch checksum not re-derived

    assert _code(buf) == 4039


def test_parse_batch_given_frames_not_tiling_when_parsed_should_fail_with_invalid_command() -> None:
    buf = _two_messages()
    struct.pack_into("<I", buf, 256 + 36, 6)  # frame 0 payload_length 5 -> 6: frame 1 misplaced

    assert _code(buf) == Status.INVALID_COMMAND == 3


def test_parse_batch_given_trailing_byte_when_parsed_should_fail_with_invalid_command() -> None:
    buf = _two_messages() + b"\x00"
    struct.pack_into("<Q", buf, 32, len(buf))  # batch_length agrees, frames leave a byte over

    assert _code(buf) == 3


def test_parse_batch_given_batch_length_not_the_buffer_when_parsed_should_fail_with_invalid_command() -> None:
    buf = _two_messages()
    struct.pack_into("<Q", buf, 32, len(buf) - 1)

    assert _code(buf) == 3


def test_parse_batch_given_fewer_bytes_than_a_header_when_parsed_should_fail_with_invalid_command() -> None:
    assert _code(bytes(255)) == 3
    assert _code(b"") == 3


def test_parse_batch_given_message_count_not_the_frames_when_parsed_should_fail_with_4009() -> None:
    buf = _two_messages()
    struct.pack_into("<I", buf, 48, 3)

    assert _code(buf) == Status.INVALID_MESSAGES_COUNT == 4009


def test_parse_batch_given_zero_message_count_when_parsed_should_fail_with_4009() -> None:
    buf = bytearray(BATCH_HEADER_SIZE)
    struct.pack_into("<Q", buf, 32, BATCH_HEADER_SIZE)

    assert _code(buf) == 4009


def test_parse_batch_given_messages_count_of_the_request_differs_when_parsed_should_fail_with_4009() -> None:
    assert _code(_two_messages(), expected_count=3) == 4009


def test_parse_batch_given_non_zero_header_reserved_when_parsed_should_fail_with_4101() -> None:
    for at in (52, 100, 255):
        buf = _two_messages()
        buf[at] = 1

        assert _code(buf) == Status.INVALID_RESERVED_FIELD == 4101


def test_parse_batch_given_non_zero_frame_reserved_when_parsed_should_fail_with_4101() -> None:
    buf = _two_messages()
    buf[309 + 47] = 1  # last reserved byte of frame 1

    assert _code(buf) == 4101


def test_parse_batch_given_empty_payload_when_parsed_should_fail_with_4024() -> None:
    buf = build_batch([1, 2], [b"a", b""], [b"", b"k"], [ORIGIN_US] * 2)

    assert _code(buf) == Status09.EMPTY_MESSAGE_PAYLOAD == 4024


def test_parse_batch_given_payload_over_the_limit_when_parsed_should_fail_with_4022(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The limit (1.8: 64,000,000 bytes) lowered so the test needs no 64 MB batch.
    monkeypatch.setattr(batch_module, "MAX_PAYLOAD_BYTES", 4)

    assert _code(_two_messages()) == Status.TOO_BIG_MESSAGE_PAYLOAD == 4022


def test_parse_batch_given_user_headers_over_the_limit_when_parsed_should_fail_with_4017(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batch_module, "MAX_USER_HEADERS_BYTES", 2)  # 1.8: 100,000 bytes

    assert _code(build_batch([1], [b"a"], [b"abc"], [ORIGIN_US])) == Status.TOO_BIG_USER_HEADERS == 4017


def test_parse_batch_given_offset_deltas_not_0_1_2_when_parsed_should_fail_with_invalid_command() -> None:
    buf = _two_messages()
    struct.pack_into("<I", buf, 309 + 24, 5)
    buf = _rechecksum(buf)

    assert _code(buf) == 3


def test_parse_batch_given_slice_deltas_from_non_zero_when_parsed_as_record_should_pass() -> None:
    buf = build_batch([1, 2, 3], [b"a", b"b", b"c"], [b""] * 3, [ORIGIN_US] * 3)
    for i, s in enumerate((256, 305, 354)):
        struct.pack_into("<I", buf, s + 24, 4 + i)
    buf = _rechecksum(buf)

    assert _code(buf) == 3
    assert parse_batch(buf, dense_offsets=False).offsets().tolist() == [4, 5, 6]


def test_parse_batch_given_origin_plus_delta_past_u64_when_parsed_should_fail_with_4038() -> None:
    buf = _two_messages()
    struct.pack_into("<Q", buf, 24, (1 << 64) - 2)  # + timestamp_delta 3 overflows
    buf = _rechecksum(buf)

    assert _code(buf) == Status09.INVALID_MESSAGE_TIMESTAMP_DELTA == 4038


def test_build_batch_given_origins_spread_over_u32_when_built_should_fail_with_4038() -> None:
    with pytest.raises(BatchError) as caught:
        build_batch([1, 2], [b"a", b"b"], [b"", b""], [0, 1 << 32])

    assert caught.value.code == 4038


def test_parse_batch_given_every_single_byte_flip_when_parsed_should_fail_with_a_code(kernel: str) -> None:
    # Every byte of a batch is either checked or hashed, so no flip may go unnoticed.
    original = build_batch(
        [1, 2, 3],
        [b"p" * 20, b"q", b"r" * 30],
        [b"h", b"", b"hh"],
        [ORIGIN_US + 9, ORIGIN_US + 1, ORIGIN_US + 5],
    )
    for at in range(len(original)):
        buf = bytearray(original)
        buf[at] ^= 0x10
        with pytest.raises(BatchError):
            parse_batch(buf)


def test_parse_batch_given_same_corruption_on_both_kernels_when_parsed_should_give_same_codes() -> None:
    if _KERNEL is None:
        pytest.skip("C kernel tidelog._stamp not built")
    original = build_batch(list(range(1, 9)), [bytes([i]) * (16 + i) for i in range(8)], [b""] * 8, [5] * 8)
    rng = random.Random(9)
    for _ in range(200):
        buf = bytearray(original)
        buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        mutated = bytes(buf)

        def parse(data: bytes = mutated) -> int:
            parse_batch(data)
            return 0

        native, reference = _both_kernels(parse)
        assert native == reference != 0


# --- user headers (4.4) -------------------------------------------------------------------


def _tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("<BI", kind, len(value)) + value


def test_check_user_headers_given_pairs_including_unknown_kinds_when_checked_should_pass() -> None:
    headers = _tlv(2, b"key") + _tlv(11, b"\x01\x00\x00\x00") + _tlv(2, b"k2") + _tlv(200, b"opaque")
    batch = parse_batch(build_batch([1, 2], [b"a", b"b"], [headers, b""], [ORIGIN_US] * 2))

    check_user_headers(batch)

    assert batch.user_headers(0) == headers and batch.user_headers(1) == b""


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        (_tlv(0, b"k") + _tlv(2, b"v"), 4040),  # kind 0
        (_tlv(2, b"k") + _tlv(0, b"v"), 4040),
        (_tlv(2, b"k"), 3),  # a key without its value
        (_tlv(2, b"") + _tlv(2, b"v"), 3),  # length 0
        (_tlv(2, b"k" * 256) + _tlv(2, b"v"), 3),  # length 256
        (_tlv(2, b"k") + _tlv(2, b"v")[:-1], 3),  # runs past the block
        (_tlv(2, b"k") + _tlv(2, b"v") + b"\x02", 3),  # trailing byte
    ],
)
def test_check_user_headers_given_malformed_block_when_checked_should_fail_with_its_code(
    headers: bytes, code: int
) -> None:
    batch = parse_batch(build_batch([1], [b"a"], [headers], [ORIGIN_US]))

    with pytest.raises(BatchError) as caught:
        check_user_headers(batch)

    assert caught.value.code == code


# --- properties ---------------------------------------------------------------------------

_messages = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=(1 << 128) - 1),  # id (the SDK never sends 0)
        st.binary(min_size=1, max_size=90),  # payload
        st.binary(max_size=40),  # user headers (opaque here; 4.4 is not parsed)
        st.integers(min_value=0, max_value=1 << 20),  # origin timestamp offset
    ),
    min_size=1,
    max_size=12,
)


def _build(messages: list[tuple[int, bytes, bytes, int]], **kwargs: int) -> bytearray:
    ids, payloads, headers, origins = (list(column) for column in zip(*messages, strict=True))
    return build_batch(ids, payloads, headers, [ORIGIN_US + o for o in origins], **kwargs)


@settings(max_examples=150, deadline=None)
@given(_messages, st.integers(min_value=0, max_value=1 << 40), st.integers(min_value=0, max_value=1 << 60))
def test_parse_batch_given_built_batch_when_stamped_and_parsed_should_round_trip(
    messages: list[tuple[int, bytes, bytes, int]], base_offset: int, stamp_us: int
) -> None:
    buf = _build(messages)
    batch = parse_batch(buf, expected_count=len(messages))

    stamp_batch(batch, partition_id=3, base_offset=base_offset, base_timestamp_us=stamp_us)
    again = parse_batch(bytes(batch.buf))

    assert bytes(again.buf) == bytes(
        _build(messages, partition_id=3, base_offset=base_offset, base_timestamp=stamp_us)
    )
    assert again.offsets().tolist() == list(range(base_offset, base_offset + len(messages)))
    assert [again.payload(i) for i in range(again.count)] == [m[1] for m in messages]
    assert [again.user_headers(i) for i in range(again.count)] == [m[2] for m in messages]
    assert again.origin_timestamps().tolist() == [ORIGIN_US + m[3] for m in messages]
    ids = again.frames()
    assert [int(lo) | int(hi) << 64 for lo, hi in zip(ids["id_lo"], ids["id_hi"], strict=True)] == [
        m[0] for m in messages
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _messages,
    st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), min_size=1, max_size=4
    ),
    st.sampled_from(["flip", "truncate", "extend"]),
)
def test_parse_batch_given_mutated_batch_when_parsed_should_give_a_code_never_another_exception(
    messages: list[tuple[int, bytes, bytes, int]], edits: list[tuple[int, int]], how: str
) -> None:
    buf = _build(messages)
    original = bytes(buf)
    if how == "flip":
        for at, value in edits:
            buf[at % len(buf)] = value
    elif how == "truncate":
        del buf[edits[0][0] % len(buf) :]
    else:
        buf += bytes(value for _, value in edits)
    try:
        parse_batch(buf)
    except BatchError as error:
        assert error.code in {3, 4009, 4017, 4022, 4024, 4027, 4038, 4039, 4101}
    else:
        assert bytes(buf) == original  # only a no-op edit may pass


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=700))
def test_parse_batch_given_random_bytes_when_parsed_should_give_a_code_never_another_exception(
    data: bytes,
) -> None:
    buf = bytearray(data)
    if len(buf) >= BATCH_HEADER_SIZE:
        struct.pack_into("<Q", buf, 32, len(buf))  # get past the first check now and then
    with pytest.raises(BatchError):
        parse_batch(buf)


# --- conversion to and from the stored 0.8 format ----------------------------------------


def _stored_08(
    batches: list[list[tuple[int, bytes, bytes, int]]], first_offset: int
) -> tuple[bytes, np.ndarray]:
    """Stored 0.8 messages as tidelog writes them: each batch parsed and stamped by
    tidelog.wire.batch (one broker timestamp per batch, consecutive offsets)."""
    area_all = bytearray()
    ends_all: list[np.ndarray] = []
    offset = first_offset
    for b, messages in enumerate(batches):
        index, area = bytearray(), bytearray()
        for message_id, payload, headers, origin in messages:
            area += struct.pack(
                "<Q16sQQQIIQ",
                0,
                message_id.to_bytes(16, "little"),
                0,
                0,
                ORIGIN_US + origin,
                len(headers),
                len(payload),
                0,
            )
            area += payload + headers
            index += struct.pack("<IIQ", 0, len(area), 0)
        parsed = batch08.parse_send_batch(index, area, len(messages))
        batch08.stamp(parsed, offset, STAMPED_US + b, os.urandom)
        ends_all.append(parsed.ends + len(area_all))
        area_all += parsed.buf
        offset += len(messages)
    return bytes(area_all), np.concatenate(ends_all)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_messages, min_size=1, max_size=4), st.integers(min_value=0, max_value=1 << 40))
def test_v08_to_v09_given_stored_batches_when_converted_back_should_give_identical_bytes(
    kernel: str, batches: list[list[tuple[int, bytes, bytes, int]]], first_offset: int
) -> None:
    stored, ends = _stored_08(batches, first_offset)

    records = v08_to_v09(stored, ends, partition_id=7)
    parsed = parse_records(records)
    back, back_ends = v09_to_v08(parsed)

    assert len(parsed) == len(batches)  # one record per stored batch (timestamps differ)
    assert [r.count for r in parsed] == [len(b) for b in batches]
    assert all(r.partition_id == 7 for r in parsed)
    assert bytes(back) == stored
    assert back_ends.tolist() == ends.tolist()
    assert batch08.verify_stored(back, back_ends, first_offset) == -1


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_messages, min_size=1, max_size=3), st.integers(min_value=0, max_value=1 << 40))
def test_v09_to_v08_given_stamped_batches_when_converted_back_should_give_identical_bytes(
    kernel: str, batches: list[list[tuple[int, bytes, bytes, int]]], first_offset: int
) -> None:
    log = bytearray()
    offset = first_offset
    for b, messages in enumerate(batches):
        log += _build(messages, partition_id=2, base_offset=offset, base_timestamp=STAMPED_US + b)
        offset += len(messages)

    stored, ends = v09_to_v08(parse_records(log))
    again = v08_to_v09(stored, ends, partition_id=2)

    assert bytes(again) == bytes(log)


def test_v08_to_v09_given_explicit_batch_starts_when_converted_should_split_there() -> None:
    stored, ends = _stored_08([[(1, b"a", b"", 0), (2, b"b", b"", 0), (3, b"c", b"", 0)]], 10)

    records = parse_records(v08_to_v09(stored, ends, 0, batch_starts=np.array([2])))

    assert [(r.base_offset, r.count) for r in records] == [(10, 2), (12, 1)]


def test_v08_to_v09_given_origins_spread_over_u32_when_converted_should_fail_with_4038() -> None:
    stored, ends = _stored_08([[(1, b"a", b"", 0), (2, b"b", b"", 1 << 33)]], 0)

    with pytest.raises(BatchError) as caught:
        v08_to_v09(stored, ends, 0)

    assert caught.value.code == 4038


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600), start=st.integers(min_value=0, max_value=300))
def test_walk_frames_given_any_bytes_when_walked_in_c_should_equal_the_struct_walk(
    data: bytes, start: int
) -> None:
    if _KERNEL is None:
        pytest.skip("C kernel tidelog._stamp not built")
    start = min(start, len(data))

    def walk() -> tuple[list[int], int]:
        starts, stopped = batch_module._walk_frames(memoryview(data), start, len(data))
        return starts.tolist(), stopped

    native, reference = _both_kernels(walk)
    assert native == reference


_id_or_zero = st.one_of(st.just(0), st.integers(min_value=1, max_value=(1 << 128) - 1))
_same_or_new = st.lists(
    st.tuples(
        _id_or_zero,
        st.binary(min_size=1, max_size=90),
        st.binary(max_size=40),
        st.integers(min_value=0, max_value=1 << 34),  # spreads past u32 now and then
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_same_or_new, min_size=1, max_size=4), st.integers(min_value=0, max_value=1 << 40), st.data())
def test_v08_to_v09_given_any_stored_messages_when_converted_in_c_should_equal_the_reference(
    batches: list[list[tuple[int, bytes, bytes, int]]], first_offset: int, data: st.DataObject
) -> None:
    if _KERNEL is None:
        pytest.skip("C kernel tidelog._stamp not built")
    stored, ends = _stored_08(batches, first_offset)
    if len(batches) > 1 and data.draw(st.booleans()):
        # Two stored batches sharing a broker timestamp become one record on both paths.
        buf = bytearray(stored)
        first_end = int(ends[len(batches[0]) - 1])
        second = ends[len(batches[0]) : len(batches[0]) + len(batches[1])]
        ts = buf[32:40]
        for start in [first_end, *second[:-1].tolist()]:
            buf[start + 32 : start + 40] = ts
        stored = bytes(buf)
    native, reference = _both_kernels(lambda: bytes(v08_to_v09(stored, ends, partition_id=3)))
    assert native == reference


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_same_or_new, min_size=1, max_size=3), st.integers(min_value=0, max_value=1 << 40))
def test_v09_to_v08_given_any_records_when_converted_in_c_should_equal_the_reference(
    batches: list[list[tuple[int, bytes, bytes, int]]], first_offset: int
) -> None:
    if _KERNEL is None:
        pytest.skip("C kernel tidelog._stamp not built")
    log = bytearray()
    offset = first_offset
    for b, messages in enumerate(batches):
        messages = [(i, p, h, o % (1 << 31)) for i, p, h, o in messages]  # one record's spread fits
        log += _build(messages, partition_id=2, base_offset=offset, base_timestamp=STAMPED_US + b)
        offset += len(messages)

    def convert() -> tuple[bytes, list[int]]:
        stored, ends = v09_to_v08(parse_records(log))
        return bytes(stored), ends.tolist()

    native, reference = _both_kernels(convert)
    assert native == reference


def test_v09_to_v08_given_no_checksums_when_converted_should_leave_them_0_on_both_paths() -> None:
    log = _build([(7, b"abc", b"", 0), (8, b"de", b"", 3)], base_offset=5, base_timestamp=STAMPED_US)

    def convert() -> tuple[bytes, bytes]:
        parsed = parse_records(log)
        return bytes(v09_to_v08(parsed, checksums=False)[0]), bytes(v09_to_v08(parsed)[0])

    results = _both_kernels(convert)
    assert results[0] == results[1]
    bare, full = results[-1]  # type: ignore[misc]
    ends = [64 + 3, 64 + 3 + 64 + 2]
    assert [bare[s : s + 8] for s in (0, ends[0])] == [bytes(8)] * 2
    # Everything but the checksums agrees with the full conversion, whose checksums are set.
    assert [bare[s + 8 : e] for s, e in ((0, ends[0]), (ends[0], ends[1]))] == [
        full[s + 8 : e] for s, e in ((0, ends[0]), (ends[0], ends[1]))
    ]
    assert batch08.verify_checksums(full, np.array(ends)) == -1


def test_v09_to_v08_given_zero_ids_when_converted_in_c_should_keep_them_as_the_reference_does() -> None:
    if _KERNEL is None:
        pytest.skip("C kernel tidelog._stamp not built")
    log = _build([(0, b"x", b"", 0), (5, b"y", b"", 1)], base_offset=3, base_timestamp=STAMPED_US)

    native, reference = _both_kernels(lambda: bytes(v09_to_v08(parse_records(log))[0]))

    assert native == reference
    assert native[8:24] == bytes(16)  # type: ignore[index]


def test_v08_to_v09_given_lengths_that_do_not_fill_spans_when_converted_in_c_should_raise() -> None:
    if _KERNEL is None:
        pytest.skip("C kernel tidelog._stamp not built")
    stored, ends = _stored_08([[(1, b"abc", b"", 0), (2, b"d", b"", 0)]], 0)
    with pytest.raises(ValueError):
        v08_to_v09(stored, ends - np.array([0, 1]), 0)


# --- poll reply slices (4.5) -----------------------------------------------------------------


def _log(sizes: list[int], first_offset: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Back-to-back stamped records with `sizes` messages each; header positions, frame ends."""
    log = bytearray()
    positions: list[int] = []
    frame_ends: list[np.ndarray] = []
    offset = first_offset
    for b, n in enumerate(sizes):
        buf = build_batch(
            [offset + i + 1 for i in range(n)],
            [f"m{offset + i}".encode() * (1 + (offset + i) % 3) for i in range(n)],
            [b"h" * ((offset + i) % 2) for i in range(n)],
            [ORIGIN_US + i for i in range(n)],
            base_offset=offset,
            base_timestamp=STAMPED_US + b,
        )
        positions.append(len(log))
        frame_ends.append(parse_batch(buf).ends + len(log))
        log += buf
        offset += n
    return bytes(log), np.array(positions), np.concatenate(frame_ends)


def _assemble(log: bytes, pieces: list[bytes | tuple[int, int]]) -> bytes:
    return b"".join(p if isinstance(p, bytes) else log[p[0] : p[1]] for p in pieces)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=5),
    st.integers(min_value=0, max_value=30),
    st.integers(min_value=0, max_value=30),
)
def test_poll_slice_given_offset_range_when_assembled_should_hold_exactly_those_messages(
    sizes: list[int], start: int, length: int
) -> None:
    first_offset = 100
    log, positions, frame_ends = _log(sizes, first_offset)
    lo, hi = first_offset + start, first_offset + start + length

    got = poll_slice(log, positions, frame_ends, first_offset, lo, hi)
    records = parse_records(_assemble(log, got.pieces))  # every checksum, cut ones included

    want = list(range(max(lo, first_offset), min(hi, first_offset + sum(sizes))))
    assert got.count == len(want)
    assert [int(o) for r in records for o in r.offsets()] == want
    # Frames are the stored bytes: the 0.8 view of the slice is the slice of the 0.8 view.
    whole, whole_ends = v09_to_v08(parse_records(log))
    part, _ = v09_to_v08(records)
    if want:
        i, j = want[0] - first_offset, want[-1] - first_offset
        assert bytes(part) == bytes(whole[(int(whole_ends[i - 1]) if i else 0) : int(whole_ends[j])])


def test_poll_slice_given_whole_records_when_sliced_should_be_one_stored_range() -> None:
    log, positions, frame_ends = _log([2, 3, 1], 0)

    got = poll_slice(log, positions, frame_ends, 0, 0, 6)

    assert got.pieces == [(0, len(log))]


def test_poll_slice_given_range_inside_one_record_when_sliced_should_rewrite_only_its_header() -> None:
    log, positions, frame_ends = _log([5], 0)

    got = poll_slice(log, positions, frame_ends, 0, 1, 3)

    header, frames = got.pieces
    assert isinstance(header, bytes) and frames == (int(frame_ends[0]), int(frame_ends[2]))
    (record,) = parse_records(header + log[frames[0] : frames[1]])
    assert (record.base_offset, record.count, record.offsets().tolist()) == (0, 2, [1, 2])


def test_batch09_given_parsed_batch_when_header_written_should_write_through() -> None:
    batch: Batch09 = parse_batch(_two_messages())

    batch.header()["partition_id"] = 9

    assert struct.unpack_from("<Q", batch.buf, 0)[0] == 9 == batch.partition_id


@given(
    st.lists(st.tuples(st.integers(0, 300), st.integers(8, 200)), min_size=1, max_size=20),
    st.binary(min_size=600),
)
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_frame_digests_given_native_kernel_when_hashing_spans_should_equal_reference(
    spans: list[tuple[int, int]], data: bytes
) -> None:
    if batch_module._native is None:
        pytest.skip("C kernel not built")
    starts = np.array([s for s, _ in spans], dtype=np.int64)
    ends = np.minimum(starts + np.array([n for _, n in spans], dtype=np.int64), len(data))
    keep = ends - starts >= 8
    starts, ends = starts[keep], ends[keep]
    view = memoryview(data)
    native = batch_module._frame_digests(view, starts, ends)
    assert native.tolist() == batch_module._frame_digests_reference(view, starts, ends).tolist()
    assert native.tolist() == [
        xxhash.xxh3_64_intdigest(data[s + 8 : e]) for s, e in zip(starts, ends, strict=True)
    ]


def test_frame_digests_given_span_past_the_buffer_when_hashed_natively_should_raise() -> None:
    if batch_module._native is None:
        pytest.skip("C kernel not built")
    with pytest.raises(ValueError):
        batch_module._frame_digests(memoryview(b"x" * 64), np.array([0]), np.array([65]))

"""wire/batch.py: whole-batch validation, stamping, stored index entries and scans."""

from __future__ import annotations

import contextlib
import os
import struct
from typing import Any

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from tidelog.wire import batch as batch_module
from tidelog.wire.batch import (
    INDEX_DTYPE,
    INDEX_ENTRY,
    MESSAGE_HEADER,
    MESSAGE_HEADER_DTYPE,
    TIMESTAMP_AT,
    Batch,
    header_u64,
    parse_send_batch,
    scan_messages,
    stamp,
    storage_index,
    verify_checksums,
)
from tidelog.wire.codes import MAX_PAYLOAD_BYTES, MAX_USER_HEADERS_BYTES, IggyError, Status

# Section 4.1 written out independently of batch.py (the id as raw bytes), to check it against.
HEADER = struct.Struct("<Q16sQQQIIQ")


@pytest.fixture(autouse=True, params=["native", "numpy"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on both stamping paths: the C kernel and the numpy fallback."""
    if request.param == "native":
        try:
            from tidelog import _stamp
        except ImportError:
            pytest.skip("C kernel tidelog._stamp not built")
        monkeypatch.setattr(batch_module, "_native", _stamp)
    else:
        monkeypatch.setattr(batch_module, "_native", None)
    return str(request.param)


def encode(
    payloads: list[bytes],
    ids: list[int] | None = None,
    user_headers: list[bytes] | None = None,
    origin_us: int = 1_700_000_000_000_000,
) -> tuple[bytes, bytearray]:
    """Client-side SendMessages index table and messages area (protocol 3.9, 4.1)."""
    index = bytearray()
    area = bytearray()
    for i, payload in enumerate(payloads):
        message_id = ids[i] if ids else 0
        headers = user_headers[i] if user_headers else b""
        area += HEADER.pack(
            0, message_id.to_bytes(16, "little"), 0, 0, origin_us, len(headers), len(payload), 0
        )
        area += payload + headers
        index += struct.pack("<IIQ", 0, len(area), 0)
    return bytes(index), area


def fields(batch: Batch, i: int) -> tuple[Any, ...]:
    start = int(batch.ends[i - 1]) if i else 0
    return HEADER.unpack_from(batch.buf, start)


def fixed_random(n: int) -> bytes:
    return bytes(range(n % 256)) * (n // 256) + bytes(range(n % 256))


def test_dtypes_given_wire_layout_when_checked_should_match_section_4_1() -> None:
    assert MESSAGE_HEADER_DTYPE.itemsize == 64 and INDEX_DTYPE.itemsize == 16
    assert MESSAGE_HEADER_DTYPE.fields is not None
    assert MESSAGE_HEADER_DTYPE.fields["payload_length"][1] == 52
    assert MESSAGE_HEADER_DTYPE.fields["reserved"][1] == 56
    # The structs come from the same field tables as the dtypes.
    assert MESSAGE_HEADER.format == "<QQQQQQIIQ" and INDEX_ENTRY.format == "<IIQ"
    assert MESSAGE_HEADER.size == HEADER.size


def test_parse_given_valid_batch_when_parsed_should_expose_ends_and_size() -> None:
    index, area = encode([b"hello", b"world!!", b""])
    batch = parse_send_batch(memoryview(index), memoryview(area), 3)
    assert batch.count == 3
    assert batch.ends.tolist() == [69, 140, 204]
    assert batch.size_bytes == len(area) == 204
    assert batch.starts().tolist() == [0, 69, 140]


def test_parse_given_readonly_messages_when_parsed_should_give_writable_buffer() -> None:
    index, area = encode([b"abc"])
    batch = parse_send_batch(index, bytes(area), 1)
    assert not batch.buf.readonly
    assert bytes(batch.buf) == bytes(area)


def test_parse_given_zero_count_when_parsed_should_fail_with_invalid_messages_count() -> None:
    with pytest.raises(IggyError) as e:
        parse_send_batch(b"", b"", 0)
    assert e.value.status == Status.INVALID_MESSAGES_COUNT


def test_parse_given_index_size_not_matching_count_when_parsed_should_fail() -> None:
    index, area = encode([b"a", b"b"])
    with pytest.raises(IggyError) as e:
        parse_send_batch(index, area, 3)
    assert e.value.status == Status.INVALID_INDEXES_BYTE_SIZE


def _with_index_field(index: bytes, i: int, fmt: str, at: int, value: int) -> bytes:
    out = bytearray(index)
    struct.pack_into(fmt, out, i * 16 + at, value)
    return bytes(out)


def test_parse_given_non_zero_index_offset_when_parsed_should_fail_with_4031() -> None:
    index, area = encode([b"a", b"b"])
    with pytest.raises(IggyError) as e:
        parse_send_batch(_with_index_field(index, 1, "<I", 0, 7), area, 2)
    assert e.value.status == Status.NON_ZERO_OFFSET == 4031


def test_parse_given_non_zero_index_timestamp_when_parsed_should_fail_with_4032() -> None:
    index, area = encode([b"a", b"b"])
    with pytest.raises(IggyError) as e:
        parse_send_batch(_with_index_field(index, 0, "<Q", 8, 1), area, 2)
    assert e.value.status == Status.NON_ZERO_TIMESTAMP == 4032


def test_parse_given_decreasing_positions_when_parsed_should_fail_with_missing_index() -> None:
    index, area = encode([b"aaaa", b"bb", b"c"])
    bad = _with_index_field(index, 1, "<I", 4, 60)
    with pytest.raises(IggyError) as e:
        parse_send_batch(bad, area, 3)
    assert e.value.status == Status.MISSING_INDEX


def test_parse_given_positions_not_matching_header_sizes_when_parsed_should_fail_with_4033() -> None:
    index, area = encode([b"aaaa", b"bb"])
    # Move the boundary by one byte: both spans stay >= 64 but disagree with the headers.
    bad = _with_index_field(index, 0, "<I", 4, 64 + 4 + 1)
    with pytest.raises(IggyError) as e:
        parse_send_batch(bad, area, 2)
    assert e.value.status == Status.MISSING_INDEX == 4033


def test_parse_given_trailing_bytes_in_area_when_parsed_should_fail_with_4036() -> None:
    index, area = encode([b"aaaa", b"bb"])
    with pytest.raises(IggyError) as e:
        parse_send_batch(index, area + b"xyz", 2)
    assert e.value.status == Status.INVALID_MESSAGES_SIZE == 4036


def test_parse_given_last_position_past_area_when_parsed_should_fail_with_4036() -> None:
    index, area = encode([b"aaaa", b"bb"])
    with pytest.raises(IggyError) as e:
        parse_send_batch(index, area[:-1], 2)
    assert e.value.status == Status.INVALID_MESSAGES_SIZE


def _with_header_field(area: bytearray, start: int, fmt: str, at: int, value: int) -> bytearray:
    out = bytearray(area)
    struct.pack_into(fmt, out, start + at, value)
    return out


def test_parse_given_payload_over_limit_when_parsed_should_fail_with_4022() -> None:
    size = 64 + MAX_PAYLOAD_BYTES + 1
    area = bytearray(size)  # zeros: a consistent message with an oversized payload
    struct.pack_into("<I", area, 52, MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(IggyError) as e:
        parse_send_batch(struct.pack("<IIQ", 0, size, 0), area, 1)
    assert e.value.status == Status.TOO_BIG_MESSAGE_PAYLOAD == 4022


def test_parse_given_user_headers_over_limit_when_parsed_should_fail_with_4017() -> None:
    index, area = encode([b"x", b"y"], user_headers=[b"h" * (MAX_USER_HEADERS_BYTES + 1), b""])
    with pytest.raises(IggyError) as e:
        parse_send_batch(index, area, 2)
    assert e.value.status == Status.TOO_BIG_USER_HEADERS == 4017


def test_parse_given_user_headers_at_limit_when_parsed_should_accept() -> None:
    index, area = encode([b"x"], user_headers=[b"h" * MAX_USER_HEADERS_BYTES])
    assert parse_send_batch(index, area, 1).size_bytes == 64 + 1 + MAX_USER_HEADERS_BYTES


def test_parse_given_non_zero_reserved_when_parsed_should_fail_with_4101() -> None:
    index, area = encode([b"x", b"y"])
    bad = _with_header_field(area, 65, "<Q", 56, 1)
    with pytest.raises(IggyError) as e:
        parse_send_batch(index, bad, 2)
    assert e.value.status == Status.INVALID_RESERVED_FIELD == 4101


def test_parse_given_user_headers_when_parsed_should_count_them_in_message_size() -> None:
    index, area = encode([b"pay", b"load"], user_headers=[b"\x02" + b"h" * 9, b""])
    batch = parse_send_batch(index, area, 2)
    assert batch.ends.tolist() == [64 + 3 + 10, 64 + 3 + 10 + 64 + 4]


def test_parse_given_valid_batch_when_parsed_should_give_writable_int64_ends() -> None:
    index, area = encode([b"a", b"bb"])
    ends = parse_send_batch(index, area, 2).ends
    assert ends.dtype == np.int64 and ends.flags.writeable
    ends[0] = 1  # callers may reuse the array


# Faults as "kind@message"; each batch has three messages and limits of 8 payload and 8 user
# header bytes (patched), so that a limit fault is a small, consistent, oversized message.
PRECEDENCE_LIMIT_BYTES = 8


def _faulty_batch(faults: list[str]) -> tuple[bytes, bytearray]:
    where: dict[str, int] = {}
    for fault in faults:
        kind, _, at = fault.partition("@")
        where[kind] = int(at) if at else -1
    over = PRECEDENCE_LIMIT_BYTES + 1
    payloads = [b"p" * (over if where.get("payload") == i else 2) for i in range(3)]
    headers = [b"h" * (over if where.get("user_headers") == i else 0) for i in range(3)]
    index_bytes, area = encode(payloads, user_headers=headers)
    index = bytearray(index_bytes)
    ends = [struct.unpack_from("<I", index, 16 * i + 4)[0] for i in range(3)]
    starts = [0, *ends[:-1]]
    for kind, i in where.items():
        if kind == "offset":
            struct.pack_into("<I", index, 16 * i, 1)
        elif kind == "timestamp":
            struct.pack_into("<Q", index, 16 * i + 8, 1)
        elif kind == "span":
            struct.pack_into("<I", index, 16 * i + 4, starts[i] + 10)
        elif kind == "size":
            area += b"x"
        elif kind == "fill":
            struct.pack_into("<I", area, starts[i] + 52, len(payloads[i]) + 1)
        elif kind == "reserved":
            area[starts[i] + 60] = 1
        else:
            assert kind in ("payload", "user_headers")
    return bytes(index), area


# The later fault sits in an earlier message, so that stopping at the first faulty message
# would give the wrong answer: each kind of check runs over the whole batch before the next.
@pytest.mark.parametrize(
    ("faults", "status"),
    [
        (["offset@2", "timestamp@0"], Status.NON_ZERO_OFFSET),
        (["offset@2", "reserved@0", "span@1"], Status.NON_ZERO_OFFSET),
        (["timestamp@2", "span@0"], Status.NON_ZERO_TIMESTAMP),
        (["span@2", "size"], Status.MISSING_INDEX),
        (["size", "fill@0"], Status.INVALID_MESSAGES_SIZE),
        (["fill@2", "payload@0"], Status.MISSING_INDEX),
        (["payload@2", "user_headers@0"], Status.TOO_BIG_MESSAGE_PAYLOAD),
        (["user_headers@2", "reserved@0"], Status.TOO_BIG_USER_HEADERS),
        (["reserved@2"], Status.INVALID_RESERVED_FIELD),
        ([], None),
    ],
)
def test_parse_given_several_faults_when_parsed_should_report_the_first_kind_checked(
    faults: list[str], status: Status | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch_module, "MAX_PAYLOAD_BYTES", PRECEDENCE_LIMIT_BYTES)
    monkeypatch.setattr(batch_module, "MAX_USER_HEADERS_BYTES", PRECEDENCE_LIMIT_BYTES)
    index, area = _faulty_batch(faults)
    if status is None:
        assert parse_send_batch(index, area, 3).size_bytes == len(area)
        return
    with pytest.raises(IggyError) as e:
        parse_send_batch(index, area, 3)
    assert e.value.status == status


@pytest.mark.parametrize("uniform", [True, False], ids=["same-size", "mixed-size"])
def test_stamp_given_batch_when_stamped_should_set_offsets_timestamp_and_checksums(uniform: bool) -> None:
    payloads = [b"p" * 10 for _ in range(5)] if uniform else [b"p" * n for n in (0, 3, 10, 1, 7)]
    index, area = encode(payloads, ids=[11, 12, 13, 14, 15])
    original = bytes(area)
    batch = parse_send_batch(index, area, 5)
    stamp(batch, 100, 1_700_000_000_123_456, fixed_random)
    for i in range(5):
        checksum, raw_id, offset, timestamp, origin, uh, pl, reserved = fields(batch, i)
        assert offset == 100 + i
        assert timestamp == 1_700_000_000_123_456
        assert int.from_bytes(raw_id, "little") == 11 + i
        assert (origin, uh, pl, reserved) == (1_700_000_000_000_000, 0, len(payloads[i]), 0)
        start = int(batch.ends[i - 1]) if i else 0
        end = int(batch.ends[i])
        assert checksum == xxhash.xxh3_64_intdigest(bytes(batch.buf[start + 8 : end]))
        assert bytes(batch.buf[start + 64 : end]) == original[start + 64 : end]


@pytest.mark.parametrize("uniform", [True, False], ids=["same-size", "mixed-size"])
def test_stamp_given_zero_ids_when_stamped_should_assign_distinct_uuid_v4(uniform: bool) -> None:
    payloads = [b"x" * 4] * 4 if uniform else [b"x", b"yy", b"zzz", b"w"]
    index, area = encode(payloads, ids=[0, 77, 0, 0])
    batch = parse_send_batch(index, area, 4)
    stamp(batch, 0, 1, os.urandom)
    ids = [fields(batch, i)[1] for i in range(4)]
    assert int.from_bytes(ids[1], "little") == 77
    generated = [ids[0], ids[2], ids[3]]
    assert len(set(generated)) == 3
    for raw in generated:
        assert raw[6] >> 4 == 4  # version 4
        assert raw[8] >> 6 == 0b10  # RFC variant


def test_stamp_given_injected_randomness_when_stamped_should_use_it_for_ids() -> None:
    index, area = encode([b"a", b"b"])
    batch = parse_send_batch(index, area, 2)
    stamp(batch, 0, 1, lambda n: bytes([0xFF]) * n)
    raw = fields(batch, 0)[1]
    assert raw == bytes([0xFF] * 6 + [0x4F, 0xFF, 0xBF] + [0xFF] * 7)


def test_storage_index_given_stamped_batch_when_built_should_hold_relative_offsets_and_end_positions() -> (
    None
):
    index, area = encode([b"a", b"bb", b"ccc"])
    batch = parse_send_batch(index, area, 3)
    entries = storage_index(batch, relative_offset_base=10, position_base=1000, timestamp_us=42)
    assert entries.dtype == INDEX_DTYPE
    assert entries["offset"].tolist() == [10, 11, 12]
    assert entries["position"].tolist() == [1065, 1131, 1198]
    assert entries["timestamp"].tolist() == [42, 42, 42]
    assert entries.tobytes()[:16] == struct.pack("<IIQ", 10, 1065, 42)


def _stamped(payloads: list[bytes], base: int = 0) -> Batch:
    index, area = encode(payloads)
    batch = parse_send_batch(index, area, len(payloads))
    stamp(batch, base, 5, os.urandom)
    return batch


def test_scan_given_stored_messages_when_scanned_should_find_every_end() -> None:
    batch = _stamped([b"a", b"bb", b"ccc"], base=7)
    ends, valid = scan_messages(batch.buf, True, 7)
    assert ends.tolist() == batch.ends.tolist() and valid == batch.size_bytes


def test_scan_given_torn_tail_when_scanned_should_stop_before_the_partial_message() -> None:
    batch = _stamped([b"a", b"bb", b"ccc"])
    for cut in (batch.size_bytes - 1, int(batch.ends[1]) + 10):
        ends, valid = scan_messages(bytes(batch.buf[:cut]), False)
        assert ends.tolist() == batch.ends[:2].tolist() and valid == int(batch.ends[1])


def test_scan_given_bad_checksum_when_verifying_should_stop_there_and_not_otherwise() -> None:
    batch = _stamped([b"a", b"bb", b"ccc"])
    data = bytearray(batch.buf)
    data[int(batch.ends[1]) - 1] ^= 0xFF  # last payload byte of message 1
    ends, valid = scan_messages(data, True)
    assert ends.tolist() == [int(batch.ends[0])] and valid == int(batch.ends[0])
    ends, valid = scan_messages(data, False)
    assert valid == len(data)


def test_scan_given_zeroed_tail_when_verifying_should_not_take_zeros_for_messages() -> None:
    batch = _stamped([b"a"])
    data = bytes(batch.buf) + bytes(256)
    ends, valid = scan_messages(data, True)
    assert ends.tolist() == batch.ends.tolist() and valid == batch.size_bytes


def test_scan_given_unexpected_offset_when_scanned_should_stop() -> None:
    batch = _stamped([b"a", b"b"], base=3)
    ends, valid = scan_messages(batch.buf, True, 4)
    assert len(ends) == 0 and valid == 0


def test_verify_checksums_given_one_bad_message_when_checked_should_return_its_index() -> None:
    batch = _stamped([b"a", b"bb", b"ccc", b"dddd"])
    assert verify_checksums(batch.buf, batch.ends) == -1
    data = bytearray(batch.buf)
    data[int(batch.ends[2]) - 1] ^= 1
    assert verify_checksums(data, batch.ends) == 2


def test_header_u64_given_stamped_batch_when_gathered_should_read_timestamps() -> None:
    batch = _stamped([b"a", b"bb"])
    assert header_u64(batch.buf, batch.ends, TIMESTAMP_AT).tolist() == [5, 5]


message_st = st.tuples(
    st.binary(max_size=300), st.binary(max_size=40), st.integers(min_value=0, max_value=(1 << 128) - 1)
)


@settings(max_examples=60, deadline=None)
@given(messages=st.lists(message_st, min_size=1, max_size=20), base=st.integers(0, 1 << 40))
def test_batch_given_random_well_formed_batch_when_parsed_and_stamped_should_round_trip(
    messages: list[tuple[bytes, bytes, int]], base: int
) -> None:
    payloads = [m[0] for m in messages]
    headers = [m[1] for m in messages]
    ids = [m[2] for m in messages]
    index, area = encode(payloads, ids=ids, user_headers=headers)
    batch = parse_send_batch(index, area, len(messages))
    stamp(batch, base, 99, os.urandom)
    ends, valid = scan_messages(batch.buf, True, base)
    assert ends.tolist() == batch.ends.tolist() and valid == len(area)
    for i, (payload, user_headers, message_id) in enumerate(messages):
        _, raw_id, offset, ts, _, uh, pl, _ = fields(batch, i)
        start = int(batch.ends[i - 1]) if i else 0
        assert (offset, ts, uh, pl) == (base + i, 99, len(user_headers), len(payload))
        assert bytes(batch.buf[start + 64 : start + 64 + pl]) == payload
        assert bytes(batch.buf[start + 64 + pl : int(batch.ends[i])]) == user_headers
        if message_id:
            assert int.from_bytes(raw_id, "little") == message_id


@settings(max_examples=200, deadline=None)
@given(index=st.binary(max_size=200), area=st.binary(max_size=600), count=st.integers(-2, 14))
def test_parse_given_random_garbage_when_parsed_should_raise_only_iggy_error(
    index: bytes, area: bytes, count: int
) -> None:
    with contextlib.suppress(IggyError):
        parse_send_batch(index, area, count)


@settings(max_examples=200, deadline=None)
@given(
    positions=st.lists(st.integers(0, (1 << 32) - 1), min_size=1, max_size=8),
    area=st.binary(min_size=0, max_size=700),
)
def test_parse_given_random_positions_when_parsed_should_raise_only_iggy_error_or_be_consistent(
    positions: list[int], area: bytes
) -> None:
    index = b"".join(struct.pack("<IIQ", 0, p, 0) for p in positions)
    try:
        batch = parse_send_batch(index, area, len(positions))
    except IggyError:
        return
    ends, valid = scan_messages(batch.buf, False)
    assert ends.tolist() == batch.ends.tolist() and valid == len(area)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=800), verify=st.booleans())
def test_scan_given_random_bytes_when_scanned_should_return_a_consistent_prefix(
    data: bytes, verify: bool
) -> None:
    ends, valid = scan_messages(data, verify)
    assert 0 <= valid <= len(data)
    assert (ends.tolist()[-1] if len(ends) else 0) == valid
    assert bool(np.all(np.diff(np.concatenate([[0], ends])) >= 64))


_KERNEL = batch_module._native  # as imported: the C kernel where built


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=6),
    cut=st.integers(min_value=0, max_value=600),
    flip=st.integers(min_value=-1, max_value=600),
    verify=st.booleans(),
    expected=st.one_of(st.none(), st.integers(min_value=0, max_value=12)),
)
def test_scan_given_stored_or_damaged_messages_when_scanned_in_c_should_equal_the_python_walk(
    sizes: list[int], cut: int, flip: int, verify: bool, expected: int | None
) -> None:
    if _KERNEL is None:
        pytest.skip("C kernel tidelog._stamp not built")
    index, area = encode([bytes([i]) * n for i, n in enumerate(sizes)], ids=list(range(1, len(sizes) + 1)))
    batch = parse_send_batch(index, area, len(sizes))
    stamp(batch, 10, 99, os.urandom)
    data = bytearray(batch.buf[: max(len(batch.buf) - cut, 0)])
    if 0 <= flip < len(data):
        data[flip] ^= 0x40
    results = []
    try:
        for native in (_KERNEL, None):
            batch_module._native = native
            ends, valid = scan_messages(bytes(data), verify, expected)
            results.append((ends.tolist(), valid))
    finally:
        batch_module._native = _KERNEL
    assert results[0] == results[1]


def test_stamp_given_protocol_vector_9_6_when_stamped_should_give_the_9_7_stored_bytes() -> None:
    ts = int.from_bytes(bytes.fromhex("e0d32218240a0600"), "little")
    origin = int.from_bytes(bytes.fromhex("404d2118240a0600"), "little")
    index, area = encode([b"hello", b"world"], ids=[1, 2], origin_us=origin)
    batch = parse_send_batch(index, area, 2)
    stamp(batch, 0, ts, os.urandom)
    stored = (
        "4e9d837ce1fea827010000000000000000000000000000000000000000000000e0d32218240a0600"
        "404d2118240a060000000000050000000000000000000000"
        "68656c6c6f"
        "c6bd89fb4a2f2178020000000000000000000000000000000100000000000000e0d32218240a0600"
        "404d2118240a060000000000050000000000000000000000"
        "776f726c64"
    )
    assert bytes(batch.buf).hex() == stored

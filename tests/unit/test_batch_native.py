"""The C kernel tidelog._stamp against the numpy path of wire/batch.py, which is the reference."""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import random
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import xxhash
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.unit.test_batch import encode
from tidelog.wire import batch as batch_module
from tidelog.wire.batch import Batch, parse_send_batch, stamp, verify_checksums
from tidelog.wire.codes import MAX_PAYLOAD_BYTES, MAX_USER_HEADERS_BYTES, IggyError, Status

try:
    from tidelog import _stamp
except ImportError:
    pytest.skip(
        "C kernel tidelog._stamp not built (no C compiler or Python headers at install time)",
        allow_module_level=True,
    )


class RecordingRandom:
    """A seeded random source that remembers what it was asked for."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.requests: list[int] = []

    def __call__(self, n: int) -> bytes:
        self.requests.append(n)
        return self.rng.randbytes(n)


def stamp_with(
    native: bool,
    index: bytes,
    area: bytes,
    count: int,
    base: int,
    ts: int,
    random_bytes: Callable[[int], bytes],
) -> Batch:
    saved = batch_module._native
    batch_module._native = _stamp if native else None
    try:
        batch = parse_send_batch(index, bytearray(area), count)
        stamp(batch, base, ts, random_bytes)
    finally:
        batch_module._native = saved
    return batch


def checked(batch: Batch, native: bool) -> int:
    saved = batch_module._native
    batch_module._native = _stamp if native else None
    try:
        return verify_checksums(batch.buf, batch.ends)
    finally:
        batch_module._native = saved


def message_bounds(batch: Batch, i: int) -> tuple[int, int]:
    return (int(batch.ends[i - 1]) if i else 0), int(batch.ends[i])


message_st = st.tuples(
    st.binary(max_size=2000),
    st.binary(max_size=40),
    # Zero ids often, so that both id-present and id-missing messages mix in one batch.
    st.one_of(st.just(0), st.integers(min_value=1, max_value=(1 << 128) - 1)),
)


@settings(max_examples=150, deadline=None)
@given(
    messages=st.lists(message_st, min_size=1, max_size=30),
    base=st.integers(0, (1 << 64) - 31),
    ts=st.integers(0, (1 << 64) - 1),
    seed=st.integers(0, 1 << 32),
    corrupt=st.integers(0, 1 << 30),
)
def test_stamp_given_random_batch_when_stamped_by_both_paths_should_give_identical_bytes(
    messages: list[tuple[bytes, bytes, int]], base: int, ts: int, seed: int, corrupt: int
) -> None:
    index, area = encode([m[0] for m in messages], [m[2] for m in messages], [m[1] for m in messages])
    count = len(messages)
    from_numpy, from_c = RecordingRandom(seed), RecordingRandom(seed)
    expected = stamp_with(False, index, bytes(area), count, base, ts, from_numpy)
    got = stamp_with(True, index, bytes(area), count, base, ts, from_c)
    assert bytes(got.buf) == bytes(expected.buf)
    assert from_c.requests == from_numpy.requests
    assert checked(got, True) == checked(got, False) == -1

    # One flipped bit in the checksummed part of one message: both paths name that message.
    victim = corrupt % count
    start, end = message_bounds(got, victim)
    got.buf[8 + start + corrupt % (end - start - 8)] ^= 1 << (corrupt % 8)
    assert checked(got, True) == checked(got, False) == victim


def test_stamp_given_batch_when_stamped_natively_should_write_xxh3_of_bytes_8_to_end() -> None:
    payloads = [b"", b"x" * 7, b"y" * 240, b"z" * 5000]
    index, area = encode(payloads, ids=[1, 2, 3, 4])
    batch = stamp_with(True, index, bytes(area), 4, 10, 20, RecordingRandom(0))
    for i in range(4):
        start, end = message_bounds(batch, i)
        stored = struct.unpack_from("<Q", batch.buf, start)[0]
        assert stored == xxhash.xxh3_64_intdigest(bytes(batch.buf[start + 8 : end]))


def test_stamp_given_no_zero_ids_when_stamped_natively_should_not_ask_for_randomness() -> None:
    index, area = encode([b"a", b"b"], ids=[5, 6])
    source = RecordingRandom(0)
    stamp_with(True, index, bytes(area), 2, 0, 1, source)
    assert source.requests == []


def test_zero_ids_given_mixed_ids_when_counted_should_count_only_zero_ones() -> None:
    index, area = encode([b"a", b"b", b"c", b"d"], ids=[0, 1 << 127, 0, 1])
    batch = parse_send_batch(index, area, 4)
    assert _stamp.zero_ids(batch.buf, batch.ends) == 2


def _valid() -> tuple[bytearray, np.ndarray]:
    index, area = encode([b"aa", b"bbb"], ids=[0, 9])
    batch = parse_send_batch(index, area, 2)
    return bytearray(batch.buf), batch.ends.copy()


@pytest.mark.parametrize(
    "change",
    [
        "readonly-buf",
        "ends-decreasing",
        "ends-past-buffer",
        "span-under-header",
        "ends-int32",
        "ends-2d",
        "random-too-short",
        "random-too-long",
        "random-missing",
        "negative-base",
        "base-overflows",
        "timestamp-too-big",
    ],
)
def test_stamp_given_bad_argument_when_called_should_raise_value_error_and_write_nothing(
    change: str,
) -> None:
    buf, ends = _valid()
    before = bytes(buf)
    target: bytearray | bytes = buf
    base, ts = 0, 1
    random16: bytes | None = bytes(16)
    if change == "readonly-buf":
        target = bytes(buf)
    elif change == "ends-decreasing":
        ends = ends[::-1].copy()
    elif change == "ends-past-buffer":
        ends[-1] += 1
    elif change == "span-under-header":
        ends[0] = 63
    elif change == "ends-int32":
        ends = ends.astype(np.int32)
    elif change == "ends-2d":
        ends = ends.reshape(1, 2)
    elif change == "random-too-short":
        random16 = bytes(15)
    elif change == "random-too-long":
        random16 = bytes(32)
    elif change == "random-missing":
        random16 = None
    elif change == "negative-base":
        base = -1
    elif change == "base-overflows":
        base = (1 << 64) - 1  # the second message's offset would not fit
    elif change == "timestamp-too-big":
        ts = 1 << 64
    with pytest.raises(ValueError):
        _stamp.stamp(target, ends, base, ts, random16)
    assert bytes(buf) == before


@pytest.mark.parametrize("change", ["ends-past-buffer", "span-under-header", "ends-float"])
def test_checksums_verify_given_bad_ends_when_called_should_raise_value_error(change: str) -> None:
    buf, ends = _valid()
    bad: np.ndarray = ends
    if change == "ends-past-buffer":
        bad = ends + 1
    elif change == "span-under-header":
        bad = np.array([10, int(ends[-1])], dtype=np.int64)
    elif change == "ends-float":
        bad = ends.astype(np.float64)
    with pytest.raises(ValueError):
        _stamp.checksums_verify(buf, bad)
    with pytest.raises(ValueError):
        _stamp.zero_ids(buf, bad)


def test_stamp_given_empty_ends_when_called_should_do_nothing() -> None:
    buf = bytearray(100)
    _stamp.stamp(buf, np.empty(0, dtype=np.int64), 0, 0, None)
    assert buf == bytearray(100)
    assert _stamp.checksums_verify(buf, np.empty(0, dtype=np.int64)) == -1


def _native_flag(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TIDELOG_NO_NATIVE"}
    if env_value is not None:
        env["TIDELOG_NO_NATIVE"] = env_value
    code = "import tidelog.wire.batch as b; print(b.NATIVE, b._native is not None)"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_native_flag_given_no_native_env_when_imported_should_use_numpy_path() -> None:
    assert _native_flag("1") == "False False"
    assert _native_flag(None) == "True True"


# ---- validate: the kernel against the numpy path of parse_send_batch ----------------------------

U32 = (1 << 32) - 1
U64 = (1 << 64) - 1


@contextlib.contextmanager
def limits(max_payload: int, max_user_headers: int) -> Iterator[None]:
    """Both paths read the limits from the module at each call, so small ones reach both."""
    saved = batch_module.MAX_PAYLOAD_BYTES, batch_module.MAX_USER_HEADERS_BYTES
    batch_module.MAX_PAYLOAD_BYTES, batch_module.MAX_USER_HEADERS_BYTES = max_payload, max_user_headers
    try:
        yield
    finally:
        batch_module.MAX_PAYLOAD_BYTES, batch_module.MAX_USER_HEADERS_BYTES = saved


def parsed(native: bool, index: bytes, area: bytes, count: int) -> tuple[int, list[int]]:
    """(0, ends) or (status, []) from parse_send_batch on the chosen path."""
    saved = batch_module._native
    batch_module._native = _stamp if native else None
    try:
        return 0, parse_send_batch(index, area, count).ends.tolist()
    except IggyError as e:
        return int(e.status), []
    finally:
        batch_module._native = saved


def _make_guard() -> Callable[[bytes], memoryview] | None:
    """Where mprotect is at hand: a copy of some bytes that ends exactly where an unreadable
    page begins, so that reading one byte past the end faults instead of going unnoticed."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mprotect = libc.mprotect
    except (OSError, AttributeError):
        return None
    mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    page = mmap.PAGESIZE

    def guarded(data: bytes) -> memoryview:
        size = -(-len(data) // page) * page
        area = mmap.mmap(-1, size + page)
        address = ctypes.addressof(ctypes.c_char.from_buffer(area))
        if mprotect(address + size, page, 0) != 0:  # 0 is PROT_NONE
            raise OSError(ctypes.get_errno(), "mprotect")
        area[size - len(data) : size] = data
        return memoryview(area)[size - len(data) : size]

    return guarded


guarded = _make_guard()


def assert_same_outcome(
    index: bytes,
    area: bytes,
    count: int,
    max_payload: int = MAX_PAYLOAD_BYTES,
    max_user_headers: int = MAX_USER_HEADERS_BYTES,
) -> int:
    """The kernel, called directly and through parse_send_batch, agrees with the numpy path."""
    with limits(max_payload, max_user_headers):
        expected = parsed(False, index, area, count)
        through_batch = parsed(True, index, area, count)
    if guarded is not None:
        status, raw = _stamp.validate(guarded(index), guarded(area), count, max_payload, max_user_headers)
    else:
        status, raw = _stamp.validate(index, area, count, max_payload, max_user_headers)
    direct = (status, np.frombuffer(raw, dtype=np.int64).tolist() if raw is not None else [])
    assert (raw is None) == (status != 0)
    assert through_batch == expected
    assert direct == expected
    return expected[0]


FAULT_KINDS = (
    "index-offset",
    "index-timestamp",
    "position",
    "position-shift",
    "payload-length",
    "user-headers-length",
    "reserved",
    "area-extend",
    "area-truncate",
    "area-byte",
)


@st.composite
def faulty_batches(draw: st.DrawFn) -> tuple[bytes, bytes, int, int, int]:
    """A well-formed batch, then up to four faults of any kind in any messages, under limits
    small enough that consistent oversized messages occur too."""
    sizes = draw(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 30)), min_size=1, max_size=12))
    payloads = [draw(st.binary(min_size=p, max_size=p)) for p, _ in sizes]
    headers = [b"h" * h for _, h in sizes]
    index_bytes, area_bytes = encode(payloads, user_headers=headers)
    index, area = bytearray(index_bytes), bytearray(area_bytes)
    count = len(sizes)
    starts = [0] + [64 * (i + 1) + sum(p + h for p, h in sizes[: i + 1]) for i in range(count - 1)]
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(FAULT_KINDS))
        i = draw(st.integers(0, count - 1))
        entry, header = 16 * i, starts[i]
        if kind == "index-offset":
            struct.pack_into("<I", index, entry, draw(st.integers(1, U32)))
        elif kind == "index-timestamp":
            struct.pack_into("<Q", index, entry + 8, draw(st.integers(1, U64)))
        elif kind == "position":
            struct.pack_into("<I", index, entry + 4, draw(st.integers(0, U32)))
        elif kind == "position-shift":
            old = struct.unpack_from("<I", index, entry + 4)[0]
            struct.pack_into("<I", index, entry + 4, min(U32, max(0, old + draw(st.integers(-130, 130)))))
        elif kind in ("payload-length", "user-headers-length", "reserved") and header + 64 > len(area):
            continue  # the area was cut short by an earlier fault
        elif kind == "payload-length":
            struct.pack_into("<I", area, header + 52, draw(st.integers(0, U32)))
        elif kind == "user-headers-length":
            struct.pack_into("<I", area, header + 48, draw(st.integers(0, U32)))
        elif kind == "reserved":
            area[header + draw(st.integers(56, 63))] = draw(st.integers(1, 255))
        elif kind == "area-extend":
            area += draw(st.binary(min_size=1, max_size=80))
        elif kind == "area-truncate":
            del area[len(area) - draw(st.integers(1, min(80, len(area)))) :]
        elif kind == "area-byte" and area:
            area[draw(st.integers(0, len(area) - 1))] ^= draw(st.integers(1, 255))
    max_payload = draw(st.sampled_from([0, 20, 59, 60, MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES]))
    max_user_headers = draw(st.sampled_from([0, 10, 29, 30, MAX_USER_HEADERS_BYTES, MAX_USER_HEADERS_BYTES]))
    return bytes(index), bytes(area), count, max_payload, max_user_headers


@settings(max_examples=400, deadline=None)
@given(case=faulty_batches())
def test_validate_given_batch_with_faults_when_validated_should_match_numpy_path(
    case: tuple[bytes, bytes, int, int, int],
) -> None:
    event(f"status {assert_same_outcome(*case)}")


@settings(max_examples=300, deadline=None)
@given(
    positions=st.lists(st.one_of(st.integers(0, 900), st.integers(0, U32)), min_size=1, max_size=10),
    nonzero=st.lists(
        st.tuples(st.integers(0, 9), st.sampled_from(["offset", "timestamp"]), st.integers(1, U32)),
        max_size=2,
    ),
    area=st.binary(max_size=900),
    count_delta=st.sampled_from([0, 0, 0, -1, 1]),
)
def test_validate_given_random_index_and_bytes_when_validated_should_match_numpy_path(
    positions: list[int], nonzero: list[tuple[int, str, int]], area: bytes, count_delta: int
) -> None:
    index = bytearray(b"".join(struct.pack("<IIQ", 0, p, 0) for p in positions))
    for i, field, value in nonzero:
        struct.pack_into("<I", index, 16 * (i % len(positions)) + (0 if field == "offset" else 12), value)
    event(f"status {assert_same_outcome(bytes(index), area, len(positions) + count_delta)}")


@settings(max_examples=200, deadline=None)
@given(
    spans=st.lists(st.one_of(st.integers(-3, 0), st.integers(0, 200)), min_size=1, max_size=10),
    area=st.binary(max_size=2000),
    max_payload=st.integers(0, 300),
    max_user_headers=st.integers(0, 300),
)
def test_validate_given_plausible_positions_over_random_headers_when_validated_should_match_numpy_path(
    spans: list[int], area: bytes, max_payload: int, max_user_headers: int
) -> None:
    positions = np.cumsum([64 + s for s in spans]).tolist()
    index = b"".join(struct.pack("<IIQ", 0, p, 0) for p in positions)
    # Mostly the exact size, so that the header checks are reached.
    area = (area * (positions[-1] // max(1, len(area)) + 1))[: positions[-1]] if area else area
    event(f"status {assert_same_outcome(index, area, len(spans), max_payload, max_user_headers)}")


@settings(max_examples=200, deadline=None)
@given(
    index=st.binary(max_size=200),
    area=st.binary(max_size=600),
    count=st.one_of(st.integers(-3, 14), st.none()),
)
def test_validate_given_pure_garbage_when_validated_should_match_numpy_path(
    index: bytes, area: bytes, count: int | None
) -> None:
    if count is None:  # a count that the index length matches, so that checks go further
        count = max(1, len(index) // 16)
        index = (index * 16)[: 16 * count]
    event(f"status {assert_same_outcome(index, area, count)}")


def _big_batch(count: int) -> tuple[bytes, bytearray]:
    return encode([bytes([i % 251]) * (i % 7) for i in range(count)])


@pytest.mark.parametrize("fault", ["none", "offset-last", "reserved-first", "fill-middle"])
def test_validate_given_batch_big_enough_to_release_the_gil_when_validated_should_match_numpy_path(
    fault: str,
) -> None:
    count = 5000  # over the kernel's threshold for releasing the GIL
    index_bytes, area = _big_batch(count)
    index = bytearray(index_bytes)
    if fault == "offset-last":
        struct.pack_into("<I", index, 16 * (count - 1), 1)
    elif fault == "reserved-first":
        area[63] = 1
    elif fault == "fill-middle":
        start = struct.unpack_from("<I", index, 16 * (count // 2 - 1) + 4)[0]
        area[start + 52] ^= 1
    expected = {"none": 0, "offset-last": 4031, "reserved-first": 4101, "fill-middle": 4033}[fault]
    assert assert_same_outcome(bytes(index), bytes(area), count) == expected


@pytest.mark.parametrize(
    ("count", "status"),
    [
        (0, Status.INVALID_MESSAGES_COUNT),
        (-(1 << 70), Status.INVALID_MESSAGES_COUNT),
        (1 << 70, Status.INVALID_INDEXES_BYTE_SIZE),
        (3, Status.INVALID_INDEXES_BYTE_SIZE),
    ],
)
def test_validate_given_count_not_matching_index_when_validated_should_return_status(
    count: int, status: Status
) -> None:
    index, area = encode([b"a", b"b"])
    assert _stamp.validate(index, area, count, MAX_PAYLOAD_BYTES, MAX_USER_HEADERS_BYTES) == (status, None)


def test_validate_given_index_count_as_numpy_integer_when_validated_should_accept_it() -> None:
    index, area = encode([b"a", b"b"])
    status, raw = _stamp.validate(index, area, np.int64(2), MAX_PAYLOAD_BYTES, MAX_USER_HEADERS_BYTES)
    assert status == 0 and raw is not None
    assert np.frombuffer(raw, dtype=np.int64).tolist() == [65, 130]


@pytest.mark.parametrize("change", ["count-str", "index-not-buffer", "area-not-buffer", "negative-limit"])
def test_validate_given_argument_of_wrong_kind_when_called_should_raise(change: str) -> None:
    index, area = encode([b"a"])
    args: list[object] = [index, area, 1, MAX_PAYLOAD_BYTES, MAX_USER_HEADERS_BYTES]
    if change == "count-str":
        args[2] = "1"
    elif change == "index-not-buffer":
        args[0] = [0] * 16
    elif change == "area-not-buffer":
        args[1] = "x" * 65
    elif change == "negative-limit":
        args[3] = -1
    with pytest.raises((TypeError, ValueError)):
        _stamp.validate(*args)


@pytest.mark.parametrize("short_at", [0, 1, 2])
def test_validate_given_span_one_byte_short_of_a_header_when_validated_should_not_read_past_it(
    short_at: int,
) -> None:
    index_bytes, area = encode([b"", b"", b""])
    index = bytearray(index_bytes)
    # Message short_at and all after it move back by one byte; the area ends with the last.
    for i in range(short_at, 3):
        struct.pack_into("<I", index, 16 * i + 4, 64 * (i + 1) - 1)
    del area[-1:]
    assert assert_same_outcome(bytes(index), bytes(area), 3) == Status.MISSING_INDEX


def test_validate_given_unaligned_views_when_validated_should_read_them_whole() -> None:
    index, area = encode([b"abc", b"de"])
    index_view = memoryview(b"\xff" + index)[1:]
    area_view = memoryview(b"\xff" * 3 + bytes(area))[3:]
    assert assert_same_outcome(bytes(index_view), bytes(area_view), 2) == 0
    status, raw = _stamp.validate(index_view, area_view, 2, MAX_PAYLOAD_BYTES, MAX_USER_HEADERS_BYTES)
    assert status == 0 and raw is not None
    assert np.frombuffer(raw, dtype=np.int64).tolist() == [67, 133]


@pytest.mark.parametrize("avx2", [True, False])
def test_digests_given_each_hash_loop_when_hashed_should_equal_xxh3_at_every_length(avx2: bool) -> None:
    native = pytest.importorskip("tidelog._stamp")
    active = native.set_avx2(avx2)
    try:
        if avx2 and not active:
            pytest.skip("this CPU has no AVX2")
        buf = os.urandom(70_000)
        lengths = [*range(0, 300), 511, 512, 1023, 1024, 1025, 4096, 65_536]
        starts = np.arange(len(lengths), dtype=np.int64) % 97
        ends = starts + 8 + np.array(lengths, dtype=np.int64)
        out = np.zeros(len(lengths), dtype=np.uint64)

        native.digests(buf, starts, ends, out)

        want = [
            xxhash.xxh3_64_intdigest(buf[a + 8 : b])
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True)
        ]
        assert out.tolist() == want
    finally:
        native.set_avx2(True)

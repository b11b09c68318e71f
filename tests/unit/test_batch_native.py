"""The C kernel tidelog._stamp against the numpy path of wire/batch.py, which is the reference."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_batch import encode
from tidelog.wire import batch as batch_module
from tidelog.wire.batch import Batch, parse_send_batch, stamp, verify_checksums

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

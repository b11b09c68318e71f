"""Whole-batch work on SendMessages batches and stored messages, with numpy.

A batch is the messages area of a SendMessages request (protocol reference 3.9): messages in
wire format back to back (4.1), plus the client's 16-byte index table that says where each one
ends. Validation and stamping touch every message through numpy gathers and scatters at the
start positions, so no Python object is made per message. Two loops remain per message, and
both are kept lean on purpose:

* checksums (XXH3-64 has no vectorized form in numpy), in `stamp` and `verify_checksums`;
* `scan_messages`, which walks headers of stored data whose positions nobody vouches for
  (recovery, index rebuild), and is sequential by nature.

When every message of a batch has the same size (the usual producer case) the header fields
are reached through a strided view over the buffer instead of fancy indexing: no copy at all.

Validation, stamping and checksum checks have a C kernel, `tidelog._stamp`
(src/tidelog/native/stamp.c), built by `pip install -e .` when a compiler is at hand: one loop
(GIL released where the batch is big enough to pay for it) instead of a dozen numpy calls on
small arrays and a Python call per checksum. It is optional: without it, or with
TIDELOG_NO_NATIVE=1 in the environment at import, the numpy path below runs, and gives
byte-identical results and the same error statuses (tests/unit/test_batch_native.py holds the
two to that). `NATIVE` says which path is active.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import xxhash

from tidelog.wire.codes import (
    INDEX_ENTRY_SIZE,
    MAX_PAYLOAD_BYTES,
    MAX_USER_HEADERS_BYTES,
    MESSAGE_HEADER_SIZE,
    U32_MAX,
    IggyError,
    Status,
)

# The two fixed 0.8 layouts, each written once as (field, struct code); the struct, the numpy
# dtype and the field offsets below are derived from these tables, so they cannot disagree.
_MESSAGE_HEADER_FIELDS: tuple[tuple[str, str], ...] = (  # section 4.1
    ("checksum", "Q"),
    ("id_lo", "Q"),  # the u128 id, low half first
    ("id_hi", "Q"),
    ("offset", "Q"),
    ("timestamp", "Q"),
    ("origin_timestamp", "Q"),
    ("user_headers_length", "I"),
    ("payload_length", "I"),
    ("reserved", "Q"),
)
# Section 3.9 (client index table) and the stored .index: relative offset, end position, timestamp.
_INDEX_ENTRY_FIELDS: tuple[tuple[str, str], ...] = (("offset", "I"), ("position", "I"), ("timestamp", "Q"))
_DTYPE_CODES = {"I": "<u4", "Q": "<u8"}


def _layout(fields: tuple[tuple[str, str], ...]) -> tuple[struct.Struct, np.dtype]:
    """A little-endian, unpadded struct over `fields` and the numpy dtype of the same bytes."""
    layout = struct.Struct("<" + "".join(code for _, code in fields))
    dtype = np.dtype([(name, _DTYPE_CODES[code]) for name, code in fields])
    assert layout.size == dtype.itemsize
    return layout, dtype


MESSAGE_HEADER, MESSAGE_HEADER_DTYPE = _layout(_MESSAGE_HEADER_FIELDS)
INDEX_ENTRY, INDEX_DTYPE = _layout(_INDEX_ENTRY_FIELDS)

assert MESSAGE_HEADER_DTYPE.itemsize == MESSAGE_HEADER_SIZE == 64
assert INDEX_DTYPE.itemsize == INDEX_ENTRY_SIZE == 16

# Byte offsets of header fields, taken from the dtype so the two can never disagree.
_FIELDS = MESSAGE_HEADER_DTYPE.fields
assert _FIELDS is not None
_F = {name: int(spec[1]) for name, spec in _FIELDS.items()}
CHECKSUM_AT, ID_AT, OFFSET_AT, TIMESTAMP_AT = _F["checksum"], _F["id_lo"], _F["offset"], _F["timestamp"]
LENGTHS_AT, PAYLOAD_LENGTH_AT, RESERVED_AT = _F["user_headers_length"], _F["payload_length"], _F["reserved"]
assert (CHECKSUM_AT, ID_AT, OFFSET_AT, TIMESTAMP_AT) == (0, 8, 24, 32)
ORIGIN_TIMESTAMP_AT = _F["origin_timestamp"]
assert ORIGIN_TIMESTAMP_AT == 40
assert (LENGTHS_AT, PAYLOAD_LENGTH_AT, RESERVED_AT) == (48, 52, 56)

# The checksum covers everything after its own field.
CHECKSUMMED_FROM = CHECKSUM_AT + 8

_COLUMNS = np.arange(MESSAGE_HEADER_SIZE, dtype=np.int64)


def _load_native() -> ModuleType | None:
    if os.environ.get("TIDELOG_NO_NATIVE", "") not in ("", "0"):
        return None
    try:
        from tidelog import _stamp
    except ImportError:  # not built: no compiler at install time, or a plain source checkout
        return None
    return _stamp


# Looked up at each call rather than bound once, so tests can switch paths in one process.
_native = _load_native()
NATIVE: bool = _native is not None


@dataclass(slots=True)
class Batch:
    """Messages in wire format back to back; `ends[i]` is where message i ends within `buf`."""

    count: int
    buf: memoryview
    ends: np.ndarray

    @property
    def size_bytes(self) -> int:
        return self.buf.nbytes

    def starts(self) -> np.ndarray:
        return _starts(self.ends)


def _starts(ends: np.ndarray) -> np.ndarray:
    starts = np.empty_like(ends)
    if len(ends):
        starts[0] = 0
        starts[1:] = ends[:-1]
    return starts


def _as_bytes_view(data: memoryview | bytes | bytearray) -> memoryview:
    mv = memoryview(data)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


class _Rows:
    """Byte columns of the 64-byte headers at given message starts.

    `get` returns a (count, width) uint8 array: a strided view when all messages share one
    size, a gathered copy otherwise; `put` writes such an array back.
    """

    __slots__ = ("a", "count", "starts", "uniform_size")

    def __init__(self, a: np.ndarray, starts: np.ndarray, spans: np.ndarray) -> None:
        self.a = a
        self.starts = starts
        self.count = len(starts)
        first = int(spans[0])
        # The strided view needs message i to start exactly at i * size.
        self.uniform_size = first if bool(np.all(spans == first)) else 0

    def get(self, lo: int, hi: int) -> np.ndarray:
        assert 0 <= lo < hi <= MESSAGE_HEADER_SIZE
        if self.uniform_size:
            return np.ndarray(
                shape=(self.count, hi - lo),
                dtype=np.uint8,
                buffer=self.a,
                offset=lo,
                strides=(self.uniform_size, 1),
            )
        return self.a[self.starts[:, None] + _COLUMNS[lo:hi]]

    def put(self, lo: int, values: np.ndarray, mask: np.ndarray | None = None) -> None:
        hi = lo + values.shape[1]
        if self.uniform_size:
            view = self.get(lo, hi)
            if mask is None:
                view[...] = values
            else:
                view[mask] = values
            return
        starts = self.starts if mask is None else self.starts[mask]
        self.a[starts[:, None] + _COLUMNS[lo:hi]] = values


def _u64_column(rows: np.ndarray) -> np.ndarray:
    """(n, 8) uint8 -> (n,) little-endian u64."""
    return np.ascontiguousarray(rows).view("<u8")[:, 0]


def _u64_rows(values: np.ndarray) -> np.ndarray:
    """(n,) u64 -> (n, 8) uint8 little-endian."""
    return np.ascontiguousarray(values, dtype="<u8").view(np.uint8).reshape(-1, 8)


def parse_send_batch(
    index: memoryview | bytes | bytearray, messages: memoryview | bytes | bytearray, count: int
) -> Batch:
    """Validate a SendMessages index table and messages area as a whole (section 3.9).

    Garbage in gives an `IggyError`, never another exception: every position is bounded
    before any header is read. A read-only `messages` is copied once so that `stamp` can
    write in place; the network path hands over writable buffers and pays nothing.
    """
    if count <= 0:
        raise IggyError(Status.INVALID_MESSAGES_COUNT, f"messages_count {count}")
    index_mv = _as_bytes_view(index)
    if index_mv.nbytes != count * INDEX_ENTRY_SIZE:
        raise IggyError(
            Status.INVALID_INDEXES_BYTE_SIZE, f"{index_mv.nbytes} index bytes for {count} messages"
        )
    mv = _as_bytes_view(messages)
    native = _native
    if native is not None:
        # One C pass makes the checks below in the same order; the numpy lines are the reference.
        status, ends_raw = native.validate(index_mv, mv, count, MAX_PAYLOAD_BYTES, MAX_USER_HEADERS_BYTES)
        if status:
            raise _native_failure(Status(status), index_mv, mv, count)
        if mv.readonly:
            mv = memoryview(bytearray(mv))
        return Batch(count=count, buf=mv, ends=np.frombuffer(ends_raw, dtype=np.int64))
    if mv.readonly:
        mv = memoryview(bytearray(mv))
    idx = np.frombuffer(index_mv, dtype=INDEX_DTYPE, count=count)
    if idx["offset"].any():
        raise IggyError(Status.NON_ZERO_OFFSET)
    if idx["timestamp"].any():
        raise IggyError(Status.NON_ZERO_TIMESTAMP)

    ends = idx["position"].astype(np.int64)
    starts = _starts(ends)
    spans = ends - starts
    # A span under one header also catches positions that fall or stay put.
    if bool((spans < MESSAGE_HEADER_SIZE).any()):
        raise IggyError(Status.MISSING_INDEX, "index positions do not leave room for a header")
    area_bytes = mv.nbytes
    if int(ends[-1]) != area_bytes:
        raise IggyError(
            Status.INVALID_MESSAGES_SIZE, f"index ends at {int(ends[-1])}, area holds {area_bytes}"
        )
    # From here every start + 64 <= its end <= area_bytes: the gathers stay in bounds.
    rows = _Rows(np.frombuffer(mv, dtype=np.uint8), starts, spans)
    tail = np.ascontiguousarray(rows.get(LENGTHS_AT, MESSAGE_HEADER_SIZE))
    lengths = tail[:, :8].view("<u4").astype(np.int64)
    user_headers, payload = lengths[:, 0], lengths[:, 1]
    # Wrong positions make garbage of the lengths read at them, so agreement is checked
    # before the limits: a limit error then means a real, consistent, oversized message.
    if bool((MESSAGE_HEADER_SIZE + payload + user_headers != spans).any()):
        raise IggyError(Status.MISSING_INDEX, "a message does not fill its index span")
    if bool((payload > MAX_PAYLOAD_BYTES).any()):
        raise IggyError(Status.TOO_BIG_MESSAGE_PAYLOAD)
    if bool((user_headers > MAX_USER_HEADERS_BYTES).any()):
        raise IggyError(Status.TOO_BIG_USER_HEADERS)
    if bool(tail[:, 8:].any()):
        raise IggyError(Status.INVALID_RESERVED_FIELD)
    return Batch(count=count, buf=mv, ends=ends)


def _native_failure(status: Status, index_mv: memoryview, mv: memoryview, count: int) -> IggyError:
    """The kernel's status as the error the numpy path raises; details where they are cheap."""
    if status == Status.INVALID_MESSAGES_SIZE:
        last_end = int(np.frombuffer(index_mv, dtype=INDEX_DTYPE, count=count)["position"][-1])
        return IggyError(status, f"index ends at {last_end}, area holds {mv.nbytes}")
    if status == Status.MISSING_INDEX:
        return IggyError(status, "index positions do not match the message headers")
    return IggyError(status)


def _checksums(buf: memoryview, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    digest = xxhash.xxh3_64_intdigest
    firsts = (starts + CHECKSUMMED_FROM).tolist()
    return np.array([digest(buf[s:e]) for s, e in zip(firsts, ends.tolist(), strict=True)], dtype=np.uint64)


def stamp(batch: Batch, base_offset: int, timestamp_us: int, random_bytes: Callable[[int], bytes]) -> None:
    """Give each message its offset, the batch timestamp, an id where the client sent 0,
    then its checksum (which covers the other three, so it comes last).

    `random_bytes` is called once, for 16 bytes per zero id, and not at all when there are
    none: both paths ask for exactly the same bytes.
    """
    count = batch.count
    assert count > 0 and len(batch.ends) == count and not batch.buf.readonly
    assert base_offset >= 0 and timestamp_us >= 0
    native = _native
    if native is not None:
        ends = np.ascontiguousarray(batch.ends, dtype=np.int64)
        zeros = native.zero_ids(batch.buf, ends)
        raw = random_bytes(16 * zeros) if zeros else None
        native.stamp(batch.buf, ends, base_offset, timestamp_us, raw)
        return
    _stamp_numpy(batch, base_offset, timestamp_us, random_bytes)


def random_uuids(random_bytes: Callable[[int], bytes], count: int) -> np.ndarray:
    """`count` random UUIDv4 ids as (count, 16) bytes, from one call for 16 bytes each: RFC
    9562 version and variant bits set at the byte positions the C `stamp` sets them (the 16
    bytes are then read as a little-endian u128)."""
    raw = random_bytes(16 * count)
    assert len(raw) == 16 * count
    uuids = np.frombuffer(raw, dtype=np.uint8).reshape(count, 16).copy()
    uuids[:, 6] = (uuids[:, 6] & 0x0F) | 0x40
    uuids[:, 8] = (uuids[:, 8] & 0x3F) | 0x80
    return uuids


def _stamp_numpy(
    batch: Batch, base_offset: int, timestamp_us: int, random_bytes: Callable[[int], bytes]
) -> None:
    count = batch.count
    a = np.frombuffer(batch.buf, dtype=np.uint8)
    starts = batch.starts()
    rows = _Rows(a, starts, batch.ends - starts)

    ids = np.ascontiguousarray(rows.get(ID_AT, ID_AT + 16)).view("<u8")
    missing = (ids == 0).all(axis=1)
    n_missing = int(missing.sum())
    if n_missing:
        rows.put(ID_AT, random_uuids(random_bytes, n_missing), missing)

    stamped = np.empty((count, 2), dtype="<u8")
    stamped[:, 0] = np.arange(base_offset, base_offset + count, dtype=np.uint64)
    stamped[:, 1] = timestamp_us
    rows.put(OFFSET_AT, stamped.view(np.uint8).reshape(count, 16))

    rows.put(CHECKSUM_AT, _u64_rows(_checksums(batch.buf, starts, batch.ends)))


def storage_index(
    batch: Batch, relative_offset_base: int, position_base: int, timestamp_us: int
) -> np.ndarray:
    """The stored 16-byte index entries of a batch about to land at `position_base` of a
    segment's .log (relative offset u32, end position u32, timestamp u64)."""
    count = batch.count
    assert relative_offset_base >= 0 and relative_offset_base + count - 1 <= U32_MAX
    assert position_base >= 0 and position_base + batch.size_bytes <= U32_MAX
    out = np.empty(count, dtype=INDEX_DTYPE)
    out["offset"] = np.arange(relative_offset_base, relative_offset_base + count, dtype=np.uint32)
    out["position"] = batch.ends + position_base
    out["timestamp"] = timestamp_us
    return out


def scan_messages(
    buf: memoryview | bytes | bytearray,
    verify_checksums: bool,
    expected_first_offset: int | None = None,
) -> tuple[np.ndarray, int]:
    """Walk stored messages from byte 0; return (end positions, valid prefix length).

    Stops at the first message that is incomplete, has out-of-range lengths or a non-zero
    reserved field, carries an offset other than the expected one (when
    `expected_first_offset` is given), or fails its checksum (when asked). A zeroed region
    fails the checksum, so with `verify_checksums` this finds the end of real data.
    """
    mv = _as_bytes_view(buf)
    native = _native
    if native is not None:
        # The kernel makes the structural walk; checksums then cut the prefix at the first
        # message that fails, which is where the loop below stops too.
        raw, valid = native.scan(mv, MAX_PAYLOAD_BYTES, MAX_USER_HEADERS_BYTES, expected_first_offset)
        found = np.frombuffer(raw, dtype=np.int64)
        if verify_checksums and len(found):
            bad = int(native.checksums_verify(mv, found))
            if bad >= 0:
                found = found[:bad]
                valid = int(found[-1]) if bad else 0
        return found, int(valid)
    total = mv.nbytes
    unpack = MESSAGE_HEADER.unpack_from
    digest = xxhash.xxh3_64_intdigest
    ends: list[int] = []
    pos = 0
    expected = expected_first_offset
    while pos + MESSAGE_HEADER_SIZE <= total:
        checksum, _, _, offset, _, _, user_headers, payload, reserved = unpack(mv, pos)
        if payload > MAX_PAYLOAD_BYTES or user_headers > MAX_USER_HEADERS_BYTES or reserved:
            break
        end = pos + MESSAGE_HEADER_SIZE + payload + user_headers
        if end > total:
            break
        if expected is not None:
            if offset != expected:
                break
            expected += 1
        if verify_checksums and digest(mv[pos + CHECKSUMMED_FROM : end]) != checksum:
            break
        ends.append(end)
        pos = end
    return np.array(ends, dtype=np.int64), pos


def header_u64(buf: memoryview | bytes | bytearray, ends: np.ndarray, field_at: int) -> np.ndarray:
    """One u64 header field of every message (e.g. TIMESTAMP_AT), gathered at once."""
    if not len(ends):
        return np.empty(0, dtype=np.uint64)
    starts = _starts(ends)
    assert int(ends[-1]) <= _as_bytes_view(buf).nbytes
    a = np.frombuffer(_as_bytes_view(buf), dtype=np.uint8)
    rows = _Rows(a, starts, ends - starts)
    return _u64_column(rows.get(field_at, field_at + 8)).astype(np.uint64)


def verify_checksums(buf: memoryview | bytes | bytearray, ends: np.ndarray) -> int:
    """Index of the first message whose stored checksum is wrong, or -1."""
    if not len(ends):
        return -1
    mv = _as_bytes_view(buf)
    native = _native
    if native is not None:
        return int(native.checksums_verify(mv, np.ascontiguousarray(ends, dtype=np.int64)))
    stored = header_u64(mv, ends, CHECKSUM_AT)
    bad = np.flatnonzero(_checksums(mv, _starts(ends), ends) != stored)
    return int(bad[0]) if bad.size else -1


def verify_stored(
    buf: memoryview | bytes | bytearray,
    ends: np.ndarray,
    first_offset: int,
    timestamps: np.ndarray | None = None,
) -> int:
    """Index of the first stored message in `buf` that is not what the index says it is, or -1.

    `ends` are the index's end positions within `buf` (rising by at least one header, the
    last within `buf`). Message i fails when its length fields do not fill exactly its span
    or are out of range, its reserved field is not zero, its offset is not
    `first_offset + i`, its timestamp is not `timestamps[i]` (when given), or its checksum
    fails. Header checks are vectorized and checksums use the C kernel when it is built,
    so verifying data read from disk costs about as much as hashing it.
    """
    count = len(ends)
    if not count:
        return -1
    mv = _as_bytes_view(buf)
    ends = np.ascontiguousarray(ends, dtype=np.int64)
    starts = _starts(ends)
    spans = ends - starts
    assert bool((spans >= MESSAGE_HEADER_SIZE).all()) and int(ends[-1]) <= mv.nbytes
    rows = _Rows(np.frombuffer(mv, dtype=np.uint8), starts, spans)
    tail = np.ascontiguousarray(rows.get(LENGTHS_AT, MESSAGE_HEADER_SIZE))
    lengths = tail[:, :8].view("<u4").astype(np.int64)
    user_headers, payload = lengths[:, 0], lengths[:, 1]
    bad = (
        (MESSAGE_HEADER_SIZE + payload + user_headers != spans)
        | (payload > MAX_PAYLOAD_BYTES)
        | (user_headers > MAX_USER_HEADERS_BYTES)
        | (tail[:, 8:].view("<u8")[:, 0] != 0)  # reserved
    )
    offsets = _u64_column(rows.get(OFFSET_AT, OFFSET_AT + 8))
    bad |= offsets != np.arange(first_offset, first_offset + count, dtype=np.uint64)
    if timestamps is not None:
        stored = _u64_column(rows.get(TIMESTAMP_AT, TIMESTAMP_AT + 8))
        bad |= stored != np.asarray(timestamps, dtype=np.uint64)
    structural = int(np.argmax(bad)) if bool(bad.any()) else count
    # Checksums only up to the first structural failure: the answer cannot lie beyond it.
    failed = verify_checksums(mv, ends[:structural]) if structural else -1
    if failed >= 0:
        return failed
    return structural if structural < count else -1

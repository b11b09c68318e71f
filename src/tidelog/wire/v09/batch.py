"""Whole-batch work on Iggy 0.9 message batches, with numpy (protocol reference
``shared/protocol/iggy-0.9-vsr.md`` sections 4.1-4.7).

A 0.9 batch is one 256-byte batch header (4.1) followed by message frames, each a 48-byte
frame header, the payload, then the user headers (4.2). SendMessages carries exactly one
batch (4.3); a poll reply carries batch records as stored, possibly sliced (4.5).

Like `tidelog.wire.batch` (the 0.8 code) everything here works on whole batches: header
fields of every frame are reached through one strided view (all frames one size, the usual
producer case: no copy) or one fancy-index gather, and checks are array comparisons. What is
still done per message, and why:

* Finding the frames. 0.9 has no index table: frame i+1 starts where frame i's lengths say,
  so the walk is sequential by nature. When every frame has the size of the first one the
  strided view proves the tiling in one comparison; only batches of mixed sizes take the
  walk in `_walk_frames` (the C `walk_frames` loop; a `struct` loop without the kernel).
* Frame checksums (XXH3-64 has no vectorized numpy form). The C kernel `tidelog._stamp`
  hashes bytes 8..end of each message and compares with bytes 0..8, which is exactly the 0.9
  frame rule (the payload and headers directly follow the 48-byte header), but it insists on
  spans of at least 64 bytes (the 0.8 header). So batches whose frames all carry 16 bytes or
  more of payload and headers are checked in C; others take `_frame_digests`, a REFERENCE
  PATH of one `xxhash` call per frame. Conversion to 0.9 always takes it, since it must
  compute new frame checksums and the kernel only verifies them; conversion to 0.8 computes
  the 0.8 checksums with the kernel's 0.8 `stamp` (reference path without it).
* Moving payloads between formats: one 2-D strided copy when the messages are of one size,
  else two boolean byte masks (a few ns per byte, no message loop).

The batch checksum is one streaming XXH3 over the header fields and the gathered frame
checksums (4.2), so it costs one hash call per batch whatever the count.

A segment's log holds stamped records back to back (the stored record log, at the end of
this file): `scan_records` and `verify_records` walk it with one Python step per record,
each record checked whole by `parse_batch`; `slice_record_head` rewrites a cut record's
header for a poll reply; `records_to_v08` and `record_from_v08` convert for 0.8 clients.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import NamedTuple

import numpy as np
import xxhash

from tidelog.wire import batch as batch08
from tidelog.wire.batch import ID_AT, MESSAGE_HEADER_DTYPE, OFFSET_AT
from tidelog.wire.codes import MAX_PAYLOAD_BYTES, MAX_USER_HEADERS_BYTES, MESSAGE_HEADER_SIZE, U32_MAX, Status
from tidelog.wire.v09.codes import Status09

BATCH_HEADER_SIZE = 256
FRAME_HEADER_SIZE = 48
U64_MAX = (1 << 64) - 1

# Section 4.1. The reserved tail is a void field so the dtype covers the whole header.
BATCH_HEADER_DTYPE = np.dtype(
    [
        ("partition_id", "<u8"),
        ("base_offset", "<u8"),
        ("base_timestamp", "<u8"),
        ("origin_timestamp", "<u8"),
        ("batch_length", "<u8"),
        ("batch_checksum", "<u8"),
        ("message_count", "<u4"),
        ("reserved", "V204"),
    ]
)
# Section 4.2.
FRAME_HEADER_DTYPE = np.dtype(
    [
        ("checksum", "<u8"),
        ("id_lo", "<u8"),
        ("id_hi", "<u8"),
        ("offset_delta", "<u4"),
        ("timestamp_delta", "<u4"),
        ("user_headers_length", "<u4"),
        ("payload_length", "<u4"),
        ("reserved", "<u8"),
    ]
)
assert BATCH_HEADER_DTYPE.itemsize == BATCH_HEADER_SIZE
assert FRAME_HEADER_DTYPE.itemsize == FRAME_HEADER_SIZE

_BH = {name: int(spec[1]) for name, spec in (BATCH_HEADER_DTYPE.fields or {}).items()}
_FH = {name: int(spec[1]) for name, spec in (FRAME_HEADER_DTYPE.fields or {}).items()}
BATCH_CHECKSUM_AT, MESSAGE_COUNT_AT, HEADER_RESERVED_AT = (
    _BH["batch_checksum"],
    _BH["message_count"],
    _BH["reserved"],
)
FRAME_LENGTHS_AT = _FH["user_headers_length"]
assert (BATCH_CHECKSUM_AT, MESSAGE_COUNT_AT, HEADER_RESERVED_AT) == (40, 48, 52)
assert FRAME_LENGTHS_AT == 32 and _FH["reserved"] == 40
# The frame checksum covers bytes 8..end of the frame: header tail, payload, user headers.
FRAME_CHECKSUMMED_FROM = 8

_FRAME_LENGTHS = struct.Struct("<II")  # user_headers_length, payload_length (4.2)
_COLS = np.arange(max(BATCH_HEADER_SIZE, MESSAGE_HEADER_SIZE), dtype=np.int64)

Code = Status | Status09


class BatchError(Exception):
    """A batch refused with the error code of section 6 that travels back to the client.

    Not a `tidelog.wire.codes.IggyError`, whose status is typed as the 0.8 enum; the 0.9
    shell maps `code` onto its error reply.
    """

    def __init__(self, status: Code, detail: str = "") -> None:
        super().__init__(f"{status.name} ({int(status)}){': ' + detail if detail else ''}")
        self.status = status
        self.detail = detail

    @property
    def code(self) -> int:
        return int(self.status)


def _load_native() -> ModuleType | None:
    # Same switch as tidelog.wire.batch, so one environment variable picks the path for both.
    if os.environ.get("TIDELOG_NO_NATIVE", "") not in ("", "0"):
        return None
    try:
        from tidelog import _stamp
    except ImportError:
        return None
    return _stamp


# Looked up at each call rather than bound once, so tests can switch paths in one process.
_native = _load_native()


@dataclass(slots=True)
class Batch09:
    """A validated batch: `buf` is exactly `batch_length` bytes, writable (unless parsed with
    `copy_readonly=False` from a read-only buffer); frame i is `buf[starts[i]:ends[i]]`
    (absolute positions, the first one 256)."""

    buf: memoryview
    count: int
    starts: np.ndarray
    ends: np.ndarray
    uniform_size: int  # the size of every frame when they are all one size, else 0

    def header(self) -> np.ndarray:
        """The batch header as a writable 1-element structured view (no copy)."""
        return np.frombuffer(self.buf, dtype=BATCH_HEADER_DTYPE, count=1)

    def frames(self) -> np.ndarray:
        """Every frame header as a structured array: a view when uniform, else a copy."""
        return _frame_headers(np.frombuffer(self.buf, dtype=np.uint8), self.starts, self.uniform_size)

    def _field(self, name: str) -> int:
        return int(self.header()[name][0])

    @property
    def partition_id(self) -> int:
        return self._field("partition_id")

    @property
    def base_offset(self) -> int:
        return self._field("base_offset")

    @property
    def base_timestamp(self) -> int:
        return self._field("base_timestamp")

    @property
    def origin_timestamp(self) -> int:
        return self._field("origin_timestamp")

    @property
    def batch_checksum(self) -> int:
        return self._field("batch_checksum")

    def offsets(self) -> np.ndarray:
        """Per-message offsets as the SDK derives them: base_offset + offset_delta (4.5)."""
        return np.uint64(self.base_offset) + self.frames()["offset_delta"].astype(np.uint64)

    def origin_timestamps(self) -> np.ndarray:
        """origin_timestamp + timestamp_delta (4.5); parse_batch proved it fits in u64."""
        return np.uint64(self.origin_timestamp) + self.frames()["timestamp_delta"].astype(np.uint64)

    def _payload_length(self, i: int) -> int:
        return int(_FRAME_LENGTHS.unpack_from(self.buf, int(self.starts[i]) + FRAME_LENGTHS_AT)[1])

    def payload(self, i: int) -> bytes:
        start = int(self.starts[i]) + FRAME_HEADER_SIZE
        return bytes(self.buf[start : start + self._payload_length(i)])

    def user_headers(self, i: int) -> bytes:
        """The raw user headers block of message i (4.4; payload comes first, 4.2)."""
        return bytes(
            self.buf[int(self.starts[i]) + FRAME_HEADER_SIZE + self._payload_length(i) : int(self.ends[i])]
        )


def _as_bytes_view(data: memoryview | bytes | bytearray) -> memoryview:
    mv = memoryview(data)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


def _frame_headers(a: np.ndarray, starts: np.ndarray, uniform_size: int) -> np.ndarray:
    if uniform_size and len(starts):
        # A structured view whose stride is the frame size: unaligned fields are fine in numpy.
        return np.ndarray(
            shape=(len(starts),),
            dtype=FRAME_HEADER_DTYPE,
            buffer=a,
            offset=int(starts[0]),
            strides=(uniform_size,),
        )
    rows = a[starts[:, None] + _COLS[:FRAME_HEADER_SIZE]]
    return rows.view(FRAME_HEADER_DTYPE)[:, 0]


def _gather_u64(a: np.ndarray, starts: np.ndarray, at: int, uniform_size: int) -> np.ndarray:
    """(n, 8) uint8 rows of one u64 field of every frame, contiguous (ready to hash)."""
    if uniform_size and len(starts):
        view = np.ndarray(
            shape=(len(starts), 8),
            dtype=np.uint8,
            buffer=a,
            offset=int(starts[0]) + at,
            strides=(uniform_size, 1),
        )
        return np.ascontiguousarray(view)
    return a[starts[:, None] + _COLS[at : at + 8]]


def _step(starts: np.ndarray) -> int:
    """The common distance of `starts` when they are evenly spaced (messages of one size
    back to back), else 0: then rows at them are one strided view, no gather."""
    if len(starts) < 2:
        return 1
    step = int(starts[1] - starts[0])
    return step if step > 0 and bool((np.diff(starts) == step).all()) else 0


def _rows(a: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """(n, width) bytes at each start: a strided view when evenly spaced, else a gather."""
    step = _step(starts)
    if step and len(starts):
        return np.ndarray(
            shape=(len(starts), width), dtype=np.uint8, buffer=a, offset=int(starts[0]), strides=(step, 1)
        )
    return a[starts[:, None] + _COLS[:width]]


def _put_rows(a: np.ndarray, starts: np.ndarray, rows: np.ndarray) -> None:
    """Write (n, width) bytes at each start of the writable `a`."""
    width = rows.shape[1]
    if _step(starts) and len(starts):
        _rows(a, starts, width)[...] = rows
    else:
        a[starts[:, None] + _COLS[:width]] = rows


def _walk_frames(mv: memoryview, start: int, end: int) -> tuple[np.ndarray, int]:
    """Frame starts from `start` by their length fields, and where the walk stopped.

    Sequential by nature (each start depends on the lengths of the frame before) and only
    taken for batches of mixed frame sizes. Bounded: every step advances at least 48 bytes.
    """
    native = _native
    if native is not None:
        raw, stopped = native.walk_frames(mv, start, end)
        return np.frombuffer(raw, dtype=np.int64), int(stopped)
    unpack = _FRAME_LENGTHS.unpack_from
    starts: list[int] = []
    pos = start
    while pos + FRAME_HEADER_SIZE <= end:
        user_headers, payload = unpack(mv, pos + FRAME_LENGTHS_AT)
        starts.append(pos)
        pos += FRAME_HEADER_SIZE + user_headers + payload
    return np.array(starts, dtype=np.int64), pos


def _tile(mv: memoryview, a: np.ndarray, end: int) -> tuple[np.ndarray, int] | None:
    """Frame starts and the uniform size (or 0) when the frames tile [256, end), else None."""
    area = end - BATCH_HEADER_SIZE
    if area < FRAME_HEADER_SIZE:
        return None
    first_lengths = _FRAME_LENGTHS.unpack_from(mv, BATCH_HEADER_SIZE + FRAME_LENGTHS_AT)
    size = FRAME_HEADER_SIZE + first_lengths[0] + first_lengths[1]
    if area % size == 0:
        # Guess that every frame is as big as the first; one strided comparison proves it, and
        # a walk from 256 would then visit exactly these starts (the tiling is unique).
        n = area // size
        lengths = np.ndarray(
            shape=(n, 2),
            dtype="<u4",
            buffer=a,
            offset=BATCH_HEADER_SIZE + FRAME_LENGTHS_AT,
            strides=(size, 4),
        )
        if bool((lengths.astype(np.int64).sum(axis=1) == size - FRAME_HEADER_SIZE).all()):
            return BATCH_HEADER_SIZE + np.arange(n, dtype=np.int64) * size, size
    starts, stopped = _walk_frames(mv, BATCH_HEADER_SIZE, end)
    if stopped != end:
        return None
    return starts, 0


def _frame_digests(mv: memoryview, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """XXH3-64 of bytes 8..end of every frame: one C loop when the kernel is built, else the
    reference path below (one xxhash call per frame; the two agree, see the tests)."""
    native = _native
    if native is not None and len(ends):
        out = np.empty(len(ends), dtype=np.uint64)
        native.digests(
            mv, np.ascontiguousarray(starts, dtype=np.int64), np.ascontiguousarray(ends, dtype=np.int64), out
        )
        return out
    return _frame_digests_reference(mv, starts, ends)


def _frame_digests_reference(mv: memoryview, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """REFERENCE PATH: XXH3-64 of bytes 8..end of every frame, one xxhash call per frame."""
    digest = xxhash.xxh3_64_intdigest
    firsts = (starts + FRAME_CHECKSUMMED_FROM).tolist()
    return np.array([digest(mv[s:e]) for s, e in zip(firsts, ends.tolist(), strict=True)], dtype=np.uint64)


def _first_bad_frame(mv: memoryview, a: np.ndarray, batch: Batch09) -> int:
    """Index of the first frame whose checksum is wrong, or -1."""
    native = _native
    spans = batch.ends - batch.starts
    if native is not None and bool((spans >= MESSAGE_HEADER_SIZE).all()):
        # The kernel's message rule (hash bytes 8..end, compare with bytes 0..8) is the 0.9
        # frame rule; its ends are relative to the first frame, where message 0 starts.
        rel_ends = np.ascontiguousarray(batch.ends - BATCH_HEADER_SIZE, dtype=np.int64)
        return int(native.checksums_verify(mv[BATCH_HEADER_SIZE:], rel_ends))
    stored = _gather_u64(a, batch.starts, 0, batch.uniform_size).view("<u8")[:, 0]
    bad = np.flatnonzero(_frame_digests(mv, batch.starts, batch.ends) != stored)
    return int(bad[0]) if bad.size else -1


def _batch_digest(header: np.ndarray, checksum_rows: np.ndarray) -> int:
    """XXH3-64 of partition_id..batch_length (bytes 0..40), message_count (48..52) and the
    stored frame checksums in order (4.2): one streaming hash, no per-message call."""
    h = xxhash.xxh3_64()
    h.update(np.ascontiguousarray(header[:BATCH_CHECKSUM_AT]).data)
    h.update(np.ascontiguousarray(header[MESSAGE_COUNT_AT : MESSAGE_COUNT_AT + 4]).data)
    h.update(np.ascontiguousarray(checksum_rows).data)
    return h.intdigest()


def batch_digest(batch: Batch09) -> int:
    """The batch checksum the header should hold, from its current fields and frames."""
    a = np.frombuffer(batch.buf, dtype=np.uint8)
    return _batch_digest(a[:BATCH_HEADER_SIZE], _gather_u64(a, batch.starts, 0, batch.uniform_size))


def parse_batch(
    buf: memoryview | bytes | bytearray,
    expected_count: int | None = None,
    *,
    dense_offsets: bool = True,
    verify_checksums: bool = True,
    allow_empty_payload: bool = False,
    copy_readonly: bool = True,
) -> Batch09:
    """Validate one batch (header + frames, exactly `buf`) as a whole; raise `BatchError`.

    `expected_count` is SendMessages' `messages_count` (4.3). `dense_offsets` requires the
    offset deltas 0, 1, 2, ... of a batch as sent (4.2); without it (poll records, 4.5) they
    must still rise by one from the first. Garbage gives a `BatchError`, never another
    exception: every length is bounded before a field is read at it. A read-only `buf` is
    copied once so that `stamp_batch` can write in place; with `copy_readonly=False` it is
    used as it is (checking only: the result's `buf` is then read-only).

    `allow_empty_payload` skips the empty-payload check (4024): 0.8 accepts empty payloads,
    and 0.8 messages are stored as 0.9 records.

    Checks, in order: size and batch_length (3), message_count >= 1 (4009), header reserved
    (4101), tiling (3) and frame count (4009), frame reserved (4101), payload and user header
    limits (4022, 4017, 4024), offset deltas (3), timestamp overflow (4038), frame checksums
    (4027), batch checksum (4039), `expected_count` (4009). The real server hashes first
    (4.3); here the cheap array checks come first, which only changes which code a batch that
    is wrong in two ways gets.
    """
    mv = _as_bytes_view(buf)
    if mv.nbytes < BATCH_HEADER_SIZE:
        raise BatchError(Status.INVALID_COMMAND, f"{mv.nbytes} bytes cannot hold a batch header")
    if mv.readonly and copy_readonly:
        mv = memoryview(bytearray(mv))
    a = np.frombuffer(mv, dtype=np.uint8)
    header = np.frombuffer(mv, dtype=BATCH_HEADER_DTYPE, count=1)[0]
    total = mv.nbytes
    if int(header["batch_length"]) != total:
        raise BatchError(Status.INVALID_COMMAND, f"batch_length {int(header['batch_length'])}, {total} bytes")
    count = int(header["message_count"])
    if count == 0:
        raise BatchError(Status.INVALID_MESSAGES_COUNT, "message_count 0")
    if bool(a[HEADER_RESERVED_AT:BATCH_HEADER_SIZE].any()):
        raise BatchError(Status.INVALID_RESERVED_FIELD, "batch header reserved bytes")
    tiled = _tile(mv, a, total)
    if tiled is None:
        raise BatchError(Status.INVALID_COMMAND, "frames do not tile the batch")
    starts, uniform = tiled
    if len(starts) != count:
        raise BatchError(Status.INVALID_MESSAGES_COUNT, f"message_count {count}, {len(starts)} frames")
    frames = _frame_headers(a, starts, uniform)
    payload = frames["payload_length"].astype(np.int64)
    user_headers = frames["user_headers_length"].astype(np.int64)
    ends = starts + FRAME_HEADER_SIZE + payload + user_headers
    if bool(frames["reserved"].any()):
        raise BatchError(Status.INVALID_RESERVED_FIELD, "frame reserved bytes")
    if bool((payload > MAX_PAYLOAD_BYTES).any()):
        raise BatchError(Status.TOO_BIG_MESSAGE_PAYLOAD)
    if bool((user_headers > MAX_USER_HEADERS_BYTES).any()):
        raise BatchError(Status.TOO_BIG_USER_HEADERS)
    if not allow_empty_payload and bool((payload == 0).any()):
        # Section 1.8: payloads are 1..64,000,000 bytes.
        raise BatchError(Status09.EMPTY_MESSAGE_PAYLOAD)
    deltas = frames["offset_delta"].astype(np.int64)
    first = int(deltas[0]) if not dense_offsets else 0
    if bool((deltas != first + np.arange(count, dtype=np.int64)).any()):
        # Not named by the reference (Appendix-C-like gap): offsets derive from the deltas,
        # so anything but consecutive deltas would give duplicate or missing offsets.
        raise BatchError(Status.INVALID_COMMAND, "offset deltas are not consecutive")
    if int(header["origin_timestamp"]) + int(frames["timestamp_delta"].max()) > U64_MAX:
        raise BatchError(Status09.INVALID_MESSAGE_TIMESTAMP_DELTA)
    batch = Batch09(buf=mv, count=count, starts=starts, ends=ends, uniform_size=uniform)
    if verify_checksums:
        bad = _first_bad_frame(mv, a, batch)
        if bad >= 0:
            raise BatchError(Status.INVALID_MESSAGE_CHECKSUM, f"frame {bad}")
        if batch_digest(batch) != int(header["batch_checksum"]):
            raise BatchError(Status09.INVALID_BATCH_CHECKSUM)
    if expected_count is not None and expected_count != count:
        raise BatchError(Status.INVALID_MESSAGES_COUNT, f"messages_count {expected_count}, batch {count}")
    return batch


def stamp_batch(batch: Batch09, partition_id: int, base_offset: int, base_timestamp_us: int) -> None:
    """Stamp what the server fills (4.7): partition_id, base_offset, base_timestamp, then the
    batch checksum over the stamped header (4.2). Frames are not touched: their checksums do
    not cover any of the three."""
    assert not batch.buf.readonly
    assert 0 <= partition_id <= U64_MAX and 0 <= base_timestamp_us <= U64_MAX
    assert base_offset >= 0 and base_offset + batch.count - 1 <= U64_MAX
    header = batch.header()
    header["partition_id"] = partition_id
    header["base_offset"] = base_offset
    header["base_timestamp"] = base_timestamp_us
    header["batch_checksum"] = batch_digest(batch)


_TLV_HEAD = struct.Struct("<BI")  # kind u8, length u32 (4.4)


def check_user_headers(batch: Batch09) -> None:
    """Check every message's user headers block against 4.4: TLVs `[kind u8][len u32][bytes]`,
    kinds non-zero (else 4040), lengths 1..=255, consumed exactly, an even number of TLVs
    (key, value pairs); else InvalidCommand (3), the reference naming no other code.

    Not part of `parse_batch`: the reference does not say the server checks this at
    admission, and a TLV chain is sequential, so this is a REFERENCE PATH with a Python step
    per TLV, over the messages that carry headers only. Unknown kinds (> 15) pass, as 4.4
    asks; the sizes of fixed-size kinds are not checked (4.4 does not say the server must).
    """
    frames = batch.frames()
    with_headers = np.flatnonzero(frames["user_headers_length"])
    if not with_headers.size:
        return
    block_starts = (batch.starts + FRAME_HEADER_SIZE + frames["payload_length"].astype(np.int64))[
        with_headers
    ]
    unpack = _TLV_HEAD.unpack_from
    mv = batch.buf
    for i, lo, hi in zip(
        with_headers.tolist(), block_starts.tolist(), batch.ends[with_headers].tolist(), strict=True
    ):
        pos, tlvs = lo, 0
        while pos < hi:
            if pos + _TLV_HEAD.size > hi:
                raise BatchError(Status.INVALID_COMMAND, f"message {i}: truncated user header")
            kind, length = unpack(mv, pos)
            if kind == 0:
                raise BatchError(Status09.INVALID_HEADER_KIND, f"message {i}: user header kind 0")
            pos += _TLV_HEAD.size + length
            if not 1 <= length <= 255 or pos > hi:
                raise BatchError(Status.INVALID_COMMAND, f"message {i}: user header length {length}")
            tlvs += 1
        if tlvs % 2:
            raise BatchError(Status.INVALID_COMMAND, f"message {i}: a user header key without value")


def parse_records(
    buf: memoryview | bytes | bytearray,
    *,
    verify_checksums: bool = True,
    allow_empty_payload: bool = False,
    copy_readonly: bool = True,
) -> list[Batch09]:
    """Split concatenated batch records (a poll reply's records, or stored batches) and parse
    each; one Python step per batch, none per message. `allow_empty_payload` and
    `copy_readonly` as in `parse_batch` (a read-only `buf` is copied once, not per record)."""
    mv = _as_bytes_view(buf)
    if mv.readonly and copy_readonly:
        mv = memoryview(bytearray(mv))
    out: list[Batch09] = []
    pos = 0
    while pos < mv.nbytes:
        if mv.nbytes - pos < BATCH_HEADER_SIZE:
            raise BatchError(Status.INVALID_COMMAND, f"{mv.nbytes - pos} trailing bytes")
        length = struct.unpack_from("<Q", mv, pos + _BH["batch_length"])[0]
        if length < BATCH_HEADER_SIZE or pos + length > mv.nbytes:
            raise BatchError(Status.INVALID_COMMAND, f"record at {pos} claims {length} bytes")
        record = mv[pos : pos + length]
        out.append(
            parse_batch(
                record,
                dense_offsets=False,
                verify_checksums=verify_checksums,
                allow_empty_payload=allow_empty_payload,
                copy_readonly=False,  # mv is writable already unless the caller said otherwise
            )
        )
        pos += length
    return out


# ---------------------------------------------------------------------------------------
# Building batches (the producer's side of 4.7), used by tests and by the conversions.


def _move_bodies(
    src: np.ndarray,
    src_starts: np.ndarray,
    src_header: int,
    dst: np.ndarray,
    dst_starts: np.ndarray,
    dst_header: int,
    body_lengths: np.ndarray,
) -> None:
    """Copy each message body (payload + user headers) from after its `src_header`-byte
    header at `src_starts` to after its `dst_header`-byte header at `dst_starts`.

    Messages of one size, back to back on both sides (the usual batch), make both sides
    (n, length) strided views: one 2-D copy at memcpy speed. Otherwise two boolean masks
    over the spanned bytes select the bodies in order on each side: still no message loop,
    but a few ns per byte.
    """
    n = len(src_starts)
    length = int(body_lengths[0])
    if bool((body_lengths == length).all()) and (
        n == 1
        or (
            bool((np.diff(src_starts) == src_header + length).all())
            and bool((np.diff(dst_starts) == dst_header + length).all())
        )
    ):
        shape = (n, length)
        view = np.ndarray(
            shape=shape,
            dtype=np.uint8,
            buffer=src,
            offset=int(src_starts[0]) + src_header,
            strides=(src_header + length, 1),
        )
        target = np.ndarray(
            shape=shape,
            dtype=np.uint8,
            buffer=dst,
            offset=int(dst_starts[0]) + dst_header,
            strides=(dst_header + length, 1),
        )
        target[...] = view
        return
    s_lo, s_hi = int(src_starts[0]), int(src_starts[-1]) + src_header + int(body_lengths[-1])
    d_lo, d_hi = int(dst_starts[0]), int(dst_starts[-1]) + dst_header + int(body_lengths[-1])
    keep = np.ones(s_hi - s_lo, dtype=bool)
    keep[(src_starts - s_lo)[:, None] + _COLS[:src_header]] = False
    free = np.ones(d_hi - d_lo, dtype=bool)
    free[(dst_starts - d_lo)[:, None] + _COLS[:dst_header]] = False
    dst[d_lo:d_hi][free] = src[s_lo:s_hi][keep]


def build_batch(
    ids: Sequence[int],
    payloads: Sequence[bytes],
    user_headers: Sequence[bytes],
    origin_timestamps: Sequence[int],
    *,
    partition_id: int = 0,
    base_offset: int = 0,
    base_timestamp: int = 0,
) -> bytearray:
    """One batch as a producer sends it (4.1, 4.2): deltas 0, 1, ..., origin_timestamp the
    minimum, every checksum computed. Takes Python sequences, so it is for tests and tools,
    not for the server's hot path."""
    n = len(payloads)
    assert n == len(ids) == len(user_headers) == len(origin_timestamps) and n >= 1
    origin = min(origin_timestamps)
    frames = np.zeros(n, dtype=FRAME_HEADER_DTYPE)
    frames["id_lo"] = [i & U64_MAX for i in ids]
    frames["id_hi"] = [i >> 64 for i in ids]
    frames["offset_delta"] = np.arange(n, dtype=np.uint32)
    deltas = [t - origin for t in origin_timestamps]
    if max(deltas) > U32_MAX:
        raise BatchError(Status09.INVALID_MESSAGE_TIMESTAMP_DELTA)  # section 1.8
    frames["timestamp_delta"] = deltas
    frames["payload_length"] = [len(p) for p in payloads]
    frames["user_headers_length"] = [len(h) for h in user_headers]
    spans = FRAME_HEADER_SIZE + frames["payload_length"].astype(np.int64) + frames["user_headers_length"]
    ends = BATCH_HEADER_SIZE + np.cumsum(spans)
    starts = ends - spans
    total = int(ends[-1])
    out = bytearray(total)
    a = np.frombuffer(out, dtype=np.uint8)
    bodies = np.frombuffer(b"".join(p + h for p, h in zip(payloads, user_headers, strict=True)), np.uint8)
    lengths = spans - FRAME_HEADER_SIZE
    _move_bodies(bodies, np.cumsum(lengths) - lengths, 0, a, starts, FRAME_HEADER_SIZE, lengths)
    _put_rows(a, starts, frames.view(np.uint8).reshape(n, FRAME_HEADER_SIZE))
    _finish(out, starts, ends, partition_id, base_offset, base_timestamp, origin)
    return out


def _finish(
    out: bytearray,
    starts: np.ndarray,
    ends: np.ndarray,
    partition_id: int,
    base_offset: int,
    base_timestamp: int,
    origin: int,
) -> None:
    """Write the batch header of a record whose frames are in place, and every checksum."""
    a = np.frombuffer(out, dtype=np.uint8)
    mv = memoryview(out)
    digests = _frame_digests(mv, starts, ends)
    _put_rows(a, starts, digests.astype("<u8").view(np.uint8).reshape(-1, 8))
    header = np.frombuffer(out, dtype=BATCH_HEADER_DTYPE, count=1)
    header["partition_id"] = partition_id
    header["base_offset"] = base_offset
    header["base_timestamp"] = base_timestamp
    header["origin_timestamp"] = origin
    header["batch_length"] = len(out)
    header["message_count"] = len(starts)
    header["batch_checksum"] = _batch_digest(a[:BATCH_HEADER_SIZE], _rows(a, starts, 8))


# ---------------------------------------------------------------------------------------
# Conversion between the stored 0.8 format (64-byte headers, 0.8 reference 4.1) and 0.9.


def v08_to_v09(
    buf: memoryview | bytes | bytearray,
    ends: np.ndarray,
    partition_id: int,
    batch_starts: np.ndarray | None = None,
) -> bytearray:
    """Stored 0.8 messages (`ends` as in `tidelog.wire.batch`) as concatenated 0.9 records.

    A record starts at every index in `batch_starts` (message 0 always does); by default
    wherever the broker timestamp changes or offsets stop being consecutive, since one 0.9
    batch has one base_timestamp and consecutive offsets (4.1, 4.5). Per record:
    base_offset = its first offset, base_timestamp = the shared timestamp, origin_timestamp =
    the minimum origin (what a producer writes, 4.1); frames keep id, payload, user headers
    and get fresh checksums (REFERENCE PATH: one xxhash call per frame). A record whose
    timestamps differ, or whose origin timestamps spread over more than u32 µs (1.8), raises
    `BatchError` (4038 for the spread); a caller passing garbage gets ValueError.
    """
    mv = _as_bytes_view(buf)
    ends = np.ascontiguousarray(ends, dtype=np.int64)
    native = _native
    if native is not None and batch_starts is None:
        converted = native.to_v09(mv, ends, partition_id)
        if isinstance(converted, int):
            raise BatchError(Status09(converted))
        return converted
    return _v08_to_v09_reference(mv, ends, partition_id, batch_starts)


def _v08_to_v09_reference(
    mv: memoryview, ends: np.ndarray, partition_id: int, batch_starts: np.ndarray | None
) -> bytearray:
    """REFERENCE PATH of `v08_to_v09` (numpy, with the digests kernel when built); the C
    `to_v09` gives the same bytes and errors (tests/unit/test_v09_batch.py)."""
    src = np.frombuffer(mv, dtype=np.uint8)
    n = len(ends)
    if n == 0:
        return bytearray()
    starts = np.concatenate(([0], ends[:-1]))
    spans = ends - starts
    if bool((spans < MESSAGE_HEADER_SIZE).any()) or int(ends[-1]) > mv.nbytes:
        raise ValueError("ends do not describe 0.8 messages within buf")
    hdr = np.ascontiguousarray(_rows(src, starts, MESSAGE_HEADER_SIZE)).view(MESSAGE_HEADER_DTYPE)[:, 0]
    filled = MESSAGE_HEADER_SIZE + hdr["payload_length"].astype(np.int64) + hdr["user_headers_length"]
    if bool((filled != spans).any()):
        raise ValueError("0.8 header lengths do not fill their spans")
    offsets, timestamps = hdr["offset"], hdr["timestamp"]
    if batch_starts is None:
        breaks = (timestamps[1:] != timestamps[:-1]) | (offsets[1:] != offsets[:-1] + np.uint64(1))
        firsts = np.concatenate(([0], np.flatnonzero(breaks) + 1)).astype(np.int64)
    else:
        firsts = np.unique(np.concatenate(([0], np.asarray(batch_starts, dtype=np.int64))))
        if int(firsts[-1]) >= n or int(firsts[0]) < 0:
            raise ValueError("batch_starts out of range")
    records = len(firsts)
    run = np.repeat(np.arange(records), np.diff(np.append(firsts, n)))  # record of each message
    first_of = firsts[run]
    if bool((timestamps != timestamps[first_of]).any()):
        raise BatchError(Status.INVALID_COMMAND, "one record, several broker timestamps")
    if bool((offsets != offsets[first_of] + (np.arange(n) - first_of).astype(np.uint64)).any()):
        raise BatchError(Status.INVALID_COMMAND, "one record, non-consecutive offsets")
    origins = hdr["origin_timestamp"]
    origin_min = np.minimum.reduceat(origins, firsts)
    deltas = origins - origin_min[run]
    if bool((deltas > U32_MAX).any()):
        raise BatchError(Status09.INVALID_MESSAGE_TIMESTAMP_DELTA)

    # Frame i moves back by 16 bytes per header before it and forward by 256 per record
    # header up to its own.
    size_change = FRAME_HEADER_SIZE - MESSAGE_HEADER_SIZE
    out_starts = starts + size_change * np.arange(n) + BATCH_HEADER_SIZE * (run + 1)
    out_ends = out_starts + spans + size_change
    total = int(out_ends[-1])
    out = bytearray(total)
    a = np.frombuffer(out, dtype=np.uint8)
    record_at = out_starts[firsts] - BATCH_HEADER_SIZE
    lasts = np.append(firsts[1:], n) - 1
    lengths = spans - MESSAGE_HEADER_SIZE
    for lo, hi in zip(firsts.tolist(), (lasts + 1).tolist(), strict=True):  # per record: one copy
        _move_bodies(
            src, starts[lo:hi], MESSAGE_HEADER_SIZE, a, out_starts[lo:hi], FRAME_HEADER_SIZE, lengths[lo:hi]
        )

    frames = np.zeros(n, dtype=FRAME_HEADER_DTYPE)
    frames["id_lo"], frames["id_hi"] = hdr["id_lo"], hdr["id_hi"]
    frames["offset_delta"] = np.arange(n) - first_of
    frames["timestamp_delta"] = deltas
    frames["user_headers_length"] = hdr["user_headers_length"]
    frames["payload_length"] = hdr["payload_length"]
    _put_rows(a, out_starts, frames.view(np.uint8).reshape(n, FRAME_HEADER_SIZE))
    digests = _frame_digests(memoryview(out), out_starts, out_ends)
    _put_rows(a, out_starts, digests.astype("<u8").view(np.uint8).reshape(n, 8))

    heads = np.zeros(records, dtype=BATCH_HEADER_DTYPE)
    heads["partition_id"] = partition_id
    heads["base_offset"] = offsets[firsts]
    heads["base_timestamp"] = timestamps[firsts]
    heads["origin_timestamp"] = origin_min
    heads["batch_length"] = out_ends[lasts] - record_at
    heads["message_count"] = np.diff(np.append(firsts, n))
    checksum_rows = _rows(a, out_starts, 8)
    head_bytes = heads.view(np.uint8).reshape(records, BATCH_HEADER_SIZE)
    for r in range(records):  # one hash per record, as for any batch
        lo, hi = int(firsts[r]), int(lasts[r]) + 1
        heads["batch_checksum"][r] = _batch_digest(head_bytes[r], checksum_rows[lo:hi])
    _put_rows(a, record_at, head_bytes)
    return out


def v09_to_v08(batches: Sequence[Batch09], *, checksums: bool = True) -> tuple[bytearray, np.ndarray]:
    """0.9 batches (parsed, e.g. by `parse_records`) as stored 0.8 messages and their ends.

    Per message (4.5): offset = base_offset + offset_delta, timestamp = base_timestamp,
    origin_timestamp = origin_timestamp + timestamp_delta; id, payload and user headers as
    they are; a fresh 0.8 checksum (by the C kernel when built; else REFERENCE PATH, one
    xxhash call per message). The partition id has no place in a 0.8 message and is dropped
    (it is the partition's own). Without `checksums` every checksum is left 0: for a batch the
    partition stamps anyway (offsets, timestamp, checksum), a hash per message saved.
    """
    size_change = MESSAGE_HEADER_SIZE - FRAME_HEADER_SIZE
    sizes = [batch.buf.nbytes - BATCH_HEADER_SIZE + size_change * batch.count for batch in batches]
    out = bytearray(sum(sizes))  # one buffer, written in place: no join copy
    mv = memoryview(out)
    all_ends: list[np.ndarray] = []
    base = 0
    for batch, size in zip(batches, sizes, strict=True):  # one step per batch, whole-batch inside
        all_ends.append(_one_v09_to_v08(batch, mv[base : base + size], checksums) + base)
        base += size
    return out, (np.concatenate(all_ends) if all_ends else np.empty(0, dtype=np.int64))


def _one_v09_to_v08(batch: Batch09, out: memoryview, checksums: bool) -> np.ndarray:
    """Write `batch` as 0.8 messages into `out` (exactly their size); return their ends."""
    n = batch.count
    spans = batch.ends - batch.starts
    size_change = MESSAGE_HEADER_SIZE - FRAME_HEADER_SIZE
    out_starts = batch.starts - BATCH_HEADER_SIZE + size_change * np.arange(n)
    out_ends = np.ascontiguousarray(out_starts + spans + size_change, dtype=np.int64)
    assert int(out_ends[-1]) == out.nbytes
    native = _native
    if native is not None:
        native.to_v08(
            batch.buf,
            np.ascontiguousarray(batch.starts, dtype=np.int64),
            np.ascontiguousarray(batch.ends, dtype=np.int64),
            out,
            batch.base_offset,
            batch.base_timestamp,
            batch.origin_timestamp,
            checksums,
        )
        return out_ends
    return _one_v09_to_v08_reference(batch, out, out_starts, out_ends, checksums)


def _one_v09_to_v08_reference(
    batch: Batch09, out: memoryview, out_starts: np.ndarray, out_ends: np.ndarray, checksums: bool
) -> np.ndarray:
    """REFERENCE PATH of `_one_v09_to_v08` (numpy); the C `to_v08` gives the same bytes."""
    n = batch.count
    src = np.frombuffer(batch.buf, dtype=np.uint8)
    frames = batch.frames()
    spans = batch.ends - batch.starts
    a = np.frombuffer(out, dtype=np.uint8)
    _move_bodies(
        src, batch.starts, FRAME_HEADER_SIZE, a, out_starts, MESSAGE_HEADER_SIZE, spans - FRAME_HEADER_SIZE
    )
    hdr = np.zeros(n, dtype=MESSAGE_HEADER_DTYPE)
    hdr["id_lo"], hdr["id_hi"] = frames["id_lo"], frames["id_hi"]
    hdr["offset"] = batch.offsets()
    hdr["timestamp"] = batch.base_timestamp
    hdr["origin_timestamp"] = batch.origin_timestamps()
    hdr["user_headers_length"] = frames["user_headers_length"]
    hdr["payload_length"] = frames["payload_length"]
    _put_rows(a, out_starts, hdr.view(np.uint8).reshape(n, MESSAGE_HEADER_SIZE))
    if not checksums:
        return out_ends  # the header rows above were written with checksum 0
    # Same rule as 0.8 (hash bytes 8..end), so the same reference helper serves.
    digests = _frame_digests(out, out_starts, out_ends)
    _put_rows(a, out_starts, digests.astype("<u8").view(np.uint8).reshape(n, 8))
    return out_ends


# ---------------------------------------------------------------------------------------
# Poll replies (4.5): which stored bytes answer an offset range.


@dataclass(slots=True, frozen=True)
class PollSlice:
    """A poll reply's records as pieces to send in order: `bytes` is a rewritten 256-byte
    batch header, `(lo, hi)` a byte range of the stored log sent unchanged."""

    pieces: list[bytes | tuple[int, int]]
    count: int
    first_offset: int


def poll_slice(
    log: memoryview | bytes | bytearray,
    batch_positions: np.ndarray,
    frame_ends: np.ndarray,
    first_offset: int,
    start: int,
    end: int,
) -> PollSlice:
    """The records answering offsets [start, end) from a log of back-to-back 0.9 records.

    `batch_positions[b]` is where record b's header lies in `log`; `frame_ends[j]` is where
    the frame of offset `first_offset + j` ends (the stored index, like 0.8's `.index`);
    records hold consecutive offsets in order. Whole records in the range are one byte range
    of the log; only the first and the last can be cut, and each cut gets a new header with
    the same base_offset, the slice's batch_length and message_count, and a batch checksum
    re-derived over it, so frames stay byte for byte as stored (4.5). Binary searches and a
    gather of the cut records' frame checksums: no Python step per message.
    """
    log_mv = _as_bytes_view(log)
    positions = np.ascontiguousarray(batch_positions, dtype=np.int64)
    frame_ends = np.ascontiguousarray(frame_ends, dtype=np.int64)
    stored = len(frame_ends)
    lo_off, hi_off = max(start, first_offset), min(end, first_offset + stored)
    if lo_off >= hi_off:
        return PollSlice(pieces=[], count=0, first_offset=lo_off)
    first_msg, last_msg = lo_off - first_offset, hi_off - first_offset - 1
    # First message of each record (and `stored` past the last): the first frame ending after
    # the record's header position.
    msg_first = np.append(np.searchsorted(frame_ends, positions, side="right"), stored)

    def record_of(j: int) -> int:
        return int(np.searchsorted(msg_first, j, side="right")) - 1

    def frame_start(j: int, b: int) -> int:
        return int(positions[b]) + BATCH_HEADER_SIZE if j == int(msg_first[b]) else int(frame_ends[j - 1])

    pieces: list[bytes | tuple[int, int]] = []

    def add_range(lo: int, hi: int) -> None:
        last = pieces[-1] if pieces else None
        if isinstance(last, tuple) and last[1] == lo:
            pieces[-1] = (last[0], hi)
        else:
            pieces.append((lo, hi))

    def emit(b: int, lo_msg: int, hi_msg: int) -> None:
        lo, hi = frame_start(lo_msg, b), int(frame_ends[hi_msg])
        if lo_msg == int(msg_first[b]) and hi_msg == int(msg_first[b + 1]) - 1:
            add_range(int(positions[b]), hi)  # uncut: the stored record as it is
            return
        at = int(positions[b])
        pieces.append(
            slice_record_head(
                log_mv[at : at + BATCH_HEADER_SIZE], log_mv[lo:hi], frame_ends[lo_msg : hi_msg + 1] - lo
            )
        )
        add_range(lo, hi)

    b0, b1 = record_of(first_msg), record_of(last_msg)
    emit(b0, first_msg, min(last_msg, int(msg_first[b0 + 1]) - 1))
    if b1 > b0 + 1:
        add_range(int(positions[b0 + 1]), int(positions[b1]))  # whole records between
    if b1 > b0:
        emit(b1, int(msg_first[b1]), last_msg)
    return PollSlice(pieces=pieces, count=hi_off - lo_off, first_offset=lo_off)


def slice_record_head(
    head: bytes | bytearray | memoryview, frames: bytes | bytearray | memoryview, frame_ends: np.ndarray
) -> bytes:
    """A stored record's 256-byte header `head` rewritten for a poll slice (4.5) made of the
    consecutive whole frames in `frames` (`frame_ends`: where each ends within `frames`, the
    first starting at 0): partition_id, base_offset, base_timestamp and origin_timestamp as
    they are, batch_length and message_count those of the slice, and the batch checksum
    re-derived over the new header and the frames' stored checksums (one gather, one hash).
    Frames are not touched, so their checksums stay valid. ValueError when `frame_ends` do
    not describe frames filling `frames`."""
    head_mv, frames_mv = _as_bytes_view(head), _as_bytes_view(frames)
    ends = np.ascontiguousarray(frame_ends, dtype=np.int64)
    if head_mv.nbytes < BATCH_HEADER_SIZE or not len(ends) or int(ends[-1]) != frames_mv.nbytes:
        raise ValueError("a slice needs a whole header and frame ends that fill the frames")
    starts = np.concatenate((np.zeros(1, dtype=np.int64), ends[:-1]))
    if bool((ends - starts < FRAME_HEADER_SIZE).any()):
        raise ValueError("frame ends leave no room for a frame header")
    header = np.frombuffer(head_mv, dtype=np.uint8, count=BATCH_HEADER_SIZE).copy()
    fields = header.view(BATCH_HEADER_DTYPE)
    fields["batch_length"] = BATCH_HEADER_SIZE + frames_mv.nbytes
    fields["message_count"] = len(ends)
    checksum_rows = _rows(np.frombuffer(frames_mv, dtype=np.uint8), starts, 8)
    fields["batch_checksum"] = _batch_digest(header, checksum_rows)
    return header.tobytes()


# ---------------------------------------------------------------------------------------
# The stored record log: stamped 0.9 records back to back, as a segment's log holds them.


class RecordHead(NamedTuple):
    """The header fields of a stored record that locate it in the log (4.1)."""

    base_offset: int
    base_timestamp: int
    length_bytes: int  # batch_length: header and frames
    messages: int  # message_count


# base_offset, base_timestamp, batch_length, message_count; the rest skipped (4.1).
_RECORD_HEAD = struct.Struct("<8xQQ8xQ8xI")
assert _RECORD_HEAD.size == HEADER_RESERVED_AT
_ZERO_RESERVED = bytes(BATCH_HEADER_SIZE - HEADER_RESERVED_AT)
_MAX_FRAME_BYTES = FRAME_HEADER_SIZE + MAX_PAYLOAD_BYTES + MAX_USER_HEADERS_BYTES


def record_head(data: bytes | bytearray | memoryview, at: int = 0) -> RecordHead | None:
    """The header fields of the record at `data[at:]`, or None when fewer than 256 bytes are
    there or the header is not plausible: message_count 0, reserved bytes non-zero, or a
    batch_length that cannot hold `count` frames within the limits (1.8). Says nothing of
    the frames: one unpack and one comparison of the reserved bytes, cheap enough to call
    at every candidate position of a damaged log."""
    mv = _as_bytes_view(data)
    if at < 0 or mv.nbytes - at < BATCH_HEADER_SIZE:
        return None
    base_offset, base_timestamp, length, count = _RECORD_HEAD.unpack_from(mv, at)
    if count == 0 or mv[at + HEADER_RESERVED_AT : at + BATCH_HEADER_SIZE] != _ZERO_RESERVED:
        return None
    if not FRAME_HEADER_SIZE * count <= length - BATCH_HEADER_SIZE <= count * _MAX_FRAME_BYTES:
        return None
    return RecordHead(base_offset, base_timestamp, length, count)


def _scan_records(
    mv: memoryview, verify: bool, first_offset: int | None, after_timestamp: int
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """`scan_records`, plus the index of each valid record's first message."""
    total = mv.nbytes
    ends_parts: list[np.ndarray] = []
    stamps: list[int] = []
    counts: list[int] = []
    pos = 0
    expected = first_offset
    previous = after_timestamp
    while True:  # one step per record; parse_batch is whole-record inside
        head = record_head(mv, pos)
        if head is None:
            break
        end = pos + head.length_bytes
        if end > total:
            break
        if expected is not None and head.base_offset != expected:
            break
        if head.base_timestamp <= previous or head.base_offset + head.messages - 1 > U64_MAX:
            break
        try:
            batch = parse_batch(
                mv[pos:end],
                dense_offsets=True,
                verify_checksums=verify,
                allow_empty_payload=True,
                copy_readonly=False,  # only checked: a read-only log is not copied
            )
        except BatchError:
            break
        ends_parts.append(batch.ends + pos)
        stamps.append(head.base_timestamp)
        counts.append(head.messages)
        pos = end
        expected = head.base_offset + head.messages
        previous = head.base_timestamp
    if not ends_parts:
        empty = np.empty(0, dtype=np.int64)
        return empty, np.empty(0, dtype=np.uint64), 0, empty
    record_counts = np.array(counts, dtype=np.int64)
    timestamps = np.repeat(np.array(stamps, dtype=np.uint64), record_counts)
    firsts = np.cumsum(record_counts) - record_counts
    return np.concatenate(ends_parts).astype(np.int64, copy=False), timestamps, pos, firsts


def scan_records(
    data: bytes | bytearray | memoryview,
    verify: bool,
    first_offset: int | None,
    after_timestamp: int = -1,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Walk whole stored records from `data[0]`; return (ends, timestamps, valid_bytes).

    Each record must have a plausible header (`record_head`), fit in `data`, parse as a
    batch with dense offset deltas (empty payloads allowed: stored 0.8 sends), with
    `verify` also pass its frame checksums and the batch checksum of its stamped header,
    start at the expected offset (`first_offset` for the first record, any when None; then
    the previous base_offset + count), and carry a base_timestamp strictly above the
    previous record's (the first: above `after_timestamp`). The walk stops at the first
    record that is incomplete or fails any of this, and never raises on garbage.

    `ends` (int64) has one entry per message: where its bytes end relative to `data[0]`, a
    record's first message spanning the record header and its frame. `timestamps` (uint64)
    has each message's timestamp, its record's base_timestamp. `valid_bytes` is where the
    last valid record ends (0 if none). A read-only `data` is not copied. One Python step
    per record, none per message.
    """
    ends, timestamps, valid, _ = _scan_records(_as_bytes_view(data), verify, first_offset, after_timestamp)
    return ends, timestamps, valid


def verify_records(
    data: bytes | bytearray | memoryview,
    relative_ends: np.ndarray,
    first_offset: int,
    timestamps: np.ndarray | None = None,
) -> int:
    """Check stored records against what the index says of them; -1 when all agree.

    `data` should be whole records starting at offset `first_offset`, whose messages end at
    `relative_ends` (relative to `data[0]`) and carry `timestamps` (when given). Returns -1
    when `scan_records(data, True, first_offset)` covers all of `data` and gives exactly
    these ends (and timestamps). Otherwise the index (counting messages from 0 in `data`)
    of the first message of the first record that is invalid or disagrees with the index:
    the record holding the first message whose scanned end or timestamp differs from the
    given one, or that only one side has. So when the scan stops early (damage, a partial
    record, trailing bytes), the first message past the last valid record; when the index
    stops inside a record, the first message of that record; when `data` holds whole
    records past the index's last message, `len(relative_ends)`. Every message before the
    result lies in whole valid records that the index describes exactly: the place to cut
    both at. One scan of `data` (checksums verified), then array comparisons.
    """
    mv = _as_bytes_view(data)
    ends, scanned_stamps, valid, firsts = _scan_records(mv, True, first_offset, -1)
    given = np.ascontiguousarray(relative_ends, dtype=np.int64)
    n = min(len(ends), len(given))
    differs = ends[:n] != given[:n]
    if timestamps is not None:
        stamps = np.asarray(timestamps)
        m = min(n, len(stamps))
        differs[:m] |= scanned_stamps[:m] != stamps[:m].astype(np.uint64)
        differs[m:] = True  # the index's timestamps stop short of its ends
    bad = np.flatnonzero(differs)
    first_bad = int(bad[0]) if bad.size else n
    if first_bad == len(ends) == len(given) and valid == mv.nbytes:
        return -1
    if first_bad >= len(ends):
        return len(ends)  # the scan stopped here: the next record is invalid or incomplete
    return int(firsts[int(np.searchsorted(firsts, first_bad, side="right")) - 1])


def records_to_v08(data: bytes | bytearray | memoryview) -> tuple[bytearray, np.ndarray]:
    """Concatenated stored records (possibly sliced, 4.5) as stored 0.8 messages (fresh 0.8
    checksums) and their ends: what a 0.8 poll reply carries. Checksums are not verified
    here (whoever read the records did); a read-only `data` is not copied. The C
    `records_v08` walks the records itself; the REFERENCE PATH parses each one and converts
    it with `v09_to_v08` (the tests hold both to the same bytes)."""
    native = _native
    if native is not None:
        try:
            out, ends = native.records_v08(data)
        except ValueError as exc:
            raise BatchError(Status.INVALID_COMMAND, str(exc)) from exc
        return out, np.frombuffer(ends, dtype=np.int64)
    return _records_to_v08_reference(data)


def file_records_to_v08(fd: int, offset: int, length: int, count: int) -> tuple[bytearray, np.ndarray, int]:
    """`records_to_v08` of the whole records stored at `fd[offset, offset + length)`, which
    hold `count` messages or fewer: (buffer, ends, size), the 0.8 messages being
    `buffer[:size]`. The C `file_records_v08` reads them into the reply buffer and converts
    them there in place, so the bytes are copied once (page cache to reply) instead of twice;
    the REFERENCE PATH reads them and converts them as `records_to_v08` does. OSError when
    the read fails, BatchError when the bytes read are not whole records."""
    native = _native
    if native is not None:
        try:
            out, ends, size = native.file_records_v08(fd, offset, length, count)
        except ValueError as exc:
            raise BatchError(Status.INVALID_COMMAND, str(exc)) from exc
        return out, np.frombuffer(ends, dtype=np.int64), size
    data = os.pread(fd, length, offset)
    if len(data) < length:
        raise BatchError(Status.INVALID_COMMAND, "file_records_to_v08: the file ends inside the range")
    converted, converted_ends = _records_to_v08_reference(data)
    return converted, converted_ends, len(converted)


def _records_to_v08_reference(data: bytes | bytearray | memoryview) -> tuple[bytearray, np.ndarray]:
    records = parse_records(data, verify_checksums=False, allow_empty_payload=True, copy_readonly=False)
    return v09_to_v08(records, checksums=True)


# The C `stamp` writes ids, offsets and timestamps of a 0.8 batch before its conversion (its
# 0.8 checksums are thrown away). Measured on the server's path (250 x 1000 B, zero ids, as
# 0.8 producers send them): 20 us a batch, against 160 us for `_unstamp_08`'s numpy calls, so
# it is taken whenever built; tests turn it off to hold the numpy path to the same bytes.
_C_STAMP_08 = True


def _unstamp_08(mv: memoryview, ends: np.ndarray, random_bytes: Callable[[int], bytes]) -> None:
    """What `tidelog.wire.batch.stamp(batch, 0, 0, random_bytes)` writes, without the 0.8
    checksums: a random UUIDv4 for every zero id (the same bytes asked for, the same bits
    set), offsets 0, 1, ... and timestamps 0."""
    n = len(ends)
    a = np.frombuffer(mv, dtype=np.uint8)
    starts = np.concatenate((np.zeros(1, dtype=np.int64), ends[:-1]))
    native = _native
    # The C count spares the gather in the usual case, producers setting ids.
    if native is None or native.zero_ids(mv, ends):
        id_starts = starts + ID_AT
        missing = ~_rows(a, id_starts, 16).any(axis=1)
        n_missing = int(missing.sum())
        if n_missing:
            _put_rows(a, id_starts[missing], batch08.random_uuids(random_bytes, n_missing))
    stamped = np.zeros((n, 2), dtype="<u8")  # offset, timestamp (0.8 reference 4.1)
    stamped[:, 0] = np.arange(n, dtype=np.uint64)
    _put_rows(a, starts + OFFSET_AT, stamped.view(np.uint8).reshape(n, 16))


def _converted_record(record: bytearray | memoryview, ends08: np.ndarray) -> Batch09:
    """The `Batch09` of a record `v08_to_v09` just built from 0.8 messages ending at `ends08`
    (one record): its frames are where the conversion put them, each 16 bytes shorter than
    its message, so nothing needs parsing again."""
    n = len(ends08)
    ends = BATCH_HEADER_SIZE + ends08 - (MESSAGE_HEADER_SIZE - FRAME_HEADER_SIZE) * np.arange(1, n + 1)
    starts = np.empty(n, dtype=np.int64)
    starts[0] = BATCH_HEADER_SIZE
    starts[1:] = ends[:-1]
    assert int(ends[-1]) == len(record)
    spans = ends - starts
    uniform = int(spans[0]) if bool((spans == spans[0]).all()) else 0
    return Batch09(buf=memoryview(record), count=n, starts=starts, ends=ends, uniform_size=uniform)


def record_in_place(
    room: memoryview,
    messages_at: int,
    ends: np.ndarray,
    random_bytes: Callable[[int], bytes],
    partition_id: int,
) -> Batch09 | None:
    """The 0.8 SendMessages batch at `room[messages_at:]` (messages ending at `ends`, relative
    to `messages_at`) rewritten in place as one record at `room[messages_at - 256:]`: what
    `record_from_v08` gives, without a new buffer (the request's index table before the
    messages is the room for the record header). C only: None without the kernel, with too
    little room, or when origin timestamps spread over u32 µs (then nothing was changed and
    `record_from_v08` on the messages does the rest)."""
    native = _native
    if native is None or messages_at < BATCH_HEADER_SIZE or room.readonly or not len(ends):
        return None
    ends = np.ascontiguousarray(ends, dtype=np.int64)
    messages = room[messages_at:]
    zeros = native.zero_ids(messages, ends)
    raw = random_bytes(16 * zeros) if zeros else None
    if native.send_v09(room, messages_at, ends, partition_id, raw):
        return None  # 4038: the caller cuts several records
    total = BATCH_HEADER_SIZE + int(ends[-1]) - (MESSAGE_HEADER_SIZE - FRAME_HEADER_SIZE) * len(ends)
    start = messages_at - BATCH_HEADER_SIZE
    return _converted_record(room[start : start + total], ends)


def record_from_v08(
    buf: memoryview, ends: np.ndarray, random_bytes: Callable[[int], bytes], partition_id: int
) -> list[Batch09]:
    """A 0.8 SendMessages batch as 0.9 records, ready for the partition to stamp: one
    record, unless origin timestamps spread over more than u32 µs (the reach of a frame's
    `timestamp_delta`, 4.2), which the 0.8 protocol allows: then as few records as keep each
    spread within it (a greedy cut, one Python step per message on that rare path only).

    `buf`/`ends` are unstamped 0.8 messages as `tidelog.wire.batch.parse_send_batch` gives
    them (writable; 64-byte headers). They are rewritten in place first, as
    `tidelog.wire.batch.stamp(batch, 0, 0, random_bytes)` does: zero ids get random UUIDv4s
    (`random_bytes` called once, for 16 bytes per zero id), offsets become 0, 1, ... and
    timestamps 0 whatever the client sent, so that `v08_to_v09` does not cut records there.
    That is the C `stamp` where built (`_C_STAMP_08`), else `_unstamp_08`. Each record has
    base_offset and base_timestamp 0, the given partition id,
    frame checksums and a batch checksum; `stamp_batch` then sets the real ones.
    """
    mv = _as_bytes_view(buf)
    ends = np.ascontiguousarray(ends, dtype=np.int64)
    if not len(ends):
        raise ValueError("a SendMessages batch holds at least one message")
    assert not mv.readonly
    if _native is not None and _C_STAMP_08:
        batch08.stamp(batch08.Batch(count=len(ends), buf=mv, ends=ends), 0, 0, random_bytes)
    else:
        _unstamp_08(mv, ends, random_bytes)
    try:
        record = v08_to_v09(mv, ends, partition_id)
    except BatchError as exc:
        if exc.status is not Status09.INVALID_MESSAGE_TIMESTAMP_DELTA:
            raise
    else:
        return [_converted_record(record, ends)]
    origins = batch08.header_u64(mv, ends, batch08.ORIGIN_TIMESTAMP_AT)
    starts, low, high = [0], int(origins[0]), int(origins[0])
    for i, origin in enumerate(origins.tolist()):
        low, high = min(low, origin), max(high, origin)
        if high - low > U32_MAX:
            starts.append(i)
            low = high = origin
    records = v08_to_v09(mv, ends, partition_id, np.array(starts, dtype=np.int64))
    return parse_records(records, verify_checksums=False, allow_empty_payload=True)

"""Reading stored messages that nothing vouches for, and keeping damaged bytes aside.

Shared by recovery (on open) and segments (at run time, when a poll meets bytes that fail
verification or an index that disagrees with its log). The log is the truth: every message
carries its own offset, lengths and checksum, so a walk over the headers (`scan_window`)
can rebuild an index, and a search for a valid header (`find_resumption`) can find where
good data starts again after a damaged range.

Two formats of log exist (`StoreFormat`), and a segment's file name says which one it holds
(`LogFormat.suffix`): `.rlog` holds stamped 0.9 batch records (what 0.9 polls return, the
format new segments get), `.log` the 0.8 messages with 64-byte headers that earlier releases
wrote (still read by both generations, and written when `system.store_format = "0.8"`).
Everything here works on *units*, the self-describing pieces of a log: a 0.8 message, or a
0.9 record (a 256-byte header and its frames). The index keeps one entry per message in both
(a record's first message spans its header too), and a record is the run of equal
timestamps in the index, since the partition stamps every record later than the one before
(`LogFormat.unit_bounds`). A unit's head carries its first offset, timestamp, size and
message count (`UnitHead`), so the index can always be rebuilt from the log.
"""

from __future__ import annotations

import struct
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tidelog.storage.io import File, FileIO
from tidelog.wire.batch import (
    INDEX_DTYPE,
    MESSAGE_HEADER,
    OFFSET_AT,
    TIMESTAMP_AT,
    header_u64,
    scan_messages,
    verify_stored,
)
from tidelog.wire.codes import MAX_PAYLOAD_BYTES, MAX_USER_HEADERS_BYTES, MESSAGE_HEADER_SIZE
from tidelog.wire.v09.batch import (
    BATCH_HEADER_SIZE,
    FRAME_HEADER_SIZE,
    record_head,
    scan_records,
    verify_records,
)

QUARANTINE_DIR = "quarantine"
# Scans and quarantine copies read this much at a time, so a huge or padded file never has
# to fit in memory at once (a single larger message still gets a window of its size).
SCAN_WINDOW_BYTES = 16 << 20
_U64 = struct.Struct("<Q")


class StoreFormat(StrEnum):
    """What a segment's log holds: named after the protocol generation whose poll replies
    it is, byte for byte."""

    V08 = "0.8"  # 0.8 messages, 64-byte headers (the 0.8 reference, 4.1)
    RECORDS = "0.9"  # stamped 0.9 batch records (the 0.9 reference, 4.1, 4.2)


class UnitHead(NamedTuple):
    """What the head of a unit (a 0.8 message or a 0.9 record) declares."""

    first_offset: int
    timestamp: int
    size_bytes: int
    messages: int


class LogFormat:
    """How to read one format of log without trusting it (see the module docstring)."""

    store_format: StoreFormat
    suffix: str
    unit: str  # what a unit is called in reports
    min_span_bytes: int  # the fewest bytes one message takes in the index
    head_bytes: int  # bytes at a unit's start that hold its head
    offset_at: int  # where a head holds its first offset (the resumption search)

    def head(self, data: bytes | memoryview, at: int = 0) -> UnitHead | None:
        """The head at `data[at:]`, or None when its fields are out of range."""
        raise NotImplementedError

    def scan(
        self, data: bytes | memoryview, verify: bool, first_offset: int | None, after_timestamp: int
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Valid whole units from data[0] (offsets from `first_offset`, timestamps above
        `after_timestamp` where the format needs it): (message ends, message timestamps,
        valid bytes)."""
        raise NotImplementedError

    def verify(
        self, data: bytes | memoryview, ends: np.ndarray, first_offset: int, timestamps: np.ndarray | None
    ) -> int:
        """First message (index into `ends`) of the first unit in `data` (whole units) that is
        not what the index (`ends`, `timestamps`) says, or -1."""
        raise NotImplementedError

    def unit_bounds(self, timestamps: np.ndarray, i: int) -> tuple[int, int]:
        """[first, end) of the unit holding message i, from the index's timestamps around it
        (`timestamps` must be non-decreasing)."""
        raise NotImplementedError

    def name(self, start_offset: int) -> str:
        return f"{start_offset:020}{self.suffix}"


class _V08Log(LogFormat):
    store_format = StoreFormat.V08
    suffix = ".log"
    unit = "message"
    min_span_bytes = MESSAGE_HEADER_SIZE
    head_bytes = MESSAGE_HEADER_SIZE
    offset_at = OFFSET_AT

    def head(self, data: bytes | memoryview, at: int = 0) -> UnitHead | None:
        fields = header_fields(data, at)
        return None if fields is None else UnitHead(*fields, 1)

    def scan(
        self, data: bytes | memoryview, verify: bool, first_offset: int | None, after_timestamp: int
    ) -> tuple[np.ndarray, np.ndarray, int]:
        # 0.8 messages carry their own timestamps; nothing infers units from them.
        ends, valid = scan_messages(data, verify, first_offset)
        return ends, header_u64(data, ends, TIMESTAMP_AT), valid

    def verify(
        self, data: bytes | memoryview, ends: np.ndarray, first_offset: int, timestamps: np.ndarray | None
    ) -> int:
        return verify_stored(data, ends, first_offset, timestamps)

    def unit_bounds(self, timestamps: np.ndarray, i: int) -> tuple[int, int]:
        return i, i + 1


class _RecordLog(LogFormat):
    store_format = StoreFormat.RECORDS
    suffix = ".rlog"
    unit = "record"
    min_span_bytes = FRAME_HEADER_SIZE
    head_bytes = BATCH_HEADER_SIZE
    offset_at = 8  # base_offset (0.9 reference, 4.1)

    def head(self, data: bytes | memoryview, at: int = 0) -> UnitHead | None:
        fields = record_head(data, at)
        if fields is None:
            return None
        return UnitHead(fields.base_offset, fields.base_timestamp, fields.length_bytes, fields.messages)

    def scan(
        self, data: bytes | memoryview, verify: bool, first_offset: int | None, after_timestamp: int
    ) -> tuple[np.ndarray, np.ndarray, int]:
        return scan_records(data, verify, first_offset, after_timestamp)

    def verify(
        self, data: bytes | memoryview, ends: np.ndarray, first_offset: int, timestamps: np.ndarray | None
    ) -> int:
        return verify_records(data, ends, first_offset, timestamps)

    def unit_bounds(self, timestamps: np.ndarray, i: int) -> tuple[int, int]:
        # The neighbours first: a poll usually starts at a record's first message and ends
        # at its last, and two scalar comparisons cost less than a search.
        ts = timestamps[i]
        first = int(timestamps.searchsorted(ts, side="left")) if i and timestamps[i - 1] == ts else i
        more = i + 1 < len(timestamps) and timestamps[i + 1] == ts
        return first, int(timestamps.searchsorted(ts, side="right")) if more else i + 1


V08_LOG: LogFormat = _V08Log()
RECORD_LOG: LogFormat = _RecordLog()
LOG_FORMATS: dict[StoreFormat, LogFormat] = {f.store_format: f for f in (V08_LOG, RECORD_LOG)}


def declared_size(data: bytes | memoryview, at: int = 0) -> int | None:
    """Size the 0.8 message header at `data[at:]` claims, if its length fields are in range."""
    if len(data) - at < MESSAGE_HEADER_SIZE:
        return None
    *_, user_headers, payload, reserved = MESSAGE_HEADER.unpack_from(data, at)
    if reserved or payload > MAX_PAYLOAD_BYTES or user_headers > MAX_USER_HEADERS_BYTES:
        return None
    return MESSAGE_HEADER_SIZE + payload + user_headers


def header_fields(data: bytes | memoryview, at: int = 0) -> tuple[int, int, int] | None:
    """(offset, timestamp, declared size) of the 0.8 header at `data[at:]`, or None when its
    length fields are out of range."""
    size = declared_size(data, at)
    if size is None:
        return None
    return _U64.unpack_from(data, at + OFFSET_AT)[0], _U64.unpack_from(data, at + TIMESTAMP_AT)[0], size


def read_head(fmt: LogFormat, log: File, position: int) -> UnitHead | None:
    return fmt.head(log.pread(fmt.head_bytes, position))


def unit_at(fmt: LogFormat, log: File, position: int, offset: int, limit: int) -> UnitHead | None:
    """The head of the valid unit whose first offset is `offset` at `position` (ending by
    `limit`), checksums included; None when there is none."""
    head = read_head(fmt, log, position)
    if head is None or head.first_offset != offset or position + head.size_bytes > limit:
        return None
    data = log.pread(head.size_bytes, position)
    _, _, valid = fmt.scan(data, True, offset, -1)
    return head if valid == head.size_bytes == len(data) else None


def scan_window(
    fmt: LogFormat, log: File, position: int, limit: int, offset: int, after_timestamp: int = -1
) -> tuple[np.ndarray, np.ndarray]:
    """Valid units (lengths, expected offsets from `offset`, checksums) from `position`,
    within one read window, as (absolute message ends, timestamps). Empty when the unit at
    `position` is invalid or incomplete below `limit`; call again from the last end to go on."""
    window = SCAN_WINDOW_BYTES
    while position + fmt.min_span_bytes <= limit:
        data = log.pread(min(window, limit - position), position)
        ends, timestamps, valid = fmt.scan(data, True, offset, after_timestamp)
        if not valid:
            head = fmt.head(data)
            need = None if head is None else head.size_bytes
            if need is None or need <= len(data) or position + need > limit:
                break
            window = need  # one unit larger than the window
            continue
        return ends + position, timestamps
    return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.uint64)


def scan_log(
    fmt: LogFormat, log: File, position: int, limit: int, offset: int, after_timestamp: int = -1
) -> tuple[np.ndarray, np.ndarray]:
    """Every valid unit's messages from `position` up to the first invalid one (or `limit`)."""
    ends_parts: list[np.ndarray] = []
    timestamp_parts: list[np.ndarray] = []
    while True:
        ends, timestamps = scan_window(fmt, log, position, limit, offset, after_timestamp)
        if not len(ends):
            break
        ends_parts.append(ends)
        timestamp_parts.append(timestamps)
        position = int(ends[-1])
        offset += len(ends)
        after_timestamp = int(timestamps[-1])
    if not ends_parts:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.uint64)
    return np.concatenate(ends_parts), np.concatenate(timestamp_parts)


def find_resumption(
    fmt: LogFormat, log: File, position: int, limit: int, min_offset: int, max_offset: int
) -> tuple[int, int] | None:
    """The first byte after `position` (and below `limit`) where a valid unit starts
    whose first offset lies in [min_offset, max_offset], as (offset, position); None if none.

    For damage the index cannot help with: the head carries its own offset, so candidates
    are the positions whose offset field is in range (found with numpy, eight alignments at
    a time), and the checksums confirm one."""
    head_bytes = fmt.head_bytes
    at = position + 1
    while at + head_bytes <= limit:
        data = log.pread(min(SCAN_WINDOW_BYTES, limit - at), at)
        n = len(data)
        if n < head_bytes:
            return None
        a = np.frombuffer(data, dtype=np.uint8)
        candidates: list[np.ndarray] = []
        for r in range(8):
            usable = (n - r) // 8
            values = a[r : r + 8 * usable].view("<u8")
            hits = np.flatnonzero((values >= min_offset) & (values <= max_offset))
            starts = r + 8 * hits - fmt.offset_at
            candidates.append(starts[(starts >= 0) & (starts + head_bytes <= n)])
        mv = memoryview(data)
        for p in np.sort(np.concatenate(candidates)).tolist():
            head = fmt.head(mv, p)
            if head is None:
                continue
            size = head.size_bytes
            if p + size <= n:
                if fmt.scan(mv[p : p + size], True, head.first_offset, -1)[2] == size:
                    return head.first_offset, at + p
            elif at + p + size <= limit and unit_at(fmt, log, at + p, head.first_offset, limit) is not None:
                return head.first_offset, at + p
        if at + n >= limit:
            return None
        # Overlap by one head less a byte, so a head across the window edge is seen.
        at += n - head_bytes + 1
    return None


def index_rows(ends: np.ndarray, timestamps: np.ndarray, first_relative: int) -> np.ndarray:
    rows = np.empty(len(ends), dtype=INDEX_DTYPE)
    rows["offset"] = np.arange(first_relative, first_relative + len(ends), dtype=np.uint32)
    rows["position"] = ends
    rows["timestamp"] = timestamps
    return rows


def quarantine_path(io: FileIO, directory: Path, name: str, reason: str) -> Path:
    folder = directory / QUARANTINE_DIR
    io.makedirs(folder)
    n = 0
    while io.exists(folder / f"{name}.{reason}-{n}"):
        n += 1
    return folder / f"{name}.{reason}-{n}"


def quarantine_copy(io: FileIO, directory: Path, name: str, log: File, lo: int, hi: int, reason: str) -> Path:
    """Copy bytes [lo, hi) of `log` (named `name`) to `quarantine/{name}.{reason}-{n}`,
    durably; the caller may then remove them from the log."""
    assert 0 <= lo < hi
    path = quarantine_path(io, directory, name, reason)
    out = io.open(path)
    try:
        done = 0
        while lo + done < hi:
            chunk = log.pread(min(SCAN_WINDOW_BYTES, hi - lo - done), lo + done)
            if not chunk:
                break
            out.pwrite(chunk, done)
            done += len(chunk)
        out.fdatasync()
    finally:
        out.close()
    io.fsync_dir(path.parent)
    return path

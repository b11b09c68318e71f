"""Reading stored messages that nothing vouches for, and keeping damaged bytes aside.

Shared by recovery (on open) and segments (at run time, when a poll meets bytes that fail
verification or an index that disagrees with its log). The log is the truth: every message
carries its own offset, lengths and checksum, so a walk over the headers (`scan_window`)
can rebuild an index, and a search for a valid header (`find_resumption`) can find where
good data starts again after a damaged range.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from tidelog.storage.io import File, FileIO
from tidelog.wire.batch import INDEX_DTYPE, MESSAGE_HEADER, OFFSET_AT, TIMESTAMP_AT, header_u64, scan_messages
from tidelog.wire.codes import MAX_PAYLOAD_BYTES, MAX_USER_HEADERS_BYTES, MESSAGE_HEADER_SIZE

QUARANTINE_DIR = "quarantine"
# Scans and quarantine copies read this much at a time, so a huge or padded file never has
# to fit in memory at once (a single larger message still gets a window of its size).
SCAN_WINDOW_BYTES = 16 << 20
_U64 = struct.Struct("<Q")


def declared_size(data: bytes | memoryview, at: int = 0) -> int | None:
    """Size the message header at `data[at:]` claims, if its length fields are in range."""
    if len(data) - at < MESSAGE_HEADER_SIZE:
        return None
    *_, user_headers, payload, reserved = MESSAGE_HEADER.unpack_from(data, at)
    if reserved or payload > MAX_PAYLOAD_BYTES or user_headers > MAX_USER_HEADERS_BYTES:
        return None
    return MESSAGE_HEADER_SIZE + payload + user_headers


def header_fields(data: bytes | memoryview, at: int = 0) -> tuple[int, int, int] | None:
    """(offset, timestamp, declared size) of the header at `data[at:]`, or None when its
    length fields are out of range."""
    size = declared_size(data, at)
    if size is None:
        return None
    return _U64.unpack_from(data, at + OFFSET_AT)[0], _U64.unpack_from(data, at + TIMESTAMP_AT)[0], size


def message_ok(log: File, offset: int, position: int, end: int) -> bool:
    """Whether bytes [position, end) of `log` are exactly one valid message with `offset`."""
    data = log.pread(end - position, position)
    scanned, valid = scan_messages(data, True, offset)
    return len(scanned) == 1 and valid == len(data) == end - position


def scan_window(log: File, position: int, limit: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Valid messages (lengths, expected offsets from `offset`, checksums) from `position`,
    within one read window, as (absolute ends, timestamps). Empty when the message at
    `position` is invalid or incomplete below `limit`; call again from the last end to go on."""
    window = SCAN_WINDOW_BYTES
    while position + MESSAGE_HEADER_SIZE <= limit:
        data = log.pread(min(window, limit - position), position)
        ends, valid = scan_messages(data, True, offset)
        if not valid:
            need = declared_size(data)
            if need is None or need <= len(data) or position + need > limit:
                break
            window = need  # one message larger than the window
            continue
        return ends + position, header_u64(data, ends, TIMESTAMP_AT)
    return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.uint64)


def scan_log(log: File, position: int, limit: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Every valid message from `position` up to the first invalid one (or `limit`)."""
    ends_parts: list[np.ndarray] = []
    timestamp_parts: list[np.ndarray] = []
    while True:
        ends, timestamps = scan_window(log, position, limit, offset)
        if not len(ends):
            break
        ends_parts.append(ends)
        timestamp_parts.append(timestamps)
        position = int(ends[-1])
        offset += len(ends)
    if not ends_parts:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.uint64)
    return np.concatenate(ends_parts), np.concatenate(timestamp_parts)


def find_resumption(
    log: File, position: int, limit: int, min_offset: int, max_offset: int
) -> tuple[int, int] | None:
    """The first byte after `position` (and below `limit`) where a valid message starts
    whose offset lies in [min_offset, max_offset], as (offset, position); None if none.

    For damage the index cannot help with: the header carries its own offset, so
    candidates are the positions whose offset field is in range (found with numpy, eight
    alignments at a time), and the checksum confirms one."""
    at = position + 1
    while at + MESSAGE_HEADER_SIZE <= limit:
        data = log.pread(min(SCAN_WINDOW_BYTES, limit - at), at)
        n = len(data)
        if n < MESSAGE_HEADER_SIZE:
            return None
        a = np.frombuffer(data, dtype=np.uint8)
        candidates: list[np.ndarray] = []
        for r in range(8):
            usable = (n - r) // 8
            values = a[r : r + 8 * usable].view("<u8")
            hits = np.flatnonzero((values >= min_offset) & (values <= max_offset))
            starts = r + 8 * hits - OFFSET_AT
            candidates.append(starts[(starts >= 0) & (starts + MESSAGE_HEADER_SIZE <= n)])
        mv = memoryview(data)
        for p in np.sort(np.concatenate(candidates)).tolist():
            fields = header_fields(mv, p)
            if fields is None:
                continue
            offset, _, size = fields
            if p + size <= n:
                if len(scan_messages(mv[p : p + size], True, offset)[0]) == 1:
                    return offset, at + p
            elif at + p + size <= limit and message_ok(log, offset, at + p, at + p + size):
                return offset, at + p
        if at + n >= limit:
            return None
        # Overlap by one header less a byte, so a header across the window edge is seen.
        at += n - MESSAGE_HEADER_SIZE + 1
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

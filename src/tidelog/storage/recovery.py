"""Open-time checks of a partition's segments. The log is the truth; indexes are caches.

For each `{start:020}.log`, in name order:

1. The `.index` entries are taken while they are sane: relative offsets dense from 0, end
   positions rising by at least one header and within the physical .log length. A missing,
   short, torn or insane index simply yields a shorter prefix.
2. The last indexed message is read and checked (lengths, offset, checksum). If it does not
   match, the index is distrusted and rebuilt from byte 0. With `verify_checksums` the whole
   indexed range is rescanned and the index is cut at the first message that fails.
3. The bytes after the last indexed message are always scanned with checksums and expected
   offsets (`scan_messages`), so messages written before a crash that lost their index
   entries come back, and a torn or zeroed tail ends the scan.
4. Whatever follows the last valid message is cut from the .log. The cut bytes are first
   copied to `quarantine/{segment}.log.{reason}-{n}`; nothing is dropped silently. The
   physical length is only an upper bound (a padded O_DIRECT file is longer than its data).
5. The .index is rewritten when it differs from what the log proved.

Then the chain: segments must follow one another (next start = previous end + 1). An empty
segment is kept only as the last one and only where the chain expects it; other empty ones
are strays and are removed. When a segment overlaps the next one, the earlier one is cut
back (cut bytes quarantined) since the later name claims those offsets. A gap is reported and
kept: those offsets are simply absent, as if deleted by retention. A partition with no
segment left gets an empty one at offset 0.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tidelog.storage.io import File, FileIO
from tidelog.storage.segment import (
    INDEX_SUFFIX,
    LOG_SUFFIX,
    Segment,
    index_name,
    log_name,
    parse_segment_name,
)
from tidelog.wire.batch import INDEX_DTYPE, TIMESTAMP_AT, header_u64, scan_messages
from tidelog.wire.codes import (
    INDEX_ENTRY_SIZE,
    MAX_PAYLOAD_BYTES,
    MAX_USER_HEADERS_BYTES,
    MESSAGE_HEADER_SIZE,
)

QUARANTINE_DIR = "quarantine"
# Tail scans and quarantine copies read this much at a time, so a huge or padded file never
# has to fit in memory at once (a single larger message still gets a window of its size).
SCAN_WINDOW_BYTES = 16 << 20
_LENGTHS = struct.Struct("<IIQ")


@dataclass
class RecoveryReport:
    segments: int = 0
    messages: int = 0
    truncated_bytes: int = 0
    rebuilt_indexes: int = 0
    quarantined: list[Path] = field(default_factory=list)
    # One human-readable line per anomaly found (for the server log).
    problems: list[str] = field(default_factory=list)


@dataclass
class _Found:
    start: int
    log: File
    index: File
    ends: np.ndarray  # int64 end positions, as the log proved them
    timestamps: np.ndarray  # uint64

    @property
    def next_offset(self) -> int:
        return self.start + len(self.ends)


def recover(io: FileIO, directory: Path, verify_checksums: bool) -> tuple[list[Segment], RecoveryReport]:
    """Check and repair the segments under `directory`; return them oldest first (the last
    one is the active segment, the others are sealed) with a report of what was done."""
    report = RecoveryReport()
    names = io.listdir(directory)
    log_starts = sorted(s for n in names if (s := parse_segment_name(n, LOG_SUFFIX)) is not None)
    index_starts = {s for n in names if (s := parse_segment_name(n, INDEX_SUFFIX)) is not None}
    for orphan in sorted(index_starts - set(log_starts)):
        # An index is a cache of a log; without its log it describes nothing.
        io.unlink(directory / index_name(orphan))
        report.problems.append(f"{index_name(orphan)}: no .log beside it, removed")

    found = [
        _recover_segment(io, directory, s, s in index_starts, verify_checksums, report) for s in log_starts
    ]
    chain = _chain(io, directory, found, report)
    if chain:
        segments = [Segment(io, directory, f.start, f.log, f.index, f.ends, f.timestamps) for f in chain]
    else:
        segments = [Segment.create(io, directory, 0)]
    for seg in segments[:-1]:
        seg.seal()
    report.segments = len(segments)
    report.messages = sum(seg.messages_count for seg in segments)
    return segments, report


def _recover_segment(
    io: FileIO, directory: Path, start: int, has_index: bool, verify_checksums: bool, report: RecoveryReport
) -> _Found:
    name = log_name(start)
    log = io.open(directory / name)
    index = io.open(directory / index_name(start))
    physical_bytes = log.size()
    raw = index.pread(index.size(), 0)
    n_raw = len(raw) // INDEX_ENTRY_SIZE
    entries = np.frombuffer(raw, dtype=INDEX_DTYPE, count=n_raw)
    k = _sane_prefix(entries, physical_bytes)
    ends = entries["position"][:k].astype(np.int64)
    timestamps = entries["timestamp"][:k].astype(np.uint64)
    if not has_index:
        report.problems.append(f"{name}: index missing, rebuilding from the log")
    elif k < n_raw or len(raw) % INDEX_ENTRY_SIZE:
        report.problems.append(f"{name}: index sane for {k} of {n_raw} entries")

    if k and not _message_ok(log, start + k - 1, int(ends[k - 2]) if k > 1 else 0, int(ends[k - 1])):
        report.problems.append(f"{name}: last indexed message does not match the log, rebuilding index")
        k = 0
    if k and verify_checksums:
        scanned, _ = scan_messages(log.pread(int(ends[k - 1]), 0), True, start)
        agree = _common_prefix(scanned, ends[:k])
        if agree < k:
            report.problems.append(f"{name}: message {start + agree} fails its checksum or header check")
            k = agree
    ends, timestamps = ends[:k], timestamps[:k]

    tail_ends, tail_timestamps = _scan_tail(log, int(ends[-1]) if k else 0, physical_bytes, start + k)
    if len(tail_ends):
        ends = np.concatenate([ends, tail_ends])
        timestamps = np.concatenate([timestamps, tail_timestamps])

    logical_bytes = int(ends[-1]) if len(ends) else 0
    changed = False
    if logical_bytes < physical_bytes:
        _cut_log(io, directory, start, log, logical_bytes, physical_bytes, "torn", report)
        changed = True
    if not has_index or len(raw) != len(ends) * INDEX_ENTRY_SIZE or k < n_raw:
        rows = _index_rows(ends[k:], timestamps[k:], k)
        if len(rows):
            index.pwrite(rows.data, k * INDEX_ENTRY_SIZE)
        index.truncate(len(ends) * INDEX_ENTRY_SIZE)
        report.rebuilt_indexes += 1
        changed = True
    if changed:
        log.fdatasync()
        index.fdatasync()
    return _Found(start, log, index, ends, timestamps)


def _sane_prefix(entries: np.ndarray, physical_bytes: int) -> int:
    """How many leading entries are dense, rising and inside the log."""
    n = len(entries)
    if not n:
        return 0
    relative = entries["offset"].astype(np.int64)
    positions = entries["position"].astype(np.int64)
    previous = np.concatenate([np.zeros(1, dtype=np.int64), positions[:-1]])
    ok = (
        (relative == np.arange(n, dtype=np.int64))
        & (positions - previous >= MESSAGE_HEADER_SIZE)
        & (positions <= physical_bytes)
    )
    return n if bool(ok.all()) else int(np.argmin(ok))


def _message_ok(log: File, offset: int, position: int, end: int) -> bool:
    data = log.pread(end - position, position)
    scanned, valid = scan_messages(data, True, offset)
    return len(scanned) == 1 and valid == len(data) == end - position


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    m = min(len(a), len(b))
    differ = np.flatnonzero(a[:m] != b[:m])
    return int(differ[0]) if differ.size else m


def _declared_size(data: bytes) -> int | None:
    """Size a message header at the start of `data` claims, if its fields are in range."""
    if len(data) < MESSAGE_HEADER_SIZE:
        return None
    user_headers, payload, reserved = _LENGTHS.unpack_from(data, 48)
    if reserved or payload > MAX_PAYLOAD_BYTES or user_headers > MAX_USER_HEADERS_BYTES:
        return None
    return MESSAGE_HEADER_SIZE + payload + user_headers


def _scan_tail(log: File, position: int, physical_bytes: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Messages after `position` that pass every check, as (absolute ends, timestamps)."""
    ends_parts: list[np.ndarray] = []
    timestamp_parts: list[np.ndarray] = []
    window = SCAN_WINDOW_BYTES
    while position + MESSAGE_HEADER_SIZE <= physical_bytes:
        data = log.pread(min(window, physical_bytes - position), position)
        ends, valid = scan_messages(data, True, offset)
        if not valid:
            need = _declared_size(data)
            if need is None or need <= len(data) or position + need > physical_bytes:
                break
            window = need  # one message larger than the window
            continue
        ends_parts.append(ends + position)
        timestamp_parts.append(header_u64(data, ends, TIMESTAMP_AT))
        position += valid
        offset += len(ends)
        window = SCAN_WINDOW_BYTES
    if not ends_parts:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.uint64)
    return np.concatenate(ends_parts), np.concatenate(timestamp_parts)


def _index_rows(ends: np.ndarray, timestamps: np.ndarray, first_relative: int) -> np.ndarray:
    rows = np.empty(len(ends), dtype=INDEX_DTYPE)
    rows["offset"] = np.arange(first_relative, first_relative + len(ends), dtype=np.uint32)
    rows["position"] = ends
    rows["timestamp"] = timestamps
    return rows


def _quarantine_path(io: FileIO, directory: Path, start: int, reason: str) -> Path:
    folder = directory / QUARANTINE_DIR
    io.makedirs(folder)
    n = 0
    while io.exists(folder / f"{log_name(start)}.{reason}-{n}"):
        n += 1
    return folder / f"{log_name(start)}.{reason}-{n}"


def _cut_log(
    io: FileIO,
    directory: Path,
    start: int,
    log: File,
    keep_bytes: int,
    end_bytes: int,
    reason: str,
    report: RecoveryReport,
) -> None:
    """Copy log bytes [keep_bytes, end_bytes) aside, durably, then truncate the log."""
    assert 0 <= keep_bytes < end_bytes
    path = _quarantine_path(io, directory, start, reason)
    out = io.open(path)
    try:
        done = 0
        while keep_bytes + done < end_bytes:
            chunk = log.pread(min(SCAN_WINDOW_BYTES, end_bytes - keep_bytes - done), keep_bytes + done)
            if not chunk:
                break
            out.pwrite(chunk, done)
            done += len(chunk)
        out.fdatasync()
    finally:
        out.close()
    io.fsync_dir(path.parent)
    # Only now may the bytes leave the log: a crash before this line cuts them again later.
    log.truncate(keep_bytes)
    report.truncated_bytes += end_bytes - keep_bytes
    report.quarantined.append(path)
    report.problems.append(
        f"{log_name(start)}: cut {end_bytes - keep_bytes} bytes at {keep_bytes} ({reason})"
    )


def _chain(io: FileIO, directory: Path, found: list[_Found], report: RecoveryReport) -> list[_Found]:
    kept: list[_Found] = []
    for i, seg in enumerate(found):
        if not len(seg.ends):
            expected = kept[-1].next_offset if kept else seg.start
            if i == len(found) - 1 and seg.start == expected:
                kept.append(seg)
                continue
            # Any bytes it had were quarantined above; the empty files say nothing.
            seg.log.close()
            seg.index.close()
            io.unlink(directory / log_name(seg.start))
            io.unlink(directory / index_name(seg.start))
            report.problems.append(f"{log_name(seg.start)}: stray empty segment, removed")
            continue
        if kept:
            prev = kept[-1]
            if seg.start < prev.next_offset:
                keep = seg.start - prev.start
                assert keep >= 1
                _cut_log(
                    io,
                    directory,
                    prev.start,
                    prev.log,
                    int(prev.ends[keep - 1]),
                    int(prev.ends[-1]),
                    "overlap",
                    report,
                )
                prev.ends, prev.timestamps = prev.ends[:keep], prev.timestamps[:keep]
                prev.index.truncate(keep * INDEX_ENTRY_SIZE)
                prev.log.fdatasync()
                prev.index.fdatasync()
            elif seg.start > prev.next_offset:
                report.problems.append(f"offsets {prev.next_offset}..{seg.start - 1} are missing (gap)")
        kept.append(seg)
    return kept

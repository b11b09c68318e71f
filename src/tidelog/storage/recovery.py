"""Open-time checks of a partition's segments. The log is the truth; indexes are caches.

For each segment log, `{start:020}.rlog` (0.9 records) or `{start:020}.log` (0.8 messages),
in offset order (the checks below work on the log's units: see `integrity.LogFormat`):

1. The `.index` entries are taken while they are sane: relative offsets dense from 0, end
   positions rising by at least one header and within the physical .log length. A missing,
   short, torn or insane index simply yields a shorter prefix. That prefix is what the index
   vouches for: its messages were complete in the log before their entries were written.
2. The entries are checked against the log. By default cheaply: timestamps must not go
   down, and the headers of the first, the last and a sample of entries must declare the
   offset, length and timestamp the index gives (the last message is also checksummed).
   With `verify_checksums` every message is verified (lengths, offset, timestamp, checksum;
   vectorized, a window at a time). From the first entry that fails, the log is read
   instead, with checksums and expected offsets (`scan_window`), until it agrees with the
   index again: a damaged index is rebuilt from the log.
3. A message that fails inside the range the index vouches for is damage, not a torn
   write: only the damaged range is cut out. Good data resumes at the next index entry whose
   message verifies, or failing that at the next valid header carrying a later offset
   (`find_resumption`). The damaged bytes are copied to `quarantine/`, the segment is split
   there: the messages before stay in the file, those after move to a new segment named by
   their first offset, and the missing offsets are reported as a gap.
4. After the last indexed message the bytes are always scanned with checksums, so messages
   written before a crash that lost their index entries come back. What follows the last
   valid message is a torn or zeroed tail: it is cut from the .log after being copied to
   `quarantine/{segment log name}.{reason}-{n}`; nothing is dropped silently. The physical length
   is only an upper bound (a padded O_DIRECT file is longer than its data).
5. The .index is rewritten from the first entry that differs from what the log proved.

Then the chain: segments must follow one another (next start = previous end + 1). An empty
segment is kept only as the last one and only where the chain expects it; other empty ones
are strays and are removed. When a segment overlaps the next one, the earlier one is cut
back (cut bytes quarantined) since the later name claims those offsets. A gap is reported and
kept: those offsets are simply absent, as if deleted by retention. A partition with no
segment left gets an empty one at offset 0.

Segments are checked one at a time and every sealed one keeps only O(1) state (its index
columns are offered to the `IndexCache`), so recovery's memory is bounded by the largest
segment, not by the partition.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tidelog.storage.index_cache import IndexCache
from tidelog.storage.integrity import (
    LOG_FORMATS,
    QUARANTINE_DIR,
    RECORD_LOG,
    SCAN_WINDOW_BYTES,
    V08_LOG,
    LogFormat,
    UnitHead,
    find_resumption,
    index_rows,
    quarantine_copy,
    read_head,
    scan_window,
    unit_at,
)
from tidelog.storage.io import File, FileIO
from tidelog.storage.segment import (
    INDEX_SUFFIX,
    Segment,
    index_name,
    log_name,
    parse_segment_name,
)
from tidelog.wire.batch import INDEX_DTYPE
from tidelog.wire.codes import INDEX_ENTRY_SIZE

__all__ = ["QUARANTINE_DIR", "SCAN_WINDOW_BYTES", "RecoveryReport", "recover"]

# Headers checked against the index by default (besides the first and the last entry).
SAMPLED_ENTRIES = 8


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
    fmt: LogFormat
    log: File
    index: File
    ends: np.ndarray  # int64 end positions in this file, as the log proved them
    timestamps: np.ndarray  # uint64
    trusted_from: int  # entries from here on were proven against the log

    @property
    def next_offset(self) -> int:
        return self.start + len(self.ends)


def recover(
    io: FileIO,
    directory: Path,
    verify_checksums: bool,
    cache: IndexCache | None = None,
    new_format: LogFormat = V08_LOG,
) -> tuple[list[Segment], RecoveryReport]:
    """Check and repair the segments under `directory`; return them oldest first (the last
    one is the active segment, the others are sealed) with a report of what was done. A
    partition with no segment gets an empty one in `new_format`."""
    report = RecoveryReport()
    cache = cache if cache is not None else IndexCache(0)
    names = io.listdir(directory)
    # Both formats sort by start; at one start (only a copy by hand makes that) the record log
    # comes last, so the chain keeps it and cuts the other as an overlap.
    order = list(LOG_FORMATS.values())
    logs = sorted(
        ((s, f) for f in order for n in names if (s := parse_segment_name(n, f.suffix)) is not None),
        key=lambda found: (found[0], found[1] is RECORD_LOG),
    )
    index_starts = {s for n in names if (s := parse_segment_name(n, INDEX_SUFFIX)) is not None}
    for orphan in sorted(index_starts - {s for s, _ in logs}):
        # An index is a cache of a log; without its log it describes nothing.
        io.unlink(directory / index_name(orphan))
        report.problems.append(f"{index_name(orphan)}: no log beside it, removed")

    chain = _Chain(io, directory, cache, report, new_format)
    split_off: set[tuple[int, LogFormat]] = set()
    for s, fmt in logs:
        if (s, fmt) in split_off:
            continue  # written just now by a split of an earlier segment, already chained
        pieces = _recover_segment(io, directory, s, fmt, s in index_starts, verify_checksums, report)
        split_off.update((p.start, fmt) for p in pieces[1:])
        for piece in pieces:
            chain.add(piece)
    segments = chain.finish()
    report.segments = len(segments)
    report.messages = sum(seg.messages_count for seg in segments)
    return segments, report


# ---- one segment -----------------------------------------------------------------------------


class _Checks:
    """Which index entries may be taken without reading the log (see the module docstring)."""

    def __init__(
        self, fmt: LogFormat, log: File, start: int, ends: np.ndarray, timestamps: np.ndarray, verify: bool
    ) -> None:
        self.fmt, self.log, self.start, self.ends, self.timestamps, self.verify = (
            fmt,
            log,
            start,
            ends,
            timestamps,
            verify,
        )
        self.problems: list[str] = []
        self._failing: list[int] = []
        k = len(ends)
        if verify or not k:
            return
        down = np.flatnonzero(timestamps[1:] < timestamps[:-1]).tolist()  # one of each pair is wrong
        if down:
            self.problems.append(f"index timestamps go down at entry {down[0] + 1}")
            if fmt is RECORD_LOG:
                # Records are found by their timestamps: none of this index can be placed.
                self._failing = [0]
                return
        failing = {*down, *(i + 1 for i in down)}
        for i in sorted({0, k - 1, *np.linspace(0, k - 1, SAMPLED_ENTRIES).astype(int).tolist()}):
            if not self._entry_agrees(i):
                # The unit before (where this one starts) is as suspect as this one.
                i0 = fmt.unit_bounds(timestamps, i)[0]
                failing.update({fmt.unit_bounds(timestamps, i0 - 1)[0] if i0 else 0, i0})
                self.problems.append(f"index entry {i} disagrees with the log")
        self._failing = sorted(failing)

    def _entry_agrees(self, i: int) -> bool:
        i0, i1 = self.fmt.unit_bounds(self.timestamps, i)
        position = int(self.ends[i0 - 1]) if i0 else 0
        end = int(self.ends[i1 - 1])
        expected = UnitHead(self.start + i0, int(self.timestamps[i]), end - position, i1 - i0)
        if read_head(self.fmt, self.log, position) != expected:
            return False
        # The last one is the most likely to be torn: checksum it as well.
        return i1 != len(self.ends) or unit_at(self.fmt, self.log, position, self.start + i0, end) is not None

    def trusted_run(self, i: int) -> int:
        """The end j of the entries [i, j) to take as they are (message i starts the unit at
        the position the index gives for it)."""
        k = len(self.ends)
        if not self.verify:
            at = bisect.bisect_left(self._failing, i)
            return self._failing[at] if at < len(self._failing) else k
        ends, timestamps = self.ends, self.timestamps
        while i < k:
            base = int(ends[i - 1]) if i else 0
            j = i + max(int(np.searchsorted(ends[i:], base + SCAN_WINDOW_BYTES, side="right")), 1)
            j = max(j, self.fmt.unit_bounds(timestamps, j - 1)[1])  # whole units
            data = self.log.pread(int(ends[j - 1]) - base, base)
            bad = self.fmt.verify(data, ends[i:j] - base, self.start + i, timestamps[i:j])
            if bad >= 0:
                self.problems.append(
                    f"{self.fmt.unit} at offset {self.start + i + bad} fails its checksum or header check"
                )
                return i + bad
            i = j
        return k


@dataclass
class _Piece:
    """Messages of one segment file that follow one another; a split starts a new piece."""

    start: int
    base: int  # byte position in the original .log where its first message starts
    ends: list[np.ndarray] = field(default_factory=list)  # absolute positions
    timestamps: list[np.ndarray] = field(default_factory=list)
    count: int = 0
    trusted_from: int = 0

    def add(self, ends: np.ndarray, timestamps: np.ndarray, proven: bool) -> None:
        self.ends.append(ends)
        self.timestamps.append(timestamps)
        self.count += len(ends)
        if not proven:
            self.trusted_from = self.count

    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.ends:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.uint64)
        return np.concatenate(self.ends) - self.base, np.concatenate(self.timestamps).astype(np.uint64)


def _recover_segment(
    io: FileIO,
    directory: Path,
    start: int,
    fmt: LogFormat,
    has_index: bool,
    verify_checksums: bool,
    report: RecoveryReport,
) -> list[_Found]:
    name = log_name(start, fmt)
    log = io.open(directory / name)
    index = io.open(directory / index_name(start))
    physical_bytes = log.size()
    raw = index.pread(index.size(), 0)
    n_raw = len(raw) // INDEX_ENTRY_SIZE
    entries = np.frombuffer(raw, dtype=INDEX_DTYPE, count=n_raw)
    k = _sane_prefix(entries, physical_bytes, fmt.min_span_bytes)
    ends = entries["position"][:k].astype(np.int64)
    timestamps = entries["timestamp"][:k].astype(np.uint64)
    if not has_index:
        report.problems.append(f"{name}: index missing, rebuilding from the log")
    elif k < n_raw or len(raw) % INDEX_ENTRY_SIZE:
        report.problems.append(f"{name}: index sane for {k} of {n_raw} entries")
    vouched_bytes = int(ends[-1]) if k else 0

    checks = _Checks(fmt, log, start, ends, timestamps, verify_checksums)
    pieces = [_Piece(start, 0)]
    i, position = 0, 0  # next message (relative to start) and where its unit begins
    last_ts = -1  # records must be stamped later than the one before
    while True:
        if i < k and position == (int(ends[i - 1]) if i else 0):
            j = checks.trusted_run(i)
            if j > i:
                pieces[-1].add(ends[i:j], timestamps[i:j], verify_checksums)
                i, position, last_ts = j, int(ends[j - 1]), int(timestamps[j - 1])
        scanned, scanned_ts = scan_window(fmt, log, position, physical_bytes, start + i, last_ts)
        if len(scanned):
            pieces[-1].add(scanned, scanned_ts, True)
            i, position, last_ts = i + len(scanned), int(scanned[-1]), int(scanned_ts[-1])
            continue
        if position + fmt.head_bytes > physical_bytes or position >= vouched_bytes:
            break  # the end, or a torn tail after what the index vouches for
        resume = _resume(fmt, log, start, ends, timestamps, i, position, physical_bytes)
        if resume is None:
            break
        j, resume_at = resume
        path = quarantine_copy(io, directory, name, log, position, resume_at, "corrupt")
        report.quarantined.append(path)
        report.truncated_bytes += resume_at - position
        report.problems.append(
            f"{name}: cut {resume_at - position} bytes at {position} (corrupt: offsets "
            f"{start + i}..{start + j - 1}); the messages after them move to {log_name(start + j, fmt)}"
        )
        pieces.append(_Piece(start + j, resume_at))
        i, position = j, resume_at
    report.problems.extend(f"{name}: {p}" for p in checks.problems)

    first = pieces[0]
    first_end = int(first.ends[-1][-1]) if first.count else 0
    if position < physical_bytes:
        path = quarantine_copy(io, directory, name, log, position, physical_bytes, "torn")
        report.quarantined.append(path)
        report.truncated_bytes += physical_bytes - position
        report.problems.append(f"{name}: cut {physical_bytes - position} bytes at {position} (torn)")
    found: list[_Found] = []
    for piece in pieces[1:]:
        found.append(_write_piece(io, directory, fmt, log, piece))
    if len(pieces) > 1:
        io.fsync_dir(directory)
    # Only now, with the later pieces durable elsewhere, may the original file shrink: a
    # crash before this line finds everything again and splits it the same way.
    changed = False
    if first_end < physical_bytes:
        log.truncate(first_end)
        changed = True
    first_ends, first_ts = first.columns()
    same = _common_prefix(entries, first_ends, first_ts)
    if not has_index or same < len(first_ends) or len(raw) != len(first_ends) * INDEX_ENTRY_SIZE:
        rows = index_rows(first_ends[same:], first_ts[same:], same)
        if len(rows):
            index.pwrite(rows.data, same * INDEX_ENTRY_SIZE)
        index.truncate(len(first_ends) * INDEX_ENTRY_SIZE)
        report.rebuilt_indexes += 1
        changed = True
    if changed:
        log.fdatasync()
        index.fdatasync()
    trusted = 0 if verify_checksums else first.trusted_from
    return [_Found(start, fmt, log, index, first_ends, first_ts, trusted), *found]


def _write_piece(io: FileIO, directory: Path, fmt: LogFormat, source: File, piece: _Piece) -> _Found:
    """A new segment file holding `piece`'s bytes (copied from `source`) and its index."""
    ends, timestamps = piece.columns()
    log = io.open(directory / log_name(piece.start, fmt))
    index = io.open(directory / index_name(piece.start))
    log.truncate(0)
    index.truncate(0)
    total = int(ends[-1])
    done = 0
    while done < total:
        chunk = source.pread(min(SCAN_WINDOW_BYTES, total - done), piece.base + done)
        assert chunk, "the source shrank while being copied"
        log.pwrite(chunk, done)
        done += len(chunk)
    log.truncate(total)  # drops the page padding an O_DIRECT handle may have left
    index.pwrite(index_rows(ends, timestamps, 0).data, 0)
    log.fdatasync()
    index.fdatasync()
    # The bytes were proven by the scan that found them, or by the index checks.
    return _Found(piece.start, fmt, log, index, ends, timestamps, piece.trusted_from)


def _resume(
    fmt: LogFormat,
    log: File,
    start: int,
    ends: np.ndarray,
    timestamps: np.ndarray,
    i: int,
    position: int,
    physical_bytes: int,
) -> tuple[int, int] | None:
    """Where good data starts again after the damaged unit of message i at `position`, as
    (relative offset, byte position): the next index entry starting a unit that verifies,
    else the next valid unit head with a later offset."""
    records = fmt is RECORD_LOG
    for j in range(i + 1, len(ends)):
        if records and timestamps[j] == timestamps[j - 1]:
            continue  # inside a record
        at = int(ends[j - 1])
        if at > position and unit_at(fmt, log, at, start + j, physical_bytes) is not None:
            return j, at
    low = start + i + 1
    most = (physical_bytes - position) // fmt.min_span_bytes
    found = find_resumption(fmt, log, position, physical_bytes, low, low + most)
    if found is None:
        return None
    return found[0] - start, found[1]


def _sane_prefix(entries: np.ndarray, physical_bytes: int, min_span_bytes: int) -> int:
    """How many leading entries are dense, rising and inside the log."""
    n = len(entries)
    if not n:
        return 0
    relative = entries["offset"].astype(np.int64)
    positions = entries["position"].astype(np.int64)
    previous = np.concatenate([np.zeros(1, dtype=np.int64), positions[:-1]])
    ok = (
        (relative == np.arange(n, dtype=np.int64))
        & (positions - previous >= min_span_bytes)
        & (positions <= physical_bytes)
    )
    return n if bool(ok.all()) else int(np.argmin(ok))


def _common_prefix(entries: np.ndarray, ends: np.ndarray, timestamps: np.ndarray) -> int:
    """How many leading stored entries already say what (ends, timestamps) say."""
    m = min(len(entries), len(ends))
    differ = (
        (entries["offset"][:m] != np.arange(m, dtype=np.uint32))
        | (entries["position"][:m] != ends[:m])
        | (entries["timestamp"][:m] != timestamps[:m])
    )
    where = np.flatnonzero(differ)
    return int(where[0]) if where.size else m


def _cut_log(
    io: FileIO,
    directory: Path,
    start: int,
    fmt: LogFormat,
    log: File,
    keep_bytes: int,
    end_bytes: int,
    reason: str,
    report: RecoveryReport,
) -> None:
    """Copy log bytes [keep_bytes, end_bytes) aside, durably, then truncate the log."""
    path = quarantine_copy(io, directory, log_name(start, fmt), log, keep_bytes, end_bytes, reason)
    # Only now may the bytes leave the log: a crash before this line cuts them again later.
    log.truncate(keep_bytes)
    report.truncated_bytes += end_bytes - keep_bytes
    report.quarantined.append(path)
    report.problems.append(
        f"{log_name(start, fmt)}: cut {end_bytes - keep_bytes} bytes at {keep_bytes} ({reason})"
    )


# ---- the chain -------------------------------------------------------------------------------


class _Chain:
    """Links checked segments in offset order, one at a time: only the newest keeps its
    index columns in memory; earlier ones become sealed segments with O(1) state."""

    def __init__(
        self, io: FileIO, directory: Path, cache: IndexCache, report: RecoveryReport, new_format: LogFormat
    ) -> None:
        self.io, self.directory, self.cache, self.report = io, directory, cache, report
        self.new_format = new_format
        self.sealed: list[Segment] = []
        self.last: _Found | None = None
        self.empty: _Found | None = None  # an empty segment, kept only if nothing follows

    def add(self, seg: _Found) -> None:
        if not len(seg.ends):
            if self.empty is not None:
                self._remove_stray(self.empty)
            self.empty = seg
            return
        if self.empty is not None:
            self._remove_stray(self.empty)
            self.empty = None
        prev = self.last
        if prev is not None:
            if seg.start < prev.next_offset:
                self._cut_overlap(prev, seg.start)
            elif seg.start > prev.next_offset:
                self.report.problems.append(f"offsets {prev.next_offset}..{seg.start - 1} are missing (gap)")
            if len(prev.ends):
                self.sealed.append(self._seal(prev))
            else:
                self._remove_stray(prev)
        self.last = seg

    def finish(self) -> list[Segment]:
        if self.empty is not None:
            expected = self.last.next_offset if self.last is not None else self.empty.start
            if self.empty.start == expected:
                if self.last is not None:
                    self.sealed.append(self._seal(self.last))
                self.last = self.empty
            else:
                self._remove_stray(self.empty)
        last = self.last
        if last is None:
            return [Segment.create(self.io, self.directory, 0, self.cache, self.new_format)]
        active = Segment(
            self.io,
            self.directory,
            last.start,
            last.log,
            last.index,
            last.ends,
            last.timestamps,
            self.cache,
            last.trusted_from,
            fmt=last.fmt,
        )
        return [*self.sealed, active]

    def _seal(self, f: _Found) -> Segment:
        seg = Segment.on_disk(
            self.io,
            self.directory,
            f.start,
            f.log,
            f.index,
            len(f.ends),
            int(f.ends[-1]),
            (int(f.timestamps[0]), int(f.timestamps[-1])),
            self.cache,
            min(f.trusted_from, len(f.ends)),
            fmt=f.fmt,
        )
        self.cache.put(seg, f.ends, f.timestamps)
        return seg

    def _cut_overlap(self, prev: _Found, next_start: int) -> None:
        # The later name claims the offsets from next_start on.
        keep = max(next_start - prev.start, 0)
        keep_bytes = int(prev.ends[keep - 1]) if keep else 0
        _cut_log(
            self.io,
            self.directory,
            prev.start,
            prev.fmt,
            prev.log,
            keep_bytes,
            int(prev.ends[-1]),
            "overlap",
            self.report,
        )
        prev.ends, prev.timestamps = prev.ends[:keep], prev.timestamps[:keep]
        prev.trusted_from = min(prev.trusted_from, keep)
        prev.index.truncate(keep * INDEX_ENTRY_SIZE)
        prev.log.fdatasync()
        prev.index.fdatasync()

    def _remove_stray(self, seg: _Found) -> None:
        # Any bytes it had were quarantined; the empty files say nothing.
        seg.log.close()
        seg.index.close()
        self.io.unlink(self.directory / log_name(seg.start, seg.fmt))
        self.io.unlink(self.directory / index_name(seg.start))
        self.report.problems.append(f"{log_name(seg.start, seg.fmt)}: stray empty segment, removed")

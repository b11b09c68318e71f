"""One segment: a log of stored units back to back (exactly what a poll of one generation
returns: `.rlog` 0.9 records, or `.log` 0.8 messages, see `integrity.LogFormat`) and a dense
`.index` of 16-byte entries, one per message (relative offset u32, end position u32,
timestamp u64). In a record log the first message of a record spans the record's header.

Where the index lives:

* The active segment (and a sealed one whose last writes are still in flight) keeps its
  index in memory as two growable numpy columns, end positions and timestamps, so a lookup
  never touches the files: 16 bytes per message, bounded by `segment_size_bytes`.
* A sealed segment keeps O(1) state (start, count, size, first and last timestamp) and reads
  index entries from its `.index` when needed: entries are dense (entry i is offset
  start + i, at byte i * 16), so an offset lookup is one small pread. A whole index loaded
  once goes to the shard's `IndexCache` (bounded in bytes, LRU); an index too large for it
  is read entry range by entry range, and a timestamp lookup is then a binary search over
  preads. `Partition` hands a sealed segment's columns to the cache (`release_index`) once
  every write of it has completed.

Columns are separate contiguous arrays on purpose: `searchsorted` copies a strided field of a
structured array. The timestamp column is non-decreasing (the partition never stamps a
batch earlier than the previous one).

Integrity. The log is the truth, the index a cache of it, and neither is trusted blindly:

* Index entries read from the file are checked when loaded: dense relative offsets, end
  positions rising by at least one header and ending where the log does, timestamps
  non-decreasing between the segment's first and last, and, for a whole index, the headers
  at a sample of entries (offset, length fields, timestamp). An index that fails is rebuilt
  from the log (the log of a sealed segment no longer changes).
* Data read from the files is verified (`LogFormat.verify`: lengths fill the index span,
  offsets, timestamps, reserved fields, checksums) before it is served, unless it is known
  good: messages this process wrote or recovery proved (`trusted_from` on), and ranges
  verified by earlier polls. Known-good ranges of a sealed segment are still served only
  after the heads of the units at both ends of the range agree with the index (two small
  preads), so they keep going out with `sendfile`. Verification is by whole units: a read
  that starts or ends inside a record reads and checks the whole record, and serves the
  cut record as its frames with a rewritten header.
* A poll meeting a unit that fails gets the valid units before it; the unit is reported
  (log line with segment and offset) and its bytes copied to `quarantine/`. When the log is
  fine there and the index is what is wrong, the index is rebuilt and the read retried.
* A timestamp lookup is checked against the headers at the offset found and the one before
  it; when they contradict the index the answer comes from the log.

Writes happen in two halves so that the I/O can run on another thread: `advance` records
messages in the in-memory index (the logical end moves) and says where their bytes and index
entries go; the caller then writes them (`Partition` through a `writer.Writer` job) and must
not read them back from the files before that write completed. `append` does both at once.

A segment knows nothing of the journal, recovery or retention; `Partition` drives it and
`recovery.py` builds it from files it has checked.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tidelog.storage.index_cache import Columns, IndexCache
from tidelog.storage.integrity import (
    LOG_FORMATS,
    RECORD_LOG,
    V08_LOG,
    LogFormat,
    UnitHead,
    index_rows,
    quarantine_copy,
    read_head,
    scan_log,
    unit_at,
)
from tidelog.storage.io import File, FileIO, FileRange
from tidelog.wire.batch import INDEX_DTYPE
from tidelog.wire.codes import INDEX_ENTRY_SIZE, U32_MAX, U64_MAX, IggyError, Status
from tidelog.wire.v09.batch import BATCH_HEADER_SIZE, slice_record_head

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

log = logging.getLogger(__name__)

LOG_SUFFIX = V08_LOG.suffix
INDEX_SUFFIX = ".index"
LOG_SUFFIXES = tuple(f.suffix for f in LOG_FORMATS.values())
# The files worth opening O_DIRECT: the logs. The index is 1.5 % of the bytes, written in small
# pieces that would each pay a direct write's latency (measured: direct .index writes cut
# direct + writer throughput by about a fifth), so it stays in the page cache.
DIRECT_SUFFIXES = LOG_SUFFIXES
_MIN_CAPACITY = 1024
# Headers checked against the entries of a whole index when it is loaded (plus first, last).
_SAMPLED_HEADERS = 8
# Per segment: ranges verified by polls, and damaged offsets already reported.
_MAX_VERIFIED_RANGES = 4
_MAX_REPORTED = 64


def log_name(start_offset: int, fmt: LogFormat = V08_LOG) -> str:
    return fmt.name(start_offset)


def index_name(start_offset: int) -> str:
    return f"{start_offset:020}{INDEX_SUFFIX}"


def parse_segment_name(name: str, suffix: str) -> int | None:
    """The start offset in a `{offset:020}{suffix}` file name, or None for other names."""
    if not name.endswith(suffix):
        return None
    stem = name[: -len(suffix)]
    if len(stem) != 20 or not stem.isascii() or not stem.isdigit():
        return None
    return int(stem)


class SegmentDamagedError(IggyError):
    """The segment's index disagrees with its log and the log cannot repair it."""

    def __init__(self, detail: str) -> None:
        super().__init__(Status.INVALID_MESSAGE_CHECKSUM, detail)


Piece = bytes | memoryview | FileRange


@dataclass(slots=True)
class Span:
    """What `Segment.read_span` read: `count` messages (`nbytes` bytes) in `pieces`, whole
    units of the segment's format (a record cut by the range gets a rewritten header)."""

    pieces: list[Piece]
    count: int
    nbytes: int
    damaged: bool  # it stopped early at a message that fails verification


class Segment:
    def __init__(
        self,
        io: FileIO,
        directory: Path,
        start_offset: int,
        log: File,
        index: File,
        ends: np.ndarray,
        timestamps: np.ndarray,
        cache: IndexCache | None = None,
        trusted_from: int | None = None,
        fmt: LogFormat = V08_LOG,
    ) -> None:
        """A segment with its index in memory (the active one). Entries from `trusted_from`
        on (default: none of those given) were proven against the log or are written by this
        process, so their bytes need no verification."""
        assert start_offset >= 0 and len(ends) == len(timestamps)
        self.fmt = fmt
        self.io = io
        self.directory = directory
        self.start_offset = start_offset
        self.log = log
        self.index = index
        self.sealed = False
        self._cache = cache if cache is not None else IndexCache(0)
        n = len(ends)
        self._n = n
        capacity = max(_MIN_CAPACITY, 1 << max(n - 1, 0).bit_length())
        self._ends: np.ndarray | None = np.zeros(capacity, dtype=np.int64)
        self._timestamps: np.ndarray | None = np.zeros(capacity, dtype=np.uint64)
        self._ends[:n] = ends
        # Kept non-decreasing so searchsorted is valid even if a clock once went back.
        self._timestamps[:n] = np.maximum.accumulate(timestamps) if n else timestamps
        assert n == 0 or (int(ends[0]) >= fmt.min_span_bytes and int(ends[-1]) <= U32_MAX)
        self._size = int(ends[-1]) if n else 0
        self._first_ts = int(self._timestamps[0]) if n else 0
        self._last_ts = int(self._timestamps[n - 1]) if n else 0
        self._trusted_from = n if trusted_from is None else trusted_from
        # The index the cache holds was built here (while appending, or rebuilt from the
        # log), not loaded from the file: its unit boundaries need no check against the log.
        self._own_columns = False
        self._verified: list[tuple[int, int]] = []
        self._reported: set[int] = set()
        self._unusable: str | None = None  # why the index cannot be used, if so
        self.index_repairs = 0

    @classmethod
    def create(
        cls,
        io: FileIO,
        directory: Path,
        start_offset: int,
        cache: IndexCache | None = None,
        fmt: LogFormat = V08_LOG,
    ) -> Segment:
        """A new, empty segment; files left over under its name are emptied."""
        log = io.open(directory / log_name(start_offset, fmt))
        index = io.open(directory / index_name(start_offset))
        log.truncate(0)
        index.truncate(0)
        empty = np.empty(0, dtype=np.int64)
        return cls(
            io, directory, start_offset, log, index, empty, np.empty(0, dtype=np.uint64), cache, fmt=fmt
        )

    @classmethod
    def on_disk(
        cls,
        io: FileIO,
        directory: Path,
        start_offset: int,
        log: File,
        index: File,
        count: int,
        size_bytes: int,
        timestamps: tuple[int, int],
        cache: IndexCache,
        trusted_from: int,
        fmt: LogFormat = V08_LOG,
    ) -> Segment:
        """A sealed segment whose index stays in its (checked) `.index` file; `timestamps`
        are those of its first and last message."""
        assert count > 0 and fmt.min_span_bytes * count <= size_bytes <= U32_MAX
        empty = np.empty(0, dtype=np.int64)
        seg = cls(
            io, directory, start_offset, log, index, empty, np.empty(0, dtype=np.uint64), cache, fmt=fmt
        )
        seg.sealed = True
        seg._ends = seg._timestamps = None
        seg._n, seg._size = count, size_bytes
        seg._first_ts, seg._last_ts = timestamps
        seg._trusted_from = trusted_from
        return seg

    @property
    def log_path(self) -> Path:
        return self.directory / log_name(self.start_offset, self.fmt)

    @property
    def index_path(self) -> Path:
        return self.directory / index_name(self.start_offset)

    # ---- state ---------------------------------------------------------------------------
    @property
    def messages_count(self) -> int:
        return self._n

    @property
    def is_empty(self) -> bool:
        return self._n == 0

    @property
    def size_bytes(self) -> int:
        """Logical length of the .log (the end of its last message)."""
        return self._size

    @property
    def next_offset(self) -> int:
        return self.start_offset + self._n

    @property
    def end_offset(self) -> int:
        """Offset of the last message; start_offset - 1 when empty."""
        return self.start_offset + self._n - 1

    @property
    def end_timestamp(self) -> int:
        return self._last_ts

    @property
    def first_timestamp(self) -> int:
        return self._first_ts

    @property
    def holds_index(self) -> bool:
        """The index is in this segment's own memory (active, or sealed and not released)."""
        return self._ends is not None

    @property
    def index_bytes_held(self) -> int:
        """Bytes of index columns this segment holds itself (the shared cache aside)."""
        if self._ends is None or self._timestamps is None:
            return 0
        return int(self._ends.nbytes + self._timestamps.nbytes)

    @property
    def ends(self) -> np.ndarray:
        """Every end position (loads a sealed segment's whole index: tests and tools)."""
        return self._entries(0, self._n)[0]

    @property
    def timestamps(self) -> np.ndarray:
        return self._entries(0, self._n)[1]

    # ---- writes --------------------------------------------------------------------------
    def append(self, buffers: Sequence[ReadableBuffer], entries: np.ndarray) -> None:
        """Write messages (one pwritev) then their index entries, which `entries` gives in
        the stored format with positions already relative to this segment."""
        nbytes = sum(memoryview(b).nbytes for b in buffers)
        position, index_at = self._check(entries, nbytes)
        written = self.log.pwritev(buffers, position)
        assert written == nbytes
        # The log goes first: a crash between the two leaves an index shorter than the log,
        # which recovery extends by scanning; the reverse would point past written data.
        self.index.pwrite(entries.data, index_at)
        self._record(entries)

    def advance(self, entries: np.ndarray, nbytes: int) -> tuple[int, int]:
        """Record messages of `nbytes` bytes (entries as for `append`) without writing them;
        return (.log position, .index position) where the caller must write the messages
        and then the entries, in that order."""
        position, index_at = self._check(entries, nbytes)
        self._record(entries)
        return position, index_at

    def _check(self, entries: np.ndarray, nbytes: int) -> tuple[int, int]:
        assert not self.sealed and self._ends is not None
        count = len(entries)
        assert count > 0 and entries.dtype == INDEX_DTYPE
        assert int(entries["offset"][0]) == self._n and int(entries["offset"][-1]) == self._n + count - 1
        position = self.size_bytes
        assert int(entries["position"][-1]) == position + nbytes
        return position, self._n * INDEX_ENTRY_SIZE

    def _record(self, entries: np.ndarray) -> None:
        count = len(entries)
        self._grow(self._n + count)
        assert self._ends is not None and self._timestamps is not None
        n = self._n
        self._ends[n : n + count] = entries["position"]
        ts = entries["timestamp"]
        low = self._timestamps[n - 1] if n else 0
        self._timestamps[n : n + count] = np.maximum(ts, low)
        self._n = n + count
        self._size = int(self._ends[self._n - 1])
        if not n:
            self._first_ts = int(self._timestamps[0])
        self._last_ts = int(self._timestamps[self._n - 1])

    def _grow(self, needed: int) -> None:
        assert self._ends is not None and self._timestamps is not None
        capacity = len(self._ends)
        if needed <= capacity:
            return
        while capacity < needed:
            capacity *= 2
        ends = np.zeros(capacity, dtype=np.int64)
        timestamps = np.zeros(capacity, dtype=np.uint64)
        ends[: self._n] = self._ends[: self._n]
        timestamps[: self._n] = self._timestamps[: self._n]
        self._ends, self._timestamps = ends, timestamps

    def seal(self) -> None:
        """No more appends. The index stays in memory until `release_index`."""
        self.sealed = True

    def release_index(self, cache: IndexCache) -> None:
        """Hand a sealed segment's in-memory index to `cache` (the caller knows every write of
        the segment, index entries included, has completed: later reads may use the file)."""
        assert self.sealed
        self._cache = cache
        if self._ends is None or self._timestamps is None:
            return
        ends, timestamps = self._ends[: self._n], self._timestamps[: self._n]
        self._ends = self._timestamps = None
        if self._n:
            self._own_columns = True
            cache.put(self, ends, timestamps)

    def fdatasync(self) -> None:
        self.log.fdatasync()
        self.index.fdatasync()

    # ---- index access --------------------------------------------------------------------
    def _columns(self) -> Columns | None:
        """The whole index in memory (own, cached, or loaded now if the cache takes it);
        None when it must be read by ranges."""
        if self._ends is not None and self._timestamps is not None:
            return self._ends[: self._n], self._timestamps[: self._n]
        if self._unusable is not None:
            raise SegmentDamagedError(f"{self.log_path}: {self._unusable}")
        columns = self._cache.get(self)
        if columns is not None:
            return columns
        if not self._cache.admits(2 * 8 * self._n):
            return None
        raw = self.index.pread(self._n * INDEX_ENTRY_SIZE, 0)
        entries = np.frombuffer(raw, dtype=INDEX_DTYPE, count=len(raw) // INDEX_ENTRY_SIZE)
        problem = self._entries_problem(entries, 0, self._n)
        ends = entries["position"].astype(np.int64)
        timestamps = entries["timestamp"].astype(np.uint64)
        if problem is None:
            problem = self._sampled_headers_problem(ends, timestamps)
        if problem is not None:
            return self._repair_index(problem)
        self._own_columns = False
        self._cache.put(self, ends, timestamps)
        return ends, timestamps

    def _entries(self, lo: int, hi: int) -> Columns:
        """End positions and timestamps of entries [lo, hi)."""
        assert 0 <= lo <= hi <= self._n
        columns = self._columns()
        if columns is not None:
            return columns[0][lo:hi], columns[1][lo:hi]
        raw = self.index.pread((hi - lo) * INDEX_ENTRY_SIZE, lo * INDEX_ENTRY_SIZE)
        entries = np.frombuffer(raw, dtype=INDEX_DTYPE, count=len(raw) // INDEX_ENTRY_SIZE)
        problem = self._entries_problem(entries, lo, hi)
        if problem is not None:
            repaired = self._repair_index(problem)
            return repaired[0][lo:hi], repaired[1][lo:hi]
        return entries["position"].astype(np.int64), entries["timestamp"].astype(np.uint64)

    def _end(self, i: int) -> int:
        """Where message i ends (i = -1: 0, the start of message 0)."""
        return int(self._entries(i, i + 1)[0][0]) if i >= 0 else 0

    def _entries_problem(self, entries: np.ndarray, lo: int, hi: int) -> str | None:
        """What is wrong with index entries [lo, hi) read from the file, if anything."""
        if len(entries) != hi - lo:
            return f"holds {len(entries)} of entries {lo}..{hi - 1}"
        if not len(entries):
            return None
        if bool((entries["offset"] != np.arange(lo, hi, dtype=np.uint32)).any()):
            return f"relative offsets are not dense in entries {lo}..{hi - 1}"
        positions = entries["position"].astype(np.int64)
        steps = np.diff(positions)
        span = self.fmt.min_span_bytes
        if int(positions[0]) < span * (lo + 1) or bool((steps < span).any()):
            return f"end positions do not rise by a header in entries {lo}..{hi - 1}"
        if int(positions[-1]) > self._size or (hi == self._n and int(positions[-1]) != self._size):
            return f"end positions do not end where the log does in entries {lo}..{hi - 1}"
        ts = entries["timestamp"]
        if bool((ts[1:] < ts[:-1]).any()) or int(ts[0]) < self._first_ts or int(ts[-1]) > self._last_ts:
            return f"timestamps out of order in entries {lo}..{hi - 1}"
        if (lo == 0 and int(ts[0]) != self._first_ts) or (hi == self._n and int(ts[-1]) != self._last_ts):
            return "first or last timestamp differs from the log"
        return None

    def _sampled_headers_problem(self, ends: np.ndarray, timestamps: np.ndarray) -> str | None:
        n = self._n
        for i in sorted({0, n - 1, *np.linspace(0, n - 1, _SAMPLED_HEADERS).astype(int).tolist()}):
            i0, i1 = self.fmt.unit_bounds(timestamps, i)
            start = int(ends[i0 - 1]) if i0 else 0
            expected = UnitHead(
                self.start_offset + i0, int(timestamps[i]), int(ends[i1 - 1]) - start, i1 - i0
            )
            if read_head(self.fmt, self.log, start) != expected:
                return f"entry {i} disagrees with the {self.fmt.unit} header at {start}"
        return None

    def _repair_index(self, problem: str) -> Columns:
        """Rebuild a sealed segment's index from its log and rewrite the file. Raises
        SegmentDamagedError when the log does not hold every message intact (then neither
        can be trusted here; a restart with verify_checksums_on_open repairs the segment)."""
        log.warning("%s: index %s; rebuilding it from the log", self.log_path, problem)
        if self._ends is not None and self._timestamps is not None:
            return self._repair_in_memory(problem)
        ends, timestamps = scan_log(self.fmt, self.log, 0, self._size, self.start_offset)
        if len(ends) != self._n or int(ends[-1]) != self._size:
            self._unusable = (
                f"index {problem}, and the log is damaged at offset {self.start_offset + len(ends)}"
            )
            self._cache.discard(self)
            log.error(
                "partition %s: segment %s: %s; polls of it are refused until a restart with "
                "system.verify_checksums_on_open repairs it",
                self.directory,
                self.log_path.name,
                self._unusable,
            )
            raise SegmentDamagedError(f"{self.log_path}: {self._unusable}")
        rows = index_rows(ends, timestamps, 0)
        self.index.pwrite(rows.data, 0)
        self.index.truncate(self._n * INDEX_ENTRY_SIZE)
        self.index.fdatasync()
        self.index_repairs += 1
        # Every message was just read and checked against its checksum.
        self._trusted_from = 0
        self._verified.clear()
        self._first_ts, self._last_ts = int(timestamps[0]), int(timestamps[-1])
        self._own_columns = True
        self._cache.put(self, ends, timestamps)
        log.warning("%s: index rebuilt from the log (%d entries)", self.log_path, self._n)
        return ends, timestamps

    def _repair_in_memory(self, problem: str) -> Columns:
        """The active segment (or a sealed one still being written): its entries from before
        this start (`trusted_from`) are rebuilt from the log in memory only, since another
        thread may be writing the file; the next recovery rewrites the file."""
        assert self._ends is not None and self._timestamps is not None
        recovered = self._trusted_from
        limit = int(self._ends[recovered - 1]) if recovered else 0
        ends, timestamps = scan_log(self.fmt, self.log, 0, limit, self.start_offset)
        if not recovered or len(ends) != recovered or int(ends[-1]) != limit:
            log.error("%s: index %s, and the log cannot repair it", self.log_path, problem)
            raise SegmentDamagedError(f"{self.log_path}: index {problem}")
        self._ends[:recovered] = ends
        self._timestamps[:recovered] = np.maximum.accumulate(timestamps)
        self._first_ts = int(self._timestamps[0])
        self._trusted_from = 0
        self._verified.clear()
        self.index_repairs += 1
        log.warning("%s: index rebuilt from the log in memory (%d entries)", self.log_path, recovered)
        return self._ends[: self._n], self._timestamps[: self._n]

    # ---- reads ---------------------------------------------------------------------------
    def byte_range(self, first_offset: int, end_offset: int) -> tuple[int, int]:
        """(position, length) in the .log of messages [first_offset, end_offset)."""
        lo = first_offset - self.start_offset
        hi = end_offset - self.start_offset
        assert 0 <= lo < hi <= self._n
        position = self._end(lo - 1)
        return position, self._end(hi - 1) - position

    def read(self, position: int, length: int) -> bytes:
        """Bytes of the .log; the range must have been written (see `advance`)."""
        assert position >= 0 and position + length <= self.size_bytes
        data = self.log.pread(length, position)
        if len(data) != length:
            raise OSError(f"{self.log_path}: short read at {position} ({len(data)} of {length} bytes)")
        return data

    def file_range(self, first_offset: int, end_offset: int) -> FileRange | None:
        """Where messages [first_offset, end_offset) lie in the .log, for `os.sendfile`;
        None when the backend has no OS descriptor (e.g. MemIO). Not verified."""
        fd = self.log.fileno()
        if fd is None:
            return None
        return FileRange(fd, *self.byte_range(first_offset, end_offset))

    def read_messages(self, first_offset: int, end_offset: int) -> bytes:
        """Stored bytes of messages [first_offset, end_offset), one pread, not verified."""
        return self.read(*self.byte_range(first_offset, end_offset))

    def read_span(
        self,
        first_offset: int,
        end_offset: int,
        budget_bytes: int | None,
        at_least_one: bool,
        file_range: bool,
    ) -> Span:
        """The messages from `first_offset` (before `end_offset`) that fit in `budget_bytes`
        (at least one when `at_least_one`), verified: a unit that fails verification and
        everything after it are left out (`damaged`), and it is reported and quarantined.
        With `file_range`, known-good whole units come back as `FileRange`s for `os.sendfile`.
        Units are verified whole, so a read cut inside a record reads (and checks) all of it."""
        lo, hi = first_offset - self.start_offset, end_offset - self.start_offset
        assert 0 <= lo < hi <= self._n
        try:
            return self._read_span(lo, hi, budget_bytes, at_least_one, file_range, True)
        except SegmentDamagedError:
            return Span([], 0, 0, True)

    def _read_span(
        self, lo: int, hi: int, budget: int | None, at_least_one: bool, file_range: bool, may_repair: bool
    ) -> Span:
        base, ends = self._fit(lo, hi, budget, at_least_one)
        m = len(ends)
        if not m:
            return Span([], 0, 0, False)
        columns = self._columns()
        u0, u1 = self._bounds(lo, columns)[0], self._bounds(lo + m - 1, columns)[1]
        if (u0, u1) == (lo, lo + m):
            ubase, uends, uts = base, ends, None
        else:
            ubase = self._end(u0 - 1)
            uends, uts = self._entries(u0, u1)
        length = int(uends[-1]) - ubase
        own_index = self._ends is not None or (self._own_columns and columns is not None)
        if self._known_good(u0, u1) and (own_index or self._boundaries_agree(u0, u1, columns)):
            fd = self.log.fileno() if file_range else None
            return self._span(lo, lo + m, u0, ubase, uends, uts, None, fd, False)
        data = self.read(ubase, length)
        relative = uends - ubase
        bad = self.fmt.verify(data, relative, self.start_offset + u0, None)
        if bad < 0:
            self._mark_verified(u0, u1)
            return self._span(lo, lo + m, u0, ubase, uends, uts, data, None, False)
        at = int(relative[bad - 1]) if bad else 0
        failed = u0 + bad  # the first message of the unit that fails
        if may_repair and self._index_suspect(failed, ubase + at):
            try:
                self._repair_index(f"disagrees with the log at offset {self.start_offset + failed}")
            except SegmentDamagedError:
                pass  # reported; the valid prefix is still served below
            else:
                return self._read_span(lo, hi, budget, at_least_one, file_range, False)
        unit_end = self._bounds(failed)[1]
        self._report_damage(failed, ubase + at, int(uends[min(unit_end, u1) - 1 - u0]))
        if failed <= lo:
            return Span([], 0, 0, True)
        self._mark_verified(u0, failed)
        keep = failed - u0
        ts_kept = None if uts is None else uts[:keep]
        return self._span(lo, min(lo + m, failed), u0, ubase, uends[:keep], ts_kept, data[:at], None, True)

    def _span(
        self,
        a: int,
        b: int,
        u0: int,
        ubase: int,
        uends: np.ndarray,
        uts: np.ndarray | None,
        data: bytes | None,
        fd: int | None,
        damaged: bool,
    ) -> Span:
        """Messages [a, b) as whole units, from the units starting at message u0 (at byte
        `ubase`, message ends `uends`): slices of `data` (those bytes, read) or else file
        ranges (`fd`) or reads. A record cut at either end is its frames in range with a
        rewritten header (0.9 reference 4.5); everything between goes out as it is stored."""

        def position(j: int) -> int:
            return int(uends[j - u0 - 1]) if j > u0 else ubase

        def stored(p: int, q: int) -> Piece:
            if data is not None:
                if p == ubase and q - p == len(data):
                    return data
                return memoryview(data)[p - ubase : q - ubase]
            if fd is not None:
                return FileRange(fd, p, q - p)
            return self.read(p, q - p)

        pieces: list[Piece] = []
        if self.fmt is not RECORD_LOG or uts is None:
            # Units are exactly messages [a, b) (a 0.8 log, or a record range not cut).
            assert a == u0 and b == u0 + len(uends)
            pieces.append(stored(ubase, int(uends[-1])))
            return Span(pieces, b - a, int(uends[-1]) - ubase, damaged)
        # Record boundaries: where the timestamp changes (see integrity.LogFormat).
        starts = np.flatnonzero(np.diff(uts) != 0) + 1 + u0
        first_end = int(starts[0]) if len(starts) else u0 + len(uends)
        last_start = int(starts[-1]) if len(starts) else u0

        def cut(s: int, x: int, y: int) -> None:
            """Messages [x, y) of the record starting at message s."""
            record_at = position(s)
            frames_at = record_at + BATCH_HEADER_SIZE if x == s else position(x)
            frames_end = position(y)
            if data is not None:
                head: bytes | memoryview = memoryview(data)[
                    record_at - ubase : record_at - ubase + BATCH_HEADER_SIZE
                ]
                frames: bytes | memoryview = memoryview(data)[frames_at - ubase : frames_end - ubase]
            else:
                head = self.read(record_at, BATCH_HEADER_SIZE)
                frames = self.read(frames_at, frames_end - frames_at)
            frame_ends = uends[x - u0 : y - u0] - frames_at
            pieces.append(slice_record_head(head, frames, frame_ends))
            pieces.append(frames)

        u_end = u0 + len(uends)  # a lies in the first record, b - 1 in the last
        if last_start == u0:  # one record
            if a == u0 and b == u_end:
                pieces.append(stored(ubase, position(u_end)))
            else:
                cut(u0, a, b)
        else:
            whole_from = u0
            if a > u0:
                cut(u0, a, first_end)
                whole_from = first_end
            whole_to = u_end if b == u_end else last_start
            if whole_from < whole_to:
                pieces.append(stored(position(whole_from), position(whole_to)))
            if b < u_end:
                cut(last_start, last_start, b)
        nbytes = sum(p.length if isinstance(p, FileRange) else memoryview(p).nbytes for p in pieces)
        return Span(pieces, b - a, nbytes, damaged)

    def _bounds(self, i: int, columns: Columns | None = None) -> tuple[int, int]:
        """[first, end) of the unit holding message i (`columns`: the whole index, when the
        caller holds it already)."""
        if self.fmt is not RECORD_LOG:
            return i, i + 1
        if columns is None:
            columns = self._columns()
        if columns is not None:
            return self.fmt.unit_bounds(columns[1], i)
        ts = int(self._entries(i, i + 1)[1][0])
        return self._search(ts), self._search(ts + 1)

    def _fit(self, lo: int, hi: int, budget: int | None, at_least_one: bool) -> tuple[int, np.ndarray]:
        """(position of message lo, end positions of the messages from lo that fit)."""
        want = hi - lo
        if budget is not None:
            want = min(want, max(budget, 0) // self.fmt.min_span_bytes + 1)  # a message holds >= that
        ends = self._entries(max(lo - 1, 0), lo + want)[0]
        base = int(ends[0]) if lo else 0
        ends = ends[1:] if lo else ends
        if budget is not None:
            fit = int(ends.searchsorted(base + budget, side="right"))
            ends = ends[: max(fit, 1 if at_least_one else 0)]
        return base, ends

    def _known_good(self, lo: int, hi: int) -> bool:
        end = min(hi, self._trusted_from)
        return lo >= end or any(a <= lo and end <= b for a, b in self._verified)

    def _mark_verified(self, lo: int, hi: int) -> None:
        hi = min(hi, self._trusted_from)
        if lo >= hi:
            return
        merged: list[tuple[int, int]] = []
        for a, b in sorted([*self._verified, (lo, hi)]):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        while len(merged) > _MAX_VERIFIED_RANGES:
            merged.remove(min(merged, key=lambda r: r[1] - r[0]))
        self._verified = merged

    def _unit_agrees(self, i: int, columns: Columns | None = None) -> bool:
        """The head of the unit holding message i declares what the index says of it: its
        first offset, timestamp, size and message count."""
        i0, i1 = self._bounds(i, columns)
        if columns is not None:
            ends, timestamps = columns
            start = int(ends[i0 - 1]) if i0 else 0
            end, ts = int(ends[i1 - 1]), int(timestamps[i])
        else:
            start, end = self._end(i0 - 1), self._end(i1 - 1)
            ts = int(self._entries(i, i + 1)[1][0])
        expected = UnitHead(self.start_offset + i0, ts, end - start, i1 - i0)
        return read_head(self.fmt, self.log, start) == expected

    def _boundaries_agree(self, u0: int, u1: int, columns: Columns | None = None) -> bool:
        """The heads of the first and the last unit of messages [u0, u1) declare the offsets,
        timestamps and sizes the index gives: then the range holds exactly those units."""
        if not self._unit_agrees(u0, columns):
            return False
        return self._bounds(u0, columns)[1] >= u1 or self._unit_agrees(u1 - 1, columns)

    def _index_suspect(self, i: int, position: int) -> bool:
        """The unit starting with message i failed where the index says it starts: is the
        index to blame? Yes when a valid unit i starts at that position whose message ends
        are not the index's (those are what is wrong), or when nothing proves the position
        is a unit boundary."""
        if i and position == self._end(i - 1):
            p0 = self._bounds(i - 1)[0]
            before = self._valid_unit_ends(self._end(p0 - 1), self.start_offset + p0)
            if before is None or int(before[-1]) != position:
                return True  # the boundary is not proven
        ends = self._valid_unit_ends(position, self.start_offset + i)
        if ends is None:
            return False
        indexed = self._entries(i, min(self._bounds(i)[1], self._n))[0]
        return len(ends) != len(indexed) or bool((ends != indexed).any())

    def _valid_unit_ends(self, position: int, offset: int) -> np.ndarray | None:
        """Message ends of the valid unit whose first offset is `offset` at `position`."""
        head = unit_at(self.fmt, self.log, position, offset, self._size)
        if head is None:
            return None
        data = self.log.pread(head.size_bytes, position)
        return self.fmt.scan(data, False, offset, -1)[0] + position

    def _report_damage(self, i: int, lo_byte: int, hi_byte: int) -> None:
        offset = self.start_offset + i
        if offset in self._reported:
            return
        if len(self._reported) >= _MAX_REPORTED:
            log.error("%s: message at offset %d fails verification too", self.log_path, offset)
            return
        self._reported.add(offset)
        try:
            path = quarantine_copy(
                self.io, self.directory, self.log_path.name, self.log, lo_byte, hi_byte, "corrupt"
            )
            kept = f"copied to {path}"
        except OSError as exc:
            kept = f"not copied ({exc})"
        log.error(
            "partition %s: segment %s: message at offset %d fails verification; polls stop "
            "before it (error %d); its %d bytes at %d are %s",
            self.directory,
            self.log_path.name,
            offset,
            Status.INVALID_MESSAGE_CHECKSUM,
            hi_byte - lo_byte,
            lo_byte,
            kept,
        )

    def offset_for_timestamp(self, timestamp_us: int) -> int | None:
        """First offset whose timestamp >= `timestamp_us`, or None. Checked against the log:
        raises SegmentDamagedError when neither index nor log can answer."""
        if timestamp_us > U64_MAX or not self._n:
            return None
        target = max(timestamp_us, 0)
        if target > self._last_ts:
            return None
        i = self._search(target)
        if self._found_agrees(i, target):
            return self.start_offset + i
        problem = f"timestamps disagree with the log near offset {self.start_offset + i}"
        columns = self._repair_index(problem)
        return self.start_offset + int(np.searchsorted(columns[1], np.uint64(target), side="left"))

    def _search(self, target: int) -> int:
        columns = self._columns()
        if columns is not None:
            return int(np.searchsorted(columns[1], np.uint64(target), side="left"))
        lo, hi = 0, self._n  # binary search over single-entry preads
        while lo < hi:
            mid = (lo + hi) // 2
            if int(self._entries(mid, mid + 1)[1][0]) < target:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _found_agrees(self, i: int, target: int) -> bool:
        """The heads of the units holding entries i and i - 1 confirm i is the first at or
        after `target` (entries this process wrote and still holds need no check: their
        bytes may not be written yet; entries read back from the file always get it)."""
        if i >= self._n:
            return False  # the last message is at or after target, so one must match
        for j, at_or_after in ((i, True), (i - 1, False)):
            if j < 0 or (self._ends is not None and j >= self._trusted_from):
                continue
            j0 = self._bounds(j)[0]
            head = read_head(self.fmt, self.log, self._end(j0 - 1))
            if (
                head is None
                or head.first_offset != self.start_offset + j0
                or (head.timestamp >= target) != at_or_after
            ):
                return False
        return True

    # ---- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        self._cache.discard(self)
        self.log.close()
        self.index.close()

    def delete(self) -> None:
        self.close()
        self.io.unlink(self.log_path)
        self.io.unlink(self.index_path)

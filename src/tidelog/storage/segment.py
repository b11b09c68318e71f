"""One segment: a `.log` of stored messages back to back (exactly what a poll returns) and a
dense `.index` of 16-byte entries (relative offset u32, end position u32, timestamp u64).

The index lives in memory as two growable numpy columns, end positions and timestamps, so a
lookup never touches the log:

* by offset: entries are dense (entry i is offset start + i; recovery checks this before a
  segment is loaded and `append` asserts it), so the entry is found by subtraction;
* by timestamp: `numpy.searchsorted` on the timestamp column, kept non-decreasing.

The relative-offset column of the file is therefore not kept in memory. Columns are separate
contiguous arrays on purpose: `searchsorted` copies a strided field of a structured array.

Writes happen in two halves so that the I/O can run on another thread: `advance` records
messages in the in-memory index (the logical end moves) and says where their bytes and index
entries go; the caller then writes them (`Partition` through a `writer.Writer` job) and must
not read them back from the files before that write completed. `append` does both at once.

A segment knows nothing of the journal, recovery or retention; `Partition` drives it and
`recovery.py` builds it from files it has checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tidelog.storage.io import File, FileIO, FileRange
from tidelog.wire.batch import INDEX_DTYPE
from tidelog.wire.codes import INDEX_ENTRY_SIZE, MESSAGE_HEADER_SIZE, U32_MAX, U64_MAX

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
# The files worth opening O_DIRECT: the log. The index is 1.5 % of the bytes, written in small
# pieces that would each pay a direct write's latency (measured: direct .index writes cut
# direct + writer throughput by about a fifth), so it stays in the page cache.
DIRECT_SUFFIXES = (LOG_SUFFIX,)
_MIN_CAPACITY = 1024


def log_name(start_offset: int) -> str:
    return f"{start_offset:020}{LOG_SUFFIX}"


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
    ) -> None:
        assert start_offset >= 0 and len(ends) == len(timestamps)
        self.io = io
        self.directory = directory
        self.start_offset = start_offset
        self.log = log
        self.index = index
        self.sealed = False
        self._n = len(ends)
        capacity = max(_MIN_CAPACITY, 1 << max(self._n - 1, 0).bit_length())
        self._ends = np.zeros(capacity, dtype=np.int64)
        self._timestamps = np.zeros(capacity, dtype=np.uint64)
        self._ends[: self._n] = ends
        # Kept non-decreasing so searchsorted is valid even if a clock once went back.
        self._timestamps[: self._n] = np.maximum.accumulate(timestamps) if self._n else timestamps
        assert self._n == 0 or (int(ends[0]) >= MESSAGE_HEADER_SIZE and int(ends[-1]) <= U32_MAX)

    @property
    def log_path(self) -> Path:
        return self.directory / log_name(self.start_offset)

    @property
    def index_path(self) -> Path:
        return self.directory / index_name(self.start_offset)

    @classmethod
    def create(cls, io: FileIO, directory: Path, start_offset: int) -> Segment:
        """A new, empty segment; files left over under its name are emptied."""
        log = io.open(directory / log_name(start_offset))
        index = io.open(directory / index_name(start_offset))
        log.truncate(0)
        index.truncate(0)
        empty = np.empty(0, dtype=np.int64)
        return cls(io, directory, start_offset, log, index, empty, np.empty(0, dtype=np.uint64))

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
        return int(self._ends[self._n - 1]) if self._n else 0

    @property
    def next_offset(self) -> int:
        return self.start_offset + self._n

    @property
    def end_offset(self) -> int:
        """Offset of the last message; start_offset - 1 when empty."""
        return self.start_offset + self._n - 1

    @property
    def end_timestamp(self) -> int:
        return int(self._timestamps[self._n - 1]) if self._n else 0

    @property
    def ends(self) -> np.ndarray:
        return self._ends[: self._n]

    @property
    def timestamps(self) -> np.ndarray:
        return self._timestamps[: self._n]

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
        assert not self.sealed
        count = len(entries)
        assert count > 0 and entries.dtype == INDEX_DTYPE
        assert int(entries["offset"][0]) == self._n and int(entries["offset"][-1]) == self._n + count - 1
        position = self.size_bytes
        assert int(entries["position"][-1]) == position + nbytes
        return position, self._n * INDEX_ENTRY_SIZE

    def _record(self, entries: np.ndarray) -> None:
        count = len(entries)
        self._grow(self._n + count)
        self._ends[self._n : self._n + count] = entries["position"]
        ts = entries["timestamp"]
        low = self._timestamps[self._n - 1] if self._n else 0
        self._timestamps[self._n : self._n + count] = np.maximum(ts, low)
        self._n += count

    def _grow(self, needed: int) -> None:
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
        self.sealed = True

    def fdatasync(self) -> None:
        self.log.fdatasync()
        self.index.fdatasync()

    # ---- reads ---------------------------------------------------------------------------
    def byte_range(self, first_offset: int, end_offset: int) -> tuple[int, int]:
        """(position, length) in the .log of messages [first_offset, end_offset)."""
        lo = first_offset - self.start_offset
        hi = end_offset - self.start_offset
        assert 0 <= lo < hi <= self._n
        position = int(self._ends[lo - 1]) if lo else 0
        return position, int(self._ends[hi - 1]) - position

    def read(self, position: int, length: int) -> bytes:
        """Bytes of the .log; the range must have been written (see `advance`)."""
        assert position >= 0 and position + length <= self.size_bytes
        data = self.log.pread(length, position)
        if len(data) != length:
            raise OSError(f"{self.log_path}: short read at {position} ({len(data)} of {length} bytes)")
        return data

    def file_range(self, first_offset: int, end_offset: int) -> FileRange | None:
        """Where messages [first_offset, end_offset) lie in the .log, for `os.sendfile`;
        None when the backend has no OS descriptor (e.g. MemIO)."""
        fd = self.log.fileno()
        if fd is None:
            return None
        return FileRange(fd, *self.byte_range(first_offset, end_offset))

    def read_messages(self, first_offset: int, end_offset: int) -> bytes:
        """Stored bytes of messages [first_offset, end_offset), one pread."""
        return self.read(*self.byte_range(first_offset, end_offset))

    def offset_for_timestamp(self, timestamp_us: int) -> int | None:
        """First offset whose timestamp >= `timestamp_us`, or None."""
        if timestamp_us > U64_MAX:
            return None
        i = int(np.searchsorted(self.timestamps, np.uint64(max(timestamp_us, 0)), side="left"))
        return self.start_offset + i if i < self._n else None

    # ---- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        self.log.close()
        self.index.close()

    def delete(self) -> None:
        self.close()
        self.io.unlink(self.log_path)
        self.io.unlink(self.index_path)

"""One partition: journal -> segments, polls, consumer offsets and retention.

Synchronous and single-owner: the shard's pump is the only caller, so there are no locks.
No clock or randomness is read here; both come in as arguments (`now_us`, `random_bytes`).

Write path. `append` stamps a batch in place and keeps its buffer in the in-memory journal
(the caller hands the buffer over). The journal is written when it holds `flush_messages`
messages or `flush_bytes` bytes, when the active segment would reach its size, or on
`flush()`: every journal buffer that goes to one segment leaves in a single pwritev, then
its index entries; fdatasync follows when asked or configured. A segment whose saved size
reaches `segment_size_bytes` is sealed and a new one starts at the next offset, so a flush
may split the journal across segments at batch boundaries. Unflushed messages are pollable
(memoryview slices of the journal buffers) and are lost on a crash.

Consumer offsets (kind 1 = consumer, 2 = consumer group; id u32). Each stored offset has a
64-byte file `offsets/consumers/{id}` or `offsets/groups/{id}` holding two 32-byte slots:
`magic "TLCO", u32 0, sequence u64, offset u64, checksum u64` (XXH3-64 of the first 24
bytes). A store writes the slot the previous store did not use, with the next sequence
number, so a torn write can only damage the slot being written and the previous value
survives; reading takes the valid slot with the higher sequence. One small pwrite per store,
fdatasync only when `fsync_on_flush` is set. (An 8-byte file, the reference server's u64
format, is also read.) On open, offsets above the current offset are clamped down to it;
when the partition never held a message they are removed instead, because a stored 0 would
make Next skip the first message to come.
"""

from __future__ import annotations

import bisect
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from tidelog.storage.io import BufferedIO, File, FileIO
from tidelog.storage.recovery import RecoveryReport, recover
from tidelog.storage.segment import Segment
from tidelog.wire.batch import Batch, stamp, storage_index
from tidelog.wire.codes import U32_MAX, U64_MAX, IggyError, Status

CONSUMER_KIND = 1
GROUP_KIND = 2
_OFFSET_DIRS = {CONSUMER_KIND: "consumers", GROUP_KIND: "groups"}
_SLOT = struct.Struct("<4sIQQQ")
_SLOT_MAGIC = b"TLCO"
_OPEN_OFFSET_FILES_MAX = 16

assert _SLOT.size == 32


@dataclass(frozen=True)
class PartitionConfig:
    segment_size_bytes: int = 1 << 30  # rotate once the active .log reaches this
    flush_messages: int = 1024  # journal -> disk when this many messages wait
    flush_bytes: int = 1 << 20  # ... or this many bytes
    fsync_on_flush: bool = False  # fdatasync after every flush
    verify_checksums_on_open: bool = (
        False  # whole-log check; the tail after the last index entry is always checked
    )

    def __post_init__(self) -> None:
        # Index positions are u32, so a segment (plus the batch that crosses its limit)
        # must stay addressable.
        assert 0 < self.segment_size_bytes <= U32_MAX // 2
        assert self.flush_messages > 0 and self.flush_bytes > 0


@dataclass
class PollResult:
    first_offset: int
    count: int
    chunks: list[memoryview | bytes]

    @property
    def size_bytes(self) -> int:
        return sum(len(c) if isinstance(c, bytes) else c.nbytes for c in self.chunks)


@dataclass(slots=True)
class _Pending:
    """A stamped batch in the journal."""

    batch: Batch
    base_offset: int
    timestamp_us: int


class Partition:
    def __init__(
        self,
        directory: Path,
        partition_id: int,
        config: PartitionConfig,
        io: FileIO,
        segments: list[Segment],
        recovery: RecoveryReport,
    ) -> None:
        assert segments
        self.directory = directory
        self.partition_id = partition_id
        self.config = config
        self.io = io
        self.recovery = recovery
        self._segments = segments
        self._segment_starts = [s.start_offset for s in segments]
        self._journal: list[_Pending] = []
        self._journal_bases: list[int] = []
        self.unflushed_messages = 0
        self.unflushed_bytes = 0
        self.next_offset = segments[-1].next_offset
        self._last_timestamp_us = max(s.end_timestamp for s in segments)
        self._offsets: dict[tuple[int, int], tuple[int, int]] = {}  # (kind, id) -> (offset, sequence)
        self._offset_files: OrderedDict[tuple[int, int], File] = OrderedDict()
        self._closed = False

    @classmethod
    def open(
        cls, directory: Path, partition_id: int, config: PartitionConfig, io: FileIO | None = None
    ) -> Partition:
        io = io or BufferedIO()
        io.makedirs(directory)
        segments, report = recover(io, directory, config.verify_checksums_on_open)
        part = cls(directory, partition_id, config, io, segments, report)
        part._load_offsets()
        if part._active.size_bytes >= config.segment_size_bytes:
            # The size limit may have shrunk since the last run.
            part._rotate(part.next_offset)
        return part

    # ---- state ---------------------------------------------------------------------------
    @property
    def _active(self) -> Segment:
        return self._segments[-1]

    @property
    def current_offset(self) -> int:
        """Offset of the last message; 0 when empty (as the protocol reports it)."""
        return self.next_offset - 1 if self.next_offset else 0

    @property
    def messages_count(self) -> int:
        return sum(s.messages_count for s in self._segments) + self.unflushed_messages

    @property
    def size_bytes(self) -> int:
        return sum(s.size_bytes for s in self._segments) + self.unflushed_bytes

    @property
    def segments_count(self) -> int:
        return len(self._segments)

    @property
    def is_empty(self) -> bool:
        return self.messages_count == 0

    @property
    def first_offset(self) -> int:
        """Start offset of the oldest segment."""
        return self._segments[0].start_offset

    @property
    def segments(self) -> list[Segment]:
        return list(self._segments)

    # ---- write path ----------------------------------------------------------------------
    def append(self, batch: Batch, now_us: int, random_bytes: Callable[[int], bytes]) -> int:
        """Stamp `batch` in place, keep its buffer in the journal, flush when due; return the
        offset of its last message."""
        assert not self._closed and batch.count > 0
        timestamp_us = max(now_us, self._last_timestamp_us)
        base = self.next_offset
        stamp(batch, base, timestamp_us, random_bytes)
        self._journal.append(_Pending(batch, base, timestamp_us))
        self._journal_bases.append(base)
        self.next_offset = base + batch.count
        self._last_timestamp_us = timestamp_us
        self.unflushed_messages += batch.count
        self.unflushed_bytes += batch.size_bytes
        cfg = self.config
        if (
            self.unflushed_messages >= cfg.flush_messages
            or self.unflushed_bytes >= cfg.flush_bytes
            or self._active.size_bytes + self.unflushed_bytes >= cfg.segment_size_bytes
        ):
            self.flush(cfg.fsync_on_flush)
        return self.next_offset - 1

    def flush(self, fsync: bool) -> None:
        """Write the journal to the segments; fdatasync if asked or configured."""
        assert not self._closed
        fsync = fsync or self.config.fsync_on_flush
        touched: list[Segment] = [self._active]
        journal = self._journal
        i = 0
        limit = self.config.segment_size_bytes
        while i < len(journal):
            segment = self._active
            j, size = i, segment.size_bytes
            # Take batches until the segment is full. A batch may cross the limit (the limit
            # is soft, as in Iggy) but never the u32 reach of index positions.
            while j < len(journal) and size < limit and size + journal[j].batch.size_bytes <= U32_MAX:
                size += journal[j].batch.size_bytes
                j += 1
            if j == i:
                assert not segment.is_empty
                self._rotate(journal[i].base_offset)
                touched.append(self._active)
                continue
            self._write(segment, journal[i:j])
            i = j
            if segment.size_bytes >= limit:
                self._rotate(journal[i].base_offset if i < len(journal) else self.next_offset)
                touched.append(self._active)
        self._journal = []
        self._journal_bases = []
        self.unflushed_messages = 0
        self.unflushed_bytes = 0
        if fsync:
            for segment in touched:
                segment.fdatasync()

    def _write(self, segment: Segment, pending: list[_Pending]) -> None:
        position = segment.size_bytes
        relative = pending[0].base_offset - segment.start_offset
        assert relative == segment.messages_count
        entries = []
        for p in pending:
            entries.append(storage_index(p.batch, relative, position, p.timestamp_us))
            relative += p.batch.count
            position += p.batch.size_bytes
        segment.append([p.batch.buf for p in pending], np.concatenate(entries))

    def _rotate(self, start_offset: int) -> None:
        old = self._active
        assert start_offset == old.next_offset
        old.seal()
        # A sealed segment is read for a long time after: make it durable once, now.
        old.fdatasync()
        self._segments.append(Segment.create(self.io, self.directory, start_offset))
        self._segment_starts.append(start_offset)
        if self.config.fsync_on_flush:
            self.io.fsync_dir(self.directory)

    # ---- read path -----------------------------------------------------------------------
    def poll(self, start_offset: int, count: int) -> PollResult:
        """Stored bytes of messages [start_offset, start_offset + count) that exist, in
        offset order: one pread per segment span, then memoryview slices of the journal."""
        assert not self._closed
        # Below the oldest segment (deleted by retention) the poll starts at what is left.
        start = max(start_offset, self.first_offset)
        end = min(start + max(count, 0), self.next_offset)
        if start >= end:
            return PollResult(start_offset, 0, [])
        chunks: list[memoryview | bytes] = []
        first: int | None = None
        got = 0
        journal_start = self._journal_bases[0] if self._journal else self.next_offset
        disk_end = min(end, journal_start)
        if start < disk_end:
            k = max(bisect.bisect_right(self._segment_starts, start) - 1, 0)
            for segment in self._segments[k:]:
                if segment.start_offset >= disk_end:
                    break
                lo, hi = max(start, segment.start_offset), min(disk_end, segment.next_offset)
                if lo >= hi:
                    continue  # an empty segment, or a gap left by recovery
                chunks.append(segment.read_messages(lo, hi))
                first = lo if first is None else first
                got += hi - lo
        if end > journal_start:
            lo = max(start, journal_start)
            for p in self._journal[bisect.bisect_right(self._journal_bases, lo) - 1 :]:
                if p.base_offset >= end:
                    break
                a = max(lo - p.base_offset, 0)
                b = min(end - p.base_offset, p.batch.count)
                ends = p.batch.ends
                chunks.append(p.batch.buf[int(ends[a - 1]) if a else 0 : int(ends[b - 1])])
                first = p.base_offset + a if first is None else first
                got += b - a
        return PollResult(first if first is not None else start_offset, got, chunks)

    def offset_for_timestamp(self, timestamp_us: int) -> int | None:
        """First offset whose server timestamp >= `timestamp_us`, or None."""
        ends = [s.end_timestamp for s in self._segments]
        for segment, end_timestamp in zip(self._segments, ends, strict=True):
            if not segment.is_empty and end_timestamp >= timestamp_us:
                return segment.offset_for_timestamp(timestamp_us)
        for p in self._journal:
            if p.timestamp_us >= timestamp_us:
                return p.base_offset
        return None

    # ---- consumer offsets ----------------------------------------------------------------
    def _offset_path(self, kind: int, consumer_id: int) -> Path:
        return self.directory / "offsets" / _OFFSET_DIRS[kind] / str(consumer_id)

    @staticmethod
    def _check_key(kind: int, consumer_id: int) -> None:
        if kind not in _OFFSET_DIRS:
            raise ValueError(f"consumer kind {kind}")
        if not 0 <= consumer_id <= U32_MAX:
            raise ValueError(f"consumer id {consumer_id}")

    def store_offset(self, kind: int, consumer_id: int, offset: int) -> None:
        assert not self._closed
        self._check_key(kind, consumer_id)
        if self.next_offset == 0 or not 0 <= offset <= self.current_offset:
            raise IggyError(Status.INVALID_OFFSET, f"offset {offset}, current offset {self.current_offset}")
        self._write_offset(kind, consumer_id, offset)

    def get_offset(self, kind: int, consumer_id: int) -> int | None:
        self._check_key(kind, consumer_id)
        found = self._offsets.get((kind, consumer_id))
        return None if found is None else found[0]

    def delete_offset(self, kind: int, consumer_id: int) -> None:
        assert not self._closed
        self._check_key(kind, consumer_id)
        if (kind, consumer_id) not in self._offsets:
            raise IggyError(Status.CONSUMER_OFFSET_NOT_FOUND, f"kind {kind} id {consumer_id}")
        self._remove_offset(kind, consumer_id)

    def min_stored_offset(self) -> int | None:
        return min((o for o, _ in self._offsets.values()), default=None)

    def _offset_file(self, key: tuple[int, int]) -> File:
        f = self._offset_files.get(key)
        if f is not None:
            self._offset_files.move_to_end(key)
            return f
        f = self.io.open(self._offset_path(*key))
        self._offset_files[key] = f
        if len(self._offset_files) > _OPEN_OFFSET_FILES_MAX:
            _, oldest = self._offset_files.popitem(last=False)
            oldest.close()
        return f

    def _write_offset(self, kind: int, consumer_id: int, offset: int) -> None:
        key = (kind, consumer_id)
        assert 0 <= offset <= U64_MAX
        previous = self._offsets.get(key)
        sequence = previous[1] + 1 if previous else 1
        head = _SLOT.pack(_SLOT_MAGIC, 0, sequence, offset, 0)[:24]
        slot = head + xxhash.xxh3_64_intdigest(head).to_bytes(8, "little")
        f = self._offset_file(key)
        f.pwrite(slot, (sequence % 2) * _SLOT.size)
        if self.config.fsync_on_flush:
            f.fdatasync()
        self._offsets[key] = (offset, sequence)

    def _remove_offset(self, kind: int, consumer_id: int) -> None:
        key = (kind, consumer_id)
        f = self._offset_files.pop(key, None)
        if f is not None:
            f.close()
        del self._offsets[key]
        self.io.unlink(self._offset_path(kind, consumer_id))

    @staticmethod
    def _read_slots(data: bytes) -> tuple[int, int] | None:
        """(offset, sequence) of the newest valid slot."""
        if len(data) == 8:
            return int.from_bytes(data, "little"), 0
        best: tuple[int, int] | None = None
        for at in (0, _SLOT.size):
            if len(data) < at + _SLOT.size:
                break
            magic, _, sequence, offset, checksum = _SLOT.unpack_from(data, at)
            if magic != _SLOT_MAGIC or xxhash.xxh3_64_intdigest(data[at : at + 24]) != checksum:
                continue
            if best is None or sequence > best[1]:
                best = (offset, sequence)
        return best

    def _load_offsets(self) -> None:
        for kind, name in _OFFSET_DIRS.items():
            folder = self.directory / "offsets" / name
            self.io.makedirs(folder)
            for entry in self.io.listdir(folder):
                if not entry.isdigit() or int(entry) > U32_MAX:
                    continue
                found = self._read_slots(self.io.read_file(folder / entry))
                if found is None:
                    self.recovery.problems.append(f"offsets/{name}/{entry}: no valid slot, ignored")
                    continue
                self._offsets[(kind, int(entry))] = found
        for (kind, consumer_id), (offset, _) in list(self._offsets.items()):
            if self.next_offset == 0:
                self._remove_offset(kind, consumer_id)
            elif offset > self.current_offset:
                self._write_offset(kind, consumer_id, self.current_offset)

    # ---- retention -----------------------------------------------------------------------
    def _deletable(self, segment: Segment) -> bool:
        floor = self.min_stored_offset()
        return segment.sealed and (floor is None or segment.end_offset <= floor)

    def _drop_oldest(self) -> int:
        segment = self._segments.pop(0)
        self._segment_starts.pop(0)
        freed = segment.size_bytes
        segment.delete()
        return freed

    def delete_segments(self, count: int) -> int:
        """Delete up to `count` oldest sealed segments that every stored offset has passed."""
        assert not self._closed
        deleted = 0
        while deleted < count and len(self._segments) > 1 and self._deletable(self._segments[0]):
            self._drop_oldest()
            deleted += 1
        return deleted

    def expire(self, now_us: int, expiry_us: int) -> int:
        """Delete sealed segments whose last message is at least `expiry_us` old."""
        assert not self._closed
        deleted = 0
        while (
            len(self._segments) > 1
            and self._segments[0].end_timestamp + expiry_us <= now_us
            and self._deletable(self._segments[0])
        ):
            self._drop_oldest()
            deleted += 1
        return deleted

    def delete_oldest_sealed_segment(self) -> int:
        """Bytes freed by deleting the oldest sealed segment; 0 when none may go."""
        assert not self._closed
        if len(self._segments) > 1 and self._deletable(self._segments[0]):
            return self._drop_oldest()
        return 0

    def purge(self) -> None:
        """Drop every message and stored offset; start again empty at offset 0."""
        assert not self._closed
        for segment in self._segments:
            segment.delete()
        for kind, consumer_id in list(self._offsets):
            self._remove_offset(kind, consumer_id)
        self._journal, self._journal_bases = [], []
        self.unflushed_messages = self.unflushed_bytes = 0
        self._segments = [Segment.create(self.io, self.directory, 0)]
        self._segment_starts = [0]
        self.next_offset = 0

    # ---- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self.flush(self.config.fsync_on_flush)
        for segment in self._segments:
            segment.close()
        for f in self._offset_files.values():
            f.close()
        self._offset_files.clear()
        self._closed = True

    def destroy(self) -> None:
        self.close()
        self.io.rmtree(self.directory)

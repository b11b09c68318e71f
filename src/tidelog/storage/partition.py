"""One partition: journal -> segments, polls, consumer offsets and retention.

Single-owner: the shard's pump is the only caller, so there are no locks. No clock or
randomness is read here; both come in as arguments (`now_us`, `random_bytes`).

Write path. `append` stamps a batch in place and keeps its buffer in memory (the caller
hands the buffer over). The journal, the batches not yet handed to the disk, is flushed when
it holds `flush_messages` messages or `flush_bytes` bytes, when the active segment would
reach its size, or on `flush()` / `flush_async()`. A flush is prepared here, on the owner
thread: every journal buffer that goes to one segment leaves in a single pwritev, then its
index entries; an fdatasync of every file written since the last one follows when asked or
configured. A segment whose size reaches `segment_size_bytes` is sealed (and made durable
once) and a new one starts at the next offset, so a flush may split the journal across
segments at batch boundaries. Segments' logical state (index, sizes) moves when the flush is
prepared, before its bytes are written.

Who does the I/O:

* Without a writer, a flush runs at once on the calling thread: `append` may block on disk.
* With a `writer.Writer` (one thread per shard), a flush becomes a job for the writer
  thread and `append` returns at once (it blocks only while the writer's queue is full:
  backpressure). Batches stay in memory, and polls serve them from there, until `reap()`
  sees their job complete. `flush_async(fsync)` returns a future for "everything appended
  so far is written (and synced)"; callers asking for a sync while one is outstanding share
  the next one (group commit). The owner thread must call `reap()` when jobs complete (the
  writer's `on_complete` says when): it retires jobs, raises a write error once, submits the
  shared sync and trims memory. After a failed write the partition refuses writes (OSError)
  until it is reopened; what it holds stays pollable.

Memory and polls. The batches in memory are one run of offsets ending at `next_offset`:
written batches kept as the tail cache, then in-flight ones, then the journal. The tail
cache (the newest `cache_bytes` of written batches) exists with a writer only: O_DIRECT
writes bypass the page cache, and a consumer tailing the producer should never read the
disk. A poll serves offsets below that run from the segment files (one pread per segment)
and the rest as memoryview slices of the batch buffers. Unwritten messages, and written ones
never synced, are lost on a crash.

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
import errno
import struct
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from tidelog.storage.io import BufferedIO, File, FileIO, FileRange
from tidelog.storage.recovery import RecoveryReport, recover
from tidelog.storage.segment import Segment
from tidelog.storage.writer import (
    Lane,
    Op,
    SealOp,
    SyncDirOp,
    SyncOp,
    WriteOp,
    Writer,
    done_future,
    run_ops,
    running_future,
)
from tidelog.wire.batch import Batch, stamp, storage_index
from tidelog.wire.codes import U32_MAX, U64_MAX, IggyError, Status

CONSUMER_KIND = 1
GROUP_KIND = 2
_OFFSET_DIRS = {CONSUMER_KIND: "consumers", GROUP_KIND: "groups"}
_SLOT = struct.Struct("<4sIQQQ")
_SLOT_MAGIC = b"TLCO"
_OPEN_OFFSET_FILES_MAX = 16
# Evicted entries at the front of the memory lists are cut off in one go past this many.
_COMPACT_AT = 256

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
    cache_bytes: int = 32 << 20  # with a writer: newest written batches kept in memory for polls

    def __post_init__(self) -> None:
        # Index positions are u32, so a segment (plus the batch that crosses its limit)
        # must stay addressable.
        assert 0 < self.segment_size_bytes <= U32_MAX // 2
        assert self.flush_messages > 0 and self.flush_bytes > 0
        assert self.cache_bytes >= 0


@dataclass
class PollResult:
    first_offset: int
    count: int
    chunks: list[memoryview | bytes | FileRange]

    @property
    def size_bytes(self) -> int:
        return sum(c.nbytes if isinstance(c, memoryview) else len(c) for c in self.chunks)


@dataclass(slots=True)
class _Pending:
    """A stamped batch held in memory."""

    batch: Batch
    base_offset: int
    timestamp_us: int


@dataclass(slots=True)
class _Job:
    """A flush handed to the writer."""

    future: Future[None]
    end_offset: int  # every offset below it is in the files once the job is done
    sync: bool


def _as_os_error(exc: BaseException) -> OSError:
    if isinstance(exc, OSError):
        return exc
    wrapped = OSError(errno.EIO, f"write failed: {exc!r}")
    wrapped.__cause__ = exc
    return wrapped


def _chain(source: Future[None], target: Future[None]) -> None:
    """Complete `target` as `source` completes (on whichever thread completes it)."""

    def copy(done: Future[None]) -> None:
        exc = done.exception()
        if exc is None:
            target.set_result(None)
        else:
            target.set_exception(exc)

    source.add_done_callback(copy)


def _fit(ends: np.ndarray, first: int, n: int, budget_bytes: int, at_least_one: bool) -> int:
    """How many of the n messages starting at index `first` (end positions `ends`) fit in
    `budget_bytes`; at least one when `at_least_one`."""
    base = int(ends[first - 1]) if first else 0
    fit = int(np.searchsorted(ends[first : first + n], base + budget_bytes, side="right"))
    return max(fit, 1 if at_least_one else 0)


class Partition:
    def __init__(
        self,
        directory: Path,
        partition_id: int,
        config: PartitionConfig,
        io: FileIO,
        segments: list[Segment],
        recovery: RecoveryReport,
        writer: Writer | None = None,
    ) -> None:
        assert segments
        self.directory = directory
        self.partition_id = partition_id
        self.config = config
        self.io = io
        self.recovery = recovery
        self._segments = segments
        self._segment_starts = [s.start_offset for s in segments]
        self.unflushed_messages = 0
        self.unflushed_bytes = 0
        self.next_offset = segments[-1].next_offset
        self._last_timestamp_us = max(s.end_timestamp for s in segments)
        self._offsets: dict[tuple[int, int], tuple[int, int]] = {}  # (kind, id) -> (offset, sequence)
        self._offset_files: OrderedDict[tuple[int, int], File] = OrderedDict()
        self._closed = False
        # Batches in memory, oldest first; entries before _mem_head are evicted. Indexes:
        # [_mem_head, _unwritten_at) written (the tail cache), [_unwritten_at, _journal_at)
        # in flight, [_journal_at, end) the journal.
        self._mem: list[_Pending] = []
        self._mem_bases: list[int] = []
        self._mem_head = 0
        self._unwritten_at = 0
        self._journal_at = 0
        self._cached_bytes = 0  # bytes of the written batches still held
        self._written_offset = self.next_offset  # offsets below are in the files
        self._writer = writer
        self._cache_budget = config.cache_bytes if writer is not None else 0
        self._lane = Lane()
        self._jobs: deque[_Job] = deque()
        self._sync_job: _Job | None = None  # the newest sync job not reaped yet
        self._next_sync: Future[None] | None = None  # callers sharing the sync after it
        # Files written since the last sync was prepared. What an earlier run left in the
        # active segment counts too: it may never have been synced. Indexes are kept apart:
        # an acknowledgement needs only the log on disk (recovery rebuilds an index from the
        # log's checksummed tail), so per-request syncs skip them; sealing a segment and a
        # full flush (shutdown) sync them.
        active = segments[-1]
        self._dirty: dict[int, File] = {} if active.is_empty else {id(active.log): active.log}
        self._dirty_index: dict[int, File] = {} if active.is_empty else {id(active.index): active.index}
        self._dir_dirty = False
        self._failure: BaseException | None = None
        self._failure_raised = False

    @classmethod
    def open(
        cls,
        directory: Path,
        partition_id: int,
        config: PartitionConfig,
        io: FileIO | None = None,
        writer: Writer | None = None,
    ) -> Partition:
        """Recover the partition in `directory`. With a `writer`, flushes run on its thread
        (see the module docstring); the caller must then `reap()` when jobs complete."""
        io = io or BufferedIO()
        io.makedirs(directory)
        segments, report = recover(io, directory, config.verify_checksums_on_open)
        part = cls(directory, partition_id, config, io, segments, report, writer)
        part._load_offsets()
        if part._active.size_bytes >= config.segment_size_bytes:
            # The size limit may have shrunk since the last run.
            run_ops(part._rotate_ops(part.next_offset))
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

    @property
    def written_offset(self) -> int:
        """Every offset below this one is in the segment files (as far as `reap` knows)."""
        return self._written_offset

    @property
    def pending_jobs(self) -> int:
        """Flush jobs handed to the writer and not reaped yet."""
        return len(self._jobs)

    @property
    def held_bytes(self) -> int:
        """Bytes of batches in memory: journal, in flight and tail cache."""
        return sum(p.batch.size_bytes for p in self._mem[self._mem_head :])

    @property
    def failed(self) -> bool:
        """A write failed: the partition refuses writes until it is reopened."""
        return self._failure is not None

    # ---- write path ----------------------------------------------------------------------
    def append(self, batch: Batch, now_us: int, random_bytes: Callable[[int], bytes]) -> int:
        """Stamp `batch` in place, keep its buffer, flush (or submit a flush) when due;
        return the offset of its last message."""
        assert not self._closed and batch.count > 0
        if self._jobs:
            self.reap()
        self._check_writable()
        timestamp_us = max(now_us, self._last_timestamp_us)
        base = self.next_offset
        stamp(batch, base, timestamp_us, random_bytes)
        self._mem.append(_Pending(batch, base, timestamp_us))
        self._mem_bases.append(base)
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
            self._flush_journal(cfg.fsync_on_flush)
        return self.next_offset - 1

    @property
    def cache_budget_bytes(self) -> int:
        return self._cache_budget

    def set_cache_budget(self, budget_bytes: int) -> None:
        """Resize the tail cache (the owner shares one memory budget among its partitions).
        Shrinking evicts at the next reap; without a writer there is no cache."""
        assert budget_bytes >= 0
        if self._writer is not None:
            self._cache_budget = budget_bytes

    def flush(self, fsync: bool) -> None:
        """Write the journal to the segments and wait for it (and for every earlier write);
        fdatasync logs and indexes if asked or configured. Raises OSError when a write failed."""
        assert not self._closed
        done = self.flush_async(fsync, indexes=True)
        while not done.done():
            assert self._jobs, "a pending flush needs a queued job to complete it"
            wait([self._jobs[0].future])
            self.reap()
        self.reap()
        exc = done.exception()
        if exc is not None:
            raise _as_os_error(exc)

    def flush_async(self, fsync: bool, indexes: bool = False) -> Future[None]:
        """A future that resolves once everything appended before the call is written, and
        its log fdatasync'ed if asked or configured (its index too with `indexes`), or fails
        with the write's OSError. Without a writer the work is done before this returns. The
        future cannot be cancelled."""
        assert not self._closed
        if self._jobs:
            self.reap()
        self._check_writable()
        fsync = fsync or self.config.fsync_on_flush
        indexes = indexes and fsync
        if fsync and self._sync_job is not None and not indexes:
            # Group commit: a sync is queued or running. If it covers everything, share it;
            # otherwise wait for the next one, which reap() submits once it completes, for
            # every caller that arrives until then.
            if self._sync_job.end_offset >= self.next_offset:
                return self._sync_job.future
            if self._next_sync is None:
                self._next_sync = running_future()
            return self._next_sync
        if self.unflushed_messages or (
            fsync and (self._dirty or self._dir_dirty or (indexes and self._dirty_index))
        ):
            return self._flush_journal(fsync, indexes)
        return self._jobs[-1].future if self._jobs else done_future()

    def reap(self) -> None:
        """On the owner thread: retire completed jobs, submit a shared sync that is due,
        evict written batches beyond the tail cache. Raises the first write error once (as
        OSError); afterwards the partition refuses writes. A no-op once closed."""
        if self._closed:
            return
        self._retire()
        if self._failure is not None and not self._failure_raised:
            self._failure_raised = True
            raise _as_os_error(self._failure)

    def _retire(self) -> None:
        jobs = self._jobs
        while jobs and jobs[0].future.done():
            job = jobs.popleft()
            if job is self._sync_job:
                self._sync_job = None
            exc = job.future.exception()
            if exc is None:
                self._written_offset = job.end_offset
            elif self._failure is None:
                self._failure = exc
        if self._next_sync is not None and self._sync_job is None:
            waiters, self._next_sync = self._next_sync, None
            if self._failure is None:
                _chain(self._flush_journal(True), waiters)
            else:
                waiters.set_exception(self._refusal())
        self._trim_memory()

    def _check_writable(self) -> None:
        if self._failure is not None:
            raise self._refusal()

    def _refusal(self) -> OSError:
        error = OSError(
            errno.EIO, f"partition {self.partition_id}: an earlier write failed ({self._failure})"
        )
        error.__cause__ = self._failure
        return error

    def _flush_journal(self, sync: bool, indexes: bool = False) -> Future[None]:
        """Prepare the journal's writes (and a sync) and run them, here or on the writer."""
        ops = self._prepare(sync, indexes)
        end = self.next_offset
        if not ops:
            return self._jobs[-1].future if self._jobs else done_future()
        if self._writer is None:
            try:
                run_ops(ops)
            except BaseException as e:
                self._failure = e
                self._failure_raised = True
                raise
            self._written_offset = end
            self._trim_memory()
            return done_future()
        future = self._writer.submit(ops, self._lane)
        job = _Job(future, end, sync)
        self._jobs.append(job)
        if sync:
            self._sync_job = job
        return future

    def _prepare(self, sync: bool, indexes: bool = False) -> list[Op]:
        ops: list[Op] = []
        journal = self._mem[self._journal_at :]
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
                ops += self._rotate_ops(journal[i].base_offset)
                continue
            ops += self._write_ops(segment, journal[i:j])
            i = j
            if segment.size_bytes >= limit:
                ops += self._rotate_ops(journal[i].base_offset if i < len(journal) else self.next_offset)
        self._journal_at = len(self._mem)
        self.unflushed_messages = 0
        self.unflushed_bytes = 0
        if sync:
            ops += [SyncOp(f) for f in self._dirty.values()]
            self._dirty.clear()
            if indexes:
                ops += [SyncOp(f) for f in self._dirty_index.values()]
                self._dirty_index.clear()
            if self._dir_dirty:
                ops.append(SyncDirOp(self.io, self.directory))
                self._dir_dirty = False
        return ops

    def _write_ops(self, segment: Segment, pending: list[_Pending]) -> list[Op]:
        position = segment.size_bytes
        relative = pending[0].base_offset - segment.start_offset
        assert relative == segment.messages_count
        entries = []
        for p in pending:
            entries.append(storage_index(p.batch, relative, position, p.timestamp_us))
            relative += p.batch.count
            position += p.batch.size_bytes
        rows = np.concatenate(entries)
        nbytes = position - segment.size_bytes
        log_at, index_at = segment.advance(rows, nbytes)
        self._dirty[id(segment.log)] = segment.log
        self._dirty_index[id(segment.index)] = segment.index
        return [
            WriteOp(segment.log, [p.batch.buf for p in pending], log_at, nbytes),
            WriteOp(segment.index, [rows.data], index_at, rows.nbytes),
        ]

    def _rotate_ops(self, start_offset: int) -> list[Op]:
        old = self._active
        assert start_offset == old.next_offset
        old.seal()
        self._dirty.pop(id(old.log), None)
        self._dirty_index.pop(id(old.index), None)
        self._segments.append(Segment.create(self.io, self.directory, start_offset))
        self._segment_starts.append(start_offset)
        self._dir_dirty = True
        # A sealed segment is read for a long time after: make it durable once, now.
        return [SealOp(old.log), SealOp(old.index), SyncOp(old.log), SyncOp(old.index)]

    def _trim_memory(self) -> None:
        mem, bases = self._mem, self._mem_bases
        i = self._unwritten_at
        while i < self._journal_at and bases[i] + mem[i].batch.count <= self._written_offset:
            self._cached_bytes += mem[i].batch.size_bytes
            i += 1
        self._unwritten_at = i
        h = self._mem_head
        floor = self.first_offset
        while h < i and (self._cached_bytes > self._cache_budget or bases[h] + mem[h].batch.count <= floor):
            self._cached_bytes -= mem[h].batch.size_bytes
            h += 1
        self._mem_head = h
        if h and (h == len(mem) or (h >= _COMPACT_AT and 2 * h >= len(mem))):
            del mem[:h]
            del bases[:h]
            self._unwritten_at -= h
            self._journal_at -= h
            self._mem_head = 0

    def _drain(self) -> None:
        """Wait until no job of this partition is queued or running (errors are kept)."""
        while self._jobs or self._next_sync is not None:
            if self._jobs:
                wait([self._jobs[-1].future])
            self._retire()

    # ---- read path -----------------------------------------------------------------------
    def poll(
        self, start_offset: int, count: int, max_bytes: int | None = None, file_ranges: bool = False
    ) -> PollResult:
        """Stored bytes of messages [start_offset, start_offset + count) that exist, in
        offset order: one pread per segment span below the batches held in memory, then
        memoryview slices of those.

        `max_bytes` bounds the reply (at least one message is returned when any exists), so
        a client asking for a huge count cannot make the server read gigabytes at once.
        With `file_ranges`, data on disk comes back as `FileRange`s to send with `os.sendfile`
        instead of bytes read into memory.
        """
        assert not self._closed
        # Below the oldest segment (deleted by retention) the poll starts at what is left.
        start = max(start_offset, self.first_offset)
        k = max(bisect.bisect_right(self._segment_starts, start) - 1, 0)
        while k + 1 < len(self._segments) and start >= self._segments[k].next_offset:
            # A gap that recovery left in the chain: continue at the next offset that exists.
            k += 1
            start = max(start, self._segments[k].start_offset)
        end = min(start + max(count, 0), self.next_offset)
        if start >= end:
            return PollResult(start_offset, 0, [])
        budget = max_bytes  # None: unbounded
        chunks: list[memoryview | bytes | FileRange] = []
        first: int | None = None
        got = 0
        stopped = False  # the byte budget ran out
        mem, bases, head = self._mem, self._mem_bases, self._mem_head
        mem_start = bases[head] if head < len(mem) else self.next_offset
        assert head < len(mem) or self._written_offset == self.next_offset  # else: data lost
        disk_end = min(end, mem_start)
        if start < disk_end:
            for segment in self._segments[k:]:
                if segment.start_offset >= disk_end:
                    break
                lo, hi = max(start, segment.start_offset), min(disk_end, segment.next_offset)
                if lo >= hi:
                    continue  # an empty segment, or a gap left by recovery
                if budget is not None:
                    n = _fit(segment.ends, lo - segment.start_offset, hi - lo, budget, got == 0)
                    stopped = n < hi - lo
                    if n == 0:
                        break
                    hi = lo + n
                    budget -= segment.byte_range(lo, hi)[1]
                ranged = segment.file_range(lo, hi) if file_ranges else None
                chunks.append(ranged if ranged is not None else segment.read_messages(lo, hi))
                first = lo if first is None else first
                got += hi - lo
                if stopped:
                    break
        if end > mem_start and not stopped:
            lo = max(start, mem_start)
            for i in range(bisect.bisect_right(bases, lo, head) - 1, len(mem)):
                p = mem[i]
                if p.base_offset >= end:
                    break
                a = max(lo - p.base_offset, 0)
                b = min(end - p.base_offset, p.batch.count)
                ends = p.batch.ends
                if budget is not None:
                    n = _fit(ends, a, b - a, budget, got == 0)
                    stopped = n < b - a
                    if n == 0:
                        break
                    b = a + n
                lo_byte = int(ends[a - 1]) if a else 0
                hi_byte = int(ends[b - 1])
                chunks.append(p.batch.buf[lo_byte:hi_byte])
                if budget is not None:
                    budget -= hi_byte - lo_byte
                first = p.base_offset + a if first is None else first
                got += b - a
                if stopped:
                    break
        return PollResult(first if first is not None else start_offset, got, chunks)

    def offset_for_timestamp(self, timestamp_us: int) -> int | None:
        """First offset whose server timestamp >= `timestamp_us`, or None."""
        ends = [s.end_timestamp for s in self._segments]
        for segment, end_timestamp in zip(self._segments, ends, strict=True):
            if not segment.is_empty and end_timestamp >= timestamp_us:
                return segment.offset_for_timestamp(timestamp_us)
        for p in self._mem[self._journal_at :]:
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
        # Its seal job (or an earlier write) may still be queued.
        self._drain()
        segment = self._segments.pop(0)
        self._segment_starts.pop(0)
        freed = segment.size_bytes
        segment.delete()
        self._trim_memory()
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
        self._drain()
        for segment in self._segments:
            segment.delete()
        for kind, consumer_id in list(self._offsets):
            self._remove_offset(kind, consumer_id)
        self._mem, self._mem_bases = [], []
        self._mem_head = self._unwritten_at = self._journal_at = self._cached_bytes = 0
        self.unflushed_messages = self.unflushed_bytes = 0
        self._dirty.clear()
        self._dirty_index.clear()
        self._segments = [Segment.create(self.io, self.directory, 0)]
        self._segment_starts = [0]
        self._dir_dirty = True
        self.next_offset = self._written_offset = 0

    # ---- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        """Flush (fdatasync if configured), wait for every job, close the files. Raises
        OSError, after closing, when a write of this partition failed."""
        if self._closed:
            return
        try:
            if self._failure is None:
                self.flush(self.config.fsync_on_flush)
        except OSError:
            pass  # recorded as the failure, raised below once the files are closed
        finally:
            self._drain()
            self._close_files()
            self._closed = True
        if self._failure is not None:
            raise self._refusal()

    def destroy(self) -> None:
        """Wait for queued jobs, then remove the partition and everything in it."""
        if not self._closed:
            self._drain()
            self._close_files()
            self._closed = True
        self.io.rmtree(self.directory)

    def _close_files(self) -> None:
        for segment in self._segments:
            segment.close()
        for f in self._offset_files.values():
            f.close()
        self._offset_files.clear()

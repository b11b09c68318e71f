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
  shared sync and trims memory.

Durable offset. Every offset below `durable_offset` is in the logs and was fdatasync'ed (it
moves when a job that synced completes; at open, what recovery found is synced once, see
`_sync_recovered`). With `durable_polls` (fsync = always, where an acknowledgement waits for the sync) polls,
`current_offset`, `messages_count` and `size_bytes` cover only durable offsets: a consumer
never sees an offset that a crash could later give to another message. Without it, polls
also serve what is acknowledged but not yet durable (the journal, in-flight and written but
unsynced batches), which a crash may lose and whose offsets are then reused.

Failures. A job stops at its first failing op and the writer skips this partition's later
jobs (see `writer.Lane`). The partition is then `failed`: it refuses appends and flushes
with an OSError carrying the failure's errno, and keeps everything it holds pollable. It
does not retry on its own: the owner calls `retry_failed()` (the shard, with backoff) once
every job of the partition has completed. A retry writes again every byte from the last
point known to be safe, the durable offset, to the end of what was handed to the disk:
after a failed fdatasync the kernel may have dropped the dirty pages, so a later fdatasync
succeeding proves nothing about bytes written before it (fsyncgate). Positions and index
entries come from the batches in memory and the segments' logical state; a sealed segment
the range touches is sealed and synced again. The journal follows, then an fdatasync of
every log written; when that job completes the partition accepts writes again. Nothing
durable is truncated. For this the batches stay in memory until synced, not merely written
(`max_unsynced_bytes` > 0; past that many unsynced bytes a sync is submitted early, so the
memory held stays bounded). With `max_unsynced_bytes` = 0 (fsync = never: nothing is synced
on a schedule) batches leave memory once written, and a retry starts at the written offset.
Creating a segment's files during a flush can fail too: the partition fails the same way
and the retry writes what that flush had recorded.

Memory and polls. The batches in memory are one run of offsets ending at `next_offset`:
written batches kept as the tail cache, then in-flight ones, then the journal. The tail
cache (the newest `cache_bytes` of written batches) exists with a writer only: O_DIRECT
writes bypass the page cache, and a consumer tailing the producer should never read the
disk. A poll serves offsets below that run from the segment files (one pread or sendfile
range per segment, verified by the segment unless known good: a message that fails is never
served, the poll stops before it or answers INVALID_MESSAGE_CHECKSUM) and the rest as
memoryview slices of the batch buffers. Unwritten messages, and written ones never synced,
are lost on a crash. Sealed segments keep their index in the files and in `index_cache`
(shared, bounded); see segment.py.

Consumer offsets live in `offsets/` and belong to `self.offsets`, an `offsets.OffsetStore`
(file format, fallback on a damaged slot, durability: see that module). The partition checks
a stored offset against its messages; retention keeps every segment a stored offset has not
passed.
"""

from __future__ import annotations

import bisect
import errno
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tidelog.storage.index_cache import IndexCache
from tidelog.storage.integrity import LOG_FORMATS, RECORD_LOG, LogFormat, StoreFormat
from tidelog.storage.io import BufferedIO, File, FileIO
from tidelog.storage.offsets import CONSUMER_KIND as CONSUMER_KIND
from tidelog.storage.offsets import GROUP_KIND as GROUP_KIND
from tidelog.storage.offsets import OffsetStore
from tidelog.storage.recovery import QUARANTINE_DIR, RecoveryReport, recover
from tidelog.storage.segment import Piece, Segment
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
from tidelog.wire.codes import INDEX_ENTRY_SIZE, U32_MAX, U64_MAX, IggyError, Status
from tidelog.wire.v09.batch import BATCH_HEADER_SIZE, Batch09, slice_record_head, stamp_batch

# Evicted entries at the front of the memory lists are cut off in one go past this many.
_COMPACT_AT = 256
# A partition opened without a shard's shared index cache gets one of this size.
DEFAULT_INDEX_CACHE_BYTES = 64 << 20


@dataclass(frozen=True)
class PartitionConfig:
    segment_size_bytes: int = 1 << 30  # rotate once the active .log reaches this
    flush_messages: int = 1024  # journal -> disk when this many messages wait
    flush_bytes: int = 1 << 20  # ... or this many bytes
    fsync_on_flush: bool = False  # fdatasync after every flush
    offsets_fsync: bool = False  # a consumer-offset change completes once fdatasynced (fsync = always)
    verify_checksums_on_open: bool = (
        False  # whole-log check; the tail after the last index entry is always checked
    )
    cache_bytes: int = 32 << 20  # with a writer: newest written batches kept in memory for polls
    # > 0: batches stay in memory until synced (a failed write or sync rewrites them), and a
    # sync is submitted once this many bytes are unsynced. 0: they go once written.
    max_unsynced_bytes: int = 0
    # Polls and counts cover durable offsets only (fsync = always); needs max_unsynced_bytes.
    durable_polls: bool = False
    # The format of new segments (integrity.StoreFormat); older ones keep theirs.
    store_format: StoreFormat = StoreFormat.V08

    def __post_init__(self) -> None:
        # Index positions are u32, so a segment (plus the batch that crosses its limit)
        # must stay addressable.
        assert 0 < self.segment_size_bytes <= U32_MAX // 2
        assert self.flush_messages > 0 and self.flush_bytes > 0
        assert self.cache_bytes >= 0 and self.max_unsynced_bytes >= 0
        # The durable view's size is counted from the batches held since the durable offset.
        assert not self.durable_polls or self.max_unsynced_bytes > 0


@dataclass
class PollResult:
    """`chunks` are stored units of `store_format` in offset order (0.9 records, some cut
    with a rewritten header, or 0.8 messages): a poll never mixes formats."""

    first_offset: int
    count: int
    chunks: list[Piece]
    store_format: StoreFormat = StoreFormat.V08

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
        index_cache: IndexCache | None = None,
    ) -> None:
        assert segments
        # Sealed segments' index columns live here (shared by a shard's partitions).
        self.index_cache = index_cache if index_cache is not None else IndexCache(DEFAULT_INDEX_CACHE_BYTES)
        self.directory = directory
        self.partition_id = partition_id
        self.config = config
        self.log_format: LogFormat = LOG_FORMATS[config.store_format]
        self.io = io
        self.recovery = recovery
        self._segments = segments
        self._segment_starts = [s.start_offset for s in segments]
        self.unflushed_messages = 0
        self.unflushed_bytes = 0
        self.next_offset = segments[-1].next_offset
        self._last_timestamp_us = max(s.end_timestamp for s in segments)
        self.offsets = OffsetStore(
            io, directory / "offsets", directory / QUARANTINE_DIR, writer, config.offsets_fsync
        )
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
        # Offsets below are in the files and synced (`open` syncs what recovery found). Held
        # batches before _synced_at end at or below it; _unsynced_bytes counts the others.
        self._durable_offset = self.next_offset
        self._synced_at = 0
        self._unsynced_bytes = 0
        # Past this many unsynced bytes, append submits a sync (no limit when not holding).
        self._unsynced_budget = config.max_unsynced_bytes
        self._unsynced_limit = config.max_unsynced_bytes or U64_MAX
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
        self._failure: BaseException | None = None  # the write error not recovered from yet
        self._failure_raised = False
        self._retry_job: _Job | None = None  # a retry's rewrite, queued or running

    @classmethod
    def open(
        cls,
        directory: Path,
        partition_id: int,
        config: PartitionConfig,
        io: FileIO | None = None,
        writer: Writer | None = None,
        index_cache: IndexCache | None = None,
    ) -> Partition:
        """Recover the partition in `directory`. With a `writer`, flushes run on its thread
        (see the module docstring); the caller must then `reap()` when jobs complete.
        Sealed segments keep their index columns in `index_cache` (a private one of
        DEFAULT_INDEX_CACHE_BYTES when None)."""
        io = io or BufferedIO()
        io.makedirs(directory)
        cache = index_cache if index_cache is not None else IndexCache(DEFAULT_INDEX_CACHE_BYTES)
        fmt = LOG_FORMATS[config.store_format]
        segments, report = recover(io, directory, config.verify_checksums_on_open, cache, fmt)
        part = cls(directory, partition_id, config, io, segments, report, writer, cache)
        part.offsets.load(part.next_offset, report)
        part._sync_recovered()
        active = part._active
        if active.fmt is not fmt and active.is_empty:
            # An empty segment of the other format: the next one starts here in this one.
            active.delete()
            part._segments[-1] = Segment.create(io, directory, active.start_offset, cache, fmt)
            io.fsync_dir(directory)
        elif active.fmt is not fmt or active.size_bytes >= config.segment_size_bytes:
            # Appends go to a segment of the configured format (older segments keep theirs,
            # their names say which); or the size limit shrank since the last run.
            run_ops(part._rotate_ops(part.next_offset))
            part._release_written_indexes()
        return part

    @property
    def store_format(self) -> StoreFormat:
        """The format `append` takes (that of the active segment)."""
        return self.log_format.store_format

    def _sync_recovered(self) -> None:
        """Sync the logs an earlier run may have left unsynced (a kill -9 leaves its writes in
        the page cache only), so that everything recovered counts as durable: the active
        segment and the one sealed before it (sealing syncs a segment, so older ones were
        synced unless several rotations were in flight at the crash)."""
        ops: list[Op] = [SyncOp(s.log) for s in self._segments[-2:] if not s.is_empty]
        run_ops(ops)
        self._dirty.clear()

    # ---- state ---------------------------------------------------------------------------
    @property
    def _active(self) -> Segment:
        return self._segments[-1]

    @property
    def _visible_end(self) -> int:
        """Polls and counts stop before this offset (see `durable_polls`)."""
        return self._durable_offset if self.config.durable_polls else self.next_offset

    @property
    def current_offset(self) -> int:
        """Offset of the last message a poll can return; 0 when empty (as the protocol
        reports it)."""
        end = self._visible_end
        return end - 1 if end else 0

    @property
    def messages_count(self) -> int:
        """Messages a poll can return (those below the durable offset with `durable_polls`)."""
        count = sum(s.messages_count for s in self._segments) + self.unflushed_messages
        return count - (self.next_offset - self._visible_end)

    @property
    def size_bytes(self) -> int:
        """Bytes of the messages a poll can return (see `messages_count`)."""
        size = sum(s.size_bytes for s in self._segments) + self.unflushed_bytes
        return size - self._unsynced_bytes if self.config.durable_polls else size

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
    def durable_offset(self) -> int:
        """Every offset below this one is in the logs and fdatasync'ed (as far as `reap` knows)."""
        return self._durable_offset

    @property
    def failed(self) -> bool:
        """A write or sync failed and no retry has succeeded since: appends and flushes are
        refused (see `retry_failed`)."""
        return self._failure is not None

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    def unpersisted_range(self) -> tuple[int, int] | None:
        """While failed: [first, end) of the offsets not known to be on disk (from the
        durable offset, or the written one when batches are not held until synced)."""
        if self._failure is None:
            return None
        floor = self._durable_offset if self._unsynced_budget else self._written_offset
        return max(floor, self.first_offset), self.next_offset

    # ---- write path ----------------------------------------------------------------------
    def append(self, batch: Batch | Batch09, now_us: int, random_bytes: Callable[[int], bytes]) -> int:
        """Stamp `batch` in place, keep its buffer, flush (or submit a flush) when due;
        return the offset of its last message. `batch` is in `store_format`: a parsed 0.8
        SendMessages batch, or one 0.9 record (`Batch09`, as parsed from a send)."""
        assert not self._closed and batch.count > 0
        if self._jobs:
            self.reap()
        self._check_writable()
        base = self.next_offset
        if self.log_format is RECORD_LOG:
            assert isinstance(batch, Batch09)
            # Every record later than the one before: the index finds records by their runs
            # of equal timestamps (integrity.LogFormat.unit_bounds).
            timestamp_us = max(now_us, self._last_timestamp_us + 1)
            stamp_batch(batch, self.partition_id, base, timestamp_us)
            batch = Batch(count=batch.count, buf=batch.buf, ends=batch.ends)
        else:
            assert isinstance(batch, Batch)
            timestamp_us = max(now_us, self._last_timestamp_us)
            stamp(batch, base, timestamp_us, random_bytes)
        self._mem.append(_Pending(batch, base, timestamp_us))
        self._mem_bases.append(base)
        self.next_offset = base + batch.count
        self._last_timestamp_us = timestamp_us
        self.unflushed_messages += batch.count
        self.unflushed_bytes += batch.size_bytes
        self._unsynced_bytes += batch.size_bytes
        cfg = self.config
        # Held unsynced batches past their budget: sync now rather than hold more (unless a
        # sync is already on its way, which will let them go).
        sync_due = self._unsynced_bytes >= self._unsynced_limit and self._sync_job is None
        if (
            sync_due
            or self.unflushed_messages >= cfg.flush_messages
            or self.unflushed_bytes >= cfg.flush_bytes
            or self._active.size_bytes + self.unflushed_bytes >= cfg.segment_size_bytes
        ):
            self._flush_journal(cfg.fsync_on_flush or sync_due)
        return self.next_offset - 1

    @property
    def cache_budget_bytes(self) -> int:
        return self._cache_budget

    @property
    def unsynced_budget_bytes(self) -> int:
        return self._unsynced_budget

    def set_unsynced_budget(self, budget_bytes: int) -> None:
        """Resize `max_unsynced_bytes` (the owner shares one budget among its partitions).
        Only while holding: a partition configured with 0 lets batches go once written."""
        assert budget_bytes > 0
        if self._unsynced_budget:
            self._unsynced_budget = budget_bytes
            self._unsynced_limit = budget_bytes

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
        evict batches that are written (and synced, when holding) beyond the tail cache.
        Raises a write error once (as OSError) when the partition fails; it then refuses
        writes until `retry_failed` succeeds. A no-op once closed."""
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
                if job.sync:
                    self._durable_offset = job.end_offset
                if job is self._retry_job:
                    self._failure = None  # recovered: writes are accepted again
                    self._failure_raised = False
            elif self._failure is None or job is self._retry_job:
                self._failure = exc
            if job is self._retry_job:
                self._retry_job = None
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
        failure = self._failure
        code = failure.errno if isinstance(failure, OSError) and failure.errno else errno.EIO
        detail = f"partition {self.partition_id}: refusing writes until a failed write is retried ({failure})"
        error = OSError(code, detail)
        error.__cause__ = failure
        return error

    def wait_for_jobs(self) -> None:
        """Block until no job of this partition is queued or running, and retire them (a
        failure is kept, not raised)."""
        assert not self._closed
        self._drain()

    def retry_failed(self) -> bool:
        """After a failure, once every job of the partition has completed: write again every
        byte from the durable offset (the written offset when not holding) to the end of
        what was handed to the disk, then the journal, then fdatasync every log written, as
        one job (run here without a writer). Returns whether a retry was started; the
        partition accepts writes again once it completes. See the module docstring."""
        assert not self._closed
        if self._jobs:
            self._retire()
        if self._failure is None or self._jobs or self._next_sync is not None:
            return False  # nothing to retry, or skipped jobs of the failure are still queued
        try:
            ops = self._rewrite_ops()
            ops += self._prepare(True)  # the journal, then syncs of every log written since
        except OSError as e:  # reading a position back, or creating a segment, failed
            self._failure = e
            return True
        end = self.next_offset
        self._lane = Lane()  # the failed lane keeps refusing; nothing of it is queued any more
        if self._writer is None:
            try:
                run_ops(ops)
            except BaseException as e:
                self._failure = e
                return True
            self._written_offset = self._durable_offset = end
            self._failure = None
            self._failure_raised = False
            self._trim_memory()
            return True
        job = _Job(self._writer.submit(ops, self._lane), end, True)
        self._retry_job = job
        self._jobs.append(job)
        return True

    def _rewrite_ops(self) -> list[Op]:
        """Writes of every batch handed to the disk since the last point known safe, per
        segment, with their index entries; a sealed segment among them is sealed and synced
        again, the others count as dirty."""
        floor = self._durable_offset if self._unsynced_budget else self._written_offset
        floor = max(floor, self.first_offset)  # retention may have deleted what was below
        mem, bases, end = self._mem, self._mem_bases, self._journal_at
        i = bisect.bisect_left(bases, floor, self._mem_head, end)
        # Everything from the floor is held: batches leave memory only once below it.
        assert i == end or bases[i] == floor, (floor, bases[i])
        ops: list[Op] = []
        while i < end:
            k = bisect.bisect_right(self._segment_starts, bases[i]) - 1
            segment = self._segments[k]
            j = i
            while j < end and bases[j] < segment.next_offset:
                j += 1
            ops += self._rewrite_segment_ops(segment, mem[i:j])
            i = j
        self._dir_dirty = True  # rotations of the failed jobs created files
        return ops

    def _rewrite_segment_ops(self, segment: Segment, pending: list[_Pending]) -> list[Op]:
        first = pending[0].base_offset
        relative = first - segment.start_offset
        position = segment.byte_range(segment.start_offset, first)[1] if relative else 0
        index_at = relative * INDEX_ENTRY_SIZE
        entries = []
        at = position
        for p in pending:
            entries.append(storage_index(p.batch, relative, at, p.timestamp_us))
            relative += p.batch.count
            at += p.batch.size_bytes
        rows = np.concatenate(entries)
        ops: list[Op] = [
            WriteOp(segment.log, [p.batch.buf for p in pending], position, at - position),
            WriteOp(segment.index, [rows.data], index_at, rows.nbytes),
        ]
        if segment is not self._active:
            # Sealed (maybe by the failed job): seal and sync it again, as a rotation does.
            log_file, index_file = segment.log, segment.index
            return [*ops, SealOp(log_file), SealOp(index_file), SyncOp(log_file), SyncOp(index_file)]
        self._dirty[id(segment.log)] = segment.log
        self._dirty_index[id(segment.index)] = segment.index
        return ops

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
            if sync:
                self._durable_offset = end
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
        try:
            while i < len(journal):
                segment = self._active
                j, size = i, segment.size_bytes
                # Take batches until the segment is full. A batch may cross the limit (the
                # limit is soft, as in Iggy) but never the u32 reach of index positions.
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
        except OSError as e:
            # Creating the next segment's files failed. The batches before it were recorded in
            # the segments but their writes go nowhere: fail, and let a retry write them.
            self._journal_at += i
            self.unflushed_messages = sum(p.batch.count for p in journal[i:])
            self.unflushed_bytes = sum(p.batch.size_bytes for p in journal[i:])
            self._failure = e
            self._failure_raised = True
            raise
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
        # May fail: nothing changed yet.
        new = Segment.create(self.io, self.directory, start_offset, fmt=self.log_format)
        old.seal()
        self._dirty.pop(id(old.log), None)
        self._dirty_index.pop(id(old.index), None)
        self._segments.append(new)
        self._segment_starts.append(start_offset)
        self._dir_dirty = True
        # A sealed segment is read for a long time after: make it durable once, now.
        return [SealOp(old.log), SealOp(old.index), SyncOp(old.log), SyncOp(old.index)]

    def _trim_memory(self) -> None:
        self._release_written_indexes()
        mem, bases = self._mem, self._mem_bases
        i = self._unwritten_at
        while i < self._journal_at and bases[i] + mem[i].batch.count <= self._written_offset:
            self._cached_bytes += mem[i].batch.size_bytes
            i += 1
        self._unwritten_at = i
        s = self._synced_at
        while s < i and bases[s] + mem[s].batch.count <= self._durable_offset:
            self._unsynced_bytes -= mem[s].batch.size_bytes
            s += 1
        # When holding, a written batch stays until synced: a failed sync rewrites it.
        keep_from = s if self._unsynced_budget else i
        h = self._mem_head
        floor = self.first_offset
        budget = self._cache_budget
        while h < i and (
            bases[h] + mem[h].batch.count <= floor or (h < keep_from and self._cached_bytes > budget)
        ):
            self._cached_bytes -= mem[h].batch.size_bytes
            h += 1
        self._mem_head = h
        while s < h:  # gone unsynced (not held, or deleted by retention): no longer counted
            self._unsynced_bytes -= mem[s].batch.size_bytes
            s += 1
        self._synced_at = s
        if h and (h == len(mem) or (h >= _COMPACT_AT and 2 * h >= len(mem))):
            del mem[:h]
            del bases[:h]
            self._unwritten_at -= h
            self._journal_at -= h
            self._synced_at -= h
            self._mem_head = 0

    def _release_written_indexes(self) -> None:
        """Sealed segments whose writes have all completed hand their in-memory index to the
        shared cache; from then on their index is read from the file when not cached."""
        segments = self._segments
        for i in range(len(segments) - 2, -1, -1):
            segment = segments[i]
            if not segment.holds_index:
                break  # older ones were released before
            if segment.next_offset <= self._written_offset:
                segment.release_index(self.index_cache)

    @property
    def index_bytes_held(self) -> int:
        """Index columns held by this partition's segments themselves: the active segment's
        and those of sealed segments still being written (the shared cache aside)."""
        return sum(s.index_bytes_held for s in self._segments if s.holds_index)

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
        # With durable_polls nothing past the durable offset goes out (see the module docstring).
        end = min(start + max(count, 0), self._visible_end)
        if start >= end:
            return PollResult(start_offset, 0, [], self.store_format)
        budget = max_bytes  # None: unbounded
        chunks: list[Piece] = []
        fmt: LogFormat | None = None  # of what the reply holds so far: one format per poll
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
                if fmt is not None and segment.fmt is not fmt:
                    stopped = True  # the next poll starts at the other format
                    break
                # Verified unless known good; stops before a unit that fails.
                span = segment.read_span(lo, hi, budget, got == 0, file_ranges)
                if span.count:
                    chunks.extend(span.pieces)
                    fmt = segment.fmt
                    first = lo if first is None else first
                    got += span.count
                    if budget is not None:
                        budget -= span.nbytes
                if span.damaged:
                    if not got:
                        raise IggyError(
                            Status.INVALID_MESSAGE_CHECKSUM,
                            f"partition {self.partition_id}: message at offset {lo} fails verification",
                        )
                    stopped = True  # serve the valid prefix, nothing after the damage
                    break
                stopped = span.count < hi - lo
                if stopped:
                    break
        if fmt is not None and fmt is not self.log_format:
            stopped = True  # memory holds the active format only
        if end > mem_start and not stopped:
            fmt = self.log_format
            records = fmt is RECORD_LOG
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
                buf = p.batch.buf
                if records and (a or b < p.batch.count):
                    # A cut record: its frames in range with a rewritten header (0.9, 4.5).
                    lo_byte = max(lo_byte, BATCH_HEADER_SIZE)
                    frames = buf[lo_byte:hi_byte]
                    chunks.append(slice_record_head(buf[:BATCH_HEADER_SIZE], frames, ends[a:b] - lo_byte))
                    chunks.append(frames)
                else:
                    chunks.append(buf[lo_byte:hi_byte])
                if budget is not None:
                    budget -= hi_byte - lo_byte
                first = p.base_offset + a if first is None else first
                got += b - a
                if stopped:
                    break
        store_format = (fmt or self.log_format).store_format
        return PollResult(first if first is not None else start_offset, got, chunks, store_format)

    def offset_for_timestamp(self, timestamp_us: int) -> int | None:
        """First offset whose server timestamp >= `timestamp_us`, or None. The segment checks
        its answer against the log (IggyError INVALID_MESSAGE_CHECKSUM when it cannot)."""
        ends = [s.end_timestamp for s in self._segments]
        for segment, end_timestamp in zip(self._segments, ends, strict=True):
            if not segment.is_empty and end_timestamp >= timestamp_us:
                return segment.offset_for_timestamp(timestamp_us)
        for p in self._mem[self._journal_at :]:
            if p.timestamp_us >= timestamp_us:
                return p.base_offset
        return None

    # ---- consumer offsets ----------------------------------------------------------------
    def store_offset(self, kind: int, consumer_id: int, offset: int) -> Future[None]:
        """Store a consumer's offset (it must name a message this partition holds). Raises
        IggyError CANNOT_SAVE_CONSUMER_OFFSET when the write failed at once; with
        `offsets_fsync` and a writer, the future completes on `offsets.reap()`, once durable."""
        assert not self._closed
        if self.next_offset == 0 or not 0 <= offset <= self.current_offset:
            raise IggyError(Status.INVALID_OFFSET, f"offset {offset}, current offset {self.current_offset}")
        return self.offsets.store(kind, consumer_id, offset)

    def get_offset(self, kind: int, consumer_id: int) -> int | None:
        return self.offsets.get(kind, consumer_id)

    def delete_offset(self, kind: int, consumer_id: int) -> Future[None]:
        assert not self._closed
        if self.offsets.get(kind, consumer_id) is None:
            raise IggyError(Status.CONSUMER_OFFSET_NOT_FOUND, f"kind {kind} id {consumer_id}")
        return self.offsets.delete(kind, consumer_id)

    def min_stored_offset(self) -> int | None:
        return self.offsets.min_offset()

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
        self.offsets.delete_all()
        self._mem, self._mem_bases = [], []
        self._mem_head = self._unwritten_at = self._journal_at = self._cached_bytes = 0
        self.unflushed_messages = self.unflushed_bytes = 0
        self._dirty.clear()
        self._dirty_index.clear()
        self._segments = [Segment.create(self.io, self.directory, 0, fmt=self.log_format)]
        self._segment_starts = [0]
        self._dir_dirty = True
        self.next_offset = self._written_offset = self._durable_offset = 0
        self._synced_at = self._unsynced_bytes = 0
        # Nothing is left that a failed write could still owe the disk.
        self._failure, self._failure_raised, self._lane = None, False, Lane()

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
            self.offsets.close(sync=False)  # going away: nothing to make durable
            self._close_files()
            self._closed = True
        self.io.rmtree(self.directory)

    def _close_files(self) -> None:
        for segment in self._segments:
            segment.close()
        self.offsets.close()  # syncs what is dirty; logs and lists in offsets.unsaved what is not

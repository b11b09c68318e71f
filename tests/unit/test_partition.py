"""storage/partition.py: journal, segments, polls, consumer offsets, retention."""

from __future__ import annotations

import errno
import itertools
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tidelog.storage.io import BufferedIO, DirectIO, File, FileIO, MemIO
from tidelog.storage.partition import CONSUMER_KIND, GROUP_KIND, Partition, PartitionConfig, PollResult
from tidelog.storage.segment import log_name
from tidelog.storage.writer import Writer
from tidelog.wire.batch import INDEX_ENTRY, MESSAGE_HEADER, Batch, parse_send_batch, scan_messages

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

TINY = PartitionConfig(segment_size_bytes=1000, flush_messages=8, flush_bytes=1 << 20)
# Batches of 3 such messages take 225..249 bytes: 3 batches fill a segment, 2 do not, so after
# a flush the next batch stays in the journal.
JOURNALED = PartitionConfig(segment_size_bytes=600, flush_messages=1000)
# Nothing is flushed until asked.
MANUAL = PartitionConfig(segment_size_bytes=1 << 20, flush_messages=1000)


def encode(payloads: list[bytes]) -> tuple[bytes, bytearray]:
    """Client-side SendMessages index table and messages area (protocol 3.9, 4.1)."""
    index, area = bytearray(), bytearray()
    for payload in payloads:
        area += MESSAGE_HEADER.pack(0, 0, 0, 0, 0, 0, 0, len(payload), 0) + payload
        index += INDEX_ENTRY.pack(0, len(area), 0)
    return bytes(index), area


def batch_of(payloads: list[bytes]) -> Batch:
    index, area = encode(payloads)
    return parse_send_batch(index, area, len(payloads))


def payload(offset: int) -> bytes:
    return b"message-%d-" % offset + b"z" * (offset % 7)


def fill(part: Partition, batches: int, per_batch: int, now_us: int = 1_000) -> None:
    """Append batches whose payloads name the offset they are expected to get."""
    for _ in range(batches):
        base = part.next_offset
        last = part.append(batch_of([payload(base + i) for i in range(per_batch)]), now_us, os.urandom)
        assert last == base + per_batch - 1
        now_us += 10


def decode(result: PollResult) -> list[tuple[int, bytes]]:
    data = b"".join(bytes(c) for c in result.chunks)
    ends, valid = scan_messages(data, True, result.first_offset if result.count else None)
    assert valid == len(data) and len(ends) == result.count
    out = []
    start = 0
    for end in ends.tolist():
        _, _, _, offset, _, _, _, pl, _ = MESSAGE_HEADER.unpack_from(data, start)
        out.append((offset, data[start + 64 : start + 64 + pl]))
        start = end
    return out


@pytest.fixture(params=["buffered", "direct", "mem"])
def io(request: pytest.FixtureRequest, tmp_path: Path) -> FileIO:
    if request.param == "direct":
        if not DirectIO.supported(tmp_path):
            pytest.skip("the test directory's filesystem refuses O_DIRECT")
        return DirectIO()  # every file direct, consumer offsets included: the widest test
    return BufferedIO() if request.param == "buffered" else MemIO()


@pytest.fixture(params=["sync", "writer"])
def writer(request: pytest.FixtureRequest) -> Iterator[Writer | None]:
    """No writer (flushes run inline) or a writer thread (flushes are jobs)."""
    if request.param == "sync":
        yield None
        return
    w = Writer()
    yield w
    w.close()


def test_partition_given_new_directory_when_opened_should_be_empty(
    io: FileIO, tmp_path: Path, writer: Writer | None
) -> None:
    part = Partition.open(tmp_path / "p", 3, TINY, io, writer=writer)
    assert part.partition_id == 3
    assert (part.current_offset, part.next_offset, part.messages_count, part.size_bytes) == (0, 0, 0, 0)
    assert part.is_empty and part.segments_count == 1 and part.first_offset == 0
    assert part.recovery.messages == 0 and part.recovery.segments == 1
    result = part.poll(0, 10)
    assert result.count == 0 and result.chunks == []


def test_partition_given_appends_below_thresholds_when_polled_should_serve_from_journal(
    io: FileIO, tmp_path: Path, writer: Writer | None
) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY, io, writer=writer)
    fill(part, 2, 3)
    assert part.unflushed_messages == 6 and part.unflushed_bytes == part.size_bytes > 0
    assert part.current_offset == 5 and part.messages_count == 6
    assert io.read_file(tmp_path / "p" / log_name(0)) == b""
    result = part.poll(1, 4)
    assert all(isinstance(c, memoryview) for c in result.chunks)
    assert decode(result) == [(o, payload(o)) for o in range(1, 5)]


def test_partition_given_journal_when_polled_should_share_the_appended_buffer(
    tmp_path: Path, writer: Writer | None
) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY, writer=writer)
    batch = batch_of([b"a", b"b", b"c"])
    part.append(batch, 1, os.urandom)
    (chunk,) = part.poll(1, 1).chunks
    assert isinstance(chunk, memoryview)
    assert np.shares_memory(np.frombuffer(chunk, np.uint8), np.frombuffer(batch.buf, np.uint8))


def test_partition_given_message_threshold_when_reached_should_flush_to_disk(
    io: FileIO, tmp_path: Path
) -> None:
    config = PartitionConfig(segment_size_bytes=1 << 20, flush_messages=5)
    part = Partition.open(tmp_path / "p", 0, config, io)
    fill(part, 1, 4)
    assert part.unflushed_messages == 4
    fill(part, 1, 1)
    assert part.unflushed_messages == 0 and part.unflushed_bytes == 0
    log = io.read_file(tmp_path / "p" / log_name(0))
    assert len(scan_messages(log, True, 0)[0]) == 5


def test_partition_given_byte_threshold_when_reached_should_flush_to_disk(
    io: FileIO, tmp_path: Path, writer: Writer | None
) -> None:
    config = PartitionConfig(segment_size_bytes=1 << 20, flush_messages=1000, flush_bytes=300)
    part = Partition.open(tmp_path / "p", 0, config, io, writer=writer)
    part.append(batch_of([b"x" * 100]), 1, os.urandom)
    assert part.unflushed_bytes == 164
    part.append(batch_of([b"y" * 100]), 1, os.urandom)
    assert part.unflushed_bytes == 0 and part.size_bytes == 328


def test_partition_given_tiny_segments_when_filled_should_rotate_at_the_size(
    io: FileIO, tmp_path: Path, writer: Writer | None
) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY, io, writer=writer)
    fill(part, 12, 4)
    part.flush(fsync=False)
    segments = part.segments
    assert part.segments_count == len(segments) > 3
    for prev, nxt in itertools.pairwise(segments):
        assert nxt.start_offset == prev.next_offset
        assert prev.sealed and prev.size_bytes >= TINY.segment_size_bytes
        # Soft limit: only the batch that crossed it went over.
        assert prev.size_bytes < TINY.segment_size_bytes + 4 * (64 + 30)
    assert not segments[-1].sealed and segments[-1].size_bytes < TINY.segment_size_bytes
    names = set(io.listdir(tmp_path / "p"))
    assert {log_name(s.start_offset) for s in segments} <= names
    assert part.messages_count == 48 and part.size_bytes == sum(s.size_bytes for s in segments)


def test_partition_given_disk_and_journal_when_polled_at_every_boundary_should_return_exact_messages(
    io: FileIO, tmp_path: Path, writer: Writer | None
) -> None:
    part = Partition.open(tmp_path / "p", 0, JOURNALED, io, writer=writer)
    fill(part, 7, 3)
    part.flush(fsync=False)  # several flushed segments
    fill(part, 1, 3)  # plus a journal that stays in memory
    total = part.next_offset
    assert part.unflushed_messages == 3 and part.segments_count == 3
    for start in range(total + 2):
        for count in (1, 2, 3, 5, 11, 100):
            got = decode(part.poll(start, count))
            want = [(o, payload(o)) for o in range(start, min(start + count, total))]
            assert got == want, (start, count)


def test_partition_given_span_over_segments_when_polled_should_read_once_per_segment(
    io: FileIO, tmp_path: Path
) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY, io)
    fill(part, 9, 3)
    part.flush(fsync=False)
    spanned = [s for s in part.segments if not s.is_empty]
    result = part.poll(0, part.next_offset)
    assert len(result.chunks) == len(spanned)
    assert all(isinstance(c, bytes) for c in result.chunks)
    assert result.first_offset == 0 and result.count == part.next_offset


def test_partition_given_zero_count_or_start_past_end_when_polled_should_be_empty(
    tmp_path: Path, writer: Writer | None
) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY, writer=writer)
    fill(part, 1, 3)
    assert part.poll(0, 0).count == 0
    assert part.poll(3, 10).count == 0 and part.poll(3, 10).chunks == []


def test_partition_given_clock_going_back_when_appending_should_never_lower_timestamps(
    tmp_path: Path,
    writer: Writer | None,
) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY, writer=writer)
    part.append(batch_of([b"a"]), 5_000, os.urandom)
    part.append(batch_of([b"b"]), 4_000, os.urandom)
    data = b"".join(bytes(c) for c in part.poll(0, 2).chunks)
    assert MESSAGE_HEADER.unpack_from(data, 0)[4] == 5_000  # timestamp
    assert MESSAGE_HEADER.unpack_from(data, 65)[4] == 5_000


def test_partition_given_timestamps_when_searched_should_find_first_at_or_after(
    io: FileIO, tmp_path: Path, writer: Writer | None
) -> None:
    part = Partition.open(tmp_path / "p", 0, JOURNALED, io, writer=writer)
    # Batch b gets timestamp 1000 + 10 b and offsets 3b..3b+2.
    fill(part, 9, 3, now_us=1_000)
    part.flush(fsync=False)
    fill(part, 1, 3, now_us=1_090)
    assert part.unflushed_messages == 3 and part.segments_count > 1
    assert part.offset_for_timestamp(0) == 0
    for b in range(10):
        assert part.offset_for_timestamp(1_000 + 10 * b) == 3 * b
        assert part.offset_for_timestamp(1_000 + 10 * b - 5) == 3 * b
    assert part.offset_for_timestamp(1_000 + 10 * 9 + 1) is None


def test_partition_given_data_when_reopened_should_restore_counts_sizes_and_offsets(
    io: FileIO, tmp_path: Path, writer: Writer | None
) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY, io, writer=writer)
    fill(part, 7, 3)
    part.store_offset(CONSUMER_KIND, 7, 10)
    part.store_offset(GROUP_KIND, 7, 4)
    before = (part.next_offset, part.messages_count, part.size_bytes, part.segments_count)
    part.close()
    again = Partition.open(tmp_path / "p", 0, TINY, io, writer=writer)
    assert (again.next_offset, again.messages_count, again.size_bytes, again.segments_count) == before
    assert again.recovery.messages == before[1] and again.recovery.truncated_bytes == 0
    assert again.get_offset(CONSUMER_KIND, 7) == 10 and again.get_offset(GROUP_KIND, 7) == 4
    assert decode(again.poll(0, 100)) == [(o, payload(o)) for o in range(21)]
    fill(again, 1, 2)
    assert decode(again.poll(21, 5)) == [(21, payload(21)), (22, payload(22))]


def _sealed_partition(io: FileIO, tmp_path: Path, writer: Writer | None = None) -> Partition:
    part = Partition.open(tmp_path / "p", 0, TINY, io, writer=writer)
    for b in range(12):
        fill(part, 1, 4, now_us=1_000 * (b + 1))
    part.flush(fsync=False)
    assert part.segments_count >= 4
    return part


def test_delete_segments_given_no_stored_offsets_when_asked_should_delete_oldest_sealed_only(
    io: FileIO, tmp_path: Path, writer: Writer | None
) -> None:
    part = _sealed_partition(io, tmp_path, writer)
    segments = part.segments
    assert part.delete_segments(2) == 2
    assert part.first_offset == segments[2].start_offset
    assert not io.exists(tmp_path / "p" / log_name(segments[0].start_offset))
    assert part.poll(0, 1).first_offset == segments[2].start_offset
    assert part.delete_segments(100) == len(segments) - 3
    assert part.segments_count == 1  # the active segment is never deleted
    assert part.messages_count == part.segments[0].messages_count


def test_delete_segments_given_stored_offset_when_asked_should_keep_unconsumed_segments(
    io: FileIO, tmp_path: Path, writer: Writer | None
) -> None:
    part = _sealed_partition(io, tmp_path, writer)
    segments = part.segments
    part.store_offset(CONSUMER_KIND, 1, segments[1].end_offset)
    part.store_offset(GROUP_KIND, 1, segments[2].end_offset - 1)
    assert part.delete_segments(10) == 2
    assert part.first_offset == segments[2].start_offset
    assert part.delete_oldest_sealed_segment() == 0


def test_delete_oldest_sealed_segment_given_sealed_segments_when_asked_should_return_freed_bytes(
    io: FileIO, tmp_path: Path, writer: Writer | None
) -> None:
    part = _sealed_partition(io, tmp_path, writer)
    size_before = part.size_bytes
    oldest = part.segments[0]
    freed = part.delete_oldest_sealed_segment()
    assert freed == oldest.size_bytes > 0
    assert part.size_bytes == size_before - freed


def test_expire_given_old_sealed_segments_when_run_should_delete_only_expired(
    io: FileIO, tmp_path: Path, writer: Writer | None
) -> None:
    part = _sealed_partition(io, tmp_path, writer)
    segments = part.segments
    now = segments[1].end_timestamp + 500
    assert part.expire(now, expiry_us=500) == 2
    assert part.first_offset == segments[2].start_offset
    assert part.expire(now, expiry_us=500) == 0
    part.store_offset(CONSUMER_KIND, 3, segments[2].start_offset)
    assert part.expire(10**12, expiry_us=1) == 0  # the stored offset guards segment 2
    part.delete_offset(CONSUMER_KIND, 3)
    assert part.expire(10**12, expiry_us=1) == len(segments) - 3
    assert part.segments_count == 1


def test_purge_given_data_and_offsets_when_purged_should_start_empty_at_zero(
    io: FileIO, tmp_path: Path, writer: Writer | None
) -> None:
    part = _sealed_partition(io, tmp_path, writer)
    fill(part, 1, 2)
    part.store_offset(CONSUMER_KIND, 1, 3)
    part.purge()
    assert (part.next_offset, part.messages_count, part.size_bytes, part.segments_count) == (0, 0, 0, 1)
    assert part.get_offset(CONSUMER_KIND, 1) is None and part.unflushed_messages == 0
    assert [n for n in io.listdir(tmp_path / "p") if n.endswith(".log")] == [log_name(0)]
    fill(part, 1, 2)
    assert decode(part.poll(0, 10)) == [(0, payload(0)), (1, payload(1))]
    part.close()
    again = Partition.open(tmp_path / "p", 0, TINY, io, writer=writer)
    assert again.next_offset == 2 and again.get_offset(CONSUMER_KIND, 1) is None


def test_close_given_journal_when_closed_should_flush_it(
    io: FileIO, tmp_path: Path, writer: Writer | None
) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY, io, writer=writer)
    fill(part, 1, 3)
    part.close()
    assert Partition.open(tmp_path / "p", 0, TINY, io, writer=writer).next_offset == 3


def test_destroy_given_partition_when_destroyed_should_remove_directory(
    io: FileIO, tmp_path: Path, writer: Writer | None
) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY, io, writer=writer)
    fill(part, 1, 3)
    part.store_offset(CONSUMER_KIND, 1, 1)
    part.destroy()
    assert not io.exists(tmp_path / "p")


def test_fsync_given_fsync_on_flush_when_crashed_should_keep_flushed_messages(tmp_path: Path) -> None:
    io = MemIO()
    durable = PartitionConfig(segment_size_bytes=1000, flush_messages=4, fsync_on_flush=True)
    part = Partition.open(tmp_path / "p", 0, durable, io)
    fill(part, 5, 4)
    io.crash()
    again = Partition.open(tmp_path / "p", 0, durable, io)
    assert again.next_offset == 20
    assert decode(again.poll(0, 100)) == [(o, payload(o)) for o in range(20)]


def test_fsync_given_no_fsync_when_crashed_should_lose_unsynced_but_keep_explicitly_synced(
    tmp_path: Path,
) -> None:
    io = MemIO()
    config = PartitionConfig(segment_size_bytes=1 << 20, flush_messages=4)
    part = Partition.open(tmp_path / "p", 0, config, io)
    fill(part, 1, 4)  # flushed, not synced
    part.flush(fsync=True)  # FlushUnsavedBuffer with fsync
    fill(part, 1, 4)  # flushed, not synced
    io.crash()
    assert Partition.open(tmp_path / "p", 0, config, io).next_offset == 4


def test_fsync_given_acknowledged_syncs_when_power_lost_should_rebuild_the_unsynced_index(
    tmp_path: Path, writer: Writer | None
) -> None:
    """flush_async(fsync=True), the per-acknowledgement sync, makes only the log durable:
    after a power loss the index misses entries, and recovery must index them from the log."""
    io = MemIO()
    config = PartitionConfig(segment_size_bytes=1 << 20, flush_messages=1000)
    part = Partition.open(tmp_path / "p", 0, config, io, writer=writer)
    for _ in range(6):
        fill(part, 1, 3)
        part.flush_async(fsync=True).result(timeout=10)
    index_before = io.read_file(tmp_path / "p" / log_name(0).replace(".log", ".index"))
    io.crash()
    index_after = io.read_file(tmp_path / "p" / log_name(0).replace(".log", ".index"))
    assert len(index_after) < len(index_before)  # the index really was not synced
    again = Partition.open(tmp_path / "p", 0, config, io)
    assert again.next_offset == 18
    assert decode(again.poll(0, 100)) == [(o, payload(o)) for o in range(18)]


def test_fsync_given_full_flush_when_power_lost_should_keep_log_and_index(tmp_path: Path) -> None:
    io = MemIO()
    config = PartitionConfig(segment_size_bytes=1 << 20, flush_messages=1000)
    part = Partition.open(tmp_path / "p", 0, config, io)
    fill(part, 3, 3)
    part.flush(fsync=True)  # shutdown's flush: indexes too
    index = io.read_file(tmp_path / "p" / log_name(0).replace(".log", ".index"))
    io.crash()
    assert io.read_file(tmp_path / "p" / log_name(0).replace(".log", ".index")) == index
    assert Partition.open(tmp_path / "p", 0, config, io).recovery.rebuilt_indexes == 0


# ---- with a writer thread ---------------------------------------------------------------


class Stepper:
    """A writer that runs exactly one job per `step()`, so "in flight" is deterministic."""

    def __init__(self, max_jobs: int = 64) -> None:
        self._done = threading.Semaphore(0)
        self.writer = Writer(on_complete=self._completed, max_jobs=max_jobs)
        self.writer.pause()

    def _completed(self) -> None:
        # Pause before telling the test, so its next resume() cannot be lost.
        self.writer.pause()
        self._done.release()

    def step(self) -> None:
        self.writer.resume()
        assert self._done.acquire(timeout=5), "no job completed"


@pytest.fixture
def stepper() -> Iterator[Stepper]:
    s = Stepper()
    yield s
    s.writer.close()


def read_independently(io: FileIO, path: Path) -> bytes:
    """The file's bytes as another process would see them (not through the partition)."""
    return io.read_file(path) if isinstance(io, MemIO) else path.read_bytes()


def check_every_boundary(part: Partition) -> None:
    total = part.next_offset
    for start in range(total + 2):
        for count in (1, 2, 4, 7, 100):
            got = decode(part.poll(start, count))
            assert got == [(o, payload(o)) for o in range(start, min(start + count, total))], (start, count)


def test_partition_given_jobs_in_flight_when_polled_at_every_boundary_should_return_exact_messages(
    io: FileIO, tmp_path: Path, stepper: Stepper
) -> None:
    # No tail cache: once written, messages must come back from the files.
    config = PartitionConfig(segment_size_bytes=600, flush_messages=6, cache_bytes=0)
    part = Partition.open(tmp_path / "p", 0, config, io, writer=stepper.writer)
    fill(part, 7, 3)  # flushes submitted and held back
    assert part.pending_jobs >= 3 and part.written_offset == 0
    assert part.segments_count > 1  # rotations were decided at submit time
    assert read_independently(io, tmp_path / "p" / log_name(0)) == b""
    check_every_boundary(part)
    while part.pending_jobs:
        stepper.step()
        part.reap()
        check_every_boundary(part)
    assert part.written_offset == part.next_offset - part.unflushed_messages
    result = part.poll(0, part.written_offset)
    assert all(isinstance(c, bytes) for c in result.chunks)  # from the files, not from memory
    assert decode(result) == [(o, payload(o)) for o in range(part.written_offset)]


def test_partition_given_writer_when_appending_past_thresholds_should_return_before_the_write(
    tmp_path: Path, stepper: Stepper
) -> None:
    io = MemIO()
    config = PartitionConfig(segment_size_bytes=1 << 20, flush_messages=5)
    part = Partition.open(tmp_path / "p", 0, config, io, writer=stepper.writer)
    fill(part, 2, 3)
    assert part.unflushed_messages == 0 and part.pending_jobs == 1
    assert io.read_file(tmp_path / "p" / log_name(0)) == b""
    stepper.step()
    part.reap()
    assert len(scan_messages(io.read_file(tmp_path / "p" / log_name(0)), True, 0)[0]) == 6


def test_flush_async_given_held_job_when_awaited_should_resolve_only_once_the_file_holds_the_data(
    io: FileIO, tmp_path: Path, stepper: Stepper
) -> None:
    part = Partition.open(tmp_path / "p", 0, JOURNALED, io, writer=stepper.writer)
    fill(part, 1, 3)
    done = part.flush_async(fsync=False)
    fill(part, 1, 2)  # after the call: not covered
    assert not done.done()
    path = tmp_path / "p" / log_name(0)
    assert read_independently(io, path) == b""
    stepper.step()
    done.result(timeout=5)
    ends, _ = scan_messages(read_independently(io, path), True, 0)
    assert len(ends) == 3  # DirectIO pads the file with zeros, which the scan stops at
    assert part.unflushed_messages == 2


def test_flush_async_given_nothing_new_when_called_should_share_the_last_job_or_be_done(
    tmp_path: Path, stepper: Stepper
) -> None:
    part = Partition.open(tmp_path / "p", 0, JOURNALED, MemIO(), writer=stepper.writer)
    assert part.flush_async(fsync=False).done() and part.flush_async(fsync=True).done()
    fill(part, 1, 3)
    first = part.flush_async(fsync=False)
    assert part.flush_async(fsync=False) is first and not first.done()
    stepper.step()
    first.result(timeout=5)


class FaultyIO(MemIO):
    """MemIO that counts fdatasyncs per file name and fails writes on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_writes = False
        self.syncs: dict[str, int] = {}

    def open(self, path: Path) -> File:
        return _FaultyFile(self, path.name, super().open(path))


class _FaultyFile(File):
    def __init__(self, io: FaultyIO, name: str, inner: File) -> None:
        self._io, self._name, self._inner = io, name, inner

    def pwritev(self, buffers: Sequence[ReadableBuffer], offset: int) -> int:
        if self._io.fail_writes:
            raise OSError(errno.EIO, "injected write error")
        return self._inner.pwritev(buffers, offset)

    def pread(self, length: int, offset: int) -> bytes:
        return self._inner.pread(length, offset)

    def fdatasync(self) -> None:
        self._io.syncs[self._name] = self._io.syncs.get(self._name, 0) + 1
        self._inner.fdatasync()

    def truncate(self, length: int) -> None:
        self._inner.truncate(length)

    def size(self) -> int:
        return self._inner.size()

    def close(self) -> None:
        self._inner.close()


def test_flush_async_given_concurrent_sync_callers_when_a_sync_is_queued_should_share_one_fsync(
    tmp_path: Path, stepper: Stepper
) -> None:
    io = FaultyIO()
    part = Partition.open(tmp_path / "p", 0, MANUAL, io, writer=stepper.writer)
    fill(part, 1, 2)
    first = part.flush_async(fsync=True)
    assert part.flush_async(fsync=True) is first  # nothing new: the queued sync covers it
    later = []
    for _ in range(3):  # each caller appends, then asks for a sync while one is queued
        fill(part, 1, 2)
        later.append(part.flush_async(fsync=True))
    assert later[0] is later[1] is later[2] and part.pending_jobs == 1
    stepper.step()
    part.reap()  # retires the first sync and submits the shared one
    assert first.done() and not later[0].done() and part.pending_jobs == 1
    stepper.step()
    later[0].result(timeout=5)
    assert io.syncs[log_name(0)] == 2 and stepper.writer.jobs_done == 2
    io.crash()
    again = Partition.open(tmp_path / "p", 0, MANUAL, io)
    assert decode(again.poll(0, 100)) == [(o, payload(o)) for o in range(8)]


def test_flush_given_writer_when_a_sync_is_outstanding_should_block_until_the_next_sync_is_done(
    tmp_path: Path,
) -> None:
    io = FaultyIO()
    with Writer() as w:
        part = Partition.open(tmp_path / "p", 0, MANUAL, io, writer=w)
        fill(part, 1, 2)
        part.flush_async(fsync=True)
        fill(part, 1, 2)
        part.flush(fsync=True)  # must drive reap() itself to get the shared sync submitted
        assert part.pending_jobs == 0 and part.written_offset == 4
        io.crash()
    assert Partition.open(tmp_path / "p", 0, MANUAL, io).next_offset == 4


def test_partition_given_tail_cache_when_much_was_written_should_bound_memory_and_poll_right(
    io: FileIO, tmp_path: Path
) -> None:
    config = PartitionConfig(segment_size_bytes=2000, flush_messages=6, cache_bytes=1000)
    with Writer() as w:
        part = Partition.open(tmp_path / "p", 0, config, io, writer=w)
        fill(part, 40, 3)  # about 9.5 KB, across several segments
        part.flush(fsync=False)
        assert 0 < part.held_bytes <= config.cache_bytes
        check_every_boundary(part)
        tail = part.poll(part.next_offset - 3, 3)
        assert tail.chunks and all(isinstance(c, memoryview) for c in tail.chunks)  # from memory
        assert all(isinstance(c, bytes) for c in part.poll(0, 3).chunks)  # from the files
        fill(part, 1, 3)
        assert decode(part.poll(part.next_offset - 6, 6)) == [
            (o, payload(o)) for o in range(part.next_offset - 6, part.next_offset)
        ]


def test_partition_given_writer_and_no_explicit_reap_when_appending_should_still_bound_memory(
    tmp_path: Path,
) -> None:
    config = PartitionConfig(segment_size_bytes=1 << 20, flush_messages=3, cache_bytes=500)
    with Writer() as w:
        part = Partition.open(tmp_path / "p", 0, config, MemIO(), writer=w)
        for _ in range(60):
            fill(part, 1, 3)
            part.flush_async(fsync=False).result(timeout=5)
        # append() reaps what completed, so only the cache and the last job stay held.
        assert part.held_bytes <= config.cache_bytes + 300


def test_partition_given_failing_writes_when_flushed_should_raise_once_refuse_writes_and_keep_data(
    tmp_path: Path, writer: Writer | None
) -> None:
    io = FaultyIO()
    config = PartitionConfig(segment_size_bytes=1 << 20, flush_messages=6)
    part = Partition.open(tmp_path / "p", 0, config, io, writer=writer)
    fill(part, 1, 3)
    io.fail_writes = True
    if writer is None:
        with pytest.raises(OSError, match="injected"):
            fill(part, 1, 3)  # the flush runs inside append
    else:
        fill(part, 1, 3)  # the flush is only submitted
        done = part.flush_async(fsync=False)
        assert isinstance(done.exception(timeout=5), OSError)
        with pytest.raises(OSError, match="injected"):
            part.reap()
        part.reap()  # raised once
    assert part.failed
    with pytest.raises(OSError, match="refusing writes"):
        fill(part, 1, 3)
    with pytest.raises(OSError, match="refusing writes"):
        part.flush_async(fsync=True)
    assert decode(part.poll(0, 100)) == [(o, payload(o)) for o in range(6)]  # still in memory
    with pytest.raises(OSError):
        part.close()


def test_partition_given_failed_job_when_later_jobs_queued_should_not_write_past_the_hole(
    tmp_path: Path, stepper: Stepper
) -> None:
    io = FaultyIO()
    config = PartitionConfig(segment_size_bytes=1 << 20, flush_messages=3)
    part = Partition.open(tmp_path / "p", 0, config, io, writer=stepper.writer)
    fill(part, 1, 3)  # job 1
    fill(part, 1, 3)  # job 2
    io.fail_writes = True
    stepper.step()  # job 1 fails
    io.fail_writes = False
    stepper.step()  # job 2 must not run: its bytes would land after a hole
    with pytest.raises(OSError):
        part.reap()
    assert io.read_file(tmp_path / "p" / log_name(0)) == b""


@pytest.mark.parametrize("action", ["close", "destroy", "purge", "delete_segments"])
def test_partition_given_held_jobs_when_closing_or_deleting_should_wait_for_them_first(
    io: FileIO, tmp_path: Path, action: str
) -> None:
    w = Writer()
    w.pause()
    try:
        part = Partition.open(tmp_path / "p", 0, TINY, io, writer=w)
        fill(part, 12, 4)  # rotations and their seal jobs, all held back
        assert part.pending_jobs > 2
        first_kept = part.segments[2].start_offset
        result: list[object] = []
        t = threading.Thread(
            target=lambda: result.append(getattr(part, action)(*([2] if "seg" in action else [])))
        )
        t.start()
        t.join(0.05)
        assert t.is_alive()  # waiting for the writer
        w.resume()
        t.join(5)
        assert not t.is_alive()
        assert not part.failed  # nothing was closed or deleted under a queued job
        if action == "close":
            again = Partition.open(tmp_path / "p", 0, TINY, io)
            assert decode(again.poll(0, 100)) == [(o, payload(o)) for o in range(48)]
        elif action == "destroy":
            assert not io.exists(tmp_path / "p")
        elif action == "purge":
            assert part.next_offset == 0 and part.poll(0, 10).count == 0
            fill(part, 1, 2)
            part.flush(fsync=False)
            assert decode(part.poll(0, 10)) == [(0, payload(0)), (1, payload(1))]
        else:
            assert result == [2] and part.first_offset == first_kept
            assert decode(part.poll(0, 100)) == [(o, payload(o)) for o in range(first_kept, 48)]
    finally:
        w.close()


def test_crash_given_writer_when_some_jobs_are_unsynced_should_lose_only_those(
    tmp_path: Path, stepper: Stepper
) -> None:
    io = MemIO()
    part = Partition.open(tmp_path / "p", 0, MANUAL, io, writer=stepper.writer)
    fill(part, 2, 3)
    synced = part.flush_async(fsync=True)
    stepper.step()
    synced.result(timeout=5)
    fill(part, 1, 3)
    written = part.flush_async(fsync=False)
    stepper.step()
    written.result(timeout=5)  # written, never synced
    fill(part, 1, 3)
    part.flush_async(fsync=False)  # held back: never written
    io.crash()
    again = Partition.open(tmp_path / "p", 0, MANUAL, io)
    assert decode(again.poll(0, 100)) == [(o, payload(o)) for o in range(6)]


def test_partition_given_direct_io_and_writer_when_segments_sealed_should_leave_no_padding(
    tmp_path: Path,
) -> None:
    if not DirectIO.supported(tmp_path):
        pytest.skip("the test directory's filesystem refuses O_DIRECT")
    with Writer() as w:
        part = Partition.open(tmp_path / "p", 0, TINY, DirectIO(), writer=w)
        fill(part, 12, 4)
        part.flush(fsync=True)
        sealed = part.segments[:-1]
        assert sealed
        for segment in sealed:
            assert os.path.getsize(segment.log_path) == segment.size_bytes
        part.close()
        active = part.segments[-1]
        assert os.path.getsize(active.log_path) == active.size_bytes
    again = Partition.open(tmp_path / "p", 0, TINY, DirectIO())
    assert again.recovery.problems == [] and again.next_offset == 48


def test_partition_given_byte_budget_when_polled_should_stop_at_message_boundaries(
    io: FileIO, tmp_path: Path, writer: Writer | None
) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY, io, writer=writer)
    fill(part, 6, 5)  # segments on disk and a journal in memory
    part.flush(fsync=False)
    fill(part, 2, 5)
    everything = part.poll(0, 1000)
    sizes = [64 + len(payload(o)) for o in range(everything.count)]
    assert everything.count == 40
    for start in (0, 7, 29, 31):
        for budget in (1, sizes[start], sizes[start] + 1, 500, 10_000):
            result = part.poll(start, 1000, max_bytes=budget)
            got = decode(result)
            # At least one message; then whole messages while they fit, never more.
            fit, used = 0, 0
            for size in sizes[start:]:
                if used + size > budget and fit:
                    break
                used, fit = used + size, fit + 1
            assert [o for o, _ in got] == list(range(start, start + fit)), (start, budget)
            assert result.size_bytes == sum(sizes[start : start + fit])


def test_partition_given_no_budget_when_polled_should_return_up_to_count(
    io: FileIO, tmp_path: Path, writer: Writer | None
) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY, io, writer=writer)
    fill(part, 4, 5)
    assert part.poll(3, 10).count == 10
    assert part.poll(3, 10, max_bytes=None).count == 10

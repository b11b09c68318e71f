"""storage/partition.py under write failures: refusal, retry, rewrite, durable-only polls.

`FaultDisk` is MemIO with Linux's fsync error semantics (the "fsyncgate" behaviour): a
failed fdatasync marks the file's dirty pages clean without writing them, so a later
fdatasync that succeeds does not make them durable; only bytes written again are. A crash
keeps what was made durable. It also fails writes or syncs on demand and records every
write and sync, so a test can check what was rewritten before a sync.
"""

from __future__ import annotations

import errno
import fnmatch
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.unit.test_partition import Stepper, batch_of, decode, fill, payload
from tidelog.storage.io import File, MemIO
from tidelog.storage.partition import Partition, PartitionConfig
from tidelog.storage.segment import log_name
from tidelog.storage.writer import Writer

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


@dataclass
class _Rule:
    op: str  # "write", "sync" or "create" (opening a file that does not exist yet)
    glob: str  # fnmatch'ed against the file name
    errno_value: int
    times: int  # -1: forever


@dataclass(frozen=True)
class Event:
    op: str  # "write", "sync", "sync-failed", "write-failed"
    name: str
    offset: int = 0
    nbytes: int = 0


class FaultDisk(MemIO):
    def __init__(self) -> None:
        super().__init__()
        self.rules: list[_Rule] = []
        self.events: list[Event] = []
        self._masks: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # key -> (dirty, lost)

    def fail(self, op: str, glob: str, errno_value: int = errno.EIO, times: int = -1) -> None:
        self.rules.append(_Rule(op, glob, errno_value, times))

    def clear(self) -> None:
        self.rules.clear()

    def _fault(self, op: str, name: str) -> int | None:
        for rule in self.rules:
            if rule.op == op and rule.times != 0 and fnmatch.fnmatch(name, rule.glob):
                if rule.times > 0:
                    rule.times -= 1
                return rule.errno_value
        return None

    def open(self, path: Path) -> File:
        if not self.exists(path):
            failure = self._fault("create", path.name)
            if failure is not None:
                raise OSError(failure, os.strerror(failure), str(path))
        inner = super().open(path)
        key = self._key(path)
        return _FaultFile(self, key, path.name, inner)

    def masks(self, key: str, size: int) -> tuple[np.ndarray, np.ndarray]:
        dirty, lost = self._masks.get(key, (np.zeros(0, bool), np.zeros(0, bool)))
        if len(dirty) < size:
            dirty = np.concatenate([dirty, np.zeros(size - len(dirty), bool)])
            lost = np.concatenate([lost, np.zeros(size - len(lost), bool)])
        self._masks[key] = (dirty, lost)
        return dirty, lost

    def syncs_of(self, name: str) -> int:
        return sum(1 for e in self.events if e.op == "sync" and e.name == name)

    def crash(self, keep_unsynced_bytes: int = 0) -> None:
        super().crash(keep_unsynced_bytes)
        self._masks.clear()


class _FaultFile(File):
    def __init__(self, disk: FaultDisk, key: str, name: str, inner: File) -> None:
        self._disk, self._key, self._name, self._inner = disk, key, name, inner

    def _node_data(self) -> bytearray:
        return self._disk.files[self._key].data

    def pwritev(self, buffers: Sequence[ReadableBuffer], offset: int) -> int:
        nbytes = sum(memoryview(b).nbytes for b in buffers)
        failure = self._disk._fault("write", self._name)
        if failure is not None:
            self._disk.events.append(Event("write-failed", self._name, offset, nbytes))
            raise OSError(failure, os.strerror(failure))
        written = self._inner.pwritev(buffers, offset)
        dirty, lost = self._disk.masks(self._key, len(self._node_data()))
        dirty[offset : offset + written] = True
        lost[offset : offset + written] = False  # rewritten: the new pages are dirty again
        self._disk.events.append(Event("write", self._name, offset, written))
        return written

    def pread(self, length: int, offset: int) -> bytes:
        return self._inner.pread(length, offset)

    def fdatasync(self) -> None:
        node = self._disk.files[self._key]
        dirty, lost = self._disk.masks(self._key, len(node.data))
        failure = self._disk._fault("sync", self._name)
        if failure is not None:
            # The kernel reports the error once and marks the pages clean: they are not on
            # the disk, and no later fdatasync will write them.
            lost |= dirty
            dirty[:] = False
            self._disk.events.append(Event("sync-failed", self._name))
            raise OSError(failure, os.strerror(failure))
        old = bytes(node.synced)
        durable = bytearray(node.data)
        for i in np.flatnonzero(lost[: len(durable)]).tolist():
            durable[i] = old[i] if i < len(old) else 0
        node.synced = durable
        dirty[:] = False
        self._disk.events.append(Event("sync", self._name))

    def truncate(self, length: int) -> None:
        self._inner.truncate(length)
        dirty, lost = self._disk.masks(self._key, length)
        self._disk._masks[self._key] = (dirty[:length].copy(), lost[:length].copy())

    def size(self) -> int:
        return self._inner.size()

    def close(self) -> None:
        self._inner.close()


@pytest.fixture
def stepper() -> Iterator[Stepper]:
    s = Stepper()
    yield s
    s.writer.close()


@pytest.fixture(params=["sync", "writer"])
def writer(request: pytest.FixtureRequest) -> Iterator[Writer | None]:
    if request.param == "sync":
        yield None
        return
    w = Writer()
    yield w
    w.close()


# Segments of ~4 batches, so failures meet rotations and sealed segments; batches stay in
# memory until synced (the interval policy's setting).
HOLDING = PartitionConfig(segment_size_bytes=1000, flush_messages=6, max_unsynced_bytes=1 << 20)
ALWAYS = PartitionConfig(
    segment_size_bytes=1 << 20, flush_messages=1000, max_unsynced_bytes=1 << 20, durable_polls=True
)


def append_all(part: Partition, batches: int, per_batch: int) -> list[int]:
    """Append batches (payloads name their offset); return the offsets acknowledged, i.e.
    appended without an error, until the first error. (Without a writer the flush runs
    inside append: the batch whose flush fails is kept but answered with the error.)"""
    acked: list[int] = []
    for _ in range(batches):
        base = part.next_offset
        try:
            part.append(batch_of([payload(base + i) for i in range(per_batch)]), 1_000, os.urandom)
        except OSError:
            break
        acked.extend(range(base, base + per_batch))
    return acked


def assert_holds(part: Partition, acked: list[int]) -> None:
    """Offsets 0.. are contiguous with the payloads they were sent with, and include every
    acknowledged one."""
    assert decode(part.poll(0, 1000)) == [(o, payload(o)) for o in range(part.next_offset)]
    assert set(acked) <= set(range(part.next_offset))


def test_partition_given_enospc_when_space_returns_and_retried_should_take_writes_and_keep_all_acked(
    tmp_path: Path, writer: Writer | None
) -> None:
    disk = FaultDisk()
    part = Partition.open(tmp_path / "p", 0, HOLDING, disk, writer=writer)
    fill(part, 4, 3)
    part.flush(fsync=True)
    disk.fail("write", "*.log", errno.ENOSPC)
    acked = list(range(12)) + append_all(part, 8, 3)
    if not part.failed:  # with a writer the failure shows once the job is reaped
        with pytest.raises(OSError):
            part.flush(fsync=False)
    assert part.failed
    with pytest.raises(OSError) as refused:
        part.append(batch_of([b"refused"]), 1_000, os.urandom)
    assert refused.value.errno == errno.ENOSPC
    part.wait_for_jobs()  # the jobs after the failed one are skipped; a retry waits for them
    assert part.retry_failed()  # still full: the retry fails too
    part.wait_for_jobs()
    assert part.failed
    disk.clear()
    assert part.retry_failed()
    part.wait_for_jobs()
    assert not part.failed
    more = append_all(part, 3, 3)
    assert len(more) == 9
    acked += more
    part.flush(fsync=True)
    assert_holds(part, acked)
    disk.crash()
    again = Partition.open(tmp_path / "p", 0, HOLDING, disk)
    assert again.recovery.problems == []
    assert again.next_offset == part.next_offset
    assert_holds(again, acked)


def test_partition_given_failed_fdatasync_when_retried_should_rewrite_unsynced_bytes_before_syncing(
    tmp_path: Path, writer: Writer | None
) -> None:
    disk = FaultDisk()
    config = PartitionConfig(segment_size_bytes=1 << 20, flush_messages=1000, max_unsynced_bytes=1 << 20)
    part = Partition.open(tmp_path / "p", 0, config, disk, writer=writer)
    fill(part, 2, 3)
    part.flush(fsync=True)  # offsets 0..5 durable
    fill(part, 2, 3)
    part.flush(fsync=False)  # 6..11 written, not synced
    synced_end = part.segments[0].byte_range(0, 6)[1]
    disk.fail("sync", "*.log", errno.EIO, times=1)
    with pytest.raises(OSError):
        part.flush(fsync=True)  # the kernel drops the dirty pages' error state: 6..11 not on disk
    assert part.failed
    failed_at = len(disk.events)
    assert part.retry_failed()
    part.wait_for_jobs()
    assert not part.failed
    after = disk.events[failed_at:]
    name = log_name(0)
    first_sync = next(i for i, e in enumerate(after) if e.op == "sync" and e.name == name)
    rewritten = [e for e in after[:first_sync] if e.op == "write" and e.name == name]
    assert rewritten and rewritten[0].offset == synced_end  # from the last successful sync on
    assert rewritten[-1].offset + rewritten[-1].nbytes == part.segments[0].size_bytes
    disk.crash()
    again = Partition.open(tmp_path / "p", 0, config, disk)
    assert decode(again.poll(0, 100)) == [(o, payload(o)) for o in range(12)]


def test_partition_given_failed_sync_of_sealed_segments_when_retried_should_rewrite_and_seal_them(
    tmp_path: Path, writer: Writer | None
) -> None:
    disk = FaultDisk()
    part = Partition.open(tmp_path / "p", 0, HOLDING, disk, writer=writer)
    fill(part, 1, 3)
    part.flush(fsync=True)
    disk.fail("sync", "*.log", errno.EIO)
    acked = list(range(3)) + append_all(part, 12, 3)  # rotations whose seal syncs fail
    if not part.failed:
        with pytest.raises(OSError):
            part.flush(fsync=True)
    assert part.failed and part.segments_count >= 2
    disk.clear()
    part.wait_for_jobs()
    assert part.retry_failed()
    part.wait_for_jobs()
    assert not part.failed
    disk.crash()
    again = Partition.open(tmp_path / "p", 0, HOLDING, disk)
    assert again.recovery.problems == []
    assert again.next_offset == part.next_offset
    assert_holds(again, acked)


def test_partition_given_failure_when_jobs_of_it_are_still_queued_should_not_retry_yet(
    tmp_path: Path, stepper: Stepper
) -> None:
    disk = FaultDisk()
    config = PartitionConfig(segment_size_bytes=1 << 20, flush_messages=3, max_unsynced_bytes=1 << 20)
    part = Partition.open(tmp_path / "p", 0, config, disk, writer=stepper.writer)
    fill(part, 2, 3)  # two jobs
    disk.fail("write", "*.log", errno.EIO, times=1)
    stepper.step()  # job 1 fails
    with pytest.raises(OSError):
        part.reap()
    assert part.failed and part.pending_jobs == 1
    assert not part.retry_failed()  # job 2 (skipped) is still queued
    stepper.step()
    assert part.retry_failed()
    stepper.step()
    part.reap()
    assert not part.failed
    assert decode(part.poll(0, 10)) == [(o, payload(o)) for o in range(6)]
    disk.crash()
    assert decode(Partition.open(tmp_path / "p", 0, config, disk).poll(0, 10)) == [
        (o, payload(o)) for o in range(6)
    ]


def test_poll_given_durable_polls_when_syncs_are_in_flight_should_serve_and_count_only_durable_offsets(
    tmp_path: Path, stepper: Stepper
) -> None:
    disk = FaultDisk()
    part = Partition.open(tmp_path / "p", 0, ALWAYS, disk, writer=stepper.writer)
    fill(part, 1, 2)
    first = part.flush_async(fsync=True)
    stepper.step()
    first.result(timeout=5)
    part.reap()
    durable_size = part.size_bytes
    fill(part, 1, 1)  # a.0 at offset 2: its sync is queued, not done
    a_sync = part.flush_async(fsync=True)
    fill(part, 1, 1)  # b.0 at offset 3 (another client): waits for the next sync
    b_sync = part.flush_async(fsync=True)
    assert decode(part.poll(0, 10)) == [(0, payload(0)), (1, payload(1))]
    assert (part.current_offset, part.messages_count, part.size_bytes) == (1, 2, durable_size)
    assert part.durable_offset == 2 and part.next_offset == 4
    stepper.step()
    a_sync.result(timeout=5)
    part.reap()  # also submits the shared sync for b.0
    assert decode(part.poll(0, 10)) == [(o, payload(o)) for o in range(3)]
    assert part.current_offset == 2 and not b_sync.done()
    stepper.step()
    b_sync.result(timeout=5)
    part.reap()
    assert decode(part.poll(0, 10)) == [(o, payload(o)) for o in range(4)]
    assert (part.current_offset, part.messages_count) == (3, 4)


def test_poll_given_durable_polls_when_crashed_with_a_sync_in_flight_should_never_reuse_a_polled_offset(
    tmp_path: Path, stepper: Stepper
) -> None:
    disk = FaultDisk()
    part = Partition.open(tmp_path / "p", 0, ALWAYS, disk, writer=stepper.writer)
    fill(part, 1, 2)
    done = part.flush_async(fsync=True)
    stepper.step()
    done.result(timeout=5)
    part.reap()
    part.append(batch_of([b"a.0"]), 1_000, os.urandom)
    part.flush_async(fsync=True)  # in flight when the process dies
    part.append(batch_of([b"b.0"]), 1_000, os.urandom)
    part.flush_async(fsync=True)
    seen = {o: p for o, p in decode(part.poll(0, 100))}
    disk.crash()
    again = Partition.open(tmp_path / "p", 0, ALWAYS, disk)
    again.append(batch_of([b"c.0"]), 2_000, os.urandom)
    again.flush(fsync=True)
    after = dict(decode(again.poll(0, 100)))
    assert all(after.get(o) == p for o, p in seen.items()), (seen, after)


def test_partition_given_unsynced_budget_when_exceeded_should_submit_a_sync_and_bound_what_it_holds(
    tmp_path: Path,
) -> None:
    disk = FaultDisk()
    config = PartitionConfig(
        segment_size_bytes=1 << 20, flush_messages=3, cache_bytes=0, max_unsynced_bytes=2000
    )
    with Writer() as w:
        part = Partition.open(tmp_path / "p", 0, config, disk, writer=w)
        for _ in range(40):
            fill(part, 1, 3)  # ~240 bytes a batch, each one flushed, never a sync asked for
            part.flush_async(fsync=False).result(timeout=5)
            part.reap()
            assert part.held_bytes <= 2000 + 2 * 250
        assert disk.syncs_of(log_name(0)) >= 3
        assert part.durable_offset > 0


def test_partition_given_written_unsynced_batches_when_holding_should_keep_them_in_memory_until_synced(
    tmp_path: Path,
) -> None:
    config = PartitionConfig(
        segment_size_bytes=1 << 20, flush_messages=3, cache_bytes=0, max_unsynced_bytes=1 << 20
    )
    with Writer() as w:
        part = Partition.open(tmp_path / "p", 0, config, FaultDisk(), writer=w)
        fill(part, 4, 3)
        part.flush(fsync=False)
        assert part.held_bytes > 0 and part.durable_offset == 0  # needed for a rewrite
        part.flush(fsync=True)
        assert part.held_bytes == 0 and part.durable_offset == 12


def test_partition_given_failure_when_closed_should_report_the_unpersisted_offsets(
    tmp_path: Path, writer: Writer | None
) -> None:
    disk = FaultDisk()
    part = Partition.open(tmp_path / "p", 0, HOLDING, disk, writer=writer)
    fill(part, 2, 3)
    part.flush(fsync=True)
    disk.fail("write", "*.log", errno.ENOSPC)
    append_all(part, 2, 3)
    with pytest.raises(OSError):
        part.flush(fsync=True)
    assert part.next_offset == 12 and part.unpersisted_range() == (6, 12)
    with pytest.raises(OSError):
        part.close()


def test_partition_given_next_segment_cannot_be_created_when_rotating_should_fail_then_retry_everything(
    tmp_path: Path, writer: Writer | None
) -> None:
    disk = FaultDisk()
    part = Partition.open(tmp_path / "p", 0, HOLDING, disk, writer=writer)
    disk.fail("create", "*.log", errno.ENOSPC)  # the directory has no room for a new entry
    acked = append_all(part, 12, 3)
    assert part.failed and part.segments_count == 1
    with pytest.raises(OSError) as refused:
        part.append(batch_of([b"refused"]), 1_000, os.urandom)
    assert refused.value.errno == errno.ENOSPC
    disk.clear()
    part.wait_for_jobs()
    assert part.retry_failed()
    part.wait_for_jobs()
    assert not part.failed
    acked += append_all(part, 2, 3)
    part.flush(fsync=True)
    assert part.segments_count > 1  # the rotation that failed happened
    assert_holds(part, acked)
    disk.crash()
    again = Partition.open(tmp_path / "p", 0, HOLDING, disk)
    assert again.recovery.problems == [] and again.next_offset == part.next_offset
    assert_holds(again, acked)

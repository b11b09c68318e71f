"""storage/offsets.py: consumer-offset slot files, their fallback on damage, and their durability
under each fsync policy (through the partition and through the server's handlers)."""

from __future__ import annotations

import asyncio
import errno
import fnmatch
import os
import struct
from collections.abc import Awaitable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import xxhash

from tests.shardkit import add_stream_and_topic, for_partition
from tidelog.config import Config, DurabilityConfig, FsyncPolicy
from tidelog.server.dispatch import Dispatcher
from tidelog.server.shard import Shard
from tidelog.storage.io import BufferedIO, File, FileIO, MemIO
from tidelog.storage.partition import CONSUMER_KIND, GROUP_KIND, Partition, PartitionConfig
from tidelog.storage.recovery import RecoveryReport
from tidelog.storage.writer import Writer
from tidelog.wire import requests as c
from tidelog.wire.batch import Batch, parse_send_batch
from tidelog.wire.codes import IggyError, Status
from tidelog.wire.primitives import Consumer

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

TINY = PartitionConfig(segment_size_bytes=1000, flush_messages=8, flush_bytes=1 << 20)
SLOT = struct.Struct("<4sIQQQ")  # magic, 0, sequence, offset, checksum (written independently here)


def batch_of(count: int) -> Batch:
    area, index = bytearray(), bytearray()
    for i in range(count):
        body = b"m%d" % i
        area += bytes(48) + (0).to_bytes(4, "little") + len(body).to_bytes(4, "little") + bytes(8) + body
        index += (0).to_bytes(4, "little") + len(area).to_bytes(4, "little") + bytes(8)
    return parse_send_batch(memoryview(bytes(index)), memoryview(area), count)


def slots(data: bytes) -> list[tuple[int, int] | None]:
    """(sequence, offset) of each 32-byte slot, None where it fails its checks."""
    out: list[tuple[int, int] | None] = []
    for at in (0, 32):
        if len(data) < at + 32:
            out.append(None)
            continue
        magic, _, sequence, offset, checksum = SLOT.unpack_from(data, at)
        ok = magic == b"TLCO" and xxhash.xxh3_64_intdigest(data[at : at + 24]) == checksum
        out.append((sequence, offset) if ok else None)
    return out


def newest_slot(data: bytes) -> int:
    found = [(s[0], i) for i, s in enumerate(slots(data)) if s is not None]
    return max(found)[1]


def flip(path: Path, at: int) -> bytes:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x40
    path.write_bytes(bytes(data))
    return bytes(data)


def offset_problems(report: RecoveryReport) -> list[str]:
    return [p for p in report.problems if "offsets/" in p]


def _partition_with_messages(tmp_path: Path, config: PartitionConfig = TINY) -> Partition:
    part = Partition.open(tmp_path / "p", 0, config)
    part.append(batch_of(10), 1_000, os.urandom)
    return part


# ---- defect 11: a damaged slot falls back to the other one ---------------------------------


def test_offsets_given_one_store_and_damaged_slot_when_reopened_should_fall_back_and_report(
    tmp_path: Path,
) -> None:
    part = _partition_with_messages(tmp_path)
    part.store_offset(CONSUMER_KIND, 9, 5)
    part.close()
    path = tmp_path / "p" / "offsets" / "consumers" / "9"
    flip(path, newest_slot(path.read_bytes()) * 32 + 16)  # a byte of the newest slot's offset

    again = Partition.open(tmp_path / "p", 0, TINY)
    assert again.get_offset(CONSUMER_KIND, 9) == 5
    problems = offset_problems(again.recovery)
    assert len(problems) == 1 and "offsets/consumers/9" in problems[0] and "damaged" in problems[0]
    again.close()
    # The damaged slot was rewritten: the next open finds nothing wrong, and a fallback again.
    third = Partition.open(tmp_path / "p", 0, TINY)
    assert third.get_offset(CONSUMER_KIND, 9) == 5 and offset_problems(third.recovery) == []
    assert all(s is not None and s[1] == 5 for s in slots(path.read_bytes()))
    third.close()


def test_offsets_given_two_stores_and_damaged_newest_slot_when_reopened_should_report_the_older_value(
    tmp_path: Path,
) -> None:
    part = _partition_with_messages(tmp_path)
    part.store_offset(GROUP_KIND, 3, 5)
    part.store_offset(GROUP_KIND, 3, 7)
    part.close()
    path = tmp_path / "p" / "offsets" / "groups" / "3"
    newest = newest_slot(path.read_bytes())
    assert slots(path.read_bytes())[newest] is not None
    flip(path, newest * 32 + 9)  # a byte of its sequence
    again = Partition.open(tmp_path / "p", 0, TINY)
    assert again.get_offset(GROUP_KIND, 3) == 5
    problems = offset_problems(again.recovery)
    assert len(problems) == 1 and "offsets/groups/3" in problems[0] and "offset 5" in problems[0]
    again.store_offset(GROUP_KIND, 3, 8)
    again.close()
    assert Partition.open(tmp_path / "p", 0, TINY).get_offset(GROUP_KIND, 3) == 8


def test_offsets_given_both_slots_damaged_when_reopened_should_quarantine_the_file_and_report_the_loss(
    tmp_path: Path,
) -> None:
    part = _partition_with_messages(tmp_path)
    part.store_offset(CONSUMER_KIND, 4, 5)
    part.store_offset(CONSUMER_KIND, 4, 6)
    part.close()
    path = tmp_path / "p" / "offsets" / "consumers" / "4"
    flip(path, 16)
    damaged = flip(path, 32 + 16)
    again = Partition.open(tmp_path / "p", 0, TINY)
    assert again.get_offset(CONSUMER_KIND, 4) is None
    problems = offset_problems(again.recovery)
    assert len(problems) == 1 and "offsets/consumers/4" in problems[0] and "LOST" in problems[0]
    kept = [q for q in again.recovery.quarantined if "consumers-4" in q.name]
    assert len(kept) == 1 and kept[0].read_bytes() == damaged and str(kept[0]) in problems[0]
    # A new store starts a fresh file and leaves the kept one alone.
    again.store_offset(CONSUMER_KIND, 4, 2)
    again.close()
    assert kept[0].read_bytes() == damaged
    assert Partition.open(tmp_path / "p", 0, TINY).get_offset(CONSUMER_KIND, 4) == 2


def test_offsets_given_file_of_an_older_tidelog_with_one_slot_when_reopened_should_keep_it_and_fill_the_other(
    tmp_path: Path,
) -> None:
    part = _partition_with_messages(tmp_path)
    part.close()
    head = SLOT.pack(b"TLCO", 0, 1, 5, 0)[:24]
    path = tmp_path / "p" / "offsets" / "consumers" / "2"
    path.write_bytes(bytes(32) + head + xxhash.xxh3_64_intdigest(head).to_bytes(8, "little"))
    again = Partition.open(tmp_path / "p", 0, TINY)
    assert again.get_offset(CONSUMER_KIND, 2) == 5
    (problem,) = offset_problems(again.recovery)
    assert "slot 0 empty" in problem
    again.close()
    assert all(s is not None and s[1] == 5 for s in slots(path.read_bytes()))


def test_offsets_given_leftover_tmp_file_when_reopened_should_remove_it_and_keep_the_value(
    tmp_path: Path,
) -> None:
    part = _partition_with_messages(tmp_path)
    part.store_offset(CONSUMER_KIND, 1, 3)
    part.close()
    folder = tmp_path / "p" / "offsets" / "consumers"
    (folder / "1.tmp").write_bytes(b"\x01" * 20)  # a first store cut short
    again = Partition.open(tmp_path / "p", 0, TINY)
    assert again.get_offset(CONSUMER_KIND, 1) == 3 and not (folder / "1.tmp").exists()
    again.close()


@pytest.fixture(params=["sync", "writer"])
def writer(request: pytest.FixtureRequest) -> Iterator[Writer | None]:
    """No writer (changes run inline) or a writer thread (changes may be jobs)."""
    if request.param == "sync":
        yield None
        return
    w = Writer()
    yield w
    w.close()


# ---- the store's contract (moved from test_partition.py) ----------------------------------


def test_consumer_offsets_given_store_get_delete_when_used_should_keep_kinds_apart(
    tmp_path: Path, writer: Writer | None
) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY, writer=writer)
    part.append(batch_of(5), 1_000, os.urandom)
    assert part.get_offset(CONSUMER_KIND, 1) is None
    part.store_offset(CONSUMER_KIND, 1, 3)
    part.store_offset(GROUP_KIND, 1, 1)
    part.store_offset(CONSUMER_KIND, 1, 4)
    assert part.get_offset(CONSUMER_KIND, 1) == 4 and part.get_offset(GROUP_KIND, 1) == 1
    assert part.min_stored_offset() == 1
    part.delete_offset(GROUP_KIND, 1)
    assert part.get_offset(GROUP_KIND, 1) is None and part.min_stored_offset() == 4
    with pytest.raises(IggyError) as e:
        part.delete_offset(GROUP_KIND, 1)
    assert e.value.status == Status.CONSUMER_OFFSET_NOT_FOUND


def test_consumer_offsets_given_offset_past_current_when_stored_should_fail_with_4100(tmp_path: Path) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY)
    with pytest.raises(IggyError) as e:
        part.store_offset(CONSUMER_KIND, 1, 0)  # never held a message
    assert e.value.status == Status.INVALID_OFFSET
    part.append(batch_of(2), 1_000, os.urandom)
    part.store_offset(CONSUMER_KIND, 1, 1)
    with pytest.raises(IggyError) as e:
        part.store_offset(CONSUMER_KIND, 1, 2)
    assert e.value.status == Status.INVALID_OFFSET == 4100
    assert part.get_offset(CONSUMER_KIND, 1) == 1


def test_consumer_offsets_given_lost_messages_when_reopened_should_clamp_to_current(
    tmp_path: Path, writer: Writer | None
) -> None:
    io = MemIO()
    config = PartitionConfig(
        segment_size_bytes=1 << 20, flush_messages=1000, fsync_on_flush=True, offsets_fsync=True
    )
    part = Partition.open(tmp_path / "p", 0, config, io, writer=writer)
    part.append(batch_of(5), 1_000, os.urandom)
    part.flush(fsync=True)
    part.append(batch_of(5), 1_000, os.urandom)  # offsets 5..9 stay in the journal
    part.store_offset(CONSUMER_KIND, 2, 8)
    part.store_offset(GROUP_KIND, 3, 2)
    part.offsets.drain()  # with a writer, the stores complete as jobs
    io.crash()
    again = Partition.open(tmp_path / "p", 0, config, io, writer=writer)
    assert again.current_offset == 4
    assert again.get_offset(CONSUMER_KIND, 2) == 4 and again.get_offset(GROUP_KIND, 3) == 2
    io.crash()
    assert Partition.open(tmp_path / "p", 0, config, io, writer=writer).get_offset(CONSUMER_KIND, 2) == 4


def test_consumer_offsets_given_partition_lost_every_message_when_reopened_should_drop_them(
    tmp_path: Path,
    writer: Writer | None,
) -> None:
    io = MemIO()
    config = PartitionConfig(segment_size_bytes=1 << 20, fsync_on_flush=True, offsets_fsync=True)
    part = Partition.open(tmp_path / "p", 0, config, io, writer=writer)
    part.append(batch_of(3), 1_000, os.urandom)
    part.store_offset(CONSUMER_KIND, 2, 1)
    part.offsets.drain()
    io.crash()
    again = Partition.open(tmp_path / "p", 0, config, io, writer=writer)
    assert again.next_offset == 0 and again.get_offset(CONSUMER_KIND, 2) is None


def test_consumer_offsets_given_torn_latest_slot_when_reopened_should_keep_previous_value(
    tmp_path: Path,
) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY)
    part.append(batch_of(10), 1_000, os.urandom)
    part.store_offset(CONSUMER_KIND, 9, 5)
    part.store_offset(CONSUMER_KIND, 9, 7)
    part.close()
    path = tmp_path / "p" / "offsets" / "consumers" / "9"
    data = bytearray(path.read_bytes())
    assert len(data) == 64
    # The second store (sequence 2) went to slot 0; tear it.
    data[8:16] = b"\xff" * 8
    path.write_bytes(bytes(data))
    again = Partition.open(tmp_path / "p", 0, TINY)
    assert again.get_offset(CONSUMER_KIND, 9) == 5
    again.store_offset(CONSUMER_KIND, 9, 8)
    again.close()
    assert Partition.open(tmp_path / "p", 0, TINY).get_offset(CONSUMER_KIND, 9) == 8


def test_consumer_offsets_given_reference_u64_file_when_opened_should_read_it(tmp_path: Path) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY)
    part.append(batch_of(10), 1_000, os.urandom)
    part.close()
    path = tmp_path / "p" / "offsets" / "groups" / "4"
    path.write_bytes(struct.pack("<Q", 6))
    again = Partition.open(tmp_path / "p", 0, TINY)
    assert again.get_offset(GROUP_KIND, 4) == 6 and offset_problems(again.recovery) == []
    again.close()
    assert slots(path.read_bytes()) == [(0, 6), (1, 6)]  # rewritten in the two-slot format


# ---- defect 13 in the store: sync per policy, failures leave memory alone -----------------


class FaultyIO(FileIO):
    """Delegates to another FileIO; records (op, path) and fails ops whose path matches."""

    def __init__(self, inner: FileIO) -> None:
        self.inner = inner
        self.events: list[tuple[str, str]] = []
        self.failing: dict[str, str] = {}  # op ("write", "fdatasync", "fsync_dir") -> path glob

    def check(self, op: str, path: Path | str) -> None:
        glob = self.failing.get(op)
        if glob is not None and fnmatch.fnmatch(str(path), glob):
            raise OSError(errno.EIO, f"injected {op} failure", str(path))
        self.events.append((op, str(path)))

    def open(self, path: Path) -> File:
        return _FaultyFile(self, self.inner.open(path), path)

    def exists(self, path: Path) -> bool:
        return self.inner.exists(path)

    def listdir(self, path: Path) -> list[str]:
        return self.inner.listdir(path)

    def makedirs(self, path: Path) -> None:
        self.inner.makedirs(path)

    def unlink(self, path: Path) -> None:
        self.inner.unlink(path)

    def rename(self, src: Path, dst: Path) -> None:
        self.inner.rename(src, dst)
        self.events.append(("rename", str(dst)))

    def rmtree(self, path: Path) -> None:
        self.inner.rmtree(path)

    def fsync_dir(self, path: Path) -> None:
        self.check("fsync_dir", path)
        self.inner.fsync_dir(path)


class _FaultyFile(File):
    def __init__(self, io: FaultyIO, inner: File, path: Path) -> None:
        self.io, self.inner = io, inner
        self.path = str(path).removesuffix(".tmp")  # the name it is renamed to, if it is a tmp

    def pwritev(self, buffers: Sequence[ReadableBuffer], offset: int) -> int:
        self.io.check("write", self.path)
        return self.inner.pwritev(buffers, offset)

    def pread(self, length: int, offset: int) -> bytes:
        return self.inner.pread(length, offset)

    def fdatasync(self) -> None:
        self.io.check("fdatasync", self.path)
        self.inner.fdatasync()

    def truncate(self, length: int) -> None:
        self.inner.truncate(length)

    def size(self) -> int:
        return self.inner.size()

    def close(self) -> None:
        self.inner.close()

    def seal(self) -> None:
        self.inner.seal()

    def fileno(self) -> int | None:
        return self.inner.fileno()


def synced_after_last_write(events: list[tuple[str, str]], path: str) -> bool:
    """The file was fdatasynced after the last write to it."""
    last_write = max((i for i, (op, p) in enumerate(events) if op == "write" and p == path), default=None)
    if last_write is None:
        return False
    return any(op == "fdatasync" and p == path for op, p in events[last_write + 1 :])


def test_offset_store_given_sync_each_change_when_stored_should_fdatasync_before_completing(
    tmp_path: Path,
) -> None:
    io = FaultyIO(BufferedIO())
    config = PartitionConfig(segment_size_bytes=1000, flush_messages=8, offsets_fsync=True)
    part = Partition.open(tmp_path / "p", 0, config, io)
    part.append(batch_of(10), 1_000, os.urandom)
    path = str(tmp_path / "p" / "offsets" / "consumers" / "2")
    part.store_offset(CONSUMER_KIND, 2, 4)  # creates the file: data, rename, folder synced
    assert synced_after_last_write(io.events, path)
    assert ("fsync_dir", str(tmp_path / "p" / "offsets" / "consumers")) in io.events
    part.store_offset(CONSUMER_KIND, 2, 6)
    assert synced_after_last_write(io.events, path)
    io.failing["fdatasync"] = "*/offsets/*"
    with pytest.raises(IggyError) as e:
        part.store_offset(CONSUMER_KIND, 2, 8)
    assert e.value.status == Status.CANNOT_SAVE_CONSUMER_OFFSET == 9102
    assert part.get_offset(CONSUMER_KIND, 2) == 6
    del io.failing["fdatasync"]
    part.store_offset(CONSUMER_KIND, 2, 9)
    part.close()
    assert Partition.open(tmp_path / "p", 0, config).get_offset(CONSUMER_KIND, 2) == 9


def test_offset_store_given_writer_and_sync_each_change_when_stores_queue_should_apply_them_in_order(
    tmp_path: Path,
) -> None:
    io = FaultyIO(BufferedIO())
    config = PartitionConfig(segment_size_bytes=1000, flush_messages=8, offsets_fsync=True)
    with Writer() as writer:
        part = Partition.open(tmp_path / "p", 0, config, io, writer=writer)
        part.append(batch_of(10), 1_000, os.urandom)
        writer.pause()
        futures = [part.store_offset(CONSUMER_KIND, 5, o) for o in (1, 2, 3)]
        assert not any(f.done() for f in futures) and part.get_offset(CONSUMER_KIND, 5) is None
        writer.resume()
        part.offsets.drain()
        assert [f.exception() for f in futures] == [None, None, None]
        assert part.get_offset(CONSUMER_KIND, 5) == 3
        # A failing one fails alone and changes nothing; the next one reuses its slot.
        io.failing["fdatasync"] = "*/offsets/*"
        failed = part.store_offset(CONSUMER_KIND, 5, 7)
        part.offsets.drain()
        assert isinstance(failed.exception(), IggyError) and part.get_offset(CONSUMER_KIND, 5) == 3
        del io.failing["fdatasync"]
        part.offsets.drain()
        ok = part.store_offset(CONSUMER_KIND, 5, 8)
        part.offsets.drain()
        assert ok.exception() is None and part.get_offset(CONSUMER_KIND, 5) == 8
        part.close()
    assert Partition.open(tmp_path / "p", 0, config).get_offset(CONSUMER_KIND, 5) == 8


def test_offset_store_given_interval_mode_when_synced_should_survive_a_crash_and_not_before(
    tmp_path: Path,
) -> None:
    io = MemIO()
    config = PartitionConfig(segment_size_bytes=1 << 20, flush_messages=1000)
    part = Partition.open(tmp_path / "p", 0, config, io)
    part.append(batch_of(10), 1_000, os.urandom)
    part.flush(fsync=True)
    part.store_offset(CONSUMER_KIND, 1, 4)  # page cache only
    io.crash()
    again = Partition.open(tmp_path / "p", 0, config, io)
    assert again.get_offset(CONSUMER_KIND, 1) is None  # lost, and said so
    assert any("offsets/consumers/1" in p and "LOST" in p for p in offset_problems(again.recovery))
    again.store_offset(CONSUMER_KIND, 1, 4)
    again.store_offset(CONSUMER_KIND, 1, 6)
    assert again.offsets.dirty
    assert again.offsets.sync().exception() is None and not again.offsets.dirty
    again.store_offset(CONSUMER_KIND, 1, 8)  # not synced: the crash takes it back to 6
    io.crash()
    third = Partition.open(tmp_path / "p", 0, config, io)
    assert third.get_offset(CONSUMER_KIND, 1) == 6 and offset_problems(third.recovery) == []


def test_offset_store_given_failed_write_when_stored_should_answer_9102_and_keep_the_value(
    tmp_path: Path,
) -> None:
    io = FaultyIO(BufferedIO())
    part = Partition.open(tmp_path / "p", 0, TINY, io)
    part.append(batch_of(10), 1_000, os.urandom)
    part.store_offset(CONSUMER_KIND, 3, 2)
    io.failing["write"] = "*/offsets/*"
    with pytest.raises(IggyError) as e:
        part.store_offset(CONSUMER_KIND, 3, 5)
    assert e.value.status == Status.CANNOT_SAVE_CONSUMER_OFFSET
    with pytest.raises(IggyError):
        part.store_offset(CONSUMER_KIND, 4, 5)  # a first store, too
    assert part.get_offset(CONSUMER_KIND, 3) == 2 and part.get_offset(CONSUMER_KIND, 4) is None
    del io.failing["write"]
    part.close()
    again = Partition.open(tmp_path / "p", 0, TINY)
    assert again.get_offset(CONSUMER_KIND, 3) == 2 and again.get_offset(CONSUMER_KIND, 4) is None
    assert offset_problems(again.recovery) == []


def test_offset_store_given_failed_background_sync_when_synced_again_should_rewrite_and_sync(
    tmp_path: Path,
) -> None:
    io = FaultyIO(BufferedIO())
    part = Partition.open(tmp_path / "p", 0, TINY, io)
    part.append(batch_of(10), 1_000, os.urandom)
    part.store_offset(CONSUMER_KIND, 3, 2)
    path = str(tmp_path / "p" / "offsets" / "consumers" / "3")
    io.failing["fdatasync"] = "*/offsets/*"
    failed = part.offsets.sync()
    assert isinstance(failed.exception(), IggyError) and part.offsets.dirty
    del io.failing["fdatasync"]
    writes_before = sum(1 for op, p in io.events if op == "write" and p == path)
    assert part.offsets.sync().exception() is None and not part.offsets.dirty
    assert sum(1 for op, p in io.events if op == "write" and p == path) == writes_before + 1
    assert synced_after_last_write(io.events, path)
    part.close()


def test_offset_store_given_more_consumers_than_open_files_when_synced_by_writer_should_sync_every_file(
    tmp_path: Path,
) -> None:
    io = FaultyIO(BufferedIO())
    with Writer() as writer:
        part = Partition.open(tmp_path / "p", 0, TINY, io, writer=writer)
        part.append(batch_of(10), 1_000, os.urandom)
        for round_ in range(2):
            for consumer in range(40):
                part.store_offset(CONSUMER_KIND, consumer, (consumer + round_) % 10)
            done = part.offsets.sync()  # a writer job; files evicted meanwhile close after it
            part.offsets.drain()
            assert done.exception() is None and not part.offsets.dirty
        folder = tmp_path / "p" / "offsets" / "consumers"
        assert all(synced_after_last_write(io.events, str(folder / str(n))) for n in range(40))
        assert len(part.offsets._files) <= 16  # the open-file bound
        part.close()
    again = Partition.open(tmp_path / "p", 0, TINY)
    assert [again.get_offset(CONSUMER_KIND, n) for n in range(40)] == [(n + 1) % 10 for n in range(40)]
    assert offset_problems(again.recovery) == []


# ---- defect 13 through the server: what a reply means under each policy -------------------


class Server:
    """A shard and its dispatcher in this process, one topic with one partition of 10
    messages, and a logged-in root session."""

    def __init__(self, data_dir: Path, fsync: FsyncPolicy, io: FaultyIO, interval_ms: int = 1000) -> None:
        durability = DurabilityConfig(fsync=fsync, fsync_interval_ms=interval_ms)
        config = Config(data_dir=data_dir, durability=durability)
        self.io = io
        self.shard = Shard(config)
        self.shard.io = io
        self.shard.open()
        # Writer completions are reaped on this loop (what Shard.start sets up for a server).
        self.shard._loop = asyncio.get_running_loop()
        if not self.shard.metadata.streams:
            add_stream_and_topic(self.shard)
        self.stream_id = next(iter(self.shard.metadata.streams))
        self.topic_id = next(iter(self.shard.metadata.streams[self.stream_id].topics))
        self.pid = next(iter(self.shard.metadata.streams[self.stream_id].topics[self.topic_id].partitions))
        self.part = self.shard.partitions[(self.stream_id, self.topic_id, self.pid)]
        if self.part.is_empty:
            self.part.append(for_partition(self.part, batch_of(10)), 1_000, os.urandom)
            self.part.flush(fsync=True)  # durable, so pollable under `always` too
        self.dispatcher = Dispatcher(self.shard)
        self.session = self.shard.open_session(None, "test")
        self.session.user_id = next(iter(self.shard.metadata.users))
        self.offset_path = str(self.part.directory / "offsets" / "consumers" / "7")

    async def call(self, reply: object) -> object:
        return await reply if isinstance(reply, Awaitable) else reply

    async def store(self, offset: int) -> None:
        req = c.StoreConsumerOffset(Consumer(1, 7), self.stream_id, self.topic_id, self.pid, offset)
        await self.call(self.dispatcher.store_consumer_offset(self.session, req))

    def stored(self) -> int | None:
        req = c.GetConsumerOffset(Consumer(1, 7), self.stream_id, self.topic_id, self.pid)
        raw = self.dispatcher.get_consumer_offset(self.session, req)
        return None if raw is None else int.from_bytes(bytes(raw)[-8:], "little")

    async def poll_next(self, count: int, auto_commit: bool) -> object:
        next_strategy = 5
        req = c.PollMessages(
            Consumer(1, 7), self.stream_id, self.topic_id, self.pid, next_strategy, 0, count, auto_commit
        )
        return await self.call(self.dispatcher.poll_messages(self.session, req))

    async def close(self) -> None:
        self.shard.close()


@pytest.fixture
def faulty_io() -> Iterator[FaultyIO]:
    yield FaultyIO(BufferedIO())


async def test_server_given_fsync_always_when_offset_stored_should_reply_after_fdatasync(
    tmp_path: Path, faulty_io: FaultyIO
) -> None:
    server = Server(tmp_path, FsyncPolicy.ALWAYS, faulty_io)
    try:
        await server.store(3)
        assert synced_after_last_write(faulty_io.events, server.offset_path)
        await server.store(4)
        assert synced_after_last_write(faulty_io.events, server.offset_path)
        await server.poll_next(2, auto_commit=True)  # auto-commit: offset 6, synced before the reply
        assert server.stored() == 6 and synced_after_last_write(faulty_io.events, server.offset_path)
    finally:
        await server.close()


async def test_server_given_fsync_always_and_failing_sync_when_offset_stored_should_answer_9102_keep_value(
    tmp_path: Path, faulty_io: FaultyIO
) -> None:
    server = Server(tmp_path, FsyncPolicy.ALWAYS, faulty_io)
    try:
        await server.store(3)
        faulty_io.failing["fdatasync"] = "*/offsets/*"
        with pytest.raises(IggyError) as e:
            await server.store(5)
        assert e.value.status == Status.CANNOT_SAVE_CONSUMER_OFFSET
        assert server.stored() == 3
        with pytest.raises(IggyError) as e:
            await server.poll_next(2, auto_commit=True)  # its commit fails: nothing delivered
        assert e.value.status == Status.CANNOT_SAVE_CONSUMER_OFFSET and server.stored() == 3
        del faulty_io.failing["fdatasync"]
        await server.store(5)
        assert server.stored() == 5
    finally:
        await server.close()
    again = Server(tmp_path, FsyncPolicy.ALWAYS, FaultyIO(BufferedIO()))
    try:
        assert again.stored() == 5
    finally:
        await again.close()


async def test_server_given_fsync_interval_when_offset_stored_should_be_synced_by_the_fsync_ticker(
    tmp_path: Path, faulty_io: FaultyIO
) -> None:
    server = Server(tmp_path, FsyncPolicy.INTERVAL, faulty_io, interval_ms=20)
    ticker = asyncio.ensure_future(server.shard._fsync_ticker())
    try:
        await server.store(3)
        assert not synced_after_last_write(faulty_io.events, server.offset_path)  # the reply did not wait
        deadline = asyncio.get_running_loop().time() + 10
        while not synced_after_last_write(faulty_io.events, server.offset_path):
            assert asyncio.get_running_loop().time() < deadline, "the fsync ticker never synced the offset"
            await asyncio.sleep(0.01)
    finally:
        ticker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ticker
        await server.close()


async def test_server_given_fsync_never_when_flush_unsaved_buffer_with_fsync_should_sync_offsets(
    tmp_path: Path, faulty_io: FaultyIO
) -> None:
    server = Server(tmp_path, FsyncPolicy.NEVER, faulty_io)
    try:
        await server.store(3)
        assert not synced_after_last_write(faulty_io.events, server.offset_path)
        req = c.FlushUnsavedBuffer(server.stream_id, server.topic_id, server.pid, True)
        await server.call(server.dispatcher.flush_unsaved_buffer(server.session, req))
        assert synced_after_last_write(faulty_io.events, server.offset_path)
    finally:
        await server.close()


async def test_server_given_fsync_interval_and_failing_offset_write_when_stored_should_answer_9102(
    tmp_path: Path, faulty_io: FaultyIO
) -> None:
    server = Server(tmp_path, FsyncPolicy.INTERVAL, faulty_io)
    try:
        await server.store(3)
        faulty_io.failing["write"] = "*/offsets/*"
        with pytest.raises(IggyError) as e:
            await server.store(5)
        assert e.value.status == Status.CANNOT_SAVE_CONSUMER_OFFSET and server.stored() == 3
    finally:
        faulty_io.failing.clear()
        await server.close()

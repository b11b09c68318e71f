from __future__ import annotations

import os
from pathlib import Path

from tests.shardkit import add_stream_and_topic, add_topic, for_partition
from tidelog import metadata as md
from tidelog.config import Config, SystemConfig
from tidelog.server.shard import Shard
from tidelog.storage.partition import Partition, PartitionConfig
from tidelog.storage.writer import Writer
from tidelog.wire.batch import Batch, parse_send_batch

MIB = 1 << 20


def test_shard_given_many_partitions_when_opened_should_share_the_cache_budget(tmp_path: Path) -> None:
    config = Config(
        data_dir=tmp_path,
        system=SystemConfig(cache_bytes=100 * MIB, partition_cache_bytes=32 * MIB),
    )
    shard = Shard(config)
    shard.open()
    try:
        topic = add_stream_and_topic(shard, partitions=10, create_files=False)
        keys = [(topic.stream_id, topic.id, pid) for pid in sorted(topic.partitions)]
        shard.open_partition(keys[0])
        assert shard.partitions[keys[0]].cache_budget_bytes == 32 * MIB  # capped per partition
        for key in keys[1:]:
            shard.open_partition(key)
        assert {p.cache_budget_bytes for p in shard.partitions.values()} == {10 * MIB}
        for key in keys[5:]:
            shard.drop_partition(key)
        assert {p.cache_budget_bytes for p in shard.partitions.values()} == {20 * MIB}
    finally:
        shard.close()


def _batch(count: int, size: int) -> Batch:
    area = bytearray()
    index = bytearray()
    for _ in range(count):
        # 64-byte header: checksum, id, offset, timestamp, origin (48 bytes, zero), then
        # user_headers_length 0, payload_length, reserved 0; then the payload.
        area += bytes(48) + (0).to_bytes(4, "little") + size.to_bytes(4, "little") + bytes(8) + b"x" * size
        index += (0).to_bytes(4, "little") + len(area).to_bytes(4, "little") + bytes(8)
    return parse_send_batch(memoryview(bytes(index)), memoryview(area), count)


def test_partition_given_smaller_cache_budget_when_reaped_should_release_memory(tmp_path: Path) -> None:
    writer = Writer()
    try:
        config = PartitionConfig(flush_messages=10, cache_bytes=8 * MIB)
        part = Partition.open(tmp_path / "p", 0, config, writer=writer)
        for _ in range(20):
            part.append(for_partition(part, _batch(10, 1000)), 1, os.urandom)
        part.flush(fsync=False)
        held = part.held_bytes
        assert held > 100_000  # written batches stay cached
        part.set_cache_budget(0)
        part.flush(fsync=False)  # reaps
        assert part.held_bytes < held and part.held_bytes == 0
        assert part.poll(0, 1000).count == 200  # still readable, now from disk
        part.close()
    finally:
        writer.close()


class _FakePartition:
    def __init__(self, fail: bool) -> None:
        self.unflushed_messages = 1
        self.failed = False
        self.fail = fail
        self.flushes = 0

    def flush_async(self, fsync: bool) -> None:
        self.flushes += 1
        if self.fail:
            raise OSError("disk on fire")


def test_shard_given_one_failing_partition_when_ticking_should_flush_the_others_and_keep_going(
    tmp_path: Path, caplog: object
) -> None:
    shard = Shard(Config(data_dir=tmp_path))
    good_before, bad, good_after = _FakePartition(False), _FakePartition(True), _FakePartition(False)
    shard.partitions = {(0, 0, 0): good_before, (0, 0, 1): bad, (0, 0, 2): good_after}  # type: ignore[dict-item]
    try:
        shard.flush_all(fsync=False)
    except OSError as exc:
        assert "(0, 0, 1)" in str(exc)
    else:
        raise AssertionError("the failure must be reported")
    assert (good_before.flushes, bad.flushes, good_after.flushes) == (1, 1, 1)
    Shard._tick(shard.flush_all, False)  # logs instead of raising: the ticker task survives
    assert good_after.flushes == 2
    shard.partitions = {}
    shard.writer.close()


def test_shard_given_files_left_by_an_interrupted_delete_when_id_reused_should_start_empty(
    tmp_path: Path,
) -> None:
    shard = Shard(Config(data_dir=tmp_path))
    shard.open()
    try:
        stream = shard.apply(md.CreateStream(name="s", created_at_us=1))
        assert isinstance(stream, md.StreamMeta)
        old = add_topic(shard, stream.id)
        key = (stream.id, old.id, 0)
        shard.partitions[key].append(for_partition(shard.partitions[key], _batch(5, 100)), 1, os.urandom)
        shard.partitions[key].flush(fsync=True)
        # The delete reached the metadata log, then the process died before removing files.
        shard.apply(md.DeleteTopic(stream_id=stream.id, topic_id=old.id))
        shard.partitions.pop(key).close()
        assert any(shard.partition_dir(key).glob("*.rlog"))
        new = add_topic(shard, stream.id)
        assert new.id == old.id  # the freed id is reused
        part = shard.partitions[key]
        assert part.messages_count == 0 and part.next_offset == 0
    finally:
        shard.close()

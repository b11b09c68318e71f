"""server/shard.py under partition write failures: retry with backoff, shutdown reporting."""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.shardkit import add_stream_and_topic, for_partition
from tests.unit.test_partition import batch_of
from tests.unit.test_partition_faults import FaultDisk
from tidelog.config import Config, DurabilityConfig, FsyncPolicy
from tidelog.server.shard import PartitionKey, Shard, Unpersisted
from tidelog.storage.partition import Partition


def _shard(tmp_path: Path, disk: FaultDisk, **durability: object) -> tuple[Shard, PartitionKey]:
    config = Config(data_dir=tmp_path, durability=DurabilityConfig(**durability))
    shard = Shard(config)
    shard.io = disk  # partitions open on it; the metadata log stays on the real disk
    shard.open()
    topic = add_stream_and_topic(shard)
    key = (topic.stream_id, topic.id, 0)
    return shard, key


@pytest.fixture
def disk() -> Iterator[FaultDisk]:
    yield FaultDisk()


def _fail_now(shard: Shard, part: Partition) -> None:
    part.append(for_partition(part, batch_of([b"x"] * 3)), 1, os.urandom)
    with pytest.raises(OSError):
        part.flush(fsync=True)
    assert part.failed
    shard.reap_all()


def test_shard_given_failed_partition_when_retry_ticks_should_back_off_then_recover(
    tmp_path: Path, disk: FaultDisk
) -> None:
    # Binary fractions of a second, so the simulated clock adds up exactly.
    shard, key = _shard(tmp_path, disk, retry_interval_ms=125, retry_max_interval_ms=500)
    try:
        part = shard.partitions[key]
        disk.fail("write", "*.rlog", errno.ENOSPC)
        _fail_now(shard, part)
        attempts: list[float] = []
        real_retry = part.retry_failed

        def counting_retry() -> bool:
            started = real_retry()
            if started:
                attempts.append(now)
                part.wait_for_jobs()
            return started

        part.retry_failed = counting_retry  # type: ignore[method-assign]
        for step in range(0, 17):  # ticks every 0.125 s for 2 s
            now = 1000.0 + step * 0.125
            shard.retry_failed(now)
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert attempts[0] == 1000.125  # one interval after the failure was seen
        assert gaps[:3] == [0.25, 0.5, 0.5]  # doubling, capped at retry_max_interval_ms
        assert part.failed
        disk.clear()
        now += 0.5
        shard.retry_failed(now)
        assert not part.failed  # the retry wrote and synced everything
        part.append(for_partition(part, batch_of([b"y"])), 2, os.urandom)
        part.flush(fsync=True)
        assert part.durable_offset == 4
    finally:
        assert shard.close() == []


def test_shard_given_partition_that_cannot_persist_when_closed_should_return_the_offsets_not_persisted(
    tmp_path: Path, disk: FaultDisk
) -> None:
    shard, key = _shard(tmp_path, disk, retry_interval_ms=10, retry_max_interval_ms=20, shutdown_retry_ms=100)
    part = shard.partitions[key]
    part.append(for_partition(part, batch_of([b"a", b"b"])), 1, os.urandom)
    part.flush(fsync=True)
    disk.fail("write", "*.rlog", errno.ENOSPC)
    # Acknowledged under interval:
    part.append(for_partition(part, batch_of([b"c", b"d", b"e"])), 1, os.urandom)
    lost = shard.close()
    assert lost == [Unpersisted(key, 2, 5, lost[0].reason)]
    assert "No space left" in lost[0].reason
    text = lost[0].describe(durable_polls=False)
    assert "partition 0" in text and "offsets 2..4" in text and "acknowledged" in text


def test_shard_given_space_returns_during_shutdown_retries_when_closed_should_persist_everything(
    tmp_path: Path, disk: FaultDisk
) -> None:
    shard, key = _shard(
        tmp_path, disk, retry_interval_ms=10, retry_max_interval_ms=20, shutdown_retry_ms=5000
    )
    part = shard.partitions[key]
    disk.fail("write", "*.rlog", errno.ENOSPC, times=3)  # the flush and two retries fail
    part.append(for_partition(part, batch_of([b"a", b"b"])), 1, os.urandom)
    assert shard.close() == []
    disk.crash()
    again = Partition.open(shard.partition_dir(key), 0, shard.partition_config, disk)
    assert again.next_offset == 2


def test_shard_given_policy_when_configuring_partitions_should_hold_unsynced_data_except_under_never(
    tmp_path: Path,
) -> None:
    for policy, holds, durable in (
        (FsyncPolicy.ALWAYS, True, True),
        (FsyncPolicy.INTERVAL, True, False),
        (FsyncPolicy.NEVER, False, False),
    ):
        shard = Shard(Config(data_dir=tmp_path / policy, durability=DurabilityConfig(fsync=policy)))
        assert (shard.partition_config.max_unsynced_bytes > 0, shard.partition_config.durable_polls) == (
            holds,
            durable,
        )
        shard.writer.close()

"""Shards 1 and up in process: metadata from shard 0's snapshot, then its published changes
with their effects on the partitions each owns (no processes, no bus: router.py carries the
same objects between processes)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.shardkit import topic_op
from tests.unit.test_partition import batch_of
from tidelog import metadata as md
from tidelog.config import Config
from tidelog.server.shard import Shard
from tidelog.server.sharding import owner_of
from tidelog.wire.v09.batch import record_from_v08


def _pair(tmp_path: Path) -> tuple[Shard, Shard]:
    config = Config(data_dir=tmp_path)
    zero = Shard(config, shard_id=0, shards=2)
    zero.open()
    one = Shard(config, shard_id=1, shards=2)
    one.open_replica(zero.snapshot_bytes())
    return zero, one


def _publish(zero: Shard, one: Shard) -> bool:
    return one.apply_published(zero.take_outbox())


def test_replica_given_published_topic_when_applied_should_open_exactly_the_partitions_it_owns(
    tmp_path: Path,
) -> None:
    zero, one = _pair(tmp_path)
    stream = zero.apply(md.CreateStream(name="s", created_at_us=1))
    assert isinstance(stream, md.StreamMeta)
    topic = zero.apply(topic_op(stream.id, partitions=8))
    assert isinstance(topic, md.TopicMeta)
    for pid in topic.partitions:
        zero.create_partition((stream.id, topic.id, pid))
    assert _publish(zero, one)
    keys = {(stream.id, topic.id, p) for p in range(8)}
    assert set(zero.partitions) == {k for k in keys if owner_of(*k, 2) == 0}
    assert set(one.partitions) == {k for k in keys if owner_of(*k, 2) == 1}
    assert (
        set(zero.partitions).isdisjoint(one.partitions) and set(zero.partitions) | set(one.partitions) == keys
    )
    assert one.metadata.revision == zero.metadata.revision
    # Groups and members follow; the delete closes the replica's partitions.
    zero.apply(md.CreateConsumerGroup(stream_id=stream.id, topic_id=topic.id, name="g"))
    group = next(iter(zero.metadata.streams[stream.id].topics[topic.id].groups.values()))
    zero.join_group(zero.metadata.streams[stream.id].topics[topic.id], group.id, 77)
    assert _publish(zero, one)
    copy = one.metadata.streams[stream.id].topics[topic.id].groups[group.id]
    assert [(m.client_id, m.partitions) for m in copy.members] == [(77, list(range(8)))]
    zero.apply(md.DeleteTopic(stream_id=stream.id, topic_id=topic.id))
    assert _publish(zero, one)
    assert not one.partitions and stream.id in one.metadata.streams
    zero.close()
    one.close()


def test_replica_given_a_gap_in_revisions_when_applied_should_refuse_then_catch_up_from_a_snapshot(
    tmp_path: Path,
) -> None:
    zero, one = _pair(tmp_path)
    stream = zero.apply(md.CreateStream(name="s", created_at_us=1))
    assert isinstance(stream, md.StreamMeta)
    zero.take_outbox()  # lost on the way: the replica never sees revision 2
    topic = zero.apply(topic_op(stream.id, partitions=4))
    assert isinstance(topic, md.TopicMeta)
    for pid in topic.partitions:
        zero.create_partition((stream.id, topic.id, pid))
    assert not _publish(zero, one)
    assert stream.id not in one.metadata.streams  # nothing applied past the gap
    held = one.metadata
    one.catch_up(zero.snapshot_bytes())
    assert one.metadata is held  # the handlers keep the object they hold
    assert one.metadata.revision == zero.metadata.revision
    owned = {(stream.id, topic.id, p) for p in range(4) if owner_of(stream.id, topic.id, p, 2) == 1}
    assert set(one.partitions) == owned
    # The partitions it opened take appends.
    for key in owned:
        part = one.partitions[key]
        [record] = record_from_v08(batch_of([b"x"]).buf, batch_of([b"x"]).ends, os.urandom, key[2])
        assert part.append(record, 1_000, os.urandom) == 0
    zero.close()
    one.close()

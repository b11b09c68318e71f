"""Building metadata in an in-process `Shard` for unit tests (the ops as the handlers send them)."""

from __future__ import annotations

import os

from tidelog import metadata as md
from tidelog.server.shard import Shard
from tidelog.storage.integrity import StoreFormat
from tidelog.storage.partition import Partition
from tidelog.wire.batch import Batch
from tidelog.wire.v09.batch import Batch09, record_from_v08


def topic_op(stream_id: int, name: str = "t", partitions: int = 1) -> md.CreateTopic:
    """A CreateTopic with the server defaults (0 = default expiry and size)."""
    return md.CreateTopic(
        stream_id=stream_id,
        name=name,
        partitions_count=partitions,
        compression_algorithm=1,
        message_expiry=0,
        max_topic_size=0,
        replication_factor=0,
        created_at_us=1,
    )


def add_topic(shard: Shard, stream_id: int, partitions: int = 1, create_files: bool = True) -> md.TopicMeta:
    """Creates a topic in the stream; with `create_files`, opens its partitions as the handler does."""
    topic = shard.apply(topic_op(stream_id, partitions=partitions))
    assert isinstance(topic, md.TopicMeta)
    if create_files:
        for pid in sorted(topic.partitions):
            shard.create_partition((stream_id, topic.id, pid))
    return topic


def add_stream_and_topic(shard: Shard, partitions: int = 1, create_files: bool = True) -> md.TopicMeta:
    """A stream "s" with one topic "t"."""
    stream = shard.apply(md.CreateStream(name="s", created_at_us=1))
    assert isinstance(stream, md.StreamMeta)
    return add_topic(shard, stream.id, partitions, create_files)


def for_partition(part: Partition, batch: Batch) -> Batch | Batch09:
    """A parsed 0.8 SendMessages batch in the format `part` stores (as the dispatcher
    converts it at the edge)."""
    if part.store_format is StoreFormat.RECORDS:
        [record] = record_from_v08(batch.buf, batch.ends, os.urandom, part.partition_id)
        return record
    return batch

"""Index memory is bounded by configuration, not by the data stored (storage/index_cache.py).

A partition with many small sealed segments: the old design kept every segment's index in
memory (at least 16 KiB of columns per segment); now sealed segments keep O(1) state and
their loaded indexes share one byte-bounded cache.
"""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

from tests.crash.test_recovery import batch_of, decode
from tidelog.storage.index_cache import IndexCache
from tidelog.storage.partition import Partition, PartitionConfig

CONFIG = PartitionConfig(segment_size_bytes=4096, flush_messages=1000)
CACHE_BYTES = 16 << 10
PER_BATCH = 8
BATCHES = 1600  # about 200 sealed segments of about 64 messages each
# Fixed state of a sealed segment (the Segment, two open files, a few ints): about 1 KiB.
PER_SEGMENT_BYTES = 2048


def payload(offset: int) -> bytes:
    return b"x%d" % offset


def written(tmp_path: Path) -> Path:
    part = Partition.open(tmp_path / "p", 0, CONFIG)
    for b in range(BATCHES):
        base = part.next_offset
        part.append(batch_of([payload(base + i) for i in range(PER_BATCH)]), 1_000 + 10 * b, os.urandom)
    part.close()
    return tmp_path / "p"


def active_bound_bytes(part: Partition) -> int:
    """The active segment's columns: 16 bytes per entry of a capacity that at most doubles."""
    return 16 * max(1024, 2 * part.segments[-1].messages_count)


def test_partition_given_many_sealed_segments_when_opened_and_polled_should_hold_index_memory_within_bound(
    tmp_path: Path,
) -> None:
    d = written(tmp_path)
    total = BATCHES * PER_BATCH
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        cache = IndexCache(CACHE_BYTES)
        part = Partition.open(d, 0, CONFIG, index_cache=cache)
        segments = part.segments_count
        assert segments >= 150
        # What the old design held for indexes alone would already exceed this.
        bound = CACHE_BYTES + active_bound_bytes(part) + segments * PER_SEGMENT_BYTES
        assert segments * 16 * 1024 > 2 * bound
        opened, _ = tracemalloc.get_traced_memory()
        assert opened - before < bound, f"{opened - before} bytes held after open, bound {bound}"
        assert part.index_bytes_held <= active_bound_bytes(part) and cache.held_bytes <= CACHE_BYTES

        # Every message by offset, in polls that each cross several segments.
        offset, seen = 0, 0
        while True:
            result = part.poll(offset, 500, 1 << 20)
            if not result.count:
                break
            got = decode(result)
            assert got == [(o, payload(o)) for o in range(offset, offset + result.count)]
            offset, seen = offset + result.count, seen + result.count
        assert seen == total
        # By timestamp, first and last, in segments all over the partition.
        for b in range(0, BATCHES, 97):
            assert part.offset_for_timestamp(1_000 + 10 * b) == b * PER_BATCH
            assert part.offset_for_timestamp(1_000 + 10 * b - 5) == b * PER_BATCH
        assert decode(part.poll(part.first_offset, 2)) == [(0, payload(0)), (1, payload(1))]
        assert decode(part.poll(total - 1, 5)) == [(total - 1, payload(total - 1))]

        polled, _ = tracemalloc.get_traced_memory()
        assert polled - before < bound, f"{polled - before} bytes held after polls, bound {bound}"
        assert part.index_bytes_held <= active_bound_bytes(part) and cache.held_bytes <= CACHE_BYTES
        assert cache.loads > len(cache)  # segments came and went through the cache
        part.close()
    finally:
        tracemalloc.stop()


def test_partition_given_writes_sealing_segments_when_written_should_release_their_indexes(
    tmp_path: Path,
) -> None:
    cache = IndexCache(CACHE_BYTES)
    part = Partition.open(tmp_path / "p", 0, CONFIG, index_cache=cache)
    for b in range(400):
        base = part.next_offset
        part.append(batch_of([payload(base + i) for i in range(PER_BATCH)]), 1_000 + 10 * b, os.urandom)
    part.flush(fsync=False)
    assert part.segments_count > 20
    assert [s.holds_index for s in part.segments] == [False] * (part.segments_count - 1) + [True]
    assert part.index_bytes_held <= active_bound_bytes(part) and cache.held_bytes <= CACHE_BYTES
    total = 400 * PER_BATCH
    assert decode(part.poll(0, total)) == [(o, payload(o)) for o in range(total)]
    part.close()


def test_partition_given_no_index_cache_room_when_polled_should_read_entries_from_the_files(
    tmp_path: Path,
) -> None:
    d = written(tmp_path)
    cache = IndexCache(0)
    part = Partition.open(d, 0, CONFIG, index_cache=cache)
    total = BATCHES * PER_BATCH
    for first in (0, 63, 64, 5000, total - 3):
        assert decode(part.poll(first, 70, 2000))[0] == (first, payload(first))
    for b in (0, 1, 800, BATCHES - 1):
        assert part.offset_for_timestamp(1_000 + 10 * b - 1) == b * PER_BATCH
    assert cache.held_bytes == 0 and part.index_bytes_held <= active_bound_bytes(part)
    part.close()

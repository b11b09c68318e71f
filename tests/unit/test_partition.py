"""storage/partition.py: journal, segments, polls, consumer offsets, retention."""

from __future__ import annotations

import itertools
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from tidelog.storage.io import BufferedIO, FileIO, MemIO
from tidelog.storage.partition import CONSUMER_KIND, GROUP_KIND, Partition, PartitionConfig, PollResult
from tidelog.storage.segment import log_name
from tidelog.wire.batch import Batch, parse_send_batch, scan_messages
from tidelog.wire.codes import IggyError, Status

HEADER = struct.Struct("<Q16sQQQIIQ")
TINY = PartitionConfig(segment_size_bytes=1000, flush_messages=8, flush_bytes=1 << 20)
# Batches of 3 such messages take 225..249 bytes: 3 batches fill a segment, 2 do not, so after
# a flush the next batch stays in the journal.
JOURNALED = PartitionConfig(segment_size_bytes=600, flush_messages=1000)


def encode(payloads: list[bytes]) -> tuple[bytes, bytearray]:
    """Client-side SendMessages index table and messages area (protocol 3.9, 4.1)."""
    index, area = bytearray(), bytearray()
    for payload in payloads:
        area += HEADER.pack(0, bytes(16), 0, 0, 0, 0, len(payload), 0) + payload
        index += struct.pack("<IIQ", 0, len(area), 0)
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
        _, _, offset, _, _, _, pl, _ = HEADER.unpack_from(data, start)
        out.append((offset, data[start + 64 : start + 64 + pl]))
        start = end
    return out


@pytest.fixture(params=["buffered", "mem"])
def io(request: pytest.FixtureRequest) -> FileIO:
    return BufferedIO() if request.param == "buffered" else MemIO()


def test_partition_given_new_directory_when_opened_should_be_empty(io: FileIO, tmp_path: Path) -> None:
    part = Partition.open(tmp_path / "p", 3, TINY, io)
    assert part.partition_id == 3
    assert (part.current_offset, part.next_offset, part.messages_count, part.size_bytes) == (0, 0, 0, 0)
    assert part.is_empty and part.segments_count == 1 and part.first_offset == 0
    assert part.recovery.messages == 0 and part.recovery.segments == 1
    result = part.poll(0, 10)
    assert result.count == 0 and result.chunks == []


def test_partition_given_appends_below_thresholds_when_polled_should_serve_from_journal(
    io: FileIO, tmp_path: Path
) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY, io)
    fill(part, 2, 3)
    assert part.unflushed_messages == 6 and part.unflushed_bytes == part.size_bytes > 0
    assert part.current_offset == 5 and part.messages_count == 6
    assert io.read_file(tmp_path / "p" / log_name(0)) == b""
    result = part.poll(1, 4)
    assert all(isinstance(c, memoryview) for c in result.chunks)
    assert decode(result) == [(o, payload(o)) for o in range(1, 5)]


def test_partition_given_journal_when_polled_should_share_the_appended_buffer(tmp_path: Path) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY)
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


def test_partition_given_byte_threshold_when_reached_should_flush_to_disk(io: FileIO, tmp_path: Path) -> None:
    config = PartitionConfig(segment_size_bytes=1 << 20, flush_messages=1000, flush_bytes=300)
    part = Partition.open(tmp_path / "p", 0, config, io)
    part.append(batch_of([b"x" * 100]), 1, os.urandom)
    assert part.unflushed_bytes == 164
    part.append(batch_of([b"y" * 100]), 1, os.urandom)
    assert part.unflushed_bytes == 0 and part.size_bytes == 328


def test_partition_given_tiny_segments_when_filled_should_rotate_at_the_size(
    io: FileIO, tmp_path: Path
) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY, io)
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
    io: FileIO, tmp_path: Path
) -> None:
    part = Partition.open(tmp_path / "p", 0, JOURNALED, io)
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


def test_partition_given_zero_count_or_start_past_end_when_polled_should_be_empty(tmp_path: Path) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY)
    fill(part, 1, 3)
    assert part.poll(0, 0).count == 0
    assert part.poll(3, 10).count == 0 and part.poll(3, 10).chunks == []


def test_partition_given_clock_going_back_when_appending_should_never_lower_timestamps(
    tmp_path: Path,
) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY)
    part.append(batch_of([b"a"]), 5_000, os.urandom)
    part.append(batch_of([b"b"]), 4_000, os.urandom)
    data = b"".join(bytes(c) for c in part.poll(0, 2).chunks)
    assert HEADER.unpack_from(data, 0)[3] == 5_000
    assert HEADER.unpack_from(data, 65)[3] == 5_000


def test_partition_given_timestamps_when_searched_should_find_first_at_or_after(
    io: FileIO, tmp_path: Path
) -> None:
    part = Partition.open(tmp_path / "p", 0, JOURNALED, io)
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
    io: FileIO, tmp_path: Path
) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY, io)
    fill(part, 7, 3)
    part.store_offset(CONSUMER_KIND, 7, 10)
    part.store_offset(GROUP_KIND, 7, 4)
    before = (part.next_offset, part.messages_count, part.size_bytes, part.segments_count)
    part.close()
    again = Partition.open(tmp_path / "p", 0, TINY, io)
    assert (again.next_offset, again.messages_count, again.size_bytes, again.segments_count) == before
    assert again.recovery.messages == before[1] and again.recovery.truncated_bytes == 0
    assert again.get_offset(CONSUMER_KIND, 7) == 10 and again.get_offset(GROUP_KIND, 7) == 4
    assert decode(again.poll(0, 100)) == [(o, payload(o)) for o in range(21)]
    fill(again, 1, 2)
    assert decode(again.poll(21, 5)) == [(21, payload(21)), (22, payload(22))]


def test_consumer_offsets_given_store_get_delete_when_used_should_keep_kinds_apart(tmp_path: Path) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY)
    fill(part, 1, 5)
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
    fill(part, 1, 2)
    part.store_offset(CONSUMER_KIND, 1, 1)
    with pytest.raises(IggyError) as e:
        part.store_offset(CONSUMER_KIND, 1, 2)
    assert e.value.status == Status.INVALID_OFFSET == 4100
    assert part.get_offset(CONSUMER_KIND, 1) == 1


def test_consumer_offsets_given_lost_messages_when_reopened_should_clamp_to_current(tmp_path: Path) -> None:
    io = MemIO()
    config = PartitionConfig(segment_size_bytes=1 << 20, flush_messages=1000, fsync_on_flush=True)
    part = Partition.open(tmp_path / "p", 0, config, io)
    fill(part, 1, 5)
    part.flush(fsync=True)
    fill(part, 1, 5)  # offsets 5..9 stay in the journal
    part.store_offset(CONSUMER_KIND, 2, 8)
    part.store_offset(GROUP_KIND, 3, 2)
    io.crash()
    again = Partition.open(tmp_path / "p", 0, config, io)
    assert again.current_offset == 4
    assert again.get_offset(CONSUMER_KIND, 2) == 4 and again.get_offset(GROUP_KIND, 3) == 2
    io.crash()
    assert Partition.open(tmp_path / "p", 0, config, io).get_offset(CONSUMER_KIND, 2) == 4


def test_consumer_offsets_given_partition_lost_every_message_when_reopened_should_drop_them(
    tmp_path: Path,
) -> None:
    io = MemIO()
    config = PartitionConfig(segment_size_bytes=1 << 20, fsync_on_flush=True)
    part = Partition.open(tmp_path / "p", 0, config, io)
    fill(part, 1, 3)
    part.store_offset(CONSUMER_KIND, 2, 1)
    io.crash()
    again = Partition.open(tmp_path / "p", 0, config, io)
    assert again.next_offset == 0 and again.get_offset(CONSUMER_KIND, 2) is None


def test_consumer_offsets_given_torn_latest_slot_when_reopened_should_keep_previous_value(
    tmp_path: Path,
) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY)
    fill(part, 1, 10)
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
    fill(part, 1, 10)
    part.close()
    (tmp_path / "p" / "offsets" / "groups" / "4").write_bytes(struct.pack("<Q", 6))
    assert Partition.open(tmp_path / "p", 0, TINY).get_offset(GROUP_KIND, 4) == 6


def _sealed_partition(io: FileIO, tmp_path: Path) -> Partition:
    part = Partition.open(tmp_path / "p", 0, TINY, io)
    for b in range(12):
        fill(part, 1, 4, now_us=1_000 * (b + 1))
    part.flush(fsync=False)
    assert part.segments_count >= 4
    return part


def test_delete_segments_given_no_stored_offsets_when_asked_should_delete_oldest_sealed_only(
    io: FileIO, tmp_path: Path
) -> None:
    part = _sealed_partition(io, tmp_path)
    segments = part.segments
    assert part.delete_segments(2) == 2
    assert part.first_offset == segments[2].start_offset
    assert not io.exists(tmp_path / "p" / log_name(segments[0].start_offset))
    assert part.poll(0, 1).first_offset == segments[2].start_offset
    assert part.delete_segments(100) == len(segments) - 3
    assert part.segments_count == 1  # the active segment is never deleted
    assert part.messages_count == part.segments[0].messages_count


def test_delete_segments_given_stored_offset_when_asked_should_keep_unconsumed_segments(
    io: FileIO, tmp_path: Path
) -> None:
    part = _sealed_partition(io, tmp_path)
    segments = part.segments
    part.store_offset(CONSUMER_KIND, 1, segments[1].end_offset)
    part.store_offset(GROUP_KIND, 1, segments[2].end_offset - 1)
    assert part.delete_segments(10) == 2
    assert part.first_offset == segments[2].start_offset
    assert part.delete_oldest_sealed_segment() == 0


def test_delete_oldest_sealed_segment_given_sealed_segments_when_asked_should_return_freed_bytes(
    io: FileIO, tmp_path: Path
) -> None:
    part = _sealed_partition(io, tmp_path)
    size_before = part.size_bytes
    oldest = part.segments[0]
    freed = part.delete_oldest_sealed_segment()
    assert freed == oldest.size_bytes > 0
    assert part.size_bytes == size_before - freed


def test_expire_given_old_sealed_segments_when_run_should_delete_only_expired(
    io: FileIO, tmp_path: Path
) -> None:
    part = _sealed_partition(io, tmp_path)
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
    io: FileIO, tmp_path: Path
) -> None:
    part = _sealed_partition(io, tmp_path)
    fill(part, 1, 2)
    part.store_offset(CONSUMER_KIND, 1, 3)
    part.purge()
    assert (part.next_offset, part.messages_count, part.size_bytes, part.segments_count) == (0, 0, 0, 1)
    assert part.get_offset(CONSUMER_KIND, 1) is None and part.unflushed_messages == 0
    assert [n for n in io.listdir(tmp_path / "p") if n.endswith(".log")] == [log_name(0)]
    fill(part, 1, 2)
    assert decode(part.poll(0, 10)) == [(0, payload(0)), (1, payload(1))]
    part.close()
    again = Partition.open(tmp_path / "p", 0, TINY, io)
    assert again.next_offset == 2 and again.get_offset(CONSUMER_KIND, 1) is None


def test_close_given_journal_when_closed_should_flush_it(io: FileIO, tmp_path: Path) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY, io)
    fill(part, 1, 3)
    part.close()
    assert Partition.open(tmp_path / "p", 0, TINY, io).next_offset == 3


def test_destroy_given_partition_when_destroyed_should_remove_directory(io: FileIO, tmp_path: Path) -> None:
    part = Partition.open(tmp_path / "p", 0, TINY, io)
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

"""storage/recovery.py: damaged segment files are repaired on open; the log is the truth."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tidelog.storage.io import DirectIO, MemIO
from tidelog.storage.partition import Partition, PartitionConfig, PollResult
from tidelog.storage.recovery import QUARANTINE_DIR
from tidelog.storage.segment import DIRECT_SUFFIXES, index_name, log_name
from tidelog.storage.writer import Writer
from tidelog.wire.batch import (
    INDEX_DTYPE,
    INDEX_ENTRY,
    MESSAGE_HEADER,
    Batch,
    parse_send_batch,
    scan_messages,
)
from tidelog.wire.codes import IggyError, Status

BIG = PartitionConfig(segment_size_bytes=1 << 20, flush_messages=1000)
TINY = PartitionConfig(segment_size_bytes=700, flush_messages=1000)


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
    return b"payload-%d-" % offset + b"q" * (offset % 11)


def fill(part: Partition, count: int, per_batch: int = 2) -> None:
    while count > 0:
        n = min(per_batch, count)
        base = part.next_offset
        part.append(batch_of([payload(base + i) for i in range(n)]), 1_000 + base, os.urandom)
        count -= n


def decode(result: PollResult) -> list[tuple[int, bytes]]:
    data = b"".join(bytes(c) for c in result.chunks)
    ends, valid = scan_messages(data, True)
    assert valid == len(data) and len(ends) == result.count
    out, start = [], 0
    for end in ends.tolist():
        _, _, _, offset, _, _, _, pl, _ = MESSAGE_HEADER.unpack_from(data, start)
        out.append((offset, data[start + 64 : start + 64 + pl]))
        start = end
    return out


def expected(offsets: range | list[int]) -> list[tuple[int, bytes]]:
    return [(o, payload(o)) for o in offsets]


def written(tmp_path: Path, count: int = 10, config: PartitionConfig = BIG) -> Path:
    """A closed partition holding `count` messages; returns its directory."""
    part = Partition.open(tmp_path / "p", 0, config)
    fill(part, count)
    part.close()
    return tmp_path / "p"


def ends_of(directory: Path, start: int = 0) -> list[int]:
    entries = np.frombuffer((directory / index_name(start)).read_bytes(), dtype=INDEX_DTYPE)
    return entries["position"].astype(int).tolist()


def truncate(path: Path, length: int) -> None:
    os.truncate(path, length)


def test_recovery_given_clean_partition_when_opened_should_report_nothing(tmp_path: Path) -> None:
    d = written(tmp_path)
    part = Partition.open(d, 0, BIG)
    r = part.recovery
    assert (r.segments, r.messages, r.truncated_bytes, r.rebuilt_indexes, r.quarantined, r.problems) == (
        1,
        10,
        0,
        0,
        [],
        [],
    )


@pytest.mark.parametrize("into", [30, 70], ids=["mid-header", "mid-payload"])
def test_recovery_given_torn_log_tail_when_opened_should_cut_keep_aside_and_continue(
    tmp_path: Path, into: int
) -> None:
    d = written(tmp_path)
    ends = ends_of(d)
    log = d / log_name(0)
    original = log.read_bytes()
    truncate(log, ends[8] + into)
    part = Partition.open(d, 0, BIG)
    r = part.recovery
    assert r.truncated_bytes == into and r.messages == 9 and r.rebuilt_indexes == 1
    (kept,) = r.quarantined
    assert kept.parent == d / QUARANTINE_DIR and kept.name.startswith(log_name(0))
    assert kept.read_bytes() == original[ends[8] : ends[8] + into]
    assert log.stat().st_size == ends[8] and ends_of(d) == ends[:9]
    assert part.next_offset == 9
    fill(part, 3)
    assert decode(part.poll(0, 100)) == expected(range(12))
    part.close()
    again = Partition.open(d, 0, BIG)
    assert again.next_offset == 12 and again.recovery.truncated_bytes == 0


@pytest.mark.parametrize("junk", ["zeros", "garbage"])
def test_recovery_given_junk_after_last_message_when_opened_should_cut_it_and_keep_it(
    tmp_path: Path, junk: str
) -> None:
    d = written(tmp_path)
    log = d / log_name(0)
    tail = bytes(4096) if junk == "zeros" else np.random.default_rng(7).bytes(4096)
    with open(log, "ab") as f:
        f.write(tail)
    part = Partition.open(d, 0, BIG)
    assert part.recovery.truncated_bytes == 4096 and part.next_offset == 10
    assert part.recovery.quarantined[0].read_bytes() == tail
    assert decode(part.poll(0, 100)) == expected(range(10))


def test_recovery_given_last_indexed_message_zeroed_when_opened_should_cut_index_back(tmp_path: Path) -> None:
    # The file length was made durable but the data blocks were not: zeros where the index
    # says a message is.
    d = written(tmp_path)
    ends = ends_of(d)
    log = d / log_name(0)
    data = bytearray(log.read_bytes())
    data[ends[8] :] = bytes(len(data) - ends[8])
    log.write_bytes(bytes(data))
    part = Partition.open(d, 0, BIG)
    assert part.next_offset == 9 and ends_of(d) == ends[:9]
    assert part.recovery.truncated_bytes == ends[9] - ends[8]
    assert decode(part.poll(0, 100)) == expected(range(9))


def test_recovery_given_missing_index_when_opened_should_rebuild_it_identically(tmp_path: Path) -> None:
    d = written(tmp_path)
    original = (d / index_name(0)).read_bytes()
    (d / index_name(0)).unlink()
    part = Partition.open(d, 0, BIG)
    assert part.recovery.rebuilt_indexes == 1 and part.recovery.truncated_bytes == 0
    assert (d / index_name(0)).read_bytes() == original
    assert part.next_offset == 10 and decode(part.poll(3, 2)) == expected([3, 4])


@pytest.mark.parametrize("keep", [0, 16 * 4, 16 * 4 + 7], ids=["empty", "entry-boundary", "mid-entry"])
def test_recovery_given_truncated_index_when_opened_should_rebuild_it_identically(
    tmp_path: Path, keep: int
) -> None:
    d = written(tmp_path)
    original = (d / index_name(0)).read_bytes()
    truncate(d / index_name(0), keep)
    part = Partition.open(d, 0, BIG)
    assert part.recovery.rebuilt_indexes == 1 and part.recovery.quarantined == []
    assert (d / index_name(0)).read_bytes() == original
    assert part.next_offset == 10


def test_recovery_given_index_longer_than_log_when_opened_should_cut_index(tmp_path: Path) -> None:
    d = written(tmp_path)
    ends = ends_of(d)
    truncate(d / log_name(0), ends[6])  # a clean message boundary
    part = Partition.open(d, 0, BIG)
    assert part.next_offset == 7 and ends_of(d) == ends[:7]
    assert part.recovery.truncated_bytes == 0 and part.recovery.rebuilt_indexes == 1


def test_recovery_given_garbage_index_entries_when_opened_should_rebuild_from_log(tmp_path: Path) -> None:
    d = written(tmp_path)
    original = (d / index_name(0)).read_bytes()
    garbage = bytearray(original)
    struct.pack_into("<II", garbage, 16 * 3, 99, 5)  # relative offset and position nonsense
    (d / index_name(0)).write_bytes(bytes(garbage))
    part = Partition.open(d, 0, BIG)
    assert (d / index_name(0)).read_bytes() == original and part.next_offset == 10


def test_recovery_given_unindexed_tail_with_bad_checksum_when_opened_should_keep_good_and_cut_rest(
    tmp_path: Path,
) -> None:
    # A crash between the .log and the .index writes leaves messages with no entries; one of
    # them is damaged.
    d = written(tmp_path)
    ends = ends_of(d)
    truncate(d / index_name(0), 16 * 6)
    log = d / log_name(0)
    data = bytearray(log.read_bytes())
    data[ends[7] + 70] ^= 0x01  # a payload byte of message 8
    log.write_bytes(bytes(data))
    part = Partition.open(d, 0, BIG)
    assert part.next_offset == 8 and ends_of(d) == ends[:8]
    assert part.recovery.truncated_bytes == ends[9] - ends[7]
    assert part.recovery.quarantined[0].read_bytes() == bytes(data[ends[7] :])
    assert decode(part.poll(0, 100)) == expected(range(8))


def test_recovery_given_corrupt_indexed_message_when_verifying_on_open_should_cut_out_only_that_message(
    tmp_path: Path,
) -> None:
    d = written(tmp_path)
    ends = ends_of(d)
    log = d / log_name(0)
    data = bytearray(log.read_bytes())
    data[ends[3] + 66] ^= 0x40  # a payload byte of message 4
    log.write_bytes(bytes(data))
    trusting = Partition.open(d, 0, BIG)
    assert trusting.next_offset == 10  # only the tail is checked by default...
    assert decode(trusting.poll(0, 100)) == expected(range(4))  # ...but polls verify
    with pytest.raises(IggyError) as refused:
        trusting.poll(4, 100)
    assert refused.value.status == Status.INVALID_MESSAGE_CHECKSUM
    trusting.close()
    verifying = Partition.open(
        d, 0, PartitionConfig(segment_size_bytes=1 << 20, verify_checksums_on_open=True)
    )
    r = verifying.recovery
    assert verifying.next_offset == 10 and verifying.messages_count == 9
    assert r.truncated_bytes == ends[4] - ends[3]
    assert [q.read_bytes() for q in r.quarantined if ".corrupt-" in q.name][-1] == bytes(
        data[ends[3] : ends[4]]
    )
    assert any("offsets 4..4 are missing" in p for p in r.problems), r.problems
    assert [s.start_offset for s in verifying.segments] == [0, 5]
    assert decode(verifying.poll(0, 100)) == expected([0, 1, 2, 3, 5, 6, 7, 8, 9])
    fill(verifying, 2)
    assert decode(verifying.poll(9, 100)) == expected([9, 10, 11])
    verifying.close()
    again = Partition.open(d, 0, PartitionConfig(segment_size_bytes=1 << 20, verify_checksums_on_open=True))
    assert again.recovery.truncated_bytes == 0 and again.next_offset == 12


def test_recovery_given_stray_empty_segment_when_opened_should_remove_it(tmp_path: Path) -> None:
    d = written(tmp_path)
    (d / log_name(500)).write_bytes(b"")
    part = Partition.open(d, 0, BIG)
    assert part.next_offset == 10 and part.segments_count == 1
    assert not (d / log_name(500)).exists() and not (d / index_name(500)).exists()
    assert any("stray" in p for p in part.recovery.problems)
    fill(part, 1)
    assert decode(part.poll(10, 1)) == expected([10])


def test_recovery_given_stray_empty_segment_before_data_when_opened_should_remove_it(tmp_path: Path) -> None:
    d = written(tmp_path, count=30, config=TINY)
    segments = sorted(n for n in os.listdir(d) if n.endswith(".log"))
    first = int(segments[0][:20])
    for name in segments[:2]:  # retention removed the two oldest
        (d / name).unlink()
        (d / name.replace(".log", ".index")).unlink()
    (d / log_name(first)).write_bytes(b"")
    part = Partition.open(d, 0, TINY)
    assert not (d / log_name(first)).exists()
    assert part.next_offset == 30 and part.first_offset == int(segments[2][:20])


def test_recovery_given_orphan_index_when_opened_should_remove_it(tmp_path: Path) -> None:
    d = written(tmp_path)
    (d / index_name(900)).write_bytes(b"\x01" * 32)
    part = Partition.open(d, 0, BIG)
    assert not (d / index_name(900)).exists() and part.next_offset == 10


def test_recovery_given_missing_middle_segment_when_opened_should_report_gap_and_serve_the_rest(
    tmp_path: Path,
) -> None:
    d = written(tmp_path, count=30, config=TINY)
    starts = sorted(int(n[:20]) for n in os.listdir(d) if n.endswith(".log"))
    assert len(starts) >= 3
    gap_lo, gap_hi = starts[1], starts[2]
    (d / log_name(gap_lo)).unlink()
    (d / index_name(gap_lo)).unlink()
    part = Partition.open(d, 0, TINY)
    assert any("gap" in p for p in part.recovery.problems)
    assert part.next_offset == 30
    offsets = [o for o, _ in decode(part.poll(0, 100))]
    assert offsets == [o for o in range(30) if not gap_lo <= o < gap_hi]


def test_recovery_given_overlapping_segments_when_opened_should_cut_the_earlier_one(tmp_path: Path) -> None:
    d = written(tmp_path, count=20, config=TINY)
    starts = sorted(int(n[:20]) for n in os.listdir(d) if n.endswith(".log"))
    a, b = starts[0], starts[1]
    ends_a = ends_of(d, a)
    # Rewrite segment b so it starts two messages earlier, repeating a's last two messages.
    log_a = (d / log_name(a)).read_bytes()
    log_b = (d / log_name(b)).read_bytes()
    (d / log_name(b)).unlink()
    (d / index_name(b)).unlink()
    (d / log_name(b - 2)).write_bytes(log_a[ends_a[-3] :] + log_b)
    part = Partition.open(d, 0, TINY)
    assert part.recovery.quarantined and "overlap" in part.recovery.quarantined[0].name
    assert part.recovery.quarantined[0].read_bytes() == log_a[ends_a[-3] :]
    assert [s.start_offset for s in part.segments][:2] == [a, b - 2]
    assert decode(part.poll(0, 100)) == expected(range(20))


def test_recovery_given_segment_name_not_matching_offsets_when_opened_should_quarantine_it(
    tmp_path: Path,
) -> None:
    d = written(tmp_path)
    original = (d / log_name(0)).read_bytes()
    (d / log_name(0)).rename(d / log_name(3))
    (d / index_name(0)).unlink()
    part = Partition.open(d, 0, BIG)
    assert part.messages_count == 0 and part.next_offset == 3
    assert part.recovery.quarantined[0].read_bytes() == original


def test_recovery_given_torn_write_in_memory_disk_when_reopened_should_keep_whole_messages(
    tmp_path: Path,
) -> None:
    io = MemIO()
    config = PartitionConfig(segment_size_bytes=1 << 20, flush_messages=4)
    part = Partition.open(tmp_path / "p", 0, config, io)
    fill(part, 4)
    part.flush(fsync=True)
    fill(part, 4)  # flushed when the 4th arrives, never synced
    io.crash(keep_unsynced_bytes=64 + len(payload(4)) + 30)  # message 4 and part of message 5
    again = Partition.open(tmp_path / "p", 0, config, io)
    assert again.next_offset == 5
    assert again.recovery.truncated_bytes > 0 and len(again.recovery.quarantined) == 1
    assert decode(again.poll(0, 100)) == expected(range(5))
    fill(again, 2)
    assert decode(again.poll(4, 100)) == expected(range(4, 7))


WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from tidelog.storage.partition import Partition, PartitionConfig
    from tidelog.wire.batch import INDEX_ENTRY, MESSAGE_HEADER, parse_send_batch

    config = PartitionConfig(segment_size_bytes=4096, flush_messages=3, fsync_on_flush=True)
    part = Partition.open(Path(sys.argv[1]), 0, config)
    while True:
        base = part.next_offset
        payloads = [b"payload-%d-" % (base + i) + b"q" * ((base + i) % 11) for i in range(3)]
        index, area = bytearray(), bytearray()
        for p in payloads:
            area += MESSAGE_HEADER.pack(0, 0, 0, 0, 0, 0, 0, len(p), 0) + p
            index += INDEX_ENTRY.pack(0, len(area), 0)
        part.append(parse_send_batch(index, area, 3), 1, os.urandom)
        assert part.unflushed_messages == 0
        print(part.next_offset, flush=True)  # acknowledged: flushed and synced
    """
)


def test_recovery_given_writer_killed_mid_stream_when_reopened_should_keep_every_acknowledged_message(
    tmp_path: Path,
) -> None:
    d = tmp_path / "p"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(d)], stdout=subprocess.PIPE, text=True, env={**os.environ}
    )
    assert proc.stdout is not None
    acknowledged = 0
    deadline = time.monotonic() + 20
    while acknowledged < 150 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acknowledged = int(line)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert acknowledged >= 150
    part = Partition.open(d, 0, PartitionConfig(segment_size_bytes=4096, verify_checksums_on_open=True))
    assert part.next_offset >= acknowledged
    assert decode(part.poll(0, acknowledged)) == expected(range(acknowledged))


def test_recovery_given_direct_io_padding_left_by_a_crash_when_opened_should_cut_only_zeros(
    tmp_path: Path,
) -> None:
    if not DirectIO.supported(tmp_path):
        pytest.skip("the test directory's filesystem refuses O_DIRECT")
    io = DirectIO(direct_suffixes=DIRECT_SUFFIXES)
    with Writer() as w:
        part = Partition.open(tmp_path / "p", 0, BIG, io, writer=w)
        fill(part, 10)
        part.flush(fsync=True)
        logical = part.segments[-1].size_bytes
        # What a crash leaves behind: the live files, padded to whole pages.
        shutil.copytree(tmp_path / "p", tmp_path / "crashed")
        part.close()
    padded = (tmp_path / "crashed" / log_name(0)).stat().st_size
    assert padded % 4096 == 0 and padded > logical
    again = Partition.open(tmp_path / "crashed", 0, BIG, io)
    r = again.recovery
    assert again.next_offset == 10 and decode(again.poll(0, 100)) == expected(range(10))
    assert r.truncated_bytes == padded - logical < 4096
    assert all(q.read_bytes() == bytes(q.stat().st_size) for q in r.quarantined)  # zeros only
    assert (tmp_path / "crashed" / log_name(0)).stat().st_size == logical
    assert ends_of(tmp_path / "crashed") == again.segments[0].ends.tolist()


DIRECT_WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from tidelog.storage.io import DirectIO
    from tidelog.storage.partition import Partition, PartitionConfig
    from tidelog.storage.segment import DIRECT_SUFFIXES
    from tidelog.storage.writer import Writer
    from tidelog.wire.batch import INDEX_ENTRY, MESSAGE_HEADER, parse_send_batch

    config = PartitionConfig(segment_size_bytes=4096, flush_messages=1000)
    io = DirectIO(direct_suffixes=DIRECT_SUFFIXES)
    part = Partition.open(Path(sys.argv[1]), 0, config, io, writer=Writer())
    while True:
        base = part.next_offset
        payloads = [b"payload-%d-" % (base + i) + b"q" * ((base + i) % 11) for i in range(3)]
        index, area = bytearray(), bytearray()
        for p in payloads:
            area += MESSAGE_HEADER.pack(0, 0, 0, 0, 0, 0, 0, len(p), 0) + p
            index += INDEX_ENTRY.pack(0, len(area), 0)
        part.append(parse_send_batch(index, area, 3), 1, os.urandom)
        part.flush_async(True).result()
        print(part.next_offset, flush=True)  # acknowledged: written and synced
    """
)


def test_recovery_given_direct_io_writer_killed_when_reopened_should_keep_every_acknowledged_message(
    tmp_path: Path,
) -> None:
    if not DirectIO.supported(tmp_path):
        pytest.skip("the test directory's filesystem refuses O_DIRECT")
    d = tmp_path / "p"
    proc = subprocess.Popen(
        [sys.executable, "-c", DIRECT_WRITER, str(d)], stdout=subprocess.PIPE, text=True, env={**os.environ}
    )
    assert proc.stdout is not None
    acknowledged = 0
    deadline = time.monotonic() + 20
    while acknowledged < 150 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acknowledged = int(line)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert acknowledged >= 150
    config = PartitionConfig(segment_size_bytes=4096, verify_checksums_on_open=True)
    part = Partition.open(d, 0, config, DirectIO(direct_suffixes=DIRECT_SUFFIXES))
    assert part.next_offset >= acknowledged and part.segments_count > 1
    assert decode(part.poll(0, acknowledged)) == expected(range(acknowledged))
    assert all(q.read_bytes() == bytes(q.stat().st_size) for q in part.recovery.quarantined)


VERIFY = PartitionConfig(segment_size_bytes=1 << 20, verify_checksums_on_open=True)


def damage(log: Path, at: int) -> bytes:
    data = bytearray(log.read_bytes())
    data[at] ^= 0x40
    log.write_bytes(bytes(data))
    return bytes(data)


@pytest.mark.parametrize(
    ("bad", "kept_starts"),
    [([0], [1]), ([4, 7], [0, 5, 8]), ([9], [0])],
    ids=["first-message", "two-messages", "last-message"],
)
def test_recovery_given_damaged_messages_when_verifying_on_open_should_split_around_each(
    tmp_path: Path, bad: list[int], kept_starts: list[int]
) -> None:
    d = written(tmp_path)
    ends = ends_of(d)
    for b in bad:
        damage(d / log_name(0), ends[b] - 2)
    part = Partition.open(d, 0, VERIFY)
    good = [o for o in range(10) if o not in bad]
    assert [s.start_offset for s in part.segments] == kept_starts
    assert decode(part.poll(0, 100)) == expected(good)
    assert part.recovery.truncated_bytes == sum(ends[b] - (ends[b - 1] if b else 0) for b in bad)
    assert part.next_offset == (10 if 9 not in bad else 9)
    part.close()
    again = Partition.open(d, 0, VERIFY)
    assert again.recovery.truncated_bytes == 0 and decode(again.poll(0, 100)) == expected(good)


def test_recovery_given_damaged_message_and_no_index_after_it_when_verifying_should_find_next_header(
    tmp_path: Path,
) -> None:
    d = written(tmp_path)
    ends = ends_of(d)
    damage(d / log_name(0), ends[3] + 30)  # a header byte of message 4 (its timestamp)
    entries = np.frombuffer((d / index_name(0)).read_bytes(), dtype=INDEX_DTYPE).copy()
    entries["position"][5:] = 0  # the index is no help after message 4
    (d / index_name(0)).write_bytes(entries.tobytes())
    part = Partition.open(d, 0, VERIFY)
    assert decode(part.poll(0, 100)) == expected([0, 1, 2, 3, 5, 6, 7, 8, 9])
    assert any("offsets 4..4 are missing" in p for p in part.recovery.problems)


def test_recovery_given_split_interrupted_by_a_crash_when_reopened_should_split_the_same_way(
    tmp_path: Path,
) -> None:
    d = written(tmp_path)
    ends = ends_of(d)
    damaged = damage(d / log_name(0), ends[4] - 2)
    index = (d / index_name(0)).read_bytes()
    part = Partition.open(d, 0, VERIFY)
    part.close()
    # The crash came after the new segment was written, before the original was cut back.
    (d / log_name(0)).write_bytes(damaged)
    (d / index_name(0)).write_bytes(index)
    again = Partition.open(d, 0, VERIFY)
    assert [s.start_offset for s in again.segments] == [0, 5]
    assert decode(again.poll(0, 100)) == expected([0, 1, 2, 3, 5, 6, 7, 8, 9])

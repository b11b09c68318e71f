"""The record store (`store_format = 0.9`): partitions whose segments hold stamped 0.9 batch
records, polled whole or cut at any offset from memory and from the files (read, or as file
ranges, with the index in memory or read by ranges), after restarts, and beside segments of
the 0.8 format in one partition."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.unit.test_partition import batch_of
from tidelog.server.dispatch import records_as_v08
from tidelog.storage.index_cache import IndexCache
from tidelog.storage.integrity import StoreFormat
from tidelog.storage.io import BufferedIO, DirectIO, File, FileIO, MemIO, join_pieces
from tidelog.storage.partition import Partition, PartitionConfig, PollResult
from tidelog.wire.batch import scan_messages
from tidelog.wire.v09.batch import parse_records, record_from_v08, records_to_v08

RECORDS = PartitionConfig(segment_size_bytes=3000, flush_messages=16, store_format=StoreFormat.RECORDS)
V08 = PartitionConfig(segment_size_bytes=3000, flush_messages=16, store_format=StoreFormat.V08)
SIZES = [1, 3, 5, 2, 7, 1, 4, 6, 3, 2, 5, 1]  # messages per record


def payload(offset: int) -> bytes:
    return b"msg-%d-" % offset + b"q" * (offset * 7 % 61)


def append_records(part: Partition, sizes: list[int], now_us: int = 1_000) -> None:
    for n in sizes:
        base = part.next_offset
        batch = batch_of([payload(base + i) for i in range(n)])
        if part.store_format is StoreFormat.RECORDS:
            [record] = record_from_v08(batch.buf, batch.ends, os.urandom, part.partition_id)
            assert part.append(record, now_us, os.urandom) == base + n - 1
        else:
            assert part.append(batch, now_us, os.urandom) == base + n - 1
        # A clock standing still: records must still get rising timestamps.


def records_of(result: PollResult) -> list[tuple[int, bytes, int]]:
    """(offset, payload, timestamp) of every message, the records parsed with every
    checksum (frames and batch) verified."""
    assert result.store_format is StoreFormat.RECORDS
    out = []
    for record in parse_records(join_pieces(result.chunks), verify_checksums=True, allow_empty_payload=True):
        assert record.partition_id == 4
        out += [(int(o), record.payload(i), record.base_timestamp) for i, o in enumerate(record.offsets())]
    return out


def check_every_window(part: Partition, total: int, file_ranges: bool) -> None:
    for start in range(total):
        for count in (1, 2, 3, 8, total):
            result = part.poll(start, count, file_ranges=file_ranges)
            got = records_of(result)
            assert [o for o, _, _ in got] == list(range(start, min(start + count, total)))
            assert [p for _, p, _ in got] == [payload(o) for o, _, _ in got]
            # 0.8 clients get the same messages, converted whole: file ranges read into
            # their reply buffers and converted there, pieces in memory copied.
            data, _ = records_to_v08(join_pieces(result.chunks))
            scanned, valid = scan_messages(data, True, start)
            assert valid == len(data) and len(scanned) == len(got)
            as_v08 = records_as_v08(result, 1 << 30)
            assert as_v08.count == len(got) and bytes(join_pieces(as_v08.chunks)) == bytes(data)


@pytest.fixture(params=["buffered", "direct", "mem"])
def io(request: pytest.FixtureRequest, tmp_path: Path) -> FileIO:
    if request.param == "direct":
        if not DirectIO.supported(tmp_path):
            pytest.skip("the test directory's filesystem refuses O_DIRECT")
        return DirectIO()
    return BufferedIO() if request.param == "buffered" else MemIO()


def test_records_given_appends_when_polled_at_any_offset_should_give_whole_or_cut_records_that_verify(
    io: FileIO, tmp_path: Path
) -> None:
    part = Partition.open(tmp_path / "p", 4, RECORDS, io=io)
    append_records(part, SIZES)
    total = sum(SIZES)
    assert part.segments_count >= 3, "the test needs sealed segments"
    # Timestamps: one per record, strictly rising although the clock stood still.
    stamps = [t for _, _, t in records_of(part.poll(0, total))]
    runs = [stamps[sum(SIZES[:k])] for k in range(len(SIZES))]
    assert runs == list(range(1_000, 1_000 + len(SIZES)))
    check_every_window(part, total, file_ranges=False)  # part in memory, part in files
    part.flush(True)
    part.close()
    for cache_bytes in (0, 1 << 20):  # sealed indexes read by ranges, or cached
        again = Partition.open(tmp_path / "p", 4, RECORDS, io=io, index_cache=IndexCache(cache_bytes))
        assert again.recovery.problems == [] and again.next_offset == total
        check_every_window(again, total, file_ranges=False)
        check_every_window(again, total, file_ranges=True)
        again.close()


def test_records_given_timestamp_poll_when_searched_should_start_at_the_first_message_of_a_record(
    tmp_path: Path,
) -> None:
    part = Partition.open(tmp_path / "p", 4, RECORDS)
    append_records(part, SIZES)
    part.flush(True)
    part.close()
    part = Partition.open(tmp_path / "p", 4, RECORDS, index_cache=IndexCache(0))
    firsts = np.cumsum([0, *SIZES[:-1]]).tolist()
    for k, first in enumerate(firsts):
        assert part.offset_for_timestamp(1_000 + k) == first
    assert part.offset_for_timestamp(1_000 + len(SIZES)) is None
    part.close()


def test_records_given_byte_budget_when_polled_should_cut_the_last_record_within_it(tmp_path: Path) -> None:
    part = Partition.open(tmp_path / "p", 4, RECORDS)
    append_records(part, [9, 9])
    part.flush(True)
    for budget in (1, 300, 700, 1500):
        result = part.poll(2, 100, max_bytes=budget)
        got = records_of(result)
        assert got and [o for o, _, _ in got] == list(range(2, 2 + len(got)))
        frames = sum(48 + len(p) for _, p, _ in got)
        assert len(got) == 1 or frames <= budget


@pytest.mark.parametrize("file_ranges", [True, False])
def test_records_as_v08_given_a_reply_cap_when_converted_should_keep_the_messages_that_fit_and_at_least_one(
    tmp_path: Path, file_ranges: bool
) -> None:
    part = Partition.open(tmp_path / "p", 4, RECORDS)
    append_records(part, SIZES)
    part.flush(True)
    total = sum(SIZES)
    result = part.poll(0, total, file_ranges=file_ranges)
    data, ends = records_to_v08(join_pieces(result.chunks))
    assert any(not isinstance(c, bytes | memoryview) for c in result.chunks) == file_ranges
    for cap in (1, int(ends[0]), int(ends[0]) + 1, int(ends[6]), int(ends[-1]) - 1, int(ends[-1])):
        capped = records_as_v08(part.poll(0, total, file_ranges=file_ranges), cap)
        kept = max(int(np.searchsorted(ends, cap, side="right")), 1)
        assert capped.count == kept and capped.first_offset == 0
        assert bytes(join_pieces(capped.chunks)) == bytes(data[: int(ends[kept - 1])])
    part.close()


class LogReadsIO(BufferedIO):
    """Counts the reads of record logs."""

    def __init__(self) -> None:
        super().__init__()
        self.log_reads = 0

    def open(self, path: Path) -> File:
        file = super().open(path)
        if path.suffix == ".rlog":
            pread = file.pread

            def counted(length: int, offset: int) -> bytes:
                self.log_reads += 1
                return pread(length, offset)

            file.pread = counted  # type: ignore[method-assign]
        return file


def test_records_given_sealed_segment_when_polled_should_check_boundaries_only_of_a_loaded_index(
    tmp_path: Path,
) -> None:
    io = LogReadsIO()
    part = Partition.open(tmp_path / "p", 4, RECORDS, io=io, index_cache=IndexCache(1 << 20))
    append_records(part, SIZES)
    part.flush(True)
    assert part.segments_count >= 3
    # The index of a segment sealed here was built while appending: it is not checked.
    io.log_reads = 0
    assert records_of(part.poll(0, SIZES[0], file_ranges=True))
    assert io.log_reads == 0
    part.close()
    # Loaded from the file, it is: the heads of the first and last record read are compared.
    again = Partition.open(tmp_path / "p", 4, RECORDS, io=io, index_cache=IndexCache(1 << 20))
    io.log_reads = 0
    assert records_of(again.poll(0, SIZES[0], file_ranges=True))
    assert io.log_reads >= 1
    again.close()


def test_records_given_damaged_frame_on_disk_when_polled_should_serve_only_the_records_before_it(
    tmp_path: Path,
) -> None:
    part = Partition.open(tmp_path / "p", 4, RECORDS)
    append_records(part, [3, 3, 3])
    part.flush(True)
    part.close()
    [log] = (tmp_path / "p").glob("*.rlog")
    data = bytearray(log.read_bytes())
    data[-5] ^= 0x40  # inside the last record's last payload
    log.write_bytes(bytes(data))
    part = Partition.open(tmp_path / "p", 4, RECORDS)
    got = records_of(part.poll(1, 100))
    assert [o for o, _, _ in got] == [1, 2, 3, 4, 5]
    assert list((tmp_path / "p" / "quarantine").iterdir())
    part.close()


@pytest.mark.parametrize(("first", "then"), [(V08, RECORDS), (RECORDS, V08)], ids=["to-records", "to-v08"])
def test_store_given_segments_of_the_other_format_when_reopened_should_keep_them_and_stop_polls_at_the_switch(
    tmp_path: Path, first: PartitionConfig, then: PartitionConfig
) -> None:
    part = Partition.open(tmp_path / "p", 4, first)
    append_records(part, [2, 3])
    part.flush(True)
    part.close()
    part = Partition.open(tmp_path / "p", 4, then)
    assert part.store_format is then.store_format and part.segments_count == 2
    assert [s.fmt.store_format for s in part.segments] == [first.store_format, then.store_format]
    append_records(part, [4])
    before = part.poll(0, 100)
    assert before.store_format is first.store_format and before.count == 5  # stops at the switch
    after = part.poll(5, 100)
    assert after.store_format is then.store_format and after.count == 4
    part.flush(True)
    part.close()
    # An empty active segment of the other format is replaced, not kept beside a new one.
    empty = Partition.open(tmp_path / "q", 4, first)
    empty.close()
    empty = Partition.open(tmp_path / "q", 4, then)
    assert [s.fmt.store_format for s in empty.segments] == [then.store_format]
    names = sorted(p.name for p in (tmp_path / "q").iterdir() if p.is_file())
    assert names == ["00000000000000000000" + s for s in sorted([".index", empty.segments[0].fmt.suffix])]
    empty.close()

"""Unit tests of the crash-safe metadata log (op log + snapshot)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tidelog.metadata import (
    CreateConsumerGroup,
    CreatePersonalAccessToken,
    CreateStream,
    CreateTopic,
    CreateUser,
    DeleteStream,
    Metadata,
    MetadataDefaults,
    Op,
    UpdatePermissions,
    UserStatus,
)
from tidelog.permissions import GlobalPermissions, Permissions, StreamPermissions, TopicPermissions
from tidelog.storage.metalog import (
    HEADER_SIZE,
    LOG_NAME,
    SNAPSHOT_NAME,
    MetaLog,
    MetaLogBroken,
    MetaLogCorruption,
    encode_record,
)
from tidelog.wire.codes import IggyError

DEFAULTS = MetadataDefaults(segment_size_bytes=1 << 30)
NOW_US = 1_700_000_000_000_000


def sample_ops(n: int = 8) -> list[Op]:
    ops: list[Op] = [
        CreateUser("iggy", "root-hash", UserStatus.ACTIVE, None, NOW_US),
        CreateUser("alice", "alice-hash", UserStatus.ACTIVE, None, NOW_US),
        UpdatePermissions(
            1,
            Permissions(
                GlobalPermissions(read_users=True),
                {3: StreamPermissions(read_stream=True, topics={4: TopicPermissions(poll_messages=True)})},
            ),
        ),
        CreatePersonalAccessToken(1, "tok", "hash-of-token", 0),
        CreateStream("orders", NOW_US),
        CreateTopic(0, "events", 3, 1, 0, 0, 0, NOW_US),
        CreateConsumerGroup(0, 0, "workers"),
        CreateStream("doomed", NOW_US),
        DeleteStream(1),
    ]
    ops.extend(CreateStream(f"extra-{i}", NOW_US + i) for i in range(max(0, n - len(ops))))
    return ops[:n] if n < len(ops) else ops


def commit(log: MetaLog, md: Metadata, op: Op) -> None:
    log.apply(op)  # validates, logs durably, then applies to `md` (the state the log was opened with)


def write_log(directory: Path, ops: list[Op], **kw: int) -> Metadata:
    log, md = MetaLog.open(directory, DEFAULTS, **kw)
    with log:
        for op in ops:
            commit(log, md, op)
    return md


def reopen(directory: Path) -> tuple[MetaLog, Metadata]:
    return MetaLog.open(directory, DEFAULTS)


def torn_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.torn"))


def test_open_given_empty_directory_should_start_from_empty_state(tmp_path: Path) -> None:
    log, md = MetaLog.open(tmp_path / "meta", DEFAULTS)
    with log:
        assert md.revision == 0 and md.streams == {} and md.users == {}
        assert (tmp_path / "meta" / LOG_NAME).exists()


def test_append_given_ops_when_reopened_should_replay_to_equal_state(tmp_path: Path) -> None:
    md = write_log(tmp_path, sample_ops())
    log, replayed = reopen(tmp_path)
    with log:
        assert replayed.to_snapshot() == md.to_snapshot()
        assert replayed.revision == md.revision == len(sample_ops())
        assert log.revision == md.revision
        replayed.check_invariants()
        commit(log, replayed, CreateStream("after-reopen", NOW_US))
    log, again = reopen(tmp_path)
    with log:
        assert again.require_stream("after-reopen").id == replayed.require_stream("after-reopen").id


def test_apply_given_invalid_op_should_log_nothing_and_change_nothing(tmp_path: Path) -> None:
    md = write_log(tmp_path, sample_ops(5))
    size = (tmp_path / LOG_NAME).stat().st_size
    log, replayed = reopen(tmp_path)
    with log:
        with pytest.raises(IggyError):
            log.apply(CreateStream("orders", NOW_US))  # the name is taken
        assert replayed.to_snapshot() == md.to_snapshot() and log.revision == md.revision
    assert (tmp_path / LOG_NAME).stat().st_size == size


def test_open_given_torn_last_record_at_every_byte_should_cut_it_and_keep_it_aside(tmp_path: Path) -> None:
    ops = sample_ops()
    good_dir = tmp_path / "good"
    expected = write_log(good_dir, ops[:-1]).to_snapshot()
    prefix_size = (good_dir / LOG_NAME).stat().st_size
    write_log(good_dir, ops[-1:])
    full = (good_dir / LOG_NAME).read_bytes()
    assert len(full) > prefix_size + HEADER_SIZE

    for cut in range(prefix_size + 1, len(full)):
        directory = tmp_path / f"cut-{cut}"
        directory.mkdir()
        (directory / LOG_NAME).write_bytes(full[:cut])
        log, md = reopen(directory)
        with log:
            assert md.to_snapshot() == expected, cut
            assert (directory / LOG_NAME).read_bytes() == full[:prefix_size]
            [aside] = torn_files(directory)
            assert aside.read_bytes() == full[prefix_size:cut]
            # The log is usable again: the same last op can be committed and survives.
            commit(log, md, ops[-1])
        log, md = reopen(directory)
        with log:
            assert md.revision == len(ops)


def test_open_given_garbage_or_zeros_after_last_record_should_cut_the_tail(tmp_path: Path) -> None:
    # Bytes an interrupted append can leave: zeros (the data never landed), a header cut short.
    for tail in (b"\x00" * 100, b"\xff" * 5):
        directory = tmp_path / f"tail-{len(tail)}-{tail[0]}"
        md = write_log(directory, sample_ops())
        with open(directory / LOG_NAME, "ab") as f:
            f.write(tail)
        log, replayed = reopen(directory)
        with log:
            assert replayed.to_snapshot() == md.to_snapshot()
            [aside] = torn_files(directory)
            assert aside.read_bytes() == tail


def test_open_given_two_torn_tails_at_same_offset_should_keep_both_aside(tmp_path: Path) -> None:
    write_log(tmp_path, sample_ops(3))
    for tail in (b"first", b"second"):
        with open(tmp_path / LOG_NAME, "ab") as f:
            f.write(tail)
        reopen(tmp_path)[0].close()
    assert sorted(p.read_bytes() for p in torn_files(tmp_path)) == [b"first", b"second"]


def corrupt_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["length", "checksum", "payload"])
def test_open_given_corrupt_middle_record_should_fail_loudly(tmp_path: Path, where: str) -> None:
    write_log(tmp_path, sample_ops())
    offset = {"length": 0, "checksum": 5, "payload": HEADER_SIZE + 10}[where]
    corrupt_byte(tmp_path / LOG_NAME, offset)
    with pytest.raises(MetaLogCorruption, match="valid record"):
        reopen(tmp_path)
    assert torn_files(tmp_path) == []  # nothing was cut


def test_open_given_missing_middle_record_should_fail_on_revision_gap(tmp_path: Path) -> None:
    write_log(tmp_path, sample_ops(3))
    data = (tmp_path / LOG_NAME).read_bytes()
    first_len = HEADER_SIZE + int.from_bytes(data[:4], "little")
    second_len = HEADER_SIZE + int.from_bytes(data[first_len : first_len + 4], "little")
    (tmp_path / LOG_NAME).write_bytes(data[:first_len] + data[first_len + second_len :])
    with pytest.raises(MetaLogCorruption, match="revision"):
        reopen(tmp_path)


def test_open_given_valid_record_with_unknown_op_should_fail_loudly(tmp_path: Path) -> None:
    write_log(tmp_path, sample_ops(2))
    with open(tmp_path / LOG_NAME, "ab") as f:
        f.write(encode_record(b'{"rev":3,"op":{"type":"Bogus"}}'))
    with pytest.raises(MetaLogCorruption, match="undecodable"):
        reopen(tmp_path)


def test_open_given_logged_op_that_fails_to_apply_should_fail_loudly(tmp_path: Path) -> None:
    write_log(tmp_path, sample_ops(2))
    with open(tmp_path / LOG_NAME, "ab") as f:
        f.write(encode_record(b'{"rev":3,"op":{"type":"DeleteStream","stream_id":9}}'))
    with pytest.raises(MetaLogCorruption, match="no longer applies"):
        reopen(tmp_path)


def test_compact_given_records_when_more_appended_and_reopened_should_equal_state(tmp_path: Path) -> None:
    ops = sample_ops(14)
    log, md = MetaLog.open(tmp_path, DEFAULTS)
    with log:
        for op in ops[:6]:
            commit(log, md, op)
        log.compact(md)
        assert (tmp_path / LOG_NAME).stat().st_size == 0
        assert (tmp_path / SNAPSHOT_NAME).exists()
        for op in ops[6:]:
            commit(log, md, op)
    log, replayed = reopen(tmp_path)
    with log:
        assert replayed.to_snapshot() == md.to_snapshot()
        assert replayed.revision == len(ops)
        commit(log, replayed, CreateStream("after", NOW_US))
    log, again = reopen(tmp_path)
    with log:
        assert again.revision == len(ops) + 1


def test_append_given_compact_every_n_when_n_reached_should_compact_automatically(tmp_path: Path) -> None:
    ops = sample_ops(12)
    md = write_log(tmp_path, ops, compact_every_records=5)
    # 12 records: snapshots after 5 and 10, two left in the log.
    data = (tmp_path / LOG_NAME).read_bytes()
    assert data.count(b'{"rev":') == 2 and b'{"rev":11,' in data
    log, replayed = reopen(tmp_path)
    with log:
        assert replayed.to_snapshot() == md.to_snapshot()


def test_open_given_crash_after_snapshot_before_log_reset_should_skip_old_records(tmp_path: Path) -> None:
    ops = sample_ops(10)
    log, md = MetaLog.open(tmp_path, DEFAULTS)
    with log:
        for op in ops[:7]:
            commit(log, md, op)
        old_log = (tmp_path / LOG_NAME).read_bytes()
        log.compact(md)
    # As if the crash came between the snapshot rename and the log replacement.
    (tmp_path / LOG_NAME).write_bytes(old_log)
    log, replayed = reopen(tmp_path)
    with log:
        assert replayed.to_snapshot() == md.to_snapshot()
        for op in ops[7:]:
            commit(log, replayed, op)
    log, final = reopen(tmp_path)
    with log:
        assert final.to_snapshot() == replayed.to_snapshot()
        assert final.revision == len(ops)


def test_open_given_damaged_snapshot_should_fail_loudly(tmp_path: Path) -> None:
    log, md = MetaLog.open(tmp_path, DEFAULTS)
    with log:
        for op in sample_ops(4):
            commit(log, md, op)
        log.compact(md)
    corrupt_byte(tmp_path / SNAPSHOT_NAME, HEADER_SIZE + 3)
    with pytest.raises(MetaLogCorruption, match="snapshot"):
        reopen(tmp_path)


def test_open_given_leftover_temp_files_should_remove_them(tmp_path: Path) -> None:
    md = write_log(tmp_path, sample_ops(3))
    (tmp_path / (SNAPSHOT_NAME + ".tmp")).write_bytes(b"half a snapshot")
    (tmp_path / (LOG_NAME + ".tmp")).write_bytes(b"")
    log, replayed = reopen(tmp_path)
    with log:
        assert replayed.to_snapshot() == md.to_snapshot()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOG_NAME]


# ---- torn tail vs damaged complete record (issue 6, defect 2) --------------------------------


def record_offsets(path: Path) -> list[int]:
    data = path.read_bytes()
    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += HEADER_SIZE + int.from_bytes(data[pos : pos + 4], "little")
    assert pos == len(data)
    return offsets


@pytest.mark.parametrize(
    "where", ["length-low-byte", "length-second-byte", "length-top-byte", "checksum", "payload", "last-byte"]
)
def test_open_given_flipped_byte_in_acknowledged_last_record_should_refuse_and_keep_the_file(
    tmp_path: Path, where: str
) -> None:
    write_log(tmp_path, sample_ops())
    path = tmp_path / LOG_NAME
    last = record_offsets(path)[-1]
    offset = {
        "length-low-byte": last,  # the length now points past the end of the file
        "length-second-byte": last + 1,
        "length-top-byte": last + 3,  # an impossible length
        "checksum": last + 5,
        "payload": last + HEADER_SIZE + 10,
        "last-byte": path.stat().st_size - 1,
    }[where]
    corrupt_byte(path, offset)
    damaged = path.read_bytes()
    with pytest.raises(MetaLogCorruption, match=rf"{LOG_NAME}.* at byte {last}\b") as info:
        reopen(tmp_path)
    assert "acknowledged" in str(info.value) and "restore" in str(info.value).lower()
    assert path.read_bytes() == damaged  # nothing was cut
    assert torn_files(tmp_path) == []


@pytest.mark.parametrize(
    "garbage",
    [b"\xde\xad\xbe\xef" * 10, encode_record(b'{"rev":99,"op":{}}')[:4] + b"\x00" * 8 + b"x" * 18],
    ids=["impossible-length", "complete-but-bad-checksum"],
)
def test_open_given_bytes_after_last_record_that_no_append_writes_should_refuse(
    tmp_path: Path, garbage: bytes
) -> None:
    write_log(tmp_path, sample_ops())
    with open(tmp_path / LOG_NAME, "ab") as f:
        f.write(garbage)
    with pytest.raises(MetaLogCorruption):
        reopen(tmp_path)
    assert torn_files(tmp_path) == []


def test_open_given_torn_record_whose_last_blocks_are_zeros_should_cut_it(tmp_path: Path) -> None:
    # Some filesystems extend the file before the data lands: a crash leaves zeros at the end.
    md = write_log(tmp_path, sample_ops())
    record = encode_record(b'{"rev":10,"op":{"type":"CreateStream","name":"zz","created_at_us":1}}')
    tail = record[:20] + b"\x00" * (len(record) - 20)
    with open(tmp_path / LOG_NAME, "ab") as f:
        f.write(tail)
    log, replayed = reopen(tmp_path)
    with log:
        assert replayed.to_snapshot() == md.to_snapshot()
        [aside] = torn_files(tmp_path)
        assert aside.read_bytes() == tail


# ---- a failed write changes nothing in memory (issue 6, defect 3) ----------------------------


def _fail_for_fd(monkeypatch: pytest.MonkeyPatch, name: str, fd: int) -> None:
    """Make os.<name> fail with EIO for one file descriptor only."""
    real = getattr(os, name)

    def failing(target: int, *args: object) -> object:
        if target == fd:
            raise OSError(5, f"injected {name} failure")
        return real(target, *args)

    monkeypatch.setattr(os, name, failing)


@pytest.mark.parametrize("failing", ["fdatasync", "write"])
def test_apply_given_failing_log_write_should_change_nothing_and_refuse_every_later_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    ops = sample_ops(5)
    log, md = MetaLog.open(tmp_path, DEFAULTS)
    for op in ops[:4]:
        commit(log, md, op)
    acknowledged = md.to_snapshot()
    size = (tmp_path / LOG_NAME).stat().st_size
    assert log._fd is not None
    with monkeypatch.context() as m:
        _fail_for_fd(m, failing, log._fd)
        with pytest.raises(MetaLogBroken):
            commit(log, md, ops[4])  # CreateStream("orders")
        assert md.to_snapshot() == acknowledged and md.stream("orders") is None
        md.check_invariants()
    # The disk is fine again, but an fsync error may have dropped dirty pages: stay read-only.
    with pytest.raises(MetaLogBroken):
        commit(log, md, CreateStream("later", NOW_US))
    assert md.to_snapshot() == acknowledged
    assert (tmp_path / LOG_NAME).stat().st_size == size  # the refused record was rolled back
    log.close()
    log, replayed = reopen(tmp_path)
    with log:
        assert replayed.to_snapshot() == acknowledged


def test_apply_given_failing_compaction_should_keep_the_op_and_keep_logging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = sample_ops(8)
    log, md = MetaLog.open(tmp_path, DEFAULTS, compact_every_records=3)
    for op in ops[:2]:
        commit(log, md, op)
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "injected: no space for the snapshot")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    commit(log, md, ops[2])  # acknowledged: the op is in the log; only the snapshot failed
    monkeypatch.setattr(os, "fsync", real_fsync)
    for op in ops[3:]:
        commit(log, md, op)
    log.close()
    log, replayed = reopen(tmp_path)
    with log:
        assert replayed.to_snapshot() == md.to_snapshot()
        assert replayed.revision == len(ops)


def test_apply_given_compaction_failing_after_the_log_was_replaced_should_go_read_only_and_keep_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = sample_ops(6)
    log, md = MetaLog.open(tmp_path, DEFAULTS, compact_every_records=3)
    log_path = tmp_path / LOG_NAME
    real_open = os.open

    def failing_open(path: object, flags: int, *args: object) -> int:
        if Path(str(path)) == log_path and not flags & os.O_CREAT:
            raise OSError(24, "injected: too many open files")
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    for op in ops[:2]:
        commit(log, md, op)
    with monkeypatch.context() as m:
        m.setattr(os, "open", failing_open)
        commit(log, md, ops[2])  # durable in the snapshot; the log it appends to is gone
    acknowledged = md.to_snapshot()
    assert log.broken is not None
    with pytest.raises(MetaLogBroken):
        commit(log, md, ops[3])
    assert md.to_snapshot() == acknowledged
    log.close()
    log, replayed = reopen(tmp_path)
    with log:
        assert replayed.to_snapshot() == acknowledged

"""The shard's metadata path under faults (issue 6, defects 2 and 3).

Log before apply: a failed metadata write changes nothing in memory and makes metadata
read-only (METADATA_READ_ONLY), while reads and message traffic go on. Folders metadata does
not name are quarantined and reported, never deleted, unless a logged delete proves them dead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.shardkit import for_partition, topic_op
from tests.wireclient import Request
from tidelog import metadata as md
from tidelog.config import Config
from tidelog.server.dispatch import Dispatcher
from tidelog.server.shard import DELETED_DIR, ORPHANS_DIR, Session, Shard, StartupRefused
from tidelog.wire import requests as c
from tidelog.wire.batch import Batch, parse_send_batch
from tidelog.wire.codes import IggyError, Status
from tidelog.wire.records import ConsumerGroupDetails, StreamInfo, decode_list, decode_record


def _batch(count: int, size: int) -> Batch:
    area = bytearray()
    index = bytearray()
    for _ in range(count):
        # 64-byte header (checksum, id, offset, timestamp, origin, lengths, reserved), then payload.
        area += bytes(48) + (0).to_bytes(4, "little") + size.to_bytes(4, "little") + bytes(8) + b"x" * size
        index += (0).to_bytes(4, "little") + len(area).to_bytes(4, "little") + bytes(8)
    return parse_send_batch(memoryview(bytes(index)), memoryview(area), count)


def _open(tmp_path: Path) -> Shard:
    shard = Shard(Config(data_dir=tmp_path))
    shard.open()
    return shard


def _seed(shard: Shard, partitions: int = 2) -> tuple[int, int]:
    """A stream with one topic whose partitions hold a few flushed messages."""
    stream = shard.apply(md.CreateStream(name="s", created_at_us=1))
    assert isinstance(stream, md.StreamMeta)
    topic = shard.apply(topic_op(stream.id, partitions=partitions))
    assert isinstance(topic, md.TopicMeta)
    for pid in sorted(topic.partitions):
        part = shard.create_partition((stream.id, topic.id, pid))
        part.append(for_partition(part, _batch(5, 100)), 1, os.urandom)
        part.flush(fsync=True)
    return stream.id, topic.id


def _root_session(shard: Shard) -> Session:
    session = shard.open_session(None, "test")
    session.user_id = md.ROOT_USER_ID
    return session


def _call(dispatcher: Dispatcher, session: Session, request: Request) -> object:
    """One request through the dispatcher's entry point, as a connection makes it."""

    class _Conn:
        peer = "test"

    conn = _Conn()
    conn.session = session  # type: ignore[attr-defined]
    return dispatcher.handle(conn, int(request.CODE), memoryview(request.encode()), True)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _fail_metalog_fdatasync(monkeypatch: pytest.MonkeyPatch, shard: Shard) -> None:
    fd = shard.metalog._fd
    real = os.fdatasync

    def failing(target: int) -> None:
        if target == fd:
            raise OSError(5, "injected fdatasync failure")
        real(target)

    monkeypatch.setattr(os, "fdatasync", failing)


# ---- defect 3: log before apply, then read-only ------------------------------------------------


def test_shard_given_failing_metadata_fsync_when_changing_metadata_should_refuse_read_only_and_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shard = _open(tmp_path)
    try:
        stream_id, topic_id = _seed(shard)
        shard.apply(md.CreateConsumerGroup(stream_id=stream_id, topic_id=topic_id, name="g"))
        dispatcher = Dispatcher(shard)
        session = _root_session(shard)
        acknowledged = shard.metadata.to_snapshot()
        partitions_before = set(shard.partitions)
        _fail_metalog_fdatasync(monkeypatch, shard)

        for request in (
            c.CreateStream(name="m1"),
            c.CreateTopic(stream_id, 1, 1, 0, 0, 0, "t2"),  # once left a topic with no partitions
            c.DeleteStream(stream_id=stream_id),
            c.DeleteStream(stream_id=77),  # no such stream: read-only answers first
            c.CreateStream(name="s"),  # invalid too (name taken): read-only answers first
        ):
            with pytest.raises(IggyError) as info:
                _call(dispatcher, session, request)
            assert info.value.status is Status.METADATA_READ_ONLY, request

        assert shard.metadata.to_snapshot() == acknowledged
        assert set(shard.partitions) == partitions_before  # no partition was created or dropped
        assert not (shard.topic_dir(stream_id, 1)).exists()
        shard.metadata.check_invariants()
        # Reads and the data plane keep working for everyone.
        streams = decode_list(StreamInfo, dispatcher.get_streams(session, c.GetStreams()))
        assert [s.name for s in streams] == ["s"]
        assert dispatcher.get_topic(session, c.GetTopic(stream_id, topic_id)) is not None
        part = shard.partitions[(stream_id, topic_id, 0)]
        part.append(for_partition(part, _batch(3, 10)), 2, os.urandom)
        assert part.messages_count == 8
        # Group membership is runtime state, never logged: joining still works.
        _call(dispatcher, session, c.JoinConsumerGroup(stream_id, topic_id, 0))
        group = decode_record(
            ConsumerGroupDetails,
            dispatcher.get_consumer_group(session, c.GetConsumerGroup(stream_id, topic_id, 0)),
        )
        assert [sorted(m.partitions) for m in group.members] == [[0, 1]]
    finally:
        shard.close()
    monkeypatch.undo()
    again = _open(tmp_path)
    try:
        assert again.metadata.to_snapshot() == acknowledged
        assert again.partitions[(stream_id, topic_id, 0)].messages_count == 8
    finally:
        again.close()


def test_shard_given_failing_metadata_write_at_first_start_should_refuse_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.fdatasync

    def failing(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("metadata.log"):
            raise OSError(28, "injected: no space left")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", failing)
    shard = Shard(Config(data_dir=tmp_path))
    with pytest.raises(StartupRefused, match="root user"):
        shard.open()
    shard.close()
    monkeypatch.undo()
    again = _open(tmp_path)  # nothing half-made: the root user is created now
    try:
        assert [u.username for u in again.metadata.users.values()] == ["iggy"]
    finally:
        again.close()


# ---- defect 2b: never delete data because metadata is missing ---------------------------------


def test_shard_given_folders_metadata_does_not_name_when_opened_should_quarantine_and_report_them(
    tmp_path: Path,
) -> None:
    shard = _open(tmp_path)
    try:
        stream_id, topic_id = _seed(shard)
    finally:
        shard.close()
    topic_dir = shard.topic_dir(stream_id, topic_id)
    orphans = {
        "partition": topic_dir / "partitions" / "7",
        "topic": shard.stream_dir(stream_id) / "topics" / "5",
        "stream": tmp_path / "streams" / "9",
    }
    shutil.copytree(topic_dir / "partitions" / "0", orphans["partition"])
    shutil.copytree(topic_dir, orphans["topic"])
    shutil.copytree(shard.stream_dir(stream_id), orphans["stream"])
    contents = {kind: _files(path) for kind, path in orphans.items()}
    known = _files(topic_dir / "partitions" / "0")

    again = Shard(Config(data_dir=tmp_path))
    report = again.open()
    try:
        assert len(report.problems) == 3, report.problems
        quarantined = [p for p in report.orphans if ORPHANS_DIR in p.parts]
        assert len(quarantined) == 3
        for kind, path in orphans.items():
            assert not path.exists()
            tail = path.relative_to(tmp_path).parts
            [moved] = [q for q in quarantined if q.parts[-len(tail) :] == tail]
            assert _files(moved) == contents[kind]  # untouched, byte for byte
            assert any(str(moved) in p for p in report.problems)
        assert _files(topic_dir / "partitions" / "0") == known
        assert again.partitions[(stream_id, topic_id, 0)].messages_count == 5
    finally:
        again.close()


def test_shard_given_files_of_an_id_metadata_lost_when_id_reused_should_start_empty_and_keep_them(
    tmp_path: Path,
) -> None:
    shard = _open(tmp_path)
    try:
        stream_id, topic_id = _seed(shard, partitions=1)
        key = (stream_id, topic_id, 0)
        old = _files(shard.partition_dir(key))
        # Metadata forgets the topic while its files stay (a delete that never reached the
        # folder, or metadata lost the entity): the next topic gets the same id.
        shard.metalog.apply(md.DeleteTopic(stream_id=stream_id, topic_id=topic_id))
        shard.partitions.pop(key).close()
        shard.apply(topic_op(stream_id, name="t-new"))
        part = shard.create_partition(key)
        assert part.messages_count == 0 and part.next_offset == 0
        [kept] = [p for p in (tmp_path / "quarantine").rglob("0") if p.parent.name == "partitions"]
        assert _files(kept) == old
    finally:
        shard.close()


def test_shard_given_delete_interrupted_before_its_folder_was_removed_should_remove_it_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shard = _open(tmp_path)
    try:
        stream_id, topic_id = _seed(shard)
        pids = sorted(shard.metadata.streams[stream_id].topics[topic_id].partitions)
        shard.apply(md.DeleteTopic(stream_id=stream_id, topic_id=topic_id))
        with monkeypatch.context() as m:
            m.setattr(shutil, "rmtree", lambda *a, **k: None)  # the process dies mid-delete
            shard.drop_topic(stream_id, topic_id, pids)
        assert not shard.topic_dir(stream_id, topic_id).exists()
        assert any((tmp_path / DELETED_DIR).rglob("*.rlog"))
    finally:
        shard.close()
    again = Shard(Config(data_dir=tmp_path))
    report = again.open()
    try:
        assert report.problems == []
        assert not any((tmp_path / DELETED_DIR).rglob("*"))  # swept: the delete is in the log
        assert not (tmp_path / "quarantine").exists()
    finally:
        again.close()


def test_shard_given_deleted_folder_newer_than_the_metadata_should_quarantine_it(tmp_path: Path) -> None:
    shard = _open(tmp_path)
    try:
        _seed(shard)
        revision = shard.metadata.revision
    finally:
        shard.close()
    # A delete at a revision the metadata does not hold (metadata restored from an older copy).
    moved = tmp_path / DELETED_DIR / f"{revision + 5:020}" / "streams" / "4"
    moved.parent.mkdir(parents=True)
    shutil.copytree(tmp_path / "streams" / "0", moved)
    contents = _files(moved)
    again = Shard(Config(data_dir=tmp_path))
    report = again.open()
    try:
        assert len(report.problems) == 1 and "revision" in report.problems[0]
        [kept] = [p for p in report.orphans if ORPHANS_DIR in p.parts]
        assert _files(kept / "streams" / "4") == contents
    finally:
        again.close()

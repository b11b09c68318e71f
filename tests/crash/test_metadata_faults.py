"""The metadata log under faults, with a real ``tidelog serve`` (issue 6, defects 2 and 3).

* A damaged complete record is not a torn write: the server refuses to start and changes
  nothing, instead of cutting the record and then deleting the topic's files as orphans.
* A real torn write (an interrupted last append) is still cut and kept aside.
* A folder metadata does not name is quarantined and reported, never deleted.
* A failed metadata fsync changes nothing in memory: that change and every later one are
  refused with METADATA_READ_ONLY (9101), reads and sends go on, and a restart shows exactly
  what was acknowledged.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ServerProcess
from tests.faults import FaultPlan
from tests.wireclient import WireClient
from tidelog.storage.metalog import HEADER_SIZE, LOG_NAME, encode_record
from tidelog.wire import requests as c
from tidelog.wire.codes import Command, Status
from tidelog.wire.records import StreamDetails, StreamInfo, decode_list, decode_record

STREAM, TOPIC = "orders", "events"
PAYLOADS = [b"event-%03d-" % i + b"x" * (i % 40) for i in range(30)]
EXIT_REFUSED = 3


@dataclass(frozen=True)
class Seeded:
    data_dir: Path
    stream_id: int
    topic_id: int

    @property
    def metalog(self) -> Path:
        return self.data_dir / "metadata" / LOG_NAME

    @property
    def topic_dir(self) -> Path:
        return self.data_dir / "streams" / str(self.stream_id) / "topics" / str(self.topic_id)


def seed(srv: ServerProcess) -> Seeded:
    """A stream with a 2-partition topic holding messages; the server is stopped after."""
    with WireClient(srv.address) as client:
        client.login()
        stream_id = client.create_stream(STREAM)
        topic_id = client.create_topic(stream_id, TOPIC, 2)
        for partition in (0, 1):
            for i in range(0, len(PAYLOADS), 10):
                client.send(stream_id, topic_id, partition, PAYLOADS[i : i + 10])
    assert srv.stop() == 0
    return Seeded(srv.data_dir, stream_id, topic_id)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def record_offsets(path: Path) -> list[int]:
    data = path.read_bytes()
    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += HEADER_SIZE + int.from_bytes(data[pos : pos + 4], "little")
    return offsets


def stream_names(client: WireClient) -> list[str]:
    return [s.name for s in decode_list(StreamInfo, client.call(c.GetStreams()))]


def stored_payloads(client: WireClient, seeded: Seeded, partition: int) -> list[bytes]:
    return [m.payload for m in client.poll_all(seeded.stream_id, seeded.topic_id, partition)]


def status_of(client: WireClient, request: c.CreateStream | c.DeleteStream | c.CreateTopic) -> int:
    return client.request(int(request.CODE), request.encode())[0]


@pytest.mark.parametrize("where", ["payload", "length"])
def test_server_given_flipped_byte_in_last_metadata_record_when_restarted_should_refuse_and_touch_nothing(
    tmp_path: Path, server_factory: type[ServerProcess], where: str
) -> None:
    seeded = seed(server_factory(tmp_path / "data").start())
    last = record_offsets(seeded.metalog)[-1]  # the CreateTopic record, fsynced and acknowledged
    data = bytearray(seeded.metalog.read_bytes())
    data[last + (HEADER_SIZE + 10 if where == "payload" else 0)] ^= 0x5A
    seeded.metalog.write_bytes(bytes(data))
    before = files(seeded.data_dir)

    done = subprocess.run(
        [sys.executable, "-m", "tidelog", "serve", "--data-dir", str(seeded.data_dir),
         "--tcp-address", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == EXIT_REFUSED, done.stdout + done.stderr
    assert "refusing to start" in done.stderr and f"at byte {last} is damaged" in done.stderr
    assert str(seeded.metalog) in done.stderr and "truncate" in done.stderr
    assert "listening" not in done.stdout
    assert files(seeded.data_dir) == before  # the topic's files and the log: untouched
    assert not (seeded.data_dir / "quarantine").exists()


def test_server_given_torn_last_metadata_record_when_restarted_should_cut_it_and_keep_it_aside(
    tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    seeded = seed(server_factory(tmp_path / "data").start())
    topic_files = files(seeded.topic_dir)
    # An append a crash interrupted: the first part of the next record, never acknowledged.
    record = encode_record(b'{"rev":99,"op":{"type":"CreateStream","name":"lost","created_at_us":1}}')
    torn = record[: len(record) // 2]
    with open(seeded.metalog, "ab") as f:
        f.write(torn)
    size = seeded.metalog.stat().st_size - len(torn)

    srv = server_factory(seeded.data_dir).start()
    try:
        assert "torn last record" in srv.output, srv.output
        [aside] = seeded.metalog.parent.glob("*.torn")
        assert aside.read_bytes() == torn and f"kept torn bytes aside in {aside}" in srv.output
        assert seeded.metalog.stat().st_size == size
        with WireClient(srv.address) as client:
            client.login()
            assert stream_names(client) == [STREAM]
            assert stored_payloads(client, seeded, 0) == PAYLOADS
    finally:
        assert srv.stop() == 0
    assert not (seeded.data_dir / "quarantine").exists()
    assert files(seeded.topic_dir).keys() >= topic_files.keys()


def test_server_given_partition_folder_metadata_does_not_name_should_quarantine_and_report_it(
    tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    seeded = seed(server_factory(tmp_path / "data").start())
    orphan = seeded.topic_dir / "partitions" / "5"
    shutil.copytree(seeded.topic_dir / "partitions" / "0", orphan)
    orphan_files = files(orphan)

    srv = server_factory(seeded.data_dir).start()
    try:
        assert not orphan.exists()
        [kept] = (seeded.data_dir / "quarantine" / "orphans").glob("*/streams/*/topics/*/partitions/5")
        assert files(kept) == orphan_files  # moved whole, not deleted
        assert f"tidelog QUARANTINED data that metadata does not name (nothing deleted): {kept}" in srv.output
        assert "partition 5 of topic" in srv.output
        with WireClient(srv.address) as client:
            client.login()
            assert stored_payloads(client, seeded, 0) == PAYLOADS
    finally:
        assert srv.stop() == 0


def test_server_given_failing_metadata_fsync_should_refuse_changes_with_9101_and_keep_serving(
    tmp_path: Path, server_factory: type[ServerProcess], faults: FaultPlan
) -> None:
    srv = server_factory(tmp_path / "data", env=faults.env()).start()
    seeded = seed(srv)
    srv = server_factory(seeded.data_dir, env=faults.env()).start()
    try:
        with WireClient(srv.address) as client:
            client.login()
            faults.fail("fsync", "*/metadata.log")
            assert status_of(client, c.CreateStream(name="m1")) == Status.METADATA_READ_ONLY
            assert stream_names(client) == [STREAM]
            faults.clear()  # the disk recovers; the server must still not trust the log
            assert status_of(client, c.CreateStream(name="m2")) == Status.METADATA_READ_ONLY
            assert status_of(client, c.DeleteStream(stream_id=seeded.stream_id)) == Status.METADATA_READ_ONLY
            create_topic = c.CreateTopic(seeded.stream_id, 1, 1, 0, 0, 0, "t2")
            assert status_of(client, create_topic) == Status.METADATA_READ_ONLY
            # Reads and the data plane go on, for this client and every other.
            assert stream_names(client) == [STREAM]
            topic = c.GetTopic(seeded.stream_id, seeded.topic_id)
            assert client.request(Command.GET_TOPIC, topic.encode())[0] == Status.OK
            client.send(seeded.stream_id, seeded.topic_id, 0, [b"after-the-failure"])
            with WireClient(srv.address) as other:
                other.login()
                assert stream_names(other) == [STREAM]
                assert stored_payloads(other, seeded, 0) == [*PAYLOADS, b"after-the-failure"]
        assert "METADATA IS READ-ONLY" in srv.output and "9101" in srv.output
    finally:
        assert srv.stop() == 0
    again = server_factory(seeded.data_dir).start()
    try:
        with WireClient(again.address) as client:
            client.login()
            assert stream_names(client) == [STREAM]  # exactly the acknowledged state
            topics = decode_record(StreamDetails, client.call(c.GetStream(seeded.stream_id))).topics
            assert [t.name for t in topics] == [TOPIC]
            assert stored_payloads(client, seeded, 0) == [*PAYLOADS, b"after-the-failure"]
            assert client.create_stream("m1") >= 0  # writable again after the restart
    finally:
        assert again.stop() == 0

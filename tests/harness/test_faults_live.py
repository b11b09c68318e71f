"""The fault shim reaches a live server (uvloop, the writer thread): a sanity check of the
harness, and the one fault promise that held before issue 6 — under fsync = always a send is
never acknowledged after its fdatasync failed."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import ServerProcess
from tests.faults import FaultPlan
from tests.wireclient import WireClient
from tidelog.wire.codes import Status

SEGMENT_LOGS = "*/partitions/*/*.rlog"


def test_faults_given_slow_fdatasync_under_fsync_always_when_sending_should_delay_the_ack(
    tmp_path: Path, server_factory: type[ServerProcess], faults: FaultPlan
) -> None:
    srv = server_factory(tmp_path / "data", "--fsync", "always", env=faults.env()).start()
    with WireClient(srv.address) as client:
        client.login()
        stream_id = client.create_stream("slow")
        topic_id = client.create_topic(stream_id, "events", 1)
        client.send(stream_id, topic_id, 0, [b"warm-up"])
        faults.delay("fsync", SEGMENT_LOGS, 400, times=1)
        started = time.monotonic()
        client.send(stream_id, topic_id, 0, [b"slow"])
        assert time.monotonic() - started >= 0.4  # the ack waited for the delayed sync
    assert srv.stop() == 0


def test_faults_given_failing_fdatasync_under_fsync_always_when_sending_should_not_acknowledge(
    tmp_path: Path, server_factory: type[ServerProcess], faults: FaultPlan
) -> None:
    srv = server_factory(tmp_path / "data", "--fsync", "always", env=faults.env()).start()
    with WireClient(srv.address) as client:
        client.login()
        stream_id = client.create_stream("failing")
        topic_id = client.create_topic(stream_id, "events", 1)
        faults.fail("fsync", SEGMENT_LOGS, "EIO")
        assert client.send_status(stream_id, topic_id, 0, [b"never-durable"]) != Status.OK
    srv.kill()

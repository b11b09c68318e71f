"""Consumer offsets on a live server under faults: a failing offset fdatasync (the LD_PRELOAD
shim, tests/faults.py) and a damaged slot file found at start-up."""

from __future__ import annotations

from pathlib import Path

import xxhash

from tests.conftest import ServerProcess
from tests.faults import FaultPlan
from tests.wireclient import WireClient
from tidelog.storage.offsets import SLOT
from tidelog.wire import requests as c
from tidelog.wire.codes import Command, Status
from tidelog.wire.primitives import Consumer, Identifier
from tidelog.wire.records import ConsumerOffsetInfo, decode_record

CONSUMER = Consumer(1, 7)


def _setup(client: WireClient) -> tuple[int, int]:
    client.login()
    stream = client.create_stream("s")
    topic = client.create_topic(stream, "t", 1)
    client.send(stream, topic, 0, [b"m%d" % i for i in range(10)])
    return stream, topic


def _store(client: WireClient, stream: int, topic: int, offset: int) -> int:
    req = c.StoreConsumerOffset(CONSUMER, stream, topic, 0, offset)
    return client.request(Command.STORE_CONSUMER_OFFSET, req.encode())[0]


def _stored(client: WireClient, stream: Identifier, topic: Identifier) -> int | None:
    payload = client.call(c.GetConsumerOffset(CONSUMER, stream, topic, 0))
    return decode_record(ConsumerOffsetInfo, payload).stored_offset if payload else None


def test_server_given_fsync_always_and_failing_offset_fdatasync_when_stored_should_answer_9102_and_keep_value(
    tmp_path: Path, server_factory: type[ServerProcess], faults: FaultPlan
) -> None:
    server = server_factory(tmp_path / "data", "--fsync", "always", env=faults.env()).start()
    try:
        with WireClient(server.address) as client:
            stream, topic = _setup(client)
            assert _store(client, stream, topic, 3) == Status.OK
            faults.fail("fdatasync", "*/offsets/*")
            assert _store(client, stream, topic, 5) == Status.CANNOT_SAVE_CONSUMER_OFFSET == 9102
            assert _stored(client, stream, topic) == 3
            faults.clear()
            assert _store(client, stream, topic, 6) == Status.OK
            assert _stored(client, stream, topic) == 6
    finally:
        server.stop()
    again = server_factory(tmp_path / "data", "--fsync", "always").start()
    try:
        with WireClient(again.address) as client:
            client.login()
            assert _stored(client, "s", "t") == 6
    finally:
        again.stop()


def test_server_given_damaged_offset_slot_when_restarted_should_keep_the_other_slot_and_print_it(
    tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    data = tmp_path / "data"
    server = server_factory(data).start()
    try:
        with WireClient(server.address) as client:
            stream, topic = _setup(client)
            assert _store(client, stream, topic, 4) == Status.OK
    finally:
        assert server.stop() == 0
    (path,) = data.glob("streams/*/topics/*/partitions/*/offsets/consumers/7")
    raw = bytearray(path.read_bytes())
    newest = max((SLOT.unpack_from(raw, at)[2], at) for at in (0, 32))[1]
    assert xxhash.xxh3_64_intdigest(bytes(raw[newest : newest + 24])) == SLOT.unpack_from(raw, newest)[4]
    raw[newest + 16] ^= 0x01  # one flipped bit in the newest slot's offset
    path.write_bytes(bytes(raw))
    again = server_factory(data).start()
    try:
        with WireClient(again.address) as client:
            client.login()
            assert _stored(client, "s", "t") == 4  # not reset to First
        reported = [ln for ln in again.lines if "tidelog recovery:" in ln and "offsets/consumers/7" in ln]
        assert len(reported) == 1 and "damaged" in reported[0]
    finally:
        again.stop()

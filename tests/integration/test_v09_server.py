"""A real ``tidelog serve`` answering 0.9 (VSR-framed) requests built byte by byte from the
reference (``shared/protocol/iggy-0.9-vsr.md``), beside 0.8 clients on the same port."""

from __future__ import annotations

import struct
import time

import pytest

from tests.conftest import ServerProcess
from tests.wireclient import WireClient
from tests.wireclient09 import SDK_VERSION, Client09, Closed
from tidelog.wire import requests as c
from tidelog.wire.codes import Command
from tidelog.wire.primitives import Consumer, ConsumerKind, HeaderKind
from tidelog.wire.records import ClusterMetadata, PolledMessage, decode_poll_reply, decode_record
from tidelog.wire.user_headers import encode_user_headers
from tidelog.wire.v09 import frames as f
from tidelog.wire.v09.batch import build_batch, parse_records
from tidelog.wire.v09.codes import CommandCode, EvictionReason, Operation
from tidelog.wire.v09.header import request_header_for

U32 = struct.Struct("<I")


def name(text: str) -> bytes:
    raw = text.encode()
    return bytes([len(raw)]) + raw


def ident(value: int | str) -> bytes:
    if isinstance(value, int):
        return b"\x01\x04" + U32.pack(value)
    return b"\x02" + name(value)


def consumer(consumer_id: int, kind: int = 1) -> bytes:
    return bytes([kind]) + ident(consumer_id)


def send_body(stream: int | str, topic: int | str, partition: int, batch: bytes, count: int) -> bytes:
    meta = ident(stream) + ident(topic) + b"\x02\x04" + U32.pack(partition) + U32.pack(count)
    return U32.pack(len(meta)) + meta + batch


def poll_body(
    stream: int | str, topic: int | str, partition: int, strategy: int, value: int, count: int, auto: bool
) -> bytes:
    return (
        consumer(1)
        + ident(stream)
        + ident(topic)
        + b"\x01"
        + U32.pack(partition)
        + bytes([strategy])
        + struct.pack("<Q", value)
        + U32.pack(count)
        + bytes([auto])
    )


def make_topic(client: Client09, stream: str = "s", topic: str = "t", partitions: int = 1) -> None:
    client.change(Operation.CREATE_STREAM, name(stream))
    client.change(Operation.CREATE_TOPIC, ident(stream) + U32.pack(partitions) + name(topic))


def messages(payloads: list[bytes], headers: list[bytes] | None = None) -> bytes:
    now = time.time_ns() // 1000
    n = len(payloads)
    return bytes(
        build_batch([1000 + i for i in range(n)], payloads, headers or [b""] * n, [now + i for i in range(n)])
    )


def poll(client: Client09, stream: str, topic: str, partition: int, strategy: int = 1, value: int = 0,
         count: int = 100, auto: bool = False) -> tuple[int, int, list[tuple[int, bytes, int]]]:  # fmt: skip
    body = client.read(
        CommandCode.POLL_MESSAGES, poll_body(stream, topic, partition, strategy, value, count, auto)
    )
    pid, current, n = struct.unpack_from("<IQI", body)
    out = []
    for record in parse_records(body[16:]):
        for i in range(record.count):
            out.append((int(record.offsets()[i]), record.payload(i), int(record.frames()["id_lo"][i])))
    assert len(out) == n
    return pid, current, out


def test_v09_given_fresh_server_when_ping_then_login_should_bind_a_session(server: ServerProcess) -> None:
    with Client09(server.address) as client:
        assert client.read(CommandCode.PING) == b""
        reply = client.login()
        assert reply.user_id == 0 and reply.session > 0
        assert reply.server_protocol_version == SDK_VERSION.protocol_version
        # Cluster metadata: one node, the real TCP listener (section 0 item 9).
        body = client.read(CommandCode.GET_CLUSTER_METADATA)
        meta = decode_record(ClusterMetadata, body)
        assert len(meta.nodes) == 1 and meta.nodes[0].tcp_port == server.port


def test_v09_given_wrong_password_when_login_should_evict_with_invalid_credentials(
    server: ServerProcess,
) -> None:
    with Client09(server.address) as client:
        body = f.encode_password_login(SDK_VERSION, f.PasswordLogin("iggy", "nope-nope"))
        answer = client.call(Operation.REGISTER, body)
        assert isinstance(answer, f.EvictionReceived)
        assert answer.reason == EvictionReason.INVALID_CREDENTIALS
        # The connection still serves: a good login follows.
        assert client.login().session > 0


def test_v09_given_legacy_login_code_when_sent_should_evict_malformed_login(server: ServerProcess) -> None:
    with Client09(server.address) as client:
        answer = client.call(Operation.NON_REPLICATED, name("iggy") + name("iggy"), code=38)
        assert isinstance(answer, f.EvictionReceived) and answer.reason == EvictionReason.MALFORMED_LOGIN


def test_v09_given_old_protocol_version_when_login_should_evict_incompatible(server: ServerProcess) -> None:
    with Client09(server.address) as client:
        old = f.ClientVersionInfo(0x2800, "rust-sdk", "0.10.0")
        answer = client.call(
            Operation.REGISTER, f.encode_password_login(old, f.PasswordLogin("iggy", "iggy"))
        )
        assert isinstance(answer, f.EvictionReceived)
        assert answer.reason == EvictionReason.INCOMPATIBLE_PROTOCOL
        assert answer.header.server_protocol_version == SDK_VERSION.protocol_version


def test_v09_given_no_login_when_reading_or_changing_should_refuse(server: ServerProcess) -> None:
    with Client09(server.address) as client:
        answer = client.call(Operation.NON_REPLICATED, b"", code=int(CommandCode.GET_STREAMS))
        assert isinstance(answer, f.ReplyReceived) and answer.header.status == 40
        client.session = 0
        answer = client.call(Operation.CREATE_STREAM, name("x"))
        assert isinstance(answer, f.EvictionReceived) and answer.reason == EvictionReason.NO_SESSION


def test_v09_given_streams_and_topics_when_created_should_answer_with_result_sections(
    server: ServerProcess,
) -> None:
    with Client09(server.address) as client:
        client.login()
        stream = client.change(Operation.CREATE_STREAM, name("orders"))
        assert U32.unpack_from(stream)[0] == 0 and stream.endswith(b"\x06orders" + b"\x00" * 4)
        topic = client.change(Operation.CREATE_TOPIC, ident("orders") + U32.pack(3) + name("events"))
        assert U32.unpack_from(topic)[0] == 0
        # Duplicate name: a rejection entry with 1012 (section 1.5).
        body = client.ok(Operation.CREATE_STREAM, name("orders"))
        assert body == U32.pack(1) + U32.pack(0) + U32.pack(1012)
        listed = client.read(CommandCode.GET_STREAMS)
        assert b"\x06orders" in listed
        assert client.read(CommandCode.GET_STREAM, ident("missing")) == b""
        topics = client.read(CommandCode.GET_TOPICS, ident("orders"))
        assert U32.unpack_from(topics)[0] == 1


def test_v09_given_duplicate_request_number_when_replayed_should_not_apply_twice(
    server: ServerProcess,
) -> None:
    with Client09(server.address) as client:
        client.login()
        frame = client.frame(Operation.CREATE_STREAM, name("once"))
        client.send_raw(frame)
        first = client.read_answer()
        client.send_raw(frame)  # the same (client, request): a retry
        second = client.read_answer()
        assert isinstance(first, f.ReplyReceived) and isinstance(second, f.ReplyReceived)
        assert bytes(first.body) == bytes(second.body)
        assert f.decode_result_section(second.body).__class__ is f.ResultOk
        client.change(Operation.CREATE_STREAM, name("twice"))
        assert len(client.read(CommandCode.GET_STREAMS).split(b"\x04once")) == 2


def test_v09_given_sent_batch_when_polled_by_each_strategy_should_return_the_messages(
    server: ServerProcess,
) -> None:
    with Client09(server.address) as client:
        client.login()
        make_topic(client, partitions=2)
        payloads = [f"m{i}".encode() for i in range(5)]
        reply = client.ok(Operation.SEND_MESSAGES, send_body("s", "t", 1, messages(payloads), 5))
        assert reply == U32.pack(1) + struct.pack("<IIIQ", 0, 0, 1, 0)
        reply = client.ok(Operation.SEND_MESSAGES, send_body("s", "t", 1, messages([b"m5", b"m6"]), 2))
        assert struct.unpack_from("<IIIQ", reply, 4)[3] == 5  # base offset of the second batch
        pid, current, got = poll(client, "s", "t", 1, strategy=1, value=2, count=3)
        assert (pid, current) == (1, 6)
        assert [(o, p) for o, p, _ in got] == [(2, b"m2"), (3, b"m3"), (4, b"m4")]
        assert [i for _, _, i in got] == [1002, 1003, 1004]  # ids as sent
        assert [o for o, _, _ in poll(client, "s", "t", 1, strategy=3, count=2)[2]] == [0, 1]  # first
        assert [o for o, _, _ in poll(client, "s", "t", 1, strategy=4, count=2)[2]] == [5, 6]  # last
        assert [o for o, _, _ in poll(client, "s", "t", 1, strategy=2, value=0, count=1)[2]] == [0]  # time
        # next + auto-commit: everything once, then nothing.
        assert len(poll(client, "s", "t", 1, strategy=5, count=100, auto=True)[2]) == 7
        assert poll(client, "s", "t", 1, strategy=5, count=100, auto=True)[2] == []
        # An empty partition answers the 16-byte head.
        assert poll(client, "s", "t", 0, strategy=3)[:2] == (0, 0)


def test_v09_given_bad_batch_checksum_when_sent_should_answer_4039_and_store_nothing(
    server: ServerProcess,
) -> None:
    with Client09(server.address) as client:
        client.login()
        make_topic(client)
        batch = bytearray(messages([b"a", b"b"]))
        batch[40] ^= 0xFF  # batch_checksum
        answer = client.call(Operation.SEND_MESSAGES, send_body("s", "t", 0, bytes(batch), 2))
        assert isinstance(answer, f.ReplyReceived) and answer.header.status == 4039
        batch = bytearray(messages([b"a", b"b"]))
        batch[100] = 1  # a reserved byte of the batch header
        answer = client.call(Operation.SEND_MESSAGES, send_body("s", "t", 0, bytes(batch), 2))
        assert isinstance(answer, f.ReplyReceived) and answer.header.status == 4101
        good = messages([b"a", b"b"])
        answer = client.call(Operation.SEND_MESSAGES, send_body("s", "t", 0, good, 3))  # count disagrees
        assert isinstance(answer, f.ReplyReceived) and answer.header.status == 4009
        answer = client.call(
            Operation.SEND_MESSAGES, send_body("s", "t", 0, good[:-1], 2)
        )  # frames do not tile
        assert isinstance(answer, f.ReplyReceived) and answer.header.status == 3
        assert poll(client, "s", "t", 0, strategy=3)[2] == []


@pytest.mark.parametrize("operation", [0, 64, 100, 127])
def test_v09_given_invalid_operation_when_sent_should_evict_and_close(
    server: ServerProcess, operation: int
) -> None:
    with Client09(server.address) as client:
        client.login()
        frame = bytearray(client.frame(Operation.NON_REPLICATED, b"", int(CommandCode.PING)))
        frame[176] = operation
        client.send_raw(bytes(frame))
        answer = client.read_answer()
        assert isinstance(answer, f.EvictionReceived)
        assert answer.reason == EvictionReason.INVALID_REQUEST_OPERATION
        assert client.closed_by_server()
    with Client09(server.address) as other:  # the server serves others
        assert other.read(CommandCode.PING) == b""


@pytest.mark.parametrize("size", [255, 64 * 1024 * 1024 + 1])
def test_v09_given_size_out_of_range_after_first_frame_when_sent_should_close(
    server: ServerProcess, size: int
) -> None:
    with Client09(server.address) as client:
        assert client.read(CommandCode.PING) == b""
        frame = bytearray(client.frame(Operation.NON_REPLICATED, b"", int(CommandCode.PING)))
        frame[48:52] = U32.pack(size)
        client.send_raw(bytes(frame))
        with pytest.raises(Closed):
            client.read_answer()


def test_v09_given_checksum_mismatch_when_sent_should_answer_status_4(server: ServerProcess) -> None:
    with Client09(server.address) as client:
        client.login()
        frame = bytearray(client.frame(Operation.CREATE_STREAM, name("x")))
        frame[144] ^= 0x01
        client.send_raw(bytes(frame))
        answer = client.read_answer()
        assert isinstance(answer, f.ReplyReceived) and answer.header.status == 4
        assert b"\x01x" not in client.read(CommandCode.GET_STREAMS)


def test_v09_given_half_header_then_vanish_when_others_connect_should_keep_serving(
    server: ServerProcess,
) -> None:
    with Client09(server.address) as client:
        client.login()
        make_topic(client)
        client.ok(Operation.SEND_MESSAGES, send_body("s", "t", 0, messages([b"kept"]), 1))
    vanished = Client09(server.address)
    vanished.send_raw(
        request_header_for(Operation.NON_REPLICATED, b"", client=5, command_code=1).encode()[:100]
    )
    vanished.close()
    with Client09(server.address) as client:
        client.login()
        assert [p for _, p, _ in poll(client, "s", "t", 0, strategy=3)[2]] == [b"kept"]


def test_v09_given_garbage_first_bytes_when_connecting_should_log_and_close(server: ServerProcess) -> None:
    with Client09(server.address) as client:
        client.send_raw(b"\x00" * 8 + b"\xff" * 60)
        assert client.closed_by_server()
    deadline = time.monotonic() + 5
    while (
        not any("neither an Iggy 0.8 frame" in line for line in server.lines) and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert any("neither an Iggy 0.8 frame" in line and "00 00 00" in line for line in server.lines)


# ---- across generations -------------------------------------------------------------------


def poll08(old: WireClient, stream: str, topic: str) -> list[PolledMessage]:
    return decode_poll_reply(old.poll_raw(stream, topic, 0, 0, 100))[1]


def test_cross_given_08_send_when_polled_by_09_should_see_same_messages(server: ServerProcess) -> None:
    headers = encode_user_headers({"k": (HeaderKind.STRING, b"v")})
    with WireClient(server.address) as old:
        old.login()
        old.create_stream("x")
        old.create_topic("x", "y", partitions=1)
        sent = [
            c.OutgoingMessage(payload=b"one", id=7, user_headers=headers),
            c.OutgoingMessage(payload=b"two", id=8),
        ]
        body = c.encode_send_messages("x", "y", c.Partitioning.partition_id(0), sent)
        assert old.request(Command.SEND_MESSAGES, body)[0] == 0
        stored = poll08(old, "x", "y")
    with Client09(server.address) as new:
        new.login()
        _, current, got = poll(new, "x", "y", 0, strategy=1, value=0)
        assert current == 1
        assert [(o, p, i) for o, p, i in got] == [(0, b"one", 7), (1, b"two", 8)]
        body = new.read(CommandCode.POLL_MESSAGES, poll_body("x", "y", 0, 1, 0, 10, False))
        (record,) = parse_records(body[16:])  # one 0.8 batch: one 0.9 record, checksums verified
        assert record.base_timestamp == stored[0].timestamp_us
        assert [int(t) for t in record.origin_timestamps()] == [m.origin_timestamp_us for m in stored]
        assert record.user_headers(0) == bytes(stored[0].user_headers)


def test_cross_given_09_send_when_polled_by_08_should_see_same_messages(server: ServerProcess) -> None:
    with Client09(server.address) as new:
        new.login()
        make_topic(new, "x", "y")
        new.ok(Operation.SEND_MESSAGES, send_body("x", "y", 0, messages([b"alpha", b"beta"]), 2))
        body = new.read(CommandCode.POLL_MESSAGES, poll_body("x", "y", 0, 1, 0, 10, False))
        (record,) = parse_records(body[16:])
    with WireClient(server.address) as old:
        old.login()
        got = poll08(old, "x", "y")
        assert [(m.offset, bytes(m.payload), m.id) for m in got] == [(0, b"alpha", 1000), (1, b"beta", 1001)]
        assert [m.timestamp_us for m in got] == [record.base_timestamp] * 2
        assert [m.origin_timestamp_us for m in got] == [int(t) for t in record.origin_timestamps()]
        # Offsets are shared: what 0.8 commits, 0.9's "next" continues from.
        store = c.StoreConsumerOffset(
            consumer=Consumer(ConsumerKind.CONSUMER, 1),
            stream_id="x",
            topic_id="y",
            partition_id=0,
            offset=0,
        )
        old.call(store)
    with Client09(server.address) as new:
        new.login()
        assert [o for o, _, _ in poll(new, "x", "y", 0, strategy=5)[2]] == [1]

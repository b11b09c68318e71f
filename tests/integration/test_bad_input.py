"""Malformed and abandoned requests against a real server (protocol reference 1.4, 3.9, 5).

Every case checks the status the reference names (or a clean close where framing is lost),
then :func:`assert_healthy`: the process is alive, a new client logs in, sends and polls,
the pre-seeded messages are byte for byte what they were, and no traceback was logged.
Invalid SendMessages batches are aimed at the seeded partition on purpose, so that a batch
the server half-accepted would show up as changed data.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ServerProcess
from tests.wireclient import WireClient, verify_stored, wait_until
from tidelog.wire import framing
from tidelog.wire import requests as c
from tidelog.wire.batch import INDEX_ENTRY, RESERVED_AT
from tidelog.wire.codes import MAX_CONTROL_PAYLOAD_BYTES, Command, Status
from tidelog.wire.primitives import Consumer, PollingKind, encode_identifier
from tidelog.wire.records import StreamDetails, StreamInfo, decode_list, decode_record

U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
SEED_PARTITIONS = 2


@dataclass
class World:
    srv: ServerProcess
    stream_id: int
    topic_id: int
    scratch_topic_id: int
    snapshot: dict[int, bytes]  # partition -> raw poll reply of everything in it


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    srv = ServerProcess(tmp_path_factory.mktemp("bad_input") / "data").start()
    try:
        with WireClient(srv.address) as client:
            client.login()
            stream_id = client.create_stream("seeded")
            topic_id = client.create_topic(stream_id, "events", SEED_PARTITIONS)
            scratch = client.create_topic(stream_id, "scratch", 1)
            rng = random.Random(3)
            for partition in range(SEED_PARTITIONS):
                for batch in range(5):
                    payloads = [rng.randbytes(rng.randrange(1, 400)) for _ in range(batch + 1)]
                    client.send(stream_id, topic_id, partition, payloads)
            snapshot = {p: client.poll_raw(stream_id, topic_id, p, 0, 1000) for p in range(SEED_PARTITIONS)}
        yield World(srv, stream_id, topic_id, scratch, snapshot)
    finally:
        srv.stop()


def assert_healthy(world: World) -> None:
    srv = world.srv
    assert srv.proc is not None and srv.proc.poll() is None, "server died:\n" + srv.output
    with WireClient(srv.address) as client:
        client.login()
        for partition, before in world.snapshot.items():
            now = client.poll_raw(world.stream_id, world.topic_id, partition, 0, 1000)
            assert now == before, f"seeded partition {partition} changed"
        payload = random.randbytes(50)
        client.send(world.stream_id, world.scratch_topic_id, 0, [payload])
        header, _ = client.poll(world.stream_id, world.scratch_topic_id, 0, 0, 0)
        _, [last] = client.poll(world.stream_id, world.scratch_topic_id, 0, header.current_offset, 10)
        assert last.payload == payload
        verify_stored([last], header.current_offset)
    assert "Traceback" not in srv.output, srv.output


def logged_in(world: World) -> WireClient:
    client = WireClient(world.srv.address, timeout_s=15)
    client.login()
    return client


def header_only(length: int, code: int) -> bytes:
    return U32.pack(length) + U32.pack(code)


# ---- framing --------------------------------------------------------------------------------------


def test_server_given_unknown_command_code_when_sent_should_answer_3_and_stay_in_sync(world: World) -> None:
    with logged_in(world) as client:
        assert client.request(9999, b"some payload")[0] == Status.INVALID_COMMAND
        # A payload past the small read buffer goes through the other receive path.
        assert client.request(7777, bytes(300 * 1024))[0] == Status.INVALID_COMMAND
        client.ping()
        assert client.login() == 0
    assert_healthy(world)


def test_server_given_pipelined_good_and_bad_frames_when_sent_at_once_should_answer_each_in_order(
    world: World,
) -> None:
    frames = [
        framing.encode_request(Command.PING, b""),
        framing.encode_request(4242, b"\x01\x02\x03"),
        framing.encode_request(Command.GET_STREAM, b"\x07\x04\x00\x00\x00\x00"),
        framing.encode_request(Command.GET_STREAM, encode_identifier(world.stream_id)),
        framing.encode_request(Command.PING, b""),
    ]
    with logged_in(world) as client:
        client.send_raw(b"".join(frames))
        statuses = [client.read_reply()[0] for _ in frames]
    assert statuses == [Status.OK, Status.INVALID_COMMAND, Status.INVALID_COMMAND, Status.OK, Status.OK]
    assert_healthy(world)


@pytest.mark.parametrize("length", [0, 1, 3])
def test_server_given_frame_length_below_4_when_sent_should_answer_3_then_close(
    world: World, length: int
) -> None:
    with logged_in(world) as client:
        client.send_raw(header_only(length, Command.PING))
        assert client.read_reply()[0] == Status.INVALID_COMMAND
        assert client.is_closed_by_server()
    assert_healthy(world)


@pytest.mark.parametrize(
    ("code", "payload_bytes"),
    [
        (Command.CREATE_STREAM, MAX_CONTROL_PAYLOAD_BYTES + 1),
        (Command.LOGIN_USER, 0xFFFF_FFF0),
        (4242, MAX_CONTROL_PAYLOAD_BYTES + 1),
        # SendMessages has its own (configured, 128 MiB) cap; a u32 near max is over it.
        (Command.SEND_MESSAGES, 0xFFFF_FFF0),
    ],
)
def test_server_given_payload_over_the_limit_declared_when_header_sent_should_answer_80_then_close(
    world: World, code: int, payload_bytes: int
) -> None:
    client = WireClient(world.srv.address, timeout_s=3)
    with client:
        # Only the header goes out: a server that waited for (or buffered) the payload
        # would never answer and the read would time out.
        client.send_raw(header_only(payload_bytes + 4, code))
        assert client.read_reply()[0] == Status.INVALID_SIZE_BYTES
        assert client.is_closed_by_server()
    assert_healthy(world)


# ---- payload decoding -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "payload", "status"),
    [
        # Name length beyond the payload.
        (Command.CREATE_STREAM, b"\x0aabc", Status.INVALID_COMMAND),
        (Command.GET_STREAM, b"\x02\x32abc", Status.INVALID_COMMAND),
        (Command.GET_STREAM, b"\x01\x04\x00", Status.INVALID_COMMAND),
        (Command.CREATE_TOPIC, encode_identifier(0) + b"\x01\x00", Status.INVALID_COMMAND),
        (Command.GET_STREAM, b"", Status.INVALID_COMMAND),
        # Bad identifier kind.
        (Command.GET_STREAM, b"\x07\x04\x00\x00\x00\x00", Status.INVALID_COMMAND),
        (Command.DELETE_STREAM, b"\x00\x04\x00\x00\x00\x00", Status.INVALID_COMMAND),
        # Numeric identifier length other than 4, empty string identifier, empty name.
        (Command.GET_STREAM, b"\x01\x05\x00\x00\x00\x00\x00", Status.INVALID_FORMAT),
        (Command.DELETE_STREAM, b"\x01\x03\x00\x00\x00", Status.INVALID_FORMAT),
        (Command.GET_STREAM, b"\x02\x00", Status.INVALID_FORMAT),
        (Command.CREATE_STREAM, b"\x00", Status.INVALID_FORMAT),
        # Invalid UTF-8 in a name.
        (Command.CREATE_STREAM, b"\x02\xff\xfe", Status.INVALID_COMMAND),
        # Bad enum values: consumer kind, polling kind, compression.
        (
            Command.POLL_MESSAGES,
            b"\x09" + encode_identifier(0) + encode_identifier(0) * 2 + bytes(19),
            Status.INVALID_COMMAND,
        ),
        (
            Command.POLL_MESSAGES,
            b"\x01" + encode_identifier(0) * 3 + b"\x01\x00\x00\x00\x00\x09" + bytes(13),
            Status.INVALID_COMMAND,
        ),
    ],
)
def test_server_given_undecodable_payload_when_sent_should_answer_status_and_keep_connection(
    world: World, code: int, payload: bytes, status: Status
) -> None:
    with logged_in(world) as client:
        assert client.request(code, payload)[0] == status
        client.ping()
        assert client.call(c.GetStream(world.stream_id))  # still decodes good requests
    assert_healthy(world)


def test_server_given_truncated_login_when_not_logged_in_should_answer_3(world: World) -> None:
    with WireClient(world.srv.address) as client:
        assert client.request(Command.LOGIN_USER, b"\x04iggy")[0] == Status.INVALID_COMMAND
        assert client.request(Command.GET_STREAMS)[0] == Status.UNAUTHENTICATED
        assert client.login() == 0
    assert_healthy(world)


@pytest.mark.parametrize(
    "code",
    [
        Command.GET_STREAMS,
        Command.CREATE_STREAM,
        Command.SEND_MESSAGES,
        Command.POLL_MESSAGES,
        Command.GET_ME,
    ],
)
def test_server_given_no_login_when_command_sent_should_answer_40(world: World, code: int) -> None:
    payloads: dict[int, bytes] = {
        Command.CREATE_STREAM: c.CreateStream("nope").encode(),
        Command.SEND_MESSAGES: c.encode_send_messages(
            world.stream_id,
            world.topic_id,
            c.Partitioning.partition_id(0),
            [c.OutgoingMessage(b"should not be stored")],
        ),
        Command.POLL_MESSAGES: c.PollMessages(
            Consumer(1, 0), world.stream_id, world.topic_id, 0, PollingKind.FIRST, 0, 10, True
        ).encode(),
    }
    with WireClient(world.srv.address) as client:
        assert client.request(code, payloads.get(code, b""))[0] == Status.UNAUTHENTICATED
        client.ping()  # allowed before login, and proves the stream is still in step
        assert client.request(4242, b"x")[0] == Status.INVALID_COMMAND
    assert_healthy(world)


# ---- SendMessages validation ----------------------------------------------------------------------


def send_payload(world: World, payloads: list[bytes], partition: int = 0) -> bytearray:
    body = c.encode_send_messages(
        world.stream_id,
        world.topic_id,
        c.Partitioning.partition_id(partition),
        [c.OutgoingMessage(p) for p in payloads],
    )
    return bytearray(body)


def layout(body: bytearray) -> tuple[int, int, int]:
    """(index table offset, message area offset, messages_count) of a SendMessages payload."""
    metadata_length = U32.unpack_from(body, 0)[0]
    index_at = 4 + metadata_length
    count = U32.unpack_from(body, index_at - 4)[0]
    return index_at, index_at + 16 * count, count


def bad_count_zero(world: World) -> bytes:
    metadata = (
        encode_identifier(world.stream_id)
        + encode_identifier(world.topic_id)
        + c.Partitioning.partition_id(0).encode()
    )
    return U32.pack(len(metadata) + 4) + metadata + U32.pack(0)


def bad_position_shifted(world: World) -> bytes:
    body = send_payload(world, [b"a" * 10, b"b" * 20, b"c" * 30])
    index_at, _, _ = layout(body)
    offset, position, ts = INDEX_ENTRY.unpack_from(body, index_at)
    INDEX_ENTRY.pack_into(body, index_at, offset, position + 5, ts)
    return bytes(body)


def bad_last_position(world: World) -> bytes:
    body = send_payload(world, [b"a" * 10, b"b" * 20])
    index_at, _, count = layout(body)
    at = index_at + 16 * (count - 1)
    offset, position, ts = INDEX_ENTRY.unpack_from(body, at)
    INDEX_ENTRY.pack_into(body, at, offset, position - 3, ts)
    return bytes(body)


def bad_positions_decreasing(world: World) -> bytes:
    body = send_payload(world, [b"a" * 10, b"b" * 20, b"c" * 30])
    index_at, _, _ = layout(body)
    first = INDEX_ENTRY.unpack_from(body, index_at)
    second = INDEX_ENTRY.unpack_from(body, index_at + 16)
    INDEX_ENTRY.pack_into(body, index_at, *second)
    INDEX_ENTRY.pack_into(body, index_at + 16, *first)
    return bytes(body)


def bad_sizes_lie(world: World) -> bytes:
    """Index positions consistent with each other, message headers claiming other sizes."""
    body = send_payload(world, [b"a" * 10, b"b" * 20])
    _, messages_at, _ = layout(body)
    U32.pack_into(body, messages_at + 52, 11)  # payload_length of message 0: 10 -> 11
    return bytes(body)


def bad_index_offset(world: World) -> bytes:
    body = send_payload(world, [b"a", b"b"])
    index_at, _, _ = layout(body)
    U32.pack_into(body, index_at + 16, 1)
    return bytes(body)


def bad_index_timestamp(world: World) -> bytes:
    body = send_payload(world, [b"a", b"b"])
    index_at, _, _ = layout(body)
    U64.pack_into(body, index_at + 8, 123)
    return bytes(body)


def bad_reserved(world: World) -> bytes:
    body = send_payload(world, [b"a", b"b"])
    _, messages_at, _ = layout(body)
    U64.pack_into(body, messages_at + 65 + RESERVED_AT, 1)  # message 1 (message 0 is 65 bytes)
    return bytes(body)


def bad_metadata_length(world: World) -> bytes:
    body = send_payload(world, [b"a"])
    U32.pack_into(body, 0, len(body) + 10)
    return bytes(body)


def bad_metadata_length_short(world: World) -> bytes:
    body = send_payload(world, [b"a"])
    U32.pack_into(body, 0, U32.unpack_from(body, 0)[0] - 2)
    return bytes(body)


def bad_identifier(world: World) -> bytes:
    body = send_payload(world, [b"a"])
    body[4] = 9  # stream identifier kind
    return bytes(body)


def bad_partitioning_kind(world: World) -> bytes:
    body = send_payload(world, [b"a"])
    body[4 + 12] = 7  # after two 6-byte numeric identifiers
    return bytes(body)


def bad_count_over_payload(world: World) -> bytes:
    body = send_payload(world, [b"a"])
    index_at, _, _ = layout(body)
    U32.pack_into(body, index_at - 4, 1_000_000)
    return bytes(body)


def missing_partition(world: World) -> bytes:
    return bytes(send_payload(world, [b"a"], partition=SEED_PARTITIONS + 5))


def missing_stream(world: World) -> bytes:
    return c.encode_send_messages(999, world.topic_id, c.Partitioning.balanced(), [c.OutgoingMessage(b"a")])


def missing_topic(world: World) -> bytes:
    return c.encode_send_messages(world.stream_id, 999, c.Partitioning.balanced(), [c.OutgoingMessage(b"a")])


def missing_topic_by_name(world: World) -> bytes:
    return c.encode_send_messages(
        world.stream_id, "no-such-topic", c.Partitioning.balanced(), [c.OutgoingMessage(b"a")]
    )


@pytest.mark.parametrize(
    ("make", "statuses"),
    [
        (bad_count_zero, {Status.INVALID_MESSAGES_COUNT}),
        (bad_position_shifted, {Status.MISSING_INDEX, Status.INVALID_MESSAGES_SIZE}),
        (bad_last_position, {Status.MISSING_INDEX, Status.INVALID_MESSAGES_SIZE}),
        (bad_positions_decreasing, {Status.MISSING_INDEX, Status.CANNOT_READ_INDEX_POSITION}),
        (bad_sizes_lie, {Status.MISSING_INDEX, Status.INVALID_MESSAGES_SIZE}),
        (bad_index_offset, {Status.NON_ZERO_OFFSET}),
        (bad_index_timestamp, {Status.NON_ZERO_TIMESTAMP}),
        (bad_reserved, {Status.INVALID_RESERVED_FIELD}),
        (bad_metadata_length, {Status.INVALID_COMMAND}),
        (bad_metadata_length_short, {Status.INVALID_COMMAND, Status.INVALID_IDENTIFIER}),
        (bad_identifier, {Status.INVALID_IDENTIFIER}),
        (bad_partitioning_kind, {Status.INVALID_COMMAND}),
        (bad_count_over_payload, {Status.INVALID_COMMAND}),
        (missing_partition, {Status.PARTITION_NOT_FOUND}),
        (missing_stream, {Status.STREAM_ID_NOT_FOUND}),
        (missing_topic, {Status.TOPIC_ID_NOT_FOUND}),
        (missing_topic_by_name, {Status.TOPIC_ID_NOT_FOUND}),
    ],
    ids=lambda v: v.__name__ if callable(v) else "",
)
def test_send_messages_given_invalid_batch_when_sent_should_answer_status_and_store_nothing(
    world: World, make: object, statuses: set[Status]
) -> None:
    assert callable(make)
    body = make(world)
    with logged_in(world) as client:
        status = client.request(Command.SEND_MESSAGES, body)[0]
        assert status in statuses, f"got {status}"
        client.ping()
    assert_healthy(world)


def test_send_messages_given_invalid_big_batch_when_sent_should_answer_status_and_store_nothing(
    world: World,
) -> None:
    body = send_payload(world, [bytes(1000)] * 400)  # ~420 KiB: past the small read buffer
    _, messages_at, _ = layout(body)
    U64.pack_into(body, messages_at + 1064 * 399 + RESERVED_AT, 7)  # reserved of the last message
    with logged_in(world) as client:
        assert client.request(Command.SEND_MESSAGES, bytes(body))[0] == Status.INVALID_RESERVED_FIELD
        client.ping()
    assert_healthy(world)


# ---- clients that vanish ---------------------------------------------------------------------------


def wait_for_clients(world: World, expected: int) -> None:
    with logged_in(world) as client:
        # +1: the checking connection itself.
        ok = wait_until(lambda: client.client_count() == expected + 1, timeout_s=20)
        assert ok, f"{client.client_count() - 1} clients still registered, expected {expected}"


def leave(client: WireClient, rude: bool) -> None:
    """Close the connection: a FIN, or (rude) a reset."""
    if rude:
        client.abort()
    else:
        client.close()


@pytest.mark.parametrize("rude", [False, True])
def test_server_given_half_a_frame_when_client_disconnects_should_forget_it(world: World, rude: bool) -> None:
    client = logged_in(world)
    frame = framing.encode_request(Command.CREATE_STREAM, c.CreateStream("half-" + "x" * 40).encode())
    client.send_raw(frame[: len(frame) // 2])
    time.sleep(0.05)
    leave(client, rude)
    wait_for_clients(world, 0)
    with logged_in(world) as check:
        names = [s.name for s in decode_list(StreamInfo, check.call(c.GetStreams()))]
        assert not any(n.startswith("half-") for n in names)
    assert_healthy(world)


@pytest.mark.parametrize("rude", [False, True])
def test_server_given_half_a_big_send_when_client_disconnects_should_store_nothing(
    world: World, rude: bool
) -> None:
    body = send_payload(world, [random.randbytes(1000) for _ in range(600)])  # ~640 KiB
    frame = framing.encode_request(Command.SEND_MESSAGES, bytes(body))
    client = logged_in(world)
    client.send_raw(frame[: len(frame) // 2])
    time.sleep(0.05)
    leave(client, rude)
    wait_for_clients(world, 0)
    assert_healthy(world)


def vanish(address: str, how: int, rng: random.Random) -> None:
    """One client doing something half-way, then leaving (closing or resetting)."""
    client = WireClient(address, timeout_s=5)
    if how == 0:
        pass  # connect and leave
    elif how == 1:
        client.send_raw(b"\x1c\x00\x00")  # part of a header
    elif how == 2:
        # A whole login, then gone before the (slow, threaded) password check answers.
        client.send_raw(framing.encode_request(Command.LOGIN_USER, c.LoginUser("iggy", "iggy").encode()))
    elif how == 3:
        client.send_raw(header_only(4 + 5_000_000, Command.CREATE_STREAM) + rng.randbytes(1000))
    elif how == 4:
        client.send_raw(header_only(4 + 400_000, Command.SEND_MESSAGES) + rng.randbytes(300_000))
    else:
        client.send_raw(framing.encode_request(Command.PING, b"") * 3 + b"\x08\x00")
    leave(client, rude=rng.random() < 0.5)


def test_server_given_many_clients_vanishing_mid_request_should_forget_them_all(world: World) -> None:
    rng = random.Random(17)
    for round_ in range(3):
        for i in range(30):
            vanish(world.srv.address, (i + round_) % 6, rng)
        # Some leave while their neighbours are still mid-request.
        sockets = [socket.create_connection(("127.0.0.1", world.srv.port)) for _ in range(10)]
        for s in sockets:
            s.sendall(header_only(4 + 100, Command.CREATE_STREAM))
        for s in sockets:
            s.close()
    wait_for_clients(world, 0)
    assert_healthy(world)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_server_given_client_not_reading_replies_when_pipelining_should_stay_bounded_and_serve_others(
    world: World,
) -> None:
    """A client that pipelines polls without reading must not stall or break anyone else."""
    poll = c.PollMessages(
        Consumer(1, 0), world.stream_id, world.topic_id, 0, PollingKind.FIRST, 0, 1000, False
    )
    frame = framing.encode_request(Command.POLL_MESSAGES, poll.encode())
    hog = logged_in(world)
    try:
        hog.sock.setblocking(False)
        rss_before = server_rss_bytes(world.srv)
        chunk = frame * 64
        out = memoryview(chunk)
        blocked = False
        # Generous: on a loaded 2-core CI machine filling the buffers takes a while.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                out = out[hog.sock.send(out) :] or memoryview(chunk)
            except BlockingIOError:
                blocked = True  # the server stopped reading from us: back-pressure works
                break
        assert blocked, "the server kept reading requests whose replies nobody reads"
        # Replies wait in a bounded write buffer (8 MiB by default), not in an ever-growing queue.
        grown = server_rss_bytes(world.srv) - rss_before
        assert grown < 64 * 1024 * 1024, f"RSS grew {grown >> 20} MiB"
        assert_healthy(world)
    finally:
        hog.abort()  # always: a leftover client would fail every later test's client count
    wait_for_clients(world, 0)
    assert_healthy(world)


def server_rss_bytes(srv: ServerProcess) -> int:
    assert srv.proc is not None
    for line in Path(f"/proc/{srv.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_server_given_clients_declaring_huge_payloads_when_idle_should_not_commit_the_declared_memory(
    world: World,
) -> None:
    """A header costs 8 bytes to send; it must not make the server commit what it declares.

    Each logged-in client declares a 100 MiB SendMessages payload (under the 128 MiB cap) and
    sends 300 KB of it.
    """
    clients, declared, sent = 6, 100 * 1024 * 1024, 300_000
    before = server_rss_bytes(world.srv)
    sockets = []
    for _ in range(clients):
        client = WireClient(world.srv.address)
        client.login()
        client.send_raw(header_only(4 + declared, Command.SEND_MESSAGES) + bytes(sent))
        sockets.append(client)
    with logged_in(world) as check:
        check.ping()  # the server has taken in everything sent before this
    time.sleep(0.2)
    grown = server_rss_bytes(world.srv) - before
    for s in sockets:
        s.close()
    # Everything received, plus slack for the interpreter; far below clients * declared.
    assert grown < clients * sent + 64 * 1024 * 1024, f"RSS grew {grown >> 20} MiB"
    wait_for_clients(world, 0)
    assert_healthy(world)


# ---- awkward but valid framing ---------------------------------------------------------------------


def test_server_given_client_not_logged_in_when_declaring_big_batch_should_answer_80_then_close(
    world: World,
) -> None:
    """Before login every command is held to the 10 MiB control cap: the server answers at the
    header instead of taking in up to 128 MiB only to reply 40."""
    client = WireClient(world.srv.address, timeout_s=3)
    with client:
        client.send_raw(header_only(4 + 20 * 1024 * 1024, Command.SEND_MESSAGES))
        assert client.read_reply()[0] == Status.INVALID_SIZE_BYTES
        assert client.is_closed_by_server()
    assert_healthy(world)


def send_frame_of_total_size(world: World, total_bytes: int) -> tuple[bytes, bytes]:
    """A valid one-message SendMessages frame (to the scratch topic) of exactly
    `total_bytes` bytes, and the message payload in it."""

    def frame_of(payload: bytes) -> bytes:
        body = c.encode_send_messages(
            world.stream_id,
            world.scratch_topic_id,
            c.Partitioning.partition_id(0),
            [c.OutgoingMessage(payload)],
        )
        return framing.encode_request(Command.SEND_MESSAGES, body)

    payload = random.randbytes(total_bytes - len(frame_of(b"")))
    frame = frame_of(payload)
    assert len(frame) == total_bytes
    return frame, payload


@pytest.mark.parametrize("lead", ["none", "ping", "undecodable-1000-bytes"])
def test_server_given_frames_around_the_read_buffer_size_when_pipelined_should_answer_each(
    world: World, lead: str
) -> None:
    """Frames of 256 KiB +- 1 bytes, behind an earlier pipelined frame or not, hit every
    boundary between the in-place and the exact-size receive paths."""
    small = 256 * 1024
    sent = [send_frame_of_total_size(world, n) for n in (small - 1, small, small + 1, small, small - 1)]
    lead_frames = {
        "none": [],
        "ping": [(framing.encode_request(Command.PING, b""), Status.OK)],
        "undecodable-1000-bytes": [
            (framing.encode_request(Command.GET_STREAM, bytes(992)), Status.INVALID_COMMAND)
        ],
    }[lead]
    with logged_in(world) as client:
        before = len(client.poll_all(world.stream_id, world.scratch_topic_id, 0))
        client.send_raw(b"".join(f for f, _ in lead_frames) + b"".join(f for f, _ in sent))
        assert [client.read_reply()[0] for _ in lead_frames] == [s for _, s in lead_frames]
        assert [client.read_reply()[0] for _ in sent] == [Status.OK] * len(sent)
        _, stored = client.poll(world.stream_id, world.scratch_topic_id, 0, before, 100)
        verify_stored(stored, before)
        assert [m.payload for m in stored] == [p for _, p in sent]
    assert_healthy(world)


def test_server_given_a_frame_arriving_byte_by_byte_should_assemble_and_answer_it(world: World) -> None:
    with WireClient(world.srv.address) as client:
        frame = framing.encode_request(Command.LOGIN_USER, c.LoginUser("iggy", "iggy").encode())
        frame += framing.encode_request(Command.GET_STREAM, encode_identifier(world.stream_id))
        for i in range(len(frame)):
            client.send_raw(frame[i : i + 1])
            time.sleep(0.001)
        assert client.read_reply() == (Status.OK, U32.pack(0))
        status, payload = client.read_reply()
        assert status == Status.OK
        assert decode_record(StreamDetails, payload).stream.id == world.stream_id
    assert_healthy(world)

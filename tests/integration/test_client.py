"""tidelog's asyncio client (``tidelog.client``) end to end against a real ``tidelog serve``.

Every behaviour that does not depend on the generation runs under both (the ``protocol``
fixture: 0.9, the default, and 0.8). Most tests share one server (each uses its own stream
names); tests that restart or need a pristine server start their own. Connection handling
(retry, timeout, framing) is also checked against tiny in-process fake servers, which makes
the failure cases deterministic; those speak one generation each.
"""

from __future__ import annotations

import asyncio
import io
import socket
import struct
import time
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import xxhash

from tests.conftest import ServerProcess
from tidelog.client import (
    Consumer,
    ConsumerId,
    ConsumerKind,
    GlobalPermissions,
    IggyClient,
    IggyConnectionError,
    IggyEvictedError,
    IggyServerError,
    IggyTimeoutError,
    OutgoingMessage,
    Partitioning,
    Permissions,
    PolledBatch,
    PollingStrategy,
    ProtocolGeneration,
    Status,
    encode_send_frame,
    parse_connection_string,
    parse_duration_s,
)
from tidelog.wire.primitives import HeaderKind
from tidelog.wire.user_headers import encode_user_headers
from tidelog.wire.v09.batch import parse_records
from tidelog.wire.v09.codes import CommandCode, EvictionReason, Operation
from tidelog.wire.v09.frames import LoginReply, encode_login_reply
from tidelog.wire.v09.header import HEADER_SIZE, RequestHeader, eviction_for, reply_header_for


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("client") / "data").start()
    yield srv
    srv.stop()


@pytest.fixture(params=["0.9", "0.8"])
def protocol(request: pytest.FixtureRequest) -> str:
    generation: str = request.param
    return generation


@pytest.fixture
async def client(shared_server: ServerProcess, protocol: str) -> AsyncIterator[IggyClient]:
    c = await IggyClient.connect(
        shared_server.address, username="iggy", password="iggy", reconnect_retries=0, protocol=protocol
    )
    yield c
    await c.close()


_names = iter(range(1_000_000))


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


async def make_topic(client: IggyClient, partitions: int = 1) -> tuple[str, str]:
    stream = unique("stream")
    await client.create_stream(stream)
    await client.create_topic(stream, "t", partitions)
    return stream, "t"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------------------------------------
# Pure parts: connection strings, durations, error objects


def test_connection_string_given_user_and_password_should_parse_credentials_and_options() -> None:
    o = parse_connection_string(
        "iggy+tcp://alice:s3cr:et@10.0.0.1:9000?reconnection_retries=7&reconnection_interval=250ms&nodelay=false"
    )
    assert (o.address, o.username, o.password, o.token) == ("10.0.0.1:9000", "alice", "s3cr:et", None)
    assert (o.reconnect_retries, o.reconnect_interval_s, o.nodelay) == (7, 0.25, False)


def test_connection_string_given_single_credential_should_be_a_token_kept_verbatim() -> None:
    token = "ab/c+d=="
    o = parse_connection_string(f"iggy+tcp://{token}@127.0.0.1:8090?reconnection_retries=unlimited")
    assert (o.token, o.username, o.password, o.reconnect_retries) == (token, None, None, None)


def test_connection_string_given_bad_input_should_raise_value_error() -> None:
    for bad in (
        "http://iggy:iggy@h:1",
        "iggy+tcp://iggy:iggy@nohostport",
        "iggy+tcp://iggy:iggy@h:1?frobnicate=1",
        "iggy+tcp://iggy:iggy@h:1?tls=true",
    ):
        with pytest.raises(ValueError):
            parse_connection_string(bad)


def test_parse_duration_given_humantime_text_should_return_seconds() -> None:
    assert parse_duration_s("1s") == 1.0
    assert parse_duration_s("500ms") == 0.5
    assert parse_duration_s("1m 30s") == 90.0
    with pytest.raises(ValueError):
        parse_duration_s("soon")


def test_server_error_given_known_and_unknown_codes_should_carry_code_and_name() -> None:
    known = IggyServerError(1009, 203)
    assert (known.status, known.code, known.name) == (1009, 1009, "STREAM_ID_NOT_FOUND")
    assert "STREAM_ID_NOT_FOUND (1009)" in str(known) and "DELETE_STREAM" in str(known)
    unknown = IggyServerError(65000)
    assert (unknown.status, unknown.name) == (65000, "UNKNOWN")
    assert IggyServerError(5004).already_exists and not known.already_exists


# ---------------------------------------------------------------------------------------------
# Connection handling against fake servers


# These servers speak 0.8 (the classic 8-byte frames); the 0.9 ones are further down.
Handler = Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def fake_server(handler: Handler) -> tuple[asyncio.Server, str, list[int]]:
    """A loopback server calling ``handler(connection_number, reader, writer)``."""
    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections))
        try:
            await handler(connections[-1], reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"127.0.0.1:{port}", connections


async def read_request(reader: asyncio.StreamReader) -> int:
    length, code = struct.unpack("<II", await reader.readexactly(8))
    await reader.readexactly(length - 4)
    return int(code)


async def test_client_given_dropped_connection_when_requesting_should_reconnect_and_retry_once() -> None:
    async def handler(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if n == 0:
            return  # close without a reply
        writer.write(struct.pack("<II", 0, 0))
        await writer.drain()
        await asyncio.sleep(1)

    server, address, connections = await fake_server(handler)
    async with server:
        c = await IggyClient.connect(address, protocol="0.8", reconnect_retries=2, reconnect_interval_s=0.01)
        await c.ping()
        assert len(connections) == 2 and c.reconnects_count == 1 and c.requests_count == 2
        await c.close()


async def test_client_given_disconnected_frame_when_requesting_should_retry_on_a_new_connection() -> None:
    async def handler(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(struct.pack("<II", Status.DISCONNECTED if n == 0 else 0, 0))
        await writer.drain()
        await asyncio.sleep(1)

    server, address, connections = await fake_server(handler)
    async with server:
        c = await IggyClient.connect(address, protocol="0.8", reconnect_retries=1, reconnect_interval_s=0.01)
        await c.ping()
        assert len(connections) == 2
        await c.close()


async def test_client_given_error_status_when_requesting_should_raise_without_retrying() -> None:
    async def handler(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(struct.pack("<II", 12345, 0))
            await writer.drain()

    server, address, connections = await fake_server(handler)
    async with server:
        c = await IggyClient.connect(address, protocol="0.8", reconnect_retries=3, reconnect_interval_s=0.01)
        with pytest.raises(IggyServerError) as info:
            await c.delete_stream("x")
        assert (info.value.status, info.value.name, info.value.command) == (12345, "UNKNOWN", 203)
        assert len(connections) == 1 and c.requests_count == 1
        with pytest.raises(IggyServerError):
            await c.ping()
        assert len(connections) == 1  # the connection stays in use after an error status
        await c.close()


async def test_client_given_silent_server_when_requesting_should_time_out_then_reconnect() -> None:
    async def handler(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if n == 0:
            await asyncio.sleep(5)  # never answers
            return
        writer.write(struct.pack("<II", 0, 0))
        await writer.drain()
        await asyncio.sleep(1)

    server, address, connections = await fake_server(handler)
    async with server:
        c = await IggyClient.connect(
            address, protocol="0.8", timeout_s=0.1, reconnect_retries=1, reconnect_interval_s=0.01
        )
        started = time.monotonic()
        with pytest.raises(IggyTimeoutError):
            await c.ping()
        assert time.monotonic() - started < 1.0
        assert not c.connected
        await c.ping()  # a fresh connection: a late reply on the old one cannot be mistaken
        assert len(connections) == 2
        await c.close()


async def test_client_given_reply_split_in_pieces_when_reading_should_assemble_the_payload() -> None:
    body = struct.pack("<IQI", 0, 0, 0)

    async def handler(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        frame = struct.pack("<II", 0, len(body)) + body
        for i in range(len(frame)):
            writer.write(frame[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.001)
        await asyncio.sleep(1)

    server, address, _ = await fake_server(handler)
    async with server:
        c = await IggyClient.connect(address, protocol="0.8", reconnect_retries=0)
        batch = await c.poll_messages(0, 0, 0, PollingStrategy.first(), 10)
        assert (batch.partition_id, batch.current_offset, batch.messages) == (0, 0, [])
        await c.close()


async def test_client_given_nothing_listening_when_connecting_should_raise_connection_error() -> None:
    with pytest.raises(IggyConnectionError, match="cannot connect"):
        await IggyClient.connect(f"127.0.0.1:{free_port()}", reconnect_retries=0)


def test_client_given_uvloop_when_sending_and_polling_should_work(
    shared_server: ServerProcess, protocol: str
) -> None:
    import uvloop

    async def scenario() -> list[bytes]:
        # Built with the constructor, not connect(): the first request connects and logs in.
        c = IggyClient(shared_server.address, username="iggy", password="iggy", protocol=protocol)
        stream, topic = await make_topic(c)
        await c.send_messages(stream, topic, Partitioning.partition_id(0), [b"u1", b"u2"])
        batch = await c.poll_messages(stream, topic, 0, PollingStrategy.first(), 10)
        await c.close()
        return [bytes(m.payload) for m in batch.messages]

    assert uvloop.run(scenario()) == [b"u1", b"u2"]


# ---------------------------------------------------------------------------------------------
# Users, permissions, tokens


async def test_users_given_limited_user_when_creating_stream_should_get_unauthorized_until_granted(
    client: IggyClient, shared_server: ServerProcess
) -> None:
    name = unique("reader")
    reader_perms = Permissions(GlobalPermissions(read_streams=True))
    created = await client.create_user(name, "pw-123", permissions=reader_perms)
    assert created.user.username == name and created.permissions == reader_perms
    fetched = await client.get_user(name)
    assert fetched is not None and fetched.user.id == created.user.id
    assert name in [u.username for u in await client.get_users()]

    reader = await IggyClient.connect(
        shared_server.address, username=name, password="pw-123", protocol=client.protocol
    )
    await reader.get_streams()
    with pytest.raises(IggyServerError) as info:
        await reader.create_stream(unique("denied"))
    assert (info.value.status, info.value.name) == (Status.UNAUTHORIZED, "UNAUTHORIZED")

    await client.update_permissions(name, Permissions(GlobalPermissions(manage_streams=True)))
    await reader.create_stream(unique("granted"))

    await client.change_password(name, "pw-123", "pw-456")
    with pytest.raises(IggyServerError) as info:
        await IggyClient.connect(
            shared_server.address, username=name, password="pw-123", protocol=client.protocol
        )
    assert info.value.status == Status.INVALID_CREDENTIALS
    again = await IggyClient.connect(
        shared_server.address, username=name, password="pw-456", protocol=client.protocol
    )
    assert again.user_id == created.user.id
    await again.logout_user()
    with pytest.raises(IggyServerError) as info:
        await again.get_streams()
    assert info.value.status == Status.UNAUTHENTICATED

    renamed = unique("renamed")
    await client.update_user(name, username=renamed)
    assert await client.get_user(name) is None
    await client.delete_user(renamed)
    assert await client.get_user(renamed) is None
    for c in (reader, again):
        await c.close()


async def test_tokens_given_created_token_when_logging_in_with_it_should_act_as_its_user_until_deleted(
    client: IggyClient, shared_server: ServerProcess
) -> None:
    name = unique("pat")
    token = await client.create_personal_access_token(name)
    assert name in [t.name for t in await client.get_personal_access_tokens()]

    other = await IggyClient.connect(shared_server.address, token=token, protocol=client.protocol)
    assert other.user_id == 0
    assert (await other.get_me()).client.user_id == 0
    via_string = await IggyClient.from_connection_string(
        f"iggy+tcp://{token}@{shared_server.address}?protocol={client.protocol.value}"
    )
    assert via_string.user_id == 0 and via_string.protocol is client.protocol

    await client.delete_personal_access_token(name)
    assert name not in [t.name for t in await client.get_personal_access_tokens()]
    with pytest.raises(IggyServerError) as info:
        await IggyClient.connect(shared_server.address, token=token, protocol=client.protocol)
    # 0.8 answers a status; 0.9 evicts the login with InvalidToken (section 1.6).
    refused = (
        Status.RESOURCE_NOT_FOUND if client.protocol.value == "0.8" else Status.INVALID_PERSONAL_ACCESS_TOKEN
    )
    assert info.value.status == refused
    for c in (other, via_string):
        await c.close()


# ---------------------------------------------------------------------------------------------
# Streams, topics, partitions, segments, purge


async def test_streams_and_topics_given_full_lifecycle_should_reflect_every_change(
    client: IggyClient,
) -> None:
    name = unique("life")
    stream = await client.create_stream(name)
    assert stream.name == name and stream.topics_count == 0
    new_name = unique("life-renamed")
    await client.update_stream(name, new_name)
    assert await client.get_stream(name) is None
    details = await client.get_stream(stream.id)
    assert details is not None and details.stream.name == new_name
    assert new_name in [s.name for s in await client.get_streams()]

    topic = await client.create_topic(new_name, "events", 2)
    assert [p.id for p in topic.partitions] == [0, 1]
    await client.update_topic(new_name, "events", "events2", message_expiry_us=5_000_000)
    assert await client.get_topic(new_name, "events") is None
    t2 = await client.get_topic(new_name, "events2")
    assert t2 is not None and t2.topic.message_expiry == 5_000_000
    assert [t.name for t in await client.get_topics(new_name)] == ["events2"]

    await client.create_partitions(new_name, "events2", 2)
    t3 = await client.get_topic(new_name, "events2")
    assert t3 is not None and [p.id for p in t3.partitions] == [0, 1, 2, 3]
    await client.delete_partitions(new_name, "events2", 1)
    t4 = await client.get_topic(new_name, "events2")
    assert t4 is not None and t4.topic.partitions_count == 3

    await client.send_messages(new_name, "events2", Partitioning.partition_id(2), [b"x", b"y"])
    await client.flush_unsaved_buffer(new_name, "events2", 2, fsync=True)
    # Only sealed segments go; the one active segment stays, so nothing is lost.
    await client.delete_segments(new_name, "events2", 2, 1)
    assert len(await client.poll_messages(new_name, "events2", 2, PollingStrategy.first(), 10)) == 2
    with pytest.raises(IggyServerError) as info:
        await client.delete_segments(new_name, "events2", 9, 1)
    assert info.value.status == Status.PARTITION_NOT_FOUND

    await client.purge_topic(new_name, "events2")
    assert len(await client.poll_messages(new_name, "events2", 2, PollingStrategy.first(), 10)) == 0
    await client.send_messages(new_name, "events2", Partitioning.partition_id(1), [b"z"])
    await client.purge_stream(new_name)
    assert len(await client.poll_messages(new_name, "events2", 1, PollingStrategy.first(), 10)) == 0

    await client.delete_topic(new_name, "events2")
    assert await client.get_topic(new_name, "events2") is None
    assert await client.get_topics(new_name) == []
    await client.delete_stream(new_name)
    assert await client.get_stream(new_name) is None
    with pytest.raises(IggyServerError) as info:
        await client.delete_stream(new_name)
    assert (info.value.status, info.value.name) == (1009, "STREAM_ID_NOT_FOUND")


# ---------------------------------------------------------------------------------------------
# Messages: send, poll, partitioning


async def test_send_and_poll_given_batch_should_round_trip_ids_headers_and_offsets(
    client: IggyClient,
) -> None:
    stream, topic = await make_topic(client)
    sent = [OutgoingMessage(f"m{i}".encode(), id=1000 + i, user_headers=b"") for i in range(5)]
    await client.send_messages(stream, topic, Partitioning.partition_id(0), sent)
    frame = encode_send_frame(
        stream, topic, Partitioning.partition_id(0), [b"raw1", b"raw2"], client.protocol
    )
    await client.send_raw(frame)
    batch = await client.poll_messages(stream, topic, 0, PollingStrategy.offset(0), 100)
    assert batch.partition_id == 0 and batch.current_offset == 6
    assert [bytes(m.payload) for m in batch.messages] == [b"m0", b"m1", b"m2", b"m3", b"m4", b"raw1", b"raw2"]
    assert [m.offset for m in batch.messages] == list(range(7))
    assert [m.id for m in batch.messages[:5]] == [1000, 1001, 1002, 1003, 1004]
    assert all(m.id != 0 for m in batch.messages[5:])
    # Zero-copy: every payload is a view into the one reply buffer.
    assert all(isinstance(m.payload, memoryview) for m in batch.messages)
    assert batch.messages[0].payload.obj is batch.messages[-1].payload.obj

    header, raw = await client.poll_raw(stream, topic, 0, PollingStrategy.last(), 3)
    assert (header.partition_id, header.messages_count) == (0, 3)
    if client.protocol.value == "0.8":  # 64-byte message headers
        assert len(raw) == 3 * 64 + len(b"m4raw1raw2")
    else:  # one record per batch as sent (256-byte header), 48-byte frame headers
        assert [r.count for r in parse_records(raw)] == [1, 2]
        assert len(raw) == 2 * 256 + 3 * 48 + len(b"m4raw1raw2")
    last = await client.poll_messages(stream, topic, 0, PollingStrategy.last(), 2)
    assert [m.offset for m in last.messages] == [5, 6]


async def test_balanced_partitioning_given_several_batches_should_spread_them_round_robin(
    client: IggyClient,
) -> None:
    stream, topic = await make_topic(client, partitions=3)
    for i in range(6):
        await client.send_messages(stream, topic, Partitioning.balanced(), [f"b{i}".encode()])
    where: dict[bytes, int] = {}
    for p in range(3):
        batch = await client.poll_messages(stream, topic, p, PollingStrategy.first(), 10)
        assert len(batch) == 2
        where.update({bytes(m.payload): p for m in batch.messages})
    order = [where[f"b{i}".encode()] for i in range(6)]
    # Round robin: each batch to the next partition, a full cycle every three batches.
    assert order[:3] == order[3:] and sorted(order[:3]) == [0, 1, 2]
    assert all((order[i + 1] - order[i]) % 3 == 1 for i in range(5))


async def test_messages_key_partitioning_given_equal_keys_should_send_them_to_one_partition(
    client: IggyClient,
) -> None:
    stream, topic = await make_topic(client, partitions=4)
    keys = [b"alpha", b"beta", b"gamma", b"delta", b"epsilon"]
    for round_ in range(3):
        for key in keys:
            await client.send_messages(stream, topic, Partitioning.messages_key(key), [key + b"-%d" % round_])
    seen: dict[bytes, set[int]] = {}
    for p in range(4):
        batch = await client.poll_messages(stream, topic, p, PollingStrategy.first(), 100)
        for m in batch.messages:
            seen.setdefault(bytes(m.payload).rsplit(b"-", 1)[0], set()).add(p)
    assert set(seen) == set(keys)
    for key, partitions in seen.items():
        assert partitions == {xxhash.xxh32_intdigest(key) % 4}


# ---------------------------------------------------------------------------------------------
# Consumer offsets and groups


async def test_consumer_offsets_given_consumer_and_group_should_store_get_and_delete(
    client: IggyClient,
) -> None:
    stream, topic = await make_topic(client, partitions=1)
    await client.send_messages(stream, topic, Partitioning.partition_id(0), [b"a", b"b", b"c"])
    consumer = ConsumerId(ConsumerKind.CONSUMER, 7)
    assert await client.get_consumer_offset(consumer, stream, topic, 0) is None
    await client.store_consumer_offset(consumer, stream, topic, 0, 1)
    info = await client.get_consumer_offset(consumer, stream, topic, 0)
    assert info is not None and (info.partition_id, info.current_offset, info.stored_offset) == (0, 2, 1)
    nxt = await client.poll_messages(stream, topic, 0, PollingStrategy.next(), 10, consumer=consumer)
    assert [bytes(m.payload) for m in nxt.messages] == [b"c"]
    with pytest.raises(IggyServerError) as info_err:
        await client.store_consumer_offset(consumer, stream, topic, 0, 99)
    assert info_err.value.status == Status.INVALID_OFFSET
    await client.delete_consumer_offset(consumer, stream, topic, 0)
    assert await client.get_consumer_offset(consumer, stream, topic, 0) is None
    with pytest.raises(IggyServerError) as info_err:
        await client.delete_consumer_offset(consumer, stream, topic, 0)
    assert info_err.value.status == Status.CONSUMER_OFFSET_NOT_FOUND

    await client.create_consumer_group(stream, topic, "grp")
    group = ConsumerId(ConsumerKind.CONSUMER_GROUP, "grp")
    with pytest.raises(IggyServerError) as info_err:
        await client.store_consumer_offset(group, stream, topic, 0, 0)
    assert info_err.value.status == Status.CONSUMER_GROUP_MEMBER_NOT_FOUND
    await client.join_consumer_group(stream, topic, "grp")
    await client.store_consumer_offset(group, stream, topic, 0, 2)
    got = await client.get_consumer_offset(group, stream, topic, 0)
    assert got is not None and got.stored_offset == 2
    await client.delete_consumer_offset(group, stream, topic, 0)
    assert await client.get_consumer_offset(group, stream, topic, 0) is None
    await client.leave_consumer_group(stream, topic, "grp")


async def test_consumer_groups_given_two_clients_should_split_partitions_and_track_membership(
    client: IggyClient, shared_server: ServerProcess
) -> None:
    stream, topic = await make_topic(client, partitions=2)
    group = await client.create_consumer_group(stream, topic, "workers")
    assert (group.name, group.partitions_count, group.members_count) == ("workers", 2, 0)
    with pytest.raises(IggyServerError) as info:
        await client.create_consumer_group(stream, topic, "workers")
    assert info.value.already_exists
    other = await IggyClient.connect(
        shared_server.address, username="iggy", password="iggy", protocol=client.protocol
    )
    await client.join_consumer_group(stream, topic, "workers")
    await other.join_consumer_group(stream, topic, group.id)
    details = await client.get_consumer_group(stream, topic, "workers")
    assert details is not None and len(details.members) == 2
    assert sorted(p for m in details.members for p in m.partitions) == [0, 1]
    assert all(len(m.partitions) == 1 for m in details.members)
    stream_details = await client.get_stream(stream)
    assert stream_details is not None
    me = await other.get_me()
    assert me.groups == [(stream_details.stream.id, 0, group.id)]
    assert [g.name for g in await client.get_consumer_groups(stream, topic)] == ["workers"]

    await other.leave_consumer_group(stream, topic, "workers")
    details = await client.get_consumer_group(stream, topic, "workers")
    assert details is not None and len(details.members) == 1 and details.members[0].partitions == [0, 1]
    await client.delete_consumer_group(stream, topic, "workers")
    assert await client.get_consumer_group(stream, topic, "workers") is None
    assert await client.get_consumer_groups(stream, topic) == []
    await other.close()


# ---------------------------------------------------------------------------------------------
# System commands


async def test_system_given_logged_in_client_should_report_me_clients_stats_cluster_and_snapshot(
    client: IggyClient, shared_server: ServerProcess
) -> None:
    me = await client.get_me()
    assert me.client.user_id == 0
    clients = await client.get_clients()
    assert me.client.client_id in [c.client_id for c in clients]
    same = await client.get_client(me.client.client_id)
    assert same is not None and same.client.address == me.client.address
    stream, _ = await make_topic(client)
    stats = await client.get_stats()
    assert stats.streams_count >= 1 and stats.clients_count >= 1
    cluster = await client.get_cluster_metadata()
    assert cluster.nodes and cluster.nodes[0].tcp_port == shared_server.port
    snapshot = await client.get_snapshot()
    with zipfile.ZipFile(io.BytesIO(snapshot)) as archive:
        assert archive.namelist() and archive.testzip() is None
    await client.ping()
    await client.delete_stream(stream)


# ---------------------------------------------------------------------------------------------
# Reconnect across a server restart


async def test_reconnect_given_server_restarted_on_same_port_should_relogin_and_keep_working(
    tmp_path: Path, server_factory: type[ServerProcess], protocol: str
) -> None:
    port = free_port()
    args = ("--tcp-address", f"127.0.0.1:{port}")
    srv = server_factory(tmp_path / "data", *args).start()
    c = await IggyClient.connect(
        srv.address,
        username="iggy",
        password="iggy",
        reconnect_retries=50,
        reconnect_interval_s=0.1,
        protocol=protocol,
    )
    await c.create_stream("kept")
    await c.create_topic("kept", "t", 1)
    await c.create_consumer_group("kept", "t", "g")
    await c.join_consumer_group("kept", "t", "g")
    assert srv.stop() == 0
    srv2 = server_factory(tmp_path / "data", *args).start()
    assert srv2.port == port
    details = await c.get_stream("kept")  # the same client object, on a new connection
    assert details is not None and details.stream.name == "kept"
    assert c.reconnects_count == 1
    assert (await c.get_me()).client.user_id == 0  # logged in again with the stored password
    group = await c.get_consumer_group("kept", "t", "g")
    assert group is not None and len(group.members) == 1  # and re-joined its group
    await c.close()
    srv2.stop()


async def test_reconnect_given_retries_disabled_when_server_stops_should_raise_connection_error(
    tmp_path: Path, server_factory: type[ServerProcess], protocol: str
) -> None:
    srv = server_factory(tmp_path / "data").start()
    c = await IggyClient.connect(
        srv.address, username="iggy", password="iggy", reconnect_retries=0, protocol=protocol
    )
    await c.ping()
    srv.stop()
    with pytest.raises(IggyConnectionError):
        await c.ping()
    await c.close()


# ---------------------------------------------------------------------------------------------
# Producer


async def test_producer_given_batch_length_when_sending_should_flush_full_batches(client: IggyClient) -> None:
    stream, topic = await make_topic(client)
    producer = await client.producer(
        stream, topic, partitioning=Partitioning.partition_id(0), batch_length=10, linger_ms=60_000
    )
    for i in range(25):
        await producer.send(f"p{i}".encode())
    assert (producer.batches_sent, producer.buffered) == (2, 5)
    assert len(await client.poll_messages(stream, topic, 0, PollingStrategy.first(), 100)) == 20
    await producer.close()
    assert producer.batches_sent == 3
    batch = await client.poll_messages(stream, topic, 0, PollingStrategy.first(), 100)
    assert [bytes(m.payload) for m in batch.messages] == [f"p{i}".encode() for i in range(25)]


async def test_producer_given_linger_when_batch_not_full_should_send_after_linger(client: IggyClient) -> None:
    stream, topic = await make_topic(client)
    producer = await client.producer(
        stream, topic, partitioning=Partitioning.partition_id(0), batch_length=1000, linger_ms=20
    )
    for i in range(3):
        await producer.send(OutgoingMessage(f"l{i}".encode(), id=i + 1))
    assert producer.batches_sent == 0
    await asyncio.sleep(0.2)
    assert (producer.batches_sent, producer.buffered) == (1, 0)
    batch = await client.poll_messages(stream, topic, 0, PollingStrategy.first(), 10)
    assert [m.id for m in batch.messages] == [1, 2, 3]
    await producer.close()


async def test_producer_given_max_buffered_when_keys_spread_messages_should_never_hold_more(
    client: IggyClient,
) -> None:
    stream, topic = await make_topic(client, partitions=3)
    producer = await client.producer(stream, topic, batch_length=5, linger_ms=60_000, max_buffered=6)
    keys = [Partitioning.messages_key(k) for k in (b"k1", b"k2", b"k3")]
    high_water = 0
    for i in range(12):
        await producer.send(b"%d" % i, partitioning=keys[i % 3])
        high_water = max(high_water, producer.buffered)
    # No key reached five messages, so only the bound can have sent anything.
    assert high_water < 6 and producer.batches_sent >= 2
    await producer.close()
    details = await client.get_topic(stream, topic)
    assert details is not None and details.topic.messages_count == 12


async def test_producer_given_missing_stream_and_topic_when_asked_should_create_them(
    client: IggyClient,
) -> None:
    stream = unique("auto")
    producer = await client.producer(
        stream, "t", create_stream_and_topic_if_missing=True, topic_partitions_count=2, linger_ms=1
    )
    await producer.send(b"hello")
    await producer.close()
    details = await client.get_topic(stream, "t")
    assert details is not None and details.topic.partitions_count == 2 and details.topic.messages_count == 1


# ---------------------------------------------------------------------------------------------
# Consumer


async def test_consumer_given_idle_topic_should_back_off_instead_of_spinning(client: IggyClient) -> None:
    stream, topic = await make_topic(client)
    consumer = await client.consumer(stream, topic, consumer_id=1, poll_interval_ms=50)
    got: list[bytes] = []

    async def read() -> None:
        async for m in consumer:
            got.append(bytes(m.payload))

    before = client.requests_count
    task = asyncio.create_task(read())
    await asyncio.sleep(0.2)
    idle_requests = client.requests_count - before
    # 1, 2, 4, ... 50 ms sleeps: about ten polls; a spinning loop would send thousands. (The
    # lower bound only shows it polls at all: a loaded machine may starve this process.)
    assert 1 <= idle_requests <= 20, idle_requests
    await client.send_messages(stream, topic, Partitioning.partition_id(0), [b"wake"])
    for _ in range(500):
        if got:
            break
        await asyncio.sleep(0.01)
    assert got == [b"wake"]
    await consumer.close()
    await asyncio.wait_for(task, 1)


async def test_consumer_given_several_partitions_should_read_all_in_turn_and_commit(
    client: IggyClient,
) -> None:
    stream, topic = await make_topic(client, partitions=3)
    for p in range(3):
        await client.send_messages(
            stream, topic, Partitioning.partition_id(p), [f"{p}-{i}".encode() for i in range(4)]
        )
    consumer = await client.consumer(stream, topic, consumer_id="reader", batch_length=3, auto_commit=True)
    got: list[bytes] = []
    async for m in consumer:
        got.append(bytes(m.payload))
        if len(got) == 12:
            break
    assert sorted(got) == sorted(f"{p}-{i}".encode() for p in range(3) for i in range(4))
    assert [g for g in got if g.startswith(b"1-")] == [b"1-0", b"1-1", b"1-2", b"1-3"]
    for p in range(3):
        assert await consumer.get_offset(p) == 3  # auto_commit stored the last offset polled
    await consumer.close()


async def test_consumer_given_offset_strategy_and_manual_commit_should_start_there_and_store(
    client: IggyClient,
) -> None:
    stream, topic = await make_topic(client)
    await client.send_messages(stream, topic, Partitioning.partition_id(0), [b"%d" % i for i in range(10)])
    consumer = await client.consumer(
        stream, topic, consumer_id=9, partition_id=0, strategy=PollingStrategy.offset(6), auto_commit=False
    )
    got = []
    async for m in consumer:
        got.append(m.offset)
        if m.offset == 9:
            break
    assert got == [6, 7, 8, 9]
    assert await consumer.get_offset(0) is None
    await consumer.commit()
    assert await consumer.get_offset(0) == 9
    await consumer.close()


async def test_consumer_given_group_of_two_should_share_messages_without_duplicates(
    client: IggyClient, shared_server: ServerProcess
) -> None:
    stream, topic = await make_topic(client, partitions=2)
    for p in range(2):
        await client.send_messages(
            stream, topic, Partitioning.partition_id(p), [f"{p}-{i}".encode() for i in range(5)]
        )
    other = await IggyClient.connect(
        shared_server.address, username="iggy", password="iggy", protocol=client.protocol
    )
    a = await client.consumer(stream, topic, group="g", batch_length=2)
    b = await other.consumer(stream, topic, group="g", batch_length=2)
    details = await client.get_consumer_group(stream, topic, "g")
    assert details is not None and len(details.members) == 2

    async def take(consumer: Consumer, n: int) -> list[bytes]:
        out: list[bytes] = []
        async for m in consumer:
            out.append(bytes(m.payload))
            if len(out) == n:
                break
        return out

    got_a, got_b = await asyncio.wait_for(asyncio.gather(take(a, 5), take(b, 5)), 5)
    assert sorted(got_a + got_b) == sorted(f"{p}-{i}".encode() for p in range(2) for i in range(5))
    # Each member owns one partition, so each reads one partition's messages.
    assert {g[:1] for g in got_a} != {g[:1] for g in got_b}
    await a.close()
    await b.close()
    details = await client.get_consumer_group(stream, topic, "g")
    assert details is not None and details.members == []
    await other.close()


# ---------------------------------------------------------------------------------------------
# 0.9 specifics: evictions, group assignments, the other generation's messages


def test_connection_string_given_protocol_option_should_pick_the_generation() -> None:
    assert parse_connection_string("iggy+tcp://iggy:iggy@h:1?protocol=0.8").protocol is ProtocolGeneration.V08
    assert parse_connection_string("iggy+tcp://iggy:iggy@h:1").protocol is ProtocolGeneration.V09
    assert IggyClient("h:1").protocol is ProtocolGeneration.V09  # the current generation by default
    with pytest.raises(ValueError, match="protocol"):
        parse_connection_string("iggy+tcp://iggy:iggy@h:1?protocol=0.7")


async def test_login_v09_given_wrong_password_should_raise_eviction_then_log_in_on_a_new_connection(
    shared_server: ServerProcess,
) -> None:
    with pytest.raises(IggyEvictedError) as info:
        await IggyClient.connect(shared_server.address, username="iggy", password="wrong", protocol="0.9")
    assert (info.value.code, info.value.reason) == (
        Status.INVALID_CREDENTIALS,
        EvictionReason.INVALID_CREDENTIALS,
    )
    assert "INVALID_CREDENTIALS" in str(info.value)

    c = await IggyClient.connect(shared_server.address, reconnect_retries=1, protocol="0.9")
    await c.ping()  # allowed before login
    with pytest.raises(IggyEvictedError) as info:
        await c.create_stream(unique("no-session"))  # a replicated operation before login
    assert (info.value.code, info.value.reason) == (Status.UNAUTHENTICATED, EvictionReason.NO_SESSION)
    assert not c.connected  # an eviction ends the session and its connection
    with pytest.raises(IggyEvictedError):
        await c.login_user("iggy", "wrong")
    assert await c.login_user("iggy", "iggy") == 0  # on a fresh connection
    assert await c.login_user("iggy", "iggy") == 0  # again: logout, then a new Register
    assert (await c.get_me()).client.user_id == 0
    await c.close()


async def test_group_poll_v09_given_stale_assignment_should_resync_and_poll_an_owned_partition(
    shared_server: ServerProcess,
) -> None:
    a = await IggyClient.connect(shared_server.address, username="iggy", password="iggy", protocol="0.9")
    b = await IggyClient.connect(shared_server.address, username="iggy", password="iggy", protocol="0.9")
    stream, topic = await make_topic(a, partitions=2)
    for p in range(2):
        await a.send_messages(
            stream, topic, Partitioning.partition_id(p), [f"{p}-{i}".encode() for i in range(3)]
        )
    await a.create_consumer_group(stream, topic, "g")
    await a.join_consumer_group(stream, topic, "g")
    group = ConsumerId(ConsumerKind.CONSUMER_GROUP, "g")

    first = await a.poll_messages(stream, topic, None, PollingStrategy.next(), 1, True, group)
    assert (first.partition_id, [bytes(m.payload) for m in first.messages]) == (0, [b"0-0"])
    # b joins: the rebalance gives it partition 1, which a's synced assignment still holds,
    # and a's round robin asks for partition 1 next.
    await b.join_consumer_group(stream, topic, "g")
    details = await a.get_consumer_group(stream, topic, "g")
    assert details is not None and sorted(m.partitions for m in details.members) == [[0], [1]]
    before = a.requests_count
    second = await a.poll_messages(stream, topic, None, PollingStrategy.next(), 1, True, group)
    # Stale answer, SyncConsumerGroup, and the poll of the partition a still owns.
    assert a.requests_count - before == 3
    assert (second.partition_id, [bytes(m.payload) for m in second.messages]) == (0, [b"0-1"])
    # A partition named explicitly that the member does not own gets the stale mark as is.
    foreign = await a.poll_messages(stream, topic, 1, PollingStrategy.next(), 1, False, group)
    assert (foreign.partition_id, foreign.messages) == (0xFFFFFFFF, [])
    mine = await b.poll_messages(stream, topic, None, PollingStrategy.next(), 10, True, group)
    assert (mine.partition_id, [bytes(m.payload) for m in mine.messages]) == (1, [b"1-0", b"1-1", b"1-2"])
    await b.leave_consumer_group(stream, topic, "g")
    with pytest.raises(IggyServerError) as info:
        await b.poll_messages(stream, topic, None, PollingStrategy.next(), 1, False, group)
    assert info.value.code == Status.CONSUMER_GROUP_MEMBER_NOT_FOUND  # sync said: not a member

    # a owns both partitions again, which its assignment ([0]) does not know: polling an owned
    # partition is never stale, so a round of empty polls is what sends it to re-sync.
    await a.send_messages(stream, topic, Partitioning.partition_id(1), [b"1-3"])
    got: list[tuple[int, bytes]] = []
    for _ in range(4):  # 0-2, empty round on 0, sync then 0 (empty), then 1
        batch = await a.poll_messages(stream, topic, None, PollingStrategy.next(), 10, True, group)
        got += [(batch.partition_id, bytes(m.payload)) for m in batch.messages]
    assert got == [(0, b"0-2"), (1, b"1-3")]
    for c in (a, b):
        await c.close()


@pytest.mark.parametrize(("writer_protocol", "reader_protocol"), [("0.8", "0.9"), ("0.9", "0.8")])
async def test_messages_given_one_generation_writing_should_read_the_same_through_the_other(
    shared_server: ServerProcess, writer_protocol: str, reader_protocol: str
) -> None:
    writer = await IggyClient.connect(
        shared_server.address, username="iggy", password="iggy", protocol=writer_protocol
    )
    reader = await IggyClient.connect(
        shared_server.address, username="iggy", password="iggy", protocol=reader_protocol
    )
    stream, topic = await make_topic(writer)
    headers = encode_user_headers(
        {"trace": (HeaderKind.STRING, b"abc-123"), "n": (HeaderKind.UINT32, b"\x07\0\0\0")}
    )
    now_us = time.time_ns() // 1000
    sent = [
        OutgoingMessage(b"first", id=2**127 + 5, user_headers=headers, origin_timestamp_us=now_us),
        OutgoingMessage(b"\x00\xff" * 500, id=7, origin_timestamp_us=now_us + 3),
        OutgoingMessage(b"no-id", origin_timestamp_us=now_us + 9),
    ]
    await writer.send_messages(stream, topic, Partitioning.partition_id(0), sent)
    await writer.send_messages(stream, topic, Partitioning.partition_id(0), [b"second-batch"])

    theirs = await reader.poll_messages(stream, topic, 0, PollingStrategy.first(), 10)
    ours = await writer.poll_messages(stream, topic, 0, PollingStrategy.first(), 10)
    assert [bytes(m.payload) for m in theirs.messages] == [
        b"first",
        b"\x00\xff" * 500,
        b"no-id",
        b"second-batch",
    ]
    assert [m.offset for m in theirs.messages] == [0, 1, 2, 3]
    assert [m.id for m in theirs.messages][:2] == [2**127 + 5, 7]
    assert all(m.id != 0 for m in theirs.messages)
    assert [bytes(m.user_headers) for m in theirs.messages] == [headers, b"", b"", b""]
    assert [m.origin_timestamp_us for m in theirs.messages][:3] == [now_us, now_us + 3, now_us + 9]
    # One broker timestamp per batch as sent, whichever generation reads it.
    stamps = [m.timestamp_us for m in theirs.messages]
    assert stamps[0] == stamps[1] == stamps[2] <= stamps[3] and stamps[0] > 0

    # Each generation's own checksum differs; everything else reads the same both ways.
    def seen(batch: PolledBatch) -> list[tuple[int, int, int, int, bytes, bytes]]:
        return [
            (m.offset, m.id, m.timestamp_us, m.origin_timestamp_us, bytes(m.payload), bytes(m.user_headers))
            for m in batch.messages
        ]

    assert seen(theirs) == seen(ours)
    assert (theirs.partition_id, theirs.current_offset) == (ours.partition_id, ours.current_offset) == (0, 3)
    for c in (writer, reader):
        await c.close()


async def test_send_raw_v09_given_frames_should_refuse_the_other_generation_and_renumber_its_own(
    shared_server: ServerProcess,
) -> None:
    c = await IggyClient.connect(shared_server.address, username="iggy", password="iggy", protocol="0.9")
    stream, topic = await make_topic(c)
    with pytest.raises(ValueError, match=r"0\.9 SendMessages"):
        await c.send_raw(encode_send_frame(stream, topic, Partitioning.partition_id(0), [b"x"], "0.8"))
    assert c.connected  # refused before anything was written
    # The template's header numbers are replaced: sent twice, stored twice (a replayed
    # request number would have been answered without storing anything).
    frame = encode_send_frame(stream, topic, Partitioning.partition_id(0), [b"again"])
    await c.send_raw(frame)
    await c.send_raw(frame)
    batch = await c.poll_messages(stream, topic, 0, PollingStrategy.first(), 10)
    assert [bytes(m.payload) for m in batch.messages] == [b"again", b"again"]
    await c.close()


async def read_request09(reader: asyncio.StreamReader) -> RequestHeader:
    header = RequestHeader.decode(await reader.readexactly(HEADER_SIZE))
    await reader.readexactly(header.body_size)
    return header


async def test_client_v09_given_stale_client_eviction_should_reconnect_and_read_a_split_reply() -> None:
    login = encode_login_reply(LoginReply(user_id=3, session=77))

    async def handler(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        register = await read_request09(reader)
        assert register.operation == Operation.REGISTER and register.session == 0
        writer.write(reply_header_for(register, len(login)).encode() + login)
        ping = await read_request09(reader)
        assert (ping.session, ping.command_code, ping.client) == (77, CommandCode.PING, register.client)
        if n == 0:
            writer.write(eviction_for(ping.client, EvictionReason.STALE_CLIENT).encode())
        else:
            frame = reply_header_for(ping).encode()
            for i in range(len(frame)):  # one byte at a time: the decoder must assemble it
                writer.write(frame[i : i + 1])
                await writer.drain()
        await writer.drain()
        await asyncio.sleep(1)

    server, address, connections = await fake_server(handler)
    async with server:
        c = await IggyClient.connect(
            address,
            username="u",
            password="pw",
            reconnect_retries=1,
            reconnect_interval_s=0.01,
            protocol="0.9",
        )
        assert c.user_id == 3
        await c.ping()  # evicted as stale on the first connection, answered on the second
        assert len(connections) == 2 and c.reconnects_count == 1 and c.connected
        await c.close()


async def test_client_v09_given_frame_that_is_not_a_reply_should_drop_the_connection() -> None:
    async def handler(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ping = await read_request09(reader)
        bad = bytearray(reply_header_for(ping).encode())
        bad[60] = 5  # the command byte says Request: no SDK takes that for a reply (1.3)
        writer.write(bytes(bad))
        await writer.drain()
        await asyncio.sleep(1)

    server, address, connections = await fake_server(handler)
    async with server:
        c = await IggyClient.connect(address, reconnect_retries=0, protocol="0.9")
        with pytest.raises(IggyConnectionError, match="refuses"):
            await c.ping()
        assert not c.connected and len(connections) == 1
        await c.close()

"""The official apache-iggy 0.8.0 SDK against a real ``tidelog serve`` process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from apache_iggy import IggyClient, PollingStrategy, SendMessage

from tests.conftest import ServerProcess


async def connect(server: ServerProcess, user: str = "iggy", password: str = "iggy") -> IggyClient:
    client = IggyClient(server.address)
    await client.connect()
    await client.login_user(user, password)
    return client


async def make_topic(client: IggyClient, stream: str, topic: str, partitions: int = 1) -> None:
    await client.create_stream(stream)
    await client.create_topic(stream, topic, partitions_count=partitions)


def payloads(messages: list) -> list[bytes]:  # type: ignore[type-arg]
    return [m.payload() for m in messages]


async def test_sdk_given_fresh_server_when_login_and_ping_should_succeed(server: ServerProcess) -> None:
    client = await connect(server)
    await client.ping()


async def test_sdk_given_wrong_password_when_login_should_raise_invalid_credentials(
    server: ServerProcess,
) -> None:
    client = IggyClient(server.address)
    await client.connect()
    with pytest.raises(RuntimeError, match="InvalidCredentials"):
        await client.login_user("iggy", "wrong-password")


async def test_sdk_given_connection_string_when_connect_should_log_in(server: ServerProcess) -> None:
    client = IggyClient.from_connection_string(f"iggy+tcp://iggy:iggy@{server.address}")
    await client.connect()
    await client.create_stream("via-conn-string")
    stream = await client.get_stream("via-conn-string")
    assert stream is not None and stream.name == "via-conn-string"


async def test_sdk_given_streams_and_topics_when_created_should_be_readable_by_name_and_id(
    server: ServerProcess,
) -> None:
    client = await connect(server)
    await make_topic(client, "orders", "events", partitions=3)
    stream = await client.get_stream("orders")
    assert stream is not None
    assert (stream.id, stream.name, stream.topics_count) == (0, "orders", 1)
    assert (await client.get_stream(0)) is not None
    assert await client.get_stream("missing") is None
    topic = await client.get_topic("orders", "events")
    assert topic is not None
    assert (topic.id, topic.name, topic.partitions_count) == (0, "events", 3)
    assert await client.get_topic("orders", "nope") is None
    with pytest.raises(RuntimeError, match="StreamNameAlreadyExists"):
        await client.create_stream("orders")
    with pytest.raises(RuntimeError, match="TopicNameAlreadyExists"):
        await client.create_topic("orders", "events", partitions_count=1)


async def test_sdk_given_sent_messages_when_polled_by_offset_should_return_them_in_order(
    server: ServerProcess,
) -> None:
    client = await connect(server)
    await make_topic(client, "s", "t", partitions=2)
    await client.send_messages("s", "t", 1, [SendMessage(f"m{i}") for i in range(10)])
    got = await client.poll_messages("s", "t", 1, PollingStrategy.Offset(0), 100, False)
    assert payloads(got) == [f"m{i}".encode() for i in range(10)]
    assert [m.offset() for m in got] == list(range(10))
    assert all(m.id() != 0 for m in got)  # the server assigns ids the client left at 0
    assert len({m.id() for m in got}) == 10
    assert await client.poll_messages("s", "t", 0, PollingStrategy.Offset(0), 100, False) == []
    got = await client.poll_messages("s", "t", 1, PollingStrategy.Offset(7), 2, False)
    assert [m.offset() for m in got] == [7, 8]
    topic = await client.get_topic("s", "t")
    assert topic is not None and topic.messages_count == 10


async def test_sdk_given_messages_when_polled_first_last_and_timestamp_should_follow_strategy(
    server: ServerProcess,
) -> None:
    client = await connect(server)
    await make_topic(client, "s", "t")
    await client.send_messages("s", "t", 0, [SendMessage(b"a"), SendMessage(b"b")])
    time.sleep(0.01)
    boundary_us = time.time_ns() // 1000
    time.sleep(0.01)
    await client.send_messages("s", "t", 0, [SendMessage(b"c"), SendMessage(b"d"), SendMessage(b"e")])
    first = await client.poll_messages("s", "t", 0, PollingStrategy.First(), 2, False)
    assert payloads(first) == [b"a", b"b"]
    last = await client.poll_messages("s", "t", 0, PollingStrategy.Last(), 2, False)
    assert payloads(last) == [b"d", b"e"]
    by_time = await client.poll_messages("s", "t", 0, PollingStrategy.Timestamp(boundary_us), 10, False)
    assert payloads(by_time) == [b"c", b"d", b"e"]
    assert all(m.timestamp() >= boundary_us for m in by_time)


async def test_sdk_given_auto_commit_when_polling_next_should_resume_after_last_consumed(
    server: ServerProcess,
) -> None:
    client = await connect(server)
    await make_topic(client, "s", "t")
    await client.send_messages("s", "t", 0, [SendMessage(str(i)) for i in range(5)])
    one = await client.poll_messages("s", "t", 0, PollingStrategy.Next(), 2, True)
    two = await client.poll_messages("s", "t", 0, PollingStrategy.Next(), 2, True)
    three = await client.poll_messages("s", "t", 0, PollingStrategy.Next(), 2, True)
    empty = await client.poll_messages("s", "t", 0, PollingStrategy.Next(), 2, True)
    assert payloads(one + two + three) == [b"0", b"1", b"2", b"3", b"4"]
    assert empty == []
    # Without auto-commit, Next does not move.
    again = await client.poll_messages("s", "t", 0, PollingStrategy.Next(), 2, False)
    assert again == []
    await client.send_messages("s", "t", 0, [SendMessage(b"5")])
    peek = await client.poll_messages("s", "t", 0, PollingStrategy.Next(), 2, False)
    peek2 = await client.poll_messages("s", "t", 0, PollingStrategy.Next(), 2, False)
    assert payloads(peek) == payloads(peek2) == [b"5"]


async def test_sdk_given_restart_when_reconnecting_should_find_all_data(
    tmp_path, server_factory: type[ServerProcess]
) -> None:
    srv = server_factory(tmp_path / "data").start()
    client = await connect(srv)
    await make_topic(client, "keep", "t", partitions=2)
    for p in (0, 1):
        await client.send_messages("keep", "t", p, [SendMessage(f"p{p}-{i}") for i in range(50)])
    await client.poll_messages("keep", "t", 1, PollingStrategy.Next(), 20, True)
    assert srv.stop() == 0
    srv2 = server_factory(tmp_path / "data").start()
    assert "2 partitions" in srv2.output and "100 messages" in srv2.output
    client2 = await connect(srv2)
    for p in (0, 1):
        got = await client2.poll_messages("keep", "t", p, PollingStrategy.Offset(0), 100, False)
        assert payloads(got) == [f"p{p}-{i}".encode() for i in range(50)]
    # The stored consumer offset survived too: Next continues at 20.
    nxt = await client2.poll_messages("keep", "t", 1, PollingStrategy.Next(), 1, False)
    assert payloads(nxt) == [b"p1-20"]
    await client2.send_messages("keep", "t", 0, [SendMessage(b"after")])
    tail = await client2.poll_messages("keep", "t", 0, PollingStrategy.Offset(50), 10, False)
    assert [m.offset() for m in tail] == [50]
    srv2.stop()


async def _drain(consumer, want: int, timeout_s: float = 15.0) -> list[tuple[int, bytes]]:  # type: ignore[no-untyped-def]
    got: list[tuple[int, bytes]] = []

    async def run() -> None:
        async for msg in consumer.iter_messages():
            got.append((msg.partition_id(), msg.payload()))
            if len(got) >= want:
                return

    await asyncio.wait_for(run(), timeout_s)
    return got


async def test_sdk_given_consumer_group_when_two_members_should_split_partitions_exactly(
    server: ServerProcess,
) -> None:
    producer = await connect(server)
    await make_topic(producer, "g", "t", partitions=4)
    for p in range(4):
        await producer.send_messages("g", "t", p, [SendMessage(f"{p}:{i}") for i in range(5)])
    c1_client = await connect(server)
    c2_client = await connect(server)
    c1 = await c1_client.consumer_group(
        "workers", "g", "t", batch_length=10, poll_interval=timedelta(milliseconds=10)
    )
    c2 = await c2_client.consumer_group(
        "workers", "g", "t", batch_length=10, poll_interval=timedelta(milliseconds=10)
    )
    got1 = await _drain(c1, 10)
    got2 = await _drain(c2, 10)
    parts1 = {p for p, _ in got1}
    parts2 = {p for p, _ in got2}
    assert parts1 and parts2 and not (parts1 & parts2)
    assert sorted(payload for _, payload in got1 + got2) == sorted(
        f"{p}:{i}".encode() for p in range(4) for i in range(5)
    )


MEMBER_SCRIPT = """
import asyncio, sys
from datetime import timedelta
from apache_iggy import IggyClient

async def main():
    client = IggyClient(sys.argv[1])
    await client.connect()
    await client.login_user("iggy", "iggy")
    await client.consumer_group("w", "g", "t", poll_interval=timedelta(milliseconds=10))
    print("joined", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_sdk_given_group_member_process_dies_when_other_polls_should_take_all_partitions(
    server: ServerProcess,
) -> None:
    producer = await connect(server)
    await make_topic(producer, "g", "t", partitions=2)
    c1_client = await connect(server)
    c1 = await c1_client.consumer_group("w", "g", "t", poll_interval=timedelta(milliseconds=10))
    member = subprocess.Popen(
        [sys.executable, "-c", MEMBER_SCRIPT, server.address], stdout=subprocess.PIPE, text=True
    )
    try:
        assert member.stdout is not None and member.stdout.readline().strip() == "joined"
        # While both are members, each holds one partition: c1 sees only its own.
        for p in range(2):
            await producer.send_messages("g", "t", p, [SendMessage(f"a{p}")])
        first = await _drain(c1, 1)
        await asyncio.sleep(0.3)
        member.kill()  # the connection drops: the server removes the member and rebalances
        member.wait()
        await asyncio.sleep(0.3)
        for p in range(2):
            await producer.send_messages("g", "t", p, [SendMessage(f"b{p}")])
        rest = await _drain(c1, 3)
    finally:
        member.kill()
    got = sorted(payload for _, payload in first + rest)
    # c1 gets its own partition's first message, then everything from both partitions.
    assert len({p for p, _ in first}) == 1
    assert set(got) >= {b"b0", b"b1"} and len(got) == 4

"""Both official SDK generations against one ``tidelog serve``: apache-iggy 0.9 in this process,
apache-iggy 0.8 in a subprocess of the main venv's python (tests/sdk09/sdk08_peer.py).

Each test writes through one generation and reads through the other, comparing what each SDK
reports for the same message (payload, id, offset, timestamp, length) or the same resource.
The 0.8 Python SDK has no user headers, explicit message ids, stored-offset calls or consumer
group listing; where a check needs them the 0.8 side's write goes through the repository's
raw 0.8 wire client (the peer's ``raw_send``), and the read side is always a real SDK.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from apache_iggy import (
    AutoCommit,
    AutoCommitWhen,
    Consumer,
    HeaderKey,
    HeaderValue,
    IggyClient,
    IggyExpiry,
    MaxTopicSize,
    PollingStrategy,
    ReceiveMessage,
    SendMessage,
)

from tests.conftest import ServerProcess
from tests.sdk09.sdkkit import FAST_HEARTBEAT, StoredOffset, connect, get_offset, poll, store_offset
from tidelog.wire.primitives import HeaderKind

REPO_ROOT = Path(__file__).resolve().parents[2]
PEER_SCRIPT = Path(__file__).with_name("sdk08_peer.py")
SDK08_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
PEER_TIMEOUT_S = 20.0
WAIT_S = 10.0
# The consumer the 0.8 SDK's IggyClient.poll_messages polls as (always single consumer 0, it
# takes no consumer argument); the 0.9 side names the same one to share its stored offset.
SDK08_CONSUMER_ID = 0
SDK08_CONSUMER = Consumer.Single(SDK08_CONSUMER_ID)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        not SDK08_PYTHON.exists(), reason=".venv/bin/python (the apache-iggy 0.8 venv) does not exist"
    ),
]

Json = dict[str, Any]


@pytest.fixture(scope="module", autouse=True)
def sdk08_available() -> None:
    """Skip when the main venv exists but has no 0.8 SDK (its peer would fail on the API)."""
    probe = "import importlib.metadata as m; print(m.version('apache-iggy'))"
    done = subprocess.run(
        [str(SDK08_PYTHON), "-c", probe], capture_output=True, text=True, timeout=PEER_TIMEOUT_S
    )
    version = done.stdout.strip()
    if done.returncode != 0 or version.split(".")[:2] != ["0", "8"]:
        pytest.skip(f".venv/bin/python has no apache-iggy 0.8 ({version or done.stderr.strip()[-200:]})")


def _peer_command(server: ServerProcess, ops: list[Json]) -> list[str]:
    return [str(SDK08_PYTHON), str(PEER_SCRIPT), json.dumps({"address": server.address, "ops": ops})]


async def sdk08(server: ServerProcess, *ops: Json) -> list[Any]:
    """Run ``ops`` on one 0.8 SDK client; the result of each, in order."""
    proc = await asyncio.create_subprocess_exec(
        *_peer_command(server, list(ops)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), PEER_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise AssertionError(f"0.8 peer {ops} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    result: list[Any] = json.loads(out.decode().splitlines()[-1])
    return result


def hexes(payloads: list[bytes]) -> list[str]:
    return [p.hex() for p in payloads]


@dataclass(frozen=True, slots=True)
class Seen:
    """What an SDK reports for one polled message; both generations' views must be equal.

    The checksum is left out on purpose: each generation's covers its own frame layout (0.8:
    the 64-byte header's bytes 8..64 + payload + headers; 0.9: the 48-byte frame's bytes 8..48
    + payload + headers), so the same message carries a different one in each."""

    offset: int
    id: int
    timestamp_us: int
    length: int
    partition_id: int
    payload: bytes


def seen09(messages: list[ReceiveMessage]) -> list[Seen]:
    return [
        Seen(m.offset(), m.id(), m.timestamp(), m.length(), m.partition_id(), m.payload()) for m in messages
    ]


def seen08(messages: list[Json]) -> list[Seen]:
    return [
        Seen(
            m["offset"],
            m["id"],
            m["timestamp"],
            m["length"],
            m["partition_id"],
            bytes.fromhex(m["payload"]),
        )
        for m in messages
    ]


def poll08(
    stream: str, topic: str, partition: int, strategy: Json, count: int = 100, auto_commit: bool = False
) -> Json:
    return {
        "op": "poll",
        "stream": stream,
        "topic": topic,
        "partition": partition,
        "strategy": strategy,
        "count": count,
        "auto_commit": auto_commit,
    }


FROM_START: Json = {"kind": "offset", "value": 0}
NEXT: Json = {"kind": "next"}

# Sent by the 0.8 side with explicit ids and user headers (raw_send); what 0.9 must report.
RAW_IDS = [0x1234_5678_9ABC_DEF0_0FED_CBA9_8765_4321, 42]
RAW_HEADERS: Json = {
    "trace": [HeaderKind.STRING, b"abc-123".hex()],
    "attempt": [HeaderKind.UINT32, (7).to_bytes(4, "little").hex()],
}
RAW_HEADERS_09 = {
    HeaderKey.String("trace"): HeaderValue.String("abc-123"),
    HeaderKey.String("attempt"): HeaderValue.UnsignedInt32(7),
}


def sdk08_writes(stream: str, topic: str, partition: int) -> list[Json]:
    """Create stream and topic (2 partitions), send 3 plain messages through the 0.8 SDK and 2
    with ids and headers through the 0.8 wire, all to ``partition``."""
    return [
        {"op": "create_stream", "name": stream},
        {"op": "create_topic", "stream": stream, "name": topic, "partitions": 2},
        {
            "op": "send",
            "stream": stream,
            "topic": topic,
            "partition": partition,
            "payloads": hexes([b"plain-0", b"\x00\xffbinary", b"x" * 3000]),
        },
        {
            "op": "raw_send",
            "stream": stream,
            "topic": topic,
            "partition": partition,
            "messages": [
                {"payload": b"with-headers".hex(), "id": RAW_IDS[0], "headers": RAW_HEADERS},
                {"payload": b"id-only".hex(), "id": RAW_IDS[1]},
            ],
        },
    ]


SDK08_PAYLOADS = [b"plain-0", b"\x00\xffbinary", b"x" * 3000, b"with-headers", b"id-only"]


def check_sdk08_written(seen: list[Seen], polled09: list[ReceiveMessage], partition: int) -> None:
    assert [s.payload for s in seen] == SDK08_PAYLOADS
    assert [s.offset for s in seen] == list(range(5))
    assert {s.partition_id for s in seen} == {partition}
    assert all(s.id != 0 for s in seen[:3])  # the server assigned them
    assert [s.id for s in seen[3:]] == RAW_IDS
    assert [s.length for s in seen] == [len(p) for p in SDK08_PAYLOADS]
    stamps = [s.timestamp_us for s in seen]
    assert stamps == sorted(stamps) and stamps[0] > 0
    assert [m.user_headers() for m in polled09[:3]] == [None, None, None]
    assert polled09[3].user_headers() == RAW_HEADERS_09
    assert polled09[4].user_headers() is None


# ---- messages -----------------------------------------------------------------------------------


async def test_cross_given_sdk08_sends_when_sdk09_polls_should_see_the_same_messages(
    server: ServerProcess, root: IggyClient
) -> None:
    *_, polled08 = await sdk08(server, *sdk08_writes("s", "t", 1), poll08("s", "t", 1, FROM_START))
    polled09 = await poll(root, "s", "t", 1, PollingStrategy.Offset(0))
    assert seen09(polled09) == seen08(polled08)
    check_sdk08_written(seen09(polled09), polled09, partition=1)
    assert await poll(root, "s", "t", 0, PollingStrategy.Offset(0)) == []
    # Strategies other than Offset see the same messages too.
    last = await poll(root, "s", "t", 1, PollingStrategy.Last(), count=2)
    assert seen09(last) == seen08(polled08)[3:]
    mid = seen08(polled08)[2].timestamp_us
    by_time = await poll(root, "s", "t", 1, PollingStrategy.Timestamp(mid))
    assert seen09(by_time) == [s for s in seen08(polled08) if s.timestamp_us >= mid]


async def test_cross_given_sdk09_sends_when_sdk08_polls_should_see_the_same_messages(
    server: ServerProcess, root: IggyClient
) -> None:
    await root.create_stream("s")
    await root.create_topic("s", "t", partitions_count=3)
    sent = [
        SendMessage(b"hdr", user_headers=RAW_HEADERS_09, id=RAW_IDS[0]),
        SendMessage(b"id-only", id=RAW_IDS[1]),
        SendMessage(b"auto-id"),
        SendMessage(bytes(range(256)) * 8),
    ]
    await root.send_messages("s", "t", 2, sent)
    await root.send_messages("s", "t", 2, [SendMessage(b"second-batch")])
    polled09 = await poll(root, "s", "t", 2, PollingStrategy.Offset(0))
    polled08, first_two, last_one = await sdk08(
        server,
        poll08("s", "t", 2, FROM_START),
        poll08("s", "t", 2, {"kind": "first"}, count=2),
        poll08("s", "t", 2, {"kind": "last"}, count=1),
    )
    seen = seen08(polled08)
    assert seen == seen09(polled09)
    assert [s.payload for s in seen] == [
        b"hdr",
        b"id-only",
        b"auto-id",
        bytes(range(256)) * 8,
        b"second-batch",
    ]
    assert [s.offset for s in seen] == list(range(5))
    assert [s.id for s in seen[:2]] == RAW_IDS and seen[2].id != 0
    assert {s.partition_id for s in seen} == {2}
    assert polled09[0].user_headers() == RAW_HEADERS_09
    assert seen08(first_two) == seen[:2] and seen08(last_one) == seen[4:]


# ---- consumer offsets ---------------------------------------------------------------------------


async def test_cross_given_sdk08_auto_commit_when_sdk09_polls_next_should_continue_after_it(
    server: ServerProcess, root: IggyClient
) -> None:
    await root.create_stream("s")
    await root.create_topic("s", "t", partitions_count=1)
    await root.send_messages("s", "t", 0, [SendMessage(f"m{i}") for i in range(8)])
    (first,) = await sdk08(server, poll08("s", "t", 0, NEXT, count=3, auto_commit=True))
    assert [m["offset"] for m in first] == [0, 1, 2]
    assert await get_offset(root, SDK08_CONSUMER_ID, "s", "t", 0) == StoredOffset(0, 7, 2)
    nxt = await poll(
        root, "s", "t", 0, PollingStrategy.Next(), count=2, auto_commit=True, consumer=SDK08_CONSUMER
    )
    assert [m.offset() for m in nxt] == [3, 4]
    # Another consumer id has its own (empty) offset.
    other = await poll(root, "s", "t", 0, PollingStrategy.Next(), count=1, consumer=Consumer.Single(77))
    assert [m.offset() for m in other] == [0]


async def test_cross_given_sdk09_stored_offset_when_sdk08_polls_next_should_continue_after_it(
    server: ServerProcess, root: IggyClient
) -> None:
    await root.create_stream("s")
    await root.create_topic("s", "t", partitions_count=2)
    await root.send_messages("s", "t", 1, [SendMessage(f"m{i}") for i in range(8)])
    await store_offset(root, SDK08_CONSUMER_ID, "s", "t", 1, 4)
    after_store, after_commit = await sdk08(
        server,
        poll08("s", "t", 1, NEXT, count=2, auto_commit=True),
        poll08("s", "t", 1, NEXT, count=1, auto_commit=False),
    )
    assert [m["offset"] for m in after_store] == [5, 6]
    assert [m["offset"] for m in after_commit] == [7]
    # The 0.8 auto-commit moved the offset the 0.9 side reads.
    assert await get_offset(root, SDK08_CONSUMER_ID, "s", "t", 1) == StoredOffset(1, 7, 6)


# ---- streams and topics -------------------------------------------------------------------------


async def test_cross_given_sdk08_created_streams_and_topics_when_sdk09_lists_should_match(
    server: ServerProcess, root: IggyClient
) -> None:
    await sdk08(
        server,
        {"op": "create_stream", "name": "alpha"},
        {"op": "create_stream", "name": "beta"},
        {"op": "create_topic", "stream": "alpha", "name": "plain", "partitions": 2},
        {
            "op": "create_topic",
            "stream": "beta",
            "name": "tuned",
            "partitions": 3,
            "message_expiry_s": 3600,
            "max_topic_size": 10_000_000_000,
        },
    )
    views08 = await sdk08(
        server,
        {"op": "get_stream", "stream": "alpha"},
        {"op": "get_stream", "stream": "beta"},
        {"op": "get_topic", "stream": "alpha", "topic": "plain"},
        {"op": "get_topic", "stream": "beta", "topic": "tuned"},
    )
    streams = sorted(await root.get_streams(), key=lambda s: s.id)
    assert (
        [(s.id, s.name, s.topics_count) for s in streams]
        == [(v["id"], v["name"], v["topics_count"]) for v in views08[:2]]
        == [(0, "alpha", 1), (1, "beta", 1)]
    )
    plain, tuned = await root.get_topic("alpha", "plain"), await root.get_topic("beta", "tuned")
    assert plain is not None and tuned is not None
    assert (
        [(t.id, t.name, t.partitions_count) for t in (plain, tuned)]
        == [(v["id"], v["name"], v["partitions_count"]) for v in views08[2:]]
        == [(0, "plain", 2), (0, "tuned", 3)]
    )
    assert isinstance(plain.message_expiry, IggyExpiry.NeverExpire)
    assert isinstance(plain.max_topic_size, MaxTopicSize.Unlimited)
    assert isinstance(tuned.message_expiry, IggyExpiry.ExpireDuration)
    assert tuned.message_expiry.duration == timedelta(hours=1)
    assert isinstance(tuned.max_topic_size, MaxTopicSize.Custom)
    assert tuned.max_topic_size.bytes == 10_000_000_000
    assert [t.name for t in await root.get_topics(1)] == ["tuned"]
    assert sorted(p.id for p in tuned.partitions) == [0, 1, 2]


async def test_cross_given_sdk09_created_streams_and_topics_when_sdk08_reads_should_match(
    server: ServerProcess, root: IggyClient
) -> None:
    await root.create_stream("first")
    await root.create_stream("second")
    await root.create_topic("second", "a", partitions_count=1)
    await root.create_topic(
        "second",
        "b",
        partitions_count=4,
        message_expiry=IggyExpiry.ExpireDuration(timedelta(minutes=10)),
        max_topic_size=MaxTopicSize.Custom(5_000_000_000),
    )
    await root.send_messages("second", "b", 3, [SendMessage(b"one"), SendMessage(b"two")])
    views = await sdk08(
        server,
        {"op": "get_stream", "stream": "first"},
        {"op": "get_stream", "stream": 1},
        {"op": "get_topic", "stream": "second", "topic": "a"},
        {"op": "get_topic", "stream": 1, "topic": 1},
        {"op": "get_stream", "stream": "missing"},
        {"op": "get_topic", "stream": "second", "topic": "missing"},
    )
    assert views == [
        {"id": 0, "name": "first", "topics_count": 0, "messages_count": 0},
        {"id": 1, "name": "second", "topics_count": 2, "messages_count": 2},
        {"id": 0, "name": "a", "partitions_count": 1, "messages_count": 0},
        {"id": 1, "name": "b", "partitions_count": 4, "messages_count": 2},
        None,
        None,
    ]
    # The 0.8 SDK does not expose expiry or max size; the 0.9 view of the same topic keeps them.
    b = await root.get_topic(1, 1)
    assert b is not None and isinstance(b.message_expiry, IggyExpiry.ExpireDuration)
    assert b.message_expiry.duration == timedelta(minutes=10)
    assert isinstance(b.max_topic_size, MaxTopicSize.Custom) and b.max_topic_size.bytes == 5_000_000_000


# ---- consumer groups ----------------------------------------------------------------------------


async def test_cross_given_sdk08_created_group_when_sdk09_gets_it_should_be_visible(
    server: ServerProcess, root: IggyClient
) -> None:
    await root.create_stream("g")
    await root.create_topic("g", "t", partitions_count=3)
    group_op = {"op": "group", "name": "from08", "stream": "g", "topic": "t", "want": 0, "deadline_s": 1}
    await sdk08(server, group_op)
    group = await root.get_consumer_group("g", "t", "from08")
    assert group is not None
    assert (group.id, group.name, group.partitions_count) == (0, "from08", 3)
    assert [(g.id, g.name) for g in await root.get_consumer_groups("g", "t")] == [(0, "from08")]

    async def no_members() -> bool:
        left = await root.get_consumer_group("g", "t", "from08")
        return left is not None and left.members_count == 0

    # The 0.8 member's connection is gone, so it is no member any more (once the server has
    # seen the close, which can come just after the peer's exit).
    await wait_until(no_members, "the exited 0.8 member to leave")
    # The 0.9 side can join what 0.8 created.
    member = await connect(server)
    await member.join_consumer_group("g", "t", 0)
    joined = await root.get_consumer_group("g", "t", "from08")
    assert joined is not None and joined.members_count == 1
    assert sorted(joined.members[0].partitions) == [0, 1, 2]


async def test_cross_given_one_group_when_sdk09_and_sdk08_members_consume_should_split_exactly_once(
    server: ServerProcess, root: IggyClient
) -> None:
    await root.create_stream("g")
    await root.create_topic("g", "t", partitions_count=2)
    await root.create_consumer_group("g", "t", "mixed")  # created by 0.9, joined by both
    per_partition = 6

    client09 = await connect(server, heartbeat_interval=FAST_HEARTBEAT)
    consumer09 = await client09.consumer_group(
        "mixed",
        "g",
        "t",
        polling_strategy=PollingStrategy.Next(),
        batch_length=10,
        auto_commit=AutoCommit.When(AutoCommitWhen.PollingMessages()),
        create_consumer_group_if_not_exists=False,
        poll_interval=timedelta(milliseconds=10),
    )
    got09: list[tuple[int, bytes]] = []

    async def on_message(msg: ReceiveMessage) -> None:
        got09.append((msg.partition_id(), msg.payload()))

    stop09 = asyncio.Event()

    async def consume09() -> None:
        await consumer09.consume_messages(on_message, stop09)  # a Future, not a coroutine

    task09 = asyncio.create_task(consume09())

    group_op = {
        "op": "group",
        "name": "mixed",
        "stream": "g",
        "topic": "t",
        "create": False,
        "want": per_partition,
        "deadline_s": WAIT_S,
        "grace_s": 0.5,
    }
    peer = await asyncio.create_subprocess_exec(
        *_peer_command(server, [group_op]), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert peer.stdout is not None
        joined = await asyncio.wait_for(peer.stdout.readline(), PEER_TIMEOUT_S)
        assert json.loads(joined) == {"joined": True}, joined

        async def split() -> bool:
            group = await root.get_consumer_group("g", "t", "mixed")
            assert group is not None
            owned = sorted(sorted(m.partitions) for m in group.members)
            return group.members_count == 2 and owned == [[0], [1]]

        await wait_until(split, "the 0.9 and the 0.8 member to hold one partition each")
        # Both learn the split through their own generation before anything is there to poll.
        await asyncio.sleep(3 * FAST_HEARTBEAT.total_seconds())
        expected = {f"{p}:{i}".encode() for p in range(2) for i in range(per_partition)}
        for p in range(2):
            await root.send_messages("g", "t", p, [SendMessage(f"{p}:{i}") for i in range(per_partition)])
        out, err = await asyncio.wait_for(peer.communicate(), PEER_TIMEOUT_S)
        assert peer.returncode == 0, err.decode()[-3000:]
        got08 = [(m.partition_id, m.payload) for m in seen08(json.loads(out.decode().splitlines()[-1])[0])]
        await wait_until(lambda: _at_least(got09, per_partition), "the 0.9 member's share")
        await asyncio.sleep(0.3)  # room for a duplicate to show up
    finally:
        if peer.returncode is None:
            peer.kill()
            await peer.wait()
        stop09.set()
        await asyncio.wait_for(task09, WAIT_S)
    parts08, parts09 = {p for p, _ in got08}, {p for p, _ in got09}
    assert len(parts08) == len(parts09) == 1 and parts08 != parts09, (got08, got09)
    everything = [payload for _, payload in got08 + got09]
    assert sorted(everything) == sorted(expected)  # every message, each exactly once


async def _at_least(got: list[tuple[int, bytes]], count: int) -> bool:
    return len(got) >= count


async def wait_until(check: Any, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


# ---- restart ------------------------------------------------------------------------------------


async def test_cross_given_sdk08_writes_and_restart_when_both_read_should_find_everything(
    tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    srv = server_factory(tmp_path / "data").start()
    *_, before, committed = await sdk08(
        srv,
        *sdk08_writes("keep", "t", 0),
        poll08("keep", "t", 0, FROM_START),
        poll08("keep", "t", 0, NEXT, count=2, auto_commit=True),
    )
    assert [m["offset"] for m in committed] == [0, 1]
    assert srv.stop() == 0

    srv2 = server_factory(tmp_path / "data").start()
    client = await connect(srv2)
    polled09 = await poll(client, "keep", "t", 0, PollingStrategy.Offset(0))
    (after08,) = await sdk08(srv2, poll08("keep", "t", 0, FROM_START))
    assert seen09(polled09) == seen08(before) == seen08(after08)
    check_sdk08_written(seen09(polled09), polled09, partition=0)
    topic = await client.get_topic("keep", "t")
    assert topic is not None and (topic.id, topic.partitions_count, topic.messages_count) == (0, 2, 5)
    # The offset the 0.8 SDK committed before the restart is where 0.9 continues after it.
    assert await get_offset(client, SDK08_CONSUMER_ID, "keep", "t", 0) == StoredOffset(0, 4, 1)
    nxt = await poll(client, "keep", "t", 0, PollingStrategy.Next(), count=1, consumer=SDK08_CONSUMER)
    assert [m.offset() for m in nxt] == [2]
    # And both generations append after the restart where the data ended.
    await client.send_messages("keep", "t", 0, [SendMessage(b"after-09")])
    await sdk08(
        srv2, {"op": "send", "stream": "keep", "topic": "t", "partition": 0, "payloads": hexes([b"after-08"])}
    )
    (tail,) = await sdk08(srv2, poll08("keep", "t", 0, {"kind": "offset", "value": 5}))
    assert [(m["offset"], bytes.fromhex(m["payload"])) for m in tail] == [(5, b"after-09"), (6, b"after-08")]
    srv2.stop()

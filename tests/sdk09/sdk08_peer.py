"""The apache-iggy 0.8 side of tests/sdk09/test_cross_generation.py.

Run by the main venv's python (the one with apache-iggy 0.8.0), never imported by the 0.9
suite: ``python sdk08_peer.py '<json>'`` (or the JSON on stdin). The command is
``{"address": "127.0.0.1:PORT", "ops": [{"op": ..., ...}, ...]}``; every op runs in order on one
logged-in 0.8 SDK client and the last stdout line is the JSON list of their results. Bytes
travel as hex. The ``group`` op is long-lived: it prints ``{"joined": true}`` once its member
is in the group, then consumes and finally prints its results like any other op.

The 0.8 Python SDK cannot attach user headers or choose message ids, so ``raw_send`` sends
those through the repository's own 0.8 wire client (tests/wireclient.py) instead: it is the
one op here that is not the SDK.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from apache_iggy import AutoCommit, AutoCommitWhen, IggyClient, PollingStrategy, ReceiveMessage, SendMessage

Json = dict[str, Any]
Op = Callable[[IggyClient, Json], Awaitable[Any]]

REPO_ROOT = Path(__file__).resolve().parents[2]
GROUP_POLL_INTERVAL = timedelta(milliseconds=10)


def strategy(spec: Json) -> PollingStrategy:
    kind = spec["kind"]
    if kind == "offset":
        return PollingStrategy.Offset(spec["value"])
    if kind == "timestamp":
        return PollingStrategy.Timestamp(spec["value"])
    if kind == "first":
        return PollingStrategy.First()
    if kind == "last":
        return PollingStrategy.Last()
    if kind == "next":
        return PollingStrategy.Next()
    raise ValueError(f"unknown polling strategy {kind!r}")


def message_json(m: ReceiveMessage) -> Json:
    return {
        "offset": m.offset(),
        "id": m.id(),
        "timestamp": m.timestamp(),
        "checksum": m.checksum(),
        "length": m.length(),
        "partition_id": m.partition_id(),
        "payload": m.payload().hex(),
    }


async def op_create_stream(client: IggyClient, cmd: Json) -> None:
    await client.create_stream(cmd["name"])


async def op_create_topic(client: IggyClient, cmd: Json) -> None:
    expiry_s = cmd.get("message_expiry_s")
    await client.create_topic(
        cmd["stream"],
        cmd["name"],
        partitions_count=cmd["partitions"],
        message_expiry=timedelta(seconds=expiry_s) if expiry_s is not None else None,
        max_topic_size=cmd.get("max_topic_size"),
    )


async def op_get_stream(client: IggyClient, cmd: Json) -> Json | None:
    s = await client.get_stream(cmd["stream"])
    if s is None:
        return None
    return {"id": s.id, "name": s.name, "topics_count": s.topics_count, "messages_count": s.messages_count}


async def op_get_topic(client: IggyClient, cmd: Json) -> Json | None:
    t = await client.get_topic(cmd["stream"], cmd["topic"])
    if t is None:
        return None
    return {
        "id": t.id,
        "name": t.name,
        "partitions_count": t.partitions_count,
        "messages_count": t.messages_count,
    }


async def op_send(client: IggyClient, cmd: Json) -> None:
    messages = [SendMessage(bytes.fromhex(p)) for p in cmd["payloads"]]
    await client.send_messages(cmd["stream"], cmd["topic"], cmd["partition"], messages)


async def op_poll(client: IggyClient, cmd: Json) -> list[Json]:
    got = await client.poll_messages(
        cmd["stream"],
        cmd["topic"],
        cmd["partition"],
        strategy(cmd["strategy"]),
        cmd.get("count", 100),
        cmd.get("auto_commit", False),
    )
    return [message_json(m) for m in got]


async def op_raw_send(client: IggyClient, cmd: Json) -> None:
    """SendMessages with explicit ids and user headers over the raw 0.8 wire client.

    ``messages``: ``[{"payload": hex, "id": int, "headers": {key: [kind, hex]}}]``.
    """
    del client  # the SDK has no way to say this
    sys.path.insert(0, str(REPO_ROOT))
    from tests.wireclient import WireClient
    from tidelog.wire import requests as c
    from tidelog.wire.codes import Command, Status
    from tidelog.wire.user_headers import encode_user_headers

    outgoing = [
        c.OutgoingMessage(
            payload=bytes.fromhex(m["payload"]),
            id=m.get("id", 0),
            user_headers=encode_user_headers(
                {k: (kind, bytes.fromhex(v)) for k, (kind, v) in m.get("headers", {}).items()}
            ),
        )
        for m in cmd["messages"]
    ]
    body = c.encode_send_messages(
        cmd["stream"], cmd["topic"], c.Partitioning.partition_id(cmd["partition"]), outgoing
    )
    with WireClient(cmd["address"]) as wire:
        wire.login()
        status, _ = wire.request(Command.SEND_MESSAGES, body)
    if status != Status.OK:
        raise RuntimeError(f"raw SendMessages answered status {status}")


async def op_group(client: IggyClient, cmd: Json) -> list[Json]:
    """Join group ``name`` as a high-level 0.8 member; consume until ``want`` messages have
    arrived, then ``grace_s`` more (so a duplicate or a foreign partition would show up), or
    until ``deadline_s`` passes."""
    consumer = await client.consumer_group(
        cmd["name"],
        cmd["stream"],
        cmd["topic"],
        polling_strategy=PollingStrategy.Next(),
        batch_length=10,
        auto_commit=AutoCommit.When(AutoCommitWhen.PollingMessages()),
        create_consumer_group_if_not_exists=cmd.get("create", True),
        poll_interval=GROUP_POLL_INTERVAL,
    )
    print(json.dumps({"joined": True}), flush=True)
    got: list[Json] = []
    if cmd["want"] == 0:
        return got  # only creating or joining the group was asked for
    enough = asyncio.Event()

    async def consume() -> None:
        async for m in consumer.iter_messages():
            got.append(message_json(m))
            if len(got) >= cmd["want"]:
                enough.set()

    task = asyncio.create_task(consume())
    try:
        await asyncio.wait_for(enough.wait(), cmd["deadline_s"])
        await asyncio.sleep(cmd.get("grace_s", 0.3))
    except TimeoutError:
        pass  # the test sees the short count and fails with it
    finally:
        task.cancel()
    return got


OPS: dict[str, Op] = {
    "create_stream": op_create_stream,
    "create_topic": op_create_topic,
    "get_stream": op_get_stream,
    "get_topic": op_get_topic,
    "send": op_send,
    "poll": op_poll,
    "raw_send": op_raw_send,
    "group": op_group,
}


async def main(command: Json) -> list[Any]:
    client = IggyClient(command["address"])
    await client.connect()
    await client.login_user(command.get("user", "iggy"), command.get("password", "iggy"))
    results: list[Any] = []
    for op in command["ops"]:
        results.append(await OPS[op["op"]](client, {"address": command["address"], **op}))
    return results


if __name__ == "__main__":
    raw = sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read()
    print(json.dumps(asyncio.run(main(json.loads(raw)))), flush=True)
    # Skip interpreter finalisation: under load the 0.8 SDK's Rust runtime, torn down there,
    # sometimes aborts the process (SIGABRT, nothing on stderr) after all the work is done.
    sys.stderr.flush()
    os._exit(0)

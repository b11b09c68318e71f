"""Stream- and topic-scoped permissions enforced by a real server (protocol section 4.8)."""

from __future__ import annotations

import pytest

from tests.conftest import ServerProcess
from tidelog.client import IggyClient, IggyServerError, PollingStrategy
from tidelog.permissions import Permissions, StreamPermissions, TopicPermissions
from tidelog.wire.codes import Status
from tidelog.wire.requests import Partitioning


async def denied(awaitable: object) -> None:
    with pytest.raises(IggyServerError) as info:
        await awaitable  # type: ignore[misc]
    assert info.value.code == Status.UNAUTHORIZED


@pytest.mark.parametrize("protocol", ["0.9", "0.8"])
async def test_permissions_given_stream_and_topic_grants_when_used_should_allow_only_in_scope(
    server: ServerProcess, protocol: str
) -> None:
    root = await IggyClient.connect(server.address, username="iggy", password="iggy", protocol=protocol)
    a = (await root.create_stream("a")).id
    b = (await root.create_stream("b")).id
    for stream in (a, b):
        await root.create_topic(stream, "t1", partitions_count=1)
        await root.create_topic(stream, "t2", partitions_count=1)
    # Writer: may send anywhere in stream a, nothing elsewhere.
    # Reader: may poll topic b/t1 only.
    await root.create_user(
        "writer", "secret", permissions=Permissions(streams={a: StreamPermissions(send_messages=True)})
    )
    await root.create_user(
        "reader",
        "secret",
        permissions=Permissions(
            streams={b: StreamPermissions(topics={0: TopicPermissions(poll_messages=True)})}
        ),
    )
    writer = await IggyClient.connect(server.address, username="writer", password="secret", protocol=protocol)
    reader = await IggyClient.connect(server.address, username="reader", password="secret", protocol=protocol)

    one = Partitioning.partition_id(0)
    await writer.send_messages("a", "t1", one, [b"w1"])
    await writer.send_messages("a", "t2", one, [b"w2"])
    await denied(writer.send_messages("b", "t1", one, [b"nope"]))
    await denied(writer.poll_messages("a", "t1", 0, PollingStrategy.first(), 10))  # send only
    await denied(writer.create_topic("a", "t3", partitions_count=1))
    await denied(writer.get_streams())

    await root.send_messages("b", "t1", one, [b"r1"])
    await root.send_messages("b", "t2", one, [b"r2"])
    got = await reader.poll_messages("b", "t1", 0, PollingStrategy.first(), 10)
    assert [bytes(m.payload) for m in got.messages] == [b"r1"]
    await denied(reader.poll_messages("b", "t2", 0, PollingStrategy.first(), 10))
    await denied(reader.poll_messages("a", "t1", 0, PollingStrategy.first(), 10))
    await denied(reader.send_messages("b", "t1", one, [b"nope"]))

    # Granting later takes effect for the connected client, and revoking does too.
    await root.update_permissions("reader", Permissions(streams={b: StreamPermissions(read_stream=True)}))
    got = await reader.poll_messages("b", "t2", 0, PollingStrategy.first(), 10)
    assert [bytes(m.payload) for m in got.messages] == [b"r2"]
    await root.update_permissions("reader", None)
    await denied(reader.poll_messages("b", "t1", 0, PollingStrategy.first(), 10))
    for client in (root, writer, reader):
        await client.close()

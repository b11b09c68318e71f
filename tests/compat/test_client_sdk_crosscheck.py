"""tidelog's client and the official apache-iggy 0.8.0 SDK on one server: what one writes, the
other reads, byte for byte, with the same offsets, ids, timestamps and checksums."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import xxhash
from apache_iggy import IggyClient as SdkClient
from apache_iggy import PollingStrategy as SdkPollingStrategy
from apache_iggy import SendMessage

from tests.conftest import ServerProcess
from tidelog.client import (
    DEFAULT_CONSUMER,
    IggyClient,
    OutgoingMessage,
    Partitioning,
    PollingStrategy,
)
from tidelog.wire.batch import MESSAGE_HEADER


async def sdk_client(server: ServerProcess) -> SdkClient:
    sdk = SdkClient(server.address)
    await sdk.connect()
    await sdk.login_user("iggy", "iggy")
    return sdk


@pytest.fixture
async def ours(server: ServerProcess) -> AsyncIterator[IggyClient]:
    # The 0.8 generation, as the SDK here: checksums and raw poll bytes are compared as 0.8
    # defines them (a 0.9 client sees 0.9 frames; see tests/integration/test_client.py).
    client = await IggyClient.connect(
        server.address, username="iggy", password="iggy", reconnect_retries=0, protocol="0.8"
    )
    yield client
    await client.close()


async def test_crosscheck_given_tidelog_sent_messages_when_sdk_polls_should_see_same_payloads_ids_offsets(
    server: ServerProcess, ours: IggyClient
) -> None:
    await ours.create_stream("x")
    await ours.create_topic("x", "t", 2)
    payloads = [b"plain", bytes(range(256)), "ünïcødé".encode(), b"\x00" * 1000]
    ids = [1, 2**64 + 7, 2**127 + 3, 0xDEADBEEF]
    await ours.send_messages(
        "x",
        "t",
        Partitioning.partition_id(1),
        [OutgoingMessage(p, id=i, origin_timestamp_us=123) for p, i in zip(payloads, ids, strict=True)],
    )
    await ours.send_messages("x", "t", Partitioning.partition_id(1), [b"tail-1", b"tail-2"])

    sdk = await sdk_client(server)
    got = await sdk.poll_messages("x", "t", 1, SdkPollingStrategy.Offset(0), 100, False)
    assert [m.payload() for m in got] == [*payloads, b"tail-1", b"tail-2"]
    assert [m.offset() for m in got] == list(range(6))
    assert [m.id() for m in got[:4]] == ids
    mine = await ours.poll_messages("x", "t", 1, PollingStrategy.offset(0), 100)
    # Server-assigned ids, timestamps and checksums read the same through both clients.
    assert [m.id() for m in got] == [m.id for m in mine.messages]
    assert [m.timestamp() for m in got] == [m.timestamp_us for m in mine.messages]
    assert [m.checksum() for m in got] == [m.checksum for m in mine.messages]
    assert await sdk.poll_messages("x", "t", 0, SdkPollingStrategy.Offset(0), 100, False) == []
    topic = await sdk.get_topic("x", "t")
    assert topic is not None and topic.messages_count == 6


async def test_crosscheck_given_sdk_sent_messages_when_tidelog_polls_should_see_same_bytes(
    server: ServerProcess, ours: IggyClient
) -> None:
    sdk = await sdk_client(server)
    await sdk.create_stream("y")
    await sdk.create_topic("y", "t", partitions_count=1)
    payloads = [f"sdk-{i}".encode() * (i + 1) for i in range(20)]
    await sdk.send_messages("y", "t", 0, [SendMessage(p) for p in payloads[:10]])
    await sdk.send_messages("y", "t", 0, [SendMessage(p) for p in payloads[10:]])

    batch = await ours.poll_messages("y", "t", 0, PollingStrategy.first(), 100)
    assert batch.partition_id == 0 and batch.current_offset == 19
    assert [bytes(m.payload) for m in batch.messages] == payloads
    assert [m.offset for m in batch.messages] == list(range(20))
    sdk_view = await sdk.poll_messages("y", "t", 0, SdkPollingStrategy.First(), 100, False)
    assert [m.id for m in batch.messages] == [m.id() for m in sdk_view]
    assert all(m.id != 0 for m in batch.messages)

    # The raw poll hands back the stored wire bytes: walk them and check every checksum.
    header, raw = await ours.poll_raw("y", "t", 0, PollingStrategy.offset(5), 3)
    assert header.messages_count == 3
    pos = 0
    offsets = []
    while pos < len(raw):
        checksum, _, _, offset, _, _, headers_length, payload_length, _ = MESSAGE_HEADER.unpack_from(raw, pos)
        end = pos + 64 + payload_length + headers_length
        assert checksum == xxhash.xxh3_64_intdigest(raw[pos + 8 : end])
        offsets.append(offset)
        pos = end
    assert offsets == [5, 6, 7]


async def test_crosscheck_given_sdk_auto_commit_when_tidelog_reads_offset_should_match(
    server: ServerProcess, ours: IggyClient
) -> None:
    sdk = await sdk_client(server)
    await sdk.create_stream("z")
    await sdk.create_topic("z", "t", partitions_count=1)
    await sdk.send_messages("z", "t", 0, [SendMessage(str(i)) for i in range(6)])
    await sdk.poll_messages("z", "t", 0, SdkPollingStrategy.Next(), 4, True)
    # The SDK polls as consumer kind 1, id 0: the same consumer tidelog's client uses by default.
    stored = await ours.get_consumer_offset(DEFAULT_CONSUMER, "z", "t", 0)
    assert stored is not None and (stored.stored_offset, stored.current_offset) == (3, 5)
    rest = await ours.poll_messages("z", "t", 0, PollingStrategy.next(), 10, auto_commit=True)
    assert [bytes(m.payload) for m in rest.messages] == [b"4", b"5"]
    assert await sdk.poll_messages("z", "t", 0, SdkPollingStrategy.Next(), 10, False) == []


async def test_crosscheck_given_token_from_tidelog_client_should_log_the_sdk_in(
    server: ServerProcess, ours: IggyClient
) -> None:
    token = await ours.create_personal_access_token("sdk-login")
    await ours.create_stream("via-token")
    sdk = SdkClient.from_connection_string(f"iggy+tcp://{token}@127.0.0.1:{server.port}")
    await sdk.connect()
    stream = await sdk.get_stream("via-token")
    assert stream is not None and stream.name == "via-token"
    await sdk.create_stream("made-by-sdk")
    created = await ours.get_stream("made-by-sdk")
    assert created is not None
    await ours.delete_personal_access_token("sdk-login")
    refused = SdkClient.from_connection_string(f"iggy+tcp://{token}@127.0.0.1:{server.port}")
    with pytest.raises(RuntimeError):
        await refused.connect()

"""Driving the official apache-iggy 0.9 SDK against a real ``tidelog serve`` (tests/sdk09).

The 0.9 Python SDK has no methods for personal access tokens or stored consumer offsets, so
those go through ``IggyClient.send_binary_request(code, payload)``: the SDK picks the
operation byte for the code, and for result-framed operations hands back the payload after
the 4-byte result section. The bodies here follow sections 2.1-2.3, 2.11, 3.1 and 3.7 of the
0.9 protocol reference.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import IntEnum

from apache_iggy import (
    AutoLogin,
    Consumer,
    IggyClient,
    PollingStrategy,
    ReceiveMessage,
    TcpConfig,
    TcpReconnectionConfig,
)

from tests.conftest import ServerProcess

U64_MAX = (1 << 64) - 1
NEVER_EXPIRE = U64_MAX  # IggyExpiry on the wire (section 2.10)
DEFAULT_CONSUMER_ID = 1
DEFAULT_CONSUMER = Consumer.Single(DEFAULT_CONSUMER_ID)
# Short, so a group member learns a rebalance from the sync after each ping (section 5.4)
# within a fraction of a second rather than after the SDK's default 5 s.
FAST_HEARTBEAT = timedelta(milliseconds=200)

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_PAT_INFO_TAIL = _U64
_OFFSET_RESPONSE = struct.Struct("<IQQ")


class RawCode(IntEnum):
    """Command codes the Python API only reaches through ``send_binary_request``."""

    GET_PERSONAL_ACCESS_TOKENS = 41
    CREATE_PERSONAL_ACCESS_TOKEN = 42
    DELETE_PERSONAL_ACCESS_TOKEN = 43
    GET_CONSUMER_OFFSET = 120
    STORE_CONSUMER_OFFSET = 121
    DELETE_CONSUMER_OFFSET = 122


class IdentifierKind(IntEnum):
    NUMERIC = 1
    STRING = 2


class ConsumerKind(IntEnum):
    SINGLE = 1
    GROUP = 2


class AckLevel(IntEnum):
    NO_ACK = 0
    QUORUM = 1  # what the SDK itself always sends


def tcp_config(
    address: str,
    auto_login: AutoLogin | None = None,
    heartbeat_interval: timedelta | None = None,
) -> TcpConfig:
    # No reconnection: a server that drops the connection fails the call at once, instead of
    # the SDK redialling forever (its default) until the test times out.
    return TcpConfig(
        server_address=address,
        auto_login=auto_login if auto_login is not None else AutoLogin.disabled(),
        reconnection=TcpReconnectionConfig(enabled=False),
        heartbeat_interval=heartbeat_interval,
    )


async def connect(
    server: ServerProcess,
    user: str = "iggy",
    password: str = "iggy",
    heartbeat_interval: timedelta | None = None,
) -> IggyClient:
    """A client connected and logged in with a password."""
    client = IggyClient(tcp_config(server.address, heartbeat_interval=heartbeat_interval))
    await client.connect()
    await client.login_user(user, password)
    return client


async def poll(
    client: IggyClient,
    stream: str | int,
    topic: str | int,
    partition_id: int,
    strategy: PollingStrategy,
    count: int = 100,
    auto_commit: bool = False,
    consumer: Consumer = DEFAULT_CONSUMER,
) -> list[ReceiveMessage]:
    return await client.poll_messages(
        stream,
        topic,
        consumer=consumer,
        polling_strategy=strategy,
        count=count,
        auto_commit=auto_commit,
        partition_id=partition_id,
    )


def payloads(messages: Sequence[ReceiveMessage]) -> list[bytes]:
    return [m.payload() for m in messages]


# ---- raw bodies (send_binary_request) --------------------------------------------------------


def wire_name(text: str) -> bytes:
    raw = text.encode()
    assert 1 <= len(raw) <= 255
    return bytes([len(raw)]) + raw


def identifier(value: int | str) -> bytes:
    if isinstance(value, int):
        return bytes([IdentifierKind.NUMERIC, 4]) + _U32.pack(value)
    return bytes([IdentifierKind.STRING]) + wire_name(value)


def single_consumer(consumer_id: int) -> bytes:
    return bytes([ConsumerKind.SINGLE]) + identifier(consumer_id)


def _offset_target(consumer_id: int, stream: int | str, topic: int | str, partition_id: int) -> bytes:
    # Consumer, stream, topic, then the 5-byte optional partition id (flag 1 = present).
    return (
        single_consumer(consumer_id)
        + identifier(stream)
        + identifier(topic)
        + b"\x01"
        + _U32.pack(partition_id)
    )


@dataclass(frozen=True, slots=True)
class PatInfo:
    name: str
    expiry_at_us: int  # 0 = never


@dataclass(frozen=True, slots=True)
class StoredOffset:
    partition_id: int
    current_offset: int
    stored_offset: int


def _read_name(raw: bytes, at: int) -> tuple[str, int]:
    length = raw[at]
    return raw[at + 1 : at + 1 + length].decode(), at + 1 + length


async def create_pat(client: IggyClient, name: str, expiry_us: int = NEVER_EXPIRE) -> str:
    reply = await client.send_binary_request(
        RawCode.CREATE_PERSONAL_ACCESS_TOKEN, wire_name(name) + _U64.pack(expiry_us)
    )
    token, end = _read_name(reply, 0)  # RawPersonalAccessTokenResponse
    assert end == len(reply), reply.hex()
    return token


async def list_pats(client: IggyClient) -> list[PatInfo]:
    reply = await client.send_binary_request(RawCode.GET_PERSONAL_ACCESS_TOKENS, b"")
    out: list[PatInfo] = []
    at = 0
    while at < len(reply):
        name, at = _read_name(reply, at)
        (expiry_at,) = _PAT_INFO_TAIL.unpack_from(reply, at)
        at += _PAT_INFO_TAIL.size
        out.append(PatInfo(name, expiry_at))
    return out


async def delete_pat(client: IggyClient, name: str) -> None:
    reply = await client.send_binary_request(RawCode.DELETE_PERSONAL_ACCESS_TOKEN, wire_name(name))
    assert reply == b"", reply.hex()


async def get_offset(
    client: IggyClient, consumer_id: int, stream: int | str, topic: int | str, partition_id: int
) -> StoredOffset | None:
    """The stored offset of a single consumer, or None when nothing is stored (empty reply)."""
    reply = await client.send_binary_request(
        RawCode.GET_CONSUMER_OFFSET, _offset_target(consumer_id, stream, topic, partition_id)
    )
    if not reply:
        return None
    assert len(reply) == _OFFSET_RESPONSE.size, reply.hex()
    return StoredOffset(*_OFFSET_RESPONSE.unpack(reply))


async def store_offset(
    client: IggyClient, consumer_id: int, stream: int | str, topic: int | str, partition_id: int, offset: int
) -> None:
    target = _offset_target(consumer_id, stream, topic, partition_id)
    body = target + _U64.pack(offset) + bytes([AckLevel.QUORUM])
    reply = await client.send_binary_request(RawCode.STORE_CONSUMER_OFFSET, body)
    assert reply == b"", reply.hex()


async def delete_offset(
    client: IggyClient, consumer_id: int, stream: int | str, topic: int | str, partition_id: int
) -> None:
    body = _offset_target(consumer_id, stream, topic, partition_id) + bytes([AckLevel.QUORUM])
    reply = await client.send_binary_request(RawCode.DELETE_CONSUMER_OFFSET, body)
    assert reply == b"", reply.hex()

"""A tiny synchronous raw-socket client for server tests (crash, bad input, fuzz).

It speaks the Iggy 0.8 classic framing by driving the client-side state machine of
``tidelog.wire.framing`` (``ClientFraming``) and adds nothing clever: one blocking socket,
one request at a time, each read exactly what the machine asks for, so replies are read as
the SDK reads them (protocol reference 1.3: a non-zero status ends the frame at its 8-byte
header; a length <= 1 means an empty payload) and nothing past a reply is consumed. Tests
that need malformed bytes use :meth:`WireClient.send_raw` and :meth:`WireClient.read_reply`.

:func:`verify_stored` is the independent check of what a server stores: it recomputes every
message checksum with ``xxhash`` itself instead of trusting the server's storage code.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import xxhash

from tidelog.wire import framing
from tidelog.wire import requests as c
from tidelog.wire.batch import CHECKSUMMED_FROM
from tidelog.wire.codes import (
    MESSAGE_HEADER_SIZE,
    POLL_REPLY_HEADER_SIZE,
    U32_MAX,
    Command,
    CompressionAlgorithm,
    Status,
)
from tidelog.wire.primitives import Consumer, ConsumerKind, Identifier, PollingKind
from tidelog.wire.records import (
    ClientInfo,
    Identity,
    PollHeader,
    StreamInfo,
    TopicDetails,
    decode_list,
    decode_poll_reply,
    decode_record,
)

_U32 = struct.Struct("<I")
ROOT_USER, ROOT_PASSWORD = "iggy", "iggy"


class Request(Protocol):
    """Any typed request of ``tidelog.wire.requests``."""

    @property
    def CODE(self) -> int: ...

    def encode(self) -> bytes: ...


class ServerClosed(ConnectionError):
    """The server closed the connection (EOF or reset) while a reply was expected."""


class WireError(Exception):
    """A request answered with a non-zero status."""

    def __init__(self, code: int, status: int) -> None:
        name = Status(status).name if status in Status._value2member_map_ else "?"
        super().__init__(f"command {code} failed with status {status} ({name})")
        self.code = code
        self.status = status


@dataclass(frozen=True)
class StoredMessage:
    """One message of a poll reply with its raw stored bytes."""

    offset: int
    id: int
    checksum: int
    timestamp_us: int
    reserved: int
    payload: bytes
    raw: bytes

    @property
    def checksum_ok(self) -> bool:
        return xxhash.xxh3_64_intdigest(self.raw[CHECKSUMMED_FROM:]) == self.checksum


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


class WireClient:
    def __init__(self, address: str, timeout_s: float = 10.0) -> None:
        self.address = address
        self.sock = socket.create_connection(parse_address(address), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # No cap of its own: tests decide what a reply may be.
        self._framing = framing.ClientFraming(max_payload_bytes=U32_MAX)

    def __enter__(self) -> WireClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def abort(self) -> None:
        """Close with a TCP reset instead of a FIN (a client that vanishes rudely)."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    # ---- raw bytes -------------------------------------------------------------------------
    def send_raw(self, data: bytes | bytearray | memoryview) -> None:
        self.sock.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        chunks: list[bytes] = []
        got = 0
        while got < n:
            try:
                chunk = self.sock.recv(min(n - got, 1 << 20))
            except ConnectionResetError as exc:
                raise ServerClosed("connection reset") from exc
            if not chunk:
                raise ServerClosed(f"EOF after {got} of {n} bytes")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def read_reply(self) -> tuple[int, bytes]:
        machine = self._framing
        while True:
            try:
                n = self.sock.recv_into(machine.buffer())
            except ConnectionResetError as exc:
                raise ServerClosed("connection reset") from exc
            if n == 0:
                raise ServerClosed(f"EOF after {machine.buffered_bytes} bytes of a reply")
            event = machine.received(n)
            if event is None:
                continue
            if isinstance(event, framing.FramingError):
                raise AssertionError(f"unreadable reply: {event.detail}")
            return event.status, bytes(event.payload)

    def is_closed_by_server(self, wait_s: float = 2.0) -> bool:
        """True when the server closes the connection within ``wait_s`` (no bytes pending)."""
        old = self.sock.gettimeout()
        self.sock.settimeout(wait_s)
        try:
            data = self.sock.recv(1)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(old)
        assert not data, f"unexpected bytes from the server: {data!r}"
        return True

    # ---- requests --------------------------------------------------------------------------
    def request(self, code: int, payload: bytes = b"") -> tuple[int, bytes]:
        self.send_raw(self._framing.request(code, payload))
        return self.read_reply()

    def call(self, req: Request) -> bytes:
        """Send a typed request (a ``tidelog.wire.requests`` dataclass); raise WireError on failure."""
        code = int(req.CODE)
        status, payload = self.request(code, req.encode())
        if status != Status.OK:
            raise WireError(code, status)
        return payload

    def ping(self) -> None:
        self.call(c.Ping())

    def login(self, username: str = ROOT_USER, password: str = ROOT_PASSWORD) -> int:
        payload = self.call(c.LoginUser(username, password))
        return decode_record(Identity, payload).user_id

    def create_stream(self, name: str) -> int:
        return decode_record(StreamInfo, self.call(c.CreateStream(name))).id

    def create_topic(self, stream: Identifier, name: str, partitions: int) -> int:
        req = c.CreateTopic(
            stream_id=stream,
            partitions_count=partitions,
            compression_algorithm=CompressionAlgorithm.NONE,
            message_expiry=0,
            max_topic_size=0,
            replication_factor=0,
            name=name,
        )
        return decode_record(TopicDetails, self.call(req)).topic.id

    def send_status(
        self, stream: Identifier, topic: Identifier, partition: int, payloads: Sequence[bytes]
    ) -> int:
        """SendMessages to one partition; return the reply status (0 = acknowledged)."""
        messages = [c.OutgoingMessage(payload=p) for p in payloads]
        body = c.encode_send_messages(stream, topic, c.Partitioning.partition_id(partition), messages)
        return self.request(Command.SEND_MESSAGES, body)[0]

    def send(self, stream: Identifier, topic: Identifier, partition: int, payloads: Sequence[bytes]) -> None:
        status = self.send_status(stream, topic, partition, payloads)
        if status != Status.OK:
            raise WireError(Command.SEND_MESSAGES, status)

    def poll_raw(
        self, stream: Identifier, topic: Identifier, partition: int, offset: int, count: int
    ) -> bytes:
        """The whole PollMessages reply payload (Offset strategy, consumer 1/0, no commit)."""
        req = c.PollMessages(
            consumer=Consumer(ConsumerKind.CONSUMER, 0),
            stream_id=stream,
            topic_id=topic,
            partition_id=partition,
            strategy_kind=PollingKind.OFFSET,
            strategy_value=offset,
            count=count,
            auto_commit=False,
        )
        return self.call(req)

    def poll(
        self, stream: Identifier, topic: Identifier, partition: int, offset: int, count: int
    ) -> tuple[PollHeader, list[StoredMessage]]:
        return split_poll_reply(self.poll_raw(stream, topic, partition, offset, count))

    def poll_all(
        self, stream: Identifier, topic: Identifier, partition: int, batch_count: int = 1000
    ) -> list[StoredMessage]:
        out: list[StoredMessage] = []
        offset = 0
        while True:
            _, messages = self.poll(stream, topic, partition, offset, batch_count)
            if not messages:
                return out
            out.extend(messages)
            offset = messages[-1].offset + 1

    def client_count(self) -> int:
        """Connected clients as the server counts them (GetClients)."""
        return len(decode_list(ClientInfo, self.call(c.GetClients())))


def split_poll_reply(payload: bytes) -> tuple[PollHeader, list[StoredMessage]]:
    """Decode a poll reply with the codec and keep each message's raw bytes alongside."""
    header, polled = decode_poll_reply(payload)
    out: list[StoredMessage] = []
    pos = POLL_REPLY_HEADER_SIZE
    for m in polled:
        end = pos + MESSAGE_HEADER_SIZE + m.payload_length + m.user_headers_length
        out.append(
            StoredMessage(
                offset=m.offset,
                id=m.id,
                checksum=m.checksum,
                timestamp_us=m.timestamp_us,
                reserved=m.reserved,
                payload=bytes(m.payload),
                raw=payload[pos:end],
            )
        )
        pos = end
    assert pos == len(payload), f"poll reply has {len(payload) - pos} undecoded trailing bytes"
    assert header.messages_count == len(out), f"header says {header.messages_count}, got {len(out)}"
    return header, out


def verify_stored(messages: Sequence[StoredMessage], first_offset: int = 0) -> None:
    """Offsets contiguous from ``first_offset``, checksums right, reserved zero."""
    for i, m in enumerate(messages):
        assert m.offset == first_offset + i, f"message {i}: offset {m.offset}, expected {first_offset + i}"
        assert m.checksum_ok, f"offset {m.offset}: checksum does not verify"
        assert m.reserved == 0, f"offset {m.offset}: reserved {m.reserved}"


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0, interval_s: float = 0.02) -> bool:
    """Poll ``predicate()`` until it is true or the time is up; return whether it became true."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)

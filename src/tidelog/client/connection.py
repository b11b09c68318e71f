"""A typed asyncio client for both Iggy protocol generations: one connection, every command.

``protocol="0.9"`` (the default, the current generation) speaks the 256-byte VSR framing of
``shared/protocol/iggy-0.9-vsr.md``: a Register login that binds a session, result sections,
evictions, batch records, and consumer groups whose members sync their assignment (606) and
poll explicit partitions. ``protocol="0.8"`` speaks the classic 8-byte framing. Every method
has the same signature and return types under both; what differs above the framing is in
:mod:`tidelog.client.codec`.

Encoding and decoding are the sans-IO codecs' (``tidelog.wire``); this module only moves
frames. One request is in flight per connection (an ``asyncio.Lock``), exactly as the SDKs
do. A 0.8 reply is read as an 8-byte header followed by exactly ``length`` bytes, received
straight into one buffer that polled messages then view without copying; 0.9 replies are
split by ``wire.v09.frames.ReplyDecoder``.

A dropped connection (EOF, reset, the server's ``Disconnected`` / ``StaleClient`` status, or a
0.9 ``StaleClient`` eviction) is re-established up to ``reconnect_retries`` times, the stored
credentials log it in again, joined consumer groups are re-joined, and the request is retried
once. A server error is never retried; it raises :class:`IggyServerError` carrying the code
and its name, whether it came as a status, a 0.9 result-section rejection or an eviction
(:class:`IggyEvictedError`, which also ends the connection).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import re
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, Self, TypeVar, cast

from tidelog.client.codec import CODECS, Codec
from tidelog.permissions import Permissions
from tidelog.wire import framing
from tidelog.wire.codes import (
    FRAME_HEADER_SIZE,
    POLL_REPLY_HEADER_SIZE,
    U32_MAX,
    Command,
    CompressionAlgorithm,
    IggyError,
    Status,
    UserStatus,
)
from tidelog.wire.primitives import (
    BytesLike,
    Consumer,
    ConsumerKind,
    Identifier,
    PollingKind,
    Reader,
    SnapshotCompression,
    SnapshotType,
    identifier_from_user,
)
from tidelog.wire.records import (
    ClientDetails,
    ClientInfo,
    ClusterMetadata,
    ConsumerGroupDetails,
    ConsumerGroupInfo,
    ConsumerOffsetInfo,
    Identity,
    PersonalAccessTokenInfo,
    PolledMessage,
    PollHeader,
    RawPersonalAccessToken,
    Stats,
    StreamDetails,
    StreamInfo,
    TopicDetails,
    TopicInfo,
    UserDetails,
    UserInfo,
    decode_list,
    decode_record,
)
from tidelog.wire.requests import (
    ChangePassword,
    CreateConsumerGroup,
    CreatePartitions,
    CreatePersonalAccessToken,
    CreateStream,
    CreateUser,
    DeleteConsumerGroup,
    DeletePartitions,
    DeletePersonalAccessToken,
    DeleteSegments,
    DeleteStream,
    DeleteTopic,
    DeleteUser,
    FlushUnsavedBuffer,
    GetClient,
    GetConsumerGroup,
    GetConsumerGroups,
    GetConsumerOffset,
    GetSnapshot,
    GetStream,
    GetTopic,
    GetTopics,
    GetUser,
    JoinConsumerGroup,
    LeaveConsumerGroup,
    LoginUser,
    LoginWithPersonalAccessToken,
    OutgoingMessage,
    Partitioning,
    PollMessages,
    PurgeStream,
    PurgeTopic,
    UpdatePermissions,
    UpdateStream,
    UpdateUser,
)
from tidelog.wire.v09 import frames as f09
from tidelog.wire.v09.bodies import SyncConsumerGroup, decode_sync_group09
from tidelog.wire.v09.codes import (
    EVICTION_SDK_ERROR,
    PROTOCOL_VERSION,
    STATUS_OK,
    CommandCode,
    EvictionReason,
    Operation,
    ReplyFraming,
    Status09,
    VsrCommand,
    operation_for_code,
    reply_framing,
)
from tidelog.wire.v09.frames import Generation
from tidelog.wire.v09.header import HEADER_SIZE, RequestHeader, request_header_for

if TYPE_CHECKING:
    from tidelog.client.consumer import Consumer as HighLevelConsumer
    from tidelog.client.producer import Producer

log = logging.getLogger("tidelog.client")

ConsumerId = Consumer
"""The wire consumer (kind, id) of polls and offsets; the high-level reader is ``client.Consumer``."""

DEFAULT_CONSUMER = Consumer(ConsumerKind.CONSUMER, 0)
DEFAULT_ADDRESS = "127.0.0.1:8090"

ProtocolGeneration = Generation
"""The protocol generation a client speaks: ``ProtocolGeneration("0.9")`` (VSR framing, the
default) or ``ProtocolGeneration("0.8")`` (classic framing)."""
DEFAULT_PROTOCOL = Generation.V09

_EMPTY = memoryview(b"")
# Below this a request is joined into one write; above it the payload goes out unjoined.
_JOIN_WRITE_MAX_BYTES = 16 * 1024
# The SDK reconnects and retries on these instead of surfacing them (protocol section 1.5);
# a 0.9 StaleClient eviction maps to the same code.
_DROP_STATUSES = frozenset({Status.DISCONNECTED, Status.STALE_CLIENT})
# A server sends at most a goodbye frame unasked; more than this is not an Iggy server.
_UNCLAIMED_MAX = 4
# What the 0.9 login says the client is (section 3.2): the SDK generation it speaks.
_CLIENT_VERSION = f09.ClientVersionInfo(PROTOCOL_VERSION, "tidelog-client", "0.11.0")
# Section 4.5: the partition id of an empty group poll whose assignment is stale.
_STALE_ASSIGNMENT_PARTITION_ID = U32_MAX
# A 0.9 group member re-syncs at least this often, as the SDK does after each heartbeat
# ping (section 5.4), so partitions it gains while busy are not left unread for long.
_ASSIGNMENT_MAX_AGE_S = 5.0
# Assignments of groups a client polls; past this many the cache starts over.
_ASSIGNMENTS_MAX = 1024
_ALREADY_EXISTS = frozenset(
    {
        Status.STREAM_NAME_ALREADY_EXISTS,
        Status.TOPIC_NAME_ALREADY_EXISTS,
        Status.USER_ALREADY_EXISTS,
        Status.PERSONAL_ACCESS_TOKEN_ALREADY_EXISTS,
        Status.CONSUMER_GROUP_NAME_ALREADY_EXISTS,
    }
)
_CONNECTION_PREFIXES = ("iggy+tcp://", "iggy://")

# ---------------------------------------------------------------------------------------------
# Errors


def status_name(code: int) -> str:
    """The :class:`Status` name of ``code`` (or of the codes 0.9 adds, ``Status09``), or
    ``"UNKNOWN"`` for a code this client does not know."""
    for table in (Status, Status09):
        if code in table._value2member_map_:
            return table(code).name
    return "UNKNOWN"


def _command_name(command: int) -> str:
    for table in (Command, CommandCode):
        if command in table._value2member_map_:
            return table(command).name
    return f"command {command}"


class IggyServerError(IggyError):
    """The server refused a request: an error status, or in 0.9 a result-section rejection.

    ``status`` (and ``code``) is the numeric code as received, ``name`` its :class:`Status`
    name (``"UNKNOWN"`` for codes outside the table), ``command`` the request's code.
    """

    def __init__(self, code: int, command: int = 0, detail: str = "") -> None:
        name = status_name(code)
        Exception.__init__(
            self, f"{name} ({code}) in reply to {_command_name(command)}{': ' + detail if detail else ''}"
        )
        # IggyError types `status` as Status; an unknown code must still keep its number.
        self.status = code  # type: ignore[assignment]
        self.code = code
        self.name = name
        self.command = command
        self.detail = detail

    @property
    def already_exists(self) -> bool:
        """True for the codes the SDK treats as "already exists" (1012, 2013, 46, 51, 5004)."""
        return self.code in _ALREADY_EXISTS


class IggyEvictedError(IggyServerError):
    """A 0.9 server evicted the session (section 1.6): a refused login, no session, a stale
    client. ``reason`` is the eviction reason byte (an :class:`EvictionReason` when known);
    ``code`` is the error the SDK raises for it (``INVALID_CREDENTIALS`` for a wrong password,
    ``UNAUTHENTICATED`` for a request before login, ...). The connection is closed: the next
    request opens a new one."""

    def __init__(self, reason: int, command: int = 0) -> None:
        known = reason in EvictionReason._value2member_map_
        code = EVICTION_SDK_ERROR[EvictionReason(reason)] if known else Status.ERROR
        why = EvictionReason(reason).name if known else "UNKNOWN"
        super().__init__(code, command, f"the server evicted the session ({why}, reason {reason})")
        self.reason: EvictionReason | int = EvictionReason(reason) if known else reason


class IggyConnectionError(ConnectionError):
    """No usable connection: refused, dropped beyond the reconnect budget, or closed."""


class IggyTimeoutError(TimeoutError):
    """A request got no reply within ``timeout_s``; its connection was closed."""


# ---------------------------------------------------------------------------------------------
# Value types


@dataclass(frozen=True, slots=True)
class PollingStrategy:
    kind: int
    value: int = 0

    @classmethod
    def offset(cls, offset: int) -> PollingStrategy:
        return cls(PollingKind.OFFSET, offset)

    @classmethod
    def timestamp(cls, timestamp_us: int) -> PollingStrategy:
        return cls(PollingKind.TIMESTAMP, timestamp_us)

    @classmethod
    def first(cls) -> PollingStrategy:
        return cls(PollingKind.FIRST)

    @classmethod
    def last(cls) -> PollingStrategy:
        return cls(PollingKind.LAST)

    @classmethod
    def next(cls) -> PollingStrategy:
        return cls(PollingKind.NEXT)


@dataclass(frozen=True, slots=True)
class PolledBatch:
    """A poll reply: ``messages`` are views over the one buffer the reply was received into."""

    partition_id: int
    current_offset: int
    messages: list[PolledMessage] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.messages)

    @property
    def last_offset(self) -> int | None:
        return self.messages[-1].offset if self.messages else None


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """What a connection string says (protocol reference section 1.5)."""

    address: str
    username: str | None = None
    password: str | None = None
    token: str | None = None
    reconnect_retries: int | None = 3
    """``None`` = unlimited."""
    reconnect_interval_s: float = 1.0
    nodelay: bool = True
    heartbeat_interval_s: float | None = None
    protocol: Generation = DEFAULT_PROTOCOL
    """``?protocol=0.9|0.8``, tidelog's own option (the SDKs each speak one generation)."""


def parse_protocol(value: str | Generation) -> Generation:
    """``"0.9"`` / ``"0.8"`` (or a :data:`ProtocolGeneration`) -> the generation."""
    try:
        return Generation(value)
    except ValueError:
        choices = ", ".join(repr(g.value) for g in Generation)
        raise ValueError(f"protocol must be one of {choices}, got {value!r}") from None


_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s|sec|secs|m|min|mins|h)?\s*")
_DURATION_UNIT_S = {
    None: 1.0,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "h": 3600.0,
}


def parse_duration_s(text: str) -> float:
    """``"1s"``, ``"500ms"``, ``"1m 30s"`` (humantime, as the SDK accepts) -> seconds."""
    total = 0.0
    pos = 0
    text = text.strip()
    if not text:
        raise ValueError("empty duration")
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _DURATION_UNIT_S[m.group(2)]
        pos = m.end()
    return total


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"invalid boolean {text!r}")


def parse_connection_string(text: str) -> ConnectionOptions:
    """``iggy+tcp://user:pass@host:port?opts`` or ``iggy+tcp://TOKEN@host:port?opts``.

    Split the way the SDK splits it (on ``@``, then ``:``), not as a URL: a personal access
    token is base64 and may hold ``/``, ``+`` and ``=``.
    """
    for prefix in _CONNECTION_PREFIXES:
        if text.startswith(prefix):
            rest = text[len(prefix) :]
            break
    else:
        raise ValueError(f"connection string must start with one of {_CONNECTION_PREFIXES}")
    credentials, at, server = rest.rpartition("@")
    address, _, query = server.partition("?")
    if not address or ":" not in address:
        raise ValueError(f"connection string needs host:port, got {address!r}")
    username = password = token = None
    if at:
        user, colon, secret = credentials.partition(":")
        if colon:
            if not user or not secret:
                raise ValueError("connection string has an empty username or password")
            username, password = user, secret
        elif user:
            token = user
        else:
            raise ValueError("connection string has '@' but no credentials")
    options: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"connection string option {item!r} has no value")
        if key == "reconnection_retries":
            options["reconnect_retries"] = None if value == "unlimited" else int(value)
        elif key == "reconnection_interval":
            options["reconnect_interval_s"] = parse_duration_s(value)
        elif key == "nodelay":
            options["nodelay"] = _parse_bool(value)
        elif key == "heartbeat_interval":
            options["heartbeat_interval_s"] = parse_duration_s(value)
        elif key == "protocol":
            options["protocol"] = parse_protocol(value)
        elif key == "tls":
            if _parse_bool(value):
                raise ValueError("TLS is not supported by this client")
        elif key in ("reestablish_after", "tls_domain", "tls_ca_file"):
            pass  # accepted for SDK compatibility; nothing to configure here
        else:
            raise ValueError(f"unknown connection string option {key!r}")
    return ConnectionOptions(address, username, password, token, **options)


def split_address(address: str) -> tuple[str, int]:
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ValueError(f"address must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def _ident(value: int | str) -> Identifier:
    return identifier_from_user(value)


def encode_send_frame(
    stream: int | str,
    topic: int | str,
    partitioning: Partitioning,
    messages: Sequence[OutgoingMessage | bytes],
    protocol: str | Generation = DEFAULT_PROTOCOL,
) -> bytes:
    """A whole SendMessages request frame of ``protocol``, for :meth:`IggyClient.send_raw`.

    A 0.8 frame is sent as it is. A 0.9 frame's header is a template: the client, session and
    request number are the connection's, so ``send_raw`` writes a fresh header before the
    body, which it sends unchanged (the batch in it, ids and checksums included).
    """
    generation = parse_protocol(protocol)
    payload = _send_payload(CODECS[generation], stream, topic, partitioning, messages)
    if generation is Generation.V09:
        header = request_header_for(Operation.SEND_MESSAGES, payload, client=0)
        return header.encode() + payload
    return framing.encode_request(Command.SEND_MESSAGES, payload)


def _send_payload(
    codec: Codec,
    stream: int | str,
    topic: int | str,
    partitioning: Partitioning,
    messages: Sequence[OutgoingMessage | bytes],
) -> bytes:
    if not messages:
        raise ValueError("send_messages needs at least one message")
    batch = [m if isinstance(m, OutgoingMessage) else OutgoingMessage(bytes(m)) for m in messages]
    return codec.send_messages(_ident(stream), _ident(topic), partitioning, batch)


# ---------------------------------------------------------------------------------------------
# The wire: one TCP connection

A = TypeVar("A")
"""What a wire delivers per received frame: 0.8 ``(status, payload)``, 0.9 a decoder event."""


@dataclass(slots=True)
class _Counters:
    """Shared by a client and its successive wires."""

    requests: int = 0


class _Wire(asyncio.BufferedProtocol, Generic[A], abc.ABC):
    """What both generations' connections share: one request in flight and the waiter for its
    answer, write backpressure, and the loss of the line. Subclasses frame requests, split
    replies (``get_buffer`` / ``buffer_updated``) and turn answers into results or errors."""

    generation: ClassVar[Generation]

    def __init__(self, max_reply_bytes: int, counters: _Counters) -> None:
        self._counters = counters
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[A] | None = None
        # Frames that came with nobody waiting: only the server's goodbye (Disconnected).
        self._unclaimed: deque[A] = deque()
        self._lost: IggyConnectionError | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.peer = ""

    # -- protocol callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport quacks like asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    def eof_received(self) -> bool:
        self._fail(IggyConnectionError(f"server {self.peer} closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else ""
        self._fail(IggyConnectionError(f"connection to {self.peer} lost{reason}"))
        self._transport = None
        self._wake_drain()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # -- internals -----------------------------------------------------------------------------

    def _deliver(self, answer: A) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result(answer)
        elif len(self._unclaimed) < _UNCLAIMED_MAX:
            self._unclaimed.append(answer)
        else:
            self._break(f"server {self.peer} sent {_UNCLAIMED_MAX} frames nobody asked for")

    def _break(self, why: str) -> None:
        """The byte stream cannot be trusted any more: fail the request and cut the line."""
        self._fail(IggyConnectionError(why))
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, exc: IggyConnectionError) -> None:
        if self._lost is None:
            self._lost = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_exception(self._lost)

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            self._drain_waiter = None
            waiter.set_result(None)

    @staticmethod
    def _on_timeout(waiter: asyncio.Future[A], timeout_s: float) -> None:
        if not waiter.done():
            waiter.set_exception(IggyTimeoutError(f"no reply within {timeout_s} s"))

    # -- requests ------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return self._lost is None and self._transport is not None and not self._transport.is_closing()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._fail(IggyConnectionError("connection abandoned"))

    async def _roundtrip(self, head: BytesLike, tail: BytesLike | None, timeout_s: float | None) -> A:
        """Write one frame (``head`` then ``tail``) and wait for the one answer it gets."""
        transport = self._transport
        if self._lost is not None:
            raise self._lost
        assert transport is not None and self._waiter is None, "one request at a time"
        if tail is None:
            transport.write(head)
        else:
            transport.writelines((head, tail))
        self._counters.requests += 1
        loop = asyncio.get_running_loop()
        if self._write_paused:
            drain: asyncio.Future[None] = loop.create_future()
            self._drain_waiter = drain
            if timeout_s is None:
                await drain
            else:
                try:
                    await asyncio.wait_for(drain, timeout_s)
                except TimeoutError:
                    raise IggyTimeoutError(f"request not written within {timeout_s} s") from None
            if self._lost is not None:
                raise self._lost
        if self._unclaimed:
            return self._unclaimed.popleft()
        waiter: asyncio.Future[A] = loop.create_future()
        self._waiter = waiter
        if timeout_s is None:
            return await waiter
        handle = loop.call_later(timeout_s, self._on_timeout, waiter, timeout_s)
        try:
            return await waiter
        finally:
            handle.cancel()
            self._waiter = None

    # -- what each generation says differently -------------------------------------------------

    @abc.abstractmethod
    async def call(self, code: int, payload: BytesLike, timeout_s: float | None) -> memoryview:
        """Send command ``code``; return the reply payload or raise :class:`IggyServerError`."""

    @abc.abstractmethod
    async def login_password(self, username: str, password: str, timeout_s: float | None) -> int:
        """Log this connection in; return the user id."""

    @abc.abstractmethod
    async def login_token(self, token: str, timeout_s: float | None) -> int:
        """Log this connection in with a personal access token; return the user id."""

    @staticmethod
    @abc.abstractmethod
    def check_frame(frame: BytesLike) -> None:
        """Refuse (``ValueError``) what is not a SendMessages frame of this generation."""

    @abc.abstractmethod
    async def send_frame(self, frame: BytesLike, timeout_s: float | None) -> None:
        """Send a pre-encoded SendMessages frame (see :func:`encode_send_frame`)."""


class _Wire08(_Wire[tuple[int, memoryview]]):
    """The classic framing, read by ``wire.framing.ClientFraming`` pull-style: the transport
    reads straight into what the machine asks for, the 8-byte header, then a fresh buffer of
    exactly the payload's size. So a reply payload is copied once (kernel to its buffer) and
    never again, and polled messages view that one buffer.
    """

    generation = Generation.V08

    def __init__(self, max_reply_bytes: int, counters: _Counters) -> None:
        super().__init__(max_reply_bytes, counters)
        self._framing = framing.ClientFraming(max_payload_bytes=max_reply_bytes)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._framing.buffer()

    def buffer_updated(self, nbytes: int) -> None:
        event = self._framing.received(nbytes)
        if event is None:
            return
        if isinstance(event, framing.FramingError):
            self._break(f"server {self.peer} sent a reply this client refuses: {event.detail}")
            return
        self._deliver((event.status, event.payload))

    async def call(self, code: int, payload: BytesLike, timeout_s: float | None) -> memoryview:
        head = framing.request_header(code, len(payload))
        if len(payload) <= _JOIN_WRITE_MAX_BYTES:
            status, body = await self._roundtrip(head + payload, None, timeout_s)
        else:
            status, body = await self._roundtrip(head, payload, timeout_s)
        if status != Status.OK:
            raise IggyServerError(status, code)
        return body

    async def login_password(self, username: str, password: str, timeout_s: float | None) -> int:
        body = await self.call(Command.LOGIN_USER, LoginUser(username, password).encode(), timeout_s)
        return decode_record(Identity, body).user_id

    async def login_token(self, token: str, timeout_s: float | None) -> int:
        login = LoginWithPersonalAccessToken(token)
        body = await self.call(login.CODE, login.encode(), timeout_s)
        return decode_record(Identity, body).user_id

    @staticmethod
    def check_frame(frame: BytesLike) -> None:
        if len(frame) < FRAME_HEADER_SIZE:
            raise ValueError(f"a 0.8 frame is at least {FRAME_HEADER_SIZE} bytes")

    async def send_frame(self, frame: BytesLike, timeout_s: float | None) -> None:
        status, _ = await self._roundtrip(frame, None, timeout_s)
        if status != Status.OK:
            raise IggyServerError(status, Command.SEND_MESSAGES)


_Answer09 = f09.ReplyReceived | f09.EvictionReceived


def _new_client_id() -> int:
    """A VSR client id as the SDK mints one: a random UUIDv4 as u128, never 0 (section 1.2)."""
    return uuid.uuid4().int


class _Wire09(_Wire[_Answer09]):
    """The VSR framing (sections 1.2-1.7), by ``wire.v09.frames.ClientFraming``: 256-byte
    headers numbered as the SDK numbers them (client id, the session bound by the login, a
    request number), replies and evictions read pull-style like 0.8's, each body into one
    buffer of its own."""

    generation = Generation.V09

    def __init__(self, max_reply_bytes: int, counters: _Counters) -> None:
        super().__init__(max_reply_bytes, counters)
        self._framing = f09.ClientFraming(
            client=_new_client_id(), max_frame_size=min(max_reply_bytes + HEADER_SIZE, U32_MAX)
        )
        self._body_given = False

    def get_buffer(self, sizehint: int) -> memoryview:
        framing09 = self._framing
        if framing09.reading_body and not self._body_given:
            # A writable buffer of the body's size: the batch parser then reads a poll's
            # records where they were received (it copies read-only input first).
            framing09.use_body_buffer(bytearray(framing09.bytes_needed))
            self._body_given = True
        return framing09.buffer()

    def buffer_updated(self, nbytes: int) -> None:
        event = self._framing.received(nbytes)
        if event is None:
            return
        self._body_given = False
        if isinstance(event, f09.ReplyViolation):
            self._break(f"server {self.peer} sent a frame a 0.9 client refuses: {event.reason}")
            return
        self._deliver(event)

    def _header(self, operation: Operation, code: int, body: BytesLike) -> bytes:
        nr = operation == Operation.NON_REPLICATED
        return self._framing.header(operation, body, code if nr else 0).encode()

    async def _answer(
        self, operation: Operation, code: int, body: BytesLike, timeout_s: float | None
    ) -> f09.ReplyReceived:
        """Send one request; the reply, or the error its status or an eviction says."""
        head = self._header(operation, code, body)
        if len(body) <= _JOIN_WRITE_MAX_BYTES:
            answer = await self._roundtrip(head + body, None, timeout_s)
        else:
            answer = await self._roundtrip(head, body, timeout_s)
        if isinstance(answer, f09.EvictionReceived):
            # The session is dead (1.6); the client drops this connection for a fresh one.
            self._framing.session = 0
            raise IggyEvictedError(answer.header.reason, code)
        status = answer.header.status
        if status != STATUS_OK:
            raise IggyServerError(status, code)
        return answer

    async def call(self, code: int, payload: BytesLike, timeout_s: float | None) -> memoryview:
        operation = operation_for_code(code)
        answer = await self._answer(operation, code, payload, timeout_s)
        if operation == Operation.LOGOUT:
            self._framing.session = 0
        # The echoed operation decides the framing (1.4): Iggy's server answers DeleteSegments
        # as TruncatePartition (68), which carries a result section.
        if reply_framing(answer.operation) is ReplyFraming.RAW:
            return answer.body
        section = f09.decode_result_section(answer.body)
        if isinstance(section, f09.ResultOk):
            return section.payload
        if isinstance(section, f09.ResultRejected):
            raise IggyServerError(section.code, code)
        raise IggyServerError(Status.INVALID_COMMAND, code, section.reason)

    async def _register(self, code: CommandCode, body: bytes, timeout_s: float | None) -> int:
        if self._framing.session:
            # As the SDK (1.7): Register on a bound connection would replay the old session, so
            # a logged-in client logs out and registers again under a fresh client id.
            await self.call(CommandCode.LOGOUT_USER, b"", timeout_s)
            self._framing.client = _new_client_id()
            self._framing.request_number = 0
        answer = await self._answer(Operation.REGISTER, code, body, timeout_s)
        reply = f09.decode_login_reply(answer.body)
        if isinstance(reply, f09.LoginReply):
            self._framing.session = reply.session
            return reply.user_id
        if isinstance(reply, f09.ResultRejected):
            raise IggyServerError(reply.code, code)
        # An empty body is the "terminal failure" of 1.5, which the SDK reports as InvalidFormat.
        raise IggyServerError(Status.INVALID_FORMAT, code, reply.reason)

    async def login_password(self, username: str, password: str, timeout_s: float | None) -> int:
        body = f09.encode_password_login(_CLIENT_VERSION, f09.PasswordLogin(username, password))
        return await self._register(CommandCode.LOGIN_REGISTER, body, timeout_s)

    async def login_token(self, token: str, timeout_s: float | None) -> int:
        body = f09.encode_token_login(_CLIENT_VERSION, f09.TokenLogin(token))
        return await self._register(CommandCode.LOGIN_REGISTER_WITH_PAT, body, timeout_s)

    @staticmethod
    def check_frame(frame: BytesLike) -> None:
        header = RequestHeader.decode(frame) if len(frame) >= HEADER_SIZE else None
        if (
            header is None
            or header.command != VsrCommand.REQUEST
            or header.operation != Operation.SEND_MESSAGES
            or header.size != len(frame)
        ):
            raise ValueError("a 0.9 connection sends 0.9 SendMessages frames (see encode_send_frame)")

    async def send_frame(self, frame: BytesLike, timeout_s: float | None) -> None:
        # Only the body is the caller's: the header is re-made with this connection's numbers.
        body = memoryview(frame)[HEADER_SIZE:]
        await self._answer(Operation.SEND_MESSAGES, CommandCode.SEND_MESSAGES, body, timeout_s)


_WIRE_TYPES: dict[Generation, type[_Wire[Any]]] = {Generation.V08: _Wire08, Generation.V09: _Wire09}


@dataclass(slots=True)
class _Assignment:
    """A 0.9 group member's partitions as its last SyncConsumerGroup said (section 5.4)."""

    generation: int
    partition_ids: tuple[int, ...]
    synced_at_s: float
    turn: int = 0
    empty_polls: int = 0
    """Empty polls in a row: a whole round of them sends the member to look for new partitions."""

    def next_partition(self) -> int:
        """Round robin over the assigned partitions, as the SDK polls them."""
        partition = self.partition_ids[self.turn % len(self.partition_ids)]
        self.turn += 1
        return partition

    def worn(self, now_s: float) -> bool:
        return self.empty_polls >= len(self.partition_ids) or now_s - self.synced_at_s > _ASSIGNMENT_MAX_AGE_S


GroupKey = tuple[Identifier, Identifier, Identifier]


def _stale(poll_body: memoryview) -> bool:
    """Whether a 0.9 group poll was answered with the stale-assignment mark (section 4.5)."""
    return (
        len(poll_body) >= POLL_REPLY_HEADER_SIZE
        and decode_record(PollHeader, poll_body).partition_id == _STALE_ASSIGNMENT_PARTITION_ID
    )


# ---------------------------------------------------------------------------------------------
# The client


class _Decodable(Protocol):
    @classmethod
    def decode(cls, reader: Reader) -> Self: ...


D = TypeVar("D", bound=_Decodable)
T = TypeVar("T")


class IggyClient:
    """One connection to a tidelog / Iggy server, one typed method per command.

    Build it with ``await IggyClient.connect(...)`` or
    ``await IggyClient.from_connection_string(...)``; ``protocol="0.9"`` (default) or ``"0.8"``
    picks the generation, and every method means the same under both. Identifier arguments
    take an ``int`` (numeric id) or a ``str`` (name; a string of digits means that numeric id,
    as in the SDK). Reads of a missing entity return ``None`` (or ``[]``), mutations raise
    :class:`IggyServerError`.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout_s: float | None = 30.0,
        connect_timeout_s: float = 10.0,
        reconnect_retries: int | None = 3,
        reconnect_interval_s: float = 1.0,
        nodelay: bool = True,
        max_reply_bytes: int = 1 << 31,
        protocol: str | Generation = DEFAULT_PROTOCOL,
    ) -> None:
        split_address(address)  # validate early
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        if token is not None and username is not None:
            raise ValueError("give a username/password or a token, not both")
        assert reconnect_retries is None or reconnect_retries >= 0
        assert reconnect_interval_s >= 0 and max_reply_bytes > 0
        self.address = address
        """Where the next (re)connection goes; may be changed while the client lives."""
        self.protocol = parse_protocol(protocol)
        """The generation this client speaks (:data:`ProtocolGeneration`), fixed for its life."""
        self._codec = CODECS[self.protocol]
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_retries = reconnect_retries
        self.reconnect_interval_s = reconnect_interval_s
        self.nodelay = nodelay
        self.max_reply_bytes = max_reply_bytes
        self._credentials: tuple[str, str] | None = (
            (username, password) if username is not None and password is not None else None
        )
        self._token = token
        self._joined: set[GroupKey] = set()
        # 0.9 only: the partitions of each group this client polls without naming one.
        self._assignments: dict[GroupKey, _Assignment] = {}
        self._wire: _Wire[Any] | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._opened = False
        self._counters = _Counters()
        self.user_id: int | None = None
        self.reconnects_count = 0

    @property
    def requests_count(self) -> int:
        """Requests written so far (logins and retries included): cheap client-side metrics."""
        return self._counters.requests

    # -- construction --------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        address: str = DEFAULT_ADDRESS,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout_s: float | None = 30.0,
        connect_timeout_s: float = 10.0,
        reconnect_retries: int | None = 3,
        reconnect_interval_s: float = 1.0,
        nodelay: bool = True,
        max_reply_bytes: int = 1 << 31,
        protocol: str | Generation = DEFAULT_PROTOCOL,
    ) -> Self:
        """Connect (trying ``1 + reconnect_retries`` times) and log in if credentials are given."""
        client = cls(
            address,
            username=username,
            password=password,
            token=token,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            reconnect_retries=reconnect_retries,
            reconnect_interval_s=reconnect_interval_s,
            nodelay=nodelay,
            max_reply_bytes=max_reply_bytes,
            protocol=protocol,
        )
        await client.open()
        return client

    @classmethod
    async def from_connection_string(cls, connection_string: str, **overrides: Any) -> Self:
        """``iggy+tcp://user:pass@host:port?reconnection_retries=3&reconnection_interval=1s``,
        or ``iggy+tcp://TOKEN@host:port``, plus ``&protocol=0.8`` for the older generation;
        connects and logs in. ``overrides`` win over the string.
        """
        o = parse_connection_string(connection_string)
        kwargs: dict[str, Any] = {
            "username": o.username,
            "password": o.password,
            "token": o.token,
            "reconnect_retries": o.reconnect_retries,
            "reconnect_interval_s": o.reconnect_interval_s,
            "nodelay": o.nodelay,
            "protocol": o.protocol,
        }
        kwargs.update(overrides)
        return await cls.connect(o.address, **kwargs)

    async def open(self) -> None:
        """Establish the first connection (a no-op when one is up)."""
        async with self._lock:
            if self._wire is None or not self._wire.usable:
                await self._first_connection()

    async def _first_connection(self) -> _Wire[Any]:
        tries = None if self.reconnect_retries is None else 1 + self.reconnect_retries
        wire = await self._establish(tries)
        self._opened = True
        return wire

    async def close(self) -> None:
        """Close the connection; the client cannot be used afterwards."""
        self._closed = True
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._wire is not None and self._wire.usable

    # -- the request path ----------------------------------------------------------------------

    async def _dial(self) -> _Wire[Any]:
        host, port = split_address(self.address)
        loop = asyncio.get_running_loop()
        wire_type = _WIRE_TYPES[self.protocol]
        max_reply, counters = self.max_reply_bytes, self._counters
        try:
            transport, wire = await asyncio.wait_for(
                loop.create_connection(lambda: wire_type(max_reply, counters), host, port),
                self.connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise IggyConnectionError(
                f"cannot connect to {self.address}: {exc or type(exc).__name__}"
            ) from exc
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if self.nodelay else 0)
        return wire

    async def _establish(self, tries: int | None) -> _Wire[Any]:
        """Dial up to ``tries`` times (``None`` = forever), then log in and re-join groups."""
        if self._closed:
            raise IggyConnectionError("client is closed")
        attempt = 0
        while True:
            attempt += 1
            try:
                wire = await self._dial()
                break
            except IggyConnectionError:
                if tries is not None and attempt >= tries:
                    raise
                log.warning("connection to %s failed (try %d); retrying", self.address, attempt)
                await asyncio.sleep(self.reconnect_interval_s)
        try:
            await self._login_on(wire)
        except BaseException:
            wire.abort()
            raise
        self._wire = wire
        return wire

    async def _login_on(self, wire: _Wire[Any]) -> None:
        timeout_s = self.timeout_s
        if self._token is not None:
            self.user_id = await wire.login_token(self._token, timeout_s)
        elif self._credentials is not None:
            self.user_id = await wire.login_password(*self._credentials, timeout_s)
        else:
            # Membership needs a login in both generations (and 0.9 would evict the attempt).
            self._joined.clear()
        # A new connection is a new member: whatever was assigned to the old one is gone.
        self._assignments.clear()
        for stream, topic, group in sorted(self._joined, key=repr):
            try:
                await wire.call(
                    Command.JOIN_CONSUMER_GROUP, JoinConsumerGroup(stream, topic, group).encode(), timeout_s
                )
            except IggyServerError as exc:
                log.warning("could not re-join consumer group %r after reconnecting: %s", group, exc)
                self._joined.discard((stream, topic, group))
                if isinstance(exc, IggyEvictedError):
                    raise

    async def _reconnect(self) -> _Wire[Any]:
        if self.reconnect_retries == 0:
            raise IggyConnectionError(f"not connected to {self.address} (reconnecting is disabled)")
        self.reconnects_count += 1
        log.warning("reconnecting to %s", self.address)
        return await self._establish(self.reconnect_retries)

    def _drop(self, wire: _Wire[Any]) -> None:
        wire.abort()
        if self._wire is wire:
            self._wire = None

    async def _exchange(self, call: Callable[[_Wire[Any]], Awaitable[T]]) -> T:
        """Run ``call`` (one request) on the connection; reconnect and retry once if the line
        drops or the server says goodbye."""
        async with self._lock:
            retried = False
            while True:
                wire = self._wire
                if wire is None or not wire.usable:
                    if self._closed:
                        raise IggyConnectionError("client is closed")
                    if wire is not None:
                        self._drop(wire)
                    # A client built with the constructor connects on its first request.
                    wire = await (self._reconnect() if self._opened else self._first_connection())
                try:
                    return await call(wire)
                except IggyConnectionError:
                    self._drop(wire)
                    if retried or self.reconnect_retries == 0 or self._closed:
                        raise
                    retried = True
                    continue
                except IggyServerError as exc:
                    goodbye = exc.code in _DROP_STATUSES
                    # An eviction ends the session, a goodbye the connection: either way this
                    # one is done. Any other refusal leaves it in use.
                    if goodbye or isinstance(exc, IggyEvictedError):
                        self._drop(wire)
                    if goodbye and not retried and self.reconnect_retries != 0 and not self._closed:
                        retried = True
                        continue
                    raise
                except BaseException:
                    # Timed out or cancelled mid-request: a late reply would be taken for the
                    # next request's, so this connection cannot be used again.
                    self._drop(wire)
                    raise

    async def request(self, code: int, payload: bytes | bytearray | memoryview = b"") -> memoryview:
        """Send any command; return the reply payload or raise :class:`IggyServerError`.

        ``payload`` is the body in this client's generation; for 0.9 the operation follows
        from ``code`` (section 1.4) and a result section is taken off the reply.
        """
        timeout_s = self.timeout_s
        return await self._exchange(lambda wire: wire.call(code, payload, timeout_s))

    async def _optional(self, cls: type[D], code: int, payload: bytes) -> D | None:
        body = await self.request(code, payload)
        if not body:
            return None
        return decode_record(cls, body)

    # -- system --------------------------------------------------------------------------------

    async def ping(self) -> None:
        await self.request(Command.PING)

    async def get_stats(self) -> Stats:
        return decode_record(Stats, await self.request(Command.GET_STATS))

    async def get_snapshot(
        self,
        compression: int = SnapshotCompression.DEFLATED,
        snapshot_types: Sequence[int] = (SnapshotType.ALL,),
    ) -> bytes:
        """The server's diagnostic snapshot: ZIP archive bytes."""
        body = await self.request(
            Command.GET_SNAPSHOT, GetSnapshot(compression, tuple(snapshot_types)).encode()
        )
        return bytes(body)

    async def get_cluster_metadata(self) -> ClusterMetadata:
        return decode_record(ClusterMetadata, await self.request(Command.GET_CLUSTER_METADATA))

    async def get_me(self) -> ClientDetails:
        return decode_record(ClientDetails, await self.request(Command.GET_ME))

    async def get_client(self, client_id: int) -> ClientDetails | None:
        return await self._optional(ClientDetails, Command.GET_CLIENT, GetClient(client_id).encode())

    async def get_clients(self) -> list[ClientInfo]:
        return decode_list(ClientInfo, await self.request(Command.GET_CLIENTS))

    # -- users ---------------------------------------------------------------------------------

    async def get_user(self, user: int | str) -> UserDetails | None:
        body = await self.request(Command.GET_USER, GetUser(_ident(user)).encode())
        return self._codec.user_details(body) if body else None

    async def get_users(self) -> list[UserInfo]:
        return self._codec.users(await self.request(Command.GET_USERS))

    async def create_user(
        self,
        username: str,
        password: str,
        status: int = UserStatus.ACTIVE,
        permissions: Permissions | None = None,
    ) -> UserDetails:
        # 0.9's body is 0.8's plus an options block, empty for users (2.8): the same bytes.
        body = await self.request(
            Command.CREATE_USER, CreateUser(username, password, status, permissions).encode()
        )
        return self._codec.user_details(body)

    async def delete_user(self, user: int | str) -> None:
        await self.request(Command.DELETE_USER, DeleteUser(_ident(user)).encode())

    async def update_user(
        self, user: int | str, username: str | None = None, status: int | None = None
    ) -> None:
        await self.request(Command.UPDATE_USER, UpdateUser(_ident(user), username, status).encode())

    async def update_permissions(self, user: int | str, permissions: Permissions | None) -> None:
        await self.request(Command.UPDATE_PERMISSIONS, UpdatePermissions(_ident(user), permissions).encode())

    async def change_password(self, user: int | str, current_password: str, new_password: str) -> None:
        await self.request(
            Command.CHANGE_PASSWORD, ChangePassword(_ident(user), current_password, new_password).encode()
        )

    async def login_user(self, username: str, password: str) -> int:
        """Log in; the credentials are kept to log in again after a reconnect. Returns the user id."""
        timeout_s = self.timeout_s
        user_id = await self._exchange(lambda wire: wire.login_password(username, password, timeout_s))
        self._credentials = (username, password)
        self._token = None
        self.user_id = user_id
        return user_id

    async def logout_user(self) -> None:
        await self.request(Command.LOGOUT_USER)
        self._credentials = None
        self._token = None
        self.user_id = None

    # -- personal access tokens ----------------------------------------------------------------

    async def get_personal_access_tokens(self) -> list[PersonalAccessTokenInfo]:
        return decode_list(PersonalAccessTokenInfo, await self.request(Command.GET_PERSONAL_ACCESS_TOKENS))

    async def create_personal_access_token(self, name: str, expiry_us: int = 0) -> str:
        """Returns the raw token; ``expiry_us`` 0 = never, else microseconds from now."""
        body = await self.request(
            Command.CREATE_PERSONAL_ACCESS_TOKEN, CreatePersonalAccessToken(name, expiry_us).encode()
        )
        return decode_record(RawPersonalAccessToken, body).token

    async def delete_personal_access_token(self, name: str) -> None:
        await self.request(Command.DELETE_PERSONAL_ACCESS_TOKEN, DeletePersonalAccessToken(name).encode())

    async def login_with_token(self, token: str) -> int:
        """Log in with a personal access token (kept for re-login). Returns the user id."""
        timeout_s = self.timeout_s
        user_id = await self._exchange(lambda wire: wire.login_token(token, timeout_s))
        self._token = token
        self._credentials = None
        self.user_id = user_id
        return user_id

    # -- messages ------------------------------------------------------------------------------

    async def send_messages(
        self,
        stream: int | str,
        topic: int | str,
        partitioning: Partitioning,
        messages: Sequence[OutgoingMessage | bytes],
    ) -> None:
        """Send one batch, built into one buffer.

        0.8 leaves checksums, offsets, timestamps and ids of 0 to the server; 0.9 computes
        every checksum and gives ids of 0 a random UUIDv4 here, as the SDK does. Offsets and
        the broker timestamp are the server's in both."""
        payload = _send_payload(self._codec, stream, topic, partitioning, messages)
        await self.request(Command.SEND_MESSAGES, payload)

    async def send_raw(self, frame: bytes | bytearray | memoryview) -> None:
        """Send a whole pre-encoded SendMessages frame of this client's generation (see
        :func:`encode_send_frame`): unchanged in 0.8; in 0.9 the body unchanged under a header
        with this connection's client, session and request number."""
        _WIRE_TYPES[self.protocol].check_frame(frame)
        timeout_s = self.timeout_s
        await self._exchange(lambda wire: wire.send_frame(frame, timeout_s))

    async def poll_raw(
        self,
        stream: int | str,
        topic: int | str,
        partition_id: int | None,
        strategy: PollingStrategy,
        count: int,
        auto_commit: bool = False,
        consumer: Consumer = DEFAULT_CONSUMER,
    ) -> tuple[PollHeader, memoryview]:
        """Poll without parsing messages: the reply header and a view of the message bytes, in
        the generation's own format (0.8: 64-byte headed messages; 0.9: batch records, 4.5)."""
        body = await self._poll(stream, topic, partition_id, strategy, count, auto_commit, consumer)
        if len(body) < POLL_REPLY_HEADER_SIZE:
            return PollHeader(partition_id or 0, 0, 0), _EMPTY
        return decode_record(PollHeader, body), body[POLL_REPLY_HEADER_SIZE:]

    async def poll_messages(
        self,
        stream: int | str,
        topic: int | str,
        partition_id: int | None,
        strategy: PollingStrategy,
        count: int,
        auto_commit: bool = False,
        consumer: Consumer = DEFAULT_CONSUMER,
    ) -> PolledBatch:
        """Poll; the messages are views over one buffer per reply (copy what you keep long).

        A consumer-group member may leave ``partition_id`` out in both generations: the 0.8
        server picks one of the member's partitions; over 0.9 this client does, round robin
        over the assignment SyncConsumerGroup reports (section 5.4). Naming a partition the
        member does not own answers an empty batch whose partition id is ``0xFFFFFFFF`` in
        0.9 (the stale-assignment mark).
        """
        body = await self._poll(stream, topic, partition_id, strategy, count, auto_commit, consumer)
        if len(body) < POLL_REPLY_HEADER_SIZE:
            return PolledBatch(partition_id or 0, 0, [])
        header, messages = self._codec.poll_reply(body)
        return PolledBatch(header.partition_id, header.current_offset, messages)

    async def _poll(
        self,
        stream: int | str,
        topic: int | str,
        partition_id: int | None,
        strategy: PollingStrategy,
        count: int,
        auto_commit: bool,
        consumer: Consumer,
    ) -> memoryview:
        stream_id, topic_id = _ident(stream), _ident(topic)
        group = consumer.kind == ConsumerKind.CONSUMER_GROUP and self.protocol is Generation.V09
        if group and partition_id is None:
            key = (stream_id, topic_id, consumer.id)
            return await self._group_poll(key, consumer, strategy, count, auto_commit)
        request = PollMessages(
            consumer, stream_id, topic_id, partition_id, strategy.kind, strategy.value, count, auto_commit
        )
        body = await self.request(Command.POLL_MESSAGES, request.encode())
        if group and _stale(body):
            self._assignments.pop((stream_id, topic_id, consumer.id), None)
        return body

    async def _group_poll(
        self, key: GroupKey, consumer: Consumer, strategy: PollingStrategy, count: int, auto_commit: bool
    ) -> memoryview:
        """A 0.9 member's poll of its next partition. A stale answer (the assignment changed
        since the last sync) gets one re-sync and one more try, as the SDK does (5.4)."""
        body: memoryview = memoryview(PollHeader(0, 0, 0).encode())
        for _ in range(2):
            assignment = self._assignments.get(key)
            if assignment is None or assignment.worn(time.monotonic()):
                assignment = await self._sync_group(key)
            if not assignment.partition_ids:
                # More members than partitions: nothing to read until a rebalance, which the
                # next poll asks about again.
                self._assignments.pop(key, None)
                return body
            partition = assignment.next_partition()
            request = PollMessages(
                consumer, key[0], key[1], partition, strategy.kind, strategy.value, count, auto_commit
            )
            body = await self.request(Command.POLL_MESSAGES, request.encode())
            if not _stale(body):
                head = decode_record(PollHeader, body) if len(body) >= POLL_REPLY_HEADER_SIZE else None
                assignment.empty_polls = 0 if head and head.messages_count else assignment.empty_polls + 1
                return body
            self._assignments.pop(key, None)
        return body

    async def _sync_group(self, key: GroupKey) -> _Assignment:
        body = await self.request(CommandCode.SYNC_CONSUMER_GROUP, SyncConsumerGroup(*key).encode())
        synced = decode_sync_group09(body)
        if synced is None:
            # Not a member: the SDK reports this on the poll (5.4).
            raise IggyServerError(Status.CONSUMER_GROUP_MEMBER_NOT_FOUND, Command.POLL_MESSAGES)
        if len(self._assignments) >= _ASSIGNMENTS_MAX:
            self._assignments.clear()
        assignment = _Assignment(synced.generation, synced.partition_ids, time.monotonic())
        self._assignments[key] = assignment
        return assignment

    async def flush_unsaved_buffer(
        self, stream: int | str, topic: int | str, partition_id: int, fsync: bool = False
    ) -> None:
        await self.request(
            Command.FLUSH_UNSAVED_BUFFER,
            FlushUnsavedBuffer(_ident(stream), _ident(topic), partition_id, fsync).encode(),
        )

    # -- consumer offsets ----------------------------------------------------------------------

    async def get_consumer_offset(
        self, consumer: Consumer, stream: int | str, topic: int | str, partition_id: int | None
    ) -> ConsumerOffsetInfo | None:
        payload = GetConsumerOffset(consumer, _ident(stream), _ident(topic), partition_id).encode()
        return await self._optional(ConsumerOffsetInfo, Command.GET_CONSUMER_OFFSET, payload)

    async def store_consumer_offset(
        self, consumer: Consumer, stream: int | str, topic: int | str, partition_id: int | None, offset: int
    ) -> None:
        payload = self._codec.store_offset(consumer, _ident(stream), _ident(topic), partition_id, offset)
        await self.request(Command.STORE_CONSUMER_OFFSET, payload)

    async def delete_consumer_offset(
        self, consumer: Consumer, stream: int | str, topic: int | str, partition_id: int | None
    ) -> None:
        payload = self._codec.delete_offset(consumer, _ident(stream), _ident(topic), partition_id)
        await self.request(Command.DELETE_CONSUMER_OFFSET, payload)

    # -- streams -------------------------------------------------------------------------------

    async def get_stream(self, stream: int | str) -> StreamDetails | None:
        body = await self.request(Command.GET_STREAM, GetStream(_ident(stream)).encode())
        return self._codec.stream_details(body) if body else None

    async def get_streams(self) -> list[StreamInfo]:
        return self._codec.streams(await self.request(Command.GET_STREAMS))

    async def create_stream(self, name: str) -> StreamInfo:
        # 0.9's body is 0.8's plus an options block, empty for streams (2.8): the same bytes.
        return self._codec.stream(await self.request(Command.CREATE_STREAM, CreateStream(name).encode()))

    async def update_stream(self, stream: int | str, name: str) -> None:
        await self.request(Command.UPDATE_STREAM, UpdateStream(_ident(stream), name).encode())

    async def delete_stream(self, stream: int | str) -> None:
        await self.request(Command.DELETE_STREAM, DeleteStream(_ident(stream)).encode())

    async def purge_stream(self, stream: int | str) -> None:
        await self.request(Command.PURGE_STREAM, PurgeStream(_ident(stream)).encode())

    # -- topics and partitions -----------------------------------------------------------------

    async def get_topic(self, stream: int | str, topic: int | str) -> TopicDetails | None:
        body = await self.request(Command.GET_TOPIC, GetTopic(_ident(stream), _ident(topic)).encode())
        return self._codec.topic_details(body) if body else None

    async def get_topics(self, stream: int | str) -> list[TopicInfo]:
        return self._codec.topics(await self.request(Command.GET_TOPICS, GetTopics(_ident(stream)).encode()))

    async def create_topic(
        self,
        stream: int | str,
        name: str,
        partitions_count: int = 1,
        compression_algorithm: int = CompressionAlgorithm.NONE,
        message_expiry_us: int = 0,
        max_topic_size_bytes: int = 0,
        replication_factor: int = 0,
    ) -> TopicDetails:
        """Expiry and size: 0 = server default, ``U64_MAX`` = never / unlimited. 0.9 sends
        them as topic options (durability options keep their defaults) and has no
        replication factor: it is not sent, and topics read back with 0."""
        payload = self._codec.create_topic(
            _ident(stream),
            name,
            partitions_count,
            compression_algorithm,
            message_expiry_us,
            max_topic_size_bytes,
            replication_factor,
        )
        return self._codec.topic_details(await self.request(Command.CREATE_TOPIC, payload))

    async def update_topic(
        self,
        stream: int | str,
        topic: int | str,
        name: str,
        compression_algorithm: int = CompressionAlgorithm.NONE,
        message_expiry_us: int = 0,
        max_topic_size_bytes: int = 0,
        replication_factor: int = 0,
    ) -> None:
        payload = self._codec.update_topic(
            _ident(stream),
            _ident(topic),
            name,
            compression_algorithm,
            message_expiry_us,
            max_topic_size_bytes,
            replication_factor,
        )
        await self.request(Command.UPDATE_TOPIC, payload)

    async def delete_topic(self, stream: int | str, topic: int | str) -> None:
        await self.request(Command.DELETE_TOPIC, DeleteTopic(_ident(stream), _ident(topic)).encode())

    async def purge_topic(self, stream: int | str, topic: int | str) -> None:
        await self.request(Command.PURGE_TOPIC, PurgeTopic(_ident(stream), _ident(topic)).encode())

    async def create_partitions(self, stream: int | str, topic: int | str, partitions_count: int) -> None:
        await self.request(
            Command.CREATE_PARTITIONS,
            CreatePartitions(_ident(stream), _ident(topic), partitions_count).encode(),
        )

    async def delete_partitions(self, stream: int | str, topic: int | str, partitions_count: int) -> None:
        await self.request(
            Command.DELETE_PARTITIONS,
            DeletePartitions(_ident(stream), _ident(topic), partitions_count).encode(),
        )

    async def delete_segments(
        self, stream: int | str, topic: int | str, partition_id: int, segments_count: int
    ) -> None:
        await self.request(
            Command.DELETE_SEGMENTS,
            DeleteSegments(_ident(stream), _ident(topic), partition_id, segments_count).encode(),
        )

    # -- consumer groups -----------------------------------------------------------------------

    async def get_consumer_group(
        self, stream: int | str, topic: int | str, group: int | str
    ) -> ConsumerGroupDetails | None:
        payload = GetConsumerGroup(_ident(stream), _ident(topic), _ident(group)).encode()
        return await self._optional(ConsumerGroupDetails, Command.GET_CONSUMER_GROUP, payload)

    async def get_consumer_groups(self, stream: int | str, topic: int | str) -> list[ConsumerGroupInfo]:
        body = await self.request(
            Command.GET_CONSUMER_GROUPS, GetConsumerGroups(_ident(stream), _ident(topic)).encode()
        )
        return decode_list(ConsumerGroupInfo, body)

    async def create_consumer_group(
        self, stream: int | str, topic: int | str, name: str
    ) -> ConsumerGroupInfo:
        body = await self.request(
            Command.CREATE_CONSUMER_GROUP, CreateConsumerGroup(_ident(stream), _ident(topic), name).encode()
        )
        return decode_record(ConsumerGroupInfo, body)

    async def delete_consumer_group(self, stream: int | str, topic: int | str, group: int | str) -> None:
        key = (_ident(stream), _ident(topic), _ident(group))
        await self.request(Command.DELETE_CONSUMER_GROUP, DeleteConsumerGroup(*key).encode())
        self._joined.discard(key)
        self._assignments.pop(key, None)

    async def join_consumer_group(self, stream: int | str, topic: int | str, group: int | str) -> None:
        """Join; the membership is renewed on every reconnect until :meth:`leave_consumer_group`."""
        key = (_ident(stream), _ident(topic), _ident(group))
        await self.request(Command.JOIN_CONSUMER_GROUP, JoinConsumerGroup(*key).encode())
        self._joined.add(key)
        self._assignments.pop(key, None)

    async def leave_consumer_group(self, stream: int | str, topic: int | str, group: int | str) -> None:
        key = (_ident(stream), _ident(topic), _ident(group))
        self._joined.discard(key)
        self._assignments.pop(key, None)
        await self.request(Command.LEAVE_CONSUMER_GROUP, LeaveConsumerGroup(*key).encode())

    # -- high level ----------------------------------------------------------------------------

    async def producer(self, stream: int | str, topic: int | str, **options: Any) -> Producer:
        """A batching :class:`~tidelog.client.producer.Producer` on this connection."""
        from tidelog.client.producer import Producer

        producer = Producer(self, stream, topic, **options)
        await producer.init()
        return producer

    async def consumer(self, stream: int | str, topic: int | str, **options: Any) -> HighLevelConsumer:
        """A polling :class:`~tidelog.client.consumer.Consumer` on this connection."""
        from tidelog.client.consumer import Consumer as HighLevelConsumer

        consumer = HighLevelConsumer(self, stream, topic, **options)
        await consumer.init()
        return consumer


__all__ = [
    "DEFAULT_CONSUMER",
    "DEFAULT_PROTOCOL",
    "ConnectionOptions",
    "ConsumerId",
    "IggyClient",
    "IggyConnectionError",
    "IggyEvictedError",
    "IggyServerError",
    "IggyTimeoutError",
    "PolledBatch",
    "PollingStrategy",
    "ProtocolGeneration",
    "encode_send_frame",
    "parse_connection_string",
    "parse_duration_s",
    "parse_protocol",
    "status_name",
]

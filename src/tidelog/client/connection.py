"""A typed asyncio client for the Iggy 0.8 classic TCP protocol: one connection, every command.

Encoding and decoding are the sans-IO codec's (``tidelog.wire``); this module only moves
frames. One request is in flight per connection (an ``asyncio.Lock``), exactly as the SDK
does, and a reply is read as an 8-byte header followed by exactly ``length`` bytes, received
straight into one buffer that polled messages then view without copying.

A dropped connection (EOF, reset, or the server's ``Disconnected`` / ``StaleClient`` frame) is
re-established up to ``reconnect_retries`` times, the stored credentials log it in again, joined
consumer groups are re-joined, and the request is retried once. A server error status is never
retried; it raises :class:`IggyServerError` carrying the code and its name.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar, cast

from tidelog.permissions import Permissions
from tidelog.wire.codes import (
    FRAME_HEADER_SIZE,
    POLL_REPLY_HEADER_SIZE,
    U32_MAX,
    Command,
    IggyError,
    Status,
)
from tidelog.wire.commands import (
    BytesLike,
    ChangePassword,
    ClientDetails,
    ClientInfo,
    ClusterMetadata,
    CompressionAlgorithm,
    Consumer,
    ConsumerGroupDetails,
    ConsumerGroupInfo,
    ConsumerKind,
    ConsumerOffsetInfo,
    CreateConsumerGroup,
    CreatePartitions,
    CreatePersonalAccessToken,
    CreateStream,
    CreateTopic,
    CreateUser,
    DeleteConsumerGroup,
    DeleteConsumerOffset,
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
    Identifier,
    Identity,
    JoinConsumerGroup,
    LeaveConsumerGroup,
    LoginUser,
    LoginWithPersonalAccessToken,
    OutgoingMessage,
    Partitioning,
    PersonalAccessTokenInfo,
    PolledMessage,
    PollHeader,
    PollingKind,
    PollMessages,
    PurgeStream,
    PurgeTopic,
    RawPersonalAccessToken,
    Reader,
    SnapshotCompression,
    SnapshotType,
    Stats,
    StoreConsumerOffset,
    StreamDetails,
    StreamInfo,
    TopicDetails,
    TopicInfo,
    UpdatePermissions,
    UpdateStream,
    UpdateTopic,
    UpdateUser,
    UserDetails,
    UserInfo,
    UserStatus,
    decode_list,
    decode_poll_reply,
    decode_record,
    encode_send_messages,
    identifier_from_user,
)

if TYPE_CHECKING:
    from tidelog.client.consumer import Consumer as HighLevelConsumer
    from tidelog.client.producer import Producer

log = logging.getLogger("tidelog.client")

ConsumerId = Consumer
"""The wire consumer (kind, id) of polls and offsets; the high-level reader is ``client.Consumer``."""

DEFAULT_CONSUMER = Consumer(ConsumerKind.CONSUMER, 0)
DEFAULT_ADDRESS = "127.0.0.1:8090"

_HEADER = struct.Struct("<II")
assert _HEADER.size == FRAME_HEADER_SIZE
_CODE_SIZE = 4
_EMPTY = memoryview(b"")
# The SDK reads a reply length <= 1 as "no payload" and leaves that byte unread.
_EMPTY_REPLY_MAX_LENGTH = 1
# Below this a request is joined into one write; above it the payload goes out unjoined.
_JOIN_WRITE_MAX_BYTES = 16 * 1024
# The SDK reconnects and retries on these instead of surfacing them (protocol section 1.5).
_DROP_STATUSES = frozenset({Status.DISCONNECTED, Status.STALE_CLIENT})
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
    """``Status(code).name``, or ``"UNKNOWN"`` for a code this client does not know."""
    try:
        return Status(code).name
    except ValueError:
        return "UNKNOWN"


class IggyServerError(IggyError):
    """The server answered a request with an error status.

    ``status`` (and ``code``) is the numeric code as received, ``name`` its :class:`Status`
    name (``"UNKNOWN"`` for codes outside the table), ``command`` the request's code.
    """

    def __init__(self, code: int, command: int = 0) -> None:
        name = status_name(code)
        try:
            what = Command(command).name
        except ValueError:
            what = f"command {command}"
        Exception.__init__(self, f"{name} ({code}) in reply to {what}")
        # IggyError types `status` as Status; an unknown code must still keep its number.
        self.status = code  # type: ignore[assignment]
        self.code = code
        self.name = name
        self.command = command
        self.detail = ""

    @property
    def already_exists(self) -> bool:
        """True for the codes the SDK treats as "already exists" (1012, 2013, 46, 51, 5004)."""
        return self.code in _ALREADY_EXISTS


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


def encode_request_header(code: int, payload_length: int) -> bytes:
    assert payload_length + _CODE_SIZE <= U32_MAX
    return _HEADER.pack(payload_length + _CODE_SIZE, code)


def encode_send_frame(
    stream: int | str,
    topic: int | str,
    partitioning: Partitioning,
    messages: Sequence[OutgoingMessage | bytes],
) -> bytes:
    """A whole SendMessages request frame, for :meth:`IggyClient.send_raw` to send as it is."""
    payload = _send_payload(stream, topic, partitioning, messages)
    return encode_request_header(Command.SEND_MESSAGES, len(payload)) + payload


def _send_payload(
    stream: int | str,
    topic: int | str,
    partitioning: Partitioning,
    messages: Sequence[OutgoingMessage | bytes],
) -> bytes:
    if not messages:
        raise ValueError("send_messages needs at least one message")
    batch = [m if isinstance(m, OutgoingMessage) else OutgoingMessage(bytes(m)) for m in messages]
    return encode_send_messages(_ident(stream), _ident(topic), partitioning, batch)


# ---------------------------------------------------------------------------------------------
# The wire: one TCP connection


class _Wire(asyncio.BufferedProtocol):
    """Receives reply frames straight into their final buffers; writes request frames.

    The transport reads into whatever :meth:`get_buffer` returns: the 8-byte header buffer,
    then a fresh ``bytearray`` of exactly the payload's size. So a reply payload is copied once
    (kernel to its buffer) and never again.
    """

    def __init__(self, max_reply_bytes: int) -> None:
        self._max_reply_bytes = max_reply_bytes
        self._transport: asyncio.Transport | None = None
        self._header = bytearray(FRAME_HEADER_SIZE)
        self._header_view = memoryview(self._header)
        self._payload: bytearray | None = None
        self._payload_view = _EMPTY
        self._filled = 0
        self._status = 0
        self._waiter: asyncio.Future[tuple[int, memoryview]] | None = None
        # Frames that came with nobody waiting: only the server's goodbye (Disconnected).
        self._unclaimed: deque[tuple[int, memoryview]] = deque()
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

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._payload is not None:
            return self._payload_view[self._filled :]
        return self._header_view[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        payload = self._payload
        if payload is not None:
            if self._filled == len(payload):
                view = self._payload_view.toreadonly()
                self._payload = None
                self._payload_view = _EMPTY
                self._filled = 0
                self._deliver(self._status, view)
            return
        if self._filled < FRAME_HEADER_SIZE:
            return
        self._filled = 0
        status, length = _HEADER.unpack_from(self._header)
        if status != Status.OK or length <= _EMPTY_REPLY_MAX_LENGTH:
            self._deliver(status, _EMPTY)
            return
        if length > self._max_reply_bytes:
            self._fail(
                IggyConnectionError(f"reply of {length} bytes is over the {self._max_reply_bytes} limit")
            )
            if self._transport is not None:
                self._transport.abort()
            return
        self._status = status
        self._payload = bytearray(length)
        self._payload_view = memoryview(self._payload)

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

    def _deliver(self, status: int, payload: memoryview) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result((status, payload))
        else:
            self._unclaimed.append((status, payload))

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
    def _on_timeout(waiter: asyncio.Future[tuple[int, memoryview]], timeout_s: float) -> None:
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

    async def roundtrip(
        self, head: BytesLike, tail: BytesLike | None, timeout_s: float | None
    ) -> tuple[int, memoryview]:
        """Write one frame (``head`` then ``tail``) and wait for the one reply it gets."""
        transport = self._transport
        if self._lost is not None:
            raise self._lost
        assert transport is not None and self._waiter is None, "one request at a time"
        if tail is None:
            transport.write(head)
        else:
            transport.writelines((head, tail))
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
        waiter: asyncio.Future[tuple[int, memoryview]] = loop.create_future()
        self._waiter = waiter
        if timeout_s is None:
            return await waiter
        handle = loop.call_later(timeout_s, self._on_timeout, waiter, timeout_s)
        try:
            return await waiter
        finally:
            handle.cancel()
            self._waiter = None


# ---------------------------------------------------------------------------------------------
# The client


class _Decodable(Protocol):
    @classmethod
    def decode(cls, reader: Reader) -> Self: ...


D = TypeVar("D", bound=_Decodable)


class IggyClient:
    """One connection to a tidelog / Iggy 0.8 server, one typed method per command.

    Build it with ``await IggyClient.connect(...)`` or
    ``await IggyClient.from_connection_string(...)``. Identifier arguments take an ``int``
    (numeric id) or a ``str`` (name; a string of digits means that numeric id, as in the SDK).
    Reads of a missing entity return ``None`` (or ``[]``), mutations raise
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
        self._joined: set[tuple[Identifier, Identifier, Identifier]] = set()
        self._wire: _Wire | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._opened = False
        self.user_id: int | None = None
        self.requests_count = 0
        """Requests written so far (logins and retries included): cheap client-side metrics."""
        self.reconnects_count = 0

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
        )
        await client.open()
        return client

    @classmethod
    async def from_connection_string(cls, connection_string: str, **overrides: Any) -> Self:
        """``iggy+tcp://user:pass@host:port?reconnection_retries=3&reconnection_interval=1s``,
        or ``iggy+tcp://TOKEN@host:port``; connects and logs in. ``overrides`` win over the string.
        """
        o = parse_connection_string(connection_string)
        kwargs: dict[str, Any] = {
            "username": o.username,
            "password": o.password,
            "token": o.token,
            "reconnect_retries": o.reconnect_retries,
            "reconnect_interval_s": o.reconnect_interval_s,
            "nodelay": o.nodelay,
        }
        kwargs.update(overrides)
        return await cls.connect(o.address, **kwargs)

    async def open(self) -> None:
        """Establish the first connection (a no-op when one is up)."""
        async with self._lock:
            if self._wire is None or not self._wire.usable:
                await self._first_connection()

    async def _first_connection(self) -> _Wire:
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

    async def _dial(self) -> _Wire:
        host, port = split_address(self.address)
        loop = asyncio.get_running_loop()
        max_reply = self.max_reply_bytes
        try:
            transport, wire = await asyncio.wait_for(
                loop.create_connection(lambda: _Wire(max_reply), host, port), self.connect_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            raise IggyConnectionError(
                f"cannot connect to {self.address}: {exc or type(exc).__name__}"
            ) from exc
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if self.nodelay else 0)
        return wire

    async def _establish(self, tries: int | None) -> _Wire:
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

    async def _login_on(self, wire: _Wire) -> None:
        login: LoginUser | LoginWithPersonalAccessToken | None = None
        if self._token is not None:
            login = LoginWithPersonalAccessToken(self._token)
        elif self._credentials is not None:
            login = LoginUser(*self._credentials)
        if login is not None:
            body = await self._checked_on(wire, login.CODE, login.encode())
            self.user_id = decode_record(Identity, body).user_id
        for stream, topic, group in sorted(self._joined, key=repr):
            try:
                await self._checked_on(
                    wire, Command.JOIN_CONSUMER_GROUP, JoinConsumerGroup(stream, topic, group).encode()
                )
            except IggyServerError as exc:
                log.warning("could not re-join consumer group %r after reconnecting: %s", group, exc)
                self._joined.discard((stream, topic, group))

    async def _checked_on(self, wire: _Wire, code: int, payload: bytes) -> memoryview:
        self.requests_count += 1
        status, body = await wire.roundtrip(
            encode_request_header(code, len(payload)) + payload, None, self.timeout_s
        )
        if status != Status.OK:
            raise IggyServerError(status, code)
        return body

    async def _reconnect(self) -> _Wire:
        if self.reconnect_retries == 0:
            raise IggyConnectionError(f"not connected to {self.address} (reconnecting is disabled)")
        self.reconnects_count += 1
        log.warning("reconnecting to %s", self.address)
        return await self._establish(self.reconnect_retries)

    def _drop(self, wire: _Wire) -> None:
        wire.abort()
        if self._wire is wire:
            self._wire = None

    async def _exchange(self, code: int, head: BytesLike, tail: BytesLike | None) -> tuple[int, memoryview]:
        """Send one frame and return its reply; reconnect and retry once if the line drops."""
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
                self.requests_count += 1
                try:
                    status, body = await wire.roundtrip(head, tail, self.timeout_s)
                except IggyConnectionError:
                    self._drop(wire)
                    if retried or self.reconnect_retries == 0 or self._closed:
                        raise
                    retried = True
                    continue
                except BaseException:
                    # Timed out or cancelled mid-request: a late reply would be taken for the
                    # next request's, so this connection cannot be used again.
                    self._drop(wire)
                    raise
                if status in _DROP_STATUSES:
                    self._drop(wire)
                    if not retried and self.reconnect_retries != 0 and not self._closed:
                        retried = True
                        continue
                return status, body

    async def request(self, code: int, payload: bytes | bytearray | memoryview = b"") -> memoryview:
        """Send any command; return the reply payload or raise :class:`IggyServerError`."""
        n = len(payload)
        if n <= _JOIN_WRITE_MAX_BYTES:
            status, body = await self._exchange(code, encode_request_header(code, n) + payload, None)
        else:
            status, body = await self._exchange(code, encode_request_header(code, n), payload)
        if status != Status.OK:
            raise IggyServerError(status, code)
        return body

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
        return await self._optional(UserDetails, Command.GET_USER, GetUser(_ident(user)).encode())

    async def get_users(self) -> list[UserInfo]:
        return decode_list(UserInfo, await self.request(Command.GET_USERS))

    async def create_user(
        self,
        username: str,
        password: str,
        status: int = UserStatus.ACTIVE,
        permissions: Permissions | None = None,
    ) -> UserDetails:
        body = await self.request(
            Command.CREATE_USER, CreateUser(username, password, status, permissions).encode()
        )
        return decode_record(UserDetails, body)

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
        body = await self.request(Command.LOGIN_USER, LoginUser(username, password).encode())
        self._credentials = (username, password)
        self._token = None
        self.user_id = decode_record(Identity, body).user_id
        return self.user_id

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
        body = await self.request(
            Command.LOGIN_WITH_PERSONAL_ACCESS_TOKEN, LoginWithPersonalAccessToken(token).encode()
        )
        self._token = token
        self._credentials = None
        self.user_id = decode_record(Identity, body).user_id
        return self.user_id

    # -- messages ------------------------------------------------------------------------------

    async def send_messages(
        self,
        stream: int | str,
        topic: int | str,
        partitioning: Partitioning,
        messages: Sequence[OutgoingMessage | bytes],
    ) -> None:
        """Send one batch, built into one buffer (checksum/offset/timestamp left for the server)."""
        payload = _send_payload(stream, topic, partitioning, messages)
        await self.request(Command.SEND_MESSAGES, payload)

    async def send_raw(self, frame: bytes | bytearray | memoryview) -> None:
        """Send a whole pre-encoded SendMessages frame (see :func:`encode_send_frame`) unchanged."""
        assert len(frame) >= FRAME_HEADER_SIZE
        status, _ = await self._exchange(Command.SEND_MESSAGES, frame, None)
        if status != Status.OK:
            raise IggyServerError(status, Command.SEND_MESSAGES)

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
        """Poll without parsing messages: the reply header and a view of the message bytes."""
        request = PollMessages(
            consumer,
            _ident(stream),
            _ident(topic),
            partition_id,
            strategy.kind,
            strategy.value,
            count,
            auto_commit,
        )
        body = await self.request(Command.POLL_MESSAGES, request.encode())
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
        """Poll; the messages are views over the received buffer (copy what you keep long)."""
        request = PollMessages(
            consumer,
            _ident(stream),
            _ident(topic),
            partition_id,
            strategy.kind,
            strategy.value,
            count,
            auto_commit,
        )
        body = await self.request(Command.POLL_MESSAGES, request.encode())
        if len(body) < POLL_REPLY_HEADER_SIZE:
            return PolledBatch(partition_id or 0, 0, [])
        header, messages = decode_poll_reply(body)
        return PolledBatch(header.partition_id, header.current_offset, messages)

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
        payload = StoreConsumerOffset(consumer, _ident(stream), _ident(topic), partition_id, offset).encode()
        await self.request(Command.STORE_CONSUMER_OFFSET, payload)

    async def delete_consumer_offset(
        self, consumer: Consumer, stream: int | str, topic: int | str, partition_id: int | None
    ) -> None:
        payload = DeleteConsumerOffset(consumer, _ident(stream), _ident(topic), partition_id).encode()
        await self.request(Command.DELETE_CONSUMER_OFFSET, payload)

    # -- streams -------------------------------------------------------------------------------

    async def get_stream(self, stream: int | str) -> StreamDetails | None:
        return await self._optional(StreamDetails, Command.GET_STREAM, GetStream(_ident(stream)).encode())

    async def get_streams(self) -> list[StreamInfo]:
        return decode_list(StreamInfo, await self.request(Command.GET_STREAMS))

    async def create_stream(self, name: str) -> StreamInfo:
        return decode_record(
            StreamInfo, await self.request(Command.CREATE_STREAM, CreateStream(name).encode())
        )

    async def update_stream(self, stream: int | str, name: str) -> None:
        await self.request(Command.UPDATE_STREAM, UpdateStream(_ident(stream), name).encode())

    async def delete_stream(self, stream: int | str) -> None:
        await self.request(Command.DELETE_STREAM, DeleteStream(_ident(stream)).encode())

    async def purge_stream(self, stream: int | str) -> None:
        await self.request(Command.PURGE_STREAM, PurgeStream(_ident(stream)).encode())

    # -- topics and partitions -----------------------------------------------------------------

    async def get_topic(self, stream: int | str, topic: int | str) -> TopicDetails | None:
        return await self._optional(
            TopicDetails, Command.GET_TOPIC, GetTopic(_ident(stream), _ident(topic)).encode()
        )

    async def get_topics(self, stream: int | str) -> list[TopicInfo]:
        return decode_list(
            TopicInfo, await self.request(Command.GET_TOPICS, GetTopics(_ident(stream)).encode())
        )

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
        """Expiry and size: 0 = server default, ``U64_MAX`` = never / unlimited."""
        request = CreateTopic(
            _ident(stream),
            partitions_count,
            compression_algorithm,
            message_expiry_us,
            max_topic_size_bytes,
            replication_factor,
            name,
        )
        return decode_record(TopicDetails, await self.request(Command.CREATE_TOPIC, request.encode()))

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
        request = UpdateTopic(
            _ident(stream),
            _ident(topic),
            compression_algorithm,
            message_expiry_us,
            max_topic_size_bytes,
            replication_factor,
            name,
        )
        await self.request(Command.UPDATE_TOPIC, request.encode())

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

    async def join_consumer_group(self, stream: int | str, topic: int | str, group: int | str) -> None:
        """Join; the membership is renewed on every reconnect until :meth:`leave_consumer_group`."""
        key = (_ident(stream), _ident(topic), _ident(group))
        await self.request(Command.JOIN_CONSUMER_GROUP, JoinConsumerGroup(*key).encode())
        self._joined.add(key)

    async def leave_consumer_group(self, stream: int | str, topic: int | str, group: int | str) -> None:
        key = (_ident(stream), _ident(topic), _ident(group))
        self._joined.discard(key)
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
    "ConnectionOptions",
    "ConsumerId",
    "IggyClient",
    "IggyConnectionError",
    "IggyServerError",
    "IggyTimeoutError",
    "PolledBatch",
    "PollingStrategy",
    "encode_send_frame",
    "parse_connection_string",
    "parse_duration_s",
    "status_name",
]

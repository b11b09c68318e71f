"""Benchmark actors: producer, consumer and producing-consumer loops, one process each.

Each actor owns one TCP connection driven by a lean ``asyncio.BufferedProtocol`` on uvloop over
the generation's client-side framing machine (``wire/``): a reply body is received into one
reusable buffer and only its frame header (and, for polls, the 16-byte poll header) is ever
decoded. Send frames are encoded once before the start
barrier and written unchanged for every batch; the poll frame is encoded once and its offset
(and partition) fields are patched in place. So the hot loops do no per-message Python work,
and the client side stays far from being the bottleneck.

Both generations are spoken: 0.9 (VSR framing, the default) and 0.8 (classic framing). The
wire class owns the difference (its framing machine, request numbers, login),
and every loop below runs unchanged over either. A 0.9 send frame is a batch built once
(checksums valid, so the server accepts it unchanged every time) whose only per-send change
is the header's request number.

Timing uses ``time.perf_counter_ns`` (CLOCK_MONOTONIC on Linux, shared by all processes), so
windows of different actors line up. Latency is recorded per batch in microseconds; batches
that *start* inside the warm-up window count towards the totals but not towards metrics.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
import traceback
import uuid
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from multiprocessing.sharedctypes import Synchronized
from typing import TYPE_CHECKING, Any, ClassVar

from tidelog.wire.codes import (
    FRAME_HEADER_SIZE,
    MESSAGE_HEADER_SIZE,
    POLL_REPLY_HEADER_SIZE,
    U32_MAX,
    Command,
    Status,
)
from tidelog.wire.framing import ClientFraming as ClientFraming08
from tidelog.wire.framing import ReplyReceived as ReplyReceived08
from tidelog.wire.primitives import Consumer, ConsumerKind, PollingKind
from tidelog.wire.requests import (
    JoinConsumerGroup,
    LoginUser,
    OutgoingMessage,
    Partitioning,
    PollMessages,
    encode_send_messages,
)
from tidelog.wire.v09 import frames as f09
from tidelog.wire.v09.batch import build_batch
from tidelog.wire.v09.bodies import SyncConsumerGroup, decode_sync_group09, encode_send_messages09
from tidelog.wire.v09.codes import (
    PROTOCOL_VERSION,
    CommandCode,
    EvictionReason,
    Operation,
    ReplyFraming,
    Status09,
    operation_for_code,
    reply_framing,
)
from tidelog.wire.v09.frames import Generation
from tidelog.wire.v09.header import HEADER_SIZE

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Barrier

_POLL_COUNT = struct.Struct("<I")
_POLL_COUNT_AT = 12  # partition_id u32, current_offset u64, then messages_count u32
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
# PollMessages ends with a fixed tail: partition flag u8, partition u32, kind u8, value u64,
# count u32, auto_commit u8. Its field positions are what the hot loop patches.
_POLL_TAIL_SIZE = struct.calcsize("<BIBQIB")
_POLL_PARTITION_IN_TAIL = 1
_POLL_VALUE_IN_TAIL = 6
assert _POLL_TAIL_SIZE == 19 and POLL_REPLY_HEADER_SIZE == _POLL_COUNT_AT + 4

# Section 4.5: a group poll answers this partition id when the member's assignment is stale.
_STALE_ASSIGNMENT = 0xFFFFFFFF
# What the bench says it is at login (section 3.2): the SDK generation it speaks.
_SDK_VERSION = f09.ClientVersionInfo(PROTOCOL_VERSION, "tidelog-bench", "0.11.0")
EVICTED = -1
"""Status a 0.9 wire reports for an eviction frame (the reason is in ``eviction_reason``)."""
BAD_REPLY = -2
"""Status for a reply frame the SDK would refuse; the connection is closed."""

_INITIAL_REPLY_BYTES = 1 << 20
# Empty polls back off from 100 µs up to 5 ms: short enough not to distort tail latency of a
# consumer chasing a producer, long enough not to burn a shared core spinning.
_BACKOFF_MIN_S = 0.0001
_BACKOFF_MAX_S = 0.005
# Group consumers whose assignment is empty (more members than partitions) just wait.
_IDLE_SLEEP_S = 0.002
_NS_PER_US = 1000
BARRIER_TIMEOUT_S = 60.0
"""How long anyone waits at the start barrier for the slowest process to connect."""
LATENCY_MAX_US = 3_600_000_000
"""Highest latency the histograms track (one hour): anything longer is a hung run."""


# The Iggy generation the actors speak on the measured connections: the wire's own enum.
Protocol = Generation


class ActorKind(StrEnum):
    PRODUCER = "producer"
    CONSUMER = "consumer"
    PRODUCING_CONSUMER = "producing_consumer"


class BenchWireError(RuntimeError):
    """The server refused a benchmark request or the connection broke."""


# ---------------------------------------------------------------------------------------------
# The lean connection


class LeanWire(asyncio.BufferedProtocol):
    """One request in flight; each reply body lands in one reusable buffer (``self.reply``).

    The framing is the generation's client-side machine (``wire/framing.py`` for 0.8,
    :class:`LeanWire09` with ``wire/v09/frames.py``): it says how many bytes to receive next,
    the header goes into the machine's buffer and the body straight into ``self.reply``.
    This class speaks 0.8; :class:`LeanWire09` overrides the hooks (``_outcome``,
    ``request``, ``template``, ``renumber``, ``result``, ``login``) for 0.9.
    """

    protocol: ClassVar[Protocol] = Protocol.V08
    header_size: ClassVar[int] = FRAME_HEADER_SIZE
    """Bytes of a request header, which is also where a request body starts."""
    renumbers: ClassVar[bool] = False
    """Whether a resent SendMessages frame must go through :meth:`renumber` first."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self.framing: ClientFraming08 | f09.ClientFraming = self._new_framing()
        self.reply = bytearray(_INITIAL_REPLY_BYTES)
        self._reply_view = memoryview(self.reply)
        self.reply_length = 0
        self._waiter: asyncio.Future[int] | None = None
        self._lost: BaseException | None = None

    def _new_framing(self) -> ClientFraming08 | f09.ClientFraming:
        # The benchmark's own buffer grows to any reply: no cap below the u32 length.
        return ClientFraming08(max_payload_bytes=U32_MAX)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass; it has the same methods.
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_buffer(self, sizehint: int) -> memoryview:
        # Never more than the current step needs: the next frame must start in the header
        # buffer (only one request is in flight, but the server may say goodbye).
        return self.framing.buffer()

    def buffer_updated(self, nbytes: int) -> None:
        framing = self.framing
        was_body = framing.reading_body
        event = framing.received(nbytes)
        if event is None:
            if not was_body and framing.reading_body:  # a header announced a body
                length = framing.bytes_needed
                if length > len(self.reply):
                    self.reply = bytearray(max(length, 2 * len(self.reply)))
                    self._reply_view = memoryview(self.reply)
                framing.use_body_buffer(self._reply_view)
            return
        status, self.reply_length = self._outcome(event)
        self._complete(status)

    def _outcome(self, event: object) -> tuple[int, int]:
        """(status, body bytes in ``reply``) of a reply event."""
        if isinstance(event, ReplyReceived08):
            return event.status, len(event.payload)
        self.close()  # a FramingError: the stream is lost
        return BAD_REPLY, 0

    def _complete(self, status: int) -> None:
        waiter = self._waiter
        self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = BenchWireError(f"connection lost: {exc}" if exc else "server closed the connection")
        waiter = self._waiter
        self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(self._lost)

    async def call(self, frame: bytes | bytearray) -> int:
        """Write one whole request frame and return the reply status; payload in ``reply``."""
        if self._lost is not None:
            raise self._lost
        transport = self._transport
        assert transport is not None and self._waiter is None, "one request at a time"
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        transport.write(frame)
        return await waiter

    async def call_ok(self, frame: bytes | bytearray, what: str) -> memoryview:
        status = await self.call(frame)
        if status != Status.OK:
            raise self.failure(what, status)
        return self._reply_view[: self.reply_length]

    def failure(self, what: str, status: int) -> BenchWireError:
        if status == BAD_REPLY:
            return BenchWireError(f"{what}: the server sent a frame the SDK would refuse")
        return BenchWireError(f"{what} failed with status {status} ({_status_name(status)})")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # ---- framing hooks (0.8) -----------------------------------------------------------
    def request(self, code: CommandCode, body: bytes) -> bytearray:
        """A whole request frame for ``code``."""
        return bytearray(ClientFraming08.request(Command(int(code)), body))

    def template(self, code: CommandCode, body: bytes) -> bytearray:
        """A frame to be sent many times, each time after :meth:`renumber`."""
        return self.request(code, body)

    def renumber(self, frame: bytearray) -> None:
        """Prepare a :meth:`template` frame for its next send (0.8 frames carry no number)."""

    def result(self, code: CommandCode, payload: memoryview) -> memoryview:
        """The reply payload of a successful ``code`` (0.8: the payload as is)."""
        return payload

    async def request_ok(self, code: CommandCode, body: bytes) -> memoryview:
        """Send one ``code`` request and return its payload; raises on any refusal."""
        return self.result(code, await self.call_ok(self.request(code, body), code.name))

    async def login(self, username: str, password: str) -> None:
        await self.request_ok(CommandCode.LOGIN_USER, LoginUser(username, password).encode())


class LeanWire09(LeanWire):
    """The 0.9 framing (sections 1.2-1.7 of the 0.9 reference): 256-byte headers, the
    session and request number of a VSR client (kept by the machine), result sections and
    evictions."""

    protocol: ClassVar[Protocol] = Protocol.V09
    header_size: ClassVar[int] = HEADER_SIZE
    renumbers: ClassVar[bool] = True
    framing: f09.ClientFraming

    def __init__(self) -> None:
        super().__init__()
        self.eviction_reason: int | None = None

    def _new_framing(self) -> f09.ClientFraming:
        return f09.ClientFraming(client=uuid.uuid4().int or 1)  # a VSR client id is a non-zero u128

    @property
    def session(self) -> int:
        return self.framing.session

    @session.setter
    def session(self, value: int) -> None:
        self.framing.session = value

    @property
    def request_number(self) -> int:
        return self.framing.request_number

    def _outcome(self, event: object) -> tuple[int, int]:
        if isinstance(event, f09.ReplyReceived):
            return event.header.status, len(event.body)
        if isinstance(event, f09.EvictionReceived):
            self.eviction_reason = event.header.reason
            return EVICTED, 0
        # Anything else would make the SDK give up the connection ("Invalid command", 1.3).
        self.close()
        return BAD_REPLY, 0

    def failure(self, what: str, status: int) -> BenchWireError:
        if status == EVICTED:
            reason = self.eviction_reason
            try:
                name = EvictionReason(reason).name if reason is not None else "UNKNOWN"
            except ValueError:
                name = "UNKNOWN"
            return BenchWireError(f"{what}: the server evicted the client (reason {reason}, {name})")
        if status == BAD_REPLY:
            return BenchWireError(f"{what}: the server sent a frame that is not a 0.9 reply")
        try:
            name = Status09(status).name
        except ValueError:
            name = _status_name(status)
        return BenchWireError(f"{what} failed with status {status} ({name})")

    def request(self, code: CommandCode, body: bytes) -> bytearray:
        operation = operation_for_code(code)
        command = int(code) if operation == Operation.NON_REPLICATED else 0
        return bytearray(self.framing.frame(operation, body, command))

    def template(self, code: CommandCode, body: bytes) -> bytearray:
        operation = operation_for_code(code)
        command = int(code) if operation == Operation.NON_REPLICATED else 0
        return self.framing.template(operation, body, command)

    def renumber(self, frame: bytearray) -> None:
        # SendMessages is not checksummed by the SDK (request_checksum 0), so the request
        # number is the only header field that changes between sends.
        self.framing.renumber(frame)

    def result(self, code: CommandCode, payload: memoryview) -> memoryview:
        if reply_framing(operation_for_code(code)) == ReplyFraming.RAW:
            return payload
        section = f09.decode_result_section(payload)
        if isinstance(section, f09.ResultOk):
            return section.payload
        raise BenchWireError(f"{code.name} was refused: {section}")

    async def login(self, username: str, password: str) -> None:
        body = f09.encode_password_login(_SDK_VERSION, f09.PasswordLogin(username, password))
        payload = await self.call_ok(self.request(CommandCode.LOGIN_REGISTER, body), "login")
        reply = f09.decode_login_reply(payload)
        if not isinstance(reply, f09.LoginReply):
            raise BenchWireError(f"login was refused: {reply}")
        self.session = reply.session


def _status_name(status: int) -> str:
    try:
        return Status(status).name
    except ValueError:
        return "UNKNOWN"


WIRE_TYPES: dict[Protocol, type[LeanWire]] = {Protocol.V08: LeanWire, Protocol.V09: LeanWire09}


async def open_wire(
    address: str, username: str, password: str, protocol: Protocol = Protocol.V09
) -> LeanWire:
    host, _, port = address.rpartition(":")
    loop = asyncio.get_running_loop()
    _, wire = await loop.create_connection(WIRE_TYPES[protocol], host.strip("[]"), int(port))
    await wire.login(username, password)
    return wire


# ---------------------------------------------------------------------------------------------
# Frames, built once


def payload_bytes(message_size: int, seed: int) -> bytes:
    """Incompressible payload bytes, different per actor, the same for every batch."""
    return (seed.to_bytes(8, "little") + os.urandom(message_size))[:message_size]


def build_send_frame(
    wire: LeanWire,
    stream_id: int,
    topic_id: int,
    partitioning: Partitioning,
    messages_per_batch: int,
    payload: bytes,
) -> bytearray:
    """A whole SendMessages frame in ``wire``'s framing; ids stay 0 so the server assigns
    them, as the SDK does. The 0.9 batch is built here once, every checksum included, and
    resent unchanged: the server stamps offsets and timestamps into its own copy."""
    n = messages_per_batch
    if wire.protocol == Protocol.V08:
        body = encode_send_messages(stream_id, topic_id, partitioning, [OutgoingMessage(payload)] * n)
    else:
        now_us = time.time_ns() // 1000
        batch = build_batch([0] * n, [payload] * n, [b""] * n, [now_us] * n)
        body = encode_send_messages09(stream_id, topic_id, partitioning, batch)
    return wire.template(CommandCode.SEND_MESSAGES, body)


@dataclass(slots=True)
class PollFrame:
    """A PollMessages frame (strategy Offset, auto-commit off) with patchable fields."""

    frame: bytearray
    value_at: int
    partition_at: int

    def set(self, partition_id: int, offset: int) -> None:
        _U32.pack_into(self.frame, self.partition_at, partition_id)
        _U64.pack_into(self.frame, self.value_at, offset)


def build_poll_frame(
    wire: LeanWire,
    consumer: Consumer,
    stream_id: int,
    topic_id: int,
    partition_id: int | None,
    count: int,
    kind: int = PollingKind.OFFSET,
    auto_commit: bool = False,
) -> PollFrame:
    """A PollMessages frame in ``wire``'s framing (the body is the same in both
    generations); for ``partition_id`` None the partition field is not patchable. A 0.9 poll
    is NonReplicated, so it carries no request number of its own and is resent as is."""
    payload = PollMessages(consumer, stream_id, topic_id, partition_id, kind, 0, count, auto_commit).encode()
    frame = wire.request(CommandCode.POLL_MESSAGES, payload)
    tail_at = len(frame) - _POLL_TAIL_SIZE
    poll = PollFrame(frame, tail_at + _POLL_VALUE_IN_TAIL, tail_at + _POLL_PARTITION_IN_TAIL)
    body_at = wire.header_size
    # Pair assertion: the patched positions are the fields the codec decodes.
    if partition_id is not None:
        poll.set(partition_id + 7, 0x0102030405060708)
        decoded = PollMessages.decode(memoryview(frame)[body_at:])
        assert decoded.partition_id == partition_id + 7
        assert decoded.strategy_value == 0x0102030405060708
        poll.set(partition_id, 0)
    decoded = PollMessages.decode(memoryview(frame)[body_at:])
    assert decoded.count == count and decoded.auto_commit == auto_commit and decoded.strategy_kind == kind
    assert decoded.partition_id == partition_id and decoded.strategy_value == 0
    return poll


# ---------------------------------------------------------------------------------------------
# What an actor is told and what it reports


@dataclass(frozen=True, slots=True)
class ActorSpec:
    kind: ActorKind
    actor_id: int
    """1-based within its kind, as iggy-bench numbers actors."""
    slot: int
    """Index into the shared progress array."""
    address: str
    username: str
    password: str
    stream_id: int
    topic_id: int
    message_size: int
    messages_per_batch: int
    message_batches: int = 0
    """Producers and producing consumers: batches to send."""
    partition_id: int = 0
    balanced: bool = False
    """Producers: balanced partitioning instead of ``partition_id``."""
    expected_messages: int = 0
    """Consumers: messages to read (alone, or with the group when ``group_id`` is set)."""
    group_id: int | None = None
    partitions_count: int = 1
    """Partitions of the topic (group consumers' back-off patience)."""
    warmup_ns: int = 0
    sampling_ns: int = 100_000_000
    rate_bytes_per_s: float | None = None
    protocol: Protocol = Protocol.V09
    record: bool = True
    """False for prefill producers: nothing is measured or reported back but counts."""

    @property
    def message_bytes(self) -> int:
        """Bytes of one message on the wire and on disk: the 64-byte header plus payload."""
        return MESSAGE_HEADER_SIZE + self.message_size


@dataclass(slots=True)
class ActorResult:
    kind: ActorKind
    actor_id: int
    error: str | None = None
    total_messages: int = 0
    total_bytes: int = 0
    total_batches: int = 0
    measured_messages: int = 0
    measured_bytes: int = 0
    measured_batches: int = 0
    measured_time_ns: int = 0
    total_time_ns: int = 0
    cpu_time_ns: int = 0
    """CPU (user + system) the actor process spent from the start to its last batch: near
    ``total_time_ns`` means the client, not the server, set the pace."""
    empty_polls: int = 0
    histogram: bytes = b""
    """HdrHistogram (µs), encoded; empty when nothing was measured."""
    window_ns: int = 0
    window_bytes: list[int] = field(default_factory=list)
    window_messages: list[int] = field(default_factory=list)
    window_latency_sum_us: list[int] = field(default_factory=list)
    window_batches: list[int] = field(default_factory=list)
    last_window_ns: int = 0
    """Length of the last (partial) window."""
    partitions: list[int] = field(default_factory=list)
    """Group consumers: the partitions the server served them from."""


class Recorder:
    """Per-batch bookkeeping: totals always, metrics only after the warm-up."""

    __slots__ = (
        "end_ns",
        "latencies_us",
        "measure_start_ns",
        "measured_batches",
        "measured_bytes",
        "measured_messages",
        "sampling_ns",
        "start_ns",
        "total_batches",
        "total_bytes",
        "total_messages",
        "w_batches",
        "w_bytes",
        "w_latency_us",
        "w_messages",
    )

    def __init__(self, start_ns: int, warmup_ns: int, sampling_ns: int) -> None:
        assert sampling_ns > 0 and warmup_ns >= 0
        self.start_ns = start_ns
        self.measure_start_ns = start_ns + warmup_ns
        self.sampling_ns = sampling_ns
        self.end_ns = start_ns
        self.latencies_us = array("q")
        self.total_messages = self.total_bytes = self.total_batches = 0
        self.measured_messages = self.measured_bytes = self.measured_batches = 0
        self.w_bytes: list[int] = []
        self.w_messages: list[int] = []
        self.w_latency_us: list[int] = []
        self.w_batches: list[int] = []

    def record(self, begin_ns: int, end_ns: int, messages: int, nbytes: int) -> None:
        self.total_messages += messages
        self.total_bytes += nbytes
        self.total_batches += 1
        self.end_ns = end_ns
        if begin_ns < self.measure_start_ns:
            return
        latency_us = (end_ns - begin_ns) // _NS_PER_US
        self.latencies_us.append(latency_us)
        self.measured_messages += messages
        self.measured_bytes += nbytes
        self.measured_batches += 1
        window = (end_ns - self.measure_start_ns) // self.sampling_ns
        w_bytes = self.w_bytes
        while len(w_bytes) <= window:
            w_bytes.append(0)
            self.w_messages.append(0)
            self.w_latency_us.append(0)
            self.w_batches.append(0)
        w_bytes[window] += nbytes
        self.w_messages[window] += messages
        self.w_latency_us[window] += latency_us
        self.w_batches[window] += 1

    def result(self, spec: ActorSpec) -> ActorResult:
        measured_ns = max(0, self.end_ns - self.measure_start_ns) if self.measured_batches else 0
        windows = len(self.w_bytes)
        last_window_ns = measured_ns - (windows - 1) * self.sampling_ns if windows else 0
        return ActorResult(
            kind=spec.kind,
            actor_id=spec.actor_id,
            total_messages=self.total_messages,
            total_bytes=self.total_bytes,
            total_batches=self.total_batches,
            measured_messages=self.measured_messages,
            measured_bytes=self.measured_bytes,
            measured_batches=self.measured_batches,
            measured_time_ns=measured_ns,
            total_time_ns=max(0, self.end_ns - self.start_ns),
            histogram=encode_histogram(self.latencies_us) if spec.record else b"",
            window_ns=self.sampling_ns,
            window_bytes=self.w_bytes,
            window_messages=self.w_messages,
            window_latency_sum_us=self.w_latency_us,
            window_batches=self.w_batches,
            last_window_ns=max(0, last_window_ns),
        )


def encode_histogram(latencies_us: Sequence[int]) -> bytes:
    if not latencies_us:
        return b""
    from hdrh.histogram import HdrHistogram

    histogram = HdrHistogram(1, LATENCY_MAX_US, 3)
    for value in latencies_us:
        histogram.record_value(min(max(value, 1), LATENCY_MAX_US))
    encoded: bytes = histogram.encode()
    return encoded


# ---------------------------------------------------------------------------------------------
# The loops


class _Pacer:
    """Token bucket by arithmetic: batch n may start at ``start + bytes_before_n / rate``."""

    __slots__ = ("rate_bytes_per_ns", "sent_bytes", "start_ns")

    def __init__(self, start_ns: int, rate_bytes_per_s: float) -> None:
        assert rate_bytes_per_s > 0
        self.start_ns = start_ns
        self.rate_bytes_per_ns = rate_bytes_per_s / 1e9
        self.sent_bytes = 0

    def wait(self, nbytes: int) -> None:
        due_ns = self.start_ns + int(self.sent_bytes / self.rate_bytes_per_ns)
        self.sent_bytes += nbytes
        delay_ns = due_ns - time.perf_counter_ns()
        if delay_ns > 0:
            # The actor has nothing else to do on its loop: a plain sleep is the most precise.
            time.sleep(delay_ns / 1e9)


async def _produce(spec: ActorSpec, wire: LeanWire, frame: bytearray, rec: Recorder, progress: Any) -> None:
    messages = spec.messages_per_batch
    nbytes = messages * spec.message_bytes
    pacer = _Pacer(rec.start_ns, spec.rate_bytes_per_s) if spec.rate_bytes_per_s else None
    slot = spec.slot
    clock = time.perf_counter_ns
    call = wire.call
    renumber = wire.renumber if wire.renumbers else None
    for _ in range(spec.message_batches):
        if pacer is not None:
            pacer.wait(nbytes)
        if renumber is not None:
            renumber(frame)
        begin = clock()
        status = await call(frame)
        end = clock()
        if status != Status.OK:
            raise wire.failure("SendMessages", status)
        rec.record(begin, end, messages, nbytes)
        progress[slot] += messages


async def _consume_pinned(
    spec: ActorSpec, wire: LeanWire, poll: PollFrame, rec: Recorder, progress: Any
) -> int:
    """Reads its partition from offset 0 until ``expected_messages``; returns empty polls."""
    expected = spec.expected_messages
    message_bytes = spec.message_bytes
    offset = received = empty = 0
    backoff_s = _BACKOFF_MIN_S
    slot = spec.slot
    clock = time.perf_counter_ns
    call = wire.call
    partition = spec.partition_id
    while received < expected:
        poll.set(partition, offset)
        begin = clock()
        status = await call(poll.frame)
        end = clock()
        if status != Status.OK:
            raise wire.failure("PollMessages", status)
        count = _POLL_COUNT.unpack_from(wire.reply, _POLL_COUNT_AT)[0] if wire.reply_length else 0
        if not count:
            empty += 1
            time.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, _BACKOFF_MAX_S)
            continue
        backoff_s = _BACKOFF_MIN_S
        offset += count
        received += count
        # Message bytes as the producers count them (64-byte header + payload), whatever the
        # generation's framing of the records: so 0.8 and 0.9 figures compare.
        rec.record(begin, end, count, count * message_bytes)
        progress[slot] += count
    return empty


async def _consume_group(
    spec: ActorSpec,
    wire: LeanWire,
    poll: PollFrame,
    rec: Recorder,
    progress: Any,
    group_total: Synchronized[int],
) -> tuple[int, list[int]]:
    """Polls Next with auto-commit, as iggy-bench's group consumers do: the server picks the
    member's next partition and keeps the group's offset. Stops once the whole group has read
    ``expected_messages``; returns empty polls and the partitions it was served from.

    On 0.9 a group poll names its partition (section 5.4): the member syncs its assignment
    (SyncConsumerGroup) and polls those partitions round-robin, as the SDK does, syncing
    again when the server answers "stale" or it has none."""
    expected = spec.expected_messages
    message_bytes = spec.message_bytes
    empty = empties_in_row = 0
    backoff_s = _BACKOFF_MIN_S
    slot = spec.slot
    clock = time.perf_counter_ns
    call = wire.call
    seen: set[int] = set()
    frame = poll.frame
    explicit = wire.protocol == Protocol.V09
    assigned: list[int] = await _sync_group(wire, spec) if explicit else []
    turn = 0
    # The server rotates over the member's partitions, so one empty reply says little; a run
    # of as many empties as the topic has partitions says they are all drained for now.
    patience = max(1, spec.partitions_count)
    while group_total.value < expected:
        if explicit:
            if not assigned:
                time.sleep(_IDLE_SLEEP_S)
                assigned = await _sync_group(wire, spec)
                continue
            turn = (turn + 1) % len(assigned)
            poll.set(assigned[turn], 0)
            patience = len(assigned)
        begin = clock()
        status = await call(frame)
        end = clock()
        if status != Status.OK:
            raise wire.failure("PollMessages", status)
        count = _POLL_COUNT.unpack_from(wire.reply, _POLL_COUNT_AT)[0] if wire.reply_length else 0
        if explicit and _U32.unpack_from(wire.reply, 0)[0] == _STALE_ASSIGNMENT:
            assigned = await _sync_group(wire, spec)
            continue
        if not count:
            empty += 1
            empties_in_row += 1
            if empties_in_row >= patience:
                empties_in_row = 0
                time.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, _BACKOFF_MAX_S)
            continue
        empties_in_row = 0
        backoff_s = _BACKOFF_MIN_S
        seen.add(_U32.unpack_from(wire.reply, 0)[0])
        with group_total.get_lock():
            group_total.value += count
        rec.record(begin, end, count, count * message_bytes)
        progress[slot] += count
    return empty, sorted(seen)


async def _sync_group(wire: LeanWire, spec: ActorSpec) -> list[int]:
    """The partitions the server lets this 0.9 member poll now (empty: none, or not a member)."""
    assert spec.group_id is not None
    body = SyncConsumerGroup(spec.stream_id, spec.topic_id, spec.group_id).encode()
    synced = decode_sync_group09(await wire.request_ok(CommandCode.SYNC_CONSUMER_GROUP, body))
    return [] if synced is None else list(synced.partition_ids)


async def _produce_and_consume(
    spec: ActorSpec, wire: LeanWire, frame: bytearray, poll: PollFrame, rec: Recorder, progress: Any
) -> int:
    """Send a batch, then poll it back; latency is send start to the last message received."""
    messages = spec.messages_per_batch
    nbytes = messages * spec.message_bytes
    pacer = _Pacer(rec.start_ns, spec.rate_bytes_per_s) if spec.rate_bytes_per_s else None
    offset = empty = 0
    slot = spec.slot
    clock = time.perf_counter_ns
    call = wire.call
    renumber = wire.renumber if wire.renumbers else None
    partition = spec.partition_id
    for _ in range(spec.message_batches):
        if pacer is not None:
            pacer.wait(nbytes)
        if renumber is not None:
            renumber(frame)
        begin = clock()
        status = await call(frame)
        if status != Status.OK:
            raise wire.failure("SendMessages", status)
        got = 0
        while got < messages:
            poll.set(partition, offset)
            status = await call(poll.frame)
            if status != Status.OK:
                raise wire.failure("PollMessages", status)
            count = _POLL_COUNT.unpack_from(wire.reply, _POLL_COUNT_AT)[0] if wire.reply_length else 0
            if not count:
                # The send was acknowledged, so the batch is readable; an empty reply is rare.
                empty += 1
                time.sleep(_BACKOFF_MIN_S)
                continue
            got += count
            offset += count
        end = clock()
        rec.record(begin, end, messages, nbytes)
        progress[slot] += messages
    return empty


async def _actor_main(
    spec: ActorSpec, barrier: Barrier, progress: Any, group_total: Synchronized[int] | None
) -> ActorResult:
    wire = await open_wire(spec.address, spec.username, spec.password, spec.protocol)
    try:
        frame = bytearray()
        poll: PollFrame | None = None
        if spec.kind in (ActorKind.PRODUCER, ActorKind.PRODUCING_CONSUMER):
            partitioning = (
                Partitioning.balanced() if spec.balanced else Partitioning.partition_id(spec.partition_id)
            )
            frame = build_send_frame(
                wire,
                spec.stream_id,
                spec.topic_id,
                partitioning,
                spec.messages_per_batch,
                payload_bytes(spec.message_size, spec.slot),
            )
        if spec.kind in (ActorKind.CONSUMER, ActorKind.PRODUCING_CONSUMER):
            if spec.group_id is not None:
                join = JoinConsumerGroup(spec.stream_id, spec.topic_id, spec.group_id).encode()
                await wire.request_ok(CommandCode.JOIN_CONSUMER_GROUP, join)
                poll = build_poll_frame(
                    wire,
                    Consumer(ConsumerKind.CONSUMER_GROUP, spec.group_id),
                    spec.stream_id,
                    spec.topic_id,
                    # 0.9 group polls name the partition (patched per poll); 0.8 lets the
                    # server pick the member's next one.
                    0 if wire.protocol == Protocol.V09 else None,
                    spec.messages_per_batch,
                    PollingKind.NEXT,
                    auto_commit=True,
                )
            else:
                poll = build_poll_frame(
                    wire,
                    Consumer(ConsumerKind.CONSUMER, spec.actor_id),
                    spec.stream_id,
                    spec.topic_id,
                    spec.partition_id,
                    spec.messages_per_batch,
                )
        # Two phases: everyone is connected and has joined its group (so the partition
        # assignment has settled before anyone polls), then all start together.
        barrier.wait(BARRIER_TIMEOUT_S)
        barrier.wait(BARRIER_TIMEOUT_S)
        partitions: list[int] = []
        rec = Recorder(time.perf_counter_ns(), spec.warmup_ns, spec.sampling_ns)
        cpu_start_ns = time.process_time_ns()
        empty = 0
        if spec.kind == ActorKind.PRODUCER:
            await _produce(spec, wire, frame, rec, progress)
        elif spec.kind == ActorKind.PRODUCING_CONSUMER:
            assert poll is not None
            empty = await _produce_and_consume(spec, wire, frame, poll, rec, progress)
        elif spec.group_id is not None:
            assert poll is not None and group_total is not None
            empty, partitions = await _consume_group(spec, wire, poll, rec, progress, group_total)
        else:
            assert poll is not None
            empty = await _consume_pinned(spec, wire, poll, rec, progress)
        cpu_ns = time.process_time_ns() - cpu_start_ns
        result = rec.result(spec)
        result.cpu_time_ns = cpu_ns
        result.empty_polls = empty
        result.partitions = partitions
        return result
    finally:
        wire.close()


def run_actor(
    spec: ActorSpec,
    barrier: Barrier,
    progress: Any,
    results: Queue[ActorResult],
    group_total: Synchronized[int] | None = None,
) -> None:
    """Process entry point: runs the actor on uvloop and puts exactly one result on ``results``."""
    import uvloop

    try:
        result = uvloop.run(_actor_main(spec, barrier, progress, group_total))
    except BaseException as exc:
        # Release everyone still waiting at the barrier, then say what went wrong.
        barrier.abort()
        result = ActorResult(spec.kind, spec.actor_id, error=f"{exc!r}\n{traceback.format_exc()}")
    results.put(result)

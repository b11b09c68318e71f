"""Mutated 0.9 requests against a running server, and issue 7's list of bad 0.9 input.

Issue 7 asks that "a mutated frame always gets a status or an eviction, never a crash", and that
each bad input of its list gets "its documented status or eviction, with the server serving
others and stored data untouched". ``test_v09_server.py`` pins the basic answers; this file adds:

* A hypothesis run over valid requests of seven kinds (ping, GetStreams, CreateStream,
  SendMessages with a valid batch, PollMessages, StoreConsumerOffset, Register), mutated in the
  header (size, command, client, operation, session, request, reserved bytes, checksum, code)
  and the body (bits, truncation, extension, and for sends message counts, tiling, reserved
  bytes, targets and re-stamped checksums), 1-3 of them pipelined on one logged-in connection
  and now and then after a Logout. :func:`plan` cuts the bytes into frames as the server does
  (256-byte header, ``size`` at 48: reference 1.2), pads a short frame with zeros or, when that
  would take more than ``PAD_LIMIT_BYTES``, leaves mid-frame like a vanishing client, and stops
  at a header the server cannot continue after. :func:`expect` names each frame's answer from
  the reference (1.2, 1.6-1.8) and docs/v09-notes.md (Serving 2, Framing 2-5): a silent close,
  an eviction with its reason, a status with its code, or "served" (any documented status, never
  1, with the reply shaped for its operation). A reply missing for five seconds is a hang. A
  send answered OK must carry a batch that :func:`batch_messages` (struct + xxhash, not the
  server's codec) finds valid; at the end every partition holds exactly the baseline plus the
  confirmed batches, the baseline polls back byte for byte, and the server serves a new client.
* The cases of the list ``test_v09_server.py`` lacks or checks only in part, each followed by
  :func:`assert_untouched` (alive, serves a new client, seeded partition byte for byte as it
  was, no traceback logged).

Set TIDELOG_FUZZ_EXAMPLES to run more examples and TIDELOG_FUZZ_RANDOM=1 for fresh random ones
instead of the fixed, derandomized set CI runs.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum, IntEnum

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ServerProcess
from tests.wireclient import wait_until
from tests.wireclient09 import SDK_VERSION, Answer, Client09, Closed
from tidelog.wire import requests as c
from tidelog.wire.codes import MAX_CONTROL_PAYLOAD_BYTES, Status
from tidelog.wire.primitives import Consumer, ConsumerKind, Identifier, PollingKind
from tidelog.wire.records import ClientInfo, decode_list
from tidelog.wire.v09 import bodies as b
from tidelog.wire.v09 import frames as f
from tidelog.wire.v09.batch import build_batch, parse_records
from tidelog.wire.v09.codes import (
    CLIENT_OPERATIONS,
    REPLICATED_OPERATIONS,
    CommandCode,
    EvictionReason,
    Operation,
    ReplyFraming,
    Status09,
    VsrCommand,
    reply_framing,
)
from tidelog.wire.v09.header import HEADER_SIZE, MAX_FRAME_SIZE, REQUEST_OFFSETS, request_header_for

U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
# Request header fields (reference 1.2), at the offsets header.py asserts against its table.
SIZE_AT = REQUEST_OFFSETS["size"]
COMMAND_AT = REQUEST_OFFSETS["command"]
CLIENT_AT = REQUEST_OFFSETS["client"]
CHECKSUM_AT = REQUEST_OFFSETS["request_checksum"]
REQUEST_AT = REQUEST_OFFSETS["request"]
OPERATION_AT = REQUEST_OFFSETS["operation"]
SESSION_AT = REQUEST_OFFSETS["session"]
CODE_AT = REQUEST_OFFSETS["command_code"]
# Header bytes the server ignores (1.2): reserved_frame, padding, user_id, reserved.
IGNORED_HEADER_BYTES = [
    *range(62, 128),
    *range(177, 184),
    *range(REQUEST_OFFSETS["user_id"], CODE_AT),
    *range(REQUEST_OFFSETS["reserved"], HEADER_SIZE),
]
# Batch header (4.1) and message frame (4.2).
BATCH_HEADER_SIZE = 256
BATCH_LENGTH_AT, BATCH_CHECKSUM_AT, MESSAGE_COUNT_AT, BATCH_RESERVED_AT = 32, 40, 48, 52
FRAME = struct.Struct("<QQQIIIIQ")  # checksum, id lo, id hi, deltas, lengths, reserved
FRAME_HEADER_SIZE = FRAME.size
PAYLOAD_LENGTH_AT, FRAME_RESERVED_AT = 36, 40
MAX_PAYLOAD_BYTES, MAX_USER_HEADERS_BYTES = 64_000_000, 100_000  # 1.8

FUZZ_STREAM, SEED_STREAM = 0, 1  # ids follow creation order on a fresh server
FUZZ_TOPIC = SEED_TOPIC = 0
PARTITIONS = 2
PAD_LIMIT_BYTES = 1 << 20  # complete an unfinished frame with zeros up to this much
ANSWER_TIMEOUT_S = 5.0  # every answer here is immediate: longer is a hang
KNOWN_STATUSES = frozenset(int(s) for s in Status) | frozenset(int(s) for s in Status09)
LOGIN_EVICTIONS = frozenset(
    {
        EvictionReason.INVALID_CREDENTIALS,
        EvictionReason.INVALID_TOKEN,
        EvictionReason.USER_INACTIVE,
        EvictionReason.INCOMPATIBLE_PROTOCOL,
        EvictionReason.MALFORMED_LOGIN,
    }
)
# Operations a mutation may leave in a header; any other client operation could delete or
# rename the seeded data, log the root user out of its password, or create 1000 partitions,
# so plan() turns it into an invalid one (answered with eviction 4 and a close).
ALLOWED_OPERATIONS = frozenset(
    {
        Operation.REGISTER,
        Operation.NON_REPLICATED,
        Operation.LOGOUT,
        Operation.CREATE_STREAM,
        Operation.SEND_MESSAGES,
        Operation.STORE_CONSUMER_OFFSET,
        Operation.DELETE_CONSUMER_OFFSET,
    }
)
INVALID_OPERATION = 100  # within 64-127: invalid for a client (1.4)
EXAMPLES = int(os.environ.get("TIDELOG_FUZZ_EXAMPLES", "300"))
DERANDOMIZE = not os.environ.get("TIDELOG_FUZZ_RANDOM")


def u128(data: bytes | bytearray, at: int) -> int:
    return int.from_bytes(data[at : at + 16], "little")


# ---- an independent reading of SendMessages (4.1-4.3): struct and xxhash only ---------------------


@dataclass(frozen=True)
class Message:
    id: int
    payload: bytes
    user_headers: bytes


def batch_messages(body: bytes | bytearray) -> list[Message] | None:
    """The messages of a SendMessages body whose batch is valid by 4.1-4.3, else None.

    Only the batch is judged (metadata may still name a missing partition), and user headers
    are not (the server does not check their TLVs at admission, batch.py check_user_headers)."""
    if len(body) < 4:
        return None
    batch_at = 4 + U32.unpack_from(body)[0]
    if batch_at < 8 or batch_at > len(body):
        return None
    messages_count = U32.unpack_from(body, batch_at - 4)[0]
    batch = bytes(body[batch_at:])
    if len(batch) < BATCH_HEADER_SIZE:
        return None
    (batch_length,) = U64.unpack_from(batch, BATCH_LENGTH_AT)
    (batch_checksum,) = U64.unpack_from(batch, BATCH_CHECKSUM_AT)
    (message_count,) = U32.unpack_from(batch, MESSAGE_COUNT_AT)
    (origin_timestamp,) = U64.unpack_from(batch, 24)
    if batch_length != len(batch) or not 1 <= message_count == messages_count:
        return None
    if any(batch[BATCH_RESERVED_AT:BATCH_HEADER_SIZE]):
        return None
    messages: list[Message] = []
    checksums = bytearray()
    pos = BATCH_HEADER_SIZE
    while pos < len(batch):
        if pos + FRAME_HEADER_SIZE > len(batch):
            return None
        checksum, id_lo, id_hi, delta, time_delta, headers_len, payload_len, reserved = FRAME.unpack_from(
            batch, pos
        )
        end = pos + FRAME_HEADER_SIZE + payload_len + headers_len
        if end > len(batch) or reserved or delta != len(messages):
            return None
        if not 1 <= payload_len <= MAX_PAYLOAD_BYTES or headers_len > MAX_USER_HEADERS_BYTES:
            return None
        if (
            origin_timestamp + time_delta >= 1 << 64
            or xxhash.xxh3_64_intdigest(batch[pos + 8 : end]) != checksum
        ):
            return None
        at = pos + FRAME_HEADER_SIZE
        messages.append(
            Message(id_lo | id_hi << 64, batch[at : at + payload_len], batch[at + payload_len : end])
        )
        checksums += batch[pos : pos + 8]
        pos = end
    if len(messages) != message_count:
        return None
    # 4.2: partition_id, base_offset, base/origin timestamps, batch_length, message_count, then
    # every frame's stored checksum.
    digest = xxhash.xxh3_64_intdigest(batch[:BATCH_CHECKSUM_AT] + batch[48:52] + bytes(checksums))
    return messages if digest == batch_checksum else None


def restamp_batch(frame: bytearray, batch_at: int) -> None:
    """Recompute every frame checksum that can be reached and the batch checksum, so that a
    structural change stays the batch's only fault."""
    end = len(frame)
    pos = batch_at + BATCH_HEADER_SIZE
    checksums = bytearray()
    while pos + FRAME_HEADER_SIZE <= end:
        headers_len, payload_len = struct.unpack_from("<II", frame, pos + 32)
        frame_end = pos + FRAME_HEADER_SIZE + payload_len + headers_len
        if frame_end > end:
            break
        U64.pack_into(frame, pos, xxhash.xxh3_64_intdigest(bytes(frame[pos + 8 : frame_end])))
        checksums += frame[pos : pos + 8]
        pos = frame_end
    head = bytes(frame[batch_at : batch_at + BATCH_CHECKSUM_AT]) + bytes(frame[batch_at + 48 : batch_at + 52])
    U64.pack_into(frame, batch_at + BATCH_CHECKSUM_AT, xxhash.xxh3_64_intdigest(head + bytes(checksums)))


def user_header(key: bytes, value: bytes) -> bytes:
    """One key/value pair of 4.4, both String (2)."""
    return b"\x02" + U32.pack(len(key)) + key + b"\x02" + U32.pack(len(value)) + value


def make_batch(payloads: list[bytes], headers: list[bytes] | None = None, first_id: int = 1) -> bytes:
    n = len(payloads)
    now_us = time.time_ns() // 1000
    ids = [first_id + i for i in range(n)]
    return bytes(build_batch(ids, payloads, headers or [b""] * n, [now_us + i for i in range(n)]))


def send_body(stream: Identifier, topic: Identifier, partition: int, batch: bytes) -> bytes:
    return b.encode_send_messages09(stream, topic, c.Partitioning.partition_id(partition), batch)


def poll_body(stream: Identifier, topic: Identifier, partition: int, offset: int, count: int) -> bytes:
    consumer = Consumer(ConsumerKind.CONSUMER, 1)
    return c.PollMessages(
        consumer, stream, topic, partition, PollingKind.OFFSET, offset, count, False
    ).encode()


# ---- the servers and their seeded data -------------------------------------------------------------

PartitionKey = tuple[int, int, int]  # stream id, topic id, partition id
Stored = tuple[int, int, bytes, bytes]  # offset, id, payload, user headers


def poll_all(client: Client09, key: PartitionKey) -> list[Stored]:
    """Every message of a partition, offset by offset as polled back."""
    stream, topic, partition = key
    out: list[Stored] = []
    while True:
        body = client.read(CommandCode.POLL_MESSAGES, poll_body(stream, topic, partition, len(out), 1000))
        (count,) = U32.unpack_from(body, 12)
        records = parse_records(body[16:])
        for record in records:
            ids = record.frames()
            for i in range(record.count):
                msg_id = int(ids["id_lo"][i]) | int(ids["id_hi"][i]) << 64
                out.append((int(record.offsets()[i]), msg_id, record.payload(i), record.user_headers(i)))
        if count == 0:
            return out


def client_count(client: Client09) -> int:
    return len(decode_list(ClientInfo, client.read(CommandCode.GET_CLIENTS)))


def leftover_clients(target: Target, client: Client09) -> str:
    """The clients the server still holds, besides `client`, with what each was sent."""
    own = "{}:{}".format(*client.sock.getsockname()[:2])
    every = decode_list(ClientInfo, client.read(CommandCode.GET_CLIENTS))
    infos = [info for info in every if info.address != own]
    lines = [f"{len(infos)} clients still registered after the run:"]
    for info in infos:
        lines.append(f"  {info}")
        lines += [f"    {step}" for step in target.history.get(info.address, ["(not a fuzz connection)"])]
    return "\n".join([*lines, "server output:", target.srv.output[-20000:]])


def seed(client: Client09, stream_name: str, batches: int) -> None:
    """A stream with one PARTITIONS-partition topic, ``batches`` known batches in each partition."""
    client.change(Operation.CREATE_STREAM, b.CreateStream09(stream_name).encode())
    topic = b.CreateTopic09(stream_name, PARTITIONS, "events", b.TopicOptions())
    client.change(Operation.CREATE_TOPIC, topic.encode())
    for partition in range(PARTITIONS):
        for n in range(batches):
            payloads = [f"{stream_name}-{partition}-{n}-{i}".encode() * (i + 1) for i in range(n + 1)]
            headers = [user_header(b"n", str(i).encode()) if i % 2 else b"" for i in range(n + 1)]
            client.ok(
                Operation.SEND_MESSAGES,
                send_body(stream_name, "events", partition, make_batch(payloads, headers)),
            )


@dataclass
class Link:
    """One open connection and the session the server has bound to it (None: logged out)."""

    client: Client09
    bound: int | None


@dataclass
class Target:
    srv: ServerProcess
    token: str
    baseline: dict[PartitionKey, list[Stored]]
    baseline_records: dict[PartitionKey, bytes]  # the raw poll reply of the baseline, after its head
    confirmed: list[tuple[PartitionKey, int, list[Message]]] = field(default_factory=list)
    link: Link | None = None
    outcomes: Counter[str] = field(default_factory=Counter)
    # What each connection was sent, by its address as the server names it: a client the
    # server keeps after the run is then shown with its requests.
    history: dict[str, list[str]] = field(default_factory=dict)

    def connection(self) -> Link:
        if self.link is None:
            client = Client09(self.srv.address, timeout_s=ANSWER_TIMEOUT_S)
            host, port = client.sock.getsockname()[:2]
            self.history[f"{host}:{port}"] = []
            self.link = Link(client, token_login(client, self.token))
        return self.link

    def drop(self, rude: bool = False) -> None:
        if self.link is not None:
            if rude:  # a reset instead of a FIN
                self.link.client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.link.client.close()
            self.link = None


def token_login(client: Client09, token: str) -> int:
    """Register with a personal access token (no password hash to check: fast reconnects)."""
    answer = client.call(Operation.REGISTER, f.encode_token_login(SDK_VERSION, f.TokenLogin(token)))
    assert isinstance(answer, f.ReplyReceived), answer
    reply = f.decode_login_reply(answer.body)
    assert isinstance(reply, f.LoginReply), reply
    client.session = reply.session
    return reply.session


def snapshot(
    client: Client09, keys: list[PartitionKey]
) -> tuple[dict[PartitionKey, list[Stored]], dict[PartitionKey, bytes]]:
    messages = {key: poll_all(client, key) for key in keys}
    records = {
        key: client.read(CommandCode.POLL_MESSAGES, poll_body(*key, 0, len(messages[key])))[16:]
        for key in keys
    }
    return messages, records


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    # One frame cap for every connection state keeps plan() independent of logins; the smaller
    # default before login (64 KiB) is checked on its own below.
    env = {"TIDELOG_TCP_MAX_UNAUTHENTICATED_PAYLOAD_BYTES": str(MAX_CONTROL_PAYLOAD_BYTES)}
    srv = ServerProcess(tmp_path_factory.mktemp("fuzz09") / "data", env=env).start()
    try:
        with Client09(srv.address) as client:
            client.login()
            client.change(Operation.CREATE_STREAM, b.CreateStream09("fuzz").encode())
            topic = b.CreateTopic09("fuzz", PARTITIONS, "t", b.TopicOptions())
            client.change(Operation.CREATE_TOPIC, topic.encode())
            seed(client, "seeded", batches=3)
            pat = client.change(
                Operation.CREATE_PERSONAL_ACCESS_TOKEN, c.CreatePersonalAccessToken("fuzz-token").encode()
            )
            token = pat[1:].decode()
            keys = [(stream, 0, p) for stream in (FUZZ_STREAM, SEED_STREAM) for p in range(PARTITIONS)]
            baseline, records = snapshot(client, keys)
        assert (
            len(baseline[(SEED_STREAM, SEED_TOPIC, 1)]) == 6 and baseline[(FUZZ_STREAM, FUZZ_TOPIC, 0)] == []
        )
        yield Target(srv, token, baseline, records)
    finally:
        srv.stop()


def assert_server_healthy(target: Target) -> None:
    """Alive; every partition is its baseline plus exactly the batches confirmed, in order, and
    the baseline polls back byte for byte; vanished clients are forgotten; a new client is
    served; nothing was logged as a crash."""
    srv = target.srv
    assert srv.proc is not None and srv.proc.poll() is None, "server died:\n" + srv.output
    expected: dict[PartitionKey, list[Stored]] = {key: list(msgs) for key, msgs in target.baseline.items()}
    for key, base_offset, messages in sorted(target.confirmed, key=lambda sent: (sent[0], sent[1])):
        stored = expected.setdefault(key, [])
        assert base_offset == len(stored), f"{key}: batch confirmed at {base_offset}, {len(stored)} before it"
        stored += [(base_offset + i, m.id, m.payload, m.user_headers) for i, m in enumerate(messages)]
    with Client09(srv.address) as client:
        client.login()
        for key, records in target.baseline_records.items():
            polled = client.read(CommandCode.POLL_MESSAGES, poll_body(*key, 0, len(target.baseline[key])))
            assert polled[16:] == records, f"baseline of {key} changed"
        for key, stored in expected.items():
            assert poll_all(client, key) == stored, f"{key} holds other messages than confirmed"
        ok = wait_until(lambda: client_count(client) == 1, timeout_s=20)
        assert ok, leftover_clients(target, client)
        batch = make_batch([b"still-here"])
        reply = client.ok(Operation.SEND_MESSAGES, send_body(FUZZ_STREAM, FUZZ_TOPIC, 1, batch))
        (offset,) = U64.unpack_from(reply, 16)
        assert poll_all(client, (FUZZ_STREAM, FUZZ_TOPIC, 1))[offset][2] == b"still-here"
        target.confirmed.append(
            ((FUZZ_STREAM, FUZZ_TOPIC, 1), offset, batch_messages(send_body(0, 0, 1, batch)) or [])
        )
    crashes = [line for line in srv.lines if "Traceback" in line or "handler failed" in line]
    assert not crashes, srv.output


# ---- what the server must answer ---------------------------------------------------------------------


class Outcome(Enum):
    SILENT_CLOSE = "closed, nothing sent"
    EVICT_CLOSE = "eviction, then closed"
    STATUS_CLOSE = "status, then closed"
    STATUS = "status"
    EVICT = "eviction"
    LOGIN = "login reply or login eviction"
    SERVED = "served"

    @property
    def closes(self) -> bool:
        return self in (Outcome.SILENT_CLOSE, Outcome.EVICT_CLOSE, Outcome.STATUS_CLOSE)


@dataclass(frozen=True)
class Expected:
    outcome: Outcome
    code: int = 0  # the status or eviction reason the reference names
    why: str = ""


_CLIENT_OPERATION_VALUES = frozenset(int(op) for op in CLIENT_OPERATIONS)
_REPLICATED_VALUES = frozenset(int(op) for op in REPLICATED_OPERATIONS)


def header_refusal(header: bytes | bytearray) -> Expected | None:
    """Rules on the header alone (1.2, 1.7, 1.8; docs/v09-notes.md Serving 2, Framing 2): the
    connection cannot continue after them."""
    (size,) = U32.unpack_from(header, SIZE_AT)
    if not HEADER_SIZE <= size <= MAX_FRAME_SIZE:
        return Expected(Outcome.SILENT_CLOSE, why=f"size {size}")
    client, op = u128(header, CLIENT_AT), header[OPERATION_AT]
    (request,), (session,) = U64.unpack_from(header, REQUEST_AT), U64.unpack_from(header, SESSION_AT)
    dropped = (
        "command" if header[COMMAND_AT] != VsrCommand.REQUEST else
        "client 0" if client == 0 else
        f"operation {op}" if op not in _CLIENT_OPERATION_VALUES else
        "Register with session/request" if op == Operation.REGISTER and (session or request) else
        None
    )  # fmt: skip
    if dropped is None and op in _REPLICATED_VALUES:
        if session == 0:
            return Expected(Outcome.EVICT_CLOSE, EvictionReason.NO_SESSION, "session 0")
        if request == 0:
            dropped = "request 0"
    if dropped is None:
        return None
    if client == 0:  # the real server drops it; there is no one to evict
        return Expected(Outcome.SILENT_CLOSE, why=dropped)
    return Expected(Outcome.EVICT_CLOSE, EvictionReason.INVALID_REQUEST_OPERATION, dropped)


def over_limit(header: bytes | bytearray, logged_in: bool) -> bool:
    """The frame caps (README, Limits): SendMessages after login may use the whole 0.9 frame,
    everything else 10 MiB (the fixture raises the cap before login to the same)."""
    body_size = U32.unpack_from(header, SIZE_AT)[0] - HEADER_SIZE
    if header[OPERATION_AT] == Operation.SEND_MESSAGES and logged_in:
        return False
    return body_size > MAX_CONTROL_PAYLOAD_BYTES


def expect(frame: bytes, bound: int | None) -> Expected:
    """The documented answer to one complete frame from a connection whose bound session is
    ``bound``."""
    refusal = header_refusal(frame)
    if refusal is not None:
        return refusal
    if over_limit(frame, bound is not None):
        return Expected(Outcome.STATUS_CLOSE, Status.INVALID_SIZE_BYTES, "over the frame cap")
    op, code = frame[OPERATION_AT], U32.unpack_from(frame, CODE_AT)[0]
    (session,) = U64.unpack_from(frame, SESSION_AT)
    checksum = u128(frame, CHECKSUM_AT)
    if checksum and checksum != xxhash.xxh3_64_intdigest(frame[HEADER_SIZE:]):
        return Expected(Outcome.STATUS, Status.INVALID_FORMAT, "request_checksum")
    if op == Operation.NON_REPLICATED and code in (
        CommandCode.LOGIN_USER,
        CommandCode.LOGIN_WITH_PERSONAL_ACCESS_TOKEN,
    ):
        return Expected(Outcome.EVICT, EvictionReason.MALFORMED_LOGIN, "legacy login code")
    if op == Operation.REGISTER:
        return Expected(Outcome.LOGIN if bound is None else Outcome.SERVED)
    if bound is None:
        if op == Operation.NON_REPLICATED and code != CommandCode.PING:
            return Expected(Outcome.STATUS, Status.UNAUTHENTICATED, "read before login")
        if op in _REPLICATED_VALUES:
            return Expected(Outcome.EVICT, EvictionReason.NO_SESSION, "change before login")
    elif op != Operation.NON_REPLICATED and session != bound:
        return Expected(Outcome.EVICT, EvictionReason.SESSION_ERROR, f"session {session}, bound {bound}")
    return Expected(Outcome.SERVED)


def check_answer(target: Target, link: Link, frame: bytes, exp: Expected) -> None:
    """Read frame's answer and hold it to ``exp``; update the link's session."""
    what = (
        f"{exp.outcome.value} ({exp.why}) for {frame[:HEADER_SIZE].hex()} + {len(frame) - HEADER_SIZE} bytes"
    )
    client = link.client
    try:
        answer: Answer | None = client.read_answer()
    except Closed:
        answer = None
    except TimeoutError:
        raise AssertionError(f"no answer within {ANSWER_TIMEOUT_S} s, expected {what}") from None
    header_client = u128(frame, CLIENT_AT)
    if exp.outcome is Outcome.SILENT_CLOSE:
        assert answer is None, f"{answer} instead of {what}"
        target.outcomes["closed: " + " ".join(exp.why.split()[:1])] += 1
        return
    assert answer is not None, f"closed instead of {what}"
    if isinstance(answer, f.EvictionReceived):
        assert answer.header.client == header_client, f"eviction names another client: {what}"
        reason = answer.header.reason
        target.outcomes[f"eviction {reason}"] += 1
        if exp.outcome is Outcome.LOGIN:
            assert reason in LOGIN_EVICTIONS, f"eviction {reason} instead of {what}"
        else:
            assert exp.outcome in (Outcome.EVICT, Outcome.EVICT_CLOSE), f"eviction {reason} instead of {what}"
            assert reason == exp.code, f"eviction {reason} instead of {what}"
    else:
        check_reply(target, link, frame, exp, answer, what)
    if exp.outcome.closes:
        try:
            assert client.closed_by_server(), f"bytes after the answer: {what}"
        except TimeoutError:
            raise AssertionError(f"connection kept open after {what}") from None


def check_reply(
    target: Target, link: Link, frame: bytes, exp: Expected, reply: f.ReplyReceived, what: str
) -> None:
    header, status, op = reply.header, reply.header.status, frame[OPERATION_AT]
    target.outcomes[f"status {status}"] += 1
    assert header.client == u128(frame, CLIENT_AT) and header.request == U64.unpack_from(frame, REQUEST_AT)[0]
    assert header.operation == op, f"operation {header.operation} echoed for {what}"
    assert status == 0 or len(reply.body) == 0, f"status {status} with a body: {what}"
    assert status in KNOWN_STATUSES or status == 0, f"undocumented status {status}: {what}"
    assert status != Status.ERROR, f"internal error (1) for {what}"
    if exp.outcome is not Outcome.SERVED and exp.outcome is not Outcome.LOGIN:
        assert exp.outcome in (Outcome.STATUS, Outcome.STATUS_CLOSE), f"status {status} instead of {what}"
        assert status == exp.code, f"status {status} instead of {what}"
        return
    if op == Operation.REGISTER:
        login = f.decode_login_reply(reply.body)
        assert status == 0 and isinstance(login, f.LoginReply), f"{status} {login} for {what}"
        assert link.bound is None or login.session == link.bound, f"Register replay changed session: {what}"
        link.bound = link.client.session = login.session
    elif op == Operation.LOGOUT:
        assert status == 0 and len(reply.body) == 0, f"logout answered {status}: {what}"
        link.bound = None
    elif status == 0 and reply_framing(Operation(op)) is ReplyFraming.RESULT_SECTION:
        section = f.decode_result_section(reply.body)
        assert not isinstance(section, f.ResultMalformed), f"{section} for {what}"
    elif status == 0 and op == Operation.SEND_MESSAGES:
        messages = batch_messages(frame[HEADER_SIZE:])
        assert messages is not None, f"a batch that is not valid was stored: {what}"
        count, stream, topic, partition, base_offset = struct.unpack("<IIIIQ", reply.body)
        assert count == 1, f"{count} confirmations for one batch: {what}"
        target.confirmed.append(((stream, topic, partition), base_offset, messages))
        target.outcomes["stored"] += 1


# ---- cutting bytes into frames as the server does ---------------------------------------------------


@dataclass
class Plan:
    data: bytes  # what to send
    frames: list[bytes]  # each complete frame the server will read (a refused header: 256 bytes)
    vanish: bool  # the data ends mid-frame: leave without reading further


def plan(raw: bytes) -> Plan:
    data = bytearray(raw)
    frames: list[bytes] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < HEADER_SIZE:
            return Plan(bytes(data), frames, vanish=True)
        op = data[pos + OPERATION_AT]
        if op in _CLIENT_OPERATION_VALUES and op not in ALLOWED_OPERATIONS:
            data[pos + OPERATION_AT] = INVALID_OPERATION
        header = data[pos : pos + HEADER_SIZE]
        # Over the cap whatever the login state, or refused: the server reads no further.
        if header_refusal(header) is not None or (
            op != Operation.SEND_MESSAGES and over_limit(header, False)
        ):
            frames.append(bytes(header))
            return Plan(bytes(data[: pos + HEADER_SIZE]), frames, vanish=False)
        end = pos + U32.unpack_from(header, SIZE_AT)[0]
        if end > len(data):
            if end - len(data) > PAD_LIMIT_BYTES:
                return Plan(bytes(data), frames, vanish=True)
            data += bytes(end - len(data))
        frames.append(bytes(data[pos:end]))
        pos = end
    return Plan(bytes(data), frames, vanish=False)


# ---- valid requests and their mutations ---------------------------------------------------------------


class Kind(Enum):
    PING = "ping"
    GET_STREAMS = "get streams"
    CREATE_STREAM = "create stream"
    SEND = "send messages"
    POLL = "poll messages"
    STORE_OFFSET = "store offset"
    LOGIN = "register"


SEND_TEMPLATES = [
    ([b"one"], None),
    (
        [b"a", b"bb" * 40, b"ccc"],
        [b"", user_header(b"k", b"v"), user_header(b"k", b"v") + user_header(b"x", b"y")],
    ),
    ([bytes(range(256)) * 8] * 4, None),
]


def valid_frame(kind: Kind, variant: int, link: Link, token: str) -> bytes:
    client = link.client
    nr = Operation.NON_REPLICATED
    if kind is Kind.PING:
        return client.frame(nr, b"", CommandCode.PING)
    if kind is Kind.GET_STREAMS:
        return client.frame(nr, b"", CommandCode.GET_STREAMS)
    if kind is Kind.CREATE_STREAM:
        return client.frame(Operation.CREATE_STREAM, b.CreateStream09(f"fz-{variant}").encode())
    if kind is Kind.SEND:
        payloads, headers = SEND_TEMPLATES[variant % len(SEND_TEMPLATES)]
        batch = make_batch(payloads, headers, first_id=variant * 16 + 1)
        return client.frame(
            Operation.SEND_MESSAGES, send_body(FUZZ_STREAM, FUZZ_TOPIC, variant % PARTITIONS, batch)
        )
    if kind is Kind.POLL:
        consumer = Consumer(ConsumerKind.CONSUMER, 1 + variant % 2)
        strategy = [PollingKind.OFFSET, PollingKind.NEXT, PollingKind.LAST, PollingKind.FIRST][variant % 4]
        poll = c.PollMessages(
            consumer, FUZZ_STREAM, FUZZ_TOPIC, variant % PARTITIONS, strategy, 0, 10, variant % 3 == 0
        )
        return client.frame(nr, poll.encode(), CommandCode.POLL_MESSAGES)
    if kind is Kind.STORE_OFFSET:
        consumer = Consumer(ConsumerKind.CONSUMER, 1 + variant % 2)
        store = b.StoreConsumerOffset09(consumer, FUZZ_STREAM, FUZZ_TOPIC, variant % PARTITIONS, 0)
        return client.frame(Operation.STORE_CONSUMER_OFFSET, store.encode())
    return client.frame(Operation.REGISTER, f.encode_token_login(SDK_VERSION, f.TokenLogin(token)))


class Mut(IntEnum):
    FLIP_BIT = 1
    FLIP_HEADER_BIT = 2
    SET_BYTE = 3
    SIZE = 4
    TRUNCATE = 5  # size left as is: the frame boundary moves
    TRUNCATE_BODY = 6  # size fixed
    EXTEND = 7  # size fixed
    OPERATION = 8
    COMMAND = 9
    CLIENT = 10
    SESSION = 11
    REQUEST = 12
    CODE = 13
    IGNORED_BYTE = 14
    CHECKSUM = 15
    BATCH_COUNT = 16
    METADATA_COUNT = 17
    BATCH_RESERVED = 18
    FRAME_RESERVED = 19
    BATCH_LENGTH = 20
    PAYLOAD_LENGTH = 21
    TARGET = 22
    RESTAMP_BATCH = 23
    BATCH_FIELD = 24  # a hashed batch header field: the batch checksum no longer matches
    DELTAS = 25  # a frame's offset or timestamp delta, or the batch origin timestamp


OPERATIONS_TO_TRY = [0, 1, 2, 3, 64, 66, 68, 100, 127, 128, 129, 132, 160, 161, 162, 163, 255]
COMMANDS_TO_TRY = [0, 1, 4, 6, 8, 13, 255]
# fmt: off
CODES_TO_TRY = [
    0, 1, 2, 10, 11, 12, 13, 20, 22, 38, 40, 44,
    45, 100, 101, 121, 201, 202, 203, 606, 4242, 0xFFFF_FFFF,
]
# fmt: on
TARGETS_TO_TRY: list[tuple[Identifier, Identifier, c.Partitioning]] = [
    (FUZZ_STREAM, FUZZ_TOPIC, c.Partitioning.partition_id(1)),
    ("fuzz", "t", c.Partitioning.balanced()),
    (FUZZ_STREAM, FUZZ_TOPIC, c.Partitioning.messages_key(b"key")),
    (SEED_STREAM, SEED_TOPIC, c.Partitioning.partition_id(0)),  # aimed at the baseline
    (FUZZ_STREAM, FUZZ_TOPIC, c.Partitioning.partition_id(PARTITIONS)),  # missing partition
    (77, FUZZ_TOPIC, c.Partitioning.partition_id(0)),  # missing stream
    ("fuzz", "nope", c.Partitioning.partition_id(0)),  # missing topic
]
Mutation = tuple[Mut, int, int]


def _set_size(frame: bytearray, size: int) -> None:
    U32.pack_into(frame, SIZE_AT, size)


def _batch_at(frame: bytearray) -> int | None:
    """Where a SendMessages body's batch starts, if the frame still has one there."""
    if len(frame) < HEADER_SIZE + 4:
        return None
    at = HEADER_SIZE + 4 + U32.unpack_from(frame, HEADER_SIZE)[0]
    return at if at + BATCH_HEADER_SIZE <= len(frame) else None


def _frame_starts(frame: bytearray, batch_at: int) -> list[int]:
    starts, pos = [], batch_at + BATCH_HEADER_SIZE
    while pos + FRAME_HEADER_SIZE <= len(frame):
        starts.append(pos)
        headers_len, payload_len = struct.unpack_from("<II", frame, pos + 32)
        pos += FRAME_HEADER_SIZE + payload_len + headers_len
    return starts


def mutate(frame: bytearray, mutation: Mutation, link: Link) -> None:
    kind, a, v = mutation
    n = len(frame)
    if n == 0:
        frame += bytes([v % 256])
        return
    body_size = n - HEADER_SIZE
    if kind is Mut.FLIP_BIT:
        frame[a % n] ^= 1 << v % 8
    elif kind is Mut.FLIP_HEADER_BIT:
        frame[a % min(n, HEADER_SIZE)] ^= 1 << v % 8
    elif kind is Mut.SET_BYTE:
        frame[a % n] = v % 256
    elif kind is Mut.SIZE and n >= HEADER_SIZE:
        sizes = [0, 255, 256, n - 1, n + 1, n + 48, n + 4096, HEADER_SIZE + MAX_CONTROL_PAYLOAD_BYTES + 1]
        sizes += [MAX_FRAME_SIZE, MAX_FRAME_SIZE + 1, 0xFFFF_FFFF, v]
        _set_size(frame, sizes[a % len(sizes)] % (1 << 32))
    elif kind is Mut.TRUNCATE:
        del frame[a % n :]
    elif kind is Mut.TRUNCATE_BODY and body_size > 0:
        del frame[HEADER_SIZE + a % body_size :]
        _set_size(frame, len(frame))
    elif kind is Mut.EXTEND and n >= HEADER_SIZE:
        frame += bytes([v % 256]) * (1 + a % 64)
        _set_size(frame, len(frame))
    elif kind is Mut.OPERATION and n >= HEADER_SIZE:
        frame[OPERATION_AT] = OPERATIONS_TO_TRY[a % len(OPERATIONS_TO_TRY)]
    elif kind is Mut.COMMAND and n >= HEADER_SIZE:
        frame[COMMAND_AT] = COMMANDS_TO_TRY[a % len(COMMANDS_TO_TRY)]
    elif kind is Mut.CLIENT and n >= HEADER_SIZE:
        frame[CLIENT_AT : CLIENT_AT + 16] = (0 if a % 2 else v << 64 | a).to_bytes(16, "little")
    elif kind is Mut.SESSION and n >= HEADER_SIZE:
        bound = link.bound or 0
        sessions = [0, bound + 1, max(bound - 1, 0), (1 << 64) - 1, v]
        U64.pack_into(frame, SESSION_AT, sessions[a % len(sessions)])
    elif kind is Mut.REQUEST and n >= HEADER_SIZE:
        requests = [0, 1, link.client.request, link.client.request + 1, (1 << 64) - 1, v]
        U64.pack_into(frame, REQUEST_AT, requests[a % len(requests)])
    elif kind is Mut.CODE and n >= HEADER_SIZE:
        U32.pack_into(frame, CODE_AT, CODES_TO_TRY[a % len(CODES_TO_TRY)])
    elif kind is Mut.IGNORED_BYTE and n >= HEADER_SIZE:
        frame[IGNORED_HEADER_BYTES[a % len(IGNORED_HEADER_BYTES)]] = 1 + v % 255
    elif kind is Mut.CHECKSUM and n >= HEADER_SIZE:
        right = xxhash.xxh3_64_intdigest(bytes(frame[HEADER_SIZE:]))
        values = [0, right, right ^ 1 << v % 64, right | 1 << 64, v + 1]
        frame[CHECKSUM_AT : CHECKSUM_AT + 16] = values[a % len(values)].to_bytes(16, "little")
    elif kind is Mut.TARGET and n >= HEADER_SIZE + 4:
        at = _batch_at(frame)
        if at is not None:
            stream, topic, partitioning = TARGETS_TO_TRY[a % len(TARGETS_TO_TRY)]
            frame[HEADER_SIZE:] = b.encode_send_messages09(stream, topic, partitioning, bytes(frame[at:]))
            _set_size(frame, len(frame))
    else:
        mutate_batch(frame, kind, a, v)


def mutate_batch(frame: bytearray, kind: Mut, a: int, v: int) -> None:
    at = _batch_at(frame)
    if at is None:
        return
    (count,) = U32.unpack_from(frame, at + MESSAGE_COUNT_AT)
    counts = [0, count - 1, count + 1, 0xFFFF_FFFF, v]
    if kind is Mut.BATCH_COUNT:
        U32.pack_into(frame, at + MESSAGE_COUNT_AT, counts[a % len(counts)] % (1 << 32))
    elif kind is Mut.METADATA_COUNT:
        U32.pack_into(frame, at - 4, counts[a % len(counts)] % (1 << 32))
    elif kind is Mut.BATCH_FIELD:
        frame[at + a % BATCH_CHECKSUM_AT] ^= 1 + v % 255
    elif kind is Mut.BATCH_RESERVED:
        frame[at + BATCH_RESERVED_AT + a % (BATCH_HEADER_SIZE - BATCH_RESERVED_AT)] = 1 + v % 255
    elif kind is Mut.BATCH_LENGTH:
        (length,) = U64.unpack_from(frame, at + BATCH_LENGTH_AT)
        deltas = [-1, 1, 48, -BATCH_HEADER_SIZE, 1 << 40]
        U64.pack_into(frame, at + BATCH_LENGTH_AT, max(0, length + deltas[a % len(deltas)]) % (1 << 64))
    elif kind in (Mut.FRAME_RESERVED, Mut.PAYLOAD_LENGTH, Mut.DELTAS):
        starts = _frame_starts(frame, at)
        if not starts:
            return
        start = starts[a % len(starts)]
        if kind is Mut.DELTAS:
            # offset_delta u32, timestamp_delta u32, or the batch's origin_timestamp u64
            where, width = [(start + 24, 4), (start + 28, 4), (at + 24, 8)][v % 3]
            values = [0, 1, len(starts), 0xFFFF_FFFF, (1 << 64) - 1 - a % 4096]
            value = values[a % len(values)] % (1 << 8 * width)
            frame[where : where + width] = value.to_bytes(width, "little")
        elif kind is Mut.FRAME_RESERVED:
            frame[start + FRAME_RESERVED_AT + v % 8] = 1 + a % 255
        else:
            (length,) = U32.unpack_from(frame, start + PAYLOAD_LENGTH_AT)
            U32.pack_into(frame, start + PAYLOAD_LENGTH_AT, (length + [-1, 1, 7, -length][v % 4]) % (1 << 32))
    if kind is Mut.RESTAMP_BATCH or (kind is not Mut.BATCH_FIELD and v >> 31):
        # Half the time the checksums follow the change, which then is the batch's only fault.
        restamp_batch(frame, at)


@dataclass(frozen=True)
class Recipe:
    kind: Kind
    variant: int
    mutations: tuple[Mutation, ...]


@dataclass(frozen=True)
class Example:
    logout_first: bool
    recipes: tuple[Recipe, ...]
    rude: bool  # how to leave when the data ends mid-frame


# Sends weigh more: most of their bytes are the batch, and most of the checks are there.
KINDS = [Kind.SEND, Kind.SEND, *Kind]
BATCH_MUTATIONS = [m for m in Mut if m >= Mut.BATCH_COUNT]  # no-ops but on a send
FRAME_MUTATIONS = [m for m in Mut if m < Mut.BATCH_COUNT]
# Hypothesis favours small integers; a multiplicative hash spreads them over the positions and
# choices they select (0 still shrinks to 0).
_spread = st.integers(0, 0xFFFF_FFFF).map(lambda x: x * 2654435761 % (1 << 32))


def _mutations(kinds: list[Mut], min_size: int) -> st.SearchStrategy[tuple[Mutation, ...]]:
    return st.lists(st.tuples(st.sampled_from(kinds), _spread, _spread), min_size=min_size, max_size=4).map(
        tuple
    )


@st.composite
def _recipe(draw: st.DrawFn, min_mutations: int) -> Recipe:
    kind = draw(st.sampled_from(KINDS))
    if kind is not Kind.SEND:
        kinds = FRAME_MUTATIONS
    else:  # half the sends keep a valid header, so that their batch faults reach the batch checks
        kinds = BATCH_MUTATIONS if draw(st.booleans()) else list(Mut)
    mutations = draw(_mutations(kinds, min_mutations))
    return Recipe(kind, draw(st.integers(0, 11)), mutations)


examples = st.builds(
    Example,
    st.integers(0, 5).map(lambda n: n == 5),  # now and then after a Logout
    st.tuples(_recipe(1), st.lists(_recipe(0), max_size=2)).map(lambda t: (t[0], *t[1])),
    st.booleans(),
)


def materialize(example: Example, link: Link, token: str) -> bytes:
    frames = [link.client.frame(Operation.LOGOUT)] if example.logout_first else []
    for recipe in example.recipes:
        frame = bytearray(valid_frame(recipe.kind, recipe.variant, link, token))
        for mutation in recipe.mutations:
            mutate(frame, mutation, link)
        frames.append(bytes(frame))
    return b"".join(frames)


def run_example(target: Target, example: Example) -> None:
    link = target.connection()
    p = plan(materialize(example, link, target.token))
    address = "{}:{}".format(*link.client.sock.getsockname()[:2])
    steps = target.history.setdefault(address, [])
    steps += [f"frame {frame[:HEADER_SIZE].hex()} + {len(frame) - HEADER_SIZE} bytes" for frame in p.frames]
    if p.vanish:
        cut = len(p.data) - sum(map(len, p.frames))
        steps.append(f"then {cut} bytes of a frame and {'a reset' if example.rude else 'a close'}")
    link.client.send_raw(p.data)
    for frame in p.frames:
        exp = expect(frame, link.bound)
        check_answer(target, link, frame, exp)
        if exp.outcome.closes:
            target.drop()
            return
    if p.vanish:
        target.outcomes["left mid-frame"] += 1
        target.drop(rude=example.rude)
        return
    # In step, and in the state the model says? A ping answers OK; GetStreams 0 or 40.
    client = link.client
    client.send_raw(client.frame(Operation.NON_REPLICATED, b"", CommandCode.PING))
    client.send_raw(client.frame(Operation.NON_REPLICATED, b"", CommandCode.GET_STREAMS))
    for expected in (0, 0 if link.bound is not None else Status.UNAUTHENTICATED):
        answer = client.read_answer()
        assert isinstance(answer, f.ReplyReceived) and answer.header.status == expected, answer
    if link.bound is None:
        target.drop()  # logged out by the example: start afresh


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=DERANDOMIZE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
if DERANDOMIZE:
    # The same examples every run: a database of past failures would only add noise.
    FUZZ_SETTINGS = settings(FUZZ_SETTINGS, database=None)


# ---- the fuzz tests -----------------------------------------------------------------------------------


def test_batch_reader_given_built_and_broken_batches_when_judged_should_agree_with_4_1_to_4_3() -> None:
    """The independent judge of stored batches is itself right."""
    body = bytearray(send_body(0, 0, 0, make_batch([b"a", b"bb"], [b"", user_header(b"k", b"v")])))
    assert [m.payload for m in batch_messages(body) or []] == [b"a", b"bb"]
    at = 4 + U32.unpack_from(body)[0]
    for position, value in [
        (at + 40, 1),
        (at + 48, 3),
        (at + 100, 1),
        (at + 256 + 40, 1),
        (len(body) - 1, 0x55),
    ]:
        broken = bytearray(body)
        broken[position] ^= value
        assert batch_messages(broken) is None, position
    restamped = bytearray(HEADER_SIZE) + body
    restamped[HEADER_SIZE + at + 256 + 24] = 1  # offset delta 1 for the first message
    restamp_batch(restamped, HEADER_SIZE + at)
    assert batch_messages(restamped[HEADER_SIZE:]) is None
    restamped[HEADER_SIZE + at + 256 + 24] = 0
    restamp_batch(restamped, HEADER_SIZE + at)
    assert batch_messages(restamped[HEADER_SIZE:]) is not None


def test_plan_given_known_byte_strings_should_cut_frames_pad_and_stop_at_refusals() -> None:
    def frame(operation: Operation, body: bytes = b"", code: int = 0) -> bytes:
        header = request_header_for(operation, body, client=9, request=1, session=3, command_code=code)
        return header.encode() + body

    ping = frame(Operation.NON_REPLICATED, b"", CommandCode.PING)
    assert plan(ping + ping).frames == [ping, ping]
    short = ping[:100]
    assert plan(ping + short) == Plan(ping + short, [ping], vanish=True)
    create = frame(Operation.CREATE_STREAM, b"\x02ab" + bytes(4))
    padded = plan(create[:-3])
    assert padded.frames == [create[:-3] + bytes(3)] and not padded.vanish
    bad = bytearray(create)
    bad[OPERATION_AT] = Operation.DELETE_STREAM
    refused = plan(bytes(bad) + ping)
    assert refused.frames == [refused.data] and refused.data[OPERATION_AT] == INVALID_OPERATION
    assert expect(refused.frames[0], 3) == Expected(
        Outcome.EVICT_CLOSE, EvictionReason.INVALID_REQUEST_OPERATION, f"operation {INVALID_OPERATION}"
    )
    huge = bytearray(ping)
    _set_size(huge, MAX_FRAME_SIZE)  # over the 10 MiB cap: answered before any body byte
    assert plan(bytes(huge)).frames == [bytes(huge)] and not plan(bytes(huge)).vanish
    assert expect(bytes(huge), 3) == Expected(
        Outcome.STATUS_CLOSE, Status.INVALID_SIZE_BYTES, "over the frame cap"
    )
    huge_send = bytearray(frame(Operation.SEND_MESSAGES, bytes(300)))
    _set_size(huge_send, MAX_FRAME_SIZE)  # within the send cap: the body must come
    assert plan(bytes(huge_send)) == Plan(bytes(huge_send), [], vanish=True)
    assert (
        expect(create, 4).outcome is Outcome.EVICT and expect(create, None).code == EvictionReason.NO_SESSION
    )
    assert expect(ping, None) == Expected(Outcome.SERVED)


def test_fuzz09_given_mutated_valid_requests_when_sent_should_answer_each_as_documented(
    target: Target,
) -> None:
    @FUZZ_SETTINGS
    @given(examples)
    def run(example: Example) -> None:
        run_example(target, example)

    run()
    target.drop()
    assert_server_healthy(target)
    # The run must have reached past the header checks and into the batch checks.
    outcomes = target.outcomes
    assert outcomes["status 0"] > 30 and outcomes["stored"] > 5, outcomes
    assert sum(n for k, n in outcomes.items() if k.startswith("eviction")) > 10, outcomes
    assert sum(n for k, n in outcomes.items() if k.startswith("status 40")) > 0, outcomes


def test_fuzz09_given_every_valid_request_when_sent_unmutated_should_be_served(target: Target) -> None:
    """The corpus itself is sane: the mutations start from requests the server accepts."""
    for kind in Kind:
        for variant in range(3):
            run_example(target, Example(False, (Recipe(kind, variant, ()),), False))
    assert target.link is not None and target.link.bound is not None
    target.drop()
    assert_server_healthy(target)


# ---- issue 7's list of bad input, one case at a time ----------------------------------------------


@dataclass
class World:
    srv: ServerProcess
    records: bytes  # the seeded partition's raw poll reply, after its head
    current_offset: int


SEEDED: PartitionKey = (0, 0, 0)


def seeded_poll(client: Client09) -> bytes:
    return client.read(CommandCode.POLL_MESSAGES, poll_body(*SEEDED, 0, 1000))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    # A short request timeout so that a client going silent mid-header is closed in the test.
    env = {"TIDELOG_TCP_REQUEST_TIMEOUT_MS": "1000"}
    srv = ServerProcess(tmp_path_factory.mktemp("bad09") / "data", env=env).start()
    try:
        with Client09(srv.address) as client:
            client.login()
            seed(client, "seeded", batches=3)
            polled = seeded_poll(client)
        yield World(srv, polled[16:], U64.unpack_from(polled, 4)[0])
    finally:
        srv.stop()


def assert_untouched(world: World) -> None:
    srv = world.srv
    assert srv.proc is not None and srv.proc.poll() is None, "server died:\n" + srv.output
    with Client09(srv.address) as client:
        assert client.read(CommandCode.PING) == b""
        client.login()
        polled = seeded_poll(client)
        assert polled[16:] == world.records and U64.unpack_from(polled, 4)[0] == world.current_offset
        assert not any(
            s.info.name.startswith("bad-") for s in b.decode_streams09(client.read(CommandCode.GET_STREAMS))
        )
    crashes = [line for line in srv.lines if "Traceback" in line or "handler failed" in line]
    assert not crashes, srv.output


def logged_in(world: World) -> Client09:
    client = Client09(world.srv.address, timeout_s=ANSWER_TIMEOUT_S)
    client.login()
    return client


def good_send(client: Client09) -> bytearray:
    return bytearray(
        client.frame(Operation.SEND_MESSAGES, send_body(*SEEDED, make_batch([b"x", b"yy", b"zzz"])))
    )


def create_bad(client: Client09) -> bytearray:
    return bytearray(client.frame(Operation.CREATE_STREAM, b.CreateStream09("bad-stream").encode()))


def _header(field_at: int, value: int, width: int = 1) -> Callable[[Client09], bytearray]:
    def build(client: Client09) -> bytearray:
        frame = create_bad(client)
        frame[field_at : field_at + width] = value.to_bytes(width, "little")
        return frame

    return build


def _register(session: int, request: int) -> Callable[[Client09], bytearray]:
    def build(client: Client09) -> bytearray:
        login = f.encode_password_login(SDK_VERSION, f.PasswordLogin("iggy", "iggy"))
        frame = bytearray(client.frame(Operation.REGISTER, login))
        U64.pack_into(frame, SESSION_AT, session)
        U64.pack_into(frame, REQUEST_AT, request)
        return frame

    return build


def _over_cap(body_size: int) -> Callable[[Client09], bytearray]:
    def build(client: Client09) -> bytearray:
        frame = bytearray(client.frame(Operation.NON_REPLICATED, b"", CommandCode.GET_STREAMS))
        _set_size(frame, HEADER_SIZE + body_size)
        return frame  # header only: the server answers before the body would come

    return build


EVICT_4 = EvictionReason.INVALID_REQUEST_OPERATION

# name, logged in first, the frame, the documented answer (reference 1.2, 1.6-1.8; v09-notes
# Serving 2, Framing 2-4; README Limits).
CLOSING_CASES: list[tuple[str, bool, Callable[[Client09], bytearray], Expected]] = [
    ("size 0", True, _header(SIZE_AT, 0, 4), Expected(Outcome.SILENT_CLOSE)),
    ("size u32 max", True, _header(SIZE_AT, 0xFFFF_FFFF, 4), Expected(Outcome.SILENT_CLOSE)),
    (
        "control over 10 MiB",
        True,
        _over_cap(MAX_CONTROL_PAYLOAD_BYTES + 1),
        Expected(Outcome.STATUS_CLOSE, 80),
    ),
    ("over 64 KiB before login", False, _over_cap(64 * 1024 + 1), Expected(Outcome.STATUS_CLOSE, 80)),
    ("command Reply", True, _header(COMMAND_AT, VsrCommand.REPLY), Expected(Outcome.EVICT_CLOSE, EVICT_4)),
    ("command 0", True, _header(COMMAND_AT, 0), Expected(Outcome.EVICT_CLOSE, EVICT_4)),
    ("operation 65", True, _header(OPERATION_AT, 65), Expected(Outcome.EVICT_CLOSE, EVICT_4)),
    ("operation 68", True, _header(OPERATION_AT, 68), Expected(Outcome.EVICT_CLOSE, EVICT_4)),
    ("operation 163", True, _header(OPERATION_AT, 163), Expected(Outcome.EVICT_CLOSE, EVICT_4)),
    ("client 0", True, _header(CLIENT_AT, 0, 16), Expected(Outcome.SILENT_CLOSE)),
    ("session 0", True, _header(SESSION_AT, 0, 8), Expected(Outcome.EVICT_CLOSE, EvictionReason.NO_SESSION)),
    ("request 0", True, _header(REQUEST_AT, 0, 8), Expected(Outcome.EVICT_CLOSE, EVICT_4)),
    ("register with session", False, _register(5, 0), Expected(Outcome.EVICT_CLOSE, EVICT_4)),
    ("register with request", False, _register(0, 5), Expected(Outcome.EVICT_CLOSE, EVICT_4)),
]


@pytest.mark.parametrize(
    ("login", "build", "exp"), [case[1:] for case in CLOSING_CASES], ids=[case[0] for case in CLOSING_CASES]
)
def test_v09_bad_header_given_case_when_sent_should_answer_as_documented_and_close(
    world: World, login: bool, build: Callable[[Client09], bytearray], exp: Expected
) -> None:
    with Client09(world.srv.address, timeout_s=ANSWER_TIMEOUT_S) as client:
        if login:
            client.login()
        else:
            assert client.read(CommandCode.PING) == b""  # the connection speaks 0.9 now
        frame = bytes(build(client))
        link = Link(client, client.session or None)
        client.send_raw(frame[:HEADER_SIZE])  # the server reads no further than a refused header
        check_answer(Target(world.srv, "", {}, {}), link, frame, exp)
    assert_untouched(world)


def test_v09_session_given_another_session_when_changing_should_evict_12_and_keep_the_connection(
    world: World,
) -> None:
    with logged_in(world) as client:
        bound = client.session
        client.session = bound + 1
        answer = client.call(Operation.CREATE_STREAM, b.CreateStream09("bad-session").encode())
        assert isinstance(answer, f.EvictionReceived) and answer.reason == EvictionReason.SESSION_ERROR
        answer = client.call(Operation.LOGOUT)
        assert isinstance(answer, f.EvictionReceived) and answer.reason == EvictionReason.SESSION_ERROR
        answer = client.call(Operation.SEND_MESSAGES, bytes(good_send(client)[HEADER_SIZE:]))
        assert isinstance(answer, f.EvictionReceived) and answer.reason == EvictionReason.SESSION_ERROR
        client.session = bound  # still logged in with that session, on the same connection
        client.change(Operation.CREATE_STREAM, b.CreateStream09("session-kept").encode())
    assert_untouched(world)


def test_v09_session_given_change_before_login_with_a_session_when_sent_should_evict_1_and_stay(
    world: World,
) -> None:
    with Client09(world.srv.address, timeout_s=ANSWER_TIMEOUT_S) as client:
        client.session = 7  # a session number the connection was never given
        answer = client.call(Operation.CREATE_STREAM, b.CreateStream09("bad-early").encode())
        assert isinstance(answer, f.EvictionReceived) and answer.reason == EvictionReason.NO_SESSION
        answer = client.call(Operation.SEND_MESSAGES, bytes(good_send(client)[HEADER_SIZE:]))
        assert isinstance(answer, f.EvictionReceived) and answer.reason == EvictionReason.NO_SESSION
        assert client.login().session > 0
    assert_untouched(world)


def test_v09_reserved_given_non_zero_ignored_header_bytes_when_sent_should_serve_the_request(
    world: World,
) -> None:
    with logged_in(world) as client:
        frame = bytearray(client.frame(Operation.NON_REPLICATED, b"", CommandCode.GET_STREAMS))
        for at in (70, 127, 180, 192, 200, 255):  # reserved_frame, padding, user_id, reserved (1.2)
            frame[at] = 0xA5
        client.send_raw(bytes(frame))
        answer = client.read_answer()
        assert isinstance(answer, f.ReplyReceived) and answer.header.status == 0
        assert "seeded" in [s.info.name for s in b.decode_streams09(answer.body)]
    assert_untouched(world)


def _send_case(change: Callable[[bytearray, int, list[int]], None]) -> Callable[[Client09], bytearray]:
    """A valid send of three messages to the seeded partition, changed by ``change(frame,
    batch_at, frame_starts)``."""

    def build(client: Client09) -> bytearray:
        frame = good_send(client)
        at = _batch_at(frame)
        assert at is not None
        change(frame, at, _frame_starts(frame, at))
        _set_size(frame, len(frame))
        return frame

    return build


def _restamped(
    change: Callable[[bytearray, int, list[int]], None],
) -> Callable[[bytearray, int, list[int]], None]:
    def both(frame: bytearray, at: int, starts: list[int]) -> None:
        change(frame, at, starts)
        restamp_batch(frame, at)

    return both


def _put32(offset: int, value: int) -> Callable[[bytearray, int, list[int]], None]:
    return lambda frame, at, starts: U32.pack_into(frame, at + offset, value)


def _payload_byte(frame: bytearray, at: int, starts: list[int]) -> None:
    frame[starts[1] + FRAME_HEADER_SIZE] ^= 0x20


def _frame_reserved(frame: bytearray, at: int, starts: list[int]) -> None:
    frame[starts[2] + FRAME_RESERVED_AT + 7] = 1


def _longer_payload(frame: bytearray, at: int, starts: list[int]) -> None:
    U32.pack_into(frame, starts[0] + PAYLOAD_LENGTH_AT, 2)


def _trailing_byte(frame: bytearray, at: int, starts: list[int]) -> None:
    frame.append(0)
    U64.pack_into(frame, at + BATCH_LENGTH_AT, len(frame) - at)


def _both_counts(count: int) -> Callable[[bytearray, int, list[int]], None]:
    def change(frame: bytearray, at: int, starts: list[int]) -> None:
        U32.pack_into(frame, at - 4, count)
        U32.pack_into(frame, at + MESSAGE_COUNT_AT, count)

    return change


def _request_checksum(frame: bytearray, at: int, starts: list[int]) -> None:
    frame[CHECKSUM_AT] = 1  # the SDK sends 0 for sends; a non-zero value is checked all the same


# name, the send, the documented status (4.1-4.3, section 6, v09-notes Batches 1).
SEND_CASES: list[tuple[str, Callable[[Client09], bytearray], int]] = [
    ("frame checksum", _send_case(_payload_byte), Status.INVALID_MESSAGE_CHECKSUM),
    ("frame reserved", _send_case(_restamped(_frame_reserved)), Status.INVALID_RESERVED_FIELD),
    ("frames overrun", _send_case(_restamped(_longer_payload)), Status.INVALID_COMMAND),
    ("byte after frames", _send_case(_restamped(_trailing_byte)), Status.INVALID_COMMAND),
    ("count 2 of 3 frames", _send_case(_restamped(_both_counts(2))), Status.INVALID_MESSAGES_COUNT),
    ("count 0", _send_case(_restamped(_both_counts(0))), Status.INVALID_MESSAGES_COUNT),
    ("batch count only", _send_case(_restamped(_put32(MESSAGE_COUNT_AT, 4))), Status.INVALID_MESSAGES_COUNT),
    ("request checksum", _send_case(_request_checksum), Status.INVALID_FORMAT),
]


@pytest.mark.parametrize(
    ("build", "status"), [case[1:] for case in SEND_CASES], ids=[case[0] for case in SEND_CASES]
)
def test_v09_bad_batch_given_case_when_sent_should_answer_its_status_and_store_nothing(
    world: World, build: Callable[[Client09], bytearray], status: int
) -> None:
    with logged_in(world) as client:
        frame = bytes(build(client))
        if status != Status.INVALID_FORMAT:
            assert batch_messages(frame[HEADER_SIZE:]) is None  # broken in the way the name says only
        client.send_raw(frame)
        answer = client.read_answer()
        assert isinstance(answer, f.ReplyReceived) and answer.header.status == status, answer
        assert client.read(CommandCode.PING) == b""  # the connection stays
    assert_untouched(world)


def _vanish_after(world: World, cut: int, rude: bool) -> None:
    with logged_in(world) as client:
        before = client_count(client)
        client.send_raw(bytes(good_send(client))[:cut])
        if rude:
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with logged_in(world) as check:
        # The vanished client is dropped (the count includes this one).
        assert wait_until(lambda: client_count(check) == before, timeout_s=20), client_count(check)


@pytest.mark.parametrize("rude", [False, True], ids=["fin", "reset"])
@pytest.mark.parametrize("cut", [100, HEADER_SIZE + 150], ids=["half-header", "half-send"])
def test_v09_vanish_given_client_leaving_mid_frame_should_drop_it_and_serve_others(
    world: World, rude: bool, cut: int
) -> None:
    with logged_in(world) as other:  # a client busy while the other vanishes
        _vanish_after(world, cut, rude)
        assert other.read(CommandCode.PING) == b""
    assert_untouched(world)


def test_v09_vanish_given_client_silent_mid_header_when_timeout_passes_should_close_it(world: World) -> None:
    with logged_in(world) as client:
        client.send_raw(bytes(create_bad(client))[:100])
        # request_timeout_ms (1 s here) without a byte mid-frame: the server logs and closes.
        assert client.closed_by_server()
    # The log line is read from the server's output by another thread: it may trail the close.
    logged = wait_until(lambda: any("request incomplete" in line for line in world.srv.lines), timeout_s=10)
    assert logged, world.srv.output
    assert_untouched(world)

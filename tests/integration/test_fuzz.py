"""Random frames and mutated valid frames against one running server.

Each example is a byte string sent on a logged-in connection. Before sending, the test
splits it into frames exactly as the protocol defines (reference 1.2), so it knows how many
replies to expect and whether the server must close the connection (length < 4, payload
over the limit). A frame left incomplete is padded with zeros when that is cheap, or the
connection is abandoned mid-frame. Commands that would destroy the seeded data or lock the
root user out (deletes, purges, user edits) are rewritten to an unknown code first.

Every reply must be a status the protocol knows and never 1 (Error, which the dispatcher
sends when a handler raised something unexpected); after the run the server must be alive,
serve a fresh client, and every stored message of the seeded topic must still verify.

Set TIDELOG_FUZZ_EXAMPLES to run more examples and TIDELOG_FUZZ_RANDOM=1 for fresh random
ones instead of the fixed, derandomized set CI runs.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ServerProcess
from tests.wireclient import Request, ServerClosed, StoredMessage, WireClient, verify_stored
from tidelog.permissions import GlobalPermissions, Permissions, StreamPermissions
from tidelog.wire import framing
from tidelog.wire import requests as c
from tidelog.wire.codes import KNOWN_COMMANDS, MAX_CONTROL_PAYLOAD_BYTES, Command, IggyError, Status
from tidelog.wire.primitives import Consumer, ConsumerKind, HeaderKind, PollingKind, encode_identifier
from tidelog.wire.records import ClientDetails, decode_record
from tidelog.wire.user_headers import encode_user_headers

# Stream ids are assigned 0, 1, ... in creation order on a fresh server (reference 4.6).
FUZZ_STREAM, SEED_STREAM = 0, 1
FUZZ_TOPIC = SEED_TOPIC = 0
SEED_PARTITIONS = 2
SEND_LIMIT_BYTES = 128 * 1024 * 1024  # the default tcp.max_send_payload_bytes
PAD_LIMIT_BYTES = 1 << 20  # complete an unfinished frame with zeros up to this much
UNKNOWN_CODE = 4242
KNOWN_STATUSES = frozenset(int(s) for s in Status)
# Would delete or empty seeded data, or change the root user's name/password/permissions.
FORBIDDEN = frozenset(
    {
        Command.DELETE_STREAM,
        Command.PURGE_STREAM,
        Command.DELETE_TOPIC,
        Command.PURGE_TOPIC,
        Command.DELETE_PARTITIONS,
        Command.DELETE_SEGMENTS,
        Command.UPDATE_USER,
        Command.UPDATE_PERMISSIONS,
        Command.CHANGE_PASSWORD,
    }
)
# Creating hundreds of partitions is legal but slow; such frames are rewritten too.
PARTITIONS_MAX = 4
U32 = struct.Struct("<I")
EXAMPLES = int(os.environ.get("TIDELOG_FUZZ_EXAMPLES", "200"))
DERANDOMIZE = not os.environ.get("TIDELOG_FUZZ_RANDOM")


# ---- the server and its seeded data -------------------------------------------------------------


@dataclass
class Target:
    srv: ServerProcess
    seeded: dict[int, list[StoredMessage]]
    client: WireClient | None = None
    reconnects: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def connection(self) -> WireClient:
        if self.client is None:
            self.client = WireClient(self.srv.address, timeout_s=10)
            self.client.login()
            self.reconnects += 1
        return self.client

    def drop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    # The plan models one frame cap for every connection; before login the server's is smaller
    # by default (64 KiB, tested on its own in test_connection_limits), and examples log out.
    unauthenticated_cap = {"TIDELOG_TCP_MAX_UNAUTHENTICATED_PAYLOAD_BYTES": str(MAX_CONTROL_PAYLOAD_BYTES)}
    srv = ServerProcess(tmp_path_factory.mktemp("fuzz") / "data", env=unauthenticated_cap).start()
    try:
        with WireClient(srv.address) as client:
            client.login()
            assert client.create_stream("fuzz") == FUZZ_STREAM
            assert client.create_topic(FUZZ_STREAM, "t", 1) == FUZZ_TOPIC
            assert client.create_stream("seeded") == SEED_STREAM
            assert client.create_topic(SEED_STREAM, "events", SEED_PARTITIONS) == SEED_TOPIC
            rng = random.Random(9)
            for partition in range(SEED_PARTITIONS):
                for _ in range(4):
                    payloads = [rng.randbytes(rng.randrange(1, 300)) for _ in range(rng.randrange(1, 8))]
                    client.send(SEED_STREAM, SEED_TOPIC, partition, payloads)
            seeded = {p: client.poll_all(SEED_STREAM, SEED_TOPIC, p) for p in range(SEED_PARTITIONS)}
        yield Target(srv, seeded)
    finally:
        srv.stop()


def assert_server_healthy(target: Target) -> None:
    srv = target.srv
    assert srv.proc is not None and srv.proc.poll() is None, "server died:\n" + srv.output
    with WireClient(srv.address) as client:
        client.login()
        for partition, before in target.seeded.items():
            now = client.poll_all(SEED_STREAM, SEED_TOPIC, partition)
            # Fuzzed sends may have added messages; the seeded ones must be untouched.
            verify_stored(now)
            assert [m.raw for m in now[: len(before)]] == [m.raw for m in before]
        fuzzed = client.poll_all(FUZZ_STREAM, FUZZ_TOPIC, 0)
        verify_stored(fuzzed)
        client.send(FUZZ_STREAM, FUZZ_TOPIC, 0, [b"still-here"])
        _, [last] = client.poll(FUZZ_STREAM, FUZZ_TOPIC, 0, len(fuzzed), 10)
        assert last.payload == b"still-here" and last.offset == len(fuzzed) and last.checksum_ok
    tracebacks = [line for line in srv.lines if "Traceback" in line or "handler failed" in line]
    assert not tracebacks, srv.output


# ---- predicting what the server must do with a byte string --------------------------------------


@dataclass
class Plan:
    data: bytes
    codes: list[int]  # one reply is due per complete frame, in order
    fatal: int | None = None  # a framing error the server answers and then closes on
    abandon: bool = False  # an unfinished frame too big to pad: leave mid-frame


def split_frames(data: bytes) -> tuple[list[tuple[int, int, int]], int | None, int]:
    """(frames as (header offset, code, payload length), fatal status, bytes still missing)."""
    frames: list[tuple[int, int, int]] = []
    pos = 0
    while len(data) - pos >= 8:
        length, code = U32.unpack_from(data, pos)[0], U32.unpack_from(data, pos + 4)[0]
        if length < 4:
            return frames, Status.INVALID_COMMAND, 0
        payload_length = length - 4
        limit = SEND_LIMIT_BYTES if code == Command.SEND_MESSAGES else MAX_CONTROL_PAYLOAD_BYTES
        if payload_length > limit:
            return frames, Status.INVALID_SIZE_BYTES, 0
        if len(data) - pos - 8 < payload_length:
            return frames, None, pos + 8 + payload_length - len(data)
        frames.append((pos, code, payload_length))
        pos += 8 + payload_length
    return frames, None, (8 - (len(data) - pos)) % 8


def too_many_partitions(code: int, payload: bytes) -> bool:
    if code not in (Command.CREATE_TOPIC, Command.CREATE_PARTITIONS):
        return False
    try:
        request = c.decode_request(code, payload)
    except IggyError:
        return False
    assert isinstance(request, c.CreateTopic | c.CreatePartitions)
    return request.partitions_count > PARTITIONS_MAX


def plan(raw: bytes) -> Plan:
    data = bytearray(raw)
    for _ in range(4):  # padding a header can reveal a payload to pad
        frames, fatal, missing = split_frames(bytes(data))
        if fatal is not None or not missing:
            break
        if missing > PAD_LIMIT_BYTES:
            return Plan(bytes(data), [], None, abandon=True)
        data += bytes(missing)
    else:
        return Plan(bytes(data), [], None, abandon=True)
    codes = []
    for at, code, payload_length in frames:
        payload = bytes(data[at + 8 : at + 8 + payload_length])
        if code in FORBIDDEN or too_many_partitions(code, payload):
            code = UNKNOWN_CODE
            U32.pack_into(data, at + 4, code)
        codes.append(code)
    return Plan(bytes(data), codes, fatal)


def run_plan(target: Target, p: Plan) -> None:
    client = target.connection()
    client.send_raw(p.data)
    if p.abandon:
        target.drop()
        return
    for i, code in enumerate(p.codes):
        try:
            status, _ = client.read_reply()
        except ServerClosed:
            raise AssertionError(
                f"server closed after frame {i} (code {code}) of {p.data[:64].hex()}"
            ) from None
        target.statuses[status] = target.statuses.get(status, 0) + 1
        assert status in KNOWN_STATUSES, f"code {code}: unknown status {status}"
        assert status != Status.ERROR, f"code {code}: internal error for frame {i} of {p.data[:200].hex()}"
        assert code in KNOWN_COMMANDS or status == Status.INVALID_COMMAND, f"unknown code {code} got {status}"
    if p.fatal is not None:
        assert client.read_reply()[0] == p.fatal
        assert client.is_closed_by_server()
        target.drop()
        return
    # In step and still ours? A ping answers OK; GetMe says who we are now.
    client.send_raw(framing.encode_request(Command.PING, b"") + framing.encode_request(Command.GET_ME, b""))
    assert client.read_reply()[0] == Status.OK
    status, payload = client.read_reply()
    if status != Status.OK or decode_record(ClientDetails, payload).client.user_id != 0:
        target.drop()  # logged out (or in as someone else) by the example: start afresh


# ---- generators -----------------------------------------------------------------------------------

CODES = [*sorted(KNOWN_COMMANDS), 0, 2, 13, 606, UNKNOWN_CODE, 0xFFFF_FFFF]


def _msgs(*payloads: bytes, headers: bytes = b"") -> list[c.OutgoingMessage]:
    return [c.OutgoingMessage(p, id=i, user_headers=headers) for i, p in enumerate(payloads)]


def valid_frames() -> list[bytes]:
    """Well-formed requests touching every command family, mostly aimed at the fuzz stream."""
    s, t = FUZZ_STREAM, FUZZ_TOPIC
    headers = encode_user_headers({"k": (HeaderKind.STRING, b"v"), "n": (HeaderKind.UINT32, b"\x01\0\0\0")})
    consumer = Consumer(ConsumerKind.CONSUMER, 1)
    group = Consumer(ConsumerKind.CONSUMER_GROUP, "g")
    perms = Permissions(GlobalPermissions(read_streams=True), {s: StreamPermissions(send_messages=True)})
    requests: list[Request] = [
        c.Ping(),
        c.GetStats(),
        c.GetMe(),
        c.GetClients(),
        c.GetClient(1),
        c.GetClusterMetadata(),
        c.GetSnapshot(1, (4,)),
        c.GetStreams(),
        c.GetStream(s),
        c.GetStream("fuzz"),
        c.GetTopics(s),
        c.GetTopic(s, t),
        c.GetTopic("fuzz", "t"),
        c.CreateStream("fz"),
        c.UpdateStream("fz", "fz2"),
        c.CreateTopic(s, 1, 1, 0, 0, 0, "tz"),
        c.UpdateTopic(s, "tz", 1, 0, 0, 1, "tz"),
        c.CreatePartitions(s, "tz", 1),
        c.GetUsers(),
        c.GetUser(0),
        c.GetUser("iggy"),
        c.CreateUser("fuzzer", "secret", 1, perms),
        c.DeleteUser("fuzzer"),
        c.LoginUser("iggy", "iggy"),
        c.LoginUser("iggy", "wrong"),
        c.LogoutUser(),
        c.GetPersonalAccessTokens(),
        c.CreatePersonalAccessToken("fuzz-token", 0),
        c.DeletePersonalAccessToken("fuzz-token"),
        c.LoginWithPersonalAccessToken("A" * 68),
        c.PollMessages(consumer, s, t, 0, PollingKind.NEXT, 0, 10, True),
        c.PollMessages(consumer, s, t, 0, PollingKind.OFFSET, 3, 5, False),
        c.PollMessages(consumer, s, t, 0, PollingKind.LAST, 0, 4, False),
        c.PollMessages(consumer, s, t, 0, PollingKind.TIMESTAMP, 1, 4, False),
        c.PollMessages(consumer, SEED_STREAM, SEED_TOPIC, 1, PollingKind.FIRST, 0, 100, False),
        c.PollMessages(group, s, t, None, PollingKind.NEXT, 0, 10, True),
        c.FlushUnsavedBuffer(s, t, 0, True),
        c.GetConsumerOffset(consumer, s, t, 0),
        c.StoreConsumerOffset(consumer, s, t, 0, 0),
        c.DeleteConsumerOffset(consumer, s, t, 0),
        c.CreateConsumerGroup(s, t, "g"),
        c.GetConsumerGroup(s, t, "g"),
        c.GetConsumerGroups(s, t),
        c.JoinConsumerGroup(s, t, "g"),
        c.StoreConsumerOffset(group, s, t, None, 0),
        c.LeaveConsumerGroup(s, t, "g"),
        c.DeleteConsumerGroup(s, t, "g"),
    ]
    frames = [framing.encode_request(int(r.CODE), r.encode()) for r in requests]
    sends = [
        c.encode_send_messages(s, t, c.Partitioning.partition_id(0), _msgs(b"one")),
        c.encode_send_messages(s, t, c.Partitioning.balanced(), _msgs(b"a", b"bb", b"ccc", headers=headers)),
        c.encode_send_messages("fuzz", "t", c.Partitioning.messages_key(b"key"), _msgs(b"x" * 100, b"")),
        # Past the small read buffer: exercises the big-buffer receive path.
        c.encode_send_messages(s, t, c.Partitioning.partition_id(0), _msgs(*([bytes(range(256)) * 4] * 300))),
    ]
    frames += [framing.encode_request(Command.SEND_MESSAGES, body) for body in sends]
    return frames


VALID = valid_frames()
SENDS = [f for f in VALID if U32.unpack_from(f, 4)[0] == Command.SEND_MESSAGES]
INTERESTING_U32 = [0, 1, 3, 4, 5, 63, 64, 65, 0x7FFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFC]


@st.composite
def random_frame(draw: st.DrawFn) -> bytes:
    code = draw(st.sampled_from(CODES) | st.integers(0, 0xFFFF_FFFF))
    payload = draw(st.binary(max_size=300))
    return framing.encode_request(code, payload)


@st.composite
def mutated(draw: st.DrawFn, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(
                [
                    "flip",
                    "flip_head",
                    "byte",
                    "u32",
                    "truncate",
                    "truncate_fixed",
                    "length",
                    "code",
                    "insert",
                    "delete",
                ]
            )
        )
        n = len(data)
        if n == 0:
            data += draw(st.binary(min_size=1, max_size=16))
            continue
        if kind in ("flip", "flip_head"):
            # Most of a SendMessages frame is payload: also aim at headers, metadata and index.
            at = draw(st.integers(0, n - 1 if kind == "flip" else min(n, 160) - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[draw(st.integers(0, n - 1))] = draw(st.integers(0, 255))
        elif kind == "u32" and n >= 4:
            at = draw(st.integers(0, min(n, 200) - 4))
            U32.pack_into(data, at, draw(st.sampled_from(INTERESTING_U32) | st.integers(0, 0xFFFF_FFFF)))
        elif kind == "truncate":
            del data[draw(st.integers(0, n - 1)) :]
        elif kind == "truncate_fixed" and n > 8:
            # A shorter payload whose frame length says so: decoders meet a truncated payload.
            del data[draw(st.integers(8, n - 1)) :]
            U32.pack_into(data, 0, len(data) - 4)
        elif kind == "length" and n >= 4:
            delta = draw(st.integers(-8, 8) | st.integers(-(1 << 20), 1 << 20))
            U32.pack_into(data, 0, max(0, min(0xFFFF_FFFF, U32.unpack_from(data, 0)[0] + delta)))
        elif kind == "code" and n >= 8:
            U32.pack_into(data, 4, draw(st.sampled_from(CODES)))
        elif kind == "insert":
            at = draw(st.integers(0, n))
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "delete":
            at = draw(st.integers(0, n - 1))
            del data[at : at + draw(st.integers(1, 32))]
    return bytes(data)


@st.composite
def mutated_stream(draw: st.DrawFn) -> bytes:
    """1-3 frames back to back (pipelined), at least one of them mutated; now and then
    after a logout, so that the unauthenticated path meets them too."""
    frames = [framing.encode_request(Command.LOGOUT_USER, b"")] if draw(st.integers(0, 7)) == 0 else []
    for i in range(draw(st.integers(1, 3))):
        base = draw(st.sampled_from(SENDS) if draw(st.booleans()) else st.sampled_from(VALID))
        frames.append(draw(mutated(base)) if i == 0 or draw(st.booleans()) else base)
    return b"".join(frames)


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=DERANDOMIZE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    print_blob=True,
)
if DERANDOMIZE:
    # The same examples every run: a database of past failures would only add noise.
    FUZZ_SETTINGS = settings(FUZZ_SETTINGS, database=None)


# ---- the tests --------------------------------------------------------------------------------------


def test_fuzz_plan_given_known_byte_strings_should_predict_frames_padding_and_closes() -> None:
    ping = framing.encode_request(Command.PING, b"")
    assert plan(ping + ping).codes == [Command.PING, Command.PING]
    assert plan(b"\x02\x00\x00\x00\x01\x00\x00\x00").fatal == Status.INVALID_COMMAND
    over = U32.pack(MAX_CONTROL_PAYLOAD_BYTES + 5) + U32.pack(Command.CREATE_STREAM)
    assert plan(ping + over).fatal == Status.INVALID_SIZE_BYTES and plan(ping + over).codes == [Command.PING]
    padded = plan(U32.pack(10) + U32.pack(Command.PING) + b"ab")
    assert padded.data == U32.pack(10) + U32.pack(Command.PING) + b"ab\0\0\0\0" and padded.codes == [1]
    assert plan(U32.pack(4 + (2 << 20)) + U32.pack(Command.CREATE_STREAM)).abandon
    delete = framing.encode_request(Command.DELETE_STREAM, encode_identifier(SEED_STREAM))
    assert plan(delete).codes == [UNKNOWN_CODE]
    many = framing.encode_request(Command.CREATE_PARTITIONS, c.CreatePartitions(0, 0, 500).encode())
    assert plan(many).codes == [UNKNOWN_CODE]


def test_fuzz_given_random_frames_when_sent_should_answer_each_and_stay_healthy(target: Target) -> None:
    @FUZZ_SETTINGS
    @given(st.lists(random_frame(), min_size=1, max_size=3).map(b"".join))
    def run(raw: bytes) -> None:
        run_plan(target, plan(raw))

    run()
    target.drop()
    assert_server_healthy(target)


def test_fuzz_given_mutated_valid_frames_when_sent_should_answer_each_and_stay_healthy(
    target: Target,
) -> None:
    @FUZZ_SETTINGS
    @given(mutated_stream())
    def run(raw: bytes) -> None:
        run_plan(target, plan(raw))

    run()
    target.drop()
    assert_server_healthy(target)
    # The run must have reached past the decoders, not only bounced off them.
    assert target.statuses.get(Status.OK, 0) > 20, target.statuses


def test_fuzz_given_every_valid_frame_when_sent_unmutated_should_be_accepted_or_refused_cleanly(
    target: Target,
) -> None:
    """The corpus itself is sane (the mutations start from real requests)."""
    for frame in VALID:
        run_plan(target, plan(frame))
    target.drop()
    assert_server_healthy(target)

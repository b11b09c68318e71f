"""The official apache-iggy 0.9.0 SDK (256-byte VSR headers) against a real ``tidelog serve``.

Mirrors tests/compat/test_sdk_interop.py (the 0.8 SDK) where the 0.9 API allows, and covers
every command group the 0.9 SDK reaches. Error matches use the 0.9 SDK's messages, which are
the errors' display strings ("Invalid credentials"), not their names as 0.8's were.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from apache_iggy import (
    AutoCommit,
    AutoCommitWhen,
    AutoLogin,
    Consumer,
    GlobalPermissions,
    HeaderKey,
    HeaderValue,
    IggyClient,
    IggyConsumer,
    IggyExpiry,
    MaxTopicSize,
    Partitioning,
    Permissions,
    PollingStrategy,
    ReceiveMessage,
    SendMessage,
    StreamPermissions,
    UserStatus,
)

from tests.conftest import ServerProcess
from tests.sdk09.sdkkit import (
    DEFAULT_CONSUMER_ID,
    FAST_HEARTBEAT,
    PatInfo,
    StoredOffset,
    connect,
    create_pat,
    delete_offset,
    delete_pat,
    get_offset,
    list_pats,
    payloads,
    poll,
    store_offset,
    tcp_config,
)

# A server that does not answer fails fast (no reconnection, see sdkkit.tcp_config); this caps
# one that answers wrongly and leaves the SDK waiting for its 30 s reply timeout.
pytestmark = pytest.mark.timeout(60)

MIB = 1024 * 1024
WAIT_S = 10.0


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = WAIT_S) -> None:
    """Polls ``check`` until it holds; fails the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


async def make_topic(client: IggyClient, stream: str, topic: str, partitions: int = 1) -> None:
    await client.create_stream(stream)
    await client.create_topic(stream, topic, partitions_count=partitions)


# ---- connection and login -------------------------------------------------------------------


async def test_sdk09_given_fresh_server_when_login_and_ping_should_succeed(server: ServerProcess) -> None:
    client = IggyClient(server.address)  # the plain address form, as a user would write it
    await asyncio.wait_for(client.connect(), WAIT_S)
    await asyncio.wait_for(client.login_user("iggy", "iggy"), WAIT_S)
    await client.ping()
    me = await client.get_user("iggy")
    assert me is not None
    assert (me.id, me.username, me.status) == (0, "iggy", UserStatus.Active)
    assert me.permissions is not None
    glob = me.permissions.global_permissions
    assert glob.manage_servers and glob.manage_users and glob.manage_streams and glob.send_messages


async def test_sdk09_given_wrong_password_when_login_should_raise_invalid_credentials(
    server: ServerProcess,
) -> None:
    client = IggyClient(tcp_config(server.address))
    await client.connect()
    with pytest.raises(RuntimeError, match="Invalid credentials"):
        await client.login_user("iggy", "wrong-password")
    with pytest.raises(RuntimeError, match="Invalid credentials"):
        await client.login_user("nobody", "whatever")
    # The rejection does not poison the connection for a correct login.
    good = await connect(server)
    await good.ping()


async def test_sdk09_given_connection_string_when_connect_should_log_in(server: ServerProcess) -> None:
    client = IggyClient.from_connection_string(f"iggy+tcp://iggy:iggy@{server.address}")
    await asyncio.wait_for(client.connect(), WAIT_S)
    await client.create_stream("via-conn-string")
    stream = await client.get_stream("via-conn-string")
    assert stream is not None and stream.name == "via-conn-string"


async def test_sdk09_given_auto_login_config_when_connect_should_be_logged_in(server: ServerProcess) -> None:
    client = IggyClient(tcp_config(server.address, AutoLogin.username_password("iggy", "iggy")))
    await client.connect()
    await client.create_stream("auto")
    assert [s.name for s in await client.get_streams()] == ["auto"]


async def test_sdk09_given_logout_when_calling_should_raise_unauthenticated(root: IggyClient) -> None:
    await root.create_stream("s")
    await root.logout_user()
    with pytest.raises(RuntimeError, match="Unauthenticated"):
        await root.get_streams()
    await root.login_user("iggy", "iggy")
    assert [s.name for s in await root.get_streams()] == ["s"]


# ---- streams ----------------------------------------------------------------------------------


async def test_sdk09_given_streams_when_created_should_be_readable_by_name_and_id(root: IggyClient) -> None:
    await root.create_stream("orders")
    await root.create_stream("audit")
    by_name = await root.get_stream("orders")
    assert by_name is not None
    assert (by_name.id, by_name.name, by_name.topics_count, by_name.messages_count) == (0, "orders", 0, 0)
    assert by_name.topics == []
    by_id = await root.get_stream(1)
    assert by_id is not None and by_id.name == "audit"
    assert await root.get_stream("missing") is None
    assert await root.get_stream(99) is None
    streams = sorted(await root.get_streams(), key=lambda s: s.id)
    assert [(s.id, s.name, s.topics_count) for s in streams] == [(0, "orders", 0), (1, "audit", 0)]
    now_us = time.time_ns() // 1000
    assert all(abs(s.created_at - now_us) < 60_000_000 for s in streams)
    with pytest.raises(RuntimeError, match="already exists"):
        await root.create_stream("orders")


async def test_sdk09_given_stream_when_updated_purged_and_deleted_should_follow(root: IggyClient) -> None:
    await make_topic(root, "orders", "events", partitions=2)
    await root.create_stream("audit")
    await root.update_stream("orders", "orders-v2")
    assert await root.get_stream("orders") is None
    renamed = await root.get_stream("orders-v2")
    assert renamed is not None and (renamed.id, renamed.topics_count) == (0, 1)
    with pytest.raises(RuntimeError, match="already exists"):
        await root.update_stream(0, "audit")

    for p in (0, 1):
        await root.send_messages("orders-v2", "events", p, [SendMessage(f"{p}-{i}") for i in range(3)])
    before = await root.get_stream(0)
    assert before is not None and before.messages_count == 6 and before.size > 0
    await root.purge_stream("orders-v2")
    purged = await root.get_stream(0)
    assert purged is not None
    assert (purged.messages_count, purged.topics_count) == (0, 1)  # topics and partitions stay
    assert await poll(root, 0, "events", 0, PollingStrategy.Offset(0)) == []
    await root.send_messages(0, "events", 1, [SendMessage(b"after-purge")])
    assert payloads(await poll(root, 0, "events", 1, PollingStrategy.First())) == [b"after-purge"]

    await root.delete_stream("audit")
    assert await root.get_stream("audit") is None
    assert [s.name for s in await root.get_streams()] == ["orders-v2"]
    with pytest.raises(RuntimeError):
        await root.delete_stream("audit")


# ---- topics and partitions --------------------------------------------------------------------


async def test_sdk09_given_topic_options_when_created_should_be_visible_in_get_topic(
    root: IggyClient,
) -> None:
    await root.create_stream("s")
    await root.create_topic("s", "plain", partitions_count=2)
    await root.create_topic(
        "s",
        "tuned",
        partitions_count=3,
        compression_algorithm="gzip",
        message_expiry=IggyExpiry.ExpireDuration(timedelta(hours=1)),
        max_topic_size=MaxTopicSize.Custom(10_000_000_000),
        segment_size=64 * MIB,
        messages_required_to_save=10,
        preallocate_segments=False,
    )
    plain = await root.get_topic("s", "plain")
    assert plain is not None
    assert (plain.id, plain.name, plain.partitions_count, plain.messages_count) == (0, "plain", 2, 0)
    assert plain.compression_algorithm == "none"
    # Server defaults are resolved at create: never expire, unlimited size (section 2.10).
    assert isinstance(plain.message_expiry, IggyExpiry.NeverExpire)
    assert isinstance(plain.max_topic_size, MaxTopicSize.Unlimited)
    assert [p.id for p in plain.partitions] == [0, 1]

    tuned = await root.get_topic("s", 1)
    assert tuned is not None
    assert (tuned.id, tuned.name, tuned.partitions_count) == (1, "tuned", 3)
    assert tuned.compression_algorithm == "gzip"
    assert isinstance(tuned.message_expiry, IggyExpiry.ExpireDuration)
    assert tuned.message_expiry.duration == timedelta(hours=1)
    assert isinstance(tuned.max_topic_size, MaxTopicSize.Custom)
    assert tuned.max_topic_size.bytes == 10_000_000_000
    assert [(p.id, p.messages_count, p.current_offset) for p in tuned.partitions] == [
        (0, 0, 0),
        (1, 0, 0),
        (2, 0, 0),
    ]
    explicit = tuned.options.to_scalar_dict()  # the keys the client sent
    assert explicit["segment_size"] == 64 * MIB
    assert explicit["messages_required_to_save"] == 10
    assert explicit["compression_algorithm"] == "gzip"

    topics = sorted(await root.get_topics("s"), key=lambda t: t.id)
    assert [(t.id, t.name, t.partitions_count) for t in topics] == [(0, "plain", 2), (1, "tuned", 3)]
    stream = await root.get_stream("s")
    assert stream is not None and stream.topics_count == 2
    assert await root.get_topic("s", "nope") is None
    with pytest.raises(RuntimeError, match="already exists"):
        await root.create_topic("s", "plain", partitions_count=1)


async def test_sdk09_given_invalid_topic_size_when_creating_should_be_refused(root: IggyClient) -> None:
    await root.create_stream("s")
    # The cap must be at least one segment (section 5.5, error 1019).
    with pytest.raises(RuntimeError, match="Max topic size cannot be lower than segment size"):
        await root.create_topic(
            "s", "t", partitions_count=1, max_topic_size=MaxTopicSize.Custom(MIB), segment_size=64 * MIB
        )
    assert await root.get_topic("s", "t") is None
    with pytest.raises(RuntimeError, match="was not found"):
        await root.create_topic("missing-stream", "t", partitions_count=1)


async def test_sdk09_given_topic_when_updated_purged_and_deleted_should_follow(root: IggyClient) -> None:
    await root.create_stream("s")
    await root.create_topic(
        "s",
        "t",
        partitions_count=1,
        compression_algorithm="gzip",
        max_topic_size=MaxTopicSize.Custom(5_000_000_000),
    )
    await root.create_topic("s", "gone", partitions_count=1)
    # An update is a patch: settings it leaves out keep their value.
    await root.update_topic("s", "t", "t2", message_expiry=IggyExpiry.ExpireDuration(timedelta(hours=2)))
    assert await root.get_topic("s", "t") is None
    topic = await root.get_topic("s", "t2")
    assert topic is not None
    assert topic.id == 0 and topic.compression_algorithm == "gzip"
    assert isinstance(topic.message_expiry, IggyExpiry.ExpireDuration)
    assert topic.message_expiry.duration == timedelta(hours=2)
    assert isinstance(topic.max_topic_size, MaxTopicSize.Custom)
    assert topic.max_topic_size.bytes == 5_000_000_000

    await root.send_messages("s", "t2", 0, [SendMessage(str(i)) for i in range(4)])
    full = await root.get_topic("s", "t2")
    assert full is not None and full.messages_count == 4
    await root.purge_topic("s", "t2")
    purged = await root.get_topic("s", "t2")
    assert purged is not None and purged.messages_count == 0 and purged.partitions_count == 1
    assert await poll(root, "s", "t2", 0, PollingStrategy.Offset(0)) == []

    await root.delete_topic("s", "gone")
    assert await root.get_topic("s", "gone") is None
    assert [t.name for t in await root.get_topics("s")] == ["t2"]
    with pytest.raises(RuntimeError):
        await root.delete_topic("s", "gone")


async def test_sdk09_given_partitions_when_created_and_deleted_should_change_topic(root: IggyClient) -> None:
    await make_topic(root, "s", "t", partitions=1)
    await root.create_partitions("s", "t", 2)
    topic = await root.get_topic("s", "t")
    assert topic is not None and topic.partitions_count == 3
    assert [p.id for p in topic.partitions] == [0, 1, 2]
    await root.send_messages("s", "t", 2, [SendMessage(b"in-2")])
    assert payloads(await poll(root, "s", "t", 2, PollingStrategy.Offset(0))) == [b"in-2"]

    await root.delete_partitions("s", "t", 1)  # removes the highest: partition 2 and its data
    topic = await root.get_topic("s", "t")
    assert topic is not None and topic.partitions_count == 2
    assert [p.id for p in topic.partitions] == [0, 1]
    assert topic.messages_count == 0
    with pytest.raises(RuntimeError):
        await root.send_messages("s", "t", 2, [SendMessage(b"nowhere")])
    with pytest.raises(RuntimeError):
        await root.delete_partitions("s", "t", 5)  # more than exist
    still = await root.get_topic("s", "t")
    assert still is not None and still.partitions_count == 2


# ---- users ------------------------------------------------------------------------------------


READER = Permissions(
    GlobalPermissions(read_streams=True, poll_messages=True),
    streams={0: StreamPermissions(send_messages=True)},
)


async def test_sdk09_given_new_user_when_created_should_be_readable_and_log_in(
    server: ServerProcess, root: IggyClient
) -> None:
    await make_topic(root, "s", "t")
    created = await root.create_user("alice", "secret123", UserStatus.Active, READER)
    assert (created.id, created.username, created.status) == (1, "alice", UserStatus.Active)
    assert created.permissions == READER
    for ident in ("alice", 1):
        got = await root.get_user(ident)
        assert got is not None
        assert (got.id, got.username, got.status) == (1, "alice", UserStatus.Active)
        assert got.permissions == READER
    users = sorted(await root.get_users(), key=lambda u: u.id)
    assert [(u.id, u.username) for u in users] == [(0, "iggy"), (1, "alice")]
    assert await root.get_user("bob") is None
    with pytest.raises(RuntimeError, match="already exists"):
        await root.create_user("alice", "other-pass")

    alice = await connect(server, "alice", "secret123")
    assert [s.name for s in await alice.get_streams()] == ["s"]  # read_streams
    await alice.send_messages("s", "t", 0, [SendMessage(b"from-alice")])  # stream 0: send_messages
    assert payloads(await poll(alice, "s", "t", 0, PollingStrategy.First())) == [b"from-alice"]
    with pytest.raises(RuntimeError, match="Unauthorized"):
        await alice.create_stream("not-allowed")
    assert await root.get_stream("not-allowed") is None


async def test_sdk09_given_user_when_updated_and_password_changed_should_apply(
    server: ServerProcess, root: IggyClient
) -> None:
    await root.create_user("alice", "secret123", permissions=READER)
    await root.update_user("alice", username="alicia", status=UserStatus.Inactive)
    assert await root.get_user("alice") is None
    alicia = await root.get_user("alicia")
    assert alicia is not None and (alicia.id, alicia.status) == (1, UserStatus.Inactive)
    assert alicia.permissions == READER  # untouched by the update
    with pytest.raises(RuntimeError):
        await connect(server, "alicia", "secret123")  # inactive users cannot log in

    await root.update_user(1, status=UserStatus.Active)
    await root.change_password("alicia", "secret123", "newpass456")
    with pytest.raises(RuntimeError, match="Invalid credentials"):
        await connect(server, "alicia", "secret123")
    user = await connect(server, "alicia", "newpass456")
    # A user may change its own password, given the current one.
    with pytest.raises(RuntimeError, match="Invalid credentials"):
        await user.change_password("alicia", "wrong-current", "another789")
    await user.change_password("alicia", "newpass456", "another789")
    await (await connect(server, "alicia", "another789")).ping()


async def test_sdk09_given_user_when_permissions_updated_and_deleted_should_apply(
    server: ServerProcess, root: IggyClient
) -> None:
    await root.create_user("alice", "secret123")
    none = await root.get_user("alice")
    assert none is not None and none.permissions is None
    alice = await connect(server, "alice", "secret123")
    with pytest.raises(RuntimeError, match="Unauthorized"):
        await alice.create_stream("x")

    managers = Permissions(GlobalPermissions(manage_streams=True, read_streams=True))
    await root.update_permissions("alice", managers)
    got = await root.get_user("alice")
    assert got is not None and got.permissions == managers
    await alice.create_stream("x")  # the running session sees the new permissions
    assert [s.name for s in await root.get_streams()] == ["x"]

    await root.update_permissions("alice", None)
    cleared = await root.get_user("alice")
    assert cleared is not None and cleared.permissions is None
    with pytest.raises(RuntimeError, match="Unauthorized"):
        await alice.create_stream("y")

    await root.delete_user("alice")
    assert await root.get_user("alice") is None
    assert [u.username for u in await root.get_users()] == ["iggy"]
    with pytest.raises(RuntimeError, match="Invalid credentials"):
        await connect(server, "alice", "secret123")
    with pytest.raises(RuntimeError):
        await root.delete_user("iggy")  # root cannot be deleted
    root_user = await root.get_user(0)
    assert root_user is not None and root_user.username == "iggy"


# ---- personal access tokens -------------------------------------------------------------------


def pat_client(server: ServerProcess, token: str) -> IggyClient:
    return IggyClient(tcp_config(server.address, AutoLogin.personal_access_token(token)))


async def test_sdk09_given_pat_when_created_should_list_and_log_in(
    server: ServerProcess, root: IggyClient
) -> None:
    token = await create_pat(root, "ci-token")
    assert len(token) >= 16
    hour_us = 3_600_000_000
    now_us = time.time_ns() // 1000
    await create_pat(root, "hourly", expiry_us=hour_us)
    pats = sorted(await list_pats(root), key=lambda p: p.name)
    assert [p.name for p in pats] == ["ci-token", "hourly"]
    assert pats[0] == PatInfo("ci-token", 0)  # never expires
    assert abs(pats[1].expiry_at_us - (now_us + hour_us)) < 60_000_000
    with pytest.raises(RuntimeError, match="already exists"):
        await create_pat(root, "ci-token")

    client = pat_client(server, token)
    await asyncio.wait_for(client.connect(), WAIT_S)
    await client.create_stream("via-pat")  # logged in as root through the token
    assert [s.name for s in await root.get_streams()] == ["via-pat"]
    with pytest.raises(RuntimeError):
        bad = pat_client(server, "not-a-real-token-xxxxxxxx")
        await bad.connect()
        await bad.get_streams()


async def test_sdk09_given_deleted_pat_when_logging_in_should_fail(
    server: ServerProcess, root: IggyClient
) -> None:
    token = await create_pat(root, "temp")
    await delete_pat(root, "temp")
    assert await list_pats(root) == []
    with pytest.raises(RuntimeError):
        await delete_pat(root, "temp")
    with pytest.raises(RuntimeError):
        client = pat_client(server, token)
        await client.connect()
        await client.get_streams()


# ---- messages ---------------------------------------------------------------------------------


async def test_sdk09_given_sent_messages_when_polled_by_offset_should_return_them_in_order(
    root: IggyClient,
) -> None:
    await make_topic(root, "s", "t", partitions=2)
    sent = await root.send_messages("s", "t", 1, [SendMessage(f"m{i}") for i in range(10)])
    assert [(c.stream_id, c.topic_id, c.partition_id, c.base_offset) for c in sent.confirmations] == [
        (0, 0, 1, 0)
    ]
    got = await poll(root, "s", "t", 1, PollingStrategy.Offset(0))
    assert payloads(got) == [f"m{i}".encode() for i in range(10)]
    assert [m.offset() for m in got] == list(range(10))
    assert all(m.partition_id() == 1 for m in got)
    assert all(m.length() == len(m.payload()) for m in got)
    assert all(m.id() != 0 for m in got)  # the SDK gives id-less messages a random UUID
    assert len({m.id() for m in got}) == 10
    assert await poll(root, "s", "t", 0, PollingStrategy.Offset(0)) == []
    assert [m.offset() for m in await poll(root, "s", "t", 1, PollingStrategy.Offset(7), count=2)] == [7, 8]
    assert await poll(root, "s", "t", 1, PollingStrategy.Offset(10)) == []

    again = await root.send_messages("s", "t", 1, [SendMessage(b"explicit", id=12345)])
    assert [c.base_offset for c in again.confirmations] == [10]
    [explicit] = await poll(root, "s", "t", 1, PollingStrategy.Offset(10))
    assert (explicit.id(), explicit.offset(), explicit.payload()) == (12345, 10, b"explicit")
    topic = await root.get_topic("s", "t")
    assert topic is not None and topic.messages_count == 11
    assert [(p.id, p.messages_count, p.current_offset) for p in topic.partitions] == [(0, 0, 0), (1, 11, 10)]
    with pytest.raises(RuntimeError):
        await poll(root, "s", "t", 7, PollingStrategy.Offset(0))  # no such partition


async def test_sdk09_given_payload_sizes_when_round_tripped_should_be_byte_exact(root: IggyClient) -> None:
    await make_topic(root, "s", "t")
    bodies = [b"\x00", os.urandom(1000), os.urandom(MIB), "ünïcödé".encode()]
    await root.send_messages("s", "t", 0, [SendMessage(b) for b in bodies])
    got = await poll(root, "s", "t", 0, PollingStrategy.Offset(0))
    assert payloads(got) == bodies


async def test_sdk09_given_messages_when_polled_first_last_and_timestamp_should_follow_strategy(
    root: IggyClient,
) -> None:
    await make_topic(root, "s", "t")
    await root.send_messages("s", "t", 0, [SendMessage(b"a"), SendMessage(b"b")])
    [t1] = {m.timestamp() for m in await poll(root, "s", "t", 0, PollingStrategy.Offset(0))}
    await root.send_messages("s", "t", 0, [SendMessage(b"c"), SendMessage(b"d"), SendMessage(b"e")])
    everything = await poll(root, "s", "t", 0, PollingStrategy.Offset(0))
    # One send is one batch, stamped once by the server (section 4.1).
    assert {m.timestamp() for m in everything[:2]} == {t1}
    [t2] = {m.timestamp() for m in everything[2:]}
    assert t2 > t1
    now_us = time.time_ns() // 1000
    assert all(abs(m.timestamp() - now_us) < 60_000_000 for m in everything)
    assert all(m.origin_timestamp() <= m.timestamp() for m in everything)  # same host clock

    assert payloads(await poll(root, "s", "t", 0, PollingStrategy.First(), count=2)) == [b"a", b"b"]
    assert payloads(await poll(root, "s", "t", 0, PollingStrategy.Last(), count=2)) == [b"d", b"e"]
    assert payloads(await poll(root, "s", "t", 0, PollingStrategy.Timestamp(t2))) == [b"c", b"d", b"e"]
    assert len(await poll(root, "s", "t", 0, PollingStrategy.Timestamp(t1))) == 5
    assert await poll(root, "s", "t", 0, PollingStrategy.Timestamp(t2 + 1)) == []


async def test_sdk09_given_auto_commit_when_polling_next_should_resume_after_last_consumed(
    root: IggyClient,
) -> None:
    await make_topic(root, "s", "t")
    await root.send_messages("s", "t", 0, [SendMessage(str(i)) for i in range(5)])
    one = await poll(root, "s", "t", 0, PollingStrategy.Next(), count=2, auto_commit=True)
    two = await poll(root, "s", "t", 0, PollingStrategy.Next(), count=2, auto_commit=True)
    three = await poll(root, "s", "t", 0, PollingStrategy.Next(), count=2, auto_commit=True)
    empty = await poll(root, "s", "t", 0, PollingStrategy.Next(), count=2, auto_commit=True)
    assert payloads(one + two + three) == [b"0", b"1", b"2", b"3", b"4"]
    assert empty == []
    # Without auto-commit, Next does not move.
    assert await poll(root, "s", "t", 0, PollingStrategy.Next(), count=2) == []
    await root.send_messages("s", "t", 0, [SendMessage(b"5")])
    peek = await poll(root, "s", "t", 0, PollingStrategy.Next(), count=2)
    peek2 = await poll(root, "s", "t", 0, PollingStrategy.Next(), count=2)
    assert payloads(peek) == payloads(peek2) == [b"5"]
    # Offsets are per consumer: another one (a string id) starts from the beginning.
    other = Consumer.Single("other-worker")
    fresh = await poll(root, "s", "t", 0, PollingStrategy.Next(), count=3, auto_commit=True, consumer=other)
    assert payloads(fresh) == [b"0", b"1", b"2"]
    assert payloads(await poll(root, "s", "t", 0, PollingStrategy.Next(), count=1)) == [b"5"]


async def test_sdk09_given_stored_consumer_offset_when_get_store_delete_should_round_trip(
    root: IggyClient,
) -> None:
    await make_topic(root, "s", "t", partitions=2)
    await root.send_messages("s", "t", 1, [SendMessage(str(i)) for i in range(10)])
    cid = 7
    consumer = Consumer.Single(cid)
    assert await get_offset(root, cid, "s", "t", 1) is None  # nothing stored yet

    got = await poll(root, "s", "t", 1, PollingStrategy.Next(), count=3, auto_commit=True, consumer=consumer)
    assert payloads(got) == [b"0", b"1", b"2"]
    assert await get_offset(root, cid, "s", "t", 1) == StoredOffset(1, 9, 2)
    assert await get_offset(root, cid, 0, 0, 0) is None  # per partition
    assert await get_offset(root, DEFAULT_CONSUMER_ID, "s", "t", 1) is None  # per consumer

    await store_offset(root, cid, "s", "t", 1, 5)
    assert await get_offset(root, cid, "s", "t", 1) == StoredOffset(1, 9, 5)
    nxt = await poll(root, "s", "t", 1, PollingStrategy.Next(), count=1, consumer=consumer)
    assert payloads(nxt) == [b"6"]
    await store_offset(root, cid, "s", "t", 1, 1)  # an explicit store may move backwards
    nxt = await poll(root, "s", "t", 1, PollingStrategy.Next(), count=1, consumer=consumer)
    assert payloads(nxt) == [b"2"]
    with pytest.raises(RuntimeError):
        await store_offset(root, cid, "s", "t", 1, 100)  # beyond the partition's newest offset
    with pytest.raises(RuntimeError):
        await store_offset(root, cid, "s", "t", 0, 0)  # an empty partition has no offset 0
    assert await get_offset(root, cid, "s", "t", 1) == StoredOffset(1, 9, 1)

    await delete_offset(root, cid, "s", "t", 1)
    assert await get_offset(root, cid, "s", "t", 1) is None
    restart = await poll(root, "s", "t", 1, PollingStrategy.Next(), count=1, consumer=consumer)
    assert payloads(restart) == [b"0"]
    with pytest.raises(RuntimeError):
        await delete_offset(root, cid, "s", "t", 1)  # nothing stored any more


async def test_sdk09_given_user_headers_when_sent_should_round_trip(root: IggyClient) -> None:
    await make_topic(root, "s", "t")
    headers = {
        "k": "v",
        "n": 42,
        "flag": True,
        "raw": b"\x00\x01",
        "ratio": 1.5,
        HeaderKey.String("typed"): HeaderValue.UnsignedInt32(7),
    }
    await root.send_messages("s", "t", 0, [SendMessage(b"with", user_headers=headers), SendMessage(b"none")])
    with_headers, without = await poll(root, "s", "t", 0, PollingStrategy.Offset(0))
    got = with_headers.user_headers()
    assert got is not None
    scalars = {"k": "v", "n": 42, "flag": True, "raw": b"\x00\x01", "ratio": 1.5, "typed": 7}
    assert got.to_scalar_dict() == scalars
    assert got[HeaderKey.String("typed")] == HeaderValue.UnsignedInt32(7)  # the kind survives too
    assert without.user_headers() is None
    assert with_headers.payload() == b"with"


async def test_sdk09_given_balanced_and_key_partitioning_when_sending_should_spread_and_pin(
    root: IggyClient,
) -> None:
    await make_topic(root, "s", "t", partitions=2)
    balanced = [
        await root.send_messages("s", "t", Partitioning.balanced(), [SendMessage(f"b{i}")]) for i in range(4)
    ]
    parts = [r.confirmations[0].partition_id for r in balanced]
    assert sorted(parts) == [0, 0, 1, 1]
    keyed = [
        await root.send_messages("s", "t", Partitioning.messages_key("user-42"), [SendMessage(f"k{i}")])
        for i in range(3)
    ]
    [key_partition] = {r.confirmations[0].partition_id for r in keyed}
    got = await poll(root, "s", "t", key_partition, PollingStrategy.Offset(0))
    assert [p for p in payloads(got) if p.startswith(b"k")] == [b"k0", b"k1", b"k2"]
    await root.send_messages("s", "t", Partitioning.partition_id(1), [SendMessage(b"explicit")])
    assert payloads(await poll(root, "s", "t", 1, PollingStrategy.Last(), count=1)) == [b"explicit"]


async def test_sdk09_given_expiry_and_size_cap_when_sending_should_keep_fresh_messages(
    root: IggyClient,
) -> None:
    await root.create_stream("s")
    await root.create_topic(
        "s",
        "t",
        partitions_count=1,
        message_expiry=IggyExpiry.ExpireDuration(timedelta(minutes=10)),
        max_topic_size=MaxTopicSize.Custom(100 * MIB),
        segment_size=MIB,
    )
    # Well inside both limits: nothing is removed, and the topic reports what it holds.
    await root.send_messages("s", "t", 0, [SendMessage(os.urandom(1000)) for _ in range(50)])
    topic = await root.get_topic("s", "t")
    assert topic is not None
    assert topic.messages_count == 50 and topic.size >= 50_000
    assert isinstance(topic.message_expiry, IggyExpiry.ExpireDuration)
    assert topic.message_expiry.duration == timedelta(minutes=10)
    assert isinstance(topic.max_topic_size, MaxTopicSize.Custom) and topic.max_topic_size.bytes == 100 * MIB
    assert len(await poll(root, "s", "t", 0, PollingStrategy.First(), count=100)) == 50


# ---- consumer groups --------------------------------------------------------------------------


async def test_sdk09_given_consumer_group_commands_when_members_join_and_leave_should_assign(
    server: ServerProcess, root: IggyClient
) -> None:
    await make_topic(root, "g", "t", partitions=3)
    await root.create_consumer_group("g", "t", "grp")
    group = await root.get_consumer_group("g", "t", "grp")
    assert group is not None
    assert (group.id, group.name, group.partitions_count, group.members_count) == (0, "grp", 3, 0)
    assert [(g.id, g.name) for g in await root.get_consumer_groups("g", "t")] == [(0, "grp")]
    with pytest.raises(RuntimeError, match="already exists"):
        await root.create_consumer_group("g", "t", "grp")

    a = await connect(server)
    b = await connect(server)
    await a.join_consumer_group("g", "t", "grp")
    one = await root.get_consumer_group("g", "t", 0)
    assert one is not None and one.members_count == 1
    assert sorted(one.members[0].partitions) == [0, 1, 2]
    await b.join_consumer_group("g", "t", "grp")

    async def split_between_two() -> bool:
        two = await root.get_consumer_group("g", "t", "grp")
        assert two is not None
        owned = [sorted(m.partitions) for m in two.members]
        return two.members_count == 2 and sorted(p for o in owned for p in o) == [0, 1, 2] and all(owned)

    await wait_until(split_between_two, "the two members to split the partitions")
    await a.leave_consumer_group("g", "t", "grp")
    left = await root.get_consumer_group("g", "t", "grp")
    assert left is not None and left.members_count == 1
    assert sorted(left.members[0].partitions) == [0, 1, 2]
    with pytest.raises(RuntimeError):
        await a.leave_consumer_group("g", "t", "grp")  # not a member any more

    await root.delete_consumer_group("g", "t", "grp")
    assert await root.get_consumer_group("g", "t", "grp") is None
    assert await root.get_consumer_groups("g", "t") == []


Received = list[tuple[int, bytes]]


Member = tuple[IggyClient, IggyConsumer, asyncio.Event, "asyncio.Task[None]"]


async def start_member(server: ServerProcess, got: Received) -> Member:
    """A high-level group member on its own connection, consuming into ``got`` until its event is set."""
    client = await connect(server, heartbeat_interval=FAST_HEARTBEAT)
    consumer = await client.consumer_group(
        "workers",
        "g",
        "t",
        polling_strategy=PollingStrategy.Next(),
        batch_length=10,
        auto_commit=AutoCommit.When(AutoCommitWhen.PollingMessages()),
        poll_interval=timedelta(milliseconds=10),
    )

    async def on_message(msg: ReceiveMessage) -> None:
        got.append((msg.partition_id(), msg.payload()))

    stop = asyncio.Event()

    async def consume() -> None:
        await consumer.consume_messages(on_message, stop)

    task = asyncio.create_task(consume())
    return client, consumer, stop, task


async def test_sdk09_given_group_members_when_one_leaves_should_consume_every_message_once(
    server: ServerProcess, root: IggyClient
) -> None:
    await make_topic(root, "g", "t", partitions=4)
    received: list[Received] = [[], [], []]
    members = [await start_member(server, got) for got in received]
    clients = [m[0] for m in members]
    assert members[0][1].name() == "workers"

    async def assigned_to(count: int) -> bool:
        group = await root.get_consumer_group("g", "t", "workers")
        assert group is not None
        owned = [sorted(m.partitions) for m in group.members]
        return (
            group.members_count == count
            and sorted(p for o in owned for p in o) == [0, 1, 2, 3]
            and all(owned)
        )

    await wait_until(lambda: assigned_to(3), "three members to share four partitions")
    first = {f"{p}:{i}".encode() for p in range(4) for i in range(5)}
    for p in range(4):
        await root.send_messages("g", "t", p, [SendMessage(f"{p}:{i}") for i in range(5)])

    async def total_is(n: int) -> bool:
        return sum(len(r) for r in received) >= n

    await wait_until(lambda: total_is(20), "the first 20 messages")
    partitions = [{p for p, _ in r} for r in received]
    assert all(partitions), partitions  # every member had a share
    assert sum(len(p) for p in partitions) == len(set().union(*partitions)) == 4  # disjoint shares

    # The third member stops and leaves; its partitions go to the other two.
    _, _, stop3, task3 = members[2]
    stop3.set()
    await asyncio.wait_for(task3, WAIT_S)
    await clients[2].leave_consumer_group("g", "t", "workers")
    await wait_until(lambda: assigned_to(2), "two members to share four partitions")
    consumed_by_third = len(received[2])
    second = {f"{p}:late".encode() for p in range(4)}
    for p in range(4):
        await root.send_messages("g", "t", p, [SendMessage(f"{p}:late")])
    await wait_until(lambda: total_is(24), "the 4 messages sent after the leave")

    for _, _, stop, task in members[:2]:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)
    everything = [payload for r in received for _, payload in r]
    assert sorted(everything) == sorted(first | second)  # each exactly once
    assert len(received[2]) == consumed_by_third
    late_partitions = {p for r in received[:2] for p, payload in r if payload.endswith(b":late")}
    assert late_partitions == {0, 1, 2, 3}


# ---- server -----------------------------------------------------------------------------------


async def test_sdk09_given_data_when_get_stats_should_count_it(
    server: ServerProcess, root: IggyClient
) -> None:
    await make_topic(root, "a", "t1", partitions=2)
    await root.create_topic("a", "t2", partitions_count=1)
    await make_topic(root, "b", "t", partitions=3)
    await root.send_messages("a", "t1", 0, [SendMessage(b"x" * 100) for _ in range(7)])
    await root.create_consumer_group("b", "t", "grp")
    second = await connect(server)
    await second.ping()
    stats = await root.get_stats()
    assert server.proc is not None and stats.process_id == server.proc.pid
    assert (stats.streams_count, stats.topics_count, stats.partitions_count) == (2, 3, 6)
    assert stats.messages_count == 7
    assert stats.messages_size_bytes >= 700
    assert stats.segments_count >= 6
    assert stats.consumer_groups_count == 1
    assert stats.clients_count >= 2
    assert stats.iggy_server_version
    assert stats.memory_usage > 0 and stats.total_memory >= stats.memory_usage
    assert stats.total_disk_space > 0 and stats.free_disk_space <= stats.total_disk_space
    now_us = time.time_ns() // 1000
    assert now_us - 600_000_000 < stats.start_time <= now_us
    assert stats.run_time >= timedelta(0)


async def test_sdk09_given_restart_when_reconnecting_should_find_all_data(
    tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    srv = server_factory(tmp_path / "data").start()
    client = await connect(srv)
    await client.create_stream("keep")
    await client.create_topic(
        "keep",
        "t",
        partitions_count=2,
        compression_algorithm="gzip",
        message_expiry=IggyExpiry.ExpireDuration(timedelta(days=1)),
    )
    for p in (0, 1):
        await client.send_messages("keep", "t", p, [SendMessage(f"p{p}-{i}") for i in range(50)])
    await poll(client, "keep", "t", 1, PollingStrategy.Next(), count=20, auto_commit=True)
    await store_offset(client, 9, "keep", "t", 0, 33)
    before = await poll(client, "keep", "t", 0, PollingStrategy.Offset(0))
    assert srv.stop() == 0

    srv2 = server_factory(tmp_path / "data").start()
    assert "2 partitions" in srv2.output and "100 messages" in srv2.output
    client2 = await connect(srv2)
    stream = await client2.get_stream("keep")
    assert stream is not None and (stream.id, stream.topics_count, stream.messages_count) == (0, 1, 100)
    topic = await client2.get_topic("keep", "t")
    assert topic is not None
    assert (topic.partitions_count, topic.compression_algorithm) == (2, "gzip")
    assert isinstance(topic.message_expiry, IggyExpiry.ExpireDuration)
    assert topic.message_expiry.duration == timedelta(days=1)
    for p in (0, 1):
        got = await poll(client2, "keep", "t", p, PollingStrategy.Offset(0))
        assert payloads(got) == [f"p{p}-{i}".encode() for i in range(50)]
    after = await poll(client2, "keep", "t", 0, PollingStrategy.Offset(0))
    assert [(m.id(), m.offset(), m.timestamp()) for m in after] == [
        (m.id(), m.offset(), m.timestamp()) for m in before
    ]
    # The stored consumer offsets survived too: Next continues after them.
    assert payloads(await poll(client2, "keep", "t", 1, PollingStrategy.Next(), count=1)) == [b"p1-20"]
    assert await get_offset(client2, 9, "keep", "t", 0) == StoredOffset(0, 49, 33)
    sent = await client2.send_messages("keep", "t", 0, [SendMessage(b"after")])
    assert [c.base_offset for c in sent.confirmations] == [50]
    tail = await poll(client2, "keep", "t", 0, PollingStrategy.Offset(50))
    assert [(m.offset(), m.payload()) for m in tail] == [(50, b"after")]
    srv2.stop()

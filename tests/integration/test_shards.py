"""A server of several shard processes (`tidelog serve --shards 2`): ownership, forwarding,
metadata published by shard 0, groups across shards, and the lifecycle of the processes.

Every other server suite also runs against two shards in `make test` (the environment sets
TIDELOG_SYSTEM_SHARDING_CPU_ALLOCATION=2); these tests are about what only shards have.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServerProcess
from tests.crash.test_kill9 import STREAM, TOPIC, Producer, seqs_by_producer
from tests.wireclient import WireClient, wait_until
from tidelog.server.sharding import owner_of, shard_of_client
from tidelog.wire import requests as c
from tidelog.wire.codes import Command
from tidelog.wire.primitives import Consumer
from tidelog.wire.records import ClientDetails, ConsumerGroupDetails, Stats, TopicDetails, decode_record

SHARDS = ("--shards", "2")


@pytest.fixture
def sharded(server_factory: type[ServerProcess], tmp_path: Path) -> Iterator[ServerProcess]:
    srv = server_factory(tmp_path / "data", *SHARDS).start()
    yield srv
    srv.stop()


def shard_of(client: WireClient) -> int:
    me = decode_record(ClientDetails, client.call(c.GetMe()))
    return shard_of_client(me.client.client_id)


def one_on_each_shard(address: str, tries: int = 60) -> tuple[WireClient, WireClient]:
    """Two logged-in connections, one held by each shard (the shards accept in turn from
    one listening socket, so a few tries find both)."""
    found: dict[int, WireClient] = {}
    for _ in range(tries):
        client = WireClient(address)
        client.login()
        shard = shard_of(client)
        if shard in found:
            client.close()
        else:
            found[shard] = client
        if len(found) == 2:
            return found[0], found[1]
    raise AssertionError(f"every connection landed on shard {list(found)}")


def test_shards_given_partitions_owned_by_each_when_used_from_either_shard_should_forward_and_agree(
    sharded: ServerProcess,
) -> None:
    zero, one = one_on_each_shard(sharded.address)
    stream = zero.create_stream("s")
    topic = one.create_topic(stream, "t", 8)
    owners = {owner_of(stream, topic, p, 2) for p in range(8)}
    assert owners == {0, 1}, "the test needs partitions on both shards"
    for p in range(8):
        zero.send(stream, topic, p, [b"zero-%d" % p])
        one.send(stream, topic, p, [b"one-%d" % p, b"one-%d-b" % p])
    for client in (zero, one):
        for p in range(8):
            _, got = client.poll(stream, topic, p, 0, 10)
            assert [m.payload for m in got] == [b"zero-%d" % p, b"one-%d" % p, b"one-%d-b" % p]
            assert [m.offset for m in got] == [0, 1, 2]
    # Figures gathered from both shards: the topic, the stats, the clients.
    details = decode_record(TopicDetails, zero.call(c.GetTopic(stream, topic)))
    assert details.topic.messages_count == 24 and [p.messages_count for p in details.partitions] == [3] * 8
    stats = decode_record(Stats, one.call(c.GetStats()))
    assert (stats.messages_count, stats.partitions_count, stats.clients_count) == (24, 8, 2)
    assert zero.client_count() == one.client_count() == 2
    # Consumer offsets live with the partition: stored through one shard, read through the other.
    zero.call(c.StoreConsumerOffset(Consumer(1, 5), stream, topic, 3, 1))
    reply = one.call(c.GetConsumerOffset(Consumer(1, 5), stream, topic, 3))
    assert int.from_bytes(reply[-8:], "little") == 1
    zero.close()
    one.close()


def test_shards_given_a_client_using_one_partition_of_the_other_shard_should_move_there_and_keep_its_session(
    sharded: ServerProcess,
) -> None:
    zero, one = one_on_each_shard(sharded.address)
    stream = zero.create_stream("moving")
    topic = zero.create_topic(stream, "t", 8)
    theirs = next(p for p in range(8) if owner_of(stream, topic, p, 2) == 1)
    client_id = decode_record(ClientDetails, zero.call(c.GetMe())).client.client_id
    for i in range(10):  # a pinned producer on shard 0, all its sends for shard 1
        zero.send(stream, topic, theirs, [b"m%d" % i])
    assert wait_until(lambda: f"client {client_id} " in sharded.output, 5, 0.05), sharded.output
    assert "moved to shard 1" in sharded.output
    # Same connection, same session: logged in, same client id, every message in order.
    me = decode_record(ClientDetails, zero.call(c.GetMe()))
    assert me.client.client_id == client_id and me.client.user_id == 0
    _, got = zero.poll(stream, topic, theirs, 0, 100)
    assert [m.payload for m in got] == [b"m%d" % i for i in range(10)]
    assert zero.client_count() == 2  # counted once, where it now is
    # Found by its id through either shard, though the id names the shard it left.
    here, there = one_on_each_shard(sharded.address)
    for asker in (here, there, one):
        found = decode_record(ClientDetails, asker.call(c.GetClient(client_id)))
        assert found.client.client_id == client_id
    here.close()
    there.close()
    # Its requests for shard 0's partitions are forwarded back from shard 1.
    ours = next(p for p in range(8) if owner_of(stream, topic, p, 2) == 0)
    zero.send(stream, topic, ours, [b"back"])
    _, got = one.poll(stream, topic, ours, 0, 10)
    assert [m.payload for m in got] == [b"back"]
    zero.close()
    one.close()


def test_shards_given_a_topic_just_created_when_sent_to_at_once_from_every_shard_should_accept(
    sharded: ServerProcess,
) -> None:
    zero, one = one_on_each_shard(sharded.address)
    stream = zero.create_stream("race")
    for round_ in range(10):
        creator, other = (zero, one) if round_ % 2 else (one, zero)
        topic = creator.create_topic(stream, f"t{round_}", 4)
        # Acknowledged: every shard has the topic and its owners have opened its partitions.
        statuses: dict[str, list[int]] = {}

        def send(client: WireClient, name: str, topic: int, statuses: dict[str, list[int]]) -> None:
            statuses[name] = [client.send_status(stream, topic, p, [b"x"]) for p in range(4)]

        threads = [
            threading.Thread(target=send, args=(cl, n, topic, statuses))
            for cl, n in ((creator, "c"), (other, "o"))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert statuses == {"c": [0] * 4, "o": [0] * 4}, round_
    zero.close()
    one.close()


def test_shards_given_group_members_on_both_shards_when_polling_should_split_partitions_and_miss_none(
    sharded: ServerProcess,
) -> None:
    zero, one = one_on_each_shard(sharded.address)
    stream = zero.create_stream("g")
    topic = zero.create_topic(stream, "t", 4)
    zero.call(c.CreateConsumerGroup(stream, topic, "grp"))
    for client in (zero, one):
        client.call(c.JoinConsumerGroup(stream, topic, "grp"))
    group = decode_record(ConsumerGroupDetails, one.call(c.GetConsumerGroup(stream, topic, "grp")))
    assigned = [sorted(m.partitions) for m in group.members]
    assert sorted(p for ps in assigned for p in ps) == [0, 1, 2, 3] and all(assigned)
    for p in range(4):
        zero.send(stream, topic, p, [b"m%d-%d" % (p, i) for i in range(3)])
    seen: list[bytes] = []
    group_consumer = Consumer(2, "grp")
    for _ in range(8):  # each member polls its own partitions in turn, auto-committing
        for client in (zero, one):
            req = c.PollMessages(group_consumer, stream, topic, None, 5, 0, 10, True)
            _, got = _split(client.request(Command.POLL_MESSAGES, req.encode()))
            seen += [m.payload for m in got]
    assert sorted(seen) == sorted(b"m%d-%d" % (p, i) for p in range(4) for i in range(3))
    # A member that leaves: the other gets every partition.
    one.call(c.LeaveConsumerGroup(stream, topic, "grp"))
    group = decode_record(ConsumerGroupDetails, zero.call(c.GetConsumerGroup(stream, topic, "grp")))
    assert [sorted(m.partitions) for m in group.members] == [[0, 1, 2, 3]]
    zero.close()
    one.close()


def _split(reply: tuple[int, bytes]) -> tuple[object, list]:  # type: ignore[type-arg]
    from tests.wireclient import split_poll_reply

    status, payload = reply
    assert status == 0, status
    return split_poll_reply(payload)


def test_shards_given_sigterm_when_serving_should_stop_every_shard_and_exit_0(
    server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    srv = server_factory(tmp_path / "data", *SHARDS).start()
    assert "2 shards" in srv.output and "tidelog shard 1 serving on cpu" in srv.output
    assert srv.stop() == 0
    assert "tidelog shard 0 stopped" in srv.output and "tidelog shard 1 stopped" in srv.output


def test_shards_given_one_shard_killed_under_fsync_always_should_stop_the_server_and_lose_nothing_acked(
    server_factory: type[ServerProcess], tmp_path: Path
) -> None:
    srv = server_factory(tmp_path / "data", *SHARDS, "--fsync", "always").start()
    with WireClient(srv.address) as admin:
        admin.login()
        stream_id = admin.create_stream(STREAM)
        topic_id = admin.create_topic(stream_id, TOPIC, 4)
    team = [
        Producer(producer_id=i, address=srv.address, partitions=[0, 1, 2, 3], seed=7 + i) for i in range(3)
    ]
    for p in team:
        p.start(stream_id, topic_id)
    time.sleep(1.5)
    assert srv.proc is not None
    children = [
        int(pid) for pid in Path(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children").read_text().split()
    ]
    assert len(children) == 2
    os.kill(children[1], signal.SIGKILL)
    assert srv.proc.wait(20) != 0  # the server stops: never half-alive
    for p in team:
        p.join()
        # A send to the dead shard's partitions, through the live one, gets an error status
        # (1) and the close; it was not acknowledged, so it may or may not be stored.
        assert p.failure in (None, "send answered 1"), f"producer {p.producer_id}: {p.failure}\n{srv.output}"
    assert "was killed by signal 9 while serving; stopping every shard" in srv.output
    again = server_factory(srv.data_dir, *SHARDS, "--fsync", "always").start()
    with WireClient(again.address) as client:
        client.login()
        for partition in range(4):
            stored = seqs_by_producer(client.poll_all(stream_id, topic_id, partition))
            for p in team:
                acked, maybe = p.sent_on(partition)
                kept = stored.get(p.producer_id, [])
                assert kept[: len(acked)] == acked, f"partition {partition} lost acknowledged messages"
                assert set(kept[len(acked) :]) <= set(maybe)
    assert again.stop() == 0

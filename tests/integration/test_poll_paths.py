"""Poll replies built from every source: journal memory, the tail cache, and segment files
sent with os.sendfile (including the fall back to reads when the socket buffer fills)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import ServerProcess
from tests.wireclient import WireClient, verify_stored

# No tail cache and small segments: every written batch is read back from disk, and a poll
# spans several segment files.
DISK_ONLY = """
[system]
segment_size_bytes = 1048576
partition_cache_bytes = 0
[durability]
flush_messages = 1
"""


def test_poll_given_data_only_on_disk_when_polled_in_large_replies_should_return_exact_bytes(
    tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    (tmp_path / "tidelog.toml").write_text(DISK_ONLY)
    srv = server_factory(tmp_path / "data", "--config", str(tmp_path / "tidelog.toml")).start()
    payloads = [os.urandom(900 + i % 300) for i in range(8000)]  # ~8.5 MB over ~9 segments
    with WireClient(srv.address) as client:
        client.login()
        stream = client.create_stream("s")
        topic = client.create_topic(stream, "t", 1)
        for i in range(0, len(payloads), 500):
            client.send(stream, topic, 0, payloads[i : i + 500])
        # One reply of ~8.5 MB: far more than a socket buffer holds, so sendfile stops part way
        # and the rest must follow through the transport, in order.
        header, messages = client.poll(stream, topic, 0, 0, len(payloads))
        assert header.messages_count == len(messages) == len(payloads)
        verify_stored(messages, 0)
        assert [m.payload for m in messages] == payloads
        # Replies that start and end inside segments.
        for start, count in ((0, 1), (777, 1500), (7999, 5), (3001, 2999)):
            _, part = client.poll(stream, topic, 0, start, count)
            assert [m.payload for m in part] == payloads[start : start + count]
            verify_stored(part, start)
    assert len(list((tmp_path / "data").glob("streams/0/topics/0/partitions/0/*.rlog"))) > 3
    srv.stop()


def test_poll_given_reply_cap_when_count_is_huge_should_return_whole_messages_within_cap(
    tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    (tmp_path / "tidelog.toml").write_text(DISK_ONLY + "[tcp]\nmax_poll_reply_bytes = 100000\n")
    srv = server_factory(tmp_path / "data", "--config", str(tmp_path / "tidelog.toml")).start()
    with WireClient(srv.address) as client:
        client.login()
        stream = client.create_stream("s")
        topic = client.create_topic(stream, "t", 1)
        client.send(stream, topic, 0, [bytes([i % 256]) * 1000 for i in range(500)])
        header, messages = client.poll(stream, topic, 0, 0, 1_000_000)
        # 1064 bytes per stored message: 93 fit in 100,000 bytes.
        assert len(messages) == header.messages_count == 100_000 // 1064
        verify_stored(messages, 0)
        # A single message larger than the cap is still served.
        client.send(stream, topic, 0, [b"x" * 200_000])
        _, big = client.poll(stream, topic, 0, 500, 10)
        assert [m.offset for m in big] == [500]
    srv.stop()

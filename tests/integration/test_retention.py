"""Retention through a real server: the background cleaner enforces expiry and max topic size."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

from apache_iggy import IggyClient, PollingStrategy, SendMessage

from tests.conftest import ServerProcess

CONFIG = """
[system]
segment_size_bytes = 4096
[durability]
flush_messages = 1
[retention]
cleaner_interval_ms = 100
"""


async def _client(srv: ServerProcess) -> IggyClient:
    client = IggyClient(srv.address)
    await client.connect()
    await client.login_user("iggy", "iggy")
    return client


def _segments(data_dir: Path) -> list[Path]:
    return sorted(data_dir.glob("streams/0/topics/0/partitions/0/*.rlog"))


async def _wait_until(predicate, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_retention_given_message_expiry_when_segments_age_should_delete_sealed_ones(
    tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    (tmp_path / "tidelog.toml").write_text(CONFIG)
    srv = server_factory(tmp_path / "data", "--config", str(tmp_path / "tidelog.toml")).start()
    client = await _client(srv)
    await client.create_stream("s")
    await client.create_topic("s", "t", partitions_count=1, message_expiry=timedelta(milliseconds=500))
    for i in range(20):
        await client.send_messages("s", "t", 0, [SendMessage(bytes([65 + i % 26]) * 1000)])
    assert len(_segments(srv.data_dir)) > 3
    await _wait_until(lambda: len(_segments(srv.data_dir)) == 1)
    # 20 messages of 1064 bytes fill five 4-message segments exactly, so every sealed segment
    # expired and only the new, empty active segment is left. Offsets must not restart.
    left = await client.poll_messages("s", "t", 0, PollingStrategy.First(), 100, False)
    assert left == []
    await client.send_messages("s", "t", 0, [SendMessage(b"new")])
    tail = await client.poll_messages("s", "t", 0, PollingStrategy.Last(), 1, False)
    assert [m.offset() for m in tail] == [20]
    srv.stop()


async def test_retention_given_max_topic_size_when_exceeded_should_trim_oldest_segments(
    tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    (tmp_path / "tidelog.toml").write_text(CONFIG)
    srv = server_factory(tmp_path / "data", "--config", str(tmp_path / "tidelog.toml")).start()
    client = await _client(srv)
    await client.create_stream("s")
    await client.create_topic("s", "t", partitions_count=1, max_topic_size=16384)
    for _ in range(40):
        await client.send_messages("s", "t", 0, [SendMessage(b"x" * 1000)])

    def total_size() -> int:
        return sum(p.stat().st_size for p in _segments(srv.data_dir))

    # The cleaner trims while the topic holds >= 90 % of its limit.
    await _wait_until(lambda: total_size() < 16384 * 9 // 10 + 4096)
    first = await client.poll_messages("s", "t", 0, PollingStrategy.First(), 1, False)
    assert first[0].offset() > 0
    last = await client.poll_messages("s", "t", 0, PollingStrategy.Last(), 1, False)
    assert last[0].offset() == 39
    srv.stop()


async def test_retention_given_stored_consumer_offset_when_expired_should_keep_unconsumed_segments(
    tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    (tmp_path / "tidelog.toml").write_text(CONFIG)
    srv = server_factory(tmp_path / "data", "--config", str(tmp_path / "tidelog.toml")).start()
    client = await _client(srv)
    await client.create_stream("s")
    await client.create_topic("s", "t", partitions_count=1, message_expiry=timedelta(milliseconds=300))
    for _ in range(20):
        await client.send_messages("s", "t", 0, [SendMessage(b"y" * 1000)])
    # A consumer has consumed offsets 0 and 1 only: segments past its offset must stay.
    await client.poll_messages("s", "t", 0, PollingStrategy.Offset(0), 2, True)
    await asyncio.sleep(1.0)
    got = await client.poll_messages("s", "t", 0, PollingStrategy.Next(), 100, False)
    assert got and got[0].offset() == 2
    srv.stop()

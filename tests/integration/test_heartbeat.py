"""Heartbeat eviction: with [heartbeat] enabled, a client silent for 1.2 x interval is
disconnected and leaves its consumer groups; any request counts as a sign of life."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import ServerProcess
from tests.wireclient import WireClient, wait_until
from tidelog.wire import requests as c
from tidelog.wire.records import ConsumerGroupDetails, decode_record

CONFIG = """
[heartbeat]
enabled = true
interval_ms = 500
"""


def _members(client: WireClient, stream: int, topic: int) -> int:
    payload = client.call(c.GetConsumerGroup(stream, topic, "g"))
    return decode_record(ConsumerGroupDetails, payload).group.members_count


def test_heartbeat_given_silent_client_when_interval_passes_should_evict_it_and_its_membership(
    tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    (tmp_path / "tidelog.toml").write_text(CONFIG)
    srv = server_factory(tmp_path / "data", "--config", str(tmp_path / "tidelog.toml")).start()
    with WireClient(srv.address) as admin, WireClient(srv.address) as silent, WireClient(srv.address) as busy:
        for client in (admin, silent, busy):
            client.login()
        stream = admin.create_stream("s")
        topic = admin.create_topic(stream, "t", 2)
        admin.call(c.CreateConsumerGroup(stream, topic, "g"))
        silent.call(c.JoinConsumerGroup(stream, topic, "g"))
        busy.call(c.JoinConsumerGroup(stream, topic, "g"))
        assert _members(admin, stream, topic) == 2
        # `busy` keeps sending real work (no pings); `admin` reads; `silent` says nothing.
        # Evicted after 1.2 x 500 ms of silence, found by a check every 500 ms: within 1.1 s.
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            busy.send(stream, topic, 0, [b"work"])
            assert _members(admin, stream, topic) >= 1
            time.sleep(0.05)
        assert silent.is_closed_by_server(wait_s=5)
        assert wait_until(lambda: _members(admin, stream, topic) == 1)
        busy.send(stream, topic, 0, [b"still here"])  # the busy client was never evicted
    srv.stop()


def test_heartbeat_given_default_config_when_client_silent_should_keep_connection(
    server: ServerProcess,
) -> None:
    with WireClient(server.address) as client:
        client.login()
        time.sleep(0.8)
        client.ping()

"""Overload: 20 producers plus clients that never read their poll replies, against a server
with small configured limits. The server's memory must stay within what its configuration
allows, plus a fixed baseline, and nothing acknowledged may be lost.

Memory is read from /proc/<pid>/status. The bound is on RssAnon, the process's anonymous
memory (heap, buffers): file-backed resident pages (the interpreter's libraries, mmapped
segment files) are page cache the kernel can drop, and they are not what a memory bound on
the server promises. VmRSS is reported alongside.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from tests.conftest import ServerProcess
from tests.wireclient import WireClient, verify_stored
from tidelog.wire import framing
from tidelog.wire import requests as c
from tidelog.wire.codes import Command, Status
from tidelog.wire.primitives import Consumer, ConsumerKind, PollingKind

MIB = 1 << 20
PARTITIONS = 4
PRODUCERS = 20
NON_READERS = 10
BATCH_MESSAGES = 200
PAYLOAD = b"o" * 24  # small messages: many index entries per stored byte
# Enough messages that memory growing with stored data (~18 bytes per message measured on the
# code before the defect 7 fix: 3M messages, +54 MiB) cannot hide inside the allowance.
TARGET_MESSAGES = 3_000_000
MAX_LOAD_S = 20.0
SEGMENT_BYTES = 2 * MIB  # segments seal every few seconds
PARTITION_CACHE_BYTES = 2 * MIB
CACHE_BYTES = 8 * MIB
WRITE_BUFFER_HIGH_BYTES = 1 * MIB
MAX_POLL_REPLY_BYTES = 1 * MIB
MAX_UNSYNCED_BYTES = 4 * MIB
INDEX_CACHE_BYTES = 2 * MIB
LIMITS = {
    "TIDELOG_SYSTEM_SEGMENT_SIZE_BYTES": str(SEGMENT_BYTES),
    "TIDELOG_SYSTEM_PARTITION_CACHE_BYTES": str(PARTITION_CACHE_BYTES),
    "TIDELOG_SYSTEM_CACHE_BYTES": str(CACHE_BYTES),
    "TIDELOG_TCP_WRITE_BUFFER_HIGH_BYTES": str(WRITE_BUFFER_HIGH_BYTES),
    "TIDELOG_TCP_MAX_POLL_REPLY_BYTES": str(MAX_POLL_REPLY_BYTES),
    "TIDELOG_DURABILITY_MAX_UNSYNCED_BYTES": str(MAX_UNSYNCED_BYTES),
    "TIDELOG_SYSTEM_INDEX_CACHE_BYTES": str(INDEX_CACHE_BYTES),
}
# Python's allocator keeps freed arenas, objects per connection, the stamping buffers, the
# writer's jobs in flight: a fixed allowance on top of the configured limits, independent of
# how much data is stored.
FIXED_ALLOWANCE_BYTES = 24 * MIB


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def configured_bound_bytes() -> int:
    """What the configuration lets the server hold on top of its idle baseline."""
    cache = min(CACHE_BYTES, PARTITIONS * PARTITION_CACHE_BYTES)
    # A non-reader's replies queue up to the high-water mark, plus the one reply that crossed it.
    per_non_reader = WRITE_BUFFER_HIGH_BYTES + MAX_POLL_REPLY_BYTES
    batch_bytes = BATCH_MESSAGES * (64 + len(PAYLOAD)) + 64
    # Each producer has one batch in flight: its receive buffer and, in the journal until the
    # next flush, the stamped copy (flush_bytes trips at 1 MiB per partition by default).
    journal = PARTITIONS * 1 * MIB
    # The active segment's index entries (16 bytes per message) may stay in memory.
    active_indexes = PARTITIONS * 16 * (SEGMENT_BYTES // (64 + len(PAYLOAD)))
    # Written batches not yet synced stay in memory so a failed sync can rewrite them; the
    # loaded indexes of sealed segments share one LRU.
    held = MAX_UNSYNCED_BYTES + INDEX_CACHE_BYTES
    return (
        cache + NON_READERS * per_non_reader + PRODUCERS * 2 * batch_bytes + journal + active_indexes + held
    )


class Sender(threading.Thread):
    """Sends batches to one partition until told to stop; counts what was acknowledged."""

    def __init__(self, address: str, stream_id: int, topic_id: int, partition: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.client = WireClient(address, timeout_s=30)
        self.client.login()
        self.args = (stream_id, topic_id, partition)
        self.stop = stop
        self.acked = 0
        self.failure: str | None = None

    def run(self) -> None:
        payloads = [PAYLOAD] * BATCH_MESSAGES
        try:
            while not self.stop.is_set():
                status = self.client.send_status(*self.args, payloads)
                if status != Status.OK:
                    self.failure = f"send answered {status}"
                    return
                self.acked += BATCH_MESSAGES
        except OSError as e:
            self.failure = repr(e)
        finally:
            self.client.close()


def start_non_reader(address: str, stream_id: int, topic_id: int, partition: int) -> socket.socket:
    """Log in, then send polls for 1000 messages from offset 0 without ever reading a reply,
    until the server stops reading from us (our send would block)."""
    client = WireClient(address, timeout_s=10)
    client.login()
    sock = client.sock
    poll = c.PollMessages(
        consumer=Consumer(ConsumerKind.CONSUMER, 0),
        stream_id=stream_id,
        topic_id=topic_id,
        partition_id=partition,
        strategy_kind=PollingKind.OFFSET,
        strategy_value=0,
        count=1000,
        auto_commit=False,
    )
    frame = framing.encode_request(Command.POLL_MESSAGES, poll.encode())
    sock.setblocking(False)
    pending = frame * 200
    try:
        sent = sock.send(pending)
        while sent < len(pending):
            sent += sock.send(pending[sent:])
    except BlockingIOError:
        pass
    return sock


def test_overload_given_producers_and_clients_that_never_read_should_keep_memory_within_the_configured_bound(
    tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    srv = server_factory(tmp_path / "data", env=LIMITS).start()
    assert srv.proc is not None
    pid = srv.proc.pid
    with WireClient(srv.address) as admin:
        admin.login()
        stream_id = admin.create_stream("overload")
        topic_id = admin.create_topic(stream_id, "events", PARTITIONS)
        # Something to poll, so the non-readers' replies are full ones.
        for partition in range(PARTITIONS):
            admin.send(stream_id, topic_id, partition, [PAYLOAD * 40] * 1000)
    baseline_kib = memory_kib(pid)["RssAnon"]

    stop = threading.Event()
    senders = [Sender(srv.address, stream_id, topic_id, i % PARTITIONS, stop) for i in range(PRODUCERS)]
    non_readers = [
        start_non_reader(srv.address, stream_id, topic_id, i % PARTITIONS) for i in range(NON_READERS)
    ]
    for s in senders:
        s.start()
    peak = {"RssAnon": 0, "VmRSS": 0}
    deadline = time.monotonic() + MAX_LOAD_S
    while sum(s.acked for s in senders) < TARGET_MESSAGES and time.monotonic() < deadline:
        assert all(s.is_alive() for s in senders), [s.failure for s in senders]
        now = memory_kib(pid)
        peak = {k: max(v, now[k]) for k, v in peak.items()}
        time.sleep(0.05)
    stop.set()
    for s in senders:
        s.join(30)
        assert not s.is_alive(), "a producer hangs"
        assert s.failure is None, s.failure
    now = memory_kib(pid)
    peak = {k: max(v, now[k]) for k, v in peak.items()}
    for sock in non_readers:
        sock.close()

    acked = [0] * PARTITIONS
    for s in senders:
        acked[s.args[2]] += s.acked
    assert sum(acked) > 0
    bound_kib = baseline_kib + (configured_bound_bytes() + FIXED_ALLOWANCE_BYTES) // 1024
    assert peak["RssAnon"] <= bound_kib, (
        f"RssAnon peaked at {peak['RssAnon'] // 1024} MiB (VmRSS {peak['VmRSS'] // 1024} MiB), "
        f"bound {bound_kib // 1024} MiB = idle {baseline_kib // 1024} MiB + configured limits + allowance; "
        f"{sum(acked)} messages acknowledged"
    )

    # Nothing acknowledged is lost: every partition holds the seed batch plus every acked
    # message, contiguous and checksum-valid at its end.
    with WireClient(srv.address) as client:
        client.login()
        for partition in range(PARTITIONS):
            expected = 1000 + acked[partition]
            first = expected - BATCH_MESSAGES
            header, tail = client.poll(stream_id, topic_id, partition, first, 2 * BATCH_MESSAGES)
            assert header.current_offset == expected - 1, (
                f"partition {partition}: {header.current_offset + 1} stored, {expected} acknowledged"
            )
            verify_stored(tail, first)
            assert len(tail) == BATCH_MESSAGES and all(m.payload == PAYLOAD for m in tail)
    assert srv.stop() == 0, srv.output

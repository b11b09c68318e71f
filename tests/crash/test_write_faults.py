"""A real ``tidelog serve`` whose partition writes fail or stall (the faultfs LD_PRELOAD shim, a
small filesystem that fills up): polls serve only what may never change, a failed partition
answers 4006 and recovers once the cause clears, and nothing acknowledged vanishes silently.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerProcess
from tests.faults import FaultPlan
from tests.wireclient import ServerClosed, StoredMessage, WireClient, verify_stored, wait_until
from tidelog.wire.codes import Status

SEGMENT_LOGS = "*/partitions/*/*.rlog"  # not metadata/metadata.log
SEGMENT_INDEXES = "*/partitions/*/*.index"
# (op, path, errno): a full disk on the log, an I/O error on the index, a failing log sync.
FAILURES = {
    "log-enospc": ("write", SEGMENT_LOGS, "ENOSPC"),
    "index-eio": ("write", SEGMENT_INDEXES, "EIO"),
    "log-fsync-eio": ("fsync", SEGMENT_LOGS, "EIO"),
}
UNPERSISTED_RE = re.compile(
    r"^tidelog: stream (\d+) topic (\d+) partition (\d+): offsets (\d+)\.\.(\d+) .*NOT persisted"
)


def _topic(srv: ServerProcess) -> tuple[WireClient, int, int]:
    client = WireClient(srv.address)
    client.login()
    stream_id = client.create_stream("faults")
    topic_id = client.create_topic(stream_id, "events", 1)
    return client, stream_id, topic_id


def _by_offset(messages: list[StoredMessage]) -> dict[int, bytes]:
    return {m.offset: m.payload for m in messages}


def test_server_given_always_and_slow_fdatasync_when_polled_then_killed_should_never_reuse_an_offset(
    tmp_path: Path, server_factory: type[ServerProcess], faults: FaultPlan
) -> None:
    srv = server_factory(tmp_path / "data", "--fsync", "always", env=faults.env()).start()
    client, stream_id, topic_id = _topic(srv)
    client.send(stream_id, topic_id, 0, [b"m.0", b"m.1"])
    faults.delay("fsync", SEGMENT_LOGS, 1500)
    answers: dict[bytes, int | str] = {}

    def send(payload: bytes) -> None:
        try:
            with WireClient(srv.address) as other:
                other.login()
                answers[payload] = other.send_status(stream_id, topic_id, 0, [payload])
        except (ServerClosed, OSError) as e:
            answers[payload] = repr(e)  # the kill

    senders = []
    for payload in (b"a.0", b"b.0"):  # b.0 from another connection while a.0's sync runs
        t = threading.Thread(target=send, args=(payload,), daemon=True)
        t.start()
        senders.append(t)
        time.sleep(0.3)  # ordering only: a.0 reaches the server first
    header, polled = client.poll(stream_id, topic_id, 0, 0, 100)
    seen = _by_offset(polled)
    assert seen, "the synced messages must be served"
    assert header.current_offset == max(seen)  # what is reported is what can be polled
    srv.kill()
    for t in senders:
        t.join(10)
    faults.clear()
    again = server_factory(tmp_path / "data", "--fsync", "always").start()
    with WireClient(again.address) as after:
        after.login()
        after.send(stream_id, topic_id, 0, [b"c.0"])
        stored = _by_offset(after.poll_all(stream_id, topic_id, 0))
    for offset, payload in seen.items():
        assert stored.get(offset) == payload, f"offset {offset} was {payload!r}, now {stored.get(offset)!r}"
    assert again.stop() == 0


@pytest.mark.parametrize("failure", sorted(FAILURES))
@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_server_given_write_or_sync_failure_when_cause_clears_should_answer_4006_then_recover_without_restart(
    tmp_path: Path, server_factory: type[ServerProcess], faults: FaultPlan, fsync: str, failure: str
) -> None:
    env = {
        **faults.env(),
        "TIDELOG_DURABILITY_RETRY_INTERVAL_MS": "50",
        "TIDELOG_DURABILITY_RETRY_MAX_INTERVAL_MS": "200",
    }
    srv = server_factory(tmp_path / "data", "--fsync", fsync, env=env).start()
    client, stream_id, topic_id = _topic(srv)
    acked = [b"before.0"]
    client.send(stream_id, topic_id, 0, acked)
    op, path, errno_name = FAILURES[failure]
    faults.fail(op, path, errno_name)
    statuses: list[int] = []
    deadline = time.monotonic() + 20
    n = 0
    while Status.CANNOT_SAVE_MESSAGES not in statuses[-1:]:
        assert time.monotonic() < deadline, f"never refused: {statuses[-5:]}"
        payload = b"full.%d" % n
        n += 1
        status = client.send_status(stream_id, topic_id, 0, [payload])
        statuses.append(status)
        if status == Status.OK:
            acked.append(payload)  # interval: in memory until the flush fails
    assert set(statuses) <= {Status.OK, Status.CANNOT_SAVE_MESSAGES}
    assert client.send_status(stream_id, topic_id, 0, [b"refused"]) == Status.CANNOT_SAVE_MESSAGES
    faults.clear()
    assert wait_until(lambda: client.send_status(stream_id, topic_id, 0, [b"after.0"]) == Status.OK, 20, 0.05)
    acked.append(b"after.0")
    stored = client.poll_all(stream_id, topic_id, 0)
    verify_stored(stored)
    payloads = [m.payload for m in stored]
    assert b"refused" not in payloads
    assert [p for p in payloads if p in acked] == acked  # every acknowledged one, in order
    client.close()
    assert srv.stop() == 0, srv.output
    again = server_factory(tmp_path / "data", "--fsync", fsync).start()
    with WireClient(again.address) as after:
        after.login()
        assert [m.payload for m in after.poll_all(stream_id, topic_id, 0)] == payloads
    assert again.stop() == 0


def _fill(point: Path, leave_bytes: int) -> Path:
    """A file taking all but `leave_bytes` of the filesystem's free space."""
    filler = point / "filler"
    st = os.statvfs(point)
    size = st.f_bavail * st.f_frsize - leave_bytes
    with open(filler, "wb") as f:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            size -= f.write(chunk[: min(len(chunk), size)])
        os.fsync(f.fileno())
    return filler


def _send_until_refused(client: WireClient, stream_id: int, topic_id: int) -> list[bytes]:
    """Batches of 20 x 1 KiB until the server answers 4006; the payloads acknowledged."""
    acked: list[bytes] = []
    for n in range(10_000):
        batch = [b"m%06d.%02d-" % (n, i) + b"x" * 1024 for i in range(20)]
        status = client.send_status(stream_id, topic_id, 0, batch)
        if status == Status.CANNOT_SAVE_MESSAGES:
            return acked
        assert status == Status.OK, status
        acked.extend(batch)
    raise AssertionError("the filesystem never filled up")


@pytest.mark.parametrize("space_returns", [True, False])
def test_server_given_full_filesystem_under_interval_when_stopped_should_keep_or_name_every_acked_message(
    tmp_path: Path, server_factory: type[ServerProcess], small_fs: Callable[[int], Path], space_returns: bool
) -> None:
    point = small_fs(32)
    data = point / "data"
    env = {
        "TIDELOG_SYSTEM_SEGMENT_SIZE_BYTES": str(256 * 1024),  # rotations while filling up
        "TIDELOG_DURABILITY_RETRY_INTERVAL_MS": "50",
        "TIDELOG_DURABILITY_RETRY_MAX_INTERVAL_MS": "200",
        "TIDELOG_DURABILITY_SHUTDOWN_RETRY_MS": "1000",
    }
    srv = server_factory(data, "--fsync", "interval", env=env).start()
    client, stream_id, topic_id = _topic(srv)
    filler = _fill(point, 2 << 20)
    acked = _send_until_refused(client, stream_id, topic_id)
    assert acked, "nothing was acknowledged before the disk filled"
    named: tuple[int, int] | None = None
    if space_returns:
        filler.unlink()
        more = [b"after-free"]
        assert wait_until(lambda: client.send_status(stream_id, topic_id, 0, more) == Status.OK, 20, 0.05)
        acked += more
        client.close()
        assert srv.stop() == 0, srv.output
    else:
        client.close()
        rc = srv.stop()
        assert rc == 1, srv.output
        found = [UNPERSISTED_RE.search(line) for line in srv.lines]
        matches = [m for m in found if m is not None]
        assert len(matches) == 1, srv.output
        m = matches[0]
        assert (int(m.group(1)), int(m.group(2)), int(m.group(3))) == (stream_id, topic_id, 0)
        named = (int(m.group(4)), int(m.group(5)))
        filler.unlink()
    again = server_factory(data, "--fsync", "interval", env=env).start()
    with WireClient(again.address) as after:
        after.login()
        stored = after.poll_all(stream_id, topic_id, 0)
    verify_stored(stored)
    have = {m.payload for m in stored}
    missing = [i for i, p in enumerate(acked) if p not in have]  # acked[i] was sent as offset i
    if named is None:
        assert missing == []
    else:
        assert all(named[0] <= i <= named[1] for i in missing), (named, missing[:3], missing[-3:])
    assert again.stop() == 0

"""A real filesystem that fills up (tests/faults.py SmallFilesystems: a loop-mounted ext4, else
a size-limited tmpfs), under the default fsync policy (interval), where a send is acknowledged
before its bytes reach the disk.

Promised (README, Durability): once the disk is full, sends are refused with
CANNOT_SAVE_MESSAGES rather than acknowledged and dropped; what was acknowledged is written
when space comes back (the partition retries) and survives SIGTERM + restart; sends succeed
again once space is freed. A shutdown that cannot persist acknowledged data exits non-zero.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ServerProcess
from tests.wireclient import WireClient, verify_stored, wait_until
from tidelog.wire.codes import Status

FS_MB = 64
FREE_LEFT_BYTES = 6 << 20  # a ballast file takes the rest, so filling takes a second
BATCH = 64
FILL_DEADLINE_S = 15.0


def payloads(batch: int) -> list[bytes]:
    return [b"b%d-m%d-" % (batch, i) + b"x" * 1000 for i in range(BATCH)]


class Filler:
    def __init__(self, client: WireClient, stream_id: int, topic_id: int) -> None:
        self.client, self.stream_id, self.topic_id = client, stream_id, topic_id
        self.acked: list[bytes] = []
        self.batches = 0

    def send(self) -> int:
        batch = payloads(self.batches)
        self.batches += 1
        status = self.client.send_status(self.stream_id, self.topic_id, 0, batch)
        if status == Status.OK:
            self.acked.extend(batch)
        return status

    def fill_until_refused(self) -> int:
        """Send until a send is refused; return the refusal's status."""
        deadline = time.monotonic() + FILL_DEADLINE_S
        while time.monotonic() < deadline:
            status = self.send()
            if status != Status.OK:
                return status
        raise AssertionError(
            f"{len(self.acked)} messages acknowledged on a {FS_MB} MB filesystem with "
            f"{FREE_LEFT_BYTES >> 20} MiB free and no send refused in {FILL_DEADLINE_S} s"
        )


def ballast(point: Path) -> Path:
    st = os.statvfs(point)
    path = point / "ballast"
    with open(path, "wb") as f:
        f.write(bytes(st.f_bavail * st.f_frsize - FREE_LEFT_BYTES))
        os.fsync(f.fileno())
    return path


def start_filling(
    small_fs: Callable[[int], Path], server_factory: type[ServerProcess]
) -> tuple[ServerProcess, Path, Filler]:
    point = small_fs(FS_MB)
    weight = ballast(point)
    srv = server_factory(point / "data", "--fsync", "interval").start()
    client = WireClient(srv.address, timeout_s=30)
    client.login()
    stream_id = client.create_stream("full")
    topic_id = client.create_topic(stream_id, "events", 1)
    return srv, weight, Filler(client, stream_id, topic_id)


def stored_payloads(srv: ServerProcess, filler: Filler) -> list[bytes]:
    with WireClient(srv.address) as client:
        client.login()
        stored = client.poll_all(filler.stream_id, filler.topic_id, 0)
    verify_stored(stored)
    return [m.payload for m in stored]


def test_full_disk_given_interval_fsync_when_filled_should_refuse_sends_then_recover_and_keep_every_ack(
    small_fs: Callable[[int], Path], server_factory: type[ServerProcess]
) -> None:
    srv, weight, filler = start_filling(small_fs, server_factory)
    refused = filler.fill_until_refused()
    assert refused == Status.CANNOT_SAVE_MESSAGES, f"a send on a full disk answered {refused}"
    acked_when_full = len(filler.acked)

    weight.unlink()
    assert wait_until(lambda: filler.send() == Status.OK, timeout_s=15, interval_s=0.2), (
        "sends still refused 15 s after space was freed"
    )
    assert len(filler.acked) == acked_when_full + BATCH
    filler.client.close()
    assert srv.stop() == 0, srv.output

    again = server_factory(srv.data_dir).start()
    # Every acknowledged message, in order, and nothing that was refused.
    assert stored_payloads(again, filler) == filler.acked
    assert again.stop() == 0


def test_full_disk_given_interval_fsync_when_stopped_while_full_should_not_lose_acks_silently(
    small_fs: Callable[[int], Path], server_factory: type[ServerProcess]
) -> None:
    srv, weight, filler = start_filling(small_fs, server_factory)
    refused = filler.fill_until_refused()
    assert refused == Status.CANNOT_SAVE_MESSAGES, f"a send on a full disk answered {refused}"
    filler.client.close()
    rc = srv.stop()
    output = srv.output

    weight.unlink()
    again = server_factory(srv.data_dir).start()
    stored = stored_payloads(again, filler)
    assert stored == filler.acked[: len(stored)], "what survived is not a prefix of what was acknowledged"
    if len(stored) < len(filler.acked):
        # Acknowledged data could not be persisted: the shutdown must say so.
        assert rc != 0, f"{len(filler.acked) - len(stored)} acknowledged messages lost, exit 0:\n{output}"
    assert again.stop() == 0

"""A real ``tidelog serve`` killed with SIGKILL mid-traffic, or with its files damaged while
stopped, must come back with every acknowledged message (fsync=always), or at least a
clean, contiguous, checksum-valid prefix (fsync=interval), and keep appending after it.

Payloads name their producer and sequence number (``p{producer}-s{seq}-``), so what the
server returns can be matched against what each producer thread had acknowledged.
"""

from __future__ import annotations

import itertools
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ServerProcess
from tests.wireclient import ServerClosed, StoredMessage, WireClient, verify_stored
from tidelog.storage.integrity import LOG_FORMATS, LogFormat, StoreFormat
from tidelog.wire.batch import INDEX_DTYPE
from tidelog.wire.codes import Status

STREAM, TOPIC = "crash", "events"
PAYLOAD_RE = re.compile(rb"p(\d+)-s(\d+)-")
RECOVERED_RE = re.compile(r"tidelog recovered (\d+) streams, (\d+) topics, (\d+) partitions")
CUT_RE = re.compile(r"cut (\d+) torn bytes")
REBUILT_RE = re.compile(r"rebuilt (\d+) indexes")
KEPT_RE = re.compile(r"tidelog kept torn bytes aside in (.+)$")
# Segments this small rotate every few batches, so kills and damage meet sealed segments.
SMALL_SEGMENTS = {"TIDELOG_SYSTEM_SEGMENT_SIZE_BYTES": "8192"}


def make_payload(producer: int, seq: int, rng: random.Random) -> bytes:
    return b"p%d-s%d-" % (producer, seq) + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))


def producer_seq(message: StoredMessage) -> tuple[int, int]:
    m = PAYLOAD_RE.match(message.payload)
    assert m is not None, f"offset {message.offset}: payload {message.payload[:40]!r} was never sent"
    return int(m.group(1)), int(m.group(2))


@dataclass
class Producer:
    """A thread that sends batches until the server dies, remembering what was acknowledged."""

    producer_id: int
    address: str
    partitions: list[int]
    seed: int
    acked: list[tuple[int, list[int]]] = field(default_factory=list)  # (partition, seqs)
    acked_at_s: list[float] = field(default_factory=list)  # time.monotonic() of each ack, for loss windows
    in_flight: tuple[int, list[int]] | None = None
    failure: str | None = None
    thread: threading.Thread | None = None

    def start(self, stream_id: int, topic_id: int) -> None:
        client = WireClient(self.address, timeout_s=10)
        client.login()
        self.thread = threading.Thread(target=self._run, args=(client, stream_id, topic_id), daemon=True)
        self.thread.start()

    def _run(self, client: WireClient, stream_id: int, topic_id: int) -> None:
        rng = random.Random(self.seed)
        seq = 0
        try:
            while True:
                partition = rng.choice(self.partitions)
                seqs = list(range(seq, seq + rng.randrange(1, 20)))
                payloads = [make_payload(self.producer_id, s, rng) for s in seqs]
                seq += len(seqs)
                # Recorded before the send: a batch the server may have stored without our
                # seeing the reply.
                self.in_flight = (partition, seqs)
                status = client.send_status(stream_id, topic_id, partition, payloads)
                if status == Status.DISCONNECTED:
                    return  # a graceful stop: the server refused the batch and says goodbye
                if status != Status.OK:
                    self.failure = f"send answered {status}"
                    return
                self.acked_at_s.append(time.monotonic())
                self.acked.append((partition, seqs))
                self.in_flight = None
        except (ServerClosed, OSError):
            return  # the kill
        finally:
            client.close()

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(10)
        assert not self.thread.is_alive(), f"producer {self.producer_id} hangs after the kill"

    def sent_on(self, partition: int) -> tuple[list[int], list[int]]:
        """(acknowledged seqs, seqs of the unanswered batch) sent to `partition`, in order."""
        acked = [s for p, seqs in self.acked if p == partition for s in seqs]
        maybe = self.in_flight[1] if self.in_flight and self.in_flight[0] == partition else []
        return acked, maybe


def run_and_kill(
    srv: ServerProcess,
    partitions: int,
    producers: int,
    kill_after_s: float,
    one_partition_each: bool,
    seed: int,
    graceful: bool = False,
) -> tuple[int, int, list[Producer]]:
    with WireClient(srv.address) as admin:
        admin.login()
        stream_id = admin.create_stream(STREAM)
        topic_id = admin.create_topic(stream_id, TOPIC, partitions)
    team = [
        Producer(
            producer_id=i,
            address=srv.address,
            partitions=[i] if one_partition_each else list(range(partitions)),
            seed=seed * 100 + i,
        )
        for i in range(producers)
    ]
    for p in team:
        p.start(stream_id, topic_id)
    time.sleep(kill_after_s)
    if graceful:
        assert srv.stop() == 0, srv.output
    else:
        srv.kill()
    for p in team:
        p.join()
        assert p.failure is None, f"producer {p.producer_id}: {p.failure}"
    assert sum(len(p.acked) for p in team) > 0, "no batch was acknowledged before the kill"
    return stream_id, topic_id, team


def restart(srv: ServerProcess, factory: type[ServerProcess], *args: str) -> ServerProcess:
    again = factory(srv.data_dir, *args, env=srv.env).start()
    assert "Traceback" not in again.output, again.output
    m = RECOVERED_RE.search(again.output)
    assert m is not None, again.output
    return again


def seqs_by_producer(messages: list[StoredMessage]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for message in messages:
        producer, seq = producer_seq(message)
        out.setdefault(producer, []).append(seq)
    return out


def assert_appends_continue(
    client: WireClient, stream_id: int, topic_id: int, partition: int, count: int
) -> None:
    """A batch sent now lands right after the `count` recovered messages."""
    payloads = [b"after-restart-%d-%d" % (partition, i) for i in range(3)]
    client.send(stream_id, topic_id, partition, payloads)
    _, tail = client.poll(stream_id, topic_id, partition, count, 100)
    assert [m.offset for m in tail] == [count, count + 1, count + 2]
    assert [m.payload for m in tail] == payloads
    verify_stored(tail, count)


# ---- kill -9 under fsync=always: nothing acknowledged may be lost --------------------------------


@pytest.mark.parametrize(
    ("seed", "kill_after_s", "env"),
    [(1, 0.3, {}), (2, 0.6, SMALL_SEGMENTS), (3, 0.95, {})],
    ids=["early", "segments-rotating", "late"],
)
def test_kill9_given_fsync_always_when_killed_mid_traffic_should_keep_every_acknowledged_message(
    tmp_path: Path, server_factory: type[ServerProcess], seed: int, kill_after_s: float, env: dict[str, str]
) -> None:
    srv = server_factory(tmp_path / "data", "--fsync", "always", env=env).start()
    jitter = random.Random(seed).uniform(-0.05, 0.05)
    stream_id, topic_id, team = run_and_kill(
        srv,
        partitions=3,
        producers=3,
        kill_after_s=kill_after_s + jitter,
        one_partition_each=False,
        seed=seed,
    )

    again = restart(srv, server_factory, "--fsync", "always")
    with WireClient(again.address) as client:
        client.login()
        for partition in range(3):
            stored = client.poll_all(stream_id, topic_id, partition)
            verify_stored(stored)
            got = seqs_by_producer(stored)
            for p in team:
                acked, maybe = p.sent_on(partition)
                mine = got.pop(p.producer_id, [])
                # Every acknowledged message, in order, once; then at most a prefix of the
                # batch whose reply the kill swallowed.
                assert mine[: len(acked)] == acked, (
                    f"seed {seed}, partition {partition}, producer {p.producer_id}: "
                    f"{len(acked)} acknowledged, stored {len(mine)}"
                )
                extra = mine[len(acked) :]
                assert extra == maybe[: len(extra)], f"seed {seed}: unexpected messages {extra[:5]}..."
            assert not got, f"messages from unknown producers: {sorted(got)}"
            assert_appends_continue(client, stream_id, topic_id, partition, len(stored))


# ---- kill -9 under the default fsync policy: a clean prefix ---------------------------------------


def test_kill9_given_default_fsync_when_killed_mid_traffic_should_recover_a_valid_prefix(
    tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    srv = server_factory(tmp_path / "data").start()
    stream_id, topic_id, team = run_and_kill(
        srv, partitions=2, producers=2, kill_after_s=0.7, one_partition_each=True, seed=7
    )

    again = restart(srv, server_factory)
    with WireClient(again.address) as client:
        client.login()
        for p in team:
            partition = p.partitions[0]
            stored = client.poll_all(stream_id, topic_id, partition)
            verify_stored(stored)
            got = seqs_by_producer(stored)
            assert set(got) <= {p.producer_id}, f"partition {partition} holds other producers' messages"
            acked, maybe = p.sent_on(partition)
            sent = acked + maybe
            mine = got.get(p.producer_id, [])
            assert mine == sent[: len(mine)], f"partition {partition}: not a prefix of what was sent"
            assert_appends_continue(client, stream_id, topic_id, partition, len(stored))


def test_stop_given_fsync_never_when_terminated_mid_traffic_should_keep_every_acknowledged_message(
    tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    """SIGTERM is not a crash: the server flushes and syncs before it exits, whatever the policy."""
    srv = server_factory(tmp_path / "data", "--fsync", "never").start()
    stream_id, topic_id, team = run_and_kill(
        srv, partitions=2, producers=2, kill_after_s=0.5, one_partition_each=False, seed=5, graceful=True
    )

    again = restart(srv, server_factory)
    assert not CUT_RE.search(again.output) and not REBUILT_RE.search(again.output), again.output
    with WireClient(again.address) as client:
        client.login()
        for partition in range(2):
            stored = client.poll_all(stream_id, topic_id, partition)
            verify_stored(stored)
            got = seqs_by_producer(stored)
            for p in team:
                acked, maybe = p.sent_on(partition)
                mine = got.get(p.producer_id, [])
                assert mine[: len(acked)] == acked, f"partition {partition}, producer {p.producer_id}"
                assert mine[len(acked) :] == maybe[: len(mine) - len(acked)]


# ---- files damaged while the server is stopped ----------------------------------------------------
# Over both store formats: 0.9 records (the default) and 0.8 messages. Batches of 4 are sent, so
# in a record log every fourth offset starts a unit.


@pytest.fixture(params=[StoreFormat.RECORDS, StoreFormat.V08], ids=["records", "v08"])
def fmt(request: pytest.FixtureRequest) -> LogFormat:
    return LOG_FORMATS[request.param]


def format_env(fmt: LogFormat, env: dict[str, str] | None = None) -> dict[str, str]:
    return {**(env or {}), "TIDELOG_SYSTEM_STORE_FORMAT": fmt.store_format.value}


@dataclass
class Seeded:
    stream_id: int
    topic_id: int
    payloads: list[bytes]
    partition_dir: Path
    log: bytes
    index: bytes
    ends: list[int]  # end position of every message in the log (from the written index)
    fmt: LogFormat

    @property
    def log_path(self) -> Path:
        return self.partition_dir / self.fmt.name(0)

    @property
    def index_path(self) -> Path:
        return self.partition_dir / "00000000000000000000.index"


def seed_stopped_server(srv: ServerProcess, fmt: LogFormat) -> Seeded:
    rng = random.Random(11)
    payloads = [b"m%d-" % i + b"x" * rng.randrange(0, 200) for i in range(24)]
    with WireClient(srv.address) as client:
        client.login()
        stream_id = client.create_stream(STREAM)
        topic_id = client.create_topic(stream_id, TOPIC, 1)
        for i in range(0, len(payloads), 4):
            client.send(stream_id, topic_id, 0, payloads[i : i + 4])
        stored = client.poll_all(stream_id, topic_id, 0)
        assert [m.payload for m in stored] == payloads
    assert srv.stop() == 0
    [partition_dir] = (srv.data_dir / "streams").glob(f"{stream_id}/topics/{topic_id}/partitions/0")
    seeded = Seeded(stream_id, topic_id, payloads, partition_dir, b"", b"", [], fmt)
    seeded.log = seeded.log_path.read_bytes()
    seeded.index = seeded.index_path.read_bytes()
    seeded.ends = np.frombuffer(seeded.index, dtype=INDEX_DTYPE)["position"].astype(int).tolist()
    assert len(seeded.log) == seeded.ends[-1] and len(seeded.index) == 16 * len(payloads)
    return seeded


def check_restart(
    srv: ServerProcess, factory: type[ServerProcess], seeded: Seeded, intact: int
) -> tuple[ServerProcess, int, int]:
    """Restart, check the first `intact` messages are served, appends continue; return the
    started server and the (cut bytes, rebuilt indexes) its startup line reported."""
    again = restart(srv, factory)
    cut = CUT_RE.search(again.output)
    rebuilt = REBUILT_RE.search(again.output)
    with WireClient(again.address) as client:
        client.login()
        stored = client.poll_all(seeded.stream_id, seeded.topic_id, 0)
        verify_stored(stored)
        assert [m.payload for m in stored] == seeded.payloads[:intact]
        assert_appends_continue(client, seeded.stream_id, seeded.topic_id, 0, intact)
    return again, int(cut.group(1)) if cut else 0, int(rebuilt.group(1)) if rebuilt else 0


def quarantined(srv: ServerProcess) -> list[bytes]:
    out = []
    for line in srv.lines:
        m = KEPT_RE.search(line)
        if m:
            path = Path(m.group(1))
            assert path.is_file(), f"{path} was reported but does not exist"
            out.append(path.read_bytes())
    return out


def assert_stable_after_repair(
    srv: ServerProcess, factory: type[ServerProcess], seeded: Seeded, intact: int
) -> None:
    """Once repaired, a clean restart finds nothing more to cut or rebuild: the files hold the
    `intact` recovered messages plus the 3 appended after the repair."""
    assert srv.stop() == 0
    again = restart(srv, factory)
    assert not CUT_RE.search(again.output) and not REBUILT_RE.search(again.output), again.output
    assert f" {intact + 3} messages from " in again.output, again.output
    assert again.stop() == 0
    assert seeded.index_path.stat().st_size == 16 * (intact + 3)


def test_recovery_given_log_truncated_mid_message_when_restarted_should_cut_keep_aside_and_continue(
    tmp_path: Path, server_factory: type[ServerProcess], fmt: LogFormat
) -> None:
    srv = server_factory(tmp_path / "data", env=format_env(fmt)).start()
    seeded = seed_stopped_server(srv, fmt)
    torn = len(seeded.payloads) // 2  # units before it stay whole (12: a record starts there)
    start = seeded.ends[torn - 1]
    cut_at = start + 40  # inside the header of message `torn` (of its record)
    seeded.log_path.write_bytes(seeded.log[:cut_at])

    again, cut, _ = check_restart(srv, server_factory, seeded, intact=torn)
    assert cut == 40
    assert quarantined(again) == [seeded.log[start:cut_at]]
    assert seeded.index_path.read_bytes()[: 16 * torn] == seeded.index[: 16 * torn]
    assert_stable_after_repair(again, server_factory, seeded, intact=torn)


def test_recovery_given_garbage_appended_to_log_when_restarted_should_cut_exactly_the_garbage(
    tmp_path: Path, server_factory: type[ServerProcess], fmt: LogFormat
) -> None:
    srv = server_factory(tmp_path / "data", env=format_env(fmt)).start()
    seeded = seed_stopped_server(srv, fmt)
    garbage = random.Random(5).randbytes(333)
    seeded.log_path.write_bytes(seeded.log + garbage)

    again, cut, _ = check_restart(srv, server_factory, seeded, intact=len(seeded.payloads))
    assert cut == len(garbage)
    assert quarantined(again) == [garbage]
    assert_stable_after_repair(again, server_factory, seeded, intact=len(seeded.payloads))


@pytest.mark.parametrize("damage", ["deleted", "zeroed", "halved"])
def test_recovery_given_damaged_index_when_restarted_should_rebuild_it_from_the_log(
    tmp_path: Path, server_factory: type[ServerProcess], damage: str, fmt: LogFormat
) -> None:
    srv = server_factory(tmp_path / "data", env=format_env(fmt)).start()
    seeded = seed_stopped_server(srv, fmt)
    if damage == "deleted":
        seeded.index_path.unlink()
    elif damage == "zeroed":
        seeded.index_path.write_bytes(bytes(len(seeded.index)))
    else:
        seeded.index_path.write_bytes(seeded.index[: len(seeded.index) // 2 + 5])

    again, cut, rebuilt = check_restart(srv, server_factory, seeded, intact=len(seeded.payloads))
    assert rebuilt == 1 and cut == 0
    assert quarantined(again) == []
    # The rebuilt index is the one the server had written (plus the 3 appended entries).
    assert again.stop() == 0
    assert seeded.index_path.read_bytes()[: len(seeded.index)] == seeded.index
    assert_stable_after_repair(again, server_factory, seeded, intact=len(seeded.payloads))


def test_recovery_given_sealed_segment_truncated_when_polling_from_the_gap_should_skip_to_what_follows(
    tmp_path: Path, server_factory: type[ServerProcess], fmt: LogFormat
) -> None:
    srv = server_factory(tmp_path / "data", env=format_env(fmt, SMALL_SEGMENTS)).start()
    with WireClient(srv.address) as client:
        client.login()
        stream_id = client.create_stream(STREAM)
        topic_id = client.create_topic(stream_id, TOPIC, 1)
        for i in range(30):
            client.send(stream_id, topic_id, 0, [b"m%d-%d-" % (i, j) + bytes(200) for j in range(4)])
    assert srv.stop() == 0
    [partition_dir] = (srv.data_dir / "streams").glob(f"{stream_id}/topics/{topic_id}/partitions/0")
    logs = sorted(partition_dir.glob(f"*{fmt.suffix}"))
    assert len(logs) > 3
    sealed = logs[1]  # a sealed segment in the middle of the chain
    sealed.write_bytes(sealed.read_bytes()[:1000])
    gap_end = int(logs[2].name[:20])  # first offset after the gap

    again = restart(srv, server_factory)
    assert CUT_RE.search(again.output)
    with WireClient(again.address) as client:
        client.login()
        # Reading across the gap from before it works today ...
        _, everything = client.poll(stream_id, topic_id, 0, 0, 1000)
        offsets = [m.offset for m in everything]
        assert all(m.checksum_ok for m in everything) and offsets[-1] == 119
        gap_start = next(a + 1 for a, b in itertools.pairwise(offsets) if b != a + 1)
        assert offsets[offsets.index(gap_start - 1) + 1] == gap_end
        # ... but a poll that starts inside the gap returns nothing, forever.
        _, after = client.poll(stream_id, topic_id, 0, gap_start, 5)
        assert [m.offset for m in after] == list(range(gap_end, gap_end + 5))

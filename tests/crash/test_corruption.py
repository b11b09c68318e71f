"""Damaged segment files under a real ``tidelog serve``: a poll never serves a message whose
bytes fail verification, a damaged index never makes it serve the wrong bytes or start a
Timestamp poll at the wrong offset, and ``verify_checksums_on_open`` cuts out only the damaged
unit, keeping the rest of its segment.

Each test seeds a server with small segments (so most messages sit in sealed segments),
stops it, damages one file, restarts it and checks what polls return. Every test runs over
both store formats: 0.9 records (the default) and 0.8 messages (`system.store_format`). The
unit that damage costs is a whole record in the first (its frames share one batch checksum
and header), one message in the second; polls are 0.8 here, so a record's bytes reach the
client converted, and the checks are that nothing damaged is converted and served.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import xxhash

from tests.conftest import ServerProcess
from tests.wireclient import WireClient
from tidelog.storage.integrity import LOG_FORMATS, RECORD_LOG, LogFormat, StoreFormat
from tidelog.storage.recovery import QUARANTINE_DIR
from tidelog.storage.segment import index_name, log_name
from tidelog.wire import requests as c
from tidelog.wire.batch import CHECKSUMMED_FROM, INDEX_DTYPE, MESSAGE_HEADER, PAYLOAD_LENGTH_AT
from tidelog.wire.codes import MESSAGE_HEADER_SIZE, POLL_REPLY_HEADER_SIZE, Command, Status
from tidelog.wire.primitives import Consumer, ConsumerKind, PollingKind
from tidelog.wire.v09.batch import BATCH_HEADER_SIZE

STREAM, TOPIC = "damaged", "events"
BATCHES, PER_BATCH = 40, 4
FRAME_PAYLOAD_LENGTH_AT = 36  # 0.9 reference 4.2


@pytest.fixture(params=[StoreFormat.RECORDS, StoreFormat.V08], ids=["records", "v08"])
def fmt(request: pytest.FixtureRequest) -> LogFormat:
    return LOG_FORMATS[request.param]


@pytest.fixture
def small_segments(fmt: LogFormat) -> dict[str, str]:
    return {
        "TIDELOG_SYSTEM_SEGMENT_SIZE_BYTES": "4096",
        "TIDELOG_SYSTEM_STORE_FORMAT": fmt.store_format.value,
    }


@dataclass(frozen=True)
class Message:
    offset: int
    timestamp_us: int
    payload: bytes
    checksum_ok: bool


@dataclass
class Seeded:
    stream_id: int
    topic_id: int
    payloads: list[bytes]  # by offset
    timestamps: list[int]  # by offset, as stored
    partition_dir: Path
    starts: list[int]  # segment start offsets, oldest first
    fmt: LogFormat

    def segment_bytes(self, start: int) -> tuple[Path, Path]:
        return self.partition_dir / log_name(start, self.fmt), self.partition_dir / index_name(start)

    def unit(self, offset: int) -> list[int]:
        """The offsets stored in one unit with `offset`: its record (the messages sharing
        its broker timestamp), or the message alone."""
        if self.fmt is not RECORD_LOG:
            return [offset]
        return [o for o, ts in enumerate(self.timestamps) if ts == self.timestamps[offset]]

    def unit_span(self, offset: int) -> tuple[Path, int, int]:
        """(log path, start, end) of the bytes of the unit holding `offset`."""
        unit = self.unit(offset)
        log, start, _ = self.message_span(unit[0])
        return log, start, self.message_span(unit[-1])[2]

    def payload_length_at(self, offset: int) -> int:
        """Where the message's payload length field lies in its log."""
        _, start, _ = self.message_span(offset)
        if self.fmt is not RECORD_LOG:
            return start + PAYLOAD_LENGTH_AT
        first = self.unit(offset)[0] == offset  # its span holds the record header first
        return start + (BATCH_HEADER_SIZE if first else 0) + FRAME_PAYLOAD_LENGTH_AT

    def index_of(self, start: int) -> np.ndarray:
        return np.frombuffer(self.segment_bytes(start)[1].read_bytes(), dtype=INDEX_DTYPE).copy()

    def message_span(self, offset: int) -> tuple[Path, int, int]:
        """(log path, start, end) of a message's bytes, from the undamaged index."""
        start = max(s for s in self.starts if s <= offset)
        ends = self.index_of(start)["position"].astype(int).tolist()
        i = offset - start
        return self.segment_bytes(start)[0], ends[i - 1] if i else 0, ends[i]


def parse_reply(payload: bytes) -> list[Message]:
    """Every message of a poll reply; asserts the bytes are whole messages back to back (a
    reply that parses into garbage fails here)."""
    count = struct.unpack_from("<I", payload, 12)[0]
    pos, out = POLL_REPLY_HEADER_SIZE, []
    while pos < len(payload):
        assert len(payload) - pos >= MESSAGE_HEADER_SIZE, f"{len(payload) - pos} stray bytes at the end"
        checksum, _, _, offset, timestamp, _, headers, length, reserved = MESSAGE_HEADER.unpack_from(
            payload, pos
        )
        end = pos + MESSAGE_HEADER_SIZE + headers + length
        assert end <= len(payload) and reserved == 0, f"garbage at reply byte {pos}"
        raw = payload[pos:end]
        body = raw[MESSAGE_HEADER_SIZE + headers :]
        out.append(
            Message(offset, timestamp, body, xxhash.xxh3_64_intdigest(raw[CHECKSUMMED_FROM:]) == checksum)
        )
        pos = end
    assert count == len(out), f"reply header says {count} messages, holds {len(out)}"
    return out


def poll(
    client: WireClient, seeded: Seeded, kind: PollingKind, value: int, count: int = 1000
) -> tuple[int, list[Message]]:
    req = c.PollMessages(
        consumer=Consumer(ConsumerKind.CONSUMER, 0),
        stream_id=seeded.stream_id,
        topic_id=seeded.topic_id,
        partition_id=0,
        strategy_kind=kind,
        strategy_value=value,
        count=count,
        auto_commit=False,
    )
    status, payload = client.request(Command.POLL_MESSAGES, req.encode())
    return status, parse_reply(payload) if status == Status.OK else []


def assert_intact(seeded: Seeded, messages: list[Message]) -> None:
    """Each message is exactly what was sent at its offset, and verifies."""
    for m in messages:
        assert m.checksum_ok, f"offset {m.offset}: served with a failing checksum"
        assert m.payload == seeded.payloads[m.offset], f"offset {m.offset}: wrong bytes served"


def seed(srv: ServerProcess, fmt: LogFormat) -> Seeded:
    payloads = [b"m%05d-" % i + bytes([65 + i % 26]) * (60 + i % 50) for i in range(BATCHES * PER_BATCH)]
    with WireClient(srv.address) as client:
        client.login()
        stream_id = client.create_stream(STREAM)
        topic_id = client.create_topic(stream_id, TOPIC, 1)
        for b in range(BATCHES):
            client.send(stream_id, topic_id, 0, payloads[b * PER_BATCH : (b + 1) * PER_BATCH])
        partial = Seeded(stream_id, topic_id, payloads, [], Path(), [], fmt)
        timestamps: list[int] = []
        while len(timestamps) < len(payloads):
            status, got = poll(client, partial, PollingKind.OFFSET, len(timestamps))
            assert status == Status.OK and got
            timestamps += [m.timestamp_us for m in got]
    assert srv.stop() == 0
    [partition_dir] = (srv.data_dir / "streams").glob(f"{stream_id}/topics/{topic_id}/partitions/0")
    starts = sorted(int(p.name[:20]) for p in partition_dir.glob(f"*{fmt.suffix}"))
    assert len(starts) >= 4, f"expected several segments, got {starts}"
    return Seeded(stream_id, topic_id, payloads, timestamps, partition_dir, starts, fmt)


def restart(factory: type[ServerProcess], srv: ServerProcess, env: dict[str, str]) -> ServerProcess:
    again = factory(srv.data_dir, env=env).start()
    assert "Traceback" not in again.output, again.output
    return again


def flip(path: Path, at: int, mask: int = 0x20) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= mask
    path.write_bytes(bytes(data))


def poll_everything(client: WireClient, seeded: Seeded) -> tuple[list[Message], list[int]]:
    """Poll from offset 0 to the end in small polls, stepping over offsets answered with
    INVALID_MESSAGE_CHECKSUM; return (messages, offsets refused)."""
    out: list[Message] = []
    refused: list[int] = []
    offset = 0
    while offset < len(seeded.payloads):
        status, got = poll(client, seeded, PollingKind.OFFSET, offset, 7)
        if status == Status.INVALID_MESSAGE_CHECKSUM:
            refused.append(offset)
            offset += 1
            continue
        assert status == Status.OK, f"offset {offset}: status {status}"
        assert got, f"offset {offset}: nothing returned"
        out += got
        offset = got[-1].offset + 1
    return out, refused


@pytest.fixture
def seeded_server(
    tmp_path: Path, server_factory: type[ServerProcess], fmt: LogFormat, small_segments: dict[str, str]
) -> tuple[ServerProcess, Seeded]:
    srv = server_factory(tmp_path / "data", env=small_segments).start()
    return srv, seed(srv, fmt)


def test_poll_given_flipped_payload_byte_in_sealed_segment_when_polled_should_never_serve_it(
    seeded_server: tuple[ServerProcess, Seeded],
    server_factory: type[ServerProcess],
    small_segments: dict[str, str],
) -> None:
    srv, seeded = seeded_server
    bad = seeded.starts[1] + 2
    unit = seeded.unit(bad)
    log, start, end = seeded.unit_span(bad)
    original = log.read_bytes()[start:end]
    flip(log, seeded.message_span(bad)[2] - 3)
    again = restart(server_factory, srv, small_segments)
    with WireClient(again.address) as client:
        client.login()
        # Over the damaged unit: the valid prefix, never the unit itself.
        status, got = poll(client, seeded, PollingKind.OFFSET, unit[0] - 2, 10)
        assert status == Status.OK
        assert [m.offset for m in got] == [unit[0] - 2, unit[0] - 1]
        assert_intact(seeded, got)
        for offset in unit:
            status, got = poll(client, seeded, PollingKind.OFFSET, offset, 10)
            assert status == Status.INVALID_MESSAGE_CHECKSUM and got == []
        # Everything else is still served, intact.
        messages, refused = poll_everything(client, seeded)
        assert refused == unit
        assert [m.offset for m in messages] == [o for o in range(len(seeded.payloads)) if o not in unit]
        assert_intact(seeded, messages)
    assert again.stop() == 0
    name = log_name(seeded.starts[1], seeded.fmt)
    assert re.search(rf"segment {name}.*offset {unit[0]}\b", again.output), again.output
    quarantine = seeded.partition_dir / QUARANTINE_DIR
    kept = [p.read_bytes() for p in quarantine.iterdir()] if quarantine.is_dir() else []
    assert len(kept) == 1 and kept[0] != original and len(kept[0]) == len(original)


@pytest.mark.parametrize(
    ("segment", "entry"),
    [(1, 3), (1, 5), (-1, 5)],
    ids=["sealed-entry-3", "sealed-entry-5", "active-entry-5"],
)
def test_poll_given_damaged_index_position_when_polled_should_serve_the_right_bytes(
    seeded_server: tuple[ServerProcess, Seeded],
    server_factory: type[ServerProcess],
    small_segments: dict[str, str],
    segment: int,
    entry: int,
) -> None:
    srv, seeded = seeded_server
    start = seeded.starts[segment]
    entries = seeded.index_of(start)
    entries["position"][entry] += 8  # still rising, still inside the log: only the log can tell
    seeded.segment_bytes(start)[1].write_bytes(entries.tobytes())
    again = restart(server_factory, srv, small_segments)
    with WireClient(again.address) as client:
        client.login()
        for first in (start, start + entry - 1, start + entry, start + entry + 1):
            status, got = poll(client, seeded, PollingKind.OFFSET, first, 3)
            assert status in (Status.OK, Status.INVALID_MESSAGE_CHECKSUM)
            assert [m.offset for m in got] == list(range(first, first + len(got)))
            assert_intact(seeded, got)
        messages, refused = poll_everything(client, seeded)
        assert_intact(seeded, messages)
        # The log is intact, so the index can be repaired from it: nothing is refused.
        assert refused == [] and [m.offset for m in messages] == list(range(len(seeded.payloads)))


@pytest.mark.parametrize("damage", ["raised", "lowered"])
def test_poll_given_damaged_index_timestamp_when_polled_by_timestamp_should_start_at_the_right_offset(
    seeded_server: tuple[ServerProcess, Seeded],
    server_factory: type[ServerProcess],
    small_segments: dict[str, str],
    damage: str,
) -> None:
    srv, seeded = seeded_server
    start = seeded.starts[1]
    # The first message of a batch after the segment start: its timestamp is above the one
    # before it, and the rest of its batch shares it.
    first = next(
        o
        for o in range(start + 1, seeded.starts[2] - 1)
        if seeded.timestamps[o] > seeded.timestamps[o - 1]
        and seeded.timestamps[o + 1] == seeded.timestamps[o]
    )
    entries = seeded.index_of(start)
    i = first - start
    if damage == "raised":
        entries["timestamp"][i - 1] = seeded.timestamps[-1] + 10**9  # later than any message
    else:
        entries["timestamp"][i] = seeded.timestamps[first - 1]  # as early as the one before
    seeded.segment_bytes(start)[1].write_bytes(entries.tobytes())
    again = restart(server_factory, srv, small_segments)
    with WireClient(again.address) as client:
        client.login()
        for target in (seeded.timestamps[first], seeded.timestamps[first - 1] + 1):
            status, got = poll(client, seeded, PollingKind.TIMESTAMP, target, 5)
            assert status == Status.OK and got
            assert got[0].offset == first, f"timestamp {target}: started at {got[0].offset}, not {first}"
            assert_intact(seeded, got)
        status, got = poll(client, seeded, PollingKind.TIMESTAMP, seeded.timestamps[start], 2)
        assert status == Status.OK and got[0].offset == seeded.timestamps.index(seeded.timestamps[start])


def test_poll_given_damaged_payload_length_when_polled_should_never_return_garbage(
    seeded_server: tuple[ServerProcess, Seeded],
    server_factory: type[ServerProcess],
    small_segments: dict[str, str],
) -> None:
    srv, seeded = seeded_server
    bad = seeded.starts[1] + 2
    unit = seeded.unit(bad)
    log, _, _ = seeded.message_span(bad)
    at = seeded.payload_length_at(bad)
    data = bytearray(log.read_bytes())
    length = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at, length + 5)
    log.write_bytes(bytes(data))
    again = restart(server_factory, srv, small_segments)
    with WireClient(again.address) as client:
        client.login()
        for first in (seeded.starts[1], bad - 1, bad):
            status, got = poll(client, seeded, PollingKind.OFFSET, first, 10)  # parse_reply checks
            assert status in (Status.OK, Status.INVALID_MESSAGE_CHECKSUM)
            assert not set(unit) & {m.offset for m in got}
            assert_intact(seeded, got)
        assert poll(client, seeded, PollingKind.OFFSET, bad, 10)[0] == Status.INVALID_MESSAGE_CHECKSUM
        messages, refused = poll_everything(client, seeded)
        assert refused == unit
        assert_intact(seeded, messages)


@pytest.mark.parametrize("where", ["sealed", "active"])
def test_recovery_given_one_bad_message_mid_segment_when_verifying_on_open_should_keep_every_other(
    seeded_server: tuple[ServerProcess, Seeded],
    server_factory: type[ServerProcess],
    small_segments: dict[str, str],
    where: str,
) -> None:
    verify_on_open = {**small_segments, "TIDELOG_SYSTEM_VERIFY_CHECKSUMS_ON_OPEN": "true"}
    srv, seeded = seeded_server
    start = seeded.starts[1] if where == "sealed" else seeded.starts[-1]
    end = seeded.starts[2] if where == "sealed" else len(seeded.payloads)
    assert end - start >= 6, "the damaged segment must hold messages after the bad one"
    bad = start + 2
    unit = seeded.unit(bad)
    assert unit[-1] + 1 < end, "the damaged segment must hold units after the bad one"
    log, _, msg_end = seeded.message_span(bad)
    flip(log, msg_end - 3)
    again = restart(server_factory, srv, verify_on_open)
    assert re.search(rf"offsets {unit[0]}\.\.{unit[-1]} are missing", again.output), again.output
    with WireClient(again.address) as client:
        client.login()
        messages, refused = poll_everything(client, seeded)
        assert refused == []
        assert [m.offset for m in messages] == [o for o in range(len(seeded.payloads)) if o not in unit]
        assert_intact(seeded, messages)
        # Appends continue after the last offset; nothing is re-minted.
        client.send(seeded.stream_id, seeded.topic_id, 0, [b"after"])
        status, got = poll(client, seeded, PollingKind.OFFSET, len(seeded.payloads), 5)
        assert status == Status.OK and [(m.offset, m.payload) for m in got] == [
            (len(seeded.payloads), b"after")
        ]
    assert again.stop() == 0
    # The repair is stable: a second start finds nothing more to cut.
    third = restart(server_factory, again, verify_on_open)
    assert not re.search(r"cut \d+ torn bytes", third.output), third.output
    assert third.stop() == 0

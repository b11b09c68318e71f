"""A data directory whose segments are in the other store format (the 0.8 messages an earlier
release wrote, or 0.9 records after a switch to `system.store_format = "0.8"`) opens as it is:
nothing is rewritten, the start-up report's `upgrade` line says what it found, appends go to
a new segment in the configured format, and both protocol generations read every message of
both formats, across the boundary, before and after a further restart."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tests.conftest import ServerProcess
from tests.fixtures.make_store_08 import payloads
from tests.integration.test_v09_server import consumer, make_topic, messages, poll, poll_body, send_body
from tests.wireclient import WireClient
from tests.wireclient09 import Client09
from tidelog.storage.integrity import LOG_FORMATS, StoreFormat
from tidelog.wire import requests as c
from tidelog.wire.codes import Command
from tidelog.wire.v09.batch import parse_records
from tidelog.wire.v09.codes import CommandCode, Operation

STREAM, TOPIC = "s", "t"
SMALL_SEGMENTS = {"TIDELOG_SYSTEM_SEGMENT_SIZE_BYTES": "4096"}


def send08(client: WireClient, payloads: list[bytes], first_id: int) -> None:
    sent = [c.OutgoingMessage(payload=p, id=first_id + i) for i, p in enumerate(payloads)]
    body = c.encode_send_messages(STREAM, TOPIC, c.Partitioning.partition_id(0), sent)
    assert client.request(Command.SEND_MESSAGES, body)[0] == 0


def send_both(srv: ServerProcess, round_no: int, expected: list[tuple[bytes, int]]) -> None:
    """Batches from both generations, interleaved; `expected` gets (payload, id) by offset."""
    with WireClient(srv.address) as old, Client09(srv.address) as new:
        old.login()
        new.login()
        for b in range(20):
            payloads = [b"r%d-08-%d-%d-" % (round_no, b, i) + b"x" * (40 + 7 * i) for i in range(3)]
            send08(old, payloads, 10_000 * round_no + 100 * b + 1)
            expected += [(p, 10_000 * round_no + 100 * b + 1 + i) for i, p in enumerate(payloads)]
            payloads = [b"r%d-09-%d-%d-" % (round_no, b, i) + b"y" * (30 + 5 * i) for i in range(2)]
            new.ok(Operation.SEND_MESSAGES, send_body(STREAM, TOPIC, 0, messages(payloads), 2))
            # `messages` numbers its ids from 1000.
            expected += [(p, 1000 + i) for i, p in enumerate(payloads)]


def read_08(srv: ServerProcess) -> list[tuple[int, bytes, int]]:
    with WireClient(srv.address) as old:
        old.login()
        stored = old.poll_all(STREAM, TOPIC, 0, batch_count=7)
    assert all(m.checksum_ok for m in stored)
    return [(m.offset, bytes(m.payload), m.id) for m in stored]


def read_09(srv: ServerProcess, total: int) -> list[tuple[int, bytes, int]]:
    """Polls of 7 from each next offset (a poll stops where the store format changes);
    `poll` parses the records with every checksum verified."""
    out: list[tuple[int, bytes, int]] = []
    with Client09(srv.address) as new:
        new.login()
        while len(out) < total:
            _, _, got = poll(new, STREAM, TOPIC, 0, strategy=1, value=len(out), count=7)
            assert got, f"nothing at offset {len(out)}"
            out += got
    return out


def digests(paths: list[Path]) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.mark.parametrize(
    ("old", "new"), [(StoreFormat.V08, StoreFormat.RECORDS), (StoreFormat.RECORDS, StoreFormat.V08)]
)
def test_store_given_segments_in_the_other_format_when_restarted_should_keep_them_and_serve_both_generations(
    tmp_path: Path, server_factory: type[ServerProcess], old: StoreFormat, new: StoreFormat
) -> None:
    old_env = {**SMALL_SEGMENTS, "TIDELOG_SYSTEM_STORE_FORMAT": old.value}
    new_env = {**SMALL_SEGMENTS, "TIDELOG_SYSTEM_STORE_FORMAT": new.value}
    srv = server_factory(tmp_path / "data", env=old_env).start()
    with Client09(srv.address) as client:
        client.login()
        make_topic(client, STREAM, TOPIC)
    expected: list[tuple[bytes, int]] = []
    send_both(srv, 1, expected)
    assert srv.stop() == 0
    [partition_dir] = (srv.data_dir / "streams").glob("*/topics/*/partitions/0")
    old_suffix, new_suffix = LOG_FORMATS[old].suffix, LOG_FORMATS[new].suffix
    old_logs = sorted(partition_dir.glob(f"*{old_suffix}"))
    assert len(old_logs) >= 2 and not list(partition_dir.glob(f"*{new_suffix}"))
    before = digests(old_logs)

    again = server_factory(srv.data_dir, env=new_env).start()
    upgrade = f"tidelog upgrade: {len(old_logs)} segments in the {old.value} format"
    assert upgrade in again.output, again.output
    send_both(again, 2, expected)
    want = [(o, p, i) for o, (p, i) in enumerate(expected)]
    assert read_08(again) == want
    assert read_09(again, len(want)) == want
    assert again.stop() == 0
    # Nothing of the old format was rewritten; what came after went to the configured one.
    assert digests(sorted(partition_dir.glob(f"*{old_suffix}"))) == before
    assert list(partition_dir.glob(f"*{new_suffix}"))

    third = server_factory(srv.data_dir, env=new_env).start()
    assert upgrade in third.output, third.output
    assert read_08(third) == want and read_09(third, len(want)) == want
    assert third.stop() == 0


def test_store_given_fresh_data_dir_when_started_should_write_record_segments_and_say_no_upgrade_was_needed(
    server: ServerProcess,
) -> None:
    expected: list[tuple[bytes, int]] = []
    with Client09(server.address) as client:
        client.login()
        make_topic(client, STREAM, TOPIC)
    send_both(server, 1, expected)
    assert "tidelog upgrade: none needed" in server.output
    assert server.stop() == 0
    [partition_dir] = (server.data_dir / "streams").glob("*/topics/*/partitions/0")
    assert [p.name for p in partition_dir.glob("*.rlog")] and not list(partition_dir.glob("*.log"))


FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "store-0.8"


def test_store_given_data_dir_of_the_release_before_when_opened_should_serve_it_to_both_and_survive_a_kill(
    tmp_path: Path, server_factory: type[ServerProcess]
) -> None:
    """The committed fixture was written by the release before the record store (see
    tests/fixtures/make_store_08.py): 60 messages from both generations, consumer 7 at 9."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURE, data)
    old_logs = sorted(data.glob("streams/*/topics/*/partitions/0/*.log"))
    before = digests(old_logs)
    want = [(o, p, i) for o, (p, i) in enumerate(payloads())]
    env = {"TIDELOG_DURABILITY_FSYNC": "always"}  # every acknowledged send survives the kill
    srv = server_factory(data, env=env).start()
    assert f"tidelog upgrade: {len(old_logs)} segments in the 0.8 format" in srv.output, srv.output
    assert " 60 messages from " in srv.output
    reads = [(o, p, i) for o, p, i in read_legacy_08(srv)]
    assert reads == want and read_legacy_09(srv, len(want)) == want
    with Client09(srv.address) as new:
        new.login()
        # The consumer offset stored by the old release: "next" continues after it.
        body = consumer(7) + poll_body("legacy", "events", 0, 5, 0, 2, False)[len(consumer(1)) :]
        reply = new.read(CommandCode.POLL_MESSAGES, body)
        assert [int(o) for r in parse_records(reply[16:]) for o in r.offsets()] == [10, 11]
        new.ok(Operation.SEND_MESSAGES, send_body("legacy", "events", 0, messages([b"new-a", b"new-b"]), 2))
    want += [(60, b"new-a", 1000), (61, b"new-b", 1001)]
    srv.kill()  # no shutdown: what was acknowledged must be in the files already

    again = server_factory(data, env=env).start()
    assert read_legacy_08(again) == want and read_legacy_09(again, len(want)) == want
    assert again.stop() == 0
    assert digests(sorted(data.glob("streams/*/topics/*/partitions/0/*.log"))) == before
    assert list(data.glob("streams/*/topics/*/partitions/0/*.rlog"))


def read_legacy_08(srv: ServerProcess) -> list[tuple[int, bytes, int]]:
    with WireClient(srv.address) as old:
        old.login()
        stored = old.poll_all("legacy", "events", 0, batch_count=7)
    assert all(m.checksum_ok for m in stored)
    return [(m.offset, bytes(m.payload), m.id) for m in stored]


def read_legacy_09(srv: ServerProcess, total: int) -> list[tuple[int, bytes, int]]:
    out: list[tuple[int, bytes, int]] = []
    with Client09(srv.address) as new:
        new.login()
        while len(out) < total:
            _, _, got = poll(new, "legacy", "events", 0, strategy=1, value=len(out), count=7)
            assert got, f"nothing at offset {len(out)}"
            out += got
    return out

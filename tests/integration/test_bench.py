"""``tidelog bench`` against a live server: every mode, the report, the charts, the ceilings."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess
from tidelog.bench.actors import (
    ActorKind,
    ActorSpec,
    LeanWire09,
    Protocol,
    build_poll_frame,
    build_send_frame,
    open_wire,
)
from tidelog.bench.ceilings import measure_ceilings
from tidelog.bench.cli import parse_size_bytes
from tidelog.bench.report import PNG_SIGNATURE, build_report, write_report
from tidelog.bench.runner import (
    BenchError,
    BenchMode,
    BenchParams,
    parse_mode,
    run_benchmark,
    run_phase,
)
from tidelog.client import IggyClient
from tidelog.wire.codes import Status
from tidelog.wire.primitives import Consumer, ConsumerKind
from tidelog.wire.requests import Partitioning
from tidelog.wire.v09.batch import parse_batch
from tidelog.wire.v09.bodies import SendMessages09Header
from tidelog.wire.v09.codes import Operation
from tidelog.wire.v09.header import HEADER_SIZE, RequestHeader

BATCHES = 20
PER_BATCH = 10
REQUIRED_KEYS = {
    "uuid",
    "timestamp",
    "params",
    "hardware",
    "server_stats",
    "group_metrics",
    "individual_metrics",
}


def _run(server: ServerProcess, out: Path, mode: BenchMode, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "message_size": 100,
        "messages_per_batch": PER_BATCH,
        "message_batches": BATCHES,
        "server_address": server.address,
        "command_line": f"tidelog bench {mode.value}",
        "progress": False,
        **extra,
    }
    params = BenchParams(mode=mode, **settings)
    report = build_report(run_benchmark(params, timeout_s=60))
    paths = write_report(report, out)
    assert [p.name for p in paths] == ["report.json", "throughput.png", "latency_distribution.png"]
    for png in paths[1:]:
        assert png.read_bytes()[:8] == PNG_SIGNATURE
    loaded: dict[str, Any] = json.loads((out / "report.json").read_text())
    assert loaded["params"]["protocol"] == params.protocol.value
    return loaded


def _groups(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["summary"]["kind"]: g["summary"] for g in report["group_metrics"]}


def _actors(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [m["summary"] for m in report["individual_metrics"] if m["summary"]["actor_kind"] == kind]


@pytest.mark.parametrize("protocol", list(Protocol))
def test_bench_given_live_server_when_each_mode_runs_should_write_consistent_report_and_charts(
    server: ServerProcess, tmp_path: Path, protocol: Protocol
) -> None:
    produced = BATCHES * PER_BATCH * 2  # two producers (or two prefill writers)
    cases: list[tuple[BenchMode, dict[str, Any]]] = [
        (BenchMode.PINNED_PRODUCER, {"producers": 2}),
        (BenchMode.PINNED_CONSUMER, {"consumers": 2}),
        (BenchMode.PINNED_PRODUCER_AND_CONSUMER, {"producers": 2, "consumers": 2}),
        (BenchMode.BALANCED_PRODUCER, {"producers": 2, "partitions": 3}),
        (BenchMode.BALANCED_CONSUMER_GROUP, {"consumers": 2, "partitions": 3}),
        (
            BenchMode.BALANCED_PRODUCER_AND_CONSUMER_GROUP,
            {"producers": 2, "consumers": 2, "partitions": 3},
        ),
        (BenchMode.END_TO_END, {"producers": 2}),
    ]
    for mode, extra in cases:
        report = _run(server, tmp_path / mode.value, mode, protocol=protocol, **extra)
        assert report.keys() >= REQUIRED_KEYS, mode
        assert report["params"]["protocol"] == protocol.value
        assert report["params"]["benchmark_kind"] == mode.value
        assert report["params"]["bench_command"] == f"tidelog bench {mode.value}"
        assert report["hardware"]["cpu_cores"] >= 1
        # Earlier runs (the other protocol, earlier modes) leave their messages on the server.
        assert report["server_stats"]["messages_count"] >= produced
        groups = _groups(report)
        if mode.has_producers:
            assert groups["producers"]["total_messages"] == produced, mode
            assert all(a["total_messages"] == BATCHES * PER_BATCH for a in _actors(report, "producer"))
        if mode.has_consumers:
            # Pinned: each consumer reads its own stream; groups: the members share the data.
            assert groups["consumers"]["total_messages"] == produced, mode
            assert groups["consumers"]["measured_messages"] == produced, mode
            if mode.pinned:
                assert all(a["total_messages"] == BATCHES * PER_BATCH for a in _actors(report, "consumer"))
        if mode.has_producers and mode.has_consumers:
            aggregate = groups["producers_and_consumers"]
            assert aggregate["total_messages"] == 2 * produced
        if mode == BenchMode.END_TO_END:
            assert groups["producing_consumers"]["total_messages"] == produced
        for summary in groups.values():
            assert summary["total_throughput_messages_per_second"] > 0
            assert 0 < summary["min_latency_ms"] <= summary["p50_latency_ms"] <= summary["max_latency_ms"]
        for group in report["group_metrics"]:
            assert group["avg_throughput_mb_ts"], mode
            assert sum(b["count"] for b in group["latency_distribution"]["bins"]) == sum(
                a["total_message_batches"] for a in _member_summaries(report, group["summary"]["kind"])
            )


def _member_summaries(report: dict[str, Any], group_kind: str) -> list[dict[str, Any]]:
    kinds = {
        "producers": {"producer"},
        "consumers": {"consumer"},
        "producing_consumers": {"producing_consumer"},
        "producers_and_consumers": {"producer", "consumer"},
    }[group_kind]
    return [m["summary"] for m in report["individual_metrics"] if m["summary"]["actor_kind"] in kinds]


def test_bench_given_warmup_and_rate_limit_when_producing_should_exclude_warmup_from_metrics(
    server: ServerProcess, tmp_path: Path
) -> None:
    batch_bytes = PER_BATCH * (64 + 100)
    # 40 batches paced over ~0.6 s; the first 0.25 s are warm-up.
    rate = 40 * batch_bytes / 0.6
    report = _run(
        server,
        tmp_path,
        BenchMode.PINNED_PRODUCER,
        message_batches=40,
        warmup_s=0.25,
        rate_limit_bytes_per_s=rate,
    )
    producers = _groups(report)["producers"]
    assert producers["total_messages"] == 40 * PER_BATCH
    assert 0 < producers["measured_messages"] < producers["total_messages"]
    assert producers["total_throughput_megabytes_per_second"] * 1e6 < rate * 1.25


@pytest.mark.parametrize("protocol", list(Protocol))
def test_bench_given_wrong_password_when_phase_runs_should_fail_without_hanging(
    server: ServerProcess, protocol: Protocol
) -> None:
    spec = ActorSpec(
        protocol=protocol,
        kind=ActorKind.PRODUCER,
        actor_id=1,
        slot=0,
        address=server.address,
        username="iggy",
        password="not-the-password",
        stream_id=0,
        topic_id=0,
        message_size=10,
        messages_per_batch=1,
        message_batches=1,
    )
    with pytest.raises(BenchError, match="producer 1 failed"):
        run_phase([spec], [], timeout_s=20)


def test_bench_cli_given_live_server_when_run_as_subcommand_should_exit_zero_and_write_output(
    server: ServerProcess, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "COLUMNS": "120"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidelog",
            "bench",
            "e2e",
            "--server-address",
            server.address,
            "--messages-per-batch",
            "5",
            "--message-batches",
            "10",
            "--message-size",
            "1KB",
            "--no-progress",
            "--remark",
            "fsync=interval",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "Producing Consumer Results" in done.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["params"]["remark"] == "fsync=interval"
    assert report["params"]["protocol"] == "0.9"  # the default: the current generation
    assert report["params"]["message_size"] == 1000
    assert "--remark fsync=interval" in report["params"]["bench_command"]


def test_ceilings_given_tiny_volume_when_measured_should_return_positive_throughputs(
    tmp_path: Path,
) -> None:
    ceilings = {c.name: c for c in measure_ceilings(tmp_path, 1 << 20)}
    assert set(ceilings) == {
        "loopback_tcp",
        "disk_buffered_fdatasync",
        "disk_o_direct",
        "disk_o_direct_dsync",
    }
    assert ceilings["loopback_tcp"].megabytes_per_second > 0
    assert ceilings["disk_buffered_fdatasync"].megabytes_per_second > 0
    for name in ("disk_o_direct", "disk_o_direct_dsync"):
        # A filesystem without O_DIRECT (tmpfs) reports why instead of a figure.
        assert ceilings[name].megabytes_per_second > 0 or ceilings[name].skipped
    assert not list(tmp_path.iterdir()), "ceiling temp files are removed"


def test_parse_mode_given_aliases_and_names_should_resolve_the_same_mode() -> None:
    assert parse_mode("pp") is parse_mode("pinned-producer") is BenchMode.PINNED_PRODUCER
    assert parse_mode("bpcg") is parse_mode("balanced_producer_and_consumer_group")
    assert parse_mode("e2e") is parse_mode("end-to-end") is BenchMode.END_TO_END
    with pytest.raises(ValueError, match="unknown benchmark mode"):
        parse_mode("pinned-everything")


def test_parse_size_bytes_given_units_should_follow_decimal_and_binary_prefixes() -> None:
    assert parse_size_bytes("1000") == 1000
    assert parse_size_bytes("1GB") == 10**9
    assert parse_size_bytes("1GiB") == 2**30
    assert parse_size_bytes("100MB/s") == 100 * 10**6
    assert parse_size_bytes("1.5 kb") == 1500
    with pytest.raises(ValueError, match="invalid size"):
        parse_size_bytes("lots")


def test_bench_09_frames_given_template_when_renumbered_should_stay_a_valid_send_with_new_number() -> None:
    wire = LeanWire09()
    wire.session = 77
    frame = build_send_frame(wire, 3, 4, Partitioning.partition_id(0), 5, b"x" * 100)
    first = RequestHeader.decode(frame)
    assert first.operation == Operation.SEND_MESSAGES and first.session == 77
    assert first.size == len(frame) and first.request == 0  # stamped before each send
    body = memoryview(frame)[HEADER_SIZE:]
    meta = SendMessages09Header.decode(body)
    batch = parse_batch(body[meta.batch_offset :], meta.messages_count)  # checksums verified
    assert batch.count == 5 and batch.payload(4) == b"x" * 100
    before = bytes(frame)
    wire.renumber(frame)
    assert RequestHeader.decode(frame).request == 1
    # Only the request number (u64 at 168) changed: the body is resent byte for byte.
    assert [i for i in range(len(frame)) if frame[i] != before[i]] == [168]


def test_bench_09_wire_given_live_server_when_sending_and_polling_should_count_the_messages(
    server: ServerProcess,
) -> None:
    async def scenario() -> tuple[int, int, int]:
        client = await IggyClient.connect(server.address, username="iggy", password="iggy")
        stream = await client.create_stream("bench-09-wire")
        topic = await client.create_topic(stream.id, "t", 1)
        await client.close()
        wire = await open_wire(server.address, "iggy", "iggy", Protocol.V09)
        assert isinstance(wire, LeanWire09) and wire.session != 0
        frame = build_send_frame(wire, stream.id, topic.topic.id, Partitioning.partition_id(0), 7, b"p" * 50)
        for _ in range(3):
            wire.renumber(frame)
            assert await wire.call(frame) == Status.OK
        poll = build_poll_frame(wire, Consumer(ConsumerKind.CONSUMER, 1), stream.id, topic.topic.id, 0, 100)
        assert await wire.call(poll.frame) == Status.OK
        partition, _current, count = struct.unpack_from("<IQI", wire.reply)
        wire.close()
        return partition, count, wire.request_number

    partition, count, requests = asyncio.run(scenario())
    assert (partition, count) == (0, 21)
    assert requests == 3  # one per send, none taken by the template


def test_bench_cli_given_protocol_option_should_reach_the_params_and_refuse_unknown() -> None:
    import argparse

    from tidelog.bench.cli import add_bench_parser, params_from_args

    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers())
    args = parser.parse_args(["bench", "pp", "--protocol", "0.8"])
    assert params_from_args(args, ["tidelog"]).protocol is Protocol.V08
    assert params_from_args(parser.parse_args(["bench", "pp"]), ["tidelog"]).protocol is Protocol.V09
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "pp", "--protocol", "0.7"])

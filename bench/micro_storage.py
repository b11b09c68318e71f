"""Micro-benchmark of the partition write path: append N stamped batches, then make them durable.

Each batch is 250 messages of 1000-byte payloads (266,000 bytes with headers), the target
workload's shape. Modes:

* buffered-sync:   BufferedIO, no writer: flushes run inside append (the server before the writer)
* buffered-writer: BufferedIO, flushes on a writer thread
* direct-writer:   DirectIO (.log files O_DIRECT), flushes on a writer thread
* direct-sync:     DirectIO, no writer (reference)

Per run: msg/s over the append loop alone, msg/s including the final flush(fsync=True) (every
message durable), p50/p99 of one append() call (stamping included: checksums of 250
messages), and CPU time per batch: of the calling thread (what the event loop would pay) and
of the whole process (writer thread included). Runs of different modes are interleaved; the
median of the runs is reported. Throughput on a shared 2-core machine is noisy, and buffered
figures depend on how much of the run the page cache absorbs; CPU per batch is steadier.

Data goes to a temporary directory under --dir (default: `.bench-tmp` in the current
directory, i.e. the repository's disk; /tmp may be tmpfs), removed after each run.

    python bench/micro_storage.py --batches 2000 --runs 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tidelog.storage.io import BufferedIO, DirectIO, FileIO
from tidelog.storage.partition import Partition, PartitionConfig
from tidelog.storage.segment import DIRECT_SUFFIXES
from tidelog.storage.writer import Writer
from tidelog.wire.batch import INDEX_ENTRY, MESSAGE_HEADER, Batch, parse_send_batch

MESSAGES_PER_BATCH = 250
PAYLOAD_BYTES = 1000
MODES = ("buffered-sync", "buffered-writer", "direct-writer", "direct-sync")


def make_batches(n: int) -> list[Batch]:
    area, index = bytearray(), bytearray()
    for i in range(MESSAGES_PER_BATCH):
        payload = bytes([i % 251]) * PAYLOAD_BYTES
        area += MESSAGE_HEADER.pack(0, 0, 0, 0, 0, 0, 0, len(payload), 0) + payload
        index += INDEX_ENTRY.pack(0, len(area), 0)
    return [parse_send_batch(index, bytearray(area), MESSAGES_PER_BATCH) for _ in range(n)]


@dataclass
class Run:
    append_msgs_per_s: float
    durable_msgs_per_s: float
    p50_us: float
    p99_us: float
    owner_cpu_us: float  # per batch, calling thread
    process_cpu_us: float  # per batch, all threads


def run_once(mode: str, batches: list[Batch], root: Path, config: PartitionConfig) -> Run:
    io: FileIO = DirectIO(direct_suffixes=DIRECT_SUFFIXES) if mode.startswith("direct") else BufferedIO()
    writer = Writer() if mode.endswith("writer") else None
    directory = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=root))
    try:
        part = Partition.open(directory / "p", 0, config, io, writer=writer)
        random_bytes: Callable[[int], bytes] = os.urandom
        latencies_ns: list[int] = []
        now_us = time.time_ns() // 1000
        clock = time.perf_counter_ns
        owner_cpu0, process_cpu0 = time.thread_time_ns(), time.process_time_ns()
        start = clock()
        for batch in batches:
            t0 = clock()
            part.append(batch, now_us, random_bytes)
            latencies_ns.append(clock() - t0)
        appended = clock()
        part.flush(fsync=True)
        durable = clock()
        owner_cpu = time.thread_time_ns() - owner_cpu0
        process_cpu = time.process_time_ns() - process_cpu0
        part.close()
        messages = len(batches) * MESSAGES_PER_BATCH
        latencies_ns.sort()
        return Run(
            append_msgs_per_s=messages / ((appended - start) / 1e9),
            durable_msgs_per_s=messages / ((durable - start) / 1e9),
            p50_us=latencies_ns[len(latencies_ns) // 2] / 1000,
            p99_us=latencies_ns[min(len(latencies_ns) - 1, len(latencies_ns) * 99 // 100)] / 1000,
            owner_cpu_us=owner_cpu / len(batches) / 1000,
            process_cpu_us=process_cpu / len(batches) / 1000,
        )
    finally:
        if writer is not None:
            writer.close()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(".bench-tmp"))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--flush-bytes", type=int, default=PartitionConfig.flush_bytes)
    parser.add_argument("--flush-messages", type=int, default=PartitionConfig.flush_messages)
    parser.add_argument(
        "--switch-interval-ms", type=float, default=None, help="sys.setswitchinterval (default 5 ms)"
    )
    args = parser.parse_args()
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)

    args.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="micro-storage-", dir=args.dir))
    try:
        modes = list(args.modes)
        if any(m.startswith("direct") for m in modes) and not DirectIO.supported(root):
            print(f"{root}: the filesystem refuses O_DIRECT; skipping direct modes")
            modes = [m for m in modes if not m.startswith("direct")]
        config = PartitionConfig(flush_bytes=args.flush_bytes, flush_messages=args.flush_messages)
        batches = make_batches(args.batches)
        batch_bytes = batches[0].size_bytes
        print(
            f"{args.batches} batches x {MESSAGES_PER_BATCH} msgs x {PAYLOAD_BYTES} B payload "
            f"({batch_bytes} B/batch, {args.batches * batch_bytes / 1e6:.0f} MB/run), {args.runs} runs, "
            f"flush at {config.flush_messages} msgs or {config.flush_bytes} B, "
            f"switch interval {sys.getswitchinterval() * 1000:g} ms"
        )
        results: dict[str, list[Run]] = {m: [] for m in modes}
        for _ in range(args.runs):
            for mode in modes:  # interleaved, so drift in the machine hits every mode alike
                results[mode].append(run_once(mode, batches, root, config))
        print(
            f"{'mode':<16} {'append msg/s':>13} {'GB/s':>6} {'durable msg/s':>14} {'GB/s':>6}"
            f" {'p50 us':>8} {'p99 us':>8} {'owner CPU us/batch':>19} {'all CPU us/batch':>17}"
        )
        for mode, runs in results.items():
            a = statistics.median(r.append_msgs_per_s for r in runs)
            d = statistics.median(r.durable_msgs_per_s for r in runs)
            p50 = statistics.median(r.p50_us for r in runs)
            p99 = statistics.median(r.p99_us for r in runs)
            owner = statistics.median(r.owner_cpu_us for r in runs)
            cpu = statistics.median(r.process_cpu_us for r in runs)
            per_msg = batch_bytes / MESSAGES_PER_BATCH / 1e9
            print(
                f"{mode:<16} {a:>13,.0f} {a * per_msg:>6.2f} {d:>14,.0f} {d * per_msg:>6.2f}"
                f" {p50:>8.0f} {p99:>8.0f} {owner:>19.0f} {cpu:>17.0f}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if args.dir.exists() and not any(args.dir.iterdir()):
            args.dir.rmdir()


if __name__ == "__main__":
    main()

"""``tidelog bench MODE [options]``: argument parsing and the command itself.

Options and defaults follow iggy-bench (``--message-size`` 1000, ``--messages-per-batch``
1000, ``--message-batches`` 1000 or ``--total-data``, ``--warmup-time``, ``--rate-limit``,
``--server-address`` 127.0.0.1:8090, iggy/iggy) with fewer actors by default (1 producer,
1 consumer), since the actors share the machine with the server.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from tidelog.bench.actors import Protocol
from tidelog.bench.runner import MODE_NAMES, BenchError, BenchMode, BenchParams, parse_mode
from tidelog.wire.codes import IggyError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*(?:/s)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "ki": 2**10,
    "kib": 2**10,
    "mi": 2**20,
    "mib": 2**20,
    "gi": 2**30,
    "gib": 2**30,
    "ti": 2**40,
    "tib": 2**40,
}


def parse_size_bytes(text: str) -> int:
    """``"1GB"`` = 10^9, ``"1GiB"`` = 2^30, ``"100MB/s"``, ``"4096"`` -> bytes (as iggy's byte units)."""
    m = _SIZE.match(text)
    if m is None:
        raise ValueError(f"invalid size {text!r} (examples: 1000, 100KB, 1GB, 1GiB)")
    return int(float(m.group(1)) * _SIZE_FACTORS[(m.group(2) or "").lower()])


def _size_arg(text: str) -> int:
    try:
        value = parse_size_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return value


def _duration_arg(text: str) -> float:
    from tidelog.client import parse_duration_s

    try:
        return parse_duration_s(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _mode_arg(text: str) -> BenchMode:
    try:
        return parse_mode(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``bench`` to the ``tidelog`` sub-commands and returns its parser."""
    bench = subparsers.add_parser(
        "bench",
        help="benchmark a running server (iggy-bench modes)",
        description="Benchmark a tidelog / Iggy server over TCP (0.9 or 0.8 framing). Modes: "
        + ", ".join(f"{alias} ({mode.value})" for alias, mode in _aliases()),
    )
    bench.add_argument("mode", type=_mode_arg, metavar="MODE", help="one of " + ", ".join(sorted(MODE_NAMES)))
    workload = bench.add_argument_group("workload")
    workload.add_argument("-m", "--message-size", type=_size_arg, default=1000, help="payload bytes (1000)")
    workload.add_argument(
        "-P", "--messages-per-batch", type=_positive_int, default=1000, help="messages per batch (1000)"
    )
    volume = workload.add_mutually_exclusive_group()
    volume.add_argument(
        "-b", "--message-batches", type=_positive_int, default=None, help="batches per actor (1000)"
    )
    volume.add_argument(
        "-T",
        "--total-data",
        type=_size_arg,
        default=None,
        help="total payload volume, e.g. 1GB, split evenly over the producing actors",
    )
    workload.add_argument("-p", "--producers", type=_positive_int, default=1, help="producers (1)")
    workload.add_argument("-c", "--consumers", type=_positive_int, default=1, help="consumers (1)")
    workload.add_argument("-s", "--streams", type=_positive_int, default=None, help="pinned: one per actor")
    workload.add_argument(
        "-a", "--partitions", type=_positive_int, default=None, help="balanced modes: partitions (24)"
    )
    workload.add_argument("-g", "--consumer-groups", type=_positive_int, default=1, help="groups (1)")
    workload.add_argument(
        "-w", "--warmup-time", type=_duration_arg, default=0.0, help="excluded from metrics, e.g. 1s (0)"
    )
    workload.add_argument(
        "-t", "--sampling-time", type=_duration_arg, default=0.1, help="time-series window (100ms)"
    )
    workload.add_argument(
        "-r", "--rate-limit", type=_size_arg, default=None, help="total send rate per second, e.g. 100MB"
    )
    connection = bench.add_argument_group("server")
    connection.add_argument("--server-address", default="127.0.0.1:8090", help="HOST:PORT (127.0.0.1:8090)")
    connection.add_argument(
        "--protocol",
        type=Protocol,
        choices=list(Protocol),
        default=Protocol.V09,
        help="framing of the measured traffic: 0.9 (VSR, the current generation) or 0.8 (classic)",
    )
    connection.add_argument("-u", "--username", default="iggy")
    connection.add_argument("--password", default="iggy")
    output = bench.add_argument_group("output")
    output.add_argument(
        "-o", "--output", type=Path, default=None, help="write report.json and PNG charts here"
    )
    output.add_argument("--remark", default="", help="free text stored in the report (e.g. 'fsync=always')")
    output.add_argument("--no-progress", action="store_true", help="no progress bar")
    ceilings = bench.add_argument_group("ceilings")
    ceilings.add_argument(
        "--ceilings",
        action="store_true",
        help="also measure loopback TCP and raw disk write throughput, and print ratios to them",
    )
    ceilings.add_argument(
        "--ceiling-dir",
        type=Path,
        default=None,
        help="where the disk ceiling writes its temp file: put it on the server's data disk "
        "(default: the system temp dir)",
    )
    ceilings.add_argument(
        "--ceiling-size", type=_size_arg, default=None, help="volume for the ceilings (the benchmark's)"
    )
    bench.set_defaults(func=cmd_bench)
    return bench


def _aliases() -> list[tuple[str, BenchMode]]:
    from tidelog.bench.runner import MODE_ALIASES

    return list(MODE_ALIASES.items())


def params_from_args(args: argparse.Namespace, argv: list[str] | None = None) -> BenchParams:
    mode: BenchMode = args.mode
    if args.total_data is not None:
        if mode in (BenchMode.PINNED_CONSUMER, BenchMode.BALANCED_CONSUMER_GROUP):
            actors = args.consumers
        else:
            actors = args.producers
        per_batch = args.messages_per_batch * args.message_size
        batches = max(1, -(-args.total_data // (per_batch * actors)))
    else:
        batches = args.message_batches if args.message_batches is not None else 1000
    command = shlex.join(argv if argv is not None else ["tidelog", *sys.argv[1:]])
    return BenchParams(
        mode=mode,
        message_size=args.message_size,
        messages_per_batch=args.messages_per_batch,
        message_batches=batches,
        producers=args.producers,
        consumers=args.consumers,
        streams=args.streams,
        partitions=args.partitions,
        consumer_groups=args.consumer_groups,
        warmup_s=args.warmup_time,
        sampling_s=args.sampling_time,
        rate_limit_bytes_per_s=float(args.rate_limit) if args.rate_limit is not None else None,
        server_address=args.server_address,
        protocol=args.protocol,
        username=args.username,
        password=args.password,
        remark=args.remark,
        command_line=command,
        output_dir=args.output,
        ceilings=args.ceilings,
        ceiling_dir=args.ceiling_dir,
        ceiling_bytes=args.ceiling_size,
        progress=not args.no_progress,
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tidelog.bench.report import build_report, render_console, write_report
    from tidelog.bench.runner import run_benchmark

    console = Console()
    try:
        params = params_from_args(args)
    except ValueError as exc:
        print(f"tidelog bench: {exc}", file=sys.stderr)
        return 2
    console.print(f"[blue]{params.describe()}[/blue]")
    try:
        run = run_benchmark(params, console)
    except (BenchError, IggyError, ConnectionError, OSError) as exc:
        print(f"tidelog bench: {exc}", file=sys.stderr)
        return 1
    report = build_report(run)
    render_console(report, console)
    if params.output_dir is not None:
        paths = write_report(report, params.output_dir)
        console.print("wrote " + ", ".join(str(p) for p in paths))
    return 0

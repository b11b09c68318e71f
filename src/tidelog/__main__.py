"""Command line: ``tidelog serve`` (more sub-commands join as they are built)."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import sys
from pathlib import Path
from typing import Any

from tidelog.bench.cli import add_bench_parser
from tidelog.config import Config, ConfigError, load_config

log = logging.getLogger("tidelog")

EXIT_REFUSED = 3  # the server refused to start (StartupRefused): see the message on stderr
EXIT_UNPERSISTED = 1  # stopped, but some partitions' data could not be written: named on stderr


def _serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.tcp_address is not None:
        overrides["tcp"] = {"address": args.tcp_address}
    if args.fsync is not None:
        overrides["durability"] = {"fsync": args.fsync}
    return overrides


async def _serve(config: Config) -> int:
    from tidelog.server.connection import Connection
    from tidelog.server.dispatch import Dispatcher
    from tidelog.server.dispatch09 import Dispatcher09
    from tidelog.server.limits import ConnectionGate, ConnectionLimits
    from tidelog.server.shard import Shard, StartupRefused, install_signal_handlers

    shard = Shard(config)
    try:
        report = shard.open()
    except StartupRefused as exc:
        # Damaged metadata, or metadata that cannot be written: serving could contradict what
        # was acknowledged. Nothing on disk was changed.
        print(f"tidelog: refusing to start: {exc}", file=sys.stderr, flush=True)
        return EXIT_REFUSED
    dispatcher = Dispatcher(shard)
    dispatcher09 = Dispatcher09(dispatcher)  # the same store, served to 0.9 clients
    gate = ConnectionGate(ConnectionLimits.from_config(config.tcp))  # shared by all connections

    def factory() -> Connection:
        return Connection(
            dispatcher, config.tcp.write_buffer_high_bytes, config.tcp.nodelay, gate, v09_handler=dispatcher09
        )

    stop = asyncio.Event()
    install_signal_handlers(stop)
    await shard.start(factory)
    print(
        f"tidelog recovered {report.streams} streams, {report.topics} topics, "
        f"{report.partitions} partitions, {report.segments} segments, {report.messages} messages "
        f"from {config.data_dir}"
        + (f"; cut {report.truncated_bytes} torn bytes" if report.truncated_bytes else "")
        + (f"; rebuilt {report.rebuilt_indexes} indexes" if report.rebuilt_indexes else "")
        + ("; created root user" if report.root_created else ""),
        flush=True,
    )
    print(f"tidelog upgrade: {report.upgrade_line()}", flush=True)
    for problem in report.problems:
        print(f"tidelog recovery: {problem}", flush=True)
    for path in report.quarantined:
        print(f"tidelog kept torn bytes aside in {path}", flush=True)
    for path in report.orphans:
        print(f"tidelog QUARANTINED data that metadata does not name (nothing deleted): {path}", flush=True)
    print(
        f"tidelog listening on {config.tcp_host}:{shard.bound_port} (fsync={config.durability.fsync})",
        flush=True,
    )
    await stop.wait()
    print("tidelog stopping: flushing partitions", flush=True)
    lost = await shard.stop()
    if lost:
        # Data that could not be written must not vanish silently: name it, and exit non-zero.
        durable_polls = shard.partition_config.durable_polls
        for item in lost:
            print(f"tidelog: {item.describe(durable_polls)}", file=sys.stderr, flush=True)
        print(
            f"tidelog stopped WITHOUT persisting everything ({len(lost)} partitions; see above)",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_UNPERSISTED
    print("tidelog stopped", flush=True)
    return 0


# glibc malloc: M_TRIM_THRESHOLD, M_MMAP_THRESHOLD (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _keep_batch_buffers_in_the_heap() -> None:
    """Batch-sized buffers (a 0.8 poll's read and its conversion, a request copy: a few
    hundred KiB each) come from the heap and are reused instead of being mmapped, zeroed and
    page-faulted afresh each time: glibc otherwise trims the heap top back to the kernel at
    twice the last freed chunk. Measured on 0.8 polls of the record store (docs/benchmarks.md,
    Levers). The memory kept is what the heap reached, released past 256 MiB of free top."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return  # not glibc
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mallopt(_M_TRIM_THRESHOLD, 256 << 20)
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, overrides=_serve_overrides(args))
    except ConfigError as exc:
        print(f"tidelog: {exc}", file=sys.stderr)
        return 2
    _keep_batch_buffers_in_the_heap()
    if args.event_loop == "uvloop":
        import uvloop

        return uvloop.run(_serve(config))
    return asyncio.run(_serve(config))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidelog", description="A persistent message streaming server")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--config", type=Path, default=None, help="TOML configuration file")
    serve.add_argument("--data-dir", type=Path, default=None, help="where data lives (default local_data)")
    serve.add_argument("--tcp-address", default=None, help="HOST:PORT to listen on (default 127.0.0.1:8090)")
    serve.add_argument(
        "--fsync",
        choices=["always", "interval", "never"],
        default=None,
        help="always: fdatasync before every send is acknowledged; interval (default): every "
        "durability.fsync_interval_ms; never: leave it to the kernel",
    )
    serve.add_argument(
        "--event-loop", choices=["uvloop", "asyncio"], default="uvloop", help="event loop (default uvloop)"
    )
    serve.set_defaults(func=cmd_serve)
    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    raise SystemExit(args.func(args))


if __name__ == "__main__":
    main()

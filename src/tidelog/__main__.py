"""Command line: ``tidelog serve`` (more sub-commands join as they are built)."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import sys
from pathlib import Path
from typing import Any

from tidelog.bench.cli import add_bench_parser
from tidelog.config import Config, ConfigError, load_config

log = logging.getLogger("tidelog")

EXIT_REFUSED = 3  # the server refused to start (StartupRefused): see the message on stderr
EXIT_UNPERSISTED = 1  # stopped, but some partitions' data could not be written: named on stderr
EXIT_SHARD_BROKEN = 5  # a shard could no longer follow shard 0's metadata: the server stopped


def _serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.tcp_address is not None:
        overrides["tcp"] = {"address": args.tcp_address}
    if args.fsync is not None:
        overrides["durability"] = {"fsync": args.fsync}
    if args.shards is not None:
        overrides["system"] = {"sharding": {"cpu_allocation": str(args.shards)}}
    return overrides


async def _serve(config: Config) -> int:
    """One process serving everything (one shard)."""
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
    _print_report(report, config, "tidelog")
    print(
        f"tidelog listening on {config.tcp_host}:{shard.bound_port} (fsync={config.durability.fsync})",
        flush=True,
    )
    await stop.wait()
    return await _stop(shard, "tidelog")


def _print_report(report: Any, config: Config, who: str) -> None:
    _print_summary(report, config, who)
    _print_details(report, who)


def _print_summary(report: Any, config: Config, who: str) -> None:
    print(
        f"{who} recovered {report.streams} streams, {report.topics} topics, "
        f"{report.partitions} partitions, {report.segments} segments, {report.messages} messages "
        f"from {config.data_dir}"
        + (f"; cut {report.truncated_bytes} torn bytes" if report.truncated_bytes else "")
        + (f"; rebuilt {report.rebuilt_indexes} indexes" if report.rebuilt_indexes else "")
        + ("; created root user" if report.root_created else ""),
        flush=True,
    )
    print(f"{who} upgrade: {report.upgrade_line()}", flush=True)


def _print_details(report: Any, who: str) -> None:
    for problem in report.problems:
        print(f"{who} recovery: {problem}", flush=True)
    for path in report.quarantined:
        print(f"{who} kept torn bytes aside in {path}", flush=True)
    for path in report.orphans:
        print(f"{who} QUARANTINED data that metadata does not name (nothing deleted): {path}", flush=True)


async def _stop(shard: Any, who: str) -> int:
    print(f"{who} stopping: flushing partitions", flush=True)
    lost = await shard.stop()
    if lost:
        # Data that could not be written must not vanish silently: name it, and exit non-zero.
        durable_polls = shard.partition_config.durable_polls
        for item in lost:
            print(f"tidelog: {item.describe(durable_polls)}", file=sys.stderr, flush=True)
        print(
            f"{who} stopped WITHOUT persisting everything ({len(lost)} partitions; see above)",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_UNPERSISTED
    print(f"{who} stopped", flush=True)
    return 0


async def _serve_shard(config: Config, context: Any) -> int:
    """One shard of several (see server/supervisor.py and server/router.py): shard 0 opens
    the metadata and serves it to the others, which then open the partitions they own."""
    from tidelog.server.bus import BusMethod, BusPeer
    from tidelog.server.connection import Adopted, Connection
    from tidelog.server.dispatch import Dispatcher
    from tidelog.server.dispatch09 import Dispatcher09
    from tidelog.server.limits import ConnectionGate, ConnectionLimits
    from tidelog.server.router import Router
    from tidelog.server.shard import Shard, StartupRefused, install_signal_handlers
    from tidelog.wire.v09.frames import Generation

    me = context.shard_id
    who = f"tidelog shard {me}"
    shard = Shard(config, shard_id=me, shards=context.shards, helper_cpus=context.helper_cpus)
    stop = asyncio.Event()
    install_signal_handlers(stop)
    report = None
    if me == 0:
        try:
            report = shard.open()
        except StartupRefused as exc:
            print(f"tidelog: refusing to start: {exc}", file=sys.stderr, flush=True)
            return EXIT_REFUSED
    router = Router(shard, {})
    broken: list[str] = []

    def fatal(reason: str) -> None:
        broken.append(reason)
        stop.set()

    router.on_fatal = fatal

    def lost(peer: int, reason: str) -> None:
        if not stop.is_set() and not shard.stopping:
            # The supervisor sees the dead shard and stops every shard: nothing to do here.
            log.error("%s lost shard %d: %s", who, peer, reason)

    def serving(peer: int) -> Any:
        return lambda method, body: router.serve(method, body, peer)

    router.peers = {
        peer: BusPeer(peer, sock, serving(peer), lost) for peer, sock in sorted(context.peers.items())
    }
    router.lanes = dict(context.lanes)
    router.start_lanes()
    for peer in router.peers.values():
        await peer.start()
    if me != 0:
        status, snapshot = await router.peers[0].call(BusMethod.SNAPSHOT, b"")
        if status != 0:
            print(f"{who}: shard 0 gave no metadata: {snapshot!r}", file=sys.stderr, flush=True)
            return EXIT_REFUSED
        report = shard.open_replica(snapshot)
    dispatcher = Dispatcher(shard)
    dispatcher09 = Dispatcher09(dispatcher)
    router.handlers.update({Generation.V08: dispatcher, Generation.V09: dispatcher09})
    shard.leave_all_hook = router.leave_all
    gate = ConnectionGate(ConnectionLimits.from_config(config.tcp), context.extra["connections"])

    def factory(adopted: Adopted | None = None) -> Connection:
        conn = Connection(
            router.handler(Generation.V08),
            config.tcp.write_buffer_high_bytes,
            config.tcp.nodelay,
            gate,
            v09_handler=router.handler(Generation.V09),
            adopted=adopted,
            hand_off=router.hand_off,
        )
        if adopted is not None:
            adopted.session.conn = conn  # type: ignore[attr-defined]
        return conn

    loop = asyncio.get_running_loop()
    adoptions: set[asyncio.Task[Any]] = set()

    def adopt(sock: Any, adopted: Adopted) -> None:
        task = loop.create_task(loop.connect_accepted_socket(lambda: factory(adopted), sock=sock))
        adoptions.add(task)
        task.add_done_callback(adoptions.discard)

    router.adopt = adopt
    await shard.start(factory, sock=context.listener)
    assert report is not None
    _print_details(report, "tidelog")  # the supervisor prints the summary of every shard
    print(f"{who} serving on {context.pinned}", flush=True)
    context.say_ready(json.dumps(report.counts()).encode())
    await stop.wait()
    router.adopt = None
    router.stop_lanes()
    code = await _stop(shard, who)
    for peer in router.peers.values():
        await peer.close()
    if broken:
        print(f"{who}: stopped because {broken[0]}", file=sys.stderr, flush=True)
        return EXIT_SHARD_BROKEN
    return code


def _serve_sharded(config: Config, placements: list[Any], event_loop: str) -> int:
    import socket

    from tidelog.server import supervisor
    from tidelog.server.limits import SharedCount

    connections = SharedCount()  # max_connections holds for the whole server
    try:
        listener = socket.create_server((config.tcp_host, config.tcp_port))
    except OSError as exc:
        print(f"tidelog: cannot listen on {config.tcp_host}:{config.tcp_port}: {exc}", file=sys.stderr)
        return 1
    port = listener.getsockname()[1]

    def serve_shard(context: supervisor.ShardContext) -> int:
        _die_with_the_supervisor()
        context.extra["connections"] = connections
        if event_loop == "uvloop":
            import uvloop

            return uvloop.run(_serve_shard(config, context))
        return asyncio.run(_serve_shard(config, context))

    def announce(reports: list[bytes]) -> None:
        from tidelog.server.shard import StartupReport
        from tidelog.server.sharding import oversubscribed

        if oversubscribed(placements):
            cpus = len({p.cpu for p in placements})
            print(f"tidelog: {len(placements)} shards on {cpus} CPUs: some share a CPU", flush=True)

        _print_summary(StartupReport.merged([json.loads(r) for r in reports]), config, "tidelog")
        print(
            f"tidelog listening on {config.tcp_host}:{port} (fsync={config.durability.fsync}, "
            f"{len(placements)} shards)",
            flush=True,
        )

    code = supervisor.run(placements, listener, serve_shard, announce)
    print("tidelog stopped" if code == 0 else f"tidelog stopped (exit {code})", flush=True)
    return code


def _die_with_the_supervisor() -> None:
    """A shard whose supervisor is gone dies with it (kill -9 of the server stops every
    shard at once, as it would a single process) instead of serving on alone."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: as if the whole server were killed
    except (OSError, AttributeError):
        pass


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
    from tidelog.server.sharding import ShardingError, allocate, parse_cpu_allocation, read_topology

    try:
        placements = allocate(parse_cpu_allocation(config.system.sharding.cpu_allocation), read_topology())
    except ShardingError as exc:
        print(f"tidelog: system.sharding.cpu_allocation: {exc}", file=sys.stderr)
        return 2
    if len(placements) > 1:
        return _serve_sharded(config, placements, args.event_loop)
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
    serve.add_argument(
        "--shards",
        type=int,
        default=None,
        help="shard processes, each pinned to one of the first N CPUs (system.sharding.cpu_allocation; "
        "default: one per CPU; 1: a single unpinned process)",
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

"""The supervisor: N shard processes, their CPUs, their bus, their lifecycle.

Everything shared is made before `fork()`: the listening socket (every shard accepts from it,
so connections spread over whichever shards are free), one socketpair per pair of shards (the
bus), and a pipe on which each shard says it is ready. Each child then pins itself to its CPU
(`sched_setaffinity`; memory then comes from that CPU's node, first touch, and is preferred
there where the kernel takes `set_mempolicy`) and runs its own event loop.

SIGINT and SIGTERM are passed to every shard, which stops accepting, flushes, syncs and exits
0. A shard that dies otherwise stops the whole server with a message that names it: the
server never goes on half-alive.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import select
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from tidelog.server.sharding import Placement

EXIT_SHARD_DIED = 4

# set_mempolicy(2) numbers and MPOL_PREFERRED; absent architectures just skip the hint.
_SET_MEMPOLICY = {"x86_64": 238, "aarch64": 237}
_MPOL_PREFERRED = 1


@dataclass
class ShardContext:
    """What a shard process gets from the supervisor."""

    placement: Placement
    shards: int
    listener: socket.socket
    peers: dict[int, socket.socket]  # shard id -> this shard's end of the pair
    lanes: dict[int, socket.socket]  # shard id -> the pair that carries descriptors (handoffs)
    ready_fd: int  # write one byte when serving
    pinned: str = ""  # where the shard runs, for the start-up report
    helper_cpus: frozenset[int] | None = None  # a pinned shard's threads run on these
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def shard_id(self) -> int:
        return self.placement.shard_id

    def say_ready(self, report: bytes) -> None:
        """Tells the supervisor this shard serves, with its start-up figures (one write
        below PIPE_BUF: the shards' messages never interleave)."""
        message = len(report).to_bytes(2, "little") + report
        assert len(message) <= select.PIPE_BUF
        os.write(self.ready_fd, message)
        os.close(self.ready_fd)


def pin(placement: Placement) -> str:
    """Pins this process to its CPU and prefers its node's memory; says what was done."""
    if placement.cpu is None:
        return "not pinned"
    os.sched_setaffinity(0, {placement.cpu})
    where = f"cpu {placement.cpu}"
    if placement.node is not None:
        where += f", NUMA node {placement.node}"
        number = _SET_MEMPOLICY.get(platform.machine())
        if number is not None and placement.node < 64:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                mask = ctypes.c_ulong(1 << placement.node)
                if libc.syscall(number, _MPOL_PREFERRED, ctypes.byref(mask), 64) == 0:
                    where += " (memory preferred there)"
            except (OSError, AttributeError):
                pass
    return where


def run(
    placements: list[Placement],
    listener: socket.socket,
    serve_shard: Callable[[ShardContext], int],
    announce: Callable[[list[bytes]], None],
) -> int:
    """Forks one process per placement, each running `serve_shard(context)` (its exit code);
    calls `announce(reports)` with what each said when ready, once all are; returns when
    all have exited: 0 when every shard stopped cleanly after a signal, the first failure's
    code otherwise."""
    shards = len(placements)
    pairs: dict[tuple[int, int], tuple[socket.socket, socket.socket]] = {}
    lanes: dict[tuple[int, int], tuple[socket.socket, socket.socket]] = {}
    for i in range(shards):
        for j in range(i + 1, shards):
            pairs[(i, j)] = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            lanes[(i, j)] = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ready_r, ready_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    children: dict[int, int] = {}  # pid -> shard id
    allowed = frozenset(os.sched_getaffinity(0))  # before any shard pins itself
    for placement in placements:
        me = placement.shard_id
        pid = os.fork()
        if pid == 0:  # the shard
            code = 1
            try:
                os.close(ready_r)
                peers = _my_ends(pairs, me)
                my_lanes = _my_ends(lanes, me)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                context = ShardContext(placement, shards, listener, peers, my_lanes, ready_w, pin(placement))
                if placement.cpu is not None:
                    context.helper_cpus = allowed
                code = serve_shard(context)
            except BaseException as exc:  # the shard must not return into the supervisor's code
                print(f"tidelog shard {me}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = me
    os.close(ready_w)
    listener.close()
    for a, b in [*pairs.values(), *lanes.values()]:
        a.close()
        b.close()
    return _supervise(children, ready_r, announce)


def _my_ends(
    pairs: dict[tuple[int, int], tuple[socket.socket, socket.socket]], me: int
) -> dict[int, socket.socket]:
    """Shard `me`'s end of each pair it is in, by the other shard's id; the rest closed."""
    mine: dict[int, socket.socket] = {}
    for (i, j), (a, b) in pairs.items():
        if me == i:
            mine[j] = a
            b.close()
        elif me == j:
            mine[i] = b
            a.close()
        else:
            a.close()
            b.close()
    return mine


def _supervise(children: dict[int, int], ready_r: int, announce: Callable[[list[bytes]], None]) -> int:
    stopping = False
    live = dict(children)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    buffer = b""
    reports: list[bytes] = []
    while len(reports) < len(children):
        try:
            got = os.read(ready_r, 65536)
        except InterruptedError:
            continue
        if not got:
            break  # every shard closed the pipe: some died before being ready
        buffer += got
        while len(buffer) >= 2 and len(buffer) >= 2 + int.from_bytes(buffer[:2], "little"):
            size = int.from_bytes(buffer[:2], "little")
            reports.append(buffer[2 : 2 + size])
            buffer = buffer[2 + size :]
    os.close(ready_r)
    serving = len(reports) == len(children)
    if serving and not stopping:
        announce(reports)
    result = 0
    while live:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        shard = live.pop(pid, None)
        if shard is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        if code == 0 and stopping:
            continue
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        if not serving and not stopping and code > 0:
            # A shard that refused to start (it said why): the server refuses, with its code.
            print(f"tidelog: shard {shard} did not start; stopping every shard", file=sys.stderr, flush=True)
            forward(signal.SIGTERM, None)
            result = result or code
        elif not stopping:
            print(
                f"tidelog: shard {shard} (pid {pid}) {how} while serving; stopping every shard",
                file=sys.stderr,
                flush=True,
            )
            forward(signal.SIGTERM, None)
            result = result or EXIT_SHARD_DIED
        elif code != 0:
            print(f"tidelog: shard {shard} (pid {pid}) {how} while stopping", file=sys.stderr, flush=True)
            result = result or (code if code > 0 else EXIT_SHARD_DIED)
    return result

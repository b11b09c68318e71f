"""The tidelog bench workload against Redis Streams, for a side-by-side on the same machine.

It starts its own ``redis-server`` (persistent: ``appendonly yes``, ``appendfsync everysec`` by
default) on a free loopback port with a temp directory, then runs, in separate processes:

- a producer: ``XADD key * d <payload>`` pipelined ``--messages-per-batch`` at a time (one
  pipeline = one batch, its latency = the pipeline's round trip);
- a consumer: ``XREAD COUNT <messages-per-batch> STREAMS key <last id>`` until it has read
  everything (latency per non-empty reply).

Modes: ``pp`` (producer alone), ``pc`` (consumer alone, over data written first), ``ppc``
(both at once), ``all`` (the three in turn; the default). RESP is spoken over a raw socket: the
producer's pipeline is encoded once, and a reply is known to be complete by counting its line ends
(payloads are random ASCII letters, so they hold none), so the client does no Python work per
message: the same rule the tidelog actors follow.

Needs ``redis-server`` on the PATH (Debian/Ubuntu: ``apt-get install -y redis-server``; macOS:
``brew install redis``); exits 2 with that hint when it is missing. Usage::

    python bench/redis_streams.py --message-size 1000 --messages-per-batch 250 --message-batches 4000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STREAM_KEY = b"bench"
FIELD = b"d"
_CRLF = b"\r\n"
_ENTRY_HEAD = b"*2\r\n$"
_FIELD_HEAD = b"*2\r\n$%d\r\n%s\r\n$" % (len(FIELD), FIELD)
_READ_BYTES = 1 << 20
_START_TIMEOUT_S = 10.0
_BACKOFF_MIN_S = 0.0001
_BACKOFF_MAX_S = 0.005
INSTALL_HINT = (
    "redis-server was not found on the PATH. Install it, e.g.\n"
    "  Debian/Ubuntu: apt-get install -y redis-server\n"
    "  Fedora:        dnf install -y redis\n"
    "  macOS:         brew install redis\n"
    "or pass --redis-server /path/to/redis-server."
)


class RespError(RuntimeError):
    pass


def encode_command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class Reader:
    """A receive buffer walked by position; ``fill`` appends what the socket has."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0
        self.chunk = bytearray(_READ_BYTES)
        self.chunk_view = memoryview(self.chunk)

    def compact(self) -> None:
        """Drop consumed bytes; only between replies, as it moves every position."""
        if self.pos:
            del self.buf[: self.pos]
            self.pos = 0

    def fill(self) -> None:
        n = self.sock.recv_into(self.chunk)
        if not n:
            raise RespError("redis closed the connection")
        self.buf += self.chunk_view[:n]

    def ensure(self, end: int) -> None:
        """Wait until ``buf[:end]`` is here (only for bytes the reply is known to hold)."""
        while len(self.buf) < end:
            self.fill()

    def crlf(self, start: int) -> int:
        while True:
            at = self.buf.find(_CRLF, start)
            if at >= 0:
                return at
            start = max(start, len(self.buf) - 1)
            self.fill()

    def line(self) -> bytes:
        end = self.crlf(self.pos)
        out = bytes(self.buf[self.pos : end])
        self.pos = end + 2
        if out[:1] == b"-":
            raise RespError(out.decode(errors="replace"))
        return out

    def await_crlfs(self, start: int, need: int) -> None:
        """Receive until ``buf[start:]`` holds ``need`` line ends; each byte is scanned once.

        Only valid where the payload cannot hold a newline: the payloads here are ASCII
        letters. Counting the single byte ``\n`` runs at memory speed, a two-byte CRLF pattern
        several times slower.
        """
        counted = self.buf.count(b"\n", start)
        while counted < need:
            scan_from = len(self.buf)
            self.fill()
            counted += self.buf.count(b"\n", scan_from)
            # An error line would start right after a line end; look only at the new bytes.
            if self.buf.find(b"\n-", max(start, scan_from - 1)) >= 0:
                raise RespError(bytes(self.buf[start:]).decode(errors="replace")[-200:])
        if counted != need or not self.buf.endswith(_CRLF):
            raise RespError(f"expected {need} lines in the reply, got {counted}")

    def skip_bulk_replies(self, n: int) -> None:
        """``n`` bulk-string replies (XADD ids): ``$<len>\r\n<id>\r\n`` each, 2 CRLFs."""
        self.compact()
        self.ensure(1)
        if self.buf[:1] != b"$":
            raise RespError(bytes(self.buf[:200]).decode(errors="replace"))
        self.await_crlfs(0, 2 * n)
        self.pos = len(self.buf)

    def xread_reply(self) -> tuple[int, bytes]:
        """One XREAD reply for one stream: (entries, last id).

        An entry is ``*2 $<n> <id> *2 $1 d $<size> <payload>``, 8 lines; with CRLF-free
        payloads the reply is complete at 8 CRLFs per entry, and the last id sits right before
        the last field head. No Python work per entry.
        """
        self.compact()
        head = self.line()
        if head in (b"*-1", b"_", b"*0"):
            return 0, b""
        if head != b"*1" or self.line() != b"*2":
            raise RespError(f"unexpected XREAD reply head {head!r}")
        key = self.line()
        self.ensure(self.pos + int(key[1:]) + 2)
        self.pos += int(key[1:]) + 2
        entries = int(self.line()[1:])
        start = self.pos
        self.await_crlfs(start, 8 * entries)
        buf = self.buf
        field_at = buf.rfind(_FIELD_HEAD, start)
        assert field_at > start and buf.startswith(_ENTRY_HEAD, start)
        id_end = field_at - 2
        id_at = buf.rfind(_CRLF, start, id_end) + 2
        self.pos = len(buf)
        return entries, bytes(buf[id_at:id_end])


def connect(port: int) -> tuple[socket.socket, Reader]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock, Reader(sock)


# ---------------------------------------------------------------------------------------------
# Actors


@dataclass
class ActorStats:
    role: str
    messages: int
    payload_bytes: int
    seconds: float
    latencies_us: list[int]
    cpu_seconds: float
    """The client process's own CPU over the run (near ``seconds`` = client-bound)."""


def letters(size: int) -> bytes:
    """Random ASCII letters: as incompressible as it matters here, and free of CRLFs."""
    alphabet = bytes(range(ord("a"), ord("z") + 1)) + bytes(range(ord("A"), ord("Z") + 1))
    return bytes(alphabet[b % len(alphabet)] for b in os.urandom(size))


def produce(port: int, key: bytes, size: int, per_batch: int, batches: int, barrier: Any, out: Any) -> None:
    payload = letters(size)
    pipeline = encode_command(b"XADD", key, b"*", FIELD, payload) * per_batch
    sock, reader = connect(port)
    latencies: list[int] = []
    barrier.wait()
    begin = time.perf_counter_ns()
    cpu_begin = time.process_time()
    for _ in range(batches):
        t = time.perf_counter_ns()
        sock.sendall(pipeline)
        reader.skip_bulk_replies(per_batch)
        latencies.append((time.perf_counter_ns() - t) // 1000)
    seconds = (time.perf_counter_ns() - begin) / 1e9
    sock.close()
    cpu = time.process_time() - cpu_begin
    out.put(ActorStats("producer", per_batch * batches, per_batch * batches * size, seconds, latencies, cpu))


def consume(port: int, key: bytes, size: int, per_batch: int, expected: int, barrier: Any, out: Any) -> None:
    sock, reader = connect(port)
    latencies: list[int] = []
    last_id = b"0-0"
    received = nbytes = 0
    backoff_s = _BACKOFF_MIN_S
    barrier.wait()
    begin = time.perf_counter_ns()
    cpu_begin = time.process_time()
    while received < expected:
        t = time.perf_counter_ns()
        sock.sendall(encode_command(b"XREAD", b"COUNT", b"%d" % per_batch, b"STREAMS", key, last_id))
        entries, newest = reader.xread_reply()
        if not entries:
            time.sleep(backoff_s)
            backoff_s = min(2 * backoff_s, _BACKOFF_MAX_S)
            continue
        backoff_s = _BACKOFF_MIN_S
        latencies.append((time.perf_counter_ns() - t) // 1000)
        received += entries
        nbytes += entries * size
        last_id = newest
    seconds = (time.perf_counter_ns() - begin) / 1e9
    sock.close()
    cpu = time.process_time() - cpu_begin
    out.put(ActorStats("consumer", received, nbytes, seconds, latencies, cpu))


def run_phase(jobs: list[tuple[Any, tuple[Any, ...]]]) -> list[ActorStats]:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(len(jobs))
    out: Any = ctx.Queue()
    procs = [ctx.Process(target=fn, args=(*args, barrier, out)) for fn, args in jobs]
    for p in procs:
        p.start()
    results: list[ActorStats] = []
    while len(results) < len(procs):
        try:
            results.append(out.get(timeout=1.0))
        except queue.Empty:
            failed = [p for p in procs if p.exitcode not in (None, 0)]
            if failed and out.empty():
                for p in procs:
                    p.kill()
                raise RuntimeError(f"a benchmark process failed (exit code {failed[0].exitcode})") from None
    for p in procs:
        p.join()
    return sorted(results, key=lambda r: r.role, reverse=True)


# ---------------------------------------------------------------------------------------------
# redis-server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_redis(binary: str, data_dir: Path, fsync: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    args = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--appendfsync", fsync,
        "--save", "",
        "--daemonize", "no",
        "--logfile", str(data_dir / "redis.log"),
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}; see {data_dir / 'redis.log'}")
        try:
            sock, reader = connect(port)
        except OSError:
            time.sleep(0.05)
            continue
        with sock:
            sock.sendall(encode_command(b"PING"))
            if reader.line() == b"+PONG":
                return proc, port
    proc.kill()
    raise RuntimeError("redis-server did not answer PING in time")


def redis_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


# ---------------------------------------------------------------------------------------------
# Report


def percentile(values: list[int], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] / 1000


def print_stats(mode: str, stats: list[ActorStats]) -> None:
    for s in stats:
        msg_s = s.messages / s.seconds if s.seconds else 0.0
        mb_s = s.payload_bytes / s.seconds / 1e6 if s.seconds else 0.0
        print(
            f"{mode:4} {s.role:9} {s.messages:>10,} msgs  {msg_s:>12,.0f} msg/s  "
            f"{mb_s:>9,.1f} MB/s (payload)  "
            f"p50 {percentile(s.latencies_us, 50):.3f} ms  p99 {percentile(s.latencies_us, 99):.3f} ms  "
            f"p99.9 {percentile(s.latencies_us, 99.9):.3f} ms  ({len(s.latencies_us)} batches, "
            f"client CPU {s.cpu_seconds / s.seconds if s.seconds else 0:.0%})",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=["pp", "pc", "ppc", "all"], default="all")
    parser.add_argument("--message-size", type=int, default=1000)
    parser.add_argument("--messages-per-batch", type=int, default=250)
    parser.add_argument("--message-batches", type=int, default=1000)
    parser.add_argument("--fsync", choices=["everysec", "always", "no"], default="everysec")
    parser.add_argument("--redis-server", default=None, help="path of redis-server (default: from PATH)")
    args = parser.parse_args(argv)
    binary = args.redis_server or shutil.which("redis-server")
    if not binary or not os.access(binary, os.X_OK):
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    size, per_batch, batches = args.message_size, args.messages_per_batch, args.message_batches
    total = per_batch * batches
    print(
        f"Redis Streams: {redis_version(binary)}; appendonly yes, appendfsync {args.fsync}; "
        f"{batches} batches x {per_batch} messages x {size} B",
        flush=True,
    )
    modes = ["pp", "pc", "ppc"] if args.mode == "all" else [args.mode]
    with tempfile.TemporaryDirectory(prefix="redis-bench-") as tmp:
        proc, port = start_redis(binary, Path(tmp), args.fsync)
        try:
            written_key: bytes | None = None
            for n, mode in enumerate(modes):
                key = STREAM_KEY + b"-%d" % n
                if mode == "pp":
                    stats = run_phase([(produce, (port, key, size, per_batch, batches))])
                    written_key = key
                elif mode == "pc":
                    if written_key is None:
                        run_phase([(produce, (port, key, size, per_batch, batches))])
                        written_key = key
                    stats = run_phase([(consume, (port, written_key, size, per_batch, total))])
                else:
                    stats = run_phase(
                        [
                            (produce, (port, key, size, per_batch, batches)),
                            (consume, (port, key, size, per_batch, total)),
                        ]
                    )
                print_stats(mode, stats)
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

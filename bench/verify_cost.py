"""What verifying stored messages costs: `verify_stored` (the check a poll runs on bytes read
from a segment file the first time after start-up) against reading the same bytes from the
page cache, per message size.

    python bench/verify_cost.py [--mib 8]

Prints ns per message and GB/s for each; the numbers in the README's Integrity section come
from this script.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from tidelog.wire import batch
from tidelog.wire.batch import INDEX_ENTRY, MESSAGE_HEADER, parse_send_batch, stamp, verify_stored


def stored(payload_bytes: int, count: int) -> tuple[bytes, np.ndarray]:
    index, area = bytearray(), bytearray()
    body = bytes(payload_bytes)
    for _ in range(count):
        area += MESSAGE_HEADER.pack(0, 0, 0, 0, 0, 0, 0, payload_bytes, 0) + body
        index += INDEX_ENTRY.pack(0, len(area), 0)
    b = parse_send_batch(bytes(index), area, count)
    stamp(b, 0, 1, os.urandom)
    return bytes(b.buf), b.ends.copy()


def best_of(runs: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=8, help="bytes per measurement (a poll reply's worth)")
    args = parser.parse_args()
    print(f"native kernel: {batch.NATIVE}")
    for payload_bytes in (0, 100, 1000, 10_000):
        count = max(1000, (args.mib << 20) // (64 + payload_bytes))
        data, ends = stored(payload_bytes, count)
        assert verify_stored(data, ends, 0) == -1
        with tempfile.TemporaryFile() as f:
            f.write(data)
            f.flush()
            fd = f.fileno()
            read_s = best_of(5, partial(os.pread, fd, len(data), 0))
        verify_s = best_of(5, partial(verify_stored, data, ends, 0))
        print(
            f"payload {payload_bytes:6d} B: verify {verify_s / count * 1e9:7.1f} ns/msg "
            f"{len(data) / verify_s / 1e9:6.2f} GB/s | page-cache pread {read_s / count * 1e9:7.1f} ns/msg "
            f"{len(data) / read_s / 1e9:6.2f} GB/s"
        )


if __name__ == "__main__":
    main()

"""Cost per message of validating a 0.9 batch (`tidelog.wire.v09.batch.parse_batch`).

    .venv/bin/python bench/v09_batch_cost.py

Prints the best of 5 x 5 parses of a 1000-message batch, uniform and mixed message sizes, for
16- and 200-byte payloads. A figure to compare runs on one machine, not a pass/fail bound.
"""

from __future__ import annotations

import time

from tidelog.wire.v09.batch import build_batch, parse_batch

ORIGIN_US = 1_767_225_600_000_000
MESSAGES = 1000


def best_seconds(buf: bytearray) -> float:
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(5):
            parse_batch(buf)
        runs.append((time.perf_counter() - t0) / 5)
    return min(runs)


def main() -> None:
    ids = list(range(1, MESSAGES + 1))
    for payload_bytes in (16, 200):
        uniform = build_batch(
            ids, [b"x" * payload_bytes] * MESSAGES, [b""] * MESSAGES, [ORIGIN_US] * MESSAGES
        )
        mixed = build_batch(
            ids,
            [b"x" * (payload_bytes + i % 7) for i in range(MESSAGES)],
            [b""] * MESSAGES,
            [ORIGIN_US] * MESSAGES,
        )
        for name, buf in (("uniform", uniform), ("mixed", mixed)):
            assert parse_batch(buf).count == MESSAGES
            print(
                f"{name:8} payload {payload_bytes:4} B: {best_seconds(buf) / MESSAGES * 1e9:6.0f} ns/message"
            )


if __name__ == "__main__":
    main()

"""Cost per message of the 0.9 batch work the server does at the edge
(`tidelog.wire.v09.batch`): validating a sent batch (`parse_batch`), converting it to the
0.8 format (`v09_to_v08`: `store_format = "0.8"`), turning stored 0.8 messages into 0.9
records for a poll (`scan_messages` then `v08_to_v09`), and, for the record store, a 0.8
send into a record in its own buffer (`record_in_place`; the figure includes copying the
request first, which `copy` gives alone) and stored records into a 0.8 poll reply
(`records_to_v08`).

    .venv/bin/python bench/v09_batch_cost.py            # C kernels where built
    TIDELOG_NO_NATIVE=1 .venv/bin/python bench/v09_batch_cost.py   # numpy reference paths

Prints the best of 5 x 5 runs over a 1000-message batch, uniform and mixed message sizes, for
16-, 200- and 1000-byte payloads. A figure to compare runs on one machine, not a pass/fail bound.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from tidelog.wire.batch import INDEX_ENTRY, parse_send_batch, scan_messages
from tidelog.wire.v09.batch import (
    BATCH_HEADER_SIZE,
    build_batch,
    parse_batch,
    record_in_place,
    records_to_v08,
    stamp_batch,
    v08_to_v09,
    v09_to_v08,
)

ORIGIN_US = 1_767_225_600_000_000
MESSAGES = 1000


def best_seconds(work: Callable[[], object]) -> float:
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(5):
            work()
        runs.append((time.perf_counter() - t0) / 5)
    return min(runs)


def poll_conversion(stored: bytes) -> bytearray:
    ends, _ = scan_messages(stored, verify_checksums=False)
    return v08_to_v09(stored, ends, partition_id=0)


def send08_as_record(request: bytes, index: bytes, at: int) -> object:
    room = memoryview(bytearray(request))
    batch = parse_send_batch(index, room[at:], MESSAGES)
    record = record_in_place(room, at, batch.ends, os.urandom, 0)
    assert record is not None
    return record


def main() -> None:
    ids = list(range(1, MESSAGES + 1))
    for payload_bytes in (16, 200, 1000):
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
            batch = parse_batch(buf)
            assert batch.count == MESSAGES
            stamp_batch(batch, 0, 0, ORIGIN_US + 1)
            stored_08, ends_08 = v09_to_v08([batch])
            stored = bytes(stored_08)
            # A 0.8 SendMessages request: its index table (16 bytes a message) then messages.
            index = b"".join(INDEX_ENTRY.pack(0, int(e), 0) for e in ends_08)
            at = max(len(index), BATCH_HEADER_SIZE)
            request = bytes(at) + stored
            record = bytes(batch.buf)
            figures = {
                "parse": best_seconds(lambda b=buf: parse_batch(b)),  # type: ignore[misc]
                "to 0.8": best_seconds(lambda b=batch: v09_to_v08([b])),  # type: ignore[misc]
                "poll as 0.9": best_seconds(lambda s=stored: poll_conversion(s)),  # type: ignore[misc]
                "0.8 send as record": best_seconds(
                    lambda r=request, i=index, a=at: send08_as_record(r, i, a)  # type: ignore[misc]
                ),
                "copy": best_seconds(lambda r=request: bytearray(r)),  # type: ignore[misc]
                "records as 0.8 poll": best_seconds(lambda r=record: records_to_v08(r)),  # type: ignore[misc]
            }
            cells = "  ".join(f"{k} {v / MESSAGES * 1e9:5.0f}" for k, v in figures.items())
            print(f"{name:8} payload {payload_bytes:4} B (ns/message): {cells}")


if __name__ == "__main__":
    main()

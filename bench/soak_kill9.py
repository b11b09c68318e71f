"""Soak: many kill -9 cycles of a real ``tidelog serve`` on one data directory, checking the
README's durability promise for the fsync policy after every restart.

Each cycle: start the server on what the previous kill left, verify the previous cycle's data
(every acknowledged message under ``always``; a contiguous, checksum-valid prefix whose lost
acknowledged messages were acknowledged within the loss bound under ``interval``/``never``),
run producers for a random 0.15-0.5 s, SIGKILL. The loop is tests/harness/kill9_loop.py, the
same one CI runs for a few cycles.

    python bench/soak_kill9.py --policy always --cycles 1000
    python bench/soak_kill9.py --policy interval --cycles 1000 --max-loss-window-ms 200  # a quiet machine

Prints one line per --report-every cycles and a summary: cycles, acknowledged messages, lost
acknowledged messages, the largest loss window. Exits 1 on the first violation (the data
directory is kept for inspection and its path printed), 0 otherwise.

Data goes to a temporary directory under --dir (default `.bench-tmp` in the current directory,
on the repository's disk rather than a possibly-tmpfs /tmp).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for `tests.*`

from tests.conftest import ServerProcess
from tests.harness.kill9_loop import LOSS_WINDOW_SLACK_MS, POLICIES, Kill9Loop, PromiseBroken

from tidelog.config import DurabilityConfig


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--policy", choices=POLICIES, default="always")
    ap.add_argument("--partitions", type=int, default=3, help="and as many producers")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--max-loss-window-ms",
        type=float,
        default=DurabilityConfig().flush_interval_ms + LOSS_WINDOW_SLACK_MS,
        help="interval/never: fail when acknowledged messages older than this are lost "
        f"(default flush_interval_ms + {LOSS_WINDOW_SLACK_MS} ms of slack)",
    )
    ap.add_argument("--dir", type=Path, default=Path(".bench-tmp"))
    ap.add_argument("--report-every", type=int, default=50)
    args = ap.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="soak-kill9-", dir=args.dir))
    loop = Kill9Loop(
        ServerProcess,
        work / "data",
        args.policy,
        partitions=args.partitions,
        seed=args.seed,
        max_loss_window_ms=None if args.policy == "always" else args.max_loss_window_ms,
    )
    cycles = acknowledged = lost = 0
    max_window_ms = 0.0
    started = time.monotonic()
    try:
        for result in loop.run(args.cycles):
            cycles += 1
            acknowledged += result.acknowledged
            lost += result.lost
            max_window_ms = max(max_window_ms, result.loss_window_ms)
            if cycles % args.report_every == 0:
                print(
                    f"cycle {cycles}: {acknowledged} acknowledged, {lost} lost, "
                    f"max loss window {max_window_ms:.1f} ms",
                    flush=True,
                )
    except PromiseBroken as e:
        print(f"VIOLATION after {cycles} good cycles ({args.policy}): {e}\ndata kept in {work}")
        return 1
    elapsed_s = time.monotonic() - started
    print(
        f"policy {args.policy}: {cycles} kill -9 cycles in {elapsed_s:.0f} s, "
        f"{acknowledged} acknowledged messages, {lost} acknowledged messages lost, "
        f"max loss window {max_window_ms:.1f} ms"
        + ("" if args.policy == "always" else f" (bound {args.max_loss_window_ms:.0f} ms)")
    )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

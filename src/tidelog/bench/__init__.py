"""``tidelog bench``: iggy-bench's modes against a tidelog (or Iggy 0.8) server.

Actors run in their own processes with pre-built frames; results are HDR histograms, time
series and counters, summarised into iggy-bench's ``report.json`` shape with PNG charts. With
``--ceilings`` the same run also measures loopback TCP and raw disk throughput, so every figure
can be read as a fraction of what the machine can do.
"""

from tidelog.bench.cli import add_bench_parser, cmd_bench, parse_size_bytes
from tidelog.bench.runner import BenchMode, BenchParams, BenchRun, parse_mode, run_benchmark

__all__ = [
    "BenchMode",
    "BenchParams",
    "BenchRun",
    "add_bench_parser",
    "cmd_bench",
    "parse_mode",
    "parse_size_bytes",
    "run_benchmark",
]

"""Benchmark results: summaries from HDR histograms, report.json, PNG charts, the console table.

``report.json`` follows iggy-bench's ``BenchmarkReport``: ``uuid``, ``timestamp``, ``params``,
``hardware``, ``server_stats``, ``group_metrics`` (summary, throughput and latency time series,
latency distribution) and ``individual_metrics`` (per actor), plus tidelog's ``ceilings`` and
``ratios``. Throughput counts message bytes as they travel and are stored: the 64-byte message
header plus the payload; 1 MB = 10^6 bytes. Latencies are per batch, in milliseconds.

Group latency percentiles come from merging the actors' histograms (exact), and iggy-bench's
``average_pXX_latency_ms`` (the mean of the actors' percentiles) is kept alongside.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tidelog.bench.actors import LATENCY_MAX_US, ActorKind, ActorResult

if TYPE_CHECKING:
    from hdrh.histogram import HdrHistogram

    from tidelog.bench.ceilings import Ceiling
    from tidelog.bench.runner import BenchRun

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p95", 95.0),
    ("p99", 99.0),
    ("p999", 99.9),
    ("p9999", 99.99),
)
_DISTRIBUTION_BINS = 50
_US_PER_MS = 1000.0

GROUP_TITLES = {
    "producers": "Producers Results",
    "consumers": "Consumers Results",
    "producers_and_consumers": "Aggregate Results",
    "producing_consumers": "Producing Consumer Results",
}
_GROUP_OF_KIND = {
    ActorKind.PRODUCER: "producers",
    ActorKind.CONSUMER: "consumers",
    ActorKind.PRODUCING_CONSUMER: "producing_consumers",
}


# ---------------------------------------------------------------------------------------------
# Histograms and latency summaries


def new_histogram() -> HdrHistogram:
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(1, LATENCY_MAX_US, 3)


def decode_histogram(encoded: bytes) -> HdrHistogram:
    histogram = new_histogram()
    if encoded:
        histogram.decode_and_add(encoded)
    return histogram


def latency_summary(histogram: HdrHistogram) -> dict[str, float]:
    """Percentiles, average, median, min, max and std-dev of a µs histogram, in ms."""
    if histogram.get_total_count() == 0:
        keys = [f"{name}_latency_ms" for name, _ in PERCENTILES]
        keys += ["avg_latency_ms", "median_latency_ms", "min_latency_ms", "max_latency_ms"]
        return {**dict.fromkeys(keys, 0.0), "std_dev_latency_ms": 0.0}
    out = {f"{name}_latency_ms": histogram.get_value_at_percentile(q) / _US_PER_MS for name, q in PERCENTILES}
    out["avg_latency_ms"] = histogram.get_mean_value() / _US_PER_MS
    out["median_latency_ms"] = out["p50_latency_ms"]
    out["min_latency_ms"] = histogram.get_min_value() / _US_PER_MS
    out["max_latency_ms"] = histogram.get_max_value() / _US_PER_MS
    out["std_dev_latency_ms"] = histogram.get_stddev() / _US_PER_MS
    return out


def latency_distribution(histogram: HdrHistogram) -> dict[str, Any]:
    """Histogram bins from min to p99.9 (later values go to the last bin), a log-normal fit
    and p05/p50/p95/p99, as iggy-bench's ``latency_distribution``."""
    total = histogram.get_total_count()
    if total == 0:
        return {"bins": [], "log_normal": {"mu": 0.0, "sigma": 0.0}, "percentiles": {}}
    low = histogram.get_min_value()
    high = max(histogram.get_value_at_percentile(99.9), low + 1)
    width = (high - low) / _DISTRIBUTION_BINS
    counts = [0] * _DISTRIBUTION_BINS
    log_sum = log_sq_sum = 0.0
    for item in histogram.get_recorded_iterator():
        value = item.value_iterated_to
        count = item.count_at_value_iterated_to
        index = min(_DISTRIBUTION_BINS - 1, int((value - low) / width))
        counts[index] += count
        log_value = math.log(max(value, 1) / _US_PER_MS)
        log_sum += log_value * count
        log_sq_sum += log_value * log_value * count
    mu = log_sum / total
    sigma = math.sqrt(max(0.0, log_sq_sum / total - mu * mu))
    bins = [
        {"latency_ms": (low + (i + 0.5) * width) / _US_PER_MS, "count": counts[i]}
        for i in range(_DISTRIBUTION_BINS)
    ]
    percentiles = {
        name: histogram.get_value_at_percentile(q) / _US_PER_MS
        for name, q in (("p05", 5.0), ("p50", 50.0), ("p95", 95.0), ("p99", 99.0))
    }
    return {"bins": bins, "log_normal": {"mu": mu, "sigma": sigma}, "percentiles": percentiles}


# ---------------------------------------------------------------------------------------------
# Per actor


def _rate(amount: float, seconds: float) -> float:
    return amount / seconds if seconds > 0 else 0.0


def actor_time_series(result: ActorResult) -> dict[str, list[dict[str, float]]]:
    """Throughput (MB/s, msg/s) and average batch latency (ms) per sampling window."""
    window_s = result.window_ns / 1e9
    n = len(result.window_bytes)
    mb: list[dict[str, float]] = []
    msg: list[dict[str, float]] = []
    latency: list[dict[str, float]] = []
    for i in range(n):
        # The last window is partial: divide by the time it really covered.
        span_s = result.last_window_ns / 1e9 if i == n - 1 and result.last_window_ns > 0 else window_s
        t = i * window_s + span_s
        mb.append({"time_s": t, "value": _rate(result.window_bytes[i], span_s) / 1e6})
        msg.append({"time_s": t, "value": _rate(result.window_messages[i], span_s)})
        if result.window_batches[i]:
            avg_us = result.window_latency_sum_us[i] / result.window_batches[i]
            latency.append({"time_s": t, "value": avg_us / _US_PER_MS})
    return {"throughput_mb_ts": mb, "throughput_msg_ts": msg, "latency_ts": latency}


def actor_summary(
    result: ActorResult, histogram: HdrHistogram, mode: str, message_size: int
) -> dict[str, Any]:
    seconds = result.measured_time_ns / 1e9
    return {
        "benchmark_kind": mode,
        "actor_kind": str(result.kind),
        "actor_id": result.actor_id,
        "total_time_secs": seconds,
        "total_time_with_warmup_secs": result.total_time_ns / 1e9,
        "total_user_data_bytes": result.measured_messages * message_size,
        "total_bytes": result.measured_bytes,
        "total_messages": result.measured_messages,
        "total_message_batches": result.measured_batches,
        "all_messages": result.total_messages,
        "all_bytes": result.total_bytes,
        "all_message_batches": result.total_batches,
        "empty_polls": result.empty_polls,
        "cpu_time_secs": result.cpu_time_ns / 1e9,
        "cpu_utilisation": _rate(result.cpu_time_ns, result.total_time_ns),
        "assigned_partitions": list(result.partitions),
        "throughput_megabytes_per_second": _rate(result.measured_bytes, seconds) / 1e6,
        "throughput_messages_per_second": _rate(result.measured_messages, seconds),
        **latency_summary(histogram),
    }


# ---------------------------------------------------------------------------------------------
# Per group


def _sum_series(series: list[list[dict[str, float]]]) -> list[dict[str, float]]:
    length = max((len(s) for s in series), default=0)
    out = []
    for i in range(length):
        points = [s[i] for s in series if i < len(s)]
        out.append({"time_s": max(p["time_s"] for p in points), "value": sum(p["value"] for p in points)})
    return out


def _weighted_latency_series(results: list[ActorResult]) -> list[dict[str, float]]:
    length = max((len(r.window_batches) for r in results), default=0)
    out = []
    for i in range(length):
        batches = sum(r.window_batches[i] for r in results if i < len(r.window_batches))
        if not batches:
            continue
        latency_us = sum(r.window_latency_sum_us[i] for r in results if i < len(r.window_latency_sum_us))
        window_s = results[0].window_ns / 1e9
        out.append({"time_s": (i + 1) * window_s, "value": latency_us / batches / _US_PER_MS})
    return out


def group_metrics(
    kind: str,
    results: list[ActorResult],
    histograms: list[HdrHistogram],
    summaries: list[dict[str, Any]],
    series: list[dict[str, list[dict[str, float]]]],
) -> dict[str, Any]:
    merged = new_histogram()
    for histogram in histograms:
        merged.add(histogram)
    seconds = max((r.measured_time_ns for r in results), default=0) / 1e9
    measured_bytes = sum(r.measured_bytes for r in results)
    measured_messages = sum(r.measured_messages for r in results)
    summary: dict[str, Any] = {
        "kind": kind,
        "actors": len(results),
        "total_time_secs": seconds,
        "total_messages": sum(r.total_messages for r in results),
        "total_bytes": sum(r.total_bytes for r in results),
        "total_message_batches": sum(r.total_batches for r in results),
        "measured_messages": measured_messages,
        "measured_bytes": measured_bytes,
        "total_throughput_megabytes_per_second": _rate(measured_bytes, seconds) / 1e6,
        "total_throughput_messages_per_second": _rate(measured_messages, seconds),
        "average_throughput_megabytes_per_second": (
            sum(s["throughput_megabytes_per_second"] for s in summaries) / len(summaries)
            if summaries
            else 0.0
        ),
        "average_throughput_messages_per_second": (
            sum(s["throughput_messages_per_second"] for s in summaries) / len(summaries) if summaries else 0.0
        ),
        "average_cpu_utilisation": (
            sum(s["cpu_utilisation"] for s in summaries) / len(summaries) if summaries else 0.0
        ),
        **latency_summary(merged),
    }
    for name, _ in PERCENTILES:
        key = f"{name}_latency_ms"
        summary[f"average_{key}"] = sum(s[key] for s in summaries) / len(summaries) if summaries else 0.0
    return {
        "summary": summary,
        "avg_throughput_mb_ts": _sum_series([s["throughput_mb_ts"] for s in series]),
        "avg_throughput_msg_ts": _sum_series([s["throughput_msg_ts"] for s in series]),
        "avg_latency_ts": _weighted_latency_series(results),
        "latency_distribution": latency_distribution(merged),
        "_histogram": merged,
    }


def _aggregate(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """iggy-bench's "Aggregate Results": throughputs add up, latencies merge."""
    merged = new_histogram()
    for group in groups:
        merged.add(group["_histogram"])
    sums = (
        "actors",
        "total_messages",
        "total_bytes",
        "total_message_batches",
        "measured_messages",
        "measured_bytes",
        "total_throughput_megabytes_per_second",
        "total_throughput_messages_per_second",
    )
    summary: dict[str, Any] = {"kind": "producers_and_consumers"}
    for key in sums:
        summary[key] = sum(g["summary"][key] for g in groups)
    summary["total_time_secs"] = max(g["summary"]["total_time_secs"] for g in groups)
    actors = summary["actors"]
    summary["average_throughput_megabytes_per_second"] = (
        sum(g["summary"]["average_throughput_megabytes_per_second"] * g["summary"]["actors"] for g in groups)
        / actors
    )
    summary["average_throughput_messages_per_second"] = (
        sum(g["summary"]["average_throughput_messages_per_second"] * g["summary"]["actors"] for g in groups)
        / actors
    )
    summary["average_cpu_utilisation"] = (
        sum(g["summary"]["average_cpu_utilisation"] * g["summary"]["actors"] for g in groups) / actors
    )
    summary.update(latency_summary(merged))
    for name, _ in PERCENTILES:
        key = f"average_{name}_latency_ms"
        summary[key] = sum(g["summary"][key] * g["summary"]["actors"] for g in groups) / actors
    return {
        "summary": summary,
        "avg_throughput_mb_ts": _sum_series([g["avg_throughput_mb_ts"] for g in groups]),
        "avg_throughput_msg_ts": _sum_series([g["avg_throughput_msg_ts"] for g in groups]),
        "avg_latency_ts": [],
        "latency_distribution": latency_distribution(merged),
        "_histogram": merged,
    }


# ---------------------------------------------------------------------------------------------
# Host facts


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def hardware_info() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    memory_kb = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            memory_kb = int(line.split()[1])
    pretty = next(
        (
            line.split("=", 1)[1].strip().strip('"')
            for line in _read("/etc/os-release").splitlines()
            if line.startswith("PRETTY_NAME=")
        ),
        platform.platform(),
    )
    return {
        "identifier": socket.gethostname(),
        "cpu_name": cpu,
        "cpu_cores": os.cpu_count() or 0,
        "total_memory_mb": memory_kb // 1024,
        "os_name": platform.system(),
        "os_version": pretty,
        "kernel_version": platform.release(),
        "python_version": platform.python_version(),
    }


def git_revision() -> tuple[str, str]:
    """(short revision, commit date) of the source tree, or ("", "") outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%h %cI"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return "", ""
    if out.returncode != 0 or not out.stdout.strip():
        return "", ""
    ref, _, date = out.stdout.strip().partition(" ")
    return ref, date


# ---------------------------------------------------------------------------------------------
# The report


def _ceiling_ratios(groups: dict[str, dict[str, Any]], ceilings: list[Ceiling]) -> dict[str, float]:
    by_name = {c.name: c.megabytes_per_second for c in ceilings if not c.skipped and c.seconds > 0}
    ratios: dict[str, float] = {}
    pairs = (
        ("producers", ("disk_o_direct", "disk_o_direct_dsync", "disk_buffered_fdatasync", "loopback_tcp")),
        ("consumers", ("loopback_tcp",)),
        ("producing_consumers", ("loopback_tcp", "disk_o_direct")),
    )
    for group, names in pairs:
        if group not in groups:
            continue
        value = groups[group]["summary"]["total_throughput_megabytes_per_second"]
        for name in names:
            if by_name.get(name):
                ratios[f"{group}_vs_{name}"] = value / by_name[name]
    return ratios


def build_report(run: BenchRun) -> dict[str, Any]:
    params = run.params
    mode = params.mode.value
    individual = []
    by_group: dict[str, list[tuple[ActorResult, HdrHistogram, dict[str, Any], dict[str, Any]]]] = {}
    for result in run.actors:
        histogram = decode_histogram(result.histogram)
        summary = actor_summary(result, histogram, mode, params.message_size)
        series = actor_time_series(result)
        individual.append({"summary": summary, **series})
        by_group.setdefault(_GROUP_OF_KIND[result.kind], []).append((result, histogram, summary, series))
    groups: dict[str, dict[str, Any]] = {}
    for kind in ("producers", "consumers", "producing_consumers"):
        members = by_group.get(kind)
        if members:
            groups[kind] = group_metrics(
                kind,
                [m[0] for m in members],
                [m[1] for m in members],
                [m[2] for m in members],
                [m[3] for m in members],
            )
    if "producers" in groups and "consumers" in groups:
        groups["producers_and_consumers"] = _aggregate([groups["producers"], groups["consumers"]])
    gitref, gitref_date = git_revision()
    report: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "timestamp": datetime.now(UTC).isoformat(),
        "params": {
            "benchmark_kind": mode,
            "transport": "tcp",
            "server_address": params.server_address,
            "protocol": params.protocol.value,
            "remark": params.remark,
            "extra_info": "",
            "gitref": gitref,
            "gitref_date": gitref_date,
            "messages_per_batch": params.messages_per_batch,
            "message_batches": params.message_batches,
            "message_size": params.message_size,
            "producers": params.producer_count,
            "consumers": params.consumer_count,
            "streams": params.stream_count,
            "partitions": params.partition_count,
            "consumer_groups": params.consumer_groups if not params.mode.pinned else 0,
            "rate_limit": params.rate_limit_bytes_per_s,
            "warmup_time_secs": params.warmup_s,
            "sampling_time_secs": params.sampling_s,
            "data_volume_bytes": params.data_volume_bytes,
            "pretty_name": params.describe(),
            "bench_command": params.command_line,
        },
        "hardware": hardware_info(),
        "server_stats": _jsonable(run.server_stats),
        "expected_messages_per_consumer_group": {str(k): v for k, v in run.expected_per_group.items()},
        "prefill": (
            {
                "messages": sum(r.total_messages for r in run.prefill.results),
                "bytes": sum(r.total_bytes for r in run.prefill.results),
                "seconds": run.prefill.seconds,
            }
            if run.prefill is not None
            else None
        ),
        "group_metrics": [{k: v for k, v in g.items() if not k.startswith("_")} for g in groups.values()],
        "individual_metrics": individual,
        "ceilings": [c.to_json() for c in run.ceilings],
        "ratios": _ceiling_ratios(groups, run.ceilings),
        "_histograms": {k: g["_histogram"] for k, g in groups.items()},
    }
    return report


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(report: dict[str, Any], directory: Path) -> list[Path]:
    """``report.json``, ``throughput.png`` and ``latency_distribution.png`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    path = directory / "report.json"
    path.write_text(json.dumps(public, indent=2) + "\n", encoding="utf-8")
    return [path, *write_charts(report, directory)]


def write_charts(report: dict[str, Any], directory: Path) -> list[Path]:
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import textwrap

    import matplotlib.pyplot as plt

    title = "\n".join(textwrap.wrap(report["params"]["pretty_name"], 110))
    paths = [directory / "throughput.png", directory / "latency_distribution.png"]

    fig, ax = plt.subplots(figsize=(11, 5.5))
    for group in report["group_metrics"]:
        points = group["avg_throughput_mb_ts"]
        kind = group["summary"]["kind"]
        ax.plot([p["time_s"] for p in points], [p["value"] for p in points], label=GROUP_TITLES[kind])
    ax.set_xlabel("time since start of measurement (s)")
    ax.set_ylabel("throughput (MB/s)")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(11, 5.5))
    for group in report["group_metrics"]:
        kind = group["summary"]["kind"]
        if kind == "producers_and_consumers":
            continue
        bins = group["latency_distribution"]["bins"]
        if not bins:
            continue
        p50_ms = group["summary"]["p50_latency_ms"]
        p99_ms = group["summary"]["p99_latency_ms"]
        (line,) = ax.step(
            [b["latency_ms"] for b in bins],
            [b["count"] for b in bins],
            where="mid",
            label=f"{GROUP_TITLES[kind]} (p50 {p50_ms:.3f} ms, p99 {p99_ms:.3f} ms)",
        )
        ax.axvline(p99_ms, linestyle="--", linewidth=1, color=line.get_color())
    # Counts span orders of magnitude between the body and the tail.
    ax.set_yscale("log")
    ax.set_xlabel("batch latency (ms), up to p99.9")
    ax.set_ylabel("batches")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------------------------
# Console


def render_console(report: dict[str, Any], console: Any) -> None:
    """One column per group (iggy-bench's "Producers Results", ...), one row per figure."""
    from rich.table import Table

    groups = report["group_metrics"]
    table = Table(title=f"Results (protocol {report['params']['protocol']}, latency per batch)")
    table.add_column("")
    for group in groups:
        table.add_column(GROUP_TITLES[group["summary"]["kind"]], justify="right")
    rows: list[tuple[str, str, str]] = [
        ("actors", "actors", "{:d}"),
        ("total MB/s", "total_throughput_megabytes_per_second", "{:,.1f}"),
        ("total msg/s", "total_throughput_messages_per_second", "{:,.0f}"),
        ("MB/s per actor", "average_throughput_megabytes_per_second", "{:,.1f}"),
        ("msg/s per actor", "average_throughput_messages_per_second", "{:,.0f}"),
        *((f"{name} latency (ms)", f"{name}_latency_ms", "{:.3f}") for name, _ in PERCENTILES),
        ("avg latency (ms)", "avg_latency_ms", "{:.3f}"),
        ("min latency (ms)", "min_latency_ms", "{:.3f}"),
        ("max latency (ms)", "max_latency_ms", "{:.3f}"),
        ("std-dev (ms)", "std_dev_latency_ms", "{:.3f}"),
        ("messages (with warm-up)", "total_messages", "{:,d}"),
        ("messages measured", "measured_messages", "{:,d}"),
        ("measured time (s)", "total_time_secs", "{:.2f}"),
        ("client CPU per actor", "average_cpu_utilisation", "{:.0%}"),
    ]
    for label, key, fmt in rows:
        table.add_row(label, *(fmt.format(g["summary"][key]) for g in groups))
    console.print(table)
    if any(g["summary"]["measured_messages"] == 0 for g in groups):
        console.print(
            "[yellow]warning: every batch of a group started inside the warm-up, so it has no "
            "metrics; send more batches or shorten --warmup-time[/yellow]"
        )
    if report["ceilings"]:
        ceilings = Table(title="Ceilings measured in this run")
        for column in ("ceiling", "MB/s", "p50 write (µs)", "p99 write (µs)", "note"):
            ceilings.add_column(column, justify="left" if column in ("ceiling", "note") else "right")
        for c in report["ceilings"]:
            ceilings.add_row(
                c["name"],
                f"{c['megabytes_per_second']:,.1f}" if not c["skipped"] else "-",
                f"{c['p50_write_us']:.0f}" if c["p50_write_us"] else "",
                f"{c['p99_write_us']:.0f}" if c["p99_write_us"] else "",
                c["skipped"],
            )
        console.print(ceilings)
        for name, ratio in report["ratios"].items():
            group, _, ceiling = name.partition("_vs_")
            console.print(f"  {group} throughput = {ratio:.1%} of the {ceiling} ceiling")

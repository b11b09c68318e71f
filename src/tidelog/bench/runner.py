"""Benchmark modes and orchestration: set up streams, start actor processes, collect results.

Modes follow iggy-bench. Pinned modes give each producer / consumer its own stream (one topic,
one partition; actor ``i`` uses stream ``i % streams``). Balanced modes use one stream whose
topic has ``partitions`` partitions: producers send with balanced partitioning, consumers read
as members of ``consumer_groups`` groups (consumer ``j`` joins group ``j % groups``) polling
Next with auto-commit, so the server assigns partitions and keeps each group's offsets. The
consumer-only modes first fill the streams with the same workload (not measured). End-to-end
actors each own a stream and send a batch, then poll it back.

Every connection speaks ``params.protocol`` (0.9 by default, or 0.8): the measured ones, and
the native client's for setup and the server statistics, so a server of one generation only
can be measured too.

Actors are forked processes (``multiprocessing`` "fork" context); a barrier with the parent
as one more party starts them together, and a shared array of per-actor message counts drives
the progress bar.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import queue
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from tidelog.bench.actors import BARRIER_TIMEOUT_S, ActorKind, ActorResult, ActorSpec, Protocol, run_actor

STREAM_PREFIX = "bench-stream-"
TOPIC_NAME = "topic-1"
GROUP_PREFIX = "cg-"
_POLL_RESULTS_S = 0.1
_JOIN_TIMEOUT_S = 10.0


class BenchMode(StrEnum):
    PINNED_PRODUCER = "pinned_producer"
    PINNED_CONSUMER = "pinned_consumer"
    PINNED_PRODUCER_AND_CONSUMER = "pinned_producer_and_consumer"
    BALANCED_PRODUCER = "balanced_producer"
    BALANCED_CONSUMER_GROUP = "balanced_consumer_group"
    BALANCED_PRODUCER_AND_CONSUMER_GROUP = "balanced_producer_and_consumer_group"
    END_TO_END = "end_to_end_producing_consumer"

    @property
    def pinned(self) -> bool:
        return self in _PINNED

    @property
    def has_producers(self) -> bool:
        return self in _WITH_PRODUCERS

    @property
    def has_consumers(self) -> bool:
        return self in _WITH_CONSUMERS


_PINNED = frozenset(
    {
        BenchMode.PINNED_PRODUCER,
        BenchMode.PINNED_CONSUMER,
        BenchMode.PINNED_PRODUCER_AND_CONSUMER,
        BenchMode.END_TO_END,
    }
)
_WITH_PRODUCERS = frozenset(
    {
        BenchMode.PINNED_PRODUCER,
        BenchMode.PINNED_PRODUCER_AND_CONSUMER,
        BenchMode.BALANCED_PRODUCER,
        BenchMode.BALANCED_PRODUCER_AND_CONSUMER_GROUP,
    }
)
_WITH_CONSUMERS = frozenset(
    {
        BenchMode.PINNED_CONSUMER,
        BenchMode.PINNED_PRODUCER_AND_CONSUMER,
        BenchMode.BALANCED_CONSUMER_GROUP,
        BenchMode.BALANCED_PRODUCER_AND_CONSUMER_GROUP,
    }
)

MODE_ALIASES: dict[str, BenchMode] = {
    "pp": BenchMode.PINNED_PRODUCER,
    "pc": BenchMode.PINNED_CONSUMER,
    "ppc": BenchMode.PINNED_PRODUCER_AND_CONSUMER,
    "bp": BenchMode.BALANCED_PRODUCER,
    "bcg": BenchMode.BALANCED_CONSUMER_GROUP,
    "bpcg": BenchMode.BALANCED_PRODUCER_AND_CONSUMER_GROUP,
    "e2e": BenchMode.END_TO_END,
}
MODE_NAMES: dict[str, BenchMode] = {
    **MODE_ALIASES,
    **{m.value.replace("_", "-"): m for m in BenchMode},
    "end-to-end": BenchMode.END_TO_END,
}


def parse_mode(text: str) -> BenchMode:
    try:
        return MODE_NAMES[text.strip().lower().replace("_", "-")]
    except KeyError:
        raise ValueError(f"unknown benchmark mode {text!r}; one of {', '.join(MODE_NAMES)}") from None


@dataclass(frozen=True, slots=True)
class BenchParams:
    mode: BenchMode
    message_size: int = 1000
    messages_per_batch: int = 1000
    message_batches: int = 1000
    """Per actor (producer, producing consumer, or consumer in the consumer-only modes)."""
    producers: int = 1
    consumers: int = 1
    streams: int | None = None
    """None: pinned = one per actor, balanced = 1."""
    partitions: int | None = None
    """None: pinned = 1, balanced = 24 (iggy-bench's default)."""
    consumer_groups: int = 1
    warmup_s: float = 0.0
    sampling_s: float = 0.1
    rate_limit_bytes_per_s: float | None = None
    """Total over the sending actors, shared evenly."""
    server_address: str = "127.0.0.1:8090"
    protocol: Protocol = Protocol.V09
    """The generation the measured traffic speaks; setup and stats use the 0.8 client."""
    username: str = "iggy"
    password: str = "iggy"
    remark: str = ""
    command_line: str = ""
    output_dir: Path | None = None
    ceilings: bool = False
    ceiling_dir: Path | None = None
    ceiling_bytes: int | None = None
    """None: the benchmark's own data volume."""
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("message_size", "messages_per_batch", "message_batches", "consumer_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.producers < 0 or self.consumers < 0:
            raise ValueError("producers and consumers cannot be negative")
        if (self.mode.has_producers or self.mode == BenchMode.END_TO_END) and self.producers < 1:
            raise ValueError(f"{self.mode} needs at least one producer")
        if self.mode.has_consumers and self.consumers < 1:
            raise ValueError(f"{self.mode} needs at least one consumer")
        if self.streams is not None and self.streams < 1:
            raise ValueError("streams must be at least 1")
        if self.partitions is not None and self.partitions < 1:
            raise ValueError("partitions must be at least 1")
        if self.mode == BenchMode.END_TO_END and self.streams is not None and self.streams < self.producers:
            # Each producing consumer reads back its own batches: it needs a stream to itself.
            raise ValueError("end-to-end needs at least one stream per producing consumer")
        if self.mode.pinned and self.partitions not in (None, 1):
            raise ValueError("pinned modes use one partition per stream")
        if self.warmup_s < 0 or self.sampling_s <= 0:
            raise ValueError("warm-up cannot be negative and the sampling time must be positive")
        if self.rate_limit_bytes_per_s is not None and self.rate_limit_bytes_per_s <= 0:
            raise ValueError("rate limit must be positive")

    @property
    def producer_count(self) -> int:
        """Sending actors: producers, or the producing consumers of end-to-end."""
        return self.producers if (self.mode.has_producers or self.mode == BenchMode.END_TO_END) else 0

    @property
    def consumer_count(self) -> int:
        return self.consumers if self.mode.has_consumers else 0

    @property
    def stream_count(self) -> int:
        if self.streams is not None:
            return self.streams
        if not self.mode.pinned:
            return 1
        return max(self.producer_count, self.consumer_count, 1)

    @property
    def partition_count(self) -> int:
        if self.partitions is not None:
            return self.partitions
        return 1 if self.mode.pinned else 24

    @property
    def message_bytes(self) -> int:
        from tidelog.wire.codes import MESSAGE_HEADER_SIZE

        return MESSAGE_HEADER_SIZE + self.message_size

    @property
    def batch_bytes(self) -> int:
        return self.messages_per_batch * self.message_bytes

    @property
    def data_actors(self) -> int:
        """The actors whose batches make up the data volume."""
        if self.mode in (BenchMode.PINNED_CONSUMER, BenchMode.BALANCED_CONSUMER_GROUP):
            return self.consumers
        return self.producers

    @property
    def data_volume_bytes(self) -> int:
        """Message bytes (64-byte headers included) the run moves into or out of the server."""
        return self.data_actors * self.message_batches * self.batch_bytes

    def describe(self) -> str:
        parts = [f"Benchmark: {self.mode.value}", f"protocol {self.protocol.value}"]
        if self.mode == BenchMode.END_TO_END:
            parts.append(f"{self.producers} producing consumers")
        else:
            if self.producer_count:
                parts.append(f"{self.producers} producers")
            if self.consumer_count:
                parts.append(f"{self.consumers} consumers")
        parts.append(f"{self.stream_count} streams")
        parts.append(f"{self.partition_count} partitions per topic")
        if self.mode in (BenchMode.BALANCED_CONSUMER_GROUP, BenchMode.BALANCED_PRODUCER_AND_CONSUMER_GROUP):
            parts.append(f"{self.consumer_groups} consumer groups")
        parts.append(
            f"{self.message_batches} batches x {self.messages_per_batch} messages x "
            f"{self.message_size} B per actor"
        )
        parts.append(f"{self.data_volume_bytes / 1e6:.1f} MB of data processed")
        return ", ".join(parts)


@dataclass(slots=True)
class Layout:
    """What the setup created on the server."""

    stream_ids: list[int]
    topic_ids: list[int]
    group_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class PhaseResult:
    results: list[ActorResult]
    seconds: float


@dataclass(slots=True)
class BenchRun:
    params: BenchParams
    layout: Layout
    actors: list[ActorResult]
    """Measured actors, in spec order (producers, then consumers)."""
    expected_per_group: dict[int, int]
    seconds: float
    server_stats: dict[str, Any]
    ceilings: list[Any]
    prefill: PhaseResult | None = None


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# Setup and server statistics (control plane, through the native client on plain asyncio)


async def _setup(params: BenchParams) -> Layout:
    from tidelog.client import IggyClient

    client = await IggyClient.connect(
        params.server_address,
        username=params.username,
        password=params.password,
        reconnect_retries=0,
        protocol=params.protocol.value,
    )
    try:
        layout = Layout([], [])
        for n in range(1, params.stream_count + 1):
            name = f"{STREAM_PREFIX}{n}"
            # A leftover stream from an earlier run would hold data the consumers would read.
            if await client.get_stream(name) is not None:
                await client.delete_stream(name)
            stream = await client.create_stream(name)
            topic = await client.create_topic(stream.id, TOPIC_NAME, params.partition_count)
            layout.stream_ids.append(stream.id)
            layout.topic_ids.append(topic.topic.id)
        if params.mode in (BenchMode.BALANCED_CONSUMER_GROUP, BenchMode.BALANCED_PRODUCER_AND_CONSUMER_GROUP):
            for g in range(1, params.consumer_groups + 1):
                group = await client.create_consumer_group(
                    layout.stream_ids[0], layout.topic_ids[0], f"{GROUP_PREFIX}{g}"
                )
                layout.group_ids.append(group.id)
        return layout
    finally:
        await client.close()


async def _server_stats(params: BenchParams) -> dict[str, Any]:
    from dataclasses import asdict

    from tidelog.client import IggyClient

    client = await IggyClient.connect(
        params.server_address,
        username=params.username,
        password=params.password,
        reconnect_retries=0,
        protocol=params.protocol.value,
    )
    try:
        return asdict(await client.get_stats())
    finally:
        await client.close()


# ---------------------------------------------------------------------------------------------
# Actor plans


def _common(params: BenchParams) -> dict[str, Any]:
    return {
        "address": params.server_address,
        "protocol": params.protocol,
        "username": params.username,
        "password": params.password,
        "message_size": params.message_size,
        "messages_per_batch": params.messages_per_batch,
        "warmup_ns": int(params.warmup_s * 1e9),
        "sampling_ns": int(params.sampling_s * 1e9),
    }


def _producer_rate(params: BenchParams) -> float | None:
    if params.rate_limit_bytes_per_s is None:
        return None
    return params.rate_limit_bytes_per_s / max(1, params.producer_count)


def plan_actors(params: BenchParams, layout: Layout) -> tuple[list[ActorSpec], dict[int, int]]:
    """The measured actors, and the messages each consumer group (or pinned consumer, keyed by
    ``-actor_id``) must receive."""
    common = _common(params)
    specs: list[ActorSpec] = []
    expected: dict[int, int] = {}
    streams = len(layout.stream_ids)
    per_actor = params.message_batches * params.messages_per_batch
    rate = _producer_rate(params)
    mode = params.mode
    if mode == BenchMode.END_TO_END:
        for i in range(params.producers):
            s = i % streams
            specs.append(
                ActorSpec(
                    kind=ActorKind.PRODUCING_CONSUMER,
                    actor_id=i + 1,
                    slot=len(specs),
                    stream_id=layout.stream_ids[s],
                    topic_id=layout.topic_ids[s],
                    message_batches=params.message_batches,
                    rate_bytes_per_s=rate,
                    **common,
                )
            )
        return specs, expected
    if mode.has_producers:
        for i in range(params.producers):
            s = i % streams
            specs.append(
                ActorSpec(
                    kind=ActorKind.PRODUCER,
                    actor_id=i + 1,
                    slot=len(specs),
                    stream_id=layout.stream_ids[s],
                    topic_id=layout.topic_ids[s],
                    message_batches=params.message_batches,
                    balanced=not mode.pinned,
                    rate_bytes_per_s=rate,
                    **common,
                )
            )
    if not mode.has_consumers:
        return specs, expected
    # What lands in each stream: the producers of this run, or the prefill (one writer per
    # stream in pinned-consumer, one per consumer in balanced-consumer-group).
    if mode == BenchMode.PINNED_CONSUMER:
        per_stream = [per_actor] * streams
    elif mode == BenchMode.BALANCED_CONSUMER_GROUP:
        per_stream = [per_actor * params.consumers]
    else:
        per_stream = [0] * streams
        for i in range(params.producers):
            per_stream[i % streams] += per_actor
    for j in range(params.consumers):
        if mode.pinned:
            s = j % streams
            group_id = None
            expected[-(j + 1)] = per_stream[s]
            want = per_stream[s]
        else:
            s = 0
            group_id = layout.group_ids[j % len(layout.group_ids)]
            expected[group_id] = per_stream[0]
            want = per_stream[0]
        specs.append(
            ActorSpec(
                kind=ActorKind.CONSUMER,
                actor_id=j + 1,
                slot=len(specs),
                stream_id=layout.stream_ids[s],
                topic_id=layout.topic_ids[s],
                expected_messages=want,
                group_id=group_id,
                partitions_count=params.partition_count,
                **common,
            )
        )
    return specs, expected


def plan_prefill(params: BenchParams, layout: Layout) -> list[ActorSpec]:
    """Unmeasured producers that write what a consumer-only mode will read."""
    common = {**_common(params), "warmup_ns": 0}
    if params.mode == BenchMode.PINNED_CONSUMER:
        targets = list(range(len(layout.stream_ids)))
        balanced = False
    elif params.mode == BenchMode.BALANCED_CONSUMER_GROUP:
        targets = [0] * params.consumers
        balanced = True
    else:
        return []
    return [
        ActorSpec(
            kind=ActorKind.PRODUCER,
            actor_id=i + 1,
            slot=i,
            stream_id=layout.stream_ids[s],
            topic_id=layout.topic_ids[s],
            message_batches=params.message_batches,
            balanced=balanced,
            record=False,
            **common,
        )
        for i, s in enumerate(targets)
    ]


# ---------------------------------------------------------------------------------------------
# Running a phase


class ProgressDisplay:
    """A rich progress bar over the messages the actors have done so far.

    It is entered only after the actor processes are forked: rich refreshes from a thread, and
    a fork while that thread holds a stream lock would leave the child's copy locked forever.
    """

    def __init__(self, console: Any | None, label: str, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("[bold blue]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("messages"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._task = self._bar.add_task(label, total=total)

    def __enter__(self) -> ProgressDisplay:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def update(self, done: int) -> None:
        self._bar.update(self._task, completed=done)


def run_phase(
    specs: list[ActorSpec],
    group_ids: list[int],
    display: ProgressDisplay | None = None,
    timeout_s: float | None = None,
) -> PhaseResult:
    """Fork one process per spec, release them together, and return their results in order."""
    assert specs
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(len(specs) + 1)
    progress = ctx.RawArray("q", len(specs))
    results: mp.Queue[ActorResult] = ctx.Queue()
    group_totals = {g: ctx.Value("q", 0) for g in group_ids}
    procs = [
        ctx.Process(
            target=run_actor,
            args=(
                spec,
                barrier,
                progress,
                results,
                None if spec.group_id is None else group_totals[spec.group_id],
            ),
            name=f"bench-{spec.kind}-{spec.actor_id}",
            daemon=True,
        )
        for spec in specs
    ]
    for proc in procs:
        proc.start()
    collected: list[ActorResult] = []
    try:
        with display if display is not None else contextlib.nullcontext():
            try:
                barrier.wait(BARRIER_TIMEOUT_S)  # connected (and joined)
                barrier.wait(BARRIER_TIMEOUT_S)  # go
            except threading.BrokenBarrierError:
                pass  # an actor failed before the start: its result says why
            begin = time.perf_counter()
            deadline = None if timeout_s is None else begin + timeout_s
            while len(collected) < len(specs):
                try:
                    collected.append(results.get(timeout=_POLL_RESULTS_S))
                except queue.Empty:
                    _check_alive(procs, results)
                if display is not None:
                    display.update(sum(progress))
                if deadline is not None and time.perf_counter() > deadline:
                    raise BenchError(f"benchmark phase did not finish within {timeout_s} s")
            seconds = time.perf_counter() - begin
    finally:
        for proc in procs:
            proc.join(_JOIN_TIMEOUT_S)
            if proc.is_alive():
                proc.kill()
                proc.join()
    errors = [r for r in collected if r.error]
    if errors:
        first = errors[0]
        raise BenchError(f"{first.kind} {first.actor_id} failed: {first.error}")
    order = {(s.kind, s.actor_id): i for i, s in enumerate(specs)}
    collected.sort(key=lambda r: order[(r.kind, r.actor_id)])
    return PhaseResult(collected, seconds)


# ---------------------------------------------------------------------------------------------
# The whole benchmark


def run_benchmark(
    params: BenchParams, console: Any | None = None, timeout_s: float | None = None
) -> BenchRun:
    """Ceilings (optional), setup, prefill (consumer-only modes), the measured phase, stats."""
    from tidelog.bench.ceilings import measure_ceilings

    ceilings: list[Any] = []
    if params.ceilings:
        volume = params.ceiling_bytes or params.data_volume_bytes
        ceilings = measure_ceilings(params.ceiling_dir, volume)
    layout = asyncio.run(_setup(params))
    prefill_specs = plan_prefill(params, layout)
    prefill: PhaseResult | None = None
    if prefill_specs:
        total = sum(s.message_batches * s.messages_per_batch for s in prefill_specs)
        prefill = _with_progress(console, params.progress, "prefilling", total, prefill_specs, [], timeout_s)
    specs, expected = plan_actors(params, layout)
    total = sum(s.message_batches * s.messages_per_batch for s in specs)
    total += sum(s.expected_messages for s in specs if s.group_id is None)
    # A group's members share its total; count it once.
    total += sum(expected[g] for g in layout.group_ids if g in expected)
    phase = _with_progress(
        console, params.progress, "benchmarking", total, specs, layout.group_ids, timeout_s
    )
    stats = asyncio.run(_server_stats(params))
    return BenchRun(params, layout, phase.results, expected, phase.seconds, stats, ceilings, prefill)


def _with_progress(
    console: Any | None,
    enabled: bool,
    label: str,
    total: int,
    specs: list[ActorSpec],
    group_ids: list[int],
    timeout_s: float | None,
) -> PhaseResult:
    display = ProgressDisplay(console, label, total) if enabled else None
    return run_phase(specs, group_ids, display, timeout_s)


def _check_alive(procs: list[Any], results: Any) -> None:
    """An actor that died without reporting (killed, crashed interpreter) fails the phase."""
    dead = [p for p in procs if p.exitcode not in (None, 0)]
    if dead:
        time.sleep(_POLL_RESULTS_S)  # a result it put just before dying may still be in flight
        if results.empty():
            raise BenchError(f"actor process {dead[0].name} died with exit code {dead[0].exitcode}")

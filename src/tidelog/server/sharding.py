"""Which shards run where, and which shard owns what: sans-IO rules every shard computes alike.

- `parse_cpu_allocation` reads `system.sharding.cpu_allocation` as Iggy does ("all", a count,
  a range "a..b", "numa:auto", "numa:nodes=0,1;cores=4;no_ht=true"), and `allocate` turns it
  into one CPU per shard, given the machine's `Topology` (read by `read_topology` from sysfs,
  or built by a test).
- `owner_of` maps a partition to its owner shard by a stable function of (stream, topic,
  partition) that deals them out in turn, so no table of owners has to be kept in sync.
- `client_id` mints client ids whose top bits name the shard that holds the connection:
  unique across shards without coordination, and a reply routes back without a table.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

MAX_SHARDS = 256
# Client ids are u32 on the wire: the top 8 bits name the shard, the rest count per shard.
CLIENT_ID_SHARD_SHIFT = 24
CLIENT_ID_LOCAL_MASK = (1 << CLIENT_ID_SHARD_SHIFT) - 1


class ShardingError(ValueError):
    """A `cpu_allocation` that cannot be parsed or does not fit this machine."""


@dataclass(frozen=True)
class NumaAllocation:
    nodes: tuple[int, ...] = ()  # empty: every node
    cores_per_node: int = 0  # 0: every (allowed) core of each node
    no_ht: bool = True  # one CPU per physical core (hyperthread siblings left out)


@dataclass(frozen=True)
class CpuAllocation:
    """What the operator asked for; exactly one of the fields describes it."""

    all: bool = False
    count: int | None = None
    cpu_range: tuple[int, int] | None = None  # [first, end)
    numa: NumaAllocation | None = None


@dataclass(frozen=True)
class Topology:
    """The CPUs this process may run on, their NUMA nodes and their hyperthread siblings."""

    allowed: tuple[int, ...]
    node_of: dict[int, int] = field(default_factory=dict)  # cpu -> node (missing: node 0)
    siblings: dict[int, tuple[int, ...]] = field(default_factory=dict)  # cpu -> its core's cpus

    @property
    def nodes(self) -> list[int]:
        return sorted({self.node_of.get(cpu, 0) for cpu in self.allowed})


@dataclass(frozen=True)
class Placement:
    """Where one shard runs."""

    shard_id: int
    cpu: int | None  # None: not pinned
    node: int | None


def parse_cpu_allocation(text: str | int) -> CpuAllocation:
    """`system.sharding.cpu_allocation` as Iggy reads it. Raises ShardingError."""
    if isinstance(text, int) and not isinstance(text, bool):
        return _count(text)
    if not isinstance(text, str):
        raise ShardingError(f"cpu_allocation must be a string or a count, not {text!r}")
    value = text.strip()
    if value == "all":
        return CpuAllocation(all=True)
    if value.isdigit():
        return _count(int(value))
    match = re.fullmatch(r"(\d+)\.\.(\d+)", value)
    if match:
        first, end = int(match[1]), int(match[2])
        if first >= end:
            raise ShardingError(f"cpu_allocation range {value!r} is empty (write first..end, end excluded)")
        return CpuAllocation(cpu_range=(first, end))
    if value == "numa:auto":
        return CpuAllocation(numa=NumaAllocation())
    if value.startswith("numa:"):
        return CpuAllocation(numa=_numa(value.removeprefix("numa:")))
    raise ShardingError(
        f"cpu_allocation {value!r} is none of: all, a count, a range first..end, numa:auto, "
        "numa:nodes=0,1;cores=4;no_ht=true"
    )


def _count(n: int) -> CpuAllocation:
    if not 1 <= n <= MAX_SHARDS:
        raise ShardingError(f"cpu_allocation asks for {n} shards; between 1 and {MAX_SHARDS} can run")
    return CpuAllocation(count=n)


def _numa(spec: str) -> NumaAllocation:
    if not spec.strip():
        raise ShardingError("cpu_allocation numa: names no options (write numa:auto for every node)")
    nodes: tuple[int, ...] = ()
    cores, no_ht = 0, True
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        key, sep, raw = part.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not raw:
            raise ShardingError(f"cpu_allocation numa option {part!r} is not key=value")
        if key == "nodes":
            try:
                nodes = tuple(sorted({int(n) for n in raw.split(",")}))
            except ValueError:
                raise ShardingError(f"cpu_allocation numa nodes {raw!r} are not numbers like 0,1") from None
        elif key == "cores":
            if not raw.isdigit() or int(raw) == 0:
                raise ShardingError(f"cpu_allocation numa cores {raw!r} is not a count above 0")
            cores = int(raw)
        elif key == "no_ht":
            if raw not in ("true", "false"):
                raise ShardingError(f"cpu_allocation numa no_ht {raw!r} is not true or false")
            no_ht = raw == "true"
        else:
            raise ShardingError(f"cpu_allocation numa option {key!r} is none of nodes, cores, no_ht")
    return NumaAllocation(nodes, cores, no_ht)


def allocate(allocation: CpuAllocation, topology: Topology) -> list[Placement]:
    """One shard per allocated CPU, in CPU order within each node. Raises ShardingError when
    the allocation asks for CPUs or nodes this process may not use."""
    allowed = sorted(topology.allowed)
    if not allowed:
        raise ShardingError("no CPU is available to this process")
    if allocation.all:
        cpus = allowed
    elif allocation.count is not None:
        # More shards than CPUs share them, in turn (a small machine or container still runs
        # the layout it is asked for; `oversubscribed` says so).
        cpus = [allowed[i % len(allowed)] for i in range(allocation.count)]
    elif allocation.cpu_range is not None:
        first, end = allocation.cpu_range
        cpus = list(range(first, end))
        missing = [c for c in cpus if c not in topology.allowed]
        if missing:
            raise ShardingError(
                f"cpu_allocation {first}..{end} names CPUs {missing} this process may not use "
                f"(available: {_cpulist(allowed)})"
            )
    else:
        assert allocation.numa is not None
        cpus = _numa_cpus(allocation.numa, topology)
    return [Placement(i, cpu, topology.node_of.get(cpu, 0)) for i, cpu in enumerate(cpus)]


def _numa_cpus(numa: NumaAllocation, topology: Topology) -> list[int]:
    present = topology.nodes
    nodes = list(numa.nodes) or present
    absent = [n for n in nodes if n not in present]
    if absent:
        raise ShardingError(f"cpu_allocation names NUMA nodes {absent}; this machine has {present}")
    cpus: list[int] = []
    for node in nodes:
        mine = sorted(c for c in topology.allowed if topology.node_of.get(c, 0) == node)
        if numa.no_ht:  # the first CPU of each physical core
            mine = [c for c in mine if not _has_sibling(c, topology)]
        if numa.cores_per_node:
            if numa.cores_per_node > len(mine):
                raise ShardingError(
                    f"cpu_allocation asks for {numa.cores_per_node} cores on NUMA node {node}, "
                    f"which has {len(mine)} to offer"
                )
            mine = mine[: numa.cores_per_node]
        cpus += mine
    return cpus


def oversubscribed(placements: list[Placement]) -> bool:
    """Whether some shards share a CPU."""
    cpus = [p.cpu for p in placements if p.cpu is not None]
    return len(set(cpus)) < len(cpus)


def _has_sibling(cpu: int, topology: Topology) -> bool:
    """Whether a lower hyperthread sibling of `cpu` is one this process may use (else `cpu`
    stands for its core)."""
    return any(s < cpu and s in topology.allowed for s in topology.siblings.get(cpu, ()))


def _cpulist(cpus: list[int]) -> str:
    return ",".join(map(str, cpus))


def parse_cpulist(text: str) -> list[int]:
    """A sysfs CPU or node list ("0-3,8,10-11")."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, sep, last = part.partition("-")
        out += range(int(first), int(last) + 1) if sep else [int(first)]
    return out


def read_topology(sysfs: Path = Path("/sys/devices/system")) -> Topology:
    """This process's CPUs (`sched_getaffinity`), with their nodes and siblings from sysfs
    where it has them (a machine or container without them is one node, no siblings)."""
    allowed = tuple(sorted(os.sched_getaffinity(0)))
    node_of: dict[int, int] = {}
    for node_dir in sorted((sysfs / "node").glob("node[0-9]*")):
        try:
            cpus = parse_cpulist((node_dir / "cpulist").read_text())
        except (OSError, ValueError):
            continue
        node = int(node_dir.name.removeprefix("node"))
        node_of.update({cpu: node for cpu in cpus})
    siblings: dict[int, tuple[int, ...]] = {}
    for cpu in allowed:
        topo = sysfs / "cpu" / f"cpu{cpu}" / "topology"
        for name in ("core_cpus_list", "thread_siblings_list"):
            try:
                siblings[cpu] = tuple(parse_cpulist((topo / name).read_text()))
                break
            except (OSError, ValueError):
                continue
    return Topology(allowed, node_of, siblings)


def owner_of(stream_id: int, topic_id: int, partition_id: int, shards: int) -> int:
    """The shard that owns a partition: the same answer in every shard, on every start, as
    long as the shard count is the same. The partitions of a topic are dealt out in turn, and
    so are the same partitions of consecutive streams or topics: a producer per partition, or
    per stream, lands on every shard alike. (A hash of the three ids, as Iggy uses, leaves that
    to chance: with two shards it put both of the benchmark's two streams on one shard.)"""
    assert shards >= 1
    return (stream_id + topic_id + partition_id) % shards


def client_id(shard_id: int, local: int) -> int:
    """The wire client id of the `local`-th client of a shard (1-based, below 2^24)."""
    assert 0 <= shard_id < MAX_SHARDS and 0 < local <= CLIENT_ID_LOCAL_MASK
    return shard_id << CLIENT_ID_SHARD_SHIFT | local


def shard_of_client(client: int) -> int:
    return client >> CLIENT_ID_SHARD_SHIFT

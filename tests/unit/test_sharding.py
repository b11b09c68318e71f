"""The sharding rules: cpu_allocation as Iggy reads it, placements, ownership, client ids."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidelog.server.sharding import (
    CpuAllocation,
    NumaAllocation,
    Placement,
    ShardingError,
    Topology,
    allocate,
    client_id,
    oversubscribed,
    owner_of,
    parse_cpu_allocation,
    parse_cpulist,
    read_topology,
    shard_of_client,
)

# Two nodes of 4 cores with 2 hyperthreads each: cpus 0-3 and 8-11 on node 0, 4-7 and 12-15
# on node 1 (cpu n and n + 8 are siblings), as Linux numbers them.
TWO_NODES = Topology(
    allowed=tuple(range(16)),
    node_of={c: (c % 8) // 4 for c in range(16)},
    siblings={c: (c % 8, c % 8 + 8) for c in range(16)},
)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("all", CpuAllocation(all=True)),
        ("4", CpuAllocation(count=4)),
        (2, CpuAllocation(count=2)),
        ("5..8", CpuAllocation(cpu_range=(5, 8))),
        ("numa:auto", CpuAllocation(numa=NumaAllocation())),
        ("numa:nodes=0,1;cores=4;no_ht=true", CpuAllocation(numa=NumaAllocation((0, 1), 4, True))),
        ("numa:nodes=1;no_ht=false", CpuAllocation(numa=NumaAllocation((1,), 0, False))),
    ],
)
def test_parse_cpu_allocation_given_each_form_when_parsed_should_give_what_it_names(
    text: str | int, want: CpuAllocation
) -> None:
    assert parse_cpu_allocation(text) == want


@pytest.mark.parametrize(
    "text",
    [
        "",
        "none",
        "0",
        "257",
        "8..5",
        "3..3",
        "numa:",
        "numa:nodes=a",
        "numa:cores=0",
        "numa:x=1",
        "numa:no_ht=yes",
        "1-4",
    ],
)
def test_parse_cpu_allocation_given_a_malformed_value_when_parsed_should_raise_naming_it(text: str) -> None:
    with pytest.raises(ShardingError):
        parse_cpu_allocation(text)


def test_allocate_given_all_count_and_range_when_allocated_should_pin_one_shard_per_cpu() -> None:
    machine = Topology(allowed=(0, 1, 2, 5))
    assert [p.cpu for p in allocate(CpuAllocation(all=True), machine)] == [0, 1, 2, 5]
    assert allocate(CpuAllocation(count=2), machine) == [Placement(0, 0, 0), Placement(1, 1, 0)]
    assert [p.cpu for p in allocate(CpuAllocation(cpu_range=(1, 3)), machine)] == [1, 2]
    # More shards than CPUs: they take the CPUs in turn.
    crowded = allocate(CpuAllocation(count=6), machine)
    assert [p.cpu for p in crowded] == [0, 1, 2, 5, 0, 1] and oversubscribed(crowded)
    assert not oversubscribed(allocate(CpuAllocation(count=4), machine))
    with pytest.raises(ShardingError, match=r"\[3, 4\]"):
        allocate(CpuAllocation(cpu_range=(2, 5)), machine)


def test_allocate_given_numa_options_when_allocated_should_take_cores_of_the_named_nodes() -> None:
    auto = allocate(CpuAllocation(numa=NumaAllocation()), TWO_NODES)
    assert [(p.cpu, p.node) for p in auto] == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 1), (5, 1), (6, 1), (7, 1)]
    two = allocate(parse_cpu_allocation("numa:nodes=1;cores=2;no_ht=true"), TWO_NODES)
    assert [(p.shard_id, p.cpu, p.node) for p in two] == [(0, 4, 1), (1, 5, 1)]
    with_ht = allocate(parse_cpu_allocation("numa:nodes=0;no_ht=false"), TWO_NODES)
    assert [p.cpu for p in with_ht] == [0, 1, 2, 3, 8, 9, 10, 11]
    with pytest.raises(ShardingError, match="nodes"):
        allocate(parse_cpu_allocation("numa:nodes=2"), TWO_NODES)
    with pytest.raises(ShardingError, match="5 cores"):
        allocate(parse_cpu_allocation("numa:cores=5"), TWO_NODES)


def test_allocate_given_a_sibling_outside_the_affinity_when_no_ht_should_let_the_other_stand_for_it() -> None:
    machine = Topology(allowed=(8, 9, 1), node_of=TWO_NODES.node_of, siblings=TWO_NODES.siblings)
    assert [p.cpu for p in allocate(CpuAllocation(numa=NumaAllocation()), machine)] == [1, 8]


def test_parse_cpulist_given_sysfs_lists_when_parsed_should_expand_ranges() -> None:
    assert parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert parse_cpulist("") == []


def test_read_topology_given_a_sysfs_tree_when_read_should_give_nodes_and_siblings(tmp_path: Path) -> None:
    for node, cpus in ((0, "0-1"), (1, "2-3")):
        (tmp_path / "node" / f"node{node}").mkdir(parents=True)
        (tmp_path / "node" / f"node{node}" / "cpulist").write_text(cpus + "\n")
    for cpu in range(4):
        topo = tmp_path / "cpu" / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "thread_siblings_list").write_text(f"{cpu}\n")

    topology = read_topology(tmp_path)

    assert set(topology.allowed) == set(__import__("os").sched_getaffinity(0))
    assert {c: topology.node_of[c] for c in range(4)} == {0: 0, 1: 0, 2: 1, 3: 1}
    assert all(topology.siblings[c] == (c,) for c in topology.allowed if c < 4)


def test_read_topology_given_no_sysfs_when_read_should_give_one_node() -> None:
    topology = read_topology(Path("/nonexistent"))
    assert topology.nodes == [0] and topology.allowed


def test_owner_of_given_partitions_when_dealt_should_be_fixed_and_even() -> None:
    # Fixed answers: every shard, on every start, computes the same owner (a salted hash
    # would differ between processes).
    assert [owner_of(1, 1, p, 2) for p in range(6)] == [0, 1, 0, 1, 0, 1]
    assert [owner_of(1, 0, p, 4) for p in range(6)] == [1, 2, 3, 0, 1, 2]
    assert owner_of(7, 3, 2, 1) == 0
    # A topic's partitions, and one partition of consecutive streams, cover every shard evenly.
    for shards in (2, 3, 4, 8):
        every = range(shards)
        assert Counter(owner_of(3, 2, p, shards) for p in range(shards * 5)) == dict.fromkeys(every, 5)
        assert Counter(owner_of(s, 1, 0, shards) for s in range(1, shards * 3 + 1)) == dict.fromkeys(every, 3)


@given(st.integers(0, 255), st.integers(1, (1 << 24) - 1))
def test_client_id_given_shard_and_counter_when_minted_should_name_the_shard(shard: int, local: int) -> None:
    minted = client_id(shard, local)
    assert 0 < minted < 1 << 32 and shard_of_client(minted) == shard
    assert client_id(0, local) == local  # one shard: the ids of a single-process server

"""Collectives across nodes: one ring channel per NIC, flat bus bandwidth, all NICs for every collective.

Issue 12's "what it must show": large-message busbw flat across 2 … 128 nodes and not a third below
one node; a NIC-bound ring over 8 NICs per node at least 8 × the per-channel rate × the ring factor;
broadcast over all NICs; all-to-all as pairwise exchanges with per-peer latency; protocol overhead on
links (concurrency neither speeds it up nor counts it twice). Issue 18 item 6: full-mesh nodes of 28
and 1,000 GPUs run ring collectives (constructive Hamiltonian cycles, bounded memory).
"""

from __future__ import annotations

import math
import resource
import subprocess
import sys

import pytest

from tspsim.engine.collectives import choose, plan_collective, ring_orders_for
from tspsim.engine.sim import ReplayOptions, replay
from tspsim.opgraph import GraphBuilder
from tspsim.simulate.collective import busbw_factor, simulate_collective
from tspsim.spec.topology_file import load_topology

GiB = 2**30
NODES = (2, 4, 8, 16, 128)
LARGE = 16 * GiB


def _busbw(topo, op, group, nbytes, algorithm=""):
    c = choose(op, group, nbytes, topo, group[0] if op == "broadcast" else -1, algorithm)
    return nbytes / c.time_s / 1e9 * busbw_factor(op, len(group)), c


# ------------------------------------------------------------------------------------- flat bus bandwidth
@pytest.mark.parametrize("name", ["mi300x-128node", "h100-dgx-128node"])
def test_large_ring_busbw_is_flat_across_nodes(name):
    """The multi-channel ring's bandwidth term is the same on 2 … 128 nodes (one channel per NIC)."""
    topo = load_topology(name)
    for op in ("all_reduce", "all_gather", "reduce_scatter"):
        bws = []
        for k in NODES:
            group = tuple(range(8 * k))
            c = choose(op, group, 64 * GiB, topo, algorithm="ring")
            shp = plan_collective(op, group, 64 * GiB, topo, algorithm="ring", protocol=c.protocol).shape
            latency = sum(ph.latency_s for ph in shp.phases)
            bws.append(64 * GiB / (c.time_s - latency) / 1e9 * busbw_factor(op, len(group)))
        assert max(bws) / min(bws) < 1.01, (op, bws)


@pytest.mark.parametrize("name", ["mi300x-128node", "h100-dgx-128node"])
def test_large_allreduce_busbw_flat_within_5_percent(name):
    """16 GiB all-reduce, policy's choice: within 5% on 4 … 128 nodes (both presets) and on 2 nodes for
    the mesh; 2 DGX H100 nodes run NCCL's NVLS tree far above the ring (NCCL's "2-node aberration",
    measured 466-486 GB/s with the default algorithm vs 392 with the ring, collective-logs 06/10/11/18)."""
    topo = load_topology(name)
    bws = {k: _busbw(topo, "all_reduce", tuple(range(8 * k)), LARGE)[0] for k in NODES}
    core = [bws[k] for k in NODES if k > 2 or name.startswith("mi300x")]
    assert max(core) / min(core) < 1.05, bws
    assert bws[2] >= min(core)
    single = _busbw(topo, "all_reduce", tuple(range(8)), LARGE, "ring")[0]
    assert min(bws.values()) > single * 2 / 3  # not a third below one node's ring


@pytest.mark.parametrize("name", ["mi300x-128node", "h100-dgx-128node"])
@pytest.mark.parametrize("op", ["all_gather", "reduce_scatter"])
def test_large_gather_scatter_busbw_flat(name, op):
    """16 GiB all-gather / reduce-scatter within 5% on 2 … 16 nodes; on 128 nodes (1,024 ranks) NCCL's ring
    latency (1,023 steps, floored at the network post overhead) costs 9-13% of a 16 GiB transfer."""
    topo = load_topology(name)
    bws = {k: _busbw(topo, op, tuple(range(8 * k)), LARGE)[0] for k in NODES}
    small = [bws[k] for k in NODES if k <= 16]
    assert max(small) / min(small) < 1.05, bws
    assert bws[128] > 0.85 * max(small)
    assert min(bws.values()) > _busbw(topo, op, tuple(range(8)), LARGE)[0] * 2 / 3


@pytest.mark.parametrize("name", ["mi300x-128node", "h100-dgx-128node"])
@pytest.mark.parametrize("k", [2, 4, 16])
def test_nic_bound_ring_is_not_slower_than_its_channels(name, k):
    """A ring with one channel per NIC: busbw ≥ 8 channels × (the slowest link a channel crosses) minus
    its latency; each channel crosses one NIC (46 GB/s) and, on the mesh, xGMI links (48 × 0.94 GB/s)."""
    topo = load_topology(name)
    group = tuple(range(8 * k))
    entry = simulate_collective(topo, "all_reduce", group, 8 * GiB, algorithm="ring", protocol="Simple")
    assert entry["channels"] == 8
    nic = topo.inter.nic_GBps * topo.inter.nic_efficiency * topo.inter.collective_efficiency
    link = topo.intra.link_GBps * topo.intra.link_efficiency * topo.intra.collective_efficiency
    per_channel = min(nic, link) if topo.intra.kind == "full_mesh" else min(nic, link / 7)
    plan = plan_collective("all_reduce", group, 8 * GiB, topo, algorithm="ring", protocol="Simple")
    latency = plan.phases[0].latency_s
    bandwidth_time = entry["time_s"] - latency
    busbw = 8 * GiB / bandwidth_time / 1e9 * busbw_factor("all_reduce", len(group))
    assert busbw >= 8 * per_channel * (1 - 1e-9)


def test_every_nic_and_xgmi_link_carries_one_ring_channel(mi300x_128):
    """16 ranks on 2 mesh nodes: 8 channels, each crossing a node through a Hamiltonian path and
    leaving through its own NIC; all 2 × 56 xGMI links and 2 × 8 NICs each way carry exactly one."""
    group = tuple(range(16))
    b = GraphBuilder(group)
    b.collective("all_reduce", group, GiB, "ar", algorithm="ring")
    tl = replay(b.graph, mi300x_128, ReplayOptions(record_links=True, protocol="Simple"))
    busy = {i for i, series in tl.links.items() if any(rate > 0 for _, rate in series)}
    kinds = {}
    for i in busy:
        kinds.setdefault(mi300x_128.links[i].kind, set()).add(i)
    assert len(kinds["xgmi"]) == 2 * 56
    assert len(kinds["nic_up"]) == len(kinds["nic_down"]) == 16
    orders = ring_orders_for(group, mi300x_128)
    assert len(orders) == 8
    arcs = [(a, b) for order in orders for a, b in zip(order, order[1:] + order[:1])
            if a // 8 == b // 8]
    assert len(arcs) == len(set(arcs)) == 2 * 56  # each xGMI link in exactly one channel
    crossings = [(a % 8, b % 8) for order in orders for a, b in zip(order, order[1:] + order[:1]) if a // 8 != b // 8]
    assert all(a == b for a, b in crossings)  # rail-aligned: no cross-rail traffic
    assert sorted(a for a, _ in crossings) == sorted(list(range(8)) * 2)


def test_uneven_groups_use_several_channels(mi300x_128):
    """2 GPUs on one node and 3 on the next: 2 channels (the smaller node's NICs), not one ring."""
    group = (0, 1, 8, 9, 10)
    plan = plan_collective("all_reduce", group, GiB, mi300x_128, algorithm="ring")
    assert plan.channels == 2
    one = simulate_collective(mi300x_128, "all_reduce", (0, 8), GiB)["busbw_GBps"]
    assert simulate_collective(mi300x_128, "all_reduce", group, GiB)["busbw_GBps"] > 1.5 * one


def test_multinode_broadcast_uses_every_nic(mi300x_128):
    entry = simulate_collective(mi300x_128, "broadcast", tuple(range(32)), 4 * GiB)
    assert entry["algorithm"] == "ring" and entry["channels"] == 8
    assert entry["busbw_GBps"] > 300  # 8 NICs x ~45 GB/s, not one NIC's 46


# ------------------------------------------------------------------------------------- all-to-all
def test_all_to_all_is_pairwise_with_per_peer_latency(tmp_path):
    path = tmp_path / "a2a.yaml"
    path.write_text("name: a2a\ninherit: mi300x-128node\nnodes: 4\ninter:\n  p2p_concurrency: 4\n")
    topo = load_topology(str(path))
    group = tuple(range(32))
    plan = plan_collective("all_to_all", group, 32 * 2**20, topo, protocol="Simple")
    assert len(plan.phases) == math.ceil(31 / 4)  # rounds of 4 peers at a time
    assert plan.phases[0].latency_s == pytest.approx((topo.intra.ring_base_us + topo.inter.ring_step_us) * 1e-6)
    assert all(ph.latency_s == pytest.approx(topo.inter.ring_step_us * 1e-6) for ph in plan.phases[1:])
    sent, recv = plan.bytes_per_rank()
    for r in group:
        assert sent[r] == pytest.approx(31 / 32 * 32 * 2**20, rel=1e-12)
        assert recv[r] == pytest.approx(31 / 32 * 32 * 2**20, rel=1e-12)
    entry = simulate_collective(topo, "all_to_all", group, 32 * 2**20, protocol="Simple")
    assert entry["time_s"] >= sum(ph.latency_s for ph in plan.phases)


# ------------------------------------------------------------------------------------- protocol on links
@pytest.mark.parametrize("algorithm", ["ring", "one_shot"])
def test_concurrent_collectives_do_not_finish_sooner_than_back_to_back(mi300x, algorithm):
    """Two 8-GPU all-reduces at once take exactly as long as one after the other: the collective
    efficiency is wire overhead on the links, not a per-flow cap that two flows could exceed together."""
    node = tuple(range(8))
    nbytes = 256 * 2**20 if algorithm == "ring" else 2**20

    def run(streams):
        b = GraphBuilder(node)
        for i, stream in enumerate(streams):
            b.collective("all_reduce", node, nbytes, f"ar{i}", stream=stream, algorithm=algorithm)
        return replay(b.graph, mi300x).end_s

    one = run(["comm"])
    together = run(["comm", "dp"])
    after = run(["comm", "comm"])
    plan = plan_collective("all_reduce", node, nbytes, mi300x, algorithm=algorithm)
    latency = sum(ph.latency_s for ph in plan.phases)
    assert together == pytest.approx(2 * one - latency, rel=1e-9)  # the latencies overlap, the bytes do not
    assert after == pytest.approx(2 * one, rel=1e-9)


# ------------------------------------------------------------------------------------- large full-mesh nodes
def test_28_gpu_full_mesh_ring(tmp_path):
    """Issue 18.6: a 28-GPU full-mesh node used to raise RecursionError in the ring search."""
    path = tmp_path / "mesh28.yaml"
    path.write_text("name: mesh28\ninherit: mi300x-1node\ngpus_per_node: 28\n")
    topo = load_topology(str(path))
    entry = simulate_collective(topo, "all_reduce", tuple(range(28)), 16 * GiB)
    assert entry["algorithm"] == "ring"
    assert entry["channels"] == 26  # Walecki: 28 − 2 arc-disjoint Hamiltonian cycles
    # each GPU drives 26 of its 27 links: busbw = 26 channels x 45.1 GB/s (the latency is < 1% at 16 GiB)
    assert entry["busbw_GBps"] == pytest.approx(26 * 48 * 0.94, rel=0.02)


@pytest.mark.slow
def test_1000_gpu_full_mesh_ring_in_bounded_memory(tmp_path):
    """Issue 18.6: 1,000 GPUs per node took 13.6 GB and aborted. Now under a 4 GB address-space limit
    and a time bound, in a child process."""
    path = tmp_path / "mesh1000.yaml"
    path.write_text("name: mesh1000\ninherit: mi300x-1node\ngpus_per_node: 1000\n")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    result = subprocess.run(
        [sys.executable, "-m", "tspsim.cli", "collective", "-t", str(path), "--group", "1000", "--sizes", "1G",
         "--json"], capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"algorithm": "ring"' in result.stdout
    assert '"channels": 998' in result.stdout  # Walecki: 1000 − 2 arc-disjoint Hamiltonian cycles

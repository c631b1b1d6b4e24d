"""The algorithm × protocol policy: predictions equal simulations, no cliff, NCCL's latency formulas.

The policy predicts each candidate's time in isolation (latency + N_eff / rate per phase) and takes
the fastest (tspsim/engine/collectives/policy.py). These tests check that the prediction is what a
replay of the lone collective gives, that the chosen time never decreases with size (1 KB … 16 GB in
1.01× steps), and that latencies follow hardware.md §5 (trees grow with log2(nodes), rings with nodes).
"""

from __future__ import annotations

import math

import pytest

from tspsim.core.errors import TspsimError
from tspsim.engine.collectives import candidates, choose, phase_rates, plan_collective, predict_s, shape
from tspsim.simulate.collective import simulate_collective
from tspsim.spec.topology_file import load_topology

TOPOS = {n: load_topology(n) for n in ("mi300x-1node", "h100-dgx-1node", "mi300x-128node", "h100-dgx-128node")}
GiB = 2**30


def _sizes(lo: int = 1024, hi: int = 16 * GiB, step: float = 1.01) -> list[int]:
    out, x = [], float(lo)
    while x <= hi:
        n = math.ceil(x)
        if not out or n > out[-1]:
            out.append(n)
        x *= step
    return out


SIZES = _sizes()
GROUPS = [
    ("mi300x-1node", "all_reduce", tuple(range(8))),
    ("mi300x-1node", "all_gather", tuple(range(8))),
    ("mi300x-1node", "all_reduce", (0, 3, 5)),
    ("h100-dgx-1node", "all_reduce", tuple(range(8))),
    ("mi300x-128node", "all_reduce", tuple(range(16))),
    ("mi300x-128node", "all_reduce", tuple(range(0, 1024, 8))),
    ("mi300x-128node", "all_reduce", tuple(range(1024))),
    ("mi300x-128node", "reduce_scatter", tuple(range(1024))),
    ("mi300x-128node", "broadcast", tuple(range(24))),
    ("h100-dgx-128node", "all_reduce", tuple(range(16))),
    ("h100-dgx-128node", "all_reduce", tuple(range(1024))),
    ("h100-dgx-128node", "all_gather", tuple(range(64))),
]


@pytest.mark.parametrize(("name", "op", "group"), GROUPS, ids=[f"{n}-{o}-{len(g)}" for n, o, g in GROUPS])
def test_no_cliff_chosen_time_never_decreases(name, op, group):
    topo = TOPOS[name]
    root = group[0] if op == "broadcast" else -1
    times = [choose(op, group, n, topo, root).time_s for n in SIZES]
    drops = [(SIZES[i], times[i], times[i + 1]) for i in range(len(times) - 1) if times[i + 1] < times[i]]
    assert not drops, f"chosen time decreases at {drops[:3]}"
    # the prediction is latency + N_eff / rate of every candidate; none of them is ever below its latency
    assert times[0] > 0


@pytest.mark.parametrize(("name", "op", "group"), GROUPS[:6] + GROUPS[9:10] + GROUPS[11:],
                         ids=[f"{n}-{o}-{len(g)}" for n, o, g in GROUPS[:6] + GROUPS[9:10] + GROUPS[11:]])
@pytest.mark.parametrize("nbytes", [1024, 300_000, 4 * 2**20 + 12, 96 * 2**20, 3 * GiB])
def test_prediction_equals_the_replay(name, op, group, nbytes):
    topo = TOPOS[name]
    entry = simulate_collective(topo, op, group, nbytes)
    best = choose(op, group, nbytes, topo, group[0] if op == "broadcast" else -1)
    assert entry["algorithm"] == best.algorithm and entry["protocol"] == best.protocol
    assert entry["time_s"] == pytest.approx(best.time_s, rel=1e-9)


def test_replayed_time_has_no_cliff_across_the_policys_switch_points():
    """Where the chosen algorithm or protocol changes, the replayed time still does not drop."""
    topo = TOPOS["mi300x-128node"]
    group = tuple(range(16))
    prev = None
    switches = []
    for n in _sizes(1024, 4 * GiB, 1.05):
        c = choose("all_reduce", group, n, topo)
        if prev is not None and (c.algorithm, c.protocol) != prev[1]:
            switches.append(prev[0])
        prev = (n, (c.algorithm, c.protocol))
    assert len(switches) >= 2  # tree/LL → ring/LL → … → ring/Simple
    for n in switches:
        lo = simulate_collective(topo, "all_reduce", group, n)["time_s"]
        hi = simulate_collective(topo, "all_reduce", group, math.ceil(n * 1.05) + 1)["time_s"]
        assert hi >= lo


# ------------------------------------------------------------------------------------- latency formulas
def _latency_us(topo, kind, group, alg, proto):
    return sum(ph.latency_s for ph in shape(kind, group, topo, -1, alg, proto).phases) * 1e6


@pytest.mark.parametrize("per_node", [1, 8])
def test_tree_latency_grows_with_log2_nodes_ring_with_nodes(per_node):
    """hardware.md §5: tree = base + 2((ranks/node − 1)·intra + log2(nodes)·net); ring = base +
    (s − s_net)·max(intra, net overhead) + s_net·net, s = 2(p−1), s_net = 2·nodes (RCCL LL constants)."""
    topo = TOPOS["mi300x-128node"]
    ll = topo.intra.ll
    net = topo.inter.ll
    tree, ring = {}, {}
    for k in (2, 4, 8, 16, 32, 64, 128):
        group = tuple(n * 8 + j for n in range(k) for j in range(per_node))
        p = len(group)
        tree[k] = _latency_us(topo, "all_reduce", group, "tree", "LL")
        assert tree[k] == pytest.approx(ll.base_us + 2 * ((per_node - 1) * ll.tree_step_us
                                                         + math.log2(k) * net.tree_step_us), rel=1e-12)
        ring[k] = _latency_us(topo, "all_reduce", group, "ring", "LL")
        s = 2 * (p - 1)
        s_net = min(s, 2 * k)
        intra = max(ll.ring_step_us, topo.inter.net_overhead_us)
        assert ring[k] == pytest.approx(ll.base_us + (s - s_net) * intra + s_net * net.ring_step_us, rel=1e-12)
    # the tree adds the same amount per doubling of nodes; the ring's increments double with the nodes
    steps = [tree[2 * k] - tree[k] for k in (2, 4, 8, 16, 32, 64)]
    assert max(steps) == pytest.approx(min(steps), rel=1e-9)
    ring_steps = [ring[2 * k] - ring[k] for k in (2, 4, 8, 16, 32, 64)]
    for a, b in zip(ring_steps, ring_steps[1:]):
        assert b == pytest.approx(2 * a, rel=1e-9)
    # and small messages go to the tree once there are several nodes
    for k in (4, 16, 128):
        group = tuple(n * 8 + j for n in range(k) for j in range(per_node))
        assert choose("all_reduce", group, 1024, topo).algorithm == "tree"


def test_nccl_ring_latency_example():
    """hardware.md §5: 8-GPU H100 ring all-reduce, LL: 6.6 + 14 × 0.6 = 15 µs; Simple: 8.4 + 14 × 3.4 = 56 µs."""
    topo = TOPOS["h100-dgx-1node"]
    node = tuple(range(8))
    assert _latency_us(topo, "all_reduce", node, "ring", "LL") == pytest.approx(15.0, rel=1e-12)
    assert _latency_us(topo, "all_reduce", node, "ring", "Simple") == pytest.approx(56.0, rel=1e-12)


def test_protocol_bandwidth_factors_are_wire_overhead():
    """NCCL's model: LL reaches about half of Simple's bandwidth, LL128 about 92% (hardware.md §8)."""
    topo = TOPOS["h100-dgx-128node"]
    group = tuple(range(32))
    n = 64 * GiB

    def bw_time(proto):
        shp = shape("all_reduce", group, topo, -1, "ring", proto)
        return predict_s(topo, shp, n) - sum(ph.latency_s for ph in shp.phases)

    assert bw_time("Simple") / bw_time("LL") == pytest.approx(0.5, rel=1e-9)
    assert bw_time("Simple") / bw_time("LL128") == pytest.approx(0.92, rel=1e-9)
    assert choose("all_reduce", group, n, topo, algorithm="ring").protocol == "Simple"
    assert choose("all_reduce", group, 4096, topo, algorithm="ring").protocol == "LL"


def test_mi300x_has_no_ll128():
    """RCCL's MI300 model lists LL and Simple only [S22]: LL128 is not offered there."""
    protos = {c.protocol for c in candidates("all_reduce", tuple(range(16)), 2**20, TOPOS["mi300x-128node"],
                                            everything=True)}
    assert protos == {"LL", "Simple"}


# ------------------------------------------------------------------------------------- hierarchical pipeline
def test_hierarchical_phases_overlap_with_one_start_up():
    topo = TOPOS["mi300x-128node"]
    group = tuple(range(16))
    plan = plan_collective("all_reduce", group, GiB, topo, algorithm="hier", protocol="Simple")
    assert len(plan.phases) == 1  # RS, inter-node ring and AG stream together
    t = simulate_collective(topo, "all_reduce", group, GiB, algorithm="hier", protocol="Simple")["time_s"]
    # serial phases would pay each stage's own time: intra RS and AG at 7 links x 45.1 GB/s per GPU, the
    # per-rail ring at 46 GB/s per NIC; the pipelined collective pays about the slowest one
    rs = 7 / 8 * GiB / (7 * 48e9 * 0.94)
    ring = 2 * 1 / 2 * GiB / 8 / 46e9
    assert t < 0.8 * (2 * rs + ring)
    assert t >= max(2 * rs, ring)
    small = simulate_collective(topo, "all_reduce", group, 1024, algorithm="hier", protocol="LL")["time_s"]
    ll = topo.intra.ll
    assert small < ll.base_us * 1e-6 * 3  # one start-up latency, not three


def test_chunk_size_sets_the_pipeline_fill():
    topo = TOPOS["mi300x-128node"]
    group = tuple(range(32))
    phase = plan_collective("all_reduce", group, 64 * 2**20, topo, algorithm="hier").phases[0]
    pipe = phase.pipeline
    assert pipe is not None and pipe.max_chunk_bytes == 524288  # NCCL's default: 4 MiB buffer / 8 steps
    # NCCL's automatic chunk: halve until each pipe holds at least 16 · depth chunks, not below 32 KiB
    assert pipe.chunk_bytes(64 * GiB) == 524288
    assert pipe.chunk_bytes(1024) == 32768
    n = 64 * 2**20
    c = pipe.chunk_bytes(n)
    assert n / (pipe.pipes * c) >= 16 * pipe.depth
    assert phase.progress(n) == n + pipe.stages * min(n, pipe.pipes * c)


# ------------------------------------------------------------------------------------- folding safety
def test_fold_safe_policy_leaves_out_the_tree():
    topo = TOPOS["mi300x-128node"]
    group = tuple(range(0, 1024, 8))
    free = choose("all_reduce", group, 25 * 2**20, topo)
    safe = choose("all_reduce", group, 25 * 2**20, topo, fold_safe_only=True)
    assert free.algorithm == "tree"
    assert safe.algorithm == "ring"
    assert all(c.algorithm != "tree" for c in candidates("all_reduce", group, 1024, topo, fold_safe_only=True))


# ------------------------------------------------------------------------------------------ NVLS tree
def test_fold_safe_policy_leaves_out_the_nvls_tree():
    topo = TOPOS["h100-dgx-128node"]
    group = tuple(range(16))
    assert choose("all_reduce", group, GiB, topo).algorithm == "nvls_tree"
    safe = candidates("all_reduce", group, GiB, topo, fold_safe_only=True)
    assert safe and all(c.algorithm not in ("tree", "nvls_tree") for c in safe)


@pytest.mark.parametrize(("nodes", "latency_us"), [(2, 2 * (25 + 18)), (4, 2 * (25 + 2 * 18)),
                                                   (128, 2 * (25 + 7 * 18))])
def test_nvls_tree_latency_is_nccls(nodes, latency_us):
    """NCCL's NVLS_TREE latency: 2 · (NVLS NVLink step + log2(nodes) · NVLS network step), 25 and 18 µs."""
    topo = TOPOS["h100-dgx-128node"]
    plan = plan_collective("all_reduce", tuple(range(8 * nodes)), GiB, topo, algorithm="nvls_tree")
    assert plan.phases[0].latency_s == pytest.approx(latency_us * 1e-6, rel=1e-12)


def test_two_node_nvls_tree_is_bound_by_the_switch_engine():
    """Two nodes: each NIC moves N/8 each way, the node's NVLS engine N at its measured single-node rate."""
    topo = TOPOS["h100-dgx-128node"]
    plan = plan_collective("all_reduce", tuple(range(16)), 64 * GiB, topo, algorithm="nvls_tree")
    engine_algbw = topo.intra.nvls.busbw_GBps * 8 / (2 * 7) * 1e9
    assert phase_rates(topo, plan.shape)[0] == pytest.approx(engine_algbw, rel=1e-12)
    four = plan_collective("all_reduce", tuple(range(32)), 64 * GiB, topo, algorithm="nvls_tree")
    nic = topo.inter.nic_GBps * topo.inter.nic_efficiency * 1e9
    assert phase_rates(topo, four.shape)[0] == pytest.approx(nic * 8 / 2, rel=1e-12)  # inner node: 2N/8 per NIC


@pytest.mark.parametrize(("name", "op", "group", "words"), [
    ("mi300x-128node", "all_reduce", tuple(range(16)), "no NVLink SHARP"),
    ("h100-dgx-128node", "all_reduce", tuple(range(8)), "runs across nodes"),
    ("h100-dgx-128node", "all_gather", tuple(range(16)), "implements all_reduce"),
    ("h100-dgx-128node", "all_reduce", (0, 8, 16, 24), "at least two"),
    ("h100-dgx-128node", "all_reduce", (0, 1, 8, 10), "at least two"),
    ("dgx-a100-128node", "all_reduce", tuple(range(16)), "no NVLink SHARP"),
])
def test_forced_nvls_tree_where_it_does_not_apply(name, op, group, words):
    with pytest.raises(TspsimError, match=words):
        choose(op, group, GiB, load_topology(name), algorithm="nvls_tree")

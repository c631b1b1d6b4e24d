"""Folding (design.md §7): simulating one replica and mirroring the others must equal the full simulation.

On a 4-node (32-GPU) MI300X topology, each configuration is replayed twice — ``build_graph(point,
fold=True)`` and ``fold=False`` — and step time, peak memory and rank 0's bytes sent must agree to
1e-12 (relative). The folded graph must hold exactly one replica's ranks, or one whole node when a
replica is smaller than a node.
"""

from __future__ import annotations

import pytest

from tspsim.engine.sim import replay
from tspsim.opgraph import GraphBuilder
from tspsim.simulate import Point, build_graph, simulate
from tspsim.spec.topology_file import load_topology

CASES = [
    ("tsp", {"degree": 8}),            # 4 replicas of one node
    ("tsp", {"degree": 4}),            # 8 replicas, two per node
    ("tp+sp", {"tp": 8, "sp": 2}),     # 2 replicas spanning 2 nodes each
    ("tp", {"degree": 4}),
    ("sp", {}),                        # default D = 8
    ("satp-seq", {"degree": 8}),
    ("tp+sp", {"tp": 4, "sp": 4}),     # 2 replicas of 2 nodes, hierarchical K/V gathers
    ("tsp", {"degree": 8, "options": (("zero1", True),)}),  # DP reduce-scatter + all-gather
]
PARAMS = [pytest.param(mode, sched, kw, id=f"{mode}-{sched}-{i}")
          for mode in ("train", "forward") for i, (sched, kw) in enumerate(CASES)]


@pytest.fixture(scope="module")
def fold_model(model_yaml) -> str:
    return model_yaml("fold-small", hidden=1024, layers=2, q_heads=16, kv_heads=16, head_dim=64, ffn_hidden=4096,
                      vocab=2048)


def _peak(tl) -> int:
    return max(tl.peak_memory(r)[0] for r in tl.graph.ranks)


def _sent(tl, rank: int) -> float:
    return sum(tl.sent_bytes.get(rank, {}).values())


@pytest.mark.parametrize(("mode", "schedule", "kw"), PARAMS)
def test_folded_equals_full(mi300x_4node_yaml, fold_model, mode, schedule, kw):
    # train-satp-seq: its last DP gradient bucket is exactly 1 MiB, so it is all-reduced with "tree"
    point = Point(schedule, mi300x_4node_yaml, model=fold_model, mode=mode, seq_len=16384, **kw)
    g_fold, topo, _m, layout, _w, _o = build_graph(point, fold=True)
    g_full, *_ = build_graph(point, fold=False)
    assert layout.replicas > 1
    assert g_full.ranks == tuple(range(topo.world_size))
    if layout.replica_size >= topo.gpus_per_node:
        assert g_fold.ranks == layout.replica_ranks(0)
        assert g_fold.replica_nodes == layout.replica_size // topo.gpus_per_node
    else:
        assert g_fold.ranks == tuple(range(topo.gpus_per_node))
        assert g_fold.replica_nodes == 1
    assert len(g_fold.ops) * topo.world_size == len(g_full.ops) * len(g_fold.ranks)

    tl_fold, tl_full = replay(g_fold, topo), replay(g_full, topo)
    assert tl_fold.end_s == pytest.approx(tl_full.end_s, rel=1e-12)
    assert _peak(tl_fold) == pytest.approx(_peak(tl_full), rel=1e-12)
    assert _sent(tl_fold, 0) == pytest.approx(_sent(tl_full, 0), rel=1e-12)
    assert _sent(tl_fold, 0) > 0
    for kind, b in tl_full.sent_bytes[0].items():
        assert tl_fold.sent_bytes[0].get(kind, 0.0) == pytest.approx(b, rel=1e-12), kind
    # every simulated rank of the folded run matches its twin in the full run
    for r in g_fold.ranks:
        assert tl_fold.peak_memory(r)[0] == tl_full.peak_memory(r)[0]
        assert _sent(tl_fold, r) == pytest.approx(_sent(tl_full, r), rel=1e-12)
    # and the full run really is symmetric across replicas
    rs = layout.replica_size
    assert tl_full.peak_memory(rs)[0] == tl_full.peak_memory(0)[0]


def test_simulate_folds_by_default(mi300x_4node_yaml, fold_model):
    point = Point("tsp", mi300x_4node_yaml, model=fold_model, mode="train", seq_len=16384, degree=8)
    folded = simulate(point)
    full = simulate(point, fold=False)
    assert folded.timeline.graph.ranks == tuple(range(8))
    assert folded.entry["step_time_s"] == pytest.approx(full.entry["step_time_s"], rel=1e-12)
    assert folded.entry["peak_memory_gb"] == pytest.approx(full.entry["peak_memory_gb"], rel=1e-12)


@pytest.mark.parametrize(("kind", "per_node", "nbytes"), [
    # DP groups reach across replicas: the policy uses only node-symmetric algorithms (rings, not trees)
    ("all_reduce", 1, 1 << 20),
    ("all_reduce", 1, (1 << 20) + 8),
    ("all_gather", 1, 1 << 20), ("reduce_scatter", 1, 1 << 20),
    # two ranks per node: multi-channel rings alternating direction from node to node
    ("all_reduce", 2, 1 << 21),
    ("all_reduce", 2, (1 << 21) + 16),
    ("reduce_scatter", 2, 1 << 21), ("all_gather", 2, 1 << 21),
])
def test_folded_cross_node_collective_minimal(mi300x_4node_yaml, kind, per_node, nbytes):
    """DP-style collectives over the ranks at one position of every replica (replicas of 8 / per_node GPUs):
    folded replay (node 0 simulated, replica_nodes=1) vs full replay of the same collectives."""
    topo = load_topology(mi300x_4node_yaml)
    replica = 8 // per_node

    def graph(ranks, replica_nodes):
        b = GraphBuilder(ranks, replica_nodes=replica_nodes, meta={"replica_size": replica})
        for r in range(replica):
            b.collective(kind, tuple(range(r, 32, replica)), nbytes, "dp.grad", stream="dp")
        return b.graph

    folded = replay(graph(tuple(range(8)), 1), topo)
    full = replay(graph(tuple(range(32)), 0), topo)
    assert folded.end_s == pytest.approx(full.end_s, rel=1e-12)
    assert sum(folded.sent_bytes[0].values()) == pytest.approx(sum(full.sent_bytes[0].values()), rel=1e-12)

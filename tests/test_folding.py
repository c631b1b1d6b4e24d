"""Folding (design.md §7): simulating one replica and mirroring the others must equal the full simulation.

On a 4-node (32-GPU) MI300X topology, each configuration is replayed twice — ``build_graph(point,
fold=True)`` and ``fold=False`` — and step time, peak memory and rank 0's bytes sent must agree to
1e-12 (relative). The folded graph must hold exactly one replica's ranks, or one whole node when a
replica is smaller than a node.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tspsim.core.errors import ConfigError
from tspsim.engine.sim import replay
from tspsim.opgraph import GraphBuilder
from tspsim.simulate import Point, build_graph, simulate
from tspsim.spec.fold import FoldPlan
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


# ---------------------------------------------------------------------------------------------------------------
# Property (issue 18, item 1): folded == --full for random small layouts, with --gpus below, at and above a node.
FOLD_SCHEDULES = ("tsp", "tp", "satp-seq", "satp-batch", "sp", "tp+sp")
FOLD_MODES = ("train", "forward", "prefill", "decode", "generate")
UNCOMPARED = {"sim_wall_s", "sim_events", "collective_algorithms"}
"""Wall time and event counts measure the simulation itself; ``collective_algorithms`` counts the collectives
simulated, which a fold (one unit instead of all replicas) has fewer of by design."""

FOLD_MODEL = """name: fold-tiny
hidden: 2048
layers: 2
q_heads: 8
kv_heads: 4
head_dim: 256
ffn_hidden: 4096
gated_mlp: true
vocab: 4096
"""


@pytest.fixture(scope="module")
def small_cluster(tmp_path_factory):
    """Factory: the YAML path of a small cluster (nodes × gpus_per_node, fabric, fat-tree shape)."""
    root = tmp_path_factory.mktemp("fold-clusters")
    (root / "fold-tiny.yaml").write_text(FOLD_MODEL)

    def make(nodes: int, gpn: int, fabric: str, leaf: int = 2, oversub: float = 1.0) -> str:
        name = f"{fabric}-{nodes}x{gpn}-l{leaf}-o{oversub:g}"
        path = root / f"{name}.yaml"
        if not path.exists():
            parent = "mi300x-128node" if fabric == "mesh" else "h100-dgx-128node"
            inter = "" if fabric == "mesh" else f"inter:\n  nodes_per_leaf: {leaf}\n  oversubscription: {oversub}\n"
            path.write_text(f"name: {name}\ninherit: {parent}\nnodes: {nodes}\ngpus_per_node: {gpn}\n{inter}")
        return str(path)

    make.model = str(root / "fold-tiny.yaml")
    return make


@st.composite
def small_layouts(draw, schedule: str):
    """(topology kwargs, Point kwargs): a small cluster and a layout whose --gpus is below, at or above a node."""
    gpn = draw(st.sampled_from([2, 4]))
    nodes = draw(st.integers(1, 4))
    fabric = draw(st.sampled_from(["mesh", "fat-tree"]))
    cluster = {"nodes": nodes, "gpn": gpn, "fabric": fabric,
               "leaf": draw(st.sampled_from([1, 2])), "oversub": draw(st.sampled_from([1.0, 2.0]))}
    if schedule == "tp+sp":
        kw = {"tp": draw(st.sampled_from([1, 2])), "sp": draw(st.sampled_from([1, 2]))}
        replica = kw["tp"] * kw["sp"]
    else:
        kw = {"degree": draw(st.sampled_from([1, 2, 4]))}
        replica = kw["degree"]
    world = nodes * gpn
    assume(replica <= world and (replica <= gpn or replica % gpn == 0))
    where = draw(st.sampled_from(["below", "at", "above"]))
    counts = {"below": [k for k in range(1, world // replica + 1) if k * replica < gpn],
              "at": [k for k in range(1, world // replica + 1) if k * replica == gpn],
              "above": [k for k in range(1, world // replica + 1) if k * replica > gpn]}[where]
    assume(counts)
    kw["gpus"] = replica * draw(st.sampled_from(counts))
    return cluster, kw


def _entry_diff(a: dict, b: dict, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) if not (path == "" and k in UNCOMPARED)
                for d in _entry_diff(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if a == pytest.approx(b, rel=1e-9, abs=1e-15) else [f"{path}: folded {a!r}, full {b!r}"]
    return [] if a == b else [f"{path}: folded {a!r}, full {b!r}"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", FOLD_MODES)
@pytest.mark.parametrize("schedule", FOLD_SCHEDULES)
@settings(max_examples=12, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
@given(data=st.data())
def test_fold_equals_full_on_small_clusters(small_cluster, schedule, mode, data):
    cluster, kw = data.draw(small_layouts(schedule))
    point = Point(schedule, small_cluster(**cluster), model=small_cluster.model, mode=mode, seq_len=1024, batch=4,
                  decode_tokens=2 if mode in ("decode", "generate") else 0, search_max_batch=False, **kw)
    try:
        folded = simulate(point)
    except ConfigError:
        assume(False)
    full = simulate(point, fold=False)
    assert full.timeline.graph.replica_nodes == 0
    diff = _entry_diff(folded.entry, full.entry)
    assert not diff, (cluster, kw, diff[:4])


# Item 2: a folded graph replayed on another node shape is re-expanded when the fold holds there, else refused.
def test_folded_graph_replays_on_another_node_shape(small_cluster):
    point = Point("tp", small_cluster(2, 4, "mesh"), model=small_cluster.model, seq_len=1024, degree=2)
    g_fold = build_graph(point, fold=True)[0]
    g_full = build_graph(point, fold=False)[0]
    assert g_fold.ranks == tuple(range(4)) and g_fold.replica_nodes == 1
    other = load_topology(small_cluster(4, 2, "mesh"))  # 8 GPUs as 4 × 2: the 4-rank unit is 2 nodes there
    assert replay(g_fold, other).end_s == pytest.approx(replay(g_full, other).end_s, rel=1e-12)


def test_folded_graph_on_a_shape_it_does_not_fold_to_is_refused(small_cluster, tmp_path):
    from click.testing import CliRunner

    from tspsim.cli import cli

    point = Point("tp", small_cluster(2, 4, "mesh"), model=small_cluster.model, seq_len=1024, degree=2)
    path = tmp_path / "folded.json"
    build_graph(point, fold=True)[0].save(path)
    result = CliRunner().invoke(cli, ["replay", str(path), "-t", small_cluster(1, 8, "mesh")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "folded" in lines[0] and "--full" in lines[0], lines
    full = tmp_path / "full.json"
    build_graph(point, fold=False)[0].save(full)
    assert CliRunner().invoke(cli, ["replay", str(full), "-t", small_cluster(1, 8, "mesh")]).exit_code == 0


@settings(max_examples=300, deadline=None)
@given(g=st.sampled_from([1, 2, 4, 8]), unit=st.integers(1, 6), slabs=st.integers(0, 3),
       peer=st.sampled_from([1, 2, 4, 8, 16]), nodes=st.integers(1, 40), cut=st.integers(0, 7))
def test_fold_plan_simulated_ranks_scan_nodes_as_the_rank_definition(g, unit, slabs, peer, nodes, cut):
    """FoldPlan.simulated scans nodes; it must equal "the ranks of [0, world) that are their own twin"."""
    plan = FoldPlan(gpus_per_node=g, unit_nodes=unit, slab_nodes=slabs * unit, peer=peer)
    world = max(1, nodes * g - cut % g)
    assert plan.simulated(world) == tuple(r for r in range(world) if plan.twin(r) == r)

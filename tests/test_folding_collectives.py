"""Folding stays exact for every collective the policy can choose when a replay folds replicas.

A folded replay simulates one replica and mirrors the others (design.md §7; tspsim/engine/comm.py).
Data-parallel collectives reach across replicas; the policy then only picks node-symmetric algorithms
(rings — Walecki paths alternating by node on an even node count, PXN cycles otherwise — and pairwise
all-to-all), in folded and full replays alike. Each case below replays the same DP collectives, with
intra-replica traffic running at the same time so that contention matters, folded and in full, and
requires identical times and bytes. The last test shows why the tree is left out: it is not exact.
"""

from __future__ import annotations

import pytest

from tspsim.engine.collectives import choose
from tspsim.engine.sim import replay
from tspsim.opgraph import GraphBuilder
from tspsim.spec.topology_file import load_topology

KINDS = ("all_reduce", "reduce_scatter", "all_gather", "all_to_all")
"""Collectives whose replicas are interchangeable. A broadcast or reduce across replicas has its root in one
of them, which breaks the symmetry folding relies on; no schedule issues one (DP sync is all-reduce, or
reduce-scatter + all-gather with ZeRO-1)."""


@pytest.fixture(scope="module")
def topos(tmp_path_factory):
    root = tmp_path_factory.mktemp("fold-topos")
    out = {}
    for name, text in {
        "mesh4": "name: mesh4\ninherit: mi300x-128node\nnodes: 4\n",
        "mesh3": "name: mesh3\ninherit: mi300x-128node\nnodes: 3\n",
        "nvs4": "name: nvs4\ninherit: h100-dgx-128node\nnodes: 4\ninter:\n  nodes_per_leaf: 2\n",
    }.items():
        path = root / f"{name}.yaml"
        path.write_text(text)
        out[name] = load_topology(str(path))
    return out


def _graph(topo, sim_ranks, replica_nodes, replica_size, kind, nbytes, tp_bytes):
    """DP collectives (one per position of a replica) over every replica, plus a TP all-reduce inside each
    replica on another stream, all issued at once."""
    world = topo.world_size
    b = GraphBuilder(sim_ranks, replica_nodes=replica_nodes, meta={"replica_size": replica_size})
    for base in range(0, world, replica_size):
        replica = tuple(range(base, base + replica_size))
        if tp_bytes and len(replica) > 1 and set(replica) <= set(sim_ranks):
            b.collective("all_reduce", replica, tp_bytes, "tp", stream="tp")
    for pos in range(replica_size):
        group = tuple(range(pos, world, replica_size))
        b.collective(kind, group, nbytes, "dp", stream="dp")
    return b.graph


def _folded_and_full(topo, replica_size, kind, nbytes, tp_bytes):
    g = topo.gpus_per_node
    replica_nodes = max(1, replica_size // g)
    sim = tuple(range(max(replica_size, g)))
    folded = replay(_graph(topo, sim, replica_nodes, replica_size, kind, nbytes, tp_bytes), topo)
    full = replay(_graph(topo, tuple(range(topo.world_size)), 0, replica_size, kind, nbytes, tp_bytes), topo)
    return folded, full


CASES = [
    # (topology, replica size): DP groups with 1 rank per node (replica = node or 2 nodes), 2 or 4 per node
    ("mesh4", 8), ("mesh4", 16), ("mesh4", 4), ("mesh4", 2), ("mesh3", 8), ("mesh3", 4), ("nvs4", 8), ("nvs4", 2),
]


@pytest.mark.parametrize(("topo_name", "replica_size"), CASES, ids=[f"{t}-r{r}" for t, r in CASES])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("nbytes", [4096, 3 * 2**20 + 40, 256 * 2**20])
def test_folded_equals_full_for_policy_choices(topos, topo_name, replica_size, kind, nbytes):
    topo = topos[topo_name]
    folded, full = _folded_and_full(topo, replica_size, kind, nbytes, tp_bytes=64 * 2**20)
    assert folded.end_s == pytest.approx(full.end_s, rel=1e-12)
    assert folded.collective_algorithms.keys() == full.collective_algorithms.keys()
    dp = tuple(range(0, topo.world_size, replica_size))
    assert choose(kind, dp, nbytes, topo, fold_safe_only=True).algorithm in full.collective_algorithms
    for r in folded.graph.ranks:
        for what in ("sent_bytes", "recv_bytes"):
            a, b = getattr(folded, what).get(r, {}), getattr(full, what).get(r, {})
            assert a.keys() == b.keys()
            for k in a:
                assert a[k] == pytest.approx(b[k], rel=1e-12), (what, r, k)


def test_the_policy_would_pick_the_tree_without_the_restriction(topos):
    """The same DP all-reduce outside a replicated graph goes to the tree (so the restriction matters)."""
    topo = topos["mesh4"]
    group = tuple(range(0, 32, 8))
    assert choose("all_reduce", group, 4096, topo).algorithm == "tree"
    assert choose("all_reduce", group, 4096, topo, fold_safe_only=True).algorithm == "ring"


def test_a_forced_tree_does_not_fold_exactly(topos):
    """Nodes hold different places in a tree: one simulated replica cannot stand for the others."""
    topo = topos["mesh4"]

    def graph(sim, replica_nodes):
        b = GraphBuilder(sim, replica_nodes=replica_nodes, meta={"replica_size": 8})
        for base in range(0, 32, 8):
            replica = tuple(range(base, base + 8))
            if set(replica) <= set(sim):
                b.collective("all_reduce", replica, 512 * 2**20, "tp", stream="tp")
        for pos in range(8):
            b.collective("all_reduce", tuple(range(pos, 32, 8)), 64 * 2**20, "dp", stream="dp", algorithm="tree")
        return b.graph

    folded = replay(graph(tuple(range(8)), 1), topo)
    full = replay(graph(tuple(range(32)), 0), topo)
    assert folded.end_s != pytest.approx(full.end_s, rel=1e-6)

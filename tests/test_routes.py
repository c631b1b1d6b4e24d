"""Vectorised routes (tspsim/spec/routes.py) equal Topology.route hop by hop, and fold tables equal fold_link."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tspsim.spec import routes
from tspsim.spec.topology_file import load_topology

PRESETS = ["mi300x-1node", "h100-dgx-1node", "mi300x-128node", "h100-dgx-128node", "dgx-a100-1node"]


@pytest.fixture(scope="module")
def fat_tree_small(tmp_path_factory):
    """6 DGX H100 nodes, 2 nodes per leaf: three leaf groups, so spine links appear in routes."""
    path = tmp_path_factory.mktemp("topo") / "ft.yaml"
    path.write_text("name: ft\ninherit: h100-dgx-128node\nnodes: 6\ninter:\n  nodes_per_leaf: 2\n")
    return load_topology(str(path))


def _check(topo, pairs):
    src = np.array([a for a, _ in pairs], dtype=np.int64)
    dst = np.array([b for _, b in pairs], dtype=np.int64)
    hop, link = routes.route_arrays(topo, src, dst)
    by_hop: dict[int, list[int]] = {}
    for h, lk in zip(hop.tolist(), link.tolist()):
        by_hop.setdefault(h, []).append(lk)
    for i, (a, b) in enumerate(pairs):
        assert sorted(by_hop.get(i, [])) == sorted(topo.route(a, b)), (topo.name, a, b)


@pytest.mark.parametrize("name", PRESETS)
def test_route_arrays_equal_route(name):
    topo = load_topology(name)
    rng = random.Random(7)
    w = topo.world_size
    pairs = [(rng.randrange(w), rng.randrange(w)) for _ in range(2000)]
    pairs += [(0, 0), (0, w - 1), (w - 1, 0)]
    _check(topo, pairs)


def test_route_arrays_cross_leaf_groups(fat_tree_small):
    topo = fat_tree_small
    pairs = [(a, b) for a in range(0, topo.world_size, 3) for b in range(topo.world_size)]
    _check(topo, pairs)
    kinds = {topo.links[i].kind for i in topo.route(0, 47)}
    assert "spine_up" in kinds and "spine_down" in kinds


def test_nvls_endpoints(h100_128):
    engine = -1 - 3  # node 3's NVLS engine
    hop, link = routes.route_arrays(h100_128, np.array([25, engine, engine]), np.array([engine, 30, engine]))
    got = [(h, h100_128.links[lk].src, h100_128.links[lk].dst, h100_128.links[lk].kind) for h, lk in zip(hop, link)]
    assert sorted(got) == [(0, "g25", "nvsw3", "nvlink_up"), (1, "nvsw3", "g30", "nvlink_down"),
                           (2, "nvsw3", "nvls3", "nvls")]


def test_link_classes_and_capacities(mi300x_128, h100):
    cls = routes.link_classes(mi300x_128)
    assert {mi300x_128.links[i].kind for i in np.flatnonzero(cls == routes.INTRA)} == {"xgmi"}
    assert {mi300x_128.links[i].kind for i in np.flatnonzero(cls == routes.NETWORK)} == {"pcie", "nic_up", "nic_down"}
    cap = routes.capacities(h100)
    assert cap.tolist() == [link.capacity_Bps for link in h100.links]
    # the NVLS engine runs at the measured whole-node all-reduce algbw: busbw 478.9 · 8 / 14
    (engine,) = [link for link in h100.links if link.kind == "nvls"]
    assert engine.capacity_Bps == pytest.approx(478.9e9 * 8 / 14, rel=1e-12)


@pytest.mark.parametrize("replica_nodes", [1, 2, 4, 32])
@pytest.mark.parametrize("name", ["h100_128", "mi300x_128", "fat_tree_small"])
def test_fold_array_equals_fold_link(request, name, replica_nodes):
    topo = request.getfixturevalue(name)
    table = routes.fold_array(topo, replica_nodes)
    assert table.tolist() == [topo.fold_link(i, replica_nodes) for i in range(len(topo.links))]

"""Link arrays built without the Link tuples equal the tuples, and route_links equals Topology.route.

``Topology.link_capacities`` / ``link_latencies_s`` / ``link_count``, :func:`tspsim.spec.routes.link_classes`
and :func:`tspsim.spec.routes.route_links` are derived by index arithmetic so a 2,048-node run never builds
the 180,000 named links; here they are compared with the definitions (``Topology.links``, ``Topology.route``)
on every preset and on small clusters of every fabric, including a fat tree with several leaf groups and a
partly filled last leaf.
"""

from __future__ import annotations

import random

import pytest

from tspsim.engine.replay_parts import recorded_links
from tspsim.spec import routes
from tspsim.spec.topology import Topology, _build_links
from tspsim.spec.topology_file import load_topology, preset_names

SMALL = {
    "ft-uneven": "name: ft\ninherit: h100-dgx-128node\nnodes: 5\ninter:\n  nodes_per_leaf: 2\n",
    "ft-oversub": "name: fto\ninherit: h100-dgx-128node\nnodes: 6\ninter:\n  nodes_per_leaf: 2\n"
                  "  oversubscription: 2.0\n",
    "mesh-3": "name: m3\ninherit: mi300x-128node\nnodes: 3\n",
    "a100-4": "name: a4\ninherit: dgx-a100-128node\nnodes: 4\n",
}


def _topology(tmp_path, name: str) -> Topology:
    if name in SMALL:
        path = tmp_path / f"{name}.yaml"
        path.write_text(SMALL[name])
        return load_topology(str(path))
    return load_topology(name)


@pytest.mark.parametrize("name", preset_names() + sorted(SMALL))
def test_link_arrays_equal_the_links(tmp_path, name):
    topo = _topology(tmp_path, name)
    links = _build_links(topo)
    assert topo.link_count == len(links)
    assert topo.link_capacities == [link.capacity_Bps for link in links]
    assert topo.link_latencies_s == [link.latency_s for link in links]
    assert routes.link_classes(topo).tolist() == [routes.LINK_CLASS[link.kind] for link in links]
    assert routes.capacities(topo).tolist() == [link.capacity_Bps for link in links]


@pytest.mark.parametrize("name", sorted(SMALL) + ["mi300x-1node", "h100-dgx-1node"])
def test_route_links_equal_route_for_every_pair(tmp_path, name):
    topo = _topology(tmp_path, name)
    w = topo.world_size
    for a in range(w):
        for b in range(w):
            assert routes.route_links(topo, a, b) == tuple(topo.route(a, b)), (name, a, b)


@pytest.mark.parametrize("name", ["mi300x-128node", "h100-dgx-128node", "dgx-a100-128node"])
def test_route_links_equal_route_on_presets(name):
    topo = load_topology(name)
    rng = random.Random(11)
    w = topo.world_size
    for a, b in [(rng.randrange(w), rng.randrange(w)) for _ in range(3000)] + [(0, w - 1), (w - 1, 0)]:
        assert routes.route_links(topo, a, b) == tuple(topo.route(a, b)), (name, a, b)


def test_a_large_cluster_never_builds_its_links(tmp_path):
    """Capacities, classes and routes of 2,048 nodes come from arithmetic: ``links`` stays unbuilt."""
    path = tmp_path / "big.yaml"
    path.write_text("name: big\ninherit: mi300x-128node\nnodes: 2048\n")
    topo = load_topology(str(path))
    assert topo.link_count == 2048 * (56 + 32)
    routes.capacities(topo)
    routes.link_classes(topo)
    routes.route_links(topo, 3, 16383)
    assert "links" not in topo.__dict__


@pytest.mark.parametrize("name", ["ft-uneven", "ft-oversub", "mesh-3", "a100-4", "h100-dgx-1node"])
def test_recorded_links_equal_the_scan_of_every_link(tmp_path, name):
    """The links a replay records (LinkRecorder): every non-PCIe link of a simulated node, by index layout."""
    topo = _topology(tmp_path, name)
    rng = random.Random(3)
    for _ in range(6):
        nodes = set(rng.sample(range(topo.nodes), rng.randint(1, topo.nodes)))
        want = [link.index for link in topo.links if link.node in nodes and link.kind != "pcie"]
        assert recorded_links(topo, nodes) == want, (name, nodes)

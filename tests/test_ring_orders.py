"""The NumPy ring construction (ring.ring_order_array, ring_shape) equals the rank-by-rank definition.

The reference functions below are the list-based construction the module docstring describes (the code
before it was vectorised for 16,384-rank data-parallel groups); every channel order, hop and fraction must
be identical, for regular and irregular groups on mesh and switch nodes, with odd and even node counts.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tspsim.engine.collectives import ring
from tspsim.engine.collectives.hamiltonian import walecki_paths
from tspsim.engine.collectives.plan import group_info
from tspsim.spec.topology_file import load_topology


def _reference_orders(info, topo) -> list[list[int]]:
    mesh = topo.intra.kind == "full_mesh"
    members = info.members
    if info.k == 1:
        node = members[0]
        if mesh:
            return [[node[i] for i in cyc] for cyc in ring.hamiltonian_channels(len(node))]
        return [list(node)]
    m = info.m
    if info.regular:
        if m == 1:
            return [[node[0] for node in members]]
        if m % 2 == 0 and info.k % 2 == 0:
            orders = []
            for path in walecki_paths(m):
                for sign in (0, 1):
                    order: list[int] = []
                    for n, node in enumerate(members):
                        seq = path if (n + sign) % 2 == 0 else path[::-1]
                        order.extend(node[i] for i in seq)
                    orders.append(order)
            return orders
        orders = []
        for c, cyc in enumerate(ring._node_cycles(m, mesh)):
            seq = ring._rotate(cyc, c % m)
            orders.append([node[i] for node in members for i in seq])
        return orders
    channels = min(len(node) for node in members)
    orders = []
    for c in range(channels):
        order = []
        for node in members:
            cycles = ring._node_cycles(len(node), mesh)
            seq = ring._rotate(cycles[c % len(cycles)], c % len(node))
            order.extend(node[i] for i in seq)
        orders.append(order)
    return orders


def _reference_hops(kind: str, orders: list[list[int]], root: int) -> list[tuple[int, int]]:
    hops: list[tuple[int, int]] = []
    if kind in ("all_reduce", "reduce_scatter", "all_gather"):
        for order in orders:
            hops.extend(zip(order, order[1:] + order[:1]))
        return hops
    for order in orders:
        i = order.index(root)
        chain = order[i:] + order[:i]
        pairs = list(zip(chain, chain[1:]))
        hops.extend(pairs if kind == "broadcast" else [(d, s) for s, d in pairs])
    return hops


@pytest.fixture(scope="module")
def topologies(tmp_path_factory):
    root = tmp_path_factory.mktemp("ring")
    out = {}
    for name, text in (("mesh", "name: mesh\ninherit: mi300x-128node\nnodes: 6\n"),
                       ("switch", "name: sw\ninherit: h100-dgx-128node\nnodes: 6\n")):
        path = root / f"{name}.yaml"
        path.write_text(text)
        out[name] = load_topology(str(path))
    return out


@st.composite
def groups(draw):
    """A group of 2+ ranks on up to 6 nodes of 8 GPUs: regular (same local GPUs everywhere) or not."""
    nodes = draw(st.lists(st.integers(0, 5), min_size=1, max_size=6, unique=True))
    if draw(st.booleans()):
        local = draw(st.lists(st.integers(0, 7), min_size=1, max_size=8, unique=True))
        group = [n * 8 + j for n in nodes for j in local]
    else:
        group = [n * 8 + j for n in nodes
                 for j in draw(st.lists(st.integers(0, 7), min_size=1, max_size=8, unique=True))]
    if len(group) < 2:
        group.append((group[0] + 1) % 48)
    return draw(st.permutations(group))


@settings(max_examples=150, deadline=None, database=None, derandomize=True)
@given(group=groups(), fabric=st.sampled_from(["mesh", "switch"]),
       kind=st.sampled_from(["all_reduce", "reduce_scatter", "all_gather", "broadcast", "reduce"]),
       root_pick=st.integers(0, 1000))
def test_ring_shape_equals_the_rank_by_rank_construction(topologies, group, fabric, kind, root_pick):
    topo = topologies[fabric]
    info = group_info(tuple(group), topo)
    first = tuple(r % 8 for r in info.members[0])
    assert info.regular == all(tuple(r % 8 for r in m) == first for m in info.members)
    orders = _reference_orders(info, topo)
    assert ring.ring_orders(info, topo) == orders
    root = group[root_pick % len(group)]
    shp = ring.ring_shape(kind, info, topo, root, "Simple")
    flow = shp.phases[0].flow
    assert flow.hops == _reference_hops(kind, orders, root)
    c, p = len(orders), info.p
    frac = (2 * (p - 1) / p if kind == "all_reduce" else (p - 1) / p) / c if kind not in ("broadcast", "reduce") \
        else 1.0 / c
    assert flow.frac.dtype == np.float64 and flow.frac.tolist() == [frac] * len(flow)
    assert shp.channels == c

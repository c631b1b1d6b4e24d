"""Routes of many hops at once: the link-index arithmetic of :attr:`Topology.links` (vectorised).

:meth:`Topology.route` gives the links of one transfer by rule; collectives over a thousand ranks need
the routes of hundreds of thousands of hops, so :func:`route_arrays` computes the same links with
NumPy from the deterministic order in which ``_build_links`` creates them (``tests/test_routes.py``
checks it against :meth:`Topology.route` hop by hop):

* per node, the node fabric: a full mesh has g(g−1) links ordered (a, b ≠ a); a switch has an
  up-port and a down-port per GPU;
* then four links per rank: GPU→NIC and NIC→GPU (PCIe), NIC→switch and switch→NIC;
* then, on a rail-optimised fat tree with several leaf groups, an up- and a down-link per (rail, group);
* then one NVLS reduction engine per node (switch fabrics with ``intra.nvls``).

An endpoint ``−1 − n`` stands for node n's NVLS engine: GPU → engine is the GPU's up-port, engine →
GPU its down-port, engine → engine the engine itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tspsim.spec.topology import Topology

INTRA, NETWORK, NVLS = 0, 1, 2
"""Link classes: node fabric (xGMI, NVLink ports), network (PCIe to the NIC, NIC, spine), NVLS engine."""
LINK_CLASS = {"xgmi": INTRA, "nvlink_up": INTRA, "nvlink_down": INTRA, "pcie": NETWORK, "nic_up": NETWORK,
              "nic_down": NETWORK, "spine_up": NETWORK, "spine_down": NETWORK, "nvls": NVLS}
"""Class of each link kind (:func:`link_classes` assigns them by index range)."""


@dataclass(frozen=True)
class LinkLayout:
    """Where each kind of link starts in ``Topology.links``."""

    gpus_per_node: int
    """GPUs per node (g)."""
    mesh: bool
    """Full-mesh node fabric (else a switch)."""
    intra_per_node: int
    """Node-fabric links per node: g(g−1) for a mesh, 2g for a switch."""
    network_base: int
    """Index of rank 0's GPU→NIC link."""
    spine_base: int
    """Index of the first spine link (rail-optimised fat tree with several leaf groups), else −1."""
    leaf_groups: int
    """Leaf groups per rail (fat tree), 1 otherwise."""
    nodes_per_leaf: int
    """Nodes per leaf group."""
    nvls_base: int
    """Index of node 0's NVLS engine, or −1."""


def layout(topo: Topology) -> LinkLayout:
    """The index layout of ``topo.links`` (cached on the topology)."""
    cache = topo.__dict__.setdefault("_route_cache", {})
    if "layout" not in cache:
        g = topo.gpus_per_node
        mesh = topo.intra.kind == "full_mesh"
        per_node = g * (g - 1) if mesh else 2 * g
        network_base = topo.nodes * per_node
        spine_base, groups, npl = -1, 1, max(topo.nodes, 1)
        end = network_base
        if topo.inter is not None:
            end += 4 * topo.world_size
            npl = topo.inter.nodes_per_leaf
            if topo.inter.topology == "rail_optimized_fat_tree":
                groups = -(-topo.nodes // npl)
                if groups > 1:
                    spine_base = end
                    end += 2 * g * groups
        nvls_base = end if (not mesh and topo.intra.nvls is not None and g > 1) else -1
        cache["layout"] = LinkLayout(g, mesh, per_node, network_base, spine_base, groups, npl, nvls_base)
    return cache["layout"]


def link_classes(topo: Topology) -> np.ndarray:
    """Class (:data:`INTRA`, :data:`NETWORK`, :data:`NVLS`) of every link, by index.

    From the layout, without the links (``tests/test_link_arrays.py`` checks it against each link's kind).
    """
    cache = topo.__dict__.setdefault("_route_cache", {})
    if "classes" not in cache:
        lay = layout(topo)
        out = np.full(topo.link_count, NETWORK, dtype=np.int8)   # PCIe, NIC and spine links
        out[:lay.network_base] = INTRA
        if lay.nvls_base >= 0:
            out[lay.nvls_base:] = NVLS
        cache["classes"] = out
    return cache["classes"]


def capacities(topo: Topology) -> np.ndarray:
    """Capacity of every link in bytes/s, by index."""
    cache = topo.__dict__.setdefault("_route_cache", {})
    if "capacity" not in cache:
        cache["capacity"] = np.array(topo.link_capacities, dtype=np.float64)
    return cache["capacity"]


def fold_array(topo: Topology, replica_nodes: int) -> np.ndarray:
    """``fold_array[i]`` = :meth:`Topology.fold_link` (i, replica_nodes) for every link i.

    By index arithmetic: a link of node n moves to the same link of node n − (n − n mod R); a spine
    link of leaf group q to group q − shift / nodes_per_leaf, where shift is the node shift of the
    group's first node (as :meth:`Topology.fold_link` renames devices).
    """
    cache = topo.__dict__.setdefault("_route_cache", {})
    key = ("fold", replica_nodes)
    if key not in cache:
        lay = layout(topo)
        g, r = lay.gpus_per_node, replica_nodes
        idx = np.arange(topo.link_count, dtype=np.int64)
        out = idx.copy()
        intra = idx < lay.network_base
        node = idx[intra] // lay.intra_per_node
        out[intra] -= (node - node % r) * lay.intra_per_node
        end = lay.network_base + (4 * topo.world_size if topo.inter is not None else 0)
        net = (idx >= lay.network_base) & (idx < end)
        node = (idx[net] - lay.network_base) // 4 // g
        out[net] -= (node - node % r) * 4 * g
        if lay.spine_base >= 0:
            sp = (idx >= lay.spine_base) & (idx < lay.spine_base + 2 * g * lay.leaf_groups)
            pos = (idx[sp] - lay.spine_base) // 2
            grp = pos % lay.leaf_groups
            first = grp * lay.nodes_per_leaf
            out[sp] -= 2 * ((first - first % r) // lay.nodes_per_leaf)
        if lay.nvls_base >= 0:
            nv = idx >= lay.nvls_base
            node = idx[nv] - lay.nvls_base
            out[nv] -= node - node % r
        cache[key] = out
    return cache[key]


def route_links(topo: Topology, src: int, dst: int) -> tuple[int, ...]:
    """:meth:`Topology.route` by index arithmetic: the links from GPU ``src`` to GPU ``dst``, in order.

    Needs no name → index table of the 180,000 links of a 2,048-node cluster (``tests/test_link_arrays.py``
    checks it against :meth:`Topology.route` for every pair of small clusters).
    """
    if src == dst:
        return ()
    lay = layout(topo)
    g = lay.gpus_per_node

    def intra(a: int, b: int) -> list[int]:
        base = (a // g) * lay.intra_per_node
        la, lb = a % g, b % g
        if lay.mesh:
            return [base + la * (g - 1) + lb - (lb > la)]
        return [base + 2 * la, base + 2 * lb + 1]

    if src // g == dst // g:
        return tuple(intra(src, dst))
    via = (src // g) * g + dst % g
    hops = intra(src, via) if via != src else []
    nb = lay.network_base
    hops += [nb + 4 * via, nb + 4 * via + 2]
    if lay.spine_base >= 0:
        gs, gd, rail = (via // g) // lay.nodes_per_leaf, (dst // g) // lay.nodes_per_leaf, dst % g
        if gs != gd:
            hops += [lay.spine_base + 2 * (rail * lay.leaf_groups + gs),
                     lay.spine_base + 2 * (rail * lay.leaf_groups + gd) + 1]
    hops += [nb + 4 * dst + 3, nb + 4 * dst + 1]
    return tuple(hops)


def _intra(lay: LinkLayout, a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """Links from GPU a to GPU b of the same node (one array per link position of the route)."""
    g = lay.gpus_per_node
    node, la, lb = a // g, a % g, b % g
    base = node * lay.intra_per_node
    if lay.mesh:
        return [base + la * (g - 1) + lb - (lb > la)]
    return [base + 2 * la, base + 2 * lb + 1]


def route_arrays(topo: Topology, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Links of every hop ``src[i] → dst[i]``: parallel arrays (hop index, link index), one row per link.

    The same links as :meth:`Topology.route` (PXN forwarding over the node fabric for cross-rail hops,
    spine links between leaf groups), plus the NVLS endpoints described in the module docstring.
    """
    lay = layout(topo)
    g = lay.gpus_per_node
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    idx = np.arange(len(src), dtype=np.int64)
    hops: list[np.ndarray] = []
    links: list[np.ndarray] = []

    def emit(h: np.ndarray, parts: list[np.ndarray]) -> None:
        for part in parts:
            hops.append(h)
            links.append(part)

    ps, pd = src >= 0, dst >= 0
    if not (ps.all() and pd.all()):
        m = ps & ~pd
        emit(idx[m], [(src[m] // g) * lay.intra_per_node + 2 * (src[m] % g)])
        m = ~ps & pd
        emit(idx[m], [(dst[m] // g) * lay.intra_per_node + 2 * (dst[m] % g) + 1])
        m = ~ps & ~pd
        emit(idx[m], [lay.nvls_base + (-1 - src[m])])
    both = ps & pd & (src != dst)
    h, s, d = idx[both], src[both], dst[both]
    same = s // g == d // g
    emit(h[same], _intra(lay, s[same], d[same]))
    cross = ~same
    h, s, d = h[cross], s[cross], d[cross]
    if len(h):
        via = (s // g) * g + d % g
        pxn = via != s
        emit(h[pxn], _intra(lay, s[pxn], via[pxn]))
        nb = lay.network_base
        emit(h, [nb + 4 * via, nb + 4 * via + 2, nb + 4 * d + 3, nb + 4 * d + 1])
        if lay.spine_base >= 0:
            gs, gd = (via // g) // lay.nodes_per_leaf, (d // g) // lay.nodes_per_leaf
            far = gs != gd
            rail = d[far] % g
            emit(h[far], [lay.spine_base + 2 * (rail * lay.leaf_groups + gs[far]),
                          lay.spine_base + 2 * (rail * lay.leaf_groups + gd[far]) + 1])
    if not hops:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(hops), np.concatenate(links)

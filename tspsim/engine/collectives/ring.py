"""Multi-channel rings as NCCL/RCCL build them, inside a node and across nodes.

**One node.** On a full mesh every channel is a directed Hamiltonian cycle of the group and the
channels are arc-disjoint (:func:`~tspsim.engine.collectives.hamiltonian.hamiltonian_channels`: 7 for 8
GPUs, so an 8-GPU collective uses all 56 xGMI links while a 2-GPU one owns only the link between its
two GPUs; RCCL's MI300X model builds its channels the same way, hardware.md §6.1). On a switch one
ring reaches the GPU ports' bandwidth.

**Across nodes** (one channel per NIC, NCCL's rail-aligned rings with PXN): each channel crosses every
node as a path through all of its members and leaves it through a NIC; all channels run at once.

* Every node holds the same local GPUs and an even number m of them, and the group spans an even
  number of nodes: the m channels are the m directed Walecki paths of the node (each ordered pair of
  members is one link used by exactly one channel), alternating direction from node to node, so the
  channel that left node n through the NIC of its last GPU enters node n+1 at the GPU on that same
  rail (no cross-rail traffic). Every xGMI link and every NIC carries exactly one channel.
* Otherwise (odd m, odd node count): channel c enters every node at member c and follows the node's
  Hamiltonian cycle c to its last member, which forwards to member c's NIC over the node fabric
  (PXN, the cycle's closing link); m − 1 channels on a mesh (m on a switch).
* Groups whose nodes hold different GPUs: min over nodes of the members per node channels, each
  node's members in cycle order from a different entry; cross-rail hops go through PXN.

A pipelined ring channel is one chain of hops; all channels of a collective form one flow
(:mod:`tspsim.engine.collectives.plan`). All-reduce moves 2(p−1)/p·N per rank, reduce-scatter and
all-gather (p−1)/p·N; broadcast and reduce are chains from (to) the root along every channel, N/C each.
"""

from __future__ import annotations

import numpy as np

from tspsim.engine.collectives.hamiltonian import hamiltonian_channels, walecki_paths
from tspsim.engine.collectives.latency import ring_latency_s
from tspsim.engine.collectives.plan import FlowSpec, GroupInfo, Phase, Shape, group_info
from tspsim.spec.topology import Topology


def _node_cycles(m: int, mesh: bool) -> list[tuple[int, ...]]:
    """Directed Hamiltonian cycles over positions 0..m−1 of a node's members."""
    if m == 1:
        return [(0,)]
    if mesh:
        return list(hamiltonian_channels(m))
    return [tuple((c + i) % m for i in range(m)) for c in range(m)]


def _rotate(cycle: tuple[int, ...], start: int) -> list[int]:
    i = cycle.index(start) if start in cycle else 0
    return list(cycle[i:] + cycle[:i])


def ring_orders(info: GroupInfo, topo: Topology) -> list[list[int]]:
    """The channels of a ring: each a cyclic order of all ranks of the group (module docstring)."""
    return ring_order_array(info, topo).tolist()


def ring_order_array(info: GroupInfo, topo: Topology) -> np.ndarray:
    """:func:`ring_orders` as a channels × p array, built with NumPy for groups of regular nodes.

    A regular group's members form a k × m array; every channel picks the same positions (or the reversed
    Walecki path on alternate nodes) in every row, so a channel is one fancy-indexing of that array
    (``tests/test_ring_orders.py`` checks it against the rank-by-rank construction).
    """
    mesh = topo.intra.kind == "full_mesh"
    members = info.members
    if info.k == 1:
        node = members[0]
        if mesh:
            return np.array([[node[i] for i in cyc] for cyc in hamiltonian_channels(len(node))], dtype=np.int64)
        return np.array([node], dtype=np.int64)
    m = info.m
    if info.regular:
        arr = info.member_array
        if m == 1:
            return arr[:, 0].reshape(1, -1).copy()
        if m % 2 == 0 and info.k % 2 == 0:
            rows = np.arange(info.k)[:, None]
            orders = []
            for path in walecki_paths(m):
                fwd, rev = np.array(path, dtype=np.int64), np.array(path[::-1], dtype=np.int64)
                for sign in (0, 1):
                    seq = np.where(((np.arange(info.k) + sign) % 2 == 0)[:, None], fwd, rev)
                    orders.append(arr[rows, seq].ravel())
            return np.array(orders, dtype=np.int64)
        return np.array([arr[:, _rotate(cyc, c % m)].ravel() for c, cyc in enumerate(_node_cycles(m, mesh))],
                        dtype=np.int64)
    channels = min(len(node) for node in members)
    orders = []
    for c in range(channels):
        order = []
        for node in members:
            cycles = _node_cycles(len(node), mesh)
            seq = _rotate(cycles[c % len(cycles)], c % len(node))
            order.extend(node[i] for i in seq)
        orders.append(order)
    return np.array(orders, dtype=np.int64)


def ring_shape(kind: str, info: GroupInfo, topo: Topology, root: int, protocol: str) -> Shape:
    """Ring all-reduce / reduce-scatter / all-gather, or pipelined chains for broadcast / reduce.

    The hops are built with NumPy in the order of the per-channel definition: channel by channel, each
    rank to its successor around the channel (the last back to the first), or along the chain that starts
    (ends) at the root.
    """
    orders = ring_order_array(info, topo)
    c = len(orders)
    p = info.p
    if kind in ("all_reduce", "reduce_scatter", "all_gather"):
        frac = (2 * (p - 1) / p if kind == "all_reduce" else (p - 1) / p) / c
        src, dst = orders.ravel(), np.roll(orders, -1, axis=1).ravel()
    else:  # broadcast / reduce: a chain from (to) the root along each channel
        frac = 1.0 / c
        chains = np.array([np.roll(order, -int(np.flatnonzero(order == root)[0])) for order in orders])
        head, tail = chains[:, :-1].ravel(), chains[:, 1:].ravel()
        src, dst = (head, tail) if kind == "broadcast" else (tail, head)
    flow = FlowSpec(src.copy(), dst.copy(), np.full(len(src), frac, dtype=np.float64))
    return Shape("ring", protocol, c, (Phase(ring_latency_s(kind, info, topo, protocol), flow),))


def ring_orders_for(group: tuple[int, ...], topo: Topology) -> list[list[int]]:
    """The ring channels of ``group`` on ``topo`` (:func:`ring_orders`)."""
    return ring_orders(group_info(group, topo), topo)

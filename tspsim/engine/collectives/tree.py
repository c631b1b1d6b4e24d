"""NCCL's double binary tree across nodes, with a chain through the GPUs of each node.

NCCL 2.4+ (Sanders, Speck & Träff's two-tree idea; NVIDIA's "Massively scale your deep learning
training with NCCL 2.4" blog): the nodes form two binary trees, tree 0 the in-order tree of
``ncclGetBtree`` and tree 1 its mirror (even node count) or its shift by one (odd), so a node that is
a leaf in one tree is mostly an inner node of the other. Inside a node each channel is a chain that
starts at its head GPU, whose NIC carries the channel's tree edges (rail-aligned); NCCL's channels use
both trees, half of the data each. For all-reduce every edge carries its share up (reduce) and down
(broadcast), pipelined, so both directions flow at once: each rank sends and receives its share
once per direction except the roots, and the total over ranks is exactly 2(p−1)·N, as for a ring.

Chains on a full mesh are the node's directed Walecki paths (even m) or Hamiltonian cycles cut at the
head (odd m), so different channels' chains use different links; on a switch, rotations.
Latency: base + 2((ranks per node − 1) intra tree steps + ⌈log2 nodes⌉ network tree steps)
(:func:`~tspsim.engine.collectives.latency.tree_latency_s`). The tree pipelines in chunks: its fill is
a :class:`~tspsim.engine.collectives.plan.Pipeline` over the 2·depth hops of the longest up-and-down path.

Not fold-safe: nodes hold different positions in the trees, so one simulated replica does not mirror
the others; the policy leaves it out where a replay folds (:mod:`tspsim.engine.collectives.policy`).
"""

from __future__ import annotations

from tspsim.engine.collectives.hamiltonian import hamiltonian_channels, walecki_paths
from tspsim.engine.collectives.latency import tree_latency_s
from tspsim.engine.collectives.plan import FlowSpec, GroupInfo, Phase, Pipeline, Shape
from tspsim.spec.topology import Topology


def btree_parent(n: int, rank: int) -> int:
    """Parent of ``rank`` in NCCL's binary tree over ``n`` ranks (``ncclGetBtree``); −1 for the root 0."""
    if rank == 0:
        return -1
    bit = rank & -rank
    up = (rank ^ bit) | (bit << 1)
    return up if up < n else rank ^ bit


def dtree_parents(n: int) -> tuple[list[int], list[int]]:
    """Parents in NCCL's two trees (``ncclGetDtree``): tree 1 mirrors tree 0 (even n) or shifts it (odd)."""
    t0 = [btree_parent(n, r) for r in range(n)]
    t1 = []
    for r in range(n):
        if n % 2:
            u = btree_parent(n, (r - 1) % n)
            t1.append(-1 if u == -1 else (u + 1) % n)
        else:
            u = btree_parent(n, n - 1 - r)
            t1.append(-1 if u == -1 else n - 1 - u)
    return t0, t1


def tree_depth(parents: list[int]) -> int:
    """Edges on the longest leaf-to-root path."""
    best = 0
    for r in range(len(parents)):
        d, x = 0, r
        while parents[x] != -1:
            x = parents[x]
            d += 1
        best = max(best, d)
    return best


def node_chains(info: GroupInfo, topo: Topology) -> list[list[list[int]]]:
    """chains[c][n]: channel c's chain through node n's members, head first (module docstring)."""
    mesh = topo.intra.kind == "full_mesh"
    if info.regular:
        m = info.m
        if m == 1:
            seqs = [[0]]
        elif mesh and m % 2 == 0:
            seqs = [q for path in walecki_paths(m) for q in (path, path[::-1])]
        elif mesh:
            seqs = [_rotate(cyc, c) for c, cyc in enumerate(hamiltonian_channels(m))]
        else:
            seqs = [[(c + i) % m for i in range(m)] for c in range(m)]
        return [[[node[i] for i in seq] for node in info.members] for seq in seqs]
    channels = min(len(node) for node in info.members)
    out = []
    for c in range(channels):
        per_node = []
        for node in info.members:
            if len(node) == 1:
                per_node.append([node[0]])
                continue
            cycles = hamiltonian_channels(len(node)) if mesh else [tuple(range(len(node)))]
            per_node.append([node[i] for i in _rotate(cycles[c % len(cycles)], c % len(node))])
        out.append(per_node)
    return out


def _rotate(cycle: tuple[int, ...], start: int) -> list[int]:
    i = cycle.index(start) if start in cycle else 0
    return list(cycle[i:] + cycle[:i])


def _chain_hops(seq: list[int], up: bool) -> list[tuple[int, int]]:
    pairs = list(zip(seq, seq[1:]))
    return [(b, a) for a, b in pairs] if up else pairs


def tree_shape(kind: str, info: GroupInfo, topo: Topology, root: int, protocol: str) -> Shape:
    """Double binary tree all-reduce (2 trees × C chains), or a single tree for broadcast / reduce."""
    k = info.k
    hops: list[tuple[int, int]] = []
    fracs: list[float] = []
    if kind == "all_reduce":
        chains = node_chains(info, topo)
        trees = dtree_parents(k)
        pipes = 2 * len(chains)
        frac = 1.0 / pipes
        for per_node in chains:
            for parents in trees:
                for n, seq in enumerate(per_node):
                    for up in (True, False):
                        hops.extend(_chain_hops(seq, up))
                    if parents[n] != -1:
                        head, phead = seq[0], per_node[parents[n]][0]
                        hops.extend([(head, phead), (phead, head)])
        fracs = [frac] * len(hops)
        depth = (info.m - 1) + max(tree_depth(t) for t in trees)
        stages, pipe_depth = 2 * depth - 1, 2 * depth
        channels = pipes
    else:  # broadcast / reduce from (to) the root: one tree over the nodes rooted at the root's node
        j0 = next(j for j, node in enumerate(info.members) if root in node)
        order = list(range(j0, k)) + list(range(j0))  # tree position → index in info.members
        parents = [btree_parent(k, t) for t in range(k)]
        pos = root % info.gpus_per_node
        chains_ = []
        for j in order:
            node = list(info.members[j])
            head = next((i for i, r in enumerate(node) if r % info.gpus_per_node == pos), 0)
            if j == j0:
                head = node.index(root)
            chains_.append(node[head:] + node[:head])
        for t, seq in enumerate(chains_):
            hops.extend(_chain_hops(seq, kind == "reduce"))
            if parents[t] != -1:
                pair = (chains_[parents[t]][0], seq[0])
                hops.append(pair if kind == "broadcast" else (pair[1], pair[0]))
        fracs = [1.0] * len(hops)
        depth = (info.m - 1) + tree_depth(parents)
        stages, pipe_depth, pipes, channels = depth - 1, depth, 1, 1
    pipeline = Pipeline(stages, pipes, max(pipe_depth, 1), topo.intra.chunk_bytes) if stages > 0 else None
    latency = tree_latency_s(kind, info, topo, protocol)
    return Shape("tree", protocol, channels, (Phase(latency, FlowSpec.of(hops, fracs), pipeline),))


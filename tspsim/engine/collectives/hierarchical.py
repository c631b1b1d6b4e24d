"""Hierarchical collectives across nodes, pipelined in chunks (hardware.md §6.5, §8).

With m GPUs on each of k nodes (every node holding the same local GPUs), all-reduce is an intra-node
reduce-scatter (each GPU sends shard j, N/m bytes, to member j: direct, one link per pair on a mesh),
a per-rail inter-node ring all-reduce of each GPU's N/m shard (all m NICs at once, rail-aligned), and
an intra-node all-gather: 2(m−1)/m·N + 2(k−1)/k·N/m = 2(p−1)/p·N per rank, exactly the ring's volume,
of which only (k−1)/k of a shard crosses each NIC. Reduce-scatter and all-gather are the first two
and the last two stages; broadcast (reduce) is a chain over the nodes on the root's rail, then a
direct broadcast inside every node (or the reverse).

The stages are **pipelined**: chunks stream through all of them at once, so the collective is one flow
whose links carry each stage's share (a link's weight = the stage's bytes on it per payload byte) and
whose rate is set by the most loaded stage; it pays one start-up latency plus its per-step latencies
(:func:`~tspsim.engine.collectives.latency.hier_latency_s`) and the pipeline fill of
(stages − 1) chunks per rail (:class:`~tspsim.engine.collectives.plan.Pipeline`, chunk =
``intra.chunk_bytes``, NCCL's default 512 KiB, halved down to 32 KiB for small messages).

Not an NCCL/RCCL algorithm (NCCL's closest relatives are NVLS-tree and CollNet): ``--algorithm hier``
runs it; the policy does not pick it. Node-symmetric, so folding stays exact.
"""

from __future__ import annotations

from tspsim.core.errors import TspsimError
from tspsim.engine.collectives.latency import hier_latency_s
from tspsim.engine.collectives.plan import FlowSpec, GroupInfo, Phase, Pipeline, Shape
from tspsim.spec.topology import Topology


def check_hier(kind: str, info: GroupInfo) -> None:
    """Raise unless ``hier`` applies to the group and kind."""
    if info.k == 1 or not info.regular:
        raise TspsimError("algorithm 'hier' needs a group spread evenly over several nodes (the same GPUs of "
                          "each node); use ring or direct for this group")
    if kind == "all_to_all":
        raise TspsimError("all_to_all has no hierarchical algorithm here; use direct")


def hier_shape(kind: str, info: GroupInfo, topo: Topology, root: int, protocol: str) -> Shape:
    """The pipelined hierarchical collective (module docstring)."""
    check_hier(kind, info)
    k, m = info.k, info.m
    nodes = info.members
    rails = [[node[j] for node in nodes] for j in range(m)]
    parts: list[FlowSpec] = []

    def intra_direct(frac: float) -> FlowSpec:
        return FlowSpec.of(((a, b) for node in nodes for a in node for b in node if a != b), frac)

    def rail_ring(frac: float) -> FlowSpec:
        return FlowSpec.of(((rail[i], rail[(i + 1) % k]) for rail in rails for i in range(k)), frac)

    if kind == "all_reduce":
        parts = [intra_direct(1 / m), rail_ring(2 * (k - 1) / k / m), intra_direct(1 / m)]
    elif kind == "reduce_scatter":
        parts = [intra_direct(1 / m), rail_ring((k - 1) / k / m)]
    elif kind == "all_gather":
        parts = [rail_ring((k - 1) / k / m), intra_direct(1 / m)]
    else:  # broadcast / reduce: chain over the nodes on the root's rail, direct inside the nodes
        rail = next(r for r in rails if root in r)
        i = rail.index(root)
        chain = rail[i:] + rail[:i]
        inter = list(zip(chain, chain[1:]))
        local = [(head, r) for head, node in zip(rail, nodes) for r in node if r != head]
        if kind == "broadcast":
            parts = [FlowSpec.of(inter, 1.0), FlowSpec.of(local, 1.0)]
        else:
            parts = [FlowSpec.of([(r, head) for head, r in local], 1.0), FlowSpec.of([(d, s) for s, d in inter], 1.0)]
    stages = len(parts)
    pipes = m if kind in ("all_reduce", "reduce_scatter", "all_gather") else 1
    pipeline = Pipeline(stages - 1, pipes, stages, topo.intra.chunk_bytes)
    latency = hier_latency_s(kind, info, topo, protocol)
    return Shape("hier", protocol, pipes, (Phase(latency, FlowSpec.concat(parts), pipeline),))

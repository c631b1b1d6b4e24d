"""Collective algorithms as phases of flows (design.md §2 rule 2).

A collective on a group of ranks becomes a :class:`CollectivePlan`: an ordered list of
:class:`Phase` s, each a start-up latency α followed by concurrent :class:`FlowSpec` s. A flow
spec is a chain of hops (src → dst) that carries the same bytes on every hop at one common rate: a
pipelined ring channel is one flow over all its hops, so its rate is set by its slowest link, as in a
real pipelined ring.

Algorithms (Thakur, Rabenseifner & Gropp, IJHPCA 2005; NCCL/RCCL; hardware.md §6 and §8):

========== ===================================================================================
ring       multi-channel ring. On a full mesh the channels are edge-disjoint directed Hamiltonian
           cycles of the group (7 for 8 GPUs, so all 56 links carry traffic); on a switch one ring.
           All-reduce moves 2(p−1)/p·N per rank, RS/AG (p−1)/p·N, broadcast/reduce N.
direct     one step per phase, every pair talks over its own path: one-shot all-reduce (each rank
           sends N to every peer), two-shot all-reduce (direct RS + direct AG, 2(p−1)/p·N),
           direct RS/AG ((p−1)/p·N), direct broadcast, all-to-all ((p−1)/p·N).
tree       double binary tree over the nodes (NCCL): two trees each reduce N/2 up and broadcast
           it down, pipelined. Only when forced: its per-node load is uneven, so replica folding
           is not exact for it.
rd         recursive doubling all-reduce (power-of-two groups): log2 p steps, each rank exchanges
           N with the rank whose index differs in one bit. Symmetric, so folding stays exact; the
           policy's choice for small multi-node all-reduce.
hier       hierarchical across nodes: intra-node reduce-scatter, per-rail inter-node ring
           all-reduce of N/g, intra-node all-gather (2(p−1)/p·N in total, exactly).
========== ===================================================================================

Per-phase latency follows NCCL's cost model: ring = base + steps × per-step latency (network steps
use the network per-step value), direct = α per phase, tree = base + 2·⌈log2 k⌉ network steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

from tspsim.core.errors import TspsimError
from tspsim.opgraph.op import ALGORITHMS as OP_ALGORITHMS
from tspsim.spec.topology import Topology

ALGORITHMS = OP_ALGORITHMS
"""Algorithm names, as an op may force them (:data:`tspsim.opgraph.op.ALGORITHMS`)."""


@dataclass(frozen=True)
class FlowSpec:
    """A chain of hops moving ``nbytes`` on each hop at one common rate."""

    hops: tuple[tuple[int, int], ...]
    """(src rank, dst rank) pairs; every hop carries ``nbytes``."""
    nbytes: float
    """Bytes carried on each hop."""


@dataclass(frozen=True)
class Phase:
    """Start-up latency, then concurrent flows; the phase ends when its last flow ends."""

    latency_s: float
    """α of this phase in seconds."""
    flows: tuple[FlowSpec, ...]
    """Flows started together after the latency."""


@dataclass(frozen=True)
class CollectivePlan:
    """What one collective does on the network."""

    algorithm: str
    """Name of the algorithm used (``ring``, ``direct``, ``one_shot``, ``two_shot``, ``tree``, ``hier``)."""
    phases: tuple[Phase, ...]
    """Phases run one after another."""

    def bytes_per_rank(self) -> tuple[dict[int, float], dict[int, float]]:
        """(sent, received) bytes per rank, summed over phases and hops."""
        sent: dict[int, float] = {}
        recv: dict[int, float] = {}
        for phase in self.phases:
            for flow in phase.flows:
                for s, d in flow.hops:
                    sent[s] = sent.get(s, 0.0) + flow.nbytes
                    recv[d] = recv.get(d, 0.0) + flow.nbytes
        return sent, recv


# ------------------------------------------------------------------------------------ ring orders
@cache
def hamiltonian_channels(k: int) -> tuple[tuple[int, ...], ...]:
    """Directed Hamiltonian cycles of the complete digraph on ``k`` vertices covering every arc equally.

    For k ∉ {4, 6} the k−1 cycles are arc-disjoint (a Hamiltonian decomposition, Tillson 1980); for
    k = 4 and 6, where none exists, 2(k−1) cycles cover every arc exactly twice. Deterministic
    depth-first search; k ≤ 8 in practice (one node).
    """
    if k < 2:
        return ()
    if k == 2:
        return ((0, 1),)
    for mult in (1, 2, 3):
        found = _search_cover(k, mult)
        if found is not None:
            return found
    raise RuntimeError(f"no Hamiltonian cycle cover found for k={k}")  # pragma: no cover


def _search_cover(k: int, mult: int) -> tuple[tuple[int, ...], ...] | None:
    need = (k - 1) * mult
    budget = {(a, b): mult for a in range(k) for b in range(k) if a != b}
    cycles: list[tuple[int, ...]] = []
    steps = [0]

    def extend(path: list[int], used: set[int]) -> bool:
        steps[0] += 1
        if steps[0] > 200_000:
            return False
        if len(path) == k:
            if budget[(path[-1], 0)] == 0:
                return False
            for a, b in zip(path, path[1:] + [0]):
                budget[(a, b)] -= 1
            cycles.append(tuple(path))
            if len(cycles) == need or extend([0], {0}):
                return True
            cycles.pop()
            for a, b in zip(path, path[1:] + [0]):
                budget[(a, b)] += 1
            return False
        last = path[-1]
        # Prefer successors whose outgoing budget is largest: keeps later cycles completable.
        options = sorted((n for n in range(k) if n not in used and budget[(last, n)] > 0),
                         key=lambda n: (-budget[(last, n)], (n - last) % k))
        for n in options:
            path.append(n)
            used.add(n)
            if extend(path, used):
                return True
            path.pop()
            used.discard(n)
        return False

    return tuple(cycles) if extend([0], {0}) else None


# ---------------------------------------------------------------------------------- the planner
def _nodes_of(group: tuple[int, ...], topo: Topology) -> dict[int, list[int]]:
    by_node: dict[int, list[int]] = {}
    for r in group:
        by_node.setdefault(topo.node_of(r), []).append(r)
    return by_node


def choose_algorithm(kind: str, group: tuple[int, ...], nbytes: int, topo: Topology) -> str:
    """RCCL/NCCL-like algorithm policy.

    Direct for small messages on one node, ring for large ones, hierarchical across nodes when several
    ranks share a node, tree for small multi-node all-reduce.
    """
    by_node = _nodes_of(group, topo)
    if kind == "all_to_all":
        return "direct"
    if len(by_node) == 1:
        if nbytes <= topo.intra.direct_max_bytes:
            return "one_shot" if kind == "all_reduce" else "direct"
        return "ring"
    per_node = {len(v) for v in by_node.values()}
    if len(per_node) == 1 and per_node.pop() > 1 and kind in ("all_reduce", "reduce_scatter", "all_gather",
                                                               "broadcast", "reduce"):
        return "hier"
    if kind == "all_reduce" and nbytes <= topo.intra.direct_max_bytes and _power_of_two(len(group)):
        return "rd"
    return "ring"


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def plan_collective(kind: str, group: tuple[int, ...], nbytes: int, topo: Topology, root: int = -1,
                    algorithm: str = "") -> CollectivePlan:
    """Build the flows of one collective. ``algorithm`` forces a choice (``--algorithm``).

    Raises:
        TspsimError: for an algorithm that does not apply to the group (e.g. ``hier`` on one node).
    """
    group = tuple(group)
    p = len(group)
    if p < 2 or nbytes <= 0:
        return CollectivePlan(algorithm or "none", ())
    if kind in ("broadcast", "reduce") and root not in group:
        root = group[0]
    alg = algorithm or choose_algorithm(kind, group, nbytes, topo)
    by_node = _nodes_of(group, topo)
    if alg == "hier":
        per_node = {len(v) for v in by_node.values()}
        if len(by_node) == 1 or len(per_node) != 1:
            raise TspsimError("algorithm 'hier' needs a group spread evenly over several nodes; "
                              "use ring or direct for this group")
        if kind == "all_to_all":
            raise TspsimError("all_to_all has no hierarchical algorithm here; use direct")
        return CollectivePlan("hier", _hierarchical(kind, group, nbytes, topo, root))
    if alg == "rd":
        if kind != "all_reduce" or not _power_of_two(p):
            raise TspsimError("algorithm 'rd' (recursive doubling) implements all_reduce on a power-of-two "
                              "number of ranks; use ring for this group")
        return CollectivePlan("rd", _recursive_doubling(group, nbytes, topo))
    if alg == "tree":
        if kind not in ("all_reduce", "broadcast", "reduce"):
            raise TspsimError(f"algorithm 'tree' implements all_reduce, broadcast and reduce, not {kind}")
        return CollectivePlan("tree", _tree(kind, group, nbytes, topo, root))
    if alg in ("direct", "one_shot", "two_shot"):
        if alg == "one_shot" and kind != "all_reduce":
            alg = "direct"
        if alg == "two_shot" and kind != "all_reduce":
            alg = "direct"
        if kind == "all_reduce" and alg == "direct":
            alg = "two_shot" if nbytes > topo.intra.direct_max_bytes else "one_shot"
        return CollectivePlan(alg, _direct(kind, group, nbytes, topo, root, alg))
    if alg == "ring":
        if kind == "all_to_all":
            raise TspsimError("all_to_all has no ring algorithm here; use direct")
        return CollectivePlan("ring", _ring(kind, group, nbytes, topo, root))
    raise TspsimError(f"unknown algorithm {alg!r}: choose one of {', '.join(ALGORITHMS)}")


def _ring_latency(kind: str, group: tuple[int, ...], topo: Topology, steps: int) -> float:
    by_node = _nodes_of(group, topo)
    intra = topo.intra
    if len(by_node) == 1:
        return (intra.ring_base_us + steps * intra.ring_step_us) * 1e-6
    assert topo.inter is not None
    k = len(by_node)
    # Of the ring's p hops, k cross the network; scale the steps accordingly (NCCL's model).
    net_steps = steps * k / len(group)
    return (topo.inter.base_us + intra.ring_base_us + (steps - net_steps) * intra.ring_step_us
            + net_steps * topo.inter.ring_step_us) * 1e-6


def _ring_orders(group: tuple[int, ...], topo: Topology) -> list[tuple[int, ...]]:
    """Ring channels: Hamiltonian cycles on a mesh node, one node-major ring otherwise."""
    by_node = _nodes_of(group, topo)
    if len(by_node) == 1 and topo.intra.kind == "full_mesh":
        return [tuple(group[i] for i in cyc) for cyc in hamiltonian_channels(len(group))]
    order = tuple(r for node in sorted(by_node) for r in sorted(by_node[node]))
    return [order]


def _ring(kind: str, group: tuple[int, ...], nbytes: int, topo: Topology, root: int) -> tuple[Phase, ...]:
    p = len(group)
    orders = _ring_orders(group, topo)
    c = len(orders)
    flows = []
    if kind in ("all_reduce", "reduce_scatter", "all_gather"):
        factor = 2 * (p - 1) / p if kind == "all_reduce" else (p - 1) / p
        steps = 2 * (p - 1) if kind == "all_reduce" else p - 1
        per_hop = factor * nbytes / c
        for order in orders:
            hops = tuple(zip(order, order[1:] + order[:1]))
            flows.append(FlowSpec(hops, per_hop))
    else:  # broadcast / reduce: pipelined chain from (or to) the root along each channel
        steps = p - 1
        for order in orders:
            i = order.index(root)
            chain = order[i:] + order[:i]
            hops = tuple(zip(chain, chain[1:]))
            if kind == "reduce":
                hops = tuple((d, s) for s, d in reversed(hops))
            flows.append(FlowSpec(hops, nbytes / c))
    return (Phase(_ring_latency(kind, group, topo, steps), tuple(flows)),)


def _direct(kind: str, group: tuple[int, ...], nbytes: int, topo: Topology, root: int,
            alg: str) -> tuple[Phase, ...]:
    p = len(group)
    alpha = topo.intra.direct_alpha_us * 1e-6
    if len(_nodes_of(group, topo)) > 1 and topo.inter is not None:
        alpha += (topo.inter.base_us + topo.inter.ring_step_us) * 1e-6

    def pairwise(size: float) -> Phase:
        return Phase(alpha, tuple(FlowSpec(((s, d),), size) for s in group for d in group if s != d))

    if kind == "all_reduce" and alg == "one_shot":
        return (pairwise(nbytes),)
    if kind == "all_reduce":  # two-shot
        return (pairwise(nbytes / p), pairwise(nbytes / p))
    if kind in ("reduce_scatter", "all_gather", "all_to_all"):
        return (pairwise(nbytes / p),)
    if kind == "broadcast":
        return (Phase(alpha, tuple(FlowSpec(((root, d),), nbytes) for d in group if d != root)),)
    return (Phase(alpha, tuple(FlowSpec(((s, root),), nbytes) for s in group if s != root)),)  # reduce


def _tree(kind: str, group: tuple[int, ...], nbytes: int, topo: Topology, root: int) -> tuple[Phase, ...]:
    """Double binary tree (NCCL 2.4): two trees over the ranks, each handling half the data.

    Tree A is the heap order of the ranks, tree B the heap order of the ranks rotated by one, so a
    leaf of A is mostly an inner node of B. For all-reduce each tree edge carries its half up
    (reduce) and down (broadcast), pipelined, so both directions flow at once.
    """
    p = len(group)
    depth = max(1, math.ceil(math.log2(p)))
    step = topo.inter.ring_step_us if topo.inter is not None and len(_nodes_of(group, topo)) > 1 \
        else topo.intra.ring_step_us
    base = topo.intra.ring_base_us + (topo.inter.base_us if topo.inter is not None else 0.0)
    if kind in ("broadcast", "reduce"):
        i = group.index(root)
        group = group[i:] + group[:i]
    flows = []
    for shift in (0, 1):
        order = group if shift == 0 or kind != "all_reduce" else group[1:] + group[:1]
        edges = [(order[(i - 1) // 2], order[i]) for i in range(1, p)]  # parent → child
        half = nbytes / 2
        if kind in ("all_reduce", "broadcast"):
            flows += [FlowSpec(((a, b),), half) for a, b in edges]
        if kind in ("all_reduce", "reduce"):
            flows += [FlowSpec(((b, a),), half) for a, b in edges]
    steps = 2 * depth if kind == "all_reduce" else depth
    return (Phase((base + steps * step) * 1e-6, tuple(flows)),)


def _recursive_doubling(group: tuple[int, ...], nbytes: float, topo: Topology) -> tuple[Phase, ...]:
    """Recursive doubling all-reduce (Thakur, Rabenseifner & Gropp 2005): log2 p steps of pairwise exchange.

    Step i pairs ranks whose positions differ in bit i; each sends its whole current N. Time
    log2(p)·(α + N/B); bytes per rank N·log2 p (latency-optimal, not bandwidth-optimal).
    """
    p = len(group)
    multi = len(_nodes_of(group, topo)) > 1 and topo.inter is not None
    step = topo.inter.ring_step_us if multi and topo.inter is not None else topo.intra.ring_step_us
    base = (topo.inter.base_us if multi and topo.inter is not None else 0.0) + topo.intra.direct_alpha_us
    phases = []
    bit = 1
    first = True
    while bit < p:
        flows = tuple(FlowSpec(((group[i], group[i ^ bit]),), nbytes) for i in range(p))
        phases.append(Phase(((base if first else 0.0) + step) * 1e-6, flows))
        first = False
        bit <<= 1
    return tuple(phases)


def _hierarchical(kind: str, group: tuple[int, ...], nbytes: int, topo: Topology,
                  root: int) -> tuple[Phase, ...]:
    """Intra-node phase(s) on each node in parallel and per-rail inter-node phase (hardware.md §8)."""
    by_node = _nodes_of(group, topo)
    nodes = sorted(by_node)
    g = len(by_node[nodes[0]])
    locals_ = [tuple(sorted(by_node[n])) for n in nodes]
    rails = [tuple(members[j] for members in locals_) for j in range(g)]

    def intra(kind2: str, size: int, root_of: dict[int, int] | None = None) -> Phase:
        phases = []
        for members in locals_:
            r = root_of[members[0]] if root_of else -1
            plan = plan_collective(kind2, members, size, topo, r)
            phases.append(plan.phases)
        phases = [ph for ph in phases if ph]
        if not phases:  # one rank per node: nothing to do inside the nodes
            return Phase(0.0, ())
        # All nodes run the same plan shape; merge phase by phase (one phase for ring/direct RS/AG).
        lat = max(ph[0].latency_s for ph in phases)
        return Phase(lat, tuple(f for ph in phases for f in ph[0].flows))

    def inter(kind2: str, size: float) -> list[Phase]:
        """The same inter-node collective on every rail at once, merged phase by phase."""
        small = kind2 == "all_reduce" and size <= topo.intra.direct_max_bytes
        alg = "rd" if small and _power_of_two(len(rails[0])) else "ring"
        plans = [plan_collective(kind2, rail, size, topo, -1, alg) for rail in rails]
        return [Phase(max(pl.phases[i].latency_s for pl in plans), tuple(f for pl in plans for f in pl.phases[i].flows))
                for i in range(len(plans[0].phases))]

    def merged(kind2: str, size: int) -> list[Phase]:
        # Direct two-shot intra phases have two steps; expand node plans step by step.
        plans = [plan_collective(kind2, m, size, topo) for m in locals_]
        out = []
        for i in range(len(plans[0].phases)):
            out.append(Phase(max(pl.phases[i].latency_s for pl in plans),
                             tuple(f for pl in plans for f in pl.phases[i].flows)))
        return out

    if kind == "all_reduce":
        return (*merged("reduce_scatter", nbytes), *inter("all_reduce", nbytes / g),
                *merged("all_gather", nbytes))
    if kind == "reduce_scatter":
        return (*merged("reduce_scatter", nbytes), *inter("reduce_scatter", nbytes / g))
    if kind == "all_gather":
        return (*inter("all_gather", nbytes / g), *merged("all_gather", nbytes))
    # broadcast / reduce: inter-node on the root's rail, intra-node from (to) that rail's rank
    rail = next(r for r in rails if root in r)
    node_root = {members[0]: next(m for m in members if m in rail) for members in locals_}
    if kind == "broadcast":
        first = plan_collective("broadcast", rail, nbytes, topo, root, "ring").phases[0]
        return (first, intra("broadcast", nbytes, node_root))
    last = plan_collective("reduce", rail, nbytes, topo, root, "ring").phases[0]
    return (intra("reduce", nbytes, node_root), last)

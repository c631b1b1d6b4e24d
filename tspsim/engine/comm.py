"""Communication ops of a replay resolved to flows on the topology's links (used by :mod:`tspsim.engine.sim`).

A collective op gets its plan from the policy (:func:`tspsim.engine.collectives.plan_collective`); each
phase becomes (latency, links, weights, progress): the hops of the phase routed over the topology,
their bytes per payload byte times the protocol's wire factor summed per link
(:func:`~tspsim.engine.collectives.phase_links`), and the bytes of progress the flow must make (the
payload plus any pipeline fill). A send/recv is one flow over its route (weight 1: the measured
point-to-point rate is the link capacity) after the direct start-up and the wire latency; like a collective,
its kernel slows compute by the fabric's ``compute_slowdown`` (the network's when it crosses nodes).

**Folding** (design.md §7): when the graph holds one replica, hops sent by mirror ranks are dropped
(their simulated twin carries identical traffic) and every remaining link is replaced by its twin
inside the replica; a mirror receiver is accounted on its twin. A collective whose group reaches
beyond one replica (and spans nodes) only uses node-symmetric algorithms (``fold_safe_only``), in
folded and full replays alike, so both give the same result (tests/test_folding.py).

A graph may carry a general fold (:class:`tspsim.spec.fold.FoldPlan` in ``meta["fold"]``: units inside
stage slabs, and tensor-parallel peers folded onto one rank): a link is then mapped to the same link of its
owner's twin — a GPU's ports, PCIe and NIC links follow the GPU, a spine link its rail and leaf group, an
NVLS engine its node — and a switch's NVLS engine sends only to simulated GPUs (its hops to a mirror are the
twin's). ``meta["replica_map"]`` tells which replica a rank belongs to when pipeline stages make replicas
non-contiguous (tests/test_pipeline_folding.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tspsim.engine.collectives import Shape, phase_links, plan_collective
from tspsim.opgraph import P2P_KINDS, Op
from tspsim.spec import routes
from tspsim.spec.fold import FoldPlan
from tspsim.spec.topology import Topology


@dataclass(frozen=True)
class ResolvedComm:
    """A communication op ready to run: phases of one flow each, bytes per rank, compute slowdown."""

    algorithm: str
    """Algorithm (``p2p`` for a send/recv)."""
    protocol: str
    """Wire protocol."""
    phases: tuple[tuple[float, list[int], list[float], float], ...]
    """(latency s, link indices, wire bytes per progress byte on each, progress bytes) per phase."""
    sent: dict[int, float]
    """Bytes sent by each simulated rank."""
    recv: dict[int, float]
    """Bytes received by each rank (mirror receivers accounted on their simulated twin)."""
    slowdown: float
    """Compute slowdown while the op's kernel runs."""


class CommResolver:
    """Resolves the communication ops of one replay (caches shapes' link loads per replay)."""

    def __init__(self, topo: Topology, sim_ranks: Iterable[int], fold: int, replica_size: int,
                 protocol: str = "", plan: FoldPlan | None = None,
                 replica_map: dict[str, Any] | None = None) -> None:
        """Set up the resolver of one replay.

        Args:
            topo: the topology.
            sim_ranks: ranks simulated in this replay.
            fold: replica nodes when the graph is folded, else 0.
            replica_size: ranks per replica (0 when the graph says nothing about replicas).
            protocol: a protocol forced on every collective, or empty.
            plan: a general fold (slabs, tensor-parallel peers), or None for the replica fold.
            replica_map: ``{"mp", "dp", "pp", "placement"}`` of a pipelined layout (replicas are not
                contiguous with stages outermost), or None.
        """
        self.topo = topo
        self.sim = set(sim_ranks)
        self.sim_arr = np.array(sorted(self.sim), dtype=np.int64)
        self.sim_nodes = {r // topo.gpus_per_node for r in self.sim}
        self.fold = fold
        self.replica_size = replica_size or (fold * topo.gpus_per_node if fold else 0)
        self.protocol = protocol
        self.plan = plan if fold else None
        self.replica_map = replica_map
        if self.plan is not None:
            self.fold_to = _plan_links(topo, self.plan)
            self._twin = self.plan.twin_array(topo.world_size)
        else:
            self.fold_to = routes.fold_array(topo, fold) if fold else None
            self._twin = None
        self._shapes: dict[int, tuple[Shape, list[Any]]] = {}
        self._groups: dict[int, tuple[tuple[int, ...], bool, float]] = {}

    def resolve(self, op: Op) -> ResolvedComm:
        """The flows of ``op`` (a collective or a send/recv)."""
        if op.kind in P2P_KINDS:
            return self._p2p(op)
        _, sensitive, slowdown = self._group_facts(op.group)
        plan = plan_collective(op.kind, op.group, op.nbytes, self.topo, op.root, op.algorithm, self.protocol,
                               fold_safe_only=sensitive)
        per_phase, sent_frac, recv_frac = self._shape_links(plan.shape)
        n = op.nbytes
        phases = tuple((ph.latency_s, links, weights, ph.progress(n))
                       for ph, (links, weights) in zip(plan.phases, per_phase))
        sent = {r: f * n for r, f in sent_frac.items()}
        recv = {r: f * n for r, f in recv_frac.items()}
        return ResolvedComm(plan.algorithm, plan.protocol, phases, sent, recv, slowdown)

    def _group_facts(self, group: tuple[int, ...]) -> tuple[tuple[int, ...], bool, float]:
        """(group, :meth:`fold_sensitive`, :meth:`_slowdown`) of a group, kept per group object.

        The ops of one collective share their group tuple, and a 16,384-rank group takes a third of a millisecond
        to scan; the tuple itself is kept with its facts, so its ``id`` cannot be reused while cached.
        """
        found = self._groups.get(id(group))
        if found is None or found[0] is not group:
            found = self._groups[id(group)] = (group, self.fold_sensitive(group), self._slowdown(group))
        return found

    def fold_sensitive(self, group: tuple[int, ...]) -> bool:
        """True if the group spans nodes and more than one replica (folding needs node-symmetric plans).

        ``r // c`` is non-decreasing in r, so a group spans several nodes (contiguous replicas) exactly when its
        smallest and largest ranks do: two C-level scans of the group, no set of 16,384 node numbers.
        """
        size = self.replica_size
        g = self.topo.gpus_per_node
        rm = self.replica_map
        if not group:
            return False
        lo, hi = min(group), max(group)
        if rm:
            m, dp, pp = int(rm["mp"]), int(rm["dp"]), int(rm["pp"])
            if rm.get("placement") == "mp-pp-dp":
                several = lo // (m * pp) != hi // (m * pp)
            else:
                several = len({(r // m) % dp for r in group}) > 1
            return several and lo // g != hi // g
        if not size:
            return False
        return lo // size != hi // size and lo // g != hi // g

    # ------------------------------------------------------------------------------ internals
    def _shape_links(self, shp: Shape) -> tuple[list[Any], dict[int, float], dict[int, float]]:
        cached = self._shapes.get(id(shp))
        if cached is not None and cached[0] is shp:
            return cached[1]
        per_phase = []
        sent: dict[int, float] = {}
        recv: dict[int, float] = {}
        for ph in shp.phases:
            f = ph.flow
            keep = self._sender_simulated(f.src, f.dst) if self.fold else None
            links, weights = phase_links(self.topo, f, shp.protocol, keep, self.fold_to)
            per_phase.append((links.tolist(), weights.tolist()))
            src, dst, frac = (f.src, f.dst, f.frac) if keep is None else (f.src[keep], f.dst[keep], f.frac[keep])
            _accumulate(sent, src, frac)
            _accumulate(recv, self._representative(dst), frac)
        result = (per_phase, sent, recv)
        self._shapes[id(shp)] = (shp, result)
        return result

    def _sender_simulated(self, src: np.ndarray, dst: np.ndarray | None = None) -> np.ndarray:
        keep = np.isin(src, self.sim_arr)
        engines = src < 0
        if engines.any():
            keep[engines] = np.isin(-1 - src[engines], np.array(sorted(self.sim_nodes), dtype=np.int64))
            if self.plan is not None and self.plan.peer > 1 and dst is not None:
                # an engine's hop to a mirror GPU is its twin's hop to the simulated GPU
                to_gpu = engines & (dst >= 0)
                keep[to_gpu] &= np.isin(dst[to_gpu], self.sim_arr)
        return keep

    def _representative(self, dst: np.ndarray) -> np.ndarray:
        """Mirror receivers → their twin in the simulated replica (engine endpoints unchanged)."""
        if not self.fold:
            return dst
        if self._twin is not None:
            out = dst.copy()
            gpu = dst >= 0
            out[gpu] = self._twin[dst[gpu]]
            return out
        per = self.fold * self.topo.gpus_per_node
        base = (int(self.sim_arr.min()) // per) * per
        mirror = (dst >= 0) & ~np.isin(dst, self.sim_arr)
        return np.where(mirror, dst % per + base, dst)

    def _p2p(self, op: Op) -> ResolvedComm:
        topo = self.topo
        src, dst = op.group
        route = routes.route_links(topo, src, dst)
        latency = topo.link_latencies_s
        lat = topo.intra.direct_alpha_us * 1e-6 + sum(latency[i] for i in route)
        sent: dict[int, float] = {}
        recv: dict[int, float] = {}
        uniq: dict[int, float] = {}
        if src in self.sim:  # a mirror's send is carried by its simulated twin: only the latency here
            for i in route:
                link = int(self.fold_to[i]) if self.fold_to is not None else i
                uniq[link] = uniq.get(link, 0.0) + 1.0
            sent[src] = float(op.nbytes)
            rep = int(self._representative(np.array([dst]))[0])
            recv[rep] = float(op.nbytes)
        phases = ((lat, list(uniq), list(uniq.values()), float(op.nbytes)),)
        return ResolvedComm("p2p", "Simple", phases, sent, recv, self._group_facts(op.group)[2])

    def _slowdown(self, group: tuple[int, ...]) -> float:
        """The network's slowdown for a group of one rank per node (several nodes), else the node fabric's.

        A group larger than the cluster's node count cannot have one rank per node: no set is built for it.
        """
        topo = self.topo
        g = topo.gpus_per_node
        if (topo.inter is not None and 1 < len(group) <= topo.nodes
                and len({r // g for r in group}) == len(group)):
            return topo.inter.compute_slowdown
        return topo.intra.compute_slowdown


def _accumulate(out: dict[int, float], ranks: np.ndarray, frac: np.ndarray) -> None:
    ok = ranks >= 0
    if not ok.any():
        return
    sums = np.bincount(ranks[ok], weights=frac[ok])
    present = np.flatnonzero(np.bincount(ranks[ok]))
    for r, b in zip(present.tolist(), sums[present].tolist()):
        out[r] = out.get(r, 0.0) + b


def _plan_links(topo: Topology, plan: FoldPlan) -> np.ndarray:
    """``out[i]``: the twin of link i under a general fold (see the module docstring).

    Built once per topology and plan and kept on the topology (every replay of a search folds the same way);
    read-only.
    """
    cache = topo.__dict__.setdefault("_plan_links_cache", {})
    found = cache.get(plan)
    if found is None:
        if len(cache) >= _PLAN_LINKS_KEPT:
            cache.clear()
        found = cache[plan] = _build_plan_links(topo, plan)
        found.flags.writeable = False
    return found


_PLAN_LINKS_KEPT = 8
"""Most link tables of general folds kept per topology (one 8-byte entry per link each)."""


def _build_plan_links(topo: Topology, plan: FoldPlan) -> np.ndarray:
    """:func:`_plan_links` computed.

    Node-fabric links move with their node (on a switch node, a GPU's ports also move to its twin GPU's); the
    four network links of a GPU follow the GPU; a spine link moves to its rail's twin rail and to the leaf group
    of the twin of the group's first node; an NVLS engine moves with its node.
    """
    lay = routes.layout(topo)
    g = lay.gpus_per_node
    idx = np.arange(topo.link_count, dtype=np.int64)
    out = idx.copy()
    tau = plan.twin_node_array(topo.nodes)
    intra = idx < lay.network_base
    node, pos = np.divmod(idx[intra], lay.intra_per_node)
    if not lay.mesh and plan.peer > 1:
        local, port = np.divmod(pos, 2)
        pos = 2 * (local - local % plan.peer) + port
    out[intra] = tau[node] * lay.intra_per_node + pos
    if topo.inter is not None:
        end = lay.network_base + 4 * topo.world_size
        net = (idx >= lay.network_base) & (idx < end)
        rank, kind = np.divmod(idx[net] - lay.network_base, 4)
        rn, local = np.divmod(rank, g)
        out[net] = lay.network_base + 4 * (tau[rn] * g + local - local % plan.peer) + kind
        if lay.spine_base >= 0:
            sp = (idx >= lay.spine_base) & (idx < lay.spine_base + 2 * g * lay.leaf_groups)
            pos2, way = np.divmod(idx[sp] - lay.spine_base, 2)
            rail, grp = np.divmod(pos2, lay.leaf_groups)
            grp2 = tau[np.minimum(grp * lay.nodes_per_leaf, topo.nodes - 1)] // lay.nodes_per_leaf
            out[sp] = lay.spine_base + 2 * ((rail - rail % plan.peer) * lay.leaf_groups + grp2) + way
    if lay.nvls_base >= 0:
        nv = idx >= lay.nvls_base
        out[nv] = lay.nvls_base + tau[idx[nv] - lay.nvls_base]
    return out

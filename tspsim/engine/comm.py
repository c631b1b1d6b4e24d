"""Communication ops of a replay resolved to flows on the topology's links (used by :mod:`tspsim.engine.sim`).

A collective op gets its plan from the policy (:func:`tspsim.engine.collectives.plan_collective`); each
phase becomes (latency, links, weights, progress): the hops of the phase routed over the topology,
their bytes per payload byte times the protocol's wire factor summed per link
(:func:`~tspsim.engine.collectives.phase_links`), and the bytes of progress the flow must make (the
payload plus any pipeline fill). A send/recv is one flow over its route (weight 1: the measured
point-to-point rate is the link capacity) after the direct start-up and the wire latency.

**Folding** (design.md §7): when the graph holds one replica, hops sent by mirror ranks are dropped
(their simulated twin carries identical traffic) and every remaining link is replaced by its twin
inside the replica; a mirror receiver is accounted on its twin. A collective whose group reaches
beyond one replica (and spans nodes) only uses node-symmetric algorithms (``fold_safe_only``), in
folded and full replays alike, so both give the same result (tests/test_folding.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tspsim.engine.collectives import Shape, phase_links, plan_collective
from tspsim.opgraph import P2P_KINDS, Op
from tspsim.spec import routes
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
                 protocol: str = "") -> None:
        """Set up the resolver of one replay.

        Args:
            topo: the topology.
            sim_ranks: ranks simulated in this replay.
            fold: replica nodes when the graph is folded, else 0.
            replica_size: ranks per replica (0 when the graph says nothing about replicas).
            protocol: a protocol forced on every collective, or empty.
        """
        self.topo = topo
        self.sim = set(sim_ranks)
        self.sim_arr = np.array(sorted(self.sim), dtype=np.int64)
        self.sim_nodes = {topo.node_of(r) for r in self.sim}
        self.fold = fold
        self.replica_size = replica_size or (fold * topo.gpus_per_node if fold else 0)
        self.protocol = protocol
        self.fold_to = routes.fold_array(topo, fold) if fold else None
        self._shapes: dict[int, tuple[Shape, list[Any]]] = {}

    def resolve(self, op: Op) -> ResolvedComm:
        """The flows of ``op`` (a collective or a send/recv)."""
        if op.kind in P2P_KINDS:
            return self._p2p(op)
        plan = plan_collective(op.kind, op.group, op.nbytes, self.topo, op.root, op.algorithm, self.protocol,
                               fold_safe_only=self.fold_sensitive(op.group))
        per_phase, sent_frac, recv_frac = self._shape_links(plan.shape)
        n = op.nbytes
        phases = tuple((ph.latency_s, links, weights, ph.progress(n))
                       for ph, (links, weights) in zip(plan.phases, per_phase))
        sent = {r: f * n for r, f in sent_frac.items()}
        recv = {r: f * n for r, f in recv_frac.items()}
        return ResolvedComm(plan.algorithm, plan.protocol, phases, sent, recv, self._slowdown(op.group))

    def fold_sensitive(self, group: tuple[int, ...]) -> bool:
        """True if the group spans nodes and more than one replica (folding needs node-symmetric plans)."""
        size = self.replica_size
        if not size:
            return False
        topo = self.topo
        return len({r // size for r in group}) > 1 and len({topo.node_of(r) for r in group}) > 1

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
            keep = self._sender_simulated(f.src) if self.fold else None
            links, weights = phase_links(self.topo, f, shp.protocol, keep, self.fold_to)
            per_phase.append((links.tolist(), weights.tolist()))
            src, dst, frac = (f.src, f.dst, f.frac) if keep is None else (f.src[keep], f.dst[keep], f.frac[keep])
            _accumulate(sent, src, frac)
            _accumulate(recv, self._representative(dst), frac)
        result = (per_phase, sent, recv)
        self._shapes[id(shp)] = (shp, result)
        return result

    def _sender_simulated(self, src: np.ndarray) -> np.ndarray:
        keep = np.isin(src, self.sim_arr)
        engines = src < 0
        if engines.any():
            keep[engines] = np.isin(-1 - src[engines], np.array(sorted(self.sim_nodes), dtype=np.int64))
        return keep

    def _representative(self, dst: np.ndarray) -> np.ndarray:
        """Mirror receivers → their twin in the simulated replica (engine endpoints unchanged)."""
        if not self.fold:
            return dst
        per = self.fold * self.topo.gpus_per_node
        base = (int(self.sim_arr.min()) // per) * per
        mirror = (dst >= 0) & ~np.isin(dst, self.sim_arr)
        return np.where(mirror, dst % per + base, dst)

    def _p2p(self, op: Op) -> ResolvedComm:
        topo = self.topo
        src, dst = op.group
        route = topo.route(src, dst)
        lat = topo.intra.direct_alpha_us * 1e-6 + sum(topo.links[i].latency_s for i in route)
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
        return ResolvedComm("p2p", "Simple", phases, sent, recv, topo.intra.compute_slowdown)

    def _slowdown(self, group: tuple[int, ...]) -> float:
        topo = self.topo
        nodes = {topo.node_of(r) for r in group}
        if len(nodes) > 1 and topo.inter is not None and len(nodes) == len(group):
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

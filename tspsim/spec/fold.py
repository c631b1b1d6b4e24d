"""Which ranks a replay simulates and whose twin each mirrored rank is (exact symmetry folding, issue 14).

Two symmetries, composable (README "Symmetry folding"):

* **Data-parallel replicas** are identical. Nodes fold in units of ``U`` nodes: node n's twin is
  ``n mod U`` (the fold before pipelines) or, when stages are placed outermost (``--layout mp-dp-pp``), the
  same position inside its stage's *slab* of ``S`` nodes: ``τ(n) = S·⌊n/S⌋ + (n mod S) mod U`` — a stage's
  replicas are neighbours, so each slab holds one stage of every replica.
* **Tensor-parallel peers** of one stage run identical per-op work (``tp``, ``satp-*``, ``tp+sp``: every
  rank of a TP group computes the same shapes and joins the same collectives), and a switch or full-mesh
  node, its NICs and rails are symmetric under relabelling the GPUs of the group. Only the first rank of
  each group of ``peer`` consecutive GPUs is simulated: GPU ``l`` of a node has the twin ``l − l mod peer``.
  Not for ``tsp``, whose broadcast roots differ per rank.

A rank's twin is ``τ(node)·g + l − l mod peer``; the simulated ranks are those that are their own twin. The
engine (:mod:`tspsim.engine.comm`) drops every hop a mirror sends (its twin sends the same) and maps every link
a simulated hop crosses to the twin of its owner, so each simulated link carries what its twins carry in the
full replay. ``tests/test_pipeline_folding.py`` proves the equality on small clusters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tspsim.core.errors import TraceError
from tspsim.spec.layout import Layout, fold_unit_gpus
from tspsim.spec.topology import Topology


@dataclass(frozen=True)
class FoldPlan:
    """One fold: node units (with slabs) and tensor-parallel peer groups."""

    gpus_per_node: int
    """g, GPUs per node of the topology the plan is for."""
    unit_nodes: int
    """U, nodes of one simulated unit (all nodes: no data-parallel fold)."""
    slab_nodes: int = 0
    """S, nodes per slab (0: the whole cluster is one slab)."""
    peer: int = 1
    """GPUs of a node that fold onto the first of each group of this many (1: none)."""

    def twin_node(self, node: int) -> int:
        """τ(n): the simulated node whose replay stands for node n."""
        if self.slab_nodes:
            base = node - node % self.slab_nodes
            return base + (node - base) % self.unit_nodes
        return node % self.unit_nodes

    def twin(self, rank: int) -> int:
        """The simulated rank whose replay stands for ``rank``."""
        g = self.gpus_per_node
        node, local = divmod(rank, g)
        return self.twin_node(node) * g + local - local % self.peer

    def twin_node_array(self, nodes: int) -> np.ndarray:
        """:meth:`twin_node` of nodes ``0 .. nodes − 1`` as an array (``tests/test_fold_arrays.py`` checks it)."""
        node = np.arange(nodes, dtype=np.int64)
        if self.slab_nodes:
            base = node - node % self.slab_nodes
            return base + (node - base) % self.unit_nodes
        return node % self.unit_nodes

    def twin_array(self, world: int) -> np.ndarray:
        """:meth:`twin` of ranks ``0 .. world − 1`` as an array (vectorised: 65,536 ranks per replay)."""
        g = self.gpus_per_node
        node, local = np.divmod(np.arange(world, dtype=np.int64), g)
        return self.twin_node_array(-(-world // g))[node] * g + local - local % self.peer

    def simulated(self, world: int) -> tuple[int, ...]:
        """The ranks of ``[0, world)`` that are their own twin, ascending.

        A rank is its own twin exactly when its node is (τ(n) = n) and its local index is a multiple of ``peer``,
        so the nodes are scanned, not the ranks (``tests/test_folding.py`` checks it against the rank-by-rank
        definition).
        """
        g, peer = self.gpus_per_node, self.peer
        nodes = -(-world // g)
        own = np.flatnonzero(self.twin_node_array(nodes) == np.arange(nodes)).tolist()
        return tuple(r for node in own for r in range(node * g, min(node * g + g, world), peer))

    def to_meta(self) -> dict[str, int]:
        """The plan as recorded in a graph's ``meta["fold"]``."""
        return {"gpus_per_node": self.gpus_per_node, "unit_nodes": self.unit_nodes,
                "slab_nodes": self.slab_nodes, "peer": self.peer}

    @classmethod
    def from_meta(cls, meta: Any, where: str = "trace") -> FoldPlan:
        """A plan read back from ``meta["fold"]`` (every field checked).

        Raises:
            TraceError: for a missing or malformed field.
        """
        if not isinstance(meta, dict):
            raise TraceError(f"{where}: meta.fold must be a mapping")
        vals = {}
        for key in ("gpus_per_node", "unit_nodes", "slab_nodes", "peer"):
            v = meta.get(key)
            low = 0 if key == "slab_nodes" else 1
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= 1 << 20:
                raise TraceError(f"{where}: meta.fold.{key} must be a whole number ≥ {low}, got {v!r}"[:200])
            vals[key] = v
        return cls(**vals)

    def fault(self, nodes: int, gpus_per_node: int) -> str | None:
        """Why this plan cannot fold a cluster of ``nodes`` × ``gpus_per_node`` GPUs, or None.

        The node map must be inside the cluster and map units onto units (S a multiple of U, the nodes a
        multiple of S), and peer groups must tile a node.
        """
        if gpus_per_node != self.gpus_per_node:
            return f"it folds {self.gpus_per_node}-GPU nodes, not {gpus_per_node}-GPU ones"
        if gpus_per_node % self.peer:
            return f"peer groups of {self.peer} GPUs do not tile a {gpus_per_node}-GPU node"
        span = self.slab_nodes or nodes
        if span % self.unit_nodes or nodes % span:
            return (f"units of {self.unit_nodes} node(s) in slabs of {span} do not tile {nodes} node(s)")
        return None


PEER_FOLD_SCHEDULES = ("tp", "satp-seq", "satp-batch", "tp+sp")
"""Schedules whose tensor-parallel peers run identical per-op work (their T axis folds onto one rank)."""


def plan_fold(topo: Topology, layout: Layout) -> FoldPlan | None:
    """The fold of a layout's replay, or None (simulate every GPU).

    Without a pipeline: the data-parallel fold of :func:`tspsim.spec.layout.fold_unit_gpus` (one replica of
    whole nodes, or one node of replicas). With a pipeline, also the tensor-parallel peer fold (T ≥ 2 inside a
    node, :data:`PEER_FOLD_SCHEDULES`), and with ``mp-dp-pp`` placement the data-parallel fold runs inside
    each stage's slab of M·DP GPUs: units of max(M, g) GPUs when the slab holds several (M the model-parallel
    group, g the GPUs per node). On an oversubscribed fat tree spanning several leaf groups a slab fold is
    left out (its spine links would not be twinned exactly).
    """
    g = topo.gpus_per_node
    world = layout.world_size
    nodes = -(-world // g)
    if layout.pp == 1:
        unit = fold_unit_gpus(topo, world, layout.replica_size)
        return FoldPlan(g, unit // g) if unit and layout.replicas > 1 else None
    peer = layout.tp if (layout.schedule in PEER_FOLD_SCHEDULES and 2 <= layout.tp <= g and g % layout.tp == 0
                         and layout.mp_size % layout.tp == 0) else 1
    unit_nodes, slab = nodes, 0
    m, dp = layout.mp_size, layout.replicas
    if dp > 1 and world % g == 0:
        if layout.placement == "mp-pp-dp":
            unit = fold_unit_gpus(topo, world, layout.replica_size)
            if unit:
                unit_nodes = unit // g
        else:
            per_unit = max(m, g)
            k = per_unit // m                      # replicas per unit
            inter = topo.inter
            oversub = (inter is not None and inter.topology == "rail_optimized_fat_tree"
                       and inter.oversubscription > 1 and world > inter.nodes_per_leaf * g)
            if per_unit % g == 0 and dp % k == 0 and dp > k and (m * dp) % g == 0 and not oversub:
                unit_nodes, slab = per_unit // g, m * dp // g
    if unit_nodes == nodes and peer == 1:
        return None
    return FoldPlan(g, unit_nodes, slab, peer)

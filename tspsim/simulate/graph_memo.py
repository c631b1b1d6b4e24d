"""Op graphs reused across points that differ only in what the replay reads (issue 19, "skip what is known").

A hardware what-if sweep (``tspsim sweep -t base.yaml,faster-links.yaml``, or topology files that change a
GPU's peak, HBM bandwidth or an efficiency) simulates the same schedule on topologies whose op graphs are
identical: the build places and folds ops, the replay costs them (:mod:`tspsim.spec.topology_structure`).
A :class:`GraphMemo`, owned by whoever runs the points (a runner, like its
:class:`~tspsim.spec.loader.SpecLoader`), keeps the graphs built for a group of points run one after the other
and hands one back when a point asks for a graph with the same key: the schedule and fold, the resolved
model (its layer count included), layout, workload and assumptions, and the topology's build structure. The
reused graph shares the ops (a replay never changes them) and gets its own metadata naming its own topology.

What goes through it: the whole training / forward step of :func:`tspsim.simulate.graph.build_graph` (a
pipelined step timed from a shorter probe builds the probe instead, outside the memo), the prefill step of
an inference point and of its max-batch probes (:func:`tspsim.simulate.inference.prefill_graph`), and every
decode step an inference point builds (:func:`tspsim.simulate.inference.decode_step`: the short graphs its
:class:`~tspsim.simulate.decode_timer.DecodeTimer` re-costs for every cached length, the whole step, the final
step, the max-batch probes). A decode step is re-costed in place, so the memo keeps the step as built and hands
out private copies of it (:meth:`~tspsim.schedules.decode.DecodeStep.private`: its own attention ops, the only
ones re-costing changes; every other op shared).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from tspsim.opgraph import OpGraph
from tspsim.schedules.decode import DecodeStep
from tspsim.spec.topology import Topology
from tspsim.spec.topology_structure import build_structure

GraphKey = tuple[Any, ...]
"""What a graph is built from, without the replay-only topology fields (:func:`graph_key`)."""


def graph_key(schedule: str, fold: bool, topo: Topology, *inputs: Any) -> GraphKey:
    """The key of a graph built for ``schedule`` (``fold``) on ``topo`` from ``inputs``.

    ``inputs`` are the resolved model, layout, workload and assumptions (frozen dataclasses: their ``repr``
    lists every field, floats exactly), and for a decode step its cached token count.
    """
    return (schedule, fold, build_structure(topo), *map(repr, inputs))


def graph_of(graphs: GraphMemo | None, schedule: str, fold: bool, topo: Topology, inputs: tuple[Any, ...],
             build: Callable[[], OpGraph]) -> OpGraph:
    """``build()``, or the graph ``graphs`` holds for the same :func:`graph_key` (no memo: always built)."""
    if graphs is None:
        return build()
    return graphs.graph(graph_key(schedule, fold, topo, *inputs), topo.name, build)


def renamed(graph: OpGraph, topology: str) -> OpGraph:
    """``graph``'s ops (shared) with its own copy of the metadata, naming ``topology``."""
    meta = copy.deepcopy(graph.meta)
    if "topology" in meta:
        meta["topology"] = topology
    return OpGraph(ops=graph.ops, meta=meta, ranks=graph.ranks, replica_nodes=graph.replica_nodes)


class GraphMemo:
    """Graphs built for a group of points, by :func:`graph_key`, until :meth:`clear`.

    Its owner runs the points that may share graphs one after the other and clears the memo between groups
    (:func:`tspsim.explore.runners.graph_groups`), so it holds one group's graphs at most: a reused graph
    shares its ops with the first, and graphs no other point of the group needs are freed with the group.
    ``hits`` counts the graphs handed back without building.
    """

    def __init__(self) -> None:
        self._graphs: dict[GraphKey, OpGraph] = {}
        self._steps: dict[GraphKey, DecodeStep] = {}
        self.hits = 0
        """Graphs handed back without building."""

    def clear(self) -> None:
        """Forget every graph (the next group of points shares none of them)."""
        self._graphs.clear()
        self._steps.clear()

    def graph(self, key: GraphKey, topology: str, build: Callable[[], OpGraph]) -> OpGraph:
        """The graph of ``key`` built earlier (renamed for ``topology``), else ``build()``'s."""
        graph, built_now = self._known(self._graphs, key, build)
        return graph if built_now else renamed(graph, topology)

    def step(self, key: GraphKey, topology: str, build: Callable[[], DecodeStep]) -> DecodeStep:
        """A private copy of the decode step of ``key`` built earlier (renamed for ``topology``), else of ``build()``'s.

        The memo keeps the step as built; every caller gets its own attention ops to re-cost.
        """
        step, _ = self._known(self._steps, key, build)
        return step.private(renamed(step.graph, topology))

    def _known(self, store: dict[GraphKey, Any], key: GraphKey, build: Callable[[], Any]) -> tuple[Any, bool]:
        """(``store[key]``, False) counting a hit, else (``build()``, True) kept in ``store``."""
        known = store.get(key)
        if known is not None:
            self.hits += 1
            return known, False
        known = store[key] = build()
        return known, True

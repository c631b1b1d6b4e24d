"""Pieces of a replay that are not the event loop: the folding unit and link-rate recording."""

from __future__ import annotations

from tspsim.core.errors import TraceError
from tspsim.engine.network import Flow
from tspsim.engine.timeline import Timeline
from tspsim.opgraph import OpGraph
from tspsim.spec import routes
from tspsim.spec.fold import FoldPlan
from tspsim.spec.topology import Topology


def fold_nodes(graph: OpGraph, topo: Topology, sim_ranks: set[int]) -> tuple[int, FoldPlan | None]:
    """(nodes of the simulated unit of a folded graph on this topology, its general fold plan or None).

    0 nodes: nothing is mirrored. The plan is the graph's general fold (stage slabs, tensor-parallel
    peers: :mod:`tspsim.spec.fold`), if it records one.

    The unit is the graph's simulated ranks ``[0, n)``; it need not be the unit the graph was made
    for (a graph folded on 2 × 8 GPUs holds 4 nodes of an 8 × 2 topology), but the fold must be exact
    here (:func:`tspsim.spec.layout.fold_fault`, :meth:`FoldPlan.fault`), else the replay is refused
    rather than wrong.
    """
    from tspsim.spec.layout import fold_fault

    n = len(sim_ranks)
    world = 1 + max(_group_maxima(graph), default=0)
    if world <= n:
        return 0, None
    meta = graph.meta if isinstance(graph.meta, dict) else {}
    if "fold" in meta:  # a general fold (stage slabs, tensor-parallel peers)
        plan = FoldPlan.from_meta(meta["fold"])
        recorded = meta.get("world_size")
        if isinstance(recorded, int) and not isinstance(recorded, bool) and world < recorded <= topo.world_size:
            world = recorded   # mirrors that exchange nothing with simulated ranks still count
        nodes = -(-world // topo.gpus_per_node)
        fault = plan.fault(nodes, topo.gpus_per_node) or (
            None if sim_ranks == set(plan.simulated(world)) else "its simulated ranks are not the plan's")
        if fault:
            raise TraceError(f"the graph is folded (it simulates {n} of {world} GPUs and mirrors the rest) and "
                             f"the fold is not exact on {topo.name}: {fault}; generate it with --full, or on "
                             "this topology")
        return plan.unit_nodes, plan
    fault = None if sim_ranks == set(range(n)) else f"its simulated ranks are not 0..{n - 1}"
    fault = fault or fold_fault(topo, world, n)
    if fault:
        raise TraceError(f"the graph is folded (it simulates {n} of {world} GPUs and mirrors the rest) and the "
                         f"fold is not exact on {topo.name} ({topo.nodes} × {topo.gpus_per_node} GPUs): "
                         f"{fault}; generate it with --full, or on this topology")
    return n // topo.gpus_per_node, None


class LinkRecorder:
    """Records the rate of every link of the simulated nodes after each reallocation (for the viewer)."""

    def __init__(self, topo: Topology, sim_ranks: set[int], timeline: Timeline) -> None:
        self.timeline = timeline
        self.links: set[int] = set()
        """Indices of the recorded links (not PCIe)."""
        links = topo.links
        for i in recorded_links(topo, {r // topo.gpus_per_node for r in sim_ranks}):
            link = links[i]
            self.links.add(i)
            timeline.link_meta[i] = {"src": link.src, "dst": link.dst, "kind": link.kind,
                                     "capacity_Bps": link.capacity_Bps}

    def record(self, now: float, flows: list[Flow]) -> None:
        """Append a step to each recorded link whose load changed (one step per instant)."""
        load: dict[int, float] = {}
        recorded = self.links
        for f in flows:
            for link, w in zip(f.links, f.weights):
                if link in recorded:
                    load[link] = load.get(link, 0.0) + f.rate * w
        series = self.timeline.links
        for link in recorded:
            rate = load.get(link, 0.0)
            s = series.get(link)
            if s is None:
                if rate == 0.0:
                    continue
                s = series[link] = [(0.0, 0.0)]
            if s[-1][1] != rate:
                if s[-1][0] == now:
                    s[-1] = (now, rate)
                else:
                    s.append((now, rate))


def recorded_links(topo: Topology, nodes: set[int]) -> list[int]:
    """Indices, ascending, of the links a replay of ``nodes`` records: every link of one of them but PCIe.

    Found by the index layout (:mod:`tspsim.spec.routes`), not by scanning the 180,000 links of a 2,048-node
    cluster per replay (``tests/test_link_arrays.py`` compares it with that scan).
    """
    lay = routes.layout(topo)
    g = lay.gpus_per_node
    out: list[int] = []
    for n in sorted(nodes):
        out += range(n * lay.intra_per_node, (n + 1) * lay.intra_per_node)
        if topo.inter is not None:
            for r in range(n * g, (n + 1) * g):           # GPU→NIC, NIC→GPU (PCIe), NIC up, NIC down
                out += (lay.network_base + 4 * r + 2, lay.network_base + 4 * r + 3)
        if lay.nvls_base >= 0:
            out.append(lay.nvls_base + n)
    if lay.spine_base >= 0:                               # a spine link belongs to its leaf group's first node
        for rail in range(g):
            for grp in range(lay.leaf_groups):
                if grp * lay.nodes_per_leaf in nodes:
                    pos = lay.spine_base + 2 * (rail * lay.leaf_groups + grp)
                    out += (pos, pos + 1)
    return sorted(out)


def _group_maxima(graph: OpGraph) -> list[int]:
    """The largest rank of each distinct group object of the graph's communication ops.

    Ops share their group tuples (a builder passes one tuple to all participants), so each is scanned once
    (keyed by identity: hashing a 2,048-rank tuple per op would cost as much as the scan).
    """
    seen: dict[int, int] = {}
    for op in graph.ops:
        if op.is_comm and id(op.group) not in seen:
            seen[id(op.group)] = max(op.group)
    return list(seen.values())

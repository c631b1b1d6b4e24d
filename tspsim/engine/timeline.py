"""The Timeline: everything a replay produced. Metrics, viewer and exports read only this.

* spans: one per executed op — (op id, start s, end s); the op's rank, stream, kind and name come
  from the op graph the timeline keeps.
* memory: per-rank events (time s, category, signed bytes) in the order they happened.
* links: optional per-link rate steps (time s, bytes/s) for link-utilization plots.
* comm bytes: per-rank bytes sent and received, by op kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tspsim.opgraph import MEMORY_CATEGORIES, Op, OpGraph


@dataclass
class Timeline:
    """Result of :func:`tspsim.engine.sim.replay`."""

    graph: OpGraph
    """The replayed op graph (op metadata for every span)."""
    topology_name: str
    """Topology the graph ran on."""
    spans: list[tuple[int, float, float]] = field(default_factory=list)
    """(op id, start s, end s) in completion order."""
    memory: dict[int, list[tuple[float, str, int]]] = field(default_factory=dict)
    """Per-rank memory events (time s, category, signed bytes)."""
    links: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    """Per-link rate steps (time s, bytes/s); empty unless link recording was on."""
    link_meta: dict[int, dict[str, Any]] = field(default_factory=dict)
    """For each recorded link: src, dst, kind, capacity_Bps."""
    sent_bytes: dict[int, dict[str, float]] = field(default_factory=dict)
    """Per-rank bytes sent, by op kind."""
    recv_bytes: dict[int, dict[str, float]] = field(default_factory=dict)
    """Per-rank bytes received, by op kind."""
    op_sent_bytes: dict[int, float] = field(default_factory=dict)
    """Bytes each communication op's rank sent for that op (keyed by op id)."""
    collective_algorithms: dict[str, int] = field(default_factory=dict)
    """How many collectives used each algorithm."""
    sim_events: int = 0
    """simpy events processed."""
    sim_wall_s: float = 0.0
    """Wall-clock seconds the replay took."""
    sim_path: str = "full"
    """``full``: every op simulated; ``periodic``: repeating units skipped by an exact time shift
    (:mod:`tspsim.engine.periodic`; their spans, memory events and bytes are still all here)."""
    sim_units_skipped: int = 0
    """Repeating units the periodic path skipped."""
    sim_fingerprint: int = 0
    """Hash of the sequence of events processed (``ReplayOptions.fingerprint``; 0 otherwise), within one process."""

    @property
    def ops(self) -> list[Op]:
        """Ops of the graph, indexed by id."""
        return self.graph.ops

    @property
    def end_s(self) -> float:
        """Time the last op finished."""
        return max((end for _, _, end in self.spans), default=0.0)

    def memory_curve(self, rank: int) -> list[tuple[float, dict[str, int]]]:
        """Running per-category totals of ``rank`` after each event: [(time, {category: bytes})]."""
        cur = dict.fromkeys(MEMORY_CATEGORIES, 0)
        out = []
        for t, cat, delta in self.memory.get(rank, []):
            cur[cat] += delta
            out.append((t, dict(cur)))
        return out

    def peak_memory(self, rank: int) -> tuple[int, dict[str, int]]:
        """(peak total bytes, category breakdown at the peak) of ``rank``; first maximum wins."""
        best, at = 0, dict.fromkeys(MEMORY_CATEGORIES, 0)
        cur = dict.fromkeys(MEMORY_CATEGORIES, 0)
        total = 0
        for _, cat, delta in self.memory.get(rank, []):
            cur[cat] += delta
            total += delta
            if total > best:
                best, at = total, dict(cur)
        return best, at

"""A training or forward point: one step graph, one replay, the run entry."""

from __future__ import annotations

from tspsim.analysis.metrics import run_entry
from tspsim.engine.sim import ReplayOptions, replay
from tspsim.simulate.graph import build_graph
from tspsim.simulate.point import Point, RunResult
from tspsim.spec.loader import SpecLoader


def simulate_training(point: Point, fold: bool = True, record_links: bool = False,
                      specs: SpecLoader | None = None) -> RunResult:
    """Replay the step of a ``train`` or ``forward`` point and compute its metrics."""
    graph, topo, model, layout, workload, opts = build_graph(point, fold=fold, specs=specs)
    tl = replay(graph, topo, ReplayOptions(record_links=record_links))
    entry = run_entry(tl, topo, model, layout, workload, opts)
    return RunResult(entry, tl, topo, model, layout, workload, opts)

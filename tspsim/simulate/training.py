"""A training or forward point: one step graph, one replay, the run entry.

A long pipelined training step (many more micro-batches than stages) is timed from a shorter probe when its
steady state provably repeats (:mod:`tspsim.simulate.pipeline_timer`); otherwise the whole step is replayed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tspsim.analysis.metrics import run_entry
from tspsim.engine.replay_setup import ReplaySetup
from tspsim.engine.sim import ReplayOptions, replay
from tspsim.schedules import SCHEDULES
from tspsim.schedules.context import BuildContext
from tspsim.simulate.graph import Built, build_graph
from tspsim.simulate.graph_memo import GraphMemo
from tspsim.simulate.pipeline_timer import probe_micro_batches, probe_spec, window_for
from tspsim.simulate.point import Point, RunResult, resolve
from tspsim.spec.loader import SpecLoader


def simulate_training(point: Point, fold: bool = True, record_links: bool = False,
                      periodic: bool = True, specs: SpecLoader | None = None, built: Built | None = None,
                      plans: Any = None, setup: ReplaySetup | None = None, graphs: GraphMemo | None = None
                      ) -> RunResult:
    """Replay the step of a ``train`` or ``forward`` point and compute its metrics.

    ``periodic``: time a long 1F1B or interleaved pipeline from a probe of fewer micro-batches when its steady
    state repeats exactly (the entry's ``pipeline.simulated_micro_batches`` says how many the timeline holds).
    ``specs`` reads each file once across the calls that share it. ``built``: the point's graph as
    :func:`~tspsim.simulate.graph.build_graph` returned it (with the same ``fold``), not yet replayed; used
    instead of building it again when the whole step is replayed, with ``plans`` (its communication already
    resolved, e.g. by :func:`tspsim.engine.bound.step_time_lower_bound`) if given, and ``setup`` (its
    :class:`~tspsim.engine.replay_setup.ReplaySetup`, shared with those bounds) if given. ``graphs``: a graph
    built for an earlier point that differs only in what the replay reads is reused
    (:mod:`tspsim.simulate.graph_memo`).
    """
    specs = specs or SpecLoader()
    if periodic and point.mode == "train":
        result = _periodic(point, fold, record_links, specs)
        if result is not None:
            return result
    graph, topo, model, layout, workload, opts = built or build_graph(point, fold=fold, specs=specs,
                                                                                   graphs=graphs)
    tl = replay(graph, topo, ReplayOptions(record_links=record_links), plans if built is not None else None,
                setup if built is not None else None)
    entry = run_entry(tl, topo, model, layout, workload, opts)
    return RunResult(entry, tl, topo, model, layout, workload, opts)


def _periodic(point: Point, fold: bool, record_links: bool, specs: SpecLoader) -> RunResult | None:
    """The step timed from a probe (see the module docstring), or None when that does not apply."""
    topo, model, layout, workload, opts = resolve(point, specs)
    m = layout.micro_batches
    for attempt in (0, 1):
        probe = probe_micro_batches(m, layout.pp, layout.pp_schedule, attempt)
        if probe is None:
            return None
        small = replace(point, pipeline=probe_spec(point.pipeline, probe, point.batch, layout.replicas))
        _t, _m, small_layout, _w, _o = resolve(small, specs)
        ctx = BuildContext(model, topo, small_layout, workload, opts, fold=fold)
        graph = SCHEDULES.get(point.schedule).build(ctx)
        tl = replay(graph, topo, ReplayOptions(record_links=record_links))
        window = window_for(graph, tl, ctx.pipeline, m, probe, layout.pp_schedule)
        ctx.detach()
        if window is not None:
            entry = run_entry(tl, topo, model, layout, workload, opts, window)
            return RunResult(entry, tl, topo, model, layout, workload, opts)
    return None

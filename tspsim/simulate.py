"""One simulation point end to end: plan → op graph → replay → metrics (design.md §1 pipeline).

:func:`simulate` is what ``tspsim run``, ``sweep``, ``plan`` and ``validate`` call; it returns a
:class:`RunResult` holding the stable JSON entry (design.md §4) and the Timeline for the viewer and
exports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tspsim.engine.sim import ReplayOptions, replay
from tspsim.model import ModelConfig, load_model
from tspsim.opgraph import OpGraph
from tspsim.plan import Assumptions, Plan, Workload, make_plan
from tspsim.schedules import SCHEDULES
from tspsim.schedules.common import BuildContext
from tspsim.schedules.inference import INFERENCE_MODES, build_decode_step, build_prefill
from tspsim.timeline import Timeline
from tspsim.topology import Topology, load_topology


@dataclass
class RunResult:
    """A finished simulation point."""

    entry: dict[str, Any]
    """The stable ``run`` JSON entry of design.md §4."""
    timeline: Timeline
    """Spans, memory and link series (for the viewer and exports)."""
    topology: Topology
    """Topology simulated on."""
    model: ModelConfig
    """Model simulated."""
    plan: Plan
    """Resolved plan."""
    workload: Workload
    """Workload simulated."""
    assumptions: Assumptions
    """Assumptions in force."""
    timelines: dict[str, Timeline] = field(default_factory=dict)
    """Inference modes: the ``prefill`` and final ``decode_step`` timelines (``timeline`` is one of them)."""


@dataclass(frozen=True)
class Point:
    """The inputs of one simulation point (what a sweep enumerates)."""

    schedule: str
    """Registered schedule name."""
    topology: str
    """Topology preset name or YAML path."""
    model: str = "zyphra-7b"
    """Model preset name or YAML path."""
    mode: str = "train"
    """Workload mode."""
    seq_len: int = 131072
    """Sequence length (tokens)."""
    batch: int = 1
    """Micro-batch per replica."""
    degree: int | None = None
    """D for tsp/tp/sp/satp-*."""
    tp: int | None = None
    """T for tp+sp."""
    sp: int | None = None
    """Σ for tp+sp."""
    gpus: int | None = None
    """Use only this many GPUs of the topology."""
    decode_tokens: int = 0
    """Tokens to generate (decode / generate)."""
    options: tuple[tuple[str, Any], ...] = ()
    """Assumption overrides as (key, value) pairs."""
    search_max_batch: bool = True
    """Inference modes: search the largest batch that fits in HBM (``max_batch``; every probe is a full
    simulation of the step). False writes ``max_batch`` as null. Ignored by ``train`` and ``forward``."""


def build_graph(point: Point, fold: bool = True) -> tuple[OpGraph, Topology, ModelConfig, Plan, Workload, Assumptions]:
    """Generate the op graph of ``point`` (no replay).

    Inference modes give one step: ``prefill`` (and ``generate``) the prefill step; ``decode`` the step
    that generates token N = ``decode_tokens`` (default :data:`~tspsim.serving.DEFAULT_DECODE_TOKENS`)
    of each sequence, with ``seq_len + N − 1`` tokens cached — the final step of ``run --mode decode``.
    Its meta records ``decode_tokens`` and ``inference.{context_tokens, token_index, cached_tokens}``.
    """
    topo = load_topology(point.topology)
    model = load_model(point.model)
    workload = Workload(point.mode, point.seq_len, point.batch, point.decode_tokens)  # type: ignore[arg-type]
    opts = Assumptions.from_overrides(dict(point.options))
    schedule = SCHEDULES.get(point.schedule)
    plan = make_plan(point.schedule, topo, model, workload, degree=point.degree, tp=point.tp, sp=point.sp,
                     gpus=point.gpus)
    ctx = BuildContext(model, topo, plan, workload, opts, fold=fold)
    if workload.mode in INFERENCE_MODES:  # the representative step: prefill, or the final decode step
        from tspsim.serving import DEFAULT_DECODE_TOKENS

        if workload.mode in ("prefill", "generate"):
            return build_prefill(ctx), topo, model, plan, workload, opts
        tokens = workload.decode_tokens or DEFAULT_DECODE_TOKENS
        graph = build_decode_step(ctx, workload.seq_len + tokens - 1).graph
        graph.meta["decode_tokens"] = tokens
        graph.meta.setdefault("inference", {}).update(
            {"context_tokens": workload.seq_len, "token_index": tokens,
             "cached_tokens": workload.seq_len + tokens - 1})
        return graph, topo, model, plan, workload, opts
    graph = schedule.build(ctx)
    return graph, topo, model, plan, workload, opts


def simulate(point: Point, fold: bool = True, record_links: bool = False) -> RunResult:
    """Simulate one point and compute its metrics."""
    from tspsim.metrics import run_entry

    if point.mode in INFERENCE_MODES:  # prefill / decode / generate: tspsim.serving
        from tspsim.serving import simulate_point

        return simulate_point(point, fold=fold, record_links=record_links,  # type: ignore[no-any-return]
                              search_max_batch=point.search_max_batch)
    graph, topo, model, plan, workload, opts = build_graph(point, fold=fold)
    tl = replay(graph, topo, ReplayOptions(record_links=record_links))
    entry = run_entry(tl, topo, model, plan, workload, opts)
    return RunResult(entry, tl, topo, model, plan, workload, opts)

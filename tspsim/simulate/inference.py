"""Inference points end to end: the prefill step, every decode step, and the serving keys of the entry.

A ``prefill``, ``decode`` or ``generate`` point is simulated step by step: the prefill graph replayed
once, each of the N decode steps timed by :class:`~tspsim.simulate.decode_timer.DecodeTimer` (exact
periodic assembly where it holds, a full replay otherwise), the final decode step replayed in full as
the representative timeline. The metrics are defined in :mod:`tspsim.analysis.serving`.
:func:`step_peak_bytes` simulates the step(s) at another batch size for the max-batch search
(:mod:`tspsim.explore.max_batch`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from tspsim.analysis.metrics import comm_bytes, memory_metrics, peak_memory, run_entry
from tspsim.analysis.serving import (
    BREAKDOWN_KEYS,
    RankStats,
    add_stats,
    model_flops_decode,
    model_flops_prefill,
    rank_overlap,
    stats_metrics,
)
from tspsim.core.errors import ConfigError
from tspsim.engine.sim import ReplayOptions, replay
from tspsim.engine.timeline import Timeline
from tspsim.opgraph import OpGraph
from tspsim.schedules.context import BuildContext
from tspsim.schedules.decode import DecodeStep, build_decode_step
from tspsim.schedules.prefill import build_prefill
from tspsim.simulate.decode_timer import DecodeTimer, StepTiming, decode_topology
from tspsim.simulate.graph import built
from tspsim.simulate.graph_memo import GraphMemo, graph_key, graph_of
from tspsim.simulate.point import Point, RunResult, resolve
from tspsim.spec.assumptions import Assumptions
from tspsim.spec.layout import Layout
from tspsim.spec.loader import SpecLoader
from tspsim.spec.model import ModelConfig
from tspsim.spec.topology import Topology
from tspsim.spec.workload import DEFAULT_DECODE_TOKENS, INFERENCE_MODES, Workload


@dataclass
class InferenceRun:
    """Everything :func:`simulate_inference` produced."""

    fields: dict[str, Any]
    """Serving keys and the redefined mode-dependent keys of the run entry."""
    timeline: Timeline
    """The representative timeline (prefill step, or the final decode step in ``decode`` mode)."""
    timelines: dict[str, Timeline] = field(default_factory=dict)
    """``prefill`` and/or ``decode_step`` (the final decode step)."""
    steps: list[StepTiming] = field(default_factory=list)
    """Every decode step's timing."""


StepProgress = Callable[[int, int, str], None]
"""Called after each simulated step: (steps done, steps in all, what was done) — for progress bars."""


def simulate_inference(topo: Topology, model: ModelConfig, layout: Layout, workload: Workload, opts: Assumptions,
                       fold: bool = True, record_links: bool = False, *, periodic: bool = True,
                       progress: StepProgress | None = None, graphs: GraphMemo | None = None) -> InferenceRun:
    """Simulate a ``prefill``, ``decode`` or ``generate`` workload and compute the serving metrics.

    ``periodic=False`` simulates every decode step in full (the reference for the periodic assembly).
    ``max_batch`` is left null: the search that fills it (:mod:`tspsim.explore.max_batch`) probes other
    batch sizes with :func:`step_peak_bytes`. ``progress`` is told about every finished step (the
    prefill, each decode step, the final full replay). ``graphs`` reuses the prefill and decode steps' graphs
    across points that differ only in what the replay reads (:mod:`tspsim.simulate.graph_memo`). Key definitions:
    :mod:`tspsim.analysis.serving`.
    """
    if workload.mode not in INFERENCE_MODES:
        raise ConfigError(f"mode {workload.mode!r} is not an inference mode ({', '.join(INFERENCE_MODES)})")
    t_wall = time.perf_counter()
    mode = workload.mode
    if mode != "prefill" and workload.decode_tokens < 1:
        workload = replace(workload, decode_tokens=DEFAULT_DECODE_TOKENS)
    T, B, N = workload.seq_len, workload.batch, workload.decode_tokens
    dtopo = decode_topology(topo, opts)
    events = 0
    paths: set[str] = set()
    total = (1 if mode in ("prefill", "generate") else 0) + (N + 1 if mode in ("decode", "generate") else 0)
    done = 0

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, what)

    timelines: dict[str, Timeline] = {}
    steps: list[StepTiming] = []
    rep_opts = ReplayOptions(record_links=record_links)
    ttft = None
    if mode in ("prefill", "generate"):
        tl_pre = replay(prefill_graph(topo, model, layout, workload, opts, fold, graphs), topo, rep_opts)
        timelines["prefill"] = tl_pre
        ttft = tl_pre.end_s
        events += tl_pre.sim_events
        paths.add(tl_pre.sim_path)
        tick("prefill step")
    check = None
    if mode in ("decode", "generate"):
        timer = DecodeTimer(lambda layers, cached: decode_step(topo, model, layout, workload, opts, fold, cached,
                                                               layers, graphs), model.layers, dtopo, periodic=periodic)
        settled = 0

        def settle(n: int) -> None:
            nonlocal settled
            for _ in range(n):
                settled += 1
                tick(f"decode step {settled} of {N}")

        steps.extend(timer.time_many(range(T, T + N), settle))
        events += sum(st.events for st in steps)
        paths.update(st.sim_path for st in steps)
        last = decode_step(topo, model, layout, workload, opts, fold, T + N - 1, graphs=graphs)
        tl_dec = replay(last.graph, dtopo, rep_opts)
        events += tl_dec.sim_events
        paths.add(tl_dec.sim_path)
        timelines["decode_step"] = tl_dec
        check = abs(tl_dec.end_s - steps[-1].time_s) / tl_dec.end_s if tl_dec.end_s > 0 else 0.0
        tick("final decode step in full")
    tpot = sum(st.time_s for st in steps) / len(steps) if steps else None
    breakdown = ({k: sum(st.breakdown[k] for st in steps) / len(steps) for k in BREAKDOWN_KEYS}
                 if steps else None)
    world, replicas = layout.world_size, layout.replicas
    decode_tps = B * replicas / tpot if tpot else None
    phases = _phase_blocks(timelines, steps, topo, B * T * replicas, B * replicas)
    # ---- entry fields: every top-level key has the scope of step_time_s (analysis.serving docstring)
    if mode == "prefill":
        assert ttft is not None
        step_time, tokens, flops = ttft, B * T * replicas, model_flops_prefill(model, B, T)
        stats, n_steps = rank_overlap(timelines["prefill"]), 1
        bytes_, layer_bytes = comm_bytes(timelines["prefill"]), comm_bytes(timelines["prefill"], True)
    elif mode == "decode":
        assert tpot is not None
        step_time, tokens = tpot, B * replicas
        flops = sum(model_flops_decode(model, B, st.cached + 1) for st in steps) / len(steps)
        stats, n_steps = _sum_steps(steps), N
        bytes_, layer_bytes = comm_bytes(timelines["decode_step"]), comm_bytes(timelines["decode_step"], True)
    else:
        assert ttft is not None
        step_time, tokens = ttft + sum(st.time_s for st in steps), B * N * replicas
        flops = model_flops_prefill(model, B, T) + sum(model_flops_decode(model, B, st.cached + 1) for st in steps)
        stats, n_steps = add_stats(rank_overlap(timelines["prefill"]), _sum_steps(steps)), 1
        bytes_ = _add_bytes(comm_bytes(timelines["prefill"]), comm_bytes(timelines["decode_step"]), N)
        layer_bytes = _add_bytes(comm_bytes(timelines["prefill"], True), comm_bytes(timelines["decode_step"], True), N)
    tps = tokens / step_time if step_time > 0 else 0.0
    peak_flops = step_time * world * topo.gpu.mfu_peak_TFLOPS * 1e12
    methods = sorted({st.method for st in steps})
    fields_: dict[str, Any] = {
        "ttft_s": ttft, "tpot_s": tpot, "decode_tokens_per_s": decode_tps,
        "decode_tokens_per_s_per_gpu": decode_tps / world if decode_tps is not None else None,
        "max_batch": None, "decode_time_breakdown_s": breakdown,
        "decode_tokens": N if mode != "prefill" else 0, "context_tokens": T,
        "decode_step_first_s": steps[0].time_s if steps else None,
        "decode_step_last_s": steps[-1].time_s if steps else None,
        "decode_sim": ("mixed" if len(methods) > 1 else methods[0]) if methods else None,
        "decode_check_rel_err": check,
        "step_time_s": step_time, "tokens_per_s": tps, "tokens_per_s_per_gpu": tps / world,
        "layer_tokens_per_s": tps * model.layers,
        "mfu": flops * replicas / peak_flops if peak_flops > 0 else 0.0,
        "comm_bytes_per_rank": bytes_, "layer_comm_bytes_per_rank": layer_bytes,
        "prefill": phases.get("prefill"), "decode": phases.get("decode"),
        "sim_events": events, "sim_path": "periodic" if "periodic" in paths else "full",
        "sim_wall_s": time.perf_counter() - t_wall,
    }
    fields_.update(stats_metrics(stats, n_steps))
    rep = timelines["decode_step"] if mode == "decode" else timelines["prefill"]
    if mode == "generate":
        tl_dec = timelines["decode_step"]
        if peak_memory(tl_dec)[0] > peak_memory(rep)[0]:
            fields_.update(memory_metrics(tl_dec, topo.gpu.hbm_GB))
    return InferenceRun(fields_, rep, timelines, steps)


def _sum_steps(steps: list[StepTiming]) -> RankStats:
    total: RankStats = {}
    for st in steps:
        total = add_stats(total, st.ranks)
    return total


def _add_bytes(a: dict[str, float], b: dict[str, float], times: int) -> dict[str, float]:
    """``a + times·b`` by kind (bytes of the prefill plus N decode steps)."""
    return {k: a.get(k, 0.0) + times * b.get(k, 0.0) for k in sorted(set(a) | set(b))}


def _phase_blocks(timelines: dict[str, Timeline], steps: list[StepTiming], topo: Topology, prompt_tokens: int,
                  tokens_per_step: int) -> dict[str, dict[str, Any] | None]:
    """The ``prefill`` and ``decode`` blocks of the entry (:data:`~tspsim.analysis.serving.PHASE_KEYS`)."""
    out: dict[str, dict[str, Any] | None] = {"prefill": None, "decode": None}
    hbm = topo.gpu.hbm_GB
    if "prefill" in timelines:
        tl = timelines["prefill"]
        out["prefill"] = {"time_s": tl.end_s, **stats_metrics(rank_overlap(tl)),
                          "tokens_per_s": prompt_tokens / tl.end_s if tl.end_s > 0 else 0.0,
                          "peak_memory_gb": memory_metrics(tl, hbm)["peak_memory_gb"],
                          "comm_bytes_per_rank": comm_bytes(tl)}
    if steps:
        tl = timelines["decode_step"]
        n = len(steps)
        time_s = sum(st.time_s for st in steps)
        out["decode"] = {"steps": n, "time_s": time_s, **stats_metrics(_sum_steps(steps)),
                         "tokens_per_s": tokens_per_step * n / time_s if time_s > 0 else 0.0,
                         "peak_memory_gb": memory_metrics(tl, hbm)["peak_memory_gb"],
                         "comm_bytes_per_rank": {k: v * n for k, v in comm_bytes(tl).items()}}
    return out


def simulate_inference_point(point: Point, fold: bool = True, record_links: bool = False,
                             specs: SpecLoader | None = None, **kw: Any) -> RunResult:
    """:func:`tspsim.simulate.simulate` for an inference :class:`~tspsim.simulate.Point` (``max_batch`` null).

    ``kw`` goes to :func:`simulate_inference` (``periodic``, ``progress``, ``graphs``).
    """
    topo, model, layout, workload, opts = resolve(point, specs)
    tokens = point.decode_tokens or (DEFAULT_DECODE_TOKENS if point.mode != "prefill" else 0)
    workload = replace(workload, decode_tokens=tokens)
    run = simulate_inference(topo, model, layout, workload, opts, fold=fold, record_links=record_links, **kw)
    entry = run_entry(run.timeline, topo, model, layout, workload, opts)
    entry.update(run.fields)
    return RunResult(dict(sorted(entry.items())), run.timeline, topo, model, layout, workload, opts, run.timelines)


def step_peak_bytes(topo: Topology, model: ModelConfig, layout: Layout, workload: Workload, opts: Assumptions,
                    batch: int, fold: bool = True, graphs: GraphMemo | None = None) -> tuple[float, int]:
    """(peak bytes, simpy events) of the workload's step(s) at another ``batch``.

    ``prefill``: the prefill step; ``decode``: the final decode step (``seq_len + decode_tokens − 1``
    cached); ``generate``: the larger of the two. Each a full replay of the step graph; ``graphs`` reuses
    step graphs (:func:`prefill_graph`, :func:`decode_step`).
    """
    mode = workload.mode
    at = replace(workload, batch=batch)
    top, events = 0.0, 0
    if mode in ("prefill", "generate"):
        tl = replay(prefill_graph(topo, model, layout, at, opts, fold, graphs), topo)
        events += tl.sim_events
        top = peak_memory(tl)[0]
    if mode in ("decode", "generate"):
        tokens = workload.decode_tokens or DEFAULT_DECODE_TOKENS
        step = decode_step(topo, model, layout, replace(at, decode_tokens=tokens), opts, fold,
                           workload.seq_len + tokens - 1, graphs=graphs)
        tl = replay(step.graph, decode_topology(topo, opts))
        events += tl.sim_events
        top = max(top, peak_memory(tl)[0])
    return top, events


def prefill_graph(topo: Topology, model: ModelConfig, layout: Layout, workload: Workload, opts: Assumptions,
                  fold: bool, graphs: GraphMemo | None = None) -> OpGraph:
    """The prefill step's graph at ``workload.batch``; from ``graphs`` when an earlier point built the same one.

    A prefill graph is never changed by its replay (decode steps are re-costed in place: :func:`decode_step`).
    """
    def build() -> OpGraph:
        return built(BuildContext(model, topo, layout, workload, opts, fold=fold), build_prefill)

    return graph_of(graphs, "prefill", fold, topo, (model, layout, workload, opts), build)


def decode_step(topo: Topology, model: ModelConfig, layout: Layout, workload: Workload, opts: Assumptions,
                fold: bool, cached: int, layers: int | None = None, graphs: GraphMemo | None = None) -> DecodeStep:
    """The decode step with ``cached`` tokens cached (the model cut to ``layers`` blocks if given), ours to re-cost.

    From ``graphs`` when an earlier point built the same step: a private copy whose attention ops are its own
    (:meth:`GraphMemo.step`).
    """
    if layers is not None:
        model = replace(model, layers=layers)

    def build() -> DecodeStep:
        return built(BuildContext(model, topo, layout, workload, opts, fold=fold), build_decode_step, cached)

    if graphs is None:
        return build()
    return graphs.step(graph_key("decode", fold, topo, model, layout, workload, opts, cached), topo.name, build)

"""Serving metrics: time to first token, time per output token, decode throughput, max batch (issue 6).

Definitions (units in the names; every number comes from replays of op graphs, none from a formula):

* **ttft_s** — time to first token: the simulated prefill step (embedding, every block, the LM head on
  each prompt's last token). In ``decode`` mode (no prefill) it is the first decode step.
* **tpot_s** — time per output token: the mean simulated decode step time over the N generated tokens.
  Step i (0-based) starts with T + i cached tokens and attends over T + i + 1 (T = ``seq_len``, the
  prompt in ``generate`` mode and the cached context ``--context`` in ``decode`` mode).
* **decode_tokens_per_s** — B · replicas / tpot_s (one token per sequence per step, every replica);
  **decode_tokens_per_s_per_gpu** divides it by the world size.
* **max_batch** — the largest B whose simulated peak memory fits in HBM at this context: for decode the
  final step (T + N − 1 cached), for prefill the prefill step, for generate both. Found by doubling from
  the run's own batch, then bisection (split where the bracketing peaks interpolate to the HBM size);
  each probe is a full simulation of the step graph (``satp-*`` probe multiples of D).
* **decode_time_breakdown_s** — where a decode step's time goes, averaged over the simulated ranks and
  the N steps; the parts sum to tpot_s. Each compute span minus its launch overhead is
  ``weights_hbm`` (a GEMM bound by HBM: streaming weights), ``kv_hbm`` (an attention kernel bound by
  HBM: reading the KV cache) or ``compute`` (a FLOP-bound GEMM or attention kernel), decided by the
  op's roofline; a kernel whose shape is HBM-bound but which takes longer because of the small-kernel
  tail (:func:`tspsim.costs.tail_fraction`) counts its streaming time as HBM and the excess as
  ``compute``; ``communication`` is exposed communication (communicating while not computing);
  ``other`` is launch overhead, elementwise kernels (norms, residual adds, activations, sampling) and
  idle time.

Mode-dependent keys of the stable run entry are redefined for inference: ``step_time_s`` is ttft_s
(prefill), tpot_s (decode) or ttft_s + Σ decode steps (generate); ``tokens_per_s`` is prompt tokens/s
(prefill), decode tokens/s (decode) or generated tokens / step_time_s (generate); ``mfu`` counts the
model FLOPs of those steps (decode attention: 4·B·T·H_q per block, no causal halving). Per-step keys
(memory, overlap, communication bytes) describe the representative timeline: the prefill step for
``prefill``, the final decode step for ``decode``; ``generate`` reports the prefill timeline with the
memory keys of whichever of prefill and final decode step peaks higher.

Speed (design.md §7): a decode step differs from the next only in its attention costs, so one graph is
built and re-costed per context length. When every block ends at a quiescent cut
(:func:`tspsim.schedules.inference.verify_cuts`, e.g. TP's all-reduce after MLP-down), a step of L
blocks is assembled exactly from a two-block graph: t(L) = t_C0 + (L − 1)·(t_C1 − t_C0) + (t_end − t_C1),
where t_Ck is the instant block k's cut ends. Otherwise (TSP with ``tsp_decode=weights``: weight
prefetch crosses block boundaries) every step is a full simulation. The last step is always also
simulated in full (it is the representative timeline) and the two times are compared
(``decode_check_rel_err``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from tspsim.costs import efficiency, large_efficiency
from tspsim.engine.sim import ReplayOptions, replay
from tspsim.errors import ConfigError
from tspsim.metrics import memory_metrics, peak_memory
from tspsim.model import ModelConfig
from tspsim.plan import Assumptions, Plan, Workload
from tspsim.schedules.common import BuildContext
from tspsim.schedules.inference import (
    INFERENCE_MODES,
    DecodeStep,
    build_decode_step,
    build_prefill,
    verify_cuts,
    verify_periodic_structure,
    with_layers,
)
from tspsim.timeline import Timeline
from tspsim.topology import GpuSpec, Topology

DEFAULT_DECODE_TOKENS = 128
"""Tokens generated when a decode/generate workload does not say (``--tokens``)."""

BREAKDOWN_KEYS = ("weights_hbm", "kv_hbm", "compute", "communication", "other")
"""Keys of ``decode_time_breakdown_s``."""

MAX_BATCH_LIMIT = 1 << 20
"""The max-batch search stops doubling here."""

__all__ = ["BREAKDOWN_KEYS", "DEFAULT_DECODE_TOKENS", "INFERENCE_MODES", "DecodeTimer", "InferenceRun",
           "decode_topology", "max_batch", "simulate_inference", "step_fields", "step_kind", "time_breakdown"]


# ---------------------------------------------------------------------------------- decode GPU
def decode_topology(topo: Topology, opts: Assumptions) -> Topology:
    """``topo`` with the decode-step kernel assumptions applied to its GPU.

    ``decode_launch_us`` replaces the eager ``kernel_launch_us`` (graph-captured decode);
    ``decode_gemm_rolloff=false`` drops the small-GEMM tail (the plain roofline). A new frozen value per
    call (cheap; nothing is cached at module level).
    """
    gpu = replace(topo.gpu, kernel_launch_us=opts.decode_launch_us,
                  gemm_half_GFLOP=topo.gpu.gemm_half_GFLOP if opts.decode_gemm_rolloff else 0.0)
    return replace(topo, gpu=gpu)


# ---------------------------------------------------------------------------------- breakdown
def time_breakdown(tl: Timeline, gpu: GpuSpec, start: float = 0.0, end: float | None = None) -> dict[str, float]:
    """Seconds of [start, end] by category (:data:`BREAKDOWN_KEYS`), averaged over the simulated ranks.

    Compute spans are sequential on a rank's compute stream; each one minus the launch overhead is
    classified by its roofline (HBM-bound GEMM → ``weights_hbm``, HBM-bound attention → ``kv_hbm``,
    FLOP-bound → ``compute``, elementwise → ``other``); an HBM-bound shape (bytes/HBM ≥ FLOPs/(peak ·
    eff_large)) that the small-kernel tail makes longer splits: the share bytes/HBM of its kernel time
    to the HBM category, the rest to ``compute``. Communication not overlapped by compute is
    ``communication``; the rest of the window (launch overheads, idle) is ``other``. Parts sum to the
    window length, and are additive over adjacent windows (a span cut by a window edge contributes its
    launch overhead pro rata).
    """
    from tspsim.metrics import intersection_length, interval_union, total_length

    end = tl.end_s if end is None else end
    ranks = tuple(tl.graph.ranks) or tuple(sorted({op.rank for op in tl.ops}))
    launch = gpu.kernel_launch_us * 1e-6
    hbm = gpu.hbm_TBps * 1e12 * gpu.hbm_efficiency
    peak = gpu.peak_bf16_TFLOPS * 1e12
    sums = dict.fromkeys(BREAKDOWN_KEYS, 0.0)
    per: dict[int, tuple[list[tuple[float, float]], list[tuple[float, float]]]] = {r: ([], []) for r in ranks}
    for op_id, a0, b0 in tl.spans:
        a, b = max(a0, start), min(b0, end)
        if b <= a:
            continue
        op = tl.ops[op_id]
        comp, comm = per.setdefault(op.rank, ([], []))
        if op.is_comm:
            comm.append((a, b))
            continue
        if op.kind == "memory":
            continue
        comp.append((a, b))
        dur = b - a
        over = min(launch, b0 - a0) * dur / (b0 - a0)
        sums["other"] += over
        if op.kind not in ("gemm", "attention_fwd", "attention_bwd"):
            sums["other"] += dur - over
            continue
        mem_cat = "weights_hbm" if op.kind == "gemm" else "kv_hbm"
        t_mem = op.hbm_bytes / hbm
        t_flops = op.flops / (peak * efficiency(op, gpu)) if op.flops > 0 else 0.0
        t_large = op.flops / (peak * large_efficiency(op, gpu))
        if t_mem >= t_flops:
            sums[mem_cat] += dur - over
        elif t_mem >= t_large:    # streaming-bound shape paying the small-kernel tail
            body = (b0 - a0) - min(launch, b0 - a0)
            share = min(1.0, t_mem / body) if body > 0 else 1.0
            sums[mem_cat] += (dur - over) * share
            sums["compute"] += (dur - over) * (1.0 - share)
        else:
            sums["compute"] += dur - over
    for comp, comm in per.values():
        cu, mu = interval_union(comp), interval_union(comm)
        exposed = total_length(mu) - intersection_length(cu, mu)
        sums["communication"] += exposed
        sums["other"] += (end - start) - total_length(cu) - exposed
    n = max(len(per), 1)
    return {k: v / n for k, v in sums.items()}


def find_period(tl: Timeline, step: DecodeStep, rel_tol: float = 1e-12) -> tuple[float, float] | None:
    """Two instants t′ < t″ at which the replay of ``step`` is in the same state up to "block ℓ → ℓ+1".

    ``step`` must pass :func:`~tspsim.schedules.inference.verify_periodic_structure`. For a candidate
    block j ≥ 1, t′ and t″ are the starts of the first op of blocks j and j+1, Δ = t″ − t′, and t0 the
    earliest start among ops running at t′. The states match when: the prologue and block 0 finished by
    t0; every op that started before t′ and was still running after t0 has its block-successor start
    (and, if it ended by t′, end) exactly Δ later, and is still running at t″ if it was at t′; every op
    finished by t0 has its successor finished by t0 + Δ; every op not started at t′ has its successor
    not started at t″; and nothing of the last block or the epilogue has started by t″. Everything the
    engine holds at t′ (remaining work of kernels and flows, their rates, waiting rendezvous) is a
    function of the spans in [t0, t′], so the replay after t″ is the replay after t′ shifted by Δ with
    every block index one higher; with the graph's periodicity this gives, exactly, one more block =
    Δ more time. Returns (t′, t″) or None.
    """
    a, k = step.layer_starts, len(step.layer_starts)
    period = a[1] - a[0]
    n = len(tl.ops)
    start = [0.0] * n
    end = [0.0] * n
    for op_id, s0, e0 in tl.spans:
        start[op_id], end[op_id] = s0, e0
    for j in range(1, k - 3):
        tp, tpp = start[a[j]], start[a[j + 1]]
        delta = tpp - tp
        if delta <= 0:
            continue
        eps = rel_tol * max(tpp, 1e-9)
        t0 = min([start[o] for o in range(n) if start[o] < tp <= end[o]] + [tp])
        if any(end[o] > t0 for o in range(a[1])):
            continue
        if any(start[o] < tpp - eps for o in range(a[k - 1], n)):
            continue
        ok = True
        for o in range(a[0], a[k - 1]):
            q = o + period
            if end[o] <= t0:                                   # finished before the window
                ok = end[q] <= t0 + delta + eps
            elif start[o] >= tp:                               # not started
                ok = start[q] >= tpp - eps
            else:                                              # in the window
                ok = abs(start[q] - start[o] - delta) <= eps and (
                    abs(end[q] - end[o] - delta) <= eps if end[o] <= tp else end[q] > tpp - eps)
            if not ok:
                break
        if ok:
            return tp, tpp
    return None


# ---------------------------------------------------------------------------------- decode timing
@dataclass
class StepTiming:
    """The simulated time of one decode step."""

    cached: int
    """Tokens cached before the step."""
    time_s: float
    """Step time."""
    breakdown: dict[str, float]
    """Where the time went (:func:`time_breakdown`)."""
    method: str
    """``cut`` or ``window`` (assembled exactly from a shorter graph, see :class:`DecodeTimer`) or ``full``."""
    events: int
    """simpy events of the replay(s)."""


class DecodeTimer:
    """Times decode steps of one configuration at any context length, reusing one graph per method.

    ``make_ctx(layers)`` returns a fresh :class:`BuildContext` (``layers=None``: the real model).
    Methods, tried in order: ``cut`` (two-block graph, every block ends at a proven quiescent cut),
    ``window`` (a ``probe_layers``-block graph whose replay reaches a state that repeats one block
    later, :func:`find_period`), ``full`` (the whole step).
    """

    def __init__(self, make_ctx: Callable[[int | None], BuildContext], layers: int, topo: Topology,
                 periodic: bool = True, probe_layers: int = 8) -> None:
        self.make_ctx = make_ctx
        self.layers = layers
        self.topo = topo
        self.method = "full"
        self._unit: DecodeStep | None = None
        self._full: DecodeStep | None = None
        if periodic and layers > 2:
            unit = build_decode_step(make_ctx(2), 0)
            if verify_cuts(unit.graph, unit.cuts):
                self.method, self._unit = "cut", unit
        if self.method == "full" and periodic and layers > probe_layers:
            probe = build_decode_step(make_ctx(probe_layers), 0)
            if verify_periodic_structure(probe):
                self.method, self._unit = "window", probe

    def full_step(self, cached: int) -> DecodeStep:
        """The full L-block step graph, re-costed for ``cached``."""
        if self._full is None:
            self._full = build_decode_step(self.make_ctx(None), cached)
        self._full.recost(cached)
        return self._full

    def time(self, cached: int) -> StepTiming:
        """Simulated time of the step that starts with ``cached`` tokens in the cache."""
        gpu = self.topo.gpu
        unit = self._unit
        if unit is not None:
            unit.recost(cached)
            tl = replay(unit.graph, self.topo)
            if self.method == "cut":
                ends = {op_id: end for op_id, _, end in tl.spans}
                c0 = [ends[i] for i in unit.cuts[0]]
                c1 = [ends[i] for i in unit.cuts[1]]
                if min(c0) == max(c0) and min(c1) == max(c1):  # each cut is a single instant
                    t0, t1, t_end = c0[0], c1[0], tl.end_s
                    k = self.layers - 1
                    b0, b1, b2 = (time_breakdown(tl, gpu, 0.0, t0), time_breakdown(tl, gpu, t0, t1),
                                  time_breakdown(tl, gpu, t1, t_end))
                    bd = {key: b0[key] + k * b1[key] + b2[key] for key in BREAKDOWN_KEYS}
                    return StepTiming(cached, t0 + k * (t1 - t0) + (t_end - t1), bd, "cut", tl.sim_events)
            else:
                found = find_period(tl, unit)
                if found is not None:
                    tp, tpp = found
                    k = self.layers - len(unit.layer_starts)
                    whole, rep = time_breakdown(tl, gpu), time_breakdown(tl, gpu, tp, tpp)
                    bd = {key: whole[key] + k * rep[key] for key in BREAKDOWN_KEYS}
                    return StepTiming(cached, tl.end_s + k * (tpp - tp), bd, "window", tl.sim_events)
        step = self.full_step(cached)
        tl = replay(step.graph, self.topo)
        return StepTiming(cached, tl.end_s, time_breakdown(tl, gpu), "full", tl.sim_events)


# ---------------------------------------------------------------------------------- max batch
def max_batch(peak: Callable[[int], float], capacity: float, step: int = 1, start: int | None = None,
              known: dict[int, float] | None = None, limit: int = MAX_BATCH_LIMIT) -> int:
    """Largest multiple of ``step`` whose ``peak(b)`` (bytes) fits in ``capacity`` (0 if none fits).

    Doubling from ``start`` (default ``step``) until a batch does not fit — halving instead if ``start``
    does not — then bisection of the bracket [fits, does not fit]. The bisection splits the bracket
    where a straight line through the two bracketing peaks meets ``capacity`` (memory grows about
    linearly with B, so this usually closes the bracket in two probes) and at the midpoint when that
    did not halve the bracket. ``known`` holds peaks already simulated (e.g. the run's own batch).
    Assumes ``peak`` is non-decreasing in B.
    """
    seen: dict[int, float] = dict(known or {})

    def fits(b: int) -> bool:
        if b not in seen:
            seen[b] = peak(b)
        return seen[b] <= capacity

    b = max(step, (start or step) // step * step)
    if fits(b):
        lo, hi = b, 0
        while not hi:
            if 2 * lo > limit:
                return lo
            if fits(2 * lo):
                lo *= 2
            else:
                hi = 2 * lo
    else:
        hi = b
        while True:
            lo = hi // 2 // step * step
            if lo < step:
                return 0
            if fits(lo):
                break
            hi = lo
    interpolate = True
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if interpolate and seen[hi] > seen[lo]:
            guess = lo + (capacity - seen[lo]) * (hi - lo) / (seen[hi] - seen[lo])
            mid = min(max(int(guess) // step * step, lo + step), hi - step)
        width = hi - lo
        if fits(mid):
            lo = mid
        else:
            hi = mid
        interpolate = (hi - lo) <= width / 2 or not interpolate
    return lo


# ---------------------------------------------------------------------------------- the run
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


def model_flops_prefill(model: ModelConfig, batch: int, seq: int) -> float:
    """L · block forward FLOPs (causal) + the LM head on the B last tokens: 2·B·H·V."""
    return model.layers * model.layer_fwd_flops(batch, seq) + 2.0 * batch * model.hidden * model.vocab


def model_flops_decode(model: ModelConfig, batch: int, attended: int) -> float:
    """One decode step: L·(2·B·W_block + 4·B·T_a·H_q) + 2·B·H·V (no causal halving: T_q = 1)."""
    per_block = 2.0 * batch * (model.attn_params + model.mlp_params) + 4.0 * batch * attended * model.q_dim
    return model.layers * per_block + 2.0 * batch * model.hidden * model.vocab


def simulate_inference(topo: Topology, model: ModelConfig, plan: Plan, workload: Workload, opts: Assumptions,
                       fold: bool = True, record_links: bool = False, *, periodic: bool = True,
                       search_max_batch: bool = True) -> InferenceRun:
    """Simulate a ``prefill``, ``decode`` or ``generate`` workload and compute the serving metrics.

    ``periodic=False`` simulates every decode step in full (the reference for the periodic assembly).
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

    def ctx_for(batch: int, layers: int | None = None) -> BuildContext:
        ctx = BuildContext(model, topo, plan, replace(workload, batch=batch), opts, fold=fold)
        return with_layers(ctx, layers) if layers is not None else ctx

    timelines: dict[str, Timeline] = {}
    steps: list[StepTiming] = []
    rep_opts = ReplayOptions(record_links=record_links)
    ttft = None
    if mode in ("prefill", "generate"):
        tl_pre = replay(build_prefill(ctx_for(B)), topo, rep_opts)
        timelines["prefill"] = tl_pre
        ttft = tl_pre.end_s
        events += tl_pre.sim_events
    check = None
    if mode in ("decode", "generate"):
        timer = DecodeTimer(lambda layers: ctx_for(B, layers), model.layers, dtopo, periodic=periodic)
        steps = [timer.time(T + i) for i in range(N)]
        events += sum(st.events for st in steps)
        last = build_decode_step(ctx_for(B), T + N - 1)
        tl_dec = replay(last.graph, dtopo, rep_opts)
        events += tl_dec.sim_events
        timelines["decode_step"] = tl_dec
        check = abs(tl_dec.end_s - steps[-1].time_s) / tl_dec.end_s if tl_dec.end_s > 0 else 0.0
        if ttft is None:
            ttft = steps[0].time_s
    tpot = sum(st.time_s for st in steps) / len(steps) if steps else None
    breakdown = ({k: sum(st.breakdown[k] for st in steps) / len(steps) for k in BREAKDOWN_KEYS}
                 if steps else None)
    # ---- max batch
    mb = None
    if search_max_batch:
        hbm = topo.gpu.hbm_GB * 1e9
        batch_step = plan.tp if plan.schedule == "satp-batch" or (plan.schedule == "satp-seq"
                                                                   and mode != "prefill") else 1

        def peak(b: int) -> float:
            nonlocal events
            top = 0.0
            if mode in ("prefill", "generate"):
                tl = replay(build_prefill(ctx_for(b)), topo)
                events += tl.sim_events
                top = peak_memory(tl)[0]
            if mode in ("decode", "generate"):
                tl = replay(build_decode_step(ctx_for(b), T + N - 1).graph, dtopo)
                events += tl.sim_events
                top = max(top, peak_memory(tl)[0])
            return top

        own = max(peak_memory(tl)[0] for tl in timelines.values())
        mb = max_batch(peak, hbm, batch_step, start=B, known={B: own})
    # ---- entry fields
    rep = timelines["decode_step"] if mode == "decode" else timelines["prefill"]
    world, replicas = plan.world_size, plan.replicas
    decode_tps = B * replicas / tpot if tpot else None
    if mode == "prefill":
        assert ttft is not None
        step_time = ttft
        tokens = B * T * replicas
        flops = model_flops_prefill(model, B, T)
    elif mode == "decode":
        assert tpot is not None
        step_time = tpot
        tokens = B * replicas
        flops = sum(model_flops_decode(model, B, st.cached + 1) for st in steps) / len(steps)
    else:
        assert ttft is not None
        step_time = ttft + sum(st.time_s for st in steps)
        tokens = B * N * replicas
        flops = model_flops_prefill(model, B, T) + sum(model_flops_decode(model, B, st.cached + 1) for st in steps)
    tps = tokens / step_time if step_time > 0 else 0.0
    peak_flops = step_time * world * topo.gpu.mfu_peak_TFLOPS * 1e12
    methods = sorted({st.method for st in steps})
    fields_: dict[str, Any] = {
        "ttft_s": ttft, "tpot_s": tpot, "decode_tokens_per_s": decode_tps,
        "decode_tokens_per_s_per_gpu": decode_tps / world if decode_tps is not None else None,
        "max_batch": mb, "decode_time_breakdown_s": breakdown,
        "decode_tokens": N if mode != "prefill" else 0, "context_tokens": T,
        "decode_step_first_s": steps[0].time_s if steps else None,
        "decode_step_last_s": steps[-1].time_s if steps else None,
        "decode_sim": ("mixed" if len(methods) > 1 else methods[0]) if methods else None,
        "decode_check_rel_err": check,
        "step_time_s": step_time, "tokens_per_s": tps, "tokens_per_s_per_gpu": tps / world,
        "layer_tokens_per_s": tps * model.layers,
        "mfu": flops * replicas / peak_flops if peak_flops > 0 else 0.0,
        "sim_events": events, "sim_wall_s": time.perf_counter() - t_wall,
    }
    if mode == "generate":
        tl_dec = timelines["decode_step"]
        if peak_memory(tl_dec)[0] > peak_memory(rep)[0]:
            fields_.update(memory_metrics(tl_dec, topo.gpu.hbm_GB))
    return InferenceRun(fields_, rep, timelines, steps)


def simulate_point(point: Any, fold: bool = True, record_links: bool = False, **kw: Any) -> Any:
    """:func:`tspsim.simulate.simulate` for an inference :class:`~tspsim.simulate.Point`."""
    from tspsim.metrics import run_entry
    from tspsim.model import load_model
    from tspsim.plan import make_plan
    from tspsim.schedules import SCHEDULES
    from tspsim.simulate import RunResult
    from tspsim.topology import load_topology

    topo = load_topology(point.topology)
    model = load_model(point.model)
    tokens = point.decode_tokens or (DEFAULT_DECODE_TOKENS if point.mode != "prefill" else 0)
    workload = Workload(point.mode, point.seq_len, point.batch, tokens)
    opts = Assumptions.from_overrides(dict(point.options))
    SCHEDULES.get(point.schedule)
    plan = make_plan(point.schedule, topo, model, workload, degree=point.degree, tp=point.tp, sp=point.sp,
                     gpus=point.gpus)
    run = simulate_inference(topo, model, plan, workload, opts, fold=fold, record_links=record_links, **kw)
    entry = run_entry(run.timeline, topo, model, plan, workload, opts)
    entry.update(run.fields)
    return RunResult(dict(sorted(entry.items())), run.timeline, topo, model, plan, workload, opts, run.timelines)


# ---------------------------------------------------------------------------------- one saved step
def step_kind(meta: dict[str, Any], mode: str) -> str:
    """``prefill`` or ``decode``: which inference step a graph holds (its ``meta.inference.step``, else the mode)."""
    info = meta.get("inference")
    step = info.get("step") if isinstance(info, dict) else None
    if step in ("prefill", "decode"):
        return str(step)
    return "decode" if mode == "decode" else "prefill"


def step_fields(kind: str, tl: Timeline, gpu: GpuSpec, model: ModelConfig, plan: Plan, workload: Workload,
                cached: int) -> dict[str, Any]:
    """Serving keys of ONE replayed inference step (``tspsim replay`` of a ``tspsim generate`` graph).

    ``kind`` is ``prefill`` (B prompts of ``workload.seq_len`` tokens) or ``decode`` (one token per
    sequence with ``cached`` tokens in the cache, replayed on :func:`decode_topology`, whose GPU is
    ``gpu``). A prefill step gives ``ttft_s`` and prompt tokens/s; a decode step gives ``tpot_s`` (this
    step's time), decode tokens/s and ``decode_time_breakdown_s``, with ``ttft_s`` null (one step of a
    request has no time to first token). ``max_batch`` and the keys about a run's N decode steps
    (``decode_step_first_s``, ``decode_step_last_s``, ``decode_sim``, ``decode_check_rel_err``) are null.
    ``inference_step`` says which step it was.
    """
    step = tl.end_s
    world, replicas, B = plan.world_size, plan.replicas, workload.batch
    decode = kind == "decode"
    tokens = B * replicas if decode else B * workload.seq_len * replicas
    flops = model_flops_decode(model, B, cached + 1) if decode else model_flops_prefill(model, B, workload.seq_len)
    tps = tokens / step if step > 0 else 0.0
    peak_flops = step * world * gpu.mfu_peak_TFLOPS * 1e12
    dtps = tps if decode else None
    info: dict[str, Any] = ({"kind": "decode", "context_tokens": workload.seq_len, "cached_tokens": cached,
                             "token_index": cached - workload.seq_len + 1} if decode
                            else {"kind": "prefill", "prompt_tokens": workload.seq_len})
    return {
        "ttft_s": None if decode else step, "tpot_s": step if decode else None, "decode_tokens_per_s": dtps,
        "decode_tokens_per_s_per_gpu": dtps / world if dtps is not None else None, "max_batch": None,
        "decode_time_breakdown_s": time_breakdown(tl, gpu) if decode else None,
        "decode_tokens": workload.decode_tokens if decode else 0, "context_tokens": workload.seq_len,
        "decode_step_first_s": None, "decode_step_last_s": None, "decode_sim": None,
        "decode_check_rel_err": None, "step_time_s": step, "tokens_per_s": tps, "tokens_per_s_per_gpu": tps / world,
        "layer_tokens_per_s": tps * model.layers, "mfu": flops * replicas / peak_flops if peak_flops > 0 else 0.0,
        "inference_step": info,
    }


# ---------------------------------------------------------------------------------- report
def _ms(value: Any) -> str:
    return "n/a" if value is None else f"{value * 1e3:.4g}"


_SERVING_ROWS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("TTFT (ms)", lambda e: _ms(e.get("ttft_s"))),
    ("TPOT (ms)", lambda e: _ms(e.get("tpot_s"))),
    ("decode tokens/s", lambda e: "n/a" if e.get("decode_tokens_per_s") is None
     else f"{e['decode_tokens_per_s']:,.0f}"),
    ("decode tokens/s per GPU", lambda e: "n/a" if e.get("decode_tokens_per_s_per_gpu") is None
     else f"{e['decode_tokens_per_s_per_gpu']:,.1f}"),
    ("max batch (fits HBM)", lambda e: "not searched" if e.get("max_batch") is None else str(e["max_batch"])),
    ("TPOT: weights from HBM (ms)", lambda e: _ms((e.get("decode_time_breakdown_s") or {}).get("weights_hbm"))),
    ("      KV cache from HBM (ms)", lambda e: _ms((e.get("decode_time_breakdown_s") or {}).get("kv_hbm"))),
    ("      compute (ms)", lambda e: _ms((e.get("decode_time_breakdown_s") or {}).get("compute"))),
    ("      exposed comm (ms)", lambda e: _ms((e.get("decode_time_breakdown_s") or {}).get("communication"))),
    ("      other (ms)", lambda e: _ms((e.get("decode_time_breakdown_s") or {}).get("other"))),
    ("decode steps", lambda e: {"cut": "2-block unit", "window": "8-block probe", "full": "every step"}.get(
        e.get("decode_sim") or "", e.get("decode_sim") or "n/a")),
)


def serving_table(entries: list[dict[str, Any]]) -> str:
    """Serving metrics side by side (one column per schedule), like :func:`tspsim.report.comparison_table`.

    Rows: TTFT, TPOT, decode tokens/s (global and per GPU), max batch (``not searched`` when null:
    ``--no-max-batch``, sweeps without ``--max-batch``, replays), the TPOT breakdown and how the decode
    steps were simulated (``cut``/``window``: assembled exactly from a shorter graph; ``full``). Rows no
    entry has a value for are left out (decode rows of a prefill, TTFT of a single decode step).
    """
    from tspsim.report import schedule_label

    def present(key: str) -> bool:
        return any(e.get(key) is not None for e in entries)

    skip: set[str] = set()
    if not present("ttft_s"):        # decode-step replay: no request, no time to first token
        skip.add("TTFT (ms)")
    if not present("tpot_s"):        # prefill only: no decode rows
        skip.update(label for label, _ in _SERVING_ROWS if label != "TTFT (ms)" and not label.startswith("max"))
    if not present("decode_sim"):
        skip.add("decode steps")
    rows = [("", *[schedule_label(e) for e in entries])]
    rows += [(label, *[cell(e) for e in entries]) for label, cell in _SERVING_ROWS if label not in skip]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:]))]).rstrip()
                     for r in rows)

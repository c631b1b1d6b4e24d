"""Decode steps timed exactly and fast: one graph re-costed per context, periodic assembly where it is exact.

Speed (design.md §7): a decode step differs from the next only in its attention costs, so one graph is
built and re-costed per context length. When every block ends at a quiescent cut
(:func:`tspsim.schedules.periodic.verify_cuts`, e.g. TP's all-reduce after MLP-down), a step of L
blocks is assembled exactly from a two-block graph: t(L) = t_C0 + (L − 1)·(t_C1 − t_C0) + (t_end − t_C1),
where t_Ck is the instant block k's cut ends. Otherwise (TSP with ``tsp_decode=weights``: weight
prefetch crosses block boundaries) every step is a full simulation. The last step is always also
simulated in full (it is the representative timeline) and the two times are compared
(``decode_check_rel_err``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tspsim.analysis.serving import BREAKDOWN_KEYS, RankStats, add_stats, window_stats
from tspsim.analysis.span_windows import OpClasses, span_table
from tspsim.core.forked import forked_map
from tspsim.engine.costs import kernel_gpu, large_efficiency
from tspsim.engine.replay_setup import ReplaySetup
from tspsim.engine.sim import ReplayOptions, replay
from tspsim.engine.timeline import Timeline
from tspsim.schedules.context import BuildContext
from tspsim.schedules.decode import DecodeStep, build_decode_step
from tspsim.schedules.periodic import verify_cuts, verify_periodic_structure
from tspsim.simulate.graph import built
from tspsim.spec.assumptions import Assumptions
from tspsim.spec.topology import GpuSpec, Topology


def decode_topology(topo: Topology, opts: Assumptions) -> Topology:
    """``topo`` with the decode-step kernel assumptions applied to its GPU.

    ``decode_launch_us`` replaces the eager ``kernel_launch_us`` (graph-captured decode);
    ``decode_gemm_rolloff=false`` drops the small-GEMM tail (the plain roofline). A new frozen value per
    call (cheap; nothing is cached at module level).
    """
    gpu = replace(topo.gpu, kernel_launch_us=opts.decode_launch_us,
                  gemm_half_GFLOP=topo.gpu.gemm_half_GFLOP if opts.decode_gemm_rolloff else 0.0)
    return replace(topo, gpu=gpu)


def context_steps(make_ctx: Callable[[int | None], BuildContext]) -> Callable[[int | None, int], DecodeStep]:
    """A :class:`DecodeTimer`'s ``make_step`` that builds every step anew in ``make_ctx(layers)``'s fresh context."""
    def make_step(layers: int | None, cached: int) -> DecodeStep:
        return built(make_ctx(layers), build_decode_step, cached)

    return make_step


def find_period(tl: Timeline, step: DecodeStep, rel_tol: float = 1e-12,
                times: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[float, float] | None:
    """Two instants t′ < t″ at which the replay of ``step`` is in the same state up to "block ℓ → ℓ+1".

    ``step`` must pass :func:`~tspsim.schedules.periodic.verify_periodic_structure`. For a candidate
    block j ≥ 1, t′ and t″ are the starts of the first op of blocks j and j+1, Δ = t″ − t′, and t0 the
    earliest start among ops running at t′. The states match when: the prologue and block 0 finished by
    t0; every op that started before t′ and was still running after t0 has its block-successor start
    (and, if it ended by t′, end) exactly Δ later, and is still running at t″ if it was at t′; every op
    finished by t0 has its successor finished by t0 + Δ; every op not started at t′ has its successor
    not started at t″; and nothing of the last block or the epilogue has started by t″. Everything the
    engine holds at t′ (remaining work of kernels and flows, their rates, waiting rendezvous) is a
    function of the spans in [t0, t′], so the replay after t″ is the replay after t′ shifted by Δ with
    every block index one higher; with the graph's periodicity this gives, exactly, one more block =
    Δ more time. Returns (t′, t″) or None. ``times``: :func:`span_times` of ``tl`` if already known. The
    comparisons are element-wise on arrays (each the float operation of the definition above).
    """
    a, k = step.layer_starts, len(step.layer_starts)
    period = a[1] - a[0]
    start, end = span_times(tl) if times is None else times
    for j in range(1, k - 3):
        tp, tpp = float(start[a[j]]), float(start[a[j + 1]])
        delta = tpp - tp
        if delta <= 0:
            continue
        eps = rel_tol * max(tpp, 1e-9)
        running = start[(start < tp) & (tp <= end)]
        t0 = min(float(running.min()), tp) if len(running) else tp
        if (end[:a[1]] > t0).any():
            continue
        if (start[a[k - 1]:] < tpp - eps).any():
            continue
        # every op o of blocks 0 … k−2 against q = o + period, the same op one block later (all must hold)
        so, eo = start[a[0]:a[k - 1]], end[a[0]:a[k - 1]]
        sq, eq = start[a[0] + period:a[k - 1] + period], end[a[0] + period:a[k - 1] + period]
        ok = np.where(eo <= t0, eq <= t0 + delta + eps,                    # finished before the window
                      np.where(so >= tp, sq >= tpp - eps,                 # not started
                               (np.abs(sq - so - delta) <= eps)           # in the window
                               & np.where(eo <= tp, np.abs(eq - eo - delta) <= eps, eq > tpp - eps)))
        if ok.all():
            return tp, tpp
    return None


def span_times(tl: Timeline, table: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) of every op of ``tl``'s graph by id, from its spans (0.0 for an op without a span).

    ``table``: :func:`~tspsim.analysis.span_windows.span_table` of ``tl`` if already made.
    """
    n = len(tl.ops)
    ids, starts, ends = span_table(tl) if table is None else table
    start, end = np.zeros(n), np.zeros(n)
    start[ids], end[ids] = starts, ends
    return start, end


@dataclass
class StepTiming:
    """The simulated time of one decode step."""

    cached: int
    """Tokens cached before the step."""
    time_s: float
    """Step time."""
    breakdown: dict[str, float]
    """Where the time went (:func:`~tspsim.analysis.serving.time_breakdown`)."""
    method: str
    """``cut`` or ``window`` (assembled exactly from a shorter graph, see :class:`DecodeTimer`) or ``full``."""
    events: int
    """simpy events of the replay(s)."""
    ranks: RankStats
    """Per rank: compute, communication and overlapped seconds of the step
    (:func:`~tspsim.analysis.serving.rank_overlap`)."""
    sim_path: str = "full"
    """``periodic`` if the replay skipped repeating layers (:mod:`tspsim.engine.periodic`), else ``full``."""


class DecodeTimer:
    """Times decode steps of one configuration at any context length, reusing one graph per method.

    ``make_step(layers, cached)`` returns a decode step of the configuration, the timer's to re-cost, for the model
    cut to ``layers`` blocks (None: the real model) with ``cached`` tokens cached (:func:`context_steps` builds it
    from a :class:`BuildContext`; :func:`tspsim.simulate.inference.decode_step` also reuses an earlier point's).
    Methods, tried in order: ``cut`` (two-block graph, every block ends at a proven quiescent cut),
    ``window`` (a ``probe_layers``-block graph whose replay reaches a state that repeats one block
    later, :func:`find_period`), ``full`` (the whole step).
    """

    def __init__(self, make_step: Callable[[int | None, int], DecodeStep], layers: int, topo: Topology,
                 periodic: bool = True, probe_layers: int = 8) -> None:
        self.make_step = make_step
        self.layers = layers
        self.topo = topo
        self.method = "full"
        self.options = ReplayOptions(periodic=periodic, accounting=False)
        """Replay options: ``periodic=False`` also turns the engine's periodic path off (the reference)."""
        self._unit: DecodeStep | None = None
        self._full: DecodeStep | None = None
        self._classes: dict[str, OpClasses] = {}
        """Roofline classes of the ops of the unit and the full graph
        (:class:`~tspsim.analysis.span_windows.OpClasses`), shared by the breakdowns of their replays: re-costing
        changes only the attention ops (the volatile ones)."""
        self._plans: dict[str, dict[Any, Any]] = {}
        """Resolved communication of the unit and the full graph, shared by their replays: re-costing changes only
        compute ops, and a plan is keyed by everything it depends on (kind, group, bytes, root, algorithm)."""
        self._setups: dict[str, ReplaySetup] = {}
        """Structure-only parts of the replays of the unit and the full graph (:mod:`tspsim.engine.replay_setup`):
        re-costing changes no op's id, rank, stream, kind, dependencies, group or layer."""
        if periodic and layers > 2:
            unit = make_step(2, 0)
            if verify_cuts(unit.graph, unit.cuts):
                self.method, self._unit = "cut", unit
        if self.method == "full" and periodic and layers > probe_layers:
            probe = make_step(probe_layers, 0)
            if verify_periodic_structure(probe):
                self.method, self._unit = "window", probe

    def full_step(self, cached: int) -> DecodeStep:
        """The full L-block step graph, re-costed for ``cached``."""
        if self._full is None:
            self._full = self.make_step(None, cached)
        self._full.recost(cached)
        return self._full

    def time(self, cached: int) -> StepTiming:
        """Simulated time of the step that starts with ``cached`` tokens in the cache."""
        return self._time(cached)[0]

    def _time(self, cached: int) -> tuple[StepTiming, tuple[Any, ...]]:
        """The step's timing, and what must match for :meth:`time_many` to interpolate between two steps.

        That is the method, the replay's event fingerprint and (``window``) the block the period was found at.
        """
        gpu = self.topo.gpu
        unit = self._unit
        options = self.options
        if unit is not None:
            unit.recost(cached)
            tl = replay(unit.graph, self.topo, options, self._plans.setdefault("unit", {}), self._setup("unit", unit))
            if self.method == "cut":
                ends = {op_id: end for op_id, _, end in tl.spans}
                c0 = [ends[i] for i in unit.cuts[0]]
                c1 = [ends[i] for i in unit.cuts[1]]
                if min(c0) == max(c0) and min(c1) == max(c1):  # each cut is a single instant
                    t0, t1, t_end = c0[0], c1[0], tl.end_s
                    k = self.layers - 1
                    (b0, r0), (b1, r1), (b2, r2) = window_stats(tl, gpu, ((0.0, t0), (t0, t1), (t1, t_end)),
                                                                             self._op_classes("unit", unit))
                    bd = {key: b0[key] + k * b1[key] + b2[key] for key in BREAKDOWN_KEYS}
                    ranks = add_stats(add_stats(r0, r1, k), r2)
                    return (StepTiming(cached, t0 + k * (t1 - t0) + (t_end - t1), bd, "cut", tl.sim_events, ranks,
                                       tl.sim_path), ("cut", tl.sim_fingerprint))
            else:
                table = span_table(tl)
                times = span_times(tl, table)
                found = find_period(tl, unit, times=times)
                if found is not None:
                    tp, tpp = found
                    k = self.layers - len(unit.layer_starts)
                    end = float(table[2].max()) if len(table[2]) else 0.0  # tl.end_s, from the table
                    (whole, r_whole), (rep, r_rep) = window_stats(
                        tl, gpu, ((0.0, end), (tp, tpp)), self._op_classes("unit", unit), table)
                    bd = {key: whole[key] + k * rep[key] for key in BREAKDOWN_KEYS}
                    ranks = add_stats(r_whole, r_rep, k)
                    firsts = times[0][sorted(set(unit.layer_starts))]   # every op has a span in a finished replay
                    block = int(np.flatnonzero(firsts == tp)[0])         # the first block starting at t′
                    return (StepTiming(cached, end + k * (tpp - tp), bd, "window", tl.sim_events, ranks,
                                       tl.sim_path), ("window", tl.sim_fingerprint, block))
        step = self.full_step(cached)
        tl = replay(step.graph, self.topo, options, self._plans.setdefault("full", {}), self._setup("full", step))
        end = tl.end_s
        ((bd_full, r_full),) = window_stats(tl, gpu, ((0.0, end),), self._op_classes("full", step))
        return (StepTiming(cached, end, bd_full, "full", tl.sim_events, r_full, tl.sim_path),
                ("full", tl.sim_fingerprint))

    def time_many(self, cached: Sequence[int], progress: Callable[[int], None] | None = None) -> list[StepTiming]:
        """The timings of the steps starting with each of ``cached`` (consecutive counts), reusing replays.

        With ``periodic`` on, steps whose cache counts differ by a multiple of the sequence shards S have
        per-rank token counts that grow affinely, and so do the durations of their attention kernels
        when they are memory-bound (:func:`memory_bound_between`; the other ops do not change). Every event
        time of a replay is an affine function of the op durations as long as the replay processes the
        same events in the same order, and the durations for which it does form a convex set; so when
        two steps of one residue class have equal :attr:`~tspsim.engine.timeline.Timeline.sim_fingerprint`
        (and the same assembly), every step between them is the affine interpolation of the two, exactly
        (to float noise). Each residue class is bisected until its intervals have matching ends; in the
        worst case every step is replayed; a class none of whose steps is memory-bound (so no interval of it can
        interpolate) is replayed step by step in order, without the event fingerprint (~10% of a replay) or the
        attention costs that would go unused.
        ``progress(n)`` hears of n more steps settled.
        """
        cached = list(cached)
        if not self.options.periodic or len(cached) < 3:
            out = []
            for c in cached:
                out.append(self.time(c))
                if progress is not None:
                    progress(1)
            return out
        self.options = replace(self.options, fingerprint=True)
        try:
            shards = (self._unit or self.full_step(cached[0])).seq_shards
            known: dict[int, tuple[StepTiming, tuple[Any, ...], list[tuple[float, float]]]] = {}

            def measure(c: int) -> tuple[StepTiming, tuple[Any, ...], list[tuple[float, float]]]:
                if c not in known:
                    timing, key = self._time(c)
                    known[c] = (timing, key, self._attention_costs(c))
                    if progress is not None:
                        progress(1)
                return known[c]

            every: list[int] = []        # the steps of the classes replayed step by step
            for rho in range(min(shards, len(cached))):
                cls = cached[rho::shards]
                # An interval interpolates only if both its ends are memory-bound steps: a class with
                # none is replayed step by step (below), without the (unused) event fingerprint.
                ends = [c for c in cls if self._affine_between(*[self._attention_costs(c)] * 2)]
                if not ends:
                    every += cls
                    continue
                self.options = replace(self.options, fingerprint=True)
                todo = [(0, len(cls) - 1)]
                while todo:
                    lo, hi = todo.pop()
                    a, b = measure(cls[lo]), measure(cls[hi])
                    if hi - lo <= 1:
                        continue
                    if a[1] == b[1] and self._affine_between(a[2], b[2]):
                        for i in range(lo + 1, hi):
                            known[cls[i]] = (_interpolate(a[0], b[0], cls[i]), a[1], [])
                        if progress is not None:
                            progress(hi - lo - 1)
                    else:
                        mid = (lo + hi) // 2
                        todo += [(mid, hi), (lo, mid)]
            if every:
                self.options = replace(self.options, fingerprint=False)
                for c, timing in zip(every, self._each(every, progress)):
                    known[c] = (timing, (), [])
            return [known[c][0] for c in cached]
        finally:
            self.options = replace(self.options, fingerprint=False)

    def _each(self, cached: list[int], progress: Callable[[int], None] | None) -> list[StepTiming]:
        """:meth:`time` of every step of ``cached``, shared with a forked process when there is a second CPU.

        A step's timing depends on its cache count only (each replay re-costs the attention ops it needs and the
        caches it fills hold values, not history), so which process replays which step, and in what order,
        changes nothing (:func:`tspsim.core.forked.forked_map`; ``tests/test_inference.py`` compares).
        """
        out = []
        for ok, value in forked_map(self.time, cached, [float(c) for c in cached], on_done=progress):
            if not ok:
                raise value
            out.append(value)
        return out

    def _setup(self, which: str, step: DecodeStep) -> ReplaySetup:
        """The replay setup of the unit or the full graph, derived once (re-costing keeps it valid)."""
        setup = self._setups.get(which)
        if setup is None or setup.graph is not step.graph:
            setup = self._setups[which] = ReplaySetup.of(step.graph, [a.op for a in step.attention])
        return setup

    def _op_classes(self, which: str, step: DecodeStep) -> OpClasses:
        """The op classes of the unit or the full graph on this timer's GPU; its attention ops are the volatile ones."""
        classes = self._classes.get(which)
        if classes is None or classes.graph is not step.graph:
            classes = self._classes[which] = OpClasses(step.graph, self.topo.gpu, [a.op for a in step.attention])
        return classes

    def _attention_costs(self, c: int) -> list[tuple[float, float]]:
        """(FLOPs, HBM bytes) of every attention op of the step at ``c``."""
        step = self._unit or self.full_step(c)
        step.recost(c)
        ops = step.graph.ops
        return [(ops[a.op].flops, ops[a.op].hbm_bytes) for a in step.attention]

    def _affine_between(self, lo: list[tuple[float, float]], hi: list[tuple[float, float]]) -> bool:
        """:func:`memory_bound_between` for the attention ops of two steps, on this timer's GPU."""
        step = self._unit or self._full
        if step is None or not step.attention:
            return False
        gpu = kernel_gpu(self.topo.gpu, step.graph.meta or {})
        return memory_bound_between(lo, hi, gpu, large_efficiency(step.graph.ops[step.attention[0].op], gpu))


def memory_bound_between(lo: list[tuple[float, float]], hi: list[tuple[float, float]], gpu: GpuSpec,
                         eff_large: float) -> bool:
    """True if every kernel's duration is its HBM time (+ launch) at every size between ``lo`` and ``hi``.

    Per kernel, (FLOPs F, bytes B) at both ends; between them both are affine in the token count. Its FLOP
    time is F / (peak · eff) with eff = eff_large · F / (F + φ·F½) (:func:`tspsim.engine.costs.efficiency`),
    i.e. (F + φ·F½) / (peak · eff_large), where φ = min(1, F / (B · I_ridge)) is a linear-fractional, hence
    monotone, function of the token count: φ ≤ φ̂ = max(φ_lo, φ_hi) throughout, so the FLOP time is at most
    the affine (F + φ̂·F½) / (peak · eff_large). If the HBM time B / bw (affine) is at least that bound at
    both ends, it is at every size between: the roofline's max is the HBM time, affine in the tokens.
    """
    if len(lo) != len(hi):
        return False
    bw = gpu.hbm_TBps * 1e12 * gpu.hbm_efficiency
    peak = gpu.peak_bf16_TFLOPS * 1e12 * eff_large
    ridge = peak / bw
    half = gpu.gemm_half_GFLOP * 1e9
    for (f0, b0), (f1, b1) in zip(lo, hi):
        if min(f0, b0, f1, b1) <= 0:
            return False
        phi = max(min(1.0, f0 / b0 / ridge), min(1.0, f1 / b1 / ridge))
        if b0 / bw < (f0 + phi * half) / peak or b1 / bw < (f1 + phi * half) / peak:
            return False
    return True


def _interpolate(a: StepTiming, b: StepTiming, cached: int) -> StepTiming:
    """The step at ``cached`` between steps ``a`` and ``b`` of one affine piece (see :meth:`DecodeTimer.time_many`)."""
    w = (cached - a.cached) / (b.cached - a.cached)

    def mix(x: float, y: float) -> float:
        return x + w * (y - x)

    ranks = {r: tuple(mix(x, y) for x, y in zip(a.ranks[r], b.ranks[r])) for r in a.ranks}
    return StepTiming(cached, mix(a.time_s, b.time_s), {k: mix(a.breakdown[k], b.breakdown[k]) for k in a.breakdown},
                      a.method, 0, ranks, "periodic")  # type: ignore[arg-type]

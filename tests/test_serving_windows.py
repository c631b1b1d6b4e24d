"""window_stats (one pass over the spans for several windows) equals time_breakdown and rank_overlap
computed window by window the straightforward way, to the last bit."""

from __future__ import annotations

import random

import pytest

from tspsim.analysis.metrics import intersection_length, interval_union, total_length
from tspsim.analysis.serving import BREAKDOWN_KEYS, rank_overlap, time_breakdown, window_stats
from tspsim.analysis.span_windows import OpClasses
from tspsim.engine.costs import efficiency, large_efficiency
from tspsim.engine.sim import replay
from tspsim.schedules.context import BuildContext
from tspsim.schedules.decode import build_decode_step
from tspsim.schedules.prefill import build_prefill
from tspsim.simulate.decode_timer import decode_topology
from tspsim.spec.assumptions import Assumptions
from tspsim.spec.layout import make_layout
from tspsim.spec.model import ModelConfig
from tspsim.spec.workload import Workload

GQA = ModelConfig("win-gqa", hidden=1024, layers=3, q_heads=16, kv_heads=8, head_dim=64, ffn_hidden=4096,
                  gated_mlp=True, vocab=4096)


def reference_breakdown(tl, gpu, start=0.0, end=None):
    """time_breakdown as it was written before window_stats: union of the clipped spans, per window."""
    end = tl.end_s if end is None else end
    ranks = tuple(tl.graph.ranks) or tuple(sorted({op.rank for op in tl.ops}))
    launch = gpu.kernel_launch_us * 1e-6
    hbm = gpu.hbm_TBps * 1e12 * gpu.hbm_efficiency
    peak = gpu.peak_bf16_TFLOPS * 1e12
    sums = dict.fromkeys(BREAKDOWN_KEYS, 0.0)
    per = {r: ([], []) for r in ranks}
    for op_id, a0, b0 in tl.spans:
        a, b = max(a0, start), min(b0, end)
        if b <= a:
            continue
        op = tl.ops[op_id]
        comp, comm = per.setdefault(op.rank, ([], []))
        if op.is_comm:
            comm.append((a, b))
            continue
        if op.kind in ("memory", "host"):
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
        elif t_mem >= t_large:
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


def _timeline(topo, schedule, kw, mode, batch):
    workload = Workload(mode, 1024, batch, 1)
    layout = make_layout(schedule, topo, GQA, workload, **kw)
    ctx = BuildContext(GQA, topo, layout, workload, Assumptions.from_overrides({}))
    if mode == "decode":
        dtopo = decode_topology(topo, ctx.opts)
        return replay(build_decode_step(ctx, 1024).graph, dtopo), dtopo.gpu
    return replay(build_prefill(ctx), topo), topo.gpu


@pytest.mark.parametrize("schedule,kw", [("tp", {"degree": 4}), ("tsp", {"degree": 8}), ("sp", {"degree": 2}),
                                         ("tp+sp", {"tp": 2, "sp": 2})])
@pytest.mark.parametrize("mode,batch", [("decode", 1), ("decode", 16), ("prefill", 1)])
def test_window_stats_equal_window_by_window(mi300x, schedule, kw, mode, batch):
    tl, gpu = _timeline(mi300x, schedule, kw, mode, batch)
    rng = random.Random(19)
    end = tl.end_s
    cuts = sorted(rng.uniform(0.0, end) for _ in range(3))
    starts = sorted({op_start for _, op_start, _ in tl.spans})
    exact = starts[len(starts) // 3], starts[2 * len(starts) // 3]     # edges exactly at span starts
    windows = [(0.0, end), (0.0, cuts[0]), (cuts[0], cuts[1]), (cuts[1], end), (exact[0], exact[1]),
               (exact[1], end), (cuts[2], cuts[2])]
    got = window_stats(tl, gpu, windows)
    for (start, stop), (bd, stats) in zip(windows, got):
        assert bd == reference_breakdown(tl, gpu, start, stop)
        assert bd == time_breakdown(tl, gpu, start, stop)
        assert stats == rank_overlap(tl, start, stop)
        assert list(stats) == list(rank_overlap(tl, start, stop))


@pytest.mark.parametrize("schedule,kw", [("tp", {"degree": 4}), ("tsp", {"degree": 8})])
def test_window_stats_memo_across_recosted_steps(mi300x, schedule, kw):
    """A classification memo kept across the replays of one decode graph re-costed for other contexts (as
    DecodeTimer keeps it) gives the same numbers, to the last bit, as classifying every timeline afresh."""
    workload = Workload("decode", 1024, 4, 1)
    layout = make_layout(schedule, mi300x, GQA, workload, **kw)
    ctx = BuildContext(GQA, mi300x, layout, workload, Assumptions.from_overrides({}))
    dtopo = decode_topology(mi300x, ctx.opts)
    step = build_decode_step(ctx, 100)
    memo = OpClasses(step.graph, dtopo.gpu, [a.op for a in step.attention])
    every = OpClasses(step.graph, dtopo.gpu)      # every op volatile
    for cached in (100, 5000, 101, 100_000, 7):
        step.recost(cached)
        tl = replay(step.graph, dtopo)
        windows = [(0.0, tl.end_s), (tl.end_s / 3, tl.end_s / 2)]
        fresh = window_stats(tl, dtopo.gpu, windows)
        assert window_stats(tl, dtopo.gpu, windows, memo) == fresh
        assert window_stats(tl, dtopo.gpu, windows, every) == fresh
    with pytest.raises(ValueError, match="another graph"):
        window_stats(replay(build_decode_step(ctx, 100).graph, dtopo), dtopo.gpu, [(0.0, 1.0)], memo)

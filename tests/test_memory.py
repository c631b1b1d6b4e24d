"""Memory: the paper's single-node table (tsp.md §6), growth with context, and memory accounting invariants."""

from __future__ import annotations

import itertools

import pytest

from tspsim.opgraph import MEMORY_CATEGORIES
from tspsim.simulate import Point, simulate

# tsp.md §6: peak memory per GPU, 8 × MI300X, zyphra-7b (tsp.md §7), training at 128K tokens.
PUBLISHED_GB = {"tsp": 38.8, "tp": 70.0, "tp+sp": (85.0, 140.0)}

# Tolerance on the published numbers: ±15 % (relative). The paper does not state the recompute policy,
# optimizer precision or runtime overheads behind its table (tsp.md §6), so tspsim's defaults stand in:
# Assumptions() in tspsim/spec/assumptions.py — recompute="full" (only each block's input is kept), bf16 parameters
# (param_bytes=2), fp32 gradients (grad_bytes=4), fp32 master weights + Adam m, v (master_bytes=4,
# optimizer_bytes=8: 18 B/parameter of parameter-class state), no ZeRO-1 (one replica anyway),
# sp_keep_gathered_kv=True (gathered K/V kept for backward in SP-style schedules), vocabulary 32000
# (assumed by the zyphra-7b preset) — plus runtime_reserve_GB = 8.0 of topologies/mi300x-1node.yaml
# (HIP context, RCCL buffers, allocator slack). With these the simulated peaks land within a few to ~11 %
# of the table; 15 % leaves room for the unstated details without letting a wrong memory model pass.
PUBLISHED_TOLERANCE = 0.15

STATIC = ("parameters", "gradients", "optimizer_state", "reserved")
TRANSIENT = tuple(c for c in MEMORY_CATEGORIES if c not in STATIC)


def _peak_from_curve(tl) -> float:
    """Peak total bytes over all ranks and times, recomputed from Timeline.memory_curve."""
    peak = 0
    for r in tl.graph.ranks:
        for _t, cats in tl.memory_curve(r):
            peak = max(peak, sum(cats.values()))
    return peak


@pytest.fixture(scope="module")
def published_runs():
    """zyphra-7b, 128K, training, defaults, on one MI300X node."""
    layouts = {"tsp": {"degree": 8}, "tp": {"degree": 8}, "tp+sp 2x4": {"tp": 2, "sp": 4},
               "tp+sp 4x2": {"tp": 4, "sp": 2}}
    return {name: simulate(Point(name.split()[0], "mi300x-1node", model="zyphra-7b", mode="train", seq_len=131072,
                                 **kw))
            for name, kw in layouts.items()}


def _within(got: float, ref: float) -> bool:
    return abs(got - ref) <= PUBLISHED_TOLERANCE * ref


@pytest.mark.parametrize("schedule", ["tsp", "tp"])
def test_published_peak_memory(published_runs, schedule):
    res = published_runs[schedule]
    got = res.entry["peak_memory_gb"]
    ref = PUBLISHED_GB[schedule]
    assert _within(got, ref), f"{schedule}: {got:.1f} GB vs published {ref} GB (±{PUBLISHED_TOLERANCE:.0%})"
    assert not res.entry["oom"]


def test_published_peak_memory_tp_sp(published_runs):
    """The paper does not say which TP+SP layout is which: the better assignment must fit both."""
    got = (published_runs["tp+sp 2x4"].entry["peak_memory_gb"], published_runs["tp+sp 4x2"].entry["peak_memory_gb"])
    refs = PUBLISHED_GB["tp+sp"]

    def worst(assign):
        return max(abs(g - r) / r for g, r in zip(got, assign))

    best = min(itertools.permutations(refs), key=worst)
    assert worst(best) <= PUBLISHED_TOLERANCE, f"TP+SP peaks {got} GB vs published {refs} GB"


def test_published_ordering(published_runs):
    """TSP needs the least memory, then TP, then TP+SP (both layouts)."""
    peak = {k: v.entry["peak_memory_gb"] for k, v in published_runs.items()}
    assert peak["tsp"] < peak["tp"] < min(peak["tp+sp 2x4"], peak["tp+sp 4x2"])


@pytest.mark.parametrize("name", ["tsp", "tp", "tp+sp 2x4", "tp+sp 4x2"])
def test_peak_equals_max_of_memory_timeline(published_runs, name):
    res = published_runs[name]
    tl = res.timeline
    peak = _peak_from_curve(tl)
    assert res.entry["peak_memory_gb"] == pytest.approx(peak / 1e9, rel=1e-12)
    assert max(tl.peak_memory(r)[0] for r in tl.graph.ranks) == peak
    # the breakdown at the peak adds up to the peak
    assert sum(res.entry["memory_breakdown_gb"].values()) == pytest.approx(peak / 1e9, rel=1e-9)


def test_tsp_needs_less_memory_than_tp_and_gap_grows(model_yaml):
    """tsp.md §6: peak memory grows with context much faster for TP than for TSP.

    Runs a copy of zyphra-7b with 8 instead of 32 layers (same shapes otherwise) to keep the file fast.
    """
    model = model_yaml("zyphra-7b-8layers", hidden=4096, layers=8, q_heads=32, kv_heads=32, head_dim=128,
                       ffn_hidden=16384, gated_mlp=True, vocab=32000)
    gaps = []
    for seq in (16384, 32768, 65536, 131072):
        peak = {s: simulate(Point(s, "mi300x-1node", model=model, mode="train", seq_len=seq, degree=8))
                .entry["peak_memory_gb"] for s in ("tsp", "tp")}
        assert peak["tsp"] < peak["tp"], f"seq {seq}: {peak}"
        gaps.append(peak["tp"] - peak["tsp"])
    assert all(b > a for a, b in zip(gaps, gaps[1:])), f"TP − TSP gap does not grow with length: {gaps}"


# ------------------------------------------------------------------------------------------ invariants
def _check_invariants(tl, training: bool) -> None:
    for r in tl.graph.ranks:
        events = tl.memory.get(r, [])
        assert events, f"rank {r} has no memory events"
        times = [t for t, _c, _d in events]
        assert times == sorted(times), f"rank {r}: memory events out of time order"
        cur = dict.fromkeys(MEMORY_CATEGORIES, 0)
        for t, cat, delta in events:
            cur[cat] += delta
            assert cur[cat] >= 0, f"rank {r}: {cat} negative ({cur[cat]} B) at t={t}"
        curve = tl.memory_curve(r)
        assert curve[-1][1] == cur
        static = sum(cur[c] for c in STATIC)
        assert static > 0
        if training:
            # after the optimizer step only parameter-class memory and the reserve remain: no leaks
            for c in TRANSIENT:
                assert cur[c] == 0, f"rank {r}: {cur[c]} B of {c} left at the end of the step"
            assert cur["gradients"] > 0 and cur["optimizer_state"] > 0
        # the static level is what the first op allocated
        first_t = events[0][0]
        first = dict.fromkeys(MEMORY_CATEGORIES, 0)
        for t, cat, delta in events:
            if t != first_t or cat not in STATIC:
                continue
            first[cat] += delta
        assert all(first[c] == cur[c] for c in STATIC), f"rank {r}: static memory changed during the step"


@pytest.mark.parametrize("name", ["tsp", "tp", "tp+sp 2x4", "tp+sp 4x2"])
def test_published_runs_memory_invariants(published_runs, name):
    _check_invariants(published_runs[name].timeline, training=True)


INVARIANT_CASES = [
    ("tsp", {"degree": 8}), ("tsp", {"degree": 4}), ("tp", {"degree": 4}), ("satp-seq", {"degree": 4}),
    ("satp-seq", {"degree": 8, "options": (("satp_seq_attention", "gather-input"),)}),
    ("satp-batch", {"degree": 4, "batch": 4}), ("sp", {"degree": 8}), ("sp", {"degree": 2}),
    ("tp+sp", {"tp": 2, "sp": 2}), ("tp+sp", {"tp": 4, "sp": 2}),
]


@pytest.mark.parametrize(("schedule", "kw"), INVARIANT_CASES)
@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_memory_invariants_every_schedule(model_yaml, schedule, kw, recompute):
    kw = dict(kw)
    opts = tuple(kw.pop("options", ())) + (("recompute", recompute),)
    batch = kw.pop("batch", 1)
    model = model_yaml("mem-tiny", hidden=512, layers=3, q_heads=8, kv_heads=8, head_dim=64, ffn_hidden=2048,
                       vocab=1024)
    res = simulate(Point(schedule, "mi300x-1node", model=model, mode="train", seq_len=8192, batch=batch,
                         options=opts, **kw), fold=False)
    _check_invariants(res.timeline, training=True)


@pytest.mark.parametrize("schedule", ["tsp", "tp", "sp", "satp-seq"])
@pytest.mark.parametrize("zero1", [False, True])
def test_memory_invariants_with_data_parallel(model_yaml, schedule, zero1):
    """D = 2 on 8 GPUs: 4 replicas with DP gradient sync (all-reduce, or ZeRO-1 RS + AG)."""
    model = model_yaml("mem-tiny-dp", hidden=512, layers=2, q_heads=8, kv_heads=8, head_dim=64, ffn_hidden=2048,
                       vocab=1024)
    res = simulate(Point(schedule, "mi300x-1node", model=model, mode="train", seq_len=4096, degree=2,
                         options=(("zero1", zero1),)), fold=False)
    _check_invariants(res.timeline, training=True)


@pytest.mark.parametrize("schedule", ["tsp", "tp", "tp+sp", "satp-batch"])
def test_memory_invariants_forward(model_yaml, schedule):
    model = model_yaml("mem-tiny-fwd", hidden=512, layers=2, q_heads=8, kv_heads=8, head_dim=64, ffn_hidden=2048,
                       vocab=1024)
    kw = {"tp": 4, "sp": 2} if schedule == "tp+sp" else {"degree": 4}
    res = simulate(Point(schedule, "mi300x-1node", model=model, mode="forward", seq_len=8192,
                         batch=4 if schedule == "satp-batch" else 1, **kw), fold=False)
    _check_invariants(res.timeline, training=False)
    for r in res.timeline.graph.ranks:
        end = res.timeline.memory_curve(r)[-1][1]
        assert all(end[c] == 0 for c in TRANSIENT), f"rank {r}: forward leaves {end}"

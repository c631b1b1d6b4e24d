"""Metrics on hand-built Timelines: interval unions, HTA overlap, exposed communication, peak memory,
byte accounting, and the run entry's keys and formulas."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stable_keys import EXTRA_KEYS, STABLE_KEYS

from tspsim.analysis.metrics import (
    comm_bytes,
    generic_entry,
    intersection_length,
    interval_union,
    model_flops_per_step,
    overlap_stats,
    peak_memory,
    run_entry,
    time_metrics,
)
from tspsim.engine.timeline import Timeline
from tspsim.opgraph import MEMORY_CATEGORIES, GraphBuilder
from tspsim.spec.assumptions import Assumptions
from tspsim.spec.layout import make_layout
from tspsim.spec.model import load_model
from tspsim.spec.workload import Workload


# ---------------------------------------------------------------------------------- interval unions
@pytest.mark.parametrize(("raw", "union"), [
    ([], []),
    ([(0, 1), (1, 2)], [(0, 2)]),                     # touching intervals merge
    ([(5, 6), (0, 3), (1, 2)], [(0, 3), (5, 6)]),     # unsorted, nested
    ([(0, 4), (2, 3), (3, 7)], [(0, 7)]),
    ([(1, 1), (3, 2), (4, 5)], [(4, 5)]),             # empty and negative intervals dropped
])
def test_interval_union_cases(raw, union):
    assert interval_union(raw) == union


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=12))
def test_interval_union_measure_matches_grid(raw):
    union = interval_union(raw)
    assert all(a < b for a, b in union)
    assert all(union[i][1] < union[i + 1][0] for i in range(len(union) - 1))  # disjoint, sorted, not touching
    cells = {x for a, b in raw for x in range(a, b)}
    assert sum(b - a for a, b in union) == len(cells)


def test_intersection_length():
    assert intersection_length([(0, 4), (6, 10)], [(3, 7)]) == 2
    assert intersection_length([(0, 1)], [(1, 2)]) == 0
    assert intersection_length([], [(0, 5)]) == 0


# ---------------------------------------------------------------------------------- a built timeline
def _timeline() -> Timeline:
    """Three ranks on hand-placed spans.

    rank 0: compute [0,4] and [6,10], comm [3,7]                → overlap 2 of 4 s (50 %), exposed 2 s
    rank 1: compute [0,10], comm [2,4] and [3,5] (union [2,5])  → overlap 3 of 3 s (100 %), exposed 0
    rank 2: compute [0,9] only (no communication)               → not in the overlap mean, exposed 0
    A zero-length memory op on rank 0 counts for neither.
    """
    b = GraphBuilder((0, 1, 2))
    spans = []
    mem0 = b.memory(0, "static memory", [("parameters", 100)])
    spans.append((mem0, 0.0, 0.0))
    for rank, a, z in ((0, 0, 4), (0, 6, 10), (1, 0, 10), (2, 0, 9)):
        spans.append((b.compute(rank, "gemm", f"L0.gemm[r={rank}]", layer=0, flops=1.0), float(a), float(z)))
    ag = b.collective("all_gather", (0, 1), 1000, "L0.attn.input_all_gather", layer=0)
    ar = b.collective("all_reduce", (0, 1), 4000, "L0.attn.out_all_reduce", layer=0)
    rec = b.collective("all_reduce", (0, 1), 4000, "L0.recompute.attn.out_all_reduce", layer=0, phase="bwd")
    dp = b.collective("all_reduce", (0, 1), 8000, "dp.grad_all_reduce", layer=-1, phase="bwd")
    spans += [(ag[0], 3.0, 7.0), (ag[1], 2.0, 4.0), (ar[1], 3.0, 5.0), (ar[0], 7.0, 7.0),
              (rec[0], 7.0, 7.0), (rec[1], 5.0, 5.0), (dp[0], 7.0, 7.0), (dp[1], 5.0, 5.0)]
    tl = Timeline(graph=b.graph, topology_name="hand", spans=spans)
    tl.op_sent_bytes = {ag[0]: 500.0, ag[1]: 500.0, ar[0]: 3000.0, ar[1]: 3000.0, rec[0]: 3000.0,
                        rec[1]: 3000.0, dp[0]: 6000.0, dp[1]: 6000.0}
    tl.memory = {
        0: [(0.0, "parameters", 100), (1.0, "activations", 50), (2.0, "activations", -30),
            (3.0, "temporary", 100), (4.0, "temporary", -100)],
        1: [(0.0, "parameters", 500), (1.0, "parameters", -400), (2.0, "comm_buffers", 350)],
        2: [(0.0, "parameters", 10)],
    }
    return tl


def test_overlap_stats_exact():
    tl = _timeline()
    assert overlap_stats(tl, 0) == (8.0, 4.0, 2.0)
    assert overlap_stats(tl, 1) == (10.0, 3.0, 3.0)
    assert overlap_stats(tl, 2) == (9.0, 0.0, 0.0)


def test_time_metrics_hta_overlap_and_exposed():
    m = time_metrics(_timeline())
    assert m["overlap_pct"] == pytest.approx(75.0)          # mean of 50 % and 100 %; rank 2 has no comm
    assert m["exposed_comm_s"] == pytest.approx(2.0 / 3)    # mean over all 3 ranks of |comm − compute|
    assert m["compute_s"] == pytest.approx(27.0 / 3)
    assert m["comm_s"] == pytest.approx(7.0 / 3)


def test_no_communication_gives_zero_overlap():
    b = GraphBuilder((0,))
    op = b.compute(0, "gemm", "g", flops=1.0)
    tl = Timeline(graph=b.graph, topology_name="hand", spans=[(op, 0.0, 1.0)])
    m = time_metrics(tl)
    assert m["overlap_pct"] == 0.0 and m["exposed_comm_s"] == 0.0 and m["compute_s"] == 1.0


def test_peak_memory_is_max_of_memory_curve():
    tl = _timeline()
    peak, at = peak_memory(tl)
    curve_max = max(sum(c.values()) for r in tl.memory for _, c in tl.memory_curve(r))
    assert peak == curve_max == 500
    assert at["parameters"] == 500 and set(at) == set(MEMORY_CATEGORIES)
    assert tl.peak_memory(0) == (220, {**dict.fromkeys(MEMORY_CATEGORIES, 0), "parameters": 100,
                                       "activations": 20, "temporary": 100})


def test_comm_bytes_separates_input_all_gather_and_layer_forward():
    tl = _timeline()
    per = comm_bytes(tl)
    assert per == {"all_gather_input": 1000.0 / 3, "all_reduce": 24000.0 / 3}   # mean over 3 simulated ranks
    layer = comm_bytes(tl, layer_only=True)                 # layer 0, fwd, not recompute, not DP
    # mean over the ranks that run block 0's forward (ranks 0 and 1; with pipelines: the first stage's)
    assert layer == {"all_gather_input": 1000.0 / 2, "all_reduce": 6000.0 / 2}


def test_generic_entry_has_every_key_with_nulls(mi300x):
    e = generic_entry(_timeline(), mi300x)
    assert set(e) == STABLE_KEYS | EXTRA_KEYS
    assert e["model"] is None and e["mfu"] is None and e["tokens_per_s"] is None
    assert e["step_time_s"] == 10.0 and e["peak_memory_gb"] == 500 / 1e9


def test_run_entry_keys_and_formulas(mi300x):
    model = load_model("zyphra-7b")
    workload = Workload("train", 8192, 1)
    plan = make_layout("tp", mi300x, model, workload, degree=8)
    tl = _timeline()
    e = run_entry(tl, mi300x, model, plan, workload, Assumptions())
    assert set(e) == STABLE_KEYS | EXTRA_KEYS
    assert set(e["memory_breakdown_gb"]) == set(MEMORY_CATEGORIES)
    assert e["tokens_per_s"] == pytest.approx(8192 / 10.0)
    assert e["tokens_per_s_per_gpu"] == pytest.approx(8192 / 10.0 / 8)
    assert e["layer_tokens_per_s"] == pytest.approx(8192 / 10.0 * 32)
    flops = 3 * (32 * model.layer_fwd_flops(1, 8192) + 2 * 8192 * 4096 * model.vocab)
    assert model_flops_per_step(model, workload, 1) == pytest.approx(flops)
    assert e["mfu"] == pytest.approx(flops / (10.0 * 8 * mi300x.gpu.mfu_peak_TFLOPS * 1e12))
    assert e["oom"] is False and e["hbm_gb"] == mi300x.gpu.hbm_GB
    assert e["config"]["plan"]["replica_size"] == 8 and e["config"]["model"]["hidden"] == 4096
    assert e["model_sha256"] == model.sha256 and e["topology_sha256"] == mi300x.source_sha256


def test_forward_mfu_counts_one_pass(mi300x):
    model = load_model("zyphra-7b")
    train, fwd = Workload("train", 4096, 2), Workload("forward", 4096, 2)
    assert model_flops_per_step(model, train, 3) == pytest.approx(3 * model_flops_per_step(model, fwd, 3))

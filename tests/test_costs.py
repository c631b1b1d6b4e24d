"""The compute cost model (tspsim/costs.py): roofline with a shape-aware small-kernel roll-off.

eff = eff_large · F / (F + φ·F½), φ = min(1, I / I_ridge), I = F / bytes,
I_ridge = peak · eff_large / (HBM · eff_hbm); time = max(F / (peak·eff), bytes / (HBM·eff_hbm)) + launch.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tspsim.engine.costs import compute_seconds, efficiency, large_efficiency, tail_fraction
from tspsim.opgraph import Op
from tspsim.schedules import SCHEDULES
from tspsim.schedules.context import BuildContext, gemm_bytes, gemm_flops
from tspsim.spec.assumptions import Assumptions
from tspsim.spec.layout import make_layout
from tspsim.spec.model import load_model
from tspsim.spec.workload import Workload

S = 2


def _gemm(m: float, n: float, k: float) -> Op:
    return Op(0, 0, "compute", "gemm", "g", flops=gemm_flops(m, n, k), hbm_bytes=gemm_bytes(m, n, k, S),
              shape=(int(m), int(n), int(k)))


def _ridge(gpu, base: float) -> float:
    return gpu.peak_bf16_TFLOPS * base / (gpu.hbm_TBps * gpu.hbm_efficiency)


def test_square_gemm_keeps_the_fitted_roll_off(mi300x):
    """Square GEMMs (what gemm_half_GFLOP was fitted on) are compute-bound: φ = 1, eff = base·F/(F+F½)."""
    g = mi300x.gpu
    for n in (1024, 2048, 8192):
        op = _gemm(n, n, n)
        assert tail_fraction(op, g) == 1.0
        F = op.flops / 1e9
        assert efficiency(op, g) == pytest.approx(g.gemm_efficiency * F / (F + g.gemm_half_GFLOP), rel=1e-15)
    # the fit: 2048³ reaches ~37% of the 8192³ rate on MI300X (hardware.md §4.1, Azure hipBLASLt sweep)
    ratio = efficiency(_gemm(2048, 2048, 2048), g) / efficiency(_gemm(8192, 8192, 8192), g)
    assert ratio == pytest.approx(0.37, abs=0.02)


@pytest.mark.parametrize("B", [1, 8, 64])
def test_skinny_decode_gemm_pays_intensity_share_of_the_tail(mi300x, B):
    g = mi300x.gpu
    op = _gemm(B, 10240 // 8, 8192)                                # llama3-70b QKV, TP 8, B tokens
    intensity = op.flops / op.hbm_bytes
    phi = intensity / _ridge(g, g.gemm_efficiency)
    assert phi < 1
    assert tail_fraction(op, g) == pytest.approx(phi, rel=1e-15)
    F = op.flops / 1e9
    assert efficiency(op, g) == pytest.approx(g.gemm_efficiency * F / (F + phi * g.gemm_half_GFLOP), rel=1e-15)
    t = compute_seconds(op, g)
    t_mem = op.hbm_bytes / (g.hbm_TBps * 1e12 * g.hbm_efficiency)
    t_tail_full = g.gemm_half_GFLOP * 1e9 / (g.peak_bf16_TFLOPS * 1e12 * g.gemm_efficiency)
    assert t >= t_mem + g.kernel_launch_us * 1e-6
    if B == 1:     # a GEMV streams its weights: within 1% of the HBM time, not a 44 µs square-GEMM tail
        assert t - g.kernel_launch_us * 1e-6 == pytest.approx(t_mem, rel=0.01)
        assert t < t_tail_full


def test_attention_ridge_uses_attention_efficiency(mi300x):
    g = mi300x.gpu
    op = Op(0, 0, "compute", "attention_fwd", "a", flops=4.0 * 1 * 4096 * 8 * 128,
            hbm_bytes=2.0 * 4096 * 128 * S)
    assert large_efficiency(op, g) == g.attn_fwd_efficiency
    assert tail_fraction(op, g) == pytest.approx(op.flops / op.hbm_bytes / _ridge(g, g.attn_fwd_efficiency))


def test_edge_cases(mi300x):
    g = mi300x.gpu
    no_bytes = Op(0, 0, "compute", "gemm", "g", flops=1e9)
    assert tail_fraction(no_bytes, g) == 1.0                       # no traffic recorded: compute-bound
    no_flops = Op(0, 0, "compute", "gemm", "g", hbm_bytes=1e6)
    assert efficiency(no_flops, g) == g.gemm_efficiency            # no 0/0
    assert compute_seconds(no_flops, g) == pytest.approx(1e6 / (g.hbm_TBps * 1e12 * g.hbm_efficiency)
                                                         + g.kernel_launch_us * 1e-6)
    elem = Op(0, 0, "compute", "elementwise", "e", hbm_bytes=1e6)
    assert efficiency(elem, g) == g.gemm_efficiency
    assert compute_seconds(Op(0, 0, "compute", "memory", "m"), g) == 0.0
    flat = replace(g, gemm_half_GFLOP=0.0)                          # the plain roofline
    assert efficiency(_gemm(1, 512, 512), flat) == g.gemm_efficiency


@settings(max_examples=200, deadline=None)
@given(m=st.integers(1, 1 << 17), n=st.integers(1, 1 << 15), k=st.integers(1, 1 << 15))
def test_roll_off_properties(mi300x, m, n, k):
    g = mi300x.gpu
    op = _gemm(m, n, k)
    phi = tail_fraction(op, g)
    assert 0.0 < phi <= 1.0
    assert 0.0 < efficiency(op, g) <= g.gemm_efficiency
    t = compute_seconds(op, g)
    # never faster than either roofline bound, never slower than the full square-GEMM tail
    t_mem = op.hbm_bytes / (g.hbm_TBps * 1e12 * g.hbm_efficiency)
    t_large = op.flops / (g.peak_bf16_TFLOPS * 1e12 * g.gemm_efficiency)
    t_tail = g.gemm_half_GFLOP * 1e9 / (g.peak_bf16_TFLOPS * 1e12 * g.gemm_efficiency)
    launch = g.kernel_launch_us * 1e-6
    assert t >= max(t_mem, t_large) + launch - 1e-15
    assert t <= max(t_mem, t_large + t_tail) + launch + 1e-15
    # more rows of the same weights never make the kernel cheaper
    bigger = _gemm(m + 1, n, k)
    assert compute_seconds(bigger, g) >= t - 1e-15


@pytest.mark.parametrize("schedule", ["tp", "tsp"])
def test_training_gemms_are_all_compute_bound(mi300x, schedule):
    """Training and prefill GEMMs of a real model sit above the ridge: the shape-aware roll-off leaves
    them exactly as the FLOP roll-off had them."""
    model = load_model("llama3-8b")
    work = Workload("train", 8192, 1)
    plan = make_layout(schedule, mi300x, model, work, degree=8)
    graph = SCHEDULES.get(schedule).build(BuildContext(model, mi300x, plan, work, Assumptions()))
    # (TSP's vocabulary-ring embedding lookup is a K = 1 gather costed as a GEMM; it is not one)
    gemms = [op for op in graph.ops if op.kind == "gemm" and op.shape[2] > 1]
    assert gemms
    assert all(tail_fraction(op, mi300x.gpu) == 1.0 for op in gemms)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["gemm", "attention_fwd", "attention_bwd", "elementwise", "memory", "host"]),
       flops=st.one_of(st.just(0.0), st.floats(1e-3, 1e16)), hbm=st.one_of(st.just(0.0), st.floats(1e-3, 1e12)),
       half=st.sampled_from([0.0, 29.0]))
def test_compute_seconds_equals_its_formula(mi300x, kind, flops, hbm, half):
    """compute_seconds (efficiency inlined for speed) == max(F / (peak·eff), bytes / HBM) + launch, bit for bit."""
    gpu = replace(mi300x.gpu, gemm_half_GFLOP=half)
    op = Op(0, 0, "compute", kind, "k", flops=flops, hbm_bytes=hbm)
    if kind in ("memory", "host") or (flops <= 0 and hbm <= 0):
        want = 0.0
    else:
        t_flops = flops / (gpu.peak_bf16_TFLOPS * 1e12 * efficiency(op, gpu)) if flops > 0 else 0.0
        want = max(t_flops, hbm / (gpu.hbm_TBps * 1e12 * gpu.hbm_efficiency)) + gpu.kernel_launch_us * 1e-6
    assert compute_seconds(op, gpu) == want

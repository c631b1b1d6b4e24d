"""The compute side of ``tspsim calibrate``: fit a GPU's per-kind efficiencies to kernel micro-benchmarks.

Each measured kernel (:mod:`tspsim.spec.microbench`) becomes the op the schedules would emit — its FLOPs
(:func:`~tspsim.schedules.context.gemm_flops`, :func:`~tspsim.schedules.context.attention_fwd_flops`, ×
:data:`~tspsim.schedules.context.ATTN_BWD_FACTOR` backward) and HBM bytes — and the compute model
(:func:`tspsim.engine.costs.compute_seconds`: a roofline with the per-kind ceiling, the small-kernel
roll-off F / (F + φ·F½) and the per-kernel overhead) predicts its time. The fit is the communication
fit's (:mod:`tspsim.explore.calibrate`): robust log-time errors, only the parameters the rows determine
(:data:`~tspsim.explore.calibrate_params.COMPUTE_PARAMETERS` in priority order, variance inflation ≤ 5),
bounded to their plausible ranges, :func:`tspsim.explore.fit.least_squares`.

What each parameter needs: ``gemm_efficiency`` large GEMMs, ``gemm_half_GFLOP`` GEMMs of a few GFLOP or
less (the roll-off), ``attn_*_efficiency`` attention rows, ``hbm_efficiency`` memory-bound rows (skinny
GEMMs), ``kernel_launch_us`` tiny kernels of different arithmetic intensity (for compute-bound kernels the
overhead and the roll-off's tail are the same fixed time, so only one of them is determined).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tspsim.core.errors import TspsimError
from tspsim.engine.costs import compute_seconds
from tspsim.explore import calibrate_params as cp
from tspsim.explore.calibrate import DETERMINED_RMS, HUBER_SCALE, MAX_VIF, FittedValue
from tspsim.explore.fit import identifiable, least_squares
from tspsim.opgraph import Op
from tspsim.schedules.context import ATTN_BWD_FACTOR, attention_fwd_flops, gemm_flops
from tspsim.spec.microbench import Kernel
from tspsim.spec.topology import Topology


@dataclass(frozen=True)
class KernelFit:
    """One measured kernel: measured, the model on BASE, the model fitted."""

    kernel: Kernel
    """The micro-benchmark row."""
    before_s: float
    """BASE's time."""
    after_s: float
    """Fitted time."""

    @property
    def error_before(self) -> float:
        """before / measured − 1."""
        return self.before_s / (self.kernel.time_us * 1e-6) - 1

    @property
    def error_after(self) -> float:
        """after / measured − 1."""
        return self.after_s / (self.kernel.time_us * 1e-6) - 1


@dataclass(frozen=True)
class ComputeCalibration:
    """What the compute fit found."""

    values: tuple[FittedValue, ...]
    """Every GPU parameter, determined or not."""
    keys: dict[str, float]
    """``gpu.key`` → fitted value (rounded, as written) for the determined parameters."""
    rows: tuple[KernelFit, ...]
    """The before / after table."""
    evaluations: int
    """Model evaluations used."""


def kernel_op(k: Kernel) -> Op:
    """The compute op of a measured kernel, counted as the schedules count it."""
    s = k.dtype_bytes
    if k.kind == "gemm":
        m, n, kk, b = k.shape
        return Op(0, 0, "compute", "gemm", k.label, flops=gemm_flops(m, n, kk) * b,
                  hbm_bytes=float(m * kk + kk * n + m * n) * b * s, shape=(m, n, kk))
    b, h, seq, d, causal = k.shape
    fwd = attention_fwd_flops(b, seq, seq, h, d, 0.5 if causal else 1.0)
    tensor = float(b * seq * h * d * s)
    if k.kind == "attention_fwd":
        return Op(0, 0, "compute", k.kind, k.label, flops=fwd, hbm_bytes=4 * tensor, shape=(b, seq, seq, h, d))
    return Op(0, 0, "compute", k.kind, k.label, flops=ATTN_BWD_FACTOR * fwd, hbm_bytes=8 * tensor,
              shape=(b, seq, seq, h, d))


class _Model:
    def __init__(self, topo: Topology, params: tuple[cp.FitParameter, ...], kernels: tuple[Kernel, ...]) -> None:
        self.topo = topo
        self.params = params
        self.ops = [kernel_op(k) for k in kernels]
        self.measured = np.array([k.time_us * 1e-6 for k in kernels])
        self.weight = 1 / math.sqrt(len(kernels))

    def values(self, x: np.ndarray) -> tuple[float, ...]:
        return tuple(math.exp(v) if p.scale else float(v) for p, v in zip(self.params, x))

    def times(self, x: np.ndarray) -> np.ndarray:
        topo = cp.with_values(self.topo, cp.key_values(self.topo, self.params, self.values(x)))
        return np.array([compute_seconds(op, topo.gpu) for op in self.ops])

    def log_errors(self, x: np.ndarray) -> np.ndarray:
        return self.weight * np.log(self.times(x) / self.measured)

    def robust(self, x: np.ndarray) -> np.ndarray:
        e = np.log(self.times(x) / self.measured)
        d = HUBER_SCALE
        return self.weight * np.sign(e) * np.sqrt(2 * d * d * (np.sqrt(1 + (e / d) ** 2) - 1))


def calibrate_compute(base: Topology, kernels: tuple[Kernel, ...]) -> ComputeCalibration:
    """Fit BASE's GPU parameters to measured kernels (module docstring).

    Raises:
        TspsimError: the kernels determine no parameter.
    """
    params = cp.COMPUTE_PARAMETERS
    start = tuple(cp.start_value(base, p) for p in params)
    x0 = np.array([math.log(v) if p.scale else v for p, v in zip(params, start)])
    everything = _Model(base, params, kernels)
    lo = np.array([math.log(p.lo) if p.scale else p.lo for p in params])
    hi = np.array([math.log(p.hi) if p.scale else p.hi for p in params])
    mask = identifiable(everything.log_errors, x0, lo, hi, everything.weight * math.sqrt(len(kernels)),
                        DETERMINED_RMS, MAX_VIF)
    free = tuple(p for p, m in zip(params, mask) if m)
    if not free:
        raise TspsimError("the micro-benchmarks determine none of the GPU parameters; add large GEMMs, small GEMMs "
                          "and attention rows")
    sel = np.array(mask)
    model = _Model(base, free, kernels)
    fit = least_squares(model.robust, x0[sel], lo[sel], hi[sel])
    fitted = dict(zip(free, model.values(fit.x)))
    values = []
    for p, s in zip(params, start):
        v = fitted.get(p, s)
        before, lo_s, hi_s = cp.shown_value(base, p, s)
        values.append(FittedValue(p, p in fitted, s, v, (before, cp.shown_value(base, p, v)[0], lo_s, hi_s)))
    keys = {k: cp.round_sig(v) for k, v in cp.key_values(base, free, tuple(fitted[p] for p in free)).items()}
    after = cp.with_values(base, keys)
    rows = tuple(KernelFit(k, compute_seconds(op, base.gpu), compute_seconds(op, after.gpu))
                 for k, op in zip(kernels, everything.ops))
    return ComputeCalibration(tuple(values), keys, rows, fit.evaluations)

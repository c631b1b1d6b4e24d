"""A small deterministic bounded least-squares solver (no SciPy): projected Levenberg–Marquardt + Nelder–Mead.

Minimises ½·Σ r_i(x)² over a box lo ≤ x ≤ hi:

1. **Levenberg–Marquardt** (Levenberg 1944, Marquardt 1963; Nocedal & Wright, *Numerical Optimization*
   §10.3) with a forward-difference Jacobian: solve (JᵀJ + λ·diag(JᵀJ)) δ = −Jᵀr over the free
   coordinates, clip x + δ into the box, accept if the cost falls (λ ÷ 3) else retry (λ × 4). A coordinate at
   a bound whose gradient pushes outward is held for that step (a projected active set, as in Kanzow,
   Yamashita & Fukushima 2004), so a parameter that starts at a bound (a zero latency) can still leave it.
2. **Nelder–Mead** (Nelder & Mead 1965; Lagarias et al. 1998), restarted from its best point with a
   fresh simplex while that still gains: the residuals of a policy that picks the fastest algorithm are
   continuous but kinked where its choice switches, and there a gradient step stalls while a simplex
   still finds its way (the restarts also undo a simplex that collapsed early, Kelley 1999).

Everything is deterministic: the same residual function and start give the same answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FitResult:
    """Where the solver stopped."""

    x: np.ndarray
    """Best point found (inside the box)."""
    cost: float
    """½·Σ r² at ``x``."""
    start_cost: float
    """½·Σ r² at the start."""
    evaluations: int
    """Residual evaluations used."""
    iterations: int
    """Levenberg–Marquardt iterations."""


class _Counted:
    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.asarray(self.fn(x), dtype=np.float64)


def _cost(r: np.ndarray) -> float:
    return 0.5 * float(r @ r)


def jacobian(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, r: np.ndarray, lo: np.ndarray,
             hi: np.ndarray, rel_step: float = 1e-4) -> np.ndarray:
    """Forward-difference Jacobian, stepping inward at the upper bound."""
    J = np.empty((len(r), len(x)))
    for j in range(len(x)):
        h = rel_step * (hi[j] - lo[j])
        if x[j] + h > hi[j]:
            h = -h
        xp = x.copy()
        xp[j] += h
        J[:, j] = (fn(xp) - r) / h
    return J


def least_squares(fn: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                  max_iter: int = 20, budget: int = 3000) -> FitResult:
    """Minimise ½·Σ fn(x)² over lo ≤ x ≤ hi from ``x0`` (module docstring).

    Args:
        fn: residuals of a point (a fixed-length vector).
        x0: start (clipped into the box).
        lo: lower bounds.
        hi: upper bounds (> lo).
        max_iter: Levenberg–Marquardt iterations at most.
        budget: residual evaluations at most (Levenberg–Marquardt, then Nelder–Mead restarts with the rest).
    """
    f = _Counted(fn)
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    x = np.clip(np.asarray(x0, dtype=np.float64), lo, hi)
    r = f(x)
    cost = start = _cost(r)
    lam = 1e-3
    it = 0
    span = hi - lo
    for it in range(1, max_iter + 1):  # noqa: B007 - reported
        J = jacobian(f, x, r, lo, hi)
        g = J.T @ r
        at_lo = x <= lo + 1e-12 * span
        at_hi = x >= hi - 1e-12 * span
        free = ~((at_lo & (g > 0)) | (at_hi & (g < 0)))
        if not free.any():
            break
        A = J[:, free].T @ J[:, free]
        d = np.maximum(np.diag(A), 1e-12 * max(float(np.diag(A).max()), 1e-30))
        improved = False
        while lam < 1e12:
            try:
                step = np.linalg.solve(A + lam * np.diag(d), -g[free])
            except np.linalg.LinAlgError:
                lam *= 4
                continue
            trial = x.copy()
            trial[free] += step
            trial = np.clip(trial, lo, hi)
            r_try = f(trial)
            c_try = _cost(r_try)
            if c_try < cost:
                rel = (cost - c_try) / max(cost, 1e-300)
                x, r, cost = trial, r_try, c_try
                lam = max(lam / 3, 1e-9)
                improved = True
                break
            lam *= 4
        if not improved or rel < 1e-10:
            break
    if budget > f.calls:
        x, cost = _nelder_mead_restarts(lambda z: _cost(f(z)), x, cost, lo, hi, budget - f.calls)
    return FitResult(x, cost, start, f.calls, it)


def _simplex(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, scale: float) -> list[np.ndarray]:
    pts = [x.copy()]
    for j in range(len(x)):
        p = x.copy()
        h = scale * (hi[j] - lo[j])
        p[j] = p[j] + h if p[j] + h <= hi[j] else p[j] - h
        pts.append(p)
    return pts


def nelder_mead(f: Callable[[np.ndarray], float], x: np.ndarray, lo: np.ndarray, hi: np.ndarray, budget: int,
                scale: float = 0.1) -> tuple[np.ndarray, float, int]:
    """Nelder–Mead (1965): reflect 1, expand 2, contract ½, shrink ½, every trial clipped into the box.

    Stops when the simplex is smaller than 10⁻⁷ of the box or after ``budget`` evaluations. Returns (best
    point, its value, evaluations).
    """
    span = hi - lo
    pts = _simplex(x, lo, hi, scale)
    vals = [f(p) for p in pts]
    used = len(pts)
    while used < budget:
        order = np.argsort(vals, kind="stable")
        pts = [pts[i] for i in order]
        vals = [vals[i] for i in order]
        if max(float(np.max(np.abs(p - pts[0]) / span)) for p in pts[1:]) < 1e-7:
            break
        centre = np.mean(pts[:-1], axis=0)
        xr = np.clip(2 * centre - pts[-1], lo, hi)
        fr = f(xr)
        used += 1
        if fr < vals[0]:
            xe = np.clip(3 * centre - 2 * pts[-1], lo, hi)
            fe = f(xe)
            used += 1
            pts[-1], vals[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < vals[-2]:
            pts[-1], vals[-1] = xr, fr
        else:
            xc = np.clip(centre + 0.5 * (pts[-1] - centre), lo, hi)
            fc = f(xc)
            used += 1
            if fc < vals[-1]:
                pts[-1], vals[-1] = xc, fc
            else:
                for i in range(1, len(pts)):
                    pts[i] = pts[0] + 0.5 * (pts[i] - pts[0])
                    vals[i] = f(pts[i])
                used += len(pts) - 1
    i = int(np.argmin(vals))
    return pts[i], vals[i], used


def _nelder_mead_restarts(f: Callable[[np.ndarray], float], x: np.ndarray, cost: float, lo: np.ndarray,
                          hi: np.ndarray, budget: int) -> tuple[np.ndarray, float]:
    """Nelder–Mead restarted from its best point (a collapsed simplex stalls on kinks).

    The simplex spans 10 % of the box, a third of that after a restart that gains nothing, down to 1 %.
    """
    scale = 0.1
    while budget > len(x) + 1 and scale >= 0.01:
        y, c, used = nelder_mead(f, x, lo, hi, budget, scale)
        budget -= used
        if c < cost * (1 - 1e-9):
            x, cost = y, c
        else:
            scale /= 3
    return x, cost


def identifiable(fn: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, lo: np.ndarray, hi: np.ndarray, norm: float,
                 min_rms: float, max_vif: float) -> list[bool]:
    """Which coordinates of ``x0`` the residuals ``fn`` determine, in priority order (Gram–Schmidt).

    Column j of the Jacobian (a forward difference of 1 % of the box), scaled to the whole range of
    coordinate j, is orthogonalised against the columns already kept. Coordinate j is kept when what
    remains moves the RMS residual (``‖col‖ / norm``) by at least ``min_rms`` and is at least
    1/√``max_vif`` of its own column (variance inflation ≤ ``max_vif``: its effect is not mostly that of
    coordinates kept before it).
    """
    r0 = fn(x0)
    chosen: list[np.ndarray] = []
    out = []
    for j in range(len(x0)):
        h = 0.01 * (hi[j] - lo[j])
        xp = x0.copy()
        xp[j] = x0[j] + h if x0[j] + h <= hi[j] else x0[j] - h
        col = (fn(xp) - r0) / (xp[j] - x0[j]) * (hi[j] - lo[j])
        full = float(np.linalg.norm(col))
        for q in chosen:
            col = col - (col @ q) * q
        size = float(np.linalg.norm(col))
        keep = size / norm >= min_rms and size >= full / math.sqrt(max_vif)
        if keep:
            chosen.append(col / size)
        out.append(keep)
    return out

"""``tspsim calibrate``: fit a topology's communication parameters to measured nccl-tests / rccl-tests logs.

For every logged size the model predicts the collective's time (:mod:`tspsim.explore.measured`: the
policy's choice, or the algorithm the log forced, alone on the network). The fit minimises the robust
sum of squared log-time errors

    Σ_rows w · ρ(ln(t_model / t_measured)),   ρ = pseudo-Huber with scale 10 %,  w = 1 / rows of its log

over the bounded parameters of :mod:`tspsim.explore.calibrate_params` (no per-size table: one value per
physical quantity). Log-time makes a 20 µs and a 20 ms row count alike; the pseudo-Huber loss (Charbonnier
et al. 1994) keeps a row the model cannot explain (an algorithm it lacks) from dragging every parameter;
each log counts equally whatever its number of sizes.

Only parameters the logs **determine** are fitted: the Jacobian of the log errors at BASE, column j scaled
to parameter j's whole plausible range, is orthogonalised in priority order
(:data:`~tspsim.explore.calibrate_params.PARAMETERS`, network first); a parameter is kept at BASE's value
and reported as not determined when its remaining column moves the RMS log error by less than 1 % across
its whole range, or is less than 1/√5 of its own column (variance inflation above 5: its effect is
mostly that of parameters already chosen). Examples: the node fabric's efficiency from a NIC-bound
multi-node log; NIC vs collective efficiency without a sendrecv log (only their product shows); the node
fabric's latencies from a log at one node count, where they add to the network's in fixed proportion.
The optimiser is :mod:`tspsim.explore.fit`.

The result's before / after columns are **replays** (:func:`tspsim.simulate.collective.simulate_collective`)
on BASE and on the fitted values rounded to 4 significant digits, exactly what the written YAML holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tspsim.core.errors import TspsimError
from tspsim.explore import calibrate_params as cp
from tspsim.explore.fit import identifiable, least_squares
from tspsim.explore.measured import Hosted, Observation, Predictor, host, host_topology, replay
from tspsim.spec.collective_log import CollectiveLog
from tspsim.spec.topology import Topology

HUBER_SCALE = 0.10
"""Pseudo-Huber scale of the log-time error (10 %): errors well below it count as squares, above as |e|."""
DETERMINED_RMS = 0.01
"""A parameter is determined when moving it across its plausible range changes the RMS log error by ≥ 1 % …"""
MAX_VIF = 5.0
"""… and its effect is not mostly that of parameters already chosen: variance inflation factor ≤ 5, the
stricter of the textbook limits of tolerable collinearity ("a VIF value that exceeds 5 or 10 indicates a
problematic amount", James, Witten, Hastie & Tibshirani, *An Introduction to Statistical Learning*, §3.3.3):
a fit extrapolates to other node counts and sizes, so only what is clearly determined is fitted."""


@dataclass(frozen=True)
class FittedValue:
    """A parameter before and after the fit."""

    parameter: cp.FitParameter
    """What was fitted."""
    determined: bool
    """False: the logs do not constrain it; it keeps BASE's value."""
    start: float
    """BASE's value (1 for a scale)."""
    value: float
    """Fitted value (= ``start`` when not determined)."""
    shown: tuple[float, float, float, float]
    """(before, after, lo, hi) in the units tables show (a scale as its first key's value)."""

    @property
    def at_bound(self) -> bool:
        """The fit stopped at the edge of the plausible range (a mechanism the model lacks, or a fault)."""
        p = self.parameter
        return self.determined and min(self.value - p.lo, p.hi - self.value) <= 1e-3 * (p.hi - p.lo)


@dataclass(frozen=True)
class RowFit:
    """One logged size: measured, replayed on BASE, replayed on the fitted topology."""

    log: str
    """Log file name."""
    nbytes: int
    """Message size."""
    measured_s: float
    """Measured time."""
    before_s: float
    """BASE's replayed time."""
    after_s: float
    """Fitted topology's replayed time."""
    choice: str
    """Algorithm / protocol of the fitted replay."""

    @property
    def error_before(self) -> float:
        """before / measured − 1."""
        return self.before_s / self.measured_s - 1

    @property
    def error_after(self) -> float:
        """after / measured − 1."""
        return self.after_s / self.measured_s - 1


@dataclass(frozen=True)
class Calibration:
    """Everything a calibration found."""

    base: Topology
    """BASE."""
    hosted: tuple[Hosted, ...]
    """The logs as placed on BASE."""
    values: tuple[FittedValue, ...]
    """Every applicable parameter, determined or not."""
    keys: dict[str, float]
    """``fabric.key`` → fitted value (rounded, as written) for the determined parameters."""
    rows: tuple[RowFit, ...]
    """The before / after table."""
    evaluations: int
    """Model evaluations the fit used."""
    fitted: Topology
    """BASE with ``keys`` (the whole cluster)."""

    @property
    def notes(self) -> tuple[str, ...]:
        """Assumptions made while placing the logs."""
        return tuple(n for h in self.hosted for n in h.notes)


def error_factor(model_s: float, measured_s: float) -> float:
    """How far apart two times are, symmetric: max(model / measured, measured / model) − 1 (2× off = 100 %).

    The log-time error the fit minimises, as a percentage: exp(|ln(model / measured)|) − 1.
    """
    return math.exp(abs(math.log(model_s / measured_s))) - 1


def mean_error(rows: list[RowFit] | tuple[RowFit, ...], after: bool) -> float:
    """Mean :func:`error_factor` of the model's times over ``rows`` (BASE's, or the fitted one's)."""
    errs = [error_factor(r.after_s if after else r.before_s, r.measured_s) for r in rows]
    return sum(errs) / len(errs) if errs else 0.0


class _Model:
    """Log-time errors of the observations as a function of the internal parameter vector."""

    def __init__(self, topo: Topology, params: tuple[cp.FitParameter, ...], obs: list[Observation],
                 weights: np.ndarray) -> None:
        self.topo = topo
        self.params = params
        self.obs = obs
        self.weights = weights
        self.measured = np.array([o.measured_s for o in obs])
        self.predictor = Predictor(topo, obs)

    def values(self, x: np.ndarray) -> tuple[float, ...]:
        return tuple(math.exp(v) if p.scale else float(v) for p, v in zip(self.params, x))

    def topology(self, x: np.ndarray) -> Topology:
        return cp.with_values(self.topo, cp.key_values(self.topo, self.params, self.values(x)))

    def log_errors(self, x: np.ndarray) -> np.ndarray:
        return self.weights * np.log(self.predictor.predict_s(self.topology(x)) / self.measured)

    def robust(self, x: np.ndarray) -> np.ndarray:
        e = np.log(self.predictor.predict_s(self.topology(x)) / self.measured)
        d = HUBER_SCALE
        rho = 2 * d * d * (np.sqrt(1 + (e / d) ** 2) - 1)
        return self.weights * np.sign(e) * np.sqrt(rho)


def _bounds(params: tuple[cp.FitParameter, ...]) -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([math.log(p.lo) if p.scale else p.lo for p in params])
    hi = np.array([math.log(p.hi) if p.scale else p.hi for p in params])
    return lo, hi


def determined(model: _Model, x0: np.ndarray) -> list[bool]:
    """Which parameters the observations determine (module docstring)."""
    lo, hi = _bounds(model.params)
    norm = float(np.sqrt(np.sum(model.weights ** 2)))
    return identifiable(model.log_errors, x0, lo, hi, norm, DETERMINED_RMS, MAX_VIF)


def calibrate(base: Topology, logs: list[CollectiveLog], algo: str = "") -> Calibration:
    """Fit BASE's communication parameters to ``logs`` (module docstring).

    Raises:
        ConfigError: a log BASE cannot host.
        TspsimError: the logs determine no parameter.
    """
    hosted = tuple(host(log, base, algo) for log in logs)
    small = host_topology(base, max(h.nodes for h in hosted))
    per_log = [h.observations() for h in hosted]
    obs = [o for rows in per_log for o in rows]
    weights = np.array([1 / math.sqrt(len(rows)) for rows in per_log for _ in rows])
    params = tuple(p for p in cp.PARAMETERS if cp.applicable(small, p))
    start = tuple(cp.start_value(small, p) for p in params)
    x0 = np.array([math.log(v) if p.scale else v for p, v in zip(params, start)])
    everything = _Model(small, params, obs, weights)
    mask = determined(everything, x0)
    free = tuple(p for p, m in zip(params, mask) if m)
    if not free:
        raise TspsimError("these logs determine none of the fitted parameters (every one moves the model's times by "
                          "less than 1% across its plausible range); give logs that span more sizes or nodes")
    model = _Model(small, free, obs, weights)
    lo, hi = _bounds(free)
    fit = least_squares(model.robust, x0[np.array(mask)], lo, hi)
    fitted_free = dict(zip(free, model.values(fit.x)))
    values = []
    for p, s in zip(params, start):
        v = fitted_free.get(p, s)
        before, lo_s, hi_s = cp.shown_value(small, p, s)
        after = cp.shown_value(small, p, v)[0]
        values.append(FittedValue(p, p in fitted_free, s, v, (before, after, lo_s, hi_s)))
    new = cp.key_values(small, free, tuple(fitted_free[p] for p in free))
    keys = {k: cp.round_sig(v) for k, v in new.items()}
    before = replay(small, obs)
    after = replay(cp.with_values(small, keys), obs)
    rows = tuple(RowFit(o.log, o.nbytes, o.measured_s, b["time_s"], a["time_s"], f"{a['algorithm']}/{a['protocol']}")
                 for o, b, a in zip(obs, before, after))
    return Calibration(base, hosted, tuple(values), keys, rows, fit.evaluations, cp.with_values(base, keys))

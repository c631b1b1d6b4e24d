"""The planner behind ``tspsim plan``: the fastest schedule, degrees and micro-batch that fit.

:func:`candidate_points` enumerates configurations for one topology, model and sequence length:

* every registered schedule that takes a degree, with D ∈ divisors of the GPUs per node (D = 1 — pure
  data parallelism — once, as ``tp D=1``, since every schedule degenerates to it);
* ``tp+sp`` with T ∈ divisors of the GPUs per node (T ≥ 2) and Σ ≥ 2 such that the T×Σ replica fills
  whole nodes (T·Σ a multiple of the GPUs per node that divides the GPUs used);
* micro-batch sizes 1, 2, 4, … up to ``batch_max``.

They run through the sweep machinery (:mod:`tspsim.sweep`: same validation, cache and runners);
:func:`rank_results` drops invalid points and those that do not fit in HBM (``oom``), ranks the rest
by tokens/s, and :func:`limiter` / :func:`best_reason` explain in one line what limits a
configuration: memory, exposed communication or compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tspsim.simulate import Point
from tspsim.sweep import Outcome, entry_label, is_oom, throughput

Entry = dict[str, Any]

COMM_LIMIT = 0.20
"""A configuration is limited by exposed communication when it is at least this fraction of the step."""
MEMORY_LIMIT = 0.90
"""A configuration is limited by memory when its peak is at least this fraction of HBM."""


def divisors(n: int) -> list[int]:
    """Divisors of ``n`` in increasing order."""
    return [d for d in range(1, n + 1) if n % d == 0]


def batch_sizes(batch_max: int) -> list[int]:
    """1, 2, 4, … up to ``batch_max`` (powers of two)."""
    out, b = [], 1
    while b <= batch_max:
        out.append(b)
        b *= 2
    return out


def candidate_points(topology: str, model: str = "zyphra-7b", seq: int | None = None, mode: str = "train",
                     gpus: int | None = None, batch_max: int = 8,
                     options: tuple[tuple[str, Any], ...] = ()) -> list[Point]:
    """Every configuration the planner considers (see the module docstring), not yet validated.

    Raises:
        TspsimError: unknown topology or model, or ``gpus`` larger than the topology.
    """
    from tspsim.errors import TspsimError
    from tspsim.model import load_model
    from tspsim.schedules import SCHEDULES
    from tspsim.topology import load_topology

    topo = load_topology(topology)
    cfg = load_model(model)
    world = gpus or topo.world_size
    if world > topo.world_size:
        raise TspsimError(f"--gpus {world} exceeds {topo.name} ({topo.world_size} GPUs)")
    seq_len = seq if seq is not None else cfg.default_seq
    g = min(topo.gpus_per_node, world)
    names = SCHEDULES.names()
    dp_only = "tp" if "tp" in names else (names[0] if names else "")
    shapes: list[tuple[str, int | None, int | None, int | None]] = []
    for name in names:
        if name == "tp+sp":
            replicas = [r for r in range(g, world + 1, g) if world % r == 0]
            for t in divisors(g):
                for r in replicas:
                    if t >= 2 and r % t == 0 and r // t >= 2:
                        shapes.append((name, None, t, r // t))
        else:
            shapes += [(name, d, None, None) for d in divisors(g) if d > 1 or name == dp_only]
    return [Point(name, topology, model, mode, seq_len, batch, d, t, s, gpus, options=options)
            for name, d, t, s in shapes for batch in batch_sizes(batch_max)]


# ---------------------------------------------------------------------------------- explanations
def _frac(num: float | None, den: float | None) -> float | None:
    if num is None or not den:
        return None
    return num / den


def limiter(entry: Entry) -> tuple[str, str]:
    """(kind, one-line explanation ``"<kind>: <facts>"``) of what limits a configuration.

    ``exposed communication`` when communication not hidden behind compute is ≥ 20 % of the step,
    else ``memory`` when the peak is ≥ 90 % of HBM, else ``compute``. Uses exposed_comm_s,
    step_time_s, peak_memory_gb and hbm_gb (kind ``unknown`` when they are missing).
    """
    kind, facts = _limit(entry)
    return kind, f"{kind}: {facts}"


def _limit(entry: Entry) -> tuple[str, str]:
    step, exposed = entry.get("step_time_s"), entry.get("exposed_comm_s")
    peak, hbm = entry.get("peak_memory_gb"), entry.get("hbm_gb")
    comm = _frac(exposed, step)
    mem = _frac(peak, hbm)
    if comm is None and mem is None:
        return "unknown", "no communication or memory metrics in this entry"
    if comm is not None and comm >= COMM_LIMIT:
        return ("exposed communication", f"{exposed:.3g} s of the {step:.3g} s step ({comm:.0%}) is "
                                         "communication not hidden behind compute")
    if mem is not None and mem >= MEMORY_LIMIT:
        return "memory", (f"peak {peak:.1f} GB of {hbm:g} GB HBM ({mem:.0%}) leaves no room for a larger "
                          "micro-batch or a smaller degree")
    parts = []
    if comm is not None:
        parts.append(f"exposed communication is only {comm:.0%} of the {step:.3g} s step")
    if mem is not None:
        parts.append(f"memory {peak:.1f} of {hbm:g} GB")
    return "compute", ", ".join(parts)


def best_reason(best: Entry, oom: Sequence[Entry]) -> str:
    """Why ``best`` wins and what limits it, in one line.

    When a faster configuration exists but does not fit in HBM, memory is what limits the choice;
    otherwise the best configuration's own :func:`limiter`.
    """
    tps = throughput(best) or 0.0
    faster = [e for e in oom if (throughput(e) or 0.0) > tps]
    kind, facts = _limit(best)
    if faster:
        f = max(faster, key=lambda e: (throughput(e) or 0.0, -(e.get("peak_memory_gb") or 0.0)))
        gain = (throughput(f) or 0.0) / tps - 1 if tps > 0 else 0.0
        return (f"limited by memory: the faster {entry_label(f)} at batch {f.get('batch')} (+{gain:.0%} tokens/s) "
                f"needs {f.get('peak_memory_gb', 0):.1f} GB of {f.get('hbm_gb', 0):g} GB HBM; this choice "
                f"is {kind}-bound ({facts})")
    return f"limited by {kind}: {facts}"


# ---------------------------------------------------------------------------------- ranking
@dataclass
class PlanResult:
    """The planner's answer."""

    ranked: list[Entry] = field(default_factory=list)
    """Configurations that fit, fastest first, each with ``rank`` (1 = best) and ``reason``."""
    oom: list[Entry] = field(default_factory=list)
    """Configurations that do not fit in HBM, fastest first."""
    invalid: list[Outcome] = field(default_factory=list)
    """Points whose degrees do not fit the model, sequence or topology."""
    errors: list[Outcome] = field(default_factory=list)
    """Points that failed unexpectedly."""
    reason: str = ""
    """One line: why the best configuration wins and what limits it."""

    @property
    def best(self) -> Entry | None:
        """The fastest configuration that fits (None if nothing fits)."""
        return self.ranked[0] if self.ranked else None


def _order(e: Entry) -> tuple[Any, ...]:
    return (-(throughput(e) or 0.0), e.get("peak_memory_gb") or 0.0, entry_label(e), e.get("batch") or 0)


def rank_results(outcomes: Sequence[Outcome]) -> PlanResult:
    """Drop invalid and OOM points, rank the rest by tokens/s (ties: less memory first)."""
    res = PlanResult()
    fits: list[Entry] = []
    for o in outcomes:
        if o.status == "invalid":
            res.invalid.append(o)
        elif o.status == "error":
            res.errors.append(o)
        elif o.status == "ok" and o.entry is not None:
            (res.oom if is_oom(o.entry) else fits).append(dict(o.entry))
    fits.sort(key=_order)
    res.oom.sort(key=_order)
    for rank, e in enumerate(fits, 1):
        e["rank"] = rank
        e["reason"] = limiter(e)[1]
    res.ranked = fits
    if fits:
        res.reason = best_reason(fits[0], res.oom)
    return res

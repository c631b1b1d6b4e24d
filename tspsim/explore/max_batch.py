"""The max-batch search: the largest batch whose simulated peak memory fits in HBM (inference modes).

Every probe is a full simulation of the step at that batch size
(:func:`tspsim.simulate.inference.step_peak_bytes`): the prefill step, the final decode step, or the
larger of the two for ``generate``. The search (:func:`max_batch`) first probes the batch where the
peak would reach HBM if memory beyond the static part (parameters, gradients, optimizer state, reserve:
read from the graph's static memory ops) grew linearly from the run's own batch (:func:`linear_guess`)
and the batch one step above it — two probes when memory is linear in B — then, if both fit, the batch the
slope between those two gives and the one above it, then doubles and bisects; ``satp-*`` probe multiples
of D.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tspsim.analysis.metrics import peak_memory
from tspsim.explore.static_memory import static_bytes
from tspsim.simulate import GraphMemo, Point, RunResult, StepProgress, simulate
from tspsim.simulate.inference import step_peak_bytes
from tspsim.spec.loader import SpecLoader
from tspsim.spec.workload import INFERENCE_MODES

MAX_BATCH_LIMIT = 1 << 20
"""The max-batch search stops doubling here."""


def max_batch(peak: Callable[[int], float], capacity: float, step: int = 1, start: int | None = None,
              known: dict[int, float] | None = None, limit: int = MAX_BATCH_LIMIT, guess: int | None = None) -> int:
    """Largest multiple of ``step`` whose ``peak(b)`` (bytes) fits in ``capacity`` (0 if none fits).

    Doubling from ``start`` (default ``step``) until a batch does not fit — halving instead if ``start``
    does not — then bisection of the bracket [fits, does not fit]. The bisection splits the bracket
    where a straight line through the two bracketing peaks meets ``capacity`` (memory grows about
    linearly with B, so this usually closes the bracket in two probes) and at the midpoint when that
    did not halve the bracket. ``known`` holds peaks already simulated (e.g. the run's own batch).
    Assumes ``peak`` is non-decreasing in B. ``guess`` (e.g. from :func:`linear_guess`) is probed first
    with the batch one step above it: when the first fits and the second does not, that is the answer
    in two probes. When both fit, the line through those two peaks (the local bytes per step of batch,
    which a guess extrapolated from a far smaller batch misses when memory is not exactly linear) gives a
    second guess, probed with the batch above it; otherwise the search goes on from the guess. A start
    that does not fit is bisected against the largest batch already known to fit below it (halving only
    when there is none). Every path returns the same batch for a non-decreasing ``peak``; only the probes
    differ.
    """
    seen: dict[int, float] = dict(known or {})

    def fits(b: int) -> bool:
        if b not in seen:
            seen[b] = peak(b)
        return seen[b] <= capacity

    if guess is not None and step <= guess <= limit:
        g = guess // step * step
        if fits(g):
            if g + step > limit or not fits(g + step):
                return g
            start = g + step
            again = _reguess(g, seen[g], seen[g + step], step, capacity, limit)
            if again is not None:       # the two probes' own slope, once: usually the answer in two more
                if fits(again):
                    if again + step > limit or not fits(again + step):
                        return again
                    start = again + step
                else:
                    start = again
        else:
            start = g

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
        lo = max((x for x, top in seen.items() if step <= x < hi and x % step == 0 and top <= capacity), default=0)
        while not lo:                   # no batch known to fit below: halve until one does
            lo = hi // 2 // step * step
            if lo < step:
                return 0
            if not fits(lo):
                hi, lo = lo, 0
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


def _reguess(g: int, at_g: float, above: float, step: int, capacity: float, limit: int) -> int | None:
    """Where the line through (g, ``at_g``) and (g + step, ``above``) meets ``capacity``, or None.

    The batch is rounded down to a multiple of ``step``; None when the peak did not grow between the two batches or
    the batch is not above g + step and at most ``limit``.
    """
    slope = (above - at_g) / step
    if slope <= 0:
        return None
    b = int(g + step + (capacity - above) / slope) // step * step
    return b if g + step < b <= limit else None


def linear_guess(static_bytes: float, own_bytes: float, own_batch: int, capacity: float) -> int | None:
    """The batch at which the peak reaches ``capacity`` if memory beyond the static part grows linearly in B.

    ``static_bytes`` (parameters, reserve: independent of B) and the peak ``own_bytes`` at ``own_batch``
    give bytes per sequence (activations, KV cache, buffers); None when that is not positive.
    """
    per = (own_bytes - static_bytes) / own_batch
    if per <= 0 or capacity <= static_bytes:
        return None
    return max(1, int((capacity - static_bytes) / per))


def batch_step(schedule: str, mode: str, degree: int) -> int:
    """Batch sizes the layout can take: multiples of D for ``satp-batch`` (and ``satp-seq`` decoding)."""
    return degree if schedule == "satp-batch" or (schedule == "satp-seq" and mode != "prefill") else 1


def search_max_batch(result: RunResult, fold: bool = True, on_probe: Callable[[int, float], None] | None = None,
                     graphs: GraphMemo | None = None) -> tuple[int, int]:
    """(max batch, simpy events spent) for a simulated inference point; its own batch is not simulated again.

    ``on_probe(batch, peak bytes)`` is called after each probe (progress); ``graphs`` reuses prefill and decode
    step graphs probed for an earlier point (:func:`~tspsim.simulate.inference.step_peak_bytes`).
    """
    layout, workload = result.layout, result.workload
    events = 0

    def peak(b: int) -> float:
        nonlocal events
        top, ev = step_peak_bytes(result.topology, result.model, layout, workload, result.assumptions, b, fold,
                                  graphs)
        events += ev
        if on_probe is not None:
            on_probe(b, top)
        return top

    own = max(peak_memory(tl)[0] for tl in result.timelines.values())
    step = batch_step(layout.schedule, workload.mode, layout.tp)
    capacity = result.topology.gpu.hbm_GB * 1e9
    static = max((sum(per.values()) for tl in result.timelines.values() for per in static_bytes(tl.graph).values()),
                 default=0)
    found = max_batch(peak, capacity, step, start=workload.batch, known={workload.batch: own},
                      guess=linear_guess(static, own, workload.batch, capacity))
    return found, events


def simulate_with_max_batch(point: Point, fold: bool = True, record_links: bool = False,
                            progress: StepProgress | None = None, specs: SpecLoader | None = None,
                            graphs: GraphMemo | None = None) -> RunResult:
    """:func:`tspsim.simulate.simulate`, then the max-batch search when ``point.search_max_batch`` asks for it.

    The entry's ``max_batch`` is filled in, and its ``sim_events`` and ``sim_wall_s`` include the probes.
    ``progress`` hears of every simulated step, then of every probe (with a total of 0: unknown). ``specs``
    reads the topology, model and stack files (once per loader, see :class:`~tspsim.spec.loader.SpecLoader`);
    ``graphs`` reuses graphs across points (:mod:`tspsim.simulate.graph_memo`).
    """
    result = simulate(point, fold=fold, record_links=record_links, progress=progress, specs=specs, graphs=graphs)
    if point.mode in INFERENCE_MODES and point.search_max_batch:
        t0 = time.perf_counter()
        probes = 0

        def on_probe(batch: int, peak_bytes: float) -> None:
            nonlocal probes
            probes += 1
            if progress is not None:
                progress(probes, 0, f"max-batch probe B={batch}: peak {peak_bytes / 1e9:.1f} GB")

        found, events = search_max_batch(result, fold, on_probe, graphs)
        result.entry["max_batch"] = found
        result.entry["sim_events"] += events
        result.entry["sim_wall_s"] += time.perf_counter() - t0
    return result


__all__ = ["MAX_BATCH_LIMIT", "batch_step", "linear_guess", "max_batch", "search_max_batch", "simulate_with_max_batch"]

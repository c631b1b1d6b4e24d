"""Branch and bound for the training planner: do not simulate what provably cannot be the best.

:func:`execute_bounded` runs a prepared plan in rounds of 4, 8, 16, … configurations, cheapest first (they are the
high-data-parallel layouts that usually win, so a good incumbent is known early). Before a configuration is
submitted, once some simulated configuration fits in HBM with tokens/s *best*, its upper bound of tokens/s
(:mod:`tspsim.explore.step_bound`: tokens per step over the busiest GPU's compute on an idle GPU) is compared with
*best*: when it is lower — for the configuration and for each ZeRO variant the planner would retry it with if it
did not fit (:func:`tspsim.explore.planner.zero_variants`) — none of them can be the best, so it is not simulated:
its outcome is ``dominated`` with a note giving both numbers. The best configuration, its reason, and every
simulated entry are those of the exhaustive search; only dominated configurations are missing from the ranking.

The rounds have fixed sizes (:data:`ROUND`) whatever the runner, so the incumbent at every decision, and hence
the set of dominated configurations, does not depend on ``--jobs``; a rerun from a cache finds the final best at
once and dominates the same configurations (a configuration dominated by a smaller incumbent is by the larger).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tspsim.analysis.entries import is_oom, throughput
from tspsim.core.errors import TspsimError
from tspsim.explore.planner import zero_variants
from tspsim.explore.static_memory import Mapper, own_point, refused_up_front, warm
from tspsim.explore.step_bound import StepBound, step_bound
from tspsim.explore.sweep import Outcome, SweepState, execute
from tspsim.simulate import Point
from tspsim.spec.loader import SpecLoader

ROUND = 4
"""Configurations in the first round; each next round is twice as large (the incumbent is updated between
rounds: few rounds, so few waits for the last point of a round)."""
REL_MARGIN = 1e-9
"""A bound must be below the incumbent by more than this fraction (float noise of the extrapolated sum)."""
RETRY_MARGIN = 1e-6
"""The ZeRO retries' common bound (:meth:`Bounds.retries_dominated`) must be below the incumbent by more than this
fraction to settle them without their own graphs (float noise of two different sums; otherwise their own bounds
decide)."""


def incumbent(outcomes: list[Outcome]) -> float:
    """Highest tokens/s among the finished configurations that fit in HBM (0 if none)."""
    best = 0.0
    for o in outcomes:
        if o.status == "ok" and o.entry is not None and not is_oom(o.entry):
            best = max(best, throughput(o.entry) or 0.0)
    return best


class Bounds:
    """Step bounds of the configurations of one plan, computed once each (1- and 2-block graphs)."""

    def __init__(self, specs: SpecLoader | None = None, graphs: dict[Point, Any] | None = None,
                 mapper: Mapper | None = None) -> None:
        self.specs = specs or SpecLoader()
        self.graphs: dict[Point, Any] = {} if graphs is None else graphs
        """Small graphs by point (:func:`~tspsim.explore.static_memory.small_graphs`), shared with the plan's probes."""
        self.mapper = mapper
        """Builds small graphs on worker processes (:func:`~tspsim.explore.static_memory.warm`), or None."""
        self._known: dict[Point, StepBound | None] = {}

    def prepare(self, points: list[Point], best: float = 0.0) -> None:
        """Build the small graphs the bounds of ``points`` need, in parallel when there is a ``mapper``.

        Then, against the incumbent ``best``, those of the ZeRO retries of each point whose own bound is below it
        (:meth:`dominated` asks for them next, in this process otherwise); the same graphs, built earlier.
        """
        bounded = [p for p in points if p.mode == "train" and p.pipeline.stages <= 1]
        warm(self.graphs, [own_point(p) for p in bounded], self.mapper)
        if best <= 0:
            return
        below = [p for p in bounded if (b := self.of(p)) is not None and b.tokens_per_s * (1 + REL_MARGIN) < best
                 and not self.retries_dominated(p, best)]
        warm(self.graphs, [own_point(v) for p in below for v in zero_variants(p)], self.mapper)

    def of(self, point: Point) -> StepBound | None:
        """:func:`~tspsim.explore.step_bound.step_bound` of ``point``, remembered."""
        if point not in self._known:
            self._known[point] = step_bound(point, self.specs, self.graphs)
        return self._known[point]

    def retries_dominated(self, point: Point, best: float) -> bool:
        """True when every ZeRO retry of ``point`` provably has a tokens/s bound below ``best`` (from its graphs).

        A retry changes memory and data-parallel traffic; of the compute, only the optimizer ops (its shard shrinks
        by the ZeRO group) — it adds gathers and reduce-scatters, never removes a block's kernels. So its busiest
        rank computes at least the point's compute without the optimizer ops (``SmallGraphs.compute_s(optimizer=
        False)``) over the same tokens per step (``tests/test_plan_zero_bound.py`` checks both on every schedule):
        when that bound is below ``best`` (by :data:`RETRY_MARGIN`), each retry's own bound is too, and their graphs
        are not built. Retries the builder refuses up front (whose bound would be unknown) leave it to them.
        """
        small = self.graphs.get(own_point(point))
        worst = small.compute_s(optimizer=False) if small is not None else None
        if worst is None or worst <= 0 or small.tokens_per_step / worst * (1 + RETRY_MARGIN) >= best:
            return False
        return all(_buildable(v, self.specs) for v in zero_variants(point))

    def dominated(self, point: Point, best: float) -> str | None:
        """The ``dominated: …`` note when ``point`` and its ZeRO retries all have tokens/s bounds below ``best``."""
        if best <= 0:
            return None
        own = self.of(point)
        if own is None or own.tokens_per_s * (1 + REL_MARGIN) >= best:
            return None
        if not self.retries_dominated(point, best):
            for p in zero_variants(point):
                bound = self.of(p)
                if bound is None or bound.tokens_per_s * (1 + REL_MARGIN) >= best:
                    return None
        return own.note(best)


def _buildable(point: Point, specs: SpecLoader) -> bool:
    """True when ``point`` resolves and the builder does not refuse it up front."""
    try:
        return refused_up_front(point, specs) is None
    except TspsimError:
        return False


def settle_dominated(state: SweepState, bounds: Bounds, best: float, todo: list[int] | None = None,
                     on_result: Callable[[Outcome], None] | None = None) -> list[int]:
    """Mark the dominated configurations among ``todo`` (default ``state.todo``); return the others, in order.

    A dominated outcome gets status ``dominated`` and the note as its reason (``on_result`` hears of it).
    """
    keep = []
    for i in state.todo if todo is None else todo:
        out = state.outcomes[i]
        note = bounds.dominated(out.point, best)
        if note is None:
            keep.append(i)
            continue
        out.status, out.reason, out.wall_s = "dominated", note, 0.0
        if on_result is not None:
            on_result(out)
    return keep


def execute_bounded(state: SweepState, runner: Any, cache: Any, bounds: Bounds,
                    on_result: Callable[[Outcome], None] | None = None, best: float = 0.0,
                    cost: Callable[[Point], float] | None = None) -> int:
    """Run ``state.todo`` in rounds of :data:`ROUND`, 2·ROUND, 4·ROUND, … points, skipping dominated ones.

    Each round takes the next points of ``state.todo`` in order, settles the dominated ones against the incumbent
    at its start (:func:`settle_dominated`), and runs the others, the costliest first (``cost``, e.g. estimated
    ops: no idle worker at the end of the round). Returns how many were dominated. ``best`` is an incumbent found
    elsewhere (an earlier round of the same plan).
    """
    rest = list(state.todo)
    todo = list(rest)
    best = max(best, incumbent(state.outcomes))
    size = ROUND
    while rest:
        batch, rest = rest[:size], rest[size:]
        size *= 2
        if best > 0:
            bounds.prepare([state.outcomes[i].point for i in batch], best)
        state.todo = settle_dominated(state, bounds, best, batch, on_result)
        if cost is not None:
            state.todo.sort(key=lambda i: -cost(state.outcomes[i].point))
        execute(state, runner, cache, on_result)
        best = max(best, incumbent([state.outcomes[i] for i in batch]))
    state.todo = []
    return sum(state.outcomes[i].status == "dominated" for i in todo)

"""Branch and bound in the planner (tspsim.explore.branch_bound): same best as the exhaustive search, honest notes."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import tiny_32_heads

from tspsim.analysis.entries import is_oom
from tspsim.explore.branch_bound import Bounds, execute_bounded, incumbent, settle_dominated
from tspsim.explore.cache import PointCache
from tspsim.explore.planner import candidate_points
from tspsim.explore.runners import SerialRunner
from tspsim.explore.sweep import prepare
from tspsim.simulate import simulate


@pytest.mark.slow
def test_branch_and_bound_finds_the_exhaustive_best_and_only_skips_slower_configurations(tmp_path: Path) -> None:
    model = tmp_path / "tiny3.yaml"
    model.write_text(tiny_32_heads(layers=3))
    points = candidate_points("mi300x-1node", str(model), 4096, batch_max=2)
    state = prepare(points, PointCache(None))
    with SerialRunner() as runner:
        skipped = execute_bounded(state, runner, PointCache(None), Bounds())
    dominated = [o for o in state.outcomes if o.status == "dominated"]
    assert skipped == len(dominated) > 0
    best = incumbent(state.outcomes)
    exhaustive = {o.index: simulate(o.point).entry for o in dominated}
    for o in dominated:
        entry = exhaustive[o.index]
        assert is_oom(entry) or entry["tokens_per_s"] < best, o.label   # none of them could have won
        assert o.reason.startswith("dominated: step ≥ ")
    simulated = [o.entry for o in state.outcomes if o.status == "ok" and o.entry is not None]
    assert best == max(e["tokens_per_s"] for e in simulated if not is_oom(e))


def test_nothing_is_dominated_before_an_incumbent_exists(tmp_path: Path) -> None:
    model = tmp_path / "tiny2.yaml"
    model.write_text(tiny_32_heads(layers=2))
    state = prepare(candidate_points("mi300x-1node", str(model), 4096, batch_max=1), PointCache(None))
    todo = list(state.todo)
    assert settle_dominated(state, Bounds(), 0.0) == todo
    kept = settle_dominated(state, Bounds(), float("inf"))   # an unbeatable incumbent dominates every bounded point
    assert all(state.outcomes[i].status == "dominated" for i in todo if i not in kept)
    assert all(state.outcomes[i].point.pipeline.stages > 1 for i in kept)

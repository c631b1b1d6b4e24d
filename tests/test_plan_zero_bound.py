"""The ZeRO retries' common bound (Bounds.retries_dominated): a retry computes at least its point's compute without
the optimizer ops, so the point's graphs bound every retry's tokens/s, and the planner's verdicts do not change."""

from __future__ import annotations

import pytest

from tspsim.explore.branch_bound import Bounds
from tspsim.explore.planner import zero_variants
from tspsim.explore.static_memory import own_point, small_graphs
from tspsim.explore.step_bound import step_bound
from tspsim.simulate import Point


@pytest.fixture(scope="module")
def tiny(tiny5: str) -> str:
    return tiny5


def _points(model: str) -> list[Point]:
    """Training points the planner retries with ZeRO: every schedule, SP algorithms, batches, folded DP, a stack."""
    out = [Point("tsp", "mi300x-1node", model, seq_len=4096, batch=b, degree=4) for b in (1, 2)]
    out += [Point("tp", "mi300x-1node", model, seq_len=4096, degree=d) for d in (1, 2)]
    out += [Point("satp-seq", "mi300x-1node", model, seq_len=4096, degree=2),
            Point("satp-batch", "mi300x-1node", model, seq_len=4096, batch=2, degree=2)]
    out += [Point("sp", "mi300x-1node", model, seq_len=4096, degree=2, options=(("sp_attention", a),))
            for a in ("allgather", "ring", "ulysses")]
    out += [Point("tp+sp", "mi300x-128node", model, seq_len=4096, tp=2, sp=4, gpus=32,
                  options=(("sp_attention", "ring"),)),
            Point("tp", "mi300x-128node", model, seq_len=4096, degree=8, gpus=32),
            Point("tp", "mi300x-1node", model, seq_len=4096, degree=2, options=(("stack", "megatron-lm-2022"),)),
            Point("tsp", "mi300x-1node", model, seq_len=2048, degree=2, options=(("recompute", "selective"),))]
    return out


@pytest.mark.slow
def test_every_retry_computes_at_least_its_points_compute_without_the_optimizer(tiny: str) -> None:
    checked = 0
    for point in _points(tiny):
        small = small_graphs(own_point(point))
        assert small is not None
        floor = small.compute_s(optimizer=False)
        assert floor is not None and 0 < floor < small.compute_s(), point   # the optimizer takes some time
        for retry in zero_variants(point):
            bound = step_bound(retry)
            assert bound is not None, retry
            assert bound.step_s >= floor * (1 - 1e-12), retry
            assert bound.tokens_per_step == small.tokens_per_step, retry
            checked += 1
    assert checked >= 20


@pytest.mark.slow
def test_the_verdicts_are_those_of_the_retries_own_bounds(tiny: str) -> None:
    """Against incumbents around every bound, dominated() says what it says from each retry's own graphs."""
    for point in _points(tiny)[::2]:
        fast, slow = Bounds(), Bounds()
        slow.retries_dominated = lambda *_a: False   # type: ignore[method-assign]
        own = fast.of(point)
        assert own is not None
        small = fast.graphs.get(own_point(point)) or small_graphs(own_point(point))
        fast.graphs[own_point(point)] = small
        common = small.tokens_per_step / small.compute_s(optimizer=False)
        marks = [own.tokens_per_s, common, *(b.tokens_per_s for v in zero_variants(point) if (b := slow.of(v)))]
        for mark in marks:
            for best in (mark * 0.5, mark * (1 - 1e-7), mark, mark * (1 + 1e-7), mark * 2):
                assert fast.dominated(point, best) == slow.dominated(point, best), (point, best)
        assert fast.retries_dominated(point, common * 2) == bool(zero_variants(point))

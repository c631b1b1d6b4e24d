"""The array forms of tspsim.analysis.span_windows equal the list functions they replace, to the last bit.

Intervals are drawn on a coarse grid (many ties, touching and nested intervals) and at random scales
(sums whose rounding depends on the order of the terms).
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tspsim.analysis.metrics import intersection_length, interval_union, total_length
from tspsim.analysis.span_windows import _accumulate, _clip, _intersection, _total, _union

_grid = st.integers(0, 40).map(lambda k: k * 0.25)
_scaled = st.floats(0.0, 1.0, allow_nan=False).map(lambda x: x * 1e-3 + x * x * 7.3)
_points = st.one_of(_grid, _scaled)
_intervals = st.lists(st.tuples(_points, _points).filter(lambda ab: ab[1] > ab[0]), max_size=40)


def _arrays(intervals: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([a for a, _ in intervals], dtype=np.float64),
            np.array([b for _, b in intervals], dtype=np.float64))


def _pairs(lo: np.ndarray, hi: np.ndarray) -> list[tuple[float, float]]:
    return list(zip(lo.tolist(), hi.tolist()))


@settings(max_examples=200, deadline=None)
@given(_intervals)
def test_union_and_total_equal_the_list_functions(intervals):
    union = _union(*_arrays(intervals))
    assert _pairs(*union) == interval_union(intervals)
    assert _total(*union) == total_length(interval_union(intervals))


@settings(max_examples=200, deadline=None)
@given(_intervals, _intervals, _points, _points)
def test_intersection_of_clipped_unions_equals_the_two_pointer_sweep(a, b, start, end):
    ua, ub = _union(*_arrays(a)), _union(*_arrays(b))
    assert _intersection(*ua, *ub) == intersection_length(interval_union(a), interval_union(b))
    if start < end:
        ca, cb = _clip(*ua, start, end), _clip(*ub, start, end)
        ref_a = [(max(x, start), min(y, end)) for x, y in interval_union(a) if y > start and x < end]
        ref_b = [(max(x, start), min(y, end)) for x, y in interval_union(b) if y > start and x < end]
        assert _pairs(*ca) == ref_a and _pairs(*cb) == ref_b
        assert _intersection(*ca, *cb) == intersection_length(ref_a, ref_b)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), max_size=200))
def test_accumulate_is_the_sequential_sum(terms):
    total = 0.0
    for x in terms:
        total += x
    got = _accumulate(np.array(terms, dtype=np.float64))
    assert got == total and type(got) is float
    assert str(got) == str(total)          # the sign of a zero too

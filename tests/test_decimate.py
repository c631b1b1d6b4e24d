"""Per-pixel decimation of the viewer (tspsim/outputs/viewer/decimate.py): exact rules, property-checked."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tspsim.outputs.viewer.decimate import bin_steps, decimate_steps, nice_width, raster_spans
from tspsim.outputs.viewer.panels import link_view


def test_nice_width_rounds_up_to_1_2_5():
    assert [nice_width(w) for w in (0.7, 1.0, 1.3, 2.0, 4.9, 7.668, 15.3, 0.013)] == pytest.approx(
        [1.0, 1.0, 2.0, 2.0, 5.0, 10.0, 20.0, 0.02])


# ---------------------------------------------------------------------------------------------- spans
@st.composite
def lanes_of_spans(draw):
    """Spans on a few lanes, sorted by (lane, start), back to back or with gaps, of 2 categories."""
    lane, start, end, cat = [], [], [], []
    for ln in range(draw(st.integers(1, 3))):
        t = 0.0
        for _ in range(draw(st.integers(0, 40))):
            t += draw(st.floats(0.0, 5.0))
            d = draw(st.floats(0.0, 8.0))
            lane.append(ln)
            start.append(t)
            end.append(t + d)
            cat.append(draw(st.integers(0, 1)))
            t += d
    return (np.asarray(lane, dtype=np.int64), np.asarray(start), np.asarray(end), np.asarray(cat, dtype=np.int64))


@settings(max_examples=80, deadline=None)
@given(spans=lanes_of_spans(), n_px=st.integers(1, 60))
def test_raster_covers_every_span_and_stays_in_its_lane_and_window(spans, n_px):
    lane, start, end, cat = spans
    x1 = float(end.max()) + 1.0 if len(end) else 1.0
    segs = raster_spans(lane, start, end, cat, 2, 0.0, x1, n_px)
    w = x1 / n_px
    drawn: dict[int, list[tuple[float, float]]] = {}
    for seg in segs:
        for ln, a, b, n in zip(seg.lane, seg.start, seg.end, seg.count):
            assert 0.0 <= a <= b <= x1 and n >= 0
            drawn.setdefault(ln, []).append((a, b))
    for segments in drawn.values():
        segments.sort()
        # Segments of a lane never overlap and are at most one per pixel column.
        assert all(segments[i][1] <= segments[i + 1][0] + 1e-9 for i in range(len(segments) - 1))
        assert len(segments) <= n_px
    for ln, a, b in zip(lane.tolist(), start.tolist(), end.tolist()):
        # Every instant of a span lies in a drawn segment of its lane (within float rounding).
        for t in (a, (a + b) / 2, b):
            assert any(s - 1e-9 <= t <= e + 1e-9 for s, e in drawn.get(ln, [])), (ln, a, b, t)
    # Segments start and end where spans do, or on a column edge inside a span.
    edges = set(np.round(np.arange(n_px + 1) * w, 9).tolist())
    ends = set(np.round(np.concatenate([start, end]), 9).tolist()) | edges
    for seg in segs:
        assert all(round(a, 9) in ends and round(b, 9) in ends for a, b in zip(seg.start, seg.end))
    # Busy time is the covered time: the sum over segments equals the spans' total length.
    assert sum(sum(s.busy) for s in segs) == pytest.approx(float((end - start).sum()), rel=1e-9, abs=1e-9)
    assert sum(sum(s.count) for s in segs) == len(start)


def test_raster_colours_a_column_by_the_category_covering_most_of_it():
    # One lane: 0.6 ms of category 1 and 0.3 ms of category 0 in the first 1-ms column; category 0 alone after.
    lane = np.zeros(3, dtype=np.int64)
    start, end = np.array([0.0, 0.6, 1.2]), np.array([0.6, 0.9, 1.8])
    segs = raster_spans(lane, start, end, np.array([1, 0, 0]), 2, 0.0, 2.0, 2)
    assert (segs[1].start, segs[1].end, segs[1].count) == ([0.0], [0.9], [2])
    assert segs[1].mix[0] == pytest.approx({0: 0.3, 1: 0.6})
    assert (segs[0].start, segs[0].end, segs[0].count) == ([1.2], [1.8], [1])


def test_raster_keeps_idle_gaps_wider_than_a_pixel():
    lane = np.zeros(2, dtype=np.int64)
    segs = raster_spans(lane, np.array([0.0, 5.0]), np.array([1.0, 6.0]), np.zeros(2, dtype=np.int64), 1,
                        0.0, 10.0, 10)
    assert list(zip(segs[0].start, segs[0].end)) == [(0.0, 1.0), (5.0, 6.0)]


# ---------------------------------------------------------------------------------------------- links
@st.composite
def step_series(draw):
    n = draw(st.integers(0, 30))
    xs = np.sort(np.asarray(draw(st.lists(st.floats(0.0, 100.0), min_size=n, max_size=n))))
    ys = np.asarray(draw(st.lists(st.floats(0.0, 100.0), min_size=n, max_size=n)))
    return xs, ys


def _value_at(xs: np.ndarray, ys: np.ndarray, t: float) -> float:
    i = int(np.searchsorted(xs, t, side="right")) - 1
    return float(ys[i]) if i >= 0 else 0.0


@settings(max_examples=80, deadline=None)
@given(series=step_series(), width=st.floats(0.5, 40.0))
def test_bin_means_are_exact_integrals_and_max_is_the_largest_active_value(series, width):
    xs, ys = series
    x0, x1 = 0.0, 100.0
    starts, mean, peak = bin_steps(xs, ys, x0, x1, width)
    assert len(starts) == len(mean) == len(peak) == max(1, math.ceil(x1 / width - 1e-9))
    breaks = np.unique(np.concatenate([xs, [x0, x1]]))
    for k, a in enumerate(starts):
        b = min(a + width, x1)
        pts = [a] + [t for t in breaks if a < t < b] + [b]
        area = sum(_value_at(xs, ys, p) * (q - p) for p, q in zip(pts[:-1], pts[1:]))
        assert mean[k] == pytest.approx(area / (b - a), rel=1e-9, abs=1e-9)
        active = [_value_at(xs, ys, p) for p in pts[:-1]]
        assert peak[k] == pytest.approx(max(active))
        assert mean[k] <= peak[k] + 1e-9


def test_link_view_draws_exact_steps_when_there_are_fewer_changes_than_bins():
    x, y = np.array([1.0, 2.0, 8.0]), np.array([50.0, 0.0, 95.0])
    xs, mean, mx, max_y = link_view(x, y, 0.0, 10.0, 1.0)
    assert list(xs) == [0.0, 1.0, 2.0, 8.0, 10.0] and list(mean) == [0.0, 50.0, 0.0, 95.0, 95.0]
    assert len(mx) == len(max_y) == 0
    xs, mean, mx, max_y = link_view(np.arange(100) * 0.1, np.tile([0.0, 95.0], 50), 0.0, 10.0, 1.0)
    assert len(xs) == 11 and mean[:10] == pytest.approx([47.5] * 10) and list(max_y[:10]) == [95.0] * 10


# --------------------------------------------------------------------------------------------- memory
@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(0.0, 1e3), min_size=1, max_size=400), n_px=st.integers(1, 50))
def test_memory_decimation_keeps_each_columns_peak_and_the_global_peak(values, n_px):
    total = np.asarray(values)
    times = np.linspace(0.0, 10.0, len(total))
    peak = int(np.argmax(total))
    keep = decimate_steps(times, total, 0.0, 10.0, n_px, always=(peak,))
    assert peak in keep.tolist() and np.all(np.diff(keep) > 0)
    assert len(keep) <= max(2 * n_px + 1, len(total) if len(total) <= 2 * n_px else 0) + 2
    col = np.minimum((times / (10.0 / n_px)).astype(int), n_px - 1)
    for c in set(col.tolist()):
        in_col = np.flatnonzero(col == c)
        assert total[keep[np.isin(keep, in_col)]].max() == total[in_col].max()

"""Per-pixel decimation of what the viewer draws, so a 1,024-GPU run opens in seconds.

Three reductions, each also implemented in the page's script (``viewer.js``) with the same rules, so the
browser refines the view when the user zooms (the page keeps the full data; only what is drawn shrinks):

* :func:`raster_spans` — spans of one lane cut into ``n_px`` pixel columns of the time window. A column is
  drawn when any span covers part of it, in the colour of the category covering most of it; adjacent
  drawn columns of one category merge into one segment that runs from the first covered instant to the
  last. A segment's hover says how many spans it merges and how busy the lane was. Idle gaps wider than
  a pixel stay visible; nothing narrower than a pixel could be seen anyway.
* :func:`bin_steps` — a step series (link utilisation, %) as the exact time-weighted **mean** and the
  **max** over bins of a fixed width: readable at any zoom, where thousands of 0 ↔ 95 % transitions
  would otherwise alias into a solid block.
* :func:`decimate_steps` — a stacked memory series reduced to at most two samples per column (the
  column's highest total and its last sample), so every peak survives.

:func:`nice_width` rounds a bin width up to 1, 2 or 5 × 10^k ms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


def nice_width(width: float) -> float:
    """Smallest 1, 2 or 5 × 10^k that is ≥ ``width`` (> 0)."""
    if width <= 0 or not math.isfinite(width):
        return 1.0
    exp = math.floor(math.log10(width))
    for m in (1.0, 2.0, 5.0, 10.0):
        w = m * 10.0 ** exp
        if w >= width * (1 - 1e-12):
            return w
    return 10.0 ** (exp + 1)


# ---------------------------------------------------------------------------------------------- spans
@dataclass
class Segments:
    """Decimated spans of one category: where to draw them and what their hover says."""

    lane: list[int] = field(default_factory=list)
    """Lane of each segment."""
    start: list[float] = field(default_factory=list)
    """Start of each segment, ms."""
    end: list[float] = field(default_factory=list)
    """End of each segment, ms."""
    count: list[int] = field(default_factory=list)
    """Spans starting inside each segment."""
    busy: list[float] = field(default_factory=list)
    """Time covered by spans inside each segment, ms."""
    mix: list[dict[int, float]] = field(default_factory=list)
    """Per segment: covered time (ms) by category index."""


def raster_spans(lane: np.ndarray, start: np.ndarray, end: np.ndarray, cat: np.ndarray, n_cats: int,
                 x0: float, x1: float, n_px: int) -> list[Segments]:
    """Pixel-column decimation of spans (rules in the module docstring); one :class:`Segments` per category.

    One entry per span in ``lane``, ``start``, ``end`` and ``cat``, sorted by (lane, start); times in ms;
    ``cat`` indexes the categories (0 … ``n_cats`` − 1), whose order breaks ties (the earlier category
    wins). The window is [``x0``, ``x1``] ms, cut into ``n_px`` pixel columns.
    """
    out = [Segments() for _ in range(n_cats)]
    w = (x1 - x0) / n_px
    keep = (end >= x0) & (start <= x1)
    lanes = lane[keep]
    s_all = np.maximum(start[keep], x0)
    e_all = np.minimum(end[keep], x1)
    c_all = cat[keep]
    bounds = np.flatnonzero(np.diff(lanes)) + 1
    for lo_i, hi_i in zip(np.r_[0, bounds], np.r_[bounds, len(lanes)]):
        if lo_i == hi_i:
            continue
        cover = np.zeros((n_cats, n_px))
        first = np.full(n_px, np.inf)
        last = np.full(n_px, -np.inf)
        starts = np.zeros(n_px, dtype=np.int64)
        for s, e, c in zip(s_all[lo_i:hi_i].tolist(), e_all[lo_i:hi_i].tolist(), c_all[lo_i:hi_i].tolist()):
            i = min(max(int((s - x0) / w), 0), n_px - 1)
            j = min(max(math.ceil((e - x0) / w) - 1, i), n_px - 1)
            starts[i] += 1
            if i == j:
                cover[c, i] += e - s
                first[i] = min(first[i], s)
                last[i] = max(last[i], e)
                continue
            cover[c, i] += x0 + (i + 1) * w - s
            cover[c, j] += e - (x0 + j * w)
            if j > i + 1:
                cover[c, i + 1:j] += w
                first[i + 1:j] = np.minimum(first[i + 1:j], x0 + np.arange(i + 1, j) * w)
                last[i + 1:j] = np.maximum(last[i + 1:j], x0 + np.arange(i + 2, j + 1) * w)
            first[i] = min(first[i], s)
            last[i] = max(last[i], x0 + (i + 1) * w)
            first[j] = min(first[j], x0 + j * w)
            last[j] = max(last[j], e)
        _merge_columns(out, int(lanes[lo_i]), cover, first, last, starts)
    return out


def _merge_columns(out: list[Segments], lane: int, cover: np.ndarray, first: np.ndarray, last: np.ndarray,
                   starts: np.ndarray) -> None:
    """Append the segments of one lane: drawn columns of one dominant category merged."""
    drawn = np.isfinite(first)
    dom = np.argmax(cover, axis=0)
    k, n = 0, len(first)
    while k < n:
        if not drawn[k]:
            k += 1
            continue
        c = int(dom[k])
        m = k
        while m + 1 < n and drawn[m + 1] and dom[m + 1] == c:
            m += 1
        seg = out[c]
        seg.lane.append(lane)
        seg.start.append(float(first[k]))
        seg.end.append(float(last[m]))
        seg.count.append(int(starts[k:m + 1].sum()))
        block = cover[:, k:m + 1].sum(axis=1)
        seg.busy.append(float(block.sum()))
        seg.mix.append({int(i): float(v) for i, v in enumerate(block) if v > 0})
        k = m + 1


# ---------------------------------------------------------------------------------------------- links
def bin_steps(x: np.ndarray, y: np.ndarray, x0: float, x1: float, width: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Time-weighted mean and max of a step series over bins ``[x0 + k·width, x0 + (k+1)·width)``.

    ``x`` holds the change times, sorted, with ``y[i]`` holding on ``[x[i], x[i+1])`` and the last value to
    ``x1``; before ``x[0]`` the value is 0; of several changes at one instant the last counts. The window is
    [``x0``, ``x1``], its last bin cut at ``x1``; ``width`` is in the unit of ``x``.

    Returns:
        (bin starts, mean per bin, max per bin).
    """
    n = max(1, math.ceil((x1 - x0) / width - 1e-9))
    edges = np.minimum(x0 + np.arange(n + 1) * width, x1)
    if len(x) == 0:
        zeros = np.zeros(n)
        return edges[:-1], zeros, zeros.copy()
    if np.any(np.diff(x) <= 0):               # a value replaced at the same instant holds for no time
        last = np.r_[np.diff(x) > 0, True]
        x, y = x[last], y[last]
    # Integral of the step function at each change time, then at each edge by interpolation (exact).
    xs = np.concatenate([x, [max(x1, x[-1])]])
    integral = np.concatenate([[0.0], np.cumsum(y * np.diff(xs))])

    def at(t: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(xs, t, side="right") - 1
        i = np.clip(idx, 0, len(xs) - 1)
        rate = np.where(i < len(y), y[np.minimum(i, len(y) - 1)], 0.0)
        return np.where(idx >= 0, integral[i] + rate * (t - xs[i]), 0.0)

    area = np.diff(at(edges))
    lens = np.diff(edges)
    mean = np.divide(area, lens, out=np.zeros(n), where=lens > 0)
    # Max: every value active somewhere in [edge_k, edge_k+1): from the one active at the edge to the last
    # change before the next edge.
    first = np.searchsorted(x, edges[:-1], side="right") - 1
    last = np.searchsorted(x, edges[1:], side="left") - 1
    padded = np.concatenate([[0.0], y])        # index 0: the value before the first change
    lo, hi = first + 1, np.maximum(last + 1, first + 1)
    peak = np.array([padded[a:b + 1].max() for a, b in zip(lo.tolist(), hi.tolist())])
    return edges[:-1], mean, peak


# --------------------------------------------------------------------------------------------- memory
def decimate_steps(times: np.ndarray, total: np.ndarray, x0: float, x1: float, n_px: int,
                   always: Sequence[int] = ()) -> np.ndarray:
    """Indices of a step series to keep: per pixel column its highest total and its last sample.

    Samples before ``x0`` and after ``x1`` contribute only the last one before the window (the state the
    window starts in) and the first one after it. ``always`` indices (e.g. the global peak) are kept
    whatever their column. Series of at most ``2·n_px`` samples in the window are kept whole.
    """
    n = len(times)
    lo = int(np.searchsorted(times, x0, side="left"))
    hi = int(np.searchsorted(times, x1, side="right"))
    keep = [int(i) for i in always if 0 <= i < n]
    if lo > 0:
        keep.append(lo - 1)
    if hi < n:
        keep.append(hi)
    if hi - lo <= 2 * n_px:
        keep.extend(range(lo, hi))
        return np.unique(np.asarray(keep, dtype=np.int64))
    w = (x1 - x0) / n_px
    col = np.minimum(((times[lo:hi] - x0) / w).astype(np.int64), n_px - 1)
    cuts = np.flatnonzero(np.diff(col)) + 1
    for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, hi - lo].tolist()):
        keep.append(lo + a + int(np.argmax(total[lo + a:lo + b])))
        keep.append(lo + b - 1)
    return np.unique(np.asarray(keep, dtype=np.int64))

"""Stream lanes of the timeline: spans grouped by category, drawn as bars or as one SVG line path per category.

:func:`collect_spans` gathers the spans of the shown lanes into a :class:`SpanTable` (sorted by lane, then
start). :func:`span_traces` draws them exactly — ``go.Bar`` up to the bar limit, thick line segments beyond —
and :func:`raster_traces` draws their per-pixel decimation (:func:`~tspsim.outputs.viewer.decimate.raster_spans`)
for runs with more spans than a browser draws quickly; the page refines that view on zoom.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tspsim.engine.timeline import Timeline
from tspsim.opgraph import Op
from tspsim.outputs.export import SPAN_CATEGORIES, span_category
from tspsim.outputs.viewer.decimate import Segments
from tspsim.outputs.viewer.style import LANE_PX, esc


@dataclass
class SpanTable:
    """The spans of the shown lanes, one row each, sorted by (lane, start)."""

    cats: list[str]
    """Category keys in legend order; ``cat`` indexes this list."""
    lane: np.ndarray
    """Lane of each span."""
    start: np.ndarray
    """Start, ms."""
    end: np.ndarray
    """End, ms."""
    cat: np.ndarray
    """Category index of each span."""
    hover: list[list[str]] = field(default_factory=list)
    """Hover rows (name, where, layer · phase, timing, size), HTML-escaped."""

    def __len__(self) -> int:
        return len(self.start)

    def rows_of(self, c: int) -> np.ndarray:
        """Row indices of category index ``c``."""
        return np.flatnonzero(self.cat == c)


def _fmt_time_s(seconds: float) -> str:
    us = seconds * 1e6
    if us < 1000:
        return f"{us:.1f} µs"
    return f"{seconds * 1e3:.3f} ms"


def _fmt_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _fmt_flops(f: float) -> str:
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if f >= scale:
            return f"{f / scale:.3f} {unit}"
    return f"{f:.0f} FLOP"


def _hover_row(op: Op, start: float, end: float, where: str, tl: Timeline,
               escape: Callable[[str], str] = esc) -> list[str]:
    """Hover data of one span: [name, where, layer · phase, timing, size] — all escaped (by ``escape``)."""
    dur = end - start
    layer = f"layer {op.layer}" if op.layer >= 0 else "outside decoder layers"
    timing = f"start {start * 1e3:.4f} ms · duration {_fmt_time_s(dur)}"
    if op.is_compute:
        rate = f" · {op.flops / dur / 1e12:.0f} TFLOP/s" if dur > 0 and op.flops else ""
        size = f"{_fmt_flops(op.flops)}{rate} · HBM {_fmt_bytes(op.hbm_bytes)}"
    else:
        sent = tl.op_sent_bytes.get(op.id)
        size = f"{op.kind} {_fmt_bytes(op.nbytes)}"
        if op.kind in ("send", "recv") and len(op.group) == 2:
            size += f" · rank {op.group[0]} → rank {op.group[1]}"
        else:
            size += f" · group of {len(op.group)}"
        if sent is not None:
            size += f" · this rank sent {_fmt_bytes(sent)}"
        if op.algorithm:
            size += f" · {op.algorithm}"
    return [escape(op.name), escape(where), escape(f"{layer} · {op.phase}"), timing, esc(size)]


HOVER_TEMPLATE = ("<b>%{customdata[0]}</b><br>%{customdata[1]}<br>%{customdata[2]}<br>%{customdata[3]}"
                  "<br>%{customdata[4]}<extra>%{fullData.name}</extra>")
"""Hover of a span or a decimated segment: five rows of ``customdata``."""


def category_order(cats: Sequence[str]) -> list[str]:
    """Known categories in :data:`~tspsim.outputs.export.SPAN_CATEGORIES` order, then unknown ones sorted."""
    known = [c for c in SPAN_CATEGORIES if c in cats]
    return known + sorted(c for c in cats if c not in SPAN_CATEGORIES)


def collect_spans(tl: Timeline, lane_of: dict[tuple[int, str], int], names: dict[int, str]) -> SpanTable:
    """The spans of the lanes in ``lane_of`` (memory-only ops have none), sorted by lane then start."""
    esc_cached = functools.lru_cache(maxsize=None)(esc)  # names, places and phases repeat across ranks
    rows: list[tuple[int, float, float, str, int, float, float]] = []
    ops = tl.ops
    for op_id, start, end in tl.spans:
        op = ops[op_id]
        lane = lane_of.get((op.rank, op.stream))
        if lane is None:
            continue
        cat = span_category(op)
        if cat is None:
            continue
        rows.append((lane, start * 1e3, end * 1e3, cat, op_id, start, end))
    rows.sort(key=lambda r: (r[0], r[1], r[2], r[4]))
    cats = category_order(sorted({r[3] for r in rows}))
    index = {c: i for i, c in enumerate(cats)}
    hover = [_hover_row(ops[r[4]], r[5], r[6], f"{names[ops[r[4]].rank]} (rank {ops[r[4]].rank}) · "
                                                 f"{ops[r[4]].stream}", tl, esc_cached) for r in rows]
    return SpanTable(cats=cats, lane=np.asarray([r[0] for r in rows], dtype=np.int64),
                     start=np.asarray([r[1] for r in rows], dtype=np.float64),
                     end=np.asarray([r[2] for r in rows], dtype=np.float64),
                     cat=np.asarray([index[r[3]] for r in rows], dtype=np.int64), hover=hover)


def segment_vertices(start: np.ndarray, end: np.ndarray, lane: np.ndarray, step: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices of segments drawn as one SVG line path: (x, y, row of each vertex, −1 at the gaps).

    Each segment gets its two ends plus evenly spaced vertices at most ``step`` apart, then a gap (NaN).
    Plotly hovers the nearest vertex, so a vertex every few pixels lets the whole length of a span show
    its hover, while every segment stays one subpath of a single ``<path>`` (cheap to draw, unlike one
    SVG element per bar or a WebGL context).
    """
    n = len(start)
    if n == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    parts = np.maximum(1, np.ceil((end - start) / step).astype(np.int64)) if step > 0 else np.ones(n, np.int64)
    per = parts + 2                                  # parts + 1 vertices and a gap
    row = np.repeat(np.arange(n), per)
    pos = np.arange(len(row)) - np.repeat(np.cumsum(per) - per, per)
    frac = pos / np.repeat(parts, per)
    gap = pos == np.repeat(per - 1, per)
    x = np.where(gap, np.nan, np.repeat(start, per) + frac * np.repeat(end - start, per))
    y = np.where(gap, np.nan, np.repeat(lane.astype(np.float64), per))
    return x, y, np.where(gap, -1, row)


def json_floats(a: np.ndarray, digits: int = 6) -> list[float | None]:
    """A float array as a JSON-ready list: rounded to ``digits``, NaN → None (a gap in a plotly line)."""
    out: list[float | None] = np.round(np.asarray(a, dtype=np.float64), digits).tolist()
    return [None if v != v else v for v in out]


def _category_traces(cat: str, start: np.ndarray, end: np.ndarray, lane: np.ndarray, hover: list[list[str]],
                     step: float | None) -> list[dict[str, Any]]:
    """One trace (a plotly JSON dict) of a category: bars, or one SVG line path with a vertex every ``step`` ms.

    ``step`` None draws bars. Plain dicts, not ``go`` objects: plotly.py would copy and validate every
    hover string, which took longer than the simulation for a 1,024-GPU run.
    """
    label, colour = SPAN_CATEGORIES.get(cat, (cat, "#7F7F7F"))
    common = {"name": esc(label), "legendgroup": esc(cat), "legend": "legend", "hovertemplate": HOVER_TEMPLATE}
    if step is None:
        return [{"type": "bar", "orientation": "h", "base": json_floats(start), "x": json_floats(end - start),
                 "y": lane.astype(np.float64).tolist(), "width": 0.78,
                 "marker": {"color": colour, "line": {"width": 0}}, "customdata": hover, "textposition": "none",
                 **common}]
    x, y, row = segment_vertices(start, end, lane, step)
    return [{"type": "scatter", "x": json_floats(x), "y": json_floats(y, 0), "mode": "lines",
             "line": {"color": colour, "width": LANE_PX * 0.72, "simplify": False},
             "customdata": [hover[i] if i >= 0 else None for i in row.tolist()], "connectgaps": False, **common}]


def span_traces(table: SpanTable, step: float | None) -> list[dict[str, Any]]:
    """Every span exactly, one trace per category: bars (``step`` None) or a line path (vertex spacing ``step`` ms)."""
    traces: list[dict[str, Any]] = []
    for c, cat in enumerate(table.cats):
        rows = table.rows_of(c)
        traces += _category_traces(cat, table.start[rows], table.end[rows], table.lane[rows],
                                   [table.hover[i] for i in rows.tolist()], step)
    return traces


def segment_hover(seg: Segments, k: int, cat_labels: Sequence[str], where: str) -> list[str]:
    """Hover rows of decimated segment ``k``: what it merges, how busy the lane was, its extent."""
    length = seg.end[k] - seg.start[k]
    busy = seg.busy[k] / length * 100 if length > 0 else 100.0
    mix = sorted(seg.mix[k].items(), key=lambda kv: (-kv[1], kv[0]))
    parts = " · ".join(f"{cat_labels[c]} {v / seg.busy[k] * 100:.0f}%" for c, v in mix[:3]) if seg.busy[k] else ""
    n = seg.count[k]
    return [f"{n:,} span{'s' if n != 1 else ''} merged (less than a pixel apart)", esc(where),
            f"busy {busy:.0f}% of {_fmt_time_s(length / 1e3)}" + (f": {parts}" if parts else ""),
            f"start {seg.start[k]:.4f} ms · end {seg.end[k]:.4f} ms", "zoom in to see each op"]


def raster_traces(table: SpanTable, segments: list[Segments], where: Sequence[str], step: float
                  ) -> list[dict[str, Any]]:
    """Line-path traces of decimated spans (same structure as :func:`span_traces` with a ``step``).

    ``where[lane]`` names each lane for the hover (``node00/gpu3 (rank 3) · compute``).
    """
    labels = [esc(SPAN_CATEGORIES.get(c, (c, ""))[0]) for c in table.cats]
    traces: list[dict[str, Any]] = []
    for cat, seg in zip(table.cats, segments):
        hover = [segment_hover(seg, k, labels, where[seg.lane[k]]) for k in range(len(seg.start))]
        traces += _category_traces(cat, np.asarray(seg.start, dtype=np.float64), np.asarray(seg.end, dtype=np.float64),
                                   np.asarray(seg.lane, dtype=np.int64), hover, step)
    return traces

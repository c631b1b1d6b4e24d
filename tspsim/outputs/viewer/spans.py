"""Stream lanes of the timeline: spans grouped by category, drawn as bars or WebGL line segments."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go

from tspsim.engine.timeline import Timeline
from tspsim.opgraph import Op
from tspsim.outputs.export import SPAN_CATEGORIES, span_category
from tspsim.outputs.viewer.style import HOVER_LIMIT, LANE_PX, esc


@dataclass
class CategorySpans:
    """The spans of one category: lane, start and end (ms) and hover rows."""

    lane: list[int] = field(default_factory=list)
    start: list[float] = field(default_factory=list)
    end: list[float] = field(default_factory=list)
    hover: list[list[str]] = field(default_factory=list)


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


def _hover_row(op: Op, start: float, end: float, where: str, tl: Timeline) -> list[str]:
    """Hover data of one span: [name, where, layer · phase, timing, size] — all escaped."""
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
    return [esc(op.name), esc(where), esc(f"{layer} · {op.phase}"), timing, esc(size)]


_HOVER_TEMPLATE = ("<b>%{customdata[0]}</b><br>%{customdata[1]}<br>%{customdata[2]}<br>%{customdata[3]}"
                   "<br>%{customdata[4]}<extra>%{fullData.name}</extra>")


def collect_spans(tl: Timeline, lane_of: dict[tuple[int, str], int], names: dict[int, str]
                  ) -> dict[str, CategorySpans]:
    """The spans of the lanes in ``lane_of``, by category (memory-only ops have none)."""
    out: dict[str, CategorySpans] = {}
    ops = tl.ops
    for op_id, start, end in tl.spans:
        op = ops[op_id]
        lane = lane_of.get((op.rank, op.stream))
        if lane is None:
            continue
        cat = span_category(op)
        if cat is None:
            continue
        c = out.setdefault(cat, CategorySpans())
        c.lane.append(lane)
        c.start.append(start * 1e3)
        c.end.append(end * 1e3)
        c.hover.append(_hover_row(op, start, end, f"{names[op.rank]} (rank {op.rank}) · {op.stream}", tl))
    return out


def _category_order(cats: Sequence[str]) -> list[str]:
    known = [c for c in SPAN_CATEGORIES if c in cats]
    return known + sorted(c for c in cats if c not in SPAN_CATEGORIES)


def span_traces(spans: dict[str, CategorySpans], use_gl: bool) -> list[go.BaseTraceType]:
    """One bar trace per category, or WebGL segments plus an invisible hover-marker trace per category."""
    traces: list[go.BaseTraceType] = []
    line_px = LANE_PX * 0.72
    for cat in _category_order(list(spans)):
        c = spans[cat]
        label, colour = SPAN_CATEGORIES.get(cat, (cat, "#7F7F7F"))
        start = np.asarray(c.start, dtype=np.float64)
        end = np.asarray(c.end, dtype=np.float64)
        lane = np.asarray(c.lane, dtype=np.float64)
        common = {"name": label, "legendgroup": cat, "legend": "legend"}
        if not use_gl:
            traces.append(go.Bar(orientation="h", base=start, x=end - start, y=lane, width=0.78,
                                 marker={"color": colour, "line": {"width": 0}}, customdata=c.hover,
                                 hovertemplate=_HOVER_TEMPLATE, textposition="none", **common))
            continue
        n = len(start)
        xs = np.full(3 * n, np.nan)
        ys = np.full(3 * n, np.nan)
        xs[0::3], xs[1::3] = start, end
        ys[0::3], ys[1::3] = lane, lane
        traces.append(go.Scattergl(x=xs, y=ys, mode="lines", line={"color": colour, "width": line_px},
                                   hoverinfo="skip", connectgaps=False, **common))
        keep = np.arange(n)
        if n > HOVER_LIMIT:
            keep = np.sort(np.argsort(start - end, kind="stable")[:HOVER_LIMIT])
        traces.append(go.Scattergl(x=(start[keep] + end[keep]) / 2, y=lane[keep], mode="markers",
                                   marker={"color": colour, "size": line_px, "opacity": 0,
                                           "symbol": "square"},
                                   customdata=[c.hover[i] for i in keep], hovertemplate=_HOVER_TEMPLATE,
                                   showlegend=False, **common))
    return traces

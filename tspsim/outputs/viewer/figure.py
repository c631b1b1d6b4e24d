"""The plotly figure of one run: stream lanes, memory and link utilisation on one shared time axis.

All panels share the time axis in **milliseconds** (``make_subplots(shared_xaxes=True)``, so zoom and pan
act on every panel; there is no range slider: it redraws every trace of its panel a second time):

1. **Stream lanes** (:mod:`~tspsim.outputs.viewer.spans`) — one lane per (GPU, stream), compute first.
   Up to ``exact_limit`` spans are drawn exactly; beyond that the overview is decimated per pixel column
   (:func:`~tspsim.outputs.viewer.decimate.raster_spans`) and the page refines it on zoom.
2. **Memory** of one GPU — stacked per-category areas (decimated to two samples per pixel column, peaks
   kept; the hover shows the category and the total), the HBM capacity line and the peak marked; a
   dropdown switches the GPU, buttons switch the y scale between HBM and the usage.
3. **Node fabric** and 4. **NIC** utilisation (when the run recorded links) — mean and max per bin of
   each link group (:mod:`~tspsim.outputs.viewer.panels`), in two panels so NIC lines never cover the
   fabric's.

:func:`build_run_view` composes the panels and returns, besides the figure, the full-resolution data the
page needs to refine the view on zoom; :func:`build_timeline_figure` returns only the figure. Both are
pure (no I/O).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tspsim.engine.timeline import Timeline
from tspsim.outputs.export import SPAN_CATEGORIES, gpu_name, gpus_per_node, rank_ranges, rank_streams, select_ranks
from tspsim.outputs.viewer.decimate import decimate_steps, nice_width, raster_spans
from tspsim.outputs.viewer.panels import group_series, link_colour, link_groups, link_traces, link_view, memory_series
from tspsim.outputs.viewer.spans import SpanTable, collect_spans, raster_traces, span_traces
from tspsim.outputs.viewer.style import (
    BAR_LIMIT,
    DEFAULT_MAX_RANKS,
    EXACT_LIMIT,
    GAP_PX,
    HOVER_PX,
    LANE_PX,
    LINK_BIN_PX,
    LINKS_PX,
    MEMORY_PX,
    MEMORY_STYLE,
    OVERVIEW_PX,
    esc,
)

_PANEL_NAMES = {"fabric": "Node fabric", "nic": "NIC"}


@dataclass
class RunView:
    """What the page shows of one run: the figure, and the data to refine it on zoom."""

    figure_json: dict[str, Any]
    """The overview figure as plotly JSON (``{"data": [...], "layout": {...}}``), ready for ``json.dumps``."""
    refine: dict[str, Any]
    """JSON-able full-resolution data and trace indices for the page script (see :func:`build_run_view`)."""
    hover: list[list[str]] = field(default_factory=list)
    """Hover rows of every span in ``refine["spans"]`` order (empty in bar mode)."""

    @functools.cached_property
    def figure(self) -> go.Figure:
        """The figure as a validated plotly ``go.Figure`` (built on first use; the page does not need it)."""
        return go.Figure(self.figure_json)


@dataclass
class _Data:
    """The figure's traces, as plotly JSON dicts, each on the axes of its panel (row)."""

    traces: list[dict[str, Any]] = field(default_factory=list)

    def add(self, trace: dict[str, Any], row: int) -> int:
        """Append ``trace`` on panel ``row`` (1-based); returns its index."""
        suffix = "" if row == 1 else str(row)
        self.traces.append({**trace, "xaxis": f"x{suffix}", "yaxis": f"y{suffix}"})
        return len(self.traces) - 1


@dataclass
class _Memory:
    """The memory panel's state: ranks with memory events, their series, peaks and trace indices."""

    ranks: list[int]
    series: dict[int, tuple[np.ndarray, dict[str, np.ndarray], int]]
    peak_gb: dict[int, float]
    first: int | None
    used: list[str]
    traces: dict[int, list[int]] = field(default_factory=dict)
    y_top: float = 1.0


def build_timeline_figure(entry: dict[str, Any], timeline: Timeline, ranks: Sequence[int] | None = None, *,
                          memory_rank: int | None = None, bar_limit: int = BAR_LIMIT,
                          exact_limit: int = EXACT_LIMIT) -> go.Figure:
    """The figure of :func:`build_run_view` alone (same arguments)."""
    return build_run_view(entry, timeline, ranks, memory_rank=memory_rank, bar_limit=bar_limit,
                          exact_limit=exact_limit).figure


def build_run_view(entry: dict[str, Any], timeline: Timeline, ranks: Sequence[int] | None = None, *,
                   memory_rank: int | None = None, bar_limit: int = BAR_LIMIT, exact_limit: int = EXACT_LIMIT,
                   overview_px: int = OVERVIEW_PX) -> RunView:
    """Build the figure of one run (layout in the module docstring) and the data to refine it. Pure.

    Args:
        entry: the run's stable entry; used for the title and the HBM line (``hbm_gb``).
        timeline: the run's timeline.
        ranks: simulated ranks to show (default: the first :data:`DEFAULT_MAX_RANKS` simulated ranks).
        memory_rank: GPU whose memory is shown first (default: the shown rank with the highest peak).
        bar_limit: above this many shown spans, draw one line path per category instead of bars.
        exact_limit: above this many shown spans, decimate the overview per pixel column.
        overview_px: pixel columns assumed for the overview (the page refines to the real width on zoom).

    ``refine`` holds ``end_ms``, ``spans`` (None when every span is drawn as a bar; else the span columns
    ``lane``, ``start_ns_deltas``, ``dur_ns``, ``cat``, the lane names ``where``, the categories with their
    trace indices ``cats`` and ``exact_limit``), ``links`` (per group: its two trace indices and exact
    series) with ``link_panels`` (title annotation index and prefix per panel), and ``memory`` (per rank:
    trace indices, full series, peak index). Times are whole nanoseconds as deltas (:func:`ns_deltas`).

    Raises:
        TspsimError: a requested rank was not simulated.
    """
    tl = timeline
    end_ms = tl.end_s * 1e3
    x_end = end_ms * 1.005 if end_ms > 0 else 1.0
    per_node = gpus_per_node(tl)
    shown = select_ranks(tl, ranks, DEFAULT_MAX_RANKS)
    names = {r: gpu_name(r, per_node) for r in shown}
    streams = rank_streams(tl)
    lanes = [(r, s) for r in shown for s in streams.get(r, ["compute"])]
    table = collect_spans(tl, lane_of={key: i for i, key in enumerate(lanes)}, names=names)
    lines = len(table) > bar_limit
    decimated = lines and len(table) > exact_limit
    step = HOVER_PX * x_end / overview_px
    mem = _memory_state(tl, shown, memory_rank, tl.end_s)
    groups = [(g, s) for g in link_groups(tl, shown, per_node) if (s := group_series(tl, g)) is not None]
    panels = [p for p in ("fabric", "nic") if any(g.panel == p for g, _ in groups)]
    width = nice_width(x_end / max(1, overview_px // LINK_BIN_PX))
    views = [(g, x, y, link_view(x, y, 0.0, x_end, width)) for g, (x, y) in groups]
    exact = {p: all(len(v[2]) == 0 for g, _, _, v in views if g.panel == p) for p in panels}

    panel_px = [max(180, LANE_PX * len(lanes)), MEMORY_PX] + [LINKS_PX] * len(panels)
    plot_px = sum(panel_px) + GAP_PX * (len(panel_px) - 1)
    lanes_prefix = f"Streams of ranks {rank_ranges(shown)} ({len(table):,} spans; "
    how = "decimated per pixel: zoom in to see each span" if decimated else "every one drawn"
    titles = [f"{lanes_prefix}{how})", _memory_title(mem.first, names)]
    titles += [f"{_PANEL_NAMES[p]} utilisation (% of capacity): "
               + ("exact (every change drawn)" if exact[p] else _bin_text(width)) for p in panels]
    fig = make_subplots(rows=len(panel_px), cols=1, shared_xaxes=True, vertical_spacing=GAP_PX / plot_px,
                        row_heights=[p / plot_px for p in panel_px], subplot_titles=titles)
    where = [f"{names[r]} (rank {r}) · {s}" for r, s in lanes]
    refine: dict[str, Any] = {"end_ms": end_ms, "x_end": x_end, "px": overview_px, "bin_px": LINK_BIN_PX,
                              "spans": None, "links": [], "link_panels": [], "memory": []}
    if decimated:
        segments = raster_spans(table.lane, table.start, table.end, table.cat, len(table.cats), 0.0, x_end,
                                overview_px)
        traces = raster_traces(table, segments, where, step)
    else:
        traces = span_traces(table, step if lines else None)
    data = _Data()
    for trace in traces:
        data.add(trace, 1)
    if lines:
        refine["spans"] = dict(_span_refine(table, where, exact_limit), decimated=decimated, title_prefix=lanes_prefix)
    hbm = float(entry.get("hbm_gb") or 0.0)
    _add_memory_panel(data, mem, names, hbm, end_ms, x_end, overview_px, refine)
    for k, panel in enumerate(panels):
        row = 3 + k
        refine["link_panels"].append({"annotation": 2 + k, "prefix": f"{_PANEL_NAMES[panel]} utilisation "
                                                                      "(% of capacity): "})
        for i, (g, x, y, (xs, mean, mx, max_y)) in enumerate(v for v in views if v[0].panel == panel):
            refine["links"].append({"max": len(data.traces), "mean": len(data.traces) + 1, "panel": k,
                                    "x_ns_deltas": ns_deltas(x), "y": _rounded(y, 4)})
            for trace in link_traces(g, link_colour(i), f"legend{row}", xs, mean, mx, max_y):
                data.add(trace, row)
    _style_axes(fig, lanes, names, shown, mem, len(panel_px), x_end)
    _add_legends_and_menus(fig, mem, names, hbm, panels)
    title = " · ".join(str(x) for x in (entry.get("schedule", "?"), entry.get("model", "?"),
                                         entry.get("topology", tl.topology_name), entry.get("mode", ""),
                                         f"seq {entry.get('seq_len', '?')}"))
    fig.update_layout(
        template="plotly_white", height=plot_px + 150, margin={"l": 170, "r": 240, "t": 70, "b": 60},
        title={"text": esc(title), "x": 0.0, "xref": "paper", "xanchor": "left", "font": {"size": 15}},
        barmode="overlay", bargap=0, hovermode="closest", dragmode="zoom",
        hoverlabel={"font": {"size": 12}, "align": "left"})
    for ann in fig.layout.annotations:
        ann.update(x=0, xanchor="left", font={"size": 13})
    return RunView({"data": data.traces, "layout": fig.layout.to_plotly_json()}, refine, table.hover if lines else [])


def _rounded(a: np.ndarray, digits: int) -> list[float]:
    return np.round(np.asarray(a, dtype=np.float64), digits).tolist()


def ns_deltas(times_ms: np.ndarray) -> list[int]:
    """Times (ms) as whole nanoseconds, each minus the previous one (the page script adds them up again).

    Short, repetitive text that compresses far better than binary floats.
    """
    ns = np.round(np.asarray(times_ms, dtype=np.float64) * 1e6).astype(np.int64)
    return np.diff(ns, prepend=0).tolist()


def _bin_text(width_ms: float) -> str:
    """``mean and max per 20 ms bin`` (µs below a millisecond)."""
    text = f"{width_ms:g} ms" if width_ms >= 1 else f"{width_ms * 1e3:g} µs"
    return f"mean and max per {text} bin"


def _span_refine(table: SpanTable, where: list[str], exact_limit: int) -> dict[str, Any]:
    """Span columns and trace indices the page needs to redraw the lanes at any zoom."""
    cats = [{"key": esc(c), "label": esc(SPAN_CATEGORIES.get(c, (c, ""))[0]), "trace": i}
            for i, c in enumerate(table.cats)]
    start_ns = np.round(table.start * 1e6).astype(np.int64)
    return {"cats": cats, "lane": table.lane.tolist(), "start_ns_deltas": ns_deltas(table.start),
            "dur_ns": (np.round(table.end * 1e6).astype(np.int64) - start_ns).tolist(), "cat": table.cat.tolist(),
            "where": [esc(w) for w in where],
            "exact_limit": exact_limit, "hover_px": HOVER_PX}


# --------------------------------------------------------------------------------------------- memory
def _memory_state(tl: Timeline, shown: Sequence[int], memory_rank: int | None, end_s: float) -> _Memory:
    ranks = [r for r in shown if tl.memory.get(r)]
    series = {r: memory_series(tl, r, end_s) for r in ranks}
    peak_gb = {r: float(sum(series[r][1].values())[series[r][2]]) for r in ranks}
    if memory_rank not in series:
        memory_rank = max(ranks, key=lambda r: (peak_gb[r], -r)) if ranks else None
    used = [c for c in MEMORY_STYLE if any(np.any(series[r][1][c]) for r in ranks)]
    return _Memory(ranks, series, peak_gb, memory_rank, used)


def _memory_title(rank: int | None, names: dict[int, str]) -> str:
    if rank is None:
        return "Memory"
    return f"Memory of {names[rank]} (rank {rank}) — choose the GPU with the menu"


def _add_memory_panel(data: _Data, mem: _Memory, names: dict[int, str], hbm: float, end_ms: float,
                      x_end: float, px: int, refine: dict[str, Any]) -> None:
    """Every shown rank's stack (only the first visible, decimated), its peak marker, and the HBM line."""
    y_top = 0.0
    for r in mem.ranks:
        times, per_cat, peak = mem.series[r]
        total = np.zeros_like(times) + sum(per_cat[c] for c in mem.used)
        vis = r == mem.first
        # Only the GPU shown first carries data in the figure; the page fills the others after the first
        # plot (from the full series below), keeping the figure small.
        keep = decimate_steps(times, total, 0.0, x_end, px, always=(peak,)) if vis else np.zeros(0, np.int64)
        idx = []
        for cat in mem.used:
            label, colour = MEMORY_STYLE[cat]
            idx.append(data.add({
                "type": "scatter", "x": _rounded(times[keep], 6), "y": _rounded(per_cat[cat][keep], 6),
                "customdata": _rounded(total[keep], 6), "mode": "lines",
                "line": {"shape": "hv", "width": 0.6, "color": colour}, "fillcolor": colour, "stackgroup": f"mem{r}",
                "name": label, "legendgroup": f"mem-{cat}", "legend": "legend2", "visible": vis, "showlegend": vis,
                "hovertemplate": f"{esc(label)}: %{{y:.3f}} GB · total %{{customdata:.3f}} GB<br>at %{{x:.4f}} ms"
                                 f"<extra>{esc(names[r])}</extra>"}, 2))
        y_top = max(y_top, mem.peak_gb[r])
        over = " — exceeds HBM (OOM)" if hbm and mem.peak_gb[r] > hbm else ""
        idx.append(data.add({
            "type": "scatter", "x": [float(times[peak])], "y": [mem.peak_gb[r]], "mode": "markers+text",
            "text": [f"peak {mem.peak_gb[r]:.2f} GB{over}"], "textposition": "top center",
            "marker": {"symbol": "triangle-down", "size": 12, "color": "#000000"}, "name": "peak",
            "legend": "legend2", "visible": vis, "showlegend": False,
            "hovertemplate": f"peak of {esc(names[r])}: %{{y:.3f}} GB at %{{x:.4f}} ms<extra></extra>"}, 2))
        mem.traces[r] = idx
        refine["memory"].append({"traces": idx[:-1], "x_ns_deltas": ns_deltas(times), "peak": peak,
                                 "ys": [_rounded(per_cat[c], 6) for c in mem.used]})
    if hbm > 0:
        data.add({"type": "scatter", "x": [0.0, end_ms], "y": [hbm, hbm], "mode": "lines",
                  "line": {"color": "#B00020", "width": 2, "dash": "dash"}, "name": f"HBM capacity {hbm:.0f} GB",
                  "legend": "legend2", "hovertemplate": f"HBM capacity {hbm:.0f} GB<extra></extra>"}, 2)
    mem.y_top = max(y_top, hbm) * 1.12 or 1.0


# ---------------------------------------------------------------------------------------------- layout
def _style_axes(fig: go.Figure, lanes: list[tuple[int, str]], names: dict[int, str], shown: Sequence[int],
                mem: _Memory, nrows: int, x_end: float) -> None:
    """Lanes top-down with GPUs shaded alternately, GB and % axes, the range slider at the bottom."""
    lane_labels = [esc(f"{names[r]} · {s}" if i == 0 or lanes[i - 1][0] != r else s)
                   for i, (r, s) in enumerate(lanes)]
    fig.update_yaxes(row=1, col=1, tickmode="array", tickvals=list(range(len(lanes))), ticktext=lane_labels,
                     range=[len(lanes) - 0.5, -0.5], showgrid=False, zeroline=False, tickfont={"size": 11})
    fig.update_yaxes(row=2, col=1, title_text="GB", range=[0, mem.y_top])
    for row in range(3, nrows + 1):
        fig.update_yaxes(row=row, col=1, title_text="%", range=[0, 105], fixedrange=True)
    fig.update_xaxes(showspikes=True, spikemode="across", spikesnap="cursor", spikethickness=1,
                     spikedash="dot", spikecolor="#777777", showline=True, linecolor="#BBBBBB",
                     range=[0, x_end])
    fig.update_xaxes(row=nrows, col=1, title_text="time (ms)")
    shade = False
    for r in shown:
        rows = [i for i, (rr, _) in enumerate(lanes) if rr == r]
        if shade and rows:
            fig.add_shape(type="rect", xref="x domain", x0=0, x1=1, yref="y", y0=rows[0] - 0.5,
                          y1=rows[-1] + 0.5, fillcolor="#EEF1F5", line={"width": 0}, layer="below")
        shade = not shade


def _add_legends_and_menus(fig: go.Figure, mem: _Memory, names: dict[int, str], hbm: float,
                           panels: list[str]) -> None:
    """One legend beside each panel; the memory panel's GPU dropdown (opening upwards) and y-scale buttons."""
    nrows = 2 + len(panels)
    domains = [fig.layout[f"yaxis{'' if i == 0 else i + 1}"].domain for i in range(nrows)]
    legend_common = {"x": 1.01, "xanchor": "left", "yanchor": "top", "bgcolor": "rgba(255,255,255,0.8)",
                     "font": {"size": 11}, "groupclick": "togglegroup"}
    legends: dict[str, Any] = {"legend": {**legend_common, "y": domains[0][1], "title": {"text": "spans"}},
                               "legend2": {**legend_common, "y": domains[1][1], "title": {"text": "memory"}}}
    for k, panel in enumerate(panels):
        legends[f"legend{3 + k}"] = {**legend_common, "y": domains[2 + k][1],
                                     "title": {"text": "NICs" if panel == "nic" else "node fabric"}}
    menus = []
    if len(mem.ranks) > 1 and mem.first is not None:
        all_idx = [i for r in mem.ranks for i in mem.traces[r]]
        buttons = []
        for r in mem.ranks:
            # Per rank: its category traces, then its peak marker (never in the legend).
            visible = [rr == r for rr in mem.ranks for _ in mem.traces[rr]]
            legend = [rr == r and k < len(mem.used) for rr in mem.ranks for k in range(len(mem.traces[rr]))]
            buttons.append({"label": esc(f"{names[r]} (rank {r})"), "method": "update",
                            "args": [{"visible": visible, "showlegend": legend},
                                     {"annotations[1].text": esc(_memory_title(r, names))}, all_idx]})
        # Opens upwards over the taller lanes panel, so a long list of GPUs is never clipped by the page.
        menus.append({"type": "dropdown", "direction": "up", "buttons": buttons,
                      "active": mem.ranks.index(mem.first), "x": 1.01, "xanchor": "left", "y": domains[1][0],
                      "yanchor": "bottom", "showactive": True, "font": {"size": 11}, "bgcolor": "#FFFFFF"})
    if mem.ranks and hbm > 0:
        # The stack can be small next to the HBM line: offer a y scale that fits the usage.
        fit = max(mem.peak_gb.values()) * 1.15 or 1.0
        menus.append({"type": "buttons", "direction": "right", "showactive": True, "active": 0,
                      "x": 1.0, "xanchor": "right", "y": domains[1][1], "yanchor": "bottom",
                      "pad": {"b": 4}, "font": {"size": 11}, "bgcolor": "#FFFFFF",
                      "buttons": [{"label": "scale: HBM", "method": "relayout",
                                   "args": [{"yaxis2.range": [0, mem.y_top]}]},
                                  {"label": "scale: fit usage", "method": "relayout",
                                   "args": [{"yaxis2.range": [0, fit]}]}]})
    fig.update_layout(updatemenus=menus, **legends)

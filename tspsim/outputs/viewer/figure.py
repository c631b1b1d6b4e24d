"""The plotly figure of one run: stream lanes, memory and link utilization on one shared time axis.

All panels share the time axis in **milliseconds** (``make_subplots(shared_xaxes=True)``, so zoom, pan
and the range slider act on every panel):

1. **Stream lanes** (:mod:`~tspsim.outputs.viewer.spans`) — one lane per (GPU, stream), compute first.
2. **Memory** of one GPU — stacked per-category areas, the HBM capacity line and the peak marked; a
   dropdown switches the GPU, buttons switch the y scale between HBM and the usage.
3. **Link utilization** (when the run recorded links) — node fabric and NIC means per node
   (:func:`~tspsim.outputs.viewer.panels.link_groups`).

:func:`build_timeline_figure` composes the panels; it is pure (no I/O).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tspsim.engine.timeline import Timeline
from tspsim.outputs.export import gpu_name, gpus_per_node, rank_ranges, rank_streams, select_ranks
from tspsim.outputs.viewer.panels import link_groups, memory_series, step_mean
from tspsim.outputs.viewer.spans import collect_spans, span_traces
from tspsim.outputs.viewer.style import (
    BAR_LIMIT,
    DEFAULT_MAX_RANKS,
    GAP_PX,
    LANE_PX,
    LINK_COLOURS,
    LINKS_PX,
    MEMORY_PX,
    MEMORY_STYLE,
    esc,
)


@dataclass
class _Memory:
    """The memory panel's state: ranks with memory events, their series, peaks and trace indices."""

    ranks: list[int]
    """Shown ranks that have memory events."""
    series: dict[int, tuple[np.ndarray, dict[str, np.ndarray], int]]
    """Per rank: :func:`~tspsim.outputs.viewer.panels.memory_series`."""
    peak_gb: dict[int, float]
    """Per rank: peak total GB."""
    first: int | None
    """The rank shown first."""
    used: list[str]
    """Categories that are non-zero on some rank (stacking order)."""
    traces: dict[int, list[int]]
    """Per rank: indices of its category traces then its peak marker in ``fig.data``."""
    y_top: float = 1.0
    """Upper end of the y axis on the HBM scale (GB)."""


def build_timeline_figure(entry: dict[str, Any], timeline: Timeline, ranks: Sequence[int] | None = None, *,
                          memory_rank: int | None = None, bar_limit: int = BAR_LIMIT) -> go.Figure:
    """Build the plotly figure of one run (layout in the module docstring). Pure: no I/O.

    Args:
        entry: the run's stable entry (design.md §4); used for the title and the HBM line (``hbm_gb``).
        timeline: the run's timeline.
        ranks: simulated ranks to show (default: the first :data:`DEFAULT_MAX_RANKS` simulated ranks).
        memory_rank: GPU whose memory is shown first (default: the shown rank with the highest peak).
        bar_limit: above this many shown spans, draw WebGL line segments instead of bars.

    Raises:
        TspsimError: a requested rank was not simulated.
    """
    tl = timeline
    per_node = gpus_per_node(tl)
    shown = select_ranks(tl, ranks, DEFAULT_MAX_RANKS)
    names = {r: gpu_name(r, per_node) for r in shown}
    streams = rank_streams(tl)
    lanes = [(r, s) for r in shown for s in streams.get(r, ["compute"])]
    lane_of = {key: i for i, key in enumerate(lanes)}

    spans = collect_spans(tl, lane_of, names)
    n_spans = sum(len(c.start) for c in spans.values())
    use_gl = n_spans > bar_limit
    has_links = bool(tl.links)
    mem = _memory_state(tl, shown, memory_rank)

    panel_px = [max(180, LANE_PX * len(lanes)), MEMORY_PX] + ([LINKS_PX] if has_links else [])
    plot_px = sum(panel_px) + GAP_PX * (len(panel_px) - 1)
    titles = [f"Streams of ranks {rank_ranges(shown)} ({'WebGL' if use_gl else 'bars'}, {n_spans:,} spans)",
              _memory_title(mem.first, names)]
    if has_links:
        titles.append("Link utilization (% of capacity)")
    fig = make_subplots(rows=len(panel_px), cols=1, shared_xaxes=True, vertical_spacing=GAP_PX / plot_px,
                        row_heights=[p / plot_px for p in panel_px], subplot_titles=titles)
    for trace in span_traces(spans, use_gl):
        fig.add_trace(trace, row=1, col=1)
    hbm = float(entry.get("hbm_gb") or 0.0)
    _add_memory_panel(fig, mem, names, hbm, tl.end_s * 1e3)
    if has_links:
        _add_link_panel(fig, tl, shown, per_node)
    _style_axes(fig, tl, lanes, names, shown, mem, has_links)
    _add_legends_and_menus(fig, mem, names, hbm, has_links)
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
    return fig


# --------------------------------------------------------------------------------------------- memory
def _memory_state(tl: Timeline, shown: Sequence[int], memory_rank: int | None) -> _Memory:
    ranks = [r for r in shown if tl.memory.get(r)]
    series = {r: memory_series(tl, r) for r in ranks}
    peak_gb = {r: float(sum(series[r][1].values())[series[r][2]]) for r in ranks}
    if memory_rank not in series:
        memory_rank = max(ranks, key=lambda r: (peak_gb[r], -r)) if ranks else None
    used = [c for c in MEMORY_STYLE if any(np.any(series[r][1][c]) for r in ranks)]
    return _Memory(ranks, series, peak_gb, memory_rank, used, {})


def _memory_title(rank: int | None, names: dict[int, str]) -> str:
    if rank is None:
        return "Memory"
    return f"Memory of {names[rank]} (rank {rank}) — choose the GPU with the menu"


def _add_memory_panel(fig: go.Figure, mem: _Memory, names: dict[int, str], hbm: float, end_ms: float) -> None:
    """Every shown rank's stack (only the first visible), its peak marker, and the HBM line."""
    y_top = 0.0
    for r in mem.ranks:
        times, per_cat, peak = mem.series[r]
        vis = r == mem.first
        idx = []
        for cat in mem.used:
            label, colour = MEMORY_STYLE[cat]
            idx.append(len(fig.data))
            fig.add_trace(go.Scatter(
                x=times, y=per_cat[cat], mode="lines", line={"shape": "hv", "width": 0.6, "color": colour},
                fillcolor=colour, stackgroup=f"mem{r}", name=label, legendgroup=f"mem-{cat}",
                legend="legend2", visible=vis, showlegend=vis,
                hovertemplate=f"{esc(label)}: %{{y:.3f}} GB<br>at %{{x:.4f}} ms"
                              f"<extra>{esc(names[r])}</extra>"),
                row=2, col=1)
        y_top = max(y_top, mem.peak_gb[r])
        idx.append(len(fig.data))
        over = " — exceeds HBM (OOM)" if hbm and mem.peak_gb[r] > hbm else ""
        fig.add_trace(go.Scatter(
            x=[times[peak]], y=[mem.peak_gb[r]], mode="markers+text", text=[f"peak {mem.peak_gb[r]:.2f} GB{over}"],
            textposition="top center", marker={"symbol": "triangle-down", "size": 12, "color": "#000000"},
            name="peak", legend="legend2", visible=vis, showlegend=False,
            hovertemplate=f"peak of {esc(names[r])}: %{{y:.3f}} GB at %{{x:.4f}} ms<extra></extra>"),
            row=2, col=1)
        mem.traces[r] = idx
    if hbm > 0:
        fig.add_trace(go.Scatter(
            x=[0.0, end_ms], y=[hbm, hbm], mode="lines",
            line={"color": "#B00020", "width": 2, "dash": "dash"},
            name=f"HBM capacity {hbm:.0f} GB", legend="legend2",
            hovertemplate=f"HBM capacity {hbm:.0f} GB<extra></extra>"), row=2, col=1)
    mem.y_top = max(y_top, hbm) * 1.12 or 1.0


# ---------------------------------------------------------------------------------------------- links
def _add_link_panel(fig: go.Figure, tl: Timeline, shown: Sequence[int], per_node: int) -> None:
    end_ms = tl.end_s * 1e3
    for i, (label, links, dash, on) in enumerate(link_groups(tl, shown, per_node)):
        sers = [tl.links[k] for k in links if tl.links.get(k)]
        if not sers:
            continue
        cap = sum(float(tl.link_meta[k]["capacity_Bps"]) for k in links)
        x, y = step_mean(sers, cap)
        x = np.append(x, end_ms)
        y = np.append(y, y[-1] if len(y) else 0.0)
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines", line={"shape": "hv", "width": 1.4, "dash": dash,
                                          "color": LINK_COLOURS[i % len(LINK_COLOURS)]},
            name=esc(label), legend="legend3", visible=True if on else "legendonly",
            hovertemplate=f"{esc(label)}<br>%{{y:.1f}} % at %{{x:.4f}} ms<extra></extra>"), row=3, col=1)


# ---------------------------------------------------------------------------------------------- layout
def _style_axes(fig: go.Figure, tl: Timeline, lanes: list[tuple[int, str]], names: dict[int, str],
                shown: Sequence[int], mem: _Memory, has_links: bool) -> None:
    """Lanes top-down with GPUs shaded alternately, GB and % axes, the range slider at the bottom."""
    end_ms = tl.end_s * 1e3
    x_end = end_ms * 1.005 if end_ms > 0 else 1.0
    nrows = 3 if has_links else 2
    lane_labels = [esc(f"{names[r]} · {s}" if i == 0 or lanes[i - 1][0] != r else s)
                   for i, (r, s) in enumerate(lanes)]
    fig.update_yaxes(row=1, col=1, tickmode="array", tickvals=list(range(len(lanes))), ticktext=lane_labels,
                     range=[len(lanes) - 0.5, -0.5], showgrid=False, zeroline=False, tickfont={"size": 11})
    fig.update_yaxes(row=2, col=1, title_text="GB", range=[0, mem.y_top])
    if has_links:
        fig.update_yaxes(row=3, col=1, title_text="%", range=[0, 105], fixedrange=True)
    fig.update_xaxes(showspikes=True, spikemode="across", spikesnap="cursor", spikethickness=1,
                     spikedash="dot", spikecolor="#777777", showline=True, linecolor="#BBBBBB",
                     range=[0, x_end])
    fig.update_xaxes(row=nrows, col=1, title_text="time (ms)",
                     rangeslider={"visible": True, "thickness": 0.045, "range": [0, x_end]})
    shade = False
    for r in shown:
        rows = [i for i, (rr, _) in enumerate(lanes) if rr == r]
        if shade and rows:
            fig.add_shape(type="rect", xref="x domain", x0=0, x1=1, yref="y", y0=rows[0] - 0.5,
                          y1=rows[-1] + 0.5, fillcolor="#EEF1F5", line={"width": 0}, layer="below")
        shade = not shade


def _add_legends_and_menus(fig: go.Figure, mem: _Memory, names: dict[int, str], hbm: float,
                           has_links: bool) -> None:
    """One legend beside each panel; the memory panel's GPU dropdown and y-scale buttons."""
    nrows = 3 if has_links else 2
    domains = [fig.layout[f"yaxis{'' if i == 0 else i + 1}"].domain for i in range(nrows)]
    legend_common = {"x": 1.01, "xanchor": "left", "yanchor": "top", "bgcolor": "rgba(255,255,255,0.8)",
                     "font": {"size": 11}, "groupclick": "togglegroup"}
    legends: dict[str, Any] = {"legend": {**legend_common, "y": domains[0][1], "title": {"text": "spans"}},
                               "legend2": {**legend_common, "y": domains[1][1], "title": {"text": "memory"}}}
    if has_links:
        legends["legend3"] = {**legend_common, "y": domains[2][1], "title": {"text": "links"}}
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
        menus.append({"type": "dropdown", "buttons": buttons, "active": mem.ranks.index(mem.first),
                      "x": 1.01, "xanchor": "left", "y": domains[1][0], "yanchor": "bottom",
                      "showactive": True, "font": {"size": 11}, "bgcolor": "#FFFFFF"})
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

"""Interactive timeline viewer: one self-contained HTML file (design.md §6, conventions.md (d)).

Layout of one run's figure (plotly, :func:`build_timeline_figure`), all panels on one shared time axis in
**milliseconds** (``make_subplots(shared_xaxes=True)``, so zoom, pan and the range slider act on every panel):

1. **Stream lanes** — one lane per (GPU, stream), compute first (node → GPU → stream, top-down). Spans are
   coloured by category (:data:`tspsim.export.SPAN_CATEGORIES`: GEMM, attention, elementwise, optimizer,
   each collective kind, P2P); one trace per category so the legend toggles categories. Hover shows the op
   name, GPU, stream, layer, phase, start, duration and FLOPs (compute) or bytes (communication).
   Up to :data:`BAR_LIMIT` spans are drawn as ``go.Bar`` (exact SVG bars); beyond that as WebGL
   ``go.Scattergl`` line segments (``x = [s0, e0, NaN, s1, …]``, thick lines) plus a transparent
   midpoint-marker trace per category that carries the hover text — conventions.md (d) "Which primitive".
2. **Memory** of one GPU — stacked per-category areas (PyTorch memory-timeline order and colours,
   conventions.md (b)), the HBM capacity line and the peak marked. A dropdown switches the GPU.
3. **Link utilization** (when the run recorded links) — node fabric (xGMI / NVLink) mean utilization per
   node, NIC transmit / receive means per node, and the NIC of the first shown rank of each node as a
   representative single link.

Which ranks: by default the simulated ranks, at most :data:`DEFAULT_MAX_RANKS` (a 1,024-GPU run is simulated
as one replica, so that is one replica's ranks); ``ranks=`` picks others among the simulated ones.

The page (:func:`render_html` / :func:`write_html`) embeds plotly.js (works offline), shows a header with the
run's configuration and headline metrics, and — when given several runs (several schedules) — a run selector;
each run's figure is built in the browser only when selected (one WebGL context at a time). Every string that
comes from a result file is ``html.escape``-d wherever it reaches HTML, and plotly's JSON escapes ``<``/``>``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tspsim import __version__
from tspsim.atomic import write_text_atomic
from tspsim.errors import TspsimError
from tspsim.export import (
    SPAN_CATEGORIES,
    gpu_name,
    gpus_per_node,
    in_run,
    rank_ranges,
    rank_streams,
    select_ranks,
    span_category,
)
from tspsim.opgraph import MEMORY_CATEGORIES, Op
from tspsim.timeline import Timeline

BAR_LIMIT = 4000
"""Above this many shown spans, lanes switch from ``go.Bar`` to WebGL line segments (plotly.js #4922)."""
HOVER_LIMIT = 300_000
"""At most this many hover markers in WebGL mode; beyond it the longest spans keep theirs."""
DEFAULT_MAX_RANKS = 16
"""Ranks shown when none are chosen."""
LANE_PX = 22
"""Height of one lane in pixels."""
MEMORY_PX = 300
"""Height of the memory panel in pixels."""
LINKS_PX = 230
"""Height of the link-utilization panel in pixels."""
GAP_PX = 70
"""Vertical gap between panels in pixels (room for the panel titles)."""

# Memory categories in PyTorch memory-timeline stacking order (parameters, optimizer state, temporary,
# activations, gradients), then tspsim's own; PyTorch's colours where it has the category.
MEMORY_STYLE: dict[str, tuple[str, str]] = {
    "reserved": ("runtime reserve", "#BDBDBD"),
    "parameters": ("parameters", "#1B7837"),
    "optimizer_state": ("optimizer state", "#DAA520"),
    "temporary": ("temporary", "#9370DB"),
    "activations": ("activations", "#D62728"),
    "gradients": ("gradients", "#3050C8"),
    "comm_buffers": ("comm buffers", "#17A2B8"),
    "kv_cache": ("KV cache", "#8C564B"),
}
assert set(MEMORY_STYLE) == set(MEMORY_CATEGORIES)

_FABRIC_KINDS = {"xgmi": "xGMI", "nvlink_up": "NVLink", "nvlink_down": "NVLink"}
_LINK_COLOURS = ("#4C78A8", "#E45756", "#54A24B", "#B279A2", "#F58518", "#72B7B2", "#9D755D", "#EECA3B")

PLOTLY_CONFIG: dict[str, Any] = {"displaylogo": False, "scrollZoom": True, "responsive": True,
                                 "toImageButtonOptions": {"format": "png", "scale": 2}}


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


# ---------------------------------------------------------------------------------------------- spans
@dataclass
class _CategorySpans:
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
    return [_esc(op.name), _esc(where), _esc(f"{layer} · {op.phase}"), timing, _esc(size)]


_HOVER_TEMPLATE = ("<b>%{customdata[0]}</b><br>%{customdata[1]}<br>%{customdata[2]}<br>%{customdata[3]}"
                   "<br>%{customdata[4]}<extra>%{fullData.name}</extra>")


def _collect_spans(tl: Timeline, lane_of: dict[tuple[int, str], int], names: dict[int, str]
                   ) -> dict[str, _CategorySpans]:
    out: dict[str, _CategorySpans] = {}
    ops = tl.ops
    for op_id, start, end in tl.spans:
        op = ops[op_id]
        lane = lane_of.get((op.rank, op.stream))
        if lane is None:
            continue
        cat = span_category(op)
        if cat is None:
            continue
        c = out.setdefault(cat, _CategorySpans())
        c.lane.append(lane)
        c.start.append(start * 1e3)
        c.end.append(end * 1e3)
        c.hover.append(_hover_row(op, start, end, f"{names[op.rank]} (rank {op.rank}) · {op.stream}", tl))
    return out


def _category_order(cats: Sequence[str]) -> list[str]:
    known = [c for c in SPAN_CATEGORIES if c in cats]
    return known + sorted(c for c in cats if c not in SPAN_CATEGORIES)


def _span_traces(spans: dict[str, _CategorySpans], use_gl: bool) -> list[go.BaseTraceType]:
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


# --------------------------------------------------------------------------------------------- memory
def memory_series(tl: Timeline, rank: int) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """Step series of ``rank``'s memory: (times ms, {category: GB after each event}, index of the peak).

    One point per memory event (not coalesced, so a same-instant allocate-then-free still shows), plus a
    final point at the end of the run. The peak index is the first maximum of the total, as
    :meth:`~tspsim.timeline.Timeline.peak_memory` defines it.
    """
    events = tl.memory.get(rank, [])
    n = len(events)
    times = np.empty(n + 1)
    per_cat = {cat: np.zeros(n + 1) for cat in MEMORY_CATEGORIES}
    cur = dict.fromkeys(MEMORY_CATEGORIES, 0)
    for i, (t, cat, delta) in enumerate(events):
        cur[cat] += delta
        times[i] = t * 1e3
        for k, v in cur.items():
            if v:
                per_cat[k][i] = v / 1e9
    times[n] = max(tl.end_s * 1e3, times[n - 1] if n else 0.0)
    for k in per_cat:
        per_cat[k][n] = per_cat[k][n - 1] if n else 0.0
    total = sum(per_cat.values())
    peak = int(np.argmax(total)) if n else 0
    return times, per_cat, peak


# ---------------------------------------------------------------------------------------------- links
def _step_mean(series: list[list[tuple[float, float]]], capacity: float) -> tuple[np.ndarray, np.ndarray]:
    """Sum of several step series (bytes/s) over their union of change times, as % of ``capacity``."""
    times = np.unique(np.concatenate([np.asarray([t for t, _ in s], dtype=np.float64) for s in series]))
    total = np.zeros_like(times)
    for s in series:
        ts = np.asarray([t for t, _ in s], dtype=np.float64)
        vs = np.asarray([v for _, v in s], dtype=np.float64)
        idx = np.searchsorted(ts, times, side="right") - 1
        total += np.where(idx >= 0, vs[np.clip(idx, 0, None)], 0.0)
    return times * 1e3, 100.0 * total / capacity


def _link_groups(tl: Timeline, ranks: Sequence[int], per_node: int) -> list[tuple[str, list[int], str, bool]]:
    """(label, link indices, dash, shown at first) groups of the link panel, for at most 4 nodes.

    Per node: the node fabric's mean utilization and the NICs' mean transmit utilization are shown; the NICs'
    mean receive utilization and the first shown rank's own NIC (a representative single link) start hidden
    in the legend (one click shows them).
    """
    nodes = sorted({r // per_node for r in ranks})[:4]
    first_rank = {n: min(r for r in ranks if r // per_node == n) for n in nodes}
    groups: list[tuple[str, list[int], str, bool]] = []
    for n in nodes:
        fabric: list[int] = []
        nic_up: list[int] = []
        nic_down: list[int] = []
        rep: dict[str, int] = {}
        for idx, meta in sorted(tl.link_meta.items()):
            kind = str(meta.get("kind", ""))
            if kind in _FABRIC_KINDS:
                gpu = str(meta["src"] if str(meta["src"]).startswith("g") else meta["dst"])
                if gpu[1:].isdigit() and int(gpu[1:]) // per_node == n:
                    fabric.append(idx)
            elif kind in ("nic_up", "nic_down"):
                nic = str(meta["src"] if kind == "nic_up" else meta["dst"])
                if not nic[3:].isdigit() or int(nic[3:]) // per_node != n:
                    continue
                (nic_up if kind == "nic_up" else nic_down).append(idx)
                if int(nic[3:]) == first_rank[n]:
                    rep[kind] = idx
        fabric_name = next((_FABRIC_KINDS[str(tl.link_meta[i]["kind"])] for i in fabric), "fabric")
        if fabric:
            groups.append((f"node{n:02d} {fabric_name} (mean of {len(fabric)} links)", fabric, "solid", True))
        if nic_up:
            groups.append((f"node{n:02d} NICs tx (mean of {len(nic_up)})", nic_up, "dash", True))
        if nic_down:
            groups.append((f"node{n:02d} NICs rx (mean of {len(nic_down)})", nic_down, "dot", False))
        for kind, label in (("nic_up", "tx"), ("nic_down", "rx")):
            if kind in rep:
                groups.append((f"NIC of rank {first_rank[n]} {label}", [rep[kind]], "dashdot", False))
    return groups


# --------------------------------------------------------------------------------------------- figure
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
    lane_labels = [_esc(f"{names[r]} · {s}" if i == 0 or lanes[i - 1][0] != r else s)
                   for i, (r, s) in enumerate(lanes)]

    spans = _collect_spans(tl, lane_of, names)
    n_spans = sum(len(c.start) for c in spans.values())
    use_gl = n_spans > bar_limit
    has_links = bool(tl.links)
    end_ms = tl.end_s * 1e3

    lanes_px = max(180, LANE_PX * len(lanes))
    panel_px = [lanes_px, MEMORY_PX] + ([LINKS_PX] if has_links else [])
    plot_px = sum(panel_px) + GAP_PX * (len(panel_px) - 1)
    nrows = len(panel_px)

    mem_ranks = [r for r in shown if tl.memory.get(r)]
    series = {r: memory_series(tl, r) for r in mem_ranks}
    peak_gb = {r: float(sum(series[r][1].values())[series[r][2]]) for r in mem_ranks}
    if memory_rank not in series:
        memory_rank = max(mem_ranks, key=lambda r: (peak_gb[r], -r)) if mem_ranks else None

    def mem_title(r: int | None) -> str:
        if r is None:
            return "Memory"
        return f"Memory of {names[r]} (rank {r}) — choose the GPU with the menu"

    titles = [f"Streams of ranks {rank_ranges(shown)} ({'WebGL' if use_gl else 'bars'}, {n_spans:,} spans)",
              mem_title(memory_rank)]
    if has_links:
        titles.append("Link utilization (% of capacity)")
    fig = make_subplots(rows=nrows, cols=1, shared_xaxes=True, vertical_spacing=GAP_PX / plot_px,
                        row_heights=[p / plot_px for p in panel_px], subplot_titles=titles)

    for trace in _span_traces(spans, use_gl):
        fig.add_trace(trace, row=1, col=1)

    # Memory panel: every shown rank's stack, only memory_rank's visible; the dropdown switches.
    used = [c for c in MEMORY_STYLE if any(np.any(series[r][1][c]) for r in mem_ranks)]
    mem_traces: dict[int, list[int]] = {}
    hbm = float(entry.get("hbm_gb") or 0.0)
    y_top = 0.0
    for r in mem_ranks:
        times, per_cat, peak = series[r]
        vis = r == memory_rank
        idx = []
        for cat in used:
            label, colour = MEMORY_STYLE[cat]
            idx.append(len(fig.data))
            fig.add_trace(go.Scatter(
                x=times, y=per_cat[cat], mode="lines", line={"shape": "hv", "width": 0.6, "color": colour},
                fillcolor=colour, stackgroup=f"mem{r}", name=label, legendgroup=f"mem-{cat}",
                legend="legend2", visible=vis, showlegend=vis,
                hovertemplate=f"{_esc(label)}: %{{y:.3f}} GB<br>at %{{x:.4f}} ms"
                              f"<extra>{_esc(names[r])}</extra>"),
                row=2, col=1)
        y_top = max(y_top, peak_gb[r])
        idx.append(len(fig.data))
        over = " — exceeds HBM (OOM)" if hbm and peak_gb[r] > hbm else ""
        fig.add_trace(go.Scatter(
            x=[times[peak]], y=[peak_gb[r]], mode="markers+text", text=[f"peak {peak_gb[r]:.2f} GB{over}"],
            textposition="top center", marker={"symbol": "triangle-down", "size": 12, "color": "#000000"},
            name="peak", legend="legend2", visible=vis, showlegend=False,
            hovertemplate=f"peak of {_esc(names[r])}: %{{y:.3f}} GB at %{{x:.4f}} ms<extra></extra>"),
            row=2, col=1)
        mem_traces[r] = idx
    if hbm > 0:
        fig.add_trace(go.Scatter(
            x=[0.0, end_ms], y=[hbm, hbm], mode="lines",
            line={"color": "#B00020", "width": 2, "dash": "dash"},
            name=f"HBM capacity {hbm:.0f} GB", legend="legend2",
            hovertemplate=f"HBM capacity {hbm:.0f} GB<extra></extra>"), row=2, col=1)
    y_top = max(y_top, hbm) * 1.12 or 1.0

    # Link panel.
    if has_links:
        for i, (label, links, dash, on) in enumerate(_link_groups(tl, shown, per_node)):
            sers = [tl.links[k] for k in links if tl.links.get(k)]
            if not sers:
                continue
            cap = sum(float(tl.link_meta[k]["capacity_Bps"]) for k in links)
            x, y = _step_mean(sers, cap)
            x = np.append(x, end_ms)
            y = np.append(y, y[-1] if len(y) else 0.0)
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="lines", line={"shape": "hv", "width": 1.4, "dash": dash,
                                              "color": _LINK_COLOURS[i % len(_LINK_COLOURS)]},
                name=_esc(label), legend="legend3", visible=True if on else "legendonly",
                hovertemplate=f"{_esc(label)}<br>%{{y:.1f}} % at %{{x:.4f}} ms<extra></extra>"), row=3, col=1)

    x_end = end_ms * 1.005 if end_ms > 0 else 1.0
    # Layout: lanes top-down, GPUs shaded alternately, legends beside their panels, range slider at bottom.
    fig.update_yaxes(row=1, col=1, tickmode="array", tickvals=list(range(len(lanes))), ticktext=lane_labels,
                     range=[len(lanes) - 0.5, -0.5], showgrid=False, zeroline=False, tickfont={"size": 11})
    fig.update_yaxes(row=2, col=1, title_text="GB", range=[0, y_top])
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

    domains = [fig.layout[f"yaxis{'' if i == 0 else i + 1}"].domain for i in range(nrows)]
    legend_common = {"x": 1.01, "xanchor": "left", "yanchor": "top", "bgcolor": "rgba(255,255,255,0.8)",
                     "font": {"size": 11}, "groupclick": "togglegroup"}
    legends: dict[str, Any] = {"legend": {**legend_common, "y": domains[0][1], "title": {"text": "spans"}},
                               "legend2": {**legend_common, "y": domains[1][1], "title": {"text": "memory"}}}
    if has_links:
        legends["legend3"] = {**legend_common, "y": domains[2][1], "title": {"text": "links"}}

    menus = []
    if len(mem_ranks) > 1 and memory_rank is not None:
        all_idx = [i for r in mem_ranks for i in mem_traces[r]]
        buttons = []
        for r in mem_ranks:
            # Per rank: its category traces, then its peak marker (never in the legend).
            visible = [rr == r for rr in mem_ranks for _ in mem_traces[rr]]
            legend = [rr == r and k < len(used) for rr in mem_ranks for k in range(len(mem_traces[rr]))]
            buttons.append({"label": _esc(f"{names[r]} (rank {r})"), "method": "update",
                            "args": [{"visible": visible, "showlegend": legend},
                                     {"annotations[1].text": _esc(mem_title(r))}, all_idx]})
        menus.append({"type": "dropdown", "buttons": buttons, "active": mem_ranks.index(memory_rank),
                      "x": 1.01, "xanchor": "left", "y": domains[1][0], "yanchor": "bottom",
                      "showactive": True, "font": {"size": 11}, "bgcolor": "#FFFFFF"})
    if mem_ranks and hbm > 0:
        # The stack can be small next to the HBM line: offer a y scale that fits the usage.
        fit = max(peak_gb.values()) * 1.15 or 1.0
        menus.append({"type": "buttons", "direction": "right", "showactive": True, "active": 0,
                      "x": 1.0, "xanchor": "right", "y": domains[1][1], "yanchor": "bottom",
                      "pad": {"b": 4}, "font": {"size": 11}, "bgcolor": "#FFFFFF",
                      "buttons": [{"label": "scale: HBM", "method": "relayout",
                                   "args": [{"yaxis2.range": [0, y_top]}]},
                                  {"label": "scale: fit usage", "method": "relayout",
                                   "args": [{"yaxis2.range": [0, fit]}]}]})

    title = " · ".join(str(x) for x in (entry.get("schedule", "?"), entry.get("model", "?"),
                                         entry.get("topology", tl.topology_name), entry.get("mode", ""),
                                         f"seq {entry.get('seq_len', '?')}"))
    fig.update_layout(
        template="plotly_white", height=plot_px + 150, margin={"l": 170, "r": 240, "t": 70, "b": 60},
        title={"text": _esc(title), "x": 0.0, "xref": "paper", "xanchor": "left", "font": {"size": 15}},
        barmode="overlay", bargap=0, hovermode="closest", dragmode="zoom", updatemenus=menus,
        hoverlabel={"font": {"size": 12}, "align": "left"}, **legends)
    for ann in fig.layout.annotations:
        ann.update(x=0, xanchor="left", font={"size": 13})
    return fig


# ------------------------------------------------------------------------------------------------ page
_SUMMARY_CONFIG = ("schedule", "model", "topology", "mode", "seq_len", "batch", "degrees", "world_size",
                   "replicas")


def _fmt_entry_value(key: str, value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _headline(entry: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []

    def add(label: str, key: str, fmt: Any) -> None:
        v = entry.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append((label, fmt(v)))

    add("step time", "step_time_s", lambda v: f"{v * 1e3:.2f} ms")
    add("tokens/s", "tokens_per_s", lambda v: f"{v:,.0f}")
    add("tokens/s per GPU", "tokens_per_s_per_gpu", lambda v: f"{v:,.0f}")
    add("layer tokens/s", "layer_tokens_per_s", lambda v: f"{v:,.0f}")
    add("MFU", "mfu", lambda v: f"{v * 100:.1f} %")
    if isinstance(entry.get("peak_memory_gb"), (int, float)):
        peak = f"{entry['peak_memory_gb']:.2f} GB"
        if isinstance(entry.get("hbm_gb"), (int, float)):
            peak += f" of {entry['hbm_gb']:.0f} GB HBM"
        if entry.get("oom"):
            peak += " — OUT OF MEMORY"
        out.append(("peak memory", peak))
    add("comm/compute overlap", "overlap_pct", lambda v: f"{v:.1f} %")
    add("exposed communication", "exposed_comm_s", lambda v: f"{v * 1e3:.2f} ms")
    # serving metrics (inference modes only)
    add("time to first token", "ttft_s", lambda v: f"{v * 1e3:.3f} ms")
    add("time per output token", "tpot_s", lambda v: f"{v * 1e3:.3f} ms")
    add("decode tokens/s", "decode_tokens_per_s", lambda v: f"{v:,.0f}")
    add("largest batch that fits", "max_batch", lambda v: f"{v:,}")
    return out


def summary_html(entry: dict[str, Any], tl: Timeline, ranks: Sequence[int]) -> str:
    """The header of one run: configuration, headline metrics, shown ranks, assumptions (all escaped)."""
    cfg = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(_fmt_entry_value(k, entry[k]))}</td></tr>"
                  for k in _SUMMARY_CONFIG if k in entry)
    head = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in _headline(entry))
    simulated = list(tl.graph.ranks)
    note = f"Showing ranks {_esc(rank_ranges(ranks))} of the {len(simulated)} simulated"
    world = entry.get("world_size")
    if isinstance(world, int) and world > len(simulated):
        note += f" (world size {world:,}; the simulation holds one replica — every other replica mirrors it)"
    note += ". Times in milliseconds."
    assumptions = entry.get("assumptions")
    extra = ""
    if isinstance(assumptions, dict) and assumptions:
        rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in assumptions.items())
        extra = f"<details><summary>assumptions in force</summary><table>{rows}</table></details>"
    oom = ' class="oom"' if entry.get("oom") else ""
    return (f'<div class="summary"{oom}><table class="cfg"><caption>configuration</caption>{cfg}</table>'
            f'<table class="metrics"><caption>headline metrics</caption>{head}</table>'
            f'<div class="notes"><p>{note}</p>{extra}</div></div>')


_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; margin: 0;
       color: #222; background: #fff; }
header { padding: 10px 18px; border-bottom: 1px solid #ddd; display: flex; align-items: center; gap: 18px; }
header h1 { font-size: 18px; margin: 0; font-weight: 600; }
header select { font-size: 14px; padding: 3px 6px; }
.summary { display: flex; gap: 28px; padding: 10px 18px; flex-wrap: wrap; align-items: flex-start; }
.summary.oom .metrics { outline: 2px solid #B00020; }
.summary table { border-collapse: collapse; font-size: 13px; }
.summary caption { text-align: left; font-weight: 600; padding-bottom: 3px; color: #555; }
.summary th { text-align: left; font-weight: normal; color: #666; padding: 1px 12px 1px 0; }
.summary td { font-variant-numeric: tabular-nums; padding: 1px 0; }
.notes { font-size: 13px; color: #444; max-width: 520px; }
.notes p { margin: 0 0 6px 0; }
.plot { width: 100%; }
footer { font-size: 12px; color: #777; padding: 6px 18px 14px 18px; }
"""

_JS = """
(function () {
  const config = %(config)s;
  const rendered = {};
  function showRun(i) {
    document.querySelectorAll('section.run').forEach(function (s) {
      const j = Number(s.dataset.index);
      const div = document.getElementById('plot-' + j);
      if (j === i) {
        s.hidden = false;
        if (!rendered[j]) {
          const fig = JSON.parse(document.getElementById('fig-' + j).textContent);
          Plotly.newPlot(div, fig.data, fig.layout, config);
          rendered[j] = true;
        }
      } else {
        s.hidden = true;
        if (rendered[j]) { Plotly.purge(div); rendered[j] = false; }
      }
    });
  }
  const sel = document.getElementById('run-select');
  if (sel) { sel.addEventListener('change', function (e) { showRun(Number(e.target.value)); }); }
  showRun(0);
})();
"""


def _json_for_script(text: str) -> str:
    """JSON safe inside a <script> element (plotly already escapes < and >; belt and braces)."""
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def render_html(runs: Sequence[tuple[dict[str, Any], Timeline]], ranks: Sequence[int] | None = None) -> str:
    """The complete, self-contained HTML page for one or more runs (a run selector when several)."""
    from plotly.offline import get_plotlyjs

    if not runs:
        raise TspsimError("no runs to show")
    sections = []
    options = []
    for i, (entry, tl) in enumerate(runs):
        try:
            shown = select_ranks(tl, ranks, DEFAULT_MAX_RANKS)
        except TspsimError as exc:
            raise TspsimError(f"{in_run(len(runs), i, entry)}{exc}") from None
        fig = build_timeline_figure(entry, tl, shown)
        label = f"{i}: {entry.get('schedule', '?')}"
        degrees = entry.get("degrees")
        if isinstance(degrees, dict):
            label += " (" + ", ".join(f"{k}={v}" for k, v in degrees.items()) + ")"
        options.append(f'<option value="{i}">{_esc(label)}</option>')
        sections.append(
            f'<section class="run" data-index="{i}" hidden>{summary_html(entry, tl, shown)}'
            f'<div class="plot" id="plot-{i}"></div>'
            f'<script type="application/json" id="fig-{i}">{_json_for_script(fig.to_json())}</script>'
            '</section>')
    first = runs[0][0]
    title = f"tspsim timeline — {first.get('schedule', '?')} on {first.get('topology', '?')}"
    if len(runs) > 1:
        topologies = sorted({str(e.get("topology", "?")) for e, _ in runs})
        title = f"tspsim timeline — {len(runs)} runs on {', '.join(topologies)}"
    selector = ""
    if len(runs) > 1:
        selector = f'<label>run <select id="run-select">{"".join(options)}</select></label>'
    js = _JS % {"config": json.dumps(PLOTLY_CONFIG)}
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_esc(title)}</title><style>{_CSS}</style>"
        f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head><body>"
        f"<header><h1>{_esc(title)}</h1>{selector}</header>{''.join(sections)}"
        f"<footer>tspsim {_esc(__version__)} · drag to zoom (time axis shared by all panels), "
        "double-click to reset, click a legend entry to hide it · for every span at full fidelity use "
        "<code>tspsim export --format perfetto</code></footer>"
        f"<script type=\"text/javascript\">{js}</script></body></html>\n")


def write_html(runs: Sequence[tuple[dict[str, Any], Timeline]], path: str | Path,
               ranks: Sequence[int] | None = None) -> None:
    """Write the viewer page for ``runs`` — a list of (entry, Timeline) — to ``path`` atomically.

    This is the entry point of ``tspsim run --html`` and ``tspsim view``.
    """
    write_text_atomic(Path(path), render_html(runs, ranks))

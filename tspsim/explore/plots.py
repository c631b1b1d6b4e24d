"""Figures of a sweep (design.md §7): pure functions from results.json entries to plotly figures.

* :func:`throughput_figure` — tokens/s vs sequence length, one line per schedule, degrees and batch.
* :func:`memory_figure` — peak memory vs sequence length, the HBM capacity as a dashed line, OOM
  points marked with a red ✕.
* :func:`speed_ratio_figures` — TSP ÷ TP+SP throughput on a D × S heatmap (D = T·SP for TP+SP), one
  per (topology, model, mode, batch, tokens generated) where both schedules ran; :func:`speed_ratio_note` says
  why there is none otherwise.
* :func:`metric_figure` — any scalar key of the entries vs sequence length; the page uses it for the
  serving metrics of inference points (TTFT, TPOT, decode tokens/s, max batch: :data:`SERVING_FIGURES`).

Every line has its own marker symbol (and a dash per batch size), so lines that coincide stay visible;
the x axis and title name what ``seq_len`` is for the entries drawn (:func:`x_quantity`: sequence length,
prompt length or context); a y axis whose values span more than a factor :data:`LOG_SPAN` is logarithmic.
* :func:`sweep_page` — the self-contained HTML page (plotly.js embedded once, deterministic div ids).

Nothing here reads or writes files. Entries whose ``status`` is not ``ok`` are ignored by the plots.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative

from tspsim.analysis.entries import entry_label, is_oom, throughput
from tspsim.core.units import format_tokens

Entry = dict[str, Any]

_PALETTE = qualitative.Plotly + qualitative.D3
_OOM_COLOR = "#d62728"
_GROUP_KEYS = ("topology", "model", "mode", "batch", "decode_tokens")

SERVING_FIGURES: tuple[tuple[str, str, str, str, float], ...] = (
    ("ttft", "ttft_s", "Time to first token", "TTFT (ms)", 1e3),
    ("tpot", "tpot_s", "Time per output token", "TPOT (ms)", 1e3),
    ("decode-throughput", "decode_tokens_per_s", "Decode throughput", "decode tokens/s (all GPUs)", 1.0),
    ("max-batch", "max_batch", "Largest batch that fits in HBM", "max batch (sequences per replica)", 1.0),
)
"""(div id, entry key, title, y-axis title, scale) of the serving plots; each is drawn when some entry has the key.
The title ends with "vs" and the x quantity of the entries plotted (:func:`x_quantity`)."""

_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "triangle-down", "star", "hexagon", "pentagon",
            "cross", "triangle-left", "triangle-right", "hourglass")
"""Marker symbols, one per line, so lines that coincide (e.g. two batches with equal TPOT) stay visible."""
_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
"""Line dashes, one per batch size, so the batches of one schedule are told apart at a glance."""
LOG_SPAN = 20.0
"""A y axis is logarithmic when its positive values span more than this factor (TSP's 2 s TPOT next to
TP's 2 ms would flatten every TP line to zero on a linear axis)."""


def ok_entries(entries: Sequence[Entry]) -> list[Entry]:
    """Entries with a result (status ``ok`` or no status) and a step time."""
    return [e for e in entries if e.get("status", "ok") == "ok" and e.get("step_time_s") is not None]


def _varying(entries: Sequence[Entry]) -> list[str]:
    """Group keys (topology, model, mode, batch, decode tokens) that take more than one value."""
    return [k for k in _GROUP_KEYS if len({e.get(k) for e in entries}) > 1]


def series_label(entry: Entry, varying: Sequence[str]) -> str:
    """``tsp D=8`` plus the group keys that vary in the sweep (``· mi300x-1node · batch 2``)."""
    parts = [entry_label(entry)]
    for key in varying:
        value = entry.get(key)
        if key == "batch":
            parts.append(f"batch {value}")
        elif key == "decode_tokens":
            if value:
                parts.append(f"{value} tokens")
        else:
            parts.append(str(value))
    return " · ".join(parts)


def series(entries: Sequence[Entry]) -> list[tuple[str, list[Entry]]]:
    """(label, entries sorted by sequence length): one line per schedule, degrees and group (batch, …)."""
    ok = ok_entries(entries)
    varying = _varying(ok)
    groups: dict[str, list[Entry]] = {}
    for e in ok:
        groups.setdefault(series_label(e, varying), []).append(e)
    return [(label, sorted(es, key=lambda e: e.get("seq_len") or 0)) for label, es in groups.items()]


def _styles(groups: Sequence[tuple[str, list[Entry]]]) -> list[dict[str, Any]]:
    """Per line: colour, marker symbol and dash.

    Symbols are distinct per line, every other one open and larger, so a marker drawn over an equal one
    leaves it visible; dashes are distinct per batch size.
    """
    batches = sorted({es[0].get("batch") or 0 for _, es in groups})
    return [{"color": _PALETTE[n % len(_PALETTE)],
             "symbol": _SYMBOLS[n % len(_SYMBOLS)] + ("-open" if n % 2 else ""), "size": 14 if n % 2 else 9,
             "dash": _DASHES[batches.index(es[0].get("batch") or 0) % len(_DASHES)]}
            for n, (_, es) in enumerate(groups)]


def x_quantity(entries: Sequence[Entry]) -> str:
    """What the x axis (an entry's ``seq_len``) means for these entries.

    Training and forward: the sequence length; prefill and generate: the prompt length; decode: the context
    (tokens cached when decoding starts). Mixed modes name each.
    """
    modes = {e.get("mode") for e in entries}
    names = {"decode": "context"} | dict.fromkeys(("prefill", "generate"), "prompt length") | dict.fromkeys(
        ("train", "forward"), "sequence length")
    kinds = list(dict.fromkeys(names.get(str(m), "sequence length") for m in sorted(modes, key=str)))
    if len(kinds) == 1:
        return kinds[0]
    parts = [f"{names[str(m)]} ({m})" for m in sorted(modes, key=str) if str(m) in names]
    return " / ".join(dict.fromkeys(parts)) or "sequence length"


def _seq_axis(entries: Sequence[Entry]) -> dict[str, Any]:
    seqs = sorted({e["seq_len"] for e in entries if e.get("seq_len")})
    what = x_quantity(entries)
    if what == "context":
        what = "context (tokens cached when decoding starts)"
    title = what if "(" in what else f"{what} (tokens)"
    return {"title": title, "type": "log", "tickvals": seqs, "ticktext": [format_tokens(s) for s in seqs],
            "automargin": True}


def y_axis_type(values: Sequence[float | None]) -> str:
    """``log`` when the positive values span more than :data:`LOG_SPAN` (decades), else ``linear``."""
    pos = [v for v in values if v is not None and v > 0]
    return "log" if pos and max(pos) / min(pos) > LOG_SPAN else "linear"


def _layout(fig: go.Figure, title: str, ytitle: str, entries: Sequence[Entry], subtitle: str = "") -> go.Figure:
    """Title "TITLE vs X" (the x quantity of ``entries``), axes, and margins that clip neither title."""
    values = [v for t in fig.data if t.name and not t.name.startswith(("OOM", "HBM")) for v in (t.y or ())]
    text = f"{title} vs {x_quantity(entries)}" + (f"<br><sup>{html.escape(subtitle)}</sup>" if subtitle else "")
    log = y_axis_type(values) == "log"
    fig.update_layout(title={"text": text, "x": 0.0, "xanchor": "left", "xref": "container", "y": 0.96,
                             "yanchor": "top", "yref": "container"},
                      xaxis=_seq_axis(entries),
                      yaxis={"title": ytitle + (" — log scale" if log else ""), "type": "log" if log else "linear",
                             "automargin": True},
                      template="plotly_white", hovermode="closest", legend={"title": "schedule"}, height=560,
                      margin={"l": 90, "r": 40, "t": 100 if subtitle else 70, "b": 70})
    return fig


def _hover(what: str) -> str:
    return ("%{fullData.name}<br>seq %{customdata[0]}<br>" + what +
            "<br>peak memory %{customdata[1]:.1f} GB of %{customdata[2]:.0f} GB%{customdata[3]}<extra></extra>")


def _customdata(es: Sequence[Entry]) -> list[list[Any]]:
    return [[format_tokens(e["seq_len"]), e.get("peak_memory_gb") or 0.0, e.get("hbm_gb") or 0.0,
             " — OOM (does not fit)" if is_oom(e) else ""] for e in es]


def _oom_trace(points: list[tuple[float, float]], name: str = "OOM (does not fit in HBM)") -> go.Scatter:
    return go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="markers", name=name,
                      marker={"symbol": "x-thin-open", "size": 16, "color": _OOM_COLOR, "line": {"width": 3}},
                      hoverinfo="skip")


def throughput_figure(entries: Sequence[Entry]) -> go.Figure:
    """tokens/s vs sequence length per schedule and degrees; OOM points drawn with a red ✕."""
    fig = go.Figure()
    oom: list[tuple[float, float]] = []
    groups = series(entries)
    for (label, es), style in zip(groups, _styles(groups)):
        ys = [throughput(e) for e in es]
        fig.add_trace(go.Scatter(
            x=[e["seq_len"] for e in es], y=ys, mode="lines+markers", name=label,
            line={"color": style["color"], "dash": style["dash"]},
            marker={"symbol": ["x" if is_oom(e) else style["symbol"] for e in es], "size": style["size"]},
            customdata=_customdata(es), hovertemplate=_hover("%{y:,.0f} tokens/s")))
        oom += [(e["seq_len"], y) for e, y in zip(es, ys) if is_oom(e) and y is not None]
    if oom:
        fig.add_trace(_oom_trace(oom))
    ok = ok_entries(entries)
    modes = {e.get("mode") for e in ok}
    parts = [text for ms, text in ((("prefill",), "prefill: prompt tokens/s"),
                                   (("decode", "generate"), "decode and generate: generated tokens/s"))
             if modes & set(ms)]
    subtitle = "; ".join(parts)
    return _layout(fig, "Throughput", "tokens/s (all GPUs)", ok, subtitle)


def metric_figure(entries: Sequence[Entry], key: str, title: str, ytitle: str, scale: float = 1.0) -> go.Figure:
    """``key`` × ``scale`` vs sequence length, one line per schedule and degrees; OOM points with a red ✕.

    Entries without a value for ``key`` (e.g. ``tpot_s`` of a prefill point) are left out.
    """
    fig = go.Figure()
    have = [e for e in ok_entries(entries) if e.get(key) is not None]
    oom: list[tuple[float, float]] = []
    groups = series(have)
    for (label, es), style in zip(groups, _styles(groups)):
        ys = [e[key] * scale for e in es]
        fig.add_trace(go.Scatter(
            x=[e["seq_len"] for e in es], y=ys, mode="lines+markers", name=label,
            line={"color": style["color"], "dash": style["dash"]},
            marker={"symbol": ["x" if is_oom(e) else style["symbol"] for e in es], "size": style["size"]},
            customdata=_customdata(es), hovertemplate=_hover(f"%{{y:,.4g}} {html.escape(ytitle)}")))
        oom += [(e["seq_len"], y) for e, y in zip(es, ys) if is_oom(e)]
    if oom:
        fig.add_trace(_oom_trace(oom))
    return _layout(fig, title, ytitle, have)


def memory_figure(entries: Sequence[Entry]) -> go.Figure:
    """Peak memory per GPU vs sequence length, with each topology's HBM capacity and OOM points marked."""
    fig = go.Figure()
    ok = ok_entries(entries)
    oom: list[tuple[float, float]] = []
    groups = series(entries)
    for (label, es), style in zip(groups, _styles(groups)):
        fig.add_trace(go.Scatter(
            x=[e["seq_len"] for e in es], y=[e.get("peak_memory_gb") for e in es], mode="lines+markers",
            name=label, line={"color": style["color"], "dash": style["dash"]},
            marker={"size": style["size"], "symbol": style["symbol"]},
            customdata=_customdata(es), hovertemplate=_hover("%{y:.1f} GB peak")))
        oom += [(e["seq_len"], e["peak_memory_gb"]) for e in es if is_oom(e) and e.get("peak_memory_gb") is not None]
    seqs = sorted({e["seq_len"] for e in ok})
    capacities: dict[tuple[str, float], None] = {}
    for e in ok:
        if e.get("hbm_gb") is not None:
            capacities[(str(e.get("topology")), float(e["hbm_gb"]))] = None
    for topo, hbm in capacities:
        name = f"HBM capacity {hbm:g} GB" + (f" ({topo})" if len(capacities) > 1 else "")
        fig.add_trace(go.Scatter(x=[seqs[0], seqs[-1]] if seqs else [], y=[hbm, hbm], mode="lines", name=name,
                                 line={"color": "black", "dash": "dash", "width": 2},
                                 hovertemplate=f"{html.escape(name)}<extra></extra>"))
    if oom:
        fig.add_trace(_oom_trace(oom))
    return _layout(fig, "Peak memory per GPU", "peak memory per GPU (GB)", ok)


# ---------------------------------------------------------------------------------- TSP / TP+SP
def _group_key(entry: Entry) -> tuple[Any, ...]:
    return tuple(entry.get(k) for k in _GROUP_KEYS)


def _replica_degree(entry: Entry) -> int | None:
    """D of a tsp entry, T·SP of a tp+sp entry."""
    deg = entry.get("degrees") or {}
    if entry.get("schedule") == "tsp":
        return deg.get("D")
    if entry.get("schedule") == "tp+sp" and deg.get("T") and deg.get("SP"):
        return deg["T"] * deg["SP"]
    return None


def _better(a: Entry | None, b: Entry) -> Entry:
    """The faster of two entries, preferring ones that fit in HBM."""
    if a is None:
        return b
    ka = (not is_oom(a), throughput(a) or 0.0)
    kb = (not is_oom(b), throughput(b) or 0.0)
    return b if kb > ka else a


def speed_ratio_cells(entries: Sequence[Entry]) -> dict[tuple[Any, ...], dict[tuple[int, int], tuple[Entry, Entry]]]:
    """Per group (topology, model, mode, batch, decode tokens): {(D, S): (tsp entry, best tp+sp with T·SP = D)}."""
    tsp: dict[tuple[Any, ...], dict[tuple[int, int], Entry]] = {}
    tpsp: dict[tuple[Any, ...], dict[tuple[int, int], Entry]] = {}
    for e in ok_entries(entries):
        d = _replica_degree(e)
        if d is None:
            continue
        table = tsp if e["schedule"] == "tsp" else tpsp
        cell = (d, e["seq_len"])
        cells = table.setdefault(_group_key(e), {})
        cells[cell] = _better(cells.get(cell), e)
    out: dict[tuple[Any, ...], dict[tuple[int, int], tuple[Entry, Entry]]] = {}
    for group, cells in tsp.items():
        both = {c: (e, tpsp[group][c]) for c, e in cells.items() if c in tpsp.get(group, {})}
        if both:
            out[group] = both
    return out


def speed_ratio_figures(entries: Sequence[Entry]) -> list[go.Figure]:
    """D × S heatmaps of TSP tokens/s ÷ TP+SP tokens/s (>1: TSP faster); empty when no cell has both."""
    figs = []
    for group, cells in speed_ratio_cells(entries).items():
        ds = sorted({d for d, _ in cells})
        ss = sorted({s for _, s in cells})
        z: list[list[float | None]] = []
        text: list[list[str]] = []
        custom: list[list[list[str]]] = []
        for d in ds:
            zr, tr, cr = [], [], []
            for s in ss:
                pair = cells.get((d, s))
                if pair is None:
                    zr.append(None)
                    tr.append("")
                    cr.append(["", "", ""])
                    continue
                a, b = pair
                ta, tb = throughput(a) or 0.0, throughput(b) or 0.0
                ratio = ta / tb if tb > 0 else None
                zr.append(ratio)
                flags = [f"{name} OOM" for name, e in (("TSP", a), ("TP+SP", b)) if is_oom(e)]
                tr.append((f"{ratio:.2f}×" if ratio is not None else "n/a") + "".join(f"<br>{f}" for f in flags))
                cr.append([f"{ta:,.0f}", entry_label(b), f"{tb:,.0f}"])
            z.append(zr)
            text.append(tr)
            custom.append(cr)
        topo, model, mode, batch, n_tokens = group
        tokens = f", {n_tokens} tokens" if n_tokens else ""
        fig = go.Figure(go.Heatmap(
            z=z, x=[format_tokens(s) for s in ss], y=[f"D={d}" for d in ds], text=text, texttemplate="%{text}",
            customdata=custom, colorscale="RdBu", zmid=1.0, colorbar={"title": "TSP ÷ TP+SP"},
            hovertemplate=("%{y}, seq %{x}<br>TSP %{customdata[0]} tokens/s<br>%{customdata[1]} "
                           "%{customdata[2]} tokens/s<br>ratio %{z:.3f}<extra></extra>")))
        what = x_quantity([{"mode": mode}])
        fig.update_layout(
            title={"text": (f"TSP ÷ TP+SP throughput vs {what} — {html.escape(str(model))} on "
                            f"{html.escape(str(topo))}, {mode}, batch {batch}{tokens}<br><sup>&gt;1: TSP faster; "
                            "TP+SP: the fastest T×SP with T·SP = D</sup>"), "x": 0.0, "xanchor": "left",
                   "automargin": True},
            xaxis={"title": what, "type": "category", "automargin": True},
            yaxis={"title": "D = T·SP", "type": "category", "automargin": True},
            template="plotly_white", height=max(340, 180 + 70 * len(ds)), margin={"t": 90})
        figs.append(fig)
    return figs


def speed_ratio_note(entries: Sequence[Entry]) -> str | None:
    """Why there is no TSP ÷ TP+SP heatmap (None when there is one)."""
    ok = ok_entries(entries)
    names = {e.get("schedule") for e in ok}
    if speed_ratio_cells(entries):
        return None
    if "tsp" not in names or "tp+sp" not in names:
        missing = " and ".join(n for n in ("tsp", "tp+sp") if n not in names)
        return (f"No TSP ÷ TP+SP heatmap: {missing} has no result in this sweep. Sweep both (e.g. "
                "--schedule tsp,tp+sp --degree 8 --tp 4 --sp 2) to compare them.")
    return ("No TSP ÷ TP+SP heatmap: no TSP point has a TP+SP point with the same replica size "
            "(D = T·SP), sequence length, topology, model, mode, batch and tokens generated.")


# ---------------------------------------------------------------------------------- page
def _summary_html(entries: Sequence[Entry]) -> str:
    ok = ok_entries(entries)
    n_oom = sum(is_oom(e) for e in ok)
    skipped = [e for e in entries if e.get("status") == "invalid"]
    failed = [e for e in entries if e.get("status") == "error"]
    parts = [f"{len(entries)} points: {len(ok)} simulated ({n_oom} do not fit in HBM)"]
    if skipped:
        parts.append(f"{len(skipped)} invalid, skipped")
    if failed:
        parts.append(f"{len(failed)} failed")
    items = "".join(f"<li>{html.escape(_row_text(e))}: {html.escape(e.get('reason', ''))}</li>"
                    for e in skipped + failed)
    listing = f"<details><summary>skipped and failed points</summary><ul>{items}</ul></details>" if items else ""
    return f"<p class='summary'>{html.escape('; '.join(parts))}.</p>{listing}"


def _row_text(e: Entry) -> str:
    tokens = f" · {e['decode_tokens']} tokens" if e.get("decode_tokens") else ""
    return (f"{entry_label(e)} · {e.get('topology')} · {e.get('model')} · {e.get('mode')} · "
            f"seq {format_tokens(e.get('seq_len') or 0)} · batch {e.get('batch')}{tokens}")


def sweep_figures(entries: Sequence[Entry]) -> list[tuple[str, go.Figure]]:
    """(div id, figure) of every plot of the page, in page order."""
    ok = ok_entries(entries)
    if not ok:
        return []
    figs = [("throughput", throughput_figure(entries)), ("memory", memory_figure(entries))]
    for div_id, key, title, ytitle, scale in SERVING_FIGURES:
        if any(e.get(key) is not None for e in ok):
            figs.append((div_id, metric_figure(entries, key, title, ytitle, scale)))
    figs += [(f"speed-ratio-{i}", f) for i, f in enumerate(speed_ratio_figures(entries))]
    return figs


def sweep_page(entries: Sequence[Entry], title: str = "tspsim sweep") -> str:
    """The self-contained HTML page: summary, plots (plotly.js embedded once) and notes."""
    body: list[str] = [f"<h1>{html.escape(title)}</h1>", _summary_html(entries)]
    figs = sweep_figures(entries)
    if not figs:
        body.append("<p class='note'>No point produced a result, so there is nothing to plot.</p>")
    for n, (div_id, fig) in enumerate(figs):
        body.append(fig.to_html(full_html=False, include_plotlyjs=(n == 0), div_id=div_id,
                                config={"displaylogo": False, "responsive": True}))
    note = speed_ratio_note(entries) if figs else None
    if note:
        body.append(f"<p class='note' id='speed-ratio-note'>{html.escape(note)}</p>")
    style = ("body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1200px}"
             ".note{color:#555;font-style:italic}.summary{font-size:1.05em}")
    return ("<!DOCTYPE html>\n<html lang='en'>\n<head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{style}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")

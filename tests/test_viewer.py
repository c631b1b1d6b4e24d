"""The HTML viewer's figure and page (design.md §6, conventions.md (d)); the browser test is test_browser.py."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tspsim.core.errors import TspsimError
from tspsim.engine.timeline import Timeline
from tspsim.explore.max_batch import simulate_with_max_batch
from tspsim.opgraph import Op, OpGraph
from tspsim.outputs.export import SPAN_CATEGORIES, span_category
from tspsim.outputs.viewer import (
    BAR_LIMIT,
    build_run_view,
    build_timeline_figure,
    memory_series,
    render_html,
    write_html,
)
from tspsim.outputs.viewer.style import HOVER_PX, OVERVIEW_PX
from tspsim.simulate import Point


def synthetic_timeline(ranks: int, compute_per_rank: int, comm_per_rank: int, name: str = "op") -> Timeline:
    """A Timeline built directly (no simulation): per rank, back-to-back compute spans and a comm stream."""
    ops: list[Op] = []
    spans: list[tuple[int, float, float]] = []
    kinds = ("gemm", "attention_fwd", "elementwise")
    for r in range(ranks):
        t = 0.0
        for i in range(compute_per_rank):
            ops.append(Op(len(ops), r, "compute", kinds[i % 3], f"{name}{i}", layer=i % 32, flops=1e9,
                          hbm_bytes=1e6))
            spans.append((len(ops) - 1, t, t + 10e-6))
            t += 10e-6
        t = 0.0
        for i in range(comm_per_rank):
            ops.append(Op(len(ops), r, "comm", "all_reduce", f"ar{i}", nbytes=1 << 20, group=tuple(range(ranks)),
                          coll=f"all_reduce#{i}"))
            spans.append((len(ops) - 1, t + 5e-6, t + 25e-6))
            t += 30e-6
    memory = {r: [(0.0, "parameters", 10**9), (1e-3, "activations", 2 * 10**9), (2e-3, "activations", -2 * 10**9)]
              for r in range(ranks)}
    graph = OpGraph(ops=ops, meta={"schedule": "synthetic"}, ranks=tuple(range(ranks)))
    return Timeline(graph=graph, topology_name="mi300x-1node", spans=spans, memory=memory)


SYN_ENTRY = {"schedule": "synthetic", "model": "none", "topology": "mi300x-1node", "hbm_gb": 192.0,
             "world_size": 8}


# ------------------------------------------------------------------------------------------- lanes
def test_lanes_one_per_gpu_stream_compute_first(tpsp_run):
    entry, tl = tpsp_run
    fig = build_timeline_figure(entry, tl)
    ticks = list(fig.layout.yaxis.ticktext)
    assert len(ticks) == 16 * 4  # 16 simulated ranks × (compute, comm, kv, dp)
    assert ticks[:4] == ["node00/gpu0 · compute", "comm", "kv", "dp"]
    assert ticks[8 * 4] == "node01/gpu0 · compute"
    assert list(fig.layout.yaxis.range) == [len(ticks) - 0.5, -0.5]  # top-down


def _segments(trace) -> list[tuple[float, float, list]]:
    """(start, end, hover row) of each segment of a line-path span trace (vertices up to a NaN/None gap)."""
    out, cur = [], []
    for x, row in zip(list(trace.x) + [None], list(trace.customdata) + [None]):
        if x is None or (isinstance(x, float) and np.isnan(x)):
            assert row is None or not row[0]  # a gap carries no hover
            if cur:
                out.append((cur[0][0], cur[-1][0], cur[0][1]))
            cur = []
        else:
            cur.append((x, row))
    return out


def test_bars_below_limit_line_paths_above(tp_run):
    entry, tl = tp_run
    n = sum(1 for o, _, _ in tl.spans if span_category(tl.ops[o]) is not None)
    bars = build_timeline_figure(entry, tl, bar_limit=n)
    lines = build_timeline_figure(entry, tl, bar_limit=n - 1)
    span_bars = [t for t in bars.data if t.type == "bar"]
    assert span_bars and all(t.legend != "legend" for t in bars.data if t.type != "bar")
    assert sum(len(t.x) for t in span_bars) == n
    for t in span_bars:  # exact extents: base = start, x = duration, in ms
        assert np.all(np.asarray(t.x) >= 0) and t.orientation == "h"
    paths = [t for t in lines.data if t.legend == "legend"]
    assert paths and all(t.type == "scatter" and t.mode == "lines" for t in paths) and not any(
        t.type in ("bar", "scattergl") for t in lines.data)
    segs = [seg for t in paths for seg in _segments(t)]
    assert len(segs) == n  # every span exactly, one subpath each
    starts = sorted(a * 1e-3 for a, _, _ in segs)
    assert starts == pytest.approx(sorted(a for o, a, _ in tl.spans if span_category(tl.ops[o]) is not None),
                                   abs=1e-9)  # drawn to the nanosecond
    # A vertex at least every HOVER_PX pixels of the overview, each carrying its span's hover row.
    for t in paths:
        xs = np.asarray([np.nan if x is None else x for x in t.x], dtype=float)
        gaps = np.diff(xs)
        step = HOVER_PX * tl.end_s * 1e3 * 1.005 / OVERVIEW_PX
        assert np.nanmax(gaps) <= step * (1 + 1e-6)
        assert all((row is None or not row[0]) == np.isnan(x) for x, row in zip(xs, t.customdata))
    assert bars.layout.barmode == "overlay"


def test_decimated_overview_of_many_spans_and_refine_data(tp_run):
    entry, tl = tp_run
    n = sum(1 for o, _, _ in tl.spans if span_category(tl.ops[o]) is not None)
    view = build_run_view(entry, tl, bar_limit=100, exact_limit=100)
    paths = [t for t in view.figure.data if t.legend == "legend"]
    segs = [seg for t in paths for seg in _segments(t)]
    lanes = len(view.figure.layout.yaxis.ticktext)
    assert 0 < len(segs) <= lanes * OVERVIEW_PX and len(segs) < n
    assert all("merged" in row[0] and "zoom in" in row[4] for _, _, row in segs)
    assert "decimated per pixel" in view.figure.layout.annotations[0].text
    spans = view.refine["spans"]
    assert spans["decimated"] and len(spans["lane"]) == len(spans["dur_ns"]) == len(view.hover) == n
    assert [c["trace"] for c in spans["cats"]] == list(range(len(paths)))
    # The page adds the deltas up again: whole nanoseconds of the span starts.
    starts = np.cumsum(spans["start_ns_deltas"]) / 1e6
    assert sorted(starts) == pytest.approx(sorted(a * 1e3 for o, a, _ in tl.spans
                                                  if span_category(tl.ops[o]) is not None), abs=1e-6)
    exact = build_run_view(entry, tl, bar_limit=100, exact_limit=n)
    assert not exact.refine["spans"]["decimated"]
    assert sum(len(_segments(t)) for t in exact.figure.data if t.legend == "legend") == n


def test_span_extents_and_hover_in_milliseconds(tp_run):
    entry, tl = tp_run
    fig = build_timeline_figure(entry, tl, ranks=[3], bar_limit=10**9)
    gemm = next(t for t in fig.data if t.name == "GEMM")
    first = min(((a, b, o) for o, a, b in tl.spans if tl.ops[o].rank == 3 and tl.ops[o].kind == "gemm"))
    i = int(np.argmin(gemm.base))
    # Drawn to the nanosecond.
    assert gemm.base[i] == pytest.approx(first[0] * 1e3, abs=1e-6)
    assert gemm.x[i] == pytest.approx((first[1] - first[0]) * 1e3, abs=2e-6)
    op = tl.ops[first[2]]
    row = gemm.customdata[i]
    assert row[0] == op.name and "rank 3" in row[1] and "compute" in row[1]
    assert f"layer {op.layer}" in row[2] or "outside" in row[2]
    assert "duration" in row[3] and "FLOP" in row[4]
    comm = next(t for t in fig.data if t.name == "all-reduce")
    assert "all_reduce" in comm.customdata[0][4] and "group of 8" in comm.customdata[0][4]


def test_legend_has_one_entry_per_category(tp_run):
    entry, tl = tp_run
    fig = build_timeline_figure(entry, tl)
    names = [t.name for t in fig.data if t.legend == "legend" and t.showlegend is not False]
    expected = [SPAN_CATEGORIES[c][0] for c in ("gemm", "attention", "elementwise", "optimizer", "all_reduce")]
    assert names == expected
    colours = {t.line.color if t.type == "scatter" else t.marker.color for t in fig.data if t.legend == "legend"}
    assert len(colours) == len(expected)


# ------------------------------------------------------------------------------------- other panels
def test_memory_panel_stack_hbm_line_and_peak(tp_run):
    entry, tl = tp_run
    fig = build_timeline_figure(entry, tl, memory_rank=2)
    mem = [t for t in fig.data if t.legend == "legend2"]
    shown = [t for t in mem if t.visible is True and t.stackgroup == "mem2"]
    assert shown and all(t.line.shape == "hv" for t in shown)
    assert all(t.visible is False and len(t.x) == 0 for t in mem if t.stackgroup and t.stackgroup != "mem2")
    # The hover shows the category and the total of the stack.
    total = sum(np.asarray(t.y) for t in shown)
    assert all(np.allclose(np.asarray(t.customdata), total) and "total" in t.hovertemplate for t in shown)
    hbm = next(t for t in mem if t.name.startswith("HBM capacity"))
    assert list(hbm.y) == [entry["hbm_gb"]] * 2
    peak_trace = next(t for t in mem if t.name == "peak" and t.visible is True)
    peak, _ = tl.peak_memory(2)
    assert peak_trace.y[0] == pytest.approx(peak / 1e9)
    total_at_end = sum(t.y[-1] for t in shown)
    assert total_at_end <= peak / 1e9 + 1e-9
    menu = fig.layout.updatemenus[0]
    assert len(menu.buttons) == 8 and menu.active == 2 and menu.direction == "up"  # never clipped below
    assert "scale" in fig.layout.updatemenus[1].buttons[1].label


def test_memory_series_matches_timeline(tp_run):
    _, tl = tp_run
    times, per_cat, peak = memory_series(tl, 0)
    total = sum(per_cat.values())
    assert total[peak] == pytest.approx(tl.peak_memory(0)[0] / 1e9)
    assert np.all(np.diff(times) >= 0) and times[-1] == pytest.approx(tl.end_s * 1e3)


def test_link_panels_fabric_and_nics_binned_mean_and_max(tpsp_run):
    entry, tl = tpsp_run
    fig = build_timeline_figure(entry, tl)
    fabric = [t.name for t in fig.data if t.legend == "legend3"]
    nics = [t.name for t in fig.data if t.legend == "legend4"]
    assert "node00 xGMI (mean of 56 links)" in fabric and "node01 xGMI (mean of 56 links)" in fabric
    assert any(n.startswith("node00 NICs tx") for n in nics)
    assert "NIC of rank 0 tx" in nics and "NIC of rank 8 rx" in nics and not any("NIC" in n for n in fabric)
    for t in fig.data:
        if t.legend in ("legend3", "legend4"):
            assert np.all(np.asarray(t.y) >= 0) and np.all(np.asarray(t.y) <= 100 + 1e-6)
    titles = [a.text for a in fig.layout.annotations]
    assert titles[2].startswith("Node fabric utilisation") and titles[3].startswith("NIC utilisation")
    assert all("mean and max per" in t or "exact" in t for t in titles[2:])


def test_link_bins_match_the_exact_series(tp_run):
    """Binned means integrate to the same traffic as the exact step series (no sample is lost)."""
    entry, tl = tp_run
    view = build_run_view(entry, tl)
    fig = view.figure
    for g in view.refine["links"]:
        mean = fig.data[g["mean"]]
        x_exact = np.cumsum(g["x_ns_deltas"]) / 1e6
        y_exact = np.asarray(g["y"])
        xs, ys = np.asarray(mean.x, dtype=float), np.asarray(mean.y, dtype=float)
        area_bins = float(np.sum(ys[:-1] * np.diff(xs)))
        edges = np.append(x_exact, xs[-1])
        area_exact = float(np.sum(y_exact * np.diff(edges)))
        assert area_bins == pytest.approx(area_exact, rel=1e-4)  # means drawn to 0.001 %


def test_panels_share_the_time_axis(tpsp_run):
    entry, tl = tpsp_run
    fig = build_timeline_figure(entry, tl)
    assert fig.layout.xaxis.matches == "x4" and fig.layout.xaxis2.matches == "x4" and fig.layout.xaxis3.matches == "x4"
    assert fig.layout.xaxis4.title.text == "time (ms)"


# ------------------------------------------------------------------------------------ rank choice
def test_default_ranks_capped_and_explicit_choice(tpsp_run):
    entry, tl = tpsp_run
    fig = build_timeline_figure(entry, tl, ranks=[0, 9])
    assert list(fig.layout.yaxis.ticktext) == ["node00/gpu0 · compute", "comm", "kv", "dp",
                                               "node01/gpu1 · compute", "comm", "kv", "dp"]
    with pytest.raises(TspsimError, match="rank 100 was not simulated .*folded"):
        build_timeline_figure(entry, tl, ranks=[100])
    wide = synthetic_timeline(24, 3, 1)
    assert len(build_timeline_figure(SYN_ENTRY, wide).layout.yaxis.ticktext) == 16 * 2


# ------------------------------------------------------------------------------------ scale (e)
def test_100k_spans_are_decimated_to_the_pixel_columns():
    tl = synthetic_timeline(8, 10_000, 3_000)
    assert len(tl.spans) == 104_000
    view = build_run_view(SYN_ENTRY, tl)
    fig = view.figure
    assert not any(t.type in ("bar", "scattergl") for t in fig.data)
    paths = [t for t in fig.data if t.legend == "legend"]
    assert len(paths) == 4  # gemm, attention, elementwise, all-reduce: one line path each
    assert len(fig.data) == 4 + 8 * (2 + 1) + 1  # spans, per-rank memory stack and peak, HBM line
    segs = sum(len(_segments(t)) for t in paths)
    assert segs <= 16 * OVERVIEW_PX  # at most one segment per lane and pixel column
    assert len(view.refine["spans"]["lane"]) == 104_000 and len(view.hover) == 104_000
    assert len(fig.to_json()) < 8e6  # was ~40 MB before decimation


def test_bar_limit_default_is_a_few_thousand():
    assert 2000 <= BAR_LIMIT <= 10000


# ------------------------------------------------------------------------------------------ page
def test_page_is_self_contained_and_escapes_names(tmp_path):
    evil = '<img src=x onerror=alert(1)>"</script>'
    tl = synthetic_timeline(2, 5, 2, name=evil)
    entry = dict(SYN_ENTRY, schedule=evil, model=evil, degrees={"D": evil})
    path = tmp_path / "page.html"
    write_html([(entry, tl), (dict(entry, schedule="second"), tl)], path)
    page = path.read_text()
    assert "<img" not in page
    # Only our own script elements: two data blocks per run (base64: no markup), plotly.js, the page script.
    assert len(re.findall(r"<script\b", page)) == 6
    assert page.count("</script>") == 6
    assert len(re.findall(r'<script type="application/octet-stream" id="(data|hover)-[01]">[A-Za-z0-9+/=]*</script>',
                          page)) == 4
    assert page.index('id="loading-0"') < page.index("plotly.js (")  # the indicator paints before plotly loads
    assert re.search(r"plotly\.js [^\n]*v\d", page) and not re.search(r"<script[^>]*\bsrc=", page)  # embedded
    assert '<select id="run-select">' in page and page.count("<option") == 2
    assert "&lt;img src=x onerror=alert(1)&gt;" in page  # escaped in the header


def test_page_embeds_the_cartesian_bundle_of_plotly_py_s_version(monkeypatch):
    import plotly.offline

    from tspsim.outputs.viewer import page

    version, _ = page.VENDORED_PLOTLY_JS
    if plotly.offline.get_plotlyjs_version() == version:
        js = page.plotly_js()
        assert js.lstrip("/* \n").startswith("plotly.js (cartesian - minified) v" + version) and len(js) < 2e6
    monkeypatch.setattr(plotly.offline, "get_plotlyjs_version", lambda: "0.0.0")  # another plotly.py
    assert page.plotly_js() == plotly.offline.get_plotlyjs()


def test_render_html_rejects_empty_and_reports_run_for_bad_rank(tp_run):
    entry, tl = tp_run
    with pytest.raises(TspsimError, match="no runs"):
        render_html([])
    other = synthetic_timeline(2, 2, 1)
    with pytest.raises(TspsimError, match=r"run 1 \(synthetic\): rank 5 was not simulated"):
        render_html([(entry, tl), (SYN_ENTRY, other)], ranks=[5])


def test_header_shows_serving_metrics_for_inference_runs(tmp_path):
    from tspsim.outputs.viewer import write_html

    model = tmp_path / "m.yaml"
    model.write_text("hidden: 256\nlayers: 2\nq_heads: 4\nkv_heads: 4\nhead_dim: 64\nffn_hidden: 1024\n"
                     "gated_mlp: true\nvocab: 1000\n")
    res = simulate_with_max_batch(Point("tp", "mi300x-1node", model=str(model), mode="decode", seq_len=1024,
                                        decode_tokens=4, degree=2, gpus=2))
    out = tmp_path / "v.html"
    write_html([(res.entry, res.timeline)], out)
    html = out.read_text()
    for label in ("time per output token", "decode tokens/s", "largest batch that fits"):
        assert label in html
    assert "time to first token" not in html  # decode mode simulates no prefill: TTFT is null

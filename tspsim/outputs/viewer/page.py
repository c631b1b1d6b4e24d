"""The viewer page: one self-contained HTML file that opens a 1,024-GPU run in seconds.

The page (:func:`render_html` / :func:`write_html`) shows a header per run (configuration, headline metrics,
what the result file lacks), a run selector when there are several, and a loading indicator; plotly.js is
embedded (works offline) after the header so the page paints before the library is parsed. Each run's
data — its overview figure and the full-resolution data to refine it on zoom (:func:`~.figure.build_run_view`),
and separately the hover rows of every span — is a gzip-compressed, base64 block in a non-executed
``<script type="application/octet-stream">``, decoded by the browser's ``DecompressionStream`` only when the
run is selected (one WebGL context at a time); ``viewer.js`` (shipped beside this module) does the
decoding, plotting and refining. Every string that comes from a result file is ``html.escape``-d wherever
it reaches HTML; the data blocks are base64, which holds no markup.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from tspsim import __version__
from tspsim.core.errors import TspsimError
from tspsim.core.files import write_text_atomic
from tspsim.engine.timeline import Timeline
from tspsim.outputs.export import in_run, rank_ranges, select_ranks
from tspsim.outputs.results_file import missing_parts
from tspsim.outputs.viewer.figure import RunView, build_run_view
from tspsim.outputs.viewer.style import DEFAULT_MAX_RANKS, PLOTLY_CONFIG, esc

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

    step = {"generate": "request time (prefill + decode steps)", "decode": "step time (mean decode step)"}
    add(step.get(str(entry.get("mode")), "step time"), "step_time_s", lambda v: f"{v * 1e3:.2f} ms")
    add("tokens/s", "tokens_per_s", lambda v: f"{v:,.0f}")
    add("tokens/s per GPU", "tokens_per_s_per_gpu", lambda v: f"{v:,.0f}")
    add("tokens/s × layers", "layer_tokens_per_s", lambda v: f"{v:,.0f}")
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
    cfg = "".join(f"<tr><th>{esc(k)}</th><td>{esc(_fmt_entry_value(k, entry[k]))}</td></tr>"
                  for k in _SUMMARY_CONFIG if k in entry)
    head = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in _headline(entry))
    simulated = list(tl.graph.ranks)
    note = f"Showing ranks {esc(rank_ranges(ranks))} of the {len(simulated)} simulated"
    world = entry.get("world_size")
    if isinstance(world, int) and world > len(simulated):
        note += f" (world size {world:,}; the simulation holds one replica — every other replica mirrors it)"
    note += ". Times in milliseconds."
    missing = missing_parts(tl)
    if missing:
        note += "</p><p class=\"lacks\">Not in this result: " + esc("; ".join(missing)) + "."
    assumptions = entry.get("assumptions")
    extra = ""
    if isinstance(assumptions, dict) and assumptions:
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in assumptions.items())
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
.notes .lacks { color: #8A4B00; }
.plot { width: 100%; }
.loading { margin: 14px 18px; padding: 10px 14px; font-size: 14px; color: #333; background: #F3F6FA;
           border: 1px solid #D5DDE8; border-radius: 4px; display: flex; align-items: center; gap: 10px; }
.loading::before { content: ""; width: 14px; height: 14px; border: 2px solid #9DB7CF;
                   border-top-color: #4C78A8; border-radius: 50%; animation: spin 0.8s linear infinite; }
.loading.failed { color: #B00020; background: #FFF3F3; border-color: #E8C5C5; }
.loading.failed::before, .loading[hidden] { display: none; }
@keyframes spin { to { transform: rotate(360deg); } }
footer { font-size: 12px; color: #777; padding: 6px 18px 14px 18px; }
"""


def encode_block(text: str) -> str:
    """gzip (no timestamp, so pages are deterministic) then base64: a data block the page script decodes."""
    return base64.b64encode(gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)).decode("ascii")


VENDORED_PLOTLY_JS = ("4.1.1", "plotly-cartesian-4.1.1.min.js")
"""(version, file) of the plotly.js partial bundle shipped beside this module: the ``cartesian`` build of
the npm package ``plotly.js-cartesian-dist-min`` (MIT, ``plotly-LICENSE.txt``), 1.5 MB against the full
bundle's 4.8 MB — the browser parses it about a second faster, most of the viewer's time to first plot.
The viewer needs only its scatter and bar traces."""


def _script_source() -> str:
    return resources.files("tspsim.outputs.viewer").joinpath("viewer.js").read_text(encoding="utf-8")


def plotly_js() -> str:
    """plotly.js for the page.

    The shipped cartesian bundle when it is the version plotly.py writes figures for, else plotly.py's own
    full bundle (always correct, about a second slower to load).
    """
    from plotly.offline import get_plotlyjs, get_plotlyjs_version

    version, name = VENDORED_PLOTLY_JS
    if get_plotlyjs_version() == version:
        return resources.files("tspsim.outputs.viewer").joinpath(name).read_text(encoding="utf-8")
    return get_plotlyjs()


def _run_label(i: int, entry: dict[str, Any]) -> str:
    label = f"{i}: {entry.get('schedule', '?')}"
    degrees = entry.get("degrees")
    if isinstance(degrees, dict):
        label += " (" + ", ".join(f"{k}={v}" for k, v in degrees.items()) + ")"
    return label


def _section(i: int, entry: dict[str, Any], tl: Timeline, shown: Sequence[int], view: RunView) -> str:
    """One run: header, loading indicator, plot container and its two data blocks."""
    data = encode_block(json.dumps({"figure": view.figure_json, "refine": view.refine}, separators=(",", ":"),
                                   ensure_ascii=False, allow_nan=False))
    hover = encode_block(json.dumps(view.hover, separators=(",", ":"), ensure_ascii=False))
    size_mb = len(data) * 3 / 4 / 1e6
    return (f'<section class="run" data-index="{i}"{"" if i == 0 else " hidden"}>{summary_html(entry, tl, shown)}'
            f'<div class="loading" id="loading-{i}">Loading run {i}: decompressing and drawing '
            f"{size_mb:.1f} MB of data …</div>"
            f'<div class="plot" id="plot-{i}"></div>'
            f'<script type="application/octet-stream" id="data-{i}">{data}</script>'
            f'<script type="application/octet-stream" id="hover-{i}">{hover}</script>'
            "</section>")


def render_html(runs: Sequence[tuple[dict[str, Any], Timeline]], ranks: Sequence[int] | None = None) -> str:
    """The complete, self-contained HTML page for one or more runs (a run selector when several)."""
    if not runs:
        raise TspsimError("no runs to show")
    sections = []
    options = []
    for i, (entry, tl) in enumerate(runs):
        try:
            shown = select_ranks(tl, ranks, DEFAULT_MAX_RANKS)
        except TspsimError as exc:
            raise TspsimError(f"{in_run(len(runs), i, entry)}{exc}") from None
        options.append(f'<option value="{i}">{esc(_run_label(i, entry))}</option>')
        sections.append(_section(i, entry, tl, shown, build_run_view(entry, tl, shown)))
    first = runs[0][0]
    title = f"tspsim timeline — {first.get('schedule', '?')} on {first.get('topology', '?')}"
    if len(runs) > 1:
        topologies = sorted({str(e.get("topology", "?")) for e, _ in runs})
        title = f"tspsim timeline — {len(runs)} runs on {', '.join(topologies)}"
    selector = ""
    if len(runs) > 1:
        selector = f'<label>run <select id="run-select">{"".join(options)}</select></label>'
    config = json.dumps(PLOTLY_CONFIG)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1>{selector}</header>"
        "<noscript><p>This page needs JavaScript to draw the timeline.</p></noscript>"
        f"{''.join(sections)}"
        f"<footer>tspsim {esc(__version__)} · drag to zoom (time axis shared by all panels; the lanes and link "
        "bins refine as you zoom), double-click to reset, click a legend entry to hide it · for every span "
        "at full fidelity use <code>tspsim export --format perfetto</code></footer>"
        f"<script type=\"text/javascript\">{plotly_js()}</script>"
        f"<script type=\"text/javascript\">window.TSPSIM_PLOTLY_CONFIG = {config};\n{_script_source()}</script>"
        "</body></html>\n")


def write_html(runs: Sequence[tuple[dict[str, Any], Timeline]], path: str | Path,
               ranks: Sequence[int] | None = None) -> None:
    """Write the viewer page for ``runs`` — a list of (entry, Timeline) — to ``path`` atomically.

    This is the entry point of ``tspsim run --html`` and ``tspsim view``.
    """
    write_text_atomic(Path(path), render_html(runs, ranks))

"""The viewer page: one self-contained HTML file (design.md §6, conventions.md (d)).

The page (:func:`render_html` / :func:`write_html`) embeds plotly.js (works offline), shows a header with the
run's configuration and headline metrics, and — when given several runs (several schedules) — a run selector;
each run's figure is built in the browser only when selected (one WebGL context at a time). Every string that
comes from a result file is ``html.escape``-d wherever it reaches HTML, and plotly's JSON escapes ``<``/``>``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tspsim import __version__
from tspsim.core.errors import TspsimError
from tspsim.core.files import write_text_atomic
from tspsim.engine.timeline import Timeline
from tspsim.outputs.export import in_run, rank_ranges, select_ranks
from tspsim.outputs.viewer.figure import build_timeline_figure
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
    cfg = "".join(f"<tr><th>{esc(k)}</th><td>{esc(_fmt_entry_value(k, entry[k]))}</td></tr>"
                  for k in _SUMMARY_CONFIG if k in entry)
    head = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in _headline(entry))
    simulated = list(tl.graph.ranks)
    note = f"Showing ranks {esc(rank_ranges(ranks))} of the {len(simulated)} simulated"
    world = entry.get("world_size")
    if isinstance(world, int) and world > len(simulated):
        note += f" (world size {world:,}; the simulation holds one replica — every other replica mirrors it)"
    note += ". Times in milliseconds."
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
        options.append(f'<option value="{i}">{esc(label)}</option>')
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
        f"<title>{esc(title)}</title><style>{_CSS}</style>"
        f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head><body>"
        f"<header><h1>{esc(title)}</h1>{selector}</header>{''.join(sections)}"
        f"<footer>tspsim {esc(__version__)} · drag to zoom (time axis shared by all panels), "
        "double-click to reset, click a legend entry to hide it · for every span at full fidelity use "
        "<code>tspsim export --format perfetto</code></footer>"
        f"<script type=\"text/javascript\">{js}</script></body></html>\n")


def write_html(runs: Sequence[tuple[dict[str, Any], Timeline]], path: str | Path,
               ranks: Sequence[int] | None = None) -> None:
    """Write the viewer page for ``runs`` — a list of (entry, Timeline) — to ``path`` atomically.

    This is the entry point of ``tspsim run --html`` and ``tspsim view``.
    """
    write_text_atomic(Path(path), render_html(runs, ranks))

"""Interactive timeline viewer: one self-contained HTML file (design.md §6, conventions.md (d)).

Modules: :mod:`~.style` (sizes, colours), :mod:`~.spans` (stream lanes), :mod:`~.panels` (memory and
links), :mod:`~.figure` (the figure of one run), :mod:`~.page` (the HTML page and writing it).

Layout of one run's figure (plotly, :func:`build_timeline_figure`), all panels on one shared time axis in
**milliseconds** (``make_subplots(shared_xaxes=True)``, so zoom, pan and the range slider act on every panel):

1. **Stream lanes** — one lane per (GPU, stream), compute first (node → GPU → stream, top-down). Spans are
   coloured by category (:data:`tspsim.outputs.export.SPAN_CATEGORIES`: GEMM, attention, elementwise, optimizer,
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

from tspsim.outputs.viewer.figure import build_timeline_figure
from tspsim.outputs.viewer.page import render_html, summary_html, write_html
from tspsim.outputs.viewer.panels import memory_series
from tspsim.outputs.viewer.style import BAR_LIMIT, DEFAULT_MAX_RANKS, HOVER_LIMIT, MEMORY_STYLE

__all__ = ["BAR_LIMIT", "DEFAULT_MAX_RANKS", "HOVER_LIMIT", "MEMORY_STYLE", "build_timeline_figure", "memory_series",
           "render_html", "summary_html", "write_html"]

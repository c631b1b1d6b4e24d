"""Interactive timeline viewer: one self-contained HTML file that opens a 1,024-GPU run in seconds.

Modules: :mod:`~.style` (sizes, colours, limits), :mod:`~.decimate` (per-pixel decimation), :mod:`~.spans`
(stream lanes), :mod:`~.panels` (memory and links), :mod:`~.figure` (the figure of one run and the data
to refine it), :mod:`~.page` (the HTML page and writing it), ``viewer.js`` (the page's script).

Layout of one run's figure (plotly, :func:`build_timeline_figure`), all panels on one shared time axis in
**milliseconds** (``make_subplots(shared_xaxes=True)``, so zoom, pan and the range slider act on every panel):

1. **Stream lanes** — one lane per (GPU, stream), compute first (node → GPU → stream, top-down). Spans are
   coloured by category (:data:`tspsim.outputs.export.SPAN_CATEGORIES`); one trace per category so the
   legend toggles categories. Hover shows the op name, GPU, stream, layer, phase, start, duration and
   FLOPs (compute) or bytes (communication). Up to :data:`BAR_LIMIT` spans are drawn as ``go.Bar``;
   beyond that as WebGL ``go.Scattergl`` line segments plus a transparent midpoint-marker trace per
   category that carries the hover text. Beyond :data:`EXACT_LIMIT` spans the overview is decimated per
   pixel column (a column takes the colour of the category covering most of it) and the page redraws the
   lanes from the full span table on every zoom — exactly once the window holds at most
   :data:`EXACT_LIMIT` spans.
2. **Memory** of one GPU — stacked per-category areas (PyTorch memory-timeline order and colours), the
   HBM capacity line and the peak marked; the hover shows the category and the total. A dropdown switches
   the GPU.
3. **Link utilisation** (when the run recorded links) — node fabric (xGMI / NVLink) per node, and in a
   panel of its own NIC transmit / receive per node and the NIC of the first shown rank of each node: the
   mean and the max per bin (bins of at least :data:`~.style.LINK_BIN_PX` pixels, re-binned on zoom).

Which ranks: by default the simulated ranks, at most :data:`DEFAULT_MAX_RANKS` (a 1,024-GPU run is simulated
as one replica, so that is one replica's ranks); ``ranks=`` picks others among the simulated ones.

The page (:func:`render_html` / :func:`write_html`) embeds plotly.js (works offline) and one gzip-compressed
data block per run, decoded only when the run is selected (a loading indicator shows meanwhile); a run
selector switches runs. Every string that comes from a result file is ``html.escape``-d wherever it
reaches HTML.
"""

from tspsim.outputs.viewer.figure import RunView, build_run_view, build_timeline_figure
from tspsim.outputs.viewer.page import render_html, summary_html, write_html
from tspsim.outputs.viewer.panels import memory_series
from tspsim.outputs.viewer.style import BAR_LIMIT, DEFAULT_MAX_RANKS, EXACT_LIMIT, MEMORY_STYLE

__all__ = ["BAR_LIMIT", "DEFAULT_MAX_RANKS", "EXACT_LIMIT", "MEMORY_STYLE", "RunView", "build_run_view",
           "build_timeline_figure", "memory_series", "render_html", "summary_html", "write_html"]

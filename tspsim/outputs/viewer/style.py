"""Sizes, colours and limits of the timeline viewer (one place, so the figure and page agree)."""

from __future__ import annotations

import html
from typing import Any

from tspsim.opgraph import MEMORY_CATEGORIES

BAR_LIMIT = 4000
"""Above this many shown spans, lanes switch from ``go.Bar`` (one SVG element per span, plotly.js #4922) to
one thick SVG line path per category."""
EXACT_LIMIT = 20_000
"""Above this many shown spans, the overview is decimated per pixel column and refined on zoom (the page
draws every span exactly once the zoomed window holds at most this many)."""
OVERVIEW_PX = 1000
"""Pixel columns assumed for the overview (the plot area of a 1400-pixel-wide window); the page refines to
the real width on the first zoom."""
HOVER_PX = 12
"""Drawn span segments get a vertex at least every this many pixels: plotly hovers the nearest vertex."""
LINK_BIN_PX = 2
"""Link utilisation is binned so that a bin spans at least this many pixel columns."""
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

FABRIC_KINDS = {"xgmi": "xGMI", "nvlink_up": "NVLink", "nvlink_down": "NVLink"}
LINK_COLOURS = ("#4C78A8", "#E45756", "#54A24B", "#B279A2", "#F58518", "#72B7B2", "#9D755D", "#EECA3B")

PLOTLY_CONFIG: dict[str, Any] = {"displaylogo": False, "scrollZoom": True, "responsive": True,
                                 "toImageButtonOptions": {"format": "png", "scale": 2}}


def esc(value: Any) -> str:
    """``value`` as text safe inside HTML (quotes included)."""
    return html.escape(str(value), quote=True)

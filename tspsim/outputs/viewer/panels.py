"""The memory and link-utilisation panels of the timeline figure: their series and traces.

* Memory: :func:`memory_series` (one GPU's stacked categories over time); the figure draws a per-pixel
  decimation (:func:`~tspsim.outputs.viewer.decimate.decimate_steps`) with the total in the hover.
* Links: :func:`link_groups` picks the groups drawn (node fabric per node; NIC transmit/receive per node;
  one representative NIC), :func:`group_series` their exact utilisation step series (% of the group's
  capacity) and :func:`link_traces` draws it as the mean and max per bin
  (:func:`~tspsim.outputs.viewer.decimate.bin_steps`) — or exactly, when the series has no more steps
  than there are bins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tspsim.engine.timeline import Timeline
from tspsim.opgraph import MEMORY_CATEGORIES
from tspsim.outputs.viewer.decimate import bin_steps
from tspsim.outputs.viewer.style import FABRIC_KINDS, LINK_COLOURS, esc


def memory_series(tl: Timeline, rank: int, end_s: float | None = None
                  ) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """Step series of ``rank``'s memory: (times ms, {category: GB after each event}, index of the peak).

    One point per memory event (not coalesced, so a same-instant allocate-then-free still shows), plus a
    final point at the end of the run (``end_s``, default the timeline's end). The peak index is the first
    maximum of the total, as :meth:`~tspsim.engine.timeline.Timeline.peak_memory` defines it.
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
    times[n] = max((tl.end_s if end_s is None else end_s) * 1e3, times[n - 1] if n else 0.0)
    for k in per_cat:
        per_cat[k][n] = per_cat[k][n - 1] if n else 0.0
    total = sum(per_cat.values())
    peak = int(np.argmax(total)) if n else 0
    return times, per_cat, peak


def step_mean(series: list[list[tuple[float, float]]], capacity: float) -> tuple[np.ndarray, np.ndarray]:
    """Sum of several step series (bytes/s) over their union of change times, as % of ``capacity``."""
    times = np.unique(np.concatenate([np.asarray([t for t, _ in s], dtype=np.float64) for s in series]))
    total = np.zeros_like(times)
    for s in series:
        ts = np.asarray([t for t, _ in s], dtype=np.float64)
        vs = np.asarray([v for _, v in s], dtype=np.float64)
        idx = np.searchsorted(ts, times, side="right") - 1
        total += np.where(idx >= 0, vs[np.clip(idx, 0, None)], 0.0)
    return times * 1e3, 100.0 * total / capacity


@dataclass(frozen=True)
class LinkGroup:
    """Links drawn as one utilisation series."""

    label: str
    """Legend label, e.g. ``node00 xGMI, 56 links``."""
    links: tuple[int, ...]
    """Link indices of the timeline."""
    panel: str
    """``fabric`` (node fabric panel) or ``nic`` (NIC panel)."""
    shown: bool
    """Visible at first (else one legend click away)."""


def link_groups(tl: Timeline, ranks: Sequence[int], per_node: int) -> list[LinkGroup]:
    """Groups of the link panels, for at most 4 nodes of the shown ranks.

    Per node: the node fabric's mean utilisation and the NICs' mean transmit utilisation are shown; the
    NICs' mean receive utilisation and the first shown rank's own NIC (a representative single link)
    start hidden in the legend (one click shows them).
    """
    nodes = sorted({r // per_node for r in ranks})[:4]
    first_rank = {n: min(r for r in ranks if r // per_node == n) for n in nodes}
    groups: list[LinkGroup] = []
    for n in nodes:
        fabric: list[int] = []
        nic_up: list[int] = []
        nic_down: list[int] = []
        rep: dict[str, int] = {}
        for idx, meta in sorted(tl.link_meta.items()):
            kind = str(meta.get("kind", ""))
            if kind in FABRIC_KINDS:
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
        fabric_name = next((FABRIC_KINDS[str(tl.link_meta[i]["kind"])] for i in fabric), "fabric")
        if fabric:
            groups.append(LinkGroup(f"node{n:02d} {fabric_name} (mean of {len(fabric)} links)", tuple(fabric),
                                    "fabric", True))
        if nic_up:
            groups.append(LinkGroup(f"node{n:02d} NICs tx (mean of {len(nic_up)})", tuple(nic_up), "nic", True))
        if nic_down:
            groups.append(LinkGroup(f"node{n:02d} NICs rx (mean of {len(nic_down)})", tuple(nic_down), "nic",
                                    False))
        for kind, label in (("nic_up", "tx"), ("nic_down", "rx")):
            if kind in rep:
                groups.append(LinkGroup(f"NIC of rank {first_rank[n]} {label}", (rep[kind],), "nic", False))
    return groups


def group_series(tl: Timeline, group: LinkGroup) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact utilisation of a group: (change times ms, % of the group's capacity); None without data."""
    sers = [tl.links[k] for k in group.links if tl.links.get(k)]
    if not sers:
        return None
    cap = sum(float(tl.link_meta[k]["capacity_Bps"]) for k in group.links)
    return step_mean(sers, cap)


def link_view(x: np.ndarray, y: np.ndarray, x0: float, x1: float, width: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What the link panel draws in [x0, x1]: (mean x, mean y, max x, max y).

    The mean and max per bin of ``width`` (:func:`bin_steps`), each bin's value held to its end; when the
    series changes fewer times in the window than there are bins, the exact series (and no max line).
    """
    lo = int(np.searchsorted(x, x0, side="right"))
    hi = int(np.searchsorted(x, x1, side="left"))
    n_bins = int(np.ceil((x1 - x0) / width - 1e-9))
    if hi - lo <= n_bins:
        before = y[lo - 1] if lo > 0 else 0.0
        xs = np.concatenate([[x0], x[lo:hi], [x1]])
        ys = np.concatenate([[before], y[lo:hi], [y[hi - 1] if hi > lo else before]])
        return xs, ys, np.zeros(0), np.zeros(0)
    starts, mean, peak = bin_steps(x, y, x0, x1, width)
    xs = np.append(starts, x1)
    return xs, np.append(mean, mean[-1]), xs.copy(), np.append(peak, peak[-1])


def link_traces(group: LinkGroup, colour: str, legend: str, xs: np.ndarray, mean: np.ndarray, mx: np.ndarray,
                max_y: np.ndarray) -> list[dict[str, Any]]:
    """The max line (thin, same legend group) and the mean line (in the legend) of one group, as plotly dicts."""
    vis: bool | str = True if group.shown else "legendonly"
    name = esc(group.label)
    return [
        {"type": "scatter", "x": _floats(mx, 6), "y": _floats(max_y, 3), "mode": "lines",
         "line": {"shape": "hv", "width": 0.8, "color": colour}, "opacity": 0.45, "name": f"{name} max",
         "legendgroup": name, "legend": legend, "showlegend": False, "visible": vis,
         "hovertemplate": f"{name}<br>max %{{y:.1f}} % in the bin from %{{x:.4f}} ms<extra></extra>"},
        {"type": "scatter", "x": _floats(xs, 6), "y": _floats(mean, 3), "mode": "lines",
         "line": {"shape": "hv", "width": 1.8, "color": colour}, "name": name, "legendgroup": name,
         "legend": legend, "visible": vis,
         "hovertemplate": f"{name}<br>%{{y:.1f}} % from %{{x:.4f}} ms<extra></extra>"},
    ]


def _floats(a: np.ndarray, digits: int) -> list[float]:
    return np.round(np.asarray(a, dtype=np.float64), digits).tolist()


def link_colour(i: int) -> str:
    """Colour of the i-th link group of a panel."""
    return LINK_COLOURS[i % len(LINK_COLOURS)]

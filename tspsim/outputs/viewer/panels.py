"""The memory and link-utilization panels of the timeline figure."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tspsim.engine.timeline import Timeline
from tspsim.opgraph import MEMORY_CATEGORIES
from tspsim.outputs.viewer.style import FABRIC_KINDS


def memory_series(tl: Timeline, rank: int) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """Step series of ``rank``'s memory: (times ms, {category: GB after each event}, index of the peak).

    One point per memory event (not coalesced, so a same-instant allocate-then-free still shows), plus a
    final point at the end of the run. The peak index is the first maximum of the total, as
    :meth:`~tspsim.engine.timeline.Timeline.peak_memory` defines it.
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


def link_groups(tl: Timeline, ranks: Sequence[int], per_node: int) -> list[tuple[str, list[int], str, bool]]:
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
            groups.append((f"node{n:02d} {fabric_name} (mean of {len(fabric)} links)", fabric, "solid", True))
        if nic_up:
            groups.append((f"node{n:02d} NICs tx (mean of {len(nic_up)})", nic_up, "dash", True))
        if nic_down:
            groups.append((f"node{n:02d} NICs rx (mean of {len(nic_down)})", nic_down, "dot", False))
        for kind, label in (("nic_up", "tx"), ("nic_down", "rx")):
            if kind in rep:
                groups.append((f"NIC of rank {first_rank[n]} {label}", [rep[kind]], "dashdot", False))
    return groups

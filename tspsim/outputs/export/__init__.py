"""Exports of a simulated run to other tools' formats (design.md §6), and naming shared with the viewer.

* :mod:`tspsim.outputs.export.perfetto` — Chrome trace-event JSON for Perfetto / chrome://tracing
  (conventions.md (a)).
* :mod:`tspsim.outputs.export.hta` — one Kineto-style trace per rank for Holistic Trace Analysis
  (conventions.md (b)).
* :mod:`tspsim.outputs.export.chakra` — Chakra execution traces, one ``<prefix>.<rank>.et`` per rank
  (conventions.md (c)).

Everything here reads only a run's stable entry and its :class:`~tspsim.engine.timeline.Timeline`. The helpers
below give every consumer the same names: a GPU is ``node07/gpu3`` (node-major ranks), streams are ordered
compute first, and spans fall into the colour/legend categories of :data:`SPAN_CATEGORIES`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

from tspsim.core.errors import TspsimError
from tspsim.core.units import format_ranks
from tspsim.engine.timeline import Timeline
from tspsim.opgraph import Op

FORMATS = ("perfetto", "hta", "chakra")
"""Formats of ``tspsim export --format``."""

# Span categories: key -> (legend label, colour). Order = legend order. Compute kinds first, then one
# entry per collective kind, then point-to-point. Colours: Tableau-10 style, distinct on white.
SPAN_CATEGORIES: dict[str, tuple[str, str]] = {
    "gemm": ("GEMM", "#4C78A8"),
    "attention": ("attention", "#F58518"),
    "elementwise": ("elementwise", "#9DB7CF"),
    "optimizer": ("optimizer", "#B279A2"),
    "all_reduce": ("all-reduce", "#E45756"),
    "reduce_scatter": ("reduce-scatter", "#54A24B"),
    "all_gather": ("all-gather", "#EECA3B"),
    "broadcast": ("broadcast", "#FF9DA6"),
    "reduce": ("reduce", "#9D755D"),
    "all_to_all": ("all-to-all", "#72B7B2"),
    "p2p": ("P2P send/recv", "#4A4A4A"),
}

_KIND_CATEGORY = {"gemm": "gemm", "attention_fwd": "attention", "attention_bwd": "attention",
                  "elementwise": "elementwise", "optimizer": "optimizer", "send": "p2p", "recv": "p2p"}

# Preferred lane order of streams inside one GPU; unknown streams follow alphabetically.
STREAM_ORDER = ("compute", "comm", "kv", "weights", "weights_tx", "grads", "ring", "dp")


def span_category(op: Op) -> str | None:
    """Category key of an op's span, or None for pure memory events (zero-cost ``memory`` ops)."""
    if op.kind == "memory":
        return None
    return _KIND_CATEGORY.get(op.kind, op.kind)


def stream_sort_key(stream: str) -> tuple[int, str]:
    """Sort key putting ``compute`` first, then the known communication streams, then the rest."""
    try:
        return (STREAM_ORDER.index(stream), "")
    except ValueError:
        return (len(STREAM_ORDER), stream)


def rank_streams(tl: Timeline) -> dict[int, list[str]]:
    """Streams of every simulated rank that ran at least one span-producing op, in lane order."""
    out: dict[int, set[str]] = {}
    for op in tl.ops:
        if op.kind != "memory":
            out.setdefault(op.rank, set()).add(op.stream)
    return {r: sorted(s, key=stream_sort_key) for r, s in sorted(out.items())}


@functools.lru_cache(maxsize=32)
def _preset_gpus_per_node(name: str) -> int | None:
    from tspsim.spec.topology_file import load_topology

    try:
        return load_topology(name).gpus_per_node
    except (TspsimError, OSError, ValueError):
        return None


def gpus_per_node(tl: Timeline) -> int:
    """GPUs per node of the timeline's topology.

    Read from the topology preset or file the run names; if that cannot be loaded here (a YAML file from
    elsewhere), inferred from the recorded node-fabric links, else 8.
    """
    n = _preset_gpus_per_node(tl.topology_name) if tl.topology_name else None
    if n:
        return n
    peers: dict[str, set[str]] = {}
    for meta in tl.link_meta.values():
        if meta.get("kind") == "xgmi":
            peers.setdefault(str(meta["src"]), set()).add(str(meta["dst"]))
        elif meta.get("kind") == "nvlink_up":
            peers.setdefault(str(meta["dst"]), set()).add(str(meta["src"]))
    if peers:
        first = sorted(peers.items())[0]
        return len(first[1]) + (1 if first[0].startswith("g") else 0)
    return 8


def gpu_name(rank: int, per_node: int) -> str:
    """``node07/gpu3`` for global rank 59 with 8 GPUs per node (ranks are node-major)."""
    return f"node{rank // per_node:02d}/gpu{rank % per_node}"


def select_ranks(tl: Timeline, ranks: Sequence[int] | None, default_limit: int | None = None) -> list[int]:
    """Validate a user's rank choice against the simulated ranks of ``tl``.

    Args:
        tl: the timeline.
        ranks: ranks asked for, or None for the default.
        default_limit: with ``ranks`` None, keep only this many of the simulated ranks (None: all).

    Raises:
        TspsimError: a rank that was not simulated (named, with the ranks that were).
    """
    simulated = sorted(tl.graph.ranks or {op.rank for op in tl.ops})
    if ranks is None:
        return simulated[:default_limit] if default_limit else simulated
    missing = [r for r in ranks if r not in set(simulated)]
    if missing:
        folded = ""
        if tl.graph.replica_nodes:
            folded = " (the run is folded: one replica was simulated and the other replicas mirror it)"
        raise TspsimError(f"rank {missing[0]} was not simulated{folded}; choose among ranks "
                          f"{rank_ranges(simulated)}")
    return sorted(dict.fromkeys(ranks))


def rank_ranges(ranks: Iterable[int]) -> str:
    """``0-7,16`` style text for a sorted rank list."""
    return format_ranks(ranks)


def select_runs(runs: Sequence[Any], run: int | None = None, schedule: str | None = None) -> list[Any]:
    """Pick runs of a result file: ``run`` by index or ``schedule`` by name; all runs when neither.

    ``runs`` items only need an ``entry`` attribute (:class:`tspsim.outputs.results_file.SavedRun`).

    Raises:
        TspsimError: an index out of range or a schedule the file does not hold (lists what it holds).
    """
    if run is not None and schedule is not None:
        raise TspsimError("give either --run or --schedule, not both")
    held = ", ".join(f"{i}: {r.entry.get('schedule', '?')}" for i, r in enumerate(runs))
    if run is not None:
        if not 0 <= run < len(runs):
            raise TspsimError(f"--run {run} is out of range: the result file holds {len(runs)} run(s) "
                              f"({held})")
        return [runs[run]]
    if schedule is not None:
        chosen = [r for r in runs if str(r.entry.get("schedule")) == schedule]
        if not chosen:
            raise TspsimError(f"--schedule {schedule!r} is not in the result file; it holds {held}")
        return chosen[:1]
    return list(runs)


def in_run(runs_count: int, index: int, entry: dict[str, Any]) -> str:
    """Prefix naming a run in error messages when a file holds several (``"run 1 (sp): "``), else empty."""
    return f"run {index} ({entry.get('schedule', '?')}): " if runs_count > 1 else ""


def safe_file_part(text: str) -> str:
    """A string usable in a file name (``tp+sp`` stays, separators and spaces become ``_``)."""
    return re.sub(r"[^A-Za-z0-9+.=-]+", "_", text).strip("._") or "run"

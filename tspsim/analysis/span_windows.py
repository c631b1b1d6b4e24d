"""Where a timeline's time goes, window by window, in array form (:func:`window_stats`).

:func:`tspsim.analysis.serving.time_breakdown` and :func:`~tspsim.analysis.serving.rank_overlap` define the
numbers; this module computes them for several windows of one timeline at once, on numpy arrays of the spans,
with **the same floating-point operations in the same order** as those definitions, so every number is the
same to the last bit (tests/test_serving_windows.py): element-wise steps are single IEEE operations, which numpy
rounds as Python does, and every running sum is a sequential accumulation (``np.add.accumulate`` from 0.0: each
partial sum is the previous one plus the next term, exactly Python's ``s += x`` loop, never a pairwise sum).

A span's class (:func:`op_class`) depends on its op's costs and shape only; :class:`OpClasses` keeps the classes
of a graph's ops across the timelines of that graph, and a caller that re-costs only some ops between replays
(decode steps: the attention ops) names them, so only those are looked at again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import chain
from typing import Any

import numpy as np

from tspsim.analysis.metrics import NOT_KERNELS, intersection_length, total_length
from tspsim.engine.costs import efficiency, large_efficiency
from tspsim.engine.timeline import Timeline
from tspsim.opgraph import COMPUTE_KINDS, OpGraph
from tspsim.spec.topology import GpuSpec

RankStats = dict[int, tuple[float, float, float]]
"""Per simulated rank: (compute s, communication s, overlapped s) — union lengths and their intersection."""

COMM, SKIP, OTHER, MEM, SPLIT, FLOPS = range(6)
"""Span classes (communication, not GPU time, elementwise, HBM-bound, tail split, FLOP-bound)."""


def op_class(op: Any, gpu: GpuSpec, hbm: float, peak: float) -> tuple[int, str, float]:
    """(class, HBM category, HBM time) of one op by its roofline (:func:`tspsim.analysis.serving.time_breakdown`).

    The HBM share of a ``SPLIT`` span is its HBM time over the span's kernel time, computed per span.
    """
    kind = op.kind
    if kind not in COMPUTE_KINDS:          # Op.is_comm
        return COMM, "", 0.0
    if kind in NOT_KERNELS:                # bookkeeping and the CPU lane: not GPU time
        return SKIP, "", 0.0
    if kind not in ("gemm", "attention_fwd", "attention_bwd"):
        return OTHER, "", 0.0
    cat = "weights_hbm" if op.kind == "gemm" else "kv_hbm"
    t_mem = op.hbm_bytes / hbm
    t_flops = op.flops / (peak * efficiency(op, gpu)) if op.flops > 0 else 0.0
    t_large = op.flops / (peak * large_efficiency(op, gpu))
    if t_mem >= t_flops:
        return MEM, cat, t_mem
    if t_mem >= t_large:    # streaming-bound shape paying the small-kernel tail
        return SPLIT, cat, t_mem
    return FLOPS, cat, t_mem


class OpClasses:
    """The roofline class of every op of one graph on one GPU (:func:`op_class`), kept across its timelines.

    ``volatile``: ids of the ops whose FLOPs, bytes or shape may change between uses (re-costing; decode steps
    change only their attention ops); each use looks at those again and classifies one anew when its costs or
    shape changed. None: every op may change (each use looks at all of them).
    """

    def __init__(self, graph: OpGraph, gpu: GpuSpec, volatile: Iterable[int] | None = None) -> None:
        self.graph = graph
        """The graph whose ops are classified."""
        self.gpu = gpu
        """The GPU they are classified on."""
        self._hbm = gpu.hbm_TBps * 1e12 * gpu.hbm_efficiency
        self._peak = gpu.peak_bf16_TFLOPS * 1e12
        ops = graph.ops
        n = len(ops)
        self.volatile: list[int] | None = None if volatile is None else sorted(set(volatile))
        """Ops looked at again on every use (None: all)."""
        self.ranks = tuple(graph.ranks) or tuple(sorted({op.rank for op in ops}))
        """The graph's simulated ranks (``graph.ranks``, else the ranks of its ops)."""
        self.rank = np.fromiter((op.rank for op in ops), dtype=np.int64, count=n)
        """Rank of each op, by id."""
        self.foreign = ~np.isin(self.rank, np.array(self.ranks, dtype=np.int64))
        """True for an op whose rank is not one of :attr:`ranks`."""
        self._by_cost: dict[tuple[Any, ...], tuple[int, str, float]] = {}
        """:func:`op_class` by (kind, FLOPs, bytes, shape): all it reads of an op."""
        self.cls = np.zeros(n, dtype=np.int64)
        """Class of each op (``COMM`` … ``FLOPS``), by id."""
        self.weights = np.zeros(n, dtype=bool)
        """True where the op's HBM category is ``weights_hbm`` (else ``kv_hbm``)."""
        self.t_mem = np.zeros(n, dtype=np.float64)
        """HBM time of each op (bytes / HBM bandwidth), s."""
        self._keys: list[tuple[Any, ...] | None] = [None] * n
        """(FLOPs, bytes, shape) each op was classified with; None: not classified (yet, or since it changed)."""
        self._known = np.zeros(n, dtype=bool)

    def refresh(self, graph: OpGraph, gpu: GpuSpec) -> None:
        """Forget the class of every op (of the volatile ones) whose costs or shape changed since it was classified.

        ``graph`` and ``gpu`` must be this one's (ValueError otherwise).
        """
        if graph is not self.graph or len(graph.ops) != len(self._keys) or not (gpu is self.gpu or gpu == self.gpu):
            raise ValueError("these op classes belong to another graph or GPU")
        ops, keys, known = graph.ops, self._keys, self._known
        for i in range(len(keys)) if self.volatile is None else self.volatile:
            key = keys[i]
            if key is not None:
                op = ops[i]
                if key != (op.flops, op.hbm_bytes, op.shape):
                    keys[i] = None
                    known[i] = False

    def ensure(self, ids: np.ndarray) -> None:
        """Classify the ops of ``ids`` that are not (only those: an op is classified when a span needs it)."""
        missing = ids[~self._known[ids]]
        if not len(missing):
            return
        ops = self.graph.ops
        by_cost = self._by_cost
        for i in np.unique(missing).tolist():
            op = ops[i]
            key = self._keys[i] = (op.flops, op.hbm_bytes, op.shape)
            known = by_cost.get((op.kind, *key))
            if known is None:
                known = by_cost[(op.kind, *key)] = op_class(op, self.gpu, self._hbm, self._peak)
            cls, cat, t_mem = known
            self.cls[i] = cls
            self.weights[i] = cat == "weights_hbm"
            self.t_mem[i] = t_mem
            self._known[i] = True


def _accumulate(terms: np.ndarray) -> float:
    """0.0 + terms[0] + terms[1] + … left to right, as a Python ``total += term`` loop does."""
    if not len(terms):
        return 0.0
    return float(np.add.accumulate(np.concatenate(([0.0], terms)))[-1])


def _union(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`tspsim.analysis.metrics.interval_union` of intervals of positive length, as arrays.

    Sorted by (start, end), an interval joins the merged one before it when it starts at or before that one's
    end (the running maximum of the ends).
    """
    if len(lo) == 0:
        return lo, hi
    order = np.lexsort((hi, lo))
    lo, hi = lo[order], hi[order]
    reach = np.maximum.accumulate(hi)
    first = np.empty(len(lo), dtype=bool)
    first[0] = True
    np.greater(lo[1:], reach[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:] - 1, len(lo) - 1)
    return lo[starts], reach[ends]


def _total(lo: np.ndarray, hi: np.ndarray) -> float:
    """:func:`tspsim.analysis.metrics.total_length` of a union (the function itself, on its Python floats)."""
    return total_length(zip(lo.tolist(), hi.tolist()))


def _intersection(alo: np.ndarray, ahi: np.ndarray, blo: np.ndarray, bhi: np.ndarray) -> float:
    """:func:`tspsim.analysis.metrics.intersection_length` of two unions (sorted, disjoint, gaps between).

    Its two-pointer sweep visits every overlapping pair (i, j) once, in increasing i then j, and adds
    min(ends) − max(starts); here the pairs are enumerated directly (for interval i: the j with
    end_j > start_i and start_j < end_i, a contiguous range) and their overlaps summed in that order.
    """
    if not len(alo) or not len(blo):
        return 0.0
    j0 = np.searchsorted(bhi, alo, side="right")
    j1 = np.searchsorted(blo, ahi, side="left")
    count = np.maximum(j1 - j0, 0)
    pairs = int(count.sum())
    if not pairs:
        return 0.0
    ii = np.repeat(np.arange(len(alo)), count)
    jj = np.arange(pairs) - np.repeat(np.cumsum(count) - count, count) + np.repeat(j0, count)
    return _accumulate(np.minimum(ahi[ii], bhi[jj]) - np.maximum(alo[ii], blo[jj]))


def _clip(lo: np.ndarray, hi: np.ndarray, start: float, end: float) -> tuple[np.ndarray, np.ndarray]:
    keep = (hi > start) & (lo < end)
    return np.maximum(lo[keep], start), np.minimum(hi[keep], end)


def span_table(tl: Timeline) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(op ids, starts, ends) of the spans of ``tl``, in span order, as arrays."""
    spans = tl.spans
    n = len(spans)
    table = np.fromiter(chain.from_iterable(spans), dtype=np.float64, count=3 * n).reshape(n, 3)
    return table[:, 0].astype(np.int64), table[:, 1].copy(), table[:, 2].copy()


def window_stats(tl: Timeline, gpu: GpuSpec, windows: Sequence[tuple[float, float]],
                 memo: OpClasses | None = None, table: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                 ) -> list[tuple[dict[str, float], RankStats]]:
    """(:func:`~tspsim.analysis.serving.time_breakdown`, :func:`~tspsim.analysis.serving.rank_overlap`) per window.

    Spans are classified once (``memo``: the classes of ``tl``'s graph on ``gpu``, kept by the caller across the
    timelines of one graph) and the per-rank unions built once (those of :func:`rank_intervals`), then clipped to
    each window: the union of clipped spans is the clipped union, so every number is the one the two functions
    give window by window (the same operations in the same order; tests/test_serving_windows.py). ``table``:
    :func:`span_table` of ``tl`` if already made.
    """
    classes = OpClasses(tl.graph, gpu) if memo is None else memo
    classes.refresh(tl.graph, gpu)
    launch = gpu.kernel_launch_us * 1e-6
    ids, a0, b0 = span_table(tl) if table is None else table
    keep = b0 > a0                                 # spans of positive length
    if not keep.all():
        ids, a0, b0 = ids[keep], a0[keep], b0[keep]
    classes.ensure(ids)
    rank, cls = classes.rank[ids], classes.cls[ids]
    is_weights, t_mem = classes.weights[ids], classes.t_mem[ids]
    full = b0 - a0
    lo = np.minimum(full, launch)                  # the launch part of each span: min(launch, length)
    share = np.ones(len(ids))
    split = np.flatnonzero(cls == SPLIT)           # HBM share of a tail-split kernel: min(1, t_mem / body)
    if len(split):
        body0 = full[split] - lo[split]
        pos = body0 > 0
        share[split[pos]] = np.minimum(1.0, t_mem[split[pos]] / body0[pos])
    graph_ranks = classes.ranks
    known = set(graph_ranks)
    first = float(a0.min()) if len(a0) else 0.0
    last = float(b0.max()) if len(b0) else 0.0
    kernel_spans = cls >= OTHER
    unions = {}
    foreign = classes.foreign[ids]
    extra = set(np.unique(rank[foreign]).tolist()) if foreign.any() else set()
    for r in sorted(known | extra):
        mine = rank == r
        comp, comm = mine & kernel_spans, mine & (cls == COMM)
        unions[r] = (_union(a0[comp], b0[comp]), _union(a0[comm], b0[comm]))
    out = []
    for start, end in windows:
        whole = start <= first and end >= last      # no span is cut: clipping changes nothing
        if whole:
            a, b, sel = a0, b0, slice(None)
        else:
            a, b = np.maximum(a0, start), np.minimum(b0, end)
            sel = np.flatnonzero(b > a)
            a, b = a[sel], b[sel]
        seen = dict.fromkeys(graph_ranks)
        w_foreign = foreign[sel]
        if w_foreign.any():             # ranks not in the graph's, in the order they first appear
            uniq, at = np.unique(rank[sel][w_foreign], return_index=True)
            seen.update(dict.fromkeys(int(r) for r in uniq[np.argsort(at)]))
        c = cls[sel]
        k = np.flatnonzero(c >= OTHER)             # kernel spans of the window
        at_k = k if whole else sel[k]              # … as indices of all spans
        c, dur = c[k], b[k] - a[k]
        over = lo[at_k] * dur / full[at_k]
        body = dur - over
        w_share, w_weights = share[at_k], is_weights[at_k]
        terms = np.empty(2 * len(k))               # other: each span's launch part, then its body if elementwise
        terms[0::2] = over
        terms[1::2] = body
        take = np.ones(2 * len(k), dtype=bool)
        take[1::2] = c == OTHER
        other = _accumulate(terms[take])
        split_k = c == SPLIT
        to_hbm = np.where(split_k, body * w_share, body)
        hbm_k = (c == MEM) | split_k
        weights = _accumulate(to_hbm[hbm_k & w_weights])
        kv = _accumulate(to_hbm[hbm_k & ~w_weights])
        compute = _accumulate(np.where(split_k, body * (1.0 - w_share), body)[split_k | (c == FLOPS)])
        communication = 0.0
        if whole:
            clipped = unions
        elif start < end:
            clipped = {r: (_clip(*cu, start, end), _clip(*mu, start, end)) for r, (cu, mu) in unions.items()}
        else:   # an empty window: the clipped intervals are not proper ones; the list functions handle them
            clipped = None
        if clipped is not None:
            stats: RankStats = {r: (_total(*cu), _total(*mu), _intersection(*cu, *mu))
                                for r, (cu, mu) in clipped.items()}
        else:
            stats = {}
            for r, (cu, mu) in unions.items():
                cl = _clip_list(cu, start, end)
                ml = _clip_list(mu, start, end)
                stats[r] = (total_length(cl), total_length(ml), intersection_length(cl, ml))
        for r in seen:
            t_comp, t_comm, overlap = stats.get(r, (0, 0, 0.0))
            exposed = t_comm - overlap
            communication += exposed
            other += (end - start) - t_comp - exposed
        sums = {"weights_hbm": weights, "kv_hbm": kv, "compute": compute, "communication": communication,
                "other": other}
        count = max(len(seen), 1)
        out.append(({key: v / count for key, v in sums.items()}, stats))
    return out


def clip_intervals(union: Iterable[tuple[float, float]], start: float, end: float) -> list[tuple[float, float]]:
    """The intervals of ``union`` that overlap (start, end), cut to it (list form of :func:`_clip`)."""
    return [(max(a, start), min(b, end)) for a, b in union if b > start and a < end]


def _clip_list(union: tuple[np.ndarray, np.ndarray], start: float, end: float) -> list[tuple[float, float]]:
    lo, hi = union
    return clip_intervals(zip(lo.tolist(), hi.tolist()), start, end)

"""When is a decode step periodic? Graph checks behind the exact fast timing of decode steps.

:func:`verify_cuts` proves that every block of a step ends at a quiescent instant; :func:`verify_periodic_structure`
that block ℓ+1's ops are block ℓ's shifted by a fixed id offset, with the same costs and dependencies; the
timing that builds on them is :mod:`tspsim.simulate.decode_timer`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import replace

from tspsim.opgraph import OpGraph
from tspsim.schedules.context import BuildContext
from tspsim.schedules.decode import DecodeStep


# ---------------------------------------------------------------------------------- cuts
def verify_cuts(graph: OpGraph, cuts: list[tuple[int, ...]]) -> bool:
    """True if every candidate cut is a quiescent boundary by construction of the graph.

    A cut C (one op per simulated rank) qualifies when (1) every op issued before C is C itself or an
    ancestor of some op of C, (2) every op issued after C descends from some op of C, (3) C has one op
    on every simulated rank and the ops issued between C's first and last op are C's. Ancestry includes
    the issue order on each stream. Then, once all ops of C have ended at one instant t_C, nothing
    issued before is still running and nothing issued after has started: no flow is on a link, no
    communication kernel slows a GPU, and the rest of the replay is the replay of the remaining ops
    started at t_C — time-shift invariant. (That the ops of C end at *one* instant is checked on each
    replay by :mod:`tspsim.simulate.inference`.)
    """
    ops = graph.ops
    n = len(ops)
    preds: list[list[int]] = [list(op.deps) for op in ops]
    succs: list[list[int]] = [[] for _ in range(n)]
    for op in ops:
        for d in op.deps:
            succs[d].append(op.id)
    for stream_ops in graph.streams().values():
        for a, b in zip(stream_ops, stream_ops[1:]):
            preds[b.id].append(a.id)
            succs[a.id].append(b.id)
    ranks = set(graph.ranks) or {op.rank for op in ops}
    for cut in cuts:
        if not cut or {ops[i].rank for i in cut} != ranks or len(cut) != len(ranks):
            return False
        lo, hi = min(cut), max(cut)
        if set(range(lo, hi + 1)) != set(cut):
            return False
        if len(_reach(cut, preds)) - len(cut) != lo or len(_reach(cut, succs)) - len(cut) != n - hi - 1:
            return False
    return True


def stream_predecessors(graph: OpGraph) -> dict[int, int]:
    """Op id → the op issued just before it on the same (rank, stream)."""
    out: dict[int, int] = {}
    for stream_ops in graph.streams().values():
        for a, b in zip(stream_ops, stream_ops[1:]):
            out[b.id] = a.id
    return out


def verify_periodic_structure(step: DecodeStep) -> bool:
    """True if the blocks of ``step`` form a periodic graph that a time shift can map onto itself.

    Checks, with P ops per block: every block has P ops; block ℓ ≥ 1 repeats block ℓ−1 op by op (rank,
    stream, kind, FLOPs, bytes, shape, payload, group, root) with its dependencies (and stream predecessors)
    shifted by P ids for ℓ ≥ 2; every dependency of a block-ℓ op lies in blocks ℓ−1 or ℓ, and every
    dependency of an epilogue op in the last block or the epilogue. Under these conditions the map
    "block ℓ → block ℓ+1" is an isomorphism of the not-yet-finished part of the graph, which is what
    :func:`tspsim.simulate.decode_timer.find_period` relies on.
    """
    ops, a, end = step.graph.ops, step.layer_starts, step.epilogue_start
    k = len(a)
    if k < 3:
        return False
    period = a[1] - a[0]
    bounds = [*a, end]
    if any(bounds[i + 1] - bounds[i] != period for i in range(k)):
        return False
    spred = stream_predecessors(step.graph)

    def preds(op_id: int) -> set[int]:
        out = set(ops[op_id].deps)
        if op_id in spred:
            out.add(spred[op_id])
        return out

    def sig(op_id: int) -> tuple:
        o = ops[op_id]
        return (o.rank, o.stream, o.kind, o.flops, o.hbm_bytes, o.shape, o.nbytes, o.group, o.root, o.algorithm)

    for layer in range(1, k):
        for i in range(period):
            cur, prev = a[layer] + i, a[layer - 1] + i
            if sig(cur) != sig(prev):
                return False
            pc = preds(cur)
            if any(d < a[layer - 1] for d in pc):
                return False
            if layer >= 2 and pc != {d + period for d in preds(prev)}:
                return False
    return all(d >= a[-1] for op_id in range(end, len(ops)) for d in preds(op_id))


def _reach(start: Iterable[int], edges: list[list[int]]) -> set[int]:
    """Nodes reachable from ``start`` (included) along ``edges``."""
    seen = set(start)
    todo = deque(seen)
    while todo:
        for nxt in edges[todo.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def with_layers(ctx: BuildContext, layers: int) -> BuildContext:
    """A fresh context like ``ctx`` for the same model cut to ``layers`` blocks (the periodic-unit graphs)."""
    return BuildContext(replace(ctx.model, layers=layers), ctx.topo, ctx.layout, ctx.workload, ctx.opts, fold=ctx.fold)

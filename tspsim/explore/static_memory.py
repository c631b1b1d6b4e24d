"""What the planner knows before simulating: a configuration whose static memory exceeds HBM is OOM.

Static memory — parameters, gradients, optimizer state and the runtime reserve — is allocated when a
step starts and held throughout (:meth:`tspsim.schedules.context.BuildContext.init_static`), so a
configuration whose static memory alone exceeds HBM is out of memory whatever its activations. It is
read from the ``static memory`` ops of the point's graph built with 1 and 2 blocks (milliseconds,
no replay) and extended linearly to the model's L blocks: every per-rank parameter count is an
embedding/head part plus L identical blocks, so static(L) = static(1) + (L − 1)·(static(2) − static(1))
per category, up to the integer rounding of each category (a few bytes): a configuration is only
declared OOM when the bound exceeds HBM by more than :data:`MARGIN_BYTES`, otherwise it is simulated.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tspsim.core.errors import TspsimError
from tspsim.opgraph import MEMORY_CATEGORIES, OpGraph
from tspsim.simulate import Point
from tspsim.simulate.graph import build_graph
from tspsim.simulate.point import resolve
from tspsim.spec.layout import SEQUENCE_SHARDED
from tspsim.spec.model import load_model

MARGIN_BYTES = 1 << 20
"""Static memory must exceed HBM by more than this to be called OOM without a simulation (1 MiB ≫ rounding)."""
GB = 1e9


def static_bytes(graph: OpGraph) -> dict[int, dict[str, int]]:
    """Per rank, per category: the bytes the graph's ``static memory`` ops allocate."""
    out: dict[int, dict[str, int]] = {}
    for op in graph.ops:
        if op.kind == "memory" and op.name == "static memory":
            per = out.setdefault(op.rank, dict.fromkeys(MEMORY_CATEGORIES, 0))
            for _when, cat, delta in op.mem:
                per[cat] += delta
    return out


def probe_point(point: Point) -> Point:
    """The point whose small graphs give ``point``'s static memory cheaply.

    Batch 1 and, for a sequence-sharded layout, the all-gather SP attention: static memory depends on
    neither (parameters, gradients and optimizer state follow the weight sharding, the reserve is per GPU).
    """
    options = tuple((k, v) for k, v in point.options if k != "sp_attention")
    if point.schedule in SEQUENCE_SHARDED or any(k == "sp_attention" for k, _ in point.options):
        options += (("sp_attention", "allgather"),)
    batch = point.batch if point.schedule == "satp-batch" else 1  # satp-batch needs its batch to divide
    return replace(point, batch=batch, options=options, search_max_batch=False)


def static_memory(point: Point) -> tuple[int, dict[str, int]]:
    """(bytes, per-category breakdown) of the rank with the most static memory, for the model's L blocks."""
    one = build_graph(point, layers=1)[0]
    two = build_graph(point, layers=2)[0]
    s1, s2 = static_bytes(one), static_bytes(two)
    if not s1 or s1.keys() != s2.keys():
        return 0, {}
    L = load_model(point.model).layers
    best, at = -1, {}
    for rank in s1:
        per = {c: s1[rank][c] + (L - 1) * (s2[rank][c] - s1[rank][c]) for c in MEMORY_CATEGORIES}
        total = sum(per.values())
        if total > best:
            best, at = total, per
    return best, at


def static_oom_entry(point: Point, known: dict[Point, tuple[int, dict[str, int]]] | None = None
                     ) -> dict[str, Any] | None:
    """The run entry of ``point`` if its static memory alone exceeds HBM (no simulation), else None.

    The entry has ``oom`` true, ``sim_path`` ``static_oom``, ``peak_memory_gb`` the static memory of
    the fullest rank (a lower bound of the peak) and its breakdown; time keys are null. ``known``
    caches :func:`static_memory` by :func:`probe_point` across the points of one plan.
    """
    topo, _model, layout, workload, opts = resolve(point)
    probe = probe_point(point)
    if known is not None and probe in known:
        best, at = known[probe]
    else:
        best, at = static_memory(probe)
        if known is not None:
            known[probe] = (best, at)
    hbm = topo.gpu.hbm_GB * GB
    if best <= hbm + MARGIN_BYTES:
        return None
    return {
        "schedule": point.schedule, "model": _model.name, "topology": topo.name, "mode": workload.mode,
        "seq_len": workload.seq_len, "batch": workload.batch, "degrees": dict(layout.degrees),
        "world_size": layout.world_size, "replicas": layout.replicas, "hbm_gb": topo.gpu.hbm_GB,
        "peak_memory_gb": best / GB, "oom": True,
        "memory_breakdown_gb": {c: at[c] / GB for c in MEMORY_CATEGORIES},
        "step_time_s": None, "tokens_per_s": None, "sim_events": 0, "sim_path": "static_oom",
        "sim_wall_s": None, "assumptions": opts.to_json(),
        "sp_attention": dict(point.options).get("sp_attention"),
    }


def prune_static_oom(state: Any) -> int:
    """Settle the points of a prepared sweep whose static memory exceeds HBM; return how many.

    Every point still to simulate in ``state`` (:class:`~tspsim.explore.sweep.SweepState`) that
    :func:`static_oom_entry` proves OOM is marked done with that entry. For the planner, which drops
    OOM configurations anyway (a sweep reports every point's step time, so it simulates them all).
    """
    pruned = []
    known: dict[Point, tuple[int, dict[str, int]]] = {}
    for i in state.todo:
        out = state.outcomes[i]
        try:
            entry = static_oom_entry(out.point, known)
        except TspsimError:  # the simulation will report it (e.g. a graph over the op limit)
            continue
        if entry is not None:
            out.status, out.entry, out.wall_s = "ok", entry, 0.0
            pruned.append(i)
    gone = set(pruned)
    state.todo = [i for i in state.todo if i not in gone]
    return len(pruned)

"""A floor on the ops of a ring-attention graph, known before building it: the planner's op-limit check.

Ring attention over Σ = p issues at least :func:`~tspsim.schedules.ring_attention.ring_ops_per_rank` ops per
simulated rank and block, so a graph of L blocks on R simulated ranks holds at least L · R · that many; when the
floor alone is over the op limit, the 1- and 2-block op-count probes (seconds for a Σ = 128 ring) are not needed:
their verdict is "over the limit" (``tests/test_plan_ring_floor.py``).
"""

from __future__ import annotations

from tspsim.core.errors import ConfigError, TspsimError
from tspsim.schedules.context import BuildContext
from tspsim.schedules.ring_attention import ring_ops_per_rank
from tspsim.simulate import Point
from tspsim.simulate.point import resolve
from tspsim.spec.layout import SEQUENCE_SHARDED
from tspsim.spec.loader import SpecLoader


def ring_ops_floor(point: Point, specs: SpecLoader | None = None) -> int:
    """A lower bound of the ops in ``point``'s full graph from its ring attention alone (0 when it has none).

    A training or forward point of a sequence-sharded layout (``sp``, ``tp+sp``, no pipeline) with
    ``sp_attention=ring`` over Σ = p ≥ 2 runs the ring in every block on every simulated rank, so its graph holds at
    least L · ranks · :func:`~tspsim.schedules.ring_attention.ring_ops_per_rank` ops (the graph cut to 1 and 2
    blocks too: ops(1) and ops(2) − ops(1) each hold one block's ring, so their extrapolation to L blocks is at
    least this). Ranks are those the build simulates (:class:`~tspsim.schedules.context.BuildContext`, no op
    built): milliseconds, where building the 1-block graph of a Σ = 128 ring takes seconds.
    """
    if point.schedule not in SEQUENCE_SHARDED or point.mode not in ("train", "forward"):
        return 0
    topo, model, layout, workload, opts = resolve(point, specs)
    if layout.pp > 1 or layout.sp < 2 or opts.sp_attention != "ring":
        return 0
    try:
        ctx = BuildContext(model, topo, layout, workload, opts)
    except ConfigError:
        return 0
    return model.layers * len(ctx.all_ranks) * ring_ops_per_rank(layout.sp, ctx.training)


def ring_over_limit(point: Point, specs: SpecLoader | None, limit: int) -> bool:
    """True when :func:`ring_ops_floor` alone exceeds ``limit`` (the graph is over it, no probe needed)."""
    try:
        return ring_ops_floor(point, specs) > limit
    except TspsimError:
        return False

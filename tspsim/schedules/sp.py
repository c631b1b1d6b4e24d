"""``sp`` — sequence parallelism: weights replicated, tokens sharded D ways (zig-zag), K/V all-gather.

Per block and rank (forward): one packed all-gather of K and V, (D−1)/D · 2·B·S·H_kv·s bytes
(tsp.md §5, with g = h/h_kv: 2·B·S·h/g). No weight communication inside the replica; gradients of
the replicated weights are all-reduced over the SP group like data parallelism would (reported
under ``all_reduce`` on the ``dp`` stream together with the DP replicas).
"""

from __future__ import annotations

from tspsim.opgraph import OpGraph
from tspsim.schedules.block import BlockLayout
from tspsim.schedules.context import BuildContext
from tspsim.schedules.registry import SCHEDULES, Schedule
from tspsim.schedules.standard import build_standard


def build(ctx: BuildContext) -> OpGraph:
    """SP of degree D = ``ctx.layout.sp``."""
    return build_standard(ctx, BlockLayout("sp", 1, ctx.layout.sp, "replicated"))


SCHEDULES.register("sp", Schedule("sp", "sequence parallelism: replicated weights, zig-zag tokens, K/V all-gather",
                                  "tsp.md §5", build))

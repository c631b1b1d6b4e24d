"""``tp+sp`` — the 2-D grid: TP degree T inside the node × SP degree Σ outside (tsp.md §1, §5).

Per block and rank (forward): two TP all-reduces of B·(S/Σ)·h (4(T−1)/T·B·(S/Σ)·h·s bytes) and a
K/V all-gather over the Σ sequence shards of the rank's head shard (2(Σ−1)/Σ·B·S·(h/T)/g·s bytes).
One replica needs T·Σ GPUs, so T = 8, Σ = 2 spans two nodes and its K/V gathers cross the NICs.
"""

from __future__ import annotations

from tspsim.opgraph import OpGraph
from tspsim.schedules.block import BlockLayout
from tspsim.schedules.context import BuildContext
from tspsim.schedules.registry import SCHEDULES, Schedule
from tspsim.schedules.standard import build_standard


def build(ctx: BuildContext) -> OpGraph:
    """TP (T = ``plan.tp``, inner) × SP (Σ = ``plan.sp``, outer)."""
    return build_standard(ctx, BlockLayout("tp+sp", ctx.layout.tp, ctx.layout.sp, "replicated"))


SCHEDULES.register("tp+sp", Schedule("tp+sp", "2-D grid: TP degree T inside the node x SP degree (--sp) outside",
                                     "tsp.md §5", build))

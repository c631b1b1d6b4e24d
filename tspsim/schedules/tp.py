"""``tp`` — classic Megatron tensor parallelism (reference/tensor-parallelism-analysis.md).

Column-parallel W_Q/W_K/W_V and W_gate/W_up, row-parallel W_O and W_down, residual stream replicated
on every rank; an all-reduce of B·T·H·s after the attention output and after the MLP down projection
(2 × 2(p−1)/p·M_H·s bytes per rank per block, forward), and the transposed all-reduces in backward.
"""

from __future__ import annotations

from tspsim.opgraph import OpGraph
from tspsim.schedules.block import BlockLayout
from tspsim.schedules.context import BuildContext
from tspsim.schedules.registry import SCHEDULES, Schedule
from tspsim.schedules.standard import build_standard


def build(ctx: BuildContext) -> OpGraph:
    """Classic TP of degree D = ``ctx.layout.tp``."""
    return build_standard(ctx, BlockLayout("tp", ctx.layout.tp, 1, "replicated"))


SCHEDULES.register("tp", Schedule("tp", "classic Megatron TP: column/row parallel, all-reduce, replicated residual",
                                  "tensor-parallelism-analysis.md", build))

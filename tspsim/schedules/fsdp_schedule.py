"""``fsdp`` — pure fully sharded data parallelism (ZeRO-3): no model parallelism, every GPU a replica.

Each GPU runs the whole model on its own micro-batch (D = 1, DP = the GPUs used) and keeps 1/DP of every
parameter, gradient and optimizer state; each block's parameters are all-gathered before its forward and
again before its backward, and its gradients reduce-scattered after its backward
(:mod:`tspsim.schedules.fsdp`, :mod:`tspsim.schedules.data_parallel`). The standard block with T = Σ = 1.
"""

from __future__ import annotations

from tspsim.opgraph import OpGraph
from tspsim.schedules.block import BlockLayout
from tspsim.schedules.context import BuildContext
from tspsim.schedules.registry import SCHEDULES, Schedule
from tspsim.schedules.standard import build_standard


def build(ctx: BuildContext) -> OpGraph:
    """Pure FSDP (the ZeRO stage is 3 for this schedule: :func:`tspsim.simulate.point.resolve`)."""
    return build_standard(ctx, BlockLayout("fsdp", 1, 1, "replicated"))


SCHEDULES.register("fsdp", Schedule("fsdp", "pure FSDP / ZeRO-3: no model parallelism, parameters, gradients and "
                                    "optimizer state sharded over all GPUs", "Rajbhandari et al. 2020; PyTorch FSDP",
                                    build))

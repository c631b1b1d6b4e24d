"""Schedule generators, one module each, registered by stable name (design.md §3).

``tp``, ``satp-seq``, ``satp-batch``, ``sp``, ``tp+sp`` lay the standard block
(:mod:`tspsim.schedules.block`) onto different grids; ``tsp`` is the folded TSP schedule
(:mod:`tspsim.schedules.tsp`); ``fsdp`` is pure ZeRO-3 data parallelism
(:mod:`tspsim.schedules.fsdp_schedule`). Pipeline parallelism composes with all of them
(:mod:`tspsim.schedules.pipeline`). Data-parallel gradient sync and the optimizer step are shared
(:mod:`tspsim.schedules.data_parallel`).
"""

# Importing the modules registers them (order = listing order).
from tspsim.schedules import satp, sp, tp, tp_sp, tsp_step, fsdp_schedule  # noqa: E402,F401,I001
from tspsim.schedules.registry import SCHEDULES, Schedule

__all__ = ["SCHEDULES", "Schedule"]

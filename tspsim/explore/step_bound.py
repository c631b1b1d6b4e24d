"""A provable lower bound on a training step's time, read from its op graph: the planner's branch and bound.

**The bound.** The replay gives every GPU one compute slot (:mod:`tspsim.engine.sim`, ``_compute``: a compute op
of another stream queues until the slot is free), and a running kernel progresses at rate 1/(1 + s) with s ≥ 0
the slowdown of the communication kernels beside it (``_rate``): never faster than on an idle GPU. So every
compute op of rank r lasts at least :func:`~tspsim.engine.costs.compute_seconds` (its duration on an idle
GPU, with the stack's kernel costs: :func:`~tspsim.engine.costs.kernel_gpu`), they run one after the other, and
the step — the end of the timeline, which the periodic path extends exactly — lasts at least

    T ≥ max over simulated ranks r of Σ_{compute ops of r} compute_seconds(op).

Every block adds the same compute ops, so per rank the sum over the model's L blocks is
c(1) + (L − 1)·(c(2) − c(1)) from the graphs cut to 1 and 2 blocks (milliseconds to build, no replay; the
static-memory probe's argument, :mod:`tspsim.explore.static_memory`). ``tests/test_plan_step_bound.py`` checks the
extrapolated sum against the full graph's and the bound against the simulated step on many configurations.

**The use.** A training configuration processes ``tokens_per_step`` tokens per step, so its tokens/s is at most
tokens_per_step / T. When that is below the tokens/s of a configuration already simulated that fits in HBM, the
configuration cannot be the best one: the planner does not simulate it and reports it as *dominated* with both
numbers. Pipelined layouts (stages need blocks to divide among them) get no bound and are always simulated.
"""

from __future__ import annotations

from dataclasses import dataclass

from tspsim.core.errors import TspsimError
from tspsim.explore.static_memory import SmallGraphs, compute_per_rank, own_point, small_graphs
from tspsim.simulate import Point
from tspsim.spec.loader import SpecLoader

__all__ = ["StepBound", "compute_per_rank", "step_bound"]


@dataclass(frozen=True)
class StepBound:
    """What the bound says about one training point."""

    step_s: float
    """Lower bound of the step time: the busiest rank's compute on an idle GPU, seconds."""
    tokens_per_step: int
    """Tokens one step processes over all replicas (batch · seq · micro-batches · replicas)."""

    @property
    def tokens_per_s(self) -> float:
        """Upper bound of the configuration's tokens/s."""
        return self.tokens_per_step / self.step_s if self.step_s > 0 else float("inf")

    def note(self, best_tokens_per_s: float) -> str:
        """``dominated: step ≥ 0.52 s (compute of the busiest GPU), ≤ 500,123 tokens/s < best 752,170 tokens/s``."""
        return (f"dominated: step ≥ {self.step_s:.4g} s (compute of the busiest GPU), ≤ {self.tokens_per_s:,.0f} "
                f"tokens/s < best simulated {best_tokens_per_s:,.0f} tokens/s")


def step_bound(point: Point, specs: SpecLoader | None = None,
               known: dict[Point, SmallGraphs | None] | None = None) -> StepBound | None:
    """The :class:`StepBound` of a training point from its 1- and 2-block graphs, or None.

    None: no bound (pipelined layouts, other modes, or a graph that cannot be built): simulate the point.
    ``known`` is the plan's memo of small graphs (:func:`~tspsim.explore.static_memory.small_graphs`), shared with
    its op-count probes (the same graphs at batch 1).
    """
    if point.mode != "train" or point.pipeline.stages > 1:
        return None
    key = own_point(point)
    try:
        small = known[key] if known is not None and key in known else small_graphs(key, specs)
    except TspsimError:
        return None
    if known is not None:
        known[key] = small
    if small is None:   # over the op limit (the planner does not run it)
        return None
    worst = small.compute_s()
    return StepBound(worst, small.tokens_per_step) if worst is not None else None

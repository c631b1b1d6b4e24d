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
static-memory probe's argument, :mod:`tspsim.explore.static_memory`). ``tests/test_step_bound.py`` checks the
extrapolated sum against the full graph's and the bound against the simulated step on many configurations.

**The use.** A training configuration processes ``tokens_per_step`` tokens per step, so its tokens/s is at most
tokens_per_step / T. When that is below the tokens/s of a configuration already simulated that fits in HBM, the
configuration cannot be the best one: the planner does not simulate it and reports it as *dominated* with both
numbers. Pipelined layouts (stages need blocks to divide among them) get no bound and are always simulated.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tspsim.analysis.metrics import tokens_per_step
from tspsim.core.errors import TspsimError
from tspsim.engine.costs import compute_seconds, kernel_gpu
from tspsim.opgraph import COMPUTE_KINDS, OpGraph
from tspsim.simulate import Point
from tspsim.simulate.graph import build_graph
from tspsim.spec.loader import SpecLoader
from tspsim.spec.topology import Topology


def compute_per_rank(graph: OpGraph, topo: Topology) -> dict[int, float]:
    """Per simulated rank: Σ compute_seconds of its compute ops on an idle GPU (the graph's kernel costs)."""
    gpu = kernel_gpu(topo.gpu, graph.meta or {})
    out: dict[int, float] = {}
    for op in graph.ops:
        if op.kind in COMPUTE_KINDS:
            out[op.rank] = out.get(op.rank, 0.0) + compute_seconds(op, gpu)
    return out


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


def step_bound(point: Point, specs: SpecLoader | None = None) -> StepBound | None:
    """The :class:`StepBound` of a training point from its 1- and 2-block graphs, or None.

    None: no bound (pipelined layouts, other modes, or a graph that cannot be built): simulate the point.
    """
    if point.mode != "train" or point.pipeline.stages > 1:
        return None
    specs = specs or SpecLoader()
    probe = replace(point, search_max_batch=False)
    try:
        one, topo, _model, layout, workload, _opts = build_graph(probe, layers=1, specs=specs)
        two = build_graph(probe, layers=2, specs=specs)[0]
    except TspsimError:
        return None
    if layout.pp > 1:
        return None
    c1, c2 = compute_per_rank(one, topo), compute_per_rank(two, topo)
    if not c1 or c1.keys() != c2.keys():
        return None
    L = specs.model(point.model).layers
    worst = max(c1[r] + (L - 1) * (c2[r] - c1[r]) for r in c1)
    return StepBound(worst, tokens_per_step(workload, layout.replicas, layout.micro_batches))

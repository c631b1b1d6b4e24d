"""Pieces every schedule shares: the build context, static memory, DP gradient sync, optimizer step.

Conventions all schedules follow (so metrics and tests can rely on them):

* streams: ``compute``; ``comm`` for tensor-parallel collectives; ``kv`` for K/V all-gathers and their
  backward reduce-scatters; ``weights`` for TSP weight broadcasts and ring transfers; ``dp`` for
  data-parallel gradient collectives; ``host`` for the CPU lane of stacks whose CPU is simulated
  (:mod:`tspsim.schedules.host`).
* memory categories as in :data:`tspsim.opgraph.MEMORY_CATEGORIES`; static memory (parameters,
  gradients, optimizer state, runtime reserve) is allocated by the first op of each rank.
* FLOPs: a GEMM of (m × k)·(k × n) is 2·m·n·k; backward GEMMs are twice the forward (data and weight
  gradients); flash-attention backward is 2.5× its forward (5 matmuls vs 2).
* every op's name starts with ``L<layer>.`` inside blocks, so traces read naturally.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tspsim.core.errors import ConfigError
from tspsim.opgraph import GraphBuilder, Op, OpGraph
from tspsim.schedules.data_parallel import DataParallel
from tspsim.schedules.host import HostedBuilder
from tspsim.spec.assumptions import Assumptions
from tspsim.spec.fold import FoldPlan, plan_fold
from tspsim.spec.layout import Layout
from tspsim.spec.model import ModelConfig
from tspsim.spec.stack import Stack
from tspsim.spec.topology import Topology
from tspsim.spec.workload import Workload

ATTN_BWD_FACTOR = 2.5
"""FlashAttention backward FLOPs / forward FLOPs (Dao 2023: 5 matmuls vs 2)."""

MAX_GRAPH_OPS = 1_000_000
"""Most ops one graph may hold (``TSPSIM_MAX_GRAPH_OPS`` overrides). A replay holds about 1–3 KB per op
(the op, its event, spans, flows), so this keeps a run to a few GB and minutes; a folded 1,024-GPU run of
the presets is tens of thousands."""
MIN_OPS_PER_RANK_LAYER = {"train": 30, "forward": 10, "prefill": 10, "decode": 10, "generate": 10}
"""Fewest ops any schedule issues per simulated rank and decoder block (measured: tp D=1 on a 2-block
model; TSP D=8 issues ten times more). The up-front estimate is a lower bound, so it never refuses a
graph that would fit; the count while building catches what it underestimates."""


def graph_ops_limit() -> int:
    """:data:`MAX_GRAPH_OPS`, or the whole number in ``TSPSIM_MAX_GRAPH_OPS``."""
    import os

    text = os.environ.get("TSPSIM_MAX_GRAPH_OPS", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else MAX_GRAPH_OPS


def gemm_flops(m: float, n: float, k: float) -> float:
    """2·m·n·k."""
    return 2.0 * m * n * k


def gemm_bytes(m: float, n: float, k: float, s: int) -> float:
    """HBM traffic of a GEMM reading A (m×k), B (k×n) and writing C (m×n), s bytes per element."""
    return (m * k + k * n + m * n) * s


def wgrad_accumulate_bytes(elements: float, s: int) -> float:
    """Extra HBM bytes of a weight-gradient GEMM accumulating into an fp32 gradient: (4 + 4 − s) per element.

    β = 1 into the fp32 main gradient: the epilogue reads the old value (4 bytes) and writes the sum (4 bytes)
    where a fresh gradient would be written once in the operand dtype (s bytes).
    """
    return elements * (8 - s)


def attention_fwd_flops(batch: float, q_tokens: float, kv_tokens: float, heads: float, head_dim: int,
                        causal_fraction: float = 0.5) -> float:
    """QKᵀ and P·V: 2·2·B·q·kv·d per head, times the fraction of the score matrix the mask keeps.

    For a full causal sequence the fraction is 1/2 (design.md rule 4); with the zig-zag partition
    every sequence shard keeps the same 1/2 of its rows' scores (tsp.md §2).
    """
    return 4.0 * batch * q_tokens * kv_tokens * head_dim * heads * causal_fraction


@dataclass
class BuildContext:
    """Everything a schedule generator needs, plus the builder it appends to."""

    model: ModelConfig
    """The model."""
    topo: Topology
    """The topology (used for placement and folding only; costs come at replay)."""
    layout: Layout
    """Schedule, degrees, replica size."""
    workload: Workload
    """Mode, sequence, batch."""
    opts: Assumptions
    """Assumptions in force."""
    fold: bool = True
    """Simulate one replica and mirror the others (exact under symmetry)."""
    builder: GraphBuilder = field(init=False)
    """The graph being built."""
    last: dict[int, int | None] = field(default_factory=dict)
    """Per rank: id of the last compute op issued (for chaining)."""
    step: str = field(init=False)
    """Kind of step being built: ``train``, ``forward``, ``prefill`` or ``decode`` (:meth:`set_step`)."""

    def __post_init__(self) -> None:
        mode = self.workload.mode
        self.step = {"generate": "prefill"}.get(mode, mode)
        layout = self.layout
        self.fold_plan: FoldPlan | None = plan_fold(self.topo, layout) if self.fold else None
        """The symmetry fold of this build (:mod:`tspsim.spec.fold`), or None: every GPU simulated."""
        plan = self.fold_plan
        if plan is not None:
            # Simulate one unit (a replica of whole nodes, or one node of replicas; with a pipeline, one
            # replica's stages and one rank per tensor-parallel group) and mirror the rest.
            ranks = plan.simulated(layout.world_size)
            replica_nodes = plan.unit_nodes
        else:
            ranks = tuple(range(layout.world_size))
            replica_nodes = 0
        unit = len(ranks) if plan is not None else 0
        limit, advice = graph_ops_limit(), self._budget_advice(unit)
        per_rank = (self.model.layers // max(layout.pp, 1)) * layout.micro_batches
        estimate = len(ranks) * per_rank * MIN_OPS_PER_RANK_LAYER.get(self.workload.mode, 10)
        if estimate > limit:
            blocks = (f"{self.model.layers} blocks" if layout.pp == 1 and layout.micro_batches == 1
                      else f"{per_rank:,} block passes")
            raise ConfigError(f"this layout simulates {len(ranks):,} GPUs × {blocks}: at least "
                              f"{estimate:,} ops (~{estimate * 2e-6:.0f} GB of memory), over the limit of {limit:,}; "
                              f"{advice}")
        self.builder = self.make_builder(ranks, replica_nodes, limit, advice)
        self.last = dict.fromkeys(ranks)
        self._active: tuple[int, ...] | None = None
        self.dp = DataParallel(self)
        """Gradient reduction and the optimizer step (:mod:`tspsim.schedules.data_parallel`)."""
        self.pipeline: Any = None
        """The pipeline driver of a pipelined step (:class:`tspsim.schedules.pipeline.Pipeline`), after the build."""

    # ------------------------------------------------------------------------------ stack
    @property
    def stack(self) -> Stack:
        """The software stack in force (``opts.stack``)."""
        return self.opts.stack

    def make_builder(self, ranks: tuple[int, ...], replica_nodes: int, max_ops: int = 0,
                     over_limit: str = "") -> GraphBuilder:
        """A graph builder for ``ranks`` (at most ``max_ops`` ops), with a CPU lane when the stack simulates the CPU."""
        host = self.stack.host
        if host.launch != "host":
            return GraphBuilder(ranks, meta={}, replica_nodes=replica_nodes, max_ops=max_ops, over_limit=over_limit)
        launch = self.topo.gpu.kernel_launch_us if host.launch_us is None else host.launch_us
        return HostedBuilder(ranks, meta={}, replica_nodes=replica_nodes, launch_us=launch,
                             captured=self.stack.captures(self.step), max_ops=max_ops, over_limit=over_limit)

    def set_step(self, step: str) -> None:
        """Say which kind of step the graph holds (``prefill`` or ``decode`` of a ``generate`` workload).

        Call it before adding ops: it decides eager launches or one graph launch.
        """
        self.step = step
        if isinstance(self.builder, HostedBuilder):
            self.builder.captured = self.stack.captures(step)

    @property
    def queued_kernels(self) -> bool:
        """True when kernels reach the GPU ahead of time (a captured graph, or an eager CPU lane).

        Each kernel then pays the device-side gap ``decode_launch_us`` instead of the topology's
        ``kernel_launch_us``.
        """
        return self.stack.host.launch == "host" or self.stack.captures(self.step)

    def _budget_advice(self, unit: int) -> str:
        """The way out of an over-budget graph, for messages."""
        lay = self.layout
        plan = plan_fold(self.topo, lay)
        if not self.fold and plan is not None:
            n = len(plan.simulated(lay.world_size))
            way = f"drop --full (simulating {n} GPUs and mirroring the others is exact)"
        elif lay.pp > 1 or lay.micro_batches > 1:
            way = "use fewer micro-batches (--global-batch), fewer GPUs (--gpus N) or a smaller model"
        elif unit or self.layout.world_size > self.topo.gpus_per_node:
            way = "use fewer GPUs (--gpus N) or a smaller model"
        else:
            way = "use fewer GPUs (--gpus N; a node is simulated whole) or a smaller model"
        return f"{way}, or raise the limit with TSPSIM_MAX_GRAPH_OPS=N"

    # ------------------------------------------------------------------------------ helpers
    @property
    def ranks(self) -> tuple[int, ...]:
        """Simulated ranks the ops being emitted run on: one pipeline stage's inside :meth:`on`, else every one."""
        return self._active if self._active is not None else self.builder.graph.ranks

    @property
    def all_ranks(self) -> tuple[int, ...]:
        """Every simulated rank (whatever :meth:`on` restricts)."""
        return self.builder.graph.ranks

    @contextmanager
    def on(self, ranks: Iterable[int]) -> Iterator[None]:
        """Emit on ``ranks`` only (the simulated ranks of one pipeline stage) while inside."""
        prev = self._active
        self._active = tuple(r for r in ranks if r in self.last)
        try:
            yield
        finally:
            self._active = prev

    @property
    def s(self) -> int:
        """Bytes per element."""
        return self.model.dtype_bytes

    @property
    def training(self) -> bool:
        """True when the step has a backward pass and an optimizer step."""
        return self.workload.mode == "train"

    def compute(self, rank: int, kind: str, name: str, *, after: Iterable[int | None] = (), **kw: Any) -> int:
        """Append a compute op that also follows the rank's previous compute op; returns its id."""
        op = self.builder.compute(rank, kind, name, deps=after, **kw)   # the builder drops None dependencies
        self.last[rank] = op
        return op

    def gemm(self, rank: int, name: str, m: float, n: float, k: float, *, layer: int, phase: str,
             after: Iterable[int | None] = (), mem: Iterable[tuple[str, str, int]] = (), scale: float = 1.0,
             weight_grad: bool = False) -> int:
        """A GEMM (m×k)·(k×n); ``scale`` = 2 for a backward (dgrad + wgrad) pair of a linear layer.

        A pair's second output (k×n), or the m×n output of a lone weight-gradient GEMM (``weight_grad``), is the
        layer's weight gradient: with the stack's ``kernels.wgrad_accumulate: fp32`` the GEMM accumulates it into
        the fp32 main gradient (reads 4 and writes 4 bytes per element instead of writing s), which adds
        :func:`wgrad_accumulate_bytes` to the op's HBM bytes.
        """
        nbytes = scale * gemm_bytes(m, n, k, self.s)
        if (scale == 2 or weight_grad) and self.stack.kernels.wgrad_accumulate == "fp32":
            nbytes += wgrad_accumulate_bytes(k * n if scale == 2 else m * n, self.s)
        # Op fields positionally (id … deps), as GraphBuilder.compute would set them: the hot path of building
        op = self.last[rank] = self.builder.add(Op(
            0, rank, "compute", "gemm", name, layer, phase, float(scale * gemm_flops(m, n, k)),
            float(nbytes), (int(m), int(n), int(k)), 0, (), "", -1, "", tuple(mem),
            [d for d in after if d is not None]))
        return op

    def elementwise(self, rank: int, name: str, nbytes: float, *, layer: int = -1, phase: str,
                    after: Iterable[int | None] = (), mem: Iterable[tuple[str, str, int]] = ()) -> int:
        """A memory-bound kernel moving ``nbytes`` through HBM."""
        op = self.last[rank] = self.builder.add(Op(
            0, rank, "compute", "elementwise", name, layer, phase, 0.0, float(nbytes), (), 0, (), "", -1, "",
            tuple(mem), [d for d in after if d is not None]))
        return op

    # ------------------------------------------------------------------------------ static memory
    def init_static(self, local_params: dict[int, float]) -> None:
        """Allocate parameters, gradients, optimizer state and the runtime reserve on every rank.

        ZeRO divides them over the rank's shard group (:meth:`DataParallel.factors`): optimizer state with
        ZeRO ≥ 1, gradients with ≥ 2, parameters with 3.
        """
        o = self.opts
        for r in self.ranks:
            p = local_params[r]
            fp, fg, fo = self.dp.factors(r)
            mem = [("parameters", int(p * o.param_bytes / fp)),
                   ("reserved", int(self.topo.gpu.runtime_reserve_GB * 1e9))]
            if self.training:
                mem += [("gradients", int(p * o.grad_bytes / fg)),
                        ("optimizer_state", int(p * (o.master_bytes + o.optimizer_bytes) / fo))]
            if isinstance(self.builder, HostedBuilder):
                self.builder.start_step(r, self.stack.host.step_overhead_us)
            self.last[r] = self.builder.memory(r, "static memory", mem, phase="fwd")

    # ------------------------------------------------------------------------------ DP + optimizer
    def dp_sync(self, grads: dict[int, float], after: dict[int, int | None], *, layer: int,
                final: bool = False) -> None:
        """Add gradient elements (per rank) to the gradient reduction (:meth:`DataParallel.add`).

        Buckets are all-reduced (or reduce-scattered with ZeRO-1) over each rank's gradient group on the ``dp``
        stream as soon as they fill, overlapping the rest of the backward pass (PyTorch DDP / Megatron-LM
        behaviour); with ZeRO ≥ 2 each layer is reduce-scattered at :meth:`end_layer`. All simulated members of
        a group issue the same collective (they are identical, so their buckets fill at the same points).
        """
        self.dp.add(grads, after, layer=layer, final=final)

    def end_layer(self, layer: int) -> None:
        """A layer's backward is complete (ZeRO ≥ 2 reduce-scatters its gradients now)."""
        self.dp.end_layer(layer)

    def optimizer_step(self, local_params: dict[int, float]) -> None:
        """Flush gradient buckets, then the optimizer passes (:meth:`DataParallel.optimizer_step`)."""
        self.dp.optimizer_step(local_params)

    def detach(self) -> None:
        """Forget the graph built, once the build is done, so it is freed by reference counting when unused.

        The build's helpers (blocks and their attention, the data-parallel and pipeline drivers) refer back to
        this context: without this the graph stays reachable from those small reference cycles until the
        collector's next full pass (README "Speed": the collector's passes over dead graphs).
        """
        vars(self).pop("builder", None)

    def finish(self, schedule: str, extra_meta: dict[str, Any] | None = None) -> OpGraph:
        """Record metadata and return the graph."""
        g = self.builder.graph
        g.meta.update({
            "schedule": schedule, "model": self.model.name, "model_config": self.model.to_json(),
            "topology": self.topo.name, "mode": self.workload.mode, "seq_len": self.workload.seq_len,
            "batch": self.workload.batch, "degrees": dict(self.layout.degrees), "world_size": self.layout.world_size,
            "replica_size": self.layout.replica_size, "replicas": self.layout.replicas,
            "assumptions": self.opts.to_json(), "folded": bool(g.replica_nodes),
        })
        lay = self.layout
        if lay.pp > 1 or lay.micro_batches > 1:
            g.meta["replica_map"] = {"mp": lay.mp_size, "dp": lay.replicas, "pp": lay.pp, "placement": lay.placement}
        plan = self.fold_plan
        if plan is not None and (plan.slab_nodes or plan.peer > 1):
            g.meta["fold"] = plan.to_meta()
        table = {gpu: [fwd, bwd] for gpu, fwd, bwd in self.stack.attention.flash_efficiency}
        tiles = {gpu: [rows, cols] for gpu, rows, cols in self.stack.kernels.gemm_wave_tile}
        if self.queued_kernels or table or tiles:
            g.meta["kernel_costs"] = {"kernel_gap_us": self.opts.decode_launch_us if self.queued_kernels else None,
                                      "attention_efficiency": table,
                                      **({"gemm_wave_tile": tiles, "gemm_operand_bytes": self.s} if tiles else {})}
        if extra_meta:
            g.meta.update(extra_meta)
        return g

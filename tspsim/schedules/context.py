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

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tspsim.core.errors import ConfigError
from tspsim.opgraph import GraphBuilder, OpGraph
from tspsim.schedules.host import HostedBuilder
from tspsim.spec.assumptions import Assumptions
from tspsim.spec.layout import Layout, fold_unit_gpus
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
        unit = fold_unit_gpus(self.topo, layout.world_size, layout.replica_size) if self.fold else 0
        if unit and layout.replicas > 1:
            # Simulate one unit (a replica of whole nodes, or one node of replicas) and mirror the rest.
            ranks = tuple(range(unit))
            replica_nodes = unit // self.topo.gpus_per_node
        else:
            ranks = tuple(range(layout.world_size))
            replica_nodes = 0
        limit, advice = graph_ops_limit(), self._budget_advice(unit)
        estimate = len(ranks) * (self.model.layers * MIN_OPS_PER_RANK_LAYER.get(self.workload.mode, 10))
        if estimate > limit:
            raise ConfigError(f"this layout simulates {len(ranks):,} GPUs × {self.model.layers} blocks: at least "
                              f"{estimate:,} ops (~{estimate * 2e-6:.0f} GB of memory), over the limit of {limit:,}; "
                              f"{advice}")
        self.builder = self.make_builder(ranks, replica_nodes, limit, advice)
        self.last = dict.fromkeys(ranks)

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
        exact = fold_unit_gpus(self.topo, self.layout.world_size, self.layout.replica_size)
        if not self.fold and exact:
            way = f"drop --full (simulating one {exact}-GPU unit and mirroring the others is exact)"
        elif unit or self.layout.world_size > self.topo.gpus_per_node:
            way = "use fewer GPUs (--gpus N) or a smaller model"
        else:
            way = "use fewer GPUs (--gpus N; a node is simulated whole) or a smaller model"
        return f"{way}, or raise the limit with TSPSIM_MAX_GRAPH_OPS=N"

    # ------------------------------------------------------------------------------ helpers
    @property
    def ranks(self) -> tuple[int, ...]:
        """Simulated ranks."""
        return self.builder.graph.ranks

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
        op = self.builder.compute(rank, kind, name, deps=[d for d in after if d is not None], **kw)
        self.last[rank] = op
        return op

    def gemm(self, rank: int, name: str, m: float, n: float, k: float, *, layer: int, phase: str,
             after: Iterable[int | None] = (), mem: Iterable[tuple[str, str, int]] = (), scale: float = 1.0) -> int:
        """A GEMM (m×k)·(k×n); ``scale`` = 2 for a backward (dgrad + wgrad) pair."""
        return self.compute(rank, "gemm", name, flops=scale * gemm_flops(m, n, k),
                            hbm_bytes=scale * gemm_bytes(m, n, k, self.s), shape=(int(m), int(n), int(k)),
                            layer=layer, phase=phase, after=after, mem=mem)

    def elementwise(self, rank: int, name: str, nbytes: float, *, layer: int = -1, phase: str,
                    after: Iterable[int | None] = (), mem: Iterable[tuple[str, str, int]] = ()) -> int:
        """A memory-bound kernel moving ``nbytes`` through HBM."""
        return self.compute(rank, "elementwise", name, hbm_bytes=nbytes, layer=layer, phase=phase, after=after,
                            mem=mem)

    # ------------------------------------------------------------------------------ static memory
    def init_static(self, local_params: dict[int, float]) -> None:
        """Allocate parameters, gradients, optimizer state and the runtime reserve on every rank."""
        o = self.opts
        dp = self.layout.replicas if o.zero1 else 1
        for r in self.ranks:
            p = local_params[r]
            mem = [("parameters", int(p * o.param_bytes)),
                   ("reserved", int(self.topo.gpu.runtime_reserve_GB * 1e9))]
            if self.training:
                mem += [("gradients", int(p * o.grad_bytes)),
                        ("optimizer_state", int(p * (o.master_bytes + o.optimizer_bytes) / dp))]
            if isinstance(self.builder, HostedBuilder):
                self.builder.start_step(r, self.stack.host.step_overhead_us)
            self.last[r] = self.builder.memory(r, "static memory", mem, phase="fwd")

    # ------------------------------------------------------------------------------ DP + optimizer
    def dp_sync(self, grads: dict[int, float], after: dict[int, int | None], *, layer: int,
                final: bool = False) -> None:
        """Add gradient elements (per rank) to the DP buckets; launch a DP collective when one fills.

        Buckets are all-reduced (or reduce-scattered with ZeRO-1) on the ``dp`` stream as soon as they
        fill, overlapping the rest of the backward pass (PyTorch DDP / Megatron-LM behaviour). All
        simulated members of a DP group issue the same collective (replicas are identical, so their
        buckets fill at the same points).
        """
        if self.layout.replicas < 2 or not self.training:
            return
        buckets = self.__dict__.setdefault("_bucket_state", {})
        handled: set[int] = set()
        for rank in self.ranks:
            if rank in handled:
                continue
            group = self.layout.dp_group(rank)
            pos, size = rank % self.layout.replica_size, self.layout.replica_size
            members = sorted(r for r in self.last if r % size == pos)  # the simulated ranks of ``group``
            handled.update(members)
            state = buckets.setdefault(group, [0.0, {}])
            state[0] += grads.get(rank, 0.0) * self.opts.grad_bytes
            for r in members:
                if after.get(r) is not None:
                    state[1][r] = after[r]
            if state[0] >= self.opts.dp_bucket_MB * 1e6 or (final and state[0] > 0):
                kind = "reduce_scatter" if self.opts.zero1 else "all_reduce"
                deps = {r: [state[1][r]] for r in members if r in state[1]}
                ids = self.builder.collective(kind, group, int(state[0]), f"dp.grad_{kind}", stream="dp",
                                              layer=layer, phase="bwd", deps=deps, issuers=members)
                for r, op in ids.items():
                    self._dp_ops.setdefault(r, []).append(op)
                buckets[group] = [0.0, {}]

    @property
    def _dp_ops(self) -> dict[int, list[int]]:
        return self.__dict__.setdefault("_dp_op_ids", {})

    def optimizer_step(self, local_params: dict[int, float]) -> None:
        """Flush DP buckets, then the stack's optimizer passes over each rank's parameters (HBM-bound).

        Per parameter of the rank's optimizer shard (1/DP with ZeRO-1), with p, g, M, O the bytes of a
        parameter, gradient, master weight and Adam state (assumptions): ``grad_unscale`` (fp16 loss
        scaling) reads and writes g; ``grad_norm`` reads g; ``adam`` reads g, M, O and writes M, O, plus
        reads and writes p when the 16-bit weights are updated in the same kernel (``param_copy: fused``, or
        no master weights); ``param_copy: separate`` then reads M and writes p; ``zero_grad`` writes every
        local gradient (the whole buffer, not the shard).
        """
        if not self.training:
            return
        o = self.opts
        st = self.stack.optimizer
        self.dp_sync({}, dict(self.last), layer=-1, final=True)
        dp = self.layout.replicas if o.zero1 else 1
        separate = st.param_copy == "separate" and o.master_bytes > 0
        steps = {}
        for r in self.ranks:
            p = local_params[r] / dp
            passes = [("optimizer.grad_unscale", 2 * p * o.grad_bytes, st.unscale),
                      ("optimizer.grad_norm", p * o.grad_bytes, st.grad_norm),
                      ("optimizer.adam", p * (o.grad_bytes + 2 * (o.master_bytes + o.optimizer_bytes)
                                              + (0 if separate else 2 * o.param_bytes)), True),
                      ("optimizer.param_copy", p * (o.master_bytes + o.param_bytes), separate)]
            after = [self.last[r], *self._dp_ops.get(r, [])[-1:]]
            for name, traffic, on in passes:
                if on:
                    steps[r] = self.compute(r, "optimizer", name, hbm_bytes=traffic, layer=-1, phase="opt",
                                            after=after)
                    after = [steps[r]]
        if o.zero1 and self.layout.replicas > 1:
            done: set[int] = set()
            for r in self.ranks:
                if r in done:
                    continue
                group = self.layout.dp_group(r)
                members = [m for m in group if m in self.last]
                done.update(members)
                self.builder.collective("all_gather", group, int(local_params[r] * o.param_bytes),
                                        "dp.param_all_gather", stream="dp", layer=-1, phase="opt",
                                        deps={m: [steps[m]] for m in members}, issuers=members)
        if st.zero_grad:
            for r in self.ranks:
                self.compute(r, "optimizer", "optimizer.zero_grad", hbm_bytes=local_params[r] * o.grad_bytes,
                             layer=-1, phase="opt", after=[self.last[r]])

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
        table = {gpu: [fwd, bwd] for gpu, fwd, bwd in self.stack.attention.flash_efficiency}
        if self.queued_kernels or table:
            g.meta["kernel_costs"] = {"kernel_gap_us": self.opts.decode_launch_us if self.queued_kernels else None,
                                      "attention_efficiency": table}
        if extra_meta:
            g.meta.update(extra_meta)
        return g

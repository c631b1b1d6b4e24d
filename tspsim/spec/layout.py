"""The parallel layout: a schedule with its degrees, placed on the GPUs of a topology.

Placement (design.md §1, issue 3): the model-parallel axis is innermost — consecutive ranks inside a
node — and data-parallel replicas take the remaining GPUs. Without a pipeline a replica of R GPUs is ranks
``[k·R, (k+1)·R)``; the DP group of a rank is every rank at the same position in each replica.
``tp+sp`` puts TP inside (rank = base + s·T + t) and SP outside, so T = 8 fills a node and Σ spans nodes.

With a pipeline of P stages (issue 14) a replica is P model-parallel groups of M GPUs each, placed in the
order ``--layout`` names from the innermost axis out (:mod:`tspsim.spec.pipeline_spec`): ``mp-dp-pp``
(default, as Megatron-LM) gives rank = mp + M·(dp + DP·stage) — each stage owns a block of nodes and a
stage's data-parallel replicas are neighbours; ``mp-pp-dp`` gives rank = mp + M·(stage + P·dp) — each
pipeline replica on consecutive nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tspsim.core.errors import ConfigError
from tspsim.spec.assumptions import Assumptions
from tspsim.spec.model import ModelConfig
from tspsim.spec.pipeline_spec import PipelineSpec
from tspsim.spec.topology import Topology
from tspsim.spec.workload import Workload


@dataclass(frozen=True)
class Layout:
    """A schedule with its degrees, laid out on a topology."""

    schedule: str
    """Registered schedule name (``tsp``, ``tp``, ``satp-seq``, ``satp-batch``, ``sp``, ``tp+sp``, ``fsdp``)."""
    tp: int
    """Weight-sharding degree inside a replica (T; for ``tsp`` and ``tp`` the degree D)."""
    sp: int
    """Token-sharding degree (Σ; for ``tsp`` and ``sp`` the degree D)."""
    replica_size: int
    """GPUs per model replica (all its pipeline stages)."""
    world_size: int
    """GPUs used in total."""
    degrees: dict[str, int] = field(default_factory=dict)
    """Degrees as reported (``D`` or ``T``/``SP``, ``PP`` and ``V`` with a pipeline, and ``DP``)."""
    pp: int = 1
    """P, pipeline stages."""
    virtual_stages: int = 1
    """V, model chunks per stage (interleaved 1F1B)."""
    pp_schedule: str = "1f1b"
    """``gpipe``, ``1f1b`` or ``interleaved``."""
    micro_batches: int = 1
    """m, micro-batches per step and replica (gradient accumulation; the batch is the micro-batch)."""
    placement: str = "mp-dp-pp"
    """Rank order from the innermost axis out (:data:`tspsim.spec.pipeline_spec.PLACEMENTS`)."""
    stage_layers: tuple[int, ...] = ()
    """Decoder blocks per virtual stage, model order (P·V entries; empty without a pipeline)."""

    @property
    def replicas(self) -> int:
        """Data-parallel replicas."""
        return self.world_size // self.replica_size

    @property
    def mp_size(self) -> int:
        """M, GPUs of one stage's model-parallel group (T·Σ, or D)."""
        return self.replica_size // self.pp

    # ------------------------------------------------------------------------------ placement
    def rank_of(self, mp: int, dp: int, stage: int) -> int:
        """Global rank of model-parallel position ``mp`` of data-parallel replica ``dp`` in pipeline ``stage``."""
        m = self.mp_size
        if self.placement == "mp-pp-dp":
            return mp + m * (stage + self.pp * dp)
        return mp + m * (dp + self.replicas * stage)

    def coords(self, rank: int) -> tuple[int, int, int]:
        """(mp, dp, stage) of ``rank`` (inverse of :meth:`rank_of`)."""
        m = self.mp_size
        mp, rest = rank % m, rank // m
        if self.placement == "mp-pp-dp":
            return mp, rest // self.pp, rest % self.pp
        return mp, rest % self.replicas, rest // self.replicas

    def stage_of(self, rank: int) -> int:
        """Pipeline stage of ``rank``."""
        return self.coords(rank)[2]

    def stage_ranks(self, stage: int, dp: int = 0) -> tuple[int, ...]:
        """The model-parallel group of ``stage`` in replica ``dp`` (consecutive ranks)."""
        base = self.rank_of(0, dp, stage)
        return tuple(range(base, base + self.mp_size))

    def replica_ranks(self, replica: int = 0) -> tuple[int, ...]:
        """Global ranks of one replica (every stage), ascending."""
        return tuple(sorted(r for s in range(self.pp) for r in self.stage_ranks(s, replica)))

    def _dp_base_step(self, mp: int, stage: int) -> tuple[int, int]:
        """(rank of replica 0, rank step from one replica to the next) at ``mp`` of ``stage``.

        :meth:`rank_of` is affine in the replica index d, so a data-parallel group is an arithmetic progression.
        """
        m = self.mp_size
        if self.placement == "mp-pp-dp":
            return mp + m * stage, m * self.pp
        return mp + m * self.replicas * stage, m

    def dp_group(self, rank: int) -> tuple[int, ...]:
        """Ranks at the same position as ``rank`` in every replica.

        ``rank_of(mp, d, stage)`` for every d, as a range (``tests/test_layout_groups.py`` checks it against
        :meth:`rank_of`; 16,384-rank groups).
        """
        mp, _, stage = self.coords(rank)
        base, step = self._dp_base_step(mp, stage)
        return tuple(range(base, base + step * self.replicas, step))

    def grad_group(self, rank: int) -> tuple[int, ...]:
        """Every rank holding the same weights as ``rank``: the group its gradients are reduced over.

        The DP replicas, and for the sequence-sharded schedules (``sp``, ``tp+sp``) also the Σ ranks of its TP
        index, whose weights are replicated across the sequence shards (Σ × DP ranks).
        """
        if self.schedule not in SEQUENCE_SHARDED or self.sp < 2:
            return self.dp_group(rank)
        mp, _, stage = self.coords(rank)
        t = mp % self.tp
        base, step = self._dp_base_step(t, stage)       # rank_of(t + T·s, d, stage) = base + T·s + step·d
        tp = self.tp
        return tuple(sorted(base + tp * s + step * d for d in range(self.replicas) for s in range(self.sp)))

    def virtual_stage(self, stage: int, chunk: int) -> int:
        """Index in model order of chunk ``chunk`` of ``stage`` (Megatron: chunk·P + stage)."""
        return chunk * self.pp + stage

    def chunk_layers(self, stage: int, chunk: int = 0) -> range:
        """The decoder blocks of one model chunk of a stage (all blocks without a pipeline)."""
        if not self.stage_layers:
            return range(0)
        v = self.virtual_stage(stage, chunk)
        start = sum(self.stage_layers[:v])
        return range(start, start + self.stage_layers[v])

    @property
    def global_batch_factor(self) -> int:
        """Micro-batches per step over all replicas (global batch = batch · this)."""
        return self.micro_batches * self.replicas


def fold_fault(topo: Topology, world: int, unit_gpus: int) -> str | None:
    """Why simulating GPUs ``[0, unit_gpus)`` and mirroring them onto the rest of ``world`` is not exact.

    Folding (README "Symmetry folding") replays one unit and maps every link a unit's cross-unit traffic
    crosses onto its twin inside the simulated unit (:meth:`Topology.fold_link`). That equals the full
    simulation when (a) the unit is whole nodes, (b) the ``world`` GPUs are whole copies of it (every unit
    holds the same replicas at the same positions, so every unit's traffic is a shifted copy of unit 0's),
    and (c) shifting by one unit maps the topology onto itself link for link. (c) holds for full-mesh and
    switch nodes and for rails-only scale-out; on a rail-optimized fat tree a leaf's spine up-link is shared
    by ``nodes_per_leaf`` nodes, so when it can be the bottleneck (oversubscription > 1) and the GPUs span
    several leaves, the unit must hold whole leaf groups. With oversubscription ≤ 1 a spine link's capacity
    is at least the sum of the NICs under it, so it never binds and need not be twinned exactly.

    Returns:
        None when the fold is exact, else the reason (one clause, for messages).
    """
    gpn = topo.gpus_per_node
    if unit_gpus % gpn:
        return f"a unit of {unit_gpus} GPUs is not a whole number of {gpn}-GPU nodes"
    if world % unit_gpus:
        return f"{world} GPUs are not whole copies of a {unit_gpus}-GPU unit"
    inter = topo.inter
    if (inter is not None and inter.topology == "rail_optimized_fat_tree" and inter.oversubscription > 1
            and world > inter.nodes_per_leaf * gpn and (unit_gpus // gpn) % inter.nodes_per_leaf):
        return (f"a unit of {unit_gpus // gpn} node(s) splits the {inter.nodes_per_leaf}-node leaf groups of an "
                "oversubscribed fat tree")
    return None


def fold_unit_gpus(topo: Topology, world: int, replica_size: int) -> int:
    """GPUs of the smallest exact fold unit of a layout (ranks ``[0, unit)``); 0: simulate every GPU.

    The unit is one replica when a replica fills whole nodes, else one node (the node's replicas are
    simulated together: they share its links); on an oversubscribed fat tree spanning several leaves it is
    widened to whole leaf groups. See :func:`fold_fault` for why exactly these units are exact.
    """
    gpn = topo.gpus_per_node
    unit = max(replica_size, gpn)
    inter = topo.inter
    if (inter is not None and inter.topology == "rail_optimized_fat_tree" and inter.oversubscription > 1
            and world > inter.nodes_per_leaf * gpn):
        unit = math.lcm(unit, inter.nodes_per_leaf * gpn)
    if unit >= world or fold_fault(topo, world, unit):
        return 0
    return unit


def make_layout(schedule: str, topo: Topology, model: ModelConfig, workload: Workload, degree: int | None = None,
              tp: int | None = None, sp: int | None = None, gpus: int | None = None,
              opts: Assumptions | None = None, pipeline: PipelineSpec | None = None) -> Layout:
    """Resolve degrees for ``schedule`` and validate them against the model, sequence and topology.

    With ``opts``, also check that the SP attention algorithm fits the layout (:func:`check_sp_attention`) and
    that the ZeRO stage composes with the schedule (:func:`check_zero`). ``pipeline`` adds pipeline stages,
    micro-batches and the placement order (:mod:`tspsim.spec.pipeline_spec`).

    Raises:
        ConfigError: naming the degree, what it must divide, and a value that would work.
    """
    pipe = pipeline or PipelineSpec()
    pipe.check()
    world = gpus or topo.world_size
    if world > topo.world_size:
        raise ConfigError(f"--gpus {world} exceeds {topo.name} ({topo.world_size} GPUs)")
    if schedule == "fsdp":
        if degree not in (None, 1) or (tp or 1) > 1 or (sp or 1) > 1:
            raise ConfigError("fsdp is pure FSDP (no model parallelism: D = 1); for FSDP with tensor or sequence "
                              "parallelism use --zero 3 with tp, sp or tp+sp")
        t, s = 1, 1
    elif schedule == "tp+sp":
        if degree and (tp is None and sp is None):
            raise ConfigError("tp+sp takes --tp T and --sp S (not --degree)")
        t, s = default_tp_sp(topo.gpus_per_node, world, tp, sp)
    elif schedule in ("tsp", "sp"):
        d = degree or tp or sp or min(topo.gpus_per_node, world)
        t, s = (d, d) if schedule == "tsp" else (1, d)
    else:
        d = degree or tp or min(topo.gpus_per_node, world)
        t, s = d, 1
    mp = t * s if schedule != "tsp" else t
    P = pipe.stages
    if P > 1:
        _check_pipeline(schedule, workload, mp, P, world, t, s)
    _check_divides(schedule, model, workload, t, s, mp, world, topo, tp_given=tp is not None)
    replica = mp * P
    dp = world // replica
    degrees = ({"D": t} if schedule == "tsp" else {"D": s} if schedule == "sp"
               else {"T": t, "SP": s} if schedule == "tp+sp" else {} if schedule == "fsdp" else {"D": t})
    if P > 1:
        degrees["PP"] = P
        if pipe.virtual_stages > 1:
            degrees["V"] = pipe.virtual_stages
    degrees["DP"] = dp
    micro = _micro_batches(pipe, workload, dp)
    layers = pipe.stage_layers(model.layers) if P > 1 else ()
    if P > 1 and pipe.resolved_schedule == "interleaved" and micro % P:
        raise ConfigError(f"interleaved 1F1B needs the micro-batches per step ({micro}) to be a multiple of the "
                          f"{P} pipeline stages, as Megatron-LM does; use --global-batch "
                          f"{workload.batch * dp * P * max(1, micro // P)} (global batch / (micro-batch · DP) "
                          f"a multiple of {P})")
    if opts is not None:
        check_sp_attention(schedule, model, workload, t, s, opts)
    layout = Layout(schedule, t, s, replica, world, degrees, pp=P, virtual_stages=pipe.virtual_stages,
                    pp_schedule=pipe.resolved_schedule if P > 1 else "1f1b", micro_batches=micro,
                    placement=pipe.resolved_placement, stage_layers=layers)
    if opts is not None:
        check_zero(layout, opts)
    return layout


def _check_pipeline(schedule: str, workload: Workload, mp: int, P: int, world: int, t: int, s: int) -> None:
    """A pipeline needs a training or forward step and whole pipeline replicas of M·P GPUs."""
    if workload.mode not in ("train", "forward"):
        raise ConfigError(f"--pp applies to --mode train and forward; {workload.mode} steps are simulated without "
                          "a pipeline (drop --pp)")
    label = {"tp+sp": f"T={t} × SP={s} × ", "fsdp": "", "sp": f"D={s} × "}.get(schedule, f"D={t} × ")
    what = f"{schedule} {label}PP={P}"
    if mp * P > world:
        raise ConfigError(f"{what} needs {mp * P} GPUs per pipeline replica but only {world} are available; use "
                          "fewer stages, a smaller degree or more --gpus")
    if world % (mp * P):
        raise ConfigError(f"{world} GPUs are not a whole number of {mp * P}-GPU pipeline replicas ({what}); choose "
                          f"degrees whose product divides {world}")


def _micro_batches(pipe: PipelineSpec, workload: Workload, dp: int) -> int:
    """m = G / (b · DP), with one micro-batch per replica when no global batch is given."""
    g = pipe.global_batch
    if g is None:
        return 1
    if workload.mode not in ("train", "forward"):
        raise ConfigError(f"--global-batch applies to --mode train and forward, not {workload.mode}; use --batch")
    per_step = workload.batch * dp
    if g % per_step:
        raise ConfigError(f"--global-batch {g} is not a whole number of micro-batches: it must be a multiple of "
                          f"micro-batch {workload.batch} × DP {dp} = {per_step}; use --global-batch "
                          f"{max(1, g // per_step) * per_step}")
    return g // per_step


ZERO_THREE_SCHEDULES = ("fsdp", "tp", "satp-seq", "satp-batch", "sp", "tp+sp")
"""Schedules that compose with ZeRO-3 / FSDP parameter sharding (as PyTorch FSDP2 composes with DTensor TP, SP
and pipeline parallelism in torchtitan); TSP's weight shards already circulate inside its group."""


def check_zero(layout: Layout, opts: Assumptions) -> None:
    """ZeRO / FSDP options must fit the layout (one-line errors).

    Raises:
        ConfigError: ZeRO-3 with a schedule no framework composes it with, ``fsdp`` without ZeRO-3 semantics,
            or an HSDP shard group that does not divide the gradient group.
    """
    if opts.zero == 3 and layout.schedule not in ZERO_THREE_SCHEDULES:
        raise ConfigError(f"--zero 3 (FSDP parameter sharding) does not compose with {layout.schedule}: TSP already "
                          "moves its weight shards inside its group; use --zero 1 or 2 (optimizer state and "
                          "gradients sharded over data parallelism)")
    if opts.hsdp:
        group = len(layout.grad_group(0))
        if opts.zero == 0 and layout.schedule != "fsdp":
            raise ConfigError("option hsdp shards inside groups of data-parallel ranks; it needs --zero 1, 2 or 3")
        if group % opts.hsdp:
            raise ConfigError(f"option hsdp={opts.hsdp}: the shard group must divide the {group} ranks that hold "
                              f"the same weights (data parallelism{' × SP' if group > layout.replicas else ''}); "
                              f"use a divisor of {group}")


def default_tp_sp(gpus_per_node: int, world: int, tp: int | None = None, sp: int | None = None) -> tuple[int, int]:
    """(T, Σ) of tp+sp from what was given; every command uses this one rule.

    Nothing given: T = GPUs per node and Σ = 2 when two nodes are available, else T = half a node and
    Σ = 2 (T×Σ fills one node). Only T given: Σ = 2 when 2·T GPUs are available, else 1. Only Σ given:
    the largest divisor T of the node's GPUs with T·Σ ≤ the GPUs available.
    """
    per_node = min(gpus_per_node, world)
    if tp is None and sp is None:
        t = per_node if world >= 2 * per_node else max(1, per_node // 2)
        return t, 2 if world >= 2 * t else 1
    if tp is None:
        assert sp is not None
        return next((t for t in range(per_node, 0, -1) if per_node % t == 0 and t * sp <= world), 1), sp
    return tp, sp or (2 if world >= 2 * tp else 1)


SEQUENCE_SHARDED = ("sp", "tp+sp")
"""Schedules whose Σ axis shards the sequence with the weights replicated across it (the ``sp_attention`` axis)."""


def check_sp_attention(schedule: str, model: ModelConfig, workload: Workload, t: int, s: int,
                       opts: Assumptions) -> None:
    """The SP attention algorithm must fit the heads of a TP shard (decode steps do not use it).

    Ulysses re-shards the T-shard's H_q/T query and H_kv/T KV heads over the Σ sequence shards, so Σ must divide
    both (DeepSpeed Ulysses); head bucketing of the all-gather splits the same heads into ``sp_kv_buckets``.

    Raises:
        ConfigError: one line naming the heads, the degree and a fix.
    """
    if schedule not in SEQUENCE_SHARDED or s < 2 or workload.mode == "decode":
        return
    q, kv = model.q_heads // t, model.kv_heads // t
    where = f"of a T={t} shard of {model.name}" if t > 1 else f"of {model.name}"
    if opts.sp_attention == "ulysses" and (q % s or kv % s):
        raise ConfigError(f"sp_attention=ulysses shards heads over SP={s} sequence shards, but the {q} query / {kv} KV "
                          f"heads {where} are not divisible by {s}; use sp_attention=ring or allgather, or a Σ "
                          "dividing the heads")
    b = opts.sp_kv_buckets
    if opts.sp_attention == "allgather" and b > 1 and (q % b or kv % b):
        raise ConfigError(f"option sp_kv_buckets={b} does not divide the {q} query / {kv} KV heads {where}; "
                          f"use a divisor of {kv}")


def _check_divides(schedule: str, model: ModelConfig, workload: Workload, t: int, s: int, replica: int,
                   world: int, topo: Topology, tp_given: bool = True) -> None:
    name = {"tsp": "D", "sp": "D"}.get(schedule, "T" if schedule == "tp+sp" else "D")
    w = t if schedule != "sp" else 1
    if w > 1:
        what = f"degree {name}={w}" if schedule != "tp+sp" else (
            f"degree --tp={w}" if tp_given else f"the default T={w} of tp+sp (set it with --tp)")
        if model.q_heads % w:
            raise ConfigError(f"{what} does not divide the {model.q_heads} query heads of {model.name}; "
                              f"use a divisor such as {_divisor_hint(model.q_heads, w)}")
        if model.kv_heads % w:
            raise ConfigError(f"{what} does not divide the {model.kv_heads} KV heads of {model.name}; "
                              f"use a divisor such as {_divisor_hint(model.kv_heads, w)}")
        if model.ffn_hidden % w:
            raise ConfigError(f"{what} does not divide the MLP width {model.ffn_hidden} of {model.name}")
    seq_shards = {"tsp": t, "sp": s, "tp+sp": s}.get(schedule, 1)
    if schedule == "satp-seq":
        seq_shards = t
    if seq_shards > 1 and workload.mode not in ("decode",):
        need = 2 * seq_shards if schedule in ("tsp", "sp", "tp+sp") else seq_shards
        if workload.seq_len % need:
            what = "2·D (zig-zag: 2D chunks)" if need == 2 * seq_shards else "the degree"
            raise ConfigError(f"sequence length {workload.seq_len} is not divisible by {need} = {what}; "
                              f"use a multiple of {need}, e.g. {workload.seq_len // need * need or need}")
    if schedule == "satp-seq" and workload.mode in ("decode", "generate") and workload.batch % t:
        raise ConfigError(f"satp-seq decode splits the step's {workload.batch} new tokens (T_q = 1) over D={t}: "
                          f"--batch must be a multiple of {t}; use --batch {t}")
    if schedule == "satp-batch" and workload.batch % t:
        raise ConfigError(f"satp-batch shards the batch: --batch {workload.batch} must be a multiple of D={t}; "
                          f"use --batch {t}")
    if replica > world:
        degrees = f"T={t} × SP={s}" if schedule == "tp+sp" else f"D={t if schedule != 'sp' else s}"
        raise ConfigError(f"{schedule} {degrees} needs {replica} GPUs per replica but only {world} are available on "
                          f"{topo.name}; use a smaller degree or a larger topology")
    if world % replica:
        raise ConfigError(f"{world} GPUs are not a whole number of {replica}-GPU replicas; "
                          f"choose degrees whose product divides {world}")
    if replica > topo.gpus_per_node and replica % topo.gpus_per_node:
        raise ConfigError(f"a {replica}-GPU replica must fill whole {topo.gpus_per_node}-GPU nodes")
    if replica < topo.gpus_per_node and topo.gpus_per_node % replica:
        raise ConfigError(f"a {replica}-GPU replica must divide the {topo.gpus_per_node} GPUs of a node")


def _divisor_hint(n: int, near: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - near), -d))

"""Inference schedules: prefill and decode with a KV cache, for every registered schedule (issue 6).

Notation of reference/tensor-parallelism-analysis.md: B sequences, context T, query length T_q (T_q = 1
in decode), hidden H, K/V width H_kv = h_kv·d, degree p, s bytes per element, M_H = B·T_q·H,
M_KV = B·T_q·H_kv.

**Prefill** processes B prompts of T tokens: each schedule's forward pass (the training forward of
:mod:`tspsim.schedules.block` / :mod:`tspsim.schedules.tsp`, reused unchanged) plus

* the KV cache written as each block's K and V are produced, in its own memory category ``kv_cache``:
  Mem_KV,block = 2·B·T·H_kv·s over the group, per rank as :func:`kv_layout` says;
* the residual stream as ``activations`` (Mem_act = B·T·H·s replicated, B·T·H·s/p sharded);
* the LM head for the last token of each sequence only (it yields the first generated token).

**Decode** generates one token per sequence per step (T_q = 1): the step's residual activation is
B·1·H (Mem_decode-act = B·H·s), every block appends 2·B·H_kv·s of K/V to the cache and attends over
the whole cached context, reading it from HBM. Per schedule (per block, forward only):

============== =========================================================================================
``tp``         column/row-parallel on the replicated B·H tokens; head-sharded cache 2·B·T·H_kv·s/p;
               attention local; all-reduce 2(p−1)/p·M_H·s after attention-out and after MLP-down.
``satp-batch`` residual sharded B/p sequences per rank: input all-gather (p−1)/p·M_H·s before each
               column-parallel GEMM, reduce-scatter (p−1)/p·M_H·s after each row-parallel one. After
               the input all-gather the rank's column shard of W_Q, W_K, W_V produces Q/K/V of *every*
               sequence for its heads. ``satp_batch_kv=batch`` (default): the cache is batch-sharded,
               all heads of the rank's B/p sequences, 2·(B/p)·T·H_kv·s per rank (the article's
               "complete sequences remain local"), so the step's Q/K/V head shards go to the sequences'
               owners by an all-to-all, (p−1)/p·(M_Q + 2·M_KV)·s/p per rank, attention runs over all
               heads of B/p sequences, and the outputs return to head shards for the row-parallel W_O
               by a second all-to-all, (p−1)/p·M_Q·s/p; prefill attends head-sharded exactly as the
               training forward and re-lays each block's K/V into the cache by one all-to-all,
               (p−1)/p·2·M_KV·s/p. ``satp_batch_kv=heads``: the cache is head-sharded like ``tp``,
               attention needs no exchange (the article's "no collective" row). Same bytes per GPU.
``satp-seq``   the step's B tokens split p ways (T_q = 1 cannot be split along the sequence, so it needs
               B divisible by p); with ``satp_seq_attention=gather-kv`` the new K/V are projected on the
               local shard with whole W_K, W_V and all-gathered, 2(p−1)/p·M_KV·s (the article's K/V
               exchange); the rank keeps its head slice, so the cache is head-sharded as above.
``sp``         weights replicated; the cache is sequence-sharded (position t on rank t mod D, the zig-zag
               prefill gives the same counts), 2·B·(T/D)·H_kv·s per rank; the new token is computed on
               every rank; attention is partial over each rank's chunk for all heads, combined
               flash-decoding style by an all-gather of the log-sum-exp statistics (D·B·h·4 bytes)
               and an all-reduce of the rescaled partial outputs (B·H_q·s).
``tp+sp``      TP degree T inside, SP degree Σ outside: cache 2·B·(T/Σ)·(H_kv/T)·s per rank; TP
               all-reduces inside each row, the partial-attention combine over the Σ sequence shards.
``tsp``        sequence-sharded cache 2·B·(T/D)·H_kv·s per rank (the rank's prefill tokens, all heads).
               ``tsp_decode=weights`` (default, as in training forward, tsp.md §7): the new tokens are
               replicated and the layer's weight shards move every step — attention shards broadcast
               (prefetched ``weight_buffers`` deep, across layers), partial attention per head shard
               combined by an all-gather of statistics and one all-reduce of the rescaled partial
               outputs projected by W_O (B·H·s); MLP shards ride the ring, so every rank computes the
               whole MLP. ``tsp_decode=token``: weights stay with their owners and the tokens' activations
               move: each rank projects Q/K/V with its own shard, all-gathers them (B·(H_q+2H_kv)·s),
               attends over its own KV chunk for all heads, combines by a statistics all-gather and a
               reduce-scatter of the partial outputs (each rank needs only its head shard for W_O,r),
               then W_O and the MLP run as in classic TP (all-reduce B·H·s after each).
============== =========================================================================================

Decode embedding and LM head are vocab-parallel in place for every schedule (lookup + all-reduce,
reduce-scatter for a sharded residual; logits of the local vocabulary shard + an all-reduce of the
sampling statistics); ``sp`` keeps them replicated. For ``tsp`` this is the ``token`` treatment in both
modes: moving the vocabulary shards every step would dwarf the blocks.

Decode attention counts every cached key (no causal halving: T_q = 1 sees all T positions):
4·B·T_attended·h·d FLOPs and 2·B·T_attended·H_kv·s bytes of K/V read per rank's share.

:func:`build_decode_step` returns the graph of one decode step together with the attention ops to
re-cost for another context length (:meth:`DecodeStep.recost`) and, per block, the candidate *cut*: the
ops whose common end is a quiescent instant (nothing before still running, nothing after started)
when :func:`verify_cuts` confirms it on the graph — the basis of the exact periodic assembly in
:mod:`tspsim.serving`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from tspsim.opgraph import OpGraph
from tspsim.plan import Plan
from tspsim.schedules.block import BlockLayout, _Block, local_params
from tspsim.schedules.common import BuildContext
from tspsim.schedules.tsp import _Tsp

INFERENCE_MODES = ("prefill", "decode", "generate")
"""Workload modes handled here."""

STATS_BYTES = 4
"""Bytes per softmax statistic (fp32 log-sum-exp) exchanged by the partial-attention combine."""

Mem = list[tuple[str, str, int]]


# ---------------------------------------------------------------------------------- KV-cache layout
def seq_share(tokens: int, shards: int, index: int) -> int:
    """Cached positions held by sequence shard ``index`` of ``shards``.

    Position t lives on shard t mod ``shards`` (round robin); the zig-zag prefill partition (2·shards
    chunks, shard p takes chunks p and 2·shards−1−p) gives the same count T/shards when T is a multiple
    of 2·shards, so prefill and decode caches agree.
    """
    return tokens // shards + (1 if index < tokens % shards else 0)


@dataclass(frozen=True)
class KvLayout:
    """How one replica holds the KV cache (tensor-parallelism-analysis.md, KV cache per GPU per block)."""

    kv_width: int
    """Elements of K (or of V) per cached token held by one rank: H_kv/T head-sharded, H_kv otherwise."""
    seq_shards: int
    """Ranks the context is split over (1: every rank holds every position of its heads)."""
    inner: int
    """Consecutive ranks sharing one sequence shard (the TP group of ``tp+sp``; 1 for ``tsp``, ``sp``)."""
    replica_size: int
    """GPUs per replica."""
    batch_shards: int = 1
    """Ranks the B sequences are split over (``satp-batch`` with ``satp_batch_kv=batch``: p; else 1)."""

    def seq_index(self, rank: int) -> int:
        """Sequence shard of ``rank``."""
        return (rank % self.replica_size) // self.inner % self.seq_shards

    def tokens(self, rank: int, context: int) -> int:
        """Cached positions of ``context`` held by ``rank``."""
        return seq_share(context, self.seq_shards, self.seq_index(rank))

    def block_bytes(self, rank: int, batch: int, context: int, s: int) -> int:
        """K and V bytes of one block on ``rank``: 2·(B/batch_shards)·tokens·kv_width·s."""
        return 2 * (batch // self.batch_shards) * self.tokens(rank, context) * self.kv_width * s

    def owner(self, position: int) -> int:
        """Sequence shard that stores position ``position``."""
        return position % self.seq_shards


def kv_layout(schedule: str, kv_dim: int, plan: Plan, satp_batch_kv: str = "heads") -> KvLayout:
    """The KV-cache layout of ``schedule``.

    * ``tp``, ``satp-seq``: head-sharded, 2·B·T·H_kv·s/p per rank per block.
    * ``satp-batch``: batch-sharded (``satp_batch_kv=batch``), all heads of B/p sequences:
      2·(B/p)·T·H_kv·s; or head-sharded as ``tp`` (``satp_batch_kv=heads``).
    * ``sp``, ``tsp``: sequence-sharded over D, all heads: 2·B·(T/D)·H_kv·s.
    * ``tp+sp``: 2·B·(T/Σ)·(H_kv/T)·s.
    """
    if schedule == "satp-batch" and satp_batch_kv == "batch":
        return KvLayout(kv_dim, 1, plan.tp, plan.replica_size, batch_shards=plan.tp)
    if schedule == "tsp":
        return KvLayout(kv_dim, plan.tp, 1, plan.replica_size)
    if schedule == "sp":
        return KvLayout(kv_dim, plan.sp, 1, plan.replica_size)
    if schedule == "tp+sp":
        return KvLayout(kv_dim // plan.tp, plan.sp, plan.tp, plan.replica_size)
    return KvLayout(kv_dim // plan.tp, 1, plan.tp, plan.replica_size)


def standard_layout(ctx: BuildContext) -> BlockLayout:
    """The :class:`BlockLayout` the training generator of ``ctx.plan.schedule`` uses (not ``tsp``)."""
    p, name = ctx.plan, ctx.plan.schedule
    if name == "tp":
        return BlockLayout("tp", p.tp, 1, "replicated")
    if name == "satp-seq":
        return BlockLayout("satp-seq", p.tp, 1, "seq", kv_from_local_shard=ctx.opts.satp_seq_attention == "gather-kv")
    if name == "satp-batch":
        return BlockLayout("satp-batch", p.tp, 1, "batch")
    if name == "sp":
        return BlockLayout("sp", 1, p.sp, "replicated")
    if name == "tp+sp":
        return BlockLayout("tp+sp", p.tp, p.sp, "replicated")
    raise ValueError(f"schedule {name!r} has no standard block layout")


def one_replica(ctx: BuildContext) -> BuildContext:
    """Restrict a folded context to one replica when replicas share a node.

    Inference has no data-parallel traffic, so replicas never wait for each other, and a group smaller
    than a node only uses the links between its members (design.md rule 3): simulating one replica is
    exact (tests/test_inference.py checks it against the whole node).
    """
    plan = ctx.plan
    if not ctx.fold or plan.replicas < 2 or plan.replica_size >= ctx.topo.gpus_per_node:
        return ctx
    from tspsim.opgraph import GraphBuilder

    ranks = plan.replica_ranks(0)
    ctx.builder = GraphBuilder(ranks, meta={}, replica_nodes=0)
    ctx.last = dict.fromkeys(ranks)
    return ctx


def _ops_since(ctx: BuildContext, start: int) -> Iterable[int]:
    return range(start, len(ctx.builder.graph.ops))


def _add_mem(ctx: BuildContext, op_id: int, events: Mem) -> None:
    op = ctx.builder.graph.ops[op_id]
    op.mem = tuple(op.mem) + tuple(events)


def _residual(ctx: BuildContext, nbytes: dict[int, float], name: str, sign: int) -> None:
    """Allocate (+1) or free (−1) the residual stream of each rank as ``activations``."""
    for r in ctx.ranks:
        ctx.last[r] = ctx.builder.memory(r, name, [("activations", sign * int(nbytes[r]))], deps=[ctx.last[r]])


def _join(ctx: BuildContext, ops: dict[int, int], name: str, layer: int = -1) -> None:
    """Make each rank's next compute op wait for ``ops`` (a zero-cost op on the compute stream)."""
    for r in ctx.ranks:
        if ops.get(r) is not None:
            ctx.last[r] = ctx.builder.memory(r, name, [], layer=layer, deps=[ops[r], ctx.last[r]])


# ---------------------------------------------------------------------------------- prefill
def build_prefill(ctx: BuildContext) -> OpGraph:
    """One prefill step of ``ctx.workload`` (B prompts of T = ``seq_len`` tokens) for any schedule."""
    if ctx.plan.schedule == "tsp":
        return _prefill_tsp(ctx)
    return _prefill_standard(ctx, standard_layout(ctx))


def _prefill_standard(ctx: BuildContext, lay: BlockLayout) -> OpGraph:
    """Forward of the standard block (unchanged) + KV cache + last-token LM head."""
    c, m = one_replica(ctx), ctx.model
    blk = _Block(c, lay)
    kvl = kv_layout(lay.name, m.kv_dim, c.plan, c.opts.satp_batch_kv)
    B, T, s, H, n, n_res = blk.B, blk.S, blk.s, blk.H, blk.n, blk.n_res
    c.init_static({r: local_params(c, lay) for r in c.ranks})
    res = {r: n_res * H * s for r in c.ranks}
    _residual(c, res, "residual_stream", +1)
    emb = {r: c.elementwise(r, "embedding.lookup", 2 * n * H * s, phase="fwd", after=[c.last[r]]) for r in c.ranks}
    if lay.tp > 1:
        kind = "all_reduce" if lay.residual == "replicated" else "reduce_scatter"
        red = blk.coll(kind, blk.tp_group, n * H * s, f"embedding.{kind}", stream="comm", layer=-1, phase="fwd",
                       deps=emb)
        _join(c, red, "embedding.done")
    for layer in range(m.layers):
        start = len(c.builder.graph.ops)
        blk.forward(layer, "fwd", "none")
        qkv: dict[int, int | None] = {}
        for op_id in list(_ops_since(c, start)):
            op = c.builder.graph.ops[op_id]
            if op.name == f"L{layer}.attn.qkv":
                qkv[op.rank] = op_id
            if op.name == f"L{layer}.attn.core" and kvl.batch_shards == 1:  # K/V of the block → the cache
                _add_mem(c, op_id, [("start", "kv_cache", kvl.block_bytes(op.rank, B, T, s))])
        if kvl.batch_shards > 1:  # head shards of every sequence → all heads of the rank's B/p sequences
            blk.coll("all_to_all", blk.tp_group, 2 * n * blk.kv_l * s, f"L{layer}.attn.kv_cache_all_to_all",
                     stream="kv", layer=layer, phase="fwd", deps=qkv, mem_start=kvl.block_bytes(c.ranks[0], B, T, s),
                     mem_cat="kv_cache")
    # ---- LM head on the last token of each sequence (it yields the first generated token)
    v_l = m.vocab // lay.tp
    src = {r: c.last[r] for r in c.ranks}
    heads = set(c.ranks)
    if lay.residual == "batch":      # each rank holds the last tokens of its B/p sequences
        src = blk.coll("all_gather", blk.tp_group, B * H * s, "head.last_token_all_gather", stream="comm",
                       layer=-1, phase="fwd", deps=src)
    elif lay.residual == "seq":      # the last tokens live on the last sequence shard of the group
        src = _broadcast(c, blk.tp_group, B * H * s, "head.last_token_broadcast", src, root_pos=-1)
    elif lay.sp > 1:                 # zig-zag: the last chunk belongs to sequence shard 0
        heads = {r for r in c.ranks if kvl.seq_index(r) == 0}
    _head(c, heads, src, B, v_l, "head.logits")
    if lay.tp > 1:
        stats = blk.coll("all_reduce", lambda r: blk.tp_group(r) if r in heads else (), B * 4 * 2,
                         "head.sampling_stats_all_reduce", stream="comm", layer=-1, phase="fwd",
                         deps={r: c.last[r] for r in c.ranks})
        _join(c, stats, "head.done")
    _residual(c, res, "residual_stream.free", -1)
    return c.finish(lay.name, {"layout": {"tp": lay.tp, "sp": lay.sp, "residual": lay.residual,
                                          "kv_from_local_shard": lay.kv_from_local_shard},
                               "inference": {"step": "prefill", "kv_width": kvl.kv_width,
                                             "kv_seq_shards": kvl.seq_shards,
                                             "kv_batch_shards": kvl.batch_shards}})


def _broadcast(c: BuildContext, group_of: Callable[[int], tuple[int, ...]], nbytes: float, name: str,
               deps: dict[int, int | None], root_pos: int) -> dict[int, int]:
    """A broadcast from position ``root_pos`` of each group among the simulated ranks."""
    out: dict[int, int] = {}
    sim = set(c.ranks)
    for r in c.ranks:
        if r in out:
            continue
        g = group_of(r)
        if len(g) < 2:
            continue
        members = [x for x in g if x in sim]
        out.update(c.builder.collective("broadcast", g, int(nbytes), name, stream="comm", phase="fwd",
                                        deps={x: [deps.get(x)] for x in members}, root=g[root_pos],
                                        issuers=members))
    return out


def _head(c: BuildContext, ranks: set[int], src: dict[int, int | None], rows: int, vocab: int, name: str) -> None:
    """Logits of ``rows`` tokens over ``vocab`` columns, then sampling (softmax / top-k over the shard)."""
    m, lb = c.model, c.opts.logits_bytes
    logits = int(rows * vocab * lb)
    for r in sorted(ranks):
        c.gemm(r, name, rows, vocab, m.hidden, layer=-1, phase="fwd", after=[src.get(r), c.last[r]],
               mem=[("start", "temporary", logits)])
        c.elementwise(r, "head.sampling", 2 * rows * vocab * lb, layer=-1, phase="fwd", after=[c.last[r]],
                      mem=[("end", "temporary", -logits)])


def _prefill_tsp(ctx: BuildContext) -> OpGraph:
    """TSP forward (broadcast loop + K/V all-gathers, MLP ring; tsp.md §2–§3) + KV cache + last-token head."""
    c, m = one_replica(ctx), ctx.model
    t = _Tsp(c)
    n, s, H, D = t.n, t.s, t.H, t.D
    kvl = kv_layout("tsp", m.kv_dim, c.plan)
    per_layer = (m.attn_params + m.mlp_params) / D + m.norm_params
    c.init_static({r: m.layers * per_layer + (m.embedding_params - H) / D + H for r in c.ranks})
    res = {r: n * H * s for r in c.ranks}
    _residual(c, res, "residual_stream", +1)
    t.vocab_ring("embedding.lookup", "fwd", (n, H, 1), 1.0, grad_ring=False)
    for r in c.ranks:
        t.prev_attn_done[r] = c.last[r]
    # The rank's own tokens' K/V for head shard r, all shards: 2·B·(T/D)·H_kv·s per block in total.
    shard_kv = {r: 2 * t.B * kvl.tokens(r, t.S) * t.kv_l * s for r in c.ranks}
    for layer in range(m.layers):
        start = len(c.builder.graph.ops)
        t.attention_fwd(layer, "fwd", set())
        for op_id in list(_ops_since(c, start)):
            op = c.builder.graph.ops[op_id]
            if op.name.startswith(f"L{layer}.attn.qkv[r="):
                _add_mem(c, op_id, [("end", "kv_cache", shard_kv[op.rank])])
        t.mlp_fwd(layer, "fwd", set())
    # ---- LM head: the last tokens (zig-zag chunk 2D−1) live on rank 0 of the group
    B = t.B
    bc = {}
    for r0 in c.ranks:
        if r0 in bc:
            continue
        g = t.group(r0)
        members = [x for x in g if x in c.last]
        bc.update(c.builder.collective("broadcast", g, int(B * H * s), "head.last_token_broadcast", stream="comm",
                                       deps={x: [c.last[x]] for x in members}, root=g[0], issuers=members))
    _head(c, set(c.ranks), bc, B, m.vocab // D, "head.logits")
    stats = t.collective("all_reduce", B * 4 * 2, "head.sampling_stats_all_reduce", stream="comm", layer=-1,
                         phase="fwd", deps={r: [c.last[r]] for r in c.ranks})
    _join(c, stats, "head.done")
    _residual(c, res, "residual_stream.free", -1)
    return c.finish("tsp", {"layout": {"D": D, "weight_buffers": c.opts.weight_buffers,
                                       "kv_buckets": c.opts.kv_buckets},
                            "inference": {"step": "prefill", "kv_width": kvl.kv_width, "kv_seq_shards": D}})


# ---------------------------------------------------------------------------------- decode
@dataclass
class AttentionRecipe:
    """What a decode attention op reads, so it can be re-costed for another context length."""

    op: int
    """Op id."""
    seq_index: int
    """Sequence shard of the op's rank (which cached positions it holds)."""
    heads: int
    """Query heads it computes."""
    kv_width: int
    """K (or V) elements per cached token it reads."""
    batch: int
    """Sequences it attends for (B, or B/p for a batch-sharded cache)."""


@dataclass
class DecodeStep:
    """The op graph of one decode step and what is needed to re-cost and cut it."""

    graph: OpGraph
    """The step (embedding, L blocks, LM head)."""
    cached: int
    """Cached tokens before the step; the step attends over ``cached + 1`` positions."""
    batch: int
    """Sequences B."""
    head_dim: int
    """d."""
    dtype_bytes: int
    """s."""
    seq_shards: int
    """Sequence shards of the KV cache."""
    attention: list[AttentionRecipe] = field(default_factory=list)
    """Attention ops (re-costed by :meth:`recost`)."""
    cuts: list[tuple[int, ...]] = field(default_factory=list)
    """Per block: the candidate cut ops (see :func:`verify_cuts`)."""
    layer_starts: list[int] = field(default_factory=list)
    """Id of each block's first op; block k is ops [layer_starts[k], layer_starts[k+1])."""
    epilogue_start: int = 0
    """Id of the first op after the last block (final norm, LM head)."""

    def recost(self, cached: int) -> None:
        """Set every attention op's FLOPs and bytes for a step with ``cached`` tokens already cached.

        Per op: T_a = positions of ``cached + 1`` the rank holds, B_a its sequences; FLOPs 4·B_a·T_a·heads·d
        (QKᵀ and P·V, no causal halving since T_q = 1); bytes 2·B_a·T_a·kv_width·s (K and V) +
        2·B_a·heads·d·s (q in, o out) + B_a·heads·4 (statistics).
        """
        d, s = self.head_dim, self.dtype_bytes
        ops = self.graph.ops
        for a in self.attention:
            B = a.batch
            ctx_tokens = seq_share(cached + 1, self.seq_shards, a.seq_index)
            op = ops[a.op]
            op.flops = 4.0 * B * ctx_tokens * a.heads * d
            op.hbm_bytes = float((2 * B * ctx_tokens * a.kv_width + 2 * B * a.heads * d) * s
                                 + B * a.heads * STATS_BYTES)
            op.shape = (B, 1, ctx_tokens, a.heads, d)
        self.cached = cached


def build_decode_step(ctx: BuildContext, cached: int) -> DecodeStep:
    """One decode step with ``cached`` tokens in the cache (the step appends one per sequence).

    The cache holding ``cached`` tokens is allocated when the step starts; each block appends the new
    token's K/V on the ranks that store it.
    """
    if ctx.plan.schedule == "tsp":
        return _TspDecode(ctx, cached).build()
    return _StdDecode(ctx, standard_layout(ctx), cached).build()


class _DecodeBase:
    """Shared pieces of the decode-step generators."""

    def __init__(self, ctx: BuildContext, cached: int, kvl: KvLayout) -> None:
        self.c = one_replica(ctx)
        self.kvl = kvl
        self.cached = cached
        m = ctx.model
        self.B, self.H, self.s = ctx.workload.batch, m.hidden, m.dtype_bytes
        self.step = DecodeStep(self.c.builder.graph, cached, self.B, m.head_dim, m.dtype_bytes, kvl.seq_shards)

    def kv_start(self) -> None:
        """Allocate the cache of ``cached`` tokens (all blocks) at the start of the step."""
        c = self.c
        for r in c.ranks:
            nbytes = c.model.layers * self.kvl.block_bytes(r, self.B, self.cached, self.s)
            c.last[r] = c.builder.memory(r, "kv_cache.cached", [("kv_cache", nbytes)], deps=[c.last[r]])

    def append(self, rank: int, width: int) -> Mem:
        """The new token's K/V (``width`` elements, B/batch_shards sequences) if ``rank`` stores ``cached``."""
        if self.kvl.seq_index(rank) != self.kvl.owner(self.cached):
            return []
        return [("start", "kv_cache", 2 * (self.B // self.kvl.batch_shards) * width * self.s)]

    def attention(self, rank: int, name: str, heads: int, kv_width: int, layer: int, after: list[int | None],
                  mem: Mem) -> int:
        """A decode attention op over the rank's share of the ``cached + 1`` positions."""
        c = self.c
        op = c.compute(rank, "attention_fwd", name, layer=layer, phase="fwd", after=after, mem=mem)
        self.step.attention.append(AttentionRecipe(op, self.kvl.seq_index(rank), heads, kv_width,
                                                   self.B // self.kvl.batch_shards))
        return op

    def finish(self, name: str, extra: dict) -> DecodeStep:  # noqa: D102
        self.step.recost(self.cached)
        meta = {"inference": {"step": "decode", "cached": self.cached, "kv_width": self.kvl.kv_width,
                              "kv_seq_shards": self.kvl.seq_shards, "kv_batch_shards": self.kvl.batch_shards}}
        meta.update(extra)
        self.step.graph = self.c.finish(name, meta)
        return self.step


class _StdDecode(_DecodeBase):
    """Decode step of the standard block under a (T, Σ, residual) layout."""

    def __init__(self, ctx: BuildContext, lay: BlockLayout, cached: int) -> None:
        super().__init__(ctx, cached, kv_layout(lay.name, ctx.model.kv_dim, ctx.plan, ctx.opts.satp_batch_kv))
        self.lay = lay
        self.blk = blk = _Block(self.c, lay)
        blk.n = self.B                                   # tokens of the step (T_q = 1)
        blk.n_res = self.B // lay.tp if lay.residual != "replicated" else self.B
        self.sharded = lay.residual != "replicated"

    def build(self) -> DecodeStep:
        c, m, lay, blk = self.c, self.c.model, self.lay, self.blk
        B, H, s, n, n_res = self.B, self.H, self.s, blk.n, blk.n_res
        c.init_static({r: local_params(c, lay) for r in c.ranks})
        self.kv_start()
        res = {r: n_res * H * s for r in c.ranks}
        _residual(c, res, "residual_stream", +1)
        emb = {r: c.elementwise(r, "embedding.lookup", 2 * n * H * s, phase="fwd", after=[c.last[r]])
               for r in c.ranks}
        if lay.tp > 1:
            kind = "reduce_scatter" if self.sharded else "all_reduce"
            red = blk.coll(kind, blk.tp_group, n * H * s, f"embedding.{kind}", stream="comm", layer=-1, phase="fwd",
                           deps=emb)
            _join(c, red, "embedding.done")
        for layer in range(m.layers):
            self.step.layer_starts.append(len(c.builder.graph.ops))
            self.step.cuts.append(self.layer(layer))
        self.step.epilogue_start = len(c.builder.graph.ops)
        src = {r: c.last[r] for r in c.ranks}
        if self.sharded:
            src = blk.coll("all_gather", blk.tp_group, n * H * s, "head.input_all_gather", stream="comm", layer=-1,
                           phase="fwd", deps=src, mem_start=n * H * s)
        _head(c, set(c.ranks), src, B, m.vocab // lay.tp, "head.logits")
        if self.sharded:
            for r in c.ranks:
                _add_mem(c, c.last[r], [("end", "comm_buffers", -n * H * s)])
        if lay.tp > 1:
            stats = blk.coll("all_reduce", blk.tp_group, B * 4 * 2, "head.sampling_stats_all_reduce", stream="comm",
                             layer=-1, phase="fwd", deps={r: c.last[r] for r in c.ranks})
            _join(c, stats, "head.done")
        _residual(c, res, "residual_stream.free", -1)
        return self.finish(lay.name, {"layout": {"tp": lay.tp, "sp": lay.sp, "residual": lay.residual,
                                                 "kv_from_local_shard": lay.kv_from_local_shard}})

    def layer(self, layer: int) -> tuple[int, ...]:
        """One block; returns its cut candidate (the ops ending the last synchronising collective)."""
        c, m, lay, blk = self.c, self.c.model, self.lay, self.blk
        B, H, s, n, n_res = self.B, self.H, self.s, blk.n, blk.n_res
        L, ph = f"L{layer}.", "fwd"
        q_l, kv_l, heads_l = blk.q_l, blk.kv_l, blk.heads_l
        # ---- attention
        norm = {r: c.elementwise(r, L + "attn.norm", 3 * n_res * H * s, layer=layer, phase=ph, after=[c.last[r]])
                for r in c.ranks}
        src: dict[int, int | None] = dict(norm)
        if self.sharded:
            src = blk.coll("all_gather", blk.tp_group, n * H * s, L + "attn.input_all_gather", stream="comm",
                           layer=layer, phase=ph, deps=norm, mem_start=n * H * s)
        literal = lay.kv_from_local_shard
        q_cols = q_l if literal else q_l + 2 * kv_l
        qkv: dict[int, int | None] = {}
        for r in c.ranks:
            free_in = [("end", "comm_buffers", -n * H * s)] if self.sharded else []
            qkv[r] = c.gemm(r, L + "attn.qkv", n, q_cols, H, layer=layer, phase=ph, after=[src.get(r), c.last[r]],
                            mem=free_in)
            if literal:  # new K/V of the local tokens, all KV heads (whole W_K, W_V)
                qkv[r] = c.gemm(r, L + "attn.kv_local", n_res, 2 * m.kv_dim, H, layer=layer, phase=ph,
                                after=[qkv[r]])
        ready = qkv
        gathered = 0
        if literal:  # the article's K/V exchange: 2(p−1)/p·M_KV·s with M_KV = B·1·H_kv
            gathered = 2 * n * m.kv_dim * s
            ready = blk._kv_gather(blk.tp_group, gathered, L + "attn.kv_all_gather", layer, ph, qkv)
        by_batch = self.kvl.batch_shards > 1
        if by_batch:  # head shards of every sequence → all heads of the rank's B/p sequences
            gathered = n * (q_l + 2 * kv_l) * s
            ready = blk.coll("all_to_all", blk.tp_group, gathered, L + "attn.qkv_all_to_all", stream="comm",
                             layer=layer, phase=ph, deps=qkv, mem_start=gathered)
        attn: dict[int, int | None] = {}
        for r in c.ranks:
            mem = self.append(r, m.kv_dim if by_batch else kv_l)
            if gathered:
                mem.append(("end", "comm_buffers", -gathered))
            attn[r] = self.attention(r, L + "attn.core", m.q_heads if by_batch else heads_l,
                                     m.kv_dim if by_batch else kv_l, layer, [ready.get(r), c.last[r]], mem)
        out_mem: dict[int, Mem] | None = None
        if by_batch:  # outputs back to head shards for the row-parallel W_O
            o_bytes = n * q_l * s
            back = blk.coll("all_to_all", blk.tp_group, o_bytes, L + "attn.out_all_to_all", stream="comm",
                            layer=layer, phase=ph, deps=attn, mem_start=o_bytes)
            _join(c, back, L + "attn.heads_ready", layer)
            out_mem = {r: [("end", "comm_buffers", -o_bytes)] for r in c.ranks}
        cut: dict[int, int] = {}
        if lay.sp > 1:  # combine partial attention over the sequence shards (flash-decoding)
            lse = blk.coll("all_gather", blk.seq_group, lay.sp * B * heads_l * STATS_BYTES, L + "attn.lse_all_gather",
                           stream="kv", layer=layer, phase=ph, deps=attn)
            resc = {r: c.elementwise(r, L + "attn.rescale", 2 * B * q_l * s, layer=layer, phase=ph,
                                     after=[lse.get(r), c.last[r]]) for r in c.ranks}
            comb = blk.coll("all_reduce", blk.seq_group, B * q_l * s, L + "attn.partial_out_all_reduce", stream="kv",
                            layer=layer, phase=ph, deps=resc)
            _join(c, comb, L + "attn.combined", layer)
            cut = comb
        out = blk._row_parallel(L + "attn.out", n, H, q_l, layer, ph, mem=out_mem)
        add = {r: c.elementwise(r, L + "attn.residual_add", 3 * n_res * H * s, layer=layer, phase=ph,
                                after=[out.get(r), c.last[r]]) for r in c.ranks}
        # ---- MLP
        norm2 = {r: c.elementwise(r, L + "mlp.norm", 3 * n_res * H * s, layer=layer, phase=ph, after=[add[r]])
                 for r in c.ranks}
        src2: dict[int, int | None] = dict(norm2)
        if self.sharded:
            src2 = blk.coll("all_gather", blk.tp_group, n * H * s, L + "mlp.input_all_gather", stream="comm",
                            layer=layer, phase=ph, deps=norm2, mem_start=n * H * s)
        width = (2 if m.gated_mlp else 1) * blk.i_l
        for r in c.ranks:
            free_in = [("end", "comm_buffers", -n * H * s)] if self.sharded else []
            c.gemm(r, L + ("mlp.gate_up" if m.gated_mlp else "mlp.fc1"), n, width, H, layer=layer, phase=ph,
                   after=[src2.get(r), c.last[r]], mem=free_in + [("start", "temporary", int(n * width * s))])
            c.elementwise(r, L + ("mlp.swiglu" if m.gated_mlp else "mlp.gelu"), (width + blk.i_l) * n * s,
                          layer=layer, phase=ph, after=[c.last[r]],
                          mem=[("start", "temporary", int(n * blk.i_l * s))])
        frees = {r: [("end", "temporary", -int(n * width * s)), ("end", "temporary", -int(n * blk.i_l * s))]
                 for r in c.ranks}
        out2 = blk._row_parallel(L + ("mlp.down" if m.gated_mlp else "mlp.fc2"), n, H, blk.i_l, layer, ph,
                                 mem=frees)
        last = {r: c.elementwise(r, L + "mlp.residual_add", 3 * n_res * H * s, layer=layer, phase=ph,
                                 after=[out2.get(r), c.last[r]]) for r in c.ranks}
        if lay.tp > 1:
            cut = {r: op for r, op in out2.items() if op is not None}
        elif lay.sp == 1:
            cut = last
        return tuple(cut[r] for r in sorted(cut))


class _TspDecode(_DecodeBase):
    """Decode step of TSP: ``tsp_decode=weights`` (weights move) or ``token`` (activations move)."""

    def __init__(self, ctx: BuildContext, cached: int) -> None:
        super().__init__(ctx, cached, kv_layout("tsp", ctx.model.kv_dim, ctx.plan))
        self.t = t = _Tsp(self.c)
        t.n = self.B                                     # the step's tokens, replicated on every rank

    def build(self) -> DecodeStep:
        c, m, t = self.c, self.c.model, self.t
        B, H, s, D = self.B, self.H, self.s, t.D
        per_layer = (m.attn_params + m.mlp_params) / D + m.norm_params
        c.init_static({r: m.layers * per_layer + (m.embedding_params - H) / D + H for r in c.ranks})
        self.kv_start()
        res = {r: B * H * s for r in c.ranks}
        _residual(c, res, "residual_stream", +1)
        for r in c.ranks:
            c.elementwise(r, "embedding.lookup", 2 * B * H * s, phase="fwd", after=[c.last[r]])
        emb = t.collective("all_reduce", B * H * s, "embedding.all_reduce", stream="comm", layer=-1, phase="fwd",
                           deps={r: [c.last[r]] for r in c.ranks})
        _join(c, emb, "embedding.done")
        for r in c.ranks:
            t.prev_attn_done[r] = c.last[r]
        token = c.opts.tsp_decode == "token"
        for layer in range(m.layers):
            self.step.layer_starts.append(len(c.builder.graph.ops))
            self.step.cuts.append(self.layer_token(layer) if token else self.layer_weights(layer))
        self.step.epilogue_start = len(c.builder.graph.ops)
        _head(c, set(c.ranks), {r: c.last[r] for r in c.ranks}, B, m.vocab // D, "head.logits")
        stats = t.collective("all_reduce", B * 4 * 2, "head.sampling_stats_all_reduce", stream="comm", layer=-1,
                             phase="fwd", deps={r: [c.last[r]] for r in c.ranks})
        _join(c, stats, "head.done")
        _residual(c, res, "residual_stream.free", -1)
        return self.finish("tsp", {"layout": {"D": D, "weight_buffers": c.opts.weight_buffers,
                                              "tsp_decode": c.opts.tsp_decode}})

    def layer_weights(self, layer: int) -> tuple[int, ...]:
        """Weights move (tsp.md §7): attention broadcast loop with partial attention, then the MLP ring."""
        c, t = self.c, self.t
        B, H, s, D = self.B, self.H, self.s, t.D
        L, ph = f"L{layer}.", "fwd"
        w = c.opts.weight_buffers
        shard_bytes = t.attn_shard * s
        for r in c.ranks:
            c.elementwise(r, L + "attn.norm", 3 * B * H * s, layer=layer, phase=ph, after=[c.last[r]])
        outs: dict[int, list[int]] = {r: [] for r in c.ranks}
        for i in range(D):
            deps = {r: [outs[r][i - w]] if i >= w else [t.prev_attn_done.get(r)] for r in c.ranks}
            mem = {r: [("start", "comm_buffers", int(shard_bytes))] for r in c.ranks if t.owner(r, i) != r}
            bc = t.collective("broadcast", shard_bytes, L + f"attn.weights_broadcast[r={i}]", stream="weights",
                              layer=layer, phase=ph, deps=deps, root_index=i, mem=mem)
            attn = {}
            for r in c.ranks:
                c.gemm(r, L + f"attn.qkv[r={i}]", B, t.q_l + 2 * t.kv_l, H, layer=layer, phase=ph,
                       after=[bc.get(r), c.last[r]])
                attn[r] = self.attention(r, L + f"attn.core[r={i}]", t.heads_l, t.kv_l, layer, [c.last[r]],
                                         self.append(r, t.kv_l))
            lse = t.collective("all_gather", D * B * t.heads_l * STATS_BYTES, L + f"attn.lse_all_gather[r={i}]",
                               stream="kv", layer=layer, phase=ph, deps={r: [attn[r]] for r in c.ranks})
            for r in c.ranks:  # Y_p += (α_p · O_p,i) · W_o,i — the rescaled partial output, projected
                free = [("end", "comm_buffers", -int(shard_bytes))] if t.owner(r, i) != r else []
                outs[r].append(c.gemm(r, L + f"attn.out[r={i}]", B, H, t.q_l, layer=layer, phase=ph,
                                      after=[lse.get(r), c.last[r]], mem=free))
        for r in c.ranks:
            t.prev_attn_done[r] = outs[r][-1]
        red = t.collective("all_reduce", B * H * s, L + "attn.partial_out_all_reduce", stream="comm", layer=layer,
                           phase=ph, deps={r: [c.last[r]] for r in c.ranks})
        _join(c, red, L + "attn.combined", layer)
        for r in c.ranks:
            c.elementwise(r, L + "attn.residual_add", 3 * B * H * s, layer=layer, phase=ph, after=[c.last[r]])
        t.mlp_fwd(layer, ph, set())
        return tuple(c.last[r] for r in c.ranks)  # type: ignore[misc]

    def layer_token(self, layer: int) -> tuple[int, ...]:
        """Tokens move (``tsp_decode=token``): weights stay; Q/K/V all-gather, partial attention, TP-like rest."""
        c, t, m = self.c, self.t, self.c.model
        B, H, s = self.B, self.H, self.s
        L, ph = f"L{layer}.", "fwd"
        qkv_bytes = B * (m.q_dim + 2 * m.kv_dim) * s
        for r in c.ranks:
            c.elementwise(r, L + "attn.norm", 3 * B * H * s, layer=layer, phase=ph, after=[c.last[r]])
            c.gemm(r, L + "attn.qkv", B, t.q_l + 2 * t.kv_l, H, layer=layer, phase=ph, after=[c.last[r]])
        g = t.collective("all_gather", qkv_bytes, L + "attn.qkv_all_gather", stream="comm", layer=layer, phase=ph,
                         deps={r: [c.last[r]] for r in c.ranks},
                         mem={r: [("start", "comm_buffers", qkv_bytes)] for r in c.ranks})
        attn = {}
        for r in c.ranks:
            mem = self.append(r, m.kv_dim) + [("end", "comm_buffers", -qkv_bytes)]
            attn[r] = self.attention(r, L + "attn.core", m.q_heads, m.kv_dim, layer, [g.get(r), c.last[r]], mem)
        lse = t.collective("all_gather", t.D * B * m.q_heads * STATS_BYTES, L + "attn.lse_all_gather", stream="kv",
                           layer=layer, phase=ph, deps={r: [attn[r]] for r in c.ranks})
        for r in c.ranks:
            c.elementwise(r, L + "attn.rescale", 2 * B * m.q_dim * s, layer=layer, phase=ph,
                          after=[lse.get(r), c.last[r]])
        rs = t.collective("reduce_scatter", B * m.q_dim * s, L + "attn.partial_out_reduce_scatter", stream="comm",
                          layer=layer, phase=ph, deps={r: [c.last[r]] for r in c.ranks})
        for r in c.ranks:
            c.gemm(r, L + "attn.out", B, H, t.q_l, layer=layer, phase=ph, after=[rs.get(r), c.last[r]])
        ar = t.collective("all_reduce", B * H * s, L + "attn.out.all_reduce", stream="comm", layer=layer, phase=ph,
                          deps={r: [c.last[r]] for r in c.ranks})
        width = (2 if m.gated_mlp else 1) * t.i_l
        for r in c.ranks:
            c.elementwise(r, L + "attn.residual_add", 3 * B * H * s, layer=layer, phase=ph,
                          after=[ar.get(r), c.last[r]])
            c.elementwise(r, L + "mlp.norm", 3 * B * H * s, layer=layer, phase=ph, after=[c.last[r]])
            c.gemm(r, L + ("mlp.gate_up" if m.gated_mlp else "mlp.fc1"), B, width, H, layer=layer, phase=ph,
                   after=[c.last[r]], mem=[("start", "temporary", int(B * width * s))])
            c.elementwise(r, L + ("mlp.swiglu" if m.gated_mlp else "mlp.gelu"), (width + t.i_l) * B * s,
                          layer=layer, phase=ph, after=[c.last[r]], mem=[("start", "temporary", int(B * t.i_l * s))])
            c.gemm(r, L + ("mlp.down" if m.gated_mlp else "mlp.fc2"), B, H, t.i_l, layer=layer, phase=ph,
                   after=[c.last[r]], mem=[("end", "temporary", -int(B * width * s)),
                                           ("end", "temporary", -int(B * t.i_l * s))])
        ar2 = t.collective("all_reduce", B * H * s, L + "mlp.down.all_reduce", stream="comm", layer=layer, phase=ph,
                           deps={r: [c.last[r]] for r in c.ranks})
        for r in c.ranks:
            c.elementwise(r, L + "mlp.residual_add", 3 * B * H * s, layer=layer, phase=ph,
                          after=[ar2.get(r), c.last[r]])
        return tuple(ar2[r] for r in sorted(ar2))


# ---------------------------------------------------------------------------------- cuts
def verify_cuts(graph: OpGraph, cuts: list[tuple[int, ...]]) -> bool:
    """True if every candidate cut is a quiescent boundary by construction of the graph.

    A cut C (one op per simulated rank) qualifies when (1) every op issued before C is C itself or an
    ancestor of some op of C, (2) every op issued after C descends from some op of C, (3) C has one op
    on every simulated rank and the ops issued between C's first and last op are C's. Ancestry includes
    the issue order on each stream. Then, once all ops of C have ended at one instant t_C, nothing
    issued before is still running and nothing issued after has started: no flow is on a link, no
    communication kernel slows a GPU, and the rest of the replay is the replay of the remaining ops
    started at t_C — time-shift invariant. (That the ops of C end at *one* instant is checked on each
    replay by :mod:`tspsim.serving`.)
    """
    ops = graph.ops
    n = len(ops)
    preds: list[list[int]] = [list(op.deps) for op in ops]
    succs: list[list[int]] = [[] for _ in range(n)]
    for op in ops:
        for d in op.deps:
            succs[d].append(op.id)
    for stream_ops in graph.streams().values():
        for a, b in zip(stream_ops, stream_ops[1:]):
            preds[b.id].append(a.id)
            succs[a.id].append(b.id)
    ranks = set(graph.ranks) or {op.rank for op in ops}
    for cut in cuts:
        if not cut or {ops[i].rank for i in cut} != ranks or len(cut) != len(ranks):
            return False
        lo, hi = min(cut), max(cut)
        if set(range(lo, hi + 1)) != set(cut):
            return False
        if len(_reach(cut, preds)) - len(cut) != lo or len(_reach(cut, succs)) - len(cut) != n - hi - 1:
            return False
    return True


def stream_predecessors(graph: OpGraph) -> dict[int, int]:
    """Op id → the op issued just before it on the same (rank, stream)."""
    out: dict[int, int] = {}
    for stream_ops in graph.streams().values():
        for a, b in zip(stream_ops, stream_ops[1:]):
            out[b.id] = a.id
    return out


def verify_periodic_structure(step: DecodeStep) -> bool:
    """True if the blocks of ``step`` form a periodic graph that a time shift can map onto itself.

    Checks, with P ops per block: every block has P ops; block ℓ ≥ 1 repeats block ℓ−1 op by op (rank,
    stream, kind, FLOPs, bytes, payload, group, root) with its dependencies (and stream predecessors)
    shifted by P ids for ℓ ≥ 2; every dependency of a block-ℓ op lies in blocks ℓ−1 or ℓ, and every
    dependency of an epilogue op in the last block or the epilogue. Under these conditions the map
    "block ℓ → block ℓ+1" is an isomorphism of the not-yet-finished part of the graph, which is what
    :func:`tspsim.serving.find_period` relies on.
    """
    ops, a, end = step.graph.ops, step.layer_starts, step.epilogue_start
    k = len(a)
    if k < 3:
        return False
    period = a[1] - a[0]
    bounds = [*a, end]
    if any(bounds[i + 1] - bounds[i] != period for i in range(k)):
        return False
    spred = stream_predecessors(step.graph)

    def preds(op_id: int) -> set[int]:
        out = set(ops[op_id].deps)
        if op_id in spred:
            out.add(spred[op_id])
        return out

    def sig(op_id: int) -> tuple:
        o = ops[op_id]
        return (o.rank, o.stream, o.kind, o.flops, o.hbm_bytes, o.nbytes, o.group, o.root, o.algorithm)

    for layer in range(1, k):
        for i in range(period):
            cur, prev = a[layer] + i, a[layer - 1] + i
            if sig(cur) != sig(prev):
                return False
            pc = preds(cur)
            if any(d < a[layer - 1] for d in pc):
                return False
            if layer >= 2 and pc != {d + period for d in preds(prev)}:
                return False
    return all(d >= a[-1] for op_id in range(end, len(ops)) for d in preds(op_id))


def _reach(start: Iterable[int], edges: list[list[int]]) -> set[int]:
    """Nodes reachable from ``start`` (included) along ``edges``."""
    seen = set(start)
    todo = deque(seen)
    while todo:
        for nxt in edges[todo.popleft()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def with_layers(ctx: BuildContext, layers: int) -> BuildContext:
    """A fresh context like ``ctx`` for the same model cut to ``layers`` blocks (the periodic-unit graphs)."""
    return BuildContext(replace(ctx.model, layers=layers), ctx.topo, ctx.plan, ctx.workload, ctx.opts, fold=ctx.fold)

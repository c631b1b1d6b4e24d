"""Inference schedules: what prefill and decode share — the KV-cache layout, folding, residual memory, the head.

Prefill graphs are built by :mod:`tspsim.schedules.prefill`, decode steps by :mod:`tspsim.schedules.decode`,
and :mod:`tspsim.schedules.periodic` proves when a decode step's blocks repeat exactly.

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
:mod:`tspsim.simulate.decode_timer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tspsim.schedules.block import BlockLayout
from tspsim.schedules.context import BuildContext
from tspsim.spec.layout import Layout

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


def kv_layout(schedule: str, kv_dim: int, layout: Layout, satp_batch_kv: str = "heads") -> KvLayout:
    """The KV-cache layout of ``schedule``.

    * ``tp``, ``satp-seq``: head-sharded, 2·B·T·H_kv·s/p per rank per block.
    * ``satp-batch``: batch-sharded (``satp_batch_kv=batch``), all heads of B/p sequences:
      2·(B/p)·T·H_kv·s; or head-sharded as ``tp`` (``satp_batch_kv=heads``).
    * ``sp``, ``tsp``: sequence-sharded over D, all heads: 2·B·(T/D)·H_kv·s.
    * ``tp+sp``: 2·B·(T/Σ)·(H_kv/T)·s.
    """
    if schedule == "satp-batch" and satp_batch_kv == "batch":
        return KvLayout(kv_dim, 1, layout.tp, layout.replica_size, batch_shards=layout.tp)
    if schedule == "tsp":
        return KvLayout(kv_dim, layout.tp, 1, layout.replica_size)
    if schedule == "sp":
        return KvLayout(kv_dim, layout.sp, 1, layout.replica_size)
    if schedule == "tp+sp":
        return KvLayout(kv_dim // layout.tp, layout.sp, layout.tp, layout.replica_size)
    return KvLayout(kv_dim // layout.tp, 1, layout.tp, layout.replica_size)


def standard_layout(ctx: BuildContext) -> BlockLayout:
    """The :class:`BlockLayout` the training generator of ``ctx.layout.schedule`` uses (not ``tsp``)."""
    p, name = ctx.layout, ctx.layout.schedule
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
    layout = ctx.layout
    if not ctx.fold or layout.replicas < 2 or layout.replica_size >= ctx.topo.gpus_per_node:
        return ctx
    ranks = layout.replica_ranks(0)
    ctx.builder = ctx.make_builder(ranks, 0)
    ctx.last = dict.fromkeys(ranks)
    return ctx


def ops_since(ctx: BuildContext, start: int) -> Iterable[int]:
    """Ids of the ops added since op id ``start``."""
    return range(start, len(ctx.builder.graph.ops))


def add_mem(ctx: BuildContext, op_id: int, events: Mem) -> None:
    """Append memory events to an op already in the graph."""
    op = ctx.builder.graph.ops[op_id]
    op.mem = tuple(op.mem) + tuple(events)


def residual_memory(ctx: BuildContext, nbytes: dict[int, float], name: str, sign: int) -> None:
    """Allocate (+1) or free (−1) the residual stream of each rank as ``activations``."""
    for r in ctx.ranks:
        ctx.last[r] = ctx.builder.memory(r, name, [("activations", sign * int(nbytes[r]))], deps=[ctx.last[r]])


def join(ctx: BuildContext, ops: dict[int, int], name: str, layer: int = -1) -> None:
    """Make each rank's next compute op wait for ``ops`` (a zero-cost op on the compute stream)."""
    for r in ctx.ranks:
        if ops.get(r) is not None:
            ctx.last[r] = ctx.builder.memory(r, name, [], layer=layer, deps=[ops[r], ctx.last[r]])


def broadcast(c: BuildContext, group_of: Callable[[int], tuple[int, ...]], nbytes: float, name: str,
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


def lm_head(c: BuildContext, ranks: set[int], src: dict[int, int | None], rows: int, vocab: int, name: str) -> None:
    """Logits of ``rows`` tokens over ``vocab`` columns, then sampling (softmax / top-k over the shard)."""
    m, lb = c.model, c.opts.logits_bytes
    logits = int(rows * vocab * lb)
    for r in sorted(ranks):
        c.gemm(r, name, rows, vocab, m.hidden, layer=-1, phase="fwd", after=[src.get(r), c.last[r]],
               mem=[("start", "temporary", logits)])
        c.elementwise(r, "head.sampling", 2 * rows * vocab * lb, layer=-1, phase="fwd", after=[c.last[r]],
                      mem=[("end", "temporary", -logits)])

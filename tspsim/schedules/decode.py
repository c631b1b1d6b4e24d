"""Decode steps: one token per sequence per step (T_q = 1) against the KV cache, for every schedule.

See :mod:`tspsim.schedules.inference` for the per-schedule layouts and volumes. :func:`build_decode_step`
returns the graph of one step together with the attention ops to re-cost for another context length
(:meth:`DecodeStep.recost`) and, per block, the candidate *cut* that :mod:`tspsim.schedules.periodic`
checks.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

from tspsim.opgraph import OpGraph
from tspsim.schedules.block import Block, BlockLayout, local_params
from tspsim.schedules.context import BuildContext
from tspsim.schedules.inference import (
    STATS_BYTES,
    KvLayout,
    Mem,
    add_mem,
    join,
    kv_layout,
    lm_head,
    one_replica,
    residual_memory,
    seq_share,
    standard_layout,
)
from tspsim.schedules.tsp import TspBuilder


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

    def private(self, graph: OpGraph) -> DecodeStep:
        """The step on ``graph`` (the same ops, e.g. the step's graph renamed) with its own attention ops.

        :meth:`recost` changes only the attention ops, so a step that shares every other op with this one can
        be re-costed without changing this one or any timeline replayed from it (the graph reuse of
        :mod:`tspsim.simulate.graph_memo`).
        """
        ops = list(graph.ops)
        for a in self.attention:
            ops[a.op] = copy.copy(ops[a.op])
        return replace(self, graph=replace(graph, ops=ops))


def build_decode_step(ctx: BuildContext, cached: int) -> DecodeStep:
    """One decode step with ``cached`` tokens in the cache (the step appends one per sequence).

    The cache holding ``cached`` tokens is allocated when the step starts; each block appends the new
    token's K/V on the ranks that store it.
    """
    ctx.set_step("decode")
    if ctx.layout.schedule == "tsp":
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
        super().__init__(ctx, cached, kv_layout(lay.name, ctx.model.kv_dim, ctx.layout, ctx.opts.satp_batch_kv))
        self.lay = lay
        self.blk = blk = Block(self.c, lay)
        blk.n = self.B                                   # tokens of the step (T_q = 1)
        blk.n_res = self.B // lay.tp if lay.residual != "replicated" else self.B
        self.sharded = lay.residual != "replicated"

    def build(self) -> DecodeStep:
        c, m, lay, blk = self.c, self.c.model, self.lay, self.blk
        B, H, s, n, n_res = self.B, self.H, self.s, blk.n, blk.n_res
        c.init_static({r: local_params(c, lay) for r in c.ranks})
        self.kv_start()
        res = {r: n_res * H * s for r in c.ranks}
        residual_memory(c, res, "residual_stream", +1)
        emb = {r: c.elementwise(r, "embedding.lookup", 2 * n * H * s, phase="fwd", after=[c.last[r]])
               for r in c.ranks}
        if lay.tp > 1:
            kind = "reduce_scatter" if self.sharded else "all_reduce"
            red = blk.coll(kind, blk.tp_group, n * H * s, f"embedding.{kind}", stream="comm", layer=-1, phase="fwd",
                           deps=emb)
            join(c, red, "embedding.done")
        for layer in range(m.layers):
            self.step.layer_starts.append(len(c.builder.graph.ops))
            self.step.cuts.append(self.layer(layer))
        self.step.epilogue_start = len(c.builder.graph.ops)
        src = {r: c.last[r] for r in c.ranks}
        if self.sharded:
            src = blk.coll("all_gather", blk.tp_group, n * H * s, "head.input_all_gather", stream="comm", layer=-1,
                           phase="fwd", deps=src, mem_start=n * H * s)
        lm_head(c, set(c.ranks), src, B, m.vocab // lay.tp, "head.logits")
        if self.sharded:
            for r in c.ranks:
                add_mem(c, c.last[r], [("end", "comm_buffers", -n * H * s)])
        if lay.tp > 1:
            stats = blk.coll("all_reduce", blk.tp_group, B * 4 * 2, "head.sampling_stats_all_reduce", stream="comm",
                             layer=-1, phase="fwd", deps={r: c.last[r] for r in c.ranks})
            join(c, stats, "head.done")
        residual_memory(c, res, "residual_stream.free", -1)
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
            join(c, back, L + "attn.heads_ready", layer)
            out_mem = {r: [("end", "comm_buffers", -o_bytes)] for r in c.ranks}
        cut: dict[int, int] = {}
        if lay.sp > 1:  # combine partial attention over the sequence shards (flash-decoding)
            lse = blk.coll("all_gather", blk.seq_group, lay.sp * B * heads_l * STATS_BYTES, L + "attn.lse_all_gather",
                           stream="kv", layer=layer, phase=ph, deps=attn)
            resc = {r: c.elementwise(r, L + "attn.rescale", 2 * B * q_l * s, layer=layer, phase=ph,
                                     after=[lse.get(r), c.last[r]]) for r in c.ranks}
            comb = blk.coll("all_reduce", blk.seq_group, B * q_l * s, L + "attn.partial_out_all_reduce", stream="kv",
                            layer=layer, phase=ph, deps=resc)
            join(c, comb, L + "attn.combined", layer)
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
        super().__init__(ctx, cached, kv_layout("tsp", ctx.model.kv_dim, ctx.layout))
        self.t = t = TspBuilder(self.c)
        t.n = self.B                                     # the step's tokens, replicated on every rank

    def build(self) -> DecodeStep:
        c, m, t = self.c, self.c.model, self.t
        B, H, s, D = self.B, self.H, self.s, t.D
        c.init_static({r: m.params_per_rank(D) for r in c.ranks})
        self.kv_start()
        res = {r: B * H * s for r in c.ranks}
        residual_memory(c, res, "residual_stream", +1)
        for r in c.ranks:
            c.elementwise(r, "embedding.lookup", 2 * B * H * s, phase="fwd", after=[c.last[r]])
        emb = t.collective("all_reduce", B * H * s, "embedding.all_reduce", stream="comm", layer=-1, phase="fwd",
                           deps={r: [c.last[r]] for r in c.ranks})
        join(c, emb, "embedding.done")
        for r in c.ranks:
            t.prev_attn_done[r] = c.last[r]
        token = c.opts.tsp_decode == "token"
        for layer in range(m.layers):
            self.step.layer_starts.append(len(c.builder.graph.ops))
            self.step.cuts.append(self.layer_token(layer) if token else self.layer_weights(layer))
        self.step.epilogue_start = len(c.builder.graph.ops)
        lm_head(c, set(c.ranks), {r: c.last[r] for r in c.ranks}, B, m.vocab // D, "head.logits")
        stats = t.collective("all_reduce", B * 4 * 2, "head.sampling_stats_all_reduce", stream="comm", layer=-1,
                             phase="fwd", deps={r: [c.last[r]] for r in c.ranks})
        join(c, stats, "head.done")
        residual_memory(c, res, "residual_stream.free", -1)
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
        join(c, red, L + "attn.combined", layer)
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

"""Prefill graphs: each schedule's forward pass over B prompts, writing the KV cache, the head on the last tokens.

See :mod:`tspsim.schedules.inference` for the per-schedule KV-cache layouts and volumes.
"""

from __future__ import annotations

from tspsim.opgraph import OpGraph
from tspsim.schedules.block import Block, BlockLayout, local_params
from tspsim.schedules.context import BuildContext
from tspsim.schedules.inference import (
    add_mem,
    broadcast,
    join,
    kv_layout,
    lm_head,
    one_replica,
    ops_since,
    residual_memory,
    standard_layout,
)
from tspsim.schedules.tsp import TspBuilder


# ---------------------------------------------------------------------------------- prefill
def build_prefill(ctx: BuildContext) -> OpGraph:
    """One prefill step of ``ctx.workload`` (B prompts of T = ``seq_len`` tokens) for any schedule."""
    ctx.set_step("prefill")
    if ctx.layout.schedule == "tsp":
        return _prefill_tsp(ctx)
    return _prefill_standard(ctx, standard_layout(ctx))


def _prefill_standard(ctx: BuildContext, lay: BlockLayout) -> OpGraph:
    """Forward of the standard block (unchanged) + KV cache + last-token LM head."""
    c, m = one_replica(ctx), ctx.model
    blk = Block(c, lay)
    kvl = kv_layout(lay.name, m.kv_dim, c.layout, c.opts.satp_batch_kv)
    B, T, s, H, n, n_res = blk.B, blk.S, blk.s, blk.H, blk.n, blk.n_res
    c.init_static({r: local_params(c, lay) for r in c.ranks})
    res = {r: n_res * H * s for r in c.ranks}
    residual_memory(c, res, "residual_stream", +1)
    emb = {r: c.elementwise(r, "embedding.lookup", 2 * n * H * s, phase="fwd", after=[c.last[r]]) for r in c.ranks}
    if lay.tp > 1:
        kind = "all_reduce" if lay.residual == "replicated" else "reduce_scatter"
        red = blk.coll(kind, blk.tp_group, n * H * s, f"embedding.{kind}", stream="comm", layer=-1, phase="fwd",
                       deps=emb)
        join(c, red, "embedding.done")
    for layer in range(m.layers):
        start = len(c.builder.graph.ops)
        blk.forward(layer, "fwd", "none")
        qkv: dict[int, int | None] = {}
        cached: set[int] = set()
        for op_id in list(ops_since(c, start)):
            op = c.builder.graph.ops[op_id]
            if op.name == f"L{layer}.attn.qkv":
                qkv[op.rank] = op_id
            # the first core-attention op of the rank: flash, unfused QKᵀ, a bucket's or a ring step's
            first_core = op.is_compute and op.name.startswith(f"L{layer}.attn.core") and op.rank not in cached
            if first_core and kvl.batch_shards == 1:  # K/V of the block (the rank's own shard) → the cache
                cached.add(op.rank)
                add_mem(c, op_id, [("start", "kv_cache", kvl.block_bytes(op.rank, B, T, s))])
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
        src = broadcast(c, blk.tp_group, B * H * s, "head.last_token_broadcast", src, root_pos=-1)
    elif lay.sp > 1:                 # zig-zag: the last chunk belongs to sequence shard 0
        heads = {r for r in c.ranks if kvl.seq_index(r) == 0}
    lm_head(c, heads, src, B, v_l, "head.logits")
    if lay.tp > 1:
        stats = blk.coll("all_reduce", lambda r: blk.tp_group(r) if r in heads else (), B * 4 * 2,
                         "head.sampling_stats_all_reduce", stream="comm", layer=-1, phase="fwd",
                         deps={r: c.last[r] for r in c.ranks})
        join(c, stats, "head.done")
    residual_memory(c, res, "residual_stream.free", -1)
    return c.finish(lay.name, {"layout": {"tp": lay.tp, "sp": lay.sp, "residual": lay.residual,
                                          "kv_from_local_shard": lay.kv_from_local_shard},
                               "inference": {"step": "prefill", "kv_width": kvl.kv_width,
                                             "kv_seq_shards": kvl.seq_shards,
                                             "kv_batch_shards": kvl.batch_shards}})


def _prefill_tsp(ctx: BuildContext) -> OpGraph:
    """TSP forward (broadcast loop + K/V all-gathers, MLP ring; tsp.md §2–§3) + KV cache + last-token head."""
    c, m = one_replica(ctx), ctx.model
    t = TspBuilder(c)
    n, s, H, D = t.n, t.s, t.H, t.D
    kvl = kv_layout("tsp", m.kv_dim, c.layout)
    c.init_static({r: m.params_per_rank(D) for r in c.ranks})
    res = {r: n * H * s for r in c.ranks}
    residual_memory(c, res, "residual_stream", +1)
    t.vocab_ring("embedding.lookup", "fwd", (n, H, 1), 1.0, grad_ring=False)
    for r in c.ranks:
        t.prev_attn_done[r] = c.last[r]
    # The rank's own tokens' K/V for head shard r, all shards: 2·B·(T/D)·H_kv·s per block in total.
    shard_kv = {r: 2 * t.B * kvl.tokens(r, t.S) * t.kv_l * s for r in c.ranks}
    for layer in range(m.layers):
        start = len(c.builder.graph.ops)
        t.attention_fwd(layer, "fwd", set())
        for op_id in list(ops_since(c, start)):
            op = c.builder.graph.ops[op_id]
            if op.name.startswith(f"L{layer}.attn.qkv[r="):
                add_mem(c, op_id, [("end", "kv_cache", shard_kv[op.rank])])
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
    lm_head(c, set(c.ranks), bc, B, m.vocab // D, "head.logits")
    stats = t.collective("all_reduce", B * 4 * 2, "head.sampling_stats_all_reduce", stream="comm", layer=-1,
                         phase="fwd", deps={r: [c.last[r]] for r in c.ranks})
    join(c, stats, "head.done")
    residual_memory(c, res, "residual_stream.free", -1)
    return c.finish("tsp", {"layout": {"D": D, "weight_buffers": c.opts.weight_buffers,
                                       "kv_buckets": c.opts.kv_buckets},
                            "inference": {"step": "prefill", "kv_width": kvl.kv_width, "kv_seq_shards": D}})

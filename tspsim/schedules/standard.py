"""A full training or forward step of the standard block (tp, satp-*, sp, tp+sp).

Embeddings, blocks, LM head and loss, backward under the recompute policy, DP gradient sync and the
optimizer step.

Recompute policies (Korthikanti et al. 2022, as Megatron-LM implements them): ``none`` saves every
activation; ``selective`` saves everything but the unfused core attention's tensors and recomputes that
attention in backward (a flash kernel's backward does it anyway: selective = none); ``full`` keeps only
each block's input and re-runs the block's forward, with its communication, before its backward — for
every block, or for the first ``recompute_num_layers`` (Megatron's block method; the others save all).
"""

from __future__ import annotations

from tspsim.opgraph import OpGraph
from tspsim.schedules.block import Block, BlockLayout, local_params
from tspsim.schedules.context import BuildContext


def build_standard(ctx: BuildContext, lay: BlockLayout) -> OpGraph:
    """Full step for a standard layout: embeddings, blocks, LM head and loss, backward, DP, optimizer."""
    c = ctx
    m = c.model
    blk = Block(c, lay)
    params = {r: local_params(c, lay) for r in c.ranks}
    c.init_static(params)
    s, H = blk.s, blk.H
    n, n_res = blk.n, blk.n_res
    train = c.training
    policy = c.opts.recompute if train else "none-saved"
    first_k = c.opts.recompute_num_layers or m.layers

    def full(layer: int) -> bool:
        """The block is fully recomputed (recompute=full, within the first recompute_num_layers)."""
        return policy == "full" and layer < first_k

    # ---- embedding: vocab-parallel lookup, then all-reduce (classic) / reduce-scatter (sharded)
    emb = {r: c.elementwise(r, "embedding.lookup", 2 * n * H * s, phase="fwd", after=[c.last[r]]) for r in c.ranks}
    if lay.tp > 1:
        kind = "all_reduce" if lay.residual == "replicated" else "reduce_scatter"
        red = blk.coll(kind, blk.tp_group, n * H * s, f"embedding.{kind}", stream="comm", layer=-1, phase="fwd",
                       deps=emb)
        for r in c.ranks:
            c.builder.graph.ops[red[r]].mem = (("end", "activations", int(n_res * H * s)),) if train else ()
            c.last[r] = c.builder.memory(r, "embedding.done", [], phase="fwd", deps=[red[r], c.last[r]])
    # ---- blocks
    for layer in range(m.layers):
        if not train:
            blk.forward(layer, "fwd", "none")
        elif full(layer):
            for r in c.ranks:  # the block input is the only activation kept
                c.last[r] = c.builder.memory(r, f"L{layer}.checkpoint", [("activations", n_res * H * s)],
                                             layer=layer, deps=[c.last[r]])
            blk.forward(layer, "fwd", "none")
        else:
            blk.forward(layer, "fwd", "selective" if policy == "selective" else "all")
    # ---- LM head and loss (vocab-parallel)
    head_src = {r: c.last[r] for r in c.ranks}
    if lay.residual != "replicated":
        head_src = blk.coll("all_gather", blk.tp_group, n * H * s, "head.input_all_gather", stream="comm", layer=-1,
                            phase="fwd", deps=head_src, mem_start=n * H * s)
    v_l = m.vocab // lay.tp
    logits = int(n * v_l * c.opts.logits_bytes)
    for r in c.ranks:
        fr = [("end", "comm_buffers", -n * H * s)] if lay.residual != "replicated" else []
        c.gemm(r, "head.logits", n, v_l, H, layer=-1, phase="fwd", after=[head_src.get(r), c.last[r]],
               mem=[("start", "temporary", logits)] + fr)
        c.elementwise(r, "loss.cross_entropy", 2 * n * v_l * c.opts.logits_bytes, layer=-1, phase="fwd",
                      after=[c.last[r]], mem=[] if train else [("end", "temporary", -logits)])
    if lay.tp > 1:
        stats = blk.coll("all_reduce", blk.tp_group, n * 4 * 2, "loss.softmax_stats_all_reduce", stream="comm",
                         layer=-1, phase="fwd", deps={r: c.last[r] for r in c.ranks})
        for r in c.ranks:
            c.last[r] = c.builder.memory(r, "loss.done", [], phase="fwd", deps=[stats[r], c.last[r]])
    if train:
        for r in c.ranks:
            c.gemm(r, "bwd.head.logits", n, v_l, H, layer=-1, phase="bwd", after=[c.last[r]], scale=2,
                   mem=[("end", "temporary", -logits)])
        if lay.tp > 1:
            kind = "reduce_scatter" if lay.residual != "replicated" else "all_reduce"
            red = blk.coll(kind, blk.tp_group, n * H * s, f"bwd.head.grad_{kind}", stream="comm", layer=-1,
                           phase="bwd", deps={r: c.last[r] for r in c.ranks})
            for r in c.ranks:
                c.last[r] = c.builder.memory(r, "bwd.head.done", [], phase="bwd", deps=[red[r], c.last[r]])
        head_grads = 0 if m.tied_embeddings else m.vocab * H / lay.tp   # tied: one gradient, reduced at the end
        c.dp_sync({r: head_grads for r in c.ranks}, dict(c.last), layer=-1)
        for layer in reversed(range(m.layers)):
            if full(layer):
                blk.forward(layer, "bwd", "all", prefix="recompute.")
            blk.backward(layer)
            if full(layer):
                for r in c.ranks:
                    c.last[r] = c.builder.memory(r, f"L{layer}.checkpoint_free",
                                                 [("activations", -n_res * H * s)], layer=layer, phase="bwd",
                                                 deps=[c.last[r]])
        for r in c.ranks:
            c.elementwise(r, "bwd.embedding", 2 * n_res * H * s, layer=-1, phase="bwd", after=[c.last[r]],
                          mem=[("end", "activations", -int(n_res * H * s))] if lay.tp > 1 else [])
        c.dp_sync({r: (m.vocab * H) / lay.tp + m.replicated_embedding_params for r in c.ranks}, dict(c.last),
                  layer=-1)
        c.optimizer_step(params)
    return c.finish(lay.name, {"layout": {"tp": lay.tp, "sp": lay.sp, "residual": lay.residual,
                                          "kv_from_local_shard": lay.kv_from_local_shard}})

"""A full training or forward step of the standard block (tp, satp-*, sp, tp+sp, fsdp).

Embeddings, blocks, LM head and loss, backward under the recompute policy, DP gradient sync and the
optimizer step. :class:`StandardProgram` emits one pass (forward or backward of one model chunk for one
micro-batch) at a time for the pipeline driver (:mod:`tspsim.schedules.pipeline`); without a pipeline the step
is one forward and one backward of the whole model.

Recompute policies (Korthikanti et al. 2022, as Megatron-LM implements them): ``none`` saves every
activation; ``selective`` saves everything but the unfused core attention's tensors and recomputes that
attention in backward (a flash kernel's backward does it anyway: selective = none); ``full`` keeps only
each block's input and re-runs the block's forward, with its communication, before its backward — for
every block, or for the first ``recompute_num_layers`` (Megatron's block method; the others save all).

With ZeRO-3 (``fsdp``, or ``--zero 3``) each block's parameters are gathered before its forward and backward
(:mod:`tspsim.schedules.fsdp`).
"""

from __future__ import annotations

from typing import Any

from tspsim.opgraph import OpGraph
from tspsim.schedules.block import Block, BlockLayout, local_params
from tspsim.schedules.context import BuildContext
from tspsim.schedules.fsdp import ParamGather
from tspsim.schedules.pipeline import run_step


def build_standard(ctx: BuildContext, lay: BlockLayout) -> OpGraph:
    """Full step for a standard layout: embeddings, blocks, LM head and loss, backward, DP, optimizer."""
    return run_step(ctx, StandardProgram(ctx, lay))


class StandardProgram:
    """The standard block's passes (see the module docstring) for :func:`tspsim.schedules.pipeline.run_step`."""

    def __init__(self, ctx: BuildContext, lay: BlockLayout) -> None:
        self.ctx = ctx
        self.lay = lay
        self.name = lay.name
        self.blk = Block(ctx, lay)
        self.policy = ctx.opts.recompute if ctx.training else "none-saved"
        self.first_k = ctx.opts.recompute_num_layers or ctx.model.layers
        self.fsdp = ParamGather(ctx, self._unit_params) if ctx.opts.zero >= 3 else None

    # ------------------------------------------------------------------------------ shape
    def local_params(self, rank: int) -> float:
        """Parameters one rank holds: its stage's blocks (all of them without a pipeline), embedding, head.

        Blocks are sharded T ways (norms and row biases replicated); with a pipeline the first stage holds the
        vocabulary-parallel word embedding and the position table, the last the LM head (a copy of the word
        embedding when tied) and the final norm.
        """
        c, m = self.ctx, self.ctx.model
        layout = c.layout
        if layout.pp == 1:
            return local_params(c, self.lay)
        stage = layout.stage_of(rank)
        blocks = sum(len(layout.chunk_layers(stage, k)) for k in range(layout.virtual_stages))
        out = blocks * self._layer_params()
        if stage == 0:
            out += m.vocab * m.hidden / self.lay.tp + m.position_embeddings * m.hidden
        if stage == layout.pp - 1:
            out += m.vocab * m.hidden / self.lay.tp + m.hidden * (2 if m.biases else 1)
        return out

    def _layer_params(self) -> float:
        m, lay = self.ctx.model, self.lay
        per_layer = m.layer_shard_params(lay.tp)
        if lay.kv_from_local_shard:
            per_layer += 2 * m.hidden * m.kv_dim * (1 - 1 / lay.tp)
        return per_layer

    def _unit_params(self, unit: int) -> float:
        """Parameters per rank of an FSDP unit: a block, or (−1) the embedding and head of the rank's stage."""
        if unit >= 0:
            return self._layer_params()
        m, layout = self.ctx.model, self.ctx.layout
        if layout.pp == 1:
            return m.word_embedding_params / self.lay.tp + m.replicated_embedding_params
        return m.vocab * m.hidden / self.lay.tp + m.hidden * (2 if m.biases else 1) + m.position_embeddings * m.hidden

    def boundary(self) -> tuple[float, bool]:
        """Bytes of the stage-boundary activation on one rank, and whether the TP group replicates it."""
        b = self.blk
        return b.n_res * b.H * b.s, self.lay.residual == "replicated" and self.lay.tp > 1

    def tp_group(self, rank: int) -> tuple[int, ...]:
        """The rank's tensor-parallel group."""
        return self.blk.tp_group(rank)

    def word_embedding_grads(self) -> float:
        """Word-embedding gradient elements per rank (vocabulary-parallel)."""
        m = self.ctx.model
        return m.vocab * m.hidden / self.lay.tp

    def set_micro_batch(self, mb: int, tagged: bool) -> None:
        """Emit the passes of micro-batch ``mb`` next (``tagged``: op names carry ``mb<k>.``)."""
        self.blk.mb = mb
        self.blk.tag = f"mb{mb}." if tagged else ""

    def meta(self) -> dict[str, Any]:
        """The graph's ``layout`` metadata."""
        lay = self.lay
        return {"layout": {"tp": lay.tp, "sp": lay.sp, "residual": lay.residual,
                           "kv_from_local_shard": lay.kv_from_local_shard}}

    def _layers(self, stage: int, chunk: int) -> range:
        layout = self.ctx.layout
        return layout.chunk_layers(stage, chunk) if layout.pp > 1 else range(self.ctx.model.layers)

    def _full(self, layer: int) -> bool:
        """The block is fully recomputed (recompute=full, within the first recompute_num_layers)."""
        return self.policy == "full" and layer < self.first_k

    def _ends(self, stage: int, chunk: int) -> tuple[bool, bool]:
        """(holds the embedding, holds the LM head) for a chunk of a stage."""
        layout = self.ctx.layout
        v = layout.virtual_stage(stage, chunk)
        return v == 0, v == layout.pp * layout.virtual_stages - 1

    # ------------------------------------------------------------------------------ forward
    def forward(self, stage: int, chunk: int) -> None:
        """A forward pass: embedding (first chunk), blocks, LM head and loss (last chunk)."""
        c, blk = self.ctx, self.blk
        first, last = self._ends(stage, chunk)
        s, H, n, n_res = blk.s, blk.H, blk.n, blk.n_res
        train = c.training
        tag = blk.tag
        if self.fsdp:
            self.fsdp.anchor.clear()   # the first unit's gather starts with the pass (FSDP's pre-forward hook)
        if first:
            if self.fsdp:
                self.fsdp.before(-1, "fwd", tag)
            emb = {r: c.elementwise(r, f"{tag}embedding.lookup", 2 * n * H * s, phase="fwd", after=[c.last[r]])
                   for r in c.ranks}
            if self.lay.tp > 1:
                kind = "all_reduce" if self.lay.residual == "replicated" else "reduce_scatter"
                red = blk.coll(kind, blk.tp_group, n * H * s, f"{tag}embedding.{kind}", stream="comm", layer=-1,
                               phase="fwd", deps=emb)
                for r in c.ranks:
                    c.builder.graph.ops[red[r]].mem = (("end", "activations", int(n_res * H * s)),) if train else ()
                    c.last[r] = c.builder.memory(r, f"{tag}embedding.done", [], phase="fwd", deps=[red[r], c.last[r]])
            if self.fsdp and not last:
                self.fsdp.after(-1, "fwd")
        for layer in self._layers(stage, chunk):
            if self.fsdp:
                self.fsdp.before(layer, "fwd", tag)
            if not train:
                blk.forward(layer, "fwd", "none")
            elif self._full(layer):
                for r in c.ranks:  # the block input is the only activation kept
                    c.last[r] = c.builder.memory(r, f"L{layer}.{tag}checkpoint", [("activations", n_res * H * s)],
                                                 layer=layer, deps=[c.last[r]])
                blk.forward(layer, "fwd", "none")
            else:
                blk.forward(layer, "fwd", "selective" if self.policy == "selective" else "all")
            if self.fsdp:
                self.fsdp.after(layer, "fwd")
        if last:
            if self.fsdp and not first:
                self.fsdp.before(-1, "fwd", tag)
            self._head_forward(tag)
            if self.fsdp:
                self.fsdp.after(-1, "fwd")

    def _head_forward(self, tag: str) -> None:
        c, blk, m = self.ctx, self.blk, self.ctx.model
        s, H, n = blk.s, blk.H, blk.n
        train = c.training
        head_src = {r: c.last[r] for r in c.ranks}
        sharded = self.lay.residual != "replicated"
        if sharded:
            head_src = blk.coll("all_gather", blk.tp_group, n * H * s, f"{tag}head.input_all_gather", stream="comm",
                                layer=-1, phase="fwd", deps=head_src, mem_start=n * H * s)
        v_l = m.vocab // self.lay.tp
        logits = int(n * v_l * c.opts.logits_bytes)
        for r in c.ranks:
            fr = [("end", "comm_buffers", -n * H * s)] if sharded else []
            c.gemm(r, f"{tag}head.logits", n, v_l, H, layer=-1, phase="fwd", after=[head_src.get(r), c.last[r]],
                   mem=[("start", "temporary", logits)] + fr)
            c.elementwise(r, f"{tag}loss.cross_entropy", 2 * n * v_l * c.opts.logits_bytes, layer=-1, phase="fwd",
                          after=[c.last[r]], mem=[] if train else [("end", "temporary", -logits)])
        if self.lay.tp > 1:
            stats = blk.coll("all_reduce", blk.tp_group, n * 4 * 2, f"{tag}loss.softmax_stats_all_reduce",
                             stream="comm", layer=-1, phase="fwd", deps={r: c.last[r] for r in c.ranks})
            for r in c.ranks:
                c.last[r] = c.builder.memory(r, f"{tag}loss.done", [], phase="fwd", deps=[stats[r], c.last[r]])

    # ------------------------------------------------------------------------------ backward
    def backward(self, stage: int, chunk: int) -> None:
        """A backward pass: LM head (last chunk), blocks in reverse (recomputed first if so), embedding."""
        c, blk, m = self.ctx, self.blk, self.ctx.model
        first, last = self._ends(stage, chunk)
        s, H, n, n_res = blk.s, blk.H, blk.n, blk.n_res
        tag = blk.tag
        pipelined = c.layout.pp > 1
        if self.fsdp:
            self.fsdp.anchor.clear()
        if last:
            if self.fsdp:
                self.fsdp.before(-1, "bwd", tag)
            v_l = m.vocab // self.lay.tp
            logits = int(n * v_l * c.opts.logits_bytes)
            for r in c.ranks:
                c.gemm(r, f"{tag}bwd.head.logits", n, v_l, H, layer=-1, phase="bwd", after=[c.last[r]], scale=2,
                       mem=[("end", "temporary", -logits)])
            if self.lay.tp > 1:
                kind = "reduce_scatter" if self.lay.residual != "replicated" else "all_reduce"
                red = blk.coll(kind, blk.tp_group, n * H * s, f"{tag}bwd.head.grad_{kind}", stream="comm", layer=-1,
                               phase="bwd", deps={r: c.last[r] for r in c.ranks})
                for r in c.ranks:
                    c.last[r] = c.builder.memory(r, f"{tag}bwd.head.done", [], phase="bwd", deps=[red[r], c.last[r]])
            if pipelined:   # the last stage's own head (a copy of the word embedding when tied) and final norm
                head_grads = m.vocab * H / self.lay.tp + H * (2 if m.biases else 1)
            else:           # tied: one gradient, reduced with the embedding's
                head_grads = 0 if m.tied_embeddings else m.vocab * H / self.lay.tp
            c.dp_sync({r: head_grads for r in c.ranks}, dict(c.last), layer=-1)
            if self.fsdp and not first:
                self.fsdp.after(-1, "bwd")
        for layer in reversed(self._layers(stage, chunk)):
            if self.fsdp:
                self.fsdp.before(layer, "bwd", tag)
            if self._full(layer):
                blk.forward(layer, "bwd", "all", prefix="recompute.")
            blk.backward(layer)
            if self._full(layer):
                for r in c.ranks:
                    c.last[r] = c.builder.memory(r, f"L{layer}.{tag}checkpoint_free",
                                                 [("activations", -n_res * H * s)], layer=layer, phase="bwd",
                                                 deps=[c.last[r]])
            if self.fsdp:
                self.fsdp.after(layer, "bwd")
            c.end_layer(layer)
        if first:
            if self.fsdp and not last:
                self.fsdp.before(-1, "bwd", tag)
            for r in c.ranks:
                c.elementwise(r, f"{tag}bwd.embedding", 2 * n_res * H * s, layer=-1, phase="bwd", after=[c.last[r]],
                              mem=[("end", "activations", -int(n_res * H * s))] if self.lay.tp > 1 else [])
            if pipelined:
                emb = m.vocab * H / self.lay.tp + m.position_embeddings * H
            else:
                emb = (m.vocab * H) / self.lay.tp + m.replicated_embedding_params
            c.dp_sync({r: emb for r in c.ranks}, dict(c.last), layer=-1)
            if self.fsdp:
                self.fsdp.after(-1, "bwd")
            c.end_layer(-1)

"""``tsp`` — the full TSP step: embedding ring, blocks (:mod:`tspsim.schedules.tsp`), LM head, backward, optimizer.

:class:`TspProgram` emits one pass at a time for the pipeline driver (:mod:`tspsim.schedules.pipeline`); without
a pipeline the step is one forward and one backward of the whole model, as TSP was built before pipelines. With a
pipeline each stage is a TSP group of D ranks: the first stage's group runs the vocabulary ring of the embedding,
the last stage's the LM head's, and a stage sends each rank's own tokens' activations (the residual is sharded by
sequence) to the rank at the same position of the next stage.
"""

from __future__ import annotations

from typing import Any

from tspsim.opgraph import OpGraph
from tspsim.schedules.context import BuildContext
from tspsim.schedules.pipeline import run_step
from tspsim.schedules.registry import SCHEDULES, Schedule
from tspsim.schedules.tsp import KEEP_ALL, TspBuilder


class TspProgram:
    """TSP's passes for :func:`tspsim.schedules.pipeline.run_step`."""

    name = "tsp"

    def __init__(self, ctx: BuildContext) -> None:
        self.ctx = ctx
        self.t = TspBuilder(ctx)
        self.policy = ctx.opts.recompute if ctx.training else "none"
        self.first_k = ctx.opts.recompute_num_layers or ctx.model.layers

    def local_params(self, rank: int) -> float:
        """Parameters of one rank: 1/D of its stage's blocks, of the vocabulary (first and last stage), norms."""
        c, m, D = self.ctx, self.ctx.model, self.t.D
        layout = c.layout
        if layout.pp == 1:
            return m.params_per_rank(D)
        stage = layout.stage_of(rank)
        blocks = sum(len(layout.chunk_layers(stage, k)) for k in range(layout.virtual_stages))
        out = blocks * m.layer_shard_params(D)
        if stage == 0:
            out += m.vocab * m.hidden / D + m.position_embeddings * m.hidden
        if stage == layout.pp - 1:
            out += m.vocab * m.hidden / D + m.hidden * (2 if m.biases else 1)
        return out

    def boundary(self) -> tuple[float, bool]:
        """Each rank's own tokens' activation (the TSP residual is sharded by sequence)."""
        t = self.t
        return t.n * t.H * t.s, False

    def tp_group(self, rank: int) -> tuple[int, ...]:
        """The rank's TSP group."""
        return self.t.group(rank)

    def word_embedding_grads(self) -> float:
        """Word-embedding gradient elements per rank (1/D of the vocabulary)."""
        m = self.ctx.model
        return m.vocab * m.hidden / self.t.D

    def set_micro_batch(self, mb: int, tagged: bool) -> None:
        """Emit micro-batch ``mb`` next (``tagged``: op names carry ``mb<k>.``)."""
        self.t.mb = mb
        self.t.tag = f"mb{mb}." if tagged else ""

    def meta(self) -> dict[str, Any]:
        """The graph's ``layout`` metadata."""
        c = self.ctx
        return {"layout": {"D": self.t.D, "weight_buffers": c.opts.weight_buffers, "kv_buckets": c.opts.kv_buckets}}

    def _keep(self, layer: int) -> frozenset[str]:
        """What block ``layer`` saves: nothing when fully recomputed, else as the policy says."""
        if not self.ctx.training or self._full(layer):
            return frozenset()
        return KEEP_ALL - {"scores"} if self.policy == "selective" else KEEP_ALL

    def _full(self, layer: int) -> bool:
        return self.ctx.training and self.policy == "full" and layer < self.first_k

    def _layers(self, stage: int, chunk: int) -> range:
        layout = self.ctx.layout
        return layout.chunk_layers(stage, chunk) if layout.pp > 1 else range(self.ctx.model.layers)

    def _ends(self, stage: int, chunk: int) -> tuple[bool, bool]:
        layout = self.ctx.layout
        v = layout.virtual_stage(stage, chunk)
        return v == 0, v == layout.pp * layout.virtual_stages - 1

    def forward(self, stage: int, chunk: int) -> None:
        """Embedding ring (first chunk), blocks, LM-head ring and loss (last chunk)."""
        c, t, m = self.ctx, self.t, self.ctx.model
        first, last = self._ends(stage, chunk)
        n, s, H, D, tag = t.n, t.s, t.H, t.D, t.tag
        if first:  # vocab-parallel shards ride the ring; each rank looks up its own tokens
            t.vocab_ring(f"{tag}embedding.lookup", "fwd", (n, H, 1), 1.0, grad_ring=False)
        for r in c.ranks:
            t.prev_attn_done[r] = c.last[r]
        for layer in self._layers(stage, chunk):
            if self._full(layer):
                for r in c.ranks:
                    c.last[r] = c.builder.memory(r, f"L{layer}.{tag}checkpoint", [("activations", n * H * s)],
                                                 layer=layer, deps=[c.last[r]])
            t.attention_fwd(layer, "fwd", self._keep(layer))
            t.mlp_fwd(layer, "fwd", self._keep(layer))
        if not last:
            return
        logits = int(n * m.vocab * c.opts.logits_bytes)   # logits for own tokens, vocab shard by shard
        for r in c.ranks:
            c.last[r] = c.builder.memory(r, f"{tag}head.logits_buffer", [("temporary", logits)], deps=[c.last[r]])
        t.vocab_ring(f"{tag}head.logits", "fwd", (n, m.vocab // D, H), 1.0, grad_ring=False)
        for r in c.ranks:
            c.elementwise(r, f"{tag}loss.cross_entropy", 2 * n * m.vocab * c.opts.logits_bytes, phase="fwd",
                          after=[c.last[r]], mem=[] if c.training else [("end", "temporary", -logits)])

    def backward(self, stage: int, chunk: int) -> None:
        """LM-head ring (last chunk), blocks in reverse (recomputed first if so), embedding ring (first chunk)."""
        c, t, m = self.ctx, self.t, self.ctx.model
        first, last = self._ends(stage, chunk)
        n, s, H, D, tag = t.n, t.s, t.H, t.D, t.tag
        pipelined = c.layout.pp > 1
        if last:
            logits = int(n * m.vocab * c.opts.logits_bytes)
            t.vocab_ring(f"{tag}bwd.head.logits", "bwd", (n, m.vocab // D, H), 2.0, grad_ring=True)
            for r in c.ranks:
                c.last[r] = c.builder.memory(r, f"{tag}bwd.head.free_logits", [("temporary", -logits)], phase="bwd",
                                             deps=[c.last[r]])
            if pipelined:   # the last stage's own head (a copy of the word embedding when tied) and final norm
                head_grads = m.vocab * H / D + H * (2 if m.biases else 1)
            else:           # tied: one gradient, reduced with the embedding's
                head_grads = 0 if m.tied_embeddings else m.vocab * H / D
            c.dp_sync({r: head_grads for r in c.ranks}, dict(c.last), layer=-1)
        mlp_bias = (2 if m.gated_mlp else 1) * m.ffn_hidden if m.biases else 0
        for layer in reversed(self._layers(stage, chunk)):
            if self._full(layer):
                t.attention_fwd(layer, "bwd", KEEP_ALL, prefix="recompute.")
                t.mlp_fwd(layer, "bwd", KEEP_ALL, prefix="recompute.")
            g_mlp = t.mlp_bwd(layer)
            c.dp_sync({r: (m.mlp_params + mlp_bias) / D for r in c.ranks},
                      {r: g_mlp.get(r) or c.last[r] for r in c.ranks}, layer=layer)
            g_attn = t.attention_bwd(layer)
            c.dp_sync({r: m.layer_shard_params(D) - (m.mlp_params + mlp_bias) / D for r in c.ranks},
                      {r: g_attn.get(r) or c.last[r] for r in c.ranks}, layer=layer)
            if self._full(layer):
                for r in c.ranks:
                    c.last[r] = c.builder.memory(r, f"L{layer}.{tag}checkpoint_free", [("activations", -n * H * s)],
                                                 layer=layer, phase="bwd", deps=[c.last[r]])
            c.end_layer(layer)
        if first:
            t.vocab_ring(f"{tag}bwd.embedding", "bwd", (n, H, 1), 1.0, grad_ring=True)
            emb = (m.vocab * H / D + m.position_embeddings * H) if pipelined else \
                m.vocab * H / D + m.replicated_embedding_params
            c.dp_sync({r: emb for r in c.ranks}, dict(c.last), layer=-1)
            c.end_layer(-1)


def build(ctx: BuildContext) -> OpGraph:
    """TSP of degree D = ``ctx.layout.tp`` (= ``plan.sp``)."""
    return run_step(ctx, TspProgram(ctx))


SCHEDULES.register("tsp", Schedule("tsp", "folded TSP: attention weight-broadcast loop + K/V all-gather, MLP weight "
                                   "ring", "tsp.md §2-§4", build))

"""The standard decoder block under a (T, Σ, residual-sharding) layout.

One generator covers classic TP, sharded-activation TP (sequence or batch shard), SP and TP+SP
(reference/tensor-parallelism-analysis.md; tsp.md §5). A replica is a T × Σ grid: weights are sharded
T ways (column-parallel W_Q, W_K, W_V, W_gate/W_up, row-parallel W_O, W_down), tokens Σ ways (zig-zag
sequence shards with a K/V all-gather). Inside a TP group the residual stream is either replicated
(classic TP: all-reduce after the row-parallel projections) or sharded T ways by sequence or batch
(reduce-scatter after the row-parallel projections, all-gather of the input before the column-parallel
ones — the all-gather the article's table omits, counted separately as ``input all-gather``).

Forward per block and rank (B = micro-batch, S = sequence, n = B·S/Σ tokens of the TP group)::

    [AG_T  x      n·H·s      ]  sharded residual only (input all-gather)
    norm → QKV GEMM (n × H → (H_q + 2H_kv)/T)
    [AG_Σ  K,V    2·B·S·H_kv/T·s]  Σ > 1: packed K/V all-gather over the sequence shards
    attention (H_q/T heads, n queries vs S keys, causal)
    O GEMM → [AR_T | RS_T   n·H·s]
    norm → [AG_T x] → gate/up GEMM → act → down GEMM → [AR_T | RS_T   n·H·s]

Backward is the transpose: AR ↔ AR, AG ↔ RS, and the K/V all-gather is repeated (gathered K/V are
not kept) followed by a reduce-scatter of dK/dV. With full recompute each block's forward, with its
communication, runs again before its backward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tspsim.opgraph import OpGraph
from tspsim.schedules.context import ATTN_BWD_FACTOR, BuildContext, attention_fwd_flops

Residual = Literal["replicated", "seq", "batch"]


@dataclass(frozen=True)
class BlockLayout:
    """How a schedule lays the standard block onto a replica."""

    name: str
    """Schedule name recorded in results."""
    tp: int
    """T: weight shards (tensor-parallel group size)."""
    sp: int
    """Σ: sequence shards with K/V all-gather."""
    residual: Residual
    """Residual stream inside the TP group: replicated (all-reduce) or sharded (reduce-scatter)."""
    kv_from_local_shard: bool = False
    """satp-seq as the article tabulates: K/V projected on the local sequence shard (W_K, W_V kept
    whole) and all-gathered over the TP group; Q from the gathered input."""


class Block:
    """Emits the standard block's forward and backward ops for one :class:`BlockLayout` on every simulated rank."""

    def __init__(self, ctx: BuildContext, lay: BlockLayout) -> None:
        self.ctx = ctx
        self.lay = lay
        m, w = ctx.model, ctx.workload
        self.B, self.S, self.H = w.batch, w.seq_len, m.hidden
        self.T, self.SP = lay.tp, lay.sp
        self.n = self.B * self.S // self.SP            # tokens of the TP group
        self.n_res = self.n // self.T if lay.residual != "replicated" else self.n
        self.q_l = m.q_dim // self.T
        self.kv_l = m.kv_dim // self.T
        self.heads_l = m.q_heads // self.T
        self.i_l = m.ffn_hidden // self.T
        self.s = m.dtype_bytes
        self.saved: dict[tuple[int, int], list[tuple[str, int]]] = {}

    # ------------------------------------------------------------------------------ groups
    def tp_group(self, rank: int) -> tuple[int, ...]:
        """The T ranks sharing ``rank``'s sequence shard (its tensor-parallel group)."""
        rs = self.ctx.layout.replica_size
        base, pos = rank - rank % rs, rank % rs
        srow = pos // self.T
        return tuple(base + srow * self.T + t for t in range(self.T))

    def seq_group(self, rank: int) -> tuple[int, ...]:
        """The Σ ranks holding ``rank``'s head shard for every sequence shard (its K/V all-gather group)."""
        rs = self.ctx.layout.replica_size
        base, pos = rank - rank % rs, rank % rs
        t = pos % self.T
        return tuple(base + s * self.T + t for s in range(self.SP))

    def coll(self, kind: str, group_of: Callable[[int], tuple[int, ...]], nbytes: float, name: str, *,
             stream: str, layer: int, phase: str, deps: dict[int, int | None],
             mem_start: int = 0, mem_cat: str = "comm_buffers") -> dict[int, int]:
        """One collective per distinct group among the simulated ranks."""
        out: dict[int, int] = {}
        b = self.ctx.builder
        sim = set(self.ctx.ranks)
        for r in self.ctx.ranks:
            if r in out:
                continue
            group = group_of(r)
            if len(group) < 2:
                continue
            members = [x for x in group if x in sim]
            mem = {x: [("start", mem_cat, int(mem_start))] for x in members} if mem_start else None
            out.update(b.collective(kind, group, int(nbytes), name, stream=stream, layer=layer, phase=phase,
                                    deps={x: [deps.get(x)] for x in members}, issuers=members, mem=mem))
        return out

    # ------------------------------------------------------------------------------ forward
    def forward(self, layer: int, phase: str, save: str, prefix: str = "") -> None:
        """Emit one block's forward on every rank. ``save``: ``all``, ``selective`` or ``none``."""
        c, s, n, H = self.ctx, self.s, self.n, self.H
        m = c.model
        L = f"L{layer}.{prefix}"
        sharded = self.lay.residual != "replicated"
        keep = {"all": {"x", "xn", "qkv", "o", "x2", "x2n", "h", "act"},
                "selective": {"x", "qkv", "o", "x2", "h"}, "none": set()}[save]
        for r in c.ranks:
            self.saved[(layer, r)] = []

        def act(r: int, item: str, nbytes: float) -> list[tuple[str, str, int]]:
            """Memory events for an activation: saved for backward, or freed right after use."""
            if item in keep:
                self.saved[(layer, r)].append((item, int(nbytes)))
                return [("end", "activations", int(nbytes))]
            return []

        # ---- attention sublayer
        norm = {r: c.elementwise(r, L + "attn.norm", 3 * self.n_res * H * s, layer=layer, phase=phase,
                                 after=[c.last[r]], mem=act(r, "x", self.n_res * H * s)) for r in c.ranks}
        src = norm
        if sharded:
            src = self.coll("all_gather", self.tp_group, n * H * s, L + "attn.input_all_gather", stream="comm",
                            layer=layer, phase=phase, deps=norm, mem_start=n * H * s)
        q_cols = self.q_l if self.lay.kv_from_local_shard else self.q_l + 2 * self.kv_l
        qkv_save = n * q_cols * s + (self.n_res * 2 * m.kv_dim * s if self.lay.kv_from_local_shard else 0)
        qkv = {}
        for r in c.ranks:
            free_in = [("end", "comm_buffers", -n * H * s)] if sharded else []
            qkv[r] = c.gemm(r, L + "attn.qkv", n, q_cols, H, layer=layer, phase=phase, after=[src.get(r), c.last[r]],
                            mem=act(r, "xn", n * H * s) + act(r, "qkv", qkv_save) + free_in)
            if self.lay.kv_from_local_shard:
                qkv[r] = c.gemm(r, L + "attn.kv_local", self.n_res, 2 * m.kv_dim, H, layer=layer, phase=phase,
                                after=[qkv[r]])
        kv_ready = qkv
        gathered_kv = 0.0
        kv_group = self._kv_group()
        keep_kv = self._keeps_kv()
        recomputing = prefix.startswith("recompute")
        if kv_group is not None and not (keep_kv and recomputing):
            gathered_kv = self._kv_bytes()
            kv_ready = self._kv_gather(kv_group, gathered_kv, L + "attn.kv_all_gather", layer, phase, qkv)
            if self._zigzag():
                kv_ready = {r: c.elementwise(r, L + "attn.kv_zigzag_reorder", 2 * gathered_kv, layer=layer,
                                             phase=phase, after=[kv_ready.get(r), c.last[r]]) for r in c.ranks}
        kv_tokens = self.S
        batch_q = self.B if self.lay.residual != "batch" else self.B
        q_tokens = n // batch_q
        attn = {}
        for r in c.ranks:
            fl = attention_fwd_flops(batch_q, q_tokens, kv_tokens, self.heads_l, m.head_dim)
            o_bytes = n * self.q_l * s + n * self.heads_l * 4
            free_kv = [("end", "comm_buffers", -int(gathered_kv))] if gathered_kv else []
            if gathered_kv and keep_kv:  # kept for the backward pass of this block
                free_kv.append(("end", "activations", int(gathered_kv)))
            attn[r] = c.compute(r, "attention_fwd", L + "attn.core", flops=fl,
                                hbm_bytes=(n * self.q_l * 2 + 2 * kv_tokens * self.B * self.kv_l) * s,
                                shape=(batch_q, q_tokens, kv_tokens, self.heads_l, m.head_dim), layer=layer,
                                phase=phase, after=[kv_ready.get(r), c.last[r]],
                                mem=act(r, "o", o_bytes) + free_kv)
        out = self._row_parallel(L + "attn.out", n, H, self.q_l, layer, phase)
        add = {r: c.elementwise(r, L + "attn.residual_add", 3 * self.n_res * H * s, layer=layer, phase=phase,
                                after=[out.get(r), c.last[r]]) for r in c.ranks}
        # ---- MLP sublayer
        norm2 = {r: c.elementwise(r, L + "mlp.norm", 3 * self.n_res * H * s, layer=layer, phase=phase,
                                  after=[add[r]], mem=act(r, "x2", self.n_res * H * s)) for r in c.ranks}
        src2 = norm2
        if sharded:
            src2 = self.coll("all_gather", self.tp_group, n * H * s, L + "mlp.input_all_gather", stream="comm",
                             layer=layer, phase=phase, deps=norm2, mem_start=n * H * s)
        width = (2 if m.gated_mlp else 1) * self.i_l
        for r in c.ranks:
            free_in = [("end", "comm_buffers", -n * H * s)] if sharded else []
            tmp = [("start", "temporary", int(n * width * s))] if "h" not in keep else []
            c.gemm(r, L + ("mlp.gate_up" if m.gated_mlp else "mlp.fc1"), n, width, H, layer=layer, phase=phase,
                   after=[src2.get(r), c.last[r]], mem=act(r, "x2n", n * H * s) + act(r, "h", n * width * s)
                   + free_in + tmp)
            tmp2 = [("start", "temporary", int(n * self.i_l * s))] if "act" not in keep else []
            c.elementwise(r, L + ("mlp.swiglu" if m.gated_mlp else "mlp.gelu"), (width + self.i_l) * n * s,
                          layer=layer, phase=phase, after=[c.last[r]], mem=act(r, "act", n * self.i_l * s) + tmp2)
        frees = {}
        for r in c.ranks:
            f = []
            if "h" not in keep:
                f.append(("end", "temporary", -int(n * width * s)))
            if "act" not in keep:
                f.append(("end", "temporary", -int(n * self.i_l * s)))
            frees[r] = f
        out2 = self._row_parallel(L + ("mlp.down" if m.gated_mlp else "mlp.fc2"), n, H, self.i_l, layer, phase,
                                  mem=frees)
        for r in c.ranks:
            c.elementwise(r, L + "mlp.residual_add", 3 * self.n_res * H * s, layer=layer, phase=phase,
                          after=[out2.get(r), c.last[r]])

    def _kv_group(self) -> Callable[[int], tuple[int, ...]] | None:
        """Group over which K/V are all-gathered, or None when attention is local."""
        if self.lay.kv_from_local_shard:
            return self.tp_group
        return self.seq_group if self.SP > 1 else None

    def _zigzag(self) -> bool:
        """K/V gathered over zig-zag sequence shards must be reordered into token order (tsp.md §2)."""
        return self.SP > 1 and not self.lay.kv_from_local_shard

    def _kv_bytes(self) -> float:
        """Bytes of the gathered (packed) K and V."""
        kv = self.ctx.model.kv_dim if self.lay.kv_from_local_shard else self.kv_l
        return 2.0 * self.B * self.S * kv * self.s

    def _keeps_kv(self) -> bool:
        """Gathered K/V stay until backward (``sp_keep_gathered_kv``, training only)."""
        return self.ctx.training and self.ctx.opts.sp_keep_gathered_kv and self._kv_group() is not None

    def _kv_gather(self, group_of: Callable[[int], tuple[int, ...]], nbytes: float, name: str, layer: int,
                   phase: str, after: dict[int, int]) -> dict[int, int]:
        """Packed (or separate K and V) all-gather on the ``kv`` stream."""
        c = self.ctx
        if c.opts.pack_kv:
            return self.coll("all_gather", group_of, nbytes, name, stream="kv", layer=layer, phase=phase,
                             deps=after, mem_start=nbytes)
        k = self.coll("all_gather", group_of, nbytes / 2, name + ".k", stream="kv", layer=layer, phase=phase,
                      deps=after, mem_start=nbytes / 2)
        return self.coll("all_gather", group_of, nbytes / 2, name + ".v", stream="kv", layer=layer, phase=phase,
                         deps={r: k.get(r) for r in after}, mem_start=nbytes / 2)

    def _row_parallel(self, name: str, n: int, H: int, k: int, layer: int, phase: str,
                      mem: dict[int, list[tuple[str, str, int]]] | None = None) -> dict[int, int]:
        """Row-parallel GEMM followed by AR (classic) or RS (sharded) over the TP group.

        With ``tp_overlap`` the GEMM and its collective are split into 4 chunks so chunk i's
        collective runs while chunk i+1 computes (TP communication overlap by decomposition).
        """
        c, s = self.ctx, self.s
        kind = "all_reduce" if self.lay.residual == "replicated" else "reduce_scatter"
        if self.T == 1:
            return {r: c.gemm(r, name, n, H, k, layer=layer, phase=phase, after=[c.last[r]],
                              mem=(mem or {}).get(r, [])) for r in c.ranks}
        chunks = 4 if c.opts.tp_overlap else 1
        done: dict[int, list[int]] = {r: [] for r in c.ranks}
        for i in range(chunks):
            g = {r: c.gemm(r, name if chunks == 1 else f"{name}[{i}]", n / chunks, H, k, layer=layer, phase=phase,
                           after=[c.last[r]], mem=(mem or {}).get(r, []) if i == chunks - 1 else [])
                 for r in c.ranks}
            red = self.coll(kind, self.tp_group, n * H * s / chunks, f"{name}.{kind}", stream="comm", layer=layer,
                            phase=phase, deps=g)
            for r, op in red.items():
                done[r].append(op)
        # The consumer waits for every chunk's collective: express it with a zero-cost join op.
        return {r: c.builder.memory(r, f"{name}.join", [], layer=layer, phase=phase, deps=done[r])
                if len(done[r]) > 1 else (done[r][0] if done[r] else None) for r in c.ranks}

    # ------------------------------------------------------------------------------ backward
    def _grad_reduce(self, prefix: str, layer: int) -> dict[int, int | None]:
        """Input-gradient reduction over the TP group after a column-parallel backward.

        All-reduce for a replicated residual (Megatron's f operator), reduce-scatter for a sharded one
        (transpose of the input all-gather); nothing when T = 1. Returns {rank: op to wait for}.
        """
        c = self.ctx
        red: dict[int, int | None] = {r: c.last[r] for r in c.ranks}
        if self.T > 1:
            kind = "reduce_scatter" if self.lay.residual != "replicated" else "all_reduce"
            red = self.coll(kind, self.tp_group, self.n * self.H * self.s, f"{prefix}.grad_{kind}", stream="comm",
                            layer=layer, phase="bwd", deps=red)
        return red

    def backward(self, layer: int) -> None:
        """Emit one block's backward (transposed communication, 2× GEMM FLOPs, 2.5× attention)."""
        c, s, n, H, T = self.ctx, self.s, self.n, self.H, self.T
        m = c.model
        L = f"L{layer}.bwd."
        ph = "bwd"
        sharded = self.lay.residual != "replicated"
        saved = {r: dict(self.saved.get((layer, r), [])) for r in c.ranks}

        def free(r: int, *items: str) -> list[tuple[str, str, int]]:
            return [("end", "activations", -saved[r].pop(i)) for i in items if i in saved[r]]

        width = (2 if m.gated_mlp else 1) * self.i_l
        # ---- MLP backward
        src = {r: c.last[r] for r in c.ranks}
        if sharded:  # transpose of the reduce-scatter: gather dZ
            src = self.coll("all_gather", self.tp_group, n * H * s, L + "mlp.grad_all_gather", stream="comm",
                            layer=layer, phase=ph, deps=src, mem_start=n * H * s)
        for r in c.ranks:
            fr = [("end", "comm_buffers", -n * H * s)] if sharded else []
            c.gemm(r, L + ("mlp.down" if m.gated_mlp else "mlp.fc2"), n, H, self.i_l, layer=layer, phase=ph,
                   after=[src.get(r), c.last[r]], scale=2, mem=free(r, "act") + fr)
            c.elementwise(r, L + "mlp.act", 3 * n * width * s, layer=layer, phase=ph, after=[c.last[r]],
                          mem=free(r, "h"))
            c.gemm(r, L + ("mlp.gate_up" if m.gated_mlp else "mlp.fc1"), n, width, H, layer=layer, phase=ph,
                   after=[c.last[r]], scale=2, mem=free(r, "x2n"))
        red = self._grad_reduce(L + "mlp", layer)
        for r in c.ranks:
            c.elementwise(r, L + "mlp.norm", 4 * self.n_res * H * s, layer=layer, phase=ph,
                          after=[red.get(r), c.last[r]], mem=free(r, "x2"))
        mlp_grads = {r: m.mlp_params / T + H for r in c.ranks}
        c.dp_sync(mlp_grads, dict(c.last), layer=layer)
        # ---- attention backward
        src = {r: c.last[r] for r in c.ranks}
        if sharded:
            src = self.coll("all_gather", self.tp_group, n * H * s, L + "attn.grad_all_gather", stream="comm",
                            layer=layer, phase=ph, deps=src, mem_start=n * H * s)
        for r in c.ranks:
            fr = [("end", "comm_buffers", -n * H * s)] if sharded else []
            c.gemm(r, L + "attn.out", n, H, self.q_l, layer=layer, phase=ph, after=[src.get(r), c.last[r]], scale=2,
                   mem=fr)
        kv_group = self._kv_group()
        kv_bytes = self._kv_bytes()
        keep_kv = self._keeps_kv()
        ready = {r: c.last[r] for r in c.ranks}
        if kv_group is not None and not keep_kv:
            ready = self._kv_gather(kv_group, kv_bytes, L + "attn.kv_all_gather", layer, ph, ready)
            if self._zigzag():
                ready = {r: c.elementwise(r, L + "attn.kv_zigzag_reorder", 2 * kv_bytes, layer=layer, phase=ph,
                                          after=[ready.get(r), c.last[r]]) for r in c.ranks}
        batch_q = self.B
        q_tokens = n // batch_q
        for r in c.ranks:
            fl = ATTN_BWD_FACTOR * attention_fwd_flops(batch_q, q_tokens, self.S, self.heads_l, m.head_dim)
            mem = free(r, "o")
            if kv_group is not None:
                # gathered K/V are released; dK/dV for all tokens are produced for the reduce-scatter
                cat = "activations" if keep_kv else "comm_buffers"
                mem = mem + [("end", cat, -int(kv_bytes)), ("end", "temporary", int(kv_bytes))]
            c.compute(r, "attention_bwd", L + "attn.core", flops=fl,
                      hbm_bytes=(n * self.q_l * 4 + 4 * self.S * self.B * self.kv_l) * s,
                      shape=(batch_q, q_tokens, self.S, self.heads_l, m.head_dim), layer=layer, phase=ph,
                      after=[ready.get(r), c.last[r]], mem=mem)
        dkv = {r: c.last[r] for r in c.ranks}
        if kv_group is not None:
            dkv = self.coll("reduce_scatter", kv_group, kv_bytes, L + "attn.kv_grad_reduce_scatter", stream="kv",
                            layer=layer, phase=ph, deps=dkv)
        q_cols = self.q_l if self.lay.kv_from_local_shard else self.q_l + 2 * self.kv_l
        for r in c.ranks:
            mem = free(r, "qkv", "xn")
            if kv_group is not None:
                mem.append(("end", "temporary", -int(kv_bytes)))
            if self.lay.kv_from_local_shard:
                c.gemm(r, L + "attn.kv_local", self.n_res, 2 * m.kv_dim, H, layer=layer, phase=ph,
                       after=[dkv.get(r), c.last[r]], scale=2)
            c.gemm(r, L + "attn.qkv", n, q_cols, H, layer=layer, phase=ph, after=[dkv.get(r), c.last[r]], scale=2,
                   mem=mem)
        red = self._grad_reduce(L + "attn", layer)
        for r in c.ranks:
            c.elementwise(r, L + "attn.norm", 4 * self.n_res * H * s, layer=layer, phase=ph,
                          after=[red.get(r), c.last[r]], mem=free(r, "x"))
            leftover = sum(saved[r].values())
            if leftover:  # anything saved but not consumed above is released with the block
                self.ctx.builder.graph.ops[c.last[r]].mem += (("end", "activations", -leftover),)
        attn_w = m.attn_params / T + H
        if self.lay.kv_from_local_shard:
            attn_w += 2 * H * m.kv_dim * (1 - 1 / T)
        c.dp_sync({r: attn_w for r in c.ranks}, dict(c.last), layer=layer)


def local_params(ctx: BuildContext, lay: BlockLayout) -> float:
    """Parameters held by one rank: blocks sharded T ways (norms replicated), embeddings vocab-parallel."""
    m = ctx.model
    per_layer = (m.attn_params + m.mlp_params) / lay.tp + m.norm_params
    if lay.kv_from_local_shard:
        per_layer += 2 * m.hidden * m.kv_dim * (1 - 1 / lay.tp)
    return m.layers * per_layer + (m.embedding_params - m.hidden) / lay.tp + m.hidden


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
        elif policy == "full":
            for r in c.ranks:  # the block input is the only activation kept
                c.last[r] = c.builder.memory(r, f"L{layer}.checkpoint", [("activations", n_res * H * s)],
                                             layer=layer, deps=[c.last[r]])
            blk.forward(layer, "fwd", "none")
        else:
            blk.forward(layer, "fwd", "all" if policy == "none" else "selective")
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
        c.dp_sync({r: m.vocab * H / lay.tp for r in c.ranks}, dict(c.last), layer=-1)
        for layer in reversed(range(m.layers)):
            if policy == "full":
                blk.forward(layer, "bwd", "all", prefix="recompute.")
            blk.backward(layer)
            if policy == "full":
                for r in c.ranks:
                    c.last[r] = c.builder.memory(r, f"L{layer}.checkpoint_free",
                                                 [("activations", -n_res * H * s)], layer=layer, phase="bwd",
                                                 deps=[c.last[r]])
        for r in c.ranks:
            c.elementwise(r, "bwd.embedding", 2 * n_res * H * s, layer=-1, phase="bwd", after=[c.last[r]],
                          mem=[("end", "activations", -int(n_res * H * s))] if lay.tp > 1 else [])
        c.dp_sync({r: (m.vocab * H) / lay.tp for r in c.ranks}, dict(c.last), layer=-1)
        c.optimizer_step(params)
    return c.finish(lay.name, {"layout": {"tp": lay.tp, "sp": lay.sp, "residual": lay.residual,
                                          "kv_from_local_shard": lay.kv_from_local_shard}})

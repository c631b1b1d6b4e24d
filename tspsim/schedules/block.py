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
not kept) followed by a reduce-scatter of dK/dV. On a Σ axis the attention between the QKV projection and
W_O is the ``sp_attention`` algorithm (:mod:`tspsim.schedules.sp_attention`: the K/V all-gather above,
Ulysses all-to-all, or ring attention in :mod:`tspsim.schedules.ring_attention`), called through
``Block.attn``. With full recompute each block's forward, with its communication, runs again before its
backward (``recompute_num_layers``: only the first k blocks).

The stack (:mod:`tspsim.spec.stack`) decides the kernels: the core attention (flash or Megatron's unfused
chain, :mod:`tspsim.schedules.attention`; selective recomputation re-runs the unfused chain in backward),
the small kernels around the GEMMs (:mod:`tspsim.schedules.kernels`: bias-dropout-add, bias gradients,
norm backward passes), and, for ``satp-seq`` with ``gather-input`` (Megatron sequence parallelism), the
backward all-gather redo of the projections' sharded input, overlapped with their input-gradient GEMMs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tspsim.schedules.attention import CoreShape
from tspsim.schedules.context import BuildContext
from tspsim.schedules.kernels import (
    bias_before_activation,
    bias_grad,
    dropout_mask_bytes,
    norm_backward,
    residual_backward,
    residual_forward,
)
from tspsim.schedules.ring_attention import RingAttention
from tspsim.schedules.sp_attention import AllGatherAttention, SpAttention, UlyssesAttention

Residual = Literal["replicated", "seq", "batch"]

SAVED_ITEMS = frozenset({"x", "xn", "qkv", "scores", "o", "o_seq", "dmask_attn", "x2", "x2n", "h", "act",
                         "dmask_mlp"})
"""What a block can save for backward: norm inputs (x, x2), projection inputs (xn, x2n), Q/K/V, the unfused
core attention's tensors (scores), its output (o; o_seq: the sequence-sharded copy W_O reads, when the SP
attention moves it), the dropout masks, the MLP's pre- and post-activation."""


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
        self.saved: dict[tuple[int, int, int], list[tuple[str, int]]] = {}
        self.scores_saved: dict[tuple[int, int, int], bool] = {}
        self.mb = 0
        """Micro-batch being emitted (saved activations are kept per micro-batch, layer and rank)."""
        self.tag = ""
        """Inserted after ``L<layer>.`` in op names (``mb<k>.`` when a step has several micro-batches)."""
        self.attn = self._sp_attention()
        """The core attention between the QKV projection and W_O (:mod:`tspsim.schedules.sp_attention`)."""

    def _sp_attention(self) -> SpAttention:
        """The ``sp_attention`` algorithm on a Σ axis; the all-gather of K/V (or local attention) otherwise."""
        if self.SP < 2 or self.lay.kv_from_local_shard:
            return AllGatherAttention(self)
        kind = {"allgather": AllGatherAttention, "ring": RingAttention, "ulysses": UlyssesAttention}
        return kind[self.ctx.opts.sp_attention](self)

    # ------------------------------------------------------------------------------ groups
    def tp_group(self, rank: int) -> tuple[int, ...]:
        """The T ranks sharing ``rank``'s sequence shard (its tensor-parallel group)."""
        rs = self.ctx.layout.mp_size
        base, pos = rank - rank % rs, rank % rs
        srow = pos // self.T
        return tuple(base + srow * self.T + t for t in range(self.T))

    def seq_group(self, rank: int) -> tuple[int, ...]:
        """The Σ ranks holding ``rank``'s head shard for every sequence shard (its K/V all-gather group)."""
        rs = self.ctx.layout.mp_size
        base, pos = rank - rank % rs, rank % rs
        t = pos % self.T
        return tuple(base + s * self.T + t for s in range(self.SP))

    def key(self, layer: int, rank: int) -> tuple[int, int, int]:
        """Key of (micro-batch, layer, rank) in the saved-activation bookkeeping."""
        return self.mb, layer, rank

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
    @property
    def regathers(self) -> bool:
        """True when Megatron sequence parallelism's backward all-gather redo applies.

        That is satp-seq with gather-input, training, T > 1 and a stack with ``sp_input_regather``: the
        projections' input is then saved sharded.
        """
        c, lay = self.ctx, self.lay
        return (c.training and lay.residual == "seq" and not lay.kv_from_local_shard and self.T > 1
                and c.stack.kernels.sp_input_regather)

    @property
    def async_grad_allreduce(self) -> bool:
        """True when the input-gradient all-reduce overlaps the weight-gradient GEMM (Megatron-LM async TP all-reduce).

        That is a replicated residual, T > 1 and a stack with ``tp_async_grad_allreduce``.
        """
        return self.lay.residual == "replicated" and self.T > 1 and self.ctx.stack.kernels.tp_async_grad_allreduce

    def forward(self, layer: int, phase: str, save: str, prefix: str = "") -> None:
        """Emit one block's forward on every rank. ``save``: ``all``, ``selective`` or ``none``.

        ``selective`` is Megatron's: everything but the unfused core attention's tensors (with a flash kernel
        there are none, so it saves what ``all`` does).
        """
        c, s, n, H = self.ctx, self.s, self.n, self.H
        m = c.model
        L = f"L{layer}.{self.tag}{prefix}"
        sharded = self.lay.residual != "replicated"
        keep = {"all": SAVED_ITEMS, "selective": SAVED_ITEMS - {"scores"}, "none": frozenset()}[save]
        in_rows = self.n_res if self.regathers else n   # rows of the saved GEMM inputs (shard under the redo)
        for r in c.ranks:
            self.saved[self.key(layer, r)] = []
            self.scores_saved[self.key(layer, r)] = "scores" in keep

        def act(r: int, item: str, nbytes: float) -> list[tuple[str, str, int]]:
            """Memory events for an activation: saved for backward, or freed right after use."""
            if item in keep:
                self.saved[self.key(layer, r)].append((item, int(nbytes)))
                return [("end", "activations", int(nbytes))]
            return []

        def residual(r: int, item: str, sub: str, after: list[int | None]) -> int:
            """Bias-dropout-add of a sublayer; its dropout mask is saved (events by the kernel) when kept."""
            if item in keep and dropout_mask_bytes(c, self.n_res):
                self.saved[self.key(layer, r)].append((item, dropout_mask_bytes(c, self.n_res)))
            return residual_forward(c, r, L + sub, self.n_res, layer=layer, phase=phase, after=after,
                                    keep_mask=item in keep)

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
                            mem=act(r, "xn", in_rows * H * s) + act(r, "qkv", qkv_save) + free_in)
            if self.lay.kv_from_local_shard:
                qkv[r] = c.gemm(r, L + "attn.kv_local", self.n_res, 2 * m.kv_dim, H, layer=layer, phase=phase,
                                after=[qkv[r]])
        self.attn.forward(layer, phase, L, keep, act, qkv, recomputing=prefix.startswith("recompute"))
        out = self._row_parallel(L + "attn.out", n, H, self.q_l, layer, phase, mem=self.attn.out_mem())
        add = {r: residual(r, "dmask_attn", "attn", [out.get(r), c.last[r]]) for r in c.ranks}
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
                   after=[src2.get(r), c.last[r]], mem=act(r, "x2n", in_rows * H * s) + act(r, "h", n * width * s)
                   + free_in + tmp)
            bias_before_activation(c, r, L + "mlp.bias_add", n * width, layer=layer, phase=phase, after=[c.last[r]])
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
            residual(r, "dmask_mlp", "mlp", [out2.get(r), c.last[r]])

    def _core_shape(self) -> CoreShape:
        """The core attention of one rank: B sequences, its heads, n/B queries against all S keys."""
        return CoreShape(self.B, self.n // self.B, self.S, self.heads_l, self.ctx.model.head_dim)

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

    def _column_backward(self, name: str, cols: int, layer: int, mem: dict[int, list[tuple[str, str, int]]],
                         input_item: str, saved: dict[int, dict[str, int]],
                         after: dict[int, int | None]) -> dict[int, int | None]:
        """Backward of a column-parallel projection (QKV or fc1) and its input-gradient reduction.

        Without the redo: one GEMM pair (dgrad + wgrad) then the reduction; with the stack's async TP all-reduce
        (:attr:`async_grad_allreduce`) the input-gradient GEMM, then the all-reduce on the ``comm`` stream
        overlapping the weight-gradient GEMM. With Megatron sequence
        parallelism's redo: the saved input shard is all-gathered again on the ``comm`` stream while the
        input-gradient GEMM runs, the reduce-scatter of that gradient follows it and overlaps the
        weight-gradient GEMM, which reads the gathered input (LinearWithGradAccumulationAndAsyncCommunication).
        ``after``: per rank, an op the input gradient also waits for (the K/V gradient reduce-scatter).
        """
        c, n, H, s = self.ctx, self.n, self.H, self.s
        sub = name.rsplit(".", 1)[0]
        frees = {r: [("end", "activations", -saved[r].pop(input_item))] if input_item in saved[r] else []
                 for r in c.ranks}
        if not self.regathers and not self.async_grad_allreduce:
            for r in c.ranks:
                c.gemm(r, name, n, cols, H, layer=layer, phase="bwd", after=[after.get(r), c.last[r]], scale=2,
                       mem=mem[r] + frees[r])
            return self._grad_reduce(sub, layer)
        if not self.regathers:
            for r in c.ranks:
                c.gemm(r, name + ".dgrad", n, H, cols, layer=layer, phase="bwd", after=[after.get(r), c.last[r]],
                       mem=mem[r])
            red = self._grad_reduce(sub, layer)
            for r in c.ranks:
                c.gemm(r, name + ".wgrad", cols, H, n, layer=layer, phase="bwd", after=[c.last[r]], mem=frees[r],
                       weight_grad=True)
            return red
        gathered = self.coll("all_gather", self.tp_group, n * H * s, sub + ".input_all_gather_redo", stream="comm",
                             layer=layer, phase="bwd", deps={r: c.last[r] for r in c.ranks}, mem_start=n * H * s)
        for r in c.ranks:
            c.gemm(r, name + ".dgrad", n, H, cols, layer=layer, phase="bwd", after=[after.get(r), c.last[r]],
                   mem=mem[r])
        red = self._grad_reduce(sub, layer)
        for r in c.ranks:
            c.gemm(r, name + ".wgrad", cols, H, n, layer=layer, phase="bwd", after=[gathered.get(r), c.last[r]],
                   mem=frees[r] + [("end", "comm_buffers", -n * H * s)], weight_grad=True)
        return red

    def backward(self, layer: int) -> None:
        """Emit one block's backward (transposed communication, 2× GEMM FLOPs, the core attention's backward)."""
        c, s, n, H = self.ctx, self.s, self.n, self.H
        m = c.model
        L = f"L{layer}.{self.tag}bwd."
        ph = "bwd"
        sharded = self.lay.residual != "replicated"
        saved = {r: dict(self.saved.pop(self.key(layer, r), [])) for r in c.ranks}

        def free(r: int, *items: str) -> list[tuple[str, str, int]]:
            return [("end", "activations", -saved[r].pop(i)) for i in items if i in saved[r]]

        def branch_grad(sub: str, mask: str) -> dict[int, int | None]:
            """Dropout backward (and row-parallel bias gradient) on the rank's residual rows.

            Then the gather of the sharded output gradient (transpose of the reduce-scatter).
            """
            for r in c.ranks:
                residual_backward(c, r, L + sub, self.n_res, layer=layer, after=[c.last[r]],
                                  mask_saved=saved[r].pop(mask, 0))
            src: dict[int, int | None] = {r: c.last[r] for r in c.ranks}
            if sharded:
                src = self.coll("all_gather", self.tp_group, n * H * s, L + sub + ".grad_all_gather", stream="comm",
                                layer=layer, phase=ph, deps=src, mem_start=n * H * s)
            return src

        width = (2 if m.gated_mlp else 1) * self.i_l
        fr = [("end", "comm_buffers", -n * H * s)] if sharded else []
        # ---- MLP backward
        src = branch_grad("mlp", "dmask_mlp")
        fc1 = L + ("mlp.gate_up" if m.gated_mlp else "mlp.fc1")
        for r in c.ranks:
            c.gemm(r, L + ("mlp.down" if m.gated_mlp else "mlp.fc2"), n, H, self.i_l, layer=layer, phase=ph,
                   after=[src.get(r), c.last[r]], scale=2, mem=free(r, "act") + fr)
            c.elementwise(r, L + "mlp.act", 3 * n * width * s, layer=layer, phase=ph, after=[c.last[r]],
                          mem=free(r, "h"))
            bias_grad(c, r, fc1 + ".bias_grad", n * width, layer=layer, after=[c.last[r]])
        red = self._column_backward(fc1, width, layer, {r: [] for r in c.ranks}, "x2n", saved, after={})
        for r in c.ranks:
            norm_backward(c, r, L + "mlp", self.n_res, layer=layer, after=[red.get(r), c.last[r]], mem=free(r, "x2"))
        c.dp_sync({r: self._mlp_grad_elements() for r in c.ranks}, dict(c.last), layer=layer)
        # ---- attention backward
        src = branch_grad("attn", "dmask_attn")
        for r in c.ranks:
            c.gemm(r, L + "attn.out", n, H, self.q_l, layer=layer, phase=ph, after=[src.get(r), c.last[r]], scale=2,
                   mem=fr + free(r, "o_seq"))
        dkv = self.attn.backward(layer, L, free)
        q_cols = self.q_l if self.lay.kv_from_local_shard else self.q_l + 2 * self.kv_l
        qkv_mem = {}
        for r in c.ranks:
            mem = free(r, "qkv") + self.attn.qkv_grad_mem(r)
            if self.lay.kv_from_local_shard:
                c.gemm(r, L + "attn.kv_local", self.n_res, 2 * m.kv_dim, H, layer=layer, phase=ph,
                       after=[dkv.get(r), c.last[r]], scale=2)
            bias_grad(c, r, L + "attn.qkv.bias_grad", n * q_cols, layer=layer, after=[dkv.get(r), c.last[r]])
            qkv_mem[r] = mem
        red = self._column_backward(L + "attn.qkv", q_cols, layer, qkv_mem, "xn", saved, after=dkv)
        for r in c.ranks:
            norm_backward(c, r, L + "attn", self.n_res, layer=layer, after=[red.get(r), c.last[r]], mem=free(r, "x"))
            leftover = sum(saved[r].values())
            if leftover:  # anything saved but not consumed above is released with the block
                self.ctx.builder.graph.ops[c.last[r]].mem += (("end", "activations", -leftover),)
        c.dp_sync({r: self._attn_grad_elements() for r in c.ranks}, dict(c.last), layer=layer)

    def _mlp_grad_elements(self) -> float:
        """Gradient elements of the MLP sublayer on one rank: its weight and bias shards, the norm (and row bias)."""
        m, T = self.ctx.model, self.T
        col_bias = (2 if m.gated_mlp else 1) * m.ffn_hidden if m.biases else 0
        return (m.mlp_params + col_bias) / T + m.norm_params / 2 + m.row_bias_params / 2

    def _attn_grad_elements(self) -> float:
        """Gradient elements of the attention sublayer on one rank (plus the K/V weights kept whole by gather-kv)."""
        m, T = self.ctx.model, self.T
        col_bias = m.q_dim + 2 * m.kv_dim if m.biases else 0
        out = (m.attn_params + col_bias) / T + m.norm_params / 2 + m.row_bias_params / 2
        if self.lay.kv_from_local_shard:
            out += 2 * m.hidden * m.kv_dim * (1 - 1 / T)
        return out


def local_params(ctx: BuildContext, lay: BlockLayout) -> float:
    """Parameters held by one rank.

    Blocks are sharded T ways (norms and row biases replicated), embeddings vocab-parallel (position
    embeddings and the final norm replicated).
    """
    m = ctx.model
    per_layer = m.layer_shard_params(lay.tp)
    if lay.kv_from_local_shard:
        per_layer += 2 * m.hidden * m.kv_dim * (1 - 1 / lay.tp)
    return m.layers * per_layer + m.word_embedding_params / lay.tp + m.replicated_embedding_params

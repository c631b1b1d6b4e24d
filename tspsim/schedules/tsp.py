"""``tsp`` — Zyphra's folded Tensor + Sequence Parallelism on one mesh axis of size D (tsp.md).

Rank p holds tokens X_p (B·S/D, zig-zag: chunks p and 2D−1−p) and owns weight shard p of every layer
(head shard p of attention, column/row shard p of the MLP). Per block, forward (tsp.md §2, §3)::

    attention — broadcast loop, one iteration per weight owner r:
        broadcast [W_q,r | W_k,r | W_v,r | W_o,r] from r            (stream "weights")
        Q, K, V = X_p · W_{q,k,v},r                                  [n × (H_q + 2H_kv)/D]
        K_r, V_r = all_gather over the D sequence shards (packed)    (stream "kv")
        A = causal_attention(Q, K_r, V_r);  Y_p += A · W_o,r          (no all-reduce)
    MLP — ring of weight shards, D steps, D−1 point-to-point transfers per rank:
        Z_p += (silu(X_p W_gate,k) ⊙ X_p W_up,k) W_down,k   for the shard k held at step j
        send shard k to p+1 while receiving the next from p−1          (streams "weights_tx"/"weights")

``weight_buffers`` shards are in flight (default 2: the broadcast or ring transfer of shard r+1
overlaps compute on shard r). ``kv_buckets`` splits each head shard's K/V gather.

Backward (tsp.md §4, all assumed, documented in README): under full recompute each block's forward
(broadcasts, ring, gathers) runs again; then the MLP ring runs again for dX, and each shard's partial
weight gradient travels the ring as an accumulator that ends at its owner (a ring reduce-scatter:
D−1 transfers per rank, ``tsp_grad_return=ring``); attention re-broadcasts each shard, re-gathers its
K/V, reduce-scatters dK/dV back to the sequence owners and reduces the shard's weight gradient to its
owner r. No gradient all-reduce inside the TSP group; the DP axis syncs the owned shards.

The embedding and LM head are vocab-parallel over the axis and handled like the MLP: their shards
ride the ring, so every rank meets every vocabulary shard with its own tokens.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet

from tspsim.schedules import kernels
from tspsim.schedules.attention import CoreShape, core_backward, core_forward
from tspsim.schedules.tsp_base import Mem, TspBase

KEEP_ALL = frozenset({"x", "qkv", "scores", "o", "dmask_attn", "x2", "h", "act", "dmask_mlp"})
"""What a TSP block can save for backward (as the standard block; the projection inputs are the norm outputs
of the rank's own tokens and are not kept separately)."""


class TspBuilder(TspBase):
    """Emits TSP's attention broadcast loop, MLP weight ring and their backward on every simulated rank."""

    def _residual(self, r: int, L: str, layer: int, phase: str, keep: AbstractSet[str], sub: str) -> None:
        """Bias-dropout-add of a sublayer on the rank's own tokens; the dropout mask is saved when kept."""
        mask = kernels.dropout_mask_bytes(self.c, self.n)
        if f"dmask_{sub}" in keep and mask:
            self._save(layer, r, f"dmask_{sub}", mask)
        kernels.residual_forward(self.c, r, L + sub, self.n, layer=layer, phase=phase, after=[self.c.last[r]],
                                 keep_mask=f"dmask_{sub}" in keep)

    # ------------------------------------------------------------------------------ attention
    def attention_fwd(self, layer: int, phase: str, keep: AbstractSet[str], prefix: str = "") -> None:
        """One block's attention: the broadcast loop over weight owners with K/V all-gathers (tsp.md §2)."""
        c, n, s, H, D = self.c, self.n, self.s, self.H, self.D
        m = c.model
        L = f"L{layer}.{self.tag}{prefix}"
        w = c.opts.weight_buffers
        shard_bytes = self.attn_shard * s
        for r in c.ranks:
            mem = [("end", "activations", n * H * s)] if "x" in keep else []
            if "x" in keep:
                self._save(layer, r, "x", n * H * s)
            c.elementwise(r, L + "attn.norm", 3 * n * H * s, layer=layer, phase=phase, after=[c.last[r]], mem=mem)
        outs: dict[int, list[int]] = {r: [] for r in c.ranks}
        kv_bytes = 2.0 * self.B * self.S * self.kv_l * s
        buckets = c.opts.kv_buckets

        def gather(nbytes: float, label: str, deps: dict[int, list[int | None]]) -> list[dict[int, int]]:
            """Packed K+V all-gather, or separate K and V gathers when ``pack_kv`` is off."""
            parts = [("", nbytes)] if c.opts.pack_kv else [(".k", nbytes / 2), (".v", nbytes / 2)]
            return [self.collective("all_gather", nb, L + label + sfx, stream="kv", layer=layer, phase=phase,
                                    deps=deps, mem={r: [("start", "comm_buffers", int(nb))] for r in c.ranks})
                    for sfx, nb in parts]

        def project(i: int) -> list[list[dict[int, int]]]:
            """Broadcast shard i, project Q/K/V with it, launch its K/V all-gather(s)."""
            deps = {r: [outs[r][i - w]] if i >= w else [self.prev_attn_done.get(r)] for r in c.ranks}
            mem = {r: [("start", "comm_buffers", int(shard_bytes))] for r in c.ranks if self.owner(r, i) != r}
            bc = self.collective("broadcast", shard_bytes, L + f"attn.weights_broadcast[r={i}]", stream="weights",
                                 layer=layer, phase=phase, deps=deps, root_index=i, mem=mem)
            qkv = {}
            for r in c.ranks:
                mem2: Mem = []
                if "qkv" in keep:
                    b = n * (self.q_l + 2 * self.kv_l) * s
                    mem2.append(("end", "activations", b))
                    self._save(layer, r, "qkv", b)
                qkv[r] = c.gemm(r, L + f"attn.qkv[r={i}]", n, self.q_l + 2 * self.kv_l, H, layer=layer, phase=phase,
                                after=[bc.get(r), c.last[r]], mem=mem2)
            gathers = []
            for bkt in range(buckets):
                label = f"attn.kv_all_gather[r={i}" + (f",b={bkt}]" if buckets > 1 else "]")
                gathers.append(gather(kv_bytes / buckets, label, {r: [qkv[r]] for r in c.ranks}))
            return gathers

        def attend(i: int, gathers: list[list[dict[int, int]]]) -> None:
            """Attention of the own queries against shard i's gathered K/V, then the W_o,i projection."""
            nb = kv_bytes / buckets
            shape = CoreShape(self.B, self.S / D, self.S, self.heads_l / buckets, m.head_dim)
            flash = c.stack.attention.kernel == "flash"
            for bkt, kv in enumerate(gathers):
                for r in c.ranks:  # zig-zag chunk order → token order (tsp.md §2), in place
                    c.elementwise(r, L + f"attn.kv_zigzag_reorder[r={i}]", 2 * nb, layer=layer, phase=phase,
                                  after=[*(k.get(r) for k in kv), c.last[r]])
                for r in c.ranks:
                    mem3: Mem = [("end", "comm_buffers", -int(nb))]
                    if "o" in keep and bkt == buckets - 1:
                        b = n * self.q_l * s + (n * self.heads_l * 4 if flash else 0)
                        mem3.append(("end", "activations", b))
                        self._save(layer, r, "o", b)
                    core_forward(c, r, L + f"attn.core[r={i}]", shape, layer=layer, phase=phase,
                                 after=[*(k.get(r) for k in kv), c.last[r]],
                                 flash_bytes=(n * self.q_l * 2 / buckets + nb / s) * s,
                                 save_scores="scores" in keep, mem=mem3)
            for r in c.ranks:
                free = [("end", "comm_buffers", -int(shard_bytes))] if self.owner(r, i) != r else []
                outs[r].append(c.gemm(r, L + f"attn.out[r={i}]", n, H, self.q_l, layer=layer, phase=phase,
                                      after=[c.last[r]], mem=free))

        # With lookahead (and ≥ 2 weight buffers) shard i+1 is projected and its K/V gathered while
        # shard i's attention runs; otherwise each shard's attention waits for its own gather.
        lookahead = c.opts.tsp_kv_lookahead and w >= 2
        pending = project(0)
        for i in range(D):
            nxt = project(i + 1) if lookahead and i + 1 < D else None
            attend(i, pending)
            if i + 1 < D:
                pending = nxt if nxt is not None else project(i + 1)
        self.scores_saved[(self.mb, layer)] = "scores" in keep
        for r in c.ranks:
            self.prev_attn_done[r] = outs[r][-1]
            self._residual(r, L, layer, phase, keep, "attn")

    # ------------------------------------------------------------------------------ MLP ring
    def mlp_fwd(self, layer: int, phase: str, keep: AbstractSet[str], prefix: str = "") -> None:
        """One block's gated MLP: D steps over the weight shards circulating the ring (tsp.md §3)."""
        c, n, s, H, D = self.c, self.n, self.s, self.H, self.D
        m = c.model
        L = f"L{layer}.{self.tag}{prefix}"
        w = c.opts.weight_buffers
        width = (2 if m.gated_mlp else 1) * self.i_l
        shard_bytes = self.mlp_shard * s
        norm = {}
        for r in c.ranks:
            mem = [("end", "activations", n * H * s)] if "x2" in keep else []
            if "x2" in keep:
                self._save(layer, r, "x2", n * H * s)
            norm[r] = c.elementwise(r, L + "mlp.norm", 3 * n * H * s, layer=layer, phase=phase, after=[c.last[r]],
                                    mem=mem)
        downs: dict[int, list[int]] = {r: [] for r in c.ranks}
        recv: dict[int, int] = {}
        for j in range(D):
            def move(j: int = j, recv: dict[int, int] = recv) -> dict[int, int]:
                return self.move_shard(j, recv, downs, norm, shard_bytes, L + "mlp.weights_ring", layer, phase)

            # With ≥ 2 buffers the next shard moves while step j computes; with one it waits for step j.
            nxt = move() if w >= 2 else {}
            for r in c.ranks:
                after = [c.last[r], recv.get(r) if j > 0 else None]
                mem: Mem = []
                tmp: Mem = []
                if "h" in keep:
                    mem.append(("end", "activations", n * width * s))
                    self._save(layer, r, "h", n * width * s)
                else:
                    tmp = [("start", "temporary", n * width * s)]
                c.gemm(r, L + f"mlp.gate_up[step {j}]", n, width, H, layer=layer, phase=phase, after=after,
                       mem=mem + tmp)
                kernels.bias_before_activation(c, r, L + f"mlp.bias_add[step {j}]", n * width, layer=layer, phase=phase,
                                               after=[c.last[r]])
                amem: Mem = []
                if "act" in keep:
                    amem.append(("end", "activations", n * self.i_l * s))
                    self._save(layer, r, "act", n * self.i_l * s)
                c.elementwise(r, L + f"mlp.act[step {j}]", (width + self.i_l) * n * s, layer=layer, phase=phase,
                              after=[c.last[r]], mem=amem)
                free: Mem = [("end", "temporary", -n * width * s)] if "h" not in keep else []
                if j > 0:
                    free.append(("end", "comm_buffers", -int(shard_bytes)))
                downs[r].append(c.gemm(r, L + f"mlp.down[step {j}]", n, H, self.i_l, layer=layer, phase=phase,
                                       after=[c.last[r]], mem=free))
            if w < 2:
                nxt = move()
            recv = nxt
        for r in c.ranks:
            self._residual(r, L, layer, phase, keep, "mlp")

    # ------------------------------------------------------------------------------ backward
    def mlp_bwd(self, layer: int) -> dict[int, int | None]:
        """MLP backward: ring again for dX; partial gradients ride the ring to their owners."""
        c, n, s, H, D = self.c, self.n, self.s, self.H, self.D
        m = c.model
        L = f"L{layer}.{self.tag}bwd."
        w = c.opts.weight_buffers
        width = (2 if m.gated_mlp else 1) * self.i_l
        shard_bytes = self.mlp_shard * s
        grad_bytes = self.mlp_shard * c.opts.grad_bytes
        saved = {r: self.saved.setdefault(self.key(layer, r), {}) for r in c.ranks}
        orig = {r: self.orig.setdefault(self.key(layer, r), dict(saved[r])) for r in c.ranks}
        for r in c.ranks:
            kernels.residual_backward(c, r, L + "mlp", n, layer=layer, after=[c.last[r]],
                                      mask_saved=saved[r].pop("dmask_mlp", 0))
        start = {r: c.last[r] for r in c.ranks}
        downs: dict[int, list[int]] = {r: [] for r in c.ranks}
        recv: dict[int, int] = {}
        acc_recv: dict[int, int] = {}
        grad_done: dict[int, int | None] = {r: None for r in c.ranks}
        ring_grads = c.opts.tsp_grad_return == "ring"
        for j in range(D):
            def move(j: int = j, recv: dict[int, int] = recv) -> dict[int, int]:
                return self.move_shard(j, recv, downs, start, shard_bytes, L + "mlp.weights_ring", layer, "bwd")

            nxt = move() if w >= 2 else {}
            steps = {}
            for r in c.ranks:
                free: Mem = [("end", "comm_buffers", -int(shard_bytes))] if j > 0 else []
                c.gemm(r, L + f"mlp.down[step {j}]", n, H, self.i_l, layer=layer, phase="bwd",
                       after=[c.last[r], recv.get(r) if j > 0 else None], scale=2,
                       mem=self._release(saved[r], orig[r], "act", j, D))
                c.elementwise(r, L + f"mlp.act[step {j}]", 3 * n * width * s, layer=layer, phase="bwd",
                              after=[c.last[r]], mem=self._release(saved[r], orig[r], "h", j, D))
                kernels.bias_grad(c, r, L + f"mlp.bias_grad[step {j}]", n * width, layer=layer, after=[c.last[r]])
                steps[r] = c.gemm(r, L + f"mlp.gate_up[step {j}]", n, width, H, layer=layer, phase="bwd",
                                  after=[c.last[r]], scale=2, mem=free)
                downs[r].append(steps[r])
            if ring_grads and j >= 1:
                # accumulator for the shard computed at step j started at step 1 one rank after its owner
                send_deps = {r: [steps[r], acc_recv.get(r)] for r in c.ranks}
                acc_recv = self.ring(j, grad_bytes, L + "mlp.grad_ring", layer=layer, phase="bwd",
                                     send_deps=send_deps, recv_deps={r: [steps[r]] for r in c.ranks})
                for r, op in acc_recv.items():
                    grad_done[r] = op
            if w < 2:
                nxt = move()
            recv = nxt
        if not ring_grads:
            for k in range(D):
                red = self.collective("reduce", grad_bytes, L + f"mlp.grad_reduce[r={k}]", stream="grads",
                                      layer=layer, phase="bwd", deps={r: [c.last[r]] for r in c.ranks}, root_index=k)
                for r, op in red.items():
                    grad_done[r] = op
        for r in c.ranks:
            kernels.norm_backward(c, r, L + "mlp", n, layer=layer, after=[c.last[r]],
                                  mem=self._free_all(saved[r], "x2"))
        return grad_done

    def attention_bwd(self, layer: int) -> dict[int, int | None]:
        """Re-broadcast each shard, re-gather its K/V, reduce-scatter dK/dV, reduce dW to the owner."""
        c, n, s, H, D = self.c, self.n, self.s, self.H, self.D
        m = c.model
        L = f"L{layer}.{self.tag}bwd."
        w = c.opts.weight_buffers
        shard_bytes = self.attn_shard * s
        kv_bytes = 2.0 * self.B * self.S * self.kv_l * s
        saved = {r: self.saved.setdefault(self.key(layer, r), {}) for r in c.ranks}
        orig = {r: self.orig.setdefault(self.key(layer, r), dict(saved[r])) for r in c.ranks}
        for r in c.ranks:
            kernels.residual_backward(c, r, L + "attn", n, layer=layer, after=[c.last[r]],
                                      mask_saved=saved[r].pop("dmask_attn", 0))
        start = {r: c.last[r] for r in c.ranks}
        uses: dict[int, list[int]] = {r: [] for r in c.ranks}
        shape = CoreShape(self.B, self.S / D, self.S, self.heads_l, m.head_dim)
        grad_done: dict[int, int | None] = {r: None for r in c.ranks}
        def fetch(i: int) -> tuple[dict[int, int], list[dict[int, int]]]:
            """Broadcast shard i again and re-gather its K/V (they were not kept)."""
            deps = {r: [uses[r][i - w]] if i >= w else [start[r]] for r in c.ranks}
            mem = {r: [("start", "comm_buffers", int(shard_bytes))] for r in c.ranks if self.owner(r, i) != r}
            bc = self.collective("broadcast", shard_bytes, L + f"attn.weights_broadcast[r={i}]", stream="weights",
                                 layer=layer, phase="bwd", deps=deps, root_index=i, mem=mem)
            parts = [("", kv_bytes)] if c.opts.pack_kv else [(".k", kv_bytes / 2), (".v", kv_bytes / 2)]
            kv = [self.collective("all_gather", nb, L + f"attn.kv_all_gather[r={i}]{sfx}", stream="kv",
                                  layer=layer, phase="bwd", deps={r: [bc.get(r)] for r in c.ranks},
                                  mem={r: [("start", "comm_buffers", int(nb))] for r in c.ranks})
                  for sfx, nb in parts]
            return bc, kv

        lookahead = c.opts.tsp_kv_lookahead and w >= 2
        pending = fetch(0)
        for i in range(D):
            bc, kv = pending
            nxt = fetch(i + 1) if lookahead and i + 1 < D else None
            for r in c.ranks:
                c.gemm(r, L + f"attn.out[r={i}]", n, H, self.q_l, layer=layer, phase="bwd",
                       after=[bc.get(r), c.last[r]], scale=2)
            for r in c.ranks:
                c.elementwise(r, L + f"attn.kv_zigzag_reorder[r={i}]", 2 * kv_bytes, layer=layer, phase="bwd",
                              after=[*(k.get(r) for k in kv), c.last[r]])
            for r in c.ranks:
                core_backward(c, r, L + f"attn.core[r={i}]", shape, layer=layer,
                              after=[*(k.get(r) for k in kv), c.last[r]],
                              flash_bytes=(n * self.q_l * 4 + 2 * kv_bytes / s) * s,
                              scores_saved=self.scores_saved.get((self.mb, layer), False),
                              mem=[("end", "comm_buffers", -int(kv_bytes)), ("end", "temporary", int(kv_bytes))]
                              + self._release(saved[r], orig[r], "o", i, D))
            rs = self.collective("reduce_scatter", kv_bytes, L + f"attn.kv_grad_reduce_scatter[r={i}]", stream="kv",
                                 layer=layer, phase="bwd", deps={r: [c.last[r]] for r in c.ranks})
            qkv = {}
            for r in c.ranks:
                free: Mem = [("end", "temporary", -int(kv_bytes))]
                if self.owner(r, i) != r:
                    free.append(("end", "comm_buffers", -int(shard_bytes)))
                kernels.bias_grad(c, r, L + f"attn.qkv.bias_grad[r={i}]", n * (self.q_l + 2 * self.kv_l), layer=layer,
                                  after=[rs.get(r), c.last[r]])
                qkv[r] = c.gemm(r, L + f"attn.qkv[r={i}]", n, self.q_l + 2 * self.kv_l, H, layer=layer, phase="bwd",
                                after=[rs.get(r), c.last[r]], scale=2,
                                mem=free + self._release(saved[r], orig[r], "qkv", i, D))
                uses[r].append(qkv[r])
            red = self.collective("reduce", self.attn_shard * c.opts.grad_bytes, L + f"attn.grad_reduce[r={i}]",
                                  stream="grads", layer=layer, phase="bwd", deps={r: [qkv[r]] for r in c.ranks},
                                  root_index=i)
            for r in c.ranks:
                if self.owner(r, i) == r:
                    grad_done[r] = red.get(r)
            if i + 1 < D:
                pending = nxt if nxt is not None else fetch(i + 1)
        for r in c.ranks:
            kernels.norm_backward(c, r, L + "attn", n, layer=layer, after=[c.last[r]],
                                  mem=self._free_all(saved[r], "x"))
            left = sum(saved[r].values())
            if left:
                c.builder.graph.ops[c.last[r]].mem += (("end", "activations", -int(left)),)
            self.saved.pop(self.key(layer, r), None)
            self.orig.pop(self.key(layer, r), None)
        return grad_done

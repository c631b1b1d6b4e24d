"""Attention over a sequence-sharded axis as the frameworks run it: all-gather K/V, Ulysses all-to-all (and ring).

The standard block (:mod:`tspsim.schedules.block`) shards tokens Σ = p ways (zig-zag: rank i holds chunks i and
2p−1−i of 2p) on the ``sp`` axis and on the Σ axis of ``tp+sp``; each rank holds the H_q/T query and H_kv/T KV
heads of its TP shard. A causal query needs the keys and values of every earlier token, which live on other
ranks. Three algorithms (``--option sp_attention=…``), with B the micro-batch, S the sequence, s bytes per
element, H_q = q_dim/T and H_kv = kv_dim/T the widths of the rank's heads, per rank and block, forward:

``allgather`` (Llama 3 context parallelism; :class:`AllGatherAttention`)
    one packed all-gather of K and V over the Σ shards, (p−1)/p · 2·B·S·H_kv·s bytes sent; reorder the gathered
    zig-zag chunks into token order (a memory-bound copy); attend n = B·S/p queries against all S keys (causal:
    half the scores). Gathered K/V (2·B·S·H_kv·s) are kept until backward (``sp_keep_gathered_kv``) or
    gathered again there; backward reduce-scatters dK/dV ((p−1)/p · 2·B·S·H_kv·s). Head bucketing
    (``sp_kv_buckets`` = k): k gathers of H_kv/k heads, bucket b+1 gathered while bucket b attends, at most
    two buckets in flight (2·B·S·H_kv·s/k each when not kept). The same class runs satp-seq's ``gather-kv``
    exchange over the TP group (no Σ axis).

``ulysses`` (DeepSpeed Ulysses; :class:`UlyssesAttention`)
    all-to-all Q, K and V from sequence-sharded to head-sharded (each rank receives the whole sequence of
    H_q/p query and H_kv/p KV heads), attend the full causal sequence for those heads, all-to-all the output
    back: 4 all-to-alls, (p−1)/p² · B·S·(2·H_q + 2·H_kv)·s bytes sent. Heads of the TP shard must divide by
    p. The zig-zag chunks arrive in chunk order and are reordered after the Q/K/V all-to-alls and before the
    output one (TransformerEngine's a2a context parallelism; DeepSpeed's contiguous shards skip the copies).
    Memory: the received full-sequence Q/K/V of the local heads (B·S·(H_q + 2·H_kv)/p·s) until attention
    ends, and the sequence-sharded output (saved for W_O's backward, or freed after it). Backward transposes:
    all-to-all dO to heads, attention backward, all-to-all dQ, dK, dV back (4 all-to-alls, same bytes).

``ring`` (Megatron-Core / TransformerEngine context parallelism; :mod:`tspsim.schedules.ring_attention`)
    K/V blocks travel the ring with point-to-point sends while each rank attends to the block it holds and
    merges the partial outputs by log-sum-exp; 2·(p−1)/p · B·S·H_kv·s bytes sent (each rank passes every
    block on). See :mod:`tspsim.schedules.ring_attention`.

Every algorithm computes the same attention FLOPs per rank (zig-zag balances the causal mask), which the tests
check. The stack's attention kernel (flash or unfused, :mod:`tspsim.schedules.attention`) runs the core
attention of all-gather and Ulysses; ring attention needs a flash kernel (refused otherwise, see
:class:`tspsim.spec.assumptions.Assumptions`). Prefill runs the same forward (the KV cache keeps the rank's
own sequence shard in every case); decode steps combine partial attention over the sequence-sharded cache for
all three (:mod:`tspsim.schedules.decode`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from tspsim.schedules.attention import CoreShape, core_backward, core_forward
from tspsim.schedules.context import BuildContext

Mem = list[tuple[str, str, int]]
Group = Callable[[int], tuple[int, ...]]
Act = Callable[[int, str, float], Mem]
Free = Callable[..., Mem]


class BlockView(Protocol):
    """What an SP attention algorithm reads from the standard block (:class:`tspsim.schedules.block.Block`)."""

    ctx: BuildContext
    B: int
    S: int
    n: int
    SP: int
    q_l: int
    kv_l: int
    heads_l: int
    s: int
    scores_saved: dict[tuple[int, int, int], bool]

    def key(self, layer: int, rank: int) -> tuple[int, int, int]: ...  # noqa: D102
    def seq_group(self, rank: int) -> tuple[int, ...]: ...  # noqa: D102
    def coll(self, kind: str, group_of: Group, nbytes: float, name: str, *, stream: str, layer: int,  # noqa: D102
             phase: str, deps: dict[int, int | None], mem_start: int = 0,
             mem_cat: str = "comm_buffers") -> dict[int, int]: ...
    def _kv_group(self) -> Group | None: ...
    def _kv_bytes(self) -> float: ...
    def _keeps_kv(self) -> bool: ...
    def _zigzag(self) -> bool: ...
    def _core_shape(self) -> CoreShape: ...
    def _kv_gather(self, group_of: Group, nbytes: float, name: str, layer: int, phase: str,  # noqa: D102
                   after: dict[int, int]) -> dict[int, int]: ...


class SpAttention:
    """One block's core attention between the QKV projection and W_O, forward and backward, on every rank."""

    name = ""
    """The ``sp_attention`` value."""

    def __init__(self, blk: BlockView) -> None:
        self.blk = blk
        self.c = blk.ctx

    def forward(self, layer: int, phase: str, L: str, keep: frozenset[str], act: Act, qkv: dict[int, int],
                recomputing: bool) -> None:
        """Emit the attention after the QKV GEMMs ``qkv``; leaves ``ctx.last`` where W_O may start.

        ``act(rank, item, bytes)`` registers a saved activation and returns its memory events.
        """
        raise NotImplementedError

    def out_mem(self) -> dict[int, Mem] | None:
        """Memory events of the W_O GEMM (its input, when this algorithm owns it)."""
        return None

    def backward(self, layer: int, L: str, free: Free) -> dict[int, int | None]:
        """Emit the attention backward after W_O's; returns the ops the QKV backward waits for.

        ``free(rank, *items)`` releases saved activations.
        """
        raise NotImplementedError

    def qkv_grad_mem(self, rank: int) -> Mem:
        """Memory the QKV backward releases (the Q/K/V gradients this algorithm produced)."""
        return []

    def scores_saved(self, r: int, layer: int) -> bool:
        """Whether the unfused scores of (layer, rank) were saved (a flash kernel ignores it)."""
        return self.blk.scores_saved.get(self.blk.key(layer, r), False)


# ---------------------------------------------------------------------------------- all-gather
class AllGatherAttention(SpAttention):
    """Today's SP: all-gather of K/V (optionally in head buckets), attention, reduce-scatter of dK/dV."""

    name = "allgather"

    @property
    def buckets(self) -> int:
        """Head buckets of the Σ-axis gather (``sp_kv_buckets``; 1 on satp-seq's TP-group gather)."""
        b = self.blk
        return self.c.opts.sp_kv_buckets if b._kv_group() is not None and b._zigzag() else 1

    def forward(self, layer: int, phase: str, L: str, keep: frozenset[str], act: Act, qkv: dict[int, int],
                recomputing: bool) -> None:
        """All-gather K/V (unless kept from the forward pass), reorder zig-zag chunks, attend."""
        blk, c = self.blk, self.c
        if self.buckets > 1:
            return self._forward_buckets(layer, phase, L, keep, act, qkv, recomputing)
        kv_ready = qkv
        gathered_kv = 0.0
        kv_group = blk._kv_group()
        keep_kv = blk._keeps_kv()
        if kv_group is not None and not (keep_kv and recomputing):
            gathered_kv = blk._kv_bytes()
            kv_ready = blk._kv_gather(kv_group, gathered_kv, L + "attn.kv_all_gather", layer, phase, qkv)
            if blk._zigzag():
                kv_ready = {r: c.elementwise(r, L + "attn.kv_zigzag_reorder", 2 * gathered_kv, layer=layer,
                                             phase=phase, after=[kv_ready.get(r), c.last[r]]) for r in c.ranks}
        shape = blk._core_shape()
        flash = c.stack.attention.kernel == "flash"
        n, s = blk.n, blk.s
        for r in c.ranks:
            o_bytes = n * blk.q_l * s + (n * blk.heads_l * 4 if flash else 0)   # output (+ fp32 log-sum-exp)
            free_kv = [("end", "comm_buffers", -int(gathered_kv))] if gathered_kv else []
            if gathered_kv and keep_kv:  # kept for the backward pass of this block
                free_kv.append(("end", "activations", int(gathered_kv)))
            core_forward(c, r, L + "attn.core", shape, layer=layer, phase=phase, after=[kv_ready.get(r), c.last[r]],
                         flash_bytes=(n * blk.q_l * 2 + 2 * blk.S * blk.B * blk.kv_l) * s,
                         save_scores="scores" in keep, mem=act(r, "o", o_bytes) + free_kv)
        return None

    def _bucket_shape(self) -> CoreShape:
        sh, k = self.blk._core_shape(), self.buckets
        return CoreShape(sh.batch, sh.q_tokens, sh.kv_tokens, sh.heads / k, sh.head_dim)

    def _forward_buckets(self, layer: int, phase: str, L: str, keep: frozenset[str], act: Act, qkv: dict[int, int],
                         recomputing: bool) -> None:
        """k gathers of H_kv/k heads; bucket b waits for bucket b−2's attention (two buffers)."""
        blk, c, k = self.blk, self.c, self.buckets
        keep_kv = blk._keeps_kv()
        nb = blk._kv_bytes() / k
        n, s = blk.n, blk.s
        flash = c.stack.attention.kernel == "flash"
        cores: list[dict[int, int]] = []
        for i in range(k):
            ready: dict[int, int | None] = dict(qkv)
            gathered = 0.0
            if not (keep_kv and recomputing):
                gathered = nb
                deps = qkv if i < 2 else cores[i - 2]   # two buffers: bucket i reuses bucket i−2's
                got = blk._kv_gather(blk.seq_group, nb, L + f"attn.kv_all_gather[b={i}]", layer, phase, deps)
                ready = {r: c.elementwise(r, L + f"attn.kv_zigzag_reorder[b={i}]", 2 * nb, layer=layer, phase=phase,
                                          after=[got.get(r), c.last[r]]) for r in c.ranks}
            core = {}
            for r in c.ranks:
                mem = [("end", "comm_buffers", -int(gathered))] if gathered else []
                if gathered and keep_kv:
                    mem.append(("end", "activations", int(gathered)))
                if i == k - 1:
                    mem = act(r, "o", n * blk.q_l * s + (n * blk.heads_l * 4 if flash else 0)) + mem
                core[r] = core_forward(c, r, L + f"attn.core[b={i}]", self._bucket_shape(), layer=layer, phase=phase,
                                       after=[ready.get(r), c.last[r]],
                                       flash_bytes=(n * blk.q_l * 2 + 2 * blk.S * blk.B * blk.kv_l) * s / k,
                                       save_scores="scores" in keep, mem=mem)
            cores.append(core)
        return None

    def backward(self, layer: int, L: str, free: Free) -> dict[int, int | None]:
        """Gather K/V again (unless kept), attention backward, reduce-scatter dK/dV to the sequence owners.

        With head buckets the gather of bucket b+2 is issued once bucket b's backward has freed its buffer, ahead
        of bucket b's reduce-scatter on the ``kv`` stream, so gathers overlap the attention backward.
        """
        blk, c = self.blk, self.c
        kv_group = blk._kv_group()
        keep_kv = blk._keeps_kv()
        k = self.buckets
        nb = blk._kv_bytes() / k
        n, s = blk.n, blk.s
        regather = kv_group is not None and not keep_kv
        start: dict[int, int | None] = {r: c.last[r] for r in c.ranks}

        def gather(i: int, after: dict[int, int | None]) -> dict[int, int]:
            assert kv_group is not None
            return blk._kv_gather(kv_group, nb, L + "attn.kv_all_gather" + (f"[b={i}]" if k > 1 else ""), layer,
                                  "bwd", after)

        got = {i: gather(i, start) for i in range(min(k, 2))} if regather else {}
        dkv: dict[int, int | None] = dict(start)
        shape = blk._core_shape() if k == 1 else self._bucket_shape()
        for i in range(k):
            sfx = f"[b={i}]" if k > 1 else ""
            ready: dict[int, int | None] = dict(got.get(i, {}))
            if regather and blk._zigzag():
                ready = {r: c.elementwise(r, L + "attn.kv_zigzag_reorder" + sfx, 2 * nb, layer=layer, phase="bwd",
                                          after=[ready.get(r), c.last[r]]) for r in c.ranks}
            core = {}
            for r in c.ranks:
                mem = free(r, "o") if i == k - 1 else []
                if kv_group is not None:
                    # gathered K/V are released; dK/dV for all tokens are produced for the reduce-scatter
                    cat = "activations" if keep_kv else "comm_buffers"
                    mem = mem + [("end", cat, -int(nb)), ("end", "temporary", int(nb))]
                core[r] = core_backward(c, r, L + "attn.core" + sfx, shape, layer=layer,
                                        after=[ready.get(r), c.last[r]],
                                        flash_bytes=(n * blk.q_l * 4 + 4 * blk.S * blk.B * blk.kv_l) * s / k,
                                        scores_saved=self.scores_saved(r, layer), mem=mem)
            if regather and i + 2 < k:
                got[i + 2] = gather(i + 2, dict(core))
            dkv = dict(core)
            if kv_group is not None:
                dkv = blk.coll("reduce_scatter", kv_group, nb, L + "attn.kv_grad_reduce_scatter" + sfx, stream="kv",
                               layer=layer, phase="bwd", deps=dkv)
        return dkv

    def qkv_grad_mem(self, rank: int) -> Mem:
        """The dK/dV of every token, produced for the reduce-scatter."""
        return [("end", "temporary", -int(self.blk._kv_bytes()))] if self.blk._kv_group() is not None else []


# ---------------------------------------------------------------------------------- Ulysses
class UlyssesAttention(SpAttention):
    """DeepSpeed Ulysses: all-to-all Q/K/V to head shards, full-sequence attention, all-to-all O back."""

    name = "ulysses"

    def __init__(self, blk: BlockView) -> None:
        super().__init__(blk)
        self._seq_cat = ""
        """Category of the last forward's sequence-sharded output (``activations`` when saved for backward)."""

    def _sizes(self) -> tuple[float, float]:
        """Bytes of the rank's local Q and of its K (or V): n·H_q·s and n·H_kv·s (the all-to-all payloads)."""
        b = self.blk
        return b.n * b.q_l * b.s, b.n * b.kv_l * b.s

    def _shape(self) -> CoreShape:
        """The whole sequence (B·S queries and keys), H_q/(T·p) heads, causal."""
        b = self.blk
        return CoreShape(b.B, b.S, b.S, b.heads_l / b.SP, self.c.model.head_dim)

    def _a2a(self, what: str, nbytes: float, L: str, layer: int, phase: str, deps: dict[int, int | None],
             cat: str = "comm_buffers") -> dict[int, int]:
        """One all-to-all over the Σ group on the ``kv`` stream; the receive buffer is allocated at its start."""
        return self.blk.coll("all_to_all", self.blk.seq_group, nbytes, L + f"attn.{what}_all_to_all", stream="kv",
                             layer=layer, phase=phase, deps=deps, mem_start=int(nbytes), mem_cat=cat)

    def forward(self, layer: int, phase: str, L: str, keep: frozenset[str], act: Act, qkv: dict[int, int],
                recomputing: bool) -> None:
        """Q, K, V all-to-alls, reorder, attention of the local heads over the whole sequence, O all-to-all."""
        blk, c = self.blk, self.c
        qb, kvb = self._sizes()
        n, s = blk.n, blk.s
        deps: dict[int, int | None] = dict(qkv)
        last: dict[int, int] = {}
        for what, nb in (("q", qb), ("k", kvb), ("v", kvb)):
            last = self._a2a(what, nb, L, layer, phase, deps)
        flash = c.stack.attention.kernel == "flash"
        seq_cat = "activations" if "o_seq" in keep else "comm_buffers"
        for r in c.ranks:
            c.elementwise(r, L + "attn.qkv_zigzag_reorder", 2 * (qb + 2 * kvb), layer=layer, phase=phase,
                          after=[last.get(r), c.last[r]])
            o_bytes = n * blk.q_l * s + (n * blk.heads_l * 4 if flash else 0)   # output (+ fp32 log-sum-exp)
            core_forward(c, r, L + "attn.core", self._shape(), layer=layer, phase=phase, after=[c.last[r]],
                         flash_bytes=(2 * qb + 2 * kvb), save_scores="scores" in keep,
                         mem=act(r, "o", o_bytes) + [("end", "comm_buffers", -int(qb + 2 * kvb))])
            c.elementwise(r, L + "attn.out_zigzag_reorder", 2 * qb, layer=layer, phase=phase, after=[c.last[r]])
            act(r, "o_seq", qb)   # registered here, allocated by the all-to-all below
        back = self._a2a("out", qb, L, layer, phase, dict(c.last), cat=seq_cat)
        for r in c.ranks:
            c.last[r] = c.builder.memory(r, L + "attn.out_all_to_all.done", [], layer=layer, phase=phase,
                                        deps=[back[r], c.last[r]])
        self._seq_cat = seq_cat
        return None

    def out_mem(self) -> dict[int, Mem] | None:
        """W_O reads the sequence-sharded output: released after it unless saved for W_O's backward."""
        if self._seq_cat != "comm_buffers":
            return None
        qb, _ = self._sizes()
        return {r: [("end", "comm_buffers", -int(qb))] for r in self.c.ranks}

    def backward(self, layer: int, L: str, free: Free) -> dict[int, int | None]:
        """dO all-to-all to heads, attention backward, dQ/dK/dV all-to-alls back to sequence shards."""
        c = self.c
        qb, kvb = self._sizes()
        d_out = self._a2a("out_grad", qb, L, layer, "bwd", dict(c.last))
        for r in c.ranks:
            c.elementwise(r, L + "attn.out_grad_zigzag_reorder", 2 * qb, layer=layer, phase="bwd",
                          after=[d_out.get(r), c.last[r]])
            core_backward(c, r, L + "attn.core", self._shape(), layer=layer, after=[c.last[r]],
                          flash_bytes=2 * (2 * qb + 2 * kvb), scores_saved=self.scores_saved(r, layer),
                          mem=free(r, "o") + [("end", "comm_buffers", -int(qb)),
                                              ("end", "temporary", int(qb + 2 * kvb))])
            c.elementwise(r, L + "attn.qkv_grad_zigzag_reorder", 2 * (qb + 2 * kvb), layer=layer, phase="bwd",
                          after=[c.last[r]])
        deps: dict[int, int | None] = dict(c.last)
        last: dict[int, int] = {}
        for what, nb in (("q_grad", qb), ("k_grad", kvb), ("v_grad", kvb)):
            last = self._a2a(what, nb, L, layer, "bwd", deps)
        for r in c.ranks:   # the head-sharded gradients are sent: release them
            c.last[r] = c.builder.memory(r, L + "attn.qkv_grad_all_to_all.done",
                                         [("temporary", -int(qb + 2 * kvb))], layer=layer, phase="bwd",
                                         deps=[last[r], c.last[r]])
        return dict(c.last)

    def qkv_grad_mem(self, rank: int) -> Mem:
        """The sequence-sharded dQ, dK, dV received by the all-to-alls."""
        qb, kvb = self._sizes()
        return [("end", "comm_buffers", -int(qb + 2 * kvb))]

"""Ring attention (context parallelism) as Megatron-Core / TransformerEngine run it: K/V blocks around the Σ ring.

Rank i of a Σ = p ring holds zig-zag chunks i and 2p−1−i (c = S/(2p) tokens each) of every sequence and the Q, K
and V of its heads (H_q = q_dim/T, H_kv = kv_dim/T wide). Forward, step k = 0 … p−1 (TE's
AttnFuncWithCPAndKVP2P): the rank holds the packed K/V block of rank j = i−k (mod p), 2·B·(S/p)·H_kv·s bytes,
and

* sends it to rank i+1 and receives the next block from rank i−1 (for k < p−1), point-to-point on the ``kv_tx``
  / ``kv`` streams, while it attends to the block it holds — the transfer overlaps attention;
* attends: k = 0 its own block under the causal mask (2c queries × 2c keys, half the scores); j < i: both query
  chunks against the block's first chunk (2c × c, no mask); j > i: its second query chunk against the whole
  block (c × 2c, no mask) — the zig-zag balance: every step computes 2·B·c² scores per head, and the p steps sum
  to the n·S/2 of the all-gather algorithm exactly;
* merges the step's partial output into the running output by log-sum-exp (online softmax), a memory-bound pass
  over the step's query rows (3·rows·H_q·s + 3·rows·heads·4 bytes) holding the partial output as a temporary.

Double buffering: the receive of step k+1's block is posted once step k−1's attention has finished with that
buffer, so at most two received blocks are in flight (``comm_buffers``); a block is released after both its
attention and its send to the next rank are done (a zero-cost op on the ``kv_tx`` stream, which also makes step
k+1's send wait for step k's attention, as TE posts each step's sends after the previous step). Each rank sends
p−1 blocks: 2·(p−1)/p · B·S·H_kv·s bytes per block forward — the gathered K/V the all-gather algorithm keeps is
never materialised (no ``sp_keep_gathered_kv``: the blocks travel the ring again in backward).

Backward: the K/V blocks circulate again (p−1 sends, double-buffered); step k runs the flash backward of the same
(query chunk, key block) pair, accumulating dQ locally (a memory-bound add for k ≥ 1) and producing a partial
dK/dV for the block it holds. The partial gradient of a block travels the ring with it: from step 2 on, the rank
adds the accumulator received from rank i−1 to its own partial and sends the sum to rank i+1; the last hop (step
p−1) lands on the block's owner, which adds its own step-0 partial. p−1 dK/dV sends of a block's size: backward
sends 4·(p−1)/p · B·S·H_kv·s bytes per block.

Ring attention merges partial outputs by their log-sum-exp, which only a flash kernel returns: the unfused
attention of Megatron-LM 2022 is refused (TransformerEngine's context parallelism refuses it too).
"""

from __future__ import annotations

from tspsim.schedules.attention import CoreShape, core_backward, core_forward
from tspsim.schedules.sp_attention import Act, BlockView, Free, Mem, SpAttention

STATS_BYTES = 4
"""Bytes per fp32 log-sum-exp statistic of the online-softmax merge."""


def ring_ops_per_rank(p: int, training: bool) -> int:
    """Fewest ops ring attention over a Σ = ``p`` ring issues on each simulated rank per block pass.

    Forward (:meth:`RingAttention.forward`): p attention steps, p − 1 log-sum-exp merges and p − 2 buffer releases,
    3p − 3; backward (:meth:`RingAttention.backward`, training only): p attention-backward steps, p − 1 dQ
    accumulations, p − 1 dK/dV accumulations (steps 2 … p − 1 and the owner's own) and p − 2 releases, 4p − 4.
    Each is a compute or memory op of the rank whatever the fold (its sends and receives, which a fold may omit,
    only add to them; recomputation repeats the forward), so ``ring_ops_per_rank(p, training)`` × simulated ranks
    × blocks bounds a graph's op count from below before it is built (the planner's op-limit check,
    :func:`tspsim.explore.ring_floor.ring_ops_floor`).
    """
    forward = 3 * p - 3
    return forward + 4 * p - 4 if training else forward


class RingAttention(SpAttention):
    """Ring attention with zig-zag chunks and a double-buffered K/V ring; dK/dV accumulate around the ring."""

    name = "ring"

    def __init__(self, blk: BlockView) -> None:
        super().__init__(blk)
        self._positions: dict[int, tuple[int, int]] = {}
        """Per rank: (position in its Σ ring, next rank), filled on first use."""

    # ------------------------------------------------------------------------------ geometry
    def _position(self, rank: int) -> tuple[int, int]:
        """(position i in the Σ ring, next rank i+1), computed once per rank (the ring is asked p times per step)."""
        known = self._positions
        if rank not in known:
            g = self.blk.seq_group(rank)
            i = g.index(rank)
            known[rank] = (i, g[(i + 1) % len(g)])
        return known[rank]

    def step_shape(self, i: int, k: int) -> CoreShape:
        """Attention of ring position ``i`` at step ``k`` (zig-zag: 2·B·c² scores per head at every step)."""
        b = self.blk
        c = b.S / (2 * b.SP)
        d = self.c.model.head_dim
        if k == 0:
            return CoreShape(b.B, 2 * c, 2 * c, b.heads_l, d, 0.5)
        if k <= i:      # block of an earlier rank: all local queries, its first chunk
            return CoreShape(b.B, 2 * c, c, b.heads_l, d, 1.0)
        return CoreShape(b.B, c, 2 * c, b.heads_l, d, 1.0)   # later rank: the second query chunk, the whole block

    @property
    def block_bytes(self) -> float:
        """Packed K and V of one rank: 2·B·(S/p)·H_kv·s."""
        b = self.blk
        return 2.0 * b.n * b.kv_l * b.s

    def _flash_bytes(self, sh: CoreShape, factor: int) -> float:
        """HBM traffic of a flash step: Q and O (and dQ, dO) of its query rows, K and V (and dK, dV) of its block."""
        b = self.blk
        return factor * (sh.batch * sh.q_tokens * b.q_l + 2 * sh.batch * sh.kv_tokens * b.kv_l) * b.s

    def _pass(self, name: str, step: int, nbytes: float, layer: int, phase: str,
              send_after: dict[int, list[int | None]], recv_after: dict[int, list[int | None]],
              recv_mem: Mem, send_mem: Mem | None = None) -> tuple[dict[int, int], dict[int, int]]:
        """Every rank sends ``nbytes`` to the next one in its Σ ring; returns ({rank: send}, {rank: recv})."""
        c = self.c
        sends: dict[int, int] = {}
        recvs: dict[int, int] = {}
        for r in c.ranks:
            _, nxt = self._position(r)
            s_op, r_op = c.builder.p2p(r, nxt, int(nbytes), f"{name}[step {step}]", send_stream="kv_tx",
                                       recv_stream="kv", layer=layer, phase=phase, send_deps=send_after.get(r, []),
                                       recv_deps=recv_after.get(nxt, []), recv_mem=recv_mem,
                                       send_mem=send_mem or [])
            if s_op is not None:
                sends[r] = s_op
            if r_op is not None:
                recvs[nxt] = r_op
        return sends, recvs

    def _kv_step(self, L: str, k: int, layer: int, phase: str, held: dict[int, int | None],
                 prev_core: dict[int, int | None], prev_free: dict[int, int],
                 start: dict[int, int | None]) -> tuple[dict[int, int], dict[int, int]]:
        """Step k's transfer: pass the held block on, receive the next into the buffer step k−1 has freed.

        As TE, step k's transfers are posted once step k−1's attention and transfers are done and its buffer is
        released (``prev_free``).
        """
        c = self.c
        after = prev_core if k > 0 else start
        return self._pass(L + "attn.kv_ring", k, self.block_bytes, layer, phase,
                          send_after={r: [held[r], prev_core[r]] for r in c.ranks},
                          recv_after={r: [after[r], prev_free.get(r)] for r in c.ranks},
                          recv_mem=[("start", "comm_buffers", int(self.block_bytes))])

    def _release(self, L: str, k: int, layer: int, phase: str, core: dict[int, int],
                 sends: dict[int, int]) -> dict[int, int]:
        """Free step k's received block once its attention and its send are done (an op on ``kv_tx``)."""
        c = self.c
        free = [("comm_buffers", -int(self.block_bytes))]
        return {r: c.builder.memory(r, L + f"attn.kv_ring_release[step {k}]", free, layer=layer, phase=phase,
                                    deps=[core[r], sends.get(r)], stream="kv_tx") for r in c.ranks}

    # ------------------------------------------------------------------------------ forward
    def forward(self, layer: int, phase: str, L: str, keep: frozenset[str], act: Act, qkv: dict[int, int],
                recomputing: bool) -> None:
        """p steps: pass the block on, attend to it, merge by log-sum-exp."""
        blk, c = self.blk, self.c
        p, s = blk.SP, blk.s
        start: dict[int, int | None] = dict(qkv)
        held: dict[int, int | None] = dict(qkv)
        prev_core: dict[int, int | None] = dict.fromkeys(c.ranks)
        freed: dict[int, int] = {}
        for k in range(p):
            sends, recvs = (self._kv_step(L, k, layer, phase, held, prev_core, freed, start) if k < p - 1
                            else ({}, {}))
            core: dict[int, int] = {}
            for r in c.ranks:
                i, _ = self._position(r)
                sh = self.step_shape(i, k)
                rows = sh.batch * sh.q_tokens
                partial = int(rows * blk.q_l * s + rows * blk.heads_l * STATS_BYTES)
                mem: Mem = [("start", "temporary", partial)] if k > 0 else []
                if k == p - 1:   # the last block has no send: released with its attention
                    mem.append(("end", "comm_buffers", -int(self.block_bytes)))
                core[r] = core_forward(c, r, L + f"attn.core[step {k}]", sh, layer=layer, phase=phase,
                                       after=[held[r], c.last[r]], flash_bytes=self._flash_bytes(sh, 2),
                                       save_scores=False, mem=mem)
                if k > 0:
                    o = act(r, "o", blk.n * blk.q_l * s + blk.n * blk.heads_l * STATS_BYTES) if k == p - 1 else []
                    c.elementwise(r, L + f"attn.ring_merge[step {k}]", 3 * partial, layer=layer, phase=phase,
                                  after=[c.last[r]], mem=[("end", "temporary", -partial), *o])
            freed = self._release(L, k, layer, phase, core, sends) if 0 < k < p - 1 else {}
            prev_core, held = dict(core), dict(recvs)
        return None

    # ------------------------------------------------------------------------------ backward
    def backward(self, layer: int, L: str, free: Free) -> dict[int, int | None]:
        """K/V blocks around the ring again; dQ accumulates locally, dK/dV accumulators travel to the owners."""
        blk, c = self.blk, self.c
        p, s = blk.SP, blk.s
        bb = int(self.block_bytes)
        start: dict[int, int | None] = {r: c.last[r] for r in c.ranks}
        held: dict[int, int | None] = dict(start)
        prev_core: dict[int, int | None] = dict.fromkeys(c.ranks)
        acc: dict[int, int] = {}   # receive of the dK/dV accumulator each rank adds at its next step
        dkv_ready: dict[int, int | None] = {}
        freed: dict[int, int] = {}
        for k in range(p):
            sends, recvs = (self._kv_step(L, k, layer, "bwd", held, prev_core, freed, start) if k < p - 1
                            else ({}, {}))
            core: dict[int, int] = {}
            for r in c.ranks:
                i, _ = self._position(r)
                sh = self.step_shape(i, k)
                dq = int(sh.batch * sh.q_tokens * blk.q_l * s)
                mem: Mem = [("start", "temporary", bb)]        # the step's partial dK/dV of the held block
                if k > 0:
                    mem.append(("start", "temporary", dq))    # the step's partial dQ
                if k == p - 1:
                    mem += free(r, "o") + [("end", "comm_buffers", -bb)]
                core[r] = core_backward(c, r, L + f"attn.core[step {k}]", sh, layer=layer,
                                        after=[held[r], c.last[r]], flash_bytes=self._flash_bytes(sh, 4),
                                        scores_saved=self.scores_saved(r, layer), mem=mem)
                if k > 1:   # add the accumulator of this block that rank i−1 sent
                    c.elementwise(r, L + f"attn.ring_dkv_accumulate[step {k}]", 3 * bb, layer=layer, phase="bwd",
                                  after=[acc[r], c.last[r]], mem=[("end", "comm_buffers", -bb)])
                dkv_ready[r] = c.last[r]
                if k > 0:
                    c.elementwise(r, L + f"attn.ring_dq_accumulate[step {k}]", 3 * dq, layer=layer, phase="bwd",
                                  after=[c.last[r]], mem=[("end", "temporary", -dq)])
            freed = self._release(L, k, layer, "bwd", core, sends) if 0 < k < p - 1 else {}
            if k > 0:   # the block's dK/dV accumulator moves on with it (the last hop reaches its owner)
                _, acc = self._pass(L + "attn.dkv_ring", k, bb, layer, "bwd",
                                    send_after={r: [dkv_ready[r]] for r in c.ranks},
                                    recv_after={r: [core[r]] for r in c.ranks},
                                    recv_mem=[("start", "comm_buffers", bb)], send_mem=[("end", "temporary", -bb)])
            prev_core, held = dict(core), dict(recvs)
        for r in c.ranks:   # the owner adds its own step-0 partial
            c.elementwise(r, L + "attn.ring_dkv_accumulate[own]", 3 * bb, layer=layer, phase="bwd",
                          after=[acc[r], c.last[r]], mem=[("end", "comm_buffers", -bb)])
        return {r: c.last[r] for r in c.ranks}

    def qkv_grad_mem(self, rank: int) -> Mem:
        """The rank's own dK/dV (its step-0 partial plus the accumulated gradient)."""
        return [("end", "temporary", -int(self.block_bytes))]

"""The core attention of training and prefill as the stack runs it: one flash kernel, or Megatron's unfused chain.

``flash`` (FlashAttention / cuDNN class): one forward kernel (QKᵀ and P·V with the causal blocks
skipped: half the score FLOPs; scores never reach HBM; the output and its log-sum-exp are saved) and one
backward kernel of 2.5× the forward FLOPs that recomputes the scores from Q, K, V (Dao 2023). Megatron's
selective recomputation therefore changes nothing for it: the kernel already recomputes the core
attention in backward.

``unfused`` (Megatron-LM's CoreAttention; Korthikanti et al. 2022, arXiv 2205.05198), with
e = b·(a/t)·S_q·S_k score elements, d the head dim and s bytes per element, forward::

    qk        batched GEMM QKᵀ over the full score matrix  2·e·d FLOPs, writes e·s   (no causal skipping)
    softmax   fused scale-mask-softmax                      reads e·s, writes e·s (the probabilities)
    dropout   attention dropout (stack: attention.dropout)  reads e·s, writes e·s + e (1-byte mask)
    av        batched GEMM P·V                               2·e·d FLOPs, reads e·s

saving the probabilities, the mask and the dropped probabilities — e·(2s + 1) bytes, the 5·a·s²·b/t of
Korthikanti et al.'s Table 2 — unless the core attention is recomputed (``selective``). Backward, in
reverse: P·V's two gradient GEMMs (dP and dV), dropout backward (reads dP and the mask), softmax backward
(reads P and dP, writes dS), QKᵀ's two gradient GEMMs (dQ, dK); under selective recomputation the four
forward kernels run again first (Megatron re-runs the checkpointed CoreAttention forward).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tspsim.schedules.context import ATTN_BWD_FACTOR, BuildContext, attention_fwd_flops

Mem = list[tuple[str, str, int]]


@dataclass(frozen=True)
class CoreShape:
    """The attention one rank computes: ``batch`` sequences, ``heads`` heads, S_q queries against S_k keys."""

    batch: int
    """Sequences b."""
    q_tokens: float
    """Queries per sequence S_q on this rank."""
    kv_tokens: float
    """Keys per sequence S_k."""
    heads: float
    """Heads on this rank (a/t)."""
    head_dim: int
    """d."""
    causal_fraction: float = 0.5
    """Fraction of the S_q × S_k scores a flash kernel computes: 1/2 under the causal mask (design.md rule 4),
    1 for a block of keys wholly before the queries (a ring-attention step, :mod:`tspsim.schedules.sp_attention`)."""

    @property
    def scores(self) -> float:
        """Score-matrix elements e = b·heads·S_q·S_k."""
        return self.batch * self.heads * self.q_tokens * self.kv_tokens

    @property
    def shape(self) -> tuple[int, ...]:
        """(batch, q_tokens, kv_tokens, heads, head_dim) as recorded on attention ops."""
        return (self.batch, int(self.q_tokens), int(self.kv_tokens), int(self.heads) or 1, self.head_dim)


def attention_dropout(c: BuildContext) -> bool:
    """Attention dropout runs (training steps of a stack with ``attention.dropout``)."""
    return c.training and c.stack.attention.dropout


def saved_score_bytes(c: BuildContext, shape: CoreShape) -> int:
    """Bytes the unfused forward saves for backward: probabilities (s), dropout mask (1) and output (s) per score."""
    if c.stack.attention.kernel != "unfused":
        return 0
    return int(shape.scores * (c.s + (c.s + 1 if attention_dropout(c) else 0)))


def core_forward(c: BuildContext, rank: int, name: str, shape: CoreShape, *, layer: int, phase: str,
                 after: Iterable[int | None], flash_bytes: float, save_scores: bool, mem: Mem) -> int:
    """The forward core attention of ``rank``; ``mem`` goes on its last op. Returns that op's id.

    ``flash_bytes`` is the flash kernel's HBM traffic (Q, K, V in, O out: the caller's layout knows it);
    ``save_scores`` keeps the unfused chain's tensors as ``activations`` (else they are freed after P·V).
    """
    if c.stack.attention.kernel == "flash":
        fl = attention_fwd_flops(shape.batch, shape.q_tokens, shape.kv_tokens, shape.heads, shape.head_dim,
                                 shape.causal_fraction)
        return c.compute(rank, "attention_fwd", name, flops=fl, hbm_bytes=flash_bytes, shape=shape.shape,
                         layer=layer, phase=phase, after=after, mem=mem)
    return _unfused_forward(c, rank, name, shape, layer=layer, phase=phase, after=after,
                            category="activations" if save_scores else "temporary", free_after=not save_scores,
                            mem=mem)


def core_backward(c: BuildContext, rank: int, name: str, shape: CoreShape, *, layer: int, after: Iterable[int | None],
                  flash_bytes: float, scores_saved: bool, mem: Mem) -> int:
    """The backward core attention of ``rank`` (after the recomputation when the scores were not saved).

    ``mem`` goes on the last op (the caller frees its saved inputs and handles dK/dV there).
    """
    if c.stack.attention.kernel == "flash":
        fl = ATTN_BWD_FACTOR * attention_fwd_flops(shape.batch, shape.q_tokens, shape.kv_tokens, shape.heads,
                                                   shape.head_dim, shape.causal_fraction)
        return c.compute(rank, "attention_bwd", name, flops=fl, hbm_bytes=flash_bytes, shape=shape.shape,
                         layer=layer, phase="bwd", after=after, mem=mem)
    s, e, d = c.s, shape.scores, shape.head_dim
    dropout = attention_dropout(c)
    prefix, _, leaf = name.rpartition(".")
    if not scores_saved:  # selective recomputation: the checkpointed core attention runs again
        after = [_unfused_forward(c, rank, f"{prefix}.recompute.{leaf}", shape, layer=layer, phase="bwd",
                                  after=after, category="activations", free_after=False, mem=[])]
    bh = shape.batch * shape.heads
    qd, kd = bh * shape.q_tokens * d, bh * shape.kv_tokens * d
    probs, drop = int(e * s), int(e * (s + 1)) if dropout else 0
    # P·V backward: dP = dO·Vᵀ and dV = Pᵀ·dO (a backward pair carries its forward GEMM's shape: outputs m×k, k×n)
    c.compute(rank, "gemm", f"{name}.av", flops=4.0 * e * d, hbm_bytes=(2 * e + 2 * qd + 2 * kd) * s,
              shape=_bmm(shape.q_tokens, d, shape.kv_tokens, bh), layer=layer, phase="bwd", after=after,
              mem=[("start", "temporary", probs)])
    if dropout:
        c.elementwise(rank, f"{name}.dropout", e * (2 * s + 1), layer=layer, phase="bwd", after=[c.last[rank]],
                      mem=[("end", "activations", -drop)])
    c.elementwise(rank, f"{name}.softmax", 3 * e * s, layer=layer, phase="bwd", after=[c.last[rank]],
                  mem=[("end", "activations", -probs)])
    # QKᵀ backward: dQ = dS·K and dK = dSᵀ·Q (the forward shape again: outputs q×d and d×kv)
    return c.compute(rank, "gemm", f"{name}.qk", flops=4.0 * e * d, hbm_bytes=(2 * e + 2 * qd + 2 * kd) * s,
                     shape=_bmm(shape.q_tokens, shape.kv_tokens, d, bh), layer=layer, phase="bwd",
                     after=[c.last[rank]], mem=[("end", "temporary", -probs), *mem])


def _bmm(m: float, n: float, k: float, batch: float) -> tuple[int, int, int, int]:
    """Shape (m, n, k, batch) of a batched GEMM: ``batch`` independent (m×k)·(k×n) products (baddbmm/bmm)."""
    return (int(m), int(n), int(k), int(batch))


def _unfused_forward(c: BuildContext, rank: int, name: str, shape: CoreShape, *, layer: int, phase: str,
                     after: Iterable[int | None], category: str, free_after: bool, mem: Mem) -> int:
    """QKᵀ, scale-mask-softmax, dropout and P·V; the probabilities (and dropout tensors) go to ``category``."""
    s, e, d = c.s, shape.scores, shape.head_dim
    bh = shape.batch * shape.heads
    qd, kd = bh * shape.q_tokens * d, bh * shape.kv_tokens * d
    raw, probs = int(e * s), int(e * s)
    drop = int(e * (s + 1)) if attention_dropout(c) else 0
    c.compute(rank, "gemm", f"{name}.qk", flops=2.0 * e * d, hbm_bytes=(qd + kd + e) * s,
              shape=_bmm(shape.q_tokens, shape.kv_tokens, d, bh), layer=layer, phase=phase, after=after,
              mem=[("start", "temporary", raw)])
    c.elementwise(rank, f"{name}.softmax", 2 * e * s, layer=layer, phase=phase, after=[c.last[rank]],
                  mem=[("start", category, probs), ("end", "temporary", -raw)])
    if drop:
        c.elementwise(rank, f"{name}.dropout", e * (2 * s + 1), layer=layer, phase=phase, after=[c.last[rank]],
                      mem=[("start", category, drop)])
    free = [("end", category, -(probs + drop))] if free_after else []
    return c.compute(rank, "gemm", f"{name}.av", flops=2.0 * e * d, hbm_bytes=(e + kd + qd) * s,
                     shape=_bmm(shape.q_tokens, d, shape.kv_tokens, bh), layer=layer, phase=phase,
                     after=[c.last[rank]], mem=[*free, *mem])

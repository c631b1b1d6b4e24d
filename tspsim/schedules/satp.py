"""``satp-seq`` and ``satp-batch`` — sharded-activation TP (reference/tensor-parallelism-analysis.md).

Same weight sharding as classic TP; the residual stream stays sharded T ways (by sequence or by batch),
so the row-parallel projections end in a reduce-scatter (p−1)/p·M_H·s instead of an all-reduce. A
correct schedule also needs an **all-gather of the sharded input** before each column-parallel
projection (the article's table lists none; design.md §3): it is emitted as ``*.input_all_gather`` and
reported separately.

``satp-seq`` adds the article's K/V exchange, AllGather(K, V) = 2(p−1)/p·M_KV·s. With the default
``satp_seq_attention=gather-kv`` K and V are projected on the local sequence shard for all KV heads
(W_K, W_V kept whole on each rank) and all-gathered along the sequence — the only reading in which
that gather carries data the rank does not already have; ``gather-input`` is Megatron-LM sequence
parallelism, where the input all-gather alone gives every rank the whole context.
"""

from __future__ import annotations

from tspsim.opgraph import OpGraph
from tspsim.schedules.block import BlockLayout
from tspsim.schedules.context import BuildContext
from tspsim.schedules.registry import SCHEDULES, Schedule
from tspsim.schedules.standard import build_standard


def build_seq(ctx: BuildContext) -> OpGraph:
    """Sequence-sharded activations."""
    literal = ctx.opts.satp_seq_attention == "gather-kv"
    return build_standard(ctx, BlockLayout("satp-seq", ctx.layout.tp, 1, "seq", kv_from_local_shard=literal))


def build_batch(ctx: BuildContext) -> OpGraph:
    """Batch-sharded activations (needs batch divisible by D)."""
    return build_standard(ctx, BlockLayout("satp-batch", ctx.layout.tp, 1, "batch"))


SCHEDULES.register("satp-seq", Schedule(
    "satp-seq", "sharded-activation TP, sequence shard: reduce-scatter + all-gather, K/V all-gather",
    "tensor-parallelism-analysis.md", build_seq))
SCHEDULES.register("satp-batch", Schedule(
    "satp-batch", "sharded-activation TP, batch shard: reduce-scatter + all-gather, no K/V exchange",
    "tensor-parallelism-analysis.md", build_batch))

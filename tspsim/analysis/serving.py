"""Serving metrics: time to first token, time per output token, decode throughput, where the time goes.

Definitions (units in the names; every number comes from replays of op graphs, none from a formula):

* **ttft_s** — time to first token: the simulated prefill step (embedding, every block, the LM head on
  each prompt's last token). In ``decode`` mode (no prefill) it is the first decode step.
* **tpot_s** — time per output token: the mean simulated decode step time over the N generated tokens.
  Step i (0-based) starts with T + i cached tokens and attends over T + i + 1 (T = ``seq_len``, the
  prompt in ``generate`` mode and the cached context ``--context`` in ``decode`` mode).
* **decode_tokens_per_s** — B · replicas / tpot_s (one token per sequence per step, every replica);
  **decode_tokens_per_s_per_gpu** divides it by the world size.
* **max_batch** — the largest B whose simulated peak memory fits in HBM at this context: for decode the
  final step (T + N − 1 cached), for prefill the prefill step, for generate both. Found by doubling from
  the run's own batch, then bisection (split where the bracketing peaks interpolate to the HBM size);
  each probe is a full simulation of the step graph (``satp-*`` probe multiples of D).
* **decode_time_breakdown_s** — where a decode step's time goes, averaged over the simulated ranks and
  the N steps; the parts sum to tpot_s. Each compute span minus its launch overhead is
  ``weights_hbm`` (a GEMM bound by HBM: streaming weights), ``kv_hbm`` (an attention kernel bound by
  HBM: reading the KV cache) or ``compute`` (a FLOP-bound GEMM or attention kernel), decided by the
  op's roofline; a kernel whose shape is HBM-bound but which takes longer because of the small-kernel
  tail (:func:`tspsim.engine.costs.tail_fraction`) counts its streaming time as HBM and the excess as
  ``compute``; ``communication`` is exposed communication (communicating while not computing);
  ``other`` is launch overhead, elementwise kernels (norms, residual adds, activations, sampling) and
  idle time.

Mode-dependent keys of the stable run entry are redefined for inference: ``step_time_s`` is ttft_s
(prefill), tpot_s (decode) or ttft_s + Σ decode steps (generate); ``tokens_per_s`` is prompt tokens/s
(prefill), decode tokens/s (decode) or generated tokens / step_time_s (generate); ``mfu`` counts the
model FLOPs of those steps (decode attention: 4·B·T·H_q per block, no causal halving). Per-step keys
(memory, overlap, communication bytes) describe the representative timeline: the prefill step for
``prefill``, the final decode step for ``decode``; ``generate`` reports the prefill timeline with the
memory keys of whichever of prefill and final decode step peaks higher.
"""

from __future__ import annotations

from typing import Any

from tspsim.analysis.metrics import intersection_length, interval_union, total_length
from tspsim.engine.costs import efficiency, large_efficiency
from tspsim.engine.timeline import Timeline
from tspsim.spec.layout import Layout
from tspsim.spec.model import ModelConfig
from tspsim.spec.topology import GpuSpec
from tspsim.spec.workload import Workload

BREAKDOWN_KEYS = ("weights_hbm", "kv_hbm", "compute", "communication", "other")
"""Keys of ``decode_time_breakdown_s``."""


def time_breakdown(tl: Timeline, gpu: GpuSpec, start: float = 0.0, end: float | None = None) -> dict[str, float]:
    """Seconds of [start, end] by category (:data:`BREAKDOWN_KEYS`), averaged over the simulated ranks.

    Compute spans are sequential on a rank's compute stream; each one minus the launch overhead is
    classified by its roofline (HBM-bound GEMM → ``weights_hbm``, HBM-bound attention → ``kv_hbm``,
    FLOP-bound → ``compute``, elementwise → ``other``); an HBM-bound shape (bytes/HBM ≥ FLOPs/(peak ·
    eff_large)) that the small-kernel tail makes longer splits: the share bytes/HBM of its kernel time
    to the HBM category, the rest to ``compute``. Communication not overlapped by compute is
    ``communication``; the rest of the window (launch overheads, idle) is ``other``. Parts sum to the
    window length, and are additive over adjacent windows (a span cut by a window edge contributes its
    launch overhead pro rata).
    """
    end = tl.end_s if end is None else end
    ranks = tuple(tl.graph.ranks) or tuple(sorted({op.rank for op in tl.ops}))
    launch = gpu.kernel_launch_us * 1e-6
    hbm = gpu.hbm_TBps * 1e12 * gpu.hbm_efficiency
    peak = gpu.peak_bf16_TFLOPS * 1e12
    sums = dict.fromkeys(BREAKDOWN_KEYS, 0.0)
    per: dict[int, tuple[list[tuple[float, float]], list[tuple[float, float]]]] = {r: ([], []) for r in ranks}
    for op_id, a0, b0 in tl.spans:
        a, b = max(a0, start), min(b0, end)
        if b <= a:
            continue
        op = tl.ops[op_id]
        comp, comm = per.setdefault(op.rank, ([], []))
        if op.is_comm:
            comm.append((a, b))
            continue
        if op.kind in ("memory", "host"):   # bookkeeping and the CPU lane: not GPU time
            continue
        comp.append((a, b))
        dur = b - a
        over = min(launch, b0 - a0) * dur / (b0 - a0)
        sums["other"] += over
        if op.kind not in ("gemm", "attention_fwd", "attention_bwd"):
            sums["other"] += dur - over
            continue
        mem_cat = "weights_hbm" if op.kind == "gemm" else "kv_hbm"
        t_mem = op.hbm_bytes / hbm
        t_flops = op.flops / (peak * efficiency(op, gpu)) if op.flops > 0 else 0.0
        t_large = op.flops / (peak * large_efficiency(op, gpu))
        if t_mem >= t_flops:
            sums[mem_cat] += dur - over
        elif t_mem >= t_large:    # streaming-bound shape paying the small-kernel tail
            body = (b0 - a0) - min(launch, b0 - a0)
            share = min(1.0, t_mem / body) if body > 0 else 1.0
            sums[mem_cat] += (dur - over) * share
            sums["compute"] += (dur - over) * (1.0 - share)
        else:
            sums["compute"] += dur - over
    for comp, comm in per.values():
        cu, mu = interval_union(comp), interval_union(comm)
        exposed = total_length(mu) - intersection_length(cu, mu)
        sums["communication"] += exposed
        sums["other"] += (end - start) - total_length(cu) - exposed
    n = max(len(per), 1)
    return {k: v / n for k, v in sums.items()}


def model_flops_prefill(model: ModelConfig, batch: int, seq: int) -> float:
    """L · block forward FLOPs (causal) + the LM head on the B last tokens: 2·B·H·V."""
    return model.layers * model.layer_fwd_flops(batch, seq) + 2.0 * batch * model.hidden * model.vocab


def model_flops_decode(model: ModelConfig, batch: int, attended: int) -> float:
    """One decode step: L·(2·B·W_block + 4·B·T_a·H_q) + 2·B·H·V (no causal halving: T_q = 1)."""
    per_block = 2.0 * batch * (model.attn_params + model.mlp_params) + 4.0 * batch * attended * model.q_dim
    return model.layers * per_block + 2.0 * batch * model.hidden * model.vocab


def step_kind(meta: dict[str, Any], mode: str) -> str:
    """``prefill`` or ``decode``: which inference step a graph holds (its ``meta.inference.step``, else the mode)."""
    info = meta.get("inference")
    step = info.get("step") if isinstance(info, dict) else None
    if step in ("prefill", "decode"):
        return str(step)
    return "decode" if mode == "decode" else "prefill"


def step_fields(kind: str, tl: Timeline, gpu: GpuSpec, model: ModelConfig, layout: Layout, workload: Workload,
                cached: int) -> dict[str, Any]:
    """Serving keys of ONE replayed inference step (``tspsim replay`` of a ``tspsim generate`` graph).

    ``kind`` is ``prefill`` (B prompts of ``workload.seq_len`` tokens) or ``decode`` (one token per
    sequence with ``cached`` tokens in the cache, replayed on :func:`decode_topology`, whose GPU is
    ``gpu``). A prefill step gives ``ttft_s`` and prompt tokens/s; a decode step gives ``tpot_s`` (this
    step's time), decode tokens/s and ``decode_time_breakdown_s``, with ``ttft_s`` null (one step of a
    request has no time to first token). ``max_batch`` and the keys about a run's N decode steps
    (``decode_step_first_s``, ``decode_step_last_s``, ``decode_sim``, ``decode_check_rel_err``) are null.
    ``inference_step`` says which step it was.
    """
    step = tl.end_s
    world, replicas, B = layout.world_size, layout.replicas, workload.batch
    decode = kind == "decode"
    tokens = B * replicas if decode else B * workload.seq_len * replicas
    flops = model_flops_decode(model, B, cached + 1) if decode else model_flops_prefill(model, B, workload.seq_len)
    tps = tokens / step if step > 0 else 0.0
    peak_flops = step * world * gpu.mfu_peak_TFLOPS * 1e12
    dtps = tps if decode else None
    info: dict[str, Any] = ({"kind": "decode", "context_tokens": workload.seq_len, "cached_tokens": cached,
                             "token_index": cached - workload.seq_len + 1} if decode
                            else {"kind": "prefill", "prompt_tokens": workload.seq_len})
    return {
        "ttft_s": None if decode else step, "tpot_s": step if decode else None, "decode_tokens_per_s": dtps,
        "decode_tokens_per_s_per_gpu": dtps / world if dtps is not None else None, "max_batch": None,
        "decode_time_breakdown_s": time_breakdown(tl, gpu) if decode else None,
        "decode_tokens": workload.decode_tokens if decode else 0, "context_tokens": workload.seq_len,
        "decode_step_first_s": None, "decode_step_last_s": None, "decode_sim": None,
        "decode_check_rel_err": None, "step_time_s": step, "tokens_per_s": tps, "tokens_per_s_per_gpu": tps / world,
        "layer_tokens_per_s": tps * model.layers, "mfu": flops * replicas / peak_flops if peak_flops > 0 else 0.0,
        "inference_step": info,
    }

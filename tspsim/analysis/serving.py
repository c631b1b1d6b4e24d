"""Serving metrics: time to first token, time per output token, decode throughput, where the time goes.

Definitions (units in the names; every number comes from replays of op graphs, none from a formula):

* **ttft_s** — time to first token: the simulated prefill step (embedding, every block, the LM head on
  each prompt's last token); null in ``decode`` mode, which simulates no prefill (see **TTFT** below).
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

**One meaning per key.** Every top-level key of an inference entry has the scope of its ``step_time_s``:

* ``prefill`` — the prefill step (``step_time_s`` = ``ttft_s``; tokens/s = prompt tokens/s).
* ``decode`` — the mean decode step (``step_time_s`` = ``tpot_s``; ``compute_s``, ``comm_s``,
  ``exposed_comm_s`` are means over the N steps, ``overlap_pct`` of their sums, ``comm_bytes_per_rank``
  and ``layer_comm_bytes_per_rank`` per step; tokens/s = decode tokens/s).
* ``generate`` — the whole request: ``step_time_s`` = ttft_s + Σ decode steps, and ``compute_s``,
  ``comm_s``, ``exposed_comm_s``, ``overlap_pct`` and the byte counts of the same prefill + N steps;
  tokens/s = generated tokens / step_time_s.

``mfu`` counts the model FLOPs of that scope (decode attention: 4·B·T·H_q per block, no causal halving);
the memory keys are the peak over the scope (decode: the final, largest-cache step). The per-phase blocks
``prefill`` and ``decode`` (:data:`PHASE_KEYS`; null when the mode has no such phase) give ``time_s``,
``compute_s``, ``comm_s``, ``exposed_comm_s``, ``overlap_pct``, ``tokens_per_s``, ``peak_memory_gb`` and
``comm_bytes_per_rank`` of the prefill step and of the N decode steps together (``steps`` = N).

**TTFT** is defined once: the time from the request to its first generated token, which the prefill
produces (its LM head on the prompt's last token). It is the prefill step's time wherever a prefill is
simulated (``run``/``sweep``/``plan`` in ``prefill`` and ``generate`` modes, ``replay`` of a prefill
graph) and null where none is: ``decode`` mode starts from a filled cache, and a replayed decode step is
one step of a request whose prefill is not in the graph (the first decode step's time is
``decode_step_first_s``).

Per-rank time sums are exact over a decode step assembled from a shorter graph
(:class:`~tspsim.simulate.decode_timer.DecodeTimer`): union lengths restricted to adjacent windows add
up, as the breakdown's do (:func:`rank_overlap`). Every decode step replays the same graph re-costed for
its context (only attention kernels change), so its bytes are those of the final step.
"""

from __future__ import annotations

from typing import Any

from tspsim.analysis.metrics import intersection_length, rank_intervals, total_length
from tspsim.analysis.span_windows import RankStats, clip_intervals, window_stats
from tspsim.engine.timeline import Timeline
from tspsim.spec.layout import Layout
from tspsim.spec.model import ModelConfig
from tspsim.spec.topology import GpuSpec
from tspsim.spec.workload import Workload

BREAKDOWN_KEYS = ("weights_hbm", "kv_hbm", "compute", "communication", "other")
"""Keys of ``decode_time_breakdown_s``."""
PHASE_KEYS = ("time_s", "compute_s", "comm_s", "exposed_comm_s", "overlap_pct", "tokens_per_s", "peak_memory_gb",
              "comm_bytes_per_rank")
"""Keys of the per-phase blocks ``prefill`` and ``decode`` of an inference entry (``decode`` adds ``steps``)."""


def rank_overlap(tl: Timeline, start: float = 0.0, end: float | None = None) -> RankStats:
    """Per rank: compute, communication and overlapped seconds inside [start, end] (HTA's unions, clipped).

    Additive over adjacent windows, so a step assembled from windows (:class:`DecodeTimer`) sums them.
    """
    end = tl.end_s if end is None else end
    out: RankStats = {}
    for r, (comp, comm) in rank_intervals(tl).items():
        c, m = clip_intervals(comp, start, end), clip_intervals(comm, start, end)
        out[r] = (total_length(c), total_length(m), intersection_length(c, m))
    return out


def add_stats(a: RankStats, b: RankStats, times: float = 1.0) -> RankStats:
    """``a + times·b``, rank by rank."""
    ranks = sorted(set(a) | set(b))
    zero = (0.0, 0.0, 0.0)
    return {r: tuple(x + times * y for x, y in zip(a.get(r, zero), b.get(r, zero))) for r in ranks}  # type: ignore[misc]


def stats_metrics(stats: RankStats, steps: int = 1) -> dict[str, float]:
    """compute_s, comm_s, exposed_comm_s (means over ranks, divided by ``steps``) and overlap_pct.

    As :func:`tspsim.analysis.metrics.time_metrics`: overlap_pct averages the per-rank ratios
    overlapped ÷ communicating of the ranks that communicate (0 if none does); a ratio of sums over the
    steps, so it is independent of ``steps``.
    """
    n = max(len(stats), 1) * max(steps, 1)
    ratios = [100.0 * ov / m for _, m, ov in stats.values() if m > 0]
    return {"compute_s": sum(c for c, _, _ in stats.values()) / n,
            "comm_s": sum(m for _, m, _ in stats.values()) / n,
            "exposed_comm_s": sum(m - ov for _, m, ov in stats.values()) / n,
            "overlap_pct": sum(ratios) / len(ratios) if ratios else 0.0}


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
    return window_stats(tl, gpu, ((start, tl.end_s if end is None else end),))[0][0]


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

"""Pipeline metrics from a Timeline: the bubble and the time and memory of each stage (issue 14).

The graph records every pass of each stage's first simulated rank (``meta["pipeline"]["passes"]``,
:mod:`tspsim.schedules.pipeline`): [stage, kind, micro-batch, chunk, start op, last op], where the start op is
the instant the pass's input is there (its receive, or the previous pass's end). Then, per stage:

* **busy_s** — Σ over the stage's passes of (end of the last op − start), the time it spends on passes;
* **idle_s** — the pipeline window (first pass start to last pass end over all stages) minus busy_s: the time
  the stage waits for other stages (the bubble), including warm-up and drain;
* **forward_s**, **backward_s** — mean duration of its forward and backward passes (one chunk each);
* **peak_memory_gb** — the largest peak of its simulated ranks.

``bubble_pct`` = 100 · mean over stages of idle_s / window_s. With uniform stages and no communication, 1F1B and
GPipe give (P − 1)/(m + P − 1) and interleaved 1F1B (P − 1)/(V·m + P − 1) (Narayanan et al. 2021 §2.2), the
fractions :mod:`tspsim.schedules.pipeline_order`'s formulas predict. For a step timed from a shorter probe
(:mod:`tspsim.simulate.pipeline_timer`) the window and each stage's busy time add ``periods`` times their part
inside the steady-state period, and ``simulated_micro_batches`` says how many micro-batches the timeline holds.
"""

from __future__ import annotations

from typing import Any

from tspsim.engine.timeline import Timeline

GB = 1e9


def pipeline_metrics(tl: Timeline, stage_of: dict[int, int], window: Any = None) -> dict[str, Any] | None:
    """The pipeline block of a run entry; None without a pipeline record.

    Keys: schedule, stages, virtual_stages, micro_batches, placement, window_s, bubble_pct, per_stage.
    ``stage_of`` maps each simulated rank to its stage (for the per-stage memory peaks).
    """
    meta = tl.graph.meta if isinstance(tl.graph.meta, dict) else {}
    rec = meta.get("pipeline")
    if not isinstance(rec, dict) or not rec.get("passes"):
        return None
    start = {op_id: s for op_id, s, _ in tl.spans}
    end = {op_id: e for op_id, _, e in tl.spans}
    stages = int(rec["stages"])
    busy = [0.0] * stages
    extra = [0.0] * stages
    f_sum, f_n, b_sum, b_n = [0.0] * stages, [0] * stages, [0.0] * stages, [0] * stages
    lo, hi = float("inf"), 0.0
    for stage, kind, _mb, _chunk, first, last in rec["passes"]:
        t0, t1 = start.get(first), end.get(last)
        if t0 is None or t1 is None:
            continue
        span = max(0.0, t1 - t0)
        busy[stage] += span
        lo, hi = min(lo, t0), max(hi, t1)
        # passes starting inside the steady-state period occur ``periods`` more times in the real step
        times = 1 + (window.periods if window is not None and window.start_s <= t0 < window.end_s else 0)
        if window is not None:
            extra[stage] += max(0.0, min(t1, window.end_s) - max(t0, window.start_s))
        if kind == "F":
            f_sum[stage] += span * times
            f_n[stage] += times
        else:
            b_sum[stage] += span * times
            b_n[stage] += times
    span_s = max(hi - lo, 0.0)
    if window is not None:
        span_s += window.periods * (window.end_s - window.start_s)
        busy = [b + window.periods * x for b, x in zip(busy, extra)]
    peaks = [0] * stages
    for r, s in stage_of.items():
        if 0 <= s < stages:
            peaks[s] = max(peaks[s], tl.peak_memory(r)[0])
    layers = rec.get("stage_layers") or []
    v = int(rec.get("virtual_stages") or 1)
    per_stage = []
    for s in range(stages):
        idle = max(span_s - busy[s], 0.0)
        per_stage.append({"stage": s, "layers": sum(layers[s + k * stages] for k in range(v)) if layers else None,
                          "forward_s": f_sum[s] / f_n[s] if f_n[s] else 0.0,
                          "backward_s": b_sum[s] / b_n[s] if b_n[s] else 0.0,
                          "busy_s": busy[s], "idle_s": idle, "peak_memory_gb": peaks[s] / GB})
    bubble = 100.0 * sum(p["idle_s"] for p in per_stage) / (stages * span_s) if span_s > 0 else 0.0
    simulated = int(rec.get("micro_batches") or 0)
    return {"schedule": rec.get("schedule"), "stages": stages, "virtual_stages": v,
            "micro_batches": simulated, "placement": rec.get("placement"), "window_s": span_s,
            "bubble_pct": bubble, "per_stage": per_stage, "simulated_micro_batches": simulated,
            "periods_extrapolated": window.periods if window is not None else 0}

"""Validation rows of pipeline parallelism: Megatron-LM's published step times (``tspsim validate``; issue 14).

Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", Table 5) time one
training iteration of two GPT models on Selene (DGX A100 80 GB nodes, 8 × 200 Gb/s HDR InfiniBand per node),
sequence 2048, micro-batch 1, tensor parallelism 8 — with full activation recomputation, and with sequence
parallelism plus selective recomputation:

* GPT-3 175B (h 12288, L 96, 96 heads) on 64 GPUs: TP 8 × PP 8, interleaved with 3 virtual stages, global batch
  64 — 18.13 s and 13.75 s;
* 1T (h 25600, L 128, 160 heads) on 512 GPUs: TP 8 × PP 64, not interleaved, global batch 512 — 94.42 s and
  71.49 s.

Simulated with the ``megatron-lm-2022`` stack on ``dgx-a100-128node`` (``--schedule tp --recompute full`` and
``--schedule satp-seq --recompute selective``). No constant was fitted to these numbers: they are independent
checks, tolerance 10 %. The long steps are timed from a probe of fewer micro-batches whose steady state repeats
(:mod:`tspsim.simulate.pipeline_timer`).

The per-op breakdown of a stage (README, "Pipeline parallelism and FSDP/ZeRO") finds the Megatron-LM 2022
mechanisms modelled — recompute re-running the layer forward with its TP collectives, the async TP all-reduce and
SP reduce-scatter under the weight-gradient GEMM, SP's blocking forward collectives, the all-gather redo,
blocking p2p with scatter-gather, the interleaved schedule's extra transfers, the tied-embedding all-reduce, the
LM head on the last stage, the GEMMs' tile-and-wave quantisation under cuBLAS 11's 256×128 tiles on 108 SMs
(:func:`tspsim.engine.costs.wave_efficiency`), each wave's epilogue after its main loop
(:func:`tspsim.engine.costs.epilogue_seconds`) and the weight-gradient GEMMs accumulating into the fp32 main
gradient (gradient-accumulation fusion, the stack's ``kernels.wgrad_accumulate``). Before the last two every row
ran 6–11 % fast, with misses that did not scale with compute (the full-recompute step computes ~40 % more than
the SP + selective one yet missed by about as much or less); the weight-gradient accumulation, the largest part
of what they add, costs the same in both columns (the same weight gradients), which is that pattern. Each row's
note says what is modelled and what is not (:data:`MECHANISM`) and measures the residual (:func:`miss_measures`).
"""

from __future__ import annotations

from typing import Any

from tspsim.core.forked import forked_map
from tspsim.explore.validation_row import Row, try_row

KORTHIKANTI_TABLE5 = ("V. Korthikanti, J. Casper, S. Lym, L. McAfee, M. Andersch, M. Shoeybi, B. Catanzaro, \"Reducing "
                      "Activation Recomputation in Large Transformer Models\", arXiv:2205.05198 (2022), Table 5: time "
                      "per training iteration on Selene (DGX A100 80 GB, 8 x 200 Gb/s HDR InfiniBand per node), "
                      "sequence 2048, micro-batch 1, TP 8; https://arxiv.org/abs/2205.05198")
"""Source of the step-time rows."""

TOLERANCE_PCT = 10.0
"""Declared tolerance of the step-time rows (the issue's)."""

CASES = (
    # (id, label, model, GPUs, PP, V, global batch, full-recompute seconds, SP + selective seconds)
    ("gpt3-175b", "175B TP8×PP8 V=3, 64 GPUs", "gpt3-175b", 64, 8, 3, 64, 18.13, 13.75),
    ("megatron-1t", "1T TP8×PP64, 512 GPUs", "megatron-1t", 512, 64, 1, 512, 94.42, 71.49),
)
"""The published rows of Table 5 the issue names."""

VARIANTS = (("full", "tp", "full", "full recompute"), ("sp-selective", "satp-seq", "selective", "SP + selective"))
"""(id suffix, schedule, recompute, label) of the two columns."""


MECHANISM = ("modelled as Megatron-LM 2022 runs them: full and selective recompute with their collectives, the "
             "async TP all-reduce and SP reduce-scatter under wgrad, SP's blocking forward collectives and redo, "
             "scatter-gather and blocking p2p, the interleaved schedule's transfers, bubble, tied-embedding "
             "all-reduce, LM head, optimizer; the GEMMs at the A100 preset's 0.85 x 312 TF best-shape ceiling "
             "([unverified] in hardware.md) times cuBLAS 11's tile-and-wave quantisation, each wave's epilogue after "
             "its main loop at the HBM rate, and every weight-gradient GEMM accumulating into the fp32 main gradient "
             "(gradient-accumulation fusion: read 4 + write 4 bytes per element, every micro-batch). Not modelled: "
             "A100's 40 MB L2 absorbing a wave's stores (no L2 bandwidth in the reference data; it would make the "
             "epilogues cheaper), Megatron-LM 2022's torch.cuda.synchronize() after every p2p call and in its timers, "
             "host work per pass")
"""What the Table 5 rows model and do not (every row's note; see the module docstring)."""


def command(model: str, gpus: int, pp: int, v: int, batch: int, schedule: str, recompute: str) -> str:
    """The ``tspsim run`` command line that reproduces a row."""
    inter = f" --virtual-stages {v}" if v > 1 else ""
    return (f"tspsim run --topology dgx-a100-128node --model {model} --seq 2k --schedule {schedule} --degree 8 "
            f"--pp {pp}{inter} --global-batch {batch} --micro-batch 1 --gpus {gpus} --recompute {recompute} "
            "--stack megatron-lm-2022")


def step_time(model: str, gpus: int, pp: int, v: int, batch: int, schedule: str, recompute: str
              ) -> tuple[float, float, int]:
    """(simulated step time s, compute s per rank, pipeline passes per stage) of one Table 5 configuration.

    Passes per stage: the forward and the backward of each micro-batch on each of the stage's V model chunks,
    2 · m · V.
    """
    from tspsim.simulate import Point, simulate
    from tspsim.spec.pipeline_spec import PipelineSpec

    point = Point(schedule, "dgx-a100-128node", model=model, mode="train", seq_len=2048, batch=1, degree=8,
                  gpus=gpus, options=(("recompute", recompute), ("stack", "megatron-lm-2022")),
                  pipeline=PipelineSpec(stages=pp, virtual_stages=v, global_batch=batch))
    entry = simulate(point).entry
    passes = 2 * int(entry["micro_batches"]) * int(entry["degrees"].get("V", 1))
    return float(entry["step_time_s"]), float(entry["compute_s"]), passes


def miss_measures(published_s: float, simulated_s: float, compute_s: float, passes: int,
                  other: tuple[float, float, float]) -> str:
    """The note's figures for one row: its residual per pipeline pass and per compute second, and the other column's.

    ``other`` is the model's other column as (published s, simulated s, compute s). With R = published −
    simulated (positive: the simulation is fast): R / passes (ms per pass), R / compute_s (%), and the other
    column's R with its compute relative to this one's.
    """
    miss = published_s - simulated_s
    o_pub, o_sim, o_compute = other
    return (f"residual (published - simulated) {miss:+.2f} s = {1e3 * miss / passes:+.2f} ms per pipeline pass "
            f"({passes:,} per stage) = {100 * miss / compute_s:+.1f}% of its compute ({compute_s:.2f} s per rank); "
            f"the other column's residual {o_pub - o_sim:+.2f} s with {100 * (o_compute / compute_s - 1):+.0f}% "
            "compute")


def pipeline_rows(jobs: int | None = None) -> list[Row]:
    """The four Table 5 step times against the simulation.

    The four simulations are independent: with ``jobs`` ≥ 2 (default: the CPU count) they are shared between this
    process and a forked one (:func:`tspsim.core.forked.forked_map`, weighted by GPUs: the two 1T steps take ~85 %
    of the time); the rows are the same either way.
    """
    cases = [(key, label, model, gpus, pp, v, batch, full_s if suffix == "full" else sel_s, suffix, schedule,
              recompute, what)
             for key, label, model, gpus, pp, v, batch, full_s, sel_s in CASES
             for suffix, schedule, recompute, what in VARIANTS]
    args = [(model, gpus, pp, v, batch, schedule, recompute)
            for _k, _l, model, gpus, pp, v, batch, _p, _s, schedule, recompute, _w in cases]
    times = forked_map(_step_time_of, args, [float(a[1]) for a in args], jobs)
    done = {(case[0], case[8]): (case[7], *result) for case, (ok, result) in zip(cases, times) if ok}
    rows = []
    for (key, label, *_rest, published, suffix, _sch, _rec, what), a, (ok, value) in zip(cases, args, times):
        row = Row(f"step.{key}.{suffix}", f"step {label}, {what}", "dgx-a100-128node", "s", published,
                  TOLERANCE_PCT, KORTHIKANTI_TABLE5)
        row = try_row(row, lambda ok=ok, value=value: _outcome(ok, value))
        parts = [row.note] if row.note else []
        parts.append(MECHANISM)
        other = done.get((key, "full" if suffix != "full" else "sp-selective"))
        if ok and other is not None:
            step_s, compute_s, passes = value
            parts.append(miss_measures(published, step_s, compute_s, passes, other[:3]))
        parts.append(f"reproduce: {command(*a)}")
        row.note = "; ".join(parts)
        rows.append(row)
    return rows


def _step_time_of(args: tuple[Any, ...]) -> tuple[float, float, int]:
    """:func:`step_time` of one argument tuple (what :func:`forked_map` calls)."""
    return step_time(*args)


def _outcome(ok: bool, value: Any) -> float:
    """The step time, or the exception computing it raised (re-raised here, for :func:`try_row`)."""
    if not ok:
        raise value
    return float(value[0])

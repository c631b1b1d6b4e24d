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

Every row runs fast (the simulation is optimistic). Each row's note names the residual miss's mechanism
(:data:`MECHANISM`): the per-op breakdown of a stage (README, "Pipeline parallelism and FSDP/ZeRO") finds the
Megatron-LM 2022 mechanisms modelled — recompute re-running the layer forward with its TP collectives, the
async TP all-reduce and SP reduce-scatter under the weight-gradient GEMM, SP's blocking forward collectives,
the all-gather redo, blocking p2p with scatter-gather, the interleaved schedule's extra transfers, the
tied-embedding all-reduce, the LM head on the last stage, and the GEMMs' tile-and-wave quantisation under
cuBLAS 11's 256×128 tiles on 108 SMs (:func:`tspsim.engine.costs.wave_efficiency`) — and each of those pieces
small or at its first-principles time; what is left is the layer's GEMM rate (77–89 % of a layer), whose
best-shape ceiling 0.85 × 312 TF is hardware.md's [unverified] figure.
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


MECHANISM = {
    "full": ("residual miss: per-layer compute - the GEMMs (77% of a layer at 175B, 87% at 1T) run at the A100 "
             "preset's 0.85 x 312 TF best-shape ceiling ([unverified] in hardware.md) times their tile-and-wave "
             "quantisation (cuBLAS 11: 256x128 tiles in waves of 108 SMs; 8/9 on most 175B GEMMs); sustained "
             "clocks are not modelled. Recompute with its TP all-reduces, the async TP gradient all-reduce, "
             "scatter-gather and blocking p2p, bubble, tied-embedding all-reduce and optimizer are modelled as "
             "Megatron-LM 2022 runs them"),
    "sp-selective": ("residual miss: per-layer compute - the GEMMs (80% of a layer at 175B, 89% at 1T) run at the "
                     "A100 preset's 0.85 x 312 TF best-shape ceiling ([unverified] in hardware.md) times their "
                     "tile-and-wave quantisation; larger than the full-recompute miss because exposed communication "
                     "is a smaller share of an SP layer. SP collectives (blocking forward, redo under dgrad, "
                     "reduce-scatter under wgrad) and the core-attention recompute with its dropout mask are "
                     "modelled as the 2022 code"),
}
"""Mechanism of each column's residual miss (the row's note; see the module docstring)."""


def command(model: str, gpus: int, pp: int, v: int, batch: int, schedule: str, recompute: str) -> str:
    """The ``tspsim run`` command line that reproduces a row."""
    inter = f" --virtual-stages {v}" if v > 1 else ""
    return (f"tspsim run --topology dgx-a100-128node --model {model} --seq 2k --schedule {schedule} --degree 8 "
            f"--pp {pp}{inter} --global-batch {batch} --micro-batch 1 --gpus {gpus} --recompute {recompute} "
            "--stack megatron-lm-2022")


def step_time(model: str, gpus: int, pp: int, v: int, batch: int, schedule: str, recompute: str) -> float:
    """Simulated step time (s) of one Table 5 configuration."""
    from tspsim.simulate import Point, simulate
    from tspsim.spec.pipeline_spec import PipelineSpec

    point = Point(schedule, "dgx-a100-128node", model=model, mode="train", seq_len=2048, batch=1, degree=8,
                  gpus=gpus, options=(("recompute", recompute), ("stack", "megatron-lm-2022")),
                  pipeline=PipelineSpec(stages=pp, virtual_stages=v, global_batch=batch))
    return float(simulate(point).entry["step_time_s"])


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
    rows = []
    for (key, label, *_rest, published, suffix, _sch, _rec, what), a, (ok, value) in zip(cases, args, times):
        row = Row(f"step.{key}.{suffix}", f"step {label}, {what}", "dgx-a100-128node", "s", published,
                  TOLERANCE_PCT, KORTHIKANTI_TABLE5)
        row = try_row(row, lambda ok=ok, value=value: _outcome(ok, value))
        row.note = f"{row.note + '; ' if row.note else ''}{MECHANISM[suffix]}; reproduce: {command(*a)}"
        rows.append(row)
    return rows


def _step_time_of(args: tuple[Any, ...]) -> float:
    """:func:`step_time` of one argument tuple (what :func:`forked_map` calls)."""
    return step_time(*args)


def _outcome(ok: bool, value: Any) -> float:
    """The step time, or the exception computing it raised (re-raised here, for :func:`try_row`)."""
    if not ok:
        raise value
    return float(value)

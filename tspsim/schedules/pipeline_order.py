"""The order in which a pipeline stage runs its forward and backward passes (GPipe, 1F1B, interleaved 1F1B).

A pipeline of P stages processes m micro-batches per step. Each stage is a compute stream that runs its
passes in a fixed order; the op graph adds the cross-stage dependencies (activations forward, gradients
backward) as point-to-point transfers, so the bubble emerges from the simulation, it is not a formula.
This module only says *which pass comes next on a stage*:

* **GPipe** (Huang et al. 2019): all m forwards, then all m backwards. Stage memory holds m micro-batches
  of activations at the end of the forward phase.
* **1F1B** (PipeDream-Flush; Narayanan et al. 2021 §2.2.1): stage s (0-based) runs
  ``min(P − s − 1, m)`` warm-up forwards, then alternates one forward and one backward, then drains the
  remaining backwards. It holds at most ``P − s`` micro-batches in flight; with uniform stages its step
  takes (m + P − 1)·(t_f + t_b), the same as GPipe.
* **Interleaved 1F1B** (Narayanan et al. 2021 §2.2.2, Megatron-LM ``forward_backward_pipelining_with_
  interleaving``): each stage holds V model chunks (virtual stages); the m·V virtual micro-batches are
  taken in groups of P: virtual forward k runs chunk ``(k // P) mod V`` on micro-batch
  ``(k // (P·V))·P + k mod P``, and virtual backward k runs chunk ``V − 1 − (k // P) mod V`` on the same
  micro-batch index. Stage s warms up with ``(P − s − 1)·2 + (V − 1)·P`` forwards (at most m·V), then
  alternates, then drains (every forward first when m = P, as Megatron-LM does). The bubble shrinks
  by V: (P − 1)·(t_f + t_b)/V.

Megatron requires m to be a multiple of P for the interleaved schedule; :func:`pass_order` raises
:class:`~tspsim.core.errors.ConfigError` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tspsim.core.errors import ConfigError

PipelineSchedule = Literal["gpipe", "1f1b", "interleaved"]
PIPELINE_SCHEDULES = ("gpipe", "1f1b", "interleaved")
"""Pipeline schedules by name (``--pp-schedule``)."""


@dataclass(frozen=True)
class Pass:
    """One forward or backward pass of one micro-batch through one model chunk of a stage."""

    kind: Literal["F", "B"]
    """``F`` forward or ``B`` backward."""
    micro_batch: int
    """Micro-batch index, 0 … m − 1."""
    chunk: int = 0
    """Model chunk (virtual stage) on this stage, 0 … V − 1 (always 0 without interleaving)."""


def pass_order(schedule: str, stages: int, stage: int, micro_batches: int, chunks: int = 1) -> list[Pass]:
    """The passes stage ``stage`` of ``stages`` runs, in order, for ``micro_batches`` micro-batches.

    Args:
        schedule: ``gpipe``, ``1f1b`` or ``interleaved``.
        stages: P, the number of pipeline stages.
        stage: this stage's index s, 0 … P − 1.
        micro_batches: m, micro-batches per step (per data-parallel replica).
        chunks: V, model chunks per stage (``interleaved`` only; 1 otherwise).

    Raises:
        ConfigError: unknown schedule, V > 1 without ``interleaved``, or m not a multiple of P with it.
    """
    if schedule not in PIPELINE_SCHEDULES:
        raise ConfigError(f"unknown pipeline schedule {schedule!r}: choose one of {', '.join(PIPELINE_SCHEDULES)}")
    if not 0 <= stage < stages:
        raise ConfigError(f"stage {stage} is outside 0..{stages - 1}")
    if micro_batches < 1:
        raise ConfigError("a pipeline step needs at least one micro-batch")
    if schedule != "interleaved" and chunks != 1:
        raise ConfigError(f"--virtual-stages {chunks} needs the interleaved schedule (--pp-schedule interleaved)")
    if schedule == "gpipe":
        return [Pass("F", i) for i in range(micro_batches)] + [Pass("B", i) for i in range(micro_batches)]
    if schedule == "1f1b":
        return _one_f_one_b(stages, stage, micro_batches)
    if micro_batches % stages:
        raise ConfigError(f"interleaved 1F1B needs the micro-batches per step ({micro_batches}) to be a multiple of "
                          f"the pipeline stages ({stages}), as Megatron-LM does; use --global-batch so that "
                          f"global batch / (micro-batch · DP) is a multiple of {stages}")
    return _interleaved(stages, stage, micro_batches, chunks)


def _one_f_one_b(stages: int, stage: int, m: int) -> list[Pass]:
    warmup = min(stages - stage - 1, m)
    order = [Pass("F", i) for i in range(warmup)]
    f, b = warmup, 0
    while f < m:
        order += [Pass("F", f), Pass("B", b)]
        f += 1
        b += 1
    order += [Pass("B", i) for i in range(b, m)]
    return order


def _interleaved(stages: int, stage: int, m: int, chunks: int) -> list[Pass]:
    total = m * chunks

    def forward(k: int) -> Pass:
        group = stages * chunks
        return Pass("F", (k // group) * stages + k % stages, (k // stages) % chunks)

    def backward(k: int) -> Pass:
        group = stages * chunks
        return Pass("B", (k // group) * stages + k % stages, chunks - 1 - (k // stages) % chunks)

    if m == stages:  # Megatron-LM runs every forward first when m = P ("all warm-up")
        warmup = total
    else:
        warmup = min((stages - stage - 1) * 2 + (chunks - 1) * stages, total)
    order = [forward(k) for k in range(warmup)]
    f, b = warmup, 0
    while f < total:
        order += [forward(f), backward(b)]
        f += 1
        b += 1
    order += [backward(k) for k in range(b, total)]
    return order


def in_flight_peak(order: list[Pass]) -> int:
    """Most (micro-batch, chunk) forwards whose backward has not run yet at any point of ``order``."""
    live: set[tuple[int, int]] = set()
    peak = 0
    for p in order:
        key = (p.micro_batch, p.chunk)
        if p.kind == "F":
            live.add(key)
            peak = max(peak, len(live))
        else:
            live.discard(key)
    return peak

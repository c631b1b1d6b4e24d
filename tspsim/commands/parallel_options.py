"""Pipeline and ZeRO options shared by ``run`` and ``generate`` (next to :func:`tspsim.commands.run.plan_options`).

``--pp``, ``--virtual-stages``, ``--pp-schedule``, ``--global-batch``, ``--micro-batch``, ``--layout``,
``--pp-layers`` and ``--zero`` reach the command as one :class:`ParallelArgs` argument named ``parallel``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from tspsim.core.errors import TspsimError
from tspsim.spec.pipeline_spec import PIPELINE_SCHEDULES, PLACEMENTS, PipelineSpec, parse_layer_split


@dataclass(frozen=True)
class ParallelArgs:
    """The pipeline and ZeRO options, parsed (``--pp``, ``--virtual-stages``, ``--global-batch``, ``--zero`` …)."""

    pipeline: PipelineSpec
    """Pipeline stages, virtual stages, schedule, global batch, placement, layer split."""
    zero: int | None
    """``--zero N`` (None: the ``zero`` assumption's default, or the stack's)."""
    micro_batch: int | None
    """``--micro-batch b`` (the same as ``--batch b``)."""

    def batch(self, batch: int) -> int:
        """The micro-batch from ``--batch`` and ``--micro-batch`` (one line when they disagree)."""
        if self.micro_batch is None:
            return batch
        if batch != 1 and batch != self.micro_batch:
            raise TspsimError(f"--micro-batch {self.micro_batch} contradicts --batch {batch} (both set the "
                              "micro-batch); give one")
        return self.micro_batch


def parallel_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Pipeline and ZeRO options (``run``, ``generate``): the command receives them as one ``parallel`` argument."""
    import functools

    names = ("pp", "virtual_stages", "pp_schedule", "global_batch", "micro_batch", "layout", "pp_layers", "zero")

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        vals = {n: kwargs.pop(n) for n in names}
        pipe = PipelineSpec(vals["pp"], vals["virtual_stages"], vals["pp_schedule"] or "", vals["global_batch"],
                            vals["layout"] or "", parse_layer_split(vals["pp_layers"]))
        pipe.check()
        kwargs["parallel"] = ParallelArgs(pipe, vals["zero"], vals["micro_batch"])
        return f(*args, **kwargs)

    decorators = [
        click.option("--pp", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Pipeline stages P (train and forward). Stages are placed outermost (--layout)."),
        click.option("--virtual-stages", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Model chunks per stage V (interleaved 1F1B, Narayanan et al. 2021); V ≥ 2 implies "
                          "--pp-schedule interleaved."),
        click.option("--pp-schedule", type=click.Choice(PIPELINE_SCHEDULES), default=None,
                     help="Pipeline schedule (default: 1f1b, or interleaved with --virtual-stages ≥ 2)."),
        click.option("--global-batch", type=click.IntRange(min=1), default=None,
                     help="Sequences per step over all replicas: G / (micro-batch · DP) micro-batches per step "
                          "(gradient accumulation). Default: one micro-batch per replica."),
        click.option("--micro-batch", type=click.IntRange(min=1), default=None,
                     help="Sequences per micro-batch (the same as --batch)."),
        click.option("--layout", type=click.Choice(PLACEMENTS), default=None,
                     help="Rank order from the innermost axis out: mp-dp-pp (default, Megatron-LM: stages "
                          "outermost) or mp-pp-dp (each pipeline replica on consecutive nodes)."),
        click.option("--pp-layers", default=None, metavar="N,N,...",
                     help="Decoder blocks per stage (per virtual stage with --virtual-stages), model order. "
                          "Default: an even split."),
        click.option("--zero", type=click.IntRange(0, 3), default=None,
                     help="ZeRO stage over data parallelism: 0 none, 1 optimizer state, 2 + gradients, "
                          "3 + parameters (FSDP). Same as --option zero=N."),
    ]
    out: Callable[..., Any] = wrapper
    for dec in reversed(decorators):
        out = dec(out)
    return out

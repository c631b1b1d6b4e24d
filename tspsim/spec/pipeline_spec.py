"""What a pipeline-parallel layout asks for: stages, virtual stages, schedule, global batch, placement, layer split.

A :class:`PipelineSpec` is the by-value request (what ``--pp``, ``--virtual-stages``, ``--pp-schedule``,
``--global-batch``, ``--layout`` and ``--pp-layers`` give, and what a sweep point carries);
:func:`tspsim.spec.layout.make_layout` validates it against the model, the batch and the GPUs and records the
resolved values on the :class:`~tspsim.spec.layout.Layout`.

Placement (``--layout``) names the rank order from the innermost axis out, as Megatron-LM's ``--order``
does: ``mp-dp-pp`` (default, Megatron-LM's ``tp-dp-pp``) puts the model-parallel group inside the node,
data-parallel replicas of a stage next to each other and pipeline stages outermost, so each stage owns a
block of nodes; ``mp-pp-dp`` keeps each pipeline replica on consecutive nodes (the stages of one replica are
neighbours, data parallelism outermost).
"""

from __future__ import annotations

from dataclasses import dataclass

from tspsim.core.errors import ConfigError

PLACEMENTS = ("mp-dp-pp", "mp-pp-dp")
"""Rank orders from the innermost axis out (``--layout``): model-parallel group, data parallelism, pipeline."""
DEFAULT_PLACEMENT = "mp-dp-pp"
"""Megatron-LM's default order (tp-cp-ep-dp-pp): pipeline stages outermost."""
PIPELINE_SCHEDULES = ("gpipe", "1f1b", "interleaved")
"""Pipeline schedules (``--pp-schedule``); the interleaved one needs ``--virtual-stages`` V ≥ 2."""
MAX_STAGES = 1024
"""Most pipeline stages (a stage holds at least one decoder block, and models have at most 1,024)."""


@dataclass(frozen=True)
class PipelineSpec:
    """A pipeline request by value; defaults mean "no pipeline, one micro-batch per step"."""

    stages: int = 1
    """P, pipeline stages (``--pp``)."""
    virtual_stages: int = 1
    """V, model chunks per stage (``--virtual-stages``; V ≥ 2 implies the interleaved schedule)."""
    schedule: str = ""
    """``gpipe``, ``1f1b`` or ``interleaved``; empty: ``interleaved`` when V ≥ 2, else ``1f1b``."""
    global_batch: int | None = None
    """G, sequences per step over all replicas (``--global-batch``); None: one micro-batch per replica."""
    placement: str = ""
    """Rank order (``--layout``, :data:`PLACEMENTS`); empty: :data:`DEFAULT_PLACEMENT`."""
    layers: tuple[int, ...] = ()
    """Decoder blocks per virtual stage in model order (``--pp-layers``); empty: split evenly."""

    @property
    def resolved_schedule(self) -> str:
        """The pipeline schedule in force."""
        return self.schedule or ("interleaved" if self.virtual_stages > 1 else "1f1b")

    @property
    def resolved_placement(self) -> str:
        """The rank order in force."""
        return self.placement or DEFAULT_PLACEMENT

    def check(self) -> None:
        """Range and consistency checks that need no model or topology (one-line errors).

        Raises:
            ConfigError: naming the flag, what was given and a value that works.
        """
        if isinstance(self.stages, bool) or not isinstance(self.stages, int) or not 1 <= self.stages <= MAX_STAGES:
            raise ConfigError(f"--pp {self.stages!r}: give a whole number of pipeline stages from 1 to {MAX_STAGES}")
        v = self.virtual_stages
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_STAGES:
            raise ConfigError(f"--virtual-stages {v!r}: give a whole number from 1 to {MAX_STAGES}")
        if self.schedule and self.schedule not in PIPELINE_SCHEDULES:
            raise ConfigError(f"--pp-schedule {self.schedule!r}: choose one of {', '.join(PIPELINE_SCHEDULES)}")
        sched = self.resolved_schedule
        if v > 1 and sched != "interleaved":
            raise ConfigError(f"--virtual-stages {v} needs the interleaved schedule, but --pp-schedule is {sched}; "
                              "drop --pp-schedule or give --pp-schedule interleaved")
        if sched == "interleaved" and v < 2:
            raise ConfigError("--pp-schedule interleaved needs --virtual-stages V ≥ 2 (model chunks per stage), "
                              "e.g. --virtual-stages 2")
        if self.stages == 1 and (v > 1 or self.schedule):
            raise ConfigError("--virtual-stages and --pp-schedule need a pipeline: give --pp P with P ≥ 2")
        if self.placement and self.placement not in PLACEMENTS:
            raise ConfigError(f"--layout {self.placement!r}: choose one of {', '.join(PLACEMENTS)} (rank order "
                              "from the innermost axis out: mp = model-parallel group, dp = data parallelism, "
                              "pp = pipeline stages)")
        g = self.global_batch
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or not 1 <= g <= 1 << 30):
            raise ConfigError(f"--global-batch {g!r}: give a whole number of sequences from 1 to {1 << 30:,}")
        if self.layers and self.stages == 1:
            raise ConfigError("--pp-layers splits the blocks over pipeline stages: give --pp P with P ≥ 2")
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.layers):
            raise ConfigError(f"--pp-layers {','.join(str(n) for n in self.layers)}: every stage needs a whole "
                              "number ≥ 1 of blocks")

    def stage_layers(self, layers: int) -> tuple[int, ...]:
        """Blocks per virtual stage (P·V of them, model order) for a model of ``layers`` blocks.

        Raises:
            ConfigError: when the split does not add up or an even split is impossible.
        """
        parts = self.stages * self.virtual_stages
        if self.layers:
            if len(self.layers) != parts:
                raise ConfigError(f"--pp-layers gives {len(self.layers)} numbers but the pipeline has {parts} "
                                  f"{'virtual stages (P·V)' if self.virtual_stages > 1 else 'stages'}; give one "
                                  "number per stage")
            if sum(self.layers) != layers:
                raise ConfigError(f"--pp-layers {','.join(str(n) for n in self.layers)} adds up to "
                                  f"{sum(self.layers)} blocks but the model has {layers}")
            return self.layers
        if parts > layers:
            raise ConfigError(f"{parts} {'virtual stages' if self.virtual_stages > 1 else 'pipeline stages'} need "
                              f"at least {parts} blocks but the model has {layers}; use fewer stages")
        if layers % parts:
            even = [d for d in range(1, layers + 1) if layers % d == 0 and d <= parts]
            raise ConfigError(f"{layers} blocks do not split evenly over {parts} "
                              f"{'virtual stages (P·V)' if self.virtual_stages > 1 else 'stages'}; give "
                              f"--pp-layers (one count per stage) or a stage count dividing {layers}, such as "
                              f"{max(even)}")
        return (layers // parts,) * parts


def parse_layer_split(text: str | None) -> tuple[int, ...]:
    """``--pp-layers 3,4,4,3`` → (3, 4, 4, 3); empty or None → ().

    Raises:
        ConfigError: for anything but a comma list of whole numbers ≥ 1.
    """
    if not text:
        return ()
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1 or len(part) > 6:
            raise ConfigError(f"--pp-layers {text!r}: expected a comma list of block counts ≥ 1, e.g. 3,4,4,3")
        out.append(int(part))
    return tuple(out)

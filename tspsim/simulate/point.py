"""The inputs of one simulation point and what simulating it gives (design.md §1 pipeline).

A :class:`Point` names everything a simulation needs by value (preset names or YAML paths, degrees,
options), so sweeps can enumerate, cache and ship it to other processes; :func:`resolve` turns it into
the topology, model, layout, workload and assumptions the lower layers take. :class:`RunResult` holds
the stable JSON entry (design.md §4) and the Timeline for the viewer and exports.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from tspsim.core.errors import ConfigError
from tspsim.engine.timeline import Timeline
from tspsim.schedules import SCHEDULES
from tspsim.spec.assumptions import Assumptions
from tspsim.spec.layout import ZERO_THREE_SCHEDULES, Layout, make_layout
from tspsim.spec.loader import SpecLoader
from tspsim.spec.model import ModelConfig
from tspsim.spec.pipeline_spec import PipelineSpec
from tspsim.spec.topology import Topology
from tspsim.spec.workload import Workload


@dataclass
class RunResult:
    """A finished simulation point."""

    entry: dict[str, Any]
    """The stable ``run`` JSON entry of design.md §4."""
    timeline: Timeline
    """Spans, memory and link series (for the viewer and exports)."""
    topology: Topology
    """Topology simulated on."""
    model: ModelConfig
    """Model simulated."""
    layout: Layout
    """Resolved layout."""
    workload: Workload
    """Workload simulated."""
    assumptions: Assumptions
    """Assumptions in force."""
    timelines: dict[str, Timeline] = field(default_factory=dict)
    """Inference modes: the ``prefill`` and final ``decode_step`` timelines (``timeline`` is one of them)."""


@dataclass(frozen=True)
class Point:
    """The inputs of one simulation point (what a sweep enumerates)."""

    schedule: str
    """Registered schedule name."""
    topology: str
    """Topology preset name or YAML path."""
    model: str = "zyphra-7b"
    """Model preset name or YAML path."""
    mode: str = "train"
    """Workload mode."""
    seq_len: int = 131072
    """Sequence length (tokens)."""
    batch: int = 1
    """Micro-batch per replica."""
    degree: int | None = None
    """D for tsp/tp/sp/satp-*."""
    tp: int | None = None
    """T for tp+sp."""
    sp: int | None = None
    """Σ for tp+sp."""
    gpus: int | None = None
    """Use only this many GPUs of the topology."""
    decode_tokens: int = 0
    """Tokens to generate (decode / generate)."""
    options: tuple[tuple[str, Any], ...] = ()
    """Assumption overrides as (key, value) pairs."""
    search_max_batch: bool = True
    """Inference modes: search the largest batch that fits in HBM (``max_batch``; every probe is a full
    simulation of the step). False writes ``max_batch`` as null. Ignored by ``train`` and ``forward``."""
    pipeline: PipelineSpec = PipelineSpec()
    """Pipeline stages, virtual stages, schedule, global batch, placement and layer split (train and forward)."""


def point_options(point: Point) -> dict[str, Any]:
    """The point's assumption overrides, with the ZeRO stage a schedule implies (``fsdp``: ZeRO-3).

    Raises:
        ConfigError: ``fsdp`` with another ZeRO stage.
    """
    pairs = dict(point.options)
    if point.schedule == "fsdp":
        given = pairs.get("zero", pairs.get("zero1"))
        if given is not None and str(given).lower() not in ("3",):
            raise ConfigError("fsdp is ZeRO-3 (parameters, gradients and optimizer state sharded); for ZeRO-1 or 2 "
                              "data parallelism use --schedule tp --degree 1 --zero N")
        pairs.pop("zero1", None)
        pairs["zero"] = 3
    return pairs


def resolve_layout(point: Point, topo: Topology, model: ModelConfig, specs: SpecLoader | None = None
                   ) -> tuple[Layout, Workload, Assumptions]:
    """The layout, workload and assumptions of ``point`` on loaded definitions (one-line errors).

    ``specs`` reads the stack file once across the calls that share it (default: a fresh loader).
    """
    workload = Workload(point.mode, point.seq_len, point.batch, point.decode_tokens)  # type: ignore[arg-type]
    if point.schedule == "fsdp" and point.mode not in ("train", "forward"):
        raise ConfigError(f"fsdp is a training layout (parameters sharded over data parallelism, gathered per "
                          f"layer); --mode {point.mode} serves with model parallelism: use --schedule tp, tsp or "
                          "satp-batch (or --mode train / forward with fsdp)")
    pairs = point_options(point)
    opts = (specs or SpecLoader()).assumptions(pairs)
    if opts.zero == 3 and point.schedule not in ZERO_THREE_SCHEDULES and not {"zero", "zero1"} & set(pairs):
        # A stack's FSDP default (torchtitan: zero 3) applies where FSDP composes; TSP keeps its weight ring
        # and shards gradients and optimizer state over data parallelism (ZeRO-2) instead of failing.
        opts = replace(opts, zero=2)
    SCHEDULES.get(point.schedule)
    layout = make_layout(point.schedule, topo, model, workload, degree=point.degree, tp=point.tp, sp=point.sp,
                         gpus=point.gpus, opts=opts, pipeline=point.pipeline)
    return layout, workload, opts


def resolve(point: Point, specs: SpecLoader | None = None
            ) -> tuple[Topology, ModelConfig, Layout, Workload, Assumptions]:
    """Load and validate everything ``point`` names (one-line errors for bad names, degrees or options).

    ``specs`` reads each file once across the calls that share it (default: a fresh one).
    """
    specs = specs or SpecLoader()
    topo = specs.topology(point.topology)
    model = specs.model(point.model)
    layout, workload, opts = resolve_layout(point, topo, model, specs)
    return topo, model, layout, workload, opts

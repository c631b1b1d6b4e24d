"""The op graph of a point, without replaying it (``tspsim generate``; the training path of :func:`simulate`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from tspsim.opgraph import OpGraph
from tspsim.schedules import SCHEDULES
from tspsim.schedules.context import BuildContext
from tspsim.schedules.decode import build_decode_step
from tspsim.schedules.prefill import build_prefill
from tspsim.simulate.gc_pacing import settle
from tspsim.simulate.graph_memo import GraphMemo, graph_of
from tspsim.simulate.point import Point, resolve
from tspsim.spec.assumptions import Assumptions
from tspsim.spec.layout import Layout
from tspsim.spec.loader import SpecLoader
from tspsim.spec.model import ModelConfig
from tspsim.spec.topology import Topology
from tspsim.spec.workload import DEFAULT_DECODE_TOKENS, INFERENCE_MODES, Workload

T = TypeVar("T")

Built = tuple[OpGraph, Topology, ModelConfig, Layout, Workload, Assumptions]
"""A graph and everything it was built from."""


def build_graph(point: Point, fold: bool = True, layers: int | None = None, specs: SpecLoader | None = None,
                graphs: GraphMemo | None = None) -> Built:
    """Generate the op graph of ``point`` (no replay).

    Inference modes give one step: ``prefill`` (and ``generate``) the prefill step; ``decode`` the step
    that generates token N = ``decode_tokens`` (default :data:`~tspsim.spec.workload.DEFAULT_DECODE_TOKENS`)
    of each sequence, with ``seq_len + N − 1`` tokens cached — the final step of ``run --mode decode``.
    Its meta records ``decode_tokens`` and ``inference.{context_tokens, token_index, cached_tokens}``.
    ``layers`` builds the same point for the model cut to that many blocks (the planner's memory bound).
    ``graphs``: reuse a graph built for an earlier point that differs only in what the replay reads
    (:mod:`tspsim.simulate.graph_memo`; training and forward steps).
    """
    topo, model, layout, workload, opts = resolve(point, specs)
    if layers is not None:
        model = replace(model, layers=layers)

    def build() -> OpGraph:
        return built(BuildContext(model, topo, layout, workload, opts, fold=fold), _build, point)

    memo = None if workload.mode in INFERENCE_MODES else graphs
    graph = graph_of(memo, point.schedule, fold, topo, (model, layout, workload, opts), build)
    return graph, topo, model, layout, workload, opts


def built(ctx: BuildContext, build: Callable[..., T], *args: Any) -> T:
    """``build(ctx, *args)``, then ``ctx`` forgets the graph and the collector skips it.

    :meth:`BuildContext.detach`: no reference cycle through the build's helpers keeps the graph alive once it is
    unused; :func:`~tspsim.simulate.gc_pacing.settle`: inside a paced command no collector pass walks its ops again
    (README "Speed"). Every graph a simulation builds goes through here (training and inference steps, decode
    steps re-costed by :class:`~tspsim.simulate.decode_timer.DecodeTimer`, max-batch probes).
    """
    try:
        graph = build(ctx, *args)
    finally:
        ctx.detach()
    settle()
    return graph


def _build(ctx: BuildContext, point: Point) -> OpGraph:
    """The graph of ``point`` (see :func:`build_graph`) in ``ctx``."""
    workload = ctx.workload
    if workload.mode in INFERENCE_MODES:  # the representative step: prefill, or the final decode step
        if workload.mode in ("prefill", "generate"):
            return build_prefill(ctx)
        tokens = workload.decode_tokens or DEFAULT_DECODE_TOKENS
        graph = build_decode_step(ctx, workload.seq_len + tokens - 1).graph
        graph.meta["decode_tokens"] = tokens
        graph.meta.setdefault("inference", {}).update(
            {"context_tokens": workload.seq_len, "token_index": tokens,
             "cached_tokens": workload.seq_len + tokens - 1})
        return graph
    return SCHEDULES.get(point.schedule).build(ctx)

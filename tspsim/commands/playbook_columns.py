"""The default comparison's playbook columns: the best FSDP and PTD-P layouts at the same GPUs and global batch.

``tspsim run`` without ``--schedule`` (training) adds them after tsp, tp and tp+sp (issue 14). The search
simulates the candidates in the order of a lower bound on their step time and skips those whose bound already
loses to the best simulated (:func:`bounded_best`); the column chosen is the one simulating every candidate
would choose.
"""

from __future__ import annotations

from typing import Any

import click

from tspsim.commands.point_progress import PointProgress
from tspsim.core.errors import TspsimError


def playbook_results(args: Any, seq: int, pairs: tuple[tuple[str, Any], ...], base: list[Any], *,
                     fold: bool, record_links: bool, specs: Any = None) -> list[tuple[str, Any]]:
    """(family, result) of the best FSDP and the best PTD-P layout (:mod:`tspsim.explore.playbooks`).

    ``args``: the run's :class:`tspsim.commands.run.PlanArgs`. Same GPUs and global batch as the first column
    (``--global-batch``, else its micro-batch × replicas); each family's layouts are simulated (progress on
    stderr) and the fastest that fits is re-simulated for the report. None fits: a note on stderr.
    """
    from tspsim.explore.max_batch import simulate_with_max_batch
    from tspsim.explore.playbooks import PLAYBOOKS, playbook_points, valid_points

    if not base:
        return []
    first = base[0].entry
    g = args.pipeline.global_batch or first["batch"] * first["replicas"]
    out = []
    for family in PLAYBOOKS:
        points = valid_points(playbook_points(family, args.topology, args.model, seq, g, pairs, args.gpus), specs)
        if not points:
            click.echo(f"note: no {family} layout takes a global batch of {g} on these GPUs", err=True)
            continue
        progress = PointProgress(f"searching the best {family} layout ({len(points)} candidates)")
        try:
            best, skipped = bounded_best(points, fold=fold, specs=specs)
        except BaseException:
            progress.finish(failed=True)
            raise
        progress.finish()
        if skipped:
            click.echo(f"  ({skipped} of them not simulated: their step time's lower bound already loses)", err=True)
        if best is None:
            click.echo(f"note: no {family} layout fits in memory", err=True)
            continue
        if record_links:
            best = simulate_with_max_batch(_point_of(best, points), fold=fold, record_links=True, specs=specs)
        out.append((family, best))
    return out


def playbook_line(found: list[tuple[str, Any]]) -> str:
    """``playbooks: the last 2 columns are …``: what the extra columns of the default comparison are ('' if none)."""
    if not found:
        return ""
    from tspsim.analysis.entries import schedule_label

    names = {"fsdp": "FSDP", "ptd-p": "PTD-P"}
    parts = [f"{schedule_label(r.entry)} is the best {names.get(f, f)} layout" for f, r in found]
    what = f"the last {len(found)} columns were" if len(found) > 1 else "the last column was"
    return (f"playbooks: {what} searched, not asked for: {'; '.join(parts)} at the same GPUs and global batch "
            "(README: Pipeline parallelism and FSDP/ZeRO)")


def _point_of(result: Any, points: list[Any]) -> Any:
    """The candidate point a result came from (same schedule, degrees, batch, options and pipeline)."""
    lay = result.layout
    for p in points:
        if (p.schedule == lay.schedule and p.batch == result.workload.batch and p.pipeline.stages == lay.pp
                and p.pipeline.virtual_stages == lay.virtual_stages
                and dict(p.options).get("zero") == result.assumptions.zero):
            return p
    raise TspsimError("internal: the best playbook layout has no candidate point")


KEEP_GRAPH_OPS = 1_000_000
"""Most ops of the bounded candidates' graphs kept between their bound and their replay (about 1–2 KB each);
beyond that a candidate's graph is built again when it is simulated."""


def bounded_best(points: list[Any], fold: bool = True, specs: Any = None) -> tuple[Any, int]:
    """(the result :func:`tspsim.explore.playbooks.best_playbook` returns for ``points``, candidates skipped).

    That is the fastest candidate (tokens/s) that fits in HBM, the first in ``points`` order among equals, or
    None. Each training candidate has its graph built first and a lower bound on its step time computed
    (:func:`tspsim.engine.bound.step_time_lower_bound`: every op at its least duration), so an upper bound
    U = tokens per step / bound on its tokens/s; candidates are simulated by decreasing U, and one with
    U < (1 − 10⁻⁹) × the best tokens/s so far is skipped: its simulated tokens/s would be below U, so it could
    not be chosen (the margin covers the float noise of two differently summed times). The bound's graph is
    the one replayed (up to :data:`KEEP_GRAPH_OPS` ops kept). A long pipeline timed from a shorter probe
    (:mod:`tspsim.simulate.pipeline_timer`; its full graph is never built) is simulated first, unbounded.
    ``tests/test_step_bound.py`` checks the choice against simulating everything.
    """
    from tspsim.analysis.metrics import tokens_per_step
    from tspsim.engine.bound import step_time_lower_bound
    from tspsim.simulate import simulate
    from tspsim.simulate.graph import build_graph
    from tspsim.spec.loader import SpecLoader

    specs = specs or SpecLoader()
    plain: list[int] = []
    bounded: list[tuple[float, int, Any]] = []     # (−U, index, built graph or None)
    kept_ops = 0
    for i, p in enumerate(points):
        if p.mode != "train" or _probed(p, specs):
            plain.append(i)     # simulated first, unbounded (the bound would need a graph the replay does not)
            continue
        built = build_graph(p, fold=fold, specs=specs)
        graph, topo, _model, layout, workload, _opts = built
        bound = step_time_lower_bound(graph, topo)
        tokens = tokens_per_step(workload, layout.replicas, layout.micro_batches)
        upper = tokens / bound if bound > 0 else float("inf")
        kept_ops += len(graph.ops)
        bounded.append((-upper, i, built if kept_ops <= KEEP_GRAPH_OPS else None))
    bounded.sort(key=lambda b: (b[0], b[1]))
    best: Any = None
    best_key: tuple[float, int] | None = None
    skipped = 0
    for i, upper, built in [(i, float("inf"), None) for i in plain] + [(i, -u, b) for u, i, b in bounded]:
        if best_key is not None and upper < best_key[0] * (1 - 1e-9):
            skipped += 1
            continue
        p = points[i]
        res = simulate(p, fold=fold, specs=specs) if built is None else _simulate_built(p, fold, specs, built)
        e = res.entry
        if e.get("oom"):
            continue
        key = (e["tokens_per_s"], -i)
        if best_key is None or key > best_key:
            best, best_key = res, key
    return best, skipped


def _simulate_built(point: Any, fold: bool, specs: Any, built: Any) -> Any:
    """:func:`tspsim.simulate.simulate` of a training point whose graph is already built."""
    from tspsim.simulate.training import simulate_training

    return simulate_training(point, fold=fold, specs=specs, built=built)


def _probed(point: Any, specs: Any) -> bool:
    """True if the training point's step is timed from a shorter pipeline probe (its full graph is not built)."""
    from tspsim.simulate.pipeline_timer import probe_micro_batches
    from tspsim.simulate.point import resolve

    layout = resolve(point, specs)[2]
    return probe_micro_batches(layout.micro_batches, layout.pp, layout.pp_schedule, 0) is not None

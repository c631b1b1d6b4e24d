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
    None. Each training candidate has its graph built and a lower bound on its step time computed
    (:func:`tspsim.engine.bound.step_time_lower_bound`), so an upper bound U = tokens per step / bound on its
    tokens/s: first with free communication (cheap), then, when the candidate is next, with every
    communication op at its least duration (tighter, and the plans it resolves are reused by the replay). The
    candidate of largest U goes next (tightened first if its bound is still the cheap one, else simulated);
    once the largest U left is below (1 − 10⁻⁹) × the best tokens/s simulated, the rest are skipped: their
    simulated tokens/s would be below their U, so none could be chosen (the margin covers the float noise of
    two differently summed times). A long pipeline timed from a shorter probe
    (:mod:`tspsim.simulate.pipeline_timer`; its full graph is never built) is simulated first, unbounded, and
    graphs beyond :data:`KEEP_GRAPH_OPS` ops in all are built again when simulated.
    ``tests/test_step_bound.py`` checks the choice against simulating everything.
    """
    import heapq

    from tspsim.analysis.metrics import tokens_per_step
    from tspsim.engine.bound import step_time_lower_bound
    from tspsim.simulate import simulate
    from tspsim.simulate.graph import build_graph
    from tspsim.spec.loader import SpecLoader

    specs = specs or SpecLoader()
    best: Any = None
    best_key: tuple[float, int] | None = None

    def consider(i: int, res: Any) -> None:
        nonlocal best, best_key
        e = res.entry
        if not e.get("oom") and (best_key is None or (e["tokens_per_s"], -i) > best_key):
            best, best_key = res, (e["tokens_per_s"], -i)

    heap: list[tuple[float, int, int]] = []      # (−U, index, level: 0 free comm, 1 comm at its least)
    kept: dict[int, Any] = {}                    # index → built graph (up to KEEP_GRAPH_OPS ops in all)
    plans: dict[int, dict[Any, Any]] = {}
    tokens: dict[int, int] = {}
    kept_ops = 0
    for i, p in enumerate(points):
        if p.mode != "train" or _probed(p, specs):
            consider(i, simulate(p, fold=fold, specs=specs))
            continue
        built = build_graph(p, fold=fold, specs=specs)
        graph, topo, _model, layout, workload, _opts = built
        tokens[i] = tokens_per_step(workload, layout.replicas, layout.micro_batches)
        heapq.heappush(heap, (-_upper(tokens[i], step_time_lower_bound(graph, topo, comm=False)), i, 0))
        kept_ops += len(graph.ops)
        if kept_ops <= KEEP_GRAPH_OPS:
            kept[i] = built
    while heap:
        neg_u, i, level = heap[0]
        if best_key is not None and -neg_u < best_key[0] * (1 - 1e-9):
            break                                # this one and every one left cannot be chosen
        heapq.heappop(heap)
        p = points[i]
        built = kept.get(i) or build_graph(p, fold=fold, specs=specs)
        if level == 0:
            plans[i] = {}
            bound = step_time_lower_bound(built[0], built[1], plans=plans[i] if i in kept else None)
            heapq.heappush(heap, (-_upper(tokens[i], bound), i, 1))
            continue
        consider(i, _simulate_built(p, fold, specs, built, plans.get(i)))
        kept.pop(i, None)
    return best, len(heap)


def _upper(tokens: int, bound_s: float) -> float:
    """Upper bound on tokens/s from a lower bound on the step time (unbounded for a bound of 0)."""
    return tokens / bound_s if bound_s > 0 else float("inf")


def _simulate_built(point: Any, fold: bool, specs: Any, built: Any, plans: Any) -> Any:
    """:func:`tspsim.simulate.simulate` of a training point whose graph is already built (and plans resolved)."""
    from tspsim.simulate.training import simulate_training

    return simulate_training(point, fold=fold, specs=specs, built=built, plans=plans)


def _probed(point: Any, specs: Any) -> bool:
    """True if the training point's step is timed from a shorter pipeline probe (its full graph is not built)."""
    from tspsim.simulate.pipeline_timer import probe_micro_batches
    from tspsim.simulate.point import resolve

    layout = resolve(point, specs)[2]
    return probe_micro_batches(layout.micro_batches, layout.pp, layout.pp_schedule, 0) is not None

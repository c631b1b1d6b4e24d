"""The default comparison's playbook columns: the best FSDP and PTD-P layouts at the same GPUs and global batch.

``tspsim run`` without ``--schedule`` (training) adds them after tsp, tp and tp+sp (issue 14). The search
simulates the candidates in the order of a lower bound on their step time and skips those whose bound already
loses to the best simulated (:func:`tspsim.explore.playbooks.bounded_best`); the column chosen is the one
simulating every candidate would choose.
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
    from tspsim.explore.playbooks import PLAYBOOKS, bounded_best, playbook_points, valid_points

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

"""The default comparison's playbook columns: the best FSDP and PTD-P layouts at the same GPUs and global batch.

``tspsim run`` without ``--schedule`` (training) adds them after tsp, tp and tp+sp (issue 14). The search
simulates the candidates in the order of a lower bound on their step time and skips those whose bound already
loses to the best simulated (:func:`tspsim.explore.playbooks.bounded_best`); the column chosen is the one
simulating every candidate would choose. ``run`` may compute it in a forked process beside the schedules
(:class:`tspsim.core.forked.ForkedCall`): it needs only the global batch, known before any simulation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from tspsim.commands.point_progress import PointProgress


def playbook_global_batch(args: Any, points: list[Any], specs: Any) -> int | None:
    """G of the playbook columns: ``--global-batch``, else the first column's micro-batch × replicas (None: no column).

    Known before any simulation (the first point's resolved layout), so the search can start beside the schedules.
    """
    if not points:
        return None
    if args.pipeline.global_batch:
        return int(args.pipeline.global_batch)
    from tspsim.simulate.point import resolve

    layout = resolve(points[0], specs)[2]
    return int(points[0].batch * layout.replicas)


def playbook_results(args: Any, seq: int, pairs: tuple[tuple[str, Any], ...], g: int, *,
                     fold: bool, record_links: bool, specs: Any = None) -> list[tuple[str, Any]]:
    """(family, result) of the best FSDP and the best PTD-P layout (:mod:`tspsim.explore.playbooks`).

    ``args``: the run's :class:`tspsim.commands.run.PlanArgs`; ``g``: the global batch
    (:func:`playbook_global_batch`), at the same GPUs as the first column. Each family's layouts are simulated
    (progress on stderr) and the fastest that fits is re-simulated for the report when ``record_links``. None
    fits: a note on stderr.
    """
    from tspsim.explore.max_batch import simulate_with_max_batch
    from tspsim.explore.playbooks import PLAYBOOKS, bounded_best, playbook_points, valid_points

    out = []
    for family in PLAYBOOKS:
        points = valid_points(playbook_points(family, args.topology, args.model, seq, g, pairs, args.gpus), specs)
        if not points:
            click.echo(f"note: no {family} layout takes a global batch of {g} on these GPUs", err=True)
            continue
        n = len(points)
        progress = PointProgress(f"searching the best {family} layout ({n} candidate{'s' if n != 1 else ''})")
        try:
            best, skipped, index = bounded_best(points, fold=fold, specs=specs)
        except BaseException:
            progress.finish(failed=True)
            raise
        progress.finish()
        if skipped:
            click.echo(f"  ({skipped} of them not simulated: their step time's lower bound already loses)", err=True)
        if best is None:
            click.echo(f"note: no {family} layout fits in memory", err=True)
            continue
        if record_links and index is not None:
            best = simulate_with_max_batch(points[index], fold=fold, record_links=True, specs=specs)
        out.append((family, best))
    return out


def playbook_entries(args: Any, seq: int, pairs: tuple[tuple[str, Any], ...], g: int, *, fold: bool,
                     specs: Any = None) -> list[tuple[str, dict[str, Any]]]:
    """(family, run entry) of :func:`playbook_results` without link records (what a forked search hands back)."""
    return [(f, r.entry) for f, r in playbook_results(args, seq, pairs, g, fold=fold, record_links=False,
                                                      specs=specs)]


def with_playbook_columns(simulate: Callable[[], list[Any]], args: Any, seq: int, pairs: tuple[tuple[str, Any], ...],
                          g: int | None, *, fold: bool, record_links: bool,
                          specs: Any) -> tuple[list[Any], list[Any], list[tuple[str, dict[str, Any]]]]:
    """(``simulate()``'s results, the playbook columns' results, (family, run entry) of each playbook column).

    No playbook columns when ``g`` (:func:`playbook_global_batch`) is None. With two processes allowed
    (:func:`tspsim.core.forked.process_count`: the command's ``--jobs``, default the CPU count) and no timeline
    to write (``record_links`` False), the playbook search runs in a forked process
    (:class:`tspsim.core.forked.ForkedCall`) while this one runs ``simulate``; its progress lines are printed
    after ``simulate``'s, as in the serial order, and only its entries come back (the second list is then empty).
    The entries are the same either way.
    """
    from tspsim.core.forked import ForkedCall, can_fork, process_count

    if g is None:
        return simulate(), [], []
    if record_links or process_count() < 2 or not can_fork():
        results = simulate()
        found = playbook_results(args, seq, pairs, g, fold=fold, record_links=record_links, specs=specs)
        return results, [r for _family, r in found], [(f, r.entry) for f, r in found]
    import tspsim.explore.playbooks  # noqa: F401 - imported once, before the fork, for both processes

    with ForkedCall(lambda: playbook_entries(args, seq, pairs, g, fold=fold, specs=specs)) as search:
        results = simulate()
        entries, progress = search.result()
    click.echo(progress, err=True, nl=False)
    return results, [], entries


def playbook_line(found: list[tuple[str, dict[str, Any]]]) -> str:
    """``playbooks: the last 2 columns are …``: what the extra columns of the default comparison are ('' if none).

    ``found``: (family, run entry) of each playbook column.
    """
    if not found:
        return ""
    from tspsim.analysis.entries import schedule_label

    names = {"fsdp": "FSDP", "ptd-p": "PTD-P"}
    parts = [f"{schedule_label(e)} is the best {names.get(f, f)} layout" for f, e in found]
    what = f"the last {len(found)} columns were" if len(found) > 1 else "the last column was"
    return (f"playbooks: {what} searched, not asked for: {'; '.join(parts)} at the same GPUs and global batch "
            "(README: Pipeline parallelism and FSDP/ZeRO)")

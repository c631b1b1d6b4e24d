"""``tspsim sweep``: simulate a grid of points in parallel, resumably, and plot them (design.md §7)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tspsim.commands.options import IntListType, NameListType, SizeListType
from tspsim.core.errors import TspsimError

if TYPE_CHECKING:
    from tspsim.explore.cache import PointCache
    from tspsim.explore.grid import Grid
    from tspsim.explore.runners import Runner
    from tspsim.explore.sweep import Outcome, SweepState

MAX_INVALID_LINES = 20
"""Invalid points listed one per line on stderr before the rest are summarised."""
MAX_GRID_POINTS = 1_000_000
"""Largest grid a sweep expands (the product of its lists' lengths, before invalid points are dropped)."""


def grid_size(grid: Grid) -> int:
    """The number of points ``grid`` expands to (as :func:`~tspsim.explore.grid.expand_grid` counts them).

    Computed from the lists' lengths, without expanding (a mistyped grid can hold billions of points).
    """
    seqs = len(grid.seqs or (1,))
    per_mode = sum((len(grid.contexts or grid.seqs or (1,)) if mode == "decode" else seqs)
                   * (len(grid.tokens or (1,)) if mode in ("decode", "generate") else 1) for mode in grid.modes)
    shapes = sum(len(grid.tps or (1,)) * len(grid.sps or (1,)) if name == "tp+sp" else len(grid.degrees or (1,))
                 for name in grid.schedules)
    return len(grid.topologies) * len(grid.models) * per_mode * shapes * len(grid.batches)


@click.command("sweep")
@click.option("--topology", "-t", "topologies", type=NameListType(), required=True,
              help="Comma list of topology presets (tspsim list topologies) or YAML paths.")
@click.option("--model", "models", type=NameListType(), default="zyphra-7b", show_default=True,
              help="Comma list of model presets (tspsim list models) or YAML paths.")
@click.option("--schedule", "schedules", type=NameListType(), default=None,
              help="Comma list of schedules or 'all'. Default: tsp,tp,tp+sp.")
@click.option("--degree", "degrees", type=IntListType("degree"), default=None,
              help="D values of tsp, tp, sp, satp-* (default: GPUs per node).")
@click.option("--tp", "tps", type=IntListType("tp degree"), default=None,
              help="T values of tp+sp (default: GPUs per node; half a node on a single node).")
@click.option("--sp", "sps", type=IntListType("sp degree"), default=None, help="SP degrees of tp+sp (default: 2).")
@click.option("--seq", "seqs", type=SizeListType("sequence length"), default=None,
              help="Sequence lengths, binary suffixes: 16k,32k,64k,128k. Default: the model's.")
@click.option("--batch", "batches", type=IntListType("batch"), default="1", show_default=True,
              help="Micro-batch sizes per replica.")
@click.option("--mode", "modes", type=NameListType(), default="train", show_default=True,
              help="Comma list of modes: train, forward, prefill, decode, generate.")
@click.option("--context", "contexts", type=SizeListType("context length"), default=None,
              help="decode points: tokens in the KV cache when decoding starts, e.g. 4k,32k,128k "
                   "(default: the --seq values).")
@click.option("--tokens", "tokens", type=IntListType("tokens"), default=None,
              help="decode and generate points: tokens generated per sequence, e.g. 128,1024 (default 128).")
@click.option("--max-batch", "max_batch", is_flag=True,
              help="Inference points: also search the largest batch that fits in HBM (max_batch). Off by "
                   "default: every probe is a full simulation, which multiplies the cost of a point.")
@click.option("--recompute", type=click.Choice(["none", "selective", "full"]), default=None,
              help="Activation recomputation (default: the 'recompute' assumption, full).")
@click.option("--stack", default=None, metavar="NAME|PATH",
              help="Software stack: a preset (tspsim list stacks) or a YAML file (default: megatron-core).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Override an assumption for every point (repeatable), e.g. --option zero=1.")
@click.option("--gpus", type=click.IntRange(min=1), default=None, help="Use only the first N GPUs of each topology.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Local worker processes (default: CPU count; 1 = in this process).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Run the points on this Dask distributed scheduler instead of local processes.")
@click.option("--out", "-o", "out", type=click.Path(file_okay=False), required=True,
              help="Output directory: results.csv, results.json, sweep.html and cache/.")
@click.option("--fresh", is_flag=True, help="Ignore cached points and recompute every point.")
@click.pass_context
def sweep(ctx: click.Context, topologies: list[str], models: list[str], schedules: list[str] | None,
          degrees: list[int] | None, tps: list[int] | None, sps: list[int] | None, seqs: list[int] | None,
          batches: list[int], modes: list[str], contexts: list[int] | None, tokens: list[int] | None,
          max_batch: bool, recompute: str | None, stack: str | None, options: tuple[str, ...], gpus: int | None,
          jobs: int | None, scheduler: str | None, out: str, fresh: bool) -> None:
    """Simulate every combination of the given values and plot the results.

    Points run in parallel (local processes, or a Dask cluster with --scheduler). Each finished point
    is cached in OUT/cache, so rerunning an interrupted sweep computes only the missing points.
    Points whose degrees do not fit the model or topology are reported as invalid and skipped.
    Writes OUT/results.csv, OUT/results.json ({"results": [...]}, grid order) and OUT/sweep.html.

    Inference modes (prefill, decode, generate) add the serving metrics (ttft_s, tpot_s,
    decode_tokens_per_s, max_batch, decode_time_breakdown_s, ...) to every output and TTFT / TPOT /
    decode tokens/s plots to the page. decode points sweep --context (default: the --seq values) and,
    like generate points, --tokens. The max-batch search is skipped (max_batch null) unless --max-batch.

    Hardware what-ifs: topology files that inherit a preset and change only rates, efficiencies or
    latencies (a faster GPU, HBM or links) give the same op graphs, so each graph is built once for
    all of them (every mode's steps).

    \b
    Examples:
      tspsim sweep -t mi300x-1node --schedule tsp,tp --degree 2,4,8 --seq 16k,32k,64k,128k --out sw
      tspsim sweep -t mi300x-128node --schedule tsp,tp+sp --degree 8 --tp 8 --sp 2,4 --seq 64k,128k -o sw
      tspsim sweep -t mi300x-1node,faster-links.yaml --seq 32k,128k --out sw-what-if
      tspsim sweep -t mi300x-1node --seq 32k,64k --scheduler tcp://127.0.0.1:8786 --out sw
      tspsim sweep -t mi300x-1node --model llama3-70b --schedule tp,tsp --mode decode --context 4k,32k \\
                   --batch 1,8,32 --tokens 128 --out sw-decode
      tspsim sweep -t mi300x-1node --model llama3-8b --mode prefill --seq 8k,32k --max-batch --out sw-prefill
    """  # noqa: D301
    from tspsim.explore.cache import PointCache
    from tspsim.explore.grid import DEFAULT_SCHEDULES, Grid, expand_grid
    from tspsim.explore.runners import make_runner
    from tspsim.explore.sweep import prepare, preparing_progress
    from tspsim.schedules import SCHEDULES
    from tspsim.spec.assumptions import parse_option_pairs

    t0 = time.perf_counter()
    names = tuple(SCHEDULES.names()) if schedules == ["all"] else tuple(schedules or DEFAULT_SCHEDULES)
    grid = Grid(topologies=tuple(topologies), models=tuple(models), schedules=names,
                degrees=tuple(degrees) if degrees else None, tps=tuple(tps) if tps else None,
                sps=tuple(sps) if sps else None, seqs=tuple(seqs) if seqs else None, batches=tuple(batches),
                modes=tuple(modes), gpus=gpus, options=parse_option_pairs(options, recompute, stack),
                contexts=tuple(contexts) if contexts else None, tokens=tuple(tokens) if tokens else None,
                max_batch=max_batch)
    size = grid_size(grid)
    if size > MAX_GRID_POINTS:
        raise TspsimError(f"this grid has up to {size:,} points (the product of the lists' lengths); the limit is "
                          f"{MAX_GRID_POINTS:,} (at ~1 s per point, more would run for days): narrow the lists, or "
                          "split the sweep over several --out folders")
    points = expand_grid(grid)
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise TspsimError(f"--out {out}: exists and is not a directory")
    cache = PointCache(out_dir / "cache", fresh=fresh)
    state = prepare(points, cache, preparing_progress())
    if not state.ok and not state.todo:
        raise TspsimError("no valid point in the grid: " + _skipped(state.invalid))
    _report_invalid(state.invalid)
    for path, why in cache.ignored:
        click.echo(f"note: ignoring cache file {path.name} ({why}); recomputing that point", err=True)
    if scheduler and jobs:
        click.echo("note: --jobs is ignored with --scheduler (the Dask cluster has its own workers)", err=True)
    runner = make_runner(jobs, scheduler, len(state.todo))
    status = (f"sweep: {_n(len(points), 'point')}: {state.cached} cached, {len(state.todo)} to run"
              + (f" {runner.description}" if state.todo else "")
              + (f", {len(state.invalid)} invalid" if state.invalid else ""))
    from tspsim.core.files import folder_lock, remove_stale_temp_files
    from tspsim.explore.runners import Terminated
    from tspsim.explore.sweep_files import write_results

    # One sweep at a time per --out (their results.* would mix); temporary files a killed sweep left are
    # then provably stale.
    with folder_lock(out_dir, "a sweep", "--out"):
        for folder in (out_dir, out_dir / "cache"):
            remove_stale_temp_files(folder)
        try:
            _run(state, runner, cache, status)
        except KeyboardInterrupt as exc:
            done = sum(1 for o in state.outcomes if o.status in ("ok", "error") and not o.cached)
            why = f"stopped by {exc}" if isinstance(exc, Terminated) else "interrupted"
            click.echo(f"\n{why}: {_n(done, 'point')} finished in this run; {_n(cache.count(), 'point')} cached in "
                       f"{cache.directory} — rerun the same command to resume", err=True)
            ctx.exit(143 if isinstance(exc, Terminated) else 130)
        paths = write_results(out_dir, state, title=_title(state, grid))
    from tspsim.explore.sweep_files import result_entry, results_table

    click.echo(results_table([result_entry(o) for o in state.outcomes]))
    click.echo(_summary(state, time.perf_counter() - t0, paths), err=True)
    if state.errors:
        ctx.exit(1)


def _run(state: SweepState, runner: Runner, cache: PointCache, status: str) -> None:
    """Start the runner (connect to Dask), print ``status``, execute with progress, echo runtime failures."""
    from tspsim.core.progress import Progress
    from tspsim.explore.sweep import execute_with_progress, stderr_is_tty

    tty = stderr_is_tty()
    lead = "\n" if tty else ""  # step off the progress bar's line
    # On a terminal execute_with_progress draws a bar; in a log, one line per finished point.
    lines = None if tty else Progress("sweep", len(state.todo), tty=False)

    def note(out: Outcome) -> None:
        if out.status != "ok":
            click.echo(f"{lead}{out.status}: {out.label}: {out.reason}", err=True)
        if lines is not None:
            lines.advance(item=f"{out.status}: {out.label}")

    with runner:
        click.echo(status, err=True)
        execute_with_progress(state, runner, cache, on_result=note)


def _report_invalid(invalid: list[Outcome]) -> None:
    for out in invalid[:MAX_INVALID_LINES]:
        click.echo(f"invalid: {out.label} on {out.names[0]}: {out.reason}", err=True)
    if len(invalid) > MAX_INVALID_LINES:
        click.echo(f"invalid: … and {len(invalid) - MAX_INVALID_LINES} more (see results.json)", err=True)


def _skipped(invalid: list[Outcome]) -> str:
    from tspsim.explore.sweep import skipped_summary

    return skipped_summary(invalid)


def _title(state: SweepState, grid: Grid) -> str:
    """``tspsim sweep — zyphra-7b on mi300x-1node (train)`` with the names as loaded (not file paths)."""
    topos = list(dict.fromkeys(o.names[0] for o in state.outcomes))
    models = list(dict.fromkeys(o.names[1] for o in state.outcomes))
    return f"tspsim sweep — {', '.join(models)} on {', '.join(topos)} ({', '.join(grid.modes)})"


def _summary(state: SweepState, elapsed: float, paths: list[Path]) -> str:
    """One line: computed / cached / OOM / invalid (with why) / failed, files, time."""
    from tspsim.analysis.entries import is_oom

    outcomes = state.outcomes
    ok = [o for o in outcomes if o.status == "ok"]
    computed = sum(not o.cached for o in ok)
    oom = sum(is_oom(o.entry) for o in ok)
    parts = [_n(len(outcomes), "point"), f"{computed} computed", f"{len(ok) - computed} cached"]
    if oom:
        parts.append(f"{oom} OOM")
    invalid = [o for o in outcomes if o.status == "invalid"]
    if invalid:
        parts.append(_skipped(invalid))
    errors = [o for o in outcomes if o.status == "error"]
    if errors:
        parts.append(f"{len(errors)} FAILED (first: {errors[0].label}: {errors[0].reason}; rerun the same "
                     "command to retry them)")
    folder = paths[0].parent
    files = ", ".join(p.name for p in paths)
    return f"sweep done: {', '.join(parts)}; wrote {files} in {folder} ({elapsed:.1f} s)"


def _n(count: int, noun: str) -> str:
    """``1 point`` / ``3 points``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"

"""``tspsim plan``: the fastest schedule, degrees and micro-batch that fit in memory (design.md §4)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from tspsim.commands.options import SizeType, emit_json
from tspsim.errors import TspsimError

if TYPE_CHECKING:
    from tspsim.search import PlanResult
    from tspsim.sweep import Outcome

SIMULATED_MODES = ("train", "forward")


@click.command("plan")
@click.option("--topology", "-t", required=True, help="Preset name (tspsim list topologies) or YAML path.")
@click.option("--model", default="zyphra-7b", show_default=True, help="Preset name or YAML path.")
@click.option("--seq", type=SizeType("sequence length"), default=None,
              help="Tokens per sequence (128k = 131072). Default: the model's.")
@click.option("--mode", type=click.Choice(SIMULATED_MODES), default="train", show_default=True, help="Workload.")
@click.option("--gpus", type=click.IntRange(min=1), default=None, help="Use only the first N GPUs of the topology.")
@click.option("--batch-max", type=click.IntRange(min=1), default=8, show_default=True,
              help="Largest micro-batch per replica tried (1, 2, 4, … up to this).")
@click.option("--recompute", type=click.Choice(["none", "selective", "full"]), default=None,
              help="Activation recomputation (default: the 'recompute' assumption, full).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Override an assumption (repeatable), e.g. --option zero1=true.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Local worker processes (default: CPU count; 1 = in this process).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT", help="Run on this Dask distributed scheduler.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Cache finished points in this directory (reruns reuse them); default: no cache.")
@click.option("--json", "as_json", is_flag=True,
              help='Print one JSON object {"results": [ranked entries with "rank" and "reason"], "best": {...}}.')
@click.pass_context
def plan(ctx: click.Context, topology: str, model: str, seq: int | None, mode: str, gpus: int | None,
         batch_max: int, recompute: str | None, options: tuple[str, ...], jobs: int | None, scheduler: str | None,
         cache_dir: str | None, as_json: bool) -> None:
    """Search schedules, degrees and micro-batch sizes; rank what fits in HBM by tokens/s.

    Tries every registered schedule with D dividing the GPUs per node, tp+sp T×Σ splits that fill
    whole nodes, and micro-batches 1, 2, 4, … up to --batch-max. Configurations that do not fit in
    HBM are dropped. Prints the ranked list, the best choice and one line saying what limits it
    (memory, exposed communication or compute).

    \b
    Examples:
      tspsim plan --topology mi300x-1node --model zyphra-7b --seq 128k
      tspsim plan -t mi300x-128node --seq 128k --batch-max 2 --cache plan-cache
      tspsim plan -t h100-dgx-1node --model llama3-8b --seq 32k --json
    """  # noqa: D301
    from tspsim.plan import parse_option_pairs
    from tspsim.search import candidate_points, rank_results
    from tspsim.sweep import PointCache, execute_with_progress, make_runner, prepare

    pairs = parse_option_pairs(options, recompute)
    points = candidate_points(topology, model, seq, mode, gpus, batch_max, pairs)
    cache = PointCache(cache_dir)
    state = prepare(points, cache)
    for path, why in cache.ignored:
        click.echo(f"note: ignoring cache file {path.name} ({why}); recomputing that point", err=True)
    runner = make_runner(jobs, scheduler, len(state.todo))
    try:
        with runner:
            click.echo(f"plan: {len(points)} configurations: {len(state.invalid)} do not fit the model or "
                       f"topology, {state.cached} cached, {len(state.todo)} to simulate"
                       + (f" {runner.description}" if state.todo else ""), err=True)
            execute_with_progress(state, runner, cache, label="planning")
    except KeyboardInterrupt:
        click.echo("\ninterrupted" + (f"; finished points are cached in {cache_dir}" if cache_dir else ""), err=True)
        ctx.exit(130)
    result = rank_results(state.outcomes)
    for out in result.errors:
        click.echo(f"error: {out.label}: {out.reason}", err=True)
    if result.best is None:
        raise TspsimError(_nothing_fits(result))
    if as_json:
        emit_json(_json(result, topology, model, mode, gpus, batch_max, points))
    else:
        _print(result)
    if result.errors:
        ctx.exit(1)


def _nothing_fits(result: PlanResult) -> str:
    from tspsim.sweep import entry_label

    if result.oom:
        small = min(result.oom, key=lambda e: e.get("peak_memory_gb") or 0.0)
        return (f"no configuration fits in HBM: the smallest peak is {small.get('peak_memory_gb', 0):.1f} GB "
                f"({entry_label(small)}, batch {small.get('batch')}) of {small.get('hbm_gb', 0):g} GB; "
                "try a shorter --seq, more --gpus or a larger topology")
    if result.invalid:
        return "no configuration is valid: " + result.invalid[0].reason
    return "no configuration could be simulated"


def _json(result: PlanResult, topology: str, model: str, mode: str, gpus: int | None, batch_max: int,
          points: list[Any]) -> dict[str, Any]:
    return {"results": result.ranked, "best": dict(result.best or {}, reason=result.reason),
            "dropped": {"oom": len(result.oom), "invalid": len(result.invalid), "failed": len(result.errors)},
            "query": {"topology": topology, "model": model, "mode": mode, "gpus": gpus, "batch_max": batch_max,
                      "seq_len": points[0].seq_len if points else None, "configurations": len(points)}}


def _print(result: PlanResult) -> None:
    from tspsim.sweep import entry_label, throughput
    from tspsim.units import format_tokens

    best = result.best
    assert best is not None
    click.echo(f"# plan: {best.get('model')} on {best.get('topology')}, {best.get('mode')}, "
               f"seq {format_tokens(best.get('seq_len') or 0)}, {best.get('world_size')} GPUs, "
               f"{best.get('hbm_gb', 0):g} GB HBM per GPU")
    header = (f"{'rank':>4}  {'configuration':<24} {'batch':>5} {'tokens/s':>12} {'step (s)':>9} "
              f"{'peak GB':>8} {'MFU':>6} {'exp. comm':>9}  limited by")
    click.echo(header)
    for e in result.ranked:
        step, exposed, mfu = e.get("step_time_s"), e.get("exposed_comm_s"), e.get("mfu")
        comm = f"{exposed / step:.0%}" if exposed is not None and step else "n/a"
        click.echo(f"{e['rank']:>4}  {entry_label(e):<24} {e.get('batch'):>5} {throughput(e) or 0:>12,.0f} "
                   f"{step or 0:>9.3f} {e.get('peak_memory_gb') or 0:>8.1f} "
                   f"{(f'{mfu:.1%}' if mfu is not None else 'n/a'):>6} {comm:>9}  {e['reason'].split(':')[0]}")
    dropped = []
    if result.oom:
        worst = ", ".join(f"{entry_label(e)} ×{e.get('batch')}: {e.get('peak_memory_gb', 0):.0f} GB"
                          for e in result.oom[:3])
        dropped.append(f"{len(result.oom)} do not fit in HBM ({worst}{', …' if len(result.oom) > 3 else ''})")
    if result.invalid:
        dropped.append(f"{len(result.invalid)} do not fit the model or topology ({_first_reasons(result.invalid)})")
    if dropped:
        click.echo("dropped: " + "; ".join(dropped))
    click.echo(f"best: {entry_label(best)}, batch {best.get('batch')}: {throughput(best) or 0:,.0f} tokens/s, "
               f"{best.get('peak_memory_gb', 0):.1f} GB peak")
    click.echo(f"why: {result.reason}")


def _first_reasons(invalid: list[Outcome]) -> str:
    seen: list[str] = []
    for o in invalid:
        short = o.reason.split(";")[0].split(":")[0]
        if short not in seen:
            seen.append(short)
    return "; ".join(seen[:2]) + ("; …" if len(seen) > 2 else "")

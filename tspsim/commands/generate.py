"""``tspsim generate``: write the op graph of one point to a versioned JSON trace (no replay)."""

from __future__ import annotations

from pathlib import Path

import click

from tspsim.commands.run import (
    PlanArgs,
    check_mode,
    check_point,
    default_seq,
    make_point,
    parse_option_pairs,
    plan_options,
)
from tspsim.errors import TspsimError


def default_path(schedule: str, model: str, seq: int) -> Path:
    """``traces/<schedule>-<model>-<seq>.json`` (model paths reduced to their file stem)."""
    from tspsim.units import format_tokens

    stem = Path(model).stem if model.endswith((".yaml", ".yml")) else model
    return Path("traces") / f"{schedule}-{stem}-{format_tokens(seq)}.json"


@click.command("generate")
@plan_options
@click.option("--schedule", required=True, help="One schedule (tspsim list schedules).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Trace path (.json or .json.gz). Default: traces/<schedule>-<model>-<seq>.json.")
def generate(topology: str, model: str, degree: int | None, tp: int | None, sp: int | None,
             seq: int | None, batch: int, mode: str, recompute: str | None, options: tuple[str, ...],
             gpus: int | None, full: bool, schedule: str, output: str | None) -> None:
    """Generate the op graph of one schedule and save it (replay it with tspsim replay).

    The graph records its schedule, model, workload, degrees and assumptions, so ``tspsim replay``
    reports the same entry as ``tspsim run``.

    \b
    Examples:
      tspsim generate -t mi300x-1node --schedule tp --seq 32k -o traces/tp-32k.json
      tspsim replay traces/tp-32k.json --topology mi300x-1node
    """  # noqa: D301
    from tspsim.simulate import build_graph

    if "," in schedule:
        raise TspsimError("generate takes one --schedule; run it once per schedule")
    check_mode(mode)
    args = PlanArgs(topology, model, degree, tp, sp, seq, batch, mode, recompute, options, gpus, full)
    pairs = parse_option_pairs(options, recompute)
    n_seq = default_seq(args)
    point = make_point(args, schedule, n_seq, pairs, many=False)
    check_point(point)
    graph = build_graph(point, fold=not full)[0]
    path = Path(output) if output else default_path(schedule, model, n_seq)
    graph.save(path)
    click.echo(f"wrote {path} ({len(graph.ops):,} ops on {len(graph.ranks)} simulated ranks)")

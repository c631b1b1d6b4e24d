"""``tspsim generate``: write the op graph of one point to a versioned JSON trace (no replay).

Training modes write one step (``train``: forward, backward, optimizer; ``forward``). Inference modes
write one step too: ``prefill`` the prefill of B prompts, ``decode`` the decode step that generates
token N (``--tokens N``, default 1) of each sequence with ``--context + N − 1`` tokens in the KV cache.
``generate`` (a prefill followed by N decode steps, decode steps replayed under the decode-kernel
assumptions) is not one graph and is rejected with a pointer to the two steps.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from tspsim.commands.options import SizeType
from tspsim.commands.parallel_options import ParallelArgs
from tspsim.commands.run import (
    PlanArgs,
    check_inference_args,
    check_mode,
    check_point,
    default_seq,
    make_point,
    parse_option_pairs,
    plan_options,
)
from tspsim.core.errors import TspsimError

DEFAULT_TOKEN_INDEX = 1
"""``generate --mode decode`` without ``--tokens``: the first decode step (``--context`` tokens cached)."""


def default_path(schedule: str, model: str, seq: int, mode: str = "train", token: int = 1) -> Path:
    """``traces/<schedule>-<model>-<seq>.json`` (model paths reduced to their file stem).

    Inference steps name the mode: ``tp-llama3-8b-prefill-8k.json``, ``tp-llama3-8b-decode-4k.json``
    (the first decode step at context 4k) and ``…-decode-4k-t128.json`` (the step generating token 128).
    """
    from tspsim.core.units import format_tokens

    stem = Path(model).stem if model.endswith((".yaml", ".yml")) else model
    if mode == "prefill":
        return Path("traces") / f"{schedule}-{stem}-prefill-{format_tokens(seq)}.json"
    if mode == "decode":
        suffix = f"-t{token}" if token != 1 else ""
        return Path("traces") / f"{schedule}-{stem}-decode-{format_tokens(seq)}{suffix}.json"
    return Path("traces") / f"{schedule}-{stem}-{format_tokens(seq)}.json"


@click.command("generate")
@plan_options
@click.option("--schedule", required=True, help="One schedule (tspsim list schedules).")
@click.option("--context", type=SizeType("context length"), default=None,
              help="--mode decode: tokens in the KV cache when the decoding starts (default: --seq).")
@click.option("--tokens", type=click.IntRange(min=1), default=None,
              help=f"--mode decode: write the step that generates token N of each sequence, with "
                   f"context + N − 1 tokens cached (default {DEFAULT_TOKEN_INDEX}: the first decode step; "
                   "N = run's --tokens gives run's final step).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Trace path (.json or .json.gz). Default: traces/<schedule>-<model>[-<mode>]-<seq>.json.")
def generate(topology: str, model: str, degree: int | None, tp: int | None, sp: int | None,
             seq: int | None, batch: int, mode: str, recompute: str | None, stack: str | None,
             options: tuple[str, ...], gpus: int | None, full: bool, schedule: str, context: int | None,
             tokens: int | None, output: str | None, parallel: ParallelArgs) -> None:
    """Generate the op graph of one schedule and save it (replay it with tspsim replay).

    The graph records its schedule, model, workload, degrees and assumptions (the software stack with
    them: its kernels are in the graph, its costs in the metadata), so ``tspsim replay`` reports the same
    entry as ``tspsim run``.

    Inference modes write one step: --mode prefill the prefill of --batch prompts of --seq tokens
    (replay reports TTFT and prompt tokens/s); --mode decode one decode step with --context tokens
    cached (--tokens N: the step generating token N, context + N − 1 cached; replay reports that
    step's time as TPOT, decode tokens/s and where the time goes). --mode generate is a prefill plus N
    decode steps, not one graph: write the two steps separately.

    \b
    Examples:
      tspsim generate -t mi300x-1node --schedule tp --seq 32k -o traces/tp-32k.json
      tspsim replay traces/tp-32k.json --topology mi300x-1node
      tspsim generate -t mi300x-1node --model llama3-8b --schedule tp --mode prefill --seq 8k -o pre.json
      tspsim generate -t mi300x-1node --model llama3-8b --schedule tp --mode decode --context 8k -o dec.json
      tspsim generate -t mi300x-1node --model llama3-8b --schedule tsp --mode decode --context 8k --tokens 256
    """  # noqa: D301
    from tspsim.core.files import check_outputs_distinct
    from tspsim.simulate import build_graph

    if "," in schedule:
        raise TspsimError("generate takes one --schedule; run it once per schedule")
    check_mode(mode)
    check_inference_args(mode, context, tokens)
    token = tokens or DEFAULT_TOKEN_INDEX
    args = PlanArgs(topology, model, degree, tp, sp, seq, parallel.batch(batch), mode, recompute, options, gpus, full,
                    context, token if mode == "decode" else None, pipeline=parallel.pipeline)
    pairs = parse_option_pairs(options, recompute, stack, parallel.zero)
    n_seq = default_seq(args)
    path = Path(output) if output else default_path(schedule, model, n_seq, mode, token)
    check_outputs_distinct({"--topology": topology, "--model": model}, {"--output": path})
    point = make_point(args, schedule, n_seq, pairs, many=False)
    check_point(point)
    from tspsim.core.progress import is_terminal

    tty = is_terminal(sys.stderr)  # a person waiting sees the start; logs get one line, errors stay one line
    if tty:
        click.echo(f"generating the {mode} op graph of {schedule} ...", err=True)
    t0 = time.perf_counter()
    graph = build_graph(point, fold=not full)[0]
    graph.save(path)
    click.echo(f"generated the {mode} op graph of {schedule} in {time.perf_counter() - t0:.1f} s", err=True)
    what = ""
    if mode == "decode":
        what = (f"; decode step generating token {token}: {n_seq + token - 1:,} tokens cached, attends over "
                f"{n_seq + token:,}")
    elif mode == "prefill":
        what = f"; prefill of {batch} × {n_seq:,} prompt tokens"
    click.echo(f"wrote {path} ({len(graph.ops):,} ops on {len(graph.ranks)} simulated ranks{what})")

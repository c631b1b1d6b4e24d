"""``tspsim run``: simulate one or more schedules on a topology and compare them (design.md §4).

Also home of the layout options shared with ``tspsim generate`` (:func:`plan_options`,
:func:`resolve_points`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from tspsim.commands.options import NameListType, SizeType, emit_json
from tspsim.commands.parallel_options import ParallelArgs, parallel_options
from tspsim.commands.point_progress import PointProgress
from tspsim.core.errors import TspsimError
from tspsim.spec.assumptions import parse_option_pairs
from tspsim.spec.pipeline_spec import PipelineSpec
from tspsim.spec.workload import INFERENCE_MODES, MODES

SUPPORTED_MODES = ("train", "forward", "prefill", "decode")
"""Modes whose op graph ``tspsim generate`` writes (one step each: a prefill step, or one decode step).
``generate`` is a prefill followed by N decode steps — not one graph — so ``tspsim generate`` rejects it;
``run``, ``sweep`` and ``plan`` simulate it (:mod:`tspsim.simulate.inference`)."""



# ---------------------------------------------------------------------------------- shared options
def plan_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options that define a simulation point (shared by ``run`` and ``generate``)."""
    decorators = [
        click.option("--topology", "-t", required=True,
                     help="Preset name (tspsim list topologies) or YAML path."),
        click.option("--model", default="zyphra-7b", show_default=True,
                     help="Preset name (tspsim list models) or YAML path."),
        click.option("--degree", type=click.IntRange(min=1), default=None,
                     help="D for tsp, tp, sp, satp-seq, satp-batch (default: GPUs per node)."),
        click.option("--tp", type=click.IntRange(min=1), default=None,
                     help="T of tp+sp (inner, in the node)."),
        click.option("--sp", type=click.IntRange(min=1), default=None, help="SP degree of tp+sp (outer)."),
        click.option("--seq", type=SizeType("sequence length"), default=None,
                     help="Tokens per sequence, binary suffixes (128k = 131072). Default: the model's "
                          "(128k for zyphra-7b)."),
        click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Sequences per replica per step (micro-batch)."),
        click.option("--mode", type=click.Choice(MODES), default="train", show_default=True,
                     help="train (fwd + bwd + optimizer), forward (the paper's throughput benchmark), "
                          "prefill (--seq prompt tokens), decode (--tokens new tokens on a --context cache) "
                          "or generate (prefill, then --tokens decode steps)."),
        click.option("--recompute", type=click.Choice(["none", "selective", "full"]), default=None,
                     help="Activation recomputation (default: the 'recompute' assumption, full)."),
        click.option("--stack", default=None, metavar="NAME|PATH",
                     help="Software stack: a preset (tspsim list stacks) or a YAML file (default: megatron-core). "
                          "Same as --option stack=NAME."),
        click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
                     help="Override an assumption (repeatable), e.g. --option zero=1."),
        click.option("--gpus", type=click.IntRange(min=1), default=None,
                     help="Use only the first N GPUs of the topology."),
        click.option("--full", is_flag=True, help="Simulate every rank (no folding of identical replicas)."),
    ]
    for dec in reversed(decorators):
        f = dec(f)
    return parallel_options(f)


@dataclass(frozen=True)
class PlanArgs:
    """The parsed layout options."""

    topology: str
    model: str
    degree: int | None
    tp: int | None
    sp: int | None
    seq: int | None
    batch: int
    mode: str
    recompute: str | None
    options: tuple[str, ...]
    gpus: int | None
    full: bool
    context: int | None = None
    tokens: int | None = None
    max_batch: bool = True
    """Inference modes: search the largest batch that fits in HBM (``--no-max-batch`` skips it)."""
    pipeline: PipelineSpec = PipelineSpec()
    """Pipeline stages, micro-batches, placement (``--pp`` …)."""


def check_mode(mode: str) -> None:
    """Reject modes ``tspsim generate`` cannot write (one line)."""
    if mode == "generate":
        raise TspsimError("--mode generate is a prefill followed by --tokens decode steps, which is not one "
                          "graph: write the steps separately with --mode prefill --seq T and --mode decode "
                          "--context T --tokens N (the step generating token N)")
    if mode not in SUPPORTED_MODES:
        raise TspsimError(f"--mode {mode}: tspsim generate writes {', '.join(SUPPORTED_MODES)} graphs; "
                          f"simulate it with tspsim run --mode {mode}")


def check_inference_args(mode: str, context: int | None, tokens: int | None, max_batch: bool | None = None) -> None:
    """Reject inference options that do not belong to ``mode`` (one-line errors).

    ``--context`` belongs to decode, ``--tokens`` to decode and generate, ``--[no-]max-batch`` (given when
    ``max_batch`` is not None) to the inference modes.
    """
    if context is not None and mode != "decode":
        raise TspsimError(f"--context sets the cached tokens of --mode decode; with --mode {mode} use --seq")
    if tokens is not None and mode not in ("decode", "generate"):
        raise TspsimError(f"--tokens sets the tokens generated by --mode decode or generate, not --mode {mode}")
    if max_batch is not None and mode not in INFERENCE_MODES:
        flag = "--max-batch" if max_batch else "--no-max-batch"
        raise TspsimError(f"{flag} applies to --mode prefill, decode or generate (the search for the largest "
                          f"batch that fits in HBM); --mode {mode} has no such search, drop the flag")


def make_point(args: PlanArgs, schedule: str, seq: int, pairs: tuple[tuple[str, Any], ...],
               many: bool, tp: int | None = None, sp: int | None = None) -> Any:
    """The :class:`~tspsim.simulate.Point` for ``schedule`` under ``args``.

    ``--tp``/``--sp`` belong to ``tp+sp``; a single non-tp+sp schedule also accepts them (as D). When
    several schedules run, only ``--degree`` applies to the one-axis schedules.
    """
    from tspsim.simulate import Point

    tokens = 0
    if args.mode in ("decode", "generate"):
        from tspsim.spec.workload import DEFAULT_DECODE_TOKENS

        tokens = args.tokens or DEFAULT_DECODE_TOKENS
    if schedule == "tp+sp":
        tp = args.tp if tp is None else tp
        sp = args.sp if sp is None else sp
        degree = args.degree if tp is None and sp is None and not many else None
        return Point(schedule, args.topology, args.model, args.mode, seq, args.batch, degree, tp, sp,
                     args.gpus, decode_tokens=tokens, options=pairs, search_max_batch=args.max_batch,
                     pipeline=args.pipeline)
    tp_, sp_ = (None, None) if many else (args.tp, args.sp)
    degree = None if schedule == "fsdp" and many else args.degree
    return Point(schedule, args.topology, args.model, args.mode, seq, args.batch, degree, tp_, sp_,
                 args.gpus, decode_tokens=tokens, options=pairs, search_max_batch=args.max_batch,
                 pipeline=args.pipeline)


def check_point(point: Any, specs: Any = None) -> None:
    """Resolve the layout of ``point`` (model, topology, degrees) without building its graph.

    Raises:
        TspsimError: if the degrees do not fit the model, sequence or topology.
    """
    from tspsim.simulate.point import resolve_layout
    from tspsim.spec.loader import SpecLoader

    specs = specs or SpecLoader()
    resolve_layout(point, specs.topology(point.topology), specs.model(point.model), specs)


def default_seq(args: PlanArgs) -> int:
    """``--context`` (decode), else ``--seq``, else the model's default sequence length."""
    from tspsim.spec.model import load_model

    if args.mode == "decode" and args.context is not None:
        return args.context
    return args.seq if args.seq is not None else load_model(args.model).default_seq


# ---------------------------------------------------------------------------------- schedule choice
def default_comparison(args: PlanArgs, seq: int, pairs: tuple[tuple[str, Any], ...], specs: Any = None) -> list[Any]:
    """The default comparison: tsp (D), tp (D) and tp+sp (the playbooks are added by :func:`playbook_results`).

    tp+sp takes the degrees every command uses (:func:`tspsim.spec.layout.default_tp_sp`): T = GPUs per
    node × Σ=2 on ≥ 2 nodes and T = half a node × Σ=2 on one node. Schedules not registered, or whose
    degrees do not fit, are skipped with a note on stderr.
    """
    from tspsim.schedules import SCHEDULES

    wanted = [("tsp", None, None), ("tp", None, None), ("tp+sp", None, None)]
    points = []
    for name, tp, sp in wanted:
        if name not in SCHEDULES:
            click.echo(f"note: skipping {name}: schedule not available in this build", err=True)
            continue
        points.append(make_point(args, name, seq, pairs, True, tp, sp))
    return _keep_valid(points, specs)


def _keep_valid(points: list[Any], specs: Any = None) -> list[Any]:
    """Points whose plans resolve; the others are skipped with a note (error if none is left)."""
    kept, reasons = [], []
    for p in points:
        try:
            check_point(p, specs)
        except TspsimError as exc:
            click.echo(f"note: skipping {p.schedule}: {exc}", err=True)
            reasons.append(f"{p.schedule}: {exc}")
            continue
        kept.append(p)
    if not kept:
        raise TspsimError("no schedule fits these options (" + "; ".join(reasons)[:300] + ")")
    return kept


def choose_points(args: PlanArgs, schedules: list[str] | None, seq: int,
                  pairs: tuple[tuple[str, Any], ...], specs: Any = None) -> list[Any]:
    """Points for ``--schedule`` (explicit: errors are errors), ``all`` or the default comparison.

    The topology and model are loaded first: a bad file is one error, not a note per schedule.
    """
    from tspsim.schedules import SCHEDULES
    from tspsim.spec.loader import SpecLoader
    from tspsim.spec.workload import Workload

    specs = specs or SpecLoader()
    specs.topology(args.topology)
    specs.model(args.model)
    Workload(args.mode, seq, args.batch, args.tokens or 0)  # type: ignore[arg-type]  # bounds: one error

    if schedules is None:
        return default_comparison(args, seq, pairs, specs)
    if schedules == ["all"]:
        names = SCHEDULES.names()
        return _keep_valid([make_point(args, n, seq, pairs, len(names) > 1) for n in names], specs)
    for name in schedules:
        SCHEDULES.get(name)  # unknown name: one-line error listing the known ones
    if len(set(schedules)) != len(schedules):
        raise TspsimError("--schedule lists a schedule twice; give each once")
    points = [make_point(args, n, seq, pairs, len(schedules) > 1) for n in schedules]
    for p in points:
        check_point(p, specs)
    return points


def point_label(point: Any, specs: Any = None) -> str:
    """``tsp D=8`` / ``tp+sp T=4×SP=2 allgather`` from the resolved layout (and the SP attention algorithm)."""
    from tspsim.analysis.entries import schedule_label
    from tspsim.simulate.point import resolve_layout
    from tspsim.spec.loader import SpecLoader

    specs = specs or SpecLoader()
    layout, _workload, opts = resolve_layout(point, specs.topology(point.topology), specs.model(point.model), specs)
    return schedule_label({"schedule": layout.schedule, "degrees": layout.degrees,
                           "assumptions": {"sp_attention": opts.sp_attention, "zero": opts.zero},
                           "micro_batches": layout.micro_batches})


def simulate_points(points: list[Any], fold: bool, record_links: bool, specs: Any = None) -> list[Any]:
    """Simulate each point, with its progress on stderr (:class:`PointProgress`).

    ``specs`` (a :class:`~tspsim.spec.loader.SpecLoader`, default a fresh one) reads every file once, so the
    schedules of one run share one topology and its link tables.
    """
    from tspsim.explore.max_batch import simulate_with_max_batch
    from tspsim.spec.loader import SpecLoader

    specs = specs or SpecLoader()

    results = []
    for p in points:
        progress = PointProgress(f"simulating {point_label(p, specs)}")
        try:
            results.append(simulate_with_max_batch(p, fold=fold, record_links=record_links, progress=progress,
                                                   specs=specs))
        except BaseException:
            progress.finish(failed=True)  # end the progress line so the error starts its own
            raise
        progress.finish()
    return results


def write_outputs(results: list[Any], save: str | None, html: str | None, trace: str | None) -> None:
    """Write the result file, HTML viewer and Perfetto trace that were asked for (notes on stderr)."""
    runs = [(r.entry, r.timeline) for r in results]
    if save:
        from tspsim.outputs.results_file import save_results

        save_results(save, runs)
        click.echo(f"wrote {save}", err=True)
    if html:
        from tspsim.outputs.viewer import write_html

        write_html(runs, html)
        click.echo(f"wrote {html}", err=True)
    if trace:
        from tspsim.outputs.export.perfetto import write_trace

        write_trace(runs, trace)
        click.echo(f"wrote {trace}", err=True)


def inference_header(e: dict[str, Any]) -> str:
    """First report line of an inference entry: what was simulated (a whole run, or one replayed step)."""
    from tspsim.core.units import format_tokens

    step = e.get("inference_step")
    where = f"# {e['model']} on {e['topology']}:"
    if isinstance(step, dict) and step.get("kind") == "decode":
        return (f"{where} replay of one decode step: token {step.get('token_index')} of each sequence, "
                f"{step.get('cached_tokens')} tokens cached (context {format_tokens(e['seq_len'])}), "
                f"batch {e['batch']} per replica")
    if isinstance(step, dict):
        return (f"{where} replay of one prefill step: prompt {format_tokens(e['seq_len'])}, "
                f"batch {e['batch']} per replica")
    what = {"prefill": f"prompt {format_tokens(e['seq_len'])}",
            "decode": f"context {format_tokens(e['seq_len'])}, {e.get('decode_tokens')} new tokens",
            "generate": f"prompt {format_tokens(e['seq_len'])}, {e.get('decode_tokens')} new tokens"}[e["mode"]]
    return f"{where} {e['mode']}, {what}, batch {e['batch']} per replica"


def print_report(entries: list[dict[str, Any]], max_batch_note: str | None = None, extra_note: str = "") -> None:
    """Header, side-by-side table, verdict, notes and assumptions on stdout.

    ``max_batch_note`` explains a null ``max_batch`` of inference entries (printed under the serving table);
    ``extra_note`` is printed after the verdict (the default run's playbook columns).
    """
    from tspsim.analysis.report import assumptions_text, comparison_table, input_gather_note, verdict
    from tspsim.core.units import format_tokens

    e = entries[0]
    if e["mode"] in INFERENCE_MODES:
        from tspsim.analysis.report import serving_table

        click.echo(inference_header(e))
        click.echo(serving_table(entries))
        if max_batch_note and any(x.get("max_batch") is None for x in entries):
            click.echo(max_batch_note)
        click.echo("")
        step = e.get("inference_step")
        if isinstance(step, dict):
            kind = "decode" if step.get("kind") == "decode" else "prefill"
            click.echo(f"# the replayed {kind} step (step time = {'TPOT' if kind == 'decode' else 'TTFT'})")
        else:
            click.echo({"prefill": "# the prefill step (step time = TTFT)",
                        "decode": f"# per decode step: means over the {e.get('decode_tokens')} steps (step time = "
                                  "TPOT; peak memory at the final, largest-cache step)",
                        "generate": f"# the whole request: prefill + {e.get('decode_tokens')} decode steps "
                                    "(request time = TTFT + every decode step)"}[e["mode"]])
    else:
        if any((x.get("micro_batches") or 1) > 1 or x.get("bubble_pct") is not None for x in entries):
            what = f"micro-batch {e['batch']} (micro-batches and global batch G per column below)"
        else:
            what = f"batch {e['batch']} per replica"
        click.echo(f"# {e['model']} on {e['topology']}: {e['mode']}, seq {format_tokens(e['seq_len'])}, {what}")
    click.echo(comparison_table(entries))
    if e["mode"] == "generate" and not e.get("inference_step"):
        from tspsim.analysis.report import phase_table

        click.echo("")
        click.echo("# per phase: the prefill step; the decode steps together")
        click.echo(phase_table(entries))
    click.echo("")
    click.echo(verdict(entries))
    for note in (extra_note, input_gather_note(entries)):
        if note:
            click.echo(note)
    click.echo(assumptions_text(e))


# ---------------------------------------------------------------------------------- command
@click.command("run")
@plan_options
@click.option("--schedule", "schedules", type=NameListType(), default=None,
              help="Comma list of schedules (tspsim list schedules) or 'all'. Default: tsp, tp and tp+sp.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object {\"results\": [...]} on stdout.")
@click.option("--save", type=click.Path(dir_okay=False), default=None,
              help="Write entries and timelines, with link rates, to RESULT.json (for tspsim view / export).")
@click.option("--html", type=click.Path(dir_okay=False), default=None,
              help="Write the timeline viewer (HTML).")
@click.option("--trace", type=click.Path(dir_okay=False), default=None,
              help="Write a Chrome/Perfetto trace (JSON).")
@click.option("--context", type=SizeType("context length"), default=None,
              help="--mode decode: tokens already in the KV cache (default: --seq).")
@click.option("--tokens", type=click.IntRange(min=1), default=None,
              help="--mode decode / generate: tokens generated per sequence, one per step (default 128).")
@click.option("--max-batch/--no-max-batch", "max_batch", default=None,
              help="Inference modes: search the largest batch that fits in HBM (default: on). The search "
                   "simulates the step at doubling, then bisected, batch sizes (seconds per schedule); "
                   "--no-max-batch skips it and reports max_batch as null.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Processes (default: CPU count). With 2 or more, the default comparison's FSDP and PTD-P "
                   "searches run in a second process beside the three schedules (not with --save, --html or "
                   "--trace), and decode steps that are replayed one by one are shared with a second process; "
                   "1 = all in this process. Results are the same.")
@click.option("--no-timing", is_flag=True,
              help="Write the wall-clock field sim_wall_s as null, so identical inputs give byte-identical output.")
def run(topology: str, model: str, degree: int | None, tp: int | None, sp: int | None, seq: int | None,
        batch: int, mode: str, recompute: str | None, stack: str | None, options: tuple[str, ...], gpus: int | None,
        full: bool, schedules: list[str] | None, as_json: bool, save: str | None, html: str | None,
        trace: str | None, context: int | None, tokens: int | None, max_batch: bool | None, jobs: int | None,
        no_timing: bool, parallel: ParallelArgs) -> None:
    """Simulate schedules on a topology and compare them side by side.

    Without --schedule, compares tsp (D = GPUs per node), tp (same D) and tp+sp (T=8×SP=2 across two
    nodes, T=4×SP=2 on one node), skipping any that do not fit, and (training) the best FSDP layout (ZeRO-3
    alone or over TP/SP) and the best PTD-P layout (TP+SP × pipeline stages × DP) at the same GPUs and global
    batch as the first column, found by simulating each family's candidates.

    \b
    Examples:
      tspsim run --topology mi300x-1node
      tspsim run --topology mi300x-128node --mode forward --seq 128k
      tspsim run -t mi300x-1node --schedule tp,tp+sp --tp 4 --sp 2 --seq 32k --json
      tspsim run -t mi300x-128node --option sp_attention=ring     # TP+SP with ring attention (or ulysses)
      tspsim run -t h100-dgx-1node --schedule satp-batch --batch 8 --seq 8k --save r.json
      tspsim run -t mi300x-1node --model llama3-70b --mode decode --context 4k --tokens 1000 --schedule tp
      tspsim run -t mi300x-1node --model llama3-8b --mode generate --seq 8k --tokens 256 --batch 8
      tspsim run -t mi300x-1node --model llama3-8b --mode prefill --seq 32k --no-max-batch
      tspsim run -t dgx-a100-1node --model megatron-22b --schedule satp-seq --seq 2k --batch 4 \\
                 --stack megatron-lm-2022 --recompute selective
      tspsim run -t dgx-a100-128node --model gpt3-175b --seq 2k --schedule tp --degree 8 --pp 8 \\
                 --virtual-stages 3 --global-batch 64 --micro-batch 1 --gpus 64 --recompute full \\
                 --stack megatron-lm-2022          # PTD-P: Korthikanti et al. 2022, Table 5
      tspsim run -t h100-dgx-128node --model llama3-8b --seq 8k --schedule fsdp --gpus 64   # pure FSDP
      tspsim run -t h100-dgx-128node --model llama3-70b --seq 8k --schedule tp --degree 8 --zero 3

    Inference modes report TTFT, TPOT, decode tokens/s, the largest batch that fits (skip that search
    with --no-max-batch) and where a decode step's time goes (weights from HBM, KV cache from HBM,
    compute, exposed communication). Every top-level number has the scope of the step time: the prefill
    step, the mean decode step, or (generate) the whole request, with per-phase blocks and a per-phase
    table; TTFT is null in decode mode (no prefill is simulated).

    Progress goes to stderr: a bar with ETA per inference point on a terminal (one line a second
    otherwise). --save records link rates, so tspsim view and export show link utilisation.
    """  # noqa: D301
    args = PlanArgs(topology, model, degree, tp, sp, seq, parallel.batch(batch), mode, recompute, options, gpus, full,
                    context, tokens, max_batch is not False, parallel.pipeline)
    check_inference_args(mode, context, tokens, max_batch)
    from tspsim.core.files import check_outputs_distinct

    check_outputs_distinct({"--topology": topology, "--model": model},
                           {"--save": save, "--html": html, "--trace": trace})
    pairs = parse_option_pairs(options, recompute, stack, parallel.zero)
    from tspsim.simulate.gc_pacing import paced_gc
    from tspsim.spec.loader import SpecLoader

    specs = SpecLoader()  # every file read once for the whole run
    points = choose_points(args, schedules, default_seq(args), pairs, specs)
    from tspsim.commands.playbook_columns import playbook_global_batch, playbook_line, with_playbook_columns
    from tspsim.core.forked import processes

    record_links = bool(html or trace or save)
    g = None
    if schedules is None and mode == "train" and args.pipeline.stages == 1 and parallel.zero is None:
        g = playbook_global_batch(args, points, specs)
    with paced_gc(), processes(jobs):  # paced_gc: README "Speed" (the collector's passes were 10–15% of the CPU)
        results, extra, found = with_playbook_columns(
            lambda: simulate_points(points, fold=not full, record_links=record_links, specs=specs),
            args, default_seq(args), pairs, g, fold=not full, record_links=record_links, specs=specs)
    entries = [r.entry for r in results] + [e for _family, e in found]
    results += extra
    if no_timing:
        for r in results:
            r.timeline.sim_wall_s = 0.0
        for e in entries:
            e["sim_wall_s"] = None
    write_outputs(results, save, html, trace)
    if as_json:
        emit_json({"results": entries})
    else:
        print_report(entries, "max batch: not searched (--no-max-batch); drop the flag to find the largest "
                              "batch that fits in HBM", playbook_line(found))

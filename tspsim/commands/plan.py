"""``tspsim plan``: the fastest schedule, degrees and micro-batch that fit in memory (design.md §4)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from tspsim.commands.options import SizeType, emit_json
from tspsim.core.errors import TspsimError
from tspsim.spec.workload import INFERENCE_MODES, MODES

if TYPE_CHECKING:
    from tspsim.explore.planner import PlanResult
    from tspsim.explore.sweep import Outcome

SIMULATED_MODES = MODES
"""Modes the planner searches (every workload mode)."""


OBJECTIVE_NAMES = ("tokens_per_s", "decode_tokens_per_s", "ttft_s", "tpot_s")
"""``--objective`` choices (:data:`tspsim.explore.planner.OBJECTIVES`)."""


@click.command("plan")
@click.option("--topology", "-t", required=True, help="Preset name (tspsim list topologies) or YAML path.")
@click.option("--model", default="zyphra-7b", show_default=True, help="Preset name or YAML path.")
@click.option("--seq", type=SizeType("sequence length"), default=None,
              help="Tokens per sequence (128k = 131072): the prompt of prefill and generate. Default: the model's.")
@click.option("--mode", type=click.Choice(SIMULATED_MODES), default="train", show_default=True,
              help="Workload: train, forward, prefill (--seq prompt tokens), decode (--tokens new tokens on a "
                   "--context cache) or generate (prefill, then --tokens decode steps).")
@click.option("--context", type=SizeType("context length"), default=None,
              help="--mode decode: tokens in the KV cache when decoding starts (default: --seq).")
@click.option("--tokens", type=click.IntRange(min=1), default=None,
              help="--mode decode / generate: tokens generated per sequence (default 128).")
@click.option("--objective", type=click.Choice(OBJECTIVE_NAMES), default=None,
              help="What to rank by (a key of the run entry). Default per mode: tokens_per_s for train and "
                   "forward, ttft_s (lowest) for prefill, decode_tokens_per_s for decode, tokens_per_s "
                   "(generated tokens/s of the whole request, prefill included) for generate.")
@click.option("--gpus", type=click.IntRange(min=1), default=None, help="Use only the first N GPUs of the topology.")
@click.option("--batch-max", type=click.IntRange(min=1), default=8, show_default=True,
              help="Largest micro-batch per replica tried (1, 2, 4, … up to this).")
@click.option("--global-batch", type=click.IntRange(min=1), default=None,
              help="Training: sequences per step of the FSDP and PTD-P candidates (pipeline stages, virtual stages, "
                   "ZeRO-3, micro-batches at a fixed global batch). Default: one per node-sized replica "
                   "(GPUs ÷ GPUs per node).")
@click.option("--recompute", type=click.Choice(["none", "selective", "full"]), default=None,
              help="Activation recomputation (default: the 'recompute' assumption, full).")
@click.option("--stack", default=None, metavar="NAME|PATH",
              help="Software stack: a preset (tspsim list stacks) or a YAML file (default: megatron-core).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Override an assumption (repeatable), e.g. --option zero=1.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None,
              help="Local worker processes (default: CPU count; 1 = in this process).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT", help="Run on this Dask distributed scheduler.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Cache finished points in this directory (reruns reuse them); default: no cache.")
@click.option("--json", "as_json", is_flag=True,
              help='Print one JSON object {"results": [ranked entries with "rank" and "reason"], "best": {...}}.')
@click.pass_context
def plan(ctx: click.Context, topology: str, model: str, seq: int | None, mode: str, context: int | None,
         tokens: int | None, objective: str | None, gpus: int | None, batch_max: int, global_batch: int | None,
         recompute: str | None, stack: str | None, options: tuple[str, ...], jobs: int | None, scheduler: str | None,
         cache_dir: str | None, as_json: bool) -> None:
    """Search schedules, degrees and micro-batch sizes; rank what fits in HBM by an objective.

    Tries every registered schedule with D dividing the GPUs per node, tp+sp T×SP splits that fill
    whole nodes, and micro-batches 1, 2, 4, … up to --batch-max; sp and tp+sp with every SP attention
    algorithm (allgather, ring, ulysses) unless --option sp_attention=… fixes one. Training also tries the
    default playbooks at --global-batch: FSDP (ZeRO-3 alone or over TP/SP) and PTD-P (TP+SP × every pipeline
    stage count dividing the blocks × 1 or 2 virtual stages), and retries every layout that does not fit with
    ZeRO-1 and ZeRO-3. Configurations that do not fit in HBM are dropped. Prints the ranked list, the
    objective, the best choice and one line saying what limits it (memory, exposed communication or compute;
    decode steps also HBM bandwidth or overheads).

    Training ranks by tokens/s. Inference modes rank by a serving objective (--objective): prefill by
    the lowest TTFT, decode by the highest decode tokens/s, generate by the highest tokens/s of the whole
    request (prefill included). Larger batches raise decode throughput until memory runs out, so raise
    --batch-max for decode. The planner does not run the max-batch search of tspsim run.

    \b
    Examples:
      tspsim plan --topology mi300x-1node --model zyphra-7b --seq 128k
      tspsim plan -t mi300x-128node --seq 128k --batch-max 2 --cache plan-cache
      tspsim plan -t h100-dgx-1node --model llama3-8b --seq 32k --json
      tspsim plan -t mi300x-1node --model llama3-70b --mode decode --context 8k --tokens 128 --batch-max 64
      tspsim plan -t mi300x-1node --model llama3-8b --mode prefill --seq 32k --objective tokens_per_s
    """  # noqa: D301
    from tspsim.commands.run import check_inference_args
    from tspsim.explore.branch_bound import Bounds, incumbent, settle_dominated
    from tspsim.explore.cache import PointCache
    from tspsim.explore.planner import candidate_points, objective_for, rank_results
    from tspsim.explore.runners import make_runner, map_tasks
    from tspsim.explore.static_memory import estimated_ops, prune_known
    from tspsim.explore.sweep import extend_state, prepare
    from tspsim.spec.assumptions import parse_option_pairs

    check_inference_args(mode, context, tokens)
    goal = objective_for(mode, objective)
    pairs = parse_option_pairs(options, recompute, stack)
    points = candidate_points(topology, model, context if context is not None else seq, mode, gpus, batch_max, pairs,
                              decode_tokens=tokens)
    if mode == "train":
        points += _playbook_candidates(topology, model, seq, gpus, global_batch, pairs, batch_max)
    cache = PointCache(cache_dir)
    state = prepare(points, cache)
    runner = make_runner(jobs, scheduler, len(state.todo))
    try:
        with runner:
            def mapper(fn: Any, items: list[Any]) -> list[Any]:   # the probes run on the workers too
                return map_tasks(runner, fn, items)

            known: dict[Any, Any] = {}
            known_oom, too_large = prune_known(state, known, mapper)
            n_first, n_invalid = len(state.outcomes), len(state.invalid) - too_large
            # ZeRO retries of the configurations already known not to fit run with the first round (no wait)
            early = _zero_retries(state.outcomes)
            early_note = ""
            if early:
                more = prepare(early, cache)
                early_oom, early_large = prune_known(more, known, mapper)
                extend_state(state, more)
                points += early
                early_note = (f"; {len(early)} ZeRO-1/2/3 retries of those over HBM: {early_oom} still over on static "
                              f"memory, {early_large} too large, {more.cached} cached")
            bounds = Bounds(graphs=known, mapper=mapper) if mode == "train" and goal.key == "tokens_per_s" else None
            sign = 1 if bounds is not None else -1  # bound: cheapest first (a good incumbent early); else longest first
            state.todo.sort(key=lambda i: sign * estimated_ops(state.outcomes[i].point, known))
            cached_dominated = 0
            if bounds is not None and state.todo:   # a rerun: the cached results may dominate what is left
                left = settle_dominated(state, bounds, incumbent(state.outcomes))
                cached_dominated, state.todo = len(state.todo) - len(left), left
            first = sum(i < n_first for i in state.todo)
            early_note += f", {len(state.todo) - first} to simulate" if early else ""
            early_note += f"; {cached_dominated} dominated by cached results" if cached_dominated else ""
            for path, why in cache.ignored:
                click.echo(f"note: ignoring cache file {path.name} ({why}); recomputing that point", err=True)
            click.echo(f"plan: {len(points) - len(early)} configurations: {n_invalid} do not fit "
                       f"the model or topology, {state.cached} cached, {known_oom} exceed HBM on static memory alone "
                       f"(not simulated), {too_large} whose graph would exceed the op limit, "
                       f"{first} to simulate{early_note}"
                       + (f" {runner.description}" if state.todo else "") + f"; objective: {goal.key} ({goal.goal})",
                       err=True)
            simulated = [state.outcomes[i] for i in state.todo]   # (the early retries have ZeRO already)
            _execute(state, runner, cache, bounds)
            retry = _zero_retries(simulated)
            if retry:
                more = prepare(retry, cache)
                retry_oom, retry_large = prune_known(more, known, mapper)
                more.todo.sort(key=lambda i: sign * estimated_ops(more.outcomes[i].point, known))
                click.echo(f"plan: {len(retry)} simulated configurations that do not fit retried with ZeRO-1 / ZeRO-3: "
                           f"{retry_oom} exceed HBM on static memory alone, {retry_large} whose graph would exceed "
                           f"the op limit, {len(more.todo)} to simulate", err=True)
                _execute(more, runner, cache, bounds, incumbent(state.outcomes))
                extend_state(state, more)
                points += retry
            dominated = sum(o.status == "dominated" for o in state.outcomes)
            if dominated:
                click.echo(f"plan: {dominated} configurations not simulated: dominated (their compute alone caps "
                           "their tokens/s below the best simulated configuration's)", err=True)
    except KeyboardInterrupt:
        click.echo("\ninterrupted" + (f"; finished points are cached in {cache_dir}" if cache_dir else ""), err=True)
        ctx.exit(130)
    result = rank_results(state.outcomes, goal)
    for out in result.errors:
        click.echo(f"error: {out.label}: {out.reason}", err=True)
    if result.best is None:
        raise TspsimError(_nothing_fits(result, mode))
    if as_json:
        emit_json(_json(result, topology, model, mode, gpus, batch_max, points))
    else:
        _print(result)
    if result.errors:
        ctx.exit(1)


def _execute(state: Any, runner: Any, cache: Any, bounds: Any, best: float = 0.0) -> None:
    """Simulate ``state.todo`` with progress; under branch and bound (``bounds``), skip dominated configurations."""
    from tspsim.explore.branch_bound import execute_bounded
    from tspsim.explore.static_memory import estimated_ops
    from tspsim.explore.sweep import execute_with_progress

    run = None
    if bounds is not None:
        def run(st: Any, rn: Any, ca: Any, cb: Any) -> None:
            execute_bounded(st, rn, ca, bounds, cb, best, cost=lambda p: estimated_ops(p, bounds.graphs))
    execute_with_progress(state, runner, cache, label="planning", on_result=_progress_lines(len(state.todo)), run=run)


def _playbook_candidates(topology: str, model: str, seq: int | None, gpus: int | None, global_batch: int | None,
                         pairs: tuple[tuple[str, Any], ...], batch_max: int) -> list[Any]:
    """FSDP and PTD-P layouts at a fixed global batch (:mod:`tspsim.explore.playbooks`), every stage count."""
    from tspsim.explore.playbooks import PLAYBOOKS, playbook_points
    from tspsim.spec.model import load_model
    from tspsim.spec.topology_file import load_topology

    topo, cfg = load_topology(topology), load_model(model)
    world = gpus or topo.world_size
    g = global_batch or max(1, world // min(topo.gpus_per_node, world))
    n = seq if seq is not None else cfg.default_seq
    out: list[Any] = []
    for family in PLAYBOOKS:
        out += playbook_points(family, topology, model, n, g, pairs, gpus, batch_max, max_stages=cfg.layers)
    return out


def _zero_retries(outcomes: list[Outcome]) -> list[Any]:
    """ZeRO-1 / ZeRO-3 variants of the training configurations that ran out of memory.

    A variant that provably still cannot fit (:func:`tspsim.explore.planner.zero_cannot_fit`: the peak minus
    everything that ZeRO stage could shard is above HBM) is not simulated.
    """
    from tspsim.explore.planner import zero_cannot_fit, zero_variants

    out: list[Any] = []
    for o in outcomes:
        if o.status == "ok" and o.entry is not None and o.entry.get("oom") and (o.entry.get("replicas") or 1) > 1:
            out += [v for v in zero_variants(o.point)
                    if not zero_cannot_fit(o.entry, int(dict(v.options)["zero"]))]
    return out


def _progress_lines(total: int) -> Callable[[Outcome], None] | None:
    """One stderr line per finished configuration when stderr is not a terminal (a bar is drawn otherwise)."""
    from tspsim.core.progress import Progress
    from tspsim.explore.sweep import stderr_is_tty

    if stderr_is_tty():
        return None
    lines = Progress("plan", total, tty=False)
    return lambda out: lines.advance(item=f"{out.status}: {out.label}")


def _nothing_fits(result: PlanResult, mode: str = "train") -> str:
    from tspsim.analysis.entries import entry_label

    if result.oom:
        small = min(result.oom, key=lambda e: e.get("peak_memory_gb") or 0.0)
        shorter = {"decode": "a shorter --context or fewer --tokens",
                   "generate": "a shorter --seq or fewer --tokens"}.get(mode, "a shorter --seq")
        from tspsim.analysis.report import zero1_hint

        return (f"no configuration fits in HBM: the smallest peak is {small.get('peak_memory_gb', 0):.1f} GB "
                f"({entry_label(small)}, batch {small.get('batch')}) of {small.get('hbm_gb', 0):g} GB; "
                f"try {shorter}, more --gpus or a larger topology{zero1_hint(result.oom)}")
    if result.invalid:
        return "no configuration is valid: " + result.invalid[0].reason
    return "no configuration could be simulated"


def _json(result: PlanResult, topology: str, model: str, mode: str, gpus: int | None, batch_max: int,
          points: list[Any]) -> dict[str, Any]:
    obj = result.objective
    query = {"topology": topology, "model": model, "mode": mode, "gpus": gpus, "batch_max": batch_max,
             "seq_len": points[0].seq_len if points else None, "configurations": len(points),
             "objective": obj.key}
    if mode in ("decode", "generate"):
        query["decode_tokens"] = points[0].decode_tokens if points else None
    return {"results": result.ranked, "best": dict(result.best or {}, reason=result.reason),
            "dropped": {"oom": len(result.oom), "invalid": len(result.invalid), "failed": len(result.errors),
                        "dominated": len(result.dominated)},
            "dominated": [{"configuration": o.label, "reason": o.reason} for o in result.dominated],
            "objective": {"key": obj.key, "goal": obj.goal, "description": obj.description},
            "query": query}


def _print(result: PlanResult) -> None:
    best = result.best
    assert best is not None
    if best.get("mode") in INFERENCE_MODES:
        _print_serving(result)
        return
    _print_training(result)


def _header(best: dict[str, Any], what: str) -> str:
    return (f"# plan: {best.get('model')} on {best.get('topology')}, {best.get('mode')}, {what}, "
            f"{best.get('world_size')} GPUs, {best.get('hbm_gb', 0):g} GB HBM per GPU")


def _print_training(result: PlanResult) -> None:
    from tspsim.analysis.entries import entry_label, throughput
    from tspsim.core.units import format_tokens

    best = result.best
    assert best is not None
    click.echo(_header(best, f"seq {format_tokens(best.get('seq_len') or 0)}"))
    lw = _label_width(result)
    header = (f"{'rank':>4}  {'configuration':<{lw}} {'batch':>7} {'tokens/s':>12} {'step (s)':>9} "
              f"{'peak GB':>8} {'MFU':>6} {'exp. comm':>9}  limited by")
    click.echo(header)
    for e in result.ranked:
        step, exposed, mfu = e.get("step_time_s"), e.get("exposed_comm_s"), e.get("mfu")
        comm = f"{exposed / step:.0%}" if exposed is not None and step else "n/a"
        batch = f"{e.get('batch')}" + (f"×{e['micro_batches']}" if (e.get("micro_batches") or 1) > 1 else "")
        click.echo(f"{e['rank']:>4}  {entry_label(e):<{lw}} {batch:>7} {throughput(e) or 0:>12,.0f} "
                   f"{step or 0:>9.3f} {e.get('peak_memory_gb') or 0:>8.1f} "
                   f"{(f'{mfu:.1%}' if mfu is not None else 'n/a'):>6} {comm:>9}  {e['reason'].split(':')[0]}")
    _print_dropped(result)
    click.echo(f"best: {entry_label(best)}, batch {best.get('batch')}: {throughput(best) or 0:,.0f} tokens/s, "
               f"{best.get('peak_memory_gb', 0):.1f} GB peak")
    click.echo(f"why: {result.reason}")


def _label_width(result: PlanResult) -> int:
    """Width of the configuration column: 24, or the longest label (``tp+sp T=8×Σ=2 allgather DP=64``)."""
    from tspsim.analysis.entries import entry_label

    return max([24, *(len(entry_label(e)) for e in result.ranked)])


def _ms(value: Any) -> str:
    return "n/a" if value is None else f"{value * 1e3:.4g}"


def _print_serving(result: PlanResult) -> None:
    """Ranked inference configurations: TTFT, TPOT, throughputs, memory; the objective is named."""
    from tspsim.analysis.entries import entry_label
    from tspsim.core.units import format_tokens

    best = result.best
    assert best is not None
    mode, obj = best.get("mode"), result.objective
    seq = format_tokens(best.get("seq_len") or 0)
    what = {"prefill": f"prompt {seq}", "decode": f"context {seq}, {best.get('decode_tokens')} new tokens",
            "generate": f"prompt {seq}, {best.get('decode_tokens')} new tokens"}[str(mode)]
    click.echo(_header(best, what))
    click.echo(f"objective: {obj.text()}")
    # decode mode has no prefill (its TTFT is the first decode step) and tokens/s = decode tokens/s
    cols: list[tuple[str, int, Callable[[dict[str, Any]], str]]] = []
    if mode != "decode":
        cols.append(("TTFT (ms)", 10, lambda e: _ms(e.get("ttft_s"))))
    if mode != "prefill":
        cols.append(("TPOT (ms)", 10, lambda e: _ms(e.get("tpot_s"))))
    if mode != "decode":
        cols.append(("tokens/s", 12, lambda e: f"{e.get('tokens_per_s') or 0:,.0f}"))
    if mode != "prefill":
        cols.append(("decode tok/s", 13, lambda e: f"{e.get('decode_tokens_per_s') or 0:,.0f}"))
    cols.append(("peak GB", 8, lambda e: f"{e.get('peak_memory_gb') or 0:.1f}"))
    marked = {"ttft_s": "TTFT (ms)", "tpot_s": "TPOT (ms)", "decode_tokens_per_s": "decode tok/s",
              "tokens_per_s": "decode tok/s" if mode == "decode" else "tokens/s"}[obj.key]
    titles = [(f"*{t}" if t == marked else t, w) for t, w, _ in cols]
    lw = _label_width(result)
    click.echo(f"{'rank':>4}  {'configuration':<{lw}} {'batch':>5} " + " ".join(f"{t:>{w}}" for t, w in titles)
               + "  limited by")
    for e in result.ranked:
        cells = " ".join(f"{cell(e):>{w}}" for _, w, cell in cols)
        click.echo(f"{e['rank']:>4}  {entry_label(e):<{lw}} {e.get('batch'):>5} {cells}  {e['reason'].split(':')[0]}")
    _print_dropped(result)
    parts = [obj.format(obj.value(best))]
    for key, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT")):
        if key != obj.key and best.get(key) is not None and not (mode == "decode" and key == "ttft_s"):
            parts.append(f"{label} {best[key] * 1e3:.4g} ms")
    if obj.key != "decode_tokens_per_s" and best.get("decode_tokens_per_s") is not None and mode != "decode":
        parts.append(f"{best['decode_tokens_per_s']:,.0f} decode tokens/s")
    click.echo(f"best: {entry_label(best)}, batch {best.get('batch')}: {', '.join(parts)}, "
               f"{best.get('peak_memory_gb', 0):.1f} GB peak")
    click.echo(f"why: {result.reason}")


def _print_dropped(result: PlanResult) -> None:
    from tspsim.analysis.entries import entry_label

    dropped = []
    if result.oom:
        worst = ", ".join(f"{entry_label(e)} ×{e.get('batch')}: {e.get('peak_memory_gb', 0):.0f} GB"
                          for e in result.oom[:3])
        dropped.append(f"{len(result.oom)} do not fit in HBM ({worst}{', …' if len(result.oom) > 3 else ''})")
    if result.invalid:
        dropped.append(f"{len(result.invalid)} do not fit the model or topology ({_first_reasons(result.invalid)})")
    if result.dominated:
        dropped.append(f"{len(result.dominated)} dominated, not simulated (e.g. {result.dominated[0].label}: "
                       f"{result.dominated[0].reason})")
    if dropped:
        click.echo("dropped: " + "; ".join(dropped))


def _first_reasons(invalid: list[Outcome]) -> str:
    seen: list[str] = []
    for o in invalid:
        short = o.reason.split(";")[0].split(":")[0]
        if short not in seen:
            seen.append(short)
    return "; ".join(seen[:2]) + ("; …" if len(seen) > 2 else "")

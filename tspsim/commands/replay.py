"""``tspsim replay``: replay a saved op graph on a topology and report it like ``tspsim run``."""

from __future__ import annotations

from typing import Any

import click

from tspsim.commands.options import WholeNumberType, emit_json
from tspsim.commands.run import INFERENCE_MODES
from tspsim.core.errors import TraceError, TspsimError
from tspsim.engine.sim import ReplayOptions

DEFAULT_MAX_EVENTS = ReplayOptions().max_events
DEFAULT_MAX_WALL_S = ReplayOptions().max_wall_s


META_KEYS = ("model_config", "degrees", "mode", "seq_len", "batch")
"""Meta keys a graph needs for a full run entry (else the generic entry, model-specific keys null)."""


def has_plan_meta(graph: Any) -> bool:
    """True when the graph's meta records its model, workload and degrees (``tspsim generate`` graphs)."""
    meta = graph.meta or {}
    return all(k in meta for k in META_KEYS)


def replay_topology(graph: Any, topo: Any) -> Any:
    """The topology to replay ``graph`` on: a decode step runs under the decode-kernel assumptions.

    Decode steps replay on :func:`tspsim.simulate.decode_timer.decode_topology` (graph-captured launch overhead
    ``decode_launch_us``, ``decode_gemm_rolloff``), as ``tspsim run --mode decode`` does; every other
    graph on ``topo`` itself.

    Raises:
        TraceError: if the graph's metadata is malformed.
    """
    from tspsim.analysis.serving import step_kind
    from tspsim.simulate.decode_timer import decode_topology

    if not has_plan_meta(graph) or graph.meta["mode"] not in INFERENCE_MODES:
        return topo
    if step_kind(graph.meta, graph.meta["mode"]) != "decode":
        return topo
    opts = plan_from_meta(graph.meta)[3]
    return decode_topology(topo, opts)


def entry_for(graph: Any, tl: Any, topo: Any, sim_topo: Any = None) -> dict[str, Any]:
    """The run entry of a replayed graph: full when its meta has model/workload/degrees, else generic.

    Inference steps (meta mode prefill / decode / generate) get the serving keys of one step
    (:func:`tspsim.analysis.serving.step_fields`; ``sim_topo`` is the topology the step was replayed on).
    """
    from tspsim.analysis.metrics import generic_entry, run_entry

    meta = graph.meta or {}
    if not has_plan_meta(graph):
        schedule = meta.get("schedule")
        world = meta.get("world_size")
        clean = {"schedule": schedule if isinstance(schedule, str) else None}
        if isinstance(world, int) and not isinstance(world, bool) and world >= 1:
            clean["world_size"] = world
        return generic_entry(tl, topo, clean)
    model, layout, workload, opts = plan_from_meta(meta)
    entry = run_entry(tl, topo, model, layout, workload, opts)
    if workload.mode in INFERENCE_MODES:
        from tspsim.analysis.serving import step_fields, step_kind

        kind = step_kind(meta, workload.mode)
        cached = _cached_tokens(meta, workload) if kind == "decode" else 0
        entry.update(step_fields(kind, tl, (sim_topo or topo).gpu, model, layout, workload, cached))
        entry = dict(sorted(entry.items()))
    return entry


def _cached_tokens(meta: dict[str, Any], workload: Any) -> int:
    """Tokens cached before a decode step: ``meta.inference.cached``, else seq_len + decode_tokens − 1."""
    info = meta.get("inference")
    cached = info.get("cached") if isinstance(info, dict) else None
    if cached is None:
        return workload.seq_len + max(workload.decode_tokens, 1) - 1
    if isinstance(cached, bool) or not isinstance(cached, int) or not 0 <= cached <= 1 << 40:
        raise TraceError(f"trace metadata: meta.inference.cached: expected a whole number of tokens, got {cached!r}"
                         [:200])
    return cached


def plan_from_meta(meta: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """(ModelConfig, Layout, Workload, Assumptions) recorded in a graph's meta by the generator.

    Raises:
        TraceError: if the recorded values do not form a valid configuration (naming the meta key).
    """
    from tspsim.spec.assumptions import Assumptions
    from tspsim.spec.layout import Layout
    from tspsim.spec.model import model_from_mapping
    from tspsim.spec.workload import MODES, Workload

    def whole(key: str, value: Any, default: int | None = None) -> int:
        if value is None and default is not None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 40:
            raise TraceError(f"trace metadata: meta.{key}: expected a positive whole number, got {value!r}")
        return value

    try:
        config = meta["model_config"]
        if not isinstance(config, dict):
            raise TraceError(f"trace metadata: meta.model_config: expected a mapping, got {config!r}"[:200])
        model = model_from_mapping(config, "trace metadata: meta.model_config", "model")
        if not isinstance(meta["degrees"], dict) or not meta["degrees"]:
            raise TraceError("trace metadata: meta.degrees: expected a mapping like {\"D\": 8}")
        degrees = {str(k): whole(f"degrees.{k}", v) for k, v in meta["degrees"].items()}
        schedule = meta.get("schedule", "")
        if not isinstance(schedule, str):
            raise TraceError(f"trace metadata: meta.schedule: expected text, got {schedule!r}")
        tp, sp = _axes(schedule, degrees)
        replica = whole("replica_size", meta.get("replica_size"), tp if schedule == "tsp" else tp * sp)
        world = whole("world_size", meta.get("world_size"), replica * degrees.get("DP", 1))
        if world % replica:
            raise TraceError(f"trace metadata: meta.world_size {world} is not a multiple of replica_size {replica}")
        layout = Layout(schedule, tp, sp, replica, world, degrees)
        mode = meta["mode"]
        if mode not in MODES:
            raise TraceError(f"trace metadata: meta.mode: expected one of {', '.join(MODES)}, got {mode!r}")
        decode = meta.get("decode_tokens", 0)
        workload = Workload(mode, whole("seq_len", meta["seq_len"]), whole("batch", meta["batch"]),
                            0 if decode in (0, None) else whole("decode_tokens", decode))
        assumptions = meta.get("assumptions") or {}
        if not isinstance(assumptions, dict):
            raise TraceError(f"trace metadata: meta.assumptions: expected a mapping, got {assumptions!r}"[:200])
        opts = Assumptions.from_overrides(dict(assumptions))
    except TraceError:
        raise
    except TspsimError as exc:
        text = str(exc)
        raise TraceError(text if text.startswith("trace metadata") else f"trace metadata: {text}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise TraceError(f"trace metadata is malformed ({exc}); regenerate it with tspsim generate") from None
    return model, layout, workload, opts


def _axes(schedule: str, degrees: dict[str, int]) -> tuple[int, int]:
    """(T, Σ) of a layout from its reported degrees."""
    if schedule == "tp+sp":
        return degrees.get("T", 1), degrees.get("SP", 1)
    d = degrees.get("D", 1)
    return {"tsp": (d, d), "sp": (1, d)}.get(schedule, (d, 1))


@click.command("replay")
@click.argument("trace", type=click.Path(dir_okay=False))
@click.option("--topology", "-t", required=True, help="Preset name (tspsim list topologies) or YAML path.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object {\"results\": [...]} on stdout.")
@click.option("--save", type=click.Path(dir_okay=False), default=None,
              help="Write the entry and timeline to RESULT.json (for tspsim view / export).")
@click.option("--max-events", type=WholeNumberType(1), default=None,
              help=f"Stop with an error after this many simulated events (default {DEFAULT_MAX_EVENTS:,}).")
@click.option("--max-wall", "max_wall_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help=f"Stop with an error after this many seconds of wall time (default {DEFAULT_MAX_WALL_S:.0f}).")
def replay_cmd(trace: str, topology: str, as_json: bool, save: str | None, max_events: int | None,
               max_wall_s: float | None) -> None:
    """Replay a saved op graph (tspsim generate, or a graph from elsewhere) on a topology.

    Graphs that record their model, workload and degrees get the same report as tspsim run; others
    get the generic metrics (step time, overlap, peak memory) with model-specific keys null.

    An inference step from tspsim generate reports that one step: a prefill step its TTFT and prompt
    tokens/s; a decode step (replayed under the decode-kernel assumptions, as run does) its time as
    TPOT, decode tokens/s and the TPOT breakdown, with TTFT and max_batch null.

    A graph from tspsim generate carries its software stack: its kernels (and CPU lane) are ops in the
    graph and its kernel costs are in the metadata, so it replays as generated; to replay under another
    stack, generate it again with --stack.

    The trace is validated before it runs (fields, dependencies, cycles, collective participants); a
    replay in which ranks wait for each other forever stops with one line naming the blocked ranks and
    ops. --max-events and --max-wall bound a replay.

    \b
    Examples:
      tspsim generate -t mi300x-1node --schedule tp --seq 32k -o traces/tp-32k.json
      tspsim replay traces/tp-32k.json --topology mi300x-1node --json
      tspsim generate -t mi300x-1node --model llama3-8b --schedule tp --mode decode --context 8k -o dec.json
      tspsim replay dec.json --topology h100-dgx-1node
    """  # noqa: D301
    import sys
    import time

    from tspsim.commands.run import print_report
    from tspsim.core.files import check_outputs_distinct
    from tspsim.engine.sim import ReplayOptions, replay
    from tspsim.opgraph import OpGraph
    from tspsim.spec.topology_file import load_topology

    if max_wall_s is not None and max_wall_s != max_wall_s:
        raise TspsimError("--max-wall nan: give a number of seconds (inf for no limit)")
    check_outputs_distinct({"TRACE": trace, "--topology": topology}, {"--save": save})
    graph = OpGraph.load(trace)
    topo = load_topology(topology)
    options = ReplayOptions(max_events=max_events or DEFAULT_MAX_EVENTS, max_wall_s=max_wall_s or DEFAULT_MAX_WALL_S,
                            record_links=bool(save))  # a saved result carries link rates (view, export)
    from tspsim.core.progress import is_terminal

    t0 = time.perf_counter()
    if is_terminal(sys.stderr):  # a person waiting; logs get the closing line only (errors stay one line)
        click.echo(f"replaying {trace} ({len(graph.ops):,} ops on {len(graph.ranks):,} simulated GPUs) ...", err=True)
    try:
        sim_topo = replay_topology(graph, topo)
        tl = replay(graph, sim_topo, options)
        entry = entry_for(graph, tl, topo, sim_topo)
    except TspsimError as exc:
        raise TraceError(f"{trace}: {exc}") from None
    click.echo(f"replayed {trace} ({len(graph.ops):,} ops) in {time.perf_counter() - t0:.1f} s", err=True)
    used = entry.get("world_size") or len(graph.ranks)
    if isinstance(used, int) and used < topo.world_size:
        click.echo(f"note: the graph uses {used:,} of the {topo.world_size:,} GPUs of {topo.name}; the others stay "
                   "idle (generate it with this topology to use them all)", err=True)
    if save:
        from tspsim.outputs.results_file import save_results

        save_results(save, [(entry, tl)])
        click.echo(f"wrote {save}", err=True)
    if as_json:
        emit_json({"results": [entry]})
    elif entry.get("model") is not None:
        print_report([entry], "max batch: not searched (a replay simulates the graph's own batch; "
                              "tspsim run searches it)")
    else:
        _print_generic(entry)


def _print_generic(entry: dict[str, Any]) -> None:
    """Report of a graph without model metadata."""
    from tspsim.analysis.report import comparison_table

    click.echo(f"# op graph on {entry['topology']} (no model metadata: throughput and MFU are n/a)")
    click.echo(comparison_table([entry]))

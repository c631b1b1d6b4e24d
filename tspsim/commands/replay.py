"""``tspsim replay``: replay a saved op graph on a topology and report it like ``tspsim run``."""

from __future__ import annotations

from typing import Any

import click

from tspsim.commands.options import emit_json
from tspsim.errors import TraceError, TspsimError


def entry_for(graph: Any, tl: Any, topo: Any) -> dict[str, Any]:
    """The run entry of a replayed graph: full when its meta has model/workload/degrees, else generic."""
    from tspsim.metrics import generic_entry, run_entry

    meta = graph.meta or {}
    if not all(k in meta for k in ("model_config", "degrees", "mode", "seq_len", "batch")):
        return generic_entry(tl, topo, meta)
    model, plan, workload, opts = plan_from_meta(meta)
    return run_entry(tl, topo, model, plan, workload, opts)


def plan_from_meta(meta: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """(ModelConfig, Plan, Workload, Assumptions) recorded in a graph's meta by the generator.

    Raises:
        TraceError: if the recorded values do not form a valid configuration.
    """
    from tspsim.model import ModelConfig
    from tspsim.plan import Assumptions, Plan, Workload

    try:
        model = ModelConfig(**meta["model_config"])
        degrees = {str(k): int(v) for k, v in meta["degrees"].items()}
        schedule = str(meta.get("schedule", ""))
        tp, sp = _axes(schedule, degrees)
        replica = int(meta.get("replica_size") or (tp if schedule == "tsp" else tp * sp))
        world = int(meta.get("world_size") or replica * degrees.get("DP", 1))
        plan = Plan(schedule, tp, sp, replica, world, degrees)
        workload = Workload(str(meta["mode"]), int(meta["seq_len"]), int(meta["batch"]),  # type: ignore[arg-type]
                            int(meta.get("decode_tokens", 0)))
        opts = Assumptions.from_overrides(dict(meta.get("assumptions") or {}))
    except TspsimError as exc:
        raise TraceError(f"trace metadata: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise TraceError(f"trace metadata is malformed ({exc}); regenerate it with tspsim generate") from None
    return model, plan, workload, opts


def _axes(schedule: str, degrees: dict[str, int]) -> tuple[int, int]:
    """(T, Σ) of a plan from its reported degrees."""
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
def replay_cmd(trace: str, topology: str, as_json: bool, save: str | None) -> None:
    """Replay a saved op graph (tspsim generate, or a graph from elsewhere) on a topology.

    Graphs that record their model, workload and degrees get the same report as tspsim run; others
    get the generic metrics (step time, overlap, peak memory) with model-specific keys null.

    \b
    Examples:
      tspsim generate -t mi300x-1node --schedule tp --seq 32k -o traces/tp-32k.json
      tspsim replay traces/tp-32k.json --topology mi300x-1node --json
    """  # noqa: D301
    import time

    from tspsim.commands.run import print_report
    from tspsim.engine.sim import replay
    from tspsim.opgraph import OpGraph
    from tspsim.topology import load_topology

    graph = OpGraph.load(trace)
    topo = load_topology(topology)
    click.echo(f"replaying {trace} ({len(graph.ops):,} ops) ...", err=True, nl=False)
    t0 = time.perf_counter()
    tl = replay(graph, topo)
    click.echo(f" {time.perf_counter() - t0:.1f} s", err=True)
    entry = entry_for(graph, tl, topo)
    if save:
        from tspsim.result import save_results

        save_results(save, [(entry, tl)])
        click.echo(f"wrote {save}", err=True)
    if as_json:
        emit_json({"results": [entry]})
    elif entry.get("model") is not None:
        print_report([entry])
    else:
        _print_generic(entry)


def _print_generic(entry: dict[str, Any]) -> None:
    """Report of a graph without model metadata."""
    from tspsim.report import comparison_table

    click.echo(f"# op graph on {entry['topology']} (no model metadata: throughput and MFU are n/a)")
    click.echo(comparison_table([entry]))

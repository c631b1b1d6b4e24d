"""``tspsim check``: does a measured cluster perform as a healthy one of its kind should."""

from __future__ import annotations

import click

from tspsim.commands.options import WholeNumberType, emit_json

_OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast", "reduce", "sendrecv")


@click.command("check")
@click.option("--topology", "-t", required=True, help="What the cluster should be: preset name or YAML path.")
@click.argument("logs", nargs=-1, required=True, metavar="LOG...")
@click.option("--algo", default=None, help="NCCL_ALGO the logs ran with, when they do not say.")
@click.option("--op", type=click.Choice(_OPS), default=None, help="Collective of logs that do not name their test.")
@click.option("--ranks", type=WholeNumberType(2), default=None, help="GPU count of logs that do not state it.")
@click.option("--fail-on-unhealthy", is_flag=True, help="Exit 1 if a log is under-performing (for scripts and CI).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object {\"results\": [...]} on stdout.")
def check(topology: str, logs: tuple[str, ...], algo: str | None, op: str | None, ranks: int | None,
          fail_on_unhealthy: bool, as_json: bool) -> None:
    """Compare measured nccl-tests / rccl-tests logs with what TOPOLOGY predicts; a verdict per size range.

    Each size range (consecutive sizes the model runs the same way) is healthy (inside the tolerance of
    its regime: ±15% bandwidth-bound, ×2 latency- or protocol-bound), under-performing (by how much, what
    bounds it in the model: NICs, node fabric, start-up latency, and what to check) or faster than the
    model (an algorithm the model lacks, such as NVLSTree, or a topology that understates the hardware).
    The log's verdict is that of its largest bandwidth-bound range (peak bus bandwidth). README:
    Calibrating to your cluster.

    \b
    Examples:
      tspsim check --topology h100-dgx-128node all_reduce_2node.txt
      tspsim check -t mi300x-1node rccl.log --json
      tspsim check -t my-cluster.yaml nightly/*.txt --fail-on-unhealthy
    """
    from tspsim.explore.health import check_log, report, to_json
    from tspsim.spec.collective_log import read_collective_logs
    from tspsim.spec.topology_file import load_topology

    topo = load_topology(topology)
    measured = [lg for path in logs for lg in read_collective_logs(path, op or "", ranks or 0)]
    results = [check_log(lg, topo, algo or "") for lg in measured]
    if as_json:
        emit_json({"results": [to_json(r) for r in results]})
    else:
        click.echo("\n\n".join("\n".join(report(r)) for r in results))
    if fail_on_unhealthy and any(r.verdict == "under-performing" for r in results):
        raise SystemExit(1)

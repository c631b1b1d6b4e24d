"""``tspsim collective``: an nccl-tests / rccl-tests style benchmark run inside the simulator."""

from __future__ import annotations

import click

from tspsim.commands.options import IntListType, SizeListType, WholeNumberType, emit_json
from tspsim.core.errors import TspsimError
from tspsim.simulate.collective import OPS, busbw_factor, simulate_collective  # noqa: F401 (re-exported)


@click.command("collective")
@click.option("--topology", "-t", required=True, help="Preset name (tspsim list topologies) or YAML path.")
@click.option("--op", "op", type=click.Choice(OPS), default="all_reduce", show_default=True, help="Collective.")
@click.option("--group", type=WholeNumberType(2), default=None,
              help="Number of ranks (first N GPUs; 8 = one node, 16 = two nodes). Default: one node.")
@click.option("--ranks", type=IntListType("rank", minimum=0), default=None, help="Explicit ranks, e.g. 0,8,16,24.")
@click.option("--sizes", type=SizeListType("size"), default="1k,64k,1M,16M,128M,1G",
              show_default=True, help="Message sizes (binary suffixes: 1k = 1024 bytes).")
@click.option("--algorithm", type=click.Choice(["ring", "direct", "one_shot", "two_shot", "tree", "rd", "hier"]),
              default=None, help="Force an algorithm instead of the RCCL/NCCL-like policy.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object {\"results\": [...]}.")
def collective(topology: str, op: str, group: int | None, ranks: list[int] | None, sizes: list[int],
               algorithm: str | None, as_json: bool) -> None:
    """Benchmark a collective in the simulator, like nccl-tests / rccl-tests.

    Prints size, time, algorithm bandwidth, bus bandwidth (nccl-tests' definition) and the algorithm
    the policy chose.

    \b
    Examples:
      tspsim collective --topology mi300x-1node --op all_reduce --group 8 --sizes 1k,1M,1G
      tspsim collective --topology mi300x-128node --op all_gather --group 16 --sizes 1G --json
      tspsim collective --topology mi300x-1node --op all_reduce --ranks 0,1 --sizes 1G
    """
    from tspsim.spec.topology_file import load_topology

    topo = load_topology(topology)
    if ranks is not None:
        chosen = tuple(ranks)
        if len(set(chosen)) != len(chosen):
            raise TspsimError("--ranks lists a rank twice; give distinct ranks")
        if any(r >= topo.world_size for r in chosen):
            raise TspsimError(f"--ranks names rank {max(chosen)} but {topo.name} has {topo.world_size} GPUs (0.."
                              f"{topo.world_size - 1})")
        if len(chosen) < 2:
            raise TspsimError("--ranks needs at least two ranks")
    else:
        n = group or topo.gpus_per_node
        if n > topo.world_size:
            raise TspsimError(f"--group {n} is larger than {topo.name} ({topo.world_size} GPUs); "
                              f"use --group {topo.world_size} or a bigger topology")
        chosen = tuple(range(n))
    if op == "sendrecv" and len(chosen) != 2:
        chosen = chosen[:2]
    results = [simulate_collective(topology, op, chosen, size, algorithm or "") for size in sizes]
    if as_json:
        emit_json({"results": results})
        return
    click.echo(f"# {op} on {topo.name}, {len(chosen)} ranks ({'sendrecv' if op == 'sendrecv' else 'group'}: "
               f"{_ranks_text(chosen)})")
    click.echo(f"{'size':>12} {'time (us)':>12} {'algbw (GB/s)':>13} {'busbw (GB/s)':>13}  algorithm")
    for r in results:
        click.echo(f"{r['bytes']:>12} {r['time_s'] * 1e6:>12.2f} {r['algbw_GBps']:>13.2f} {r['busbw_GBps']:>13.2f}"
                   f"  {r['algorithm']}")


def _ranks_text(ranks: tuple[int, ...]) -> str:
    if ranks == tuple(range(ranks[0], ranks[0] + len(ranks))):
        return f"{ranks[0]}..{ranks[-1]}"
    return ",".join(map(str, ranks[:16])) + ("…" if len(ranks) > 16 else "")

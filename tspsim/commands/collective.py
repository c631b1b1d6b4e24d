"""``tspsim collective``: an nccl-tests / rccl-tests style benchmark run inside the simulator."""

from __future__ import annotations

import click

from tspsim.commands.options import IntListType, SizeListType, WholeNumberType, emit_json
from tspsim.core.errors import TspsimError
from tspsim.engine.collectives import PROTOCOLS
from tspsim.opgraph.op import ALGORITHMS
from tspsim.simulate.collective import (  # noqa: F401 (OPS, busbw_factor re-exported)
    OPS,
    busbw_factor,
    simulate_collective,
    with_chunk,
)


@click.command("collective")
@click.option("--topology", "-t", required=True, help="Preset name (tspsim list topologies) or YAML path.")
@click.option("--op", "op", type=click.Choice(OPS), default="all_reduce", show_default=True, help="Collective.")
@click.option("--group", type=WholeNumberType(2), default=None,
              help="Number of ranks (first N GPUs; 8 = one node, 16 = two nodes). Default: one node.")
@click.option("--ranks", type=IntListType("rank", minimum=0), default=None, help="Explicit ranks, e.g. 0,8,16,24.")
@click.option("--sizes", type=SizeListType("size"), default="1k,64k,1M,16M,128M,1G",
              show_default=True, help="Message sizes (binary suffixes: 1k = 1024 bytes).")
@click.option("--algorithm", type=click.Choice(ALGORITHMS), default=None,
              help="Force an algorithm instead of the NCCL/RCCL-like policy.")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default=None,
              help="Force a wire protocol (like NCCL_PROTO) instead of the fastest.")
@click.option("--chunk-bytes", type=SizeListType("chunk size"), default=None,
              help="Largest pipeline chunk of tree and hierarchical collectives (default: the topology's "
                   "intra.chunk_bytes, NCCL's 512k).")
@click.option("--explain", is_flag=True,
              help="Show every candidate algorithm × protocol the policy weighed, with its predicted time.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object {\"results\": [...]}.")
def collective(topology: str, op: str, group: int | None, ranks: list[int] | None, sizes: list[int],
               algorithm: str | None, protocol: str | None, chunk_bytes: list[int] | None, explain: bool,
               as_json: bool) -> None:
    """Benchmark a collective in the simulator, like nccl-tests / rccl-tests.

    Prints size, time, algorithm bandwidth, bus bandwidth (nccl-tests' definition) and the algorithm,
    protocol and channels the policy chose. With --explain, every candidate and its predicted time.
    A sendrecv over a group that spans nodes measures rank 0 and the first rank on another node.

    \b
    Examples:
      tspsim collective --topology mi300x-1node --op all_reduce --group 8 --sizes 1k,1M,1G
      tspsim collective --topology mi300x-128node --op all_gather --group 16 --sizes 1G --json
      tspsim collective --topology h100-dgx-128node --group 1024 --sizes 1k,1M,1G --explain
      tspsim collective --topology mi300x-128node --group 32 --algorithm hier --chunk-bytes 128k
      tspsim collective --topology h100-dgx-128node --group 16 --sizes 1G,8G --algorithm nvls_tree
      tspsim collective --topology mi300x-128node --op sendrecv --group 16 --sizes 1G
    """
    from tspsim.core.progress import Progress
    from tspsim.spec.topology_file import load_topology

    topo = load_topology(topology)
    if chunk_bytes is not None:
        if len(chunk_bytes) != 1:
            raise TspsimError("--chunk-bytes takes one size, e.g. --chunk-bytes 512k")
        topo = with_chunk(topo, chunk_bytes[0])
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
    if op == "sendrecv" and (algorithm or protocol):
        raise TspsimError("sendrecv is a point-to-point transfer: --algorithm and --protocol do not apply")
    results = []
    with Progress(f"simulating {op} on {len(chosen)} ranks", total=len(sizes), every_s=1.0,
                  quiet_s=2.0) as bar:
        for size in sizes:  # one size can take seconds (a 1,024-rank all-to-all): report each
            results.append(simulate_collective(topo, op, chosen, size, algorithm or "", protocol or "", explain))
            bar.advance(item=f"{size:,} bytes")
    if as_json:
        emit_json({"results": results})
        return
    if op == "sendrecv":
        src, dst = results[0]["ranks"]
        what = f"sendrecv: rank {src} (node {topo.node_of(src)}) -> rank {dst} (node {topo.node_of(dst)})"
        count = 2
    else:
        what, count = f"group: {_ranks_text(chosen)}", len(chosen)
    click.echo(f"# {op} on {topo.name}, {count} ranks ({what})")
    click.echo(f"{'size':>12} {'time (us)':>12} {'algbw (GB/s)':>13} {'busbw (GB/s)':>13}  {'algorithm':<9} "
               f"{'protocol':<8} channels")
    for r in results:
        click.echo(f"{r['bytes']:>12} {r['time_s'] * 1e6:>12.2f} {r['algbw_GBps']:>13.2f} {r['busbw_GBps']:>13.2f}"
                   f"  {r['algorithm']:<9} {r['protocol']:<8} {r['channels']}")
        if explain and r["candidates"]:
            _explain(r)


def _explain(entry: dict) -> None:
    chosen = (entry["algorithm"], entry["protocol"])
    click.echo(f"{'':>14}candidates ({entry['bytes']} bytes): predicted time alone on the network")
    for c in entry["candidates"]:
        mark = "<- chosen" if (c["algorithm"], c["protocol"]) == chosen else (
            "" if c["considered"] else f"(not considered: {c['note']})")
        click.echo(f"{'':>16}{c['algorithm']:<9} {c['protocol']:<8} {c['channels']:>4} ch "
                   f"{c['time_s'] * 1e6:>12.2f} us  {mark}".rstrip())


def _ranks_text(ranks: tuple[int, ...]) -> str:
    if ranks == tuple(range(ranks[0], ranks[0] + len(ranks))):
        return f"{ranks[0]}..{ranks[-1]}"
    return ",".join(map(str, ranks[:16])) + ("…" if len(ranks) > 16 else "")

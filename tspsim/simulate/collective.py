"""One collective end to end, as nccl-tests / rccl-tests measure it (``tspsim collective``).

A one-collective op graph replayed on the topology; the entry reports time, algorithm bandwidth
algbw = bytes / time and bus bandwidth busbw = algbw × :func:`busbw_factor` (nccl-tests
doc/PERFORMANCE.md, reference/hardware.md §8), with the algorithm, protocol and channels the policy
chose and the candidates it weighed (:func:`tspsim.engine.collectives.candidates`: each one's time
predicted in isolation, which is what the replay of a lone collective gives).
"""

from __future__ import annotations

import dataclasses

from tspsim.core.errors import TspsimError
from tspsim.engine.collectives import candidates, choose
from tspsim.engine.sim import ReplayOptions, replay
from tspsim.opgraph import GraphBuilder
from tspsim.spec.collective_log_meta import busbw_factor
from tspsim.spec.topology import Topology
from tspsim.spec.topology_file import load_topology

OPS = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "reduce", "all_to_all", "sendrecv")


def with_chunk(topo: Topology, chunk_bytes: int | None) -> Topology:
    """``topo`` with another largest pipeline chunk (``intra.chunk_bytes``), or unchanged.

    Raises:
        TspsimError: for a chunk below 1 KiB or above 1 GiB.
    """
    if chunk_bytes is None:
        return topo
    if not 1024 <= chunk_bytes <= 2**30:
        raise TspsimError(f"--chunk-bytes {chunk_bytes} is outside 1k..1G; NCCL's default is 512k")
    return dataclasses.replace(topo, intra=dataclasses.replace(topo.intra, chunk_bytes=chunk_bytes))


def sendrecv_pair(topo: Topology, ranks: tuple[int, ...]) -> tuple[int, int]:
    """The two ranks a sendrecv measures.

    The first rank and, if the ranks span nodes, the first rank on another node (else the second rank).
    """
    first = ranks[0]
    other = next((r for r in ranks[1:] if topo.node_of(r) != topo.node_of(first)), ranks[1])
    return first, other


def simulate_collective(topology: str | Topology, op: str, ranks: tuple[int, ...], nbytes: int,
                        algorithm: str = "", protocol: str = "", explain: bool = False) -> dict:
    """Simulate one collective and return its entry.

    The stable keys of design.md §4, plus ``protocol``, ``channels``, ``ranks`` (the ranks measured)
    and ``candidates`` (what the policy weighed; with ``explain`` also the forced-only ones).
    """
    topo = load_topology(topology) if isinstance(topology, str) else topology
    if op == "sendrecv":
        pair = sendrecv_pair(topo, tuple(ranks))
        b = GraphBuilder(pair)
        b.p2p(pair[0], pair[1], nbytes, "sendrecv")
        measured, cands, proto, channels = list(pair), [], "Simple", 1
    else:
        root = ranks[0] if op in ("broadcast", "reduce") else -1
        chosen = choose(op, ranks, nbytes, topo, root, algorithm, protocol)
        cands = candidates(op, ranks, nbytes, topo, root, algorithm, protocol, everything=explain)
        proto, channels = chosen.protocol, chosen.channels
        b = GraphBuilder(ranks)
        b.collective(op, ranks, nbytes, op, algorithm=algorithm, root=root)
        measured = list(ranks)
    tl = replay(b.graph, topo, ReplayOptions(protocol=protocol))
    t = tl.end_s
    algbw = nbytes / t / 1e9 if t > 0 else 0.0
    algs = sorted(tl.collective_algorithms)
    return {"op": op, "group_size": len(measured), "bytes": nbytes, "algorithm": algs[0] if algs else "none",
            "time_s": t, "algbw_GBps": algbw, "busbw_GBps": algbw * busbw_factor(op, len(measured)),
            "protocol": proto, "channels": channels, "ranks": measured,
            "candidates": [c.to_json() for c in cands]}

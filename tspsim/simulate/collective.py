"""One collective end to end, as nccl-tests / rccl-tests measure it (``tspsim collective``).

A one-collective op graph replayed on the topology; the entry reports time, algorithm bandwidth
algbw = bytes / time and bus bandwidth busbw = algbw × :func:`busbw_factor` (nccl-tests
doc/PERFORMANCE.md, reference/hardware.md §8).
"""

from __future__ import annotations

from tspsim.engine.sim import replay
from tspsim.opgraph import GraphBuilder
from tspsim.spec.topology_file import load_topology

OPS = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "reduce", "all_to_all", "sendrecv")

def busbw_factor(op: str, n: int) -> float:
    """nccl-tests busbw factor for ``op`` on ``n`` ranks."""
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) / n
    return 1.0


def simulate_collective(topology: str, op: str, ranks: tuple[int, ...], nbytes: int, algorithm: str = "") -> dict:
    """Simulate one collective and return the stable JSON entry of design.md §4."""
    topo = load_topology(topology)
    b = GraphBuilder(ranks)
    if op == "sendrecv":
        b.p2p(ranks[0], ranks[1], nbytes, "sendrecv")
    else:
        b.collective(op, ranks, nbytes, op, algorithm=algorithm, root=ranks[0] if op in ("broadcast", "reduce") else -1)
    tl = replay(b.graph, topo)
    t = tl.end_s
    algbw = nbytes / t / 1e9 if t > 0 else 0.0
    algs = sorted(tl.collective_algorithms)
    return {"op": op, "group_size": len(ranks), "bytes": nbytes, "algorithm": algs[0] if algs else "none",
            "time_s": t, "algbw_GBps": algbw, "busbw_GBps": algbw * busbw_factor(op, len(ranks))}

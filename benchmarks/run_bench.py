"""Wall time and events/second of ``tspsim run --topology mi300x-128node`` (issue 3 speed target: < 10 s).

Runs the default comparison (TSP D=8, TP 8, TP+SP T=8×Σ=2; zyphra-7b, 128k tokens, one training step)
through the library, the way the command does, and prints per-schedule build and replay times, simpy
events and events/second, then the total. With ``--check-folding`` it also replays a 4-node topology
both folded (one replica) and in full (every rank) and prints both step times, which must be equal.

    python benchmarks/run_bench.py [--check-folding]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from tspsim.engine.sim import replay
from tspsim.simulate import Point, build_graph

POINTS = (
    Point("tsp", "mi300x-128node"),
    Point("tp", "mi300x-128node"),
    Point("tp+sp", "mi300x-128node", tp=8, sp=2),
)


def bench(points: tuple[Point, ...], fold: bool = True) -> float:
    """Simulate each point; print its timings; return the total wall time."""
    total = 0.0
    for point in points:
        t0 = time.perf_counter()
        graph, topo, *_ = build_graph(point, fold=fold)
        t1 = time.perf_counter()
        tl = replay(graph, topo)
        t2 = time.perf_counter()
        total += t2 - t0
        print(f"{point.schedule:6s} ranks={len(graph.ranks):4d} ops={len(graph.ops):7d} build={t1 - t0:6.2f}s "
              f"replay={t2 - t1:6.2f}s events={tl.sim_events:8d} events/s={tl.sim_events / (t2 - t1):9.0f} "
              f"step={tl.end_s:.6f}s")
    return total


def main() -> None:
    """Entry point."""
    print("# tspsim run --topology mi300x-128node (zyphra-7b, 128k, train)")
    total = bench(POINTS)
    print(f"total {total:.2f} s (target < 10 s)")
    if "--check-folding" in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "mi300x-4node.yaml"
            path.write_text("name: mi300x-4node\ninherit: mi300x-128node\nnodes: 4\n")
            for fold in (True, False):
                print(f"# 4 nodes, {'folded (one replica)' if fold else 'full (every rank)'}")
                bench(tuple(Point(p.schedule, str(path), tp=p.tp, sp=p.sp, seq_len=16384) for p in POINTS), fold)


if __name__ == "__main__":
    main()

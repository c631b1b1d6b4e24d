"""Speed of the collective simulator: wall time and simpy events per second.

Run from the repository root:  python benchmarks/collective_bench.py [--repeat N] [--strict]

Rows with a target (issue 12): a 1,024-rank all-to-all of 1 GiB and a 1,024-rank all-reduce at 12
sizes (1 KiB … 16 GiB, the policy's choice), each under 5 s of wall time, on mi300x-128node and
h100-dgx-128node; the forced hierarchical 1 GiB all-reduce over 1,024 GPUs under 2 s. A row's wall
time includes building the op graph, choosing the algorithm (predicting every candidate), building
its plan and the replay, on a fresh topology object (no cache carried over from an earlier row).
``--strict`` exits with status 1 when a point with a target misses it. This is a benchmark, not a
test: timing never gates the test suite.
"""

from __future__ import annotations

import argparse
import sys
import time

from tspsim.engine.sim import replay
from tspsim.opgraph import GraphBuilder
from tspsim.spec.topology_file import load_topology

GiB = 2**30
MiB = 2**20
ALL = tuple(range(1024))
AR_SIZES = [1024, 16 * 1024, 256 * 1024, MiB, 4 * MiB, 16 * MiB, 64 * MiB, 256 * MiB, GiB, 2 * GiB, 4 * GiB,
            16 * GiB]
"""The 12 sizes of the 1,024-rank all-reduce rows."""

# (label, topology, op, ranks, bytes, forced algorithm, target wall seconds or None)
POINTS = [
    ("8-GPU ring all-reduce 1 GiB", "mi300x-1node", "all_reduce", tuple(range(8)), GiB, "ring", None),
    ("8-GPU one-shot all-reduce 64 KiB", "mi300x-1node", "all_reduce", tuple(range(8)), 64 * 1024, "", None),
    ("8-GPU NVLS all-reduce 1 GiB", "h100-dgx-1node", "all_reduce", tuple(range(8)), GiB, "", None),
    ("16-GPU all-reduce 1 GiB", "mi300x-128node", "all_reduce", tuple(range(16)), GiB, "", None),
    ("16-GPU all-gather 1 GiB", "mi300x-128node", "all_gather", tuple(range(16)), GiB, "", None),
    ("128-GPU (1/node) all-reduce 1 GiB", "mi300x-128node", "all_reduce", tuple(range(0, 1024, 8)), GiB, "", None),
    ("1024-GPU hier all-reduce 1 GiB", "mi300x-128node", "all_reduce", ALL, GiB, "hier", 2.0),
    ("1024-GPU all-to-all 1 GiB", "mi300x-128node", "all_to_all", ALL, GiB, "", 5.0),
    ("1024-GPU all-to-all 1 GiB (fat tree)", "h100-dgx-128node", "all_to_all", ALL, GiB, "", 5.0),
] + [
    (f"1024-GPU all-reduce {size:,} B{' (fat tree)' if topo[0] == 'h' else ''}", topo, "all_reduce", ALL, size, "",
     5.0)
    for topo in ("mi300x-128node", "h100-dgx-128node") for size in AR_SIZES
]


def bench(topology: str, op: str, ranks: tuple[int, ...], nbytes: int, algorithm: str,
          repeat: int) -> tuple[float, float, int, float, str]:
    """Best-of-``repeat`` (build + replay wall s, replay wall s, events, simulated s, algorithm)."""
    best = None
    for _ in range(repeat):
        topo = load_topology(topology)  # fresh: no shapes cached by an earlier row or repeat
        _ = topo.links  # the link table is built once per topology object, outside the timing
        t0 = time.perf_counter()
        b = GraphBuilder(ranks)
        b.collective(op, ranks, nbytes, op, algorithm=algorithm)
        tl = replay(b.graph, topo)
        total = time.perf_counter() - t0
        row = (total, tl.sim_wall_s, tl.sim_events, tl.end_s, ",".join(sorted(tl.collective_algorithms)))
        if best is None or row[0] < best[0]:
            best = row
    assert best is not None
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per point; the best is reported")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a point misses its target")
    args = parser.parse_args()

    t0 = time.perf_counter()
    n_links = len(load_topology("mi300x-128node").links)
    print(f"load mi300x-128node + build {n_links:,} links: "
          f"{time.perf_counter() - t0:.3f} s (first load)")
    header = f"{'point':<48} {'alg':>9} {'wall ms':>9} {'replay ms':>10} {'events':>9} {'events/s':>10} " \
             f"{'sim time':>11}  target"
    print(header)
    print("-" * len(header))
    missed = 0
    for label, topology, op, ranks, nbytes, alg, target in POINTS:
        total, wall, events, sim_s, used = bench(topology, op, ranks, nbytes, alg, args.repeat)
        rate = events / wall if wall > 0 else float("inf")
        verdict = ""
        if target is not None:
            ok = total < target
            missed += not ok
            verdict = f"< {target:g} s: {'OK' if ok else 'MISSED'}"
        print(f"{label:<48} {used:>9} {total * 1e3:>9.2f} {wall * 1e3:>10.2f} {events:>9,} {rate:>10,.0f} "
              f"{sim_s * 1e3:>8.3f} ms  {verdict}")
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())

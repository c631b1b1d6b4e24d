"""Speed of the collective simulator: wall time and simpy events per second.

Run from the repository root:  python benchmarks/collective_bench.py [--repeat N] [--strict]

The headline point is a hierarchical all-reduce of 1 GiB over all 1,024 GPUs of mi300x-128node
(target: under 2 s of wall time for the replay). ``--strict`` exits with status 1 when a point with a
target misses it. This is a benchmark, not a test: timing never gates the test suite.
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

# (label, topology, op, ranks, bytes, forced algorithm, target wall seconds or None)
POINTS = [
    ("8-GPU ring all-reduce 1 GiB", "mi300x-1node", "all_reduce", tuple(range(8)), GiB, "ring", None),
    ("8-GPU one-shot all-reduce 64 KiB", "mi300x-1node", "all_reduce", tuple(range(8)), 64 * 1024, "", None),
    ("16-GPU hier all-reduce 1 GiB", "mi300x-128node", "all_reduce", tuple(range(16)), GiB, "", None),
    ("16-GPU hier all-gather 1 GiB", "mi300x-128node", "all_gather", tuple(range(16)), GiB, "", None),
    ("128-GPU (1/node) ring all-reduce 1 GiB", "mi300x-128node", "all_reduce", tuple(range(0, 1024, 8)), GiB,
     "", None),
    ("1024-GPU hier all-reduce 1 MiB", "mi300x-128node", "all_reduce", tuple(range(1024)), MiB, "", None),
    ("1024-GPU hier all-reduce 1 GiB", "mi300x-128node", "all_reduce", tuple(range(1024)), GiB, "", 2.0),
    ("1024-GPU hier all-reduce 1 GiB (fat tree)", "h100-dgx-128node", "all_reduce", tuple(range(1024)), GiB,
     "", None),
]


def bench(topology: str, op: str, ranks: tuple[int, ...], nbytes: int, algorithm: str,
          repeat: int) -> tuple[float, float, int, float, str]:
    """Best-of-``repeat`` (build + replay wall s, replay wall s, events, simulated s, algorithm)."""
    topo = load_topology(topology)
    _ = topo.links  # build the link table once, outside the timing (it is cached per topology)
    best = None
    for _ in range(repeat):
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
    header = f"{'point':<44} {'alg':>9} {'wall ms':>9} {'replay ms':>10} {'events':>9} {'events/s':>10} " \
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
        print(f"{label:<44} {used:>9} {total * 1e3:>9.2f} {wall * 1e3:>10.2f} {events:>9,} {rate:>10,.0f} "
              f"{sim_s * 1e3:>8.3f} ms  {verdict}")
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Every row of the speed table (issue 19): wall times of the commands users run, medians of --repeat.

Each row runs ``tspsim …`` in a fresh process (so imports count, as for a user) with a time limit;
a row over its limit prints ``> LIMIT s``. The training-step row also prints simpy-engine figures:
events, events/s, and the full versus the periodic path (:mod:`tspsim.engine.periodic`).

    python benchmarks/speed_bench.py                 # every row, median of 3 for the fast ones
    python benchmarks/speed_bench.py --quick         # skip the rows that take minutes
    python benchmarks/speed_bench.py --only cli,default

The 2,048-node and --full rows use a topology file that inherits ``mi300x-128node`` with more nodes
(written to a temporary directory).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS: list[tuple[str, str, list[str], float, str]] = [
    ("cli", "tspsim --help", ["--help"], 10, "< 0.2 s"),
    ("cli", "tspsim --version", ["--version"], 10, "< 0.2 s"),
    ("cli", "tspsim list topologies", ["list", "topologies"], 10, "< 0.2 s"),
    ("cli", "tspsim list schedules", ["list", "schedules"], 10, "< 0.2 s"),
    ("default", "run --topology mi300x-128node", ["run", "--topology", "mi300x-128node", "--json"], 120,
     "halve the issue's 3.8–4.6 s"),
    ("default", "run --topology mi300x-128node --jobs 1", ["run", "--topology", "mi300x-128node", "--jobs", "1",
                                                           "--json"], 120, "one process (no forked search)"),
    ("nodes", "run --topology <2,048 nodes>", ["run", "--topology", "{big2048}", "--json"], 300,
     "same as 128 nodes"),
    ("nodes", "run --topology <2,048 nodes> --jobs 1", ["run", "--topology", "{big2048}", "--jobs", "1", "--json"],
     300, "same as 128 nodes, one process"),
    ("full", "run --topology <16 nodes> --full", ["run", "--topology", "{big16}", "--full", "--json"], 600,
     "linear in nodes, bounded memory"),
    ("full", "run --topology <32 nodes> --full", ["run", "--topology", "{big32}", "--full", "--json"], 900,
     "linear in nodes, bounded memory"),
    ("generate", "run -t mi300x-1node --model llama3-8b --mode generate --seq 8k --tokens 256 --batch 8",
     ["run", "-t", "mi300x-1node", "--model", "llama3-8b", "--mode", "generate", "--seq", "8k", "--tokens", "256",
      "--batch", "8", "--json"], 600, "< 10 s"),
    ("decode", "run -t mi300x-1node --schedule tsp --mode decode --seq 32k --tokens 10000",
     ["run", "-t", "mi300x-1node", "--schedule", "tsp", "--mode", "decode", "--seq", "32k", "--tokens", "10000",
      "--json"], 900, "< 10 s"),
    ("plan", "plan -t mi300x-1node --model zyphra-7b --seq 128k",
     ["plan", "-t", "mi300x-1node", "--model", "zyphra-7b", "--seq", "128k", "--json"], 900, "< 20 s"),
    ("plan", "plan -t mi300x-1node --model llama3-70b --mode decode --context 8k --tokens 128 --batch-max 64",
     ["plan", "-t", "mi300x-1node", "--model", "llama3-70b", "--mode", "decode", "--context", "8k", "--tokens",
      "128", "--batch-max", "64", "--json"], 1200, "< 60 s"),
    ("plan", "plan -t mi300x-128node --model llama3-70b --seq 32k",
     ["plan", "-t", "mi300x-128node", "--model", "llama3-70b", "--seq", "32k", "--json"], 1800, "< 60 s"),
]
"""(group, what, tspsim arguments, time limit s, target)."""
SLOW = {"full", "generate", "decode", "plan"}


def topology_files(tmp: Path) -> dict[str, str]:
    """YAML files inheriting mi300x-128node with 16, 32 and 2,048 nodes."""
    out = {}
    for nodes in (16, 32, 2048):
        path = tmp / f"mi300x-{nodes}node.yaml"
        path.write_text(f"name: mi300x-{nodes}node\ndescription: bench\ninherit: mi300x-128node\nnodes: {nodes}\n")
        out[f"big{nodes}"] = str(path)
    return out


def timed(args: list[str], limit: float) -> tuple[float | None, float, int]:
    """(wall s or None if over the limit, CPU s, max RSS MB) of ``tspsim ARGS`` in a fresh process."""
    cmd = [sys.executable, "-c", "import sys; from tspsim.cli import main; sys.argv[0] = 'tspsim'; main()", *args]
    t0 = time.perf_counter()
    before = os.times()
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        return None, limit, 0
    wall = time.perf_counter() - t0
    after = os.times()
    if proc.returncode not in (0, 2) or (proc.returncode == 2 and args[0] not in ("list",)):
        sys.stderr.write(proc.stderr.decode()[-2000:])
    import resource
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    return wall, after.children_user + after.children_system - before.children_user - before.children_system, rss


def engine_row() -> None:
    """The TSP training step of the default run: full replay versus the periodic path."""
    from tspsim.engine.sim import ReplayOptions, replay
    from tspsim.simulate import Point, build_graph

    graph, topo, *_ = build_graph(Point("tsp", "mi300x-128node"))
    for label, periodic in (("full", False), ("periodic", True)):
        walls, tl = [], None
        for _ in range(3):
            t0 = time.perf_counter()
            tl = replay(graph, topo, ReplayOptions(periodic=periodic))
            walls.append(time.perf_counter() - t0)
        assert tl is not None
        wall = statistics.median(walls)
        print(f"  engine  TSP training step zyphra-7b 128k, {label:8s}: {wall:6.2f} s  events {tl.sim_events:8,d}  "
              f"{tl.sim_events / wall:10,.0f} events/s  step {tl.end_s:.9f} s  path {tl.sim_path} "
              f"(units skipped {tl.sim_units_skipped}); ops {len(graph.ops):,}")


def main() -> None:
    """Entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per fast row (median)")
    ap.add_argument("--quick", action="store_true", help="skip the rows that take minutes")
    ap.add_argument("--only", default="", help="comma-separated groups: " + ",".join(sorted({r[0] for r in ROWS})))
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    print(f"# speed table (issue 19), {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    if not only or "engine" in only:
        engine_row()
    with tempfile.TemporaryDirectory() as tmp:
        files = topology_files(Path(tmp))
        for group, what, argv, limit, target in ROWS:
            if (only and group not in only) or (args.quick and group in SLOW):
                continue
            argv = [a.format(**files) for a in argv]
            runs = args.repeat if group in ("cli", "default", "nodes") else 1
            results = [timed(argv, limit) for _ in range(runs)]
            walls = [w for w, _, _ in results if w is not None]
            if len(walls) < len(results):
                shown = f"> {limit:.0f} s"
            else:
                shown = f"{statistics.median(walls):7.2f} s"
            cpu = statistics.median(c for _, c, _ in results)
            print(f"  {group:8s} {what:100s} {shown:>10s}  CPU {cpu:7.2f} s  maxRSS {results[-1][2]:6d} MB"
                  f"  (target {target})", flush=True)


if __name__ == "__main__":
    main()

"""Every row of the speed table (issue 19): wall times of the commands users run, medians of --repeat.

Each row runs ``tspsim …`` in a fresh process (so imports count, as for a user) with a time limit;
a row over its limit prints ``> LIMIT s``. The training-step row also prints simpy-engine figures:
events, events/s, and the full versus the periodic path (:mod:`tspsim.engine.periodic`).

    python benchmarks/speed_bench.py                 # every row, median of 3 for the fast ones
    python benchmarks/speed_bench.py --quick         # skip the rows that take minutes
    python benchmarks/speed_bench.py --only cli,default
    python benchmarks/speed_bench.py --write-readme  # every row, then README.md's measured table replaced

The 2,048-node and --full rows use a topology file that inherits ``mi300x-128node`` with more nodes
(written to a temporary directory). ``--markdown`` prints the rows as the README's table; ``--write-readme``
writes that table between README.md's ``speed_bench`` markers (every row must have run).
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
FAST = {"cli", "default", "nodes"}
"""Groups timed --repeat times (round-robin across their rows) and reported as the median."""


def topology_files(tmp: Path) -> dict[str, str]:
    """YAML files inheriting mi300x-128node with 16, 32 and 2,048 nodes."""
    out = {}
    for nodes in (16, 32, 2048):
        path = tmp / f"mi300x-{nodes}node.yaml"
        path.write_text(f"name: mi300x-{nodes}node\ndescription: bench\ninherit: mi300x-128node\nnodes: {nodes}\n")
        out[f"big{nodes}"] = str(path)
    return out


FULL_GRAPH_OPS = 20_000_000
"""``TSPSIM_MAX_GRAPH_OPS`` for the ``--full`` rows (their graphs pass the default limit of 1,000,000 ops)."""


def timed(args: list[str], limit: float) -> tuple[float | None, float, int, bool]:
    """(wall s or None if over the limit, CPU s, max RSS MB, succeeded) of ``tspsim ARGS`` in a fresh process.

    CPU counts the process and the children it waited for (``run``'s forked search), not a ``plan``'s pool
    workers (children of the fork server); max RSS is the process's own (``os.wait4``).
    """
    cmd = [sys.executable, "-c", "import sys; from tspsim.cli import main; sys.argv[0] = 'tspsim'; main()", *args]
    env = dict(os.environ, TSPSIM_MAX_GRAPH_OPS=str(FULL_GRAPH_OPS)) if "--full" in args else None
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        before = os.times()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        deadline = t0 + limit
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                proc.returncode = -9
                return None, limit, 0, False
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        after = os.times()
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        ok = code == 0 or (code == 2 and args[0] == "list")
        if not ok:
            err.seek(0)
            sys.stderr.write(err.read().decode()[-2000:])
    cpu = after.children_user + after.children_system - before.children_user - before.children_system
    return wall, cpu, usage.ru_maxrss // 1024, ok


def engine_row() -> list[str]:
    """The TSP training step of the default run: full replay versus the periodic path (printed; also returned)."""
    from tspsim.engine.sim import ReplayOptions, replay
    from tspsim.simulate import Point, build_graph

    graph, topo, *_ = build_graph(Point("tsp", "mi300x-128node"))
    lines = []
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
        lines.append(f"{label} path {wall:.2f} s, {tl.sim_events:,} events, {tl.sim_events / wall:,.0f} events/s")
    return lines


README_START = "<!-- speed_bench:start -->"
README_END = "<!-- speed_bench:end -->"
"""The markers around README.md's measured table (``--write-readme`` replaces what is between them)."""


def markdown_table(measured: list[tuple[str, str, float, float, int, str]], header: str) -> str:
    """README table of (what, wall shown, CPU s, max RSS MB, target) rows, under a one-line ``header``."""
    lines = [header, "", "| what | wall | CPU | max RSS | target |", "|---|---|---|---|---|"]
    for _group, what, shown, cpu, rss, target in measured:
        lines.append(f"| `{what}` | {shown.strip()} | {cpu:.2f} s | {rss} MB | {target} |")
    return "\n".join(lines)


def write_readme(path: Path, table: str) -> None:
    """Replace the text between the README's speed_bench markers with ``table``."""
    text = path.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{path}: no {README_START} … {README_END} block to replace")
    head, rest = text.split(README_START, 1)
    _old, tail = rest.split(README_END, 1)
    path.write_text(f"{head}{README_START}\n{table}\n{README_END}{tail}")


def main() -> None:
    """Entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per fast row (median)")
    ap.add_argument("--quick", action="store_true", help="skip the rows that take minutes")
    ap.add_argument("--only", default="", help="comma-separated groups: " + ",".join(sorted({r[0] for r in ROWS})))
    ap.add_argument("--markdown", action="store_true", help="also print the rows as the README's table")
    ap.add_argument("--write-readme", action="store_true",
                    help="run every row, then replace README.md's measured table (between its speed_bench markers)")
    args = ap.parse_args()
    if args.write_readme and (args.only or args.quick):
        raise SystemExit("--write-readme needs every row: drop --only and --quick")
    only = set(filter(None, args.only.split(",")))
    load = os.getloadavg()[0]
    print(f"# speed table (issue 19), {os.cpu_count()} cores, load {load:.1f}")
    measured: list[tuple[str, str, float, float, int, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        files = topology_files(Path(tmp))
        rows = [(group, what, [a.format(**files) for a in argv], limit, target)
                for group, what, argv, limit, target in ROWS
                if not (only and group not in only) and not (args.quick and group in SLOW)]
        # the fast rows' repeats round-robin, so a drift of the machine's speed hits every row alike (their ratios)
        fast = [row for row in rows if row[0] in FAST]
        done: dict[str, list[tuple[float | None, float, int, bool]]] = {row[1]: [] for row in fast}
        for _ in range(args.repeat):
            for _group, what, argv, limit, _target in fast:
                done[what].append(timed(argv, limit))
        for group, what, argv, limit, target in rows:
            results = done.get(what) or [timed(argv, limit)]
            walls = [w for w, _, _, _ in results if w is not None]
            if len(walls) < len(results):
                shown = f"> {limit:.0f} s"
            elif not all(ok for *_, ok in results):
                shown = "failed"
            else:
                shown = f"{statistics.median(walls):7.2f} s"
            cpu = statistics.median(c for _, c, _, _ in results)
            print(f"  {group:8s} {what:100s} {shown:>10s}  CPU {cpu:7.2f} s  maxRSS {max(r[2] for r in results):6d} MB"
                  f"  (target {target})", flush=True)
            measured.append((group, what, shown, cpu, max(r[2] for r in results), target))
    # in this process, last: a graph loaded here would count in the max RSS of every later child (fork copies it)
    engine = engine_row() if not only or "engine" in only else []
    header = (f"Measured by `python benchmarks/speed_bench.py --write-readme` on {os.cpu_count()} cores (load "
              f"{load:.1f} at the start; wall: median of {args.repeat} round-robin runs for the fast rows, one "
              "run for the others; CPU: the process and the children it waits for (`run`'s forked search, not "
              "`plan`'s pool workers); max RSS: the command's own process).")
    table = markdown_table(measured, header)
    if engine:
        table += ("\n\nReplay of the default run's TSP training step (zyphra-7b, 128k, "
                  f"{os.cpu_count()} cores, in process, median of 3): " + "; ".join(engine) + ".")
    if args.markdown or args.write_readme:
        print(table)
    if args.write_readme:
        write_readme(Path(__file__).resolve().parents[1] / "README.md", table)
        print("wrote README.md's measured table", flush=True)


if __name__ == "__main__":
    main()

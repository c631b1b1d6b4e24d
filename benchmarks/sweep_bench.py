"""Speed of ``tspsim sweep``: wall time of a 48-point single-node sweep with --jobs 2 and --jobs 1.

Run from the repository root:  python benchmarks/sweep_bench.py [--jobs 2] [--strict]

The grid is 3 schedules (tsp, tp, sp) × 4 degrees (D = 1, 2, 4, 8) × 4 sequence lengths (16k, 32k, 64k,
128k) of zyphra-7b training on mi300x-1node. Each run is the real command line in a fresh output
directory (no cache), so the times include start-up, validation and writing results.csv, results.json
and sweep.html. Targets: the parallel run under 60 s and close to --jobs× faster than --jobs 1. The
two results.json files must be byte-identical. Per-point simulation times (kept in the cache files)
show where the time goes. This is a benchmark, not a test: timing never gates the test suite.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = ["-t", "mi300x-1node", "--model", "zyphra-7b", "--schedule", "tsp,tp,sp", "--degree", "1,2,4,8",
        "--seq", "16k,32k,64k,128k", "--mode", "train"]
TARGET_S = 60.0


def run_sweep(out: Path, jobs: int) -> float:
    """Wall seconds of one ``tspsim sweep`` run into ``out``."""
    cmd = [sys.executable, "-m", "tspsim.cli", "sweep", *GRID, "--jobs", str(jobs), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"sweep --jobs {jobs} failed ({proc.returncode}):\n{proc.stderr}")
    print(f"  {proc.stderr.strip().splitlines()[-1]}")
    return wall


def point_times(out: Path) -> list[tuple[str, int, int, float]]:
    """(schedule, D, seq, simulation wall s) of every point, from the cache files."""
    rows = []
    for f in (out / "cache").glob("*.json"):
        data = json.loads(f.read_text())
        e = data["entry"]
        rows.append((e["schedule"], e["degrees"].get("D", 0), e["seq_len"], data.get("wall_s") or 0.0))
    return sorted(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="workers of the parallel run (default 2)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tspsim-sweep-bench-") as tmp:
        par, ser = Path(tmp) / f"jobs{args.jobs}", Path(tmp) / "jobs1"
        print(f"48-point sweep: {' '.join(GRID)}")
        print(f"--jobs {args.jobs}:")
        t_par = run_sweep(par, args.jobs)
        print("--jobs 1:")
        t_ser = run_sweep(ser, 1)
        same = (par / "results.json").read_bytes() == (ser / "results.json").read_bytes()
        times = point_times(ser)

    speedup = t_ser / t_par if t_par > 0 else float("inf")
    total = sum(t for *_, t in times)
    print()
    print(f"wall time --jobs {args.jobs}: {t_par:7.2f} s   (target < {TARGET_S:g} s: "
          f"{'OK' if t_par < TARGET_S else 'MISSED'})")
    print(f"wall time --jobs 1: {t_ser:7.2f} s")
    print(f"speedup:            {speedup:7.2f}×  (ideal {args.jobs}×)")
    print(f"results.json identical: {same}")
    print(f"sum of per-point simulation times: {total:.2f} s; start-up, validation and output: "
          f"{t_ser - total:.2f} s of the --jobs 1 run")
    print()
    print("where the time goes (--jobs 1, seconds per point):")
    by_sched: dict[str, float] = {}
    for sched, _, _, t in times:
        by_sched[sched] = by_sched.get(sched, 0.0) + t
    for sched, t in sorted(by_sched.items(), key=lambda kv: -kv[1]):
        print(f"  {sched:<6} {t:7.2f} s total")
    slow = sorted(times, key=lambda r: -r[3])[:5]
    print("  slowest points: " + ", ".join(f"{s} D={d} seq {q // 1024}k {t:.2f} s" for s, d, q, t in slow))
    ok = same and t_par < TARGET_S
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())

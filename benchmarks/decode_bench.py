"""Speed of decode simulation: wall time of N-token decodes (issue 6).

Run from the repository root:  python benchmarks/decode_bench.py [--quick] [--strict] [--check]

Headline: a 1,000-token decode of llama3-70b on mi300x-1node (tp D=8, batch 1, 4k context), target
under 10 s of wall time for the serving metrics (ttft, tpot, throughput, breakdown). ``max batch`` is
the extra wall time of the max_batch search (every probe a full simulation of the final decode step).
``--check`` also simulates every step of a short decode in full and prints the largest relative
difference of the step times (must be ≤ 1e-9). ``--strict`` exits 1 when the headline misses its
target. A benchmark, not a test: timing never gates the test suite.
"""

from __future__ import annotations

import argparse
import sys
import time

from tspsim.explore.max_batch import search_max_batch
from tspsim.simulate import RunResult
from tspsim.simulate.inference import simulate_inference
from tspsim.spec.assumptions import Assumptions
from tspsim.spec.layout import make_layout
from tspsim.spec.model import load_model
from tspsim.spec.topology_file import load_topology
from tspsim.spec.workload import Workload

# (label, schedule, plan keywords, options, tokens, target seconds or None)
POINTS = [
    ("tp D=8, 1000 tokens", "tp", {"degree": 8}, {}, 1000, 10.0),
    ("tsp D=8 token, 1000 tokens", "tsp", {"degree": 8}, {"tsp_decode": "token"}, 1000, None),
    ("tp+sp T=4xS=2, 1000 tokens", "tp+sp", {"tp": 4, "sp": 2}, {}, 1000, None),
    ("sp D=8, 1000 tokens", "sp", {"degree": 8}, {}, 1000, None),
    ("tsp D=8 weights, 32 tokens", "tsp", {"degree": 8}, {}, 32, None),
]
QUICK = {"tp D=8, 1000 tokens", "tsp D=8 token, 1000 tokens"}


def run(schedule: str, kw: dict, options: dict, tokens: int, *, periodic: bool = True, max_batch: bool = False,
        model: str = "llama3-70b", context: int = 4096):
    """Simulate one decode point; returns (wall s, InferenceRun)."""
    topo = load_topology("mi300x-1node")
    m = load_model(model)
    w = Workload("decode", context, 1, tokens)
    plan = make_layout(schedule, topo, m, w, **kw)
    t0 = time.perf_counter()
    opts = Assumptions.from_overrides(options)
    r = simulate_inference(topo, m, plan, w, opts, periodic=periodic)
    if max_batch:
        r.fields["max_batch"], _ = search_max_batch(RunResult(r.fields, r.timeline, topo, m, plan, w, opts,
                                                              r.timelines))
    return time.perf_counter() - t0, r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the tp and tsp-token points")
    ap.add_argument("--strict", action="store_true", help="exit 1 if the headline misses its target")
    ap.add_argument("--check", action="store_true", help="compare periodic assembly with full simulation")
    args = ap.parse_args()
    load_topology("mi300x-1node").links  # noqa: B018  (build the link table outside the timings)
    print("llama3-70b on mi300x-1node, batch 1, context 4096, decode")
    head = f"{'point':30s} {'wall s':>8s} {'max batch s':>11s} {'tpot ms':>9s} {'method':>7s} {'events':>10s} " \
           f"{'check':>8s}"
    print(head)
    missed = False
    for label, schedule, kw, options, tokens, target in POINTS:
        if args.quick and label not in QUICK:
            continue
        wall, r = run(schedule, kw, options, tokens)
        mb_wall = ""
        if target is not None:
            t_mb, r_mb = run(schedule, kw, options, tokens, max_batch=True)
            mb_wall = f"{t_mb - wall:11.2f}"
        f = r.fields
        print(f"{label:30s} {wall:8.2f} {mb_wall:>11s} {f['tpot_s'] * 1e3:9.3f} {f['decode_sim']:>7s} "
              f"{f['sim_events']:10d} {f['decode_check_rel_err']:8.1e}", flush=True)
        if target is not None and wall > target:
            missed = True
            print(f"  missed target: {wall:.2f} s > {target:.0f} s")
    if args.check:
        print("\nexactness: 12 decode steps of llama3-8b, periodic assembly vs every step simulated in full")
        for schedule, kw, options in [("tp", {"degree": 8}, {}), ("tsp", {"degree": 8}, {}),
                                      ("tp+sp", {"tp": 4, "sp": 2}, {})]:
            _, a = run(schedule, kw, options, 12, model="llama3-8b")
            _, b = run(schedule, kw, options, 12, periodic=False, model="llama3-8b")
            err = max(abs(x.time_s - y.time_s) / y.time_s for x, y in zip(a.steps, b.steps))
            print(f"  {schedule:6s} {options or ''!s:24s} method={a.fields['decode_sim']:7s} max rel diff {err:.1e}")
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Graph reuse in a hardware what-if sweep: the same points with and without sharing their op graphs.

Run from the repository root:  python benchmarks/whatif_bench.py [--seq 16k,128k] [--repeat 2] [--mode decode]

Three one-node topologies that differ only in what the replay reads (the preset, a faster GPU / HBM / xGMI and
a slower one, written to a temporary folder) × tsp, tp, tp+sp × the sequence lengths, zyphra-7b training (or
``--mode decode``: ``--tokens`` decode steps after a context of each sequence length, max-batch search on). Each
point is run in this process twice: alone (``run_point`` without a memo: every graph built) and through the
in-process runner (``SerialRunner``: points that share a graph run one after the other and build it once).
Prints the CPU seconds of both (best of ``--repeat``), the graphs reused, and whether every entry is identical.
This is a benchmark, not a test: timing never gates the test suite.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

FAST = ("name: mi300x-fast\ninherit: mi300x-1node\ngpu:\n  peak_bf16_TFLOPS: 1500\n  hbm_TBps: 6.0\n"
        "intra:\n  link_GBps: 96\n")
SLOW = "name: mi300x-slow\ninherit: mi300x-1node\ngpu:\n  gemm_efficiency: 0.6\nintra:\n  link_GBps: 48\n"


def main() -> int:
    from tspsim.core.units import parse_size
    from tspsim.explore.runners import SerialRunner, run_point
    from tspsim.simulate import Point

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", default="32k,128k", help="sequence lengths (default 32k,128k)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each variant; the best counts (default 2)")
    parser.add_argument("--mode", choices=("train", "decode"), default="train", help="workload (default train)")
    parser.add_argument("--tokens", type=int, default=64, help="decode steps per point with --mode decode (64)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tspsim-whatif-") as tmp:
        fast, slow = Path(tmp) / "fast.yaml", Path(tmp) / "slow.yaml"
        fast.write_text(FAST)
        slow.write_text(SLOW)
        extra = {"mode": "decode", "decode_tokens": args.tokens} if args.mode == "decode" else {}
        points = [Point(s, t, seq_len=parse_size(q), **extra) for t in ("mi300x-1node", str(fast), str(slow))
                  for s in ("tsp", "tp", "tp+sp") for q in args.seq.split(",")]
        alone_s, shared_s, hits = float("inf"), float("inf"), 0
        for _ in range(args.repeat):
            t0 = time.process_time()
            alone = [run_point(p) for p in points]
            alone_s = min(alone_s, time.process_time() - t0)
            t0 = time.process_time()
            with SerialRunner() as runner:
                shared = dict(runner.run(points))
                hits = runner._graphs.hits
            shared_s = min(shared_s, time.process_time() - t0)

    def stable(result: dict) -> dict:
        return {k: v for k, v in result.get("entry", result).items() if k != "sim_wall_s"}

    same = all(stable(shared[i]) == stable(r) for i, r in enumerate(alone))
    what = f"decode {args.tokens} tokens" if args.mode == "decode" else "train"
    print(f"{len(points)} points ({what}): 3 topologies (mi300x-1node, faster, slower) x tsp, tp, tp+sp x seq "
          f"{args.seq}")
    print(f"  every graph built:      {alone_s:6.2f} s CPU")
    print(f"  graphs shared (memo):   {shared_s:6.2f} s CPU  ({hits} graphs reused, "
          f"{100 * (1 - shared_s / alone_s):.0f}% less)")
    print(f"  entries identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

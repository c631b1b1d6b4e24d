"""Speed and quality of ``tspsim calibrate`` on the shared nccl-tests logs (tests/data/collective-logs).

Run from the repository root:  python benchmarks/calibrate_bench.py [--cross]

For every log a preset can host, fits the log alone to its preset and prints the wall time of the
fit, the model evaluations it used, the fit error before / after (mean over the sizes of max(model /
measured, measured / model) − 1, replayed) and the parameters that ended at the edge of their
plausible range. With ``--cross`` it also fits 07 (4 H100 nodes) and prints the error of the preset
and of the fitted topology on every other H100 log (the numbers of README: Calibrating to your
cluster). Issue 17's target: seconds per log, not minutes. A benchmark, not a test: timing never
gates the test suite.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from tspsim.core.errors import TspsimError
from tspsim.explore.calibrate import calibrate, error_factor, mean_error
from tspsim.explore.measured import host, host_topology, replay
from tspsim.spec.collective_log import read_collective_log
from tspsim.spec.topology_file import load_topology

LOGS = Path(__file__).resolve().parent.parent / "tests" / "data" / "collective-logs"


def preset_for(name: str) -> str | None:
    """The preset a shared log is checked against (None: no preset hosts it)."""
    if "mi300x" in name:
        return "mi300x-1node"
    if "h200" in name:
        return "h200-dgx-128node"
    if "h100" in name:
        return "h100-dgx-128node"
    if "a100" in name:
        return "dgx-a100-128node"  # OCI's A100 40 GB nodes on RoCE: the nearest preset (HDR IB)
    return None


def error(topo, log) -> float:
    """Mean error factor (max(model/measured, measured/model) − 1) of ``log`` replayed on ``topo``."""
    h = host(log, topo)
    obs = h.observations()
    entries = replay(host_topology(topo, h.nodes), obs)
    return float(np.mean([error_factor(e["time_s"], o.measured_s) for e, o in zip(entries, obs)]))


def main() -> None:
    """Print the table(s)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cross", action="store_true", help="also fit 07 and predict the other H100 logs")
    args = ap.parse_args()
    print(f"{'log':<58} {'preset':<17} {'fit s':>6} {'evals':>6} {'before':>7} {'after':>7}  at the edge")
    for path in sorted(LOGS.glob("*.txt")):
        preset = preset_for(path.name)
        if preset is None:
            print(f"{path.name:<58} (no preset hosts it)")
            continue
        log = read_collective_log(str(path))
        start = time.perf_counter()
        try:
            cal = calibrate(load_topology(preset), [log])
        except TspsimError as exc:
            print(f"{path.name:<58} {preset:<17} {exc}")
            continue
        wall = time.perf_counter() - start
        edge = ", ".join(f"{v.parameter.name} {v.shown[1]:.4g}" for v in cal.values if v.at_bound)
        print(f"{path.name:<58} {preset:<17} {wall:>6.2f} {cal.evaluations:>6} "
              f"{mean_error(cal.rows, False):>7.1%} {mean_error(cal.rows, True):>7.1%}  {edge}")
    if args.cross:
        base = load_topology("h100-dgx-128node")
        fitted = calibrate(base, [read_collective_log(str(next(LOGS.glob("07-*.txt"))))]).fitted
        print("\nfitted to 07 (4 nodes); error on the other H100 logs (preset -> fitted):")
        for path in sorted(LOGS.glob("*h100*.txt")):
            log = read_collective_log(str(path))
            h = host(log, base)
            print(f"  {path.name:<58} {h.nodes} node{'s' if h.nodes > 1 else ' '} {error(base, log):>7.1%} -> "
                  f"{error(fitted, log):>7.1%}")


if __name__ == "__main__":
    main()

"""Wall time of the pipelined steps of Korthikanti et al. 2022 Table 5 and of ``tspsim validate`` (issue 14).

Prints, for the four Table 5 configurations (GPT-3 175B on 64 A100s: TP 8 × PP 8 interleaved with 3 virtual
stages, 64 micro-batches; 1T on 512 A100s: TP 8 × PP 64, 512 micro-batches; each with full recompute and with
sequence parallelism + selective recompute), the wall time of one simulated step, the micro-batches the replay
held (the rest extrapolated from the steady state, :mod:`tspsim.simulate.pipeline_timer`), the ops and simpy
events, and the simulated step time against the published one. ``--validate`` also times ``tspsim validate``.

Targets (issue 14): the 1T step under 60 s, each 175B step under 20 s, ``tspsim validate`` under 2 minutes.

    python benchmarks/pipeline_bench.py
    python benchmarks/pipeline_bench.py --validate
    python benchmarks/pipeline_bench.py --strict      # exit 1 if a target is missed
"""

from __future__ import annotations

import argparse
import sys
import time

from tspsim.explore.validation_pipeline import CASES, VARIANTS
from tspsim.simulate import Point, simulate
from tspsim.spec.pipeline_spec import PipelineSpec

TARGET_S = {"gpt3-175b": 20.0, "megatron-1t": 60.0}
"""Wall-time targets per model (s)."""
VALIDATE_TARGET_S = 120.0
"""Wall-time target of ``tspsim validate`` (s)."""


def main() -> int:
    """Run the benchmark; 1 with ``--strict`` when a target is missed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--validate", action="store_true", help="also time `tspsim validate` (all rows)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a point misses its target")
    args = ap.parse_args()
    missed = False
    print(f"{'configuration':<44} {'wall s':>7} {'target':>7} {'sim mb':>6} {'ops':>9} {'events':>10} "
          f"{'step s':>8} {'published':>9} {'error':>7}")
    for key, label, model, gpus, pp, v, batch, full_s, sel_s in CASES:
        for suffix, schedule, recompute, what in VARIANTS:
            point = Point(schedule, "dgx-a100-128node", model=model, seq_len=2048, batch=1, degree=8, gpus=gpus,
                          options=(("recompute", recompute), ("stack", "megatron-lm-2022")),
                          pipeline=PipelineSpec(stages=pp, virtual_stages=v, global_batch=batch))
            t0 = time.perf_counter()
            res = simulate(point)
            wall = time.perf_counter() - t0
            e = res.entry
            published = full_s if suffix == "full" else sel_s
            target = TARGET_S[key]
            missed |= wall > target
            print(f"{label + ', ' + what:<44} {wall:>7.1f} {target:>7.0f} "
                  f"{e['pipeline']['simulated_micro_batches']:>6} {len(res.timeline.ops):>9,} "
                  f"{e['sim_events']:>10,} {e['step_time_s']:>8.2f} {published:>9.2f} "
                  f"{100 * (e['step_time_s'] / published - 1):>+6.1f}%", flush=True)
    if args.validate:
        from tspsim.explore.validation import validation_rows

        t0 = time.perf_counter()
        rows = validation_rows()
        wall = time.perf_counter() - t0
        missed |= wall > VALIDATE_TARGET_S
        print(f"tspsim validate: {len(rows)} rows in {wall:.1f} s (target {VALIDATE_TARGET_S:.0f} s)")
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())

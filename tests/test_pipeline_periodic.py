"""Long pipelines timed from a shorter probe equal the full replay (issue 14; :mod:`tspsim.simulate.pipeline_timer`).

Each configuration is simulated twice — ``simulate_training(point)`` (probe + steady-state window) and with
``periodic=False`` (every micro-batch replayed) — and the step time, bytes, compute, communication, overlap and
bubble must agree to 1e-9 relative, the peak memory exactly.
"""

from __future__ import annotations

import pytest

from tspsim.simulate import Point
from tspsim.simulate.pipeline_timer import probe_micro_batches
from tspsim.simulate.training import simulate_training
from tspsim.spec.pipeline_spec import PipelineSpec


@pytest.fixture(scope="module")
def model(model_yaml) -> str:
    return model_yaml("periodic-pipe", hidden=512, layers=8, q_heads=8, kv_heads=8, head_dim=64, ffn_hidden=2048,
                      vocab=1024)


BLOCKING = (("pp_overlap_p2p", False),)
CASES = [
    # (schedule, degrees, topology, GPUs, pipeline, options, a window is expected)
    ("tp", {"degree": 2}, "h100-dgx-1node", 8, PipelineSpec(stages=4, global_batch=48), BLOCKING, True),
    ("satp-seq", {"degree": 2}, "h100-dgx-1node", 8, PipelineSpec(stages=4, global_batch=48),
     (("stack", "megatron-lm-2022"), ("recompute", "selective")), True),
    ("tp", {"degree": 2}, "h100-dgx-1node", 8, PipelineSpec(stages=2, virtual_stages=2, global_batch=32), BLOCKING,
     True),
    ("tp", {"degree": 2}, "h100-dgx-1node", 8, PipelineSpec(stages=4, virtual_stages=2, global_batch=48), BLOCKING,
     True),
    ("tp", {"degree": 8}, "mi300x-4node", 32, PipelineSpec(stages=2, global_batch=160), BLOCKING + (("zero", 1),),
     True),
    # overlapped receives settle slowly into a 3-pair cycle: no window in the probe, the whole step is replayed
    ("tp", {"degree": 2}, "h100-dgx-1node", 8, PipelineSpec(stages=4, global_batch=48), (), False),
]


@pytest.mark.slow
@pytest.mark.parametrize(("schedule", "kw", "topo", "gpus", "pipe", "opts", "window"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_probe_equals_full(model, mi300x_4node_yaml, schedule, kw, topo, gpus, pipe, opts, window):
    topo = mi300x_4node_yaml if topo == "mi300x-4node" else topo
    point = Point(schedule, topo, model=model, seq_len=1024, gpus=gpus, pipeline=pipe, options=opts, **kw)
    fast, full = simulate_training(point), simulate_training(point, periodic=False)
    a, b = fast.entry, full.entry
    m = b["micro_batches"]
    assert m == a["micro_batches"] == b["pipeline"]["simulated_micro_batches"]
    assert (a["pipeline"]["simulated_micro_batches"] < m) is window
    assert (a["pipeline"]["periods_extrapolated"] > 0) is window
    for key in ("step_time_s", "compute_s", "comm_s", "exposed_comm_s", "overlap_pct", "bubble_pct", "tokens_per_s",
                "mfu"):
        assert a[key] == pytest.approx(b[key], rel=1e-9), key
    assert a["peak_memory_gb"] == b["peak_memory_gb"]
    assert a["comm_bytes_per_rank"].keys() == b["comm_bytes_per_rank"].keys()
    for kind, v in b["comm_bytes_per_rank"].items():
        assert a["comm_bytes_per_rank"][kind] == pytest.approx(v, rel=1e-9), kind
    for s_a, s_b in zip(a["pipeline"]["per_stage"], b["pipeline"]["per_stage"]):
        for key in ("busy_s", "idle_s", "forward_s", "backward_s"):
            assert s_a[key] == pytest.approx(s_b[key], rel=1e-9, abs=1e-12), key
        assert s_a["peak_memory_gb"] == s_b["peak_memory_gb"]


def test_probe_sizes():
    assert probe_micro_batches(512, 64, "1f1b") == 80          # 64 + 16 (12 divides 512 − 80)
    assert probe_micro_batches(505, 64, "1f1b") == 85          # lengthened so 12 divides 505 − 85
    assert probe_micro_batches(512, 64, "1f1b", attempt=1) == 224   # the longer second probe
    assert probe_micro_batches(64, 8, "interleaved") == 32
    assert probe_micro_batches(40, 8, "interleaved") is None     # fewer than 1.5 probes: simulate it all
    assert probe_micro_batches(512, 64, "gpipe") is None
    assert probe_micro_batches(8, 1, "1f1b") is None


def test_no_window_before_the_steady_state_repeats(model):
    """A probe too short for the transient to settle (P = 4, two micro-batches past the warm-up: pair times still
    shrink from one pair to the next) gives no window: the caller then replays the whole step."""
    from tspsim.engine.sim import replay
    from tspsim.schedules import SCHEDULES
    from tspsim.schedules.context import BuildContext
    from tspsim.simulate.pipeline_timer import window_for
    from tspsim.simulate.point import resolve

    point = Point("tp", "h100-dgx-1node", model=model, seq_len=1024, degree=2, gpus=8,
                  pipeline=PipelineSpec(stages=4, global_batch=6))
    topo, cfg, layout, workload, opts = resolve(point)
    ctx = BuildContext(cfg, topo, layout, workload, opts)
    graph = SCHEDULES.get("tp").build(ctx)
    tl = replay(graph, topo)
    assert window_for(graph, tl, ctx.pipeline, 100, 6, "1f1b") is None

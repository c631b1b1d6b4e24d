"""The planner's lower bound on a training step (tspsim.explore.step_bound) never exceeds the simulated step."""

from __future__ import annotations

import pytest

from tspsim.explore.step_bound import compute_per_rank, step_bound
from tspsim.simulate import Point, build_graph, simulate
from tspsim.spec.pipeline_spec import PipelineSpec


@pytest.fixture(scope="module")
def tiny(tiny5: str) -> str:
    return tiny5


def _points(model: str) -> list[Point]:
    """Every schedule family the planner bounds: SP algorithms, ZeRO stages, recompute, batches, folded DP,
    FSDP micro-batches at a global batch, an eager stack."""
    out: list[Point] = []
    for batch in (1, 2):
        out += [Point("tsp", "mi300x-1node", model, seq_len=4096, batch=batch, degree=4),
                Point("tp", "mi300x-1node", model, seq_len=4096, batch=batch, degree=2),
                Point("satp-seq", "mi300x-1node", model, seq_len=4096, batch=batch, degree=8),
                Point("satp-batch", "mi300x-1node", model, seq_len=4096, batch=2 * batch, degree=2)]
        for algo in ("allgather", "ring", "ulysses"):
            out += [Point("sp", "mi300x-1node", model, seq_len=4096, batch=batch, degree=4,
                          options=(("sp_attention", algo),)),
                    Point("tp+sp", "mi300x-1node", model, seq_len=4096, batch=batch, tp=2, sp=4,
                          options=(("sp_attention", algo),))]
    out += [Point("tp", "mi300x-1node", model, seq_len=4096, degree=1, options=(("zero", z),)) for z in (1, 2, 3)]
    out += [Point("tsp", "mi300x-1node", model, seq_len=2048, degree=8, options=(("recompute", r),))
            for r in ("none", "selective")]
    out += [Point("tp", "mi300x-128node", model, seq_len=4096, degree=8, gpus=32),   # folded: one replica of four
            Point("tp+sp", "mi300x-128node", model, seq_len=4096, tp=8, sp=2, gpus=32,
                  options=(("sp_attention", "ring"),)),
            Point("fsdp", "mi300x-1node", model, seq_len=4096, pipeline=PipelineSpec(global_batch=16)),
            Point("sp", "mi300x-1node", model, seq_len=4096, degree=8, options=(("zero", 3),),
                  pipeline=PipelineSpec(global_batch=4)),
            Point("tp", "mi300x-1node", model, seq_len=4096, degree=4, options=(("stack", "megatron-lm-2022"),))]
    return out


@pytest.mark.slow
def test_the_bound_is_below_the_simulated_step_and_its_extrapolation_is_the_full_graphs_sum(tiny: str) -> None:
    checked = 0
    for point in _points(tiny):
        bound = step_bound(point)
        assert bound is not None, point
        graph, topo = build_graph(point)[:2]
        full = max(compute_per_rank(graph, topo).values())
        assert bound.step_s == pytest.approx(full, rel=1e-9), point     # c(1) + (L − 1)(c(2) − c(1)) = the L-block sum
        entry = simulate(point).entry
        assert bound.step_s <= entry["step_time_s"], point
        assert bound.tokens_per_s >= entry["tokens_per_s"], point
        assert bound.tokens_per_step == pytest.approx(entry["tokens_per_s"] * entry["step_time_s"], rel=1e-9)
        checked += 1
    assert checked == len(_points(tiny)) >= 30


def test_pipelined_layouts_and_inference_get_no_bound(tiny: str) -> None:
    assert step_bound(Point("satp-seq", "mi300x-1node", tiny, seq_len=4096, degree=2,
                            pipeline=PipelineSpec(stages=4, global_batch=8))) is None
    assert step_bound(Point("tsp", "mi300x-1node", tiny, mode="prefill", seq_len=4096, degree=8)) is None


def test_the_note_names_both_numbers(tiny: str) -> None:
    bound = step_bound(Point("tp", "mi300x-1node", tiny, seq_len=4096, degree=8))
    assert bound is not None
    note = bound.note(bound.tokens_per_s * 2)
    assert note.startswith("dominated: step ≥ ") and "tokens/s < best simulated" in note

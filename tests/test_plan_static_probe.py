"""The planner's static-memory probe (tspsim.explore.static_memory.static_probe) stops each build right after its
static memory is allocated; its bytes are those of the whole graph, for every schedule."""

from __future__ import annotations

import pytest
from tiny_models import tiny_32_heads

from tspsim.explore.static_memory import small_graphs, static_bytes, static_prefix, static_probe
from tspsim.schedules import SCHEDULES
from tspsim.simulate import Point, build_graph
from tspsim.spec.pipeline_spec import PipelineSpec


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("static_probe") / "tiny4.yaml"
    path.write_text(tiny_32_heads(layers=4))
    return str(path)


def _points(model: str) -> list[Point]:
    """Every registered schedule; ZeRO stages, recomputation, forward, folded DP, FSDP, pipelines, prefill."""
    out = [Point(name, "mi300x-1node", model, seq_len=4096, batch=2, degree=2) for name in SCHEDULES.names()
           if name not in ("tp+sp", "fsdp")]
    out += [Point("tp+sp", "mi300x-1node", model, seq_len=4096, tp=2, sp=4, options=(("zero", z),)) for z in (0, 1, 3)]
    out += [Point("tp", "mi300x-1node", model, seq_len=4096, degree=1, options=(("zero", z),)) for z in (1, 2, 3)]
    out += [Point("tsp", "mi300x-1node", model, seq_len=2048, degree=8, options=(("recompute", "selective"),)),
            Point("satp-batch", "mi300x-1node", model, seq_len=2048, batch=4, degree=4),
            Point("sp", "mi300x-1node", model, mode="forward", seq_len=4096, degree=4),
            Point("tp", "mi300x-128node", model, seq_len=4096, degree=8, gpus=32),
            Point("tp+sp", "mi300x-128node", model, seq_len=4096, tp=4, sp=8, gpus=64, options=(("zero", 1),)),
            Point("fsdp", "mi300x-1node", model, seq_len=4096, pipeline=PipelineSpec(global_batch=16)),
            Point("tp", "mi300x-1node", model, seq_len=4096, degree=2, pipeline=PipelineSpec(stages=2, global_batch=4)),
            Point("tp", "mi300x-1node", model, mode="prefill", seq_len=4096, degree=4)]
    return out


def test_the_static_probe_reads_what_the_whole_graphs_hold(tiny: str) -> None:
    for point in _points(tiny):
        small = small_graphs(point)
        assert small is not None
        assert static_probe(point) == small.static_peak(), point
        if point.mode in ("train", "forward") and point.pipeline.stages <= 1 and point.pipeline.global_batch is None:
            for layers in (1, 2, 4):
                assert static_prefix(point, layers) == static_bytes(build_graph(point, layers=layers)[0]), point


def test_the_prefix_build_stops_after_the_static_memory(tiny: str) -> None:
    """Only the static memory ops (and what comes before them) are built: a handful per rank, not a block."""
    point = Point("tp+sp", "mi300x-1node", tiny, seq_len=4096, tp=2, sp=4)
    prefix = static_prefix(point, 4)
    assert set(prefix) == set(range(8))
    assert len(build_graph(point, layers=1)[0].ops) > 10 * 8

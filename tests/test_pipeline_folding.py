"""Symmetry folding of pipelined layouts equals simulating every GPU (issue 14, scale).

Two exact reductions (:mod:`tspsim.spec.fold`): data-parallel replicas inside each stage's slab (stages placed
outermost) or contiguous replicas (``mp-pp-dp``), and tensor-parallel peers folded onto one rank per group.
Each configuration is replayed folded and with ``fold=False``; step time, every simulated rank's peak memory
and bytes sent must agree with its twin in the full replay to 1e-12 (relative).
"""

from __future__ import annotations

import pytest

from tspsim.engine.sim import replay
from tspsim.simulate import Point, build_graph
from tspsim.spec.fold import FoldPlan
from tspsim.spec.pipeline_spec import PipelineSpec


@pytest.fixture(scope="module")
def model(model_yaml) -> str:
    return model_yaml("fold-pipe", hidden=512, layers=8, q_heads=8, kv_heads=8, head_dim=64, ffn_hidden=2048,
                      vocab=1024)


@pytest.fixture(scope="module")
def h100_4node(tmp_path_factory) -> str:
    """4 DGX H100 nodes in two leaf groups (a spine between them, non-blocking)."""
    path = tmp_path_factory.mktemp("fold") / "h100-4node.yaml"
    path.write_text("name: h100-4node\ninherit: h100-dgx-128node\nnodes: 4\ninter:\n  nodes_per_leaf: 2\n")
    return str(path)


def _sent(tl, rank: int) -> float:
    return sum(tl.sent_bytes.get(rank, {}).values())


def _compare(point: Point, expect_ranks: int | None = None) -> None:
    g_fold, topo, _m, layout, _w, _o = build_graph(point, fold=True)
    g_full, *_ = build_graph(point, fold=False)
    assert len(g_full.ranks) == layout.world_size
    if expect_ranks is not None:
        assert len(g_fold.ranks) == expect_ranks
    tl_fold, tl_full = replay(g_fold, topo), replay(g_full, topo)
    assert tl_fold.end_s == pytest.approx(tl_full.end_s, rel=1e-12)
    plan = FoldPlan.from_meta(g_fold.meta["fold"]) if "fold" in g_fold.meta else None
    for r in g_fold.ranks:
        assert tl_fold.peak_memory(r)[0] == tl_full.peak_memory(r)[0], r
        assert _sent(tl_fold, r) == pytest.approx(_sent(tl_full, r), rel=1e-12), r
        for kind, b in tl_full.sent_bytes.get(r, {}).items():
            assert tl_fold.sent_bytes[r].get(kind, 0.0) == pytest.approx(b, rel=1e-12), (r, kind)
    if plan is not None:  # the full run really is symmetric: every rank matches its twin
        for r in range(layout.world_size):
            twin = plan.twin(r)
            assert tl_full.peak_memory(r)[0] == tl_full.peak_memory(twin)[0]
            assert _sent(tl_full, r) == pytest.approx(_sent(tl_full, twin), rel=1e-9)


CASES = [
    # (schedule, degrees, GPUs, pipeline, options, simulated ranks)
    ("tp", {"degree": 4}, 8, PipelineSpec(stages=2, global_batch=4), (), 2),                 # peers in one node
    ("satp-seq", {"degree": 4}, 8, PipelineSpec(stages=2, global_batch=4), (), 2),
    ("tp", {"degree": 2}, 8, PipelineSpec(stages=2, virtual_stages=2, global_batch=8), (), 4),
    ("tp", {"degree": 8}, 32, PipelineSpec(stages=2, global_batch=4), (), 2),                # slab fold: DP 2
    ("tp", {"degree": 8}, 32, PipelineSpec(stages=2, global_batch=4, placement="mp-pp-dp"), (), 2),
    ("tp", {"degree": 8}, 32, PipelineSpec(stages=4, global_batch=4), (), 4),                # stages across the spine
    ("tp", {"degree": 4}, 32, PipelineSpec(stages=2, global_batch=8), (("zero", 1),), 4),     # 2 replicas per node
    ("tp", {"degree": 8}, 32, PipelineSpec(stages=2, global_batch=4), (("zero", 3),), 2),
    ("tp+sp", {"tp": 4, "sp": 2}, 32, PipelineSpec(stages=2, global_batch=4), (), 4),
    ("tsp", {"degree": 8}, 32, PipelineSpec(stages=2, global_batch=4), (), 16),              # TSP stages whole
]


@pytest.mark.parametrize("topo", ["h100", "mi300x"])
@pytest.mark.parametrize(("schedule", "kw", "gpus", "pipe", "opts", "ranks"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_pipeline_fold_equals_full(model, h100_4node, mi300x_4node_yaml, topo, schedule, kw, gpus, pipe, opts, ranks):
    path = h100_4node if topo == "h100" else mi300x_4node_yaml
    point = Point(schedule, path, model=model, seq_len=2048, gpus=gpus, pipeline=pipe, options=opts, **kw)
    _compare(point, ranks)


def test_forward_pipeline_fold_equals_full(model, h100_4node):
    point = Point("tp", h100_4node, model=model, mode="forward", seq_len=2048, degree=8, gpus=32,
                  pipeline=PipelineSpec(stages=2, global_batch=4))
    _compare(point, 2)


def test_fold_plan_twins():
    plan = FoldPlan(8, unit_nodes=1, slab_nodes=2, peer=4)
    assert plan.twin(13) == 4 and plan.twin(20) == 20 and plan.twin(31) == 20 and plan.twin(11) == 0
    assert plan.simulated(32) == (0, 4, 16, 20)
    assert plan.fault(4, 8) is None
    assert "tile" in plan.fault(3, 8)
    assert FoldPlan.from_meta(plan.to_meta()) == plan

"""The step-time lower bound (tspsim.engine.bound) and the playbook search that skips candidates with it.

The bound (free communication, uncontended compute) must never exceed the replayed step time, for every
schedule, training and forward, pipelined or not, folded or not; and the bounded search of ``tspsim run``'s
playbook columns must choose exactly what simulating every candidate chooses (same entry).
"""

from __future__ import annotations

import pytest
from tiny_models import tiny_32_heads

from tspsim.engine.bound import step_time_lower_bound
from tspsim.engine.sim import replay
from tspsim.explore.playbooks import PLAYBOOKS, best_playbook, bounded_best, playbook_points, valid_points
from tspsim.schedules import SCHEDULES
from tspsim.simulate import Point, build_graph, simulate
from tspsim.spec.pipeline_spec import PipelineSpec


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("bound") / "tiny8.yaml"
    path.write_text(tiny_32_heads(layers=8))
    return str(path)


def _bound_and_replay(point: Point, fold: bool = True) -> tuple[float, float]:
    graph, topo, *_ = build_graph(point, fold=fold)
    return step_time_lower_bound(graph, topo), replay(graph, topo).end_s


@pytest.mark.parametrize("schedule", sorted(SCHEDULES.names()))
@pytest.mark.parametrize("mode", ["train", "forward"])
def test_bound_below_replay(tiny: str, schedule: str, mode: str) -> None:
    degrees = {"tp+sp": {"tp": 4, "sp": 2}, "fsdp": {"degree": 1}}.get(schedule, {"degree": 4})
    point = Point(schedule, "mi300x-128node", model=tiny, mode=mode, seq_len=4096, batch=4, gpus=16,
                  **degrees)  # type: ignore[arg-type]
    bound, step = _bound_and_replay(point)
    assert 0 < bound <= step


@pytest.mark.parametrize("stages,virtual", [(2, 1), (2, 2), (4, 1), (4, 2)])
@pytest.mark.parametrize("fold", [True, False])
def test_bound_below_replay_pipelined(tiny: str, stages: int, virtual: int, fold: bool) -> None:
    point = Point("satp-seq", "mi300x-128node", model=tiny, mode="train", seq_len=4096, batch=1, degree=4, gpus=32,
                  options=(("satp_seq_attention", "gather-input"),),
                  pipeline=PipelineSpec(stages=stages, virtual_stages=virtual, global_batch=8))
    bound, step = _bound_and_replay(point, fold)
    assert 0 < bound <= step
    assert bound > 0.5 * step  # it sees the pipeline's dependencies, not just one rank's kernels


@pytest.mark.parametrize("family", PLAYBOOKS)
@pytest.mark.parametrize("seq,global_batch", [(4096, 16), (16384, 8)])
def test_bounded_search_chooses_as_simulating_all(tiny: str, family: str, seq: int, global_batch: int) -> None:
    points = valid_points(playbook_points(family, "mi300x-128node", tiny, seq, global_batch, gpus=32))
    assert points
    chosen, skipped, index = bounded_best(points)
    reference = best_playbook(points)
    assert (chosen is None) == (reference is None) == (index is None)
    if reference is not None:
        ignore = {"sim_wall_s"}
        again = simulate(points[index]).entry                     # the index names the chosen candidate
        assert {k: v for k, v in again.items() if k not in ignore} == \
            {k: v for k, v in chosen.entry.items() if k not in ignore}
        assert {k: v for k, v in chosen.entry.items() if k not in ignore} == \
            {k: v for k, v in reference.entry.items() if k not in ignore}
    assert 0 <= skipped < len(points)


@pytest.mark.slow
def test_bounded_search_skips_on_the_default_cluster() -> None:
    """On 128 MI300X nodes (the default run) the PTD-P candidates that cannot win are skipped, same choice."""
    points = valid_points(playbook_points("ptd-p", "mi300x-128node", "zyphra-7b", 131072, 128))
    chosen, skipped, index = bounded_best(points)
    assert skipped >= 3
    reference = best_playbook(points)
    assert chosen is not None and reference is not None
    assert {k: v for k, v in chosen.entry.items() if k != "sim_wall_s"} == \
        {k: v for k, v in reference.entry.items() if k != "sim_wall_s"}


def test_replay_with_the_bounds_plans_is_the_same_replay(tiny: str) -> None:
    """The plans the bound resolved, handed to the replay, change nothing (spans, bytes, algorithms)."""
    point = Point("tp+sp", "mi300x-128node", model=tiny, mode="train", seq_len=4096, batch=2, gpus=32, tp=4, sp=2,
                  options=(("zero", 3),))
    graph, topo, *_ = build_graph(point)
    plans: dict = {}
    step_time_lower_bound(graph, topo, plans=plans)
    assert plans
    shared, plain = replay(graph, topo, plans=plans), replay(graph, topo)
    assert shared.spans == plain.spans and shared.end_s == plain.end_s
    assert shared.sent_bytes == plain.sent_bytes and shared.collective_algorithms == plain.collective_algorithms


def test_paced_gc_restores_the_thresholds() -> None:
    import gc

    from tspsim.simulate.gc_pacing import paced_gc

    before = gc.get_threshold()
    with paced_gc(123_456):
        assert gc.get_threshold()[0] == max(123_456, before[0])
    assert gc.get_threshold() == before

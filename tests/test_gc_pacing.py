"""The collector's pacing while a command simulates (tspsim.simulate.gc_pacing): freezing built graphs is safe.

A built graph and a finished replay hold no reference cycles (the build context forgets the graph, the
periodicity forgets the replay), so they are freed by reference counting alone, frozen or not; ``settle``
freezes only inside ``paced_gc``, which unfreezes when it ends.
"""

from __future__ import annotations

import gc
import weakref

import pytest
from tiny_models import tiny_32_heads

from tspsim.engine.sim import replay
from tspsim.simulate import Point, build_graph
from tspsim.simulate.gc_pacing import paced_gc, settle
from tspsim.spec.pipeline_spec import PipelineSpec


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("gc") / "tiny8.yaml"
    path.write_text(tiny_32_heads(layers=8))
    return str(path)


LAYOUTS = {
    "tsp": {"degree": 4}, "tp": {"degree": 4}, "tp+sp": {"tp": 4, "sp": 2}, "fsdp": {"degree": 1},
    "satp-seq-pp": {"degree": 4, "pipeline": PipelineSpec(stages=2, virtual_stages=2, global_batch=8)},
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_graph_and_replay_are_freed_without_the_collector(tiny: str, name: str) -> None:
    point = Point(name.removesuffix("-pp"), "mi300x-128node", model=tiny, mode="train", seq_len=4096, batch=2,
                  gpus=16, **LAYOUTS[name])  # type: ignore[arg-type]
    gc.collect()
    gc.disable()
    try:
        graph, topo, *_ = build_graph(point)
        tl = replay(graph, topo)
        assert tl.spans
        alive = weakref.ref(graph)
        del graph, tl
        assert alive() is None          # reference counting alone freed the graph (no cycle holds it)
    finally:
        gc.enable()


def test_settle_freezes_only_inside_paced_gc() -> None:
    gc.collect()
    frozen = gc.get_freeze_count()
    settle()
    assert gc.get_freeze_count() == frozen              # outside: nothing frozen
    with paced_gc():
        settle()
        assert gc.get_freeze_count() > frozen
        with paced_gc():                               # nested: the outer pacing still holds the freeze
            pass
        assert gc.get_freeze_count() > frozen
    assert gc.get_freeze_count() == 0                  # unfrozen when the outermost pacing ends

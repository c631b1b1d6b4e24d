"""A ReplaySetup shared by the replays of one re-costed graph changes nothing (tspsim.engine.replay_setup).

The DecodeTimer replays one decode graph per context length, re-costed in between, with one setup (streams,
dependents, periodic positions, compute durations and repeat keys of the ops it does not re-cost): every
replay must equal a replay that derives everything afresh, to the last bit. A timing-only replay
(``accounting=False``) has the same spans and events.
"""

from __future__ import annotations

import pytest

from tspsim.engine.replay_setup import ReplaySetup
from tspsim.engine.sim import ReplayOptions, replay
from tspsim.schedules.context import BuildContext
from tspsim.schedules.decode import build_decode_step
from tspsim.simulate.decode_timer import decode_topology
from tspsim.spec.assumptions import Assumptions
from tspsim.spec.layout import make_layout
from tspsim.spec.model import ModelConfig
from tspsim.spec.workload import Workload

MODEL = ModelConfig("setup-gqa", hidden=1024, layers=6, q_heads=16, kv_heads=8, head_dim=64, ffn_hidden=4096,
                    gated_mlp=True, vocab=4096)


def _step(topo, schedule, kw):
    workload = Workload("decode", 1024, 4, 1)
    layout = make_layout(schedule, topo, MODEL, workload, **kw)
    ctx = BuildContext(MODEL, topo, layout, workload, Assumptions.from_overrides({}))
    return build_decode_step(ctx, 100), decode_topology(topo, ctx.opts)


def _record(tl):
    return (tl.spans, tl.memory, tl.sent_bytes, tl.recv_bytes, tl.op_sent_bytes, tl.collective_algorithms,
            tl.sim_events, tl.sim_path, tl.sim_units_skipped)


@pytest.mark.parametrize("schedule,kw", [("tsp", {"degree": 8}), ("tp", {"degree": 4})])
def test_a_shared_setup_gives_the_replays_of_fresh_ones(mi300x, schedule, kw):
    step, dtopo = _step(mi300x, schedule, kw)
    setup = ReplaySetup.of(step.graph, [a.op for a in step.attention])
    plans: dict = {}
    for cached in (100, 5000, 101, 100_000, 7, 5000):
        step.recost(cached)
        fresh = replay(step.graph, dtopo)
        shared = replay(step.graph, dtopo, ReplayOptions(), plans, setup)
        assert _record(shared) == _record(fresh)
        timing = replay(step.graph, dtopo, ReplayOptions(accounting=False), plans, setup)
        assert (timing.spans, timing.sim_events, timing.sim_path) == (fresh.spans, fresh.sim_events, fresh.sim_path)
        assert not any(timing.memory.values()) and not timing.sent_bytes and not timing.collective_algorithms


def test_a_setup_belongs_to_its_graph(mi300x):
    step, dtopo = _step(mi300x, "tp", {"degree": 4})
    other, _ = _step(mi300x, "tp", {"degree": 4})
    with pytest.raises(ValueError, match="another graph"):
        replay(other.graph, dtopo, setup=ReplaySetup.of(step.graph))


def test_the_setup_mirrors_the_graph_structure(mi300x):
    step, _ = _step(mi300x, "tsp", {"degree": 8})
    graph = step.graph
    setup = ReplaySetup.of(graph)
    streams = graph.streams()
    assert [key for key, _ in setup.streams] == list(streams)
    for si, (_, ops) in enumerate(setup.streams):
        assert ops == streams[ops[0].rank, ops[0].stream]
        for q, op in enumerate(ops):
            assert (setup.op_stream[op.id], setup.op_pos[op.id]) == (si, q)
    deps = {d for op in graph.ops for d in op.deps}
    assert [i for i, flag in enumerate(setup.dependents) if flag] == sorted(deps)
    groups = [r for op in graph.ops if op.is_comm for r in op.group]
    assert setup.group_range == (min(groups), max(groups))
    assert setup.first_outside(mi300x.world_size) is None
    outside = setup.first_outside(max(groups))   # a smaller world: the first op naming rank max(groups)
    assert outside is not None and max(outside.group) >= max(groups)
    assert not any(max(op.group) >= max(groups) for op in graph.ops[:outside.id] if op.is_comm and op.group)

"""The periodic path of the engine (tspsim.engine.periodic) equals the full replay.

For every schedule × {train, forward, prefill, decode} on a 10-block model (two nodes, so data
parallelism and folding are in play), the op graph is replayed in full (``periodic=False``) and with
the periodic path; the periodic path must have skipped units, and every span, memory peak, byte count
and collective must agree: times to 1e-12 of the step, bytes to 1e-12 relative, peaks exactly. Also
for a stack whose CPU is simulated (eager launches: the host lane) and with link recording on.
"""

from __future__ import annotations

import math

import pytest
from tiny_models import tiny_32_heads

from tspsim.engine.sim import ReplayOptions, replay
from tspsim.engine.timeline import Timeline
from tspsim.schedules import SCHEDULES
from tspsim.simulate import Point, build_graph
from tspsim.simulate.decode_timer import decode_topology

MODES = ("train", "forward", "prefill", "decode")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("periodic") / "tiny10.yaml"
    path.write_text(tiny_32_heads(layers=10))
    return str(path)


def _point(schedule: str, mode: str, model: str, **kw: object) -> Point:
    degrees = {"tp+sp": {"tp": 4, "sp": 2}, "fsdp": {"degree": 1}}.get(schedule, {"degree": 4})
    return Point(schedule, "mi300x-128node", model=model, mode=mode, seq_len=4096, batch=4, decode_tokens=3, gpus=16,
                 **degrees, **kw)  # type: ignore[arg-type]


def _replay_both(point: Point, record_links: bool = False) -> tuple[Timeline, Timeline]:
    graph, topo, _model, _layout, workload, opts = build_graph(point)
    if workload.mode == "decode":
        topo = decode_topology(topo, opts)
    full = replay(graph, topo, ReplayOptions(periodic=False, record_links=record_links))
    fast = replay(graph, topo, ReplayOptions(record_links=record_links))
    return full, fast


def _assert_equal(full: Timeline, fast: Timeline, jumped: bool = True) -> None:
    assert full.sim_path == "full"
    if jumped:
        assert fast.sim_path == "periodic" and fast.sim_units_skipped > 0
        assert fast.sim_events < full.sim_events
    tol = 1e-12 * full.end_s
    a, b = sorted(full.spans), sorted(fast.spans)
    assert [s[0] for s in a] == [s[0] for s in b]
    assert max(max(abs(x[1] - y[1]), abs(x[2] - y[2])) for x, y in zip(a, b)) <= tol
    assert fast.end_s == pytest.approx(full.end_s, rel=1e-12, abs=0)
    for rank in full.memory:
        assert fast.peak_memory(rank) == full.peak_memory(rank)
        assert len(fast.memory[rank]) == len(full.memory[rank])
    for per_a, per_b in ((full.sent_bytes, fast.sent_bytes), (full.recv_bytes, fast.recv_bytes)):
        assert per_a.keys() == per_b.keys()
        for rank in per_a:
            assert per_a[rank].keys() == per_b[rank].keys()
            for kind, v in per_a[rank].items():
                assert per_b[rank][kind] == pytest.approx(v, rel=1e-12)
    assert full.op_sent_bytes == fast.op_sent_bytes
    assert full.collective_algorithms == fast.collective_algorithms


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("schedule", SCHEDULES.names())
def test_periodic_equals_full(schedule: str, mode: str, tiny: str) -> None:
    if schedule == "fsdp" and mode not in ("train", "forward"):
        pytest.skip("fsdp is a training layout (refused for prefill and decode)")
    full, fast = _replay_both(_point(schedule, mode, tiny))
    _assert_equal(full, fast)


def test_periodic_with_link_recording(tiny: str) -> None:
    full, fast = _replay_both(_point("tsp", "train", tiny), record_links=True)
    _assert_equal(full, fast)
    assert full.links.keys() == fast.links.keys()
    tol = 1e-12 * full.end_s
    for link, steps in full.links.items():
        fast_steps = fast.links[link]
        assert len(fast_steps) == len(steps)
        # ~15,000 steps: Timeline.end_s (a max over every span) once, not per step, and math.isclose rather than
        # pytest.approx (this test took 12–29 s, now under 1 s)
        bad = [(a, b) for a, b in zip(steps, fast_steps)
               if abs(a[0] - b[0]) > tol or not math.isclose(a[1], b[1], rel_tol=1e-12, abs_tol=1e-12)]
        assert not bad, (link, bad[:3])


@pytest.mark.parametrize(("schedule", "mode"), [("tsp", "train"), ("tp", "forward")])
def test_host_lane_stays_exact(schedule: str, mode: str, tiny: str) -> None:
    """An eager stack's CPU runs ahead of a busier GPU by a growing lag: no state repeats, the replay is full."""
    full, fast = _replay_both(_point(schedule, mode, tiny, options=(("stack", "torchtitan"),)))
    _assert_equal(full, fast, jumped=False)


def test_no_jump_when_the_graph_does_not_repeat(tiny: str) -> None:
    """Perturbing one block's cost breaks the repetition: the replay must notice and stay exact."""
    graph, topo, *_ = build_graph(_point("tp", "train", tiny))
    target = next(op for op in graph.ops if op.layer == 5 and op.kind == "gemm")
    target.flops *= 3.0
    full = replay(graph, topo, ReplayOptions(periodic=False))
    fast = replay(graph, topo)
    a, b = sorted(full.spans), sorted(fast.spans)
    assert max(max(abs(x[1] - y[1]), abs(x[2] - y[2])) for x, y in zip(a, b)) <= 1e-12 * full.end_s


@pytest.mark.parametrize("schedule", ["tsp", "tp", "tp+sp"])
def test_decode_steps_interpolated_equal_replayed(schedule: str, tiny: str) -> None:
    """DecodeTimer.time_many (steps between two replays with the same events interpolated) == every step replayed."""
    from dataclasses import replace as dc_replace

    from tspsim.schedules.context import BuildContext
    from tspsim.schedules.periodic import with_layers
    from tspsim.simulate.decode_timer import DecodeTimer, context_steps
    from tspsim.simulate.point import resolve

    topo, model, layout, workload, opts = resolve(_point(schedule, "decode", tiny))

    def make_ctx(layers: int | None) -> BuildContext:
        ctx = BuildContext(model, topo, layout, dc_replace(workload, decode_tokens=40), opts)
        return with_layers(ctx, layers) if layers is not None else ctx

    timer = DecodeTimer(context_steps(make_ctx), model.layers, decode_topology(topo, opts))
    steps = range(4096, 4096 + 40)
    fast = timer.time_many(steps)
    slow = [timer.time(c) for c in steps]
    assert sum(st.events == 0 for st in fast) > 20  # most steps were interpolated, not replayed
    for a, b in zip(fast, slow):
        assert a.cached == b.cached and a.method == b.method
        assert a.time_s == pytest.approx(b.time_s, rel=1e-12, abs=0)
        for k, v in b.breakdown.items():
            assert a.breakdown[k] == pytest.approx(v, rel=1e-9, abs=1e-15 * b.time_s)
        for r, stats in b.ranks.items():
            assert a.ranks[r] == pytest.approx(stats, rel=1e-9, abs=1e-15 * b.time_s)


@pytest.mark.slow
def test_decode_steps_never_memory_bound_are_all_replayed(forks: list) -> None:
    """A residue class with no memory-bound step (small TSP attention kernels on the small-kernel tail) is
    replayed step by step without the fingerprint: the same timings as replaying each step, whether half the
    steps are replayed in a forked process or all here."""
    from dataclasses import replace as dc_replace

    from tspsim.schedules.context import BuildContext
    from tspsim.schedules.periodic import with_layers
    from tspsim.simulate.decode_timer import DecodeTimer, context_steps
    from tspsim.simulate.point import Point, resolve

    point = Point("tsp", "mi300x-1node", "llama3-8b", "decode", 8192, 1, 8, decode_tokens=10)
    topo, model, layout, workload, opts = resolve(point)

    def make_ctx(layers: int | None) -> BuildContext:
        ctx = BuildContext(model, topo, layout, dc_replace(workload, decode_tokens=10), opts)
        return with_layers(ctx, layers) if layers is not None else ctx

    import tspsim.core.forked as forked

    timer = DecodeTimer(context_steps(make_ctx), model.layers, decode_topology(topo, opts))
    steps = range(8192, 8192 + 10)
    assert not any(timer._affine_between(*[timer._attention_costs(c)] * 2) for c in steps)  # noqa: SLF001
    with forked.processes(2):   # half the steps replayed in a forked process (where the machine can fork)
        fast = timer.time_many(steps)
    assert len(forks) == (1 if forked.can_fork() else 0)
    with forked.processes(1):
        here = timer.time_many(steps)
    slow = [timer.time(c) for c in steps]
    assert all(st.events > 0 for st in fast)
    expected = [(b.time_s, b.breakdown, b.ranks, b.method, b.events) for b in slow]
    assert [(a.time_s, a.breakdown, a.ranks, a.method, a.events) for a in fast] == expected
    assert [(a.time_s, a.breakdown, a.ranks, a.method, a.events) for a in here] == expected

"""What the planner and the max-batch search know without simulating (tspsim.explore.static_memory, max_batch)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import tiny_32_heads

from tspsim.explore.max_batch import linear_guess, max_batch
from tspsim.explore.static_memory import graph_ops, static_bytes, static_memory, static_oom_entry
from tspsim.opgraph import MEMORY_CATEGORIES
from tspsim.simulate import Point, build_graph


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("static") / "tiny7.yaml"
    path.write_text(tiny_32_heads(layers=7))
    return str(path)


@pytest.mark.parametrize("schedule", ["tsp", "tp", "tp+sp", "sp"])
@pytest.mark.parametrize("mode", ["train", "decode"])
def test_static_memory_from_small_graphs_equals_the_full_graph(schedule: str, mode: str, tiny: str) -> None:
    degrees = {"tp": 4, "sp": 2} if schedule == "tp+sp" else {"degree": 4}
    point = Point(schedule, "mi300x-1node", model=tiny, mode=mode, seq_len=4096, **degrees)  # type: ignore[arg-type]
    full = static_bytes(build_graph(point)[0])
    best, at = static_memory(point)
    rank = max(full, key=lambda r: sum(full[r].values()))
    assert best == sum(full[rank].values())
    assert at == full[rank]


def test_graph_ops_from_small_graphs_equals_the_full_graph(tiny: str) -> None:
    for point in (Point("tsp", "mi300x-1node", model=tiny, seq_len=4096),
                  Point("tp+sp", "mi300x-1node", model=tiny, seq_len=4096, tp=4, sp=2,
                        options=(("sp_attention", "ring"),))):
        estimate, actual = graph_ops(point)[0], len(build_graph(point)[0].ops)
        if point.schedule == "tsp":
            assert estimate == actual  # every block adds the same ops
        else:  # tp+sp's gradient buckets over Σ (dp_bucket_MB) fill by bytes, not per block: a count off by a few
            assert abs(estimate - actual) <= 0.01 * actual


def test_a_model_whose_weights_alone_exceed_hbm_is_oom_without_simulation() -> None:
    entry = static_oom_entry(Point("tp", "mi300x-128node", model="llama3-70b", seq_len=32768, degree=1))
    assert entry is not None
    assert entry["oom"] is True and entry["sim_path"] == "static_oom" and entry["sim_events"] == 0
    gb = entry["memory_breakdown_gb"]
    assert set(gb) == set(MEMORY_CATEGORIES)
    assert gb["parameters"] == pytest.approx(141.1, rel=1e-3)  # 70.55 B parameters × 2 bytes
    assert gb["optimizer_state"] == pytest.approx(6 * gb["parameters"], rel=1e-9)  # fp32 master + Adam m, v
    assert entry["peak_memory_gb"] > entry["hbm_gb"]


def test_a_configuration_that_fits_is_left_to_the_simulation() -> None:
    assert static_oom_entry(Point("tsp", "mi300x-1node")) is None


def test_linear_memory_needs_two_probes() -> None:
    probes: list[int] = []

    def peak(b: int) -> float:
        probes.append(b)
        return 50e9 + 1.7e9 * b

    cap = 192e9
    guess = linear_guess(50e9, peak(4), 4, cap)
    probes.clear()
    assert max_batch(peak, cap, start=4, known={4: 50e9 + 1.7e9 * 4}, guess=guess) == int((cap - 50e9) / 1.7e9)
    assert len(probes) == 2


def test_a_wrong_guess_still_finds_the_largest_batch() -> None:
    def peak(b: int) -> float:
        return 10.0 * b * b

    for guess in (1, 3, 7, 50, 1000):
        assert max_batch(peak, 1000.0, guess=guess) == 10


def test_a_graph_the_builder_refuses_up_front_is_refused_with_its_own_message(
        tiny: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The planner's op-limit check says what the simulation would say, without building the 1- and 2-block graphs."""
    from tspsim.core.errors import ConfigError
    from tspsim.explore.static_memory import graph_too_large, refused_up_front

    point = Point("tp+sp", "mi300x-1node", model=tiny, seq_len=4096, tp=4, sp=2, options=(("sp_attention", "ring"),))
    monkeypatch.setenv("TSPSIM_MAX_GRAPH_OPS", "1000")  # 8 GPUs × 7 blocks × 30 ops > 1,000: refused before any op
    with pytest.raises(ConfigError) as raised:
        build_graph(point)
    assert refused_up_front(point) == str(raised.value) == graph_too_large(point)
    actual = len(build_graph(point, layers=1)[0].ops)
    monkeypatch.setenv("TSPSIM_MAX_GRAPH_OPS", str(8 * 7 * 30 + 1))   # passes the estimate, not the count
    assert refused_up_front(point) is None
    assert actual > 8 * 30 and graph_too_large(point) is not None
    monkeypatch.delenv("TSPSIM_MAX_GRAPH_OPS")
    assert refused_up_front(point) is None and graph_too_large(point) is None


def test_one_pair_of_small_graphs_answers_both_questions(tiny: str) -> None:
    """The static-memory probe of an all-gather point at batch 1 is the point the op count is read from.

    Its static memory comes from the static-only probe (StaticKey, no block graph); its op count from one pair of
    small graphs built whole, shared by both batches.
    """
    from tspsim.explore.static_memory import StaticKey, count_point, estimated_ops, probe_point, prune_known
    from tspsim.explore.sweep import Outcome, SweepState

    points = [Point("tp+sp", "mi300x-1node", model=tiny, seq_len=4096, batch=b, tp=4, sp=2,
                    options=(("sp_attention", "allgather"), ("zero", 1))) for b in (1, 2)]
    assert probe_point(points[1]) == count_point(points[1]) == count_point(points[0])
    state = SweepState([Outcome(i, p, "") for i, p in enumerate(points)], todo=[0, 1])
    known: dict[Point, object] = {}
    assert prune_known(state, known) == (0, 0) and state.todo == [0, 1]
    assert list(known) == [StaticKey(probe_point(points[0])), count_point(points[0])]   # one probe of each kind
    assert known[count_point(points[0])].static_peak() == known[StaticKey(probe_point(points[0]))]
    assert estimated_ops(points[1], known) == graph_ops(points[0])[0] > 0


def test_extend_state_runs_two_prepared_sweeps_as_one() -> None:
    from tspsim.explore.sweep import Outcome, SweepState, extend_state

    a = SweepState([Outcome(0, Point("tsp", "mi300x-1node"), "a", "ok"), Outcome(1, Point("tp", "mi300x-1node"), "b")],
                   todo=[1], expected={1: ("m", "t")})
    b = SweepState([Outcome(0, Point("sp", "mi300x-1node"), "c")], todo=[0], expected={0: ("m2", "t2")})
    extend_state(a, b)
    assert [o.index for o in a.outcomes] == [0, 1, 2] and a.todo == [1, 2]
    assert a.expected == {1: ("m", "t"), 2: ("m2", "t2")}


def test_a_capped_probe_stops_exactly_when_the_full_graph_would_pass_the_limit(tiny: str) -> None:
    from tspsim.explore.static_memory import small_graphs

    for point in (Point("tsp", "mi300x-1node", model=tiny, seq_len=4096),
                  Point("tp+sp", "mi300x-1node", model=tiny, seq_len=4096, tp=2, sp=4,
                        options=(("sp_attention", "ring"),))):
        total, _per = graph_ops(point)
        assert small_graphs(point, limit=total - 1) is None
        fits = small_graphs(point, limit=total)
        assert fits is not None and fits.op_count()[0] == total


def test_probes_built_ahead_by_a_mapper_settle_the_same_points(tiny: str) -> None:
    """prune_known with its probes built first in chunks (as on the plan's workers) decides exactly as without."""
    from tspsim.explore.cache import PointCache
    from tspsim.explore.planner import candidate_points
    from tspsim.explore.static_memory import prune_known
    from tspsim.explore.sweep import prepare

    calls: list[int] = []

    def mapper(fn, items):  # type: ignore[no-untyped-def]
        calls.append(len(items))
        return [fn(x) for x in items]

    points = candidate_points("mi300x-1node", tiny, 4096, batch_max=2)
    alone, ahead = prepare(points, PointCache(None)), prepare(points, PointCache(None))
    assert prune_known(alone) == prune_known(ahead, {}, mapper)
    assert calls and alone.todo == ahead.todo
    assert [(o.status, o.reason, o.entry) for o in alone.outcomes] == [(o.status, o.reason, o.entry)
                                                                         for o in ahead.outcomes]


def test_a_low_guess_takes_the_local_slope() -> None:
    """A buffer that does not grow with B but is not static memory (the guess from a small batch counts it per
    sequence and lands low): the slope between the guess and the batch above it finds the answer in four probes,
    without doubling past HBM."""
    probes: list[int] = []

    def peak(b: int) -> float:
        probes.append(b)
        return 54e9 + 1.5e9 * b

    cap = 192e9
    guess = linear_guess(50e9, 54e9 + 1.5e9 * 8, 8, cap)
    answer = int((cap - 54e9) / 1.5e9)
    assert guess is not None and guess < answer
    assert max_batch(peak, cap, start=8, known={8: 54e9 + 1.5e9 * 8}, guess=guess) == answer
    assert probes == [guess, guess + 1, answer, answer + 1]


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.integers(0, 40), min_size=1, max_size=60), cap=st.integers(0, 1500),
       step=st.sampled_from([1, 2, 8]), guess=st.one_of(st.none(), st.integers(1, 120)),
       start=st.one_of(st.none(), st.integers(1, 120)))
def test_max_batch_is_the_largest_fitting_batch_for_any_non_decreasing_peak(
        steps: list[int], cap: int, step: int, guess: int | None, start: int | None) -> None:
    """Whatever the guess and start, the search returns what scanning every multiple of ``step`` returns."""
    def peak(b: int) -> float:
        return float(sum(steps[:b]) + (b - len(steps)) * 41 * (b > len(steps)))

    limit = 256
    brute = max((b for b in range(step, limit + 1, step) if peak(b) <= cap), default=0)
    known = {start: peak(start)} if start is not None else None
    assert max_batch(peak, cap, step, start=start, known=known, limit=limit, guess=guess) == brute

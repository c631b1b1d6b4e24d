"""What the planner and the max-batch search know without simulating (tspsim.explore.static_memory, max_batch)."""

from __future__ import annotations

import pytest
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

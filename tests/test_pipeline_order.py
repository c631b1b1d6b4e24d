"""Pipeline pass orders (GPipe, 1F1B, interleaved 1F1B): completeness, memory and the bubble.

The timing checks replay the orders with a tiny list scheduler in this file (unit-time passes, instant
transfers): it proves the orders are deadlock-free and reproduce Narayanan et al. 2021 §2.2's bubble
formulas; the simulator itself replays them with real costs and links.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tspsim.core.errors import ConfigError
from tspsim.schedules.pipeline_order import Pass, in_flight_peak, pass_order


def _step_time(schedule: str, P: int, m: int, V: int, tf: float, tb: float) -> float:
    """Finish time of the last pass when every chunk pass takes tf/V or tb/V and transfers are instant."""
    orders = [pass_order(schedule, P, s, m, V) for s in range(P)]
    done: dict[tuple[str, int, int, int], float] = {}   # (kind, stage, mb, chunk) -> end time
    pos = [0] * P
    free = [0.0] * P
    progress = True
    while progress:
        progress = False
        for s in range(P):
            while pos[s] < len(orders[s]):
                p = orders[s][pos[s]]
                # virtual stage index of this chunk: chunk·P + s; its predecessor/successor in the model
                v = p.chunk * P + s
                if p.kind == "F":
                    dep = None if v == 0 else ("F", (v - 1) % P, p.micro_batch, (v - 1) // P)
                else:
                    last = V * P - 1
                    dep = ("F", s, p.micro_batch, p.chunk) if v == last else ("B", (v + 1) % P, p.micro_batch,
                                                                                (v + 1) // P)
                if dep is not None and dep not in done:
                    break
                start = max(free[s], done[dep] if dep else 0.0)
                free[s] = start + (tf if p.kind == "F" else tb) / V
                done[(p.kind, s, p.micro_batch, p.chunk)] = free[s]
                pos[s] += 1
                progress = True
    assert all(pos[s] == len(orders[s]) for s in range(P)), "deadlock"
    return max(free)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("P,m", [(1, 1), (2, 1), (2, 4), (4, 4), (4, 8), (8, 3), (8, 16)])
def test_flush_schedules_take_m_plus_p_minus_1_slots(schedule: str, P: int, m: int) -> None:
    tf, tb = 1.0, 2.0
    assert _step_time(schedule, P, m, 1, tf, tb) == pytest.approx((m + P - 1) * (tf + tb))


@pytest.mark.parametrize("P,m,V", [(2, 4, 2), (4, 8, 2), (4, 8, 4), (4, 16, 3), (8, 16, 2), (8, 8, 3)])
def test_interleaving_shrinks_the_bubble_by_v(P: int, m: int, V: int) -> None:
    tf, tb = 1.0, 2.0
    t = _step_time("interleaved", P, m, V, tf, tb)
    assert t == pytest.approx(m * (tf + tb) + (P - 1) * (tf + tb) / V)
    assert t < _step_time("1f1b", P, m, 1, tf, tb)


def test_memory_gpipe_holds_m_1f1b_at_most_p_minus_s() -> None:
    P, m = 4, 8
    for s in range(P):
        assert in_flight_peak(pass_order("gpipe", P, s, m)) == m
        assert in_flight_peak(pass_order("1f1b", P, s, m)) == min(P - s, m)


def test_1f1b_order_of_stage_0_matches_narayanan_figure_4() -> None:
    # P = 4, m = 8: stage 0 warms up with 3 forwards, then alternates, then drains 3 backwards.
    order = [f"{p.kind}{p.micro_batch}" for p in pass_order("1f1b", 4, 0, 8)]
    assert order == ["F0", "F1", "F2", "F3", "B0", "F4", "B1", "F5", "B2", "F6", "B3", "F7", "B4", "B5", "B6", "B7"]


def test_interleaved_chunk_assignment_as_megatron() -> None:
    # P = 2, V = 2, m = 4: virtual forwards k = 0..7 run (mb, chunk) (0,0) (1,0) (0,1) (1,1) (2,0) (3,0) (2,1) (3,1)
    fwd = [(p.micro_batch, p.chunk) for p in pass_order("interleaved", 2, 1, 4, 2) if p.kind == "F"]
    assert fwd == [(0, 0), (1, 0), (0, 1), (1, 1), (2, 0), (3, 0), (2, 1), (3, 1)]
    bwd = [(p.micro_batch, p.chunk) for p in pass_order("interleaved", 2, 1, 4, 2) if p.kind == "B"]
    assert bwd == [(0, 1), (1, 1), (0, 0), (1, 0), (2, 1), (3, 1), (2, 0), (3, 0)]


@settings(max_examples=60, deadline=None)
@given(schedule=st.sampled_from(["gpipe", "1f1b", "interleaved"]), P=st.integers(1, 8), k=st.integers(1, 4),
       V=st.integers(1, 4))
def test_every_pass_runs_once_forward_before_backward(schedule: str, P: int, k: int, V: int) -> None:
    if schedule != "interleaved":
        V = 1
    m = k * P if schedule == "interleaved" else k
    for s in range(P):
        order = pass_order(schedule, P, s, m, V)
        assert sorted((p.kind, p.micro_batch, p.chunk) for p in order) == sorted(
            (kind, i, c) for kind in "FB" for i in range(m) for c in range(V))
        seen = set()
        for p in order:
            if p.kind == "B":
                assert (p.micro_batch, p.chunk) in seen
            seen.add((p.micro_batch, p.chunk))
    _step_time(schedule, P, m, V, 1.0, 2.0)  # deadlock-free


def test_bad_inputs_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="multiple of the pipeline stages"):
        pass_order("interleaved", 4, 0, 6, 2)
    with pytest.raises(ConfigError, match="interleaved"):
        pass_order("1f1b", 4, 0, 8, 2)
    with pytest.raises(ConfigError, match="unknown pipeline schedule"):
        pass_order("zb", 4, 0, 8)
    assert pass_order("gpipe", 1, 0, 2) == [Pass("F", 0), Pass("F", 1), Pass("B", 0), Pass("B", 1)]

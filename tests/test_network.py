from collections import Counter

import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from tspsim.engine.network import Network, max_min_rates, solo_rate

INF = float("inf")


def run_flows(capacities, specs):
    """Run flows given as (start_s, links, nbytes, cap_Bps); return (finish times, rate log).

    The rate log holds (time, [(flow index, links, rate, cap)]) after every recomputation.
    """
    env = simpy.Environment()
    log = []

    def on_rates(now, flows):
        log.append((now, [(f.tag, f.links, f.rate, f.cap) for f in flows]))

    net = Network(env, capacities, on_rates=on_rates)
    done = {}

    def start(i, t0, links, nbytes, cap):
        if t0 > 0:
            yield env.timeout(t0)
        yield net.transfer(links, nbytes, cap, tag=i)
        done[i] = env.now

    for i, (t0, links, nbytes, cap) in enumerate(specs):
        env.process(start(i, t0, links, nbytes, cap))
    env.run()
    assert net.flows == []
    return done, log


def rates_at(log, t):
    """Rates of the last recomputation at time ``t``, by flow index."""
    entries = [rates for now, rates in log if now == t]
    assert entries, f"no recomputation at t={t}"
    return {tag: rate for tag, _, rate, _ in entries[-1]}


# ------------------------------------------------------------------------------------- unit tests
def test_one_flow_takes_bytes_over_capacity():
    done, _ = run_flows([10.0], [(0, [0], 1000, INF)])
    assert done[0] == pytest.approx(100.0, rel=1e-12)


def test_one_flow_over_several_links_runs_at_the_slowest():
    done, log = run_flows([10.0, 4.0, 8.0], [(0, [0, 1, 2], 400, INF)])
    assert rates_at(log, 0.0) == {0: pytest.approx(4.0)}
    assert done[0] == pytest.approx(100.0, rel=1e-12)


def test_two_flows_share_a_link_equally():
    done, log = run_flows([10.0], [(0, [0], 1000, INF), (0, [0], 1000, INF)])
    assert rates_at(log, 0.0) == {0: pytest.approx(5.0), 1: pytest.approx(5.0)}
    assert done[0] == pytest.approx(200.0, rel=1e-12)
    assert done[1] == pytest.approx(200.0, rel=1e-12)


def test_staggered_flows_reshare_when_one_starts_and_ends():
    # A alone for 5 s (50 B), then A and B at 5 B/s each until B's 25 B are done at t=10,
    # then A alone for its last 25 B at 10 B/s.
    done, log = run_flows([10.0], [(0, [0], 100, INF), (5, [0], 25, INF)])
    assert done[1] == pytest.approx(10.0, rel=1e-12)
    assert done[0] == pytest.approx(12.5, rel=1e-12)
    assert rates_at(log, 5.0) == {0: pytest.approx(5.0), 1: pytest.approx(5.0)}
    assert rates_at(log, 10.0) == {0: pytest.approx(10.0)}


def test_flows_on_disjoint_links_do_not_slow_each_other():
    done, _ = run_flows([10.0, 20.0, 5.0], [
        (0, [0], 1000, INF),
        (0, [1], 1000, INF),
        (3, [1, 2], 50, INF),  # shares link 1 for a while: slows flow 1 only
    ])
    assert done[0] == pytest.approx(100.0, rel=1e-12)
    assert done[2] == pytest.approx(13.0, rel=1e-12)  # 5 B/s on link 2 for 10 s
    # flow 1: 60 B by t=3, then 15 B/s for 10 s (150 B), then 20 B/s for the last 790 B
    assert done[1] == pytest.approx(13.0 + 790 / 20, rel=1e-12)


def test_link_listed_twice_counts_twice():
    done, log = run_flows([10.0], [(0, [0, 0], 1000, INF)])
    assert rates_at(log, 0.0) == {0: pytest.approx(5.0)}
    assert done[0] == pytest.approx(200.0, rel=1e-12)


def test_link_listed_twice_shares_with_a_single_user():
    # Flow 0 uses link 0 twice, flow 1 once: equal rates r with 2r + r = 9.
    _, log = run_flows([9.0], [(0, [0, 0], 1000, INF), (0, [0], 1000, INF)])
    assert rates_at(log, 0.0) == {0: pytest.approx(3.0), 1: pytest.approx(3.0)}


def test_per_flow_cap_is_respected_and_leftover_goes_to_others():
    done, log = run_flows([10.0], [(0, [0], 100, 1.0), (0, [0], 1000, INF), (0, [0], 300, 3.0)])
    assert rates_at(log, 0.0) == {0: pytest.approx(1.0), 1: pytest.approx(6.0), 2: pytest.approx(3.0)}
    assert done[0] == pytest.approx(100.0, rel=1e-12)
    assert done[2] == pytest.approx(100.0, rel=1e-12)
    # flow 1: 600 B in the first 100 s, then alone at 10 B/s
    assert done[1] == pytest.approx(140.0, rel=1e-12)


def test_cap_alone_limits_a_flow():
    done, _ = run_flows([10.0], [(0, [0], 100, 2.0)])
    assert done[0] == pytest.approx(50.0, rel=1e-12)


def test_max_min_three_link_example():
    # Links: L0 = 10, L1 = 4, L2 = 9 B/s.  A: L0+L1, B: L1, C: L0+L2, D: L2, E: L2.
    # Progressive filling: L1 saturates first at level 2 (A = B = 2); L0 has 6 left for C alone,
    # L2 has 3 left for C, D, E -> level 3 (C = D = E = 3). L0 keeps 5 B/s idle.
    specs = [(0, [0, 1], 10_000, INF), (0, [1], 10_000, INF), (0, [0, 2], 10_000, INF),
             (0, [2], 10_000, INF), (0, [2], 10_000, INF)]
    _, log = run_flows([10.0, 4.0, 9.0], specs)
    got = rates_at(log, 0.0)
    assert got == {0: pytest.approx(2.0), 1: pytest.approx(2.0), 2: pytest.approx(3.0),
                   3: pytest.approx(3.0), 4: pytest.approx(3.0)}


def test_zero_bytes_and_no_links_complete_immediately():
    done, _ = run_flows([10.0], [(0, [0], 0, INF), (2, [], 100, INF)])
    assert done == {0: 0.0, 1: 2.0}


def test_recomputations_at_one_instant_are_coalesced():
    env = simpy.Environment()
    net = Network(env, [10.0])
    events = [net.transfer([0], 100) for _ in range(50)]
    env.run()
    assert all(e.processed for e in events)
    assert env.now == pytest.approx(500.0, rel=1e-12)
    # one recomputation when they all start, one when they all end
    assert net.recomputations == 2


# ------------------------------------------------------------------------------------- property tests
flow_spec = st.tuples(
    st.integers(0, 20).map(lambda k: k * 0.25),                     # start time
    st.lists(st.integers(0, 4), min_size=1, max_size=4),            # links (repeats allowed)
    st.integers(1_000, 1_000_000),                                   # bytes
    st.one_of(st.just(INF), st.floats(0.5, 200.0)),                  # per-flow cap
)


@settings(max_examples=250, deadline=None)
@given(capacities=st.lists(st.floats(1.0, 500.0), min_size=5, max_size=5),
       specs=st.lists(flow_spec, min_size=1, max_size=8))
def test_network_properties(capacities, specs):
    done, log = run_flows(capacities, specs)

    # every flow completes
    assert sorted(done) == list(range(len(specs)))

    delivered = Counter()
    for k, (now, rates) in enumerate(log):
        load = Counter()
        for _, links, rate, cap in rates:
            assert rate >= 0.0
            assert rate <= cap * (1 + 1e-9)
            for link in links:  # multiplicity counts
                load[link] += rate
        # no link carries more than its capacity
        for link, total in load.items():
            assert total <= capacities[link] * (1 + 1e-9), (link, total, capacities[link])
        # max-min fairness: every flow is at its cap or has a saturated link where it is the largest
        for tag, links, rate, cap in rates:
            if rate >= cap * (1 - 1e-9):
                continue
            bottleneck = [
                link for link in set(links)
                if load[link] >= capacities[link] * (1 - 1e-9)
                and all(rate >= r2 * (1 - 1e-9) for _, l2, r2, _ in rates if link in l2)
            ]
            assert bottleneck, f"flow {tag} at {rate} has no bottleneck link"
        if k + 1 < len(log):
            dt = log[k + 1][0] - now
            for tag, _, rate, _ in rates:
                delivered[tag] += rate * dt
    assert log[-1][1] == []

    for i, (t0, links, nbytes, cap) in enumerate(specs):
        # bytes are conserved (a flow may end up to 1 byte early: the engine's completion tolerance)
        assert delivered[i] == pytest.approx(nbytes, abs=1.0 + 1e-9 * nbytes, rel=1e-9)
        mult = Counter(links)
        best = min([capacities[link] / m for link, m in mult.items()] + [cap])
        assert done[i] - t0 >= (nbytes - 1.0) / best * (1 - 1e-9)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 12), nbytes=st.integers(1_000, 10**9), capacity=st.floats(1e3, 1e12))
def test_n_equal_flows_on_one_link_finish_together(n, nbytes, capacity):
    done, _ = run_flows([capacity], [(0, [0], nbytes, INF)] * n)
    for i in range(n):
        assert done[i] == pytest.approx(n * nbytes / capacity, rel=1e-9)


# ------------------------------------------------------------------------------------- weighted links
def run_weighted(capacities, specs):
    """Flows given as (links, weights, nbytes), all starting at 0; return finish times."""
    env = simpy.Environment()
    net = Network(env, capacities)
    done = {}

    def start(i, links, weights, nbytes):
        yield net.transfer(links, nbytes, weights=weights)
        done[i] = env.now

    for i, (links, weights, nbytes) in enumerate(specs):
        env.process(start(i, links, weights, nbytes))
    env.run()
    return done


def test_weight_is_wire_bytes_per_byte_of_progress():
    # an LL-like flow puts 2 wire bytes on the link per payload byte: half the rate
    done = run_weighted([10.0], [([0], [2.0], 100)])
    assert done[0] == pytest.approx(20.0, rel=1e-12)
    # a pipelined two-stage flow: stage A moves 1 byte, stage B 0.25 bytes per byte of progress
    done = run_weighted([10.0, 1.0], [([0, 1], [1.0, 0.25], 100)])
    assert done[0] == pytest.approx(25.0, rel=1e-12)  # B is the bottleneck: 1 / 0.25 = 4 B/s


def test_protocol_overhead_on_links_is_not_sped_up_by_concurrency():
    # one flow at efficiency 0.94 alone, or two of them together: the link carries wire bytes at capacity,
    # so two together take exactly twice as long (a per-flow cap would let them finish 6% sooner)
    w = 1 / 0.94
    alone = run_weighted([48.0], [([0], [w], 1000)])
    both = run_weighted([48.0], [([0], [w], 1000), ([0], [w], 1000)])
    assert both[0] == both[1] == pytest.approx(2 * alone[0], rel=1e-12)
    assert alone[0] == pytest.approx(1000 * w / 48.0, rel=1e-12)


def test_max_min_rates_with_weights():
    # flow 0 loads link 0 with weight 2, flow 1 with weight 1: equal rates r, 3r = 9
    rates = max_min_rates([([0], [2.0], INF), ([0, 1], [1.0, 1.0], INF)], [9.0, 100.0])
    assert rates == [pytest.approx(3.0), pytest.approx(3.0)]
    # a flow alone: min over links of capacity / weight (solo_rate)
    assert max_min_rates([([0, 1], [0.5, 4.0], INF)], [9.0, 100.0]) == [pytest.approx(18.0)]
    assert solo_rate([0, 1], [0.5, 4.0], [9.0, 100.0]) == max_min_rates([([0, 1], [0.5, 4.0], INF)], [9.0, 100.0])[0]


@settings(max_examples=150, deadline=None)
@given(capacities=st.lists(st.floats(1.0, 500.0), min_size=4, max_size=4),
       specs=st.lists(st.tuples(st.lists(st.tuples(st.integers(0, 3), st.floats(0.05, 4.0)), min_size=1, max_size=4),
                                st.floats(0.5, 1e3)), min_size=1, max_size=6))
def test_weighted_allocation_is_feasible_and_max_min_fair(capacities, specs):
    flows = []
    for pairs, cap in specs:
        merged: dict[int, float] = {}
        for link, w in pairs:
            merged[link] = merged.get(link, 0.0) + w
        flows.append((list(merged), list(merged.values()), cap))
    rates = max_min_rates(flows, capacities)
    load = Counter()
    for (links, weights, _cap), r in zip(flows, rates):
        for link, w in zip(links, weights):
            load[link] += w * r
    for link, total in load.items():
        assert total <= capacities[link] * (1 + 1e-9)
    for (links, _weights, cap), r in zip(flows, rates):
        assert 0 < r <= cap * (1 + 1e-9)
        if r >= cap * (1 - 1e-9):
            continue
        # a saturated link on which no other flow has a higher rate
        assert any(load[link] >= capacities[link] * (1 - 1e-9)
                   and all(r >= r2 * (1 - 1e-9) for (l2, _, _), r2 in zip(flows, rates) if link in l2)
                   for link in links)

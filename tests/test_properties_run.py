"""Properties of replayed runs: overlap (HTA definition, computed here from the Timeline), lower bounds on
the step time, stream and span invariants, and randomized small runs (hypothesis)."""

from __future__ import annotations

from collections import defaultdict

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tspsim.engine.costs import compute_seconds
from tspsim.opgraph import MEMORY_CATEGORIES
from tspsim.simulate import Point, simulate


# ------------------------------------------------------------------------------------------ helpers
def _union(intervals) -> list[list[float]]:
    out: list[list[float]] = []
    for a, b in sorted((a, b) for a, b in intervals if b > a):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _intersection(a, b) -> float:
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def overlap_fraction(tl, comm_pred=None) -> float:
    """HTA overlap: per rank |compute ∪ ∩ comm ∪| / |comm ∪|, averaged over ranks that communicate.

    Compute spans: ops of a compute kind other than ``memory`` with positive duration. Comm spans:
    collectives and p2p ops (optionally filtered by ``comm_pred``).
    """
    per: dict[int, tuple[list, list]] = defaultdict(lambda: ([], []))
    for oid, s, e in tl.spans:
        op = tl.ops[oid]
        if op.is_compute:
            if op.kind != "memory" and e > s:
                per[op.rank][0].append((s, e))
        elif comm_pred is None or comm_pred(op):
            per[op.rank][1].append((s, e))
    fractions = []
    for comp, comm in per.values():
        cu, mu = _union(comp), _union(comm)
        length = sum(b - a for a, b in mu)
        if length > 0:
            fractions.append(_intersection(cu, mu) / length)
    assert fractions, "no communication spans"
    return sum(fractions) / len(fractions)


def critical_path_seconds(graph, gpu) -> float:
    """Longest path through the op graph; compute ops weigh compute_seconds on an idle GPU, comm ops 0.

    Edges: dependencies, per-(rank, stream) issue order, and collective rendezvous (no participant's
    op ends before every participant's op has started, i.e. before all their predecessors finished).
    """
    g = graph.graph
    for ops in graph.streams().values():
        for a, b in zip(ops, ops[1:]):
            g.add_edge(a.id, b.id)
    preds = {n: list(g.predecessors(n)) for n in g.nodes}
    members: dict[str, list[int]] = defaultdict(list)
    for op in graph.ops:
        if op.is_comm:
            members[op.coll].append(op.id)
    for coll, ids in members.items():
        v = ("rendezvous", coll)
        for o in ids:
            for u in preds[o]:
                g.add_edge(u, v)
            g.add_edge(v, o)
    assert nx.is_directed_acyclic_graph(g), "rendezvous edges make a cycle: the schedule would deadlock"
    weight = {op.id: compute_seconds(op, gpu) if op.is_compute else 0.0 for op in graph.ops}
    finish: dict = {}
    for n in nx.topological_sort(g):
        start = max((finish[p] for p in g.predecessors(n)), default=0.0)
        finish[n] = start + weight.get(n, 0.0)
    return max(finish.values())


def check_spans(tl) -> None:
    """Every op has exactly one span; spans on one (rank, stream) never overlap and follow issue order."""
    ids = [oid for oid, _s, _e in tl.spans]
    assert sorted(ids) == list(range(len(tl.ops))), "ops without a span, or with several"
    by_stream: dict[tuple[int, str], list[tuple[int, float, float]]] = defaultdict(list)
    for oid, s, e in tl.spans:
        assert 0.0 <= s <= e
        op = tl.ops[oid]
        by_stream[(op.rank, op.stream)].append((oid, s, e))
    for key, spans in by_stream.items():
        spans.sort(key=lambda x: x[0])  # issue order = id order within a stream
        for (a, _sa, ea), (b, sb, _eb) in zip(spans, spans[1:]):
            assert sb >= ea, f"{key}: op {b} starts at {sb} before op {a} ends at {ea}"


def check_memory_nonnegative(tl) -> None:
    for r in tl.graph.ranks:
        cur = dict.fromkeys(MEMORY_CATEGORIES, 0)
        for t, cat, delta in tl.memory.get(r, []):
            cur[cat] += delta
            assert cur[cat] >= 0, f"rank {r}: {cat} = {cur[cat]} B at t={t}"


def check_bytes_balance(tl) -> None:
    """Unfolded graph: bytes sent by all ranks = bytes received by all ranks, per kind."""
    kinds = {k for d in (*tl.sent_bytes.values(), *tl.recv_bytes.values()) for k in d}
    for kind in kinds:
        sent = sum(d.get(kind, 0.0) for d in tl.sent_bytes.values())
        recv = sum(d.get(kind, 0.0) for d in tl.recv_bytes.values())
        assert sent == pytest.approx(recv, rel=1e-12), kind


# ------------------------------------------------------------------------------------------ overlap
@pytest.fixture(scope="module")
def runs_128k():
    """zyphra-7b, 128K tokens, training, one MI300X node, D = 8."""
    out = {}
    for name, sched, opts in [("tsp", "tsp", ()), ("tp", "tp", ()), ("tp-overlap", "tp", (("tp_overlap", True),))]:
        out[name] = simulate(Point(sched, "mi300x-1node", model="zyphra-7b", mode="train", seq_len=131072, degree=8,
                                   options=opts))
    return out


def test_tsp_communication_mostly_hidden(runs_128k):
    res = runs_128k["tsp"]
    ov = overlap_fraction(res.timeline)
    assert ov > 0.5, f"TSP overlap {ov:.1%}"
    assert res.entry["overlap_pct"] == pytest.approx(100 * ov, rel=1e-6)


def test_tp_all_reduces_exposed(runs_128k):
    """Classic TP's forward (and recomputed forward) all-reduces sit on the critical path; only Megatron-Core's
    async input-gradient all-reduces of the backward (``tp_async_grad_allreduce``) overlap the wgrad GEMMs."""
    res = runs_128k["tp"]
    fwd = overlap_fraction(res.timeline, lambda op: op.kind == "all_reduce" and op.stream == "comm"
                           and op.phase != "bwd")
    assert fwd < 0.10, f"classic TP forward all-reduce overlap {fwd:.1%}"
    bwd = overlap_fraction(res.timeline, lambda op: op.kind == "all_reduce" and op.stream == "comm"
                           and op.phase == "bwd")
    assert bwd > 0.3, f"async backward all-reduce overlap {bwd:.1%}"
    assert res.entry["overlap_pct"] == pytest.approx(100 * overlap_fraction(res.timeline), rel=1e-6, abs=1e-9)


def test_tp_overlap_option_shortens_the_step(runs_128k):
    plain, overlapped = runs_128k["tp"], runs_128k["tp-overlap"]
    assert overlapped.entry["step_time_s"] < plain.entry["step_time_s"]
    assert overlap_fraction(overlapped.timeline, lambda op: op.kind == "all_reduce" and op.stream == "comm") > \
        overlap_fraction(plain.timeline, lambda op: op.kind == "all_reduce" and op.stream == "comm")


# ------------------------------------------------------------------------------------------ bounds
def _check_bounds(res) -> None:
    tl, topo = res.timeline, res.topology
    step = res.entry["step_time_s"]
    assert step == pytest.approx(tl.end_s, rel=1e-12)
    busy: dict[int, float] = defaultdict(float)
    ideal: dict[int, float] = defaultdict(float)
    slow = max(topo.intra.compute_slowdown, topo.inter.compute_slowdown if topo.inter else 0.0)
    for oid, s, e in tl.spans:
        op = tl.ops[oid]
        if op.is_compute and op.kind != "memory" and e > s:
            busy[op.rank] += e - s
            cs = compute_seconds(op, topo.gpu)
            ideal[op.rank] += cs
            # a kernel runs at full speed, or slowed by at most the fabric's factor while comm is active
            assert cs * (1 - 1e-9) <= e - s <= cs * (1 + slow) * (1 + 1e-9), op.name
    assert step >= max(busy.values()) * (1 - 1e-12)
    assert step >= max(ideal.values()) * (1 - 1e-12)
    bound = critical_path_seconds(tl.graph, topo.gpu)
    assert step >= bound * (1 - 1e-9), f"step {step} s below the critical path {bound} s"


def test_bounds_on_128k_runs(runs_128k):
    for res in runs_128k.values():
        _check_bounds(res)
        check_spans(res.timeline)


BOUND_CASES = [
    ("tsp", {"degree": 8}), ("tsp", {"degree": 4}), ("tp", {"degree": 8}), ("tp", {"degree": 2}),
    ("satp-seq", {"degree": 4}), ("satp-batch", {"degree": 4, "batch": 4}), ("sp", {"degree": 8}),
    ("tp+sp", {"tp": 4, "sp": 2}), ("tp+sp", {"tp": 2, "sp": 4}),
]


@pytest.mark.parametrize(("schedule", "kw"), BOUND_CASES)
@pytest.mark.parametrize("mode", ["train", "forward"])
def test_step_time_bounds_and_spans(model_yaml, schedule, kw, mode):
    kw = dict(kw)
    model = model_yaml("prop-small", hidden=1024, layers=2, q_heads=16, kv_heads=8, head_dim=64, ffn_hidden=4096,
                       vocab=2048)
    res = simulate(Point(schedule, "mi300x-1node", model=model, mode=mode, seq_len=16384, batch=kw.pop("batch", 1),
                         **kw), fold=False)
    _check_bounds(res)
    check_spans(res.timeline)
    check_bytes_balance(res.timeline)
    check_memory_nonnegative(res.timeline)


# ------------------------------------------------------------------------------------------ hypothesis
@st.composite
def small_runs(draw):
    schedule = draw(st.sampled_from(["tsp", "tp", "satp-seq", "satp-batch", "sp", "tp+sp"]))
    D = draw(st.sampled_from([2, 4, 8]))
    seq = draw(st.sampled_from([4096, 8192, 16384]))
    batch = draw(st.sampled_from([1, 2]))
    recompute = draw(st.sampled_from(["none", "selective", "full"]))
    mode = draw(st.sampled_from(["train", "train", "forward"]))
    if schedule == "satp-batch":
        batch *= D
    degrees = {"tp": max(1, D // 2), "sp": 2} if schedule == "tp+sp" else {"degree": D}
    return Point(schedule, "mi300x-1node", mode=mode, seq_len=seq, batch=batch,
                 options=(("recompute", recompute),), **degrees)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(point=small_runs())
def test_random_small_runs(model_yaml, point):
    model = model_yaml("prop-tiny", hidden=256, layers=2, q_heads=8, kv_heads=8, head_dim=32, ffn_hidden=1024,
                       vocab=512)
    res = simulate(Point(**{**point.__dict__, "model": model}), fold=False)
    tl = res.timeline
    assert tl.graph.ranks == tuple(range(8))
    check_spans(tl)
    check_bytes_balance(tl)
    check_memory_nonnegative(tl)
    assert res.entry["step_time_s"] > 0


@st.composite
def runs_with_options(draw):
    """Like :func:`small_runs`, plus the documented assumption options (tsp.md §8) and a GQA model."""
    point = draw(small_runs())
    opts = dict(point.options)
    opts.update(draw(st.fixed_dictionaries({}, optional={
        "kv_buckets": st.sampled_from([1, 2]), "weight_buffers": st.sampled_from([2, 3]),
        "pack_kv": st.booleans(), "tsp_grad_return": st.sampled_from(["ring", "reduce"]),
        "zero1": st.booleans(), "sp_keep_gathered_kv": st.booleans(), "tp_overlap": st.booleans(),
        "satp_seq_attention": st.sampled_from(["gather-kv", "gather-input"]),
        "dp_bucket_MB": st.sampled_from([1.0, 25.0]),
    })))
    return Point(**{**point.__dict__, "options": tuple(sorted(opts.items()))})


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(point=runs_with_options())
def test_random_runs_with_options(model_yaml, point):
    model = model_yaml("prop-tiny-gqa", hidden=256, layers=2, q_heads=16, kv_heads=8, head_dim=16, ffn_hidden=768,
                       vocab=512)
    res = simulate(Point(**{**point.__dict__, "model": model}), fold=False)
    tl = res.timeline
    check_spans(tl)
    check_bytes_balance(tl)
    check_memory_nonnegative(tl)
    _check_bounds(res)

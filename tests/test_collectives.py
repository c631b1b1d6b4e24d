"""Collective algorithms: exact byte accounting, mesh behaviour, lower bounds, stream order.

Analytical volumes (shared/reference/tensor-parallelism-analysis.md, design.md §2 rule 2) for a
payload of N bytes on p ranks, per rank, sent and received:

* all-reduce, ring / two-shot / hierarchical: 2(p−1)/p·N
* reduce-scatter and all-gather, ring / direct / hierarchical: (p−1)/p·N
* all-to-all, direct: (p−1)/p·N
* one-shot all-reduce: (p−1)·N — every rank sends its whole buffer to every peer. This is NOT
  communication-optimal (it trades bandwidth for a single latency step) and is only chosen for
  small messages.
* tree all-reduce (NCCL's double binary tree with chains inside the nodes): leaves and inner nodes
  move different amounts, so only the total is fixed: 2(p−1)·N over all ranks (= p · 2(p−1)/p·N,
  the same total as a ring).
* recursive doubling all-reduce (power-of-two p, forced only): N·log2 p per rank — latency-optimal,
  not bandwidth-optimal.
* hierarchical (pipelined RS → per-rail ring → AG): the ring volumes exactly.
* NVLS all-reduce: (1 + 1/p)·N through every GPU port each way (the switch reduces and multicasts).
* NVLS tree (across switch nodes, m GPUs per node): (1 + 1/m)·N through every port each way, plus
  N/(2m) each way on every edge of NCCL's two binary trees over the nodes, per rail: a rank sends
  (1 + 1/m)·N + N/(2m) · (its node's tree edges in both trees).
* broadcast: every non-root rank receives exactly N (total (p−1)·N), the root receives nothing.
* reduce: every non-root rank sends exactly N (total (p−1)·N), the root sends nothing.
"""

import math
from collections import Counter

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tspsim.core.errors import TspsimError
from tspsim.engine.collectives import choose_algorithm, hamiltonian_channels, plan_collective
from tspsim.engine.collectives.tree import dtree_parents
from tspsim.engine.sim import ReplayOptions, replay
from tspsim.opgraph import GraphBuilder
from tspsim.spec.routes import route_arrays
from tspsim.spec.topology_file import load_topology

TOPOS = {name: load_topology(name) for name in ("mi300x-1node", "h100-dgx-1node", "mi300x-128node",
                                                 "h100-dgx-128node")}
ROOTED = ("broadcast", "reduce")
SIZES = (1000, 12 * 2**20 + 8, 64 * 2**20)  # small (direct/one-shot by policy), odd-sized, large

# Groups: (topology, ranks). One node (2..8 GPUs), two nodes (9..16 GPUs, node-major), one rank per
# node, several ranks per node.
GROUPS = (
    [("mi300x-1node", tuple(range(p))) for p in range(2, 9)]
    + [("mi300x-1node", (1, 4, 6)), ("mi300x-1node", (7, 0))]
    + [("h100-dgx-1node", tuple(range(p))) for p in (2, 5, 8)]
    + [("mi300x-128node", tuple(range(p))) for p in range(9, 17)]
    + [("mi300x-128node", (0, 8)), ("mi300x-128node", (0, 8, 16, 24)), ("mi300x-128node", (3, 11, 19)),
       ("mi300x-128node", (0, 1, 8, 9)), ("mi300x-128node", (2, 3, 4, 10, 11, 12, 18, 19, 20)),
       ("h100-dgx-128node", (0, 256)), ("h100-dgx-128node", tuple(range(16))),
       ("h100-dgx-128node", (0, 1, 256, 257))]
)
ALGS = {
    "all_reduce": ("", "ring", "direct", "one_shot", "two_shot", "tree", "rd", "hier", "nvls", "nvls_tree"),
    "reduce_scatter": ("", "ring", "direct", "hier"),
    "all_gather": ("", "ring", "direct", "hier"),
    "broadcast": ("", "ring", "direct", "tree", "hier"),
    "reduce": ("", "ring", "direct", "tree", "hier"),
    "all_to_all": ("", "direct"),
}


def _even_multinode(topo, group):
    per_node: dict[int, list[int]] = {}
    for r in group:
        per_node.setdefault(topo.node_of(r), []).append(r % topo.gpus_per_node)
    locals_ = {tuple(sorted(v)) for v in per_node.values()}
    return len(per_node) > 1 and len(locals_) == 1


def _cases():
    for name, group in GROUPS:
        topo = TOPOS[name]
        for op, algs in ALGS.items():
            for alg in algs:
                if alg == "hier" and not _even_multinode(topo, group):
                    continue
                if alg == "rd" and len(group) & (len(group) - 1):
                    continue
                if alg == "nvls" and (topo.intra.nvls is None or len({topo.node_of(r) for r in group}) > 1):
                    continue
                if alg == "nvls_tree" and (topo.intra.nvls is None or not _even_multinode(topo, group)
                                           or len(group) == len({topo.node_of(r) for r in group})):
                    continue
                case_id = f"{name}-{op}-{alg or 'policy'}-{len(group)}r-{group[0]}..{group[-1]}"
                yield pytest.param(name, group, op, alg, id=case_id)


def _root(op, group):
    return group[-1] if op in ROOTED else -1  # a root that is not the first rank exercises rotation


def _check_volumes(op, algorithm, group, nbytes, sent, recv, topo):
    p = len(group)
    rel = 1e-12
    assert set(sent) <= set(group) and set(recv) <= set(group)
    assert sum(sent.values()) == pytest.approx(sum(recv.values()), rel=rel)
    per_rank = None
    if op == "all_reduce":
        if algorithm == "one_shot":
            per_rank = (p - 1) * nbytes
        elif algorithm in ("ring", "two_shot", "hier"):
            per_rank = 2 * (p - 1) / p * nbytes
        elif algorithm == "rd":
            per_rank = nbytes * math.log2(p)
        elif algorithm == "nvls":
            per_rank = (1 + 1 / p) * nbytes
        elif algorithm == "nvls_tree":
            _check_nvls_tree(group, nbytes, sent, recv, topo)
        else:
            assert algorithm == "tree"
            assert sum(sent.values()) == pytest.approx(2 * (p - 1) * nbytes, rel=rel)
    elif op in ("reduce_scatter", "all_gather", "all_to_all"):
        assert algorithm in ("ring", "direct", "hier")
        per_rank = (p - 1) / p * nbytes
    elif op == "broadcast":
        root = _root(op, group)
        assert recv.get(root, 0.0) == 0.0
        for r in group:
            if r != root:
                assert recv.get(r, 0.0) == pytest.approx(nbytes, rel=rel)
        assert sum(recv.values()) == pytest.approx((p - 1) * nbytes, rel=rel)
    else:  # reduce
        root = _root(op, group)
        assert sent.get(root, 0.0) == 0.0
        for r in group:
            if r != root:
                assert sent.get(r, 0.0) == pytest.approx(nbytes, rel=rel)
        assert sum(recv.values()) == pytest.approx((p - 1) * nbytes, rel=rel)
    if per_rank is not None:
        for r in group:
            assert sent.get(r, 0.0) == pytest.approx(per_rank, rel=rel), ("sent", r)
            assert recv.get(r, 0.0) == pytest.approx(per_rank, rel=rel), ("recv", r)


def _check_nvls_tree(group, nbytes, sent, recv, topo):
    """Per rank: (1 + 1/m)·N into the switch plus N/(2m) per tree edge of its node (module docstring)."""
    nodes = sorted({topo.node_of(r) for r in group})
    k, m = len(nodes), len(group) // len(nodes)
    edges = Counter()
    for parents in dtree_parents(k):
        for n, parent in enumerate(parents):
            if parent != -1:
                edges[n] += 1
                edges[parent] += 1
    for r in group:
        want = (1 + 1 / m) * nbytes + edges[nodes.index(topo.node_of(r))] * nbytes / (2 * m)
        assert sent[r] == pytest.approx(want, rel=1e-12), ("sent", r)
        assert recv[r] == pytest.approx(want, rel=1e-12), ("recv", r)
    assert sum(edges.values()) == 2 * 2 * (k - 1)  # two trees of k − 1 edges, both ends counted


def _replay_one(topo, op, group, nbytes, alg, record_links=False):
    b = GraphBuilder(group)
    b.collective(op, group, nbytes, op, root=_root(op, group), algorithm=alg)
    return replay(b.graph, topo, ReplayOptions(record_links=record_links))


@pytest.mark.parametrize(("name", "group", "op", "alg"), list(_cases()))
def test_exact_byte_accounting(name, group, op, alg):
    topo = TOPOS[name]
    for nbytes in SIZES:
        plan = plan_collective(op, group, nbytes, topo, _root(op, group), alg)
        assert plan.phases
        sent, recv = plan.bytes_per_rank()
        _check_volumes(op, plan.algorithm, group, nbytes, sent, recv, topo)
        if alg in ("ring", "tree", "rd", "hier", "one_shot", "two_shot", "nvls", "nvls_tree"):
            assert plan.algorithm == alg
        # every hop is between two members of the group (or a member and its node's NVLS engine)
        engines = {-1 - topo.node_of(r) for r in group}
        for phase in plan.phases:
            assert phase.latency_s >= 0
            assert (phase.flow.frac > 0).all()
            for s, d in phase.flow.hops:
                assert (s in group or s in engines) and (d in group or d in engines)
                assert s != d or s in engines
    # The engine reports the same bytes as the plan (one size; the plans above cover the others).
    nbytes = SIZES[1]
    tl = _replay_one(topo, op, group, nbytes, alg)
    plan = plan_collective(op, group, nbytes, topo, _root(op, group), alg)
    sent_plan, recv_plan = plan.bytes_per_rank()
    sent = {r: d[op] for r, d in tl.sent_bytes.items()}
    recv = {r: d[op] for r, d in tl.recv_bytes.items()}
    assert sent == pytest.approx(sent_plan, rel=1e-12)
    assert recv == pytest.approx(recv_plan, rel=1e-12)
    _check_volumes(op, plan.algorithm, group, nbytes, sent, recv, topo)
    assert tl.collective_algorithms == {plan.algorithm: 1}
    assert tl.end_s > 0


@pytest.mark.parametrize("alg", ["hier", "ring", "tree"])
def test_wrong_algorithm_is_an_error_not_a_silent_plan(alg):
    topo = TOPOS["mi300x-128node"]
    with pytest.raises(TspsimError):
        plan_collective("all_to_all", tuple(range(16)), 2**20, topo, -1, alg)


def test_hier_needs_several_evenly_filled_nodes():
    topo = TOPOS["mi300x-128node"]
    with pytest.raises(TspsimError, match="hier"):
        plan_collective("all_reduce", tuple(range(8)), 2**20, topo, -1, "hier")
    with pytest.raises(TspsimError, match="hier"):
        plan_collective("all_reduce", (0, 1, 8), 2**20, topo, -1, "hier")


def test_tree_only_for_reductions_and_broadcast():
    with pytest.raises(TspsimError, match="tree"):
        plan_collective("all_gather", tuple(range(8)), 2**20, TOPOS["mi300x-1node"], -1, "tree")


def test_unknown_algorithm():
    with pytest.raises(TspsimError, match="unknown algorithm"):
        plan_collective("all_reduce", tuple(range(8)), 2**20, TOPOS["mi300x-1node"], -1, "butterfly")


def test_trivial_collectives_are_empty():
    assert plan_collective("all_reduce", (3,), 2**20, TOPOS["mi300x-1node"]).phases == ()
    assert plan_collective("all_reduce", (0, 1), 0, TOPOS["mi300x-1node"]).phases == ()


def test_policy():
    one, big = TOPOS["mi300x-1node"], TOPOS["mi300x-128node"]
    node = tuple(range(8))
    # direct kernels up to their limit (1 MiB), where they are fastest; then the ring's LL protocol
    assert choose_algorithm("all_reduce", node, 1024, one) == "one_shot"
    assert choose_algorithm("all_reduce", node, 2**20, one) == "two_shot"
    assert choose_algorithm("all_reduce", node, 2**20 + 1, one) == "ring"
    assert choose_algorithm("all_gather", node, 1024, one) == "direct"
    assert choose_algorithm("all_to_all", node, 2**30, one) == "direct"
    assert choose_algorithm("all_reduce", tuple(range(16)), 2**30, big) == "ring"
    assert choose_algorithm("all_reduce", tuple(range(16)), 1024, big) == "tree"
    assert choose_algorithm("broadcast", tuple(range(16)), 2**30, big) == "ring"
    assert choose_algorithm("all_reduce", tuple(range(0, 1024, 8)), 1024, big) == "tree"
    # forced direct all-reduce picks one-shot or two-shot by predicted time
    assert plan_collective("all_reduce", node, 1024, one, -1, "direct").algorithm == "one_shot"
    assert plan_collective("all_reduce", node, 2**30, one, -1, "direct").algorithm == "two_shot"
    h100 = TOPOS["h100-dgx-1node"]
    assert choose_algorithm("all_reduce", node, 2**30, h100) == "nvls"
    assert plan_collective("all_reduce", node, 2**30, h100, -1, "ring").protocol == "Simple"
    assert plan_collective("all_reduce", node, 4096, h100, -1, "ring").protocol == "LL"


# ------------------------------------------------------------------------------------- ring channels
@pytest.mark.parametrize("k", range(2, 17))
def test_hamiltonian_channels_cover_every_arc_equally(k):
    cycles = hamiltonian_channels(k)
    assert cycles
    arcs = Counter()
    for cyc in cycles:
        assert sorted(cyc) == list(range(k)), f"cycle {cyc} is not Hamiltonian"
        for a, b in zip(cyc, cyc[1:] + cyc[:1]):
            arcs[(a, b)] += 1
    if k == 2:
        assert arcs == {(0, 1): 1, (1, 0): 1}
        return
    everything = {(a, b) for a in range(k) for b in range(k) if a != b}
    assert set(arcs) == everything
    assert len(set(arcs.values())) == 1
    if k not in (4, 6):  # a Hamiltonian decomposition exists: arc-disjoint cycles
        assert len(cycles) == k - 1
        assert set(arcs.values()) == {1}


# ------------------------------------------------------------------------------------- the mesh is a mesh
def _busy_links(tl):
    return {i for i, series in tl.links.items() if any(rate > 0 for _, rate in series)}


def test_two_gpu_ring_uses_only_the_links_between_them(mi300x):
    tl = _replay_one(mi300x, "all_reduce", (0, 1), 2**30, "ring", record_links=True)
    assert _busy_links(tl) == {mi300x.link_between("g0", "g1"), mi300x.link_between("g1", "g0")}
    # one link per direction: 2·(1/2)·N = N bytes at 48 GB/s x collective efficiency 0.94
    expected = 2**30 / (48e9 * 0.94)
    assert tl.end_s == pytest.approx(expected, rel=0.01)


def test_four_gpu_group_owns_only_its_twelve_links(mi300x):
    group = (0, 2, 5, 7)
    tl = _replay_one(mi300x, "all_reduce", group, 2**28, "ring", record_links=True)
    expected = {mi300x.link_between(f"g{a}", f"g{b}") for a in group for b in group if a != b}
    assert _busy_links(tl) == expected


def test_eight_gpu_ring_uses_all_56_links(mi300x):
    tl = _replay_one(mi300x, "all_reduce", tuple(range(8)), 2**30, "ring", record_links=True)
    assert _busy_links(tl) == set(range(56))
    for i in range(56):
        assert max(rate for _, rate in tl.links[i]) <= mi300x.links[i].capacity_Bps * (1 + 1e-9)


def test_switch_ring_contends_at_gpu_ports(h100):
    tl = _replay_one(h100, "all_reduce", tuple(range(8)), 2**30, "ring", record_links=True)
    assert _busy_links(tl) == set(range(16))


def test_link_recording_does_not_change_time(mi300x):
    a = _replay_one(mi300x, "all_reduce", tuple(range(8)), 2**28, "ring")
    b = _replay_one(mi300x, "all_reduce", tuple(range(8)), 2**28, "ring", record_links=True)
    assert a.end_s == b.end_s


# ------------------------------------------------------------------------------------- lower bounds
@st.composite
def collective_case(draw):
    name = draw(st.sampled_from(sorted(TOPOS)))
    topo = TOPOS[name]
    pool = list(range(8)) if topo.nodes == 1 else list(range(16)) + [256, 257, 512]
    group = tuple(sorted(draw(st.lists(st.sampled_from(pool), min_size=2, max_size=12, unique=True))))
    op = draw(st.sampled_from(sorted(ALGS)))
    alg = draw(st.sampled_from(ALGS[op]))
    nbytes = draw(st.integers(1, 2**30))
    return name, group, op, alg, nbytes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=collective_case())
def test_simulated_time_is_at_least_the_alpha_beta_bound(case):
    name, group, op, alg, nbytes = case
    topo = TOPOS[name]
    try:
        plan = plan_collective(op, group, nbytes, topo, _root(op, group), alg)
    except TspsimError:
        assume(False)
    tl = _replay_one(topo, op, group, nbytes, alg)
    sent, _ = plan.bytes_per_rank()
    # 1. the busiest sender cannot push its bytes faster than all its outgoing links together
    out_cap = {r: sum(link.capacity_Bps for link in topo.links if link.src == f"g{r}") for r in group}
    bound = max(b / out_cap[r] for r, b in sent.items())
    # 2. no link carries more than capacity x time
    load = Counter()
    for phase in plan.phases:
        f = phase.flow
        hop, links = route_arrays(topo, f.src, f.dst)
        for h, link in zip(hop.tolist(), links.tolist()):
            load[link] += float(f.frac[h]) * nbytes
    link_bound = max((b / topo.links[i].capacity_Bps for i, b in load.items()), default=0.0)
    # 3. phases run one after another, each at least its latency
    alpha = sum(phase.latency_s for phase in plan.phases)
    assert tl.end_s >= bound * (1 - 1e-9)
    assert tl.end_s >= link_bound * (1 - 1e-9)
    assert tl.end_s >= alpha * (1 - 1e-9)


# ------------------------------------------------------------------------------------- stream order
@st.composite
def op_program(draw):
    ranks = list(range(8))
    items = []
    for _ in range(draw(st.integers(1, 10))):
        if draw(st.booleans()):
            items.append(("compute", draw(st.sampled_from(ranks)), draw(st.integers(1, 2000)) * 1e9))
        else:
            group = tuple(sorted(draw(st.lists(st.sampled_from(ranks), min_size=2, max_size=8, unique=True))))
            op = draw(st.sampled_from(sorted(ALGS)))
            stream = draw(st.sampled_from(["comm", "dp"]))
            items.append(("coll", op, group, stream, draw(st.integers(1, 2**28)), draw(st.booleans())))
    return items


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=op_program())
def test_spans_on_one_stream_never_overlap(program):
    topo = TOPOS["mi300x-1node"]
    b = GraphBuilder(range(8))
    last: dict[int, int] = {}
    for item in program:
        if item[0] == "compute":
            _, rank, flops = item
            last[rank] = b.compute(rank, "gemm", "mm", flops=flops, deps=[last.get(rank)])
        else:
            _, op, group, stream, nbytes, dep = item
            deps = {r: [last.get(r)] for r in group} if dep else None
            ids = b.collective(op, group, nbytes, op, stream=stream, deps=deps, root=_root(op, group))
            last.update(ids)
    graph = b.graph
    tl = replay(graph, topo)
    assert sorted(op_id for op_id, _, _ in tl.spans) == list(range(len(graph.ops)))
    span = {op_id: (start, end) for op_id, start, end in tl.spans}
    by_stream: dict[tuple[int, str], list[tuple[float, float, int]]] = {}
    for op_id, (start, end) in span.items():
        op = graph.ops[op_id]
        assert end >= start
        by_stream.setdefault((op.rank, op.stream), []).append((start, end, op_id))
        for d in op.deps:
            assert start >= span[d][1]
    for key, items in by_stream.items():
        items.sort(key=lambda x: x[2])  # issue order = id order within a stream
        for (_, end, _), (start, _, _) in zip(items, items[1:]):
            assert start >= end, f"overlap on {key}"
    # all members of a collective finish together, after the last one arrived
    by_coll: dict[str, list[int]] = {}
    for op in graph.ops:
        if op.is_comm:
            by_coll.setdefault(op.coll, []).append(op.id)
    for ids in by_coll.values():
        ends = {span[i][1] for i in ids}
        assert len(ends) == 1
        assert ends.pop() >= max(span[i][0] for i in ids)


def test_late_rank_delays_the_collective(mi300x):
    b = GraphBuilder(range(8))
    c = b.compute(3, "gemm", "slow", flops=1e15)
    b.collective("all_reduce", tuple(range(8)), 2**20, "ar", deps={3: [c]})
    tl = replay(b.graph, mi300x)
    span = {op_id: (s, e) for op_id, s, e in tl.spans}
    slow_end = span[c][1]
    assert slow_end > 1e-3
    for op in b.graph.ops:
        if op.is_comm:
            assert span[op.id][1] > slow_end

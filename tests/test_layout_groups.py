"""Layout.dp_group / grad_group (arithmetic progressions) and FoldPlan's twin arrays equal their definitions.

Both were rewritten for 16,384-rank data-parallel groups on 2,048 nodes; the references here are the
definitions: ``rank_of(mp, d, stage)`` for every replica d (and every sequence shard s of the TP index for the
sequence-sharded schedules), and ``FoldPlan.twin`` / ``twin_node`` one rank or node at a time.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tspsim.spec.fold import FoldPlan
from tspsim.spec.layout import SEQUENCE_SHARDED, Layout


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(schedule=st.sampled_from(["tp", "sp", "tp+sp", "fsdp", "tsp"]), tp=st.integers(1, 4), sp=st.integers(1, 4),
       pp=st.integers(1, 4), replicas=st.integers(1, 9), placement=st.sampled_from(["mp-dp-pp", "mp-pp-dp"]),
       pick=st.integers(0, 10_000))
def test_dp_and_grad_groups_equal_rank_of(schedule, tp, sp, pp, replicas, placement, pick):
    m = tp * sp
    lay = Layout(schedule, tp, sp, m * pp, m * pp * replicas, pp=pp, placement=placement)
    rank = pick % lay.world_size
    mp, _, stage = lay.coords(rank)
    assert lay.dp_group(rank) == tuple(lay.rank_of(mp, d, stage) for d in range(replicas))
    if schedule in SEQUENCE_SHARDED and sp >= 2:
        t = mp % tp
        want = tuple(sorted(lay.rank_of(t + tp * s, d, stage) for d in range(replicas) for s in range(sp)))
    else:
        want = lay.dp_group(rank)
    assert lay.grad_group(rank) == want


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(g=st.sampled_from([1, 2, 4, 8]), unit=st.integers(1, 6), slabs=st.integers(0, 3),
       peer=st.sampled_from([1, 2, 4, 8]), nodes=st.integers(1, 40), cut=st.integers(0, 7))
def test_fold_plan_twin_arrays_equal_twin(g, unit, slabs, peer, nodes, cut):
    plan = FoldPlan(gpus_per_node=g, unit_nodes=unit, slab_nodes=slabs * unit, peer=peer)
    world = max(1, nodes * g - cut % g)
    assert plan.twin_node_array(nodes).tolist() == [plan.twin_node(n) for n in range(nodes)]
    assert plan.twin_array(world).tolist() == [plan.twin(r) for r in range(world)]

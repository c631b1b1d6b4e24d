"""Graphs reused across points that differ only in what the replay reads (tspsim.simulate.graph_memo).

The reuse is exact only if no build reads a replay-only topology field: every field is classified
(tspsim.spec.topology_structure), and perturbing every replay-only field at once must leave the layout and
every schedule's graph (ops, metadata but the topology's name) unchanged, with and without folding, pipeline
or ZeRO-3. Then the runners must give the same entries with the memo as without it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from tiny_models import tiny_32_heads

from tspsim.explore.runners import SerialRunner, graph_groups, run_point, run_points, spread
from tspsim.schedules import SCHEDULES
from tspsim.schedules.context import BuildContext
from tspsim.simulate import GraphMemo, Point, build_graph
from tspsim.simulate.graph_memo import graph_key, renamed
from tspsim.simulate.point import resolve, resolve_layout
from tspsim.spec.loader import SpecLoader
from tspsim.spec.pipeline_spec import PipelineSpec
from tspsim.spec.topology import Topology
from tspsim.spec.topology_structure import REPLAY_FIELDS, build_structure, unclassified_fields


def test_every_topology_field_is_classified_once() -> None:
    assert unclassified_fields() == []


def _perturbed(value: Any) -> Any:
    """``value`` with every replay-only field changed (recursively), build fields untouched."""
    changes = {}
    for name in REPLAY_FIELDS[type(value)]:
        v = getattr(value, name)
        if dataclasses.is_dataclass(v):
            changes[name] = _perturbed(v)
        elif isinstance(v, bool) or v is None:
            continue
        elif isinstance(v, int):
            changes[name] = v + 3
        elif isinstance(v, float):
            changes[name] = v * 1.37 + 0.11
        elif name == "kind":
            changes[name] = "switch" if v == "full_mesh" else "full_mesh"
        elif isinstance(v, str):
            changes[name] = v + "-what-if"
        elif isinstance(v, tuple):
            changes[name] = (64, 64)
        elif isinstance(v, dict):
            changes[name] = {}
    return dataclasses.replace(value, **changes)


def test_perturbation_changes_every_replay_field_but_not_the_structure(mi300x_128: Topology) -> None:
    other = _perturbed(mi300x_128)
    assert build_structure(other) == build_structure(mi300x_128)
    assert other.gpu.hbm_TBps != mi300x_128.gpu.hbm_TBps and other.intra.kind != mi300x_128.intra.kind
    assert other.inter.nic_GBps != mi300x_128.inter.nic_GBps and other.name != mi300x_128.name
    assert build_structure(dataclasses.replace(mi300x_128, nodes=64)) != build_structure(mi300x_128)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("memo") / "tiny4.yaml"
    path.write_text(tiny_32_heads(layers=4))
    return str(path)


def _ops(graph: Any) -> list[dict[str, Any]]:
    return [op.to_json() for op in graph.ops]


CASES = [
    *[(name, "mi300x-1node", {"batch": 8} if name == "satp-batch" else {}) for name in SCHEDULES.names()],
    *[(name, "h100-dgx-128node", {"gpus": 16}) for name in ("tsp", "tp", "tp+sp", "fsdp")],
    ("tp", "mi300x-128node", {"gpus": 32, "pipeline": PipelineSpec(stages=2, global_batch=8)}),
    ("tsp", "mi300x-128node", {"gpus": 16, "options": (("zero", 2),)}),
    ("tp", "mi300x-1node", {"degree": 2, "options": (("zero", 3), ("stack", "torchtitan"))}),
]


@pytest.mark.parametrize("mode", ["train", "forward"])
@pytest.mark.parametrize(("schedule", "topology", "extra"), CASES)
def test_replay_only_fields_do_not_change_the_graph(tiny: str, schedule: str, topology: str, extra: dict,
                                                     mode: str) -> None:
    point = Point(schedule, topology, model=tiny, mode=mode, seq_len=1024, **extra)
    topo, model, layout, workload, opts = resolve(point)
    other = _perturbed(topo)
    layout2, workload2, opts2 = resolve_layout(point, other, model)
    assert (layout2, workload2, opts2) == (layout, workload, opts)
    assert graph_key(schedule, True, other, model, layout2, workload2, opts2) == \
        graph_key(schedule, True, topo, model, layout, workload, opts)
    for fold in (True, False):
        graphs = [SCHEDULES.get(schedule).build(BuildContext(model, t, layout, workload, opts, fold=fold))
                  for t in (topo, other)]
        assert _ops(graphs[0]) == _ops(graphs[1])
        assert graphs[1].meta == {**graphs[0].meta, "topology": other.name}
        assert (graphs[0].ranks, graphs[0].replica_nodes) == (graphs[1].ranks, graphs[1].replica_nodes)


@pytest.mark.parametrize("mode", ["prefill", "generate"])
@pytest.mark.parametrize("schedule", ["tsp", "tp", "tp+sp", "satp-seq", "satp-batch", "sp"])
def test_replay_only_fields_do_not_change_the_prefill_graph(tiny: str, schedule: str, mode: str) -> None:
    from tspsim.schedules.prefill import build_prefill

    for topology, gpus in (("mi300x-1node", None), ("h100-dgx-128node", 16)):
        point = Point(schedule, topology, model=tiny, mode=mode, seq_len=1024, gpus=gpus,
                      batch=8 if schedule in ("satp-batch", "satp-seq") else 1)
        topo, model, layout, workload, opts = resolve(point)
        other = _perturbed(topo)
        assert resolve_layout(point, other, model) == (layout, workload, opts)
        graphs = [build_prefill(BuildContext(model, t, layout, workload, opts)) for t in (topo, other)]
        assert _ops(graphs[0]) == _ops(graphs[1])
        assert graphs[1].meta == {**graphs[0].meta, "topology": other.name}


@pytest.mark.parametrize("schedule", ["tsp", "tp", "tp+sp", "satp-seq", "satp-batch", "sp"])
def test_replay_only_fields_do_not_change_the_decode_steps(tiny: str, schedule: str) -> None:
    """Every decode step a point builds (the timer's two-block unit, the whole step, the final step) is the same
    on a topology whose replay-only fields all differ: ops, metadata but the name, and what re-costs and cuts it."""
    from tspsim.simulate.inference import decode_step

    for topology, gpus in (("mi300x-1node", None), ("h100-dgx-128node", 16)):
        point = Point(schedule, topology, model=tiny, mode="decode", seq_len=1024, gpus=gpus, decode_tokens=3,
                      batch=8 if schedule in ("satp-batch", "satp-seq") else 1)
        topo, model, layout, workload, opts = resolve(point)
        other = _perturbed(topo)
        assert resolve_layout(point, other, model) == (layout, workload, opts)
        for layers, cached in ((2, 0), (None, 1024), (None, 1026)):
            steps = [decode_step(t, model, layout, workload, opts, True, cached, layers) for t in (topo, other)]
            assert _ops(steps[0].graph) == _ops(steps[1].graph)
            assert steps[1].graph.meta == {**steps[0].graph.meta, "topology": other.name}
            assert (steps[0].attention, steps[0].cuts, steps[0].layer_starts, steps[0].epilogue_start) == \
                (steps[1].attention, steps[1].cuts, steps[1].layer_starts, steps[1].epilogue_start)


def test_memo_hands_out_private_decode_steps(tiny: str, what_if: str) -> None:
    """A decode step from the memo shares every op but the attention ops, which are its own to re-cost: re-costing
    one copy changes neither the memo's step nor another copy, and a copy re-costed to the step's own count is the
    step built afresh."""
    from tspsim.simulate.inference import decode_step

    memo = GraphMemo()
    point = Point("tp", "mi300x-1node", model=tiny, mode="decode", seq_len=1024, decode_tokens=3)
    topo, model, layout, workload, opts = resolve(point)
    fast = resolve(dataclasses.replace(point, topology=what_if))[0]
    first = decode_step(topo, model, layout, workload, opts, True, 1024, graphs=memo)
    again = decode_step(fast, model, layout, workload, opts, True, 1024, graphs=memo)
    assert memo.hits == 1 and again.graph.meta["topology"] == fast.name and first.graph.meta["topology"] == topo.name
    attention = {a.op for a in first.attention}
    assert attention and all((x is y) == (op_id not in attention)
                             for op_id, (x, y) in enumerate(zip(first.graph.ops, again.graph.ops)))
    fresh = decode_step(topo, model, layout, workload, opts, True, 1024)
    first.recost(5000)
    assert _ops(again.graph) == _ops(fresh.graph) and _ops(first.graph) != _ops(fresh.graph)
    third = decode_step(topo, model, layout, workload, opts, True, 1024, graphs=memo)
    assert memo.hits == 2 and _ops(third.graph) == _ops(fresh.graph) and third.cached == 1024
    third.recost(5000)
    assert _ops(third.graph) == _ops(first.graph)
    assert decode_step(topo, model, layout, workload, opts, True, 1025, graphs=memo).cached == 1025
    assert memo.hits == 2  # another cached count is another step (its memory events differ)
    memo.clear()
    decode_step(topo, model, layout, workload, opts, True, 1024, graphs=memo)
    assert memo.hits == 2


def test_memo_hands_back_the_graph_renamed_until_cleared(tiny: str) -> None:
    memo = GraphMemo()
    specs = SpecLoader()
    point = Point("tsp", "mi300x-1node", model=tiny, seq_len=1024)
    first = build_graph(point, specs=specs, graphs=memo)[0]
    again = build_graph(point, specs=specs, graphs=memo)[0]
    assert memo.hits == 1 and again.ops is first.ops and again.meta == first.meta and again.meta is not first.meta
    memo.clear()
    fresh = build_graph(point, specs=specs, graphs=memo)[0]
    assert memo.hits == 1 and fresh.ops is not first.ops and _ops(fresh) == _ops(first)
    inference = Point("tsp", "mi300x-1node", model=tiny, mode="prefill", seq_len=1024)
    build_graph(inference, specs=specs, graphs=memo)
    build_graph(inference, specs=specs, graphs=memo)
    assert memo.hits == 1  # tspsim generate's inference graphs are not memoised (simulate's prefill steps are)


def test_renamed_copies_the_metadata() -> None:
    from tspsim.opgraph import OpGraph

    g = OpGraph(meta={"topology": "a", "assumptions": {"x": [1]}}, ranks=(0,), replica_nodes=2)
    r = renamed(g, "b")
    r.meta["assumptions"]["x"].append(2)
    assert g.meta == {"topology": "a", "assumptions": {"x": [1]}} and r.meta["topology"] == "b"
    assert r.ops is g.ops and (r.ranks, r.replica_nodes) == ((0,), 2)


@pytest.fixture(scope="module")
def what_if(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A one-node MI300X with faster compute, HBM and links: same graphs, other step times."""
    path = tmp_path_factory.mktemp("whatif") / "fast.yaml"
    path.write_text("name: mi300x-fast\ninherit: mi300x-1node\ngpu:\n  peak_bf16_TFLOPS: 1500\n  hbm_TBps: 6.0\n"
                    "intra:\n  link_GBps: 96\n")
    return str(path)


def _points(tiny: str, what_if: str) -> list[Point]:
    return [Point(s, t, model=tiny, mode=m, seq_len=2048)
            for t in ("mi300x-1node", what_if) for s in ("tsp", "tp") for m in ("train", "prefill")]


def _stable(result: dict[str, Any]) -> dict[str, Any]:
    entry = dict(result["entry"])
    entry.pop("sim_wall_s", None)
    return entry


def test_graph_groups_pair_the_what_if_points(tiny: str, what_if: str) -> None:
    points = _points(tiny, what_if)
    groups = graph_groups(points, SpecLoader())
    # each point pairs with its twin on the other topology
    assert groups == [[0, 4], [1, 5], [2, 6], [3, 7]]
    decode = [Point("tsp", t, model=tiny, mode="decode", seq_len=2048) for t in ("mi300x-1node", what_if)]
    assert graph_groups(decode, SpecLoader()) == [[0, 1]]
    one_topology = [Point("tsp", "mi300x-1node", model=tiny, seq_len=2048)] * 2
    assert graph_groups(one_topology, SpecLoader()) == [[0], [1]]   # never resolved: one topology
    assert spread([[0, 4], [1]], 3) == [[0], [4], [1]]
    assert spread([[0, 1, 2, 3]], 3) == [[0], [1], [2, 3]]
    assert spread([[0], [1]], 4) == [[0], [1]]


def test_serial_runner_reuses_graphs_with_identical_results(tiny: str, what_if: str) -> None:
    points = _points(tiny, what_if) + [Point(s, t, model=tiny, mode=m, seq_len=2048, decode_tokens=4)
                                       for s, m in (("tp", "generate"), ("tsp", "decode"), ("tp", "decode"))
                                       for t in ("mi300x-1node", what_if)]
    alone = [run_point(p) for p in points]
    with SerialRunner() as runner:
        shared = dict(runner.run(points))
        assert runner._graphs.hits >= 4  # two train steps, two prefill steps, and max-batch probes of equal batch
    decode = points[len(_points(tiny, what_if)) + 2:]
    with SerialRunner() as runner:
        assert [_stable(r) for _, r in sorted(runner.run(decode))] == [_stable(r) for r in alone[-4:]]
        # per decode point on the what-if topology: the timer's unit (tp: two blocks) or whole step (tsp), the
        # final step and the max-batch probes' steps
        assert runner._graphs.hits >= 2 * 3
    assert [_stable(shared[i]) for i in range(len(points))] == [_stable(r) for r in alone]
    assert [_stable(r) for r in run_points(points)] == [_stable(r) for r in alone]
    assert alone[0]["entry"]["step_time_s"] != alone[4]["entry"]["step_time_s"]  # the what-if does change times


def test_pool_runner_results_equal_serial(tiny: str, what_if: str) -> None:
    from tspsim.explore.runners import PoolRunner

    points = _points(tiny, what_if)[:4] + [Point("tsp", what_if, model=tiny, seq_len=2048)]
    with SerialRunner() as runner:
        serial = dict(runner.run(points))
    with PoolRunner(2) as runner:
        pooled = dict(runner.run(points))
    assert sorted(pooled) == list(range(len(points)))
    assert [_stable(pooled[i]) for i in range(len(points))] == [_stable(serial[i]) for i in range(len(points))]


def test_the_sweep_over_what_if_topologies_is_unchanged(tiny: str, what_if: str, tmp_path: Path) -> None:
    """--jobs 1, --jobs 2 and a Dask cluster (groups as tasks on each) write the same results."""
    import json

    from click.testing import CliRunner

    from tspsim.cli import cli

    distributed = pytest.importorskip("distributed")
    args = ["sweep", "-t", f"mi300x-1node,{what_if}", "--model", tiny, "--schedule", "tsp,tp", "--seq", "2k,4k"]
    outs = []
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        for how in (["--jobs", "1"], ["--jobs", "2"], ["--scheduler", cluster.scheduler_address]):
            out = tmp_path / how[-1].replace("/", "_").replace(":", "_")
            res = CliRunner().invoke(cli, [*args, *how, "-o", str(out)])
            assert res.exit_code == 0, res.output
            outs.append((out / "results.json").read_bytes())
    assert outs[0] == outs[1] == outs[2]
    assert len(json.loads(outs[0])["results"]) == 8

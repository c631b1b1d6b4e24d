"""ZeRO stages, FSDP and HSDP on the data-parallel axis, and the gradient group of replicated weights (issue 14).

Bytes are exact: every collective of these shapes is above the direct-kernel limit (and all-reduces run on the
A100 node, which has no NVLink SHARP), so rings move
(n − 1)/n of the buffer per rank (all-gather, reduce-scatter) or 2(n − 1)/n (all-reduce). ``P`` is the model's
parameter count (every parameter: no model parallelism), s = 2 bytes per weight, s_grad = 4 per gradient.
"""

from __future__ import annotations

import pytest

from tspsim.core.errors import ConfigError
from tspsim.simulate import Point, build_graph, simulate
from tspsim.spec.model import load_model
from tspsim.spec.pipeline_spec import PipelineSpec

S, S_GRAD, OPT = 2, 4, 12      # bytes per parameter: weight, gradient, master + Adam state


@pytest.fixture(scope="module")
def model(model_yaml) -> str:
    return model_yaml("zero-m", hidden=512, layers=4, q_heads=8, kv_heads=8, head_dim=64, ffn_hidden=2048,
                      vocab=1024)


def _bytes_by_stream(tl, stream: str, kind: str) -> float:
    """Mean bytes sent per simulated rank by ops of one stream and kind."""
    total = sum(tl.op_sent_bytes.get(op.id, 0.0) for op in tl.ops if op.stream == stream and op.kind == kind)
    return total / len(tl.graph.ranks)


def _static(graph, rank: int = 0) -> dict[str, int]:
    op = next(o for o in graph.ops if o.rank == rank and o.name == "static memory")
    return {cat: b for _w, cat, b in op.mem}


def _run(model: str, schedule: str = "fsdp", gpus: int = 8, topo: str = "h100-dgx-1node", **kw):
    return simulate(Point(schedule, topo, model=model, seq_len=1024, gpus=gpus, **kw))


@pytest.mark.parametrize("m", [1, 2])
def test_zero3_bytes_per_micro_batch(model, m):
    """Two parameter all-gathers per unit and micro-batch (before forward, before backward), one gradient
    reduce-scatter: 2·P·(D−1)/D·s and P·(D−1)/D·s_grad per rank and micro-batch."""
    P, D = load_model(model).total_params, 8
    res = _run(model, pipeline=PipelineSpec(global_batch=8 * m))
    tl = res.timeline
    assert _bytes_by_stream(tl, "fsdp", "all_gather") == pytest.approx(m * 2 * P * (D - 1) / D * S, rel=1e-12)
    assert _bytes_by_stream(tl, "dp", "reduce_scatter") == pytest.approx(m * P * (D - 1) / D * S_GRAD, rel=1e-12)
    assert res.entry["comm_bytes_per_rank"].keys() == {"all_gather", "reduce_scatter"}


def test_zero3_without_resharding_gathers_once(model):
    P, D = load_model(model).total_params, 8
    tl = _run(model, options=(("reshard_after_forward", False),)).timeline
    assert _bytes_by_stream(tl, "fsdp", "all_gather") == pytest.approx(P * (D - 1) / D * S, rel=1e-12)


@pytest.mark.parametrize("D", [2, 4, 8])
def test_zero3_state_memory_falls_as_one_over_d(model, D):
    P = load_model(model).total_params
    static = _static(build_graph(Point("fsdp", "h100-dgx-1node", model=model, seq_len=1024, gpus=D))[0])
    assert static["parameters"] == int(P * S / D)
    assert static["gradients"] == int(P * S_GRAD / D)
    assert static["optimizer_state"] == int(P * OPT / D)


def test_zero3_peak_holds_the_gathered_units(model):
    cfg = load_model(model)
    e = _run(model).entry
    static_gb = (cfg.total_params * (S + S_GRAD + OPT) / 8) / 1e9 + 4.0     # + the runtime reserve
    gathered = e["memory_breakdown_gb"]["comm_buffers"]
    assert gathered >= cfg.layer_params * S / 1e9                          # at least one whole block in flight
    assert e["peak_memory_gb"] >= static_gb + gathered - 1e-9


@pytest.mark.parametrize("zero", [1, 2])
def test_zero1_and_2_bytes_and_memory(model, zero):
    """ZeRO-1: gradients reduce-scattered once, parameters all-gathered after the optimizer; ZeRO-2 the same
    bytes with one micro-batch, its gradients sharded in memory."""
    P, D = load_model(model).total_params, 8
    res = _run(model, schedule="tp", degree=1, options=(("zero", zero),))
    tl = res.timeline
    assert _bytes_by_stream(tl, "dp", "reduce_scatter") == pytest.approx(P * (D - 1) / D * S_GRAD, rel=1e-12)
    assert _bytes_by_stream(tl, "dp", "all_gather") == pytest.approx(P * (D - 1) / D * S, rel=1e-12)
    static = _static(tl.graph)
    assert static["optimizer_state"] == int(P * OPT / D)
    assert static["gradients"] == int(P * S_GRAD / (D if zero == 2 else 1))
    assert static["parameters"] == int(P * S)


def test_zero2_reduces_every_micro_batch_zero1_once(model):
    P, D, m = load_model(model).total_params, 8, 3
    pipe = PipelineSpec(global_batch=8 * m)
    one = _run(model, schedule="tp", degree=1, options=(("zero", 1),), pipeline=pipe).timeline
    two = _run(model, schedule="tp", degree=1, options=(("zero", 2),), pipeline=pipe).timeline
    assert _bytes_by_stream(one, "dp", "reduce_scatter") == pytest.approx(P * (D - 1) / D * S_GRAD, rel=1e-12)
    assert _bytes_by_stream(two, "dp", "reduce_scatter") == pytest.approx(m * P * (D - 1) / D * S_GRAD, rel=1e-12)


def test_hsdp_shards_inside_groups_and_all_reduces_across(model):
    """hsdp=4 on 8 GPUs: gradients reduce-scattered inside each group of 4 ((3/4)·P·s_grad), the shard all-reduced
    across the 2 groups (2·(1/2)·P·s_grad/4); parameters gathered inside the group; state 1/4 per rank."""
    P = load_model(model).total_params
    res = _run(model, options=(("hsdp", 4),))
    tl = res.timeline
    assert _bytes_by_stream(tl, "dp", "reduce_scatter") == pytest.approx(P * 3 / 4 * S_GRAD, rel=1e-12)
    assert _bytes_by_stream(tl, "dp", "all_reduce") == pytest.approx(P * S_GRAD / 4, rel=1e-12)
    assert _bytes_by_stream(tl, "fsdp", "all_gather") == pytest.approx(2 * P * 3 / 4 * S, rel=1e-12)
    assert _static(tl.graph)["parameters"] == int(P * S / 4)


def test_fsdp_entry_labels_and_degrees(model):
    e = _run(model).entry
    assert e["schedule"] == "fsdp" and e["degrees"] == {"DP": 8} and e["assumptions"]["zero"] == 3


def test_zero3_composes_with_tp_and_pipelines(model):
    """ZeRO-3 over the data-parallel replicas of a TP × PP layout: each stage gathers its own blocks."""
    e = _run(model, schedule="tp", degree=2, options=(("zero", 3),),
             pipeline=PipelineSpec(stages=2, global_batch=8)).entry
    assert e["degrees"] == {"D": 2, "PP": 2, "DP": 2}
    assert e["comm_bytes_per_rank"]["all_gather"] > 0 and not e["oom"]


# ------------------------------------------------------------------------------------------ the Σ fix
def test_sp_reduces_gradients_over_its_sequence_shards(model):
    """sp replicates every weight over its D sequence shards: on one node (no DP) the gradients are all-reduced
    over the D ranks, 2(D−1)/D · P · s_grad per rank (before the fix: nothing)."""
    P, D = load_model(model).total_params, 8
    tl = _run(model, schedule="sp", degree=8, topo="dgx-a100-1node").timeline   # no NVLS: ring all-reduces
    assert _bytes_by_stream(tl, "dp", "all_reduce") == pytest.approx(2 * (D - 1) / D * P * S_GRAD, rel=1e-12)


@pytest.mark.parametrize(("T", "sig", "gpus"), [(4, 2, 8), (2, 4, 8), (2, 2, 8)])
def test_tp_sp_gradient_group_is_sigma_times_dp(model, T, sig, gpus):
    """tp+sp: the ranks of one TP index hold the same weight shard in every Σ shard and replica, so its gradient
    group is Σ × DP: 2(n−1)/n · (its shard) · s_grad per rank, n = Σ·DP."""
    res = _run(model, schedule="tp+sp", tp=T, sp=sig, gpus=gpus, topo="dgx-a100-1node")
    n = sig * res.layout.replicas
    shard = load_model(model).params_per_rank(T)
    got = _bytes_by_stream(res.timeline, "dp", "all_reduce")
    assert got == pytest.approx(2 * (n - 1) / n * shard * S_GRAD, rel=1e-12)
    assert len(res.layout.grad_group(0)) == n


def test_tsp_gradients_stay_with_their_owners(model):
    tl = _run(model, schedule="tsp", degree=8).timeline
    assert not any(op.stream == "dp" for op in tl.ops)


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(("kw", "words"), [
    ({"schedule": "tsp", "degree": 8, "options": (("zero", 3),)}, "does not compose with tsp"),
    ({"schedule": "fsdp", "degree": 2}, "pure FSDP"),
    ({"schedule": "fsdp", "options": (("zero", 1),)}, "fsdp is ZeRO-3"),
    ({"schedule": "fsdp", "options": (("hsdp", 3),)}, "hsdp=3"),
    ({"schedule": "tp", "degree": 1, "options": (("hsdp", 4),)}, "needs --zero"),
    ({"schedule": "tp", "degree": 1, "options": (("zero", 4),)}, "zero=4"),
])
def test_bad_zero_options_are_one_line(model, kw, words):
    with pytest.raises(ConfigError, match=words) as exc:
        build_graph(Point(kw.pop("schedule"), "h100-dgx-1node", model=model, seq_len=1024, gpus=8, **kw))
    assert "\n" not in str(exc.value)


def test_zero1_option_is_an_alias():
    from tspsim.spec.assumptions import Assumptions, parse_option_pairs

    assert Assumptions.from_overrides({"zero1": "true"}).zero == 1
    assert Assumptions.from_overrides({"zero1": False}).zero == 0
    assert dict(parse_option_pairs(["zero1=true"], zero=1))["zero"] == 1
    with pytest.raises(ConfigError, match="contradicts"):
        parse_option_pairs(["zero=2"], zero=3)
    with pytest.raises(ConfigError, match="contradicts"):
        Assumptions.from_overrides({"zero1": "true", "zero": 2})


def test_fsdp_refuses_serving_modes_in_one_line() -> None:
    """fsdp in prefill/decode/generate is a clear ConfigError (it once raised a ValueError deep in the builder)."""
    from tspsim.simulate.point import resolve

    for mode in ("prefill", "decode", "generate"):
        with pytest.raises(ConfigError, match="fsdp is a training layout"):
            resolve(Point("fsdp", "mi300x-1node", model="llama3-8b", mode=mode, seq_len=4096, degree=1))


def test_stack_fsdp_default_gives_tsp_zero2_but_an_explicit_zero3_is_refused() -> None:
    """torchtitan's ``zero: 3`` default applies where FSDP composes; TSP takes ZeRO-2; ``--zero 3`` stays an error."""
    from tspsim.simulate.point import resolve

    base = {"model": "llama3-8b", "mode": "train", "seq_len": 4096, "degree": 8, "gpus": 8}
    assert resolve(Point("tsp", "mi300x-1node", options=(("stack", "torchtitan"),), **base))[4].zero == 2
    assert resolve(Point("tp", "mi300x-1node", options=(("stack", "torchtitan"),), **base))[4].zero == 3
    with pytest.raises(ConfigError, match="does not compose with tsp"):
        resolve(Point("tsp", "mi300x-1node", options=(("stack", "torchtitan"), ("zero", 3)), **base))

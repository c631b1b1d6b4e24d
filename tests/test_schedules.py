"""Schedules against the reference formulas: per-layer communication volumes, FLOP conservation, bad plans.

Volumes are exact (reference/tensor-parallelism-analysis.md per-layer table; tsp.md §5): the bytes a rank
sends for the ops of decoder block 0's forward pass, grouped by collective kind, must equal the
analytical per-rank volume for every (schedule, degree, sequence, batch, GQA ratio) tried. Shapes are
chosen so no collective of block 0 falls under the topology's small-message threshold, where a one-shot
all-reduce would send (p−1)·N per rank instead of the bandwidth-optimal 2(p−1)/p·N.
"""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from tspsim.core.errors import ConfigError
from tspsim.simulate import Point, build_graph, simulate
from tspsim.spec.layout import make_layout
from tspsim.spec.model import load_model
from tspsim.spec.topology_file import load_topology
from tspsim.spec.workload import Workload

S_BYTES = 2  # bf16

# ------------------------------------------------------------------------------------------ models
# Small SwiGLU models (hidden 512–1024, 2 layers). q_heads·head_dim = hidden in all of them, as tsp.md §5
# assumes. "gqa4" has g = 4 with 8 KV heads so that D = 8 still divides the KV heads.
MODELS = {
    "mha": {"hidden": 1024, "q_heads": 16, "kv_heads": 16, "head_dim": 64, "ffn_hidden": 4096},
    "gqa4": {"hidden": 1024, "q_heads": 32, "kv_heads": 8, "head_dim": 32, "ffn_hidden": 4096},
    "mha512": {"hidden": 512, "q_heads": 8, "kv_heads": 8, "head_dim": 64, "ffn_hidden": 2048},
    "gqa2-512": {"hidden": 512, "q_heads": 16, "kv_heads": 8, "head_dim": 32, "ffn_hidden": 1536},
}


@pytest.fixture(scope="module")
def models(model_yaml) -> dict[str, str]:
    """Model name → YAML path."""
    return {name: model_yaml(f"vol-{name}", **fields) for name, fields in MODELS.items()}


# ------------------------------------------------------------------------------------------ helpers
def layer0_forward_volumes(tl) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Per-rank bytes sent by the forward ops of block 0 (no recompute), by kind.

    Returns (mean over simulated ranks, sorted distinct per-rank values) per kind. Ops whose name
    contains ``input_all_gather`` are counted under the key ``input_all_gather``; ``recv`` ops send
    nothing and are left out.
    """
    per: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for op in tl.ops:
        if not op.is_comm or op.kind == "recv":
            continue
        if op.layer != 0 or op.phase != "fwd" or "recompute" in op.name:
            continue
        key = "input_all_gather" if "input_all_gather" in op.name else op.kind
        per[op.rank][key] += tl.op_sent_bytes[op.id]
    ranks = tl.graph.ranks
    kinds = sorted({k for d in per.values() for k in d})
    mean = {k: sum(per[r][k] for r in ranks) / len(ranks) for k in kinds}
    distinct = {k: sorted({per[r][k] for r in ranks}) for k in kinds}
    return mean, distinct


def expected_volumes(schedule: str, cfg: dict, *, B: int, S: int, D: int = 0, T: int = 0, SIG: int = 0,
                     satp_attention: str = "gather-kv") -> dict[str, float]:
    """Reference per-rank forward bytes of one decoder block (formulas of the module docstring)."""
    h = cfg["hidden"]
    g = cfg["q_heads"] / cfg["kv_heads"]
    h_kv = cfg["kv_heads"] * cfg["head_dim"]
    s = S_BYTES
    if schedule == "tp":
        return {"all_reduce": 2 * 2 * (D - 1) / D * B * S * h * s}
    if schedule in ("satp-seq", "satp-batch"):
        out = {"reduce_scatter": 2 * (D - 1) / D * B * S * h * s,
               "input_all_gather": 2 * (D - 1) / D * B * S * h * s}
        if schedule == "satp-seq" and satp_attention == "gather-kv":
            out["all_gather"] = 2 * (D - 1) / D * B * S * h_kv * s  # AllGather(K, V): M_KV each
        return out
    if schedule == "tsp":
        w_layer = (2 + 2 / g) * h * h + 3 * cfg["ffn_hidden"] * h  # 3F·h² with F·h = ffn_hidden
        return {"weights": (D - 1) / D * w_layer * s, "all_gather": (D - 1) / D * 2 * B * S * h / g * s}
    if schedule == "sp":
        return {"all_gather": (D - 1) / D * 2 * B * S * (h / g) * s}
    if schedule == "tp+sp":
        return {"all_reduce": 4 * (T - 1) / T * B * (S / SIG) * h * s,
                "all_gather": 2 * (SIG - 1) / SIG * B * S * (h / T) / g * s}
    raise AssertionError(schedule)


def _check_volumes(point: Point, cfg: dict, expected: dict[str, float], topo_name_or_path: str) -> None:
    res = simulate(point)
    tl = res.timeline
    topo = load_topology(topo_name_or_path)
    # Precondition: every TP all-reduce of block 0 is large enough for a bandwidth-optimal algorithm.
    for op in tl.ops:
        if op.layer == 0 and op.kind == "all_reduce":
            assert op.nbytes > topo.intra.direct_max_bytes, "shape too small: one-shot all-reduce would be chosen"
    mean, distinct = layer0_forward_volumes(tl)
    got = dict(mean)
    if point.schedule == "tsp":
        # weight movement = attention broadcasts + MLP ring sends; the K/V part is the all-gather
        got["weights"] = got.pop("broadcast", 0.0) + got.pop("send", 0.0)
    assert set(got) == set(expected), f"kinds {sorted(got)} != expected {sorted(expected)}"
    for kind, value in expected.items():
        assert got[kind] == pytest.approx(value, rel=1e-9), kind
    # Ring / direct / hierarchical RS, AG, AR and the TSP broadcast loop (every rank is root once) and
    # ring p2p are symmetric: every simulated rank sends exactly the same bytes.
    for kind, values in distinct.items():
        assert values[-1] == pytest.approx(values[0], rel=1e-12), f"{kind}: ranks differ {values}"


# ------------------------------------------------------------------------------------------ volumes
# (schedule, model, D, S, B); mi300x-1node, D ≤ 8
SINGLE_NODE_CASES = [
    ("tp", "mha", 8, 4096, 1), ("tp", "gqa4", 4, 8192, 2), ("tp", "mha512", 2, 8192, 1),
    ("satp-seq", "mha", 8, 8192, 1), ("satp-seq", "gqa4", 4, 4096, 2), ("satp-seq", "mha512", 2, 16384, 1),
    ("satp-batch", "mha", 4, 4096, 4), ("satp-batch", "gqa4", 2, 8192, 2), ("satp-batch", "mha512", 8, 4096, 8),
    ("tsp", "mha", 8, 8192, 1), ("tsp", "gqa4", 8, 16384, 2), ("tsp", "mha", 4, 4096, 1),
    ("tsp", "gqa2-512", 2, 8192, 1), ("tsp", "mha512", 8, 32768, 1),
    ("sp", "mha", 8, 8192, 1), ("sp", "gqa4", 4, 16384, 2), ("sp", "gqa2-512", 2, 4096, 1),
]


@pytest.mark.parametrize(("schedule", "model", "D", "S", "B"), SINGLE_NODE_CASES)
def test_forward_volume_single_node(models, schedule, model, D, S, B):
    cfg = MODELS[model]
    point = Point(schedule, "mi300x-1node", model=models[model], mode="forward", seq_len=S, batch=B, degree=D)
    _check_volumes(point, cfg, expected_volumes(schedule, cfg, B=B, S=S, D=D), "mi300x-1node")


@pytest.mark.parametrize(("D", "model"), [(8, "mha"), (4, "gqa4"), (2, "mha512")])
def test_satp_seq_gather_input_has_no_kv_all_gather(models, D, model):
    cfg = MODELS[model]
    S, B = 8192, 1
    point = Point("satp-seq", "mi300x-1node", model=models[model], mode="forward", seq_len=S, batch=B, degree=D,
                  options=(("satp_seq_attention", "gather-input"),))
    exp = expected_volumes("satp-seq", cfg, B=B, S=S, D=D, satp_attention="gather-input")
    assert "all_gather" not in exp
    _check_volumes(point, cfg, exp, "mi300x-1node")


@pytest.mark.parametrize(("schedule", "model", "D", "S", "B"), [
    ("tp", "gqa4", 8, 8192, 1), ("satp-seq", "mha", 4, 8192, 1), ("satp-batch", "mha", 4, 4096, 4),
    ("tsp", "gqa4", 8, 8192, 1), ("tsp", "mha", 4, 8192, 2), ("sp", "mha", 8, 8192, 1),
])
def test_forward_volume_unchanged_in_training(models, schedule, model, D, S, B):
    """Block 0's forward ops of a training step (recompute ops excluded) move the same bytes."""
    cfg = MODELS[model]
    point = Point(schedule, "mi300x-1node", model=models[model], mode="train", seq_len=S, batch=B, degree=D)
    _check_volumes(point, cfg, expected_volumes(schedule, cfg, B=B, S=S, D=D), "mi300x-1node")


@pytest.mark.parametrize(("T", "SIG", "model", "S", "B"), [(2, 4, "mha", 8192, 1), (4, 2, "gqa4", 8192, 2)])
@pytest.mark.parametrize("mode", ["forward", "train"])
def test_forward_volume_tp_sp_single_node(models, T, SIG, model, S, B, mode):
    cfg = MODELS[model]
    point = Point("tp+sp", "mi300x-1node", model=models[model], mode=mode, seq_len=S, batch=B, tp=T, sp=SIG)
    _check_volumes(point, cfg, expected_volumes("tp+sp", cfg, B=B, S=S, T=T, SIG=SIG), "mi300x-1node")


@pytest.mark.parametrize(("T", "SIG", "model", "S", "B", "mode"), [
    (8, 2, "mha", 8192, 1, "forward"),      # 16-GPU replica over 2 nodes, 2 replicas; Σ ring over the NICs
    (8, 2, "gqa4", 16384, 1, "train"),
    (4, 4, "mha", 8192, 2, "forward"),      # Σ group has 2 ranks per node: hierarchical all-gather
    (8, 4, "gqa4", 8192, 1, "forward"),     # one 32-GPU replica over all 4 nodes
    (2, 8, "mha", 16384, 1, "forward"),
])
def test_forward_volume_tp_sp_across_nodes(models, mi300x_4node_yaml, T, SIG, model, S, B, mode):
    cfg = MODELS[model]
    point = Point("tp+sp", mi300x_4node_yaml, model=models[model], mode=mode, seq_len=S, batch=B, tp=T, sp=SIG)
    _check_volumes(point, cfg, expected_volumes("tp+sp", cfg, B=B, S=S, T=T, SIG=SIG), mi300x_4node_yaml)


def test_tsp_volume_example_of_tsp_md():
    """tsp.md §5 worked example: h=4096, D=8, B=1, bf16, 128K: weights 470 MB, K/V 1.88 GB, TP 3.76 GB."""
    cfg = {"hidden": 4096, "q_heads": 32, "kv_heads": 32, "head_dim": 128, "ffn_hidden": 16384}
    tsp = expected_volumes("tsp", cfg, B=1, S=131072, D=8)
    tp = expected_volumes("tp", cfg, B=1, S=131072, D=8)
    assert tsp["weights"] / 1e6 == pytest.approx(470, abs=1)
    assert tsp["all_gather"] / 1e9 == pytest.approx(1.88, abs=0.005)
    assert tp["all_reduce"] / 1e9 == pytest.approx(3.76, abs=0.005)


# ------------------------------------------------------------------------------------------ FLOPs
COMPUTE_CASES = [
    ("tp", {"degree": 8}), ("tp", {"degree": 4}),
    ("satp-seq", {"degree": 4}), ("satp-seq", {"degree": 8, "options": (("satp_seq_attention", "gather-input"),)}),
    ("satp-batch", {"degree": 4, "batch": 4}),
    ("sp", {"degree": 8}), ("sp", {"degree": 2}),
    ("tp+sp", {"tp": 2, "sp": 4}), ("tp+sp", {"tp": 4, "sp": 2}),
    ("tsp", {"degree": 8}), ("tsp", {"degree": 2}),
]


def _flops_by_rank(graph, pred) -> dict[int, float]:
    out: dict[int, float] = defaultdict(float)
    for op in graph.ops:
        if pred(op):
            out[op.rank] += op.flops
    return out


def _case_point(models, schedule: str, kw: dict, model: str, mode: str, S: int = 8192, **extra) -> Point:
    kw = dict(kw)
    batch = kw.pop("batch", 2)
    opts = tuple(kw.pop("options", ())) + tuple(extra.pop("options", ()))
    return Point(schedule, "mi300x-1node", model=models[model], mode=mode, seq_len=S, batch=batch, options=opts,
                 **kw, **extra)


@pytest.mark.parametrize(("schedule", "kw"), COMPUTE_CASES)
@pytest.mark.parametrize("model", ["mha", "gqa4"])
def test_layer_forward_flops_conserved(models, schedule, kw, model):
    point = _case_point(models, schedule, kw, model, "forward")
    graph, _topo, mcfg, layout, wl, _ = build_graph(point)
    replica = set(layout.replica_ranks(0))
    assert replica <= set(graph.ranks)
    B, S = wl.batch, wl.seq_len
    gemm_ref = 2.0 * B * S * (mcfg.attn_params + mcfg.mlp_params)
    attn_ref = mcfg.layer_fwd_flops(B, S) - gemm_ref

    def fwd(kind):
        return lambda op: op.layer == 0 and op.phase == "fwd" and "recompute" not in op.name and op.kind == kind

    gemm = _flops_by_rank(graph, fwd("gemm"))
    attn = _flops_by_rank(graph, fwd("attention_fwd"))
    assert sum(gemm[r] for r in replica) == pytest.approx(gemm_ref, rel=1e-9)
    assert sum(attn[r] for r in replica) == pytest.approx(attn_ref, rel=1e-9)
    assert sum(gemm[r] + attn[r] for r in replica) == pytest.approx(mcfg.layer_fwd_flops(B, S), rel=1e-9)
    if schedule in ("tsp", "tp"):
        for r in replica:
            assert gemm[r] + attn[r] == pytest.approx(mcfg.layer_fwd_flops(B, S) / len(replica), rel=1e-9)


@pytest.mark.parametrize(("schedule", "kw"), COMPUTE_CASES)
@pytest.mark.parametrize("recompute", ["full", "none"])
def test_training_step_flops(models, schedule, kw, recompute):
    """Whole step: backward GEMMs 2× forward, attention backward 2.5×; full recompute adds one forward."""
    point = _case_point(models, schedule, kw, "gqa4", "train", options=(("recompute", recompute),))
    graph, _topo, mcfg, layout, wl, _ = build_graph(point)
    replica = set(layout.replica_ranks(0))
    B, S = wl.batch, wl.seq_len
    gemm_fwd = 2.0 * B * S * (mcfg.attn_params + mcfg.mlp_params)
    attn_fwd = mcfg.layer_fwd_flops(B, S) - gemm_fwd
    rec = 1 if recompute == "full" else 0
    for layer in range(mcfg.layers):
        ops = [op for op in graph.ops if op.layer == layer and op.rank in replica]
        bwd = [op for op in ops if op.phase == "bwd" and "recompute" not in op.name]
        recomputed = [op for op in ops if "recompute" in op.name]
        assert sum(op.flops for op in bwd if op.kind == "gemm") == pytest.approx(2 * gemm_fwd, rel=1e-9)
        assert sum(op.flops for op in bwd if op.kind == "attention_bwd") == pytest.approx(2.5 * attn_fwd, rel=1e-9)
        assert sum(op.flops for op in recomputed if op.kind == "gemm") == pytest.approx(rec * gemm_fwd, rel=1e-9)
        assert sum(op.flops for op in recomputed if op.kind == "attention_fwd") == pytest.approx(rec * attn_fwd,
                                                                                               rel=1e-9)
        total = sum(op.flops for op in ops if op.kind in ("gemm", "attention_fwd", "attention_bwd"))
        assert total == pytest.approx((3 + rec) * gemm_fwd + (3.5 + rec) * attn_fwd, rel=1e-9)
    head = sum(op.flops for op in graph.ops if op.rank in replica and op.name.startswith("head.logits"))
    head_bwd = sum(op.flops for op in graph.ops if op.rank in replica and op.name.startswith("bwd.head.logits"))
    assert head == pytest.approx(2.0 * B * S * mcfg.vocab * mcfg.hidden, rel=1e-9)
    assert head_bwd == pytest.approx(2 * head, rel=1e-9)


# ------------------------------------------------------------------------------------------ bad plans
def _one_line_with_fix(exc: ConfigError) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg.strip() == msg and msg
    assert re.search(r"\b(use|choose)\b", msg), f"message does not name the fix: {msg}"
    return msg


@pytest.fixture(scope="module")
def zyphra():
    return load_model("zyphra-7b")


@pytest.mark.parametrize("schedule", ["tp", "tsp", "satp-seq", "satp-batch"])
def test_degree_must_divide_heads(mi300x, zyphra, schedule):
    with pytest.raises(ConfigError) as err:
        make_layout(schedule, mi300x, zyphra, Workload("train", 131072, 3), degree=3)
    msg = _one_line_with_fix(err.value)
    assert "3" in msg and "32" in msg and "heads" in msg


def test_tp_sp_degree_must_divide_heads(mi300x, zyphra):
    with pytest.raises(ConfigError) as err:
        make_layout("tp+sp", mi300x, zyphra, Workload("train", 131072, 1), tp=3, sp=2)
    _one_line_with_fix(err.value)


@pytest.mark.parametrize(("schedule", "D"), [("tsp", 8), ("sp", 8), ("tsp", 4), ("sp", 2)])
def test_sequence_must_divide_into_2D_chunks(mi300x, zyphra, schedule, D):
    seq = 2 * D * 1000 + D  # divisible by D but not by 2D
    assert seq % D == 0 and seq % (2 * D)
    with pytest.raises(ConfigError) as err:
        make_layout(schedule, mi300x, zyphra, Workload("train", seq, 1), degree=D)
    msg = _one_line_with_fix(err.value)
    assert str(2 * D) in msg
    make_layout(schedule, mi300x, zyphra, Workload("train", seq - D, 1), degree=D)  # the multiple of 2D is fine


def test_satp_batch_needs_batch_multiple_of_D(mi300x, zyphra):
    with pytest.raises(ConfigError) as err:
        make_layout("satp-batch", mi300x, zyphra, Workload("train", 8192, 3), degree=4)
    msg = _one_line_with_fix(err.value)
    assert "--batch 4" in msg
    make_layout("satp-batch", mi300x, zyphra, Workload("train", 8192, 8), degree=4)


@pytest.mark.parametrize(("schedule", "kw"), [("tsp", {"degree": 16}), ("tp", {"degree": 16}),
                                              ("sp", {"degree": 16}), ("tp+sp", {"tp": 8, "sp": 2})])
def test_replica_larger_than_topology(mi300x, zyphra, schedule, kw):
    with pytest.raises(ConfigError) as err:
        make_layout(schedule, mi300x, zyphra, Workload("train", 131072, 1), **kw)
    msg = _one_line_with_fix(err.value)
    assert "16" in msg


def test_valid_plans_resolve(mi300x, mi300x_128, zyphra):
    wl = Workload("train", 131072, 1)
    p = make_layout("tsp", mi300x, zyphra, wl)
    assert (p.tp, p.sp, p.replica_size, p.replicas) == (8, 8, 8, 1)
    p = make_layout("tp+sp", mi300x_128, zyphra, wl, tp=8, sp=2)
    assert (p.replica_size, p.replicas, p.degrees) == (16, 64, {"T": 8, "SP": 2, "DP": 64})
    p = make_layout("tp", mi300x, zyphra, wl, degree=4)
    assert p.replicas == 2 and p.dp_group(1) == (1, 5)


# ------------------------------------------------------------------------------------------ options
def _layer0_fwd_gathers(tl) -> tuple[int, float]:
    """(number of K/V all-gather ops on rank 0, mean bytes sent by them per rank) in block 0's forward."""
    ops = [op for op in tl.ops if op.kind == "all_gather" and op.layer == 0 and op.phase == "fwd"
           and "kv_all_gather" in op.name]
    count = sum(1 for op in ops if op.rank == 0)
    return count, sum(tl.op_sent_bytes[op.id] for op in ops) / len(tl.graph.ranks)


@pytest.mark.parametrize(("schedule", "D", "options", "gathers_per_shard"), [
    ("tsp", 8, (), 1),
    ("tsp", 4, (("kv_buckets", 2),), 2),
    ("tsp", 8, (("kv_buckets", 4),), 4),
    ("tsp", 8, (("pack_kv", False),), 2),
    ("sp", 8, (("pack_kv", False),), 2),
    ("sp", 4, (), 1),
])
def test_kv_gather_options(models, schedule, D, options, gathers_per_shard):
    """Head bucketing and K/V packing change the number of gathers, never the bytes (tsp.md §2, §8.4)."""
    cfg = MODELS["gqa4"]
    S = 16384
    res = simulate(Point(schedule, "mi300x-1node", model=models["gqa4"], mode="forward", seq_len=S, degree=D,
                         options=options))
    count, sent = _layer0_fwd_gathers(res.timeline)
    shards = D if schedule == "tsp" else 1
    assert count == shards * gathers_per_shard
    assert sent == pytest.approx(expected_volumes(schedule, cfg, B=1, S=S, D=D)["all_gather"], rel=1e-9)


@pytest.mark.parametrize("weight_buffers", [
    1, 2, 3,
])
@pytest.mark.parametrize("mode", ["forward", "train"])
def test_tsp_weight_buffers_accepted_values_run(models, weight_buffers, mode):
    """Every value the option validator accepts must simulate (or be rejected with a ConfigError)."""
    point = Point("tsp", "mi300x-1node", model=models["mha512"], mode=mode, seq_len=8192, degree=4,
                  options=(("weight_buffers", weight_buffers),))
    try:
        res = simulate(point)
    except ConfigError:
        return
    mean, _ = layer0_forward_volumes(res.timeline)
    weights = mean.get("broadcast", 0.0) + mean.get("send", 0.0)
    assert weights == pytest.approx(expected_volumes("tsp", MODELS["mha512"], B=1, S=8192, D=4)["weights"], rel=1e-9)

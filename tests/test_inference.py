"""Inference (issue 6): prefill and decode with a KV cache, against reference/tensor-parallelism-analysis.md.

(a) memory: residual stream per GPU (classic TP B·T·H·s, sharded B·T·H·s/p), decode activation B·H·s,
    KV cache per GPU per block 2·B·T·H_kv·s/p and 2·L·B·T·H_kv·s over the group — read from the
    simulated memory timeline; (b) per-layer communication of prefill and decode, exact per rank;
    (c) decode is bound by HBM (weights + KV), prefill by FLOPs; (d) max_batch is the largest batch
    that fits; (e) end to end; plus the exactness of the periodic assembly of decode steps.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import pytest

from tspsim.analysis.metrics import peak_memory
from tspsim.analysis.serving import BREAKDOWN_KEYS
from tspsim.core.errors import ConfigError
from tspsim.engine.costs import efficiency
from tspsim.engine.sim import replay
from tspsim.explore.max_batch import max_batch, search_max_batch, simulate_with_max_batch
from tspsim.schedules.context import BuildContext
from tspsim.schedules.decode import build_decode_step
from tspsim.schedules.inference import kv_layout, seq_share
from tspsim.schedules.periodic import verify_cuts, verify_periodic_structure, with_layers
from tspsim.schedules.prefill import build_prefill
from tspsim.simulate import Point, RunResult, simulate
from tspsim.simulate.decode_timer import DecodeTimer, context_steps, decode_topology, find_period
from tspsim.simulate.inference import simulate_inference
from tspsim.spec.assumptions import Assumptions
from tspsim.spec.layout import make_layout
from tspsim.spec.model import ModelConfig, load_model
from tspsim.spec.workload import Workload

S = 2  # bf16 bytes per element

MHA = ModelConfig("inf-mha", hidden=512, layers=3, q_heads=8, kv_heads=8, head_dim=64, ffn_hidden=2048,
                  gated_mlp=True, vocab=4096)
GQA = ModelConfig("inf-gqa", hidden=1024, layers=2, q_heads=16, kv_heads=8, head_dim=64, ffn_hidden=4096,
                  gated_mlp=True, vocab=4096)
DEEP = ModelConfig("inf-deep", hidden=512, layers=11, q_heads=8, kv_heads=8, head_dim=64, ffn_hidden=1536,
                   gated_mlp=True, vocab=4096)

# schedule, plan keywords, size of the group the KV cache is spread over, residual sharding of prefill
LAYOUTS = [
    ("tp", {"degree": 4}, 4, 1),
    ("tp", {"degree": 8}, 8, 1),
    ("satp-batch", {"degree": 4}, 4, 4),
    ("satp-seq", {"degree": 2}, 2, 2),
    ("sp", {"degree": 8}, 8, 8),
    ("tp+sp", {"tp": 4, "sp": 2}, 8, 2),
    ("tsp", {"degree": 4}, 4, 4),
]


def _ctx(topo, model, schedule, kw, workload, **options):
    plan = make_layout(schedule, topo, model, workload, **kw)
    return BuildContext(model, topo, plan, workload, Assumptions.from_overrides(options))


def _final(tl, rank: int) -> tuple[dict[str, int], dict[str, int]]:
    """(final, maximum) bytes per memory category of ``rank``."""
    cur: dict[str, int] = defaultdict(int)
    top: dict[str, int] = defaultdict(int)
    for _, cat, delta in tl.memory[rank]:
        cur[cat] += delta
        top[cat] = max(top[cat], cur[cat])
    return cur, top


# ------------------------------------------------------------------------------------------ (a) memory
@pytest.mark.parametrize("model", [MHA, GQA], ids=["mha", "gqa"])
@pytest.mark.parametrize("B,T", [(1, 512), (3, 1024)])
@pytest.mark.parametrize("schedule,kw,p,shard", LAYOUTS, ids=[f"{s}-{p}" for s, _, p, _ in LAYOUTS])
def test_prefill_memory_tables(mi300x, model, B, T, schedule, kw, p, shard):
    if schedule == "satp-batch" and B % p:
        B = p
    tl = replay(build_prefill(_ctx(mi300x, model, schedule, kw, Workload("prefill", T, B))), mi300x)
    H, H_kv, L = model.hidden, model.kv_dim, model.layers
    group = tl.graph.ranks
    total_kv = 0
    for r in group:
        final, top = _final(tl, r)
        # residual-stream activation per GPU: classic TP B·T·H·s, sharded B·T·H·s/p
        assert top["activations"] == B * T * H * S // shard
        assert final["activations"] == 0
        per_block = final["kv_cache"] / L
        total_kv += final["kv_cache"]
        # KV cache per GPU per block: 2·B·T·H_kv·s/p (the table's value; every schedule spreads it evenly)
        assert per_block == 2 * B * T * H_kv * S / p
    assert len(group) == p
    assert total_kv == 2 * L * B * T * H_kv * S          # Mem_KV,total over the group


@pytest.mark.parametrize("schedule,kw,p,shard", LAYOUTS, ids=[f"{s}-{p}" for s, _, p, _ in LAYOUTS])
@pytest.mark.parametrize("B,T", [(4, 1000), (8, 4096)])
def test_decode_memory_tables(mi300x, schedule, kw, p, shard, B, T):
    model = GQA
    ctx = _ctx(mi300x, model, schedule, kw, Workload("decode", T, B, 1))
    step = build_decode_step(ctx, T)
    tl = replay(step.graph, decode_topology(mi300x, ctx.opts))
    lay = kv_layout(schedule, model.kv_dim, ctx.layout, ctx.opts.satp_batch_kv)
    H, H_kv, L = model.hidden, model.kv_dim, model.layers
    total = 0
    for r in tl.graph.ranks:
        final, top = _final(tl, r)
        # decode activation B·H·s (the step's B tokens; sharded B/p for sharded-activation TP)
        residual = B * H * S // (p if schedule.startswith("satp") else 1)
        assert top["activations"] == residual
        # the cache grows from T to T+1 tokens during the step, block by block
        kv = [c for _, c, _ in tl.memory[r] if c == "kv_cache"]
        assert len(kv) >= 1
        assert final["kv_cache"] == L * 2 * (B // lay.batch_shards) * lay.tokens(r, T + 1) * lay.kv_width * S
        total += final["kv_cache"]
        if lay.seq_shards == 1:   # head-sharded: every rank 2·B·(T+1)·H_kv·s/p per block
            assert final["kv_cache"] == L * 2 * B * (T + 1) * H_kv * S // p
    assert total == 2 * L * B * (T + 1) * H_kv * S


def test_seq_share_matches_zigzag_counts():
    for shards in (2, 4, 8):
        for T in (2 * shards * 3, 2 * shards * 64):
            chunk = T // (2 * shards)
            for p in range(shards):   # zig-zag: chunks p and 2·shards−1−p
                assert seq_share(T, shards, p) == 2 * chunk
        assert sum(seq_share(1001, shards, p) for p in range(shards)) == 1001


# ------------------------------------------------------------------------------------------ (b) communication
def _layer0_bytes(tl) -> dict[str, float]:
    """Mean per-rank bytes sent by block 0's ops, by kind; input and K/V all-gathers on their own keys."""
    per: dict[str, float] = defaultdict(float)
    for op_id, sent in tl.op_sent_bytes.items():
        op = tl.ops[op_id]
        if op.layer != 0 or op.kind == "recv":
            continue
        key = op.kind
        for tag in ("input_all_gather", "kv_all_gather", "lse_all_gather", "qkv_all_gather", "qkv_all_to_all",
                    "out_all_to_all", "kv_cache_all_to_all"):
            if tag in op.name:
                key = tag
        per[key] += sent
    n = len(tl.graph.ranks)
    return {k: v / n for k, v in per.items()}


def _run(topo, model, schedule, kw, mode, T, B, **options):
    ctx = _ctx(topo, model, schedule, kw, Workload(mode, T, B, 1), **options)
    if mode == "prefill":
        return replay(build_prefill(ctx), topo)
    return replay(build_decode_step(ctx, T).graph, decode_topology(topo, ctx.opts))


# M_H = B·T_q·H elements; B·T_q·H·s > 1 MiB so the all-reduce is bandwidth-optimal (not one-shot)
@pytest.mark.parametrize("mode,T,B", [("decode", 4096, 1024), ("prefill", 2048, 2)])
@pytest.mark.parametrize("p", [2, 4, 8])
def test_tp_all_reduce_volume(mi300x, mode, T, B, p):
    tl = _run(mi300x, GQA, "tp", {"degree": p}, mode, T, B)
    M_H = B * (1 if mode == "decode" else T) * GQA.hidden
    got = _layer0_bytes(tl)
    assert got == {"all_reduce": pytest.approx(2 * 2 * (p - 1) / p * M_H * S, rel=1e-12)}


@pytest.mark.parametrize("mode,T,B", [("decode", 4096, 64), ("prefill", 1024, 8)])
@pytest.mark.parametrize("schedule,p,kv", [("satp-batch", 4, "heads"), ("satp-seq", 4, None), ("satp-seq", 8, None),
                                          ("satp-batch", 8, "heads"), ("satp-batch", 4, "batch"),
                                          ("satp-batch", 8, "batch")])
def test_satp_volumes(mi300x, mode, T, B, schedule, p, kv):
    opts = {"satp_batch_kv": kv} if kv else {}
    tl = _run(mi300x, GQA, schedule, {"degree": p}, mode, T, B, **opts)
    T_q = 1 if mode == "decode" else T
    M_H, M_KV, M_Q = B * T_q * GQA.hidden, B * T_q * GQA.kv_dim, B * T_q * GQA.q_dim
    want = {"reduce_scatter": 2 * (p - 1) / p * M_H * S,          # after attention-out and MLP-down
            "input_all_gather": 2 * (p - 1) / p * M_H * S}        # before QKV and gate/up (design.md §3)
    if schedule == "satp-seq":                                    # AllGather(K, V): 2(p−1)/p·M_KV·s
        want["kv_all_gather"] = 2 * (p - 1) / p * M_KV * S
    if kv == "batch" and mode == "decode":
        # the step's Q/K/V head shards to the sequences' owners, the outputs back to head shards: each
        # rank holds 1/p of the tensor and keeps 1/p of that, so it sends (p−1)/p · M·s / p
        want["qkv_all_to_all"] = (p - 1) / p * (M_Q + 2 * M_KV) * S / p
        want["out_all_to_all"] = (p - 1) / p * M_Q * S / p
    if kv == "batch" and mode == "prefill":                       # attention as in training; K/V re-laid once
        want["kv_cache_all_to_all"] = (p - 1) / p * 2 * M_KV * S / p
    assert _layer0_bytes(tl) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("mode", ["prefill", "decode"])
def test_satp_batch_cache_holds_whole_sequences(mi300x, mode):
    """satp_batch_kv=batch: each rank caches all KV heads of its B/p sequences; heads: H_kv/p of all B."""
    p, B, T = 4, 8, 1024
    for kv, width, seqs in (("batch", GQA.kv_dim, B // p), ("heads", GQA.kv_dim // p, B)):
        ctx = _ctx(mi300x, GQA, "satp-batch", {"degree": p}, Workload(mode, T, B, 1), satp_batch_kv=kv)
        lay = kv_layout("satp-batch", GQA.kv_dim, ctx.layout, kv)
        assert (lay.kv_width, B // lay.batch_shards) == (width, seqs)
        graph = build_prefill(ctx) if mode == "prefill" else build_decode_step(ctx, T).graph
        assert graph.meta["inference"]["kv_batch_shards"] == B // seqs
        if mode == "decode":      # attention runs over the rank's own sequences, for all heads
            attn = [op for op in graph.ops if op.name == "L0.attn.core"]
            assert {op.shape[0] for op in attn} == {seqs}
            assert {op.shape[3] for op in attn} == {GQA.q_heads if kv == "batch" else GQA.q_heads // p}
        tl = _run(mi300x, GQA, "satp-batch", {"degree": p}, mode, T, B, satp_batch_kv=kv)
        cached = T + (1 if mode == "decode" else 0)
        for r in tl.graph.ranks:
            final, _ = _final(tl, r)
            assert final["kv_cache"] == GQA.layers * 2 * seqs * cached * width * S


def test_satp_seq_gather_input_decode_has_no_kv_exchange(mi300x):
    tl = _run(mi300x, GQA, "satp-seq", {"degree": 4}, "decode", 2048, 8, satp_seq_attention="gather-input")
    assert "kv_all_gather" not in _layer0_bytes(tl)


def test_sequence_sharded_decode_combines_partial_attention(mi300x):
    p, B = 8, 1024                                                # B·H_q·s > 1 MiB: not a one-shot all-reduce
    tl = _run(mi300x, GQA, "sp", {"degree": p}, "decode", 4096, B)
    got = _layer0_bytes(tl)
    # log-sum-exp statistics gathered (p·B·h·4 bytes) and partial outputs all-reduced (B·H_q·s)
    assert got["lse_all_gather"] == pytest.approx((p - 1) / p * p * B * GQA.q_heads * 4, rel=1e-12)
    assert got["all_reduce"] == pytest.approx(2 * (p - 1) / p * B * GQA.q_dim * S, rel=1e-12)
    assert "send" not in got and "broadcast" not in got       # no weight traffic


@pytest.mark.parametrize("mode", ["weights", "token"])
def test_tsp_decode_modes(mi300x, mode):
    D, B = 4, 512
    tl = _run(mi300x, GQA, "tsp", {"degree": D}, "decode", 2048, B, tsp_decode=mode)
    got = _layer0_bytes(tl)
    names = [op.name for op in tl.ops if op.layer == 0 and op.rank == tl.graph.ranks[0]]
    if mode == "weights":     # weight shards move every step, as in the training forward pass
        assert sum("weights_broadcast" in n for n in names) == D       # one per attention shard owner
        recvs = [op for op in tl.ops if op.layer == 0 and op.rank == tl.graph.ranks[0] and op.kind == "recv"]
        assert len(recvs) == D - 1                                       # the MLP ring: D−1 shards arrive
        assert "qkv_all_gather" not in got
    else:                     # weights stay; the tokens' Q/K/V are gathered: (D−1)/D·B·(H_q+2H_kv)·s
        assert "broadcast" not in got and "send" not in got
        assert got["qkv_all_gather"] == pytest.approx(
            (D - 1) / D * B * (GQA.q_dim + 2 * GQA.kv_dim) * S, rel=1e-12)
        assert got["reduce_scatter"] == pytest.approx((D - 1) / D * B * GQA.q_dim * S, rel=1e-12)


# ------------------------------------------------------------------------------------------ (c) rooflines
@pytest.mark.parametrize("B,T", [(1, 4096), (8, 8192)])
def test_single_gpu_decode_is_hbm_bound(mi300x, B, T):
    """tp with D = 1 on one MI300X: time per token within 10% of (weights + KV) / (HBM·efficiency)."""
    e = simulate(Point("tp", "mi300x-1node", "llama3-8b", "decode", T, B, degree=1, gpus=1, decode_tokens=4)).entry
    m, gpu = load_model("llama3-8b"), mi300x.gpu
    weights = (m.layers * m.layer_params + m.vocab * m.hidden) * S        # blocks + LM head, read once per step
    mean_ctx = T + (4 + 1) / 2                                            # steps attend over T+1 … T+4
    kv = 2 * m.layers * B * mean_ctx * m.kv_dim * S
    bound = (weights + kv) / (gpu.hbm_TBps * 1e12 * gpu.hbm_efficiency)
    assert bound <= e["tpot_s"] <= 1.10 * bound
    bd = e["decode_time_breakdown_s"]
    assert sum(bd.values()) == pytest.approx(e["tpot_s"], rel=1e-9)
    assert bd["weights_hbm"] + bd["kv_hbm"] >= 0.9 * e["tpot_s"]


def test_single_gpu_prefill_is_compute_bound():
    r = simulate(Point("tp", "mi300x-1node", "llama3-8b", "prefill", 4096, 1, degree=1, gpus=1))
    tl, gpu = r.timeline, r.topology.gpu
    flop_bound = 0.0
    for op_id, a, b in tl.spans:
        op = tl.ops[op_id]
        if op.kind in ("gemm", "attention_fwd") and op.flops > 0:
            t_flops = op.flops / (gpu.peak_bf16_TFLOPS * 1e12 * efficiency(op, gpu))
            if t_flops >= op.hbm_bytes / (gpu.hbm_TBps * 1e12 * gpu.hbm_efficiency):
                flop_bound += b - a
    assert flop_bound >= 0.8 * tl.end_s
    assert r.entry["ttft_s"] == tl.end_s


# ------------------------------------------------------------------------------------------ (d) max batch
def test_max_batch_search():
    def linear(b: int) -> float:        # bytes: 100 static + 10 per sequence
        return 100.0 + 10.0 * b

    assert max_batch(linear, 470) == 37
    assert max_batch(linear, 470, step=4) == 36
    assert max_batch(linear, 120, step=4) == 0
    assert max_batch(linear, 1e9, limit=1000) == 512
    assert max_batch(linear, 470, start=64) == 37                # halving when the start does not fit
    assert max_batch(lambda b: b * b, 1000) == 31                 # non-linear peaks: bisection still exact
    assert max_batch(lambda b: 0.0 if b < 7 else 1e9, 1.0) == 6   # a step, not a line
    probes: list[int] = []
    assert max_batch(lambda b: probes.append(b) or linear(b), 2100) == 200
    assert probes[:9] == [1, 2, 4, 8, 16, 32, 64, 128, 256]       # doubling, then bisection
    assert len(probes) <= 12
    probes.clear()
    assert max_batch(lambda b: probes.append(b) or linear(b), 2100, start=8, known={8: linear(8)}) == 200
    assert 8 not in probes                                        # the run's own batch is not simulated again


def test_max_batch_is_largest_that_fits(mi300x):
    """B = max_batch fits in HBM, B + 1 does not (each a full simulation of the final decode step)."""
    model = load_model("llama3-8b")
    T, N = 65536, 4
    w = Workload("decode", T, 1, N)
    plan = make_layout("tp", mi300x, model, w, degree=8)
    opts = Assumptions()
    run = simulate_inference(mi300x, model, plan, w, opts)
    mb, _ = search_max_batch(RunResult(run.fields, run.timeline, mi300x, model, plan, w, opts, run.timelines))
    assert mb > 1
    hbm = mi300x.gpu.hbm_GB * 1e9

    def peak(b: int) -> int:
        ctx = BuildContext(model, mi300x, plan, Workload("decode", T, b, N), opts)
        return peak_memory(replay(build_decode_step(ctx, T + N - 1).graph, decode_topology(mi300x, opts)))[0]

    assert peak(mb) <= hbm < peak(mb + 1)


# ------------------------------------------------------------------------------------------ periodic assembly
EXACT = [
    ("tp", {"degree": 8}, {}, "cut"),
    ("tp", {"degree": 1, "gpus": 1}, {}, "cut"),
    ("satp-batch", {"degree": 4}, {}, "cut"),
    ("satp-seq", {"degree": 4}, {}, "cut"),
    ("sp", {"degree": 4}, {}, "cut"),
    ("tp+sp", {"tp": 4, "sp": 2}, {}, "cut"),
    ("tsp", {"degree": 4}, {"tsp_decode": "token"}, "cut"),
    ("tsp", {"degree": 4}, {}, "window"),
    ("tp", {"degree": 8}, {"tp_overlap": True}, "cut"),
]


@pytest.mark.parametrize("schedule,kw,options,method", EXACT,
                         ids=[f"{s}-{'-'.join(map(str, k.values()))}-{m}" for s, k, _, m in EXACT])
def test_periodic_decode_equals_full_simulation(mi300x, schedule, kw, options, method):
    """Decode steps assembled from a short graph equal full simulations of every step (rel 1e-9)."""
    w = Workload("decode", 1000, 8, 3)
    plan = make_layout(schedule, mi300x, DEEP, w, **kw)
    opts = Assumptions.from_overrides(options)
    fast = simulate_inference(mi300x, DEEP, plan, w, opts)
    full = simulate_inference(mi300x, DEEP, plan, w, opts, periodic=False)
    assert {st.method for st in fast.steps} == {method}
    assert {st.method for st in full.steps} == {"full"}
    for a, b in zip(fast.steps, full.steps):
        assert a.time_s == pytest.approx(b.time_s, rel=1e-9, abs=0)
        for k in BREAKDOWN_KEYS:
            assert a.breakdown[k] == pytest.approx(b.breakdown[k], rel=1e-9, abs=1e-15)
        # Per-rank compute / communication / overlap seconds assemble exactly too (the generate totals).
        assert set(a.ranks) == set(b.ranks)
        for r in a.ranks:
            assert a.ranks[r] == pytest.approx(b.ranks[r], rel=1e-9, abs=1e-15)
    for key in ("compute_s", "comm_s", "exposed_comm_s", "overlap_pct"):
        assert fast.fields[key] == pytest.approx(full.fields[key], rel=1e-9, abs=1e-15)
    assert fast.fields["decode_check_rel_err"] < 1e-9


def test_tsp_weights_decode_has_no_cut(mi300x):
    """Weight prefetch crosses block boundaries: no quiescent cut, so the timer does not use one."""
    w = Workload("decode", 1000, 8, 1)
    ctx = _ctx(mi300x, DEEP, "tsp", {"degree": 4}, w)
    step = build_decode_step(ctx, 1000)
    assert not verify_cuts(step.graph, step.cuts[:2])
    timer = DecodeTimer(context_steps(lambda layers: ctx if layers is None else with_layers(ctx, layers)), DEEP.layers,
                        decode_topology(mi300x, ctx.opts))
    assert timer.method == "window"


def test_find_period_rejects_states_that_do_not_repeat(mi300x):
    """The window check is not vacuous: perturb one block's in-flight ops and the candidate is refused."""
    w = Workload("decode", 1000, 8, 1)
    ctx = _ctx(mi300x, DEEP, "tsp", {"degree": 4}, w)
    probe = build_decode_step(with_layers(ctx, 8), 1000)
    assert verify_periodic_structure(probe)
    tl = replay(probe.graph, decode_topology(mi300x, ctx.opts))
    found = find_period(tl, probe)
    assert found is not None
    tp, tpp = found
    period = probe.layer_starts[1] - probe.layer_starts[0]
    start = {op_id: a for op_id, a, _ in tl.spans}
    end = {op_id: b for op_id, _, b in tl.spans}
    t0 = min([a for o, a in start.items() if a < tp <= end[o]] + [tp])
    in_flight = {o for o in start if start[o] < tp and end[o] > t0 and o >= probe.layer_starts[1]}
    assert in_flight
    moved = {o + period for o in in_flight}
    spans = [(o, a + (1e-9 if o in moved else 0.0), b) for o, a, b in tl.spans]
    assert find_period(dataclasses.replace(tl, spans=spans), probe) != found


def test_one_replica_equals_whole_node():
    """Sub-node replicas are independent in inference: simulating one equals simulating the node."""
    for mode in ("prefill", "decode"):
        p = Point("tp", "mi300x-1node", "llama3-8b", mode, 2048, 4, degree=2, decode_tokens=2)
        a, b = simulate(p), simulate(p, fold=False)
        assert len(a.timeline.graph.ranks) == 2 and len(b.timeline.graph.ranks) == 8
        for key in ("step_time_s", "peak_memory_gb", "ttft_s", "tpot_s", "comm_bytes_per_rank"):
            assert a.entry[key] == b.entry[key]


# ------------------------------------------------------------------------------------------ (e) end to end
def test_generate_entry(model_yaml):
    path = model_yaml("inf-e2e", hidden=512, layers=4, q_heads=8, kv_heads=4, head_dim=64, ffn_hidden=1536,
                      vocab=4096)
    T, B, N = 2048, 4, 6
    r = simulate_with_max_batch(Point("tp+sp", "mi300x-1node", path, "generate", T, B, tp=4, sp=2, decode_tokens=N))
    e = r.entry
    pre = r.timelines["prefill"]
    assert e["ttft_s"] == pre.end_s and e["mode"] == "generate"
    assert e["tpot_s"] > 0 and e["decode_tokens"] == N and e["context_tokens"] == T
    assert e["decode_tokens_per_s"] == pytest.approx(B * e["replicas"] / e["tpot_s"])
    assert e["decode_tokens_per_s_per_gpu"] == pytest.approx(e["decode_tokens_per_s"] / e["world_size"])
    assert e["step_time_s"] == pytest.approx(e["ttft_s"] + N * e["tpot_s"])
    assert sum(e["decode_time_breakdown_s"].values()) == pytest.approx(e["tpot_s"], rel=1e-9)
    # One meaning per key: the top-level keys are the whole request, the blocks its two phases.
    pre_b, dec_b = e["prefill"], e["decode"]
    assert pre_b["time_s"] == e["ttft_s"] and dec_b["steps"] == N
    assert dec_b["time_s"] == pytest.approx(N * e["tpot_s"], rel=1e-12)
    assert e["step_time_s"] == pytest.approx(pre_b["time_s"] + dec_b["time_s"], rel=1e-12)
    for key in ("compute_s", "comm_s", "exposed_comm_s"):
        assert e[key] == pytest.approx(pre_b[key] + dec_b[key], rel=1e-12)
        assert e[key] <= e["step_time_s"]
    for kind, v in e["comm_bytes_per_rank"].items():
        assert v == pytest.approx(pre_b["comm_bytes_per_rank"].get(kind, 0) + dec_b["comm_bytes_per_rank"].get(kind, 0))
    assert min(pre_b["overlap_pct"], dec_b["overlap_pct"]) - 1e-9 <= e["overlap_pct"] <= max(
        pre_b["overlap_pct"], dec_b["overlap_pct"]) + 1e-9
    assert pre_b["tokens_per_s"] == pytest.approx(B * T * e["replicas"] / e["ttft_s"])
    assert dec_b["tokens_per_s"] == pytest.approx(e["decode_tokens_per_s"])
    assert e["peak_memory_gb"] == max(pre_b["peak_memory_gb"], dec_b["peak_memory_gb"])
    # The prefill block is the prefill timeline's own metrics.
    from tspsim.analysis.metrics import time_metrics

    assert {k: pre_b[k] for k in ("compute_s", "comm_s", "exposed_comm_s", "overlap_pct")} == pytest.approx(
        time_metrics(pre))
    assert e["max_batch"] >= B and e["assumptions"]["tsp_decode"] == "weights"
    assert e["decode_step_last_s"] >= e["decode_step_first_s"]     # the cache grows: more KV read
    assert e["memory_breakdown_gb"]["kv_cache"] > 0


def test_decode_entry_and_options(model_yaml):
    path = model_yaml("inf-e2e2", hidden=512, layers=4, q_heads=8, kv_heads=8, head_dim=64, ffn_hidden=1536,
                      vocab=4096)
    r = simulate(Point("tsp", "mi300x-1node", path, "decode", 4096, 2, degree=4, decode_tokens=3,
                       options=(("tsp_decode", "token"),)))
    e = r.entry
    # Decode mode simulates no prefill: no time to first token; every top-level key is per mean step.
    assert e["ttft_s"] is None and e["prefill"] is None and e["step_time_s"] == e["tpot_s"]
    assert e["decode"]["steps"] == 3 and e["decode"]["time_s"] == pytest.approx(3 * e["tpot_s"], rel=1e-12)
    for key in ("compute_s", "comm_s", "exposed_comm_s"):
        assert e[key] == pytest.approx(e["decode"][key] / 3, rel=1e-12)
    assert e["comm_bytes_per_rank"] == pytest.approx({k: v / 3 for k, v in e["decode"]["comm_bytes_per_rank"].items()})
    assert e["tokens_per_s"] == e["decode_tokens_per_s"] and e["assumptions"]["tsp_decode"] == "token"
    assert r.timeline is r.timelines["decode_step"]
    with pytest.raises(ConfigError):
        Assumptions.from_overrides({"tsp_decode": "tokens"})


def test_satp_seq_decode_needs_batch_multiple_of_degree(mi300x):
    with pytest.raises(ConfigError, match="multiple of 4"):
        make_layout("satp-seq", mi300x, GQA, Workload("decode", 1000, 2, 1), degree=4)
    make_layout("sp", mi300x, GQA, Workload("decode", 1001, 1, 1), degree=8)   # no sequence divisibility


def test_cli_decode_json_and_table(model_yaml):
    import json

    from click.testing import CliRunner

    from tspsim.cli import cli

    path = model_yaml("inf-cli", hidden=512, layers=4, q_heads=8, kv_heads=8, head_dim=64, ffn_hidden=1536,
                      vocab=4096)
    run = CliRunner().invoke(cli, ["run", "-t", "mi300x-1node", "--model", path, "--mode", "decode", "--context",
                                   "8k", "--tokens", "5", "--batch", "2", "--schedule", "tp,tsp", "--json"])
    assert run.exit_code == 0, run.output
    entries = json.loads(run.stdout)["results"]
    for e in entries:
        assert e["mode"] == "decode" and e["seq_len"] == 8192 and e["decode_tokens"] == 5
        for key in ("tpot_s", "decode_tokens_per_s", "decode_tokens_per_s_per_gpu", "max_batch"):
            assert e[key] > 0
        assert e["ttft_s"] is None  # no prefill in decode mode
        assert set(e["decode_time_breakdown_s"]) == set(BREAKDOWN_KEYS)
    text = CliRunner().invoke(cli, ["run", "-t", "mi300x-1node", "--model", path, "--mode", "generate", "--seq",
                                    "2k", "--tokens", "3", "--schedule", "tp"])
    assert text.exit_code == 0, text.output
    assert "TTFT (ms)" in text.stdout and "TPOT (ms)" in text.stdout and "max batch" in text.stdout
    assert "tsp_decode=weights" in text.stdout
    bad = CliRunner().invoke(cli, ["run", "-t", "mi300x-1node", "--mode", "train", "--tokens", "4"])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and bad.output.startswith("error: --tokens")


@pytest.mark.parametrize("B", [1, 64])
def test_breakdown_hbm_parts_are_the_streaming_time(mi300x, B):
    """weights_hbm (kv_hbm) is exactly bytes / (HBM·eff) summed over the GEMMs (attention kernels) whose
    shape is HBM-bound, whatever small-kernel tail they pay on top; the tail goes to ``compute``."""
    from tspsim.analysis.serving import time_breakdown
    from tspsim.engine.costs import large_efficiency

    ctx = _ctx(mi300x, GQA, "tp", {"degree": 4}, Workload("decode", 4096, B, 1))
    topo = decode_topology(mi300x, ctx.opts)
    gpu = topo.gpu
    tl = replay(build_decode_step(ctx, 4096).graph, topo)
    bd = time_breakdown(tl, gpu)
    hbm, peak = gpu.hbm_TBps * 1e12 * gpu.hbm_efficiency, gpu.peak_bf16_TFLOPS * 1e12
    want = {"weights_hbm": 0.0, "kv_hbm": 0.0}
    tail_paid = False
    for op in tl.ops:
        if op.kind in ("gemm", "attention_fwd") and op.hbm_bytes / hbm >= op.flops / (peak * large_efficiency(op, gpu)):
            want["weights_hbm" if op.kind == "gemm" else "kv_hbm"] += op.hbm_bytes / hbm
            tail_paid |= op.flops / (peak * efficiency(op, gpu)) > op.hbm_bytes / hbm
    n = len(tl.graph.ranks)
    assert bd["weights_hbm"] == pytest.approx(want["weights_hbm"] / n, rel=1e-9)
    assert bd["kv_hbm"] == pytest.approx(want["kv_hbm"] / n, rel=1e-9)
    assert sum(bd.values()) == pytest.approx(tl.end_s, rel=1e-9)
    assert tail_paid == (bd["compute"] > 0)


def test_report_footer_shows_only_options_that_apply():
    """Training reports omit inference-only options; serving reports omit training-only ones."""
    from dataclasses import fields

    from tspsim.analysis.report import assumptions_text
    from tspsim.spec.assumptions import INFERENCE_ONLY_OPTIONS, TRAINING_ONLY_OPTIONS

    names = {f.name for f in fields(Assumptions)}
    assert set(TRAINING_ONLY_OPTIONS) <= names and set(INFERENCE_ONLY_OPTIONS) <= names
    assert not set(TRAINING_ONLY_OPTIONS) & set(INFERENCE_ONLY_OPTIONS)
    opts = Assumptions().to_json()
    for mode, hidden in (("train", INFERENCE_ONLY_OPTIONS), ("forward", INFERENCE_ONLY_OPTIONS),
                         ("prefill", TRAINING_ONLY_OPTIONS), ("decode", TRAINING_ONLY_OPTIONS),
                         ("generate", TRAINING_ONLY_OPTIONS)):
        text = assumptions_text({"mode": mode, "assumptions": opts}, width=10_000)
        shown = {kv.split("=")[0] for kv in text.splitlines()[1].strip().split(", ")}
        assert shown == names - set(hidden) - {"stack"}, mode   # the stack has its own line
        assert text.splitlines()[2].startswith("stack megatron-core")


def test_small_communication_volumes_are_not_printed_as_zero():
    from tspsim.analysis.report import _gb

    assert _gb(None) == "n/a" and _gb(0) == "0.00"
    assert _gb(4.3e6) == "0.0043" and _gb(1.33e5) == "0.000133"   # decode steps move KB to MB
    assert _gb(2.35e9) == "2.35" and _gb(0.1e9) == "0.10"

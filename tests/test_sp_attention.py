"""SP attention algorithms (issue 15): all-gather K/V, ring attention, Ulysses — bytes, overlap, FLOPs, memory, errors.

Per rank and block, with p = Σ, H_q = q_dim/T, H_kv = kv_dim/T and s = 2 bytes (README: Sequence parallelism
algorithms):

* all-gather forward (p−1)/p · 2·B·S·H_kv·s (all-gather); backward the reduce-scatter of dK/dV, the same bytes (+ the
  all-gather again when gathered K/V are not kept);
* ring forward 2·(p−1)/p · B·S·H_kv·s (sends: each rank passes every block on); backward twice that (K/V blocks and
  dK/dV accumulators);
* Ulysses (p−1)/p² · B·S·(2·H_q + 2·H_kv)·s (all-to-alls of Q, K, V to head shards and O back); backward the same.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_memory import _check_invariants
from test_properties_run import (
    _check_bounds,
    check_bytes_balance,
    check_memory_nonnegative,
    check_spans,
    overlap_fraction,
)

from tspsim.analysis.entries import entry_label
from tspsim.cli import cli
from tspsim.core.errors import ConfigError
from tspsim.explore.planner import candidate_points, sp_variants
from tspsim.schedules.ring_attention import RingAttention
from tspsim.simulate import Point, build_graph, simulate
from tspsim.spec.assumptions import Assumptions

S_BYTES = 2
VARIANTS = ("allgather", "ring", "ulysses")
SP_STREAMS = ("kv", "kv_tx")
MODELS = {
    "mha": {"hidden": 1024, "q_heads": 16, "kv_heads": 16, "head_dim": 64, "ffn_hidden": 4096},
    "gqa4": {"hidden": 1024, "q_heads": 32, "kv_heads": 8, "head_dim": 32, "ffn_hidden": 4096},
}


@pytest.fixture(scope="module")
def models(model_yaml) -> dict[str, str]:
    return {name: model_yaml(f"spa-{name}", **fields) for name, fields in MODELS.items()}


def _point(models, model: str, variant: str, *, schedule: str = "tp+sp", tp: int = 2, sp: int = 4, S: int = 8192,
           B: int = 1, mode: str = "forward", topology: str = "mi300x-1node", **opts) -> Point:
    kw = {"tp": tp, "sp": sp} if schedule == "tp+sp" else {"degree": sp}
    options = tuple(sorted({"sp_attention": variant, **opts}.items()))
    return Point(schedule, topology, model=models[model], mode=mode, seq_len=S, batch=B, options=options, **kw)


def sp_bytes(tl, phase: str, recompute: bool = False) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Bytes each simulated rank sends on the SP streams for block 0's ops of ``phase``, by kind.

    ``recompute`` selects the recomputed forward (ops named ``…recompute…``) instead of the rest. Returns
    (mean over ranks, sorted distinct per-rank values).
    """
    per: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for op in tl.ops:
        if not op.is_comm or op.kind == "recv" or op.stream not in SP_STREAMS or op.layer != 0:
            continue
        if op.phase != phase or ("recompute" in op.name) != recompute:
            continue
        per[op.rank][op.kind] += tl.op_sent_bytes[op.id]
    ranks = tl.graph.ranks
    kinds = sorted({k for d in per.values() for k in d})
    return ({k: sum(per[r][k] for r in ranks) / len(ranks) for k in kinds},
            {k: sorted({per[r][k] for r in ranks}) for k in kinds})


def forward_formula(variant: str, cfg: dict, *, B: int, S: int, T: int, p: int) -> dict[str, float]:
    """The README's per-rank forward bytes of one block's SP attention."""
    hq = cfg["q_heads"] * cfg["head_dim"] / T
    hkv = cfg["kv_heads"] * cfg["head_dim"] / T
    s = S_BYTES
    if variant == "allgather":
        return {"all_gather": (p - 1) / p * 2 * B * S * hkv * s}
    if variant == "ring":
        return {"send": 2 * (p - 1) / p * B * S * hkv * s}
    return {"all_to_all": (p - 1) / p ** 2 * B * S * (2 * hq + 2 * hkv) * s}


def backward_formula(variant: str, cfg: dict, *, B: int, S: int, T: int, p: int, keep: bool = True) -> dict:
    fwd = forward_formula(variant, cfg, B=B, S=S, T=T, p=p)
    if variant == "allgather":
        out = {"reduce_scatter": fwd["all_gather"]}
        return out if keep else {**out, "all_gather": fwd["all_gather"]}
    if variant == "ring":
        return {"send": 2 * fwd["send"]}     # K/V blocks again + the dK/dV accumulators
    return dict(fwd)                         # dO to heads, dQ/dK/dV back


def _assert_volumes(got: tuple[dict, dict], expected: dict[str, float]) -> None:
    mean, distinct = got
    assert set(mean) == set(expected), f"kinds {sorted(mean)} != {sorted(expected)}"
    for kind, value in expected.items():
        assert mean[kind] == pytest.approx(value, rel=1e-12), kind
        assert distinct[kind][0] == pytest.approx(distinct[kind][-1], rel=1e-12), f"{kind}: ranks differ"


# ------------------------------------------------------------------------------------------ bytes
FWD_CASES = [  # (schedule, model, T, Σ, S, B)
    ("sp", "mha", 1, 2, 8192, 1), ("sp", "mha", 1, 4, 8192, 2), ("sp", "gqa4", 1, 8, 16384, 1),
    ("tp+sp", "mha", 2, 4, 8192, 1), ("tp+sp", "gqa4", 4, 2, 8192, 2), ("tp+sp", "mha", 4, 2, 4096, 1),
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("schedule", "model", "T", "SIG", "S", "B"), FWD_CASES)
def test_forward_bytes_per_layer_match_the_formulas(models, variant, schedule, model, T, SIG, S, B):
    res = simulate(_point(models, model, variant, schedule=schedule, tp=T, sp=SIG, S=S, B=B))
    _assert_volumes(sp_bytes(res.timeline, "fwd"), forward_formula(variant, MODELS[model], B=B, S=S, T=T, p=SIG))
    assert res.entry["sp_attention"]["algorithm"] == variant
    assert res.entry["sp_attention"]["layer_bytes_per_rank"] == pytest.approx(
        sum(forward_formula(variant, MODELS[model], B=B, S=S, T=T, p=SIG).values()), rel=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("T", "SIG"), [(8, 2), (4, 4)])
def test_forward_bytes_across_nodes(models, mi300x_4node_yaml, variant, T, SIG):
    """Σ spans nodes (one rank per node for T=8, two for T=4): the bytes still follow the formulas."""
    cfg = MODELS["mha"]
    res = simulate(_point(models, "mha", variant, tp=T, sp=SIG, S=8192, topology=mi300x_4node_yaml),
                   record_links=True)
    tl = res.timeline
    _assert_volumes(sp_bytes(tl, "fwd"), forward_formula(variant, cfg, B=1, S=8192, T=T, p=SIG))
    if variant == "ulysses":   # the all-to-alls run on the real links: across the NICs between the nodes
        spans = [(s0, e0) for oid, s0, e0 in tl.spans if tl.ops[oid].kind == "all_to_all" and e0 > s0]
        nic_busy = [rate for i, steps in tl.links.items() if tl.link_meta[i]["kind"] != "xgmi"
                    for t, rate in steps if rate > 0 and any(a <= t < b for a, b in spans)]
        assert spans and nic_busy


STACK_CASES = [(v, st) for v in VARIANTS for st in ("megatron-core", "megatron-lm-2022")
               if (v, st) != ("ring", "megatron-lm-2022")]   # ring attention needs a flash kernel


@pytest.mark.parametrize(("variant", "stack"), STACK_CASES)
@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_backward_bytes_under_every_recompute_policy(models, variant, recompute, stack):
    cfg, B, S, T, p = MODELS["gqa4"], 1, 8192, 2, 4
    res = simulate(_point(models, "gqa4", variant, tp=T, sp=p, S=S, B=B, mode="train", recompute=recompute,
                          stack=stack))
    tl = res.timeline
    fwd = forward_formula(variant, cfg, B=B, S=S, T=T, p=p)
    _assert_volumes(sp_bytes(tl, "fwd"), fwd)
    _assert_volumes(sp_bytes(tl, "bwd"), backward_formula(variant, cfg, B=B, S=S, T=T, p=p))
    recomputed = sp_bytes(tl, "bwd", recompute=True)
    if recompute == "full":   # the block's forward runs again with its communication
        expected = {} if variant == "allgather" else fwd   # kept gathered K/V are not gathered again
        _assert_volumes(recomputed, expected)
    else:
        assert recomputed == ({}, {})


def test_allgather_without_kept_kv_gathers_again_in_backward(models):
    cfg = MODELS["mha"]
    res = simulate(_point(models, "mha", "allgather", mode="train", recompute="none", sp_keep_gathered_kv=False))
    _assert_volumes(sp_bytes(res.timeline, "bwd"),
                    backward_formula("allgather", cfg, B=1, S=8192, T=2, p=4, keep=False))


# ------------------------------------------------------------------------------------------ overlap
@pytest.fixture(scope="module")
def ring_runs():
    """zyphra-7b training on one MI300X node, sp D=8 with ring attention, at 128k and 16k tokens."""
    return {seq: simulate(Point("sp", "mi300x-1node", seq_len=seq, degree=8, options=(("sp_attention", "ring"),)))
            for seq in (131072, 16384)}


@pytest.mark.slow
def test_ring_attention_hides_its_sends_at_long_context(ring_runs):
    res = ring_runs[131072]
    sp = res.entry["sp_attention"]
    assert sp["algorithm"] == "ring"
    assert sp["overlap_pct"] > 80.0, sp
    # the entry's number is HTA's overlap restricted to the SP streams, computed independently here
    ov = overlap_fraction(res.timeline, lambda op: op.stream in SP_STREAMS)
    assert sp["overlap_pct"] == pytest.approx(100 * ov, rel=1e-9)


@pytest.mark.slow
def test_ring_attention_is_exposed_at_short_context(ring_runs):
    long, short = ring_runs[131072].entry["sp_attention"], ring_runs[16384].entry["sp_attention"]
    assert short["overlap_pct"] < 50.0 < long["overlap_pct"]
    assert short["exposed_s"] / short["comm_s"] > 0.5


@pytest.mark.parametrize("variant", ["ring", "ulysses"])
@pytest.mark.parametrize(("T", "SIG"), [(8, 2), (2, 4)])
def test_folding_stays_exact(models, mi300x_4node_yaml, variant, T, SIG):
    """One simulated replica (the others mirrored) equals simulating every rank: ring sends and all-to-alls too."""
    point = _point(models, "mha", variant, tp=T, sp=SIG, S=8192, mode="train", topology=mi300x_4node_yaml)
    folded, full = simulate(point), simulate(point, fold=False)
    assert len(folded.timeline.graph.ranks) < len(full.timeline.graph.ranks)
    for key in ("step_time_s", "peak_memory_gb", "overlap_pct"):
        assert folded.entry[key] == pytest.approx(full.entry[key], rel=1e-12), key
    fa, ua = folded.entry["sp_attention"], full.entry["sp_attention"]
    nums = {k for k, v in ua.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert {k: fa[k] for k in nums} == pytest.approx({k: ua[k] for k in nums}, rel=1e-12)
    assert {k: v for k, v in fa.items() if k not in nums} == {k: v for k, v in ua.items() if k not in nums}


# ------------------------------------------------------------------------------------------ FLOPs
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("schedule", "T", "SIG"), [("sp", 1, 8), ("sp", 1, 2), ("tp+sp", 2, 4), ("tp+sp", 4, 2)])
def test_attention_flops_are_conserved(models, variant, schedule, T, SIG):
    """Every algorithm computes the model's attention FLOPs; backward 2.5×; zig-zag balances every rank."""
    graph, _topo, mcfg, layout, wl, _ = build_graph(_point(models, "gqa4", variant, schedule=schedule, tp=T, sp=SIG,
                                                           B=2, mode="train", recompute="none"))
    B, S = wl.batch, wl.seq_len
    attn_ref = mcfg.layer_fwd_flops(B, S) - 2.0 * B * S * (mcfg.attn_params + mcfg.mlp_params)
    replica = layout.replica_ranks(0)
    per = defaultdict(lambda: defaultdict(float))
    for op in graph.ops:
        if op.layer == 0 and op.kind in ("attention_fwd", "attention_bwd"):
            per[op.kind][op.rank] += op.flops
    assert sum(per["attention_fwd"][r] for r in replica) == pytest.approx(attn_ref, rel=1e-12)
    assert sum(per["attention_bwd"][r] for r in replica) == pytest.approx(2.5 * attn_ref, rel=1e-12)
    for kind in per:
        assert max(per[kind].values()) == pytest.approx(min(per[kind].values()), rel=1e-12), kind


@pytest.mark.parametrize("p", [2, 3, 4, 8])
def test_ring_steps_balance_the_causal_mask(p):
    """Each zig-zag step is 2·B·c² scores per head, and the p steps add up to the all-gather's n·S/2."""

    class _Blk:
        B, S, SP, heads_l, n, kv_l, s = 2, 96 * p, p, 4, 2 * 96, 8, 2
        ctx = type("C", (), {"model": type("M", (), {"head_dim": 16})()})()

    ring = RingAttention(_Blk())  # type: ignore[arg-type]
    c = _Blk.S / (2 * p)
    for i in range(p):
        areas = [sh.q_tokens * sh.kv_tokens * sh.causal_fraction for sh in (ring.step_shape(i, k) for k in range(p))]
        assert areas == [2 * c * c] * p
        assert sum(areas) == pytest.approx((_Blk.S / p) * _Blk.S / 2)


# ------------------------------------------------------------------------------------------ memory
def _max_comm_buffers(tl) -> dict[int, int]:
    out = {}
    for r in tl.graph.ranks:
        cur = peak = 0
        for _t, cat, delta in tl.memory.get(r, []):
            if cat == "comm_buffers":
                cur += delta
                peak = max(peak, cur)
        out[r] = peak
    return out


@pytest.mark.parametrize(("variant", "p", "buckets"), [
    ("allgather", 4, 1), ("allgather", 4, 2), ("allgather", 2, 4), ("ring", 2, 1), ("ring", 4, 1), ("ring", 8, 1),
    ("ulysses", 4, 1), ("ulysses", 8, 1),
])
def test_sp_buffers_follow_the_schedule(models, variant, p, buckets):
    """Forward: all-gather holds the gathered K/V (of ≤ 2 head buckets), ring ≤ 2 blocks, Ulysses the full-sequence
    Q/K/V of its heads."""
    cfg = MODELS["mha"]
    B, S = 2, 8192
    res = simulate(_point(models, "mha", variant, schedule="sp", sp=p, S=S, B=B, sp_kv_buckets=buckets))
    hq, hkv, s = cfg["q_heads"] * cfg["head_dim"], cfg["kv_heads"] * cfg["head_dim"], S_BYTES
    expected = {"allgather": min(buckets, 2) * 2 * B * S * hkv * s / buckets,
                "ring": min(p - 1, 2) * 2 * B * (S / p) * hkv * s,
                "ulysses": B * S * (hq + 2 * hkv) / p * s}[variant]
    assert set(_max_comm_buffers(res.timeline).values()) == {int(expected)}
    _check_invariants(res.timeline, training=False)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("recompute", ["none", "full"])
@pytest.mark.parametrize("schedule", ["sp", "tp+sp"])
def test_memory_invariants_every_variant(models, variant, recompute, schedule):
    res = simulate(_point(models, "gqa4", variant, schedule=schedule, tp=2, sp=4, mode="train", recompute=recompute),
                   fold=False)
    _check_invariants(res.timeline, training=True)


def test_ring_needs_less_memory_than_kept_gathered_kv_at_long_context():
    peaks = {v: simulate(Point("tp+sp", "mi300x-1node", seq_len=131072, tp=4, sp=2, options=(("sp_attention", v),)))
             .entry["peak_memory_gb"] for v in VARIANTS}
    assert peaks["ring"] < peaks["allgather"] and peaks["ulysses"] < peaks["allgather"]


def test_head_buckets_keep_bytes_and_flops_and_cut_memory(models):
    runs = {b: simulate(_point(models, "mha", "allgather", schedule="sp", sp=4, B=2, mode="train", recompute="none",
                               sp_kv_buckets=b, sp_keep_gathered_kv=False)) for b in (1, 4)}
    one, four = runs[1].entry, runs[4].entry
    assert four["comm_bytes_per_rank"] == pytest.approx(one["comm_bytes_per_rank"], rel=1e-12)
    flops = {b: sum(op.flops for op in r.timeline.ops) for b, r in runs.items()}
    assert flops[4] == pytest.approx(flops[1], rel=1e-12)
    assert max(_max_comm_buffers(runs[4].timeline).values()) < max(_max_comm_buffers(runs[1].timeline).values())


# ------------------------------------------------------------------------------------------ properties
@st.composite
def sp_runs(draw):
    variant = draw(st.sampled_from(VARIANTS))
    schedule = draw(st.sampled_from(["sp", "tp+sp"]))
    p = draw(st.sampled_from([2, 4] if schedule == "tp+sp" else [2, 4, 8]))
    opts = {"sp_attention": variant, "recompute": draw(st.sampled_from(["none", "selective", "full"]))}
    if variant != "ring":
        opts["stack"] = draw(st.sampled_from(["megatron-core", "megatron-lm-2022", "torchtitan"]))
    opts.update(draw(st.fixed_dictionaries({}, optional={
        "pack_kv": st.booleans(), "sp_keep_gathered_kv": st.booleans(), "tp_overlap": st.booleans(),
        "sp_kv_buckets": st.sampled_from([1, 2]), "zero1": st.booleans()})))
    kw = {"tp": 8 // p if p < 8 else 1, "sp": p} if schedule == "tp+sp" else {"degree": p}
    if schedule == "tp+sp" and kw["tp"] * p > 8:
        kw["tp"] = 8 // p
    return Point(schedule, "mi300x-1node", mode=draw(st.sampled_from(["train", "train", "forward", "prefill"])),
                 seq_len=draw(st.sampled_from([4096, 8192])), batch=draw(st.sampled_from([1, 2])),
                 options=tuple(sorted(opts.items())), **kw)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(point=sp_runs())
def test_random_runs_of_every_variant(model_yaml, point):
    shape = {"hidden": 256, "layers": 2, "q_heads": 16, "kv_heads": 8, "head_dim": 16, "ffn_hidden": 768, "vocab": 512}
    res = simulate(replace(point, model=model_yaml("spa-prop", **shape)), fold=False)
    tl = res.timeline
    for check in (check_spans, check_bytes_balance, check_memory_nonnegative):
        check(tl)
    if point.mode != "prefill":
        if dict(point.options).get("stack") != "torchtitan":   # _check_bounds costs kernels, not host ops
            _check_bounds(res)
        _check_invariants(tl, training=point.mode == "train")
    assert res.entry["sp_attention"]["algorithm"] == dict(point.options)["sp_attention"]


# ------------------------------------------------------------------------------------------ inference
@pytest.mark.parametrize("schedule", ["sp", "tp+sp"])
def test_prefill_runs_for_every_variant_and_decode_is_unchanged(models, schedule):
    degrees = {"tp": 2, "sp": 4} if schedule == "tp+sp" else {"degree": 4}
    entries = {v: simulate(Point(schedule, "mi300x-1node", model=models["mha"], mode="generate", seq_len=4096, batch=2,
                                 decode_tokens=4, search_max_batch=False, options=(("sp_attention", v),),
                                 **degrees)).entry for v in VARIANTS}
    kv = {v: e["memory_breakdown_gb"]["kv_cache"] for v, e in entries.items()}
    assert len(set(kv.values())) == 1 and kv["ring"] > 0
    tpot = {v: e["tpot_s"] for v, e in entries.items()}
    assert len(set(tpot.values())) == 1, tpot   # decode combines partial attention the same way
    assert len({e["ttft_s"] for e in entries.values()}) == 3   # but each prefill runs its own algorithm


# ------------------------------------------------------------------------------------------ errors
def test_ulysses_needs_heads_divisible_by_sigma(models):
    with pytest.raises(ConfigError) as exc:   # gqa4 at T=8: 1 KV head per TP shard, Σ = 2
        simulate(_point(models, "gqa4", "ulysses", tp=8, sp=2, topology="mi300x-128node"))
    msg = str(exc.value)
    assert "\n" not in msg and "ulysses" in msg and "use sp_attention=ring or allgather" in msg
    # decode steps do not use it
    simulate(Point("tp+sp", "mi300x-128node", model=models["gqa4"], mode="decode", seq_len=4096, tp=8, sp=2,
                   decode_tokens=1, search_max_batch=False, options=(("sp_attention", "ulysses"),)))


def test_ring_is_refused_with_unfused_attention():
    with pytest.raises(ConfigError, match="sp_attention=ring needs a flash attention kernel.*use sp_attention"):
        Assumptions.from_overrides({"stack": "megatron-lm-2022", "sp_attention": "ring"})
    ok = Assumptions.from_overrides({"stack": "megatron-lm-2022", "sp_attention": "ulysses"})
    assert ok.sp_attention == "ulysses"


@pytest.mark.parametrize(("args", "message"), [
    (["--option", "sp_attention=rings"], "option sp_attention='rings': choose one of allgather, ring, ulysses"),
    (["--option", "sp_kv_buckets=3"], "option sp_kv_buckets=3 does not divide"),
    (["--option", "sp_kv_buckets=1.5"], "expected a whole number"),
    (["--stack", "megatron-lm-2022", "--option", "sp_attention=ring"], "needs a flash attention kernel"),
    (["--option", "sp_attention=ulysses", "--model", "llama3-8b", "--tp", "8", "--gpus", "16", "-t",
      "mi300x-128node"], "not divisible by 2"),
])
def test_bad_sp_options_are_one_line_errors(args, message):
    res = CliRunner().invoke(cli, ["run", "-t", "mi300x-1node", "--schedule", "tp+sp", "--tp", "4", "--sp", "2",
                                   "--seq", "4k", *args])
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert err.startswith("error:") and message in err and "\n" not in err and "Traceback" not in res.output


def test_sweep_marks_an_impossible_ulysses_point_invalid(tmp_path):
    res = CliRunner().invoke(cli, ["sweep", "-t", "mi300x-128node", "--gpus", "16", "--model", "llama3-8b",
                                   "--schedule", "tp+sp,sp", "--tp", "8", "--sp", "2", "--degree", "2", "--seq", "4k",
                                   "--jobs", "1",
                                   "--option", "sp_attention=ulysses", "--out", str(tmp_path / "sw")])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "sw" / "results.json").read_text())["results"]
    status = {e["schedule"]: e["status"] for e in data}
    assert status == {"tp+sp": "invalid", "sp": "ok"}
    assert "sp_attention=ulysses" in next(e["reason"] for e in data if e["status"] == "invalid")


# ------------------------------------------------------------------------------------------ stack, labels, plan
def test_a_stack_sets_the_sp_algorithm_and_an_option_overrides_it(tmp_path):
    path = tmp_path / "cp.yaml"
    path.write_text("name: megatron-cp\ninherit: megatron-core\ndefaults:\n  sp_attention: ring\n")
    assert Assumptions().sp_attention == "allgather"   # the documented default: today's behaviour
    assert Assumptions.from_overrides({"stack": str(path)}).sp_attention == "ring"
    assert Assumptions.from_overrides({"stack": str(path), "sp_attention": "ulysses"}).sp_attention == "ulysses"


def test_default_multi_node_comparison_names_the_sp_algorithm():
    res = CliRunner().invoke(cli, ["run", "-t", "mi300x-128node", "--seq", "16k", "--json", "--no-timing"])
    assert res.exit_code == 0, res.output
    entries = {e["schedule"]: e for e in json.loads(res.stdout)["results"]}
    tpsp = entries["tp+sp"]
    assert tpsp["sp_attention"]["algorithm"] == "allgather" == tpsp["assumptions"]["sp_attention"]
    assert entry_label(tpsp) == "tp+sp T=8×SP=2 allgather DP=64"
    assert entries["tsp"]["sp_attention"] is None and entry_label(entries["tsp"]) == "tsp D=8 DP=128"
    text = CliRunner().invoke(cli, ["run", "-t", "mi300x-128node", "--seq", "16k", "--schedule", "tp,tp+sp",
                                    "--option", "sp_attention=ring"])
    assert text.exit_code == 0, text.output
    assert "tp+sp T=8×SP=2 ring DP=64" in text.stdout and "SP attention overlap (%)" in text.stdout


def test_plan_searches_the_sp_variants():
    points = candidate_points("mi300x-1node", "zyphra-7b", 8192, batch_max=1)
    tried = defaultdict(set)
    for p in points:
        tried[p.schedule].add(dict(p.options).get("sp_attention"))
    assert tried["sp"] == tried["tp+sp"] == set(VARIANTS)
    assert tried["tp"] == tried["tsp"] == {None}
    assert sp_variants((("sp_attention", "ring"),)) == ((("sp_attention", "ring"),),)
    assert {dict(o)["sp_attention"] for o in sp_variants((("stack", "megatron-lm-2022"),))} == {"allgather", "ulysses"}
    assert sp_variants((), mode="decode") == ((),)

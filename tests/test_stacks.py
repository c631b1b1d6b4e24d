"""Software stacks (issue 13): presets and files, Korthikanti's activation memory, recompute semantics, the
sequence-parallel all-gather redo, optimizer passes, and the CPU lane of eager stacks."""

from __future__ import annotations

from fractions import Fraction

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tspsim.cli import cli
from tspsim.core.errors import ConfigError
from tspsim.simulate import Point, build_graph, simulate
from tspsim.spec.assumptions import Assumptions
from tspsim.spec.model import MODELS
from tspsim.spec.stack import DEFAULT_STACK, load_stack, preset_names, stack_from_mapping

GPT = """name: gpt-test
hidden: {h}
layers: 2
q_heads: {a}
kv_heads: {a}
head_dim: {d}
ffn_hidden: {f}
gated_mlp: false
vocab: 1024
biases: true
tied_embeddings: true
position_embeddings: {s}
"""


def _gpt(tmp_path, h: int, a: int, s: int) -> str:
    path = tmp_path / f"gpt-{h}-{a}-{s}.yaml"
    path.write_text(GPT.format(h=h, a=a, d=h // a, f=4 * h, s=s))
    return str(path)


def _point(schedule: str, model: str, **kw) -> Point:
    opts = kw.pop("options", ())
    stack = kw.pop("stack", "megatron-lm-2022")
    return Point(schedule, kw.pop("topology", "dgx-a100-1node"), model=model,
                 options=(("stack", stack), *opts), **kw)


def _layer0_activations(point: Point) -> int:
    """Bytes of activations block 0 saves in its forward pass on the first simulated rank."""
    graph = build_graph(point)[0]
    rank = graph.ranks[0]
    return sum(d for op in graph.ops if op.rank == rank and op.layer == 0 and op.phase == "fwd"
               for _, cat, d in op.mem if cat == "activations")


# ---------------------------------------------------------------------------------- presets and files
def test_presets_load_and_the_default_is_megatron_core():
    assert set(preset_names()) >= {"megatron-lm-2022", "megatron-core", "torchtitan", "serving"}
    assert DEFAULT_STACK == "megatron-core" and Assumptions().stack.name == "megatron-core"
    for name in preset_names():
        stack = load_stack(name)
        assert stack_from_mapping(stack.to_json(), "x", "x") == stack      # the recorded form reads back
    assert load_stack("megatron-lm-2022").attention.kernel == "unfused"
    assert load_stack("torchtitan").host.launch == "host" and load_stack("serving").captures("decode")


def test_stack_defaults_sit_under_explicit_options():
    a = Assumptions.from_overrides({"stack": "megatron-lm-2022"})
    assert a.satp_seq_attention == "gather-input"                      # the stack's default
    b = Assumptions.from_overrides({"stack": "megatron-lm-2022", "satp_seq_attention": "gather-kv"})
    assert b.satp_seq_attention == "gather-kv"                         # --option wins
    assert Assumptions.from_overrides(a.to_json()) == a                # a result's assumptions read back


def test_user_stack_file_with_inherit(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("inherit: torchtitan\nhost:\n  launch_us: 12.5\n  step_overhead_us: 100\n")
    stack = load_stack(str(path))
    assert stack.name == "mine" and stack.host.launch_us == 12.5 and stack.host.launch == "host"
    assert stack.attention == load_stack("torchtitan").attention


@pytest.mark.parametrize("text, message", [
    ("inherit: megatron-core\nattention:\n  kernel: sdpa\n", ".attention.kernel: expected one of flash, unfused"),
    ("inherit: megatron-core\nkernels:\n  fused_everything: true\n", ".kernels: unknown key"),
    ("inherit: megatron-core\nhost:\n  launch_us: -1\n", ".host.launch_us"),
    ("inherit: megatron-core\nhost:\n  capture: []\n", "must capture decode"),
    ("inherit: megatron-core\nattention:\n  flash_efficiency: {h100_sxm: {fwd: 1.5, bwd: 0.3}}\n",
     "efficiency must be in (0, 1]"),
    ("inherit: megatron-core\ndefaults:\n  no_such_option: 1\n", "defaults.no_such_option: unknown option"),
    ("name: x\nattention: {kernel: flash, dropout: false}\n", "missing section 'kernels'"),
    ("inherit: nope\n", "unknown stack 'nope'"),
    ("[1, 2]\n", "must be a YAML mapping"),
])
def test_bad_stack_files_fail_with_one_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        Assumptions.from_overrides({"stack": str(path)})
    assert message in str(err.value) and "\n" not in str(err.value)
    res = CliRunner().invoke(cli, ["run", "-t", "mi300x-1node", "--stack", str(path)])
    assert res.exit_code == 2 and "Traceback" not in res.output and message in res.output


def test_list_stacks_and_unknown_stack_cli():
    res = CliRunner().invoke(cli, ["list", "stacks"])
    assert res.exit_code == 0 and "megatron-core (default)" in res.output and "torchtitan" in res.output
    res = CliRunner().invoke(cli, ["run", "-t", "mi300x-1node", "--stack", "nope"])
    assert res.exit_code == 2 and "unknown stack 'nope'" in res.output
    res = CliRunner().invoke(cli, ["run", "-t", "mi300x-1node", "--stack", "torchtitan",
                                   "--option", "stack=serving"])
    assert res.exit_code == 2 and "contradicts" in res.output


# ---------------------------------------------------------------------------------- Korthikanti Table 2
@pytest.mark.parametrize("h, a, s, b, t", [(512, 8, 512, 2, 2), (768, 12, 256, 1, 4), (1024, 16, 1024, 3, 8),
                                           (512, 8, 512, 2, 1)])
def test_unfused_activation_memory_equals_korthikanti_table_2(tmp_path, h, a, s, b, t):
    """Per-layer activations without recompute (and with selective) are exactly Table 2's, in bytes."""
    model = _gpt(tmp_path, h, a, s)
    sbh = Fraction(s * b * h)

    def got(schedule: str, recompute: str) -> int:
        return _layer0_activations(_point(schedule, model, seq_len=s, batch=b, degree=t, gpus=t,
                                          options=(("recompute", recompute),)))

    if t == 1:
        assert got("tp", "none") == sbh * (34 + Fraction(5 * a * s, h))
        return
    assert got("tp", "none") == sbh * (10 + Fraction(24, t) + Fraction(5 * a * s, h * t))
    assert got("satp-seq", "none") == sbh * (Fraction(34, t) + Fraction(5 * a * s, h * t))
    assert got("tp", "selective") == sbh * (10 + Fraction(24, t))
    assert got("satp-seq", "selective") == sbh * Fraction(34, t)


def test_megatron_22b_parameter_state_is_18_bytes_per_parameter():
    """megatron-lm-2022, megatron-22b, TP 8: params + grads + optimizer state per GPU = 18 B × parameters."""
    m = MODELS.get("megatron-22b")
    h, v, layers, t = 6144, 51200, 48, 8
    assert (m.hidden, m.vocab, m.layers, m.tied_embeddings, m.biases, m.position_embeddings) == \
        (h, v, layers, True, True, 2048)
    # per block: 12h² weights and 7h column biases split t ways, 2 row biases + 2 LayerNorms (w, b) replicated;
    # the tied vocab-parallel embedding; 2048 learned positions and the final LayerNorm replicated
    per_gpu = layers * (Fraction(12 * h * h + 7 * h, t) + 6 * h) + Fraction(v * h, t) + 2048 * h + 2 * h
    graph = build_graph(_point("tp", "megatron-22b", seq_len=2048, batch=4, degree=8))[0]
    state = sum(d for op in graph.ops if op.rank == 0 for _, cat, d in op.mem
                if cat in ("parameters", "gradients", "optimizer_state"))
    assert abs(state - 18 * per_gpu) <= 3     # three int() roundings of fractional shares
    assert m.total_params == layers * (12 * h * h + 13 * h) + v * h + 2048 * h + 2 * h


# ---------------------------------------------------------------------------------- recompute semantics
def test_selective_recompute_costs_time_and_saves_memory_with_unfused_attention(tmp_path):
    model = _gpt(tmp_path, 1024, 16, 2048)
    runs = {r: simulate(_point("tp", model, seq_len=2048, batch=2, degree=8, options=(("recompute", r),))).entry
            for r in ("none", "selective", "full")}
    t = {r: e["step_time_s"] for r, e in runs.items()}
    mem = {r: e["peak_memory_gb"] for r, e in runs.items()}
    assert t["none"] < t["selective"] < t["full"]
    assert mem["none"] > mem["selective"] > mem["full"]
    graph = build_graph(_point("tp", model, seq_len=2048, batch=2, degree=8,
                               options=(("recompute", "selective"),)))[0]
    names = {op.name for op in graph.ops if op.rank == 0 and op.layer == 0}
    assert {"L0.bwd.attn.recompute.core.qk", "L0.bwd.attn.recompute.core.softmax",
            "L0.bwd.attn.recompute.core.dropout", "L0.bwd.attn.recompute.core.av"} <= names


def test_selective_equals_none_for_flash_attention(tmp_path):
    """A flash kernel's backward recomputes the core attention anyway: selective changes nothing."""
    model = _gpt(tmp_path, 1024, 16, 2048)
    runs = {r: simulate(_point("tp", model, stack="megatron-core", seq_len=2048, batch=2, degree=8,
                               options=(("recompute", r),))).entry for r in ("none", "selective")}
    assert runs["none"]["step_time_s"] == runs["selective"]["step_time_s"]
    assert runs["none"]["peak_memory_gb"] == runs["selective"]["peak_memory_gb"]


def test_recompute_num_layers_recomputes_only_the_first_blocks(tmp_path):
    model = tmp_path / "deep.yaml"
    model.write_text(GPT.format(h=512, a=8, d=64, f=2048, s=512).replace("layers: 2", "layers: 4"))
    kw = {"seq_len": 512, "batch": 2, "degree": 2, "gpus": 2}

    def run(**opts):
        return simulate(_point("tp", str(model), options=tuple(opts.items()), **kw)).entry

    none, full, two = run(recompute="none"), run(recompute="full"), run(recompute="full", recompute_num_layers=2)
    assert run(recompute="full", recompute_num_layers=4)["step_time_s"] == full["step_time_s"]
    assert none["step_time_s"] < two["step_time_s"] < full["step_time_s"]
    assert none["peak_memory_gb"] > two["peak_memory_gb"] > full["peak_memory_gb"]
    graph = build_graph(_point("tp", str(model), options=(("recompute", "full"), ("recompute_num_layers", 2)),
                               **kw))[0]
    recomputed = {op.layer for op in graph.ops if ".recompute." in op.name}
    assert recomputed == {0, 1}
    with pytest.raises(ConfigError, match="applies to recompute=full"):
        Assumptions.from_overrides({"recompute": "selective", "recompute_num_layers": "2"})


# ---------------------------------------------------------------------------------- SP all-gather redo
def test_sequence_parallel_all_gather_redo_bytes_are_exact(tmp_path):
    """satp-seq gather-input under Megatron: two input all-gathers redone per layer, (p−1)/p·b·s·h·2 each."""
    h, a, s, b, p = 512, 8, 512, 2, 4
    model = _gpt(tmp_path, h, a, s)
    res = simulate(_point("satp-seq", model, seq_len=s, batch=b, degree=p, gpus=p))
    tl = res.timeline
    redo = [op for op in tl.ops if op.name.endswith("input_all_gather_redo")]
    assert len(redo) == 2 * 2 * p                                  # 2 per layer, 2 layers, p ranks
    for op in redo:
        assert op.nbytes == b * s * h * 2 and op.phase == "bwd"
        assert tl.op_sent_bytes[op.id] == Fraction(p - 1, p) * b * s * h * 2
    # the redo overlaps the input-gradient GEMM it runs beside
    span = {op_id: (t0, t1) for op_id, t0, t1 in tl.spans}
    ops = {op.name: op for op in tl.ops if op.rank == 0}
    ag, dgrad = span[ops["L1.bwd.mlp.input_all_gather_redo"].id], span[ops["L1.bwd.mlp.fc1.dgrad"].id]
    assert ag[0] < dgrad[1] and dgrad[0] < ag[1]
    # without the redo (gather-kv, or a stack that keeps the gathered input) nothing is re-gathered
    for opts, stack in (((("satp_seq_attention", "gather-kv"),), "megatron-lm-2022"), ((), "torchtitan")):
        g = build_graph(_point("satp-seq", model, stack=stack, seq_len=s, batch=b, degree=p, gpus=p,
                               options=opts))[0]
        assert not any(op.name.endswith("input_all_gather_redo") for op in g.ops)


def test_redo_saves_the_sharded_input_instead_of_the_gathered_one(tmp_path):
    h, a, s, b, p = 512, 8, 512, 2, 4
    model = _gpt(tmp_path, h, a, s)
    keep = tmp_path / "keep-gathered.yaml"
    keep.write_text("inherit: megatron-lm-2022\nkernels:\n  sp_input_regather: false\n")
    kw = {"seq_len": s, "batch": b, "degree": p, "gpus": p, "options": (("recompute", "none"),)}
    redo = _layer0_activations(_point("satp-seq", model, **kw))
    kept = _layer0_activations(_point("satp-seq", model, stack=str(keep), **kw))
    # the QKV and fc1 inputs: gathered (b·s·h·2 each) instead of the rank's shard (b·s·h·2/p)
    assert kept - redo == 2 * (b * s * h * 2 - b * s * h * 2 // p)


# ---------------------------------------------------------------------------------- async TP all-reduce
def _spans(point: Point) -> tuple[float, dict[str, tuple[float, float]], list]:
    res = simulate(point)
    ops = res.timeline.ops
    rank = min(op.rank for op in ops)
    return (res.entry["step_time_s"],
            {ops[i].name: (s, t) for i, s, t in res.timeline.spans if ops[i].rank == rank and ops[i].layer == 0},
            [op for op in ops if op.rank == rank and op.layer == 0])


def test_async_tp_grad_all_reduce_overlaps_the_weight_gradient_gemm(tmp_path):
    """Megatron-LM's async TP all-reduce: dgrad GEMM, then the input-gradient all-reduce alongside wgrad."""
    model = _gpt(tmp_path, 1024, 8, 1024)
    blocking = tmp_path / "blocking.yaml"
    blocking.write_text("inherit: megatron-lm-2022\nkernels:\n  tp_async_grad_allreduce: false\n")
    kw = {"seq_len": 1024, "batch": 2, "degree": 4, "gpus": 4, "options": (("recompute", "none"),)}
    step_async, spans, ops = _spans(_point("tp", model, **kw))
    step_blocking, spans_b, ops_b = _spans(_point("tp", model, stack=str(blocking), **kw))
    by_name = {op.name: op for op in ops}
    for sub in ("attn.qkv", "mlp.fc1"):
        dgrad, wgrad = by_name[f"L0.bwd.{sub}.dgrad"], by_name[f"L0.bwd.{sub}.wgrad"]
        reduce = by_name[f"L0.bwd.{sub.split('.')[0]}.grad_all_reduce"]
        assert dgrad.id in reduce.deps and wgrad.id not in reduce.deps
        assert spans[reduce.name][0] == pytest.approx(spans[wgrad.name][0])     # launched together
        assert dgrad.flops == wgrad.flops                                           # the pair's halves
        assert f"L0.bwd.{sub}" in {op.name for op in ops_b} and f"L0.bwd.{sub}.dgrad" not in spans_b
        assert by_name[f"L0.bwd.{sub}.dgrad"].flops * 2 == next(
            op.flops for op in ops_b if op.name == f"L0.bwd.{sub}")
    assert step_async < step_blocking
    # omitted key: blocking; sequence parallelism keeps its own reduce-scatter overlap (no all-reduce)
    assert not load_stack("torchtitan").kernels.tp_async_grad_allreduce
    assert load_stack("megatron-lm-2022").kernels.tp_async_grad_allreduce
    g = build_graph(_point("satp-seq", model, **kw))[0]
    assert not any(op.kind == "all_reduce" and op.phase == "bwd" and op.layer == 0 for op in g.ops)


# ---------------------------------------------------------------------------------- optimizer passes
def test_optimizer_passes_follow_the_stack(tmp_path):
    model = _gpt(tmp_path, 512, 8, 512)
    kw = {"seq_len": 512, "batch": 1, "degree": 2, "gpus": 2}
    for stack, passes in (("megatron-lm-2022", ["optimizer.grad_unscale", "optimizer.grad_norm", "optimizer.adam",
                                                "optimizer.param_copy", "optimizer.zero_grad"]),
                          ("torchtitan", ["optimizer.grad_norm", "optimizer.adam", "optimizer.param_copy"])):
        graph = build_graph(_point("tp", model, stack=stack, **kw))[0]
        ops = [op for op in graph.ops if op.rank == 0 and op.kind == "optimizer"]
        assert [op.name for op in ops] == passes
        params = {op.name: op.hbm_bytes for op in ops}
        p = params["optimizer.grad_norm"] / 4           # grad_norm reads every fp32 gradient once
        assert params["optimizer.adam"] == pytest.approx(p * (4 + 2 * (4 + 8)))     # g, master, m, v
        assert params["optimizer.param_copy"] == pytest.approx(p * (4 + 2))         # master in, weights out


# ---------------------------------------------------------------------------------- the CPU lane
def test_eager_stack_on_a_tiny_model_is_host_bound_and_a_captured_one_is_not(tmp_path):
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("name: tiny\nhidden: 256\nlayers: 4\nq_heads: 4\nkv_heads: 4\nhead_dim: 64\nffn_hidden: 1024\n"
                    "gated_mlp: true\nvocab: 512\n")
    launch_us = 5.0                                     # h100-dgx-1node kernel_launch_us
    for mode in ("train", "decode"):
        kw = {"topology": "h100-dgx-1node", "seq_len": 64, "batch": 1, "degree": 1, "gpus": 1, "mode": mode,
              "decode_tokens": 1 if mode == "decode" else 0, "search_max_batch": False}
        eager = simulate(_point("tp", str(tiny), stack="torchtitan", **kw))
        kernels = sum(1 for op in eager.timeline.ops if op.kind not in ("memory", "host"))
        launches = [op for op in eager.timeline.ops if op.kind == "host"]
        assert len(launches) == kernels and all(op.stream == "host" for op in launches)
        step, host = eager.entry["step_time_s"], kernels * launch_us * 1e-6
        # the CPU sets the pace: the step is its launches plus the last kernels' tail (the optimizer passes)
        assert host <= step <= 1.1 * host, mode
        assert eager.entry["compute_s"] < 0.5 * step, mode          # the GPU mostly waits
    decode = {"topology": "h100-dgx-1node", "seq_len": 64, "batch": 1, "degree": 1, "gpus": 1, "mode": "decode",
              "decode_tokens": 1, "search_max_batch": False}
    captured = simulate(_point("tp", str(tiny), stack="serving", **decode))
    kernels = sum(1 for op in captured.timeline.ops if op.kind not in ("memory", "host"))
    assert [op.name for op in captured.timeline.ops if op.kind == "host"] == ["host.graph_launch"]
    assert captured.entry["step_time_s"] < 0.5 * kernels * launch_us * 1e-6


def test_step_overhead_and_launch_cost_come_from_the_stack(tmp_path):
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("name: tiny\nhidden: 256\nlayers: 2\nq_heads: 4\nkv_heads: 4\nhead_dim: 64\nffn_hidden: 1024\n"
                    "gated_mlp: true\nvocab: 512\n")
    stack = tmp_path / "slow-host.yaml"
    stack.write_text("inherit: torchtitan\nhost:\n  launch_us: 20\n  step_overhead_us: 1000\n")
    res = simulate(_point("tp", str(tiny), stack=str(stack), topology="h100-dgx-1node", seq_len=64, batch=1,
                          degree=1, gpus=1))
    kernels = sum(1 for op in res.timeline.ops if op.kind not in ("memory", "host"))
    expected = (1000 + 20 * kernels) * 1e-6
    assert expected <= res.entry["step_time_s"] <= 1.02 * expected
    # the CPU lane is not GPU time: overlap and compute metrics ignore it
    assert res.entry["compute_s"] < 0.5 * res.entry["step_time_s"]


def test_host_lane_survives_generate_and_replay(tmp_path):
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("name: tiny\nhidden: 256\nlayers: 2\nq_heads: 4\nkv_heads: 4\nhead_dim: 64\nffn_hidden: 1024\n"
                    "gated_mlp: true\nvocab: 512\n")
    trace = tmp_path / "t.json"
    args = ["-t", "h100-dgx-1node", "--model", str(tiny), "--schedule", "tp", "--degree", "2", "--seq", "128",
            "--stack", "torchtitan"]
    assert CliRunner().invoke(cli, ["generate", *args[:-2], "--stack", "torchtitan", "-o", str(trace)]).exit_code == 0
    import json

    ran = json.loads(CliRunner().invoke(cli, ["run", *args, "--json", "--no-timing"]).stdout)["results"][0]
    replayed = json.loads(CliRunner().invoke(cli, ["replay", str(trace), "-t", "h100-dgx-1node", "--json"]).stdout)
    rep = replayed["results"][0]
    assert rep["stack"] == ran["stack"] == "torchtitan"
    assert rep["step_time_s"] == ran["step_time_s"]
    assert ran["assumptions"]["stack"]["host"]["launch"] == "host"


def test_viewer_shows_a_host_lane(tmp_path):
    from tspsim.outputs.viewer.figure import build_timeline_figure

    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("name: tiny\nhidden: 256\nlayers: 1\nq_heads: 4\nkv_heads: 4\nhead_dim: 64\nffn_hidden: 1024\n"
                    "gated_mlp: true\nvocab: 512\n")
    res = simulate(_point("tp", str(tiny), stack="torchtitan", topology="h100-dgx-1node", seq_len=64, batch=1,
                          degree=2, gpus=2))
    fig = build_timeline_figure(res.entry, res.timeline)
    assert "host" in list(fig.layout.yaxis.ticktext)


# ---------------------------------------------------------------------------------- costs and records
def test_flash_efficiency_override_applies_to_the_named_gpu_only(tmp_path):
    model = _gpt(tmp_path, 1024, 16, 2048)
    kw = {"seq_len": 2048, "batch": 1, "degree": 1, "gpus": 1, "options": (("recompute", "none"),)}

    def attn_time(stack: str, topo: str) -> float:
        res = simulate(_point("tp", model, stack=stack, topology=topo, **kw))
        span = {i: t1 - t0 for i, t0, t1 in res.timeline.spans}
        return sum(span[op.id] for op in res.timeline.ops if op.kind == "attention_fwd")

    assert attn_time("torchtitan", "h100-dgx-1node") > 1.5 * attn_time("megatron-core", "h100-dgx-1node")
    # no override for A100: the same kernel time (the device gap differs: 1 µs queued vs the launch overhead)
    assert attn_time("torchtitan", "dgx-a100-1node") == pytest.approx(attn_time("megatron-core", "dgx-a100-1node"),
                                                                        abs=2 * 5e-6)


def test_run_entry_and_report_record_the_stack():
    res = CliRunner().invoke(cli, ["run", "-t", "mi300x-1node", "--model", "llama3-8b", "--schedule", "tp",
                                   "--seq", "1k", "--stack", "megatron-lm-2022"])
    assert res.exit_code == 0
    assert "stack megatron-lm-2022 (--stack NAME; README: Software stacks): unfused attention with dropout" in \
        res.stdout.replace("\n  ", " ")
    import json

    res = CliRunner().invoke(cli, ["run", "-t", "mi300x-1node", "--model", "llama3-8b", "--schedule", "tp",
                                   "--seq", "1k", "--json", "--no-timing"])
    entry = json.loads(res.stdout)["results"][0]
    assert entry["stack"] == "megatron-core"
    assert entry["assumptions"]["stack"] == load_stack("megatron-core").to_json()


def test_malformed_kernel_costs_in_a_trace_are_one_line_errors(tmp_path):
    import json

    trace = tmp_path / "t.json"
    res = CliRunner().invoke(cli, ["generate", "-t", "h100-dgx-1node", "--model", "llama3-8b", "--schedule", "tp",
                                   "--seq", "1k", "--stack", "torchtitan", "-o", str(trace)])
    assert res.exit_code == 0
    doc = json.loads(trace.read_text())
    doc["meta"]["kernel_costs"]["attention_efficiency"]["h100_sxm"] = [2.0, 0.3]
    trace.write_text(json.dumps(doc))
    res = CliRunner().invoke(cli, ["replay", str(trace), "-t", "h100-dgx-1node"])
    assert res.exit_code == 2 and "kernel_costs.attention_efficiency.h100_sxm" in res.output


def test_validate_stack_rows():
    """Korthikanti's formulas and the 18 B/parameter state hold exactly; the torchtitan MFU row is reported."""
    from tspsim.explore.validation_stacks import stack_rows

    rows = {r.id: r for r in stack_rows()}
    exact = [r for r in rows.values() if r.tolerance_pct == 0.0 and r.published is not None]
    assert len(exact) == 6 and all(r.within and r.error_pct == 0.0 for r in exact)
    tt = rows["mfu.h100-dgx-1node.torchtitan"]
    assert tt.simulated is not None and (tt.published_low, tt.published_high) == (33.0, 45.0)
    assert "torchtitan" in tt.note and tt.kind == "independent"


def test_sweep_and_plan_take_a_stack(tmp_path):
    import json

    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("name: tiny\nhidden: 256\nlayers: 2\nq_heads: 4\nkv_heads: 4\nhead_dim: 64\nffn_hidden: 1024\n"
                    "gated_mlp: true\nvocab: 512\n")
    res = CliRunner().invoke(cli, ["sweep", "-t", "mi300x-1node", "--model", str(tiny), "--schedule", "tp",
                                   "--degree", "2", "--seq", "1k", "--jobs", "1", "--stack", "megatron-lm-2022",
                                   "--out", str(tmp_path / "sw")])
    assert res.exit_code == 0, res.output
    entry = json.loads((tmp_path / "sw" / "results.json").read_text())["results"][0]
    assert entry["stack"] == "megatron-lm-2022"
    res = CliRunner().invoke(cli, ["plan", "-t", "mi300x-1node", "--model", str(tiny), "--seq", "1k",
                                   "--batch-max", "1", "--jobs", "1", "--stack", "torchtitan", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["best"]["stack"] == "torchtitan"


def test_cache_key_covers_the_resolved_stack(tmp_path):
    from tspsim.explore.cache import point_key

    stack = tmp_path / "mine.yaml"
    stack.write_text("inherit: megatron-core\n")
    point = Point("tp", "mi300x-1node", degree=8, options=(("stack", str(stack)),))
    before = point_key(point)
    stack.write_text("inherit: megatron-core\noptimizer:\n  zero_grad: false\n")
    assert point_key(point) != before


def test_model_files_take_biases_and_position_embeddings(tmp_path):
    from tspsim.spec.model import load_model

    path = tmp_path / "m.yaml"
    path.write_text(GPT.format(h=512, a=8, d=64, f=2048, s=1024))
    m = load_model(str(path))
    assert m.biases and m.position_embeddings == 1024 and m.tied_embeddings
    assert m.layer_params == 12 * 512 * 512 + (3 * 512 + 2048) + 2 * 512 + 4 * 512
    assert m.embedding_params == 1024 * 512 + 1024 * 512 + 2 * 512
    assert "biases" not in MODELS.get("llama3-8b").to_json()       # unset fields keep old model hashes
    path.write_text(GPT.format(h=512, a=8, d=64, f=2048, s=1024).replace("biases: true", "biases: 1"))
    with pytest.raises(ConfigError, match="biases: expected true or false"):
        load_model(str(path))
    path.write_text(GPT.format(h=512, a=8, d=64, f=2048, s=-1))
    with pytest.raises(ConfigError, match="position_embeddings: expected a whole number ≥ 0"):
        load_model(str(path))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(heads=st.sampled_from([4, 8, 16]), head_dim=st.sampled_from([32, 64]), seq=st.sampled_from([128, 256, 384]),
       batch=st.integers(1, 3), t=st.sampled_from([1, 2, 4]), sp=st.booleans(), selective=st.booleans())
def test_korthikanti_table_2_holds_for_any_shape(tmp_path, heads, head_dim, seq, batch, t, sp, selective):
    """Property: per-layer activations of the unfused stack are Table 2's formula for every shape and layout."""
    h, a, s, b = heads * head_dim, heads, seq, batch
    model = _gpt(tmp_path, h, a, s)
    schedule = "satp-seq" if sp and t > 1 else "tp"
    got = _layer0_activations(_point(schedule, model, seq_len=s, batch=b, degree=t, gpus=t,
                                     options=(("recompute", "selective" if selective else "none"),)))
    sbh = Fraction(s * b * h)
    replicated = Fraction(10, t) if schedule == "satp-seq" else 10
    scores = 0 if selective else Fraction(5 * a * s, h * t)
    assert got == sbh * (replicated + Fraction(24, t) + scores)

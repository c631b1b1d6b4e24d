"""Epilogues of GEMMs run in waves, and weight gradients accumulated in fp32 (tspsim/engine/costs.py:
epilogue_bytes, epilogue_seconds; tspsim/schedules/context.py: BuildContext.gemm, wgrad_accumulate_bytes).

Where the stack tiles GEMMs one thread block per SM in waves (``kernels.gemm_wave_tile``), each tile's epilogue
(store the output, after loading the old value when the GEMM accumulates) follows its main loop:

    time = max(FLOPs / (peak · eff) + epilogue bytes / (HBM_bw · eff_hbm), HBM bytes / (HBM_bw · eff_hbm)) + launch

and a weight-gradient GEMM of a stack with ``kernels.wgrad_accumulate: fp32`` reads and writes 4 + 4 bytes per
gradient element (β = 1 into the fp32 main gradient) instead of writing s.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from tspsim.cli import cli
from tspsim.core.errors import ConfigError, TraceError
from tspsim.engine.costs import compute_seconds, epilogue_bytes, epilogue_seconds, gemm_wave_factor, kernel_gpu
from tspsim.opgraph import Op
from tspsim.schedules.context import gemm_bytes, gemm_flops, wgrad_accumulate_bytes
from tspsim.simulate import Point, build_graph
from tspsim.spec.stack import load_stack, stack_from_mapping
from tspsim.spec.topology_file import load_topology

TILE = (256, 128)
META = {"kernel_costs": {"kernel_gap_us": None, "attention_efficiency": {},
                         "gemm_wave_tile": {"a100_sxm": [256, 128]}, "gemm_operand_bytes": 2}}


@pytest.fixture(scope="module")
def a100():
    return load_topology("dgx-a100-1node").gpu


@pytest.fixture(scope="module")
def tiled(a100):
    return kernel_gpu(a100, META)


def _gemm(m: int, n: int, k: int, scale: float = 1.0, batch: int = 1, extra: float = 0.0) -> Op:
    shape = (m, n, k) if batch == 1 else (m, n, k, batch)
    return Op(0, 0, "compute", "gemm", "g", flops=scale * batch * gemm_flops(m, n, k),
              hbm_bytes=scale * batch * gemm_bytes(m, n, k, 2) + extra, shape=shape)


def _rate(gpu) -> float:
    return gpu.hbm_TBps * 1e12 * gpu.hbm_efficiency


# ---------------------------------------------------------------------------------- bytes
def test_the_graph_tells_the_gpu_its_tile_and_operand_size(a100, tiled):
    assert (tiled.gemm_wave_tile, tiled.gemm_operand_bytes) == (TILE, 2)
    assert (a100.gemm_wave_tile, a100.gemm_operand_bytes) == (None, 0)
    old = {"kernel_costs": {k: v for k, v in META["kernel_costs"].items() if k != "gemm_operand_bytes"}}
    assert kernel_gpu(a100, old).gemm_operand_bytes == 0        # a trace written before the key: no epilogue term
    for bad in (-1, 9, 2.0, True, "2"):
        meta = {"kernel_costs": {**META["kernel_costs"], "gemm_operand_bytes": bad}}
        with pytest.raises(TraceError, match="gemm_operand_bytes"):
            kernel_gpu(a100, meta)


def test_a_forward_gemm_stores_its_output(tiled):
    """GPT-3 175B QKV at TP 8: the output 2048 × 4608 in 2 bytes."""
    assert epilogue_bytes(_gemm(2048, 4608, 12288), tiled) == 2048 * 4608 * 2
    assert epilogue_seconds(_gemm(2048, 4608, 12288), tiled) == 2048 * 4608 * 2 / _rate(tiled)


def test_a_backward_pair_stores_the_input_gradient_and_accumulates_the_weight_gradient(tiled):
    """dgrad writes m×k in 2 bytes; the wgrad k×n, accumulated in fp32: read 4 + write 4 bytes per element."""
    m, n, k = 2048, 4608, 12288
    plain = _gemm(m, n, k, scale=2)
    assert epilogue_bytes(plain, tiled) == (m * k + k * n) * 2
    acc = _gemm(m, n, k, scale=2, extra=wgrad_accumulate_bytes(k * n, 2))
    assert wgrad_accumulate_bytes(k * n, 2) == k * n * 6
    assert epilogue_bytes(acc, tiled) == m * k * 2 + k * n * 8
    # the 175B QKV weight gradient alone: 56.6 M elements · 8 bytes = 453 MB → 0.247 ms at 2.039 TB/s · 0.9
    assert k * n * 8 / _rate(tiled) == pytest.approx(2.467e-4, rel=1e-3)


def test_a_lone_weight_gradient_gemm_accumulates_its_output(tiled):
    """Megatron SP's redo splits the pair: wgrad (cols × H, k = tokens) alone, accumulated in fp32."""
    cols, H, n = 4608, 12288, 2048
    op = _gemm(cols, H, n, extra=wgrad_accumulate_bytes(cols * H, 2))
    assert epilogue_bytes(op, tiled) == cols * H * 8


def test_batched_attention_pairs_store_their_two_outputs(tiled):
    """P·V backward of 12 heads, seq 2048, d 128 (forward shape (q, d, kv)): dP is q×kv, dV kv×d per head; dV's
    12·8·1 = 96 tiles of 256×128 are less than a wave (left out); at 24 heads both count."""
    q, kv, d, bh = 2048, 2048, 128, 12
    assert epilogue_bytes(_gemm(q, d, kv, scale=2, batch=bh), tiled) == bh * q * kv * 2
    assert epilogue_bytes(_gemm(q, d, kv, scale=2, batch=2 * bh), tiled) == 2 * bh * (q * kv + kv * d) * 2
    assert epilogue_bytes(_gemm(q, kv, d, batch=bh), tiled) == bh * q * kv * 2   # QKᵀ forward: the scores


def test_no_epilogue_term_outside_the_wave_model(a100, tiled):
    op = _gemm(2048, 4608, 12288)
    assert epilogue_bytes(op, a100) == 0.0                                    # no tile
    assert epilogue_bytes(op, replace(tiled, gemm_operand_bytes=0)) == 0.0    # operand size unknown
    assert epilogue_bytes(_gemm(8, 4608, 12288), tiled) == 0.0                # less than a wave of tiles
    assert epilogue_bytes(_gemm(2048, 4608, 1024, scale=2), tiled) == 1024 * 4608 * 2  # dgrad: 64 tiles, left out
    assert epilogue_bytes(_gemm(64, 64, 64, scale=2), tiled) == 0.0
    assert epilogue_bytes(replace(op, flops=3 * op.flops), tiled) == 0.0      # not one GEMM nor a pair
    assert epilogue_bytes(replace(op, kind="elementwise"), tiled) == 0.0
    assert epilogue_bytes(replace(op, shape=()), tiled) == 0.0


# ---------------------------------------------------------------------------------- time
def test_epilogue_follows_the_main_loop_of_a_compute_bound_gemm(tiled):
    op = _gemm(2048, 4608, 12288)
    launch = tiled.kernel_launch_us * 1e-6
    t_flops = op.flops / (tiled.peak_bf16_TFLOPS * 1e12 * tiled.gemm_efficiency * gemm_wave_factor(op, tiled)
                          * (op.flops / 1e9) / (op.flops / 1e9 + tiled.gemm_half_GFLOP))
    assert compute_seconds(op, tiled) == pytest.approx(t_flops + epilogue_seconds(op, tiled) + launch, rel=1e-12)
    assert compute_seconds(op, tiled) > compute_seconds(op, replace(tiled, gemm_operand_bytes=0))


def test_a_gemm_never_beats_its_hbm_traffic(tiled):
    """An accumulating GEMM of tiny K: main loop and epilogue together are still no faster than its bytes."""
    op = _gemm(4096, 4096, 8, scale=2, extra=wgrad_accumulate_bytes(8 * 4096, 2))
    t_mem = op.hbm_bytes / _rate(tiled)
    assert compute_seconds(op, tiled) >= t_mem + tiled.kernel_launch_us * 1e-6 - 1e-15


# ---------------------------------------------------------------------------------- stacks and graphs
def test_megatron_lm_2022_accumulates_weight_gradients_in_fp32_and_other_stacks_do_not():
    stack = load_stack("megatron-lm-2022")
    assert stack.kernels.wgrad_accumulate == "fp32"
    assert "weight gradients accumulated in fp32" in stack.summary()
    assert stack_from_mapping(stack.to_json(), "x", "x").kernels.wgrad_accumulate == "fp32"
    for name in ("megatron-core", "torchtitan", "serving"):
        other = load_stack(name)
        assert other.kernels.wgrad_accumulate == "none"
        assert "wgrad_accumulate" not in other.to_json()["kernels"]   # their recorded results are unchanged


def test_bad_wgrad_accumulate_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("inherit: megatron-lm-2022\nkernels:\n  wgrad_accumulate: bf16\n")
    with pytest.raises(ConfigError, match=r"\.kernels\.wgrad_accumulate: expected one of none, fp32, got"):
        load_stack(str(path))
    res = CliRunner().invoke(cli, ["run", "-t", "dgx-a100-1node", "--stack", str(path)])
    assert res.exit_code == 2 and "Traceback" not in res.output and "wgrad_accumulate" in res.output


@pytest.fixture(scope="module")
def plain_2022(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("stack") / "plain.yaml"
    path.write_text("inherit: megatron-lm-2022\nkernels:\n  wgrad_accumulate: none\n")
    return str(path)


@pytest.mark.parametrize("schedule", ["tp", "satp-seq"])
def test_only_weight_gradients_carry_the_accumulation(schedule, plain_2022):
    """Same graph with the key on and off: every op equal but the weight-gradient GEMMs (lone ``.wgrad`` ops and
    linear-layer pairs), whose bytes grow by 6 bytes per weight-gradient element, exactly."""
    def graph(stack: str):
        point = Point(schedule, "dgx-a100-1node", model="megatron-22b", seq_len=2048, degree=8,
                      options=(("stack", stack), ("recompute", "selective")))
        return build_graph(point)[0]

    on, off = graph("megatron-lm-2022"), graph(plain_2022)
    assert len(on.ops) == len(off.ops)
    grown = 0
    for a, b in zip(on.ops, off.ops):
        assert (a.name, a.flops, a.shape) == (b.name, b.flops, b.shape)
        if a.hbm_bytes == b.hbm_bytes:
            continue
        grown += 1
        m, n, k = a.shape[:3]
        pair = a.flops == 2 * gemm_flops(m, n, k)
        assert a.kind == "gemm" and a.phase == "bwd" and (pair or a.name.endswith(".wgrad"))
        assert "core" not in a.name                                  # attention has no weights
        assert a.hbm_bytes - b.hbm_bytes == (k * n if pair else m * n) * 6
    layers = 48
    assert grown >= 4 * layers                                        # QKV, out, fc1, fc2 in every block


def test_attention_backward_pairs_carry_their_forward_shape():
    """A backward pair has its forward GEMM's (m, n, k): outputs m×k and k×n, as the wave and epilogue models read."""
    point = Point("tp", "dgx-a100-1node", model="megatron-22b", seq_len=2048, degree=8,
                  options=(("stack", "megatron-lm-2022"), ("recompute", "none")))
    ops = {op.name: op for op in build_graph(point)[0].ops if op.rank == 0 and op.layer == 3}
    for leaf in ("qk", "av"):
        fwd, bwd = ops[f"L3.attn.core.{leaf}"], ops[f"L3.bwd.attn.core.{leaf}"]
        assert bwd.shape == fwd.shape and bwd.flops == 2 * fwd.flops


def test_the_epilogues_slow_a_megatron_2022_step(tmp_path, plain_2022):
    """Same model and layout: no tiles < tiles without accumulation < tiles with fp32 accumulation."""
    flat = tmp_path / "flat.yaml"
    flat.write_text("inherit: megatron-lm-2022\nkernels:\n  gemm_wave_tile: {}\n")
    args = ["run", "-t", "dgx-a100-1node", "--model", "megatron-22b", "--seq", "2k", "--batch", "1",
            "--schedule", "tp", "--degree", "8", "--json"]
    runner = CliRunner()

    def step(stack: str) -> float:
        res = runner.invoke(cli, [*args, "--stack", stack])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)["results"][0]["step_time_s"]

    assert step(str(flat)) < step(plain_2022) < step("megatron-lm-2022")

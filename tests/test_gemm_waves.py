"""Tile and wave quantisation of GEMMs (tspsim/engine/costs.py: wave_efficiency, gemm_wave_factor).

A stack whose GEMM library runs data-parallel tiles, one per SM, in waves of ``sm_count`` (cuBLAS 11 on
A100: 256×128 tiles, 108 SMs; NVIDIA "Matrix Multiplication Background User's Guide") pays for the partial
last wave and partial edge tiles: efficiency = batch·m·n / (⌈T / SMs⌉ · SMs · r · c), T the tile count.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from tspsim.cli import cli
from tspsim.core.errors import ConfigError, TraceError
from tspsim.engine.bound import step_time_lower_bound
from tspsim.engine.costs import compute_seconds, gemm_wave_factor, kernel_gpu, wave_efficiency
from tspsim.engine.sim import replay
from tspsim.opgraph import Op
from tspsim.opgraph.builder import GraphBuilder
from tspsim.schedules.context import gemm_bytes, gemm_flops
from tspsim.spec.stack import load_stack, stack_from_mapping
from tspsim.spec.topology_file import load_topology

A100_TILE = (256, 128)


@pytest.fixture(scope="module")
def a100():
    return load_topology("dgx-a100-1node").gpu


def _gemm(m: int, n: int, k: int, scale: float = 1.0, batch: int = 1) -> Op:
    shape = (m, n, k) if batch == 1 else (m, n, k, batch)
    return Op(0, 0, "compute", "gemm", "g", flops=scale * batch * gemm_flops(m, n, k),
              hbm_bytes=scale * batch * gemm_bytes(m, n, k, 2), shape=shape)


# ---------------------------------------------------------------------------------- the formula
def test_gpt3_175b_qkv_projection_runs_three_waves_of_which_the_last_is_two_thirds_full():
    """TP 8, seq 2048: C is 2048 × 4608 → 8·36 = 288 tiles of 256×128 → 3 waves of 108 → 288/324 = 8/9."""
    assert wave_efficiency(2048, 4608, 1, A100_TILE, 108) == pytest.approx(8 / 9, rel=1e-15)


def test_whole_waves_of_whole_tiles_lose_nothing():
    assert wave_efficiency(256 * 108, 128, 1, A100_TILE, 108) == 1.0
    assert wave_efficiency(12288, 4608, 1, A100_TILE, 108) == 1.0          # 48·36 = 1728 = 16 waves


def test_partial_edge_tiles_count_as_whole_tiles():
    """m = 2049 needs a ninth row of 256-row tiles (or a 17th of 128): 9·36 = 324 tiles = 3 whole waves."""
    assert wave_efficiency(2049, 4608, 1, A100_TILE, 108) == pytest.approx(2049 * 4608 / (3 * 108 * 256 * 128),
                                                                          rel=1e-15)


def test_the_better_tile_orientation_is_used():
    """384 × 256 on 3 SMs: 256×128 tiles give 2·2 = 4 tiles (2 waves), 128×256 give 3·1 = 3 (1 wave): the latter."""
    assert wave_efficiency(384, 256, 1, A100_TILE, 3) == pytest.approx(384 * 256 / (1 * 3 * 128 * 256), rel=1e-15)


def test_fewer_tiles_than_sms_is_outside_the_model():
    """Below one wave the library picks smaller tiles or splits K: the smooth roll-off covers it."""
    assert wave_efficiency(8, 4608, 1, A100_TILE, 108) == 1.0
    assert wave_efficiency(2048, 256, 1, A100_TILE, 108) == 1.0


def test_batched_gemm_tiles_every_product():
    """Unfused attention QKᵀ, 175B TP 8: 12 heads × (2048 × 2048) → 12·8·16 = 1536 tiles → 15 waves."""
    assert wave_efficiency(2048, 2048, 12, A100_TILE, 108) == pytest.approx(1536 / 1620, rel=1e-15)


@settings(max_examples=200, deadline=None)
@given(m=st.integers(1, 50_000), n=st.integers(1, 50_000), batch=st.integers(1, 64),
       r=st.sampled_from([64, 128, 256]), c=st.sampled_from([64, 128, 256]), sms=st.integers(1, 304))
def test_wave_efficiency_is_a_fraction(m, n, batch, r, c, sms):
    eff = wave_efficiency(m, n, batch, (r, c), sms)
    assert 0.0 < eff <= 1.0
    # never below the worst case of one extra, nearly empty wave of nearly empty tiles
    tiles = batch * math.ceil(m / r) * math.ceil(n / c)
    if tiles >= sms:
        assert eff >= batch * m * n / ((tiles // sms + 1) * sms * r * c) - 1e-12


# ---------------------------------------------------------------------------------- ops
def test_forward_gemm_uses_its_output_shape(a100):
    gpu = replace(a100, gemm_wave_tile=A100_TILE)
    assert gemm_wave_factor(_gemm(2048, 4608, 12288), gpu) == pytest.approx(8 / 9, rel=1e-15)


def test_backward_pair_is_the_harmonic_mean_of_dgrad_and_wgrad(a100):
    """dgrad writes m×k, wgrad k×n, equal FLOPs: time = F/(P·w_d) + F/(P·w_w) → factor 2/(1/w_d + 1/w_w)."""
    gpu = replace(a100, gemm_wave_tile=A100_TILE)
    m, n, k = 2048, 4608, 12288
    dgrad, wgrad = wave_efficiency(m, k, 1, A100_TILE, 108), wave_efficiency(k, n, 1, A100_TILE, 108)
    assert (dgrad, wgrad) == (pytest.approx(8 / 9), 1.0)
    assert gemm_wave_factor(_gemm(m, n, k, scale=2), gpu) == pytest.approx(2 / (1 / dgrad + 1 / wgrad), rel=1e-15)


def test_batched_backward_pair_tiles_each_product(a100):
    gpu = replace(a100, gemm_wave_tile=A100_TILE)
    q, kv, d, bh = 2048, 2048, 128, 12
    got = gemm_wave_factor(_gemm(q, kv, d, scale=2, batch=bh), gpu)
    dq, dk = wave_efficiency(q, d, bh, A100_TILE, 108), wave_efficiency(d, kv, bh, A100_TILE, 108)
    assert got == pytest.approx(2 / (1 / dq + 1 / dk), rel=1e-15)


def test_no_tile_no_factor_and_other_flop_counts_are_left_alone(a100):
    op = _gemm(2048, 4608, 12288)
    assert gemm_wave_factor(op, a100) == 1.0                                  # the topology alone sets no tile
    gpu = replace(a100, gemm_wave_tile=A100_TILE)
    odd = replace(op, flops=3 * op.flops)
    assert gemm_wave_factor(odd, gpu) == 1.0
    assert gemm_wave_factor(replace(op, kind="elementwise"), gpu) == 1.0
    assert gemm_wave_factor(replace(op, shape=()), gpu) == 1.0                 # a trace without shapes


def test_compute_bound_gemm_time_is_divided_by_the_factor(a100):
    gpu = replace(a100, gemm_wave_tile=A100_TILE)
    op = _gemm(2048, 4608, 12288)
    launch = a100.kernel_launch_us * 1e-6
    assert compute_seconds(op, gpu) - launch == pytest.approx((compute_seconds(op, a100) - launch) * 9 / 8,
                                                               rel=1e-12)


def test_kernel_gpu_takes_the_tile_from_the_graph_for_the_named_gpu_only(a100):
    meta = {"kernel_costs": {"kernel_gap_us": None, "attention_efficiency": {},
                             "gemm_wave_tile": {"a100_sxm": [256, 128]}}}
    assert kernel_gpu(a100, meta).gemm_wave_tile == A100_TILE
    h100 = load_topology("h100-dgx-1node").gpu
    assert kernel_gpu(h100, meta).gemm_wave_tile is None
    assert kernel_gpu(replace(a100, sm_count=0), meta).gemm_wave_tile is None   # no SM count: not modelled
    bad = {"kernel_costs": {"kernel_gap_us": None, "attention_efficiency": {}, "gemm_wave_tile": {"a100_sxm": [0, 1]}}}
    with pytest.raises(TraceError, match="gemm_wave_tile.a100_sxm"):
        kernel_gpu(a100, bad)


# ---------------------------------------------------------------------------------- files
def test_megatron_lm_2022_tiles_a100_gemms_and_other_stacks_do_not():
    assert load_stack("megatron-lm-2022").kernels.gemm_wave_tile == (("a100_sxm", 256, 128),)
    for name in ("megatron-core", "torchtitan", "serving"):
        stack = load_stack(name)
        assert stack.kernels.gemm_wave_tile == ()
        assert "gemm_wave_tile" not in stack.to_json()["kernels"]       # recorded results of these stacks unchanged
    again = stack_from_mapping(load_stack("megatron-lm-2022").to_json(), "x", "x")
    assert again.kernels.gemm_wave_tile == (("a100_sxm", 256, 128),)
    assert "waves of 256×128 tiles" in load_stack("megatron-lm-2022").summary()


@pytest.mark.parametrize("tile", ["[256]", "[0, 128]", "[256, 2048]", "[true, 128]", "256"])
def test_bad_tile_in_a_stack_file_is_one_line(tmp_path, tile):
    path = tmp_path / "bad.yaml"
    path.write_text(f"inherit: megatron-lm-2022\nkernels:\n  gemm_wave_tile: {{a100_sxm: {tile}}}\n")
    with pytest.raises(ConfigError) as err:
        load_stack(str(path))
    assert ".kernels.gemm_wave_tile.a100_sxm: expected [rows, columns]" in str(err.value)
    res = CliRunner().invoke(cli, ["run", "-t", "dgx-a100-1node", "--stack", str(path)])
    assert res.exit_code == 2 and "Traceback" not in res.output and "gemm_wave_tile" in res.output


def test_sm_count_is_an_optional_whole_number(tmp_path):
    assert load_topology("dgx-a100-1node").gpu.sm_count == 108
    assert load_topology("mi300x-1node").gpu.sm_count == 0
    path = tmp_path / "t.yaml"
    path.write_text("inherit: dgx-a100-1node\nname: t\ngpu:\n  sm_count: 0\n")
    with pytest.raises(ConfigError, match=r"\.gpu\.sm_count: must be ≥ 1"):
        load_topology(str(path))


def test_waves_slow_a_megatron_2022_step_on_a100_by_less_than_nine_eighths(tmp_path):
    """Same graph, with and without the stack's tile: the 2022 step is slower, by less than 1/(8/9)."""
    keep = tmp_path / "no-waves.yaml"
    keep.write_text("inherit: megatron-lm-2022\nkernels:\n  gemm_wave_tile: {}\n")
    model = tmp_path / "gpt3-2layers.yaml"                           # GPT-3 175B's shapes, two blocks
    model.write_text("name: gpt3-2l\nhidden: 12288\nlayers: 2\nq_heads: 96\nkv_heads: 96\nhead_dim: 128\n"
                     "ffn_hidden: 49152\ngated_mlp: false\nvocab: 51200\nbiases: true\ntied_embeddings: true\n"
                     "position_embeddings: 2048\n")
    args = ["run", "-t", "dgx-a100-1node", "--model", str(model), "--seq", "2k", "--schedule", "tp", "--degree", "8",
            "--json"]
    runner = CliRunner()

    def step(stack: str) -> float:
        res = runner.invoke(cli, [*args, "--stack", stack])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)["results"][0]["step_time_s"]

    waves, flat = step("megatron-lm-2022"), step(str(keep))
    assert flat < waves < flat * 9 / 8


def test_step_bound_tells_gemms_of_equal_cost_apart_by_their_output_shape():
    """(2048, 6912, 4096) and (2048, 4096, 6912) have equal FLOPs and bytes; with 256×128 tiles on 108 SMs the
    first writes 432 tiles (4 whole waves), the second 256 (3 waves, 0.79): the bound must price each, and stay
    at or below the replay."""
    topo = load_topology("dgx-a100-1node")
    meta = {"kernel_costs": {"kernel_gap_us": None, "attention_efficiency": {},
                             "gemm_wave_tile": {"a100_sxm": [256, 128]}}}
    builder = GraphBuilder([0], meta=meta)
    shapes = ((2048, 6912, 4096), (2048, 4096, 6912))
    for m, n, k in shapes:
        builder.compute(0, "gemm", f"g{n}", flops=gemm_flops(m, n, k), hbm_bytes=gemm_bytes(m, n, k, 2),
                        shape=(m, n, k))
    graph = builder.graph
    gpu = kernel_gpu(topo.gpu, meta)
    assert [gemm_wave_factor(op, gpu) for op in graph.ops] == [1.0, pytest.approx(256 / 324)]
    expected = sum(compute_seconds(op, gpu) for op in graph.ops)
    assert step_time_lower_bound(graph, topo) == pytest.approx(expected, rel=1e-12)
    assert step_time_lower_bound(graph, topo) <= replay(graph, topo).end_s * (1 + 1e-12)

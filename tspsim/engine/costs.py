"""Compute cost model: a roofline with measured, shape-dependent efficiency (design.md §2 rule 4).

    time = max(FLOPs / (peak_bf16 · eff), HBM bytes / (HBM_bw · eff_hbm)) + launch overhead

``eff`` depends on the kernel kind and shape: GEMMs reach ``gemm_efficiency`` (MAMF / peak,
hardware.md §4.1) only when large, rolling off as F / (F + φ·F½) with F the kernel's GFLOP and F½ the
topology's ``gemm_half_GFLOP`` (fitted to the Azure hipBLASLt / cuBLASLt size sweeps of square GEMMs:
small GEMMs are much less efficient, especially on MI300X); attention kernels use the measured
flash-attention forward and backward efficiencies with the same roll-off; elementwise, optimizer and
norm kernels are bound by HBM bandwidth. Causal attention FLOPs are counted by the schedules (half the
score FLOPs).

The roll-off is equivalent to a fixed tail t½ = F½ / (peak · eff_large) added to a compute-bound
kernel (F / (peak · eff_large · F/(F+F½)) = (F + F½) / (peak · eff_large)): the wave-quantisation and
pipeline-fill cost of a tiled GEMM. A *skinny* kernel (decode: M = B tokens, a GEMV-class streaming
kernel) has no such tail to pay on top of its streaming time, so the tail is scaled by the shape's
arithmetic intensity relative to the roofline ridge (:func:`tail_fraction`):

    φ = min(1, I / I_ridge),   I = F / HBM bytes,   I_ridge = peak · eff_large / (HBM_bw · eff_hbm)

Every compute-bound kernel (I ≥ I_ridge: all training and prefill GEMMs of realistic size, and the
square GEMMs the fit was made on) keeps the full roll-off; a decode GEMM with B = 1 (I ≈ 1) pays
about 1/I_ridge of it. [assumption: no public skinny-GEMM sweep in reference/hardware.md to fit φ]

Where the software stack says its GEMM library runs large GEMMs as data-parallel tiles in waves of one
tile per SM (``kernels.gemm_wave_tile``, e.g. cuBLAS 11 on A100 for Megatron-LM 2022), the efficiency is
multiplied by the shape's tile-and-wave quantisation (:func:`wave_efficiency`): ``gemm_efficiency`` is the
maximum achievable on the best shape found by search (MAMF, hardware.md §4.1), where the last wave is full.
Such a kernel runs each tile's main loop and then its epilogue (store the output tile; load the old value
first when it accumulates, β = 1) in the same thread block, one per SM, so a wave's stores follow its
multiply-adds instead of hiding under them (:func:`epilogue_seconds`):

    time = max(FLOPs / (peak_bf16 · eff) + output bytes / (HBM_bw · eff_hbm), HBM bytes / (HBM_bw · eff_hbm))
           + launch overhead
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from tspsim.core.errors import TraceError
from tspsim.opgraph import Op
from tspsim.spec.stack import MAX_TILE
from tspsim.spec.topology import GpuSpec

KERNEL_COSTS_KEY = "kernel_costs"
"""Op-graph meta key of the stack's kernel costs (written by :meth:`tspsim.schedules.context.BuildContext.finish`)."""


def kernel_gpu(gpu: GpuSpec, meta: dict[str, Any]) -> GpuSpec:
    """``gpu`` as the graph's software stack runs on it (``meta["kernel_costs"]``, absent: ``gpu`` itself).

    ``kernel_gap_us`` replaces the per-kernel ``kernel_launch_us`` for graphs whose kernels are queued ahead
    of the GPU (a captured graph, or an eager CPU lane: the CPU then pays the launch cost, see
    :mod:`tspsim.spec.stack`); ``attention_efficiency`` maps GPU names to the stack's (forward, backward)
    flash-attention efficiencies, applied when ``gpu.name`` is listed.

    Raises:
        TraceError: if the recorded costs are malformed (a graph read from a file).
    """
    costs = meta.get(KERNEL_COSTS_KEY)
    if costs is None:
        return gpu
    where = f"trace metadata: meta.{KERNEL_COSTS_KEY}"
    if not isinstance(costs, dict) or not set(costs) <= {"kernel_gap_us", "attention_efficiency", "gemm_wave_tile",
                                                         "gemm_operand_bytes"}:
        raise TraceError(f"{where}: expected a mapping with kernel_gap_us, attention_efficiency and optionally "
                         f"gemm_wave_tile and gemm_operand_bytes, got {costs!r}"[:200])
    gap = costs.get("kernel_gap_us")
    if gap is not None:
        if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not math.isfinite(gap) or not 0 <= gap <= 1e6:
            raise TraceError(f"{where}.kernel_gap_us: expected µs in [0, 1e6] or null, got {gap!r}"[:200])
        gpu = replace(gpu, kernel_launch_us=float(gap))
    pair = _per_gpu(costs, "attention_efficiency", gpu.name, where, "[fwd, bwd] in (0, 1]",
                    lambda e: not isinstance(e, bool) and isinstance(e, (int, float)) and 0 < e <= 1)
    if pair is not None:
        gpu = replace(gpu, attn_fwd_efficiency=float(pair[0]), attn_bwd_efficiency=float(pair[1]))
    tile = _per_gpu(costs, "gemm_wave_tile", gpu.name, where, f"[rows, columns] in 1–{MAX_TILE}",
                    lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_TILE)
    if tile is not None and gpu.sm_count > 0:
        gpu = replace(gpu, gemm_wave_tile=(tile[0], tile[1]))
        operand = costs.get("gemm_operand_bytes", 0)
        if isinstance(operand, bool) or not isinstance(operand, int) or not 0 <= operand <= 8:
            raise TraceError(f"{where}.gemm_operand_bytes: expected bytes per element in 0–8, got {operand!r}"[:200])
        gpu = replace(gpu, gemm_operand_bytes=operand)
    return gpu


def _per_gpu(costs: dict[str, Any], key: str, gpu_name: str, where: str, expected: str,
             valid: Callable[[Any], bool]) -> list[Any] | None:
    """``costs[key][gpu_name]``, a pair of values each passing ``valid``, or None when the GPU is not listed.

    Raises:
        TraceError: the table is not a mapping, or the GPU's entry is not such a pair.
    """
    table = costs.get(key) or {}
    if not isinstance(table, dict):
        raise TraceError(f"{where}.{key}: expected a mapping GPU name → {expected}"[:200])
    value = table.get(gpu_name)
    if value is not None and not (isinstance(value, list) and len(value) == 2 and all(valid(v) for v in value)):
        raise TraceError(f"{where}.{key}.{gpu_name}: expected {expected}, got {value!r}"[:200])
    return value


def large_efficiency(op: Op, gpu: GpuSpec) -> float:
    """Fraction of BF16 peak a large kernel of ``op``'s kind reaches (the roll-off's ceiling)."""
    if op.kind == "attention_fwd":
        return gpu.attn_fwd_efficiency
    if op.kind == "attention_bwd":
        return gpu.attn_bwd_efficiency
    return gpu.gemm_efficiency


def tail_fraction(op: Op, gpu: GpuSpec) -> float:
    """φ = min(1, I / I_ridge): the share of the small-kernel tail a kernel of this shape pays.

    I = FLOPs / HBM bytes is the kernel's arithmetic intensity, I_ridge = peak · eff_large / (HBM_bw ·
    eff_hbm) the roofline ridge point. A kernel with no HBM traffic recorded counts as compute-bound.
    """
    if op.hbm_bytes <= 0:
        return 1.0
    ridge = gpu.peak_bf16_TFLOPS * large_efficiency(op, gpu) / (gpu.hbm_TBps * gpu.hbm_efficiency)
    return min(1.0, op.flops / op.hbm_bytes / ridge)


def wave_efficiency(m: int, n: int, batch: int, tile: tuple[int, int], sm_count: int) -> float:
    """Useful fraction of the tile slots a data-parallel tiled GEMM occupies: tile and wave quantisation.

    The library splits each of ``batch`` m×n outputs into ⌈m/r⌉·⌈n/c⌉ tiles of r×c (either orientation of
    ``tile``; the better one), one per SM at a time, so T tiles take W = ⌈T / SMs⌉ waves and

        efficiency = batch·m·n / (W · SMs · r · c)

    (NVIDIA, "Matrix Multiplication Background User's Guide", §§ tile quantisation and wave quantisation:
    an A100's 108 SMs run 256×128 tiles in waves of 108). A GEMM with fewer tiles than SMs (in either
    orientation) is outside the model: libraries pick smaller tiles or split K there, and the smooth roll-off
    of :func:`efficiency` covers it (returns 1).
    """
    if not _tiled(m, n, batch, tile, sm_count):
        return 1.0
    best = 0.0
    for r, c in (tile, (tile[1], tile[0])):
        tiles = batch * -(-m // r) * -(-n // c)
        best = max(best, batch * m * n / (-(-tiles // sm_count) * sm_count * r * c))
    return best


def _tiled(m: int, n: int, batch: int, tile: tuple[int, int], sm_count: int) -> bool:
    """True if ``batch`` m×n outputs have a wave of tiles or more in both orientations (:func:`wave_efficiency`)."""
    return all(batch * -(-m // r) * -(-n // c) >= sm_count for r, c in (tile, (tile[1], tile[0])))


def _gemm_outputs(op: Op, gpu: GpuSpec) -> tuple[int, int, tuple[tuple[int, int], ...]] | None:
    """(GEMMs in the op, batch, each GEMM's output rows × columns) of a GEMM op under the stack's tiling, or None.

    ``op.shape`` is (m, n, k) or a batched (m, n, k, batch). An op with 2·m·n·k·batch FLOPs is one forward GEMM
    (output m×n); one with twice that is a backward pair of that shape, dgrad (output m×k) and wgrad (output
    k×n) of equal FLOPs. None where the stack does not tile GEMMs in waves (no tile or SM count), for another
    kind, a shape that is not a GEMM's, or other FLOP counts.
    """
    tile, shape = gpu.gemm_wave_tile, op.shape
    if tile is None or op.kind != "gemm" or len(shape) not in (3, 4) or gpu.sm_count <= 0:
        return None
    m, n, k = shape[0], shape[1], shape[2]
    batch = shape[3] if len(shape) == 4 else 1
    if min(m, n, k, batch) <= 0:
        return None
    ratio = op.flops / (2.0 * m * n * k * batch)
    if abs(ratio - 1.0) < 0.01:
        return 1, batch, ((m, n),)
    if abs(ratio - 2.0) < 0.02:
        return 2, batch, ((m, k), (k, n))
    return None


def gemm_wave_factor(op: Op, gpu: GpuSpec) -> float:
    """Wave-quantisation factor of a GEMM op under the stack's tiling (1 when not modelled).

    One GEMM: its output's :func:`wave_efficiency`; a backward pair (:func:`_gemm_outputs`), whose two GEMMs
    have equal FLOPs: the harmonic mean of its two outputs' efficiencies.
    """
    found = _gemm_outputs(op, gpu)
    if found is None:
        return 1.0
    _, batch, outputs = found
    tile, sms = gpu.gemm_wave_tile, gpu.sm_count
    assert tile is not None  # _gemm_outputs checked it
    effs = [wave_efficiency(rows, cols, batch, tile, sms) for rows, cols in outputs]
    return effs[0] if len(effs) == 1 else 2.0 / (1.0 / effs[0] + 1.0 / effs[1])


def epilogue_bytes(op: Op, gpu: GpuSpec) -> float:
    """Bytes the epilogues of a GEMM run in waves move: its outputs, plus the old value of an accumulated one.

    A forward GEMM of (m, n, k) writes m×n; a backward pair of that shape (2× the FLOPs) writes the input
    gradient m×k and the weight gradient k×n (batched attention pairs alike: dP and dV, dQ and dK), each at
    ``gpu.gemm_operand_bytes`` per element. ``op.hbm_bytes`` beyond the operands' (:func:`~tspsim.schedules.
    context.gemm_bytes`) is the accumulation's extra read and wider write of the weight gradient
    (:func:`~tspsim.schedules.context.wgrad_accumulate_bytes`), part of that output's epilogue. An output with
    less than a wave of tiles is left out (the library picks another kernel there, :func:`wave_efficiency`);
    0 where the stack does not tile GEMMs in waves, the operand size is not given, or the FLOPs are not one
    GEMM or a pair of ``op.shape``.
    """
    s = gpu.gemm_operand_bytes
    found = _gemm_outputs(op, gpu)
    if found is None or s <= 0:
        return 0.0
    scale, batch, outputs = found
    tile, sms = gpu.gemm_wave_tile, gpu.sm_count
    assert tile is not None  # _gemm_outputs checked it
    m, n, k = op.shape[0], op.shape[1], op.shape[2]
    extra = max(0.0, op.hbm_bytes - scale * batch * (m * k + k * n + m * n) * s)
    last = len(outputs) - 1                  # the weight gradient: the only output an accumulation widens
    return sum(rows * cols * batch * s + (extra if i == last else 0.0)
               for i, (rows, cols) in enumerate(outputs) if _tiled(rows, cols, batch, tile, sms))


def epilogue_seconds(op: Op, gpu: GpuSpec) -> float:
    """Time of a wave-tiled GEMM's epilogues: :func:`epilogue_bytes` at the HBM's streaming rate.

    One thread block per SM runs a tile's main loop, then stores the tile (cuBLAS 11's 256×128 kernels on
    A100; CUTLASS 2.x kernels: the epilogue follows the main loop in the same thread block; CUTLASS 3's
    persistent "ping-pong" kernels for Hopper were built to overlap one tile's epilogue with another's main
    loop). With every SM of a wave storing at once, the stores move at the HBM's rate, in series with the
    multiply-adds: time = max(t_flops + t_epilogue, t_mem) (:func:`compute_seconds`).
    """
    out = epilogue_bytes(op, gpu)
    return out / (gpu.hbm_TBps * 1e12 * gpu.hbm_efficiency) if out > 0 else 0.0


def efficiency(op: Op, gpu: GpuSpec) -> float:
    """Fraction of BF16 peak the kernel reaches: eff_large · F / (F + φ·F½) · wave factor.

    The roll-off applies to GEMM and attention kernels, the wave-quantisation factor
    (:func:`gemm_wave_factor`) to GEMMs where the stack tiles them in waves.
    """
    base = large_efficiency(op, gpu)
    if op.kind not in ("gemm", "attention_fwd", "attention_bwd"):
        return base
    gflop = op.flops / 1e9
    if gflop <= 0:
        return base
    return base * gflop / (gflop + tail_fraction(op, gpu) * gpu.gemm_half_GFLOP) * gemm_wave_factor(op, gpu)


def compute_seconds(op: Op, gpu: GpuSpec) -> float:
    """Duration of a compute op on an otherwise idle GPU, in seconds (0 for memory and host ops)."""
    kind, flops, hbm_bytes = op.kind, op.flops, op.hbm_bytes
    if kind in ("memory", "host") or (flops <= 0 and hbm_bytes <= 0):
        return 0.0
    if flops > 0:
        # efficiency(op, gpu) and tail_fraction(op, gpu) inlined (the replay's hottest call): same expressions
        base = large_efficiency(op, gpu)
        gflop = flops / 1e9
        if kind in ("gemm", "attention_fwd", "attention_bwd") and gflop > 0:
            if hbm_bytes <= 0:
                tail = 1.0
            else:
                tail = min(1.0, flops / hbm_bytes / (gpu.peak_bf16_TFLOPS * base / (gpu.hbm_TBps * gpu.hbm_efficiency)))
            eff = base * gflop / (gflop + tail * gpu.gemm_half_GFLOP)
            if gpu.gemm_wave_tile is not None:
                eff *= gemm_wave_factor(op, gpu)
        else:
            eff = base
        t_flops = flops / (gpu.peak_bf16_TFLOPS * 1e12 * eff)
        if gpu.gemm_wave_tile is not None and kind == "gemm":
            t_flops += epilogue_seconds(op, gpu)
    else:
        t_flops = 0.0
    t_mem = hbm_bytes / (gpu.hbm_TBps * 1e12 * gpu.hbm_efficiency)
    return max(t_flops, t_mem) + gpu.kernel_launch_us * 1e-6

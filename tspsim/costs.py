"""Compute cost model: a roofline with measured, shape-dependent efficiency (design.md §2 rule 4).

    time = max(FLOPs / (peak_bf16 · eff), HBM bytes / (HBM_bw · eff_hbm)) + launch overhead

``eff`` depends on the kernel kind: GEMMs reach ``gemm_efficiency`` (MAMF / peak, hardware.md §4.1)
only when large, rolling off as F / (F + F½) with F the kernel's GFLOP and F½ the topology's
``gemm_half_GFLOP`` (fitted to the Azure hipBLASLt / cuBLASLt size sweeps: small GEMMs are much less
efficient, especially on MI300X); attention kernels use the measured flash-attention forward and
backward efficiencies with the same roll-off; elementwise, optimizer and norm kernels are bound by
HBM bandwidth. Causal attention FLOPs are counted by the schedules (half the score FLOPs).
"""

from __future__ import annotations

from tspsim.opgraph import Op
from tspsim.topology import GpuSpec


def efficiency(op: Op, gpu: GpuSpec) -> float:
    """Fraction of BF16 peak the kernel reaches."""
    if op.kind == "gemm":
        base = gpu.gemm_efficiency
    elif op.kind == "attention_fwd":
        base = gpu.attn_fwd_efficiency
    elif op.kind == "attention_bwd":
        base = gpu.attn_bwd_efficiency
    else:
        return gpu.gemm_efficiency
    gflop = op.flops / 1e9
    return base * gflop / (gflop + gpu.gemm_half_GFLOP)


def compute_seconds(op: Op, gpu: GpuSpec) -> float:
    """Duration of a compute op on an otherwise idle GPU, in seconds."""
    if op.kind == "memory" or (op.flops <= 0 and op.hbm_bytes <= 0):
        return 0.0
    t_flops = op.flops / (gpu.peak_bf16_TFLOPS * 1e12 * efficiency(op, gpu)) if op.flops > 0 else 0.0
    t_mem = op.hbm_bytes / (gpu.hbm_TBps * 1e12 * gpu.hbm_efficiency)
    return max(t_flops, t_mem) + gpu.kernel_launch_us * 1e-6

"""Validation rows the software stacks make expressible (``tspsim validate``; README: Software stacks).

* **activation memory per layer** (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models", Table 2, as the issue and reference/hardware.md's appendix give it): megatron-22b
  (h = 6144, a = 64), sequence s = 2048, micro-batch b = 4, 16-bit activations with 1-byte dropout masks,
  the ``megatron-lm-2022`` stack (unfused attention with dropout). The activations block 0 saves in its
  forward pass against, in bytes: no parallelism s·b·h·(34 + 5·a·s/h); tensor parallelism t = 8
  s·b·h·(10 + 24/t + 5·a·s/(h·t)); + sequence parallelism (``satp-seq`` with ``gather-input``)
  s·b·h·(34/t + 5·a·s/(h·t)); + selective recomputation s·b·h·(10 + 24/t) and s·b·h·34/t. The formulas
  are exact, so the tolerance is 0.
* **parameter-class memory**: parameters + gradients + optimizer state per GPU of megatron-22b under TP 8
  with ``megatron-lm-2022`` = 18 bytes per parameter (fp16 weights 2, fp32 main gradients 4, fp32 master
  weights 4, Adam m and v 8; reference/tsp.md §8, hardware.md's appendix), the parameters counted from the
  model's shapes (tied embedding, learned positions, biases). Exact, tolerance 0.
* **H100 MFU with torchtitan**: the end-to-end band of reference/hardware.md §9 (``h100_7b_bf16_mfu``,
  33–45 %, whose measured end is eager torchtitan [S24]) re-read with the ``torchtitan`` stack — SDPA's
  FlashAttention-2-class kernel (hardware.md §4.2), the CPU launching every kernel and FSDP2 as torchtitan runs
  it (the ``fsdp`` schedule: ZeRO-3, each block's parameters all-gathered before its forward and backward, its
  gradients reduce-scattered) — on the shape of the ``mfu.h100-dgx-1node`` row (llama3-8b, 8k, 8 GPUs, full
  recompute).

All three are independent checks: no constant of the presets was fitted to them.
"""

from __future__ import annotations

from fractions import Fraction

from tspsim.explore.validation_row import MFU_BANDS, Row, try_row

KORTHIKANTI = ("V. Korthikanti et al., \"Reducing Activation Recomputation in Large Transformer Models\", "
               "arXiv:2205.05198 (2022), Table 2 (exact formula); https://arxiv.org/abs/2205.05198")
"""Source of the activation-memory rows."""

_SHAPE = {"model": "megatron-22b", "topology": "dgx-a100-1node", "seq_len": 2048, "batch": 4}
_H, _A, _T = 6144, 64, 8
_MB = 1e6


def _per_layer_bytes(schedule: str, degree: int, recompute: str) -> float:
    """Activations block 0 saves in its forward pass on rank 0 (bytes), megatron-lm-2022 stack."""
    from tspsim.simulate import Point, build_graph

    point = Point(schedule, degree=degree, gpus=degree,
                  options=(("recompute", recompute), ("stack", "megatron-lm-2022")), **_SHAPE)  # type: ignore[arg-type]
    graph = build_graph(point)[0]
    rank = graph.ranks[0]
    return float(sum(delta for op in graph.ops if op.rank == rank and op.layer == 0 and op.phase == "fwd"
                     for _, cat, delta in op.mem if cat == "activations"))


def activation_rows() -> list[Row]:
    """Per-layer activation memory of megatron-22b against Korthikanti et al.'s Table 2."""
    s, b, h, a, t = _SHAPE["seq_len"], _SHAPE["batch"], _H, _A, _T
    sbh = Fraction(s * b * h)   # exact arithmetic: the formulas give whole numbers of bytes
    cases: list[tuple[str, str, str, int, str, Fraction]] = [
        ("none", "no parallelism", "tp", 1, "none", sbh * (34 + Fraction(5 * a * s, h))),
        ("tp8", "TP 8", "tp", t, "none", sbh * (10 + Fraction(24, t) + Fraction(5 * a * s, h * t))),
        ("tp8-sp", "TP 8 + SP", "satp-seq", t, "none", sbh * (Fraction(34, t) + Fraction(5 * a * s, h * t))),
        ("tp8-selective", "TP 8 + selective", "tp", t, "selective", sbh * (10 + Fraction(24, t))),
        ("tp8-sp-selective", "TP 8 + SP + selective", "satp-seq", t, "selective", sbh * Fraction(34, t)),
    ]
    rows = []
    for key, label, schedule, degree, recompute, published in cases:
        row = Row(f"activations.megatron-22b.{key}", f"activations/layer 22B {label}", "dgx-a100-1node", "MB",
                  float(published) / _MB, 0.0, KORTHIKANTI)
        rows.append(try_row(row, lambda sc=schedule, d=degree, rc=recompute: _per_layer_bytes(sc, d, rc) / _MB))
    return rows


def parameter_row() -> Row:
    """Parameters + gradients + optimizer state per GPU of megatron-22b, TP 8, against 18 B per parameter."""
    from tspsim.simulate import Point, build_graph
    from tspsim.spec.model import load_model

    m = load_model("megatron-22b")
    h, v, L, t = m.hidden, m.vocab, m.layers, _T
    # Independent count: per block 4h² + 8h² weights and 3h + 4h column biases split t ways; 2 row biases and
    # 2 LayerNorms (weight + bias) replicated; tied vocab-parallel embedding; 2048 learned positions and the
    # final LayerNorm replicated.
    per_gpu = L * ((12 * h * h + 7 * h) / t + 2 * h + 4 * h) + v * h / t + 2048 * h + 2 * h
    row = Row("memory.megatron-22b.tp8.parameter_state", "params+grads+optimizer 22B TP 8", "dgx-a100-1node", "GB",
              18 * per_gpu / 1e9, 0.0,
              "18 B/parameter (fp16 weights 2, fp32 main grads 4, fp32 master + Adam m, v 12): Megatron-LM's "
              "theoretical memory estimator, megatron/training/theoretical_memory_usage.py; "
              "https://github.com/NVIDIA/Megatron-LM")

    def static_gb() -> float:
        point = Point("tp", degree=t, options=(("stack", "megatron-lm-2022"),), **_SHAPE)  # type: ignore[arg-type]
        graph = build_graph(point)[0]
        rank = graph.ranks[0]
        return sum(delta for op in graph.ops if op.rank == rank for _, cat, delta in op.mem
                   if cat in ("parameters", "gradients", "optimizer_state")) / 1e9

    return try_row(row, static_gb)


def torchtitan_mfu_row() -> Row:
    """The H100 end-to-end MFU band (validation's MFU_BANDS) under the torchtitan stack."""
    from tspsim.simulate import Point, simulate

    topo, lo, hi, source = next(band for band in MFU_BANDS if band[0] == "h100-dgx-1node")
    row = Row(f"mfu.{topo}.torchtitan", "MFU llama3-8b 8k, FSDP 8, torchtitan", topo, "%", None, 0.0, source,
              published_low=lo * 100.0, published_high=hi * 100.0)

    def mfu() -> float:
        point = Point("fsdp", topo, model="llama3-8b", mode="train", seq_len=8192, batch=1,
                      options=(("stack", "torchtitan"),))
        return float(simulate(point).entry["mfu"]) * 100.0

    row = try_row(row, mfu)
    if row.within is not None:
        row.note = ("torchtitan row: the same shape under the torchtitan stack (FlashAttention-2-class SDPA "
                    "efficiencies, eager CPU launches) with FSDP2 (ZeRO-3 per-block all-gathers and reduce-scatters); "
                    "eager RMSNorm/RoPE/SwiGLU kernels and the 500 W power cap are not modelled")
    return row


def stack_rows() -> list[Row]:
    """Every row of this module: Korthikanti's activation memory, the 18 B/parameter state, torchtitan's MFU."""
    return [*activation_rows(), parameter_row(), torchtitan_mfu_row()]

"""Software stacks: the kernels, fusions, recompute semantics, optimizer passes and host costs of a framework.

A step's time depends on the software that runs it as much as on the hardware: which attention kernel,
which small kernels are fused, what the optimizer reads and writes, how much CPU time each kernel launch
costs. A :class:`Stack` names those choices; presets live in ``stacks/*.yaml`` (shipped inside the
package as ``tspsim/data/stacks``, so ``--stack NAME`` works from any directory) and a user's YAML file
works too, optionally starting from a preset with ``inherit: NAME``. Files are validated key by key in
the style of :mod:`tspsim.spec.topology_file` (``FILE: .key.path: problem``).

The stack is carried by :class:`tspsim.spec.assumptions.Assumptions` (its ``stack`` field), so every
result records the resolved choices with the other assumptions; a stack's ``defaults`` section sets
assumption defaults (e.g. ``satp_seq_attention: gather-input`` for Megatron sequence parallelism) that
``--option KEY=VALUE`` still overrides.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tspsim.core.errors import ConfigError
from tspsim.core.presets import PresetFiles
from tspsim.core.yamlfile import describe_value, number_hint

PRESET_DIR = Path(__file__).resolve().parent.parent / "data" / "stacks"
_FILES = PresetFiles("stack", PRESET_DIR)
"""The stack presets and how a stack file is read."""
"""Built-in presets (a symlink to the top-level ``stacks/`` folder, shipped as package data)."""

DEFAULT_STACK = "megatron-core"
"""The stack used when none is named: what a TSP-paper-era (2025–26) user runs (README: Software stacks)."""

STEP_KINDS = ("train", "forward", "prefill", "decode")
"""Kinds of simulated step a stack may run as a captured graph (``host.capture``)."""


MAX_HOST_US = 1e6
"""Largest per-launch or per-step host cost, µs (one second; larger values are unit mistakes)."""


@dataclass(frozen=True)
class AttentionChoice:
    """The attention kernel of training and prefill (decode attention is one HBM-bound kernel for every stack)."""

    kernel: Literal["flash", "unfused"]
    """``flash``: one fused kernel per direction (FlashAttention/cuDNN class; causal blocks skipped, scores never
    written; backward recomputes the scores from Q, K, V and the saved log-sum-exp). ``unfused``: Megatron-LM's
    CoreAttention — QKᵀ and A·V as batched GEMMs over the full S_q × S_k score matrix (the causal mask is applied
    by the softmax, no blocks skipped), scale-mask-softmax and dropout as HBM-bound kernels over b·(a/t)·S_q·S_k
    elements, and the softmax output, dropout mask and dropout output saved for backward (Korthikanti et al.
    2022: the 5·a·s/h term of the activation memory)."""
    dropout: bool
    """Dropout on the attention probabilities. Unfused: a kernel writing a 1-byte mask per score (saved for
    backward) and the dropped probabilities; flash kernels draw it in-kernel from a seed (no extra traffic)."""
    flash_efficiency: tuple[tuple[str, float, float], ...]
    """Per GPU (the topology's ``gpu.name``): (name, forward, backward) fractions of the BF16 peak the stack's
    flash kernel reaches, overriding the topology's ``attn_fwd_efficiency`` / ``attn_bwd_efficiency`` (which are
    the best kernel for that GPU). Empty: the topology's values. Example: PyTorch SDPA runs a FlashAttention-2
    class kernel on H100 where Transformer Engine runs an FA3-class one."""


@dataclass(frozen=True)
class KernelChoice:
    """The small kernels around the GEMMs, fused or not."""

    hidden_dropout: bool
    """Dropout after the attention and MLP output projections: a 1-byte mask per element of the residual
    branch, saved for backward, and a dropout-backward pass over the branch gradient."""
    bias_dropout_add: Literal["fused", "unfused"]
    """``fused``: bias add, dropout and residual add in one kernel (Megatron's jit-fused bias_dropout_add);
    ``unfused``: one kernel each (the bias add only when the model has biases, dropout only with
    ``hidden_dropout``)."""
    bias_activation: Literal["fused", "unfused"]
    """``fused``: the MLP bias add folded into the activation kernel (bias-GeLU / SwiGLU fusion);
    ``unfused``: a separate bias-add kernel before the activation (only when the model has biases)."""
    bias_grad: Literal["fused", "separate"]
    """Bias gradients: ``fused`` into the GEMM epilogue (cuBLASLt dbias; Transformer Engine), or a
    ``separate`` reduction kernel reading the output gradient (``grad_output.sum(0)`` as Megatron-LM 2022)."""
    norm_weight_grad: Literal["fused", "separate"]
    """Norm weight (and bias) gradients: reduced inside the norm backward kernel (``fused``), or by a
    ``separate`` partial-reduction pass re-reading the input and the output gradient (apex FusedLayerNorm's
    part-grad-gamma-beta kernel)."""
    residual_grad: Literal["fused", "separate"]
    """The gradient at each residual fork (residual path + the branch through the norm): folded into the norm
    backward (``fused``) or a ``separate`` add kernel (autograd's accumulation: read two tensors, write one)."""
    sp_input_regather: bool
    """Megatron sequence parallelism (``satp-seq`` with ``satp_seq_attention=gather-input``): save the
    sequence-sharded input of the QKV and fc1 projections and all-gather it again in backward for their
    weight-gradient GEMMs, overlapped with the input-gradient GEMM (Megatron-LM's
    LinearWithGradAccumulationAndAsyncCommunication). False: autograd saves the gathered input (more memory,
    no second all-gather; PyTorch DTensor sequence parallelism)."""
    tp_async_grad_allreduce: bool = False
    """Tensor parallelism with a replicated residual (no sequence parallelism): the input-gradient all-reduce
    after a column-parallel projection's backward (QKV, fc1) is launched asynchronously right after the
    input-gradient GEMM and overlaps the weight-gradient GEMM (Megatron-LM's
    ``--async-tensor-model-parallel-allreduce``, on by default since 2021: ColumnParallelLinear's backward in
    LinearWithGradAccumulationAndAsyncCommunication, ``all_reduce(grad_input, async_op=True)`` before the
    wgrad GEMM, ``handle.wait()`` after it). False (optional key, the default): one dgrad + wgrad GEMM pair,
    then the all-reduce."""
    gemm_wave_tile: tuple[tuple[str, int, int], ...] = ()
    """Per GPU (the topology's ``gpu.name``): (name, rows, columns) of the output tile one SM computes when the
    stack's GEMM library runs a large GEMM as data-parallel thread-block tiles, one per SM, in waves of
    ``gpu.sm_count`` tiles (cuBLAS 11 on A100: 256×128 tiles; NVIDIA, "Matrix Multiplication Background User's
    Guide", tile and wave quantisation). The partial last wave and partial edge tiles cost time
    (:func:`tspsim.engine.costs.wave_efficiency`). Empty (optional key, the default): the library picks a
    kernel per shape (autotuned, split-K or stream-K scheduling) and the topology's smooth roll-off stands."""
    wgrad_accumulate: Literal["none", "fp32"] = "none"
    """How a linear layer's weight-gradient GEMM stores its result. ``fp32``: accumulated by the GEMM itself
    into the fp32 main-gradient buffer, β = 1 (Megatron-LM's gradient-accumulation fusion, on by default since
    2022: ``fused_weight_gradient_mlp_cuda.wgrad_gemm_accum_fp32(total_input, grad_output, weight.main_grad)``
    in LinearWithGradAccumulationAndAsyncCommunication), so its epilogue reads and writes 4 + 4 bytes per
    gradient element instead of writing the operand size (:meth:`tspsim.schedules.context.BuildContext.gemm`).
    ``none`` (optional key, the default): the gradient is written as a fresh tensor in the operand dtype and the
    accumulation over micro-batches is not simulated as traffic."""


@dataclass(frozen=True)
class OptimizerChoice:
    """What the optimizer step reads and writes beyond the Adam update (byte sizes are assumptions)."""

    param_copy: Literal["fused", "separate"]
    """With fp32 master weights (``master_bytes`` > 0): the 16-bit weights written by the Adam kernel itself
    (``fused``: one multi-tensor kernel over [grad, param, m, v, master]), or by a ``separate`` copy pass that
    reads the updated master weights (Megatron's _copy_main_params_to_model_params)."""
    grad_norm: bool
    """Global gradient-norm pass for clipping (multi_tensor_l2norm): reads every gradient once."""
    zero_grad: bool
    """The gradient buffer is zeroed after the step (a memset writing every gradient); False when gradients are
    freed instead (``zero_grad(set_to_none=True)``)."""
    unscale: bool
    """fp16 dynamic loss scaling: gradients are unscaled and checked for inf/NaN before the step (read + write)."""


@dataclass(frozen=True)
class HostChoice:
    """Where kernel-launch overhead is paid, and which steps run as captured graphs."""

    launch: Literal["device", "host"]
    """``device``: the CPU is not simulated; every kernel pays the topology's ``kernel_launch_us`` on the GPU, in
    series with it (a CPU that never runs ahead). ``host``: the CPU is its own lane per rank (stream ``host``)
    that spends ``launch_us`` per kernel, issuing kernels in program order ahead of the GPU; a kernel cannot
    start before it is issued, so the GPU waits whenever the CPU falls behind (eager PyTorch), and queued kernels
    pay only the device-side gap ``decode_launch_us``."""
    capture: tuple[str, ...]
    """Kinds of step (train, forward, prefill, decode) run as captured CUDA/HIP graphs: kernels pay the graph's
    kernel-to-kernel gap ``decode_launch_us``; with ``launch: host`` the CPU issues one graph launch per step.
    ``device`` stacks must capture decode (tspsim's decode steps always replay that way under them)."""
    launch_us: float | None
    """CPU time to launch one kernel, µs; null: the topology's ``kernel_launch_us`` (the per-kernel launch
    overhead of hardware.md §9, an assumption), now paid by the CPU instead of the GPU."""
    step_overhead_us: float
    """CPU time per step before the first launch (data loading, Python bookkeeping), µs."""


@dataclass(frozen=True)
class Stack:
    """A named software stack: every choice above, with its sources."""

    name: str
    """Preset name or file stem."""
    description: str
    """One line: what runs."""
    source: str
    """Where the choices come from."""
    attention: AttentionChoice
    """Attention kernel."""
    kernels: KernelChoice
    """Small kernels and their fusions."""
    optimizer: OptimizerChoice
    """Optimizer passes."""
    host: HostChoice
    """Launch overhead and graph capture."""
    defaults: tuple[tuple[str, Any], ...] = ()
    """Assumption defaults this stack sets (``--option`` still overrides them), sorted by key."""

    def flash_efficiencies(self, gpu_name: str) -> tuple[float, float] | None:
        """(forward, backward) flash efficiency of this stack on ``gpu_name``, or None for the topology's."""
        for name, fwd, bwd in self.attention.flash_efficiency:
            if name == gpu_name:
                return fwd, bwd
        return None

    def captures(self, step: str) -> bool:
        """True if a step of this kind runs as a captured graph."""
        return step in self.host.capture

    def summary(self) -> str:
        """The choices in one line, for reports."""
        a, k, o, h = self.attention, self.kernels, self.optimizer, self.host
        att = f"{a.kernel} attention" + (" with dropout" if a.dropout else "")
        if a.flash_efficiency:
            att += " (" + ", ".join(f"{g} {f:g}/{b:g}" for g, f, b in a.flash_efficiency) + " fwd/bwd efficiency)"
        unfused = [name for name, value in (("bias-dropout-add", k.bias_dropout_add), ("bias-activation",
                   k.bias_activation)) if value == "unfused"]
        separate = [name for name, value in (("bias grads", k.bias_grad), ("norm weight grads", k.norm_weight_grad),
                    ("residual grad sums", k.residual_grad)) if value == "separate"]
        kern = ("unfused " + ", ".join(unfused) if unfused else "fused bias-dropout-add and activation")
        kern += ("; separate " + ", ".join(separate)) if separate else ""
        kern += "; hidden dropout" if k.hidden_dropout else ""
        kern += "; SP input all-gather redo" if k.sp_input_regather else ""
        kern += "; async TP gradient all-reduce" if k.tp_async_grad_allreduce else ""
        kern += "".join(f"; {g} GEMMs in waves of {r}×{c} tiles" for g, r, c in k.gemm_wave_tile)
        kern += "; weight gradients accumulated in fp32 by the GEMM" if k.wgrad_accumulate == "fp32" else ""
        opt = "Adam" + (" + separate param copy" if o.param_copy == "separate" else "")
        opt += "".join(f" + {n}" for n, on in (("grad norm", o.grad_norm), ("zero grad", o.zero_grad),
                                               ("unscale", o.unscale)) if on)
        if h.launch == "device":
            host = "launch overhead on the GPU"
        else:
            us = "topology kernel_launch_us" if h.launch_us is None else f"{h.launch_us:g} µs"
            host = f"CPU lane ({us} per launch, {h.step_overhead_us:g} µs per step)"
        host += "; captured: " + (", ".join(h.capture) or "none")
        return f"{att}; {kern}; optimizer {opt}; {host}"

    def to_json(self) -> dict[str, Any]:
        """The resolved choices, shaped like a stack file (so :func:`stack_from_mapping` reads it back)."""
        a, k, o, h = self.attention, self.kernels, self.optimizer, self.host
        return {
            "name": self.name, "description": self.description, "source": self.source,
            "attention": {"kernel": a.kernel, "dropout": a.dropout,
                          "flash_efficiency": {g: {"fwd": f, "bwd": b} for g, f, b in a.flash_efficiency}},
            "kernels": {"hidden_dropout": k.hidden_dropout, "bias_dropout_add": k.bias_dropout_add,
                        "bias_activation": k.bias_activation, "bias_grad": k.bias_grad,
                        "norm_weight_grad": k.norm_weight_grad, "residual_grad": k.residual_grad,
                        "sp_input_regather": k.sp_input_regather,
                        "tp_async_grad_allreduce": k.tp_async_grad_allreduce,
                        **({"gemm_wave_tile": {g: [r, c] for g, r, c in k.gemm_wave_tile}}
                           if k.gemm_wave_tile else {}),
                        **({"wgrad_accumulate": k.wgrad_accumulate} if k.wgrad_accumulate != "none" else {})},
            "optimizer": {"param_copy": o.param_copy, "grad_norm": o.grad_norm, "zero_grad": o.zero_grad,
                          "unscale": o.unscale},
            "host": {"launch": h.launch, "capture": list(h.capture), "launch_us": h.launch_us,
                     "step_overhead_us": h.step_overhead_us},
            "defaults": dict(self.defaults),
        }

    @property
    def sha256(self) -> str:
        """Hash of the resolved choices (sweep cache keys, recorded with results)."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------- schema
_BOOL = "bool"
_SCHEMA: dict[str, dict[str, Any]] = {
    "attention": {"kernel": ("flash", "unfused"), "dropout": _BOOL, "flash_efficiency": "efficiency_table"},
    "kernels": {"hidden_dropout": _BOOL, "bias_dropout_add": ("fused", "unfused"),
                "bias_activation": ("fused", "unfused"), "bias_grad": ("fused", "separate"),
                "norm_weight_grad": ("fused", "separate"), "residual_grad": ("fused", "separate"),
                "sp_input_regather": _BOOL, "tp_async_grad_allreduce": _BOOL, "gemm_wave_tile": "tile_table",
                "wgrad_accumulate": ("none", "fp32")},
    "optimizer": {"param_copy": ("fused", "separate"), "grad_norm": _BOOL, "zero_grad": _BOOL, "unscale": _BOOL},
    "host": {"launch": ("device", "host"), "capture": "steps", "launch_us": "us_or_null",
             "step_overhead_us": "us"},
}
_TOP = ("name", "description", "source", "inherit", *_SCHEMA, "defaults")
_OPTIONAL_TOP = {"name", "description", "source", "inherit", "defaults"}
_OPTIONAL = {("attention", "flash_efficiency"), ("kernels", "tp_async_grad_allreduce"), ("kernels", "gemm_wave_tile"),
             ("kernels", "wgrad_accumulate")}
"""Keys a stack file may omit: they take the field's default (flash_efficiency, gemm_wave_tile: none;
tp_async_grad_allreduce: false; wgrad_accumulate: none)."""
MAX_TILE = 1024
"""Largest GEMM tile side accepted (rows or columns); real thread-block tiles are 16–512."""


def preset_names() -> list[str]:
    """Names of the built-in stack presets."""
    return _FILES.names()


def load_stack(name_or_path: str) -> Stack:
    """A preset by name or a user's YAML file by path (with ``inherit``), validated key by key.

    Raises:
        ConfigError: one line naming the file, the key path and what was expected.
    """
    raw, path = _FILES.read(name_or_path, _merge_sections)
    return stack_from_mapping(raw, str(path), path.stem)


def stack_from_mapping(data: Any, where: str, default_name: str) -> Stack:
    """Validate a mapping shaped like a stack file (a file, or a result's recorded ``assumptions.stack``).

    Raises:
        ConfigError: ``WHERE: .key.path: expected ..., got ...`` for unknown/missing keys and bad values.
    """
    if not isinstance(data, dict):
        got = "an empty file" if data is None else describe_value(data)
        raise ConfigError(f"{where}: a stack must be a YAML mapping of keys to values, got {got}")
    unknown = sorted((k for k in data if k not in _TOP), key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown key {describe_value(unknown[0])}; allowed keys: "
                          f"{', '.join(k for k in _TOP if k != 'inherit')}")
    missing = [k for k in _TOP if k not in data and k not in _OPTIONAL_TOP]
    if missing:
        raise ConfigError(f"{where}: missing section {missing[0]!r} (keys: {', '.join(_SCHEMA[missing[0]])})")
    text = {}
    for key in ("name", "description", "source"):
        value = data.get(key, default_name if key == "name" else "")
        if not isinstance(value, str) or (key == "name" and not value.strip()):
            raise ConfigError(f"{where}: .{key}: expected text, got {describe_value(value)}; quote it")
        text[key] = value
    sec = {name: _section(data[name], schema, where, name) for name, schema in _SCHEMA.items()}
    host = HostChoice(**sec["host"])
    if host.launch == "device" and "decode" not in host.capture:
        raise ConfigError(f"{where}: .host.capture: a stack with launch: device must capture decode steps "
                          "(tspsim replays them as graphs); use launch: host to simulate eager decode")
    defaults = data.get("defaults", {}) or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{where}: .defaults: expected a mapping of assumption keys to values, got "
                          f"{describe_value(defaults)}")
    for key, value in defaults.items():
        if not isinstance(key, str) or isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{where}: .defaults.{key}: expected a number, true/false or text, got "
                              f"{describe_value(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: .defaults.{key}: NaN and infinity are not allowed")
    return Stack(name=text["name"], description=text["description"], source=text["source"],
                 attention=AttentionChoice(**sec["attention"]), kernels=KernelChoice(**sec["kernels"]),
                 optimizer=OptimizerChoice(**sec["optimizer"]), host=host,
                 defaults=tuple(sorted(defaults.items())))


def _section(data: Any, schema: dict[str, Any], where: str, name: str) -> dict[str, Any]:
    """Check one section against its schema; returns the converted values."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: .{name}: expected a mapping of keys to values, got {describe_value(data)}")
    unknown = sorted((k for k in data if k not in schema), key=str)
    if unknown:
        raise ConfigError(f"{where}: .{name}: unknown key {describe_value(unknown[0])}; allowed keys: "
                          f"{', '.join(schema)}")
    out: dict[str, Any] = {}
    for key, rule in schema.items():
        path = f"{where}: .{name}.{key}"
        if key not in data:
            if (name, key) not in _OPTIONAL:
                raise ConfigError(f"{path}: missing ({_expected(rule)})")
            if rule != _BOOL and not isinstance(rule, tuple):   # tables: empty; flags and choices: their default
                out[key] = ()
            continue
        out[key] = _value(data[key], rule, path)
    return out


def _expected(rule: Any) -> str:
    if isinstance(rule, tuple):
        return "one of " + ", ".join(rule)
    return {_BOOL: "true or false", "steps": f"a list of step kinds ({', '.join(STEP_KINDS)})",
            "us": "a number of µs ≥ 0", "us_or_null": "a number of µs ≥ 0, or null",
            "efficiency_table": "a mapping GPU name → {fwd, bwd} efficiencies in (0, 1]",
            "tile_table": f"a mapping GPU name → [rows, columns], whole numbers in 1–{MAX_TILE}"}[rule]


def _value(value: Any, rule: Any, path: str) -> Any:
    if isinstance(rule, tuple):
        if not isinstance(value, str) or value not in rule:
            raise ConfigError(f"{path}: expected one of {', '.join(rule)}, got {describe_value(value)}")
        return value
    if rule == _BOOL:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {describe_value(value)}")
        return value
    if rule == "steps":
        if not isinstance(value, list) or any(not isinstance(v, str) or v not in STEP_KINDS for v in value):
            raise ConfigError(f"{path}: expected {_expected(rule)}, got {describe_value(value)}")
        return tuple(sorted(set(value), key=STEP_KINDS.index))
    if rule == "us_or_null" and value is None:
        return None
    if rule in ("us", "us_or_null"):
        return _number(value, path, 0.0, MAX_HOST_US, "µs")
    if rule == "tile_table":
        return _tile_table(value, path)
    return _efficiency_table(value, path)


def _number(value: Any, path: str, low: float, high: float, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{path}: expected a number, got {describe_value(value)}{number_hint(value)}")
    if not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"{path}: {describe_value(value)} is outside [{low:g}, {high:g}] {unit}; check the units")
    return float(value)


def _efficiency_table(value: Any, path: str) -> tuple[tuple[str, float, float], ...]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected {_expected('efficiency_table')}, got {describe_value(value)}")
    rows = []
    for gpu, pair in value.items():
        where = f"{path}.{gpu}"
        if not isinstance(gpu, str) or not isinstance(pair, dict) or set(pair) != {"fwd", "bwd"}:
            raise ConfigError(f"{where}: expected {{fwd: EFF, bwd: EFF}}, got {describe_value(pair)}")
        effs = []
        for key in ("fwd", "bwd"):
            eff = pair[key]
            if isinstance(eff, bool) or not isinstance(eff, (int, float)) or not 0.0 < eff <= 1.0:
                raise ConfigError(f"{where}.{key}: an efficiency must be in (0, 1], got {describe_value(eff)}")
            effs.append(float(eff))
        rows.append((gpu, effs[0], effs[1]))
    return tuple(sorted(rows))


def _tile_table(value: Any, path: str) -> tuple[tuple[str, int, int], ...]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected {_expected('tile_table')}, got {describe_value(value)}")
    rows = []
    for gpu, tile in value.items():
        ok = isinstance(gpu, str) and isinstance(tile, list) and len(tile) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_TILE for v in tile)
        if not ok:
            raise ConfigError(f"{path}.{gpu}: expected [rows, columns], whole numbers in 1–{MAX_TILE} "
                              f"(e.g. [256, 128]), got {describe_value(tile)}")
        rows.append((gpu, tile[0], tile[1]))
    return tuple(sorted(rows))


# ---------------------------------------------------------------------------------- files
def _merge_sections(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """A child stack over its parent: each section's keys replace the parent's, others are kept.

    The parent's ``name`` is not inherited: a child without one is named after its file.
    """
    merged = copy.deepcopy(parent)
    merged.pop("name", None)
    for section, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **copy.deepcopy(value)}
        else:
            merged[section] = copy.deepcopy(value)
    return merged

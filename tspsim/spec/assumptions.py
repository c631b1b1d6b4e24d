"""The assumptions in force: every open modelling question as a documented option (tsp.md §8, fidelity rule 7).

Every open question of tsp.md §8 is an :class:`Assumptions` field with a documented default, set with
``--option KEY=VALUE``; the report prints the ones in force.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from tspsim.core.errors import ConfigError
from tspsim.spec.stack import DEFAULT_STACK, Stack, load_stack, stack_from_mapping

TRAINING_ONLY_OPTIONS = ("recompute", "recompute_num_layers", "grad_bytes", "master_bytes", "optimizer_bytes", "zero",
                         "hsdp", "reshard_after_forward", "dp_bucket_MB", "tsp_grad_return", "sp_keep_gathered_kv",
                         "pp_overlap_p2p", "pp_scatter_gather")
"""Assumptions that only change backward, gradients, the optimizer or the pipeline (no effect on prefill or decode)."""

ZERO_STAGES = (0, 1, 2, 3)
"""ZeRO stages (``--zero``): 0 none, 1 optimizer state, 2 + gradients, 3 + parameters (FSDP)."""

SP_ATTENTION = ("allgather", "ring", "ulysses")
"""Values of the ``sp_attention`` option (the SP algorithms of :mod:`tspsim.schedules.sp_attention`)."""

INFERENCE_ONLY_OPTIONS = ("tsp_decode", "satp_batch_kv", "decode_launch_us", "decode_gemm_rolloff")
"""Assumptions that only change prefill or decode (no effect on train or forward)."""


def default_stack() -> Stack:
    """The default software stack (:data:`tspsim.spec.stack.DEFAULT_STACK`), read from its preset file."""
    return load_stack(DEFAULT_STACK)


@dataclass(frozen=True)
class Assumptions:
    """Modelling choices (tsp.md §8). Defaults reproduce the paper's single-node memory table."""

    stack: Stack = field(default_factory=default_stack)
    """The software stack (:mod:`tspsim.spec.stack`): attention kernel, fusions, optimizer passes, host
    costs. Set by name or YAML path (``--stack``, ``--option stack=…``); its ``defaults`` become the defaults
    of the other options."""
    recompute: Literal["none", "selective", "full"] = "full"
    """Activation recomputation (Korthikanti et al. 2022, as Megatron-LM implements it): ``none`` saves every
    activation; ``selective`` recomputes the core attention (QKᵀ, softmax, dropout, A·V) in backward from the
    saved Q, K, V — with a flash kernel that is what its backward does anyway, so selective equals none;
    ``full`` saves only each block's input and re-runs the block's forward (with its communication)
    during backward."""
    recompute_num_layers: int = 0
    """With ``recompute=full``: recompute only the first k blocks (Megatron's ``--recompute-method block
    --recompute-num-layers k``); the others keep every activation. 0: every block."""
    param_bytes: int = 2
    """Bytes per stored parameter (bf16 weights)."""
    grad_bytes: int = 4
    """Bytes per gradient element (fp32 main gradients, as Megatron-LM)."""
    master_bytes: int = 4
    """Bytes per fp32 master weight kept by the optimizer."""
    optimizer_bytes: int = 8
    """Bytes of optimizer state per parameter (Adam m and v in fp32)."""
    zero: int = 0
    """ZeRO stage on the data-parallel axis (Rajbhandari et al. 2020; ``--zero``; ``zero1=true`` is ``zero=1``):
    0 — gradients all-reduced, everything replicated; 1 — optimizer state and master weights sharded over the
    gradient group (gradients reduce-scattered once per step, parameters all-gathered after the optimizer);
    2 — + gradients sharded (reduce-scattered per layer after every micro-batch's backward, as DeepSpeed and
    FSDP do); 3 — + parameters sharded (FSDP: each layer's parameters all-gathered before its forward and
    again before its backward, the next layer's gather prefetched, gradients reduce-scattered per layer)."""
    hsdp: int = 0
    """Hybrid sharding (HSDP, FSDP2's 2-D mesh): shard ZeRO state inside groups of this many ranks of the
    gradient group (consecutive data-parallel replicas, e.g. one node's) and replicate across groups, whose
    gradient shards are then all-reduced; 0 shards over the whole gradient group."""
    reshard_after_forward: bool = True
    """ZeRO-3: free each layer's gathered parameters after its forward and gather them again before its backward
    (FSDP's default); false keeps them gathered until the layer's backward (one gather per micro-batch, more
    memory: torchtitan's choice with pipeline parallelism)."""
    pp_overlap_p2p: bool = True
    """Pipeline point-to-point transfers run on their own streams and each receive is posted one pass ahead, so
    they overlap compute (Megatron-Core ``overlap_p2p_comm``); false: a stage blocks until its send of a pass's
    output and its receive of the next pass's input finish, receives posted only when the stage gets there
    (Megatron-LM 2022's batched isend/irecv followed by wait)."""
    pp_scatter_gather: bool = True
    """A stage-boundary activation (or gradient) replicated over the TP group is sent as 1/T slices, one per TP
    rank over its own link, and all-gathered over the node fabric by the receiving stage (Narayanan et al. 2021
    §4.1, Megatron's scatter/gather optimisation); false sends the whole tensor from every TP rank."""
    dp_bucket_MB: float = 25.0
    """Gradient bucket size for the data-parallel all-reduce, MB (PyTorch DDP's default 25 MB)."""
    weight_buffers: int = 2
    """TSP: weight shards in flight (2 = double buffering: shard r+1 moves while shard r computes)."""
    tsp_kv_lookahead: bool = True
    """TSP: project shard r+1 and start its K/V all-gather before shard r's attention, so the gather
    overlaps attention (software pipelining of the broadcast loop; needs weight_buffers ≥ 2)."""
    kv_buckets: int = 1
    """TSP: K/V all-gathers per head shard (head bucketing: more, smaller gathers, less memory)."""
    pack_kv: bool = True
    """Gather K and V in one packed collective (False: two all-gathers)."""
    tsp_grad_return: Literal["reduce", "ring"] = "ring"
    """TSP backward: partial gradients of MLP shards travel the ring with their shard (ring
    reduce-scatter); attention shard gradients are reduced to the owner. ``reduce`` reduces both."""
    satp_seq_attention: Literal["gather-kv", "gather-input"] = "gather-kv"
    """satp-seq: ``gather-kv`` follows the reference article's table (K/V projected on the local
    sequence shard and all-gathered; Q from the gathered input); ``gather-input`` is Megatron-LM
    sequence parallelism (the input all-gather alone makes K/V visible)."""
    sp_keep_gathered_kv: bool = True
    """SP-style schedules (``sp``, ``tp+sp``, ``satp-seq``) keep each block's gathered K/V from the forward
    pass until that block's backward instead of gathering again (as all-gather context-parallel
    implementations do). Calibrated: with it the TP+SP rows of tsp.md §6 are reproduced. TSP never keeps
    them (it gathers one head shard at a time by design)."""
    sp_attention: Literal["allgather", "ring", "ulysses"] = "allgather"
    """How a sequence-sharded (SP) axis — ``sp``, the Σ axis of ``tp+sp`` — computes attention
    (:mod:`tspsim.schedules.sp_attention`): ``allgather`` all-gathers K and V over the sequence shards (Llama 3
    context parallelism; today's default); ``ring`` passes K/V blocks around the ring with point-to-point sends
    while each rank attends to the block it holds, merging by log-sum-exp (Megatron-Core / TransformerEngine
    context parallelism: zig-zag chunks, double-buffered ring, dK/dV travel the ring in backward; needs a flash
    kernel); ``ulysses`` re-shards Q, K, V from sequence to heads by all-to-all before attention and the output
    back after it (DeepSpeed Ulysses: 4 all-to-alls forward; heads per TP shard divisible by Σ). Decode steps
    combine partial attention over the sequence-sharded cache the same way for all three."""
    sp_kv_buckets: int = 1
    """``sp_attention=allgather``: K/V all-gathers per block over head buckets (head bucketing: bucket b+1 is
    gathered while bucket b attends, two buckets in flight; less gathered-K/V memory when it is not kept)."""
    tp_overlap: bool = False
    """Overlap TP all-reduces with independent compute (off: TP collectives are exposed, as in
    Megatron-LM without communication overlap)."""
    logits_bytes: int = 4
    """Bytes per logit element (fp32 logits for the loss)."""
    tsp_decode: Literal["weights", "token"] = "weights"
    """TSP decode (tsp.md §7): ``weights`` moves the layer's weight shards every step as the training
    forward does (attention broadcast loop, MLP ring; the new tokens are replicated); ``token`` keeps the
    weights with their owners and moves the tokens' activations (Q/K/V all-gather, partial attention
    over each rank's KV chunk combined flash-decoding style, then TP-like all-reduces)."""
    satp_batch_kv: Literal["batch", "heads"] = "batch"
    """KV cache of ``satp-batch`` in inference: ``batch`` keeps each rank's B/p sequences whole (all
    heads, 2·(B/p)·T·H_kv·s per block), so the column-parallel Q/K/V head shards are exchanged to the
    sequences' owners by an all-to-all before attention and the outputs exchanged back after it
    (prefill re-lays each block's K/V by one all-to-all); ``heads`` keeps the cache head-sharded like
    classic TP (every sequence, the rank's heads) and attention needs no exchange — the article's
    "no collective" row. Same bytes per GPU either way."""
    decode_launch_us: float = 1.0
    """Device-side gap between kernels already queued on the GPU, µs (assumed): the per-kernel overhead of
    steps run as captured HIP/CUDA graphs (decode, as vLLM and SGLang run it) and of kernels an eager CPU
    issued ahead of the GPU (stacks with ``host.launch: host``), in place of the topology's
    ``kernel_launch_us``."""
    decode_gemm_rolloff: bool = True
    """Apply the small-GEMM efficiency roll-off to decode kernels. It is shape-aware
    (:func:`tspsim.engine.costs.tail_fraction`): a T_q = 1 GEMM is GEMV-class, far below the roofline ridge, and
    pays only I/I_ridge of the tail, so decode stays bound by streaming weights from HBM. Off: the plain
    roofline (no tail at all)."""

    def to_json(self) -> dict[str, Any]:
        """All fields; ``stack`` as its resolved choices (:meth:`tspsim.spec.stack.Stack.to_json`)."""
        out = asdict(self)
        out["stack"] = self.stack.to_json()
        return out

    @classmethod
    def from_overrides(cls, pairs: dict[str, Any], stacks: Callable[[str], Stack] = load_stack) -> Assumptions:
        """Defaults, then the stack's ``defaults``, then ``key=value`` overrides (command-line strings converted).

        ``stack`` takes a preset name or YAML path, a :class:`~tspsim.spec.stack.Stack`, or a recorded mapping
        (a result's or trace's ``assumptions.stack``). ``stacks`` reads a stack by name or path (a memo of
        :class:`~tspsim.spec.loader.SpecLoader` reads each file once).
        """
        known = {f.name: f for f in fields(cls)}
        pairs = _zero1_alias(dict(pairs))
        for key in pairs:
            if key not in known:
                raise ConfigError(f"unknown option {key!r}; known options: {', '.join(known)}")
        base = cls(stack=stacks(DEFAULT_STACK) if "stack" not in pairs else _stack(pairs["stack"], stacks))
        values: dict[str, Any] = {}
        for key, raw in _zero1_alias(dict(base.stack.defaults)).items():
            if key not in known or key == "stack":
                raise ConfigError(f"stack {base.stack.name}: defaults.{key}: unknown option; known options: "
                                  f"{', '.join(k for k in known if k != 'stack')}")
            values[key] = _convert(key, raw, getattr(base, key))
        for key, raw in pairs.items():
            if key != "stack":
                values[key] = _convert(key, raw, getattr(base, key))
        out = replace(base, **values)
        out.validate()
        return out

    def validate(self) -> None:
        """Range checks with one-line errors."""
        choices = {"recompute": ("none", "selective", "full"), "tsp_grad_return": ("reduce", "ring"),
                   "satp_seq_attention": ("gather-kv", "gather-input"), "tsp_decode": ("weights", "token"),
                   "satp_batch_kv": ("batch", "heads"), "sp_attention": SP_ATTENTION}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"option {key}={getattr(self, key)!r}: choose one of {', '.join(allowed)}")
        # (key, minimum, maximum): bytes per element are at most 64; counts stay small enough to simulate.
        bounds = (("param_bytes", 1, 64), ("grad_bytes", 1, 64), ("logits_bytes", 1, 64), ("master_bytes", 0, 64),
                  ("optimizer_bytes", 0, 256), ("weight_buffers", 1, 64), ("kv_buckets", 1, 4096),
                  ("sp_kv_buckets", 1, 4096), ("dp_bucket_MB", 1e-3, 1e6), ("decode_launch_us", 0.0, 1e6),
                  ("recompute_num_layers", 0, 1024), ("zero", 0, 3), ("hsdp", 0, 1 << 20))
        for key, low, high in bounds:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"option {key}={value!r}: expected a finite number between {low:g} and {high:g}")
            if not low <= value <= high:
                raise ConfigError(f"option {key}={value:g} is out of range: use a value between {low:g} and {high:g}")
        for key in ("recompute_num_layers", "sp_kv_buckets", "zero", "hsdp"):
            if not isinstance(getattr(self, key), int):
                raise ConfigError(f"option {key}={getattr(self, key)!r}: expected a whole number")
        if self.sp_attention == "ring" and self.stack.attention.kernel != "flash":
            raise ConfigError(f"option sp_attention=ring needs a flash attention kernel, but stack {self.stack.name} "
                              f"runs {self.stack.attention.kernel} attention (ring attention merges per-block outputs "
                              "by their log-sum-exp; TransformerEngine refuses context parallelism without a fused "
                              "kernel); use sp_attention=allgather or ulysses, or a stack with attention.kernel: flash")
        if self.recompute_num_layers and self.recompute != "full":
            raise ConfigError(f"option recompute_num_layers={self.recompute_num_layers} applies to recompute=full "
                              f"(the first k blocks fully recomputed); with recompute={self.recompute} drop it")


def _zero1_alias(pairs: dict[str, Any]) -> dict[str, Any]:
    """``zero1=true|false`` (the option before ZeRO stages existed; recorded in older results) → ``zero=1|0``."""
    if "zero1" not in pairs:
        return pairs
    raw = pairs.pop("zero1")
    on = raw if isinstance(raw, bool) else _convert("zero1", raw, False)
    if not isinstance(on, bool):
        raise ConfigError(f"option zero1={raw!r}: expected true or false (or use --zero 0|1|2|3)")
    if "zero" in pairs and str(pairs["zero"]) != str(int(on)):
        raise ConfigError(f"option zero1={raw} contradicts zero={pairs['zero']}; give one (--zero 0|1|2|3)")
    pairs.setdefault("zero", int(on))
    return pairs


def _stack(value: Any, stacks: Callable[[str], Stack] = load_stack) -> Stack:
    """A stack from a preset name or path, a Stack, or a recorded mapping."""
    if isinstance(value, Stack):
        return value
    if isinstance(value, dict):
        return stack_from_mapping(value, "recorded stack", "stack")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"option stack={value!r}: give a stack preset name (tspsim list stacks) or a YAML path")
    return stacks(value.strip())


def _convert(key: str, raw: Any, default: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"option {key}={raw!r}: expected true or false")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"option {key}={raw!r}: expected a whole number") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"option {key}={raw!r}: expected a number") from None
    return raw


def parse_option_pairs(items: Sequence[str], recompute: str | None = None,
                       stack: str | None = None, zero: int | None = None) -> tuple[tuple[str, Any], ...]:
    """``--option KEY=VALUE`` strings (and ``--recompute``, ``--stack``, ``--zero``) → validated, sorted pairs.

    Raises:
        ConfigError: for a malformed item, an unknown key, a bad value, or ``--recompute`` / ``--stack``
            contradicting ``--option recompute=…`` / ``--option stack=…`` (one line).
    """
    pairs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE, e.g. --option recompute=none")
        pairs[key.strip()] = value.strip()
    if recompute is not None:
        if "recompute" in pairs and pairs["recompute"] != recompute:
            raise ConfigError(f"--recompute {recompute} contradicts --option recompute={pairs['recompute']}; "
                              "give one")
        pairs["recompute"] = recompute
    if zero is not None:
        given = pairs.get("zero", pairs.get("zero1"))
        if given is not None and str(_zero1_alias({k: v for k, v in pairs.items() if k in ("zero", "zero1")})
                                     .get("zero")) != str(zero):
            raise ConfigError(f"--zero {zero} contradicts --option {'zero' if 'zero' in pairs else 'zero1'}={given}; "
                              "give one")
        pairs.pop("zero1", None)
        pairs["zero"] = zero
    if stack is not None:
        if "stack" in pairs and pairs["stack"] != stack:
            raise ConfigError(f"--stack {stack} contradicts --option stack={pairs['stack']}; give one")
        pairs["stack"] = stack
    Assumptions.from_overrides(pairs)  # validate now: one-line error before any simulation
    return tuple(sorted(pairs.items()))

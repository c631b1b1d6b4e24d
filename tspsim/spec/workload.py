"""What one simulated step does: the mode, the sequence, the batch and the tokens to generate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["train", "forward", "prefill", "decode", "generate"]
MODES = ("train", "forward", "prefill", "decode", "generate")
"""Every workload mode, in the order the command line lists them."""

INFERENCE_MODES = ("prefill", "decode", "generate")
"""Modes with a KV cache, simulated step by step (:mod:`tspsim.simulate.inference`)."""

DEFAULT_DECODE_TOKENS = 128
"""Tokens generated when a decode/generate workload does not say (``--tokens``)."""


@dataclass(frozen=True)
class Workload:
    """What one simulated step does."""

    mode: Mode = "train"
    """``train`` (forward + backward + optimizer), ``forward`` (the paper's throughput benchmark),
    ``prefill``, ``decode`` or ``generate``."""
    seq_len: int = 131072
    """Tokens per sequence S (for decode: the cached context)."""
    batch: int = 1
    """Sequences per replica per step (micro-batch B)."""
    decode_tokens: int = 0
    """New tokens generated (decode / generate)."""

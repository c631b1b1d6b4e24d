"""What one simulated step does: the mode, the sequence, the batch and the tokens to generate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tspsim.core.errors import ConfigError

Mode = Literal["train", "forward", "prefill", "decode", "generate"]
MODES = ("train", "forward", "prefill", "decode", "generate")
"""Every workload mode, in the order the command line lists them."""

INFERENCE_MODES = ("prefill", "decode", "generate")
"""Modes with a KV cache, simulated step by step (:mod:`tspsim.simulate.inference`)."""

DEFAULT_DECODE_TOKENS = 128
"""Tokens generated when a decode/generate workload does not say (``--tokens``)."""

MAX_SEQ_LEN = 1 << 30
"""Longest sequence or context (tokens), as for a model's ``default_seq``."""
MAX_BATCH = 1 << 20
"""Largest micro-batch (the max-batch search stops there too)."""
MAX_DECODE_TOKENS = 1 << 15
"""Most tokens generated per sequence (32,768, a long reasoning trace): every decode step is timed (a replay
of at least a two-block graph, about a millisecond on a small model, several on a large one), so the bound
keeps a run to minutes."""


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

    def __post_init__(self) -> None:
        """Reject workloads that mean nothing (no tokens) or that the simulation cannot carry.

        Raises:
            ConfigError: one line naming the value, its flag and the accepted range.
        """
        if self.mode not in MODES:
            raise ConfigError(f"mode {self.mode!r}: choose one of {', '.join(MODES)}")
        what = "context length (--context)" if self.mode == "decode" else "sequence length (--seq)"
        _bounded(self.seq_len, 1, MAX_SEQ_LEN, what, "tokens")
        _bounded(self.batch, 1, MAX_BATCH, "batch (--batch)", "sequences")
        _bounded(self.decode_tokens, 0, MAX_DECODE_TOKENS, "tokens to generate (--tokens)", "tokens")


def _bounded(value: object, lo: int, hi: int, what: str, unit: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be a whole number of {unit}, got {value!r}"[:200])
    if not lo <= value <= hi:
        raise ConfigError(f"{what} {value:,} is outside [{lo:,}, {hi:,}] {unit}; "
                          + ("give at least one" if value < lo else f"use at most {hi:,}"))

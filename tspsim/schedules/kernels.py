"""The small kernels around a block's GEMMs, fused or not as the stack says (:class:`tspsim.spec.stack.KernelChoice`).

All are HBM-bound elementwise or reduction passes over N = tokens·H (or tokens·width) elements of s bytes:

* **bias-dropout-add** after each row-parallel projection. Fused (one kernel): reads the branch and the
  residual, writes the sum — 3·N·s — plus the 1-byte dropout mask (N) when training with
  ``hidden_dropout``. Unfused: a bias add (2·N·s, models with biases), a dropout (N·(2s + 1)) and the
  residual add (3·N·s). The mask is saved for backward unless the block is recomputed.
* **its backward**: dropout backward on the branch gradient (reads it and the mask, writes it:
  N·(2s + 1)); the row-parallel bias gradient (a reduction reading N·s) when biases are not reduced in a
  GEMM epilogue (``bias_grad: separate``).
* **bias before the activation** (``bias_activation: unfused``): a bias add over the fc1 output.
* **norm backward**: the norm's input gradient as one pass (4·N·s, as before stacks); a ``separate``
  weight-gradient pass re-reads the input and the output gradient (2·N·s); a ``separate`` residual-fork
  gradient sum reads two tensors and writes one (3·N·s).
"""

from __future__ import annotations

from collections.abc import Iterable

from tspsim.schedules.context import BuildContext

Mem = list[tuple[str, str, int]]


def dropout_on(c: BuildContext) -> bool:
    """Hidden dropout runs (training steps of a stack with ``hidden_dropout``)."""
    return c.training and c.stack.kernels.hidden_dropout


def dropout_mask_bytes(c: BuildContext, tokens: float) -> int:
    """Bytes of one hidden-dropout mask over ``tokens`` rows (1 byte per element), 0 without dropout."""
    return int(tokens * c.model.hidden) if dropout_on(c) else 0


def residual_forward(c: BuildContext, rank: int, prefix: str, tokens: float, *, layer: int, phase: str,
                     after: Iterable[int | None], keep_mask: bool) -> int:
    """Bias-dropout-add of ``tokens`` rows after a row-parallel projection; returns the last op's id."""
    s, H = c.s, c.model.hidden
    n = tokens * H
    mask = dropout_mask_bytes(c, tokens)
    saved: Mem = [("end", "activations", mask)] if mask and keep_mask else []
    bias = c.model.biases
    if c.stack.kernels.bias_dropout_add == "fused":
        return c.elementwise(rank, prefix + ".residual_add", 3 * n * s + mask + (H * s if bias else 0), layer=layer,
                             phase=phase, after=after, mem=saved)
    if bias:
        after = [c.elementwise(rank, prefix + ".bias_add", 2 * n * s, layer=layer, phase=phase, after=after)]
    if mask:
        after = [c.elementwise(rank, prefix + ".dropout", n * (2 * s + 1), layer=layer, phase=phase, after=after,
                               mem=saved)]
    return c.elementwise(rank, prefix + ".residual_add", 3 * n * s, layer=layer, phase=phase, after=after)


def residual_backward(c: BuildContext, rank: int, prefix: str, tokens: float, *, layer: int,
                      after: Iterable[int | None], mask_saved: int) -> int | None:
    """Dropout backward and the row-parallel bias gradient of the branch gradient; None if the stack has neither."""
    s, n = c.s, tokens * c.model.hidden
    last = None
    if dropout_on(c):
        free: Mem = [("end", "activations", -mask_saved)] if mask_saved else []
        last = c.elementwise(rank, prefix + ".dropout", n * (2 * s + 1), layer=layer, phase="bwd", after=after,
                             mem=free)
        after = [last]
    return bias_grad(c, rank, prefix + ".bias_grad", n, layer=layer, after=after) or last


def bias_grad(c: BuildContext, rank: int, name: str, elements: float, *, layer: int,
              after: Iterable[int | None]) -> int | None:
    """A bias-gradient reduction reading ``elements`` gradient values (biased models, ``bias_grad: separate``)."""
    if not c.model.biases or c.stack.kernels.bias_grad != "separate":
        return None
    return c.elementwise(rank, name, elements * c.s, layer=layer, phase="bwd", after=after)


def bias_before_activation(c: BuildContext, rank: int, name: str, elements: float, *, layer: int, phase: str,
                           after: Iterable[int | None]) -> int | None:
    """The fc1 bias add as its own kernel (biased models, ``bias_activation: unfused``); None when fused."""
    if not c.model.biases or c.stack.kernels.bias_activation != "unfused":
        return None
    return c.elementwise(rank, name, 2 * elements * c.s, layer=layer, phase=phase, after=after)


def norm_backward(c: BuildContext, rank: int, prefix: str, tokens: float, *, layer: int, after: Iterable[int | None],
                  mem: Mem) -> int:
    """Norm backward over ``tokens`` rows and the stack's separate passes.

    ``mem`` (freeing the saved norm input) goes on the last of them.
    """
    s, n = c.s, tokens * c.model.hidden
    k = c.stack.kernels
    passes = [(".norm", 4 * n * s)]
    if k.norm_weight_grad == "separate":
        passes.append((".norm_wgrad", 2 * n * s))
    if k.residual_grad == "separate":
        passes.append((".residual_grad", 3 * n * s))
    last = None
    for i, (name, nbytes) in enumerate(passes):
        last = c.elementwise(rank, prefix + name, nbytes, layer=layer, phase="bwd", after=after,
                             mem=mem if i == len(passes) - 1 else [])
        after = [last]
    assert last is not None
    return last

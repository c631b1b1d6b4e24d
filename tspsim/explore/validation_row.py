"""A validation row: one published number or band against its simulated counterpart, and the citations.

Row providers (:mod:`tspsim.explore.validation`, :mod:`tspsim.explore.validation_stacks`) build rows
with :class:`Row` and fill them with :func:`try_row`; ``tspsim validate`` shows them in two sections by
:attr:`Row.kind` (README: Validation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Any

from tspsim.core.errors import TspsimError

KINDS = ("calibration", "independent")
"""Row kinds, in report order."""

TSP_PAPER = ("Shyam, Golubeva, Anthony, \"Folding Tensor and Sequence Parallelism for Memory-Efficient "
             "Transformer Training & Inference\", arXiv:2604.26294 (2026), single-node peak memory per GPU "
             "(8 × MI300X, 7B model, 128K tokens, training); https://arxiv.org/abs/2604.26294 and "
             "https://www.zyphra.com/post/tsp")
AZURE_RCCL = ("Azure AI benchmarking guide, ND MI300X v5 results, rccl-tests all_reduce_perf, 8 GPUs, 8 GB: "
              "316.8 GB/s busbw; https://github.com/samuel-bohman/AI-benchmarking-guide/tree/main/Azure_Results")
OHARA_RCCL = ("H. Ohara, ai-scripts RCCL smoke test, 8 × MI300X (AMD Accelerator Cloud), rccl-tests "
              "all_reduce_perf, 1 KB–64 KB: 13.7–14.3 µs; "
              "https://github.com/hisohara/ai-scripts/blob/main/training/01_rccl-smoketest/README.md")
BEKMAN_NVLINK = ("S. Bekman, Machine Learning Engineering, network chapter: H200 8-GPU all_reduce busbw at "
                 "16 GiB, ring (NCCL_NVLS_ENABLE=0): 367.6 GB/s; "
                 "https://github.com/stas00/ml-engineering/blob/master/network/README.md")
PRIMUS_MFU = ("tprimat benchmark summary (Primus on MI300X; 7–8B dense, BF16, one node: 30–40 % MFU, low "
              "confidence); https://github.com/DmitriiNikolaevAtAmd/tprimat/blob/main/PEAK_THROUGHPUT_GUIDE.md")
TORCHTITAN_MFU = ("torchtitan Llama 3 8B benchmarks on H100 (33–39 % MFU; https://github.com/pytorch/torchtitan/"
                  "blob/main/benchmarks/llama3_h100_202412_torchtitan.md) and Megatron-class stacks up to ~45 % "
                  "(NVIDIA Megatron-Bridge performance summary; https://github.com/NVIDIA-NeMo/Megatron-Bridge/"
                  "blob/main/docs/performance-summary-archive.md)")

MFU_BANDS = (("mi300x-1node", 0.30, 0.40, PRIMUS_MFU), ("h100-dgx-1node", 0.33, 0.45, TORCHTITAN_MFU))
"""(topology, band low, band high, source) of the end-to-end MFU sanity bands (fractions)."""

_ON_SETTLE: ContextVar[Callable[[Row], None] | None] = ContextVar("tspsim_validation_progress", default=None)
"""Told about every settled row while :func:`validation_rows` runs with a ``progress`` callback."""


@dataclass
class Row:
    """One published number (or band) against its simulated counterpart."""

    id: str
    """Stable short id, e.g. ``memory.tsp``."""
    what: str
    """What is compared, readable."""
    topology: str
    """Topology simulated."""
    unit: str
    """Unit of the published and simulated values."""
    published: float | None
    """The published value (None for a band, or for a TP+SP layout not matched to a number)."""
    tolerance_pct: float
    """Declared tolerance, % of the published value (or of the nearer band edge)."""
    source: str
    """Where the published value comes from: a full citation (paper and table, or URL)."""
    simulated: float | None = None
    """The simulated value (None: not available)."""
    error_pct: float | None = None
    """(simulated − published) / published × 100; for a band the distance to the nearer edge (0 inside)."""
    within: bool | None = None
    """|error_pct| ≤ tolerance_pct; None when not available."""
    note: str = ""
    """Extra information (assignment choices, why a row is n/a)."""
    kind: str = "independent"
    """``calibration`` (a preset constant was fitted to this number) or ``independent``."""
    calibrates: str = ""
    """For a calibration row: the constant(s) fitted to it."""
    published_low: float | None = None
    """Lower end of a published band (with ``published_high``; ``published`` is then None)."""
    published_high: float | None = None
    """Upper end of a published band."""

    def settle(self, simulated: float) -> Row:
        """Record the simulated value, its error and pass/fail; returns self."""
        if self.published_low is not None and self.published_high is not None:
            lo, hi = self.published_low, self.published_high
            edge = lo if simulated < lo else hi if simulated > hi else None
            self.error_pct = 0.0 if edge is None else (simulated - edge) / edge * 100.0
        elif self.published is None:
            raise ValueError(f"row {self.id}: no published value to compare with")
        else:
            self.error_pct = (simulated - self.published) / self.published * 100.0
        self.simulated = simulated
        self.within = abs(self.error_pct) <= self.tolerance_pct
        notify = _ON_SETTLE.get()
        if notify is not None:
            notify(self)
        return self

    def published_text(self) -> str:
        """``316.8 GB/s``, a band ``30–40 %``, or ``n/a``."""
        if self.published_low is not None and self.published_high is not None:
            return f"{self.published_low:g}–{self.published_high:g} {self.unit}"
        return "n/a" if self.published is None else f"{self.published:g} {self.unit}"

    def to_json(self) -> dict[str, Any]:
        """All fields."""
        return asdict(self)


def try_row(row: Row, compute: Callable[[], float]) -> Row:
    """Fill ``row`` from ``compute()``, or mark it n/a with the reason (one line)."""
    try:
        return row.settle(compute())
    except TspsimError as exc:
        row.note = f"n/a ({exc})"
        return row


@contextmanager
def reporting(progress: Callable[[Row], None] | None) -> Iterator[None]:
    """While inside, every :meth:`Row.settle` calls ``progress(row)`` (``tspsim validate``'s progress)."""
    token = _ON_SETTLE.set(progress)
    try:
        yield
    finally:
        _ON_SETTLE.reset(token)

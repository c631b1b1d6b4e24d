"""Measured kernel micro-benchmarks (a small CSV) for ``tspsim calibrate``'s compute fit.

One row per measured kernel; ``#`` lines are comments; the header names the columns (any order)::

    kind,m,n,k,batch,heads,seq,head_dim,causal,dtype,time_us
    gemm,8192,8192,8192,,,,,,bf16,1386.0
    gemm,16,8192,8192,,,,,,bf16,41.2
    attention_fwd,,,,2,32,8192,128,1,bf16,1950.0
    attention_bwd,,,,2,32,8192,128,1,bf16,5200.0

* ``gemm``: C[m×n] = A[m×k]·B[k×n], ``batch`` independent GEMMs (default 1);
* ``attention_fwd`` / ``attention_bwd``: flash attention over ``batch`` sequences of ``seq`` tokens, ``heads``
  query heads of ``head_dim``; ``causal`` 1 (default) or 0;
* ``dtype`` ``bf16`` or ``fp16`` (the compute model runs 16-bit kernels at ``peak_bf16_TFLOPS``; 2 bytes per
  element); ``time_us`` the measured kernel time in µs (GPU time, e.g. CUDA events or the profiler).

The FLOPs and HBM bytes of each shape are counted as the schedules count them
(:mod:`tspsim.explore.calibrate_compute`). Errors name the file, the line and the column.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

from tspsim.core.errors import ConfigError
from tspsim.core.files import read_document

KINDS = ("gemm", "attention_fwd", "attention_bwd")
"""Kernel kinds a micro-benchmark row may measure."""
DTYPES = {"bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "half": 2}
"""Accepted element types and their bytes."""
MAX_BENCH_BYTES = 4 << 20
"""Largest micro-benchmark file read."""
_NUMERIC = ("m", "n", "k", "batch", "heads", "seq", "head_dim", "causal")


@dataclass(frozen=True)
class Kernel:
    """One measured kernel."""

    line: int
    """Line in the file."""
    kind: str
    """``gemm``, ``attention_fwd`` or ``attention_bwd``."""
    shape: tuple[int, ...]
    """(m, n, k, batch) for a GEMM, (batch, heads, seq, head_dim, causal) for attention."""
    dtype_bytes: int
    """Bytes per element (2 for bf16 / fp16)."""
    time_us: float
    """Measured time, µs."""

    @property
    def label(self) -> str:
        """``gemm 8192x8192x8192`` / ``attention_fwd b2 h32 s8192 d128 causal``."""
        if self.kind == "gemm":
            m, n, k, b = self.shape
            return f"gemm {m}x{n}x{k}" + (f" x{b}" if b > 1 else "")
        b, h, s, d, causal = self.shape
        return f"{self.kind} b{b} h{h} s{s} d{d}" + (" causal" if causal else "")


def is_microbench(text: str) -> bool:
    """True if ``text`` looks like a micro-benchmark CSV (its header has ``kind`` and ``time_us``)."""
    for line in text.splitlines()[:50]:
        s = line.strip()
        if s and not s.startswith("#"):
            cols = [c.strip().lower() for c in s.split(",")]
            return "kind" in cols and "time_us" in cols
    return False


def read_microbench(path: str) -> tuple[Kernel, ...]:
    """Read a micro-benchmark CSV (module docstring).

    Raises:
        ConfigError: one line naming the file, line and column.
    """
    try:
        text = read_document(path, "micro-benchmark CSV", limit=MAX_BENCH_BYTES)
    except ConfigError:
        raise
    except Exception as exc:  # TraceError: keep the message, make it a configuration error
        raise ConfigError(str(exc)) from None
    lines = [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip() and
             not line.lstrip().startswith("#")]
    if not lines:
        raise ConfigError(f"{path}: no rows; expected a header 'kind,m,n,k,...,time_us' and one row per kernel")
    reader = csv.reader(io.StringIO("\n".join(line for _, line in lines)))
    rows = list(reader)
    header = [c.strip().lower() for c in rows[0]]
    missing = [c for c in ("kind", "time_us") if c not in header]
    if missing:
        raise ConfigError(f"{path}: line {lines[0][0]}: the header lacks '{missing[0]}'; expected columns kind, m, n, "
                          "k, batch, heads, seq, head_dim, causal, dtype, time_us")
    unknown = [c for c in header if c not in (*_NUMERIC, "kind", "dtype", "time_us")]
    if unknown:
        raise ConfigError(f"{path}: line {lines[0][0]}: unknown column {unknown[0]!r}; allowed: kind, "
                          f"{', '.join(_NUMERIC)}, dtype, time_us")
    out = []
    for (line, _), cells in zip(lines[1:], rows[1:]):
        if len(cells) != len(header):
            raise ConfigError(f"{path}: line {line}: {len(cells)} cells for {len(header)} columns")
        out.append(_kernel(path, line, dict(zip(header, (c.strip() for c in cells)))))
    if not out:
        raise ConfigError(f"{path}: a header but no rows")
    return tuple(out)


def _int(path: str, line: int, row: dict[str, str], key: str, default: int | None = None) -> int:
    text = row.get(key, "")
    if text == "":
        if default is None:
            raise ConfigError(f"{path}: line {line}: column '{key}' is empty; a {row.get('kind')} row needs it")
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 12 or (int(text) < 1 and key != "causal"):
        raise ConfigError(f"{path}: line {line}: column '{key}' should be a positive whole number, got {text[:20]!r}")
    return int(text)


def _kernel(path: str, line: int, row: dict[str, str]) -> Kernel:
    kind = row["kind"].lower()
    if kind not in KINDS:
        raise ConfigError(f"{path}: line {line}: kind {row['kind'][:20]!r} is not one of {', '.join(KINDS)}")
    dtype = row.get("dtype", "bf16").lower() or "bf16"
    if dtype not in DTYPES:
        raise ConfigError(f"{path}: line {line}: dtype {dtype[:20]!r}: the compute model runs 16-bit kernels at "
                          "peak_bf16_TFLOPS; give bf16 or fp16 rows")
    try:
        time_us = float(row["time_us"])
    except ValueError:
        raise ConfigError(f"{path}: line {line}: time_us should be a number, got {row['time_us'][:20]!r}") from None
    if not math.isfinite(time_us) or not 0 < time_us <= 1e9:
        raise ConfigError(f"{path}: line {line}: time_us {row['time_us'][:20]!r} must be in (0, 1e9] µs")
    s = DTYPES[dtype]
    if kind == "gemm":
        m, n, k = (_int(path, line, row, c) for c in ("m", "n", "k"))
        return Kernel(line, kind, (m, n, k, _int(path, line, row, "batch", 1)), s, time_us)
    b = _int(path, line, row, "batch", 1)
    h, seq, d = (_int(path, line, row, c) for c in ("heads", "seq", "head_dim"))
    causal = _int(path, line, row, "causal", 1)
    if causal not in (0, 1):
        raise ConfigError(f"{path}: line {line}: causal should be 0 or 1, got {causal}")
    return Kernel(line, kind, (b, h, seq, d, causal), s, time_us)

"""What an nccl-tests / rccl-tests log says besides its table: test, GPUs, nodes, NCCL_ALGO, version.

Used by :mod:`tspsim.spec.collective_log`; every pattern here is one a real log prints (or one a person
filing a report writes above it) — see that module's docstring for the order of precedence.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from tspsim.core.errors import TspsimError
from tspsim.core.units import parse_size

TESTS = {
    "all_reduce_perf": "all_reduce", "all_gather_perf": "all_gather", "reduce_scatter_perf": "reduce_scatter",
    "alltoall_perf": "all_to_all", "sendrecv_perf": "sendrecv", "broadcast_perf": "broadcast",
    "reduce_perf": "reduce",
}
"""nccl-tests binary → tspsim collective op."""
REDUCTIONS = ("sum", "prod", "max", "min", "avg", "mulsum")
"""nccl-tests ``redop`` values that reduce (all-gather, all-to-all, broadcast and sendrecv print ``none``)."""
FACTOR_TEXT = {"all_reduce": "2(n−1)/n", "all_gather": "(n−1)/n", "reduce_scatter": "(n−1)/n",
               "all_to_all": "(n−1)/n", "broadcast": "1", "reduce": "1", "sendrecv": "1"}
"""nccl-tests' bus-bandwidth factor per op (doc/PERFORMANCE.md), for messages."""

_TEST_RX = re.compile(r"\b(all_reduce|all_gather|reduce_scatter|alltoall|sendrecv|broadcast|reduce|gather|"
                      r"scatter|hypercube)_perf(?:_mpi)?\b")
_STARTING_RX = re.compile(r"^#\s*Collective test starting:\s*(\S+)")
_OP_COMMENT_RX = re.compile(r"^#\s*op:\s*(.*)")
_DEVICE_RX = re.compile(r"Rank\s+(\d+)\s+Group\s+\d+\s+Pid\s+\d+\s+on\s+(\S+)\s+device\s+(\d+)\s+\[[^\]]*\]\s*(.*)")
_ENV_SET_RX = re.compile(r"NCCL_(ALGO|PROTO) set by environment to\s+([^\s.]+)")
_ENV_COMMENT_RX = re.compile(r"^#\s*env:\s*(.*)")
_CMD_ENV_RX = re.compile(r"(?:^|\s)(?:-x\s+|--env\s+|export\s+)?NCCL_(ALGO|PROTO)=([A-Za-z0-9_^,]+)")
_KEY_VALUE_RX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")
_LIBRARY_RX = re.compile(r"^#?\s*((?:NCCL|RCCL) version \S+|rccl-tests: Version \S+|nccl-tests version \S+)")
_AVG_RX = re.compile(r"^#\s*Avg bus bandwidth\s*:\s*([0-9.eE+-]+)")
_COUNT_COMMENT_RX = re.compile(r"^#\s*(nodes|gpus_per_node|ranks):\s*(\d+)\b")
_HEADER_RX = {
    "nThread": re.compile(r"\bnThread\s+(\d+)"), "nGpus": re.compile(r"\bnGpus\s+(\d+)"),
    "minBytes": re.compile(r"\bminBytes\s+(\d+)"), "maxBytes": re.compile(r"\bmaxBytes\s+(\d+)"),
    "step": re.compile(r"\bstep:\s*(\S+)"), "warmup iters": re.compile(r"\bwarmup iters:\s*(\d+)"),
    "iters": re.compile(r"(?<!warmup )(?<!agg )\biters:\s*(\d+)"), "validation": re.compile(r"\bvalidation:\s*(\d+)"),
    "graph": re.compile(r"\bgraph:\s*(\d+)"),
}
_SUMMARY_RANKS_RX = re.compile(r"\b(\d{1,7})\s+ranks?\b")
_SUMMARY_SIZE_RX = re.compile(r"\b(\d+(?:\.\d+)?)\s*(GiB|MiB|KiB|GB|MB|KB|G|M|K|B)\b(?!/)")
_SUMMARY_BUSBW_RX = re.compile(r"(\d+(?:\.\d+)?)\s*GB/s\s*busbw")
_COMMAND_HINTS = ("mpirun", "mpiexec", "srun", "_perf", "# command:", "torchrun")


@dataclass(frozen=True)
class Device:
    """One ``Using devices`` line: a rank and the GPU it ran on."""

    rank: int
    """Global rank."""
    host: str
    """Host name (one node per distinct host)."""
    device: int
    """CUDA / HIP device index on the host."""
    gpu: str
    """GPU name as printed."""


@dataclass(frozen=True)
class Scan:
    """Everything a log states outside its table."""

    test: str = ""
    """nccl-tests binary, e.g. ``all_reduce_perf`` (empty if not named)."""
    algo: str = ""
    """NCCL_ALGO (empty: default)."""
    proto: str = ""
    """NCCL_PROTO (empty: default)."""
    library: str = ""
    """Version line."""
    header: dict[str, str] = field(default_factory=dict)
    """``# nThread … maxBytes …`` header values."""
    devices: tuple[Device, ...] = ()
    """``Using devices`` lines, rank order."""
    avg_busbw: float | None = None
    """``# Avg bus bandwidth`` value."""
    nodes: int = 0
    """``# nodes:`` comment (0: absent)."""
    gpus_per_node: int = 0
    """``# gpus_per_node:`` comment (0: absent)."""
    ranks: int = 0
    """``# ranks:`` comment (0: absent)."""


def busbw_factor(op: str, n: int) -> float:
    """nccl-tests bus-bandwidth factor of ``op`` on ``n`` ranks (doc/PERFORMANCE.md)."""
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) / n
    return 1.0


def test_of_op(op: str) -> str:
    """The nccl-tests binary measuring tspsim's ``op``, or '' for an unknown op."""
    return next((t for t, o in TESTS.items() if o == op), "")


def scan(lines: list[str]) -> Scan:
    """The metadata of a log (module docstring of :mod:`tspsim.spec.collective_log`)."""
    found: dict[str, object] = {}
    starting = op_comment = command_test = ""
    env: dict[str, str] = {}
    cmd_env: dict[str, str] = {}
    devices: dict[int, Device] = {}
    header: dict[str, str] = {}
    for line in lines:
        s = line.strip()
        if m := _STARTING_RX.match(s):
            starting = starting or _test_name(m.group(1))
        elif m := _OP_COMMENT_RX.match(s):
            op_comment = op_comment or _test_name(m.group(1))
        if not command_test and any(h in s for h in _COMMAND_HINTS) and (m := _TEST_RX.search(s)):
            command_test = _test_name(m.group(0))
        if m := _DEVICE_RX.search(s):
            rank = int(m.group(1))
            devices.setdefault(rank, Device(rank, m.group(2), int(m.group(3)), m.group(4).strip()))
        if m := _ENV_SET_RX.search(s):
            env.setdefault(m.group(1), m.group(2))
        elif m := _ENV_COMMENT_RX.match(s):
            for word in m.group(1).split():
                word = word.rstrip(".,;")
                if not _KEY_VALUE_RX.match(word):
                    break
                key, _, value = word.partition("=")
                if key in ("NCCL_ALGO", "NCCL_PROTO"):
                    env.setdefault(key[5:], value)
        elif any(h in s for h in _COMMAND_HINTS):
            for m in _CMD_ENV_RX.finditer(s):
                cmd_env.setdefault(m.group(1), m.group(2).rstrip(",;"))
        if "library" not in found and (m := _LIBRARY_RX.match(s)):
            found["library"] = m.group(1)
        if "nThread" in s and "nGpus" in s and not header:
            header = {k: m.group(1) for k, rx in _HEADER_RX.items() if (m := rx.search(s))}
        if m := _AVG_RX.match(s):
            try:
                found["avg"] = float(m.group(1))
            except ValueError:
                pass
        if m := _COUNT_COMMENT_RX.match(s):
            found.setdefault(m.group(1), int(m.group(2)))
    for key, value in cmd_env.items():
        env.setdefault(key, value)
    avg = found.get("avg")
    return Scan(test=starting or op_comment or command_test, algo=env.get("ALGO", ""), proto=env.get("PROTO", ""),
                library=str(found.get("library", "")), header=header,
                devices=tuple(devices[r] for r in sorted(devices)),
                avg_busbw=float(avg) if isinstance(avg, float) and math.isfinite(avg) else None,
                nodes=int(found.get("nodes", 0)), gpus_per_node=int(found.get("gpus_per_node", 0)),
                ranks=int(found.get("ranks", 0)))


def _test_name(text: str) -> str:
    m = _TEST_RX.search(text)
    if not m:
        return ""
    return m.group(0).removesuffix("_mpi")


def ranks_from_bandwidth(op: str, rows: tuple) -> tuple[int, int, int] | None:
    """(lowest, highest GPU count, line) the rows' busbw / algbw allow, or None if they cannot tell.

    busbw / algbw = 2(n−1)/n (all-reduce) or (n−1)/n (all-gather, reduce-scatter, all-to-all); both are
    printed to 0.01 GB/s, so each row bounds n; the rows with algbw ≥ 1 GB/s are intersected.
    """
    if op not in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all"):
        return None
    scale = 2.0 if op == "all_reduce" else 1.0
    lo, hi, line = 2.0, math.inf, 0
    for row in rows:
        if row.out_of_place.wrong == "" and row.in_place is None:
            continue  # derived from a summary: no independent ratio
        for m in (row.out_of_place, row.in_place):
            if m is None or m.algbw_GBps < 1.0:
                continue
            r_lo = (m.busbw_GBps - 0.005) / (m.algbw_GBps + 0.005)
            r_hi = (m.busbw_GBps + 0.005) / (m.algbw_GBps - 0.005)
            n_lo = scale / (scale - r_lo) if r_lo < scale else math.inf
            n_hi = scale / (scale - r_hi) if r_hi < scale else math.inf
            if n_hi - n_lo < hi - lo:
                line = row.line
            lo, hi = max(lo, n_lo), min(hi, n_hi)
    if line == 0 or lo > hi:
        return None
    first = math.ceil(lo - 1e-9)
    last = math.floor(hi + 1e-9) if math.isfinite(hi) else 1 << 30
    if first > last:
        return None
    return first, last, line


def describe_range(lo: int, hi: int) -> str:
    """``16`` or ``60-68`` or ``≥ 512``."""
    if lo == hi:
        return str(lo)
    return f"≥ {lo}" if hi >= 1 << 30 else f"{lo}-{hi}"


def summary_rows(lines: list[str]) -> dict[tuple[str, int], list[tuple[int, int, float]]]:
    """Summary-report rows: (test, ranks) → [(line, size bytes, busbw GB/s)].

    A row counts when it names exactly one test, a rank count (``16 ranks``), exactly one size
    (``1 GiB``) and exactly one bus bandwidth (``216.5 GB/s busbw``); anything less is ambiguous and skipped.
    """
    out: dict[tuple[str, int], list[tuple[int, int, float]]] = {}
    for i, line in enumerate(lines):
        s = line.replace("*", "").replace("`", "")
        if s.lstrip().startswith("#") or "busbw" not in s:
            continue
        tests = {_test_name(m.group(0)) for m in _TEST_RX.finditer(s)}
        ranks = _SUMMARY_RANKS_RX.findall(s)
        sizes = _SUMMARY_SIZE_RX.findall(s)
        bws = _SUMMARY_BUSBW_RX.findall(s)
        if len(tests) != 1 or len(ranks) != 1 or len(sizes) != 1 or len(bws) != 1:
            continue
        test = tests.pop()
        if test not in TESTS:
            continue
        try:
            size = parse_size(sizes[0][0] + sizes[0][1])
        except TspsimError:
            continue
        busbw = float(bws[0])
        n = int(ranks[0])
        if size <= 0 or busbw <= 0 or n < 2:
            continue
        out.setdefault((test, n), []).append((i + 1, size, busbw))
    return out

"""Measured nccl-tests / rccl-tests output: the table, the header, the layout and the algorithm.

nccl-tests (``all_reduce_perf``, ``all_gather_perf``, ``reduce_scatter_perf``, ``alltoall_perf``,
``sendrecv_perf``, ``broadcast_perf``, ``reduce_perf``) and rccl-tests print one row per message size::

    #       size   count   type  redop  root    time  algbw  busbw #wrong    time  algbw  busbw #wrong
               8       2  float    sum    -1   19.28   0.00   0.00      0   17.24   0.00   0.00      0

with the columns named by the header line (older versions lack ``root`` and call ``#wrong`` ``error``),
an out-of-place and an in-place group. :func:`read_collective_logs` reads such a file as printed,
including what real logs add or break:

* MPI / Slurm prefixes on every line (``srun --label`` ``" 0: "``, Open MPI ``[1,0]<stdout>:``);
* rows wrapped onto two lines (joined back: a row is complete when it has every column);
* ``N/A`` in ``#wrong`` (``-c 0``), ``# Out of bounds`` / ``# Avg bus bandwidth`` summary lines, NCCL INFO
  lines, version banners, ``-o all`` (several reduction ops per size);
* a summary-only report (a Markdown table of ``all_reduce_perf, 16 ranks, 1 GiB | 216.5 GB/s busbw`` rows,
  as filed in bug reports): each row that names the test, the ranks, one size and a ``busbw`` becomes a row
  whose time is derived from the bus bandwidth.

Metadata comes from, in order: the ``Using devices`` lines (``#  Rank  0 Group  0 Pid 123 on host1 device
0 [0x1b] NVIDIA H100 80GB HBM3``: ranks, hosts = nodes, GPUs per host), ``# nodes:`` / ``# gpus_per_node:``
header comments, and the bus/algorithm bandwidth ratio (nccl-tests doc/PERFORMANCE.md: all-reduce busbw =
algbw · 2(n−1)/n, all-gather / reduce-scatter / all-to-all (n−1)/n), which also cross-checks the others.
``NCCL_ALGO`` / ``NCCL_PROTO`` come from ``NCCL INFO … set by environment`` lines, the leading
``KEY=VALUE`` words of a ``# env:`` comment, or a command line (``-x NCCL_ALGO=Ring``).

Anything else — no table, a row cut short, non-numbers, a GPU count the bandwidths contradict, a run that
stops before its ``maxBytes`` without a summary — is a :class:`~tspsim.core.errors.ConfigError` naming the
file and line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from tspsim.core.errors import ConfigError
from tspsim.core.files import read_document
from tspsim.spec import collective_log_meta as meta

MAX_LOG_BYTES = 16 << 20
"""Largest log read (16 MiB; a full nccl-tests sweep with NCCL_DEBUG=INFO is a few MB)."""

TESTS = meta.TESTS
"""nccl-tests binary → tspsim collective op."""
Device = meta.Device


@dataclass(frozen=True)
class Measurement:
    """One column group of a row (out-of-place or in-place), as printed."""

    time_us: float
    """Time per collective, µs."""
    algbw_GBps: float
    """Algorithm bandwidth: size / time, GB/s (1e9 B/s)."""
    busbw_GBps: float
    """Bus bandwidth: algbw × the test's factor, GB/s."""
    wrong: str
    """The ``#wrong`` (or old ``error``) column as printed: ``0``, ``N/A``, ``1e-07``; empty if derived."""


@dataclass(frozen=True)
class LogRow:
    """One message size of the table."""

    line: int
    """Line number of the row in the file (its first line if wrapped)."""
    size_bytes: int
    """Message size in bytes (nccl-tests' ``size``: the full buffer for all-gather / reduce-scatter)."""
    count: int | None
    """Elements (``count``), None if the table has no such column."""
    dtype: str
    """Element type (``float``, ``bfloat16``, …), empty if not printed."""
    redop: str
    """Reduction (``sum``, ``none``, …), empty if not printed."""
    root: int | None
    """Root rank (−1 for rootless collectives), None if not printed."""
    out_of_place: Measurement
    """The out-of-place columns."""
    in_place: Measurement | None
    """The in-place columns, None if the table has only one group."""

    @property
    def time_us(self) -> float:
        """The faster of the out-of-place and in-place times, µs (interference only ever adds time)."""
        if self.in_place is None:
            return self.out_of_place.time_us
        return min(self.out_of_place.time_us, self.in_place.time_us)

    @property
    def busbw_GBps(self) -> float:
        """Bus bandwidth of the faster column."""
        best = self.out_of_place
        if self.in_place is not None and self.in_place.time_us < best.time_us:
            best = self.in_place
        return best.busbw_GBps


@dataclass(frozen=True)
class CollectiveLog:
    """One measured collective sweep: a test on ``ranks`` GPUs, row by row."""

    path: str
    """File it was read from."""
    test: str
    """nccl-tests binary, e.g. ``all_reduce_perf``."""
    op: str
    """tspsim collective (``all_reduce``, ``all_to_all``, …)."""
    ranks: int
    """GPUs taking part."""
    nodes: int | None
    """Nodes (hosts), None if the log does not say."""
    gpus_per_node: int | None
    """GPUs per node, None if the log does not say (or hosts hold different numbers: see ``layout``)."""
    layout: tuple[int, ...]
    """GPUs on each node in host order, () if unknown."""
    ranks_from: str
    """Where the GPU count came from (``Using devices lines``, ``header comment``, ``busbw/algbw ratio``)."""
    algo: str
    """NCCL_ALGO as set for the run (``Ring``, ``Tree``, ``NVLSTree``, …), empty for the default."""
    proto: str
    """NCCL_PROTO as set for the run (``Simple``, ``LL``, ``LL128``), empty for the default."""
    library: str
    """Library / test version line (``NCCL version 2.26.2+cuda12.8``), empty if not printed."""
    header: dict[str, str] = field(compare=False)
    """The ``# nThread 1 nGpus 1 minBytes 8 maxBytes …`` header as key → value text."""
    devices: tuple[Device, ...]
    """The ``Using devices`` lines, () if not printed."""
    rows: tuple[LogRow, ...]
    """The table, in file order."""
    avg_busbw_GBps: float | None
    """The ``# Avg bus bandwidth`` summary, None if absent."""
    summary_only: bool = False
    """True when the rows come from a summary report (times derived from busbw; no in-place column)."""

    @property
    def name(self) -> str:
        """File name without folders, for tables."""
        return self.path.replace("\\", "/").rsplit("/", 1)[-1]


# ----------------------------------------------------------------------------------------------- reading
_PREFIXES = (
    re.compile(r"^\s{0,8}\d{1,7}:\s?(?=\s*(?:#|\d|$|[A-Za-z]))"),  # srun --label: " 0: "
    re.compile(r"^\[\d{1,7},\d{1,7}\]<(?:stdout|stderr)>:\s?"),  # mpirun --tag-output
)


def strip_prefix(line: str) -> str:
    """``line`` without an MPI / Slurm rank prefix."""
    for rx in _PREFIXES:
        m = rx.match(line)
        if m:
            return line[m.end():]
    return line


def read_collective_logs(path: str, op: str = "", ranks: int = 0) -> tuple[CollectiveLog, ...]:
    """Read an nccl-tests / rccl-tests output file (one log; several for a summary naming several tests).

    Args:
        path: the file (plain text or gzip).
        op: the tspsim op (``all_reduce`` …) when the file does not name its test.
        ranks: the GPU count when the file does not state it (checked against the bandwidths).

    Raises:
        ConfigError: one line naming the file (and line) and the problem.
    """
    try:
        text = read_document(path, "nccl-tests log", limit=MAX_LOG_BYTES)
    except ConfigError:
        raise
    except Exception as exc:  # TraceError wording is for traces; keep the message, change the class
        raise ConfigError(str(exc)) from None
    if "\x00" in text:
        raise ConfigError(f"{path}: contains NUL bytes; an nccl-tests log is text")
    lines = [strip_prefix(raw.rstrip("\r")) for raw in text.split("\n")]
    table = _find_columns(lines)
    if table is None:
        summary = meta.summary_rows(lines)
        if not summary:
            raise ConfigError(f"{path}: not an nccl-tests / rccl-tests output: no column header ('#  size  count  "
                              "type ... time  algbw  busbw') and no summary rows ('all_reduce_perf, 16 ranks, "
                              "1 GiB | 216.5 GB/s busbw'); give the test's printed output")
        return tuple(_summary_log(path, lines, test, n, rows) for (test, n), rows in summary.items())
    header_line, columns = table
    rows = _rows(path, lines, header_line, columns)
    info = meta.scan(lines)
    test = info.test or (meta.test_of_op(op) if op else "") or _guess_test(rows)
    if not test:
        raise ConfigError(f"{path}: cannot tell which test printed this table (no '# Collective test starting: "
                          "…_perf' line, command line or '# op:' comment); pass --op all_reduce|all_gather|…")
    if test not in TESTS:
        raise ConfigError(f"{path}: {test} is not modelled; tspsim reads {', '.join(TESTS)}")
    if op and TESTS[test] != op:
        raise ConfigError(f"{path}: the log was printed by {test} but --op says {op}; drop --op or fix it")
    _check_complete(path, rows, info)
    log = CollectiveLog(path=path, test=test, op=TESTS[test], ranks=0, nodes=None, gpus_per_node=None,
                        layout=(), ranks_from="", algo=info.algo, proto=info.proto, library=info.library,
                        header=info.header, devices=info.devices, rows=rows, avg_busbw_GBps=info.avg_busbw)
    return (_with_ranks(log, info, ranks),)


def read_collective_log(path: str, op: str = "", ranks: int = 0) -> CollectiveLog:
    """The one log in ``path`` (:func:`read_collective_logs`); a summary naming several tests is an error."""
    logs = read_collective_logs(path, op, ranks)
    if len(logs) > 1:
        what = ", ".join(f"{lg.test} on {lg.ranks} ranks" for lg in logs)
        raise ConfigError(f"{path}: holds several sweeps ({what}); split the file")
    return logs[0]


def _find_columns(lines: list[str]) -> tuple[int, list[str]] | None:
    """(line index, column names) of the table header, or None."""
    for i, line in enumerate(lines):
        s = line.strip()
        if not s.startswith("#"):
            continue
        names = [t.lstrip("#").lower() for t in s.lstrip("#").split()]
        names = ["wrong" if t in ("wrong", "error", "errors") else t for t in names if t]
        if "size" in names and "time" in names and "algbw" in names and "busbw" in names:
            first = names.index("time")
            groups = names[first:]
            if len(groups) % 4 or any(groups[j:j + 4] != ["time", "algbw", "busbw", "wrong"]
                                      for j in range(0, len(groups), 4)):
                continue
            return i, names
    return None


def _rows(path: str, lines: list[str], header_line: int, columns: list[str]) -> tuple[LogRow, ...]:
    width = len(columns)
    rows: list[LogRow] = []
    pending: list[str] = []
    start = 0
    for i in range(header_line + 1, len(lines)):
        s = lines[i].strip()
        if not s or s.startswith("#") or not (s[0].isdigit() or pending):
            if pending:
                raise _cut_short(path, start, len(pending), width)
            continue
        tokens = s.split()
        if not pending and not _starts_row(tokens):
            continue  # NCCL INFO / warnings between rows
        if pending and len(pending) + len(tokens) > width:
            raise _cut_short(path, start, len(pending), width)
        if not pending:
            start = i
        pending.extend(tokens)
        if len(pending) == width:
            rows.append(_row(path, start + 1, columns, pending))
            pending = []
    if pending:
        raise ConfigError(f"{path}: line {start + 1}: the last row has {len(pending)} of {width} columns; the log "
                          "looks truncated (copy the whole output)")
    if not rows:
        raise ConfigError(f"{path}: the table header (line {header_line + 1}) is followed by no rows; the log looks "
                          "truncated or the run failed before its first size")
    return tuple(rows)


def _starts_row(tokens: list[str]) -> bool:
    return tokens[0].isdigit() and (len(tokens) < 2 or tokens[1].isdigit() or tokens[1].isalpha())


def _cut_short(path: str, start: int, have: int, width: int) -> ConfigError:
    return ConfigError(f"{path}: line {start + 1}: row has {have} of {width} columns (cut short or wrapped "
                       "wrongly); fix or remove the row")


def _number(path: str, line: int, name: str, text: str, whole: bool = False) -> float:
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"{path}: line {line}: column '{name}' should be {kind}, got {text[:20]!r}") from None
    if not math.isfinite(value) or value < (-1 if name == "root" else 0):
        raise ConfigError(f"{path}: line {line}: column '{name}' = {text[:20]!r} is not a valid measurement "
                          "(the run reported an error for this size); remove the row")
    return value


def _row(path: str, line: int, columns: list[str], tokens: list[str]) -> LogRow:
    first = columns.index("time")
    desc = dict(zip(columns[:first], tokens[:first]))
    groups = []
    for j in range(first, len(columns), 4):
        t, a, b, w = tokens[j:j + 4]
        time_us = _number(path, line, "time", t)
        if time_us <= 0:
            raise ConfigError(f"{path}: line {line}: time {t!r} is not positive; remove the row")
        groups.append(Measurement(time_us, _number(path, line, "algbw", a), _number(path, line, "busbw", b), w))
    size = int(_number(path, line, "size", desc.get("size", ""), whole=True))
    count = int(_number(path, line, "count", desc["count"], whole=True)) if "count" in desc else None
    root = int(_number(path, line, "root", desc["root"], whole=True)) if "root" in desc else None
    return LogRow(line, size, count, desc.get("type", ""), desc.get("redop", ""), root, groups[0],
                  groups[1] if len(groups) > 1 else None)


def _guess_test(rows: tuple[LogRow, ...]) -> str:
    """all_reduce_perf when the table's reduction and bandwidth ratio can only be an all-reduce, else ''."""
    best = max(rows, key=lambda r: r.out_of_place.algbw_GBps)
    m = best.out_of_place
    if best.redop in meta.REDUCTIONS and m.algbw_GBps >= 1 and m.busbw_GBps / m.algbw_GBps > 1.05:
        return "all_reduce_perf"
    return ""


def _check_complete(path: str, rows: tuple[LogRow, ...], info: meta.Scan) -> None:
    """A run without its summary lines that stops before ``maxBytes`` was cut short."""
    max_bytes = info.header.get("maxBytes", "")
    if info.avg_busbw is not None or not max_bytes.isdigit():
        return
    last = max(r.size_bytes for r in rows)
    if last < int(max_bytes):
        raise ConfigError(f"{path}: the table stops at {last} bytes but the header's maxBytes is {max_bytes} and "
                          "there is no '# Avg bus bandwidth' line; the log looks truncated (copy the whole output)")


def _with_ranks(log: CollectiveLog, info: meta.Scan, ranks: int) -> CollectiveLog:
    """``log`` with its GPU count and node layout, cross-checked against the bandwidth ratio."""
    implied = meta.ranks_from_bandwidth(log.op, log.rows)
    layout: tuple[int, ...] = ()
    if info.devices:
        hosts: dict[str, int] = {}
        for d in info.devices:
            hosts[d.host] = hosts.get(d.host, 0) + 1
        layout, source = tuple(hosts.values()), "Using devices lines"
    elif info.nodes and info.gpus_per_node:
        layout, source = (info.gpus_per_node,) * info.nodes, "header comment"
    declared = sum(layout) if layout else info.ranks
    if info.ranks and not layout:
        source = "header comment"
    if info.ranks and layout and info.ranks != declared:
        raise ConfigError(f"{log.path}: '# ranks: {info.ranks}' contradicts the {source} ({declared} GPUs); fix "
                          "the header")
    if ranks and declared and ranks != declared:
        raise ConfigError(f"{log.path}: --ranks {ranks} contradicts the log's {source} ({declared} GPUs); drop "
                          "--ranks")
    n = declared or ranks
    if not declared and ranks:
        source = "--ranks"
    if implied is not None:
        lo, hi, line = implied
        if n and not lo <= n <= hi:
            raise ConfigError(f"{log.path}: the {source} give{'' if source == '--ranks' else 's'} {n} GPUs but "
                              f"busbw/algbw on line {line} means {meta.describe_range(lo, hi)} GPUs ({log.test} "
                              f"busbw = algbw × {meta.FACTOR_TEXT[log.op]}); the GPU count does not match the "
                              "table")
        if not n and lo == hi:
            n, source = lo, "busbw/algbw ratio"
    if not n:
        raise ConfigError(f"{log.path}: the log does not say how many GPUs ran (no 'Using devices' lines or "
                          "'# nodes:' / '# gpus_per_node:' comments); pass --ranks N")
    if n < 2:
        raise ConfigError(f"{log.path}: {n} GPU; a collective needs at least 2")
    uniform = len(set(layout)) == 1
    return replace(log, ranks=n, nodes=len(layout) or None, gpus_per_node=layout[0] if layout and uniform else None,
                   layout=layout, ranks_from=source)


def _summary_log(path: str, lines: list[str], test: str, n: int,
                 rows: list[tuple[int, int, float]]) -> CollectiveLog:
    info = meta.scan(lines)
    op = TESTS[test]
    out = []
    for line, size, busbw in rows:
        algbw = busbw / meta.busbw_factor(op, n)
        out.append(LogRow(line, size, None, "", "", None, Measurement(size / algbw / 1e3, algbw, busbw, ""), None))
    layout: tuple[int, ...] = ()
    source = "summary row"
    if info.nodes and info.gpus_per_node and info.nodes * info.gpus_per_node == n:
        layout, source = (info.gpus_per_node,) * info.nodes, "summary row and header comment"
    return CollectiveLog(path=path, test=test, op=op, ranks=n, nodes=len(layout) or None,
                         gpus_per_node=layout[0] if layout else None, layout=layout, ranks_from=source,
                         algo=info.algo, proto=info.proto, library=info.library, header=info.header, devices=(),
                         rows=tuple(out), avg_busbw_GBps=None, summary_only=True)


# ----------------------------------------------------------------------------------------------- writing
def render_log(log: CollectiveLog) -> str:
    """``log`` as nccl-tests text (header comments, column header, rows) that reads back to the same rows.

    Numbers are written with Python's shortest round-tripping repr, so :func:`read_collective_log` of the
    text returns exactly the same values (tests/test_collective_log.py).
    """
    out = [f"# op: {log.test}", f"# ranks: {log.ranks}"]
    if log.layout:
        out += [f"# nodes: {len(log.layout)}", f"# gpus_per_node: {max(log.layout)}"]
    env = " ".join(f"{k}={v}" for k, v in (("NCCL_ALGO", log.algo), ("NCCL_PROTO", log.proto)) if v)
    if env:
        out.append(f"# env: {env}")
    both = any(r.in_place is not None for r in log.rows)
    names = ["size", "count", "type", "redop", "root"] + ["time", "algbw", "busbw", "#wrong"] * (2 if both else 1)
    out.append("#" + " ".join(f"{c:>12}" for c in names))
    for r in log.rows:
        groups = [r.out_of_place, r.in_place or r.out_of_place] if both else [r.out_of_place]
        cells = [str(r.size_bytes), str(r.count if r.count is not None else 0), r.dtype or "float",
                 r.redop or "none", str(r.root if r.root is not None else -1)]
        for g in groups:
            cells += [repr(g.time_us), repr(g.algbw_GBps), repr(g.busbw_GBps), g.wrong or "0"]
        out.append(" " + " ".join(f"{c:>12}" for c in cells))
    if log.avg_busbw_GBps is not None:
        out.append("# Out of bounds values : 0 OK")
        out.append(f"# Avg bus bandwidth    : {log.avg_busbw_GBps!r}")
    return "\n".join(out) + "\n"

"""The nccl-tests / rccl-tests reader (issue 17): every shared log, the variations of real logs, bad input."""

from __future__ import annotations

import gzip
import math
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tspsim.cli import cli
from tspsim.core.errors import ConfigError
from tspsim.explore.health import check_log
from tspsim.spec.collective_log import read_collective_log, read_collective_logs, render_log, strip_prefix
from tspsim.spec.topology_file import load_topology

LOGS = Path(__file__).parent / "data" / "collective-logs"
SHARED = sorted(LOGS.glob("*.txt"))

# file → (test, GPUs, layout, NCCL_ALGO, rows, avg busbw, where the GPU count came from)
EXPECTED = {
    "01": ("all_reduce_perf", 8, (8,), "", 31, 110.464),
    "06": ("all_reduce_perf", 16, (8, 8), "", 32, 139.56),
    "07": ("all_reduce_perf", 32, (8,) * 4, "", 32, 107.51),
    "08": ("all_reduce_perf", 64, (8,) * 8, "", 14, 183.055),
    "09": ("all_reduce_perf", 64, (8,) * 8, "", 14, 192.573),
    "10": ("all_reduce_perf", 16, (8, 8), "Ring", 14, 248.186),
    "11": ("all_reduce_perf", 16, (8, 8), "", 14, 276.999),
    "12": ("all_reduce_perf", 32, (8,) * 4, "", 14, 191.212),
    "13": ("all_reduce_perf", 8, (8,), "", 6, 439.369),
    "14": ("all_reduce_perf", 16, (8, 8), "", 11, 142.735),
    "15": ("all_reduce_perf", 16, (8, 8), "RING", 11, 85.5294),
    "16": ("all_reduce_perf", 16, (8, 8), "", 31, 66.4834),
    "17": ("all_reduce_perf", 16, (8, 8), "", 2, None),
    "18": ("all_reduce_perf", 16, (8, 8), "", 25, 178.222),
}

ROW_RE = re.compile(r"^\s*(?:\d+:\s+)?(\d+)\s+(\d+)\s+(\w+)\s+(\w+)\s+(-?\d+)((?:\s+\S+){8})\s*$")


def test_every_shared_log_is_covered():
    assert [p.name[:2] for p in SHARED] == sorted(EXPECTED)


@pytest.mark.parametrize("path", SHARED, ids=[p.name[:2] for p in SHARED])
def test_shared_log_header(path):
    log = read_collective_log(str(path))
    test, ranks, layout, algo, rows, avg = EXPECTED[path.name[:2]]
    assert (log.test, log.op, log.ranks, log.layout, log.algo, len(log.rows), log.avg_busbw_GBps) == (
        test, "all_reduce", ranks, layout, algo, rows, avg)
    assert log.proto == ""
    assert log.summary_only == (path.name[:2] == "17")


@pytest.mark.parametrize("path", [p for p in SHARED if not p.name.startswith("17")],
                         ids=[p.name[:2] for p in SHARED if not p.name.startswith("17")])
def test_shared_log_numbers_exactly(path):
    """Every number of every row equals the printed token (an independent regex over the raw file)."""
    raw = []
    for line in path.read_text().splitlines():
        m = ROW_RE.match(line)
        if m:
            raw.append((int(m.group(1)), int(m.group(2)), m.group(3), m.group(4), int(m.group(5)),
                        m.group(6).split()))
    log = read_collective_log(str(path))
    assert len(raw) == len(log.rows)
    for (size, count, dtype, redop, root, rest), row in zip(raw, log.rows):
        assert (row.size_bytes, row.count, row.dtype, row.redop, row.root) == (size, count, dtype, redop, root)
        ip = row.in_place
        assert ip is not None
        got = [row.out_of_place.time_us, row.out_of_place.algbw_GBps, row.out_of_place.busbw_GBps,
               ip.time_us, ip.algbw_GBps, ip.busbw_GBps]
        assert got == [float(rest[i]) for i in (0, 1, 2, 4, 5, 6)]
        assert (row.out_of_place.wrong, ip.wrong) == (rest[3], rest[7])


@pytest.mark.parametrize("path", SHARED, ids=[p.name[:2] for p in SHARED])
def test_shared_log_round_trips(path, tmp_path):
    log = read_collective_log(str(path))
    out = tmp_path / "again.txt"
    out.write_text(render_log(log))
    again = read_collective_log(str(out))
    def numbers(m):
        return None if m is None else (m.time_us, m.algbw_GBps, m.busbw_GBps)

    assert [(r.size_bytes, numbers(r.out_of_place), numbers(r.in_place)) for r in again.rows] == [
        (r.size_bytes, numbers(r.out_of_place), numbers(r.in_place)) for r in log.rows]
    if not log.summary_only:
        assert [(r.count, r.out_of_place, r.in_place) for r in again.rows] == [
            (r.count, r.out_of_place, r.in_place) for r in log.rows]
    assert (again.test, again.ranks, again.layout, again.algo, again.avg_busbw_GBps) == (
        log.test, log.ranks, log.layout, log.algo, log.avg_busbw_GBps)


def test_summary_only_log_rows():
    """17: the 1 GiB and 8 GiB all-reduce rows of the Markdown summary; the sendrecv row has no busbw."""
    log = read_collective_log(str(LOGS / "17-h100-2node-8x400gRoCE-SUMMARY-MISCONFIGURED.txt"))
    assert [(r.size_bytes, r.busbw_GBps) for r in log.rows] == [(2**30, 216.5), (8 * 2**30, 231.0)]
    r = log.rows[0]
    assert r.out_of_place.algbw_GBps == pytest.approx(216.5 / (2 * 15 / 16))
    assert r.time_us == pytest.approx(2**30 / (r.out_of_place.algbw_GBps * 1e9) * 1e6)


def test_ranks_inferred_from_bandwidth_ratio_without_header(tmp_path):
    text = (LOGS / "09-h100-8node-400gIB-allreduce-minctas24-qps2.txt").read_text()
    text = re.sub(r"(?m)^# (nodes|gpus_per_node):.*\n", "", text)
    path = tmp_path / "bare.txt"
    path.write_text(text)
    log = read_collective_log(str(path))
    assert (log.ranks, log.layout, log.ranks_from) == (64, (), "busbw/algbw ratio")


# ------------------------------------------------------------------------------------- synthetic edge cases
HEADER = ("# nThread 1 nGpus 1 minBytes 1024 maxBytes 4096 step: 2(factor) warmup iters: 5 iters: 20 agg iters: 1 "
          "validation: 1 graph: 0\n#\n#  Using devices\n"
          "#  Rank  0 Group  0 Pid  11 on     nodeA device  0 [0x1b] NVIDIA H100 80GB HBM3\n"
          "#  Rank  1 Group  0 Pid  12 on     nodeA device  1 [0x2b] NVIDIA H100 80GB HBM3\n"
          "#  Rank  2 Group  0 Pid  13 on     nodeB device  0 [0x1b] NVIDIA H100 80GB HBM3\n"
          "#  Rank  3 Group  0 Pid  14 on     nodeB device  1 [0x2b] NVIDIA H100 80GB HBM3\n"
          "NCCL version 2.21.5+cuda12.4\n"
          "#\n#                                                 out-of-place                       in-place\n"
          "#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   "
          "busbw #wrong\n#        (B)    (elements)                               (us)  (GB/s)  (GB/s)            "
          "(us)  (GB/s)  (GB/s)\n")
ROWS = ("        1024           256     float     sum      -1    20.00    0.05    0.08      0    19.00    0.05    "
        "0.08      0\n"
        "        2048           512     float     sum      -1    20.48    0.10    0.15      0    20.48    0.10    "
        "0.15      0\n"
        "        4096          1024     float     sum      -1    40.96    0.10    0.15    N/A    40.96    0.10    "
        "0.15    N/A\n")
FOOTER = "# Out of bounds values : 0 OK\n# Avg bus bandwidth    : 0.127\n#\n"


def write(tmp_path: Path, text: str, name: str = "log.txt") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_devices_give_ranks_and_nodes(tmp_path):
    log = read_collective_log(write(tmp_path, "# Collective test starting: all_reduce_perf\n" + HEADER + ROWS + FOOTER))
    assert (log.ranks, log.nodes, log.gpus_per_node, log.ranks_from) == (4, 2, 2, "Using devices lines")
    assert [d.host for d in log.devices] == ["nodeA", "nodeA", "nodeB", "nodeB"]
    assert log.library == "NCCL version 2.21.5+cuda12.4"
    assert log.header["maxBytes"] == "4096" and log.header["iters"] == "20"
    assert log.rows[2].out_of_place.wrong == "N/A"
    assert log.rows[0].time_us == 19.0


@pytest.mark.parametrize("prefix", ["0: ", " 0: ", "[1,0]<stdout>:", "[1,0]<stderr>: "])
def test_mpi_prefixes(tmp_path, prefix):
    body = "# Collective test starting: all_reduce_perf\n" + HEADER + ROWS + FOOTER
    log = read_collective_log(write(tmp_path, "".join(prefix + line + "\n" for line in body.splitlines())))
    assert (log.ranks, len(log.rows), log.rows[1].out_of_place.time_us) == (4, 3, 20.48)


def test_prefix_does_not_eat_a_row():
    row = "        1024           256     float     sum      -1    20.00"
    assert strip_prefix(row) == row
    assert strip_prefix(" 3: #  size") == "#  size"


def test_wrapped_row_is_joined(tmp_path):
    wrapped = ROWS.replace("    20.48    0.10    0.15      0    20.48", "    20.48    0.10\n    0.15      0    20.48")
    log = read_collective_log(write(tmp_path, "# op: all_reduce_perf\n" + HEADER + wrapped + FOOTER))
    assert [r.size_bytes for r in log.rows] == [1024, 2048, 4096]
    assert log.rows[1].in_place.time_us == 20.48


def test_info_lines_between_rows_and_algo_from_nccl_info(tmp_path):
    info = "node1:123:456 [0] NCCL INFO NCCL_ALGO set by environment to Ring\n"
    proto = "node1:123:456 [0] NCCL INFO NCCL_PROTO set by environment to Simple\n"
    rows = ROWS.splitlines(keepends=True)
    text = "# op: all_reduce_perf\n" + info + HEADER + rows[0] + proto + "".join(rows[1:]) + FOOTER
    log = read_collective_log(write(tmp_path, text))
    assert (log.algo, log.proto, len(log.rows)) == ("Ring", "Simple", 3)


@pytest.mark.parametrize(("line", "algo"), [
    ("mpirun -np 16 -x NCCL_ALGO=Tree ./build/all_reduce_perf -b 8 -e 8G\n", "Tree"),
    ("# env: NCCL_IB_HCA=mlx5 NCCL_ALGO=NVLSTree NCCL_PROTO=LL128\n", "NVLSTree"),
    ("# env: NCCL_IB_HCA=mlx5. NCCL_ALGO not set; NVIDIA recommends NCCL_ALGO=Ring\n", ""),
])
def test_algo_sources(tmp_path, line, algo):
    log = read_collective_log(write(tmp_path, line + "# op: all_reduce_perf\n" + HEADER + ROWS + FOOTER))
    assert log.algo == algo


def test_old_format_without_root_and_with_error_column(tmp_path):
    text = ("# op: all_gather_perf\n# ranks: 8\n"
            "#       size         count    type     time   algbw   busbw  error     time   algbw   busbw  error\n"
            "     1048576         32768   float    50.00   20.97   18.35  0e+00    49.00   21.40   18.73  0e+00\n"
            "     2097152         65536   float    80.00   26.21   22.94  0e+00    80.00   26.21   22.94  0e+00\n")
    log = read_collective_log(write(tmp_path, text))
    assert (log.op, log.ranks, log.rows[0].root, log.rows[0].redop, log.rows[0].out_of_place.wrong) == (
        "all_gather", 8, None, "", "0e+00")


def test_all_reduce_guessed_from_reduction_and_ratio(tmp_path):
    row = ("     1048576        262144     float     sum      -1   100.00   10.49   15.73      0   100.00   10.49   "
           "15.73      0\n")
    log = read_collective_log(write(tmp_path, HEADER.replace("maxBytes 4096", "maxBytes 1048576") + row + FOOTER))
    assert (log.test, log.ranks) == ("all_reduce_perf", 4)


def test_op_option_for_an_unnamed_table(tmp_path):
    table = HEADER.replace("sum", "none") + ROWS.replace(" sum ", " none") + FOOTER
    path = write(tmp_path, table)
    with pytest.raises(ConfigError, match="pass --op"):
        read_collective_log(path)
    assert read_collective_log(path, op="broadcast").test == "broadcast_perf"


def test_sendrecv_needs_a_gpu_count(tmp_path):
    rows = ROWS.replace(" sum ", " none")
    path = write(tmp_path, "# Collective test starting: sendrecv_perf\n" + HEADER.split("#  Using")[0] + "#\n" +
                 HEADER.split("NCCL version 2.21.5+cuda12.4\n")[1] + rows + FOOTER)
    with pytest.raises(ConfigError, match="pass --ranks"):
        read_collective_log(path)
    assert read_collective_log(path, ranks=2).ranks == 2


def test_several_redops_per_size(tmp_path):
    extra = ROWS.replace(" sum ", " max ")
    log = read_collective_log(write(tmp_path, "# op: all_reduce_perf\n" + HEADER + ROWS + extra + FOOTER))
    assert [r.redop for r in log.rows] == ["sum"] * 3 + ["max"] * 3


def test_gzip_log(tmp_path):
    p = tmp_path / "log.txt.gz"
    p.write_bytes(gzip.compress((LOGS / "10-h100-2node-400gIB-allreduce-RING-minctas24-qps2.txt").read_bytes()))
    assert read_collective_log(str(p)).algo == "Ring"


# ------------------------------------------------------------------------------------------------ bad logs
BAD = {
    "empty": ("", "not an nccl-tests"),
    "json": ('{"traceEvents": []}', "not an nccl-tests"),
    "prose": ("the cluster was slow today\nbusbw was low\n", "not an nccl-tests"),
    "header only": ("# op: all_reduce_perf\n" + HEADER, "no rows"),
    "cut mid-row": ("# op: all_reduce_perf\n" + HEADER + ROWS[: ROWS.rindex("0.10")], "looks truncated"),
    "stops early": ("# op: all_reduce_perf\n" + HEADER + ROWS.splitlines(keepends=True)[0], "looks truncated"),
    "not a number": ("# op: all_reduce_perf\n" + HEADER + ROWS.replace("20.48", "20.4x", 1) + FOOTER,
                     "column 'time' should be a number"),
    "nan": ("# op: all_reduce_perf\n" + HEADER + ROWS.replace("40.96", "  -nan", 1) + FOOTER, "not a valid"),
    "gpu count mismatch": ("# op: all_reduce_perf\n# nodes: 1\n# gpus_per_node: 8\n" + HEADER.split("#  Using")[0] +
                           "#\n" + HEADER.split("NCCL version 2.21.5+cuda12.4\n")[1] +
                           "     1048576        262144     float     sum      -1    117.0    8.96   17.64      0"
                           "    115.7    9.06   17.84      0\n" + FOOTER, "the GPU count does not match"),
    "unmodelled test": ("# op: hypercube_perf\n" + HEADER + ROWS + FOOTER, "not modelled"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_log_is_one_config_error(tmp_path, case):
    text, needle = BAD[case]
    with pytest.raises(ConfigError, match=re.escape(needle)):
        read_collective_log(write(tmp_path, text))


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("command", ["check", "calibrate"])
def test_bad_log_on_the_command_line(tmp_path, case, command):
    text, needle = BAD[case]
    path = write(tmp_path, text)
    args = [command, "--topology", "h100-dgx-128node", path]
    if command == "calibrate":
        args += ["-o", str(tmp_path / "fitted.yaml")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert lines[-1].startswith("error: ") and needle in lines[-1], lines
    assert "Traceback" not in result.output
    assert not (tmp_path / "fitted.yaml").exists()


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_collective_log(str(tmp_path / "nope.txt"))
    p = tmp_path / "bin.txt"
    p.write_bytes(b"\x00\x01\x02")
    with pytest.raises(ConfigError, match="NUL"):
        read_collective_log(str(p))


# ------------------------------------------------------------------------------------------------ fuzzing
FUZZ = settings(max_examples=int(120 * float(os.environ.get("TSPSIM_FUZZ_SCALE", "1"))), deadline=None, database=None,
                derandomize=os.environ.get("TSPSIM_FUZZ_RANDOM") != "1",
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SEEDS = [p.read_text() for p in SHARED] + ["# op: all_reduce_perf\n" + HEADER + ROWS + FOOTER]


@FUZZ
@given(data=st.data())
def test_mutated_logs_parse_or_fail_cleanly(tmp_path, data):
    """Lines dropped, duplicated or cut, characters replaced: a log either reads or raises one ConfigError."""
    lines = data.draw(st.sampled_from(SEEDS)).splitlines()
    for _ in range(data.draw(st.integers(1, 4))):
        if not lines:
            break
        i = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["drop", "dup", "cut", "char", "swap"]))
        if action == "drop":
            del lines[i]
        elif action == "dup":
            lines.insert(i, lines[i])
        elif action == "cut":
            lines[i] = lines[i][: data.draw(st.integers(0, max(len(lines[i]) - 1, 0)))]
        elif action == "char" and lines[i]:
            j = data.draw(st.integers(0, len(lines[i]) - 1))
            lines[i] = lines[i][:j] + data.draw(st.sampled_from(list("0-9.x#| \t|eE+N/A:é\x7f"))) + lines[i][j + 1:]
        elif action == "swap" and len(lines) > 1:
            j = data.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
    path = tmp_path / "fuzzed.txt"
    path.write_text("\n".join(lines))
    try:
        logs = read_collective_logs(str(path))
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    for log in logs:
        assert log.ranks >= 2 and log.rows
        assert all(r.time_us > 0 and math.isfinite(r.time_us) for r in log.rows)
        try:  # what reads is checked (or refused in one line) too
            result = check_log(log, load_topology("h100-dgx-128node"))
        except ConfigError as exc:
            assert "\n" not in str(exc)
            continue
        assert result.verdict in ("healthy", "under-performing", "faster than the model")


@FUZZ
@given(text=st.text(max_size=400))
def test_random_text_is_never_a_crash(tmp_path, text):
    path = tmp_path / "random.txt"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        read_collective_logs(str(path))
    except ConfigError:
        pass

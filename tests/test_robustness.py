"""Issue 7: deadlocks and limits are reported in one line, names are escaped, writes are atomic.

The random inputs live in tests/test_fuzz.py; this file holds the hand-written cases.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tspsim.analysis.metrics import generic_entry
from tspsim.cli import cli
from tspsim.core import files as atomic
from tspsim.core.errors import ConfigError, DeadlockError, SimulationLimitError, TraceError, TspsimError
from tspsim.engine.sim import ReplayOptions, replay
from tspsim.opgraph import GraphBuilder, Op, OpGraph
from tspsim.outputs.results_file import load_results, save_results
from tspsim.spec.model import load_model
from tspsim.spec.topology_file import load_topology


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def assert_one_error(result, *needles: str, alone: bool = True) -> str:
    """Exit 2 and one ``error:`` line on stderr containing every needle; returns it.

    ``alone``: stderr holds nothing else (otherwise earlier progress lines are allowed, the error is last).
    """
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.output
    assert len(lines) == 1 if alone else lines, lines
    assert lines[-1].startswith("error: "), lines
    assert sum(line.startswith("error:") for line in lines) == 1, lines
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])
    return lines[-1]


def write_graph(path: Path, ops: list[Op], ranks: tuple[int, ...]) -> Path:
    OpGraph(ops=ops, ranks=ranks).save(path)
    return path


def crossed_collectives() -> list[Op]:
    """Rank 0 issues all-reduce A then B; rank 1 issues B then A (the classic NCCL hang)."""
    def ar(i: int, rank: int, coll: str) -> Op:
        return Op(i, rank, "comm", "all_reduce", f"grad-{coll}", nbytes=1 << 20, group=(0, 1), coll=coll)

    return [ar(0, 0, "A"), ar(1, 0, "B"), ar(2, 1, "B"), ar(3, 1, "A")]


# ------------------------------------------------------------------------------------------ deadlocks
def test_crossed_collectives_deadlock_in_engine(mi300x):
    graph = OpGraph(ops=crossed_collectives(), ranks=(0, 1))
    with pytest.raises(DeadlockError) as info:
        replay(graph, mi300x)
    msg = str(info.value)
    assert "\n" not in msg
    assert "rank 0 stream comm at op 0 grad-A waiting for ranks [1]" in msg
    assert "rank 1 stream comm at op 2 grad-B waiting for ranks [0]" in msg


def test_crossed_collectives_deadlock_through_cli(tmp_path):
    trace = write_graph(tmp_path / "crossed.json", crossed_collectives(), (0, 1))
    line = assert_one_error(invoke("replay", str(trace), "-t", "mi300x-1node"), str(trace), "deadlock",
                            "rank 0", "rank 1", "grad-A", "grad-B")
    assert "waiting for ranks [1]" in line and "waiting for ranks [0]" in line


def test_send_without_recv_is_caught_when_loading(tmp_path):
    ops = [Op(0, 0, "comm", "send", "kv-chunk", nbytes=4096, group=(0, 1), coll="p2p#1"),
           Op(1, 1, "compute", "gemm", "mlp", flops=1e9)]
    trace = write_graph(tmp_path / "lonely-send.json", ops, (0, 1))
    assert_one_error(invoke("replay", str(trace), "-t", "mi300x-1node"), str(trace), "deadlock",
                     "send 'kv-chunk' on rank 0", "no matching recv on rank 1", "rank 0 would wait forever")


def test_send_without_recv_deadlocks_in_engine(mi300x):
    """The engine's own detection (a graph built in code skips OpGraph validation)."""
    ops = [Op(0, 0, "comm", "send", "kv-chunk", nbytes=4096, group=(0, 1), coll="p2p#1"),
           Op(1, 1, "compute", "gemm", "mlp", flops=1e9)]
    with pytest.raises(DeadlockError, match=r"rank 0 stream comm at op 0 kv-chunk waiting for ranks \[1\]"):
        replay(OpGraph(ops=ops, ranks=(0, 1)), mi300x)


def test_collective_a_member_never_issues_is_caught_when_loading(tmp_path):
    ops = [Op(0, 0, "comm", "all_reduce", "ar", nbytes=1024, group=(0, 1, 2), coll="c"),
           Op(1, 1, "comm", "all_reduce", "ar", nbytes=1024, group=(0, 1, 2), coll="c"),
           Op(2, 2, "compute", "gemm", "g", flops=1.0)]
    trace = write_graph(tmp_path / "missing.json", ops, (0, 1, 2))
    assert_one_error(invoke("replay", str(trace), "-t", "mi300x-1node"), "deadlock", "never by rank(s) 2",
                     "ranks 0-1 would wait forever")


def test_recv_waiting_on_its_own_later_send_is_a_cycle_or_deadlock(tmp_path):
    # Rank 0: recv from 1 then send to 1; rank 1: recv from 0 then send to 0 — both wait first.
    ops = [Op(0, 0, "comm", "recv", "r0", nbytes=8, group=(1, 0), coll="x"),
           Op(1, 0, "comm", "send", "s0", nbytes=8, group=(0, 1), coll="y"),
           Op(2, 1, "comm", "recv", "r1", nbytes=8, group=(0, 1), coll="y"),
           Op(3, 1, "comm", "send", "s1", nbytes=8, group=(1, 0), coll="x", deps=[2])]
    ops[1].deps = [0]
    trace = write_graph(tmp_path / "ring.json", ops, (0, 1))
    result = invoke("replay", str(trace), "-t", "mi300x-1node")
    assert_one_error(result, "deadlock", "rank 0", "rank 1")


# ------------------------------------------------------------------------------------------ limits
def _chain(n: int) -> OpGraph:
    b = GraphBuilder((0, 1))
    prev = {0: None, 1: None}
    for i in range(n):
        ids = b.collective("all_reduce", (0, 1), 1 << 16, f"ar{i}", deps={r: [prev[r]] for r in (0, 1)})
        prev = {r: b.compute(r, "gemm", f"g{i}", flops=1e9, deps=[ids[r]]) for r in (0, 1)}
    return b.graph


def test_event_limit_stops_replay_with_a_clear_message(mi300x):
    graph = _chain(50)
    full = replay(graph, mi300x)
    assert full.sim_events > 200
    with pytest.raises(SimulationLimitError,
                       match=r"replay stopped after 100 simulated events \(the limit\); raise it \(tspsim replay"):
        replay(graph, mi300x, ReplayOptions(max_events=100))


def test_event_limit_through_cli(tmp_path):
    trace = tmp_path / "chain.json"
    _chain(50).save(trace)
    assert invoke("replay", str(trace), "-t", "mi300x-1node", "--json").exit_code == 0
    assert_one_error(invoke("replay", str(trace), "-t", "mi300x-1node", "--max-events", "100"), str(trace),
                     "replay stopped after 100 simulated events")
    assert_one_error(invoke("replay", str(trace), "-t", "mi300x-1node", "--max-events", "0"), "--max-events")
    assert_one_error(invoke("replay", str(trace), "-t", "mi300x-1node", "--max-wall", "-1"), "--max-wall")


def test_rank_outside_topology_names_the_trace(tmp_path):
    ops = [Op(0, 0, "compute", "gemm", "g", flops=1e9), Op(1, 9, "compute", "gemm", "g", flops=1e9)]
    trace = write_graph(tmp_path / "wide.json", ops, (0, 9))
    assert_one_error(invoke("replay", str(trace), "-t", "mi300x-1node"), str(trace), "rank 9", "8 GPUs")


# ------------------------------------------------------------------------------------------ NaN / inf
@pytest.mark.parametrize("value", [".nan", ".NaN", ".inf", "-.inf", ".Inf"])
@pytest.mark.parametrize("key", ["gpu.hbm_GB", "intra.hop_latency_us", "intra.direct_max_bytes", "nodes",
                                 "gpu.gemm_efficiency"])
def test_topology_rejects_nan_and_inf(tmp_path, key, value):
    section, _, leaf = key.rpartition(".")
    indent = "  " if section else ""
    text = "inherit: mi300x-1node\n" + (f"{section}:\n" if section else "") + f"{indent}{leaf}: {value}\n"
    path = tmp_path / "nan.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_topology(str(path))
    msg = str(info.value)
    assert msg.startswith(f"{path}: .{key}: ")
    assert value.lower().lstrip("-") in msg.lower()
    assert "NaN and infinity are not allowed" in msg or "efficiency must be in (0, 1]" in msg


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1.5", "0", "-4", "true", "'32'", "[32]", "null"])
def test_model_rejects_non_whole_numbers(tmp_path, value):
    path = tmp_path / "m.yaml"
    path.write_text("hidden: 1024\nlayers: VALUE\nq_heads: 16\nkv_heads: 16\nhead_dim: 64\nffn_hidden: 4096\n"
                    "gated_mlp: true\nvocab: 2048\n".replace("VALUE", value))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: layers: expected a positive whole number, got "):
        load_model(str(path))


def test_model_q_heads_multiple_of_kv_heads(model_yaml):
    path = model_yaml("gqa-bad", q_heads=12, kv_heads=8)
    with pytest.raises(ConfigError, match=r"q_heads \(12\) must be a multiple of kv_heads \(8\)"):
        load_model(path)


def test_model_limits_name_the_key(model_yaml):
    with pytest.raises(ConfigError, match="layers: 100000 is larger than the limit 1,024"):
        load_model(model_yaml("deep", layers=100_000))
    with pytest.raises(ConfigError, match="dtype_bytes: expected 1, 2, 4 or 8"):
        load_model(model_yaml("odd", dtype_bytes=3))


def test_topology_limits(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("inherit: mi300x-128node\nnodes: 10000\n")
    with pytest.raises(ConfigError, match=r"80,000 GPUs; the limit is 65,536"):
        load_topology(str(path))
    path.write_text("inherit: mi300x-1node\nintra:\n  link_GBps: 50000000000\n")  # B/s written as GB/s
    with pytest.raises(ConfigError, match=r"\.intra\.link_GBps: 50000000000 is outside the plausible range "
                                          r"\[0\.001, 100000\]; check the units"):
        load_topology(str(path))
    path.write_text("inherit: mi300x-1node\ngpus_per_node: 2000\n")
    with pytest.raises(ConfigError, match="directed links; the limit is 1,000,000"):
        load_topology(str(path))
    path.write_text("inherit: mi300x-1node\ngpu:\n  hbm_GB: 1.0e+300\n")
    with pytest.raises(ConfigError, match=r"\.gpu\.hbm_GB: 1e\+300 is outside the plausible range"):
        load_topology(str(path))
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="larger than 1,048,576 bytes"):
        load_topology(str(big))


def test_inherit_errors_name_the_inheriting_file(tmp_path):
    path = tmp_path / "child.yaml"
    path.write_text("inherit: mi999x\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: inherit: unknown topology 'mi999x'"):
        load_topology(str(path))
    (tmp_path / "a.yaml").write_text("inherit: b.yaml\n")
    (tmp_path / "b.yaml").write_text("inherit: a.yaml\n")
    with pytest.raises(ConfigError, match=r"loops back to itself \(a.yaml -> b.yaml -> a.yaml\)"):
        load_topology(str(tmp_path / "a.yaml"))


# ------------------------------------------------------------------------------------------ escaping
EVIL = '<script>alert("x")</script><img src=x onerror=alert(2)>'


def _result_with_names(tmp_path: Path, name: str) -> Path:
    b = GraphBuilder((0, 1), meta={"schedule": name})
    g = {r: b.compute(r, "gemm", f"{name} gemm", flops=1e10) for r in (0, 1)}
    b.collective("all_reduce", (0, 1), 1 << 20, f"{name} all-reduce", deps={r: [g[r]] for r in (0, 1)})
    b.p2p(0, 1, 4096, f"{name} send")
    topo = load_topology("mi300x-1node")
    tl = replay(b.graph, topo, ReplayOptions(record_links=True))
    tl.topology_name = name
    entry = dict(generic_entry(tl, topo, b.graph.meta), model=name, topology=name, mode=name,
                 degrees={name: 2}, assumptions={name: name})
    path = tmp_path / "evil.json"
    save_results(path, [(entry, tl)])
    return path


def test_view_escapes_names_from_the_result_file(tmp_path):
    """Op, model, topology and schedule names come from files: `tspsim view` must not make them live HTML."""
    plain = tmp_path / "plain.html"
    assert invoke("view", str(_result_with_names(tmp_path, "benign")), "-o", str(plain)).exit_code == 0
    result = tmp_path / "evil.json"
    _result_with_names(tmp_path, EVIL)
    out = tmp_path / "evil.html"
    run = invoke("view", str(result), "-o", str(out))
    assert run.exit_code == 0, run.output
    page = out.read_text()
    assert "<img" not in page and "alert(2)>" not in page.replace("&gt;", "")
    assert '<script>alert("x")' not in page
    # Exactly the script elements of a page made from benign names: none was injected.
    count = len(re.findall(r"<script\b", plain.read_text(), re.IGNORECASE))
    assert len(re.findall(r"<script\b", page, re.IGNORECASE)) == count
    assert page.lower().count("</script") == plain.read_text().lower().count("</script")
    assert "&lt;script&gt;alert(&quot;x&quot;)" in page  # shown, escaped, in the summary


# ------------------------------------------------------------------------------------------ atomic writes
def _writers(tmp_path: Path):
    """(name, target path, write callable) for every writer of results, traces, pages and exports."""
    from tspsim.outputs.export import chakra, hta, perfetto
    from tspsim.outputs.viewer import write_html

    result = _result_with_names(tmp_path, "ok")
    run = load_results(result)[0]
    runs = [(run.entry, run.timeline)]
    return [
        ("result", tmp_path / "r.json", lambda p: save_results(p, runs)),
        ("trace", tmp_path / "t.json.gz", lambda p: run.timeline.graph.save(p)),
        ("html", tmp_path / "v.html", lambda p: write_html(runs, p)),
        ("perfetto", tmp_path / "p.json", lambda p: perfetto.write_trace(runs, p)),
        ("hta", tmp_path / "hta" / "rank0.pt.trace.json",
         lambda p: hta.write_traces(run.entry, run.timeline, p.parent)),
        ("chakra", tmp_path / "et" / "tspsim.0.et",
         lambda p: chakra.write_traces(run.entry, run.timeline, p.parent)),
    ]


class _FailingFile:
    """Wraps a file object: writes half of the first write, then fails like a full disk."""

    def __init__(self, fh, exc: BaseException) -> None:
        self.fh, self.exc = fh, exc

    def write(self, data: bytes) -> int:
        self.fh.write(data[: len(data) // 2])
        raise self.exc

    def __getattr__(self, name: str):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.fh.close()


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk-full", "interrupted"])
def test_interrupted_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch, exc):
    real_fdopen = os.fdopen
    for name, target, write in _writers(tmp_path):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"OLD CONTENT")
        monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: _FailingFile(real_fdopen(fd, mode), exc))
        expected = TspsimError if isinstance(exc, OSError) else KeyboardInterrupt
        with pytest.raises(expected) as info:
            write(target)
        monkeypatch.setattr(atomic.os, "fdopen", real_fdopen)
        if expected is TspsimError:
            assert str(info.value) == f"cannot write {target}: No space left on device", name
        assert target.read_bytes() == b"OLD CONTENT", name
        leftovers = [p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")]
        assert leftovers == [], (name, leftovers)
        write(target)  # and a normal write replaces it
        assert target.read_bytes() != b"OLD CONTENT", name


def test_write_failure_through_cli_is_one_line(tmp_path, monkeypatch):
    result = _result_with_names(tmp_path, "ok")
    out = tmp_path / "page.html"
    out.write_text("OLD")

    def boom(fd, mode):
        os.close(fd)
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(atomic.os, "fdopen", boom)
    assert_one_error(invoke("view", str(result), "-o", str(out)), f"cannot write {out}: Permission denied")
    assert out.read_text() == "OLD"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_writing_onto_a_folder_or_under_a_file_is_one_line(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(TspsimError, match="it is a folder"):
        atomic.write_text_atomic(tmp_path / "folder", "x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(TspsimError, match=r"cannot write .*file/out.json: .*/file is a file, not a folder"):
        atomic.write_text_atomic(tmp_path / "file" / "out.json", "x")
    trace = tmp_path / "t.json"
    _chain(1).save(trace)
    assert_one_error(invoke("replay", str(trace), "-t", "mi300x-1node", "--save", str(tmp_path / "file" / "r.json")),
                     "cannot write", "is a file, not a folder", alone=False)


# ------------------------------------------------------------------------------------------ reproducible
def test_generate_and_replay_are_reproducible(tmp_path, model_yaml):
    model = model_yaml("repro-tiny")
    paths = [tmp_path / "a.json.gz", tmp_path / "b.json.gz"]
    for p in paths:
        r = invoke("generate", "-t", "mi300x-1node", "--model", model, "--seq", "4k", "--schedule", "tp",
                   "--degree", "2", "-o", str(p))
        assert r.exit_code == 0, r.output
    assert paths[0].read_bytes() == paths[1].read_bytes()
    outs = []
    for p in paths:
        r = invoke("replay", str(p), "-t", "mi300x-1node", "--json")
        assert r.exit_code == 0, r.output
        entry = json.loads(r.stdout)["results"][0]
        entry.pop("sim_wall_s")
        outs.append(entry)
    assert outs[0] == outs[1]


def test_gzip_trace_detected_by_content_not_name(tmp_path):
    trace = tmp_path / "t.json"
    _chain(2).save(trace)
    disguised = tmp_path / "t-gz.json"
    disguised.write_bytes(gzip.compress(trace.read_bytes()))
    assert OpGraph.load(disguised).to_json() == OpGraph.load(trace).to_json()
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(gzip.compress(trace.read_bytes())[:40])
    with pytest.raises(TraceError, match="corrupt or truncated gzip data"):
        OpGraph.load(bad)


# ------------------------------------------------------------------------------------------ issue 18
def test_two_compute_streams_of_one_rank_share_the_compute_slot(mi300x):
    """Item 3: compute ops of one rank on two compute streams are not a deadlock; they take turns."""
    ops = [Op(0, 0, "compute", "gemm", "a", flops=1e12), Op(1, 0, "compute2", "gemm", "b", flops=1e12),
           Op(2, 0, "compute", "gemm", "c", flops=1e12, deps=[1])]
    graph = OpGraph(ops=ops, ranks=(0,))
    tl = replay(graph, mi300x)
    one = replay(OpGraph(ops=[Op(0, 0, "compute", "gemm", "a", flops=1e12)], ranks=(0,)), mi300x).end_s
    assert tl.end_s == pytest.approx(3 * one, rel=1e-12)
    ends = sorted(e for _i, _s, e in tl.spans)
    assert ends == pytest.approx([one, 2 * one, 3 * one], rel=1e-12)


@pytest.mark.parametrize("args", [["--seq", "0"], ["--mode", "decode", "--context", "0"],
                                  ["--mode", "decode", "--seq", "4k", "--tokens", "1000000"],
                                  ["--batch", "100000000"], ["--seq", "2G"]])
@pytest.mark.parametrize("command", ["run", "generate", "plan"])
def test_workloads_without_tokens_or_beyond_the_bounds_are_one_line(tmp_path, command, args):
    """Item 4: --seq 0 / --context 0 used to give 0 tokens/s (and plan a "best" among zeros)."""
    extra = {"run": ["--schedule", "tp"], "generate": ["--schedule", "tp", "-o", str(tmp_path / "g.json")],
             "plan": []}[command]
    if command == "plan" and "--batch" in args:
        return  # plan tries its own batches (--batch-max)
    result = invoke(command, "-t", "mi300x-1node", "--model", "llama3-8b", *extra, *args)
    line = assert_one_error(result, alone=False)
    assert re.search(r"--seq|--context|--tokens|--batch", line), line
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("gpu.gemm_efficiency", "5.0e-324", "[0.01, 1]"), ("intra.link_efficiency", "0.001", "[0.01, 1]"),
    ("gpu.mfu_peak_TFLOPS", "0.001", "mfu_peak_TFLOPS"), ("gpu.mfu_peak_TFLOPS", "1.0e+6", "mfu_peak_TFLOPS"),
])
def test_implausible_topology_numbers_are_one_error(tmp_path, key, value, needle):
    """Item 4: a denormal efficiency gave ZeroDivisionError / Infinity; an MFU denominator of 0.001 TFLOP/s
    gave MFU 12.5 million %. One line, not a note per schedule."""
    section, name = key.split(".")
    path = tmp_path / "odd.yaml"
    path.write_text(f"inherit: mi300x-1node\n{section}:\n  {name}: {value}\n")
    assert_one_error(invoke("run", "-t", str(path), "--seq", "4k"), "odd.yaml", needle)


def test_documented_topology_ranges_are_the_validator(tmp_path):
    """Item 16: the README's ranges hold at their ends (direct_max_bytes 2^50, *_GB and *_us 0)."""
    path = tmp_path / "ends.yaml"
    path.write_text("inherit: mi300x-1node\ngpu:\n  runtime_reserve_GB: 0\n  kernel_launch_us: 0\n"
                    f"intra:\n  direct_max_bytes: {2**50}\n  hop_latency_us: 0\n")
    topo = load_topology(str(path))
    assert topo.intra.direct_max_bytes == 2**50 and topo.gpu.kernel_launch_us == 0
    path.write_text(f"inherit: mi300x-1node\nintra:\n  direct_max_bytes: {2**50 + 1}\n")
    with pytest.raises(ConfigError, match=r"direct_max_bytes.*plausible range \[0, 1\.1259e\+15\]"):
        load_topology(str(path))
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "`direct_max_bytes` 0..2^50" in readme and "`*_GB` 0..1e6" in readme


def test_tp_sp_default_is_the_same_in_every_command(tmp_path, model_yaml):
    """Item 5: run/generate used T=8 × Σ=1 on one node, sweep/plan T=4 × Σ=2."""
    from tspsim.explore.grid import default_tp_sp as grid_default
    from tspsim.spec.layout import default_tp_sp

    for gpn, world in ((8, 8), (8, 16), (8, 1024), (4, 4), (2, 2), (8, 4)):
        ts, ss = grid_default(gpn, world)
        assert default_tp_sp(gpn, world) == (ts[0], ss[0]), (gpn, world)
    result = invoke("run", "-t", "mi300x-1node", "--schedule", "tp+sp", "--seq", "4k", "--json", "--no-timing")
    assert json.loads(result.stdout)["results"][0]["degrees"] == {"T": 4, "SP": 2, "DP": 1}
    odd = model_yaml("heads-12", q_heads=12, kv_heads=12, hidden=768)
    line = assert_one_error(invoke("run", "-t", "mi300x-128node", "--model", odd, "--schedule", "tp+sp",
                                   "--seq", "4k"), "default T=8")
    assert "--tp=" not in line
    assert_one_error(invoke("run", "-t", "mi300x-128node", "--model", odd, "--schedule", "tp+sp", "--tp", "8",
                            "--seq", "4k"), "--tp=8")


def _alias_bomb(levels: int = 10, fan: int = 9) -> str:
    """Nested aliases under a key that expects a number: 'fan'^levels elements in ~440 bytes."""
    def nest(i: int) -> str:
        if i == 0:
            return "&a0 [" + ",".join(["1"] * fan) + "]"
        return f"&a{i} [{nest(i - 1)}," + ",".join([f"*a{i - 1}"] * (fan - 1)) + "]"

    return "inherit: mi300x-1node\ngpu:\n  hbm_GB: " + nest(levels) + "\n"


@pytest.mark.parametrize("text", [_alias_bomb(), "inherit: mi300x-1node\ngpu: &a\n  x: *a\n",
                                  "inherit: mi300x-1node\ngpu: " + "[" * 100 + "]" * 100 + "\n"],
                         ids=["alias-bomb", "self-alias", "deep"])
def test_yaml_alias_expansion_and_depth_are_bounded(tmp_path, text):
    """Item 7: a 440-byte YAML whose error message expanded 9^10 elements hung."""
    from test_fuzz import time_limit

    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    assert len(text) < 600
    with time_limit(5):
        assert_one_error(invoke("run", "-t", str(path), "--seq", "4k"), "bomb.yaml")
        model = tmp_path / "model.yaml"
        model.write_text(text.replace("inherit: mi300x-1node\ngpu:\n  hbm_GB:", "name: m\nhidden:")
                         .replace("inherit: mi300x-1node\ngpu:", "name: m\nhidden:"))
        assert_one_error(invoke("run", "-t", "mi300x-1node", "--model", str(model), "--seq", "4k"), "model.yaml")


def test_describe_value_is_bounded_whatever_it_quotes():
    from tspsim.core.yamlfile import describe_value

    value: list = [1] * 9
    for _ in range(12):
        value = [value] * 9  # 9^13 leaves through shared references
    text = describe_value(value)
    assert text.startswith("a list [[[") and len(text) <= 80
    assert describe_value({"a": [1, 2]}) == "a mapping {'a': [1, 2]}"


@pytest.fixture()
def fifo(tmp_path):
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom", "fifo", "folder"])
def test_special_files_are_refused_before_reading(tmp_path, fifo, special):
    """Item 8: /dev/zero as a topology grew memory without bound; a FIFO blocked forever."""
    from test_fuzz import time_limit

    path = {"fifo": fifo, "folder": str(tmp_path)}.get(special, special)
    if not os.path.exists(path):
        pytest.skip(f"{path} missing")
    parent = tmp_path / "child.yaml"
    parent.write_text(f"inherit: {path}\n")
    trace = tmp_path / "out.json"
    with time_limit(5):
        assert_one_error(invoke("run", "-t", path, "--seq", "4k"), "not a regular file")
        assert_one_error(invoke("run", "-t", "mi300x-1node", "--model", path, "--seq", "4k"), "not a regular file")
        assert_one_error(invoke("run", "-t", str(parent), "--seq", "4k"), "child.yaml: inherit:", "not a regular file")
        needle = ("directory",) if special == "folder" else ("not a regular file",)  # click refuses folders
        assert_one_error(invoke("replay", path, "-t", "mi300x-1node"), *needle)
        assert_one_error(invoke("view", path, "-o", str(trace)), *needle)
    assert not trace.exists()


# ------------------------------------------------------------------------------------------ sweeps (items 9-14)
SWEEP_MODEL = "name: tiny\nhidden: 256\nlayers: 2\nq_heads: 8\nkv_heads: 4\nhead_dim: 32\nffn_hidden: 1024\n" \
              "gated_mlp: true\nvocab: 1024\n"


def _sweep_cmd(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    """A tspsim sweep run the way the console script runs it (sys.path[0] is the script's folder, not cwd)."""
    model = tmp_path / "tiny.yaml"
    model.write_text(SWEEP_MODEL)
    launcher = tmp_path / "bin" / "tspsim_launcher.py"
    launcher.parent.mkdir(exist_ok=True)
    launcher.write_text("import sys\nfrom tspsim.cli import main\n\nif __name__ == '__main__':\n"
                        "    sys.argv[0] = 'tspsim'\n    main()\n")
    return [sys.executable, str(launcher), "sweep", "-t", "mi300x-1node", "--model", str(model),
            "--schedule", "tp", "--out", str(out), *extra]


def _session(pid: int) -> list[str]:
    """Live (non-zombie) processes of the session led by ``pid``."""
    rows = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True, check=True).stdout
    return [r for r in rows.splitlines() if r.split()[1] == str(pid) and not r.split()[2].startswith("Z")]


def test_sweep_workers_ignore_a_tspsim_folder_in_the_working_directory(tmp_path):
    """Item 9: from the parent of a clone, --jobs 2 workers imported ./tspsim and every point failed."""
    evil = tmp_path / "clone-parent"
    (evil / "tspsim").mkdir(parents=True)
    (evil / "tspsim" / "__init__.py").write_text("")
    proc = subprocess.run(_sweep_cmd(tmp_path, tmp_path / "out", "--degree", "2,4", "--seq", "1k", "--jobs", "2"),
                          cwd=evil, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "2 computed" in proc.stderr, proc.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert [r["status"] for r in results] == ["ok", "ok"]


class _Server:
    """A TCP server on an ephemeral port that sends ``banner`` (or nothing) to each connection."""

    def __init__(self, banner: bytes) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.banner = banner
        self.conns: list = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.banner:
                conn.sendall(self.banner)

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.mark.parametrize(("banner", "needle"), [(b"", "nothing answered"),
                                                (b"SSH-2.0-OpenSSH_9.6\r\n", "not a Dask scheduler"),
                                                (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not a Dask scheduler")])
def test_scheduler_that_is_not_dask_is_one_line_within_the_timeout(banner, needle):
    """Item 10: an HTTP port hung > 500 s; a banner server asked for 2.82 EiB (and a Client.__del__ traceback)."""
    import time

    from tspsim.explore.runners import probe_dask_scheduler

    server = _Server(banner)
    try:
        t0 = time.monotonic()
        with pytest.raises(TspsimError, match=needle) as info:
            probe_dask_scheduler(f"tcp://127.0.0.1:{server.port}", 1.0)
        assert time.monotonic() - t0 < 3 and "\n" not in str(info.value)
    finally:
        server.close()


def test_scheduler_banner_through_the_cli(tmp_path):
    pytest.importorskip("distributed")
    server = _Server(b"SSH-2.0-OpenSSH_9.6\r\n")
    try:
        (tmp_path / "tiny.yaml").write_text(SWEEP_MODEL)
        result = invoke("sweep", "-t", "mi300x-1node", "--model", str(tmp_path / "tiny.yaml"), "--schedule", "tp",
                        "--degree", "2", "--seq", "1k", "--out", str(tmp_path / "o"), "--scheduler", f"tcp://127.0.0.1:{server.port}")
    finally:
        server.close()
    assert_one_error(result, "not a Dask scheduler", "SSH-2.0", alone=False)
    assert "Traceback" not in result.output


def test_deeply_nested_cache_file_is_ignored(tmp_path):
    """Item 11: a corrupt cache file nested 100,000 deep raised RecursionError; the README says it is ignored."""
    (tmp_path / "tiny.yaml").write_text(SWEEP_MODEL)
    args = ["sweep", "-t", "mi300x-1node", "--model", str(tmp_path / "tiny.yaml"), "--schedule", "tp", "--degree",
            "2,4", "--seq", "1k", "--jobs", "1", "--out", str(tmp_path / "o")]
    assert invoke(*args).exit_code == 0
    files = sorted((tmp_path / "o" / "cache").glob("*.json"))
    assert len(files) == 2
    files[0].write_text("[" * 100_000 + "]" * 100_000)
    files[1].write_text('{"key": ' * 5_000 + "1" + "}" * 5_000)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("note: ignoring cache file") == 2 and "2 computed" in result.stderr, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_killed_parallel_sweep_leaves_no_process_and_resumes(tmp_path, sig):
    """Item 13: after SIGKILL/SIGTERM the fork server, resource tracker and workers stayed alive for ever."""
    import signal
    import time

    out = tmp_path / "out"
    cmd = _sweep_cmd(tmp_path, out, "--degree", "1,2,4", "--seq", "1k,2k,4k,8k,16k,32k", "--batch", "1,2,4",
                     "--jobs", "2")
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while len(_session(proc.pid)) < 4 and time.monotonic() < deadline:  # parent, tracker, server, workers
                time.sleep(0.1)
            assert len(_session(proc.pid)) >= 4, _session(proc.pid)
            os.kill(proc.pid, getattr(signal, sig))
            proc.wait(timeout=30)
            deadline = time.monotonic() + 15
            while _session(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            left = _session(proc.pid)
        finally:
            for row in _session(proc.pid):  # never leak from the test itself
                os.kill(int(row.split()[0]), signal.SIGKILL)
    assert not left, left
    if sig == "SIGTERM":
        assert proc.returncode == 143
        assert "stopped by SIGTERM" in (tmp_path / "stderr.txt").read_text()
    stale = out / "cache" / ".0123.json.abcd1234.tmp"  # what SIGKILL during a cache write leaves
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("{")
    again = subprocess.run(cmd[:-2] + ["--jobs", "1", "--degree", "1", "--seq", "1k", "--batch", "1"],
                           capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr
    assert not stale.exists()


def test_second_sweep_into_a_locked_out_folder_is_refused(tmp_path):
    """Item 14: concurrent sweeps into one --out mixed results.json / results.csv / sweep.html of both."""
    from tspsim.core.files import folder_lock

    (tmp_path / "tiny.yaml").write_text(SWEEP_MODEL)
    out = tmp_path / "o"
    args = ["sweep", "-t", "mi300x-1node", "--model", str(tmp_path / "tiny.yaml"), "--schedule", "tp", "--degree",
            "2", "--seq", "1k", "--jobs", "1", "--out", str(out)]
    with folder_lock(out, "a sweep", "--out"):
        line = assert_one_error(invoke(*args), "a sweep is already writing there", "--out", alone=False)
    assert f"pid {os.getpid()}" in line
    assert not (out / "results.json").exists()
    assert invoke(*args).exit_code == 0  # the lock goes with its holder


# ------------------------------------------------------------------------------------------ item 15 (replay half)
def test_an_output_never_replaces_an_input_of_the_same_command(tmp_path, model_yaml):
    """Item 15: replay --save could overwrite the trace it replays (and run --save the topology it reads)."""
    trace = tmp_path / "t.json"
    model = model_yaml("tiny-in", hidden=256, q_heads=8, kv_heads=4, head_dim=32, ffn_hidden=1024, vocab=1024)
    assert invoke("generate", "-t", "mi300x-1node", "--model", model, "--schedule", "tp", "--degree", "2", "--seq",
                  "1k", "-o", str(trace)).exit_code == 0
    before = trace.read_bytes()
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.json"
    link.symlink_to(trace)
    topo = tmp_path / "topo.yaml"
    topo.write_text("inherit: mi300x-1node\n")
    for spelling in (str(trace), str(tmp_path / "sub" / ".." / "t.json"), str(link)):
        assert_one_error(invoke("replay", str(trace), "-t", "mi300x-1node", "--save", spelling),
                         "--save", "TRACE file this command reads")
    assert_one_error(invoke("replay", str(trace), "-t", str(topo), "--save", str(topo)), "--topology")
    assert_one_error(invoke("run", "-t", str(topo), "--schedule", "tp", "--seq", "1k", "--save", str(topo)),
                     "--topology file")
    assert_one_error(invoke("run", "-t", "mi300x-1node", "--model", model, "--schedule", "tp", "--degree", "2",
                            "--seq", "1k", "--save", str(tmp_path / "a.json"), "--html", str(tmp_path / "a.json")),
                     "also the --save output")
    assert_one_error(invoke("generate", "-t", "mi300x-1node", "--model", model, "--schedule", "tp", "--seq", "1k",
                            "-o", model), "--model file")
    assert trace.read_bytes() == before and topo.read_text() == "inherit: mi300x-1node\n"
    assert not (tmp_path / "a.json").exists()


def test_trace_metadata_errors_say_it_once(tmp_path, model_yaml):
    """Item 16: "trace metadata: trace metadata: meta.model_config: …"."""
    model = model_yaml("tiny-meta", hidden=256, q_heads=8, kv_heads=4, head_dim=32, ffn_hidden=1024, vocab=1024)
    trace = tmp_path / "t.json"
    assert invoke("generate", "-t", "mi300x-1node", "--model", model, "--schedule", "tp", "--degree", "2", "--seq",
                  "1k", "-o", str(trace)).exit_code == 0
    doc = json.loads(trace.read_text())
    doc["meta"]["model_config"]["hidden"] = -1
    trace.write_text(json.dumps(doc))
    line = assert_one_error(invoke("replay", str(trace), "-t", "mi300x-1node"), "meta.model_config", "hidden")
    assert line.count("trace metadata") == 1, line


# ------------------------------------------------------------------------------------------ item 12: budgets
def test_gzip_bomb_is_refused_in_bounded_memory(tmp_path):
    """Item 12: a 9.9 MB .gz trace needed > 4 GB (a single read(limit) and the decompressed bytes at once)."""
    import tracemalloc

    bomb = tmp_path / "bomb.json.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as gz:
        for _ in range(16):
            gz.write(b" " * (4 << 20))  # 64 MiB of JSON whitespace, ~64 KB compressed
    assert bomb.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(TraceError, match="larger than 8,388,608 bytes once decompressed"):
            atomic.read_document(bomb, "trace", limit=8 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 48 << 20, peak


@pytest.mark.parametrize(("args", "needle"), [
    (["-t", "mi300x-128node", "--model", "gpt3-175b", "--seq", "2k", "--schedule", "tp", "--full"], "drop --full"),
    (["-t", "BIG", "--seq", "4k", "--schedule", "tp", "--degree", "8"], "--gpus N; a node is simulated whole"),
])
def test_graphs_over_the_budget_are_refused_up_front(tmp_path, args, needle):
    """Item 12: --full gpt3-175b on 1,024 GPUs reached 9.6 GB still building; a 4,096-GPU node took minutes."""
    import time

    big = tmp_path / "big.yaml"
    big.write_text("name: big4096\ninherit: h100-dgx-1node\ngpus_per_node: 4096\n")
    t0 = time.monotonic()
    line = assert_one_error(invoke("run", *[str(big) if a == "BIG" else a for a in args]), needle,
                            "TSPSIM_MAX_GRAPH_OPS", alone=False)
    assert time.monotonic() - t0 < 10 and "GB of memory" in line


def test_graph_budget_is_also_enforced_while_building(tmp_path, model_yaml, monkeypatch):
    model = model_yaml("tiny-budget", hidden=256, q_heads=8, kv_heads=8, head_dim=32, ffn_hidden=1024, vocab=1024)
    monkeypatch.setenv("TSPSIM_MAX_GRAPH_OPS", "500")  # above the up-front lower bound (8 × 2 × 30), below the graph
    assert_one_error(invoke("run", "-t", "mi300x-1node", "--model", model, "--schedule", "tsp", "--degree", "8",
                            "--seq", "1k", "--full"), "passed 500 ops", alone=False)
    monkeypatch.delenv("TSPSIM_MAX_GRAPH_OPS")
    assert invoke("run", "-t", "mi300x-1node", "--model", model, "--schedule", "tsp", "--degree", "8",
                  "--seq", "1k").exit_code == 0


def test_huge_sweep_grid_is_refused_and_large_grids_show_progress(tmp_path):
    """Item 12: a 270,000-point grid printed nothing for 90 s."""
    (tmp_path / "tiny.yaml").write_text(SWEEP_MODEL)
    base = ["sweep", "-t", "mi300x-1node", "--model", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "o")]
    many = ",".join(str(i) for i in range(1, 1001))
    assert_one_error(invoke(*base, "--schedule", "tp,tsp", "--degree", many, "--batch", many), "2,000,000 points",
                     "narrow the lists")
    # 2,100 points, every one invalid (degree 3 does not divide 8 heads): cheap to prepare, reported as it goes
    result = invoke(*base, "--schedule", "tp", "--degree", "3", "--batch", ",".join(str(i) for i in range(1, 2101)))
    line = assert_one_error(result, "no valid point", alone=False)
    assert "sweep: preparing 2,100 points" in result.stderr, result.stderr[:300]
    assert not (tmp_path / "o" / "results.json").exists(), line

"""Exports: Perfetto JSON against conventions.md (a), HTA traces and overlap (b), Chakra ET (c), and the
``view`` / ``export`` commands end to end, including bad input."""

from __future__ import annotations

import gzip
import json
import re
from collections import defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from tspsim.cli import cli
from tspsim.engine.sim import ReplayOptions, replay
from tspsim.engine.timeline import Timeline
from tspsim.opgraph import COMPUTE_KINDS, MEMORY_CATEGORIES, GraphBuilder
from tspsim.outputs.export import chakra, hta, perfetto, span_category
from tspsim.outputs.results_file import load_results, save_results
from tspsim.spec.topology_file import load_topology


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def p2p_run() -> tuple[dict, Timeline]:
    """A small hand-made graph with send/recv pairs, a collective and memory, replayed on one MI300X node."""
    b = GraphBuilder(range(4), meta={"schedule": "handmade"})
    first = {r: b.compute(r, "gemm", f"r{r}.gemm0", flops=2e12, hbm_bytes=1e8, mem=[("start", "activations", 1 << 30)])
             for r in range(4)}
    s, rv = b.p2p(0, 1, 256 << 20, "hop0", send_deps=[first[0]], recv_deps=[first[1]], send_stream="ring",
                  recv_stream="ring", recv_mem=[("start", "comm_buffers", 256 << 20)])
    s2, rv2 = b.p2p(1, 2, 256 << 20, "hop1", send_deps=[rv], recv_deps=[first[2]], send_stream="ring",
                    recv_stream="ring")
    b.memory(3, "scratch", [("temporary", 1 << 28)])
    ar = b.collective("all_reduce", range(4), 64 << 20, "allreduce", deps={r: [first[r]] for r in range(4)})
    for r in range(4):
        b.compute(r, "elementwise", f"r{r}.tail Sync Memcpy", hbm_bytes=1e9, deps=[ar[r]],
                  mem=[("end", "activations", -(1 << 30))])
    tl = replay(b.graph, load_topology("mi300x-1node"), ReplayOptions(record_links=True))
    entry = {"schedule": "handmade", "topology": "mi300x-1node", "world_size": 8, "hbm_gb": 192.0}
    return entry, tl


@pytest.fixture(scope="module")
def result_file(tmp_path_factory: pytest.TempPathFactory, tp_run, tpsp_run) -> Path:
    path = tmp_path_factory.mktemp("results") / "result.json"
    save_results(path, [tp_run, tpsp_run])
    return path


@pytest.fixture(scope="module")
def small_result_file(tmp_path_factory: pytest.TempPathFactory, tp_run, p2p_run) -> Path:
    """Two small runs (tp and the hand-made graph): quick to load for the error-path tests."""
    path = tmp_path_factory.mktemp("results") / "small.json"
    save_results(path, [tp_run, p2p_run])
    return path


def _shown_spans(tl: Timeline) -> list[tuple[int, float, float]]:
    return [s for s in tl.spans if span_category(tl.ops[s[0]]) is not None]


# ---------------------------------------------------------------------------------- perfetto (a)
def check_trace_event_format(doc: dict) -> None:
    """conventions.md (a): the rules Perfetto's JSON importer applies."""
    assert isinstance(doc, dict) and isinstance(doc["traceEvents"], list)
    slices: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for ev in doc["traceEvents"]:
        assert {"ph", "name", "pid"} <= set(ev), ev
        ph = ev["ph"]
        assert ph in ("X", "C", "M"), ev
        if ph != "M":
            assert isinstance(ev["ts"], (int, float)) and not isinstance(ev["ts"], bool), ev
            assert ev["ts"] >= 0
        if ph == "X":
            assert isinstance(ev["dur"], (int, float)) and ev["dur"] >= 0, ev
            assert "tid" in ev
            slices[(ev["pid"], ev["tid"])].append((ev["ts"], ev["dur"]))
        elif ph == "C":
            assert ev["args"], ev  # empty args is a parse failure
            for v in ev["args"].values():
                assert isinstance(v, (int, float)) and not isinstance(v, bool), ev
        else:
            assert ev["name"] in ("process_name", "thread_name", "process_sort_index", "thread_sort_index"), ev
            if ev["name"].endswith("_name"):
                assert isinstance(ev["args"]["name"], str) and ev["args"]["name"]
            else:
                assert isinstance(ev["args"]["sort_index"], int)
            if ev["name"].startswith("thread"):
                assert "tid" in ev
    # Slices on one (pid, tid) nest perfectly or are disjoint — in float µs, and in integer ns as a parser
    # that truncates (Perfetto: int64(ts_us * 1000)) or rounds would see them.
    for key, spans in slices.items():
        for convert in (float, lambda v: int(v * 1000.0), lambda v: round(v * 1000.0)):
            ivs = sorted(((convert(ts), convert(ts) + convert(dur)) for ts, dur in spans), key=lambda s: (s[0], -s[1]))
            stack: list[float] = []
            for a, b in ivs:
                while stack and stack[-1] <= a:
                    stack.pop()
                assert not stack or b <= stack[-1], f"overlapping slices on {key}: ({a}, {b}) vs end {stack[-1]}"
                stack.append(b)


def test_perfetto_follows_trace_event_format(tpsp_run):
    doc = perfetto.build_trace([tpsp_run])
    check_trace_event_format(doc)
    entry, tl = tpsp_run
    names = {ev["pid"]: ev["args"]["name"] for ev in doc["traceEvents"] if ev["name"] == "process_name"}
    for r in tl.graph.ranks:
        assert names[r] == f"node{r // 8:02d}/gpu{r % 8} (rank {r})"
    assert names[11] == "node01/gpu3 (rank 11)"
    sort = {ev["pid"]: ev["args"]["sort_index"] for ev in doc["traceEvents"] if ev["name"] == "process_sort_index"}
    assert all(sort[r] == r for r in tl.graph.ranks)
    threads = {(ev["pid"], ev["tid"]): ev["args"]["name"] for ev in doc["traceEvents"] if ev["name"] == "thread_name"}
    tsort = {(ev["pid"], ev["tid"]): ev["args"]["sort_index"] for ev in doc["traceEvents"]
             if ev["name"] == "thread_sort_index"}
    for key, name in threads.items():
        assert (tsort[key] == 0) == (name == "compute")
    assert {n for (p, _), n in threads.items() if p == 0} == {"compute", "comm", "kv", "dp"}
    # Link pids come after every GPU.
    link_pids = [p for p, n in names.items() if n.startswith("link ")]
    assert link_pids and min(link_pids) > max(tl.graph.ranks)


def test_perfetto_spans_match_timeline(tpsp_run):
    entry, tl = tpsp_run
    doc = perfetto.build_trace([tpsp_run], links=False)
    xs = [ev for ev in doc["traceEvents"] if ev["ph"] == "X"]
    spans = _shown_spans(tl)
    assert len(xs) == len(spans)
    by_op = {ev["args"]["op"]: ev for ev in xs}
    for op_id, a, b in spans:
        ev = by_op[op_id]
        op = tl.ops[op_id]
        assert ev["pid"] == op.rank and ev["name"] == op.name
        assert ev["ts"] == pytest.approx(a * 1e6, abs=1e-3)
        assert ev["ts"] + ev["dur"] == pytest.approx(b * 1e6, abs=2e-3)
        if op.is_comm:
            assert ev["args"]["bytes"] == op.nbytes and ev["args"]["group"] == list(op.group)
        else:
            assert ev["args"].get("flops", 0.0) == op.flops
    assert not any(ev["name"].startswith("link ") for ev in doc["traceEvents"] if ev["ph"] == "M")


def test_perfetto_memory_counters(tpsp_run):
    entry, tl = tpsp_run
    doc = perfetto.build_trace([tpsp_run])
    for r in (0, 9):
        counters = [ev for ev in doc["traceEvents"] if ev["ph"] == "C" and ev["pid"] == r]
        assert counters and all(ev["name"] == perfetto.MEMORY_COUNTER for ev in counters)
        assert all(set(ev["args"]) == set(MEMORY_CATEGORIES) for ev in counters)
        ts = [ev["ts"] for ev in counters]
        assert ts == sorted(ts) and len(set(ts)) == len(ts)  # one event per instant
        final = dict.fromkeys(MEMORY_CATEGORIES, 0)
        for _, cat, delta in tl.memory[r]:
            final[cat] += delta
        assert counters[-1]["args"] == final
        peak, _ = tl.peak_memory(r)
        assert max(sum(ev["args"].values()) for ev in counters) <= peak
    link_counters = [ev for ev in doc["traceEvents"] if ev["ph"] == "C" and ev["name"] == perfetto.LINK_COUNTER]
    assert len(link_counters) == sum(len(s) for s in tl.links.values())


def test_perfetto_p2p_flows(p2p_run):
    entry, tl = p2p_run
    doc = perfetto.build_trace([p2p_run])
    check_trace_event_format(doc)
    xs = [ev for ev in doc["traceEvents"] if ev["ph"] == "X"]
    out = {ev["bind_id"]: ev for ev in xs if ev.get("flow_out")}
    into = {ev["bind_id"]: ev for ev in xs if ev.get("flow_in")}
    assert len(out) == 2 and out.keys() == into.keys()
    for bind, send in out.items():
        recv = into[bind]
        assert send["args"]["kind"] == "send" and recv["args"]["kind"] == "recv"
        assert (send["cat"], send["name"]) == (recv["cat"], recv["name"])
        assert [send["pid"], recv["pid"]] == send["args"]["group"]
        assert "flow_in" not in send and "flow_out" not in recv
    assert {ev["args"]["kind"] for ev in xs if "bind_id" not in ev} >= {"gemm", "all_reduce", "elementwise"}


def test_perfetto_gzip_multi_run_and_determinism(tmp_path, tp_run, tpsp_run):
    plain, packed, again = tmp_path / "t.json", tmp_path / "t.json.gz", tmp_path / "u.json"
    perfetto.write_trace([tp_run, tpsp_run], plain)
    perfetto.write_trace([tp_run, tpsp_run], packed)
    perfetto.write_trace([tp_run, tpsp_run], again)
    assert packed.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes() == again.read_bytes()
    doc = json.loads(plain.read_text())
    check_trace_event_format(doc)
    names = {ev["pid"]: ev["args"]["name"] for ev in doc["traceEvents"] if ev["name"] == "process_name"}
    assert names[0] == "[tp] node00/gpu0 (rank 0)"
    assert names[perfetto.RUN_PID_STRIDE + 15] == "[tp+sp] node01/gpu7 (rank 15)"
    assert [r["schedule"] for r in doc["otherData"]["runs"]] == ["tp", "tp+sp"]


# --------------------------------------------------------------------------------------- HTA (b)
def _union(intervals):
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _intersection(x, y) -> float:
    i = j = 0
    total = 0.0
    while i < len(x) and j < len(y):
        lo, hi = max(x[i][0], y[j][0]), min(x[i][1], y[j][1])
        total += max(0.0, hi - lo)
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return total


def hta_overlap_pct(tl: Timeline) -> dict[int, float]:
    """HTA's definition, computed here from the Timeline: per rank, time computing while communicating ÷
    time communicating (interval unions; compute = compute kinds, comm = collectives and p2p)."""
    out = {}
    for r in tl.graph.ranks:
        comp = _union([(a, b) for o, a, b in tl.spans
                       if tl.ops[o].rank == r and tl.ops[o].kind in COMPUTE_KINDS and tl.ops[o].kind != "memory"])
        comm = _union([(a, b) for o, a, b in tl.spans if tl.ops[o].rank == r and tl.ops[o].is_comm])
        t_comm = sum(b - a for a, b in comm)
        if t_comm > 0:
            out[r] = 100.0 * _intersection(comp, comm) / t_comm
    return out


def test_hta_trace_structure(tmp_path, p2p_run):
    entry, tl = p2p_run
    files = hta.write_traces(entry, tl, tmp_path)
    assert [f.name for f in files] == [f"rank{r}.pt.trace.json" for r in range(4)]
    for r, f in enumerate(files):
        text = f.read_text()
        # HTA finds the rank with the regex "rank":\s+(\d+) on the raw text: the first match must be ours.
        assert re.search(r'"rank":\s+(\d+)', text).group(1) == str(r)
        doc = json.loads(text)
        assert next(iter(doc)) == "distributedInfo" and doc["distributedInfo"]["rank"] == r
        kernels = [ev for ev in doc["traceEvents"] if ev["ph"] == "X"]
        assert kernels and all(ev["cat"] == "kernel" and isinstance(ev["args"]["stream"], int) for ev in kernels)
        assert all(isinstance(ev["ts"], int) and isinstance(ev["dur"], int) for ev in kernels)
        ops = [tl.ops[ev["args"]["correlation"]] for ev in kernels]
        for ev, op in zip(kernels, ops):
            if op.is_comm:
                assert ev["name"] == hta.COMM_KERNEL_NAMES[op.kind] and ev["name"].startswith("ncclDevKernel_")
            elif "Sync" in op.name:
                assert ev["name"] == "tspsim_elementwise" and ev["args"]["tspsim_name"] == op.name
            else:
                assert ev["name"] == op.name
        compute_streams = {ev["args"]["stream"] for ev, op in zip(kernels, ops) if op.stream == "compute"}
        assert compute_streams == {hta.COMPUTE_STREAM_ID}


@pytest.mark.hta
@pytest.mark.filterwarnings("ignore")  # HTA and pandas deprecation noise
@pytest.mark.parametrize("which", ["tp_run", "tpsp_run", "p2p_run"])
def test_hta_overlap_matches_tspsim(tmp_path, request, which):
    """HTA's get_comm_comp_overlap on the exported traces equals tspsim's overlap within 1 pp.

    HolisticTraceAnalysis pulls in Jupyter (~100 packages), so it is its own extra, not part of ``test``:
    CI installs it (``pip install -e ".[hta]"`` in .ci/run); elsewhere this cross-check is skipped.
    """
    try:
        from hta.trace_analysis import TraceAnalysis
    except ImportError as exc:
        pytest.skip(f"HolisticTraceAnalysis is not installed ({exc.name or exc}): the HTA cross-check of "
                    "overlap_pct needs the hta extra, pip install -e '.[hta]' (CI installs it)")
    except Exception as exc:  # noqa: BLE001 - an installed but broken HTA is unusable here too
        pytest.skip(f"HolisticTraceAnalysis cannot be imported: {exc}")
    entry, tl = request.getfixturevalue(which)
    hta.write_traces(entry, tl, tmp_path)
    df = TraceAnalysis(trace_dir=str(tmp_path)).get_comm_comp_overlap(visualize=False)
    theirs = dict(zip(df["rank"].astype(int), df["comp_comm_overlap_pctg"].astype(float)))
    ours = hta_overlap_pct(tl)
    try:
        from tspsim.analysis.metrics import overlap_stats
    except ImportError:  # the metrics module may not have it yet: our own HTA-definition figure stands
        overlap_stats = None
    if overlap_stats is not None:
        for r, pct in ours.items():
            _, comm, both = overlap_stats(tl, r)
            assert 100.0 * both / comm == pytest.approx(pct, abs=1e-6)
    assert set(ours) <= set(theirs)
    for r, pct in ours.items():
        assert theirs[r] == pytest.approx(pct, abs=1.0), f"rank {r}"
    if isinstance(entry.get("overlap_pct"), (int, float)):  # the metrics module's figure, when it has one
        mean_hta = sum(theirs[r] for r in ours) / len(ours)
        assert mean_hta == pytest.approx(entry["overlap_pct"], abs=1.0)


def test_hta_kernel_names_are_classified_like_hta():
    from tspsim.opgraph import Op

    assert hta.kernel_name(Op(0, 0, "compute", "gemm", "L1.mlp.up")) == "L1.mlp.up"
    for bad in ("cudaDeviceSynchronize", "x Memcpy y", "Memset", "ncclKernel_fake", "dma_copy"):
        assert hta.kernel_name(Op(0, 0, "compute", "gemm", bad)) == "tspsim_gemm"
    assert hta.kernel_name(Op(0, 0, "kv", "all_gather", "kv")) == "ncclDevKernel_AllGather"
    assert hta.kernel_name(Op(0, 0, "ring", "send", "hop")) == "ncclDevKernel_Send"


# ------------------------------------------------------------------------------------- Chakra (c)
def test_chakra_nodes_types_and_deps(tmp_path, p2p_run):
    entry, tl = p2p_run
    files = chakra.write_traces(entry, tl, tmp_path)
    assert [f.name for f in files] == [f"tspsim.{r}.et" for r in range(4)]
    groups = json.loads((tmp_path / "comm_groups.json").read_text())
    assert groups == {"1": [0, 1, 2, 3]}
    expected_type = {"gemm": chakra.COMP_NODE, "elementwise": chakra.COMP_NODE, "send": chakra.COMM_SEND_NODE,
                     "recv": chakra.COMM_RECV_NODE, "all_reduce": chakra.COMM_COLL_NODE}
    for r, f in enumerate(files):
        meta, nodes = chakra.read_et(f)
        assert meta["version"] == chakra.SCHEMA_VERSION and meta["attr"]["rank"] == r
        mine = [op for op in tl.ops if op.rank == r and op.kind != "memory"]
        assert [n["id"] for n in nodes] == [op.id for op in mine]
        seen: set[int] = set()
        last: dict[str, int] = {}
        for n, op in zip(nodes, mine):
            assert n["type"] == expected_type[op.kind] and n["name"] == op.name
            assert set(n["data_deps"]) <= seen  # deps point at earlier nodes of this rank
            if op.stream in last:
                assert last[op.stream] in n["data_deps"]  # stream issue order is a data dependency
            for d in op.deps:
                if tl.ops[d].rank == r and tl.ops[d].kind != "memory":
                    assert d in n["data_deps"]
            last[op.stream] = op.id
            seen.add(n["id"])
            assert n["attr"]["is_cpu_op"] is False
            if op.kind == "all_reduce":
                assert n["attr"]["comm_type"] == 0 and n["attr"]["comm_size"] == op.nbytes
                assert n["attr"]["pg_name"] == "1"  # ids from 1: "0" means every rank to ASTRA-sim
            elif op.kind in ("send", "recv"):
                assert (n["attr"]["comm_src"], n["attr"]["comm_dst"]) == op.group
                assert n["attr"]["comm_size"] == op.nbytes
            else:
                assert n["attr"]["num_ops"] == int(op.flops) and n["attr"]["tensor_size"] == int(op.hbm_bytes)
    # A send and its recv share the tag.
    tags = defaultdict(set)
    for f in files:
        for n in chakra.read_et(f)[1]:
            if n["type"] in (chakra.COMM_SEND_NODE, chakra.COMM_RECV_NODE):
                tags[n["name"]].add(n["attr"]["comm_tag"])
    assert len(tags) == 2 and all(len(t) == 1 for t in tags.values())


@pytest.fixture(scope="module")
def tsp_small_run():
    """TSP D=4 on one node, 2k tokens: its traces hold broadcasts and reduces (the attention weight loop)."""
    from tspsim.simulate import Point, simulate

    r = simulate(Point("tsp", "mi300x-1node", seq_len=2048, degree=4, gpus=4))
    return r.entry, r.timeline


def test_chakra_follows_astra_sim_rules(tmp_path, tsp_small_run):
    """What ASTRA-sim's workload layer accepts: only the collectives it simulates, bytes per rank kept for
    the stand-ins of reduce and broadcast, and pg_name ids that are never "0" (= every rank) and resolve."""
    entry, tl = tsp_small_run
    kinds = {op.kind for op in tl.ops if op.is_comm}
    assert {"reduce", "broadcast"} <= kinds  # the rules below are exercised
    files = chakra.write_traces(entry, tl, tmp_path)
    groups = json.loads((tmp_path / "comm_groups.json").read_text())
    assert "0" not in groups and groups
    ops = {op.id: op for op in tl.ops}
    seen_kinds = set()
    for f in files:
        for n in chakra.read_et(f)[1]:
            if n["type"] != chakra.COMM_COLL_NODE:
                continue
            attr, op = n["attr"], ops[n["id"]]
            assert attr["comm_type"] in chakra.ASTRA_SIM_TYPES
            assert attr["pg_name"] != "0" and tuple(groups[attr["pg_name"]]) == op.group
            p = len(op.group)
            seen_kinds.add(op.kind)
            if op.kind in ("reduce", "broadcast"):
                stand_in = {"reduce": "reduce_scatter", "broadcast": "all_gather"}[op.kind]
                assert attr["comm_type"] == chakra.COMM_TYPES[stand_in] and attr["tspsim_kind"] == op.kind
                assert attr["tspsim_comm_size"] == op.nbytes and attr["tspsim_root"] == op.root
                # A reduce-scatter / all-gather makes each rank send (p−1)/p of comm_size: N, as the ring does.
                assert (p - 1) / p * attr["comm_size"] == pytest.approx(op.nbytes, abs=1.0)
                assert attr["comm_size"] * (p - 1) >= op.nbytes * p  # rounded up, never fewer bytes
            else:
                assert attr["comm_type"] == chakra.COMM_TYPES[op.kind] and attr["comm_size"] == op.nbytes
    assert {"reduce", "broadcast"} <= seen_kinds


def test_astra_collective_mapping_exact_values():
    assert chakra.astra_collective("reduce", 1000, 4) == (chakra.COMM_TYPES["reduce_scatter"], 1334)
    assert chakra.astra_collective("broadcast", 700, 8) == (chakra.COMM_TYPES["all_gather"], 800)
    assert chakra.astra_collective("all_reduce", 5, 8) == (chakra.COMM_TYPES["all_reduce"], 5)
    assert chakra.astra_collective("reduce", 64, 1) == (chakra.COMM_TYPES["all_reduce"], 64)


def test_chakra_prefix_cannot_leave_the_output_folder(tmp_path, small_result_file):
    out = tmp_path / "deep" / "et"
    for bad in ("../..", "..", "a/b", ".hidden", ""):
        res = _invoke(["export", str(small_result_file), "--format", "chakra", "-o", str(out), "--prefix", bad])
        assert res.exit_code == 2 and "--prefix" in res.output and "Traceback" not in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("*.et"))  # nothing written anywhere
    res = _invoke(["export", str(small_result_file), "--format", "chakra", "--run", "0", "-o", str(out),
                   "--prefix", "run1"])
    assert res.exit_code == 0, res.output
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert all(str(p).startswith("deep/et/") for p in written) and any(p.name.startswith("run1.") for p in written)
    assert f"to {out}" in res.output and "comm_groups.json" in res.output


def test_chakra_memory_ops_keep_dependencies_transitively(tmp_path, p2p_run):
    entry, tl = p2p_run
    chakra.write_traces(entry, tl, tmp_path, ranks=[3])
    _, nodes = chakra.read_et(tmp_path / "tspsim.3.et")
    # rank 3: gemm0, (memory op "scratch" not exported), all_reduce, tail; the all-reduce's stream is
    # "comm" and depends on gemm0 — the tail depends on the all-reduce and on gemm0 through the stream.
    by_name = {n["name"]: n for n in nodes}
    assert "scratch" not in by_name
    gemm = by_name["r3.gemm0"]["id"]
    assert by_name["allreduce"]["data_deps"] == [gemm]
    assert set(by_name["r3.tail Sync Memcpy"]["data_deps"]) == {by_name["allreduce"]["id"], gemm}


def test_chakra_bytes_match_official_schema(tmp_path, tpsp_run):
    """Wire compatibility: mlc-chakra's generated et_def_pb2 parses every message and re-serialises it to
    the same bytes (skipped when mlc-chakra is not installed)."""
    pb = pytest.importorskip("chakra.schema.protobuf.et_def_pb2")
    entry, tl = tpsp_run
    (f,) = chakra.write_traces(entry, tl, tmp_path, ranks=[9])
    msgs = chakra.split_delimited(f.read_bytes())
    gm = pb.GlobalMetadata()
    gm.ParseFromString(msgs[0])
    assert gm.version == chakra.SCHEMA_VERSION
    types = set()
    for m in msgs[1:]:
        n = pb.Node()
        n.ParseFromString(m)
        assert n.SerializeToString() == m
        types.add(n.type)
    assert types == {pb.COMP_NODE, pb.COMM_COLL_NODE}


def test_chakra_encoding_of_negative_and_zero_values():
    buf = chakra.node(5, "x", chakra.COMP_NODE, attrs=[chakra.attribute("layer", "int64", -1),
                                                       chakra.attribute("flag", "bool", False),
                                                       chakra.attribute("d", "double", 0.5)])
    n = chakra.decode_node(buf)
    assert n["id"] == 5 and n["attr"] == {"layer": -1, "flag": False, "d": 0.5}
    assert chakra.split_delimited(chakra.delimited(buf) * 2) == [buf, buf]


# ------------------------------------------------------------------------------------------ CLI (d)
def _invoke(args: list[str]):
    return CliRunner().invoke(cli, args)


def _one_error_line(res) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    return lines[0]


@pytest.mark.slow
def test_cli_view_and_every_export(tmp_path, result_file):
    html_path = tmp_path / "timeline.html"
    res = _invoke(["view", str(result_file), "-o", str(html_path)])
    assert res.exit_code == 0, res.output
    page = html_path.read_text()
    assert page.count('<section class="run"') == 2 and 'id="run-select"' in page

    res = _invoke(["view", str(result_file), "--schedule", "tp+sp", "--ranks", "0,9", "-o", str(html_path)])
    assert res.exit_code == 0, res.output
    assert html_path.read_text().count('<section class="run"') == 1

    trace = tmp_path / "trace.json.gz"
    res = _invoke(["export", str(result_file), "--format", "perfetto", "-o", str(trace)])
    assert res.exit_code == 0, res.output
    check_trace_event_format(json.loads(gzip.decompress(trace.read_bytes())))

    res = _invoke(["export", str(result_file), "--format", "hta", "--run", "1", "-o", str(tmp_path / "hta")])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "hta").glob("rank*.pt.trace.json"))) == 16

    res = _invoke(["export", str(result_file), "--format", "chakra", "-o", str(tmp_path / "et")])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "et" / "0-tp").glob("tspsim.*.et"))) == 8
    assert len(list((tmp_path / "et" / "1-tp+sp").glob("tspsim.*.et"))) == 16


def test_cli_view_default_output_name(tmp_path, tp_run):
    path = tmp_path / "one.json.gz"
    save_results(path, [tp_run])
    res = _invoke(["view", str(path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "one.html").exists()


@pytest.mark.parametrize("damage", ["version", "truncated", "foreign", "missing", "not-json"])
def test_cli_bad_result_files(tmp_path, small_result_file, damage):
    bad = tmp_path / "bad.json"
    text = small_result_file.read_text()
    if damage == "version":
        doc = json.loads(text)
        doc["version"] = 99
        bad.write_text(json.dumps(doc))
    elif damage == "truncated":
        bad.write_text(text[: len(text) // 2])
    elif damage == "foreign":
        bad.write_text(json.dumps({"traceEvents": []}))
    elif damage == "not-json":
        bad.write_bytes(b"\x00\x01binary")
    for args in (["view", str(bad), "-o", str(tmp_path / "x.html")],
                 ["export", str(bad), "--format", "perfetto", "-o", str(tmp_path / "x.json")]):
        line = _one_error_line(_invoke(args))
        assert "bad.json" in line
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--ranks", "99"], "rank 99 was not simulated"),
    (["--ranks", "0-x"], "invalid rank"),
    (["--run", "5"], "out of range"),
    (["--schedule", "tsp"], "is not in the result file"),
    (["--run", "0", "--schedule", "tp"], "either --run or --schedule"),
])
def test_cli_bad_selection(tmp_path, small_result_file, args, message):
    for cmd in (["view", str(small_result_file), "-o", str(tmp_path / "x.html")],
                ["export", str(small_result_file), "--format", "hta", "-o", str(tmp_path / "h")]):
        line = _one_error_line(_invoke(cmd + args))
        assert message in line


def test_loaded_results_export_like_fresh_ones(result_file, tp_run):
    (saved, _) = load_results(result_file)
    fresh = perfetto.build_trace([tp_run])
    again = perfetto.build_trace([(saved.entry, saved.timeline)])
    assert json.dumps(fresh) == json.dumps(again)


# ------------------------------------------------------------------------ saved results are complete
def page_blocks(html: str) -> list[dict]:
    """The decoded data blocks (figure and refine data) of a viewer page, one per run."""
    import base64

    return [json.loads(gzip.decompress(base64.b64decode(b)))
            for b in re.findall(r'<script type="application/octet-stream" id="data-\d+">([^<]*)</script>', html)]


def test_run_save_records_links_for_view_and_perfetto(tmp_path):
    saved = tmp_path / "r.json"
    res = _invoke(["run", "-t", "mi300x-1node", "--schedule", "tp", "--degree", "2", "--gpus", "2", "--seq", "2k",
                   "--save", str(saved)])
    assert res.exit_code == 0, res.output
    (run,) = load_results(saved)
    assert run.timeline.links  # recorded although neither --html nor --trace was given
    res = _invoke(["view", str(saved), "-o", str(tmp_path / "v.html")])
    assert res.exit_code == 0 and "note:" not in res.stderr, res.output
    (block,) = page_blocks((tmp_path / "v.html").read_text())
    titles = [a["text"] for a in block["figure"]["layout"]["annotations"]]
    assert any(t.startswith("Node fabric utilisation") for t in titles) and block["refine"]["links"]
    res = _invoke(["export", str(saved), "--format", "perfetto", "-o", str(tmp_path / "t.json")])
    assert res.exit_code == 0 and "note:" not in res.stderr, res.output
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    assert any(e.get("ph") == "C" and e.get("name") == perfetto.LINK_COUNTER for e in events)


def test_view_and_export_say_what_a_saved_file_lacks(tmp_path, tp_run):
    entry, tl = tp_run
    bare = Timeline(graph=tl.graph, topology_name=tl.topology_name, spans=tl.spans, memory=tl.memory)
    saved = tmp_path / "old.json"
    save_results(saved, [(entry, bare)])
    res = _invoke(["view", str(saved), "-o", str(tmp_path / "v.html")])
    assert res.exit_code == 0, res.output
    assert "note:" in res.stderr and "has no link utilisation" in res.stderr and "no link panel" in res.stderr
    assert "Not in this result: link utilisation" in (tmp_path / "v.html").read_text()
    res = _invoke(["export", str(saved), "--format", "perfetto", "-o", str(tmp_path / "t.json")])
    assert res.exit_code == 0 and "no bandwidth counters" in res.stderr, res.output
    res = _invoke(["export", str(saved), "--format", "perfetto", "--no-links", "-o", str(tmp_path / "t.json")])
    assert res.exit_code == 0 and "note:" not in res.stderr  # the user asked for no counters

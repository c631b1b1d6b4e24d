"""Issue 7 fuzzing: for ANY input, tspsim runs, or exits 2 with one ``error:`` line — never a traceback or a hang.

Inputs start from something valid (a preset topology, a tiny model, a small op graph, a saved result,
a working command line) and are mutated: keys deleted or added, wrong types, zero / negative / NaN / inf
values, bad enums, duplicate keys, truncation, garbage bytes, random argument strings.

The examples are derandomized so the suite is reproducible; set ``TSPSIM_FUZZ_RANDOM=1`` to explore new
inputs and ``TSPSIM_FUZZ_SCALE=10`` for ten times as many examples. Every CLI call runs under a wall-clock
alarm (a hang fails the test) and every replay under an event limit. Regression tests for the crashes and
hangs the fuzzing found (large simulated times, absurd --option values) are at the end.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from tspsim.cli import cli
from tspsim.core.errors import ConfigError, TraceError
from tspsim.opgraph import GraphBuilder, OpGraph
from tspsim.outputs.results_file import load_results
from tspsim.spec.model import load_model
from tspsim.spec.topology_file import MAX_GPUS, load_topology

SCALE = float(os.environ.get("TSPSIM_FUZZ_SCALE", "1"))
CALL_LIMIT_S = 30.0
"""A single CLI call taking longer than this counts as a hang."""


def fuzz(n: int):
    """Hypothesis settings: ``n`` examples (× TSPSIM_FUZZ_SCALE), no deadline, reproducible by default."""
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None,
                    derandomize=os.environ.get("TSPSIM_FUZZ_RANDOM") != "1",
                    phases=[Phase.explicit, Phase.generate],  # no shrinking: a hang would be re-run many times
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


# ------------------------------------------------------------------------------------------ helpers
@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the main thread after ``seconds`` (a hang becomes a test failure)."""
    def handler(signum, frame):  # noqa: ARG001
        raise TimeoutError(f"no answer after {seconds} s: tspsim hangs")

    old = signal.signal(signal.SIGALRM, handler)
    # Re-fire every second after the deadline: an exception raised while a finalizer runs is swallowed.
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_cli(args: list[str]):
    """Invoke the CLI in-process and check the contract: exit 0, or exit 2 with one ``error:`` line last.

    The outcome is recorded as a hypothesis event (``pytest --hypothesis-show-statistics`` shows how many
    generated command lines ran and which errors the others met).
    """
    with time_limit(CALL_LIMIT_S):
        result = CliRunner().invoke(cli, args)
    check_contract(result, args)
    outcome = "ran" if result.exit_code == 0 else _error_kind(result.stderr.splitlines()[-1])
    with contextlib.suppress(InvalidArgument):  # outside a hypothesis test (fixtures)
        event(f"{args[0] if args else '-'}: {outcome}")
    return result


def _error_kind(line: str) -> str:
    """The error line with paths and numbers blanked, so similar errors count together."""
    import re

    text = re.sub(r"/\S+|'[^']*'|\"[^\"]*\"|\d[\d.,e+]*", "_", line[len("error: "):])
    return text[:70]


def check_contract(result, args: list[str]) -> None:
    where = f"tspsim {' '.join(map(repr, args))}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        tb = "".join(traceback.format_exception(result.exception))
        pytest.fail(f"{where} crashed:\n{tb}")
    assert "Traceback" not in result.output, where
    assert result.exit_code in (0, 2), (where, result.exit_code, result.output)
    if result.exit_code == 2:
        lines = result.stderr.splitlines()
        assert lines, where
        errors = [line for line in lines if line.startswith("error:")]
        assert len(errors) == 1 and lines[-1].startswith("error: "), (where, lines)
        assert len(lines[-1]) > len("error: ") + 10, (where, lines)  # says something


def check_message(exc: Exception, *needles: str) -> str:
    """A loader error: one line, naming what was asked for."""
    msg = str(exc)
    assert "\n" not in msg and msg.strip() == msg and len(msg) > 20, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
                | st.text(max_size=8))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                                              max_size=3),
                           max_leaves=6)
NUMBERS = st.sampled_from([0, -1, -0.5, 1e-300, 5e-324, 1.5, 3, 7, 1e15, 1e16, 10**30, float("nan"),
                           float("inf"), float("-inf")]) | st.integers(-(2**70), 2**70) | st.floats()
BAD_VALUES = NUMBERS | st.text(max_size=10) | st.booleans() | st.none() | st.lists(st.integers(), max_size=2) \
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2) | st.dates()


def key_paths(obj: Any, prefix: tuple = (), depth: int = 6) -> list[tuple]:
    """Every path (tuple of keys / indexes) into nested dicts and lists."""
    out = [prefix] if prefix else []
    if depth == 0:
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += key_paths(v, prefix + (k,), depth - 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:4]):
            out += key_paths(v, prefix + (i,), depth - 1)
    return out


def set_path(obj: Any, path: tuple, value: Any) -> None:
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def del_path(obj: Any, path: tuple) -> None:
    for k in path[:-1]:
        obj = obj[k]
    del obj[path[-1]]


@st.composite
def mutated(draw, base: Any, values=BAD_VALUES) -> Any:
    """``base`` (deep-copied) with 1–3 random mutations: delete, replace, or add an unknown key."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = key_paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["delete", "replace", "replace", "add"]))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if action == "delete":
            del_path(doc, path)
        elif action == "replace":
            set_path(doc, path, draw(values))
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(values)
    return doc


def dump_yaml(doc: Any) -> str:
    """YAML text of ``doc``; non-finite floats become .nan / .inf as a user would write them."""
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A scratch folder; the module runs with it as the working directory (outputs land there)."""
    root = tmp_path_factory.mktemp("fuzz")
    old = os.getcwd()
    os.chdir(root)
    yield root
    os.chdir(old)


TINY_MODEL = {"name": "tiny", "hidden": 256, "layers": 2, "q_heads": 8, "kv_heads": 4, "head_dim": 32,
              "ffn_hidden": 1024, "gated_mlp": True, "vocab": 1024, "default_seq": 4096}


@pytest.fixture(scope="module")
def tiny(work) -> str:
    path = work / "tiny.yaml"
    path.write_text(dump_yaml(TINY_MODEL))
    return str(path)


@pytest.fixture(scope="module")
def two_nodes(work) -> str:
    path = work / "mi300x-2node.yaml"
    path.write_text("name: mi300x-2node\ninherit: mi300x-128node\nnodes: 2\n")
    return str(path)


# ------------------------------------------------------------------------------------------ topology YAML
PRESET_1 = load_topology("mi300x-1node").resolved
PRESET_N = load_topology("h100-dgx-128node").resolved


def load_topology_checked(path: Path):
    """load_topology either returns a sane Topology or raises one ConfigError line naming the file."""
    try:
        with time_limit(10):
            topo = load_topology(str(path))
    except ConfigError as exc:
        check_message(exc, path.name)
        return None
    for section in (topo.gpu, topo.intra, topo.inter):
        for name, value in vars(section).items() if section is not None else ():
            if isinstance(value, float):
                assert math.isfinite(value), (name, value)
                if "efficiency" in name:
                    assert 0 < value <= 1, (name, value)
    assert 1 <= topo.world_size <= MAX_GPUS
    return topo


@fuzz(150)
@given(st.data())
def test_topology_mutations(work, data):
    base = data.draw(st.sampled_from([PRESET_1, PRESET_N]))
    doc = data.draw(mutated(base))
    path = work / "topo.yaml"
    path.write_text(dump_yaml(doc))
    load_topology_checked(path)


@fuzz(40)
@given(section=st.sampled_from(["gpu", "intra", "inter"]), value=BAD_VALUES)
def test_topology_every_number_rejects_bad_values(work, section, value):
    doc = copy.deepcopy(PRESET_N)
    for key in doc[section]:
        if key not in ("name", "kind", "topology"):
            trial = copy.deepcopy(doc)
            trial[section][key] = value
            path = work / "topo-value.yaml"
            path.write_text(dump_yaml(trial))
            topo = load_topology_checked(path)
            bad = (isinstance(value, bool) or not isinstance(value, (int, float))
                   or not math.isfinite(value) or value < 0 or abs(value) > 1e15)
            if bad:
                assert topo is None, (section, key, value)


@fuzz(30)
@given(enum=st.sampled_from([("intra", "kind"), ("inter", "topology")]), value=BAD_VALUES | st.text(max_size=12))
def test_topology_bad_enums(work, enum, value):
    doc = copy.deepcopy(PRESET_N)
    doc[enum[0]][enum[1]] = value
    path = work / "topo-enum.yaml"
    path.write_text(dump_yaml(doc))
    if value not in ("full_mesh", "switch", "rails_only", "rail_optimized_fat_tree"):
        with pytest.raises(ConfigError) as info:
            load_topology(str(path))
        check_message(info.value, f".{enum[0]}.{enum[1]}: expected one of")


@fuzz(30)
@given(data=st.data())
def test_topology_duplicate_keys_in_text(work, data):
    lines = dump_yaml(PRESET_1).splitlines()
    keyed = [i for i, line in enumerate(lines) if ":" in line and not line.rstrip().endswith(":")]
    i = data.draw(st.sampled_from(keyed))
    indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    key = lines[i].strip().split(":")[0]
    dup = f"{indent}{key}: {data.draw(st.sampled_from(['1', 'x', '.nan', '[1]']))}"
    lines.insert(i + 1, dup)
    path = work / "topo-dup.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as info:
        load_topology(str(path))
    check_message(info.value, path.name, f"line {i + 2}: duplicate key {key!r}")


@fuzz(60)
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode)
       | st.sampled_from([b"", b"- a\n- b\n", b"42\n", b"null\n", b"[" * 5000, b"a: [" * 3000, b"\xff\xfe",
                          b"a: !!python/object/apply:os.system ['true']\n", b"name: x\n\x00", b"*x\n",
                          b"a: 1\n---\nb: 2\n", ("n: " + "9" * 5000).encode(), b"? [1, 2]\n: 3\n"]))
def test_topology_garbage_text(work, raw):
    path = work / "topo-garbage.yaml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        load_topology(str(path))
    check_message(info.value, path.name)


@fuzz(16)
@given(target=st.sampled_from(["self", "loop", "missing-preset", "missing-path", "number", "list", "deep", "dir"]))
def test_topology_inherit_errors(work, target):
    a, b = work / "inh-a.yaml", work / "inh-b.yaml"
    b.write_text("inherit: inh-a.yaml\n")
    parent = {"self": "inh-a.yaml", "loop": "inh-b.yaml", "missing-preset": "mi999x-1node",
              "missing-path": "no/such.yaml", "number": 7, "list": ["mi300x-1node"], "dir": str(work),
              "deep": "inh-chain-0.yaml"}[target]
    for i in range(20):
        (work / f"inh-chain-{i}.yaml").write_text(f"inherit: inh-chain-{i + 1}.yaml\n")
    (work / "inh-chain-20.yaml").write_text("inherit: mi300x-1node\n")
    a.write_text(dump_yaml({"inherit": parent, "name": "x"}))
    with pytest.raises(ConfigError) as info:
        load_topology(str(a))
    check_message(info.value, "inh-")


# ------------------------------------------------------------------------------------------ model YAML
def load_model_checked(path: Path):
    try:
        model = load_model(str(path))
    except ConfigError as exc:
        check_message(exc, path.name)
        return None
    assert model.q_heads % model.kv_heads == 0
    for key in ("hidden", "layers", "q_heads", "kv_heads", "head_dim", "ffn_hidden", "vocab"):
        assert isinstance(getattr(model, key), int) and getattr(model, key) >= 1
    return model


@fuzz(120)
@given(data=st.data())
def test_model_mutations(work, data):
    doc = data.draw(mutated(TINY_MODEL))
    path = work / "model.yaml"
    path.write_text(dump_yaml(doc))
    load_model_checked(path)


@fuzz(40)
@given(q=st.integers(1, 64), kv=st.integers(1, 64))
def test_model_gqa_ratio(work, q, kv):
    path = work / "model-gqa.yaml"
    path.write_text(dump_yaml(dict(TINY_MODEL, q_heads=q, kv_heads=kv)))
    model = load_model_checked(path)
    assert (model is not None) == (q % kv == 0)


@fuzz(40)
@given(raw=st.binary(max_size=100) | st.sampled_from([b"", b"[1]\n", b"hidden: 1\nhidden: 2\n", b"layers: .nan\n"]))
def test_model_garbage(work, raw):
    path = work / "model-garbage.yaml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        load_model(str(path))
    check_message(info.value, path.name)


# ------------------------------------------------------------------------------------------ op-graph traces
def small_graph() -> dict[str, Any]:
    """Two ranks: GEMMs, an all-reduce, a send/recv and memory events."""
    b = GraphBuilder((0, 1), meta={"schedule": "hand-made"})
    g = {r: b.compute(r, "gemm", f"gemm{r}", flops=2e9, hbm_bytes=1e6, shape=(64, 64, 64), layer=0,
                      mem=[("start", "activations", 1 << 20)]) for r in (0, 1)}
    ar = b.collective("all_reduce", (0, 1), 1 << 20, "ar", deps={r: [g[r]] for r in (0, 1)})
    s, r = b.p2p(0, 1, 4096, "kv", send_deps=[ar[0]], recv_deps=[ar[1]])
    b.collective("broadcast", (0, 1), 1 << 12, "bc", root=0, algorithm="ring", deps={0: [s], 1: [r]})
    for rank in (0, 1):
        b.memory(rank, "free", [("activations", -(1 << 20))], deps=[ar[rank]])
    return b.graph.to_json()


GRAPH = small_graph()


@st.composite
def trace_bytes(draw) -> bytes:
    """A mutated small op graph, as file bytes (JSON, gzip, truncated or garbage)."""
    doc = copy.deepcopy(GRAPH)
    ops = doc["ops"]
    kind = draw(st.sampled_from(["fields", "fields", "version", "dangling", "self", "extra-dep", "cycle", "disagree",
                                 "outside", "truncate", "gzip-garbage", "garbage", "valid", "nan"]))
    if kind == "fields":
        doc = draw(mutated(doc, JSON_VALUES))
    elif kind == "version":
        doc[draw(st.sampled_from(["version", "format"]))] = draw(JSON_VALUES)
    elif kind == "dangling":
        ops[draw(st.integers(0, len(ops) - 1))]["deps"] = [draw(st.integers(len(ops), 10**6) | st.integers(-5, -1))]
    elif kind == "self":
        i = draw(st.integers(0, len(ops) - 1))
        ops[i]["deps"] = [i]
    elif kind == "cycle":  # an earlier op of a stream waits for a later one of the same stream
        streams: dict[tuple, list[int]] = {}
        for o in ops:
            streams.setdefault((o["rank"], o["stream"]), []).append(o["id"])
        ids = draw(st.sampled_from([v for v in streams.values() if len(v) > 1]))
        a, b = sorted(draw(st.lists(st.sampled_from(ids), min_size=2, max_size=2, unique=True)))
        ops[a].setdefault("deps", []).append(b)
    elif kind == "extra-dep":  # may create a cycle, may be harmless
        i, j = draw(st.integers(0, len(ops) - 1)), draw(st.integers(0, len(ops) - 1))
        ops[i].setdefault("deps", []).append(j)
    elif kind == "disagree":
        comm = [o for o in ops if "coll" in o]
        o = draw(st.sampled_from(comm))
        field = draw(st.sampled_from(["nbytes", "group", "kind", "root", "coll", "rank"]))
        o[field] = draw(st.sampled_from({"nbytes": [0, 1, 4097, 2**40], "group": [[0], [1, 0], [0, 1, 2], [0, 0]],
                                         "kind": ["all_gather", "send", "recv", "reduce"], "root": [1, 5, -1],
                                         "coll": ["p2p#2", "other", ""], "rank": [0, 1, 2]}[field]))
    elif kind == "outside":
        big = draw(st.sampled_from([8, 9, 4096, 2**19]))
        doc["ranks"] = [0, big]
        for o in ops:
            if o["rank"] == 1:
                o["rank"] = big
            if "group" in o:
                o["group"] = [big if x == 1 else x for x in o["group"]]
    elif kind == "nan":
        ops[draw(st.integers(0, len(ops) - 1))][draw(st.sampled_from(["flops", "hbm_bytes", "nbytes"]))] = \
            draw(st.sampled_from([float("nan"), float("inf"), -1.0, 1e300]))
    text = json.dumps(doc).encode()
    if kind == "truncate":
        return text[: draw(st.integers(0, len(text) - 1))]
    if kind == "gzip-garbage":
        gz = gzip.compress(text)
        cut = draw(st.integers(2, len(gz) - 1))
        flip = draw(st.booleans())
        data = bytearray(gz[:cut] if not flip else gz)
        if flip:
            data[draw(st.integers(10, len(data) - 1))] ^= 0xFF
        return bytes(data)
    if kind == "garbage":
        return draw(st.binary(max_size=64) | st.just(b"\x1f\x8b" + b"\x00" * 20) | st.just(b"[" * 100_000))
    if draw(st.booleans()):
        return gzip.compress(text)
    return text


@fuzz(200)
@given(raw=trace_bytes(), suffix=st.sampled_from([".json", ".json.gz"]))
def test_trace_mutations_replay(work, raw, suffix):
    path = work / f"trace{suffix}"
    path.write_bytes(raw)
    try:
        OpGraph.load(path)
    except TraceError as exc:
        check_message(exc, str(path))
    result = run_cli(["replay", str(path), "-t", "mi300x-1node", "--max-events", "100000", "--json"])
    if result.exit_code == 0:
        assert len(json.loads(result.stdout)["results"]) == 1


def test_valid_small_graph_replays(work):
    path = work / "valid.json"
    path.write_text(json.dumps(GRAPH))
    result = run_cli(["replay", str(path), "-t", "mi300x-1node", "--json"])
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------------------------------ result files
@pytest.fixture(scope="module")
def result_doc(work, tiny) -> dict[str, Any]:
    run_cli(["run", "-t", "mi300x-1node", "--model", tiny, "--seq", "1k", "--schedule", "tp", "--degree", "2",
             "--gpus", "2", "--save", "base-result.json", "--trace", "base-trace.json"])
    return json.loads((work / "base-result.json").read_text())


@st.composite
def result_bytes(draw, base: dict[str, Any]) -> bytes:
    kind = draw(st.sampled_from(["mutate", "mutate", "mutate", "truncate", "version", "format", "gzip", "runs"]))
    doc = copy.deepcopy(base)
    if kind == "mutate":
        # Aim at entry and timeline as often as at the (already fuzzed) graph.
        part = draw(st.sampled_from(["entry", "timeline", "graph"]))
        doc["runs"][0][part] = draw(mutated(doc["runs"][0][part], JSON_VALUES))
    elif kind == "version":
        doc["version"] = draw(JSON_VALUES)
    elif kind == "format":
        doc["format"] = draw(st.sampled_from(["tspsim-opgraph", "tspsim-result2", None, 1]))
    elif kind == "runs":
        doc["runs"] = draw(st.sampled_from([[], {}, None, [None], [{}], doc["runs"] * 2]))
    text = json.dumps(doc).encode()
    if kind == "truncate":
        return text[: draw(st.integers(0, len(text) - 1))]
    if kind == "gzip":
        gz = gzip.compress(text)
        return gz[: draw(st.integers(2, len(gz)))]
    return text


@fuzz(60)
@given(data=st.data())
def test_result_mutations_view_and_export(work, result_doc, data):
    raw = data.draw(result_bytes(result_doc))
    path = work / "result.json"
    path.write_bytes(raw)
    try:
        load_results(path)
    except TraceError as exc:
        check_message(exc, str(path))
    run_cli(["view", str(path), "-o", "page.html"])
    fmt = data.draw(st.sampled_from(["perfetto", "hta", "chakra"]))
    run_cli(["export", str(path), "--format", fmt, "-o", f"export-{fmt}" + (".json" if fmt == "perfetto" else "")])


# ------------------------------------------------------------------------------------------ CLI arguments
@st.composite
def arg(draw, valid: list[str]) -> str:
    """One of ``valid`` (which holds some invalid values too) 85 % of the time, random text otherwise."""
    if draw(st.integers(0, 99)) < 85:
        return draw(st.sampled_from(valid))
    return draw(st.text(max_size=12))


SAFE_OUT = st.sampled_from(["out.json", "out.json.gz", "sub/dir/out.json", ".", "tiny.yaml/x.json", "o u t.json"])


@st.composite
def run_args(draw, tiny: str, two_nodes: str) -> list[str]:
    args = ["run", "-t", draw(arg(["mi300x-1node", "h100-dgx-1node", two_nodes])), "--model",
            draw(arg([tiny, tiny, "tiny.yaml", "missing.yaml"]))]
    optional = {
        "--seq": arg(["1k", "2k", "4k", "0", "3", "1.5k", "4096", "12q"]),
        "--schedule": arg(["tp", "tsp", "sp", "tp+sp", "satp-seq", "satp-batch", "all", "tp,tp", "tsp,tp+sp"]),
        "--degree": arg(["1", "2", "4", "8", "16", "3", "0"]),
        "--tp": arg(["1", "2", "4", "8"]), "--sp": arg(["1", "2", "4"]),
        "--batch": arg(["1", "2", "8", "0"]), "--mode": arg(["train", "forward", "prefill", "decode"]),
        "--recompute": arg(["none", "selective", "full"]), "--gpus": arg(["1", "2", "4", "8", "16"]),
        "--option": arg(["zero1=true", "recompute=none", "weight_buffers=1", "kv_buckets=2", "pack_kv=false",
                         "tp_overlap=true", "nope=1", "zero1", "=", "logits_bytes=2"]),
    }
    for flag in draw(st.lists(st.sampled_from(sorted(optional)), max_size=4, unique=True)):
        args += [flag, draw(optional[flag])]
    for flag in draw(st.lists(st.sampled_from(["--json", "--full", "--save", "--trace", "--html"]), max_size=2,
                              unique=True)):
        args += [flag] if flag in ("--json", "--full") else [flag, draw(SAFE_OUT)]
    return args


@fuzz(100)
@given(data=st.data())
def test_cli_run_arguments(work, tiny, two_nodes, data):
    args = data.draw(run_args(tiny, two_nodes))
    result = run_cli(args)
    if result.exit_code == 0 and "--json" in args:
        json.loads(result.stdout)


@fuzz(100)
@given(data=st.data())
def test_cli_collective_arguments(work, two_nodes, data):
    args = ["collective", "-t", data.draw(arg(["mi300x-1node", "h100-dgx-1node", two_nodes]))]
    optional = {
        "--op": arg(["all_reduce", "all_gather", "reduce_scatter", "broadcast", "reduce", "all_to_all", "sendrecv"]),
        "--group": arg(["2", "8", "16", "1", "3", "0", "99999999999999999999"]),
        "--ranks": arg(["0,1", "0,8", "0,1,2,3", "0,0", "7", "0,15", "0,16", "²,1", "-1,2", "0," + "9" * 30]),
        "--sizes": arg(["1k", "0", "1M,1G", "1", "12q", "1.5", ",", "1024T", "1025T", "9" * 40]),
        "--algorithm": arg(["ring", "direct", "one_shot", "two_shot", "tree", "hier"]),
    }
    for flag in data.draw(st.lists(st.sampled_from(sorted(optional)), max_size=4, unique=True)):
        args += [flag, data.draw(optional[flag])]
    if data.draw(st.booleans()):
        args.append("--json")
    result = run_cli(args)
    if result.exit_code == 0 and "--json" in args:
        assert json.loads(result.stdout)["results"]


@fuzz(60)
@given(data=st.data())
def test_cli_generate_then_replay(work, tiny, two_nodes, data):
    gen = ["generate", "-t", data.draw(arg(["mi300x-1node", two_nodes])), "--model", data.draw(arg([tiny])),
           "--schedule", data.draw(arg(["tp", "tsp", "sp", "tp+sp", "satp-seq"])),
           "--seq", data.draw(arg(["1k", "2k"])), "--degree", data.draw(arg(["2", "2", "4", "3"]))]
    optional = {"--gpus": arg(["2", "4", "8"]), "--tp": arg(["2", "4"]),
                "--sp": arg(["2"]), "--mode": arg(["train", "forward", "decode"]),
                "--option": arg(["zero1=true", "pack_kv=false", "kv_buckets=2"])}
    for flag in data.draw(st.lists(st.sampled_from(sorted(optional)), max_size=3, unique=True)):
        gen += [flag, data.draw(optional[flag])]
    out = data.draw(st.sampled_from(["gen.json", "gen.json.gz", "traces-sub/gen.json"]))
    result = run_cli(gen + ["-o", out])
    if result.exit_code == 0:
        topo = data.draw(arg(["mi300x-1node", two_nodes, "h100-dgx-128node"]))
        run_cli(["replay", out, "-t", topo, "--max-events", data.draw(st.sampled_from(["50", "1000000"])), "--json"])


def _drop_outputs(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("--save", "--trace", "--html"):
            skip = True
            continue
        out.append(a)
    return out


@fuzz(60)
@given(data=st.data())
def test_cli_view_export_arguments(work, result_doc, data):
    path = work / "good-result.json"
    if not path.exists():
        path.write_text(json.dumps(result_doc))
    source = data.draw(arg([str(path), str(path), "missing.json", str(work), "tiny.yaml"]))
    ranks = ["--ranks", data.draw(arg(["0", "0,1", "0-1", "1-0", "5", "0-99999999999", "²", "", ","]))]
    pick = data.draw(st.sampled_from([[], ["--run", data.draw(arg(["0", "1", "-1"]))],
                                      ["--schedule", data.draw(arg(["tp", "tsp"]))]]))
    extra = ranks if data.draw(st.booleans()) else []
    if data.draw(st.booleans()):
        run_cli(["view", source, "-o", data.draw(SAFE_OUT | st.just(source))] + extra + pick)
    else:
        fmt = data.draw(arg(["perfetto", "hta", "chakra"]))
        run_cli(["export", source, "--format", fmt, "-o", data.draw(SAFE_OUT)] + extra + pick
                + (["--prefix", data.draw(arg(["p", "a/b", ""]))] if data.draw(st.booleans()) else []))


@fuzz(80)
@given(args=st.lists(st.text(max_size=10) | st.sampled_from(["--json", "-h", "--help", "topologies", "models",
                                                              "schedules", "--version", "--bogus"]), max_size=3),
       command=st.sampled_from(["list", "validate", "run", "collective", "generate", "replay", "view", "export",
                                "sweep", "plan", "nonsense", ""]))
def test_cli_random_words(work, args, command):
    if command == "validate" and not any(a in ("-h", "--help") or a not in ("--json",) for a in args):
        args = args + ["--bogus"]  # a full validation run takes long; its argument handling is what is fuzzed
    run_cli([command] + args if command else args)


@pytest.mark.parametrize("name", ["topologies", "models", "schedules"])
def test_list_runs(name):
    assert run_cli(["list", name]).exit_code == 0


# ------------------------------------------------------------------------------------------ valid extremes
@fuzz(40)
@given(data=st.data())
def test_extreme_but_valid_topology_numbers_simulate(work, tiny, data):
    """Topologies far from real hardware still simulate: slow or fast GPUs and links, odd efficiencies.

    Values stay where a step lasts less than ~10^5 simulated seconds; beyond that the engine livelocks
    (see test_bug_engine_livelock_at_large_simulated_times).
    """
    doc = copy.deepcopy(PRESET_1)
    for _ in range(data.draw(st.integers(1, 4))):
        section = data.draw(st.sampled_from(["gpu", "intra"]))
        key = data.draw(st.sampled_from([k for k, v in doc[section].items() if isinstance(v, (int, float))]))
        if "efficiency" in key:
            value = data.draw(st.sampled_from([0.01, 0.3, 1.0]))
        elif key.endswith("_us"):
            value = data.draw(st.sampled_from([0, 1e-3, 1, 1e4]))
        elif key == "compute_slowdown":
            value = data.draw(st.sampled_from([0, 0.5, 10]))
        elif key == "gemm_half_GFLOP":
            value = data.draw(st.sampled_from([1e-3, 1, 1e3]))
        else:
            value = data.draw(st.sampled_from([0.1, 1, 1e6, 1e12, 1e15]))
            if key == "direct_max_bytes":
                value = int(value)
        doc[section][key] = value
    path = work / "extreme.yaml"
    path.write_text(dump_yaml(doc))
    if load_topology_checked(path) is None:
        return
    run_cli(["collective", "-t", str(path), "--op", "all_reduce", "--sizes", "1k,1G", "--json"])
    run_cli(["run", "-t", str(path), "--model", tiny, "--seq", "1k", "--schedule", "tp", "--degree", "2",
             "--gpus", "2", "--json"])


# ------------------------------------------------------------------------------------------ bugs found elsewhere
def _run_tiny(tiny: str, *extra: str, limit: float = 5.0):
    with time_limit(limit):
        return CliRunner().invoke(cli, ["run", "-t", "mi300x-1node", "--model", tiny, "--seq", "1k", "--degree", "2",
                                        "--gpus", "4", "--json", *extra], catch_exceptions=False)


def _run_tiny_process(tiny: str, *extra: str, limit: float = 8.0) -> subprocess.CompletedProcess:
    """Like _run_tiny in a child process, killed after ``limit`` s (heavy graph building ignores SIGALRM)."""
    args = ["run", "-t", "mi300x-1node", "--model", tiny, "--seq", "1k", "--degree", "2", "--gpus", "4", "--json"]
    return subprocess.run([sys.executable, "-m", "tspsim.cli", *args, *extra], capture_output=True, text=True,
                          timeout=limit, check=False)


def test_large_simulated_times_finish(work, tiny):
    """A step of ~5e6 simulated seconds (--seq 1G, the longest sequence accepted) finishes: flows whose
    remaining time is below the clock's float resolution complete instead of livelocking the network."""
    proc = _run_tiny_process(tiny, "--schedule", "tp", "--seq", "1G")
    assert proc.returncode == 0, proc.stderr
    (entry,) = json.loads(proc.stdout)["results"]
    assert entry["step_time_s"] > 1e6


@pytest.mark.parametrize("option", ["logits_bytes=1000000000000000000000000", "kv_buckets=100000",
                                    "kv_buckets=3", "dp_bucket_MB=nan", "dp_bucket_MB=inf",
                                    "decode_launch_us=nan", "weight_buffers=0", "grad_bytes=65"])
def test_absurd_assumption_values_are_one_line_errors(work, tiny, option):
    result = _run_tiny(tiny, "--schedule", "tsp", "--option", option)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: option "), result.stderr
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------------------------ issue 18
@st.composite
def alias_bomb(draw) -> str:
    """YAML whose aliases expand to fan^levels values, placed under some key (often a wrongly typed one)."""
    levels, fan = draw(st.integers(1, 14)), draw(st.integers(2, 12))
    lines = [f"x: &a0 [{', '.join(['1'] * fan)}]"]
    lines += [f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fan)}]" for i in range(1, levels + 1)]
    anchors = "\n".join(lines)
    where = draw(st.sampled_from(["gpu:\n  hbm_GB: ", "name: ", "description: ", "intra: ", "inherit: "]))
    if draw(st.booleans()):  # anchors defined inline, inside the value itself
        value = f"[{anchors.replace(chr(10), ', ').replace(': &', ': [&')}]"  # not valid YAML half of the time
        return f"inherit: mi300x-1node\n{where}{value}\n"
    return f"{anchors}\ninherit: mi300x-1node\n{where}*a{levels}\n"


@fuzz(60)
@given(text=alias_bomb(), kind=st.sampled_from(["topology", "model"]))
def test_yaml_alias_expansion_is_bounded(work, text, kind):
    """Item 7: every alias bomb is a one-line error within seconds (a 440-byte one used to hang)."""
    path = work / "bomb.yaml"
    path.write_text(text if kind == "topology" else text.replace("inherit: mi300x-1node", "layers: 2"))
    with time_limit(10):
        try:
            (load_topology if kind == "topology" else load_model)(str(path))
        except ConfigError as exc:
            check_message(exc, "bomb.yaml")
            assert len(str(exc)) < 400, str(exc)[:400]


VALID_ENDS = {"peak_bf16_TFLOPS": (1e-3, 1e6), "mfu_peak_TFLOPS": None, "hbm_TBps": (1e-3, 1e3),
              "hbm_GB": (1e-3, 1e6), "runtime_reserve_GB": (0.0, 100.0), "kernel_launch_us": (0.0, 1e6),
              "gemm_efficiency": (0.01, 1.0), "gemm_half_GFLOP": (1e-6, 1e6), "attn_fwd_efficiency": (0.01, 1.0),
              "attn_bwd_efficiency": (0.01, 1.0), "hbm_efficiency": (0.01, 1.0)}
"""GPU keys and the ends of their documented ranges (mfu_peak follows peak_bf16)."""


@fuzz(30)
@given(data=st.data())
def test_documented_range_ends_give_finite_outputs(work, tiny, data):
    """Item 4: every value inside the documented ranges simulates and writes only finite numbers (efficiencies
    of 5e-324, inside the old (0, 1], gave ZeroDivisionError, Infinity in --json and a file view refused)."""
    doc = copy.deepcopy(PRESET_1)
    for key in data.draw(st.lists(st.sampled_from([k for k, v in VALID_ENDS.items() if v]), min_size=1, max_size=5,
                                  unique=True)):
        doc["gpu"][key] = data.draw(st.sampled_from(VALID_ENDS[key]))
    doc["gpu"]["mfu_peak_TFLOPS"] = doc["gpu"]["peak_bf16_TFLOPS"]
    doc["intra"]["link_efficiency"] = data.draw(st.sampled_from([0.01, 1.0]))
    doc["intra"]["link_GBps"] = data.draw(st.sampled_from([1e-3, 1e5]))
    path = work / "ends.yaml"
    path.write_text(dump_yaml(doc))
    assert load_topology_checked(path) is not None
    mode = data.draw(st.sampled_from(["train", "decode"]))
    result = run_cli(["run", "-t", str(path), "--model", tiny, "--seq", "1k", "--schedule", "tp", "--degree", "2",
                      "--gpus", "2", "--mode", mode, "--json", "--save", "ends-result.json", "--trace",
                      "ends-trace.json"] + (["--no-max-batch"] if mode == "decode" else []))
    assert result.exit_code == 0, result.output
    assert "Infinity" not in result.stdout and "NaN" not in result.stdout
    (entry,) = json.loads(result.stdout)["results"]
    assert 0 < entry["step_time_s"] < 1e300 and 0 <= entry["mfu"] <= 1.0, entry["mfu"]
    run_cli(["view", "ends-result.json", "-o", "ends.html"])


@fuzz(40)
@given(flag=st.sampled_from(["--seq", "--context", "--tokens", "--batch"]),
       value=st.sampled_from(["0", "1", "2", "1k", "1G", "2G", "1024T", "32769", "1048576", "1048577"]),
       mode=st.sampled_from(["train", "prefill", "decode", "generate"]))
def test_workload_numbers_are_bounded(work, tiny, flag, value, mode):
    """Item 4 / 12: zero tokens and unbounded --tokens / --batch are one-line errors; accepted ones make sense."""
    args = ["run", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tp", "--degree", "2", "--gpus", "2",
            "--mode", mode, "--json", "--no-timing", flag, value]
    if mode != "train":
        args.append("--no-max-batch")
    if flag not in ("--seq", "--context"):
        args += ["--seq", "1k"]
    with time_limit(20):
        result = run_cli(args)
    if result.exit_code == 0:
        (entry,) = json.loads(result.stdout)["results"]
        assert entry["tokens_per_s"] > 0 and math.isfinite(entry["tokens_per_s"])


SHAPES = [(1, 8), (2, 4), (4, 2), (8, 1), (2, 8), (4, 4), (8, 2), (16, 1), (1, 16)]


@fuzz(30)
@given(data=st.data())
def test_folded_trace_replays_exactly_or_is_refused_on_any_shape(work, tiny, data):
    """Item 2: a folded trace replayed on another node shape equals the --full trace there, or is refused."""
    def cluster(nodes: int, gpn: int) -> str:
        path = work / f"shape-{nodes}x{gpn}.yaml"
        path.write_text(f"name: shape-{nodes}x{gpn}\ninherit: mi300x-128node\nnodes: {nodes}\n"
                        f"gpus_per_node: {gpn}\n")
        return str(path)

    a = data.draw(st.sampled_from(SHAPES))
    b = data.draw(st.sampled_from([s for s in SHAPES if s[0] * s[1] == a[0] * a[1]]))
    degree = data.draw(st.sampled_from(["1", "2", "4"]))
    gen = ["generate", "-t", cluster(*a), "--model", tiny, "--schedule", "tp", "--degree", degree, "--seq", "1k"]
    if run_cli(gen + ["-o", "fold.json"]).exit_code != 0:
        return
    assert run_cli(gen + ["--full", "-o", "full.json"]).exit_code == 0
    folded = run_cli(["replay", "fold.json", "-t", cluster(*b), "--json"])
    full = run_cli(["replay", "full.json", "-t", cluster(*b), "--json"])
    assert full.exit_code == 0, full.output
    if folded.exit_code == 2:
        assert "folded" in folded.stderr and "--full" in folded.stderr
        return
    t_fold = json.loads(folded.stdout)["results"][0]["step_time_s"]
    t_full = json.loads(full.stdout)["results"][0]["step_time_s"]
    assert t_fold == pytest.approx(t_full, rel=1e-9), (a, b, degree)


@fuzz(20)
@given(junk=st.sampled_from([b"[" * 200_000, b'{"a":' * 50_000, b"\x00\xff", b"", b"{}", b"[]", b'{"key": 1}',
                             b'{"entry": {}, "wall_s": 1e999}', b"1" * 5000]) | st.binary(max_size=64))
def test_corrupt_cache_files_are_ignored(work, tiny, junk):
    """Item 11: whatever a cache file holds, the sweep recomputes that point (RecursionError on deep nesting)."""
    out = work / "cache-sweep"
    args = ["sweep", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tp", "--degree", "2", "--seq", "1k",
            "--jobs", "1", "--out", str(out)]
    assert run_cli(args).exit_code == 0
    for path in (out / "cache").glob("*.json"):
        path.write_bytes(junk)
    result = run_cli(args)
    assert result.exit_code == 0 and "1 computed" in result.stderr, result.stderr

"""``tspsim run``, ``generate`` and ``replay`` end to end through the click CLI.

Small sequences (4k/8k) and a tiny YAML model keep the file fast.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from stable_keys import EXTRA_KEYS, STABLE_KEYS

from tspsim.analysis.metrics import overlap_stats
from tspsim.cli import cli
from tspsim.opgraph import MEMORY_CATEGORIES, GraphBuilder
from tspsim.outputs.results_file import load_results
from tspsim.schedules import SCHEDULES

TINY = """\
name: tiny
hidden: 512
layers: 2
q_heads: 8
kv_heads: 8
head_dim: 64
ffn_hidden: 2048
gated_mlp: true
vocab: 1000
"""


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def ok_json(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["results"]          # stdout is exactly one JSON object


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("models") / "tiny.yaml"
    path.write_text(TINY)
    return str(path)


CASES = [
    ("tp", []),
    ("sp", []),
    ("tp+sp", ["--tp", "4", "--sp", "2"]),
    ("satp-seq", []),
    ("satp-batch", ["--batch", "8"]),
]


@pytest.mark.parametrize(("schedule", "extra"), CASES, ids=[c[0] for c in CASES])
def test_run_json_keys_and_save(schedule, extra, tmp_path):
    out = tmp_path / "r.json"
    res = invoke("run", "-t", "mi300x-1node", "--schedule", schedule, "--seq", "8k", *extra, "--json",
                 "--save", str(out))
    (entry,) = ok_json(res)
    assert set(entry) == STABLE_KEYS | EXTRA_KEYS
    assert set(entry["memory_breakdown_gb"]) == set(MEMORY_CATEGORIES)
    assert entry["schedule"] == schedule and entry["seq_len"] == 8192 and entry["topology"] == "mi300x-1node"
    assert "simulating" in res.stderr
    (saved,) = load_results(out)
    assert saved.entry["step_time_s"] == entry["step_time_s"]
    tl = saved.timeline
    max_compute = max(overlap_stats(tl, r)[0] for r in tl.graph.ranks)
    assert entry["step_time_s"] >= max_compute > 0
    assert 0.0 <= entry["overlap_pct"] <= 100.0
    assert 0.0 < entry["mfu"] < 1.0
    if schedule.startswith("satp"):
        assert entry["comm_bytes_per_rank"]["all_gather_input"] > 0


def test_generate_then_replay_matches_run(tmp_path):
    trace = tmp_path / "tp.json"
    run = ok_json(invoke("run", "-t", "mi300x-1node", "--schedule", "tp", "--seq", "8k", "--json"))[0]
    gen = invoke("generate", "-t", "mi300x-1node", "--schedule", "tp", "--seq", "8k", "-o", str(trace))
    assert gen.exit_code == 0, gen.output
    rep = ok_json(invoke("replay", str(trace), "--topology", "mi300x-1node", "--json"))[0]
    assert rep["step_time_s"] == run["step_time_s"]
    rep.pop("sim_wall_s")
    run.pop("sim_wall_s")
    assert rep == run


def test_generate_default_path(tmp_path, monkeypatch, tiny):
    monkeypatch.chdir(tmp_path)
    res = invoke("generate", "-t", "mi300x-1node", "--model", tiny, "--schedule", "sp", "--seq", "4k")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "traces" / "sp-tiny-4k.json").exists()


def test_replay_graph_without_metadata(tmp_path):
    b = GraphBuilder((0, 1))
    for r in (0, 1):
        b.compute(r, "gemm", "g", flops=1e12)
    b.collective("all_reduce", (0, 1), 2**20, "ar")
    path = tmp_path / "bare.json"
    b.graph.save(path)
    (entry,) = ok_json(invoke("replay", str(path), "-t", "mi300x-1node", "--json"))
    assert set(entry) == STABLE_KEYS | EXTRA_KEYS
    assert entry["model"] is None and entry["tokens_per_s"] is None and entry["step_time_s"] > 0
    text = invoke("replay", str(path), "-t", "mi300x-1node")
    assert text.exit_code == 0 and "n/a" in text.stdout


def test_default_comparison_table(tiny):
    res = invoke("run", "-t", "mi300x-1node", "--model", tiny, "--seq", "4k")
    assert res.exit_code == 0, res.output
    assert "tp D=8" in res.stdout and "tp+sp T=4×SP=2" in res.stdout
    assert res.stdout.count("verdict:") == 1 and "assumptions" in res.stdout
    if "tsp" in SCHEDULES:
        assert "tsp D=8" in res.stdout
    else:
        assert "skipping tsp" in res.stderr


def test_default_comparison_skips_what_does_not_fit(tiny):
    res = invoke("run", "-t", "mi300x-1node", "--model", tiny, "--seq", "4k", "--degree", "3", "--json")
    entries = ok_json(res)
    assert entries[0]["schedule"] == "tp+sp"
    # then the playbook columns (issue 14): the best FSDP (ZeRO-3) and the best PTD-P (pipeline) layout
    assert len(entries) == 3
    assert entries[1]["assumptions"]["zero"] == 3 and "PP" in entries[2]["degrees"]
    assert "note: skipping tp:" in res.stderr


def test_schedule_all_forward(tiny):
    res = invoke("run", "-t", "mi300x-1node", "--model", tiny, "--seq", "4k", "--schedule", "all",
                 "--mode", "forward", "--json")
    entries = ok_json(res)
    names = [e["schedule"] for e in entries]
    assert "satp-batch" not in names and "note: skipping satp-batch" in res.stderr   # batch 1 < D
    assert set(names) == set(SCHEDULES.names()) - {"satp-batch"}
    assert all(e["mode"] == "forward" for e in entries)


def test_recompute_and_option(tiny):
    e = ok_json(invoke("run", "-t", "mi300x-1node", "--model", tiny, "--seq", "4k", "--schedule", "tp",
                       "--recompute", "none", "--option", "zero1=true", "--json"))[0]
    assert e["assumptions"]["recompute"] == "none" and e["assumptions"]["zero"] == 1   # zero1 is an alias


def test_default_seq_is_128k_zyphra_training():
    from tspsim.commands.run import PlanArgs, default_seq

    args = PlanArgs("mi300x-1node", "zyphra-7b", None, None, None, None, 1, "train", None, (), None, False)
    assert default_seq(args) == 131072


@pytest.mark.parametrize("args", [
    ["--schedule", "nope"],
    ["--schedule", "tp", "--degree", "3"],
    ["--schedule", "tp", "--seq", "12q"],
    ["--schedule", "tp", "--option", "bogus=1"],
    ["--schedule", "tp", "--option", "novalue"],
    ["--schedule", "tp", "--mode", "prefill", "--context", "4k"],
    ["--schedule", "satp-batch", "--seq", "4k"],
    ["--schedule", "tp+sp", "--degree", "8"],
], ids=["unknown-schedule", "degree-3", "bad-seq", "unknown-option", "option-no-equals", "context-not-decode",
        "satp-batch-batch-1", "tp+sp-degree"])
def test_bad_input_is_one_line_exit_2(args):
    res = invoke("run", "-t", "mi300x-1node", *args)
    assert res.exit_code == 2, res.output
    error_lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, res.output
    assert res.output.strip().splitlines() == error_lines      # nothing else printed (no traceback)
    assert res.stdout == ""


def test_html_and_trace_outputs(tmp_path, tiny):
    html, trace = tmp_path / "t.html", tmp_path / "t.json"
    res = invoke("run", "-t", "mi300x-1node", "--model", tiny, "--seq", "4k", "--schedule", "tp,sp",
                 "--html", str(html), "--trace", str(trace))
    assert res.exit_code == 0, res.output
    assert html.stat().st_size > 0 and json.loads(trace.read_text())


def test_no_timing_output_is_byte_identical(tmp_path, tiny):
    """Reproducibility (issue 7): identical inputs give byte-identical JSON and result files."""
    outs = []
    for i in range(2):
        saved = tmp_path / f"r{i}.json"
        res = invoke("run", "-t", "mi300x-1node", "--model", tiny, "--seq", "4k", "--schedule", "tsp,tp",
                     "--json", "--no-timing", "--save", str(saved))
        assert res.exit_code == 0, res.output
        outs.append((res.stdout, saved.read_bytes()))
    assert outs[0] == outs[1]
    assert all(e["sim_wall_s"] is None for e in json.loads(outs[0][0])["results"])

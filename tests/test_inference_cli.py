"""Serving questions in every command (issue 6 follow-up): ``sweep``, ``plan``, ``generate`` + ``replay`` of
inference steps, and ``run --no-max-batch``.

Every test uses the tiny 32-head model (hidden 512, 2 layers) and short contexts so it runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_models import TINY_32_HEADS

from tspsim.analysis.serving import BREAKDOWN_KEYS
from tspsim.cli import cli
from tspsim.explore.cache import PointCache, point_key, point_record
from tspsim.explore.grid import Grid, expand_grid
from tspsim.explore.planner import OBJECTIVES, best_reason, limiter, objective_for, rank_results
from tspsim.explore.plots import SERVING_FIGURES, metric_figure, sweep_figures
from tspsim.explore.sweep import Outcome, prepare
from tspsim.explore.sweep_files import CSV_COLUMNS, INFERENCE_CSV_COLUMNS, result_entry
from tspsim.simulate import Point, simulate

SERVING_KEYS = {"ttft_s", "tpot_s", "decode_tokens_per_s", "decode_tokens_per_s_per_gpu", "max_batch",
                "decode_time_breakdown_s", "decode_tokens", "context_tokens", "decode_step_first_s",
                "decode_step_last_s", "decode_sim", "decode_check_rel_err"}
"""Keys ``run`` adds to an inference entry (tspsim.simulate.inference); sweeps and plans must carry all of them."""


@pytest.fixture
def tiny(tmp_path: Path) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_32_HEADS)
    return str(path)


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_line_error(res, *fragments: str) -> None:
    """Exit code 2, exactly one ``error:`` line on stderr containing every fragment, nothing on stdout."""
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output and res.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ================================================================================== sweep
def test_sweep_inference_modes_json_csv_and_plots(tiny: str, tmp_path: Path) -> None:
    out = tmp_path / "sw"
    res = invoke("sweep", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tp,tsp", "--degree", "4",
                 "--mode", "prefill,decode,generate", "--seq", "1k,2k", "--context", "4k", "--tokens", "2",
                 "--jobs", "1", "--out", str(out))
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())["results"]
    # grid order: mode, schedule, (degree, batch, tokens,) seq innermost; decode takes --context, not --seq
    assert [(e["mode"], e["schedule"], e["seq_len"]) for e in results] == [
        ("prefill", "tp", 1024), ("prefill", "tp", 2048), ("prefill", "tsp", 1024), ("prefill", "tsp", 2048),
        ("decode", "tp", 4096), ("decode", "tsp", 4096),
        ("generate", "tp", 1024), ("generate", "tp", 2048), ("generate", "tsp", 1024), ("generate", "tsp", 2048)]
    for e in results:
        assert e["status"] == "ok" and SERVING_KEYS <= set(e), e["mode"]
        assert e["max_batch"] is None                      # sweeps skip the search unless --max-batch
        assert e["sim_wall_s"] is None
        assert e["decode_tokens"] == (0 if e["mode"] == "prefill" else 2)
        if e["mode"] == "prefill":
            assert e["ttft_s"] == e["step_time_s"] > 0 and e["tpot_s"] is None
        else:
            assert e["tpot_s"] > 0 and set(e["decode_time_breakdown_s"]) == set(BREAKDOWN_KEYS)
            assert e["decode_tokens_per_s"] == pytest.approx(e["batch"] * e["replicas"] / e["tpot_s"])
    # a sweep point is exactly a run of that point without the max-batch search
    direct = simulate(Point("tsp", "mi300x-1node", tiny, "decode", 4096, 1, 4, decode_tokens=2,
                            search_max_batch=False)).entry
    swept = results[5]
    for key in ("step_time_s", "tpot_s", "ttft_s", "peak_memory_gb", "decode_time_breakdown_s", "max_batch"):
        assert swept[key] == direct[key], key
    # CSV: the serving columns and the flattened decode breakdown
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:len(CSV_COLUMNS) + len(INFERENCE_CSV_COLUMNS)] == list(CSV_COLUMNS) + list(INFERENCE_CSV_COLUMNS)
    assert {f"decode_time_breakdown_s.{k}" for k in BREAKDOWN_KEYS} <= set(header)
    rows = (out / "results.csv").read_text().splitlines()[1:]
    assert len(rows) == len(results)
    tpot = header.index("tpot_s")
    assert rows[0].split(",")[tpot] == "" and float(rows[4].split(",")[tpot]) == results[4]["tpot_s"]
    # the page plots the serving metrics it has (no max batch: it was not searched)
    page = (out / "sweep.html").read_text()
    for div in ("throughput", "memory", "ttft", "tpot", "decode-throughput"):
        assert f'id="{div}"' in page, div
    assert 'id="max-batch"' not in page
    assert "sweep done: 10 points, 10 computed, 0 cached;" in res.stderr.splitlines()[-1]


def test_sweep_max_batch_flag_and_cache_keys(tiny: str, tmp_path: Path) -> None:
    out = str(tmp_path / "sw")
    base = ["sweep", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tp", "--degree", "8", "--mode", "decode",
            "--context", "1k", "--jobs", "1", "--out", out]
    first = invoke(*base, "--tokens", "2")
    assert first.exit_code == 0, first.output
    assert "1 computed, 0 cached" in first.stderr
    assert json.loads((tmp_path / "sw" / "results.json").read_text())["results"][0]["max_batch"] is None
    # the search changes the entry, so it is part of the key: recomputed, then cached
    searched = invoke(*base, "--tokens", "2", "--max-batch")
    assert "1 computed, 0 cached" in searched.stderr, searched.stderr
    entry = json.loads((tmp_path / "sw" / "results.json").read_text())["results"][0]
    assert isinstance(entry["max_batch"], int) and entry["max_batch"] >= 1
    again = invoke(*base, "--tokens", "2", "--max-batch")
    assert "0 computed, 1 cached" in again.stderr, again.stderr
    # tokens and context are part of the key too
    assert "1 computed, 0 cached" in invoke(*base, "--tokens", "3").stderr
    assert "0 computed, 1 cached" in invoke(*base, "--tokens", "2").stderr
    other = [a if a != "1k" else "2k" for a in base]
    assert "1 computed, 0 cached" in invoke(*other, "--tokens", "2").stderr
    # 'page' shows the max-batch plot only when some point searched it
    figs = dict(sweep_figures([entry]))
    assert "max-batch" in figs and list(figs["max-batch"].data[0].y) == [entry["max_batch"]]


def test_point_keys_cover_inference_fields_and_keep_training_keys() -> None:
    decode = Point("tp", "mi300x-1node", "zyphra-7b", "decode", 4096, 1, 8, decode_tokens=16)
    keys = {point_key(decode),
            point_key(Point("tp", "mi300x-1node", "zyphra-7b", "decode", 4096, 1, 8, decode_tokens=17)),
            point_key(Point("tp", "mi300x-1node", "zyphra-7b", "decode", 8192, 1, 8, decode_tokens=16)),
            point_key(Point("tp", "mi300x-1node", "zyphra-7b", "decode", 4096, 1, 8, decode_tokens=16,
                            search_max_batch=False)),
            point_key(Point("tp", "mi300x-1node", "zyphra-7b", "prefill", 4096, 1, 8))}
    assert len(keys) == 5
    assert point_record(decode)["search_max_batch"] is True
    # training points: the flag changes nothing, and the record (so the key) is that of older tspsim versions
    train = Point("tp", "mi300x-1node", "zyphra-7b", "train", 4096, 1, 8)
    assert set(point_record(train)) == {"schedule", "topology", "model", "mode", "seq_len", "batch", "degree", "tp",
                                        "sp", "gpus", "decode_tokens", "options"}
    assert point_key(train) == point_key(Point("tp", "mi300x-1node", "zyphra-7b", "train", 4096, 1, 8,
                                               search_max_batch=False))


def test_training_sweep_csv_has_no_serving_columns(tiny: str, tmp_path: Path) -> None:
    res = invoke("sweep", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tp", "--seq", "1k", "--jobs", "1",
                 "--out", str(tmp_path / "o"))
    assert res.exit_code == 0, res.output
    header = (tmp_path / "o" / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:len(CSV_COLUMNS)] == list(CSV_COLUMNS)
    assert not set(INFERENCE_CSV_COLUMNS) & set(header)
    assert not any(h.startswith("decode_time_breakdown_s") for h in header)
    assert 'id="ttft"' not in (tmp_path / "o" / "sweep.html").read_text()


def test_grid_expansion_of_inference_axes() -> None:
    grid = Grid(("mi300x-1node",), schedules=("tp",), seqs=(1024, 2048), modes=("train", "prefill", "decode",
                "generate"), contexts=(4096,), tokens=(2, 5), batches=(1, 2), max_batch=True)
    pts = expand_grid(grid)
    by_mode: dict[str, list[Point]] = {}
    for p in pts:
        by_mode.setdefault(p.mode, []).append(p)
    assert [(p.batch, p.seq_len) for p in by_mode["train"]] == [(1, 1024), (1, 2048), (2, 1024), (2, 2048)]
    assert all(p.decode_tokens == 0 and not p.search_max_batch for p in by_mode["train"])
    assert all(p.decode_tokens == 0 and p.search_max_batch for p in by_mode["prefill"])
    assert [(p.batch, p.decode_tokens, p.seq_len) for p in by_mode["decode"]] == [
        (1, 2, 4096), (1, 5, 4096), (2, 2, 4096), (2, 5, 4096)]
    assert [(p.decode_tokens, p.seq_len) for p in by_mode["generate"][:4]] == [(2, 1024), (2, 2048), (5, 1024),
                                                                              (5, 2048)]
    # without --context decode points use --seq; without --tokens they generate 128
    plain = expand_grid(Grid(("mi300x-1node",), schedules=("tp",), seqs=(1024,), modes=("decode",)))
    assert [(p.seq_len, p.decode_tokens, p.search_max_batch) for p in plain] == [(1024, 128, False)]


def test_sweep_invalid_inference_point_is_labelled_and_skipped(tiny: str, tmp_path: Path) -> None:
    out = tmp_path / "o"
    res = invoke("sweep", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tp,satp-seq", "--degree", "2",
                 "--mode", "decode", "--context", "1k", "--tokens", "2", "--jobs", "1", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "invalid: satp-seq D=2 · decode · context 1k · batch 1 · 2 tokens on mi300x-1node: satp-seq decode" in \
        res.stderr
    results = json.loads((out / "results.json").read_text())["results"]
    assert [e["status"] for e in results] == ["ok", "invalid"]
    assert results[1]["decode_tokens"] == 2 and results[1]["mode"] == "decode"
    state = prepare([Point("satp-seq", "mi300x-1node", tiny, "decode", 1024, 1, 2, decode_tokens=2)], PointCache(None))
    assert result_entry(state.outcomes[0])["decode_tokens"] == 2


@pytest.mark.parametrize("extra,fragments", [
    (["--mode", "train", "--context", "4k"], ["--context", "add --mode decode"]),
    (["--mode", "prefill,train", "--tokens", "8"], ["--tokens", "add --mode decode or --mode generate"]),
    (["--mode", "train,forward", "--max-batch"], ["--max-batch", "add --mode prefill, decode or generate"]),
    (["--mode", "decode", "--context", "4k,4k"], ["--context lists 4096 twice"]),
    (["--mode", "decode", "--tokens", "0"], ["--tokens"]),
    (["--mode", "decode,serve"], ["unknown mode 'serve'"]),
], ids=["context-no-decode", "tokens-no-decode", "max-batch-no-inference", "context-twice", "tokens-zero",
        "unknown-mode"])
def test_sweep_inference_errors(tiny: str, tmp_path: Path, extra: list[str], fragments: list[str]) -> None:
    res = invoke("sweep", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tp", "--seq", "1k",
                 "--out", str(tmp_path / "o"), *extra)
    one_line_error(res, *fragments)
    assert not (tmp_path / "o").exists()


def test_metric_figure_skips_entries_without_the_metric() -> None:
    def e(mode: str, seq: int, ttft: float | None, tpot: float | None) -> dict:
        return {"status": "ok", "schedule": "tp", "degrees": {"D": 8, "DP": 1}, "seq_len": seq, "batch": 1,
                "topology": "t", "model": "m", "mode": mode, "step_time_s": 1.0, "tokens_per_s": 1.0,
                "peak_memory_gb": 300.0 if seq == 4096 else 10.0, "hbm_gb": 192.0, "ttft_s": ttft, "tpot_s": tpot,
                "decode_tokens": 0 if mode == "prefill" else 8}
    entries = [e("prefill", 1024, 0.5, None), e("prefill", 4096, 0.9, None), e("decode", 2048, 0.01, 0.01)]
    ttft = metric_figure(entries, "ttft_s", "t", "TTFT (ms)", 1e3)
    lines = [t for t in ttft.data if not t.name.startswith("OOM")]
    assert [t.name for t in lines] == ["tp D=8 · prefill", "tp D=8 · decode · 8 tokens"]
    assert list(lines[0].y) == [500.0, 900.0]
    assert [list(t.x) for t in ttft.data if t.name.startswith("OOM")] == [[4096]]
    tpot = metric_figure(entries, "tpot_s", "t", "TPOT (ms)", 1e3)
    assert [list(t.x) for t in tpot.data] == [[2048]] and list(tpot.data[0].y) == [10.0]
    assert [fig_id for fig_id, *_ in SERVING_FIGURES] == ["ttft", "tpot", "decode-throughput", "max-batch"]
    assert tpot.layout.xaxis.title.text == "context (tokens cached when decoding starts)"


# ================================================================================== plan
def _plan(tiny: str, *extra: str):
    return invoke("plan", "-t", "mi300x-1node", "--model", tiny, "--gpus", "2", "--batch-max", "2", "--jobs", "1",
                  *extra)


@pytest.mark.parametrize("mode,extra,key,maximize", [
    ("prefill", [], "ttft_s", False),
    ("prefill", ["--objective", "tokens_per_s"], "tokens_per_s", True),
    ("decode", [], "decode_tokens_per_s", True),
    ("decode", ["--objective", "tpot_s"], "tpot_s", False),
    ("generate", [], "tokens_per_s", True),
    ("generate", ["--objective", "decode_tokens_per_s"], "decode_tokens_per_s", True),
])
def test_plan_inference_json_ranks_by_objective(tiny: str, mode: str, extra: list[str], key: str,
                                                maximize: bool) -> None:
    tokens = [] if mode == "prefill" else ["--tokens", "2"]
    seq = ["--context", "2k"] if mode == "decode" else ["--seq", "2k"]
    res = _plan(tiny, "--mode", mode, *seq, *tokens, *extra, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["objective"] == {"key": key, "goal": "maximize" if maximize else "minimize",
                                 "description": OBJECTIVES[key].description}
    assert data["query"]["objective"] == key and data["query"]["mode"] == mode and data["query"]["seq_len"] == 2048
    ranked = data["results"]
    assert len(ranked) >= 3 and [e["rank"] for e in ranked] == list(range(1, len(ranked) + 1))
    values = [e[key] for e in ranked]
    assert values == sorted(values, reverse=maximize)
    assert data["best"]["rank"] == 1 and data["best"][key] == values[0]
    for e in ranked:
        assert e["mode"] == mode and SERVING_KEYS <= set(e) and e["max_batch"] is None
        assert e["decode_tokens"] == (0 if mode == "prefill" else 2)
    if mode != "prefill":
        assert data["query"]["decode_tokens"] == 2
    assert f"objective: {key} ({'maximize' if maximize else 'minimize'})" in res.stderr
    # the best configuration is what simulate() gives for that point
    best = data["best"]
    deg = best["degrees"]
    direct = simulate(Point(best["schedule"], "mi300x-1node", tiny, mode, 2048, best["batch"], deg["D"], gpus=2,
                            decode_tokens=best["decode_tokens"], search_max_batch=False)).entry
    assert direct[key] == best[key] and direct["peak_memory_gb"] == best["peak_memory_gb"]


def test_plan_decode_text_names_the_objective(tiny: str) -> None:
    res = _plan(tiny, "--mode", "decode", "--context", "2k", "--tokens", "2")
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("# plan: tiny on mi300x-1node, decode, context 2k, 2 new tokens, 2 GPUs")
    assert lines[1].startswith("objective: highest decode tokens/s")
    assert "*decode tok/s" in lines[2] and "TPOT (ms)" in lines[2] and "TTFT" not in lines[2]
    assert lines[-2].startswith("best: ") and "decode tokens/s" in lines[-2] and "TPOT" in lines[-2]
    assert lines[-1].startswith("why: limited by ")
    pre = _plan(tiny, "--mode", "prefill", "--seq", "2k")
    assert pre.exit_code == 0, pre.output
    lines = pre.stdout.strip().splitlines()
    assert lines[1].startswith("objective: lowest TTFT") and "*TTFT (ms)" in lines[2] and "TPOT" not in lines[2]
    assert "best: " in lines[-2] and "TTFT " in lines[-2]


def test_plan_training_output_unchanged_by_objectives(tiny: str) -> None:
    res = _plan(tiny, "--seq", "2k", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["objective"]["key"] == "tokens_per_s" and data["query"]["objective"] == "tokens_per_s"
    assert "decode_tokens" not in data["query"]
    text = _plan(tiny, "--seq", "2k").stdout
    assert "objective:" not in text and "tokens/s" in text.splitlines()[1]


@pytest.mark.parametrize("args,fragments", [
    (["--mode", "prefill", "--objective", "tpot_s"], ["--objective tpot_s", "--mode prefill has no decode steps",
                                                      "ttft_s, tokens_per_s"]),
    (["--mode", "train", "--objective", "ttft_s"], ["--objective ttft_s", "--mode train"]),
    (["--mode", "decode", "--objective", "ttft_s"], ["--objective ttft_s", "--mode decode"]),
    (["--mode", "prefill", "--tokens", "4"], ["--tokens"]),
    (["--mode", "generate", "--context", "4k"], ["--context", "use --seq"]),
    (["--mode", "decode", "--objective", "latency"], ["--objective", "latency"]),
])
def test_plan_inference_errors(tiny: str, args: list[str], fragments: list[str]) -> None:
    one_line_error(_plan(tiny, "--seq", "2k", *args), *fragments)


def _decode_entry(tpot: float = 1e-3, peak: float = 50.0, **parts: float) -> dict:
    bd = dict.fromkeys(BREAKDOWN_KEYS, 0.0)
    bd.update(parts)
    return {"schedule": "tp", "degrees": {"D": 8, "DP": 1}, "batch": 4, "mode": "decode", "tpot_s": tpot,
            "step_time_s": tpot, "ttft_s": tpot, "exposed_comm_s": 0.0, "decode_time_breakdown_s": bd,
            "peak_memory_gb": peak, "hbm_gb": 192.0, "oom": peak > 192.0, "decode_tokens_per_s": 4 / tpot,
            "tokens_per_s": 4 / tpot}


def test_decode_limiter_kinds() -> None:
    assert limiter(_decode_entry(communication=3e-4, weights_hbm=7e-4))[0] == "exposed communication"
    assert limiter(_decode_entry(peak=180.0, weights_hbm=7e-4))[0] == "memory"
    kind, text = limiter(_decode_entry(weights_hbm=4e-4, kv_hbm=2e-4, compute=4e-4))
    assert kind == "HBM bandwidth" and "weights (40%)" in text and "KV cache (20%)" in text and "60%" in text
    assert limiter(_decode_entry(other=6e-4, compute=4e-4))[0] == "overheads"
    assert limiter(_decode_entry(compute=7e-4, other=3e-4))[0] == "compute"
    # ranked by TTFT, a generate entry is judged on its prefill step
    gen = dict(_decode_entry(weights_hbm=1e-3), mode="generate", ttft_s=0.5, step_time_s=0.6, exposed_comm_s=0.2)
    assert limiter(gen, OBJECTIVES["ttft_s"])[0] == "exposed communication"
    assert limiter(gen)[0] == "HBM bandwidth"


def test_rank_and_reason_with_a_latency_objective() -> None:
    p = Point("tp", "mi300x-1node")
    quick, slow, oom = _decode_entry(1e-3, compute=1e-3), _decode_entry(2e-3, compute=2e-3), _decode_entry(
        5e-4, peak=400.0, compute=5e-4)
    oom["schedule"] = "sp"
    res = rank_results([Outcome(0, p, "a", "ok", entry=slow), Outcome(1, p, "b", "ok", entry=quick),
                        Outcome(2, p, "c", "ok", entry=oom)], OBJECTIVES["tpot_s"])
    assert [e["tpot_s"] for e in res.ranked] == [1e-3, 2e-3] and res.objective.key == "tpot_s"
    assert res.reason.startswith("limited by memory: the quicker sp D=8 at batch 4 (TPOT −50%) needs 400.0 GB")
    text = best_reason(quick, [oom], OBJECTIVES["decode_tokens_per_s"])
    assert "faster sp D=8" in text and "+100% decode tokens/s" in text
    assert objective_for("decode").key == "decode_tokens_per_s" and objective_for("generate").key == "tokens_per_s"
    assert objective_for("prefill").key == "ttft_s" and objective_for("train").key == "tokens_per_s"


# ================================================================================== generate + replay
def test_generate_and_replay_decode_step_matches_run(tiny: str, tmp_path: Path) -> None:
    trace = tmp_path / "dec.json"
    gen = invoke("generate", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tp", "--degree", "4", "--mode",
                 "decode", "--context", "2k", "--tokens", "3", "--batch", "2", "-o", str(trace))
    assert gen.exit_code == 0, gen.output
    assert "decode step generating token 3: 2,050 tokens cached, attends over 2,051" in gen.stdout
    meta = json.loads(trace.read_text())["meta"]
    assert meta["mode"] == "decode" and meta["seq_len"] == 2048 and meta["decode_tokens"] == 3
    assert meta["inference"]["step"] == "decode"
    assert {k: meta["inference"][k] for k in ("cached", "context_tokens", "token_index", "cached_tokens")} == {
        "cached": 2050, "context_tokens": 2048, "token_index": 3, "cached_tokens": 2050}
    rep = invoke("replay", str(trace), "-t", "mi300x-1node", "--json")
    assert rep.exit_code == 0, rep.output
    (e,) = json.loads(rep.stdout)["results"]
    run = invoke("run", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tp", "--degree", "4", "--mode",
                 "decode", "--context", "2k", "--tokens", "3", "--batch", "2", "--no-max-batch", "--json")
    assert run.exit_code == 0, run.output
    (r,) = json.loads(run.stdout)["results"]
    # the replayed graph is run's final decode step (its per-step keys come from the same graph)
    assert e["tpot_s"] == e["step_time_s"] == pytest.approx(r["decode_step_last_s"], rel=1e-9)
    for key in ("peak_memory_gb", "memory_breakdown_gb", "comm_bytes_per_rank", "mode", "seq_len", "batch",
                "degrees", "replicas", "context_tokens", "decode_tokens"):
        assert e[key] == r[key], key
    assert e["decode_tokens_per_s"] == e["tokens_per_s"] == pytest.approx(2 * e["replicas"] / e["tpot_s"])
    assert e["decode_tokens_per_s_per_gpu"] == pytest.approx(e["decode_tokens_per_s"] / e["world_size"])
    assert sum(e["decode_time_breakdown_s"].values()) == pytest.approx(e["tpot_s"], rel=1e-9)
    assert e["ttft_s"] is None and e["max_batch"] is None and 0 < e["mfu"] < 1
    assert e["inference_step"] == {"kind": "decode", "context_tokens": 2048, "cached_tokens": 2050, "token_index": 3}


def test_replay_of_decode_step_uses_its_decode_kernel_assumptions(tiny: str, tmp_path: Path) -> None:
    """The decode step replays on the decode topology built from the graph's recorded assumptions."""
    times = []
    for launch in ("1", "50"):
        trace = tmp_path / f"dec-{launch}.json"
        gen = invoke("generate", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tp", "--mode", "decode",
                     "--context", "1k", "--option", f"decode_launch_us={launch}", "-o", str(trace))
        assert gen.exit_code == 0, gen.output
        rep = invoke("replay", str(trace), "-t", "mi300x-1node", "--json")
        assert rep.exit_code == 0, rep.output
        times.append(json.loads(rep.stdout)["results"][0]["tpot_s"])
        direct = simulate(Point("tp", "mi300x-1node", tiny, "decode", 1024, decode_tokens=1,
                                options=(("decode_launch_us", launch),), search_max_batch=False)).entry
        assert times[-1] == pytest.approx(direct["tpot_s"], rel=1e-9)
    assert times[1] > times[0] * 1.5


def test_replay_decode_text_report(tiny: str, tmp_path: Path) -> None:
    trace = tmp_path / "dec.json"
    assert invoke("generate", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tsp", "--mode", "decode",
                  "--context", "1k", "-o", str(trace)).exit_code == 0
    rep = invoke("replay", str(trace), "-t", "mi300x-1node")
    assert rep.exit_code == 0, rep.output
    out = rep.stdout
    assert out.splitlines()[0] == ("# tiny on mi300x-1node: replay of one decode step: token 1 of each sequence, "
                                   "1024 tokens cached (context 1k), batch 1 per replica")
    assert "TPOT (ms)" in out and "TTFT (ms)" not in out and "KV cache from HBM (ms)" in out
    assert "not searched" in out and "max batch: not searched (a replay" in out
    assert "tokens/s per layer" not in out and "decode steps" not in out
    assert "tsp_decode=weights" in out


def test_generate_and_replay_prefill_step_matches_run(tiny: str, tmp_path: Path) -> None:
    trace = tmp_path / "pre.json.gz"
    gen = invoke("generate", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tsp", "--mode", "prefill",
                 "--seq", "2k", "--batch", "2", "-o", str(trace))
    assert gen.exit_code == 0, gen.output
    assert "prefill of 2 × 2,048 prompt tokens" in gen.stdout
    rep = invoke("replay", str(trace), "-t", "mi300x-1node", "--json")
    assert rep.exit_code == 0, rep.output
    (e,) = json.loads(rep.stdout)["results"]
    run = invoke("run", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tsp", "--mode", "prefill", "--seq", "2k",
                 "--batch", "2", "--no-max-batch", "--json")
    (r,) = json.loads(run.stdout)["results"]
    for key in ("ttft_s", "step_time_s", "tokens_per_s", "tokens_per_s_per_gpu", "mfu", "peak_memory_gb",
                "comm_bytes_per_rank", "overlap_pct", "max_batch", "tpot_s", "decode_tokens_per_s", "decode_tokens"):
        assert e[key] == r[key], key
    assert e["ttft_s"] > 0 and e["inference_step"] == {"kind": "prefill", "prompt_tokens": 2048}
    text = invoke("replay", str(trace), "-t", "mi300x-1node").stdout
    assert "replay of one prefill step: prompt 2k, batch 2 per replica" in text.splitlines()[0]
    assert "TTFT (ms)" in text and "TPOT" not in text and "decode tokens/s" not in text
    assert "tokens/s per layer" not in text


def test_generate_default_paths_name_the_step(tiny: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for args, name in ((["--mode", "decode", "--context", "2k"], "tp-tiny-decode-2k.json"),
                       (["--mode", "decode", "--context", "2k", "--tokens", "5"], "tp-tiny-decode-2k-t5.json"),
                       (["--mode", "prefill", "--seq", "1k"], "tp-tiny-prefill-1k.json"),
                       (["--seq", "1k"], "tp-tiny-1k.json")):
        res = invoke("generate", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tp", *args)
        assert res.exit_code == 0, res.output
        assert (tmp_path / "traces" / name).is_file(), name


@pytest.mark.parametrize("args,fragments", [
    (["--mode", "generate", "--seq", "1k"], ["--mode generate is a prefill followed by", "--mode prefill",
                                             "--mode decode"]),
    (["--mode", "prefill", "--seq", "1k", "--tokens", "2"], ["--tokens", "not --mode prefill"]),
    (["--mode", "prefill", "--context", "1k"], ["--context", "use --seq"]),
    (["--mode", "train", "--seq", "1k", "--tokens", "2"], ["--tokens"]),
    (["--mode", "decode", "--context", "1k", "--schedule", "satp-seq", "--degree", "2"],
     ["--batch must be a multiple of 2"]),
])
def test_generate_inference_errors(tiny: str, tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    base = ["generate", "-t", "mi300x-1node", "--model", tiny, "-o", str(tmp_path / "g.json")]
    if "--schedule" not in args:
        base += ["--schedule", "tp"]
    one_line_error(invoke(*base, *args), *fragments)
    assert not (tmp_path / "g.json").exists()


def test_generate_help_explains_the_decode_step() -> None:
    text = invoke("generate", "-h").stdout
    assert "generates token N" in " ".join(text.split()) and "--mode decode" in text
    assert "--mode generate is a prefill plus N" in " ".join(text.split())


# ================================================================================== run --no-max-batch
def test_run_no_max_batch(tiny: str) -> None:
    base = ["run", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tp", "--mode", "decode", "--context", "1k",
            "--tokens", "2", "--json"]
    with_search = json.loads(invoke(*base).stdout)["results"][0]
    skipped = json.loads(invoke(*base, "--no-max-batch").stdout)["results"][0]
    explicit = json.loads(invoke(*base, "--max-batch").stdout)["results"][0]
    assert isinstance(with_search["max_batch"], int) and with_search["max_batch"] > 1
    assert explicit["max_batch"] == with_search["max_batch"]
    assert skipped["max_batch"] is None
    assert skipped["sim_events"] < with_search["sim_events"]         # the search's probes were not simulated
    for key in ("tpot_s", "ttft_s", "peak_memory_gb", "decode_tokens_per_s", "decode_time_breakdown_s"):
        assert skipped[key] == with_search[key], key
    text = invoke(*base[:-1], "--no-max-batch").stdout
    row = next(line for line in text.splitlines() if line.startswith("max batch (fits HBM)"))
    assert row.split()[-2:] == ["not", "searched"]
    assert "max batch: not searched (--no-max-batch)" in text


@pytest.mark.parametrize("flag", ["--no-max-batch", "--max-batch"])
def test_run_max_batch_flags_need_an_inference_mode(tiny: str, flag: str) -> None:
    res = invoke("run", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tp", "--seq", "1k", flag)
    one_line_error(res, flag, "--mode train has no such search")

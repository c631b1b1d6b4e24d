"""``tspsim sweep``: grid expansion, invalid points, cache and resume, runners (serial, pool, Dask), plots.

Every CLI test uses a tiny model written to tmp_path (hidden 512, 2 layers) and short sequences.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_models import tiny_32_heads

from tspsim.cli import cli
from tspsim.explore.cache import PointCache, normalize_entry, point_key
from tspsim.explore.grid import Grid, expand_grid
from tspsim.explore.plots import memory_figure, speed_ratio_figures, speed_ratio_note, throughput_figure
from tspsim.explore.runners import run_point
from tspsim.explore.sweep import prepare
from tspsim.explore.sweep_files import result_entry, results_csv
from tspsim.simulate import Point


def write_model(path: Path, layers: int = 2) -> str:
    path.write_text(tiny_32_heads(layers, default_seq=4096))
    return str(path)


@pytest.fixture
def tiny(tmp_path: Path) -> str:
    """Path of a tiny model YAML (hidden 512, 2 layers, 32 heads)."""
    return write_model(tmp_path / "tiny.yaml")


def invoke(args: list[str]):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    return result


def grid_args(model: str, out: Path) -> list[str]:
    """15 valid points: tsp and tp with D ∈ {2, 8}, tp+sp 4×2, three sequence lengths."""
    return ["sweep", "-t", "mi300x-1node", "--model", model, "--schedule", "tsp,tp,tp+sp", "--degree", "2,8",
            "--tp", "4", "--sp", "2", "--seq", "1k,2k,4k", "--out", str(out)]


# ---------------------------------------------------------------------------------- grid
def test_expand_grid_order_and_defaults(tiny: str) -> None:
    grid = Grid(topologies=("mi300x-1node",), models=(tiny,), schedules=("tsp", "tp+sp"), degrees=(2, 8),
                seqs=(1024, 2048), batches=(1, 2))
    points = expand_grid(grid)
    # tsp: 2 degrees × 2 batches × 2 seqs; tp+sp: default T=4 (single node) × Σ=2 → 1 × 2 × 2
    assert len(points) == 8 + 4
    assert [(p.degree, p.batch, p.seq_len) for p in points[:4]] == [(2, 1, 1024), (2, 1, 2048), (2, 2, 1024),
                                                                   (2, 2, 2048)]
    tpsp = [p for p in points if p.schedule == "tp+sp"]
    assert {(p.tp, p.sp, p.degree) for p in tpsp} == {(4, 2, None)}
    # on two or more nodes the default T is the whole node
    two = expand_grid(Grid(topologies=("mi300x-128node",), schedules=("tp+sp",), seqs=(8192,)))
    assert [(p.tp, p.sp) for p in two] == [(8, 2)]


def test_point_key_is_stable_and_tracks_model_content(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m.yaml")
    p = Point("tsp", "mi300x-1node", model, seq_len=1024, degree=2)
    k1 = point_key(p)
    assert k1 == point_key(Point("tsp", "mi300x-1node", model, seq_len=1024, degree=2))
    assert k1 != point_key(Point("tsp", "mi300x-1node", model, seq_len=2048, degree=2))
    write_model(tmp_path / "m.yaml", layers=3)  # same path, different content → different key
    assert point_key(p) != k1


def test_run_point_normalizes_wall_clock(tiny: str) -> None:
    res = run_point(Point("tp", "mi300x-1node", tiny, seq_len=1024, degree=8))
    assert res["status"] == "ok"
    assert res["entry"]["sim_wall_s"] is None
    assert res["wall_s"] > 0
    assert normalize_entry({"sim_wall_s": 1.5, "x": (1, 2)}) == {"sim_wall_s": None, "x": [1, 2]}
    bad = run_point(Point("tp", "mi300x-1node", tiny, seq_len=1024, degree=3))
    assert bad["status"] == "invalid" and "does not divide" in bad["reason"]


def test_csv_has_no_wall_clock_column(tiny: str) -> None:
    entry = run_point(Point("tsp", "mi300x-1node", tiny, seq_len=1024, degree=2))["entry"]
    text = results_csv([{**entry, "status": "ok"}])
    header = text.splitlines()[0].split(",")
    assert "sim_wall_s" not in header
    assert {"tokens_per_s", "peak_memory_gb", "oom", "degrees.D", "label"} <= set(header)


# ---------------------------------------------------------------------------------- runners
def test_serial_pool_and_dask_give_identical_files(tiny: str, tmp_path: Path) -> None:
    """(a) --jobs 1, --jobs 2 and a real Dask LocalCluster write byte-identical results."""
    distributed = pytest.importorskip("distributed")
    serial = invoke(grid_args(tiny, tmp_path / "serial") + ["--jobs", "1"])
    assert serial.exit_code == 0, serial.output
    assert "15 to run in this process" in serial.stderr
    pool = invoke(grid_args(tiny, tmp_path / "pool") + ["--jobs", "2"])
    assert pool.exit_code == 0, pool.output
    assert "on 2 local processes" in pool.stderr
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        dask = invoke(grid_args(tiny, tmp_path / "dask") + ["--scheduler", cluster.scheduler_address])
    assert dask.exit_code == 0, dask.output
    assert "on the Dask cluster" in dask.stderr
    for name in ("results.json", "results.csv", "sweep.html"):
        ref = (tmp_path / "serial" / name).read_bytes()
        assert (tmp_path / "pool" / name).read_bytes() == ref, name
        assert (tmp_path / "dask" / name).read_bytes() == ref, name
    results = json.loads((tmp_path / "serial" / "results.json").read_text())["results"]
    assert len(results) == 15
    assert all(r["status"] == "ok" and r["sim_wall_s"] is None for r in results)
    # grid order: schedule, degree, sequence
    assert [(r["schedule"], r["seq_len"]) for r in results[:4]] == [("tsp", 1024), ("tsp", 2048), ("tsp", 4096),
                                                                   ("tsp", 1024)]


def test_missing_distributed_is_one_line_error(tiny: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    res = invoke(["sweep", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tp", "--seq", "1k",
                  "--scheduler", "tcp://127.0.0.1:8786", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert res.stderr.strip().count("\n") == 0
    assert "pip install distributed" in res.stderr


def test_bad_scheduler_address_is_one_line_error(tiny: str, tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    res = invoke(["sweep", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tp", "--seq", "1k",
                  "--scheduler", "not-an-address", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        "error: --scheduler 'not-an-address': expected a scheduler address like tcp://HOST:PORT "
        "(e.g. tcp://127.0.0.1:8786)"]


# ---------------------------------------------------------------------------------- cache and resume
def test_resume_after_sigint_computes_only_missing_points(tmp_path: Path) -> None:
    """(b) SIGINT a --jobs 1 sweep of 10 points after a few are cached; the rerun computes the rest."""
    model = write_model(tmp_path / "slow.yaml", layers=4)  # ~0.3 s per TSP point
    seqs = ",".join(f"{k}k" for k in range(1, 11))
    args = ["sweep", "-t", "mi300x-1node", "--model", model, "--schedule", "tsp", "--degree", "8", "--seq", seqs]
    out = tmp_path / "interrupted"
    cache = out / "cache"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "tspsim.cli", *args, "--jobs", "1", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if cache.is_dir() and len(list(cache.glob("*.json"))) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "rerun the same command to resume" in err
    assert "Traceback" not in err
    done = sorted(cache.glob("*.json"))
    assert 3 <= len(done) < 10
    assert not list(cache.glob(".*")), "a temporary file was left behind"
    assert not (out / "results.json").exists()
    mtimes = {p.name: p.stat().st_mtime_ns for p in done}

    rerun = invoke(args + ["--jobs", "1", "--out", str(out)])
    assert rerun.exit_code == 0, rerun.output
    assert f"{len(done)} cached, {10 - len(done)} to run" in rerun.stderr
    assert {p.name: p.stat().st_mtime_ns for p in done} == mtimes, "cached points were recomputed"
    assert len(list(cache.glob("*.json"))) == 10

    full = invoke(args + ["--jobs", "2", "--out", str(tmp_path / "uninterrupted")])
    assert full.exit_code == 0, full.output
    assert (out / "results.json").read_bytes() == (tmp_path / "uninterrupted" / "results.json").read_bytes()
    assert (out / "results.csv").read_bytes() == (tmp_path / "uninterrupted" / "results.csv").read_bytes()


def test_corrupt_cache_files_are_recomputed(tiny: str, tmp_path: Path) -> None:
    """(b) A truncated (SIGKILL mid-write), garbled or tampered cache file is never trusted."""
    out = tmp_path / "o"
    args = ["sweep", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tsp,tp", "--degree", "2",
            "--seq", "1k,2k", "--jobs", "1", "--out", str(out)]
    first = invoke(args)
    assert first.exit_code == 0, first.output
    reference = (out / "results.json").read_bytes()
    files = sorted((out / "cache").glob("*.json"))
    assert len(files) == 4
    whole = files[0].read_bytes()
    files[0].write_bytes(whole[: len(whole) // 2])  # truncated mid-write
    files[1].write_bytes(b"\x00\x00{")  # garbage
    data = json.loads(files[2].read_text())
    data["entry"]["step_time_s"] = 1e9  # valid JSON, wrong content: checksum mismatch
    files[2].write_text(json.dumps(data))
    (out / "cache" / f".{files[3].name}.abc.tmp").write_bytes(b"{\"partial")  # leftover temp file: ignored

    second = invoke(args)
    assert second.exit_code == 0, second.output
    assert "1 cached, 3 to run" in second.stderr
    assert second.stderr.count("ignoring cache file") == 3
    assert (out / "results.json").read_bytes() == reference
    third = invoke(args)  # the recomputed files are whole again
    assert "4 cached, 0 to run" in third.stderr and "ignoring" not in third.stderr
    assert (out / "results.json").read_bytes() == reference


def test_fresh_ignores_the_cache(tiny: str, tmp_path: Path) -> None:
    args = ["sweep", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tp", "--degree", "8", "--seq", "1k",
            "--jobs", "1", "--out", str(tmp_path / "o")]
    assert invoke(args).exit_code == 0
    again = invoke(args)
    assert "1 cached, 0 to run" in again.stderr
    fresh = invoke(args + ["--fresh"])
    assert "0 cached, 1 to run" in fresh.stderr


# ---------------------------------------------------------------------------------- bad grids
@pytest.mark.parametrize("flag,value", [("--degree", ""), ("--seq", ","), ("--schedule", ""), ("--tp", " "),
                                        ("--batch", ""), ("--model", ",")])
def test_empty_list_is_one_line_error(tiny: str, tmp_path: Path, flag: str, value: str) -> None:
    """(d) An empty list is a clean one-line error with exit code 2."""
    args = ["sweep", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tsp,tp+sp", "--seq", "1k",
            "--out", str(tmp_path / "o")]
    i = args.index(flag) if flag in args else None
    if i is not None:
        args[i + 1] = value
    else:
        args += [flag, value]
    res = invoke(args)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "Traceback" not in res.output


def test_invalid_degree_is_reported_and_skipped(tiny: str, tmp_path: Path) -> None:
    """(d) --degree 3 for 32 heads: invalid points, the sweep goes on, the summary says why, exit 0."""
    out = tmp_path / "o"
    res = invoke(["sweep", "-t", "mi300x-1node", "--model", tiny, "--schedule", "tsp,tp", "--degree", "2,3",
                  "--seq", "1k,2k", "--jobs", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert res.stderr.count("invalid: ") == 4
    summary = res.stderr.strip().splitlines()[-1]
    assert "4 invalid points skipped" in summary and "does not divide the 32 query heads" in summary
    assert "4 computed" in summary
    results = json.loads((out / "results.json").read_text())["results"]
    assert [r["status"] for r in results] == ["ok", "ok", "invalid", "invalid"] * 2
    bad = results[2]
    assert bad["degrees"] == {"D": 3} and "does not divide" in bad["reason"]
    csv_rows = (out / "results.csv").read_text().splitlines()
    assert len(csv_rows) == 9 and csv_rows[3].startswith("invalid,")


@pytest.mark.parametrize("extra,message", [
    (["--schedule", "tsp", "--degree", "3"], "no valid point"),
    (["--schedule", "nope"], "unknown schedule"),
    (["--schedule", "tsp", "--tp", "4"], "--tp and --sp"),
    (["--schedule", "tp+sp", "--degree", "4"], "--tp T and --sp S"),
    (["--schedule", "tsp", "--mode", "bogus"], "unknown mode 'bogus'"),
    (["--schedule", "tsp", "--context", "4k"], "--context sets the cached tokens of decode points"),
    (["--schedule", "tsp", "--mode", "prefill", "--tokens", "4"], "--tokens sets the tokens generated"),
    (["--schedule", "tsp", "--max-batch"], "--max-batch searches the largest batch of inference points"),
    (["--schedule", "tsp", "--mode", "decode", "--tokens", "4,4"], "--tokens lists 4 twice"),
    (["--schedule", "tsp,tsp"], "twice"),
    (["--schedule", "tp", "--topology", "mi300x-1node,nowhere"], "unknown topology"),
])
def test_whole_grid_errors(tiny: str, tmp_path: Path, extra: list[str], message: str) -> None:
    args = ["sweep", "-t", "mi300x-1node", "--model", tiny, "--seq", "1k", "--out", str(tmp_path / "o")]
    res = invoke(args + extra)
    assert res.exit_code == 2, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr, res.stderr


# ---------------------------------------------------------------------------------- plots (pure)
def _entry(schedule: str, degrees: dict, seq: int, tps: float, peak: float, hbm: float = 192.0) -> dict:
    return {"status": "ok", "schedule": schedule, "degrees": degrees, "seq_len": seq, "batch": 1,
            "topology": "mi300x-1node", "model": "m", "mode": "train", "tokens_per_s": tps, "step_time_s": 1.0,
            "peak_memory_gb": peak, "hbm_gb": hbm, "oom": peak > hbm}


def test_plots_series_hbm_line_oom_and_ratio() -> None:
    entries = [
        _entry("tsp", {"D": 8, "DP": 1}, 16384, 200.0, 50.0), _entry("tsp", {"D": 8, "DP": 1}, 32768, 180.0, 70.0),
        _entry("tp+sp", {"T": 4, "SP": 2, "DP": 1}, 16384, 100.0, 90.0),
        _entry("tp+sp", {"T": 4, "SP": 2, "DP": 1}, 32768, 90.0, 250.0),
        {"status": "invalid", "reason": "x", "schedule": "tsp", "degrees": {"D": 3}, "seq_len": 16384},
    ]
    thr = throughput_figure(entries)
    names = [t.name for t in thr.data]
    assert names[:2] == ["tsp D=8", "tp+sp T=4×SP=2"]
    assert list(thr.data[0].x) == [16384, 32768] and list(thr.data[0].y) == [200.0, 180.0]
    assert "OOM (does not fit in HBM)" in names
    mem = memory_figure(entries)
    hbm = [t for t in mem.data if t.name.startswith("HBM capacity")]
    assert len(hbm) == 1 and list(hbm[0].y) == [192.0, 192.0]
    oom = [t for t in mem.data if t.name.startswith("OOM")]
    assert list(oom[0].x) == [32768] and list(oom[0].y) == [250.0]
    (heat,) = speed_ratio_figures(entries)
    assert list(heat.data[0].y) == ["D=8"] and list(heat.data[0].x) == ["16k", "32k"]
    assert [list(row) for row in heat.data[0].z] == [[2.0, 2.0]]
    assert "TP+SP OOM" in heat.data[0].text[0][1]
    assert speed_ratio_note(entries) is None


def test_speed_ratio_note_when_tp_sp_missing() -> None:
    entries = [_entry("tsp", {"D": 8, "DP": 1}, 16384, 200.0, 50.0)]
    assert speed_ratio_figures(entries) == []
    note = speed_ratio_note(entries)
    assert note is not None and "tp+sp" in note


def test_result_entry_of_invalid_point(tiny: str) -> None:
    state = prepare([Point("tsp", "mi300x-1node", tiny, seq_len=1024, degree=3)], PointCache(None))
    (out,) = state.outcomes
    e = result_entry(out)
    assert e["status"] == "invalid" and e["model"] == "tiny" and e["topology"] == "mi300x-1node"
    assert e["degrees"] == {"D": 3} and e["seq_len"] == 1024


def test_sigkill_at_random_points_never_corrupts_the_cache(tmp_path: Path) -> None:
    """Issue 7: SIGKILL a --jobs 1 sweep at (seeded) random instants, rerun after each kill; the cache is
    never corrupted and the final results equal an uninterrupted sweep's, byte for byte."""
    import random

    model = write_model(tmp_path / "slow.yaml", layers=4)
    seqs = ",".join(f"{k}k" for k in range(1, 9))
    args = ["sweep", "-t", "mi300x-1node", "--model", model, "--schedule", "tsp,tp", "--degree", "8",
            "--seq", seqs, "--jobs", "1"]
    reference = invoke(args + ["--out", str(tmp_path / "reference")])
    assert reference.exit_code == 0, reference.output
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    rng = random.Random(7)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "tspsim.cli", *args, "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        time.sleep(rng.uniform(0.3, 2.5))  # anywhere: start-up, mid-point, mid-write, output writing
        proc.kill()
        proc.wait(timeout=30)
        for path in (out / "cache").glob("*.json") if (out / "cache").is_dir() else ():
            json.loads(path.read_text())  # every visible cache file is complete JSON (atomic rename)
    rerun = invoke(args + ["--out", str(out)])
    assert rerun.exit_code == 0, rerun.output
    assert "Traceback" not in rerun.output
    assert (out / "results.json").read_bytes() == (tmp_path / "reference" / "results.json").read_bytes()
    assert (out / "results.csv").read_bytes() == (tmp_path / "reference" / "results.csv").read_bytes()

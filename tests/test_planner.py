"""``tspsim plan``: candidate configurations, ranking, the one-line reason, and agreement with simulate()."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_models import TINY_32_HEADS

from tspsim.cli import cli
from tspsim.explore.planner import batch_sizes, best_reason, candidate_points, limiter, rank_results
from tspsim.explore.sweep import Outcome
from tspsim.simulate import Point, simulate
from tspsim.spec.pipeline_spec import PipelineSpec

TINY = TINY_32_HEADS


@pytest.fixture
def tiny(tmp_path: Path) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return str(path)


def point_of(entry: dict, topology: str, model: str) -> Point:
    """The Point a ranked entry stands for (schedule, degrees, batch, sequence, SP algorithm, ZeRO stage, pipeline)."""
    deg = entry["degrees"]
    opts = [("sp_attention", entry["assumptions"]["sp_attention"])] if entry["schedule"] in ("sp", "tp+sp") else []
    if entry["schedule"] == "satp-seq":  # PTD-P candidates run Megatron SP (gather-input)
        opts.append(("satp_seq_attention", entry["assumptions"]["satp_seq_attention"]))
    if entry["assumptions"].get("zero"):
        opts.append(("zero", entry["assumptions"]["zero"]))
    pipe = PipelineSpec(stages=deg.get("PP", 1), virtual_stages=deg.get("V", 1),
                        global_batch=entry["global_batch"] if "PP" in deg or entry["micro_batches"] > 1 else None)
    kw = {"tp": deg["T"], "sp": deg["SP"]} if entry["schedule"] == "tp+sp" else {"degree": deg["D"]}
    return Point(entry["schedule"], topology, model, entry["mode"], entry["seq_len"], entry["batch"],
                 options=tuple(sorted(opts)), pipeline=pipe, **kw)


# ---------------------------------------------------------------------------------- candidates
def test_batch_sizes() -> None:
    assert batch_sizes(1) == [1]
    assert batch_sizes(8) == [1, 2, 4, 8]
    assert batch_sizes(6) == [1, 2, 4]


def test_candidates_single_node(tiny: str) -> None:
    pts = candidate_points("mi300x-1node", tiny, 4096, batch_max=2)
    shapes = {(p.schedule, p.degree, p.tp, p.sp) for p in pts}
    assert ("tp", 1, None, None) in shapes  # pure data parallelism, once
    assert ("tsp", 1, None, None) not in shapes
    assert {("tsp", d, None, None) for d in (2, 4, 8)} <= shapes
    tpsp = {(t, s) for name, _, t, s in shapes if name == "tp+sp"}
    assert tpsp == {(2, 4), (4, 2)}  # T·Σ fills the node, both ≥ 2
    assert {p.batch for p in pts} == {1, 2}
    assert all(p.seq_len == 4096 for p in pts)


def test_candidates_multi_node_fill_whole_nodes() -> None:
    pts = candidate_points("mi300x-128node", "zyphra-7b", 131072, batch_max=1)
    tpsp = [(p.tp, p.sp) for p in pts if p.schedule == "tp+sp"]
    assert tpsp and all((t * s) % 8 == 0 and 1024 % (t * s) == 0 and s >= 2 for t, s in tpsp)
    assert (8, 2) in tpsp and (2, 4) in tpsp and (8, 128) in tpsp


# ---------------------------------------------------------------------------------- explanations
def _e(tps: float, step: float = 10.0, exposed: float = 0.5, peak: float = 60.0, hbm: float = 192.0, **kw) -> dict:
    return {"schedule": "tsp", "degrees": {"D": 8, "DP": 1}, "batch": 1, "tokens_per_s": tps, "step_time_s": step,
            "exposed_comm_s": exposed, "peak_memory_gb": peak, "hbm_gb": hbm, "oom": peak > hbm, **kw}


def test_limiter_kinds() -> None:
    assert limiter(_e(1.0, exposed=3.0))[0] == "exposed communication"
    assert limiter(_e(1.0, peak=180.0))[0] == "memory"
    kind, text = limiter(_e(1.0))
    assert kind == "compute" and "5%" in text and "60.0 of 192 GB" in text
    assert limiter({"schedule": "tp"})[0] == "unknown"


def test_best_reason_names_a_faster_config_that_does_not_fit() -> None:
    best = _e(100.0)
    faster = _e(130.0, peak=250.0, schedule="sp")
    text = best_reason(best, [faster])
    assert text.startswith("limited by memory") and "sp D=8" in text and "+30%" in text and "250.0 GB" in text
    assert "\n" not in text
    assert best_reason(best, []).startswith("limited by compute")


def test_rank_results_drops_oom_and_invalid() -> None:
    p = Point("tsp", "mi300x-1node")
    outs = [Outcome(0, p, "a", "ok", entry=_e(100.0)), Outcome(1, p, "b", "ok", entry=_e(300.0, peak=300.0)),
            Outcome(2, p, "c", "invalid", reason="no"), Outcome(3, p, "d", "ok", entry=_e(200.0, peak=100.0))]
    res = rank_results(outs)
    assert [e["tokens_per_s"] for e in res.ranked] == [200.0, 100.0]
    assert [e["rank"] for e in res.ranked] == [1, 2]
    assert all(e["reason"] for e in res.ranked)
    assert len(res.oom) == 1 and len(res.invalid) == 1
    assert res.best is res.ranked[0]
    assert res.reason.startswith("limited by memory")


# ---------------------------------------------------------------------------------- CLI
def test_plan_text_output_tiny(tiny: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["plan", "-t", "mi300x-1node", "--model", tiny, "--seq", "2k", "--batch-max", "2",
                                   "--jobs", "1", "--cache", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("# plan: tiny on mi300x-1node")
    assert lines[-2].startswith("best: ") and lines[-1].startswith("why: limited by ")
    again = CliRunner().invoke(cli, ["plan", "-t", "mi300x-1node", "--model", tiny, "--seq", "2k", "--batch-max", "2",
                                     "--jobs", "1", "--cache", str(tmp_path / "c")])
    assert again.stdout == res.stdout and " 0 to simulate" in again.stderr


def test_plan_bad_input_is_one_line_error(tiny: str) -> None:
    res = CliRunner().invoke(cli, ["plan", "-t", "nowhere", "--model", tiny, "--seq", "2k"])
    assert res.exit_code == 2 and res.stderr.strip().startswith("error:")
    assert len(res.stderr.strip().splitlines()) == 1


def test_plan_nothing_fits_is_one_line_error(tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    huge.write_text(TINY.replace("hidden: 512", "hidden: 65536").replace("ffn_hidden: 2048", "ffn_hidden: 262144")
                    .replace("head_dim: 16", "head_dim: 2048"))
    res = CliRunner().invoke(cli, ["plan", "-t", "mi300x-1node", "--model", str(huge), "--seq", "1k",
                                   "--batch-max", "1", "--jobs", "2"])
    assert res.exit_code == 2, res.output
    assert "no configuration fits in HBM" in res.stderr


@pytest.mark.slow
def test_plan_zyphra_128k_matches_direct_simulation() -> None:
    """(c) mi300x-1node, zyphra-7b, 128k train: the best fits, every listed number equals simulate()."""
    res = CliRunner().invoke(cli, ["plan", "--topology", "mi300x-1node", "--model", "zyphra-7b", "--seq", "128k",
                                   "--mode", "train", "--batch-max", "1", "--jobs", "2", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    ranked, best = data["results"], data["best"]
    assert ranked and best["rank"] == 1
    assert best["oom"] is False and best["peak_memory_gb"] <= best["hbm_gb"]
    assert best["reason"].startswith("limited by ") and "\n" not in best["reason"]
    assert [e["rank"] for e in ranked] == list(range(1, len(ranked) + 1))
    assert all(a["tokens_per_s"] >= b["tokens_per_s"] for a, b in zip(ranked, ranked[1:]))
    assert all(not e["oom"] and e["reason"] for e in ranked)
    assert data["dropped"]["oom"] >= 1  # e.g. pure data parallelism needs far more than 192 GB at 128k
    for e in ranked:
        direct = simulate(point_of(e, "mi300x-1node", "zyphra-7b")).entry
        assert direct["step_time_s"] == e["step_time_s"], e["schedule"]
        assert direct["peak_memory_gb"] == e["peak_memory_gb"], e["schedule"]
        assert direct["tokens_per_s"] == e["tokens_per_s"], e["schedule"]


# ---------------------------------------------------------------------------------- ZeRO retries
def test_zero_cannot_fit_formula() -> None:
    """peak − Σ sharded categories · (1 − 1/world) > HBM, with the categories of each ZeRO stage."""
    from tspsim.explore.planner import zero_cannot_fit

    entry = {"peak_memory_gb": 200.0, "hbm_gb": 192.0, "world_size": 4,
             "memory_breakdown_gb": {"optimizer_state": 8.0, "gradients": 4.0, "parameters": 8.0}}
    assert zero_cannot_fit(entry, 1)        # 200 − 8·0.75 = 194 > 192
    assert not zero_cannot_fit(entry, 2)    # 200 − 12·0.75 = 191
    assert not zero_cannot_fit(entry, 3)    # 200 − 20·0.75 = 185
    assert not zero_cannot_fit({"peak_memory_gb": None, "hbm_gb": 192.0}, 1)


@pytest.mark.parametrize("schedule", ["tp", "tsp", "tp+sp"])
def test_zero_bound_is_below_the_simulated_peak(schedule: str, tiny: str) -> None:
    """The bound behind zero_cannot_fit never exceeds the peak ZeRO actually reaches (so a pruned retry is OOM)."""
    from tspsim.explore.planner import ZERO_SHARDED, zero_variants

    kw = {"tp": 4, "sp": 2} if schedule == "tp+sp" else {"degree": 4}
    base = Point(schedule, "mi300x-128node", model=tiny, mode="train", seq_len=4096, gpus=16, **kw)
    entry = simulate(base).entry
    for variant in zero_variants(base):
        zero = int(dict(variant.options)["zero"])
        saved = sum(entry["memory_breakdown_gb"][c] for c in ZERO_SHARDED[zero]) * (1 - 1 / entry["world_size"])
        assert simulate(variant).entry["peak_memory_gb"] >= entry["peak_memory_gb"] - saved - 1e-9, (schedule, zero)

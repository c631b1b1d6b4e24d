"""Text reports: the no-fit verdict's ZeRO-1 hint, the phase table, the labels (one name per degree)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tspsim.analysis.entries import degrees_label
from tspsim.analysis.report import comparison_table, phase_table, verdict, zero1_estimate_gb
from tspsim.cli import cli


def _oom(peak: float, opt: float, replicas: int, zero1: bool = False) -> dict:
    return {"schedule": "tsp", "degrees": {"D": 8, "DP": replicas}, "mode": "train", "peak_memory_gb": peak,
            "hbm_gb": 192.0, "oom": True, "replicas": replicas, "assumptions": {"zero1": zero1},
            "memory_breakdown_gb": {"optimizer_state": opt}, "tokens_per_s": 1.0, "exposed_comm_s": 0.0,
            "overlap_pct": 0.0, "step_time_s": 1.0}


def test_no_fit_verdict_suggests_zero1_when_it_would_fit():
    e = _oom(405.6, 264.0, 128)
    assert zero1_estimate_gb(e) == pytest.approx(405.6 - 264.0 * 127 / 128)
    text = verdict([e])
    assert "no schedule fits" in text and "--zero 1" in text and "143.7 GB" in text
    assert "--zero" not in verdict([_oom(405.6, 10.0, 128)])          # would still not fit
    assert "--zero" not in verdict([_oom(405.6, 264.0, 128, True)])    # already on
    assert "zero1" not in verdict([_oom(300.0, 264.0, 1)])            # no data parallelism to shard over


def test_degree_labels_use_the_json_keys():
    assert degrees_label("tp+sp", {"T": 8, "SP": 2, "DP": 64}) == "tp+sp T=8×SP=2 DP=64"


def test_phase_table_and_request_rows():
    pre = {"time_s": 0.04, "compute_s": 0.025, "comm_s": 0.015, "exposed_comm_s": 0.015, "overlap_pct": 0.0,
           "tokens_per_s": 1e5, "peak_memory_gb": 10.0, "comm_bytes_per_rank": {"all_reduce": 3.8e9}}
    dec = dict(pre, steps=16, time_s=0.027, tokens_per_s=1170.0)
    e = {"schedule": "tp", "degrees": {"D": 8}, "mode": "generate", "prefill": pre, "decode": dec,
         "step_time_s": 0.067, "peak_memory_gb": 10.0, "hbm_gb": 192.0, "overlap_pct": 0.0, "exposed_comm_s": 0.03}
    table = phase_table([e])
    assert "prefill: time (s)" in table and "decode (16 steps): time (s)" in table and "0.027" in table
    assert "request time (s)" in comparison_table([e]) and "step time" not in comparison_table([e])
    assert phase_table([dict(e, prefill=None, decode=None)]) == ""


def test_schedule_all_has_no_tp_sp_column_identical_to_tp(tmp_path):
    model = tmp_path / "m.yaml"
    model.write_text("hidden: 512\nlayers: 2\nq_heads: 8\nkv_heads: 8\nhead_dim: 64\nffn_hidden: 2048\n"
                     "gated_mlp: true\nvocab: 1000\n")
    res = CliRunner().invoke(cli, ["run", "-t", "mi300x-1node", "--model", str(model), "--seq", "2k",
                                   "--schedule", "all", "--batch", "8", "--json"])
    assert res.exit_code == 0, res.output
    degrees = {e["schedule"]: e["degrees"] for e in json.loads(res.stdout)["results"]}
    assert degrees["tp+sp"]["SP"] == 2 and degrees["tp+sp"]["T"] == 4


def test_sweep_prints_its_results_on_stdout(tmp_path):
    model = tmp_path / "m.yaml"
    model.write_text("hidden: 512\nlayers: 2\nq_heads: 8\nkv_heads: 8\nhead_dim: 64\nffn_hidden: 2048\n"
                     "gated_mlp: true\nvocab: 1000\n")
    res = CliRunner().invoke(cli, ["sweep", "-t", "mi300x-1node", "--model", str(model), "--schedule", "tp",
                                   "--degree", "2,4", "--seq", "1k", "--mode", "train,decode", "--tokens", "2",
                                   "--jobs", "1", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["configuration", "topology", "model"] and "TPOT" in lines[0]
    assert len(lines) == 1 + 4 and all(" ok " in line for line in lines[1:])
    # Off a terminal, one progress line per finished point on stderr.
    assert sum(line.startswith("sweep: ") and "/4 (ETA" in line for line in res.stderr.splitlines()) == 4


def test_input_gather_note_names_megatron_sp_for_gather_input_entries():
    """gather-input entries (Megatron SP) get their own note; the article's satp-seq keeps its own."""
    from tspsim.analysis.report import input_gather_note

    base = {"schedule": "satp-seq", "degrees": {"D": 8}, "comm_bytes_per_rank": {"all_gather_input": 1e9}}
    megatron = {**base, "assumptions": {"satp_seq_attention": "gather-input"}}
    article = {**base, "degrees": {"D": 4}, "assumptions": {"satp_seq_attention": "gather-kv"}}
    note = input_gather_note([megatron, article])
    first, second = note.splitlines()
    assert first.startswith("note: satp-seq D=4:") and "reference article" in first
    assert second.startswith("note: satp-seq D=8: Megatron sequence parallelism") and "reference" not in second
    assert input_gather_note([{**base, "comm_bytes_per_rank": {}}]) == ""


def test_playbook_line_says_which_columns_were_searched():
    from tspsim.commands.playbook_columns import playbook_line

    fsdp = {"schedule": "fsdp", "degrees": {"D": 1, "DP": 8}}
    assert playbook_line([]) == ""
    ptdp = {"schedule": "satp-seq", "degrees": {"D": 8, "PP": 2, "DP": 4}}
    assert playbook_line([("fsdp", fsdp)]) == (
        "playbooks: the last column was searched, not asked for: fsdp D=1 DP=8 is the best FSDP layout at the same "
        "GPUs and global batch (README: Pipeline parallelism and FSDP/ZeRO)")
    assert playbook_line([("fsdp", fsdp), ("ptd-p", ptdp)]).startswith(
        "playbooks: the last 2 columns were searched, not asked for: fsdp D=1 DP=8 is the best FSDP layout; "
        "satp-seq D=8×PP=2 DP=4 is the best PTD-P layout")

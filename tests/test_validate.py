"""``tspsim validate``: row arithmetic, the TP+SP assignment, n/a rows, and the CLI report."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import tspsim.explore.validation as v
from tspsim.cli import cli


def test_row_error_and_tolerance():
    row = v.Row("x", "x", "t", "GB", 100.0, 10.0, "src").settle(109.0)
    assert row.error_pct == pytest.approx(9.0) and row.within is True
    row = v.Row("y", "y", "t", "GB", 100.0, 10.0, "src").settle(89.0)
    assert row.error_pct == pytest.approx(-11.0) and row.within is False


@pytest.mark.parametrize(("sims", "expected"), [
    ({(2, 4): 80.0, (4, 2): 150.0}, (85.0, 140.0)),
    ({(2, 4): 150.0, (4, 2): 80.0}, (140.0, 85.0)),
])
def test_tp_sp_assignment_minimises_total_error(monkeypatch, sims, expected):
    monkeypatch.setattr(v, "_peak_gb", lambda schedule, tp, sp: sims[(tp, sp)])
    rows = v.tp_sp_memory_rows()
    assert tuple(r.published for r in rows) == expected
    assert all("smaller total error" in r.note for r in rows)


def test_unavailable_schedule_is_na(monkeypatch):
    monkeypatch.setattr(v, "_available", lambda name: name != "tsp")
    monkeypatch.setattr(v, "_peak_gb", lambda schedule, **kw: 70.0)
    rows = v.memory_rows()
    tsp = rows[0]
    assert tsp.id == "memory.tsp" and tsp.within is None and tsp.simulated is None
    assert tsp.note == "n/a (schedule not available)"
    assert v.summary(rows).endswith("(1 not available)") and tsp.kind == "calibration"
    assert "n/a (schedule not available)" in v.table(rows)


def test_summary_counts():
    rows = [v.Row("a", "a", "t", "u", 1.0, 10.0, "s").settle(1.0),
            v.Row("b", "b", "t", "u", 1.0, 10.0, "s").settle(2.0),
            v.Row("c", "c", "t", "u", 1.0, 10.0, "s")]
    assert v.summary(rows) == "independent checks: 1 of 2 within tolerance (1 not available)"
    rows[0].kind = "calibration"
    assert v.summary(rows) == ("calibration points: 1 of 1 within tolerance; independent checks: 0 of 1 within "
                               "tolerance (1 not available)")


@pytest.mark.slow
def test_validate_cli_json_and_text(monkeypatch, validate_json):
    runner = CliRunner()
    res, computed = validate_json   # the session's one `validate --json` run (the golden test compares it too)
    monkeypatch.setattr(v, "validation_rows", lambda jobs=None: list(computed))  # the text report: the same rows
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["results"]
    assert len(rows) == 20                       # 9 + 7 software-stack rows + 4 Table 5 step times (issue 14)
    ids = {r["id"] for r in rows}
    assert {"memory.tp", "memory.tsp", "collective.mi300x.allreduce.8GiB",
            "collective.mi300x.allreduce.4KiB", "collective.h100.allreduce.ring.16GiB",
            "mfu.mi300x-1node", "mfu.h100-dgx-1node", "mfu.h100-dgx-1node.torchtitan",
            "memory.megatron-22b.tp8.parameter_state", "activations.megatron-22b.tp8-sp-selective",
            "step.gpt3-175b.full", "step.gpt3-175b.sp-selective", "step.megatron-1t.full",
            "step.megatron-1t.sp-selective"} <= ids
    for r in rows:
        if r["id"].startswith("step."):  # each Table 5 row: what it models, its residual, its command
            assert "gradient-accumulation fusion" in r["note"] and "reproduce: tspsim run" in r["note"]
            assert "ms per pipeline pass" in r["note"] and "the other column's residual" in r["note"]
            assert r["within"] is True
    for r in rows:
        assert {"id", "what", "topology", "unit", "published", "simulated", "error_pct", "tolerance_pct", "within",
                "source", "note", "kind", "calibrates", "published_low", "published_high"} <= set(r)
        assert r["kind"] in ("calibration", "independent")  # every row says which it is
        assert (r["kind"] == "calibration") == bool(r["calibrates"])
        assert "https://" in r["source"] or "arXiv" in r["source"]  # a full citation, not a file name
        assert ".md §" not in r["source"]
        band = r["published_low"] is not None
        assert band == (r["published_high"] is not None) and (r["published"] is None or not band)
        if r["within"] is not None:
            assert abs(r["error_pct"]) <= r["tolerance_pct"] or r["within"] is False
    by_id = {r["id"]: r for r in rows}
    assert by_id["memory.tsp"]["kind"] == by_id["collective.mi300x.allreduce.8GiB"]["kind"] == "calibration"
    assert by_id["mfu.mi300x-1node"]["kind"] == "independent"
    assert (by_id["mfu.mi300x-1node"]["published_low"], by_id["mfu.mi300x-1node"]["published_high"]) == (30.0, 40.0)
    assert "within tolerance" in res.stderr
    text = runner.invoke(cli, ["validate"])
    assert text.exit_code == 0
    out = text.stdout
    assert out.index("# calibration points") < out.index("# independent checks") < out.index("sources:")
    assert "30–40 %" in out and "35 %" not in out  # the band, not its midpoint
    assert "[1] Shyam, Golubeva, Anthony" in out and "https://github.com/pytorch/torchtitan" in out
    assert out.strip().splitlines()[-1].endswith("within tolerance")


def test_table5_miss_measures_are_exact():
    """The note's figures: R = published − simulated per pass (ms) and per compute second, and the other column."""
    from tspsim.explore.validation_pipeline import miss_measures

    text = miss_measures(18.0, 16.0, 10.0, 400, (14.0, 11.0, 8.0))
    assert text == ("residual (published - simulated) +2.00 s = +5.00 ms per pipeline pass (400 per stage) = +20.0% "
                    "of its compute (10.00 s per rank); the other column's residual +3.00 s with -20% compute")
    assert miss_measures(10.0, 11.0, 10.0, 400, (14.0, 15.0, 8.0)).startswith(
        "residual (published - simulated) -1.00 s = -2.50 ms per pipeline pass")
    assert "(1,024 per stage)" in miss_measures(94.42, 88.87, 71.07, 1024, (71.49, 66.07, 51.86))


def test_band_rows_pass_inside_and_measure_the_distance_outside():
    row = v.Row("b", "b", "t", "%", None, 0.0, "s", published_low=30.0, published_high=40.0)
    assert row.settle(35.0).error_pct == 0.0 and row.within
    assert row.settle(44.0).error_pct == pytest.approx(10.0) and row.within is False
    assert row.settle(27.0).error_pct == pytest.approx(-10.0) and row.within is False
    wide = v.Row("w", "w", "t", "µs", None, 30.0, "s", published_low=13.7, published_high=14.3)
    assert wide.settle(13.0).within and not wide.settle(9.0).within


def test_progress_hook_sees_every_settled_row():
    seen = []
    from tspsim.explore.validation_row import reporting

    with reporting(seen.append):
        v.Row("a", "a", "t", "u", 1.0, 10.0, "s").settle(1.0)
    v.Row("b", "b", "t", "u", 1.0, 10.0, "s").settle(1.0)  # outside: not reported
    assert [r.id for r in seen] == ["a"]


def test_mfu_band_rows_are_exactly_the_bands(monkeypatch):
    """A band [lo, hi] is kept as a band: in band ⇔ pass, and it is never reported as its midpoint."""
    for topo, lo, hi, _ in v.MFU_BANDS:
        for sim, inside in ((lo * 100 + 1e-9, True), (hi * 100 - 1e-9, True), (lo * 100 - 0.01, False),
                            (hi * 100 + 0.01, False)):
            monkeypatch.setattr(v, "_mfu_pct", lambda t, x=sim: x)
            row = next(r for r in v.mfu_rows() if r.topology == topo)
            assert row.within is inside, (topo, sim)
            assert row.published is None and (row.published_low, row.published_high) == pytest.approx(
                (lo * 100, hi * 100))
            assert row.kind == "independent"


def test_mfu_mi300x_in_published_band():
    """End-to-end sanity: llama3-8b on 8 × MI300X lands in the [0.30, 0.40] MFU band (an independent check).

    (The H100 row is a declared miss — the model sits above the torchtitan band; see the README.)
    """
    lo, hi = next((lo, hi) for t, lo, hi, _ in v.MFU_BANDS if t == "mi300x-1node")
    assert lo * 100 <= v._mfu_pct("mi300x-1node") <= hi * 100

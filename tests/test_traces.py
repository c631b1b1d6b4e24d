"""The example op graphs in traces/: what traces/regenerate.py writes, and each replays as shipped."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tspsim.cli import cli
from tspsim.schedules import SCHEDULES
from tspsim.simulate import Point, simulate

TRACES = Path(__file__).resolve().parents[1] / "traces"


def _regenerate_module():
    spec = importlib.util.spec_from_file_location("traces_regenerate", TRACES / "regenerate.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


REGEN = _regenerate_module()


def test_one_training_step_per_schedule_and_a_decode_step():
    schedules = {json.loads((TRACES / n).read_text())["meta"]["schedule"] for n in REGEN.EXAMPLES
                 if n.startswith("train")}
    assert schedules >= {"tp", "satp-seq", "satp-batch", "sp", "tp+sp", "tsp"} and schedules <= set(SCHEDULES.names())
    assert any(n.startswith("decode") for n in REGEN.EXAMPLES)
    assert sorted(p.name for p in TRACES.glob("*.json")) == sorted(REGEN.EXAMPLES)


def test_shipped_files_are_what_the_script_writes(tmp_path):
    for path in REGEN.write_examples(tmp_path):
        shipped = TRACES / path.name
        assert shipped.read_bytes() == path.read_bytes(), f"{shipped} is stale: run python traces/regenerate.py"


@pytest.mark.parametrize("name", sorted(REGEN.EXAMPLES))
def test_each_trace_replays_as_shipped(name):
    res = CliRunner().invoke(cli, ["replay", str(TRACES / name), "--topology", REGEN.TOPOLOGY, "--json"])
    assert res.exit_code == 0, res.output
    (entry,) = json.loads(res.stdout)["results"]
    assert entry["step_time_s"] > 0 and entry["model"] == "tiny"
    assert "note:" not in res.stderr  # the graph uses the whole node (two folded replicas)
    if name.startswith("train"):
        # A replay reports what tspsim run reports for the same point.
        meta = json.loads((TRACES / name).read_text())["meta"]
        d = meta["degrees"]
        point = Point(meta["schedule"], REGEN.TOPOLOGY, str(REGEN.MODEL), seq_len=2048, batch=meta["batch"],
                      degree=d.get("D"), tp=d.get("T"), sp=d.get("SP"))
        assert entry["step_time_s"] == pytest.approx(simulate(point).entry["step_time_s"], rel=1e-12)
    else:
        assert entry["tpot_s"] == entry["step_time_s"] and entry["ttft_s"] is None

"""The README's quick start is what a newcomer and CI run; it cites only what ships."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _bash_blocks() -> list[list[str]]:
    return [block.strip().splitlines() for block in re.findall(r"```bash\n(.*?)```", README, re.S)]


def test_quick_start_begins_with_a_virtual_environment():
    first, tests = _bash_blocks()[:2]
    assert first == ["python3 -m venv .venv && . .venv/bin/activate",
                     "pip install -e . && tspsim run --topology mi300x-128node"]
    assert len(tests) == 1 and tests[0].endswith("python -m pytest -q")
    assert README.index("```bash") < README.index("## Contents")  # the first thing a reader sees
    assert re.search(r"tests take about \d+ minutes on 2 cores", README)


def test_ci_runs_exactly_the_readme_test_command():
    test_command = _bash_blocks()[1][0]
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == test_command


def test_default_test_extra_leaves_out_the_heavy_hta_dependency():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = cfg["options.extras_require"]
    test_command = _bash_blocks()[1][0]
    assert "hta" not in re.search(r"\[(.*?)\]", test_command).group(1).split(",")
    assert "HolisticTraceAnalysis" in extras["hta"] and "HolisticTraceAnalysis" not in extras["test"]


def test_readme_cites_no_document_that_does_not_ship():
    for name in ("design.md", "tsp.md", "hardware.md", "conventions.md", "tensor-parallelism-analysis.md",
                 "simulators.md", "style.md"):
        assert name not in README, name


def test_speed_table_lists_every_benchmark_row():
    """The README's measured speed table is speed_bench.py's output: one row per benchmark row, same order."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("speed_bench", ROOT / "benchmarks" / "speed_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    block = README.split(bench.README_START, 1)[1].split(bench.README_END, 1)[0]
    shown = re.findall(r"^\| `(.*?)` \|", block, re.M)
    assert shown == [what for _group, what, _argv, _limit, _target in bench.ROWS]
    assert "events/s" in block                   # the engine row

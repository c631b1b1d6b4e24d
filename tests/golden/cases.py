"""Golden outputs: commands whose output must not change unless a change means to change results.

Each case runs one ``tspsim`` command in-process and returns the text it produced (stdout, or the file
it wrote). ``tests/test_golden.py`` compares every case with ``tests/golden/<name>`` byte for byte;
``python tests/golden/regenerate.py`` rewrites the files after an intended change of results (say
which change in the commit message).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

HERE = Path(__file__).resolve().parent
TINY = str(HERE / "tiny.yaml")
"""A 10-block, 512-wide, 32-head model: small enough to simulate fast, deep enough for decode's 8-block probe."""


def _stdout(args: list[str]) -> str:
    from tspsim.cli import cli

    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    if result.exit_code != 0:
        raise AssertionError(f"tspsim {' '.join(args)} exited {result.exit_code}: {result.output[-2000:]}")
    return result.stdout


def _file(args: list[str], out_flag: str, name: str, tmp: Path) -> str:
    target = tmp / name
    _stdout([*args, out_flag, str(target)])
    return (target / "results.json" if target.is_dir() else target).read_text()


def _digest(text: str) -> str:
    """A large output as its size, op count and SHA-256 (the file itself is too big to keep)."""
    import hashlib
    import json

    doc = json.loads(text)
    return json.dumps({"bytes": len(text), "ops": len(doc.get("ops", [])),
                       "sha256": hashlib.sha256(text.encode()).hexdigest()}, indent=1) + "\n"


def _inference(mode: str) -> list[str]:
    tokens = [] if mode == "prefill" else ["--tokens", "4"]
    return ["run", "-t", "mi300x-128node", "--model", TINY, "--mode", mode, "--seq", "4k", *tokens, "--batch", "2",
            "--gpus", "16", "--json", "--no-timing"]


CASES: dict[str, Callable[[Path], str]] = {
    "run-default.json": lambda tmp: _stdout(["run", "--topology", "mi300x-128node", "--json", "--no-timing"]),
    "run-prefill.json": lambda tmp: _stdout(_inference("prefill")),
    "run-decode.json": lambda tmp: _stdout(_inference("decode")),
    "run-generate.json": lambda tmp: _stdout(_inference("generate")),
    "collective-mi300x.json": lambda tmp: _stdout(
        ["collective", "-t", "mi300x-128node", "--op", "all_reduce", "--group", "16", "--sizes", "1k,1M,1G",
         "--json"]),
    "collective-h100.json": lambda tmp: _stdout(
        ["collective", "-t", "h100-dgx-128node", "--op", "all_gather", "--group", "8", "--sizes", "1k,64M",
         "--json"]),
    "validate.json": lambda tmp: _stdout(["validate", "--json"]),
    "sweep-results.json": lambda tmp: _file(
        ["sweep", "-t", "mi300x-1node", "--model", TINY, "--schedule", "tsp,tp", "--degree", "2,8",
         "--seq", "4k,8k", "--jobs", "1"], "--out", "sweep", tmp),
    "generate-tsp.json": lambda tmp: _digest(_file(
        ["generate", "-t", "mi300x-1node", "--model", TINY, "--schedule", "tsp", "--seq", "4k"], "-o",
        "trace.json", tmp)),
}
"""Golden file name → how to produce its text."""

"""Write the example op graphs of this folder: ``python traces/regenerate.py`` (from the repository root).

Each example is ``tspsim generate`` of the tiny model (``traces/tiny.yaml``) on one MI300X node, 2k tokens:
one training step per schedule — D = 4 (tp+sp: T = 2 × SP = 2), so the 8 GPUs hold 2 data-parallel
replicas and the graph holds one of them (folded) — and one decode step. ``tspsim replay
traces/NAME.json --topology mi300x-1node`` runs each as shipped; ``tests/test_traces.py`` checks that
the files are what this script writes and that they replay.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = HERE / "tiny.yaml"
TOPOLOGY = "mi300x-1node"

EXAMPLES: dict[str, list[str]] = {
    "train-tp.json": ["--schedule", "tp", "--degree", "4"],
    "train-satp-seq.json": ["--schedule", "satp-seq", "--degree", "4"],
    "train-satp-batch.json": ["--schedule", "satp-batch", "--degree", "4", "--batch", "4"],
    "train-sp.json": ["--schedule", "sp", "--degree", "4"],
    "train-tp+sp.json": ["--schedule", "tp+sp", "--tp", "2", "--sp", "2"],
    "train-tsp.json": ["--schedule", "tsp", "--degree", "4"],
    "decode-tp.json": ["--schedule", "tp", "--degree", "4", "--mode", "decode", "--context", "2k", "--batch", "4"],
}
"""File name → the ``tspsim generate`` options that make it (with the model, topology and ``--seq 2k``)."""


def generate_args(name: str, folder: Path) -> list[str]:
    """The full ``tspsim generate`` command line of example ``name``, writing into ``folder``."""
    return ["generate", "-t", TOPOLOGY, "--model", str(MODEL), "--seq", "2k", *EXAMPLES[name],
            "-o", str(folder / name)]


def write_examples(folder: Path) -> list[Path]:
    """Write every example into ``folder``; returns the paths."""
    from click.testing import CliRunner

    from tspsim.cli import cli

    paths = []
    for name in EXAMPLES:
        result = CliRunner().invoke(cli, generate_args(name, folder), catch_exceptions=False)
        if result.exit_code != 0:
            raise SystemExit(f"tspsim {' '.join(generate_args(name, folder))} failed: {result.output}")
        paths.append(folder / name)
    return paths


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    for path in write_examples(HERE):
        print(f"wrote {path.relative_to(HERE.parent)} ({path.stat().st_size:,} bytes)")

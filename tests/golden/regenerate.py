"""Rewrite the golden files of tests/golden/ from the current code: ``python tests/golden/regenerate.py [NAME ...]``."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import CASES, HERE  # noqa: E402


def main(names: list[str]) -> None:
    """Regenerate the named cases (all by default)."""
    unknown = [n for n in names if n not in CASES]
    if unknown:
        sys.exit(f"unknown case {unknown[0]!r}; cases: {', '.join(CASES)}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or list(CASES):
            text = CASES[name](Path(tmp))
            (HERE / name).write_text(text)
            print(f"wrote {name} ({len(text):,} bytes)")


if __name__ == "__main__":
    main(sys.argv[1:])

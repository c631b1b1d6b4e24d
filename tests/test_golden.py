"""Golden outputs (issue 11): refactors must leave results byte-identical.

A deliberate change of results regenerates the files with ``python tests/golden/regenerate.py`` in
the same commit, and says so.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))

from cases import CASES, HERE  # noqa: E402


@pytest.mark.slow  # several cases simulate inference with the max-batch search (5–20 s each)
@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_output_is_unchanged(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    expected = (HERE / name).read_text()
    if name == "validate.json":   # the session's one `validate --json` run (tests/test_validate.py checks it too)
        actual = request.getfixturevalue("validate_json")[0].stdout
    else:
        actual = CASES[name](tmp_path)
    if actual != expected:
        diff = "".join(list(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True), "golden",
                                                 "now", n=1))[:60])
        pytest.fail(f"{name} changed (regenerate with python tests/golden/regenerate.py if intended):\n{diff}")

"""sweep.html in a real headless Chromium: every plot renders with traces and the page is not blank.

Needs playwright (``pip install playwright``) and Debian's chromium (``apt-get install chromium``); skipped
with a reason when either is missing. Playwright drives the system browser (no browser download).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_util import CHROMIUM, CHROMIUM_ARGS, decode_png
from click.testing import CliRunner
from tiny_models import TINY_32_HEADS

from tspsim.cli import cli

pytestmark = [pytest.mark.browser, pytest.mark.slow]


TINY = TINY_32_HEADS


def _browser():
    playwright = pytest.importorskip("playwright.sync_api",
                                     reason="playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    return playwright


def png_colours(data: bytes, limit: int = 64) -> int:
    """Distinct RGB colours in a PNG, sampling every 7th pixel (stops counting at ``limit``)."""
    _, _, rows = decode_png(data)
    seen: set[bytes] = set()
    for row in rows:
        for x in range(0, len(row), 3 * 7):
            seen.add(row[x:x + 3])
        if len(seen) >= limit:
            break
    return len(seen)


def test_sweep_page_renders_in_chromium(tmp_path: Path) -> None:
    playwright = _browser()
    model = tmp_path / "tiny.yaml"
    model.write_text(TINY)
    out = tmp_path / "sweep"
    res = CliRunner().invoke(cli, ["sweep", "-t", "mi300x-1node", "--model", str(model), "--schedule", "tsp,tp+sp",
                                   "--degree", "8", "--tp", "4", "--sp", "2", "--seq", "1k,2k,4k", "--jobs", "1",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    page_file = out / "sweep.html"
    assert "https://cdn" not in page_file.read_text()[:2000]  # plotly.js is embedded, not fetched

    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(page_file.as_uri())
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 3", timeout=30_000)
            plots = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')].map(el => ({
                id: el.id, traces: (el.data || []).length,
                drawn: el.querySelectorAll('.trace, .hm, image').length }))""")
            shot = page.screenshot(full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    assert [p["id"] for p in plots] == ["throughput", "memory", "speed-ratio-0"]
    for p in plots:
        assert p["traces"] > 0 and p["drawn"] > 0, p
    assert png_colours(shot) > 8, "the screenshot is blank"

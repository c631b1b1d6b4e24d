"""The viewer in a real headless Chromium (design.md §6: "tested in a real headless Chromium").

Needs playwright (``pip install playwright``) and Debian's chromium (``apt-get install chromium``); skipped
with a reason when either is missing. Playwright drives the system browser, so no browser download is needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser_util import CHROMIUM, CHROMIUM_ARGS, decode_png

from tspsim.outputs.viewer import write_html
from tspsim.simulate import Point, simulate

pytestmark = pytest.mark.browser

GEMM_RGB = (0x4C, 0x78, 0xA8)
ALL_REDUCE_RGB = (0xE4, 0x57, 0x56)


def colour_stats(png: bytes) -> tuple[int, dict[tuple[int, int, int], int]]:
    """(number of distinct colours, pixel counts of the category colours checked below)."""
    _, _, rows = decode_png(png)
    seen: set[tuple[int, int, int]] = set()
    hits = {GEMM_RGB: 0, ALL_REDUCE_RGB: 0}
    for row in rows:
        for i in range(0, len(row), 3):
            px = (row[i], row[i + 1], row[i + 2])
            seen.add(px)
            for ref in hits:
                if all(abs(px[k] - ref[k]) <= 8 for k in range(3)):
                    hits[ref] += 1
    return len(seen), hits


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"chromium not found at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A bar-mode page (2 ranks of tp) and a WebGL page with two runs (tp and sp, 8 ranks each)."""
    tp = simulate(Point("tp", "mi300x-1node", seq_len=4096), record_links=True)
    sp = simulate(Point("sp", "mi300x-1node", seq_len=4096), record_links=True)
    folder = tmp_path_factory.mktemp("pages")
    bars, webgl = folder / "bars.html", folder / "webgl.html"
    write_html([(tp.entry, tp.timeline)], bars, ranks=[0, 1])
    write_html([(tp.entry, tp.timeline), (sp.entry, sp.timeline)], webgl)
    return {"bars": bars, "webgl": webgl}


def _open(browser, path: Path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(path.as_uri())
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=90_000)
    page.wait_for_function("() => document.querySelector('.js-plotly-plot')._fullLayout !== undefined")
    return page, errors


# JS: pick the widest span of trace 0 (bars: base/x; WebGL: [s, e, NaN] triplets), zoom the time axis to it and
# return the page coordinates of its middle, its name (from the hover data) and the ranges of all x axes.
_ZOOM_TO_WIDEST = """
async () => {
  const gd = document.querySelector('.js-plotly-plot');
  const t = gd._fullData[0];  // decoded arrays (gd.data keeps plotly.py's base64 typed-array specs)
  let best = -1, s = 0, e = 0;
  if (t.type === 'bar') {
    for (let i = 0; i < t.x.length; i++) if (t.x[i] > e - s) { best = i; s = t.base[i]; e = t.base[i] + t.x[i]; }
  } else {
    for (let i = 0; 3 * i + 1 < t.x.length; i++) {
      const a = t.x[3 * i], b = t.x[3 * i + 1];
      if (b - a > e - s) { best = i; s = a; e = b; }
    }
  }
  const hoverTrace = t.type === 'bar' ? t : gd._fullData[1];
  const lane = t.type === 'bar' ? t.y[best] : t.y[3 * best];
  await Plotly.relayout(gd, {'xaxis.range': [s - (e - s), e + (e - s)]});
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const box = gd.querySelector('.nsewdrag').getBoundingClientRect();
  return {name: hoverTrace.customdata[best][0], x: box.left + xa.l2p((s + e) / 2), y: box.top + ya.l2p(lane),
          ranges: [1, 2, 3].map(k => gd._fullLayout['xaxis' + (k === 1 ? '' : k)].range.map(v => +v.toFixed(6)))};
}
"""


def _check_page(browser, path: Path, lanes: int, webgl: bool, tmp_path: Path) -> None:
    page, errors = _open(browser, path)
    try:
        gd = "document.querySelector('.js-plotly-plot')"
        assert page.evaluate(f"() => {gd}.data[0].type") == ("scattergl" if webgl else "bar")
        # Lanes: one y tick label per (GPU, stream) in the first panel.
        ticks = page.eval_on_selector_all(".js-plotly-plot .ytick text", "els => els.map(e => e.textContent)")
        assert len(ticks) == lanes and ticks[0] == "node00/gpu0 · compute" and ticks[1] == "comm"

        png = page.screenshot(full_page=True)
        (tmp_path / f"{path.stem}.png").write_bytes(png)
        distinct, hits = colour_stats(png)
        assert distinct > 30, "screenshot looks blank"
        assert hits[GEMM_RGB] > 500 and hits[ALL_REDUCE_RGB] > 200, hits  # spans are drawn, in their colours

        # Zoom to one span (the time axis is shared by every panel), hover it and read the tooltip.
        info = page.evaluate(_ZOOM_TO_WIDEST)
        assert info["ranges"][0] == info["ranges"][1] == info["ranges"][2]
        page.mouse.move(info["x"], info["y"])
        page.wait_for_selector(".hovertext", timeout=10_000)
        text = " ".join(page.eval_on_selector_all(".hovertext", "els => els.map(e => e.textContent)"))
        assert info["name"] in text and "duration" in text and "FLOP" in text

        # Legend: the first entry (GEMM) hides its category — both traces of it in WebGL mode.
        page.mouse.move(5, 5)
        page.locator(".legendtoggle").first.click()
        page.wait_for_function(f"() => {gd}.data[0].visible === 'legendonly'")
        if webgl:
            assert page.evaluate(f"() => {gd}.data[1].visible") == "legendonly"
        assert page.evaluate(f"() => {gd}.data[2].visible") is not False
        assert not errors, errors
    finally:
        page.close()


def test_bars_page_renders_hovers_and_toggles(browser, pages, tmp_path):
    _check_page(browser, pages["bars"], lanes=2 * 2, webgl=False, tmp_path=tmp_path)


def test_webgl_page_renders_hovers_and_toggles(browser, pages, tmp_path):
    _check_page(browser, pages["webgl"], lanes=8 * 2, webgl=True, tmp_path=tmp_path)


def test_run_selector_switches_runs(browser, pages):
    page, errors = _open(browser, pages["webgl"])
    try:
        assert page.eval_on_selector_all("#run-select option", "els => els.map(e => e.textContent)") == [
            "0: tp (D=8, DP=1)", "1: sp (D=8, DP=1)"]
        page.select_option("#run-select", "1")
        page.wait_for_selector("#plot-1 .main-svg", timeout=90_000)
        assert page.evaluate("() => document.querySelector('section[data-index=\"0\"]').hidden")
        assert page.evaluate("() => document.querySelector('#plot-0 .main-svg') === null")  # purged
        ticks = page.eval_on_selector_all("#plot-1 .ytick text", "els => els.map(e => e.textContent)")
        assert ticks[:2] == ["node00/gpu0 · compute", "kv"]
        # The memory dropdown switches the GPU shown.
        page.locator("#plot-1 .updatemenu-header").first.click()
        page.locator("#plot-1 .updatemenu-dropdown-button", has_text="node00/gpu5 (rank 5)").click()
        page.wait_for_function("() => document.querySelector('#plot-1').layout.annotations[1].text"
                               ".includes('rank 5')")
        assert not errors, errors
    finally:
        page.close()

"""The viewer in a real headless Chromium (design.md §6: "tested in a real headless Chromium").

Needs playwright (``pip install playwright``) and Debian's chromium (``apt-get install chromium``); skipped
with a reason when either is missing. Playwright drives the system browser, so no browser download is needed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_util import READY, REFINED, decode_png, launch_chromium

from tspsim.outputs.viewer import write_html
from tspsim.simulate import Point, simulate

pytestmark = [pytest.mark.browser, pytest.mark.slow]

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
    yield from launch_chromium(pytest)


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A bar-mode page (2 ranks of tp) and a line-path page with two runs (tp and sp, 8 ranks each)."""
    tp = simulate(Point("tp", "mi300x-1node", seq_len=4096), record_links=True)
    sp = simulate(Point("sp", "mi300x-1node", seq_len=4096), record_links=True)
    folder = tmp_path_factory.mktemp("pages")
    bars, lines = folder / "bars.html", folder / "lines.html"
    write_html([(tp.entry, tp.timeline)], bars, ranks=[0, 1])
    write_html([(tp.entry, tp.timeline), (sp.entry, sp.timeline)], lines)
    return {"bars": bars, "lines": lines}


def _open(browser, path: Path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(path.as_uri())
    page.wait_for_function(READY, arg=0, timeout=90_000)
    page.wait_for_function(REFINED, arg=[0, 0], timeout=90_000)  # the first redraw at the real width
    return page, errors


# JS: pick the widest span of trace 0 (bars: base/x; line paths: vertices up to a NaN gap), zoom the time axis
# to it and return the page coordinates of its middle, its name (from the hover data) and the x ranges.
_ZOOM_TO_WIDEST = """
async () => {
  const gd = document.querySelector('.js-plotly-plot');
  const t = gd._fullData[0];  // decoded arrays (gd.data may keep plotly.py's base64 typed-array specs)
  let s = 0, e = 0, lane = 0, name = '';
  if (t.type === 'bar') {
    for (let i = 0; i < t.x.length; i++) {
      if (t.x[i] > e - s) { s = t.base[i]; e = t.base[i] + t.x[i]; lane = t.y[i]; name = t.customdata[i][0]; }
    }
  } else {
    let a = null;
    for (let i = 0; i <= t.x.length; i++) {
      const x = i < t.x.length ? t.x[i] : null;
      if (x === null || x === undefined || Number.isNaN(x)) {
        if (a !== null && t.x[i - 1] - t.x[a] > e - s) {
          s = t.x[a]; e = t.x[i - 1]; lane = t.y[a]; name = t.customdata[a][0];
        }
        a = null;
      } else if (a === null) { a = i; }
    }
  }
  const n = Number(gd.dataset.refined || 0);
  await Plotly.relayout(gd, {'xaxis.range': [s - (e - s), e + (e - s)]});
  return {s: s, e: e, lane: lane, name: name, refined: n};
}
"""

_WHERE = """
(info) => {
  const gd = document.querySelector('.js-plotly-plot');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const box = gd.querySelector('.nsewdrag').getBoundingClientRect();
  return {x: box.left + xa.l2p((info.s + info.e) / 2), y: box.top + ya.l2p(info.lane),
          ranges: Object.keys(gd._fullLayout).filter(k => /^xaxis\\d*$/.test(k))
                  .map(k => gd._fullLayout[k].range.map(v => +v.toFixed(6)))};
}
"""


def _check_page(browser, path: Path, lanes: int, bars: bool, tmp_path: Path) -> None:
    page, errors = _open(browser, path)
    try:
        gd = "document.querySelector('.js-plotly-plot')"
        assert page.evaluate(f"() => {gd}.data[0].type") == ("bar" if bars else "scatter")
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
        page.wait_for_function(REFINED, arg=[0, info["refined"]], timeout=30_000)
        where = page.evaluate(_WHERE, info)
        assert len({tuple(r) for r in where["ranges"]}) == 1 and len(where["ranges"]) >= 3
        page.mouse.move(where["x"], where["y"])
        page.wait_for_selector(".hovertext", timeout=10_000)
        text = " ".join(page.eval_on_selector_all(".hovertext", "els => els.map(e => e.textContent)"))
        assert info["name"] in text and "duration" in text and "FLOP" in text

        # Legend: the first entry (GEMM) hides its category, and only it.
        page.mouse.move(5, 5)
        page.locator(".legendtoggle").first.click()
        page.wait_for_function(f"() => {gd}.data[0].visible === 'legendonly'")
        assert page.evaluate(f"() => {gd}.data[1].visible") is not False
        assert not errors, errors
    finally:
        page.close()


def test_bars_page_renders_hovers_and_toggles(browser, pages, tmp_path):
    _check_page(browser, pages["bars"], lanes=2 * 2, bars=True, tmp_path=tmp_path)


def test_line_path_page_renders_hovers_and_toggles(browser, pages, tmp_path):
    _check_page(browser, pages["lines"], lanes=8 * 2, bars=False, tmp_path=tmp_path)


def test_run_selector_switches_runs_and_gpu_menu_fits(browser, pages):
    page, errors = _open(browser, pages["lines"])
    try:
        assert page.eval_on_selector_all("#run-select option", "els => els.map(e => e.textContent)") == [
            "0: tp (D=8, DP=1)", "1: sp (D=8, DP=1)"]
        page.select_option("#run-select", "1")
        page.wait_for_function(READY, arg=1, timeout=90_000)
        page.wait_for_function(REFINED, arg=[1, 0], timeout=90_000)
        assert page.evaluate("() => document.querySelector('section[data-index=\"0\"]').hidden")
        assert page.evaluate("() => document.querySelector('#plot-0 .main-svg') === null")  # purged
        assert page.evaluate("() => document.getElementById('loading-1').hidden")
        ticks = page.eval_on_selector_all("#plot-1 .ytick text", "els => els.map(e => e.textContent)")
        assert ticks[:2] == ["node00/gpu0 · compute", "kv"]
        # The memory dropdown switches the GPU shown; its list opens inside the plot, never clipped.
        page.locator("#plot-1 .updatemenu-header").first.click()
        boxes = page.eval_on_selector_all("#plot-1 .updatemenu-dropdown-button",
                                          "els => els.map(e => { const r = e.getBoundingClientRect(); "
                                          "return [r.top + scrollY, r.bottom + scrollY]; })")
        plot = page.evaluate("() => { const r = document.getElementById('plot-1').getBoundingClientRect(); "
                             "return [r.top + scrollY, r.bottom + scrollY]; }")
        assert len(boxes) == 8 and all(plot[0] <= top and bottom <= plot[1] for top, bottom in boxes), (boxes, plot)
        page.locator("#plot-1 .updatemenu-dropdown-button", has_text="node00/gpu5 (rank 5)").click()
        page.wait_for_function("() => document.querySelector('#plot-1').layout.annotations[1].text"
                               ".includes('rank 5')")
        # The page filled rank 5's memory stack after the first plot (the figure carries only the first GPU's).
        assert page.evaluate("() => document.querySelector('#plot-1')._fullData.filter(t => t.visible === true "
                             "&& t.stackgroup).every(t => t.x.length > 10)")
        assert not errors, errors
    finally:
        page.close()

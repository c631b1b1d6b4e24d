"""The viewer page of the 1,024-GPU default comparison in a real headless Chromium (issue 16 targets).

``tspsim run --topology mi300x-128node --html`` (TSP D=8, TP 8, TP+SP T=8×SP=2 on 1,024 MI300X): the page is
under 10 MB, marks its first plot (``benchmarks/viewer_bench.py`` times it: target 3 s), switches runs,
draws link utilisation as binned mean and max, and redraws the decimated lanes exactly when zoomed in.
``benchmarks/viewer_bench.py`` prints the same figures. Needs playwright and Debian's chromium (skipped with
the reason otherwise).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_util import READY, REFINED, launch_chromium

from tspsim.outputs.viewer import write_html
from tspsim.simulate import Point, simulate

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SIZE_LIMIT_BYTES = 10 * 10**6


@pytest.fixture(scope="module")
def browser():
    yield from launch_chromium(pytest)


@pytest.fixture(scope="module")
def default_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The page ``tspsim run --topology mi300x-128node --html`` writes (links recorded)."""
    runs = []
    for point in (Point("tsp", "mi300x-128node"), Point("tp", "mi300x-128node"),
                  Point("tp+sp", "mi300x-128node", tp=8, sp=2)):
        r = simulate(point, record_links=True)
        runs.append((r.entry, r.timeline))
    path = tmp_path_factory.mktemp("scale") / "default.html"
    write_html(runs, path)
    return path


@pytest.fixture(scope="module")
def opened(browser, default_page):
    """One page of the default run, first plot drawn and redrawn at the real width."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(default_page.as_uri())
    page.wait_for_function(READY, arg=0, timeout=120_000)
    page.wait_for_function(REFINED, arg=[0, 0], timeout=120_000)
    yield page, errors
    page.close()


def test_page_is_under_10_mb(default_page):
    assert default_page.stat().st_size < SIZE_LIMIT_BYTES


def test_first_plot_is_marked_for_the_benchmark(opened):
    """The page marks its first plot (``tspsim-plotted-0``); ``benchmarks/viewer_bench.py`` times it against the
    3 s target (``--strict`` fails over it). Speed is a benchmark's figure, not a timed unit test: a shared
    2-core machine stalls page loads by seconds."""
    page, _ = opened
    start = float(page.evaluate("() => performance.getEntriesByName('tspsim-plotted-0')[0].startTime"))
    assert 0 < start < 600_000


def test_link_panels_hold_binned_mean_and_max(opened):
    page, errors = opened
    titles = page.evaluate("() => document.getElementById('plot-0').layout.annotations.map(a => a.text)")
    assert titles[2].startswith("Node fabric utilisation") and "mean and max per" in titles[2]
    assert titles[3].startswith("NIC utilisation")
    traces = page.evaluate("() => document.getElementById('plot-0')._fullData.filter(t => t.legend === 'legend3')"
                           ".map(t => ({name: t.name, n: t.x.length, max: Math.max(...t.y)}))")
    mean = next(t for t in traces if t["name"].startswith("node00 xGMI") and not t["name"].endswith("max"))
    peak = next(t for t in traces if t["name"].endswith("max"))
    # ~500 bins over the step, not tens of thousands of raw changes; the max line reaches the busy level.
    assert 100 < mean["n"] < 2000 and peak["max"] > 80 and mean["max"] < peak["max"]
    assert not errors, errors


def test_zoom_redraws_every_span_exactly_with_hovers(opened, tmp_path):
    page, errors = opened
    gd = "document.getElementById('plot-0')"
    assert page.evaluate(f"() => {gd}.dataset.mode") == "raster"
    n = page.evaluate(f"() => Number({gd}.dataset.refined)")
    page.evaluate(f"() => Plotly.relayout({gd}, {{'xaxis.range': [3000, 3040]}})")
    page.wait_for_function(REFINED, arg=[0, n], timeout=60_000)
    assert page.evaluate(f"() => {gd}.dataset.mode") == "exact"
    assert "every one drawn" in page.evaluate(f"() => {gd}.layout.annotations[0].text")
    page.screenshot(path=str(tmp_path / "zoomed.png"), full_page=True)
    # Hover the compute lane of GPU 0 in the middle of the window: a real op with its duration.
    where = page.evaluate(f"""() => {{
        const g = {gd}, xa = g._fullLayout.xaxis, ya = g._fullLayout.yaxis;
        const box = g.querySelector('.nsewdrag').getBoundingClientRect();
        return {{x: box.left + xa.l2p(3020), y: box.top + ya.l2p(0)}}; }}""")
    page.mouse.move(where["x"], where["y"])
    page.wait_for_selector("#plot-0 .hovertext", timeout=10_000)
    text = " ".join(page.eval_on_selector_all("#plot-0 .hovertext", "els => els.map(e => e.textContent)"))
    assert "duration" in text and "rank 0" in text and "merged" not in text
    assert not errors, errors


def test_switching_runs_draws_each(opened):
    page, errors = opened
    for i, schedule in ((1, "tp"), (2, "tp+sp")):
        page.select_option("#run-select", str(i))
        page.wait_for_function(READY, arg=i, timeout=60_000)
        assert page.evaluate(f"() => document.getElementById('plot-{i}').layout.title.text").startswith(schedule)
        assert page.evaluate("() => document.querySelectorAll('.js-plotly-plot .main-svg').length > 0")
        assert page.evaluate(f"() => document.querySelector('section[data-index=\"{i - 1}\"]').hidden")
    fabric = page.evaluate("() => document.getElementById('plot-2')._fullData.filter(t => t.legend === 'legend3')"
                           ".map(t => t.name)")
    assert any(n.startswith("node01 xGMI") for n in fabric)  # TP+SP spans two nodes
    assert not errors, errors

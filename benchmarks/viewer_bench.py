"""Size and time-to-first-plot of the timeline viewer page in headless Chromium (issue 16 targets).

Writes the viewer page of the default comparison ``tspsim run --topology mi300x-128node`` (TSP D=8,
TP 8, TP+SP T=8×Σ=2 on 1,024 MI300X; or an existing page given with ``--html``), opens it in Debian's
Chromium through playwright and prints the file size, the time from navigation to the first drawn plot,
and the time to switch to each other run.

    python benchmarks/viewer_bench.py [--html PAGE.html] [--strict]

Targets: under 10 MB and a first plot under 3 s. ``--strict`` exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from browser_util import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

SIZE_TARGET_MB = 10.0
FIRST_PLOT_TARGET_S = 3.0
# Drawn: the page script marks data-ready; pages written before issue 16 have no such mark, so also accept
# a plot with its layout (their figure is drawn synchronously).
_DRAWN = ("(i) => { const d = document.querySelector('#plot-' + i); return !!d && (d.dataset.ready === '1' "
          "|| (d.querySelector('.main-svg') !== null && d._fullLayout !== undefined)); }")


def write_default_page(path: Path) -> float:
    """Simulate the default comparison with links and write its page; returns the writing time in s."""
    from tspsim.outputs.viewer import write_html
    from tspsim.simulate import Point, simulate

    runs = []
    for point in (Point("tsp", "mi300x-128node"), Point("tp", "mi300x-128node"),
                  Point("tp+sp", "mi300x-128node", tp=8, sp=2)):
        r = simulate(point, record_links=True)
        runs.append((r.entry, r.timeline))
    t0 = time.perf_counter()
    write_html(runs, path)
    return time.perf_counter() - t0


def measure(page_path: Path) -> tuple[float, list[float]]:
    """(seconds from navigation to the first drawn plot, seconds to draw each other run after selecting it)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(page_path.as_uri(), wait_until="commit", timeout=300_000)
        page.wait_for_function(_DRAWN, arg=0, timeout=300_000, polling=50)
        first = page.evaluate("() => { const m = performance.getEntriesByName('tspsim-plotted-0'); "
                              "return m.length ? m[0].startTime : performance.now(); }") / 1e3  # since navigation
        switches = []
        options = page.eval_on_selector_all("#run-select option", "els => els.map(e => e.value)")
        for value in options[1:]:
            t1 = time.perf_counter()
            page.select_option("#run-select", value)
            page.wait_for_function(_DRAWN, arg=int(value), timeout=300_000, polling=50)
            switches.append(time.perf_counter() - t1)
        browser.close()
    return first, switches


def main() -> None:
    """Entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--html", type=Path, default=None, help="measure this page instead of writing one")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.html
        if path is None:
            path = Path(tmp) / "default.html"
            print(f"writing the page of tspsim run --topology mi300x-128node: {write_default_page(path):.1f} s")
        size_mb = path.stat().st_size / 1e6
        first, switches = measure(path)
    print(f"page size        {size_mb:8.2f} MB   (target < {SIZE_TARGET_MB:g} MB)")
    print(f"first plot       {first:8.2f} s    (target < {FIRST_PLOT_TARGET_S:g} s)")
    for i, s in enumerate(switches, start=1):
        print(f"switch to run {i}  {s:8.2f} s")
    if args.strict and (size_mb >= SIZE_TARGET_MB or first >= FIRST_PLOT_TARGET_S):
        sys.exit(1)


if __name__ == "__main__":
    main()

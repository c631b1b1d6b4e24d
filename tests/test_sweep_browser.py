"""sweep.html in a real headless Chromium: every plot renders with traces and the page is not blank.

Needs playwright (``pip install playwright``) and Debian's chromium (``apt-get install chromium``); skipped
with a reason when either is missing. Playwright drives the system browser (no browser download).
"""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from tspsim.cli import cli

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

TINY = """name: tiny
hidden: 512
layers: 2
q_heads: 32
kv_heads: 32
head_dim: 16
ffn_hidden: 2048
gated_mlp: true
vocab: 1000
"""


def _browser():
    playwright = pytest.importorskip("playwright.sync_api",
                                     reason="playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    return playwright


def png_colours(data: bytes, limit: int = 64) -> int:
    """Distinct RGB colours in an 8-bit non-interlaced RGB/RGBA PNG (stops counting at ``limit``)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
    assert header is not None
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 4 if colour == 6 else 3
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    seen: set[bytes] = set()
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        prev = line
        for x in range(0, stride, bpp * 7):  # sample every 7th pixel: enough to see a plot
            seen.add(bytes(line[x:x + 3]))
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

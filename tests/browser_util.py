"""Helpers shared by the headless-browser tests: the Debian Chromium launch and a stdlib PNG decoder.

Playwright drives the system browser (``apt-get install chromium``; no browser download), with the flags
this machine's closed network needs.
"""

from __future__ import annotations

import shutil
import struct
import zlib

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit, non-interlaced RGB/RGBA PNG — what Chromium writes."""
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
    rows: list[bytes] = []
    prev = bytearray(stride)
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
        rows.append(bytes(line) if bpp == 3 else bytes(v for j, v in enumerate(line) if j % 4 != 3))
    return width, height, rows


def launch_chromium(pytest_module):
    """Yield a playwright Chromium browser (Debian's), or skip with the reason it is unavailable."""
    import os

    sync_api = pytest_module.importorskip("playwright.sync_api",
                                          reason="playwright is not installed (pip install playwright)")
    if not os.path.exists(CHROMIUM):
        pytest_module.skip(f"chromium not found at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


READY = "(i) => { const d = document.getElementById('plot-' + i); return !!d && d.dataset.ready === '1'; }"
"""JS predicate: run i's plot is drawn (the page script sets ``data-ready`` after ``Plotly.newPlot``)."""

REFINED = ("([i, n]) => { const d = document.getElementById('plot-' + i); "
           "return !!d && Number(d.dataset.refined || 0) > n; }")
"""JS predicate: run i's plot was redrawn for the visible window more than n times."""

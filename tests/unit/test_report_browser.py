"""``report --html``'s page in a real browser: headless Chromium (Debian's ``chromium``
package: ``apt-get install -y chromium``) opens the file, with the network off, and
takes a screenshot; the screenshot must show the page's text and its plots (not a
blank or an error page). Slow (a browser start): ``make test-all`` runs it; it skips
with one line where Chromium is not installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from matrix_p2p import cli
from tests.unit.test_report import synthetic_rows

pytestmark = pytest.mark.slow

BAR_RGB = (0x4A, 0x78, 0xA8)  # report/html.py's bar colour
WIDTH, HEIGHT = 1000, 1300


def _browser() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; see README)")
    return exe


def screenshot(exe: str, page: Path, shot: Path, profile: Path) -> None:
    """Chromium's screenshot of ``page``, with every background connection off (this
    machine has no network; the flags the machine notes name for root)."""
    args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
            f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={shot}", page.as_uri()]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its helpers share its group: stopped with it
    try:
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]


def png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Width, height and RGB pixels of an 8-bit RGB or RGBA, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, b"", b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            ihdr = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), w * bpp
    prev, pixels = bytearray(stride), []
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        pixels += [(line[i], line[i + 1], line[i + 2]) for i in range(0, stride, bpp)]
        prev = line
    return w, h, pixels


def test_the_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    exe = _browser()
    out = tmp_path / "wf.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(40)))
    page = tmp_path / "report.html"
    assert cli.main(["report", str(out), "--html", str(page)]) == 0
    shot = tmp_path / "shot.png"
    screenshot(exe, page, shot, tmp_path / "profile")

    w, h, pixels = png_pixels(shot.read_bytes())
    assert (w, h) == (WIDTH, HEIGHT)
    grey = [sum(p) / 3 for p in pixels]
    mean = sum(grey) / len(grey)
    variance = sum((g - mean) ** 2 for g in grey) / len(grey)
    assert variance > 100, f"a blank screenshot (grey variance {variance:.1f})"
    dark = sum(g < 100 for g in grey)  # text
    bars = sum(all(abs(a - b) <= 12 for a, b in zip(p, BAR_RGB, strict=True)) for p in pixels)
    assert dark > 2000, f"no text on the page ({dark} dark pixels)"
    assert bars > 5000, f"no plot bars on the page ({bars} pixels of the bar colour)"

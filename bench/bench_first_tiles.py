"""Time from requesting the app's page to its first tiles drawn, as a user opening it sees it.

    python bench/bench_first_tiles.py [--repeats 3] [--port 0] [--reuse]

Each repeat starts the real app as scripts/app.sh does (`python -m ui.serve`: streamlit run
app.py, with the first page's imports and backbone loading from process start; headless, on a
free port; a fresh server unless --reuse), opens it in headless Chromium (Debian's chromium, driven by
Playwright, as tests/test_browser.py does) and measures from page.goto() to:
  - first tile: the first tile image drawn ('[data-testid=stMain] [data-testid=stImage] img'
    beyond the input image), and
  - all tiles: the default methods' five tile captions on the page.
It also prints the server start time (process start to /_stcore/health answering) and the
load average, because on a shared machine the numbers mean little without it. Issue 9's
goal: first tiles within 3 s on the 2-core machine, with nothing else running.

Measured on the 2-core machine (2026-11-28, --repeats 5, back to back, the same conditions):
the code before the default backbone was built without timm (867b84d) median 4.02 s to the
first tile, 4.14 s to all five; after it (Lite0 in plain PyTorch, no timm import on the first
page) 2.70 s and 2.92 s. Other quiet runs of --repeats 7: 2.56 s and 2.61 s (single runs
2.2-3.9 s: the server and Chromium share the two cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FIRST_TILE = "document.querySelectorAll(\"[data-testid='stMain'] [data-testid='stImage'] img\").length >= 2"
ALL_TILES = ("Array.from(document.querySelectorAll(\"[data-testid='stMain'] [data-testid='stCaptionContainer']\"))"
             ".filter(e => / ms · grid /.test(e.innerText)).length >= 5")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int) -> tuple[subprocess.Popen, float]:
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    t0 = time.perf_counter()
    # As scripts/app.sh (the README's command) starts it: ui.serve, i.e. streamlit run app.py with
    # the first page's imports and backbone loading from process start.
    proc = subprocess.Popen(
        [sys.executable, "-m", "ui.serve", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, time.perf_counter() - t0
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("streamlit did not start within 120 s")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def open_once(browser, url: str) -> tuple[float, float]:
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    try:
        t0 = time.perf_counter()
        page.goto(url)
        page.wait_for_function(FIRST_TILE, timeout=300_000, polling=50)
        first = time.perf_counter() - t0
        page.wait_for_function(ALL_TILES, timeout=300_000, polling=50)
        return first, time.perf_counter() - t0
    finally:
        page.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reuse", action="store_true", help="one server for every repeat (warm caches after the first)")
    args = ap.parse_args()
    chromium = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (apt install chromium)")
    from playwright.sync_api import sync_playwright

    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
    firsts, alls = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        proc = None
        try:
            for i in range(args.repeats):
                if proc is None or not args.reuse:
                    if proc is not None:
                        stop_app(proc)
                    port = free_port()
                    proc, started = start_app(port)
                    print(f"run {i + 1}: server up in {started:.2f} s")
                first, done = open_once(browser, f"http://127.0.0.1:{port}")
                firsts.append(first)
                alls.append(done)
                print(f"run {i + 1}: first tile {first:.2f} s, all five tiles {done:.2f} s "
                      f"(load average {os.getloadavg()[0]:.2f})")
        finally:
            if proc is not None:
                stop_app(proc)
            browser.close()
    print(f"median first tile {statistics.median(firsts):.2f} s, all tiles {statistics.median(alls):.2f} s "
          f"over {len(firsts)} runs ({'one server' if args.reuse else 'a fresh server each'})")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()

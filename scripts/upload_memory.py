"""How much server memory do big uploads hold? (issue 8; a measurement, not a timed test)

Starts the real app (streamlit run, headless, a free port), opens SESSIONS browser sessions
(separate Playwright contexts, Debian's chromium), and has them upload PER_SESSION PNGs each,
round-robin: 8000 x 5000 single-colour images (~125 KB on the wire, 40 MP decoded), made in a
temp dir. After each upload it waits until the page shows the new image's tiles and the run
has finished. It samples the server's resident memory (VmRSS of the server and any child
process, from /proc) all along, checks that each session still shows its last image (its name
in the sidebar caption), then closes the sessions and reads the memory once more.

Prints the RSS before the first session, once the sessions show the sample image (torch and
the model loaded: ~1.15 GB of the total on a CPU machine), the peak, after the uploads and
after closing the sessions, and PASS/FAIL: peak < --limit-gb and every session shows its last
image. Closed sessions are kept by Streamlit for server.disconnectedSessionTTL (120 s) for a
reconnect, so the last figure does not drop within --settle.

    PYTHONPATH=$PWD .venv/bin/python scripts/upload_memory.py [--port 8560] [--sessions 4] [--per-session 5]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The page has finished a run: no running-man icon in the status widget, no stale element left.
IDLE_JS = """() => !document.querySelector("[data-testid='stStatusWidgetRunningIcon'], "
                + "[data-testid='stStatusWidgetRunningManIcon'], [data-stale='true']")"""
TILE_CAPTION = re.compile(r" · [\d.]+ ms · \(")


def free_port(first: int = 8551, last: int = 8599) -> int:
    for port in range(first, last + 1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit(f"no free port in {first}-{last}")


def tree_rss(pid: int) -> int:
    """VmRSS in bytes of pid and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class Sampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.stop = pid, every, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            time.sleep(self.every)


def gb(n: int) -> str:
    return f"{n / 2**30:.2f} GB"


def make_pngs(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    from PIL import Image

    paths = []
    for i in range(count):
        colour = ((37 * i + 40) % 256, (91 * i + 120) % 256, (53 * i + 200) % 256)
        path = folder / f"big_{i:02d}.png"
        Image.new("RGB", size, colour).save(path)
        paths.append(path)
    return paths


def wait_for_tiles(page, name: str, timeout_ms: int) -> None:
    """The sidebar names the image, the main area shows it and its five tiles, the run is over."""
    sidebar = page.locator("[data-testid='stSidebar']")
    sidebar.get_by_text(re.compile("^" + re.escape(name) + " · ")).first.wait_for(timeout=timeout_ms)
    main = page.locator("[data-testid='stMain']")
    main.get_by_text(re.compile("^" + re.escape(name) + r" \(")).first.wait_for(timeout=timeout_ms)
    page.wait_for_function(IDLE_JS, timeout=timeout_ms, polling=250)
    tiles = main.get_by_text(TILE_CAPTION)
    deadline = time.time() + timeout_ms / 1000
    while tiles.count() < 5:
        if time.time() > deadline:
            raise TimeoutError(f"{name}: {tiles.count()} tiles shown")
        time.sleep(0.25)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--per-session", type=int, default=5)
    ap.add_argument("--size", default="8000x5000", help="W x H of the uploaded PNGs")
    ap.add_argument("--limit-gb", type=float, default=1.5)
    ap.add_argument("--settle", type=float, default=10.0, help="seconds to wait after closing the sessions")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one upload's tiles")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    chromium = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed")
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="upload_memory_"))
    t0 = time.time()
    pngs = make_pngs(tmp, args.sessions * args.per_session, (width, height))
    print(f"{len(pngs)} PNGs of {width}x{height}, {pngs[0].stat().st_size / 1024:.0f} KB each, "
          f"made in {time.time() - t0:.1f} s in {tmp}", flush=True)

    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    log_path = tmp / "server.log"
    log = open(log_path, "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    sampler = None
    ok = True
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("streamlit did not start:\n" + log_path.read_text())
                time.sleep(0.5)
        before = tree_rss(server.pid)
        print(f"server pid {server.pid} on {url}: RSS before any session {gb(before)}", flush=True)
        sampler = Sampler(server.pid)
        sampler.start()
        timeout_ms = int(args.timeout * 1000)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            contexts, pages = [], []
            for s in range(args.sessions):
                ctx = browser.new_context(viewport={"width": 1500, "height": 1100})
                page = ctx.new_page()
                page.goto(url)
                wait_for_tiles(page, "cat.png", timeout_ms)
                page.locator("[data-testid='stSidebar']").get_by_text("Upload", exact=True).click()
                page.locator("[data-testid='stFileUploaderDropzoneInput']").wait_for(state="attached",
                                                                                     timeout=timeout_ms)
                contexts.append(ctx)
                pages.append(page)
            opened = tree_rss(server.pid)
            print(f"{args.sessions} sessions open, sample image shown: RSS {gb(opened)}", flush=True)
            last: list[str | None] = [None] * args.sessions
            for i, png in enumerate(pngs):
                s = i % args.sessions
                t1 = time.time()
                pages[s].locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(png))
                wait_for_tiles(pages[s], png.name, timeout_ms)
                last[s] = png.name
                print(f"  upload {i + 1:2d} (session {s + 1}, {png.name}): tiles in {time.time() - t1:5.1f} s, "
                      f"RSS {gb(tree_rss(server.pid))}, peak so far {gb(sampler.peak)}", flush=True)
            after = tree_rss(server.pid)
            for s, page in enumerate(pages):
                caption = page.locator("[data-testid='stSidebar']").get_by_text(
                    re.compile("^" + re.escape(last[s]) + " · "))
                shown = caption.count() > 0
                note = caption.first.inner_text() if shown else "NOT SHOWN"
                print(f"session {s + 1}: sidebar caption: {note}", flush=True)
                ok &= shown
            for ctx in contexts:
                ctx.close()
            browser.close()
        time.sleep(args.settle)
        closed = tree_rss(server.pid)
        sampler.stop.set()
        sampler.join()
        peak = max(sampler.peak, after, closed)
        log.flush()
        failures = [line for line in log_path.read_text().splitlines() if "Error" in line or "Traceback" in line]
        print(f"RSS before {gb(before)} (server up, no session) · {gb(opened)} with {args.sessions} sessions on "
              f"the sample · peak {gb(peak)} · after the uploads {gb(after)} (+{gb(after - opened)}) · "
              f"{args.settle:.0f} s after closing the sessions {gb(closed)}")
        if failures:
            print("server log errors:\n  " + "\n  ".join(failures[:20]))
        passed = ok and peak < args.limit_gb * 2**30
        print(("PASS" if passed else "FAIL") + f": peak {gb(peak)} {'<' if peak < args.limit_gb * 2**30 else '>='} "
              f"{args.limit_gb} GB; last image of each session shown: {ok}")
        return 0 if passed else 1
    finally:
        if sampler is not None:
            sampler.stop.set()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

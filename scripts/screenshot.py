"""Screenshot of the Compare page for the README: serves the app, opens it in headless Chromium.

    .venv/bin/python scripts/screenshot.py [--out assets/screenshots/compare.png]
    .venv/bin/python scripts/screenshot.py --page feature_space --height 2500 \
        --wait-for "Clusters and what the classifier says of them" --out assets/screenshots/feature_space.png
"""

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "assets/screenshots/compare.png"))
    ap.add_argument("--page", default="", help="URL path of the page, e.g. feature_space")
    ap.add_argument("--wait-for", default="Eigen-CAM", help="text that shows the page is ready")
    ap.add_argument("--width", type=int, default=1500)
    ap.add_argument("--height", type=int, default=1450)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "ui.serve", "--server.port", str(port),
                               "--server.headless", "true"], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(f"http://127.0.0.1:{port}/{args.page}")
            page.get_by_text(args.wait_for, exact=True).first.wait_for(timeout=180_000)
            # the run has ended: the sidebar's running indicator is gone
            page.locator("[data-testid='stSidebar']").get_by_text("Working…").first.wait_for(state="detached",
                                                                                            timeout=180_000)
            page.wait_for_timeout(4000)
            page.screenshot(path=args.out)
            browser.close()
    finally:
        server.terminate()
    print("wrote", args.out)


if __name__ == "__main__":
    main()

"""End to end: a tile's download button still downloads while its page reruns and another
session's run ends (it failed with "Deferred file ... not found"; see
ui.common.keep_download_callables)."""

import re
import time

import pytest
from test_browser import browser, served_app  # noqa: F401 - the fixtures

pytestmark = [pytest.mark.browser, pytest.mark.slow]

IDLE = """() => !document.querySelector("[data-testid='stStatusWidgetRunningIcon'], "
           + "[data-testid='stStatusWidgetRunningManIcon'], [data-stale='true']")"""


def _open(browser, url):  # noqa: F811
    page = browser.new_context(viewport={"width": 1500, "height": 1400}, accept_downloads=True).new_page()
    page.goto(url)
    page.get_by_text(re.compile(r" · [\d.]+ ms · grid ")).first.wait_for(timeout=180_000)
    page.wait_for_function(IDLE, timeout=120_000, polling=250)
    return page


def _choose(page, key, text):
    box = page.locator(f".st-key-{key} input")
    box.click()
    box.type(text)
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")


def test_a_tile_download_works_while_the_page_reruns(served_app, browser):  # noqa: F811
    a, b = _open(browser, served_app), _open(browser, served_app)
    # B on another backbone: its own Explainer, whose lock A's Score-CAM does not hold.
    _choose(b, "backbone_choice", "random:resnet18")
    b.get_by_text(re.compile(r"^class-agnostic · [\d.]+ ms · grid 7 × 7")).first.wait_for(timeout=180_000)
    b.wait_for_function(IDLE, timeout=120_000, polling=250)
    # A: Score-CAM, a slow tile drawn after its channels are scored (seconds).
    _choose(a, "methods", "Score-CAM")
    on_screen = a.locator(".st-key-npy_scorecam_285 button")
    on_screen.wait_for(timeout=300_000)
    a.wait_for_function(IDLE, timeout=300_000, polling=250)
    # Another class: A reruns and scores the channels again; the old tile's buttons stay on
    # the screen (stale) until the new tile replaces them.
    a.get_by_role("button", name=re.compile(r"^tiger cat · ")).click()
    a.wait_for_function("() => !!document.querySelector(\"[data-stale='true']\")", timeout=60_000, polling=100)
    # B's run ends meanwhile: Streamlit's end-of-run sweep of every session's download files.
    b.locator("input[aria-label='Opacity']").focus()
    b.keyboard.press("ArrowLeft")
    time.sleep(0.5)
    b.wait_for_function(IDLE, timeout=60_000, polling=100)
    assert on_screen.count() == 1 and not a.evaluate(IDLE), "A's rerun ended too soon to test the click"
    downloads = []
    a.on("download", lambda d: downloads.append(d.suggested_filename))
    on_screen.click()
    error = a.locator("[data-testid='stDownloadButtonError']")
    deadline = time.time() + 60
    while not downloads and not error.count() and time.time() < deadline:
        time.sleep(0.1)
    assert not error.count(), error.all_inner_texts()  # was: "Failed to generate file for download"
    assert downloads == ["cat_scorecam_285.npy"]
    a.context.close()
    b.context.close()

"""End to end: the served app in headless Chromium (Debian's chromium, driven by Playwright)."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_app():
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ui.serve", "--server.headless", "true",  # as scripts/app.sh serves it
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not start: " + (proc.stdout.read() if proc.stdout else ""))
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        if os.environ.get("CAM_EXPLORER_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed (apt install chromium)")
        pytest.skip("chromium is not installed (apt install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _runs(page):
    """(page runs, fragment runs) from the page's Diagnostics caption."""
    caption = page.get_by_text(re.compile(r"page runs: \d+ · fragment runs: \d+")).last
    caption.wait_for(state="attached", timeout=30_000)  # read even while the expander is closed
    found = re.search(r"page runs: (\d+) · fragment runs: (\d+)", caption.text_content())
    return int(found.group(1)), int(found.group(2))


def test_feature_space_slider_reruns_only_the_fragment(served_app, browser):
    """Opened by its own URL on a fresh server (Streamlit's old pages/ mode must not take over),
    then K is moved with the keyboard: the fragment reruns, the page does not."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1500, "height": 1800})
    page.goto(served_app + "/feature_space")
    page.get_by_text("Pixels, class centres and prototypes").first.wait_for(timeout=180_000)
    nav = page.locator("[data-testid='stSidebarNav']")
    expect(nav).to_contain_text("Compare")
    expect(nav).not_to_contain_text("common")
    main = page.locator("[data-testid='stMain']")
    main.get_by_text("Diagnostics").wait_for(timeout=120_000)  # the fragment's last element
    main.get_by_text("Diagnostics").click()
    page_runs, fragment_runs = _runs(page)
    k = page.locator("input[aria-label='k']")
    assert k.get_attribute("aria-valuetext") == "12"
    k.focus()
    page.keyboard.press("ArrowLeft")
    expect(page.get_by_text(re.compile(rf"fragment runs: {fragment_runs + 1}\b"))).to_have_count(1, timeout=60_000)
    assert _runs(page) == (page_runs, fragment_runs + 1)
    assert page.locator("input[aria-label='k']").get_attribute("aria-valuetext") == "11"
    expect(page.get_by_text(re.compile(r"/11 class and"))).to_have_count(1, timeout=30_000)
    page.close()


def test_served_app_shows_the_grid_and_retargets(served_app, browser):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.goto(served_app)
    main = page.locator("section.stMain, [data-testid='stMain']").first
    # the five default tiles, each with its overlay image
    for title in ["CAM", "Grad-CAM", "Grad-CAM++", "LayerCAM", "Eigen-CAM"]:
        main.get_by_text(title, exact=True).first.wait_for(timeout=180_000)
    page.wait_for_function(
        "document.querySelectorAll(\"[data-testid='stMain'] [data-testid='stImage'] img\").length >= 6",
        timeout=60_000)
    # four class-specific tiles explain the top-1 class (Eigen-CAM is class-agnostic)
    expect(main.get_by_text(re.compile(r"^Egyptian cat · [\d.]+ ms"))).to_have_count(4, timeout=60_000)
    # click another prediction: the tiles now explain it
    main.get_by_role("button", name=re.compile(r"^tiger cat · ")).click()
    expect(main.get_by_text(re.compile(r"^tiger cat · [\d.]+ ms"))).to_have_count(4, timeout=60_000)
    expect(main.get_by_text(re.compile(r"^Egyptian cat · [\d.]+ ms"))).to_have_count(0)
    # the sample browser: a thumbnail click changes the whole page's image, not just the dialog
    page.get_by_role("button", name="Browse samples").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("button", name="dog", exact=True).click()
    expect(dialog).to_have_count(0, timeout=60_000)
    expect(main.get_by_text(re.compile(r"^German shepherd · [\d.]+ ms"))).to_have_count(4, timeout=120_000)
    page.close()


def test_a_tall_image_and_its_tiles_leave_the_controls_on_screen(served_app, browser):
    """Issue 9 item 8: a 200 x 1200 upload was drawn 1,179 px high and its tiles ~1,000 px."""
    import io

    import numpy as np
    from PIL import Image

    from ui.common import MAX_SHOWN_HEIGHT

    rgb = np.zeros((1200, 200, 3), np.uint8)
    rgb[300:900, 40:160] = (200, 120, 60)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(served_app)
    main = page.locator("[data-testid='stMain']")
    main.get_by_text("Eigen-CAM", exact=True).first.wait_for(timeout=180_000)
    page.locator("[data-testid='stSidebar']").get_by_text("Upload", exact=True).click()
    page.get_by_test_id("stSidebarUserContent").get_by_test_id("stFileUploaderDropzoneInput").set_input_files(
        files=[{"name": "tall.png", "mimeType": "image/png", "buffer": buf.getvalue()}])
    page.get_by_text(re.compile(r"tall\.png \(200×1200\)")).first.wait_for(timeout=120_000)
    page.wait_for_function(
        "document.querySelectorAll(\"[data-testid='stMain'] [data-testid='stImage'] img\").length >= 6",
        timeout=60_000)
    heights = [b["height"] for b in (img.bounding_box() for img in main.locator("[data-testid='stImage'] img").all())
               if b is not None]
    assert len(heights) >= 6 and max(heights) <= MAX_SHOWN_HEIGHT + 1, heights
    page.close()


def test_a_running_indicator_during_every_run_and_a_global_stop(served_app, browser):
    """Issue 9 item 5: the toolbar setting hides Streamlit's running indicator. The app shows
    its own while a run is in progress, gone when it ends, and its Stop stops a slow method."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(served_app)
    sidebar = page.locator("[data-testid='stSidebar']")
    main = page.locator("[data-testid='stMain']")
    main.get_by_text("Eigen-CAM", exact=True).first.wait_for(timeout=180_000)
    expect(sidebar.get_by_text("Working…")).to_have_count(0, timeout=120_000)  # the run has ended
    methods = main.locator("[data-testid='stMultiSelect'] input").first
    methods.click()
    methods.fill("Score-CAM (slow)")
    # The option itself: Enter would take the first entry, "Select 2 matches", and add Score-CAM
    # (top-N channels, slow) too (two slow methods stopped, two "Stopped.": what the old loose
    # count here allowed for).
    page.get_by_role("option", name="Score-CAM (slow)", exact=True).click()
    page.keyboard.press("Escape")
    sidebar.get_by_text("Working…").wait_for(state="visible", timeout=60_000)
    sidebar.get_by_role("button", name=re.compile("Stop")).click()
    expect(main.get_by_text("Stopped.")).to_have_count(1, timeout=120_000)  # one stopped slow method, one message
    expect(main.get_by_role("button", name="Run it")).to_have_count(1)
    expect(main.get_by_text(re.compile(r" ms · grid "))).to_have_count(5)  # the fast tiles only
    expect(sidebar.get_by_text("Working…")).to_have_count(0, timeout=60_000)


def _click_marker(page, trace_name: str, which: int = -1) -> str:
    """Click one marker of the feature plot's trace named `trace_name`; returns its hover text."""
    plot = page.locator("[data-testid='stPlotlyChart']").first
    plot.scroll_into_view_if_needed()
    index, label = page.evaluate(
        """([name, which]) => {
            const gd = document.querySelector("[data-testid='stPlotlyChart'] .js-plotly-plot");
            const t = gd.data.findIndex(d => d.name === name);
            const texts = gd.data[t].hovertext;
            return [t, texts[(which + texts.length) % texts.length]];
        }""", [trace_name, which])
    points = plot.locator("g.trace.scatter").nth(index).locator("path.point")
    box = points.nth(which % points.count()).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    return label


def test_clicking_a_class_centre_shows_its_similarity_map(served_app, browser):
    """Issue 9 item 2: a click on a centre marker selects it (Streamlit's chart drops click
    selection while the drag mode is lasso or box) and the map beside the plot follows it."""
    from playwright.sync_api import expect

    from cam_core.featurespace import CENTRE

    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(served_app + "/feature_space")
    main = page.locator("[data-testid='stMain']")
    main.get_by_text("Diagnostics").wait_for(timeout=180_000)
    caption = main.get_by_text(re.compile(r"^cosine similarity of every pixel to centre: "))
    expect(caption).to_have_count(1, timeout=60_000)
    first = caption.inner_text()
    label = _click_marker(page, CENTRE)  # the last centre: the 5th prediction, not the target
    assert label not in first
    expect(main.get_by_text(f"cosine similarity of every pixel to {label} (")).to_have_count(1, timeout=60_000)
    page.close()


def _wait_for_fragment_run(page, after: int) -> None:
    """Until the Diagnostics caption (the fragment's last element) reports a run after `after`."""
    from playwright.sync_api import expect

    expect(page.get_by_text(re.compile(rf"fragment runs: {after + 1}\b"))).to_have_count(1, timeout=240_000)


def test_no_tsne_progress_bar_stays_after_a_recompute(served_app, browser):
    """Issue 9 item 4: after a t-SNE recompute (perplexity, class) no 't-SNE 100%' bar stays."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(served_app + "/feature_space")
    main = page.locator("[data-testid='stMain']")
    main.get_by_text("Diagnostics").wait_for(timeout=180_000)
    main.get_by_text("Diagnostics").click()
    bars = main.locator("[data-testid='stProgress']")
    _, runs = _runs(page)
    main.get_by_text("t-SNE", exact=True).click()
    _wait_for_fragment_run(page, runs)
    for _ in range(2):  # the first recompute with a bar of an earlier t-SNE in the store, then another
        _, runs = _runs(page)
        page.locator("input[aria-label='Perplexity']").focus()
        page.keyboard.press("ArrowLeft")
        _wait_for_fragment_run(page, runs)
        expect(bars).to_have_count(0, timeout=5_000)
    page_runs, runs = _runs(page)
    classes = main.get_by_role("combobox", name="Class", exact=True)
    classes.scroll_into_view_if_needed()  # clicked while scrolled in by the click itself, it stays closed
    classes.click()
    page.get_by_role("option").nth(1).click()
    expect(page.get_by_text(re.compile(rf"page runs: {page_runs + 1} · "))).to_have_count(1, timeout=240_000)
    expect(bars).to_have_count(0, timeout=5_000)
    page.close()


def test_feature_plot_labels_and_title_fit_at_1280_px(served_app, browser):
    """Issue 9 item 7: the class-centre labels (near-synonyms: tiger cat, tabby, Egyptian cat,
    lynx) do not overlap and lie inside the plot area; the title is not cut at a 1280 px window."""
    from cam_core.featurespace import CENTRE

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(served_app + "/feature_space")
    page.locator("[data-testid='stMain']").get_by_text("Diagnostics").wait_for(timeout=180_000)
    plot = page.locator("[data-testid='stPlotlyChart']").first
    plot.scroll_into_view_if_needed()
    page.wait_for_timeout(1000)  # the chart's last resize to its column
    found = page.evaluate(
        """(centre) => {
            const gd = document.querySelector("[data-testid='stPlotlyChart'] .js-plotly-plot");
            const names = gd.data.find(d => d.name === centre).hovertext.map(t => t.replace(/^centre: /, ""));
            const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
            const labels = [...gd.querySelectorAll("text")].filter(t => names.includes(t.textContent)).map(box);
            return {names, labels, area: box(gd.querySelector(".nsewdrag")), svg: box(gd.querySelector("svg.main-svg")),
                    title: box(gd.querySelector(".gtitle"))};
        }""", CENTRE)
    assert len(found["labels"]) == len(found["names"]) == 5
    left, top, right, bottom = found["area"]
    for x0, y0, x1, y1 in found["labels"]:
        assert left <= x0 and x1 <= right + 1 and top - 1 <= y0 and y1 <= bottom + 1, (found["labels"], found["area"])
    boxes = found["labels"]
    for i, a in enumerate(boxes):
        for b in boxes[:i]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] + 1 or b[3] <= a[1] + 1, (a, b)
    assert found["svg"][0] <= found["title"][0] and found["title"][2] <= found["svg"][2]
    page.close()


def test_stopping_score_faithfulness_by_its_button_leaves_no_curve(served_app, browser):
    """Issue 10: the click on the faithfulness run's own Stop interrupts the run (AppTest cannot
    click during a run): no unfinished curve is shown, the page says so, and the run can start again."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(served_app)
    main = page.locator("[data-testid='stMain']")
    sidebar = page.locator("[data-testid='stSidebar']")
    main.get_by_text("Eigen-CAM", exact=True).first.wait_for(timeout=180_000)
    expect(sidebar.get_by_text("Working…")).to_have_count(0, timeout=120_000)
    main.get_by_role("button", name="Score faithfulness").click()
    main.get_by_text(re.compile(r"CAM: deletion \d+/\d+")).first.wait_for(timeout=120_000)  # mid-game
    main.get_by_role("button", name="Stop", exact=True).click()
    main.get_by_text(re.compile("Stopped: the curves of .* were not finished")).wait_for(timeout=120_000)
    expect(main.get_by_text(re.compile(r"\(AUC \d"))).to_have_count(0)
    expect(main.get_by_role("button", name="Score faithfulness")).to_be_enabled()
    page.close()


def test_fragment_reruns_show_the_running_indicator_and_its_stop_stops_tsne(served_app, browser):
    """Issue 9 item 5 for the Feature space page's fragment: its controls rerun only the
    fragment, which does not run app.py's indicator. A t-SNE there takes seconds: "Working…"
    shows in the sidebar while the fragment reruns, and its Stop stops the t-SNE (PCA stands
    in, with a Run it). A widget of the fragment could not interrupt the fragment's run
    (Streamlit queues its rerun after it): the Stop is a full rerun."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(served_app + "/feature_space")
    sidebar = page.locator("[data-testid='stSidebar']")
    main = page.locator("[data-testid='stMain']")
    main.get_by_text("Diagnostics").wait_for(timeout=180_000)
    main.get_by_text("Diagnostics").click()
    expect(sidebar.get_by_text("Working…")).to_have_count(0, timeout=120_000)
    # More pixel points, so that the t-SNE takes seconds: the pixel cloud at 4x the input.
    scale = page.locator("input[aria-label='Image at']")
    for _ in range(2):
        _, runs = _runs(page)
        scale.focus()
        page.keyboard.press("ArrowRight")
        _wait_for_fragment_run(page, runs)
    assert "4×" in page.locator("input[aria-label='Image at']").get_attribute("aria-valuetext")
    # Every appearance of the indicator is recorded, however short.
    page.evaluate("""() => {
        window.sawWorking = 0;
        const side = document.querySelector("[data-testid='stSidebar']");
        new MutationObserver(() => { if (side.innerText.includes("Working…")) window.sawWorking++; })
            .observe(side, {childList: true, subtree: true, characterData: true});
    }""")
    page_runs, runs = _runs(page)
    main.get_by_text("t-SNE", exact=True).click()
    sidebar.get_by_text("Working…").wait_for(state="visible", timeout=60_000)
    sidebar.get_by_role("button", name=re.compile("Stop")).click()
    expect(main.get_by_text("t-SNE stopped: the plot shows PCA until you click Run it.")).to_have_count(
        1, timeout=120_000)
    expect(main.get_by_role("button", name="Run it")).to_have_count(1)
    expect(sidebar.get_by_text("Working…")).to_have_count(0, timeout=60_000)
    assert page.evaluate("window.sawWorking") > 0
    assert _runs(page)[0] == page_runs + 1  # the t-SNE's fragment run, then the Stop's full run
    # Run it: the t-SNE runs, with the indicator up, and the warning goes.
    main.get_by_role("button", name="Run it").click()
    expect(page.get_by_text(re.compile(r"^TSNE of the pixels and centres computed in"))).to_have_count(
        1, timeout=240_000)
    expect(main.get_by_text("t-SNE stopped")).to_have_count(0)
    expect(sidebar.get_by_text("Working…")).to_have_count(0, timeout=60_000)
    page.close()

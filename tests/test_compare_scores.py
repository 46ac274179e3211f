"""AppTest of the Compare page's scores: ground truth found, uploaded or typed; the score line;
faithfulness curves; the agreement matrix."""

import io
import json

import numpy as np
import pytest
from helpers import SAMPLES
from PIL import Image

from cam_core import Explainer, load_backbone, load_image
from cam_core.cli import main
from cam_core.metrics import agreement, deletion, insertion
from cam_core.render import downscale_for_display, to_image_map


def _score_lines(at):
    return [c.value for c in at.caption if "drop " in c.value]


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_the_quokkas_mask_is_found_and_the_score_line_is_the_clis(app, tmp_path):
    app.multiselect(key="methods").set_value(["cam", "gradcam"]).run()
    app.selectbox(key="sample").set_value("quokka.jpg").run()
    assert not app.exception and not app.error
    assert any(c.value.startswith("Outlined in green: mask + 1 box(es) from quokka_mask.png") for c in app.caption)
    lines = _score_lines(app)
    assert len(lines) == 2
    out = tmp_path / "out"
    assert main(["explain", str(SAMPLES / "quokka.jpg"), "--methods", "cam,gradcam", "--out", str(out),
                 "--mask", str(SAMPLES / "masks" / "quokka_mask.png")]) == 0
    cli = json.loads((out / "summary.json").read_text())["images"]["quokka"]["methods"]
    for line, m in zip(lines, ["cam", "gradcam"]):
        s = cli[m]["metrics"]
        assert line.startswith(f"energy {s['energy']:.2f} · pointing {'✓' if s['pointing'] else '✗'} · "
                               f"best IoU {s['best_iou']:.2f} (t {s['best_iou_threshold']:.2f}) · drop "), (line, s)


def test_no_ground_truth_only_the_cheap_scores(app):
    assert any(c.value.startswith("No mask or box comes with this image") for c in app.caption)
    lines = _score_lines(app)
    assert len(lines) == 5 and all(line.startswith("drop ") for line in lines)


def test_a_typed_box_and_an_uploaded_mask_replace_the_found_one(app):
    app.selectbox(key="sample").set_value("quokka.jpg").run()
    app.multiselect(key="methods").set_value(["cam"]).run()
    found = _score_lines(app)
    app.text_input(key="gt_box").set_value("0,0,20,20").run()
    assert any(c.value.startswith("Outlined in green: 1 box(es) from the typed box") for c in app.caption)
    assert _score_lines(app)[0].startswith("energy 0.00 · pointing ✗")  # the quokka is not in the corner
    app.text_input(key="gt_box").set_value("5,5,2").run()
    assert any("four numbers" in e.value for e in app.error) and _score_lines(app) == found  # the found one stays
    app.text_input(key="gt_box").set_value("").run()
    w, h = Image.open(SAMPLES / "quokka.jpg").size
    wrong = np.full((h, w + 1), 255, np.uint8)
    app.file_uploader(key="gt_mask").set_value(("wrong.png", _png(wrong), "image/png")).run()
    assert any(f"wrong.png is {w + 1} x {h} pixels, the image {w} x {h}" in e.value for e in app.error)
    everything = np.full((h, w), 255, np.uint8)
    app.file_uploader(key="gt_mask").set_value(("all.png", _png(everything), "image/png")).run()
    assert not app.error and not app.exception
    line = _score_lines(app)[0]
    assert line.startswith("energy 1.00 · pointing ✓")  # every pixel is the object


@pytest.fixture(scope="module")
def testbed_cnn():
    return Explainer(load_backbone("testbed-cnn"))


@pytest.mark.slow
def test_score_faithfulness_plots_the_curves_of_the_shown_tiles(app, testbed_cnn):
    app.selectbox(key="backbone_choice").set_value("testbed-cnn").run()
    app.multiselect(key="methods").set_value(["cam", "layercam"]).run()
    assert not app.get("plotly_chart") or all(c.proto.id != "faith_plot" for c in app.get("plotly_chart"))
    app.button(key="faith_run").click().run()
    assert not app.exception, [e.value for e in app.exception]
    fig = json.loads(next(c for c in app.get("plotly_chart") if "deletion" in c.proto.spec).proto.spec)
    names = [t["name"] for t in fig["data"]]
    assert [n.split(" (AUC")[0] for n in names] == ["CAM deletion", "CAM insertion", "LayerCAM deletion",
                                                   "LayerCAM insertion"]
    image = load_image(SAMPLES / "cat.png")
    fwd = testbed_cnn.forward(image)
    t = int(fwd.probs.argmax())
    for method, (d_name, i_name) in (("cam", names[:2]), ("layercam", names[2:])):
        m = testbed_cnn.compute(image, method, t).map
        assert d_name.endswith(f"(AUC {deletion(fwd.backbone.model, fwd.input, m, t).auc:.3f})")
        assert i_name.endswith(f"(AUC {insertion(fwd.backbone.model, fwd.input, m, t).auc:.3f})")
    assert app.button(key="faith_run").disabled  # every shown tile is scored


def test_the_agreement_matrix_of_the_shown_maps(app, lite0, cat):
    app.multiselect(key="methods").set_value(["cam", "gradcam", "eigencam"]).run()
    fig = json.loads(next(c for c in app.get("plotly_chart") if "Pearson" in c.proto.spec).proto.spec)
    r, iou = (np.array(trace["z"], dtype=float) for trace in fig["data"])
    ex = Explainer(lite0)
    t = int(ex.forward(cat).probs.argmax())
    size = downscale_for_display(cat.rgb, 640)[0].shape[:2]
    maps = {m: to_image_map(ex.compute(cat, m, t).map, size, "minmax") for m in ("cam", "gradcam", "eigencam")}
    expected = agreement(maps, 0.5)
    assert np.allclose(r, expected.pearson, atol=1e-6) and np.allclose(iou, expected.iou, atol=1e-6)
    assert fig["data"][0]["x"] == ["CAM", "Grad-CAM", "Eigen-CAM"]


def test_the_ground_truth_is_outlined_on_the_image_and_the_tiles(app, lite0, monkeypatch):
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    from cam_core.groundtruth import find_ground_truth, outline
    from cam_core.render import render_tile

    sent: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def keep(self, path_or_data, mimetype, kind, filename=None):  # records what the page sends, unchanged
        file_id = original(self, path_or_data, mimetype, kind, filename)
        sent[file_id] = path_or_data
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", keep)
    app.multiselect(key="methods").set_value(["gradcam"]).run()
    app.selectbox(key="sample").set_value("quokka.jpg").run()

    def shown(element):
        url = element.value[0]
        return np.asarray(Image.open(io.BytesIO(sent[url.rsplit("/", 1)[1].split(".")[0]])).convert("RGB"))

    image = load_image(SAMPLES / "quokka.jpg")
    display = downscale_for_display(image.rgb, 640)[0]
    gt = find_ground_truth(SAMPLES / "quokka.jpg", image.size)
    pictures = [shown(e) for e in app.get("image")]
    ex = Explainer(lite0)
    m = ex.compute(image, "gradcam", int(ex.forward(image).probs.argmax())).map
    tile = render_tile(display, to_image_map(m, display.shape[:2], "minmax"), 0.5, "jet", 0.0)
    for picture, plain in ((pictures[0], display), (pictures[1], tile)):
        drawn = outline(plain, gt, (0, 255, 0))
        line = (drawn != plain).any(axis=-1)
        assert line.sum() > 1000  # the mask's contour and the box
        # Streamlit may re-encode what it is sent (JPEG): compared within a tolerance
        picture = picture[: plain.shape[0]]  # a tile is shown with its colour bar below it
        green = (picture[..., 1] > 200) & (picture[..., 0] < 90) & (picture[..., 2] < 90)
        assert green[line].mean() > 0.85 and green[~line].mean() < 0.01  # JPEG edges of a tile: ~0.89


def _faith_plot(at):
    return next((json.loads(c.proto.spec) for c in at.get("plotly_chart") if "deletion" in c.proto.spec), None)


def test_a_stopped_faithfulness_run_leaves_no_partial_curve_and_says_so(app, testbed_cnn, monkeypatch):
    import ui.common

    app.selectbox(key="backbone_choice").set_value("testbed-cnn").run()
    app.multiselect(key="methods").set_value(["cam", "layercam"]).run()
    asked = []

    def stop() -> bool:  # the sidebar's Stop, as the page sees it, mid-way through CAM's deletion game
        asked.append(1)
        return len(asked) > 5

    monkeypatch.setattr(ui.common, "stop_all_requested", stop)
    app.button(key="faith_run").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert any(w.value.startswith("Stopped: the curves of CAM were not finished") for w in app.warning)
    assert _faith_plot(app) is None and not app.button(key="faith_run").disabled  # nothing shown as complete
    app.run()
    assert _faith_plot(app) is None and any(w.value.startswith("Stopped: ") for w in app.warning)

    monkeypatch.setattr(ui.common, "stop_all_requested", lambda: False)
    app.button(key="faith_run").click().run()
    assert not any(w.value.startswith("Stopped: ") for w in app.warning)
    names = [t["name"] for t in _faith_plot(app)["data"]]
    assert [n.split(" (AUC")[0] for n in names] == ["CAM deletion", "CAM insertion", "LayerCAM deletion",
                                                   "LayerCAM insertion"]
    image = load_image(SAMPLES / "cat.png")
    fwd = testbed_cnn.forward(image)
    t = int(fwd.probs.argmax())
    m = testbed_cnn.compute(image, "cam", t).map
    assert names[0].endswith(f"(AUC {deletion(fwd.backbone.model, fwd.input, m, t).auc:.3f})")


def test_the_agreement_matrix_follows_the_class_picked_in_top_k(app, lite0, cat):
    app.multiselect(key="methods").set_value(["cam", "gradcampp", "eigencam"]).run()
    app.number_input(key="topk").set_value(2).run()
    assert not app.exception, [e.value for e in app.exception]
    ex = Explainer(lite0)
    first, second = ex.forward(cat).probs.topk(2).indices.tolist()
    size = downscale_for_display(cat.rgb, 640)[0].shape[:2]

    def shown():
        fig = json.loads(next(c for c in app.get("plotly_chart") if "Pearson" in c.proto.spec).proto.spec)
        return [np.array(trace["z"], dtype=float) for trace in fig["data"]]

    def expected(t):
        return agreement({m: to_image_map(ex.compute(cat, m, t).map, size, "minmax")
                          for m in ("cam", "gradcampp", "eigencam")}, 0.5)

    assert app.selectbox(key="agree_class").value == first
    r, iou = shown()
    assert np.allclose(r, expected(first).pearson, atol=1e-6) and np.allclose(iou, expected(first).iou, atol=1e-6)
    app.selectbox(key="agree_class").set_value(second).run()
    r, iou = shown()
    assert np.allclose(r, expected(second).pearson, atol=1e-6) and np.allclose(iou, expected(second).iou, atol=1e-6)
    assert not np.allclose(r, expected(first).pearson, atol=1e-3)  # another class, another matrix


def test_the_score_line_is_scored_at_the_tiles_input_size(app):
    """At input size 2x the tile's map comes from the 448 px forward pass: its "drop" is
    measured on that pass's input, not on the model's default 224 px one (the map's 14 x 14
    grid stretched over a 224 input would score another picture)."""
    from cam_core.metrics import confidence_change

    app.multiselect(key="methods").set_value(["cam"]).run()
    app.selectbox(key="input_size").set_value("2x").run()
    assert not app.exception and not app.error
    (line,) = _score_lines(app)
    ex = Explainer(load_backbone("efficientnet_lite0"))
    cat = load_image(SAMPLES / "cat.png")

    def drop(size):
        fwd = ex.forward(cat, None, size)
        target = int(fwd.probs.argmax())
        res = ex.compute(cat, "cam", target, input_size=size)
        return confidence_change(ex.backbone.model, fwd.input, res.map, target).drop

    at_2x, at_1x = drop("2x"), drop(None)
    assert f"{at_2x:.1%}" != f"{at_1x:.1%}"  # the test can tell the two apart
    assert line.startswith(f"drop {at_2x:.1%}"), (line, at_2x, at_1x)

"""Page tests with Streamlit's AppTest: the Compare page as a user drives it."""

import io

import pytest
from helpers import ROOT, awkward_images, page_titles
from PIL import Image



def _tile_captions(at):
    return [c.value for c in at.caption if " ms · grid " in c.value]


def _stats(at):
    return dict(at.session_state["selection"].explainer.stats)


def test_opens_with_sample_and_offline_lite0(app):
    assert app.selectbox(key="backbone_choice").value == "efficientnet_lite0"
    assert app.selectbox(key="sample").value == "cat.png"
    assert page_titles(app) == ["CAM", "Grad-CAM", "Grad-CAM++", "LayerCAM", "Eigen-CAM"]
    assert any("Egyptian cat" in b.label for b in app.button)
    assert not app.error


def test_choosing_methods_makes_tiles(app):
    app.multiselect(key="methods").set_value(["hirescam", "xgradcam", "cam"]).run()
    assert page_titles(app) == ["HiResCAM", "XGrad-CAM", "CAM"]
    captions = _tile_captions(app)
    assert len(captions) == 3 and all(c.startswith("Egyptian cat") for c in captions)
    assert len([b for b in app.get("download_button")]) == 3 * 2 + 1  # PNG + NPY per tile, grid


@pytest.mark.parametrize("key,value", [("threshold", 0.4), ("opacity", 0.9), ("per_row", 2)])
def test_display_controls_do_not_recompute(app, key, value):
    before = _stats(app)
    app.slider(key=key).set_value(value).run()
    assert not app.exception
    assert _stats(app) == before
    assert len(page_titles(app)) == 5


def test_colormap_and_normalisation_do_not_recompute(app):
    before = _stats(app)
    app.selectbox(key="cmap").set_value("viridis").run()
    app.radio(key="norm").set_value("max").run()
    assert _stats(app) == before and not app.exception


def test_clicking_a_prediction_changes_the_target_without_a_new_forward(app):
    before = _stats(app)
    tabby = next(b for b in app.button if b.label.startswith("tabby"))
    tabby.click().run()
    captions = _tile_captions(app)
    assert captions and all(c.startswith("tabby") or c.startswith("class-agnostic") for c in captions)
    after = _stats(app)
    assert after["forwards"] == before["forwards"]
    assert after["maps"] == before["maps"] + 4  # four class-specific maps; Eigen-CAM is reused


def test_class_search_and_topk(app):
    app.text_input(key="class_query").set_value("lynx").run()
    app.button(key="use_pick").click().run()
    assert any(c.startswith("lynx") for c in _tile_captions(app))
    app.number_input(key="topk").set_value(3).run()
    assert [s.value for s in app.subheader][:3] == ["Egyptian cat (class 285)", "tiger cat (class 282)", "tabby (class 281)"]
    captions = _tile_captions(app)
    # four class-specific default methods per class, Eigen-CAM (class-agnostic) once
    assert len(captions) == 3 * 4 + 1 and sum(c.startswith("class-agnostic") for c in captions) == 1


@pytest.mark.parametrize("name,data,error", awkward_images(), ids=[a[0] for a in awkward_images()])
def test_awkward_uploads_are_shown_or_refused_and_the_app_keeps_working(app, name, data, error):
    app.radio(key="image_source").set_value("Upload").run()
    app.file_uploader(key="upload").set_value((name, data, "application/octet-stream")).run()
    assert not app.exception
    errors = [e.value for e in app.error]
    if error:
        assert any(error in e for e in errors), errors
        assert any(b.label.startswith("Egyptian cat") for b in app.button)  # the last good image stays
    else:
        assert not errors
        assert any(c.value.startswith(name) for c in app.sidebar.caption)  # now showing the upload
    assert len(page_titles(app)) == 5


def test_good_upload_replaces_the_image(app):
    buf = io.BytesIO()
    Image.open(ROOT / "assets/samples/coffee.png").convert("RGBA").save(buf, format="PNG")
    app.radio(key="image_source").set_value("Upload").run()
    app.file_uploader(key="upload").set_value(("coffee.png", buf.getvalue(), "image/png")).run()
    assert not app.exception and not app.error
    assert any(b.label.startswith("espresso") for b in app.button)


def test_score_cam_topn_runs_with_its_parameters(app):
    app.multiselect(key="methods").set_value(["scorecam_topn"]).run()
    app.number_input(key="param_scorecam_topn_channels").set_value(8).run()
    assert page_titles(app) == ["Score-CAM (top-N channels)"]
    assert any("approximate" in c for c in _tile_captions(app))


def test_path_outside_allowed_folders_is_refused(app):
    app.radio(key="image_source").set_value("Path").run()
    app.text_input(key="image_path").set_value("/etc/passwd").run()
    assert any("outside the allowed folders" in e.value for e in app.error)
    app.text_input(key="image_path").set_value("dog.jpg").run()
    assert not app.error and not app.exception


def test_offline_hub_backbone_is_a_message_not_a_traceback(app, monkeypatch):
    from cam_core.backbones.sources import hub

    monkeypatch.setattr(hub, "_hub_reachable", lambda *a, **k: False)
    app.selectbox(key="backbone_choice").set_value("timm hub model (online)…").run()
    assert not app.exception
    assert any("Offline choices" in e.value for e in app.error)
    assert len(page_titles(app)) == 5  # still the previous backbone's tiles


def test_the_vit_testbed_loads_and_offers_its_own_methods(app):
    """Issue 9 item 1: picking testbed-vit loads it (its conv head refused LPCAM's warm-up,
    and the page silently stayed on the previous backbone); only the methods that apply
    are offered, the ViT's own (TS-CAM, rollout) among the defaults."""
    app.selectbox(key="backbone_choice").set_value("testbed-vit").run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert app.session_state["selection"].backbone.name == "testbed-vit"
    offered = app.multiselect(key="methods").options
    assert "LPCAM" not in offered and "TS-CAM" in offered
    titles = page_titles(app)
    assert {"TS-CAM", "Attention rollout", "CAM"} <= set(titles), titles
    assert len(_tile_captions(app)) == len(titles)  # every tile drawn, none an error


def test_a_ci_cam_network_offers_its_causal_branch_map_in_the_grid(app):
    """Issue 12: the shipped KD-CI-CAM student loads from the sidebar, CI-CAM (the down branch's
    CAM) is offered for it (and for no other backbone: see test_zoo) and draws a tile."""
    app.selectbox(key="backbone_choice").set_value("testbed2-kd-ci-cam").run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert app.session_state["selection"].backbone.name == "testbed2-kd-ci-cam"
    assert "CI-CAM" in app.multiselect(key="methods").options
    app.multiselect(key="methods").set_value(["CAM", "CI-CAM"]).run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert {"CAM", "CI-CAM"} <= set(page_titles(app))
    assert len(_tile_captions(app)) == len(page_titles(app))


def test_in_topk_mode_a_prediction_or_a_searched_class_is_explained(app):
    """Issue 9 item 3: with k > 1 the top-5 buttons and "Explain this class" did nothing."""
    app.number_input(key="topk").set_value(3).run()
    next(b for b in app.button if b.label.startswith("lynx") or b.label.startswith("tabby")).click().run()
    captions = _tile_captions(app)
    clicked = captions[0].split(" · ")[0]
    assert clicked in ("lynx", "tabby") and not [h for h in app.subheader if "(class " in h.value]  # one row
    assert all(c.startswith(clicked) or c.startswith("class-agnostic") for c in captions), captions
    app.number_input(key="topk").set_value(3).run()
    app.text_input(key="class_query").set_value("goldfish").run()
    app.button(key="use_pick").click().run()
    assert all(c.startswith("goldfish") or c.startswith("class-agnostic") for c in _tile_captions(app))
    assert app.number_input(key="topk").value == 1


def test_topk_rows_line_up_by_method(app):
    """Issue 9 item 6: every class's row has the same columns, in the chosen order; the
    class-agnostic Eigen-CAM is drawn once and its place marked in the other rows."""
    app.number_input(key="topk").set_value(3).run()
    labels = ["CAM", "Grad-CAM", "Grad-CAM++", "LayerCAM", "Eigen-CAM"]
    assert page_titles(app) == labels * 3
    assert sum("class-agnostic: the same map" in c.value for c in app.caption) == 2
    assert sum(c.startswith("class-agnostic") for c in _tile_captions(app)) == 1


def test_grid_png_keeps_the_screen_order_and_says_the_settings(app, monkeypatch):
    """Issue 9 item 9: slow methods were put last in the grid PNG, which had no settings."""
    from ui import common

    seen = {}
    real = common.grid_png

    def spy(tiles, columns, title, cmap, norm):
        seen.update(captions=[c for c, _ in tiles], title=title)
        return real(tiles, columns, title, cmap, norm)

    monkeypatch.setattr(common, "grid_png", spy)
    app.multiselect(key="methods").set_value(["scorecam_topn", "cam"]).run()
    app.number_input(key="param_scorecam_topn_channels").set_value(8).run()
    assert not app.exception
    assert [c.split(" | ")[0] for c in seen["captions"]] == ["image", "Score-CAM (top-N channels)", "CAM"]
    for part in ("cat.png", "efficientnet_lite0", "layer", "Egyptian cat", "minmax"):
        assert part in seen["title"], seen["title"]


def test_input_size_in_the_sidebar_feeds_every_method_and_the_top5(app):
    """Issue 11 item 1: 2x the model's input gives Lite0 a 14 x 14 grid (7 x 7 at 224), and
    the top-5 is the one computed at that size."""
    from cam_core import Explainer, load_backbone, load_image
    from helpers import SAMPLES

    assert all(c.endswith("grid 7 × 7") for c in _tile_captions(app))
    app.selectbox(key="input_size").set_value("2x").run()
    assert not app.exception and not app.error
    captions = _tile_captions(app)
    assert len(captions) == 5 and all("grid 14 × 14" in c for c in captions), captions
    assert any("fed to the model at 448 × 448" in c.value for c in app.sidebar.caption)
    expected = Explainer(load_backbone("efficientnet_lite0")).predict(load_image(SAMPLES / "cat.png"), 5, input_size="2x")
    shown = [b.label for b in app.button if b.key and b.key.startswith("pred_")]
    assert shown == [f"{load_backbone('efficientnet_lite0').short_name(p.index)} · {p.probability:.1%}" for p in expected]


def test_input_size_is_fixed_for_a_vit_built_for_one_size(app):
    app.selectbox(key="backbone_choice").set_value("testbed-vit").run()
    box = app.selectbox(key="input_size_fixed")
    assert box.disabled and "inputs only" in box.help


def test_class_search_says_the_id_range_and_labels_read_right(app):
    """Issue 9 item 13: "9999" said "No class name matches"; a slow method read
    "Score-CAM (top-N channels) (slow)"; the backbone's description was cut off in the box."""
    app.text_input(key="class_query").set_value("9999").run()
    assert any("class ids 0 to 999" in w.value for w in app.warning), [w.value for w in app.warning]
    options = app.multiselect(key="methods").options
    assert "Score-CAM (top-N channels, slow)" in options and not any(") (" in o for o in options)
    box = app.selectbox(key="backbone_choice")
    assert box.format_func(box.value) == "efficientnet_lite0"
    assert any(c.value.startswith("EfficientNet-Lite0, ImageNet") for c in app.sidebar.caption)


def test_no_widget_is_given_both_a_default_and_a_state(monkeypatch):
    """Issue 9 item 13: the server log repeated "widget created with a default value but also
    set via Session State" (topk): each warning the Compare page makes, recorded."""
    from streamlit.elements.lib import policies
    from streamlit.testing.v1 import AppTest

    warned = []
    monkeypatch.setattr(policies, "_shown_default_value_warning", False)
    monkeypatch.setattr(policies._LOGGER, "warning", lambda msg, *args, **kw: warned.append(msg % args))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    at.slider(key="opacity").set_value(0.7).run()
    at.number_input(key="topk").set_value(2).run()
    at.number_input(key="topk").set_value(1).run()
    assert not at.exception
    assert not [w for w in warned if "default value" in w], warned
    assert at.slider(key="opacity").value == 0.7 and at.slider(key="per_row").value == 5


def test_a_misclassified_sample_says_what_the_photo_shows(app):
    """Issue 9 item 15: with Lite0, horses.jpg is taken for something else and nothing said so."""
    from ui.common import truths

    app.selectbox(key="sample").set_value("horses.jpg").run()
    assert not app.exception
    top1 = next(b.label for b in app.button if b.key and b.key.startswith("pred_")).split(" · ")[0]
    assert top1 != "sorrel"
    notes = [w.value for w in app.warning if "the photo shows" in w.value]
    assert notes == [f"efficientnet_lite0 says **{top1}**; the photo shows {truths()['horses.jpg'].shows}. "
                     "Explain the top-1 to see what it looked at."], notes
    app.selectbox(key="sample").set_value("coffee.png").run()  # espresso: the model is right
    assert not [w for w in app.warning if "the photo shows" in w.value]
    assert any(c.value == "The photo shows an espresso in a cup." for c in app.caption)


def test_every_sample_has_its_truth_recorded():
    from cam_core.backbones.names import imagenet_class_names
    from ui.common import sample_names, truths

    assert sorted(truths()) == sample_names()
    assert all(0 <= i < len(imagenet_class_names()) for t in truths().values() for i in t.classes)


def test_how_to_read_this_page_is_one_click_away(app):
    """Issue 9 item 16: what a CAM is, why CAM, Grad-CAM and XGrad-CAM coincide, prototypes."""
    text = " ".join(m.value for m in app.markdown)
    for part in ("A class activation map (CAM)", "Why CAM, Grad-CAM and XGrad-CAM coincide", "Prototypes"):
        assert part in text
    assert page_titles(app) == ["CAM", "Grad-CAM", "Grad-CAM++", "LayerCAM", "Eigen-CAM"]  # tiles unchanged


def test_the_feature_space_page_says_why_it_does_not_apply_to_the_vit_testbed(app):
    """testbed-vit became reachable (issue 9 item 1): its conv head has no class centres to
    place, which the Feature space page must say instead of raising."""
    app.selectbox(key="backbone_choice").set_value("testbed-vit").run()
    app.switch_page("pages/feature_space.py").run()
    assert not app.exception, [e.message for e in app.exception]
    assert any("cannot be scored" in i.value for i in app.info), [i.value for i in app.info]


def test_the_sample_browser_says_what_each_photo_shows(app):
    from ui.common import truths

    next(b for b in app.button if b.label == "Browse samples").click().run()
    assert not app.exception
    captions = {c.value for c in app.caption}
    assert truths()["horses.jpg"].shows in captions
    assert "a dahlia (ImageNet has no dahlia)" in captions


def test_the_first_page_warms_up_only_the_methods_it_shows(monkeypatch):
    """Issue 9 item 17: loading a backbone warmed up every method before the first tiles
    (8.9 s to them); now the page warms up what it shows, once, after drawing it."""
    from streamlit.testing.v1 import AppTest

    from cam_core import Explainer
    from ui import common

    calls = []
    real = Explainer.warm_up

    def spy(self, methods=None):
        calls.append(None if methods is None else list(methods))
        return real(self, methods)

    monkeypatch.setattr(Explainer, "warm_up", spy)
    common.get_explainer.clear()  # a fresh explainer, as on a fresh server
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    assert calls == [["cam", "gradcam", "gradcampp", "layercam", "eigencam"]]
    at.slider(key="opacity").set_value(0.8).run()
    assert len(calls) == 1 and len(page_titles(at)) == 5

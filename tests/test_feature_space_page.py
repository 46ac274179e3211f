"""AppTest of the Feature Space page. AppTest reruns the whole script even for a widget inside
a fragment, so these tests prove the caching half of "a slider reruns only what depends on
it" (no forward pass, no other method); the fragment half is checked in the real browser
(tests/test_browser.py), where the page's own run counters are visible."""

import json

import pytest
import torch
from helpers import ROOT
from streamlit.proto.PlotlyChart_pb2 import PlotlyChart
from streamlit.testing.v1 import AppTest

APP = str(ROOT / "app.py")
DICTIONARY_TITLE, USED = "CI-CAM dictionary", "used for this image"  # the page's (importing it runs it)


@pytest.fixture
def page():
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    at.switch_page("pages/feature_space.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _stats(at):
    return dict(at.session_state["selection"].explainer.stats)


def _captions(at, start):
    return [c.value for c in at.caption if c.value.startswith(start)]


def _image_captions(at, start):
    return [img.caption for el in at.get("image") for img in el.proto.imgs if img.caption.startswith(start)]


def test_page_shows_lpcam_sipe_and_the_embedding(page):
    assert not page.error
    assert {"LPCAM", "SIPE", "Pixels, class centres and prototypes"} <= {s.value for s in page.subheader}
    assert _captions(page, "LPCAM: ") and _captions(page, "SIPE: ") and _captions(page, "Threshold: ")
    assert page.get("plotly_chart")
    assert DICTIONARY_TITLE not in {s.value for s in page.subheader}  # EfficientNet is no CI-CAM network


@pytest.mark.parametrize("key,value", [("fs_lp_k", 6), ("fs_lp_tau", 0.3), ("fs_lp_rule", "softmax")])
def test_lpcam_controls_recompute_lpcam_only(page, key, value):
    before = _stats(page)
    widget = page.selectbox(key=key) if key == "fs_lp_rule" else page.slider(key=key)
    widget.set_value(value).run()
    assert not page.exception and not page.error
    after = _stats(page)
    assert after["forwards"] == before["forwards"]
    assert after["maps:lpcam"] == before["maps:lpcam"] + 1
    for other in ("maps:cam", "maps:sipe", "maps:gradcam"):
        assert after.get(other) == before.get(other), other


def test_sipe_background_factor_recomputes_sipe_only(page):
    before = _stats(page)
    page.slider(key="fs_sipe_bg_factor").set_value(1.0).run()
    after = _stats(page)
    assert after["maps:sipe"] == before["maps:sipe"] + 1
    assert after["maps:lpcam"] == before["maps:lpcam"] and after["forwards"] == before["forwards"]


def test_display_and_colour_controls_recompute_nothing(page):
    before = _stats(page)
    page.slider(key="fs_threshold").set_value(0.4).run()
    page.selectbox(key="fs_colour").set_value("SIPE seed").run()
    page.selectbox(key="fs_colour").set_value("K-means cluster (LPCAM)").run()
    assert _stats(page) == before and not page.exception


def test_k_larger_than_the_pixels_is_a_message(page):
    page.slider(key="fs_lp_tau").set_value(0.9).run()
    page.slider(key="fs_lp_k").set_value(40).run()
    assert any("is larger than the" in e.value for e in page.error)
    assert not page.exception
    assert _captions(page, "SIPE: ")  # the rest of the page still works


@pytest.mark.slow
def test_build_a_bank_from_a_folder_and_find_it_on_the_next_start(tmp_path, monkeypatch):
    monkeypatch.setenv("CAM_EXPLORER_BANK_DIR", str(tmp_path / "banks"))
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("pages/feature_space.py").run()
    at.selectbox(key="fs_bank_efficientnet_lite0").set_value("build from a folder…").run()
    at.text_input(key="fs_bank_name").set_value("samples").run()
    at.button(key="fs_build").click().run()
    assert not at.exception, [e.value for e in at.exception]
    saved = tmp_path / "banks" / "samples.safetensors"
    assert saved.exists()
    assert at.selectbox(key="fs_bank_efficientnet_lite0").value == "samples.safetensors"
    assert any("bank: samples" in c for c in _captions(at, "LPCAM: "))
    assert any("ignored masks/" in w.value for w in at.warning)
    # the next start: a new session finds the bank selected again
    again = AppTest.from_file(APP, default_timeout=300)
    again.run()
    again.switch_page("pages/feature_space.py").run()
    assert again.selectbox(key="fs_bank_efficientnet_lite0").value == "samples.safetensors"
    assert any("bank: samples" in c for c in _captions(again, "LPCAM: "))


def test_similarity_map_of_the_class_centre_then_of_a_prototype(page):
    pick = next(s for s in page.selectbox if s.label == "Similarity map of")
    target = page.selectbox(key="fs_target").value
    assert pick.format_func(pick.value).endswith(f"({target})")  # the target's own centre first
    assert _image_captions(page, "cosine similarity of every pixel to centre: ")
    proto = next(o for o in pick.options if "prototype" in o)
    pick.set_value(proto).run()
    assert not page.exception
    assert _image_captions(page, "cosine similarity of every pixel to class prototype")


def test_controls_survive_a_visit_to_the_other_page():
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    at.slider(key="opacity").set_value(0.8).run()
    at.multiselect(key="methods").set_value(["cam", "layercam"]).run()
    at.switch_page("pages/feature_space.py").run()
    at.slider(key="fs_lp_k").set_value(7).run()
    at.switch_page("pages/compare.py").run()
    assert at.slider(key="opacity").value == 0.8
    assert at.multiselect(key="methods").value == ["cam", "layercam"]
    at.switch_page("pages/feature_space.py").run()
    assert at.slider(key="fs_lp_k").value == 7
    assert not at.exception


def _plot(at):
    """The feature plot's proto and its figure (the Plotly JSON the browser draws)."""
    proto = at.get("plotly_chart")[0].proto
    return proto, json.loads(proto.spec)


def _select_in_plot(at, indices):
    """Rerun as the browser does after a click or a lasso in the plot: the chart's selection
    state carries each selected point's customdata (its index in the page's point list).
    AppTest has no Plotly element, so the state is added to the widget states by hand."""
    proto, _ = _plot(at)
    states = at._tree.get_widget_states()
    state = states.widgets.add()
    state.id = proto.id
    state.string_value = json.dumps({"selection": {"points": [{"customdata": i} for i in indices],
                                                   "point_indices": list(indices), "box": [], "lasso": []}})
    at._run(states)
    assert not at.exception, [e.value for e in at.exception]


def test_a_click_on_a_marker_selects_it(page):
    """Issue 9 item 2: Streamlit's chart sets clickmode 'event' (a click selects nothing) while
    the figure's drag mode is lasso or box; the page must leave a mode in which a click selects."""
    proto, fig = _plot(page)
    assert PlotlyChart.SelectionMode.POINTS in proto.selection_mode
    assert fig["layout"].get("dragmode") not in ("select", "lasso")
    assert "select" in fig["layout"].get("clickmode", "event+select")


def test_clicked_centre_drives_the_similarity_map_then_the_list_wins(page):
    _, fig = _plot(page)
    centres = next(t for t in fig["data"] if t["name"].startswith("class centre"))
    index, label = centres["customdata"][-1], centres["hovertext"][-1]  # the 5th prediction's centre
    _select_in_plot(page, [index])
    pick = next(s for s in page.selectbox if s.label == "Similarity map of")
    assert pick.value == index  # the list follows the click
    assert _image_captions(page, f"cosine similarity of every pixel to {label} (")
    proto = next(o for o in pick.options if "prototype" in o)
    pick.set_value(proto)
    _select_in_plot(page, [index])  # the same selection again: the list's new choice wins
    assert _image_captions(page, "cosine similarity of every pixel to class prototype")


def test_kmeans_colours_keep_foreground_and_context_clusters_apart_and_say_which_is_which(page):
    """Issue 9 item 10: colouring pixels by K-means cluster, fg/class clusters and bg/context
    clusters never share a colour (Plotly's colourway repeats every 10 traces), and a legend
    caption says what class, fg, context and bg clusters are."""
    page.selectbox(key="fs_colour").set_value("K-means cluster (LPCAM)").run()
    _, fig = _plot(page)
    colours = {}
    for trace in fig["data"]:
        if trace["name"].startswith("pixel: "):
            group = trace["name"].split()[1]
            colours.setdefault("fg" if group in ("class", "fg") else "bg", []).append(trace["marker"].get("color"))
    assert set(colours) == {"fg", "bg"}
    assert None not in colours["fg"] + colours["bg"]
    assert not set(colours["fg"]) & set(colours["bg"])
    legend = " ".join(c.value for c in page.caption)
    for word in ("**class k**", "**fg k**", "**context k**", "**bg k**"):
        assert word in legend


def test_sipe_seed_legend_and_prototypes_name_the_classes(page):
    """Issue 9 item 10: with several classes, the seed overlay has a legend of class names, and
    SIPE's prototypes and the bank are shown by class name, not id."""
    page.slider(key="fs_sipe_classes").set_value(3).run()
    assert not page.exception
    preds = [o.split(" (")[0] for o in page.selectbox(key="fs_target").options][:3]
    legends = [el.proto.body for el in page.get("html")]
    assert any(all(name in body for name in preds) for body in legends), (legends, preds)
    pick = next(s for s in page.selectbox if s.label == "Similarity map of")
    sipe = [o for o in pick.options if o.startswith("SIPE: ")]
    assert f"SIPE: {preds[0]}" in sipe  # (a background prototype only where background was seeded)
    assert not any(o[6:].isdigit() for o in sipe)


def test_rule_auto_on_a_1000_class_head_disables_the_softmax_thresholds_and_says_why(page):
    """Issue 9 item 11: with rule=auto on Lite0 (1000 classes: the rank rule) mu_f and mu_b do
    nothing, so they are disabled with the reason; the softmax rule enables them."""
    assert page.slider(key="fs_lp_mu_f").disabled and page.slider(key="fs_lp_mu_b").disabled
    assert not page.slider(key="fs_lp_rank").disabled
    assert "rank rule to this 1000-class head" in page.slider(key="fs_lp_mu_f").help
    assert any(c.value.startswith("Not used now: mu_f, mu_b, mu_low:") for c in page.caption)
    page.selectbox(key="fs_lp_rule").set_value("softmax").run()
    assert not page.slider(key="fs_lp_mu_f").disabled and not page.slider(key="fs_lp_mu_b").disabled
    assert page.slider(key="fs_lp_rank").disabled


def test_no_default_value_and_session_state_warning_for_the_pages_widgets(monkeypatch):
    """Issue 9 item 13: the sidebar re-assigns each page key on every run; a widget also given
    a default then makes Streamlit log "created with a default value but also had its value
    set via the Session State API" (seen for fs_threshold). Streamlit logs it once per process:
    the flag is reset before every check so that each widget is tried."""
    from streamlit.elements.lib import policies

    warned = []
    check = policies.check_session_state_rules

    def every_time(*args, **kwargs):
        monkeypatch.setattr(policies, "_shown_default_value_warning", False)
        return check(*args, **kwargs)

    monkeypatch.setattr(policies, "check_session_state_rules", every_time)
    monkeypatch.setattr(policies._LOGGER, "warning", lambda msg, *args, **kw: warned.append(msg % args))
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    at.switch_page("pages/feature_space.py").run()
    at.slider(key="fs_lp_k").set_value(6).run()
    at.slider(key="fs_threshold").set_value(0.3).run()
    assert not at.exception
    assert not [w for w in warned if 'key "fs_' in w], warned
    # ... and no widget became clearable for it (a number input or selectbox drawn without a default)
    for widget in [*at.number_input, *at.selectbox]:
        if widget.key and widget.key.startswith("fs_"):
            assert widget.proto.HasField("default"), widget.key


def test_how_to_read_this_page_is_one_click_away(page):
    """Issue 9 item 16: a closed expander near the top says what the points, centres,
    prototypes and seeds are and what t-SNE distances do and do not mean."""
    guide = next(e for e in page.expander if e.label == "How to read this page")
    assert not guide.proto.expanded
    text = " ".join(m.value for m in guide.markdown)
    for words in ("classifier's weight rows", "class prototypes", "context prototypes", "SIPE seeds",
                  "t-SNE keeps neighbourhoods", "mean nothing"):
        assert words in text, words


def test_the_sidebars_input_size_reaches_every_map_and_the_pixel_cloud():
    """Issue 9: the page computed LPCAM, SIPE, CAM and the pixel cloud at the model's default
    input whatever the sidebar's "Input size" said. At 2x, EfficientNet-Lite0 is fed 448 px
    (its stride-32 head grid 14 x 14), and the page's own "Image at" scale is relative to that."""
    from cam_core.methods import get_method

    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.selectbox(key="input_size").set_value("2x").run()
    at.switch_page("pages/feature_space.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    # The explainer has the page's maps at 448 px cached: computing them again makes no new map.
    sel = at.session_state["selection"]
    target = at.selectbox(key="fs_target").value
    before = _stats(at)
    cam = sel.explainer.compute(sel.image, "cam", target, input_size="2x")
    sipe = sel.explainer.compute(sel.image, "sipe", target, input_size="2x",
                                 params={p.name: at.session_state[f"fs_sipe_{p.name}"] for p in get_method("sipe").params})
    assert cam.input_size == sipe.input_size == (448, 448) and cam.grid == (14, 14)
    assert _stats(at) == before
    # ... and the page says so, as the Compare page's tiles do.
    for start in ("LPCAM: ", "SIPE: "):
        (caption,) = _captions(at, start)
        assert "input 448 × 448 · grid " in caption, caption
    assert _image_captions(at, "CAM · input 448 × 448 · grid 14 × 14")
    assert _image_captions(at, "LPCAM · input 448 × 448 · grid 14 × 14")
    # "Image at" 2x (the default) is 2x of the 448 px input: a 28 x 28 grid of pixel points.
    scale = at.select_slider(key="fs_scale")
    assert scale.value == 2.0 and "2× (896 × 896 px)" in scale.options
    assert any("28 × 28 feature grid of the image at 2× the input (896 × 896 px)" in c.value for c in at.caption)


def _page_with(backbone, sample="cat.png"):
    """The page with `backbone` and the sample image chosen from the start (no EfficientNet run first)."""
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["backbone_choice"] = backbone
    at.session_state["sample"] = sample
    at.run()
    at.switch_page("pages/feature_space.py").run()
    assert not at.exception, [e.value for e in at.exception]
    sel = at.session_state["selection"]
    assert sel.explainer.backbone.name == backbone and sel.image.name == sample
    return at


def _dictionary_captions(at):
    """The captions of the images the CI-CAM dictionary panel shows, each image's own."""
    out = []
    for el in at.get("image"):
        out += [img.caption for img in el.proto.imgs]
    return [c for c in out if " · up " in c]


def _marked_top1(at):
    """(the index of the entry marked as used, the up branch's top-1 class) for the page's image."""
    sel = at.session_state["selection"]
    bb = sel.explainer.backbone
    captions = _dictionary_captions(at)
    assert [c.split(" · ")[0] for c in captions] == [bb.short_name(k) for k in range(len(bb.class_names))]
    assert len(captions) == len(bb.class_names) == 8
    fwd = sel.explainer.forward(sel.image, input_size=sel.input_size)
    with torch.no_grad():
        branches = bb.model.branches(fwd.input)
    return [k for k, c in enumerate(captions) if c.endswith(USED)], int(branches.up_logits.argmax())


def test_ci_cam_dictionary_panel_names_every_entry_and_marks_the_top1_class():
    """Issue 12: for a CI-CAM backbone, the dictionary's K entries captioned by class name, the
    entry of the up branch's top-1 class marked as used (not the network's prediction, the down
    branch's, where the two differ); absent for any other backbone. One session, the sidebar's
    backbone and image changed in it as a user would."""
    at = _page_with("testbed2-ci-cam", "orange.jpg")  # its up branch's top-1: chev (6), not the usual bar (4)
    assert DICTIONARY_TITLE in [s.value for s in at.subheader]
    used, top1 = _marked_top1(at)
    assert used == [top1] == [6]
    assert any(img.caption.startswith("attention magnitude ‖A‖") for el in at.get("image") for img in el.proto.imgs)

    # KD-CI-CAM on apple.jpg: the up branch says tri (3), the network bar (4); the entry used is tri's.
    at.selectbox(key="backbone_choice").set_value("testbed2-kd-ci-cam").run()
    at.selectbox(key="sample").set_value("apple.jpg").run()
    assert not at.exception, [e.value for e in at.exception]
    used, top1 = _marked_top1(at)
    assert used == [top1] == [3]
    assert any("The network's prediction (the down branch's top-1) is bar." in c.value for c in at.caption)

    # Not CI-CAM: no panel. (random:resnet18, not testbed-cnn: a testbed-cnn page builds its dataset bank
    # first, ~55 s in this test session's empty cache; the default EfficientNet's test checks it too.)
    at.selectbox(key="backbone_choice").set_value("random:resnet18").run()
    assert not at.exception and not at.error
    assert {"LPCAM", "SIPE"} <= {s.value for s in at.subheader}
    assert DICTIONARY_TITLE not in [s.value for s in at.subheader]
    assert not _dictionary_captions(at)

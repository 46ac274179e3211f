"""Page tests (AppTest) of what the sidebar keeps: large uploads bounded, typed paths that
cannot be read, and the download callables."""

import gc

import numpy as np
import pytest
import torch
from helpers import ROOT, encode
from PIL import Image
from streamlit.testing.v1 import AppTest

from cam_core import from_array
from cam_core.images import WORKING_MAX_SIDE

APP = str(ROOT / "app.py")


@pytest.fixture
def app():
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _titles(at):
    return [m.value.strip("*") for m in at.markdown if m.value.startswith("**") and m.value.endswith("**")]


def test_large_upload_is_downscaled_with_a_note_in_the_sidebar(app):
    data = encode(Image.new("RGB", (8000, 5000), (120, 90, 40)), "PNG")
    app.radio(key="image_source").set_value("Upload").run()
    app.file_uploader(key="upload").set_value(("huge_flat.png", data, "image/png")).run()
    assert not app.exception and not app.error
    captions = [c.value for c in app.sidebar.caption if c.value.startswith("huge_flat.png")]
    assert captions == ["huge_flat.png · 2048×1280 · downscaled from 8000x5000 to 2048x1280"]
    image = app.session_state["last_image"]
    assert image.rgb.nbytes <= WORKING_MAX_SIDE**2 * 3 and not image.rgb.flags.writeable
    assert len(_titles(app)) == 5
    # a rerun (any widget) neither decodes again nor copies: the session keeps the same object
    app.slider(key="opacity").set_value(0.8).run()
    assert app.session_state["last_image"] is image


@pytest.mark.parametrize("typed", ["cat\x00.png", "\x00", "../assets/samples/\x00/dog.jpg"])
def test_a_nul_byte_in_a_typed_path_is_an_error_and_the_image_stays(app, typed):
    app.radio(key="image_source").set_value("Path").run()
    app.text_input(key="image_path").set_value(typed).run()
    assert not app.exception, [e.value for e in app.exception]
    assert app.sidebar.error, "no error shown"
    assert any(b.label.startswith("Egyptian cat") for b in app.button)  # the last good image stays
    assert len(_titles(app)) == 5
    app.text_input(key="image_path").set_value("dog.jpg").run()  # and the next good path works
    assert not app.error and not app.exception
    assert any(c.value.startswith("dog.jpg") for c in app.sidebar.caption)


def test_a_nul_byte_in_a_checkpoint_path_is_an_error(app):
    app.selectbox(key="backbone_choice").set_value("local checkpoint…").run()
    app.text_input(key="ckpt_path").set_value("model\x00.pth").run()
    assert not app.exception, [e.value for e in app.exception]
    assert app.sidebar.error
    assert len(_titles(app)) == 5  # still the previous backbone's tiles

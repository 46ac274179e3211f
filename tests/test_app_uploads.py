"""Page tests (AppTest) of what the sidebar keeps: large uploads bounded, typed paths that
cannot be read, and the download callables."""

import gc

import numpy as np
import pytest
import torch
from helpers import ROOT, encode, page_titles
from PIL import Image

from cam_core import from_array
from cam_core.images import WORKING_MAX_SIDE



def test_large_upload_is_downscaled_with_a_note_in_the_sidebar(app):
    data = encode(Image.new("RGB", (8000, 5000), (120, 90, 40)), "PNG")
    app.radio(key="image_source").set_value("Upload").run()
    app.file_uploader(key="upload").set_value(("huge_flat.png", data, "image/png")).run()
    assert not app.exception and not app.error
    captions = [c.value for c in app.sidebar.caption if c.value.startswith("huge_flat.png")]
    assert captions == ["huge_flat.png · 2048×1280 · downscaled from 8000x5000 to 2048x1280"]
    image = app.session_state["last_image"]
    assert image.rgb.nbytes <= WORKING_MAX_SIDE**2 * 3 and not image.rgb.flags.writeable
    assert len(page_titles(app)) == 5
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
    assert len(page_titles(app)) == 5
    app.text_input(key="image_path").set_value("dog.jpg").run()  # and the next good path works
    assert not app.error and not app.exception
    assert any(c.value.startswith("dog.jpg") for c in app.sidebar.caption)


def test_a_nul_byte_in_a_checkpoint_path_is_an_error(app):
    app.selectbox(key="backbone_choice").set_value("local checkpoint…").run()
    app.text_input(key="ckpt_path").set_value("model\x00.pth").run()
    assert not app.exception, [e.value for e in app.exception]
    assert app.sidebar.error
    assert len(page_titles(app)) == 5  # still the previous backbone's tiles


def test_a_png_given_as_a_checkpoint_is_called_not_a_checkpoint(app):
    """Issue 9 item 12: it said the file "holds Python objects besides tensors"."""
    app.selectbox(key="backbone_choice").set_value("local checkpoint…").run()
    app.text_input(key="ckpt_path").set_value("cat.png").run()
    assert not app.exception
    errors = [e.value for e in app.sidebar.error]
    assert any("cat.png is not a checkpoint" in e for e in errors) and not any("Python objects" in e for e in errors)
    assert len(page_titles(app)) == 5  # still the previous backbone's tiles


def test_download_callables_make_the_files_and_hold_only_a_weak_reference_to_the_image():
    from ui.common import tile_npy, tile_png

    rgb = np.zeros((30, 40, 3), np.uint8)
    image = from_array(rgb, "x.png")
    m = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    npy, png = tile_npy(image, m, "minmax"), tile_png(image, m, "minmax", 0.5, "jet", 0.0)
    import io

    arr = np.load(io.BytesIO(npy()))
    assert arr.shape == (30, 40) and arr.dtype == np.float32 and arr.min() == 0 and arr.max() == 1
    width, height = Image.open(io.BytesIO(png())).size
    assert width == 40 and height > 30  # the tile at the image's own size, over its colour bar
    del image
    gc.collect()
    with pytest.raises(RuntimeError, match="no longer loaded"):
        npy()


def test_earlier_images_are_not_kept_alive_by_the_page(app):
    """Streamlit keeps the metadata (callback, format_func) of every widget a session ever drew;
    a callback defined in the page script held that run's globals, and so each earlier image
    (with its forward pass and tiles) for the session's whole life."""
    from ui.common import decoded_images

    from cam_core import LoadedImage

    app.radio(key="image_source").set_value("Upload").run()
    names = ["dog.jpg", "coffee.png", "robin.jpg", "squirrel.jpg"]  # other top-5 classes: other buttons
    for name in names:
        data = (ROOT / "assets" / "samples" / name).read_bytes()
        app.file_uploader(key="upload").set_value((f"up_{name}", data, "image/png")).run()
        assert not app.exception and any(c.value.startswith(f"up_{name}") for c in app.sidebar.caption)
    decoded_images().clear()  # the shared cache may keep them; the session may not
    gc.collect()
    alive = {o.name for o in gc.get_objects() if type(o) is LoadedImage and o.name.startswith("up_")}
    # Streamlit's session state keeps the previous run's values until the next run: one more.
    assert "up_squirrel.jpg" in alive and alive <= {"up_squirrel.jpg", "up_robin.jpg"}, alive


def test_the_readme_counts_the_bundled_samples_right():
    """Issue 9 item 14: the README said 24 bundled samples; there are 22."""
    import re

    from ui.common import sample_names

    said = re.search(r"(\d+) bundled samples", (ROOT / "README.md").read_text())
    assert said and int(said.group(1)) == len(sample_names())

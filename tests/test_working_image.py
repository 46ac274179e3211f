"""Large images are kept as a bounded working copy: downscaled once on load, with a note."""

import tracemalloc

import numpy as np
import pytest
from helpers import awkward_images, encode
from PIL import Image

from cam_core import ImageError, load_image
from cam_core.images import WORKING_MAX_SIDE, bound_image, load_working_image, pixel_hash, working_size

BOUND = WORKING_MAX_SIDE * WORKING_MAX_SIDE * 3


@pytest.fixture(scope="module")
def big_png():
    """The issue's upload: 8000 x 5000, one colour, ~125 KB as a PNG, 120 MB decoded."""
    return encode(Image.new("RGB", (8000, 5000), (10, 200, 30)), "PNG")


def test_a_large_upload_is_downscaled_once_and_says_so(big_png):
    assert len(big_png) < 300_000
    tracemalloc.start()
    try:
        image = load_working_image(big_png, "big.png")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.size == (1280, 2048) and image.rgb.nbytes <= BOUND
    assert image.notes == ("downscaled from 8000x5000 to 2048x1280",)
    assert (image.rgb == (10, 200, 30)).all()  # area resampling keeps a flat colour exact
    assert image.sha256 == pixel_hash(image.rgb)
    assert load_working_image(big_png, "big.png").sha256 == image.sha256  # stable: a cache key
    # No full-size NumPy copy on the way (load_image makes two: the array and its hash's bytes,
    # 240 MB): Python-side allocations stay near the working copy's 7.9 MB.
    assert peak < 40 * 2**20, f"{peak / 2**20:.0f} MB allocated"


def test_a_large_file_is_downscaled_too(big_png, tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(big_png)
    image = load_working_image(path)
    assert image.name == "big.png" and image.size == (1280, 2048) and image.notes[-1].startswith("downscaled")


@pytest.mark.parametrize("size", [(64, 48), (WORKING_MAX_SIDE, 7), (5, WORKING_MAX_SIDE)])
def test_an_image_within_the_bound_is_untouched(size):
    rgb = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    data = encode(Image.fromarray(rgb), "PNG")
    image = load_working_image(data, "small.png")
    reference = load_image(data, "small.png")
    assert image.notes == reference.notes == () and image.sha256 == reference.sha256
    assert np.array_equal(image.rgb, rgb)
    assert bound_image(reference) is reference


def test_rotated_jpeg_reports_the_size_the_user_sees():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 3000 x 1000, shown 1000 x 3000
    data = encode(Image.new("RGB", (3000, 1000), (200, 30, 30)), "JPEG", exif=exif)
    image = load_working_image(data, "rotated.jpg")
    assert image.size == (2048, 683)
    assert image.notes == ("rotated according to its EXIF orientation", "downscaled from 1000x3000 to 683x2048")


def _extra_kinds():
    rgb = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    return [
        ("bw.png", encode(Image.fromarray(rgb[..., 0] > 128), "PNG")),
        ("la.png", encode(Image.fromarray(rgb).convert("LA"), "PNG")),
        ("transparent.png", encode(Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE), "PNG", transparency=3)),
        ("float.tif", encode(Image.fromarray(rgb[..., 0].astype(np.float32) * 3.3), "TIFF")),
        ("int32.tif", encode(Image.fromarray(rgb[..., 0].astype(np.int32) * 200), "TIFF")),
        ("animated.gif",
         encode(Image.fromarray(rgb), "GIF", save_all=True, append_images=[Image.fromarray(255 - rgb)])),
    ]


@pytest.mark.parametrize("name,data", [(n, d) for n, d, e in awkward_images() if e is None] + _extra_kinds())
def test_every_kind_of_image_downscales_as_if_decoded_then_shrunk(name, data):
    """The bounded decoder converts in another order (alpha after the resize...): same picture,
    same notes as load_image followed by bound_image."""
    fast = load_working_image(data, name, max_side=32)
    slow = bound_image(load_image(data, name), 32)
    assert fast.size == slow.size and max(fast.size) == 32
    assert fast.notes == slow.notes and fast.notes[-1].startswith("downscaled from")
    assert np.abs(fast.rgb.astype(int) - slow.rgb.astype(int)).max() <= 2


@pytest.mark.parametrize("name,data,error", [a for a in awkward_images() if a[2]], ids=lambda v: str(v)[:12])
def test_refusals_are_load_images(name, data, error):
    with pytest.raises(ImageError, match=error):
        load_working_image(data, name, max_side=8)


def test_working_size():
    assert working_size(8000, 5000) == (2048, 1280)
    assert working_size(100, 50) == (100, 50)
    assert working_size(5000, 1, 100) == (100, 1)

"""Every kind of bad or unusual image a new user might try: shown correctly or refused clearly."""

import numpy as np
import pytest
from helpers import encode as _encode
from helpers import png_header_only as _png_header_only
from PIL import Image

from cam_core import MAX_PIXELS, ImageError, load_image
from cam_core.images import resolve_under


def test_non_image_is_refused():
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"hello, I am a text file\n" * 10, "notes.txt")


def test_empty_file_is_refused(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(p)


def test_truncated_jpeg_is_refused():
    data = _encode(Image.new("RGB", (200, 200), (10, 200, 30)), "JPEG", quality=90)
    with pytest.raises(ImageError, match="broken or truncated"):
        load_image(data[: len(data) // 2], "half.jpg")


def test_huge_png_is_refused_before_decoding():
    with pytest.raises(ImageError, match=r"400 megapixels, above the limit of 40 megapixels"):
        load_image(_png_header_only(20000, 20000), "huge.png")
    # Between our limit and Pillow's own guard (~179 MP): refused by ours, with the size.
    with pytest.raises(ImageError, match=r"8000x6000 is 48 megapixels, above the limit of 40"):
        load_image(_png_header_only(8000, 6000), "big.png")
    assert MAX_PIXELS == 40_000_000


def test_16bit_grayscale_png_is_scaled_not_clipped():
    arr = np.array([[0, 32896, 65535, 1000]], dtype=np.uint16).repeat(4, 0)
    data = _encode(Image.fromarray(arr), "PNG")
    img = load_image(data, "deep.png")
    assert img.rgb.dtype == np.uint8 and img.rgb.shape == (4, 4, 3)
    assert list(img.rgb[0, :, 0]) == [0, 128, 255, 4]
    assert any("16 bit" in n for n in img.notes)


def test_cmyk_jpeg_becomes_rgb():
    data = _encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)
    img = load_image(data, "cmyk.jpg")
    r, g, b = img.rgb[16, 16].astype(int)
    assert r > 200 and g < 60 and b < 60  # pure red in CMYK
    assert any("CMYK" in n for n in img.notes)


def test_grayscale_repeated_on_three_channels():
    img = load_image(_encode(Image.new("L", (8, 6), 77), "PNG"), "gray.png")
    assert img.rgb.shape == (6, 8, 3) and (img.rgb == 77).all()


def test_rgba_transparent_pixels_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    img = load_image(_encode(rgba, "PNG"), "alpha.png")
    assert tuple(img.rgb[0, 0]) == (255, 255, 255) and tuple(img.rgb[1, 1]) == (255, 0, 0)


def test_palette_gif_with_transparency():
    pal = Image.new("P", (6, 6), 1)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 0)
    img = load_image(_encode(pal, "GIF", transparency=0), "pal.gif")
    assert tuple(img.rgb[3, 3]) == (0, 0, 255) and tuple(img.rgb[0, 0]) == (255, 255, 255)


def test_exif_rotated_jpeg_is_shown_upright():
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # stored: left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img = load_image(_encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif), "rot.jpg")
    assert img.rgb.shape == (40, 20, 3)
    assert img.rgb[5, 10, 0] > 200 and img.rgb[35, 10, 0] < 50  # red now on top
    assert any("EXIF" in n for n in img.notes)


def test_same_pixels_same_hash_regardless_of_container():
    arr = (np.arange(48 * 48 * 3) % 251).astype(np.uint8).reshape(48, 48, 3)
    a = load_image(_encode(Image.fromarray(arr), "PNG"), "a.png")
    b = load_image(_encode(Image.fromarray(arr), "BMP"), "b.bmp")
    assert a.sha256 == b.sha256 and a.name != b.name


def test_paths_outside_allowed_folders_are_refused(tmp_path):
    inside = tmp_path / "imgs"
    inside.mkdir()
    (inside / "x.png").write_bytes(_encode(Image.new("RGB", (4, 4)), "PNG"))
    assert resolve_under("x.png", [inside]) == (inside / "x.png").resolve()
    with pytest.raises(ImageError, match="outside the allowed folders"):
        resolve_under("../../etc/passwd", [inside])
    with pytest.raises(ImageError, match="outside the allowed folders"):
        resolve_under("/etc/hostname", [inside])

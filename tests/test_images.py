"""Every kind of bad or unusual image a new user might try: shown correctly or refused clearly."""

import io
import sys

import numpy as np
import pytest
from helpers import encode as _encode
from helpers import png_header_only as _png_header_only
from PIL import Image

from cam_core import MAX_PIXELS, ImageError, from_array, load_image
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
    with pytest.raises(ImageError, match=r"^big\.png: 8000x6000 is 48 megapixels, above the limit of 40"):
        load_image(_png_header_only(8000, 6000), "big.png")
    assert MAX_PIXELS == 40_000_000


def test_16bit_grayscale_png_is_scaled_not_clipped():
    arr = np.array([[0, 32896, 65535, 1000]], dtype=np.uint16).repeat(4, 0)
    data = _encode(Image.fromarray(arr), "PNG")
    img = load_image(data, "deep.png")
    assert img.rgb.dtype == np.uint8 and img.rgb.shape == (4, 4, 3)
    assert list(img.rgb[0, :, 0]) == [0, 128, 255, 4]
    assert any("16 bit" in n for n in img.notes)


def _gray_image(mode, values):
    """A 1-row image of `mode` holding `values` (put pixel by pixel: Pillow keeps the mode)."""
    img = Image.new(mode, (len(values), 1))
    for x, v in enumerate(values):
        img.putpixel((x, 0), v)
    assert img.mode == mode
    return img


_GRAY = "grayscale image repeated on three channels"


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I;16N"])
def test_every_16bit_mode_is_scaled_by_257_and_says_so(mode):
    img = load_image(_gray_image(mode, [0, 1000, 32896, 65535]), "deep.tif")
    assert img.rgb[0, :, 0].tolist() == [0, 4, 128, 255] and (img.rgb == img.rgb[:, :, :1]).all()
    assert img.notes == (f"{mode} image scaled from 16 bit to 8 bit", _GRAY)


def test_32bit_integer_image_in_8bit_range_is_kept_and_clipped_below_zero():
    """Mode I (32-bit integers) whose values fit 8 bits: taken as they are (negatives to 0), no note."""
    img = load_image(_gray_image("I", [-5, 0, 100, 255]), "small.tif")
    assert img.rgb[0, :, 0].tolist() == [0, 0, 100, 255]
    assert img.notes == (_GRAY,)


def test_32bit_integer_image_above_255_is_scaled_as_16_bit_and_clipped():
    """Mode I with values above 255 (from 256 on): divided by 257 like 16-bit data, what falls
    outside 0..255 clipped (not wrapped around)."""
    img = load_image(_gray_image("I", [0, 256]), "deep.tif")
    assert img.rgb[0, :, 0].tolist() == [0, 1]
    assert img.notes == ("I image scaled from 16 bit to 8 bit", _GRAY)
    img = load_image(_gray_image("I", [-514, 1000, 65535, 70000]), "deep.tif")
    assert img.rgb[0, :, 0].tolist() == [0, 4, 255, 255]


def test_float_image_is_min_max_scaled_with_nan_as_black():
    """Mode F: (x - min) / (max - min) * 255, NaN as 0. min -1, max 4: -1, 0, 2, 4 -> 0, 51, 153, 255."""
    img = load_image(_gray_image("F", [-1.0, 0.0, 2.0, 4.0, float("nan")]), "depth.tif")
    assert img.rgb[0, :, 0].tolist() == [0, 51, 153, 255, 0]
    assert img.notes == ("floating-point image min-max scaled to 8 bit", _GRAY)
    # values above 255 are min-max scaled too, not taken for 16-bit data
    assert load_image(_gray_image("F", [0.0, 102.0, 510.0]), "depth.tif").rgb[0, :, 0].tolist() == [0, 51, 255]
    flat = load_image(_gray_image("F", [3.0, 3.0]), "flat.tif")  # no range: black, not a division by 0
    assert flat.rgb.tolist() == [[[0, 0, 0], [0, 0, 0]]]


def test_cmyk_jpeg_becomes_rgb():
    data = _encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)
    img = load_image(data, "cmyk.jpg")
    r, g, b = img.rgb[16, 16].astype(int)
    assert r > 200 and g < 60 and b < 60  # pure red in CMYK
    assert img.notes == ("CMYK converted to RGB",)


def test_grayscale_repeated_on_three_channels():
    img = load_image(_encode(Image.new("L", (8, 6), 77), "PNG"), "gray.png")
    assert img.rgb.shape == (6, 8, 3) and (img.rgb == 77).all()


def test_rgba_transparent_pixels_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    img = load_image(_encode(rgba, "PNG"), "alpha.png")
    assert tuple(img.rgb[0, 0]) == (255, 255, 255) and tuple(img.rgb[1, 1]) == (255, 0, 0)


def test_alpha_is_composited_on_white_exactly_and_said_for_every_alpha_mode():
    """Transparent -> white, opaque -> the colour, black at alpha 128 -> 127 grey; RGBA, LA and PA
    alike, with the note. An opaque RGBA is left as it is, without the note."""
    note = ("transparent pixels composited on white",)
    rgba = Image.new("RGBA", (3, 1))
    for x, px in enumerate([(0, 0, 0, 0), (10, 20, 30, 255), (0, 0, 0, 128)]):
        rgba.putpixel((x, 0), px)
    img = load_image(rgba, "alpha.png")
    assert img.rgb.tolist() == [[[255, 255, 255], [10, 20, 30], [127, 127, 127]]] and img.notes == note
    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (0, 0))
    la.putpixel((1, 0), (50, 255))
    img = load_image(la, "la.png")
    assert img.rgb.tolist() == [[[255, 255, 255], [50, 50, 50]]] and img.notes == note
    pa = Image.new("PA", (2, 1))
    pa.putpalette([0, 0, 0, 50, 60, 70] + [0] * 762)
    pa.putpixel((0, 0), (1, 0))
    pa.putpixel((1, 0), (1, 255))
    img = load_image(pa, "pa.png")
    assert img.rgb.tolist() == [[[255, 255, 255], [50, 60, 70]]] and img.notes == note
    opaque = load_image(Image.new("RGBA", (2, 1), (10, 20, 30, 255)), "opaque.png")
    assert opaque.rgb.tolist() == [[[10, 20, 30], [10, 20, 30]]] and opaque.notes == ()


def test_one_bit_image_is_grayscale_on_three_channels():
    bw = Image.new("1", (2, 1))
    bw.putpixel((1, 0), 1)
    img = load_image(bw, "bw.png")
    assert img.rgb.tolist() == [[[0, 0, 0], [255, 255, 255]]] and img.notes == (_GRAY,)


def test_animated_gif_gives_its_first_frame_and_says_so():
    red, blue = Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))
    data = _encode(red, "GIF", save_all=True, append_images=[blue], duration=100)
    for img in (load_image(data, "anim.gif"), load_image(Image.open(io.BytesIO(data)), "anim.gif")):
        assert tuple(img.rgb[2, 2]) == (255, 0, 0) and img.notes == ("first frame of an animated image",)
    assert load_image(_encode(red, "GIF"), "still.gif").notes == ()


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


@pytest.mark.parametrize("orientation, red_on_the_left, notes", [
    (1, True, ()), (2, False, ("rotated according to its EXIF orientation",))])
def test_exif_orientation_1_is_left_alone_and_2_is_mirrored(orientation, red_on_the_left, notes):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # stored: left half red
    exif = Image.Exif()
    exif[0x0112] = orientation
    img = load_image(_encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif), "flip.jpg")
    assert img.rgb.shape == (20, 40, 3) and (img.rgb[10, 5, 0] > 200) == red_on_the_left
    assert (img.rgb[10, 35, 0] > 200) != red_on_the_left and img.notes == notes


def test_pil_images_are_refused_by_name_when_empty_oversized_or_broken():
    with pytest.raises(ImageError) as err:
        load_image(Image.new("RGB", (0, 0)), "empty.png")
    assert str(err.value) == "empty.png: the image has no pixels (0x0)"
    with pytest.raises(ImageError, match=r"^big\.png: 10x10 is 0\.0001 megapixels, above the limit of 5e-05"):
        load_image(Image.new("RGB", (10, 10)), "big.png", max_pixels=50)
    cut = _encode(Image.new("RGB", (64, 64), (9, 9, 9)), "PNG")
    lazy = Image.open(io.BytesIO(cut[: len(cut) // 2]))  # opened (header read), not decoded
    with pytest.raises(ImageError, match=r"^cut\.png: the image data is broken or truncated: ."):
        load_image(lazy, "cut.png")


def test_the_hash_is_sha256_of_the_shape_then_the_pixels():
    import hashlib

    img = load_image(Image.new("RGB", (1, 1)), "black.png")
    assert img.sha256 == hashlib.sha256(b"(1, 1, 3)" + bytes(3)).hexdigest()


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


# ----- what load_image accepts -----------------------------------------------------------------


def test_load_image_accepts_pil_images_with_the_same_conversions():
    rgb = (np.arange(6 * 8 * 3) % 251).astype(np.uint8).reshape(6, 8, 3)
    pil = Image.fromarray(rgb)
    img = load_image(pil)
    assert np.array_equal(img.rgb, rgb) and img.sha256 == load_image(_encode(pil, "PNG"), "a.png").sha256
    # 16-bit grayscale scaled (not clipped), alpha composited on white, palette transparency
    deep = Image.fromarray(np.array([[0, 32896, 65535, 1000]], dtype=np.uint16).repeat(4, 0))
    assert list(load_image(deep).rgb[0, :, 0]) == [0, 128, 255, 4]
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    out = load_image(rgba, "alpha")
    assert tuple(out.rgb[0, 0]) == (255, 255, 255) and tuple(out.rgb[1, 1]) == (255, 0, 0)
    assert out.name == "alpha" and any("transparent" in n for n in out.notes)
    assert rgba.mode == "RGBA" and rgba.getpixel((0, 0)) == (0, 0, 0, 0)  # the caller's image is untouched
    # an opened (lazy) file keeps its name and its EXIF rotation
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    import io

    opened = Image.open(io.BytesIO(_encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif)))
    assert load_image(opened).rgb.shape == (40, 20, 3)


def test_load_image_accepts_uint8_arrays_and_byte_buffers(tmp_path):
    rgb = (np.arange(5 * 7 * 3) % 251).astype(np.uint8).reshape(5, 7, 3)
    assert np.array_equal(load_image(rgb).rgb, rgb)
    gray = np.full((5, 7), 77, np.uint8)
    img = load_image(gray, "gray")
    assert img.rgb.shape == (5, 7, 3) and (img.rgb == 77).all() and any("grayscale" in n for n in img.notes)
    data = _encode(Image.fromarray(rgb), "PNG")
    assert np.array_equal(load_image(bytearray(data)).rgb, rgb)
    assert np.array_equal(load_image(memoryview(data)).rgb, rgb)
    (tmp_path / "x.png").write_bytes(data)
    assert np.array_equal(load_image(str(tmp_path / "x.png")).rgb, rgb)


@pytest.mark.parametrize("bad", [
    np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 3), np.uint16), np.zeros((4, 4, 2), np.uint8),
    np.zeros(7, np.uint8), [1, 2, 3], None, 5, 3.5,
])
def test_load_image_refuses_anything_else_clearly(bad):
    with pytest.raises(ImageError, match=r"expected a path, bytes, PIL image or H x W x 3 uint8 array, got "):
        load_image(bad)


_EXPECTED = "expected a path, bytes, PIL image or H x W x 3 uint8 array, got "


@pytest.mark.parametrize("bad, got", [
    (None, "None"), (3.5, "a float"), ([1, 2, 3], "a list"),
    (np.zeros((4, 4, 3), np.float32), "a float32 array of shape (4, 4, 3) (arrays: uint8, H x W x 3 RGB, "
                                      "H x W x 4 RGBA or H x W grayscale)"),
    (np.zeros((4, 4, 5), np.uint8), "a uint8 array of shape (4, 4, 5) (arrays: uint8, H x W x 3 RGB, "
                                    "H x W x 4 RGBA or H x W grayscale)"),
])
def test_what_was_passed_instead_of_an_image_is_named_exactly(bad, got):
    with pytest.raises(ImageError) as err:
        load_image(bad)
    assert str(err.value) == _EXPECTED + got


def test_default_names_of_each_kind_of_input(tmp_path):
    """Without a name: a file's own name, a PIL image's file name (else "image"), "array", "upload"."""
    data = _encode(Image.new("RGB", (3, 2), (1, 2, 3)), "PNG")
    (tmp_path / "cat.png").write_bytes(data)
    assert load_image(tmp_path / "cat.png").name == "cat.png"
    assert load_image(str(tmp_path / "cat.png")).name == "cat.png"
    with Image.open(tmp_path / "cat.png") as opened:
        assert load_image(opened).name == "cat.png"
    assert load_image(Image.new("RGB", (3, 2))).name == "image"
    assert load_image(Image.open(io.BytesIO(data))).name == "image"
    for arr in (np.zeros((2, 3, 3), np.uint8), np.zeros((2, 3), np.uint8), np.zeros((2, 3, 4), np.uint8)):
        assert load_image(arr).name == "array"
    assert load_image(data).name == "upload"


def test_unreadable_paths_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ImageError) as err:
        load_image(tmp_path / "gone.png")
    assert str(err.value) == f"{tmp_path / 'gone.png'}: no such file"
    with pytest.raises(ImageError) as err:
        load_image(tmp_path, "photos")
    assert str(err.value) == "photos: is a folder, not an image"
    with pytest.raises(ImageError) as err:
        load_image(tmp_path / ("a" * 300), "long.png")
    assert str(err.value) == "long.png: cannot read the file: File name too long"
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError) as err:
        load_image(tmp_path / "empty.png")
    assert str(err.value) == "empty.png: the file is empty (0 bytes)"


def test_the_file_size_limit_is_exact_and_its_message_gives_both_sizes(tmp_path, monkeypatch):
    import cam_core.images as images

    data = _encode(Image.new("RGB", (3, 2), (1, 2, 3)), "PNG")
    (tmp_path / "at.png").write_bytes(data)
    monkeypatch.setattr(images, "MAX_FILE_BYTES", len(data))
    assert load_image(tmp_path / "at.png").rgb.shape == (2, 3, 3)  # exactly the limit passes
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 2 * 2**20)
    (tmp_path / "big.png").write_bytes(data + bytes(3 * 2**20))
    with pytest.raises(ImageError) as err:
        load_image(tmp_path / "big.png")
    assert str(err.value) == "big.png: file is 3 MB, above the 2 MB limit"


def test_a_decompression_bomb_is_refused_with_its_size_and_our_limit():
    with pytest.raises(ImageError) as err:
        load_image(_png_header_only(20000, 20000), "huge.png", max_pixels=1_000_000)
    assert str(err.value) == ("huge.png: image is too large (400 megapixels, above the limit of 1 megapixels); "
                              "downscale it first")


def test_from_array_refuses_empty_and_oversized_arrays():
    for shape in ((0, 0, 3), (0, 5, 3), (5, 0, 3)):
        with pytest.raises(ImageError, match="no pixels"):
            from_array(np.zeros(shape, np.uint8))
    # a view, so the test allocates nothing: refused before any copy or hash
    big = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (8001, 5000, 3))
    with pytest.raises(ImageError, match=r"8001 x 5000 \(H x W\) is 40.005 megapixels, above the limit of 40 megapixels"):
        from_array(big)
    with pytest.raises(ImageError, match="no pixels"):
        load_image(np.zeros((0, 3), np.uint8))


def test_megapixels_in_the_size_refusal_are_truncated_not_rounded():
    """1999 pixels against a 1000-pixel limit: 0.0019 (the first decimals that read above the
    limit, cut), not 0.0020."""
    with pytest.raises(ImageError) as err:
        from_array(np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (1999, 1, 3)), max_pixels=1000)
    assert str(err.value) == ("array: 1999 x 1 (H x W) is 0.0019 megapixels, above the limit of 0.001 megapixels; "
                              "downscale it first")


def test_from_array_names_hashes_and_refuses_exactly():
    import hashlib

    black = from_array(np.zeros((1, 1, 3), np.uint8))
    assert black.name == "array" and black.notes == ()
    assert black.sha256 == hashlib.sha256(b"(1, 1, 3)" + bytes(3)).hexdigest()
    assert from_array(np.zeros((1, 1, 3), np.uint8), "mine").name == "mine"
    for bad, got in ((np.zeros((2, 3, 4), np.uint8), "(2, 3, 4) uint8"), (np.zeros((2, 3), np.uint8), "(2, 3) uint8"),
                     (np.zeros((2, 3, 3), np.float32), "(2, 3, 3) float32")):
        with pytest.raises(ImageError) as err:
            from_array(bad)
        assert str(err.value) == f"expected an H x W x 3 uint8 array, got {got}"
    with pytest.raises(ImageError) as err:
        from_array(np.zeros((0, 5, 3), np.uint8))
    assert str(err.value) == "array: the image has no pixels (0 x 5 (H x W))"
    for arr in (np.zeros((0, 3), np.uint8), np.zeros((0, 3, 4), np.uint8)):  # through load_image
        with pytest.raises(ImageError) as err:
            load_image(arr, "blank")
        assert str(err.value) == "blank: the image has no pixels (0 x 3 (H x W))"


def test_the_40_megapixel_limit_is_exact_and_its_message_is_honest():
    # exactly 40 MP passes the size check (its fake pixel data then fails to decode)
    with pytest.raises(ImageError) as exc:
        load_image(_png_header_only(8000, 5000), "exact.png")
    assert "megapixels" not in str(exc.value) and "broken or truncated" in str(exc.value)
    # one column more is refused for its size, and the number shown is above the limit
    with pytest.raises(ImageError, match=r"8001x5000 is 40.005 megapixels, above the limit of 40 megapixels"):
        load_image(_png_header_only(8001, 5000), "over.png")
    with pytest.raises(ImageError, match=r"20x20 is 0.0004 megapixels, above the limit of 0.0001 megapixels"):
        load_image(Image.new("RGB", (20, 20)), "small.png", max_pixels=100)


# ----- resolve_under -----------------------------------------------------------------------------


def test_relative_name_is_tried_under_every_allowed_folder_in_order(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    png = _encode(Image.new("RGB", (4, 4)), "PNG")
    (b / "only_b.png").write_bytes(png)
    (a / "both.png").write_bytes(png)
    (b / "both.png").write_bytes(png)
    assert resolve_under("only_b.png", [a, b]) == (b / "only_b.png").resolve()
    assert resolve_under("both.png", [a, b]) == (a / "both.png").resolve()
    with pytest.raises(ImageError, match=r"nowhere\.png: no such file under .*a.*, .*b"):
        resolve_under("nowhere.png", [a, b])


def test_resolve_under_messages_name_the_folders_exactly(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    cases = [("nope.png", f"nope.png: no such file under {a}, {b}"),  # tried under each, in order
             (str(a / "nope.png"), f"{a / 'nope.png'}: no such file under {a}"),  # absolute: its own folder only
             ("/etc/passwd", f"/etc/passwd: outside the allowed folders ({a}, {b})"),
             ("x" * 300, f"{'x' * 300}: cannot be resolved: File name too long")]
    for typed, message in cases:
        with pytest.raises(ImageError) as err:
            resolve_under(typed, [a, b])
        assert str(err.value) == message
    if sys.version_info < (3, 13):  # a symlink loop is a RuntimeError, which has no strerror
        (a / "loop").symlink_to(a / "loop")
        with pytest.raises(ImageError, match=r"^loop: cannot be resolved: Symlink loop"):
            resolve_under("loop", [a, b])


@pytest.mark.parametrize("typed,msg", [
    ("x\0.png", "NUL"),
    ("a" * 300 + ".png", "File name too long"),
])
def test_resolve_under_turns_bad_paths_into_image_errors(tmp_path, typed, msg):
    with pytest.raises(ImageError, match=msg):
        resolve_under(typed, [tmp_path])

import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from cam_core.render import (
    colorize,
    compose_grid,
    downscale_for_display,
    draw_region,
    highlight,
    label_overlay,
    normalize,
    npy_bytes,
    overlay,
    png_bytes,
    render_tile,
    resize_nearest,
    threshold_region,
    to_image_map,
    upsample,
)


def test_colorize_gray_is_the_identity_ramp_and_clamps():
    x = np.array([[0.0, 0.5, 1.0, np.nan, 2.0, -1.0, 0.25]], np.float32)
    assert colorize(x, "gray")[0, :, 0].tolist() == [0, 128, 255, 0, 255, 0, 64]
    with pytest.raises(ValueError, match="unknown colormap"):
        colorize(x, "rainbowz")


def test_overlay_is_the_weighted_blend():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    m = rng.random((20, 30)).astype(np.float32)
    heat = colorize(m, "viridis").astype(np.float64)
    expected = np.clip(np.round(rgb * 0.7 + heat * 0.3), 0, 255)
    assert np.abs(overlay(rgb, m, 0.3, "viridis").astype(int) - expected).max() <= 1


def test_threshold_region_box_of_the_largest_blob():
    m = np.zeros((50, 60), np.float32)
    m[10:20, 5:15] = 0.9  # 100 px
    m[30:45, 30:55] = 0.8  # 375 px: the largest
    m[2:4, 50:52] = 1.0
    r = threshold_region(m, 0.5)
    assert r.box == (30, 30, 54, 44)
    assert r.area_fraction == pytest.approx((100 + 375 + 4) / 3000)
    assert threshold_region(m, 0.95).box == (50, 2, 51, 3)
    assert threshold_region(np.zeros((5, 5), np.float32), 0.5).box is None


def test_to_image_map_upsamples_then_normalises_to_unit_range():
    m = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    out = to_image_map(m, (40, 30), "minmax")
    assert out.shape == (40, 30) and out.dtype == np.float32
    assert out.min() == pytest.approx(0.0) and out.max() == pytest.approx(1.0)
    assert np.array_equal(to_image_map(torch.full((3, 3), 2.0), (9, 9)), np.zeros((9, 9), np.float32))
    assert torch.allclose(upsample(m, (2, 2)), m)
    assert normalize(torch.tensor([-1.0, 1.0, 3.0]), "max").tolist() == pytest.approx([0.0, 1 / 3, 1.0])


def test_minmax_subtracts_the_minimum():
    assert normalize(torch.tensor([1.0, 2.0, 3.0]), "minmax").tolist() == pytest.approx([0.0, 0.5, 1.0])
    m = torch.tensor([[-3.0, -1.0], [0.0, 5.0]])
    out = normalize(m, "minmax")
    assert out.min() == 0 and out.max() == 1
    assert out.flatten().tolist() == pytest.approx([0.0, 2 / 8, 3 / 8, 1.0])
    # the default mode is min-max, and to_image_map uses it
    assert torch.equal(normalize(m), out)
    assert to_image_map(torch.tensor([[2.0, 4.0]]), (1, 2)).tolist() == [[0.0, 1.0]]


def test_render_tile_draws_contour_only_with_threshold():
    rgb = np.zeros((40, 40, 3), np.uint8)
    m = np.zeros((40, 40), np.float32)
    m[10:30, 10:30] = 1.0
    plain = render_tile(rgb, m, 0.5, "gray", None)
    drawn = render_tile(rgb, m, 0.5, "gray", 0.5)
    assert not np.array_equal(plain, drawn)
    assert (drawn[10, 10:30, 1] == 255).all()  # box edge in green on the region's border


def test_labels_and_grid_helpers():
    rgb = np.full((4, 4, 3), 100, np.uint8)
    lab = np.array([[0, 1], [2, 0]])
    big = resize_nearest(lab, (4, 4))
    assert big.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]]
    out = label_overlay(rgb, big, 0.5)
    assert (out[0, 0] == 100).all() and not (out[0, 3] == 100).all()
    sheet = compose_grid([("a", rgb), ("b", rgb), ("c", rgb)], columns=2, tile_side=20)
    assert sheet.shape[0] > 40 and sheet.shape[1] > 40 and sheet.dtype == np.uint8


# ----- values worked by hand -------------------------------------------------------------
def test_max_normalisation_keeps_the_zero_and_errors_name_the_modes():
    assert normalize(torch.tensor([1.0, 2.0, 3.0]), "max").tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert to_image_map(torch.tensor([[2.0, 4.0]]), (1, 2), "max").tolist() == [[0.5, 1.0]]
    with pytest.raises(ValueError, match=r"unknown normalisation 'sum'; choose one of \('minmax', 'max'\)"):
        normalize(torch.ones(2), "sum")


def test_upsample_uses_half_pixel_centres():
    # source x = (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to the edges
    assert upsample(torch.tensor([[0.0, 1.0]]), (1, 4)).tolist() == [[0.0, 0.25, 0.75, 1.0]]


def test_colormap_tables_by_hand():
    x = np.array([[0.0, 1.0, 0.5]], np.float32)
    assert colorize(x, "jet")[0].tolist() == [[0, 0, 128], [128, 0, 0], [125, 255, 122]]  # jet: 0.5 blue to 0.5 red
    assert colorize(x)[0].tolist() == colorize(x, "jet")[0].tolist()  # jet is the default
    # viridis' published end points, and its middle sampled directly (round(127.5) = 128 -> 128/255)
    mid = np.round(np.array(__import__("matplotlib").colormaps["viridis"](128 / 255)[:3]) * 255).tolist()
    assert colorize(x, "viridis")[0].tolist() == [[68, 1, 84], [253, 231, 37], mid]
    out = colorize(np.array([[np.inf, -np.inf, 0.75, np.nan]], np.float32), "gray")
    assert out.dtype == np.uint8 and out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [255, 0, 191, 0]  # round(255 * 0.75) = round(191.25)


def test_overlay_and_tile_defaults():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    m = rng.random((12, 10)).astype(np.float32)
    assert np.array_equal(overlay(rgb, m), overlay(rgb, m, 0.5, "jet"))
    assert np.array_equal(render_tile(rgb, m), overlay(rgb, m, 0.5, "jet"))
    assert np.array_equal(render_tile(rgb, m, 0.3, "gray"), overlay(rgb, m, 0.3, "gray"))
    assert np.array_equal(render_tile(rgb, m, 0.3, "gray", 0.0), overlay(rgb, m, 0.3, "gray"))  # 0: no outline


def _l_shape(size):
    """An L-shaped region: its contour is not its box, so both show."""
    m = np.zeros((size, size), np.float32)
    a, b, c = size // 8, size // 2, 3 * size // 4
    m[a:c, a:b] = 1.0
    m[b:c, a:c] = 1.0
    return m


@pytest.mark.parametrize("size,thickness", [(40, 1), (450, 2), (900, 3)])
def test_draw_region_contours_then_box_by_hand(size, thickness):
    """White contours, then the green box over them, round(side / 300) px wide (at least 1)."""
    img = np.full((size, size, 3), 50, np.uint8)
    m = _l_shape(size)
    m[-size // 8 :, -size // 8 :] = 1.0  # a second, smaller blob: every contour is drawn
    region = threshold_region(m, 0.5)
    assert len(region.contours) == 2
    ref = img.copy()
    cv2.drawContours(ref, list(region.contours), -1, (255, 255, 255), thickness)
    x1, y1, x2, y2 = region.box
    cv2.rectangle(ref, (x1, y1), (x2, y2), (0, 255, 0), thickness)
    out = draw_region(img, region)
    assert np.array_equal(out, ref)
    assert (img == 50).all()  # drawn on a copy
    assert (out == (255, 255, 255)).all(axis=2).any() and (out == (0, 255, 0)).all(axis=2).any()
    nothing = threshold_region(np.zeros((size, size), np.float32), 0.5)
    assert np.array_equal(draw_region(img, nothing), img)


def test_threshold_region_includes_the_threshold_and_keeps_the_mask():
    m = np.zeros((6, 6), np.float32)
    m[1:3, 1:4] = 0.5
    m[4, 4] = 0.25
    r = threshold_region(m, 0.5)
    assert np.array_equal(r.mask, m >= 0.5) and r.box == (1, 1, 3, 2) and len(r.contours) == 1
    assert r.area_fraction == pytest.approx(6 / 36)
    assert len(threshold_region(m, 0.25).contours) == 2


def test_highlight_by_hand():
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[...] = (100, 150, 200)
    mask = _l_shape(40) > 0
    region = threshold_region(mask.astype(np.float32), 0.5)
    ref = np.where(mask[..., None], rgb, (rgb * 0.3).astype(np.uint8))  # 0.3 is the default dim
    cv2.drawContours(ref, list(region.contours), -1, (255, 255, 0), 1)
    x1, y1, x2, y2 = region.box
    cv2.rectangle(ref, (x1, y1), (x2, y2), (255, 255, 0), 1)
    out = highlight(rgb, mask)
    assert out.dtype == np.uint8 and np.array_equal(out, ref)
    assert out[0, 0].tolist() == [30, 45, 60] and out[20, 10].tolist() == [100, 150, 200]


def test_label_overlay_by_hand():
    rgb = np.full((1, 6, 3), 91, np.uint8)
    rgb[0, 5] = 0
    labels = np.array([[0, -7, 1, 5, 9, 0]])
    out = label_overlay(rgb, labels)  # opacity 0.55: 91 * 0.45 + colour * 0.55, + 0.5, truncated
    assert out[0, 0].tolist() == [91, 91, 91] and out[0, 1].tolist() == [91, 91, 91]  # 0 and below: untouched
    assert out[0, 2].tolist() == [167, 55, 82]  # label 1: (230, 25, 75)
    assert out[0, 3].tolist() == [121, 57, 140]  # label 5: (145, 30, 180)
    assert out[0, 4].tolist() == [121, 57, 140]  # past the palette: its last colour
    assert out[0, 5].tolist() == [0, 0, 0]
    assert label_overlay(rgb, labels, 1.0)[0, 2].tolist() == [230, 25, 75]


def test_resize_nearest_keeps_the_dtype():
    lab = np.array([[0, 7], [3, 0]], np.int32)
    out = resize_nearest(lab, (4, 2))
    assert out.dtype == np.int32 and out[:, 1].tolist() == [7, 7, 0, 0]


def test_downscale_for_display():
    rgb = np.zeros((960, 1280, 3), np.uint8)
    rgb[:, 640:] = (0, 0, 255)
    small, scale = downscale_for_display(rgb)  # the longest side to 640 by default
    assert scale == 0.5 and small.shape == (480, 640, 3) and small.dtype == np.uint8
    assert (small[:, :310] == 0).all() and (small[:, 330:] == (0, 0, 255)).all()
    tall, scale = downscale_for_display(np.zeros((1000, 300, 3), np.uint8), 500)
    assert scale == 0.5 and tall.shape == (500, 150, 3)
    thin, scale = downscale_for_display(np.zeros((2, 2000, 3), np.uint8), 100)
    assert thin.shape == (1, 100, 3)  # never below one pixel
    assert downscale_for_display(np.zeros((2000, 2, 3), np.uint8), 100)[0].shape == (100, 1, 3)
    noise = np.random.default_rng(0).integers(0, 256, (300, 401, 3), dtype=np.uint8)
    small, scale = downscale_for_display(noise, 200)
    assert np.array_equal(small, np.asarray(Image.fromarray(noise).resize((200, 150), Image.BILINEAR)))
    fits = np.zeros((640, 480, 3), np.uint8)
    same, scale = downscale_for_display(fits)
    assert same is fits and scale == 1.0


def test_png_and_npy_bytes_round_trip():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    data = png_bytes(rgb)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), rgb)
    m = np.linspace(0, 1, 12).reshape(3, 4)
    back = np.load(io.BytesIO(npy_bytes(m)))
    assert back.dtype == np.float32 and np.array_equal(back, m.astype(np.float32))


def test_compose_grid_layout_by_hand():
    """Tiles resized so the first one's longer side is tile_side; 6 px padding, a 22 px
    caption strip above each tile (text 4 px down), white sheet, black captions."""
    def tile(colour, h=10, w=20):
        t = np.zeros((h, w, 3), np.uint8)
        t[...] = colour
        t[:, w // 2 :] //= 2  # a sharp edge: the resampling shows
        return t

    tiles = [("a", tile((200, 0, 0))), ("bb", tile((0, 200, 0), 30, 10)), ("c", tile((0, 0, 200)))]
    sheet = compose_grid(tiles, columns=2, tile_side=40)  # tiles 40 x 20 (the first one's aspect)
    assert sheet.shape == (2 * (20 + 22 + 6) + 6, 2 * (40 + 6) + 6, 3) and sheet.dtype == np.uint8
    font = ImageFont.load_default()
    for i, (caption, img) in enumerate(tiles):
        r, c = divmod(i, 2)
        x, y = 6 + c * 46, 6 + r * 48
        expected = np.asarray(Image.fromarray(img).resize((40, 20), Image.BILINEAR))
        assert np.array_equal(sheet[y + 22 : y + 42, x : x + 40], expected), caption
        strip = Image.new("RGB", (40, 22), (255, 255, 255))
        ImageDraw.Draw(strip).text((0, 4), caption, fill=(0, 0, 0), font=font)
        assert np.array_equal(sheet[y : y + 22, x : x + 40], np.asarray(strip)), caption
        ink = sheet[y : y + 22, x : x + 40]
        assert ink.min() < 100 and (ink[..., 0] == ink[..., 1]).all() and (ink[..., 1] == ink[..., 2]).all()
    assert (sheet[54:, 52:] == 255).all() and (sheet[:6] == 255).all() and (sheet[:, :6] == 255).all()


def test_compose_grid_columns_defaults_and_errors():
    t = np.zeros((10, 20, 3), np.uint8)
    assert compose_grid([("x", t)] * 5).shape == (2 * (160 + 28) + 6, 4 * 326 + 6, 3)  # 4 columns, 320 px
    assert compose_grid([("x", t)] * 3, columns=0, tile_side=20).shape == (3 * (10 + 28) + 6, 26 + 6, 3)
    assert compose_grid([("x", t)] * 2, columns=9, tile_side=20).shape == (10 + 28 + 6, 2 * 26 + 6, 3)
    sliver = compose_grid([("x", np.zeros((1, 400, 3), np.uint8))], tile_side=20)
    assert sliver.shape == (1 + 28 + 6, 26 + 6, 3)  # a tile is at least 1 px high
    assert compose_grid([("x", np.zeros((400, 1, 3), np.uint8))], tile_side=20).shape == (20 + 28 + 6, 1 + 6 + 6, 3)
    with pytest.raises(ValueError, match="^no tiles to compose$"):
        compose_grid([])


def test_colour_bar_runs_the_colormap_from_0_to_1_and_goes_under_the_tile():
    """Issue 9 item 9: tiles and the grid PNG carry a colour bar."""
    from cam_core.render import colorbar, with_colorbar

    bar = colorbar("jet", 300, "minmax")
    ends = colorize(np.array([[0.0, 1.0]], np.float32), "jet")[0]
    assert (bar[0, 0] == ends[0]).all() and (bar[0, -1] == ends[1]).all()
    assert (bar[-12:] < 128).any()  # the line under it says what 0 and 1 mean
    tile = np.zeros((50, 300, 3), np.uint8)
    shown = with_colorbar(tile, "jet", "max")
    assert shown.shape[1] == 300 and shown.shape[0] > 50 and (shown[:50] == tile).all()


def test_grid_sheet_has_the_settings_above_and_one_colour_bar_below():
    t = np.full((10, 20, 3), 255, np.uint8)
    plain = compose_grid([("x", t)] * 2, columns=2, tile_side=20)
    sheet = compose_grid([("x", t)] * 2, columns=2, tile_side=20, title="cat.png · lite0 · minmax", cmap="jet")
    assert sheet.shape[1] == plain.shape[1] and sheet.shape[0] > plain.shape[0] + 22
    assert (sheet[:22] < 128).any() and not (plain[:4] < 250).any()  # the title's text at the top
    ends = colorize(np.array([[0.0]], np.float32), "jet")[0, 0]
    assert (sheet[-30:] == ends).all(axis=-1).any()  # the bar's first colour near the bottom


@pytest.mark.parametrize("n_first,n_second", [(1, 1), (12, 12), (3, 20), (64, 64)])
def test_group_colours_never_share_a_colour(n_first, n_second):
    from cam_core.render import group_colours

    first, second = group_colours(n_first, n_second)
    assert len(first) == n_first and len(second) == n_second
    assert len(set(first)) == n_first and len(set(second)) == n_second  # distinct within a group
    assert not set(first) & set(second)  # and across
    assert all(len(c) == 7 and c.startswith("#") for c in first + second)


def test_colour_bar_known_answer_and_its_end_labels():
    """Every column is the colormap at its position (0 left, 1 right, evenly spaced), 10 rows of
    colour over a 12-row white text line; from 200 px on, the ends say what 0 and 1 mean under
    the normalisation, narrower bars say just "0" and "1"."""
    from cam_core.render import colorbar

    bar = colorbar("viridis", 201, "max")
    assert bar.shape == (22, 201, 3) and bar.dtype == np.uint8
    expected = colorize(np.linspace(0.0, 1.0, 201, dtype=np.float32)[None], "viridis")[0]
    assert (bar[:10] == expected[None]).all()
    text = bar[10:]
    assert (text[:, 100] == 255).all()  # white between the two labels
    dark = lambda strip: int((strip < 128).any(axis=(0, 2)).sum())  # noqa: E731 - columns with ink
    wide, narrow = colorbar("viridis", 200, "max")[10:], colorbar("viridis", 199, "max")[10:]
    assert dark(wide[:, :100]) > 3 * dark(narrow[:, :100]) > 0  # "0 (or below)" against "0"
    assert dark(wide[:, 100:]) > 3 * dark(narrow[:, 100:]) > 0  # "1 = the map's max" against "1"
    assert dark(narrow[:, :100]) <= 8 and dark(narrow[:, 100:]) <= 8  # one character each

import numpy as np
import pytest
import torch

from cam_core.render import (
    colorize,
    compose_grid,
    label_overlay,
    normalize,
    overlay,
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

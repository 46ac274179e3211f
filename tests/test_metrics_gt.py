"""Ground-truth metrics of cam_core.metrics against hand-computed answers."""

import numpy as np
import pytest

from cam_core.metrics import (MaxBoxAccV2, box_iou, box_iou_at, box_ious_by_threshold, boxes_mask, loc_hit,
                              multiple_iou, pixel_histograms, pointing_game, pxap, wsol_boxes)


def _peak(shape, y, x):
    m = np.zeros(shape, np.float32)
    m[y, x] = 1.0
    return m


def test_pointing_game_has_a_15_px_tolerance_strictly():
    region = boxes_mask([(40, 40, 59, 59)], (100, 100))
    assert pointing_game(_peak((100, 100), 50, 50), region)  # inside
    assert not pointing_game(_peak((100, 100), 50, 74), region)  # 15 px right of the box's x = 59: not < 15
    assert pointing_game(_peak((100, 100), 50, 74), region, tolerance=16)
    assert pointing_game(_peak((100, 100), 50, 73), region)  # 14 px away: a hit
    assert not pointing_game(_peak((100, 100), 50, 75), region)  # 16 px away: a miss
    assert not pointing_game(_peak((100, 100), 74, 74), region)  # diagonal 15 * sqrt(2) away: a miss
    assert pointing_game(_peak((100, 100), 69, 69), region)  # diagonal sqrt(200) ~ 14.1: a hit
    assert not pointing_game(np.zeros((100, 100)), region)  # a constant map points nowhere
    with pytest.raises(ValueError, match="differ in size"):
        pointing_game(np.zeros((10, 10)), region)


def test_pointing_game_boundary_is_strict_like_torchray():
    region = np.zeros((40, 40), bool)
    region[20, 5] = True
    assert not pointing_game(_peak((40, 40), 20, 20), region)  # exactly 15 px: not < 15
    assert pointing_game(_peak((40, 40), 20, 19), region)
    # the first maximum in raster order is the point
    m = np.zeros((40, 40))
    m[0, 0] = m[20, 6] = 1.0
    assert not pointing_game(m, region)


def test_boxes_and_box_iou_at_a_threshold():
    assert boxes_mask([(1, 2, 3, 4)], (6, 6)).sum() == 3 * 3
    assert box_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert box_iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(50 / 150)
    m = np.zeros((50, 50), np.float32)
    m[10:20, 10:30] = 1.0  # the largest region: x 10..29, y 10..19
    m[40:42, 40:42] = 0.6  # a smaller one
    assert box_iou_at(m, [(10, 10, 29, 19)], 0.5) == 1.0
    assert box_iou_at(m, [(10, 10, 29, 19)], 1.1) == 0.0  # nothing above the threshold
    assert loc_hit(m, [(10, 10, 29, 19), (0, 0, 3, 3)], 0.5)
    assert not loc_hit(m, [(0, 0, 3, 3)], 0.5)


def test_wsol_boxes_follow_the_official_conventions():
    m = np.zeros((30, 40), np.float32)
    m[5:10, 5:15] = 1.0  # x 5..14, y 5..9
    m[20:25, 30:35] = 0.5
    # at 0.3 both regions (RETR_TREE: every contour), each box one pixel wider (x + w, y + h)
    boxes = wsol_boxes(m, 0.3)
    assert sorted(map(tuple, boxes)) == [(5, 5, 15, 10), (30, 20, 35, 25)]
    assert [tuple(b) for b in wsol_boxes(m, 0.3, multi_contour=False)] == [(5, 5, 15, 10)]
    assert [tuple(b) for b in wsol_boxes(m, 0.6)] == [(5, 5, 15, 10)]  # 0.5 * 255 = 127 <= int(0.6 * 255)
    assert [tuple(b) for b in wsol_boxes(np.zeros((8, 8)), 0.0)] == [(0, 0, 0, 0)]
    edge = np.zeros((10, 10), np.float32)
    edge[5:, 5:] = 1.0
    assert [tuple(b) for b in wsol_boxes(edge, 0.5)] == [(5, 5, 9, 9)]  # clipped to W - 1, H - 1
    assert multiple_iou([[0, 0, 9, 9]], [[0, 0, 9, 9], [10, 10, 19, 19]]).tolist() == [[1.0, 0.0]]


def test_maxboxacc_v2_takes_one_threshold_for_the_whole_set():
    # image A is right only at low thresholds, image B only at high ones
    acc = MaxBoxAccV2(n_cam_thresholds=4)
    acc.add([0.9, 0.9, 0.1, 0.1])
    acc.add([0.1, 0.1, 0.6, 0.6])
    # IoU >= 0.3 and 0.5: one image at every threshold -> 0.5; >= 0.7: only A at 0-1 -> 0.5
    assert acc.accuracies() == {30: 0.5, 50: 0.5, 70: 0.5}
    acc.add([0.4, 0.8, 0.4, 0.4])  # right everywhere at 0.3, only at the 2nd threshold at 0.5 and 0.7
    # counts per threshold: 0.3 [2, 2, 2, 2]; 0.5 [1, 2, 1, 1]; 0.7 [1, 2, 0, 0]
    assert acc.accuracies() == pytest.approx({30: 2 / 3, 50: 2 / 3, 70: 2 / 3})
    assert acc.value == pytest.approx(2 / 3)


def test_maxboxacc_v2_on_a_map_that_is_its_box():
    m = np.zeros((64, 64), np.float32)
    m[10:30, 20:40] = 1.0
    ious = box_ious_by_threshold(m, [(20, 10, 39, 29)])
    # the official box is one pixel wider and taller: 20 x 20 inside a 21 x 21 box
    assert ious[50] == pytest.approx(400 / 441)
    # a second, far object makes a second box, and the multi-contour match finds the right one
    m[50:60, 0:10] = 1.0
    assert box_ious_by_threshold(m, [(20, 10, 39, 29)])[50] == pytest.approx(400 / 441)
    assert box_ious_by_threshold(m, [(20, 10, 39, 29)], multi_contour=False)[50] == pytest.approx(400 / 441)


def test_pxap_known_answers():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    # the mask itself: every object pixel before any other -> precision 1 all the way
    assert pxap(*pixel_histograms(mask.astype(np.float32), mask)) == pytest.approx(1.0)
    # a graded map with the same order is also perfect
    graded = np.where(mask, 0.6 + 0.3 * np.random.default_rng(0).random((20, 20)), 0.3).astype(np.float32)
    assert pxap(*pixel_histograms(graded, mask)) == pytest.approx(1.0)
    # the inverse map: the object last -> AP = its share of the pixels
    assert pxap(*pixel_histograms((~mask).astype(np.float32), mask)) == pytest.approx(mask.mean())
    # two object pixels at 0.9, one background at 0.9, one object at 0.5, the rest 0:
    m = np.zeros((4, 4), np.float32)
    obj = np.zeros((4, 4), bool)
    obj[0, 0] = obj[0, 1] = obj[1, 0] = True
    m[0, 0] = m[0, 1] = m[3, 3] = 0.9
    m[1, 0] = 0.5
    # thresholds high to low: at 0.9 P = 2/3, R = 2/3; at 0.5 P = 3/4, R = 1 -> AP = 2/3 * 2/3 + 3/4 * 1/3
    assert pxap(*pixel_histograms(m, obj)) == pytest.approx(2 / 3 * 2 / 3 + 3 / 4 * 1 / 3)
    # ignored pixels count for nothing
    ignore = np.zeros((4, 4), bool)
    ignore[3, 3] = True
    assert pxap(*pixel_histograms(m, obj, ignore)) == pytest.approx(1.0)
    assert np.isnan(pxap(*pixel_histograms(m, np.zeros((4, 4), bool))))

"""cam_core.metrics: the localisation scores, on masks small enough to work by hand."""

import numpy as np
import pytest

from cam_core.metrics import THRESHOLDS, best_iou, energy_inside, iou


def test_energy_inside_all_none_and_a_share():
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    inside = np.zeros((4, 4), np.float32)
    inside[0, 0], inside[1, 1] = 1.0, 0.5
    assert energy_inside(inside, mask) == 1.0
    outside = np.zeros((4, 4), np.float32)
    outside[3, 3] = 1.0
    assert energy_inside(outside, mask) == 0.0
    m = np.zeros((4, 4), np.float32)
    m[0, 1], m[2, 2], m[3, 0] = 0.6, 0.3, 0.1  # 0.6 of 1.0 inside
    assert energy_inside(m, mask) == pytest.approx(0.6)
    assert energy_inside(np.zeros((4, 4), np.float32), mask) == 0.0  # no energy: 0, not NaN


def test_iou_by_hand():
    a = np.zeros((3, 4), bool)
    b = np.zeros((3, 4), bool)
    a[0, :3] = True  # 3 px
    b[0, 1:] = True  # 3 px, 2 shared
    assert iou(a, b) == pytest.approx(2 / 4)
    assert iou(a, a) == 1.0
    assert iou(a, np.zeros_like(a)) == 0.0
    assert iou(np.zeros_like(a), np.zeros_like(a)) == 0.0  # both empty: 0, not NaN


def test_best_iou_sweeps_the_thresholds():
    m = np.array([[0.92, 0.73, 0.38, 0.12]], np.float32)
    mask = np.array([[True, True, False, False]])
    # t <= 0.12: 4 px -> 2/4; 0.12 < t <= 0.38: 3 px -> 2/3; 0.38 < t <= 0.73: exact -> 1;
    # 0.73 < t <= 0.92: 1 px -> 1/2; above: nothing -> 0
    score, t = best_iou(m, mask)
    assert score == 1.0 and t == pytest.approx(0.7)  # max over (IoU, t): a tie goes to the highest t
    score, t = best_iou(m, mask, thresholds=(0.05, 0.3, 0.8, 0.95))
    assert score == pytest.approx(2 / 3) and t == 0.3
    assert best_iou(m, mask, thresholds=(0.8, 0.95)) == (0.5, 0.8)
    assert THRESHOLDS[0] == 0.05 and THRESHOLDS[-1] == 0.95 and len(THRESHOLDS) == 19


def test_a_pixel_at_the_threshold_is_in_the_region():
    m = np.array([[0.5, 0.5, 0.25, 0.0]], np.float32)  # exact in float32 and float64
    mask = np.array([[True, True, False, False]])
    assert best_iou(m, mask, thresholds=(0.5,)) == (1.0, 0.5)
    assert best_iou(m, mask, thresholds=(0.25,)) == (2 / 3, 0.25)

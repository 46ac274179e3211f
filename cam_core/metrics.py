"""Localisation metrics of a map against a ground-truth mask (numpy, image resolution)."""

from __future__ import annotations

import numpy as np

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 1.0, 0.05))


def energy_inside(m01: np.ndarray, mask: np.ndarray) -> float:
    """Share of the (min-max normalised) map's energy that falls inside the mask: the
    energy-based pointing game of the Score-CAM paper, with the mask as the region."""
    total = float(m01.sum())
    return float(m01[mask].sum()) / total if total > 0 else 0.0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def best_iou(m01: np.ndarray, mask: np.ndarray, thresholds=THRESHOLDS) -> tuple[float, float]:
    """The best IoU of (map >= t) with the mask over the thresholds, and that threshold."""
    scores = [(iou(m01 >= t, mask), t) for t in thresholds]
    return max(scores)

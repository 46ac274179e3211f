"""Metrics of a map: against ground truth (numpy, image resolution), and of its faithfulness to
the model (torch, the model's input, batched on the device).

One module for the CLI, the pages and the evaluation alike. Every function is a pure function of
(map, ground truth) or of (model, input, map, class); nothing here knows about Streamlit, files
or the dataset. Maps are taken as they come (any size, unnormalised, tensor or array) where a
function says so; the ground-truth functions take a map already at the image's resolution in
[0, 1] (``render.to_image_map``).

With ground truth (a boolean mask, or boxes ``(x0, y0, x1, y1)``, 0-based, inclusive)
  * :func:`energy_inside` — energy-based pointing game (Wang et al., Score-CAM);
  * :func:`pointing_game` — the map's maximum within 15 px of the object (Zhang et al.);
  * :func:`best_iou` — best IoU of ``map >= t`` with a mask over thresholds;
  * :func:`box_iou_at` / :func:`loc_hit` — IoU of the box of the largest region at a threshold,
    GT-known localisation (IoU >= 0.5); Top-1 Loc is a GT-known hit whose top-1 class is right;
  * :func:`box_ious_by_threshold` + :class:`MaxBoxAccV2` and :func:`pixel_histograms` +
    :func:`pxap` — the threshold-free WSOL metrics of Choe et al., CVPR 2020.

Without ground truth (the model's own answer to a perturbed input)
  * :func:`deletion`, :func:`insertion` — RISE's causal metrics (Petsiuk et al., BMVC 2018);
  * :func:`confidence_change` — Average Drop and Increase in Confidence (Chattopadhay et al.,
    WACV 2018; the Score-CAM paper's faithfulness table);
  * :func:`road` — ROAD (Rong et al., ICML 2022), as pytorch-grad-cam's ``ROADCombined``.

All of them work in the model's normalised input space, as RISE's and pytorch-grad-cam's code
do: "zero" is zero of the normalised tensor (the dataset's mean colour), and blur, masking and
imputation act on the normalised tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .errors import Cancelled
from .render import normalize, threshold_region, upsample

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 1.0, 0.05))


# ======================================================================================
# With ground truth
# ======================================================================================


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


def boxes_mask(boxes: Sequence[Sequence[int]], shape: tuple[int, int]) -> np.ndarray:
    """Boolean H x W mask of the union of boxes (x0, y0, x1, y1), inclusive, clipped to the image."""
    out = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        out[max(0, int(y0)) : max(0, int(y1) + 1), max(0, int(x0)) : max(0, int(x1) + 1)] = True
    return out


def box_iou(a, b) -> float:
    """IoU of two boxes (x0, y0, x1, y1) with inclusive corners (PASCAL VOC's +1 convention)."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    area = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return inter / area if area > 0 else 0.0


POINTING_TOLERANCE = 15


def pointing_game(m: np.ndarray, region: np.ndarray, tolerance: float = POINTING_TOLERANCE) -> bool:
    """Pointing game (Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016):
    a hit when the map's maximum lies within ``tolerance`` pixels of the object, i.e. some pixel
    p of ``region`` has ||p - argmax||^2 < tolerance^2 (TorchRay's benchmark code, 15 px at the
    image's resolution). ``m`` is the map at the region's resolution (any scale); the first
    maximum in raster order is the point. A constant map points nowhere: a miss."""
    m = np.asarray(m)
    region = np.asarray(region, bool)
    if m.shape != region.shape:
        raise ValueError(f"map {m.shape} and region {region.shape} differ in size")
    if not np.isfinite(m).any() or np.nanmax(m) <= np.nanmin(m):
        return False
    py, px = np.unravel_index(int(np.nanargmax(m)), m.shape)
    r = int(np.ceil(tolerance))
    y0, y1 = max(0, py - r), min(m.shape[0], py + r + 1)
    x0, x1 = max(0, px - r), min(m.shape[1], px + r + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    near = (yy - py) ** 2 + (xx - px) ** 2 < tolerance**2
    return bool((near & region[y0:y1, x0:x1]).any())


def box_iou_at(m01: np.ndarray, boxes: Sequence, threshold: float) -> float:
    """IoU of the box around the largest connected region of (map >= threshold) with the best
    matching ground-truth box (the CAM localisation protocol, ``render.threshold_region``);
    0 when nothing is above the threshold or there is no box."""
    region = threshold_region(m01, threshold)
    if region.box is None or not boxes:
        return 0.0
    return max(box_iou(region.box, g) for g in boxes)


def loc_hit(m01: np.ndarray, boxes: Sequence, threshold: float, iou_threshold: float = 0.5) -> bool:
    """GT-known localisation of one (image, class): box_iou_at >= 0.5. Top-1 Loc counts a hit
    only when the image's top-1 predicted class is also right (Russakovsky et al., ILSVRC)."""
    return box_iou_at(m01, boxes, threshold) >= iou_threshold


# ----- Choe et al., "Evaluating weakly supervised object localization methods right", CVPR 2020

WSOL_CAM_THRESHOLDS = np.arange(0, 1, 0.01)  # the official cam_curve_interval = 0.01
WSOL_IOU_THRESHOLDS = (30, 50, 70)  # MaxBoxAccV2, in percent


def multiple_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """n x m IoUs of boxes (x0, y0, x1, y1), inclusive corners (wsolevaluation's
    ``calculate_multiple_iou``)."""
    a = np.asarray(boxes_a, np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, np.float64).reshape(-1, 4)
    ix = np.maximum(0, np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1)
    iy = np.maximum(0, np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def wsol_boxes(m01: np.ndarray, threshold: float, multi_contour: bool = True) -> np.ndarray:
    """Boxes of the map at one CAM threshold exactly as wsolevaluation's ``scoremap2bbox``: the
    map as uint8 (floor of 255 m), pixels strictly above int(threshold * its max), the bounding
    rectangle of every contour (``cv2.RETR_TREE``; only the largest when not multi_contour),
    each (x, y, min(x + w, W - 1), min(y + h, H - 1)) — one pixel wider than the contour, as the
    official code; [[0, 0, 0, 0]] when nothing is above."""
    u8 = (np.asarray(m01) * 255).astype(np.uint8)
    h, w = u8.shape
    _, binary = cv2.threshold(u8, int(threshold * np.max(u8)), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return np.zeros((1, 4), np.int64)
    if not multi_contour:
        contours = [max(contours, key=cv2.contourArea)]
    out = []
    for c in contours:
        x, y, bw, bh = cv2.boundingRect(c)
        out.append((x, y, min(x + bw, w - 1), min(y + bh, h - 1)))
    return np.asarray(out, np.int64)


def box_ious_by_threshold(m01: np.ndarray, gt_boxes: Sequence, cam_thresholds=WSOL_CAM_THRESHOLDS,
                          multi_contour: bool = True) -> np.ndarray:
    """For each CAM threshold, the best IoU between any box of the map at that threshold
    (:func:`wsol_boxes`, all contours for MaxBoxAccV2) and any ground-truth box. One image's
    contribution to :class:`MaxBoxAccV2`."""
    gt = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    if len(gt) == 0:
        raise ValueError("no ground-truth box")
    return np.array([multiple_iou(wsol_boxes(m01, t, multi_contour), gt).max() for t in cam_thresholds])


@dataclass
class MaxBoxAccV2:
    """MaxBoxAccV2 (Choe et al., CVPR 2020; wsolevaluation's ``BoxEvaluator`` with
    multi_contour_eval): for each IoU threshold d in {30, 50, 70}, the box accuracy
    (share of images with a box of IoU >= d) at the best CAM threshold, the max taken over the
    accumulated accuracies (one threshold for the whole set, not per image); then the mean over
    d. Reported as fractions here (the paper prints percent)."""

    iou_thresholds: tuple = WSOL_IOU_THRESHOLDS
    n_cam_thresholds: int = len(WSOL_CAM_THRESHOLDS)
    count: int = 0
    correct: dict = field(default_factory=dict)

    def __post_init__(self):
        for d in self.iou_thresholds:
            self.correct.setdefault(d, np.zeros(self.n_cam_thresholds, np.int64))

    def add(self, ious_by_threshold: Sequence[float]) -> None:
        ious = np.asarray(ious_by_threshold, np.float64)
        for d in self.iou_thresholds:
            self.correct[d] += ious >= d / 100
        self.count += 1

    def accuracies(self) -> dict[int, float]:
        return {d: float(self.correct[d].max() / self.count) if self.count else 0.0 for d in self.iou_thresholds}

    @property
    def value(self) -> float:
        acc = self.accuracies()
        return float(np.mean(list(acc.values()))) if acc else 0.0


PXAP_BIN_EDGES = np.append(WSOL_CAM_THRESHOLDS, [1.0, 2.0, 3.0])  # wsolevaluation's MaskEvaluator


def pixel_histograms(m01: np.ndarray, mask: np.ndarray, ignore: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Histograms of the map's values on the object's pixels and on the other pixels (those in
    ``ignore`` left out), over wsolevaluation's bins [0, .01), ..., [.99, 1), [1, 2), [2, 3]:
    one image's contribution to :func:`pxap` (sum them over a set)."""
    m = np.asarray(m01)
    mask = np.asarray(mask, bool)
    keep = np.ones(mask.shape, bool) if ignore is None else ~np.asarray(ignore, bool)
    true_hist, _ = np.histogram(m[mask & keep], bins=PXAP_BIN_EDGES)
    false_hist, _ = np.histogram(m[~mask & keep], bins=PXAP_BIN_EDGES)
    return true_hist.astype(np.int64), false_hist.astype(np.int64)


def pxap(true_hist: np.ndarray, false_hist: np.ndarray) -> float:
    """PxAP (Choe et al., CVPR 2020; wsolevaluation's ``MaskEvaluator.compute``): area under
    the pixel precision-recall curve over the CAM thresholds,
    sum_k precision_k (recall_k - recall_{k-1}), thresholds from high to low, precision taken
    where something is predicted. A fraction here (the official code multiplies by 100).
    NaN when there is no object pixel or no pixel at all."""
    t = np.asarray(true_hist, np.float64)
    f = np.asarray(false_hist, np.float64)
    tp = t[::-1].cumsum()
    fp = f[::-1].cumsum()
    if t.sum() <= 0 or (tp + fp).max() <= 0:
        return float("nan")
    fn = t.sum() - tp
    predicted = (tp + fp) != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
    return float((precision[1:] * np.diff(recall))[predicted[1:]].sum())


# ======================================================================================
# Without ground truth: faithfulness to the model
# ======================================================================================

FAITHFULNESS = ("deletion", "insertion", "average_drop", "increase", "road")
GROUND_TRUTH = ("energy", "pointing", "best_iou")
SCORES = ("softmax", "sigmoid")
# Perturbed inputs per forward when batch_size = 0 (bench/bench_metrics.py, Lite0, 224², a
# deletion game of 225 inputs on the 2-core CPU): with torch on 2 threads, batches of 4 took
# 2.3 s, single inputs 4.0 s, batches of 16 4.3-6.3 s (the activations outgrow the cache);
# with one thread (a Ray actor) single inputs were fastest (6.5 s, batches of 2: 8.1 s).
# A GPU wants large batches.
AUTO_BATCH = {"cpu": 4, "cpu-1-thread": 1, "cuda": 128}


class _Steps:
    """Progress, cancel and pause between the batches of one metric (MethodContext.checkpoint's
    semantics: raise Cancelled when cancel() says so, else let waiting interactive work run)."""

    def __init__(self, total, progress=None, cancel=None, pause=None, what="metric"):
        self.total, self.done = total, 0
        self.progress, self.cancel, self.pause, self.what = progress, cancel, pause, what

    def checkpoint(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled(f"{self.what} cancelled")
        if self.pause is not None:
            self.pause()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)


def _batch_size(batch_size: int, device: torch.device) -> int:
    if batch_size > 0:
        return batch_size
    if device.type == "cuda":
        return AUTO_BATCH["cuda"]
    return AUTO_BATCH["cpu-1-thread" if torch.get_num_threads() == 1 else "cpu"]


def _class_scores(model: torch.nn.Module, batch: torch.Tensor, target: int, score: str) -> torch.Tensor:
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    with torch.inference_mode():
        logits = model(batch).float()
    out = logits.softmax(dim=-1) if score == "softmax" else logits.sigmoid()
    return out[:, target].double().cpu()


def saliency_at_input(saliency, size: tuple[int, int], device=None) -> torch.Tensor:
    """The map at the model's input size: bilinear (``render.upsample``), then min-max
    normalised to [0, 1] (``render.normalize``; a constant map gives zeros). float32 H x W."""
    m = saliency if torch.is_tensor(saliency) else torch.as_tensor(np.asarray(saliency))
    m = normalize(upsample(m.detach().float(), tuple(size)), "minmax")
    return m.to(device) if device is not None else m


def auc(scores: Sequence[float]) -> float:
    """RISE's ``auc``: trapezoids over n points equally spaced on [0, 1],
    (sum - first/2 - last/2) / (n - 1)."""
    s = np.asarray(scores, np.float64)
    return float((s.sum() - s[0] / 2 - s[-1] / 2) / (len(s) - 1))


def gaussian_kernel(klen: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """RISE's ``gkern``: scipy's gaussian_filter of a klen x klen delta (so its 'reflect' border
    folds the tails back in: not a plain sampled Gaussian), float32 klen x klen."""
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1
    return torch.from_numpy(gaussian_filter(delta, sigma).astype(np.float32))


def rise_blur(x: torch.Tensor, klen: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """RISE's insertion substrate: each channel of the (normalised) input convolved with
    :func:`gaussian_kernel`, zero padding klen // 2 (so borders darken towards zero, as theirs)."""
    k = gaussian_kernel(klen, sigma).to(x.device, x.dtype)
    weight = k.expand(x.shape[1], 1, klen, klen)
    return F.conv2d(x, weight, padding=klen // 2, groups=x.shape[1])


@dataclass(frozen=True)
class CausalCurve:
    """One deletion or insertion game: the class score after each step, and its AUC."""

    mode: str
    scores: np.ndarray  # n_steps + 1 values, the first before any pixel moved
    step: int  # pixels moved per step
    auc: float


def causal_metric(
    model: torch.nn.Module,
    x: torch.Tensor,
    saliency,
    target: int,
    mode: str,
    step: int | None = None,
    substrate: torch.Tensor | None = None,
    batch_size: int = 0,
    score: str = "softmax",
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    pause: Callable[[], None] | None = None,
) -> CausalCurve:
    """RISE's deletion / insertion game (Petsiuk et al., BMVC 2018; ``CausalMetric.single_run``
    of their evaluation.py), batched.

    x is the model's normalised input (1 x 3 x H x W); the saliency (any size) is resized to
    H x W (:func:`saliency_at_input`) and its pixels ranked in decreasing order (ties in raster
    order: RISE's unstable numpy sort leaves them arbitrary). With n = ceil(HW / step) steps,
    score k (k = 0..n) is the class's probability (softmax, or the class's sigmoid for
    multi-label heads) for the input whose k * step most salient pixels are taken from the
    finish image and the others from the start image:

    * deletion: start = x, finish = zeros (zero of the normalised tensor, as RISE feeds it);
    * insertion: start = RISE's blur of x (kernel 11, sigma 5), finish = x.

    AUC = :func:`auc` of the n + 1 scores (trapezoids over the fraction of pixels). step defaults
    to the input's width: 224 pixels per step at 224 x 224, as RISE. The n + 1 inputs are built
    and scored batch_size at a time on x's device (0 = automatic); progress(done, total) after
    each batch; cancel() is checked and pause() called before each batch (Cancelled)."""
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    h, w = x.shape[-2:]
    hw = h * w
    step = int(step or w)
    if step < 1:
        raise ValueError(f"step must be at least 1 pixel, got {step}")
    n_steps = (hw + step - 1) // step
    sal = saliency_at_input(saliency, (h, w), x.device).reshape(-1)
    order = torch.argsort(sal, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(hw, device=x.device)
    if mode == "deletion":
        start, finish = x, (torch.zeros_like(x) if substrate is None else substrate)
    else:
        start, finish = (rise_blur(x) if substrate is None else substrate), x
    bs = _batch_size(batch_size, x.device)
    ks = torch.arange(n_steps + 1, device=x.device)
    scores = torch.empty(n_steps + 1, dtype=torch.float64)
    steps = _Steps(n_steps + 1, progress, cancel, pause, mode)
    for b0 in range(0, n_steps + 1, bs):
        steps.checkpoint()
        k = ks[b0 : b0 + bs]
        moved = (rank[None, :] < (k * step)[:, None]).view(len(k), 1, h, w)
        batch = torch.where(moved, finish, start)
        scores[b0 : b0 + len(k)] = _class_scores(model, batch, target, score)
        steps.advance(len(k))
    arr = scores.numpy()
    return CausalCurve(mode, arr, step, auc(arr))


def deletion(model, x, saliency, target, **kw) -> CausalCurve:
    """RISE's deletion game (lower AUC = the map finds what the model needs): see causal_metric."""
    return causal_metric(model, x, saliency, target, "deletion", **kw)


def insertion(model, x, saliency, target, **kw) -> CausalCurve:
    """RISE's insertion game (higher AUC = better): see causal_metric."""
    return causal_metric(model, x, saliency, target, "insertion", **kw)


@dataclass(frozen=True)
class ConfidenceChange:
    before: float  # Y: the class score of the input
    after: float  # O: the class score of the input times the map
    drop: float  # max(0, Y - O) / Y, one image's term of Average Drop
    increase: bool  # O > Y, one image's term of Increase in Confidence


def confidence_change(model, x, saliency, target: int, score: str = "softmax") -> ConfidenceChange:
    """Chattopadhay et al. (Grad-CAM++, WACV 2018), the Score-CAM paper's faithfulness table:
    Y = p_c(x), O = p_c(x * M) with M the map at the input size min-max normalised to [0, 1]
    multiplying the normalised input (as pytorch-grad-cam's ``multiply_tensor_with_cam``).
    Average Drop = 100 * mean over images of max(0, Y - O) / Y; Increase in Confidence =
    100 * share of images with O > Y. The two inputs go through the model as one batch."""
    sal = saliency_at_input(saliency, x.shape[-2:], x.device)
    scores = _class_scores(model, torch.cat([x, x * sal]), target, score)
    y, o = float(scores[0]), float(scores[1])
    return ConfidenceChange(y, o, max(0.0, y - o) / y if y > 0 else 0.0, o > y)


# ----- ROAD (Rong, Leemann, Borisov, Kasneci, Kasneci, ICML 2022) ------------------------

ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
# The weights of the 8 neighbours in the noisy linear imputation (the authors' imputations.py)
_NEIGHBOURS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
               ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))


def noisy_linear_impute(img: torch.Tensor, keep: np.ndarray, noise: float = 0.01,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """ROAD's noisy linear imputation (the authors' ``NoisyLinearImputer``, as vendored by
    pytorch-grad-cam): every removed pixel (keep == 0) becomes the weighted mean of its 8
    neighbours (1/6 edge, 1/12 corner, the weights of neighbours outside the image dropped),
    known neighbours fixed: one sparse linear system for all removed pixels, solved exactly
    (scipy's spsolve, 3 right-hand sides), then Gaussian noise of std ``noise``. img: 3 x H x W
    (normalised, CPU); keep: H x W of 0/1. The system is assembled vectorised (COO) instead of
    the reference's lil_matrix, same entries in the same order; a removed region that touches
    no known pixel is filled with zeros (the reference's system is singular there)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    c, h, w = img.shape
    keep_flat = np.asarray(keep).reshape(-1)
    img_flat = img.reshape(c, -1)
    img_np = img_flat.numpy()
    indices = np.argwhere(keep_flat == 0).flatten()
    n = len(indices)
    out = img_flat.clone()
    if n == 0:
        return out.reshape_as(img)
    vidx = np.zeros(len(keep_flat), dtype=int)
    vidx[indices] = np.arange(n)
    b = np.zeros((n, c))
    sum_neighbours = np.ones(n)
    rows, cols, vals = [], [], []
    row0, col0 = indices // w, indices % w
    for (dy, dx), weight in _NEIGHBOURS:
        r, q = row0 + dy, col0 + dx
        valid = (r >= 0) & (q >= 0) & (r < h) & (q < w)
        coords = (indices + dy * w + dx)[valid]
        ids = np.flatnonzero(valid)
        known = keep_flat[coords] > 0.5
        b[ids[known], :] -= weight * img_np[:, coords[known]].T
        unknown = keep_flat[coords] < 0.5
        rows.append(ids[unknown])
        cols.append(vidx[coords[unknown]])
        vals.append(np.full(int(unknown.sum()), weight))
        sum_neighbours[~valid] -= weight
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(-sum_neighbours)
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)).tocsc()
    if keep_flat.max(initial=0) > 0.5:
        res = torch.tensor(np.asarray(spsolve(a, b)).reshape(n, c), dtype=torch.float)
    else:
        res = torch.zeros(n, c)
    res = res.t()
    if noise:
        res = res + noise * torch.randn(res.shape, generator=generator)
    out[:, indices] = res
    return out.reshape_as(img)


@dataclass(frozen=True)
class RoadResult:
    percentiles: tuple
    before: float  # the class score of the input
    morf: np.ndarray  # score after removing the most relevant (100 - p)% of pixels, per percentile p
    lerf: np.ndarray  # score after removing the least relevant (100 - p)%
    value: float  # mean over p of (lerf - morf) / 2: higher = more faithful


def road(
    model: torch.nn.Module,
    x: torch.Tensor,
    saliency,
    target: int,
    percentiles: Sequence[int] = ROAD_PERCENTILES,
    noise: float = 0.01,
    seed: int = 0,
    batch_size: int = 0,
    score: str = "softmax",
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    pause: Callable[[], None] | None = None,
) -> RoadResult:
    """ROAD, as pytorch-grad-cam's ``ROADCombined`` (its default percentiles 10..90).

    With M the map at the input size (min-max, [0, 1]), for each percentile p:
    MoRF keeps the pixels with M < percentile(M, p) and imputes the rest (the most relevant);
    LeRF keeps those with 1 - M < percentile(1 - M, p) (imputes the least relevant);
    imputation by :func:`noisy_linear_impute` on the normalised input (noise drawn from a
    generator seeded by ``seed``, so a run is repeatable). Each imputed input is scored
    (softmax probability of the class, or its sigmoid), all of them in batches on x's device,
    and ROAD = mean_p (s_LeRF(p) - s_MoRF(p)) / 2, which is pytorch-grad-cam's
    (mean_p (s_LeRF - s_0) - mean_p (s_MoRF - s_0)) / 2. Imputation is the CPU part (one sparse
    solve per percentile and order): progress counts imputations, then scored inputs."""
    sal = saliency_at_input(saliency, x.shape[-2:]).cpu()
    img = x[0].detach().float().cpu()
    gen = torch.Generator().manual_seed(int(seed))
    n = 2 * len(percentiles)
    bs = _batch_size(batch_size, x.device)
    steps = _Steps(n + n + 1, progress, cancel, pause, "ROAD")
    imputed = []
    for order in ("morf", "lerf"):
        m = sal if order == "morf" else 1 - sal
        for p in percentiles:
            steps.checkpoint()
            # a float32 tensor against numpy's percentile, as the reference compares them
            keep = (m < np.percentile(m.numpy(), p)).numpy().astype(np.float32)
            imputed.append(noisy_linear_impute(img, keep, noise, gen))
            steps.advance()
    inputs = torch.cat([x.detach(), torch.stack(imputed).to(x.device, x.dtype)])
    scores = torch.empty(len(inputs), dtype=torch.float64)
    for b0 in range(0, len(inputs), bs):
        steps.checkpoint()
        scores[b0 : b0 + bs] = _class_scores(model, inputs[b0 : b0 + bs], target, score)
        steps.advance(len(inputs[b0 : b0 + bs]))
    s = scores.numpy()
    morf, lerf = s[1 : 1 + len(percentiles)], s[1 + len(percentiles) :]
    return RoadResult(tuple(percentiles), float(s[0]), morf, lerf, float(np.mean(lerf - morf) / 2))


def faithfulness(
    fwd,
    saliency,
    target: int,
    metrics: Sequence[str] = FAITHFULNESS,
    score: str = "softmax",
    batch_size: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    pause: Callable[[], None] | None = None,
) -> dict[str, float]:
    """The faithfulness metrics asked for, of one map of one image: ``fwd`` is the engine's
    ForwardPass (its model and normalised input), saliency the map (any size, unnormalised).
    Returns {"deletion": AUC, "insertion": AUC, "average_drop": max(0, Y - O) / Y,
    "increase": 1.0 or 0.0, "road": ROAD} for the names asked. progress(metric, done, total)."""
    unknown = [m for m in metrics if m not in FAITHFULNESS]
    if unknown:
        raise ValueError(f"unknown faithfulness metric(s) {', '.join(unknown)}; choose from {', '.join(FAITHFULNESS)}")
    model, x = fwd.backbone.batch_model(), fwd.input  # logits only: the BatchNorm-folded copy
    out: dict[str, float] = {}

    def hooks(name):
        cb = (lambda done, total: progress(name, done, total)) if progress is not None else None
        return {"progress": cb, "cancel": cancel, "pause": pause}

    for name in ("deletion", "insertion"):
        if name in metrics:
            out[name] = causal_metric(model, x, saliency, target, name, batch_size=batch_size, score=score,
                                      **hooks(name)).auc
    if "average_drop" in metrics or "increase" in metrics:
        if cancel is not None and cancel():
            raise Cancelled("confidence change cancelled")
        cc = confidence_change(model, x, saliency, target, score)
        if "average_drop" in metrics:
            out["average_drop"] = cc.drop
        if "increase" in metrics:
            out["increase"] = float(cc.increase)
    if "road" in metrics:
        out["road"] = road(model, x, saliency, target, batch_size=batch_size, score=score, **hooks("road")).value
    return out


# ======================================================================================
# Between methods
# ======================================================================================


@dataclass(frozen=True)
class Agreement:
    """Method-by-method agreement of maps of one image and class (symmetric matrices, the
    methods in ``names`` order; NaN where a value is undefined)."""

    names: tuple[str, ...]
    pearson: np.ndarray  # Pearson r of the maps' pixel values
    iou: np.ndarray  # IoU of the regions map >= threshold
    threshold: float


def agreement(maps: dict[str, np.ndarray], threshold: float = 0.5) -> Agreement:
    """How alike the maps of several methods are: for each pair, Pearson's r of their pixel
    values, r = cov(a, b) / (std(a) std(b)) (NaN when a map is constant), and the IoU of
    {a >= threshold} and {b >= threshold} (NaN when both regions are empty). The maps are
    taken as given (all the same size, normalised the same way, e.g. min-max to [0, 1])."""
    names = tuple(maps)
    flat = [np.asarray(maps[n], np.float64).ravel() for n in names]
    if len({f.size for f in flat}) > 1:
        raise ValueError("the maps differ in size; resize them to one size first")
    n = len(names)
    r = np.full((n, n), np.nan)
    j = np.full((n, n), np.nan)
    centred = [f - f.mean() for f in flat]
    norms = [float(np.sqrt((c * c).sum())) for c in centred]
    regions = [f >= threshold for f in flat]
    for a in range(n):
        for b in range(a, n):
            if norms[a] > 0 and norms[b] > 0:
                r[a, b] = r[b, a] = float(np.clip((centred[a] * centred[b]).sum() / (norms[a] * norms[b]), -1, 1))
            union = np.logical_or(regions[a], regions[b]).sum()
            if union:
                j[a, b] = j[b, a] = float(np.logical_and(regions[a], regions[b]).sum() / union)
    return Agreement(names, r, j, threshold)

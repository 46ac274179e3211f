"""Scoring CAM methods against ground truth on a VOC-layout folder (the testbed or real VOC).

GT-known protocol: every class present in an image is explained, its map resized to the
image and divided by its maximum (LPCAM's and SIPE's normalisation; negative values count as
0). Metrics, per image and in total:

* seed mIoU: each pixel takes the argmax of (a constant background score t, the class maps);
  t is swept and the best mIoU is reported with its t; per-class IoU at that t;
* foreground precision and recall at that t (any class vs background);
* on the testbed, the recall of the correct class on objects' bodies and on their parts;
* GT-known Loc: the box of the largest region of (map >= b) has IoU >= 0.5 with a ground-truth
  box of the class, b swept; Top-1 Loc: the same for the top-1 class, which must be right;
* energy pointing game: the share of the min-max normalised map's energy inside the class's
  ground-truth boxes (Wang et al., Score-CAM).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .engine import Explainer
from .metrics import energy_inside
from .render import threshold_region, to_image_map
from .voc import VOID, VOCDataset

THRESHOLDS = tuple(round(float(t), 2) for t in np.arange(0.05, 0.96, 0.05))


def box_iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    area = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return inter / area if area > 0 else 0.0


def confusion(pred: np.ndarray, gt: np.ndarray, n: int) -> np.ndarray:
    """n x n counts (rows: ground truth, columns: prediction), void pixels left out."""
    valid = gt != VOID
    return np.bincount(n * gt[valid].astype(int) + pred[valid].astype(int), minlength=n * n).reshape(n, n)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU (NaN where a class is neither in the truth nor predicted)."""
    tp = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def seed_labels(maps: np.ndarray, classes: list[int], t: float) -> np.ndarray:
    """Argmax of (background t, maps): 0 for background, class + 1 otherwise."""
    scores = np.concatenate([np.full((1, *maps.shape[1:]), t, np.float32), maps])
    lut = np.array([0] + [c + 1 for c in classes])
    return lut[scores.argmax(axis=0)]


@dataclass
class MethodTotals:
    method: str
    n_classes: int
    conf: dict = field(default_factory=dict)  # t -> confusion matrix
    body: dict = field(default_factory=dict)  # t -> [hit, total]
    part: dict = field(default_factory=dict)
    loc_hits: dict = field(default_factory=dict)  # b -> hits (GT-known, per image-class)
    top1_hits: dict = field(default_factory=dict)  # b -> hits (per image)
    loc_total: int = 0
    images: int = 0
    energy: list = field(default_factory=list)
    seconds: float = 0.0

    def __post_init__(self):
        n = self.n_classes + 1
        for t in THRESHOLDS:
            self.conf[t] = np.zeros((n, n), np.int64)
            self.body[t] = [0, 0]
            self.part[t] = [0, 0]
            self.loc_hits[t] = 0
            self.top1_hits[t] = 0

    def summary(self, class_names) -> dict:
        mious = {t: float(np.nanmean(iou_from_confusion(c))) for t, c in self.conf.items()}
        best_t = max(mious, key=mious.get)
        conf = self.conf[best_t]
        ious = iou_from_confusion(conf)
        fg_tp = conf[1:, 1:].sum()  # foreground predicted as some class, binary view
        fg_pred, fg_gt = conf[:, 1:].sum(), conf[1:, :].sum()
        best_b = max(self.loc_hits, key=self.loc_hits.get)
        best_top1 = max(self.top1_hits, key=self.top1_hits.get)
        out = {
            "method": self.method,
            "images": self.images,
            "seed_mIoU": round(mious[best_t], 4),
            "best_bg_threshold": best_t,
            "per_class_IoU": {name: round(float(v), 4) for name, v in zip(("background", *class_names), ious)},
            "fg_precision": round(float(fg_tp / fg_pred), 4) if fg_pred else 0.0,
            "fg_recall": round(float(fg_tp / fg_gt), 4) if fg_gt else 0.0,
            "gt_known_loc": round(self.loc_hits[best_b] / self.loc_total, 4) if self.loc_total else 0.0,
            "loc_threshold": best_b,
            "top1_loc": round(self.top1_hits[best_top1] / self.images, 4) if self.images else 0.0,
            "top1_loc_threshold": best_top1,
            "energy_pointing_game": round(float(np.mean(self.energy)), 4) if self.energy else 0.0,
            "seconds_per_image": round(self.seconds / max(self.images, 1), 4),
        }
        if self.body[best_t][1]:
            out["recall_body"] = round(self.body[best_t][0] / self.body[best_t][1], 4)
            out["recall_part"] = round(self.part[best_t][0] / self.part[best_t][1], 4)
        return out


def _recall_on(region: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> tuple[int, int]:
    return int(((pred == gt) & region).sum()), int(region.sum())


def evaluate(
    dataset: VOCDataset,
    explainer: Explainer,
    methods: list[str],
    params: dict[str, dict] | None = None,
    bank=None,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    rows_out: list | None = None,
) -> list[dict]:
    """Totals per method (see the module docstring); per-image rows appended to rows_out."""
    params = params or {}
    bb = explainer.backbone
    names = dataset.class_names
    if bb.num_classes != len(names):
        raise ValueError(f"{bb.name} has {bb.num_classes} classes, the dataset {len(names)}")
    totals = {m: MethodTotals(m, len(names)) for m in methods}
    samples = list(dataset)[:limit] if limit else list(dataset)
    for i, sample in enumerate(samples):
        image = sample.image()
        gt = sample.mask
        classes = sample.labels
        if not classes:
            continue
        top1 = int(explainer.forward(image).probs.argmax())
        parts = sample.parts
        for m in methods:
            tot = totals[m]
            t0 = time.perf_counter()
            wanted = sorted(set(classes) | {top1})
            method_params = dict(params.get(m) or {})
            if m == "sipe" and not method_params.get("labels"):
                # SIPE seeds all of the image's classes against each other: give it the truth
                method_params["labels"] = ",".join(str(c) for c in classes)
            maps = {c: to_image_map(explainer.compute(image, m, c, params=method_params, bank=bank).map,
                                    image.size, "max") for c in wanted}
            tot.seconds += time.perf_counter() - t0
            tot.images += 1
            stack = np.stack([maps[c] for c in classes])
            per_t = {}
            for t in THRESHOLDS:
                pred = seed_labels(stack, classes, t)
                conf = confusion(pred, gt, len(names) + 1)
                tot.conf[t] += conf
                per_t[t] = conf
                if parts is not None:
                    for region, acc in ((parts == 1, tot.body), (parts == 2, tot.part)):
                        hit, total = _recall_on(region, gt, pred)
                        acc[t][0] += hit
                        acc[t][1] += total
            for c in classes:
                boxes = sample.boxes(c)
                if not boxes:
                    continue
                tot.loc_total += 1
                lo, hi = maps[c].min(), maps[c].max()
                mm = (maps[c] - lo) / (hi - lo) if hi > lo else np.zeros_like(maps[c])
                inside = np.zeros(gt.shape, bool)
                for x1, y1, x2, y2 in boxes:
                    inside[y1 : y2 + 1, x1 : x2 + 1] = True
                tot.energy.append(energy_inside(mm, inside))
                for b in THRESHOLDS:
                    region = threshold_region(maps[c], b)
                    if region.box is not None and max(box_iou(region.box, g) for g in boxes) >= 0.5:
                        tot.loc_hits[b] += 1
            top1_boxes = sample.boxes(top1) if top1 in classes else []
            for b in THRESHOLDS:
                region = threshold_region(maps[top1], b) if top1_boxes else None
                if region is not None and region.box is not None and max(box_iou(region.box, g) for g in top1_boxes) >= 0.5:
                    tot.top1_hits[b] += 1
            if rows_out is not None:
                rows_out.append({"image": sample.id, "method": m, "classes": " ".join(names[c] for c in classes),
                                 "top1": names[top1], "_per_t": per_t})
        if progress is not None:
            progress(i + 1, len(samples))
    summaries = [totals[m].summary(names) for m in methods]
    if rows_out is not None:
        best = {s["method"]: s["best_bg_threshold"] for s in summaries}
        for row in rows_out:
            conf = row.pop("_per_t")[best[row["method"]]]
            row["mIoU_at_best_t"] = round(float(np.nanmean(iou_from_confusion(conf))), 4)
    return summaries


def write_results(path: str | Path, summaries: list[dict], rows: list[dict]) -> None:
    """CSV: one row per (image, method), then one TOTAL row per method; JSON beside it with
    the full totals (per-class IoU included)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    total_keys = ["seed_mIoU", "best_bg_threshold", "fg_precision", "fg_recall", "recall_body", "recall_part",
                  "gt_known_loc", "loc_threshold", "top1_loc", "energy_pointing_game", "seconds_per_image"]
    fields = ["image", "method", "classes", "top1", "mIoU_at_best_t", *total_keys]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
        for s in summaries:
            writer.writerow({"image": "TOTAL", **s})
    path.with_suffix(".json").write_text(json.dumps(summaries, indent=2))

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
  ground-truth boxes (Wang et al., Score-CAM);
* pointing game: the map's maximum within 15 px of the class's pixels (Zhang et al.);
* MaxBoxAccV2 (IoU 0.3/0.5/0.7, every contour's box) and PxAP over the class's pixels, VOC's
  void border left out (Choe et al., CVPR 2020), on the min-max normalised map at the image's
  resolution, per (image, class);
* with ``metrics``: the faithfulness of the map of the top-1 class (the prediction, as RISE
  and the Score-CAM paper explain it): deletion and insertion AUC, Average Drop (a fraction,
  x 100 for the papers' percent), Increase in Confidence (a fraction), ROAD; means over images.

The work of one image is ONE function, :func:`evaluate_image` (explainer, sample, methods,
params, metrics) -> rows: JSON-ready dicts, one per method, that carry everything the totals
need. :func:`evaluate` schedules it through an engine — :class:`InProcess` (here, in order)
or ``cam_core.distributed.RayEngine`` (actors on a Ray cluster) — appends each image's rows
to a :class:`RowStore` (a JSONL file beside the CSV) as it finishes, and builds the totals
from the stored rows in dataset order, so both engines write the same CSV, and a run that
was stopped resumes where it stopped.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .engine import Explainer
from .errors import Cancelled, MethodError
from .kmeans import KMeansError
from .images import load_image
from .methods import get_method
from .methods.base import NEEDS_BANK
from .metrics import (FAITHFULNESS, MaxBoxAccV2, box_iou, box_ious_by_threshold, boxes_mask, energy_inside,
                      faithfulness, pixel_histograms, pointing_game, pxap)
from .prototypes import IMAGE_SUFFIXES, BankError
from .render import threshold_region, to_image_map
from .voc import VOID, DatasetError, VOCDataset

THRESHOLDS = tuple(round(float(t), 2) for t in np.arange(0.05, 0.96, 0.05))
ROWS_SUFFIX = ".rows.jsonl"
__all__ = ["THRESHOLDS", "box_iou", "confusion", "iou_from_confusion", "seed_labels", "evaluate_image", "evaluate",
           "EvalJob", "InProcess", "RowStore", "StoreError", "write_results", "rows_path"]


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


def _recall_on(region: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> tuple[int, int]:
    return int(((pred == gt) & region).sum()), int(region.sum())


def _sparse(conf: np.ndarray) -> list[list[int]]:
    g, p = np.nonzero(conf)
    return [[int(a), int(b), int(conf[a, b])] for a, b in zip(g, p)]


def _minmax(m: np.ndarray) -> np.ndarray:
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def method_params(method: str, params: dict | None, bank=None) -> dict:
    """The parameters a row of `method` was computed with, as stored in its row: the method's
    resolved parameters (defaults filled in) and, for a method that reads a prototype bank,
    the bank's content key. A stored row is reused only when these are equal."""
    spec = get_method(method)
    out = dict(sorted(spec.resolve_params(params).items()))
    if NEEDS_BANK in spec.needs:
        out["bank"] = bank.key if bank is not None and out.get("source", "bank") == "bank" else "image"
    return json.loads(json.dumps(out))


def reads_bank(methods: list[str], params: dict | None = None) -> bool:
    """Whether one of `methods` reads a prototype bank (declares NEEDS_BANK) with these parameters
    (not ``source=image``, which clusters each image's own pixels)."""
    params = params or {}
    return any(NEEDS_BANK in get_method(m).needs
               and get_method(m).resolve_params(params.get(m)).get("source", "bank") == "bank" for m in methods)


def _bank_in_use(explainer: Explainer, methods: list[str], params: dict, bank=None):
    """The bank the bank-reading methods will use: `bank`, else set_bank's or the backbone's
    dataset bank (built on first use), so that the rows name the bank they were computed with;
    None when they read each image's own pixels."""
    if bank is not None or not reads_bank(methods, params):
        return bank
    return explainer.default_bank()


def evaluate_image(
    explainer: Explainer,
    sample,
    methods: list[str],
    params: dict[str, dict] | None = None,
    metrics: Iterable[str] = (),
    bank=None,
    metric_score: str = "softmax",
    batch_size: int = 0,
    layer: str | None = None,
) -> list[dict]:
    """Everything the evaluation computes on one image, one row per method (JSON-ready).

    ``sample`` is a VOCSample or a LoadedSample (id, image(), mask, parts, labels, boxes(cls),
    class_names). Each row has the image's id, the method, the method's parameters, its
    classes and top-1 class names, the seconds its maps took, the per-image means of the
    energy pointing game and the pointing game, the faithfulness metrics asked for (of the
    top-1 class's map), and ``stats``: the sums the totals are built from (sparse confusion
    matrices per background threshold, body/part hits, localisation hits per box threshold,
    each class's energy, pointing hit, best IoU per CAM threshold (MaxBoxAccV2), pixel
    histograms (PxAP)) and the image's class indices (``labels``, for per-class results).
    ``layer``: the feature layer the methods read (None: the backbone's default). An image
    without a labelled class gives no rows."""
    params = params or {}
    metrics = [m for m in FAITHFULNESS if m in set(metrics)]
    bank = _bank_in_use(explainer, methods, params, bank)
    names = sample.class_names
    gt = sample.mask
    classes = sample.labels
    if not classes:
        return []
    image = sample.image()
    fwd = explainer.forward(image, layer)
    top1 = int(fwd.probs.argmax())
    parts = sample.parts
    n = len(names) + 1
    rows = []
    for m in methods:
        spec = get_method(m)
        t0 = time.perf_counter()
        wanted = sorted(set(classes) | {top1})
        given = dict(params.get(m) or {})
        if "labels" in {p.name for p in spec.params} and not given.get("labels"):
            # SIPE seeds all of the image's classes against each other: give it the truth
            given["labels"] = ",".join(str(c) for c in classes)
        refused = None
        try:
            results = {c: explainer.compute(image, m, c, layer, params=given, bank=bank) for c in wanted}
            maps = {c: to_image_map(results[c].map, image.size, "max") for c in wanted}
        except (MethodError, BankError, KMeansError) as exc:
            # One image the method declines (e.g. LPCAM's K above the class's few pixels): it
            # scores as an empty map and the run goes on; the row and the totals say so.
            results, refused = None, str(exc)
            maps = {c: np.zeros(image.size, np.float32) for c in wanted}
        seconds = time.perf_counter() - t0
        stack = np.stack([maps[c] for c in classes])
        conf, body, part = [], [], []
        for t in THRESHOLDS:
            pred = seed_labels(stack, classes, t)
            conf.append(_sparse(confusion(pred, gt, n)))
            if parts is not None:
                body.append(list(_recall_on(parts == 1, gt, pred)))
                part.append(list(_recall_on(parts == 2, gt, pred)))
        loc_hits = [0] * len(THRESHOLDS)
        loc_total = 0
        energy, pointing, box_ious = [], [], []
        px_true = px_false = None
        ignore = gt == VOID
        for c in classes:
            mm = _minmax(maps[c])
            pointing.append(int(pointing_game(mm, gt == c + 1)))
            ht, hf = pixel_histograms(mm, gt == c + 1, ignore)
            px_true = ht if px_true is None else px_true + ht
            px_false = hf if px_false is None else px_false + hf
            boxes = sample.boxes(c)
            if not boxes:
                continue
            loc_total += 1
            energy.append(energy_inside(mm, boxes_mask(boxes, gt.shape)))
            box_ious.append([float(v) for v in box_ious_by_threshold(mm, boxes)])
            for i, b in enumerate(THRESHOLDS):
                region = threshold_region(maps[c], b)
                if region.box is not None and max(box_iou(region.box, g) for g in boxes) >= 0.5:
                    loc_hits[i] += 1
        top1_boxes = sample.boxes(top1) if top1 in classes else []
        top1_hits = []
        for b in THRESHOLDS:
            region = threshold_region(maps[top1], b) if top1_boxes else None
            top1_hits.append(int(region is not None and region.box is not None
                                 and max(box_iou(region.box, g) for g in top1_boxes) >= 0.5))
        row = {
            "image": sample.id,
            "method": m,
            "params": method_params(m, params.get(m), bank),
            "classes": " ".join(names[c] for c in classes),
            "top1": names[top1],
            "seconds": round(seconds, 6),
            "energy_pointing_game": float(np.mean(energy)) if energy else None,
            "pointing_game": float(np.mean(pointing)),
        }
        if refused is not None:
            row["refused"] = refused
        if metrics and results is not None:
            t1 = time.perf_counter()
            row.update(faithfulness(fwd, results[top1].map, top1, metrics, score=metric_score, batch_size=batch_size))
            row["metric_score"] = metric_score
            row["metric_seconds"] = round(time.perf_counter() - t1, 6)
        row["stats"] = {
            "conf": conf, "body": body or None, "part": part or None, "loc_hits": loc_hits, "loc_total": loc_total,
            "top1_hits": top1_hits, "energy": energy, "pointing": pointing, "box_ious": box_ious,
            "px_true": px_true.tolist(), "px_false": px_false.tolist(), "labels": list(classes),
        }
        rows.append(row)
    return rows


@dataclass
class MethodTotals:
    """Sums over the rows of one method; summary() gives the totals."""

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
    pointing: list = field(default_factory=list)
    boxacc: MaxBoxAccV2 = field(default_factory=MaxBoxAccV2)
    px_true: np.ndarray | None = None
    px_false: np.ndarray | None = None
    faith: dict = field(default_factory=dict)  # metric -> per-image values
    seconds: float = 0.0
    refused: int = 0  # images the method declined (scored as empty maps)

    def __post_init__(self):
        n = self.n_classes + 1
        for t in THRESHOLDS:
            self.conf[t] = np.zeros((n, n), np.int64)
            self.body[t] = [0, 0]
            self.part[t] = [0, 0]
            self.loc_hits[t] = 0
            self.top1_hits[t] = 0

    def add(self, row: dict) -> None:
        st = row["stats"]
        self.images += 1
        self.refused += "refused" in row
        self.seconds += row["seconds"]
        for i, t in enumerate(THRESHOLDS):
            for g, p, c in st["conf"][i]:
                self.conf[t][g, p] += c
            for key, acc in (("body", self.body), ("part", self.part)):
                if st[key]:
                    acc[t][0] += st[key][i][0]
                    acc[t][1] += st[key][i][1]
            self.loc_hits[t] += st["loc_hits"][i]
            self.top1_hits[t] += st["top1_hits"][i]
        self.loc_total += st["loc_total"]
        self.energy += st["energy"]
        self.pointing += st["pointing"]
        for ious in st["box_ious"]:
            self.boxacc.add(ious)
        pt, pf = np.asarray(st["px_true"], np.int64), np.asarray(st["px_false"], np.int64)
        self.px_true = pt if self.px_true is None else self.px_true + pt
        self.px_false = pf if self.px_false is None else self.px_false + pf
        for name in FAITHFULNESS:
            if row.get(name) is not None:
                self.faith.setdefault(name, []).append(row[name])

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
            "pointing_game": round(float(np.mean(self.pointing)), 4) if self.pointing else 0.0,
            "maxboxacc_v2": round(self.boxacc.value, 4),
            "maxboxacc_v2_by_iou": {str(d): round(v, 4) for d, v in self.boxacc.accuracies().items()},
            "pxap": round(pxap(self.px_true, self.px_false), 4) if self.px_true is not None else float("nan"),
            "seconds_per_image": round(self.seconds / max(self.images, 1), 4),
        }
        for name in FAITHFULNESS:
            if name in self.faith:
                out[name] = round(float(np.mean(self.faith[name])), 4)
        if self.refused:
            out["refused_images"] = self.refused
        if self.body[best_t][1]:
            out["recall_body"] = round(self.body[best_t][0] / self.body[best_t][1], 4)
            out["recall_part"] = round(self.part[best_t][0] / self.part[best_t][1], 4)
        return out


# ----- scheduling -------------------------------------------------------------------------


@dataclass
class EvalJob:
    """What every image's work needs besides the explainer and the sample; picklable, so a
    distributed engine ships it to its workers once."""

    params: dict = field(default_factory=dict)
    metrics: tuple = ()
    bank: object = None
    metric_score: str = "softmax"
    batch_size: int = 0
    layer: str | None = None

    def __call__(self, explainer: Explainer, sample, methods: list[str]) -> list[dict]:
        return evaluate_image(explainer, sample, methods, self.params, self.metrics, self.bank, self.metric_score,
                              self.batch_size, self.layer)


class InProcess:
    """The in-process engine: the images one after the other, here."""

    name = "in-process"

    def run(self, explainer: Explainer, job: EvalJob, todo: Iterable[tuple[object, list[str]]]
            ) -> Iterator[tuple[str, list[dict]]]:
        for sample, methods in todo:
            yield sample.id, job(explainer, sample, methods)


class StoreError(ValueError):
    """A rows file that belongs to another run, or is damaged; the message is for the user."""


def rows_path(out: str | Path) -> Path:
    """Where the rows of an evaluation whose CSV is `out` are kept: results.csv -> results.rows.jsonl."""
    out = Path(out)
    return out.with_name(out.stem + ROWS_SUFFIX)


class RowStore:
    """The per-image rows of one evaluation, one JSON object per line, appended (and flushed)
    as each image finishes, so a run that is killed loses at most the image in progress.

    The first line is ``{"run": {...}}`` (backbone, dataset, split): a file of another run is
    refused. A row is keyed by (image id, method); it is reused by a later run when its
    parameters (:func:`method_params`) are the same and it has every faithfulness metric asked
    for with the same score; a later row of the same key replaces an earlier one. A last line
    cut short by a crash is dropped."""

    def __init__(self, path: str | Path, run: dict, restart: bool = False):
        self.path = Path(path)
        self.run = json.loads(json.dumps(run))
        self.restart = restart

    def load(self) -> dict[tuple[str, str], dict]:
        """The stored rows (creating the file, with its header, if there is none)."""
        if self.restart or not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"run": self.run}) + "\n")
            os.replace(tmp, self.path)
            self.restart = False
            return {}
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        rows: dict[tuple[str, str], dict] = {}
        good_end = 0
        for i, line in enumerate(lines):
            if not line.strip():
                good_end += len(line) + 1
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                if i == len(lines) - 1 or all(not rest.strip() for rest in lines[i + 1 :]):
                    break  # a line cut short by a crash: dropped, and overwritten by the next append
                raise StoreError(f"{self.path}: line {i + 1} is not JSON; move the file away or use --restart") from None
            if i == 0:
                if obj.get("run") != self.run:
                    raise StoreError(
                        f"{self.path} holds rows of another run ({_describe(obj.get('run'))}; this one: "
                        f"{_describe(self.run)}); give another --out, or --restart to discard them")
            else:
                rows[(obj["image"], obj["method"])] = obj
            good_end += len(line) + 1
        if good_end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
        elif data and not data.endswith(b"\n"):
            with open(self.path, "ab") as f:
                f.write(b"\n")
        return rows

    def append(self, rows: list[dict]) -> None:
        if not rows:
            return
        text = "".join(json.dumps(r, allow_nan=True) + "\n" for r in rows)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()


def _describe(run) -> str:
    if not isinstance(run, dict):
        return "no header"
    return ", ".join(f"{k} {run.get(k)}" for k in ("backbone", "dataset", "split"))


def _check(cancel: Callable[[], bool] | None, done: int, total: int) -> None:
    if cancel is not None and cancel():
        raise Cancelled(f"evaluation stopped after {done} of {total} images")


def _reusable(row: dict | None, params: dict, metrics: list[str], score: str) -> bool:
    if row is None or row.get("params") != params:
        return False
    return all(m in row for m in metrics) and (not metrics or row.get("metric_score") == score)


def evaluate(
    dataset: VOCDataset,
    explainer: Explainer,
    methods: list[str],
    params: dict[str, dict] | None = None,
    bank=None,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    rows_out: list | None = None,
    metrics: Iterable[str] = (),
    metric_score: str = "softmax",
    engine=None,
    store: RowStore | None = None,
    batch_size: int = 0,
    layer: str | None = None,
    keep_stats: bool = False,
    cancel: Callable[[], bool] | None = None,
) -> list[dict]:
    """Totals per method (see the module docstring); per-image rows appended to rows_out
    (with their ``stats`` when keep_stats: what cam_core.results' per-class tables read).

    ``engine``: None or InProcess() runs here; a ``cam_core.distributed.RayEngine`` runs the
    same :func:`evaluate_image` on Ray actors. ``store``: a RowStore to resume from and to
    append to (images whose rows it already holds are not computed again). progress(done,
    total) counts images, those found in the store included. cancel() is asked before each
    image is started: True raises Cancelled, the finished images' rows being in the store."""
    params = params or {}
    metrics = [m for m in FAITHFULNESS if m in set(metrics)]
    unknown = set(metrics) - set(FAITHFULNESS)
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(sorted(unknown))}")
    bb = explainer.backbone
    names = dataset.class_names
    if bb.num_classes != len(names):
        raise ValueError(f"{bb.name} has {bb.num_classes} classes, the dataset {len(names)}")
    samples = list(dataset)[:limit] if limit else list(dataset)
    bank = _bank_in_use(explainer, methods, params, bank)  # built here once, not by each worker
    wanted = {m: method_params(m, params.get(m), bank) for m in methods}
    stored = store.load() if store is not None else {}
    done: dict[tuple[str, str], dict] = {}
    todo = []
    for s in samples:
        missing = []
        for m in methods:
            row = stored.get((s.id, m))
            if _reusable(row, wanted[m], metrics, metric_score):
                done[(s.id, m)] = row
            else:
                missing.append(m)
        if missing:
            todo.append((s, missing))
    total = len(samples)
    finished = total - len(todo)
    if progress is not None and finished:
        progress(finished, total)
    job = EvalJob(params, tuple(metrics), bank, metric_score, batch_size, layer)
    if todo:
        _check(cancel, finished, total)
    for _, rows in (engine or InProcess()).run(explainer, job, todo):
        if store is not None:
            store.append(rows)
        for row in rows:
            done[(row["image"], row["method"])] = row
        finished += 1
        if progress is not None:
            progress(finished, total)
        if finished < total:
            _check(cancel, finished, total)  # before the engine is asked for (starts) the next image
    totals = {m: MethodTotals(m, len(names)) for m in methods}
    ordered = []
    for s in samples:  # dataset order, whatever order the engine finished in
        for m in methods:
            row = done.get((s.id, m))
            if row is not None:
                totals[m].add(row)
                ordered.append(row)
    summaries = [totals[m].summary(names) for m in methods]
    best = {s["method"]: s["best_bg_threshold"] for s in summaries}
    n = len(names) + 1
    for row in ordered:
        conf = np.zeros((n, n), np.int64)
        for g, p, c in row["stats"]["conf"][THRESHOLDS.index(best[row["method"]])]:
            conf[g, p] += c
        out = dict(row) if keep_stats else {k: v for k, v in row.items() if k != "stats"}
        out["mIoU_at_best_t"] = round(float(np.nanmean(iou_from_confusion(conf))), 4)
        if rows_out is not None:
            rows_out.append(out)
    return summaries


TOTAL_KEYS = ["seed_mIoU", "best_bg_threshold", "fg_precision", "fg_recall", "recall_body", "recall_part",
              "gt_known_loc", "loc_threshold", "top1_loc", "energy_pointing_game", "pointing_game", "maxboxacc_v2",
              "pxap", "seconds_per_image"]


def write_results(path: str | Path, summaries: list[dict], rows: list[dict]) -> None:
    """CSV: one row per (image, method), then one TOTAL row per method; JSON beside it with
    the full totals (per-class IoU included). The faithfulness columns appear when the
    totals have them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    faith = [m for m in FAITHFULNESS if any(m in s for s in summaries)]
    fields = ["image", "method", "classes", "top1", "mIoU_at_best_t", *TOTAL_KEYS, *faith]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "seconds_per_image": row.get("seconds")})
        for s in summaries:
            writer.writerow({"image": "TOTAL", **s})
    path.with_suffix(".json").write_text(json.dumps(summaries, indent=2))


# ----- without ground truth: a folder of images, faithfulness only --------------------------


@dataclass(frozen=True)
class FolderSample:
    id: str  # the path relative to the folder
    path: Path

    def image(self):
        return load_image(self.path)


class ImageFolder:
    """Every image file under a folder (an ImageFolder's class sub-folders included), in
    sorted order; no ground truth: for :func:`evaluate_faithfulness`. ``split`` is "all"."""

    split = "all"

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root} is not a folder")
        files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DatasetError(f"{self.root} holds no image file")
        self.samples = [FolderSample(p.relative_to(self.root).as_posix(), p) for p in files]
        self.ids = [s.id for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)


def faithfulness_rows(explainer: Explainer, sample, methods: list[str], params: dict | None, metrics: list[str],
                      layer: str | None = None, metric_score: str = "softmax", batch_size: int = 0,
                      bank=None) -> list[dict]:
    """One row per method: the faithfulness metrics of the map of the image's top-1 class (as
    :func:`evaluate_image` computes them, without the ground-truth part). ``bank``: LPCAM's
    (None: set_bank's or the backbone's dataset bank, as :func:`evaluate`)."""
    params = params or {}
    bank = _bank_in_use(explainer, methods, params, bank)
    image = sample.image()
    fwd = explainer.forward(image, layer)
    top1 = int(fwd.probs.argmax())
    rows = []
    for m in methods:
        t0 = time.perf_counter()
        res = explainer.compute(image, m, top1, layer, params.get(m), bank=bank)
        row = {"image": sample.id, "method": m, "params": method_params(m, params.get(m), bank),
               "top1": explainer.backbone.class_names[top1], "seconds": round(time.perf_counter() - t0, 6)}
        t1 = time.perf_counter()
        row.update(faithfulness(fwd, res.map, top1, metrics, score=metric_score, batch_size=batch_size))
        row["metric_score"] = metric_score
        row["metric_seconds"] = round(time.perf_counter() - t1, 6)
        rows.append(row)
    return rows


def evaluate_faithfulness(dataset, explainer: Explainer, methods: list[str], params: dict | None = None,
                          metrics: Iterable[str] = FAITHFULNESS, limit: int | None = None,
                          progress: Callable[[int, int], None] | None = None, rows_out: list | None = None,
                          store=None, layer: str | None = None, metric_score: str = "softmax",
                          cancel: Callable[[], bool] | None = None, bank=None) -> list[dict]:
    """Faithfulness only, on images without ground truth (an :class:`ImageFolder`): per method,
    the mean over images of each metric of :func:`faithfulness_rows`; rows appended to
    rows_out (method by method, each in the folder's order); a store (RowStore or cam_core.results.ResultCache) to resume
    from and append to, and cancel() before each image computed, as :func:`evaluate`."""
    params = params or {}
    metrics = [m for m in FAITHFULNESS if m in set(metrics)]
    if not metrics:
        raise ValueError("choose at least one faithfulness metric: without ground truth there is nothing else")
    samples = list(dataset)[:limit] if limit else list(dataset)
    bank = _bank_in_use(explainer, methods, params, bank)  # the rows name the bank LPCAM really read
    wanted = {m: method_params(m, params.get(m), bank) for m in methods}
    stored = store.load() if store is not None else {}
    done = {k: r for k, r in stored.items() if k[1] in wanted and _reusable(r, wanted[k[1]], metrics, metric_score)}
    for i, s in enumerate(samples):
        missing = [m for m in methods if (s.id, m) not in done]
        if missing:
            _check(cancel, i, len(samples))
            rows = faithfulness_rows(explainer, s, missing, params, metrics, layer, metric_score, bank=bank)
            if store is not None:
                store.append(rows)
            done.update({(r["image"], r["method"]): r for r in rows})
        if progress is not None:
            progress(i + 1, len(samples))
    summaries = []
    for m in methods:
        rows = [done[(s.id, m)] for s in samples]
        summaries.append({"method": m, "images": len(rows), **{k: round(float(np.mean([r[k] for r in rows])), 4)
                                                               for k in metrics},
                          "seconds_per_image": round(float(np.mean([r["seconds"] for r in rows])), 4) if rows else 0.0})
        if rows_out is not None:
            rows_out.extend(rows)
    return summaries

"""Reading an evaluation's results: a disk cache of per-image rows, per-class tables, the
images where a method fails worst, and those where two methods disagree most.

No Streamlit here. The rows are those of :func:`cam_core.evaluate.evaluate` (``rows_out``, with
``keep_stats=True`` for :func:`per_class`).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from .backbones import Backbone
from .banks import weights_digest
from .evaluate import RowStore, method_params
from .metrics import FAITHFULNESS

# The per-image numbers a row has, and whether a higher value is the better one.
HIGHER_IS_BETTER = {
    "mIoU_at_best_t": True,
    "pointing_game": True,
    "energy_pointing_game": True,
    "deletion": False,
    "insertion": True,
    "average_drop": False,
    "increase": True,
    "road": True,
}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


def dataset_key(dataset) -> dict:
    """What names a dataset in the cache: its folder (resolved), the split, and a digest of
    its image ids (a folder generated again with other images gets other results; images
    edited in place under the same ids are not noticed). ``dataset``: a VOCDataset or an
    ImageFolder."""
    ids = "\n".join(dataset.ids)
    return {"dataset": str(Path(dataset.root).resolve()), "split": dataset.split,
            "ids": hashlib.sha256(ids.encode()).hexdigest()[:16]}


class ResultCache:
    """Rows of evaluations on disk, one RowStore file (JSONL, see cam_core.evaluate) per
    (dataset, backbone, layer, method, parameters), named by a digest of those; a store for
    :func:`cam_core.evaluate.evaluate` (``load()`` and ``append(rows)``). The backbone is its
    name and a digest of its weights (cam_core.banks.weights_digest): two checkpoints of the
    same file name never share rows. ``bank``: the prototype bank the bank-reading methods
    use (its content key joins their parameters). Faithfulness metrics are not in the key: a
    row missing one that is asked for is computed again and replaces the stored one
    (RowStore's rule)."""

    def __init__(self, root: str | Path, dataset: dict, backbone: Backbone, layer: str, methods: list[str],
                 params: dict[str, dict] | None = None, bank=None):
        self.root = Path(root)
        self.stores: dict[str, RowStore] = {}
        weights = weights_digest(backbone.model)
        for m in methods:
            run = {**dataset, "backbone": backbone.name, "weights": weights, "layer": layer, "method": m,
                   "params": method_params(m, (params or {}).get(m), bank)}
            self.stores[m] = RowStore(self.root / f"{_digest(run)}.rows.jsonl", run)

    def load(self) -> dict[tuple[str, str], dict]:
        rows: dict[tuple[str, str], dict] = {}
        for store in self.stores.values():
            rows.update(store.load())
        return rows

    def append(self, rows: list[dict]) -> None:
        by_method: dict[str, list[dict]] = {}
        for row in rows:
            by_method.setdefault(row["method"], []).append(row)
        for m, group in by_method.items():
            self.stores[m].append(group)

    def cached_images(self) -> dict[str, int]:
        """How many images each method has rows for (without creating any file)."""
        out = {}
        for m, store in self.stores.items():
            out[m] = len(store.load()) if store.path.exists() else 0
        return out


def _value(row: dict, metric: str) -> float | None:
    v = row.get(metric)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v)


def rank_failures(rows: list[dict], method: str, metric: str, k: int | None = None) -> list[dict]:
    """The rows of ``method`` from worst to best by ``metric`` (a key of HIGHER_IS_BETTER;
    lowest first where higher is better, highest first otherwise); rows without the metric
    are left out; equal values keep the rows' order. The first k."""
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(HIGHER_IS_BETTER)}")
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    mine = [r for r in rows if r["method"] == method and _value(r, metric) is not None]
    return sorted(mine, key=lambda r: sign * _value(r, metric))[:k]


def disagreements(rows: list[dict], a: str, b: str, metric: str, k: int | None = None) -> list[dict]:
    """Images where methods ``a`` and ``b`` differ most by ``metric``: one dict per image that
    has the metric for both, {"image", "a": row of a, "b": row of b, "gap": |value_a - value_b|},
    largest gap first (equal gaps keep the rows' order). The first k."""
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(HIGHER_IS_BETTER)}")
    of_b = {r["image"]: r for r in rows if r["method"] == b}
    pairs = []
    for ra in rows:
        rb = of_b.get(ra["image"])
        if ra["method"] != a or rb is None:
            continue
        va, vb = _value(ra, metric), _value(rb, metric)
        if va is not None and vb is not None:
            pairs.append({"image": ra["image"], "a": ra, "b": rb, "gap": abs(va - vb)})
    return sorted(pairs, key=lambda p: -p["gap"])[:k]


def per_class(rows: list[dict], summaries: list[dict], class_names) -> list[dict]:
    """One dict per (method, class present in the rows): images with the class, the seed IoU
    of the class at the method's best background threshold (from the summary), the pointing
    game (share of hits) and the energy pointing game (mean) over the class's images. Needs
    rows with their ``stats`` (evaluate(..., keep_stats=True))."""
    iou = {s["method"]: s.get("per_class_IoU", {}) for s in summaries}
    acc: dict[tuple[str, int], dict] = {}
    for row in rows:
        stats = row["stats"]
        labels = stats["labels"]
        energy = stats["energy"] if len(stats["energy"]) == len(labels) else [None] * len(labels)
        for c, hit, e in zip(labels, stats["pointing"], energy):
            a = acc.setdefault((row["method"], c), {"images": 0, "hits": 0, "energy": []})
            a["images"] += 1
            a["hits"] += int(hit)
            if e is not None:
                a["energy"].append(e)
    out = []
    for (m, c), a in sorted(acc.items(), key=lambda kv: ([s["method"] for s in summaries].index(kv[0][0])
                                                         if kv[0][0] in iou else len(iou), kv[0][1])):
        name = class_names[c]
        out.append({
            "method": m, "class": name, "images": a["images"],
            "seed_IoU": iou.get(m, {}).get(name, float("nan")),
            "pointing_game": round(a["hits"] / a["images"], 4),
            "energy_pointing_game": round(float(np.mean(a["energy"])), 4) if a["energy"] else float("nan"),
        })
    return out


def shown_class(row: dict, metric: str, class_names) -> int:
    """The class a failure tile of this row shows: the top-1 class for a faithfulness metric
    (the map they score), else the image's class whose map put the least energy inside its
    boxes (the first class when the energies are not per class). Needs the row's stats."""
    if metric in FAITHFULNESS:
        return list(class_names).index(row["top1"])
    labels, energy = row["stats"]["labels"], row["stats"]["energy"]
    if len(energy) == len(labels) and labels:
        return labels[int(np.argmin(energy))]
    return labels[0]

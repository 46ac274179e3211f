"""The prototype methods as their papers run them, measured (issue 11, "Measured").

    python bench/bench_prototypes_table.py [--limit N] [--sizes default,2x] [--out results/prototypes_table]

Two sets, each at the model's default input size and at 2x:
* the two bundled photos with masks (quokka: polygon of the animal; plant: OpenCV's matting),
  EfficientNet-Lite0, the top-1 class: share of the min-max map's energy inside the mask, and
  the best mask IoU over thresholds 0.05 .. 0.95 (cam_core.metrics, as bench/bench_masks.py);
* the testbed's val split (the generator run of testbed-cnn's card: 1200 images, seed 0,
  generated into the cache on first use), testbed-cnn, cam_core.evaluate as `python -m cam_core
  evaluate`: seed mIoU at the best background threshold, foreground precision and recall,
  recall on the objects' bodies and on their parts (SIPE gets the image's true labels, as the
  evaluation gives it).

Rows: cam; lpcam as the paper runs it (4 scales + mirrors, the dataset bank where the backbone
has one: testbed-cnn's train split; Lite0 has none, so there it clusters the image's own
pixels); lpcam at one scale (same bank); lpcam from this image's pixels (4 scales); sipe as the
official inference (4 scales + mirrors). (A "sipe centred" variant was in this table until it
measured worse than the official rule: results/prototypes_table_val240.md, 0.286 against 0.624
seed mIoU; it was dropped.) The bank column says which bank each row used.

Writes OUT.csv (one line per set, size and row) and OUT.md (the two tables), after each row,
so an interrupted run keeps what it finished. --limit N: the first N val images only.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cam_core import Explainer, load_backbone, load_image, to_image_map  # noqa: E402
from cam_core.evaluate import evaluate  # noqa: E402
from cam_core.metrics import best_iou, energy_inside  # noqa: E402
from cam_core.voc import VOCDataset  # noqa: E402

CASES = [("quokka", "quokka.jpg", "quokka_mask.png"), ("plant", "plant.jpg", "plant_mask.png")]
ROWS = [
    ("cam", "cam", {}),
    ("lpcam (paper default)", "lpcam", {}),
    ("lpcam single scale", "lpcam", {"multiscale": False}),
    ("lpcam (this image's pixels)", "lpcam", {"source": "image"}),
    ("sipe (official-like)", "sipe", {}),
]
FIELDS = ["set", "input_size", "row", "bank", "images", "quokka_energy", "quokka_best_iou", "plant_energy",
          "plant_best_iou", "seed_mIoU", "fg_precision", "fg_recall", "recall_body", "recall_part",
          "seconds_per_image"]


class SizedExplainer(Explainer):
    """An Explainer whose calls default to one input size (cam_core.evaluate takes the model's)."""

    def __init__(self, backbone, input_size):
        super().__init__(backbone)
        self.input_size = input_size

    def forward(self, image, layer=None, input_size=None):
        return super().forward(image, layer, input_size if input_size is not None else self.input_size)


def _bank_of(res) -> str:
    if "bank" not in res.extras:
        return ""
    n = res.extras["bank_images"]
    return f"{res.extras['bank']} ({n} image{'s' if n != 1 else ''})"


def mask_rows(size: str):
    ex = SizedExplainer(load_backbone("efficientnet_lite0"), size)
    samples = ROOT / "assets" / "samples"
    cases = []
    for name, img_name, mask_name in CASES:
        image = load_image(samples / img_name)
        mask = np.asarray(Image.open(samples / "masks" / mask_name).convert("L")) > 127
        cases.append((name, image, mask, ex.targets(image)[0]))
    for label, method, params in ROWS:
        row = {"set": "masks (efficientnet_lite0)", "input_size": size, "row": label, "images": len(cases)}
        t0 = time.perf_counter()
        for name, image, mask, target in cases:
            res = ex.compute(image, method, target, params=params)
            m01 = to_image_map(res.map, image.size, "minmax")
            row[f"{name}_energy"] = round(energy_inside(m01, mask), 4)
            row[f"{name}_best_iou"] = round(best_iou(m01, mask)[0], 4)
            row.setdefault("bank", _bank_of(res))
            print(f"  {size:7s} {label:28s} {name:6s} grid {'x'.join(map(str, res.grid))}: {res.note[:160]}",
                  file=sys.stderr)
        row["seconds_per_image"] = round((time.perf_counter() - t0) / len(cases), 2)
        yield row


def testbed_rows(size: str, limit: int | None):
    bb = load_backbone("testbed-cnn")
    ex = SizedExplainer(bb, size)
    folder = bb.default_bank.folder()  # the card's generator run: its val split is new to the bank
    dataset = VOCDataset(folder, "val")
    n = min(limit or len(dataset), len(dataset))
    bank = ex.default_bank(progress=lambda d, t: d % 200 == 0 and print(f"  bank: {d}/{t} images", file=sys.stderr))
    for label, method, params in ROWS:
        t0 = time.perf_counter()
        rows: list = []
        (s,) = evaluate(dataset, ex, [method], {method: params}, limit=n, rows_out=rows,
                        progress=lambda d, t, label=label: d % 40 == 0 and print(f"  {size} {label}: {d}/{t}",
                                                                                  file=sys.stderr))
        used = ""
        if method == "lpcam":
            used = "this image's pixels" if params.get("source") == "image" else f"{bank.name} ({bank.n_images} images)"
        yield {"set": f"testbed val (testbed-cnn, {n} images)", "input_size": size, "row": label, "bank": used,
               "images": s["images"], **{k: s.get(k) for k in ("seed_mIoU", "fg_precision", "fg_recall",
                                                               "recall_body", "recall_part")},
               "seconds_per_image": round((time.perf_counter() - t0) / max(s["images"], 1), 2)}


def _cell(v) -> str:
    return "" if v is None or v == "" else (f"{v:.3f}" if isinstance(v, float) else str(v))


def markdown(rows: list[dict], header: str = "") -> str:
    lines = [header, ""] if header else []
    masks = [r for r in rows if r["set"].startswith("masks")]
    if masks:
        lines += ["Masks (EfficientNet-Lite0, top-1 class): energy in the mask / best IoU", "",
                  "| input | row | quokka energy | quokka IoU | plant energy | plant IoU | bank | s/image |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['input_size']} | {r['row']} | {_cell(r['quokka_energy'])} | {_cell(r['quokka_best_iou'])} | "
                  f"{_cell(r['plant_energy'])} | {_cell(r['plant_best_iou'])} | {r['bank']} | "
                  f"{_cell(r['seconds_per_image'])} |" for r in masks]
        lines.append("")
    tb = [r for r in rows if r["set"].startswith("testbed")]
    if tb:
        lines += [f"{tb[0]['set']}: seed mIoU at the best background threshold", "",
                  "| input | row | seed mIoU | fg precision | fg recall | body recall | part recall | bank | s/image |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['input_size']} | {r['row']} | {_cell(r['seed_mIoU'])} | {_cell(r['fg_precision'])} | "
                  f"{_cell(r['fg_recall'])} | {_cell(r['recall_body'])} | {_cell(r['recall_part'])} | {r['bank']} | "
                  f"{_cell(r['seconds_per_image'])} |" for r in tb]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="the first N testbed val images (default: all 240)")
    ap.add_argument("--sizes", default="default,2x")
    ap.add_argument("--sets", default="masks,testbed")
    ap.add_argument("--rows", default="", help="only the rows whose name starts with one of these (comma-separated)")
    ap.add_argument("--out", default=str(ROOT / "results" / "prototypes_table"), help="path prefix: OUT.csv, OUT.md")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sets = args.sets.split(",")
    if args.rows:
        ROWS[:] = [r for r in ROWS if r[0].startswith(tuple(args.rows.split(",")))]
    rows: list[dict] = []
    t0 = time.perf_counter()
    header = (f"`python bench/bench_prototypes_table.py {' '.join(sys.argv[1:])}` ({time.strftime('%Y-%m-%d')}). "
              "s/image: seconds per image on the machine that ran it, first calls included: not a benchmark.")
    for size in args.sizes.split(","):
        for part in sets:
            it = mask_rows(size) if part == "masks" else testbed_rows(size, args.limit)
            for row in it:
                rows.append(row)
                print(" | ".join(f"{k}={_cell(row.get(k))}" for k in FIELDS if row.get(k) not in (None, "")),
                      flush=True)
                with out.with_suffix(".csv").open("w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=FIELDS)
                    writer.writeheader()
                    writer.writerows(rows)
                out.with_suffix(".md").write_text(markdown(rows, header))
    print(f"{time.perf_counter() - t0:.0f} s -> {out.with_suffix('.csv')}, {out.with_suffix('.md')}")
    print(markdown(rows, header))


if __name__ == "__main__":
    main()

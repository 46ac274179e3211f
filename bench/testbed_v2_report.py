"""Issue 12's measurements on a version-2 testbed: are its failures planted hard?

    .venv/bin/python bench/testbed_v2_report.py --data data/testbed2 --backbone testbed2-cnn \
        [--methods cam,lpcam,sipe] [--limit N] [--out results/testbed2-cnn-report]

For the confounded ("water") classes and the other classes separately:
  - classification on val and on the heldout split (backgrounds flipped): mean AP and label
    accuracy (sigmoid > 0.5) over the group's classes — the confounder is real when the water
    classes' accuracy falls on heldout;
  - per method on val, images split by whether they hold a water class: seed mIoU, Top-1 Loc,
    GT-known Loc, MaxBoxAccV2, body and part recall (`cam_core.evaluate`, as `cam_core
    evaluate` computes them);
  - the share of each class map's energy on the background (every pixel that is no object:
    the confounding texture itself on a water image), for the group's classes on water images
    and, as the control, on other backgrounds. Maps max-normalised, as the energy pointing
    game normalises them.

Targets (issue 12): CAM body recall at most half its part recall; at least 25% of the water
classes' CAM energy on their water; heldout accuracy of the water classes below val's; val
mAP at least 0.95. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cam_core import Explainer, load_backbone, to_image_map  # noqa: E402
from cam_core.evaluate import evaluate  # noqa: E402
from cam_core.metrics import energy_inside  # noqa: E402
from cam_core.testbed.train import evaluate_classifier, load_split  # noqa: E402
from cam_core.voc import VOID, VOCDataset  # noqa: E402

LOC_KEYS = ["seed_mIoU", "top1_loc", "gt_known_loc", "maxboxacc_v2", "recall_body", "recall_part", "fg_precision",
            "fg_recall"]


def classification(model, root: str, split: str, size: int, groups: dict[str, list[int]], device="cpu") -> dict:
    x, y, _ = load_split(root, split, size)
    model.eval()
    with torch.inference_mode():
        scores = torch.cat([model(x[i:i + 64].to(device)) for i in range(0, len(x), 64)]).sigmoid().cpu()
    whole = evaluate_classifier(model, x, y, device=device)
    out = {"images": len(x), "mAP": round(whole["mAP"], 4)}
    pred, truth = (scores > 0.5).numpy(), (y > 0.5).numpy()
    for g, classes in groups.items():
        aps = [whole["AP"][c] for c in classes if not np.isnan(whole["AP"][c])]
        out[g] = {"mAP": round(float(np.mean(aps)), 4) if aps else None,
                  "label_accuracy": round(float((pred[:, classes] == truth[:, classes]).mean()), 4),
                  # of the images that hold one of the group's classes: share of those classes found
                  "recall": round(float(pred[:, classes][truth[:, classes]].mean()), 4)
                  if truth[:, classes].any() else None}
    return out


def subset(ds: VOCDataset, keep) -> VOCDataset:
    sub = VOCDataset(ds.root, ds.split)
    sub.ids = [i for i in ds.ids if keep(i)]
    return sub


def background_energy(ex: Explainer, ds: VOCDataset, method: str, groups: dict[str, list[int]],
                      backgrounds: dict[str, str], limit: int | None) -> dict:
    """Mean share of the class map's energy on non-object pixels, per group and background."""
    acc: dict[tuple[str, str], list[float]] = {}
    for n, sample in enumerate(ds):
        if limit is not None and n >= limit:
            break
        image = sample.image()
        bg = sample.mask == 0  # no object (VOID borders excluded)
        on = "water" if backgrounds.get(sample.id) == "water" else "other"
        for c in sample.labels:
            group = next(g for g, cl in groups.items() if c in cl)
            m01 = to_image_map(ex.compute(image, method, c).map, sample.mask.shape, "max")
            acc.setdefault((group, on), []).append(energy_inside(m01, bg & (sample.mask != VOID)))
    return {f"{g} on {on}": {"images": len(v), "energy_on_background": round(float(np.mean(v)), 4)}
            for (g, on), v in sorted(acc.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/testbed2")
    ap.add_argument("--backbone", default="testbed2-cnn", help="a registered name or a checkpoint PREFIX")
    ap.add_argument("--methods", default="cam")
    ap.add_argument("--limit", type=int, default=None, help="the first N val images of each subset")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if Path(args.backbone + ".safetensors").is_file():
        from cam_core.backbones.sources.testbed import load_testbed

        bb = load_testbed(args.backbone).to(args.device)
    else:
        bb = load_backbone(args.backbone, args.device)
    meta = json.loads((Path(args.data) / "testbed.json").read_text())
    if meta.get("version") != 2:
        sys.exit(f"{args.data} is not a version-2 testbed")
    names = meta["classes"]
    water = [names.index(n) for n in meta["water_classes"]]
    groups = {"water classes": water, "other classes": [i for i in range(len(names)) if i not in water]}
    backgrounds = meta["backgrounds"]
    size = bb.input_size[0]
    report = {"data": args.data, "backbone": args.backbone, "groups": {g: [names[c] for c in cl]
                                                                       for g, cl in groups.items()}}
    report["classification"] = {s: classification(bb.model, args.data, s, size, groups, bb.device)
                                for s in ("val", "heldout")}
    ex = Explainer(bb)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bank = None
    if "lpcam" in methods:  # the paper's bank: this data's train split (as `cam_core evaluate --bank-from train`)
        from cam_core.banks import split_bank

        bank = ex.dataset_bank(split_bank(args.data, "train")).bank
        report["lpcam_bank"] = bank.describe()
    val = VOCDataset(args.data, "val")
    has_water = {s.id: any(c in water for c in s.labels) for s in val}
    parts = {"images with a water class": subset(val, lambda i: has_water[i]),
             "images without": subset(val, lambda i: not has_water[i]), "all val": val}
    report["localisation"] = {}
    for part, ds in parts.items():
        totals = evaluate(ds, ex, methods, limit=args.limit, bank=bank)
        report["localisation"][part] = {t["method"]: {k: t.get(k) for k in LOC_KEYS} | {"images": t.get("images")}
                                        for t in totals}
    report["energy_on_background"] = {m: background_energy(ex, val, m, groups, backgrounds, args.limit)
                                      for m in methods}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".json").write_text(text + "\n")
        Path(args.out + ".md").write_text(markdown(report, " ".join(sys.argv)))


def markdown(r: dict, command: str) -> str:
    lines = [f"`python {command}`", "", "Classification (mAP / label accuracy / recall of present labels):", "",
             "| split | images | mAP | water classes | other classes |", "|---|---|---|---|---|"]
    for split, c in r["classification"].items():
        cells = [f"{c[g]['mAP']} / {c[g]['label_accuracy']} / {c[g]['recall']}" for g in r["groups"]]
        lines.append(f"| {split} | {c['images']} | {c['mAP']} | {' | '.join(cells)} |")
    lines += ["", "Localisation on val (cam_core.evaluate):", "",
              "| images | method | n | " + " | ".join(LOC_KEYS) + " |", "|---" * (len(LOC_KEYS) + 3) + "|"]
    for part, rows in r["localisation"].items():
        for m, v in rows.items():
            lines.append(f"| {part} | {m} | {v['images']} | " + " | ".join(str(v[k]) for k in LOC_KEYS) + " |")
    lines += ["", "Share of each class map's energy on the background (no-object pixels):", "",
              "| method | group on background | class maps | energy on background |", "|---|---|---|---|"]
    for m, rows in r["energy_on_background"].items():
        for k, v in rows.items():
            lines.append(f"| {m} | {k} | {v['images']} | {v['energy_on_background']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

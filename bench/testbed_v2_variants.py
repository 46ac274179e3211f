"""How testbed version 2's generator settings were chosen: the CNN trained on each candidate,
and issue 12's targets measured on its val and heldout splits.

    python bench/testbed_v2_variants.py --out DIR [--variants decoys,decoys-192] [--device cuda] [--jobs 4]
    python bench/testbed_v2_variants.py --generate VARIANT --out DIR      # only that variant's data

For each variant (one process each, --jobs at once): generate n 1200, seed 0 with the
variant's settings into DIR/VARIANT, train the testbed CNN on it as `cam_core testbed train
--arch cnn` does (DIR/VARIANT-cnn), then on val: mAP, CAM's body and part recall, seed mIoU
(cam_core.evaluate), the water classes' CAM energy on their water (and the control: other
classes on water), and the water classes' mAP on heldout. Writes DIR/VARIANT.json and prints
one row per variant. Targets: body recall <= half the part recall, water energy >= 0.25,
heldout water mAP below val's, val mAP >= 0.95. On the 2-core CPU one variant takes over an
hour; on one GPU about a minute.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# Settings that differ from the generator's module constants (cam_core/testbed/generate.py).
# "first" is the v2 first measured (no decoys): the control.
VARIANTS = {
    "first": {"DECOYS_V2": (1.0, 0.0, 0.0)},
    "decoys": {"DECOYS_V2": (0.3, 0.4, 0.3)},
    "decoys-192": {"DECOYS_V2": (0.3, 0.4, 0.3), "SIZE_V2": 192, "BODY_RADII_V2": ((30.0, 50.0), (28.0, 45.0))},
    "decoys-224": {"DECOYS_V2": (0.3, 0.4, 0.3), "SIZE_V2": 224, "BODY_RADII_V2": ((36.0, 60.0), (34.0, 54.0))},
    # Next to try (the shipped CNN run fully convolutionally on such images: body recall 0.50 vs
    # part 1.00): bodies 2.5x larger than the shipped ones, parts the same size.
    "decoys-320": {"DECOYS_V2": (0.3, 0.4, 0.3), "SIZE_V2": 320, "BODY_RADII_V2": ((64.0, 100.0), (60.0, 90.0))},
}


def apply(variant: str):
    gen = importlib.import_module("cam_core.testbed.generate")
    for key, value in VARIANTS[variant].items():
        setattr(gen, key, value)
    return gen


def masks_digest(root: Path) -> str:
    """sha256 of every class and part mask's pixels (not the PNG bytes) in id order."""
    from PIL import Image

    h = hashlib.sha256()
    for folder in ("SegmentationClass", "SegmentationPart"):
        for f in sorted((root / folder).glob("*.png")):
            h.update(f.stem.encode())
            h.update(np.asarray(Image.open(f)).tobytes())
    return h.hexdigest()


def generate(variant: str, out: Path) -> None:
    gen = apply(variant)
    gen.generate(out, n=1200, seed=0, version=2, size=gen.SIZE_V2)


def one(variant: str, out: Path, device: str, epochs: int | None) -> dict:
    import torch

    from testbed_v2_report import background_energy
    from cam_core import Explainer
    from cam_core.backbones.sources.testbed import load_testbed
    from cam_core.evaluate import evaluate
    from cam_core.testbed.train import train
    from cam_core.voc import VOCDataset

    t0 = time.perf_counter()
    data = out / variant
    generate(variant, data)
    t_gen = time.perf_counter() - t0
    card = train(data, "cnn", out / f"{variant}-cnn", epochs=epochs, device=device)
    t_train = time.perf_counter() - t0 - t_gen
    meta = json.loads((data / "testbed.json").read_text())
    names = meta["classes"]
    water = [names.index(n) for n in meta["water_classes"]]
    groups = {"water classes": water, "other classes": [i for i in range(len(names)) if i not in water]}
    bb = load_testbed(out / f"{variant}-cnn").to(device)
    ex = Explainer(bb)
    totals = evaluate(VOCDataset(data, "val"), ex, ["cam"])[0]
    energy = background_energy(ex, VOCDataset(data, "val"), "cam", groups, meta["backgrounds"], None)
    ap_val, ap_held = card["val"]["AP"], card["heldout"]["AP"]
    row = {
        "variant": variant, "settings": {k: v for k, v in VARIANTS[variant].items()}, "size": meta["size"],
        "val_mAP": round(card["val"]["mAP"], 4),
        "water_mAP_val": round(float(np.nanmean([ap_val[c] for c in water])), 4),
        "water_mAP_heldout": round(float(np.nanmean([ap_held[c] for c in water])), 4),
        **{k: totals.get(k) for k in ("recall_body", "recall_part", "seed_mIoU", "best_bg_threshold", "fg_precision",
                                      "gt_known_loc", "maxboxacc_v2")},
        "water_energy_on_water": energy.get("water classes on water", {}).get("energy_on_background"),
        "other_energy_on_water": energy.get("other classes on water", {}).get("energy_on_background"),
        "other_energy_on_other": energy.get("other classes on other", {}).get("energy_on_background"),
        "masks_sha256": masks_digest(data), "device": device, "torch": torch.__version__,
        "seconds": {"generate": round(t_gen, 1), "train": round(t_train, 1), "total": round(time.perf_counter() - t0, 1)},
    }
    row["body_over_part"] = round(row["recall_body"] / row["recall_part"], 3) if row["recall_part"] else None
    (out / f"{variant}.json").write_text(json.dumps(row, indent=1) + "\n")
    return row


COLUMNS = ["variant", "size", "val_mAP", "recall_body", "recall_part", "body_over_part", "seed_mIoU",
           "water_energy_on_water", "other_energy_on_water", "water_mAP_val", "water_mAP_heldout"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a worker process
    ap.add_argument("--generate", default=None, metavar="VARIANT", help="only write that variant's data to --out")
    args = ap.parse_args()
    out = Path(args.out)
    if args.generate:
        generate(args.generate, out)
        print(f"{args.generate} -> {out}, masks sha256 {masks_digest(out)}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    if args.one:
        print(json.dumps(one(args.one, out, args.device, args.epochs)), flush=True)
        return 0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        sys.exit(f"unknown variant(s) {sorted(unknown)}: {', '.join(VARIANTS)}")

    # Each process its share of the cores: on the H200, four CNNs with every core each took ~200 s apiece,
    # one with 4 threads beside three other trainings 35 s.
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // max(1, args.jobs)))}

    def work(v):
        cmd = [sys.executable, __file__, "--one", v, "--out", str(out), "--device", args.device]
        cmd += ["--epochs", str(args.epochs)] if args.epochs else []
        with open(out / f"{v}.log", "w") as log:
            return v, subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        done = list(pool.map(work, variants))
    print(" | ".join(COLUMNS))
    for v, rc in done:
        path = out / f"{v}.json"
        if rc != 0 or not path.is_file():
            print(f"{v} | failed (exit {rc}, see {out / (v + '.log')})")
            continue
        row = json.loads(path.read_text())
        print(" | ".join(str(row.get(c)) for c in COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How well each method's map covers the object, on the two bundled photos with masks.

    python bench/bench_masks.py [--backbone efficientnet_lite0]

For each image (quokka: polygon mask of the animal; plant: OpenCV's matting of the plant)
and method: the share of the map's energy inside the mask (min-max normalised map, as the
Score-CAM paper's energy pointing game) and the mask IoU at the best threshold (swept 0.05 ..
0.95). The class explained is the model's top-1. LPCAM's bank is built from the image itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cam_core import Explainer, load_backbone, load_image, to_image_map  # noqa: E402
from cam_core.metrics import best_iou, energy_inside  # noqa: E402

CASES = [("quokka.jpg", "quokka_mask.png"), ("plant.jpg", "plant_mask.png")]
VARIANTS = [
    ("cam", "cam", {}),
    ("gradcam", "gradcam", {}),
    ("lpcam (default: auto->rank)", "lpcam", {}),
    ("lpcam (paper softmax rule)", "lpcam", {"rule": "softmax"}),
    ("lpcam (rank, multi-scale)", "lpcam", {"multiscale": True}),
    ("sipe (bg factor 0.5)", "sipe", {}),
    ("sipe (bg factor 1.0)", "sipe", {"bg_factor": 1.0}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="efficientnet_lite0")
    args = ap.parse_args()
    ex = Explainer(load_backbone(args.backbone))
    samples = ROOT / "assets" / "samples"
    print(f"{args.backbone}; energy = share of map energy inside the mask; IoU = best over thresholds (t)")
    print(f"{'image':8s} {'target':14s} {'method':28s} {'energy':>7s} {'IoU':>6s} {'t':>5s}  note")
    for img_name, mask_name in CASES:
        image = load_image(samples / img_name)
        mask = np.asarray(Image.open(samples / "masks" / mask_name).convert("L")) > 127
        assert mask.shape == image.size, (mask.shape, image.size)
        target = ex.targets(image)[0]
        for label, method, params in VARIANTS:
            res = ex.compute(image, method, target, params=params)
            m01 = to_image_map(res.map, image.size, "minmax")
            score, t = best_iou(m01, mask)
            print(f"{Path(img_name).stem:8s} {ex.backbone.short_name(target)[:14]:14s} {label:28s} "
                  f"{energy_inside(m01, mask):7.3f} {score:6.3f} {t:5.2f}  {res.note[:90]}")
        print(f"{'':8s} {'':14s} {'(mask covers)':28s} {mask.mean():7.3f}")


if __name__ == "__main__":
    main()

"""How well each method's map covers the object, on the two bundled photos with masks.

    python bench/bench_masks.py [--backbone efficientnet_lite0]

For each image (quokka: polygon mask of the animal; plant: OpenCV's matting of the plant)
and method: the share of the map's energy inside the mask (min-max normalised map, as the
Score-CAM paper's energy pointing game) and the mask IoU at the best threshold (swept 0.05 ..
0.95). The class explained is the model's top-1. LPCAM's bank is built from the image itself (no\ndataset of these classes here), so every LPCAM row is 'LPCAM (this image's pixels)'.
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
    ("lpcam (paper: 4 scales + mirrors)", "lpcam", {}),
    ("lpcam single scale", "lpcam", {"multiscale": False}),
    ("lpcam (paper softmax rule)", "lpcam", {"rule": "softmax"}),
    *[(f"lpcam context_rank {r}", "lpcam", {"context_rank": r}) for r in (10, 20, 50, 100, 200)],
    ("sipe (official-like: 4 scales)", "sipe", {}),
    ("sipe single scale", "sipe", {"multiscale": False}),
    ("sipe (bg factor 1.0)", "sipe", {"bg_factor": 1.0}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="efficientnet_lite0")
    args = ap.parse_args()
    ex = Explainer(load_backbone(args.backbone))
    samples = ROOT / "assets" / "samples"
    print(f"{args.backbone}; energy = share of map energy inside the mask; IoU = best over thresholds (t)")
    print(f"{'image':8s} {'target':14s} {'method':34s} {'energy':>7s} {'IoU':>6s} {'t':>5s} {'grid':>9s}  note")
    for img_name, mask_name in CASES:
        image = load_image(samples / img_name)
        mask = np.asarray(Image.open(samples / "masks" / mask_name).convert("L")) > 127
        assert mask.shape == image.size, (mask.shape, image.size)
        target = ex.targets(image)[0]
        for label, method, params in VARIANTS:
            res = ex.compute(image, method, target, params=params)
            m01 = to_image_map(res.map, image.size, "minmax")
            score, t = best_iou(m01, mask)
            grid = "x".join(map(str, res.map.shape))
            print(f"{Path(img_name).stem:8s} {ex.backbone.short_name(target)[:14]:14s} {label:34s} "
                  f"{energy_inside(m01, mask):7.3f} {score:6.3f} {t:5.2f} {grid:>9s}  {res.note[:150]}")
        print(f"{'':8s} {'':14s} {'(mask covers)':34s} {mask.mean():7.3f}")


if __name__ == "__main__":
    main()

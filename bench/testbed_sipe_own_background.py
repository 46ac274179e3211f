"""SIPE scored as its paper does: argmax of IS-CAM over the background and the image's classes,
no background threshold (`evaluate` sweeps one over max-normalised class maps instead).

    .venv/bin/python bench/testbed_sipe_own_background.py --data data/testbed
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from cam_core import Explainer, load_backbone
from cam_core.evaluate import confusion, iou_from_confusion
from cam_core.voc import VOCDataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/testbed")
    ap.add_argument("--split", default="val")
    ap.add_argument("--backbone", default="testbed-cnn")
    ap.add_argument("--bg-factor", type=float, default=0.5)
    args = ap.parse_args()
    ex = Explainer(load_backbone(args.backbone))
    ds = VOCDataset(args.data, args.split)
    n = len(ds.class_names) + 1
    conf = np.zeros((n, n), np.int64)
    images = 0
    for sample in ds:
        if not sample.labels:
            continue
        image = sample.image()
        params = {"labels": ",".join(map(str, sample.labels)), "bg_factor": args.bg_factor}
        res = ex.compute(image, "sipe", sample.labels[0], params=params)
        is_cam = res.extras["is_cam"][None].float()
        h, w = sample.mask.shape
        up = F.interpolate(is_cam, size=(h, w), mode="bilinear", align_corners=False)[0]
        idx = up.argmax(dim=0).numpy()
        ids = np.array([0] + [c + 1 for c in res.extras["labels"][1:]])
        conf += confusion(ids[idx], sample.mask, n)
        images += 1
    ious = iou_from_confusion(conf)
    tp = np.diag(conf)[1:].sum()
    fg_pred, fg_gt = conf[:, 1:].sum(), conf[1:, :].sum()
    fg_tp = conf[1:, 1:].sum()
    print(f"{args.backbone}, SIPE IS-CAM argmax with its own background, {images} {args.split} images:")
    print(f"seed mIoU {np.nanmean(ious):.3f} · fg precision {fg_tp / fg_pred:.3f} · fg recall {fg_tp / fg_gt:.3f} "
          f"· right-class pixels {tp / fg_gt:.3f}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()

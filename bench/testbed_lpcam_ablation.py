"""Why LPCAM does (not) beat CAM on the testbed: LPCAM variants against CAM, same images.

    .venv/bin/python bench/testbed_lpcam_ablation.py --data data/testbed --limit 40

Builds the bank from the train split once (cached next to --cache), then scores each variant
on the first --limit val images with the same protocol as `python -m cam_core evaluate`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cam_core import Explainer, load_backbone
from cam_core.evaluate import evaluate
from cam_core.prototypes import PrototypeBank, build_bank
from cam_core.voc import VOCDataset

VARIANTS = {
    "cam": ("cam", {}),
    "lpcam (paper rule, 1 scale)": ("lpcam", {}),
    "lpcam tau 0.25": ("lpcam", {"tau": 0.25}),
    "lpcam without context": ("lpcam", {"mu_b": 0.0}),
    "lpcam rank rule (top-1)": ("lpcam", {"rule": "rank", "rank": 1}),
    "lpcam multiscale + flips": ("lpcam", {"multiscale": True}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/testbed")
    ap.add_argument("--backbone", default="testbed-cnn")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--cache", default="out/testbed-train-bank.safetensors")
    args = ap.parse_args()
    ex = Explainer(load_backbone(args.backbone))
    cache = Path(args.cache)
    if cache.exists():
        bank = PrototypeBank.load(cache)
    else:
        train = VOCDataset(args.data, "train")
        bank = build_bank(ex, [(s.image(), s.labels) for s in train if s.labels], name="testbed/train").bank
        cache.parent.mkdir(parents=True, exist_ok=True)
        bank.save(cache)
    val = VOCDataset(args.data, "val")
    print(f"{args.backbone}, first {args.limit} val images of {args.data}")
    print(f"{'variant':30s} {'mIoU':>6s} {'bg t':>5s} {'fg P':>6s} {'fg R':>6s} {'body':>6s} {'part':>6s}")
    for name, (method, params) in VARIANTS.items():
        s = evaluate(val, ex, [method], {method: params}, bank=bank, limit=args.limit)[0]
        print(f"{name:30s} {s['seed_mIoU']:6.3f} {s['best_bg_threshold']:5.2f} {s['fg_precision']:6.3f} "
              f"{s['fg_recall']:6.3f} {s.get('recall_body', 0):6.3f} {s.get('recall_part', 0):6.3f}", flush=True)


if __name__ == "__main__":
    main()

"""Building an LPCAM bank from many images: time and peak memory.

    python bench/bench_bank.py [--n 2000] [--workers 0,2] [--backbone efficientnet_lite0]

Writes --n JPEGs (320 x 240, smooth random colour fields, so that they decode like photos)
into a temporary folder, then builds a bank from the folder (loose images: each labelled by
the model's top-1) once per worker count, each in a fresh process so that its peak resident
memory (ru_maxrss, workers included) is its own. Prints images/s and the peak.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def write_images(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((320, 240), Image.BICUBIC).save(folder / f"img{i:05d}.jpg", quality=90)


def build(folder: str, workers: int, backbone: str) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    from cam_core import Explainer, build_bank, folder_items, load_backbone

    torch.set_num_threads(2)
    ex = Explainer(load_backbone(backbone))
    items = folder_items(folder, ex.backbone.class_names).items
    t0 = time.perf_counter()
    report = build_bank(ex, items, name="bench", workers=workers)
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    bank = report.bank
    return {"workers": workers, "images": len(bank.images), "seconds": round(seconds, 1),
            "images_per_s": round(len(bank.images) / seconds, 1), "peak_rss_mb": round(peak_kb / 1024),
            "classes": len(bank.classes), "pixels_kept": sum(len(c) for c in bank.classes.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--child", nargs=2, metavar=("FOLDER", "WORKERS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(build(args.child[0], int(args.child[1]), args.backbone)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_images(Path(tmp), args.n)
        print(f"{args.n} images written in {time.perf_counter() - t0:.0f} s; {args.backbone}, 2 threads")
        for w in (int(v) for v in args.workers.split(",")):
            out = subprocess.run([sys.executable, __file__, "--backbone", args.backbone, "--child", tmp, str(w)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"workers {r['workers']}: {r['images']} images in {r['seconds']} s ({r['images_per_s']} images/s), "
                  f"peak resident memory {r['peak_rss_mb']} MB (process + workers), {r['classes']} classes, "
                  f"{r['pixels_kept']} pixel features kept")


if __name__ == "__main__":
    main()

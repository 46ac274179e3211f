"""Building an LPCAM bank from 2,000 images: time, images/s and peak memory.

    python bench/bench_bank.py [--n 2000] [--workers 0,2] [--backbone efficientnet_lite0] [--device cpu|cuda|auto]

Writes --n JPEGs (320 x 240, smooth random colour fields, so that they decode like photos)
into a temporary folder, then builds a bank from the folder (loose images: each labelled by
the model's top-1) once per worker count, each in a fresh process so that its memory is its
own. Prints, per run: seconds and images/s of the build (cam_core.build_bank: DataLoader
workers decode, at most max_per_class pixels per class are kept), the resident memory after
the model is loaded and the peak (ru_maxrss of the process, plus the largest DataLoader
worker's), CUDA's max allocated memory during the build when the device is a GPU, and the
time of one K-means + selection per class on the built bank (on the device).
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


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def build(folder: str, workers: int, backbone: str, device: str, threads: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    from cam_core import Explainer, build_bank, folder_items, load_backbone

    torch.set_num_threads(threads)
    ex = Explainer(load_backbone(backbone, device))
    cuda = ex.backbone.device.type == "cuda"
    items = folder_items(folder, ex.backbone.class_names).items
    rss_before = _rss_mb()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    report = build_bank(ex, items, name="bench", workers=workers, batch_size=32 if cuda else 8)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    worker_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if workers else 0
    bank = report.bank
    out = {"workers": workers, "device": str(ex.backbone.device), "images": bank.n_images,
           "seconds": round(seconds, 1), "images_per_s": round(bank.n_images / seconds, 1),
           "rss_after_load_mb": round(rss_before), "peak_rss_mb": round(peak_kb / 1024),
           "peak_worker_rss_mb": round(worker_kb / 1024),
           "cuda_max_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
           "classes": len(bank.classes), "pixels_kept": sum(len(c) for c in bank.classes.values())}
    t0 = time.perf_counter()
    for c in bank.classes:
        bank.select(ex.backbone, c, k=12, tau=0.1)
    if cuda:
        torch.cuda.synchronize()
    out["kmeans_s_per_class"] = round((time.perf_counter() - t0) / max(len(bank.classes), 1), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the building process")
    ap.add_argument("--child", nargs=2, metavar=("FOLDER", "WORKERS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(build(args.child[0], int(args.child[1]), args.backbone, args.device, args.threads)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_images(Path(tmp), args.n)
        print(f"{args.n} images written in {time.perf_counter() - t0:.0f} s; {args.backbone}, {args.threads} threads")
        for w in (int(v) for v in args.workers.split(",")):
            out = subprocess.run([sys.executable, __file__, "--backbone", args.backbone, "--device", args.device,
                                  "--threads", str(args.threads), "--child", tmp, str(w)],
                                 capture_output=True, text=True, check=False)
            if out.returncode:
                sys.exit(f"workers {w}: the build failed:\n{out.stderr[-2000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            cuda = f", CUDA max allocated {r['cuda_max_allocated_mb']} MB" if r["cuda_max_allocated_mb"] is not None else ""
            print(f"workers {r['workers']} on {r['device']}: {r['images']} images in {r['seconds']} s "
                  f"({r['images_per_s']} images/s); resident memory {r['rss_after_load_mb']} MB after loading the "
                  f"model, peak {r['peak_rss_mb']} MB (+ largest worker {r['peak_worker_rss_mb']} MB){cuda}; "
                  f"{r['classes']} classes, {r['pixels_kept']} pixel features kept; K-means + selection "
                  f"{r['kmeans_s_per_class']} s per class")
            print(json.dumps(r))


if __name__ == "__main__":
    main()

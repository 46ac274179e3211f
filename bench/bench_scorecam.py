"""Score-CAM: batch size, speed against pytorch-grad-cam, and whether it blocks other sessions.

    python bench/bench_scorecam.py [--image assets/samples/cat.png] [--batches 1,2,4,8,16,32]
                                   [--repeats 3] [--skip-blocking]

1. Batch sweep: ms per masked image of cam_core's Score-CAM loop at each batch size (after a
   warm-up), the same masked images as the real method; the fastest is what
   cam_core.methods.scorecam.AUTO_BATCH should hold for this device.
2. Whole Score-CAM, warm, median of --repeats (interleaved): cam_core (automatic batch) vs pytorch-grad-cam's
   ScoreCAM on the same model, image, layer and class, in this run. Target: <= 0.4.
3. Blocking: the time of four fast methods on a NEW image alone, then while another thread
   runs Score-CAM on the same shared Explainer. Target: <= 2x alone.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's Score-CAM progress bar
# As app.py runs (sessions share the cores there; spinning OpenMP threads of one thread's
# batch starve another's): set before torch starts OpenMP. Both libraries run under it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cam_core import Explainer, from_array, load_backbone, load_image  # noqa: E402
from cam_core.methods import scorecam as sc  # noqa: E402
from cam_core.render import normalize  # noqa: E402

FAST = ["cam", "gradcam", "gradcampp", "layercam"]


def batch_sweep(ex, image, target, batches, images_per_size: int, rounds: int = 3) -> dict[int, float]:
    """Rounds interleave the batch sizes and the best round counts, so that load from other
    processes during one size does not pick the winner."""
    fwd = ex.forward(image)
    acts, x = fwd.activations, fwd.input
    channels = sc._varying_channels(acts)[:images_per_size]
    model = ex.backbone.model
    out: dict[int, float] = {}

    def run(b):
        for start in range(0, len(channels), b):
            idx = channels[start:start + b]
            up = torch.nn.functional.interpolate(acts[idx].unsqueeze(0).float(), size=x.shape[-2:],
                                                 mode="bilinear", align_corners=False)[0]
            lo, hi = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
            masks = (up - lo) / (hi - lo).clamp_min(torch.finfo(up.dtype).tiny)
            with torch.inference_mode():
                model(x * masks.unsqueeze(1)).softmax(-1)[:, target]

    for b in batches:
        run(b)  # warm-up at this batch size (allocator, kernel choice)
    for _ in range(rounds):
        for b in batches:
            t0 = time.perf_counter()
            run(b)
            ms = (time.perf_counter() - t0) * 1000 / len(channels)
            out[b] = min(out.get(b, ms), ms)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", default=str(ROOT / "assets/samples/cat.png"))
    ap.add_argument("--batches", default="1,2,4,8,16,32")
    ap.add_argument("--sweep-images", type=int, default=128, help="masked images per batch size in the sweep")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-blocking", action="store_true")
    ap.add_argument("--skip-peer", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    backbone = load_backbone("efficientnet_lite0")
    image = load_image(args.image)
    ex = Explainer(backbone)
    ex.warm_up()
    target = ex.targets(image)[0]
    print(f"EfficientNet-Lite0, {image.name}, class {target}, {torch.get_num_threads()} threads, "
          f"device {backbone.device}")

    sweep = batch_sweep(ex, image, target, [int(b) for b in args.batches.split(",")], args.sweep_images)
    best = min(sweep, key=sweep.get)
    print("batch size -> ms per masked image: " + ", ".join(f"{b}: {ms:.2f}" for b, ms in sweep.items())
          + f"  (fastest {best}; AUTO_BATCH['cpu'] = {sc.AUTO_BATCH['cpu']})")

    def ours():
        ex.clear()
        return ex.compute(image, "scorecam", target).map

    ours()  # warm-up
    t_ours, t_pgc = [], []
    run_pgc = None
    if not args.skip_peer:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        peer_model = copy.deepcopy(backbone.model).requires_grad_(True)
        cam = pgc.ScoreCAM(model=peer_model, target_layers=[peer_model.get_submodule("bn2")])
        x = backbone.preprocess(image.rgb)
        run_pgc = lambda: cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])  # noqa: E731
        run_pgc()  # warm-up
    for _ in range(args.repeats):  # interleaved, so that both see the same load
        t0 = time.perf_counter()
        m_ours = ours()
        t_ours.append(time.perf_counter() - t0)
        if run_pgc is not None:
            t0 = time.perf_counter()
            m_pgc = run_pgc()
            t_pgc.append(time.perf_counter() - t0)
    kept = len(sc._varying_channels(ex.forward(image).activations))
    total = ex.forward(image).activations.shape[0]
    line = f"Score-CAM ({kept} of {total} channels vary): cam_core {statistics.median(t_ours):.2f} s"
    if run_pgc is not None:
        ratio = statistics.median(t_ours) / statistics.median(t_pgc)
        per_ours = statistics.median(t_ours) * 1000 / kept
        per_pgc = statistics.median(t_pgc) * 1000 / total
        small = torch.nn.functional.interpolate(torch.as_tensor(m_pgc)[None].float(), size=m_ours.shape,
                                                mode="bilinear")[0, 0]
        r = float(np.corrcoef(normalize(m_ours).ravel().numpy(), normalize(small).ravel().numpy())[0, 1])
        line += (f", pytorch-grad-cam {statistics.median(t_pgc):.2f} s (all {total} channels); ratio {ratio:.2f} "
                 f"(target <= 0.4); per masked image {per_ours:.2f} vs {per_pgc:.2f} ms; r vs pytorch-grad-cam "
                 f"{r:.3f} (its weights are a softmax over channels of the scores, ours the scores: maps differ)")
    print(line)

    if args.skip_blocking:
        return
    rng = np.random.default_rng(1)

    def fresh(i):
        return from_array(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), f"new-{i}")

    def fast(img):
        t0 = time.perf_counter()
        for m in FAST:
            ex.compute(img, m)
        return time.perf_counter() - t0

    alone = [fast(fresh(i)) for i in range(5)]
    ex.clear()
    started = threading.Event()
    done = threading.Event()

    def long_run():
        ex.compute(image, "scorecam", target, progress=lambda d, t: started.set())
        done.set()

    th = threading.Thread(target=long_run)
    th.start()
    started.wait()
    during = []
    i = 100
    while not done.is_set() and len(during) < 5:
        during.append(fast(fresh(i)))
        i += 1
        time.sleep(0.2)
    th.join()
    a, d = statistics.median(alone), statistics.median(during)
    print(f"four fast methods ({', '.join(FAST)}) on a new image: alone {a * 1000:.0f} ms, while another thread "
          f"runs Score-CAM {d * 1000:.0f} ms (n = {len(during)}) = {d / a:.2f}x (target <= 2)")


if __name__ == "__main__":
    main()

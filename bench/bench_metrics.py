"""Cost of the faithfulness metrics, and the evaluation in-process vs on Ray.

    .venv/bin/python bench/bench_metrics.py faithfulness [--reps 2] [--road] [--threads N]
    .venv/bin/python bench/bench_metrics.py engines [--images 36] [--metrics average_drop,increase]

faithfulness: deletion + insertion of one Grad-CAM map of assets/samples/cat.png on
EfficientNet-Lite0 (CPU, 224 x 224: 225 scored inputs per game), batched
(cam_core.metrics, its automatic batch: 4 inputs per forward on the CPU, 1 with one torch thread) against a plain one-step-at-a-time transcription of
RISE's CausalMetric.single_run, interleaved (alternating which goes first), same map and class; the AUCs of both are printed.
--road adds cam_core's ROAD against pytorch-grad-cam's ROADCombined (noise off in both).

engines: `evaluate` of the first N images of a generated testbed (seed 11, train split) with
the shipped testbed-cnn, in-process (torch on every core) and on a local Ray with one
single-threaded actor per core, run in-process / Ray / in-process so that a change of machine
load shows; Ray's start (ray.init, then actors built and the model loaded, up to the first
row) is reported apart from its steady rate.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cam_core import Explainer, load_backbone, load_image  # noqa: E402
from cam_core import metrics as M  # noqa: E402


def rise_loop(model, img, explanation, mode, step, c):
    """RISE's CausalMetric.single_run: one forward per step, numpy order."""
    from scipy.ndimage import gaussian_filter

    hw = img.shape[-1] * img.shape[-2]
    n_steps = (hw + step - 1) // step
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    k = gaussian_filter(delta, 5)
    kern = np.zeros((3, 3, 11, 11))
    for i in range(3):
        kern[i, i] = k
    kern = torch.from_numpy(kern.astype("float32"))
    if mode == "del":
        start, finish = img.clone(), torch.zeros_like(img)
    else:
        start, finish = F.conv2d(img, kern, padding=5), img.clone()
    scores = np.empty(n_steps + 1)
    order = np.flip(np.argsort(explanation.reshape(-1, hw), axis=1), axis=-1)
    for i in range(n_steps + 1):
        with torch.no_grad():
            scores[i] = model(start).softmax(dim=1)[0, c]
        if i < n_steps:
            coords = order[0, step * i : step * (i + 1)]
            start.numpy().reshape(1, 3, hw)[0, :, coords] = finish.numpy().reshape(1, 3, hw)[0, :, coords]
    return M.auc(scores)


def faithfulness(args) -> None:
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    bb = load_backbone("efficientnet_lite0")
    ex = Explainer(bb)
    ex.warm_up(["gradcam"])
    cat = load_image(ROOT / "assets" / "samples" / "cat.png")
    fwd = ex.forward(cat)
    c = int(fwd.probs.argmax())
    cam = ex.compute(cat, "gradcam", c).map
    x, model = fwd.input, bb.model
    sal = M.saliency_at_input(cam, x.shape[-2:])
    # tie-free copy of the same order, so that RISE's unstable sort moves the same pixels
    flat = sal.reshape(-1).double() + 1e-9 * torch.arange(sal.numel()).double()
    unique = (torch.argsort(torch.argsort(flat)).float() / flat.numel()).reshape(sal.shape)
    with torch.inference_mode():
        model(x.expand(4, -1, -1, -1))
    ours, loop = [], []

    def run_ours():
        t = time.perf_counter()
        d = M.deletion(model, x, unique, c)
        i = M.insertion(model, x, unique, c)
        ours.append(time.perf_counter() - t)
        return d, i

    def run_loop():
        t = time.perf_counter()
        rd = rise_loop(model, x.clone(), unique.numpy(), "del", 224, c)
        ri = rise_loop(model, x.clone(), unique.numpy(), "ins", 224, c)
        loop.append(time.perf_counter() - t)
        return rd, ri

    for rep in range(args.reps):  # which side goes first alternates: the load here drifts by the minute
        if rep % 2 == 0:
            d, i = run_ours()
            rd, ri = run_loop()
        else:
            rd, ri = run_loop()
            d, i = run_ours()
        print(f"rep {rep}: cam_core {ours[-1]:.1f} s (deletion {d.auc:.6f}, insertion {i.auc:.6f}); "
              f"plain loop {loop[-1]:.1f} s (deletion {rd:.6f}, insertion {ri:.6f})", flush=True)
    mo, ml = statistics.median(ours), statistics.median(loop)
    print(f"torch {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}")
    print(f"deletion + insertion, Lite0 CPU, {len(d.scores)} + {len(i.scores)} scored inputs: cam_core "
          f"{mo:.1f} s, plain loop {ml:.1f} s (medians of {args.reps}; loop / cam_core = {ml / mo:.2f}x)")
    if args.road:
        from pytorch_grad_cam.metrics.perturbation_confidence import PerturbationConfidenceMetric
        from pytorch_grad_cam.metrics.road import NoisyLinearImputer, RemoveLeastRelevantFirst, RemoveMostRelevantFirst
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

        t = time.perf_counter()
        r = M.road(model, x, cam, c, noise=0.0)
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        targets = [ClassifierOutputSoftmaxTarget(c)]
        morf, lerf = [], []
        for p in M.ROAD_PERCENTILES:
            for cls, out in ((RemoveMostRelevantFirst, morf), (RemoveLeastRelevantFirst, lerf)):
                metric = PerturbationConfidenceMetric(cls(p, NoisyLinearImputer(noise=0.0)))
                out.append(float(metric(x, sal.numpy()[None], targets, model)[0]))
        ref = (np.mean(lerf) - np.mean(morf)) / 2
        t_ref = time.perf_counter() - t
        print(f"ROAD (18 imputations), Lite0 CPU: cam_core {t_ours:.1f} s ({r.value:.6f}), pytorch-grad-cam "
              f"{t_ref:.1f} s ({ref:.6f}); ratio {t_ref / t_ours:.2f}x")


def engines(args) -> None:
    import ray

    from cam_core.distributed import RayEngine
    from cam_core.evaluate import evaluate
    from cam_core.testbed.generate import generate
    from cam_core.voc import VOCDataset

    root = Path(args.data)
    if not (root / "JPEGImages").is_dir():
        generate(root, n=max(60, int(args.images * 1.4)), seed=11)
    ds = VOCDataset(root, "train")
    methods = args.methods.split(",")
    metrics = [m for m in args.metrics.split(",") if m]
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)

    def in_process(threads):
        torch.set_num_threads(threads)
        ex = Explainer(load_backbone("testbed-cnn"))
        ex.warm_up(methods)
        t = time.perf_counter()
        out = evaluate(ds, ex, methods, limit=args.images, metrics=metrics)
        return time.perf_counter() - t, out

    def on_ray():
        t0 = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        t_init = time.perf_counter() - t0
        first = []
        ex = Explainer(load_backbone("testbed-cnn"))
        t = time.perf_counter()
        out = evaluate(ds, ex, methods, limit=args.images, metrics=metrics, engine=RayEngine(workers=cores),
                       progress=lambda d, n: first.append(time.perf_counter() - t) if d == 1 else None)
        total = time.perf_counter() - t
        ray.shutdown()
        return t_init, first[0], total, out

    # torch with every core and with one thread (as each actor): on a loaded machine the
    # threads' barriers cost more than they give, so the second isolates Ray's own cost
    n = args.images
    a, out_a = in_process(cores)
    a1, _ = in_process(1)
    t_init, t_first, b, out_b = on_ray()
    c1, _ = in_process(1)
    c, _ = in_process(cores)
    same = all(abs(x[k] - y[k]) < 1e-3 for x, y in zip(out_a, out_b) for k in ("seed_mIoU", "gt_known_loc", "pxap"))
    steady = (n - 1) / (b - t_first)
    print(f"{n} testbed images, methods {','.join(methods)}, metrics {','.join(metrics) or '-'}; {cores} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"in-process, torch {cores} threads: {a:.1f} s and {c:.1f} s -> {n / a:.2f} and {n / c:.2f} images/s")
    print(f"in-process, torch 1 thread: {a1:.1f} s and {c1:.1f} s -> {n / a1:.2f} and {n / c1:.2f} images/s")
    print(f"Ray ({cores} actors x 1 thread): ray.init {t_init:.1f} s; evaluate {b:.1f} s, first row after "
          f"{t_first:.1f} s (actors + model), then {steady:.2f} images/s; {n / (b + t_init):.2f} images/s "
          f"all included; totals equal to in-process: {same}")
    one = n / ((a1 + c1) / 2)
    print(f"Ray steady rate / in-process 1 thread: {steady / one:.2f} (ideal {cores}); per image on an actor "
          f"{cores / steady:.3f} s vs {1 / one:.3f} s in-process (1 thread): overhead "
          f"{cores / steady - 1 / one:+.3f} s/image; fixed start {t_init + t_first:.1f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    f = sub.add_parser("faithfulness")
    f.add_argument("--reps", type=int, default=2)
    f.add_argument("--road", action="store_true")
    f.add_argument("--threads", type=int, default=0, help="torch threads (0 = one per core)")
    e = sub.add_parser("engines")
    e.add_argument("--images", type=int, default=36)
    e.add_argument("--methods", default="cam,gradcam,gradcampp,xgradcam,layercam,eigencam")
    e.add_argument("--metrics", default="average_drop,increase")
    e.add_argument("--data", default="/tmp/cam-bench-testbed")
    args = p.parse_args()
    faithfulness(args) if args.what == "faithfulness" else engines(args)


if __name__ == "__main__":
    main()

"""The GPU paths, checked against the CPU on the same image and weights (run where there is a GPU).

    python bench/gpu_check.py [--device cuda] [--image assets/samples/cat.png] [--repeats 5] [--out FILE.json]

On EfficientNet-Lite0 (ImageNet weights) and, where given, testbed checkpoints (--testbed
NAME ...): every method the backbone runs, computed on the CPU and on the GPU for the same
class; prints the Pearson r and the largest difference of the max-normalised maps, and the
GPU's median time from the decoded image (caches cleared, synchronised, after a warm-up).
Then: one Explainer on the GPU shared by 4 threads computing every fast method at once,
compared with the sequential maps (nothing a call leaves on the model may reach another);
K-means of the same features on both devices (inertia, agreement of the labels); an LPCAM
bank built from the sample images on the GPU against the CPU's bank (same pixels kept, map r).
Exits non-zero when a map differs (r < 0.999) or a thread sees another's result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cam_core import Explainer, MethodError, kmeans, load_backbone, load_image  # noqa: E402
from cam_core.render import normalize, to_image_map  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def maps_agree(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(Pearson r, max abs difference) of two maps, max-normalised at b's size."""
    a = to_image_map(a.detach().float().cpu(), tuple(b.shape[-2:]), "max")
    b = normalize(b.detach().float().cpu(), "max")
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return (1.0 if np.allclose(a, b, atol=1e-4) else 0.0), float(np.abs(a - b).max())
    return float(np.corrcoef(a, b)[0, 1]), float(np.abs(a - b).max())


def check_backbone(name: str, bb_cpu, bb_gpu, image, repeats: int, report: dict, skip_slow: bool = False) -> list[str]:
    problems = []
    ex_cpu, ex_gpu = Explainer(bb_cpu), Explainer(bb_gpu)
    target = int(ex_cpu.forward(image).probs.argmax())
    gpu_target = int(ex_gpu.forward(image).probs.argmax())
    p_cpu, p_gpu = ex_cpu.forward(image).probs.cpu(), ex_gpu.forward(image).probs.cpu()
    rows = report.setdefault("methods", {}).setdefault(name, {})
    report.setdefault("top1", {})[name] = {"cpu": target, "gpu": gpu_target,
                                           "max_prob_diff": float((p_cpu - p_gpu).abs().max())}
    print(f"\n{name}: top-1 cpu {target}, gpu {gpu_target}, largest probability difference "
          f"{float((p_cpu - p_gpu).abs().max()):.2e}", flush=True)
    print(f"{'method':14s} {'r':>9s} {'max diff':>9s} {'cpu ms':>9s} {'gpu ms':>9s}", flush=True)
    for spec in ex_gpu.methods():
        if skip_slow and spec.slow:
            continue
        params = {"source": "image"} if spec.name == "lpcam" and bb_cpu.default_bank is None else None
        try:
            t0 = time.perf_counter()
            cpu_map = ex_cpu.compute(image, spec.name, target, params=params).map
            t_cpu = (time.perf_counter() - t0) * 1000
            gpu_map = ex_gpu.compute(image, spec.name, target, params=params).map
        except MethodError as exc:
            print(f"{spec.name:14s} declined: {exc}", flush=True)
            rows[spec.name] = {"declined": str(exc)}
            continue
        times = []
        for _ in range(1 if spec.slow else repeats):
            ex_gpu.clear()
            t0 = time.perf_counter()
            ex_gpu.compute(image, spec.name, target, params=params)
            sync()
            times.append((time.perf_counter() - t0) * 1000)
        r, diff = maps_agree(gpu_map, cpu_map)
        rows[spec.name] = {"r": round(r, 6), "max_diff": round(diff, 5), "cpu_ms_first_call": round(t_cpu, 1),
                           "gpu_ms": round(statistics.median(times), 2)}
        flag = "" if r >= 0.999 else "   <-- differs"
        print(f"{spec.name:14s} {r:9.6f} {diff:9.5f} {t_cpu:9.1f} {statistics.median(times):9.2f}{flag}", flush=True)
        if r < 0.999:
            problems.append(f"{name} {spec.name}: r {r:.4f}")
    return problems


def check_threads(bb_gpu, images, report: dict) -> list[str]:
    """4 threads share one GPU Explainer; each computes every fast method on its own image."""
    ex = Explainer(bb_gpu)
    methods = [s.name for s in ex.methods() if not s.slow and s.name not in ("lpcam", "sipe")]
    reference = {}
    for i, image in enumerate(images):
        for m in methods:
            reference[(i, m)] = ex.compute(image, m).map.cpu()
    ex.clear()
    got, errors = {}, []

    def work(i):
        try:
            for m in methods:
                got[(i, m)] = ex.compute(images[i], m).map.cpu()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"thread {i}: {exc!r}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    mismatched = [f"{i}:{m}" for (i, m), ref in reference.items()
                  if (i, m) not in got or not torch.allclose(got[(i, m)], ref, rtol=1e-3, atol=1e-5)]
    report["threads"] = {"threads": len(images), "methods": methods, "seconds": round(seconds, 3),
                         "mismatched": mismatched, "errors": errors}
    print(f"\n{len(images)} threads x {len(methods)} methods on one GPU Explainer: {seconds:.2f} s, "
          f"{len(mismatched)} maps differ from the sequential run, {len(errors)} errors", flush=True)
    return [f"threads: {x}" for x in mismatched + errors]


def check_kmeans(device: str, report: dict) -> list[str]:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(12, 64, generator=g) * 3
    x = (centres[torch.randint(0, 12, (20000,), generator=g)] + torch.randn(20000, 64, generator=g))
    out = {}
    for dev in ("cpu", device):
        xs = x.to(dev)
        kmeans(xs, 12, seed=0)  # warm-up
        t0 = time.perf_counter()
        res = kmeans(xs, 12, seed=0)
        if dev != "cpu":
            sync()
        out[dev] = (res, (time.perf_counter() - t0) * 1000)
    (rc, tc), (rg, tg) = out["cpu"], out[device]
    agree = float((rc.labels.cpu() == rg.labels.cpu()).float().mean())
    inertia = (float(rc.inertia), float(rg.inertia))
    report["kmeans"] = {"points": 20000, "dims": 64, "k": 12, "cpu_ms": round(tc, 1), "gpu_ms": round(tg, 1),
                        "label_agreement": agree, "inertia": inertia}
    print(f"\nK-means 20,000 x 64, k 12 (cosine): cpu {tc:.1f} ms, gpu {tg:.1f} ms; labels agree {agree:.4f}, "
          f"inertia {inertia[0]:.2f} vs {inertia[1]:.2f}", flush=True)
    return [] if agree > 0.99 else [f"kmeans labels agree only {agree:.3f}"]


def check_bank(bb_cpu, bb_gpu, report: dict) -> list[str]:
    from cam_core import build_bank, folder_items

    folder = ROOT / "assets" / "samples"
    out = {}
    for key, bb in (("cpu", bb_cpu), ("gpu", bb_gpu)):
        ex = Explainer(bb)
        items = folder_items(folder, bb.class_names).items
        t0 = time.perf_counter()
        bank = build_bank(ex, items, name=f"samples on {key}").bank
        if key == "gpu":
            sync()
        out[key] = (ex, bank, time.perf_counter() - t0)
    (ex_c, bank_c, t_c), (ex_g, bank_g, t_g) = out["cpu"], out["gpu"]
    same_classes = sorted(bank_c.classes) == sorted(bank_g.classes)
    image = load_image(ROOT / "assets" / "samples" / "cat.png")
    target = int(ex_c.forward(image).probs.argmax())
    problems = []
    r = float("nan")
    if target in bank_c.classes and target in bank_g.classes:
        m_c = ex_c.compute(image, "lpcam", target, bank=bank_c).map
        m_g = ex_g.compute(image, "lpcam", target, bank=bank_g).map
        r, _ = maps_agree(m_g, m_c)
    report["bank"] = {"images": len(items), "cpu_s": round(t_c, 2), "gpu_s": round(t_g, 2),
                      "same_classes": same_classes, "lpcam_r": r}
    print(f"\nLPCAM bank from {len(items)} sample images: cpu {t_c:.2f} s, gpu {t_g:.2f} s; same classes "
          f"{same_classes}; LPCAM map on cat.png from each bank r = {r:.5f}", flush=True)
    if not same_classes:
        problems.append("bank classes differ")
    if not r >= 0.99:
        problems.append(f"bank LPCAM r {r}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--image", default=str(ROOT / "assets/samples/cat.png"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--testbed", nargs="*", default=[], help="registered testbed backbones to check too")
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-slow", action="store_true", help="leave out Score-CAM and the other many-forward methods")
    args = ap.parse_args()
    if args.device != "cpu" and not torch.cuda.is_available():
        sys.exit("no GPU here: this script checks the GPU paths (--device cpu runs it CPU against CPU, as a dry run)")
    report = {"device": torch.cuda.get_device_name(0) if args.device != "cpu" else "cpu (dry run)", "torch": torch.__version__}
    print(f"{report['device']}, torch {torch.__version__}", flush=True)
    image = load_image(args.image)
    problems = []
    bb_cpu, bb_gpu = load_backbone("efficientnet_lite0", "cpu"), load_backbone("efficientnet_lite0", args.device)
    problems += check_backbone("efficientnet_lite0", bb_cpu, bb_gpu, image, args.repeats, report, args.skip_slow)
    for name in args.testbed:
        problems += check_backbone(name, load_backbone(name, "cpu"), load_backbone(name, args.device), image,
                                   args.repeats, report, args.skip_slow)
    names = ["cat.png", "dog.jpg", "quokka.jpg", "robin.jpg"]
    problems += check_threads(bb_gpu, [load_image(ROOT / "assets" / "samples" / n) for n in names], report)
    problems += check_kmeans(args.device, report)
    problems += check_bank(bb_cpu, bb_gpu, report)
    report["problems"] = problems
    print("\nproblems: " + ("; ".join(problems) if problems else "none"), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

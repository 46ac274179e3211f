"""Latency of live tuning on the Feature Space page: what a slider change costs in compute.

    python bench/bench_live.py [--repeats 7] [--device cpu|cuda]

The bank: one class (Egyptian cat, 285) holding 20,000 real EfficientNet-Lite0 pixel features,
from the 24 sample images fed at 1x-4x (224-896 px; 49-784 pixels each), each pixel with its
CAM for that class. Each change is timed as the app does it: the method's computation (cache
cleared, forward pass kept) plus, for display changes, thresholding and drawing the tiles.
Targets on the 2-core CPU: K change < 300 ms, threshold change < 50 ms. Prints medians and
worst cases over --repeats sweeps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from cam_core import Explainer, PrototypeBank, load_backbone, load_image  # noqa: E402
from cam_core.render import downscale_for_display, render_tile, to_image_map  # noqa: E402

CLASS = 285


def build_bank(ex: Explainer, cap: int) -> PrototypeBank:
    bb = ex.backbone
    bank = PrototypeBank(bb.name, bb.feature_dim, "bench", max_per_class=cap)
    for path in sorted((ROOT / "assets" / "samples").glob("*.*g")):
        image = load_image(path)
        fwd = ex.forward(image)
        for scale in (1.0, 2.0, 3.0, 4.0):
            feats = fwd.head_features if scale == 1.0 else fwd.features_at(scale)
            cam = torch.relu(bb.class_maps(feats, CLASS))
            bank.add(image.name, image.sha256, CLASS, feats, cam)
    return bank


def time_ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cap", type=int, default=20_000)
    args = ap.parse_args()
    ex = Explainer(load_backbone("efficientnet_lite0", args.device))
    ex.warm_up()
    bank = build_bank(ex, args.cap)
    image = load_image(ROOT / "assets" / "samples" / "cat.png")
    display, _ = downscale_for_display(image.rgb, 480)
    size = display.shape[:2]
    fg, bg = bank.split(CLASS, 0.1)
    print(f"bank: {len(bank.classes[CLASS])} features of class {CLASS} ({len(fg)} foreground / {len(bg)} context "
          f"at tau 0.1), {bank.feature_dim}-d; device {ex.backbone.device}; image {image.name}")

    def lpcam(**params):
        return ex.compute(image, "lpcam", CLASS, params=params, bank=bank)

    def forget_maps():
        ex._maps.clear()  # keep the forward pass, drop computed maps (as a new slider value would)

    lpcam(k=12)  # warm: first split (normalised copies) and kernels
    results: dict[str, list[float]] = {k: [] for k in ("K change", "tau change", "mu_f change (selection)",
                                                       "SIPE bg factor change", "threshold change (3 tiles)")}
    ks = [8, 10, 12, 14, 16]
    for r in range(args.repeats):
        for k in ks:
            forget_maps()
            bank._clusters = type(bank._clusters)((key, v) for key, v in bank._clusters.items() if key[0] == "split")
            results["K change"].append(time_ms(
                lambda k=k: render_tile(display, to_image_map(lpcam(k=k).map, size, "max"), 0.5, "jet", 0.0)))
        tau = 0.1 + 0.05 * (r % 4 + 1)
        forget_maps()
        results["tau change"].append(time_ms(lambda tau=tau: lpcam(k=12, tau=tau)))
        lpcam(k=12, tau=0.1)  # the clusters of the current K and tau exist, as in the app
        forget_maps()
        results["mu_f change (selection)"].append(time_ms(lambda r=r: lpcam(k=12, tau=0.1, rule="softmax",
                                                                            mu_f=0.5 + 0.05 * r)))
        forget_maps()
        results["SIPE bg factor change"].append(time_ms(lambda r=r: ex.compute(image, "sipe", CLASS,
                                                                              params={"bg_factor": 0.3 + 0.1 * r})))
        maps = [ex.compute(image, m, CLASS, bank=bank).map for m in ("cam", "lpcam", "sipe")]
        thr = 0.2 + 0.1 * (r % 6)
        results["threshold change (3 tiles)"].append(time_ms(lambda thr=thr: [
            render_tile(display, to_image_map(m, size, "max"), 0.5, "jet", thr) for m in maps]))
    targets = {"K change": 300, "threshold change (3 tiles)": 50}
    print(f"{'change':28s} {'median ms':>10s} {'worst ms':>9s}  target")
    for name, values in results.items():
        target = f"< {targets[name]} ms" if name in targets else ""
        print(f"{name:28s} {statistics.median(values):10.1f} {max(values):9.1f}  {target}")
    sel = lpcam(k=12).extras["selection"]
    print(f"K-means at K=12: {sel.fg.iterations} + {sel.bg.iterations} iterations on {sel.fg.fitted_on} + "
          f"{sel.bg.fitted_on} of {sel.n_fg} + {sel.n_bg} points, {sel.kmeans_ms:.0f} ms")


if __name__ == "__main__":
    main()

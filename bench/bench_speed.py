"""Speed of cam_core against pytorch-grad-cam and torchcam, in one process, same image, same model.

    python bench/bench_speed.py [--image assets/samples/cat.png] [--repeats 10] [--skip-scorecam] [--device cuda]

Every library gets the same EfficientNet-Lite0 (ImageNet weights, channels-last, 224 px), the
same decoded image and the same class. Each timing is the median of --repeats runs after a
warm-up and covers everything a user waits for, from the decoded image to the map:
preprocessing (the same function for all) and the forward pass included, cam_core's caches
cleared between repeats. The baseline "one forward pass" is preprocessing + model(x) under
inference_mode. Prints a table and the ratios the project's targets are stated in.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is first imported: pytorch-grad-cam's Score-CAM bar

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cam_core import Explainer, load_backbone, load_image  # noqa: E402
from cam_core.render import normalize  # noqa: E402

GRADIENT = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam"]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # a GPU timing ends when the kernels do, not when they are queued


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", default=str(ROOT / "assets/samples/cat.png"))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-scorecam", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: every library runs there")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import pytorch_grad_cam as pgc
    import torchcam.methods as tcm
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    backbone = load_backbone("efficientnet_lite0", args.device)
    image = load_image(args.image)
    ex = Explainer(backbone)
    ex.warm_up()
    x = backbone.preprocess(image.rgb)
    target = ex.targets(image)[0]
    model = backbone.model
    # The peers differentiate through the parameters' graph: give them a copy with grads on.
    peer_model = copy.deepcopy(model).requires_grad_(True)
    layer = peer_model.get_submodule("bn2")  # its output is forward_features' output, our default layer

    rows: list[tuple[str, float | None, float | None, float | None]] = []

    def ours(methods):
        def run():
            ex.clear()
            for m in methods:
                ex.compute(image, m, target)
        return run

    with torch.inference_mode():
        pre_ms = median_ms(lambda: backbone.preprocess(image.rgb), args.repeats)
        fwd_ms = median_ms(lambda: model(backbone.preprocess(image.rgb)), args.repeats)
        plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        fwd_plain_ms = median_ms(lambda: plain(backbone.preprocess(image.rgb)), args.repeats)

    pgc_classes = {"gradcam": pgc.GradCAM, "gradcampp": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM,
                   "layercam": pgc.LayerCAM, "hirescam": pgc.HiResCAM, "eigencam": pgc.EigenCAM}
    tc_classes = {"cam": tcm.CAM, "gradcam": tcm.GradCAM, "gradcampp": tcm.GradCAMpp, "xgradcam": tcm.XGradCAM,
                  "layercam": tcm.LayerCAM}

    def pgc_run(name):
        cam = pgc_classes[name](model=peer_model, target_layers=[layer])
        return lambda: cam(input_tensor=backbone.preprocess(image.rgb), targets=[ClassifierOutputTarget(target)])

    def tc_run(name):
        kwargs = {"fc_layer": peer_model.classifier} if name == "cam" else {}
        extractor = tc_classes[name](peer_model, target_layer=layer, **kwargs)
        extractor.disable_hooks()

        def run():
            extractor.enable_hooks()
            try:
                xi = backbone.preprocess(image.rgb)
                if name == "cam":
                    with torch.no_grad():
                        out = peer_model(xi)
                else:
                    out = peer_model(xi)
                extractor(target, out)
            finally:
                extractor.disable_hooks()
        return run

    for name in ["cam", *GRADIENT, "eigencam"]:
        t_ours = median_ms(ours([name]), args.repeats)
        t_pgc = median_ms(pgc_run(name), args.repeats) if name in pgc_classes else None
        t_tc = median_ms(tc_run(name), args.repeats) if name in tc_classes else None
        rows.append((name, t_ours, t_pgc, t_tc))

    five_ours = median_ms(ours(GRADIENT), args.repeats)
    five_pgc = sum(r[2] for r in rows if r[0] in GRADIENT)
    four_tc_names = [n for n in GRADIENT if n in tc_classes]
    four_ours = median_ms(ours(four_tc_names), args.repeats)
    four_tc = sum(r[3] for r in rows if r[0] in four_tc_names)

    where = (torch.cuda.get_device_name(backbone.device) if backbone.device.type == "cuda"
             else f"{torch.get_num_threads()} threads")
    print(f"EfficientNet-Lite0, {image.name}, class {target} ({backbone.class_name(target)}), "
          f"{where}, median of {args.repeats}")
    print(f"one forward pass: {fwd_ms:.1f} ms = preprocessing {pre_ms:.1f} ms + model(x) under inference_mode, "
          f"channels-last as cam_core runs it ({fwd_plain_ms:.1f} ms in timm's default layout)")
    print(f"{'method':12s} {'cam_core':>10s} {'grad-cam':>10s} {'torchcam':>10s}   (ms, from the decoded image)")
    for name, a, b, c in rows:
        fmt = lambda v: f"{v:10.1f}" if v is not None else f"{'-':>10s}"  # noqa: E731
        print(f"{name:12s} {fmt(a)} {fmt(b)} {fmt(c)}")
    print(f"five gradient methods together: cam_core {five_ours:.1f} ms = {five_ours / fwd_ms:.2f} x one forward "
          f"(target <= 1.3); pytorch-grad-cam {five_pgc:.1f} ms (ratio {five_ours / five_pgc:.2f})")
    print(f"torchcam's four ({', '.join(four_tc_names)}): cam_core {four_ours:.1f} ms vs torchcam {four_tc:.1f} ms "
          f"= {four_ours / four_tc:.2f} (target <= 0.35)")

    if args.skip_scorecam:
        return
    # Each library runs once untimed first (allocator, kernel choice), then once timed; the
    # batch-size sweep and repeated, interleaved timings are in bench/bench_scorecam.py.
    def ours_scorecam():
        ex.clear()
        return ex.compute(image, "scorecam", target).map

    cam = pgc.ScoreCAM(model=peer_model, target_layers=[layer])
    extractor = tcm.ScoreCAM(peer_model, target_layer=layer)

    def tc_scorecam():
        with torch.no_grad():
            extractor(target, peer_model(x))

    def timed(fn):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        return out, time.perf_counter() - t0

    for warm in (ours_scorecam, lambda: cam(input_tensor=x, targets=[ClassifierOutputTarget(target)]), tc_scorecam):
        warm()
    ours_sc, t_ours = timed(ours_scorecam)
    _, t_pgc = timed(lambda: cam(input_tensor=x, targets=[ClassifierOutputTarget(target)]))
    _, t_tc = timed(tc_scorecam)
    extractor.remove_hooks()
    # The paper's definition, one channel at a time, as the reference for faithfulness.
    acts = ex.forward(image).activations
    ref = torch.zeros(x.shape[-2:], device=x.device)
    kept = 0
    with torch.inference_mode():
        for k in range(acts.shape[0]):
            up = torch.nn.functional.interpolate(acts[k][None, None], size=x.shape[-2:], mode="bilinear",
                                                 align_corners=False)[0, 0]
            if up.max() == up.min():
                continue
            kept += 1
            mask = (up - up.min()) / (up.max() - up.min())
            ref += model(x * mask).softmax(-1)[0, target] * up
    r = pearson(normalize(ours_sc.cpu()), normalize(torch.relu(ref).cpu()))
    print(f"Score-CAM ({kept} of {acts.shape[0]} channels vary): cam_core {t_ours:.1f} s, pytorch-grad-cam "
          f"{t_pgc:.1f} s, torchcam {t_tc:.1f} s; cam_core / pytorch-grad-cam = {t_ours / t_pgc:.2f} (target <= 0.4); "
          f"Pearson r vs the paper's one-channel loop = {r:.5f} (target >= 0.99)")


if __name__ == "__main__":
    main()

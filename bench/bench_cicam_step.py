"""Seconds per training step of each testbed arch, to size the full trainings.

    python bench/bench_cicam_step.py [--size 160] [--batch 32] [--steps 3] [--threads 2]

One optimiser step = forward, loss, backward, AdamW step, on random images (the data does
not change the cost). ci-cam is timed with both teacher roles (cls adds the crops and the spa
loss; both run the two auxiliary passes); kd-ci-cam with two CI-CAM teachers in eval mode,
each image flagged at random as train() does. Multiply by steps per epoch (train images /
batch) and epochs for a training's time on this machine.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from cam_core.testbed.cicam import CICAM, student_loss, teacher_loss
from cam_core.testbed.models import build_model
from cam_core.testbed.train import TEACHER_ROLES


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    k, n = 8, args.batch
    x = torch.randn(n, 3, args.size, args.size)
    y = (torch.rand(n, k) < 0.2).float()
    cfg = {"input_size": args.size}

    def timed(name, model, loss_fn):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model.train()
        times = []
        for _ in range(args.steps + 1):  # the first step warms up
            t0 = time.perf_counter()
            loss = loss_fn(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        print(f"{name:>14}: {min(times[1:]):.2f} s/step (best of {args.steps}), batch {n}, {args.size} px")

    timed("cnn", build_model("cnn", k), lambda m: F.binary_cross_entropy_with_logits(m(x), y))
    timed("vit", build_model("vit", k, {"img_size": args.size}), lambda m: F.binary_cross_entropy_with_logits(m(x), y))
    for role, opts in TEACHER_ROLES.items():
        def teacher(m, opts=opts):
            out = m.branches(x)
            loss = teacher_loss(m, x, y, out, opts["aux_type"], opts["aux_rate"], opts["seg_thr"], opts["spa_rate"])
            m.update_dictionary(y, out.up_logits, out.up_cam, opts["update_rate"])
            return loss
        timed(f"ci-cam ({role})", CICAM(k, cfg), teacher)
    t_cls, t_loc = CICAM(k, cfg).eval(), CICAM(k, cfg).eval()
    flags = torch.randint(0, 3, (n,))

    def student(m):
        out = m.branches(x)
        with torch.no_grad():
            tl, tc = t_cls(x), t_loc.branches(x).down_cam
        return student_loss(out, y, flags, tl, tc)
    timed("kd-ci-cam", CICAM(k, cfg), student)


if __name__ == "__main__":
    main()

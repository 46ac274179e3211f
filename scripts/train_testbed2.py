"""Train every model shipped for testbed version 2, as the cards record, in one command.

    python scripts/train_testbed2.py [--data data/testbed2] [--out assets/testbed] [--device auto] [--jobs 4]

Generates the data if it is missing (`cam_core testbed generate --version 2 --n 1200 --seed 0`),
then runs `python -m cam_core testbed train` for: testbed2-cnn, testbed2-vit, the two CI-CAM
teachers (testbed2-ci-cam is the localisation teacher, testbed2-ci-cam-cls the classification
one) in parallel (--jobs processes; on one GPU they share it), and then the KD-CI-CAM student
(testbed2-kd-ci-cam) from the two teachers. Each run's log is written beside its checkpoint
(OUT/NAME.log). On the 2-core CPU this takes hours; on one GPU, minutes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(name: str, args: list[str], out: Path, env: dict) -> tuple[str, int, float]:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "cam_core", "testbed", "train", *args, "--out", str(out / name)]
    with open(out / f"{name}.log", "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    seconds = time.perf_counter() - t0
    print(f"{name}: exit {rc} after {seconds:.0f} s", flush=True)
    return name, rc, seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/testbed2")
    ap.add_argument("--out", default="assets/testbed")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--jobs", type=int, default=4, help="training processes at once")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per process (default: cores / jobs)")
    ap.add_argument("--epochs", type=int, default=None, help="every model (default: each arch's own)")
    ap.add_argument("--only", default="cnn,vit,ci-cam,ci-cam-cls,kd-ci-cam",
                    help="which of cnn, vit, ci-cam, ci-cam-cls, kd-ci-cam to train")
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (data / "testbed.json").is_file():
        subprocess.check_call([sys.executable, "-m", "cam_core", "testbed", "generate", "--version", "2", "--n", "1200",
                               "--seed", "0", "--out", str(data)], cwd=ROOT)
    threads = args.threads or max(1, (os.cpu_count() or 2) // max(1, args.jobs))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    common = ["--data", str(data), "--device", args.device] + (["--epochs", str(args.epochs)] if args.epochs else [])
    first = {"testbed2-cnn": ["--arch", "cnn"], "testbed2-vit": ["--arch", "vit"],
             "testbed2-ci-cam": ["--arch", "ci-cam", "--role", "loc"],
             "testbed2-ci-cam-cls": ["--arch", "ci-cam", "--role", "cls"]}
    wanted = {f"testbed2-{w.strip()}" for w in args.only.split(",") if w.strip()}
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda kv: run(kv[0], kv[1] + common, out, env),
                                 [(k, v) for k, v in first.items() if k in wanted]))
    failed = [name for name, rc, _ in results if rc != 0]
    if "testbed2-kd-ci-cam" in wanted:
        if {"testbed2-ci-cam", "testbed2-ci-cam-cls"} & set(failed):
            print("kd-ci-cam skipped: a teacher failed", flush=True)
            failed.append("testbed2-kd-ci-cam")
        else:
            _, rc, _ = run("testbed2-kd-ci-cam", ["--arch", "kd-ci-cam", "--cls-teacher", str(out / "testbed2-ci-cam-cls"),
                                                 "--loc-teacher", str(out / "testbed2-ci-cam")] + common, out, env)
            if rc != 0:
                failed.append("testbed2-kd-ci-cam")
    print(f"all done in {time.perf_counter() - t0:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

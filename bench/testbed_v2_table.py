"""Issue 12's table: every v2 model and method side by side, from bench/testbed_v2_report.py's JSONs.

    python bench/testbed_v2_table.py [--reports results/testbed2-*-report.json ...] [--out results/testbed2-table.md]

One row per (report, method): classification on val (water classes / the rest: label
accuracy; mAP overall) and the water classes' label accuracy and recall on heldout; then, on
val, for the images that hold a water class and for the rest: seed mIoU, Top-1 Loc, GT-known
Loc, MaxBoxAccV2; body and part recall over all val; and the share of the class map's energy
on the background for the water classes on water (the confounder) and, as the control, the
other classes on water.
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
W, O, ALL = "images with a water class", "images without", "all val"


def rows(report: dict, name: str) -> list[list[str]]:
    c = report["classification"]
    out = []
    methods = list(report["localisation"][ALL])
    for method in methods:
        if method == "cam" and "cicam" in methods:
            continue  # on a CI-CAM network the backbone's features are the down branch's: CAM is cicam
        loc = {k: report["localisation"][k][method] for k in (W, O, ALL)}
        energy = report["energy_on_background"].get(method, {})
        cells = [
            name, method,
            f"{c['val']['mAP']:.3f}",
            f"{c['val']['water classes']['label_accuracy']:.3f} / {c['val']['other classes']['label_accuracy']:.3f}",
            f"{c['heldout']['water classes']['label_accuracy']:.3f} / {c['heldout']['water classes']['recall']:.3f}",
        ]
        for key in ("seed_mIoU", "top1_loc", "gt_known_loc", "maxboxacc_v2"):
            cells.append(f"{loc[W][key]:.3f} / {loc[O][key]:.3f}")
        cells.append(f"{loc[ALL]['recall_body']:.3f} / {loc[ALL]['recall_part']:.3f}")
        cells.append(f"{energy.get('water classes on water', {}).get('energy_on_background', float('nan')):.3f} / "
                     f"{energy.get('other classes on water', {}).get('energy_on_background', float('nan')):.3f}")
        out.append(cells)
    return out


HEADER = ["model", "method", "val mAP", "val accuracy: water classes / rest", "heldout water classes: accuracy / recall",
          "seed mIoU (water images / rest)", "Top-1 Loc", "GT-known Loc", "MaxBoxAccV2", "recall body / part (all val)",
          "energy on water: water classes / others"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reports", nargs="*", default=None)
    ap.add_argument("--out", default=str(ROOT / "results" / "testbed2-table.md"))
    args = ap.parse_args()
    order = ["cnn-prototypes", "cnn", "vit", "ci-cam", "ci-cam-cls", "kd-ci-cam"]
    paths = args.reports or sorted(glob.glob(str(ROOT / "results" / "testbed2-*-report.json")) +
                                   glob.glob(str(ROOT / "results" / "testbed2-*-prototypes.json")))
    if not args.reports and any(p.endswith("testbed2-cnn-prototypes.json") for p in paths):
        paths = [p for p in paths if not p.endswith("testbed2-cnn-report.json")]  # its cam rows are in there too

    def rank(p):
        stem = Path(p).stem.removeprefix("testbed2-").removesuffix("-report")
        return order.index(stem) if stem in order else len(order)

    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for p in sorted(paths, key=rank):
        name = "testbed2-" + Path(p).stem.removeprefix("testbed2-").removesuffix("-report").removesuffix("-prototypes")
        lines += ["| " + " | ".join(r) + " |" for r in rows(json.loads(Path(p).read_text()), name)]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(f"`python bench/testbed_v2_table.py` (from {len(paths)} reports)\n\n" + text)


if __name__ == "__main__":
    main()

"""Issue 10's closing numbers on the bundled samples: every method's scores on the quokka and
plant masks (the CLI), and the Compare page's score line under cat.png's default tiles (the
app, in Streamlit's AppTest). Writes results/scores_samples.md with the exact commands.

    python bench/scores_samples.py [--out results/scores_samples.md] [--work DIR]

(a) For each of quokka.jpg and plant.jpg: ``python -m cam_core explain IMAGE --mask MASK
--methods M --metrics all --out DIR`` with EfficientNet-Lite0 (the CLI's default backbone), M =
every method that applies to it, each with its default parameters; the table is summary.json's
``metrics`` of each method (the explained class is the top-1). (b) The app as it opens (cat.png,
EfficientNet-Lite0, the Compare page's default methods): the caption of each tile and its score
line, as the page shows them. Scores, not timings: the machine's load does not change them.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = [("quokka.jpg", "masks/quokka_mask.png"), ("plant.jpg", "masks/plant_mask.png")]
COLUMNS = ["energy", "pointing", "best_iou", "best_iou_threshold", "deletion", "insertion", "average_drop",
           "increase", "road"]


def methods_for(backbone: str) -> list[str]:
    from cam_core import Explainer, load_backbone

    return [s.name for s in Explainer(load_backbone(backbone)).methods()]


def cli_scores(work: Path, methods: list[str]) -> tuple[list[str], list[str]]:
    """Runs the CLI on each sample; returns (commands as run, markdown table lines)."""
    commands, lines = [], []
    for image, mask in CASES:
        out = work / Path(image).stem
        argv = ["-m", "cam_core", "explain", f"assets/samples/{image}", "--mask", f"assets/samples/{mask}",
                "--backbone", "efficientnet_lite0", "--methods", ",".join(methods), "--metrics", "all",
                "--out", str(out), "--overwrite"]
        shown = ".venv/bin/python " + " ".join(shlex.quote(a) for a in argv).replace(str(out), f"OUT/{out.name}")
        commands.append(shown)
        print(shown, file=sys.stderr)
        subprocess.run([sys.executable, *argv], cwd=ROOT, check=True)
        summary = json.loads((out / "summary.json").read_text())
        (record,) = summary["images"].values()
        target = record["target"]
        lines += [f"\n**{image}** (mask `{mask}`), explained class {target['index']} ({target['name']}):\n",
                  "| method | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
        for m in methods:
            entry = record["methods"][m]
            s = entry["metrics"]
            label = entry["label"] + (" (approximate)" if entry["approximate"] else "")
            cells = []
            for c in COLUMNS:
                v = s.get(c)
                cells.append("—" if v is None else ("✓" if v is True else "✗" if v is False else f"{v:.3f}"))
            lines.append(f"| {m}: {label} | " + " | ".join(cells) + " |")
    return commands, lines


def page_score_lines() -> list[str]:
    """The Compare page as it opens: (method label, tile caption, score line) of each tile."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    from cam_core.methods import get_method

    methods = at.multiselect(key="methods").value
    labels = {m: get_method(m).label for m in methods}
    captions = [c.value for c in at.caption]
    scores = [c for c in captions if c.startswith("drop ") or c.startswith("energy ")]
    tiles = [captions[i - 1] for i, c in enumerate(captions) if c in scores]
    image = at.session_state["selection"].image.name
    backbone = at.session_state["selection"].backbone.name
    lines = [f"\n{image}, {backbone}, the page's default methods ({', '.join(methods)}); no mask or box comes "
             "with cat.png, so each line has the cheap faithfulness numbers only:\n",
             "| tile | class · grid (the tile's caption, its time left out) | score line |", "|---|---|---|"]
    for m, tile, score in zip(methods, tiles, scores):
        tile = re.sub(r" · [\d.]+ ms", "", tile)  # its compute time: not a score, and the machine's load
        lines.append(f"| {labels[m]} | {tile} | {score} |")
    assert len(scores) == len(methods), (methods, scores)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "results" / "scores_samples.md"))
    ap.add_argument("--work", default=None, help="folder for the CLI's outputs (default: a temporary one)")
    args = ap.parse_args()
    methods = methods_for("efficientnet_lite0")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        commands, table = cli_scores(work, methods)
    page = page_score_lines()
    text = "\n".join([
        "# Scores on the bundled samples (issue 10)",
        "",
        "Written by `.venv/bin/python bench/scores_samples.py` (scores only: no timings here).",
        "",
        "## Every method on the quokka and plant masks (CLI, EfficientNet-Lite0, CPU)",
        "",
        "Every method that applies to EfficientNet-Lite0, each with its default parameters; `--metrics all`. "
        "energy: share of the min-max map's energy inside the mask; pointing: the map's maximum within 15 px "
        "of it; best_iou over thresholds 0.05…0.95 (at best_iou_threshold); deletion / insertion: RISE's AUCs "
        "(lower / higher is better); average_drop: max(0, Y − O)/Y for the input times the map; increase: "
        "O > Y; road: ROAD (Rong et al.). Commands (OUT: any empty folder):",
        "",
        "```bash",
        *commands,
        "```",
        "",
        "The explained class is the top-1 (ImageNet has no quokka: Lite0 says wombat). Lite0 declares no "
        "dataset, so LPCAM clusters each image's own pixels (labelled approximate, as the CLI and the app say).",
        *table,
        "",
        "## The Compare page's score line for cat.png's default tiles",
        "",
        "The app as it opens (`streamlit run app.py`: cat.png, EfficientNet-Lite0, the Compare page's default "
        "methods), read with Streamlit's AppTest by the same script (`page_score_lines`). drop: the class "
        "probability's drop when the input is multiplied by the map, max(0, p − p(x·map))/p (Average Drop's "
        "term); \"increase\" when it rose.",
        *page,
        "",
    ])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()

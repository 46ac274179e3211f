"""`explain --metrics` / `--mask` / `--box`: what summary.json holds per method."""

import json

import numpy as np
import pytest
from helpers import SAMPLES

from cam_core import Explainer, load_backbone, load_image
from cam_core.cli import main
from cam_core.metrics import best_iou, boxes_mask, energy_inside, faithfulness, pointing_game

MASK = SAMPLES / "masks" / "quokka_mask.png"
FAST = ["--backbone", "random:resnet18", "--methods", "cam,gradcam"]


def _metrics(out, folder="quokka"):
    record = json.loads((out / "summary.json").read_text())["images"][folder]
    return {m: rec.get("metrics") for m, rec in record["methods"].items()}


def test_a_mask_alone_gives_the_ground_truth_metrics(tmp_path):
    out = tmp_path / "o"
    assert main(["explain", str(SAMPLES / "quokka.jpg"), *FAST, "--mask", str(MASK), "--out", str(out)]) == 0
    got = _metrics(out)
    assert set(got) == {"cam", "gradcam"}
    assert set(got["cam"]) == {"energy", "pointing", "best_iou", "best_iou_threshold"}
    # the same numbers as the library's, on the min-max map written as the .npy
    m01 = np.load(out / "quokka" / "cam.npy")
    region = np.asarray(load_image(MASK).rgb)[..., 0] > 0
    assert got["cam"]["energy"] == pytest.approx(energy_inside(m01, region), abs=1e-6)
    assert got["cam"]["pointing"] == pointing_game(m01, region)
    value, t = best_iou(m01, region)
    assert got["cam"]["best_iou"] == pytest.approx(value, abs=1e-6) and got["cam"]["best_iou_threshold"] == t


def test_no_metrics_asked_no_metrics_key(tmp_path):
    out = tmp_path / "o"
    assert main(["explain", str(SAMPLES / "quokka.jpg"), *FAST, "--out", str(out)]) == 0
    assert _metrics(out) == {"cam": None, "gradcam": None}


def test_box_and_faithfulness_keys_only_for_what_was_asked(tmp_path):
    out = tmp_path / "o"
    assert main(["explain", str(SAMPLES / "cat.png"), "--backbone", "testbed-cnn", "--methods", "cam",
                 "--box", "60,40,300,290", "--metrics", "pointing,deletion,increase",
                 "--out", str(out)]) == 0
    got = _metrics(out, "cat")["cam"]
    assert set(got) == {"pointing", "deletion", "increase"}
    assert isinstance(got["pointing"], bool) and 0 <= got["deletion"] <= 1 and got["increase"] in (0.0, 1.0)
    # the library's numbers for the same map and class
    ex = Explainer(load_backbone("testbed-cnn"))
    cat = load_image(SAMPLES / "cat.png")
    record = json.loads((out / "summary.json").read_text())["images"]["cat"]
    target = record["target"]["index"]
    ref = faithfulness(ex.forward(cat), ex.compute(cat, "cam", target).map, target, ["deletion"])
    assert got["deletion"] == pytest.approx(ref["deletion"], abs=1e-5)
    m01 = np.load(out / "cat" / "cam.npy")
    assert got["pointing"] == pointing_game(m01, boxes_mask([(60, 40, 300, 290)], m01.shape))


def test_ground_truth_metrics_without_a_ground_truth_are_refused_up_front(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["explain", str(SAMPLES / "cat.png"), *FAST, "--metrics", "energy,deletion", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--mask FILE or --box" in err[0]
    assert not out.exists()
    assert main(["explain", str(SAMPLES / "cat.png"), *FAST, "--metrics", "deletion,nosuch", "--out", str(out)]) == 2
    assert "unknown metric 'nosuch'" in capsys.readouterr().err


def test_a_mask_of_another_size_fails_that_image_only(tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(["explain", str(SAMPLES / "cat.png"), str(SAMPLES / "quokka.jpg"), *FAST, "--mask", str(MASK),
               "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cat.png" in err[0] and "--mask is 960 x 643 pixels, the image 451 x 300" in err[0]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["images"]) == {"quokka"} and not (out / "cat").exists()


@pytest.mark.parametrize("args", [
    ["--box", "1,2,3"], ["--box", "5,5,1,1"], ["--box", "a,b,c,d"],
    ["--box", "1,2,3,4", "--mask", "m.png"],
])
def test_bad_boxes_are_usage_errors(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["explain", "x.png", "--out", "o", *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: argument --")


def test_a_box_outside_the_image_is_an_error(tmp_path, capsys):
    rc = main(["explain", str(SAMPLES / "cat.png"), *FAST, "--box", "900,10,950,20", "--out", str(tmp_path / "o")])
    assert rc == 2 and "lies outside the image" in capsys.readouterr().err

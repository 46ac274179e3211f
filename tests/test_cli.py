"""The CLI contract: files, shapes, ranges, summary, and exit code 2 on bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, SAMPLES
from PIL import Image

from cam_core.cli import main


def test_explain_writes_maps_overlays_and_summary(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["explain", str(SAMPLES / "cat.png"), str(SAMPLES / "quokka.jpg"),
               "--backbone", "efficientnet_lite0", "--methods", "cam,gradcam,gradcampp,eigencam", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["images"]) == {"cat", "quokka"}
    for stem, src in (("cat", "cat.png"), ("quokka", "quokka.jpg")):
        w, h = Image.open(SAMPLES / src).size
        rec = summary["images"][stem]
        assert len(rec["top5"]) == 5 and rec["top5"][0]["index"] == rec["target"]["index"]
        assert 0 < sum(p["probability"] for p in rec["top5"]) <= 1.0 + 1e-6
        assert rec["top5"][0]["probability"] >= rec["top5"][1]["probability"]
        for m in ("cam", "gradcam", "gradcampp", "eigencam"):
            arr = np.load(out / stem / f"{m}.npy")
            assert arr.dtype == np.float32 and arr.shape == (h, w)
            assert arr.min() >= 0 and arr.max() <= 1 and arr.max() == pytest.approx(1.0)
            assert Image.open(out / stem / f"{m}.png").size == (w, h)
            assert rec["methods"][m]["ms"] >= 0
    assert summary["images"]["cat"]["target"]["name"] == "Egyptian cat"


def test_explicit_target_by_index_and_name(tmp_path):
    out = tmp_path / "o"
    assert main(["explain", str(SAMPLES / "cat.png"), "--methods", "cam", "--target", "281", "--out", str(out)]) == 0
    a = np.load(out / "cat" / "cam.npy")
    assert json.loads((out / "summary.json").read_text())["images"]["cat"]["target"]["index"] == 281
    assert main(["explain", str(SAMPLES / "cat.png"), "--methods", "cam", "--target", "tabby", "--out", str(out)]) == 0
    assert np.array_equal(a, np.load(out / "cat" / "cam.npy"))


def test_bad_images_fail_alone_with_exit_2(tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((SAMPLES / "dog.jpg").read_bytes()[:3000])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    out = tmp_path / "o"
    rc = main(["explain", str(broken), str(SAMPLES / "cat.png"), str(tmp_path / "missing.png"), str(text),
               "--methods", "cam", "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "truncated" in err[0] and "no such file" in err[1] and "not an image" in err[2]
    assert (out / "cat" / "cam.npy").exists()
    assert len(json.loads((out / "summary.json").read_text())["errors"]) == 3


@pytest.mark.parametrize("args,msg", [
    (["--methods", "cam,nosuch"], "unknown method 'nosuch'"),
    (["--backbone", "nosuchnet"], "unknown backbone 'nosuchnet'"),
    (["--target", "1000"], "class id 1000 is out of range"),
    (["--param", "scorecam.batch_size=8"], "not among --methods"),
    (["--methods", " , "], "--methods is empty"),
    (["--device", "tpu"], "unknown device 'tpu'"),
])
def test_bad_arguments_one_line_exit_2(tmp_path, capsys, args, msg):
    rc = main(["explain", str(SAMPLES / "cat.png"), "--out", str(tmp_path / "o"), *args])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "taken.txt"
    out.write_text("keep me")
    assert main(["explain", str(SAMPLES / "cat.png"), "--out", str(out)]) == 2
    assert "is a file" in capsys.readouterr().err and out.read_text() == "keep me"


@pytest.mark.parametrize("args", [
    ["explain", "x.png", "--out", "o", "--colormap", "rainbow"],
    ["explain", "x.png", "--out", "o", "--opacity", "1.5"],
    ["explain", "x.png", "--out", "o", "--num-classes", "-3"],
    ["explain", "x.png", "--out", "o", "--num-classes", "0"],
    ["bank", "build", "folder", "--out", "b.safetensors", "--k", "0"],
    ["bank", "build", "folder", "--out", "b.safetensors", "--tau", "5"],
    ["bank", "build", "folder", "--out", "b.safetensors", "--max-per-class", "0"],
])
def test_out_of_range_options_are_usage_errors(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: argument --")


def test_module_entry_point_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cam_core", "explain", str(SAMPLES / "robin.jpg"),
                           "--backbone", "random:resnet18", "--methods", "layercam", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "robin" / "layercam.npy").shape == (254, 380)


def test_bank_build_then_explain_with_it(tmp_path, capsys):
    folder = tmp_path / "imgs"
    for sub, f in (("tabby", "cat.png"), ("espresso", "coffee.png")):
        (folder / sub).mkdir(parents=True)
        (folder / sub / f).write_bytes((SAMPLES / f).read_bytes())
    bank = tmp_path / "pets.safetensors"
    assert main(["bank", "build", str(folder), "--out", str(bank)]) == 0
    assert "2 images" in capsys.readouterr().out
    out = tmp_path / "o"
    assert main(["explain", str(SAMPLES / "cat.png"), "--methods", "lpcam,sipe", "--target", "281",
                 "--bank", str(bank), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bank"].startswith("imgs: 2 images")
    assert "bank: imgs" in summary["images"]["cat"]["methods"]["lpcam"]["note"]
    assert np.load(out / "cat" / "sipe.npy").shape == (300, 451)
    # K above the foreground pixels: one clear line, exit 2
    rc = main(["explain", str(SAMPLES / "cat.png"), "--methods", "lpcam", "--param", "lpcam.k=64",
               "--param", "lpcam.tau=0.9", "--out", str(out)])
    assert rc == 2 and "is larger than the" in capsys.readouterr().err

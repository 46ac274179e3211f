"""The CLI contract: files, shapes, ranges, summary, and exit code 2 on bad input."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

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
    assert main(["explain", str(SAMPLES / "cat.png"), "--methods", "cam", "--target", "tabby", "--out", str(out),
                 "--overwrite"]) == 0
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
               "--param", "lpcam.tau=0.9", "--out", str(tmp_path / "o2")])
    assert rc == 2 and "is larger than the" in capsys.readouterr().err


# ----- never write outside --out, never overwrite silently, never stop the batch for one image ----

FAST = ["--backbone", "random:resnet18", "--methods", "cam"]


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return dst


def _strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A 3-class resnet18 state dict as safetensors, and the same with every weight NaN."""
    import timm
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("ckpt")
    state = timm.create_model("resnet18", pretrained=False, num_classes=3).state_dict()
    save_file(state, root / "ok.safetensors")
    nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    save_file(nan, root / "nan.safetensors")
    return {"ok": root / "ok.safetensors", "nan": root / "nan.safetensors"}


def test_awkward_image_names_get_safe_distinct_folders_inside_out(tmp_path, capsys):
    # '...png' has the stem '..' (its maps went beside --out); two 'cat.png' from different folders
    names = ["...png", "..png", ".png", ".hidden.png", "a\\b.png", "cat.png"]
    images = [_copy(SAMPLES / "cat.png", tmp_path / "in" / n) for n in names]
    images.append(_copy(SAMPLES / "robin.jpg", tmp_path / "other" / "cat.png"))
    parent = tmp_path / "p"
    out = parent / "out"
    rc = main(["explain", *map(str, images), *FAST, "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert os.listdir(parent) == ["out"]  # nothing beside --out
    summary = _strict_json((out / "summary.json").read_text())
    assert len(summary["images"]) == len(images) and not summary["errors"]
    assert {rec["source"] for rec in summary["images"].values()} == {str(p) for p in images}
    for folder, rec in summary["images"].items():
        assert folder.strip(".") and not folder.startswith(".") and "/" not in folder and "\\" not in folder
        assert (out / folder).resolve().parent == out.resolve()
        assert rec["methods"]["cam"]["npy"] == f"{folder}/cam.npy"
        assert np.load(out / folder / "cam.npy").shape == tuple(rec["size"])
    assert summary["images"]["cat"]["source"] == str(images[-2])
    assert summary["images"]["cat-2"]["source"] == str(images[-1]) and summary["images"]["cat-2"]["size"] == [254, 380]
    assert summary["images"]["image"]["source"].endswith("/...png")


def test_an_image_named_like_the_summary_does_not_take_its_place(tmp_path, capsys):
    images = [_copy(SAMPLES / "cat.png", tmp_path / n) for n in ("summary.json.jpg", "summary.json.png")]
    out = tmp_path / "o"
    rc = main(["explain", *map(str, images), *FAST, "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    summary = _strict_json((out / "summary.json").read_text())
    assert set(summary["images"]) == {"summary.json-2", "summary.json-3"}
    assert all((out / f / "cam.npy").is_file() for f in summary["images"])


def test_non_empty_out_is_refused_up_front_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "summary.json").write_text("keep me")
    rc = main(["explain", str(SAMPLES / "cat.png"), *FAST, "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not empty" in err[0] and "--overwrite" in err[0]
    assert os.listdir(out) == ["summary.json"] and (out / "summary.json").read_text() == "keep me"
    # --overwrite: every image is done, even one whose stem is 'summary.json'
    named = _copy(SAMPLES / "cat.png", tmp_path / "summary.json.png")
    rc = main(["explain", str(named), str(SAMPLES / "robin.jpg"), *FAST, "--out", str(out), "--overwrite"])
    assert rc == 0
    summary = _strict_json((out / "summary.json").read_text())
    assert set(summary["images"]) == {"summary.json-2", "robin"}
    assert (out / "summary.json-2" / "cam.npy").exists() and (out / "robin" / "cam.npy").exists()


@pytest.mark.parametrize("where", ["read-only folder", "sysfs"])
def test_unwritable_out_is_one_line_exit_2(tmp_path, capsys, where):
    if where == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes in read-only folders")
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(0o555)
    else:
        if not Path("/sys/kernel").is_dir():
            pytest.skip("no sysfs")
        out = Path("/sys/cam-explorer-test-out")
    rc = main(["explain", str(SAMPLES / "cat.png"), *FAST, "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out") and "cannot write" in err[0]


def test_class_names_file_that_is_not_utf8_is_one_line_exit_2(tmp_path, capsys, checkpoints):
    names = tmp_path / "names.txt"
    names.write_bytes("chat\nchien\n".encode() + "été\n".encode("latin-1"))
    out = tmp_path / "o"
    rc = main(["explain", str(SAMPLES / "cat.png"), "--backbone", "resnet18", "--checkpoint", str(checkpoints["ok"]),
               "--class-names", str(names), "--methods", "cam", "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "names.txt" in err[0] and "UTF-8" in err[0]
    assert not out.exists()  # refused before any work, nothing left behind


def test_nan_checkpoint_is_reported_and_the_summary_stays_valid_json(tmp_path, capsys, checkpoints):
    out = tmp_path / "o"
    rc = main(["explain", str(SAMPLES / "cat.png"), "--backbone", "resnet18", "--checkpoint", str(checkpoints["nan"]),
               "--methods", "cam,gradcam", "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cat.png" in err[0] and "not finite" in err[0]
    summary = _strict_json((out / "summary.json").read_text())
    rec = summary["images"]["cat"]
    assert any("the model's output is not finite" in w for w in rec["warnings"])
    assert [p["probability"] for p in rec["top5"]] == [None, None, None]


def test_a_write_error_on_one_image_does_not_stop_the_batch(tmp_path, capsys, monkeypatch):
    real_save, calls = np.save, []

    def disk_full_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", disk_full_once)
    out = tmp_path / "o"
    rc = main(["explain", str(SAMPLES / "cat.png"), str(SAMPLES / "robin.jpg"), *FAST, "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cat.png" in err[0] and "No space left" in err[0]
    summary = _strict_json((out / "summary.json").read_text())
    assert set(summary["images"]) == {"robin"} and len(summary["errors"]) == 1
    assert np.load(out / "robin" / "cam.npy").shape == (254, 380)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no temporary file left


def test_a_summary_that_cannot_be_written_leaves_the_previous_one_whole(tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    out.mkdir()
    (out / "summary.json").write_text('{"previous": true}')
    real_replace = os.replace

    def fail_on_summary(src, dst, *args, **kwargs):
        if Path(dst).name == "summary.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", fail_on_summary)
    rc = main(["explain", str(SAMPLES / "cat.png"), *FAST, "--out", str(out), "--overwrite"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "summary.json" in err[0] and "No space left" in err[0]
    assert _strict_json((out / "summary.json").read_text()) == {"previous": True}
    assert sorted(os.listdir(out)) == ["cat", "summary.json"]  # no temporary file left


def test_an_internal_error_on_one_image_does_not_stop_the_batch(tmp_path, capsys, monkeypatch):
    import cam_core.cli as cli

    real_overlay, calls = cli.overlay, []

    def buggy_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real_overlay(*args, **kwargs)

    monkeypatch.setattr(cli, "overlay", buggy_once)
    out = tmp_path / "o"
    rc = main(["explain", str(SAMPLES / "cat.png"), str(SAMPLES / "robin.jpg"), *FAST, "--out", str(out)])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cat.png" in err[0] and "internal error" in err[0] and "RuntimeError: a bug" in err[0]
    summary = _strict_json((out / "summary.json").read_text())
    assert set(summary["images"]) == {"robin"} and "RuntimeError" in summary["errors"][0]["error"]


def test_input_size_reaches_the_maps_and_the_summary(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["explain", str(SAMPLES / "cat.png"), "--methods", "cam,gradcam", "--input-size", "2x",
                 "--out", str(out)]) == 0
    rec = json.loads((out / "summary.json").read_text())["images"]["cat"]
    assert rec["input_size"] == [448, 448]
    assert rec["methods"]["cam"]["grid"] == [14, 14] and rec["methods"]["gradcam"]["grid"] == [14, 14]
    assert len(rec["top5"]) == 5
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert main(["explain", str(SAMPLES / "cat.png"), "--backbone", "random:deit_tiny_patch16_224",
                 "--methods", "gradcam", "--input-size", "2x", "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "224 x 224 inputs only" in err[0] and not bad.exists()

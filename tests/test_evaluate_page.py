"""AppTest of the Evaluate page on a tiny generated testbed."""

import json
import math

import pytest
from helpers import ROOT
from streamlit.testing.v1 import AppTest

from cam_core.cli import main

APP = str(ROOT / "app.py")
N_IMAGES = 10  # 2 in the val split


def _evaluate_page(tmp_path, monkeypatch, n_images):
    """The app on the Evaluate page, its testbed (n_images) and caches under tmp_path."""
    monkeypatch.setenv("CAM_EXPLORER_TESTBED_DIR", str(tmp_path / "testbed"))
    monkeypatch.setenv("CAM_EXPLORER_TESTBED_N", str(n_images))
    monkeypatch.setenv("CAM_EXPLORER_EVAL_DIR", str(tmp_path / "eval"))
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    at.switch_page("pages/evaluate.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def page(tmp_path, monkeypatch):
    return _evaluate_page(tmp_path, monkeypatch, N_IMAGES)


def _run(at):
    at.button(key="ev_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_the_summary_is_the_clis_for_the_same_settings(page, tmp_path):
    assert (tmp_path / "testbed" / "ImageSets" / "Segmentation" / "val.txt").is_file()  # generated on first use
    assert page.selectbox(key="ev_backbone").value == "testbed-cnn"
    _run(page)
    table = page.dataframe[0].value
    out = tmp_path / "cli.csv"
    assert main(["evaluate", "--dataset", str(tmp_path / "testbed"), "--backbone", "testbed-cnn", "--methods",
                 "cam,gradcam", "--out", str(out)]) == 0
    cli = {s["method"]: s for s in json.loads(out.with_suffix(".json").read_text())}
    assert list(table.index) == ["cam", "gradcam"]
    for method, s in cli.items():
        for key in ("images", "seed_mIoU", "best_bg_threshold", "fg_precision", "fg_recall", "recall_body",
                    "gt_known_loc", "top1_loc", "energy_pointing_game", "pointing_game", "maxboxacc_v2", "pxap"):
            page_value = float(table.loc[method, key])
            assert page_value == pytest.approx(s[key]) or (math.isnan(page_value) and math.isnan(s[key])), key


def _cli_rows(tmp_path, methods="cam,gradcam"):
    import csv

    out = tmp_path / "cli.csv"
    assert main(["evaluate", "--dataset", str(tmp_path / "testbed"), "--backbone", "testbed-cnn", "--methods",
                 methods, "--out", str(out), "--restart"]) == 0
    with out.open() as f:
        return [r for r in csv.DictReader(f) if r["image"] != "TOTAL"]


def test_per_class_results_count_each_class_of_each_image(page, tmp_path):
    _run(page)
    table = page.dataframe[1].value
    from cam_core.voc import VOCDataset

    ds = VOCDataset(tmp_path / "testbed", "val")
    expected = {}
    for s in ds:
        for c in s.labels:
            expected[ds.class_names[c]] = expected.get(ds.class_names[c], 0) + 1
    for method in ("cam", "gradcam"):
        mine = table[table["method"] == method]
        assert dict(zip(mine["class"], mine["images"])) == expected
    assert set(table.columns) >= {"seed_IoU", "pointing_game", "energy_pointing_game"}


def test_the_gallery_is_worst_first_and_opens_the_compare_page(page, tmp_path):
    page.multiselect(key="ev_methods").set_value(["gradcam"]).run()
    _run(page)
    cli = sorted(_cli_rows(tmp_path, "gradcam"), key=lambda r: float(r["mIoU_at_best_t"]))
    tiles = [c.value for c in page.caption if c.value.startswith("tb_")]
    assert [t.split(" · ")[0] for t in tiles] == [r["image"] for r in cli]  # worst first, as the CLI's CSV
    first = cli[0]["image"]
    page.button(key="ev_open_0").click().run()
    assert not page.exception, [e.value for e in page.exception]
    assert page.session_state["image_path"].endswith(f"JPEGImages/{first}.jpg")
    assert page.selectbox(key="backbone_choice").value == "testbed-cnn"
    assert page.multiselect(key="methods").value == ["gradcam"]
    shown_class = tiles[0].split(" · ")[1]
    assert any(c.value.startswith(f"{first}.jpg") for c in page.sidebar.caption)
    assert any(c.value.startswith(shown_class + " · ") for c in page.caption)  # the tile explains that class
    assert any(c.value.startswith("Outlined in green: mask + ") and c.value.endswith(f"(testbed ({shown_class}))")
               or c.value.endswith(f"from testbed ({shown_class})") for c in page.caption)  # that class's mask
    page.switch_page("pages/evaluate.py").run()
    assert page.multiselect(key="ev_methods").value == ["gradcam"]  # the page's choices are kept
    assert page.dataframe[0].value.index.tolist() == ["gradcam"]  # and its results


def test_a_second_run_resumes_from_the_disk(page, tmp_path):
    page.number_input(key="ev_limit").set_value(1).run()
    _run(page)
    assert page.dataframe[0].value.loc["cam", "images"] == 1
    page.number_input(key="ev_limit").set_value(0).run()
    assert any("2 images · cached on disk: cam 1, gradcam 1" in c.value for c in page.caption)
    _run(page)
    assert page.dataframe[0].value.loc["cam", "images"] == 2
    files = sorted((tmp_path / "eval").glob("*.rows.jsonl"))
    # one file per method; a header and one row per image: the first image was not computed again
    assert len(files) == 2 and [len(f.read_text().splitlines()) for f in files] == [3, 3]


def test_a_folder_outside_the_allowed_ones_and_a_backbone_of_other_classes_are_messages(page):
    page.radio(key="ev_kind").set_value("VOC-layout folder").run()
    page.text_input(key="ev_folder").set_value("/etc").run()
    assert any("outside the allowed folders" in e.value for e in page.error)
    page.radio(key="ev_kind").set_value("Testbed (val split, generated on first use)").run()
    page.selectbox(key="ev_backbone").set_value("random:resnet18").run()
    assert any("1000 classes, the dataset 8" in e.value for e in page.error)
    assert not page.exception


@pytest.mark.slow
def test_an_image_folder_gives_faithfulness_only(page, tmp_path, monkeypatch):
    import shutil

    from helpers import SAMPLES

    from cam_core import Explainer, load_backbone, load_image
    from cam_core.metrics import deletion

    folder = tmp_path / "imgs" / "pets"
    folder.mkdir(parents=True)
    for name in ("cat.png", "dog.jpg"):
        shutil.copy(SAMPLES / name, folder / name)
    monkeypatch.setenv("CAM_EXPLORER_IMAGE_DIRS", str(tmp_path / "imgs"))
    page.radio(key="ev_kind").set_value("Image folder (no ground truth: faithfulness only)").run()
    page.text_input(key="ev_folder").set_value("pets").run()
    page.multiselect(key="ev_methods").set_value(["cam"]).run()
    page.multiselect(key="ev_metrics_folder").set_value(["deletion"]).run()
    _run(page)
    table = page.dataframe[0].value
    assert list(table.columns) == ["images", "deletion", "seconds_per_image"] and len(page.dataframe) == 1
    ex = Explainer(load_backbone("testbed-cnn"))
    aucs = {}
    for name in ("cat.png", "dog.jpg"):
        image = load_image(folder / name)
        fwd = ex.forward(image)
        t = int(fwd.probs.argmax())
        aucs[name] = deletion(fwd.backbone.model, fwd.input, ex.compute(image, "cam", t).map, t).auc
    assert table.loc["cam", "deletion"] == pytest.approx(sum(aucs.values()) / 2, abs=1e-4)
    tiles = [c.value.split(" · ")[0] for c in page.caption if " · deletion " in c.value]
    assert tiles == sorted(aucs, key=aucs.get, reverse=True)  # deletion: the highest AUC is the worst
    page.button(key="ev_open_0").click().run()
    assert not page.exception and page.session_state["image_path"] == str(folder / tiles[0])
    assert any(c.value.startswith(tiles[0]) for c in page.sidebar.caption)


@pytest.mark.slow
def test_the_sidebars_backbone_can_be_evaluated(page):
    _run(page)
    direct = page.dataframe[0].value
    page.selectbox(key="backbone_choice").set_value("testbed-cnn").run()  # the sidebar's, e.g. a checkpoint
    page.selectbox(key="ev_backbone").set_value("the sidebar's backbone").run()
    _run(page)
    assert page.dataframe[0].value.drop(columns="seconds_per_image").equals(direct.drop(columns="seconds_per_image"))
    page.button(key="ev_open_0").click().run()
    assert not page.exception and page.selectbox(key="backbone_choice").value == "testbed-cnn"


def _summary_equals_clis(table, cli_json, keys=("images", "seed_mIoU", "best_bg_threshold", "fg_precision",
                                                "fg_recall", "recall_body", "gt_known_loc", "top1_loc",
                                                "energy_pointing_game", "pointing_game", "maxboxacc_v2", "pxap")):
    cli = {s["method"]: s for s in json.loads(cli_json.read_text())}
    assert list(table.index) == list(cli)
    for method, s in cli.items():
        for key in keys:
            page_value = float(table.loc[method, key])
            assert page_value == pytest.approx(s[key]) or (math.isnan(page_value) and math.isnan(s[key])), key


def test_lpcam_reads_the_clis_bank_and_gives_the_clis_row(page, tmp_path, capsys):
    from cam_core.voc import VOCDataset

    page.multiselect(key="ev_methods").set_value(["cam", "lpcam"]).run()
    assert any("lpcam (known once its bank is loaded)" in c.value for c in page.caption)
    _run(page)
    n_train = len(VOCDataset(tmp_path / "testbed", "train"))
    line = next(c.value for c in page.caption if c.value.startswith("LPCAM's bank: "))
    assert line.startswith(f"LPCAM's bank: testbed/train: {n_train} images") and "--bank-from train" in line
    capsys.readouterr()
    out = tmp_path / "cli.csv"
    assert main(["evaluate", "--dataset", str(tmp_path / "testbed"), "--backbone", "testbed-cnn", "--methods",
                 "cam,lpcam", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"LPCAM bank: testbed/train: {n_train} images" in err and "(loaded from the cache: " in err  # the page's
    _summary_equals_clis(page.dataframe[0].value, out.with_suffix(".json"))
    cli_rows = [json.loads(r) for r in out.with_name("cli.rows.jsonl").read_text().splitlines()[1:]]
    page_rows = page.session_state["ev_result"]["rows"]
    assert {r["params"]["bank"] for r in cli_rows if r["method"] == "lpcam"} == \
        {r["params"]["bank"] for r in page_rows if r["method"] == "lpcam"} != {"image"}
    page.run()
    assert any("2 images · cached on disk: cam 2, lpcam 2" in c.value for c in page.caption)


@pytest.fixture
def page15(tmp_path, monkeypatch):
    """The page on a testbed of 15 images (3 in the val split)."""
    return _evaluate_page(tmp_path, monkeypatch, 15)


def test_a_stopped_run_keeps_its_images_and_the_next_run_resumes(page15, tmp_path, monkeypatch):
    import cam_core.evaluate
    import ui.common

    computed = []
    evaluate_image = cam_core.evaluate.evaluate_image

    def counting(explainer, sample, *args, **kwargs):
        computed.append(sample.id)
        return evaluate_image(explainer, sample, *args, **kwargs)

    monkeypatch.setattr(cam_core.evaluate, "evaluate_image", counting)
    # The sidebar's Stop, as the page sees it, once the first image is done
    monkeypatch.setattr(ui.common, "stop_all_requested", lambda: len(computed) >= 1)
    _run(page15)
    assert any(w.value.startswith("Stopped. The finished images are cached") for w in page15.warning)
    assert computed == [computed[0]] and not page15.dataframe  # no summary of a partial run
    files = sorted((tmp_path / "eval").glob("*.rows.jsonl"))
    assert [len(f.read_text().splitlines()) for f in files] == [2, 2]  # a header and the first image's row
    page15.run()
    assert any("3 images · cached on disk: cam 1, gradcam 1" in c.value for c in page15.caption)

    monkeypatch.setattr(ui.common, "stop_all_requested", lambda: False)
    _run(page15)
    assert len(computed) == 3 and len(set(computed)) == 3  # only the two images left were computed
    resumed = page15.dataframe[0].value
    assert resumed.loc["cam", "images"] == 3

    monkeypatch.setenv("CAM_EXPLORER_EVAL_DIR", str(tmp_path / "eval2"))  # an uninterrupted run, from nothing
    page15.run()
    _run(page15)
    assert len(computed) == 6
    assert resumed.drop(columns="seconds_per_image").equals(page15.dataframe[0].value.drop(columns="seconds_per_image"))


def test_two_checkpoints_of_one_file_name_do_not_share_cached_results(page, tmp_path, monkeypatch):
    import timm
    import torch
    from safetensors.torch import save_file

    from cam_core import Explainer, load_backbone
    from cam_core.evaluate import evaluate
    from cam_core.voc import VOCDataset

    for folder, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        model = timm.create_model("resnet18", num_classes=8)
        (tmp_path / "ckpts" / folder).mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(tmp_path / "ckpts" / folder / "model.safetensors"))
    monkeypatch.setenv("CAM_EXPLORER_IMAGE_DIRS", str(tmp_path / "ckpts"))
    page.selectbox(key="backbone_choice").set_value("local checkpoint…").run()
    page.text_input(key="ckpt_arch").set_value("resnet18").run()
    page.text_input(key="ckpt_path").set_value("a/model.safetensors").run()
    page.selectbox(key="ev_backbone").set_value("the sidebar's backbone").run()
    _run(page)
    first = page.dataframe[0].value
    page.text_input(key="ckpt_path").set_value("b/model.safetensors").run()  # the same name, other weights
    assert page.session_state["selection"].backbone.name == "resnet18@model.safetensors"
    assert any("2 images · cached on disk: cam 0, gradcam 0" in c.value for c in page.caption)
    _run(page)
    second = page.dataframe[0].value
    ds = VOCDataset(tmp_path / "testbed", "val")
    direct = evaluate(ds, Explainer(load_backbone("resnet18", checkpoint=str(tmp_path / "ckpts" / "b" / "model.safetensors"))),
                      ["cam", "gradcam"])
    for s in direct:
        for key in ("seed_mIoU", "fg_precision", "fg_recall", "energy_pointing_game", "pointing_game", "pxap"):
            assert float(second.loc[s["method"], key]) == pytest.approx(s[key]), key
    assert not first.drop(columns="seconds_per_image").equals(second.drop(columns="seconds_per_image"))

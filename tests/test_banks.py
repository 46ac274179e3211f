"""Dataset-level prototype banks (cam_core.banks): a backbone's declared dataset builds LPCAM's
default bank on first use; it is cached on disk and rebuilt when the weights or the data change."""

import json
import threading

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from cam_core import Cancelled, Explainer
from cam_core.backbones import load_testbed, register_backbone
from cam_core.backbones.registry import BACKBONES
from cam_core.banks import cache_dir, split_bank
from cam_core.cli import main
from cam_core.testbed.generate import CLASSES
from cam_core.testbed.models import build_model
from cam_core.voc import VOCDataset

TINY = {"layers": [1, 1, 1, 1], "channels": [8, 8, 8, 16], "stem_width": 8, "output_stride": 8}
DATA = {"n": 12, "seed": 3, "train": 9, "val": 3}


def _write_model(prefix, seed=0):
    """A tiny untrained testbed CNN with its card, as `testbed train` writes them; its card names
    the generator run of its (here: tiny) training data."""
    torch.manual_seed(seed)
    model = build_model("cnn", len(CLASSES), TINY)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(prefix.with_suffix(".safetensors")))
    card = {"arch": "cnn", "config": TINY, "classes": list(CLASSES), "input_size": 64, "mean": [0.5] * 3,
            "std": [0.5] * 3, "data": DATA, "training": {"epochs": 0}, "val": {}}
    prefix.with_suffix(".json").write_text(json.dumps(card))
    return prefix


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAM_EXPLORER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def tiny(tmp_path):
    return _write_model(tmp_path / "tiny-cnn")


def _data_root():
    return next((cache_dir() / "datasets").iterdir())


def _cached_banks():
    folder = cache_dir() / "banks"
    return sorted(folder.glob("*.safetensors")) if folder.is_dir() else []


def _val_image():
    return VOCDataset(_data_root(), "val")[0].image()


def test_first_use_builds_and_caches_the_next_loads(cache, tiny):
    ex = Explainer(load_testbed(tiny))
    calls = []
    bank = ex.default_bank(progress=lambda done, total: calls.append((done, total)))
    assert ex.stats["bank_builds"] == 1 and ex.stats["bank_loads"] == 0
    # the train split of the card's generator run (12 images, 9 train), generated into the cache
    assert bank.n_images == DATA["train"] and "n 12, seed 3" in bank.name
    assert len(VOCDataset(_data_root(), "train")) == DATA["train"]
    assert calls[-1] == (DATA["train"], DATA["train"])  # the build's progress, per image
    assert len(_cached_banks()) == 1 and str(cache) in str(_cached_banks()[0])
    assert ex.default_bank() is bank and ex.stats["bank_builds"] == 1  # once per Explainer

    again = Explainer(load_testbed(tiny))  # a new process would start here
    loaded = again.default_bank()
    assert again.stats["bank_builds"] == 0 and again.stats["bank_loads"] == 1
    assert loaded.key == bank.key
    for c in bank.classes:
        torch.testing.assert_close(loaded.classes[c].features, bank.classes[c].features)


def test_lpcam_uses_the_dataset_bank_by_default_and_the_image_when_asked(cache, tiny):
    ex = Explainer(load_testbed(tiny))
    bank = Explainer(load_testbed(tiny)).default_bank()  # generates the data: an image to explain
    image = _val_image()
    target = min(bank.classes)
    res = ex.compute(image, "lpcam", target, params={"multiscale": False})
    assert res.label == "LPCAM" and not res.approximate
    assert ex.stats["bank_loads"] == 1  # the compute found the cached bank
    assert res.extras["bank"] == bank.name and res.extras["bank_images"] == bank.n_images == DATA["train"]
    assert f"bank: {bank.name} ({DATA['train']} images" in res.note
    own = ex.compute(image, "lpcam", target, params={"multiscale": False, "source": "image"})
    assert own.label == "LPCAM (this image's pixels)" and own.approximate and own.extras["bank_images"] == 1
    assert not torch.equal(own.map, res.map)


def test_a_changed_weight_or_data_file_rebuilds(cache, tiny):
    Explainer(load_testbed(tiny)).default_bank()
    first = _cached_banks()
    _write_model(tiny, seed=1)  # new weights in the same file
    ex = Explainer(load_testbed(tiny))
    ex.default_bank()
    assert ex.stats["bank_builds"] == 1
    assert len(_cached_banks()) == 1 and _cached_banks() != first  # the old key's file is replaced

    train = VOCDataset(_data_root(), "train")[0]
    Image.new("RGB", (128, 128), (10, 200, 30)).save(train.image_path)  # one image of the data changes
    ex = Explainer(load_testbed(tiny))
    ex.default_bank()
    assert ex.stats["bank_builds"] == 1

    ex = Explainer(load_testbed(tiny))  # nothing changed since: loaded
    ex.default_bank()
    assert ex.stats["bank_builds"] == 0 and ex.stats["bank_loads"] == 1


def test_a_corrupt_cache_file_is_rebuilt_with_a_warning(cache, tiny):
    built = Explainer(load_testbed(tiny)).default_bank()
    (path,) = _cached_banks()
    path.write_bytes(path.read_bytes()[:1000])  # cut short
    ex = Explainer(load_testbed(tiny))
    with pytest.warns(RuntimeWarning, match="cannot be used.*rebuilding"):
        bank = ex.default_bank()
    assert ex.stats["bank_builds"] == 1 and bank.key == built.key
    ex = Explainer(load_testbed(tiny))
    ex.default_bank()
    assert ex.stats["bank_loads"] == 1  # the rebuilt file is good


def test_a_cancelled_build_caches_nothing_and_the_next_use_builds(cache, tiny):
    ex = Explainer(load_testbed(tiny))
    with pytest.raises(Cancelled):
        ex.default_bank(cancel=lambda: True)
    assert _cached_banks() == []
    assert ex.default_bank().n_images == DATA["train"] and ex.stats["bank_builds"] == 1


def test_concurrent_first_uses_build_once(cache, tiny):
    ex = Explainer(load_testbed(tiny))
    banks = []
    threads = [threading.Thread(target=lambda: banks.append(ex.default_bank())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ex.stats["bank_builds"] == 1 and len({id(b) for b in banks}) == 1


def test_a_backbone_without_a_dataset_keeps_the_image_bank(resnet18, cat):
    ex = Explainer(resnet18)
    assert resnet18.default_bank is None and ex.default_bank() is None
    res = ex.compute(cat, "lpcam", params={"multiscale": False})
    assert res.label == "LPCAM (this image's pixels)" and res.approximate


def test_cli_names_the_bank_in_summary_json(cache, tiny, tmp_path, capsys):
    register_backbone("tiny-testbed-bank", "test", lambda: load_testbed(tiny))
    try:
        Explainer(load_testbed(tiny)).default_bank()  # generates the data (an image to explain)
        image = VOCDataset(_data_root(), "val")[0].image_path
        out = tmp_path / "out"
        assert main(["explain", str(image), "--backbone", "tiny-testbed-bank", "--methods", "cam,lpcam",
                     "--param", "lpcam.multiscale=false", "--param", "lpcam.k=4", "--out", str(out)]) == 0
        assert "LPCAM bank: testbed train split (n 12, seed 3): 9 images" in capsys.readouterr().err
        summary = json.loads((out / "summary.json").read_text())
        assert summary["bank"].startswith("testbed train split (n 12, seed 3): 9 images")
        (record,) = summary["images"].values()
        assert record["methods"]["lpcam"]["bank"] == {"name": "testbed train split (n 12, seed 3)", "images": 9}
        assert record["methods"]["lpcam"]["label"] == "LPCAM" and "bank" not in record["methods"]["cam"]

        out2 = tmp_path / "out2"
        assert main(["explain", str(image), "--backbone", "tiny-testbed-bank", "--methods", "lpcam",
                     "--param", "lpcam.source=image", "--param", "lpcam.k=4", "--out", str(out2)]) == 0
        summary = json.loads((out2 / "summary.json").read_text())
        (record,) = summary["images"].values()
        assert summary["bank"] is None
        assert record["methods"]["lpcam"]["label"] == "LPCAM (this image's pixels)"
        assert record["methods"]["lpcam"]["bank"] == {"name": "this image's pixels", "images": 1}
    finally:
        BACKBONES.pop("tiny-testbed-bank")


def test_evaluate_names_the_dataset_bank_in_its_rows(cache, tiny):
    from cam_core.evaluate import evaluate

    ex = Explainer(load_testbed(tiny))
    bank = ex.default_bank()
    rows = []
    evaluate(VOCDataset(_data_root(), "val"), Explainer(load_testbed(tiny)), ["lpcam"],
             {"lpcam": {"multiscale": False, "k": 4}}, limit=1, rows_out=rows)
    assert rows[0]["params"]["bank"] == bank.key
    rows = []
    evaluate(VOCDataset(_data_root(), "val"), ex, ["lpcam"], {"lpcam": {"multiscale": False, "k": 4, "source": "image"}},
             limit=1, rows_out=rows)
    assert rows[0]["params"]["bank"] == "image"


def test_feature_space_page_uses_the_dataset_bank(cache, tiny):
    from helpers import ROOT
    from streamlit.testing.v1 import AppTest

    register_backbone("tiny-testbed-page", "test", lambda: load_testbed(tiny))
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240)
        at.run()
        at.switch_page("pages/feature_space.py").run()
        at.selectbox(key="backbone_choice").set_value("tiny-testbed-page").run()
        at.slider(key="fs_lp_k").set_value(2).run()  # an untrained model: few foreground pixels per class
        assert not at.exception, [e.value for e in at.exception]
        ex = at.session_state["selection"].explainer
        assert ex.stats["bank_builds"] == 1
        bank = ex.default_bank()
        assert at.session_state["lpcam_bank"] is bank  # the Compare page's LPCAM uses it too
        assert f"LPCAM's bank: {bank.describe(ex.backbone.short_name)}" in [c.value for c in at.caption]
        lp_caption = next(c.value for c in at.caption if c.value.startswith("LPCAM: "))
        assert f"bank: {bank.name} (9 images" in lp_caption
        assert not at.toggle(key="fs_use_bank").disabled  # its bank pixels can join the plot

        at.selectbox(key="fs_lp_source").set_value("image").run()
        lp_caption = next(c.value for c in at.caption if c.value.startswith("LPCAM: "))
        assert "bank: this image's pixels" in lp_caption and ex.stats["bank_builds"] == 1
    finally:
        BACKBONES.pop("tiny-testbed-page")


def test_warm_up_leaves_the_dataset_bank_to_the_first_real_use(cache, tiny):
    ex = Explainer(load_testbed(tiny))
    ex.warm_up()
    assert _cached_banks() == []  # nothing built silently while the backbone loads
    ex.default_bank()
    assert ex.stats["bank_builds"] == 1


def test_evaluate_bank_from_a_split_is_cached_and_named(cache, tiny, tmp_path, capsys):
    """`cam_core evaluate --bank-from train` (the default) builds LPCAM's bank through the disk
    cache: the first run builds and caches it, the next loads it, and both rows name one bank."""
    from cam_core.testbed.generate import generate

    register_backbone("tiny-testbed-eval", "test", lambda: load_testbed(tiny))
    try:
        root = tmp_path / "tb"
        generate(root, n=12, seed=3)
        args = ["evaluate", "--dataset", str(root), "--backbone", "tiny-testbed-eval", "--methods", "lpcam",
                "--param", "lpcam.multiscale=false", "--param", "lpcam.k=2", "--limit", "1"]
        assert main([*args, "--out", str(tmp_path / "a.csv")]) == 0
        err = capsys.readouterr().err
        n_train = len(VOCDataset(root, "train"))
        assert f"LPCAM bank: tb/train: {n_train} images" in err and "(built and cached: " in err
        (path,) = _cached_banks()
        assert "-tb-" in path.name and str(cache) in str(path)
        assert main([*args, "--out", str(tmp_path / "b.csv")]) == 0
        assert f"(loaded from the cache: {path})" in capsys.readouterr().err
        rows = [json.loads(p.read_text().splitlines()[1]) for p in (tmp_path / "a.rows.jsonl", tmp_path / "b.rows.jsonl")]
        bank = Explainer(load_testbed(tiny)).dataset_bank(split_bank(root)).bank
        assert rows[0]["params"]["bank"] == rows[1]["params"]["bank"] == bank.key
        assert rows[0]["params"] == rows[1]["params"] and rows[0]["stats"] == rows[1]["stats"]
    finally:
        BACKBONES.pop("tiny-testbed-eval")


def test_faithfulness_rows_name_the_dataset_bank_lpcam_read(cache, tiny, tmp_path):
    """On an image folder (no ground truth), LPCAM reads the backbone's dataset bank, and its
    rows say so (they said 'image' while the map came from the bank)."""
    import shutil

    from cam_core.evaluate import ImageFolder, evaluate_faithfulness

    ex = Explainer(load_testbed(tiny))
    bank = ex.default_bank()  # generates the data: images for the folder
    (tmp_path / "imgs").mkdir()
    shutil.copy(VOCDataset(_data_root(), "val")[0].image_path, tmp_path / "imgs" / "a.jpg")
    rows = []
    evaluate_faithfulness(ImageFolder(tmp_path / "imgs"), ex, ["lpcam"], {"lpcam": {"multiscale": False, "k": 2}},
                          metrics=["average_drop"], rows_out=rows)
    assert rows[0]["params"]["bank"] == bank.key

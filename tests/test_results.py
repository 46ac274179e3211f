"""Reading evaluation results: the disk cache, per-class tables, failures worst-first, disagreements."""

import json

import numpy as np
import pytest

from cam_core import Explainer, load_backbone
from cam_core.evaluate import evaluate
from cam_core.metrics import pointing_game
from cam_core.render import to_image_map
from cam_core.results import (
    ResultCache,
    dataset_key,
    disagreements,
    per_class,
    rank_failures,
    shown_class,
)
from cam_core.testbed.generate import generate
from cam_core.voc import VOCDataset


@pytest.fixture(scope="module")
def testbed(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb") / "testbed"
    generate(root, n=10, seed=2)
    return root


@pytest.fixture(scope="module")
def explainer():
    return Explainer(load_backbone("testbed-cnn"))


def _row(image, method, **values):
    return {"image": image, "method": method, **values}


def test_failures_worst_first_in_the_metrics_direction():
    rows = [_row("a", "cam", pointing_game=1.0, deletion=0.1), _row("b", "cam", pointing_game=0.0, deletion=0.5),
            _row("c", "cam", pointing_game=0.5, deletion=None), _row("d", "cam", pointing_game=0.0, deletion=0.3),
            _row("a", "gradcam", pointing_game=0.0, deletion=0.9)]
    assert [r["image"] for r in rank_failures(rows, "cam", "pointing_game")] == ["b", "d", "c", "a"]
    assert [r["image"] for r in rank_failures(rows, "cam", "deletion")] == ["b", "d", "a"]  # lower is better
    assert [r["image"] for r in rank_failures(rows, "cam", "pointing_game", k=1)] == ["b"]
    with pytest.raises(ValueError, match="unknown metric"):
        rank_failures(rows, "cam", "accuracy")


def test_where_two_methods_disagree_most():
    rows = [_row("a", "cam", mIoU_at_best_t=0.5), _row("a", "gradcam", mIoU_at_best_t=0.4),
            _row("b", "cam", mIoU_at_best_t=0.1), _row("b", "gradcam", mIoU_at_best_t=0.9),
            _row("c", "cam", mIoU_at_best_t=0.2), _row("d", "gradcam", mIoU_at_best_t=0.0)]
    found = disagreements(rows, "cam", "gradcam", "mIoU_at_best_t")
    assert [(d["image"], round(d["gap"], 6)) for d in found] == [("b", 0.8), ("a", 0.1)]
    assert found[0]["a"]["method"] == "cam" and found[0]["b"]["method"] == "gradcam"


def test_per_class_from_constructed_rows():
    stats = lambda labels, pointing, energy: {"labels": labels, "pointing": pointing, "energy": energy}
    rows = [_row("a", "cam", stats=stats([0, 2], [1, 0], [0.8, 0.2])), _row("b", "cam", stats=stats([0], [0], [0.4])),
            _row("a", "gradcam", stats=stats([0, 2], [1, 1], [])),  # energy missing for a class: left out
            ]
    summaries = [{"method": "cam", "per_class_IoU": {"x": 0.5, "z": 0.25}}, {"method": "gradcam", "per_class_IoU": {}}]
    table = per_class(rows, summaries, ["x", "y", "z"])
    assert table[0] == {"method": "cam", "class": "x", "images": 2, "seed_IoU": 0.5, "pointing_game": 0.5,
                        "energy_pointing_game": 0.6}
    assert table[1] == {"method": "cam", "class": "z", "images": 1, "seed_IoU": 0.25, "pointing_game": 0.0,
                        "energy_pointing_game": 0.2}
    assert [(t["method"], t["class"], t["pointing_game"]) for t in table[2:]] == [("gradcam", "x", 1.0),
                                                                                  ("gradcam", "z", 1.0)]
    assert np.isnan(table[2]["energy_pointing_game"]) and np.isnan(table[2]["seed_IoU"])


def test_the_cache_serves_a_second_run_and_keys_by_method_parameters_and_layer(testbed, explainer, tmp_path):
    ds = VOCDataset(testbed, "val")
    key = dataset_key(ds)
    bb = explainer.backbone

    def run():
        cache = ResultCache(tmp_path, key, bb, "features", ["cam", "gradcam"])
        rows: list = []
        summaries = evaluate(ds, explainer, ["cam", "gradcam"], rows_out=rows, store=cache, layer="features")
        return summaries, rows, cache

    explainer.clear()
    first, rows, cache = run()
    assert cache.cached_images() == {"cam": len(ds), "gradcam": len(ds)}
    maps = explainer.stats["maps"]
    explainer.clear()
    again, rows_again, _ = run()
    assert explainer.stats["maps"] == maps  # all from the disk
    assert json.dumps(again) == json.dumps(first) and json.dumps(rows_again) == json.dumps(rows)  # NaN == NaN
    same = ResultCache(tmp_path, key, bb, "features", ["cam", "sipe"], {"sipe": {"bg_factor": 0.5}})
    other = ResultCache(tmp_path, key, bb, "features", ["cam", "sipe"], {"sipe": {"bg_factor": 0.3}})
    assert same.stores["sipe"].path == ResultCache(tmp_path, key, bb, "features", ["sipe"]).stores["sipe"].path
    assert other.stores["sipe"].path != same.stores["sipe"].path  # other parameters, other file
    assert other.stores["cam"].path == cache.stores["cam"].path
    layer_cache = ResultCache(tmp_path, key, bb, "layer3", ["cam"])
    assert layer_cache.cached_images() == {"cam": 0} and layer_cache.stores["cam"].path != cache.stores["cam"].path
    assert ResultCache(tmp_path, dataset_key(VOCDataset(testbed, "train")), bb, "features", ["cam"]
                       ).cached_images() == {"cam": 0}


def test_evaluate_reads_the_layer_it_is_given(testbed, explainer):
    ds = VOCDataset(testbed, "val")
    rows: list = []
    evaluate(ds, explainer, ["gradcam"], rows_out=rows, layer="layer3", keep_stats=True)
    for sample, row in zip(ds, rows):
        image = sample.image()
        hits = []
        for c in sample.labels:
            m = to_image_map(explainer.compute(image, "gradcam", c, "layer3").map, image.size, "minmax")
            hits.append(int(pointing_game(m, sample.mask == c + 1)))
        assert row["stats"]["pointing"] == hits and row["stats"]["labels"] == sample.labels


def test_the_class_a_failure_tile_shows():
    row = {"top1": "y", "stats": {"labels": [0, 2], "energy": [0.7, 0.3]}}
    assert shown_class(row, "deletion", ["x", "y", "z"]) == 1  # the map faithfulness scored: top-1
    assert shown_class(row, "pointing_game", ["x", "y", "z"]) == 2  # least energy inside its boxes
    row["stats"]["energy"] = [0.7]
    assert shown_class(row, "energy_pointing_game", ["x", "y", "z"]) == 0


def test_faithfulness_only_on_a_folder_resumes_from_its_store(tmp_path):
    import shutil

    from helpers import SAMPLES, toy_backbone

    from cam_core.evaluate import ImageFolder, RowStore, evaluate_faithfulness
    from cam_core.images import load_image
    from cam_core.metrics import deletion, insertion

    (tmp_path / "imgs" / "b").mkdir(parents=True)
    shutil.copy(SAMPLES / "cat.png", tmp_path / "imgs" / "cat.png")
    shutil.copy(SAMPLES / "dog.jpg", tmp_path / "imgs" / "b" / "dog.jpg")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    explainer = Explainer(toy_backbone())  # 32 x 32: a deletion game is 33 tiny forwards
    folder = ImageFolder(tmp_path / "imgs")
    assert folder.ids == ["b/dog.jpg", "cat.png"]
    store = RowStore(tmp_path / "rows.jsonl", {"dataset": "imgs"})
    rows: list = []
    summaries = evaluate_faithfulness(folder, explainer, ["gradcam"], metrics=["deletion", "insertion"],
                                      rows_out=rows, store=store)
    for row in rows:
        image = load_image(tmp_path / "imgs" / row["image"])
        fwd = explainer.forward(image)
        t = int(fwd.probs.argmax())
        m = explainer.compute(image, "gradcam", t).map
        assert row["top1"] == explainer.backbone.class_names[t]
        assert row["deletion"] == pytest.approx(deletion(fwd.backbone.model, fwd.input, m, t).auc)
        assert row["insertion"] == pytest.approx(insertion(fwd.backbone.model, fwd.input, m, t).auc)
    assert summaries[0]["deletion"] == pytest.approx(np.mean([r["deletion"] for r in rows]), abs=1e-4)
    lines = len(store.path.read_text().splitlines())
    again = evaluate_faithfulness(folder, explainer, ["gradcam"], metrics=["deletion"], store=store)
    assert again[0]["deletion"] == summaries[0]["deletion"] and len(store.path.read_text().splitlines()) == lines
    with pytest.raises(ValueError, match="at least one faithfulness metric"):
        evaluate_faithfulness(folder, explainer, ["gradcam"], metrics=[])


def test_the_cache_is_keyed_by_the_weights_not_only_the_name(testbed, tmp_path):
    """Two checkpoints of one file name have one backbone name: their rows never mix."""
    import torch

    from cam_core.backbones.sources.testbed import TESTBED_DIR, load_testbed

    ds = VOCDataset(testbed, "val")
    key = dataset_key(ds)
    a, same = load_testbed(TESTBED_DIR / "testbed-cnn"), load_testbed(TESTBED_DIR / "testbed-cnn")
    b = load_testbed(TESTBED_DIR / "testbed-cnn")
    with torch.no_grad():
        next(b.model.parameters()).mul_(0.5)  # other weights under the same name
    assert a.name == b.name
    cache_a = ResultCache(tmp_path, key, a, "features", ["cam"])
    evaluate(ds, Explainer(a), ["cam"], store=cache_a, layer="features")
    assert cache_a.cached_images() == {"cam": len(ds)}
    assert ResultCache(tmp_path, key, same, "features", ["cam"]).cached_images() == {"cam": len(ds)}
    cache_b = ResultCache(tmp_path, key, b, "features", ["cam"])
    assert cache_b.cached_images() == {"cam": 0} and cache_b.stores["cam"].path != cache_a.stores["cam"].path

"""Ground truth found next to an image, read from a file or typed; the agreement of maps."""

import json

import numpy as np
import pytest
from helpers import SAMPLES
from PIL import Image

from cam_core.groundtruth import (
    GroundTruth,
    GroundTruthError,
    find_ground_truth,
    ground_truth_scores,
    outline,
    parse_box,
    read_mask,
)
from cam_core.images import load_image
from cam_core.metrics import agreement
from cam_core.testbed.generate import generate
from cam_core.voc import VOCDataset


def test_the_bundled_quokka_and_plant_masks_are_found():
    quokka = load_image(SAMPLES / "quokka.jpg")
    gt = find_ground_truth(SAMPLES / "quokka.jpg", quokka.size)
    expected = np.asarray(Image.open(SAMPLES / "masks" / "quokka_mask.png")) > 0
    assert np.array_equal(gt.mask, expected)
    assert gt.boxes == ((148, 50, 550, 642),)  # quokka_annotations.json, imgaug's format
    plant = load_image(SAMPLES / "plant.jpg")
    gt = find_ground_truth(SAMPLES / "plant.jpg", plant.size)
    assert gt.mask.shape == plant.size and gt.mask.any() and gt.boxes == ()
    assert find_ground_truth(SAMPLES / "cat.png", load_image(SAMPLES / "cat.png").size) is None


def test_a_mask_and_boxes_next_to_an_image(tmp_path):
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "pic.png")
    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:7] = 200
    Image.fromarray(mask).save(tmp_path / "pic_mask.png")
    (tmp_path / "pic_annotations.json").write_text(json.dumps(
        {"bounding_boxes": [{"x1": 3, "y1": 2, "x2": 6.4, "y2": 4, "label": "x"}, {"x1": 0, "y1": 0, "x2": 1, "y2": 1}]}))
    gt = find_ground_truth(tmp_path / "pic.png", (10, 12))
    assert np.array_equal(gt.mask, mask > 0) and gt.boxes == ((3, 2, 6, 4), (0, 0, 1, 1))
    assert np.array_equal(gt.region, mask > 0)
    with pytest.raises(GroundTruthError, match="12 x 10 pixels, the image 13 x 10"):
        find_ground_truth(tmp_path / "pic.png", (10, 13))
    half = find_ground_truth(tmp_path / "pic.png", (5, 6))  # the picture's downscaled working copy
    assert np.array_equal(half.mask, (mask > 0)[::2, ::2]) and half.boxes == ((2, 1, 3, 2), (0, 0, 0, 0))
    (tmp_path / "pic_annotations.json").write_text("{}")
    with pytest.raises(GroundTruthError, match="bounding_boxes"):
        find_ground_truth(tmp_path / "pic.png", (10, 12))


def test_read_mask_and_parse_box_refuse_what_cannot_be_used(tmp_path):
    with pytest.raises(GroundTruthError, match="cannot read it as an image"):
        read_mask(b"not an image")
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(empty)
    with pytest.raises(GroundTruthError, match="no object pixel"):
        read_mask(empty)
    palette = Image.fromarray(np.array([[0, 1], [255, 1]], np.uint8), mode="P")
    palette.putpalette([0] * 768)
    palette.save(tmp_path / "p.png")
    assert read_mask(tmp_path / "p.png").tolist() == [[False, True], [False, True]]  # 255 = void
    assert parse_box(" 1, 2,3 ,4") == (1, 2, 3, 4)
    assert parse_box("1,2,300,400", (50, 60)) == (1, 2, 59, 49)
    for bad, msg in [("1,2,3", "four numbers"), ("5,2,3,4", "X0 <= X1"), ("a,b,c,d", "four numbers")]:
        with pytest.raises(GroundTruthError, match=msg):
            parse_box(bad)
    with pytest.raises(GroundTruthError, match="outside the image"):
        parse_box("70,0,80,10", (50, 60))


def test_an_image_of_a_voc_folder_has_its_class_mask_and_boxes(tmp_path):
    generate(tmp_path / "tb", n=4, seed=5)
    ds = VOCDataset(tmp_path / "tb", "train")
    sample = ds[0]
    c = sample.labels[0]
    image = sample.image()
    gt = find_ground_truth(sample.image_path, image.size, ds.class_names[c])
    assert np.array_equal(gt.mask, sample.mask == c + 1)
    assert gt.boxes == tuple(sample.boxes(c)) and gt.boxes
    assert np.array_equal(gt.ignore, sample.mask == 255)
    anything = find_ground_truth(sample.image_path, image.size, "tabby")  # a class the folder does not know
    assert np.array_equal(anything.mask, (sample.mask > 0) & (sample.mask < 255))
    assert len(anything.boxes) == len(sample.objects)


def test_ground_truth_scores_of_a_map_that_is_the_mask():
    mask = np.zeros((40, 40), bool)
    mask[10:20, 5:25] = True
    scores = ground_truth_scores(mask.astype(np.float32), mask)
    assert scores == {"energy": 1.0, "pointing": True, "best_iou": 1.0, "best_iou_threshold": 0.95}  # ties: the highest t
    elsewhere = np.zeros((40, 40), np.float32)
    elsewhere[35:, 35:] = 1
    scores = ground_truth_scores(elsewhere, mask)
    assert scores["energy"] == 0.0 and scores["pointing"] is False and scores["best_iou"] == 0.0


def test_outline_draws_the_mask_contour_and_the_boxes_scaled_to_the_display():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    gt = GroundTruth((20, 20), mask=mask)
    drawn = outline(np.zeros((20, 20, 3), np.uint8), gt, color=(0, 255, 0), thickness=1)
    green = drawn[..., 1] == 255
    border = mask & ~np.pad(mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:], 1)
    assert np.array_equal(green, border)  # exactly the square's one-pixel border
    boxed = outline(np.zeros((40, 40, 3), np.uint8), GroundTruth((20, 20), boxes=((2, 4, 9, 9),)), thickness=1)
    ys, xs = np.nonzero(boxed[..., 1])
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (4, 8, 19, 19)  # twice the size: pixels 2..9 -> 4..19


def test_agreement_known_answers():
    a = np.linspace(0, 1, 100).reshape(10, 10)
    maps = {"a": a, "twice": 2 * a, "flipped": 1 - a, "flat": np.full((10, 10), 0.3)}
    ag = agreement(maps, threshold=0.5)
    assert ag.names == ("a", "twice", "flipped", "flat")
    r = ag.pearson
    assert r[0, 1] == pytest.approx(1) and r[0, 2] == pytest.approx(-1) and np.isnan(r[0, 3]) and np.isnan(r[3, 3])
    assert np.allclose(r, r.T, equal_nan=True) and r[1, 1] == pytest.approx(1)
    # a >= .5: the upper half (50 pixels); 2a >= .5: a >= .25 (75); 1 - a >= .5: the lower half
    assert ag.iou[0, 1] == pytest.approx(50 / 75) and ag.iou[0, 2] == 0 and ag.iou[0, 0] == 1
    assert np.isnan(ag.iou[3, 3])  # two empty regions: undefined
    rng = np.random.default_rng(0)
    x, y = rng.random((8, 8)), rng.random((8, 8))
    assert agreement({"x": x, "y": y}).pearson[0, 1] == pytest.approx(np.corrcoef(x.ravel(), y.ravel())[0, 1])
    with pytest.raises(ValueError, match="differ in size"):
        agreement({"x": x, "z": np.zeros((4, 4))})

"""CI-CAM and KD-CI-CAM on the testbed CNN (cam_core/testbed/cicam.py): the dictionary, the two
branches, the losses on known tensors, and short training runs."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cam_core.cli import main
from cam_core.testbed.cicam import (CICAM, class_entries, combination_map, kd_cls_loss, kd_loc_loss, standardise,
                                    student_loss)
from cam_core.testbed.generate import generate


def _by_hand_standardise(m):
    m = np.asarray(m, np.float64)
    mean = m.mean(axis=(1, 2), keepdims=True)
    std = np.sqrt(m.var(axis=(1, 2), keepdims=True) + 1e-5)
    return (m - mean) / std


def test_dictionary_update_on_a_constructed_batch():
    """Three images, three classes, 2x2 maps. Image 0: top-1 class 1, labelled 1 -> its CAM
    of class 1 goes to slot 1. Image 1: top-1 class 1, labelled 0 only -> wrong, left out.
    Image 2: top-1 class 2, labelled 0 and 2 -> its CAM of class 2 goes to slot 2. Slot 0 gets
    nothing."""
    torch.manual_seed(0)
    up_cam = torch.randn(3, 3, 2, 2)
    up_logits = torch.tensor([[0.0, 5.0, 1.0], [0.0, 4.0, 1.0], [3.0, 0.0, 6.0]])
    labels = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    entries = class_entries(labels, up_logits, up_cam)
    expected = torch.zeros(3, 2, 2)
    expected[1] = up_cam[0, 1]
    expected[2] = up_cam[2, 2]
    assert torch.equal(entries, expected)

    # two right images of the same class add up
    labels2 = labels.clone()
    labels2[1, 1] = 1.0
    assert torch.allclose(class_entries(labels2, up_logits, up_cam)[1], up_cam[0, 1] + up_cam[1, 1])

    model = CICAM(3, {"input_size": 16})  # 16 px at output stride 8: a 2x2 dictionary
    start = torch.randn(3, 2, 2)
    model.dictionary.copy_(start)
    model.update_dictionary(labels, up_logits, up_cam, rate=0.1)
    by_hand = _by_hand_standardise(start.numpy() + 0.1 * _by_hand_standardise(expected.numpy()))
    np.testing.assert_allclose(model.dictionary.numpy(), by_hand, atol=1e-5)
    # slot 0 had no entry: only renormalised
    np.testing.assert_allclose(model.dictionary[0].numpy(), _by_hand_standardise(start.numpy())[0], atol=1e-5)


def test_standardise_is_the_official_batchnorm_in_training_mode():
    m = torch.randn(4, 5, 5) * 3 + 1
    m[2] = 0  # a slot without entries stays zero
    bn = nn.BatchNorm2d(4).train()  # weight 1, bias 0, never trained in the official code
    assert torch.allclose(standardise(m), bn(m[None])[0], atol=1e-5)
    assert torch.equal(standardise(m)[2], torch.zeros(5, 5))


def _with_dictionary(seed, classes=8, size=128):
    """A random CI-CAM whose dictionary holds random standardised entries."""
    torch.manual_seed(seed)
    model = CICAM(classes, {"input_size": size})
    model.dictionary.copy_(standardise(torch.randn_like(model.dictionary)))
    return model.eval()


def test_down_branch_equals_up_branch_when_the_attention_is_zero_and_the_classifiers_are_shared():
    model = _with_dictionary(1)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        before = model.branches(x)
        nn.init.zeros_(model.mask2attention.weight)
        nn.init.zeros_(model.mask2attention.bias)
        out = model.branches(x)
    assert not torch.allclose(before.down_logits, before.up_logits)  # the attention did act
    assert torch.equal(out.attention, torch.zeros_like(out.attention))
    assert torch.equal(out.down_logits, out.up_logits) and torch.equal(out.down_cam, out.up_cam)
    assert torch.equal(model(x), out.up_logits)


def test_attention_is_the_top1_entry_through_the_1x1_conv():
    """A[b] = W[:, top1] * M[top1] + bias; F' = F + A F; down logits = GAP(CAM_down) + bias."""
    model = _with_dictionary(2)
    x = torch.randn(3, 3, 128, 128)
    with torch.no_grad():
        out = model.branches(x)
    w, b = model.mask2attention.weight[:, :, 0, 0], model.mask2attention.bias
    for i in range(3):
        c = int(out.up_logits[i].argmax())
        a = w[:, c, None, None] * model.dictionary[c] + b[:, None, None]
        assert torch.allclose(out.attention[i], a, atol=1e-5)
        assert torch.allclose(out.down_features[i], out.features[i] * (1 + a), atol=1e-5)
    assert torch.allclose(out.down_cam.mean(dim=(2, 3)) + model.up_classifier.bias, out.down_logits, atol=1e-5)


def test_separate_down_classifier_and_attention_off():
    model = CICAM(4, {"shared_classifier": False, "attention": False}).eval()
    assert model.down_classifier is not model.up_classifier
    with torch.no_grad():
        out = model.branches(torch.randn(1, 3, 128, 128))
    assert torch.equal(out.down_features, out.features)


def test_combination_map_weights_the_ranks():
    """Constant maps 1, 2, 3 for classes 0, 1, 2; scores rank them 2, 0, 1. Quadratic weights by
    rank: 0, -1/4, -1 -> -(1/4 * 1 + 1 * 2) = -2.25, and -6.25 on the pixel where class 1 is 6;
    minus the minimum."""
    cam = torch.stack([torch.full((2, 2), v) for v in (1.0, 2.0, 3.0)])[None]
    cam[0, 1, 0, 0] = 6.0  # class 1 (rank 2, weight -1) higher on one pixel
    logits = torch.tensor([[1.0, 0.0, 2.0]])
    m = combination_map(cam, logits)
    expected = torch.tensor([[-6.25, -2.25], [-2.25, -2.25]]) + 6.25
    assert torch.allclose(m[0], expected)
    lin = combination_map(cam, logits, "linear")  # weights 1, 0, -1 by rank: 3 - 2 (or 3 - 6)
    assert torch.allclose(lin[0], torch.tensor([[0.0, 4.0], [4.0, 4.0]]))
    top = combination_map(cam, logits, "top1")
    assert torch.equal(top[0], torch.zeros(2, 2))


def test_classification_distillation_on_known_tensors():
    """Teacher uniform over two classes; student softmax at T = 2 is (3/4, 1/4)."""
    t = torch.tensor([[0.0, 0.0]])
    s = torch.tensor([[2 * math.log(3.0), 0.0]])
    kl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert kd_cls_loss(s, t, 2.0).item() == pytest.approx(kl, abs=1e-6)
    # the official call (probabilities where KLDivLoss wants log-probabilities)
    assert kd_cls_loss(s, t, 2.0, official=True).item() == pytest.approx(math.log(0.5) - 0.5, abs=1e-6)
    # batchmean: two rows, the second identical to its teacher
    s2, t2 = torch.cat([s, torch.tensor([[1.0, 3.0]])]), torch.cat([t, torch.tensor([[1.0, 3.0]])])
    assert kd_cls_loss(s2, t2, 2.0).item() == pytest.approx(kl / 2, abs=1e-6)


def test_localisation_distillation_on_known_tensors():
    """sigmoid(0) = 1/2 against sigmoid(T ln 3 / T) = 3/4: a gap of 1/4 at every pixel."""
    s = torch.zeros(2, 3, 4, 4)
    t = torch.full((2, 3, 4, 4), 5 * math.log(3.0))
    assert kd_loc_loss(s, t, 5.0, "mse").item() == pytest.approx(1 / 16, abs=1e-6)
    assert kd_loc_loss(s, t, 5.0, "l1").item() == pytest.approx(1 / 4, abs=1e-6)
    assert kd_loc_loss(s, t, 5.0, "smoothl1").item() == pytest.approx(0.5 / 16, abs=1e-6)
    with pytest.raises(ValueError, match="mse, smoothl1 or l1"):
        kd_loc_loss(s, t, 5.0, "kl")


def test_student_loss_routes_each_image_to_its_teacher():
    torch.manual_seed(3)
    model = CICAM(4).eval()
    with torch.no_grad():
        out = model.branches(torch.randn(3, 3, 128, 128))
    y = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 1.0]])
    t_logits, t_cam = torch.randn(3, 4), torch.randn(3, 4, 16, 16)
    flags = torch.tensor([0, 1, 2])
    got = student_loss(out, y, flags, t_logits, t_cam, alpha=0.8, cls_temperature=15.0, loc_temperature=10.0,
                       loc_weight=2.0)
    expected = (0.2 * F.binary_cross_entropy_with_logits(out.down_logits, y)
                + 0.8 * kd_cls_loss(out.down_logits[1:2], t_logits[1:2], 15.0)
                + 0.8 * 2.0 * kd_loc_loss(out.down_cam[2:3], t_cam[2:3], 10.0))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    only_labels = student_loss(out, y, torch.zeros(3, dtype=torch.long), None, None, alpha=0.8)
    assert only_labels.item() == pytest.approx(0.2 * F.binary_cross_entropy_with_logits(out.down_logits, y).item())


def test_whole_image_crops_keep_images_and_take_labels_from_the_masks():
    from cam_core.testbed.train import random_resized_crops

    x = torch.randn(2, 3, 8, 8)
    masks = torch.zeros(2, 8, 8, dtype=torch.uint8)
    masks[0, :2, :2] = 3  # class 2
    masks[1, 4:, 4:] = 1  # class 0
    masks[1, 0, 0] = 255  # void is no class
    out, labels = random_resized_crops(x, masks, 4, torch.ones(2), torch.Generator().manual_seed(0))
    assert torch.equal(out, x)
    assert labels.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0]]
    # a crop that loses most of a class loses its label; one that keeps it keeps the label
    masks2 = torch.zeros(64, 8, 8, dtype=torch.uint8)
    masks2[:, :, :4] = 1  # class 0 fills the left half
    _, labels2 = random_resized_crops(torch.randn(64, 3, 8, 8), masks2, 1, torch.full((64,), 0.1),
                                      torch.Generator().manual_seed(1))
    assert 0 < labels2.sum() < 64


@pytest.fixture(scope="module")
def tiny_v2(tmp_path_factory):
    root = tmp_path_factory.mktemp("tbc") / "tb2"
    generate(root, n=16, seed=6, version=2, heldout_fraction=0.25)
    return root


@pytest.mark.slow
def test_training_smoke_runs_of_ci_cam_teachers_and_the_student(tiny_v2, tmp_path):
    from cam_core.testbed.train import load_trained

    common = ["--data", str(tiny_v2), "--max-steps", "1", "--epochs", "1", "--batch-size", "6", "--device", "cpu"]
    for role in ("cls", "loc"):
        args = ["testbed", "train", "--arch", "ci-cam", "--role", role, "--out", str(tmp_path / role)]
        assert main(args + common) == 0
    assert main(["testbed", "train", "--arch", "kd-ci-cam", "--cls-teacher", str(tmp_path / "cls"),
                 "--loc-teacher", str(tmp_path / "loc"), "--set", "alpha=0.5", "--set", "loc_kind=l1",
                 "--out", str(tmp_path / "kd")] + common) == 0
    for name, arch in (("cls", "ci-cam"), ("loc", "ci-cam"), ("kd", "kd-ci-cam")):
        card = json.loads((tmp_path / f"{name}.json").read_text())
        assert card["arch"] == arch and card["training"]["steps"] == 1 and card["input_size"] == 160
        assert card["data"]["version"] == 2 and "mAP" in card["heldout"]
        model, _ = load_trained(tmp_path / name)
        d = model.dictionary
        assert d.shape == (8, 20, 20)
        for slot in d:  # each slot zero or standardised (std under 1 by BatchNorm's eps when M + rate x entry is small)
            std = float(slot.std(unbiased=False))
            zero = torch.equal(slot, torch.zeros_like(slot))
            assert zero or (abs(float(slot.mean())) < 1e-4 and 0.5 < std < 1 + 1e-4)
        assert d.abs().sum() > 0  # at least one image was right: the dictionary was written
        with torch.no_grad():
            assert torch.isfinite(model(torch.randn(1, 3, 160, 160))).all()
    kd = json.loads((tmp_path / "kd.json").read_text())["training"]
    assert kd["alpha"] == 0.5 and kd["loc_kind"] == "l1" and kd["cls_temperature"] == 15.0
    assert json.loads((tmp_path / "cls.json").read_text())["training"]["aux_type"] == "fore"


def test_train_refuses_bad_options_and_missing_teachers(tiny_v2, tmp_path, capsys):
    common = ["--data", str(tiny_v2), "--max-steps", "1", "--epochs", "1", "--device", "cpu",
              "--out", str(tmp_path / "m")]
    assert main(["testbed", "train", "--arch", "kd-ci-cam"] + common) == 2
    assert "needs both teachers" in capsys.readouterr().err
    assert main(["testbed", "train", "--arch", "ci-cam", "--set", "alpha=0.3"] + common) == 2
    assert "unknown option(s) alpha" in capsys.readouterr().err
    assert main(["testbed", "train", "--arch", "ci-cam", "--set", "aux_rate=much"] + common) == 2
    assert "expected a float" in capsys.readouterr().err
    assert main(["testbed", "train", "--arch", "kd-ci-cam", "--cls-teacher", str(tmp_path / "none"),
                 "--loc-teacher", str(tmp_path / "none")] + common) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


def _save_untrained(prefix, arch="ci-cam", classes=8, size=128):
    """A CI-CAM with random weights and a random dictionary, written as train() writes one
    (for the loader's and the method's tests only; nothing of it ships)."""
    from safetensors.torch import save_file

    model = _with_dictionary(4, classes, size)
    nn.init.normal_(model.mask2attention.weight, std=0.5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(prefix.with_suffix(".safetensors")))
    card = {"arch": arch, "config": model.config, "classes": [f"c{i}" for i in range(classes)], "input_size": size,
            "mean": [0.5] * 3, "std": [0.5] * 3, "data": {"seed": 0, "version": 2}, "training": {"epochs": 0},
            "val": {"mAP": 0.0}}
    prefix.with_suffix(".json").write_text(json.dumps(card))
    return model.eval()


def test_cicam_method_is_the_down_branch_cam_of_the_loaded_network(tmp_path):
    from cam_core import Explainer
    from cam_core.backbones import load_testbed
    from cam_core.images import from_array

    model = _save_untrained(tmp_path / "net")
    bb = load_testbed(tmp_path / "net")
    assert bb.class_names[3] == "c3" and bb.input_size == (128, 128) and "CI-CAM" in bb.source
    rgb = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    image = from_array(rgb)
    ex = Explainer(bb)
    with torch.no_grad():
        out = model.branches(bb.preprocess(rgb))
    fwd = ex.forward(image)
    assert torch.allclose(fwd.logits, out.down_logits[0], atol=1e-4)  # the backbone's prediction is the down branch's
    for target in (0, 5):
        got = ex.compute(image, "cicam", target).map
        assert torch.allclose(got, torch.relu(out.down_cam[0, target]), atol=1e-4)
        assert torch.allclose(got, ex.compute(image, "cam", target).map, atol=1e-6)
    comb = ex.compute(image, "cicam", 0, params={"mode": "combination"}).map
    assert torch.allclose(comb, combination_map(out.down_cam, out.down_logits)[0], atol=1e-3)
    # no state left on the shared model by a forward pass
    assert torch.equal(bb.model.dictionary, model.dictionary)
    for m in ("gradcam", "sipe"):
        assert torch.isfinite(ex.compute(image, m, 1, params={"labels": "1"} if m == "sipe" else None).map).all()


def test_cicam_method_refuses_other_backbones_and_unshipped_checkpoints(tmp_path):
    from cam_core import BackboneError, Explainer, load_backbone
    from cam_core.backbones.sources.testbed import load_testbed
    from cam_core.methods import get_method

    bb = load_backbone("testbed-cnn")
    reason = get_method("cicam").refusal(bb)
    assert reason and "CI-CAM network" in reason and "testbed2-ci-cam" in reason
    assert "cicam" not in [s.name for s in Explainer(bb).methods()]
    for name, hint in (("testbed2-ci-cam", "--arch ci-cam --role loc"), ("testbed2-kd-ci-cam", "--arch kd-ci-cam"),
                       ("testbed2-cnn", "--version 2")):
        with pytest.raises(BackboneError, match="not trained yet") as err:
            load_testbed(tmp_path / name)  # a checkout whose checkpoint is missing
        assert hint in str(err.value) and "\n" not in str(err.value)


def test_the_shipped_version_2_models_load_with_their_cards():
    """testbed2-cnn, -vit, -ci-cam and -kd-ci-cam ship trained on version 2 (n 1200, seed 0),
    the student from the two shipped teachers; CI-CAM's map applies to the CI-CAM networks only."""
    import json

    from cam_core import Explainer, load_backbone
    from cam_core.backbones.sources.testbed import TESTBED_DIR

    for name, arch in (("testbed2-cnn", "cnn"), ("testbed2-vit", "vit"), ("testbed2-ci-cam", "ci-cam"),
                       ("testbed2-kd-ci-cam", "kd-ci-cam")):
        card = json.loads((TESTBED_DIR / f"{name}.json").read_text())
        assert card["arch"] == arch and card["data"]["version"] == 2 and card["data"]["n"] == 1200
        assert card["input_size"] == 160 and card["val"]["mAP"] > 0.9
        bb = load_backbone(name)
        assert "version 2" in bb.source and bb.input_size == (160, 160)
        assert ("cicam" in [s.name for s in Explainer(bb).methods()]) == arch.endswith("ci-cam")
    kd = json.loads((TESTBED_DIR / "testbed2-kd-ci-cam.json").read_text())
    assert kd["training"]["teachers"] == {"cls": "assets/testbed/testbed2-ci-cam-cls",
                                          "loc": "assets/testbed/testbed2-ci-cam"}
    assert json.loads((TESTBED_DIR / "testbed2-ci-cam-cls.json").read_text())["training"]["role"] == "cls"
    assert json.loads((TESTBED_DIR / "testbed2-ci-cam.json").read_text())["training"]["role"] == "loc"


def _hooks(model):
    return [(name, len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks))
            for name, m in model.named_modules()
            if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks]


@pytest.mark.parametrize("name,sample,input_size", [("testbed2-ci-cam", "orange.jpg", None),
                                                    ("testbed2-ci-cam", "cat.png", "2x"),
                                                    ("testbed2-kd-ci-cam", "apple.jpg", None)])
def test_dictionary_view_is_the_dictionary_the_up_top1_and_its_attention(name, sample, input_size):
    """Issue 12: the Feature space page's view of CI-CAM's dictionary for one image, checked
    against the model's own branches. kd-ci-cam on apple.jpg: the up branch says tri (3), the
    network (the down branch) bar (4): the entry used is the up branch's. At 2x the grid is
    40 x 40 and the 20 x 20 entry is resized to it, as the model does."""
    from helpers import SAMPLES

    from cam_core import Explainer, load_backbone, load_image
    from cam_core.featurespace import dictionary_view

    bb = load_backbone(name)
    ex = Explainer(bb)
    fwd = ex.forward(load_image(SAMPLES / sample), input_size=input_size)
    model = bb.model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model.branches(fwd.input)
    view = dictionary_view(fwd)
    assert dictionary_view(fwd) is view  # cached in the forward pass

    assert torch.equal(view.entries, model.dictionary.cpu()) and view.entries.shape == (8, 20, 20)
    top1 = int(before.up_logits.argmax())
    assert view.top1 == top1 and view.down_top1 == int(before.down_logits.argmax())
    if sample == "apple.jpg":
        assert (view.top1, view.down_top1) == (3, 4)
    assert torch.allclose(view.up_probs, before.up_logits[0].sigmoid(), atol=1e-5)
    size = tuple(before.features.shape[-2:])
    assert size == ((40, 40) if input_size == "2x" else (20, 20)) and view.grid == size
    entry = model.dictionary[top1]
    if size != (20, 20):
        entry = F.interpolate(entry[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    assert torch.allclose(view.entry_used, entry, atol=1e-6)
    with torch.no_grad():
        a = model.attention(torch.tensor([top1]), size)[0]  # by hand: the top-1 entry through the 1x1 conv
        conv = model.mask2attention
        by_hand = conv.weight[:, top1, 0, 0][:, None, None] * entry + conv.bias[:, None, None]
    assert torch.allclose(a, by_hand, atol=1e-4)
    assert torch.allclose(view.attention_norm, a.norm(dim=0), rtol=1e-4, atol=1e-4)
    f, change = before.features[0], (before.attention * before.features)[0]
    assert torch.allclose(view.change_share, change.norm(dim=0) / f.norm(dim=0), rtol=1e-3, atol=1e-5)
    assert view.overall_share == pytest.approx(float(change.norm() / f.norm()), rel=1e-3)
    assert 0.05 < view.overall_share < 2  # the attention does change the features

    # nothing left on the shared model: no hook, the same buffers and weights, the same outputs
    assert not _hooks(model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        after = model.branches(fwd.input)
    assert torch.equal(after.down_logits, before.down_logits) and torch.equal(after.attention, before.attention)


def test_dictionary_view_refuses_a_backbone_without_a_dictionary():
    from helpers import SAMPLES

    from cam_core import Explainer, MethodError, load_backbone, load_image
    from cam_core.featurespace import dictionary_view, is_cicam

    bb = load_backbone("testbed-cnn")
    assert not is_cicam(bb) and is_cicam(load_backbone("testbed2-kd-ci-cam"))
    with pytest.raises(MethodError, match="testbed-cnn is not a CI-CAM network"):
        dictionary_view(Explainer(bb).forward(load_image(SAMPLES / "cat.png")))


def _cicam_context(maps, logits):
    """A forward pass whose backbone's class maps (K x h x w) and logits are given."""
    from types import SimpleNamespace

    from cam_core.methods.base import MethodContext

    backbone = SimpleNamespace(name="testbed2-ci-cam", class_maps=lambda head_features: maps)
    return MethodContext(SimpleNamespace(backbone=backbone, head_features=None, logits=logits))


def test_cicam_method_class_map_by_default_and_combination_with_its_note():
    """The method on constructed class maps: without a mode, the ReLU of the target's map; in
    'combination' mode the combinational map (as combination_map) and the note telling the user
    it is class-agnostic."""
    from cam_core.methods.cicam import cicam

    maps = torch.stack([torch.full((2, 2), v) for v in (1.0, 2.0, 3.0)])
    maps[1, 0, 0] = -6.0
    logits = torch.tensor([1.0, 0.0, 2.0])
    ctx = _cicam_context(maps, logits)
    out = cicam(ctx, 1)  # the default mode: the class's down CAM, ReLU'd
    assert torch.equal(out.map, torch.tensor([[0.0, 2.0], [2.0, 2.0]])) and out.note == ""
    comb = cicam(ctx, 1, mode="combination")
    assert torch.allclose(comb.map, combination_map(maps[None], logits[None])[0])
    assert comb.note == "combinational CAM (class-agnostic, as the official localisation)"


def test_cicam_refuses_a_backbone_that_is_not_a_ci_cam_network_and_names_the_ones_that_are():
    from types import SimpleNamespace

    from cam_core.methods import METHODS

    resnet = SimpleNamespace(name="resnet18", model=nn.Identity(), kind="cnn")
    assert METHODS["cicam"].refusal(resnet) == (
        "CI-CAM does not apply to resnet18: it reads the causal-intervention branch of a CI-CAM network "
        "(the backbones testbed2-ci-cam and testbed2-kd-ci-cam)")

"""LPCAM, SIPE and the prototype bank: constructed cases with known answers, files, folders."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import SAMPLES, color_backbone

from cam_core import Cancelled, Explainer, from_array, load_image, normalize
from cam_core.methods.sipe import iou_seeds
from cam_core.prototypes import BankError, PrototypeBank, build_bank, folder_items

# Class 0 is told apart by RED only (weight 4); GREEN adds a little (weight 1); BLUE is class 1.
HEAD_BODY_W = [[4.0, 1.0, 0.0], [0.0, 0.0, 4.0]]


def head_body_image(size=32):
    """A red 'head' (rows 2-9), a larger green 'body' that only co-occurs with it (rows 12-29),
    on blue background."""
    rgb = np.zeros((size, size, 3), np.uint8)
    rgb[:, :] = (0, 0, 255)
    rgb[2:10, 8:24] = (255, 0, 0)
    rgb[12:30, 4:28] = (0, 255, 0)
    return from_array(rgb, "head_body.png")


def test_lpcam_covers_the_co_occurring_part_cam_only_the_discriminative_one():
    ex = Explainer(color_backbone(HEAD_BODY_W))
    img = head_body_image()
    cam = normalize(ex.compute(img, "cam", 0).map, "max")
    lp = ex.compute(img, "lpcam", 0, params={"k": 2, "tau": 0.1, "mu_f": 0.7})
    lpm = normalize(lp.map, "max")
    head, body, bg = (slice(2, 10), slice(8, 24)), (slice(12, 30), slice(4, 28)), (slice(0, 2), slice(0, 32))
    # CAM: head 1, body 0.25, background 0
    assert cam[head].min() == 1 and cam[body].max() == pytest.approx(0.25) and cam[bg].max() == 0
    # LPCAM: two class prototypes (red and green centres), both selected: head and body alike
    sel = lp.extras["selection"]
    assert int(sel.fg_selected.sum()) == 2
    assert lpm[head].min() == pytest.approx(1.0) and lpm[body].min() == pytest.approx(1.0)
    assert lpm[bg].max() == pytest.approx(0.0)
    # the body's centre scores p = softmax(1, 0)[0] = 0.731 (>= mu_f 0.7, < the paper's 0.9)
    assert sorted(sel.fg_prob.tolist())[0] == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=1e-4)


def test_lpcam_paper_threshold_drops_the_body_and_says_why():
    ex = Explainer(color_backbone(HEAD_BODY_W))
    lp = ex.compute(head_body_image(), "lpcam", 0, params={"k": 2, "tau": 0.1})  # mu_f = 0.9
    assert int(lp.extras["selection"].fg_selected.sum()) == 1
    assert "softmax rule" in lp.note
    assert normalize(lp.map, "max")[12:30, 4:28].max() == pytest.approx(0.0, abs=1e-6)


def test_context_prototypes_are_subtracted():
    """Class 0 = red, with a pull from blue (its 'water'). The object is purple (red + half
    blue), so the blue background is cos 0.447 close to the class prototype: only subtracting
    the context prototype (the blue centre, 0.05 < p = 0.18 < 0.9) removes it."""
    w = [[4.0, 0.0, 1.5], [0.0, 4.0, 3.0]]
    ex = Explainer(color_backbone(w))
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:, :] = (0, 0, 255)
    rgb[4:14, 4:14] = (255, 0, 128)
    lp = ex.compute(from_array(rgb), "lpcam", 0, params={"k": 1, "tau": 0.5, "rule": "softmax"})
    sel = lp.extras["selection"]
    assert len(sel.context_prototypes) == 1
    assert float(sel.bg_prob[0]) == pytest.approx(torch.softmax(torch.tensor([1.5, 3.0]), 0)[0].item(), abs=1e-4)
    m = lp.map
    cos_bg = 0.502 / (1 + 0.502**2) ** 0.5  # cos((1, 0, .502), (0, 0, 1))
    assert m[20:, 20:].max() == 0  # would be cos_bg = 0.45 without the context term
    assert m[4:14, 4:14].min() == pytest.approx(1 - cos_bg, abs=1e-3)


def test_k_larger_than_foreground_pixels_is_a_clear_error():
    ex = Explainer(color_backbone(HEAD_BODY_W, size=8))
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    with pytest.raises(BankError, match=r"K = 3 is larger than the 1 foreground pixels"):
        ex.compute(from_array(rgb), "lpcam", 0, params={"k": 3})


def test_sipe_iou_seed_rule_by_hand():
    # 4 pixels, 2-d features; hand-computed in the comments (S = ReLU(cos)).
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]).T
    cam = torch.tensor([1.0, 0.8, 0.0, 0.2])
    cams = torch.stack([1 - cam, cam])  # background first
    seeds, iou = iou_seeds(f, cams, bg_factor=0.5)
    # pixel 0: S = [1,1,0,.6]; class 1.92/(2.6+2-1.92) = .7164; bg .68/(2.6+2-.68) * .5 = .0867
    assert iou[1, 0].item() == pytest.approx(1.92 / 2.68, abs=1e-4)
    assert iou[0, 0].item() == pytest.approx(0.5 * 0.68 / 3.92, abs=1e-4)
    # pixel 2: S = [0,0,1,.8]; class .16/3.64 = .044; bg 1.64/2.16 * .5 = .380
    assert iou[0, 2].item() == pytest.approx(0.5 * 1.64 / 2.16, abs=1e-4)
    # pixel 3: S = [.6,.6,.8,1]; class 1.28/3.72 = .344; bg 1.72/3.28 * .5 = .262
    assert iou[1, 3].item() == pytest.approx(1.28 / 3.72, abs=1e-4)
    assert seeds.tolist() == [1, 1, 0, 1]
    seeds_full_bg, _ = iou_seeds(f, cams, bg_factor=1.0)  # bg .524 now beats .344 at pixel 3
    assert seeds_full_bg.tolist() == [1, 1, 0, 0]


def test_sipe_with_two_labels_returns_the_targets_map():
    """Red is class 0, blue class 1, on a green background. With both labels, SIPE makes one
    IS-CAM per label (background first) and returns the target's: red pixels are cosine 1 to
    the red seed region's mean, blue pixels cosine 0 (and the other way round for class 1)."""
    ex = Explainer(color_backbone([[4.0, 0.0, 0.0], [0.0, 0.0, 4.0]]))
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:, :] = (0, 255, 0)
    rgb[4:12, 4:12] = (255, 0, 0)
    rgb[20:28, 16:28] = (0, 0, 255)
    img = from_array(rgb, "red_blue.png")
    red, blue = (slice(4, 12), slice(4, 12)), (slice(20, 28), slice(16, 28))
    for target, mine, other in ((0, red, blue), (1, blue, red)):
        res = ex.compute(img, "sipe", target, params={"labels": "0,1"})
        assert res.extras["labels"] == ["background", target, 1 - target]
        torch.testing.assert_close(res.map, res.extras["is_cam"][1])
        assert res.map[mine].min() == pytest.approx(1.0, abs=1e-5)
        assert res.map[other].max() == pytest.approx(0.0, abs=1e-5)
        assert (res.extras["seeds"][mine] == 1).all() and (res.extras["seeds"][other] == 2).all()


def test_is_cam_is_cosine_to_the_seed_mean_prototype(resnet18, cat):
    ex = Explainer(resnet18)
    res = ex.compute(cat, "sipe")
    hie, seeds = res.extras["hierarchical"], res.extras["seeds"]
    assert hie.shape[-2:] == seeds.shape == (14, 14)  # the stride-16 grid
    flat = hie.reshape(hie.shape[0], -1)
    fg = seeds.reshape(-1) == 1
    assert fg.any()
    proto = flat[:, fg].mean(dim=1)
    expected = torch.relu(F.cosine_similarity(flat, proto[:, None], dim=0)).reshape(14, 14)
    assert torch.allclose(res.map, expected, atol=1e-5)
    assert res.extras["labels"][0] == "background"


def test_sipe_on_vit_and_lite(deit, lite0, cat):
    for bb in (deit, lite0):
        res = Explainer(bb).compute(cat, "sipe")
        assert res.map.shape == (14, 14) and torch.isfinite(res.map).all()


# ----- the bank ------------------------------------------------------------------------------
def _folder(tmp_path):
    root = tmp_path / "imgs"
    for sub, files in {"tabby": ["cat.png"], "207_golden": ["dog.jpg"]}.items():
        (root / sub).mkdir(parents=True)
        for f in files:
            (root / sub / f).write_bytes((SAMPLES / f).read_bytes())
    return root


def test_folder_layouts(tmp_path, lite0):
    items = folder_items(_folder(tmp_path), lite0.class_names).items
    assert [(i.path.name, i.target) for i in items] == [("dog.jpg", 207), ("cat.png", 281)]
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.jpg").write_bytes((SAMPLES / "robin.jpg").read_bytes())
    assert [i.target for i in folder_items(flat, lite0.class_names).items] == [None]
    # beside loose images, a subfolder that is no class (masks/) is left out and reported
    (flat / "masks").mkdir()
    (flat / "masks" / "m.png").write_bytes((SAMPLES / "masks" / "plant_mask.png").read_bytes())
    scan = folder_items(flat, lite0.class_names)
    assert [i.path.name for i in scan.items] == ["a.jpg"] and scan.ignored == ["masks/: not a class name or index"]
    # in a pure ImageFolder layout it is a typo: an error
    (tmp_path / "imgs" / "not_a_class_xyz").mkdir()
    with pytest.raises(BankError, match="not_a_class_xyz"):
        folder_items(tmp_path / "imgs", lite0.class_names)


def test_build_save_load_round_trip(tmp_path, lite0):
    ex = Explainer(lite0)
    (_folder(tmp_path) / "tabby" / "broken.png").write_bytes(b"\x89PNG garbage")
    items = folder_items(tmp_path / "imgs", lite0.class_names).items
    seen = []
    report = build_bank(ex, items, name="pets", progress=lambda d, t: seen.append((d, t)))
    bank = report.bank
    assert seen[-1] == (3, 3) and len(report.skipped) == 1 and "broken.png" in report.skipped[0]
    assert sorted(bank.classes) == [207, 281] and len(bank.classes[281]) == 49
    path = bank.save(tmp_path / "pets.safetensors", tau=0.1, k=12)
    again = PrototypeBank.load(path)
    assert again.key == bank.key and again.images == bank.images
    assert again.meta["settings"] == {"tau": 0.1, "k": 12} and again.meta["backbone"] == "efficientnet_lite0"
    assert torch.equal(again.classes[281].features, bank.classes[281].features)
    # used for LPCAM: a different map than the image's own bank
    cat = load_image(SAMPLES / "cat.png")
    own = ex.compute(cat, "lpcam", 281, params={"k": 4})
    ex.set_bank(again)
    banked = ex.compute(cat, "lpcam", 281, params={"k": 4})
    assert banked.extras["bank"] == "pets" and own.extras["bank"] == "this image"


def test_bank_for_another_backbone_is_refused(tmp_path, lite0, resnet18):
    bank = PrototypeBank("efficientnet_lite0", 1280, "x")
    with pytest.raises(BankError, match="built with efficientnet_lite0, not random:resnet18"):
        Explainer(resnet18).set_bank(bank)
    not_a_bank = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(not_a_bank))
    with pytest.raises(BankError, match="not a CAM Explorer prototype bank"):
        PrototypeBank.load(not_a_bank)


def test_build_can_be_cancelled(tmp_path, lite0):
    items = folder_items(_folder(tmp_path), lite0.class_names).items
    with pytest.raises(Cancelled):
        build_bank(Explainer(lite0), items, cancel=lambda: True)


def test_k_and_thresholds_change_without_a_forward(lite0, cat):
    ex = Explainer(lite0)
    ex.compute(cat, "lpcam")
    forwards = ex.stats["forwards"]
    for params in ({"k": 5}, {"k": 8}, {"tau": 0.3}, {"rule": "softmax", "mu_f": 0.5}):
        ex.compute(cat, "lpcam", params=params)
    assert ex.stats["forwards"] == forwards and ex.stats["maps:lpcam"] == 5


def test_multiscale_uses_four_scales_with_flips(lite0, cat):
    ex = Explainer(lite0)
    res = ex.compute(cat, "lpcam", params={"multiscale": True})
    fwd = ex.forward(cat)
    assert len([k for k in fwd._memo.keys() if k[0] == "features_at"]) == 8 and res.map.shape == (224, 224)


def test_multiscale_on_a_fixed_size_vit_is_a_clear_error(deit, cat):
    from cam_core.methods import MethodError

    ex = Explainer(deit)
    assert deit.fixed_input_size
    with pytest.raises(MethodError, match="takes 224 x 224 inputs only"):
        ex.compute(cat, "lpcam", params={"multiscale": True})
    assert ex.compute(cat, "lpcam").map.shape == (14, 14)  # single scale still works

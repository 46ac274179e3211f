"""LPCAM, SIPE and the prototype bank: constructed cases with known answers, files, folders."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import SAMPLES, color_backbone

from cam_core import Cancelled, Explainer, from_array, load_image, normalize
from cam_core.methods.sipe import hierarchical_features, iou_seeds
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
    lp = ex.compute(img, "lpcam", 0, params={"k": 2, "tau": 0.1, "mu_f": 0.7, "multiscale": False})
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
    lp = ex.compute(head_body_image(), "lpcam", 0, params={"k": 2, "tau": 0.1, "multiscale": False})  # mu_f = 0.9
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
    lp = ex.compute(from_array(rgb), "lpcam", 0, params={"k": 1, "tau": 0.5, "rule": "softmax", "multiscale": False})
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
        res = ex.compute(img, "sipe", target, params={"labels": "0,1", "multiscale": False})
        assert res.extras["labels"] == ["background", target, 1 - target]
        torch.testing.assert_close(res.map, res.extras["is_cam"][1])
        assert res.map[mine].min() == pytest.approx(1.0, abs=1e-5)
        assert res.map[other].max() == pytest.approx(0.0, abs=1e-5)
        assert (res.extras["seeds"][mine] == 1).all() and (res.extras["seeds"][other] == 2).all()


def test_is_cam_is_cosine_to_the_seed_mean_prototype(resnet18, cat):
    ex = Explainer(resnet18)
    res = ex.compute(cat, "sipe", params={"multiscale": False})
    hie, seeds = res.extras["hierarchical"], res.extras["seeds"]
    # as the official inference: the image's and its mirror's hierarchical features, summed
    x = ex.forward(cat).input
    by_hand = []
    for flip in (False, True):
        stages = {}
        hooks = [resnet18.model.get_submodule(n).register_forward_hook(
            lambda m, i, o, n=n: stages.__setitem__(n, o)) for n in resnet18.stage_layers[:-1]]
        with torch.no_grad():
            feats = resnet18.model.forward_features(x.flip(-1) if flip else x)
        for h in hooks:
            h.remove()
        parts = [stages[n][0] for n in resnet18.stage_layers[:-1]] + [feats[0]]
        one = hierarchical_features([p.flip(-1) if flip else p for p in parts])
        by_hand.append(one)
    torch.testing.assert_close(hie, by_hand[0] + by_hand[1], rtol=1e-4, atol=1e-5)
    assert hie.shape[-2:] == seeds.shape == (14, 14)  # the stride-16 grid
    flat = hie.reshape(hie.shape[0], -1)
    fg = seeds.reshape(-1) == 1
    assert fg.any()
    proto = flat[:, fg].mean(dim=1)
    expected = torch.relu(F.cosine_similarity(flat, proto[:, None], dim=0)).reshape(14, 14)
    assert torch.allclose(res.map, expected, atol=1e-5)
    assert res.extras["labels"][0] == "background"


def test_sipe_on_vit_and_lite(deit, lite0, cat):
    # a ViT built for one input size keeps it (one scale, and says so); a CNN runs the
    # official four scales with mirrors, summed at the input size
    res = Explainer(deit).compute(cat, "sipe")
    assert res.map.shape == (14, 14) and torch.isfinite(res.map).all()
    assert "one input size" in res.note
    ex = Explainer(lite0)
    res = ex.compute(cat, "sipe")
    assert res.map.shape == (224, 224) and torch.isfinite(res.map).all() and "4 scales" in res.note
    scaled = {k[1:] for k in ex.forward(cat)._memo.keys() if k[0] == "stages_at"}
    assert scaled == {(s, f) for s in (1.0, 0.5, 1.5, 2.0) for f in (False, True)} - {(1.0, False)}
    torch.testing.assert_close(res.map, res.extras["is_cam"][1])


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
    assert "tabby: 49 px" in bank.describe(lite0.short_name)  # classes by name on the page (issue 9 item 10)
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
    assert banked.extras["bank"] == "pets" and own.extras["bank"] == "this image's pixels"


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
    # 4 scales x (image, mirror): the unscaled image's features come from the shared forward
    scaled = {k[1:] for k in fwd._memo.keys() if k[0] == "stages_at"}
    assert scaled == {(s, f) for s in (1.0, 0.5, 1.5, 2.0) for f in (False, True)} - {(1.0, False)}
    assert res.map.shape == (224, 224)


def test_a_fixed_size_vit_keeps_its_one_input_size_and_says_so(deit, cat):
    from cam_core.methods import MethodError

    ex = Explainer(deit)
    assert deit.fixed_input_size
    res = ex.compute(cat, "lpcam")  # the paper's multi-scale default: one scale here, said in the note
    assert res.map.shape == (14, 14) and "this ViT takes one input size" in res.note
    with pytest.raises(MethodError, match="takes 224 x 224 inputs only"):
        ex.forward(cat).features_at(2.0)  # what the Feature space page would ask for


def test_lpcam_from_this_images_pixels_is_labelled_approximate(lite0, cat, tmp_path):
    ex = Explainer(lite0)
    own = ex.compute(cat, "lpcam", params={"multiscale": False})
    assert own.label == "LPCAM (this image's pixels)" and own.approximate
    n_fg, n_bg = own.extras["bank_pixels"]
    assert n_fg + n_bg == 49 and f"{n_fg} foreground and {n_bg} context pixels" in own.note  # the 7 x 7 grid
    assert "1 scale (the official code: 4 scales + mirrors)" in own.note
    bank = build_bank(ex, [(cat, 281), (load_image(SAMPLES / "dog.jpg"), 281)], name="two").bank
    banked = ex.compute(cat, "lpcam", 281, params={"multiscale": False}, bank=bank)
    assert banked.label == "LPCAM" and not banked.approximate and "bank: two (2 images" in banked.note


def test_rank_rule_context_lower_bound(lite0, cat):
    """context_rank keeps as context only the non-class centres that still rank the class
    within their top N: a subset of the unbounded rule's context, by the ranks themselves."""
    from cam_core.prototypes import class_ranks

    ex = Explainer(lite0)
    common = {"multiscale": False, "rule": "rank", "rank": 5}
    free = ex.compute(cat, "lpcam", params={**common, "context_rank": 0}).extras["selection"]
    bound = ex.compute(cat, "lpcam", params={**common, "context_rank": 50}).extras["selection"]
    ranks = class_ranks(free.bg.centers, lite0, int(ex.targets(cat)[0]), False)
    assert torch.equal(free.bg_selected, ranks > 5)
    assert torch.equal(bound.bg_selected, (ranks > 5) & (ranks <= 50))


def test_streamed_bank_matches_one_image_at_a_time(lite0, tmp_path):
    """Workers, batches and lazily loaded items give the same bank as the explainer's own
    forward passes image by image; unreadable files are skipped and reported."""
    root = _folder(tmp_path)
    (root / "tabby" / "broken.png").write_bytes(b"not an image")
    scan = folder_items(root, lite0.class_names)
    ex = Explainer(lite0)
    streamed = build_bank(ex, scan.items, name="s", workers=2, batch_size=2)
    assert len(streamed.skipped) == 1 and "broken.png" in streamed.skipped[0]
    cat, dog = load_image(SAMPLES / "cat.png"), load_image(SAMPLES / "dog.jpg")
    lazy = build_bank(ex, [(lambda: dog, 207), (lambda: cat, None)], name="lazy").bank
    top1 = int(ex.forward(cat).probs.argmax())  # the label the unlabelled lazy cat gets
    assert top1 != 281 and sorted(lazy.classes) == sorted({207, top1})
    for c, img, lazy_c in ((207, dog, 207), (281, cat, top1)):
        feats = ex.forward(img).head_features
        got = streamed.bank.classes[c].features
        torch.testing.assert_close(got, feats.reshape(feats.shape[0], -1).T.float(), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(lazy.classes[lazy_c].features, got, rtol=1e-4, atol=1e-4)
    assert [i["name"] for i in streamed.bank.images] == ["dog.jpg", "cat.png"]


def test_own_pixels_of_a_class_not_activated_anywhere_give_an_empty_map():
    """An all-blue image: class 0's CAM (4 R + G) is 0 everywhere. An evaluation over a dataset
    meets such images; the map is empty and says why instead of stopping the run."""
    ex = Explainer(color_backbone(HEAD_BODY_W, size=8))
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:, :] = (0, 0, 255)
    res = ex.compute(from_array(rgb), "lpcam", 0, params={"multiscale": False})
    assert res.map.shape == (8, 8) and float(res.map.abs().max()) == 0
    assert "no pixel of class 0 has CAM > tau" in res.note and res.approximate
    assert res.label == "LPCAM (this image's pixels)"
    from cam_core.featurespace import prototype_cloud

    assert prototype_cloud(res).kinds == []  # the Feature space page places no prototype

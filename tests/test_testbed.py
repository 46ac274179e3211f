"""The generated testbed, its VOC reader, the evaluation metrics, TS-CAM, and training."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cam_core import Explainer
from cam_core.cli import main
from cam_core.evaluate import THRESHOLDS, box_iou, confusion, iou_from_confusion, seed_labels
from cam_core.testbed.generate import CLASSES, CLASSES_V2, WATER_CLASSES, WATER_CLASSES_V2, generate, voc_palette
from cam_core.voc import VOCDataset


@pytest.fixture(scope="module")
def testbed(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb") / "testbed"
    generate(root, n=40, seed=5)
    return root


def test_generator_is_deterministic_for_a_seed(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, n=6, seed=11)
    generate(b, n=6, seed=11)
    generate(c, n=6, seed=12)
    for sub, ext in (("JPEGImages", "jpg"), ("SegmentationClass", "png"), ("Annotations", "xml")):
        name = f"tb_0011_00003.{ext}"
        assert (a / sub / name).read_bytes() == (b / sub / name).read_bytes()
    assert (a / "ImageSets/Segmentation/val.txt").read_text() == (b / "ImageSets/Segmentation/val.txt").read_text()
    assert not np.array_equal(np.asarray(Image.open(a / "SegmentationClass/tb_0011_00003.png")),
                              np.asarray(Image.open(c / "SegmentationClass/tb_0012_00003.png")))


def test_version_1_is_unchanged_by_version_2(tmp_path):
    """The shipped testbed-cnn/vit were trained on version 1: its images, masks, boxes and
    split for a seed are pinned (hash taken before version 2 was added)."""
    import hashlib

    generate(tmp_path, n=8, seed=3)
    h = hashlib.sha256()
    for i in range(8):
        for sub in ("SegmentationClass", "SegmentationObject", "SegmentationPart"):
            h.update(np.asarray(Image.open(tmp_path / sub / f"tb_0003_{i:05d}.png")).tobytes())
        h.update(np.asarray(Image.open(tmp_path / "JPEGImages" / f"tb_0003_{i:05d}.jpg")).tobytes())
        h.update((tmp_path / "Annotations" / f"tb_0003_{i:05d}.xml").read_bytes())
    h.update((tmp_path / "ImageSets/Segmentation/val.txt").read_bytes())
    assert h.hexdigest() == "d0a259c77042f359d13829314114bc1d3f6c6dab7ae5ddcb74aa3d4b8ee5fd19"
    assert json.loads((tmp_path / "testbed.json").read_text())["version"] == 1


@pytest.fixture(scope="module")
def testbed_v2(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb2") / "testbed2"
    info = generate(root, n=200, seed=4, version=2, heldout_fraction=0.25)
    assert (info.version, info.n, info.train, info.val, info.heldout) == (2, 200, 160, 40, 50)
    return root


def _object_areas(ds):
    """(body px, part px) of each visible object."""
    areas = []
    for s in ds:
        inst = np.asarray(Image.open(ds.root / "SegmentationObject" / f"{s.id}.png"))
        for i, _ in enumerate(s.objects, start=1):
            areas.append((int(((s.parts == 1) & (inst == i)).sum()), int(((s.parts == 2) & (inst == i)).sum())))
    return np.array(areas)


def test_version_2_plants_partial_activation_hard(testbed_v2):
    ds = VOCDataset(testbed_v2, "train")
    assert ds.class_names == CLASSES_V2 and ds[0].image().rgb.shape == (160, 160, 3)
    areas = _object_areas(ds)
    body, part = areas[:, 0], areas[:, 1]
    assert (part > 0).mean() > 0.97  # the part is almost always visible: the class stays decidable
    assert 1800 < body.mean() < 2800 and 80 < part.mean() < 160
    assert np.median(part / body) < 0.07  # v1: about 0.1 of the body
    meta = json.loads((testbed_v2 / "testbed.json").read_text())
    assert meta["version"] == 2 and meta["size"] == 160 and "any of" in meta["bodies"]


def test_version_2_plants_the_confounder_and_flips_it_in_heldout(testbed_v2):
    meta = json.loads((testbed_v2 / "testbed.json").read_text())
    backgrounds = meta["backgrounds"]
    assert meta["water_classes"] == [CLASSES_V2[i] for i in WATER_CLASSES_V2]
    with_w, without_w = [], []
    for split in ("train", "val"):
        for s in VOCDataset(testbed_v2, split):
            (with_w if set(s.labels) & set(WATER_CLASSES_V2) else without_w).append(backgrounds[s.id] == "water")
            rgb, bg = s.image().rgb.astype(int), s.mask == 0
            # the recorded texture is the one drawn: water is the blue one
            assert (rgb[..., 2][bg].mean() > rgb[..., 0][bg].mean() + 60) == (backgrounds[s.id] == "water")
    assert np.mean(with_w) > 0.88 and np.mean(without_w) < 0.08 and len(with_w) > 40
    held = VOCDataset(testbed_v2, "heldout")
    seen = set(VOCDataset(testbed_v2, "train").ids) | set(VOCDataset(testbed_v2, "val").ids)
    assert len(held) == 50 and not set(held.ids) & seen
    n_water_class = 0
    for s in held:
        has_water_class = bool(set(s.labels) & set(WATER_CLASSES_V2))
        n_water_class += has_water_class
        assert (backgrounds[s.id] == "water") != has_water_class  # flipped, every image
    assert n_water_class >= 10


def test_masks_boxes_and_parts_agree(testbed):
    ds = VOCDataset(testbed, "train")
    assert ds.class_names == CLASSES and len(ds) == 32 and len(VOCDataset(testbed, "val")) == 8
    for sample in ds:
        mask = sample.mask
        inst = np.asarray(Image.open(testbed / "SegmentationObject" / f"{sample.id}.png"))
        assert sorted({o.cls for o in sample.objects}) == sample.labels
        for i, obj in enumerate(sample.objects, start=1):
            ys, xs = np.nonzero(inst == i)
            assert obj.box == (xs.min(), ys.min(), xs.max(), ys.max())  # box = the visible instance's extent
            assert (mask[inst == i] == obj.cls + 1).all()
        parts = sample.parts
        assert ((parts > 0) == (mask > 0)).all()  # body + part = the object
        assert (parts == 2).sum() < (parts == 1).sum()  # parts are small
        assert sample.image().rgb.shape == (128, 128, 3)


def test_context_confounder_is_planted(tmp_path):
    root = tmp_path / "tb"
    generate(root, n=200, seed=2)
    meta = json.loads((root / "testbed.json").read_text())
    assert meta["water_classes"] == [CLASSES[i] for i in WATER_CLASSES]
    water_with, water_without = [], []
    for split in ("train", "val"):
        for s in VOCDataset(root, split):
            rgb = s.image().rgb.astype(int)
            bg = s.mask == 0
            is_water = (rgb[..., 2][bg].mean() > rgb[..., 0][bg].mean() + 60)  # blue background
            (water_with if set(s.labels) & set(WATER_CLASSES) else water_without).append(is_water)
    assert np.mean(water_with) > 0.7 and np.mean(water_without) < 0.15


def test_voc_reader_round_trip(tmp_path):
    """Hand-written VOC files (as another tool would write them) read back exactly."""
    root = tmp_path / "voc"
    for d in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    Image.new("RGB", (20, 10), (1, 2, 3)).save(root / "JPEGImages" / "x1.jpg")
    mask = np.zeros((10, 20), np.uint8)
    mask[2:5, 3:9] = 12  # VOC class 12 = dog (0-based 11)
    mask[2, 3] = 255
    png = Image.fromarray(mask, mode="P")
    png.putpalette(voc_palette())
    png.save(root / "SegmentationClass" / "x1.png")
    (root / "Annotations" / "x1.xml").write_text(
        "<annotation><object><name>dog</name><bndbox><xmin>4</xmin><ymin>3</ymin><xmax>9</xmax>"
        "<ymax>5</ymax></bndbox></object></annotation>")
    (root / "ImageSets/Segmentation/val.txt").write_text("x1\n")
    s = VOCDataset(root, "val")[0]
    assert s.labels == [11] and s.boxes(11) == [(3, 2, 8, 4)] and s.mask[2, 3] == 255
    assert VOCDataset(root, "val").class_names[11] == "dog"


def test_metrics_on_hand_made_masks():
    gt = np.zeros((4, 4), np.uint8)
    gt[:2, :2] = 1  # class 0 (value 1): 4 px
    gt[3, 3] = 255
    pred = np.zeros((4, 4), np.uint8)
    pred[:2, :3] = 1  # 6 px, 4 right
    conf = confusion(pred, gt, 2)
    assert conf.tolist() == [[9, 2], [0, 4]]  # void pixel left out
    ious = iou_from_confusion(conf)
    assert ious[1] == pytest.approx(4 / 6) and ious[0] == pytest.approx(9 / 11)
    assert box_iou((0, 0, 1, 1), (1, 1, 2, 2)) == pytest.approx(1 / 7)
    maps = np.array([[[0.9, 0.2]], [[0.1, 0.6]]], np.float32)  # two classes, 1 x 2 image
    assert seed_labels(maps, [3, 5], 0.5).tolist() == [[4, 6]]
    assert seed_labels(maps, [3, 5], 0.7).tolist() == [[4, 0]]
    assert 0.05 in THRESHOLDS and 0.95 in THRESHOLDS


def _deit_by_hand(deit, cat):
    """Each block's head-averaged softmax attention (197 x 197, recomputed here from q and k)
    and the final patch tokens (196 x D), without the engine's taps."""
    x = deit.preprocess(cat.rgb)
    m = deit.model
    attentions = []
    with torch.no_grad():
        t = m.patch_embed(x)
        t = m._pos_embed(t)
        t = m.norm_pre(t)
        for blk in m.blocks:
            y = blk.norm1(t)
            qkv = blk.attn.qkv(y).reshape(1, 197, 3, blk.attn.num_heads, -1).permute(2, 0, 3, 1, 4)
            q, k = qkv[0], qkv[1]
            a = (q * blk.attn.scale @ k.transpose(-2, -1)).softmax(-1)[0]  # heads x N x N
            attentions.append(a.mean(0))
            t = blk(t)
        tokens = m.norm(t)[0, 1:]  # 196 x D
    return attentions, tokens


def test_tscam_is_attention_times_token_logits_by_hand(deit, cat):
    ex = Explainer(deit)
    fwd = ex.forward(cat)
    target = int(fwd.probs.argmax())
    res = ex.compute(cat, "tscam", target)
    attentions, tokens = _deit_by_hand(deit, cat)
    attn_sum = torch.stack(attentions).sum(0)
    agnostic = attn_sum[0, 1:].reshape(14, 14)
    semantic = (tokens @ deit.model.head.weight[target]).reshape(14, 14)  # the linear head on each token, no bias
    assert torch.allclose(res.map, agnostic * semantic, atol=1e-4)
    assert res.approximate  # a class-token model: the token logits are an approximation


def test_rollout_rows_are_probabilities(deit, cat):
    res = Explainer(deit).compute(cat, "rollout")
    assert res.map.shape == (14, 14) and (res.map >= 0).all()
    assert 0 < float(res.map.sum()) < 1  # the class token's row, less its weight on itself


def test_rollout_is_the_product_of_attention_with_the_residual_by_hand(deit, cat):
    """Abnar & Zuidema: per block 0.5 A + 0.5 I (rows sum to 1 already, renormalised anyway),
    multiplied from the first block to the last; the class token's row to the patches."""
    attentions, _ = _deit_by_hand(deit, cat)
    eye = torch.eye(197)
    joint = eye
    for a in attentions:
        joint = (0.5 * a + 0.5 * eye) @ joint
    expected = joint[0, 1:].reshape(14, 14)
    res = Explainer(deit).compute(cat, "rollout")
    # A random ViT attends almost uniformly: the map's values are all ~0.005 and dropping the
    # residual moves them by ~1e-4 (2 %), while the two computations agree to ~3e-9.
    torch.testing.assert_close(res.map, expected, atol=1e-7, rtol=1e-5)


class _TokenBackbone:
    """A ViT-like backbone on a 1 x 2 patch grid with `prefix` class tokens before the patches."""

    def __init__(self, prefix):
        self.name, self.num_prefix_tokens = "tiny-vit", prefix

    def attentions_in_frame(self, atts):
        return torch.stack(atts)

    def to_spatial(self, t):
        return t[0, self.num_prefix_tokens :].transpose(0, 1).reshape(-1, 1, 2)


def _attention_context(prefix, attentions):
    from types import SimpleNamespace

    from cam_core.methods.base import MethodContext

    return MethodContext(SimpleNamespace(backbone=_TokenBackbone(prefix), attentions=attentions))


def test_rollout_renormalises_the_rows_and_reads_the_class_token_row():
    """One block, one head, class token + 2 patches, with rows that are not probabilities
    (sums 2, 4, 8). Class token's row: 0.5 [1, .5, .5] + 0.5 [1, 0, 0] = [1, .25, .25], renormalised
    by its sum 1.5: the patches get 1/6 each."""
    from cam_core.methods.attention import rollout

    a = torch.tensor([[1.0, 0.5, 0.5], [0.8, 2.4, 0.8], [0.8, 0.8, 6.4]])
    res = rollout(_attention_context(1, [a[None]]), 0)
    torch.testing.assert_close(res.map, torch.tensor([[1 / 6, 1 / 6]]))


def test_rollout_without_a_class_token_averages_the_tokens_rows():
    """No prefix token (two patches): the map is the mean of the joint attention's rows, i.e.
    how much attention each token receives on average, not the first token's row."""
    from cam_core.methods.attention import rollout

    a = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    res = rollout(_attention_context(0, [a[None]]), 0)  # 0.5 A + 0.5 I = [[.5, .5], [0, 1]]
    torch.testing.assert_close(res.map, torch.tensor([[0.25, 0.75]]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_rollout_stays_on_the_attentions_device():
    from cam_core.methods.attention import rollout

    a = torch.tensor([[1.0, 0.5, 0.5], [0.8, 2.4, 0.8], [0.8, 0.8, 6.4]], device="cuda")
    res = rollout(_attention_context(1, [a[None]]), 0)
    assert res.map.device.type == "cuda"
    torch.testing.assert_close(res.map.cpu(), torch.tensor([[1 / 6, 1 / 6]]))


def test_attention_methods_on_a_model_without_attention_maps_say_so():
    from cam_core.methods.attention import rollout
    from cam_core.methods.base import MethodError

    with pytest.raises(MethodError) as err:
        rollout(_attention_context(1, []), 0)
    assert str(err.value) == "tiny-vit gave no attention maps (not a ViT with timm attention blocks)"


def test_two_step_training_smoke_run_and_the_model_loads(testbed, tmp_path):
    from cam_core.backbones import load_testbed

    for arch in ("cnn", "vit"):
        out = tmp_path / f"m-{arch}"
        assert main(["testbed", "train", "--arch", arch, "--data", str(testbed), "--out", str(out),
                     "--max-steps", "2", "--epochs", "1", "--batch-size", "8", "--device", "cpu"]) == 0
        card = json.loads(out.with_suffix(".json").read_text())
        assert card["training"]["steps"] == 2 and card["data"]["seed"] == 5 and card["classes"] == list(CLASSES)
        bb = load_testbed(out)
        assert bb.num_classes == 8 and bb.input_size == (128, 128)
        ex = Explainer(bb)
        img = VOCDataset(testbed, "val")[0].image()
        methods = ["cam", "gradcam", "tscam", "rollout"] if arch == "vit" else ["cam", "gradcam", "sipe", "lpcam"]
        for m in methods:
            r = ex.compute(img, m)
            assert torch.isfinite(r.map).all(), (arch, m)
        if arch == "vit":
            assert bb.cam_exact and not ex.compute(img, "tscam").approximate  # TS-CAM head: exact maps
            logits = ex.forward(img).logits
            maps = bb.class_maps(ex.forward(img).head_features)
            assert torch.allclose(maps.mean(dim=(1, 2)), logits, atol=1e-5)  # logits = GAP of the maps


def test_evaluate_cli_on_a_tiny_testbed(testbed, tmp_path, capsys):
    model = tmp_path / "m"
    assert main(["testbed", "train", "--arch", "cnn", "--data", str(testbed), "--out", str(model),
                 "--max-steps", "3", "--epochs", "1", "--device", "cpu"]) == 0
    # register the trained file under a name for the CLI
    from cam_core import backbones

    backbones.register_backbone("tiny-testbed", "test", lambda: backbones.load_testbed(model))
    out = tmp_path / "results.csv"
    assert main(["evaluate", "--dataset", str(testbed), "--backbone", "tiny-testbed",
                 "--methods", "cam,lpcam,sipe", "--out", str(out), "--limit", "4"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("image,method,classes,top1,mIoU_at_best_t")
    assert sum(1 for line in lines if line.startswith("TOTAL")) == 3
    totals = json.loads(out.with_suffix(".json").read_text())
    for t in totals:
        assert 0 <= t["seed_mIoU"] <= 1 and t["images"] == 4 and "recall_body" in t and "per_class_IoU" in t
    assert "seed_mIoU" in capsys.readouterr().out
    backbones.BACKBONES.pop("tiny-testbed")
    # The energy pointing game column, against the same score worked out here from the maps
    epg = {row["method"]: float(row["energy_pointing_game"]) for row in csv.DictReader(lines) if row["image"] == "TOTAL"}
    assert epg == {t["method"]: t["energy_pointing_game"] for t in totals}
    for method in ("cam", "sipe"):
        by_hand = _energy_pointing_game_by_hand(backbones.load_testbed(model), VOCDataset(testbed, "val"), method, 4)
        assert epg[method] == pytest.approx(by_hand, abs=6e-5), method  # the CSV rounds to 4 places
    assert epg["cam"] < 0.4  # the boxes hold a quarter of CAM's energy (0.76 if their complement were scored)


def _energy_pointing_game_by_hand(backbone, dataset, method, limit):
    """Mean over (image, class with boxes) of the share of the min-max normalised map (the
    method's map, bilinear to the image, negatives as 0) that falls inside the class's boxes."""
    ex = Explainer(backbone)
    shares = []
    for sample in list(dataset)[:limit]:
        image = sample.image()
        for c in sample.labels:
            boxes = sample.boxes(c)
            if not boxes:
                continue
            params = {"labels": ",".join(map(str, sample.labels))} if method == "sipe" else None
            raw = ex.compute(image, method, c, params=params).map
            m = F.interpolate(raw[None, None].float(), size=image.size, mode="bilinear", align_corners=False)[0, 0]
            m = m.clamp_min(0).numpy().astype(np.float64)
            inside = np.zeros(m.shape, bool)
            for x1, y1, x2, y2 in boxes:
                inside[y1 : y2 + 1, x1 : x2 + 1] = True
            if m.max() == m.min():  # a constant map has no energy anywhere (normalised to zeros)
                shares.append(0.0)
                continue
            m = (m - m.min()) / (m.max() - m.min())
            shares.append(m[inside].sum() / m.sum())
    assert shares
    return float(np.mean(shares))


@pytest.mark.parametrize("name", ["testbed-cnn", "testbed-vit"])
def test_shipped_models_classify_a_fresh_testbed(name, testbed):
    """The checkpoints in assets were trained on seed 0; seed 5's images are new to them."""
    from cam_core import load_backbone
    from cam_core.testbed.train import evaluate_classifier, load_split

    bb = load_backbone(name)
    x = torch.cat([load_split(testbed, s)[0] for s in ("train", "val")])
    y = torch.cat([load_split(testbed, s)[1] for s in ("train", "val")])
    assert bb.num_classes == len(CLASSES) and bb.class_names == list(CLASSES)
    assert evaluate_classifier(bb.model, x, y)["mAP"] > 0.9


def test_tscam_beats_cam_on_tokens_with_the_shipped_vit(testbed):
    """The claim of the TS-CAM paper, on images the model never saw (seed mIoU, GT-known)."""
    from cam_core import load_backbone
    from cam_core.evaluate import evaluate

    ex = Explainer(load_backbone("testbed-vit"))
    ds = VOCDataset(testbed, "train")
    tscam, cam = evaluate(ds, ex, ["tscam", "cam"])
    assert tscam["seed_mIoU"] > cam["seed_mIoU"] + 0.03


def test_version_2_decoys_are_bodies_without_a_part_and_background_in_every_mask():
    """Decoys make 'a body is here' worthless to the classifier (the v2 partial-activation
    lever): painted over the texture, absent from every mask and from the objects."""
    from cam_core.testbed.generate import DECOYS_V2, _paint, draw_object_v2, texture

    rgb, cls_mask, inst_mask, part_mask, instances, _ = _paint(np.random.default_rng(5), "grass", [], 160,
                                                               draw_object_v2, decoys=2)
    plain = texture("grass", np.random.default_rng(5), 160)  # the same stream's texture, without decoys
    assert not instances and not cls_mask.any() and not inst_mask.any() and not part_mask.any()
    painted = (rgb != plain).any(axis=-1).mean()
    assert 0.05 < painted < 0.6  # two bodies of about 2,000-4,500 px each on 25,600 px
    # with one object of class 3: its mask holds its body and part only, the decoy stays background
    rgb1, cls1, _, part1, inst1, _ = _paint(np.random.default_rng(6), "sand", [3], 160, draw_object_v2, decoys=1)
    assert [i.cls for i in inst1] == [3] and set(np.unique(cls1)) == {0, 4} and set(np.unique(part1)) == {0, 1, 2}
    plain1 = texture("sand", np.random.default_rng(6), 160)
    assert ((rgb1 != plain1).any(axis=-1) & (cls1 == 0)).sum() > 1000  # the decoy, outside every mask
    assert DECOYS_V2[0] < 0.5  # most images hold a decoy


def test_version_2_records_its_decoys(testbed_v2):
    meta = json.loads((testbed_v2 / "testbed.json").read_text())
    assert meta["decoys"]["probabilities of 0, 1, 2 per image"] == [0.3, 0.4, 0.3]


def test_a_version_2_models_bank_regenerates_version_2_data():
    """LPCAM's default bank of a testbed model is its training data, regenerated from the
    card: a v2 card must regenerate v2 (it regenerated v1 before), v1 keeps its cache id."""
    from cam_core.backbones.sources.testbed import training_data_bank

    v1 = training_data_bank({"n": 1200, "seed": 0, "train": 960, "val": 240})
    v2 = training_data_bank({"n": 1200, "seed": 0, "train": 960, "val": 240, "version": 2, "heldout": 240})
    assert v1.data_id == "testbed-n1200-seed0-val0.2" and v1.generate.keywords["version"] == 1
    assert v2.data_id == "testbed-n1200-seed0-val0.2-v2" and v2.generate.keywords["version"] == 2
    assert "version 2" in v2.name and v1.name == "testbed train split (n 1200, seed 0)"

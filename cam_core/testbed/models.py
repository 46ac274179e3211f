"""The small models trained on the testbed: a timm ResNet, a timm ViT with a TS-CAM head, and
CI-CAM networks on the ResNet (cicam.py)."""

from __future__ import annotations

import torch
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

INPUT_SIZE = 128
MEAN = STD = (0.5, 0.5, 0.5)

CNN_CONFIG = {"layers": [1, 1, 1, 1], "channels": [32, 64, 128, 256], "stem_width": 32, "output_stride": 8}
VIT_CONFIG = {"img_size": INPUT_SIZE, "patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 4, "mlp_ratio": 2.0}


class TSCAMViT(VisionTransformer):
    """A timm VisionTransformer whose head is TS-CAM's (Gao et al., ICCV 2021): a 3x3 conv on
    the grid of patch tokens (after the final norm) gives one semantic map per class, and the
    logits are their global average. The class token stays: its attention row is TS-CAM's
    semantic-agnostic map."""

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(num_classes=num_classes, global_pool="", class_token=True, **kwargs)
        self.head = nn.Conv2d(self.embed_dim, num_classes, kernel_size=3, padding=1)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def semantic_maps(self, tokens: torch.Tensor) -> torch.Tensor:
        """B x N x D normed tokens -> B x K x h x w."""
        patch = tokens[:, self.num_prefix_tokens:]
        gh, gw = self.patch_embed.grid_size
        grid = patch.transpose(1, 2).reshape(patch.shape[0], patch.shape[2], gh, gw)
        return self.head(grid)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.semantic_maps(x).mean(dim=(2, 3))

    def get_classifier(self) -> nn.Module:
        return self.head


def build_model(arch: str, num_classes: int, config: dict | None = None) -> nn.Module:
    if arch == "cnn":
        cfg = {**CNN_CONFIG, **(config or {})}
        return ResNet(BasicBlock, tuple(cfg["layers"]), num_classes=num_classes, channels=tuple(cfg["channels"]),
                      stem_width=cfg["stem_width"], output_stride=cfg["output_stride"])
    if arch == "vit":
        cfg = {**VIT_CONFIG, **(config or {})}
        return TSCAMViT(num_classes=num_classes, **cfg)
    if arch in ("ci-cam", "kd-ci-cam"):  # the student is a CI-CAM network too
        from .cicam import CICAM

        return CICAM(num_classes, config)
    raise ValueError(f"arch must be 'cnn', 'vit', 'ci-cam' or 'kd-ci-cam', got {arch!r}")

"""timm models as Backbones: what timm declares (preprocessing, output format, prefix tokens,
patch grid, feature_info stages, attention modules, fixed input size) handed to
:meth:`Backbone.from_module`, which reads each layer's layout and checks the head (see
layouts.py and heads.py); then the timm-specific choices: the default layer of class-token
models, SIPE's stages, the attention maps kept for TS-CAM and rollout.

How the families come out (random weights, tests/test_zoo.py):

* CNNs (ResNet, EfficientNet, RegNet, DenseNet, Inception, ConvNeXt, MobileViT, FastViT,
  CoAtNet, MaxViT): NCHW features; ConvNeXt and MaxViT's LayerNorm/MLP layers inside blocks
  are channels-last, read as such.
* Swin: NHWC everywhere (``output_fmt``), its block norms' 3-d outputs as tokens without prefix.
* ViT, DeiT, BEiT, EVA: tokens after ``num_prefix_tokens`` class/register tokens; DeiT
  distilled has two (class + distillation).
* CaiT, ConViT: the class token joins late; layers before it have no prefix, layers after
  have one. CaiT's default layer is the output of its last patch block (the patches both
  class-attention blocks read); other class-token models use the input of the last block's
  attention, where the patches still reach the class token.
* LeViT (tokens only, grid 14 -> 7 -> 4) and EfficientFormer (NCHW stages, then tokens):
  hybrid stages, each layer with its own layout; distillation heads averaged.
* Heads: see heads.py; MobileNetV3, VGG and MaxViT's tf variants are refused for CAM-like
  methods.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .backbone import FEATURES, Backbone, BackboneError
from .names import class_names_for
from .registry import BACKBONES


def check_arch(arch: str) -> None:
    import timm

    if not timm.is_model(arch):
        raise BackboneError(
            f"unknown backbone '{arch}': not a registered backbone ({', '.join(BACKBONES)}) and not a timm model name"
        )


def wrap_timm(
    model: nn.Module,
    name: str,
    source: str,
    class_names: list[str] | None = None,
    data_config: dict | None = None,
    channels_last: bool = True,
) -> Backbone:
    """Build a Backbone around a timm model: preprocessing from its pretrained config (or
    `data_config`: input_size, mean, std, interpolation), layouts and head from the model."""
    if data_config is None:
        from timm.data import resolve_data_config

    cfg = data_config or resolve_data_config({}, model=model)
    _, h, w = cfg["input_size"]
    built_for = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if data_config is None and built_for is not None and _fixed_input_size(model):
        h, w = built_for  # built with img_size=...: its pretrained config still says the default
    bb = Backbone.from_module(
        model,
        input_size=(int(h), int(w)),
        mean=cfg["mean"],
        std=cfg["std"],
        interpolation=str(cfg.get("interpolation", "bicubic")),
        name=name,
        source=source,
        class_names=class_names,
        output_fmt=getattr(model, "output_fmt", None),
        num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 0) or 0),
        grids=_declared_grids(model, int(h), int(w)),
        fixed_input_size=_fixed_input_size(model),
        attention_layers=tuple(n for n, m in model.named_modules()
                               if n.endswith("attn.attn_drop") and isinstance(m, nn.Dropout)),
    )
    if class_names is None:
        bb.class_names = class_names_for(bb.num_classes)
    if bb.head is not None and bb.head.reads == "prefix":
        layer = _token_head_layer(model)
        if layer in bb.layouts:
            bb.default_layer = layer
    bb.stage_layers = _stage_layers(model, bb.kind, bb.layouts)
    if bb.layouts[FEATURES].kind == "NCHW" and channels_last:
        # Measured on the 2-core CPU: EfficientNet-Lite0 forward 50 -> 35 ms in channels-last.
        model.to(memory_format=torch.channels_last)
    return bb


def _declared_grids(model: nn.Module, h: int, w: int) -> tuple[tuple[int, int], ...]:
    """The spatial grids timm declares: the patch grid and one per feature_info stride."""
    grids = []
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is not None:
        grids.append((int(grid[0]), int(grid[1])))
    for info in getattr(model, "feature_info", None) or []:
        r = info.get("reduction") if isinstance(info, dict) else None
        if r and r > 1:
            grids += [(math.ceil(h / r), math.ceil(w / r)), (h // r, w // r)]
    return tuple(grids)


def _fixed_input_size(model: nn.Module) -> bool:
    """Built for one input size: timm's config says so (attention biases, windows) or the
    patch embedding is strict, unless the model was built with dynamic_img_size."""
    if getattr(model, "dynamic_img_size", False):
        return False
    cfg = getattr(model, "pretrained_cfg", None) or {}
    strict = getattr(getattr(model, "patch_embed", None), "strict_img_size", False)
    return bool(cfg.get("fixed_input_size", False) or strict)


def _token_head_layer(model: nn.Module) -> str | None:
    """Where the patch tokens still reach a class-token head: with class-attention blocks
    (CaiT) the output of the last patch block, which both of them read; else the input of
    the last block's attention (the final patch tokens never reach the class token)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not len(blocks):
        return None
    if getattr(model, "blocks_token_only", None) is not None:
        return f"blocks.{len(blocks) - 1}"
    return f"blocks.{len(blocks) - 1}.norm1"


def _stage_layers(model: nn.Module, kind: str, layouts: dict) -> tuple[str, ...]:
    """SIPE's four stages: for a CNN the three stages before the last of timm's feature_info
    (strides 4, 8, 16 on a standard net; dilated nets keep their finer strides) plus the
    classifier's input; for a ViT three evenly spaced blocks plus the final normed tokens.
    Only stages with a spatial layout."""
    info = [f["module"] for f in getattr(model, "feature_info", [])]
    if kind == "vit":
        blocks = info or [f"blocks.{i}" for i in range(len(getattr(model, "blocks", [])))]
        n = len(blocks)
        chosen = [blocks[max(0, n * q // 4 - 1)] for q in (1, 2, 3)] if n >= 3 else blocks
    else:
        chosen = info[1:-1][-3:]
    return tuple(n for n in dict.fromkeys(chosen) if n in layouts) + (FEATURES,)


__all__ = ["check_arch", "wrap_timm"]

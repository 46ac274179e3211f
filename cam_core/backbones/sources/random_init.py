"""random:<timm arch>: a randomly initialised timm model, seeded, no download."""

from __future__ import annotations

from pathlib import Path

import torch

from ..backbone import Backbone
from ..names import class_names_for
from ..registry import register_scheme
from ..timm_adapter import check_arch, wrap_timm


def build_random(arch: str, num_classes: int | None = None, seed: int = 0,
                 class_names: str | Path | None = None) -> Backbone:
    """Random-init timm model (no download): seeded so that tests and repeated runs agree."""
    import timm

    check_arch(arch)
    kwargs = {"num_classes": num_classes} if num_classes else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(arch, pretrained=False, **kwargs)
    bb = wrap_timm(model, f"random:{arch}", f"random initialisation of timm {arch} (seed {seed}), no training")
    if class_names is not None:
        bb.class_names = class_names_for(bb.num_classes, class_names)
    return bb


register_scheme("random", lambda arch, *, num_classes=None, class_names=None, **_: build_random(
    arch, num_classes, class_names=class_names))

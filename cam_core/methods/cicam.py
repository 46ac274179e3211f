"""CI-CAM (Shao et al., ACM MM 2021; KD-CI-CAM, 2023): the causal-intervention branch's map of
a CI-CAM network (cam_core/testbed/cicam.py). Not a post-hoc method: it needs a model trained
with the class-CAM dictionary, so it applies only to such backbones."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from .base import NEEDS_HEAD, MethodContext, MethodOutput, MethodSpec, Param, register


def is_cicam_model(model) -> bool:
    """Whether `model` is a CI-CAM network. Without importing cam_core.testbed.cicam, which
    imports timm (~1.6 s of the app's start, see backbones/efficientnet_lite.py): a CI-CAM
    model exists only once that module has been imported."""
    module = sys.modules.get(f"{__package__.rpartition('.')[0]}.testbed.cicam")
    return module is not None and isinstance(model, module.CICAM)


def cicam(ctx: MethodContext, target: int, mode: str = "class") -> MethodOutput:
    """class: ReLU(W_down,c . (F + A F)), the down branch's CAM of the class (the backbone's
    features are the down branch's, so this is CAM on them). combination: the official
    localisation map, the down CAMs of all classes ranked by score and combined
    (quadratic weights, the top class's weight 0), minus the minimum: class-agnostic."""
    from ..testbed.cicam import combination_map

    maps = ctx.backbone.class_maps(ctx.fwd.head_features)  # K x h x w
    if mode == "class":
        return MethodOutput(torch.relu(maps[target]))
    combined = combination_map(maps[None].float(), ctx.fwd.logits[None].float())[0]
    return MethodOutput(combined, note="combinational CAM (class-agnostic, as the official localisation)")


@dataclass(frozen=True)
class _CICAMSpec(MethodSpec):
    def refusal(self, backbone) -> str | None:
        if not is_cicam_model(getattr(backbone, "model", None)):
            return (f"{self.label} does not apply to {backbone.name}: it reads the causal-intervention branch of a "
                    "CI-CAM network (the backbones testbed2-ci-cam and testbed2-kd-ci-cam)")
        return super().refusal(backbone)


register(_CICAMSpec(
    name="cicam", label="CI-CAM", fn=cicam, needs=frozenset({NEEDS_HEAD}), kinds=("cnn",),
    params=(Param("mode", "class", "class: the down branch's CAM of the class; combination: the official "
                  "class-agnostic combinational CAM", choices=("class", "combination")),),
    description="The down (causal-intervention) branch's CAM of a CI-CAM or KD-CI-CAM network: features "
                "re-weighted by an attention made from the class-CAM dictionary entry of the top-1 class.",
    reference="Shao et al., ACM MM 2021 (CI-CAM); Shao et al. 2023 (KD-CI-CAM)",
))

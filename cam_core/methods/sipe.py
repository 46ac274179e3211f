"""SIPE / IS-CAM (Chen et al., CVPR 2022; official chenqi1126/SIPE, network/resnet50_SIPE.py).

With a pretrained classifier there are no trained side convolutions: the stage outputs
themselves are L2-normalised per pixel, resized to the stride-16 grid and concatenated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import NEEDS_HEAD, MethodContext, MethodError, MethodOutput, MethodSpec, Param, register


def hierarchical_features(stages: list[torch.Tensor]) -> torch.Tensor:
    """Concatenation of the per-pixel L2-normalised stages, resized (bilinear) to the grid of
    the second-deepest stage (stride 16 on CNNs): C_total x H x W."""
    grid = stages[-2].shape[-2:] if len(stages) > 1 else stages[-1].shape[-2:]
    parts = []
    for s in stages:
        s = F.normalize(s.float(), dim=0, eps=1e-5)
        parts.append(F.interpolate(s[None], size=grid, mode="bilinear", align_corners=False)[0])
    return torch.cat(parts, dim=0)


def iou_seeds(features: torch.Tensor, cams: torch.Tensor, bg_factor: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """SIPE's seed rule. features: C x N (any scale), cams: M x N with row 0 the background.
    Structure map S_i(j) = ReLU(cos(f_i, f_j)); IoU_c(i) = sum S_i M_c / (sum S_i + sum M_c -
    sum S_i M_c); the background's IoU times bg_factor; seed = argmax. Returns (seed labels N,
    IoU M x N)."""
    f = F.normalize(features.float(), dim=0, eps=1e-5)
    structure = torch.relu(f.T @ f)  # N x N
    inter = cams @ structure.T  # M x N: sum_j S_i(j) M_c(j)
    union = structure.sum(dim=1)[None, :] + cams.sum(dim=1, keepdim=True) - inter
    iou = inter / union.clamp_min(1e-12)
    iou[0] = iou[0] * bg_factor
    return iou.argmax(dim=0), iou


def seed_prototypes(features: torch.Tensor, seeds: torch.Tensor, n: int) -> torch.Tensor:
    """Mean feature of each seed region (zeros where a label has no pixel): n x C."""
    c = features.shape[0]
    flat = features.reshape(c, -1).float()
    sums = torch.zeros(n, c, device=flat.device).index_add_(0, seeds, flat.T)
    counts = torch.bincount(seeds, minlength=n).clamp_min(1).to(flat.dtype)
    return sums / counts[:, None]


def _labels(fwd, target: int, classes: int, labels: str) -> list[int]:
    """The image's classes, target first: given explicitly (e.g. ground truth), or the target
    plus the next best predictions."""
    if labels.strip():
        try:
            given = [int(v) for v in labels.replace(" ", "").split(",") if v]
        except ValueError:
            raise MethodError(f"labels must be class ids separated by commas, got {labels!r}") from None
        n = fwd.probs.numel()
        if any(not 0 <= v < n for v in given):
            raise MethodError(f"labels must be class ids in 0..{n - 1}, got {labels!r}")
        return [target, *[v for v in dict.fromkeys(given) if v != target]]
    others = [int(i) for i in fwd.probs.topk(min(classes + 1, fwd.probs.numel())).indices if int(i) != target]
    return [target, *others[: classes - 1]]


def sipe(ctx: MethodContext, target: int, bg_factor: float = 0.5, classes: int = 1, labels: str = "") -> MethodOutput:
    fwd, bb = ctx.fwd, ctx.backbone
    stages = [fwd.stages[name] for name in bb.stage_layers if name in fwd.stages]
    hie = hierarchical_features(stages)
    _, h, w = hie.shape
    labels = _labels(fwd, target, classes, labels)
    cam = torch.relu(bb.class_maps(fwd.head_features, labels))
    cam = cam / cam.amax(dim=(1, 2), keepdim=True).clamp_min(1e-5)
    bg = 1 - cam.max(dim=0, keepdim=True).values
    norm_cam = torch.cat([bg, cam])
    norm_cam = F.interpolate(norm_cam[None], size=(h, w), mode="bilinear", align_corners=True)[0]
    seeds, iou = iou_seeds(hie.reshape(hie.shape[0], -1), norm_cam.reshape(len(labels) + 1, -1), bg_factor)
    protos = seed_prototypes(hie, seeds, len(labels) + 1)
    flat = F.normalize(hie.reshape(hie.shape[0], -1), dim=0, eps=1e-5)
    is_cam = torch.relu(F.normalize(protos, dim=1, eps=1e-5) @ flat).reshape(-1, h, w)
    extras = {
        "seeds": seeds.reshape(h, w),  # 0 = background, 1 = target, 2.. = the other classes
        "labels": ["background", *labels],
        "is_cam": is_cam,  # one map per label, background first
        "prototypes": protos,
        "hierarchical": hie,
        "cam": norm_cam,
    }
    return MethodOutput(is_cam[1], extras)


register(MethodSpec(
    "sipe", "SIPE (IS-CAM)", sipe,
    "Image-specific prototypes: seeds by the IoU between each pixel's structure map (cosine to all "
    "pixels in hierarchical features) and the CAMs, then cosine to the mean feature of each seed region.",
    frozenset({NEEDS_HEAD}),
    (
        Param("bg_factor", 0.5, "The background's IoU is multiplied by this (0.5 in the official code).",
              0.0, 2.0, 0.05),
        Param("classes", 1, "How many top predictions count as the image's classes.", 1, 5, 1),
        Param("labels", "", "The image's classes as comma-separated ids (e.g. its ground truth); "
              "overrides `classes`."),
    ),
    reference="Chen et al., CVPR 2022",
))

"""SIPE / IS-CAM (Chen et al., CVPR 2022; official chenqi1126/SIPE, network/resnet50_SIPE.py
and make_cam.py).

As the official inference: at each scale the image and its mirror go through the network,
their CAMs and hierarchical features are summed (the mirror's flipped back), seeds and
prototypes are found on that sum, and the IS-CAMs of the scales (1, 0.5, 1.5, 2), resized to
the input, are summed. Where this differs from the official code, it says so in the note:
- With a pretrained classifier there are no trained side convolutions: the stage outputs
  themselves are L2-normalised per pixel, resized to the stride-16 grid and concatenated.
- The seed argmax runs over the background and the image's classes only. The official code
  takes it over all classes of its 20-class head, then drops pixels won by an absent class;
  on a 1000-class head near-synonyms of the class (tabby / tiger cat) would win most pixels.
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


SCALES = (1.0, 0.5, 1.5, 2.0)  # the official make_cam.py scales, each with its mirror image


def _is_cam_at(ctx: MethodContext, scale: float, labels: list[int], bg_factor: float) -> dict:
    """One scale of the official inference: image + mirror summed, then seeds, prototypes and
    IS-CAMs (M x h x w on the stride-16 grid, background first)."""
    bb = ctx.backbone
    views = [ctx.fwd.stages_at(scale, flip) for flip in (False, True)]
    hie = sum(hierarchical_features([v[n] for n in bb.stage_layers if n in v]) for v in views)
    cam = torch.relu(sum(bb.class_maps(v["features"], labels) for v in views))
    _, h, w = hie.shape
    cam = cam / cam.amax(dim=(1, 2), keepdim=True).clamp_min(1e-5)
    bg = 1 - cam.max(dim=0, keepdim=True).values
    norm_cam = torch.cat([bg, cam])
    norm_cam = F.interpolate(norm_cam[None], size=(h, w), mode="bilinear", align_corners=True)[0]
    seeds, iou = iou_seeds(hie.reshape(hie.shape[0], -1), norm_cam.reshape(len(labels) + 1, -1), bg_factor)
    protos = seed_prototypes(hie, seeds, len(labels) + 1)
    flat = F.normalize(hie.reshape(hie.shape[0], -1), dim=0, eps=1e-5)
    is_cam = torch.relu(F.normalize(protos, dim=1, eps=1e-5) @ flat).reshape(-1, h, w)
    return {"seeds": seeds.reshape(h, w), "is_cam": is_cam, "prototypes": protos, "hierarchical": hie,
            "cam": norm_cam}


def sipe(ctx: MethodContext, target: int, bg_factor: float = 0.5, classes: int = 1, labels: str = "",
         multiscale: bool = True) -> MethodOutput:
    labels = _labels(ctx.fwd, target, classes, labels)
    fixed = ctx.backbone.fixed_input_size  # a ViT built for one input size keeps it
    scales = SCALES if multiscale and not fixed else (1.0,)
    first = _is_cam_at(ctx, scales[0], labels, bg_factor)
    if len(scales) == 1:
        is_cam = first["is_cam"]
    else:
        size = ctx.fwd.input.shape[-2:]
        is_cam = sum(F.interpolate(r["is_cam"][None], size=size, mode="bilinear", align_corners=False)[0]
                     for r in [first, *(_is_cam_at(ctx, s, labels, bg_factor) for s in scales[1:])])
    extras = {
        **first,  # seeds, prototypes, hierarchical features and CAMs at scale 1 (the image's own grid)
        "is_cam": is_cam,  # one map per label, background first (summed over scales)
        "labels": ["background", *labels],  # seeds: 0 = background, 1 = target, 2.. = the other classes
    }
    seeded = float((first["seeds"] > 0).float().mean())
    how = ("4 scales x (image + mirror), as the official code" if len(scales) > 1 else
           "1 scale x (image + mirror)" + ("; this ViT takes one input size, the official code uses 4 scales"
                                           if multiscale else ""))
    note = (f"{how}; seed argmax over the background and the image's {len(labels)} class(es), not all classes; "
            f"{seeded:.0%} of the scale-1 grid seeded as a class")
    return MethodOutput(is_cam[1], extras, note)


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
        Param("multiscale", True, "Sum the IS-CAMs of scales 1, 0.5, 1.5, 2 (each with its mirror image), as the "
              "official code; off: scale 1 with its mirror (faster)."),
    ),
    reference="Chen et al., CVPR 2022",
))

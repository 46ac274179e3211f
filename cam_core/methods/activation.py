"""Gradient-free methods on the cached forward pass: CAM and Eigen-CAM."""

from __future__ import annotations

import torch

from .base import NEEDS_HEAD, MethodContext, MethodOutput, MethodSpec, register


def cam(ctx: MethodContext, target: int) -> MethodOutput:
    """Zhou et al. 2016: ReLU(sum_k w_c[k] F_k) on the features the classifier pools (with a
    TS-CAM conv head: the head's own map of the class)."""
    return MethodOutput(torch.relu(ctx.backbone.class_maps(ctx.fwd.head_features, target)))


def eigencam(ctx: MethodContext, target: int) -> MethodOutput:
    """Projection of the centred features on their first principal direction. The sign of
    an SVD is arbitrary: it is chosen so that the map correlates positively with the
    summed activation (objects are where the features fire), then ReLU."""
    acts = ctx.activations.float()
    c, h, w = acts.shape
    x = acts.reshape(c, h * w).T
    x = x - x.mean(dim=0, keepdim=True)
    if not torch.any(x):
        return MethodOutput(torch.zeros(h, w, device=acts.device), note="constant features: no principal direction")
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    proj = x @ vh[0]
    energy = acts.sum(0).reshape(-1)
    if torch.dot(proj, energy - energy.mean()) < 0:
        proj = -proj
    return MethodOutput(torch.relu(proj).reshape(h, w))


register(MethodSpec(
    name="cam", label="CAM", fn=cam, needs=frozenset({NEEDS_HEAD}),
    description="Class activation map: the classifier row of the class applied to every pixel of the pooled features. One matmul.",
    reference="Zhou et al., CVPR 2016",
))
register(MethodSpec(
    name="eigencam", label="Eigen-CAM", fn=eigencam, class_specific=False,
    description="First principal component of the layer's features (class-agnostic).",
    reference="Muhammad & Yeasin, IJCNN 2020",
))

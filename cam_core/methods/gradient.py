"""Gradient methods. All share one forward and ONE gradient dF = d y_c / d F per class
(see engine.py); each only decides how to weigh the activations."""

from __future__ import annotations

import torch

from .base import NEEDS_GRADIENT, MethodContext, MethodOutput, MethodSpec, register


def _weighted(weights: torch.Tensor, acts: torch.Tensor) -> MethodOutput:
    return MethodOutput(torch.relu(torch.einsum("c,chw->hw", weights, acts)))


def gradcam(ctx: MethodContext, target: int) -> MethodOutput:
    acts, grad = ctx.activations, ctx.gradient(target)
    return _weighted(grad.mean(dim=(1, 2)), acts)


def gradcampp(ctx: MethodContext, target: int) -> MethodOutput:
    # Closed form under an exponential score (Chattopadhay et al., eq. 19), as both
    # anchor libraries use it; eps and the g != 0 guard avoid 0/0.
    acts, grad = ctx.activations, ctx.gradient(target)
    g2 = grad * grad
    g3 = g2 * grad
    sum_acts = acts.sum(dim=(1, 2), keepdim=True)
    alpha = g2 / (2 * g2 + sum_acts * g3 + 1e-6)
    alpha = torch.where(grad != 0, alpha, torch.zeros_like(alpha))
    return _weighted((torch.relu(grad) * alpha).sum(dim=(1, 2)), acts)


def xgradcam(ctx: MethodContext, target: int) -> MethodOutput:
    acts, grad = ctx.activations, ctx.gradient(target)
    sum_acts = acts.sum(dim=(1, 2), keepdim=True)
    return _weighted((grad * acts / (sum_acts + 1e-7)).sum(dim=(1, 2)), acts)


def layercam(ctx: MethodContext, target: int) -> MethodOutput:
    acts, grad = ctx.activations, ctx.gradient(target)
    return MethodOutput(torch.relu((torch.relu(grad) * acts).sum(dim=0)))


def hirescam(ctx: MethodContext, target: int) -> MethodOutput:
    acts, grad = ctx.activations, ctx.gradient(target)
    return MethodOutput(torch.relu((grad * acts).sum(dim=0)))


_G = frozenset({NEEDS_GRADIENT})
register(MethodSpec("gradcam", "Grad-CAM", gradcam, "Channel weights = spatial mean of the gradient.", _G,
                    reference="Selvaraju et al., ICCV 2017"))
register(MethodSpec("gradcampp", "Grad-CAM++", gradcampp,
                    "Channel weights = positive gradients weighted by the closed-form alpha of Grad-CAM++.", _G,
                    reference="Chattopadhay et al., WACV 2018"))
register(MethodSpec("xgradcam", "XGrad-CAM", xgradcam,
                    "Channel weights = activation-weighted sum of the gradient (axiom-based).", _G,
                    reference="Fu et al., BMVC 2020"))
register(MethodSpec("layercam", "LayerCAM", layercam,
                    "Element-wise positive gradient times activation; works on early layers too.", _G,
                    reference="Jiang et al., TIP 2021"))
register(MethodSpec("hirescam", "HiResCAM", hirescam,
                    "Element-wise gradient times activation, summed over channels.", _G,
                    reference="Draelos & Carin, 2020"))

"""The classifier as a map of the features it reads, or the one sentence saying why there is none.

CAM, LPCAM and SIPE need the class score of every feature vector: a K x C matrix W (and bias
b) with logit = W . pool(features) + b. timm's heads take many shapes; each candidate reading
below is CHECKED against the model's own ``forward_head`` on two feature tensors (the probe
image's and a random one) before it is used, so a head that is something else is refused,
never explained with the wrong W:

* ``mean``: global average pooling then the classifier (ResNet, EfficientNet, Swin, BEiT-less
  ViTs with ``global_pool='avg'``, LeViT and EfficientFormer). Several classifiers (LeViT's and
  EfficientFormer's distillation heads) are averaged, as the model does at inference, and each
  is read as the affine map it is in eval mode (LeViT's BatchNorm1d + Linear included).
  CAM is exact: the map's mean is the logit minus the bias.
* ``mean+norm``: pooling, then a LayerNorm, then the classifier (ConvNeXt, BEiT's fc_norm).
  With p the pooled vector, logit = W(g * (p - mean p) / s + beta) + b, s = sqrt(var p + eps):
  W' = W diag(g) (I - 11^T/C) is linear in the features and the map's mean is (logit - b') s,
  the same positive factor for every class. CAM is exact up to that factor.
* ``prefix``: the classifier reads the class token (DeiT, CaiT, ConViT), or the class and
  distillation tokens with one head each (DeiT distilled, heads averaged). The patch tokens
  never reach it: W applied to them is the usual approximation (``exact`` False).
* ``conv``: a convolution on the feature grid whose maps are averaged into the logits
  (TS-CAM's head): the head's own maps, exact.

Anything else (MobileNetV3's conv_head + Hardswish after pooling, VGG's ConvMlp, MaxViT's
Linear + Tanh pre-logits) is refused, naming the modules in the way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .layouts import TOKENS, Layout

# Modules in a head that change nothing a linear map cares about (at inference).
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Flatten)


@dataclass(frozen=True)
class Head:
    """The classifier as a map of the FEATURES grid."""

    weight: torch.Tensor  # K x C class centres (linear), or the conv weight (conv)
    bias: torch.Tensor | None
    reads: str  # "mean", "mean+norm", "prefix" or "conv"
    exact: bool  # the class map adds up to the logit (up to a positive per-image factor)
    conv: nn.Conv2d | None = None

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    def to(self, device: torch.device | str) -> Head:
        """Derived tensors (folded, averaged) moved; the classifier's own parameters move with the model."""
        def move(t):
            return t if t is None or isinstance(t, nn.Parameter) else t.to(device)

        return replace(self, weight=move(self.weight), bias=move(self.bias))

    def describe(self) -> str:
        return {
            "mean": "global average pooling + linear: CAM exact",
            "mean+norm": "pooling + LayerNorm + linear, the norm folded into W: CAM exact up to a per-image factor",
            "prefix": "reads the class (and distillation) token: W on the patch tokens approximates",
            "conv": "a convolution whose maps are averaged: the head's own maps",
        }[self.reads]

    def class_maps(self, features: torch.Tensor, classes=None) -> torch.Tensor:
        """K x h x w (the classes asked for; h x w for one int) from C x h x w features."""
        feats = features.float()
        if self.conv is not None:
            c = self.conv
            maps = F.conv2d(feats[None], c.weight.float(), None if c.bias is None else c.bias.float(),
                            c.stride, c.padding, c.dilation, c.groups)[0]
            return maps if classes is None else maps[classes]
        weight = self.weight.float() if classes is None else self.weight[classes].float()
        weight = weight.to(feats.device)
        if weight.dim() == 1:
            return torch.einsum("c,chw->hw", weight, feats)
        return torch.einsum("kc,chw->khw", weight, feats)


def from_classifier(module: nn.Module) -> Head:
    """A Head from a Linear or Conv2d classifier taken at its word (no check): for Backbones
    built by hand around a model whose head is known to be GAP + that layer."""
    if isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1):
        return Head(module.weight, module.bias, "conv", True, module)
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return Head(module.weight.reshape(module.weight.shape[0], -1), module.bias, "mean", True)
    raise TypeError(f"the classifier is {type(module).__name__}, not a linear or conv layer")


def analyse(model: nn.Module, features: torch.Tensor, logits: torch.Tensor, executed: list[tuple[str, nn.Module]],
            layout: Layout) -> tuple[Head | None, str | None]:
    """(Head, None) when one reading of the module docstring reproduces the model's logits,
    else (None, the reason as a clause: "its head applies ... "). `features` and `logits`:
    forward_features and forward_head of a probe image; `executed`: the leaf modules
    forward_head ran (see layouts.probe)."""
    found = model.get_classifier()
    classifiers = tuple(found) if isinstance(found, (tuple, list)) else (found,)
    gen = torch.Generator(device="cpu").manual_seed(0)
    other = (torch.randn(features.shape, generator=gen) * features.float().std().clamp_min(1e-3)).to(features)
    checks = [(features, logits[0].float()), (other, _logits(model, other))]

    if len(classifiers) == 1 and isinstance(classifiers[0], nn.Conv2d) and classifiers[0].kernel_size != (1, 1):
        head = from_classifier(classifiers[0])
        if all(_close(head.class_maps(layout.to_spatial(f)).mean(dim=(1, 2)), logits) for f, logits in checks):
            return head, None
        return None, _refusal(model, executed, classifiers, None)

    affine = [_affine(m, layout.channels) for m in classifiers]
    if any(a is None for a in affine):
        return None, _refusal(model, executed, classifiers, None)
    if len(affine) == 1:
        weight, bias = affine[0]
    else:  # distillation heads: the model predicts with their average
        weight = torch.stack([w.float() for w, _ in affine]).mean(dim=0)
        bias = torch.stack([b.float() for _, b in affine]).mean(dim=0)

    def pooled(f):
        return layout.to_spatial(f).float().mean(dim=(1, 2))

    def heads_on(vectors):  # the classifiers averaged, each on its own vector
        return torch.stack([w.float() @ v.to(w.device) + b.float() for (w, b), v in zip(affine, vectors)]).mean(dim=0)

    if all(_close(heads_on([pooled(f)] * len(affine)), logits) for f, logits in checks):
        return Head(weight, bias, "mean", True), None
    norm = next((m for _, m in executed if isinstance(m, nn.LayerNorm) and tuple(m.normalized_shape) == (layout.channels,)),
                None)
    if norm is not None:
        def normed(f):
            p = pooled(f)
            return F.layer_norm(p, (p.numel(),), norm.weight, norm.bias, norm.eps)

        if all(_close(heads_on([normed(f)] * len(affine)), logits) for f, logits in checks):
            c = layout.channels
            gamma = norm.weight.float() if norm.weight is not None else torch.ones(c)
            beta = norm.bias.float() if norm.bias is not None else torch.zeros(c)
            centre = torch.eye(c, device=gamma.device) - 1.0 / c
            return Head((weight.float() * gamma) @ centre, weight.float() @ beta + bias.float(), "mean+norm", True), None
    if layout.kind == TOKENS and layout.prefix >= len(affine):
        if all(_close(heads_on([f[0, i].float() for i in range(len(affine))]), logits) for f, logits in checks):
            return Head(weight, bias, "prefix", False), None
    return None, _refusal(model, executed, classifiers, norm)


def _logits(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_head(features)[0].float()


def _close(pred: torch.Tensor, logits: torch.Tensor) -> bool:
    if pred.shape != logits.shape:
        return False
    # NaN where the logits are NaN counts as agreement: a checkpoint of NaN weights is the same
    # head, and the engine reports its non-finite output per image (not a refused head).
    scale = torch.nan_to_num(logits, nan=0.0, posinf=0.0, neginf=0.0).abs().max().clamp_min(1e-6)
    return bool(torch.isclose(pred.to(logits), logits, rtol=0.0, atol=float(1e-3 * scale), equal_nan=True).all())


def _affine(module: nn.Module, channels: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(W, b) with module(v) = W v + b for C-vectors v: a Linear's own tensors, any other
    module's read off at 0 and the unit vectors (LeViT's BatchNorm1d + Linear) and checked at
    a random vector; None if it takes no C-vectors or is not affine."""
    if isinstance(module, nn.Linear):
        if module.in_features != channels:
            return None
        bias = module.bias if module.bias is not None else torch.zeros(module.out_features, device=module.weight.device)
        return module.weight, bias
    params = next(module.parameters(), None)
    device = params.device if params is not None else torch.device("cpu")
    dtype = params.dtype if params is not None else torch.float32
    gen = torch.Generator(device="cpu").manual_seed(1)
    probe = torch.cat([torch.zeros(1, channels), torch.eye(channels), torch.randn(1, channels, generator=gen)])
    probe = probe.to(device=device, dtype=dtype)
    try:
        with torch.no_grad():
            out = module(probe[:, :, None, None] if isinstance(module, nn.Conv2d) else probe)
    except (RuntimeError, ValueError):
        return None
    out = out.reshape(out.shape[0], -1).float()
    bias, weight = out[0], (out[1:-1] - out[0]).T
    if not _close(weight @ probe[-1].float() + bias, out[-1]):
        return None
    return weight, bias


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return f"Conv2d {module.kernel_size[0]}x{module.kernel_size[1]}"
    return type(module).__name__


def _refusal(model: nn.Module, executed, classifiers, norm) -> str:
    """The clause naming what stands between the features and the classifier."""
    skip = {id(m) for c in classifiers for m in c.modules()}
    offenders = [(n, m) for n, m in executed if id(m) not in skip and not isinstance(m, _PASS_THROUGH)
                 and "pool" not in type(m).__name__.lower()]
    if len(offenders) > 1:  # a LayerNorm only matters when nothing else is in the way
        offenders = [(n, m) for n, m in offenders if m is not norm and not isinstance(m, nn.LayerNorm)] or offenders
    head_names = {n.rsplit(".", 1)[0] if "." in n else "" for n, m in model.named_modules() if id(m) in skip}
    groups: dict[str, list[str]] = {}
    labels: dict[str, str] = {}
    modules = dict(model.named_modules())
    for n, m in offenders:
        parent = n.rsplit(".", 1)[0] if "." in n else ""
        key = n if parent in head_names or parent == "" else parent
        groups.setdefault(key, []).append(_describe(m))
        labels[key] = type(modules[key]).__name__ if key != n else _describe(m)
    if not groups:
        return ("its logits are neither a linear map of its average-pooled features nor of its class token "
                "(checked on a probe input), so no class map W.F adds up to them")
    parts = [f"{k} ({labels[k]})" if len(v) == 1 and k in dict(offenders) else f"{k} ({labels[k]}: {', '.join(v)})"
             for k, v in groups.items()]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return (f"its head applies {listed} between the features and the classifier, so its logits are not a "
            f"linear map of the pooled features")

"""A BatchNorm-folded copy of a model for gradient-free batched forwards (Score-CAM's masked
images): the same function with each eval-mode BatchNorm that directly follows a convolution
folded into that convolution's weights, about 20% less time per image on a CPU
(bench/bench_scorecam.py). The copy has no hooks and no layer names worth tapping: it is for
logits only.

Which convolution feeds which BatchNorm is read from one probe forward (the BatchNorm's input
is the very tensor the convolution returned). A convolution whose output also feeds something
else would be folded wrongly, so the copy is used only if it reproduces the model's logits on
a probe input; otherwise the model itself is used.
"""

from __future__ import annotations

import copy
import sys
import threading
import weakref

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .efficientnet_lite import BatchNormAct2d

# The folded copy must give the model's logits to float32 rounding.
TOLERANCE = 1e-4

# model -> {device: folded copy, or the model itself where folding does not apply}. Weak, so
# that a backbone given up by the app's cache takes its copy with it.
_BATCH_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _tail(bn: nn.Module) -> nn.Module | None:
    """What remains of a BatchNorm module once its affine normalisation is folded away; None
    for BatchNorm subclasses whose forward we do not know."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    # Ours or timm's (not imported here: a timm model's module has imported it already)
    timm_layers = sys.modules.get("timm.layers")
    if type(bn) is BatchNormAct2d or (timm_layers is not None and type(bn) is timm_layers.BatchNormAct2d):
        return nn.Sequential(bn.drop, bn.act)  # BatchNormAct2d: normalise, then drop, then act
    return None


def _conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    produced: dict[int, str] = {}
    calls: dict[str, int] = {}
    pairs: list[tuple[str, str]] = []

    def after_conv(name):
        def hook(module, args, output):
            calls[name] = calls.get(name, 0) + 1
            produced[id(output)] = name
        return hook

    def before_bn(name):
        def hook(module, args):
            calls[name] = calls.get(name, 0) + 1
            source = produced.get(id(args[0]))
            if source is not None:
                pairs.append((source, name))
        return hook

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(after_conv(name)))
        elif _tail(module) is not None:
            handles.append(module.register_forward_pre_hook(before_bn(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    # A module called twice (shared weights) cannot be folded for one of its uses only.
    return [(c, b) for c, b in pairs if calls[c] == 1 and calls[b] == 1]


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> nn.Module | None:
    """A copy of `model` (eval mode) with conv -> BatchNorm pairs folded, or None when there is
    nothing to fold or the copy does not reproduce the model's output on `example`."""
    if model.training or not any(_tail(m) is not None for m in model.modules()):
        return None
    folded = copy.deepcopy(model)
    for module in folded.modules():  # other callers' per-call taps were copied with the modules
        module._forward_hooks.clear()
        module._forward_hooks_with_kwargs.clear()
        module._forward_pre_hooks.clear()
        module._forward_pre_hooks_with_kwargs.clear()
        module._backward_hooks.clear()
        module._backward_pre_hooks.clear()
    pairs = _conv_bn_pairs(folded, example)
    if not pairs:
        return None
    with torch.no_grad():
        reference = folded(example)
        for conv_name, bn_name in pairs:
            bn = folded.get_submodule(bn_name)
            folded.set_submodule(conv_name, fuse_conv_bn_eval(folded.get_submodule(conv_name), bn))
            folded.set_submodule(bn_name, _tail(bn))
        out = folded(example)
    scale = float(reference.abs().max().clamp_min(1.0))
    if out.shape != reference.shape or not bool(((out - reference).abs().max() <= TOLERANCE * scale).item()):
        return None
    return folded.requires_grad_(False)


def batch_model(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The model to run gradient-free batches through: its folded copy when folding applies
    (built once per model and device, checked on `example`), else the model itself."""
    device = str(example.device)
    with _LOCK:
        known = _BATCH_MODELS.setdefault(model, {})
        if device not in known:
            for _ in range(3):
                try:
                    known[device] = fold_batchnorm(model, example) or model
                    break
                except RuntimeError:
                    # another thread added or removed a per-call hook while the modules were
                    # copied ("dictionary changed size during iteration"): copy again
                    continue
            else:
                return model
        return known[device]

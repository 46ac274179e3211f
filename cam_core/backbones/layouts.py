"""Where the image grid is in a layer's output, read from the model by one probe forward.

A layer output of one image is put on its grid (C x h x w) by its :class:`Layout`:

* ``NCHW``   channels first (convolutions);
* ``NHWC``   channels last (Swin, the LayerNorm/MLP inside ConvNeXt and MaxViT blocks);
* ``TOKENS`` B x N x C with ``prefix`` leading class/distillation/register tokens and the
  patch tokens in raster order on ``grid`` (ViTs, LeViT, EfficientFormer's last stage).

The layout of each layer is decided once, by :func:`probe`: one forward with a hook on every
module records each output's shape, and the model's own spatial grids are collected from what
cannot be anything but channels-first (convolutions, 2-d norms and pools) and from what the
model declares (its patch grid, the strides of its ``feature_info``). A 4-d output is read as
NCHW or NHWC according to which reading puts it on one of those grids (``(1, 7, 7, 768)`` in
Swin is a 7 x 7 grid of 768 channels, never 7 channels on a 7 x 768 grid); when both readings
do, the module's type or the model's declared ``output_fmt`` decides. A token output has
``prefix`` = tokens - grid area leading tokens, which must be 0 or the model's
``num_prefix_tokens``: a CaiT block before the class token joins has 196 tokens (no prefix),
its class-attention blocks and its final norm 197 (one). Outputs on none of the grids (pooled
vectors, attention matrices, windows of a Swin or MaxViT block) have no layout and are not
offered as layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..taps import Tap

NCHW, NHWC, TOKENS = "NCHW", "NHWC", "tokens"

# Outputs of these are channels-first whatever the model's format (their grids are the model's).
_CHANNELS_FIRST = (nn.Conv2d, nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.MaxPool2d, nn.AvgPool2d,
                   nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
# These act on the last dimension: given a 4-d tensor, it is channels-last.
_CHANNELS_LAST = (nn.Linear, nn.LayerNorm)


def _channels_first(module_type: type) -> bool:
    # timm's LayerNorm2d, BatchNormAct2d, SelectAdaptivePool2d, ... follow PyTorch's "2d" naming.
    return issubclass(module_type, _CHANNELS_FIRST) or "2d" in module_type.__name__.lower()


class LayoutError(ValueError):
    """A tensor that does not fit the layout of the layer it came from."""


@dataclass(frozen=True)
class Layout:
    kind: str  # NCHW, NHWC or TOKENS
    channels: int
    grid: tuple[int, int]  # (h, w) at the probe's input size
    prefix: int = 0  # TOKENS: leading non-patch tokens

    def describe(self) -> str:
        h, w = self.grid
        if self.kind == TOKENS:
            return f"tokens ({self.prefix} prefix + {h}x{w} patches) x {self.channels}"
        return f"{self.kind} {self.channels} x {h}x{w}"

    def to_spatial(self, t: torch.Tensor) -> torch.Tensor:
        """The first image of a batch as C x h x w. Token grids follow the input size: a grid
        of another area than the probe's keeps the probe grid's aspect ratio."""
        if self.kind == TOKENS:
            if t.dim() != 3 or t.shape[1] <= self.prefix:
                raise LayoutError(f"expected B x N x C tokens with {self.prefix} prefix tokens, got {tuple(t.shape)}")
            tokens = t[0, self.prefix :]
            h, w = self._grid_for(tokens.shape[0])
            return tokens.transpose(0, 1).reshape(tokens.shape[1], h, w)
        if t.dim() != 4:
            raise LayoutError(f"expected a 4-d {self.kind} tensor, got {tuple(t.shape)}")
        return t[0] if self.kind == NCHW else t[0].permute(2, 0, 1)

    def _grid_for(self, n: int) -> tuple[int, int]:
        gh, gw = self.grid
        if gh * gw == n:
            return gh, gw
        h = max(1, round(math.sqrt(n * gh / gw)))
        for cand in (h, h - 1, h + 1):
            if cand > 0 and n % cand == 0 and abs(cand / (n // cand) - gh / gw) < 0.25 * gh / gw:
                return cand, n // cand
        raise LayoutError(f"{n} patch tokens do not form a grid shaped like {gh}x{gw}")


@dataclass
class Probe:
    """What one forward of a probe input tells: each layer's output shape and layout, the
    features fed to the head and the logits."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # every tensor output, firing order
    layouts: dict[str, Layout] = field(default_factory=dict)  # those on a grid of the model
    grids: set[tuple[int, int]] = field(default_factory=set)
    features: torch.Tensor | None = None  # forward_features' output (detached)
    logits: torch.Tensor | None = None
    head_leaves: list[tuple[str, nn.Module]] = field(default_factory=list)  # leaf modules forward_head ran


def probe(model: nn.Module, x: torch.Tensor, *, features_layer: str, output_fmt: str | None = None,
          num_prefix_tokens: int = 0, grids: tuple[tuple[int, int], ...] = ()) -> Probe:
    """Run `x` (one image) through the model with a hook on every module and read the layout
    of every output (see the module docstring). `features_layer` names the pseudo-layer of
    forward_features' output when the model has the forward_features/forward_head split."""
    result = Probe()
    kinds: dict[str, type] = {}

    in_head = False
    is_leaf = {name: not any(True for _ in m.children()) for name, m in model.named_modules()}

    modules = {name: module for name, module in model.named_modules() if name}

    def record(name: str, out):
        module = modules[name]
        if in_head and is_leaf[name]:
            result.head_leaves.append((name, module))
        if torch.is_tensor(out) and out.dim() in (3, 4) and out.shape[0] == x.shape[0]:
            result.shapes[name] = tuple(out.shape)
            kinds[name] = type(module)
            if out.dim() == 4 and _channels_first(type(module)) and out.shape[2] > 1 and out.shape[3] > 1:
                result.grids.add((int(out.shape[2]), int(out.shape[3])))

    # A Tap sees this call's forward only: a probe run while other threads use the shared
    # model must not read (or be read by) their forwards.
    with Tap(model, modules, record), torch.no_grad():
        if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
            feats = model.forward_features(x)
            result.features = feats.detach()
            in_head = True
            result.logits = model.forward_head(feats).detach()
        else:
            result.logits = model(x).detach()
    result.grids.update((int(h), int(w)) for h, w in grids if h > 1 and w > 1)
    declared = NHWC if str(output_fmt or "").upper() == "NHWC" else NCHW
    if result.features is not None and result.features.dim() == 4 and declared == NHWC:
        result.grids.add(tuple(int(v) for v in result.features.shape[1:3]))
    aspect = x.shape[-2] / x.shape[-1]
    for name, shape in result.shapes.items():
        layout = read_layout(shape, result.grids, kinds[name], declared, num_prefix_tokens, aspect)
        if layout is not None:
            result.layouts[name] = layout
    if result.features is not None:
        layout = read_layout(tuple(result.features.shape), result.grids, None, declared, num_prefix_tokens, aspect)
        if layout is not None:
            result.layouts[features_layer] = layout
    return result


def read_layout(shape: tuple[int, ...], grids: set[tuple[int, int]], module_type: type | None, declared: str,
                num_prefix_tokens: int, aspect: float = 1.0) -> Layout | None:
    """The layout of an output of this shape, or None if it is on none of the model's grids."""
    if len(shape) == 4:
        _, a, b, c = shape
        readings = []
        if (b, c) in grids:
            readings.append(Layout(NCHW, a, (b, c)))
        if (a, b) in grids:
            readings.append(Layout(NHWC, c, (a, b)))
        if len(readings) <= 1:
            return readings[0] if readings else None
        if module_type is not None and _channels_first(module_type):
            return readings[0]
        if module_type is not None and issubclass(module_type, _CHANNELS_LAST):
            return readings[1]
        return readings[0] if declared == NCHW else readings[1]
    if len(shape) == 3:
        _, n, c = shape
        for prefix in sorted({num_prefix_tokens, 0}, reverse=True):
            fits = [g for g in grids if g[0] * g[1] == n - prefix]
            if fits:
                grid = min(fits, key=lambda g: abs(g[0] / g[1] - aspect))
                return Layout(TOKENS, c, grid, prefix)
    return None


def attentions_in_frame(atts: list[torch.Tensor], prefix: int) -> torch.Tensor:
    """Per-block softmax attention (heads x queries x keys, one image) as L x heads x N x N
    over one token set: the prefix tokens then the patches, N the most keys any block has.
    Blocks whose class token has not joined yet (CaiT, ConViT: patches only, N - prefix
    square) leave the prefix tokens as they are (identity rows); class-attention blocks
    (CaiT: the prefix tokens' rows only) leave the patches as they are. Rollout and TS-CAM
    then read the class token's row of a model whose class token joins late as of any ViT."""
    n = max(int(a.shape[-1]) for a in atts)
    out = []
    for a in atts:
        heads, q, k = a.shape
        if q == k == n:
            out.append(a)
            continue
        full = torch.eye(n, device=a.device, dtype=a.dtype).expand(heads, n, n).clone()
        if q == k == n - prefix:
            full[:, prefix:, prefix:] = a
        elif k == n and q <= prefix:
            full[:, :q] = a
        else:
            raise LayoutError(f"an attention map of {q} x {k} tokens does not fit {prefix} prefix tokens and "
                              f"{n - prefix} patches")
        out.append(full)
    return torch.stack(out)


def fitting_attention(names: tuple[str, ...], shapes: dict[str, tuple[int, ...]], layout: Layout | None) -> tuple[str, ...]:
    """The attention layers whose probed maps (B x heads x queries x keys) fit the class +
    patch tokens of `layout` (see attentions_in_frame); none if any does not."""
    if not names or layout is None or layout.kind != TOKENS:
        return ()
    n = layout.prefix + layout.grid[0] * layout.grid[1]
    try:
        attentions_in_frame([torch.zeros(shapes[name][1:]) for name in names], layout.prefix)
    except (KeyError, LayoutError, ValueError):
        return ()
    if any(shapes[name][-1] not in (n, n - layout.prefix) for name in names):
        return ()
    return names

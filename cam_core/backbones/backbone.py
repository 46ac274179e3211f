"""The Backbone type: a model plus what the engine and the methods need to read it (input
size and normalisation, the layout of each layer, the classifier as a map of the features,
CNN or ViT, the class names)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn

from .folding import batch_model
from .heads import Head, analyse, from_classifier
from .layouts import TOKENS, Layout, LayoutError, attentions_in_frame, fitting_attention, probe

FEATURES = "features"  # pseudo-layer: the output of forward_features, the input of the classifier head
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneError(ValueError):
    """A backbone that cannot be built or loaded; the message is meant for the user."""


def prepare_model(model: nn.Module) -> nn.Module:
    """Inference set-up shared by every backbone: eval mode, no parameter gradients (the
    gradient methods differentiate w.r.t. activations only), attention weights
    materialised (fused attention never forms them; TS-CAM and rollout need them)."""
    model.eval()
    model.requires_grad_(False)
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return model


@dataclass
class Backbone:
    name: str
    model: nn.Module
    kind: str  # "cnn": the classifier reads a feature grid (Swin included); "vit": a token sequence
    input_size: tuple[int, int]  # (height, width) fed to the model
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    class_names: list[str]
    source: str  # where the weights came from, for the UI
    default_layer: str = FEATURES
    cam_exact: bool = True  # CAM = W.F is the model's own decision only for GAP + linear heads
    # Hierarchical features for SIPE, shallow to deep; FEATURES is the classifier's input.
    stage_layers: tuple[str, ...] = (FEATURES,)
    # ViTs: the modules whose output is each block's softmax attention (B x heads x N x N);
    # kept by the forward pass for TS-CAM and rollout (fused attention is switched off).
    attention_layers: tuple[str, ...] = ()
    # Models built for one input size (strict patch embedding, attention biases, windows):
    # no multi-scale features.
    fixed_input_size: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # Where the grid is in each layer's output, read from the model (see layouts.py); empty for
    # a Backbone built by hand: NCHW, or tokens with the model's prefix tokens and patch grid.
    layouts: dict[str, Layout] = field(default_factory=dict, repr=False)
    # The classifier as a map of the FEATURES grid, checked against forward_head (heads.py);
    # None for a Backbone built by hand: get_classifier() taken as GAP + that layer.
    head: Head | None = field(default=None, repr=False)
    # Why CAM-like methods (the classifier as a linear map of the features) do not apply: a
    # clause ("its head applies ..."), None when they do.
    head_refusal: str | None = None
    n_classes: int | None = field(default=None, repr=False)  # from the logits when the head is refused
    # The dataset LPCAM's default prototype bank is built from (cam_core.banks.DatasetBank), for
    # backbones that know their training data; None: LPCAM clusters each image's own pixels.
    default_bank: object | None = field(default=None, repr=False)

    # ----- construction ----------------------------------------------------------------
    @classmethod
    def from_module(
        cls,
        model: nn.Module,
        *,
        input_size: tuple[int, int] | int,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        class_names: list[str] | None = None,
        name: str | None = None,
        kind: str | None = None,
        layer: str | None = None,
        stage_layers: tuple[str, ...] | None = None,
        attention_layers: tuple[str, ...] = (),
        interpolation: str = "bilinear",
        source: str = "a PyTorch module",
        output_fmt: str | None = None,
        num_prefix_tokens: int | None = None,
        grids: tuple[tuple[int, int], ...] = (),
        fixed_input_size: bool = False,
    ) -> Backbone:
        """A Backbone around any image classifier (B x 3 x H x W -> B x K logits).

        With ``forward_features(x)`` and ``forward_head(features)`` (timm's split) the
        classifier is read as a map of the features and checked (CAM, LPCAM, SIPE), and the
        default layer is the features; without them CAM-like methods are refused and the
        gradient, Score-CAM and Eigen-CAM methods read ``layer`` (default: the last layer with
        a spatial output). Layouts are read by one probe forward (layouts.py); ``output_fmt``
        ("NHWC"), ``num_prefix_tokens`` and extra ``grids`` are hints a model may declare as
        attributes instead (timm's ``output_fmt``, ``num_prefix_tokens``).

            bb = Backbone.from_module(my_net, input_size=224, class_names=names)
            Explainer(bb).explain(load_image("cat.png"), ["gradcam", "cam"])
        """
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        name = name or type(model).__name__
        prepare_model(model)
        getter = getattr(model, "get_classifier", None)
        if getattr(model, "num_classes", None) == 0 or (getter is not None and isinstance(getter(), nn.Identity)):
            raise BackboneError(f"{name} has no classifier head (num_classes=0): a class activation map needs "
                                "class scores. Build it with num_classes=N (a new, random head) or load weights "
                                "that have one")
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        gen = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(1, 3, *input_size, generator=gen).to(device)
        npt = int(num_prefix_tokens if num_prefix_tokens is not None else getattr(model, "num_prefix_tokens", 0) or 0)
        try:
            found = probe(model, x, features_layer=FEATURES, output_fmt=output_fmt or getattr(model, "output_fmt", None),
                          num_prefix_tokens=npt, grids=grids)
        except (RuntimeError, AssertionError, ValueError) as exc:
            raise BackboneError(f"{name} does not run on a {input_size[0]} x {input_size[1]} image: "
                                f"{type(exc).__name__}: {str(exc)[:200]}") from None
        logits = found.logits
        if logits is None or logits.dim() != 2 or logits.shape[1] < 1:
            raise BackboneError(f"{name} returns {tuple(logits.shape) if logits is not None else None} for one "
                                "image, not one score per class")
        split = found.features is not None
        head, refusal = None, None
        if not split:
            refusal = "it has no forward_features/forward_head split, so the features its classifier reads are unknown"
        elif FEATURES not in found.layouts:
            refusal = f"its features ({tuple(found.features.shape)}) are on none of its spatial grids"
        elif getter is None:
            refusal = "it has no get_classifier(), so its classifier is unknown"
        else:
            head, refusal = analyse(model, found.features, found.logits, found.head_leaves, found.layouts[FEATURES])
        if layer is None:
            spatial = [n for n in found.layouts if n != FEATURES]
            if FEATURES in found.layouts:
                layer = FEATURES
            elif spatial:
                layer = spatial[-1]
            else:
                raise BackboneError(f"{name}: no layer has a spatial output")
        elif layer not in found.layouts:
            raise BackboneError(f"{name}: layer '{layer}' has no spatial output "
                                f"({found.shapes.get(layer, 'not reached by the forward pass')})")
        if kind is None:
            kind = "vit" if found.layouts[layer if layer in found.layouts else FEATURES].kind == TOKENS else "cnn"
        return cls(
            name=name,
            model=model,
            kind=kind,
            input_size=(int(input_size[0]), int(input_size[1])),
            mean=tuple(float(v) for v in mean),
            std=tuple(float(v) for v in std),
            interpolation=interpolation,
            class_names=list(class_names) if class_names else [f"class {i}" for i in range(logits.shape[1])],
            source=source,
            default_layer=layer,
            cam_exact=head.exact if head is not None else False,
            stage_layers=tuple(stage_layers) if stage_layers else ((FEATURES,) if split else (layer,)),
            attention_layers=fitting_attention(tuple(attention_layers), found.shapes, found.layouts.get(FEATURES)),
            fixed_input_size=fixed_input_size,
            device=device,
            layouts=found.layouts,
            head=head,
            head_refusal=refusal,
            n_classes=int(logits.shape[1]),
        )

    # ----- structure -------------------------------------------------------------------
    def _head(self) -> Head:
        if self.head_refusal:
            raise BackboneError(f"{self.name}: {self.head_refusal}")
        if self.head is not None:
            return self.head
        getter = getattr(self.model, "get_classifier", None)
        try:
            return from_classifier(getter() if getter is not None else None)
        except TypeError as exc:
            raise BackboneError(f"{self.name}: {exc}") from None

    @property
    def classifier(self) -> nn.Module:
        """The head's last layer: a Linear (GAP or class-token heads) or a Conv2d applied to
        the feature grid (TS-CAM's head, whose logits are the mean of its maps). For heads
        that are one only in effect (distillation heads averaged, a norm folded in), the
        equivalent Linear."""
        head = self._head()
        if head.conv is not None:
            return head.conv
        found = self.model.get_classifier() if hasattr(self.model, "get_classifier") else None
        if isinstance(found, (nn.Linear, nn.Conv2d)) and found.weight.data_ptr() == head.weight.data_ptr():
            return found
        linear = nn.Linear(head.weight.shape[1], head.weight.shape[0], bias=head.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(head.weight)
            if head.bias is not None:
                linear.bias.copy_(head.bias)
        return linear.to(head.weight.device).requires_grad_(False)

    @property
    def num_classes(self) -> int:
        if self.n_classes is not None:
            return self.n_classes
        return self._head().num_classes

    @property
    def feature_dim(self) -> int:
        """Channels of the features the classifier reads."""
        if FEATURES in self.layouts:
            return self.layouts[FEATURES].channels
        return int(self._head().weight.shape[1])

    @property
    def linear_head_refusal(self) -> str | None:
        """Why single feature vectors cannot be scored by the classifier (a clause), or None."""
        try:
            head = self._head()
        except BackboneError as exc:
            return str(exc)
        if head.conv is not None:
            return (f"its classifier is a {head.conv.kernel_size} convolution, not a linear layer, so single "
                    "feature vectors cannot be scored")
        return None

    @property
    def linear_weight(self) -> torch.Tensor:
        """K x C: the class centres. Methods that score single feature vectors (LPCAM) need it."""
        if (reason := self.linear_head_refusal) is not None:
            raise BackboneError(f"{self.name}: {reason}")
        return self._head().weight

    @property
    def linear_bias(self) -> torch.Tensor | None:
        return self._head().bias

    def class_maps(self, features: torch.Tensor, classes=None) -> torch.Tensor:
        """The classifier applied at every position of C x h x w features: K x h x w (the
        classes asked for). Linear heads: W_c . f, no bias (CAM). Conv heads: the head's own
        maps, bias included, whose spatial mean is the logit (TS-CAM's semantic maps)."""
        return self._head().class_maps(features, classes)

    @property
    def has_head_split(self) -> bool:
        return hasattr(self.model, "forward_features") and hasattr(self.model, "forward_head")

    @property
    def num_prefix_tokens(self) -> int:
        layout = self.layouts.get(FEATURES)
        if layout is not None and layout.kind == TOKENS:
            return layout.prefix
        return int(getattr(self.model, "num_prefix_tokens", 0) or 0)

    @property
    def token_grid(self) -> tuple[int, int] | None:
        layout = self.layouts.get(FEATURES)
        if layout is not None and layout.kind == TOKENS:
            return layout.grid
        pe = getattr(self.model, "patch_embed", None)
        grid = getattr(pe, "grid_size", None)
        return (int(grid[0]), int(grid[1])) if grid is not None else None

    def class_name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else f"class {index}"

    def short_name(self, index: int) -> str:
        return self.class_name(index).split(",")[0].strip()

    # ----- tensors ---------------------------------------------------------------------
    def preprocess(self, rgb: np.ndarray, size: tuple[int, int] | None = None,
                   device: str | torch.device | None = None) -> torch.Tensor:
        """Resize the WHOLE image to `size` (default: the model's input size; no centre crop:
        every pixel gets a value in the map), scale to [0,1], normalise. Returns 1x3xHxW on
        `device` (default: the backbone's)."""
        h, w = size or self.input_size
        resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}.get(
            self.interpolation, Image.BICUBIC
        )
        img = Image.fromarray(rgb).resize((w, h), resample)
        x = torch.from_numpy(np.array(img, dtype=np.float32, copy=True)).permute(2, 0, 1).div_(255.0)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return ((x - mean) / std).unsqueeze(0).to(self.device if device is None else device)

    def to_spatial(self, t: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """The output of `layer` (None: forward_features', i.e. FEATURES) for one image, or its
        gradient, as C x h x w, by the layer's layout: NCHW as is, NHWC permuted, tokens with
        the prefix tokens that layer has dropped and the patches put on the model's grid."""
        name = layer or FEATURES
        if self.layouts:
            layout = self.layouts.get(name)
            if layout is None:
                raise BackboneError(f"{self.name}: layer '{name}' has no spatial grid (its output "
                                    f"{tuple(t.shape)} is on none of the model's feature grids)")
            try:
                return layout.to_spatial(t)
            except LayoutError as exc:
                raise BackboneError(f"{self.name}: layer '{name}': {exc}") from None
        return self._to_spatial_by_shape(t)

    def _to_spatial_by_shape(self, t: torch.Tensor) -> torch.Tensor:
        # A Backbone built by hand, without layouts: NCHW, or tokens with the model's prefix.
        if t.dim() == 4:
            return t[0]
        if t.dim() == 3:
            tokens = t[0, self.num_prefix_tokens :]
            n = tokens.shape[0]
            grid = self.token_grid
            if grid is None or grid[0] * grid[1] != n:
                side = math.isqrt(n)
                if side * side != n:
                    raise BackboneError(
                        f"{self.name}: {n} tokens after dropping {self.num_prefix_tokens} prefix tokens "
                        "do not form a grid"
                    )
                grid = (side, side)
            return tokens.transpose(0, 1).reshape(tokens.shape[1], grid[0], grid[1])
        raise BackboneError(f"{self.name}: a layer output of shape {tuple(t.shape)} has no spatial grid")

    def attentions_in_frame(self, attentions: list[torch.Tensor]) -> torch.Tensor:
        """The kept attention maps (heads x queries x keys each) as L x heads x N x N over the
        prefix tokens then the patches; see layouts.attentions_in_frame (CaiT, ConViT)."""
        try:
            return attentions_in_frame(attentions, self.num_prefix_tokens)
        except LayoutError as exc:
            raise BackboneError(f"{self.name}: {exc}") from None

    def to(self, device: str | torch.device) -> Backbone:
        self.device = torch.device(device)
        self.model.to(self.device)
        if self.head is not None:
            self.head = self.head.to(self.device)
        return self

    def batch_model(self) -> nn.Module:
        """The model for gradient-free batched forwards (logits only): a copy with BatchNorm
        folded into the convolutions where that reproduces the model's logits, else the model
        itself. See folding.py."""
        gen = torch.Generator(device="cpu").manual_seed(0)
        example = torch.randn(2, 3, *self.input_size, generator=gen).to(self.device)
        return batch_model(self.model, example)

    def layer_choices(self) -> list[str]:
        """Layers whose output has a spatial grid (any layout), network order, the default
        layer first. Read by one probe forward (at load for timm models)."""
        if not self.layouts:
            gen = torch.Generator(device="cpu").manual_seed(0)
            x = torch.randn(1, 3, *self.input_size, generator=gen).to(self.device)
            self.layouts = probe(self.model, x, features_layer=FEATURES,
                                 num_prefix_tokens=self.num_prefix_tokens).layouts
        names = [n for n in self.layouts if n not in (self.default_layer, FEATURES)]
        first = [self.default_layer] + ([FEATURES] if self.default_layer != FEATURES and self.has_head_split else [])
        return first + names

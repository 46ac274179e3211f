"""The shared forward pass and the per-image cache every method draws from.

One forward per (image, backbone, layer). The chosen layer's output is replaced, inside a
forward hook, by a copy of a detached leaf tensor that requires grad: nothing before the
layer records a graph (the parameters need no grad), everything after it does. So

* the gradient of any class score w.r.t. the activations is ONE ``torch.autograd.grad``
  through the part of the network after the layer (for the last layer: pooling + linear),
  shared by every gradient method and cached per class;
* in-place operations after the layer modify the copy, never the saved activation, and
  cannot trip autograd's leaf checks;
* the hook lives only inside a context manager, so it is always removed.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .backbones import FEATURES, Backbone, BackboneError
from .images import LoadedImage, from_array
from .methods import METHODS, MethodError, MethodSpec, get_method
from .methods.base import NEEDS_BANK, NEEDS_GRADIENT, NEEDS_HEAD
from .targets import Prediction, TargetError, resolve_targets, top_predictions


class LayerError(ValueError):
    """A layer name that does not exist or has no spatial output."""


class _LayerTap:
    """Context manager: taps one named module's output as a grad-requiring leaf, and keeps
    (detached) the outputs of a few more modules, e.g. the stages SIPE reads."""

    def __init__(self, model: torch.nn.Module, layer: str, keep: tuple[str, ...] = ()):
        self.model, self.layer = model, layer
        self.keep = tuple(n for n in keep if n != FEATURES)
        self.leaf: torch.Tensor | None = None
        self.kept: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def _module(self, name: str) -> torch.nn.Module:
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            raise LayerError(f"the model has no layer named '{name}'") from None

    def __enter__(self) -> _LayerTap:
        try:
            if self.layer != FEATURES:
                self._handles.append(self._module(self.layer).register_forward_hook(self._hook))
            for name in self.keep:
                self._handles.append(self._module(name).register_forward_hook(self._keeper(name)))
        except LayerError:
            self.__exit__()
            raise
        return self

    def _hook(self, _module, _inputs, output):
        if not torch.is_tensor(output):
            raise LayerError(f"layer '{self.layer}' returns {type(output).__name__}, not a tensor")
        self.leaf = output.detach().requires_grad_(True)
        return self.leaf.clone()

    def _keeper(self, name: str):
        def hook(_module, _inputs, output):
            if torch.is_tensor(output):
                self.kept[name] = output.detach()

        return hook

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@dataclass
class ForwardPass:
    """Everything one forward of one image gives: logits, the tapped activations, the
    head-input features, and the retained graph for per-class gradients."""

    backbone: Backbone
    layer: str
    input: torch.Tensor  # 1 x 3 x H x W, normalised
    logits: torch.Tensor  # K, detached
    probs: torch.Tensor  # K
    activations: torch.Tensor  # C x h x w at the tapped layer, detached
    head_features: torch.Tensor | None  # C' x h' x w' fed to the classifier head (CAM)
    forward_ms: float
    _leaf: torch.Tensor = field(repr=False, default=None)
    _graph_logits: torch.Tensor = field(repr=False, default=None)
    _grads: dict = field(repr=False, default_factory=dict)
    gradient_ms: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)  # stage name -> C x h x w (detached), see Backbone.stage_layers
    attentions: list = field(default_factory=list)  # ViTs: heads x N x N softmax attention of each block
    _scaled: dict = field(repr=False, default_factory=dict)
    _banks: dict = field(repr=False, default_factory=dict)
    # Long methods' finished batches (Score-CAM's channel scores), so that a run interrupted
    # by the UI (a rerun, a cancel) resumes where it stopped instead of starting over.
    partial: dict = field(repr=False, default_factory=dict)

    def features_at(self, scale: float = 1.0, flip: bool = False) -> torch.Tensor:
        """Head-input features (C x h x w) of the input resized by `scale` (and mirrored,
        then mirrored back, if `flip`): the multi-scale inputs of LPCAM. Cached."""
        key = (round(scale, 4), flip)
        if scale != 1.0 and self.backbone.fixed_input_size:
            h, w = self.backbone.input_size
            raise MethodError(f"{self.backbone.name} takes {h} x {w} inputs only: no features at scale {scale:g} "
                              "(multi-scale needs a CNN or a ViT built with dynamic_img_size)")
        if key not in self._scaled:
            x = self.input
            if scale != 1.0:
                h, w = x.shape[-2:]
                size = (max(1, round(h * scale)), max(1, round(w * scale)))
                x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
            if flip:
                x = x.flip(-1)
            with torch.inference_mode():
                feats = self.backbone.to_spatial(self.backbone.model.forward_features(x), FEATURES)
            self._scaled[key] = feats.flip(-1) if flip else feats
        return self._scaled[key]

    def image_bank(self, target: int):
        """LPCAM's bank built from this image alone (cached per class)."""
        if target not in self._banks:
            from .prototypes import image_bank

            self._banks[target] = image_bank(self, target, self.backbone)
        return self._banks[target]

    def gradient(self, target: int) -> torch.Tensor:
        """d logit_target / d activations (C x h x w), computed once per class."""
        if target not in self._grads:
            t0 = time.perf_counter()
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(self._graph_logits[0, target], self._leaf, retain_graph=True)
            self._grads[target] = self.backbone.to_spatial(grad, self.layer)
            _sync(self.input.device)
            self.gradient_ms[target] = (time.perf_counter() - t0) * 1000
        return self._grads[target]


@dataclass
class MethodContext:
    """What a method function receives: the cached forward pass plus progress/cancel hooks."""

    fwd: ForwardPass
    progress: Callable[[int, int], None] | None = None
    cancel: Callable[[], bool] | None = None
    bank: object | None = None  # the LPCAM prototype bank in use, None = each image's own

    @property
    def backbone(self) -> Backbone:
        return self.fwd.backbone

    @property
    def activations(self) -> torch.Tensor:
        return self.fwd.activations

    def gradient(self, target: int) -> torch.Tensor:
        return self.fwd.gradient(target)


@dataclass(frozen=True)
class CamResult:
    method: str
    label: str
    target: int | None  # None for class-agnostic methods
    target_name: str
    map: torch.Tensor  # unnormalised, on the device, h x w (feature grid or input size)
    ms: float  # the method's own compute time on top of the shared forward pass
    layer: str
    approximate: bool
    params: tuple = ()
    note: str = ""
    extras: dict = field(default_factory=dict)  # method-specific results (e.g. SIPE's seeds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Explainer:
    """Computes and caches CAMs for one backbone. Thread-safe (one lock): a cached
    Explainer is shared by every browser session of the app."""

    def __init__(self, backbone: Backbone, max_images: int = 8, max_maps: int = 256):
        self.backbone = backbone
        self.max_images, self.max_maps = max_images, max_maps
        self._forwards: OrderedDict[tuple, ForwardPass] = OrderedDict()
        self._maps: OrderedDict[tuple, CamResult] = OrderedDict()
        self._lock = threading.RLock()
        self.stats: Counter = Counter()  # forwards, gradients, method runs: lets tests prove caching
        self.bank = None  # default LPCAM prototype bank (cam_core.prototypes.PrototypeBank) or None

    def set_bank(self, bank) -> None:
        """Default prototype bank for LPCAM (None: build one from each image itself). The app,
        whose Explainer is shared by sessions, passes its bank per call instead."""
        if bank is not None:
            bank.check_fits(self.backbone)
        with self._lock:
            self.bank = bank

    # ----- forward ---------------------------------------------------------------------
    def layer_or_default(self, layer: str | None) -> str:
        return layer or self.backbone.default_layer

    def forward(self, image: LoadedImage, layer: str | None = None) -> ForwardPass:
        layer = self.layer_or_default(layer)
        key = (image.sha256, layer)
        with self._lock:
            if key in self._forwards:
                self._forwards.move_to_end(key)
                return self._forwards[key]
            fwd = self._run_forward(image, layer)
            self._forwards[key] = fwd
            while len(self._forwards) > self.max_images:
                self._forwards.popitem(last=False)
            return fwd

    def _run_forward(self, image: LoadedImage, layer: str) -> ForwardPass:
        bb = self.backbone
        if layer == FEATURES and not bb.has_head_split:
            raise LayerError(f"{bb.name} has no forward_features/forward_head split; name a layer")
        x = bb.preprocess(image.rgb)
        t0 = time.perf_counter()
        with torch.enable_grad(), _LayerTap(bb.model, layer, bb.stage_layers + bb.attention_layers) as tap:
            if bb.has_head_split:
                feats = bb.model.forward_features(x)
                if layer == FEATURES:
                    tap.leaf = feats.detach().requires_grad_(True)
                    feats = tap.leaf.clone()
                logits = bb.model.forward_head(feats)
                head_features = bb.to_spatial(feats.detach(), FEATURES)
            else:
                logits = bb.model(x)
                head_features = None
        _sync(x.device)
        forward_ms = (time.perf_counter() - t0) * 1000
        if tap.leaf is None:
            raise LayerError(f"layer '{layer}' was not reached by the forward pass")
        try:
            activations = bb.to_spatial(tap.leaf.detach(), layer)
        except BackboneError as exc:
            raise LayerError(str(exc)) from None
        self.stats["forwards"] += 1
        detached = logits.detach()[0]
        stages = {name: bb.to_spatial(tap.kept[name], name) for name in bb.stage_layers if name in tap.kept}
        attentions = [tap.kept[name][0] for name in bb.attention_layers if name in tap.kept]
        if head_features is not None:
            stages[FEATURES] = head_features
        return ForwardPass(
            backbone=bb,
            layer=layer,
            input=x,
            logits=detached,
            probs=detached.float().softmax(-1),
            activations=activations,
            head_features=head_features,
            forward_ms=forward_ms,
            _leaf=tap.leaf,
            _graph_logits=logits,
            stages=stages,
            attentions=attentions,
        )

    # ----- predictions and targets -----------------------------------------------------
    def predict(self, image: LoadedImage, k: int = 5) -> list[Prediction]:
        fwd = self.forward(image)
        return top_predictions(fwd.probs, self.backbone, k)

    def targets(self, image: LoadedImage, target=None) -> list[int]:
        return resolve_targets(target, self.forward(image).probs, self.backbone)

    # ----- maps ------------------------------------------------------------------------
    def methods(self) -> list[MethodSpec]:
        """The registered methods this backbone can run."""
        return [spec for spec in METHODS.values() if spec.refusal(self.backbone) is None]

    def compute(
        self,
        image: LoadedImage,
        method: str,
        target: int | None = None,
        layer: str | None = None,
        params: dict | None = None,
        progress: Callable[[int, int], None] | None = None,
        cancel: Callable[[], bool] | None = None,
        bank=None,
    ) -> CamResult:
        spec = get_method(method)
        if (reason := spec.refusal(self.backbone)) is not None:
            raise MethodError(reason)
        resolved = spec.resolve_params(params)
        layer = self.layer_or_default(layer)
        fwd = self.forward(image, layer)
        if target is None:
            target = int(fwd.probs.argmax())
        target = resolve_targets(int(target), fwd.probs, self.backbone)[0]
        key_target = target if spec.class_specific else None
        if bank is None:
            bank = self.bank
        elif NEEDS_BANK in spec.needs:
            bank.check_fits(self.backbone)
        bank_key = (bank.key if bank is not None else "image") if NEEDS_BANK in spec.needs else None
        key = (image.sha256, layer, method, key_target, tuple(sorted(resolved.items())), bank_key)
        # The whole computation holds the lock: the model is shared between sessions and a
        # layer tap installed by one thread's forward would fire in another's.
        with self._lock:
            if key in self._maps:
                self._maps.move_to_end(key)
                return self._maps[key]
            ctx = MethodContext(fwd, progress=progress, cancel=cancel, bank=bank)
            if NEEDS_GRADIENT in spec.needs:
                fwd.gradient(target)  # shared by all gradient methods; reported once as gradient_ms
            t0 = time.perf_counter()
            with torch.no_grad():
                out = spec.fn(ctx, target, **resolved)
            raw, extras = out if isinstance(out, tuple) else (out, {})
            _sync(raw.device)
            ms = (time.perf_counter() - t0) * 1000
        raw = torch.nan_to_num(raw.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
        result = CamResult(
            method=method,
            label=spec.label,
            target=key_target,
            target_name=self.backbone.short_name(target) if spec.class_specific else "class-agnostic",
            map=raw,
            ms=ms,
            layer=layer,
            approximate=spec.approximate or (NEEDS_HEAD in spec.needs and not self.backbone.cam_exact),
            params=tuple(sorted(resolved.items())),
            note=str(extras.pop("note", "")),
            extras=extras,
        )
        with self._lock:
            self.stats["maps"] += 1
            self.stats[f"maps:{method}"] += 1
            self._maps[key] = result
            while len(self._maps) > self.max_maps:
                self._maps.popitem(last=False)
        return result

    def explain(
        self,
        image: LoadedImage,
        methods: list[str],
        target=None,
        layer: str | None = None,
        params: dict[str, dict] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
        cancel: Callable[[], bool] | None = None,
        bank=None,
    ) -> dict[int, dict[str, CamResult]]:
        """Maps for every (target, method): target as in resolve_targets (None = top-1,
        an index, a class-name query, or 'top3')."""
        targets = self.targets(image, target)
        out: dict[int, dict[str, CamResult]] = {}
        for t in targets:
            out[t] = {}
            for m in methods:
                cb = (lambda done, total, m=m: progress(m, done, total)) if progress else None
                out[t][m] = self.compute(image, m, t, layer, (params or {}).get(m), cb, cancel, bank)
        return out

    def warm_up(self, methods: list[str] | None = None) -> None:
        """Run the forward pass, a gradient and each fast method once on a synthetic image (and
        one small batch through the model for the slow ones), then forget the results, so that
        reported times exclude first-call costs (allocator, kernel choice, LAPACK init)."""
        h, w = self.backbone.input_size
        rng = np.random.default_rng(0)
        image = from_array(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "warm-up")
        names = methods if methods is not None else [s.name for s in self.methods()]
        for name in names:
            spec = get_method(name)
            if spec.slow:
                x = self.forward(image).input
                with torch.inference_mode():
                    self.backbone.model(x.expand(4, -1, -1, -1))
            else:
                self.compute(image, name)
        with self._lock:
            self.clear()
            self.stats.clear()

    def clear(self) -> None:
        with self._lock:
            self._forwards.clear()
            self._maps.clear()


__all__ = ["Explainer", "ForwardPass", "CamResult", "LayerError", "MethodContext", "TargetError"]

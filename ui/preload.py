"""The first page's imports and default backbone, loaded in a background thread from server
start (ui/serve.py) instead of after the first page request (issue 9 item 17).

Profiled on the 2-core machine: of the time from the page request to the first tiles, the
first script run spent most importing torch and timm (timm pulls in torchvision and
torch._dynamo) and then building EfficientNet-Lite0; the maps and tiles themselves took
well under a second. Nothing here imports torch itself: get_explainer (ui/common.py) can
ask for the preloaded backbone however early it runs.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

# What the app opens with: the sidebar's first backbone and device (available_devices()[0]).
DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_DEVICE = "cpu"

_LOCK = threading.Lock()
_PENDING: dict[tuple[str, str], Future] = {}  # (backbone name, device) -> its Explainer


def start(name: str = DEFAULT_BACKBONE, device: str = DEFAULT_DEVICE) -> Future:
    """Import what the Compare page imports and build the Explainer of `name` on `device` in a
    daemon thread; returns its future (registered before the thread starts, so a page run that
    comes early waits for this one instead of building a second)."""
    future: Future = Future()
    with _LOCK:
        _PENDING[(name, device)] = future

    def run() -> None:
        try:
            # In the order the first page run imports them (app.py, then the Compare page).
            import ui.common  # noqa: F401 - streamlit, torch, cam_core, timm
            from cam_core import Explainer, load_backbone
            from pages import scores  # noqa: F401 - plotly, the metrics

            future.set_result(Explainer(load_backbone(name, device)))
        except BaseException as exc:  # noqa: BLE001 - the page's own call reports it
            future.set_exception(exc)

    threading.Thread(target=run, name="cam-preload", daemon=True).start()
    return future


def take(name: str, device: str) -> Future | None:
    """The preloaded Explainer's future for (name, device), once: the caller caches it."""
    with _LOCK:
        return _PENDING.pop((name, device), None)

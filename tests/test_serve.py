"""ui/serve.py and ui/preload.py: the server as scripts/app.sh starts it loads the first page's
backbone from process start, and the first page run takes that one (issue 9 item 17)."""

import threading

from cam_core import Explainer


def test_the_first_page_takes_the_preloaded_explainer_and_builds_none(monkeypatch):
    import cam_core
    from ui import common, preload

    built = []
    real = cam_core.load_backbone

    def counting(name, device="cpu", **kwargs):
        built.append((name, device, threading.current_thread().name))
        return real(name, device, **kwargs)

    monkeypatch.setattr(cam_core, "load_backbone", counting)  # what preload's thread calls
    monkeypatch.setattr(common, "load_backbone", counting)  # what get_explainer calls
    common.get_explainer.clear()
    try:
        future = preload.start("random:resnet18", "cpu")
        ex = common.get_explainer("random:resnet18", "cpu")
        assert isinstance(ex, Explainer) and ex is future.result()
        assert built == [("random:resnet18", "cpu", "cam-preload")]
        assert preload.take("random:resnet18", "cpu") is None  # taken once
        # another backbone, or the same one after the cache is cleared, is built as before
        common.get_explainer.clear()
        assert common.get_explainer("random:resnet18", "cpu") is not ex
        assert [b[2] for b in built] == ["cam-preload", threading.current_thread().name]
    finally:
        common.get_explainer.clear()


def test_a_failed_preload_leaves_the_error_to_the_page(monkeypatch):
    import pytest

    from cam_core import BackboneError
    from ui import common, preload

    common.get_explainer.clear()
    try:
        future = preload.start("no_such_backbone_xyz", "cpu")
        with pytest.raises(BackboneError):
            future.result()
        with pytest.raises(BackboneError):  # built again by the page's call, which reports it
            common.get_explainer("no_such_backbone_xyz", "cpu")
    finally:
        common.get_explainer.clear()


def test_the_preload_imports_neither_timm_nor_torchvision():
    """What the server loads before the first tiles (the first page's modules and Lite0) leaves
    out timm, whose import (with torchvision and torch._dynamo) took 1.6 s of the 2-core
    machine's ~2.7 s to the first tile (bench/bench_first_tiles.py)."""
    import subprocess
    import sys

    code = ("import sys; from ui import preload; preload.start().result(); "
            "print(sorted(m for m in ('timm', 'torchvision', 'torch._dynamo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"

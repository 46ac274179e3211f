"""One model serves every browser session at once: a call's taps see only its own forward
pass, caches fill once per key, and a long method does not block the others."""

import dataclasses
import threading
import time

import numpy as np
import pytest
import torch

from cam_core import Explainer, from_array
from cam_core.backbones.layouts import probe
from cam_core.engine import Memo
from cam_core.taps import Tap


def _images(seed: int, n: int, size: int = 96):
    rng = np.random.default_rng(seed)
    return [from_array(rng.integers(0, 256, (size, size + 16 * (i % 3), 3), dtype=np.uint8), f"img{seed}-{i}")
            for i in range(n)]


# (layer, methods) per worker: SIPE reads its stage taps, LPCAM multi-scale runs extra
# forward_features calls, gradient methods differentiate through the tapped leaf.
JOBS = [
    (None, ["cam", "gradcam", "sipe"]),
    ("layer3", ["gradcampp", "layercam", "eigencam"]),
    ("layer2.1", ["gradcam", "hirescam"]),
    (None, ["lpcam", "xgradcam"]),
]
PARAMS = {"lpcam": {"multiscale": True, "k": 4}}


def _snapshot(ex: Explainer, image, layer, methods) -> dict:
    fwd = ex.forward(image, layer)
    target = int(fwd.probs.argmax())
    out = {
        "logits": fwd.logits.clone(),
        "activations": fwd.activations.clone(),
        "gradient": fwd.gradient(target).clone(),
        **{f"stage:{k}": v.clone() for k, v in fwd.stages.items()},
    }
    for m in methods:
        out[f"map:{m}"] = ex.compute(image, m, target, layer, PARAMS.get(m)).map.clone()
    return out


def _assert_same(got: dict, want: dict, where: str) -> None:
    assert got.keys() == want.keys(), where
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=lambda m: f"{where} {key}: {m}")


def test_threads_see_only_their_own_forward_pass(resnet18):
    """Four workers on their own images, layers and methods, plus an 'attacker' that runs the
    shared model outside any tap (multi-scale features, as the Feature space page does, and
    the layer probe) in a loop. Every activation, stage, gradient and map must equal the
    one-thread reference. Before taps were per call, about 40% of forwards kept another
    thread's stage tensors."""
    bb = dataclasses.replace(resnet18, input_size=(96, 96))
    work = [(job, _images(seed, 4)) for seed, job in enumerate(JOBS)]
    reference = {}
    ref_ex = Explainer(bb)
    for (layer, methods), images in work:
        for img in images:
            reference[(img.name, layer)] = _snapshot(ref_ex, img, layer, methods)

    shared = Explainer(bb)
    stop = threading.Event()
    errors: list[str] = []
    probe_input = torch.randn(1, 3, 160, 160)
    probe_alone = probe(bb.model, probe_input, features_layer="features").shapes

    def attacker():
        noise = _images(99, 3)
        other = Explainer(bb)
        while not stop.is_set():
            for img in noise:
                fwd = other.forward(img)
                fwd.features_at(2.0)
                fwd.features_at(0.5, flip=True)
                other.clear()
            shapes = probe(bb.model, probe_input, features_layer="features").shapes  # the layer probe
            if shapes != probe_alone:
                errors.append("the layer probe recorded another thread's shapes")

    def worker(layer, methods, images):
        try:
            for _ in range(2):
                for img in images:
                    _assert_same(_snapshot(shared, img, layer, methods), reference[(img.name, layer)],
                                 f"{img.name} @ {layer}")
                shared.clear()
        except Exception as exc:  # collected: an assertion in a thread would be lost
            errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")

    att = threading.Thread(target=attacker)
    att.start()
    threads = [threading.Thread(target=worker, args=(layer, methods, images)) for (layer, methods), images in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    stop.set()
    att.join(timeout=60)
    assert not errors, f"{len(errors)} workers saw wrong results, e.g. {errors[0]}"
    assert all(not m._forward_hooks for m in bb.model.modules())  # nothing left on the shared model


def test_a_tap_ignores_other_threads_forward_passes(resnet18):
    """The mechanism itself: while thread A holds a tap on layer1, thread B's forwards of the
    same module are neither seen nor changed by it."""
    model = resnet18.model
    seen = []
    inside = threading.Event()
    release = threading.Event()

    def a():
        with Tap(model, ["layer1"], lambda name, out: seen.append(out.shape) or torch.zeros_like(out)):
            inside.set()
            release.wait(30)

    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        before = model(x)
    t = threading.Thread(target=a)
    t.start()
    inside.wait(30)
    with torch.inference_mode():
        during = model(x)
    release.set()
    t.join()
    assert seen == [] and torch.equal(before, during)
    assert all(not m._forward_hooks for m in model.modules())


def test_memo_computes_each_key_once_and_retries_after_a_failure():
    memo = Memo(max_items=2)
    calls = []
    gate = threading.Event()

    def slow():
        calls.append(1)
        gate.wait(10)
        return 42

    results = []
    threads = [threading.Thread(target=lambda: results.append(memo.get("k", slow))) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join()
    assert results == [42] * 4 and len(calls) == 1

    def fails():
        raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError):
        memo.get("x", fails)
    assert memo.get("x", lambda: 7) == 7  # a failure is not cached
    memo.get("y", lambda: 1)
    memo.get("z", lambda: 2)
    assert memo.keys() == ["y", "z"]  # bounded: least recently used out


def test_scorecam_pauses_while_interactive_work_runs(resnet18, cat):
    """A Score-CAM in one thread runs no batch while another thread's fast method runs: the
    fast call's forward and maps happen between two batches, not interleaved with them."""
    bb = dataclasses.replace(resnet18, input_size=(64, 64))
    ex = Explainer(bb)
    events = []
    started = threading.Event()

    def progress(done, total):
        events.append(("batch", time.perf_counter()))
        started.set()

    def slow():
        ex.compute(cat, "scorecam", 0, "layer3", params={"batch_size": 4}, progress=progress)

    t = threading.Thread(target=slow)
    t.start()
    started.wait(60)
    other = _images(5, 1, 64)[0]
    with ex._priority.interactive():
        t0 = time.perf_counter()
        n_before = len(events)
        time.sleep(0.5)  # while interactive work runs, no batch may finish after the one in flight
        n_after = len(events)
        t1 = time.perf_counter()
    ex.compute(other, "gradcam")
    t.join(120)
    assert n_after - n_before <= 1, "Score-CAM kept running batches during interactive work"
    assert any(ts > t1 for kind, ts in events), "Score-CAM never resumed"
    assert t0 < t1


def test_interactive_work_waits_for_the_batch_in_flight():
    """Interactive work arriving while another thread's long-method batch runs starts when that
    batch ends (sharing the cores with it costs more than waiting); a long thread's own
    interactive work never waits for itself."""
    from cam_core.engine import _Priority

    prio = _Priority(patience=5.0)
    in_batch, batch_end, entered = threading.Event(), [], []

    def long_method():
        with prio.long_work():
            prio.pause()  # the first batch is in flight from here
            with prio.interactive():  # its own interactive work: no wait on itself
                pass
            in_batch.set()
            time.sleep(0.4)
            batch_end.append(time.perf_counter())
            prio.pause()  # the batch has ended; waits while the other thread works
            time.sleep(0.1)

    t = threading.Thread(target=long_method)
    t.start()
    assert in_batch.wait(5)
    with prio.interactive():
        entered.append(time.perf_counter())
    t.join(5)
    assert not t.is_alive()
    assert entered[0] >= batch_end[0], "interactive work ran alongside the batch in flight"

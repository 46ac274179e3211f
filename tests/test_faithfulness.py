"""Faithfulness metrics of cam_core.metrics against references on the same maps.

Agreement (asserted bound; measured on this case):
* deletion / insertion against a plain one-step-at-a-time transcription of RISE's
  ``CausalMetric.single_run`` (one forward per step, numpy order, RISE's 3 x 3 blur kernel):
  every score to 1e-5 (measured 6e-8 / 3e-7), the AUCs to 1e-6 (1e-9 / 2e-8; AUCs 0.0235 and
  0.486);
* Average Drop / Increase against pytorch-grad-cam 1.5.7's DropInConfidence and
  IncreaseInConfidence (ClassifierOutputSoftmaxTarget): max(0, Y - O) to 1e-6 (4e-9), the
  increase flag exactly;
* ROAD against pytorch-grad-cam's MoRF / LeRF metrics with the noisy linear imputer: without
  noise every percentile's score to 1e-5 (6e-8) and ROAD to 1e-6 (1e-8; ROAD 0.210); with the
  default noise (0.01, other random draws) to 0.02 (1e-3).

Model: the shipped testbed CNN on a fresh testbed image (top class 4, p = 0.76, one of its
labels) and its CAM, at 48 x 48 to keep the plain loops short (the functions take any input
size).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from cam_core import Cancelled, Explainer, load_backbone
from cam_core import metrics as M
from cam_core.testbed.generate import generate
from cam_core.voc import VOCDataset

SIZE = 48


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb") / "testbed"
    generate(root, n=5, seed=7)
    bb = load_backbone("testbed-cnn")
    ex = Explainer(bb)
    image = VOCDataset(root, "train")[0].image()  # labels 4 and 7
    fwd = ex.forward(image)
    x = F.interpolate(fwd.input, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    with torch.no_grad():  # the top class at this size (one of the image's labels) and its CAM
        target = int(bb.model(x).argmax())
        cam = torch.relu(bb.class_maps(bb.to_spatial(bb.model.forward_features(x)), [target])[0])
    sal = M.saliency_at_input(cam, (SIZE, SIZE))
    # the same order without ties (RISE's numpy sort orders ties arbitrarily): ranks / HW
    flat = sal.reshape(-1).double() + 1e-9 * torch.arange(SIZE * SIZE).double()
    unique = (torch.argsort(torch.argsort(flat)).float() / flat.numel()).reshape(SIZE, SIZE)
    return {"model": bb.model, "x": x, "target": target, "cam": cam, "sal": sal, "unique": unique}


def rise_single_run(model, img_tensor, explanation, mode, step, c):
    """RISE's CausalMetric.single_run (evaluation.py), one forward per step, with its softmax
    model wrapper, its substrates (zeros; gkern(11, 5) blur) and its numpy pixel order."""
    hw = img_tensor.shape[-1] * img_tensor.shape[-2]
    n_steps = (hw + step - 1) // step
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    k = gaussian_filter(delta, 5)
    kern = np.zeros((3, 3, 11, 11))
    kern[0, 0] = k
    kern[1, 1] = k
    kern[2, 2] = k
    kern = torch.from_numpy(kern.astype("float32"))
    if mode == "del":
        start, finish = img_tensor.clone(), torch.zeros_like(img_tensor)
    else:
        start, finish = F.conv2d(img_tensor, kern, padding=11 // 2), img_tensor.clone()
    scores = np.empty(n_steps + 1)
    salient_order = np.flip(np.argsort(explanation.reshape(-1, hw), axis=1), axis=-1)
    for i in range(n_steps + 1):
        with torch.no_grad():
            pred = model(start).softmax(dim=1)
        scores[i] = pred[0, c]
        if i < n_steps:
            coords = salient_order[0, step * i : step * (i + 1)]
            start.numpy().reshape(1, 3, hw)[0, :, coords] = finish.numpy().reshape(1, 3, hw)[0, :, coords]
    return (scores.sum() - scores[0] / 2 - scores[-1] / 2) / (scores.shape[0] - 1), scores


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_causal_metrics_match_a_plain_rise_loop(case, mode):
    model, x, c = case["model"], case["x"], case["target"]
    ours = M.causal_metric(model, x, case["unique"], c, mode, batch_size=16)
    ref_auc, ref_scores = rise_single_run(model, x.clone(), case["unique"].numpy(), mode[:3], SIZE, c)
    assert ours.step == SIZE and len(ours.scores) == SIZE + 1  # one row of pixels per step, as 224 at 224
    assert np.abs(ours.scores - ref_scores).max() < 1e-5
    assert ours.auc == pytest.approx(ref_auc, abs=1e-6)
    if mode == "deletion":
        assert ours.scores[-1] == pytest.approx(float(model(torch.zeros_like(x)).softmax(-1)[0, c]), abs=1e-5)


def test_causal_metrics_do_not_depend_on_the_batch_size(case):
    a = M.deletion(case["model"], case["x"], case["cam"], case["target"], batch_size=1)
    b = M.deletion(case["model"], case["x"], case["cam"], case["target"], batch_size=64)
    assert np.abs(a.scores - b.scores).max() < 1e-5
    # the map as given (ties ordered by raster position) moves the same pixels as its min-max
    c = M.deletion(case["model"], case["x"], case["sal"] * 3 + 1, case["target"], batch_size=64)
    assert np.array_equal(b.scores, c.scores)


def test_rise_blur_is_rise_gkern():
    x = torch.randn(1, 3, 20, 20)
    k = torch.from_numpy(gaussian_filter(np.pad([[1.0]], 5), 5).astype("float32"))
    kern = torch.zeros(3, 3, 11, 11)
    for i in range(3):
        kern[i, i] = k
    assert torch.allclose(M.rise_blur(x), F.conv2d(x, kern, padding=5), atol=1e-6)
    assert M.auc([1.0, 0.0]) == 0.5 and M.auc([0.0, 1.0, 1.0]) == 0.75


def test_deletion_of_the_evidence_beats_deletion_of_the_rest(case):
    """The map's order matters: deleting the most salient pixels first drops the class faster
    than deleting them last."""
    model, x, c = case["model"], case["x"], case["target"]
    good = M.deletion(model, x, case["sal"], c).auc
    bad = M.deletion(model, x, 1 - case["sal"], c).auc
    assert good < bad
    assert M.insertion(model, x, case["sal"], c).auc > M.insertion(model, x, 1 - case["sal"], c).auc


def test_confidence_change_matches_pytorch_grad_cam(case):
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, x, c = case["model"], case["x"], case["target"]
    for sal in (case["sal"], 1 - case["sal"], case["sal"] ** 4):
        ours = M.confidence_change(model, x, sal, c)
        cams = sal.numpy()[None]
        targets = [ClassifierOutputSoftmaxTarget(c)]
        drop = DropInConfidence()(x, cams, targets, model)[0]
        inc = IncreaseInConfidence()(x, cams, targets, model)[0]
        assert ours.drop * ours.before == pytest.approx(float(drop), abs=1e-6)  # theirs is not divided by Y
        assert ours.increase == bool(inc)
        assert ours.before == pytest.approx(float(model(x).softmax(-1)[0, c]), abs=1e-6)


def _reference_road(model, x, cam, c, percentiles, noise):
    from pytorch_grad_cam.metrics.perturbation_confidence import PerturbationConfidenceMetric
    from pytorch_grad_cam.metrics.road import (NoisyLinearImputer, RemoveLeastRelevantFirst,
                                               RemoveMostRelevantFirst)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    targets = [ClassifierOutputSoftmaxTarget(c)]
    morf, lerf = [], []
    for p in percentiles:
        for cls, out in ((RemoveMostRelevantFirst, morf), (RemoveLeastRelevantFirst, lerf)):
            metric = PerturbationConfidenceMetric(cls(p, NoisyLinearImputer(noise=noise)))
            out.append(float(metric(x, cam[None], targets, model, return_diff=False)[0]))
    return np.array(morf), np.array(lerf)


def test_road_matches_pytorch_grad_cam_without_noise(case):
    model, x, c = case["model"], case["x"], case["target"]
    cam = case["sal"].numpy()
    ours = M.road(model, x, case["sal"], c, noise=0.0)
    morf, lerf = _reference_road(model, x, cam, c, M.ROAD_PERCENTILES, 0.0)
    assert np.abs(ours.morf - morf).max() < 1e-5 and np.abs(ours.lerf - lerf).max() < 1e-5
    # pytorch-grad-cam's ROADCombined: (mean(lerf - s0) - mean(morf - s0)) / 2
    assert ours.value == pytest.approx((lerf.mean() - morf.mean()) / 2, abs=1e-6)
    assert ours.value > 0  # the testbed CNN's Grad-CAM is faithful: removing its top pixels hurts more


def test_road_with_noise_is_repeatable_and_close_to_the_reference(case):
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model, x, c = case["model"], case["x"], case["target"]
    a = M.road(model, x, case["cam"], c, seed=3)
    assert a.value == M.road(model, x, case["cam"], c, seed=3).value
    torch.manual_seed(0)
    ref = ROADCombined()(x, case["sal"].numpy()[None], [ClassifierOutputSoftmaxTarget(c)], model)[0]
    assert a.value == pytest.approx(float(ref), abs=0.02)


def test_imputation_fills_a_hole_with_the_mean_of_its_neighbours():
    img = torch.arange(3 * 5 * 5, dtype=torch.float32).reshape(3, 5, 5)
    keep = np.ones((5, 5), np.float32)
    keep[2, 2] = 0
    out = M.noisy_linear_impute(img, keep, noise=0.0)
    neighbours = img[:, 1:4, 1:4].sum(dim=(1, 2)) - img[:, 2, 2]
    # weights 1/6 (edges) and 1/12 (corners) sum to 1; on a linear ramp the weighted mean is the centre
    assert torch.allclose(out[:, 2, 2], img[:, 2, 2], atol=1e-4)
    assert torch.equal(out[:, keep > 0], img[:, keep > 0])
    assert neighbours.shape == (3,)
    # nothing known: zeros (the reference's system would be singular)
    assert torch.equal(M.noisy_linear_impute(img, np.zeros((5, 5), np.float32), noise=0.0), torch.zeros_like(img))


def test_progress_and_cancel_between_batches(case):
    model, x, c = case["model"], case["x"], case["target"]
    seen = []
    M.deletion(model, x, case["cam"], c, batch_size=16, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(16, 49), (32, 49), (48, 49), (49, 49)]
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled, match="deletion cancelled"):
        M.deletion(model, x, case["cam"], c, batch_size=16, cancel=cancel)
    assert len(calls) == 3  # two batches ran, the third was refused
    road_seen = []
    M.road(model, x, case["cam"], c, batch_size=8, progress=lambda d, t: road_seen.append((d, t)))
    assert road_seen[-1] == (37, 37) and road_seen[17] == (18, 37)  # 18 imputations, then 19 scored inputs
    with pytest.raises(Cancelled, match="ROAD cancelled"):
        M.road(model, x, case["cam"], c, cancel=lambda: True)


def test_faithfulness_of_a_forward_pass(case):
    """The helper the CLI and the evaluation call: the engine's forward pass and a raw map."""
    fwd = type("Fwd", (), {})()
    model = case["model"]
    fwd.backbone = type("BB", (), {"model": model, "batch_model": lambda self: model})()
    fwd.input = case["x"]
    out = M.faithfulness(fwd, case["cam"], case["target"], ["insertion", "increase", "deletion", "average_drop"])
    assert list(out) == ["deletion", "insertion", "average_drop", "increase"]
    assert 0 <= out["deletion"] <= 1 and 0 <= out["insertion"] <= 1 and out["increase"] in (0.0, 1.0)
    cc = M.confidence_change(case["model"], case["x"], case["cam"], case["target"])
    assert out["average_drop"] == cc.drop
    sig = M.faithfulness(fwd, case["cam"], case["target"], ["deletion"], score="sigmoid")["deletion"]
    assert sig != out["deletion"]
    with pytest.raises(ValueError, match="unknown faithfulness metric"):
        M.faithfulness(fwd, case["cam"], case["target"], ["energy"])

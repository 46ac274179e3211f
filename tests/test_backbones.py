"""The backbone registry: offline Lite weights, random timm models, local checkpoints, hub errors."""

import time

import pytest
import torch
from helpers import SAMPLES
from safetensors.torch import save_file

from cam_core import BACKBONES, BackboneError, Explainer, load_backbone, load_image
from cam_core import backbones as bbmod


def test_lite0_weights_are_real_imagenet_weights(lite0, cat, dog):
    ex = Explainer(lite0)
    top = ex.predict(cat, 3)
    assert top[0].name == "Egyptian cat" and top[0].probability > 0.5
    assert {p.index for p in top} <= {281, 282, 283, 284, 285, 287}
    assert ex.predict(load_image(SAMPLES / "coffee.png"), 1)[0].name == "espresso"


def test_lite0_preprocessing_resizes_whole_image(lite0, cat):
    x = lite0.preprocess(cat.rgb)
    assert x.shape == (1, 3, 224, 224)
    assert lite0.mean == (0.5, 0.5, 0.5) and lite0.std == (0.5, 0.5, 0.5)
    # no centre crop: the leftmost image column reaches the input's leftmost column
    left = torch.tensor(cat.rgb[:, :3].mean(axis=(0, 1)) / 255.0 * 2 - 1, dtype=torch.float32)
    assert torch.allclose(x[0, :, :, 0].mean(dim=1), left, atol=0.05)


@pytest.mark.parametrize("variant,size", [(1, 240), (2, 260)])
def test_lite1_lite2_map_and_predict(variant, size, cat):
    bb = load_backbone(f"efficientnet_lite{variant}")
    assert bb.input_size == (size, size)
    assert Explainer(bb).predict(cat, 1)[0].index in {281, 282, 285}


def test_registry_lists_offline_choices():
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(BACKBONES)
    assert all(BACKBONES[n].offline for n in ("efficientnet_lite0",))


def test_random_models_cover_cnn_and_vit(resnet18, deit):
    assert resnet18.kind == "cnn" and resnet18.default_layer == "features" and resnet18.cam_exact
    assert deit.kind == "vit" and deit.num_prefix_tokens == 1 and deit.token_grid == (14, 14)
    assert not deit.cam_exact  # class-token head: W.tokens is only an approximation
    assert not any(getattr(m, "fused_attn", False) for m in deit.model.modules())
    # seeded: the same name gives the same weights
    again = load_backbone("random:resnet18")
    assert torch.equal(again.model.fc.weight, resnet18.model.fc.weight)


def test_vit_tokens_to_grid_order(deit):
    tokens = torch.zeros(1, 197, 4)
    for r in range(14):
        for c in range(14):
            tokens[0, 1 + r * 14 + c] = r * 100 + c
    grid = deit.to_spatial(tokens)
    assert grid.shape == (4, 14, 14)
    assert grid[0, 3, 7] == 307 and grid[2, 13, 0] == 1300


def test_unknown_backbone_message():
    with pytest.raises(BackboneError, match="unknown backbone 'nosuchnet'.*efficientnet_lite0"):
        load_backbone("nosuchnet")


def test_hub_offline_fails_fast_with_offline_choices(monkeypatch):
    from cam_core.backbones.sources import hub

    monkeypatch.setattr(hub, "_hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(hub, "_hub_cache_file", lambda arch: None)
    t0 = time.perf_counter()
    with pytest.raises(BackboneError, match=r"not reachable.*Offline choices: efficientnet_lite0"):
        load_backbone("resnet50")
    assert time.perf_counter() - t0 < 10


def test_cuda_asked_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(BackboneError, match="no GPU"):
        load_backbone("random:resnet18", device="cuda")


def test_local_safetensors_checkpoint_round_trip(tmp_path, cat):
    src = bbmod.build_random("resnet18", num_classes=7, seed=3)
    path = tmp_path / "mine.safetensors"
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(path))
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"thing {i}" for i in range(7)))
    bb = load_backbone("resnet18", checkpoint=path, class_names=names)
    assert bb.num_classes == 7 and bb.class_names[3] == "thing 3"
    x = src.preprocess(cat.rgb)
    with torch.no_grad():
        assert torch.allclose(bb.model(x), src.model(x), atol=1e-5)


def test_local_pth_checkpoint_loads_weights_only(tmp_path):
    src = bbmod.build_random("resnet18", num_classes=5)
    path = tmp_path / "mine.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.model.state_dict().items()}}, path)
    bb = load_backbone("resnet18", checkpoint=path)
    assert bb.num_classes == 5 and bb.class_names[0] == "class 0"


class _Evil:
    def __reduce__(self):
        return (exec, ("import os; os.environ['CAM_PWNED'] = '1'",))


def test_pickled_code_in_checkpoint_is_never_run(tmp_path, monkeypatch):
    monkeypatch.delenv("CAM_PWNED", raising=False)
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2, 512), "x": _Evil()}, path)
    with pytest.raises(BackboneError, match="Python objects besides tensors") as err:
        load_backbone("resnet18", checkpoint=path)
    assert "weights_only=False" not in str(err.value)  # never advise the unsafe way
    import os

    assert "CAM_PWNED" not in os.environ


def test_checkpoint_that_does_not_fit_says_why(tmp_path):
    src = bbmod.build_random("resnet18", num_classes=5)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(path))
    with pytest.raises(BackboneError, match=r"does not fit resnet34 with 5 classes: .*missing tensors"):
        load_backbone("resnet34", checkpoint=path)
    with pytest.raises(BackboneError, match=r"does not fit resnet18 with 10 classes: 2 shape mismatches"):
        load_backbone("resnet18", checkpoint=path, num_classes=10)
    bad_names = tmp_path / "names.txt"
    bad_names.write_text("a\nb\n")
    with pytest.raises(BackboneError, match="has 2 names but the model has 5 classes"):
        load_backbone("resnet18", checkpoint=path, class_names=bad_names)


def test_layer_choices_have_spatial_outputs(lite0, deit):
    layers = lite0.layer_choices()
    assert layers[0] == "features" and "blocks.5.0" in layers and "classifier" not in layers
    vit_layers = deit.layer_choices()
    assert vit_layers[:2] == ["blocks.11.norm1", "features"] and "head" not in vit_layers

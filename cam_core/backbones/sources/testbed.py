"""The testbed's own models (cam_core.testbed), trained by `python -m cam_core testbed train`."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from ...banks import DatasetBank
from ...testbed.generate import generate
from ..backbone import FEATURES, Backbone, BackboneError
from ..registry import register_backbone
from ..timm_adapter import wrap_timm
from .checkpoint import load_state_file

TESTBED_DIR = Path(__file__).resolve().parents[3] / "assets" / "testbed"
CICAM_ARCHS = ("ci-cam", "kd-ci-cam")
_V1 = "`python -m cam_core testbed generate --out data/testbed`"
_V2 = "`python -m cam_core testbed generate --version 2 --out data/testbed2`"
# How each shipped name is trained, for the refusal while its checkpoint is missing.
HOW_TO_TRAIN = {
    "testbed-cnn": f"{_V1} then `python -m cam_core testbed train --arch cnn --data data/testbed --out {{prefix}}`",
    "testbed-vit": f"{_V1} then `python -m cam_core testbed train --arch vit --data data/testbed --out {{prefix}}`",
    "testbed2-cnn": f"{_V2} then `python -m cam_core testbed train --arch cnn --data data/testbed2 --out {{prefix}}`",
    "testbed2-vit": f"{_V2} then `python -m cam_core testbed train --arch vit --data data/testbed2 --out {{prefix}}`",
    "testbed2-ci-cam": f"{_V2} then `python -m cam_core testbed train --arch ci-cam --role loc --data data/testbed2 "
                       "--out {prefix}`",
    "testbed2-kd-ci-cam": f"{_V2}, two ci-cam teachers (`--arch ci-cam --role cls --out T_CLS` and `--role loc "
                          "--out T_LOC`), then `python -m cam_core testbed train --arch kd-ci-cam --cls-teacher T_CLS "
                          "--loc-teacher T_LOC --data data/testbed2 --out {prefix}`",
}


def load_testbed(prefix: str | Path, name: str | None = None) -> Backbone:
    """A model trained by `python -m cam_core testbed train`: PREFIX.safetensors + PREFIX.json."""
    prefix = Path(prefix)
    card_path, weights = prefix.with_suffix(".json"), prefix.with_suffix(".safetensors")
    if not card_path.exists() or not weights.exists():
        how = HOW_TO_TRAIN.get(prefix.name, HOW_TO_TRAIN["testbed-cnn"].replace("--arch cnn", "--arch ARCH"))
        raise BackboneError(f"{prefix.name} is not trained yet ({weights} missing): run " + how.format(prefix=prefix))
    card = json.loads(card_path.read_text())
    from ...testbed.models import build_model  # imports timm (~1.6 s): only when a testbed model is loaded

    model = build_model(card["arch"], len(card["classes"]), card["config"])
    model.load_state_dict(load_state_file(weights), strict=True)
    size = int(card["input_size"])
    val = card.get("val", {})
    data = card.get("data", {})
    version = f"version {data['version']}, " if "version" in data else ""
    source = (f"trained on the testbed by cam_core ({version}data seed {data.get('seed')}, "
              f"{card['training']['epochs']} epochs, val mAP {val.get('mAP', float('nan')):.3f})")
    if card["arch"] in CICAM_ARCHS:
        # Not a timm model: its features are the down branch's, its stages the non-local ResNet's.
        return Backbone.from_module(
            model, input_size=size, mean=card["mean"], std=card["std"], class_names=list(card["classes"]),
            name=name or prefix.name, source=f"{card['arch'].upper()} {source}", interpolation="bicubic",
            stage_layers=("backbone.layer1", "backbone.layer2", "backbone.layer3", FEATURES))
    # Dilated convolutions ran slower in channels-last on the 2-core CPU.
    bb = wrap_timm(model, name or prefix.name, source, list(card["classes"]),
                   {"input_size": (3, size, size), "mean": card["mean"], "std": card["std"],
                    "interpolation": "bicubic"}, channels_last=False)
    bb.default_bank = training_data_bank(data)
    return bb


def training_data_bank(data: dict) -> DatasetBank | None:
    """LPCAM's default bank: the train split of the testbed the card's model was trained on,
    regenerated from its seed (the generator is deterministic) into the cache on first use."""
    if "n" not in data or "seed" not in data:
        return None
    n, seed, version = int(data["n"]), int(data["seed"]), int(data.get("version", 1))
    val_fraction = round(int(data["val"]) / n, 6) if "val" in data else 0.2
    tag = "" if version == 1 else f" version {version},"  # v1's name and cache id as before versions
    return DatasetBank(
        name=f"testbed{tag} train split (n {n}, seed {seed})", split="train",
        generate=functools.partial(generate, n=n, seed=seed, val_fraction=val_fraction, version=version),
        data_id=f"testbed-n{n}-seed{seed}-val{val_fraction:g}" + ("" if version == 1 else f"-v{version}"),
    )


_DESCRIPTIONS = {
    "testbed-cnn": "ResNet trained on the generated testbed (8 classes, 128 px)",
    "testbed-vit": "ViT with a TS-CAM head trained on the generated testbed (8 classes, 128 px)",
    "testbed2-cnn": "ResNet trained on testbed version 2 (failures planted hard; 8 classes, 160 px)",
    "testbed2-vit": "ViT with a TS-CAM head trained on testbed version 2 (8 classes, 160 px)",
    "testbed2-ci-cam": "CI-CAM (causal intervention, down branch) on the ResNet, testbed version 2",
    "testbed2-kd-ci-cam": "KD-CI-CAM student distilled from two CI-CAM teachers, testbed version 2",
}
for _name, _description in _DESCRIPTIONS.items():
    register_backbone(_name, _description, (lambda n=_name: load_testbed(TESTBED_DIR / n)))
